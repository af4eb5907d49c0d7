//! PVH domains' disks: virtio-blk over virtio-mmio, emulated here
//! (`ferrite_devmodel::virtio`), each backed by a host disk
//! (`drivers::virtio_blk`) that moves the data straight between the device
//! and the guest's frames (no copy), or by an export on an NBD server
//! (`nbd`: `file:` images a toolstack serves, `nbd:` targets), whose data
//! is copied between the guest's frames and the TCP stream.
//!
//! Requests run asynchronously. The guest's queue notify takes the new
//! requests off its ring, checks them, and hands them to the host disk;
//! the vCPU goes on at once. The host disk tells us (`IoClient::io_done`,
//! on whichever CPU polled it) when one is over: its status goes into the
//! guest's ring and the disk's interrupt line rises. Several requests are
//! in flight at once, from one guest or many.
//!
//! What this module needs of its domain is the [`DeviceHost`] trait (its
//! memory and interrupt lines), so it does not depend on `domain`.

use crate::drivers::virtio_blk::{BlockDevice, BlockIoError, IoClient};
use crate::mm::guest::GuestRam;
use crate::nbd::{NbdBuffer, NbdDisk, NbdOp};
use crate::virtio_host::{DeviceHost, GuestErrorLog};
use ferrite_devmodel::dma::DmaSegment;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use ferrite_devmodel::virtio::blk::{BlkDiskInfo, BlkOp, BlkRequest, BlkRequestId, BlkStatus, VirtioBlkMmio};
use ferrite_devmodel::virtio::MmioEffect;
use ferrite_loader::acpi::{virtio_mmio_base, virtio_mmio_gsi, MAX_VIRTIO_MMIO};
use log::warn;
use spin::Mutex;

/// Requests taken off a guest's ring per notify, at most: a whole ring of
/// the largest size the model offers (bounded work per exit).
const MAX_TAKE: usize = 256;

/// Where a disk's blocks are.
#[derive(Clone)]
pub enum DiskSource {
    /// A host disk by name (`phy:NAME`).
    Host(String),
    /// An NBD export, connected before the domain is built.
    Nbd(Arc<NbdDisk>),
}

/// A PVH disk as the domain's configuration gives it.
#[derive(Clone)]
pub struct DiskConfig {
    pub source: DiskSource,
    /// The guest's name for it (`xvda`, ...), for messages.
    pub vdev: String,
    pub read_only: bool,
}

impl DiskConfig {
    /// What the disk is, for messages and for the sharing check
    /// (`disk_claims::check`): the host disk's name, or `nbd:` and
    /// the export.
    pub fn target(&self) -> String {
        match &self.source {
            DiskSource::Host(name) => name.clone(),
            DiskSource::Nbd(d) => alloc::format!("nbd:{}", d.name()),
        }
    }
}

enum Backend {
    Host(&'static BlockDevice),
    Nbd(Arc<NbdDisk>),
}

/// One virtio-blk disk of a PVH domain.
pub struct VirtioDisk {
    slot: usize,
    vdev: String,
    backend: Backend,
    read_only: bool,
    state: Mutex<DiskState>,
}

struct DiskState {
    model: VirtioBlkMmio,
    /// Requests handed to the host disk: (tag, the guest's request).
    in_flight: Vec<(u64, BlkRequestId)>,
    next_tag: u64,
    /// The interrupt line's level as last driven.
    line: bool,
    errors: GuestErrorLog,
}

/// Builds a domain's disks from its configuration: each host disk must
/// exist and each NBD export be connected, and a writable disk must be
/// writable there. Slot i is the i-th disk (its window and GSI follow).
pub fn build(disks: &[DiskConfig]) -> Result<Vec<Arc<VirtioDisk>>, String> {
    if disks.len() > MAX_VIRTIO_MMIO {
        return Err(alloc::format!("at most {} disks per PVH domain ({} given)", MAX_VIRTIO_MMIO, disks.len()));
    }
    let mut out = Vec::new();
    for (slot, d) in disks.iter().enumerate() {
        let (backend, sectors, backend_read_only) = match &d.source {
            DiskSource::Host(name) => {
                let host = crate::drivers::virtio_blk::find(name).ok_or_else(|| {
                    alloc::format!("disk {}: no host disk named '{}' (QEMU: -device virtio-blk-pci,serial={})", d.vdev, name, name)
                })?;
                (Backend::Host(host), host.sectors(), host.read_only())
            }
            DiskSource::Nbd(nbd) => {
                let export = nbd
                    .export()
                    .map_err(|why| alloc::format!("disk {}: NBD {}: {}", d.vdev, nbd.name(), why))?
                    .ok_or_else(|| alloc::format!("disk {}: NBD {} is not connected yet", d.vdev, nbd.name()))?;
                (Backend::Nbd(nbd.clone()), export.size / 512, export.flags & ferrite_nbd::flags::READ_ONLY != 0)
            }
        };
        if !d.read_only && backend_read_only {
            return Err(alloc::format!("disk {}: '{}' is read-only; give it access 'r'", d.vdev, d.target()));
        }
        let mut serial = [0u8; 20];
        let name = d.vdev.as_bytes();
        serial[..name.len().min(20)].copy_from_slice(&name[..name.len().min(20)]);
        let model = VirtioBlkMmio::new(BlkDiskInfo { sectors, read_only: d.read_only, serial });
        out.push(Arc::new(VirtioDisk {
            slot,
            vdev: d.vdev.clone(),
            backend,
            read_only: d.read_only,
            state: Mutex::new(DiskState { model, in_flight: Vec::new(), next_tag: 0, line: false, errors: GuestErrorLog::default() }),
        }));
    }
    Ok(out)
}

/// The disk whose window holds `gpa`, and the offset in it.
pub fn at(disks: &[Arc<VirtioDisk>], gpa: u64) -> Option<(&Arc<VirtioDisk>, u64)> {
    disks.iter().find_map(|d| {
        let base = virtio_mmio_base(d.slot);
        (base..base + 0x1000).contains(&gpa).then(|| (d, gpa - base))
    })
}

impl VirtioDisk {
    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        if offset >= VirtioBlkMmio::WINDOW_LEN {
            return 0;
        }
        self.state.lock().model.read(offset, size)
    }

    /// A guest write into the window; a queue notify starts the requests
    /// waiting on the ring.
    pub fn mmio_write(self: &Arc<Self>, host: &Arc<dyn DeviceHost>, offset: u64, size: u8, value: u64) {
        if offset >= VirtioBlkMmio::WINDOW_LEN {
            return;
        }
        let mut st = self.state.lock();
        let effect = st.model.write(offset, size, value);
        let taken = match effect {
            MmioEffect::Notify(_) => self.take(&mut st, host),
            MmioEffect::Reset | MmioEffect::None => Vec::new(),
        };
        self.update_line(&mut st, &**host);
        drop(st);
        // Outside the lock: a request may complete (and lock it) at once.
        for (tag, req) in taken {
            self.start(host, tag, req);
        }
    }

    /// Takes the waiting requests off the ring and gives each a tag.
    fn take(&self, st: &mut DiskState, host: &Arc<dyn DeviceHost>) -> Vec<(u64, BlkRequest)> {
        let mut taken = Vec::new();
        // A ring holds at most MAX_TAKE, so this runs once or twice.
        loop {
            let requests = match st.model.take_requests(&mut GuestRam(host.memory()), MAX_TAKE) {
                Ok(r) => r,
                Err(e) => {
                    st.errors.log(host.name(), &format_args!("disk {}", self.vdev), &e);
                    break;
                }
            };
            for r in requests {
                let tag = st.next_tag;
                st.next_tag += 1;
                st.in_flight.push((tag, r.id));
                taken.push((tag, r));
            }
            if !st.model.more_available() {
                break;
            }
        }
        taken
    }

    /// Hands one request to the backend; its end comes through `finish`.
    fn start(self: &Arc<Self>, host: &Arc<dyn DeviceHost>, tag: u64, req: BlkRequest) {
        if req.op == BlkOp::Write && self.read_only {
            return self.finish(&**host, tag, BlkStatus::IoErr);
        }
        match &self.backend {
            Backend::Host(device) => self.start_on_host(device, host, tag, req),
            Backend::Nbd(nbd) => {
                let (op, len) = match req.op {
                    BlkOp::Read => (NbdOp::Read, req.id.data_len),
                    BlkOp::Write => (NbdOp::Write, req.id.data_len),
                    BlkOp::Flush => (NbdOp::Flush, 0),
                };
                let buffer = Arc::new(GuestBuffer { disk: self.clone(), host: host.clone(), segments: req.segments, tag });
                nbd.submit(op, req.sector * 512, len, buffer);
            }
        }
    }

    fn start_on_host(self: &Arc<Self>, device: &'static BlockDevice, host: &Arc<dyn DeviceHost>, tag: u64, req: BlkRequest) {
        let write = match req.op {
            BlkOp::Read => false,
            BlkOp::Write => true,
            BlkOp::Flush => {
                let ok = device.flush().is_ok();
                return self.finish(&**host, tag, if ok { BlkStatus::Ok } else { BlkStatus::IoErr });
            }
        };
        let mut segments = Vec::new();
        for s in &req.segments {
            if host.memory().host_segments(s.gpa, u64::from(s.len), &mut segments).is_err() {
                return self.finish(&**host, tag, BlkStatus::IoErr);
            }
        }
        let segments: Vec<(u64, usize)> = segments.into_iter().map(|(pa, n)| (pa, n as usize)).collect();
        let client: Arc<dyn IoClient> = Arc::new(Completion { disk: self.clone(), host: host.clone() });
        // SAFETY: every segment was just checked to be the guest's RAM
        // (`host_segments`): memory no Rust reference covers, which the
        // guest may change at will; `client` holds the domain, and with it
        // that memory, until the host disk says the request is over.
        let started = unsafe { device.submit(write, req.sector, &segments, client, tag) };
        let status = match started {
            Ok(()) => return,
            // Pieces that are not whole sectors: the synchronous path
            // bounces them (rare; Linux's buffers are sector-aligned).
            // SAFETY: as above; the call returns when the data has moved.
            Err(BlockIoError::NotSectorMultiple { .. }) => match unsafe {
                if write {
                    device.write(req.sector, &segments)
                } else {
                    device.read(req.sector, &segments)
                }
            } {
                Ok(()) => BlkStatus::Ok,
                Err(_) => BlkStatus::IoErr,
            },
            Err(e) => {
                warn!("{}: disk {}: {}", host.name(), self.vdev, e);
                BlkStatus::IoErr
            }
        };
        self.finish(&**host, tag, status);
    }

    /// Request `tag` is over: its status to the guest, the line raised.
    fn finish(&self, host: &dyn DeviceHost, tag: u64, status: BlkStatus) {
        let mut st = self.state.lock();
        let Some(i) = st.in_flight.iter().position(|(t, _)| *t == tag) else { return };
        let (_, id) = st.in_flight.swap_remove(i);
        if let Err(e) = st.model.complete(&mut GuestRam(host.memory()), &id, status) {
            st.errors.log(host.name(), &format_args!("disk {}", self.vdev), &e);
        }
        self.update_line(&mut st, host);
    }

    fn update_line(&self, st: &mut DiskState, host: &dyn DeviceHost) {
        let level = st.model.irq_level();
        if level != st.line {
            st.line = level;
            host.set_gsi(virtio_mmio_gsi(self.slot), level);
        }
    }
}

/// A request's way back from the host disk; it holds the domain (and so
/// the memory the device writes) until then.
struct Completion {
    disk: Arc<VirtioDisk>,
    host: Arc<dyn DeviceHost>,
}

impl IoClient for Completion {
    fn io_done(&self, tag: u64, ok: bool) {
        self.disk.finish(&*self.host, tag, if ok { BlkStatus::Ok } else { BlkStatus::IoErr });
    }
}

/// A request's data in the guest's memory, as an NBD request streams it;
/// it holds the domain until the request is over.
struct GuestBuffer {
    disk: Arc<VirtioDisk>,
    host: Arc<dyn DeviceHost>,
    segments: Vec<DmaSegment>,
    tag: u64,
}

impl NbdBuffer for GuestBuffer {
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let mem = self.host.memory();
        let len = buf.len();
        crate::nbd::for_pieces(&self.segments, offset, len, |gpa, r| mem.read(gpa, &mut buf[r]).is_ok())
    }

    fn write(&self, offset: usize, data: &[u8]) -> bool {
        let mem = self.host.memory();
        crate::nbd::for_pieces(&self.segments, offset, data.len(), |gpa, r| mem.write(gpa, &data[r]).is_ok())
    }

    fn done(&self, ok: bool) {
        self.disk.finish(&*self.host, self.tag, if ok { BlkStatus::Ok } else { BlkStatus::IoErr });
    }
}
