//! The vCPU run loop: enter the guest, decode why it stopped, handle it.
//! Backend-independent: it works on any `VcpuOps`.

use crate::mm::guest::GuestMemory;
use crate::virt::{GuestRegs, VcpuOps, VmExit};
use ferrite_x86::{CpuMode, MmioBus, PagingRegs, Regs};
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
    /// CPUID as this vCPU sees it.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        guest_cpuid(leaf, subleaf)
    }
    /// The guest's RAM, for fetching instructions to emulate.
    fn guest_memory(&self) -> Option<&GuestMemory> {
        None
    }
    /// Whether a device claims this guest-physical address (MMIO).
    fn is_mmio(&mut self, _gpa: u64) -> bool {
        false
    }
    fn mmio_read(&mut self, _gpa: u64, _size: u8) -> u64 {
        u64::MAX
    }
    fn mmio_write(&mut self, _gpa: u64, _size: u8, _value: u64) {}
    /// Called before every guest entry (advance timers, arm the host timer).
    fn before_entry(&mut self) {}
    /// Called after every exit (take pending host interrupts).
    fn after_exit(&mut self) {}
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
    guest_cpuid_for(leaf, subleaf, 0, 1)
}

/// CPUID for vCPU `vcpu` of a domain with `vcpus` vCPUs: the host's
/// features minus what guests must not see or Ferrite does not emulate,
/// and a topology of `vcpus` single-thread cores with APIC id = vCPU id.
pub fn guest_cpuid_for(leaf: u32, subleaf: u32, vcpu: u32, vcpus: u32) -> [u32; 4] {
    let [a, b, c, d] = filtered_cpuid(leaf, subleaf);
    match leaf {
        1 => {
            let b = (b & 0x0000_FFFF) | (vcpu << 24) | (vcpus.min(255) << 16);
            let d = if vcpus > 1 { d | (1 << 28) } else { d & !(1 << 28) };
            [a, b, c, d]
        }
        0x8000_0008 => [a, b, (c & !0xFF) | (vcpus.saturating_sub(1) & 0xFF), d],
        _ => [a, b, c, d],
    }
}

fn filtered_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0001, HV_SIGNATURE[0], HV_SIGNATURE[1], HV_SIGNATURE[2]],
        0x4000_0001 => [0, 0, 0, 0],
        _ => {
            let r = crate::arch::cpu::cpuid(leaf, subleaf);
            let (mut a, b, mut c, d) = (r.eax, r.ebx, r.ecx, r.edx);
            match leaf {
                1 => {
                    // ECX: hide MONITOR (3; MWAIT is not intercepted), VMX (5),
                    // SMX (6), EST (7), TM2 (8), PDCM (15), x2APIC (21: the
                    // LAPIC is offered in xAPIC mode); offer TSC-deadline (24,
                    // emulated); set "running under a hypervisor" (31).
                    c = (c & !((1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 15) | (1 << 21)))
                        | (1 << 24)
                        | (1 << 31);
                    // EDX: hide MCE (7), MTRR (12), MCA (14), ACPI (22), TM (29), PBE (31).
                    let d = r.edx & !((1 << 7) | (1 << 12) | (1 << 14) | (1 << 22) | (1 << 29) | (1 << 31));
                    return [a, b, c, d];
                }
                // Thermal/power management and performance monitoring: none.
                6 | 0xA => return [0, 0, 0, 0],
                // Hide SVM (2), extended APIC space (3), SKINIT (12), WDT (13),
                // topology extensions (22), core perf counters (23), MWAITX (29).
                0x8000_0001 => c &= !((1 << 2) | (1 << 3) | (1 << 12) | (1 << 13) | (1 << 22) | (1 << 23) | (1 << 29)),
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
        platform.before_entry();
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
        platform.after_exit();
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
                let [a, b, c, d] = platform.cpuid(regs.rax as u32, regs.rcx as u32);
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
            VmExit::NestedPageFault { gpa, write, .. } if platform.is_mmio(gpa) => {
                if let Err(why) = emulate_mmio(vcpu, platform, gpa) {
                    let _ = write;
                    return (RunOutcome::Crashed(why), exits);
                }
            }
            VmExit::NestedPageFault { gpa, write, .. } => {
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

impl ferrite_x86::walk::GuestPhysRead for GuestMemory {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.read(gpa, buf).map_err(|_| ())
    }
}

/// The MMIO access of one emulated instruction, at the faulting address.
struct Bus<'a> {
    platform: &'a mut dyn Platform,
    gpa: u64,
}

impl MmioBus for Bus<'_> {
    fn read(&mut self, size: u8) -> u64 {
        self.platform.mmio_read(self.gpa, size)
    }

    fn write(&mut self, size: u8, value: u64) {
        self.platform.mmio_write(self.gpa, size, value)
    }
}

fn to_x86(r: &GuestRegs) -> Regs {
    Regs {
        gprs: [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15],
    }
}

fn from_x86(x: &Regs, r: &mut GuestRegs) {
    let g = &x.gprs;
    (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
    (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
}

/// Emulates the instruction that faulted on device memory at `gpa`: fetch
/// it through the guest's page tables, decode it, do the access against the
/// device, write back registers and advance RIP. (TCG's SVM has no decode
/// assists, so the hypervisor always decodes.)
fn emulate_mmio<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, gpa: u64) -> Result<(), String> {
    let ps = vcpu.paging_state();
    let cs = vcpu.code_segment();
    let mode = CpuMode {
        paging: PagingRegs { cr0: ps.cr0, cr3: ps.cr3, cr4: ps.cr4, efer: ps.efer, max_phys_bits: 48 },
        cs_base: cs.base,
        cs_l: cs.attrib & (1 << 9) != 0,
        cs_db: cs.attrib & (1 << 10) != 0,
        cpl: ((cs.attrib >> 5) & 3) as u8,
    };
    let rip = vcpu.regs().rip;
    // With decode assists the CPU hands over the instruction bytes;
    // otherwise (QEMU's TCG) walk the guest's page tables to fetch them.
    let (bytes, len) = match vcpu.exit_instruction_bytes() {
        Some(fetched) => fetched,
        None => {
            let mem = platform.guest_memory().ok_or("no guest memory to fetch from")?;
            ferrite_x86::walk::fetch_instruction(mem, &mode, rip).map_err(|e| {
                format!("cannot fetch the instruction at rip {:#x} touching MMIO {:#x}: {:?}", rip, gpa, e)
            })?
        }
    };
    let op = ferrite_x86::decode_mmio(&bytes[..len], mode.code_mode())
        .map_err(|e| format!("cannot emulate the instruction {:02x?} at rip {:#x} on MMIO {:#x}: {:?}", &bytes[..len], rip, gpa, e))?;
    let mut regs = to_x86(vcpu.regs());
    let mut rflags = vcpu.regs().rflags;
    op.execute(&mut regs, &mut rflags, &mut Bus { platform, gpa })
        .map_err(|e| format!("MMIO instruction at rip {:#x} on {:#x} not supported: {:?}", rip, gpa, e))?;
    let r = vcpu.regs_mut();
    from_x86(&regs, r);
    r.rflags = rflags;
    r.rip = rip.wrapping_add(op.len as u64);
    Ok(())
}
