//! Time keeping: the TSC, calibrated once against the PIT.

use super::{cpu, pio};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;

/// Measures the TSC frequency with PIT channel 2 over 10 ms.
pub fn calibrate() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    let gate = pio::inb(0x61);
    // Gate on (bit 0), speaker off (bit 1).
    pio::outb(0x61, (gate & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
    pio::outb(0x43, 0xB0);
    let ticks = PIT_HZ / 100;
    pio::outb(0x42, ticks as u8);
    pio::outb(0x42, (ticks >> 8) as u8);
    let start = cpu::rdtsc();
    let mut spins: u64 = 0;
    // OUT2 (bit 5 of port 0x61) goes high at terminal count. Bound the
    // loop so a machine without a PIT still boots (with a guessed rate).
    while pio::inb(0x61) & 0x20 == 0 && spins < 50_000_000 {
        spins += 1;
    }
    let end = cpu::rdtsc();
    pio::outb(0x61, gate);
    let hz = if spins >= 50_000_000 { 1_000_000_000 } else { (end - start) * 100 };
    TSC_HZ.store(hz.max(1_000_000), Ordering::Relaxed);
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since boot, by the TSC.
pub fn uptime_us() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let delta = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((delta as u128 * 1_000_000) / hz as u128) as u64
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let target = cpu::rdtsc() + (tsc_hz() as u128 * us as u128 / 1_000_000) as u64;
    while cpu::rdtsc() < target {
        cpu::pause();
    }
}
