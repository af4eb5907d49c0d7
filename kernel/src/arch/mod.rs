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
pub mod intrinsics;
pub mod pic;
pub mod pio;
pub mod smp;
pub mod time;
