//! Physical memory: the frame allocator, the heap, the hypervisor's own page
//! tables (its image mapped W^X) and guest memory.

pub mod guest;
pub mod heap;
pub mod paging;
pub mod shared;
pub mod blob;

use alloc::vec::Vec;
use ferrite_boot::bootinfo::{BootInfo, MemoryKind};
use ferrite_mm::FrameAllocator;
use paging::{PageTables, CACHE_DISABLE, NO_EXECUTE, SIZE_2M, SIZE_4K, WRITABLE, WRITE_THROUGH};
use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// The hypervisor's page tables, kept alive for the life of the system.
static HOST_TABLES: Mutex<Option<PageTables>> = Mutex::new(None);

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// Physical range of the hypervisor image.
pub fn image_range() -> (u64, u64) {
    // SAFETY: linker-script symbols; only their addresses are used.
    unsafe { (sym(&__image_start), sym(&__image_end)) }
}

/// Low memory kept out of the allocator: real-mode structures, the AP
/// trampoline pages and the BIOS areas.
const LOW_RESERVED_END: u64 = 0x10_0000;

pub struct MemoryReport {
    pub usable_bytes: u64,
    pub regions: usize,
    pub free_bytes: u64,
    pub heap_bytes: u64,
}

/// Builds the frame allocator from the firmware memory map (minus the
/// image, boot modules and low memory), hands part of it to the heap, and
/// switches to the hypervisor's own W^X page tables.
pub fn init(boot: &BootInfo) -> MemoryReport {
    let map = boot.sanitized_memory_map();
    let usable: Vec<(u64, u64)> = map
        .iter()
        .filter(|r| r.kind == MemoryKind::Usable)
        .map(|r| (r.start, r.start + r.len))
        .collect();
    let mut reserved: Vec<(u64, u64)> = Vec::new();
    reserved.push((0, LOW_RESERVED_END));
    reserved.push(image_range());
    for m in &boot.modules {
        reserved.push((m.start, m.end));
    }
    let mut frames = FrameAllocator::new(&usable, &reserved);
    let usable_bytes: u64 = usable.iter().map(|(s, e)| e - s).sum();

    // Main heap: an eighth of free memory, between 16 and 256 MiB.
    let free = frames.free_frames() as u64 * SIZE_4K;
    let heap_bytes = (free / 8).clamp(16 << 20, 256 << 20).min(free / 2) & !(SIZE_2M - 1);
    let heap_frames = (heap_bytes / SIZE_4K) as usize;
    let heap_start = frames.alloc_contiguous(heap_frames, 512).or_else(|| frames.alloc_contiguous(heap_frames, 1));
    *FRAMES.lock() = Some(frames);
    if let Some(start) = heap_start {
        heap::add_main_region(start, heap_bytes as usize);
    }

    let top = map.iter().filter(|r| r.kind == MemoryKind::Usable).map(|r| r.start + r.len).max().unwrap_or(0);
    install_host_tables(&usable, top);
    let free_bytes = FRAMES.lock().as_ref().map_or(0, |f| f.free_frames() as u64 * SIZE_4K);
    TOTAL_BYTES.store(usable_bytes, core::sync::atomic::Ordering::Relaxed);
    MemoryReport { usable_bytes, regions: usable.len(), free_bytes, heap_bytes: if heap_start.is_some() { heap_bytes } else { 0 } }
}

/// Identity-maps physical memory: RAM write-back, everything else
/// uncacheable (device memory such as the APICs), nothing executable except
/// the hypervisor's text and the AP trampoline; the image's read-only parts
/// read-only. Page 0 stays unmapped to catch null pointers.
fn install_host_tables(usable: &[(u64, u64)], top_of_ram: u64) {
    let mut pt = PageTables::new().expect("out of memory for page tables");
    let limit = top_of_ram.max(4 << 30).div_ceil(1 << 30) << 30;
    let (img_start, img_end) = image_range();
    // SAFETY: linker-script symbols; only their addresses are used.
    let (text, rodata) = unsafe { ((sym(&__text_start), sym(&__text_end)), (sym(&__rodata_start), sym(&__rodata_end))) };
    let tramp = crate::arch::smp::TRAMPOLINE_CODE;
    let is_ram = |start: u64, end: u64| usable.iter().any(|&(s, e)| s < end && start < e);
    let mut addr = 0;
    while addr < limit {
        let end = addr + SIZE_2M;
        let fine = addr < LOW_RESERVED_END.max(SIZE_2M) || (addr < img_end && img_start < end);
        if fine {
            for page in (addr..end).step_by(SIZE_4K as usize) {
                if page == 0 {
                    continue;
                }
                let flags = if page >= text.0 && page < text.1 || page == tramp {
                    0
                } else if page >= rodata.0 && page < rodata.1 {
                    NO_EXECUTE
                } else if page >= img_start && page < img_end || is_ram(page, page + SIZE_4K) || page < LOW_RESERVED_END {
                    WRITABLE | NO_EXECUTE
                } else {
                    WRITABLE | NO_EXECUTE | CACHE_DISABLE | WRITE_THROUGH
                };
                pt.map_4k(page, page, flags).expect("mapping the hypervisor image");
            }
        } else {
            let cache = if is_ram(addr, end) { 0 } else { CACHE_DISABLE | WRITE_THROUGH };
            pt.map_2m(addr, addr, WRITABLE | NO_EXECUTE | cache).expect("mapping physical memory");
        }
        addr = end;
    }
    // SAFETY: the new tables map everything the hypervisor touches (its
    // image with the same addresses, the stacks and heap in RAM, device
    // memory) identically to the boot tables, so execution continues at the
    // same addresses. CR0.WP makes read-only pages read-only for us too.
    unsafe {
        Cr3::write(PhysFrame::containing_address(PhysAddr::new(pt.root())), Cr3Flags::empty());
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
    }
    *HOST_TABLES.lock() = Some(pt);
}

/// One zeroed 4 KiB frame (identity mapped: its address is also a pointer).
pub fn alloc_zeroed_page() -> Option<u64> {
    let pa = FRAMES.lock().as_mut()?.alloc()?;
    // SAFETY: the frame was just allocated for the caller and is identity mapped.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, SIZE_4K as usize) };
    Some(pa)
}

/// A zeroed frame as an owned page reference (for structures such as VMCBs
/// that live as long as their owner).
pub fn alloc_zeroed_page_ref() -> Option<(&'static mut [u8; 4096], u64)> {
    let pa = alloc_zeroed_page()?;
    // SAFETY: the frame is freshly allocated, identity mapped and handed
    // exclusively to the caller.
    Some((unsafe { &mut *(pa as *mut [u8; 4096]) }, pa))
}

pub fn free_page(pa: u64) {
    if let Some(f) = FRAMES.lock().as_mut() {
        if let Err(e) = f.free(pa) {
            log::error!("freeing frame {:#x}: {:?}", pa, e);
        }
    }
}

pub fn alloc_contiguous(frames: usize, align_frames: usize) -> Option<u64> {
    FRAMES.lock().as_mut()?.alloc_contiguous(frames, align_frames)
}

pub fn free_contiguous(pa: u64, frames: usize) {
    if let Some(f) = FRAMES.lock().as_mut() {
        if let Err(e) = f.free_contiguous(pa, frames) {
            log::error!("freeing {} frames at {:#x}: {:?}", frames, pa, e);
        }
    }
}

/// SVM's I/O permission map (12 KiB) and MSR permission map (8 KiB), with
/// every port and MSR intercepted. Returned as (address, frames).
pub fn alloc_intercept_maps() -> Option<((u64, usize), (u64, usize))> {
    let iopm = alloc_contiguous(3, 1)?;
    let Some(msrpm) = alloc_contiguous(2, 1) else {
        free_contiguous(iopm, 3);
        return None;
    };
    // SAFETY: both ranges were just allocated and are identity mapped.
    unsafe {
        core::ptr::write_bytes(iopm as *mut u8, 0xFF, 3 * 4096);
        core::ptr::write_bytes(msrpm as *mut u8, 0xFF, 2 * 4096);
    }
    Some(((iopm, 3), (msrpm, 2)))
}

/// Lets the guest whose I/O permission map is at `iopm` (from
/// [`alloc_intercept_maps`]) access `port` without exiting.
pub fn clear_iopm_bit(iopm: u64, port: u16) {
    let byte = iopm + u64::from(port / 8);
    // SAFETY: `byte` is within the first 8 KiB of the 12 KiB map allocated
    // by `alloc_intercept_maps` (port / 8 < 0x2000), identity mapped.
    unsafe {
        *(byte as *mut u8) &= !(1 << (port % 8));
    }
}

pub fn free_intercept_maps(iopm: (u64, usize), msrpm: (u64, usize)) {
    free_contiguous(iopm.0, iopm.1);
    free_contiguous(msrpm.0, msrpm.1);
}

static TOTAL_BYTES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Usable RAM the firmware reported (`xl info`'s total_memory).
pub fn total_bytes() -> u64 {
    TOTAL_BYTES.load(core::sync::atomic::Ordering::Relaxed)
}

pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_frames() as u64 * SIZE_4K)
}

/// The bytes of a boot module. Modules lie in memory the frame allocator
/// never hands out (they are reserved in `init`) and stay untouched for the
/// life of the hypervisor, so a shared `'static` view is sound.
pub fn module_bytes(start: u64, end: u64) -> &'static [u8] {
    let len = end.saturating_sub(start) as usize;
    if start == 0 || len == 0 {
        return &[];
    }
    // SAFETY: see above; the range was validated by the boot-information
    // parser and is identity mapped.
    unsafe { core::slice::from_raw_parts(start as *const u8, len) }
}
