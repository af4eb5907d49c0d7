//! i8254 programmable interval timer (ports 0x40–0x43) and the channel 2
//! gate/output bits of port 0x61.
//!
//! The counters are not stepped: each channel remembers when its count was
//! loaded and derives its value and OUT level from the [`Clock`] at
//! 1.193182 MHz. All six modes, binary and BCD counting, the counter latch
//! and read-back commands, and lo/hi/lo-hi access are modelled.
//!
//! IRQ 0 (channel 0's OUT, edge-triggered, GSI 2 through the MADT
//! override): the caller arms a host timer for [`Pit::next_irq0_ns`] and
//! calls [`Pit::tick`], which returns true when OUT0 rose since the last
//! call (missed periods are coalesced into one pulse). The caller then
//! pulses the interrupt line (assert, de-assert). A guest can program a
//! period as short as ~0.84 µs; rate-limiting the host timer is the
//! caller's choice.
//!
//! Channel 2's gate is port 0x61 bit 0 and its OUT is bit 5, which is what
//! Linux's and firmware's TSC calibration loops poll. Channel 0 and 1
//! gates are tied high, so modes 1 and 5 never trigger on them.

use crate::clock::{mul_div, ticks_to_ns_ceil};
use crate::Clock;

pub const PIT_HZ: u64 = 1_193_182;
const NS_PER_S: u64 = 1_000_000_000;
/// Refresh-request toggle period of port 0x61 bit 4 (15.085 µs).
const REFRESH_NS: u64 = 15_085;

pub const PORT_CHANNEL0: u16 = 0x40;
pub const PORT_COMMAND: u16 = 0x43;
pub const PORT_61: u16 = 0x61;

#[derive(Clone, Copy, Debug, Default)]
struct Channel {
    mode: u8,
    /// 1 = LSB, 2 = MSB, 3 = LSB then MSB.
    rw: u8,
    bcd: bool,
    /// Loaded count, 1..=65536 (10000 in BCD).
    reload: u64,
    /// A count has been written since the control word.
    armed: bool,
    null_count: bool,
    gate: bool,
    /// Modes 1 and 5: a gate rising edge started the count.
    triggered: bool,
    /// Ticks counted before `run_start_ns` (gate pauses).
    base_ticks: u64,
    run_start_ns: u64,
    /// Rising edges of OUT already reported.
    edges_done: u64,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    /// Latched count and whether its MSB is next.
    latch: Option<(u16, bool)>,
    status_latch: Option<u8>,
}

impl Channel {
    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    fn counting(&self) -> bool {
        self.armed && self.gate && (!matches!(self.mode, 1 | 5) || self.triggered)
    }

    fn elapsed(&self, now: u64) -> u64 {
        let running = if self.counting() {
            mul_div(now.saturating_sub(self.run_start_ns), PIT_HZ, NS_PER_S)
        } else {
            0
        };
        self.base_ticks.saturating_add(running)
    }

    /// The counter's value (binary, before BCD encoding).
    fn value(&self, now: u64) -> u64 {
        if !self.armed {
            return 0;
        }
        let n = self.reload;
        let m = self.modulus();
        let e = self.elapsed(now);
        let v = match self.mode {
            2 => n - e % n,
            3 => (n - (2 * (e % n)) % n) & !1,
            _ => (n + m - e % m) % m,
        };
        v % m
    }

    fn out(&self, now: u64) -> bool {
        if !self.armed {
            return self.mode != 0;
        }
        let n = self.reload;
        let e = self.elapsed(now);
        match self.mode {
            0 => e >= n,
            1 => !self.triggered || e >= n,
            2 => !self.gate || n < 2 || e % n != n - 1,
            3 => !self.gate || (e % n) < n.div_ceil(2),
            // 4, 5: low for one tick at terminal count
            4 => e != n,
            _ => !self.triggered || e != n,
        }
    }

    /// Tick count at which OUT rises for the `k`-th time (k ≥ 1).
    fn edge_tick(&self, k: u64) -> Option<u64> {
        let n = self.reload;
        match self.mode {
            0 | 1 if k == 1 => Some(n),
            4 | 5 if k == 1 => Some(n + 1),
            2 | 3 => Some(k.saturating_mul(n)),
            _ => None,
        }
    }

    fn edges_by(&self, e: u64) -> u64 {
        let n = self.reload.max(1);
        match self.mode {
            0 | 1 => u64::from(e >= n),
            4 | 5 => u64::from(e > n),
            2 | 3 => e / n,
            _ => 0,
        }
    }

    fn status(&self, now: u64) -> u8 {
        (u8::from(self.out(now)) << 7)
            | (u8::from(self.null_count) << 6)
            | (self.rw << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn load(&mut self, raw: u16, now: u64) {
        let v = if self.bcd {
            u64::from(from_bcd(raw))
        } else {
            u64::from(raw)
        };
        self.reload = if v == 0 { self.modulus() } else { v };
        self.armed = true;
        self.null_count = false;
        self.base_ticks = 0;
        self.run_start_ns = now;
        self.edges_done = 0;
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        if !gate {
            self.base_ticks = self.elapsed(now);
            self.gate = false;
            return;
        }
        self.gate = true;
        if matches!(self.mode, 1 | 2 | 3 | 5) {
            // Rising edge (re)starts the count.
            self.triggered = true;
            self.base_ticks = 0;
            self.edges_done = 0;
        }
        self.run_start_ns = now;
    }

    fn latch_count(&mut self, now: u64) {
        if self.latch.is_none() {
            let v = self.encoded_value(now);
            self.latch = Some((v, false));
        }
    }

    fn encoded_value(&self, now: u64) -> u16 {
        let v = self.value(now);
        if self.bcd {
            to_bcd(v as u16)
        } else {
            v as u16
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        if let Some((v, msb_next)) = self.latch {
            return match self.rw {
                2 => {
                    self.latch = None;
                    (v >> 8) as u8
                }
                3 if !msb_next => {
                    self.latch = Some((v, true));
                    v as u8
                }
                3 => {
                    self.latch = None;
                    (v >> 8) as u8
                }
                _ => {
                    self.latch = None;
                    v as u8
                }
            };
        }
        let v = self.encoded_value(now);
        match self.rw {
            2 => (v >> 8) as u8,
            3 => {
                let msb = self.read_msb_next;
                self.read_msb_next = !msb;
                if msb {
                    (v >> 8) as u8
                } else {
                    v as u8
                }
            }
            _ => v as u8,
        }
    }

    fn write(&mut self, value: u8, now: u64) {
        match self.rw {
            1 => self.load(u16::from(value), now),
            2 => self.load(u16::from(value) << 8, now),
            3 => match self.write_lsb.take() {
                None => self.write_lsb = Some(value),
                Some(lsb) => self.load(u16::from_le_bytes([lsb, value]), now),
            },
            _ => {}
        }
    }

    fn control(&mut self, rw: u8, mode: u8, bcd: bool) {
        let gate = self.gate;
        *self = Channel {
            rw,
            mode: if mode > 5 { mode - 4 } else { mode },
            bcd,
            reload: self.modulus(),
            null_count: true,
            gate,
            ..Channel::default()
        };
        self.reload = self.modulus();
    }
}

fn from_bcd(v: u16) -> u16 {
    let mut out = 0u16;
    for shift in [12, 8, 4, 0] {
        out = out * 10 + ((v >> shift) & 0xf).min(9);
    }
    out
}

fn to_bcd(v: u16) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)
}

#[derive(Clone, Debug)]
pub struct Pit {
    ch: [Channel; 3],
    speaker: bool,
    /// Port 0x61 bits 2–3 (parity / channel check disables), stored.
    port61_misc: u8,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Self {
        let mut ch = [Channel::default(); 3];
        for (i, c) in ch.iter_mut().enumerate() {
            c.control(3, 0, false);
            c.gate = i != 2; // channel 2's gate comes from port 0x61
        }
        Pit {
            ch,
            speaker: false,
            port61_misc: 0,
        }
    }

    /// A guest IN from 0x40–0x43 or 0x61 (other ports read 0xFF). Port
    /// 0x43 has no read function and reads 0xFF.
    pub fn io_read(&mut self, port: u16, clock: &dyn Clock) -> u8 {
        let now = clock.now_ns();
        match port {
            0x40..=0x42 => self.ch[usize::from(port - PORT_CHANNEL0)].read(now),
            PORT_61 => self.read_port61(now),
            _ => 0xff,
        }
    }

    /// A guest OUT to 0x40–0x43 or 0x61 (other ports are ignored).
    pub fn io_write(&mut self, port: u16, value: u8, clock: &dyn Clock) {
        let now = clock.now_ns();
        match port {
            0x40..=0x42 => self.ch[usize::from(port - PORT_CHANNEL0)].write(value, now),
            PORT_COMMAND => self.command(value, now),
            PORT_61 => {
                self.speaker = value & 2 != 0;
                self.port61_misc = value & 0x0c;
                self.ch[2].set_gate(value & 1 != 0, now);
            }
            _ => {}
        }
    }

    fn read_port61(&self, now: u64) -> u8 {
        let refresh = (now / REFRESH_NS) & 1 != 0;
        u8::from(self.ch[2].gate)
            | (u8::from(self.speaker) << 1)
            | self.port61_misc
            | (u8::from(refresh) << 4)
            | (u8::from(self.ch[2].out(now)) << 5)
    }

    fn command(&mut self, value: u8, now: u64) {
        let sc = value >> 6;
        let rw = (value >> 4) & 3;
        if sc == 3 {
            // Read-back.
            for i in 0..3 {
                if value & (2 << i) == 0 {
                    continue;
                }
                let c = &mut self.ch[i];
                if value & 0x20 == 0 {
                    c.latch_count(now);
                }
                if value & 0x10 == 0 && c.status_latch.is_none() {
                    c.status_latch = Some(c.status(now));
                }
            }
            return;
        }
        let c = &mut self.ch[usize::from(sc)];
        if rw == 0 {
            c.latch_count(now);
        } else {
            c.control(rw, (value >> 1) & 7, value & 1 != 0);
        }
    }

    /// OUT of `channel` (0–2) now; false for a channel that does not exist.
    pub fn out(&self, channel: usize, clock: &dyn Clock) -> bool {
        self.ch.get(channel).is_some_and(|c| c.out(clock.now_ns()))
    }

    /// Report IRQ 0: true when channel 0's OUT rose since the last call.
    pub fn tick(&mut self, now: u64) -> bool {
        let c = &mut self.ch[0];
        if !c.counting() {
            return false;
        }
        let edges = c.edges_by(c.elapsed(now));
        if edges > c.edges_done {
            c.edges_done = edges;
            true
        } else {
            false
        }
    }

    /// When channel 0's OUT rises next (for the host timer), if ever.
    pub fn next_irq0_ns(&self) -> Option<u64> {
        let c = &self.ch[0];
        if !c.counting() {
            return None;
        }
        let target = c.edge_tick(c.edges_done.checked_add(1)?)?;
        let ahead = target.checked_sub(c.base_ticks)?;
        Some(
            c.run_start_ns
                .saturating_add(ticks_to_ns_ceil(ahead, PIT_HZ, NS_PER_S)),
        )
    }

    /// Channel 0's reload value (1..=65536) and mode, for diagnostics.
    pub fn channel0(&self) -> (u64, u8) {
        (self.ch[0].reload, self.ch[0].mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeClock, Rng};

    fn ns(ticks: u64) -> u64 {
        ticks_to_ns_ceil(ticks, PIT_HZ, NS_PER_S)
    }

    #[test]
    fn periodic_irq0_mode2() {
        let c = FakeClock::new(1000);
        let mut p = Pit::new();
        // Linux: outb(0x34, 0x43); LATCH = 1193182/HZ(250) = 4773
        p.io_write(0x43, 0x34, &c);
        p.io_write(0x40, (4773 & 0xff) as u8, &c);
        assert_eq!(p.next_irq0_ns(), None, "half-written count does not run");
        p.io_write(0x40, (4773 >> 8) as u8, &c);
        assert_eq!(p.channel0(), (4773, 2));
        let first = p.next_irq0_ns().unwrap();
        assert_eq!(first, 1000 + ns(4773));
        assert!(!p.tick(first - 1));
        assert!(p.tick(first));
        assert!(!p.tick(first));
        let second = p.next_irq0_ns().unwrap();
        assert_eq!(second, 1000 + ns(2 * 4773));
        // Missing many periods coalesces.
        assert!(p.tick(1000 + ns(10 * 4773)));
        assert_eq!(p.next_irq0_ns(), Some(1000 + ns(11 * 4773)));
        // OUT goes low for the last tick of the period.
        c.set(1000 + ns(4772));
        assert!(!p.out(0, &c));
        c.set(1000 + ns(4773));
        assert!(p.out(0, &c));
    }

    #[test]
    fn one_shot_mode0() {
        let c = FakeClock::new(0);
        let mut p = Pit::new();
        p.io_write(0x43, 0x30, &c);
        assert!(!p.out(0, &c));
        p.io_write(0x40, 100, &c);
        p.io_write(0x40, 0, &c);
        assert_eq!(p.next_irq0_ns(), Some(ns(100)));
        c.set(ns(40));
        // Counter latch, then read lo/hi.
        p.io_write(0x43, 0x00, &c);
        c.set(ns(60));
        assert_eq!(p.io_read(0x40, &c), 60);
        assert_eq!(p.io_read(0x40, &c), 0);
        assert!(!p.out(0, &c));
        assert!(p.tick(ns(100)));
        c.set(ns(100));
        assert!(p.out(0, &c));
        assert_eq!(p.next_irq0_ns(), None);
        assert!(!p.tick(ns(1_000_000)));
        // The counter keeps decrementing through 0 and wraps.
        c.set(ns(101));
        assert_eq!(p.io_read(0x40, &c), 0xff);
        assert_eq!(p.io_read(0x40, &c), 0xff);
    }

    #[test]
    fn square_wave_mode3() {
        let c = FakeClock::new(0);
        let mut p = Pit::new();
        p.io_write(0x43, 0x36, &c);
        p.io_write(0x40, 0, &c);
        p.io_write(0x40, 0, &c); // 65536
        assert!(p.out(0, &c));
        c.set(ns(32_768));
        assert!(!p.out(0, &c));
        assert!(p.tick(ns(65_536)));
        c.set(ns(100));
        assert_eq!(p.io_read(0x40, &c) & 1, 0);
    }

    /// Linux's `pit_calibrate_tsc`/`pit_hpet_ptimer_calibrate_cpu`: gate
    /// on, speaker off, channel 2 mode 0, count, poll port 0x61 bit 5.
    #[test]
    fn linux_channel2_calibration() {
        let c = FakeClock::new(5_000);
        let mut p = Pit::new();
        let v = p.io_read(0x61, &c);
        p.io_write(0x61, (v & !0x02) | 0x01, &c);
        p.io_write(0x43, 0xb0, &c);
        let latch = 1_193_182 / 20; // 50 ms
        p.io_write(0x42, latch as u8, &c);
        p.io_write(0x42, (latch >> 8) as u8, &c);
        assert_eq!(p.io_read(0x61, &c) & 0x20, 0);
        c.set(5_000 + ns(latch) - 1);
        assert_eq!(p.io_read(0x61, &c) & 0x20, 0);
        c.set(5_000 + ns(latch));
        assert_eq!(p.io_read(0x61, &c) & 0x21, 0x21);
        // quick_pit_calibrate: mode 0, 0xFFFF, read MSB via lo/hi reads.
        p.io_write(0x61, 0, &c);
        p.io_write(0x61, 1, &c);
        p.io_write(0x43, 0xb0, &c);
        p.io_write(0x42, 0xff, &c);
        p.io_write(0x42, 0xff, &c);
        let mut last = 0x100u16;
        for i in 0..10u64 {
            c.set(5_000 + ns(latch) + i * 2_000_000);
            let _lo = p.io_read(0x42, &c);
            let hi = u16::from(p.io_read(0x42, &c));
            assert!(hi < last, "MSB must decrease");
            last = hi;
        }
        // Gate low pauses mode 0.
        let before = {
            p.io_write(0x43, 0x80, &c);
            u16::from(p.io_read(0x42, &c)) | (u16::from(p.io_read(0x42, &c)) << 8)
        };
        p.io_write(0x61, 0, &c);
        c.advance(1_000_000);
        p.io_write(0x43, 0x80, &c);
        let after = u16::from(p.io_read(0x42, &c)) | (u16::from(p.io_read(0x42, &c)) << 8);
        assert_eq!(before, after);
    }

    #[test]
    fn readback_status_and_bcd() {
        let c = FakeClock::new(0);
        let mut p = Pit::new();
        p.io_write(0x43, 0x95, &c); // ch2, LSB only, mode 2, BCD
        assert_eq!(p.io_read(0x61, &c) & 1, 0);
        // Read-back: status of channel 2 (count not latched).
        p.io_write(0x43, 0xe8, &c);
        let st = p.io_read(0x42, &c);
        assert_eq!(st & 0x7f, 0x40 | 0x10 | 0x04 | 0x01);
        p.io_write(0x61, 1, &c);
        p.io_write(0x42, 0x50, &c); // BCD 50
        c.set(ns(8));
        p.io_write(0x43, 0xc8, &c); // latch count and status
        let st = p.io_read(0x42, &c);
        assert_eq!(st & 0x40, 0, "count loaded");
        assert_eq!(p.io_read(0x42, &c), 0x42);
        // MSB-only channel.
        p.io_write(0x43, 0x60, &c); // ch1, MSB only, mode 0
        p.io_write(0x41, 0x10, &c);
        assert_eq!(p.io_read(0x41, &c), 0x10);
        assert_eq!(from_bcd(0x9999), 9999);
        assert_eq!(from_bcd(0xffff), 9999);
        assert_eq!(to_bcd(1234), 0x1234);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let c = FakeClock::new(0);
        let mut rng = Rng::new(0x8254);
        let mut p = Pit::new();
        for _ in 0..40_000 {
            c.advance(rng.below(100_000));
            let port = match rng.below(10) {
                0..=2 => 0x40 + rng.below(4) as u16,
                3..=5 => 0x43,
                6 => 0x61,
                _ => rng.next() as u16,
            };
            if rng.chance(50) {
                let _ = p.io_read(port, &c);
            } else {
                p.io_write(port, rng.u8(), &c);
            }
            let now = c.now_ns();
            p.tick(now);
            if let Some(t) = p.next_irq0_ns() {
                assert!(
                    t > now || p.ch[0].mode == 0 || p.ch[0].mode == 4,
                    "deadline in past"
                );
            }
            for ch in &p.ch {
                assert!(ch.mode <= 5);
                assert!((1..=65_536).contains(&ch.reload));
                assert!(ch.value(now) < ch.modulus());
            }
            let _ = p.out(7, &c);
        }
    }
}
