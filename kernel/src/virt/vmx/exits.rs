//! Exits decoded: the VMCS's exit reason and qualification turned into
//! the generic `VmExit` (and task switches into `VmExit::TaskSwitch`).

use super::*;

impl VmxVcpu {
    pub(super) fn decode_exit(&mut self) -> VmExit {
        let e = self.exit;
        let basic = e.reason & 0xFFFF;
        if e.reason & (1 << 31) != 0 {
            // The entry itself failed after the checks of the controls;
            // the crash report names why (no log line: it says it all).
            self.state_check = Some(invalid::entry_failure(&self.config, basic, e.qualification));
            return VmExit::InvalidState;
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
            EXIT_INVALID_GUEST_STATE | EXIT_MSR_LOADING => {
                self.state_check = None;
                VmExit::InvalidState
            }
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
        VmExit::TaskSwitch { selector: e.qualification as u16, source, event, instruction_len: e.instruction_len.min(15) as u8 }
    }
}
