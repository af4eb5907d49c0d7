//! The host's local APIC (xAPIC, memory mapped): this CPU's id, end of
//! interrupt, and inter-processor interrupts (INIT/SIPI, wake-up, NMI).

use super::cpu;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::ApicBase;

static BASE: AtomicU64 = AtomicU64::new(0xFEE0_0000);

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xB0;
const REG_SVR: u64 = 0xF0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;

const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3E0;
const LVT_MASKED: u32 = 1 << 16;

/// Host APIC timer ticks per microsecond (divide-by-1), measured at boot.
static TIMER_TICKS_PER_US: AtomicU64 = AtomicU64::new(0);

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
    let (page, _) = ApicBase::read();
    BASE.store(page.start_address().as_u64(), Ordering::Relaxed);
    // Software-enable with the spurious vector.
    write(REG_SVR, 0x100 | u32::from(super::idt::VECTOR_SPURIOUS));
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

/// Measures the APIC timer against the (already calibrated) TSC. Call on
/// the boot CPU; all CPUs share the bus clock.
pub fn calibrate_timer() {
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(super::idt::VECTOR_TIMER));
    write(REG_TIMER_INITIAL, u32::MAX);
    let start = super::time::uptime_us();
    super::time::delay_us(10_000);
    let elapsed_ticks = u32::MAX - read(REG_TIMER_CURRENT);
    let elapsed_us = (super::time::uptime_us() - start).max(1);
    write(REG_TIMER_INITIAL, 0);
    TIMER_TICKS_PER_US.store((u64::from(elapsed_ticks) / elapsed_us).max(1), Ordering::Relaxed);
}

pub fn timer_ticks_per_us() -> u64 {
    TIMER_TICKS_PER_US.load(Ordering::Relaxed)
}

/// Arms this CPU's one-shot timer to fire at `deadline_ns` (TSC time)
/// unless it is already armed for exactly that time and has not fired.
/// Saves reprogramming the timer on every guest entry.
pub fn arm_timer_at_ns(deadline_ns: u64) {
    let pc = super::percpu::current();
    let now = super::time::now_ns();
    if pc.timer_deadline_ns.load(Ordering::Relaxed) == deadline_ns && now < deadline_ns {
        return;
    }
    // Round up: a timer that fires early would leave the cached deadline
    // looking armed while nothing is.
    program_timer(deadline_ns.saturating_sub(now).div_ceil(1000).max(1));
    pc.timer_deadline_ns.store(deadline_ns, Ordering::Relaxed);
}

/// Arms this CPU's one-shot timer to interrupt after `us` microseconds
/// (0 disarms it).
pub fn arm_timer_us(us: u64) {
    program_timer(us);
    super::percpu::current().timer_deadline_ns.store(0, Ordering::Relaxed);
}

fn program_timer(us: u64) {
    write(REG_TIMER_DIVIDE, 0b1011);
    write(REG_LVT_TIMER, u32::from(super::idt::VECTOR_TIMER));
    let ticks = us.saturating_mul(timer_ticks_per_us()).clamp(if us == 0 { 0 } else { 1 }, u64::from(u32::MAX));
    write(REG_TIMER_INITIAL, ticks as u32);
}
