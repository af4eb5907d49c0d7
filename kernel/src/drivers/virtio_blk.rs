//! Host disks: QEMU's `virtio-blk-pci` devices, driven with the
//! `virtio-drivers` crate, and the registry the rest of the hypervisor
//! finds them in by name.
//!
//! A disk's name is its virtio serial number (QEMU's `serial=`, read with
//! GET_ID); HVM configs refer to it as `phy:NAME`. A disk without a serial
//! is named after its PCI address (`pci-00-03-0`).
//!
//! Two ways in, sharing one queue:
//! * synchronous (`read`/`write`, the stub domains' block hypercall):
//!   submitted, then polled for completion with the device's lock held, so
//!   any CPU may call in;
//! * asynchronous (`submit`, the PVH domains' virtio-blk disks): queued,
//!   and completed by whoever polls next (`poll_all`: idle host CPUs while
//!   anything is in flight, CPU 0's pollers, the next submission); the
//!   submitter's [`IoClient`] is told outside the device lock.
//!
//! Neither uses interrupts (the host's virtio-blk is polled). Data moves
//! by DMA straight between the device and the memory the caller names by
//! host physical address (host memory is identity mapped, so that address
//! is also what goes into the virtio descriptors). Only a request with a
//! segment that is not a whole number of sectors goes through a bounce
//! buffer, because a virtio-blk data buffer must be whole sectors.
//!
//! A device that stops answering for `IDLE_TIMEOUT_NS` is declared failed:
//! its bus mastering is turned off (so it can no longer touch the request's
//! memory) and every later request fails at once.

use super::pci::{self, ConfigAccess, PciAddress, PciFunction};
use crate::arch::time;
use crate::mm;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use log::{error, info};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use super::virtio::{self, FerriteHal};
use virtio_drivers::transport::pci::PciTransport;

pub const SECTOR_SIZE: usize = 512;

/// virtio-blk's PCI device IDs: transitional (legacy + modern interface,
/// QEMU's default on a conventional PCI slot) and modern-only.
const VIRTIO_BLK_TRANSITIONAL: u16 = 0x1001;
const VIRTIO_BLK_MODERN: u16 = 0x1042;

/// Requests in flight at once: the queue size `VirtIOBlk` sets up. With
/// indirect descriptors (QEMU offers them) each request takes one slot.
const QUEUE_DEPTH: usize = 16;
/// The largest single virtio request; longer segments are split, so one
/// request never ties up the device (or the bounce buffer) for long.
const MAX_REQUEST_BYTES: usize = 128 << 10;
/// Size of the bounce buffer for requests with odd-sized segments; such
/// requests are done in pieces of this size.
const BOUNCE_BYTES: usize = 64 << 10;
/// How long a device may go without completing anything while requests
/// are pending before it is declared failed. Generous: QEMU under TCG on a
/// busy host can be slow, and a failed disk stays failed.
const IDLE_TIMEOUT_NS: u64 = 30_000_000_000;

/// Why a block request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockIoError {
    /// The request runs past the end of the disk.
    OutOfRange { lba: u64, sectors: u64, capacity: u64 },
    /// The segments do not add up to whole sectors.
    NotSectorMultiple { bytes: usize },
    /// A segment wraps around the address space or starts at 0.
    BadSegment { host_pa: u64, len: usize },
    /// A write to a read-only disk.
    ReadOnly,
    /// No memory for the bounce buffer.
    OutOfMemory,
    /// The device completed the request with an error status.
    Device(virtio_drivers::Error),
    /// The device stopped answering; it is now failed.
    Timeout,
    /// The device failed earlier (timeout or protocol violation).
    DeviceFailed,
}

impl fmt::Display for BlockIoError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BlockIoError::OutOfRange { lba, sectors, capacity } => {
                write!(f, "sectors {}..{} are beyond the end of the disk ({} sectors)", lba, lba.saturating_add(*sectors), capacity)
            }
            BlockIoError::NotSectorMultiple { bytes } => write!(f, "{} bytes is not a whole number of {}-byte sectors", bytes, SECTOR_SIZE),
            BlockIoError::BadSegment { host_pa, len } => write!(f, "invalid segment of {} bytes at {:#x}", len, host_pa),
            BlockIoError::ReadOnly => write!(f, "the disk is read-only"),
            BlockIoError::OutOfMemory => write!(f, "no memory for a bounce buffer"),
            BlockIoError::Device(e) => write!(f, "device error: {}", e),
            BlockIoError::Timeout => write!(f, "the device did not complete the request within {} s; disk disabled", IDLE_TIMEOUT_NS / 1_000_000_000),
            BlockIoError::DeviceFailed => write!(f, "the disk was disabled after an earlier failure"),
        }
    }
}

/// A host disk. Shared by every CPU; requests serialize on its lock.
pub struct BlockDevice {
    name: String,
    pci: PciAddress,
    config: ConfigAccess,
    sectors: u64,
    read_only: bool,
    state: spin::Mutex<DeviceState>,
}

struct DeviceState {
    /// None once the device has failed.
    blk: Option<VirtIOBlk<FerriteHal, PciTransport>>,
    /// Request headers and status bytes, which the device reads and writes
    /// by DMA, at fixed heap addresses while requests are in flight.
    slots: Box<[Slot; QUEUE_DEPTH]>,
    /// Asynchronous chunks waiting for a free slot, in submission order.
    backlog: VecDeque<(Direction, Chunk, Arc<AsyncRequest>)>,
    /// Asynchronous requests whose last chunk is done, to be told once the
    /// lock is released.
    finished: Vec<Arc<AsyncRequest>>,
    /// When an asynchronous chunk last completed (or the first was
    /// submitted): the idle limit runs from here.
    progress_ns: u64,
}

#[derive(Default)]
struct Slot {
    /// The descriptor chain's head while the request is in flight.
    token: Option<u16>,
    request: BlkReq,
    response: BlkResp,
    chunk: Chunk,
    direction: Direction,
    /// The asynchronous request this chunk belongs to; None: a synchronous
    /// caller waits for it.
    owner: Option<Arc<AsyncRequest>>,
}

/// Told when an asynchronous request is done.
pub trait IoClient: Send + Sync {
    /// Request `tag` finished: every byte moved (`ok`), or not. Called
    /// without any disk lock held, on whichever CPU polled.
    fn io_done(&self, tag: u64, ok: bool);
}

/// One asynchronous request: its chunks share it.
struct AsyncRequest {
    chunks_left: AtomicU32,
    failed: AtomicBool,
    client: Arc<dyn IoClient>,
    tag: u64,
}

impl AsyncRequest {
    /// One chunk is done; true when it was the last.
    fn chunk_done(&self, ok: bool) -> bool {
        if !ok {
            self.failed.store(true, Ordering::SeqCst);
        }
        self.chunks_left.fetch_sub(1, Ordering::SeqCst) == 1
    }
}

/// Asynchronous requests not yet told, over every disk: while non-zero,
/// idle CPUs poll instead of halting.
static ASYNC_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One virtio request's worth of data: sectors from `lba` to or from
/// `len` bytes of host memory at `host_pa`.
#[derive(Clone, Copy, Default)]
struct Chunk {
    lba: u64,
    host_pa: u64,
    len: usize,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Direction {
    /// Disk to memory.
    #[default]
    Read,
    /// Memory to disk.
    Write,
}

impl BlockDevice {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the device refuses writes (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads sectors from `lba` on into the segments, in order: (host
    /// physical address, length in bytes). The lengths must add up to
    /// whole sectors; a segment that is not itself whole sectors makes the
    /// request use a bounce buffer.
    ///
    /// # Safety
    ///
    /// Every segment must be RAM that the device may write at any time
    /// during the call and that no Rust reference covers: e.g. a guest's
    /// RAM frames (`GuestMemory::host_segments`), not the hypervisor's own
    /// data.
    pub unsafe fn read(&self, lba: u64, segments: &[(u64, usize)]) -> Result<(), BlockIoError> {
        self.transfer(Direction::Read, lba, segments)
    }

    /// Writes the segments' bytes (see `read`) to sectors from `lba` on.
    ///
    /// # Safety
    ///
    /// Every segment must be RAM that the device may read during the call
    /// (e.g. a guest's RAM frames); its contents may change meanwhile (the
    /// guest is running), which only affects what is written.
    pub unsafe fn write(&self, lba: u64, segments: &[(u64, usize)]) -> Result<(), BlockIoError> {
        self.transfer(Direction::Write, lba, segments)
    }

    /// Asks the device to make completed writes durable (a no-op when it
    /// does not offer VIRTIO_BLK_F_FLUSH). Note: `virtio-drivers` waits for
    /// a flush without a time limit.
    pub fn flush(&self) -> Result<(), BlockIoError> {
        let mut state = self.state.lock();
        // `virtio-drivers` waits for its flush by expecting it first on the
        // used ring: let the requests in flight finish before it. (A flush
        // covers the writes completed before it, so those still waiting in
        // the backlog need not go first.)
        let deadline = time::uptime_ns() + IDLE_TIMEOUT_NS;
        while state.slots.iter().any(|s| s.token.is_some()) {
            self.reap(&mut state);
            if state.blk.is_none() {
                break;
            }
            if time::uptime_ns() > deadline {
                let DeviceState { blk, .. } = &mut *state;
                self.fail(blk, "no request completed within the time limit");
                self.fail_async(&mut state);
            }
            core::hint::spin_loop();
        }
        let result = match state.blk.as_mut() {
            Some(blk) => blk.flush().map_err(BlockIoError::Device),
            None => Err(BlockIoError::DeviceFailed),
        };
        self.pump(&mut state);
        let finished = core::mem::take(&mut state.finished);
        drop(state);
        tell(finished);
        result
    }

    /// Checks a request against the disk; returns its length in bytes.
    fn check(&self, direction: Direction, lba: u64, segments: &[(u64, usize)]) -> Result<usize, BlockIoError> {
        let mut bytes = 0usize;
        for &(host_pa, len) in segments {
            if host_pa == 0 || host_pa.checked_add(len as u64).is_none() {
                return Err(BlockIoError::BadSegment { host_pa, len });
            }
            bytes = bytes.checked_add(len).ok_or(BlockIoError::BadSegment { host_pa, len })?;
        }
        if bytes % SECTOR_SIZE != 0 {
            return Err(BlockIoError::NotSectorMultiple { bytes });
        }
        let sectors = (bytes / SECTOR_SIZE) as u64;
        if lba.checked_add(sectors).is_none_or(|end| end > self.sectors) {
            return Err(BlockIoError::OutOfRange { lba, sectors, capacity: self.sectors });
        }
        if direction == Direction::Write && self.read_only {
            return Err(BlockIoError::ReadOnly);
        }
        Ok(bytes)
    }

    fn transfer(&self, direction: Direction, lba: u64, segments: &[(u64, usize)]) -> Result<(), BlockIoError> {
        let bytes = self.check(direction, lba, segments)?;
        if bytes == 0 {
            return Ok(());
        }
        let mut state = self.state.lock();
        let result = if segments.iter().all(|&(_, len)| len % SECTOR_SIZE == 0) {
            self.run(&mut state, direction, chunks_of(lba, segments))
        } else {
            self.run_bounced(&mut state, direction, lba, segments, bytes)
        };
        // Asynchronous work may have finished meanwhile, and slots freed.
        self.pump(&mut state);
        let finished = core::mem::take(&mut state.finished);
        drop(state);
        tell(finished);
        result
    }

    /// Starts an asynchronous request: sectors from `lba` on to or from the
    /// segments (host physical address, bytes), each a whole number of
    /// sectors. `client.io_done(tag, ..)` is called once when it is over,
    /// from whichever CPU polls; an error returned here means it never
    /// started and no call will come. A segment that is not whole sectors
    /// gets `NotSectorMultiple`: use the synchronous `read`/`write`, which
    /// bounce such requests.
    ///
    /// # Safety
    ///
    /// Every segment must be RAM the device may read or write at any time
    /// until `io_done` is called, that stays allocated until then, and that
    /// no Rust reference covers (a guest's RAM frames, with the guest kept
    /// alive by `client`).
    pub unsafe fn submit(&self, write: bool, lba: u64, segments: &[(u64, usize)], client: Arc<dyn IoClient>, tag: u64) -> Result<(), BlockIoError> {
        let direction = if write { Direction::Write } else { Direction::Read };
        let bytes = self.check(direction, lba, segments)?;
        if segments.iter().any(|&(_, len)| len % SECTOR_SIZE != 0) {
            return Err(BlockIoError::NotSectorMultiple { bytes });
        }
        if bytes == 0 {
            client.io_done(tag, true);
            return Ok(());
        }
        let chunks: Vec<Chunk> = chunks_of(lba, segments).collect();
        let request = Arc::new(AsyncRequest {
            chunks_left: AtomicU32::new(chunks.len() as u32),
            failed: AtomicBool::new(false),
            client,
            tag,
        });
        let mut state = self.state.lock();
        if state.blk.is_none() {
            return Err(BlockIoError::DeviceFailed);
        }
        ASYNC_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if state.backlog.is_empty() && state.slots.iter().all(|s| s.owner.is_none()) {
            state.progress_ns = time::uptime_ns();
        }
        state.backlog.extend(chunks.into_iter().map(|c| (direction, c, request.clone())));
        self.pump(&mut state);
        let finished = core::mem::take(&mut state.finished);
        drop(state);
        tell(finished);
        Ok(())
    }

    /// Completes what the device has finished and starts what waits;
    /// returns whether asynchronous work is still outstanding on this disk.
    /// Gives up at once if another CPU holds the disk (it makes progress).
    pub fn poll(&self) -> bool {
        let Some(mut state) = self.state.try_lock() else { return true };
        self.reap(&mut state);
        self.pump(&mut state);
        let busy = !state.backlog.is_empty() || state.slots.iter().any(|s| s.owner.is_some());
        if busy && time::uptime_ns() > state.progress_ns + IDLE_TIMEOUT_NS {
            let DeviceState { blk, .. } = &mut *state;
            self.fail(blk, "no request completed within the time limit");
            self.fail_async(&mut state);
        }
        let finished = core::mem::take(&mut state.finished);
        drop(state);
        tell(finished);
        busy
    }

    /// Completes every finished asynchronous chunk (a synchronous one's
    /// token is left for its waiter: `run` only reaps while it waits).
    fn reap(&self, state: &mut DeviceState) {
        loop {
            let Some(device) = state.blk.as_mut() else { return };
            let Some(token) = device.peek_used() else { return };
            let Some(i) = state.slots.iter().position(|s| s.token == Some(token)) else {
                let DeviceState { blk, .. } = state;
                self.fail(blk, &format!("the device completed request {} that was never submitted", token));
                self.fail_async(state);
                return;
            };
            if state.slots[i].owner.is_none() {
                return; // a synchronous caller's, which is waiting for it
            }
            let ok = self.complete_slot(state, i).is_ok();
            state.progress_ns = time::uptime_ns();
            self.async_chunk_done(state, i, ok);
        }
    }

    fn async_chunk_done(&self, state: &mut DeviceState, slot: usize, ok: bool) {
        if let Some(owner) = state.slots[slot].owner.take() {
            if owner.chunk_done(ok) {
                state.finished.push(owner);
            }
        }
    }

    /// Starts waiting asynchronous chunks in free slots.
    fn pump(&self, state: &mut DeviceState) {
        while let Some(i) = state.slots.iter().position(|s| s.token.is_none()) {
            let Some((direction, chunk, owner)) = state.backlog.pop_front() else { return };
            match self.start(state, i, direction, chunk) {
                Ok(()) => state.slots[i].owner = Some(owner),
                Err(virtio_drivers::Error::QueueFull) => {
                    state.backlog.push_front((direction, chunk, owner));
                    return;
                }
                Err(e) => {
                    error!("disk {}: cannot start a request: {}", self.name, e);
                    if owner.chunk_done(false) {
                        state.finished.push(owner);
                    }
                    if state.blk.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Submits one chunk in slot `i`.
    fn start(&self, state: &mut DeviceState, i: usize, direction: Direction, chunk: Chunk) -> Result<(), virtio_drivers::Error> {
        let DeviceState { blk, slots, .. } = state;
        let device = blk.as_mut().ok_or(virtio_drivers::Error::NotReady)?;
        let slot = &mut slots[i];
        // SAFETY: the chunk lies in memory the caller of `read`/`write`/
        // `submit` handed over until the request is done (or in a bounce
        // buffer), identity mapped; the device is its only user until the
        // request completes or the device is failed (bus mastering off),
        // and the slot's header and status stay put on the heap until then.
        let token = unsafe {
            match direction {
                Direction::Read => {
                    let buf = core::slice::from_raw_parts_mut(chunk.host_pa as *mut u8, chunk.len);
                    device.read_blocks_nb(chunk.lba as usize, &mut slot.request, buf, &mut slot.response)
                }
                Direction::Write => {
                    let buf = core::slice::from_raw_parts(chunk.host_pa as *const u8, chunk.len);
                    device.write_blocks_nb(chunk.lba as usize, &mut slot.request, buf, &mut slot.response)
                }
            }
        }?;
        slot.token = Some(token);
        slot.chunk = chunk;
        slot.direction = direction;
        Ok(())
    }

    /// Takes slot `i`'s finished request off the used ring.
    fn complete_slot(&self, state: &mut DeviceState, i: usize) -> Result<(), virtio_drivers::Error> {
        let DeviceState { blk, slots, .. } = state;
        let device = blk.as_mut().ok_or(virtio_drivers::Error::NotReady)?;
        let slot = &mut slots[i];
        let Some(token) = slot.token.take() else { return Ok(()) };
        let chunk = slot.chunk;
        // SAFETY: the same header, buffer and status the request was
        // submitted with (rebuilt from the recorded chunk), as the
        // `complete_*` calls require.
        let completed = unsafe {
            match slot.direction {
                Direction::Read => {
                    let buf = core::slice::from_raw_parts_mut(chunk.host_pa as *mut u8, chunk.len);
                    device.complete_read_blocks(token, &slot.request, buf, &mut slot.response)
                }
                Direction::Write => {
                    let buf = core::slice::from_raw_parts(chunk.host_pa as *const u8, chunk.len);
                    device.complete_write_blocks(token, &slot.request, buf, &mut slot.response)
                }
            }
        };
        if let Err(e) = completed {
            let what = if slot.direction == Direction::Read { "read" } else { "write" };
            error!("disk {}: {} of {} bytes at sector {} failed: {}", self.name, what, chunk.len, chunk.lba, e);
        }
        completed
    }

    /// A request with odd-sized segments, through a bounce buffer: pieces
    /// of `BOUNCE_BYTES` are gathered from the segments and written, or
    /// read and scattered to them.
    fn run_bounced(&self, state: &mut DeviceState, direction: Direction, lba: u64, segments: &[(u64, usize)], bytes: usize) -> Result<(), BlockIoError> {
        let frames = bytes.min(BOUNCE_BYTES).div_ceil(4096);
        let bounce = mm::alloc_contiguous(frames, 1).ok_or(BlockIoError::OutOfMemory)?;
        let mut result = Ok(());
        for offset in (0..bytes).step_by(BOUNCE_BYTES) {
            let len = (bytes - offset).min(BOUNCE_BYTES);
            let chunk = Chunk { lba: lba + (offset / SECTOR_SIZE) as u64, host_pa: bounce, len };
            if direction == Direction::Write {
                copy_segments(segments, offset, len, |seg_pa, at, n| (seg_pa, bounce + at as u64, n));
            }
            result = self.run(state, direction, core::iter::once(chunk));
            if result.is_err() {
                break;
            }
            if direction == Direction::Read {
                copy_segments(segments, offset, len, |seg_pa, at, n| (bounce + at as u64, seg_pa, n));
            }
        }
        // Safe to free even after a timeout: the failed device has lost bus
        // mastering and cannot write the buffer any more.
        mm::free_contiguous(bounce, frames);
        result
    }

    /// Runs the chunks as virtio requests, up to `QUEUE_DEPTH` at a time
    /// (beside any asynchronous ones), and waits until every submitted one
    /// has completed, completing asynchronous ones that finish meanwhile.
    /// After an error no new request is submitted; the first error is
    /// returned.
    fn run(&self, state: &mut DeviceState, direction: Direction, chunks: impl Iterator<Item = Chunk>) -> Result<(), BlockIoError> {
        if state.blk.is_none() {
            return Err(BlockIoError::DeviceFailed);
        }
        let mut chunks = chunks.peekable();
        let mut in_flight = 0;
        let mut first_error = None;
        loop {
            while first_error.is_none() {
                let Some(&chunk) = chunks.peek() else { break };
                let Some(i) = state.slots.iter().position(|s| s.token.is_none()) else { break };
                match self.start(state, i, direction, chunk) {
                    Ok(()) => {
                        in_flight += 1;
                        chunks.next();
                    }
                    // No descriptors left: wait for a completion first.
                    Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => break,
                    Err(e) => first_error = Some(BlockIoError::Device(e)),
                }
            }
            if in_flight == 0 {
                return first_error.map_or(Ok(()), Err);
            }

            let deadline = time::uptime_ns() + IDLE_TIMEOUT_NS;
            let token = loop {
                let Some(device) = state.blk.as_mut() else { return Err(BlockIoError::DeviceFailed) };
                if let Some(token) = device.peek_used() {
                    break token;
                }
                if time::uptime_ns() > deadline {
                    let DeviceState { blk, .. } = state;
                    self.fail(blk, "no request completed within the time limit");
                    self.fail_async(state);
                    return Err(BlockIoError::Timeout);
                }
                core::hint::spin_loop();
            };
            let Some(i) = state.slots.iter().position(|s| s.token == Some(token)) else {
                let DeviceState { blk, .. } = state;
                self.fail(blk, &format!("the device completed request {} that was never submitted", token));
                self.fail_async(state);
                return Err(BlockIoError::DeviceFailed);
            };
            let completed = self.complete_slot(state, i);
            if state.slots[i].owner.is_some() {
                state.progress_ns = time::uptime_ns();
                self.async_chunk_done(state, i, completed.is_ok());
                continue;
            }
            in_flight -= 1;
            if let Err(e) = completed {
                first_error.get_or_insert(BlockIoError::Device(e));
            }
        }
    }

    /// After `fail`: every asynchronous request still in a slot or waiting
    /// is over, unsuccessfully.
    fn fail_async(&self, state: &mut DeviceState) {
        for i in 0..QUEUE_DEPTH {
            state.slots[i].token = None;
            self.async_chunk_done(state, i, false);
        }
        while let Some((_, _, owner)) = state.backlog.pop_front() {
            if owner.chunk_done(false) {
                state.finished.push(owner);
            }
        }
    }

    /// Takes the device out of service: no more bus mastering (so no more
    /// DMA into memory that pending requests named), no more requests. The
    /// driver is leaked rather than dropped: dropping resets the device and
    /// waits, without a limit, for the reset to finish.
    fn fail(&self, blk: &mut Option<VirtIOBlk<FerriteHal, PciTransport>>, why: &str) {
        self.config.clear_command_bits(self.pci, pci::COMMAND_BUS_MASTER);
        if let Some(driver) = blk.take() {
            core::mem::forget(driver);
        }
        error!("disk {}: {}; disabled", self.name, why);
    }
}

/// A request's segments as virtio requests of at most `MAX_REQUEST_BYTES`,
/// each on consecutive sectors from `lba`.
fn chunks_of(lba: u64, segments: &[(u64, usize)]) -> impl Iterator<Item = Chunk> + '_ {
    let mut next_lba = lba;
    segments.iter().flat_map(move |&(host_pa, len)| {
        let first = next_lba;
        next_lba += (len / SECTOR_SIZE) as u64;
        (0..len).step_by(MAX_REQUEST_BYTES).map(move |offset| Chunk {
            lba: first + (offset / SECTOR_SIZE) as u64,
            host_pa: host_pa + offset as u64,
            len: (len - offset).min(MAX_REQUEST_BYTES),
        })
    })
}

/// Tells the clients of finished asynchronous requests (no lock held).
fn tell(finished: Vec<Arc<AsyncRequest>>) {
    for r in finished {
        ASYNC_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        r.client.io_done(r.tag, !r.failed.load(Ordering::SeqCst));
    }
}

/// Polls every disk with asynchronous work; returns whether any is still
/// outstanding. Cheap when there is none.
pub fn poll_all() -> bool {
    if ASYNC_IN_FLIGHT.load(Ordering::SeqCst) == 0 {
        return false;
    }
    let mut busy = false;
    for disk in all() {
        busy |= disk.poll();
    }
    busy
}

/// Copies `len` bytes at byte `offset` of the segment list, piece by
/// piece: `route(segment address, offset within the piece run, bytes)`
/// gives (source, destination, bytes) for each piece.
fn copy_segments(segments: &[(u64, usize)], offset: usize, len: usize, route: impl Fn(u64, usize, usize) -> (u64, u64, usize)) {
    let mut skip = offset;
    let mut done = 0;
    for &(host_pa, seg_len) in segments {
        if done == len {
            break;
        }
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len - done);
        let (from, to, n) = route(host_pa + skip as u64, done, n);
        // SAFETY: one side is the bounce buffer (frames owned by this
        // request), the other a segment the caller of `read`/`write`
        // handed over; both identity mapped and distinct memory.
        unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, n) };
        skip = 0;
        done += n;
    }
}

/// Every disk found at boot.
static DISKS: spin::Once<Vec<BlockDevice>> = spin::Once::new();

/// The disk called `name`.
pub fn find(name: &str) -> Option<&'static BlockDevice> {
    all().iter().find(|d| d.name == name)
}

/// Every disk, in PCI discovery order.
pub fn all() -> &'static [BlockDevice] {
    DISKS.get().map_or(&[], Vec::as_slice)
}

/// Brings up the host's virtio-blk devices among `functions` and logs one
/// line per disk. Call once, before anything looks a disk up.
pub fn init(config: ConfigAccess, functions: &[PciFunction]) {
    let mut disks: Vec<BlockDevice> = Vec::new();
    for f in functions.iter().filter(|f| is_virtio_blk(f)) {
        let disk = match probe(config, f) {
            Ok(d) => d,
            Err(why) => {
                error!("virtio-blk at {}: not usable: {}", f.address, why);
                continue;
            }
        };
        if let Some(other) = disks.iter().find(|d| d.name == disk.name) {
            error!("virtio-blk at {}: the name '{}' is already taken by {}; ignored", f.address, disk.name, other.pci);
            continue;
        }
        info!(
            "disk {}: {} MiB ({} sectors), {}, virtio-blk at {}",
            disk.name,
            (disk.sectors * SECTOR_SIZE as u64) >> 20,
            disk.sectors,
            if disk.read_only { "read-only" } else { "read-write" },
            disk.pci
        );
        disks.push(disk);
    }
    DISKS.call_once(|| disks);
}

fn is_virtio_blk(f: &PciFunction) -> bool {
    f.vendor_id == virtio::VENDOR_ID && matches!(f.device_id, VIRTIO_BLK_TRANSITIONAL | VIRTIO_BLK_MODERN)
}

/// Brings one device up: memory decoding and bus mastering on, the virtio
/// handshake, capacity, read-only flag and serial number.
fn probe(config: ConfigAccess, f: &PciFunction) -> Result<BlockDevice, String> {
    let at = f.address;
    let transport = virtio::pci_transport(config, at)?;
    let mut blk = VirtIOBlk::<FerriteHal, _>::new(transport).map_err(|e| format!("virtio-blk set-up: {}", e))?;
    let mut serial = [0u8; 20];
    let name = match blk.device_id(&mut serial) {
        Ok(len) => disk_name(&serial[..len]),
        Err(_) => None, // GET_ID is optional
    }
    .unwrap_or_else(|| format!("pci-{:02x}-{:02x}-{:x}", at.bus, at.device, at.function));
    Ok(BlockDevice {
        name,
        pci: at,
        config,
        sectors: blk.capacity(),
        read_only: blk.readonly(),
        state: spin::Mutex::new(DeviceState { blk: Some(blk), slots: Box::default(), backlog: VecDeque::new(), finished: Vec::new(), progress_ns: 0 }),
    })
}

/// A serial number usable as a disk name: printable ASCII without spaces
/// or the separators of xl's disk syntax (`,` `:` `=`).
fn disk_name(serial: &[u8]) -> Option<String> {
    let ok = !serial.is_empty() && serial.iter().all(|&b| b.is_ascii_graphic() && !matches!(b, b',' | b':' | b'='));
    ok.then(|| String::from_utf8_lossy(serial).into_owned())
}
