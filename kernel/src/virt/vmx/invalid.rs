//! A failed VM entry, named for the domain's crash report: the guest-state
//! check the VMCS fails (`ferrite_x86::vmentry`, redone on the fields read
//! back from the VMCS), else what the CPU itself said (the VM-instruction
//! error, or the entry-failure exit with its qualification).

use super::vmcs::*;
use super::{read, VmxConfig};
use crate::arch::cpu;
use ferrite_x86::vmentry::{first_failing_check, EntryFailure, VmxGuestState, VmxLimits, VmxSegment};
use ferrite_x86::StateCheck;

/// What a VM-entry failure exit (basic reason `reason`) means, with the
/// failing VMCS current on this CPU.
pub(super) fn entry_failure(config: &VmxConfig, reason: u32, qualification: u64) -> StateCheck {
    let failure = StateCheck::EntryFailure(EntryFailure { reason, qualification });
    if reason != EXIT_INVALID_GUEST_STATE {
        return failure;
    }
    first_failing_check(&guest_state(), &limits(config)).map_or(failure, StateCheck::Vmentry)
}

fn segment(selector: u32, base: u32, limit: u32, access_rights: u32) -> VmxSegment {
    VmxSegment {
        selector: read(selector) as u16,
        base: read(base),
        limit: read(limit) as u32,
        access_rights: read(access_rights) as u32,
    }
}

/// The fields the checks read, as the VMCS holds them (access rights
/// untranslated, so reserved bits show).
fn guest_state() -> VmxGuestState {
    let entry = read(ENTRY_CONTROLS) as u32;
    let mut segs = [VmxSegment::default(); 6];
    for (i, seg) in segs.iter_mut().enumerate() {
        let off = 2 * i as u32;
        *seg = segment(GUEST_ES_SEL + off, GUEST_ES_BASE + off, GUEST_ES_LIMIT + off, GUEST_ES_AR + off);
    }
    let mut pdpte = [0; 4];
    for (i, p) in pdpte.iter_mut().enumerate() {
        *p = read(GUEST_PDPTE0 + 2 * i as u32);
    }
    VmxGuestState {
        cr0: read(GUEST_CR0),
        cr3: read(GUEST_CR3),
        cr4: read(GUEST_CR4),
        dr7: read(GUEST_DR7),
        efer: read(GUEST_EFER),
        rflags: read(GUEST_RFLAGS),
        rip: read(GUEST_RIP),
        segs,
        tr: segment(GUEST_TR_SEL, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR),
        ldtr: segment(GUEST_LDTR_SEL, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR),
        gdtr_base: read(GUEST_GDTR_BASE),
        gdtr_limit: read(GUEST_GDTR_LIMIT) as u32,
        idtr_base: read(GUEST_IDTR_BASE),
        idtr_limit: read(GUEST_IDTR_LIMIT) as u32,
        interruptibility: read(GUEST_INTERRUPTIBILITY) as u32,
        activity: read(GUEST_ACTIVITY) as u32,
        pending_debug: read(GUEST_PENDING_DBG),
        debugctl: read(GUEST_DEBUGCTL),
        pdpte,
        vmcs_link_pointer: read(VMCS_LINK_POINTER),
        ia32e_mode_guest: entry & ENTRY_IA32E != 0,
        load_efer: entry & ENTRY_LOAD_EFER != 0,
        load_debug_controls: entry & ENTRY_LOAD_DEBUG != 0,
        unrestricted_guest: read(PROC_CONTROLS2) as u32 & PROC2_UNRESTRICTED != 0,
        virtual_nmis: read(PIN_CONTROLS) as u32 & PIN_VIRTUAL_NMIS != 0,
        entry_interruption_info: read(ENTRY_INTR_INFO) as u32,
    }
}

/// This CPU's fixed CR0/CR4 bits (read at detection), MAXPHYADDR and
/// linear-address width.
fn limits(config: &VmxConfig) -> VmxLimits {
    let ext8 = (cpu::max_extended_leaf() >= 0x8000_0008).then(|| cpu::cpuid(0x8000_0008, 0).eax);
    VmxLimits {
        cr0_fixed0: config.cr0_fixed0,
        cr0_fixed1: config.cr0_fixed1,
        cr4_fixed0: config.cr4_fixed0,
        cr4_fixed1: config.cr4_fixed1,
        max_phys_bits: ext8.map_or(36, |a| a as u8),
        linear_address_bits: ext8.map_or(48, |a| (a >> 8) as u8),
    }
}
