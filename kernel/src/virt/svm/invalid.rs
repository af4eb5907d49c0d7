//! VMEXIT_INVALID: which of VMRUN's consistency checks the VMCB fails
//! (`ferrite_x86::vmrun`), for the domain's crash report.

use super::vmcb::*;
use crate::arch::cpu;
use ferrite_x86::StateCheck;

/// The first consistency check `vmcb` fails on this CPU, if any.
pub fn failed_check(vmcb: &Vmcb) -> Option<StateCheck> {
    ferrite_x86::vmrun::first_failing_check(&vmrun_state(vmcb), &host_limits()).map(StateCheck::Vmrun)
}

/// The fields VMRUN's consistency checks read
/// (`ferrite_x86::vmrun`).
fn vmrun_state(vmcb: &Vmcb) -> ferrite_x86::vmrun::VmcbState {
    ferrite_x86::vmrun::VmcbState {
        efer: vmcb.read_u64(EFER),
        cr0: vmcb.read_u64(CR0),
        cr3: vmcb.read_u64(CR3),
        cr4: vmcb.read_u64(CR4),
        dr6: vmcb.read_u64(DR6),
        dr7: vmcb.read_u64(DR7),
        cs_attrib: vmcb.read_u16(CS + 2),
        event_inj: vmcb.read_u64(EVENT_INJ),
        asid: vmcb.read_u32(GUEST_ASID),
        vmrun_intercepted: vmcb.read_u32(INTERCEPT_MISC2) & INTERCEPT_VMRUN != 0,
        iopm_base: vmcb.read_u64(IOPM_BASE),
        msrpm_base: vmcb.read_u64(MSRPM_BASE),
    }
}

/// What this CPU supports, for naming the VMRUN consistency check a VMCB
/// failed (`ferrite_x86::vmrun`).
fn host_limits() -> ferrite_x86::vmrun::HostLimits {
    use ferrite_x86::cr::{cr4_allowed, efer, efer_allowed, Cr4Features, EferFeatures};
    let max_ext = cpu::max_extended_leaf();
    let leaf1 = cpu::cpuid(1, 0);
    let (leaf7_ebx, leaf7_ecx) = if cpu::cpuid(0, 0).eax >= 7 {
        let l = cpu::cpuid(7, 0);
        (l.ebx, l.ecx)
    } else {
        (0, 0)
    };
    let ext1 = cpu::cpuid(0x8000_0001, 0);
    let ext8 = (max_ext >= 0x8000_0008).then(|| cpu::cpuid(0x8000_0008, 0));
    let cr4 = Cr4Features { leaf1_ecx: leaf1.ecx, leaf1_edx: leaf1.edx, leaf7_ebx, leaf7_ecx };
    let mut efer_bits = efer_allowed(&EferFeatures { ext1_ecx: ext1.ecx, ext1_edx: ext1.edx }) | efer::SVME;
    // CPUID 0x8000_0008 EBX[20]: EFER.LMSLE unsupported.
    if ext8.is_some_and(|l| l.ebx & (1 << 20) == 0) {
        efer_bits |= efer::LMSLE;
    }
    ferrite_x86::vmrun::HostLimits {
        max_phys_bits: ext8.map_or(36, |l| l.eax as u8),
        cr4_allowed: cr4_allowed(&cr4),
        efer_allowed: efer_bits,
        long_mode: ext1.edx & (1 << 29) != 0,
    }
}
