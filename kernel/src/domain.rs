//! Domains: a guest's memory, vCPUs, in-hypervisor platform devices,
//! console and lifecycle.
//!
//! A PVH domain (dom0 or a domU) needs no device model: the few platform
//! devices it touches (UART console, ACPI power management, reset port) are
//! emulated here, per domain.

use crate::console;
use crate::mm::guest::{GuestMemError, GuestMemory};
use crate::sched::{self, Runnable, SchedState, SliceEnd};
use crate::vcpu::{self, Platform, RunOutcome};
use crate::virt::svm::SvmVcpu;
use crate::virt::{Capabilities, EntryState, GuestRegs, Segment, VcpuOps};
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use ferrite_devmodel::uart16550::Uart16550;
use ferrite_loader::acpi::PlatformLayout;
use log::{error, info};
use spin::Mutex;

const COM1_BASE: u16 = 0x3F8;

/// What happens when a domain powers off, reboots or crashes (xl's
/// `on_poweroff` / `on_reboot` / `on_crash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainState {
    Running,
    PoweredOff,
    Rebooting,
    Crashed(String),
}

/// Everything needed to (re)build a PVH domain.
#[derive(Clone)]
pub struct PvhSpec {
    pub name: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub kernel: &'static [u8],
    pub initrd: Option<&'static [u8]>,
    pub cmdline: String,
    /// pCPUs each vCPU may use (bit i = pCPU i); vCPU i uses `affinity[i % len]`.
    pub affinity: Vec<u64>,
    pub privileged: bool,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
}

/// The in-hypervisor platform devices of one domain.
struct Devices {
    uart: Uart16550,
    /// Output bytes not yet ending in a newline.
    console_line: Vec<u8>,
    layout: PlatformLayout,
}

pub struct Domain {
    pub id: u32,
    pub name: String,
    mem: GuestMemory,
    vcpus: Mutex<Vec<Arc<Vcpu>>>,
    devices: Mutex<Devices>,
    state: Mutex<DomainState>,
    intercepts: ((u64, usize), (u64, usize)),
    pub spec: PvhSpec,
}

static NEXT_DOMAIN_ID: AtomicU32 = AtomicU32::new(0);
static DOMAINS: Mutex<Vec<Arc<Domain>>> = Mutex::new(Vec::new());

pub struct Vcpu {
    pub id: u32,
    domain: Weak<Domain>,
    arch: Mutex<SvmVcpu>,
    sched: SchedState,
    affinity: u64,
}

/// Adapts `GuestMemory` to the loader's interface.
struct LoaderMemory<'a>(&'a GuestMemory);

impl ferrite_loader::GuestMemory for LoaderMemory<'_> {
    fn size(&self) -> u64 {
        self.0.ram_bytes()
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), ferrite_loader::LoadError> {
        self.0.write(gpa, data).map_err(|_| ferrite_loader::LoadError::GuestWrite { gpa, len: data.len() as u64 })
    }

    fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), ferrite_loader::LoadError> {
        self.0.fill(gpa, len, byte).map_err(|_| ferrite_loader::LoadError::GuestWrite { gpa, len })
    }
}

fn segment(s: ferrite_loader::paging::SegmentState) -> Segment {
    Segment { selector: s.selector, base: s.base, limit: s.limit, attrib: s.attrib }
}

/// MSRs the hardware switches through the VMCB: the guest may access them
/// directly.
const PASSTHROUGH_MSRS: [u32; 11] = [
    0x174, 0x175, 0x176, // SYSENTER_CS/ESP/EIP
    0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, // STAR, LSTAR, CSTAR, SFMASK
    0xC000_0100, 0xC000_0101, 0xC000_0102, // FS_BASE, GS_BASE, KERNEL_GS_BASE
    0xC000_0103, // TSC_AUX
];

fn allow_msr(msrpm: u64, msr: u32) {
    let (base, index) = match msr {
        0..=0x1FFF => (0u64, msr),
        0xC000_0000..=0xC000_1FFF => (0x800, msr - 0xC000_0000),
        0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
        _ => return,
    };
    let bit = u64::from(index) * 2;
    let byte = msrpm + base + bit / 8;
    // SAFETY: `byte` lies inside the 8 KiB permission map allocated for
    // this domain (offsets < 0x1800), identity mapped.
    unsafe {
        let p = byte as *mut u8;
        *p &= !(0b11 << (bit % 8));
    }
}

impl Domain {
    /// Builds a PVH domain from `spec`: memory, kernel, vCPUs. vCPU 0 starts
    /// at the PVH entry; the others wait for INIT/SIPI from the guest.
    pub fn create_pvh(spec: PvhSpec, caps: Capabilities) -> Result<Arc<Domain>, String> {
        let mem = GuestMemory::new(spec.memory_bytes).map_err(|e: GuestMemError| format!("{}: {}", spec.name, e))?;
        let opts = ferrite_loader::layout::LoadOptions {
            start_info_flags: if spec.privileged { 0b11 } else { 0 },
            ..Default::default()
        };
        let plan = ferrite_loader::layout::load_with_options(
            spec.kernel,
            spec.initrd,
            &spec.cmdline,
            &mut LoaderMemory(&mem),
            spec.vcpus,
            &opts,
        )
        .map_err(|e| format!("{}: cannot load the kernel: {}", spec.name, e))?;
        let st = plan.entry.cpu_state();
        let entry = EntryState {
            rip: st.rip,
            rbx: st.rbx,
            rsi: st.rsi,
            rflags: st.rflags,
            cr0: st.cr0,
            cr3: st.cr3,
            cr4: st.cr4,
            efer: st.efer,
            cs: segment(st.cs),
            ds: segment(st.ds),
            tr: segment(st.tr),
            gdtr_base: st.gdtr_base,
            gdtr_limit: st.gdtr_limit,
        };
        let intercepts = crate::mm::alloc_intercept_maps().ok_or_else(|| format!("{}: out of memory", spec.name))?;
        for msr in PASSTHROUGH_MSRS {
            allow_msr((intercepts.1).0, msr);
        }
        let id = NEXT_DOMAIN_ID.fetch_add(1, Ordering::SeqCst);
        let npt_root = mem.npt_root();
        let asid = id % caps.asids.saturating_sub(1).max(1) + 1;
        let domain = Arc::new(Domain {
            id,
            name: spec.name.clone(),
            mem,
            vcpus: Mutex::new(Vec::new()),
            devices: Mutex::new(Devices { uart: Uart16550::new(), console_line: Vec::new(), layout: plan.platform }),
            state: Mutex::new(DomainState::Running),
            intercepts,
            spec,
        });
        let mut vcpus = Vec::new();
        for i in 0..domain.spec.vcpus {
            let mut arch = SvmVcpu::new(caps, npt_root, asid, (intercepts.0).0, (intercepts.1).0);
            if i == 0 {
                arch.set_entry_state(&entry);
            }
            let affinity = if domain.spec.affinity.is_empty() {
                u64::MAX
            } else {
                domain.spec.affinity[i as usize % domain.spec.affinity.len()]
            };
            vcpus.push(Arc::new(Vcpu {
                id: i,
                domain: Arc::downgrade(&domain),
                arch: Mutex::new(arch),
                sched: SchedState::new_blocked(),
                affinity,
            }));
        }
        *domain.vcpus.lock() = vcpus.clone();
        DOMAINS.lock().push(domain.clone());
        info!(
            "domain {} ({}): {} MiB, {} vCPUs, {:?} kernel entry {:#x}, cmdline \"{}\"",
            id,
            domain.name,
            domain.mem.ram_bytes() >> 20,
            domain.spec.vcpus,
            plan.kind,
            entry.rip,
            domain.spec.cmdline
        );
        for (i, v) in vcpus.iter().enumerate() {
            let r: Arc<dyn Runnable> = v.clone();
            sched::add_blocked(r.clone());
            if i == 0 {
                sched::wake(&r);
            }
        }
        Ok(domain)
    }

    pub fn state(&self) -> DomainState {
        self.state.lock().clone()
    }

    /// Ends the domain's life with `state`: its vCPUs stop and it leaves
    /// the domain list (memory is freed when the last vCPU lets go).
    fn shut_down(&self, state: DomainState) {
        {
            let mut s = self.state.lock();
            if *s != DomainState::Running {
                return;
            }
            *s = state.clone();
        }
        self.flush_console();
        match &state {
            DomainState::PoweredOff => info!("domain {} ({}) powered off", self.id, self.name),
            DomainState::Rebooting => info!("domain {} ({}) rebooting", self.id, self.name),
            DomainState::Crashed(why) => error!("domain {} ({}) crashed: {}", self.id, self.name, why),
            DomainState::Running => {}
        }
        for v in self.vcpus.lock().drain(..) {
            let r: Arc<dyn Runnable> = v;
            sched::stop(&r);
        }
        DOMAINS.lock().retain(|d| d.id != self.id);
        let restart = match &state {
            DomainState::PoweredOff => self.spec.on_poweroff,
            DomainState::Rebooting => self.spec.on_reboot,
            DomainState::Crashed(_) => self.spec.on_crash,
            DomainState::Running => Action::Destroy,
        } == Action::Restart;
        if restart {
            if let Some(caps) = crate::virt_caps() {
                match Domain::create_pvh(self.spec.clone(), caps) {
                    Ok(d) => info!("domain {} ({}) restarted as domain {}", self.id, self.name, d.id),
                    Err(e) => error!("restarting {}: {}", self.name, e),
                }
            }
        }
        crate::domain_stopped(self, &state);
    }

    fn console_out(&self, devices: &mut Devices) {
        for b in devices.uart.take_output() {
            if b == b'\n' {
                self.emit_line(&devices.console_line);
                devices.console_line.clear();
            } else if b != b'\r' {
                devices.console_line.push(b);
                if devices.console_line.len() >= 512 {
                    self.emit_line(&devices.console_line);
                    devices.console_line.clear();
                }
            }
        }
    }

    fn emit_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        console::print_fmt(format_args!("({}) {}\n", self.name, text));
    }

    fn flush_console(&self) {
        let mut d = self.devices.lock();
        self.console_out(&mut d);
        if !d.console_line.is_empty() {
            let line = core::mem::take(&mut d.console_line);
            self.emit_line(&line);
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        crate::mm::free_intercept_maps(self.intercepts.0, self.intercepts.1);
    }
}

/// The platform as one vCPU of a domain sees it during a time slice.
struct VcpuPlatform<'a> {
    domain: &'a Domain,
    slice_end_us: u64,
    /// Set when the guest did something that ends the domain.
    shutdown: Option<DomainState>,
    /// The guest executed HLT.
    halted: bool,
}

impl VcpuPlatform<'_> {
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        let mut d = self.domain.devices.lock();
        match port {
            COM1_BASE..=0x3FF if size == 1 => u32::from(d.uart.read((port - COM1_BASE) as u8)),
            _ => {
                let _ = &mut d;
                // No device: the bus floats high.
                u32::MAX >> (32 - 8 * u32::from(size))
            }
        }
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        let mut d = self.domain.devices.lock();
        let layout = d.layout;
        match port {
            COM1_BASE..=0x3FF if size == 1 => {
                d.uart.write((port - COM1_BASE) as u8, value as u8);
                self.domain.console_out(&mut d);
            }
            p if p == layout.reset_port && size == 1 && value as u8 & 0x04 != 0 => {
                self.shutdown = Some(DomainState::Rebooting);
            }
            p if p == layout.pm1a_cnt && size >= 2 => {
                // SLP_EN (bit 13) with SLP_TYP (bits 10-12) = S5: power off.
                let typ = ((value >> 10) & 7) as u8;
                if value & (1 << 13) != 0 && typ == layout.slp_typ_s5 {
                    self.shutdown = Some(DomainState::PoweredOff);
                }
            }
            _ => {}
        }
    }
}

impl Platform for VcpuPlatform<'_> {
    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        self.port_read(port, size)
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        self.port_write(port, size, value)
    }

    fn halt(&mut self) -> bool {
        // Blocks until an interrupt.
        self.halted = true;
        false
    }

    fn hypercall(&mut self, regs: &mut GuestRegs) -> Option<u64> {
        // No hypercalls are defined for guests yet: -ENOSYS, as Xen says.
        regs.rax = (-38i64) as u64;
        None
    }

    fn should_stop(&mut self) -> bool {
        self.shutdown.is_some()
            || self.domain.state() != DomainState::Running
            || crate::arch::time::uptime_us() >= self.slice_end_us
    }
}

impl Runnable for Vcpu {
    fn run_slice(self: Arc<Self>, slice_end_us: u64) -> SliceEnd {
        let Some(domain) = self.domain.upgrade() else {
            return SliceEnd::Stopped;
        };
        if domain.state() != DomainState::Running {
            return SliceEnd::Stopped;
        }
        let mut platform = VcpuPlatform { domain: &domain, slice_end_us, shutdown: None, halted: false };
        let (outcome, _exits) = {
            let mut arch = self.arch.lock();
            let r = vcpu::run_loop(&mut *arch, &mut platform, 0);
            crate::sched::take_pending_interrupts();
            r
        };
        if let Some(state) = platform.shutdown.take() {
            domain.shut_down(state);
            return SliceEnd::Stopped;
        }
        match outcome {
            RunOutcome::Crashed(why) => {
                domain.shut_down(DomainState::Crashed(format!("vcpu {}: {}", self.id, why)));
                SliceEnd::Stopped
            }
            RunOutcome::Finished(_) => SliceEnd::Preempted,
            RunOutcome::Halted if domain.state() != DomainState::Running => SliceEnd::Stopped,
            RunOutcome::Halted if platform.halted => SliceEnd::Blocked,
            RunOutcome::Halted => SliceEnd::Preempted,
        }
    }

    fn affinity(&self) -> u64 {
        self.affinity
    }

    fn wake_deadline_us(&self) -> Option<u64> {
        None
    }

    fn sched(&self) -> &SchedState {
        &self.sched
    }
}

/// Number of domains still alive.
pub fn count() -> usize {
    DOMAINS.lock().len()
}
