//! I/O APIC, 24 pins, version 0x11 (no EOI register).
//!
//! MMIO at the base from the MADT (0xFEC00000): IOREGSEL at offset 0x00,
//! IOWIN at 0x10. Indirect registers: 0x00 ID, 0x01 version
//! (0x00170011), 0x02 arbitration ID, 0x10 + 2·pin (+1) the redirection
//! table entries.
//!
//! Input lines are *logical* levels: `set_irq(pin, true)` means "the device
//! asserts its interrupt", whatever the entry's polarity bit says (the
//! polarity is stored and read back for the guest but does not invert the
//! input, as in QEMU/KVM). Edge-triggered pins deliver on a rising edge;
//! an edge that arrives while the pin is masked is lost, as on hardware.
//! Level-triggered pins deliver while asserted, set Remote IRR, and deliver
//! again only after the EOI for their vector ([`IoApic::eoi`]).
//!
//! Deliveries are returned to the caller, which routes them to LAPICs
//! (`Lapic::matches_dest`, `Lapic::accept`).

use crate::lapic::{DeliveryMode, DestMode};
use alloc::vec::Vec;

pub const NUM_PINS: usize = 24;
pub const IOREGSEL: u64 = 0x00;
pub const IOWIN: u64 = 0x10;
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

pub const REG_ID: u8 = 0x00;
pub const REG_VERSION: u8 = 0x01;
pub const REG_ARB: u8 = 0x02;
pub const REG_REDIR_BASE: u8 = 0x10;

pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
pub const RTE_POLARITY_LOW: u64 = 1 << 13;
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
pub const RTE_LEVEL: u64 = 1 << 15;
pub const RTE_MASKED: u64 = 1 << 16;
/// Bits the guest can write: vector, delivery mode, destination mode,
/// polarity, trigger mode, mask, destination (bits 56–63).
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// An interrupt message for the LAPICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub pin: u8,
    pub vector: u8,
    /// 8-bit destination (APIC ID or logical mask).
    pub dest: u8,
    pub dest_mode: DestMode,
    pub delivery_mode: DeliveryMode,
    pub level_triggered: bool,
}

#[derive(Clone, Debug)]
pub struct IoApic {
    id: u8,
    ioregsel: u8,
    redir: [u64; NUM_PINS],
    /// Current logical level of each input line.
    lines: u32,
}

impl IoApic {
    /// An I/O APIC with this ID (bits 24–27 of the ID register) and every
    /// pin masked.
    pub fn new(id: u8) -> Self {
        IoApic {
            id: id & 0x0f,
            ioregsel: 0,
            redir: [RTE_MASKED; NUM_PINS],
            lines: 0,
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// The redirection entry of `pin` (0 for a pin that does not exist).
    pub fn entry(&self, pin: u8) -> u64 {
        self.redir.get(usize::from(pin)).copied().unwrap_or(0)
    }

    /// The current input level of `pin`.
    pub fn line(&self, pin: u8) -> bool {
        usize::from(pin) < NUM_PINS && self.lines & (1 << pin) != 0
    }

    fn delivery(&self, pin: usize) -> Delivery {
        let e = self.redir[pin];
        Delivery {
            pin: pin as u8,
            vector: (e & 0xff) as u8,
            dest: (e >> 56) as u8,
            dest_mode: if e & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            delivery_mode: DeliveryMode::from_bits((e >> 8) as u32),
            level_triggered: e & RTE_LEVEL != 0,
        }
    }

    /// Deliver a level-triggered pin if it is asserted, unmasked and not
    /// waiting for an EOI.
    fn service_level(&mut self, pin: usize) -> Option<Delivery> {
        let e = self.redir[pin];
        if e & RTE_LEVEL == 0
            || e & RTE_MASKED != 0
            || e & RTE_REMOTE_IRR != 0
            || self.lines & (1 << pin) == 0
        {
            return None;
        }
        let d = self.delivery(pin);
        // Remote IRR means "a LAPIC accepted it and owes an EOI"; only
        // fixed/lowest-priority messages are EOIed.
        if matches!(
            d.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        ) {
            self.redir[pin] |= RTE_REMOTE_IRR;
        }
        Some(d)
    }

    /// Drive input `pin` to `level`. Returns the interrupt message to
    /// deliver, if this changes anything. Pins ≥ 24 are ignored.
    pub fn set_irq(&mut self, pin: u8, level: bool) -> Option<Delivery> {
        let p = usize::from(pin);
        if p >= NUM_PINS {
            return None;
        }
        let bit = 1u32 << p;
        let old = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let e = self.redir[p];
        if e & RTE_LEVEL != 0 {
            self.service_level(p)
        } else if level && !old && e & RTE_MASKED == 0 {
            Some(self.delivery(p))
        } else {
            None
        }
    }

    /// A LAPIC broadcast the EOI of a level-triggered `vector`: clear
    /// Remote IRR of every level-triggered pin with that vector, and
    /// re-deliver the ones whose line is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<Delivery> {
        let mut out = Vec::new();
        for pin in 0..NUM_PINS {
            let e = self.redir[pin];
            if e & 0xff == u64::from(vector) && e & RTE_REMOTE_IRR != 0 {
                self.redir[pin] &= !RTE_REMOTE_IRR;
                if let Some(d) = self.service_level(pin) {
                    out.push(d);
                }
            }
        }
        out
    }

    fn read_indirect(&self) -> u32 {
        match self.ioregsel {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => IOAPIC_VERSION,
            REG_ARB => u32::from(self.id) << 24,
            sel @ 0x10..=0x3f => {
                let e = self.redir[usize::from((sel - REG_REDIR_BASE) / 2)];
                if sel & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0xffff_ffff,
        }
    }

    fn write_indirect(&mut self, value: u32) -> Option<Delivery> {
        match self.ioregsel {
            REG_ID => {
                self.id = ((value >> 24) & 0x0f) as u8;
                None
            }
            sel @ 0x10..=0x3f => {
                let pin = usize::from((sel - REG_REDIR_BASE) / 2);
                let old = self.redir[pin];
                let new = if sel & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut e = (new & RTE_WRITABLE) | (old & (RTE_REMOTE_IRR | RTE_DELIVERY_STATUS));
                if e & RTE_LEVEL == 0 {
                    // Remote IRR is meaningless for edge-triggered pins.
                    e &= !RTE_REMOTE_IRR;
                }
                self.redir[pin] = e;
                // Unmasking (or switching to level) an asserted level pin
                // delivers it now.
                self.service_level(pin)
            }
            _ => None, // version, arbitration and unused indices: read-only
        }
    }

    /// A guest read at `offset` from the I/O APIC base with an access of
    /// `size` bytes. IOREGSEL and IOWIN read as 32-bit registers (narrower
    /// reads get the low bytes); everything else reads as 0.
    pub fn read_mmio(&mut self, offset: u64, size: u8) -> u64 {
        let v = match offset {
            IOREGSEL => u32::from(self.ioregsel),
            IOWIN => self.read_indirect(),
            _ => 0,
        };
        let mask: u64 = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        };
        u64::from(v) & mask
    }

    /// A guest write at `offset`. IOREGSEL takes its low 8 bits from any
    /// access size; IOWIN writes need 4 bytes or more (narrower writes
    /// are ignored). Returns an interrupt to deliver when the write
    /// unmasked an asserted level-triggered pin.
    pub fn write_mmio(&mut self, offset: u64, size: u8, value: u64) -> Option<Delivery> {
        match offset {
            IOREGSEL => {
                self.ioregsel = value as u8;
                None
            }
            IOWIN if size >= 4 => self.write_indirect(value as u32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn write_rte(io: &mut IoApic, pin: u8, value: u64) -> Option<Delivery> {
        io.write_mmio(IOREGSEL, 4, u64::from(0x10 + 2 * pin + 1));
        io.write_mmio(IOWIN, 4, value >> 32);
        io.write_mmio(IOREGSEL, 4, u64::from(0x10 + 2 * pin));
        io.write_mmio(IOWIN, 4, value & 0xffff_ffff)
    }

    fn read_reg(io: &mut IoApic, reg: u8) -> u32 {
        io.write_mmio(IOREGSEL, 1, u64::from(reg));
        io.read_mmio(IOWIN, 4) as u32
    }

    #[test]
    fn identification() {
        let mut io = IoApic::new(2);
        assert_eq!(read_reg(&mut io, REG_ID), 2 << 24);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!((read_reg(&mut io, REG_VERSION) >> 16) & 0xff, 23);
        assert_eq!(read_reg(&mut io, REG_ARB), 2 << 24);
        io.write_mmio(IOREGSEL, 1, 0);
        io.write_mmio(IOWIN, 4, 0x0500_0000);
        assert_eq!(read_reg(&mut io, REG_ID), 5 << 24);
        assert_eq!(io.read_mmio(IOREGSEL, 4), 0);
        // Version is read-only; unused indices read as ones.
        io.write_mmio(IOREGSEL, 1, 1);
        io.write_mmio(IOWIN, 4, 0);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, 0x40), 0xffff_ffff);
        for pin in 0..24 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), RTE_MASKED as u32);
        }
    }

    #[test]
    fn edge_triggered_pin() {
        let mut io = IoApic::new(0);
        assert_eq!(io.set_irq(2, true), None, "masked at reset");
        io.set_irq(2, false);
        write_rte(&mut io, 2, (1 << 56) | 0x30);
        let d = io.set_irq(2, true).unwrap();
        assert_eq!(
            d,
            Delivery {
                pin: 2,
                vector: 0x30,
                dest: 1,
                dest_mode: DestMode::Physical,
                delivery_mode: DeliveryMode::Fixed,
                level_triggered: false
            }
        );
        assert_eq!(io.set_irq(2, true), None, "no edge");
        io.set_irq(2, false);
        assert!(io.set_irq(2, true).is_some());
        // Read-only bits cannot be written.
        write_rte(&mut io, 2, RTE_REMOTE_IRR | RTE_DELIVERY_STATUS | 0x30);
        assert_eq!(io.entry(2), 0x30);
    }

    /// Linux's level-triggered flow (e.g. the ACPI SCI on pin 9): the
    /// device asserts, the guest handles it with the pin masked or not,
    /// EOIs, and the line re-fires only while still asserted.
    #[test]
    fn level_triggered_remote_irr() {
        let mut io = IoApic::new(0);
        let rte = RTE_LEVEL | RTE_MASKED | 0x49;
        write_rte(&mut io, 9, rte);
        assert_eq!(io.set_irq(9, true), None);
        // Unmask while asserted: delivered at once.
        let d = write_rte(&mut io, 9, rte & !RTE_MASKED).unwrap();
        assert!(d.level_triggered);
        assert_eq!(d.vector, 0x49);
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        assert_eq!(read_reg(&mut io, 0x10 + 18) & (1 << 14), 1 << 14);
        // Still asserted, Remote IRR set: no new message.
        assert_eq!(io.set_irq(9, true), None);
        // Linux masks, EOIs (EOI broadcast from the LAPIC), unmasks.
        write_rte(&mut io, 9, rte);
        assert!(io.eoi(0x49).is_empty(), "masked: no redelivery");
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        let d = write_rte(&mut io, 9, rte & !RTE_MASKED);
        assert!(d.is_some(), "still asserted: delivered on unmask");
        // The device deasserts before the EOI: nothing more.
        io.set_irq(9, false);
        assert!(io.eoi(0x49).is_empty());
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        // Assert again; EOI while asserted redelivers.
        assert!(io.set_irq(9, true).is_some());
        let again = io.eoi(0x49);
        assert_eq!(again.len(), 1);
        // EOI of an unrelated vector does nothing.
        assert!(io.eoi(0x50).is_empty());
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        // Switching to edge clears Remote IRR.
        write_rte(&mut io, 9, 0x49);
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn logical_and_other_modes() {
        let mut io = IoApic::new(0);
        write_rte(&mut io, 4, (0x03 << 56) | (1 << 11) | (1 << 8) | 0x34);
        let d = io.set_irq(4, true).unwrap();
        assert_eq!(d.dest_mode, DestMode::Logical);
        assert_eq!(d.delivery_mode, DeliveryMode::LowestPriority);
        assert_eq!(d.dest, 3);
        // Level NMI does not set Remote IRR.
        write_rte(&mut io, 5, RTE_LEVEL | (4 << 8) | 0x02);
        let d = io.set_irq(5, true).unwrap();
        assert_eq!(d.delivery_mode, DeliveryMode::Nmi);
        assert_eq!(io.entry(5) & RTE_REMOTE_IRR, 0);
        assert_eq!(io.set_irq(24, true), None);
        assert_eq!(io.set_irq(255, true), None);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let mut rng = Rng::new(0x10a9);
        let mut io = IoApic::new(0);
        for _ in 0..30_000 {
            let size = [1u8, 2, 4, 8, 0][rng.below(5) as usize];
            match rng.below(6) {
                0 => {
                    let off = if rng.chance(80) {
                        rng.below(2) * 0x10
                    } else {
                        rng.next()
                    };
                    let _ = io.read_mmio(off, size);
                }
                1 | 2 => {
                    let off = if rng.chance(80) {
                        rng.below(2) * 0x10
                    } else {
                        rng.next()
                    };
                    let v = if rng.chance(50) {
                        rng.below(0x40)
                    } else {
                        rng.next()
                    };
                    let _ = io.write_mmio(off, size, v);
                }
                3 | 4 => {
                    let pin = rng.below(30) as u8;
                    if let Some(d) = io.set_irq(pin, rng.chance(50)) {
                        assert!(usize::from(d.pin) < NUM_PINS);
                        assert_eq!(io.entry(d.pin) & RTE_MASKED, 0);
                    }
                }
                _ => {
                    for d in io.eoi(rng.u8()) {
                        assert!(io.line(d.pin));
                    }
                }
            }
            for pin in 0..NUM_PINS as u8 {
                let e = io.entry(pin);
                assert_eq!(
                    e & !(RTE_WRITABLE | RTE_REMOTE_IRR | RTE_DELIVERY_STATUS),
                    0
                );
                if e & RTE_LEVEL == 0 {
                    assert_eq!(e & RTE_REMOTE_IRR, 0);
                }
            }
        }
    }
}
