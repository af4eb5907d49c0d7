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

#[cfg(test)]
mod tests {
    use super::*;

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
}
