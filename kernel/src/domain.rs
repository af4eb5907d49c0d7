//! Domains: a guest's memory, vCPUs, in-hypervisor platform devices,
//! console and lifecycle.
//!
//! A PVH domain (dom0 or a domU) needs no device model: the few platform
//! devices it touches (UART console, ACPI power management, reset port) are
//! emulated here, per domain. An HVM domain has the interrupt controllers
//! and timers here too; everything else goes to its stub domain (see
//! `hvm.rs` and `stubdom.rs`), which is a domain of its own.

use crate::console;
use crate::ioreq::IoreqServer;
use crate::mm::guest::{GuestMemError, GuestMemory};
use crate::sched::{self, Runnable, SchedState, SliceEnd};
use crate::vcpu::{self, Platform, RunOutcome};
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


#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainState {
    Running,
    PoweredOff,
    Rebooting,
    Crashed(String),
    /// Stopped by the administrator (`xl destroy`): never restarted.
    Destroyed,
}

/// What a domain is to the others.
pub(crate) enum Role {
    Pvh,
    /// An HVM guest: its requests go through `ioreq` to the stub domain.
    Hvm { ioreq: Arc<IoreqServer>, stub: Mutex<Weak<Domain>> },
    /// A stub domain serving one HVM guest.
    Stub(alloc::boxed::Box<dyn StubService>),
}

/// What the domain layer needs of a stub domain's device-model backends.
/// `stubdom` implements it (`StubBackends`): it sits above domains, so
/// domains reach it only through this.
pub(crate) trait StubService: Send + Sync {
    /// The HVM guest the stub domain serves.
    fn guest(&self) -> &Arc<Domain>;
    /// Serves a hypercall of the stub's vCPU (`stub`, whose RAM a request
    /// may hold on to until it is over); says whether the vCPU goes on or
    /// blocks.
    fn hypercall(&self, stub: &Arc<Domain>, regs: &mut GuestRegs) -> StubCall;
    /// What a WAIT would answer now (the guest's pending requests); 0:
    /// nothing, keep waiting.
    fn pending_work(&self) -> u64;
    /// The BLOCK_IO the stub's vCPU blocks in (`StubCall::BlockIo`):
    /// `Ok(rax)` once it is over (the result is then taken), else
    /// `Err(deadline)`, the TSC ns by which it is given up on: the vCPU
    /// sleeps until its completion wakes it, or then.
    fn block_io_result(&self) -> Result<u64, u64>;
    /// That BLOCK_IO's deadline (TSC ns), without taking a result.
    fn block_io_deadline(&self) -> u64;
    /// The guest's NICs (the stub emulates them) leave their bridges.
    fn detach_nics(&self);
    /// Their counters, for `xl network-list`.
    fn nic_stats(&self) -> Vec<crate::bridge::VifStats>;
}

/// What a stub's vCPU does after a hypercall.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StubCall {
    /// Goes on; the result is in RAX.
    Continue,
    /// WAIT with nothing to do: blocks until notified.
    Wait,
    /// BLOCK_IO on a disk whose backend answers later (NBD): blocks until
    /// the request is over ([`StubService::block_io_result`]), which puts
    /// the result in RAX.
    BlockIo,
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
mod exits;
mod slice;
mod spec;
pub use admin::*;
pub use spec::*;

/// The longest unfinished console line a domain keeps (bytes); a longer
/// one is cut.
const MAX_CONSOLE_LINE: usize = 512;

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
    /// A stub domain's vCPU blocked in a BLOCK_IO hypercall (NBD).
    in_block_io: core::sync::atomic::AtomicBool,
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

/// Builds an HVM domain with its stub domain and starts both: `hvm`,
/// which sits above domains, registers it at boot (`register_hvm_builder`).
pub type HvmBuilder = fn(DomainSpec, Capabilities) -> Result<Arc<Domain>, String>;

static HVM_BUILDER: spin::Once<HvmBuilder> = spin::Once::new();

pub fn register_hvm_builder(build: HvmBuilder) {
    HVM_BUILDER.call_once(|| build);
}

impl Domain {
    /// Builds and starts a domain from `spec`.
    pub fn create(spec: DomainSpec, caps: Capabilities) -> Result<Arc<Domain>, String> {
        match &spec.boot {
            Boot::Pvh { .. } => Self::create_pvh(spec, caps),
            Boot::Hvm(_) => match HVM_BUILDER.get() {
                Some(build) => build(spec, caps),
                None => Err(format!("{}: HVM guests are not available in this build", spec.name)),
            },
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
        crate::disk_claims::check(&spec.name, &wanted, None)?;
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
        if let Err(e) = crate::disk_claims::check(&domain.name, &wanted, Some(domain.id)) {
            domain.shut_down(DomainState::Crashed(e.clone()));
            return Err(e);
        }
        if let Some(v) = vsock {
            let host: Arc<dyn crate::virtio_host::DeviceHost> = domain.clone();
            v.register(Arc::downgrade(&host));
            domain.vsock.call_once(|| v);
        }
        let host: Arc<dyn crate::virtio_host::DeviceHost> = domain.clone();
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
                in_block_io: core::sync::atomic::AtomicBool::new(false),
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
        crate::disk_claims::release(self.id);
        for n in self.vnets.get().into_iter().flatten() {
            n.detach(&self.name);
        }
        if let Role::Stub(b) = &self.role {
            b.detach_nics();
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
                b.guest().shut_down(guest_state);
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

impl crate::virtio_host::DeviceHost for Domain {
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
