//! ACPI fixed hardware: PM1a event block (PM1_STS, PM1_EN), PM1a control
//! block (PM1_CNT), the PM timer and the reset register, at the ports the
//! loader's FADT describes (`ferrite-loader`'s `acpi.rs`, `DEFAULT_*`):
//!
//! | port | width | register |
//! | --- | --- | --- |
//! | 0xB000 | 2 | PM1a_STS (write 1 to clear) |
//! | 0xB002 | 2 | PM1a_EN |
//! | 0xB004 | 2 | PM1a_CNT (`SCI_EN` always 1: no SMI command port) |
//! | 0xB008 | 4 | PM_TMR, 32 bits (`TMR_VAL_EXT`), 3.579545 MHz |
//! | 0xCF9 | 1 | reset control; writing a value with bit 2 (0x06) resets |
//!
//! Accesses may be of any width within a block; each byte is decoded on
//! its own (bytes past the end of a block read as 0xFF). SCI is GSI 9,
//! level-triggered active-high: [`AcpiPm::sci_level`] is the line level.
//!
//! `SLP_EN` with `SLP_TYP` = 5 (`_S5_`) reports [`PowerEvent::PowerOff`];
//! other sleep types are not offered by the DSDT and are ignored.

use crate::clock::ticks_to_ns_ceil;
use crate::Clock;

pub const PM_TIMER_HZ: u64 = 3_579_545;

pub const PM1_TMR_STS: u16 = 1 << 0;
pub const PM1_BM_STS: u16 = 1 << 4;
pub const PM1_GBL_STS: u16 = 1 << 5;
pub const PM1_PWRBTN_STS: u16 = 1 << 8;
pub const PM1_SLPBTN_STS: u16 = 1 << 9;
pub const PM1_RTC_STS: u16 = 1 << 10;
pub const PM1_WAK_STS: u16 = 1 << 15;
/// Status bits this model can set (the others read 0).
const PM1_STS_IMPLEMENTED: u16 =
    PM1_TMR_STS | PM1_GBL_STS | PM1_PWRBTN_STS | PM1_SLPBTN_STS | PM1_RTC_STS | PM1_WAK_STS;
/// Enable bits: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN.
const PM1_EN_WRITABLE: u16 =
    PM1_TMR_STS | PM1_GBL_STS | PM1_PWRBTN_STS | PM1_SLPBTN_STS | PM1_RTC_STS;

pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
pub const PM1_CNT_BM_RLD: u16 = 1 << 1;
pub const PM1_CNT_GBL_RLS: u16 = 1 << 2;
pub const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
pub const PM1_CNT_SLP_TYP_MASK: u16 = 7 << 10;
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;

/// Ports and values; `Default` matches the loader's FADT/DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiPmLayout {
    pub pm1a_evt: u16,
    pub pm1a_cnt: u16,
    pub pm_tmr: u16,
    pub reset_port: u16,
    pub reset_value: u8,
    pub slp_typ_s5: u8,
    /// FADT `TMR_VAL_EXT`: 32-bit timer (else 24-bit).
    pub timer_32bit: bool,
}

impl Default for AcpiPmLayout {
    fn default() -> Self {
        AcpiPmLayout {
            pm1a_evt: 0xb000,
            pm1a_cnt: 0xb004,
            pm_tmr: 0xb008,
            reset_port: 0xcf9,
            reset_value: 0x06,
            slp_typ_s5: 5,
            timer_32bit: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// S5 entered: the domain shuts down.
    PowerOff,
    /// Reset register (or 0xCF9) written: the domain reboots.
    Reset,
}

/// Result of a port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoWrite {
    /// Not one of our ports.
    Unhandled,
    Handled,
    /// Handled, and the domain must power off / reset.
    Event(PowerEvent),
}

#[derive(Clone, Debug)]
pub struct AcpiPm {
    layout: AcpiPmLayout,
    sts: u16,
    en: u16,
    cnt: u16,
    reset_reg: u8,
    /// Timer MSB epoch (ticks >> msb_shift) at the last update.
    tmr_epoch: u64,
}

enum Block {
    Evt(u16),
    Cnt(u16),
    Tmr(u16),
    Reset,
}

impl AcpiPm {
    pub fn new(layout: AcpiPmLayout) -> Self {
        AcpiPm {
            layout,
            sts: 0,
            en: 0,
            cnt: PM1_CNT_SCI_EN,
            reset_reg: 0,
            tmr_epoch: 0,
        }
    }

    pub fn layout(&self) -> &AcpiPmLayout {
        &self.layout
    }

    fn msb_shift(&self) -> u32 {
        if self.layout.timer_32bit {
            31
        } else {
            23
        }
    }

    fn ticks(clock: &dyn Clock) -> u64 {
        // ns × (PM_TIMER_HZ / 1e9) in 0.64 fixed point: one multiply instead
        // of a 128-bit division on every timer read (a hot guest exit).
        // Rounded up, so whole seconds give exact tick counts.
        const TICKS_PER_NS_FP64: u128 = ((PM_TIMER_HZ as u128) << 64).div_ceil(1_000_000_000);
        ((u128::from(clock.now_ns()) * TICKS_PER_NS_FP64) >> 64) as u64
    }

    /// The PM timer value now.
    pub fn timer_value(&self, clock: &dyn Clock) -> u32 {
        let t = Self::ticks(clock);
        if self.layout.timer_32bit {
            t as u32
        } else {
            (t & 0x00ff_ffff) as u32
        }
    }

    /// Bring TMR_STS up to date: it is set whenever the timer's top bit
    /// toggles. Call from a host timer at [`AcpiPm::next_event_ns`].
    pub fn update(&mut self, clock: &dyn Clock) {
        self.update_at(Self::ticks(clock));
    }

    /// `update` at PM timer count `ticks`.
    fn update_at(&mut self, ticks: u64) {
        let epoch = ticks >> self.msb_shift();
        if epoch != self.tmr_epoch {
            self.tmr_epoch = epoch;
            self.sts |= PM1_TMR_STS;
        }
    }

    /// When TMR_STS will next be set, if the timer interrupt is enabled
    /// (TMR_EN); the caller arms a host timer for it and calls `update`.
    pub fn next_event_ns(&self) -> Option<u64> {
        if self.en & PM1_TMR_STS == 0 {
            return None;
        }
        let next = (self.tmr_epoch + 1) << self.msb_shift();
        Some(ticks_to_ns_ceil(next, PM_TIMER_HZ, 1_000_000_000))
    }

    /// Level of the SCI line (GSI 9, level, active high).
    pub fn sci_level(&self) -> bool {
        self.cnt & PM1_CNT_SCI_EN != 0 && self.sts & self.en & PM1_EN_WRITABLE != 0
    }

    /// The power button was pressed: set PWRBTN_STS. Returns the SCI level
    /// afterwards (true when PWRBTN_EN is set).
    pub fn press_power_button(&mut self) -> bool {
        self.sts |= PM1_PWRBTN_STS;
        self.sci_level()
    }

    /// The sleep button was pressed (SLPBTN_STS).
    pub fn press_sleep_button(&mut self) -> bool {
        self.sts |= PM1_SLPBTN_STS;
        self.sci_level()
    }

    /// An RTC alarm woke the system (RTC_STS).
    pub fn set_rtc_status(&mut self) -> bool {
        self.sts |= PM1_RTC_STS;
        self.sci_level()
    }

    pub fn pm1_status(&self) -> u16 {
        self.sts
    }

    pub fn pm1_enable(&self) -> u16 {
        self.en
    }

    pub fn pm1_control(&self) -> u16 {
        self.cnt
    }

    fn decode(&self, port: u16) -> Option<Block> {
        self.layout.decode(port)
    }

    /// Whether `port` (the first byte of an access of `size` bytes) is
    /// ours. The reset register only answers byte accesses, so a dword
    /// access at 0xCF8 (PCI CONFIG_ADDRESS) is never claimed.
    pub fn handles(&self, port: u16, size: u8) -> bool {
        self.layout.handles(port, size)
    }

    fn read_byte(&mut self, port: u16, clock: &dyn Clock) -> u8 {
        match self.decode(port) {
            Some(Block::Evt(i)) => {
                let v = if i < 2 { self.sts } else { self.en };
                (v >> ((i & 1) * 8)) as u8
            }
            Some(Block::Cnt(i)) => (self.cnt >> (i * 8)) as u8,
            Some(Block::Tmr(i)) => (self.timer_value(clock) >> (i * 8)) as u8,
            Some(Block::Reset) => self.reset_reg,
            None => 0xff,
        }
    }

    /// A guest IN of `size` bytes (1, 2 or 4) at `port`; `None` when the
    /// port is not ours.
    pub fn io_read(&mut self, port: u16, size: u8, clock: &dyn Clock) -> Option<u32> {
        if !self.handles(port, size) {
            return None;
        }
        // The timer is the hot register (guests poll it): one clock read.
        let ticks = Self::ticks(clock);
        self.update_at(ticks);
        if port == self.layout.pm_tmr && size == 4 {
            return Some(if self.layout.timer_32bit { ticks as u32 } else { (ticks & 0x00ff_ffff) as u32 });
        }
        let n = u16::from(size.clamp(1, 4));
        let mut v = 0u32;
        for i in 0..n {
            v |= u32::from(self.read_byte(port.wrapping_add(i), clock)) << (i * 8);
        }
        Some(v)
    }

    /// A guest OUT of `size` bytes at `port`.
    pub fn io_write(&mut self, port: u16, size: u8, value: u32, clock: &dyn Clock) -> IoWrite {
        if !self.handles(port, size) {
            return IoWrite::Unhandled;
        }
        self.update(clock);
        let n = u16::from(size.clamp(1, 4));
        let mut event = None;
        for i in 0..n {
            let b = (value >> (i * 8)) as u8;
            let p = port.wrapping_add(i);
            match self.decode(p) {
                Some(Block::Evt(j)) if j < 2 => {
                    let mask = (u16::from(b) << ((j & 1) * 8)) & PM1_STS_IMPLEMENTED;
                    self.sts &= !mask;
                }
                Some(Block::Evt(j)) => {
                    let shift = (j & 1) * 8;
                    let en = (self.en & !(0xff << shift)) | (u16::from(b) << shift);
                    self.en = en & PM1_EN_WRITABLE;
                }
                Some(Block::Cnt(j)) => {
                    let shift = j * 8;
                    let cnt = (self.cnt & !(0xff << shift)) | (u16::from(b) << shift);
                    event = event.or(self.write_cnt(cnt, j == 1));
                }
                Some(Block::Tmr(_)) | None => {}
                Some(Block::Reset) => {
                    self.reset_reg = b & 0x0e;
                    if b & 0x04 != 0 {
                        event = Some(PowerEvent::Reset);
                    }
                }
            }
        }
        match event {
            Some(e) => IoWrite::Event(e),
            None => IoWrite::Handled,
        }
    }

    fn write_cnt(&mut self, value: u16, high_byte: bool) -> Option<PowerEvent> {
        // SCI_EN is fixed at 1; GBL_RLS and SLP_EN are write-only.
        let keep = PM1_CNT_BM_RLD | PM1_CNT_SLP_TYP_MASK;
        self.cnt = (value & keep) | PM1_CNT_SCI_EN;
        if high_byte && value & PM1_CNT_SLP_EN != 0 {
            let typ = ((value & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT) as u8;
            if typ == self.layout.slp_typ_s5 {
                return Some(PowerEvent::PowerOff);
            }
            log::debug!("acpi_pm: unsupported sleep type {typ} ignored");
        }
        None
    }
}

impl AcpiPmLayout {
    fn decode(&self, port: u16) -> Option<Block> {
        let l = self;
        let within = |base: u16, len: u16| port.wrapping_sub(base) < len;
        if within(l.pm1a_evt, 4) {
            Some(Block::Evt(port.wrapping_sub(l.pm1a_evt)))
        } else if within(l.pm1a_cnt, 2) {
            Some(Block::Cnt(port.wrapping_sub(l.pm1a_cnt)))
        } else if within(l.pm_tmr, 4) {
            Some(Block::Tmr(port.wrapping_sub(l.pm_tmr)))
        } else if port == l.reset_port {
            Some(Block::Reset)
        } else {
            None
        }
    }

    /// Whether an access of `size` bytes at `port` is one of these
    /// registers (see [`AcpiPm::handles`]).
    pub fn handles(&self, port: u16, size: u8) -> bool {
        match self.decode(port) {
            Some(Block::Reset) => size == 1,
            Some(_) => true,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeClock, Rng};

    fn pm() -> AcpiPm {
        AcpiPm::new(AcpiPmLayout::default())
    }

    #[test]
    fn sci_en_is_always_set() {
        let c = FakeClock::new(0);
        let mut p = pm();
        assert_eq!(p.io_read(0xb004, 2, &c), Some(1));
        assert_eq!(p.io_write(0xb004, 2, 0, &c), IoWrite::Handled);
        assert_eq!(p.io_read(0xb004, 2, &c), Some(1));
        assert_eq!(p.io_read(0xb004, 1, &c), Some(1));
    }

    #[test]
    fn s5_powers_off() {
        let c = FakeClock::new(0);
        let mut p = pm();
        // Linux: write SLP_TYP first, then SLP_TYP | SLP_EN.
        let typ = 5u32 << 10;
        assert_eq!(p.io_write(0xb004, 2, typ | 1, &c), IoWrite::Handled);
        assert_eq!(
            p.io_write(0xb004, 2, typ | 1 | (1 << 13), &c),
            IoWrite::Event(PowerEvent::PowerOff)
        );
        // SLP_EN reads back 0.
        assert_eq!(p.io_read(0xb004, 2, &c).unwrap() & (1 << 13), 0);
        // Other sleep types are ignored.
        let mut p = pm();
        assert_eq!(
            p.io_write(0xb004, 2, (3 << 10) | (1 << 13), &c),
            IoWrite::Handled
        );
        // A byte write of the high byte alone works too.
        assert_eq!(
            p.io_write(0xb005, 1, 0x34, &c),
            IoWrite::Event(PowerEvent::PowerOff)
        );
    }

    #[test]
    fn reset_register() {
        let c = FakeClock::new(0);
        let mut p = pm();
        assert!(!p.handles(0xcf8, 4), "PCI config address is not ours");
        assert_eq!(p.io_write(0xcf8, 4, 0x8000_0000, &c), IoWrite::Unhandled);
        assert_eq!(p.io_write(0xcf9, 1, 0x02, &c), IoWrite::Handled);
        assert_eq!(p.io_read(0xcf9, 1, &c), Some(0x02));
        assert_eq!(
            p.io_write(0xcf9, 1, 0x06, &c),
            IoWrite::Event(PowerEvent::Reset)
        );
    }

    #[test]
    fn power_button_and_w1c() {
        let c = FakeClock::new(0);
        let mut p = pm();
        assert!(!p.press_power_button(), "PWRBTN_EN clear: no SCI");
        assert_eq!(p.io_read(0xb000, 2, &c), Some(0x100));
        // Enable: SCI rises.
        p.io_write(0xb002, 2, 0x100, &c);
        assert!(p.sci_level());
        assert_eq!(p.io_read(0xb000, 4, &c), Some(0x0100_0100));
        // Writing 0 clears nothing; writing 1 clears.
        p.io_write(0xb000, 2, 0, &c);
        assert!(p.sci_level());
        p.io_write(0xb000, 2, 0x100, &c);
        assert!(!p.sci_level());
        assert_eq!(p.io_read(0xb000, 2, &c), Some(0));
        assert!(p.press_power_button());
        // 32-bit write: clear status, keep enable.
        p.io_write(0xb000, 4, 0x0100_0100, &c);
        assert!(!p.sci_level());
        assert_eq!(p.pm1_enable(), 0x100);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let c = FakeClock::new(0);
        let mut p = pm();
        assert_eq!(p.io_read(0xb008, 4, &c), Some(0));
        c.set(1_000_000_000);
        assert_eq!(p.io_read(0xb008, 4, &c), Some(3_579_545));
        c.set(10_000_000); // monotonic clock tolerated going back in tests
        assert_eq!(p.io_read(0xb008, 4, &c), Some(35_795));
        // Writes are ignored; byte reads see the bytes.
        p.io_write(0xb008, 4, 0, &c);
        assert_eq!(p.io_read(0xb008, 1, &c), Some(35_795 & 0xff));
        // 24-bit variant wraps.
        let mut p24 = AcpiPm::new(AcpiPmLayout {
            timer_32bit: false,
            ..AcpiPmLayout::default()
        });
        c.set(5_000_000_000);
        assert_eq!(
            p24.io_read(0xb008, 4, &c),
            Some((17_897_725u64 & 0xff_ffff) as u32)
        );
    }

    #[test]
    fn timer_overflow_status() {
        let c = FakeClock::new(0);
        let mut p = AcpiPm::new(AcpiPmLayout {
            timer_32bit: false,
            ..AcpiPmLayout::default()
        });
        assert_eq!(p.next_event_ns(), None);
        p.io_write(0xb002, 2, 1, &c); // TMR_EN
        let t = p.next_event_ns().unwrap();
        // 2^23 ticks at 3.579545 MHz ≈ 2.343 s.
        assert!((2_343_000_000..2_344_000_000).contains(&t));
        c.set(t - 1);
        p.update(&c);
        assert!(!p.sci_level());
        c.set(t);
        p.update(&c);
        assert!(p.sci_level());
        p.io_write(0xb000, 2, 1, &c);
        assert!(!p.sci_level());
    }

    #[test]
    fn foreign_ports_and_edges() {
        let c = FakeClock::new(0);
        let mut p = pm();
        assert_eq!(p.io_read(0xb00c, 4, &c), None);
        assert_eq!(p.io_read(0x3f8, 1, &c), None);
        // A dword read at PM1_CNT runs past its 2-byte block.
        assert_eq!(p.io_read(0xb004, 4, &c), Some(0xffff_0001));
        // 0xB006 is in no block.
        assert_eq!(p.io_read(0xb006, 4, &c), None);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let c = FakeClock::new(0);
        let mut rng = Rng::new(0xac91);
        let mut p = pm();
        for _ in 0..30_000 {
            c.advance(rng.below(1 << 30));
            let port = if rng.chance(85) {
                0xb000 + rng.below(16) as u16
            } else {
                rng.next() as u16
            };
            let port = if rng.chance(5) { 0xcf9 } else { port };
            let size = [1u8, 2, 4, 0, 9][rng.below(5) as usize];
            match rng.below(5) {
                0 | 1 => {
                    let _ = p.io_read(port, size, &c);
                }
                2 | 3 => {
                    let _ = p.io_write(port, size, rng.next() as u32, &c);
                }
                _ => {
                    p.press_power_button();
                }
            }
            assert_ne!(p.pm1_control() & PM1_CNT_SCI_EN, 0);
            assert_eq!(p.pm1_control() & PM1_CNT_SLP_EN, 0);
            assert_eq!(p.pm1_enable() & !PM1_EN_WRITABLE, 0);
            assert_eq!(p.sci_level(), p.pm1_status() & p.pm1_enable() != 0);
        }
    }
}
