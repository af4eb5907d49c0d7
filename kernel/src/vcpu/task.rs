//! Hardware task switches the CPU left to the hypervisor (VMX exits on
//! every one: a CALL, JMP or IRET to a TSS, an event through a task gate;
//! SVM switches tasks itself). The switch is `ferrite_x86::task::switch`
//! on the vCPU's state and the guest's memory; this file moves that state
//! between the vCPU and the pure code and raises what it reports: a fault
//! before the commit point in the old task (an event being delivered then
//! follows the double-fault rules), one after it in the new task. A switch
//! it does not emulate (a 16-bit TSS) crashes the domain with that reason.

use super::{GuestMemory, Platform};
use crate::virt::{EventKind, Segment, TaskGateEvent, VcpuOps};
use alloc::format;
use alloc::string::String;
use ferrite_x86::task::{self, CpuState, Error, Fault, Request, SegmentReg, Source, TableReg};
use ferrite_x86::walk::{CR0_PG, CR4_PAE, EFER_LMA};

const DF_VECTOR: u8 = 8;
const PF_VECTOR: u8 = 14;

/// Guest RAM as the pure code reads and writes it.
struct Ram<'a>(&'a GuestMemory);

impl ferrite_x86::walk::GuestPhysRead for Ram<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(gpa, buf).map_err(|_| ())
    }
}

impl task::GuestPhys for Ram<'_> {
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        self.0.write(gpa, data).map_err(|_| ())
    }
}

fn to_reg(s: Segment) -> SegmentReg {
    SegmentReg { selector: s.selector, base: s.base, limit: s.limit, attrib: s.attrib }
}

fn to_segment(s: SegmentReg) -> Segment {
    Segment { selector: s.selector, base: s.base, limit: s.limit, attrib: s.attrib }
}

/// Emulates the task switch of a `VmExit::TaskSwitch`. Err: the domain
/// cannot go on (the reason, for its crash report).
pub(super) fn task_switch<V: VcpuOps>(
    vcpu: &mut V,
    platform: &mut dyn Platform,
    selector: u16,
    source: Source,
    event: Option<TaskGateEvent>,
    instruction_len: u8,
) -> Result<(), String> {
    let mem = platform.guest_memory().ok_or("a task switch without guest memory")?;
    let regs = *vcpu.regs();
    let ps = vcpu.paging_state();
    let sys = vcpu.system_segments();
    let before = CpuState {
        gprs: [regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi].map(|r| r as u32),
        eip: regs.rip as u32,
        eflags: regs.rflags as u32,
        segs: core::array::from_fn(|i| to_reg(vcpu.segment(i as u8))),
        ldtr: to_reg(sys.ldtr),
        tr: to_reg(sys.tr),
        gdtr: TableReg { base: sys.gdtr.base, limit: sys.gdtr.limit },
        cr0: ps.cr0,
        cr3: ps.cr3,
        cr4: ps.cr4,
        efer: ps.efer,
        max_phys_bits: 48,
    };
    // The old task resumes after the instruction that switched (CALL, JMP,
    // IRET, INT n/INT3/INTO/INT1), or at the instruction an interrupt,
    // NMI or exception stopped.
    let after_instruction = source != Source::Gate || event.is_some_and(|e| e.kind.raised_by_instruction());
    let return_eip = if after_instruction { regs.rip.wrapping_add(u64::from(instruction_len)) } else { regs.rip } as u32;
    let hardware_exception = event.filter(|e| e.kind == EventKind::HardwareException);
    let req = Request {
        selector,
        source,
        return_eip,
        error_code: hardware_exception.and_then(|e| e.error_code),
        external: event.is_some_and(|e| !matches!(e.kind, EventKind::SoftwareInterrupt | EventKind::SoftwareException)),
        // VMX checked the privileges of a CALL or JMP before it exited
        // (SDM vol. 3C 25.4.2), through a task gate without the TSS's DPL.
        check_privilege: false,
    };
    let mut st = before;
    let result = task::switch(&mut Ram(mem), &mut st, &req);
    let fault = match result {
        Ok(()) => None,
        Err(Error::Fault { fault, committed: true }) => Some(fault),
        Err(Error::Fault { fault, committed: false }) => {
            // The old task takes it, at the instruction or event that
            // switched; nothing changed.
            return raise(vcpu, combine(hardware_exception, fault)?);
        }
        Err(Error::Unsupported(what)) => return Err(format!("{} (TSS selector {:#x}) at rip {:#x}", what, selector, regs.rip)),
        Err(Error::Memory { gpa }) => {
            return Err(format!(
                "task switch to TSS selector {:#x} at rip {:#x}: guest-physical {:#x} is not RAM",
                selector, regs.rip, gpa
            ))
        }
    };
    commit(vcpu, platform, &before, &st);
    match fault {
        Some(fault) => raise(vcpu, fault),
        None => Ok(()),
    }
}

/// Writes the new task's state into the vCPU.
fn commit<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, before: &CpuState, st: &CpuState) {
    let r = vcpu.regs_mut();
    let g = st.gprs.map(u64::from);
    (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
    r.rip = u64::from(st.eip);
    r.rflags = u64::from(st.eflags);
    for (i, s) in st.segs.iter().enumerate() {
        if *s != before.segs[i] {
            vcpu.set_segment(i as u8, to_segment(*s));
        }
    }
    vcpu.set_ldtr(to_segment(st.ldtr));
    vcpu.set_tr(to_segment(st.tr));
    if st.cr3 != before.cr3 {
        vcpu.set_cr3(st.cr3);
        load_pae_pdptes(vcpu, platform);
    }
    if st.cr0 != before.cr0 {
        vcpu.set_cr0(st.cr0);
    }
}

/// PAE paging (not long mode) with a backend that keeps the PDPTEs: the
/// new CR3's four entries, as the CPU reads them at a CR3 load. Entries
/// it could not load (a reserved bit, or not RAM) stay not present: the
/// new task then takes page faults.
fn load_pae_pdptes<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform) {
    let ps = vcpu.paging_state();
    if !vcpu.keeps_pae_pdptes() || ps.cr0 & CR0_PG == 0 || ps.cr4 & CR4_PAE == 0 || ps.efer & EFER_LMA != 0 {
        return;
    }
    let pdptes = super::cr::pae_pdptes_at(vcpu, platform, ps.cr3).unwrap_or([0; 4]);
    vcpu.set_pae_pdptes(pdptes);
}

/// A fault while an exception was being delivered through a task gate
/// (SDM vol. 3A table 6-5): contributory on contributory, or a #PF or
/// contributory one on a #PF, is a #DF; anything on a #DF is a triple
/// fault.
fn combine(first: Option<TaskGateEvent>, second: Fault) -> Result<Fault, String> {
    let Some(first) = first else { return Ok(second) };
    let contributory = |v: u8| matches!(v, 0 | 10..=13);
    let second_vector = match second {
        Fault::Exception { vector, .. } => vector,
        Fault::PageFault(_) => PF_VECTOR,
    };
    if first.vector == DF_VECTOR {
        return Err(format!("triple fault: a fault ({}) delivering a double fault through a task gate", second_vector));
    }
    let double = (contributory(first.vector) && contributory(second_vector))
        || (first.vector == PF_VECTOR && (contributory(second_vector) || second_vector == PF_VECTOR));
    Ok(if double { Fault::Exception { vector: DF_VECTOR, error_code: Some(0) } } else { second })
}

fn raise<V: VcpuOps>(vcpu: &mut V, fault: Fault) -> Result<(), String> {
    match fault {
        Fault::Exception { vector, error_code } => vcpu.inject_exception(vector, error_code),
        Fault::PageFault(pf) => vcpu.inject_page_fault(pf.address, pf.error_code),
    }
    Ok(())
}
