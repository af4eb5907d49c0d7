//! `page-walk`: `ferrite_x86::walk::translate` and `fetch_instruction_ex`
//! over guest page tables from the input, in every paging mode.
//!
//! Input: a 20-byte header (mode bits, access, MAXPHYADDR, CPL, CR3, the
//! linear address), then guest-physical memory from address 0; reads past
//! it fail, as unbacked guest memory does.
//!
//! Properties: a translation keeps the page offset, stays below
//! MAXPHYADDR (4 GiB for 32-bit paging without PSE) and is the identity
//! with paging off; what a user write may reach a user read reaches, and
//! what a user read reaches a supervisor read reaches (at the same
//! address); the walker reads only aligned 4/8-byte entries, at most one
//! per level; a #PF carries the faulting address and error-code bits that
//! match the access; a failed read is reported at the address refused; a
//! fetch returns 1 to 15 bytes as memory holds them, and a short one says
//! why.

use super::{le, Target};
use ferrite_x86::walk::{
    self, Access, AccessKind, CpuMode, GuestPhysRead, PageFault, PagingMode, PagingRegs, WalkError, CR0_PE, CR0_PG, CR0_WP,
    CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, PF_FETCH, PF_PRESENT, PF_RSVD, PF_USER,
    PF_WRITE,
};
use std::cell::RefCell;

pub const PAGE_WALK: Target = Target {
    name: "page-walk",
    about: "guest page walk and instruction fetch, all paging modes: offsets kept, results below MAXPHYADDR, privilege monotonic, aligned entry reads, #PF codes match the access",
    max_len: HEADER + 6 * 4096,
    seeds,
    dictionary: &[b"\x07\x20\x00\x00", b"\x07\x30\x00\x00", b"\x07\x40\x00\x00", b"\x87\x00\x00\x00", b"\x01\x10\x00\x00", b"\x00\x00\x00\x80"],
    run,
};

const HEADER: usize = 20;

/// Guest memory from the input; remembers every read.
struct Memory<'a> {
    bytes: &'a [u8],
    reads: RefCell<Vec<(u64, usize, bool)>>,
}

impl GuestPhysRead for Memory<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let src = usize::try_from(gpa).ok().and_then(|s| self.bytes.get(s..s.checked_add(buf.len())?));
        self.reads.borrow_mut().push((gpa, buf.len(), src.is_some()));
        buf.copy_from_slice(src.ok_or(())?);
        Ok(())
    }
}

struct Case {
    cpu: CpuMode,
    access: Access,
    linear: u64,
}

fn decode_header(input: &[u8]) -> Case {
    let (m, a) = (le(input, 0, 1), le(input, 1, 1));
    let bit = |v: u64, n: u32| v >> n & 1 != 0;
    let mut cr0 = if bit(a, 5) { CR0_PE } else { 0 };
    let (mut cr4, mut efer) = (0, 0);
    if bit(m, 0) {
        cr0 |= CR0_PG | CR0_PE;
    }
    if bit(m, 1) {
        cr4 |= CR4_PAE;
    }
    if bit(m, 2) {
        efer |= EFER_LME | EFER_LMA;
    }
    if bit(m, 3) {
        cr4 |= CR4_LA57;
    }
    if bit(m, 4) {
        cr4 |= CR4_PSE;
    }
    if bit(m, 5) {
        cr0 |= CR0_WP;
    }
    if bit(m, 6) {
        efer |= EFER_NXE;
    }
    if bit(m, 7) {
        cr4 |= CR4_SMEP;
    }
    if bit(a, 0) {
        cr4 |= CR4_SMAP;
    }
    let kind = match a >> 2 & 3 {
        1 => AccessKind::Write,
        2 => AccessKind::Execute,
        _ => AccessKind::Read,
    };
    let paging = PagingRegs { cr0, cr3: le(input, 4, 8), cr4, efer, max_phys_bits: le(input, 2, 1) as u8 };
    Case {
        cpu: CpuMode { paging, cs_base: 0, cs_l: bit(a, 6), cs_db: bit(a, 7), cpl: le(input, 3, 1) as u8 & 3 },
        access: Access { kind, user: bit(a, 1), smap_allowed: bit(a, 4) },
        linear: le(input, 12, 8),
    }
}

fn run(input: &[u8]) {
    let case = decode_header(input);
    let mem = Memory { bytes: input.get(HEADER..).unwrap_or(&[]), reads: RefCell::new(Vec::new()) };
    let regs = case.cpu.paging;
    let mode = regs.mode();
    let long = matches!(mode, PagingMode::Level4 | PagingMode::Level5);
    let address = if long { case.linear } else { case.linear & 0xffff_ffff };
    let maxphy = u32::from(regs.max_phys_bits).clamp(32, 52);

    let result = walk::translate(&mem, &regs, case.linear, case.access);
    check_reads(&mem, mode);
    match result {
        Ok(gpa) => {
            assert_eq!(gpa & 0xfff, address & 0xfff, "page offset changed");
            match mode {
                PagingMode::Off => assert_eq!(gpa, address, "paging off is the identity"),
                PagingMode::Legacy32 if regs.cr4 & CR4_PSE == 0 => assert!(gpa < 1 << 32),
                _ => assert!(gpa < 1 << maxphy, "{gpa:#x} is above MAXPHYADDR {maxphy}"),
            }
            check_monotonic(&mem, &regs, case.linear, case.access, gpa);
        }
        Err(WalkError::PageFault(PageFault { error_code, address: fault_at })) => {
            assert_ne!(mode, PagingMode::Off, "a #PF with paging off");
            assert_eq!(fault_at, address, "CR2");
            assert_eq!(error_code & PF_USER != 0, case.access.user, "U/S bit of {error_code:#x}");
            assert_eq!(error_code & PF_WRITE != 0, case.access.kind == AccessKind::Write, "W/R bit of {error_code:#x}");
            if error_code & PF_FETCH != 0 {
                assert_eq!(case.access.kind, AccessKind::Execute);
            }
            if error_code & PF_RSVD != 0 {
                assert!(error_code & PF_PRESENT != 0, "RSVD without P: {error_code:#x}");
            }
            assert_eq!(error_code & !(PF_PRESENT | PF_WRITE | PF_USER | PF_RSVD | PF_FETCH), 0);
        }
        Err(WalkError::PhysReadFailed { gpa }) => {
            let last = *mem.reads.borrow().last().expect("a failed read");
            assert_eq!((last.0, last.2), (gpa, false), "reported {gpa:#x}, refused {last:?}");
        }
        Err(WalkError::NonCanonical { address }) => {
            assert!(long, "non-canonical outside long mode");
            let top = if mode == PagingMode::Level5 { 56 } else { 47 };
            let sign = address >> top;
            assert!(sign != 0 && sign != u64::MAX >> top, "{address:#x} is canonical");
        }
    }

    mem.reads.borrow_mut().clear();
    let rip = case.linear;
    if let Ok(f) = walk::fetch_instruction_ex(&mem, &case.cpu, rip) {
        assert!((1..=15).contains(&f.len), "fetched {} bytes", f.len);
        assert!(f.bytes[f.len..].iter().all(|&b| b == 0), "bytes past the fetch");
        assert_eq!(f.len < 15, f.tail_error.is_some(), "a short fetch must say why");
        let gpa = walk::translate(&mem, &case.cpu.paging, case.cpu.code_linear(rip), Access::execute(case.cpu.cpl == 3)).expect("the first byte translated");
        let mut first = [0u8];
        mem.read_phys(gpa, &mut first).expect("the first byte was read");
        assert_eq!(f.bytes[0], first[0], "the first byte fetched is the byte in memory");
    }
}

/// Entry reads: aligned, 4 or 8 bytes, at most one per paging level (plus
/// nothing else).
fn check_reads(mem: &Memory<'_>, mode: PagingMode) {
    let reads = mem.reads.borrow();
    let (levels, width) = match mode {
        PagingMode::Off => (0, 8),
        PagingMode::Legacy32 => (2, 4),
        PagingMode::Pae => (3, 8),
        PagingMode::Level4 => (4, 8),
        PagingMode::Level5 => (5, 8),
    };
    assert!(reads.len() <= levels, "{} reads for {levels} levels", reads.len());
    for &(gpa, len, _) in reads.iter() {
        assert_eq!(len, width, "entry read of {len} bytes");
        assert_eq!(gpa % width as u64, 0, "misaligned entry read at {gpa:#x}");
        assert!(gpa < 1 << 52, "entry read at {gpa:#x}");
    }
}

/// Less privileged accesses that succeed imply the more privileged ones do,
/// to the same address.
fn check_monotonic(mem: &Memory<'_>, regs: &PagingRegs, linear: u64, access: Access, gpa: u64) {
    let weaker: &[Access] = match (access.kind, access.user) {
        (AccessKind::Write, true) => &[Access::read(true), Access { kind: AccessKind::Write, user: false, smap_allowed: true }],
        (AccessKind::Read, true) => &[Access { kind: AccessKind::Read, user: false, smap_allowed: true }],
        (AccessKind::Write, false) => &[Access { kind: AccessKind::Read, user: false, smap_allowed: access.smap_allowed }],
        _ => &[],
    };
    for &w in weaker {
        assert_eq!(walk::translate(mem, regs, linear, w), Ok(gpa), "{access:?} succeeds but {w:?} does not");
    }
}

// ---------------------------------------------------------------------------
// Seeds: one valid mapping per paging mode. Memory pages: 0 data, 1-5
// tables.

fn header(mode: u8, access: u8, cr3: u64, linear: u64) -> Vec<u8> {
    let mut v = vec![mode, access, 48, 0];
    v.extend_from_slice(&cr3.to_le_bytes());
    v.extend_from_slice(&linear.to_le_bytes());
    v.resize(HEADER + 6 * 4096, 0);
    // Page 0: instruction bytes to fetch.
    for (i, b) in v[HEADER..HEADER + 4096].iter_mut().enumerate() {
        *b = [0x89, 0x07, 0x48, 0x8b, 0x03, 0x66, 0xc7, 0x00][i % 8];
    }
    v
}

fn entry(v: &mut [u8], table_page: u64, index: u64, value: u64, wide: bool) {
    let at = HEADER + (table_page * 4096 + index * if wide { 8 } else { 4 }) as usize;
    let w = if wide { 8 } else { 4 };
    v[at..at + w].copy_from_slice(&value.to_le_bytes()[..w]);
}

fn seeds() -> Vec<Vec<u8>> {
    const PE: u8 = 1 << 5;
    let mut out = Vec::new();
    // Paging off.
    out.push(header(0, PE, 0, 0x123));
    // 4-level: 0x20_0123 -> PML4 p1 -> PDPT p2 -> PD p3 (index 1) -> PT p4 -> page 0.
    let mut v = header(0b0100_0111, PE | 1 << 6 | 1 << 1, 0x1000, 0x20_0123);
    entry(&mut v, 1, 0, 0x2007, true);
    entry(&mut v, 2, 0, 0x3007, true);
    entry(&mut v, 3, 1, 0x4007, true);
    entry(&mut v, 4, 0, 0x0007, true);
    out.push(v.clone());
    // The same as a write and as a fetch.
    v[1] = PE | 1 << 6 | 1 << 1 | 1 << 2;
    out.push(v.clone());
    v[1] = PE | 1 << 6 | 2 << 2;
    out.push(v);
    // 5-level: one more level on top (PML5 p5).
    let mut v = header(0b0100_1111, PE | 1 << 6, 0x5000, 0x20_0123);
    entry(&mut v, 5, 0, 0x1007, true);
    entry(&mut v, 1, 0, 0x2007, true);
    entry(&mut v, 2, 0, 0x3007, true);
    entry(&mut v, 3, 1, 0x4007, true);
    entry(&mut v, 4, 0, 0x0007, true);
    out.push(v);
    // 4-level with a 2 MiB page and a 1 GiB page.
    let mut v = header(0b0000_0111, PE, 0x1000, 0x4000_0123);
    entry(&mut v, 1, 0, 0x2007, true);
    entry(&mut v, 2, 1, 0x0000_0087, true);
    entry(&mut v, 2, 0, 0x3007, true);
    entry(&mut v, 3, 0, 0x87, true);
    out.push(v);
    // PAE: PDPT p1 (P only) -> PD p3 (index 1) -> PT p4 -> page 0.
    let mut v = header(0b0000_0011, PE | 1 << 7, 0x1000, 0x20_0123);
    entry(&mut v, 1, 0, 0x3001, true);
    entry(&mut v, 3, 1, 0x4007, true);
    entry(&mut v, 4, 0, 0x0007, true);
    out.push(v);
    // 32-bit: PD p1 -> PT p4 (index 2) -> page 0; and a 4 MiB PSE page.
    let mut v = header(0b0000_0001, PE | 1 << 7, 0x1000, 0x2123);
    entry(&mut v, 1, 0, 0x4007, false);
    entry(&mut v, 4, 2, 0x0007, false);
    out.push(v);
    let mut v = header(0b0001_0001, PE | 1 << 7, 0x1000, 0x123);
    entry(&mut v, 1, 0, 0x0087, false);
    out.push(v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_translate_to_page_zero() {
        for s in seeds() {
            let case = decode_header(&s);
            let mem = Memory { bytes: &s[HEADER..], reads: RefCell::new(Vec::new()) };
            let gpa = walk::translate(&mem, &case.cpu.paging, case.linear, case.access);
            assert_eq!(gpa, Ok(0x123), "{:?}", case.cpu.paging.mode());
            run(&s);
        }
    }
}
