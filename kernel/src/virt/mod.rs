//! The hardware-virtualization abstraction. The vCPU run loop (`vcpu`)
//! talks to a vCPU through `VcpuOps` and sees generic `VmExit`s; it does
//! not know whether SVM or VMX is underneath. The backend is chosen once,
//! at boot, from the CPU's vendor and features (`init`); domains and the
//! self-test make their vCPUs with `ArchVcpu::new`, which holds the
//! chosen backend's vCPU. Nothing outside this module names a backend.

pub mod svm;
pub mod vmx;

use crate::arch::cpu;
use core::fmt;

/// Which hardware-virtualization extension runs the guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// AMD SVM with nested paging (NPT).
    Svm,
    /// Intel VMX with EPT, unrestricted guest and (when present) VPID.
    Vmx,
}

impl BackendKind {
    /// The name the boot log uses.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Svm => "SVM",
            BackendKind::Vmx => "VMX",
        }
    }
}

/// What the backend found on this CPU.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub backend: BackendKind,
    pub name: &'static str,
    pub nested_paging: bool,
    /// The CPU reports the next RIP on exits (SVM NRIPS).
    pub next_rip: bool,
    /// The CPU decodes faulting instructions for us (SVM decode assists).
    pub decode_assists: bool,
    pub flush_by_asid: bool,
    /// VMCB clean bits: the CPU may cache unchanged VMCB state.
    pub state_caching: bool,
    pub pause_filter: bool,
    pub asids: u32,
    /// Inject interrupts through the virtual interrupt (V_IRQ) instead of
    /// EVENTINJ: chosen under QEMU's TCG (CPUID 0x4000_0000 says
    /// "TCGTCGTCGTCG"), whose EVENTINJ path delivers an injected INTR twice
    /// (ARCHITECTURE.md, "Two host CPUs under QEMU TCG"). Elsewhere
    /// EVENTINJ, the usual way (Bochs' V_IRQ is only taken after the guest
    /// changes EFLAGS.IF).
    pub inject_via_virq: bool,
    /// Guests can run in real mode: SVM, and VMX with unrestricted guest.
    /// Without it HVM guests (their BIOS starts in real mode) are refused,
    /// and a SIPI (which starts a vCPU in real mode) is not taken: PVH
    /// guests run on their first vCPU.
    pub real_mode: bool,
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        if self.backend == BackendKind::Vmx {
            return write!(
                f,
                "vmx: ept=yes unrestricted_guest={} vpid={} interrupts=event injection",
                yn(self.real_mode),
                yn(self.flush_by_asid)
            );
        }
        write!(
            f,
            "{}: npt={} nrips={} decode_assists={} flush_by_asid={} vmcb_clean={} pause_filter={} asids={} interrupts={}",
            self.name,
            yn(self.nested_paging),
            yn(self.next_rip),
            yn(self.decode_assists),
            yn(self.flush_by_asid),
            yn(self.state_caching),
            yn(self.pause_filter),
            self.asids,
            if self.inject_via_virq { "v_irq (QEMU TCG)" } else { "eventinj" }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectError {
    UnknownVendor,
    SvmAbsent,
    SvmDisabledByFirmware,
    NoNestedPaging,
    VmxAbsent,
    VmxDisabledByFirmware,
    NoEpt,
    /// A VMX feature Ferrite needs is missing (named).
    VmxMissing(&'static str),
    OutOfMemory,
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let DetectError::VmxMissing(what) = self {
            return write!(f, "this Intel CPU's VMX lacks {}, which Ferrite's VMX backend requires", what);
        }
        f.write_str(match self {
            DetectError::UnknownVendor => "this CPU is neither AMD nor Intel; no virtualization backend for it",
            DetectError::SvmAbsent => "this AMD CPU has no SVM (AMD-V); under QEMU use -cpu qemu64,+svm,+npt or -cpu host with nested virtualization",
            DetectError::SvmDisabledByFirmware => "SVM is disabled by the firmware (VM_CR.SVMDIS); enable AMD-V/SVM in the BIOS setup",
            DetectError::NoNestedPaging => "this CPU has SVM but no nested paging (NPT), which Ferrite requires; under QEMU add +npt",
            DetectError::VmxAbsent => "this Intel CPU has no VMX; Ferrite needs hardware virtualization (nested under KVM: load kvm_intel with nested=1 and use -cpu host)",
            DetectError::VmxDisabledByFirmware => "VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMX); enable Intel VT-x in the BIOS setup",
            DetectError::NoEpt => "this Intel CPU has VMX but no EPT, which Ferrite requires (no VMX backend without it)",
            DetectError::VmxMissing(_) => "",
            DetectError::OutOfMemory => "out of memory for the per-CPU virtualization pages",
        })
    }
}

/// Where a guest with paging off finds the identity map the CPU pages
/// through when VMX lacks unrestricted guest (`unpaged_identity_map`): a
/// page in the MMIO hole below the IOAPIC and LAPIC that no device uses
/// (the address KVM uses for the same purpose).
pub const UNPAGED_IDENTITY_MAP_GPA: u64 = 0xFEFF_C000;

/// The read-only page each guest gets at `UNPAGED_IDENTITY_MAP_GPA` when
/// the chosen backend needs it (VMX without unrestricted guest), else
/// None: a 32-bit page directory of 4 MiB pages mapping the low 4 GiB to
/// themselves, accessed and dirty already so that the CPU never writes it.
pub fn unpaged_identity_map() -> Option<alloc::boxed::Box<[u8; 4096]>> {
    let caps = chosen()?;
    if caps.backend != BackendKind::Vmx || caps.real_mode {
        return None;
    }
    // Present, writable, user, accessed, dirty, 4 MiB page.
    const PDE_FLAGS: u32 = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80;
    let mut page = alloc::boxed::Box::new([0u8; 4096]);
    for (i, pde) in page.chunks_exact_mut(4).enumerate() {
        pde.copy_from_slice(&(((i as u32) << 22) | PDE_FLAGS).to_le_bytes());
    }
    Some(page)
}

/// The capabilities `init` found (None before it ran, or when it failed).
static CHOSEN: spin::Once<Capabilities> = spin::Once::new();

/// Picks the backend this CPU offers and checks it can run guests. Called
/// once, on the boot CPU; every other CPU uses the same backend.
pub fn init() -> Result<Capabilities, DetectError> {
    let caps = match &cpu::vendor() {
        b"AuthenticAMD" | b"HygonGenuine" => svm::detect()?,
        b"GenuineIntel" => vmx::detect()?,
        _ => return Err(DetectError::UnknownVendor),
    };
    Ok(*CHOSEN.call_once(|| caps))
}

/// The capabilities of the backend `init` chose.
pub fn chosen() -> Option<Capabilities> {
    CHOSEN.get().copied()
}

/// Turns the chosen backend on for the calling CPU.
pub fn enable_cpu() -> Result<(), DetectError> {
    match CHOSEN.get().map(|c| c.backend) {
        Some(BackendKind::Svm) => svm::enable_cpu(),
        Some(BackendKind::Vmx) => vmx::enable_cpu(),
        None => Err(DetectError::UnknownVendor),
    }
}

/// Whether `enable_cpu` succeeded on the calling CPU.
pub fn enabled_on_this_cpu() -> bool {
    match CHOSEN.get().map(|c| c.backend) {
        Some(BackendKind::Svm) => svm::enabled_on_this_cpu(),
        Some(BackendKind::Vmx) => vmx::enabled_on_this_cpu(),
        None => false,
    }
}

/// What a new vCPU runs on: its guest's memory (the root of the nested
/// page table the memory module built, in the backend's format), its
/// address-space tag and its intercept maps (`mm::alloc_intercept_maps`:
/// the I/O map, one bit per port, and the MSR map in SVM's layout, which
/// the VMX backend translates).
#[derive(Clone, Copy, Debug)]
pub struct VcpuConfig {
    pub nested_root: u64,
    /// The ASID (SVM) or VPID (VMX), never 0.
    pub tag: u32,
    pub iopm_pa: u64,
    pub msrpm_pa: u64,
}

/// A vCPU of whichever backend `init` chose. (The variants differ in size;
/// each lives once per vCPU, inside its `Arc`, so boxing would buy nothing.)
#[allow(clippy::large_enum_variant)]
pub enum ArchVcpu {
    Svm(svm::SvmVcpu),
    Vmx(vmx::VmxVcpu),
}

impl ArchVcpu {
    /// None when there is no free memory for its control structures.
    pub fn new(caps: Capabilities, cfg: &VcpuConfig) -> Option<Self> {
        match caps.backend {
            BackendKind::Svm => svm::SvmVcpu::new(caps, cfg.nested_root, cfg.tag, cfg.iopm_pa, cfg.msrpm_pa).map(ArchVcpu::Svm),
            BackendKind::Vmx => vmx::VmxVcpu::new(caps, cfg.nested_root, cfg.tag, cfg.iopm_pa, cfg.msrpm_pa).map(ArchVcpu::Vmx),
        }
    }
}

/// Work on a vCPU of any backend, run by `ArchVcpu::with_backend` on the
/// chosen backend's own type: compiled once per backend, with direct
/// calls. The run loop goes through it, since calls through `ArchVcpu`
/// each dispatch on the backend (about 55 instructions more per exit on
/// its path, measured with `ferrite bench`).
pub trait OnBackend {
    type Output;
    fn run<V: VcpuOps>(self, vcpu: &mut V) -> Self::Output;
}

impl ArchVcpu {
    pub fn with_backend<F: OnBackend>(&mut self, f: F) -> F::Output {
        match self {
            ArchVcpu::Svm(v) => f.run(v),
            ArchVcpu::Vmx(v) => f.run(v),
        }
    }
}

/// Forwards each `VcpuOps` method to the backend's vCPU.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) $(-> $ret:ty)?;)* ; $(fn $mname:ident(&mut self $(, $marg:ident: $mty:ty)*) $(-> $mret:ty)?;)*) => {
        impl VcpuOps for ArchVcpu {
            $(fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                match self {
                    ArchVcpu::Svm(v) => v.$name($($arg),*),
                    ArchVcpu::Vmx(v) => v.$name($($arg),*),
                }
            })*
            $(fn $mname(&mut self $(, $marg: $mty)*) $(-> $mret)? {
                match self {
                    ArchVcpu::Svm(v) => v.$mname($($marg),*),
                    ArchVcpu::Vmx(v) => v.$mname($($marg),*),
                }
            })*
        }
    };
}

delegate! {
    fn regs(&self) -> &GuestRegs;
    fn efer(&self) -> u64;
    fn has_tsc_aux(&self) -> bool;
    fn tsc_aux(&self) -> u64;
    fn xmm(&self, index: u8) -> [u8; 16];
    fn guest_pat(&self) -> u64;
    fn xcr0(&self) -> u64;
    fn interruptible(&self) -> bool;
    fn in_interrupt_shadow(&self) -> bool;
    fn event_pending(&self) -> bool;
    fn cr8(&self) -> u8;
    fn paging_state(&self) -> PagingState;
    fn code_segment(&self) -> Segment;
    fn describe_state(&self) -> alloc::string::String;
    fn segment(&self, index: u8) -> Segment;
    fn exit_instruction_bytes(&self) -> Option<([u8; 15], usize)>;
    fn keeps_pae_pdptes(&self) -> bool;
    fn system_segments(&self) -> SystemSegments;
    fn state_check(&self) -> Option<ferrite_x86::StateCheck>;
    ;
    fn run(&mut self) -> VmExit;
    fn regs_mut(&mut self) -> &mut GuestRegs;
    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16);
    fn set_entry_state(&mut self, state: &EntryState);
    fn set_efer(&mut self, efer: u64);
    fn set_cr0(&mut self, value: u64);
    fn set_cr4(&mut self, value: u64);
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    fn inject_single_step(&mut self);
    fn clear_interrupt_shadow(&mut self);
    fn inject_nmi(&mut self) -> bool;
    fn iret_intercepted(&mut self);
    fn inject_page_fault(&mut self, address: u64, error_code: u32);
    fn set_xcr0(&mut self, xcr0: u64);
    fn release_fpu(&mut self);
    fn switch_debug_regs(&mut self);
    fn set_tsc_aux(&mut self, value: u64);
    fn set_xmm(&mut self, index: u8, value: [u8; 16]);
    fn set_guest_pat(&mut self, value: u64);
    fn inject_interrupt(&mut self, vector: u8);
    fn request_interrupt_window(&mut self, on: bool);
    fn set_cr8(&mut self, cr8: u8);
    fn intercept_cr8_writes(&mut self, on: bool);
    fn set_tsc_offset(&mut self, offset: u64);
    fn set_pae_pdptes(&mut self, pdptes: [u64; 4]);
    fn set_segment(&mut self, index: u8, seg: Segment);
    fn set_ldtr(&mut self, seg: Segment);
    fn set_tr(&mut self, seg: Segment);
    fn set_cr3(&mut self, cr3: u64);
}

/// Guest general-purpose registers, plus the ones the hardware keeps in its
/// control block (synchronised by the backend on every exit and entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// Why the guest stopped running, decoded from backend-specific exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// IN/OUT (string forms flagged; the run loop decides what it supports).
    /// `addr_size` (2, 4 or 8 bytes) and `segment` (0 = ES … 5 = GS, the
    /// source of OUTS) matter for the string forms.
    Io { port: u16, size: u8, write: bool, string: bool, rep: bool, addr_size: u8, segment: Option<u8>, next_rip: u64 },
    Cpuid { next_rip: u64 },
    /// The guest is about to execute IRET (intercepted only while an NMI
    /// handler runs): the backend's NMI blocking can end after it.
    Iret,
    Hlt { next_rip: u64 },
    /// VMMCALL/VMCALL: a hypercall.
    Hypercall { next_rip: u64 },
    MsrRead { msr: u32, next_rip: u64 },
    MsrWrite { msr: u32, value: u64, next_rip: u64 },
    Xsetbv { next_rip: u64 },
    /// A write to control register `cr` (those intercepted: CR0 by MOV,
    /// LMSW or CLTS; CR4; CR8 while an interrupt waits on the TPR). `gpr` is the source register of a MOV when the
    /// CPU decoded the instruction; otherwise the run loop decodes it.
    CrWrite { cr: u8, gpr: Option<u8>, next_rip: Option<u64> },
    NestedPageFault { gpa: u64, write: bool, exec: bool, present: bool },
    /// A physical interrupt arrived while the guest ran; nothing to do for
    /// the guest.
    ExternalInterrupt,
    /// The guest can take an interrupt now (requested with
    /// `request_interrupt_window`).
    InterruptWindow,
    /// An exception the hypervisor intercepts so that its delivery can
    /// never loop inside the CPU (#DB, #AC: XSA-156); the run loop gives it
    /// back to the guest.
    Exception { vector: u8, error_code: Option<u32> },
    /// The guest touched a debug register for the first time: the backend
    /// now switches DR0-3 for this vCPU, and the instruction runs again.
    DebugRegisterAccess,
    /// Triple fault / shutdown: the guest is dead.
    Shutdown,
    /// The hardware refused the guest state (SVM: VMEXIT_INVALID; VMX: a
    /// failed VM entry); `VcpuOps::state_check` says why. (Kept out of the
    /// exit itself: the explanation is large, and every exit is copied on
    /// the hot path.)
    InvalidState,
    /// A hardware task switch the CPU left to the hypervisor (VMX exits on
    /// every one; SVM switches tasks itself and never reports this): to the
    /// TSS `selector` (for IRET, the back link), started by `source`.
    /// `event` is the interrupt, NMI or exception whose delivery went
    /// through a task gate: the backend no longer delivers it, the task
    /// switch does. `instruction_len` is that of the CALL, JMP, IRET or
    /// software interrupt.
    TaskSwitch { selector: u16, source: ferrite_x86::task::Source, event: Option<TaskGateEvent>, instruction_len: u8 },
    /// Something the guest did that the backend cannot run (named): the
    /// domain crashes with that reason (VMX: real mode without
    /// unrestricted guest).
    Unsupported(&'static str),
    Other { code: u64, info1: u64, info2: u64 },
}

/// What kind of event went through a task gate (VMX's interruption types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    External,
    Nmi,
    HardwareException,
    /// INT n.
    SoftwareInterrupt,
    /// INT1 (ICEBP).
    PrivilegedSoftwareException,
    /// INT3, INTO.
    SoftwareException,
}

impl EventKind {
    /// Raised by an instruction, which is then done: the old task resumes
    /// after it.
    pub fn raised_by_instruction(self) -> bool {
        matches!(self, EventKind::SoftwareInterrupt | EventKind::PrivilegedSoftwareException | EventKind::SoftwareException)
    }
}

/// An event whose delivery went through a task gate in the IDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskGateEvent {
    pub vector: u8,
    pub kind: EventKind,
    /// The error code an exception pushes (on the new task's stack).
    pub error_code: Option<u32>,
}

/// The system segment registers and the GDT (GDTR uses only `base` and
/// `limit`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemSegments {
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: Segment,
}

/// A segment register as the backends store it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Access rights in the 12-bit "compressed" form (type, S, DPL, P, AVL, L, D/B, G).
    pub attrib: u16,
}

/// The operations the run loop needs from a virtual CPU.
pub trait VcpuOps {
    fn run(&mut self) -> VmExit;
    fn regs(&self) -> &GuestRegs;
    fn regs_mut(&mut self) -> &mut GuestRegs;
    /// Puts the vCPU in real mode at `cs_base:ip`, as after INIT with a
    /// chosen start address.
    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16);
    /// Puts the vCPU in an arbitrary starting state.
    fn set_entry_state(&mut self, state: &EntryState);
    fn efer(&self) -> u64;
    fn set_efer(&mut self, efer: u64);
    /// Writes the guest's CR0 (the caller has checked it), flushing the
    /// guest's TLB when the change requires it.
    fn set_cr0(&mut self, value: u64);
    /// Writes the guest's CR4 (the caller has checked it), flushing the
    /// guest's TLB when the change requires it.
    fn set_cr4(&mut self, value: u64);
    /// Injects a hardware exception (e.g. #GP for an unknown MSR).
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Raises the single-step #DB that follows an instruction executed with
    /// RFLAGS.TF set (a trap: RIP already points past it), with DR6.BS set
    /// as the CPU would.
    fn inject_single_step(&mut self);
    /// The instruction the guest stopped at has been emulated to its end:
    /// an interrupt shadow (STI, MOV SS) it was in is over.
    fn clear_interrupt_shadow(&mut self);
    /// Injects an NMI unless NMIs are blocked (a handler has not returned)
    /// or another event is being injected; true if it did.
    fn inject_nmi(&mut self) -> bool;
    /// The IRET intercept fired: NMIs unblock once it has executed.
    fn iret_intercepted(&mut self);
    /// Injects #PF for linear `address` (CR2) with `error_code`.
    fn inject_page_fault(&mut self, address: u64, error_code: u32);
    fn set_xcr0(&mut self, xcr0: u64);
    /// Ends a scheduling slice: the guest's FPU state, kept in the
    /// registers while the slice ran, is saved. Must run before this
    /// physical CPU runs another vCPU.
    fn release_fpu(&mut self);
    /// From now on this vCPU's DR0-3 are its own: loaded before it runs,
    /// saved after, and its debug-register accesses no longer exit.
    fn switch_debug_regs(&mut self);
    /// Whether the CPU has IA32_TSC_AUX (RDTSCP or RDPID).
    fn has_tsc_aux(&self) -> bool;
    /// The vCPU's own IA32_TSC_AUX (what its RDTSCP/RDPID return).
    fn tsc_aux(&self) -> u64;
    fn set_tsc_aux(&mut self, value: u64);
    /// The guest's XMM register `index` (0-15), as `svm_run` keeps it
    /// between entries.
    fn xmm(&self, index: u8) -> [u8; 16];
    fn set_xmm(&mut self, index: u8, value: [u8; 16]);
    /// The guest's IA32_PAT (kept where the CPU applies it to the guest).
    fn guest_pat(&self) -> u64;
    /// Sets it; the caller has checked every byte is a memory type.
    fn set_guest_pat(&mut self, value: u64);
    fn xcr0(&self) -> u64;
    /// Whether an external interrupt could be injected now (RFLAGS.IF set,
    /// no interrupt shadow, no event already being injected).
    fn interruptible(&self) -> bool;
    /// The instruction at RIP runs in an interrupt shadow (after STI or
    /// MOV SS): no external interrupt before it completes.
    fn in_interrupt_shadow(&self) -> bool;
    /// Injects external interrupt `vector` on the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// An event is waiting to be delivered (injected, or cut short by an
    /// exit and due again): nothing else may be injected, and a HLT must
    /// not block.
    fn event_pending(&self) -> bool;
    /// Asks for an `InterruptWindow` exit as soon as the guest can take an
    /// interrupt (or stops asking).
    fn request_interrupt_window(&mut self, on: bool);
    /// The guest's CR8 (its task priority class) as the CPU keeps it while
    /// the guest runs: in 64-bit mode the guest reads and writes it there
    /// without an exit (SVM: V_TPR).
    fn cr8(&self) -> u8;
    /// Sets that copy (from the LAPIC's TPR, before an entry).
    fn set_cr8(&mut self, cr8: u8);
    /// Makes the guest's writes of CR8 exit (`CrWrite { cr: 8 }`), or run
    /// without an exit again.
    fn intercept_cr8_writes(&mut self, on: bool);
    /// Control registers and mode, for walking the guest's page tables.
    fn paging_state(&self) -> PagingState;
    /// The code segment (its base, and L/D bits for the decoding mode).
    fn code_segment(&self) -> Segment;
    /// A one-line summary of the guest's control state (CRs, RSP, CPL, the
    /// descriptor tables, an event in flight) for crash reports.
    fn describe_state(&self) -> alloc::string::String;
    /// What the guest's TSC reads relative to the host's (added, wrapping).
    fn set_tsc_offset(&mut self, offset: u64);
    /// Segment register `index` in the instruction encoding's order (0 = ES,
    /// 1 = CS, 2 = SS, 3 = DS, 4 = FS, 5 = GS).
    fn segment(&self, index: u8) -> Segment;
    /// Sets segment register `index` (0 = ES … 5 = GS, as `segment`); SS's
    /// DPL is the CPL from then on.
    fn set_segment(&mut self, index: u8, seg: Segment);
    /// LDTR, TR and GDTR.
    fn system_segments(&self) -> SystemSegments;
    fn set_ldtr(&mut self, seg: Segment);
    fn set_tr(&mut self, seg: Segment);
    /// Writes the guest's CR3 (a task switch loads it), flushing the
    /// guest's TLB as a MOV to CR3 would.
    fn set_cr3(&mut self, cr3: u64);
    /// Whether the backend keeps the four PAE page-directory-pointer
    /// entries itself and needs them when an emulated CR0/CR4 write enters
    /// PAE paging (VMX with EPT: VM entry loads them from the VMCS, not
    /// from memory, where a CPU's MOV CR0/CR4 would read them).
    fn keeps_pae_pdptes(&self) -> bool {
        false
    }
    /// Sets those entries (read from the guest's CR3).
    fn set_pae_pdptes(&mut self, _pdptes: [u64; 4]) {}
    /// The bytes of the instruction that caused the last exit, when the CPU
    /// supplies them (SVM decode assists); None means fetch them yourself.
    fn exit_instruction_bytes(&self) -> Option<([u8; 15], usize)> {
        None
    }
    /// Why the last `InvalidState` exit happened: the consistency check the
    /// state fails as the backend redid them, or the CPU's own verdict
    /// (None: nothing known).
    fn state_check(&self) -> Option<ferrite_x86::StateCheck> {
        None
    }
}

/// A vCPU's starting state when it does not start at the reset vector
/// (e.g. the PVH entry: 32-bit protected mode, paging off).
#[derive(Clone, Copy, Debug, Default)]
pub struct EntryState {
    pub rip: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cs: Segment,
    /// Used for DS, ES, SS, FS and GS.
    pub ds: Segment,
    pub tr: Segment,
    pub gdtr_base: u64,
    pub gdtr_limit: u16,
}

/// What a guest page walk needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}
