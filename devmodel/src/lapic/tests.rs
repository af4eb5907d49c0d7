//! Unit tests of the local APIC model.

use super::*;
use crate::testutil::{FakeClock, Rng};

fn bsp() -> Lapic {
    Lapic::new(LapicConfig::new(0, true))
}

fn enable(l: &mut Lapic, c: &FakeClock) {
    l.write_mmio(reg::SVR as u64, 4, 0x1ff, c);
}

fn r(l: &mut Lapic, off: u32, c: &FakeClock) -> u32 {
    l.read_mmio(u64::from(off), 4, c) as u32
}

fn w(l: &mut Lapic, off: u32, v: u32, c: &FakeClock) -> LapicEffect {
    l.write_mmio(u64::from(off), 4, u64::from(v), c)
}

#[test]
fn reset_state_and_identity() {
    let c = FakeClock::new(0);
    let mut l = Lapic::new(LapicConfig::new(3, false));
    assert_eq!(l.apic_base(), 0xfee0_0800);
    assert_eq!(l.mode(), ApicMode::XApic);
    assert!(l.is_waiting_for_sipi());
    assert_eq!(r(&mut l, reg::ID, &c), 3 << 24);
    assert_eq!(r(&mut l, reg::VERSION, &c), 0x50014);
    assert_eq!(r(&mut l, reg::DFR, &c), 0xffff_ffff);
    assert_eq!(r(&mut l, reg::SVR, &c), 0xff);
    assert_eq!(r(&mut l, reg::LVT_LINT0, &c), LVT_MASKED);
    // ID is read-only.
    w(&mut l, reg::ID, 7 << 24, &c);
    assert_eq!(r(&mut l, reg::ID, &c), 3 << 24);
    // Byte read of the version's max-LVT field.
    assert_eq!(l.read_mmio(0x32, 1, &c), 5);
    assert_eq!(l.read_mmio(0x34, 4, &c), 0);
    // SVR disabled: LVTs cannot be unmasked.
    w(&mut l, reg::LVT_LINT0, 0x700, &c);
    assert_eq!(r(&mut l, reg::LVT_LINT0, &c), 0x10700);
    enable(&mut l, &c);
    w(&mut l, reg::LVT_LINT0, 0x700, &c);
    assert_eq!(r(&mut l, reg::LVT_LINT0, &c), 0x700);
    assert_eq!(l.receive_sipi(0x9a), Some(0x9a));
    assert_eq!(l.receive_sipi(0x9a), None);
    l.receive_init();
    assert!(l.is_waiting_for_sipi());
    assert_eq!(r(&mut l, reg::SVR, &c), 0xff);
}

#[test]
fn priority_ack_and_eoi() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    assert!(!l.accept(0x40, false), "software-disabled APIC drops");
    enable(&mut l, &c);
    assert!(!l.accept(5, false));
    assert!(l.accept(0x41, false));
    assert!(l.accept(0x92, true));
    assert_eq!(l.highest_pending(), Some(0x92));
    l.ack(0x92);
    assert!(l.isr_bit(0x92));
    assert_eq!(r(&mut l, reg::PPR, &c), 0x90);
    // 0x41 is below the in-service class.
    assert_eq!(l.highest_pending(), None);
    assert!(l.accept(0x9f, false));
    assert_eq!(l.highest_pending(), None, "same class as in-service");
    assert!(l.accept(0xa0, false));
    assert_eq!(l.highest_pending(), Some(0xa0));
    l.ack(0xa0);
    assert_eq!(w(&mut l, reg::EOI, 0, &c), LapicEffect::None);
    assert_eq!(w(&mut l, reg::EOI, 0, &c), LapicEffect::EoiBroadcast(0x92));
    assert_eq!(l.highest_pending(), Some(0x9f));
    // TPR blocks.
    w(&mut l, reg::TPR, 0xa0, &c);
    assert_eq!(l.highest_pending(), None);
    assert_eq!(r(&mut l, reg::PPR, &c), 0xa0);
    w(&mut l, reg::TPR, 0x80, &c);
    assert_eq!(l.highest_pending(), Some(0x9f));
    // IRR is visible in the register file.
    assert_eq!(r(&mut l, reg::IRR + 0x40, &c), 1 << 31);
    assert_eq!(r(&mut l, reg::IRR + 0x20, &c), 1 << 1);
    // EOI with empty ISR is harmless.
    l.ack(0x9f);
    l.ack(0x41);
    w(&mut l, reg::EOI, 0, &c);
    w(&mut l, reg::EOI, 0, &c);
    assert_eq!(w(&mut l, reg::EOI, 0, &c), LapicEffect::None);
}

#[test]
fn esr_latches_on_write() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    enable(&mut l, &c);
    w(&mut l, reg::LVT_ERROR, 0xfe, &c);
    // Fixed IPI with vector 3: send-illegal-vector error.
    assert_eq!(w(&mut l, reg::ICR_LOW, 0x4003, &c), LapicEffect::None);
    assert_eq!(r(&mut l, reg::ESR, &c), 0);
    w(&mut l, reg::ESR, 0, &c);
    assert_eq!(r(&mut l, reg::ESR, &c), ESR_SEND_ILLEGAL_VECTOR);
    assert_eq!(l.highest_pending(), Some(0xfe));
    w(&mut l, reg::ESR, 0, &c);
    assert_eq!(r(&mut l, reg::ESR, &c), 0);
}

#[test]
fn icr_ipis_including_init_sipi() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    enable(&mut l, &c);
    w(&mut l, reg::ICR_HIGH, 2 << 24, &c);
    // INIT assert, level.
    let LapicEffect::Ipi(init) = w(&mut l, reg::ICR_LOW, 0xc500, &c) else {
        panic!()
    };
    assert_eq!(init.mode, DeliveryMode::Init);
    assert_eq!(init.dest, 2);
    assert!(init.level && !init.is_init_deassert());
    // INIT de-assert.
    let LapicEffect::Ipi(d) = w(&mut l, reg::ICR_LOW, 0x8500, &c) else {
        panic!()
    };
    assert!(d.is_init_deassert());
    // SIPI vector 0x9a.
    let LapicEffect::Ipi(s) = w(&mut l, reg::ICR_LOW, 0x069a, &c) else {
        panic!()
    };
    assert_eq!((s.mode, s.vector), (DeliveryMode::Startup, 0x9a));
    // Delivery status reads idle; ICR high reads back.
    assert_eq!(r(&mut l, reg::ICR_LOW, &c) & (1 << 12), 0);
    assert_eq!(r(&mut l, reg::ICR_HIGH, &c), 2 << 24);
    // The AP side.
    let mut ap = Lapic::new(LapicConfig::new(2, false));
    assert!(ap.matches_dest(s.dest, s.dest_mode, s.x2apic));
    ap.receive_init();
    assert_eq!(ap.receive_sipi(s.vector), Some(0x9a));
    assert_eq!(ap.receive_sipi(s.vector), None, "second SIPI ignored");
    // All-excluding-self fixed IPI.
    let LapicEffect::Ipi(b) = w(&mut l, reg::ICR_LOW, 0xc00f3, &c) else {
        panic!()
    };
    assert_eq!(b.shorthand, Shorthand::AllExcludingSelf);
    assert_eq!(b.vector, 0xf3);
}

#[test]
fn logical_destinations() {
    let c = FakeClock::new(0);
    let mut l = Lapic::new(LapicConfig::new(5, false));
    enable(&mut l, &c);
    w(&mut l, reg::LDR, 0x2000_0000, &c);
    assert!(l.matches_dest(0x20, DestMode::Logical, false));
    assert!(l.matches_dest(0x30, DestMode::Logical, false));
    assert!(!l.matches_dest(0x10, DestMode::Logical, false));
    w(&mut l, reg::DFR, 0x0fff_ffff, &c); // cluster
    w(&mut l, reg::LDR, 0x3200_0000, &c);
    assert!(l.matches_dest(0x36, DestMode::Logical, false));
    assert!(!l.matches_dest(0x26, DestMode::Logical, false));
    assert!(l.matches_dest(5, DestMode::Physical, false));
    assert!(l.matches_dest(0xff, DestMode::Physical, false));
    // x2APIC: LDR derived, cluster 0, bit 5.
    l.set_apic_base(0xfee0_0c00).unwrap();
    assert_eq!(l.read_msr(0x80d, &c), Ok(1 << 5));
    assert!(l.matches_dest(0x0000_0020, DestMode::Logical, true));
    assert!(!l.matches_dest(0x0001_0020, DestMode::Logical, true));
    assert!(l.matches_dest(5, DestMode::Physical, true));
}

#[test]
fn apic_base_transitions() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    assert_eq!(
        l.set_apic_base(0xfee0_0900 | 1),
        Err(LapicError::GeneralProtection)
    );
    assert_eq!(
        l.set_apic_base(0xfee0_0500),
        Err(LapicError::GeneralProtection)
    );
    // xAPIC → x2APIC.
    l.set_apic_base(0xfee0_0d00).unwrap();
    assert_eq!(l.mode(), ApicMode::X2Apic);
    assert_eq!(l.apic_base() & APIC_BASE_BSP, APIC_BASE_BSP);
    // x2APIC → xAPIC is invalid.
    assert!(l.set_apic_base(0xfee0_0900).is_err());
    // MMIO is dead in x2APIC mode.
    assert_eq!(l.read_mmio(0x30, 4, &c), 0xffff_ffff);
    // → disabled → xAPIC is fine; disabled → x2APIC is not.
    l.set_apic_base(0xfee0_0000).unwrap();
    assert_eq!(l.mode(), ApicMode::Disabled);
    assert!(l.set_apic_base(0xfee0_0c00).is_err());
    l.set_apic_base(0xfed0_0800).unwrap();
    assert_eq!(l.mmio_base(), 0xfed0_0000);
    let mut no_x2 = Lapic::new(LapicConfig {
        x2apic: false,
        ..LapicConfig::new(0, true)
    });
    assert!(no_x2.set_apic_base(0xfee0_0c00).is_err());
}

#[test]
fn x2apic_msrs() {
    let c = FakeClock::new(0);
    let mut l = Lapic::new(LapicConfig::new(0x123, true));
    assert!(
        l.read_msr(0x802, &c).is_err(),
        "x2APIC MSRs #GP in xAPIC mode"
    );
    l.set_apic_base(0xfee0_0d00).unwrap();
    assert_eq!(l.read_msr(0x802, &c), Ok(0x123));
    assert!(l.write_msr(0x802, 5, &c).is_err());
    assert_eq!(l.read_msr(0x803, &c), Ok(0x50014));
    assert!(l.read_msr(0x80e, &c).is_err(), "no DFR");
    assert!(l.read_msr(0x831, &c).is_err(), "no ICR high");
    assert!(l.read_msr(0x80b, &c).is_err(), "EOI write-only");
    assert!(l.read_msr(0x83f, &c).is_err());
    assert!(l.write_msr(0x80b, 1, &c).is_err(), "EOI must be 0");
    l.write_msr(0x80f, 0x1ff, &c).unwrap();
    assert!(l.write_msr(0x808, 0x100, &c).is_err());
    // 64-bit ICR.
    let e = l.write_msr(0x830, (0x456u64 << 32) | 0x40fd, &c).unwrap();
    let LapicEffect::Ipi(ipi) = e else { panic!() };
    assert_eq!((ipi.dest, ipi.vector, ipi.x2apic), (0x456, 0xfd, true));
    assert_eq!(l.read_msr(0x830, &c), Ok((0x456u64 << 32) | 0x40fd));
    // Self IPI.
    l.write_msr(0x83f, 0x55, &c).unwrap();
    assert_eq!(l.highest_pending(), Some(0x55));
    assert_eq!(l.read_msr(0x820 + 2, &c), Ok(1 << (0x55 - 64)));
    assert!(l.write_msr(0x828, 1, &c).is_err());
    l.write_msr(0x828, 0, &c).unwrap();
    assert!(l.write_msr(0x900, 0, &c).is_err());
}

/// Linux's `calibrate_APIC_clock` pattern: one-shot with divide 16
/// (`__setup_APIC_LVTT(0xffffffff, 0, 0)`), read TMCCT before and after
/// a known delay, derive the bus frequency.
#[test]
fn linux_timer_calibration() {
    let c = FakeClock::new(1_000);
    let mut l = Lapic::new(LapicConfig {
        timer_hz: 100_000_000,
        ..LapicConfig::new(0, true)
    });
    enable(&mut l, &c);
    w(&mut l, reg::TIMER_DIVIDE, 0x3, &c); // divide by 16
    w(&mut l, reg::LVT_TIMER, LVT_MASKED | 0xec, &c);
    w(&mut l, reg::TIMER_INITIAL, 0xffff_ffff, &c);
    let t0 = r(&mut l, reg::TIMER_CURRENT, &c);
    assert_eq!(t0, 0xffff_ffff);
    c.advance(100_000_000); // 100 ms
    let t1 = r(&mut l, reg::TIMER_CURRENT, &c);
    let delta = u64::from(t0 - t1);
    // 100 MHz / 16 for 0.1 s
    assert_eq!(delta, 625_000);
    let bus_hz = delta * 16 * 10;
    assert_eq!(bus_hz, 100_000_000);
}

#[test]
fn one_shot_and_periodic_timer() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    enable(&mut l, &c);
    w(&mut l, reg::TIMER_DIVIDE, 0xb, &c); // divide by 1
    w(&mut l, reg::LVT_TIMER, 0xef, &c);
    w(&mut l, reg::TIMER_INITIAL, 1000, &c);
    assert_eq!(l.next_timer_deadline_ns(), Some(1000));
    c.set(400);
    assert_eq!(r(&mut l, reg::TIMER_CURRENT, &c), 600);
    assert!(!l.tick(999));
    assert!(l.tick(1000));
    assert_eq!(l.highest_pending(), Some(0xef));
    assert_eq!(l.next_timer_deadline_ns(), None);
    c.set(5000);
    assert_eq!(r(&mut l, reg::TIMER_CURRENT, &c), 0);
    // Periodic, divide by 2: 50,000 ticks = 100,000 ns.
    w(&mut l, reg::TIMER_DIVIDE, 0x0, &c);
    w(&mut l, reg::LVT_TIMER, 0x200ef, &c);
    w(&mut l, reg::TIMER_INITIAL, 50_000, &c);
    assert_eq!(l.next_timer_deadline_ns(), Some(105_000));
    assert!(l.tick(105_000));
    assert_eq!(l.next_timer_deadline_ns(), Some(205_000));
    // Missing several periods coalesces.
    assert!(l.tick(555_000));
    assert_eq!(l.next_timer_deadline_ns(), Some(605_000));
    c.set(580_000);
    assert_eq!(r(&mut l, reg::TIMER_CURRENT, &c), 50_000 - 37_500);
    // Masked: fires but no IRR.
    l.ack(0xef);
    l.eoi();
    w(&mut l, reg::LVT_TIMER, 0x300ef, &c);
    assert!(l.tick(605_000));
    assert!(!l.irr_bit(0xef));
    // Writing 0 stops it.
    w(&mut l, reg::TIMER_INITIAL, 0, &c);
    assert_eq!(l.next_timer_deadline_ns(), None);
    // A periodic count of 1 fires no faster than MIN_PERIODIC_NS (else
    // the vCPU would exit for it at every entry and never run).
    c.set(1_000_000);
    w(&mut l, reg::TIMER_INITIAL, 1, &c);
    assert_eq!(l.next_timer_deadline_ns(), Some(1_000_000 + crate::lapic::MIN_PERIODIC_NS));
    assert!(l.tick(1_000_000 + crate::lapic::MIN_PERIODIC_NS + 5));
    assert_eq!(l.next_timer_deadline_ns(), Some(1_000_000 + 2 * crate::lapic::MIN_PERIODIC_NS));
}

#[test]
fn tsc_deadline_timer() {
    let c = FakeClock::new(0);
    let mut l = Lapic::new(LapicConfig {
        tsc_hz: 2_000_000_000,
        ..LapicConfig::new(0, true)
    });
    enable(&mut l, &c);
    // Ignored outside TSC-deadline mode.
    l.write_msr(MSR_TSC_DEADLINE, 1000, &c).unwrap();
    assert_eq!(l.read_msr(MSR_TSC_DEADLINE, &c), Ok(0));
    w(&mut l, reg::LVT_TIMER, 0x400ec, &c);
    // Initial count is ignored in this mode.
    w(&mut l, reg::TIMER_INITIAL, 50, &c);
    assert_eq!(r(&mut l, reg::TIMER_INITIAL, &c), 0);
    l.write_msr(MSR_TSC_DEADLINE, 4000, &c).unwrap();
    assert_eq!(l.next_timer_deadline_ns(), Some(2000));
    assert_eq!(l.read_msr(MSR_TSC_DEADLINE, &c), Ok(4000));
    assert!(l.tick(2000));
    assert_eq!(l.read_msr(MSR_TSC_DEADLINE, &c), Ok(0));
    assert_eq!(l.highest_pending(), Some(0xec));
    // Disarm with 0; mode switch disarms.
    l.write_msr(MSR_TSC_DEADLINE, 8000, &c).unwrap();
    l.write_msr(MSR_TSC_DEADLINE, 0, &c).unwrap();
    assert_eq!(l.next_timer_deadline_ns(), None);
    l.write_msr(MSR_TSC_DEADLINE, 8000, &c).unwrap();
    w(&mut l, reg::LVT_TIMER, 0xec, &c);
    assert_eq!(l.next_timer_deadline_ns(), None);
}

#[test]
fn fuzz_no_panic_and_invariants() {
    let c = FakeClock::new(0);
    let mut rng = Rng::new(0xa91c);
    let mut l = bsp();
    for step in 0..30_000u32 {
        c.advance(rng.below(5000));
        let size = [1u8, 2, 4, 8, 3][rng.below(5) as usize];
        match rng.below(12) {
            0..=2 => {
                let off = if rng.chance(80) {
                    rng.below(0x40) << 4
                } else {
                    rng.next()
                };
                let _ = l.read_mmio(off, size, &c);
            }
            3..=5 => {
                let off = if rng.chance(80) {
                    rng.below(0x40) << 4
                } else {
                    rng.next()
                };
                let _ = l.write_mmio(off, size, rng.next(), &c);
            }
            6 => {
                let msr = if rng.chance(80) {
                    0x800 + rng.below(0x100) as u32
                } else {
                    rng.next() as u32
                };
                let _ = l.read_msr(msr, &c);
            }
            7 => {
                let msr = if rng.chance(80) {
                    0x800 + rng.below(0x100) as u32
                } else {
                    0x6e0
                };
                let v = if rng.chance(50) {
                    rng.next() & 0xffff_ffff
                } else {
                    rng.next()
                };
                let _ = l.write_msr(msr, v, &c);
            }
            8 => {
                let v = if rng.chance(70) {
                    0xfee0_0000 | (rng.below(4) << 10)
                } else {
                    rng.next()
                };
                let _ = l.set_apic_base(v);
            }
            9 => {
                l.accept(rng.u8(), rng.chance(50));
            }
            10 => {
                if let Some(v) = l.highest_pending() {
                    assert!(v >> 4 > l.ppr() >> 4);
                    l.ack(v);
                    assert!(l.isr_bit(v));
                }
            }
            _ => {
                if step % 7 == 0 {
                    l.receive_init();
                }
                let _ = l.receive_sipi(rng.u8());
                let _ = l.eoi();
            }
        }
        l.tick(c.now_ns());
        if let Some(d) = l.next_timer_deadline_ns() {
            // A periodic timer's deadline is always in the future after tick.
            if l.timer_mode() == TimerMode::Periodic {
                assert!(d > c.now_ns() || l.timer_initial == 0);
            }
        }
        assert_eq!(l.svr & !0x3ff, 0);
        for v in 0..16u8 {
            assert!(!l.irr_bit(v), "illegal vector {v} in IRR");
        }
    }
}

/// An AP with `id`, software-enabled, in xAPIC mode.
fn ap(id: u32, c: &FakeClock) -> Lapic {
    let mut l = Lapic::new(LapicConfig::new(id, false));
    enable(&mut l, c);
    l
}

#[test]
fn flat_logical_destinations() {
    let c = FakeClock::new(0);
    let mut l = ap(1, &c);
    // Reset: LDR 0, flat model. Only the all-ones MDA reaches it.
    assert_eq!(r(&mut l, reg::LDR, &c), 0);
    assert!(!l.matches_dest(0x01, DestMode::Logical, false));
    assert!(l.matches_dest(0xff, DestMode::Logical, false));
    w(&mut l, reg::LDR, 0x0200_0000, &c);
    // Only bits 31:24 are writable.
    w(&mut l, reg::LDR, 0x0200_ffff, &c);
    assert_eq!(r(&mut l, reg::LDR, &c), 0x0200_0000);
    for (mda, hit) in [
        (0x02, true),
        (0x06, true),
        (0xfe, true),
        (0x01, false),
        (0x04, false),
        (0, false),
    ] {
        assert_eq!(
            l.matches_dest(mda, DestMode::Logical, false),
            hit,
            "MDA {mda:#x}"
        );
    }
    // The ICR's 8-bit destination is what counts.
    assert!(l.matches_dest(0x102, DestMode::Logical, false));
    // Not the physical ID.
    assert!(!l.matches_dest(0x01, DestMode::Logical, false));
    assert!(l.matches_dest(0x01, DestMode::Physical, false));
}

#[test]
fn cluster_logical_destinations() {
    let c = FakeClock::new(0);
    let mut l = ap(2, &c);
    // DFR: only bits 31:28 are writable, the rest read as ones.
    w(&mut l, reg::DFR, 0, &c);
    assert_eq!(r(&mut l, reg::DFR, &c), 0x0fff_ffff);
    w(&mut l, reg::LDR, 0x2100_0000, &c); // cluster 2, member bit 0
    for (mda, hit) in [
        (0x21, true),
        (0x23, true),
        (0x2f, true),
        (0x22, false),
        (0x11, false),
        (0x31, false),
        (0x01, false),
        (0xff, true),
    ] {
        assert_eq!(
            l.matches_dest(mda, DestMode::Logical, false),
            hit,
            "MDA {mda:#x}"
        );
    }
    // Back to flat: the same LDR is now a bitmap (bits 0 and 5).
    w(&mut l, reg::DFR, 0xffff_ffff, &c);
    assert!(l.matches_dest(0x01, DestMode::Logical, false));
    assert!(l.matches_dest(0x20, DestMode::Logical, false));
    assert!(!l.matches_dest(0x02, DestMode::Logical, false));
}

#[test]
fn x2apic_logical_destinations() {
    let c = FakeClock::new(0);
    let mut l = Lapic::new(LapicConfig::new(0x23, false));
    l.set_apic_base(0xfee0_0c00).unwrap();
    l.write_msr(0x80f, 0x1ff, &c).unwrap();
    // LDR = cluster (id >> 4) << 16 | 1 << (id & 15), read-only.
    assert_eq!(l.read_msr(0x80d, &c), Ok(0x0002_0008));
    assert!(l.write_msr(0x80d, 0x0002_0008, &c).is_err());
    assert!(l.read_msr(0x80e, &c).is_err(), "no DFR in x2APIC mode");
    for (mda, hit) in [
        (0x0002_0008, true),
        (0x0002_000c, true),
        (0x0002_ffff, true),
        (0x0002_0004, false),
        (0x0001_0008, false),
        (0x0000_0008, false),
        (0xffff_ffff, true),
    ] {
        assert_eq!(
            l.matches_dest(mda, DestMode::Logical, true),
            hit,
            "MDA {mda:#x}"
        );
    }
    // An xAPIC-format (8-bit) message: all ones is still the broadcast.
    assert!(l.matches_dest(0xff, DestMode::Logical, false));
    assert!(!l.matches_dest(0x08, DestMode::Logical, false));
    // INIT keeps the derived LDR.
    l.receive_init();
    assert_eq!(l.read_msr(0x80d, &c), Ok(0x0002_0008));
}

#[test]
fn disabled_apics_are_off_the_bus() {
    let c = FakeClock::new(0);
    let mut l = ap(1, &c);
    w(&mut l, reg::LDR, 0xff00_0000, &c);
    assert!(l.on_bus());
    l.set_apic_base(0xfee0_0000).unwrap();
    assert!(!l.on_bus());
    for (dest, mode) in [
        (1, DestMode::Physical),
        (0xff, DestMode::Physical),
        (0xff, DestMode::Logical),
        (1, DestMode::Logical),
    ] {
        assert!(!l.matches_dest(dest, mode, false));
    }
}

#[test]
fn lowest_priority_picks_one_enabled_apic() {
    let c = FakeClock::new(0);
    let mut a = ap(1, &c);
    let mut b = ap(2, &c);
    let mut off = Lapic::new(LapicConfig::new(3, false)); // software-disabled
    assert_eq!(
        lowest_priority([(1, &a), (2, &b)]),
        Some(1),
        "ties go to the lowest index"
    );
    w(&mut a, reg::TPR, 0x40, &c);
    assert_eq!(
        lowest_priority([(1, &a), (2, &b)]),
        Some(2),
        "the lower task priority wins"
    );
    // An in-service interrupt raises the processor priority too.
    assert!(b.accept(0x80, false));
    b.ack(0x80);
    assert_eq!(lowest_priority([(1, &a), (2, &b)]), Some(1));
    assert_eq!(
        lowest_priority([(3, &off)]),
        None,
        "a software-disabled APIC takes none"
    );
    assert_eq!(lowest_priority([(3, &off), (2, &b)]), Some(2));
    off.set_apic_base(0xfee0_0000).unwrap();
    enable(&mut off, &c); // MMIO is off while disabled: still disabled
    assert_eq!(lowest_priority([(3, &off)]), None);
    assert_eq!(lowest_priority(core::iter::empty()), None);
}

#[test]
fn lint1_nmi_follows_the_lvt() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    // Reset: software-disabled, LINT1 masked.
    assert_eq!(l.signal_lint1(), Lint1Delivery::Dropped);
    enable(&mut l, &c);
    assert_eq!(l.signal_lint1(), Lint1Delivery::Dropped, "masked");
    w(&mut l, reg::LVT_LINT1, 0x400, &c); // NMI
    assert_eq!(l.signal_lint1(), Lint1Delivery::Nmi);
    assert_eq!(l.highest_pending(), None);
    w(&mut l, reg::LVT_LINT1, 0x10400, &c);
    assert_eq!(l.signal_lint1(), Lint1Delivery::Dropped, "NMI but masked");
    w(&mut l, reg::LVT_LINT1, 0x52, &c); // Fixed, vector 0x52
    assert_eq!(l.signal_lint1(), Lint1Delivery::Interrupt);
    assert_eq!(l.highest_pending(), Some(0x52));
    assert!(!bit_test(&l.tmr, 0x52), "edge-triggered");
    for mode in [2u32, 5, 7] {
        // SMI, INIT, ExtINT: nothing.
        w(&mut l, reg::LVT_LINT1, mode << 8, &c);
        assert_eq!(l.signal_lint1(), Lint1Delivery::Dropped, "mode {mode}");
    }
    // Software-disabling the APIC masks LINT1.
    w(&mut l, reg::LVT_LINT1, 0x400, &c);
    w(&mut l, reg::SVR, 0xff, &c);
    assert_eq!(l.signal_lint1(), Lint1Delivery::Dropped);
    // Hardware-disabled: the pin is the core's NMI input.
    l.set_apic_base(0xfee0_0000).unwrap();
    assert_eq!(l.signal_lint1(), Lint1Delivery::Nmi);
}

#[test]
fn apic_base_enable_cycle_resets_the_apic() {
    let c = FakeClock::new(0);
    let mut l = ap(5, &c);
    w(&mut l, reg::TPR, 0x20, &c);
    w(&mut l, reg::LDR, 0x0400_0000, &c);
    w(&mut l, reg::DFR, 0x0fff_ffff, &c);
    w(&mut l, reg::LVT_LINT1, 0x400, &c);
    w(&mut l, reg::LVT_TIMER, 0x20040, &c);
    w(&mut l, reg::TIMER_INITIAL, 1000, &c);
    assert!(l.accept(0x60, false));
    assert!(l.next_timer_deadline_ns().is_some());
    // EN 1 -> 0: off, and reset (SDM 10.4.3: "may return to the state
    // after power-up"); the timer stops, nothing is accepted.
    l.set_apic_base(0xfee0_0000).unwrap();
    assert_eq!(l.mode(), ApicMode::Disabled);
    assert!(!l.mmio_enabled());
    assert_eq!(l.read_mmio(u64::from(reg::ID), 4, &c), 0xffff_ffff);
    assert!(l.read_msr(0x802, &c).is_err());
    assert_eq!(l.highest_pending(), None);
    assert_eq!(l.next_timer_deadline_ns(), None);
    assert!(!l.accept(0x61, false));
    assert!(!l.tick(10_000));
    // Disabled -> x2APIC is illegal; EXTD without EN too.
    assert!(l.set_apic_base(0xfee0_0c00).is_err());
    assert!(l.set_apic_base(0xfee0_0400).is_err());
    // EN 0 -> 1: the reset state, with its ID.
    l.set_apic_base(0xfee0_0800).unwrap();
    assert_eq!(l.mode(), ApicMode::XApic);
    assert_eq!(r(&mut l, reg::ID, &c), 5 << 24);
    assert_eq!(r(&mut l, reg::SVR, &c), 0xff);
    assert_eq!(r(&mut l, reg::TPR, &c), 0);
    assert_eq!(r(&mut l, reg::LDR, &c), 0);
    assert_eq!(r(&mut l, reg::DFR, &c), 0xffff_ffff);
    for lvt in [
        reg::LVT_TIMER,
        reg::LVT_LINT0,
        reg::LVT_LINT1,
        reg::LVT_ERROR,
    ] {
        assert_eq!(r(&mut l, lvt, &c), LVT_MASKED, "LVT {lvt:#x}");
    }
    assert_eq!(r(&mut l, reg::IRR + 0x30, &c), 0, "IRR cleared");
    assert_eq!(r(&mut l, reg::TIMER_INITIAL, &c), 0);
    assert!(!l.accept(0x61, false), "software-disabled until SVR is set");
}

#[test]
fn x2apic_disable_then_xapic() {
    let c = FakeClock::new(0);
    let mut l = ap(0x11, &c);
    l.set_apic_base(0xfee0_0c00).unwrap();
    assert_eq!(l.read_msr(0x80d, &c), Ok(0x0001_0002));
    l.write_msr(0x808, 0x30, &c).unwrap();
    // x2APIC -> xAPIC directly: #GP, nothing changes.
    assert!(l.set_apic_base(0xfee0_0800).is_err());
    assert_eq!(l.mode(), ApicMode::X2Apic);
    assert_eq!(l.read_msr(0x808, &c), Ok(0x30));
    // x2APIC -> disabled -> xAPIC.
    l.set_apic_base(0xfee0_0000).unwrap();
    l.set_apic_base(0xfee0_0800).unwrap();
    assert_eq!(r(&mut l, reg::ID, &c), 0x11 << 24);
    assert_eq!(r(&mut l, reg::LDR, &c), 0, "the x2APIC LDR is gone");
    assert_eq!(r(&mut l, reg::TPR, &c), 0);
    assert!(l.read_msr(0x808, &c).is_err());
}

#[test]
fn cr8_is_the_task_priority() {
    let c = FakeClock::new(0);
    let mut l = bsp();
    enable(&mut l, &c);
    w(&mut l, reg::TPR, 0x5a, &c);
    assert_eq!(l.cr8(), 5);
    l.write_cr8(3).unwrap();
    assert_eq!(r(&mut l, reg::TPR, &c), 0x30, "CR8 clears TPR bits 3:0");
    assert_eq!(l.write_cr8(0x10), Err(LapicError::GeneralProtection));
    assert_eq!(l.cr8(), 3);
    // Held back by the TPR, and released by lowering CR8.
    assert!(!l.tpr_holds_back());
    l.write_cr8(0xf).unwrap();
    assert!(l.accept(0x50, false));
    assert_eq!(l.highest_pending(), None);
    assert!(l.tpr_holds_back());
    l.write_cr8(5).unwrap();
    assert!(l.tpr_holds_back(), "class 5 is not above TPR class 5");
    l.write_cr8(4).unwrap();
    assert!(!l.tpr_holds_back());
    assert_eq!(l.highest_pending(), Some(0x50));
}
