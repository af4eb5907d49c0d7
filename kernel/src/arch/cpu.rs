//! CPU registers, model-specific registers and CPUID.
//!
//! Thin helpers over the `x86_64` crate (`Msr`, `Cr0`/`Cr3`/`Cr4`,
//! `instructions::interrupts`, `hlt`) that keep the raw `u64` values the
//! rest of the hypervisor works with; CPUID and RDTSC come from
//! `core::arch`.

use core::arch::x86_64::{CpuidResult, __cpuid_count};
use x86_64::instructions::{self, interrupts};
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{EferFlags, Msr};

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

/// MSRs the crate has no type for (it has `Efer`, `FsBase`, `GsBase`,
/// `ApicBase`, ...).
pub mod msr {
    pub const TSC_AUX: u32 = 0xC000_0103;
    pub const VM_CR: u32 = 0xC001_0114;
    pub const VM_HSAVE_PA: u32 = 0xC001_0117;
}

pub const EFER_SVME: u64 = EferFlags::SECURE_VIRTUAL_MACHINE_ENABLE.bits();

/// Reads a model-specific register (`x86_64`'s `Msr`).
///
/// # Safety
/// The MSR must exist on this CPU (reading an absent MSR raises #GP, which
/// is fatal in the hypervisor).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { Msr::new(msr).read() }
}

/// Writes a model-specific register (`x86_64`'s `Msr`).
///
/// # Safety
/// The MSR must exist and the value must keep the CPU in a state the
/// hypervisor expects (e.g. EFER.LME stays set).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe { Msr::new(msr).write(value) }
}

pub fn read_cr0() -> u64 {
    Cr0::read_raw()
}

/// CR3 as the CPU holds it: the root table's address and the low flag
/// (PCD/PWT or PCID) bits.
pub fn read_cr3() -> u64 {
    let (frame, low) = Cr3::read_raw();
    frame.start_address().as_u64() | u64::from(low)
}

pub fn read_cr4() -> u64 {
    Cr4::read_raw()
}

/// # Safety
/// The new CR4 must keep paging (PAE) and SSE enabled.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { Cr4::write_raw(v) }
}

/// # Safety
/// The new CR0 must keep protection and paging enabled.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { Cr0::write_raw(v) }
}

/// Stops this CPU for good (interrupts off, halted).
pub fn halt_forever() -> ! {
    loop {
        interrupts::disable();
        instructions::hlt();
    }
}

/// Waits for an interrupt with interrupts enabled only for the `hlt` itself
/// (`sti; hlt`: the STI shadow means no interrupt is taken before the HLT),
/// then disables them again. Every IDT vector runs on an IST stack, so the
/// red zone of the interrupted Rust frame is never clobbered.
pub fn wait_for_interrupt() {
    interrupts::enable_and_hlt();
    interrupts::disable();
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
/// stacks, so the interrupted frame's red zone is safe): the crate's
/// `enable` is `sti; nop`, so with the `cli` after it this is
/// `sti; nop; cli`.
pub fn enable_interrupts_briefly() {
    interrupts::enable();
    interrupts::disable();
}
