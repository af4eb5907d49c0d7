//! The vCPU run loop: enter the guest, decode why it stopped, handle it.
//! Backend-independent: it works on any `VcpuOps`.

use crate::mm::guest::GuestMemory;
use crate::virt::{ArchVcpu, GuestRegs, OnBackend, VcpuOps, VmExit};
use ferrite_x86::{CpuMode, MmioBus, MmioKind, PagingRegs, Regs};
use alloc::format;
use alloc::string::String;
use ferrite_abi::{IoRequest, DIR_READ, DIR_WRITE, FLAG_DATA_IS_GPA, FLAG_DOWN, KIND_MMIO, KIND_PIO};

const MSR_EFER: u32 = 0xC000_0080;
const MSR_TSC_AUX: u32 = 0xC000_0103;
const MSR_PAT: u32 = 0x277;
const GP_VECTOR: u8 = 13;
const CR4_OSXSAVE: u64 = 1 << 18;
const RFLAGS_TF: u64 = 1 << 8;

mod cr;
mod task;

pub use ferrite_x86::cpuid::HV_SIGNATURE;

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
    /// CPUID for this vCPU; `guest` is the vCPU state some leaves reflect
    /// (the platform fills in the rest: vCPU id and count, APIC state).
    fn cpuid(&mut self, leaf: u32, subleaf: u32, guest: GuestCpuidState) -> [u32; 4] {
        guest_cpuid(leaf, subleaf, &guest.view(0, 1, true))
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
    /// An NMI waits for this vCPU.
    fn nmi_pending(&self) -> bool {
        false
    }
    /// The run loop injected the waiting NMI.
    fn nmi_injected(&mut self) {}
    /// The highest-priority interrupt waiting for the guest, if any.
    fn pending_interrupt(&mut self) -> Option<u8> {
        None
    }
    /// The task priority class (TPR bits 7:4), which the CPU keeps as the
    /// guest's CR8 while it runs.
    fn cr8(&self) -> u8 {
        0
    }
    /// The guest wrote CR8 (seen after an exit, or an intercepted MOV):
    /// false when the value is refused (#GP).
    fn write_cr8(&mut self, value: u64) -> bool {
        value <= 0xF
    }
    /// Guest writes of CR8 must exit: an interrupt waits that the task
    /// priority holds back, and lowering CR8 would let it in (as of the
    /// last `pending_interrupt`).
    fn cr8_writes_exit(&self) -> bool {
        false
    }
    /// The run loop injected `vector`.
    fn interrupt_injected(&mut self, _vector: u8) {}
    /// The guest can take an interrupt now: the vector to inject (the
    /// interrupt is then considered delivered), if one is still waiting.
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let vector = self.pending_interrupt()?;
        self.interrupt_injected(vector);
        Some(vector)
    }
    /// Checked after every exit: stop running this vCPU for now (its time
    /// slice is over, or its domain is shutting down).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// Port I/O on `port` is emulated by a device model outside the
    /// hypervisor (an HVM guest's stub domain).
    fn port_is_remote(&mut self, _port: u16, _size: u8) -> bool {
        false
    }
    /// Sends `req` to the remote device model; the vCPU waits for the
    /// answer, then finishes the instruction as `pending` says.
    fn send_ioreq(&mut self, _req: IoRequest, _pending: PendingIo) {}
    /// Queues a remote port write that needs no answer, if the device
    /// model takes it that way; true = done, the guest goes on.
    fn buffer_write(&mut self, _port: u16, _size: u8, _value: u32) -> bool {
        false
    }
    /// The answer to the request this vCPU waits for, once it has come.
    fn take_io_response(&mut self) -> Option<(PendingIo, u64)> {
        None
    }
    /// A request is outstanding (set by `send_ioreq`, possibly from inside
    /// an MMIO access): the run loop stops and the vCPU waits.
    fn waiting_for_io(&self) -> bool {
        false
    }
    /// An answered MMIO access waits for its instruction to be executed
    /// again: no interrupt may be injected before it.
    fn replay_pending(&self) -> bool {
        false
    }
    /// An MMIO instruction is about to be executed (again): its accesses
    /// are numbered from the first, so answers already in are replayed.
    fn mmio_instruction_begin(&mut self) {}
    /// The MMIO instruction completed: its answers are spent.
    fn mmio_instruction_done(&mut self) {}
}

/// An access waiting for a remote device model, and how to finish its
/// instruction once the answer (a value for reads) is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingIo {
    PortIn { size: u8, next_rip: u64 },
    PortOut { next_rip: u64 },
    /// `ins`/`outs` moving `count` elements; with `rep`, RCX counts down
    /// and the instruction restarts until it reaches zero.
    /// `split`: an INS element whose halves lie in frames that are not
    /// adjacent; the answer is a value written there.
    String { ins: bool, size: u8, count: u32, rep: bool, addr_size: u8, down: bool, next_rip: u64, split: Option<StringSplit> },
    /// An MMIO access: the instruction is executed again and the platform
    /// hands it the answer.
    Mmio,
}

/// A string I/O element that straddles two pages whose frames are not
/// adjacent: `first` bytes at `gpa`, the rest at `gpa2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringSplit {
    pub gpa: u64,
    pub first: u8,
    pub gpa2: u64,
}

/// The most elements one string I/O request moves (one page of them).
const MAX_STRING_COUNT: u64 = 4096;

fn addr_mask(addr_size: u8) -> u64 {
    match addr_size {
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// `reg` advanced by `delta` within an `addr_size`-byte register: 16-bit
/// forms keep the upper bits, 32-bit ones zero-extend as the CPU does.
fn step(reg: u64, delta: i64, addr_size: u8) -> u64 {
    let mask = addr_mask(addr_size);
    let v = reg.wrapping_add(delta as u64) & mask;
    if addr_size == 2 {
        (reg & !mask) | v
    } else {
        v
    }
}

/// Finishes the instruction of an answered request. Returns whether that
/// completed the instruction or one iteration of it (false for MMIO,
/// whose instruction runs again).
fn complete_io<V: VcpuOps>(vcpu: &mut V, pending: PendingIo, data: u64) -> bool {
    let r = vcpu.regs_mut();
    match pending {
        PendingIo::PortIn { size, next_rip } => {
            let value = data & size_mask(size);
            r.rax = if size == 4 { value } else { (r.rax & !size_mask(size)) | value };
            r.rip = next_rip;
        }
        PendingIo::PortOut { next_rip } => r.rip = next_rip,
        PendingIo::String { ins, size, count, rep, addr_size, down, next_rip, .. } => {
            let bytes = i64::from(count) * i64::from(size);
            let delta = if down { -bytes } else { bytes };
            if ins {
                r.rdi = step(r.rdi, delta, addr_size);
            } else {
                r.rsi = step(r.rsi, delta, addr_size);
            }
            if rep {
                r.rcx = step(r.rcx, -i64::from(count), addr_size);
                if r.rcx & addr_mask(addr_size) == 0 {
                    r.rip = next_rip;
                }
            } else {
                r.rip = next_rip;
            }
        }
        PendingIo::Mmio => return false,
    }
    true
}

/// Sends port I/O to the remote device model. Returns whether the vCPU
/// must now wait (false: nothing to do, e.g. `rep` with RCX = 0).
#[allow(clippy::too_many_arguments)]
fn remote_port_io<V: VcpuOps>(
    vcpu: &mut V,
    platform: &mut dyn Platform,
    port: u16,
    size: u8,
    write: bool,
    string: bool,
    rep: bool,
    addr_size: u8,
    segment: Option<u8>,
    next_rip: u64,
) -> Result<bool, String> {
    let regs = *vcpu.regs();
    let mut req = IoRequest {
        kind: KIND_PIO,
        dir: if write { DIR_WRITE } else { DIR_READ },
        size,
        flags: 0,
        count: 1,
        vcpu: 0,
        addr: u64::from(port),
        data: if write { regs.rax & size_mask(size) } else { 0 },
    };
    if !string {
        if write && platform.buffer_write(port, size, req.data as u32) {
            vcpu.regs_mut().rip = next_rip;
            return Ok(false);
        }
        let pending = if write { PendingIo::PortOut { next_rip } } else { PendingIo::PortIn { size, next_rip } };
        platform.send_ioreq(req, pending);
        return Ok(true);
    }
    let mask = addr_mask(addr_size);
    let mut count = if rep { regs.rcx & mask } else { 1 };
    if count == 0 {
        vcpu.regs_mut().rip = next_rip;
        return Ok(false);
    }
    let down = regs.rflags & (1 << 10) != 0;
    let mode = cpu_mode(vcpu);
    // INS writes to ES:rDI; OUTS reads from seg:rSI (DS unless overridden;
    // the CPU says which only with decode assists).
    let seg = match (write, segment) {
        (false, _) => 0,
        (true, Some(s)) => s,
        (true, None) => {
            let (bytes, len) = current_instruction(vcpu, platform, &mode)?;
            let seg = ferrite_x86::segment_override(&bytes[..len], mode.code_mode())
                .map_err(|e| format!("string I/O on port {:#x}: cannot decode {:02x?}: {:?}", port, &bytes[..len], e))?;
            seg.map_or(3, |s| s as u8)
        }
    };
    let offset = if write { regs.rsi & mask } else { regs.rdi & mask };
    // Linear addresses wrap at 4 GiB outside long mode.
    let linear_mask = if mode.paging.efer & (1 << 10) == 0 { 0xFFFF_FFFF } else { u64::MAX };
    let linear = vcpu.segment(seg).base.wrapping_add(offset) & linear_mask;
    // With TF set, a REP string instruction traps after every iteration
    // (SDM vol. 3B 18.3.1.4): one element at a time.
    if regs.rflags & RFLAGS_TF != 0 {
        count = count.min(1);
    }
    let size64 = u64::from(size);
    // Stay within the page the first element is on; the instruction
    // restarts for the rest. Only that first element can straddle a page.
    let page_offset = linear & 0xFFF;
    let straddles = page_offset + size64 > 0x1000;
    let in_page = if down { page_offset / size64 + 1 } else { (0x1000 - page_offset) / size64 };
    count = if straddles { 1 } else { count.min(in_page).min(MAX_STRING_COUNT) };
    let mem = platform.guest_memory().ok_or("no guest memory for string I/O")?;
    // The walk is the instruction's own: a user-mode access at CPL 3, and
    // a fault it takes goes to the guest.
    let user = mode.cpl == 3;
    let access = if write { ferrite_x86::walk::Access::read(user) } else { ferrite_x86::walk::Access::write(user) };
    let translate = |addr: u64| match ferrite_x86::walk::translate(mem, &mode.paging, addr, access) {
        Ok(gpa) => Ok(Ok(gpa)),
        Err(ferrite_x86::WalkError::PageFault(pf)) => Ok(Err((Some(pf.address), pf.error_code))),
        Err(ferrite_x86::WalkError::NonCanonical { .. }) => Ok(Err((None, 0))),
        Err(e) => Err(format!("string I/O on port {:#x}: cannot translate {:#x}: {:?}", port, addr, e)),
    };
    let fault = |vcpu: &mut V, f: (Option<u64>, u32)| match f {
        (Some(address), code) => vcpu.inject_page_fault(address, code),
        (None, _) => vcpu.inject_exception(GP_VECTOR, Some(0)),
    };
    let gpa = match translate(linear)? {
        Ok(gpa) => gpa,
        Err(f) => {
            fault(vcpu, f);
            return Ok(false);
        }
    };
    let mut split = None;
    if straddles {
        let first = 0x1000 - page_offset;
        let gpa2 = match translate(linear.wrapping_add(first) & linear_mask)? {
            Ok(gpa2) => gpa2,
            Err(f) => {
                fault(vcpu, f);
                return Ok(false);
            }
        };
        if gpa2 != gpa + first {
            // The element's two halves are in frames that are not
            // adjacent: move it as a value, not as guest memory.
            split = Some(StringSplit { gpa, first: first as u8, gpa2 });
        }
    }
    let pending =
        PendingIo::String { ins: !write, size, count: count as u32, rep, addr_size, down, next_rip, split: split.filter(|_| !write) };
    if let Some(s) = split {
        req.count = 1;
        if write {
            let mut buf = [0u8; 4];
            let n = usize::from(size).min(4);
            mem.read(s.gpa, &mut buf[..usize::from(s.first)])
                .and_then(|_| mem.read(s.gpa2, &mut buf[usize::from(s.first)..n]))
                .map_err(|e| format!("string I/O on port {:#x}: {}", port, e))?;
            req.data = u64::from(u32::from_le_bytes(buf));
        }
        platform.send_ioreq(req, pending);
        return Ok(true);
    }
    req.flags = FLAG_DATA_IS_GPA | if down { FLAG_DOWN } else { 0 };
    req.count = count as u32;
    req.data = gpa;
    platform.send_ioreq(req, pending);
    Ok(true)
}

/// An MMIO request for the remote device model (used by platforms from
/// their `mmio_read`/`mmio_write`).
pub fn mmio_request(gpa: u64, size: u8, write: bool, value: u64) -> IoRequest {
    IoRequest {
        kind: KIND_MMIO,
        dir: if write { DIR_WRITE } else { DIR_READ },
        size,
        flags: 0,
        count: 1,
        vcpu: 0,
        addr: gpa,
        data: if write { value } else { 0 },
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
    /// An access went to a remote device model; the vCPU waits for it.
    WaitingForIo,
}

/// The parts of a vCPU's own state that CPUID reflects, as the run loop
/// knows them.
#[derive(Debug, Clone, Copy)]
pub struct GuestCpuidState {
    /// CR4.OSXSAVE.
    pub osxsave: bool,
    pub xcr0: u64,
}

impl GuestCpuidState {
    pub fn view(self, vcpu: u32, vcpus: u32, apic_enabled: bool) -> ferrite_x86::cpuid::VcpuView {
        ferrite_x86::cpuid::VcpuView {
            vcpu,
            vcpus,
            osxsave: self.osxsave,
            apic_enabled,
            xcr0: self.xcr0,
            xcr0_supported: crate::arch::fpu::host_xcr0(),
        }
    }
}

/// The CPUID values a guest sees (`ferrite_x86::cpuid`: an allow-list
/// over the host's).
pub fn guest_cpuid(leaf: u32, subleaf: u32, view: &ferrite_x86::cpuid::VcpuView) -> [u32; 4] {
    let host = |l: u32, s: u32| {
        let r = crate::arch::cpu::cpuid(l, s);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    ferrite_x86::cpuid::guest_cpuid(&host, leaf, subleaf, view)
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
/// the number of exits. The loop itself (`run_loop`) runs on the chosen
/// backend's own vCPU type (`OnBackend`).
pub fn run(vcpu: &mut ArchVcpu, platform: &mut dyn Platform, max_exits: u64) -> (RunOutcome, u64) {
    struct Loop<'a> {
        platform: &'a mut dyn Platform,
        max_exits: u64,
    }
    impl OnBackend for Loop<'_> {
        type Output = (RunOutcome, u64);
        fn run<V: VcpuOps>(self, vcpu: &mut V) -> Self::Output {
            run_loop(vcpu, self.platform, self.max_exits)
        }
    }
    vcpu.with_backend(Loop { platform, max_exits })
}

fn run_loop<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, max_exits: u64) -> (RunOutcome, u64) {
    let mut exits = 0u64;
    // A vCPU only waits for a remote answer across runs (the loop returns
    // when it sends a request), so the answer is taken once, here.
    let mut replaying = false;
    if let Some((pending, data)) = platform.take_io_response() {
        replaying = pending == PendingIo::Mmio;
        if let PendingIo::String { size, split: Some(s), .. } = pending {
            // An INS element split across frames: its value goes to both.
            let bytes = (data as u32).to_le_bytes();
            let n = usize::from(size).min(4);
            if let Some(mem) = platform.guest_memory() {
                let first = usize::from(s.first).min(n);
                if mem.write(s.gpa, &bytes[..first]).and_then(|_| mem.write(s.gpa2, &bytes[first..n])).is_err() {
                    return (RunOutcome::Crashed(format!("string I/O: cannot write the answer to {:#x}/{:#x}", s.gpa, s.gpa2)), 0);
                }
            }
        }
        let step = Step::at(vcpu);
        if complete_io(vcpu, pending, data) {
            step.done(vcpu);
        }
    }
    loop {
        if max_exits != 0 && exits >= max_exits {
            return (RunOutcome::Crashed(format!("did not finish within {} exits", max_exits)), exits);
        }
        platform.before_entry();
        // An answered MMIO access waits for its instruction to run again:
        // no interrupt before it.
        if replaying {
            replaying = platform.replay_pending();
        }
        // A window (an exit as soon as the guest can take an interrupt) is
        // open only while something waits that cannot go in now. Nothing
        // waiting any more (the interrupt it was opened for can be
        // withdrawn, e.g. a PIC line masked meanwhile) closes it: left
        // open, every entry would exit at once and the guest would never
        // run another instruction.
        let mut window = false;
        if !replaying {
            // An NMI goes first; while its handler runs, the next one waits
            // for the IRET (the window gives an exit soon after it).
            if platform.nmi_pending() {
                if vcpu.inject_nmi() {
                    platform.nmi_injected();
                } else {
                    window = true;
                }
            }
            if platform.pending_interrupt().is_some() {
                complete_shadowed_hlt(vcpu, platform);
                if vcpu.interruptible() {
                    if let Some(vector) = platform.acknowledge_interrupt() {
                        vcpu.inject_interrupt(vector);
                    }
                } else {
                    window = true;
                }
            }
        }
        vcpu.request_interrupt_window(window);
        // The task priority is the LAPIC's TPR and, in 64-bit mode, the
        // guest's CR8, which the CPU keeps and the guest changes without
        // an exit: the two are put in step around every entry, before the
        // exit is handled (it may read the TPR). While the TPR holds an
        // interrupt back, CR8 writes exit, so lowering it lets the
        // interrupt in at once.
        let cr8 = platform.cr8();
        vcpu.set_cr8(cr8);
        vcpu.intercept_cr8_writes(platform.cr8_writes_exit());
        let exit = vcpu.run();
        platform.after_exit();
        exits += 1;
        let written = vcpu.cr8();
        if written != cr8 {
            platform.write_cr8(u64::from(written));
        }

        let mut step = Step::at(vcpu);
        if matches!(exit, VmExit::TaskSwitch { source: ferrite_x86::task::Source::Gate, .. }) {
            // An event delivered through a task gate, not an instruction
            // completed: no single step follows it.
            step.trap_flag = false;
        }
        let next = handle_exit(vcpu, platform, exit);
        // RIP moved: the instruction the guest stopped at was emulated to
        // its end, here and only here (one that faulted left RIP on itself).
        if vcpu.regs().rip != step.rip {
            step.done(vcpu);
        }
        match next {
            Next::Resume => {}
            Next::Halt => {
                // An event already waiting (an interrupt the STI shadow kept
                // out until the HLT, a single-step #DB after it) ends the
                // halt at once.
                if !vcpu.event_pending() && !platform.halt() {
                    return (RunOutcome::Halted, exits);
                }
            }
            Next::Stop(outcome) => return (outcome, exits),
        }
        if platform.should_stop() {
            return (RunOutcome::Halted, exits);
        }
    }
}

/// What the run loop does after handling an exit.
enum Next {
    Resume,
    /// The guest executed HLT (RIP is past it): it waits for an event.
    Halt,
    Stop(RunOutcome),
}

/// The guest's RIP and single-step flag when it stopped, so that an
/// instruction the hypervisor emulates ends as one the CPU executes.
struct Step {
    rip: u64,
    trap_flag: bool,
}

impl Step {
    fn at<V: VcpuOps>(vcpu: &V) -> Step {
        Step { rip: vcpu.regs().rip, trap_flag: vcpu.regs().rflags & RFLAGS_TF != 0 }
    }

    /// The emulated instruction (or one iteration of a REP string one)
    /// has completed: the interrupt shadow it sat in is over, and with TF
    /// set the single-step #DB follows it (SDM vol. 3B 18.3.1.4). An
    /// instruction in a MOV SS shadow still traps after itself: the shadow
    /// only delays the trap of the MOV SS to that point. None of the
    /// emulated instructions changes TF or loads SS.
    fn done<V: VcpuOps>(&self, vcpu: &mut V) {
        vcpu.clear_interrupt_shadow();
        if self.trap_flag {
            vcpu.inject_single_step();
        }
    }
}

/// Handles one exit: emulates the instruction behind it (advancing RIP) or
/// injects the fault it raises, or says why the vCPU stops.
fn handle_exit<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, exit: VmExit) -> Next {
    let crashed = |why: String| Next::Stop(RunOutcome::Crashed(why));
    match exit {
        VmExit::Io { port, size, write, string, rep, addr_size, segment, next_rip } if platform.port_is_remote(port, size) => {
            match remote_port_io(vcpu, platform, port, size, write, string, rep, addr_size, segment, next_rip) {
                Ok(true) => return Next::Stop(RunOutcome::WaitingForIo),
                Ok(false) => {}
                Err(why) => return crashed(why),
            }
        }
        VmExit::Io { port, size, write, string, rep, next_rip, .. } => {
            if string || rep {
                return crashed(format!("string I/O on port {:#x} is not supported yet", port));
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
            let state = cpuid_state(vcpu);
            let regs = vcpu.regs_mut();
            let [a, b, c, d] = platform.cpuid(regs.rax as u32, regs.rcx as u32, state);
            regs.rax = a.into();
            regs.rbx = b.into();
            regs.rcx = c.into();
            regs.rdx = d.into();
            regs.rip = next_rip;
        }
        VmExit::MsrRead { msr, next_rip } => {
            let value = match msr {
                MSR_PAT => Some(vcpu.guest_pat()),
                MSR_TSC_AUX if vcpu.has_tsc_aux() => Some(vcpu.tsc_aux()),
                MSR_EFER => Some(vcpu.efer()),
                _ => platform.msr_read(msr),
            };
            match value {
                Some(value) => {
                    let regs = vcpu.regs_mut();
                    regs.rax = value & 0xFFFF_FFFF;
                    regs.rdx = value >> 32;
                    regs.rip = next_rip;
                }
                None => vcpu.inject_exception(GP_VECTOR, Some(0)),
            }
        }
        VmExit::MsrWrite { msr, value, next_rip } => {
            let taken = match msr {
                // The guest's PAT is the VMCB's G_PAT: with nested paging it
                // is what the CPU applies to the guest's page tables. Each
                // byte must name a memory type (0, 1, 4, 5, 6, 7), else #GP.
                MSR_PAT if (0..8).all(|i| matches!((value >> (i * 8)) as u8, 0 | 1 | 4..=7)) => {
                    vcpu.set_guest_pat(value);
                    true
                }
                // Bits 63:32 are reserved.
                MSR_TSC_AUX if vcpu.has_tsc_aux() && value >> 32 == 0 => {
                    vcpu.set_tsc_aux(value);
                    true
                }
                MSR_EFER => cr::write_efer(vcpu, platform, value),
                _ => platform.msr_write(msr, value),
            };
            if taken {
                vcpu.regs_mut().rip = next_rip;
            } else {
                vcpu.inject_exception(GP_VECTOR, Some(0));
            }
        }
        VmExit::Xsetbv { next_rip } => {
            let regs = *vcpu.regs();
            let value = (regs.rdx << 32) | (regs.rax & 0xFFFF_FFFF);
            let host = crate::arch::fpu::host_xcr0();
            // XCR0 must include x87, only supported bits, AVX only with SSE.
            // XCR number from ECX (the upper half of RCX is ignored).
            let valid = regs.rcx as u32 == 0 && value & 1 != 0 && value & !host == 0 && (value & 4 == 0 || value & 2 != 0);
            if valid {
                vcpu.set_xcr0(value);
                vcpu.regs_mut().rip = next_rip;
            } else {
                vcpu.inject_exception(GP_VECTOR, Some(0));
            }
        }
        VmExit::CrWrite { cr, gpr, next_rip } => {
            if let Err(why) = cr::write_cr(vcpu, platform, cr, gpr, next_rip) {
                return crashed(why);
            }
        }
        VmExit::Hlt { next_rip } => {
            vcpu.regs_mut().rip = next_rip;
            return Next::Halt;
        }
        VmExit::Hypercall { next_rip } => {
            vcpu.regs_mut().rip = next_rip;
            if let Some(result) = platform.hypercall(vcpu.regs_mut()) {
                return Next::Stop(RunOutcome::Finished(result));
            }
        }
        VmExit::ExternalInterrupt | VmExit::InterruptWindow => {}
        VmExit::Iret => vcpu.iret_intercepted(),
        // A backend whose CPU lacks the guest's hypercall instruction
        // (VMMCALL on Intel, VMCALL on AMD) intercepts #UD: either one is a
        // hypercall on both backends.
        VmExit::Exception { vector: UD_VECTOR, error_code: None } if at_hypercall_instruction(vcpu, platform) => {
            let next_rip = vcpu.regs().rip.wrapping_add(3);
            return handle_exit(vcpu, platform, VmExit::Hypercall { next_rip });
        }
        // Given back to the guest: each delivery is its own exit, so a
        // guest whose #DB or #AC handling loops still gives the CPU back.
        VmExit::Exception { vector, error_code } => vcpu.inject_exception(vector, error_code),
        // The instruction runs again, now without exiting.
        VmExit::DebugRegisterAccess => vcpu.switch_debug_regs(),
        VmExit::NestedPageFault { gpa, .. } if platform.is_mmio(gpa) => {
            if let Err(why) = emulate_mmio(vcpu, platform, gpa) {
                return crashed(why);
            }
            if platform.waiting_for_io() {
                return Next::Stop(RunOutcome::WaitingForIo);
            }
        }
        VmExit::NestedPageFault { gpa, write, .. } => {
            return crashed(format!(
                "{} of unmapped guest-physical address {:#x} at rip {:#x} ({})",
                if write { "write" } else { "read" },
                gpa,
                vcpu.regs().rip,
                vcpu.describe_state()
            ))
        }
        VmExit::Shutdown => {
            return crashed(format!("triple fault (shutdown) at rip {:#x} ({})", vcpu.regs().rip, vcpu.describe_state()))
        }
        // QEMU's TCG refuses a guest MOV to CR3 this way (see `cr`).
        VmExit::InvalidState if vcpu.state_check().is_none() && cr::refused_mov_cr3(vcpu, platform) => {}
        VmExit::InvalidState => {
            let why = match vcpu.state_check() {
                Some(check) => format!("{}", check),
                None => String::from("no consistency check Ferrite knows of fails"),
            };
            return crashed(format!(
                "the CPU rejected the guest state: {} at rip {:#x} ({})",
                why,
                vcpu.regs().rip,
                vcpu.describe_state()
            ));
        }
        VmExit::TaskSwitch { selector, source, event, instruction_len } => {
            if let Err(why) = task::task_switch(vcpu, platform, selector, source, event, instruction_len) {
                return crashed(why);
            }
        }
        VmExit::Unsupported(what) => return crashed(format!("{} at rip {:#x}", what, vcpu.regs().rip)),
        VmExit::Other { code, info1, info2 } => {
            return crashed(format!(
                "unhandled exit {:#x} (info {:#x}, {:#x}) at rip {:#x}",
                code,
                info1,
                info2,
                vcpu.regs().rip
            ))
        }
    }
    Next::Resume
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

/// `sti; hlt` interrupted between the two (an exit in the STI shadow,
/// with the RIP on the HLT) while an interrupt waits: the HLT is done here,
/// so the interrupt arrives after it, as on hardware, where it is what
/// ends the halt. Entered with the HLT still to run, the guest could take
/// the interrupt first (QEMU's TCG does not restore the shadow on VMRUN),
/// return to the HLT and sleep with nothing left to wake it.
fn complete_shadowed_hlt<V: VcpuOps>(vcpu: &mut V, platform: &dyn Platform) {
    const HLT: u8 = 0xF4;
    if !vcpu.in_interrupt_shadow() || vcpu.regs().rflags & (1 << 9) == 0 {
        return;
    }
    let Some(mem) = platform.guest_memory() else { return };
    let mode = cpu_mode(vcpu);
    let rip = vcpu.regs().rip;
    if let Ok((bytes, len)) = ferrite_x86::walk::fetch_instruction(mem, &mode, rip) {
        if len >= 1 && bytes[0] == HLT {
            let next = if mode.cs_l { rip.wrapping_add(1) } else { rip.wrapping_add(1) & 0xFFFF_FFFF };
            vcpu.regs_mut().rip = next;
            vcpu.clear_interrupt_shadow();
        }
    }
}

/// The parts of the vCPU's state its CPUID reflects.
fn cpuid_state<V: VcpuOps>(vcpu: &V) -> GuestCpuidState {
    GuestCpuidState { osxsave: vcpu.paging_state().cr4 & CR4_OSXSAVE != 0, xcr0: vcpu.xcr0() }
}

/// The vCPU's current code mode (paging, CS, CPL).
fn cpu_mode<V: VcpuOps>(vcpu: &V) -> CpuMode {
    let ps = vcpu.paging_state();
    let cs = vcpu.code_segment();
    CpuMode {
        paging: PagingRegs { cr0: ps.cr0, cr3: ps.cr3, cr4: ps.cr4, efer: ps.efer, max_phys_bits: 48 },
        cs_base: cs.base,
        cs_l: cs.attrib & (1 << 9) != 0,
        cs_db: cs.attrib & (1 << 10) != 0,
        cpl: ((cs.attrib >> 5) & 3) as u8,
    }
}

const UD_VECTOR: u8 = 6;

/// Whether the instruction at RIP is VMMCALL or VMCALL (without prefixes).
fn at_hypercall_instruction<V: VcpuOps>(vcpu: &V, platform: &dyn Platform) -> bool {
    const VMMCALL: [u8; 3] = [0x0F, 0x01, 0xD9];
    const VMCALL: [u8; 3] = [0x0F, 0x01, 0xC1];
    let mode = cpu_mode(vcpu);
    match current_instruction(vcpu, platform, &mode) {
        Ok((bytes, len)) if len >= 3 => bytes[..3] == VMMCALL || bytes[..3] == VMCALL,
        _ => false,
    }
}

/// The bytes of the instruction at RIP: from the CPU with decode assists,
/// else (QEMU's TCG) fetched through the guest's page tables.
fn current_instruction<V: VcpuOps>(vcpu: &V, platform: &dyn Platform, mode: &CpuMode) -> Result<([u8; 15], usize), String> {
    if let Some(fetched) = vcpu.exit_instruction_bytes() {
        return Ok(fetched);
    }
    let rip = vcpu.regs().rip;
    let mem = platform.guest_memory().ok_or("no guest memory to fetch from")?;
    ferrite_x86::walk::fetch_instruction(mem, mode, rip).map_err(|e| format!("cannot fetch the instruction at rip {:#x}: {:?}", rip, e))
}

/// Emulates the instruction that faulted on device memory at `gpa`: fetch
/// it through the guest's page tables, decode it, do the access against the
/// device, write back registers and advance RIP. (TCG's SVM has no decode
/// assists, so the hypervisor always decodes.)
fn emulate_mmio<V: VcpuOps>(vcpu: &mut V, platform: &mut dyn Platform, gpa: u64) -> Result<(), String> {
    let mode = cpu_mode(vcpu);
    let rip = vcpu.regs().rip;
    let (bytes, len) =
        current_instruction(vcpu, platform, &mode).map_err(|e| format!("{} (touching MMIO {:#x})", e, gpa))?;
    let op = ferrite_x86::decode_mmio(&bytes[..len], mode.code_mode())
        .map_err(|e| format!("cannot emulate the instruction {:02x?} at rip {:#x} on MMIO {:#x}: {:?}", &bytes[..len], rip, gpa, e))?;
    let mut regs = to_x86(vcpu.regs());
    let mut rflags = vcpu.regs().rflags;
    platform.mmio_instruction_begin();
    // MOVD/MOVQ between an XMM register and device memory (SSE2, the one
    // 8-byte data move 32-bit code has): the low `size` bytes move; a load
    // zeroes the rest of the XMM register, as the SDM says.
    let mut xmm_load = None;
    match op.kind {
        MmioKind::WriteXmm { xmm, size } => {
            let mut low = [0u8; 8];
            low.copy_from_slice(&vcpu.xmm(xmm)[..8]);
            let value = u64::from_le_bytes(low) & (u64::MAX >> (64 - 8 * u32::from(size)));
            Bus { platform: &mut *platform, gpa }.write(size, value);
        }
        MmioKind::ReadXmm { xmm, size } => {
            let value = Bus { platform: &mut *platform, gpa }.read(size) & (u64::MAX >> (64 - 8 * u32::from(size)));
            xmm_load = Some((xmm, value));
        }
        _ => op
            .execute(&mut regs, &mut rflags, &mut Bus { platform: &mut *platform, gpa })
            .map_err(|e| format!("MMIO instruction at rip {:#x} on {:#x} not supported: {:?}", rip, gpa, e))?,
    }
    if platform.waiting_for_io() {
        // An access went to a remote device model: the instruction runs
        // again once it is answered, the answered accesses replayed
        // (`ferrite_x86::mmio_replay`), until none waits.
        return Ok(());
    }
    platform.mmio_instruction_done();
    if let Some((xmm, value)) = xmm_load {
        let mut reg = [0u8; 16];
        reg[..8].copy_from_slice(&value.to_le_bytes());
        vcpu.set_xmm(xmm, reg);
    }
    let r = vcpu.regs_mut();
    from_x86(&regs, r);
    r.rflags = rflags;
    r.rip = rip.wrapping_add(op.len as u64);
    Ok(())
}
