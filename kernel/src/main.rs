//! Ferrite: a type-1 hypervisor for x86_64.
//!
//! Boot flow (`kmain`): console → boot information and command line →
//! host ACPI tables → memory (frames, heap, W^X page tables) → this CPU's
//! descriptor tables, APIC, FPU and SVM → the other CPUs → the self-test
//! guest → idle. See ARCHITECTURE.md for the code map.

#![no_std]
#![no_main]

extern crate alloc;
// memcpy & co. and the symbols the prebuilt core references.
extern crate ferrite_rt;

mod acpi;
mod bridge;
mod arch;
mod console;
mod disk_claims;
mod domain;
mod drivers;
mod host;
mod hvm;
mod hvmnet;
mod launch;
mod ioreq;
mod mgmt;
mod mm;
mod nbd;
mod net;
mod panic;
mod platform;
mod sched;
mod selftest;
mod stubdom;
mod vcpu;
mod uplink;
mod vdisk;
mod vnet;
mod virt;
mod virtio_host;
mod vsock;

use alloc::vec::Vec;
use arch::{apic, cpu, fpu, gdt, idt, percpu, smp, time};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use ferrite_boot::bootinfo::{self, BootError, PhysMemory, Protocol};
use ferrite_boot::cmdline::{self, Options};
use log::{error, info, warn};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// I/O port of QEMU's isa-debug-exit device (`debug_exit=`), 0 when unset.
static DEBUG_EXIT_PORT: AtomicU32 = AtomicU32::new(0);
static VIRT_ENABLED_CPUS: AtomicUsize = AtomicUsize::new(0);
static VIRT_CAPS: spin::Once<virt::Capabilities> = spin::Once::new();
/// Set when a domain crashed: the run is then reported as failed.
static DOMAIN_FAILED: AtomicBool = AtomicBool::new(false);

/// The virtualization features every CPU has (None: guests cannot run).
/// The hypervisor's command line as it may be shown (the key hidden).
static BOOT_CMDLINE: spin::Once<alloc::string::String> = spin::Once::new();

pub fn boot_cmdline() -> alloc::string::String {
    BOOT_CMDLINE.get().cloned().unwrap_or_default()
}

pub fn virt_caps() -> Option<virt::Capabilities> {
    VIRT_CAPS.get().copied()
}

/// Called when a domain has stopped for good (after any restart it asked
/// for was started).
pub fn domain_stopped(d: &domain::Domain, state: &domain::DomainState) {
    // dom0's stop below may be the host's, and another CPU may poll it
    // before this one says that no domain is left and reports the run.
    host::hold(true);
    if d.spec.privileged {
        match state {
            domain::DomainState::PoweredOff => host::request_stop(false, "dom0 powered off"),
            domain::DomainState::Rebooting => host::request_stop(true, "dom0 rebooted"),
            _ => {}
        }
    }
    if let domain::DomainState::Crashed(_) = state {
        DOMAIN_FAILED.store(true, Ordering::SeqCst);
    }
    if domain::count() == 0 {
        info!("no domains left running");
        report_exit(!DOMAIN_FAILED.load(Ordering::SeqCst));
    }
    host::hold(false);
}

/// Tells QEMU's isa-debug-exit device how the run went (0 = success,
/// 1 = failure), when the command line asked for it.
pub fn report_exit(success: bool) {
    let port = DEBUG_EXIT_PORT.load(Ordering::SeqCst);
    if port != 0 {
        arch::pio::outl(port as u16, if success { 0 } else { 1 });
    }
}

/// Reads boot structures through the boot page tables (identity map of the
/// first 4 GiB).
struct BootMemory;

impl PhysMemory for BootMemory {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let end = paddr.checked_add(buf.len() as u64).ok_or(BootError::OutOfRange { paddr, len: buf.len() as u64 })?;
        if paddr == 0 || end > 1 << 32 {
            return Err(BootError::OutOfRange { paddr, len: buf.len() as u64 });
        }
        // SAFETY: the range is non-null, below 4 GiB and so identity mapped
        // by the boot page tables; boot structures are plain memory.
        unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Modules up to this size get an FNV-1a checksum in the boot log.
const MODULE_HASH_LIMIT: u64 = 4 << 20;

fn fnv1a32(mem: &dyn PhysMemory, start: u64, len: u64) -> Option<u32> {
    let mut hash: u32 = 0x811C_9DC5;
    let mut buf = [0u8; 4096];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        mem.read(start + off, &mut buf[..n]).ok()?;
        for &b in &buf[..n] {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        off += n as u64;
    }
    Some(hash)
}

/// Console input: the debug keys (`debug_key`) and the domains' UARTs.
struct ConsoleInput;

impl console::InputTargets for ConsoleInput {
    fn hypervisor_key(&self, key: u8) {
        debug_key(key);
    }

    fn domain_ids(&self) -> alloc::vec::Vec<u32> {
        domain::ids()
    }

    fn domain_name(&self, id: u32) -> Option<alloc::string::String> {
        domain::name_of(id)
    }

    fn domain_input(&self, id: u32, byte: u8) -> bool {
        domain::console_input(id, byte)
    }
}

fn apply_console_options(opts: &Options) {
    let enabled = opts.console_serial();
    console::init(opts.com1_line(), enabled);
    console::init_logger(opts.log_level());
}

#[no_mangle]
pub extern "C" fn kmain(magic: u32, info_paddr: u32, entry: u32) -> ! {
    time::mark_boot();
    mm::heap::init_boot();
    console::init(Default::default(), true);
    console::init_logger(log::LevelFilter::Info);
    console::register_input(&ConsoleInput);
    domain::register_hvm_builder(hvm::create);
    arch::pic::disable();
    idt::init();
    let tables = gdt::init_cpu();
    idt::load();

    let hint = (entry == arch::entry::ENTRY_PVH).then_some(Protocol::Pvh);
    let boot = match bootinfo::parse(magic, u64::from(info_paddr), &BootMemory, hint) {
        Ok(b) => b,
        Err(e) => panic!("cannot read the boot information (magic {:#x}): {}", magic, e),
    };
    let (mut opts, diagnostics) = cmdline::parse(&boot.cmdline);
    apply_console_options(&opts);
    console::set_timestamps(opts.console_timestamps);
    if let Some(port) = opts.debug_exit {
        DEBUG_EXIT_PORT.store(u32::from(port), Ordering::SeqCst);
    }
    console::write_str("\n");
    let protocol = match boot.protocol {
        Protocol::Pvh => "pvh",
        Protocol::Multiboot1 => "multiboot1",
        Protocol::Multiboot2 => "multiboot2",
    };
    match &boot.loader_name {
        Some(name) => info!("Ferrite {} (x86_64) booted by {} loader \"{}\"", VERSION, protocol, name),
        None => info!("Ferrite {} (x86_64) booted by {}", VERSION, protocol),
    }
    BOOT_CMDLINE.call_once(|| cmdline::redact(&boot.cmdline));
    info!("cmdline: \"{}\"", boot_cmdline());
    for d in &diagnostics {
        warn!("cmdline: {}", d);
    }
    for (i, m) in boot.modules.iter().enumerate() {
        let size = m.end.saturating_sub(m.start);
        // A checksum lets a user (and the tests) confirm what the loader
        // handed over; hashing a 50 MiB kernel would cost a second of boot.
        // No digest of the key either: nothing about it goes in the log.
        if size > MODULE_HASH_LIMIT || launch::module_name(&m.cmdline) == launch::KEY_MODULE {
            info!("module {}: {} bytes at {:#x}, cmdline \"{}\"", i, size, m.start, m.cmdline);
            continue;
        }
        match fnv1a32(&BootMemory, m.start, size) {
            Some(h) => info!("module {}: {} bytes at {:#x}, cmdline \"{}\", fnv1a32 {:#010x}", i, size, m.start, m.cmdline, h),
            None => warn!("module {}: {} bytes at {:#x} is not readable; ignored", i, size, m.start),
        }
    }

    // ACPI before the frame allocator: multiboot2 hands the RSDP inside its
    // information block, which the allocator may reuse.
    let platform = match acpi::discover(boot.rsdp_paddr) {
        Ok(p) => p,
        Err(e) => {
            warn!("ACPI tables not usable ({:?}); assuming one CPU", e);
            acpi::Platform::default()
        }
    };
    host::init(platform.power);

    let mem = mm::init(&boot);
    launch::register_modules(&boot);
    info!(
        "memory: {} MiB usable in {} regions, {} MiB free, heap {} MiB",
        mem.usable_bytes >> 20,
        mem.regions,
        mem.free_bytes >> 20,
        mem.heap_bytes >> 20
    );
    if let Some(d0) = opts.dom0_mem {
        info!("dom0_mem: {}", d0);
    }

    apic::init_cpu();
    let bsp_apic = apic::id();
    percpu::init(0, bsp_apic, tables);
    time::calibrate();
    apic::calibrate_timer();
    time::read_host_rtc();
    fpu::init_cpu();
    info!(
        "acpi: {} CPUs, {} I/O APICs{}{}",
        platform.cpu_apic_ids.len().max(1),
        platform.io_apics.len(),
        platform.hpet.map(|a| alloc::format!(", HPET at {:#x}", a)).unwrap_or_default(),
        platform.ecam.first().map(|e| alloc::format!(", PCIe ECAM at {:#x}", e.0)).unwrap_or_default()
    );
    for io in &platform.io_apics {
        log::debug!("acpi: I/O APIC {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
    }
    info!("cpu 0: online (apic id {}), TSC {} MHz", bsp_apic, time::tsc_hz() / 1_000_000);
    // Nested under another hypervisor, guests read its PM timer directly
    // (`platform::use_host_pm_timer` says why). On hardware they get the
    // emulated one: an exit costs about a microsecond there.
    if opts.pm_timer == cmdline::PmTimerChoice::Auto && arch::cpu::cpuid(1, 0).ecx & (1 << 31) != 0 {
        if let Some((port, is_32bit)) = platform.pm_timer {
            crate::platform::use_host_pm_timer(port, is_32bit);
            info!(
                "guests read the host's ACPI PM timer at port {:#x} ({} bits) directly: nested, an emulated one costs an exit per read",
                port,
                if is_32bit { 32 } else { 24 }
            );
        }
    }

    let caps = match virt::init() {
        Ok(caps) => {
            info!("virtualization: {}", caps);
            Some(caps)
        }
        Err(e) => {
            error!("virtualization unavailable: {}", e);
            None
        }
    };
    if caps.is_some() {
        enable_virtualization_on_this_cpu();
    }

    start_secondary_cpus(&platform.cpu_apic_ids, bsp_apic);
    info!(
        "smp: {} CPUs online, {} enabled on {}",
        percpu::online_count(),
        virt_name(),
        VIRT_ENABLED_CPUS.load(Ordering::SeqCst)
    );
    let pci_config = drivers::pci::ConfigAccess::new(&platform.ecam);
    let pci_functions = drivers::host_pci_functions(&pci_config);
    drivers::virtio_blk::init(pci_config, &pci_functions);
    // PVH disks' requests complete when a host disk is polled: by idle
    // CPUs while any is in flight, and by CPU 0 between slices.
    sched::register_idle_work(drivers::virtio_blk::poll_all);
    sched::register_idle_work(net::poll_while_transferring);
    sched::register_poller(sched::Poller {
        poll: || {
            drivers::virtio_blk::poll_all();
        },
        next_us: || None,
    });
    sched::register_poller(sched::Poller { poll: console::poll_input, next_us: || None });
    if let Some(key) = key_module(&boot) {
        opts.mgmt.key = Some(key);
    }
    if opts.mgmt.enabled {
        mgmt::start_vsock(&opts.mgmt);
    }
    if opts.mgmt.enabled || opts.uplink.is_some() {
        match drivers::virtio_net::probe(pci_config, &pci_functions) {
            Some(nic) => {
                net::init(nic, &opts.mgmt);
                if opts.mgmt.enabled {
                    mgmt::start(&opts.mgmt);
                }
                nbd::init();
                sched::register_poller(sched::Poller { poll: net::poll, next_us: net::poll_delay_us });
                if let Some(bridge) = &opts.uplink {
                    uplink::start(bridge);
                }
            }
            None if opts.uplink.is_some() => error!("net: no virtio-net NIC, so no uplink for bridge {}", opts.uplink.as_deref().unwrap_or("")),
            None => info!("net: no virtio-net NIC; ferrite xl reaches the hypervisor from dom0 only (vsock)"),
        }
    }

    let mut ok = true;
    if let Some(caps) = caps {
        VIRT_CAPS.call_once(|| caps);
        if opts.selftest {
            match selftest::run(caps) {
                Ok(summary) => info!("selftest: PASS ({})", summary),
                Err(why) => {
                    error!("selftest: FAIL: {}", why);
                    ok = false;
                }
            }
        }
    } else {
        ok = false;
    }
    let started = match caps {
        Some(caps) if ok => launch::start_boot_domains(&boot, &opts, caps),
        _ => 0,
    };
    let (used, total) = mm::heap::usage();
    info!("heap: {} KiB of {} KiB used; {} MiB free", used >> 10, total >> 10, mm::free_bytes() >> 20);
    info!("boot complete");
    if started == 0 {
        report_exit(ok);
    }
    BOOT_DONE.store(true, Ordering::SeqCst);
    sched::run_forever()
}

/// A key typed while console input goes to the hypervisor (Xen's debug
/// keys, in spirit).
pub fn debug_key(key: u8) {
    // A domain id typed before a key applies to it ("3p" pauses domain 3).
    static TYPED_ID: AtomicU32 = AtomicU32::new(NO_ID);
    const NO_ID: u32 = u32::MAX;
    if key.is_ascii_digit() {
        let digit = u32::from(key - b'0');
        let id = match TYPED_ID.load(Ordering::SeqCst) {
            NO_ID => digit,
            n => n.saturating_mul(10).saturating_add(digit),
        };
        TYPED_ID.store(id, Ordering::SeqCst);
        return;
    }
    let id = TYPED_ID.swap(NO_ID, Ordering::SeqCst);
    match key {
        b'h' => {
            info!("keys: 'l' list domains, 'v' vCPU states, 'd' replay the hypervisor log (dmesg), 'm' memory, 'h' this help");
            info!("      '<id>p' pause domain <id>, '<id>u' unpause it (xl pause/unpause), '<id>n' press its NMI button");
            info!("Ctrl-a three times switches console input to the next domain");
        }
        b'p' | b'u' if id == NO_ID => info!("type the domain id first, e.g. '1{}'", key as char),
        b'p' | b'u' if domain::set_paused_by_id(id, key == b'p').is_err() => info!("no domain {}", id),
        b'p' | b'u' => {}
        b'n' if id == NO_ID => info!("type the domain id first, e.g. '1n'"),
        b'n' => match domain::press_nmi_button(id) {
            Ok(b) => info!("domain {}: NMI button: LINT1 gave {} NMI(s), {} interrupt(s), {} dropped", id, b.nmis, b.interrupts, b.dropped),
            Err(domain::AdminError::NoSuchDomain) => info!("no domain {}", id),
            Err(domain::AdminError::Refused(why)) => info!("domain {}: {}", id, why),
        },
        b'l' => domain::list(|line| console::print_fmt(format_args!("{}\n", line))),
        b'v' => domain::dump_vcpus(|line| console::print_fmt(format_args!("{}\n", line))),
        b'd' => {
            let mut text = Vec::new();
            console::with_log_ring(|piece| text.extend_from_slice(piece));
            console::print_fmt_unlogged(format_args!("----- log ring ({} bytes) -----\n", text.len()));
            for chunk in text.chunks(256) {
                console::print_fmt_unlogged(format_args!("{}", alloc::string::String::from_utf8_lossy(chunk)));
            }
            console::print_fmt_unlogged(format_args!("----- end of log ring -----\n"));
        }
        b'm' => {
            let (used, total) = mm::heap::usage();
            info!("memory: {} MiB free; heap {} of {} KiB used", mm::free_bytes() >> 20, used >> 10, total >> 10);
        }
        b'\r' | b'\n' => {}
        _ => {}
    }
}

/// Set once the boot CPU has created the boot-time domains; APs wait for
/// it before they start scheduling.
static BOOT_DONE: AtomicBool = AtomicBool::new(false);

/// Stack of each application processor (the boot CPU's is in entry.rs):
/// scheduler, run loop, exit handling and domain (re)creation run on it.
const AP_STACK_BYTES: usize = 256 * 1024;

fn key_module(boot: &bootinfo::BootInfo) -> Option<[u8; 32]> {
    let m = boot.modules.iter().find(|m| launch::module_name(&m.cmdline) == launch::KEY_MODULE)?;
    let text = core::str::from_utf8(mm::module_bytes(m.start, m.end)).unwrap_or("");
    let key = cmdline::parse_key(text.trim());
    if key.is_none() {
        error!("{}: not a key (64 hexadecimal digits expected); the management service refuses every client", launch::KEY_MODULE);
    }
    key
}

/// "SVM" or "VMX", for the boot log.
fn virt_name() -> &'static str {
    virt::chosen().map_or("virtualization", |c| c.backend.label())
}

fn enable_virtualization_on_this_cpu() {
    let pc = percpu::current();
    match virt::enable_cpu() {
        Ok(()) => {
            VIRT_ENABLED_CPUS.fetch_add(1, Ordering::SeqCst);
            info!("cpu {}: {} enabled", pc.index, virt_name());
        }
        Err(e) => error!("cpu {}: {} not enabled: {}", pc.index, virt_name(), e),
    }
}

fn start_secondary_cpus(apic_ids: &[u32], bsp_apic: u32) {
    let code = smp::trampoline_code();
    // SAFETY: the trampoline page is reserved low memory (never handed out
    // by the frame allocator) and mapped read-execute; writing it needs
    // CR0.WP off for the duration of the copy, on this CPU only, with no
    // other CPU running yet.
    unsafe {
        let cr0 = cpu::read_cr0();
        cpu::write_cr0(cr0 & !(1 << 16));
        core::ptr::copy_nonoverlapping(code.as_ptr(), smp::TRAMPOLINE_CODE as *mut u8, code.len());
        cpu::write_cr0(cr0);
    }
    let mut index = 1;
    let others: Vec<u32> = apic_ids.iter().copied().filter(|&id| id != bsp_apic).collect();
    for apic_id in others {
        if index >= percpu::MAX_CPUS {
            warn!("more than {} CPUs; the rest stay offline", percpu::MAX_CPUS);
            break;
        }
        let stack = alloc::vec![0u8; AP_STACK_BYTES].leak();
        let top = (stack.as_ptr() as u64 + stack.len() as u64) & !0xF;
        if smp::start_one(apic_id, top, ap_main, index as u64) {
            index += 1;
        } else {
            warn!("cpu with apic id {} did not start", apic_id);
        }
    }
}

extern "C" fn ap_main(index: u64) -> ! {
    let tables = gdt::init_cpu();
    idt::load();
    apic::init_cpu();
    percpu::init(index as usize, apic::id(), tables);
    fpu::init_cpu();
    info!("cpu {}: online (apic id {})", index, apic::id());
    enable_virtualization_on_this_cpu();
    // Only now: the boot CPU reports the SVM count once every AP is done.
    smp::signal_alive();
    while !BOOT_DONE.load(Ordering::SeqCst) {
        cpu::pause();
    }
    if virt::enabled_on_this_cpu() {
        sched::run_forever()
    }
    loop {
        cpu::wait_for_interrupt();
    }
}
