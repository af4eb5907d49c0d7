//! The host's local APIC (xAPIC, memory mapped): this CPU's id, end of
//! interrupt, and inter-processor interrupts (INIT/SIPI, wake-up, NMI).

use super::cpu::{self, msr};
use core::sync::atomic::{AtomicU64, Ordering};

static BASE: AtomicU64 = AtomicU64::new(0xFEE0_0000);

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;

const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_NMI: u32 = 0b100 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_ALL_EXCLUDING_SELF: u32 = 0b11 << 18;

fn read(reg: u64) -> u32 {
    // SAFETY: the APIC page is identity mapped uncacheable by the memory
    // module, and `reg` is one of the architectural register offsets.
    unsafe { core::ptr::read_volatile((BASE.load(Ordering::Relaxed) + reg) as *const u32) }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile((BASE.load(Ordering::Relaxed) + reg) as *mut u32, value) }
}

/// Enables this CPU's local APIC in xAPIC mode.
pub fn init_cpu() {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let base = unsafe { cpu::rdmsr(msr::APIC_BASE) };
    BASE.store(base & 0xF_FFFF_F000, Ordering::Relaxed);
    // Software-enable with the spurious vector.
    write(REG_SVR, 0x100 | u32::from(super::idt::VECTOR_SPURIOUS));
}

/// The physical address of the local APIC registers.
pub fn base() -> u64 {
    BASE.load(Ordering::Relaxed)
}

pub fn id() -> u32 {
    read(REG_ID) >> 24
}

pub fn eoi() {
    write(REG_EOI, 0);
}

fn send(dest: u32, low: u32) {
    write(REG_ICR_HIGH, dest << 24);
    write(REG_ICR_LOW, low);
    let mut spins = 0u32;
    while read(REG_ICR_LOW) & ICR_DELIVERY_PENDING != 0 && spins < 1_000_000 {
        cpu::pause();
        spins += 1;
    }
}

/// INIT, then two STARTUPs at `page` (the trampoline's physical page number),
/// as the MP specification describes.
pub fn start_ap(apic_id: u32, page: u8) {
    send(apic_id, ICR_INIT | ICR_LEVEL_ASSERT);
    super::time::delay_us(10_000);
    for _ in 0..2 {
        send(apic_id, ICR_STARTUP | u32::from(page));
        super::time::delay_us(200);
    }
}

/// Sends a fixed interrupt to one CPU.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send(apic_id, u32::from(vector));
}

/// Sends an NMI to every other CPU (used to stop them on panic).
pub fn nmi_all_others() {
    send(0, ICR_NMI | ICR_LEVEL_ASSERT | ICR_ALL_EXCLUDING_SELF);
}
