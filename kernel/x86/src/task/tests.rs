use super::*;

/// 1 MiB of guest RAM at 0; everything else unbacked.
use crate::test_ram::TestRam as Mem;

/// What only these tests read back.
trait Readback {
    fn r16(&self, a: u64) -> u16;
    fn r32(&self, a: u64) -> u32;
    fn access(&self, sel: u16) -> u8;
}

impl Readback for Mem {
    fn r16(&self, a: u64) -> u16 {
        u16_at(&self.0, a as usize)
    }
    fn r32(&self, a: u64) -> u32 {
        u32_at(&self.0, a as usize)
    }
    fn access(&self, sel: u16) -> u8 {
        self.0[GDT as usize + usize::from(sel & !7) + 5]
    }
}

const GDT: u64 = 0x1000;
const TSS_A: u64 = 0x2000;
const TSS_B: u64 = 0x3000;
const LDT: u64 = 0x4000;

const CODE: u16 = 0x08;
const DATA: u16 = 0x10;
const SEL_A: u16 = 0x18;
const SEL_B: u16 = 0x20;
const SEL_LDT: u16 = 0x28;
const SEL_ABSENT: u16 = 0x30;
const SEL_SMALL: u16 = 0x38;
const SEL_16: u16 = 0x40;
const UCODE: u16 = 0x48 | 3;
const UDATA: u16 = 0x50 | 3;
const GDT_ENTRIES: u64 = 11;

/// A system descriptor: `base`, byte-granular `limit`, access byte.
fn sys(base: u32, limit: u32, access: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xFFFF) | ((b & 0xFF_FFFF) << 16) | (u64::from(access) << 40) | (((l >> 16) & 0xF) << 48) | ((b >> 24) << 56)
}

/// Task A is running (TR = SEL_A, busy) with flat ring-0 segments; task B
/// is available, its TSS holding a ring-0 task at 0x5000 with its stack at
/// 0x8000.
fn setup() -> (Mem, CpuState) {
    let mut m = Mem(vec![0; 1 << 20]);
    let gdt = [
        0,
        0x00CF_9A00_0000_FFFF, // flat code, not yet accessed
        0x00CF_9200_0000_FFFF, // flat data
        sys(TSS_A as u32, 0x67, 0x8B),
        sys(TSS_B as u32, 0x67, 0x89),
        sys(LDT as u32, 0xF, 0x82),
        sys(0x6000, 0x67, 0x09), // not present
        sys(0x6000, 0x66, 0x89), // too small
        sys(0x6000, 0x2B, 0x81), // 16-bit TSS
        0x00CF_FA00_0000_FFFF, // ring-3 code
        0x00CF_F200_0000_FFFF, // ring-3 data
    ];
    for (i, d) in gdt.iter().enumerate() {
        m.w64(GDT + 8 * i as u64, *d);
    }
    // LDT: entry 1 a ring-0 data segment based at 0x10000.
    m.w64(LDT + 8, 0x0040_9201_0000_FFFF);
    // Task B's TSS.
    m.w32(TSS_B + 0x1C, 0x9000); // CR3 (used with paging only)
    m.w32(TSS_B + 0x20, 0x5000);
    m.w32(TSS_B + 0x24, 0x202);
    for i in 0..8 {
        m.w32(TSS_B + 0x28 + 4 * i, 0x100 + i as u32);
    }
    m.w32(TSS_B + 0x38, 0x8000); // ESP
    for (i, s) in [DATA, CODE, DATA, DATA, 0, DATA].iter().enumerate() {
        m.w16(TSS_B + 0x48 + 4 * i as u64, *s);
    }
    m.w32(TSS_A + 0x50, 0xDEAD_0000); // upper half of a selector slot
    let flat = |selector, attrib| SegmentReg { selector, base: 0, limit: 0xFFFF_FFFF, attrib };
    let mut st = CpuState {
        gprs: [1, 2, 3, 4, 0x7000, 6, 7, 8],
        eip: 0x1000,
        eflags: 0x2 | (1 << 9),
        segs: [flat(DATA, 0xC93), flat(CODE, 0xC9B), flat(DATA, 0xC93), flat(DATA, 0xC93), flat(0, 0), flat(DATA, 0xC93)],
        ldtr: SegmentReg::default(),
        tr: SegmentReg { selector: SEL_A, base: TSS_A, limit: 0x67, attrib: 0x8B },
        gdtr: TableReg { base: GDT, limit: (8 * GDT_ENTRIES - 1) as u32 },
        cr0: 0x11,
        cr3: 0,
        cr4: 0,
        efer: 0,
        max_phys_bits: 36,
    };
    st.segs[FS] = SegmentReg::default();
    (m, st)
}

fn req(selector: u16, source: Source) -> Request {
    Request { selector, source, return_eip: 0x1007, error_code: None, external: false, check_privilege: false }
}

fn fault(vector: u8, code: u32, committed: bool) -> Result<(), Error> {
    Err(Error::Fault { fault: Fault::Exception { vector, error_code: Some(code) }, committed })
}

#[test]
fn call_to_a_tss_saves_links_and_loads_the_new_task() {
    let (mut m, mut st) = setup();
    switch(&mut m, &mut st, &req(SEL_B, Source::Call)).unwrap();
    // The old task is saved, EIP past the CALL, its descriptor still busy.
    assert_eq!(m.r32(TSS_A + 0x20), 0x1007);
    assert_eq!(m.r32(TSS_A + 0x24), 0x202);
    assert_eq!(m.r32(TSS_A + 0x28), 1);
    assert_eq!(m.r32(TSS_A + 0x38), 0x7000);
    assert_eq!(m.r32(TSS_A + 0x44), 8);
    assert_eq!(m.r16(TSS_A + 0x4C), CODE);
    // Only the selector's half of a slot is written.
    assert_eq!(m.r32(TSS_A + 0x50), 0xDEAD_0000 | u32::from(DATA));
    assert_eq!(m.access(SEL_A), 0x8B);
    // The new task: busy, linked back, NT set, its state loaded.
    assert_eq!(m.access(SEL_B), 0x8B);
    assert_eq!(m.r16(TSS_B), SEL_A);
    assert_eq!(st.eip, 0x5000);
    assert_eq!(st.eflags, 0x202 | EFLAGS_NT);
    assert_eq!(st.gprs, [0x100, 0x101, 0x102, 0x103, 0x8000, 0x105, 0x106, 0x107]);
    assert_eq!(st.tr, SegmentReg { selector: SEL_B, base: TSS_B, limit: 0x67, attrib: 0x8B });
    assert_eq!(st.segs[CS].selector, CODE);
    assert_eq!(st.segs[CS].attrib, 0xC9B);
    assert_eq!(st.segs[CS].limit, 0xFFFF_FFFF);
    assert_eq!(st.segs[FS], SegmentReg::default());
    assert_eq!(st.segs[SS].attrib, 0xC93);
    // The CPU sets the accessed bit of what it loads.
    assert_eq!(m.access(CODE), 0x9B);
    assert_ne!(st.cr0 & CR0_TS, 0);
    // Paging is off: CR3 stays.
    assert_eq!(st.cr3, 0);
}

#[test]
fn iret_with_nt_returns_through_the_back_link() {
    let (mut m, mut st) = setup();
    switch(&mut m, &mut st, &req(SEL_B, Source::Call)).unwrap();
    st.eip = 0x5010;
    st.gprs[0] = 0x55;
    let back = Request { return_eip: 0x5011, ..req(m.r16(TSS_B), Source::Iret) };
    switch(&mut m, &mut st, &back).unwrap();
    // B is free again, saved with NT clear; A runs where the CALL left it.
    assert_eq!(m.access(SEL_B), 0x89);
    assert_eq!(m.access(SEL_A), 0x8B);
    assert_eq!(m.r32(TSS_B + 0x20), 0x5011);
    assert_eq!(m.r32(TSS_B + 0x24) & EFLAGS_NT, 0);
    assert_eq!(m.r32(TSS_B + 0x28), 0x55);
    assert_eq!(st.eip, 0x1007);
    assert_eq!(st.eflags & EFLAGS_NT, 0);
    assert_eq!(st.gprs[0], 1);
    assert_eq!(st.tr.selector, SEL_A);
    assert_eq!(st.tr.attrib & 0xF, 11);
}

#[test]
fn jmp_frees_the_old_task_and_neither_links_nor_nests() {
    let (mut m, mut st) = setup();
    m.w16(TSS_B, 0x1234);
    switch(&mut m, &mut st, &req(SEL_B, Source::Jmp)).unwrap();
    assert_eq!(m.access(SEL_A), 0x89);
    assert_eq!(m.access(SEL_B), 0x8B);
    assert_eq!(m.r16(TSS_B), 0x1234);
    assert_eq!(st.eflags & EFLAGS_NT, 0);
    assert_eq!(st.tr.selector, SEL_B);
    // And back: A is available now.
    switch(&mut m, &mut st, &req(SEL_A, Source::Jmp)).unwrap();
    assert_eq!(m.access(SEL_B), 0x89);
    assert_eq!(st.eip, 0x1007);
}

#[test]
fn an_exception_through_a_task_gate_pushes_its_error_code() {
    let (mut m, mut st) = setup();
    let r = Request { return_eip: 0x1000, error_code: Some(0x18), external: true, ..req(SEL_B, Source::Gate) };
    switch(&mut m, &mut st, &r).unwrap();
    assert_eq!(m.r32(TSS_A + 0x20), 0x1000);
    assert_eq!(st.gprs[4], 0x7FFC);
    assert_eq!(m.r32(0x7FFC), 0x18);
    assert_ne!(st.eflags & EFLAGS_NT, 0);
    assert_eq!(m.r16(TSS_B), SEL_A);
    assert_eq!(m.access(SEL_B), 0x8B);
}

#[test]
fn an_interrupt_through_a_task_gate_pushes_nothing() {
    let (mut m, mut st) = setup();
    let r = Request { return_eip: 0x1000, external: true, ..req(SEL_B, Source::Gate) };
    switch(&mut m, &mut st, &r).unwrap();
    assert_eq!(st.gprs[4], 0x8000);
    assert_eq!(m.r32(0x7FFC), 0);
    assert_ne!(st.eflags & EFLAGS_NT, 0);
}

/// A fault before the commit point changes nothing, in the CPU or memory.
fn refused(selector: u16, source: Source, tweak: impl Fn(&mut Mem, &mut CpuState)) -> Result<(), Error> {
    let (mut m, mut st) = setup();
    tweak(&mut m, &mut st);
    let (m0, st0) = (m.0.clone(), st);
    let r = switch(&mut m, &mut st, &Request { external: source == Source::Gate, ..req(selector, source) });
    assert!(m.0 == m0, "memory changed");
    assert_eq!(st, st0);
    r
}

#[test]
fn faults_before_the_commit_point_leave_everything_alone() {
    let none = |_: &mut Mem, _: &mut CpuState| {};
    assert_eq!(refused(SEL_ABSENT, Source::Call, none), fault(NP_VECTOR, u32::from(SEL_ABSENT), false));
    assert_eq!(refused(SEL_SMALL, Source::Jmp, none), fault(TS_VECTOR, u32::from(SEL_SMALL), false));
    // CALL to a busy task, IRET to an available one.
    assert_eq!(refused(SEL_A, Source::Call, none), fault(GP_VECTOR, u32::from(SEL_A), false));
    assert_eq!(refused(SEL_B, Source::Iret, none), fault(TS_VECTOR, u32::from(SEL_B), false));
    // Not a TSS; beyond the GDT; in the LDT; the null selector.
    assert_eq!(refused(CODE, Source::Jmp, none), fault(GP_VECTOR, u32::from(CODE), false));
    assert_eq!(refused(0x58, Source::Call, none), fault(GP_VECTOR, 0x58, false));
    assert_eq!(refused(SEL_B | 4, Source::Call, none), fault(GP_VECTOR, u32::from(SEL_B | 4), false));
    assert_eq!(refused(0, Source::Iret, none), fault(TS_VECTOR, 0, false));
    // Through a task gate the error code says the event was external.
    assert_eq!(refused(SEL_ABSENT, Source::Gate, none), fault(NP_VECTOR, u32::from(SEL_ABSENT) | 1, false));
    assert_eq!(refused(SEL_16, Source::Call, none), Err(Error::Unsupported("a task switch to a 16-bit TSS")));
    // The new TSS in memory that is not RAM: reported, not a guest fault.
    let far = |m: &mut Mem, _: &mut CpuState| m.w64(GDT + u64::from(SEL_B), sys(0xFFFF_FF00, 0x67, 0x89));
    assert_eq!(refused(SEL_B, Source::Call, far), Err(Error::Memory { gpa: 0xFFFF_FF00 }));
    // A GDT limit the guest made huge, based outside RAM; and one that
    // wraps at 4 GiB into RAM (zeros there: not a TSS).
    let wild = |_: &mut Mem, st: &mut CpuState| st.gdtr = TableReg { base: 0xFFF0_0000, limit: u32::MAX };
    assert_eq!(refused(SEL_B, Source::Call, wild), Err(Error::Memory { gpa: 0xFFF0_0020 }));
    let wrap = |_: &mut Mem, st: &mut CpuState| st.gdtr = TableReg { base: 0xFFFF_FFF0, limit: u32::MAX };
    assert_eq!(refused(SEL_B, Source::Call, wrap), fault(GP_VECTOR, u32::from(SEL_B), false));
    assert_eq!(
        refused(SEL_B, Source::Call, |_, st| st.efer = EFER_LMA),
        Err(Error::Unsupported("a task switch in IA-32e mode (the CPU raises #GP for it)"))
    );
}

#[test]
fn call_and_jmp_check_privilege_only_when_asked() {
    let (mut m, mut st) = setup();
    st.segs[SS].attrib |= 3 << 5; // CPL 3
    let (m0, st0) = (m.0.clone(), st);
    let r = Request { check_privilege: true, ..req(SEL_B, Source::Call) };
    assert_eq!(switch(&mut m, &mut st, &r), fault(GP_VECTOR, u32::from(SEL_B), false));
    assert!(m.0 == m0 && st == st0);
    // RPL 3 from CPL 0.
    st.segs[SS].attrib &= !(3 << 5);
    let r = Request { check_privilege: true, ..req(SEL_B | 3, Source::Jmp) };
    assert_eq!(switch(&mut m, &mut st, &r), fault(GP_VECTOR, u32::from(SEL_B), false));
    // A VMX caller (the CPU checked, possibly through a task gate): no check.
    st.segs[SS].attrib |= 3 << 5;
    switch(&mut m, &mut st, &req(SEL_B, Source::Call)).unwrap();
}

/// A fault while loading the new task is the new task's: TR, EIP and the
/// selectors are already the new ones.
fn after_commit(tweak: impl Fn(&mut Mem)) -> (Result<(), Error>, CpuState) {
    let (mut m, mut st) = setup();
    tweak(&mut m);
    let r = switch(&mut m, &mut st, &req(SEL_B, Source::Call));
    assert_eq!(st.tr.selector, SEL_B);
    assert_eq!(st.eip, 0x5000);
    assert_eq!(m.access(SEL_B), 0x8B);
    (r, st)
}

#[test]
fn faults_after_the_commit_point_belong_to_the_new_task() {
    let seg = |i: u64, s: u16| move |m: &mut Mem| m.w16(TSS_B + 0x48 + 4 * i, s);
    // SS: null, RPL other than CPL, read-only, DPL other than CPL, absent.
    assert_eq!(after_commit(seg(2, 0)).0, fault(TS_VECTOR, 0, true));
    assert_eq!(after_commit(seg(2, DATA | 1)).0, fault(TS_VECTOR, u32::from(DATA), true));
    assert_eq!(after_commit(seg(2, CODE)).0, fault(TS_VECTOR, u32::from(CODE), true));
    assert_eq!(after_commit(seg(2, UDATA & !3)).0, fault(TS_VECTOR, u32::from(UDATA & !3), true));
    let absent_ss = |m: &mut Mem| m.w64(GDT + u64::from(DATA), 0x00CF_1200_0000_FFFF);
    assert_eq!(after_commit(absent_ss).0, fault(SS_VECTOR, u32::from(DATA), true));
    // CS: not code, DPL other than its RPL, absent.
    assert_eq!(after_commit(seg(1, DATA)).0, fault(TS_VECTOR, u32::from(DATA), true));
    assert_eq!(after_commit(seg(1, UCODE & !3)).0, fault(TS_VECTOR, u32::from(UCODE & !3), true));
    let absent_cs = |m: &mut Mem| m.w64(GDT + u64::from(CODE), 0x00CF_1A00_0000_FFFF);
    let (r, st) = after_commit(absent_cs);
    assert_eq!(r, fault(NP_VECTOR, u32::from(CODE), true));
    // The data segments were loaded before CS.
    assert_eq!(st.segs[DS].attrib & 0xFF, 0x93);
    // Data segments: a TSS, DPL above CPL... below it; outside the GDT.
    assert_eq!(after_commit(seg(3, SEL_A)).0, fault(TS_VECTOR, u32::from(SEL_A), true));
    assert_eq!(after_commit(seg(3, 0x70)).0, fault(TS_VECTOR, 0x70, true));
    // A ring-3 data segment is fine for ring 0 (DPL >= CPL).
    assert_eq!(after_commit(seg(3, UDATA)).0, Ok(()));
    // In the LDT without one; through the new task's LDT.
    assert_eq!(after_commit(seg(5, 0x0C)).0, fault(TS_VECTOR, 0x0C, true));
    let with_ldt = |m: &mut Mem| {
        m.w16(TSS_B + 0x60, SEL_LDT);
        m.w16(TSS_B + 0x5C, 0x0C);
    };
    let (r, st) = after_commit(with_ldt);
    assert_eq!(r, Ok(()));
    assert_eq!(st.ldtr.base, LDT);
    assert_eq!(st.segs[GS].base, 0x10000);
    // An LDT selector naming something else.
    assert_eq!(after_commit(|m| m.w16(TSS_B + 0x60, SEL_B)).0, fault(TS_VECTOR, u32::from(SEL_B), true));
    // EIP beyond CS's limit.
    let low_cs = |m: &mut Mem| m.w64(GDT + u64::from(CODE), 0x0040_9A00_0000_0FFF);
    assert_eq!(after_commit(low_cs).0, fault(GP_VECTOR, 0, true));
}

#[test]
fn the_error_code_push_checks_the_stack() {
    let (mut m, mut st) = setup();
    m.w32(TSS_B + 0x38, 2); // ESP 2: the push wraps
    let r = Request { error_code: Some(0), external: true, ..req(SEL_B, Source::Gate) };
    assert_eq!(switch(&mut m, &mut st, &r), fault(SS_VECTOR, 0, true));
}

#[test]
fn paging_on_the_tables_are_linear_and_cr3_switches() {
    // 32-bit paging: PD at 0x9000 maps 0-4 MiB through the PT at 0xA000;
    // the GDT and TSSs are reached at linear 0x40_0000 + x through a
    // second PDE to the same PT... here: identity for the low 1 MiB.
    let (mut m, mut st) = setup();
    m.w32(0x9000, 0xA000 | 3);
    for i in 0..256u64 {
        m.w32(0xA000 + 4 * i, ((i << 12) | 3) as u32);
    }
    // Task B's TSS page is not mapped for the first attempt.
    m.w32(0xA000 + 4 * 3, 0);
    st.cr0 |= CR0_PG;
    st.cr3 = 0x9000;
    let (m0, st0) = (m.0.clone(), st);
    let r = switch(&mut m, &mut st, &req(SEL_B, Source::Call));
    assert_eq!(r, Err(Error::Fault { fault: Fault::PageFault(PageFault { error_code: 0, address: TSS_B }), committed: false }));
    assert!(m.0 == m0 && st == st0);
    m.w32(0xA000 + 4 * 3, 0x3000 | 3);
    switch(&mut m, &mut st, &req(SEL_B, Source::Call)).unwrap();
    assert_eq!(st.cr3, 0x9000);
    m.w32(TSS_A + 0x1C, 0x9000);
    switch(&mut m, &mut st, &Request { return_eip: 0x5001, ..req(SEL_A, Source::Iret) }).unwrap();
    assert_eq!(st.eip, 0x1007);
}

#[test]
fn virtual_8086_tasks_get_real_mode_segments() {
    let (mut m, mut st) = setup();
    m.w32(TSS_B + 0x24, 0x2 | EFLAGS_VM);
    for i in 0..6 {
        m.w16(TSS_B + 0x48 + 4 * i, 0x1234);
    }
    switch(&mut m, &mut st, &req(SEL_B, Source::Jmp)).unwrap();
    assert_eq!(st.segs[CS], SegmentReg { selector: 0x1234, base: 0x12340, limit: 0xFFFF, attrib: 0xF3 });
}

/// Whatever the guest's tables hold, the emulation returns.
#[test]
fn hostile_tables_never_panic() {
    let mut seed = 0x1234_5678_9ABC_DEF0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let (mut m, mut st) = setup();
        for _ in 0..4 {
            let at = (next() % 0x5000) as usize & !7;
            let v = next();
            m.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        if next() % 4 == 0 {
            st.gdtr = TableReg { base: next() & 0xFFFF_FFFF, limit: (next() & 0xFFFF) as u32 };
        }
        if next() % 4 == 0 {
            st.cr0 |= CR0_PG;
            st.cr3 = next() & 0xFFFF_F000;
        }
        let source = [Source::Call, Source::Iret, Source::Jmp, Source::Gate][(next() % 4) as usize];
        let r = Request { error_code: (next() % 2 == 0).then_some(0), ..req(next() as u16, source) };
        let _ = switch(&mut m, &mut st, &r);
    }
}
