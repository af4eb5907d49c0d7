//! The vCPU run loop: enter the guest, decode why it stopped, handle it.
//! Backend-independent: it works on any `VcpuOps`.

use crate::virt::{GuestRegs, VcpuOps, VmExit};
use alloc::format;
use alloc::string::String;

const MSR_EFER: u32 = 0xC000_0080;
const GP_VECTOR: u8 = 13;

/// The hypervisor CPUID leaves' signature ("FerriteHV" padded).
pub const HV_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Ferr"),
    u32::from_le_bytes(*b"iteH"),
    u32::from_le_bytes(*b"V\0\0\0"),
];

/// What a domain's platform does with the exits the run loop does not
/// handle itself (port I/O, MMIO, platform MSRs, halts, hypercalls,
/// interrupts).
pub trait Platform {
    fn io_in(&mut self, port: u16, size: u8) -> u32;
    fn io_out(&mut self, port: u16, size: u8, value: u32);
    /// The guest executed HLT. Return false to stop running it.
    fn halt(&mut self) -> bool;
    /// A hypercall; `Some` ends the run with that result.
    fn hypercall(&mut self, regs: &mut GuestRegs) -> Option<u64>;
    /// An MSR the run loop does not know; `None` means #GP for the guest.
    fn msr_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// Returns false when the MSR or value is not accepted (#GP).
    fn msr_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// A nested page fault outside guest RAM: emulate the access if it hits
    /// a device. `None` means no device there (the domain crashes).
    fn mmio(&mut self, _gpa: u64) -> Option<MmioHandled> {
        None
    }
    /// The highest-priority interrupt waiting for the guest, if any.
    fn pending_interrupt(&mut self) -> Option<u8> {
        None
    }
    /// The run loop injected `vector`.
    fn interrupt_injected(&mut self, _vector: u8) {}
    /// Checked after every exit: stop running this vCPU for now (its time
    /// slice is over, or its domain is shutting down).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// How an MMIO access was resolved by the platform.
pub enum MmioHandled {
    /// Done; resume at this RIP.
    Resume(u64),
    /// The domain must crash, for this reason.
    Crash(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// A hypercall ended the run with this value.
    Finished(u64),
    /// The guest halted and the platform chose to stop.
    Halted,
    /// The guest did something fatal; the reason is for the log.
    Crashed(String),
}

/// The CPUID values a guest sees: the host's, with virtualization hidden,
/// the hypervisor bit set and Ferrite's leaves at 0x4000_0000.
pub fn guest_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0001, HV_SIGNATURE[0], HV_SIGNATURE[1], HV_SIGNATURE[2]],
        0x4000_0001 => [0, 0, 0, 0],
        _ => {
            let r = crate::arch::cpu::cpuid(leaf, subleaf);
            let (mut a, b, mut c, d) = (r.eax, r.ebx, r.ecx, r.edx);
            match leaf {
                // Hide VMX (ECX bit 5), set "running under a hypervisor" (bit 31).
                1 => c = (c & !(1 << 5)) | (1 << 31),
                // Hide SVM.
                0x8000_0001 => c &= !(1 << 2),
                0x8000_000A => {
                    a = 0;
                    return [a, 0, 0, 0];
                }
                _ => {}
            }
            [a, b, c, d]
        }
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// Runs `vcpu` until it finishes, crashes, or `max_exits` exits have been
/// handled (a guard for tests; 0 means no limit). Returns the outcome and
/// the number of exits.
pub fn run_loop<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, max_exits: u64) -> (RunOutcome, u64) {
    let mut exits = 0u64;
    loop {
        if max_exits != 0 && exits >= max_exits {
            return (RunOutcome::Crashed(format!("did not finish within {} exits", max_exits)), exits);
        }
        if let Some(vector) = platform.pending_interrupt() {
            if vcpu.interruptible() {
                vcpu.inject_interrupt(vector);
                platform.interrupt_injected(vector);
                vcpu.request_interrupt_window(false);
            } else {
                vcpu.request_interrupt_window(true);
            }
        }
        let exit = vcpu.run();
        exits += 1;
        match exit {
            VmExit::Io { port, size, write, string, rep, next_rip } => {
                if string || rep {
                    return (RunOutcome::Crashed(format!("string I/O on port {:#x} is not supported yet", port)), exits);
                }
                let regs = vcpu.regs_mut();
                if write {
                    platform.io_out(port, size, (regs.rax & size_mask(size)) as u32);
                } else {
                    let value = u64::from(platform.io_in(port, size)) & size_mask(size);
                    // 32-bit results zero-extend into RAX; 8/16-bit ones merge.
                    regs.rax = if size == 4 { value } else { (regs.rax & !size_mask(size)) | value };
                }
                vcpu.regs_mut().rip = next_rip;
            }
            VmExit::Cpuid { next_rip } => {
                let regs = vcpu.regs_mut();
                let [a, b, c, d] = guest_cpuid(regs.rax as u32, regs.rcx as u32);
                regs.rax = a.into();
                regs.rbx = b.into();
                regs.rcx = c.into();
                regs.rdx = d.into();
                regs.rip = next_rip;
            }
            VmExit::MsrRead { msr, next_rip } => match msr {
                MSR_EFER => {
                    let efer = vcpu.efer();
                    let regs = vcpu.regs_mut();
                    regs.rax = efer & 0xFFFF_FFFF;
                    regs.rdx = efer >> 32;
                    regs.rip = next_rip;
                }
                _ => match platform.msr_read(msr) {
                    Some(value) => {
                        let regs = vcpu.regs_mut();
                        regs.rax = value & 0xFFFF_FFFF;
                        regs.rdx = value >> 32;
                        regs.rip = next_rip;
                    }
                    None => vcpu.inject_exception(GP_VECTOR, Some(0)),
                },
            },
            VmExit::MsrWrite { msr, value, next_rip } => match msr {
                MSR_EFER => {
                    // SCE, LME, LMA, NXE are the bits a guest may set.
                    const ALLOWED: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);
                    if value & !ALLOWED != 0 {
                        vcpu.inject_exception(GP_VECTOR, Some(0));
                    } else {
                        vcpu.set_efer(value);
                        vcpu.regs_mut().rip = next_rip;
                    }
                }
                _ => {
                    if platform.msr_write(msr, value) {
                        vcpu.regs_mut().rip = next_rip;
                    } else {
                        vcpu.inject_exception(GP_VECTOR, Some(0));
                    }
                }
            },
            VmExit::Xsetbv { next_rip } => {
                let regs = *vcpu.regs();
                let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
                let host = crate::arch::fpu::host_xcr0();
                // XCR0 must include x87, only supported bits, AVX only with SSE.
                let valid = regs.rcx == 0
                    && value & 1 != 0
                    && value & !host == 0
                    && (value & 4 == 0 || value & 2 != 0);
                if valid {
                    vcpu.set_xcr0(value);
                    vcpu.regs_mut().rip = next_rip;
                } else {
                    vcpu.inject_exception(GP_VECTOR, Some(0));
                }
            }
            VmExit::Hlt { next_rip } => {
                vcpu.regs_mut().rip = next_rip;
                if !platform.halt() {
                    return (RunOutcome::Halted, exits);
                }
            }
            VmExit::Hypercall { next_rip } => {
                vcpu.regs_mut().rip = next_rip;
                if let Some(result) = platform.hypercall(vcpu.regs_mut()) {
                    return (RunOutcome::Finished(result), exits);
                }
            }
            VmExit::ExternalInterrupt | VmExit::InterruptWindow => {}
            VmExit::NestedPageFault { gpa, write, .. } => {
                match platform.mmio(gpa) {
                    Some(MmioHandled::Resume(rip)) => {
                        vcpu.regs_mut().rip = rip;
                        if platform.should_stop() {
                            return (RunOutcome::Halted, exits);
                        }
                        continue;
                    }
                    Some(MmioHandled::Crash(why)) => return (RunOutcome::Crashed(why), exits),
                    None => {}
                }
                return (
                    RunOutcome::Crashed(format!(
                        "{} of unmapped guest-physical address {:#x} at rip {:#x}",
                        if write { "write" } else { "read" },
                        gpa,
                        vcpu.regs().rip
                    )),
                    exits,
                )
            }
            VmExit::Shutdown => {
                return (RunOutcome::Crashed(format!("triple fault (shutdown) at rip {:#x}", vcpu.regs().rip)), exits)
            }
            VmExit::InvalidState => {
                return (RunOutcome::Crashed(String::from("the CPU rejected the guest state (VMEXIT_INVALID)")), exits)
            }
            VmExit::Other { code, info1, info2 } => {
                return (
                    RunOutcome::Crashed(format!(
                        "unhandled exit {:#x} (info {:#x}, {:#x}) at rip {:#x}",
                        code,
                        info1,
                        info2,
                        vcpu.regs().rip
                    )),
                    exits,
                )
            }
        }
        if platform.should_stop() {
            return (RunOutcome::Halted, exits);
        }
    }
}
