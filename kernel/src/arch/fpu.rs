//! FPU/SSE/AVX state: XSAVE when the CPU has it, FXSAVE otherwise.
//!
//! Guest and hypervisor share the physical FPU. The hypervisor's own code
//! uses only SSE registers as scratch (they are caller-saved around the
//! world switch) and never x87 or AVX, so a vCPU's x87/AVX state can stay
//! in the registers for a whole scheduling slice: it is loaded once when
//! the slice starts ([`FpuState::restore`]) and saved once when it ends
//! ([`FpuState::save`]). XMM0-15 and MXCSR live in [`SseRegs`] instead:
//! `svm_run` loads them with plain SSE moves before every VMRUN and stores
//! them after, and the image's own copies are never used.
//!
//! Besides being cheaper, this keeps FXRSTOR/XRSTOR off the exit path,
//! which under QEMU's multi-threaded TCG matters for correctness: QEMU
//! clears IGNNE in CPU 0's `hflags2` from whichever thread executes an
//! FXRSTOR, a non-atomic read-modify-write that can undo CPU 0's own
//! concurrent VMRUN/#VMEXIT update of its nested-paging flag (see
//! ARCHITECTURE.md, "Two host CPUs under QEMU TCG").

use super::cpu;
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::xcontrol::XCr0;

static USE_XSAVE: AtomicBool = AtomicBool::new(false);
static XCR0: AtomicU64 = AtomicU64::new(0);
static AREA_SIZE: AtomicUsize = AtomicUsize::new(512);

const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;

/// Enables XSAVE on this CPU if available (call on every CPU).
pub fn init_cpu() {
    let leaf1 = cpu::cpuid(1, 0);
    let has_xsave = leaf1.ecx & (1 << 26) != 0;
    if !has_xsave {
        return;
    }
    // SAFETY: setting CR4.OSXSAVE is valid when CPUID reports XSAVE, and it
    // leaves paging and SSE as they were.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::OSXSAVE)) };
    let leaf_d = cpu::cpuid(0xD, 0);
    let supported = (u64::from(leaf_d.edx) << 32) | u64::from(leaf_d.eax);
    let xcr0 = supported & (XCR0_X87 | XCR0_SSE | XCR0_AVX);
    // SAFETY: the value only contains components CPUID reports supported and
    // always includes x87 (bit 0), as XSETBV requires.
    unsafe { XCr0::write_raw(xcr0) };
    let size = cpu::cpuid(0xD, 0).ebx as usize;
    XCR0.store(xcr0, Ordering::Relaxed);
    AREA_SIZE.store(size.max(576), Ordering::Relaxed);
    USE_XSAVE.store(true, Ordering::Relaxed);
}

pub fn uses_xsave() -> bool {
    USE_XSAVE.load(Ordering::Relaxed)
}

/// The XCR0 the hypervisor runs with (0 without XSAVE).
pub fn host_xcr0() -> u64 {
    XCR0.load(Ordering::Relaxed)
}

/// A saved FPU/SSE/AVX register file, 64-byte aligned as XSAVE requires.
pub struct FpuState {
    area: *mut u8,
}

// SAFETY: the area is owned exclusively by this value.
unsafe impl Send for FpuState {}

impl FpuState {
    fn layout() -> Layout {
        let size = AREA_SIZE.load(Ordering::Relaxed).max(512);
        // A power-of-two alignment and a size far from overflow: cannot fail.
        Layout::from_size_align(size, 64).unwrap_or(Layout::new::<[u8; 512]>())
    }

    /// A state in the architectural reset configuration (FCW 0x37F, MXCSR
    /// 0x1F80); None when the heap has no room for it.
    pub fn new() -> Option<Self> {
        let layout = Self::layout();
        // SAFETY: the layout has a non-zero size.
        let area = unsafe { alloc_zeroed(layout) };
        if area.is_null() {
            return None;
        }
        // SAFETY: the area is at least 512 bytes; FCW is at 0, MXCSR at 24.
        unsafe {
            area.cast::<u16>().write(0x37F);
            area.add(24).cast::<u32>().write(0x1F80);
        }
        Some(FpuState { area })
    }

    pub fn save(&mut self) {
        if uses_xsave() {
            let mask = host_xcr0();
            // SAFETY: the area is 64-byte aligned and as large as CPUID leaf
            // 0xD says the enabled components need.
            unsafe { core::arch::asm!("xsave64 [{}]", in(reg) self.area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack)) };
        } else {
            // SAFETY: the area is 16-byte aligned and at least 512 bytes.
            unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.area, options(nostack)) };
        }
    }

    pub fn restore(&self) {
        if uses_xsave() {
            let mask = host_xcr0();
            // SAFETY: the area was written by `new` or `save` (a valid
            // XSAVE image: a zero header means "initial state").
            unsafe { core::arch::asm!("xrstor64 [{}]", in(reg) self.area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack)) };
        } else {
            // SAFETY: the area holds a valid FXSAVE image (reset values or a
            // previous save).
            unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.area, options(nostack)) };
        }
    }
}

/// The default MXCSR the hypervisor's code runs with (all exceptions
/// masked, round to nearest).
pub const HOST_MXCSR: u32 = 0x1F80;

/// A guest's XMM0-15 and MXCSR while its slice runs: `svm_run` loads them
/// just before VMRUN and stores them right after #VMEXIT. The layout is
/// fixed for that assembly: XMM0-15 at 0..256, MXCSR at 256.
#[repr(C, align(16))]
pub struct SseRegs {
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl SseRegs {
    pub const fn new() -> Self {
        SseRegs { xmm: [[0; 16]; 16], mxcsr: HOST_MXCSR }
    }
}

impl Default for SseRegs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FpuState {
    fn drop(&mut self) {
        // SAFETY: `area` came from `alloc_zeroed` with this same layout
        // (AREA_SIZE is set once, before any vCPU exists) and is freed once.
        unsafe { dealloc(self.area, Self::layout()) };
    }
}
