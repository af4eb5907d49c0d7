//! x86_64 specifics: entry code, CPU registers and instructions, descriptor
//! tables, interrupts, the local APIC and bringing up other CPUs.
//!
//! Most of the hypervisor's `unsafe` lives here, next to the hardware rule
//! that makes each use sound.

pub mod apic;
pub mod cpu;
pub mod entry;
pub mod fpu;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod pic;
pub mod pio;
pub mod smp;
pub mod time;

/// The bytes between two symbols the assembly defines (a blob in .rodata,
/// such as the AP trampoline or the self-test guest).
///
/// # Safety
/// `start` and `end` must delimit one initialised, immutable object, with
/// `start <= end`.
pub unsafe fn blob_between(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}
