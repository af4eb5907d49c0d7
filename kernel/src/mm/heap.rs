//! The hypervisor heap: a bootstrap region in .bss (usable before the frame
//! allocator exists, e.g. to parse boot information) and a main region taken
//! from physical frames once they are known.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::Heap;
use spin::Mutex;

const BOOT_HEAP_SIZE: usize = 8 * 1024 * 1024;

#[repr(C, align(4096))]
struct BootArena([u8; BOOT_HEAP_SIZE]);

static mut BOOT_ARENA: BootArena = BootArena([0; BOOT_HEAP_SIZE]);

pub struct KernelHeap {
    boot: Mutex<Heap>,
    main: Mutex<Heap>,
    main_start: AtomicU64,
    main_end: AtomicU64,
}

#[global_allocator]
pub static HEAP: KernelHeap = KernelHeap {
    boot: Mutex::new(Heap::empty()),
    main: Mutex::new(Heap::empty()),
    main_start: AtomicU64::new(0),
    main_end: AtomicU64::new(0),
};

/// Makes the bootstrap heap usable. Call once, first thing.
pub fn init_boot() {
    // SAFETY: BOOT_ARENA is used by nothing else, and this runs once on the
    // boot CPU before any allocation.
    unsafe {
        let start = core::ptr::addr_of_mut!(BOOT_ARENA) as *mut u8;
        HEAP.boot.lock().init(start, BOOT_HEAP_SIZE);
    }
}

/// Adds the main heap region `[start, start + size)` (identity-mapped RAM
/// the frame allocator has handed over for good).
pub fn add_main_region(start: u64, size: usize) {
    // SAFETY: the caller owns this memory exclusively from now on.
    unsafe { HEAP.main.lock().init(start as *mut u8, size) };
    HEAP.main_start.store(start, Ordering::SeqCst);
    HEAP.main_end.store(start + size as u64, Ordering::SeqCst);
}

/// (used, total) bytes over both regions.
pub fn usage() -> (usize, usize) {
    let b = HEAP.boot.lock();
    let m = HEAP.main.lock();
    (b.used() + m.used(), b.size() + m.size())
}

// SAFETY: both heaps are protected by locks and hand out disjoint memory;
// `dealloc` returns each block to the heap whose region contains it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Ok(p) = self.main.lock().allocate_first_fit(layout) {
            return p.as_ptr();
        }
        self.boot.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let addr = ptr as u64;
        let Some(nn) = NonNull::new(ptr) else { return };
        if addr >= self.main_start.load(Ordering::Relaxed) && addr < self.main_end.load(Ordering::Relaxed) {
            // SAFETY: the block came from the main heap (address in its range).
            unsafe { self.main.lock().deallocate(nn, layout) }
        } else {
            // SAFETY: otherwise it came from the bootstrap heap.
            unsafe { self.boot.lock().deallocate(nn, layout) }
        }
    }
}
