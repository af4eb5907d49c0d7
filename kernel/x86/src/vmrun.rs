//! The consistency checks VMRUN applies to a VMCB's guest state (AMD APM
//! vol. 2, 15.5.1 "Basic Operation", canonicalization and consistency
//! checks), redone in software. The CPU only answers VMEXIT_INVALID; when
//! it does, [`first_failing_check`] names the field that made it refuse,
//! for the domain's crash report. Guest writes are checked before they
//! reach the VMCB (`cr`), so none of these should ever fail.

use crate::cr::{beyond_max_phys, cr0, cr4, efer};
use core::fmt;

/// The VMCB fields the checks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmcbState {
    /// The VMCB's EFER (with the SVME bit VMRUN needs).
    pub efer: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr6: u64,
    pub dr7: u64,
    /// CS attributes in the VMCB's 12-bit form (L is bit 9, D bit 10).
    pub cs_attrib: u16,
    /// EVENTINJ.
    pub event_inj: u64,
    pub asid: u32,
    /// The VMRUN intercept bit.
    pub vmrun_intercepted: bool,
    pub iopm_base: u64,
    pub msrpm_base: u64,
}

/// What the host CPU supports, which some checks are relative to.
#[derive(Clone, Copy, Debug)]
pub struct HostLimits {
    /// MAXPHYADDR.
    pub max_phys_bits: u8,
    /// The CR4 bits the CPU has (`cr::cr4_allowed` of its CPUID).
    pub cr4_allowed: u64,
    /// The EFER bits the CPU has (`cr::efer_allowed` of its CPUID, plus
    /// SVME).
    pub efer_allowed: u64,
    pub long_mode: bool,
}

/// The check that failed, in the APM's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmrunCheck {
    SvmeClear,
    NwWithoutCd,
    Cr0HighBits(u64),
    /// CR3 bits at or above MAXPHYADDR in long mode.
    Cr3Mbz(u64),
    Cr4Mbz(u64),
    Dr6HighBits(u64),
    Dr7HighBits(u64),
    EferMbz(u64),
    NoLongMode,
    LongModeWithoutPae,
    LongModeWithoutPe,
    LongModeCsLAndD,
    VmrunNotIntercepted,
    PermissionMapBeyondMemory,
    Asid0,
    /// EVENTINJ names an event VMRUN cannot inject.
    EventInjection(u64),
}

impl fmt::Display for VmrunCheck {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            VmrunCheck::SvmeClear => write!(f, "EFER.SVME is clear"),
            VmrunCheck::NwWithoutCd => write!(f, "CR0.NW is set with CR0.CD clear"),
            VmrunCheck::Cr0HighBits(v) => write!(f, "CR0[63:32] is not zero (CR0 {v:#x})"),
            VmrunCheck::Cr3Mbz(b) => write!(f, "CR3 has must-be-zero bits {b:#x} set"),
            VmrunCheck::Cr4Mbz(b) => write!(f, "CR4 has must-be-zero bits {b:#x} set"),
            VmrunCheck::Dr6HighBits(v) => write!(f, "DR6[63:32] is not zero (DR6 {v:#x})"),
            VmrunCheck::Dr7HighBits(v) => write!(f, "DR7[63:32] is not zero (DR7 {v:#x})"),
            VmrunCheck::EferMbz(b) => write!(f, "EFER has must-be-zero bits {b:#x} set"),
            VmrunCheck::NoLongMode => write!(f, "EFER.LME or LMA is set on a CPU without long mode"),
            VmrunCheck::LongModeWithoutPae => write!(f, "EFER.LME and CR0.PG are set with CR4.PAE clear"),
            VmrunCheck::LongModeWithoutPe => write!(f, "EFER.LME and CR0.PG are set with CR0.PE clear"),
            VmrunCheck::LongModeCsLAndD => write!(f, "EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D are all set"),
            VmrunCheck::VmrunNotIntercepted => write!(f, "the VMRUN intercept is clear"),
            VmrunCheck::PermissionMapBeyondMemory => {
                write!(f, "the I/O or MSR permission map reaches beyond the largest physical address")
            }
            VmrunCheck::Asid0 => write!(f, "the guest ASID is 0"),
            VmrunCheck::EventInjection(e) => write!(f, "EVENTINJ {e:#x} is not an event VMRUN can inject"),
        }
    }
}

/// Sizes of the I/O and MSR permission maps.
const IOPM_SIZE: u64 = 12 * 1024;
const MSRPM_SIZE: u64 = 8 * 1024;

/// The first of VMRUN's consistency checks that `s` fails on a CPU like
/// `host`, or `None` when it passes them all.
pub fn first_failing_check(s: &VmcbState, host: &HostLimits) -> Option<VmrunCheck> {
    let lme_pg = s.efer & efer::LME != 0 && s.cr0 & cr0::PG != 0;
    let cs_l = s.cs_attrib & (1 << 9) != 0;
    let cs_d = s.cs_attrib & (1 << 10) != 0;
    let beyond = |base: u64, size: u64| (base & !0xFFF).saturating_add(size) > 1u64 << host.max_phys_bits.min(63);
    let checks = [
        (s.efer & efer::SVME == 0, VmrunCheck::SvmeClear),
        (s.cr0 & cr0::NW != 0 && s.cr0 & cr0::CD == 0, VmrunCheck::NwWithoutCd),
        (s.cr0 >> 32 != 0, VmrunCheck::Cr0HighBits(s.cr0)),
        (s.efer & efer::LMA != 0 && beyond_max_phys(s.cr3, host.max_phys_bits) != 0, VmrunCheck::Cr3Mbz(beyond_max_phys(s.cr3, host.max_phys_bits))),
        (s.cr4 & !host.cr4_allowed != 0, VmrunCheck::Cr4Mbz(s.cr4 & !host.cr4_allowed)),
        (s.dr6 >> 32 != 0, VmrunCheck::Dr6HighBits(s.dr6)),
        (s.dr7 >> 32 != 0, VmrunCheck::Dr7HighBits(s.dr7)),
        (s.efer & !host.efer_allowed != 0, VmrunCheck::EferMbz(s.efer & !host.efer_allowed)),
        (!host.long_mode && s.efer & (efer::LME | efer::LMA) != 0, VmrunCheck::NoLongMode),
        (lme_pg && s.cr4 & cr4::PAE == 0, VmrunCheck::LongModeWithoutPae),
        (lme_pg && s.cr0 & cr0::PE == 0, VmrunCheck::LongModeWithoutPe),
        (lme_pg && s.cr4 & cr4::PAE != 0 && cs_l && cs_d, VmrunCheck::LongModeCsLAndD),
        (!s.vmrun_intercepted, VmrunCheck::VmrunNotIntercepted),
        (beyond(s.iopm_base, IOPM_SIZE) || beyond(s.msrpm_base, MSRPM_SIZE), VmrunCheck::PermissionMapBeyondMemory),
        (s.asid == 0, VmrunCheck::Asid0),
        (!event_injectable(s.event_inj), VmrunCheck::EventInjection(s.event_inj)),
    ];
    checks.into_iter().find_map(|(failed, check)| failed.then_some(check))
}

/// Whether VMRUN accepts EVENTINJ `e` (APM vol. 2, 15.20): nothing valid,
/// or an external interrupt, an NMI, an exception other than vector 2 and
/// within 0-31, or a software interrupt, with bits 30:12 clear.
fn event_injectable(e: u64) -> bool {
    const VALID: u64 = 1 << 31;
    if e & VALID == 0 {
        return true;
    }
    let vector = e & 0xFF;
    let reserved = e & 0x7FFF_F000 != 0;
    let ok_type = match (e >> 8) & 7 {
        0 | 2 | 4 => true,
        3 => vector != 2 && vector < 32,
        _ => false,
    };
    ok_type && !reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits {
            max_phys_bits: 40,
            cr4_allowed: cr4::PAE | cr4::PSE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT,
            efer_allowed: efer::SCE | efer::LME | efer::LMA | efer::NXE | efer::SVME,
            long_mode: true,
        }
    }

    /// A 64-bit guest as Ferrite's loader starts one.
    fn good() -> VmcbState {
        VmcbState {
            efer: efer::SVME | efer::LME | efer::LMA | efer::NXE,
            cr0: 0x8005_0033,
            cr3: 0x10_0000,
            cr4: cr4::PAE,
            dr6: 0xFFFF_0FF0,
            dr7: 0x400,
            cs_attrib: 0xA9B,
            event_inj: 0,
            asid: 1,
            vmrun_intercepted: true,
            iopm_base: 0x20_0000,
            msrpm_base: 0x30_0000,
        }
    }

    fn check(f: impl FnOnce(&mut VmcbState)) -> Option<VmrunCheck> {
        let mut s = good();
        f(&mut s);
        first_failing_check(&s, &host())
    }

    #[test]
    fn a_good_vmcb_passes() {
        assert_eq!(check(|_| {}), None);
        // Real mode at reset passes too.
        assert_eq!(
            check(|s| {
                s.efer = efer::SVME;
                s.cr0 = 0x60000010;
                s.cr3 = 0;
                s.cr4 = 0;
                s.cs_attrib = 0x9B;
            }),
            None
        );
    }

    #[test]
    fn each_check_is_named() {
        assert_eq!(check(|s| s.efer &= !efer::SVME), Some(VmrunCheck::SvmeClear));
        assert_eq!(check(|s| s.cr0 |= cr0::NW), Some(VmrunCheck::NwWithoutCd));
        assert_eq!(check(|s| s.cr0 |= 1 << 40), Some(VmrunCheck::Cr0HighBits(0x100_8005_0033)));
        assert_eq!(check(|s| s.cr3 |= 1 << 45), Some(VmrunCheck::Cr3Mbz(1 << 45)));
        assert_eq!(check(|s| s.cr4 |= cr4::VMXE), Some(VmrunCheck::Cr4Mbz(cr4::VMXE)));
        assert_eq!(check(|s| s.dr6 |= 1 << 32), Some(VmrunCheck::Dr6HighBits(0x1_FFFF_0FF0)));
        assert_eq!(check(|s| s.dr7 |= 1 << 33), Some(VmrunCheck::Dr7HighBits(0x2_0000_0400)));
        assert_eq!(check(|s| s.efer |= efer::LMSLE), Some(VmrunCheck::EferMbz(efer::LMSLE)));
        assert_eq!(check(|s| s.cr4 &= !cr4::PAE), Some(VmrunCheck::LongModeWithoutPae));
        assert_eq!(check(|s| s.cr0 &= !cr0::PE), Some(VmrunCheck::LongModeWithoutPe));
        assert_eq!(check(|s| s.cs_attrib |= 1 << 10), Some(VmrunCheck::LongModeCsLAndD));
        assert_eq!(check(|s| s.vmrun_intercepted = false), Some(VmrunCheck::VmrunNotIntercepted));
        assert_eq!(check(|s| s.msrpm_base = (1 << 40) - 0x1000), Some(VmrunCheck::PermissionMapBeyondMemory));
        assert_eq!(check(|s| s.asid = 0), Some(VmrunCheck::Asid0));
        let mut no_lm = host();
        no_lm.long_mode = false;
        assert_eq!(first_failing_check(&good(), &no_lm), Some(VmrunCheck::NoLongMode));
    }

    #[test]
    fn cr3_bits_only_matter_in_long_mode() {
        assert_eq!(
            check(|s| {
                s.efer = efer::SVME;
                s.cr0 = 0x8000_0011;
                s.cr3 = 1 << 45;
            }),
            None
        );
    }

    #[test]
    fn the_first_failure_in_apm_order_is_reported() {
        assert_eq!(
            check(|s| {
                s.asid = 0;
                s.cr0 |= cr0::NW;
            }),
            Some(VmrunCheck::NwWithoutCd)
        );
    }

    #[test]
    fn event_injection() {
        let valid = 1u64 << 31;
        // #GP(0) with an error code, an NMI, an interrupt, INT 0x80.
        for e in [valid | (3 << 8) | (1 << 11) | 13, valid | (2 << 8) | 2, valid | 0x20, valid | (4 << 8) | 0x80] {
            assert_eq!(check(|s| s.event_inj = e), None, "{e:#x}");
        }
        // NMI as an exception, vector 32 as an exception, reserved types
        // and reserved bits.
        for e in [valid | (3 << 8) | 2, valid | (3 << 8) | 32, valid | (1 << 8), valid | (5 << 8), valid | (1 << 20)] {
            assert_eq!(check(|s| s.event_inj = e), Some(VmrunCheck::EventInjection(e)), "{e:#x}");
        }
        // Not valid: anything goes.
        assert_eq!(check(|s| s.event_inj = 7 << 8), None);
    }

    #[test]
    fn messages_name_the_field() {
        assert_eq!(VmrunCheck::Cr3Mbz(1 << 52).to_string(), "CR3 has must-be-zero bits 0x10000000000000 set");
        assert_eq!(VmrunCheck::NwWithoutCd.to_string(), "CR0.NW is set with CR0.CD clear");
    }
}
