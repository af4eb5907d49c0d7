//! Lays out a stub domain: its ELF image at `IMAGE_BASE`, its start-up
//! configuration at `START_INFO_GPA`, and identity page tables so it starts
//! directly in 64-bit mode (page 0 left unmapped to catch null pointers;
//! the served guest's RAM visible at `GUEST_WINDOW`).
//!
//! The page tables only give the stub *addresses*; what it may really
//! touch is decided by its nested page tables in the hypervisor.

use crate::elf::{self, ElfClass};
use crate::{GuestMemory, LoadError};
use ferrite_abi::{GUEST_WINDOW, GUEST_WINDOW_MAX, IMAGE_BASE, PAGE_TABLES_END, PAGE_TABLES_GPA, START_INFO_GPA, START_INFO_MAX, STUB_RAM_BYTES};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

/// Where a loaded stub starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubEntry {
    pub rip: u64,
    pub cr3: u64,
    /// First argument register: the start-info address.
    pub rdi: u64,
}

/// Loads the stub `image` with `config` (already encoded) for a guest whose
/// highest guest-physical RAM address is below `guest_top`.
pub fn load_stub(image: &[u8], config: &[u8], guest_top: u64, mem: &mut dyn GuestMemory) -> Result<StubEntry, LoadError> {
    let elf = elf::parse(image)?;
    if elf.class != ElfClass::Elf64 {
        return Err(LoadError::ElfUnsupported { what: "stub domain class (must be ELF64)", value: 1 });
    }
    for s in &elf.segments {
        if s.paddr < IMAGE_BASE || s.end() > STUB_RAM_BYTES {
            return Err(LoadError::OutsideRam { what: "stub domain segment", start: s.paddr, len: s.memsz });
        }
    }
    let in_image = elf.segments.iter().any(|s| elf.e_entry >= s.paddr && elf.e_entry < s.end());
    if !in_image {
        return Err(LoadError::EntryOutsideSegments { entry: elf.e_entry });
    }
    if config.len() as u64 + 4 > START_INFO_MAX {
        return Err(LoadError::NoSpace { what: "stub domain configuration", size: config.len() as u64 });
    }
    if guest_top > GUEST_WINDOW_MAX {
        return Err(LoadError::OutsideRam { what: "guest window of the stub domain", start: 0, len: guest_top });
    }
    let window_gib = guest_top.div_ceil(GIB);
    // PML4, PDPT and PD for the low GiB, a PT for the first 2 MiB, a PDPT
    // for the window and one PD per GiB of it.
    let pages = 5 + window_gib;
    if PAGE_TABLES_GPA + pages * 4096 > PAGE_TABLES_END {
        return Err(LoadError::NoSpace { what: "stub page tables (guest too large)", size: pages * 4096 });
    }

    elf::load_segments(&elf, image, mem)?;
    mem.write(START_INFO_GPA, &(config.len() as u32).to_le_bytes())?;
    mem.write(START_INFO_GPA + 4, config)?;

    let page = |i: u64| PAGE_TABLES_GPA + i * 4096;
    let (pml4, pdpt_low, pd_low, pt_low, pdpt_window) = (page(0), page(1), page(2), page(3), page(4));
    let mut entry = |table: u64, index: u64, value: u64| mem.write(table + index * 8, &value.to_le_bytes());
    entry(pml4, 0, pdpt_low | PRESENT | WRITABLE)?;
    entry(pml4, GUEST_WINDOW >> 39, pdpt_window | PRESENT | WRITABLE)?;
    entry(pdpt_low, 0, pd_low | PRESENT | WRITABLE)?;
    entry(pd_low, 0, pt_low | PRESENT | WRITABLE)?;
    for i in 1..512 {
        entry(pt_low, i, (i * 4096) | PRESENT | WRITABLE)?;
    }
    for i in 1..512 {
        entry(pd_low, i, (i * MIB2) | PRESENT | WRITABLE | HUGE)?;
    }
    for g in 0..window_gib {
        let pd = page(5 + g);
        entry(pdpt_window, g, pd | PRESENT | WRITABLE)?;
        for i in 0..512 {
            entry(pd, i, (GUEST_WINDOW + g * GIB + i * MIB2) | PRESENT | WRITABLE | HUGE)?;
        }
    }
    Ok(StubEntry { rip: elf.e_entry, cr3: pml4, rdi: START_INFO_GPA })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testimg::{build, Seg};
    use crate::VecMemory;

    fn read_u64(mem: &VecMemory, gpa: u64) -> u64 {
        u64::from_le_bytes(mem.read(gpa, 8).unwrap().try_into().unwrap())
    }

    /// Walks the 4-level tables like the CPU would.
    fn translate(mem: &VecMemory, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for level in (1..=4).rev() {
            let index = (va >> (12 + 9 * (level - 1))) & 511;
            let e = read_u64(mem, table + index * 8);
            if e & PRESENT == 0 {
                return None;
            }
            let addr = e & 0x000F_FFFF_FFFF_F000;
            if level == 2 && e & HUGE != 0 {
                return Some(addr + (va & (MIB2 - 1)));
            }
            if level == 1 {
                return Some(addr + (va & 0xFFF));
            }
            table = addr;
        }
        None
    }

    fn image() -> Vec<u8> {
        let mut img = build(true, &[Seg { paddr: IMAGE_BASE, data: vec![0x90; 64], memsz: 0x2000 }], &[]);
        img[24..32].copy_from_slice(&IMAGE_BASE.to_le_bytes());
        img
    }

    #[test]
    fn loads_image_config_and_identity_tables() {
        let mut mem = VecMemory::new(STUB_RAM_BYTES as usize);
        let e = load_stub(&image(), b"hello", 3 * GIB + 5, &mut mem).unwrap();
        assert_eq!(e.rdi, START_INFO_GPA);
        assert_eq!(mem.read(START_INFO_GPA, 9).unwrap(), b"\x05\0\0\0hello");
        assert_eq!(mem.read(IMAGE_BASE, 2).unwrap(), [0x90, 0x90]);
        assert_eq!(translate(&mem, e.cr3, 0), None, "page 0 stays unmapped");
        assert_eq!(translate(&mem, e.cr3, 0x1234), Some(0x1234));
        assert_eq!(translate(&mem, e.cr3, 0x40_0010), Some(0x40_0010));
        assert_eq!(translate(&mem, e.cr3, GUEST_WINDOW + 0xBFFF_F000), Some(GUEST_WINDOW + 0xBFFF_F000));
        assert_eq!(translate(&mem, e.cr3, GUEST_WINDOW + 3 * GIB + 8), Some(GUEST_WINDOW + 3 * GIB + 8));
        assert_eq!(translate(&mem, e.cr3, GUEST_WINDOW + 4 * GIB), None);
    }

    #[test]
    fn rejects_segments_outside_the_stub_and_huge_guests() {
        let mut mem = VecMemory::new(STUB_RAM_BYTES as usize);
        let low = build(true, &[Seg { paddr: 0x1000, data: vec![0; 16], memsz: 16 }], &[]);
        assert!(matches!(load_stub(&low, b"", GIB, &mut mem), Err(LoadError::OutsideRam { .. })));
        assert!(matches!(load_stub(&image(), b"", 1 << 40, &mut mem), Err(LoadError::OutsideRam { .. })));
        assert!(matches!(load_stub(&image(), b"", 300 * GIB, &mut mem), Err(LoadError::NoSpace { .. })));
        let big = vec![0u8; START_INFO_MAX as usize];
        assert!(matches!(load_stub(&image(), &big, GIB, &mut mem), Err(LoadError::NoSpace { .. })));
    }
}
