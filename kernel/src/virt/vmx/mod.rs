//! Intel VMX backend: detection (VMX, IA32_FEATURE_CONTROL, the true
//! controls, EPT, VPID, unrestricted guest, TPR shadow), VMXON per CPU,
//! the VMCS-based vCPU, `vmx_run` (VMLAUNCH/VMRESUME) and exit decoding
//! into the generic `VmExit`.
//!
//! The vCPU keeps a software copy of the guest state it may change
//! (control registers, segments, descriptor tables, interruptibility) and
//! writes it into the VMCS before an entry when it changed; after every
//! exit the state the guest can change without an exit is read back. So
//! `VcpuOps` accessors never touch the VMCS, which is current only on the
//! CPU running the vCPU. A VMCS is loaded (VMPTRLD) at a slice's first
//! entry and cleared (VMCLEAR) when the slice ends (`release_fpu`), so a
//! vCPU can run on any CPU next.

mod invalid;
mod vmcs;

use self::vmcs::*;
use super::{BackendKind, Capabilities, DetectError, EntryState, GuestRegs, PagingState, Segment, VcpuOps, VmExit};
use crate::arch::cpu::{self, msr};
use crate::arch::fpu::{self, FpuState, SseRegs};
use crate::arch::percpu::{self, MAX_CPUS};
use crate::mm;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::interrupts;
use x86_64::instructions::tables::sidt;
use x86_64::registers::control::Cr2;
use x86_64::registers::debug::{DebugAddressRegister, Dr0, Dr1, Dr2, Dr3, Dr6};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase};
use x86_64::registers::xcontrol::XCr0;

/// What detection settled on, for every CPU.
#[derive(Clone, Copy, Debug)]
struct VmxConfig {
    revision: u32,
    pin: u32,
    proc: u32,
    proc2: u32,
    exit: u32,
    entry: u32,
    /// Controls a vCPU may turn on and off (interrupt and NMI windows,
    /// CR8 loads, MOV DR).
    proc_may: u32,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    invept_single: bool,
    vpid: bool,
    invvpid_single: bool,
    /// VM exits report the address size and segment of INS/OUTS.
    ins_outs_info: bool,
    /// Unrestricted guest: the guest may run in real mode and in
    /// protected mode without paging. Without it, a guest with paging off
    /// runs on an identity map (`unpaged`), and real mode cannot run.
    unrestricted: bool,
}

static CONFIG: spin::Once<VmxConfig> = spin::Once::new();

const CR0_PE: u64 = 1;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;

const INTERRUPTIBILITY_STI: u32 = 1 << 0;
const INTERRUPTIBILITY_MOV_SS: u32 = 1 << 1;
const INTERRUPTIBILITY_NMI: u32 = 1 << 3;

const EVENT_VALID: u32 = 1 << 31;
const EVENT_ERROR_CODE: u32 = 1 << 11;
const EVENT_EXTERNAL: u32 = 0 << 8;
const EVENT_NMI: u32 = 2 << 8;
const EVENT_HW_EXCEPTION: u32 = 3 << 8;

const DB_VECTOR: u8 = 1;
const UD_VECTOR: u8 = 6;
const PF_VECTOR: u8 = 14;
const AC_VECTOR: u8 = 17;
const DR6_B0_B3: u64 = 0xF;
const DR6_BS: u64 = 1 << 14;
const DR7_GD: u64 = 1 << 13;

/// The MSRs a VMX exit does not switch that Linux-style guests own
/// (STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE): the hypervisor never uses
/// them, so they hold the guest's values while a slice runs and are saved
/// when it ends.
const SYSCALL_MSRS: [u32; 5] = [0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102];

fn rdmsr(index: u32) -> u64 {
    // SAFETY: only called with architectural MSRs that exist on every CPU
    // with VMX (the VMX capability MSRs after CPUID.1:ECX.VMX was checked,
    // FEATURE_CONTROL, PAT, EFER, FS/GS base, SYSENTER, the syscall MSRs).
    unsafe { cpu::rdmsr(index) }
}

/// Adjusts `want` to the allowed settings of a control MSR: bits it
/// requires are set, bits it forbids are dropped. Err if a bit of `need`
/// is not allowed.
fn adjust(cap: u64, want: u32, need: u32, what: &'static str) -> Result<(u32, u32), DetectError> {
    let must = cap as u32;
    let may = (cap >> 32) as u32;
    if need & !may != 0 {
        return Err(DetectError::VmxMissing(what));
    }
    Ok(((want & may) | must, may))
}

/// Checks that this Intel CPU can run guests under VMX with EPT, and
/// settles the controls every vCPU uses. Unrestricted guest is used when
/// present; without it guests cannot run in real mode (`Capabilities::
/// real_mode`), and protected mode without paging runs on an identity map.
pub(super) fn detect() -> Result<Capabilities, DetectError> {
    if cpu::cpuid(1, 0).ecx & (1 << 5) == 0 {
        return Err(DetectError::VmxAbsent);
    }
    let feature_control = rdmsr(MSR_FEATURE_CONTROL);
    if feature_control & 1 != 0 && feature_control & (1 << 2) == 0 {
        return Err(DetectError::VmxDisabledByFirmware);
    }
    let basic = rdmsr(MSR_VMX_BASIC);
    let true_controls = basic & (1 << 55) != 0;
    if (basic >> 50) & 0xF != 6 {
        return Err(DetectError::VmxMissing("write-back VMCS memory (IA32_VMX_BASIC)"));
    }
    let pick = |true_msr: u32, msr: u32| rdmsr(if true_controls { true_msr } else { msr });
    let (pin, _) = adjust(
        pick(MSR_VMX_TRUE_PINBASED, MSR_VMX_PINBASED),
        PIN_EXTERNAL_INTERRUPT | PIN_NMI_EXITING | PIN_VIRTUAL_NMIS,
        PIN_EXTERNAL_INTERRUPT | PIN_NMI_EXITING,
        "external-interrupt and NMI exiting",
    )?;
    let proc_need = PROC_HLT | PROC_IO_BITMAPS | PROC_MSR_BITMAPS | PROC_SECONDARY | PROC_TPR_SHADOW | PROC_TSC_OFFSETTING | PROC_MOV_DR;
    let (proc, proc_may) = adjust(
        pick(MSR_VMX_TRUE_PROCBASED, MSR_VMX_PROCBASED),
        proc_need,
        proc_need | PROC_INTERRUPT_WINDOW,
        "HLT, MOV DR, I/O and MSR bitmaps, TPR shadow, TSC offsetting, interrupt-window exiting and secondary controls",
    )?;
    let proc2_cap = rdmsr(MSR_VMX_PROCBASED2);
    if (proc2_cap >> 32) as u32 & PROC2_EPT == 0 {
        return Err(DetectError::NoEpt);
    }
    let unrestricted = (proc2_cap >> 32) as u32 & PROC2_UNRESTRICTED != 0;
    let (proc2, _) = adjust(proc2_cap, PROC2_EPT | PROC2_UNRESTRICTED | PROC2_VPID | PROC2_RDTSCP | PROC2_INVPCID, PROC2_EPT, "EPT")?;
    if !unrestricted && proc_may & (PROC_CR3_LOAD | PROC_CR3_STORE) != PROC_CR3_LOAD | PROC_CR3_STORE {
        return Err(DetectError::VmxMissing("CR3-load and CR3-store exiting (needed without unrestricted guest)"));
    }
    let (exit, _) = adjust(
        pick(MSR_VMX_TRUE_EXIT, MSR_VMX_EXIT),
        EXIT_HOST_64 | EXIT_SAVE_PAT | EXIT_LOAD_PAT | EXIT_SAVE_EFER | EXIT_LOAD_EFER | EXIT_SAVE_DEBUG,
        EXIT_HOST_64 | EXIT_SAVE_PAT | EXIT_LOAD_PAT | EXIT_SAVE_EFER | EXIT_LOAD_EFER,
        "64-bit host and PAT/EFER switching at VM exit",
    )?;
    let (entry, _) = adjust(
        pick(MSR_VMX_TRUE_ENTRY, MSR_VMX_ENTRY),
        ENTRY_LOAD_PAT | ENTRY_LOAD_EFER | ENTRY_LOAD_DEBUG,
        ENTRY_LOAD_PAT | ENTRY_LOAD_EFER | ENTRY_IA32E,
        "PAT/EFER loading and IA-32e mode at VM entry",
    )?;
    let ept_vpid = rdmsr(MSR_VMX_EPT_VPID_CAP);
    if ept_vpid & (1 << 6) == 0 || ept_vpid & (1 << 14) == 0 {
        return Err(DetectError::VmxMissing("4-level write-back EPT"));
    }
    if ept_vpid & (1 << 20) == 0 || ept_vpid & ((1 << 25) | (1 << 26)) == 0 {
        return Err(DetectError::VmxMissing("INVEPT"));
    }
    let vpid = proc2 & PROC2_VPID != 0 && ept_vpid & (1 << 32) != 0 && ept_vpid & ((1 << 41) | (1 << 42)) != 0;
    let config = VmxConfig {
        revision: basic as u32 & 0x7FFF_FFFF,
        pin,
        proc,
        proc2: if vpid { proc2 } else { proc2 & !PROC2_VPID },
        exit,
        entry: entry & !ENTRY_IA32E,
        proc_may,
        cr0_fixed0: rdmsr(MSR_VMX_CR0_FIXED0),
        cr0_fixed1: rdmsr(MSR_VMX_CR0_FIXED1),
        cr4_fixed0: rdmsr(MSR_VMX_CR4_FIXED0),
        cr4_fixed1: rdmsr(MSR_VMX_CR4_FIXED1),
        invept_single: ept_vpid & (1 << 25) != 0,
        vpid,
        invvpid_single: ept_vpid & (1 << 41) != 0,
        ins_outs_info: basic & (1 << 54) != 0,
        unrestricted,
    };
    CONFIG.call_once(|| config);
    mm::paging::set_nested_format(mm::paging::NestedFormat::Ept);
    Ok(Capabilities {
        backend: BackendKind::Vmx,
        name: "vmx",
        nested_paging: true,
        next_rip: true,
        decode_assists: false,
        flush_by_asid: vpid,
        state_caching: false,
        pause_filter: false,
        asids: if vpid { 0xFFFF } else { 1 },
        inject_via_virq: false,
        real_mode: unrestricted,
    })
}

/// Per-CPU VMX state, indexed by CPU (see `svm::SvmCpu` for why not in
/// the per-CPU block): the VMXON region (0 until VMX is on), the VMCS
/// current on the CPU, the vCPU whose TLB entries the CPU may hold, and
/// the owners of the FPU, syscall-MSR and debug-register contents.
struct VmxCpu {
    vmxon_pa: AtomicU64,
    current_vmcs: AtomicU64,
    last_vcpu: AtomicU64,
    loaded_tsc_aux: AtomicU64,
    fpu_owner: AtomicU64,
    dr_owner: AtomicU64,
}

static VMX_CPUS: [VmxCpu; MAX_CPUS] = [const {
    VmxCpu {
        vmxon_pa: AtomicU64::new(0),
        current_vmcs: AtomicU64::new(0),
        last_vcpu: AtomicU64::new(0),
        loaded_tsc_aux: AtomicU64::new(u64::MAX),
        fpu_owner: AtomicU64::new(0),
        dr_owner: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Source of `VmxVcpu::token`s (never 0).
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Turns VMX on for the calling CPU (VMXON).
pub(super) fn enable_cpu() -> Result<(), DetectError> {
    let config = *CONFIG.get().ok_or(DetectError::VmxAbsent)?;
    let slot = &VMX_CPUS[percpu::current_index()];
    if slot.vmxon_pa.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let feature_control = rdmsr(MSR_FEATURE_CONTROL);
    if feature_control & 1 == 0 {
        // Unlocked (firmware left it open): allow VMX outside SMX and lock.
        // SAFETY: FEATURE_CONTROL exists on VMX CPUs and is writable while
        // unlocked; these bits only allow VMXON.
        unsafe { cpu::wrmsr(MSR_FEATURE_CONTROL, feature_control | 1 | (1 << 2)) };
    } else if feature_control & (1 << 2) == 0 {
        return Err(DetectError::VmxDisabledByFirmware);
    }
    let cr0 = cpu::read_cr0() | config.cr0_fixed0;
    let cr4 = cpu::read_cr4() | config.cr4_fixed0 | CR4_VMXE;
    if cr0 & !config.cr0_fixed1 != 0 || cr4 & !config.cr4_fixed1 != 0 {
        return Err(DetectError::VmxMissing("a host CR0/CR4 VMX accepts"));
    }
    let region = mm::alloc_zeroed_page().ok_or(DetectError::OutOfMemory)?;
    // SAFETY: the region was just allocated, identity mapped and is owned
    // by this CPU; its first word is the revision identifier VMXON wants.
    // CR0's fixed bits (PE, NE, PG) and CR4.VMXE change nothing for the
    // hypervisor's code, which runs with paging and protection on.
    let on = unsafe {
        (region as *mut u32).write_volatile(config.revision);
        cpu::write_cr0(cr0);
        cpu::write_cr4(cr4);
        vmxon(region)
    };
    if let Err(e) = on {
        mm::free_page(region);
        log::error!("VMXON failed: {:?}", e);
        return Err(DetectError::VmxMissing("a working VMXON"));
    }
    slot.current_vmcs.store(0, Ordering::Relaxed);
    slot.last_vcpu.store(0, Ordering::Relaxed);
    slot.loaded_tsc_aux.store(u64::MAX, Ordering::Relaxed);
    slot.vmxon_pa.store(region, Ordering::Release);
    Ok(())
}

pub(super) fn enabled_on_this_cpu() -> bool {
    VMX_CPUS[percpu::current_index()].vmxon_pa.load(Ordering::Acquire) != 0
}

core::arch::global_asm!(
    r#"
    .section .text.vmx_run, "ax"
    .global vmx_run
/* vmx_run(regs: rdi, sse: rsi, launched: rdx) -> rax
 * With this vCPU's VMCS current: writes HOST_RSP/HOST_RIP, loads the
 * guest GPRs from `regs` (RSP, RIP, RFLAGS are VMCS fields) and XMM0-15/
 * MXCSR from `sse`, enters the guest (VMRESUME if launched, else
 * VMLAUNCH) and, at VM exit or when the entry fails, stores both back.
 * Returns 0 after a VM exit, 1 when VMLAUNCH/VMRESUME failed. */
vmx_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rdi              /* regs */
    pushq %rsi              /* sse */
    movdqu 0(%rsi), %xmm0
    movdqu 16(%rsi), %xmm1
    movdqu 32(%rsi), %xmm2
    movdqu 48(%rsi), %xmm3
    movdqu 64(%rsi), %xmm4
    movdqu 80(%rsi), %xmm5
    movdqu 96(%rsi), %xmm6
    movdqu 112(%rsi), %xmm7
    movdqu 128(%rsi), %xmm8
    movdqu 144(%rsi), %xmm9
    movdqu 160(%rsi), %xmm10
    movdqu 176(%rsi), %xmm11
    movdqu 192(%rsi), %xmm12
    movdqu 208(%rsi), %xmm13
    movdqu 224(%rsi), %xmm14
    movdqu 240(%rsi), %xmm15
    ldmxcsr 256(%rsi)
    movq $0x6C14, %rax      /* HOST_RSP: the stack as it is now */
    vmwrite %rsp, %rax
    movq $0x6C16, %rax      /* HOST_RIP */
    leaq vmx_exit(%rip), %rbx
    vmwrite %rbx, %rax
    cmpq $0, %rdx           /* the flags survive the loads below */
    movq 0(%rdi), %rax
    movq 8(%rdi), %rbx
    movq 16(%rdi), %rcx
    movq 24(%rdi), %rdx
    movq 32(%rdi), %rsi
    movq 48(%rdi), %rbp
    movq 56(%rdi), %r8
    movq 64(%rdi), %r9
    movq 72(%rdi), %r10
    movq 80(%rdi), %r11
    movq 88(%rdi), %r12
    movq 96(%rdi), %r13
    movq 104(%rdi), %r14
    movq 112(%rdi), %r15
    movq 40(%rdi), %rdi
    jne 1f
    vmlaunch
    jmp vmx_fail
1:  vmresume
vmx_fail:
    pushq $1
    jmp vmx_save
vmx_exit:
    pushq $0
vmx_save:
    pushq %rdi
    movq 24(%rsp), %rdi     /* regs (guest rdi, status, sse, regs) */
    popq 40(%rdi)
    movq %rax, 0(%rdi)
    movq %rbx, 8(%rdi)
    movq %rcx, 16(%rdi)
    movq %rdx, 24(%rdi)
    movq %rsi, 32(%rdi)
    movq %rbp, 48(%rdi)
    movq %r8, 56(%rdi)
    movq %r9, 64(%rdi)
    movq %r10, 72(%rdi)
    movq %r11, 80(%rdi)
    movq %r12, 88(%rdi)
    movq %r13, 96(%rdi)
    movq %r14, 104(%rdi)
    movq %r15, 112(%rdi)
    popq %rax               /* status */
    movq 0(%rsp), %rsi      /* sse */
    movdqu %xmm0, 0(%rsi)
    movdqu %xmm1, 16(%rsi)
    movdqu %xmm2, 32(%rsi)
    movdqu %xmm3, 48(%rsi)
    movdqu %xmm4, 64(%rsi)
    movdqu %xmm5, 80(%rsi)
    movdqu %xmm6, 96(%rsi)
    movdqu %xmm7, 112(%rsi)
    movdqu %xmm8, 128(%rsi)
    movdqu %xmm9, 144(%rsi)
    movdqu %xmm10, 160(%rsi)
    movdqu %xmm11, 176(%rsi)
    movdqu %xmm12, 192(%rsi)
    movdqu %xmm13, 208(%rsi)
    movdqu %xmm14, 224(%rsi)
    movdqu %xmm15, 240(%rsi)
    stmxcsr 256(%rsi)
    ldmxcsr vmx_host_mxcsr(%rip)
    addq $16, %rsp          /* sse, regs */
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .section .rodata.vmx_run, "a"
    .balign 4
vmx_host_mxcsr:
    .long 0x1F80
    "#,
    options(att_syntax)
);

extern "C" {
    fn vmx_run(regs: *mut GuestRegs, sse: *mut SseRegs, launched: u64) -> u64;
}

/// The guest state the vCPU keeps outside the VMCS (see the module
/// comment). `cr0`/`cr4` are what the guest sees (the read shadows); the
/// VMCS holds them with the bits VMX requires.
#[derive(Clone, Copy, Debug, Default)]
struct GuestState {
    cr0: u64,
    /// Not in the VMCS: the CPU's own CR2 holds it while the guest runs.
    cr2: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    dr6: u64,
    dr7: u64,
    pat: u64,
    interruptibility: u32,
    pdpte: [u64; 4],
}

/// The segment registers, descriptor tables and SYSENTER MSRs: state the
/// guest changes without exits but the run loop rarely needs, so after an
/// exit it is read from the VMCS only when asked for (`VmxVcpu::tables`),
/// or when the slice ends.
#[derive(Clone, Copy, Debug, Default)]
struct Tables {
    /// ES, CS, SS, DS, FS, GS.
    segs: [Segment; 6],
    ldtr: Segment,
    tr: Segment,
    gdtr: Segment,
    idtr: Segment,
    sysenter: [u64; 3],
}

fn read_tables() -> Tables {
    let mut t = Tables::default();
    for (i, seg) in t.segs.iter_mut().enumerate() {
        let off = 2 * i as u32;
        *seg = Segment {
            selector: read(GUEST_ES_SEL + off) as u16,
            base: read(GUEST_ES_BASE + off),
            limit: read(GUEST_ES_LIMIT + off) as u32,
            attrib: from_access_rights(read(GUEST_ES_AR + off)),
        };
    }
    t.ldtr = Segment {
        selector: read(GUEST_LDTR_SEL) as u16,
        base: read(GUEST_LDTR_BASE),
        limit: read(GUEST_LDTR_LIMIT) as u32,
        attrib: from_access_rights(read(GUEST_LDTR_AR)),
    };
    t.tr = Segment {
        selector: read(GUEST_TR_SEL) as u16,
        base: read(GUEST_TR_BASE),
        limit: read(GUEST_TR_LIMIT) as u32,
        attrib: from_access_rights(read(GUEST_TR_AR)),
    };
    t.gdtr = Segment { base: read(GUEST_GDTR_BASE), limit: read(GUEST_GDTR_LIMIT) as u32, ..Default::default() };
    t.idtr = Segment { base: read(GUEST_IDTR_BASE), limit: read(GUEST_IDTR_LIMIT) as u32, ..Default::default() };
    t.sysenter = [read(GUEST_SYSENTER_CS), read(GUEST_SYSENTER_ESP), read(GUEST_SYSENTER_EIP)];
    t
}

/// What the last exit reported.
#[derive(Clone, Copy, Debug, Default)]
struct ExitInfo {
    reason: u32,
    qualification: u64,
    instruction_len: u64,
    instruction_info: u32,
    intr_info: u32,
    intr_error: u32,
    gpa: u64,
    /// IDT-vectoring information and error code: the event whose
    /// delivery the exit cut short.
    vectoring: u32,
    vectoring_error: u32,
}

/// One virtual CPU under VMX.
pub struct VmxVcpu {
    vmcs_pa: u64,
    msr_bitmap_pa: u64,
    vapic_pa: u64,
    iopm_pa: u64,
    eptp: u64,
    vpid: u16,
    config: VmxConfig,
    regs: GuestRegs,
    st: GuestState,
    /// See `Tables`; valid while `tables_fresh`, else in the VMCS (which
    /// is then current on the CPU running this vCPU).
    tables: core::cell::RefCell<Tables>,
    tables_fresh: core::cell::Cell<bool>,
    /// `st` changed since it was last written into the VMCS.
    dirty: bool,
    exit: ExitInfo,
    /// The primary processor-based controls (windows, CR8 loads, MOV DR).
    proc: u32,
    /// The event to inject at the next entry (VM-entry interruption
    /// information; 0: none), its error code and instruction length.
    inject: u32,
    inject_error: u32,
    inject_len: u32,
    tsc_offset: u64,
    guest_fpu: FpuState,
    sse: SseRegs,
    fpu_loaded: bool,
    /// Names this vCPU in the per-CPU owner fields (never 0).
    token: u64,
    fpu_cpu: usize,
    syscall_msrs: [u64; 5],
    debug_regs: Option<[u64; 4]>,
    guest_xcr0: u64,
    tsc_aux: Option<u64>,
    /// The VMCS has been through VMCLEAR once and holds the controls.
    initialized: bool,
    /// The CPU on which the VMCS is active (`usize::MAX`: cleared).
    active_cpu: usize,
    launched: bool,
    last_cpu: usize,
    flush_tlb: bool,
}

/// The SVM-layout MSR permission map (two bits per MSR: read, write; the
/// ranges 0-0x1FFF at 0 and 0xC000_0000-0xC000_1FFF at 0x800) as VMX's
/// bitmap (read-low, read-high, write-low, write-high, 1 KiB each).
fn translate_msr_map(msrpm: u64, bitmap: u64) {
    for (svm_base, vmx_read, vmx_write) in [(0u64, 0u64, 0x800u64), (0x800, 0x400, 0xC00)] {
        for index in 0..0x2000u64 {
            let bit = index * 2;
            // SAFETY: both maps are identity-mapped pages this vCPU's
            // domain owns (8 KiB and 4 KiB); every offset is inside them.
            unsafe {
                let pair = (((msrpm + svm_base + bit / 8) as *const u8).read() >> (bit % 8)) & 3;
                if pair & 1 == 0 {
                    let p = (bitmap + vmx_read + index / 8) as *mut u8;
                    p.write(p.read() & !(1 << (index % 8)));
                }
                if pair & 2 == 0 {
                    let p = (bitmap + vmx_write + index / 8) as *mut u8;
                    p.write(p.read() & !(1 << (index % 8)));
                }
            }
        }
    }
}

/// A segment's access rights in VMX's form (bit 16: unusable) from the
/// compressed form the generic code uses.
fn to_access_rights(seg: &Segment, always_usable: bool) -> u64 {
    let a = u64::from(seg.attrib);
    if a & 0x80 == 0 && !always_usable {
        return 1 << 16;
    }
    let mut ar = (a & 0xFF) | ((a & 0xF00) << 4);
    if a & 0x10 != 0 {
        // Code and data segments in use have been accessed (the CPU sets
        // the bit when it loads them; VM entry insists).
        ar |= 1;
    }
    ar
}

fn from_access_rights(ar: u64) -> u16 {
    if ar & (1 << 16) != 0 {
        return 0;
    }
    ((ar & 0xFF) | ((ar >> 4) & 0xF00)) as u16
}

fn write(field: u32, value: u64) {
    // SAFETY: only called between VMPTRLD of this vCPU's VMCS and the end
    // of its slice, on the CPU where it is current. A value VM entry
    // rejects makes the entry fail cleanly (reported, the domain crashes).
    if let Err(e) = unsafe { vmwrite(field, value) } {
        log::error!("vmwrite {:#x} = {:#x} failed: {:?}", field, value, e);
    }
}

fn read(field: u32) -> u64 {
    // SAFETY: as in `write`: this vCPU's VMCS is current on this CPU.
    unsafe { vmread(field) }
}

impl VmxVcpu {
    /// A vCPU whose guest-physical memory is the EPT rooted at
    /// `ept_root`, tagged `vpid`, with the I/O map (one bit per port, 8 KiB:
    /// VMX's bitmaps A and B) and the SVM-layout MSR map translated.
    pub fn new(caps: Capabilities, ept_root: u64, vpid: u32, iopm_pa: u64, msrpm_pa: u64) -> Option<Self> {
        let config = *CONFIG.get()?;
        let _ = caps;
        let vmcs_pa = mm::alloc_zeroed_page()?;
        let Some(msr_bitmap_pa) = mm::alloc_zeroed_page() else {
            mm::free_page(vmcs_pa);
            return None;
        };
        let Some(vapic_pa) = mm::alloc_zeroed_page() else {
            mm::free_page(vmcs_pa);
            mm::free_page(msr_bitmap_pa);
            return None;
        };
        // SAFETY: all three pages were just allocated to this vCPU and are
        // identity mapped; the VMCS starts with the revision identifier.
        unsafe {
            (vmcs_pa as *mut u32).write_volatile(config.revision);
            core::ptr::write_bytes(msr_bitmap_pa as *mut u8, 0xFF, 4096);
        }
        translate_msr_map(msrpm_pa, msr_bitmap_pa);
        let Some(guest_fpu) = FpuState::new() else {
            for pa in [vmcs_pa, msr_bitmap_pa, vapic_pa] {
                mm::free_page(pa);
            }
            return None;
        };
        let mut vcpu = VmxVcpu {
            vmcs_pa,
            msr_bitmap_pa,
            vapic_pa,
            iopm_pa,
            // Write-back, a 4-level walk.
            eptp: ept_root | (3 << 3) | 6,
            vpid: if config.vpid { (vpid & 0xFFFF).max(1) as u16 } else { 0 },
            config,
            regs: GuestRegs::default(),
            st: GuestState { pat: 0x0007_0406_0007_0406, dr6: 0xFFFF_0FF0, dr7: 0x400, ..Default::default() },
            tables: core::cell::RefCell::new(Tables::default()),
            tables_fresh: core::cell::Cell::new(true),
            dirty: true,
            exit: ExitInfo::default(),
            proc: config.proc,
            inject: 0,
            inject_error: 0,
            inject_len: 0,
            tsc_offset: 0,
            guest_fpu,
            sse: SseRegs::new(),
            fpu_loaded: false,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            fpu_cpu: usize::MAX,
            syscall_msrs: [0; 5],
            debug_regs: None,
            guest_xcr0: 1,
            tsc_aux: cpu_has_tsc_aux().then_some(0),
            initialized: false,
            active_cpu: usize::MAX,
            launched: false,
            last_cpu: usize::MAX,
            flush_tlb: false,
        };
        vcpu.reset_real_mode(0xF000, 0xFFF0);
        Some(vcpu)
    }

    /// The controls and fixed fields, written once into a fresh VMCS.
    fn write_controls(&self) {
        let c = &self.config;
        write(PIN_CONTROLS, u64::from(c.pin));
        write(PROC_CONTROLS2, u64::from(c.proc2));
        write(EXIT_CONTROLS, u64::from(c.exit));
        // #DB and #AC always exit (XSA-156: their delivery can loop inside
        // the CPU); #UD exits so that VMMCALL, the hypercall instruction
        // of guests written for SVM, works here too.
        write(EXCEPTION_BITMAP, (1 << DB_VECTOR) | (1 << AC_VECTOR) | (1 << UD_VECTOR));
        write(PF_ERROR_MASK, 0);
        write(PF_ERROR_MATCH, 0);
        write(CR3_TARGET_COUNT, 0);
        write(EXIT_MSR_STORE_COUNT, 0);
        write(EXIT_MSR_LOAD_COUNT, 0);
        write(ENTRY_MSR_LOAD_COUNT, 0);
        write(IO_BITMAP_A, self.iopm_pa);
        write(IO_BITMAP_B, self.iopm_pa + 0x1000);
        write(MSR_BITMAP, self.msr_bitmap_pa);
        write(VIRTUAL_APIC_PAGE, self.vapic_pa);
        write(TPR_THRESHOLD, 0);
        write(EPT_POINTER, self.eptp);
        if self.vpid != 0 {
            write(VPID, u64::from(self.vpid));
        }
        write(VMCS_LINK_POINTER, u64::MAX);
        // Every CR0 and CR4 bit belongs to the hypervisor: the guest reads
        // the shadows, and each write that changes a bit exits and is
        // checked (`vcpu::cr`).
        write(CR0_MASK, u64::MAX);
        write(CR4_MASK, u64::MAX);
        write(GUEST_DEBUGCTL, 0);
        write(GUEST_ACTIVITY, 0);
    }

    /// The host state a VM exit loads, for the CPU running the vCPU now.
    fn write_host_state(&self) {
        // This CPU's GDT and TSS (`gdt::init_cpu`), and the shared IDT.
        let tables = percpu::current().tables;
        let tss_sel = u64::from(crate::arch::gdt::TSS_SEL);
        write(HOST_CR0, cpu::read_cr0());
        write(HOST_CR3, cpu::read_cr3());
        write(HOST_CR4, cpu::read_cr4());
        write(HOST_CS_SEL, u64::from(crate::arch::gdt::KERNEL_CS));
        for f in [HOST_SS_SEL, HOST_DS_SEL, HOST_ES_SEL] {
            write(f, u64::from(crate::arch::gdt::KERNEL_DS));
        }
        write(HOST_FS_SEL, 0);
        write(HOST_GS_SEL, 0);
        write(HOST_TR_SEL, tss_sel);
        write(HOST_FS_BASE, FsBase::read().as_u64());
        write(HOST_GS_BASE, GsBase::read().as_u64());
        write(HOST_TR_BASE, tables.tss_base());
        write(HOST_GDTR_BASE, tables.gdt_base());
        write(HOST_IDTR_BASE, sidt().base.as_u64());
        write(HOST_SYSENTER_CS, 0);
        write(HOST_SYSENTER_ESP, 0);
        write(HOST_SYSENTER_EIP, 0);
        write(HOST_EFER, Efer::read_raw());
        write(HOST_PAT, rdmsr(MSR_PAT));
    }

    /// Writes `st` into the VMCS.
    fn write_guest_state(&self) {
        let c = &self.config;
        let st = &self.st;
        let t = self.tables();
        // VMX requires CR0.NE (and PE/PG unless the guest is unrestricted)
        // and CR4.VMXE; the guest sees its own values in the shadows.
        let cr0_fixed0 = if c.unrestricted { c.cr0_fixed0 & !(CR0_PE | CR0_PG) } else { c.cr0_fixed0 };
        let (cr0, cr3, cr4, efer) = if self.unpaged() {
            // Paging off without unrestricted guest: the CPU pages through
            // the identity map (4 MiB pages, so CR4.PSE and not PAE), and
            // long mode stays off until the guest's own paging is on (VM
            // entry wants EFER.LME = LMA while CR0.PG is set).
            (st.cr0 | CR0_PG, super::UNPAGED_IDENTITY_MAP_GPA, (st.cr4 & !CR4_PAE) | CR4_PSE, st.efer & !(EFER_LME | EFER_LMA))
        } else {
            (st.cr0, st.cr3, st.cr4, st.efer)
        };
        write(GUEST_CR0, (cr0 | cr0_fixed0 | CR0_NE) & c.cr0_fixed1);
        write(CR0_READ_SHADOW, st.cr0);
        write(GUEST_CR4, (cr4 | c.cr4_fixed0) & c.cr4_fixed1);
        write(CR4_READ_SHADOW, st.cr4);
        write(GUEST_CR3, cr3);
        write(GUEST_EFER, efer);
        let ia32e = efer & EFER_LMA != 0;
        write(ENTRY_CONTROLS, u64::from(if ia32e { c.entry | ENTRY_IA32E } else { c.entry }));
        write(GUEST_DR7, st.dr7);
        write(GUEST_PAT, st.pat);
        for (i, seg) in t.segs.iter().enumerate() {
            let off = 2 * i as u32;
            write(GUEST_ES_SEL + off, u64::from(seg.selector));
            write(GUEST_ES_BASE + off, seg.base);
            write(GUEST_ES_LIMIT + off, u64::from(seg.limit));
            write(GUEST_ES_AR + off, to_access_rights(seg, i == 1));
        }
        write(GUEST_LDTR_SEL, u64::from(t.ldtr.selector));
        write(GUEST_LDTR_BASE, t.ldtr.base);
        write(GUEST_LDTR_LIMIT, u64::from(t.ldtr.limit));
        write(GUEST_LDTR_AR, to_access_rights(&t.ldtr, false) & !1);
        write(GUEST_TR_SEL, u64::from(t.tr.selector));
        write(GUEST_TR_BASE, t.tr.base);
        write(GUEST_TR_LIMIT, u64::from(t.tr.limit));
        // A task register is always busy (type 11, or 3 for a 16-bit TSS).
        write(GUEST_TR_AR, to_access_rights(&t.tr, true) | 2);
        write(GUEST_GDTR_BASE, t.gdtr.base);
        write(GUEST_GDTR_LIMIT, u64::from(t.gdtr.limit));
        write(GUEST_IDTR_BASE, t.idtr.base);
        write(GUEST_IDTR_LIMIT, u64::from(t.idtr.limit));
        write(GUEST_SYSENTER_CS, t.sysenter[0]);
        write(GUEST_SYSENTER_ESP, t.sysenter[1]);
        write(GUEST_SYSENTER_EIP, t.sysenter[2]);
        for (i, p) in st.pdpte.iter().enumerate() {
            write(GUEST_PDPTE0 + 2 * i as u32, *p);
        }
    }

    /// Reads back what the guest may have changed without an exit.
    fn read_guest_state(&mut self) {
        let unpaged = self.unpaged();
        let st = &mut self.st;
        if !unpaged {
            // Unpaged, the guest's CR3 is `st.cr3` (its MOVs exit).
            st.cr3 = read(GUEST_CR3);
        }
        st.dr7 = read(GUEST_DR7);
        // Segments and tables: when asked for (`tables`).
        self.tables_fresh.set(false);
        st.interruptibility = read(GUEST_INTERRUPTIBILITY) as u32;
        if st.cr0 & CR0_PG != 0 && st.cr4 & (1 << 5) != 0 && st.efer & EFER_LMA == 0 {
            for (i, p) in st.pdpte.iter_mut().enumerate() {
                *p = read(GUEST_PDPTE0 + 2 * i as u32);
            }
        }
    }

    /// The segments and tables, read from the VMCS first if an exit made
    /// them stale (the VMCS is then current here: a stale vCPU is between
    /// an exit and the end of its slice, on its CPU, under its lock).
    fn tables(&self) -> core::cell::Ref<'_, Tables> {
        if !self.tables_fresh.get() {
            *self.tables.borrow_mut() = read_tables();
            self.tables_fresh.set(true);
        }
        self.tables.borrow()
    }

    fn set_tables(&mut self, t: Tables) {
        *self.tables.get_mut() = t;
        self.tables_fresh.set(true);
        self.dirty = true;
    }

    fn next_rip(&self) -> u64 {
        self.regs.rip.wrapping_add(self.exit.instruction_len)
    }

    /// Protected mode with paging off on a CPU without unrestricted
    /// guest: the guest runs on the identity map, and its MOVs to and
    /// from CR3 exit (`emulate_unpaged_cr3`).
    fn unpaged(&self) -> bool {
        !self.config.unrestricted && self.st.cr0 & CR0_PG == 0
    }

    /// Does a MOV to or from CR3 while `unpaged`: the guest's CR3 is kept
    /// here until it turns paging on. True if this exit was that.
    fn emulate_unpaged_cr3(&mut self) -> bool {
        let q = self.exit.qualification;
        if self.exit.reason & 0xFFFF != EXIT_CR_ACCESS || q & 0xF != 3 || !self.unpaged() {
            return false;
        }
        // Outside long mode (which needs paging) the operand is 32 bits.
        let reg = gpr_mut(&mut self.regs, ((q >> 8) & 0xF) as u8);
        match (q >> 4) & 3 {
            0 => self.st.cr3 = *reg & 0xFFFF_FFFF,
            1 => *reg = self.st.cr3 & 0xFFFF_FFFF,
            _ => return false,
        }
        self.regs.rip = self.next_rip();
        self.st.interruptibility &= !(INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS);
        if self.regs.rflags & RFLAGS_TF != 0 {
            self.inject_single_step();
        }
        true
    }

    /// The CPU's mode for address sizes: 8 in 64-bit code, else CS.D.
    fn default_address_size(&self) -> u8 {
        let cs = self.tables().segs[1];
        if self.st.efer & EFER_LMA != 0 && cs.attrib & (1 << 9) != 0 {
            8
        } else if cs.attrib & (1 << 10) != 0 {
            4
        } else {
            2
        }
    }

    fn decode_exit(&mut self) -> VmExit {
        let e = self.exit;
        let basic = e.reason & 0xFFFF;
        if e.reason & (1 << 31) != 0 {
            // The entry itself failed after the checks of the controls;
            // the crash report names why (no log line: it says it all).
            return VmExit::InvalidState { check: Some(invalid::entry_failure(&self.config, basic, e.qualification)) };
        }
        match basic {
            EXIT_EXCEPTION_NMI => {
                let vector = e.intr_info as u8;
                match (e.intr_info >> 8) & 7 {
                    // A host NMI: give it to the host's handler.
                    2 => {
                        // SAFETY: vector 2 has a handler on its own IST
                        // stack (`idt`); INT 2 runs it as the NMI would have.
                        unsafe { interrupts::software_interrupt::<2>() };
                        VmExit::ExternalInterrupt
                    }
                    _ if vector == DB_VECTOR => {
                        // The CPU leaves DR6 alone for an intercepted #DB and
                        // reports its bits in the qualification.
                        self.st.dr6 = (self.st.dr6 & !(DR6_B0_B3 | DR6_BS | (1 << 13))) | (e.qualification & (DR6_B0_B3 | DR6_BS | (1 << 13)));
                        VmExit::Exception { vector, error_code: None }
                    }
                    _ => VmExit::Exception {
                        vector,
                        error_code: (e.intr_info & EVENT_ERROR_CODE != 0).then_some(e.intr_error),
                    },
                }
            }
            EXIT_EXTERNAL_INTERRUPT | EXIT_INIT | EXIT_SIPI | EXIT_SMI | EXIT_OTHER_SMI => VmExit::ExternalInterrupt,
            EXIT_TRIPLE_FAULT => VmExit::Shutdown,
            EXIT_INTERRUPT_WINDOW | EXIT_NMI_WINDOW => VmExit::InterruptWindow,
            EXIT_CPUID => VmExit::Cpuid { next_rip: self.next_rip() },
            EXIT_HLT => VmExit::Hlt { next_rip: self.next_rip() },
            EXIT_VMCALL => VmExit::Hypercall { next_rip: self.next_rip() },
            EXIT_XSETBV => VmExit::Xsetbv { next_rip: self.next_rip() },
            EXIT_RDMSR => VmExit::MsrRead { msr: self.regs.rcx as u32, next_rip: self.next_rip() },
            EXIT_WRMSR => VmExit::MsrWrite {
                msr: self.regs.rcx as u32,
                value: (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF),
                next_rip: self.next_rip(),
            },
            EXIT_CR_ACCESS => {
                let q = e.qualification;
                let cr = (q & 0xF) as u8;
                match (q >> 4) & 3 {
                    0 => VmExit::CrWrite { cr, gpr: Some(((q >> 8) & 0xF) as u8), next_rip: Some(self.next_rip()) },
                    // CLTS, LMSW: the run loop decodes them.
                    2 | 3 => VmExit::CrWrite { cr: 0, gpr: None, next_rip: Some(self.next_rip()) },
                    _ => VmExit::Other { code: u64::from(e.reason), info1: q, info2: 0 },
                }
            }
            EXIT_DR_ACCESS => VmExit::DebugRegisterAccess,
            EXIT_IO => {
                let q = e.qualification;
                let string = q & (1 << 4) != 0;
                let (addr_size, segment) = if string && self.config.ins_outs_info {
                    let info = e.instruction_info;
                    (
                        match (info >> 7) & 7 {
                            0 => 2,
                            1 => 4,
                            _ => 8,
                        },
                        (q & (1 << 3) == 0).then_some(((info >> 15) & 7) as u8),
                    )
                } else if string {
                    (self.default_address_size(), None)
                } else {
                    // Unused for IN/OUT without a string.
                    (8, None)
                };
                VmExit::Io {
                    port: (q >> 16) as u16,
                    size: ((q & 7) + 1) as u8,
                    write: q & (1 << 3) == 0,
                    string,
                    rep: q & (1 << 5) != 0,
                    addr_size,
                    segment,
                    next_rip: self.next_rip(),
                }
            }
            EXIT_EPT_VIOLATION => {
                let q = e.qualification;
                if q & (1 << 12) != 0 && self.exit_idt_vectoring_valid() {
                    // The guest's IRET unblocked NMIs before the fault.
                } else if q & (1 << 12) != 0 {
                    self.st.interruptibility |= INTERRUPTIBILITY_NMI;
                    self.dirty = true;
                }
                VmExit::NestedPageFault { gpa: e.gpa, write: q & 2 != 0, exec: q & 4 != 0, present: q & 0x38 != 0 }
            }
            // VMX instructions, GETSEC, INVEPT/INVVPID, VMFUNC: the guest has
            // no VMX; they raise #UD as on a CPU without it.
            EXIT_GETSEC | EXIT_VMCLEAR..=EXIT_VMXON | EXIT_INVEPT | EXIT_INVVPID | EXIT_VMFUNC => VmExit::Exception { vector: UD_VECTOR, error_code: None },
            EXIT_INVALID_GUEST_STATE | EXIT_MSR_LOADING => VmExit::InvalidState { check: None },
            // VMX exits on every hardware task switch (a CALL, JMP or IRET
            // to a TSS, an event through a task gate); SVM lets the CPU do
            // it. The run loop emulates it (`vcpu::task`).
            EXIT_TASK_SWITCH => self.task_switch_exit(),
            _ => VmExit::Other { code: u64::from(e.reason), info1: e.qualification, info2: e.gpa },
        }
    }

    /// A task switch (SDM vol. 3C 28.2.1: qualification bits 15:0 the TSS
    /// selector, 31:30 the source). An event whose delivery went through a
    /// task gate is delivered by the emulated switch, so it is not injected
    /// again (`run` re-armed it), and an NMI blocks NMIs from then until an
    /// IRET, as any NMI delivery does. An IRET ends that blocking, whether
    /// it returns to another task or not.
    fn task_switch_exit(&mut self) -> VmExit {
        use crate::virt::{EventKind, TaskGateEvent};
        use ferrite_x86::task::Source;
        let e = self.exit;
        let source = match (e.qualification >> 30) & 3 {
            0 => Source::Call,
            1 => Source::Iret,
            2 => Source::Jmp,
            _ => Source::Gate,
        };
        let mut event = None;
        if source == Source::Gate && e.vectoring & EVENT_VALID != 0 {
            let kind = match (e.vectoring >> 8) & 7 {
                0 => EventKind::External,
                2 => EventKind::Nmi,
                3 => EventKind::HardwareException,
                4 => EventKind::SoftwareInterrupt,
                5 => EventKind::PrivilegedSoftwareException,
                _ => EventKind::SoftwareException,
            };
            let error_code = (e.vectoring & EVENT_ERROR_CODE != 0).then_some(e.vectoring_error);
            event = Some(TaskGateEvent { vector: e.vectoring as u8, kind, error_code });
            self.inject = 0;
            if kind == EventKind::Nmi {
                self.st.interruptibility |= INTERRUPTIBILITY_NMI;
            }
        }
        if source == Source::Iret {
            self.st.interruptibility &= !INTERRUPTIBILITY_NMI;
        }
        VmExit::TaskSwitch { selector: e.qualification as u16, source, event, instruction_len: e.instruction_len }
    }

    fn exit_idt_vectoring_valid(&self) -> bool {
        self.inject & EVENT_VALID != 0
    }

    /// VMCLEARs the VMCS on this CPU, so that it can be loaded anywhere.
    fn clear_vmcs(&mut self) {
        if self.active_cpu == usize::MAX {
            return;
        }
        let cpu = percpu::current_index();
        if cpu != self.active_cpu {
            log::error!("vmx: VMCS of a vCPU active on cpu {} released on cpu {}", self.active_cpu, cpu);
            return;
        }
        // What is still only in the VMCS comes out before it is cleared.
        self.tables();
        // SAFETY: VMX is on here and the VMCS is this vCPU's, active here.
        if let Err(e) = unsafe { vmclear(self.vmcs_pa) } {
            log::error!("vmx: VMCLEAR failed: {:?}", e);
        }
        let slot = &VMX_CPUS[cpu];
        if slot.current_vmcs.load(Ordering::Relaxed) == self.vmcs_pa {
            slot.current_vmcs.store(0, Ordering::Relaxed);
        }
        self.active_cpu = usize::MAX;
        self.launched = false;
    }

    fn can_inject(&self) -> bool {
        self.inject & EVENT_VALID == 0
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        if self.active_cpu != usize::MAX {
            // Still active on some CPU (the slice never ended): the CPU may
            // write the VMCS back at any time, so its page is not reused.
            log::error!("vmx: a vCPU dropped with its VMCS active; its page is leaked");
        } else {
            mm::free_page(self.vmcs_pa);
        }
        mm::free_page(self.msr_bitmap_pa);
        mm::free_page(self.vapic_pa);
    }
}

/// Whether this CPU has IA32_TSC_AUX (CPUID RDTSCP or RDPID).
fn cpu_has_tsc_aux() -> bool {
    cpu::cpuid(0x8000_0001, 0).edx & (1 << 27) != 0 || cpu::cpuid(7, 0).ecx & (1 << 22) != 0
}

fn xsetbv(value: u64) {
    // SAFETY: callers pass either the host XCR0 (set up by `fpu::init_cpu`) or
    // a guest value validated by the XSETBV exit handler against the host's
    // supported set, with x87 set.
    unsafe { XCr0::write_raw(value) };
}

/// Loads a vCPU's DR0-3. They only hold breakpoint addresses; the host's
/// DR7 (loaded at every VM exit as 0x400) enables none.
fn load_debug_regs(dr: &[u64; 4]) {
    Dr0::write(dr[0]);
    Dr1::write(dr[1]);
    Dr2::write(dr[2]);
    Dr3::write(dr[3]);
}

fn read_debug_regs() -> [u64; 4] {
    [Dr0::read(), Dr1::read(), Dr2::read(), Dr3::read()]
}

fn write_dr6(value: u64) {
    // SAFETY: DR6 is a status register; the host never reads it.
    unsafe { core::arch::asm!("mov dr6, {}", in(reg) value, options(nostack, nomem)) };
}

/// CR2 is not switched by VM entry or exit: each vCPU's is loaded before
/// its entries and read back after its exits (the hypervisor takes no
/// page faults, so the register is otherwise unused).
fn write_cr2(value: u64) {
    // SAFETY: CR2 only reports page-fault addresses; writing it changes
    // nothing else.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) value, options(nostack, nomem)) };
}

fn read_cr2() -> u64 {
    Cr2::read_raw()
}

fn read_dr6() -> u64 {
    Dr6::read_raw()
}

/// The general-purpose register numbered `n` as VMX exit qualifications
/// number them (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP,
/// 6 = RSI, 7 = RDI, 8-15 = R8-R15).
fn gpr_mut(regs: &mut GuestRegs, n: u8) -> &mut u64 {
    match n & 0xF {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

impl VmxVcpu {
    /// One VM entry and the exit that ends it.
    fn run_once(&mut self) -> VmExit {
        let cpu = percpu::current_index();
        let slot = &VMX_CPUS[cpu];
        if slot.vmxon_pa.load(Ordering::Acquire) == 0 {
            return VmExit::InvalidState { check: None };
        }
        if self.active_cpu != usize::MAX && self.active_cpu != cpu {
            log::error!("vmx: vCPU active on cpu {} run on cpu {}", self.active_cpu, cpu);
            return VmExit::InvalidState { check: None };
        }
        if !self.initialized {
            // SAFETY: VMX is on; VMCLEAR puts the fresh VMCS (revision
            // written by `new`) into the clear launch state.
            if let Err(e) = unsafe { vmclear(self.vmcs_pa) } {
                log::error!("vmx: VMCLEAR of a new VMCS failed: {:?}", e);
                return VmExit::InvalidState { check: None };
            }
        }
        if slot.current_vmcs.load(Ordering::Relaxed) != self.vmcs_pa {
            // SAFETY: the VMCS is this vCPU's and not active on another
            // CPU (checked above: it was cleared when its last slice ended).
            if let Err(e) = unsafe { vmptrld(self.vmcs_pa) } {
                log::error!("vmx: VMPTRLD failed: {:?}", e);
                return VmExit::InvalidState { check: None };
            }
            slot.current_vmcs.store(self.vmcs_pa, Ordering::Relaxed);
        }
        if !self.initialized {
            self.write_controls();
            self.initialized = true;
            self.dirty = true;
        }
        if self.active_cpu != cpu {
            self.write_host_state();
            self.active_cpu = cpu;
        }
        // Translations this CPU may hold for this VPID or EPT from another
        // vCPU or an older mapping: flush them when the vCPU comes here from
        // elsewhere or another vCPU ran here, and after a CR4 change.
        let moved = cpu != self.last_cpu || slot.last_vcpu.load(Ordering::Relaxed) != self.token;
        if moved {
            // SAFETY: VMX is on; detection checked the INVEPT types.
            let _ = unsafe { invept(if self.config.invept_single { 1 } else { 2 }, self.eptp) };
            slot.last_vcpu.store(self.token, Ordering::Relaxed);
            self.last_cpu = cpu;
        }
        if (moved || core::mem::take(&mut self.flush_tlb)) && self.vpid != 0 {
            // SAFETY: VMX is on; detection checked INVVPID and its types.
            let _ = unsafe { invvpid(if self.config.invvpid_single { 1 } else { 2 }, self.vpid) };
        }
        if self.dirty {
            self.write_guest_state();
            self.dirty = false;
        }
        write(GUEST_RSP, self.regs.rsp);
        write(GUEST_RIP, self.regs.rip);
        write(GUEST_RFLAGS, self.regs.rflags | 2);
        let mut interruptibility = self.st.interruptibility;
        if self.regs.rflags & RFLAGS_IF == 0 {
            // VM entry refuses STI blocking with IF clear.
            interruptibility &= !INTERRUPTIBILITY_STI;
        }
        write(GUEST_INTERRUPTIBILITY, u64::from(interruptibility));
        // A single step pending over an interrupt shadow (VM entry insists).
        let pending_dbg = if self.regs.rflags & RFLAGS_TF != 0 && interruptibility & 3 != 0 { DR6_BS } else { 0 };
        write(GUEST_PENDING_DBG, pending_dbg);
        let cr3_exits = if self.unpaged() { PROC_CR3_LOAD | PROC_CR3_STORE } else { 0 };
        write(PROC_CONTROLS, u64::from(self.proc | cr3_exits));
        write(TSC_OFFSET, self.tsc_offset);
        write(ENTRY_INTR_INFO, u64::from(self.inject));
        write(ENTRY_EXCEPTION_ERROR, u64::from(self.inject_error));
        write(ENTRY_INSTRUCTION_LEN, u64::from(self.inject_len));
        if let Some(aux) = self.tsc_aux {
            if slot.loaded_tsc_aux.load(Ordering::Relaxed) != aux {
                // SAFETY: the MSR exists (checked when `tsc_aux` was set up)
                // and `set_tsc_aux` only accepts values with bits 63:32 clear.
                unsafe { cpu::wrmsr(msr::TSC_AUX, aux) };
                slot.loaded_tsc_aux.store(aux, Ordering::Relaxed);
            }
        }
        if !self.fpu_loaded {
            // First entry of the slice: the FPU image and the syscall MSRs
            // go in, unless this CPU still holds them from this vCPU.
            if self.fpu_cpu != cpu || slot.fpu_owner.load(Ordering::Relaxed) != self.token {
                self.guest_fpu.restore();
                for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall_msrs) {
                    // SAFETY: these MSRs exist on every x86_64 CPU; the
                    // host does not use them. Values were read from the
                    // CPU (or are 0), so they are canonical.
                    unsafe { cpu::wrmsr(*m, v) };
                }
                slot.fpu_owner.store(self.token, Ordering::Relaxed);
                self.fpu_cpu = cpu;
            }
            self.fpu_loaded = true;
        }
        if let Some(dr) = self.debug_regs {
            if slot.dr_owner.load(Ordering::Relaxed) != self.token {
                load_debug_regs(&dr);
                slot.dr_owner.store(self.token, Ordering::Relaxed);
            }
        }
        write_dr6(self.st.dr6);
        write_cr2(self.st.cr2);
        let use_xsave = fpu::uses_xsave();
        if use_xsave {
            xsetbv(self.guest_xcr0);
        }
        // SAFETY: this vCPU's VMCS is current on this CPU with complete
        // controls, host state for this CPU and the guest state written
        // above; `regs` and `sse` outlive the call. VM entry checks the
        // guest state itself and fails cleanly (reported below).
        let failed = unsafe { vmx_run(&mut self.regs, &mut self.sse, u64::from(self.launched)) };
        if use_xsave {
            xsetbv(fpu::host_xcr0());
        }
        if failed != 0 {
            let error = read(VM_INSTRUCTION_ERROR);
            log::error!("vmx: {} failed, VM-instruction error {}", if self.launched { "VMRESUME" } else { "VMLAUNCH" }, error);
            return VmExit::InvalidState { check: Some(ferrite_x86::StateCheck::VmInstructionError(error as u32)) };
        }
        let reason = read(EXIT_REASON) as u32;
        // An entry that failed on the guest state (bit 31) leaves the VMCS
        // as it was: not launched if this was VMLAUNCH.
        if reason & (1 << 31) == 0 {
            self.launched = true;
        }
        self.st.dr6 = read_dr6();
        self.st.cr2 = read_cr2();
        if let Some(dr) = self.debug_regs.as_mut() {
            *dr = read_debug_regs();
        }
        self.regs.rsp = read(GUEST_RSP);
        self.regs.rip = read(GUEST_RIP);
        self.regs.rflags = read(GUEST_RFLAGS);
        self.read_guest_state();
        self.exit = ExitInfo {
            reason,
            qualification: read(EXIT_QUALIFICATION),
            instruction_len: read(EXIT_INSTRUCTION_LEN),
            instruction_info: read(EXIT_INSTRUCTION_INFO) as u32,
            intr_info: read(EXIT_INTR_INFO) as u32,
            intr_error: read(EXIT_INTR_ERROR) as u32,
            gpa: read(GUEST_PHYSICAL_ADDRESS),
            vectoring: 0,
            vectoring_error: 0,
        };
        // An event whose delivery the exit cut short (IDT-vectoring
        // information) is delivered again at the next entry, except
        // software interrupts and INT3/INTO, which their instruction raises
        // again when it runs again.
        let vectoring = read(IDT_VECTORING_INFO) as u32;
        self.exit.vectoring = vectoring;
        let kind = (vectoring >> 8) & 7;
        if vectoring & EVENT_VALID != 0 {
            self.exit.vectoring_error = read(IDT_VECTORING_ERROR) as u32;
        }
        if vectoring & EVENT_VALID != 0 && kind != 4 && kind != 6 {
            self.inject = vectoring & !(1 << 12);
            self.inject_error = self.exit.vectoring_error;
            self.inject_len = self.exit.instruction_len as u32;
            if kind == 2 {
                // An NMI being delivered again: not blocked meanwhile.
                self.st.interruptibility &= !INTERRUPTIBILITY_NMI;
            }
        } else {
            self.inject = 0;
        }
        self.decode_exit()
    }
}

impl VcpuOps for VmxVcpu {
    fn run(&mut self) -> VmExit {
        if !self.config.unrestricted && self.st.cr0 & CR0_PE == 0 {
            return VmExit::Unsupported("real mode (this CPU's VMX has no unrestricted guest)");
        }
        loop {
            let exit = self.run_once();
            if !self.emulate_unpaged_cr3() {
                return exit;
            }
        }
    }

    fn switch_debug_regs(&mut self) {
        if self.debug_regs.is_none() {
            self.debug_regs = Some([0; 4]);
            self.proc &= !PROC_MOV_DR;
        }
    }

    fn release_fpu(&mut self) {
        if self.fpu_loaded {
            self.guest_fpu.save();
            for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall_msrs.iter_mut()) {
                *v = rdmsr(*m);
            }
            self.fpu_loaded = false;
        }
        self.clear_vmcs();
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16) {
        let data = Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x93 };
        let mut segs = [data; 6];
        segs[1] = Segment { selector: cs_selector, base: u64::from(cs_selector) << 4, limit: 0xFFFF, attrib: 0x9B };
        self.set_tables(Tables {
            segs,
            gdtr: Segment { limit: 0xFFFF, ..Default::default() },
            idtr: Segment { limit: 0xFFFF, ..Default::default() },
            ldtr: Segment { limit: 0xFFFF, attrib: 0x82, ..Default::default() },
            tr: Segment { limit: 0xFFFF, attrib: 0x8B, ..Default::default() },
            sysenter: [0; 3],
        });
        self.st.interruptibility = 0;
        self.inject = 0;
        self.proc &= !(PROC_INTERRUPT_WINDOW | PROC_NMI_WINDOW);
        self.st.cr0 = 0x10;
        self.st.cr2 = 0;
        self.st.cr3 = 0;
        self.st.cr4 = 0;
        self.st.efer = 0;
        self.st.pdpte = [0; 4];
        self.regs = GuestRegs { rip: u64::from(ip), rflags: 2, rdx: 0x600, ..Default::default() };
        self.guest_xcr0 = 1;
        self.dirty = true;
    }

    fn set_entry_state(&mut self, st: &EntryState) {
        self.reset_real_mode(0, 0);
        let mut t = *self.tables();
        t.segs = [st.ds; 6];
        t.segs[1] = st.cs;
        t.tr = st.tr;
        t.gdtr = Segment { base: st.gdtr_base, limit: u32::from(st.gdtr_limit), ..Default::default() };
        t.idtr = Segment::default();
        self.set_tables(t);
        self.st.cr0 = st.cr0;
        self.st.cr3 = st.cr3;
        self.st.cr4 = st.cr4;
        self.st.efer = st.efer;
        self.regs = GuestRegs { rip: st.rip, rbx: st.rbx, rsi: st.rsi, rdi: st.rdi, rflags: st.rflags | 2, ..Default::default() };
        self.dirty = true;
    }

    fn efer(&self) -> u64 {
        self.st.efer
    }

    fn set_efer(&mut self, efer: u64) {
        self.st.efer = efer;
        self.dirty = true;
    }

    fn set_cr0(&mut self, value: u64) {
        if ferrite_x86::cr::cr0_change_flushes_tlb(self.st.cr0, value) {
            self.flush_tlb = true;
        }
        self.st.cr0 = value;
        self.dirty = true;
    }

    fn set_cr4(&mut self, value: u64) {
        if ferrite_x86::cr::cr4_change_flushes_tlb(self.st.cr4, value) {
            self.flush_tlb = true;
        }
        self.st.cr4 = value;
        self.dirty = true;
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        if !self.can_inject() {
            // An event whose delivery the exit cut short goes first.
            return;
        }
        let mut event = u32::from(vector) | EVENT_HW_EXCEPTION | EVENT_VALID;
        // In real mode exceptions push no error code (VM entry insists).
        if let (Some(code), true) = (error_code, self.st.cr0 & CR0_PE != 0) {
            event |= EVENT_ERROR_CODE;
            self.inject_error = code;
        }
        self.inject = event;
        self.inject_len = 0;
    }

    fn inject_single_step(&mut self) {
        self.st.dr6 = (self.st.dr6 & !DR6_B0_B3) | DR6_BS;
        self.st.dr7 &= !DR7_GD;
        self.dirty = true;
        self.inject_exception(DB_VECTOR, None);
    }

    fn clear_interrupt_shadow(&mut self) {
        if self.st.interruptibility & (INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS) != 0 {
            self.st.interruptibility &= !(INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS);
        }
    }

    fn inject_nmi(&mut self) -> bool {
        if !self.can_inject() || self.st.interruptibility & (INTERRUPTIBILITY_NMI | INTERRUPTIBILITY_MOV_SS | INTERRUPTIBILITY_STI) != 0 {
            return false;
        }
        // The CPU blocks NMIs from this delivery until the handler's IRET.
        self.inject = 2 | EVENT_NMI | EVENT_VALID;
        self.inject_len = 0;
        true
    }

    fn iret_intercepted(&mut self) {}

    fn inject_page_fault(&mut self, address: u64, error_code: u32) {
        if !self.can_inject() {
            return;
        }
        self.st.cr2 = address;
        self.inject_exception(PF_VECTOR, Some(error_code));
    }

    fn set_xcr0(&mut self, xcr0: u64) {
        self.guest_xcr0 = xcr0;
    }

    fn xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    fn guest_pat(&self) -> u64 {
        self.st.pat
    }

    fn set_guest_pat(&mut self, value: u64) {
        self.st.pat = value;
        self.dirty = true;
    }

    fn has_tsc_aux(&self) -> bool {
        self.tsc_aux.is_some()
    }

    fn tsc_aux(&self) -> u64 {
        self.tsc_aux.unwrap_or(0)
    }

    fn set_tsc_aux(&mut self, value: u64) {
        if self.tsc_aux.is_some() {
            self.tsc_aux = Some(value & 0xFFFF_FFFF);
        }
    }

    fn xmm(&self, index: u8) -> [u8; 16] {
        self.sse.xmm[usize::from(index & 15)]
    }

    fn set_xmm(&mut self, index: u8, value: [u8; 16]) {
        self.sse.xmm[usize::from(index & 15)] = value;
    }

    fn interruptible(&self) -> bool {
        self.regs.rflags & RFLAGS_IF != 0 && !self.in_interrupt_shadow() && !self.event_pending()
    }

    fn in_interrupt_shadow(&self) -> bool {
        self.st.interruptibility & (INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS) != 0
    }

    fn event_pending(&self) -> bool {
        self.inject & EVENT_VALID != 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.inject = u32::from(vector) | EVENT_EXTERNAL | EVENT_VALID;
        self.inject_len = 0;
    }

    fn request_interrupt_window(&mut self, on: bool) {
        if on {
            self.proc |= PROC_INTERRUPT_WINDOW;
            let virtual_nmis = self.config.pin & PIN_VIRTUAL_NMIS != 0;
            if virtual_nmis && self.st.interruptibility & INTERRUPTIBILITY_NMI != 0 && self.config.proc_may & PROC_NMI_WINDOW != 0 {
                // An NMI may be what waits: exit once the handler's IRET ran.
                self.proc |= PROC_NMI_WINDOW;
            }
        } else {
            self.proc &= !(PROC_INTERRUPT_WINDOW | PROC_NMI_WINDOW);
        }
    }

    fn cr8(&self) -> u8 {
        // SAFETY: the virtual-APIC page is this vCPU's, identity mapped; the
        // CPU keeps the guest's CR8 in VTPR (offset 0x80, bits 7:4).
        (unsafe { ((self.vapic_pa + 0x80) as *const u32).read_volatile() } >> 4) as u8 & 0xF
    }

    fn set_cr8(&mut self, cr8: u8) {
        // SAFETY: as in `cr8`.
        unsafe { ((self.vapic_pa + 0x80) as *mut u32).write_volatile(u32::from(cr8 & 0xF) << 4) };
    }

    fn intercept_cr8_writes(&mut self, on: bool) {
        if on {
            self.proc |= PROC_CR8_LOAD;
        } else {
            self.proc &= !PROC_CR8_LOAD;
        }
    }

    fn paging_state(&self) -> PagingState {
        PagingState { cr0: self.st.cr0, cr3: self.st.cr3, cr4: self.st.cr4, efer: self.st.efer }
    }

    fn code_segment(&self) -> Segment {
        self.tables().segs[1]
    }

    fn describe_state(&self) -> alloc::string::String {
        let t = self.tables();
        alloc::format!(
            "rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x} tr {:#x} base {:#x} exit {} qual {:#x} inject {:#x} interruptibility {:#x} proc {:#x}",
            self.regs.rsp,
            self.regs.rflags,
            t.segs[1].selector,
            self.st.cr0,
            self.st.cr2,
            self.st.cr3,
            self.st.cr4,
            self.st.efer,
            t.idtr.base,
            t.idtr.limit,
            t.tr.selector,
            t.tr.base,
            self.exit.reason,
            self.exit.qualification,
            self.inject,
            self.st.interruptibility,
            self.proc,
        )
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
    }

    fn segment(&self, index: u8) -> Segment {
        self.tables().segs[usize::from(index.min(5))]
    }

    fn keeps_pae_pdptes(&self) -> bool {
        true
    }

    fn set_pae_pdptes(&mut self, pdptes: [u64; 4]) {
        self.st.pdpte = pdptes;
        self.dirty = true;
    }

    fn set_segment(&mut self, index: u8, seg: Segment) {
        let mut t = *self.tables();
        t.segs[usize::from(index.min(5))] = seg;
        self.set_tables(t);
    }

    fn system_segments(&self) -> crate::virt::SystemSegments {
        let t = self.tables();
        crate::virt::SystemSegments { ldtr: t.ldtr, tr: t.tr, gdtr: t.gdtr }
    }

    fn set_ldtr(&mut self, seg: Segment) {
        let mut t = *self.tables();
        t.ldtr = seg;
        self.set_tables(t);
    }

    fn set_tr(&mut self, seg: Segment) {
        let mut t = *self.tables();
        t.tr = seg;
        self.set_tables(t);
    }

    fn set_cr3(&mut self, cr3: u64) {
        // A CR3 written into the VMCS flushes nothing: the guest's MOV to
        // CR3 would have flushed its VPID's non-global entries.
        self.st.cr3 = cr3;
        self.flush_tlb = true;
        self.dirty = true;
    }
}
