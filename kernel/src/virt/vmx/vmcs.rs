//! VMCS field encodings (Intel SDM vol. 3, appendix B), the VMX capability
//! MSRs, and the VMX instructions as small wrappers. Every wrapper reports
//! the instruction's failure (CF or ZF set) instead of ignoring it.

#![allow(dead_code)]

// 16-bit fields.
pub const VPID: u32 = 0x0000;
pub const GUEST_ES_SEL: u32 = 0x0800;
pub const GUEST_TR_SEL: u32 = 0x080E;
pub const GUEST_LDTR_SEL: u32 = 0x080C;
pub const HOST_ES_SEL: u32 = 0x0C00;
pub const HOST_CS_SEL: u32 = 0x0C02;
pub const HOST_SS_SEL: u32 = 0x0C04;
pub const HOST_DS_SEL: u32 = 0x0C06;
pub const HOST_FS_SEL: u32 = 0x0C08;
pub const HOST_GS_SEL: u32 = 0x0C0A;
pub const HOST_TR_SEL: u32 = 0x0C0C;

// 64-bit fields.
pub const IO_BITMAP_A: u32 = 0x2000;
pub const IO_BITMAP_B: u32 = 0x2002;
pub const MSR_BITMAP: u32 = 0x2004;
pub const TSC_OFFSET: u32 = 0x2010;
pub const VIRTUAL_APIC_PAGE: u32 = 0x2012;
pub const EPT_POINTER: u32 = 0x201A;
pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
pub const VMCS_LINK_POINTER: u32 = 0x2800;
pub const GUEST_DEBUGCTL: u32 = 0x2802;
pub const GUEST_PAT: u32 = 0x2804;
pub const GUEST_EFER: u32 = 0x2806;
pub const GUEST_PDPTE0: u32 = 0x280A;
pub const HOST_PAT: u32 = 0x2C00;
pub const HOST_EFER: u32 = 0x2C02;

// 32-bit fields.
pub const PIN_CONTROLS: u32 = 0x4000;
pub const PROC_CONTROLS: u32 = 0x4002;
pub const EXCEPTION_BITMAP: u32 = 0x4004;
pub const PF_ERROR_MASK: u32 = 0x4006;
pub const PF_ERROR_MATCH: u32 = 0x4008;
pub const CR3_TARGET_COUNT: u32 = 0x400A;
pub const EXIT_CONTROLS: u32 = 0x400C;
pub const EXIT_MSR_STORE_COUNT: u32 = 0x400E;
pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
pub const ENTRY_CONTROLS: u32 = 0x4012;
pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
pub const ENTRY_INTR_INFO: u32 = 0x4016;
pub const ENTRY_EXCEPTION_ERROR: u32 = 0x4018;
pub const ENTRY_INSTRUCTION_LEN: u32 = 0x401A;
pub const TPR_THRESHOLD: u32 = 0x401C;
pub const PROC_CONTROLS2: u32 = 0x401E;
pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
pub const EXIT_REASON: u32 = 0x4402;
pub const EXIT_INTR_INFO: u32 = 0x4404;
pub const EXIT_INTR_ERROR: u32 = 0x4406;
pub const IDT_VECTORING_INFO: u32 = 0x4408;
pub const IDT_VECTORING_ERROR: u32 = 0x440A;
pub const EXIT_INSTRUCTION_LEN: u32 = 0x440C;
pub const EXIT_INSTRUCTION_INFO: u32 = 0x440E;
pub const GUEST_ES_LIMIT: u32 = 0x4800;
pub const GUEST_LDTR_LIMIT: u32 = 0x480C;
pub const GUEST_TR_LIMIT: u32 = 0x480E;
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
pub const GUEST_ES_AR: u32 = 0x4814;
pub const GUEST_LDTR_AR: u32 = 0x4820;
pub const GUEST_TR_AR: u32 = 0x4822;
pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
pub const GUEST_ACTIVITY: u32 = 0x4826;
pub const GUEST_SYSENTER_CS: u32 = 0x482A;
pub const HOST_SYSENTER_CS: u32 = 0x4C00;

// Natural-width fields.
pub const CR0_MASK: u32 = 0x6000;
pub const CR4_MASK: u32 = 0x6002;
pub const CR0_READ_SHADOW: u32 = 0x6004;
pub const CR4_READ_SHADOW: u32 = 0x6006;
pub const EXIT_QUALIFICATION: u32 = 0x6400;
pub const GUEST_CR0: u32 = 0x6800;
pub const GUEST_CR3: u32 = 0x6802;
pub const GUEST_CR4: u32 = 0x6804;
pub const GUEST_ES_BASE: u32 = 0x6806;
pub const GUEST_LDTR_BASE: u32 = 0x6812;
pub const GUEST_TR_BASE: u32 = 0x6814;
pub const GUEST_GDTR_BASE: u32 = 0x6816;
pub const GUEST_IDTR_BASE: u32 = 0x6818;
pub const GUEST_DR7: u32 = 0x681A;
pub const GUEST_RSP: u32 = 0x681C;
pub const GUEST_RIP: u32 = 0x681E;
pub const GUEST_RFLAGS: u32 = 0x6820;
pub const GUEST_PENDING_DBG: u32 = 0x6822;
pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
pub const HOST_CR0: u32 = 0x6C00;
pub const HOST_CR3: u32 = 0x6C02;
pub const HOST_CR4: u32 = 0x6C04;
pub const HOST_FS_BASE: u32 = 0x6C06;
pub const HOST_GS_BASE: u32 = 0x6C08;
pub const HOST_TR_BASE: u32 = 0x6C0A;
pub const HOST_GDTR_BASE: u32 = 0x6C0C;
pub const HOST_IDTR_BASE: u32 = 0x6C0E;
pub const HOST_SYSENTER_ESP: u32 = 0x6C10;
pub const HOST_SYSENTER_EIP: u32 = 0x6C12;

// Capability MSRs.
pub const MSR_FEATURE_CONTROL: u32 = 0x3A;
pub const MSR_SYSENTER_CS: u32 = 0x174;
pub const MSR_SYSENTER_ESP: u32 = 0x175;
pub const MSR_SYSENTER_EIP: u32 = 0x176;
pub const MSR_PAT: u32 = 0x277;
pub const MSR_VMX_BASIC: u32 = 0x480;
pub const MSR_VMX_PINBASED: u32 = 0x481;
pub const MSR_VMX_PROCBASED: u32 = 0x482;
pub const MSR_VMX_EXIT: u32 = 0x483;
pub const MSR_VMX_ENTRY: u32 = 0x484;
pub const MSR_VMX_CR0_FIXED0: u32 = 0x486;
pub const MSR_VMX_CR0_FIXED1: u32 = 0x487;
pub const MSR_VMX_CR4_FIXED0: u32 = 0x488;
pub const MSR_VMX_CR4_FIXED1: u32 = 0x489;
pub const MSR_VMX_PROCBASED2: u32 = 0x48B;
pub const MSR_VMX_EPT_VPID_CAP: u32 = 0x48C;
pub const MSR_VMX_TRUE_PINBASED: u32 = 0x48D;
pub const MSR_VMX_TRUE_PROCBASED: u32 = 0x48E;
pub const MSR_VMX_TRUE_EXIT: u32 = 0x48F;
pub const MSR_VMX_TRUE_ENTRY: u32 = 0x490;

// Pin-based controls.
pub const PIN_EXTERNAL_INTERRUPT: u32 = 1 << 0;
pub const PIN_NMI_EXITING: u32 = 1 << 3;
pub const PIN_VIRTUAL_NMIS: u32 = 1 << 5;
// Primary processor-based controls.
pub const PROC_INTERRUPT_WINDOW: u32 = 1 << 2;
pub const PROC_TSC_OFFSETTING: u32 = 1 << 3;
pub const PROC_HLT: u32 = 1 << 7;
pub const PROC_CR3_LOAD: u32 = 1 << 15;
pub const PROC_CR3_STORE: u32 = 1 << 16;
pub const PROC_CR8_LOAD: u32 = 1 << 19;
pub const PROC_CR8_STORE: u32 = 1 << 20;
pub const PROC_TPR_SHADOW: u32 = 1 << 21;
pub const PROC_NMI_WINDOW: u32 = 1 << 22;
pub const PROC_MOV_DR: u32 = 1 << 23;
pub const PROC_IO_BITMAPS: u32 = 1 << 25;
pub const PROC_MSR_BITMAPS: u32 = 1 << 28;
pub const PROC_SECONDARY: u32 = 1 << 31;
// Secondary processor-based controls.
pub const PROC2_EPT: u32 = 1 << 1;
pub const PROC2_RDTSCP: u32 = 1 << 3;
pub const PROC2_VPID: u32 = 1 << 5;
pub const PROC2_UNRESTRICTED: u32 = 1 << 7;
pub const PROC2_INVPCID: u32 = 1 << 12;
pub const PROC2_XSAVES: u32 = 1 << 20;
// VM-exit controls.
pub const EXIT_SAVE_DEBUG: u32 = 1 << 2;
pub const EXIT_HOST_64: u32 = 1 << 9;
pub const EXIT_SAVE_PAT: u32 = 1 << 18;
pub const EXIT_LOAD_PAT: u32 = 1 << 19;
pub const EXIT_SAVE_EFER: u32 = 1 << 20;
pub const EXIT_LOAD_EFER: u32 = 1 << 21;
// VM-entry controls.
pub const ENTRY_LOAD_DEBUG: u32 = 1 << 2;
pub const ENTRY_IA32E: u32 = 1 << 9;
pub const ENTRY_LOAD_PAT: u32 = 1 << 14;
pub const ENTRY_LOAD_EFER: u32 = 1 << 15;

// Basic exit reasons.
pub const EXIT_EXCEPTION_NMI: u32 = 0;
pub const EXIT_EXTERNAL_INTERRUPT: u32 = 1;
pub const EXIT_TRIPLE_FAULT: u32 = 2;
pub const EXIT_INIT: u32 = 3;
pub const EXIT_SIPI: u32 = 4;
pub const EXIT_SMI: u32 = 5;
pub const EXIT_OTHER_SMI: u32 = 6;
pub const EXIT_INTERRUPT_WINDOW: u32 = 7;
pub const EXIT_NMI_WINDOW: u32 = 8;
pub const EXIT_TASK_SWITCH: u32 = 9;
pub const EXIT_CPUID: u32 = 10;
pub const EXIT_GETSEC: u32 = 11;
pub const EXIT_HLT: u32 = 12;
pub const EXIT_INVD: u32 = 13;
pub const EXIT_VMCALL: u32 = 18;
pub const EXIT_VMCLEAR: u32 = 19;
pub const EXIT_VMXON: u32 = 27;
pub const EXIT_CR_ACCESS: u32 = 28;
pub const EXIT_DR_ACCESS: u32 = 29;
pub const EXIT_IO: u32 = 30;
pub const EXIT_RDMSR: u32 = 31;
pub const EXIT_WRMSR: u32 = 32;
pub const EXIT_INVALID_GUEST_STATE: u32 = 33;
pub const EXIT_MSR_LOADING: u32 = 34;
pub const EXIT_MACHINE_CHECK: u32 = 41;
pub const EXIT_TPR_BELOW_THRESHOLD: u32 = 43;
pub const EXIT_EPT_VIOLATION: u32 = 48;
pub const EXIT_EPT_MISCONFIG: u32 = 49;
pub const EXIT_INVEPT: u32 = 50;
pub const EXIT_INVVPID: u32 = 53;
pub const EXIT_XSETBV: u32 = 55;
pub const EXIT_VMFUNC: u32 = 59;

/// A VMX instruction failed: `Some(n)` is the VM-instruction error number
/// (VMfailValid), `None` means there was no current VMCS (VMfailInvalid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxFail(pub Option<u32>);

fn outcome(cf: u8, zf: u8) -> Result<(), VmxFail> {
    if cf != 0 {
        Err(VmxFail(None))
    } else if zf != 0 {
        // SAFETY: ZF means VMfailValid, so there is a current VMCS whose
        // VM-instruction error field can be read.
        Err(VmxFail(Some(unsafe { vmread_raw(VM_INSTRUCTION_ERROR) } as u32)))
    } else {
        Ok(())
    }
}

/// VMXON with the region at `pa`.
///
/// # Safety
/// CR4.VMXE is set, CR0/CR4 satisfy the fixed bits, and `pa` is a zeroed,
/// 4 KiB-aligned page holding the VMCS revision identifier that this CPU
/// owns for as long as VMX stays on.
pub unsafe fn vmxon(pa: u64) -> Result<(), VmxFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees.
    unsafe { core::arch::asm!("vmxon [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack)) };
    outcome(cf, zf)
}

/// VMCLEAR: the VMCS at `pa` is written back to memory and made inactive
/// (launch state "clear").
///
/// # Safety
/// VMX is on and `pa` is a VMCS page this code owns.
pub unsafe fn vmclear(pa: u64) -> Result<(), VmxFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees.
    unsafe { core::arch::asm!("vmclear [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack)) };
    outcome(cf, zf)
}

/// VMPTRLD: makes the VMCS at `pa` current on this CPU.
///
/// # Safety
/// VMX is on and `pa` is a VMCS page this code owns, not active on
/// another CPU.
pub unsafe fn vmptrld(pa: u64) -> Result<(), VmxFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees.
    unsafe { core::arch::asm!("vmptrld [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack)) };
    outcome(cf, zf)
}

/// Reads a field of the current VMCS (0 when it cannot).
///
/// # Safety
/// A VMCS is current on this CPU.
unsafe fn vmread_raw(field: u32) -> u64 {
    let value: u64;
    // SAFETY: as the caller guarantees; a failed VMREAD leaves `value`
    // as the zero it was set to.
    unsafe { core::arch::asm!("xor {v:e}, {v:e}", "vmread {v}, {f}", v = out(reg) value, f = in(reg) u64::from(field), options(nostack, nomem)) };
    value
}

/// Reads a field of the current VMCS.
///
/// # Safety
/// A VMCS is current on this CPU (the caller's `Current` proves it).
pub unsafe fn vmread(field: u32) -> u64 {
    // SAFETY: as the caller guarantees.
    unsafe { vmread_raw(field) }
}

/// Writes a field of the current VMCS.
///
/// # Safety
/// A VMCS is current on this CPU; the value is one the backend checked
/// (VM entry re-checks the guest state and fails cleanly otherwise).
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmxFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees.
    unsafe {
        core::arch::asm!("vmwrite {f}, {v}", "setc {c}", "setz {z}", f = in(reg) u64::from(field), v = in(reg) value, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// INVEPT of `kind` (1: single context, 2: all contexts) for `eptp`.
///
/// # Safety
/// VMX is on and the CPU supports INVEPT of that kind.
pub unsafe fn invept(kind: u64, eptp: u64) -> Result<(), VmxFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees; the descriptor lives on the stack.
    unsafe {
        core::arch::asm!("invept {k}, [{d}]", "setc {c}", "setz {z}", k = in(reg) kind, d = in(reg) descriptor.as_ptr(), c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// INVVPID of `kind` (1: single context, 2: all contexts) for `vpid`.
///
/// # Safety
/// VMX is on and the CPU supports INVVPID of that kind.
pub unsafe fn invvpid(kind: u64, vpid: u16) -> Result<(), VmxFail> {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    let (cf, zf): (u8, u8);
    // SAFETY: as the caller guarantees; the descriptor lives on the stack.
    unsafe {
        core::arch::asm!("invvpid {k}, [{d}]", "setc {c}", "setz {z}", k = in(reg) kind, d = in(reg) descriptor.as_ptr(), c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}
