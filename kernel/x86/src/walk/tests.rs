use super::*;

/// Guest memory: RAM from 0; everything else unbacked.
use crate::test_ram::TestRam as Mem;

fn new_mem() -> Mem {
    Mem(vec![0; 1 << 20])
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const XD: u64 = 1 << 63;

fn regs(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> PagingRegs {
    PagingRegs { cr0: cr0 | CR0_PE, cr3, cr4, efer, max_phys_bits: 40 }
}
fn pf(code: u32, address: u64) -> Result<u64, WalkError> {
    Err(WalkError::PageFault(PageFault { error_code: code, address }))
}
const R: Access = Access::read(false);
const W: Access = Access::write(false);
const X: Access = Access::execute(false);
const UR: Access = Access::read(true);
const UW: Access = Access::write(true);
const UX: Access = Access::execute(true);

#[test]
fn paging_off_is_identity() {
    let m = new_mem();
    let r = regs(0, 0, 0, 0);
    assert_eq!(r.mode(), PagingMode::Off);
    assert_eq!(translate(&m, &r, 0xfee0_00b0, W), Ok(0xfee0_00b0));
    // Outside long mode addresses wrap at 4 GiB.
    assert_eq!(translate(&m, &r, 0x1_0000_1000, R), Ok(0x1000));
}

/// 32-bit paging: PD at 0x1000, PT at 0x2000.
/// 0x0040_3000 → 0x7000 (PDE 1, PTE 3), 0x0080_0000.. → 4 MiB page at 0x0c00_0000.
fn legacy() -> Mem {
    let mut m = new_mem();
    m.w32(0x1000 + 4, 0x2000 | (P | RW | US) as u32);
    m.w32(0x2000 + 3 * 4, 0x7000 | (P | US) as u32); // read-only user
    m.w32(0x2000 + 4 * 4, 0x8000 | (P | RW) as u32); // supervisor
    m.w32(0x1000 + 2 * 4, 0x0c00_0000 | (P | RW | PS) as u32);
    m.w32(0x1000 + 3 * 4, 0x0c40_0000 | (P | RW | PS) as u32 | (0x12 << 13)); // PSE-36: PA bits 39:32 = 0x12
    m.w32(0x1000 + 4 * 4, 0x0c80_0000 | (P | RW | PS) as u32 | (1 << 21)); // reserved bit 21
    m.w32(0x1000 + 5 * 4, 0x0010_0000 | P as u32); // PT beyond RAM
    m
}

#[test]
fn legacy_32bit() {
    let m = legacy();
    let r = regs(CR0_PG | CR0_WP, 0x1000, CR4_PSE, 0);
    assert_eq!(r.mode(), PagingMode::Legacy32);
    assert_eq!(translate(&m, &r, 0x0040_3abc, UR), Ok(0x7abc));
    assert_eq!(translate(&m, &r, 0x0040_3abc, X), Ok(0x7abc));
    assert_eq!(translate(&m, &r, 0x0040_4008, R), Ok(0x8008));
    // Large pages.
    assert_eq!(translate(&m, &r, 0x0092_3456, W), Ok(0x0c12_3456));
    assert_eq!(translate(&m, &r, 0x00c0_0010, R), Ok(0x12_0c40_0010));
    assert_eq!(translate(&m, &r, 0x0100_0000, R), pf(PF_PRESENT | PF_RSVD, 0x0100_0000));
    // Not present PDE and PTE.
    assert_eq!(translate(&m, &r, 0x4000_0000, UW), pf(PF_WRITE | PF_USER, 0x4000_0000));
    assert_eq!(translate(&m, &r, 0x0040_5000, R), pf(0, 0x0040_5000));
    // Protection: user → supervisor page, write → read-only with and without WP.
    assert_eq!(translate(&m, &r, 0x0040_4000, UR), pf(PF_PRESENT | PF_USER, 0x0040_4000));
    assert_eq!(translate(&m, &r, 0x0040_3000, UW), pf(PF_PRESENT | PF_WRITE | PF_USER, 0x0040_3000));
    assert_eq!(translate(&m, &r, 0x0040_3000, W), pf(PF_PRESENT | PF_WRITE, 0x0040_3000));
    let nowp = regs(CR0_PG, 0x1000, CR4_PSE, 0);
    assert_eq!(translate(&m, &nowp, 0x0040_3000, W), Ok(0x7000));
    assert_eq!(translate(&m, &nowp, 0x0040_3000, UW), pf(PF_PRESENT | PF_WRITE | PF_USER, 0x0040_3000));
    // No NX in 32-bit paging: no I/D bit (without SMEP), EFER.NXE irrelevant.
    let nx = regs(CR0_PG, 0x1000, CR4_PSE, EFER_NXE);
    assert_eq!(translate(&m, &nx, 0x0040_4000, UX), pf(PF_PRESENT | PF_USER, 0x0040_4000));
    // Without CR4.PSE the PS bit is ignored and the PDE points to a "PT".
    let nopse = regs(CR0_PG, 0x1000, 0, 0);
    assert_eq!(translate(&m, &nopse, 0x0080_0000, R), Err(WalkError::PhysReadFailed { gpa: 0x0c00_0000 }));
    // A page table outside RAM.
    assert_eq!(translate(&m, &r, 0x0140_0000, R), Err(WalkError::PhysReadFailed { gpa: 0x0010_0000 }));
    // Upper linear bits are dropped outside long mode.
    assert_eq!(translate(&m, &r, 0xffff_ffff_0040_3000, R), Ok(0x7000));
}

/// PAE: PDPT at 0x1020 (32-byte aligned), PD at 0x2000, PT at 0x3000.
fn pae() -> Mem {
    let mut m = new_mem();
    m.w64(0x1020, 0x2000 | P); // 0..1 GiB
    m.w64(0x1020 + 8, 0x2000 | P | RW); // reserved bit 1 in a PDPTE
    m.w64(0x2000, 0x3000 | P | RW | US);
    m.w64(0x3000 + 8, 0x5000 | P | RW | US | XD);
    m.w64(0x3000 + 16, 0x6000 | P | RW | US);
    m.w64(0x2000 + 8, 0x0060_0000 | P | RW | PS); // 2 MiB at 0x20_0000 → 0x60_0000
    m.w64(0x2000 + 16, 0x0060_0000 | P | RW | PS | (1 << 13)); // reserved in a 2 MiB PDE
    m.w64(0x2000 + 24, 0x3000 | P | RW | (1 << 45)); // above MAXPHYADDR (40)
    m
}

#[test]
fn pae_paging() {
    let m = pae();
    let r = regs(CR0_PG | CR0_WP, 0x1020, CR4_PAE, EFER_NXE);
    assert_eq!(r.mode(), PagingMode::Pae);
    assert_eq!(translate(&m, &r, 0x2123, UW), Ok(0x6123));
    assert_eq!(translate(&m, &r, 0x1123, UR), Ok(0x5123));
    assert_eq!(translate(&m, &r, 0x0023_4567, R), Ok(0x0063_4567));
    // NX with NXE: fetch fault with I/D.
    assert_eq!(translate(&m, &r, 0x1000, UX), pf(PF_PRESENT | PF_USER | PF_FETCH, 0x1000));
    assert_eq!(translate(&m, &r, 0x2000, UX), Ok(0x6000));
    // XD set without NXE is a reserved bit.
    let r2 = regs(CR0_PG, 0x1020, CR4_PAE, 0);
    assert_eq!(translate(&m, &r2, 0x1000, R), pf(PF_PRESENT | PF_RSVD, 0x1000));
    // PDPTE reserved bits; 2 MiB reserved bits; address above MAXPHYADDR.
    assert_eq!(translate(&m, &r, 0x4000_0000, W), pf(PF_PRESENT | PF_WRITE | PF_RSVD, 0x4000_0000));
    assert_eq!(translate(&m, &r, 0x40_0000, R), pf(PF_PRESENT | PF_RSVD, 0x40_0000));
    assert_eq!(translate(&m, &r, 0x60_0000, R), pf(PF_PRESENT | PF_RSVD, 0x60_0000));
    // Not present PDPTE, PDE, PTE.
    assert_eq!(translate(&m, &r, 0x8000_0000, X), pf(PF_FETCH, 0x8000_0000));
    assert_eq!(translate(&m, &r, 0x80_0000, R), pf(0, 0x80_0000));
    assert_eq!(translate(&m, &r, 0x3000, R), pf(0, 0x3000));
    // The 2 MiB page is supervisor-only.
    assert_eq!(translate(&m, &r, 0x20_0000, UR), pf(PF_PRESENT | PF_USER, 0x20_0000));
}

/// 4-level: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
fn long4() -> Mem {
    let mut m = new_mem();
    m.w64(0x1000, 0x2000 | P | RW | US); // PML4[0]
    m.w64(0x1000 + 511 * 8, 0x2000 | P | RW); // PML4[511]: kernel half, supervisor
    m.w64(0x1000 + 8, 0x2000 | P | RW | US | PS); // PS in a PML4E: reserved
    m.w64(0x1000 + 16, 0x0020_0000 | P | RW | US); // PDPT outside RAM
    m.w64(0x2000, 0x3000 | P | RW | US); // PDPT[0]
    m.w64(0x2000 + 8, 0x4000_0000 | P | RW | US | PS); // 1 GiB at 1 GiB → 1 GiB
    m.w64(0x2000 + 16, 0x4000_0000 | P | RW | PS | (1 << 20)); // reserved in a 1 GiB PDPTE
    m.w64(0x2000 + 24, 0x1_0000_0000 | P | RW | US | PS | XD); // 1 GiB NX
    m.w64(0x3000, 0x4000 | P | RW | US); // PD[0]
    m.w64(0x3000 + 8, 0xfee0_0000 | P | RW | PS); // 2 MiB supervisor → the LAPIC
    m.w64(0x4000 + 8, 0x9000 | P | US); // read-only user
    m.w64(0x4000 + 16, 0xa000 | P | RW); // supervisor RW
    m.w64(0x4000 + 24, 0xb000 | P | RW | US | (1 << 44)); // above MAXPHYADDR 40
    m
}

#[test]
fn long_mode_4level() {
    let m = long4();
    let r = regs(CR0_PG | CR0_WP, 0x1000, CR4_PAE, EFER_LME | EFER_LMA | EFER_NXE);
    assert_eq!(r.mode(), PagingMode::Level4);
    assert_eq!(translate(&m, &r, 0x1234, UR), Ok(0x9234));
    assert_eq!(translate(&m, &r, 0x2234, W), Ok(0xa234));
    assert_eq!(translate(&m, &r, 0x20_00b0, W), Ok(0xfee0_00b0));
    assert_eq!(translate(&m, &r, 0x4123_4567, UW), Ok(0x4123_4567));
    assert_eq!(translate(&m, &r, 0xffff_ff80_0000_2010, R), Ok(0xa010));
    // Faults.
    assert_eq!(translate(&m, &r, 0x1000, W), pf(PF_PRESENT | PF_WRITE, 0x1000));
    assert_eq!(translate(&m, &r, 0x2000, UR), pf(PF_PRESENT | PF_USER, 0x2000));
    assert_eq!(translate(&m, &r, 0xffff_ff80_0000_1000, UR), pf(PF_PRESENT | PF_USER, 0xffff_ff80_0000_1000));
    assert_eq!(translate(&m, &r, 0x0, R), pf(0, 0));
    assert_eq!(translate(&m, &r, 0xc000_0000, UX), pf(PF_PRESENT | PF_USER | PF_FETCH, 0xc000_0000));
    assert_eq!(translate(&m, &r, 0xc000_0000, X), pf(PF_PRESENT | PF_FETCH, 0xc000_0000));
    assert_eq!(translate(&m, &r, 0xc000_0000, R), Ok(0x1_0000_0000));
    assert_eq!(translate(&m, &r, 0x8000_0000, R), pf(PF_PRESENT | PF_RSVD, 0x8000_0000));
    assert_eq!(translate(&m, &r, 0x3000, R), pf(PF_PRESENT | PF_RSVD, 0x3000));
    assert_eq!(translate(&m, &r, 0x80_0000_0000, W), pf(PF_PRESENT | PF_WRITE | PF_RSVD, 0x80_0000_0000));
    assert_eq!(translate(&m, &r, 0x100_0000_0000, R), Err(WalkError::PhysReadFailed { gpa: 0x0020_0000 }));
    assert_eq!(translate(&m, &r, 0x0000_8000_0000_0000, R), Err(WalkError::NonCanonical { address: 0x0000_8000_0000_0000 }));
    // LME + PG without LMA is long mode too (hand-built VMCB state).
    let r2 = PagingRegs { efer: EFER_LME, ..r };
    assert_eq!(r2.mode(), PagingMode::Level4);
    // A page table in unbacked memory.
    let mut m2 = long4();
    m2.w64(0x3000 + 16, 0x0030_0000 | P | RW);
    assert_eq!(translate(&m2, &r, 0x40_0000, R), Err(WalkError::PhysReadFailed { gpa: 0x0030_0000 }));
}

#[test]
fn smep_smap() {
    let m = long4();
    let base = regs(CR0_PG | CR0_WP, 0x1000, CR4_PAE, EFER_LMA | EFER_NXE);
    let smep = PagingRegs { cr4: CR4_PAE | CR4_SMEP, ..base };
    assert_eq!(translate(&m, &base, 0x1000, X), Ok(0x9000));
    assert_eq!(translate(&m, &smep, 0x1000, X), pf(PF_PRESENT | PF_FETCH, 0x1000));
    assert_eq!(translate(&m, &smep, 0x2000, X), Ok(0xa000));
    let smap = PagingRegs { cr4: CR4_PAE | CR4_SMAP, ..base };
    assert_eq!(translate(&m, &smap, 0x1000, R), pf(PF_PRESENT, 0x1000));
    let ac = Access { smap_allowed: true, ..R };
    assert_eq!(translate(&m, &smap, 0x1000, ac), Ok(0x9000));
    assert_eq!(translate(&m, &smap, 0x1000, UR), Ok(0x9000));
    assert_eq!(translate(&m, &smap, 0x2000, R), Ok(0xa000));
    // SMEP without NXE still sets I/D.
    let smep_nonx = PagingRegs { efer: EFER_LMA, ..smep };
    assert_eq!(translate(&m, &smep_nonx, 0x7000, X), pf(PF_FETCH, 0x7000));
}

#[test]
fn long_mode_5level() {
    // PML5 0x5000 → PML4 0x1000 (the 4-level tables above).
    let mut m = long4();
    m.w64(0x5000 + 8, 0x1000 | P | RW | US); // PML5[1] covers 1<<48 ..
    m.w64(0x5000 + 511 * 8, 0x1000 | P | RW);
    m.w64(0x5000 + 2 * 8, 0x1000 | P | RW | US | PS); // PS reserved in a PML5E
    let r = regs(CR0_PG, 0x5000, CR4_PAE | CR4_LA57, EFER_LMA);
    assert_eq!(r.mode(), PagingMode::Level5);
    assert_eq!(translate(&m, &r, (1 << 48) | 0x1234, UR), Ok(0x9234));
    assert_eq!(translate(&m, &r, 0xffff_0000_0000_2000, R), Ok(0xa000));
    assert_eq!(translate(&m, &r, 0x1234, R), pf(0, 0x1234));
    assert_eq!(translate(&m, &r, 2 << 48, R), pf(PF_PRESENT | PF_RSVD, 2 << 48));
    // 48-bit non-canonical is fine with LA57, 57-bit non-canonical is not.
    assert_eq!(translate(&m, &r, 0x0000_8000_0000_0000, R), pf(0, 0x0000_8000_0000_0000));
    assert_eq!(translate(&m, &r, 0x0100_0000_0000_0000, R), Err(WalkError::NonCanonical { address: 0x0100_0000_0000_0000 }));
}

fn cpu64(cr3: u64) -> CpuMode {
    CpuMode {
        paging: regs(CR0_PG | CR0_WP, cr3, CR4_PAE, EFER_LMA | EFER_NXE),
        cs_base: 0,
        cs_l: true,
        cs_db: false,
        cpl: 0,
    }
}

#[test]
fn fetch_across_pages() {
    let mut m = long4();
    // PT[4] → 0xc000, PT[5] → 0xe000 (not contiguous), PT[6] not present.
    m.w64(0x4000 + 4 * 8, 0xc000 | P | RW);
    m.w64(0x4000 + 5 * 8, 0xe000 | P | RW);
    m.w64(0x4000 + 7 * 8, 0x0020_0000 | P | RW); // page outside RAM
    for i in 0..16 {
        m.0[0xcff8 + i] = 0x10 + i as u8; // 8 bytes at the end of 0xc000
        m.0[0xe000 + i] = 0x80 + i as u8;
    }
    let cpu = cpu64(0x1000);
    let (b, n) = fetch_instruction(&m, &cpu, 0x4ff8).unwrap();
    assert_eq!(n, 15);
    assert_eq!(&b[..8], &[0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]);
    assert_eq!(&b[8..], &[0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86]);
    // Within a page.
    let (b, n) = fetch_instruction(&m, &cpu, 0x4ff0).unwrap();
    assert_eq!((n, b[8]), (15, 0x10));
    // Second page not present: stop cleanly, report the fault.
    let f = fetch_instruction_ex(&m, &cpu, 0x5ffc).unwrap();
    assert_eq!(f.len, 4);
    assert_eq!(&f.bytes[..4], &m.0[0xeffc..0xf000]);
    assert_eq!(f.bytes[4..], [0; 11]);
    assert_eq!(f.tail_error, Some(WalkError::PageFault(PageFault { error_code: PF_FETCH, address: 0x6000 })));
    // Second page not backed by RAM.
    let f = fetch_instruction_ex(&m, &cpu, 0x6fff).unwrap_err();
    assert_eq!(f, WalkError::PageFault(PageFault { error_code: PF_FETCH, address: 0x6fff }));
    let mut m2 = long4();
    m2.w64(0x4000 + 6 * 8, 0xd000 | P | RW);
    m2.w64(0x4000 + 7 * 8, 0x0020_0000 | P | RW);
    let f = fetch_instruction_ex(&m2, &cpu, 0x6ff1).unwrap();
    assert_eq!((f.len, f.tail_error), (15, None));
    let f = fetch_instruction_ex(&m2, &cpu, 0x6ff2).unwrap();
    assert_eq!((f.len, f.tail_error), (14, Some(WalkError::PhysReadFailed { gpa: 0x0020_0000 })));
    // First page fails: the error comes back, user bit from CPL 3.
    let user = CpuMode { cpl: 3, ..cpu };
    assert_eq!(
        fetch_instruction(&m, &user, 0x2000),
        Err(WalkError::PageFault(PageFault { error_code: PF_PRESENT | PF_USER | PF_FETCH, address: 0x2000 }))
    );
    // Code in unbacked memory.
    assert_eq!(fetch_instruction(&m, &cpu, 0x7000), Err(WalkError::PhysReadFailed { gpa: 0x0020_0000 }));
}

#[test]
fn fetch_modes() {
    let mut m = new_mem();
    m.0[0xf_fff0..0xf_fff5].copy_from_slice(&[0xea, 0x5b, 0xe0, 0x00, 0xf0]);
    // Real mode: CS base 0xf0000, IP 0xfff0.
    let real = CpuMode { paging: PagingRegs { cr0: 0, ..PagingRegs::flat() }, cs_base: 0xf_0000, cs_l: false, cs_db: false, cpl: 0 };
    assert_eq!(real.code_mode(), CodeMode::Bits16);
    let f = fetch_instruction_ex(&m, &real, 0xfff0).unwrap();
    assert_eq!(&f.bytes[..5], &[0xea, 0x5b, 0xe0, 0x00, 0xf0]);
    assert_eq!(f.len, 15); // 0xffff0..0xfffff all in RAM
    assert_eq!(crate::decode::instruction_length(&f.bytes[..f.len], real.code_mode()), Ok(5));
    // 32-bit protected mode, paging off, CS base applied and wrapped.
    let pm = CpuMode { paging: PagingRegs::flat(), cs_base: 0xfff0_0000, cs_l: false, cs_db: true, cpl: 0 };
    assert_eq!(pm.code_mode(), CodeMode::Bits32);
    assert_eq!(pm.code_linear(0x0020_0000), 0x0010_0000);
    // Instruction running off the end of RAM (1 MiB) with paging off.
    let f = fetch_instruction_ex(&m, &CpuMode { cs_base: 0, ..pm }, 0xf_fffa).unwrap();
    assert_eq!((f.len, f.tail_error), (6, Some(WalkError::PhysReadFailed { gpa: 0x10_0000 })));
    // Compatibility mode: long mode without CS.L decodes as 32-bit.
    let compat = CpuMode { cs_l: false, cs_db: true, ..cpu64(0x1000) };
    assert_eq!(compat.code_mode(), CodeMode::Bits32);
    assert_eq!(cpu64(0).code_mode(), CodeMode::Bits64);
}

/// QEMU's TCG sets bit 5 (reserved, "accessed" at other levels) in a legacy
/// PAE PDPTE it walks; the walk must still succeed.
#[test]
fn pae_pdpte_with_the_bit_qemu_sets() {
    let mut m = Mem(vec![0; 0x20_0000]);
    m.w64(0x10_7000, 0x10_6000 | P | 0x20);
    m.w64(0x10_6000, P | RW | PS | 0x60);
    let r = regs(CR0_PG, 0x10_7000, CR4_PAE, 0);
    assert_eq!(translate(&m, &r, 0x10_088e, Access::execute(false)), Ok(0x10_088e));
    // Bits 2:1 and 8:6 stay reserved.
    m.w64(0x10_7000, 0x10_6000 | P | 0x40);
    assert_eq!(translate(&m, &r, 0x10_088e, Access::execute(false)), pf(PF_PRESENT | PF_RSVD, 0x10_088e));
}
