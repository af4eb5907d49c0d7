//! The hypervisor's side of stub domains: what a stub may ask for
//! (hypercalls) and the resources it may name (its guest's disks and boot
//! files by handle, its guest's memory, its own memory).
//!
//! A stub domain is hostile too: every address, length, handle and number
//! it passes is checked here, and a stub can only ever reach its own RAM,
//! its guest's RAM and its guest's disks.

use crate::domain::{Domain, DomainState, StubCall};
use crate::drivers::virtio_blk::BlockDevice;
use crate::ioreq::IoreqServer;
use crate::mm::guest::GuestMemory;
use crate::platform::Effects;
use crate::sched;
use crate::virt::GuestRegs;
use crate::nbd::{NbdBuffer, NbdDisk, NbdOp};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use ferrite_devmodel::dma::DmaSegment;
use spin::Mutex;
use ferrite_abi::{hypercall as hc, BlockRequest, Errno, PowerAction, BLOCK_FLAG_GUEST, BLOCK_FLUSH, BLOCK_READ, BLOCK_WRITE, DEST_GUEST, DEST_STUB};

/// What serves a stub's disk: a host virtio-blk disk, a boot module in
/// RAM (`module:NAME`), or an export on an NBD server (`file:` and `nbd:`
/// disks, connected before the domain is built). Host and RAM disks
/// complete inside the BLOCK_IO call; NBD requests complete later, from
/// the network (or dom0's vsock) poll, and the stub's vCPU blocks until
/// then.
pub enum DiskBackend {
    Host(&'static BlockDevice),
    Ram(Arc<crate::drivers::ramdisk::RamDisk>),
    Nbd(Arc<NbdDisk>),
}

impl DiskBackend {
    pub fn name(&self) -> &str {
        match self {
            DiskBackend::Host(d) => d.name(),
            DiskBackend::Ram(d) => d.name(),
            DiskBackend::Nbd(d) => d.name(),
        }
    }

    /// An NBD export's size is the one its handshake gave, also once its
    /// server is gone (its requests then fail with EIO, not EINVAL).
    pub fn sectors(&self) -> u64 {
        match self {
            DiskBackend::Host(d) => d.sectors(),
            DiskBackend::Ram(d) => d.sectors(),
            DiskBackend::Nbd(d) => d.negotiated().map_or(0, |e| e.size / 512),
        }
    }

    pub fn read_only(&self) -> bool {
        match self {
            DiskBackend::Host(d) => d.read_only(),
            DiskBackend::Ram(d) => d.read_only(),
            // Not negotiated: nothing may be written.
            DiskBackend::Nbd(d) => d.negotiated().is_none_or(|e| e.read_only()),
        }
    }

    /// What the disk sharing check (`disk_claims`) calls it: the host
    /// disk's name, or `nbd:` and the export as PVH disks name it.
    pub fn claim_target(&self) -> String {
        match self {
            DiskBackend::Nbd(d) => alloc::format!("nbd:{}", d.name()),
            _ => String::from(self.name()),
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
    /// The NBD request the stub's vCPU blocks in (one at most: BLOCK_IO
    /// is synchronous for the stub).
    pub block_wait: Mutex<Option<Arc<NbdWait>>>,
}

/// How long a stub's vCPU waits for one NBD request at most. The NBD
/// client fails a connection whose server is silent for
/// `nbd::REPLY_TIMEOUT_US` while requests wait, and every request on it
/// with an error, so the wait normally ends by then; this bounds it even
/// if a server keeps answering others' requests but never this one.
const NBD_WAIT_MAX_NS: u64 = 2 * crate::nbd::REPLY_TIMEOUT_US * 1000;

/// One BLOCK_IO on an NBD disk, between the stub's vCPU (blocked) and the
/// request's completion in the network poll.
pub struct NbdWait {
    /// `None` while the request goes on; its result (RAX) once it is over
    /// or given up on.
    result: Mutex<Option<u64>>,
    /// Given up on (`deadline_ns` passed): the request's data must no
    /// longer reach or leave memory the stub may be reusing. Changed and
    /// read under `result`'s lock, so no copy runs once it is set.
    cancelled: core::sync::atomic::AtomicBool,
    deadline_ns: u64,
}

/// The data of an NBD request from a stub: its checked segments in the
/// guest's or the stub's RAM, moved straight between the NBD stream and
/// those frames (the one copy TCP needs, as for PVH disks). It holds the
/// domain whose RAM that is until the request is over, so the frames
/// cannot be freed under the copy even if the domains stop meanwhile; it
/// holds no reference back to the stub's backends (no cycle).
struct StubNbdBuffer {
    owner: Arc<Domain>,
    segments: Vec<DmaSegment>,
    wait: Arc<NbdWait>,
    /// Woken when the request is over.
    ioreq: Arc<IoreqServer>,
}

impl NbdBuffer for StubNbdBuffer {
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let _held = self.wait.result.lock();
        if self.wait.cancelled.load(core::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let mem = &self.owner.mem;
        let len = buf.len();
        crate::nbd::for_pieces(&self.segments, offset, len, |gpa, r| mem.read(gpa, &mut buf[r]).is_ok())
    }

    fn write(&self, offset: usize, data: &[u8]) -> bool {
        let _held = self.wait.result.lock();
        if self.wait.cancelled.load(core::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let mem = &self.owner.mem;
        crate::nbd::for_pieces(&self.segments, offset, data.len(), |gpa, r| mem.write(gpa, &data[r]).is_ok())
    }

    fn done(&self, ok: bool) {
        {
            let mut result = self.wait.result.lock();
            if result.is_some() {
                // Given up on already; the stub has had its EIO.
                return;
            }
            *result = Some(if ok { 0 } else { Errno::Io.as_result() });
        }
        self.ioreq.notify();
    }
}

impl crate::domain::StubService for StubBackends {
    fn guest(&self) -> &Arc<Domain> {
        &self.guest
    }

    fn hypercall(&self, stub: &Arc<Domain>, regs: &mut GuestRegs) -> StubCall {
        match hypercall(stub, self, regs) {
            After::Continue => StubCall::Continue,
            After::Wait => StubCall::Wait,
            After::BlockIo => StubCall::BlockIo,
        }
    }

    fn block_io_result(&self) -> Result<u64, u64> {
        let mut slot = self.block_wait.lock();
        let Some(wait) = slot.clone() else {
            // Nothing in flight (cannot happen): the call failed.
            return Ok(Errno::Io.as_result());
        };
        let mut result = wait.result.lock();
        if result.is_none() {
            if crate::arch::time::now_ns() < wait.deadline_ns {
                return Err(wait.deadline_ns);
            }
            // Given up on: no more of its data moves from now on (the
            // lock is held), and its late completion is ignored.
            wait.cancelled.store(true, core::sync::atomic::Ordering::SeqCst);
            log::warn!("{}-dm: an NBD request took more than {} s; the stub gets an I/O error", self.guest.name, NBD_WAIT_MAX_NS / 1_000_000_000);
            *result = Some(Errno::Io.as_result());
        }
        let rax = result.unwrap_or(Errno::Io.as_result());
        drop(result);
        *slot = None;
        Ok(rax)
    }

    fn block_io_deadline(&self) -> u64 {
        self.block_wait.lock().as_ref().map_or(0, |w| w.deadline_ns)
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
    /// BLOCK_IO handed to an NBD disk: block until it is over
    /// (`StubBackends::block_wait`); the result goes in rax then.
    BlockIo,
}

/// Largest console write or input read per call.
const CONSOLE_MAX: u64 = 4096;
/// Largest DATA_READ per call.
const DATA_READ_MAX: u64 = 64 << 20;

/// Handles one hypercall of `stub`. Results go in rax (for
/// [`After::BlockIo`], when the request is over).
pub fn hypercall(stub: &Arc<Domain>, b: &StubBackends, regs: &mut GuestRegs) -> After {
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
        hc::BLOCK_IO => match block_io(stub, b, args[0], args[1]) {
            Ok(BlockStarted::Done(v)) => Ok(v),
            Ok(BlockStarted::Waiting) => return After::BlockIo,
            Err(e) => Err(e),
        },
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

/// How a BLOCK_IO went: over (rax), or handed to an NBD disk with the
/// stub's vCPU to block until it is over.
enum BlockStarted {
    Done(u64),
    Waiting,
}

fn block_io(stub: &Arc<Domain>, b: &StubBackends, addr: u64, len: u64) -> Result<BlockStarted, Errno> {
    let max = (ferrite_abi::block::HEADER + ferrite_abi::BLOCK_MAX_SEGMENTS * ferrite_abi::block::SEGMENT) as u64;
    let bytes = read_stub(stub, addr, len, max)?;
    let req = BlockRequest::decode(&bytes).ok_or(Errno::Inval)?;
    let disk = b.disks.get(req.disk as usize).ok_or(Errno::Inval)?;
    if req.op == BLOCK_FLUSH {
        return match &disk.device {
            DiskBackend::Host(d) => d.flush().map(|_| BlockStarted::Done(0)).map_err(|_| Errno::Io),
            DiskBackend::Ram(_) => Ok(BlockStarted::Done(0)),
            // A server that does not say it takes NBD_CMD_FLUSH must not
            // be sent one (the protocol): nothing to flush then.
            DiskBackend::Nbd(d) if !d.negotiated().is_some_and(|e| e.can_flush()) => Ok(BlockStarted::Done(0)),
            DiskBackend::Nbd(d) => start_nbd(stub, b, d, NbdOp::Flush, 0, 0, Vec::new(), false),
        };
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
    let guest_mem = req.flags & BLOCK_FLAG_GUEST != 0;
    let mem = if guest_mem { &b.guest.mem } else { &stub.mem };
    let mut host = Vec::new();
    for &(gpa, l) in &req.segments {
        host_segments(mem, gpa, u64::from(l), &mut host)?;
    }
    if let DiskBackend::Nbd(d) = &disk.device {
        // Checked as above (every segment RAM of the guest or the stub);
        // the NBD stream then reads or writes them by guest-physical
        // address, which `GuestMemory` checks again on every copy.
        let segments = req.segments.iter().map(|&(gpa, len)| DmaSegment { gpa, len }).collect();
        let op = if write { NbdOp::Write } else { NbdOp::Read };
        return start_nbd(stub, b, d, op, req.lba * 512, req.count * 512, segments, guest_mem);
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
            (DiskBackend::Nbd(_), _) => return Err(Errno::Inval),
        }
    };
    r.map(|_| BlockStarted::Done(0)).map_err(|e| {
        log::warn!("{}: disk {}: {}", stub.name, disk.device.name(), e);
        Errno::Io
    })
}

/// Hands a checked request to an NBD disk. Its data moves between the NBD
/// stream and `segments` of the guest's RAM (`guest_mem`) or the stub's.
/// A request that ends at once (the server is gone) answers at once;
/// otherwise the stub's vCPU blocks until its completion wakes it
/// (failures, including a dead or silent server, end it with EIO: the NBD
/// client's timeouts, and `NBD_WAIT_MAX_NS` at most). Not logged per
/// request: the NBD client says once why its server failed.
#[allow(clippy::too_many_arguments)]
fn start_nbd(
    stub: &Arc<Domain>,
    b: &StubBackends,
    nbd: &Arc<NbdDisk>,
    op: NbdOp,
    offset: u64,
    len: u32,
    segments: Vec<DmaSegment>,
    guest_mem: bool,
) -> Result<BlockStarted, Errno> {
    let mut slot = b.block_wait.lock();
    if slot.is_some() {
        // The stub's one vCPU is blocked in the other: cannot happen.
        return Err(Errno::Inval);
    }
    let wait = Arc::new(NbdWait {
        result: Mutex::new(None),
        cancelled: core::sync::atomic::AtomicBool::new(false),
        deadline_ns: crate::arch::time::now_ns() + NBD_WAIT_MAX_NS,
    });
    let owner = if guest_mem { b.guest.clone() } else { stub.clone() };
    let buffer = Arc::new(StubNbdBuffer { owner, segments, wait: wait.clone(), ioreq: b.ioreq.clone() });
    *slot = Some(wait.clone());
    drop(slot);
    nbd.submit(op, offset, len, buffer);
    // Over already (a failed disk fails at once)?
    let done = *wait.result.lock();
    match done {
        Some(rax) => {
            *b.block_wait.lock() = None;
            Ok(BlockStarted::Done(rax))
        }
        None => Ok(BlockStarted::Waiting),
    }
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
