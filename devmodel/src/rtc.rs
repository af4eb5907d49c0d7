//! MC146818 RTC and CMOS RAM at ports 0x70 (index, bit 7 = NMI disable)
//! and 0x71 (data), IRQ 8.
//!
//! The guest's time is the host [`WallClock`] plus an offset: a guest that
//! sets the clock changes its offset, never the host clock. Time registers
//! (0x00 seconds … 0x09 year, 0x32 century) are encoded on every read in
//! BCD or binary and 12/24-hour format per register B. While B.SET is 1
//! the registers hold a snapshot the guest edits; clearing SET commits
//! it. A write to a time register with SET clear takes effect at once.
//!
//! Register A's UIP bit always reads 0 (an update never appears to be in
//! progress, so no guest waits on it). Register C's flags: UF once per
//! guest second, AF when the alarm (0xC0–0xFF = "don't care") matches, PF
//! at the rate of register A (RS 1..15, from the monotonic [`Clock`]).
//! Register C is updated on access and by [`Rtc::poll`]; the IRQ 8 line
//! ([`Rtc::irq_level`]) is IRQF, which reading C clears. The caller arms a
//! host timer for [`Rtc::next_event_ns`] and calls `poll` then; UF is
//! reported within a second of the change (phase of the host's wall-clock
//! second is not known).

use crate::{Clock, WallClock};

pub const PORT_INDEX: u16 = 0x70;
pub const PORT_DATA: u16 = 0x71;

pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_DAY_OF_WEEK: u8 = 0x06;
pub const REG_DAY_OF_MONTH: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0a;
pub const REG_B: u8 = 0x0b;
pub const REG_C: u8 = 0x0c;
pub const REG_D: u8 = 0x0d;
pub const REG_CENTURY: u8 = 0x32;

pub const A_UIP: u8 = 1 << 7;
pub const B_SET: u8 = 1 << 7;
pub const B_PIE: u8 = 1 << 6;
pub const B_AIE: u8 = 1 << 5;
pub const B_UIE: u8 = 1 << 4;
pub const B_DM_BINARY: u8 = 1 << 2;
pub const B_24H: u8 = 1 << 1;
pub const C_IRQF: u8 = 1 << 7;
pub const C_PF: u8 = 1 << 6;
pub const C_AF: u8 = 1 << 5;
pub const C_UF: u8 = 1 << 4;
pub const D_VRT: u8 = 1 << 7;

const TIME_REGS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// Broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday … 7 = Saturday (the RTC's convention).
    pub weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1–12; day
/// may exceed the month's length and rolls over).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl DateTime {
    pub fn from_unix(t: i64) -> Self {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            weekday: ((days + 4).rem_euclid(7) + 1) as u8, // 1970-01-01 was a Thursday
        }
    }

    /// Seconds since the epoch; out-of-range fields are clamped.
    pub fn to_unix(&self) -> i64 {
        let days = days_from_civil(
            self.year,
            i64::from(self.month.clamp(1, 12)),
            i64::from(self.day.clamp(1, 31)),
        );
        days * 86_400
            + i64::from(self.hour.min(23)) * 3600
            + i64::from(self.minute.min(59)) * 60
            + i64::from(self.second.min(59))
    }
}

/// Host wall-clock seconds as i64 (saturating).
fn wall_secs(wall: &dyn WallClock) -> i64 {
    i64::try_from(wall.unix_time()).unwrap_or(i64::MAX / 2)
}

/// Years the guest can set are 0..=9999 (century 0..99 BCD); keep the
/// offset arithmetic far from overflow.
const MAX_GUEST_SECS: i64 = 253_402_300_799; // 9999-12-31 23:59:59

#[derive(Clone, Debug)]
pub struct Rtc {
    index: u8,
    nmi_disabled: bool,
    ram: [u8; 128],
    /// Guest time minus host wall time, seconds.
    offset: i64,
    /// Guest second at which UF/AF were last evaluated.
    last_second: i64,
    /// Periodic-flag epoch (now / period) at the last evaluation.
    pf_epoch: u64,
}

impl Rtc {
    /// An RTC showing host time, 24-hour BCD mode, 1024 Hz periodic rate
    /// programmed but not enabled.
    pub fn new(wall: &dyn WallClock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = 0x26;
        ram[usize::from(REG_B)] = B_24H;
        ram[usize::from(REG_D)] = D_VRT;
        Rtc {
            index: 0,
            nmi_disabled: false,
            ram,
            offset: 0,
            last_second: wall_secs(wall),
            pf_epoch: 0,
        }
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    fn binary(&self) -> bool {
        self.reg_b() & B_DM_BINARY != 0
    }

    /// The guest's current time, seconds since the epoch.
    pub fn guest_time(&self, wall: &dyn WallClock) -> i64 {
        wall_secs(wall).saturating_add(self.offset)
    }

    /// Offset of guest time from host time, seconds.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Set the guest's time directly (e.g. from a saved domain config).
    pub fn set_guest_time(&mut self, wall: &dyn WallClock, t: i64) {
        let t = t.clamp(0, MAX_GUEST_SECS);
        self.offset = t.saturating_sub(wall_secs(wall));
        self.last_second = t;
    }

    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    fn enc(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn dec(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4).wrapping_mul(10).wrapping_add(v & 0x0f)
        }
    }

    fn enc_hour(&self, h: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            self.enc(h)
        } else {
            let h12 = match h % 12 {
                0 => 12,
                x => x,
            };
            self.enc(h12) | if h >= 12 { 0x80 } else { 0 }
        }
    }

    fn dec_hour(&self, v: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            self.dec(v)
        } else {
            let h = self.dec(v & 0x7f) % 12;
            if v & 0x80 != 0 {
                h + 12
            } else {
                h
            }
        }
    }

    /// Encoded value of time register `reg` for time `t`.
    fn encode_field(&self, reg: u8, t: i64) -> u8 {
        let dt = DateTime::from_unix(t);
        let year = dt.year.rem_euclid(10_000);
        match reg {
            REG_SECONDS => self.enc(dt.second),
            REG_MINUTES => self.enc(dt.minute),
            REG_HOURS => self.enc_hour(dt.hour),
            REG_DAY_OF_WEEK => self.enc(dt.weekday),
            REG_DAY_OF_MONTH => self.enc(dt.day),
            REG_MONTH => self.enc(dt.month),
            REG_YEAR => self.enc((year % 100) as u8),
            REG_CENTURY => self.enc((year / 100) as u8),
            _ => 0,
        }
    }

    /// Copy the current time, encoded, into the time registers.
    fn snapshot(&mut self, wall: &dyn WallClock) {
        let t = self.guest_time(wall);
        for r in TIME_REGS {
            self.ram[usize::from(r)] = self.encode_field(r, t);
        }
    }

    /// Decode the time registers and make them the guest's time.
    fn commit(&mut self, wall: &dyn WallClock) {
        let r = |i: u8| self.ram[usize::from(i)];
        let century = i64::from(self.dec(r(REG_CENTURY)));
        let year = i64::from(self.dec(r(REG_YEAR)));
        let dt = DateTime {
            year: century * 100 + year,
            month: self.dec(r(REG_MONTH)),
            day: self.dec(r(REG_DAY_OF_MONTH)),
            hour: self.dec_hour(r(REG_HOURS)),
            minute: self.dec(r(REG_MINUTES)),
            second: self.dec(r(REG_SECONDS)),
            weekday: 1,
        };
        self.set_guest_time(wall, dt.to_unix());
    }

    fn alarm_matches(&self, t: i64) -> bool {
        [
            (REG_SECONDS_ALARM, REG_SECONDS),
            (REG_MINUTES_ALARM, REG_MINUTES),
            (REG_HOURS_ALARM, REG_HOURS),
        ]
        .iter()
        .all(|&(a, f)| {
            let alarm = self.ram[usize::from(a)];
            alarm >= 0xc0 || alarm == self.encode_field(f, t)
        })
    }

    fn periodic_ns(&self) -> Option<u64> {
        let rs = u32::from(self.ram[usize::from(REG_A)] & 0x0f);
        let shift = match rs {
            0 => return None,
            1 | 2 => rs + 6,
            _ => rs - 1,
        };
        // (1 << shift) / 32768 s
        Some((1_000_000_000u64 << shift) / 32_768)
    }

    /// Bring register C up to date with the clocks.
    pub fn poll(&mut self, wall: &dyn WallClock, clock: &dyn Clock) {
        if let Some(p) = self.periodic_ns() {
            let epoch = clock.now_ns() / p;
            if epoch != self.pf_epoch {
                self.pf_epoch = epoch;
                self.ram[usize::from(REG_C)] |= C_PF;
            }
        }
        if self.reg_b() & B_SET != 0 {
            return; // updates halted
        }
        let now = self.guest_time(wall);
        if now != self.last_second {
            self.ram[usize::from(REG_C)] |= C_UF;
            // Check each second we passed over (bounded), so an alarm is
            // not skipped when polls are late.
            let from = if now > self.last_second && now.saturating_sub(self.last_second) <= 86_400 {
                self.last_second + 1
            } else {
                now
            };
            let mut t = from;
            while t <= now && self.ram[usize::from(REG_C)] & C_AF == 0 {
                if self.alarm_matches(t) {
                    self.ram[usize::from(REG_C)] |= C_AF;
                }
                t += 1;
            }
            self.last_second = now;
        }
        self.update_irqf();
    }

    fn update_irqf(&mut self) {
        let b = self.reg_b();
        let c = self.ram[usize::from(REG_C)];
        let pending = (c & C_PF != 0 && b & B_PIE != 0)
            || (c & C_AF != 0 && b & B_AIE != 0)
            || (c & C_UF != 0 && b & B_UIE != 0);
        if pending {
            self.ram[usize::from(REG_C)] |= C_IRQF;
        }
    }

    /// Level of IRQ 8: register C's IRQF.
    pub fn irq_level(&self) -> bool {
        self.ram[usize::from(REG_C)] & C_IRQF != 0
    }

    /// When [`Rtc::poll`] should run next for an enabled interrupt, in
    /// [`Clock`] ns.
    pub fn next_event_ns(&self, clock: &dyn Clock) -> Option<u64> {
        let now = clock.now_ns();
        let b = self.reg_b();
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_ns() {
                next = Some((now / p + 1).saturating_mul(p));
            }
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            let s = (now / 1_000_000_000 + 1).saturating_mul(1_000_000_000);
            next = Some(next.map_or(s, |n| n.min(s)));
        }
        next
    }

    fn read_reg(&mut self, reg: u8, wall: &dyn WallClock, clock: &dyn Clock) -> u8 {
        let set = self.reg_b() & B_SET != 0;
        match reg {
            r if TIME_REGS.contains(&r) && !set => self.encode_field(r, self.guest_time(wall)),
            REG_A => self.ram[usize::from(REG_A)] & !A_UIP,
            REG_C => {
                self.poll(wall, clock);
                let v = self.ram[usize::from(REG_C)];
                self.ram[usize::from(REG_C)] = 0;
                v
            }
            REG_D => D_VRT,
            r => self.ram[usize::from(r & 0x7f)],
        }
    }

    fn write_reg(&mut self, reg: u8, value: u8, wall: &dyn WallClock, clock: &dyn Clock) {
        let set = self.reg_b() & B_SET != 0;
        match reg {
            r if TIME_REGS.contains(&r) => {
                if !set {
                    self.snapshot(wall);
                }
                self.ram[usize::from(r)] = value;
                if !set {
                    self.commit(wall);
                }
            }
            REG_A => {
                self.ram[usize::from(REG_A)] = value & 0x7f;
                if let Some(p) = self.periodic_ns() {
                    self.pf_epoch = clock.now_ns() / p;
                }
            }
            REG_B => {
                let old = self.reg_b();
                let mut v = value;
                if v & B_SET != 0 {
                    v &= !B_UIE; // SET clears UIE
                    if old & B_SET == 0 {
                        self.snapshot(wall);
                    }
                }
                self.ram[usize::from(REG_B)] = v;
                if old & B_SET != 0 && v & B_SET == 0 {
                    self.commit(wall);
                }
                self.update_irqf();
            }
            REG_C | REG_D => {}
            r => self.ram[usize::from(r & 0x7f)] = value,
        }
    }

    /// A guest IN from port 0x70 (`port & 1 == 0`: the index register is
    /// write-only and reads 0xFF) or 0x71 (data).
    pub fn io_read(&mut self, port: u16, wall: &dyn WallClock, clock: &dyn Clock) -> u8 {
        if port & 1 == 0 {
            0xff
        } else {
            self.read_reg(self.index, wall, clock)
        }
    }

    /// A guest OUT to port 0x70 (index, bit 7 = NMI disable) or 0x71.
    pub fn io_write(&mut self, port: u16, value: u8, wall: &dyn WallClock, clock: &dyn Clock) {
        if port & 1 == 0 {
            self.index = value & 0x7f;
            self.nmi_disabled = value & 0x80 != 0;
        } else {
            self.write_reg(self.index, value, wall, clock);
        }
    }

    /// Read CMOS RAM directly (for the toolstack / BIOS set-up); time
    /// registers read their stored snapshot, not the live time.
    pub fn cmos(&self, index: u8) -> u8 {
        self.ram[usize::from(index & 0x7f)]
    }

    /// Write CMOS RAM directly (memory size, boot order … for HVM
    /// firmware). Indices 0x00–0x0D are the clock's and are not touched.
    pub fn set_cmos(&mut self, index: u8, value: u8) {
        let i = index & 0x7f;
        if i > REG_D && i != REG_CENTURY {
            self.ram[usize::from(i)] = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeClock, FakeWall, Rng};

    // 2024-02-29 23:59:58 UTC, a Thursday.
    const T0: u64 = 1_709_251_198;

    fn setup() -> (Rtc, FakeWall, FakeClock) {
        let wall = FakeWall::default();
        wall.0.set(T0);
        let rtc = Rtc::new(&wall);
        (rtc, wall, FakeClock::new(0))
    }

    fn rd(rtc: &mut Rtc, reg: u8, w: &FakeWall, c: &FakeClock) -> u8 {
        rtc.io_write(0x70, reg, w, c);
        rtc.io_read(0x71, w, c)
    }

    fn wr(rtc: &mut Rtc, reg: u8, v: u8, w: &FakeWall, c: &FakeClock) {
        rtc.io_write(0x70, reg, w, c);
        rtc.io_write(0x71, v, w, c);
    }

    #[test]
    fn civil_round_trip() {
        for t in [
            0i64,
            951_782_400,
            1_709_251_198,
            4_102_444_800,
            -86_400,
            MAX_GUEST_SECS,
        ] {
            assert_eq!(DateTime::from_unix(t).to_unix(), t);
        }
        let d = DateTime::from_unix(T0 as i64);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second),
            (2024, 2, 29, 23, 59, 58)
        );
        assert_eq!(d.weekday, 5); // Thursday
    }

    /// Linux's `mc146818_get_time`: wait for !UIP, read BCD fields and
    /// the century from 0x32, convert.
    #[test]
    fn linux_reads_a_sane_date() {
        let (mut rtc, w, c) = setup();
        assert_eq!(rd(&mut rtc, REG_A, &w, &c) & A_UIP, 0);
        assert_eq!(rd(&mut rtc, REG_B, &w, &c), B_24H);
        assert_eq!(rd(&mut rtc, REG_SECONDS, &w, &c), 0x58);
        assert_eq!(rd(&mut rtc, REG_MINUTES, &w, &c), 0x59);
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x23);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_WEEK, &w, &c), 0x05);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_MONTH, &w, &c), 0x29);
        assert_eq!(rd(&mut rtc, REG_MONTH, &w, &c), 0x02);
        assert_eq!(rd(&mut rtc, REG_YEAR, &w, &c), 0x24);
        assert_eq!(rd(&mut rtc, REG_CENTURY, &w, &c), 0x20);
        assert_eq!(rd(&mut rtc, REG_D, &w, &c), D_VRT);
        w.0.set(T0 + 2);
        assert_eq!(rd(&mut rtc, REG_DAY_OF_MONTH, &w, &c), 0x01);
        assert_eq!(rd(&mut rtc, REG_MONTH, &w, &c), 0x03);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let (mut rtc, w, c) = setup();
        wr(&mut rtc, REG_B, B_DM_BINARY, &w, &c);
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x80 | 11);
        assert_eq!(rd(&mut rtc, REG_SECONDS, &w, &c), 58);
        assert_eq!(rd(&mut rtc, REG_YEAR, &w, &c), 24);
        wr(&mut rtc, REG_B, 0, &w, &c);
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x91);
        w.0.set(T0 + 2 + 3600 * 12); // 12:00:00 PM
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x92);
        w.0.set(T0 + 2); // midnight = 12 AM
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x12);
    }

    /// Linux's `mc146818_set_time`: SET, write fields, clear SET. The
    /// host clock is unaffected; the guest's offset changes.
    #[test]
    fn guest_sets_time_via_offset() {
        let (mut rtc, w, c) = setup();
        let b = rd(&mut rtc, REG_B, &w, &c);
        wr(&mut rtc, REG_B, b | B_SET, &w, &c);
        for (reg, v) in [
            (REG_YEAR, 0x99),
            (REG_MONTH, 0x12),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x50),
            (REG_CENTURY, 0x19),
        ] {
            wr(&mut rtc, reg, v, &w, &c);
        }
        // While SET, reads return what was written and time is frozen.
        w.0.set(T0 + 100);
        assert_eq!(rd(&mut rtc, REG_SECONDS, &w, &c), 0x50);
        wr(&mut rtc, REG_B, b, &w, &c);
        assert_eq!(rtc.guest_time(&w), 946_684_790); // 1999-12-31 23:59:50
        assert_eq!(w.0.get(), T0 + 100);
        w.0.set(T0 + 110);
        assert_eq!(rd(&mut rtc, REG_YEAR, &w, &c), 0x00);
        assert_eq!(rd(&mut rtc, REG_CENTURY, &w, &c), 0x20);
        // A single write without SET takes effect at once.
        wr(&mut rtc, REG_MINUTES, 0x10, &w, &c);
        assert_eq!(rd(&mut rtc, REG_MINUTES, &w, &c), 0x10);
        assert_eq!(rd(&mut rtc, REG_HOURS, &w, &c), 0x00);
    }

    #[test]
    fn update_alarm_and_periodic_interrupts() {
        let (mut rtc, w, c) = setup();
        rtc.poll(&w, &c);
        assert!(!rtc.irq_level());
        // Update-ended interrupt.
        wr(&mut rtc, REG_B, B_24H | B_UIE, &w, &c);
        assert_eq!(rtc.next_event_ns(&c), Some(1_000_000_000));
        w.0.set(T0 + 1);
        rtc.poll(&w, &c);
        assert!(rtc.irq_level());
        let cval = rd(&mut rtc, REG_C, &w, &c);
        assert_eq!(cval & (C_IRQF | C_UF), C_IRQF | C_UF);
        assert!(!rtc.irq_level());
        assert_eq!(rd(&mut rtc, REG_C, &w, &c), 0);
        // Alarm at 00:00:05 (skipped over by a late poll, still caught).
        wr(&mut rtc, REG_B, B_24H | B_AIE, &w, &c);
        wr(&mut rtc, REG_SECONDS_ALARM, 0x05, &w, &c);
        wr(&mut rtc, REG_MINUTES_ALARM, 0x00, &w, &c);
        wr(&mut rtc, REG_HOURS_ALARM, 0xc0, &w, &c);
        w.0.set(T0 + 2 + 4);
        rtc.poll(&w, &c);
        assert!(!rtc.irq_level());
        w.0.set(T0 + 2 + 9);
        rtc.poll(&w, &c);
        assert!(rtc.irq_level());
        assert_eq!(rd(&mut rtc, REG_C, &w, &c) & C_AF, C_AF);
        // Periodic at 1024 Hz (RS = 6).
        wr(&mut rtc, REG_B, B_24H | B_PIE, &w, &c);
        let p = 976_562;
        assert_eq!(rtc.next_event_ns(&c), Some(p));
        c.set(p);
        rtc.poll(&w, &c);
        assert!(rtc.irq_level());
        assert_eq!(rd(&mut rtc, REG_C, &w, &c) & C_PF, C_PF);
        // RS = 15: 2 Hz.
        wr(&mut rtc, REG_A, 0x2f, &w, &c);
        assert_eq!(rtc.next_event_ns(&c), Some(500_000_000));
        // SET clears UIE.
        wr(&mut rtc, REG_B, B_SET | B_UIE, &w, &c);
        assert_eq!(rd(&mut rtc, REG_B, &w, &c), B_SET);
    }

    #[test]
    fn cmos_ram_and_index() {
        let (mut rtc, w, c) = setup();
        wr(&mut rtc, 0x40, 0xab, &w, &c);
        assert_eq!(rd(&mut rtc, 0x40, &w, &c), 0xab);
        rtc.io_write(0x70, 0x80 | 0x40, &w, &c);
        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.io_read(0x71, &w, &c), 0xab);
        assert_eq!(rtc.io_read(0x70, &w, &c), 0xff);
        rtc.set_cmos(0x5b, 0x12);
        assert_eq!(rd(&mut rtc, 0x5b, &w, &c), 0x12);
        rtc.set_cmos(REG_B, 0xff);
        assert_eq!(rd(&mut rtc, REG_B, &w, &c), B_24H);
        // C and D are read-only.
        wr(&mut rtc, REG_D, 0, &w, &c);
        assert_eq!(rd(&mut rtc, REG_D, &w, &c), D_VRT);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let (mut rtc, w, c) = setup();
        let mut rng = Rng::new(0x146818);
        for _ in 0..30_000 {
            if rng.chance(20) {
                w.0.set(w.0.get().wrapping_add(rng.below(200_000)));
            }
            if rng.chance(1) {
                w.0.set(rng.next());
            }
            c.advance(rng.below(10_000_000));
            let port = 0x70 + rng.below(2) as u16;
            match rng.below(4) {
                0 | 1 => {
                    let _ = rtc.io_read(port, &w, &c);
                }
                2 => rtc.io_write(port, rng.u8(), &w, &c),
                _ => {
                    rtc.poll(&w, &c);
                    let _ = rtc.next_event_ns(&c);
                }
            }
            let t = rtc.guest_time(&w);
            if rtc.reg_b() & B_SET == 0 && wall_secs(&w) < MAX_GUEST_SECS {
                // Whatever the guest wrote, the date it reads decodes sanely.
                let dt = DateTime::from_unix(t);
                assert!((1..=12).contains(&dt.month) && (1..=31).contains(&dt.day));
            }
            assert_eq!(rtc.cmos(REG_A) & A_UIP, 0);
        }
    }
}
