//! What the Linux 64-bit boot protocol needs from the loader (identity
//! page tables and a GDT with `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18),
//! and the initial vCPU register state for both entry modes.

use crate::bytes::put_u64;
use alloc::vec::Vec;

/// Pages of the identity map: PML4, PDPT, four page directories.
pub const IDENTITY_PT_PAGES: u64 = 6;
/// The identity map covers [0, 4 GiB) with 2 MiB pages.
pub const IDENTITY_MAP_END: u64 = 0x1_0000_0000;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// `__BOOT_CS` and `__BOOT_DS` (GDT entries 2 and 3).
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// Size of the boot GDT (4 descriptors).
pub const GDT_SIZE: usize = 32;
/// A flat 64-bit code descriptor and a flat data descriptor (accessed bit
/// set, so the CPU never writes to the GDT).
pub const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
pub const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;

/// The six page-table pages for a table placed at `base` (4 KiB aligned):
/// PML4 at `base`, PDPT at `base + 0x1000`, PDs after it. CR3 = `base`.
pub fn identity_page_tables(base: u64) -> Vec<u8> {
    assert!(base % 4096 == 0);
    let mut t = alloc::vec![0u8; (IDENTITY_PT_PAGES * 4096) as usize];
    let pdpt = base + 0x1000;
    put_u64(&mut t, 0, pdpt | PRESENT | WRITABLE);
    for i in 0..4u64 {
        let pd = base + 0x2000 + i * 0x1000;
        put_u64(&mut t, 0x1000 + (i as usize) * 8, pd | PRESENT | WRITABLE);
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            put_u64(
                &mut t,
                (0x2000 + i * 0x1000 + j * 8) as usize,
                addr | PRESENT | WRITABLE | PAGE_SIZE_2M,
            );
        }
    }
    t
}

/// The boot GDT: null, null, `__BOOT_CS`, `__BOOT_DS`.
pub fn boot_gdt() -> [u8; GDT_SIZE] {
    let mut g = [0u8; GDT_SIZE];
    put_u64(&mut g, 16, GDT_CODE64);
    put_u64(&mut g, 24, GDT_DATA);
    g
}

/// A segment register as the hypervisor loads it into the VMCB/VMCS.
/// `attrib` is in the SVM VMCB packed form: bits 0–3 type, 4 S, 5–6 DPL,
/// 7 P, 8 AVL, 9 L, 10 D/B, 11 G (i.e. descriptor bits 40–47 and 52–55).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentState {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub attrib: u16,
}

impl SegmentState {
    /// From a GDT descriptor value (base/limit as a flat descriptor holds).
    pub fn from_descriptor(selector: u16, desc: u64) -> Self {
        let limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
        let g = desc & (1 << 55) != 0;
        let limit = if g { (limit << 12) | 0xfff } else { limit };
        let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
        let attrib = (((desc >> 40) & 0xff) | (((desc >> 52) & 0xf) << 8)) as u16;
        Self {
            selector,
            base,
            limit,
            attrib,
        }
    }
}

/// The register state a vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitialCpuState {
    pub rip: u64,
    pub rsi: u64,
    pub rbx: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: SegmentState,
    /// Used for DS, ES, SS, FS and GS.
    pub ds: SegmentState,
    pub tr: SegmentState,
    pub gdtr_base: u64,
    pub gdtr_limit: u16,
}

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// PVH entry (Xen's `docs/misc/pvh.pandoc`): 32-bit protected mode, paging
/// off, flat 4 GiB CS (execute/read) and data segments, a 32-bit busy TSS
/// with base 0 limit 0x67, `ebx` = `hvm_start_info`, IF clear. GDTR is
/// unspecified (0 here); the kernel loads its own.
pub fn pvh_cpu_state(entry: u32, start_info: u32) -> InitialCpuState {
    InitialCpuState {
        rip: entry.into(),
        rsi: 0,
        rbx: start_info.into(),
        rflags: 0x2,
        cr0: CR0_PE | CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs: SegmentState {
            selector: 0x08,
            base: 0,
            limit: 0xffff_ffff,
            attrib: 0xc9b,
        },
        ds: SegmentState {
            selector: 0x10,
            base: 0,
            limit: 0xffff_ffff,
            attrib: 0xc93,
        },
        tr: SegmentState {
            selector: 0x18,
            base: 0,
            limit: 0x67,
            attrib: 0x8b,
        },
        gdtr_base: 0,
        gdtr_limit: 0,
    }
}

/// Linux 64-bit entry: long mode, paging on with the identity map at
/// `cr3`, CS = `__BOOT_CS`, data = `__BOOT_DS`, `rsi` = `boot_params`.
pub fn linux64_cpu_state(entry: u64, boot_params: u64, cr3: u64, gdt: u64) -> InitialCpuState {
    InitialCpuState {
        rip: entry,
        rsi: boot_params,
        rbx: 0,
        rflags: 0x2,
        cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG,
        cr3,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        cs: SegmentState::from_descriptor(BOOT_CS, GDT_CODE64),
        ds: SegmentState::from_descriptor(BOOT_DS, GDT_DATA),
        tr: SegmentState {
            selector: 0,
            base: 0,
            limit: 0x67,
            attrib: 0x8b,
        },
        gdtr_base: gdt,
        gdtr_limit: (GDT_SIZE - 1) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(t: &[u8], base: u64, va: u64) -> Option<u64> {
        let rd = |gpa: u64| {
            let o = (gpa - base) as usize;
            u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
        };
        let pml4e = rd(base + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = rd((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = rd((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_map_covers_4g() {
        let base = 0x9000;
        let t = identity_page_tables(base);
        assert_eq!(t.len(), 6 * 4096);
        for va in [
            0u64,
            0x1234,
            0x100_0000,
            0x7fff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(walk(&t, base, va), Some(va));
        }
        assert_eq!(walk(&t, base, 0x1_0000_0000), None);
    }

    #[test]
    fn segments() {
        let cs = SegmentState::from_descriptor(BOOT_CS, GDT_CODE64);
        assert_eq!(cs.attrib, 0xa9b); // G, L, P, S, type 0xB
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = SegmentState::from_descriptor(BOOT_DS, GDT_DATA);
        assert_eq!(ds.attrib, 0xc93);
        let g = boot_gdt();
        assert_eq!(
            u64::from_le_bytes(g[16..24].try_into().unwrap()),
            GDT_CODE64
        );
        let s = linux64_cpu_state(0x100_0200, 0x7000, 0x9000, 0x6000);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.gdtr_limit, 31);
        let p = pvh_cpu_state(0x100_0000, 0x1000);
        assert_eq!(p.rbx, 0x1000);
        assert_eq!(p.cr0 & CR0_PG, 0);
    }
}
