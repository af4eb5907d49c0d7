//! The guest physical memory map and its e820 description.
//!
//! Guest RAM of `n` bytes is placed as on a PC: RAM from 0 up to
//! `min(n, PCI_HOLE_START)`, and the rest, if any, from 4 GiB. The e820
//! then reports: RAM below 0xA0000, nothing for the VGA hole 0xA0000–
//! 0xEFFFF, the BIOS area 0xF0000–0xFFFFF reserved (it holds the RSDP),
//! RAM from 1 MiB, and the reserved ranges the layout adds (ACPI tables).

use crate::LoadError;
use alloc::vec::Vec;

/// Where low RAM ends when guest RAM is large; [PCI_HOLE_START, 4 GiB) is
/// the MMIO hole (PCI BARs, IOAPIC 0xFEC00000, LAPIC 0xFEE00000).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// End of conventional memory.
pub const LOW_RAM_END: u64 = 0xA_0000;
/// Start of the BIOS area (reported reserved).
pub const BIOS_AREA_START: u64 = 0xF_0000;
/// 1 MiB.
pub const ONE_MIB: u64 = 0x10_0000;

/// e820 / `hvm_memmap_table_entry` types (the same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
    Nvs = 4,
    Unusable = 5,
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Where guest RAM lives in guest-physical space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRamMap {
    /// Total RAM in bytes.
    pub total: u64,
    /// RAM is [0, low_end).
    pub low_end: u64,
    /// RAM above 4 GiB is [4 GiB, high_end); `high_end == FOUR_GIB` when
    /// there is none.
    pub high_end: u64,
}

impl GuestRamMap {
    /// The PC placement with the PCI hole at [`PCI_HOLE_START`].
    pub fn new(total: u64) -> Self {
        Self::with_hole(total, PCI_HOLE_START)
    }

    /// The PC placement with the PCI hole starting at `hole_start`
    /// (clamped to 4 GiB).
    pub fn with_hole(total: u64, hole_start: u64) -> Self {
        let hole_start = hole_start.min(FOUR_GIB);
        let low_end = total.min(hole_start);
        let high = total - low_end;
        Self {
            total,
            low_end,
            high_end: FOUR_GIB.saturating_add(high),
        }
    }

    /// Is [start, start+len) entirely backed by guest RAM?
    pub fn contains(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        end <= self.low_end || (start >= FOUR_GIB && end <= self.high_end)
    }

    /// The e820 of this map before any reserved ranges are added.
    pub fn base_e820(&self) -> E820Builder {
        let mut b = E820Builder::default();
        b.add(0, self.low_end.min(LOW_RAM_END), E820Type::Ram);
        if self.low_end > BIOS_AREA_START {
            b.add(
                BIOS_AREA_START,
                ONE_MIB - BIOS_AREA_START,
                E820Type::Reserved,
            );
        }
        if self.low_end > ONE_MIB {
            b.add(ONE_MIB, self.low_end - ONE_MIB, E820Type::Ram);
        }
        if self.high_end > FOUR_GIB {
            b.add(FOUR_GIB, self.high_end - FOUR_GIB, E820Type::Ram);
        }
        b
    }
}

/// Builds a sorted, non-overlapping e820: a later [`E820Builder::add`]
/// replaces whatever earlier entries it overlaps.
#[derive(Clone, Debug, Default)]
pub struct E820Builder {
    entries: Vec<E820Entry>,
}

impl E820Builder {
    /// Add [addr, addr+size) as `kind`, carving it out of existing entries.
    /// Empty or overflowing ranges are ignored.
    pub fn add(&mut self, addr: u64, size: u64, kind: E820Type) {
        let Some(end) = addr.checked_add(size) else {
            return;
        };
        if size == 0 {
            return;
        }
        let mut out = Vec::with_capacity(self.entries.len() + 2);
        for e in self.entries.drain(..) {
            if e.end() <= addr || e.addr >= end {
                out.push(e);
                continue;
            }
            if e.addr < addr {
                out.push(E820Entry {
                    addr: e.addr,
                    size: addr - e.addr,
                    kind: e.kind,
                });
            }
            if e.end() > end {
                out.push(E820Entry {
                    addr: end,
                    size: e.end() - end,
                    kind: e.kind,
                });
            }
        }
        out.push(E820Entry { addr, size, kind });
        out.sort_by_key(|e| e.addr);
        self.entries = out;
    }

    /// The entries, sorted, adjacent entries of one type merged.
    pub fn finish(&self) -> Vec<E820Entry> {
        let mut out: Vec<E820Entry> = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            if let Some(last) = out.last_mut() {
                if last.kind == e.kind && last.end() == e.addr {
                    last.size += e.size;
                    continue;
                }
            }
            out.push(*e);
        }
        out
    }
}

/// Check an e820 is sorted and free of overlaps.
pub fn validate(e820: &[E820Entry]) -> Result<(), LoadError> {
    for w in e820.windows(2) {
        if w[0].end() > w[1].addr {
            return Err(LoadError::Overlap {
                what: "e820 entry",
                start: w[1].addr,
                len: w[1].size,
                other: "e820 entry",
                other_start: w[0].addr,
                other_len: w[0].size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use E820Type::*;

    fn e(addr: u64, size: u64, kind: E820Type) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn small_guest() {
        let m = GuestRamMap::new(256 << 20);
        assert_eq!(m.low_end, 256 << 20);
        assert_eq!(m.high_end, FOUR_GIB);
        assert!(m.contains(0, 256 << 20));
        assert!(!m.contains(0, (256 << 20) + 1));
        assert!(!m.contains(u64::MAX, 2));
        let mut b = m.base_e820();
        b.add((256 << 20) - 0x10000, 0x10000, Acpi);
        let t = b.finish();
        assert_eq!(
            t,
            [
                e(0, 0xa0000, Ram),
                e(0xf0000, 0x10000, Reserved),
                e(ONE_MIB, (256 << 20) - 0x10000 - ONE_MIB, Ram),
                e((256 << 20) - 0x10000, 0x10000, Acpi),
            ]
        );
        validate(&t).unwrap();
    }

    #[test]
    fn large_guest_has_pci_hole() {
        let total = 6u64 << 30;
        let m = GuestRamMap::new(total);
        assert_eq!(m.low_end, PCI_HOLE_START);
        assert_eq!(m.high_end, FOUR_GIB + total - PCI_HOLE_START);
        assert!(!m.contains(PCI_HOLE_START, 1));
        assert!(m.contains(FOUR_GIB, 1 << 30));
        let t = m.base_e820().finish();
        assert_eq!(t.last().unwrap(), &e(FOUR_GIB, total - PCI_HOLE_START, Ram));
        let ram: u64 = t.iter().filter(|x| x.kind == Ram).map(|x| x.size).sum();
        // All RAM is reported except the VGA hole and BIOS area.
        assert_eq!(ram, total - (ONE_MIB - LOW_RAM_END));
        validate(&t).unwrap();
        assert!(t
            .iter()
            .all(|x| x.end() <= PCI_HOLE_START || x.addr >= FOUR_GIB));
    }

    #[test]
    fn carving_splits_entries() {
        let mut b = E820Builder::default();
        b.add(0, 0x10000, Ram);
        b.add(0x4000, 0x1000, Reserved);
        b.add(0x4800, 0x1000, Acpi);
        b.add(0, 0, Nvs);
        b.add(u64::MAX, 2, Nvs);
        let t = b.finish();
        assert_eq!(
            t,
            [
                e(0, 0x4000, Ram),
                e(0x4000, 0x800, Reserved),
                e(0x4800, 0x1000, Acpi),
                e(0x5800, 0xa800, Ram)
            ]
        );
        validate(&t).unwrap();
        assert!(validate(&[e(0, 0x2000, Ram), e(0x1000, 0x1000, Acpi)]).is_err());
    }
}
