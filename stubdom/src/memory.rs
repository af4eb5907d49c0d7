//! Every raw memory access of the stub: the start information, the
//! I/O-request page, the guest window, the stub's own page tables (the
//! stack guard) and the heap arena. Callers get safe functions; the
//! address checks that make them sound are here or noted at each call.
//!
//! The hypervisor maps (ferrite_abi): the stub's RAM identity mapped from
//! 0 (page 0 absent) up to `STUB_RAM_BYTES`, the I/O-request page at
//! `IOREQ_GPA`, and the served guest's RAM at `GUEST_WINDOW + gpa`.

#![allow(unsafe_code)]

use crate::guest_memory::GuestRam;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use ferrite_abi::{
    bufio, slot, BufferedWrite, IoRequest, BUFIO_ENTRIES, BUFIO_GPA, BUFIO_RANGES, GUEST_WINDOW, IOREQ_GPA, IOREQ_SLOTS, IOREQ_SLOT_SIZE, START_INFO_GPA, START_INFO_MAX,
};
use ferrite_devmodel::dma::DmaError;
use linked_list_allocator::Heap;

/// The global allocator: a first-fit free list over the arena in the
/// image. The stub is single-threaded; the lock only satisfies `Sync`.
struct StubHeap(spin::Mutex<Heap>);

#[global_allocator]
static HEAP: StubHeap = StubHeap(spin::Mutex::new(Heap::empty()));

// SAFETY: every block comes from, and returns to, the one locked heap.
unsafe impl GlobalAlloc for StubHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` was returned by `alloc` with this layout
            // (GlobalAlloc's contract).
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}

/// Bytes of the heap in use and its size (for the start-up log).
pub fn heap_usage() -> (usize, usize) {
    let h = HEAP.0.lock();
    (h.used(), h.size())
}

extern "C" {
    // Defined by linker.ld.
    static __heap_start: u8;
    static __heap_end: u8;
    static __stack_guard: u8;
}

/// Hands the arena between `__heap_start` and `__heap_end` to the allocator
/// (the first call; later calls do nothing).
pub fn init_heap() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    // The linker script reserves the arena inside the image, used by
    // nothing else.
    let (start, end) = (&raw const __heap_start as usize, &raw const __heap_end as usize);
    // SAFETY: runs once (above), so the arena is not in use yet; it is
    // writable stub RAM owned by the allocator from now on.
    unsafe { HEAP.0.lock().init(start as *mut u8, end - start) };
}

/// The start information: `u32` length, then that many bytes of postcard
/// `StubConfig`. `None` when the length does not fit the start-info area.
pub fn start_info(addr: u64) -> Option<&'static [u8]> {
    if addr != START_INFO_GPA {
        return None;
    }
    // SAFETY: START_INFO_GPA..+START_INFO_MAX is stub RAM below the image
    // that only the hypervisor wrote, before the stub started; nothing
    // writes it afterwards.
    let len = unsafe { core::ptr::read_unaligned(addr as *const u32) } as u64;
    if len + 4 > START_INFO_MAX {
        return None;
    }
    // SAFETY: as above, and the range was just checked.
    Some(unsafe { core::slice::from_raw_parts((addr + 4) as *const u8, len as usize) })
}

/// Unmaps the page below the stack in the stub's own page tables, so a
/// stack overflow faults (a triple fault without an IDT: the hypervisor
/// destroys the stub) instead of overwriting .bss. Only done when the page
/// is mapped by a 4 KiB entry reachable through identity-mapped tables
/// inside the stub's RAM; otherwise the stub runs without the guard.
pub fn guard_stack() {
    let guard = &raw const __stack_guard as u64;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects (we run at CPL0).
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let mut table = cr3 & ADDR;
    for level in (1..=4).rev() {
        if table == 0 || table + 4096 > ferrite_abi::STUB_RAM_BYTES {
            log::warn!("stack guard: page table at {:#x} is not stub RAM", table);
            return;
        }
        let index = (guard >> (12 + 9 * (level - 1))) & 511;
        let entry_addr = (table + index * 8) as *mut u64;
        // SAFETY: `table` is a page of stub RAM (checked above) holding the
        // stub's page tables, identity mapped like all its RAM.
        let entry = unsafe { core::ptr::read_volatile(entry_addr) };
        if entry & PRESENT == 0 || (level > 1 && entry & HUGE != 0) {
            log::warn!("stack guard: {:#x} is not mapped by a 4 KiB page; no guard", guard);
            return;
        }
        if level == 1 {
            // SAFETY: clears the present bit of the guard page's entry; the
            // page lies between .bss and the stack and is never used, and
            // `invlpg` drops any cached translation of it.
            unsafe {
                core::ptr::write_volatile(entry_addr, entry & !PRESENT);
                core::arch::asm!("invlpg [{}]", in(reg) guard, options(nostack, preserves_flags));
            }
            return;
        }
        table = entry & ADDR;
    }
}

// ---------------------------------------------------------------------------
// The I/O-request page.

fn slot_addr(index: usize) -> u64 {
    assert!(index < IOREQ_SLOTS);
    IOREQ_GPA + (index * IOREQ_SLOT_SIZE) as u64
}

/// The state word of slot `index` (< `IOREQ_SLOTS`), shared with the
/// hypervisor.
pub fn slot_state(index: usize) -> &'static AtomicU32 {
    let addr = slot_addr(index) + slot::STATE as u64;
    // SAFETY: the I/O-request page is mapped for the stub's whole life,
    // the address is 4-byte aligned inside it, and both sides only access
    // the state word atomically.
    unsafe { &*(addr as *const AtomicU32) }
}

/// The request in slot `index` (call after seeing READY with Acquire).
pub fn slot_request(index: usize) -> IoRequest {
    let mut bytes = [0u8; IOREQ_SLOT_SIZE];
    // SAFETY: the slot is inside the mapped I/O-request page; the
    // hypervisor does not write a READY slot's fields until it is DONE.
    unsafe { core::ptr::copy_nonoverlapping(slot_addr(index) as *const u8, bytes.as_mut_ptr(), IOREQ_SLOT_SIZE) };
    IoRequest::decode(&bytes)
}

/// Writes `req`'s fields (not the state) into slot `index`: how a stub
/// would tamper with a request the hypervisor published (the hostile test
/// stub does; the hypervisor must not believe them).
pub fn slot_write_fields(index: usize, req: &IoRequest) {
    let mut bytes = [0u8; IOREQ_SLOT_SIZE];
    req.encode(&mut bytes);
    let start = slot_addr(index) + slot::KIND as u64;
    let fields = &bytes[slot::KIND..slot::DATA + 8];
    // SAFETY: the fields lie inside the mapped I/O-request page; the
    // hypervisor reads them only when it writes them (never concurrently
    // with the stub's own use of its page).
    unsafe { core::ptr::copy_nonoverlapping(fields.as_ptr(), start as *mut u8, fields.len()) };
}

/// Writes the answer of slot `index` (before storing DONE with Release).
pub fn slot_set_data(index: usize, data: u64) {
    let addr = slot_addr(index) + slot::DATA as u64;
    // SAFETY: 8-byte aligned field inside the mapped I/O-request page; the
    // hypervisor reads it only after the slot is DONE.
    unsafe { core::ptr::write_volatile(addr as *mut u64, data) };
}

// ---------------------------------------------------------------------------
// The buffered-write page.

/// A 4-byte word of the buffered-write page (`ferrite_abi::bufio`
/// offsets; PRODUCED, CONSUMED or a range pair).
pub fn bufio_word(offset: usize) -> &'static AtomicU32 {
    assert!(offset % 4 == 0 && offset < 4096);
    // SAFETY: the buffered-write page is mapped for the stub's whole life;
    // the offset was just checked to be an aligned word inside it, and the
    // words the hypervisor reads or writes (PRODUCED, CONSUMED, the range
    // pairs) are accessed only atomically by both sides.
    unsafe { &*((BUFIO_GPA + offset as u64) as *const AtomicU32) }
}

/// Entries the hypervisor has queued so far (a running count).
pub fn bufio_produced() -> u32 {
    bufio_word(bufio::PRODUCED).load(Ordering::Acquire)
}

/// Entries applied so far.
pub fn bufio_consumed() -> u32 {
    bufio_word(bufio::CONSUMED).load(Ordering::Relaxed)
}

pub fn set_bufio_consumed(n: u32) {
    bufio_word(bufio::CONSUMED).store(n, Ordering::Release);
}

/// Buffered write number `n` (read after seeing PRODUCED > n).
pub fn bufio_entry(n: u32) -> BufferedWrite {
    let addr = BUFIO_GPA + (bufio::ENTRIES + (n as usize % BUFIO_ENTRIES) * bufio::ENTRY_SIZE) as u64;
    let mut e = [0u8; bufio::ENTRY_SIZE];
    // SAFETY: the entry lies inside the mapped page; the hypervisor does
    // not rewrite it until CONSUMED passes it.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, e.as_mut_ptr(), e.len()) };
    BufferedWrite::decode(&e)
}

/// Publishes the port ranges whose writes may be buffered (unused
/// entries are written empty).
pub fn set_bufio_ranges(ranges: &[(u16, u16)]) {
    for i in 0..BUFIO_RANGES {
        let (first, last) = ranges.get(i).copied().unwrap_or((1, 0));
        let mut pair = [0u8; 4];
        pair[..2].copy_from_slice(&first.to_le_bytes());
        pair[2..].copy_from_slice(&last.to_le_bytes());
        let addr = BUFIO_GPA + (bufio::RANGES + i * 4) as u64;
        // SAFETY: inside the mapped page, in the stub-owned RANGES area.
        unsafe { core::ptr::copy_nonoverlapping(pair.as_ptr(), addr as *mut u8, 4) };
    }
}

// ---------------------------------------------------------------------------
// The guest window.

/// Copies guest-physical `gpa..gpa+buf.len()` out of the window, if that
/// range is the guest's RAM.
pub fn window_read(ram: &GuestRam, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
    ram.check(gpa, buf.len() as u64)?;
    // SAFETY: the range was just checked to be guest RAM, which the
    // hypervisor maps at GUEST_WINDOW + gpa for the stub's whole life. The
    // guest may change it concurrently; the copy takes whatever bytes are
    // there, as a DMA engine would.
    unsafe { core::ptr::copy_nonoverlapping((GUEST_WINDOW + gpa) as *const u8, buf.as_mut_ptr(), buf.len()) };
    Ok(())
}

/// Copies `data` into the guest at guest-physical `gpa`, if that range is
/// the guest's RAM.
pub fn window_write(ram: &GuestRam, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
    ram.check(gpa, data.len() as u64)?;
    // SAFETY: as in `window_read`; the window is writable, and guest RAM
    // never holds the stub's own Rust objects.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), (GUEST_WINDOW + gpa) as *mut u8, data.len()) };
    Ok(())
}

// ---------------------------------------------------------------------------
// Fault injection.

/// Writes a word to `addr`, which the caller chose *outside* the memory
/// the hypervisor gives this stub (a test of its isolation: the write must
/// fault and the stub be destroyed). Returns only if the hypervisor served
/// the write after all.
pub fn wild_write(addr: u64) {
    // SAFETY: deliberately wild. No Rust object of the stub lives there
    // (it is neither the stub's RAM, its I/O-request page nor guest RAM in
    // the window), so if the write went through despite the hypervisor,
    // nothing the stub relies on changed; the caller then panics.
    unsafe { core::ptr::write_volatile(addr as *mut u32, 0xDEAD_BEEF) };
}

/// The counters of NIC `handle`'s receive ring (`ferrite_abi::net_rx`):
/// PRODUCED (the hypervisor's) and CONSUMED (ours).
fn net_rx_word(handle: u32, offset: u64) -> &'static AtomicU32 {
    let ring = ferrite_abi::NET_RX_GPA + u64::from(handle % ferrite_abi::MAX_NICS as u32) * ferrite_abi::NET_RX_RING_BYTES;
    // SAFETY: the rings lie in the stub's own RAM, above the image
    // (linker.ld asserts it), identity mapped; the words are 4-byte
    // aligned and shared with the hypervisor, so they are accessed
    // atomically.
    unsafe { &*((ring + offset) as *const AtomicU32) }
}

pub fn net_rx_produced(handle: u32) -> u32 {
    net_rx_word(handle, ferrite_abi::net_rx::PRODUCED).load(Ordering::Acquire)
}

pub fn net_rx_consumed(handle: u32) -> u32 {
    net_rx_word(handle, ferrite_abi::net_rx::CONSUMED).load(Ordering::Relaxed)
}

pub fn set_net_rx_consumed(handle: u32, n: u32) {
    net_rx_word(handle, ferrite_abi::net_rx::CONSUMED).store(n, Ordering::Release);
}

/// Copies frame number `n` of NIC `handle`'s receive ring into `buf`;
/// returns its length (0 if the hypervisor wrote a length that does not
/// fit a slot: the frame is skipped).
pub fn net_rx_frame(handle: u32, n: u32, buf: &mut [u8; ferrite_abi::net_rx::MAX_FRAME as usize]) -> usize {
    use ferrite_abi::net_rx;
    let ring = ferrite_abi::NET_RX_GPA + u64::from(handle % ferrite_abi::MAX_NICS as u32) * ferrite_abi::NET_RX_RING_BYTES;
    let slot = ring + net_rx::SLOTS_OFFSET + u64::from(n % net_rx::SLOTS) * net_rx::SLOT_BYTES;
    // SAFETY: the slot lies inside the ring (above), in stub RAM; the
    // hypervisor finished writing it before publishing PRODUCED (read
    // with Acquire by the caller).
    let len = unsafe { core::ptr::read_volatile((slot + net_rx::SLOT_LEN) as *const u32) } as usize;
    if len > buf.len() {
        return 0;
    }
    // SAFETY: as above; `len` fits the slot and `buf`.
    unsafe { core::ptr::copy_nonoverlapping((slot + net_rx::SLOT_FRAME) as *const u8, buf.as_mut_ptr(), len) };
    len
}
