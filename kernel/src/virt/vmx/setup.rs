//! VMX on this CPU: what detection finds and settles for every vCPU
//! (`VmxConfig`, from the capability MSRs), and VMXON per CPU.

use super::*;

/// What detection settled on, for every CPU.
#[derive(Clone, Copy, Debug)]
pub(super) struct VmxConfig {
    pub(super) revision: u32,
    pub(super) pin: u32,
    pub(super) proc: u32,
    pub(super) proc2: u32,
    pub(super) exit: u32,
    pub(super) entry: u32,
    /// Controls a vCPU may turn on and off (interrupt and NMI windows,
    /// CR8 loads, MOV DR).
    pub(super) proc_may: u32,
    pub(super) cr0_fixed0: u64,
    pub(super) cr0_fixed1: u64,
    pub(super) cr4_fixed0: u64,
    pub(super) cr4_fixed1: u64,
    pub(super) invept_single: bool,
    pub(super) vpid: bool,
    pub(super) invvpid_single: bool,
    /// VM exits report the address size and segment of INS/OUTS.
    pub(super) ins_outs_info: bool,
    /// Unrestricted guest: the guest may run in real mode and in
    /// protected mode without paging. Without it, a guest with paging off
    /// runs on an identity map (`unpaged`), and real mode cannot run.
    pub(super) unrestricted: bool,
}

pub(super) static CONFIG: spin::Once<VmxConfig> = spin::Once::new();

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
pub(in crate::virt) fn detect() -> Result<Capabilities, DetectError> {
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
pub(super) struct VmxCpu {
    pub(super) vmxon_pa: AtomicU64,
    pub(super) current_vmcs: AtomicU64,
    pub(super) last_vcpu: AtomicU64,
    pub(super) loaded_tsc_aux: AtomicU64,
    pub(super) fpu_owner: AtomicU64,
    pub(super) dr_owner: AtomicU64,
}

pub(super) static VMX_CPUS: [VmxCpu; MAX_CPUS] = [const {
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
pub(super) static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Turns VMX on for the calling CPU (VMXON).
pub(in crate::virt) fn enable_cpu() -> Result<(), DetectError> {
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

pub(in crate::virt) fn enabled_on_this_cpu() -> bool {
    VMX_CPUS[percpu::current_index()].vmxon_pa.load(Ordering::Acquire) != 0
}

