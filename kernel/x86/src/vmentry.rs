//! The checks VM entry applies to the guest-state area of a VMCS (Intel
//! SDM vol. 3C, "Checks on the Guest State Area": 27.3.1 in recent
//! editions, 26.3.1 in older ones), redone in software. The CPU only says
//! "VM-entry failure due to invalid guest state" (exit reason 33); when it
//! does, [`first_failing_check`] names the field and the rule, for the
//! domain's crash report. Guest writes are checked before they reach the
//! VMCS (`cr`), so none of these should ever fail.
//!
//! Also here: the text of the VM-instruction error numbers
//! ([`vm_instruction_error`]) and of the other VM-entry failure exits
//! ([`EntryFailure`]), for the failures that are not guest-state checks.
//!
//! Checks that need memory (the VMCS link pointer's revision identifier,
//! PDPTEs loaded from CR3 without EPT) or features Ferrite does not give
//! guests (SMM, CET state, PKRS, enclaves, the DEBUGCTL and PAT fields)
//! are left out.

use crate::cr::{beyond_max_phys, cr0, cr4, efer};
use core::fmt;

/// A segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxSegment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// VMX access rights: type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13,
    /// D/B 14, G 15, unusable 16; bits 11:8 and 31:17 reserved.
    pub access_rights: u32,
}

/// Access-rights bits.
pub mod ar {
    pub const S: u32 = 1 << 4;
    pub const P: u32 = 1 << 7;
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    pub const UNUSABLE: u32 = 1 << 16;
    pub const RESERVED: u32 = 0xFFFE_0F00;
}

impl VmxSegment {
    fn usable(&self) -> bool {
        self.access_rights & ar::UNUSABLE == 0
    }
    fn seg_type(&self) -> u8 {
        (self.access_rights & 0xF) as u8
    }
    fn dpl(&self) -> u8 {
        ((self.access_rights >> 5) & 3) as u8
    }
    fn rpl(&self) -> u8 {
        (self.selector & 3) as u8
    }
    fn has(&self, bit: u32) -> bool {
        self.access_rights & bit != 0
    }
}

/// The VMCS fields the checks read: the guest-state area and the few
/// controls the rules depend on.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmxGuestState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr7: u64,
    /// IA32_EFER (checked only with `load_efer`).
    pub efer: u64,
    pub rflags: u64,
    pub rip: u64,
    /// ES, CS, SS, DS, FS, GS, in the VMCS's order.
    pub segs: [VmxSegment; 6],
    pub tr: VmxSegment,
    pub ldtr: VmxSegment,
    pub gdtr_base: u64,
    pub gdtr_limit: u32,
    pub idtr_base: u64,
    pub idtr_limit: u32,
    pub interruptibility: u32,
    pub activity: u32,
    pub pending_debug: u64,
    /// IA32_DEBUGCTL (only BTF matters here).
    pub debugctl: u64,
    /// The PDPTE fields, checked when PAE paging is in use (with EPT VM
    /// entry loads them from here).
    pub pdpte: [u64; 4],
    pub vmcs_link_pointer: u64,
    /// VM-entry control "IA-32e mode guest".
    pub ia32e_mode_guest: bool,
    /// VM-entry control "load IA32_EFER".
    pub load_efer: bool,
    /// VM-entry control "load debug controls".
    pub load_debug_controls: bool,
    /// Secondary processor-based control "unrestricted guest".
    pub unrestricted_guest: bool,
    /// Pin-based control "virtual NMIs".
    pub virtual_nmis: bool,
    /// The VM-entry interruption-information field.
    pub entry_interruption_info: u32,
}

/// What the CPU allows, which some checks are relative to.
#[derive(Clone, Copy, Debug)]
pub struct VmxLimits {
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// MAXPHYADDR.
    pub max_phys_bits: u8,
    /// Linear-address width (48, or 57 with 5-level paging).
    pub linear_address_bits: u8,
}

/// A segment register, for naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegReg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
    Tr,
    Ldtr,
}

const SEGS: [SegReg; 6] = [SegReg::Es, SegReg::Cs, SegReg::Ss, SegReg::Ds, SegReg::Fs, SegReg::Gs];

impl fmt::Display for SegReg {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            SegReg::Es => "ES",
            SegReg::Cs => "CS",
            SegReg::Ss => "SS",
            SegReg::Ds => "DS",
            SegReg::Fs => "FS",
            SegReg::Gs => "GS",
            SegReg::Tr => "TR",
            SegReg::Ldtr => "LDTR",
        })
    }
}

/// The guest-state check that failed, in the SDM's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmentryCheck {
    // Control registers, debug registers and MSRs.
    /// Bits CR0_FIXED0 requires are clear (PE and PG exempt under
    /// unrestricted guest).
    Cr0FixedSet(u64),
    /// Bits CR0_FIXED1 forbids are set.
    Cr0FixedClear(u64),
    Cr0PgWithoutPe,
    Cr4FixedSet(u64),
    Cr4FixedClear(u64),
    CetWithoutWp,
    Ia32eWithoutPaging,
    Ia32eWithoutPae,
    PcideOutsideIa32e,
    /// CR3 bits at or above MAXPHYADDR.
    Cr3BeyondMaxPhys(u64),
    Dr7HighBits(u64),
    EferReserved(u64),
    EferLmaNotIa32e { lma: bool },
    EferLmeNotLma,
    // Segment registers.
    SelectorTi(SegReg),
    SsRplNotCsRpl,
    V8086Base(SegReg, u64),
    BaseNotCanonical(SegReg, u64),
    BaseHighBits(SegReg, u64),
    V8086Limit(SegReg, u32),
    V8086AccessRights(SegReg, u32),
    SegmentType(SegReg, u8),
    /// A code/data register with S clear, or TR/LDTR with S set.
    DescriptorS(SegReg),
    CsDplNotZero,
    CsDplNotSsDpl,
    CsDplAboveSsDpl,
    SsDplNotRpl,
    SsDplNotZero,
    DplBelowRpl(SegReg),
    NotPresent(SegReg),
    ReservedAccessRights(SegReg, u32),
    CsLongAndDefault,
    Granularity(SegReg, u32, u32),
    TrUnusable,
    // Descriptor-table registers.
    TableBaseNotCanonical { idtr: bool, base: u64 },
    TableLimitHighBits { idtr: bool, limit: u32 },
    // RIP and RFLAGS.
    RipHighBits(u64),
    RipNotCanonical(u64),
    RflagsReserved(u64),
    RflagsBit1Clear,
    RflagsVm,
    IfClearInjectingInterrupt,
    // Non-register state.
    ActivityState(u32),
    HaltedWithSsDpl,
    ShadowNotActive,
    EventBlockedInActivity { activity: u32, info: u32 },
    InterruptibilityReserved(u32),
    StiAndMovSs,
    StiWithIfClear,
    ShadowInjectingInterrupt,
    MovSsInjectingNmi,
    SmiBlocking,
    NmiBlockedInjectingVirtualNmi,
    PendingDebugReserved(u64),
    SingleStepWithoutBs,
    BsWithoutSingleStep,
    VmcsLinkPointer(u64),
    StiInjectingNmi,
    // PDPTEs.
    PdpteReserved { index: u8, value: u64 },
}

impl fmt::Display for VmentryCheck {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        use VmentryCheck::*;
        let table = |idtr: bool| if idtr { "IDTR" } else { "GDTR" };
        match *self {
            Cr0FixedSet(b) => write!(f, "CR0 lacks bits {b:#x} that IA32_VMX_CR0_FIXED0 requires"),
            Cr0FixedClear(b) => write!(f, "CR0 has bits {b:#x} that IA32_VMX_CR0_FIXED1 forbids"),
            Cr0PgWithoutPe => write!(f, "CR0.PG is set with CR0.PE clear"),
            Cr4FixedSet(b) => write!(f, "CR4 lacks bits {b:#x} that IA32_VMX_CR4_FIXED0 requires"),
            Cr4FixedClear(b) => write!(f, "CR4 has bits {b:#x} that IA32_VMX_CR4_FIXED1 forbids"),
            CetWithoutWp => write!(f, "CR4.CET is set with CR0.WP clear"),
            Ia32eWithoutPaging => write!(f, "the IA-32e mode guest control is set with CR0.PG clear"),
            Ia32eWithoutPae => write!(f, "the IA-32e mode guest control is set with CR4.PAE clear"),
            PcideOutsideIa32e => write!(f, "CR4.PCIDE is set without the IA-32e mode guest control"),
            Cr3BeyondMaxPhys(b) => write!(f, "CR3 has bits {b:#x} at or above MAXPHYADDR set"),
            Dr7HighBits(v) => write!(f, "DR7[63:32] is not zero (DR7 {v:#x})"),
            EferReserved(b) => write!(f, "IA32_EFER has reserved bits {b:#x} set"),
            EferLmaNotIa32e { lma } => write!(
                f,
                "IA32_EFER.LMA is {} but the IA-32e mode guest control is {}",
                u8::from(lma),
                u8::from(!lma)
            ),
            EferLmeNotLma => write!(f, "IA32_EFER.LME differs from LMA with CR0.PG set"),
            SelectorTi(s) => write!(f, "the {s} selector has TI (bit 2) set"),
            SsRplNotCsRpl => write!(f, "the SS selector's RPL differs from the CS selector's"),
            V8086Base(s, b) => write!(f, "in virtual-8086 mode the {s} base {b:#x} is not the selector times 16"),
            BaseNotCanonical(s, b) => write!(f, "the {s} base {b:#x} is not canonical"),
            BaseHighBits(s, b) => write!(f, "the {s} base {b:#x} has bits 63:32 set"),
            V8086Limit(s, l) => write!(f, "in virtual-8086 mode the {s} limit {l:#x} is not 0xffff"),
            V8086AccessRights(s, a) => write!(f, "in virtual-8086 mode the {s} access rights {a:#x} are not 0xf3"),
            SegmentType(s, t) => {
                let rule = match s {
                    SegReg::Cs => "accessed code (9, 11, 13, 15), or read/write accessed data (3) under unrestricted guest",
                    SegReg::Ss => "read/write accessed data (3 or 7)",
                    SegReg::Tr => "a busy TSS (11, or 3 outside IA-32e mode)",
                    SegReg::Ldtr => "an LDT (2)",
                    _ => "accessed, and readable if code",
                };
                write!(f, "the {s} type {t} is not {rule}")
            }
            DescriptorS(s @ (SegReg::Tr | SegReg::Ldtr)) => write!(f, "the {s} access rights have S set (must be a system descriptor)"),
            DescriptorS(s) => write!(f, "the {s} access rights have S clear (must be code or data)"),
            CsDplNotZero => write!(f, "CS is a data segment (unrestricted guest) with DPL not 0"),
            CsDplNotSsDpl => write!(f, "CS is non-conforming code with a DPL other than SS's"),
            CsDplAboveSsDpl => write!(f, "CS is conforming code with a DPL above SS's"),
            SsDplNotRpl => write!(f, "the SS DPL differs from its selector's RPL"),
            SsDplNotZero => write!(f, "the SS DPL is not 0 in real mode or with a data CS"),
            DplBelowRpl(s) => write!(f, "the {s} DPL is below its selector's RPL"),
            NotPresent(s) => write!(f, "{s} is usable but not present (P clear)"),
            ReservedAccessRights(s, a) => write!(f, "the {s} access rights {a:#x} have reserved bits (11:8, 31:17) set"),
            CsLongAndDefault => write!(f, "CS.L and CS.D are both set for an IA-32e mode guest"),
            Granularity(s, l, a) => write!(f, "the {s} limit {l:#x} does not fit its granularity (access rights {a:#x})"),
            TrUnusable => write!(f, "TR is marked unusable"),
            TableBaseNotCanonical { idtr, base } => write!(f, "the {} base {base:#x} is not canonical", table(idtr)),
            TableLimitHighBits { idtr, limit } => write!(f, "the {} limit {limit:#x} has bits 31:16 set", table(idtr)),
            RipHighBits(r) => write!(f, "RIP {r:#x} has bits 63:32 set outside 64-bit mode"),
            RipNotCanonical(r) => write!(f, "RIP {r:#x} is not canonical"),
            RflagsReserved(b) => write!(f, "RFLAGS has reserved bits {b:#x} set"),
            RflagsBit1Clear => write!(f, "RFLAGS bit 1 is clear"),
            RflagsVm => write!(f, "RFLAGS.VM is set in IA-32e mode or real mode"),
            IfClearInjectingInterrupt => write!(f, "RFLAGS.IF is clear while an external interrupt is injected"),
            ActivityState(a) => write!(f, "the activity state {a} is not one VM entry knows"),
            HaltedWithSsDpl => write!(f, "the activity state is HLT with SS.DPL not 0"),
            ShadowNotActive => write!(f, "blocking by STI or MOV SS with an activity state other than active"),
            EventBlockedInActivity { activity, info } => {
                write!(f, "the injected event {info:#x} is one activity state {activity} blocks")
            }
            InterruptibilityReserved(b) => write!(f, "the interruptibility state has reserved bits {b:#x} set"),
            StiAndMovSs => write!(f, "the interruptibility state has blocking by both STI and MOV SS"),
            StiWithIfClear => write!(f, "blocking by STI with RFLAGS.IF clear"),
            ShadowInjectingInterrupt => write!(f, "blocking by STI or MOV SS while an external interrupt is injected"),
            MovSsInjectingNmi => write!(f, "blocking by MOV SS while an NMI is injected"),
            SmiBlocking => write!(f, "blocking by SMI outside SMM"),
            NmiBlockedInjectingVirtualNmi => write!(f, "blocking by NMI while a virtual NMI is injected"),
            PendingDebugReserved(b) => write!(f, "the pending debug exceptions have reserved bits {b:#x} set"),
            SingleStepWithoutBs => write!(
                f,
                "RFLAGS.TF is set (without DEBUGCTL.BTF) in an interrupt shadow or HLT but pending debug BS is clear"
            ),
            BsWithoutSingleStep => write!(
                f,
                "pending debug BS is set in an interrupt shadow or HLT without a single step (TF clear or DEBUGCTL.BTF set)"
            ),
            VmcsLinkPointer(p) => write!(f, "the VMCS link pointer {p:#x} is neither all ones nor a page address within MAXPHYADDR"),
            StiInjectingNmi => write!(f, "blocking by STI while an NMI is injected"),
            PdpteReserved { index, value } => write!(f, "PDPTE{index} {value:#x} is present with reserved bits set"),
        }
    }
}

const RFLAGS_RESERVED: u64 = 0xFFFF_FFFF_FFC0_8028;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;
/// The EFER bits an Intel CPU has: SCE, LME, LMA, NXE.
const EFER_DEFINED: u64 = efer::SCE | efer::LME | efer::LMA | efer::NXE;

/// Interruptibility-state bits.
pub mod interruptibility {
    pub const STI: u32 = 1 << 0;
    pub const MOV_SS: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const NMI: u32 = 1 << 3;
    /// Bit 4 (enclave interruption) is left to CPUs with SGX, which
    /// Ferrite's guests do not have.
    pub const RESERVED: u32 = !0xF;
}

/// Activity states.
pub mod activity {
    pub const ACTIVE: u32 = 0;
    pub const HLT: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    pub const WAIT_FOR_SIPI: u32 = 3;
}

/// Pending-debug-exception bits that are not reserved: B0-B3, enabled
/// breakpoint, BS, RTM.
const PENDING_DEBUG_DEFINED: u64 = 0xF | (1 << 12) | (1 << 14) | (1 << 16);
const PENDING_DEBUG_BS: u64 = 1 << 14;
const DEBUGCTL_BTF: u64 = 1 << 1;

/// Interruption types of the VM-entry interruption-information field.
const EVENT_VALID: u32 = 1 << 31;
const TYPE_EXTERNAL: u32 = 0;
const TYPE_NMI: u32 = 2;
const TYPE_HW_EXCEPTION: u32 = 3;
const TYPE_OTHER: u32 = 7;

/// Whether `v` is canonical for `bits` linear-address bits.
fn canonical(v: u64, bits: u8) -> bool {
    let shift = 64 - u32::from(bits.clamp(32, 64));
    (((v << shift) as i64) >> shift) as u64 == v
}

/// Whether `limit` fits the granularity bit in `access_rights`: with G
/// clear the limit is at most 0xFFFFF, with G set its low 12 bits are ones.
fn granularity_ok(limit: u32, access_rights: u32) -> bool {
    if access_rights & ar::G != 0 {
        limit & 0xFFF == 0xFFF
    } else {
        limit >> 20 == 0
    }
}

/// The first of VM entry's guest-state checks that `s` fails on a CPU with
/// `limits`, or `None` when it passes them all.
pub fn first_failing_check(s: &VmxGuestState, limits: &VmxLimits) -> Option<VmentryCheck> {
    check_all(s, limits).err()
}

fn ensure(ok: bool, check: VmentryCheck) -> Result<(), VmentryCheck> {
    if ok {
        Ok(())
    } else {
        Err(check)
    }
}

fn check_all(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    check_control_registers(s, l)?;
    check_segments(s, l)?;
    check_tables(s, l)?;
    check_rip_rflags(s, l)?;
    check_non_register_state(s, l)?;
    check_pdptes(s, l)
}

/// SDM "Checks on Guest Control Registers, Debug Registers, and MSRs".
fn check_control_registers(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    let cr0_fixed0 = if s.unrestricted_guest { l.cr0_fixed0 & !(cr0::PE | cr0::PG) } else { l.cr0_fixed0 };
    ensure(cr0_fixed0 & !s.cr0 == 0, Cr0FixedSet(cr0_fixed0 & !s.cr0))?;
    ensure(s.cr0 & !l.cr0_fixed1 == 0, Cr0FixedClear(s.cr0 & !l.cr0_fixed1))?;
    ensure(s.cr0 & cr0::PG == 0 || s.cr0 & cr0::PE != 0, Cr0PgWithoutPe)?;
    ensure(l.cr4_fixed0 & !s.cr4 == 0, Cr4FixedSet(l.cr4_fixed0 & !s.cr4))?;
    ensure(s.cr4 & !l.cr4_fixed1 == 0, Cr4FixedClear(s.cr4 & !l.cr4_fixed1))?;
    ensure(s.cr4 & cr4::CET == 0 || s.cr0 & cr0::WP != 0, CetWithoutWp)?;
    if s.ia32e_mode_guest {
        ensure(s.cr0 & cr0::PG != 0, Ia32eWithoutPaging)?;
        ensure(s.cr4 & cr4::PAE != 0, Ia32eWithoutPae)?;
    } else {
        ensure(s.cr4 & cr4::PCIDE == 0, PcideOutsideIa32e)?;
    }
    let cr3_beyond = beyond_max_phys(s.cr3, l.max_phys_bits);
    ensure(cr3_beyond == 0, Cr3BeyondMaxPhys(cr3_beyond))?;
    ensure(!s.load_debug_controls || s.dr7 >> 32 == 0, Dr7HighBits(s.dr7))?;
    if s.load_efer {
        ensure(s.efer & !EFER_DEFINED == 0, EferReserved(s.efer & !EFER_DEFINED))?;
        let lma = s.efer & efer::LMA != 0;
        ensure(lma == s.ia32e_mode_guest, EferLmaNotIa32e { lma })?;
        ensure(s.cr0 & cr0::PG == 0 || (s.efer & efer::LME != 0) == lma, EferLmeNotLma)?;
    }
    Ok(())
}

/// SDM "Checks on Guest Segment Registers".
fn check_segments(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    let v8086 = s.rflags & RFLAGS_VM != 0;
    let ug = s.unrestricted_guest;
    let [_, cs, ss, ..] = s.segs;
    let named = || SEGS.iter().copied().zip(s.segs.iter());
    // Selectors.
    ensure(s.tr.selector & 4 == 0, SelectorTi(SegReg::Tr))?;
    ensure(!s.ldtr.usable() || s.ldtr.selector & 4 == 0, SelectorTi(SegReg::Ldtr))?;
    ensure(v8086 || ug || ss.rpl() == cs.rpl(), SsRplNotCsRpl)?;
    // Bases.
    if v8086 {
        for (r, seg) in named() {
            ensure(seg.base == u64::from(seg.selector) << 4, V8086Base(r, seg.base))?;
        }
    }
    let bits = l.linear_address_bits;
    ensure(canonical(s.tr.base, bits), BaseNotCanonical(SegReg::Tr, s.tr.base))?;
    for (r, seg) in [(SegReg::Fs, &s.segs[4]), (SegReg::Gs, &s.segs[5])] {
        ensure(canonical(seg.base, bits), BaseNotCanonical(r, seg.base))?;
    }
    ensure(!s.ldtr.usable() || canonical(s.ldtr.base, bits), BaseNotCanonical(SegReg::Ldtr, s.ldtr.base))?;
    ensure(cs.base >> 32 == 0, BaseHighBits(SegReg::Cs, cs.base))?;
    for (r, seg) in [(SegReg::Ss, &s.segs[2]), (SegReg::Ds, &s.segs[3]), (SegReg::Es, &s.segs[0])] {
        ensure(!seg.usable() || seg.base >> 32 == 0, BaseHighBits(r, seg.base))?;
    }
    if v8086 {
        // Limits and access rights are fixed in virtual-8086 mode.
        for (r, seg) in named() {
            ensure(seg.limit == 0xFFFF, V8086Limit(r, seg.limit))?;
        }
        for (r, seg) in named() {
            ensure(seg.access_rights == 0xF3, V8086AccessRights(r, seg.access_rights))?;
        }
    } else {
        check_code_data_access_rights(s)?;
    }
    check_system_access_rights(s)
}

/// The access rights of CS, SS, DS, ES, FS and GS outside virtual-8086
/// mode; CS is checked whatever its unusable bit says, the others only
/// when usable.
fn check_code_data_access_rights(s: &VmxGuestState) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    let [_, cs, ss, ..] = s.segs;
    let ug = s.unrestricted_guest;
    let checked = || SEGS.iter().copied().zip(s.segs.iter()).filter(|(r, seg)| *r == SegReg::Cs || seg.usable());
    // Type.
    for (r, seg) in checked() {
        let t = seg.seg_type();
        let ok = match r {
            SegReg::Cs => matches!(t, 9 | 11 | 13 | 15) || (ug && t == 3),
            SegReg::Ss => matches!(t, 3 | 7),
            _ => t & 1 != 0 && (t & 8 == 0 || t & 2 != 0),
        };
        ensure(ok, SegmentType(r, t))?;
    }
    // S.
    for (r, seg) in checked() {
        ensure(seg.has(ar::S), DescriptorS(r))?;
    }
    // DPL.
    match cs.seg_type() {
        3 => ensure(cs.dpl() == 0, CsDplNotZero)?,
        9 | 11 => ensure(cs.dpl() == ss.dpl(), CsDplNotSsDpl)?,
        _ => ensure(cs.dpl() <= ss.dpl(), CsDplAboveSsDpl)?,
    }
    ensure(ug || ss.dpl() == ss.rpl(), SsDplNotRpl)?;
    ensure(ss.dpl() == 0 || (cs.seg_type() != 3 && s.cr0 & cr0::PE != 0), SsDplNotZero)?;
    for (r, seg) in checked() {
        if matches!(r, SegReg::Cs | SegReg::Ss) || ug || seg.seg_type() > 11 {
            continue;
        }
        ensure(seg.dpl() >= seg.rpl(), DplBelowRpl(r))?;
    }
    // P, reserved bits, CS.L/D, G.
    for (r, seg) in checked() {
        ensure(seg.has(ar::P), NotPresent(r))?;
    }
    for (r, seg) in checked() {
        ensure(seg.access_rights & ar::RESERVED == 0, ReservedAccessRights(r, seg.access_rights))?;
    }
    ensure(!(s.ia32e_mode_guest && cs.has(ar::L) && cs.has(ar::DB)), CsLongAndDefault)?;
    for (r, seg) in checked() {
        ensure(granularity_ok(seg.limit, seg.access_rights), Granularity(r, seg.limit, seg.access_rights))?;
    }
    Ok(())
}

/// The access rights of TR (always usable) and LDTR (when usable).
fn check_system_access_rights(s: &VmxGuestState) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    let tr = s.tr;
    let t = tr.seg_type();
    ensure(t == 11 || (t == 3 && !s.ia32e_mode_guest), SegmentType(SegReg::Tr, t))?;
    ensure(!tr.has(ar::S), DescriptorS(SegReg::Tr))?;
    ensure(tr.has(ar::P), NotPresent(SegReg::Tr))?;
    ensure(tr.access_rights & ar::RESERVED == 0, ReservedAccessRights(SegReg::Tr, tr.access_rights))?;
    ensure(granularity_ok(tr.limit, tr.access_rights), Granularity(SegReg::Tr, tr.limit, tr.access_rights))?;
    ensure(tr.usable(), TrUnusable)?;
    let ldtr = s.ldtr;
    if ldtr.usable() {
        ensure(ldtr.seg_type() == 2, SegmentType(SegReg::Ldtr, ldtr.seg_type()))?;
        ensure(!ldtr.has(ar::S), DescriptorS(SegReg::Ldtr))?;
        ensure(ldtr.has(ar::P), NotPresent(SegReg::Ldtr))?;
        ensure(ldtr.access_rights & ar::RESERVED == 0, ReservedAccessRights(SegReg::Ldtr, ldtr.access_rights))?;
        ensure(granularity_ok(ldtr.limit, ldtr.access_rights), Granularity(SegReg::Ldtr, ldtr.limit, ldtr.access_rights))?;
    }
    Ok(())
}

/// SDM "Checks on Guest Descriptor-Table Registers".
fn check_tables(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    for (idtr, base) in [(false, s.gdtr_base), (true, s.idtr_base)] {
        ensure(canonical(base, l.linear_address_bits), TableBaseNotCanonical { idtr, base })?;
    }
    for (idtr, limit) in [(false, s.gdtr_limit), (true, s.idtr_limit)] {
        ensure(limit >> 16 == 0, TableLimitHighBits { idtr, limit })?;
    }
    Ok(())
}

/// SDM "Checks on Guest RIP, RFLAGS, and SSP".
fn check_rip_rflags(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    use VmentryCheck::*;
    if s.ia32e_mode_guest && s.segs[1].has(ar::L) {
        ensure(canonical(s.rip, l.linear_address_bits), RipNotCanonical(s.rip))?;
    } else {
        ensure(s.rip >> 32 == 0, RipHighBits(s.rip))?;
    }
    ensure(s.rflags & RFLAGS_RESERVED == 0, RflagsReserved(s.rflags & RFLAGS_RESERVED))?;
    ensure(s.rflags & 2 != 0, RflagsBit1Clear)?;
    ensure(s.rflags & RFLAGS_VM == 0 || (!s.ia32e_mode_guest && s.cr0 & cr0::PE != 0), RflagsVm)?;
    let (valid, ty, _) = event(s.entry_interruption_info);
    ensure(!(valid && ty == TYPE_EXTERNAL) || s.rflags & RFLAGS_IF != 0, IfClearInjectingInterrupt)
}

/// The VM-entry interruption-information field: valid, type, vector.
fn event(info: u32) -> (bool, u32, u32) {
    (info & EVENT_VALID != 0, (info >> 8) & 7, info & 0xFF)
}

/// SDM "Checks on Guest Non-Register State".
fn check_non_register_state(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    use interruptibility::{MOV_SS, NMI, SMI, STI};
    use VmentryCheck::*;
    let int = s.interruptibility;
    let shadow = int & (STI | MOV_SS) != 0;
    let (valid, ty, vector) = event(s.entry_interruption_info);
    // Activity state.
    ensure(s.activity <= activity::WAIT_FOR_SIPI, ActivityState(s.activity))?;
    ensure(s.activity != activity::HLT || s.segs[2].dpl() == 0, HaltedWithSsDpl)?;
    ensure(!shadow || s.activity == activity::ACTIVE, ShadowNotActive)?;
    if valid {
        let allowed = match s.activity {
            activity::ACTIVE => true,
            activity::HLT => match ty {
                TYPE_EXTERNAL | TYPE_NMI => true,
                TYPE_HW_EXCEPTION => matches!(vector, 1 | 18),
                TYPE_OTHER => vector == 0,
                _ => false,
            },
            activity::SHUTDOWN => ty == TYPE_NMI || (ty == TYPE_HW_EXCEPTION && vector == 18),
            _ => false,
        };
        ensure(allowed, EventBlockedInActivity { activity: s.activity, info: s.entry_interruption_info })?;
    }
    // Interruptibility state.
    ensure(int & interruptibility::RESERVED == 0, InterruptibilityReserved(int & interruptibility::RESERVED))?;
    ensure(int & (STI | MOV_SS) != STI | MOV_SS, StiAndMovSs)?;
    ensure(int & STI == 0 || s.rflags & RFLAGS_IF != 0, StiWithIfClear)?;
    ensure(!(valid && ty == TYPE_EXTERNAL && shadow), ShadowInjectingInterrupt)?;
    ensure(!(valid && ty == TYPE_NMI && int & MOV_SS != 0), MovSsInjectingNmi)?;
    ensure(int & SMI == 0, SmiBlocking)?;
    ensure(!(s.virtual_nmis && valid && ty == TYPE_NMI && int & NMI != 0), NmiBlockedInjectingVirtualNmi)?;
    // Pending debug exceptions.
    let pd = s.pending_debug;
    ensure(pd & !PENDING_DEBUG_DEFINED == 0, PendingDebugReserved(pd & !PENDING_DEBUG_DEFINED))?;
    if shadow || s.activity == activity::HLT {
        let single_step = s.rflags & RFLAGS_TF != 0 && s.debugctl & DEBUGCTL_BTF == 0;
        let bs = pd & PENDING_DEBUG_BS != 0;
        ensure(bs || !single_step, SingleStepWithoutBs)?;
        ensure(!bs || single_step, BsWithoutSingleStep)?;
    }
    // VMCS link pointer (its revision identifier, in memory, is not read).
    let link = s.vmcs_link_pointer;
    ensure(link == u64::MAX || (link & 0xFFF == 0 && beyond_max_phys(link, l.max_phys_bits) == 0), VmcsLinkPointer(link))?;
    // Some CPUs refuse this (exit qualification 3); the SDM allows both.
    ensure(!(valid && ty == TYPE_NMI && int & STI != 0), StiInjectingNmi)
}

/// SDM "Checks on Guest Page-Directory-Pointer-Table Entries": with PAE
/// paging outside IA-32e mode, a present PDPTE has bits 2:1, 8:5 and
/// those at or above MAXPHYADDR clear.
fn check_pdptes(s: &VmxGuestState, l: &VmxLimits) -> Result<(), VmentryCheck> {
    if s.cr0 & cr0::PG == 0 || s.cr4 & cr4::PAE == 0 || s.ia32e_mode_guest {
        return Ok(());
    }
    for (index, &value) in s.pdpte.iter().enumerate() {
        let reserved = (value & 0x1E6) | beyond_max_phys(value, l.max_phys_bits);
        ensure(value & 1 == 0 || reserved == 0, VmentryCheck::PdpteReserved { index: index as u8, value })?;
    }
    Ok(())
}

/// The text of VM-instruction error `n` (SDM vol. 3C, "VM-Instruction
/// Error Numbers"), or `None` for a number the table does not have.
pub fn vm_instruction_error(n: u32) -> Option<&'static str> {
    Some(match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => return None,
    })
}

/// Exit reasons of a failed VM entry (bit 31 of the exit reason set).
pub const EXIT_INVALID_GUEST_STATE: u32 = 33;
pub const EXIT_MSR_LOADING: u32 = 34;
pub const EXIT_MACHINE_CHECK: u32 = 41;

/// A VM-entry failure exit: its basic exit reason and qualification (SDM
/// vol. 3C, "VM-Entry Failures During or After Loading Guest State").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryFailure {
    pub reason: u32,
    pub qualification: u64,
}

impl fmt::Display for EntryFailure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let q = self.qualification;
        match self.reason {
            EXIT_INVALID_GUEST_STATE => {
                let what = match q {
                    2 => "loading the PDPTEs failed",
                    3 => "an NMI was injected with blocking by STI",
                    4 => "the VMCS link pointer is invalid",
                    _ => "no guest-state check Ferrite knows of fails",
                };
                write!(f, "invalid guest state (exit reason 33, qualification {q}): {what}")
            }
            EXIT_MSR_LOADING => write!(f, "loading entry {q} of the VM-entry MSR-load area failed (exit reason 34)"),
            EXIT_MACHINE_CHECK => write!(f, "a machine-check event during VM entry (exit reason 41)"),
            r => write!(f, "VM entry failed with exit reason {r} (qualification {q:#x})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interruptibility::{MOV_SS, NMI, SMI, STI};
    use super::VmentryCheck::*;
    use super::*;

    /// A Skylake-like CPU: PE, NE, PG and VMXE required; CR4 up to SMAP
    /// (no PKE, no CET).
    fn limits() -> VmxLimits {
        VmxLimits {
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: cr4::VMXE,
            cr4_fixed1: 0x0037_27FF,
            max_phys_bits: 40,
            linear_address_bits: 48,
        }
    }

    fn seg(selector: u16, base: u64, limit: u32, access_rights: u32) -> VmxSegment {
        VmxSegment { selector, base, limit, access_rights }
    }

    const UNUSABLE: VmxSegment = VmxSegment { selector: 0, base: 0, limit: 0, access_rights: ar::UNUSABLE };

    /// A 64-bit kernel as Ferrite's loader starts one, under unrestricted
    /// guest.
    fn long_mode() -> VmxGuestState {
        let data = seg(0x10, 0, 0xFFFF_FFFF, 0xC093);
        VmxGuestState {
            cr0: 0x8005_0033,
            cr3: 0x10_0000,
            cr4: cr4::PAE | cr4::VMXE,
            dr7: 0x400,
            efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
            rflags: 0x202,
            rip: 0xFFFF_FFFF_8100_0000,
            segs: [data, seg(0x08, 0, 0xFFFF_FFFF, 0xA09B), data, data, data, data],
            tr: seg(0x28, 0x1000, 0x67, 0x8B),
            ldtr: UNUSABLE,
            gdtr_base: 0x2000,
            gdtr_limit: 0x37,
            idtr_base: 0xFFFF_FFFF_8200_0000,
            idtr_limit: 0xFFF,
            vmcs_link_pointer: u64::MAX,
            ia32e_mode_guest: true,
            load_efer: true,
            load_debug_controls: true,
            unrestricted_guest: true,
            ..Default::default()
        }
    }

    /// 32-bit protected mode with paging (4 MiB pages), without
    /// unrestricted guest.
    fn protected_mode() -> VmxGuestState {
        let data = seg(0x10, 0, 0xFFFF_FFFF, 0xC093);
        VmxGuestState {
            cr0: 0x8000_0031,
            cr3: 0x20_0000,
            cr4: cr4::PSE | cr4::VMXE,
            dr7: 0x400,
            efer: 0,
            rflags: 0x202,
            rip: 0x10_0000,
            segs: [data, seg(0x08, 0, 0xFFFF_FFFF, 0xC09B), data, data, data, data],
            tr: seg(0x18, 0x3000, 0x67, 0x8B),
            ldtr: UNUSABLE,
            gdtr_base: 0x1000,
            gdtr_limit: 0x1F,
            idtr_base: 0x2000,
            idtr_limit: 0x7FF,
            vmcs_link_pointer: u64::MAX,
            load_efer: true,
            load_debug_controls: true,
            ..Default::default()
        }
    }

    /// Real mode at reset (CS:IP F000:FFF0), under unrestricted guest.
    fn real_mode() -> VmxGuestState {
        let data = seg(0, 0, 0xFFFF, 0x93);
        VmxGuestState {
            cr0: 0x30,
            cr4: cr4::VMXE,
            dr7: 0x400,
            rflags: 2,
            rip: 0xFFF0,
            segs: [data, seg(0xF000, 0xF_0000, 0xFFFF, 0x9B), data, data, data, data],
            tr: seg(0, 0, 0xFFFF, 0x8B),
            ldtr: seg(0, 0, 0xFFFF, 0x82),
            gdtr_limit: 0xFFFF,
            idtr_limit: 0xFFFF,
            vmcs_link_pointer: u64::MAX,
            load_efer: true,
            load_debug_controls: true,
            unrestricted_guest: true,
            ..Default::default()
        }
    }

    /// Virtual-8086 mode inside the 32-bit state.
    fn v8086() -> VmxGuestState {
        let mut s = protected_mode();
        s.rflags |= RFLAGS_VM;
        s.segs = [seg(0x1000, 0x1_0000, 0xFFFF, 0xF3); 6];
        s
    }

    fn check(base: fn() -> VmxGuestState, f: impl FnOnce(&mut VmxGuestState)) -> Option<VmentryCheck> {
        let mut s = base();
        f(&mut s);
        first_failing_check(&s, &limits())
    }

    const EXT_INTR: u32 = EVENT_VALID | 0x20;
    const INJECT_NMI: u32 = EVENT_VALID | (2 << 8) | 2;

    #[test]
    fn valid_states_pass() {
        for (name, base) in [
            ("64-bit", long_mode as fn() -> VmxGuestState),
            ("32-bit", protected_mode),
            ("real mode", real_mode),
            ("virtual-8086", v8086),
        ] {
            assert_eq!(first_failing_check(&base(), &limits()), None, "{name}");
        }
        // 64-bit with a null SS, an LDT, PCIDE; 32-bit PAE with PDPTEs.
        assert_eq!(
            check(long_mode, |s| {
                s.segs[2] = UNUSABLE;
                s.ldtr = seg(0x30, 0xFFFF_8000_0000_0000, 0xFFF, 0x82);
                s.cr4 |= cr4::PCIDE;
            }),
            None
        );
        assert_eq!(
            check(protected_mode, |s| {
                s.cr4 |= cr4::PAE;
                s.pdpte = [0x1001, 0x2001, 0xFFFF_FFFF_FFFF_FFFE, 0x3000 | 1 | (1 << 3) | (1 << 4)];
            }),
            None
        );
        // A single step pending over an STI shadow; an NMI or #DB injected
        // into a halted guest; a VMCS link pointer to a page.
        assert_eq!(
            check(long_mode, |s| {
                s.rflags |= RFLAGS_TF;
                s.interruptibility = STI;
                s.pending_debug = PENDING_DEBUG_BS;
            }),
            None
        );
        for info in [INJECT_NMI, EVENT_VALID | (3 << 8) | 1, EXT_INTR] {
            assert_eq!(check(long_mode, |s| {
                s.activity = activity::HLT;
                s.entry_interruption_info = info;
            }), None, "{info:#x}");
        }
        assert_eq!(check(long_mode, |s| s.vmcs_link_pointer = 0x5000), None);
        // Without "load IA32_EFER" its field is not checked.
        assert_eq!(check(protected_mode, |s| {
            s.load_efer = false;
            s.efer = 0xFFFF;
        }), None);
    }

    #[test]
    fn control_registers_and_msrs() {
        assert_eq!(check(protected_mode, |s| s.cr0 &= !cr0::NE), Some(Cr0FixedSet(cr0::NE)));
        assert_eq!(check(protected_mode, |s| s.cr0 &= !cr0::PG), Some(Cr0FixedSet(cr0::PG)));
        // Unrestricted guest exempts PE and PG, but not PG without PE.
        assert_eq!(check(real_mode, |s| s.cr0 &= !cr0::NE), Some(Cr0FixedSet(cr0::NE)));
        assert_eq!(check(long_mode, |s| s.cr0 &= !cr0::PE), Some(Cr0PgWithoutPe));
        assert_eq!(check(long_mode, |s| s.cr0 |= 1 << 32), Some(Cr0FixedClear(1 << 32)));
        assert_eq!(check(long_mode, |s| s.cr4 &= !cr4::VMXE), Some(Cr4FixedSet(cr4::VMXE)));
        assert_eq!(check(long_mode, |s| s.cr4 |= cr4::PKE), Some(Cr4FixedClear(cr4::PKE)));
        let mut cet = limits();
        cet.cr4_fixed1 |= cr4::CET;
        let mut s = long_mode();
        s.cr4 |= cr4::CET;
        s.cr0 &= !cr0::WP;
        assert_eq!(first_failing_check(&s, &cet), Some(CetWithoutWp));
        assert_eq!(check(long_mode, |s| s.cr0 &= !cr0::PG), Some(Ia32eWithoutPaging));
        assert_eq!(check(long_mode, |s| s.cr4 &= !cr4::PAE), Some(Ia32eWithoutPae));
        assert_eq!(check(protected_mode, |s| s.cr4 |= cr4::PCIDE), Some(PcideOutsideIa32e));
        assert_eq!(check(long_mode, |s| s.cr3 |= 1 << 45), Some(Cr3BeyondMaxPhys(1 << 45)));
        assert_eq!(check(protected_mode, |s| s.dr7 |= 1 << 32), Some(Dr7HighBits(0x1_0000_0400)));
        assert_eq!(check(protected_mode, |s| {
            s.load_debug_controls = false;
            s.dr7 |= 1 << 32;
        }), None);
        assert_eq!(check(long_mode, |s| s.efer |= efer::SVME), Some(EferReserved(efer::SVME)));
        assert_eq!(check(long_mode, |s| s.efer &= !efer::LMA), Some(EferLmaNotIa32e { lma: false }));
        assert_eq!(check(protected_mode, |s| s.efer |= efer::LMA), Some(EferLmaNotIa32e { lma: true }));
        assert_eq!(check(long_mode, |s| s.efer &= !efer::LME), Some(EferLmeNotLma));
        assert_eq!(check(protected_mode, |s| s.efer |= efer::LME), Some(EferLmeNotLma));
    }

    #[test]
    fn selectors_and_bases() {
        assert_eq!(check(long_mode, |s| s.tr.selector |= 4), Some(SelectorTi(SegReg::Tr)));
        assert_eq!(check(real_mode, |s| s.ldtr.selector = 0x34), Some(SelectorTi(SegReg::Ldtr)));
        // An unusable LDTR's selector is not looked at.
        assert_eq!(check(long_mode, |s| s.ldtr.selector = 0x34), None);
        assert_eq!(check(protected_mode, |s| s.segs[2].selector = 0x13), Some(SsRplNotCsRpl));
        assert_eq!(check(v8086, |s| s.segs[3].base = 0x1_0010), Some(V8086Base(SegReg::Ds, 0x1_0010)));
        let high = 0x0000_8000_0000_0000;
        assert_eq!(check(long_mode, |s| s.tr.base = high), Some(BaseNotCanonical(SegReg::Tr, high)));
        assert_eq!(check(long_mode, |s| s.segs[4].base = high), Some(BaseNotCanonical(SegReg::Fs, high)));
        assert_eq!(check(real_mode, |s| s.ldtr.base = high), Some(BaseNotCanonical(SegReg::Ldtr, high)));
        assert_eq!(check(protected_mode, |s| s.segs[1].base = 1 << 32), Some(BaseHighBits(SegReg::Cs, 1 << 32)));
        assert_eq!(check(protected_mode, |s| s.segs[2].base = 1 << 32), Some(BaseHighBits(SegReg::Ss, 1 << 32)));
        // FS and GS bases may be 64-bit.
        assert_eq!(check(long_mode, |s| s.segs[5].base = 0xFFFF_8880_0000_0000), None);
        assert_eq!(check(v8086, |s| s.segs[5].limit = 0xFFFFF), Some(V8086Limit(SegReg::Gs, 0xFFFFF)));
        assert_eq!(check(v8086, |s| s.segs[1].access_rights = 0xFB), Some(V8086AccessRights(SegReg::Cs, 0xFB)));
    }

    #[test]
    fn code_and_data_access_rights() {
        assert_eq!(check(protected_mode, |s| s.segs[1].access_rights = 0xC093), Some(SegmentType(SegReg::Cs, 3)));
        assert_eq!(check(protected_mode, |s| s.segs[1].access_rights = 0xC09A), Some(SegmentType(SegReg::Cs, 10)));
        assert_eq!(check(protected_mode, |s| s.segs[2].access_rights = 0xC09B), Some(SegmentType(SegReg::Ss, 11)));
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights = 0xC092), Some(SegmentType(SegReg::Ds, 2)));
        assert_eq!(check(protected_mode, |s| s.segs[0].access_rights = 0xC099), Some(SegmentType(SegReg::Es, 9)));
        // A readable code segment is fine in DS, an unusable one is not checked.
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights = 0xC09B), None);
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights = ar::UNUSABLE | 0x92), None);
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights = 0xC083), Some(DescriptorS(SegReg::Ds)));
        assert_eq!(check(real_mode, |s| s.segs[1].access_rights = 0xF3), Some(CsDplNotZero));
        assert_eq!(check(protected_mode, |s| s.segs[1].access_rights = 0xC0FB), Some(CsDplNotSsDpl));
        assert_eq!(check(protected_mode, |s| s.segs[1].access_rights = 0xC0FF), Some(CsDplAboveSsDpl));
        assert_eq!(
            check(protected_mode, |s| {
                s.segs[1].selector = 0x0B;
                s.segs[2].selector = 0x13;
            }),
            Some(SsDplNotRpl)
        );
        assert_eq!(
            check(real_mode, |s| {
                s.segs[1].access_rights = 0x9F;
                s.segs[2].access_rights = 0xF3;
            }),
            Some(SsDplNotZero)
        );
        assert_eq!(check(protected_mode, |s| s.segs[3].selector = 0x13), Some(DplBelowRpl(SegReg::Ds)));
        // Not under unrestricted guest.
        assert_eq!(check(long_mode, |s| s.segs[3].selector = 0x13), None);
        assert_eq!(check(protected_mode, |s| s.segs[5].access_rights &= !ar::P), Some(NotPresent(SegReg::Gs)));
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights |= 0x100), Some(ReservedAccessRights(SegReg::Ds, 0xC193)));
        assert_eq!(check(protected_mode, |s| s.segs[3].access_rights |= 1 << 20), Some(ReservedAccessRights(SegReg::Ds, 0x10_C093)));
        assert_eq!(check(long_mode, |s| s.segs[1].access_rights |= ar::DB), Some(CsLongAndDefault));
        assert_eq!(check(protected_mode, |s| s.segs[3].limit = 0xF000), Some(Granularity(SegReg::Ds, 0xF000, 0xC093)));
        assert_eq!(check(real_mode, |s| s.segs[0].limit = 0x10_0000), Some(Granularity(SegReg::Es, 0x10_0000, 0x93)));
    }

    #[test]
    fn system_segment_access_rights() {
        // A 16-bit busy TSS only outside IA-32e mode.
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x83), Some(SegmentType(SegReg::Tr, 3)));
        assert_eq!(check(protected_mode, |s| s.tr.access_rights = 0x83), None);
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x89), Some(SegmentType(SegReg::Tr, 9)));
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x9B), Some(DescriptorS(SegReg::Tr)));
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x0B), Some(NotPresent(SegReg::Tr)));
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x48B), Some(ReservedAccessRights(SegReg::Tr, 0x48B)));
        assert_eq!(check(long_mode, |s| s.tr.access_rights = 0x808B), Some(Granularity(SegReg::Tr, 0x67, 0x808B)));
        assert_eq!(check(long_mode, |s| s.tr.access_rights |= ar::UNUSABLE), Some(TrUnusable));
        assert_eq!(check(real_mode, |s| s.ldtr.access_rights = 0x83), Some(SegmentType(SegReg::Ldtr, 3)));
        assert_eq!(check(real_mode, |s| s.ldtr.access_rights = 0x92), Some(DescriptorS(SegReg::Ldtr)));
        assert_eq!(check(real_mode, |s| s.ldtr.access_rights = 0x02), Some(NotPresent(SegReg::Ldtr)));
        assert_eq!(check(real_mode, |s| s.ldtr.access_rights = 0x1082 | (1 << 17)), Some(ReservedAccessRights(SegReg::Ldtr, 0x2_1082)));
        assert_eq!(check(real_mode, |s| s.ldtr.limit = 0x10_0000), Some(Granularity(SegReg::Ldtr, 0x10_0000, 0x82)));
    }

    #[test]
    fn descriptor_tables() {
        let high = 0x0000_8000_0000_0000;
        assert_eq!(check(long_mode, |s| s.idtr_base = high), Some(TableBaseNotCanonical { idtr: true, base: high }));
        assert_eq!(check(long_mode, |s| s.gdtr_base = high), Some(TableBaseNotCanonical { idtr: false, base: high }));
        assert_eq!(check(real_mode, |s| s.gdtr_limit = 0x1_0000), Some(TableLimitHighBits { idtr: false, limit: 0x1_0000 }));
        assert_eq!(check(real_mode, |s| s.idtr_limit = 0x2_0000), Some(TableLimitHighBits { idtr: true, limit: 0x2_0000 }));
        // With 57-bit linear addresses the same base is canonical.
        let mut la57 = limits();
        la57.linear_address_bits = 57;
        let mut s = long_mode();
        s.idtr_base = high;
        assert_eq!(first_failing_check(&s, &la57), None);
    }

    #[test]
    fn rip_and_rflags() {
        assert_eq!(check(protected_mode, |s| s.rip = 1 << 32), Some(RipHighBits(1 << 32)));
        // Compatibility mode: CS.L clear, so 32 bits.
        assert_eq!(
            check(long_mode, |s| {
                s.segs[1].access_rights = 0xC09B;
            }),
            Some(RipHighBits(0xFFFF_FFFF_8100_0000))
        );
        assert_eq!(check(long_mode, |s| s.rip = 0x0000_8000_0000_0000), Some(RipNotCanonical(0x0000_8000_0000_0000)));
        assert_eq!(check(long_mode, |s| s.rflags |= 1 << 15), Some(RflagsReserved(1 << 15)));
        assert_eq!(check(long_mode, |s| s.rflags |= 1 << 22), Some(RflagsReserved(1 << 22)));
        assert_eq!(check(long_mode, |s| s.rflags = 0x200), Some(RflagsBit1Clear));
        assert_eq!(
            check(real_mode, |s| {
                s.rflags |= RFLAGS_VM;
                for seg in &mut s.segs {
                    seg.access_rights = 0xF3;
                }
            }),
            Some(RflagsVm)
        );
        assert_eq!(
            check(long_mode, |s| {
                s.rflags = 2;
                s.entry_interruption_info = EXT_INTR;
            }),
            Some(IfClearInjectingInterrupt)
        );
    }

    #[test]
    fn activity_and_interruptibility() {
        assert_eq!(check(long_mode, |s| s.activity = 4), Some(ActivityState(4)));
        assert_eq!(
            check(protected_mode, |s| {
                s.segs[1] = seg(0x1B, 0, 0xFFFF_FFFF, 0xC0FB);
                s.segs[2] = seg(0x23, 0, 0xFFFF_FFFF, 0xC0F3);
                s.activity = activity::HLT;
            }),
            Some(HaltedWithSsDpl)
        );
        assert_eq!(
            check(long_mode, |s| {
                s.activity = activity::HLT;
                s.interruptibility = MOV_SS;
            }),
            Some(ShadowNotActive)
        );
        let gp = EVENT_VALID | (3 << 8) | (1 << 11) | 13;
        assert_eq!(
            check(long_mode, |s| {
                s.activity = activity::HLT;
                s.entry_interruption_info = gp;
            }),
            Some(EventBlockedInActivity { activity: 1, info: gp })
        );
        assert_eq!(
            check(long_mode, |s| {
                s.activity = activity::WAIT_FOR_SIPI;
                s.entry_interruption_info = INJECT_NMI;
            }),
            Some(EventBlockedInActivity { activity: 3, info: INJECT_NMI })
        );
        assert_eq!(check(long_mode, |s| s.interruptibility = 1 << 5), Some(InterruptibilityReserved(1 << 5)));
        assert_eq!(check(long_mode, |s| s.interruptibility = STI | MOV_SS), Some(StiAndMovSs));
        assert_eq!(
            check(long_mode, |s| {
                s.interruptibility = STI;
                s.rflags = 2;
            }),
            Some(StiWithIfClear)
        );
        assert_eq!(
            check(long_mode, |s| {
                s.interruptibility = MOV_SS;
                s.entry_interruption_info = EXT_INTR;
            }),
            Some(ShadowInjectingInterrupt)
        );
        assert_eq!(
            check(long_mode, |s| {
                s.interruptibility = MOV_SS;
                s.entry_interruption_info = INJECT_NMI;
            }),
            Some(MovSsInjectingNmi)
        );
        assert_eq!(check(long_mode, |s| s.interruptibility = SMI), Some(SmiBlocking));
        assert_eq!(
            check(long_mode, |s| {
                s.virtual_nmis = true;
                s.interruptibility = NMI;
                s.entry_interruption_info = INJECT_NMI;
            }),
            Some(NmiBlockedInjectingVirtualNmi)
        );
        // Without virtual NMIs, NMI blocking is the guest's own business.
        assert_eq!(
            check(long_mode, |s| {
                s.interruptibility = NMI;
                s.entry_interruption_info = INJECT_NMI;
            }),
            None
        );
        assert_eq!(
            check(long_mode, |s| {
                s.interruptibility = STI;
                s.entry_interruption_info = INJECT_NMI;
            }),
            Some(StiInjectingNmi)
        );
    }

    #[test]
    fn pending_debug_exceptions_and_link_pointer() {
        assert_eq!(check(long_mode, |s| s.pending_debug = 1 << 4), Some(PendingDebugReserved(1 << 4)));
        assert_eq!(check(long_mode, |s| s.pending_debug = 1 << 13), Some(PendingDebugReserved(1 << 13)));
        assert_eq!(
            check(long_mode, |s| {
                s.rflags |= RFLAGS_TF;
                s.interruptibility = STI;
            }),
            Some(SingleStepWithoutBs)
        );
        assert_eq!(
            check(long_mode, |s| {
                s.activity = activity::HLT;
                s.pending_debug = PENDING_DEBUG_BS;
            }),
            Some(BsWithoutSingleStep)
        );
        // With DEBUGCTL.BTF, TF traps branches, not single steps.
        assert_eq!(
            check(long_mode, |s| {
                s.rflags |= RFLAGS_TF;
                s.debugctl = DEBUGCTL_BTF;
                s.interruptibility = MOV_SS;
                s.pending_debug = PENDING_DEBUG_BS;
            }),
            Some(BsWithoutSingleStep)
        );
        // Outside a shadow or HLT, BS may be anything.
        assert_eq!(check(long_mode, |s| s.pending_debug = PENDING_DEBUG_BS), None);
        assert_eq!(check(long_mode, |s| s.vmcs_link_pointer = 0x5008), Some(VmcsLinkPointer(0x5008)));
        assert_eq!(check(long_mode, |s| s.vmcs_link_pointer = 1 << 41), Some(VmcsLinkPointer(1 << 41)));
    }

    #[test]
    fn pdptes() {
        let pae = |s: &mut VmxGuestState| s.cr4 |= cr4::PAE;
        for (bad, index) in [(1u64 << 1, 1), (1 << 5, 2), (1 << 8, 3), (1 << 45, 0)] {
            assert_eq!(
                check(protected_mode, |s| {
                    pae(s);
                    s.pdpte[index] = 0x1001 | bad;
                }),
                Some(PdpteReserved { index: index as u8, value: 0x1001 | bad }),
                "{bad:#x}"
            );
        }
        // Only with PAE paging outside IA-32e mode.
        assert_eq!(check(protected_mode, |s| s.pdpte[0] = 0x1003), None);
        assert_eq!(check(long_mode, |s| s.pdpte[0] = 0x1003), None);
    }

    #[test]
    fn the_first_failure_in_sdm_order_is_reported() {
        assert_eq!(
            check(long_mode, |s| {
                s.rflags |= 1 << 15;
                s.tr.selector |= 4;
                s.cr3 |= 1 << 50;
            }),
            Some(Cr3BeyondMaxPhys(1 << 50))
        );
    }

    #[test]
    fn messages_name_the_field_and_the_rule() {
        assert_eq!(SegmentType(SegReg::Ss, 11).to_string(), "the SS type 11 is not read/write accessed data (3 or 7)");
        assert_eq!(RflagsReserved(0x8000).to_string(), "RFLAGS has reserved bits 0x8000 set");
        assert_eq!(DescriptorS(SegReg::Tr).to_string(), "the TR access rights have S set (must be a system descriptor)");
        assert_eq!(
            EferLmaNotIa32e { lma: false }.to_string(),
            "IA32_EFER.LMA is 0 but the IA-32e mode guest control is 1"
        );
        assert_eq!(vm_instruction_error(7), Some("VM entry with invalid control field(s)"));
        assert_eq!(vm_instruction_error(8), Some("VM entry with invalid host-state field(s)"));
        assert_eq!(vm_instruction_error(14), None);
        assert_eq!(
            EntryFailure { reason: EXIT_INVALID_GUEST_STATE, qualification: 4 }.to_string(),
            "invalid guest state (exit reason 33, qualification 4): the VMCS link pointer is invalid"
        );
        assert_eq!(
            EntryFailure { reason: EXIT_MSR_LOADING, qualification: 2 }.to_string(),
            "loading entry 2 of the VM-entry MSR-load area failed (exit reason 34)"
        );
        use crate::StateCheck;
        assert_eq!(StateCheck::VmInstructionError(7).to_string(), "VM-instruction error 7 (VM entry with invalid control field(s))");
        assert_eq!(StateCheck::Vmentry(TrUnusable).to_string(), "TR is marked unusable");
    }
}
