//! Per-CPU data, reached through the GS base (`gs:[0]` holds a pointer to
//! this CPU's `PerCpu`).
//!
//! The rule: `current()` hands out a shared reference only. A field that
//! changes after `init` is an atomic, because the CPU's own interrupt
//! handlers touch it too (the timer handler clears the armed deadline), so
//! a `&mut PerCpu` could never be exclusive. Higher layers keep their
//! per-CPU state in their own tables indexed by `current_index()` (the SVM
//! backend does), so this module depends on nothing above `arch`.

use super::gdt::CpuTables;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

pub const MAX_CPUS: usize = 64;

#[repr(C)]
pub struct PerCpu {
    /// Must stay first: `gs:[0]` points here.
    self_ptr: *const PerCpu,
    pub index: usize,
    pub apic_id: u32,
    pub tables: &'static CpuTables,
    /// When this CPU's APIC timer is armed to fire (TSC ns; 0 = not armed).
    pub timer_deadline_ns: AtomicU64,
}

static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static ONLINE: AtomicUsize = AtomicUsize::new(0);
/// False until the boot CPU has its block: before that, GS is not set up
/// and only the boot CPU runs.
static READY: AtomicBool = AtomicBool::new(false);

/// Installs this CPU's per-CPU block and points GS at it.
pub fn init(index: usize, apic_id: u32, tables: &'static CpuTables) -> &'static PerCpu {
    let pc = Box::leak(Box::new(PerCpu { self_ptr: core::ptr::null(), index, apic_id, tables, timer_deadline_ns: AtomicU64::new(0) }));
    pc.self_ptr = pc as *const PerCpu;
    CPUS[index].store(pc as *mut PerCpu, Ordering::SeqCst);
    // The block is leaked, so `gs:[0]` stays valid for the life of the
    // hypervisor.
    GsBase::write(VirtAddr::from_ptr(pc as *const PerCpu));
    ONLINE.fetch_add(1, Ordering::SeqCst);
    READY.store(true, Ordering::SeqCst);
    pc
}

/// This CPU's index (0 = boot CPU).
pub fn current_index() -> usize {
    if !READY.load(Ordering::SeqCst) {
        return 0;
    }
    let p: *const PerCpu;
    // SAFETY: gs:[0] holds the self pointer written by `init`, which runs
    // before any code that asks for the current CPU.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(readonly, nostack, preserves_flags)) };
    if p.is_null() {
        return 0;
    }
    // SAFETY: non-null means `init` stored a pointer to a leaked PerCpu.
    unsafe { (*p).index }
}

/// This CPU's block. Shared, never `&mut`: see the module comment.
pub fn current() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: as in `current_index`.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(readonly, nostack, preserves_flags)) };
    assert!(!p.is_null(), "per-CPU data used before init");
    // SAFETY: non-null means `init` stored a pointer to a leaked PerCpu,
    // which lives for the rest of the run; only shared references to it
    // are ever made, and its mutable fields are atomics.
    unsafe { &*p }
}

pub fn online_count() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

pub fn apic_id_of(index: usize) -> Option<u32> {
    let p = CPUS.get(index)?.load(Ordering::SeqCst);
    // SAFETY: non-null entries point to leaked PerCpu blocks; apic_id is
    // immutable after init.
    (!p.is_null()).then(|| unsafe { (*p).apic_id })
}
