//! Domains: a guest's memory, vCPUs, in-hypervisor platform devices,
//! console and lifecycle.
//!
//! A PVH domain (dom0 or a domU) needs no device model: the few platform
//! devices it touches (UART console, ACPI power management, reset port) are
//! emulated here, per domain. An HVM domain has the interrupt controllers
//! and timers here too; everything else goes to its stub domain (see
//! `hvm.rs` and `stubdom.rs`), which is a domain of its own.

use crate::console;
use crate::hvm::HvmBoot;
use crate::ioreq::IoreqServer;
use crate::stubdom::StubBackends;
use crate::mm::guest::{GuestMemError, GuestMemory};
use crate::sched::{self, Runnable, SchedState, SliceEnd};
use crate::vcpu::{self, Platform, RunOutcome};
use crate::mm::blob::Blob;
use ferrite_devmodel::console_limit::{LineBudget, Verdict};
use ferrite_x86::mmio_replay::{MmioAccess, MmioReplay, Step as MmioStep};
use crate::virt::{ArchVcpu, Capabilities, EntryState, GuestRegs, Segment, VcpuConfig, VcpuOps};
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use crate::platform::{self, Devices, Effects, HostClock, VcpuEvent};
use ferrite_devmodel::acpi_pm::PowerEvent;
use ferrite_devmodel::lapic::{Lapic, LapicConfig, LapicEffect, Lint1Delivery, MSR_TSC_DEADLINE};
use log::{error, info, warn};
use spin::Mutex;


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
    /// Stopped by the administrator (`xl destroy`): never restarted.
    Destroyed,
}

/// How a domain boots.
#[derive(Clone)]
pub enum Boot {
    /// A kernel entered directly (PVH note or bzImage 64-bit protocol),
    /// with virtio-blk disks.
    Pvh { kernel: Blob, initrd: Option<Blob>, cmdline: String, disks: Vec<crate::vdisk::DiskConfig>, vifs: Vec<crate::vnet::VifConfig> },
    /// Firmware from the reset vector, devices from a stub domain.
    Hvm(HvmBoot),
    /// A stub domain (built together with its guest, never on its own).
    Stub,
}

/// Everything needed to (re)build a domain.
#[derive(Clone)]
pub struct DomainSpec {
    pub name: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub boot: Boot,
    /// pCPUs each vCPU may use (bit i = pCPU i); vCPU i uses `affinity[i % len]`.
    pub affinity: Vec<u64>,
    pub privileged: bool,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
}

/// What a domain is to the others.
pub(crate) enum Role {
    Pvh,
    /// An HVM guest: its requests go through `ioreq` to the stub domain.
    Hvm { ioreq: Arc<IoreqServer>, stub: Mutex<Weak<Domain>> },
    /// A stub domain serving one HVM guest.
    Stub(StubBackends),
}

pub struct Domain {
    pub id: u32,
    pub name: String,
    pub(crate) mem: GuestMemory,
    pub(crate) vcpus: Mutex<Vec<Arc<Vcpu>>>,
    pub(crate) devices: Mutex<Devices>,
    pub(crate) role: Role,
    /// PVH: virtio-blk disks (`vdisk`), slot i at virtio-mmio window i.
    pub(crate) vdisks: Vec<Arc<crate::vdisk::VirtioDisk>>,
    /// dom0: its channel to the management service, in the virtio-mmio
    /// slot after its disks (`vsock`).
    pub(crate) vsock: spin::Once<Arc<crate::vsock::VsockDevice>>,
    /// PVH: virtio-net NICs (`vnet`), in the slots after the disks and
    /// the vsock device, each a port on its bridge while the domain runs.
    pub(crate) vnets: spin::Once<Vec<Arc<crate::vnet::NetDevice>>>,
    /// HVM: the PIC's INTR output as of its last change, so vCPU 0 can
    /// check it on every entry without taking the device lock.
    pic_output: core::sync::atomic::AtomicBool,
    /// Which ports the in-hypervisor devices decode.
    ports: platform::PortMap,
    /// Added to the host TSC for this domain's vCPUs: its TSC starts near
    /// 0 when it is created, as a machine's does at power-on.
    tsc_offset: core::sync::atomic::AtomicU64,
    /// Paused by the administrator: its vCPUs are not scheduled.
    paused: core::sync::atomic::AtomicBool,
    /// `state` is Running (checked on every exit, so without its lock).
    running: core::sync::atomic::AtomicBool,
    /// Console output not yet ending in a newline.
    console_line: Mutex<Vec<u8>>,
    /// How many of its lines may still reach the serial console now
    /// (`ferrite_devmodel::console_limit`); a muted focused domain's bytes
    /// are dropped until its next line is allowed.
    console_budget: Mutex<(LineBudget, bool)>,
    /// The newest console output (what `xl console` would replay).
    console_ring: Mutex<console::LogRing>,
    /// Everything the guest wrote to its console, raw (prompts included),
    /// for `xl console`; read by position (`console::LogRing::read_from`).
    console_raw: Mutex<console::LogRing>,
    state: Mutex<DomainState>,
    intercepts: ((u64, usize), (u64, usize)),
    /// Uptime (TSC ns) when it was built, for `xl uptime`.
    created_ns: u64,
    pub spec: DomainSpec,
}

mod admin;
pub use admin::*;

static NEXT_DOMAIN_ID: AtomicU32 = AtomicU32::new(0);
static DOMAINS: Mutex<Vec<Arc<Domain>>> = Mutex::new(Vec::new());

pub struct Vcpu {
    pub id: u32,
    domain: Weak<Domain>,
    arch: Mutex<ArchVcpu>,
    /// Separate from `arch` (held while the vCPU runs) so other vCPUs and
    /// devices can post interrupts to it at any time.
    lapic: Mutex<Lapic>,
    /// A SIPI arrived: start in real mode at this page on the next slice.
    start_page: Mutex<Option<u8>>,
    /// HVM: the access this vCPU waits on its stub domain for.
    io_wait: Mutex<Option<vcpu::PendingIo>>,
    /// HVM: the answer to an MMIO access, for when its instruction runs again.
    mmio_replay: Mutex<MmioReplay>,
    /// While blocked: when its timers need it (TSC ns; `u64::MAX` none),
    /// computed as it blocked, so the scheduler reads it without locks.
    /// 0 forces a wake-up (another vCPU reprogrammed a shared timer).
    wake_at_ns: core::sync::atomic::AtomicU64,
    /// Blocked until an event that is not one of its timers (its stub
    /// domain's answer, a SIPI): the scheduler ignores `wake_at_ns`, which
    /// still caches the deadline for the next slice.
    event_only: core::sync::atomic::AtomicBool,
    /// A stub domain's vCPU blocked in the WAIT hypercall.
    in_wait: core::sync::atomic::AtomicBool,
    /// An NMI arrived and has not been injected yet (NMIs do not queue:
    /// one more while one waits is the same one).
    nmi_pending: core::sync::atomic::AtomicBool,
    /// False only while the LAPIC's IRR is known to be empty: set after
    /// anything that may set an IRR bit (an accepted interrupt, a timer
    /// expiry, a write to the LAPIC), cleared under the LAPIC lock when the
    /// IRR is seen empty. Saves the lock on the entry path.
    irr_hint: core::sync::atomic::AtomicBool,
    /// Nothing is cached about its timers yet.
    first_slice: core::sync::atomic::AtomicBool,
    /// Another vCPU reprogrammed a timer this vCPU runs (vCPU 0: the
    /// domain's PIT, RTC, PM timer): recompute its deadline.
    timers_changed: core::sync::atomic::AtomicBool,
    sched: SchedState,
    /// pCPUs it may run on (bit i = pCPU i); `xl vcpu-pin` changes it.
    affinity: core::sync::atomic::AtomicU64,
    /// Time spent in its slices (ns), for `xl list` and `xl vcpu-list`.
    run_ns: core::sync::atomic::AtomicU64,
}

/// Every domain's RAM is allocated when it is built, so what domains hold
/// never exceeds what the host has; this says so up front, clearly,
/// instead of failing half-way through the allocation.
pub(crate) fn check_memory(name: &str, bytes: u64) -> Result<(), String> {
    let free = crate::mm::free_bytes();
    // Page tables and per-vCPU structures come on top of the RAM itself.
    let need = bytes.saturating_add(bytes / 256).saturating_add(1 << 20);
    if need > free {
        return Err(format!(
            "{}: needs {} MiB of host memory but only {} MiB are free (lower its memory=, or dom0_mem=)",
            name,
            need.div_ceil(1 << 20),
            free >> 20
        ));
    }
    Ok(())
}

/// Adapts `GuestMemory` to the loader's interface.
pub(crate) struct LoaderMemory<'a>(pub(crate) &'a GuestMemory);

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
/// (TSC_AUX is not among them: VMRUN does not switch it, so the vCPU keeps
/// its own and the backend loads it before entry.)
const PASSTHROUGH_MSRS: [u32; 10] = [
    0x174, 0x175, 0x176, // SYSENTER_CS/ESP/EIP
    0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, // STAR, LSTAR, CSTAR, SFMASK
    0xC000_0100, 0xC000_0101, 0xC000_0102, // FS_BASE, GS_BASE, KERNEL_GS_BASE
];

/// Lets the guest access ports `first..first + count` without exiting.
fn allow_ports(iopm: u64, first: u16, count: u16) {
    for port in first..first.saturating_add(count) {
        crate::mm::clear_iopm_bit(iopm, port);
    }
}

pub(crate) fn allow_msr(msrpm: u64, msr: u32) {
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

/// Domains being rebuilt after a reboot (`on_reboot`/`on_poweroff`/
/// `on_crash` = restart): the old id, the name, and whether a destroy came
/// meanwhile.
static RESTARTING: Mutex<Vec<(u32, String, bool)>> = Mutex::new(Vec::new());

/// A destroy by name for a domain that is being restarted: it is destroyed
/// once rebuilt (every rebuild of that name in progress). False when no
/// domain of that name is restarting.
pub(crate) fn cancel_restart(name: &str) -> bool {
    let mut found = false;
    for entry in RESTARTING.lock().iter_mut().filter(|(_, n, _)| n == name) {
        entry.2 = true;
        found = true;
    }
    found
}

impl Domain {
    /// Builds and starts a domain from `spec`.
    pub fn create(spec: DomainSpec, caps: Capabilities) -> Result<Arc<Domain>, String> {
        match &spec.boot {
            Boot::Pvh { .. } => Self::create_pvh(spec, caps),
            Boot::Hvm(_) => crate::hvm::create(spec, caps),
            Boot::Stub => Err(format!("{}: a stub domain is only built with its guest", spec.name)),
        }
    }

    /// Builds a PVH domain from `spec`: memory, kernel, vCPUs. vCPU 0 starts
    /// at the PVH entry; the others wait for INIT/SIPI from the guest.
    fn create_pvh(spec: DomainSpec, caps: Capabilities) -> Result<Arc<Domain>, String> {
        let Boot::Pvh { kernel, initrd, cmdline, disks, vifs } = &spec.boot else {
            return Err(format!("{}: not a PVH domain", spec.name));
        };
        let disks = disks.clone();
        let vdisks = crate::vdisk::build(&disks).map_err(|e| format!("{}: {}", spec.name, e))?;
        let wanted: Vec<(String, bool)> = disks.iter().map(|d| (d.target(), !d.read_only)).collect();
        crate::hvm::check_disk_sharing(&spec.name, &wanted, None)?;
        // Owned: the load plan borrows it, and `spec` moves into the domain.
        let cmdline = String::from(cmdline.as_str());
        check_memory(&spec.name, spec.memory_bytes)?;
        let mut mem = GuestMemory::new(spec.memory_bytes).map_err(|e: GuestMemError| format!("{}: {}", spec.name, e))?;
        if let Some(page) = crate::virt::unpaged_identity_map() {
            mem.map_rom(crate::virt::UNPAGED_IDENTITY_MAP_GPA, &page[..]).map_err(|e| format!("{}: {}", spec.name, e))?;
            if spec.vcpus > 1 {
                log::warn!(
                    "{}: only vCPU 0 will run: the others start in real mode (INIT/SIPI), and this CPU's VMX has no unrestricted guest",
                    spec.name
                );
            }
        }
        let mut layout = platform::guest_layout();
        for d in &vdisks {
            layout.virtio_mmio[d.slot()] = true;
        }
        // dom0 reaches the management service over vsock, with no network.
        let vsock = (spec.privileged && vdisks.len() < ferrite_loader::acpi::MAX_VIRTIO_MMIO)
            .then(|| crate::vsock::VsockDevice::new(vdisks.len()));
        if let Some(v) = &vsock {
            layout.virtio_mmio[v.slot()] = true;
        }
        let first_nic = vdisks.len() + usize::from(vsock.is_some());
        if first_nic + vifs.len() > ferrite_loader::acpi::MAX_VIRTIO_MMIO {
            return Err(format!(
                "{}: {} disks and {} vifs are more than the {} virtio devices a PVH domain can have",
                spec.name,
                vdisks.len(),
                vifs.len(),
                ferrite_loader::acpi::MAX_VIRTIO_MMIO
            ));
        }
        let vnets: Vec<_> = vifs.iter().enumerate().map(|(i, v)| crate::vnet::NetDevice::new(first_nic + i, v.clone())).collect();
        for n in &vnets {
            layout.virtio_mmio[n.slot()] = true;
        }
        let opts = ferrite_loader::layout::LoadOptions {
            start_info_flags: if spec.privileged { 0b11 } else { 0 },
            platform: layout,
        };
        let plan = ferrite_loader::layout::load_with_options(kernel, initrd.as_deref(), &cmdline, &mut LoaderMemory(&mem), spec.vcpus, &opts)
            .map_err(|e| format!("{}: cannot load the kernel: {}", spec.name, e))?;
        let st = plan.entry.cpu_state();
        let entry = EntryState {
            rip: st.rip,
            rbx: st.rbx,
            rsi: st.rsi,
            rdi: 0,
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
        let devices = Devices::new_pvh(plan.platform);
        let kind = plan.kind;
        let domain = Self::build(spec, mem, devices, Role::Pvh, vdisks, entry, caps)?;
        if let Err(e) = crate::hvm::check_disk_sharing(&domain.name, &wanted, Some(domain.id)) {
            domain.shut_down(DomainState::Crashed(e.clone()));
            return Err(e);
        }
        if let Some(v) = vsock {
            let host: Arc<dyn crate::vdisk::DiskHost> = domain.clone();
            v.register(Arc::downgrade(&host));
            domain.vsock.call_once(|| v);
        }
        let host: Arc<dyn crate::vdisk::DiskHost> = domain.clone();
        for n in &vnets {
            if let Err(e) = n.attach(Arc::downgrade(&host)) {
                let e = format!("{}: vif {}: {}", domain.name, n.config().mac, e);
                domain.vnets.call_once(|| vnets.clone());
                domain.shut_down(DomainState::Crashed(e.clone()));
                return Err(e);
            }
            info!("domain {} ({}): vif {} on bridge {}, virtio-net", domain.id, domain.name, n.config().mac, n.config().bridge);
        }
        domain.vnets.call_once(|| vnets);
        for d in &domain.vdisks {
            let d = &disks[d.slot()];
            let what = match &d.source {
                crate::vdisk::DiskSource::Host(name) => format!("host disk {}", name),
                crate::vdisk::DiskSource::Nbd(nbd) => format!("NBD export {}", nbd.name()),
            };
            info!("domain {} ({}): disk {} is {} ({}), virtio-blk", domain.id, domain.name, d.vdev, what, if d.read_only { "r" } else { "w" });
        }
        info!(
            "domain {} ({}): {} MiB, {} vCPUs, {:?} kernel entry {:#x}, cmdline \"{}\"",
            domain.id,
            domain.name,
            domain.mem.ram_bytes() >> 20,
            domain.spec.vcpus,
            kind,
            entry.rip,
            cmdline
        );
        domain.start();
        Ok(domain)
    }

    /// The common part of building a domain: intercepts, vCPUs (vCPU 0 in
    /// `entry`, the others waiting for INIT/SIPI), the domain list. It
    /// does not run until `start`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        spec: DomainSpec,
        mem: GuestMemory,
        devices: Devices,
        role: Role,
        vdisks: Vec<Arc<crate::vdisk::VirtioDisk>>,
        entry: EntryState,
        caps: Capabilities,
    ) -> Result<Arc<Domain>, String> {
        let intercepts = crate::mm::alloc_intercept_maps().ok_or_else(|| format!("{}: out of memory", spec.name))?;
        if let Some(port) = platform::host_pm_timer_port() {
            // The host's PM timer, read directly (`platform::guest_layout`).
            allow_ports(intercepts.0 .0, port, 4);
        }
        for msr in PASSTHROUGH_MSRS {
            allow_msr((intercepts.1).0, msr);
        }
        let id = NEXT_DOMAIN_ID.fetch_add(1, Ordering::SeqCst);
        let npt_root = mem.npt_root();
        let asid = id % caps.asids.saturating_sub(1).max(1) + 1;
        let hvm = matches!(role, Role::Hvm { .. });
        let ports = devices.port_map();
        let domain = Arc::new(Domain {
            id,
            name: spec.name.clone(),
            mem,
            vcpus: Mutex::new(Vec::new()),
            devices: Mutex::new(devices),
            role,
            vdisks,
            vsock: spin::Once::new(),
            vnets: spin::Once::new(),
            pic_output: core::sync::atomic::AtomicBool::new(false),
            ports,
            tsc_offset: core::sync::atomic::AtomicU64::new(0u64.wrapping_sub(crate::arch::cpu::rdtsc())),
            paused: core::sync::atomic::AtomicBool::new(false),
            running: core::sync::atomic::AtomicBool::new(true),
            console_line: Mutex::new(Vec::new()),
            console_budget: Mutex::new((LineBudget::new(crate::arch::time::uptime_us()), false)),
            console_ring: Mutex::new(console::LogRing::new(16 * 1024)),
            console_raw: Mutex::new(console::LogRing::new(16 * 1024)),
            state: Mutex::new(DomainState::Running),
            intercepts,
            created_ns: crate::arch::time::now_ns(),
            spec,
        });
        let mut vcpus = Vec::new();
        for i in 0..domain.spec.vcpus {
            let cfg = VcpuConfig { nested_root: npt_root, tag: asid, iopm_pa: (intercepts.0).0, msrpm_pa: (intercepts.1).0 };
            let Some(mut arch) = ArchVcpu::new(caps, &cfg) else {
                return Err(format!("{}: out of memory for vCPU {}", domain.name, i));
            };
            if i == 0 {
                arch.set_entry_state(&entry);
            }
            let affinity = if domain.spec.affinity.is_empty() {
                u64::MAX
            } else {
                domain.spec.affinity[i as usize % domain.spec.affinity.len()]
            };
            let lapic_cfg = LapicConfig {
                x2apic: true,
                tsc_hz: crate::arch::time::tsc_hz(),
                ..LapicConfig::new(i, i == 0)
            };
            let mut lapic = Lapic::new(lapic_cfg);
            if hvm && i == 0 {
                lapic.set_virtual_wire();
            }
            vcpus.push(Arc::new(Vcpu {
                id: i,
                domain: Arc::downgrade(&domain),
                arch: Mutex::new(arch),
                lapic: Mutex::new(lapic),
                start_page: Mutex::new(None),
                io_wait: Mutex::new(None),
                mmio_replay: Mutex::new(MmioReplay::default()),
                wake_at_ns: core::sync::atomic::AtomicU64::new(u64::MAX),
                in_wait: core::sync::atomic::AtomicBool::new(false),
                nmi_pending: core::sync::atomic::AtomicBool::new(false),
                irr_hint: core::sync::atomic::AtomicBool::new(true),
                first_slice: core::sync::atomic::AtomicBool::new(true),
                event_only: core::sync::atomic::AtomicBool::new(false),
                timers_changed: core::sync::atomic::AtomicBool::new(false),
                sched: SchedState::new_blocked(),
                affinity: core::sync::atomic::AtomicU64::new(affinity),
                run_ns: core::sync::atomic::AtomicU64::new(0),
            }));
        }
        *domain.vcpus.lock() = vcpus;
        DOMAINS.lock().push(domain.clone());
        if domain.spec.privileged {
            // As in Xen, console input goes to dom0 once it exists.
            console::set_input_focus(Some(id));
        }
        Ok(domain)
    }

    /// Lets the scheduler run the domain's vCPU 0.
    pub(crate) fn start(&self) {
        for (i, v) in self.vcpus.lock().iter().enumerate() {
            let r: Arc<dyn Runnable> = v.clone();
            sched::add_blocked(r.clone());
            if i == 0 {
                sched::wake(&r);
            }
        }
    }

    /// vCPU `index` as the scheduler sees it.
    pub(crate) fn runnable(&self, index: usize) -> Option<Arc<dyn Runnable>> {
        let v: Arc<dyn Runnable> = self.vcpus.lock().get(index)?.clone();
        Some(v)
    }

    /// Pauses or unpauses the domain (xl pause/unpause): a paused
    /// domain's vCPUs are not scheduled; interrupts for them wait.
    pub fn set_paused(&self, paused: bool) {
        if self.paused.swap(paused, Ordering::SeqCst) == paused {
            return;
        }
        info!("domain {} ({}) {}", self.id, self.name, if paused { "paused" } else { "unpaused" });
        // Paused: running vCPUs stop at their next exit; unpaused: every
        // vCPU looks again (one halted before the pause halts again).
        for v in self.vcpus.lock().iter() {
            let r: Arc<dyn Runnable> = v.clone();
            sched::wake(&r);
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// What this domain's TSC reads relative to the host's.
    pub fn tsc_offset(&self) -> u64 {
        self.tsc_offset.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> DomainState {
        self.state.lock().clone()
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Ends the domain's life with `state`: its vCPUs stop and it leaves
    /// the domain list (memory is freed when the last vCPU lets go).
    pub(crate) fn shut_down(&self, state: DomainState) {
        {
            let mut s = self.state.lock();
            if *s != DomainState::Running {
                return;
            }
            *s = state.clone();
            self.running.store(false, Ordering::SeqCst);
        }
        self.flush_console();
        let dropped = self.console_budget.lock().0.pending_drops();
        if dropped > 0 {
            self.report_console_drops(dropped);
        }
        match &state {
            DomainState::PoweredOff => info!("domain {} ({}) powered off", self.id, self.name),
            DomainState::Rebooting => info!("domain {} ({}) rebooting", self.id, self.name),
            DomainState::Crashed(why) => error!("domain {} ({}) crashed: {}", self.id, self.name, why),
            DomainState::Destroyed => info!("domain {} ({}) destroyed", self.id, self.name),
            DomainState::Running => {}
        }
        for v in self.vcpus.lock().drain(..) {
            let r: Arc<dyn Runnable> = v;
            sched::stop(&r);
        }
        DOMAINS.lock().retain(|d| d.id != self.id);
        // Before a restart claims them again.
        crate::hvm::release_disks(self.id);
        for n in self.vnets.get().into_iter().flatten() {
            n.detach(&self.name);
        }
        if let Role::Stub(b) = &self.role {
            for n in &b.nics {
                n.detach(&b.guest.name);
            }
        }
        let restart = match &state {
            DomainState::PoweredOff => self.spec.on_poweroff,
            DomainState::Rebooting => self.spec.on_reboot,
            DomainState::Crashed(_) => self.spec.on_crash,
            DomainState::Running | DomainState::Destroyed => Action::Destroy,
        } == Action::Restart;
        // Restart before the partner below goes: "no domains left" must
        // not be concluded in between.
        if restart {
            if let Some(caps) = crate::virt_caps() {
                // While it is rebuilt the domain is in no list: a destroy
                // by name meanwhile is remembered here and carried out.
                RESTARTING.lock().push((self.id, self.name.clone(), false));
                let created = Domain::create(self.spec.clone(), caps);
                let cancelled = {
                    let mut r = RESTARTING.lock();
                    let i = r.iter().position(|(id, _, _)| *id == self.id);
                    i.map(|i| r.swap_remove(i).2).unwrap_or(false)
                };
                match created {
                    Ok(d) if cancelled => {
                        info!("domain {} ({}) restarted as domain {}, which was destroyed meanwhile", self.id, self.name, d.id);
                        d.shut_down(DomainState::Destroyed);
                    }
                    Ok(d) => info!("domain {} ({}) restarted as domain {}", self.id, self.name, d.id),
                    Err(e) => error!("restarting {}: {}", self.name, e),
                }
            }
        }
        // A stub domain and its guest live and die together.
        match &self.role {
            Role::Hvm { ioreq, stub } => {
                ioreq.set_stub_vcpu(None);
                let stub = stub.lock().upgrade();
                if let Some(stub) = stub {
                    stub.shut_down(DomainState::PoweredOff);
                }
            }
            Role::Stub(b) => {
                let guest_state = match &state {
                    DomainState::Crashed(why) => DomainState::Crashed(format!("its device model ({}) crashed: {}", self.name, why)),
                    _ => DomainState::Crashed(format!("its device model ({}) stopped", self.name)),
                };
                b.guest.shut_down(guest_state);
            }
            Role::Pvh => {}
        }
        crate::domain_stopped(self, &state);
    }

    /// Moves the UART's output to the hypervisor console, a line at a
    /// time, prefixed with the domain's name.
    ///
    /// The domain that has console input gets its bytes shown at once
    /// (prompts have no newline); the others a whole line at a time, so
    /// lines of different domains never interleave.
    fn console_out(&self, devices: &mut Devices) {
        let out = devices.uart.take_output();
        self.console_bytes(&out);
    }

    /// Output of the domain's console (its UART, here or in its stub domain).
    ///
    /// Every byte is kept in the domain's own rings; what reaches the
    /// serial console is limited to a budget of lines (a flood is dropped
    /// and counted, never waited for). The focused domain's bytes show as
    /// they come until a line is over the budget, then nothing until the
    /// budget allows a line again.
    pub(crate) fn console_bytes(&self, out: &[u8]) {
        if out.is_empty() {
            return;
        }
        self.console_raw.lock().push(out);
        let focused = console::input_focus() == Some(self.id);
        let mut line = self.console_line.lock();
        for &b in out {
            if b == b'\r' {
                continue;
            }
            if b != b'\n' {
                if focused && !self.console_budget.lock().1 {
                    if line.is_empty() {
                        console::domain_line_start(&self.name);
                    }
                    let ch = [b];
                    console::write_guest_str(core::str::from_utf8(&ch).unwrap_or("?"));
                }
                line.push(b);
                // An unfinished line is capped whether or not the domain has
                // the console: a guest (or a stub through its console
                // hypercall) must not grow the hypervisor's heap at will.
                if line.len() < MAX_CONSOLE_LINE {
                    continue;
                }
            }
            self.end_line(&line, focused);
            line.clear();
        }
    }

    /// A complete console line (or one cut at `MAX_CONSOLE_LINE`).
    fn end_line(&self, line: &[u8], focused: bool) {
        {
            let mut ring = self.console_ring.lock();
            ring.push(line);
            ring.push(b"\n");
        }
        if focused {
            // Shown already, byte by byte (unless muted); the budget says
            // whether the next line will be.
            let was_muted = self.console_budget.lock().1;
            if !was_muted {
                console::write_guest_str("\n");
            }
            let allowed = self.console_line_allowed();
            self.console_budget.lock().1 = !allowed;
        } else if self.console_line_allowed() {
            let text = String::from_utf8_lossy(line);
            console::domain_line(&self.name, &text);
        }
    }

    /// Takes one line from the console budget; reports earlier drops when
    /// a line is let through again.
    fn console_line_allowed(&self) -> bool {
        let verdict = self.console_budget.lock().0.line(crate::arch::time::uptime_us());
        match verdict {
            Verdict::Print { dropped_before } => {
                if dropped_before > 0 {
                    self.report_console_drops(dropped_before);
                }
                true
            }
            Verdict::Drop => false,
        }
    }

    fn report_console_drops(&self, n: u64) {
        warn!(
            "domain {} ({}): {} console lines not shown (more than {} lines a second; `xl console` has them)",
            self.id,
            self.name,
            n,
            ferrite_devmodel::console_limit::LINES_PER_SEC
        );
    }

    fn flush_console(&self) {
        let mut d = self.devices.lock();
        self.console_out(&mut d);
        drop(d);
        let line = core::mem::take(&mut *self.console_line.lock());
        if !line.is_empty() {
            self.end_line(&line, false);
        }
    }

    /// Acts on what a device access asked for: console output, power
    /// events, interrupt deliveries.
    pub(crate) fn apply(&self, fx: Effects, devices: &mut Devices) -> Option<DomainState> {
        if fx.console {
            self.console_out(devices);
        }
        self.deliver_all(&fx.deliveries);
        if fx.pic {
            self.pic_output.store(devices.pic_pending(), Ordering::SeqCst);
            // The PIC's INTR goes to vCPU 0: let it look.
            if let Some(v) = self.runnable(0) {
                sched::wake(&v);
            }
        }
        fx.power.map(|p| match p {
            PowerEvent::PowerOff => DomainState::PoweredOff,
            PowerEvent::Reset => DomainState::Rebooting,
        })
    }

    fn deliver_all(&self, deliveries: &[ferrite_devmodel::ioapic::Delivery]) {
        if deliveries.is_empty() {
            return;
        }
        let vcpus = self.vcpus.lock().clone();
        for d in deliveries {
            let events = {
                let guards: Vec<_> = vcpus.iter().map(|v| v.lapic.lock()).collect();
                let refs: Vec<&Lapic> = guards.iter().map(|g| &**g).collect();
                platform::route_delivery(&refs, d)
            };
            for (i, ev) in events {
                vcpus[i].post(ev);
            }
        }
    }

    /// Routes an IPI from vCPU `source`.
    fn send_ipi(&self, req: &ferrite_devmodel::lapic::IpiRequest, source: usize) {
        let vcpus = self.vcpus.lock().clone();
        let events = {
            let guards: Vec<_> = vcpus.iter().map(|v| v.lapic.lock()).collect();
            let refs: Vec<&Lapic> = guards.iter().map(|g| &**g).collect();
            platform::route_ipi(&refs, req, source)
        };
        for (i, ev) in events {
            vcpus[i].post(ev);
        }
    }
}

impl crate::vdisk::DiskHost for Domain {
    fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    fn set_gsi(&self, gsi: u8, level: bool) {
        if !self.running.load(Ordering::SeqCst) {
            return; // a request finishing after its domain stopped
        }
        let mut fx = Effects::default();
        let mut devices = self.devices.lock();
        devices.set_gsi(gsi, level, &mut fx);
        if let Some(state) = self.apply(fx, &mut devices) {
            drop(devices);
            self.shut_down(state);
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Vcpu {
    /// Posts an interrupt or start-up event and wakes the vCPU.
    fn post(self: &Arc<Self>, ev: VcpuEvent) {
        match ev {
            VcpuEvent::Fixed { vector, level } => {
                if !self.lapic.lock().accept(vector, level) {
                    return;
                }
                // After the IRR bit is set and before the wake-up/kick.
                self.irr_hint.store(true, Ordering::Release);
            }
            VcpuEvent::Init => {
                log::debug!("vcpu {}: INIT", self.id);
                self.lapic.lock().receive_init()
            }
            VcpuEvent::Startup(_) if !crate::virt::chosen().is_some_and(|c| c.real_mode) => {
                // The vCPU would start in real mode, which the CPU cannot
                // run (VMX without unrestricted guest): it stays waiting,
                // and the guest's OS sees a CPU that never came up.
                log::warn!("vcpu {}: SIPI not taken: real mode needs VMX's unrestricted guest, which this CPU lacks", self.id);
                return;
            }
            VcpuEvent::Startup(vector) => {
                // The start page is recorded under the LAPIC lock, so the
                // vCPU never sees "no longer waiting for SIPI" without it
                // (it would run on from its reset state: an AP executing
                // whatever is at 0xFFFF0).
                let mut lapic = self.lapic.lock();
                match lapic.receive_sipi(vector) {
                    Some(page) => {
                        log::debug!("vcpu {}: SIPI, starting at {:#x}", self.id, u32::from(page) << 12);
                        *self.start_page.lock() = Some(page)
                    }
                    None => return,
                }
            }
            VcpuEvent::Nmi => self.nmi_pending.store(true, Ordering::SeqCst),
        }
        let r: Arc<dyn Runnable> = self.clone();
        sched::wake(&r);
    }

    /// The platform's NMI line pulsed this vCPU's LINT1 pin (the NMI
    /// button): what its LAPIC made of it, now posted.
    fn signal_lint1(self: &Arc<Self>) -> Lint1Delivery {
        let delivery = self.lapic.lock().signal_lint1();
        match delivery {
            Lint1Delivery::Nmi => self.post(VcpuEvent::Nmi),
            Lint1Delivery::Interrupt => {
                // In the IRR already (LINT1 as a fixed interrupt).
                self.irr_hint.store(true, Ordering::Release);
                let r: Arc<dyn Runnable> = self.clone();
                sched::wake(&r);
            }
            Lint1Delivery::Dropped => {}
        }
        delivery
    }

    /// The earliest time this vCPU must run again without an interrupt:
    /// its LAPIC timer, and for vCPU 0 the domain's timed devices.
    fn next_deadline_ns(&self, domain: &Domain) -> Option<u64> {
        let lapic = self.lapic.lock().next_timer_deadline_ns();
        // vCPU 0 runs the domain's timed devices (a stub domain has none).
        let devices = if self.id == 0 && !matches!(domain.role, Role::Stub(_)) {
            domain.devices.lock().next_deadline_ns()
        } else {
            None
        };
        [lapic, devices].into_iter().flatten().min()
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
    vcpu: &'a Arc<Vcpu>,
    /// When to give up the pCPU, and the host timer's next event.
    sched: crate::sched::SliceClock,
    /// Set when the guest did something that ends the domain.
    shutdown: Option<DomainState>,
    /// The guest executed HLT.
    halted: bool,
    /// The earliest LAPIC/device deadline (TSC ns) as of the last check;
    /// timers are only advanced when it has passed or something changed.
    deadline_ns: Option<u64>,
    /// A device or LAPIC was touched since the deadline was computed.
    deadline_stale: bool,
    /// An access was sent to the stub domain during this run.
    waiting: bool,
    /// TSC nanoseconds taken before the latest entry.
    now_ns: u64,
    /// The LAPIC's task priority class (TPR bits 7:4, the guest's CR8),
    /// kept here so that putting it into the CPU before every entry takes
    /// no lock: only this vCPU's own accesses change it while it runs.
    cr8: u8,
    /// The TPR holds back an interrupt waiting in the IRR (as of the last
    /// `pending_interrupt`): the guest's CR8 writes must exit.
    cr8_exits: bool,
}

/// The longest unfinished console line a domain keeps (bytes); a longer
/// one is cut.
const MAX_CONSOLE_LINE: usize = 512;

/// IA32_APIC_BASE.EN.
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// MSRs with nothing behind them that guests commonly touch: reads give
/// the value here, writes are accepted and dropped.
fn benign_msr(msr: u32) -> Option<u64> {
    Some(match msr {
        0x8B => 0,                              // microcode patch level
        0x1A0 => 1,                             // MISC_ENABLE: fast strings
        0xC001_0015 => 0,                       // AMD HWCR
        0xC001_0010 => 0,                       // AMD SYSCFG
        0xC001_1029 => 0,                       // AMD DE_CFG
        0xC001_0140 | 0xC001_0141 => 0,         // AMD OSVW
        // AMD's legacy performance counters (PERF_CTL0-3, PERF_CTR0-3):
        // they have no CPUID bit and always exist; with no virtual PMU
        // they count nothing, as under KVM and Xen without a vPMU.
        0xC001_0000..=0xC001_0007 => 0,
        0xC001_001F => 0,                       // AMD NB_CFG
        _ => return None,
    })
}

impl VcpuPlatform<'_> {
    fn effects(&mut self, fx: Effects, devices: &mut Devices) {
        if let Some(state) = self.domain.apply(fx, devices) {
            self.shutdown = Some(state);
        }
    }

    fn lapic_effect(&mut self, effect: LapicEffect) {
        // Called after every guest write to the LAPIC (MSR or MMIO): such a
        // write may set an IRR bit (self-IPI) or unblock one (EOI, TPR).
        self.vcpu.irr_hint.store(true, Ordering::Release);
        match effect {
            LapicEffect::None => {}
            LapicEffect::Ipi(req) => self.domain.send_ipi(&req, self.vcpu.id as usize),
            LapicEffect::EoiBroadcast(vector) => {
                let mut fx = Effects::default();
                let mut d = self.domain.devices.lock();
                d.eoi(vector, &mut fx);
                self.effects(fx, &mut d);
            }
        }
    }

    fn ioreq(&self) -> Option<&IoreqServer> {
        match &self.domain.role {
            Role::Hvm { ioreq, .. } => Some(ioreq),
            _ => None,
        }
    }

    /// Whether the PIC may interrupt this vCPU now (HVM vCPU 0 in
    /// virtual-wire mode) and has something.
    fn pic_interrupt(&self) -> bool {
        if self.vcpu.id != 0 || !matches!(self.domain.role, Role::Hvm { .. }) {
            return false;
        }
        self.domain.pic_output.load(Ordering::SeqCst) && self.vcpu.lapic.lock().accepts_pic_interrupts()
    }

    /// Sends an access to the stub domain; this vCPU then waits.
    fn forward(&mut self, mut req: ferrite_abi::IoRequest, pending: vcpu::PendingIo) {
        let Some(ioreq) = self.ioreq() else { return };
        req.vcpu = self.vcpu.id;
        *self.vcpu.io_wait.lock() = Some(pending);
        ioreq.send(&req);
        self.waiting = true;
    }

    /// An MMIO access outside the hypervisor's devices (HVM): ROM reads
    /// come from the image, ROM writes are dropped, the rest goes to the
    /// stub domain. Returns the value for reads.
    fn remote_mmio(&mut self, gpa: u64, size: u8, write: bool, value: u64) -> u64 {
        if self.domain.mem.is_rom(gpa) {
            let mut buf = [0u8; 8];
            let n = usize::from(size.min(8));
            if !write && self.domain.mem.read(gpa, &mut buf[..n]).is_ok() {
                return u64::from_le_bytes(buf);
            }
            return u64::MAX;
        }
        let access = MmioAccess { gpa, size, write, value: if write { value } else { 0 } };
        let step = self.vcpu.mmio_replay.lock().access(access);
        match step {
            MmioStep::Replay(answer) => answer,
            MmioStep::Send => {
                self.forward(vcpu::mmio_request(gpa, size, write, value), vcpu::PendingIo::Mmio);
                0
            }
            // An earlier access of this instruction waits: it runs again.
            MmioStep::Skip => 0,
            MmioStep::TooMany => {
                self.shutdown = Some(DomainState::Crashed(format!("an instruction made more than {} MMIO accesses at {:#x}", ferrite_x86::mmio_replay::MAX_ACCESSES, gpa)));
                0
            }
        }
    }

    /// The offset of `gpa` in the LAPIC's page at its base. Also while
    /// the LAPIC is disabled or in x2APIC mode (SDM 10.12.2: its MMIO then
    /// behaves as a disabled xAPIC's): the page reads as all ones and
    /// ignores writes (`Lapic::read_mmio`), where it used to be a hole
    /// that crashed the domain.
    fn lapic_page(&self, gpa: u64) -> Option<u64> {
        let base = self.vcpu.lapic.lock().mmio_base();
        (gpa >= base && gpa < base + 0x1000).then(|| gpa - base)
    }

    /// The NIC whose window `gpa` is in, and the offset there.
    fn vnet_at(&self, gpa: u64) -> Option<(&Arc<crate::vnet::NetDevice>, u64)> {
        self.domain.vnets.get()?.iter().find_map(|n| Some((n, n.offset(gpa)?)))
    }

    /// A guest access wrote the LAPIC (`write`): done under its lock, with
    /// the task priority read back for the CPU's copy (CR8).
    fn write_lapic<T>(&mut self, write: impl FnOnce(&mut Lapic) -> T) -> T {
        let mut lapic = self.vcpu.lapic.lock();
        let r = write(&mut lapic);
        self.cr8 = lapic.cr8();
        r
    }
}

impl Platform for VcpuPlatform<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32, guest: vcpu::GuestCpuidState) -> [u32; 4] {
        let apic_enabled = self.vcpu.lapic.lock().apic_base() & APIC_BASE_ENABLE != 0;
        vcpu::guest_cpuid(leaf, subleaf, &guest.view(self.vcpu.id, self.domain.spec.vcpus, apic_enabled))
    }

    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        // Reads do not move device deadlines (line changes they cause are
        // delivered right here), so the cached deadline stays valid.
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        let v = d.port_read(port, size, &mut fx);
        self.effects(fx, &mut d);
        // No device: the bus floats high.
        v.unwrap_or(u32::MAX >> (32 - 8 * u32::from(size)))
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        self.deadline_stale = true;
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        let timers = d.is_timer_port(port, size);
        d.port_write(port, size, value, &mut fx);
        self.effects(fx, &mut d);
        drop(d);
        if timers && self.vcpu.id != 0 {
            // vCPU 0 runs the shared timers: if it is blocked, its cached
            // wake-up time may be stale now.
            if let Some(v0) = self.domain.vcpus.lock().first() {
                v0.timers_changed.store(true, Ordering::SeqCst);
                v0.wake_at_ns.store(0, Ordering::SeqCst);
                crate::sched::deadline_lowered(0);
            }
        }
    }

    fn halt(&mut self) -> bool {
        // Keep running when an interrupt is already waiting; else block.
        let lapic_pending = self.vcpu.lapic.lock().highest_pending().is_some();
        if lapic_pending || self.pic_interrupt() || self.vcpu.nmi_pending.load(Ordering::SeqCst) {
            return true;
        }
        self.halted = true;
        false
    }

    fn hypercall(&mut self, regs: &mut GuestRegs) -> Option<u64> {
        if let Role::Stub(backends) = &self.domain.role {
            if crate::stubdom::hypercall(self.domain, backends, regs) == crate::stubdom::After::Wait {
                self.halted = true;
                self.vcpu.in_wait.store(true, Ordering::SeqCst);
            }
            return None;
        }
        // No hypercalls are defined for guests yet: -ENOSYS, as Xen says.
        regs.rax = (-38i64) as u64;
        None
    }

    fn port_is_remote(&mut self, port: u16, size: u8) -> bool {
        matches!(self.domain.role, Role::Hvm { .. }) && !self.domain.ports.is_local(port, size)
    }

    fn send_ioreq(&mut self, req: ferrite_abi::IoRequest, pending: vcpu::PendingIo) {
        self.forward(req, pending);
    }

    fn buffer_write(&mut self, port: u16, size: u8, value: u32) -> bool {
        self.ioreq().is_some_and(|io| io.try_buffer_write(port, size, value))
    }

    fn take_io_response(&mut self) -> Option<(vcpu::PendingIo, u64)> {
        let ioreq = self.ioreq()?;
        let mut wait = self.vcpu.io_wait.lock();
        let pending = (*wait)?;
        let data = ioreq.take_answer(self.vcpu.id)?;
        *wait = None;
        if pending == vcpu::PendingIo::Mmio {
            self.vcpu.mmio_replay.lock().answered(data);
        }
        Some((pending, data))
    }

    fn waiting_for_io(&self) -> bool {
        self.waiting
    }

    fn replay_pending(&self) -> bool {
        matches!(self.domain.role, Role::Hvm { .. }) && self.vcpu.mmio_replay.lock().replay_pending()
    }

    fn mmio_instruction_begin(&mut self) {
        self.vcpu.mmio_replay.lock().begin();
    }

    fn mmio_instruction_done(&mut self) {
        self.vcpu.mmio_replay.lock().clear();
    }

    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        match msr {
            0x1B => Some(self.vcpu.lapic.lock().apic_base()),
            0x10 => Some(crate::arch::cpu::rdtsc().wrapping_add(self.domain.tsc_offset())),
            // The LAPIC model keeps the deadline in host TSC (its timers run
            // on host time); the guest sees it in its own.
            MSR_TSC_DEADLINE => self.vcpu.lapic.lock().read_msr(MSR_TSC_DEADLINE, &HostClock).ok().map(|d| {
                if d == 0 {
                    0
                } else {
                    d.wrapping_add(self.domain.tsc_offset())
                }
            }),
            m if Lapic::handles_msr(m) => self.vcpu.lapic.lock().read_msr(m, &HostClock).ok(),
            m => benign_msr(m),
        }
    }

    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        self.deadline_stale = true;
        match msr {
            0x1B => {
                self.vcpu.irr_hint.store(true, Ordering::Release);
                self.write_lapic(|l| l.set_apic_base(value)).is_ok()
            }
            // Writing the TSC moves the domain's offset (all its vCPUs keep
            // one TSC, as on one machine).
            0x10 => {
                let offset = value.wrapping_sub(crate::arch::cpu::rdtsc());
                self.domain.tsc_offset.store(offset, Ordering::SeqCst);
                true
            }
            MSR_TSC_DEADLINE => {
                let host = if value == 0 { 0 } else { value.wrapping_sub(self.domain.tsc_offset()) };
                let r = self.write_lapic(|l| l.write_msr(MSR_TSC_DEADLINE, host, &HostClock));
                match r {
                    Ok(effect) => {
                        self.lapic_effect(effect);
                        true
                    }
                    Err(_) => false,
                }
            }
            m if Lapic::handles_msr(m) => {
                let r = self.write_lapic(|l| l.write_msr(m, value, &HostClock));
                match r {
                    Ok(effect) => {
                        self.lapic_effect(effect);
                        true
                    }
                    Err(_) => false,
                }
            }
            m => benign_msr(m).is_some(),
        }
    }

    fn guest_memory(&self) -> Option<&GuestMemory> {
        Some(&self.domain.mem)
    }

    fn is_mmio(&mut self, gpa: u64) -> bool {
        self.lapic_page(gpa).is_some()
            || (platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa)
            || crate::vdisk::at(&self.domain.vdisks, gpa).is_some()
            || self.domain.vsock.get().is_some_and(|v| v.offset(gpa).is_some())
            || self.vnet_at(gpa).is_some()
            // HVM: everything that is not RAM is some device's (or ROM).
            || (matches!(self.domain.role, Role::Hvm { .. }) && !self.domain.mem.contains(gpa, 1))
    }

    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        if let Some(off) = self.lapic_page(gpa) {
            return self.vcpu.lapic.lock().read_mmio(off, size, &HostClock);
        }
        if let Some((disk, off)) = crate::vdisk::at(&self.domain.vdisks, gpa) {
            return disk.mmio_read(off, size);
        }
        if let Some((v, off)) = self.domain.vsock.get().and_then(|v| Some((v, v.offset(gpa)?))) {
            return v.mmio_read(off, size);
        }
        if let Some((n, off)) = self.vnet_at(gpa) {
            return n.mmio_read(off, size);
        }
        if !(platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa) {
            return self.remote_mmio(gpa, size, false, 0);
        }
        self.domain.devices.lock().ioapic_read(gpa - platform::IOAPIC_BASE, size)
    }

    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) {
        self.deadline_stale = true;
        if let Some(off) = self.lapic_page(gpa) {
            let effect = self.write_lapic(|l| l.write_mmio(off, size, value, &HostClock));
            self.lapic_effect(effect);
            return;
        }
        if let Some((disk, off)) = crate::vdisk::at(&self.domain.vdisks, gpa) {
            if let Some(domain) = self.vcpu.domain.upgrade() {
                let host: Arc<dyn crate::vdisk::DiskHost> = domain;
                disk.mmio_write(&host, off, size, value);
            }
            return;
        }
        if let Some((v, off)) = self.domain.vsock.get().and_then(|v| Some((v, v.offset(gpa)?))) {
            v.mmio_write(self.domain, off, size, value);
            return;
        }
        if let Some((n, off)) = self.vnet_at(gpa) {
            n.mmio_write(self.domain, off, size, value);
            return;
        }
        if !(platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa) {
            self.remote_mmio(gpa, size, true, value);
            return;
        }
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        d.ioapic_write(gpa - platform::IOAPIC_BASE, size, value, &mut fx);
        self.effects(fx, &mut d);
    }

    fn pending_interrupt(&mut self) -> Option<u8> {
        // Checked before every entry: skip the LAPIC lock while its IRR
        // is known to be empty (see `Vcpu::irr_hint`).
        self.cr8_exits = false;
        if self.vcpu.irr_hint.load(Ordering::Acquire) {
            let lapic = self.vcpu.lapic.lock();
            let vector = lapic.highest_pending();
            self.cr8_exits = vector.is_none() && lapic.tpr_holds_back();
            if !lapic.irr_nonempty() {
                self.vcpu.irr_hint.store(false, Ordering::Release);
            }
            drop(lapic);
            if vector.is_some() {
                return vector;
            }
        }
        // The PIC's vector is only known at the acknowledge cycle.
        self.pic_interrupt().then_some(0)
    }

    fn cr8(&self) -> u8 {
        self.cr8
    }

    fn write_cr8(&mut self, value: u64) -> bool {
        // Lowering it may let a held-back interrupt in.
        self.vcpu.irr_hint.store(true, Ordering::Release);
        self.write_lapic(|l| l.write_cr8(value)).is_ok()
    }

    fn cr8_writes_exit(&self) -> bool {
        self.cr8_exits
    }

    fn nmi_pending(&self) -> bool {
        self.vcpu.nmi_pending.load(Ordering::SeqCst)
    }

    fn nmi_injected(&mut self) {
        self.vcpu.nmi_pending.store(false, Ordering::SeqCst);
    }

    fn interrupt_injected(&mut self, vector: u8) {
        self.vcpu.lapic.lock().ack(vector);
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        {
            let mut lapic = self.vcpu.lapic.lock();
            if let Some(vector) = lapic.highest_pending() {
                lapic.ack(vector);
                return Some(vector);
            }
        }
        if self.pic_interrupt() {
            let mut d = self.domain.devices.lock();
            let vector = d.pic_acknowledge();
            self.domain.pic_output.store(d.pic_pending(), Ordering::SeqCst);
            return vector;
        }
        None
    }

    fn before_entry(&mut self) {
        if self.vcpu.timers_changed.load(Ordering::Relaxed) {
            self.vcpu.timers_changed.store(false, Ordering::SeqCst);
            self.deadline_stale = true;
        }
        let now = crate::arch::time::now_ns();
        self.now_ns = now;
        let due = self.deadline_ns.is_some_and(|d| d <= now);
        if due || self.deadline_stale {
            if self.vcpu.lapic.lock().tick(now) {
                self.vcpu.irr_hint.store(true, Ordering::Release);
            }
            // A stub domain has no timed devices (it takes no interrupts).
            if self.vcpu.id == 0 && !matches!(self.domain.role, Role::Stub(_)) {
                let mut fx = Effects::default();
                let mut d = self.domain.devices.lock();
                d.tick(&mut fx);
                self.effects(fx, &mut d);
            }
            self.deadline_ns = self.vcpu.next_deadline_ns(self.domain);
            self.deadline_stale = false;
        }
        // The scheduler's next event: the slice's end, an earlier yield
        // for a woken vCPU, or a blocked vCPU's deadline.
        let sched = self.sched.next_event_ns();
        crate::arch::apic::arm_timer_at_ns(self.deadline_ns.map_or(sched, |d| d.min(sched)));
    }

    fn after_exit(&mut self) {
        crate::sched::take_pending_interrupts();
    }

    fn should_stop(&mut self) -> bool {
        self.shutdown.is_some()
            || self.halted
            || !self.domain.is_running()
            || self.domain.is_paused()
            || self.sched.should_yield(self.now_ns)
    }
}

impl Runnable for Vcpu {
    fn run_slice(self: Arc<Self>) -> SliceEnd {
        let start = crate::arch::time::now_ns();
        let me = self.clone();
        let end = self.run_slice_inner();
        me.run_ns.fetch_add(crate::arch::time::now_ns().saturating_sub(start), Ordering::Relaxed);
        end
    }

    fn affinity(&self) -> u64 {
        self.affinity.load(Ordering::Relaxed)
    }

    fn wake_deadline_us(&self) -> Option<u64> {
        if self.event_only.load(Ordering::SeqCst) {
            return None;
        }
        let ns = self.wake_at_ns.load(Ordering::SeqCst);
        (ns != u64::MAX).then_some(ns / 1000)
    }

    fn sched(&self) -> &SchedState {
        &self.sched
    }
}

impl Vcpu {
    fn run_slice_inner(self: Arc<Self>) -> SliceEnd {
        let Some(domain) = self.domain.upgrade() else {
            return SliceEnd::Stopped;
        };
        if domain.state() != DomainState::Running {
            return SliceEnd::Stopped;
        }
        if domain.is_paused() {
            // Unpausing wakes it; its timers keep their deadline meanwhile.
            return self.block_for_event(self.next_deadline_ns(&domain));
        }
        let mut arch = self.arch.lock();
        {
            // Both under the LAPIC lock (see `post`): an INIT or SIPI that
            // arrives meanwhile is seen whole at the next slice.
            let lapic = self.lapic.lock();
            if lapic.is_waiting_for_sipi() {
                drop(lapic);
                return self.block_for_event(self.next_deadline_ns(&domain));
            }
            if let Some(page) = self.start_page.lock().take() {
                arch.reset_real_mode(u16::from(page) << 8, 0);
            }
        }
        // Waiting on the stub domain and not answered yet: keep waiting.
        if self.io_wait.lock().is_some() {
            if let Role::Hvm { ioreq, .. } = &domain.role {
                if !ioreq.is_done(self.id) {
                    return self.block_for_event(self.next_deadline_ns(&domain));
                }
            }
        }
        // A stub domain woken in WAIT: tell it why right away (rax), or
        // keep it waiting if nothing is there (a spurious wake-up).
        if self.in_wait.load(Ordering::SeqCst) {
            if let Role::Stub(b) = &domain.role {
                let work = b.ioreq.pending_work(b.guest.spec.vcpus);
                if work == 0 {
                    return self.block(None);
                }
                arch.regs_mut().rax = work;
                self.in_wait.store(false, Ordering::SeqCst);
            }
        }
        // The deadline kept when the last slice ended is still right
        // unless another vCPU reprogrammed a shared timer since (0).
        let cached = self.wake_at_ns.load(Ordering::SeqCst);
        let mut platform = VcpuPlatform {
            domain: &domain,
            vcpu: &self,
            sched: crate::sched::SliceClock::current(),
            shutdown: None,
            halted: false,
            deadline_ns: (cached != u64::MAX).then_some(cached),
            deadline_stale: cached == 0 || self.first_slice.swap(false, Ordering::SeqCst),
            waiting: false,
            now_ns: 0,
            cr8: self.lapic.lock().cr8(),
            cr8_exits: false,
        };
        arch.set_tsc_offset(domain.tsc_offset());
        let (outcome, _exits) = vcpu::run_loop(&mut *arch, &mut platform, 0);
        arch.release_fpu();
        drop(arch);
        if let Some(state) = platform.shutdown.take() {
            domain.shut_down(state);
            return SliceEnd::Stopped;
        }
        match outcome {
            RunOutcome::Crashed(why) => {
                domain.shut_down(DomainState::Crashed(format!("vcpu {}: {}", self.id, why)));
                SliceEnd::Stopped
            }
            RunOutcome::Finished(_) => {
                self.wake_at_ns.store(0, Ordering::SeqCst);
                SliceEnd::Preempted
            }
            RunOutcome::Halted if domain.state() != DomainState::Running => SliceEnd::Stopped,
            RunOutcome::WaitingForIo | RunOutcome::Halted if platform.halted || platform.waiting => {
                // The deadline the run loop kept is still right unless a
                // device changed since.
                let deadline = if platform.deadline_stale { self.next_deadline_ns(&domain) } else { platform.deadline_ns };
                if platform.waiting {
                    self.block_for_event(deadline)
                } else {
                    self.block(deadline)
                }
            }
            RunOutcome::WaitingForIo | RunOutcome::Halted => {
                let deadline = if platform.deadline_stale { self.next_deadline_ns(&domain) } else { platform.deadline_ns };
                self.wake_at_ns.store(deadline.unwrap_or(u64::MAX), Ordering::SeqCst);
                SliceEnd::Preempted
            }
        }
    }

    /// Ends a slice blocked, remembering when the vCPU's timers need it.
    fn block(&self, deadline_ns: Option<u64>) -> SliceEnd {
        self.event_only.store(false, Ordering::SeqCst);
        self.wake_at_ns.store(deadline_ns.unwrap_or(u64::MAX), Ordering::SeqCst);
        SliceEnd::Blocked
    }

    /// Ends a slice blocked until an I/O answer, a SIPI or the end of a
    /// pause: its timers
    /// cannot act before then (the instruction waiting for the answer has
    /// not completed), and a deadline already past would have the
    /// scheduler wake it again and again for nothing.
    fn block_for_event(&self, deadline_ns: Option<u64>) -> SliceEnd {
        self.event_only.store(true, Ordering::SeqCst);
        self.wake_at_ns.store(deadline_ns.unwrap_or(u64::MAX), Ordering::SeqCst);
        SliceEnd::Blocked
    }

}

/// Ids of the domains alive, ascending.
pub fn ids() -> Vec<u32> {
    let mut v: Vec<u32> = DOMAINS.lock().iter().map(|d| d.id).collect();
    v.sort_unstable();
    v
}

pub fn name_of(id: u32) -> Option<String> {
    DOMAINS.lock().iter().find(|d| d.id == id).map(|d| d.name.clone())
}

/// Feeds one byte of console input to a domain's UART. False when the
/// domain does not exist (any more).
pub fn console_input(id: u32, byte: u8) -> bool {
    let Some(d) = DOMAINS.lock().iter().find(|d| d.id == id).cloned() else {
        return false;
    };
    let mut fx = Effects::default();
    let mut dev = d.devices.lock();
    dev.push_input(byte, &mut fx);
    let _ = d.apply(fx, &mut dev);
    drop(dev);
    if let Role::Hvm { ioreq, .. } = &d.role {
        // The guest's UART is in its stub domain, which pulls the input.
        ioreq.notify_input();
    }
    true
}

/// One line per domain, as `xl list` prints them.
pub fn list(mut out: impl FnMut(&str)) {
    out("Name                                        ID   Mem VCPUs\tState");
    let mut doms = DOMAINS.lock().clone();
    doms.sort_by_key(|d| d.id);
    for d in doms {
        let state = match d.state() {
            DomainState::Running if d.is_paused() => "--p---",
            DomainState::Running => "r-----",
            DomainState::PoweredOff | DomainState::Rebooting => "--s---",
            DomainState::Crashed(_) => "---c--",
            DomainState::Destroyed => "-----d",
        };
        out(&format!("{:<40} {:>5} {:>5} {:>5}\t{}", d.name, d.id, d.mem.ram_bytes() >> 20, d.spec.vcpus, state));
    }
}

/// One line per vCPU of every domain: what the scheduler and its timers
/// think of it (the 'v' debug key, for a guest that seems stuck).
pub fn dump_vcpus(mut out: impl FnMut(&str)) {
    let now = crate::arch::time::now_ns();
    let mut doms = DOMAINS.lock().clone();
    doms.sort_by_key(|d| d.id);
    for d in doms {
        for v in d.vcpus.lock().iter() {
            let wake = match v.wake_at_ns.load(Ordering::SeqCst) {
                u64::MAX => String::from("none"),
                ns => format!("{:+} us", (ns as i64).wrapping_sub(now as i64) / 1000),
            };
            let lapic = v.lapic.lock();
            let timer = lapic.next_timer_deadline_ns().map_or(String::from("off"), |t| format!("{:+} us", (t as i64).wrapping_sub(now as i64) / 1000));
            let in_service: Vec<u8> = (16..=255u8).filter(|&vec| lapic.isr_bit(vec)).collect();
            let lapic_text = format!("irr {:?} isr {:?} timer {}", lapic.highest_pending(), in_service, timer);
            drop(lapic);
            // The vCPU's registers are locked while it runs: skip them then.
            let regs = match v.arch.try_lock() {
                Some(a) => {
                    let r = a.regs();
                    format!("rip {:#x} {}", r.rip, a.describe_state())
                }
                None => String::from("(running)"),
            };
            out(&format!(
                "d{}v{}: {} wake {} {} nmi {} io_wait {} {}",
                d.id,
                v.id,
                v.sched.describe(),
                wake,
                lapic_text,
                v.nmi_pending.load(Ordering::SeqCst),
                v.io_wait.lock().is_some(),
                regs
            ));
        }
    }
}

/// Number of domains still alive.
pub fn count() -> usize {
    DOMAINS.lock().len()
}
