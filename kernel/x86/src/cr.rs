//! Control-register rules a guest write must pass (AMD APM vol. 2, 3.1;
//! Intel SDM vol. 3A, 2.5), checked against the CPUID the guest sees so
//! that a bit for a feature it was not offered gets #GP as on a CPU
//! without that feature.

/// CR4 bits.
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
}

/// The CPUID words that decide which CR4 bits exist.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cr4Features {
    /// CPUID.1:ECX and EDX.
    pub leaf1_ecx: u32,
    pub leaf1_edx: u32,
    /// CPUID.(7,0):EBX and ECX (0 when leaf 7 is beyond the maximum).
    pub leaf7_ebx: u32,
    pub leaf7_ecx: u32,
}

/// The CR4 bits a guest with these features may set.
pub fn cr4_allowed(f: &Cr4Features) -> u64 {
    use cr4::*;
    let has = |word: u32, bit: u32| word & (1 << bit) != 0;
    // Always there on any x86-64 CPU: TSD, DE, PSE, PAE, MCE, PGE, PCE.
    let mut allowed = TSD | DE | PSE | PAE | MCE | PGE | PCE;
    if has(f.leaf1_edx, 1) {
        allowed |= VME | PVI;
    }
    if has(f.leaf1_edx, 24) {
        allowed |= OSFXSR;
    }
    if has(f.leaf1_edx, 25) {
        allowed |= OSXMMEXCPT;
    }
    if has(f.leaf1_ecx, 5) {
        allowed |= VMXE;
    }
    if has(f.leaf1_ecx, 6) {
        allowed |= SMXE;
    }
    if has(f.leaf1_ecx, 17) {
        allowed |= PCIDE;
    }
    if has(f.leaf1_ecx, 26) {
        allowed |= OSXSAVE;
    }
    if has(f.leaf7_ebx, 0) {
        allowed |= FSGSBASE;
    }
    if has(f.leaf7_ebx, 7) {
        allowed |= SMEP;
    }
    if has(f.leaf7_ebx, 20) {
        allowed |= SMAP;
    }
    if has(f.leaf7_ecx, 2) {
        allowed |= UMIP;
    }
    if has(f.leaf7_ecx, 3) {
        allowed |= PKE;
    }
    if has(f.leaf7_ecx, 7) {
        allowed |= CET;
    }
    if has(f.leaf7_ecx, 16) {
        allowed |= LA57;
    }
    allowed
}

/// Why a CR4 write gets #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cr4Fault {
    /// A reserved bit, or one for a feature the guest was not offered.
    Reserved(u64),
    /// PAE cleared, or LA57 changed, while long mode is active.
    LongModeBit,
    /// PCIDE set outside long mode or with CR3[11:0] not zero.
    Pcide,
    /// CET set while CR0.WP is clear.
    CetWithoutWp,
}

/// Checks a guest's write of `new` to CR4 (currently `old`), given whether
/// long mode is active (EFER.LMA), its CR3 and CR0.
pub fn check_cr4_write(old: u64, new: u64, features: &Cr4Features, long_mode: bool, cr3: u64, cr0: u64) -> Result<(), Cr4Fault> {
    let bad = new & !cr4_allowed(features);
    if bad != 0 {
        return Err(Cr4Fault::Reserved(bad));
    }
    if long_mode && (new & cr4::PAE == 0 || (old ^ new) & cr4::LA57 != 0) {
        return Err(Cr4Fault::LongModeBit);
    }
    if new & cr4::PCIDE != 0 && old & cr4::PCIDE == 0 && (!long_mode || cr3 & 0xFFF != 0) {
        return Err(Cr4Fault::Pcide);
    }
    if new & cr4::CET != 0 && cr0 & (1 << 16) == 0 {
        return Err(Cr4Fault::CetWithoutWp);
    }
    Ok(())
}

/// Whether changing CR4 from `old` to `new` must flush the guest's TLB
/// (SDM 4.10.4.1: PGE, PAE, PSE, PCIDE, SMEP, SMAP, PKE, LA57 changes).
pub fn cr4_change_flushes_tlb(old: u64, new: u64) -> bool {
    use cr4::*;
    (old ^ new) & (PGE | PAE | PSE | PCIDE | SMEP | SMAP | PKE | LA57) != 0
}

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// The bits that exist. Writes to the reserved ones in 31:0 are
    /// ignored (APM 3.1.1, SDM 2.5); bits 63:32 must be zero.
    pub const DEFINED: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    pub const SVME: u64 = 1 << 12;
    pub const LMSLE: u64 = 1 << 13;
    pub const FFXSR: u64 = 1 << 14;
    pub const TCE: u64 = 1 << 15;
    /// Bits 7:1 read as zero on AMD CPUs; writes to them are ignored.
    pub const RAZ: u64 = 0xFE;
}

/// Why a CR0 write gets #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cr0Fault {
    /// A bit in 63:32 set.
    HighBits,
    /// NW set with CD clear.
    NwWithoutCd,
    /// PG set with PE clear.
    PgWithoutPe,
    /// Paging turned on with EFER.LME set but CR4.PAE clear.
    LongModeWithoutPae,
    /// Paging turned on with EFER.LME set while CS.L is set.
    LongModeWithCsL,
    /// Paging turned off in 64-bit mode.
    PagingOffIn64BitMode,
    /// Paging turned off while CR4.PCIDE is set.
    PagingOffWithPcide,
    /// WP cleared while CR4.CET is set.
    WpClearedWithCet,
}

/// The rest of the vCPU's state a CR0 write is checked against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cr0Context {
    pub cr4: u64,
    /// The guest's EFER (as it sees it: without the SVME the VMCB needs).
    pub efer: u64,
    /// CS.L: with EFER.LMA, the vCPU is in 64-bit mode.
    pub cs_l: bool,
}

/// Checks a write of `new` to CR0 (currently `old`): MOV to CR0, or LMSW
/// and CLTS with the value from [`lmsw_value`] or [`clts_value`]. Returns
/// the value CR0 takes (ET reads as 1 and the reserved low bits as 0, as
/// on any CPU since the 486), or the reason for #GP (APM vol. 2 3.1.1 and
/// table 14-5, SDM vol. 3A 2.5 and "MOV—Move to/from Control Registers").
pub fn check_cr0_write(old: u64, new: u64, ctx: &Cr0Context) -> Result<u64, Cr0Fault> {
    use cr0::*;
    if new >> 32 != 0 {
        return Err(Cr0Fault::HighBits);
    }
    if new & NW != 0 && new & CD == 0 {
        return Err(Cr0Fault::NwWithoutCd);
    }
    if new & PG != 0 && new & PE == 0 {
        return Err(Cr0Fault::PgWithoutPe);
    }
    let paging_on = old & PG == 0 && new & PG != 0;
    let paging_off = old & PG != 0 && new & PG == 0;
    if paging_on && ctx.efer & efer::LME != 0 {
        if ctx.cr4 & cr4::PAE == 0 {
            return Err(Cr0Fault::LongModeWithoutPae);
        }
        if ctx.cs_l {
            return Err(Cr0Fault::LongModeWithCsL);
        }
    }
    if paging_off && ctx.efer & efer::LMA != 0 && ctx.cs_l {
        return Err(Cr0Fault::PagingOffIn64BitMode);
    }
    if paging_off && ctx.cr4 & cr4::PCIDE != 0 {
        return Err(Cr0Fault::PagingOffWithPcide);
    }
    if new & WP == 0 && ctx.cr4 & cr4::CET != 0 {
        return Err(Cr0Fault::WpClearedWithCet);
    }
    Ok((new & DEFINED) | ET)
}

/// The CR0 value LMSW with source `src` asks for: it loads MP, EM and TS
/// and can set PE but never clear it.
pub fn lmsw_value(old: u64, src: u16) -> u64 {
    (old & !(cr0::MP | cr0::EM | cr0::TS)) | u64::from(src & 0xF)
}

/// The CR0 value CLTS leaves.
pub fn clts_value(old: u64) -> u64 {
    old & !cr0::TS
}

/// EFER as it stands after a CR0 write that left CR0 = `new_cr0`: long
/// mode is active exactly while LME and PG are both set.
pub fn efer_after_cr0_write(efer: u64, new_cr0: u64) -> u64 {
    if efer & efer::LME != 0 && new_cr0 & cr0::PG != 0 {
        efer | efer::LMA
    } else {
        efer & !efer::LMA
    }
}

/// Whether changing CR0 from `old` to `new` must flush the guest's TLB
/// (paging turned on or off, or the protection rules changed).
pub fn cr0_change_flushes_tlb(old: u64, new: u64) -> bool {
    (old ^ new) & (cr0::PG | cr0::PE | cr0::WP) != 0
}

/// A MOV to CR3 that may go ahead: the value CR3 takes and whether the
/// guest's TLB must be flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr3Write {
    pub value: u64,
    pub flush: bool,
}

/// Why a CR3 write gets #GP: in long mode, bits at or above MAXPHYADDR
/// (these bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr3Fault(pub u64);

/// The bits at or above `max_phys_bits` (MAXPHYADDR, clamped to 32..=52).
pub fn beyond_max_phys(value: u64, max_phys_bits: u8) -> u64 {
    value & !((1u64 << max_phys_bits.clamp(32, 52)) - 1)
}

/// Checks a MOV to CR3 of `value`, given whether long mode is active
/// (EFER.LMA), CR4.PCIDE and the guest's MAXPHYADDR (CPUID 0x8000_0008
/// EAX[7:0]). In long mode bits 63:MAXPHYADDR are reserved and raise #GP
/// (APM vol. 2 3.1.2 and table 14-5), except that with PCIDE bit 63 is
/// the "do not flush" hint, which is cleared rather than stored (SDM vol.
/// 3A 4.10.4.1). Outside long mode the register is 32 bits wide.
pub fn check_cr3_write(value: u64, long_mode: bool, pcide: bool, max_phys_bits: u8) -> Result<Cr3Write, Cr3Fault> {
    if !long_mode {
        return Ok(Cr3Write { value: value & 0xFFFF_FFFF, flush: true });
    }
    const NO_FLUSH: u64 = 1 << 63;
    let (value, flush) = if pcide { (value & !NO_FLUSH, value & NO_FLUSH == 0) } else { (value, true) };
    match beyond_max_phys(value, max_phys_bits) {
        0 => Ok(Cr3Write { value, flush }),
        bad => Err(Cr3Fault(bad)),
    }
}

/// The CPUID words that decide which EFER bits exist: CPUID.0x8000_0001
/// ECX and EDX (0 when that leaf is beyond the maximum).
#[derive(Clone, Copy, Debug, Default)]
pub struct EferFeatures {
    pub ext1_ecx: u32,
    pub ext1_edx: u32,
}

/// The EFER bits a guest with these features may set. SCE exists on every
/// x86-64 CPU. LMSLE is never allowed: Ferrite does not offer it (CPUID
/// 0x8000_0008 EBX[20], "EFER.LMSLE unsupported", is set for guests), as
/// Zen 3 and later CPUs no longer have it.
pub fn efer_allowed(f: &EferFeatures) -> u64 {
    use efer::*;
    let has = |word: u32, bit: u32| word & (1 << bit) != 0;
    let mut allowed = SCE;
    if has(f.ext1_edx, 29) {
        allowed |= LME | LMA;
    }
    if has(f.ext1_edx, 20) {
        allowed |= NXE;
    }
    if has(f.ext1_ecx, 2) {
        allowed |= SVME;
    }
    if has(f.ext1_edx, 25) {
        allowed |= FFXSR;
    }
    if has(f.ext1_ecx, 17) {
        allowed |= TCE;
    }
    allowed
}

/// Why a WRMSR to EFER gets #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EferFault {
    /// A reserved bit, or one for a feature the guest was not offered.
    Reserved(u64),
    /// LME changed while paging is on.
    LmeWithPaging,
    /// LMA written other than as the CPU keeps it (LME and CR0.PG).
    Lma,
}

/// Checks a WRMSR of `new` to EFER (currently `old`, as the guest sees it)
/// given CR0: the value EFER takes, or why #GP. Bits 7:1 are read-as-zero
/// and ignored (APM vol. 2 3.1.7); LME may not change while CR0.PG is set
/// (table 14-5); LMA is the CPU's, so a value must carry it as it is.
pub fn check_efer_write(old: u64, new: u64, features: &EferFeatures, cr0: u64) -> Result<u64, EferFault> {
    let new = new & !efer::RAZ;
    let bad = new & !efer_allowed(features);
    if bad != 0 {
        return Err(EferFault::Reserved(bad));
    }
    let paging = cr0 & cr0::PG != 0;
    if paging && (old ^ new) & efer::LME != 0 {
        return Err(EferFault::LmeWithPaging);
    }
    let lma = if new & efer::LME != 0 && paging { efer::LMA } else { 0 };
    if new & efer::LMA != lma {
        return Err(EferFault::Lma);
    }
    Ok(new)
}

/// Whether a MOV to CR0 or CR4 makes a CPU that keeps the PAE
/// page-directory-pointer entries in registers (Intel) load them from CR3
/// (SDM vol. 3A 4.4.1): PAE paging is in use after the write (CR0.PG,
/// CR4.PAE, not long mode), and the write changes CR0.CD, NW or PG, or
/// CR4.PAE, PGE, PSE or SMEP. `efer` is EFER after the write.
pub fn write_loads_pae_pdptes(old_cr0: u64, new_cr0: u64, old_cr4: u64, new_cr4: u64, efer: u64) -> bool {
    let pae_paging = new_cr0 & cr0::PG != 0 && new_cr4 & cr4::PAE != 0 && efer & efer::LMA == 0;
    let cr0_bits = cr0::CD | cr0::NW | cr0::PG;
    let cr4_bits = cr4::PAE | cr4::PGE | cr4::PSE | cr4::SMEP;
    pae_paging && ((old_cr0 ^ new_cr0) & cr0_bits != 0 || (old_cr4 ^ new_cr4) & cr4_bits != 0)
}

/// Whether a PAE PDPTE is present with a reserved bit set (bits 2:1, 8:5
/// and MAXPHYADDR up to 63, bit 63 included: SDM vol. 3A table 4-8), which
/// makes the MOV that loads it #GP(0) with nothing loaded.
pub fn pae_pdpte_reserved(pdpte: u64, max_phys: u8) -> bool {
    let max_phys = max_phys.clamp(32, 52);
    let reserved = 0b1_1110_0110 | !((1u64 << max_phys) - 1);
    pdpte & 1 != 0 && pdpte & reserved != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_pdptes_load_only_when_pae_paging_changes() {
        let (pg, pae) = (cr0::PG | cr0::PE, cr4::PAE);
        assert!(write_loads_pae_pdptes(cr0::PE, pg, pae, pae, 0), "PG set with PAE");
        assert!(!write_loads_pae_pdptes(cr0::PE, pg, 0, 0, 0), "PG set without PAE");
        assert!(!write_loads_pae_pdptes(cr0::PE, pg, pae, pae, efer::LME | efer::LMA), "long mode");
        assert!(write_loads_pae_pdptes(pg, pg, 0, pae, 0), "PAE set with PG");
        assert!(write_loads_pae_pdptes(pg, pg, pae, pae | cr4::PGE, 0), "PGE toggled");
        assert!(!write_loads_pae_pdptes(pg, pg, pae, pae | cr4::OSFXSR, 0), "OSFXSR is not a paging bit");
        assert!(write_loads_pae_pdptes(pg, pg | cr0::CD, pae, pae, 0), "CD toggled");
        assert!(!write_loads_pae_pdptes(pg, pg | cr0::TS, pae, pae, 0), "TS is not a paging bit");
        assert!(!write_loads_pae_pdptes(pg, cr0::PE, pae, pae, 0), "paging turned off");
    }

    #[test]
    fn pae_pdpte_reserved_bits() {
        assert!(!pae_pdpte_reserved(0x1000 | 1, 36));
        assert!(!pae_pdpte_reserved(0x1000 | 1 | (1 << 3) | (1 << 4) | (0x7 << 9), 36), "PWT, PCD and the ignored bits");
        assert!(!pae_pdpte_reserved(0xFFFF_FFFF_FFFF_FFFE, 36), "not present: nothing is checked");
        for bit in [1, 2, 5, 6, 7, 8, 36, 51, 63] {
            assert!(pae_pdpte_reserved(1 | (1 << bit), 36), "bit {bit}");
        }
        assert!(!pae_pdpte_reserved(1 | (1 << 36), 40), "below a larger MAXPHYADDR");
    }

    const LONG_CR0: u64 = 0x8005_0033;

    fn qemu64() -> Cr4Features {
        // qemu64: FXSR, SSE, VME, no PCID/XSAVE/leaf-7 features.
        Cr4Features { leaf1_edx: (1 << 1) | (1 << 24) | (1 << 25), leaf1_ecx: 0, leaf7_ebx: 0, leaf7_ecx: 0 }
    }

    #[test]
    fn ordinary_long_mode_cr4_passes() {
        let linux = cr4::PAE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::PSE;
        assert_eq!(check_cr4_write(cr4::PAE, linux, &qemu64(), true, 0x1000, LONG_CR0), Ok(()));
    }

    #[test]
    fn reserved_and_unoffered_bits_fault() {
        let f = qemu64();
        assert_eq!(check_cr4_write(0, 1 << 15, &f, false, 0, 0x11), Err(Cr4Fault::Reserved(1 << 15)));
        assert_eq!(check_cr4_write(0, 1 << 40, &f, false, 0, 0x11), Err(Cr4Fault::Reserved(1 << 40)));
        for bit in [cr4::PKE, cr4::LA57, cr4::OSXSAVE, cr4::PCIDE, cr4::SMEP, cr4::SMAP, cr4::FSGSBASE, cr4::VMXE, cr4::UMIP] {
            assert_eq!(check_cr4_write(0, bit, &f, false, 0, 0x11), Err(Cr4Fault::Reserved(bit)), "{bit:#x}");
        }
    }

    #[test]
    fn offered_features_unlock_their_bits() {
        let f = Cr4Features {
            leaf1_edx: 1 << 24,
            leaf1_ecx: (1 << 17) | (1 << 26),
            leaf7_ebx: 1 | (1 << 7) | (1 << 20),
            leaf7_ecx: (1 << 2) | (1 << 3) | (1 << 16),
        };
        let bits = cr4::OSXSAVE | cr4::SMEP | cr4::SMAP | cr4::FSGSBASE | cr4::UMIP | cr4::PKE | cr4::PAE;
        assert_eq!(check_cr4_write(cr4::PAE, bits, &f, true, 0, LONG_CR0), Ok(()));
    }

    #[test]
    fn long_mode_rules() {
        let f = Cr4Features { leaf7_ecx: 1 << 16, leaf1_ecx: 1 << 17, ..qemu64() };
        assert_eq!(check_cr4_write(cr4::PAE, 0, &f, true, 0, LONG_CR0), Err(Cr4Fault::LongModeBit));
        assert_eq!(check_cr4_write(cr4::PAE, cr4::PAE | cr4::LA57, &f, true, 0, LONG_CR0), Err(Cr4Fault::LongModeBit));
        assert_eq!(check_cr4_write(cr4::PAE, cr4::PAE | cr4::PCIDE, &f, true, 0x1003, LONG_CR0), Err(Cr4Fault::Pcide));
        assert_eq!(check_cr4_write(0, cr4::PCIDE, &f, false, 0, 0x11), Err(Cr4Fault::Pcide));
        assert_eq!(check_cr4_write(cr4::PAE, cr4::PAE | cr4::PCIDE, &f, true, 0x1000, LONG_CR0), Ok(()));
        // Outside long mode LA57 and PAE may change freely.
        assert_eq!(check_cr4_write(0, cr4::LA57, &f, false, 0, 0x11), Ok(()));
    }

    #[test]
    fn tlb_flush_bits() {
        assert!(cr4_change_flushes_tlb(0, cr4::PGE));
        assert!(!cr4_change_flushes_tlb(0, cr4::OSFXSR));
    }

    fn ctx(cr4: u64, efer: u64, cs_l: bool) -> Cr0Context {
        Cr0Context { cr4, efer, cs_l }
    }

    const PROT: u64 = cr0::PE | cr0::ET | cr0::NE;

    #[test]
    fn cr0_invalid_combinations_fault() {
        let c = ctx(0, 0, false);
        assert_eq!(check_cr0_write(PROT, PROT | (1 << 32), &c), Err(Cr0Fault::HighBits));
        assert_eq!(check_cr0_write(PROT, PROT | (1 << 63), &c), Err(Cr0Fault::HighBits));
        assert_eq!(check_cr0_write(PROT, PROT | cr0::NW, &c), Err(Cr0Fault::NwWithoutCd));
        assert_eq!(check_cr0_write(PROT, cr0::ET | cr0::PG, &c), Err(Cr0Fault::PgWithoutPe));
        // CD alone, and CD with NW, are fine.
        assert_eq!(check_cr0_write(PROT, PROT | cr0::CD, &c), Ok(PROT | cr0::CD));
        assert_eq!(check_cr0_write(PROT, PROT | cr0::CD | cr0::NW, &c), Ok(PROT | cr0::CD | cr0::NW));
    }

    #[test]
    fn cr0_reserved_low_bits_are_ignored_and_et_reads_one() {
        let c = ctx(0, 0, false);
        assert_eq!(check_cr0_write(PROT, cr0::PE | (1 << 6) | (1 << 17) | (1 << 28), &c), Ok(cr0::PE | cr0::ET));
        // Real mode, paging off: a plain value.
        assert_eq!(check_cr0_write(0x10, 0, &c), Ok(cr0::ET));
    }

    #[test]
    fn cr0_long_mode_rules() {
        let lme = efer::LME;
        let lma = efer::LME | efer::LMA;
        // Turning paging on with LME needs PAE, and CS.L clear.
        assert_eq!(check_cr0_write(PROT, PROT | cr0::PG, &ctx(0, lme, false)), Err(Cr0Fault::LongModeWithoutPae));
        assert_eq!(check_cr0_write(PROT, PROT | cr0::PG, &ctx(cr4::PAE, lme, true)), Err(Cr0Fault::LongModeWithCsL));
        assert_eq!(check_cr0_write(PROT, PROT | cr0::PG, &ctx(cr4::PAE, lme, false)), Ok(PROT | cr0::PG));
        // Without LME, 32-bit paging needs no PAE.
        assert_eq!(check_cr0_write(PROT, PROT | cr0::PG, &ctx(0, 0, false)), Ok(PROT | cr0::PG));
        // Paging off: not in 64-bit mode; in compatibility mode it is allowed.
        let on = PROT | cr0::PG;
        assert_eq!(check_cr0_write(on, PROT, &ctx(cr4::PAE, lma, true)), Err(Cr0Fault::PagingOffIn64BitMode));
        assert_eq!(check_cr0_write(on, PROT, &ctx(cr4::PAE, lma, false)), Ok(PROT));
        assert_eq!(check_cr0_write(on, PROT, &ctx(cr4::PAE | cr4::PCIDE, lma, false)), Err(Cr0Fault::PagingOffWithPcide));
        // Rewriting CR0 in 64-bit mode with PG kept is fine.
        assert_eq!(check_cr0_write(on, on | cr0::TS, &ctx(cr4::PAE, lma, true)), Ok(on | cr0::TS));
    }

    #[test]
    fn cr0_wp_with_cet() {
        let on = PROT | cr0::PG | cr0::WP;
        assert_eq!(check_cr0_write(on, on & !cr0::WP, &ctx(cr4::CET, 0, false)), Err(Cr0Fault::WpClearedWithCet));
        assert_eq!(check_cr0_write(on, on & !cr0::WP, &ctx(0, 0, false)), Ok(on & !cr0::WP));
    }

    #[test]
    fn lmsw_and_clts() {
        // LMSW cannot clear PE, but sets it and loads MP/EM/TS.
        assert_eq!(lmsw_value(PROT | cr0::TS, 0), PROT);
        assert_eq!(lmsw_value(cr0::ET, 1), cr0::ET | cr0::PE);
        assert_eq!(lmsw_value(PROT, 0xFFFF), PROT | cr0::MP | cr0::EM | cr0::TS);
        assert_eq!(clts_value(PROT | cr0::TS), PROT);
    }

    #[test]
    fn efer_follows_pg_and_lme() {
        assert_eq!(efer_after_cr0_write(efer::LME, PROT | cr0::PG), efer::LME | efer::LMA);
        assert_eq!(efer_after_cr0_write(efer::LME | efer::LMA, PROT), efer::LME);
        assert_eq!(efer_after_cr0_write(efer::NXE, PROT | cr0::PG), efer::NXE);
        assert!(cr0_change_flushes_tlb(PROT, PROT | cr0::PG));
        assert!(!cr0_change_flushes_tlb(PROT, PROT | cr0::TS));
    }

    #[test]
    fn cr3_reserved_bits_in_long_mode() {
        // MAXPHYADDR 40 (QEMU's default): bits 63:40 reserved.
        assert_eq!(check_cr3_write(1 << 40, true, false, 40), Err(Cr3Fault(1 << 40)));
        assert_eq!(check_cr3_write(1 << 52, true, false, 40), Err(Cr3Fault(1 << 52)));
        assert_eq!(check_cr3_write(1 << 63, true, false, 40), Err(Cr3Fault(1 << 63)));
        assert_eq!(check_cr3_write(0xFF_FFFF_F000, true, false, 40), Ok(Cr3Write { value: 0xFF_FFFF_F000, flush: true }));
        // With PCIDE bit 63 asks not to flush and is not stored.
        assert_eq!(check_cr3_write((1 << 63) | 0x1003, true, true, 40), Ok(Cr3Write { value: 0x1003, flush: false }));
        assert_eq!(check_cr3_write((1 << 62) | 0x1000, true, true, 40), Err(Cr3Fault(1 << 62)));
        // Outside long mode CR3 is 32 bits and nothing faults.
        assert_eq!(check_cr3_write(0xFFFF_FFFF_FFFF_F000, false, false, 40), Ok(Cr3Write { value: 0xFFFF_F000, flush: true }));
        // MAXPHYADDR is clamped to 52: bits 63:52 are always reserved.
        assert_eq!(check_cr3_write(1 << 52, true, false, 64), Err(Cr3Fault(1 << 52)));
    }

    /// qemu64's CPUID.0x8000_0001: SYSCALL, NX, LM; no FFXSR, TCE, SVM
    /// (Ferrite hides SVM anyway).
    fn qemu64_ext() -> EferFeatures {
        EferFeatures { ext1_ecx: 0, ext1_edx: (1 << 11) | (1 << 20) | (1 << 29) }
    }

    #[test]
    fn efer_reserved_and_unoffered_bits_fault() {
        let f = qemu64_ext();
        for bit in [efer::SVME, efer::LMSLE, efer::FFXSR, efer::TCE, 1 << 9, 1 << 16, 1 << 21, 1 << 63] {
            assert_eq!(check_efer_write(0, bit, &f, PROT), Err(EferFault::Reserved(bit)), "{bit:#x}");
        }
        assert_eq!(check_efer_write(0, efer::SCE | efer::NXE | efer::LME, &f, PROT), Ok(efer::SCE | efer::NXE | efer::LME));
        // Read-as-zero bits are dropped, not refused.
        assert_eq!(check_efer_write(0, efer::SCE | 0x2, &f, PROT), Ok(efer::SCE));
        // Without NX and LM in CPUID, NXE and LME are reserved.
        let bare = EferFeatures::default();
        assert_eq!(check_efer_write(0, efer::NXE, &bare, PROT), Err(EferFault::Reserved(efer::NXE)));
        assert_eq!(check_efer_write(0, efer::LME, &bare, PROT), Err(EferFault::Reserved(efer::LME)));
        // Offered features unlock their bits.
        let rich = EferFeatures { ext1_ecx: (1 << 2) | (1 << 17), ext1_edx: (1 << 25) | (1 << 29) };
        let bits = efer::SVME | efer::TCE | efer::FFXSR;
        assert_eq!(check_efer_write(0, bits, &rich, PROT), Ok(bits));
    }

    #[test]
    fn efer_long_mode_rules() {
        let f = qemu64_ext();
        let paged = PROT | cr0::PG;
        let long = efer::LME | efer::LMA;
        // LME cannot change while paging is on, either way.
        assert_eq!(check_efer_write(0, efer::LME, &f, paged), Err(EferFault::LmeWithPaging));
        assert_eq!(check_efer_write(long, 0, &f, paged), Err(EferFault::LmeWithPaging));
        assert_eq!(check_efer_write(long, long | efer::NXE, &f, paged), Ok(long | efer::NXE));
        // LMA is the CPU's: written as it is, or #GP.
        assert_eq!(check_efer_write(long, efer::LME, &f, paged), Err(EferFault::Lma));
        assert_eq!(check_efer_write(0, efer::LMA, &f, PROT), Err(EferFault::Lma));
        assert_eq!(check_efer_write(0, efer::LME, &f, PROT), Ok(efer::LME));
    }
}
