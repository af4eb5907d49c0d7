//! virtio-blk (virtio 1.x §5.2) with one request queue: the
//! transport-neutral device ([`VirtioBlk`]) and its virtio-mmio front end
//! ([`VirtioBlkMmio`]); the virtio-pci one is [`super::pci::VirtioBlkPci`].
//!
//! The model parses requests and hands the backend only what needs the
//! disk: reads, writes and flushes, each as guest segments to move data
//! to or from directly (zero copy). Everything else it finishes itself:
//! GET_ID (the serial), unsupported types (UNSUPP), and malformed or
//! refused requests (IOERR): wrong buffer directions, zero-length buffers,
//! a header shorter than 16 bytes or not in RAM, data not whole sectors or
//! larger than [`MAX_REQUEST_BYTES`], sectors past the end, writes to a
//! read-only disk. A chain with no device-writable byte at its end has no
//! place for a status, so it breaks the device (DEVICE_NEEDS_RESET) like
//! any other queue protocol error.
//!
//! Message framing is not assumed (§2.6.4): the header is the first 16
//! device-readable bytes and the status the last device-writable byte,
//! wherever the descriptors split them.
//!
//! ## Use
//!
//! The caller forwards the guest's accesses to the transport's registers
//! ([`VirtioBlkMmio::read`] / [`VirtioBlkMmio::write`], or the PCI BAR's);
//! on [`Effect::Notify`] (queue 0, the only one) it calls [`VirtioBlk::take_requests`] (again
//! while [`VirtioBlk::more_available`]), runs each [`BlkRequest`] on
//! the backend, then [`VirtioBlk::complete`]s it, in any order. On
//! [`Effect::Reset`] it may drop the backend work: completions from
//! before the reset are ignored. After each call it sets the interrupt
//! line to [`VirtioBlk::irq_level`]. Both front ends dereference to
//! [`VirtioBlk`]. An `Err` means the driver broke
//! the protocol: log it; the device waits for the driver's reset.
//!
//! Offered features: VERSION_1, SEG_MAX, BLK_SIZE, FLUSH, INDIRECT_DESC,
//! and RO for a read-only disk. No EVENT_IDX (avail.flags NO_INTERRUPT is
//! honoured), no DISCARD or WRITE_ZEROES, no multiqueue.

use alloc::vec;
use alloc::vec::Vec;

use super::common::{Effect, VirtioState};
pub use super::mmio::MmioEffect;
use super::mmio::WINDOW_LEN;
use super::queue::{Buffer, MAX_CHAIN};
pub use super::VirtioError;
use super::{feature, interrupt};
use crate::dma::{DmaSegment, GuestMemoryAccess, SECTOR_SIZE};

/// virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// QueueNumMax of the request queue (the largest queue size offered).
pub const QUEUE_SIZE_MAX: u16 = 256;
/// `seg_max`: data segments per request, leaving room in a chain of
/// [`MAX_CHAIN`] for the header and the status.
pub const SEG_MAX: u32 = MAX_CHAIN - 2;
/// Largest data transfer accepted in one request; larger ones end with
/// IOERR. Linux's default request limit (`max_sectors_kb`, 1280 KiB) is
/// far below it; it bounds the backend's work per request.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Block feature bits (§5.2.3).
pub mod blk_feature {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (§5.2.6).
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Length of `struct virtio_blk_req`'s header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_config` up to `unused1`, the fields this device can
/// offer.
pub(crate) const CONFIG_LEN: usize = 60;

/// The disk as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkDiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    /// GET_ID's answer: up to 20 bytes, NUL-padded if shorter.
    pub serial: [u8; 20],
}

/// What the backend is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// Disk → guest segments.
    Read,
    /// Guest segments → disk.
    Write,
    /// Make every completed write durable. Linux sends it for REQ_PREFLUSH
    /// and after a FUA write (virtio-blk has no FUA bit).
    Flush,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkStatus {
    Ok,
    IoErr,
    Unsupp,
}

impl BlkStatus {
    fn byte(self) -> u8 {
        match self {
            BlkStatus::Ok => S_OK,
            BlkStatus::IoErr => S_IOERR,
            BlkStatus::Unsupp => S_UNSUPP,
        }
    }
}

/// Names a request taken from the queue, for [`VirtioBlk::complete`].
/// The model keeps its own record of the head; these fields are for the
/// caller's information and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRequestId {
    pub head: u16,
    /// The device's reset generation when the request was taken.
    pub generation: u32,
    pub status_gpa: u64,
    /// Bytes of data (0 for a flush).
    pub data_len: u32,
}

/// A request that needs the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkRequest {
    pub id: BlkRequestId,
    pub op: BlkOp,
    /// First 512-byte sector (0 for a flush).
    pub sector: u64,
    /// Guest data buffers in order: for Read/Write non-empty, each of
    /// non-zero length, together whole sectors inside the disk and at most
    /// [`MAX_REQUEST_BYTES`]; empty for Flush. The addresses are the
    /// guest's: the backend checks them against guest RAM.
    pub segments: Vec<DmaSegment>,
}

/// What the model remembers of a request it handed out.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    status_gpa: u64,
    /// `len` for the used ring on success.
    used_len_ok: u32,
}

/// How a parsed chain goes on.
enum Parsed {
    Backend(BlkRequest),
    /// Finished here: the status byte and the used-ring `len`.
    Done {
        status: u8,
        used_len: u32,
    },
}

/// A virtio-blk device, whatever its transport.
#[derive(Debug, Clone)]
pub struct VirtioBlk {
    transport: VirtioState,
    disk: BlkDiskInfo,
    config: [u8; CONFIG_LEN],
    /// Indexed by head; only heads of the current generation.
    in_flight: Vec<Option<InFlight>>,
    in_flight_count: usize,
    /// The last `take_requests` stopped at `max` with more heads waiting.
    more_available: bool,
    /// Reused chain buffer (at most MAX_CHAIN entries).
    chain: Vec<Buffer>,
}

impl VirtioBlk {
    /// The device; `queue_num_at_reset` is what the transport's queue
    /// size register holds after a reset (0 for mmio, the maximum for pci).
    fn with_transport(disk: BlkDiskInfo, queue_num_at_reset: u32) -> Self {
        let mut features = feature::VERSION_1
            | feature::INDIRECT_DESC
            | blk_feature::SEG_MAX
            | blk_feature::BLK_SIZE
            | blk_feature::FLUSH;
        if disk.read_only {
            features |= blk_feature::RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        VirtioBlk {
            transport: VirtioState::new(DEVICE_ID_BLOCK, features, 1, QUEUE_SIZE_MAX, queue_num_at_reset),
            disk,
            config,
            in_flight: vec![None; usize::from(QUEUE_SIZE_MAX)],
            in_flight_count: 0,
            more_available: false,
            chain: Vec::with_capacity(MAX_CHAIN as usize),
        }
    }

    /// The features the driver accepted (meaningful once FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        self.transport.negotiated()
    }

    pub fn disk(&self) -> &BlkDiskInfo {
        &self.disk
    }

    /// The transport-neutral state, for the register front ends.
    pub(crate) fn state(&self) -> &VirtioState {
        &self.transport
    }

    /// The device configuration space (`struct virtio_blk_config`).
    pub(crate) fn config(&self) -> &[u8] {
        &self.config
    }

    /// Applies a front end's register write: a reset forgets every
    /// request in flight.
    pub(crate) fn register_write(&mut self, f: impl FnOnce(&mut VirtioState) -> Effect) -> Effect {
        let effect = f(&mut self.transport);
        if effect == Effect::Reset {
            self.forget_in_flight();
        }
        effect
    }

    /// The interrupt line's level: the interrupt status is not 0
    /// (level-triggered; lowered by InterruptACK on mmio, by reading the
    /// ISR on pci).
    pub fn irq_level(&self) -> bool {
        self.transport.interrupt_status != 0
    }

    /// Requests taken and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// The last [`take_requests`](Self::take_requests) stopped at its `max`
    /// with more requests waiting: call it again (no further notify comes
    /// for them).
    pub fn more_available(&self) -> bool {
        self.more_available
    }

    /// DEVICE_NEEDS_RESET is set, and why.
    pub fn broken(&self) -> Option<&VirtioError> {
        self.transport.broken.as_ref()
    }

    /// Takes up to `max` heads from the available ring, finishes those the
    /// model can answer itself and returns the ones that need the backend.
    /// Does nothing (returns no requests) before DRIVER_OK, while the queue
    /// is not ready, or while the device needs a reset. A protocol error
    /// puts the device into DEVICE_NEEDS_RESET and is returned (once); the
    /// requests taken in the same call are then dropped.
    pub fn take_requests(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        max: usize,
    ) -> Result<Vec<BlkRequest>, VirtioError> {
        self.more_available = false;
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        if !self.transport.queue_live(0) || max == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        match self.take_into(mem, max, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                for r in &out {
                    self.drop_in_flight(r.id.head);
                }
                self.more_available = false;
                self.transport.fail(e);
                Err(e)
            }
        }
    }

    fn take_into(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        max: usize,
        out: &mut Vec<BlkRequest>,
    ) -> Result<(), VirtioError> {
        let pending = usize::from(self.transport.queues[0].available(mem)?);
        let n = pending.min(max);
        self.more_available = pending > n;
        let indirect_ok = self.transport.negotiated() & feature::INDIRECT_DESC != 0;
        let mut chain = core::mem::take(&mut self.chain);
        let result = self.take_loop(mem, n, indirect_ok, &mut chain, out);
        self.chain = chain;
        result
    }

    fn take_loop(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        n: usize,
        indirect_ok: bool,
        chain: &mut Vec<Buffer>,
        out: &mut Vec<BlkRequest>,
    ) -> Result<(), VirtioError> {
        for _ in 0..n {
            let head = self.transport.queues[0].pop_head(mem)?;
            if self.in_flight[usize::from(head)].is_some() {
                return Err(VirtioError::HeadInFlight { head });
            }
            self.transport.queues[0]
                .walk_chain(mem, head, indirect_ok, chain)?;
            let (status_gpa, parsed) = self.parse(mem, head, chain)?;
            match parsed {
                Parsed::Backend(mut req) => {
                    req.id.head = head;
                    req.id.status_gpa = status_gpa;
                    self.in_flight[usize::from(head)] = Some(InFlight {
                        status_gpa,
                        used_len_ok: match req.op {
                            BlkOp::Read => req.id.data_len + 1,
                            _ => 1,
                        },
                    });
                    self.in_flight_count += 1;
                    out.push(req);
                }
                Parsed::Done { status, used_len } => {
                    self.finish(mem, head, status_gpa, status, used_len)?
                }
            }
        }
        Ok(())
    }

    /// Finishes a request returned by `take_requests`: status byte, used
    /// ring (`len` = data + status byte for a successful read, else 1),
    /// interrupt. Requests from before a reset, and unknown or already
    /// completed heads, are ignored; so is everything while the device
    /// needs a reset.
    pub fn complete(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        req: &BlkRequestId,
        status: BlkStatus,
    ) -> Result<(), VirtioError> {
        if req.generation != self.transport.generation {
            return Ok(());
        }
        let Some(rec) = self.in_flight.get(usize::from(req.head)).copied().flatten() else {
            return Ok(());
        };
        self.drop_in_flight(req.head);
        if self.transport.broken.is_some() || !self.transport.queues[0].ready {
            return Ok(());
        }
        let used_len = if status == BlkStatus::Ok {
            rec.used_len_ok
        } else {
            1
        };
        let result = self.finish(mem, req.head, rec.status_gpa, status.byte(), used_len);
        if let Err(e) = result {
            self.transport.fail(e);
        }
        result
    }

    fn finish(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        head: u16,
        status_gpa: u64,
        status: u8,
        used_len: u32,
    ) -> Result<(), VirtioError> {
        mem.write(status_gpa, &[status])
            .map_err(|_| VirtioError::NotInGuestRam {
                what: "status byte",
                gpa: status_gpa,
                len: 1,
            })?;
        if self.transport.queues[0].push_used(mem, head, used_len)? {
            self.transport.interrupt_status |= interrupt::USED_BUFFER;
        }
        Ok(())
    }

    fn drop_in_flight(&mut self, head: u16) {
        if let Some(slot) = self.in_flight.get_mut(usize::from(head)) {
            if slot.take().is_some() {
                self.in_flight_count -= 1;
            }
        }
    }

    fn forget_in_flight(&mut self) {
        self.in_flight.iter_mut().for_each(|s| *s = None);
        self.in_flight_count = 0;
        self.more_available = false;
    }

    /// Splits a chain into header, data and status and decides what to do
    /// with it. Returns the status byte's address with the outcome; the
    /// only error is a chain without a status byte.
    fn parse(
        &self,
        mem: &mut dyn GuestMemoryAccess,
        head: u16,
        chain: &mut Vec<Buffer>,
    ) -> Result<(u64, Parsed), VirtioError> {
        let no_status = VirtioError::NoStatusByte { head };
        let last = chain.last_mut().ok_or(no_status)?;
        if !last.writable || last.len == 0 {
            return Err(no_status);
        }
        let status_gpa = last
            .gpa
            .checked_add(u64::from(last.len) - 1)
            .ok_or(no_status)?;
        last.len -= 1;
        let status_was_whole_buffer = last.len == 0;
        if status_was_whole_buffer {
            chain.pop();
        }
        let parsed = self.parse_body(mem, chain);
        Ok((status_gpa, parsed))
    }

    fn parse_body(&self, mem: &mut dyn GuestMemoryAccess, chain: &[Buffer]) -> Parsed {
        let ioerr = Parsed::Done {
            status: S_IOERR,
            used_len: 1,
        };
        // Device-readable buffers come first (§2.7.4.2), none may be empty.
        let readable = chain.iter().take_while(|b| !b.writable).count();
        let (out_bufs, in_bufs) = chain.split_at(readable);
        if in_bufs.iter().any(|b| !b.writable) || chain.iter().any(|b| b.len == 0) {
            return ioerr;
        }
        // The header: the first 16 readable bytes, in as many pieces.
        let mut header = [0u8; HEADER_LEN as usize];
        let mut got = 0usize;
        let mut out_data: Vec<DmaSegment> = Vec::new();
        for b in out_bufs {
            let want = (header.len() - got).min(b.len as usize);
            if want > 0 && mem.read(b.gpa, &mut header[got..got + want]).is_err() {
                return ioerr;
            }
            got += want;
            if (want as u32) < b.len {
                // checked: want < len ≤ u32::MAX; gpa + want may wrap.
                let Some(gpa) = b.gpa.checked_add(want as u64) else {
                    return ioerr;
                };
                out_data.push(DmaSegment {
                    gpa,
                    len: b.len - want as u32,
                });
            }
        }
        if got < header.len() {
            return ioerr;
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(s);
        let in_data: Vec<DmaSegment> = in_bufs
            .iter()
            .map(|b| DmaSegment {
                gpa: b.gpa,
                len: b.len,
            })
            .collect();
        match kind {
            req_type::IN | req_type::OUT => {
                let (op, segments, wrong_dir) = if kind == req_type::IN {
                    (BlkOp::Read, in_data, &out_data)
                } else {
                    (BlkOp::Write, out_data, &in_data)
                };
                if !wrong_dir.is_empty() || segments.is_empty() {
                    return ioerr;
                }
                if op == BlkOp::Write && self.disk.read_only {
                    return ioerr;
                }
                let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
                let sectors = total / SECTOR_SIZE as u64;
                let in_disk = sector
                    .checked_add(sectors)
                    .is_some_and(|end| end <= self.disk.sectors);
                if total % SECTOR_SIZE as u64 != 0
                    || total > u64::from(MAX_REQUEST_BYTES)
                    || !in_disk
                {
                    return ioerr;
                }
                Parsed::Backend(BlkRequest {
                    id: BlkRequestId {
                        head: 0,
                        generation: self.transport.generation,
                        status_gpa: 0,
                        data_len: total as u32,
                    },
                    op,
                    sector,
                    segments,
                })
            }
            req_type::FLUSH => {
                if !out_data.is_empty() || !in_data.is_empty() {
                    return ioerr;
                }
                if self.disk.read_only {
                    // Nothing can be dirty on a disk nobody writes.
                    return Parsed::Done {
                        status: S_OK,
                        used_len: 1,
                    };
                }
                Parsed::Backend(BlkRequest {
                    id: BlkRequestId {
                        head: 0,
                        generation: self.transport.generation,
                        status_gpa: 0,
                        data_len: 0,
                    },
                    op: BlkOp::Flush,
                    sector: 0,
                    segments: Vec::new(),
                })
            }
            req_type::GET_ID => {
                if !out_data.is_empty() || in_data.is_empty() {
                    return ioerr;
                }
                // As many of the 20 ID bytes as the buffers hold.
                let mut written = 0usize;
                for seg in &in_data {
                    if written == ID_BYTES {
                        break;
                    }
                    let n = (ID_BYTES - written).min(seg.len as usize);
                    if mem
                        .write(seg.gpa, &self.disk.serial[written..written + n])
                        .is_err()
                    {
                        return ioerr;
                    }
                    written += n;
                }
                Parsed::Done {
                    status: S_OK,
                    used_len: written as u32 + 1,
                }
            }
            _ => Parsed::Done {
                status: S_UNSUPP,
                used_len: 1,
            },
        }
    }
}

/// One virtio-mmio v2 window holding a virtio-blk device. Dereferences to
/// [`VirtioBlk`] for the requests and the interrupt line.
#[derive(Debug, Clone)]
pub struct VirtioBlkMmio {
    blk: VirtioBlk,
}

impl VirtioBlkMmio {
    pub const WINDOW_LEN: u64 = WINDOW_LEN;

    pub fn new(disk: BlkDiskInfo) -> Self {
        VirtioBlkMmio {
            blk: VirtioBlk::with_transport(disk, 0),
        }
    }

    /// Guest MMIO read at `offset` in the window, `size` 1/2/4/8 bytes.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        super::mmio::read(self.blk.state(), offset, size, self.blk.config())
    }

    /// Guest MMIO write. QueueNotify of queue 0 returns [`MmioEffect::Notify`]`(0)`; a
    /// Status write of 0 (or disabling the queue) returns
    /// [`MmioEffect::Reset`] and forgets every request in flight.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> MmioEffect {
        self.blk
            .register_write(|s| super::mmio::write(s, offset, size, value))
    }
}

impl core::ops::Deref for VirtioBlkMmio {
    type Target = VirtioBlk;
    fn deref(&self) -> &VirtioBlk {
        &self.blk
    }
}

impl core::ops::DerefMut for VirtioBlkMmio {
    fn deref_mut(&mut self) -> &mut VirtioBlk {
        &mut self.blk
    }
}

impl VirtioBlk {
    /// For the virtio-pci front end.
    pub(crate) fn new_pci(disk: BlkDiskInfo) -> Self {
        VirtioBlk::with_transport(disk, u32::from(QUEUE_SIZE_MAX))
    }

    /// Reads and clears the interrupt status (virtio-pci's ISR).
    pub(crate) fn take_interrupt_status(&mut self) -> u32 {
        core::mem::take(&mut self.transport.interrupt_status)
    }
}
