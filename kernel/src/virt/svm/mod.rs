//! AMD SVM backend: detection, per-CPU enablement, and the VMCB-based vCPU.

mod invalid;
pub mod vmcb;

use self::vmcb::*;
use super::{Capabilities, DetectError, GuestRegs, Segment, VcpuOps, VmExit};
use crate::arch::cpu::{self, msr};
use crate::arch::fpu::{self, FpuState, SseRegs};
use crate::arch::percpu::{self, MAX_CPUS};
use crate::mm;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::debug::{DebugAddressRegister, Dr0, Dr1, Dr2, Dr3};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::registers::xcontrol::XCr0;

const CPUID_SVM_FEATURES: u32 = 0x8000_000A;

/// Checks that this CPU can run SVM guests with nested paging and reports
/// which optional features it has.
pub fn detect() -> Result<Capabilities, DetectError> {
    if cpu::max_extended_leaf() < CPUID_SVM_FEATURES || cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        return Err(DetectError::SvmAbsent);
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    if unsafe { cpu::rdmsr(msr::VM_CR) } & (1 << 4) != 0 {
        return Err(DetectError::SvmDisabledByFirmware);
    }
    let leaf = cpu::cpuid(CPUID_SVM_FEATURES, 0);
    let caps = Capabilities {
        backend: super::BackendKind::Svm,
        name: "svm",
        nested_paging: leaf.edx & (1 << 0) != 0,
        next_rip: leaf.edx & (1 << 3) != 0,
        state_caching: leaf.edx & (1 << 5) != 0,
        flush_by_asid: leaf.edx & (1 << 6) != 0,
        decode_assists: leaf.edx & (1 << 7) != 0,
        pause_filter: leaf.edx & (1 << 10) != 0,
        asids: leaf.ebx,
        inject_via_virq: under_qemu_tcg(),
        real_mode: true,
    };
    if !caps.nested_paging {
        return Err(DetectError::NoNestedPaging);
    }
    mm::paging::set_nested_format(mm::paging::NestedFormat::Npt);
    Ok(caps)
}

/// Per-CPU SVM state, kept here (indexed by CPU) rather than in the
/// per-CPU block so that `arch` does not depend on a backend: the page
/// used as the host VMCB for VMSAVE/VMLOAD (FS, GS, TR, syscall MSRs), 0
/// until SVM is enabled on that CPU, and the guest VMCB the CPU ran last
/// (which decides TLB flushes). Only the owning CPU writes its slot.
/// It also remembers the IA32_TSC_AUX value last loaded, since VMRUN does
/// not switch that MSR: each vCPU's own is loaded before entry when it
/// differs, so no guest reads another's (Linux keeps its CPU number there).
///
/// `fpu_owner` names the vCPU whose x87/AVX state is in this CPU's
/// registers (its `fpu_token`; 0: none), so a vCPU that comes back to the
/// CPU it last ran on, with nobody else in between, skips the reload.
struct SvmCpu {
    host_vmcb_pa: AtomicU64,
    last_vmcb: AtomicU64,
    loaded_tsc_aux: AtomicU64,
    fpu_owner: AtomicU64,
    /// Whose DR0-3 this CPU holds (an `fpu_token`; 0: none).
    dr_owner: AtomicU64,
}

static SVM_CPUS: [SvmCpu; MAX_CPUS] = [const {
    SvmCpu {
        host_vmcb_pa: AtomicU64::new(0),
        last_vmcb: AtomicU64::new(0),
        loaded_tsc_aux: AtomicU64::new(u64::MAX),
        fpu_owner: AtomicU64::new(0),
        dr_owner: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Source of `SvmVcpu::fpu_token`s (never 0).
static NEXT_FPU_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Whether this CPU is QEMU's TCG (its hypervisor leaf says so).
fn under_qemu_tcg() -> bool {
    // (A CPU without hypervisor leaves answers something else here: zeros,
    // or its highest basic leaf.)
    let sig = cpu::cpuid(0x4000_0000, 0);
    [sig.ebx, sig.ecx, sig.edx] == [u32::from_le_bytes(*b"TCGT"), u32::from_le_bytes(*b"CGTC"), u32::from_le_bytes(*b"GTCG")]
}

/// Whether this CPU has IA32_TSC_AUX (CPUID RDTSCP or RDPID).
fn cpu_has_tsc_aux() -> bool {
    cpu::cpuid(0x8000_0001, 0).edx & (1 << 27) != 0 || cpu::cpuid(7, 0).ecx & (1 << 22) != 0
}

/// Turns SVM on for the calling CPU.
pub(super) fn enable_cpu() -> Result<(), DetectError> {
    detect()?;
    let hsave = mm::alloc_zeroed_page().ok_or(DetectError::OutOfMemory)?;
    let host_vmcb = mm::alloc_zeroed_page().ok_or(DetectError::OutOfMemory)?;
    // SAFETY: detect() confirmed SVM is present and not disabled, so setting
    // EFER.SVME and VM_HSAVE_PA (to a page owned by this CPU for its
    // lifetime) is valid.
    unsafe {
        Efer::update(|f| f.insert(EferFlags::SECURE_VIRTUAL_MACHINE_ENABLE));
        cpu::wrmsr(msr::VM_HSAVE_PA, hsave);
    }
    let slot = &SVM_CPUS[percpu::current_index()];
    slot.last_vmcb.store(0, Ordering::Relaxed);
    slot.loaded_tsc_aux.store(u64::MAX, Ordering::Relaxed);
    slot.host_vmcb_pa.store(host_vmcb, Ordering::Release);
    Ok(())
}

/// Whether `enable_cpu` succeeded on the calling CPU.
pub(super) fn enabled_on_this_cpu() -> bool {
    SVM_CPUS[percpu::current_index()].host_vmcb_pa.load(Ordering::Acquire) != 0
}

core::arch::global_asm!(
    r#"
    .section .text.svm_run, "ax"
    .global svm_run
/* svm_run(guest_vmcb_pa: rdi, regs: rsi, host_vmcb_pa: rdx, sse: rcx)
 * Loads the guest GPRs from `regs` (rax/rsp live in the VMCB) and its
 * XMM0-15/MXCSR from `sse` (fpu::SseRegs), runs the guest until #VMEXIT,
 * stores both back and puts the hypervisor's MXCSR back. VMSAVE/VMLOAD
 * move the state VMRUN does not switch (FS/GS/TR/LDTR bases, syscall
 * MSRs). The guest's x87/AVX state stays loaded (see arch/fpu.rs). */
svm_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rcx              /* sse */
    pushq %rsi              /* regs */
    pushq %rdx              /* host vmcb */
    pushq %rdi              /* guest vmcb */
    movdqu 0(%rcx), %xmm0
    movdqu 16(%rcx), %xmm1
    movdqu 32(%rcx), %xmm2
    movdqu 48(%rcx), %xmm3
    movdqu 64(%rcx), %xmm4
    movdqu 80(%rcx), %xmm5
    movdqu 96(%rcx), %xmm6
    movdqu 112(%rcx), %xmm7
    movdqu 128(%rcx), %xmm8
    movdqu 144(%rcx), %xmm9
    movdqu 160(%rcx), %xmm10
    movdqu 176(%rcx), %xmm11
    movdqu 192(%rcx), %xmm12
    movdqu 208(%rcx), %xmm13
    movdqu 224(%rcx), %xmm14
    movdqu 240(%rcx), %xmm15
    ldmxcsr 256(%rcx)
    movq %rdx, %rax
    vmsave %rax
    movq 8(%rsi), %rbx
    movq 16(%rsi), %rcx
    movq 24(%rsi), %rdx
    movq 40(%rsi), %rdi
    movq 48(%rsi), %rbp
    movq 56(%rsi), %r8
    movq 64(%rsi), %r9
    movq 72(%rsi), %r10
    movq 80(%rsi), %r11
    movq 88(%rsi), %r12
    movq 96(%rsi), %r13
    movq 104(%rsi), %r14
    movq 112(%rsi), %r15
    movq 32(%rsi), %rsi
    movq (%rsp), %rax
    /* GIF=0 holds host interrupts off in the host; IF=1 at VMRUN lets
     * physical interrupts (timer, kick IPIs) leave the guest: with
     * V_INTR_MASKING the host's IF at VMRUN gates them while the guest runs. */
    clgi
    sti
    vmload %rax
    vmrun %rax
    vmsave %rax
    pushq %rsi
    movq 24(%rsp), %rsi     /* regs (guest rsi, guest vmcb, host vmcb, regs) */
    popq 32(%rsi)
    movq %rbx, 8(%rsi)
    movq %rcx, 16(%rsi)
    movq %rdx, 24(%rsi)
    movq %rdi, 40(%rsi)
    movq %rbp, 48(%rsi)
    movq %r8, 56(%rsi)
    movq %r9, 64(%rsi)
    movq %r10, 72(%rsi)
    movq %r11, 80(%rsi)
    movq %r12, 88(%rsi)
    movq %r13, 96(%rsi)
    movq %r14, 104(%rsi)
    movq %r15, 112(%rsi)
    addq $8, %rsp
    popq %rax               /* host vmcb */
    vmload %rax
    cli
    stgi
    movq 8(%rsp), %rcx      /* sse (the stack now holds: regs, sse) */
    movdqu %xmm0, 0(%rcx)
    movdqu %xmm1, 16(%rcx)
    movdqu %xmm2, 32(%rcx)
    movdqu %xmm3, 48(%rcx)
    movdqu %xmm4, 64(%rcx)
    movdqu %xmm5, 80(%rcx)
    movdqu %xmm6, 96(%rcx)
    movdqu %xmm7, 112(%rcx)
    movdqu %xmm8, 128(%rcx)
    movdqu %xmm9, 144(%rcx)
    movdqu %xmm10, 160(%rcx)
    movdqu %xmm11, 176(%rcx)
    movdqu %xmm12, 192(%rcx)
    movdqu %xmm13, 208(%rcx)
    movdqu %xmm14, 224(%rcx)
    movdqu %xmm15, 240(%rcx)
    stmxcsr 256(%rcx)
    ldmxcsr svm_host_mxcsr(%rip)
    addq $16, %rsp          /* regs, sse */
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .section .rodata.svm_run, "a"
    .balign 4
svm_host_mxcsr:
    .long 0x1F80
    "#,
    options(att_syntax)
);

extern "C" {
    fn svm_run(guest_vmcb_pa: u64, regs: *mut GuestRegs, host_vmcb_pa: u64, sse: *mut SseRegs);
}

/// One virtual CPU under SVM.
pub struct SvmVcpu {
    vmcb: Vmcb,
    /// Why the last `InvalidState` exit happened (`VcpuOps::state_check`).
    state_check: Option<ferrite_x86::StateCheck>,
    regs: GuestRegs,
    caps: Capabilities,
    /// The guest's full FPU/SSE/AVX image between slices.
    guest_fpu: FpuState,
    /// Its XMM0-15/MXCSR while a slice runs (moved by `svm_run`).
    sse: SseRegs,
    /// The guest's x87/AVX state is in this CPU's registers (a slice is
    /// running; `release_fpu` ends it).
    fpu_loaded: bool,
    /// The guest's DR0-3, once it uses debug registers (`None` before:
    /// its DR accesses are intercepted and its DR0-3 are not loaded).
    debug_regs: Option<[u64; 4]>,
    /// The vector waiting in V_IRQ (injected, not yet taken by the guest).
    virq_vector: Option<u8>,
    /// Names this vCPU's FPU state in `SvmCpu::fpu_owner`.
    fpu_token: u64,
    /// The CPU whose registers last held this vCPU's FPU state.
    fpu_cpu: usize,
    guest_xcr0: u64,
    /// VMCB areas changed since the last VMRUN (clean-bit numbering); with
    /// VMCB clean bits the CPU reloads only these.
    dirty: u32,
    /// The CPU this vCPU last ran on (`usize::MAX`: never ran). On another
    /// CPU the cached VMCB state and TLB entries must not be trusted.
    last_cpu: usize,
    /// The guest's IA32_TSC_AUX, when the CPU has the MSR.
    tsc_aux: Option<u64>,
    /// The guest's TLB must be flushed at the next entry (a CR4 change).
    flush_tlb: bool,
    /// An NMI was delivered and its handler has not returned: NMIs are
    /// blocked (APM vol. 2, 8.2.19) until the IRET after it has executed.
    nmi_blocked: bool,
    /// The guest is about to execute that IRET at this RIP (it was
    /// intercepted); once RIP has moved on, NMIs are unblocked.
    iret_rip: Option<u64>,
    /// EFER as the guest sees it. The VMCB's differs: it has SVME, and
    /// LME only while CR0.PG is set (`write_vmcb_efer`).
    guest_efer: u64,
}

const DB_VECTOR: u8 = 1;
/// DR6.B0-B3 (breakpoint hits), BS (single step); DR7.GD.
const DR6_B0_B3: u64 = 0xF;
const DR6_BS: u64 = 1 << 14;
const DR7_GD: u64 = 1 << 13;
const PF_VECTOR: u8 = 14;
const AC_VECTOR: u8 = 17;
/// Reads of DR0-3 (bits 0-3) and writes of DR0-3 and DR7 (bits 16-19, 23).
const DR_INTERCEPTS: u32 = 0xF | (0xF << 16) | (1 << 23);

/// VMCB V_INTR fields (APM vol. 2, 15.21): V_IRQ, V_INTR_PRIO (15, the
/// highest) and V_IGN_TPR, and V_INTR_VECTOR.
const VINTR_IRQ: u64 = 1 << 8;
const VINTR_IRQ_BITS: u64 = VINTR_IRQ | (0xF << 16) | (1 << 20);
const VINTR_VECTOR_MASK: u64 = 0xFF << 32;
/// V_TPR: the guest's CR8 while it runs with V_INTR_MASKING (its MOV CR8
/// reads and writes this field without an exit).
const VINTR_TPR: u64 = 0xF;

/// VMCB clean bits (APM vol. 2, 15.15.3) this code tracks.
const CLEAN_ALL: u32 = 0xFFF;
const CLEAN_INTERCEPTS: u32 = 1 << 0;
const CLEAN_TPR: u32 = 1 << 3;
/// Nested paging: N_CR3 and G_PAT.
const CLEAN_NP: u32 = 1 << 4;
const CLEAN_CRX: u32 = 1 << 5;
/// DR6 and DR7.
const CLEAN_DRX: u32 = 1 << 6;
const CLEAN_SEG_DT_CR2: u32 = (1 << 7) | (1 << 8) | (1 << 9);

impl SvmVcpu {
    /// Creates a vCPU whose guest-physical memory is described by the
    /// nested page table rooted at `npt_root`. `iopm_pa`/`msrpm_pa` are the
    /// permission maps (all ports and MSRs intercepted unless cleared).
    /// None when there is no free frame for its VMCB.
    pub fn new(caps: Capabilities, npt_root: u64, asid: u32, iopm_pa: u64, msrpm_pa: u64) -> Option<Self> {
        let (page, pa) = mm::alloc_zeroed_page_ref()?;
        let mut vmcb = Vmcb::new(page, pa);
        vmcb.write_u32(
            INTERCEPT_MISC1,
            INTERCEPT_INTR
                | INTERCEPT_NMI
                | INTERCEPT_SMI
                | INTERCEPT_INIT
                | INTERCEPT_CPUID
                | INTERCEPT_INVD
                | INTERCEPT_HLT
                | INTERCEPT_INVLPGA
                | INTERCEPT_IOIO
                | INTERCEPT_MSR
                | INTERCEPT_SHUTDOWN,
        );
        vmcb.write_u32(
            INTERCEPT_MISC2,
            INTERCEPT_VMRUN
                | INTERCEPT_VMMCALL
                | INTERCEPT_VMLOAD
                | INTERCEPT_VMSAVE
                | INTERCEPT_STGI
                | INTERCEPT_CLGI
                | INTERCEPT_SKINIT
                | INTERCEPT_XSETBV,
        );
        // #DB and #AC always exit: their delivery can fault again in the
        // same way forever inside the CPU (CVE-2015-8104, CVE-2015-5307),
        // and the host would never get the CPU back.
        vmcb.write_u32(INTERCEPT_EXCEPTIONS, (1 << DB_VECTOR) | (1 << AC_VECTOR));
        // DR0-3 are not switched by VMRUN: until the guest first touches a
        // debug register, reading or writing DR0-3 or writing DR7 exits
        // (then this vCPU's DR0-3 are switched, see `run`).
        vmcb.write_u32(INTERCEPT_DR, DR_INTERCEPTS);
        // CR0 and CR4 writes are checked against the architectural rules
        // and the guest's CPUID: a value a CPU refuses would otherwise be
        // taken, or fail the next VMRUN's consistency checks. All CR0
        // writes (MOV, LMSW, CLTS) exit, not only those the selective
        // intercept catches (a change beyond TS and MP): QEMU's TCG misses
        // changes to bits 63:32 there (its mask is 32 bits wide) and drops
        // them instead of the #GP. Guests rarely write CR0 (Linux no longer
        // toggles TS). CR3 writes do not exit: see `vcpu::cr`.
        vmcb.write_u32(INTERCEPT_CR, INTERCEPT_CR0_WRITE | INTERCEPT_CR4_WRITE);
        vmcb.write_u64(IOPM_BASE, iopm_pa);
        vmcb.write_u64(MSRPM_BASE, msrpm_pa);
        vmcb.write_u32(GUEST_ASID, asid.max(1));
        vmcb.write_u64(NP_ENABLE, 1);
        vmcb.write_u64(N_CR3, npt_root);
        // Virtual interrupt masking: the guest's IF does not gate host interrupts.
        vmcb.write_u64(VINTR, 1 << 24);
        vmcb.write_u64(G_PAT, 0x0007_0406_0007_0406);
        vmcb.write_u64(DR6, 0xFFFF_0FF0);
        vmcb.write_u64(DR7, 0x400);
        let mut vcpu = SvmVcpu {
            vmcb,
            regs: GuestRegs::default(),
            caps,
            guest_fpu: FpuState::new()?,
            sse: SseRegs::new(),
            fpu_loaded: false,
            virq_vector: None,
            debug_regs: None,
            fpu_token: NEXT_FPU_TOKEN.fetch_add(1, Ordering::Relaxed),
            fpu_cpu: usize::MAX,
            guest_xcr0: 1,
            dirty: CLEAN_ALL,
            last_cpu: usize::MAX,
            tsc_aux: cpu_has_tsc_aux().then_some(0),
            flush_tlb: false,
            state_check: None,
            nmi_blocked: false,
            iret_rip: None,
            guest_efer: 0,
        };
        vcpu.reset_real_mode(0xF000, 0xFFF0);
        Some(vcpu)
    }

    fn next_rip(&self, insn_len: u64) -> u64 {
        if self.caps.next_rip {
            self.vmcb.read_u64(NEXT_RIP)
        } else {
            // Without NRIPS the fixed opcode length is used; prefixed forms
            // of these instructions are not produced by compilers.
            self.regs.rip.wrapping_add(insn_len)
        }
    }

    /// Puts the guest's EFER into the VMCB: with SVME, which VMRUN
    /// requires, and without LME while paging is off. LME does nothing
    /// until CR0.PG is set, and both a PG change and EFER accesses exit, so
    /// the guest cannot tell. The reason is QEMU's TCG: its #VMEXIT
    /// restores the host's CR0 while the guest's EFER and CR4 are still
    /// loaded, and with LME set and PAE clear that restore returns early
    /// (`cpu_x86_update_cr0`, "enter in long mode"), leaving the host with
    /// paging off and the next VMRUN without nested paging: the guest then
    /// reaches host memory directly.
    fn write_vmcb_efer(&mut self) {
        let mut efer = self.guest_efer | cpu::EFER_SVME;
        if self.vmcb.read_u64(CR0) & ferrite_x86::cr::cr0::PG == 0 {
            efer &= !ferrite_x86::cr::efer::LME;
        }
        self.vmcb.write_u64(EFER, efer);
        self.dirty |= CLEAN_CRX;
    }

    fn decode_exit(&mut self) -> VmExit {
        let code = self.vmcb.read_u64(EXIT_CODE);
        let info1 = self.vmcb.read_u64(EXIT_INFO1);
        let info2 = self.vmcb.read_u64(EXIT_INFO2);
        match code {
            EXIT_IOIO => VmExit::Io {
                port: (info1 >> 16) as u16,
                size: if info1 & (1 << 4) != 0 {
                    1
                } else if info1 & (1 << 5) != 0 {
                    2
                } else {
                    4
                },
                write: info1 & 1 == 0,
                string: info1 & (1 << 2) != 0,
                rep: info1 & (1 << 3) != 0,
                addr_size: if info1 & (1 << 7) != 0 {
                    2
                } else if info1 & (1 << 8) != 0 {
                    4
                } else {
                    8
                },
                // Valid only with decode assists; otherwise the run loop
                // reads the instruction's prefixes.
                segment: self.caps.decode_assists.then_some(((info1 >> 10) & 7) as u8),
                next_rip: info2,
            },
            EXIT_CPUID => VmExit::Cpuid { next_rip: self.next_rip(2) },
            EXIT_IRET => VmExit::Iret,
            EXIT_HLT => VmExit::Hlt { next_rip: self.next_rip(1) },
            EXIT_VMMCALL => VmExit::Hypercall { next_rip: self.next_rip(3) },
            EXIT_XSETBV => VmExit::Xsetbv { next_rip: self.next_rip(3) },
            EXIT_MSR => {
                let msr = self.regs.rcx as u32;
                if info1 == 0 {
                    VmExit::MsrRead { msr, next_rip: self.next_rip(2) }
                } else {
                    let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
                    VmExit::MsrWrite { msr, value, next_rip: self.next_rip(2) }
                }
            }
            EXIT_CR_WRITE_BASE..=EXIT_CR_WRITE_LAST => VmExit::CrWrite {
                cr: (code - EXIT_CR_WRITE_BASE) as u8,
                // With decode assists, bit 63 says MOV CRn and bits 3:0 name
                // the source register.
                gpr: (self.caps.decode_assists && info1 & (1 << 63) != 0).then_some((info1 & 0xF) as u8),
                next_rip: self.caps.next_rip.then(|| self.vmcb.read_u64(NEXT_RIP)),
            },
            EXIT_NPF => VmExit::NestedPageFault {
                gpa: info2,
                present: info1 & 1 != 0,
                write: info1 & 2 != 0,
                exec: info1 & 0x10 != 0,
            },
            // A host interrupt, NMI, SMI or INIT signal took the CPU back:
            // nothing for the guest to see.
            EXIT_INTR | EXIT_NMI | EXIT_SMI | EXIT_INIT => VmExit::ExternalInterrupt,
            EXIT_VINTR => VmExit::InterruptWindow,
            EXIT_SHUTDOWN => VmExit::Shutdown,
            c if c == EXIT_EXCP_BASE + u64::from(DB_VECTOR) => VmExit::Exception { vector: DB_VECTOR, error_code: None },
            c if c == EXIT_EXCP_BASE + u64::from(AC_VECTOR) => {
                VmExit::Exception { vector: AC_VECTOR, error_code: Some(info1 as u32) }
            }
            EXIT_DR_READ_BASE..=EXIT_DR_WRITE_LAST => VmExit::DebugRegisterAccess,
            EXIT_INVALID | EXIT_INVALID_QEMU => {
                self.state_check = invalid::failed_check(&self.vmcb);
                VmExit::InvalidState
            }
            _ => VmExit::Other { code, info1, info2 },
        }
    }

}

impl VcpuOps for SvmVcpu {
    fn state_check(&self) -> Option<ferrite_x86::StateCheck> {
        self.state_check
    }

    fn run(&mut self) -> VmExit {
        self.vmcb.write_u64(RAX, self.regs.rax);
        self.vmcb.write_u64(RSP, self.regs.rsp);
        self.vmcb.write_u64(RIP, self.regs.rip);
        self.vmcb.write_u64(RFLAGS, self.regs.rflags | 2);
        // When this pCPU last ran a different VMCB, or this vCPU last ran
        // elsewhere, its ASID may hold another guest's (or stale)
        // translations here: flush them (just this ASID when the CPU can,
        // else everything) and let the CPU reload the whole VMCB. ASIDs may
        // then be shared between domains without leaking translations.
        let cpu = percpu::current_index();
        let svm_cpu = &SVM_CPUS[cpu];
        let host_vmcb_pa = svm_cpu.host_vmcb_pa.load(Ordering::Acquire);
        if host_vmcb_pa == 0 {
            return VmExit::InvalidState;
        }
        if let Some(aux) = self.tsc_aux {
            if svm_cpu.loaded_tsc_aux.load(Ordering::Relaxed) != aux {
                // SAFETY: the MSR exists (checked when `tsc_aux` was set up)
                // and `set_tsc_aux` only accepts values with bits 63:32 clear.
                unsafe { cpu::wrmsr(msr::TSC_AUX, aux) };
                svm_cpu.loaded_tsc_aux.store(aux, Ordering::Relaxed);
            }
        }
        if cpu != self.last_cpu || svm_cpu.last_vmcb.load(Ordering::Relaxed) != self.vmcb.pa() {
            self.vmcb.write_u8(TLB_CONTROL, if self.caps.flush_by_asid { 3 } else { 1 });
            self.dirty = CLEAN_ALL;
            self.last_cpu = cpu;
            svm_cpu.last_vmcb.store(self.vmcb.pa(), Ordering::Relaxed);
            self.flush_tlb = false;
        } else if core::mem::take(&mut self.flush_tlb) {
            self.vmcb.write_u8(TLB_CONTROL, if self.caps.flush_by_asid { 3 } else { 1 });
        } else {
            self.vmcb.write_u8(TLB_CONTROL, 0);
        }
        if self.caps.state_caching {
            self.vmcb.write_u32(CLEAN_BITS, !self.dirty & CLEAN_ALL);
        }
        self.dirty = 0;
        if !self.fpu_loaded {
            // First entry of this slice: the guest's x87/AVX state goes in
            // once (svm_run loads XMM/MXCSR from `sse` at every entry),
            // unless this CPU still holds it from this vCPU's last slice.
            let owner = &svm_cpu.fpu_owner;
            if self.fpu_cpu != cpu || owner.load(Ordering::Relaxed) != self.fpu_token {
                self.guest_fpu.restore();
                owner.store(self.fpu_token, Ordering::Relaxed);
                self.fpu_cpu = cpu;
            }
            self.fpu_loaded = true;
        }
        if let Some(dr) = self.debug_regs {
            if svm_cpu.dr_owner.load(Ordering::Relaxed) != self.fpu_token {
                load_debug_regs(&dr);
                svm_cpu.dr_owner.store(self.fpu_token, Ordering::Relaxed);
            }
        }
        let use_xsave = fpu::uses_xsave();
        if use_xsave {
            xsetbv(self.guest_xcr0);
        }
        // SAFETY: the VMCB is a valid, owned page with a consistent guest
        // state (set up by `new`/`reset_real_mode` and only changed through
        // checked accessors); the host VMCB and save area belong to the
        // current CPU; `regs` outlives the call.
        unsafe { svm_run(self.vmcb.pa(), &mut self.regs, host_vmcb_pa, &mut self.sse) };
        if use_xsave {
            xsetbv(fpu::host_xcr0());
        }
        self.regs.rax = self.vmcb.read_u64(RAX);
        self.regs.rsp = self.vmcb.read_u64(RSP);
        self.regs.rip = self.vmcb.read_u64(RIP);
        self.regs.rflags = self.vmcb.read_u64(RFLAGS);
        if self.iret_rip.is_some_and(|at| at != self.regs.rip) {
            // The IRET that ends the NMI handler has executed.
            self.iret_rip = None;
            self.nmi_blocked = false;
        }
        // An event whose delivery the exit cut short (EXITINTINFO, APM vol.
        // 2, 15.7.2) is delivered again on the next VMRUN, unless the
        // instruction that raised it runs again and raises it itself.
        if let Some(dr) = self.debug_regs.as_mut() {
            // The guest may have moved its breakpoints.
            *dr = read_debug_regs();
        }
        let unfinished = self.vmcb.read_u64(EXIT_INT_INFO);
        self.vmcb.write_u64(EVENT_INJ, if must_reinject(unfinished) { unfinished } else { 0 });
        // A virtual interrupt the CPU took clears V_IRQ; one still set waits
        // for the guest to open its window.
        if self.vmcb.read_u64(VINTR) & VINTR_IRQ == 0 {
            self.virq_vector = None;
        }
        self.decode_exit()
    }

    fn switch_debug_regs(&mut self) {
        if self.debug_regs.is_none() {
            self.debug_regs = Some([0; 4]);
            self.vmcb.write_u32(INTERCEPT_DR, 0);
            self.dirty |= CLEAN_INTERCEPTS;
        }
    }

    fn release_fpu(&mut self) {
        if self.fpu_loaded {
            // x87/AVX are still the guest's. XMM0-15/MXCSR live in `sse`
            // for good: the image's copies are never used (svm_run loads
            // `sse` at every entry), so nothing is copied between the two.
            self.guest_fpu.save();
            self.fpu_loaded = false;
        }
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16) {
        self.nmi_blocked = false;
        self.iret_rip = None;
        let data = Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x93 };
        for off in [ES, SS, DS, FS, GS] {
            self.vmcb.set_segment(off, data);
        }
        self.vmcb.set_segment(CS, Segment { selector: cs_selector, base: u64::from(cs_selector) << 4, limit: 0xFFFF, attrib: 0x9B });
        self.vmcb.set_segment(GDTR, Segment { limit: 0xFFFF, ..Default::default() });
        self.vmcb.set_segment(IDTR, Segment { limit: 0xFFFF, ..Default::default() });
        self.vmcb.set_segment(LDTR, Segment { limit: 0xFFFF, attrib: 0x82, ..Default::default() });
        self.vmcb.set_segment(TR, Segment { limit: 0xFFFF, attrib: 0x8B, ..Default::default() });
        self.vmcb.write_u8(CPL, 0);
        // INIT drops any event in flight and the interrupt shadow.
        self.vmcb.write_u64(EVENT_INJ, 0);
        self.vmcb.write_u64(INTERRUPT_SHADOW, 0);
        self.vmcb.write_u64(VINTR, self.vmcb.read_u64(VINTR) & !(VINTR_VECTOR_MASK | VINTR_IRQ_BITS));
        self.vmcb.write_u32(INTERCEPT_MISC1, self.vmcb.read_u32(INTERCEPT_MISC1) & !INTERCEPT_VINTR);
        self.virq_vector = None;
        self.dirty |= CLEAN_INTERCEPTS | CLEAN_TPR;
        self.vmcb.write_u64(CR0, 0x10); // ET
        self.vmcb.write_u64(CR3, 0);
        self.vmcb.write_u64(CR4, 0);
        self.guest_efer = 0;
        self.write_vmcb_efer();
        self.regs = GuestRegs { rip: u64::from(ip), rflags: 2, rdx: 0x600, ..Default::default() };
        self.guest_xcr0 = 1;
        self.dirty |= CLEAN_CRX | CLEAN_SEG_DT_CR2;
    }

    fn set_entry_state(&mut self, st: &crate::virt::EntryState) {
        self.reset_real_mode(0, 0);
        self.vmcb.set_segment(CS, st.cs);
        for off in [ES, SS, DS, FS, GS] {
            self.vmcb.set_segment(off, st.ds);
        }
        self.vmcb.set_segment(TR, st.tr);
        self.vmcb.set_segment(GDTR, Segment { base: st.gdtr_base, limit: u32::from(st.gdtr_limit), ..Default::default() });
        self.vmcb.set_segment(IDTR, Segment::default());
        self.vmcb.write_u64(CR0, st.cr0);
        self.vmcb.write_u64(CR3, st.cr3);
        self.vmcb.write_u64(CR4, st.cr4);
        self.set_efer(st.efer);
        self.regs = GuestRegs { rip: st.rip, rbx: st.rbx, rsi: st.rsi, rdi: st.rdi, rflags: st.rflags | 2, ..Default::default() };
        self.dirty = CLEAN_ALL;
    }

    fn efer(&self) -> u64 {
        self.guest_efer
    }

    fn set_cr0(&mut self, value: u64) {
        let old = self.vmcb.read_u64(CR0);
        if ferrite_x86::cr::cr0_change_flushes_tlb(old, value) {
            self.flush_tlb = true;
        }
        self.vmcb.write_u64(CR0, value);
        // EFER.LME goes into the VMCB with paging.
        self.write_vmcb_efer();
    }

    fn set_cr4(&mut self, value: u64) {
        let old = self.vmcb.read_u64(CR4);
        if ferrite_x86::cr::cr4_change_flushes_tlb(old, value) {
            self.flush_tlb = true;
        }
        self.vmcb.write_u64(CR4, value);
        self.dirty |= CLEAN_CRX;
    }

    fn set_efer(&mut self, efer: u64) {
        self.guest_efer = efer & !cpu::EFER_SVME;
        self.write_vmcb_efer();
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        if self.vmcb.read_u64(EVENT_INJ) & (1 << 31) != 0 {
            // An event whose delivery the exit cut short goes first; an
            // exception raised while delivering it (a #DB on the stack
            // being written) comes again when it is delivered again.
            return;
        }
        let mut event = u64::from(vector) | (3 << 8) | (1 << 31);
        if let Some(code) = error_code {
            event |= (1 << 11) | (u64::from(code) << 32);
        }
        self.vmcb.write_u64(EVENT_INJ, event);
    }

    fn inject_single_step(&mut self) {
        // What the CPU does before delivering a single-step #DB, which an
        // injected event does not do by itself: DR6.BS set (B0-B3 cleared,
        // no breakpoint hit), DR7.GD cleared.
        let dr6 = self.vmcb.read_u64(DR6);
        self.vmcb.write_u64(DR6, (dr6 & !DR6_B0_B3) | DR6_BS);
        let dr7 = self.vmcb.read_u64(DR7);
        self.vmcb.write_u64(DR7, dr7 & !DR7_GD);
        self.dirty |= CLEAN_DRX;
        self.inject_exception(DB_VECTOR, None);
    }

    fn clear_interrupt_shadow(&mut self) {
        let shadow = self.vmcb.read_u64(INTERRUPT_SHADOW);
        if shadow & 1 != 0 {
            self.vmcb.write_u64(INTERRUPT_SHADOW, shadow & !1);
        }
    }

    fn inject_page_fault(&mut self, address: u64, error_code: u32) {
        if self.vmcb.read_u64(EVENT_INJ) & (1 << 31) != 0 {
            return;
        }
        self.vmcb.write_u64(CR2, address);
        self.dirty |= CLEAN_SEG_DT_CR2;
        self.inject_exception(PF_VECTOR, Some(error_code));
    }

    fn set_xcr0(&mut self, xcr0: u64) {
        self.guest_xcr0 = xcr0;
    }

    fn xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    fn guest_pat(&self) -> u64 {
        self.vmcb.read_u64(G_PAT)
    }

    fn set_guest_pat(&mut self, value: u64) {
        self.vmcb.write_u64(G_PAT, value);
        self.dirty |= CLEAN_NP;
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
        self.regs.rflags & (1 << 9) != 0 && !self.in_interrupt_shadow() && !self.event_pending()
    }

    fn inject_nmi(&mut self) -> bool {
        if self.nmi_blocked || self.vmcb.read_u64(EVENT_INJ) & (1 << 31) != 0 {
            return false;
        }
        // Type 2: NMI, vector 2.
        self.vmcb.write_u64(EVENT_INJ, 2 | (2 << 8) | (1 << 31));
        self.nmi_blocked = true;
        // The handler's IRET exits, so the blocking can end after it.
        let intercepts = self.vmcb.read_u32(INTERCEPT_MISC1);
        self.vmcb.write_u32(INTERCEPT_MISC1, intercepts | INTERCEPT_IRET);
        self.dirty |= CLEAN_INTERCEPTS;
        true
    }

    fn iret_intercepted(&mut self) {
        let intercepts = self.vmcb.read_u32(INTERCEPT_MISC1);
        self.vmcb.write_u32(INTERCEPT_MISC1, intercepts & !INTERCEPT_IRET);
        self.dirty |= CLEAN_INTERCEPTS;
        self.iret_rip = Some(self.regs.rip);
    }

    fn in_interrupt_shadow(&self) -> bool {
        self.vmcb.read_u64(INTERRUPT_SHADOW) & 1 != 0
    }

    fn event_pending(&self) -> bool {
        self.vmcb.read_u64(EVENT_INJ) & (1 << 31) != 0 || self.virq_vector.is_some()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        if !self.caps.inject_via_virq {
            // Type 0: external interrupt.
            self.vmcb.write_u64(EVENT_INJ, u64::from(vector) | (1 << 31));
            return;
        }
        // Under QEMU's TCG: through the virtual interrupt (V_IRQ with
        // V_INTR_VECTOR and V_IGN_TPR; the LAPIC model has applied the
        // priority rules), which the CPU delivers once the guest can take
        // it, as it would a physical INTR. QEMU leaves an EVENTINJ'd vector
        // behind as a pending exception (helper_vmrun sets exception_index
        // and delivers directly) and delivers it a second time, ignoring
        // IF, at the next exit request: see ARCHITECTURE.md, "Two host CPUs
        // under QEMU TCG". Its V_IRQ path has no such leftover.
        let mut vintr = self.vmcb.read_u64(VINTR);
        vintr &= !(VINTR_VECTOR_MASK | VINTR_IRQ_BITS);
        vintr |= VINTR_IRQ_BITS | (u64::from(vector) << 32);
        self.vmcb.write_u64(VINTR, vintr);
        let intercepts = self.vmcb.read_u32(INTERCEPT_MISC1) & !INTERCEPT_VINTR;
        self.vmcb.write_u32(INTERCEPT_MISC1, intercepts);
        self.virq_vector = Some(vector);
        self.dirty |= CLEAN_INTERCEPTS | CLEAN_TPR;
    }

    fn request_interrupt_window(&mut self, on: bool) {
        if self.virq_vector.is_some() {
            // An interrupt is already waiting in V_IRQ; it is delivered as
            // soon as the guest can take it, which is what the window is for.
            return;
        }
        let mut intercepts = self.vmcb.read_u32(INTERCEPT_MISC1);
        let mut vintr = self.vmcb.read_u64(VINTR);
        if !on && intercepts & INTERCEPT_VINTR == 0 && vintr & VINTR_IRQ_BITS == 0 {
            // Already closed: keep the VMCB's clean bits.
            return;
        }
        if on {
            intercepts |= INTERCEPT_VINTR;
            // A virtual interrupt request with V_IGN_TPR: the CPU exits (VINTR
            // intercept) once the guest could take it.
            vintr = (vintr & !VINTR_VECTOR_MASK) | VINTR_IRQ_BITS;
        } else {
            intercepts &= !INTERCEPT_VINTR;
            vintr &= !VINTR_IRQ_BITS;
        }
        self.vmcb.write_u32(INTERCEPT_MISC1, intercepts);
        self.vmcb.write_u64(VINTR, vintr);
        self.dirty |= CLEAN_INTERCEPTS | CLEAN_TPR;
    }

    fn cr8(&self) -> u8 {
        (self.vmcb.read_u64(VINTR) & VINTR_TPR) as u8
    }

    fn set_cr8(&mut self, cr8: u8) {
        let vintr = self.vmcb.read_u64(VINTR);
        let new = (vintr & !VINTR_TPR) | (u64::from(cr8) & VINTR_TPR);
        if new != vintr {
            self.vmcb.write_u64(VINTR, new);
            self.dirty |= CLEAN_TPR;
        }
    }

    fn intercept_cr8_writes(&mut self, on: bool) {
        let old = self.vmcb.read_u32(INTERCEPT_CR);
        let new = if on { old | INTERCEPT_CR8_WRITE } else { old & !INTERCEPT_CR8_WRITE };
        if new != old {
            self.vmcb.write_u32(INTERCEPT_CR, new);
            self.dirty |= CLEAN_INTERCEPTS;
        }
    }

    fn paging_state(&self) -> crate::virt::PagingState {
        crate::virt::PagingState {
            cr0: self.vmcb.read_u64(CR0),
            cr3: self.vmcb.read_u64(CR3),
            cr4: self.vmcb.read_u64(CR4),
            efer: self.guest_efer,
        }
    }

    fn describe_state(&self) -> alloc::string::String {
        let idtr = self.vmcb.segment(IDTR);
        let tr = self.vmcb.segment(TR);
        alloc::format!(
            "rsp {:#x} rflags {:#x} cs {:#x} cpl {} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x} tr {:#x} base {:#x} exitintinfo {:#x} event_inj {:#x} vintr {:#x} shadow {} virq {:?}",
            self.regs.rsp,
            self.regs.rflags,
            self.vmcb.segment(CS).selector,
            self.vmcb.read_u8(CPL),
            self.vmcb.read_u64(CR0),
            self.vmcb.read_u64(CR2),
            self.vmcb.read_u64(CR3),
            self.vmcb.read_u64(CR4),
            self.vmcb.read_u64(EFER),
            idtr.base,
            idtr.limit,
            tr.selector,
            tr.base,
            self.vmcb.read_u64(EXIT_INT_INFO),
            self.vmcb.read_u64(EVENT_INJ),
            self.vmcb.read_u64(VINTR),
            self.vmcb.read_u64(INTERRUPT_SHADOW) & 1,
            self.virq_vector,
        )
    }

    fn code_segment(&self) -> Segment {
        self.vmcb.segment(CS)
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        if self.vmcb.read_u64(TSC_OFFSET) != offset {
            self.vmcb.write_u64(TSC_OFFSET, offset);
            self.dirty |= CLEAN_INTERCEPTS;
        }
    }

    fn segment(&self, index: u8) -> Segment {
        // ES, CS, SS, DS, FS, GS are consecutive 16-byte VMCB entries.
        self.vmcb.segment(ES + 0x10 * usize::from(index.min(5)))
    }

    fn set_segment(&mut self, index: u8, seg: Segment) {
        let index = index.min(5);
        self.vmcb.set_segment(ES + 0x10 * usize::from(index), seg);
        if index == 2 {
            // The VMCB's CPL is SS's DPL (APM vol. 2, 15.5.1).
            self.vmcb.write_u8(CPL, ((seg.attrib >> 5) & 3) as u8);
        }
        self.dirty |= CLEAN_SEG_DT_CR2;
    }

    fn system_segments(&self) -> crate::virt::SystemSegments {
        crate::virt::SystemSegments {
            ldtr: self.vmcb.segment(LDTR),
            tr: self.vmcb.segment(TR),
            gdtr: self.vmcb.segment(GDTR),
        }
    }

    fn set_ldtr(&mut self, seg: Segment) {
        self.vmcb.set_segment(LDTR, seg);
        self.dirty |= CLEAN_SEG_DT_CR2;
    }

    fn set_tr(&mut self, seg: Segment) {
        self.vmcb.set_segment(TR, seg);
        self.dirty |= CLEAN_SEG_DT_CR2;
    }

    fn set_cr3(&mut self, cr3: u64) {
        self.vmcb.write_u64(CR3, cr3);
        self.dirty |= CLEAN_CRX;
        self.flush_tlb = true;
    }

    fn exit_instruction_bytes(&self) -> Option<([u8; 15], usize)> {
        // The CPU fills the bytes in for nested page faults (and #PF
        // intercepts, which Ferrite does not use) only; after any other
        // exit they are a stale copy.
        if !self.caps.decode_assists || self.vmcb.read_u64(EXIT_CODE) != EXIT_NPF {
            return None;
        }
        let n = usize::from(self.vmcb.read_u8(INSN_FETCHED)).min(15);
        if n == 0 {
            return None;
        }
        let mut bytes = [0u8; 15];
        for (i, b) in bytes.iter_mut().enumerate().take(n) {
            *b = self.vmcb.read_u8(INSN_BYTES + i);
        }
        Some((bytes, n))
    }
}

/// Loads a vCPU's DR0-3. They only hold breakpoint addresses, which take
/// effect only where DR7 enables them, and the host's DR7 (restored by
/// #VMEXIT) enables none.
fn load_debug_regs(dr: &[u64; 4]) {
    Dr0::write(dr[0]);
    Dr1::write(dr[1]);
    Dr2::write(dr[2]);
    Dr3::write(dr[3]);
}

fn read_debug_regs() -> [u64; 4] {
    [Dr0::read(), Dr1::read(), Dr2::read(), Dr3::read()]
}

/// Whether an EXITINTINFO value names an event that must be injected again.
/// Software interrupts (INTn, type 4) and the trap-like #BP/#OF raised by
/// INT3/INTO (type 3, vectors 3 and 4) are not: RIP still points at the
/// instruction, which raises them again when it runs.
fn must_reinject(exit_int_info: u64) -> bool {
    const VALID: u64 = 1 << 31;
    const TYPE_EXCEPTION: u64 = 3;
    const TYPE_SOFT_INT: u64 = 4;
    if exit_int_info & VALID == 0 {
        return false;
    }
    let kind = (exit_int_info >> 8) & 7;
    let vector = exit_int_info & 0xFF;
    !(kind == TYPE_SOFT_INT || (kind == TYPE_EXCEPTION && (vector == 3 || vector == 4)))
}

fn xsetbv(value: u64) {
    // SAFETY: callers pass either the host XCR0 (set up by `fpu::init_cpu`) or
    // a guest value validated by the XSETBV exit handler against the host's
    // supported set, with x87 set.
    unsafe { XCr0::write_raw(value) };
}
