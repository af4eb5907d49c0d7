//! The hypervisor's side of stub domains: what a stub may ask for
//! (hypercalls) and the resources it may name (its guest's disks and boot
//! files by handle, its guest's memory, its own memory).
//!
//! A stub domain is hostile too: every address, length, handle and number
//! it passes is checked here, and a stub can only ever reach its own RAM,
//! its guest's RAM and its guest's disks.

use crate::domain::{Domain, DomainState};
use crate::drivers::virtio_blk::BlockDevice;
use crate::ioreq::IoreqServer;
use crate::mm::guest::GuestMemory;
use crate::platform::Effects;
use crate::sched;
use crate::virt::GuestRegs;
use alloc::sync::Arc;
use alloc::vec::Vec;
use ferrite_abi::{hypercall as hc, BlockRequest, Errno, PowerAction, BLOCK_FLAG_GUEST, BLOCK_FLUSH, BLOCK_READ, BLOCK_WRITE, DEST_GUEST, DEST_STUB};

/// A host disk as one guest may use it.
/// What serves a stub's disk: a host virtio-blk disk, or a boot module in
/// RAM (`module:NAME`).
pub enum DiskBackend {
    Host(&'static BlockDevice),
    Ram(Arc<crate::drivers::ramdisk::RamDisk>),
}

impl DiskBackend {
    pub fn name(&self) -> &str {
        match self {
            DiskBackend::Host(d) => d.name(),
            DiskBackend::Ram(d) => d.name(),
        }
    }

    pub fn sectors(&self) -> u64 {
        match self {
            DiskBackend::Host(d) => d.sectors(),
            DiskBackend::Ram(d) => d.sectors(),
        }
    }

    pub fn read_only(&self) -> bool {
        match self {
            DiskBackend::Host(d) => d.read_only(),
            DiskBackend::Ram(d) => d.read_only(),
        }
    }

    fn flush(&self) -> Result<(), crate::drivers::virtio_blk::BlockIoError> {
        match self {
            DiskBackend::Host(d) => d.flush(),
            DiskBackend::Ram(_) => Ok(()),
        }
    }
}

pub struct StubDisk {
    pub device: DiskBackend,
    /// `r` in the guest's config: writes are refused whatever the stub says.
    pub read_only: bool,
}

/// What a stub domain serves and may use.
pub struct StubBackends {
    /// The guest; holding it keeps its RAM (mapped into the stub) alive
    /// for as long as the stub exists.
    pub guest: Arc<Domain>,
    pub ioreq: Arc<IoreqServer>,
    /// By handle.
    pub disks: Vec<StubDisk>,
    /// Boot files (kernel, initrd, option ROM) by handle.
    pub data: Vec<crate::mm::blob::Blob>,
    /// The guest's NICs by handle.
    pub nics: Vec<Arc<crate::hvmnet::StubNic>>,
}

impl crate::domain::StubService for StubBackends {
    fn guest(&self) -> &Arc<Domain> {
        &self.guest
    }

    fn hypercall(&self, stub: &Domain, regs: &mut GuestRegs) -> bool {
        hypercall(stub, self, regs) == After::Wait
    }

    fn pending_work(&self) -> u64 {
        self.ioreq.pending_work(self.guest.spec.vcpus)
    }

    fn detach_nics(&self) {
        for n in &self.nics {
            n.detach(&self.guest.name);
        }
    }

    fn nic_stats(&self) -> Vec<crate::bridge::VifStats> {
        self.nics.iter().map(|n| n.stats()).collect()
    }
}

/// What the stub's vCPU does after a hypercall.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum After {
    Continue,
    /// WAIT with nothing to do: block until notified.
    Wait,
}

/// Largest console write or input read per call.
const CONSOLE_MAX: u64 = 4096;
/// Largest DATA_READ per call.
const DATA_READ_MAX: u64 = 64 << 20;

/// Handles one hypercall of `stub`. Results go in rax.
pub fn hypercall(stub: &Domain, b: &StubBackends, regs: &mut GuestRegs) -> After {
    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8];
    let result = match regs.rax {
        hc::CONSOLE_WRITE => read_stub(stub, args[0], args[1], CONSOLE_MAX).map(|mut bytes| {
            // Through the stub's own console budget, as a guest's output:
            // 4 KiB of newlines a call must not flood the serial console
            // (and hold its lock) at will. Each call ends its last line.
            if bytes.last().is_some_and(|&b| b != b'\n') {
                bytes.push(b'\n');
            }
            stub.console_bytes(&bytes);
            0
        }),
        hc::GUEST_CONSOLE_WRITE => read_stub(stub, args[0], args[1], CONSOLE_MAX).map(|bytes| {
            b.guest.console_bytes(&bytes);
            0
        }),
        hc::CONSOLE_INPUT => console_input(stub, b, args[0], args[1]),
        hc::WAIT => {
            if args[0] & ferrite_abi::WAIT_FLAG_ANSWERED != 0 {
                wake_answered(b);
            }
            let work = b.ioreq.pending_work(b.guest.spec.vcpus);
            if work == 0 {
                // Block; the result is filled in when it is woken.
                return After::Wait;
            }
            Ok(work)
        }
        hc::IOREQ_DONE => {
            wake_answered(b);
            Ok(0)
        }
        hc::SET_IRQ => set_irq(b, args[0], args[1]),
        hc::BLOCK_IO => block_io(stub, b, args[0], args[1]),
        hc::DATA_READ => data_read(stub, b, args),
        hc::NET_SEND => net_send(stub, b, args),
        hc::GUEST_POWER => match PowerAction::from_code(args[0]) {
            Some(action) => {
                let state = match action {
                    PowerAction::Reset => DomainState::Rebooting,
                    PowerAction::PowerOff => DomainState::PoweredOff,
                };
                b.guest.shut_down(state);
                Ok(0)
            }
            None => Err(Errno::Inval),
        },
        _ => Err(Errno::Nosys),
    };
    regs.rax = match result {
        Ok(v) => v,
        Err(e) => e.as_result(),
    };
    After::Continue
}

/// A copy of `len` bytes of the stub's own RAM at `addr`.
fn read_stub(stub: &Domain, addr: u64, len: u64, max: u64) -> Result<Vec<u8>, Errno> {
    if len > max {
        return Err(Errno::Inval);
    }
    let mut buf = alloc::vec![0u8; len as usize];
    stub.mem.read(addr, &mut buf).map_err(|_| Errno::Fault)?;
    Ok(buf)
}

fn console_input(stub: &Domain, b: &StubBackends, addr: u64, max: u64) -> Result<u64, Errno> {
    let max = max.min(CONSOLE_MAX);
    if !stub.mem.contains(addr, max) {
        return Err(Errno::Fault);
    }
    let bytes = b.guest.devices.lock().take_input(max as usize);
    stub.mem.write(addr, &bytes).map_err(|_| Errno::Fault)?;
    Ok(bytes.len() as u64)
}

/// Resumes the guest vCPUs whose requests the stub answered.
fn wake_answered(b: &StubBackends) {
    let vcpus = b.guest.vcpus.lock();
    for (i, v) in vcpus.iter().enumerate() {
        if b.ioreq.is_done(i as u32) {
            let r: Arc<dyn sched::Runnable> = v.clone();
            sched::wake(&r);
        }
    }
}

fn set_irq(b: &StubBackends, irq: u64, level: u64) -> Result<u64, Errno> {
    if irq > 23 || level > 1 {
        return Err(Errno::Inval);
    }
    let mut fx = Effects::default();
    let mut devices = b.guest.devices.lock();
    devices.set_isa_irq(irq as u8, level == 1, &mut fx);
    let _ = b.guest.apply(fx, &mut devices);
    Ok(0)
}

/// Host-physical pieces of `[addr, addr+len)` in the guest's RAM or the
/// stub's own.
fn host_segments(mem: &GuestMemory, addr: u64, len: u64, out: &mut Vec<(u64, u64)>) -> Result<(), Errno> {
    mem.host_segments(addr, len, out).map_err(|_| Errno::Fault)
}

fn block_io(stub: &Domain, b: &StubBackends, addr: u64, len: u64) -> Result<u64, Errno> {
    let max = (ferrite_abi::block::HEADER + ferrite_abi::BLOCK_MAX_SEGMENTS * ferrite_abi::block::SEGMENT) as u64;
    let bytes = read_stub(stub, addr, len, max)?;
    let req = BlockRequest::decode(&bytes).ok_or(Errno::Inval)?;
    let disk = b.disks.get(req.disk as usize).ok_or(Errno::Inval)?;
    if req.op == BLOCK_FLUSH {
        return disk.device.flush().map(|_| 0).map_err(|_| Errno::Io);
    }
    if req.op != BLOCK_READ && req.op != BLOCK_WRITE {
        return Err(Errno::Inval);
    }
    let write = req.op == BLOCK_WRITE;
    if write && (disk.read_only || disk.device.read_only()) {
        return Err(Errno::Rofs);
    }
    // Refused without a log line: a stub must not be able to flood the log.
    req.check_transfer(disk.device.sectors()).map_err(|_| Errno::Inval)?;
    let mem = if req.flags & BLOCK_FLAG_GUEST != 0 { &b.guest.mem } else { &stub.mem };
    let mut host = Vec::new();
    for &(gpa, l) in &req.segments {
        host_segments(mem, gpa, u64::from(l), &mut host)?;
    }
    let host: Vec<(u64, usize)> = host.into_iter().map(|(pa, l)| (pa, l as usize)).collect();
    // SAFETY: every segment was just checked to lie in the RAM of the
    // guest or of the stub (`host_segments`), memory that guests own and
    // the hypervisor never holds references into; the domains stay alive
    // (we run on the stub's vCPU, which holds its guest) for the call.
    let r = unsafe {
        match (&disk.device, write) {
            (DiskBackend::Host(d), true) => d.write(req.lba, &host),
            (DiskBackend::Host(d), false) => d.read(req.lba, &host),
            (DiskBackend::Ram(d), true) => d.write(req.lba, &host),
            (DiskBackend::Ram(d), false) => d.read(req.lba, &host),
        }
    };
    r.map(|_| 0).map_err(|e| {
        log::warn!("{}: disk {}: {}", stub.name, disk.device.name(), e);
        Errno::Io
    })
}

fn data_read(stub: &Domain, b: &StubBackends, args: [u64; 5]) -> Result<u64, Errno> {
    let [handle, offset, dest, len, where_] = args;
    let data = b.data.get(handle as usize).ok_or(Errno::Inval)?;
    if len > DATA_READ_MAX {
        return Err(Errno::Inval);
    }
    let end = offset.checked_add(len).ok_or(Errno::Inval)?;
    if end > data.len() as u64 {
        return Err(Errno::Inval);
    }
    let mem = match where_ {
        DEST_GUEST => &b.guest.mem,
        DEST_STUB => &stub.mem,
        _ => return Err(Errno::Inval),
    };
    mem.write(dest, &data[offset as usize..end as usize]).map_err(|_| Errno::Fault)?;
    Ok(len)
}

/// NET_SEND: a frame of the guest's NIC, as pieces of the guest's RAM or
/// the stub's. The list's shape is checked here; the pieces themselves
/// when the bridge copies them (a piece outside RAM drops the frame).
fn net_send(stub: &Domain, b: &StubBackends, args: [u64; 5]) -> Result<u64, Errno> {
    use ferrite_abi::{net_piece, NET_MAX_PIECES};
    use ferrite_devmodel::virtio::queue::Buffer;
    let [handle, list, count, where_, _] = args;
    let nic = b.nics.get(handle as usize).ok_or(Errno::Inval)?;
    if count == 0 || count > NET_MAX_PIECES as u64 {
        return Err(Errno::Inval);
    }
    let mem = match where_ {
        DEST_GUEST => &b.guest.mem,
        DEST_STUB => &stub.mem,
        _ => return Err(Errno::Inval),
    };
    let bytes = read_stub(stub, list, count * net_piece::SIZE as u64, (NET_MAX_PIECES * net_piece::SIZE) as u64)?;
    let mut pieces = Vec::with_capacity(count as usize);
    let mut len: u64 = 0;
    for p in bytes.chunks_exact(net_piece::SIZE) {
        let gpa = u64::from_le_bytes(p[net_piece::ADDR..net_piece::ADDR + 8].try_into().map_err(|_| Errno::Inval)?);
        let l = u32::from_le_bytes(p[net_piece::LEN..net_piece::LEN + 4].try_into().map_err(|_| Errno::Inval)?);
        len += u64::from(l);
        pieces.push(Buffer { gpa, len: l, writable: false });
    }
    if !(14..=ferrite_devmodel::virtio::net::MAX_FRAME as u64).contains(&len) {
        return Err(Errno::Inval);
    }
    nic.send(&crate::bridge::Frame::Guest {
        mem,
        pieces: &pieces,
        len: len as u32,
        offload: ferrite_devmodel::net_offload::Offload::NONE,
    });
    Ok(0)
}
