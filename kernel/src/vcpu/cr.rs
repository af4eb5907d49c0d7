//! Guest writes of CR0, CR3, CR4 and EFER, held to the architecture's rules
//! (`ferrite_x86::cr`) before they reach the VMCB: a write that a CPU
//! refuses with #GP gets #GP, so the next VMRUN never meets a state its
//! consistency checks reject.
//!
//! * CR0 (MOV, LMSW, CLTS) and CR4 writes exit and are emulated here; so
//!   do CR8 writes while the task priority holds an interrupt back.
//! * EFER is an MSR; WRMSR always exits.
//! * CR3 writes do not exit: an exit per guest context switch would cost
//!   far more than the one check needs. On hardware the CPU checks MOV CR3
//!   itself against its MAXPHYADDR, which is the guest's (CPUID 0x8000_0008
//!   is the host's), and raises the #GP in the guest. QEMU's TCG instead
//!   ends the guest with exit code -1 (VMEXIT_INVALID) at the MOV CR3;
//!   [`refused_mov_cr3`] recognises that case and raises the #GP.

use super::{cpu_mode, cpuid_state, current_instruction, to_x86, Platform, GP_VECTOR};
use crate::virt::VcpuOps;
use alloc::format;
use alloc::string::String;
use ferrite_x86::cr::{self, cr4 as cr4_bits, efer as efer_bits};
use ferrite_x86::{CodeMode, CpuMode, CrWriteOp, MemOperand, Seg};

/// A guest's write of CR0, CR4 or CR8 (the control registers whose writes
/// exit): checked against the architectural rules and the CPUID it sees,
/// then done, or #GP. `gpr` and `next_rip` come with the exit when the CPU
/// decoded the MOV; otherwise the instruction is fetched and decoded.
pub(super) fn write_cr<V: VcpuOps>(
    vcpu: &mut V,
    platform: &mut dyn Platform,
    cr: u8,
    gpr: Option<u8>,
    next_rip: Option<u64>,
) -> Result<(), String> {
    let mode = cpu_mode(vcpu);
    let rip = vcpu.regs().rip;
    let (op, next_rip) = match (gpr, next_rip) {
        (Some(gpr), Some(n)) => (CrWriteOp::Mov { cr, gpr }, n),
        _ => {
            let (bytes, len) = current_instruction(vcpu, platform, &mode)?;
            let w = ferrite_x86::decode_cr_write(&bytes[..len], mode.code_mode())
                .map_err(|e| format!("CR{} write by {:02x?} at rip {:#x}: {:?}", cr, &bytes[..len], rip, e))?;
            if w.cr() != cr {
                return Err(format!("CR{} write exit, but the instruction at rip {:#x} writes CR{}", cr, rip, w.cr()));
            }
            (w.op, rip.wrapping_add(w.len as u64))
        }
    };
    let taken = match cr {
        0 => {
            let Some(value) = cr0_value(vcpu, platform, &mode, op, next_rip)? else {
                // Reading LMSW's operand faulted; that fault is injected.
                return Ok(());
            };
            write_cr0(vcpu, platform, value, &mode)
        }
        4 => {
            let CrWriteOp::Mov { gpr, .. } = op else {
                return Err(format!("CR4 write at rip {:#x} by something other than MOV", rip));
            };
            write_cr4(vcpu, platform, gpr_value(vcpu, gpr, &mode))
        }
        // Intercepted while the TPR holds an interrupt back (`run_loop`).
        8 => {
            let CrWriteOp::Mov { gpr, .. } = op else {
                return Err(format!("CR8 write at rip {:#x} by something other than MOV", rip));
            };
            platform.write_cr8(gpr_value(vcpu, gpr, &mode))
        }
        _ => return Err(format!("CR{} writes are not intercepted", cr)),
    };
    if taken {
        vcpu.regs_mut().rip = next_rip;
    } else {
        vcpu.inject_exception(GP_VECTOR, Some(0));
    }
    Ok(())
}

/// Before a CR0 or CR4 write from `old` to `new` (CR0, CR4; EFER after
/// it): if the backend keeps the PAE PDPTEs and the write makes a CPU
/// load them (`cr::write_loads_pae_pdptes`), reads the four at CR3 and
/// hands them over; false when one is present with a reserved bit, or
/// cannot be read (a CPU would read all ones there): the write gets #GP
/// and changes nothing.
fn load_pae_pdptes<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, old: (u64, u64), new: (u64, u64), efer: u64) -> bool {
    if !vcpu.keeps_pae_pdptes() || !cr::write_loads_pae_pdptes(old.0, new.0, old.1, new.1, efer) {
        return true;
    }
    let cr3 = vcpu.paging_state().cr3;
    match pae_pdptes_at(vcpu, platform, cr3) {
        Some(pdptes) => {
            vcpu.set_pae_pdptes(pdptes);
            true
        }
        None => false,
    }
}

/// The four PAE PDPTEs at `cr3` as a CPU loads them, or None when one is
/// present with a reserved bit or they cannot be read (a CPU would read
/// all ones there).
pub(super) fn pae_pdptes_at<V: VcpuOps>(vcpu: &V, platform: &mut dyn Platform, cr3: u64) -> Option<[u64; 4]> {
    let mut raw = [0u8; 32];
    platform.guest_memory()?.read(cr3 & 0xFFFF_FFE0, &mut raw).ok()?;
    let max_phys = guest_max_phys(vcpu, platform);
    let mut pdptes = [0u64; 4];
    for (p, bytes) in pdptes.iter_mut().zip(raw.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        *p = u64::from_le_bytes(b);
        if cr::pae_pdpte_reserved(*p, max_phys) {
            return None;
        }
    }
    Some(pdptes)
}

/// The guest's MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0]; 36 without it).
fn guest_max_phys<V: VcpuOps>(vcpu: &V, platform: &mut dyn Platform) -> u8 {
    match guest_leaf(vcpu, platform, 0x8000_0008)[0] as u8 {
        0 => 36,
        n => n,
    }
}

/// A MOV's source: 64 bits in 64-bit mode, else the low 32 (the operand
/// size of MOV CRn is fixed).
fn gpr_value<V: VcpuOps>(vcpu: &V, gpr: u8, mode: &CpuMode) -> u64 {
    let value = to_x86(vcpu.regs()).get(gpr);
    if mode.code_mode() == CodeMode::Bits64 {
        value
    } else {
        value & 0xFFFF_FFFF
    }
}

/// The value the CR0 write asks for; `None` when reading an LMSW memory
/// operand faulted (the fault is injected).
fn cr0_value<V: VcpuOps>(
    vcpu: &mut V,
    platform: &dyn Platform,
    mode: &CpuMode,
    op: CrWriteOp,
    next_rip: u64,
) -> Result<Option<u64>, String> {
    let old = mode.paging.cr0;
    Ok(Some(match op {
        CrWriteOp::Mov { gpr, .. } => gpr_value(vcpu, gpr, mode),
        CrWriteOp::LmswReg { gpr } => cr::lmsw_value(old, to_x86(vcpu.regs()).get(gpr) as u16),
        CrWriteOp::LmswMem(mem) => match read_word(vcpu, platform, mode, &mem, next_rip)? {
            Some(word) => cr::lmsw_value(old, word),
            None => return Ok(None),
        },
        CrWriteOp::Clts => cr::clts_value(old),
    }))
}

/// Checks and does a CR0 write; false: #GP. Long mode becomes active or
/// inactive with paging (EFER.LMA follows LME and PG).
fn write_cr0<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, value: u64, mode: &CpuMode) -> bool {
    let ps = &mode.paging;
    let ctx = cr::Cr0Context { cr4: ps.cr4, efer: ps.efer, cs_l: mode.cs_l };
    match cr::check_cr0_write(ps.cr0, value, &ctx) {
        Ok(cr0) => {
            let efer = cr::efer_after_cr0_write(ps.efer, cr0);
            if !load_pae_pdptes(vcpu, platform, (ps.cr0, ps.cr4), (cr0, ps.cr4), efer) {
                return false;
            }
            vcpu.set_cr0(cr0);
            if efer != ps.efer {
                vcpu.set_efer(efer);
            }
            true
        }
        Err(_) => false,
    }
}

/// Checks and does a CR4 write against the guest's CPUID; false: #GP.
fn write_cr4<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, value: u64) -> bool {
    let ps = vcpu.paging_state();
    let [_, _, leaf1_ecx, leaf1_edx] = guest_leaf(vcpu, platform, 1);
    let [_, leaf7_ebx, leaf7_ecx, _] = guest_leaf(vcpu, platform, 7);
    let features = cr::Cr4Features { leaf1_ecx, leaf1_edx, leaf7_ebx, leaf7_ecx };
    let long_mode = ps.efer & efer_bits::LMA != 0;
    match cr::check_cr4_write(ps.cr4, value, &features, long_mode, ps.cr3, ps.cr0) {
        Ok(()) => {
            if !load_pae_pdptes(vcpu, platform, (ps.cr0, ps.cr4), (ps.cr0, value), ps.efer) {
                return false;
            }
            vcpu.set_cr4(value);
            true
        }
        Err(_) => false,
    }
}

/// A guest's WRMSR to EFER, checked against the CPUID it sees and the
/// long-mode rules; false: #GP.
pub(super) fn write_efer<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, value: u64) -> bool {
    let [_, _, ext1_ecx, ext1_edx] = guest_leaf(vcpu, platform, 0x8000_0001);
    let features = cr::EferFeatures { ext1_ecx, ext1_edx };
    let ps = vcpu.paging_state();
    match cr::check_efer_write(ps.efer, value, &features, ps.cr0) {
        Ok(efer) => {
            vcpu.set_efer(efer);
            true
        }
        Err(_) => false,
    }
}

/// After an exit with code -1: whether it was QEMU's TCG refusing a guest
/// MOV to CR3 that a CPU refuses with #GP (bits at or above MAXPHYADDR in
/// long mode), in which case that #GP is injected. TCG leaves RIP on the
/// MOV and CR3 unchanged. Anything else (the instruction cannot be read,
/// or the value is one a CPU takes) is not that case: false.
pub(super) fn refused_mov_cr3<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform) -> bool {
    let mode = cpu_mode(vcpu);
    let Ok((bytes, len)) = current_instruction(vcpu, platform, &mode) else { return false };
    let Ok(w) = ferrite_x86::decode_cr_write(&bytes[..len], mode.code_mode()) else { return false };
    let CrWriteOp::Mov { cr: 3, gpr } = w.op else { return false };
    let value = gpr_value(vcpu, gpr, &mode);
    let ps = &mode.paging;
    let long_mode = ps.efer & efer_bits::LMA != 0;
    let max_phys = guest_max_phys(vcpu, platform);
    if cr::check_cr3_write(value, long_mode, ps.cr4 & cr4_bits::PCIDE != 0, max_phys).is_ok() {
        return false;
    }
    vcpu.inject_exception(GP_VECTOR, Some(0));
    true
}

/// CPUID `leaf` (subleaf 0) as the guest sees it; zeros beyond its
/// maximum leaf, as a CPU answers.
fn guest_leaf<V: VcpuOps>(vcpu: &V, platform: &mut dyn Platform, leaf: u32) -> [u32; 4] {
    let state = cpuid_state(vcpu);
    let max = platform.cpuid(leaf & 0x8000_0000, 0, state)[0];
    if leaf > max {
        return [0; 4];
    }
    platform.cpuid(leaf, 0, state)
}

/// Reads LMSW's 16-bit memory operand through the guest's page tables;
/// `None` when that faults (the #PF or #GP is injected). Segment limits
/// are not checked (LMSW runs at CPL 0, where segments are flat in
/// practice).
fn read_word<V: VcpuOps>(
    vcpu: &mut V,
    platform: &dyn Platform,
    mode: &CpuMode,
    mem: &MemOperand,
    next_rip: u64,
) -> Result<Option<u16>, String> {
    let offset = mem.offset(&to_x86(vcpu.regs()), next_rip);
    // In 64-bit mode only FS and GS have a base; outside long mode linear
    // addresses wrap at 4 GiB.
    let long_mode = mode.paging.efer & efer_bits::LMA != 0;
    let base = if mode.code_mode() == CodeMode::Bits64 && !matches!(mem.seg, Seg::Fs | Seg::Gs) {
        0
    } else {
        vcpu.segment(mem.seg as u8).base
    };
    let linear_mask = if long_mode { u64::MAX } else { 0xFFFF_FFFF };
    let mem_ram = platform.guest_memory().ok_or("no guest memory for LMSW's operand")?;
    let access = ferrite_x86::walk::Access::read(mode.cpl == 3);
    let mut word = [0u8; 2];
    for (i, byte) in word.iter_mut().enumerate() {
        let linear = base.wrapping_add(offset).wrapping_add(i as u64) & linear_mask;
        match ferrite_x86::walk::translate(mem_ram, &mode.paging, linear, access) {
            Ok(gpa) => mem_ram
                .read(gpa, core::slice::from_mut(byte))
                .map_err(|e| format!("LMSW operand at {:#x}: {}", linear, e))?,
            Err(ferrite_x86::WalkError::PageFault(pf)) => {
                vcpu.inject_page_fault(pf.address, pf.error_code);
                return Ok(None);
            }
            Err(ferrite_x86::WalkError::NonCanonical { .. }) => {
                vcpu.inject_exception(GP_VECTOR, Some(0));
                return Ok(None);
            }
            Err(e) => return Err(format!("LMSW operand at {:#x}: {:?}", linear, e)),
        }
    }
    Ok(Some(u16::from_le_bytes(word)))
}
