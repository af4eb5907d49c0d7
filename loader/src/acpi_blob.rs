//! Guest ACPI tables as *relocatable* blobs, for firmware that places them
//! itself (SeaBIOS or OVMF executing QEMU's BIOS linker/loader script from
//! fw_cfg).
//!
//! [`build_relocatable`] produces the same tables as
//! [`crate::acpi::build_tables`], laid out as if the blob started at
//! address 0: every table pointer holds the *offset* of its target inside
//! the blob it points into. Alongside come the fixups a loader performs
//! once it knows where each blob went:
//!
//! * [`PointerFixup`]: add the base address of `target` to the
//!   little-endian integer of `size` bytes at `offset` in `file`;
//! * [`ChecksumFixup`]: subtract the 8-bit sum of `file[start..start+len]`
//!   from the byte at `offset` (which lies inside the range), so the range
//!   sums to zero again.
//!
//! All pointer fixups must be applied before the checksum fixups (the order
//! of [`RelocatableAcpi::pointers`] then [`RelocatableAcpi::checksums`]).
//! [`RelocatableAcpi::relocate`] does exactly that, for tests and for hosts
//! that place the blobs themselves.

use crate::acpi::{build_tables, PlatformLayout, RSDP_SIZE};
use crate::LoadError;
use alloc::vec::Vec;

/// The platform an HVM guest with a BIOS sees: dual 8259 PICs
/// (`PCAT_COMPAT` in the MADT) and an i8042; the FADT never claims
/// hardware-reduced ACPI (the builder does not set that flag).
pub const HVM_PLATFORM: PlatformLayout = PlatformLayout {
    pcat_compat: true,
    i8042: true,
    ..PlatformLayout::DEFAULT
};

/// Which of the two blobs a fixup refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobFile {
    /// All tables: FACS (first, 64-byte aligned at offset 0), DSDT, FADT,
    /// MADT, XSDT, RSDT.
    Tables,
    /// The RSDP (36 bytes, revision 2); firmware puts it in the F segment.
    Rsdp,
}

/// Add the base of `target` to the `size`-byte integer at `offset` of `file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerFixup {
    pub file: BlobFile,
    pub offset: u32,
    /// 4 or 8.
    pub size: u8,
    pub target: BlobFile,
}

/// Fix the checksum byte at `offset` so `file[start..start+len]` sums to 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChecksumFixup {
    pub file: BlobFile,
    pub offset: u32,
    pub start: u32,
    pub len: u32,
}

/// The tables and RSDP as relocatable blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelocatableAcpi {
    /// Contents of the tables blob (pointers hold blob offsets).
    pub tables: Vec<u8>,
    /// Contents of the RSDP blob (pointers hold offsets into `tables`).
    pub rsdp: [u8; RSDP_SIZE],
    /// Alignment the tables blob needs (the FACS is at offset 0 and must be
    /// 64-byte aligned).
    pub tables_align: u32,
    /// Alignment the RSDP needs (16, for the BIOS-area scan).
    pub rsdp_align: u32,
    pub pointers: Vec<PointerFixup>,
    pub checksums: Vec<ChecksumFixup>,
    /// Offsets of the tables inside `tables`.
    pub facs: u32,
    pub dsdt: u32,
    pub fadt: u32,
    pub madt: u32,
    pub xsdt: u32,
    pub rsdt: u32,
}

/// FADT field offsets holding pointers.
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const FADT_X_FIRMWARE_CTRL: u32 = 132;
const FADT_X_DSDT: u32 = 140;
const HEADER_SIZE: u32 = 36;
const SDT_CHECKSUM: u32 = 9;

fn table_len(tables: &[u8], at: u32) -> u32 {
    let o = at as usize;
    u32::from_le_bytes([tables[o + 4], tables[o + 5], tables[o + 6], tables[o + 7]])
}

/// Build the tables of [`crate::acpi::build_tables`] for `vcpus` vCPUs as
/// relocatable blobs with their fixups.
pub fn build_relocatable(p: &PlatformLayout, vcpus: u32) -> Result<RelocatableAcpi, LoadError> {
    let t = build_tables(0, p, vcpus)?;
    // With base 0 every "address" is an offset into the blob (< 4 GiB).
    let off = |gpa: u64| gpa as u32;
    let (facs, dsdt, fadt, madt, xsdt, rsdt) = (
        off(t.facs),
        off(t.dsdt),
        off(t.fadt),
        off(t.madt),
        off(t.xsdt),
        off(t.rsdt),
    );
    let tbl = |offset: u32, size: u8| PointerFixup {
        file: BlobFile::Tables,
        offset,
        size,
        target: BlobFile::Tables,
    };
    let mut pointers = alloc::vec![
        tbl(fadt + FADT_FIRMWARE_CTRL, 4),
        tbl(fadt + FADT_DSDT, 4),
        tbl(fadt + FADT_X_FIRMWARE_CTRL, 8),
        tbl(fadt + FADT_X_DSDT, 8),
    ];
    let xsdt_entries = (table_len(&t.bytes, xsdt) - HEADER_SIZE) / 8;
    for i in 0..xsdt_entries {
        pointers.push(tbl(xsdt + HEADER_SIZE + 8 * i, 8));
    }
    let rsdt_entries = (table_len(&t.bytes, rsdt) - HEADER_SIZE) / 4;
    for i in 0..rsdt_entries {
        pointers.push(tbl(rsdt + HEADER_SIZE + 4 * i, 4));
    }
    // RSDP: RsdtAddress at 16, XsdtAddress at 24.
    for (offset, size) in [(16u32, 4u8), (24, 8)] {
        pointers.push(PointerFixup {
            file: BlobFile::Rsdp,
            offset,
            size,
            target: BlobFile::Tables,
        });
    }
    let mut checksums = Vec::new();
    for at in [dsdt, fadt, madt, xsdt, rsdt] {
        checksums.push(ChecksumFixup {
            file: BlobFile::Tables,
            offset: at + SDT_CHECKSUM,
            start: at,
            len: table_len(&t.bytes, at),
        });
    }
    // RSDP: the ACPI 1.0 checksum over the first 20 bytes, then the
    // extended checksum over all 36.
    checksums.push(ChecksumFixup {
        file: BlobFile::Rsdp,
        offset: 8,
        start: 0,
        len: 20,
    });
    checksums.push(ChecksumFixup {
        file: BlobFile::Rsdp,
        offset: 32,
        start: 0,
        len: RSDP_SIZE as u32,
    });
    Ok(RelocatableAcpi {
        tables: t.bytes,
        rsdp: t.rsdp,
        tables_align: 64,
        rsdp_align: 16,
        pointers,
        checksums,
        facs,
        dsdt,
        fadt,
        madt,
        xsdt,
        rsdt,
    })
}

impl RelocatableAcpi {
    /// The blobs as a loader leaves them with the tables at `tables_base`
    /// and the RSDP at `rsdp_base`: pointers patched, checksums fixed.
    pub fn relocate(&self, tables_base: u64, rsdp_base: u64) -> (Vec<u8>, [u8; RSDP_SIZE]) {
        let mut tables = self.tables.clone();
        let mut rsdp = self.rsdp;
        let base = |f: BlobFile| match f {
            BlobFile::Tables => tables_base,
            BlobFile::Rsdp => rsdp_base,
        };
        for p in &self.pointers {
            let buf: &mut [u8] = match p.file {
                BlobFile::Tables => &mut tables,
                BlobFile::Rsdp => &mut rsdp,
            };
            let (o, n) = (p.offset as usize, p.size as usize);
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&buf[o..o + n]);
            let sum = u64::from_le_bytes(v).wrapping_add(base(p.target));
            buf[o..o + n].copy_from_slice(&sum.to_le_bytes()[..n]);
        }
        for c in &self.checksums {
            let buf: &mut [u8] = match c.file {
                BlobFile::Tables => &mut tables,
                BlobFile::Rsdp => &mut rsdp,
            };
            let (s, l) = (c.start as usize, c.len as usize);
            let sum = buf[s..s + l].iter().fold(0u8, |a, &b| a.wrapping_add(b));
            let o = c.offset as usize;
            buf[o] = buf[o].wrapping_sub(sum);
        }
        (tables, rsdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::FADT_HW_REDUCED_ACPI;

    fn sum(d: &[u8]) -> u8 {
        d.iter().fold(0u8, |a, &b| a.wrapping_add(b))
    }
    fn u32at(d: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(d[o..o + 4].try_into().unwrap())
    }
    fn u64at(d: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(d[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn relocated_blobs_equal_tables_built_in_place() {
        // Relocating to (base, rsdp) must give exactly what build_tables
        // produces at that base, for any page-aligned base.
        for (base, vcpus) in [(0x7ffd_0000u64, 1u32), (0x1000, 4), (0xbfff_0000, 255)] {
            let r = build_relocatable(&HVM_PLATFORM, vcpus).unwrap();
            let (tables, rsdp) = r.relocate(base, 0xf_5a40);
            let direct = build_tables(base, &HVM_PLATFORM, vcpus).unwrap();
            assert_eq!(tables, direct.bytes);
            // The RSDP differs from direct only in nothing: it holds
            // absolute addresses of RSDT/XSDT either way.
            assert_eq!(rsdp, direct.rsdp);
            assert_eq!(sum(&rsdp[..20]), 0);
            assert_eq!(sum(&rsdp), 0);
            assert_eq!(u64at(&rsdp, 24), base + r.xsdt as u64);
        }
    }

    #[test]
    fn relocation_at_unaligned_64_byte_base_is_consistent() {
        let r = build_relocatable(&HVM_PLATFORM, 2).unwrap();
        let base = 0x1234_5640u64;
        let (t, rsdp) = r.relocate(base, 0xe_0010);
        for at in [r.dsdt, r.fadt, r.madt, r.xsdt, r.rsdt] {
            let o = at as usize;
            let len = u32at(&t, o + 4) as usize;
            assert_eq!(sum(&t[o..o + len]), 0);
        }
        let f = r.fadt as usize;
        assert_eq!(u32at(&t, f + 36) as u64, base + r.facs as u64);
        assert_eq!(u64at(&t, f + 140), base + r.dsdt as u64);
        assert_eq!(u32at(&t, f + 112) & FADT_HW_REDUCED_ACPI, 0);
        // MADT flags: PCAT_COMPAT.
        assert_eq!(u32at(&t, r.madt as usize + 40), 1);
        assert_eq!(u32at(&rsdp, 16) as u64, base + r.rsdt as u64);
        assert_eq!(r.facs % 64, 0);
        // Every fixup lies inside its blob.
        for p in &r.pointers {
            let len = match p.file {
                BlobFile::Tables => r.tables.len(),
                BlobFile::Rsdp => RSDP_SIZE,
            };
            assert!(p.offset as usize + p.size as usize <= len);
        }
    }
}
