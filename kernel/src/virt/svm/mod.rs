//! AMD SVM backend: detection, per-CPU enablement, and the VMCB-based vCPU.

pub mod vmcb;

use self::vmcb::*;
use super::{Capabilities, DetectError, GuestRegs, Segment, VcpuOps, VmExit};
use crate::arch::cpu::{self, msr};
use crate::arch::fpu::{self, FpuState};
use crate::mm;

const CPUID_SVM_FEATURES: u32 = 0x8000_000A;

/// Checks that this CPU can run SVM guests with nested paging and reports
/// which optional features it has.
pub fn detect() -> Result<Capabilities, DetectError> {
    match &cpu::vendor() {
        b"AuthenticAMD" | b"HygonGenuine" => {}
        b"GenuineIntel" => {
            return Err(if cpu::cpuid(1, 0).ecx & (1 << 5) != 0 {
                DetectError::VmxNotImplemented
            } else {
                DetectError::VmxAbsent
            })
        }
        _ => return Err(DetectError::UnknownVendor),
    }
    if cpu::max_extended_leaf() < CPUID_SVM_FEATURES || cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        return Err(DetectError::SvmAbsent);
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    if unsafe { cpu::rdmsr(msr::VM_CR) } & (1 << 4) != 0 {
        return Err(DetectError::SvmDisabledByFirmware);
    }
    let leaf = cpu::cpuid(CPUID_SVM_FEATURES, 0);
    let caps = Capabilities {
        name: "svm",
        nested_paging: leaf.edx & (1 << 0) != 0,
        next_rip: leaf.edx & (1 << 3) != 0,
        state_caching: leaf.edx & (1 << 5) != 0,
        flush_by_asid: leaf.edx & (1 << 6) != 0,
        decode_assists: leaf.edx & (1 << 7) != 0,
        pause_filter: leaf.edx & (1 << 10) != 0,
        asids: leaf.ebx,
    };
    if !caps.nested_paging {
        return Err(DetectError::NoNestedPaging);
    }
    Ok(caps)
}

/// Per-CPU SVM state: the host save area VMRUN uses and a VMCB-format page
/// for the host state VMSAVE/VMLOAD move (FS, GS, TR, syscall MSRs).
pub struct SvmCpu {
    host_vmcb_pa: u64,
    /// The guest VMCB this CPU ran last (decides TLB flushes).
    last_vmcb: u64,
}

/// Turns SVM on for the calling CPU.
pub fn enable_cpu() -> Result<SvmCpu, DetectError> {
    detect()?;
    let hsave = mm::alloc_zeroed_page().expect("out of memory for the SVM host save area");
    let host_vmcb = mm::alloc_zeroed_page().expect("out of memory for the host VMCB");
    // SAFETY: detect() confirmed SVM is present and not disabled, so setting
    // EFER.SVME and VM_HSAVE_PA (to a page owned by this CPU for its
    // lifetime) is valid.
    unsafe {
        cpu::wrmsr(msr::EFER, cpu::rdmsr(msr::EFER) | cpu::EFER_SVME);
        cpu::wrmsr(msr::VM_HSAVE_PA, hsave);
    }
    Ok(SvmCpu { host_vmcb_pa: host_vmcb, last_vmcb: 0 })
}

core::arch::global_asm!(
    r#"
    .section .text.svm_run, "ax"
    .global svm_run
/* svm_run(guest_vmcb_pa: rdi, regs: rsi, host_vmcb_pa: rdx)
 * Loads the guest GPRs from `regs` (rax/rsp live in the VMCB), runs the
 * guest until #VMEXIT, stores the guest GPRs back. VMSAVE/VMLOAD move the
 * state VMRUN does not switch (FS/GS/TR/LDTR bases, syscall MSRs). */
svm_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rsi              /* regs */
    pushq %rdx              /* host vmcb */
    pushq %rdi              /* guest vmcb */
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
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    "#,
    options(att_syntax)
);

extern "C" {
    fn svm_run(guest_vmcb_pa: u64, regs: *mut GuestRegs, host_vmcb_pa: u64);
}

/// One virtual CPU under SVM.
pub struct SvmVcpu {
    vmcb: Vmcb,
    regs: GuestRegs,
    caps: Capabilities,
    guest_fpu: FpuState,
    host_fpu: FpuState,
    guest_xcr0: u64,
    /// VMCB areas changed since the last VMRUN (clean-bit numbering); with
    /// VMCB clean bits the CPU reloads only these.
    dirty: u32,
    /// The CPU this vCPU last ran on (`usize::MAX`: never ran). On another
    /// CPU the cached VMCB state and TLB entries must not be trusted.
    last_cpu: usize,
}

/// VMCB clean bits (APM vol. 2, 15.15.3) this code tracks.
const CLEAN_ALL: u32 = 0xFFF;
const CLEAN_INTERCEPTS: u32 = 1 << 0;
const CLEAN_TPR: u32 = 1 << 3;
const CLEAN_CRX: u32 = 1 << 5;
const CLEAN_SEG_DT_CR2: u32 = (1 << 7) | (1 << 8) | (1 << 9);

impl SvmVcpu {
    /// Creates a vCPU whose guest-physical memory is described by the
    /// nested page table rooted at `npt_root`. `iopm_pa`/`msrpm_pa` are the
    /// permission maps (all ports and MSRs intercepted unless cleared).
    pub fn new(caps: Capabilities, npt_root: u64, asid: u32, iopm_pa: u64, msrpm_pa: u64) -> Self {
        let (page, pa) = mm::alloc_zeroed_page_ref().expect("out of memory for a VMCB");
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
            guest_fpu: FpuState::new(),
            host_fpu: FpuState::new(),
            guest_xcr0: 1,
            dirty: CLEAN_ALL,
            last_cpu: usize::MAX,
        };
        vcpu.reset_real_mode(0xF000, 0xFFF0);
        vcpu
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

    fn decode_exit(&self) -> VmExit {
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
                segment: ((info1 >> 10) & 7) as u8,
                next_rip: info2,
            },
            EXIT_CPUID => VmExit::Cpuid { next_rip: self.next_rip(2) },
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
            EXIT_NPF => VmExit::NestedPageFault {
                gpa: info2,
                present: info1 & 1 != 0,
                write: info1 & 2 != 0,
                exec: info1 & 0x10 != 0,
            },
            EXIT_INTR | EXIT_NMI => VmExit::ExternalInterrupt,
            EXIT_VINTR => VmExit::InterruptWindow,
            EXIT_SHUTDOWN => VmExit::Shutdown,
            EXIT_INVALID => VmExit::InvalidState,
            _ => VmExit::Other { code, info1, info2 },
        }
    }

}

impl VcpuOps for SvmVcpu {
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
        let pc = crate::percpu::current();
        let cpu = pc.index;
        let Some(svm_cpu) = pc.svm.as_mut() else {
            return VmExit::InvalidState;
        };
        if cpu != self.last_cpu || svm_cpu.last_vmcb != self.vmcb.pa() {
            self.vmcb.write_u8(TLB_CONTROL, if self.caps.flush_by_asid { 3 } else { 1 });
            self.dirty = CLEAN_ALL;
            self.last_cpu = cpu;
            svm_cpu.last_vmcb = self.vmcb.pa();
        } else {
            self.vmcb.write_u8(TLB_CONTROL, 0);
        }
        let host_vmcb_pa = svm_cpu.host_vmcb_pa;
        if self.caps.state_caching {
            self.vmcb.write_u32(CLEAN_BITS, !self.dirty & CLEAN_ALL);
        }
        self.dirty = 0;
        self.host_fpu.save();
        self.guest_fpu.restore();
        let use_xsave = fpu::uses_xsave();
        if use_xsave {
            xsetbv(self.guest_xcr0);
        }
        // SAFETY: the VMCB is a valid, owned page with a consistent guest
        // state (set up by `new`/`reset_real_mode` and only changed through
        // checked accessors); the host VMCB and save area belong to the
        // current CPU; `regs` outlives the call.
        unsafe { svm_run(self.vmcb.pa(), &mut self.regs, host_vmcb_pa) };
        if use_xsave {
            xsetbv(fpu::host_xcr0());
        }
        self.guest_fpu.save();
        self.host_fpu.restore();
        self.regs.rax = self.vmcb.read_u64(RAX);
        self.regs.rsp = self.vmcb.read_u64(RSP);
        self.regs.rip = self.vmcb.read_u64(RIP);
        self.regs.rflags = self.vmcb.read_u64(RFLAGS);
        self.vmcb.write_u64(EVENT_INJ, 0);
        self.decode_exit()
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16) {
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
        self.vmcb.write_u64(CR0, 0x10); // ET
        self.vmcb.write_u64(CR3, 0);
        self.vmcb.write_u64(CR4, 0);
        self.vmcb.write_u64(EFER, cpu::EFER_SVME);
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
        self.vmcb.read_u64(EFER) & !cpu::EFER_SVME
    }

    fn set_efer(&mut self, efer: u64) {
        // The guest never sees SVME, but VMRUN requires it in the guest EFER.
        self.vmcb.write_u64(EFER, efer | cpu::EFER_SVME);
        self.dirty |= CLEAN_CRX;
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let mut event = u64::from(vector) | (3 << 8) | (1 << 31);
        if let Some(code) = error_code {
            event |= (1 << 11) | (u64::from(code) << 32);
        }
        self.vmcb.write_u64(EVENT_INJ, event);
    }

    fn set_xcr0(&mut self, xcr0: u64) {
        self.guest_xcr0 = xcr0;
    }

    fn interruptible(&self) -> bool {
        self.regs.rflags & (1 << 9) != 0
            && self.vmcb.read_u64(INTERRUPT_SHADOW) & 1 == 0
            && self.vmcb.read_u64(EVENT_INJ) & (1 << 31) == 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        // Type 0: external interrupt.
        self.vmcb.write_u64(EVENT_INJ, u64::from(vector) | (1 << 31));
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let mut intercepts = self.vmcb.read_u32(INTERCEPT_MISC1);
        let mut vintr = self.vmcb.read_u64(VINTR);
        if on {
            intercepts |= INTERCEPT_VINTR;
            // A virtual interrupt request with V_IGN_TPR: the CPU exits (VINTR
            // intercept) once the guest could take it.
            vintr |= (1 << 8) | (1 << 20) | (0xF << 16);
        } else {
            intercepts &= !INTERCEPT_VINTR;
            vintr &= !((1 << 8) | (1 << 20) | (0xF << 16));
        }
        self.vmcb.write_u32(INTERCEPT_MISC1, intercepts);
        self.vmcb.write_u64(VINTR, vintr);
        self.dirty |= CLEAN_INTERCEPTS | CLEAN_TPR;
    }

    fn paging_state(&self) -> crate::virt::PagingState {
        crate::virt::PagingState {
            cr0: self.vmcb.read_u64(CR0),
            cr3: self.vmcb.read_u64(CR3),
            cr4: self.vmcb.read_u64(CR4),
            efer: self.vmcb.read_u64(EFER) & !cpu::EFER_SVME,
        }
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

    fn exit_instruction_bytes(&self) -> Option<([u8; 15], usize)> {
        if !self.caps.decode_assists {
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

fn xsetbv(value: u64) {
    // SAFETY: callers pass either the host XCR0 (set up by `fpu::init_cpu`) or
    // a guest value validated by the XSETBV exit handler against the host's
    // supported set, with x87 set.
    unsafe { core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack)) };
}
