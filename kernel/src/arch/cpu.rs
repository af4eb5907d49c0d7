//! CPU registers, model-specific registers and CPUID.

use core::arch::x86_64::{CpuidResult, __cpuid_count};

pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

pub fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000, 0).eax
}

/// The CPU vendor string from leaf 0 ("AuthenticAMD", "GenuineIntel", ...).
pub fn vendor() -> [u8; 12] {
    let r = cpuid(0, 0);
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

pub mod msr {
    pub const APIC_BASE: u32 = 0x1B;
    pub const EFER: u32 = 0xC000_0080;
    pub const GS_BASE: u32 = 0xC000_0101;
    pub const TSC_AUX: u32 = 0xC000_0103;
    pub const VM_CR: u32 = 0xC001_0114;
    pub const VM_HSAVE_PA: u32 = 0xC001_0117;
}

pub const EFER_SVME: u64 = 1 << 12;

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (reading an absent MSR raises #GP, which
/// is fatal in the hypervisor).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must keep the CPU in a state the
/// hypervisor expects (e.g. EFER.LME stays set).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// The new CR4 must keep paging (PAE) and SSE enabled.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// # Safety
/// The new CR0 must keep protection and paging enabled.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Stops this CPU for good (interrupts off, halted).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Waits for an interrupt with interrupts enabled only for the `hlt` itself.
/// Every IDT vector runs on an IST stack, so the red zone of the
/// interrupted Rust frame is never clobbered.
pub fn wait_for_interrupt() {
    // SAFETY: `sti; hlt` lets one pending interrupt in (handled on an IST
    // stack), then interrupts are disabled again.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

#[inline]
pub fn pause() {
    core::hint::spin_loop();
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged-safe and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Opens a one-instruction window for pending interrupts (handled on IST
/// stacks, so the interrupted frame's red zone is safe).
pub fn enable_interrupts_briefly() {
    // SAFETY: `sti; nop; cli` lets pending interrupts in and closes again.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}
