//! Hardware task switches (Intel SDM vol. 3A 7.3, 7.2, 6.11-6.12; AMD APM
//! vol. 2, 12.3), emulated for a hypervisor whose CPU exits instead of
//! switching (VMX exit reason 9).
//!
//! [`switch`] works on a [`CpuState`] (registers, segments, control
//! registers) and the guest's memory ([`GuestPhys`]); the GDT and the TSSs
//! are reached by linear address through the guest's page tables
//! ([`crate::walk::translate`]), with the CR3 of whichever task is current
//! at that step. Only 32-bit TSSs are emulated; a 16-bit one, and a task
//! switch in IA-32e mode (where the CPU raises #GP itself), are refused
//! with a named reason.
//!
//! The steps and their faults follow SDM 7.3 and table 7-1:
//!
//! * Before the commit point (nothing in the CPU state has changed when a
//!   fault comes back, `committed: false`): the new TSS selector against
//!   the GDT, its descriptor's type (available for CALL, JMP and events,
//!   busy for IRET), presence and limit (>= 0x67), optionally the privilege
//!   check of a CALL/JMP to a TSS descriptor, then every page the switch
//!   will read or write (old TSS, new TSS, both descriptors).
//! * The commit: the old task's state saved in its TSS (EIP as the caller
//!   says: after the instruction for CALL/JMP/IRET and software interrupts,
//!   at the interrupted instruction for other events), busy bits and NT as
//!   the source requires, the back link for CALL and events, TR, CR3 (with
//!   paging), LDTR, EFLAGS, EIP, the general registers and the segment
//!   selectors loaded, CR0.TS set.
//! * After it (`committed: true`, the new task's state is in `CpuState`):
//!   LDTR, SS, the data segments and CS are loaded from their descriptors
//!   and checked, EIP against the CS limit, and an error code is pushed on
//!   the new stack. A fault here belongs to the new task.
//!
//! Every value the guest supplies is checked; nothing here panics or
//! loops over a guest-controlled count.

use crate::walk::{translate, Access, GuestPhysRead, PageFault, PagingRegs, WalkError, CR0_PG, EFER_LMA};

/// Guest-physical memory the task switch may write (descriptor busy and
/// accessed bits, the TSSs, the error code on the new stack).
#[allow(clippy::result_unit_err)]
pub trait GuestPhys: GuestPhysRead {
    /// `Err(())` when any byte of the range is not guest RAM.
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()>;
}

/// A segment register with its descriptor cache, in the form the
/// hypervisor's backends keep it: `limit` in bytes (granularity applied),
/// `attrib` the 12-bit "compressed" access rights (bits 7:0 type, S, DPL,
/// P; bits 11:8 AVL, L, D/B, G). `attrib` 0 means unusable (a null
/// selector was loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentReg {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub attrib: u16,
}

impl SegmentReg {
    fn dpl(&self) -> u8 {
        ((self.attrib >> 5) & 3) as u8
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableReg {
    pub base: u64,
    pub limit: u32,
}

/// The state a task switch reads and changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI (the encoding's order).
    pub gprs: [u32; 8],
    pub eip: u32,
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS.
    pub segs: [SegmentReg; 6],
    pub ldtr: SegmentReg,
    pub tr: SegmentReg,
    pub gdtr: TableReg,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// MAXPHYADDR for the page walks.
    pub max_phys_bits: u8,
}

pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

const EFLAGS_NT: u32 = 1 << 14;
const EFLAGS_VM: u32 = 1 << 17;
/// Bits a 32-bit EFLAGS image can hold (CF, 1, PF, AF, ZF, SF, TF, IF, DF,
/// OF, IOPL, NT, RF, VM, AC, VIF, VIP, ID); bit 1 always reads as 1.
const EFLAGS_DEFINED: u32 = 0x003F_7FD5;
const CR0_TS: u64 = 1 << 3;

/// What started the task switch (VMX exit qualification bits 31:30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Call,
    Iret,
    Jmp,
    /// A task gate in the IDT: an interrupt, exception or NMI.
    Gate,
}

/// One task switch to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The new task's TSS selector (for IRET, the back link).
    pub selector: u16,
    pub source: Source,
    /// The EIP saved in the old task's TSS: past the instruction for CALL,
    /// JMP, IRET and software interrupts, the interrupted instruction's
    /// for other events.
    pub return_eip: u32,
    /// An exception with an error code came through the task gate: the
    /// code is pushed on the new task's stack.
    pub error_code: Option<u32>,
    /// The event came from outside the program (an interrupt, NMI or
    /// exception, not INT n): faults' error codes get EXT (bit 0).
    pub external: bool,
    /// Check CPL and the selector's RPL against the TSS descriptor's DPL
    /// (a CALL or JMP straight to a TSS descriptor). VMX checks this itself
    /// before it exits, and through a task gate the TSS's DPL is not used,
    /// so a VMX caller passes false.
    pub check_privilege: bool,
}

/// A fault the task switch raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Exception { vector: u8, error_code: Option<u32> },
    PageFault(PageFault),
}

pub const TS_VECTOR: u8 = 10;
pub const NP_VECTOR: u8 = 11;
pub const SS_VECTOR: u8 = 12;
pub const GP_VECTOR: u8 = 13;

/// Why a task switch did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The guest takes `fault`. Before the commit point the state is as it
    /// was; after it, the new task's state is loaded (as far as it got) and
    /// the fault is the new task's.
    Fault { fault: Fault, committed: bool },
    /// A task switch this module does not emulate (named).
    Unsupported(&'static str),
    /// A guest-physical address the switch needs is not RAM (the domain's
    /// own page tables point outside it).
    Memory { gpa: u64 },
}

fn exception(vector: u8, error_code: u32) -> Fault {
    Fault::Exception { vector, error_code: Some(error_code) }
}

/// A selector-style error code: the selector's index and TI, with EXT.
fn sel_code(selector: u16, external: bool) -> u32 {
    u32::from(selector & 0xFFFC) | u32::from(external)
}

/// A descriptor as read from a table.
#[derive(Clone, Copy, Debug)]
struct Descriptor {
    raw: u64,
    /// Linear address of the descriptor (for the busy and accessed bits).
    linear: u64,
}

impl Descriptor {
    fn base(&self) -> u64 {
        ((self.raw >> 16) & 0xFF_FFFF) | (((self.raw >> 56) & 0xFF) << 24)
    }
    fn limit(&self) -> u32 {
        let raw = ((self.raw & 0xFFFF) | (((self.raw >> 48) & 0xF) << 16)) as u32;
        if self.raw & (1 << 55) != 0 {
            (raw << 12) | 0xFFF
        } else {
            raw
        }
    }
    fn attrib(&self) -> u16 {
        (((self.raw >> 40) & 0xFF) | (((self.raw >> 52) & 0xF) << 8)) as u16
    }
    fn kind(&self) -> u8 {
        ((self.raw >> 40) & 0xF) as u8
    }
    fn system(&self) -> bool {
        self.raw & (1 << 44) == 0
    }
    fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }
    fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }
    fn segment(&self, selector: u16) -> SegmentReg {
        SegmentReg { selector, base: self.base(), limit: self.limit(), attrib: self.attrib() }
    }
}

/// Linear-address access through the guest's page tables as they are at
/// this step (`paging`: the current task's CR3). Descriptor-table and TSS
/// accesses are implicit supervisor accesses.
struct Linear<'m, M: GuestPhys> {
    mem: &'m mut M,
    paging: PagingRegs,
}

fn walk_error(e: WalkError) -> Error {
    match e {
        WalkError::PageFault(pf) => Error::Fault { fault: Fault::PageFault(pf), committed: false },
        WalkError::PhysReadFailed { gpa } => Error::Memory { gpa },
        // Outside IA-32e mode linear addresses are 32 bits: cannot happen.
        WalkError::NonCanonical { .. } => Error::Fault { fault: exception(GP_VECTOR, 0), committed: false },
    }
}

impl<M: GuestPhys> Linear<'_, M> {
    /// Translates every page of `len` (at most 0x1000) bytes at `linear`
    /// (wrapping at 4 GiB) into (gpa, offset, length) pieces, all before
    /// any is used, so that a fault leaves memory untouched.
    fn pieces(&self, linear: u64, len: usize, write: bool) -> Result<[(u64, usize, usize); 2], Error> {
        let access = if write { Access::write(false) } else { Access::read(false) };
        let mut out = [(0u64, 0usize, 0usize); 2];
        let mut done = 0usize;
        let mut i = 0;
        while done < len && i < 2 {
            let addr = linear.wrapping_add(done as u64) & 0xFFFF_FFFF;
            let in_page = (0x1000 - (addr & 0xFFF)) as usize;
            let n = in_page.min(len - done);
            let gpa = translate(&*self.mem, &self.paging, addr, access).map_err(walk_error)?;
            out[i] = (gpa, done, n);
            done += n;
            i += 1;
        }
        if done < len {
            // Callers pass at most one page's worth.
            return Err(Error::Unsupported("a task-switch access longer than a page"));
        }
        Ok(out)
    }

    fn read(&self, linear: u64, buf: &mut [u8]) -> Result<(), Error> {
        for (gpa, off, n) in self.pieces(linear, buf.len(), false)? {
            if n != 0 {
                self.mem.read_phys(gpa, &mut buf[off..off + n]).map_err(|()| Error::Memory { gpa })?;
            }
        }
        Ok(())
    }

    fn probe_write(&self, linear: u64, len: usize) -> Result<(), Error> {
        self.pieces(linear, len, true).map(|_| ())
    }

    fn write(&mut self, linear: u64, data: &[u8]) -> Result<(), Error> {
        for (gpa, off, n) in self.pieces(linear, data.len(), true)? {
            if n != 0 {
                self.mem.write_phys(gpa, &data[off..off + n]).map_err(|()| Error::Memory { gpa })?;
            }
        }
        Ok(())
    }

    fn read_u64(&self, linear: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.read(linear, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Offsets in a 32-bit TSS.
mod tss {
    pub const LINK: u64 = 0x00;
    pub const CR3: usize = 0x1C;
    pub const EIP: usize = 0x20;
    pub const EFLAGS: usize = 0x24;
    pub const EAX: usize = 0x28;
    pub const ES: usize = 0x48;
    pub const LDT: usize = 0x60;
    /// The dynamic fields a task switch saves: EIP up to GS.
    pub const SAVE_START: u64 = 0x20;
    pub const SAVE_END: u64 = 0x60;
    pub const SIZE: usize = 0x68;
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// The GDT descriptor `selector` names, with the fault for a selector
/// outside the GDT (or in an LDT).
fn gdt_descriptor<M: GuestPhys>(mem: &Linear<'_, M>, st: &CpuState, selector: u16, outside: Fault) -> Result<Descriptor, Error> {
    let offset = u64::from(selector & 0xFFF8);
    if selector & 4 != 0 || offset + 7 > u64::from(st.gdtr.limit) {
        return Err(Error::Fault { fault: outside, committed: false });
    }
    let linear = st.gdtr.base.wrapping_add(offset) & 0xFFFF_FFFF;
    Ok(Descriptor { raw: mem.read_u64(linear)?, linear })
}

fn paging_of(st: &CpuState) -> PagingRegs {
    PagingRegs { cr0: st.cr0, cr3: st.cr3, cr4: st.cr4, efer: st.efer, max_phys_bits: st.max_phys_bits }
}

/// Emulates the task switch `req` on `st` and `mem` (see the module
/// comment). On `Ok` the new task is running; on `Error::Fault` with
/// `committed: false` `st` is unchanged.
pub fn switch<M: GuestPhys>(mem: &mut M, st: &mut CpuState, req: &Request) -> Result<(), Error> {
    if st.efer & EFER_LMA != 0 {
        return Err(Error::Unsupported("a task switch in IA-32e mode (the CPU raises #GP for it)"));
    }
    let ext = req.external;
    let sel = req.selector;
    let lin = Linear { mem, paging: paging_of(st) };

    // The new TSS descriptor: in the GDT, a TSS of the type the source
    // needs, present, large enough. (VMX makes these checks before it
    // exits; the guest may have changed the GDT since, so again.)
    let outside = match req.source {
        Source::Iret => exception(TS_VECTOR, sel_code(sel, ext)),
        _ => exception(GP_VECTOR, sel_code(sel, ext)),
    };
    let new_desc = gdt_descriptor(&lin, st, sel, outside)?;
    let want_busy = req.source == Source::Iret;
    let kind = new_desc.kind();
    let is_tss = new_desc.system() && matches!(kind, 1 | 3 | 9 | 11);
    if !is_tss || (kind & 2 != 0) != want_busy {
        return Err(Error::Fault { fault: outside, committed: false });
    }
    if kind & 8 == 0 {
        return Err(Error::Unsupported("a task switch to a 16-bit TSS"));
    }
    if req.check_privilege && matches!(req.source, Source::Call | Source::Jmp) {
        let cpl = st.segs[SS].dpl();
        if cpl.max((sel & 3) as u8) > new_desc.dpl() {
            return Err(Error::Fault { fault: exception(GP_VECTOR, sel_code(sel, ext)), committed: false });
        }
    }
    if !new_desc.present() {
        return Err(Error::Fault { fault: exception(NP_VECTOR, sel_code(sel, ext)), committed: false });
    }
    if new_desc.limit() < 0x67 {
        return Err(Error::Fault { fault: exception(TS_VECTOR, sel_code(sel, ext)), committed: false });
    }
    let new_base = new_desc.base();

    // The old task: TR must hold a 32-bit busy TSS to save into.
    let old = st.tr;
    match old.attrib & 0xF {
        11 => {}
        3 => return Err(Error::Unsupported("a task switch from a 16-bit TSS")),
        _ => return Err(Error::Unsupported("a task switch while TR holds no busy TSS")),
    }
    let old_desc = if matches!(req.source, Source::Jmp | Source::Iret) {
        Some(gdt_descriptor(&lin, st, old.selector, exception(TS_VECTOR, sel_code(old.selector, ext)))?)
    } else {
        None
    };

    // Every page the switch reads or writes, before anything changes.
    let mut image = [0u8; tss::SIZE];
    lin.read(new_base, &mut image)?;
    lin.probe_write(old.base.wrapping_add(tss::SAVE_START), (tss::SAVE_END - tss::SAVE_START) as usize)?;
    if let Some(d) = old_desc {
        lin.probe_write(d.linear + 5, 1)?;
    }
    if req.source != Source::Iret {
        lin.probe_write(new_desc.linear + 5, 1)?;
    }
    let link = matches!(req.source, Source::Call | Source::Gate);
    if link {
        lin.probe_write(new_base.wrapping_add(tss::LINK), 2)?;
    }

    // Save the old task. IRET clears NT in the saved image.
    let mut lin = lin;
    if let Some(d) = old_desc {
        lin.write(d.linear + 5, &[((d.raw >> 40) as u8) & !2])?;
    }
    let mut saved_flags = st.eflags;
    if req.source == Source::Iret {
        saved_flags &= !EFLAGS_NT;
    }
    let mut save = [0u8; (tss::SAVE_END - tss::SAVE_START) as usize];
    save[0..4].copy_from_slice(&req.return_eip.to_le_bytes());
    save[4..8].copy_from_slice(&saved_flags.to_le_bytes());
    for (i, r) in st.gprs.iter().enumerate() {
        save[8 + 4 * i..12 + 4 * i].copy_from_slice(&r.to_le_bytes());
    }
    // Selectors in the low half of each slot; the upper half is kept.
    let mut old_image = [0u8; (tss::SAVE_END - tss::SAVE_START) as usize];
    lin.read(old.base.wrapping_add(tss::SAVE_START), &mut old_image)?;
    save[0x28..].copy_from_slice(&old_image[0x28..]);
    for (i, s) in st.segs.iter().enumerate() {
        let off = tss::ES - tss::SAVE_START as usize + 4 * i;
        save[off..off + 2].copy_from_slice(&s.selector.to_le_bytes());
    }
    lin.write(old.base.wrapping_add(tss::SAVE_START), &save)?;
    if link {
        lin.write(new_base.wrapping_add(tss::LINK), &old.selector.to_le_bytes())?;
    }
    if req.source != Source::Iret {
        lin.write(new_desc.linear + 5, &[((new_desc.raw >> 40) as u8) | 2])?;
    }

    // The commit point: the new task's state goes in.
    let mut eflags = (u32_at(&image, tss::EFLAGS) & EFLAGS_DEFINED) | 2;
    if link {
        eflags |= EFLAGS_NT;
    }
    st.tr = SegmentReg { selector: sel, base: new_base, limit: new_desc.limit(), attrib: new_desc.attrib() | 2 };
    if st.cr0 & CR0_PG != 0 {
        st.cr3 = u64::from(u32_at(&image, tss::CR3));
    }
    st.eip = u32_at(&image, tss::EIP);
    st.eflags = eflags;
    for (i, r) in st.gprs.iter_mut().enumerate() {
        *r = u32_at(&image, tss::EAX + 4 * i);
    }
    let selectors: [u16; 6] = core::array::from_fn(|i| u16_at(&image, tss::ES + 4 * i));
    let ldt_sel = u16_at(&image, tss::LDT);
    st.cr0 |= CR0_TS;
    // Until loaded below, the data segments are unusable; CS and SS keep
    // their caches (a state VM entry accepts) with the new selectors.
    for (i, s) in st.segs.iter_mut().enumerate() {
        s.selector = selectors[i];
        if i != CS && i != SS {
            s.attrib = 0;
        }
    }
    st.ldtr = SegmentReg { selector: ldt_sel, ..SegmentReg::default() };

    let mut lin = Linear { mem: lin.mem, paging: paging_of(st) };
    let committed = |fault: Fault| Error::Fault { fault, committed: true };
    let after = |e: Error| match e {
        Error::Fault { fault, .. } => committed(fault),
        other => other,
    };
    load_new_task(&mut lin, st, ext, &selectors, ldt_sel).map_err(after)?;

    // EIP within the new CS.
    if st.eip > st.segs[CS].limit {
        return Err(committed(exception(GP_VECTOR, 0)));
    }
    if let Some(code) = req.error_code {
        push_error_code(&mut lin, st, code).map_err(after)?;
    }
    Ok(())
}

/// Loads LDTR and the segment registers from their descriptors with the
/// checks of SDM table 7-1 (faults are the new task's).
fn load_new_task<M: GuestPhys>(lin: &mut Linear<'_, M>, st: &mut CpuState, ext: bool, selectors: &[u16; 6], ldt_sel: u16) -> Result<(), Error> {
    let ts = |s: u16| Error::Fault { fault: exception(TS_VECTOR, sel_code(s, ext)), committed: true };
    if st.eflags & EFLAGS_VM != 0 {
        // Virtual-8086 mode: real-mode style segments, CPL 3.
        if ldt_sel & 0xFFFC != 0 {
            st.ldtr = load_ldt(lin, st, ldt_sel, ext)?;
        }
        for (i, s) in st.segs.iter_mut().enumerate() {
            *s = SegmentReg { selector: selectors[i], base: u64::from(selectors[i]) << 4, limit: 0xFFFF, attrib: 0xF3 };
        }
        return Ok(());
    }
    if ldt_sel & 0xFFFC != 0 {
        st.ldtr = load_ldt(lin, st, ldt_sel, ext)?;
    }
    // The new CPL is CS's RPL.
    let cpl = (selectors[CS] & 3) as u8;

    // SS: a writable data segment at CPL, present (else #SS).
    let ss_sel = selectors[SS];
    if ss_sel & 0xFFFC == 0 || (ss_sel & 3) as u8 != cpl {
        return Err(ts(ss_sel));
    }
    let d = descriptor(lin, st, ss_sel).ok_or_else(|| ts(ss_sel))??;
    if d.system() || d.kind() & 0xA != 0x2 || d.dpl() != cpl {
        return Err(ts(ss_sel));
    }
    if !d.present() {
        return Err(Error::Fault { fault: exception(SS_VECTOR, sel_code(ss_sel, ext)), committed: true });
    }
    st.segs[SS] = loaded(lin, d, ss_sel)?;

    for i in [DS, ES, FS, GS] {
        let s = selectors[i];
        if s & 0xFFFC == 0 {
            // A null selector: the register is unusable.
            st.segs[i] = SegmentReg { selector: s, ..SegmentReg::default() };
            continue;
        }
        let d = descriptor(lin, st, s).ok_or_else(|| ts(s))??;
        let code = d.kind() & 8 != 0;
        let readable = !code || d.kind() & 2 != 0;
        let conforming = code && d.kind() & 4 != 0;
        if d.system() || !readable || (!conforming && (cpl > d.dpl() || (s & 3) as u8 > d.dpl())) {
            return Err(ts(s));
        }
        if !d.present() {
            return Err(Error::Fault { fault: exception(NP_VECTOR, sel_code(s, ext)), committed: true });
        }
        st.segs[i] = loaded(lin, d, s)?;
    }

    // CS: code, DPL = CPL (non-conforming) or <= CPL (conforming), present.
    let cs_sel = selectors[CS];
    if cs_sel & 0xFFFC == 0 {
        return Err(ts(cs_sel));
    }
    let d = descriptor(lin, st, cs_sel).ok_or_else(|| ts(cs_sel))??;
    let conforming = d.kind() & 4 != 0;
    if d.system() || d.kind() & 8 == 0 || (conforming && d.dpl() > cpl) || (!conforming && d.dpl() != cpl) {
        return Err(ts(cs_sel));
    }
    if !d.present() {
        return Err(Error::Fault { fault: exception(NP_VECTOR, sel_code(cs_sel, ext)), committed: true });
    }
    st.segs[CS] = loaded(lin, d, cs_sel)?;
    Ok(())
}

/// The new task's LDT: a present LDT descriptor in the GDT, else #TS.
fn load_ldt<M: GuestPhys>(lin: &mut Linear<'_, M>, st: &CpuState, sel: u16, ext: bool) -> Result<SegmentReg, Error> {
    let ts = exception(TS_VECTOR, sel_code(sel, ext));
    let d = gdt_descriptor(lin, st, sel, ts)?;
    if !d.system() || d.kind() != 2 || !d.present() {
        return Err(Error::Fault { fault: ts, committed: true });
    }
    Ok(d.segment(sel))
}

/// The descriptor `selector` names in the GDT or the (new) LDT; `None`
/// when it lies outside its table.
fn descriptor<M: GuestPhys>(lin: &Linear<'_, M>, st: &CpuState, selector: u16) -> Option<Result<Descriptor, Error>> {
    let offset = u64::from(selector & 0xFFF8);
    let (base, limit) = if selector & 4 != 0 {
        if st.ldtr.attrib & 0x80 == 0 {
            return None;
        }
        (st.ldtr.base, st.ldtr.limit)
    } else {
        (st.gdtr.base, st.gdtr.limit)
    };
    if offset + 7 > u64::from(limit) {
        return None;
    }
    let linear = base.wrapping_add(offset) & 0xFFFF_FFFF;
    Some(lin.read_u64(linear).map(|raw| Descriptor { raw, linear }))
}

/// The segment register a descriptor loads, with the accessed bit set in
/// the table as the CPU sets it.
fn loaded<M: GuestPhys>(lin: &mut Linear<'_, M>, d: Descriptor, selector: u16) -> Result<SegmentReg, Error> {
    let mut seg = d.segment(selector);
    if d.kind() & 1 == 0 {
        lin.write(d.linear + 5, &[((d.raw >> 40) as u8) | 1])?;
        seg.attrib |= 1;
    }
    Ok(seg)
}

/// Pushes `code` (32 bits: a 32-bit TSS) on the new task's stack: #SS(0)
/// when it does not fit below ESP within SS's limits.
fn push_error_code<M: GuestPhys>(lin: &mut Linear<'_, M>, st: &mut CpuState, code: u32) -> Result<(), Error> {
    let ss = st.segs[SS];
    let big = ss.attrib & (1 << 10) != 0;
    let mask: u32 = if big { u32::MAX } else { 0xFFFF };
    let esp = st.gprs[4];
    let new_sp = esp.wrapping_sub(4) & mask;
    let expand_down = ss.attrib & 4 != 0;
    let upper = if expand_down { mask } else { ss.limit };
    let fits = if expand_down {
        new_sp > ss.limit && u64::from(new_sp) + 3 <= u64::from(upper)
    } else {
        u64::from(new_sp) + 3 <= u64::from(upper)
    };
    if !fits {
        return Err(Error::Fault { fault: exception(SS_VECTOR, 0), committed: true });
    }
    let linear = ss.base.wrapping_add(u64::from(new_sp)) & 0xFFFF_FFFF;
    lin.write(linear, &code.to_le_bytes())?;
    st.gprs[4] = (esp & !mask) | new_sp;
    Ok(())
}

#[cfg(test)]
mod tests;
