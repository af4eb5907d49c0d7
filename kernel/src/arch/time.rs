//! Time keeping: the TSC, calibrated once against the PIT.

use super::{cpu, pio};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick in 32.32 fixed point (a multiply instead of a
/// 128-bit division on every exit).
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;

/// Records the TSC at the hypervisor's entry: the zero of `uptime_us` and
/// of console timestamps.
pub fn mark_boot() {
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
}

/// Measures the TSC frequency against PIT channel 2.
pub fn calibrate() {
    if BOOT_TSC.load(Ordering::Relaxed) == 0 {
        mark_boot();
    }
    // Three windows, the lowest rate kept (as Linux does): a window can
    // only come out too long (the CPU was held up, e.g. a busy host under
    // nested virtualisation, while the PIT counted on), never too short.
    let hz = (0..3).map(|_| pit_window_hz()).min().unwrap_or(1_000_000_000).max(1_000_000);
    TSC_HZ.store(hz, Ordering::Relaxed);
    NS_PER_TICK_FP32.store(((1_000_000_000u128 << 32) / hz as u128) as u64, Ordering::Relaxed);
}

/// TSC ticks per second over one 10 ms PIT channel 2 window.
fn pit_window_hz() -> u64 {
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
    if spins >= 50_000_000 {
        1_000_000_000
    } else {
        (end - start) * 100
    }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since `mark_boot`, by the TSC.
pub fn uptime_ns() -> u64 {
    let delta = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((delta as u128 * NS_PER_TICK_FP32.load(Ordering::Relaxed) as u128) >> 32) as u64
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

/// Nanoseconds since the TSC started counting (the guest-visible time base:
/// guests read the same TSC, so their TSC deadlines convert with this).
pub fn now_ns() -> u64 {
    ((cpu::rdtsc() as u128 * NS_PER_TICK_FP32.load(Ordering::Relaxed) as u128) >> 32) as u64
}

static BOOT_UNIX: AtomicU64 = AtomicU64::new(0);

/// Reads the host RTC once (seconds since 1970, UTC assumed as on most
/// hypervisor hosts) so guests get a real date.
pub fn read_host_rtc() {
    let read = |reg: u8| {
        pio::outb(0x70, reg);
        pio::inb(0x71)
    };
    // Wait (bounded) until no update is in progress.
    for _ in 0..100_000 {
        if read(0x0A) & 0x80 == 0 {
            break;
        }
    }
    let b = read(0x0B);
    let bcd = |v: u8| if b & 0x04 == 0 { (v & 0x0F) + (v >> 4) * 10 } else { v };
    let (sec, min) = (bcd(read(0x00)), bcd(read(0x02)));
    let hour_raw = read(0x04);
    let mut hour = bcd(hour_raw & 0x7F);
    if b & 0x02 == 0 && hour_raw & 0x80 != 0 {
        hour = (hour % 12) + 12;
    }
    let (day, month, year) = (bcd(read(0x07)), bcd(read(0x08)), bcd(read(0x09)));
    let century = bcd(read(0x32));
    let year = if (19..=21).contains(&century) { u64::from(century) * 100 + u64::from(year) } else { 2000 + u64::from(year) };
    let days = days_from_civil(year as i64, u64::from(month.clamp(1, 12)), u64::from(day.clamp(1, 31)));
    let unix = days as u64 * 86_400 + u64::from(hour) * 3600 + u64::from(min) * 60 + u64::from(sec);
    BOOT_UNIX.store(unix.saturating_sub(now_ns() / 1_000_000_000), Ordering::Relaxed);
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Wall-clock seconds since 1970.
pub fn unix_time() -> u64 {
    BOOT_UNIX.load(Ordering::Relaxed) + now_ns() / 1_000_000_000
}
