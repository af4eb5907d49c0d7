//! From xl configs and files to running domains: at boot from the boot
//! modules (Xen's way: module 0 is dom0's kernel, `*.cfg` modules are domU
//! configs naming other modules), and at runtime from the files
//! `xl create` uploaded. Both go through [`spec_from_config`].

use crate::domain::{self, Action, Boot, DomainSpec};
use crate::mm;
use crate::mm::blob::Blob;
use crate::nbd::NbdDisk;
use alloc::sync::Arc;
use crate::arch::percpu;
use crate::virt;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ferrite_boot::bootinfo::{self, BootInfo, BootModule};
use ferrite_boot::cmdline::{self, Options};
use log::{error, info, warn};

/// The module holding the stub-domain image (built as `ferrite-stubdom`).
const STUBDOM_MODULE: &str = "ferrite-stubdom";
/// SeaBIOS as QEMU ships it, the default HVM firmware.
const DEFAULT_BIOS_MODULE: &str = "bios-256k.bin";
/// QEMU's option ROM for direct Linux boot through fw_cfg.
const LINUXBOOT_ROM_MODULE: &str = "linuxboot_dma.bin";
/// The boot module holding the management service's key (64 hex digits):
/// unlike `mgmt_key=`, it shows in no process list and no boot log.
pub const KEY_MODULE: &str = "mgmt.key";

/// Where a config's files come from.
pub trait Files {
    /// The file a config names (`kernel=`, `ramdisk=`, `firmware=`, or a
    /// platform file such as the BIOS); `what` names it in errors.
    fn get(&self, file: &str, what: &str) -> Result<Blob, String>;
    /// The NBD connection behind a `file:` or `nbd:` disk, connected.
    fn nbd_disk(&self, disk: &ferrite_config::DiskSpec) -> Result<Arc<NbdDisk>, String>;
}

/// How long boot waits for an `nbd:` disk's server (DHCP included).
const BOOT_NBD_TIMEOUT_US: u64 = 60_000_000;

/// The boot modules by name, kept for the life of the hypervisor: runtime
/// creation takes platform files (BIOS, stub image, option ROM) from them.
static MODULES: spin::Once<Vec<(String, &'static [u8])>> = spin::Once::new();

/// Remembers the boot modules (call once, after memory is set up).
pub fn register_modules(boot: &BootInfo) {
    MODULES.call_once(|| boot.modules.iter().map(|m| (String::from(module_name(&m.cmdline)), mm::module_bytes(m.start, m.end))).collect());
}

/// A boot module by file name (directories in the request are ignored).
pub fn boot_module(file: &str) -> Option<&'static [u8]> {
    let wanted = file.rsplit('/').next().unwrap_or(file);
    MODULES.get()?.iter().find(|(name, _)| name == wanted && is_guest_file_name(name)).map(|(_, bytes)| *bytes)
}

/// Files from the boot modules only.
pub struct BootModules;

impl Files for BootModules {
    fn get(&self, file: &str, what: &str) -> Result<Blob, String> {
        boot_module(file)
            .map(Blob::Module)
            .ok_or_else(|| format!("{} '{}' is not among the boot modules (load it as a module named '{}')", what, file, file))
    }

    /// At boot, before anything is scheduled: connects and waits, polling
    /// the network itself.
    fn nbd_disk(&self, disk: &ferrite_config::DiskSpec) -> Result<Arc<NbdDisk>, String> {
        let target = disk.target.as_deref().unwrap_or("");
        if disk.kind == ferrite_config::DiskKind::File {
            return Err(format!(
                "disk {}: file:{} needs a toolstack to serve it (`ferrite xl create`); at boot, name an NBD export instead (nbd:HOST:PORT/EXPORT)",
                disk.vdev.name, target
            ));
        }
        let (addr, port, export) = crate::nbd::parse_target(target).map_err(|e| format!("disk {}: {}", disk.vdev.name, e))?;
        let nbd = crate::nbd::connect(addr, port, &export)?;
        crate::nbd::wait_ready(core::slice::from_ref(&nbd), BOOT_NBD_TIMEOUT_US).map_err(|e| format!("disk {}: {}", disk.vdev.name, e))?;
        Ok(nbd)
    }
}

/// The module's name: the first word of its string, without directories.
pub fn module_name(cmdline: &str) -> &str {
    let first = cmdline.split_whitespace().next().unwrap_or("");
    first.rsplit('/').next().unwrap_or(first)
}

fn is_config_name(name: &str) -> bool {
    name.ends_with(".cfg") || name.ends_with(".conf")
}

/// A kernel, initrd or firmware file: neither an xl config nor the key.
fn is_guest_file_name(name: &str) -> bool {
    !is_config_name(name) && name != KEY_MODULE
}

fn is_config_module(m: &BootModule) -> bool {
    is_config_name(module_name(&m.cmdline))
}

fn is_guest_file(m: &BootModule) -> bool {
    is_guest_file_name(module_name(&m.cmdline))
}

fn map_action(a: ferrite_config::Action) -> Action {
    match a {
        ferrite_config::Action::Destroy => Action::Destroy,
        ferrite_config::Action::Restart => Action::Restart,
        ferrite_config::Action::Preserve => Action::Preserve,
    }
}

/// A domain specification from an xl config and its files.
pub fn spec_from_config(cfg: &ferrite_config::DomainConfig, files: &dyn Files) -> Result<DomainSpec, String> {
    let boot = match cfg.guest_type {
        ferrite_config::GuestType::Pvh => pvh_boot(cfg, files)?,
        _ => hvm_boot(cfg, files)?,
    };
    let affinity = match &cfg.cpus {
        Some(aff) => (0..cfg.vcpus as usize)
            .map(|i| aff.for_vcpu(i).map_or(u64::MAX, |set| set.iter().filter(|&c| c < 64).fold(0u64, |m, c| m | (1 << c))))
            .collect(),
        None => Vec::new(),
    };
    Ok(DomainSpec {
        name: cfg.name.clone(),
        memory_bytes: cfg.memory_mib << 20,
        vcpus: cfg.vcpus,
        boot,
        affinity,
        privileged: false,
        on_poweroff: map_action(cfg.on_poweroff),
        on_reboot: map_action(cfg.on_reboot),
        on_crash: map_action(cfg.on_crash),
    })
}

/// Creates the boot-time domains from the modules, Xen's way: module 0 is
/// the dom0 kernel (its string, after the file name, the kernel command
/// line) and module 1, unless it is a config file or a file a config names,
/// dom0's initrd. Modules named `*.cfg`/`*.conf` are xl-style domain
/// configs; the `kernel`/`ramdisk` files they name are other modules,
/// matched by file name. Returns how many domains started.
pub fn start_boot_domains(boot: &BootInfo, opts: &Options, caps: virt::Capabilities) -> usize {
    let mods = &boot.modules;
    let mut started = 0;
    // Configs first, to know which modules they claim.
    let mut configs = Vec::new();
    for m in mods.iter().filter(|m| is_config_module(m)) {
        let name = module_name(&m.cmdline);
        match ferrite_config::parse(name, mm::module_bytes(m.start, m.end)) {
            Ok((cfg, warnings)) => {
                for w in warnings {
                    warn!("{}", w);
                }
                configs.push(cfg);
            }
            Err(errors) => {
                for e in errors {
                    error!("{}", e);
                }
                error!("{}: not started (fix the errors above)", name);
            }
        }
    }
    let find = |file: &str| {
        let wanted = file.rsplit('/').next().unwrap_or(file);
        mods.iter().find(|m| is_guest_file(m) && module_name(&m.cmdline) == wanted)
    };
    let claimed = |m: &BootModule| {
        configs.iter().any(|c| {
            [c.kernel.as_deref(), c.ramdisk.as_deref()]
                .into_iter()
                .flatten()
                .any(|f| find(f).is_some_and(|x| core::ptr::eq(x, m)))
        })
    };

    let pcpus = percpu::online_count() as u32;
    if let Some(kernel_mod) = mods.first().filter(|m| is_guest_file(m) && !claimed(m)) {
        let kernel = Blob::Module(mm::module_bytes(kernel_mod.start, kernel_mod.end));
        let initrd = mods.get(1).filter(|m| is_guest_file(m) && !claimed(m)).map(|m| Blob::Module(mm::module_bytes(m.start, m.end)));
        let cmdline = module_args(&kernel_mod.cmdline, boot.loader_name.as_deref());
        let vcpus = opts.dom0_max_vcpus.map_or(pcpus, |r| r.max.unwrap_or(r.min).max(1));
        let memory_bytes = match opts.dom0_mem.and_then(|m| m.amount) {
            Some(cmdline::MemSize::Bytes(b)) => b,
            Some(cmdline::MemSize::AllBut(b)) => mm::free_bytes().saturating_sub(b),
            None => (mm::free_bytes() / 2).min(512 << 20),
        };
        let disks = dom0_disks(&opts.dom0_disks);
        let affinity = if opts.dom0_vcpus_pin { (0..vcpus).map(|i| 1u64 << (i % pcpus.max(1))).collect() } else { Vec::new() };
        let spec = DomainSpec {
            name: String::from("dom0"),
            memory_bytes,
            vcpus,
            boot: Boot::Pvh { kernel, initrd, cmdline, disks: disks.clone().unwrap_or_default(), vifs: Vec::new() },
            affinity,
            privileged: true,
            // As in Xen, dom0's poweroff or reboot is the host's (`host`).
            on_poweroff: Action::Destroy,
            on_reboot: Action::Destroy,
            on_crash: Action::Destroy,
        };
        match disks.and_then(|_| domain::Domain::create(spec, caps)) {
            Ok(_) => started += 1,
            Err(e) => error!("dom0 not started: {}", e),
        }
    } else {
        info!("no dom0 kernel module given");
    }

    for cfg in configs {
        match spec_from_config(&cfg, &BootModules) {
            Ok(spec) => match domain::Domain::create(spec, caps) {
                Ok(_) => started += 1,
                Err(e) => error!("{} not started: {}", cfg.name, e),
            },
            Err(e) => error!("{}: {}; not started", cfg.name, e),
        }
    }
    if started == 0 {
        info!("no domains to run");
    }
    started
}

/// A PVH domU's kernel and initrd.
fn pvh_boot(cfg: &ferrite_config::DomainConfig, files: &dyn Files) -> Result<Boot, String> {
    let kernel_file = cfg.kernel.as_deref().ok_or("no kernel given")?;
    let kernel = files.get(kernel_file, "kernel")?;
    let initrd = cfg.ramdisk.as_deref().map(|f| files.get(f, "ramdisk")).transpose()?;
    Ok(Boot::Pvh {
        kernel,
        initrd,
        cmdline: cfg.cmdline.clone().unwrap_or_default(),
        disks: pvh_disks(&cfg.disks, files)?,
        vifs: pvh_vifs(cfg),
    })
}

/// A PVH domU's NICs: `mac=` or xl's stable generated address, on
/// `bridge=` or xl's default bridge `xenbr0`. (`model=` has no meaning for
/// PVH: its NICs are virtio-net.)
fn pvh_vifs(cfg: &ferrite_config::DomainConfig) -> Vec<crate::vnet::VifConfig> {
    cfg.vifs
        .iter()
        .enumerate()
        .map(|(i, v)| crate::vnet::VifConfig {
            mac: v.mac_or_generated(&cfg.name, i),
            bridge: String::from(v.bridge().unwrap_or(DEFAULT_BRIDGE)),
        })
        .collect()
}

/// An HVM guest's NICs: `model=e1000` (the default: Debian's generic
/// kernel drives it) or `model=virtio-net`, emulated by its stub domain.
/// xl's own default, `rtl8139`, is not emulated, and is refused with what
/// to use instead.
fn hvm_nics(cfg: &ferrite_config::DomainConfig) -> Result<Vec<(crate::vnet::VifConfig, ferrite_abi::StubNicModel)>, String> {
    use ferrite_abi::StubNicModel;
    if cfg.vifs.len() > ferrite_abi::MAX_NICS {
        return Err(format!("at most {} vifs for an HVM guest ({} given)", ferrite_abi::MAX_NICS, cfg.vifs.len()));
    }
    let vifs = pvh_vifs(cfg);
    cfg.vifs
        .iter()
        .zip(vifs)
        .map(|(v, vif)| {
            let model = match v.model() {
                None | Some("e1000") => StubNicModel::E1000,
                Some("virtio-net") | Some("virtio") => StubNicModel::VirtioPci,
                Some(other) => {
                    return Err(format!("vif {}: model={} is not emulated; use model=e1000 or model=virtio-net", vif.mac, other))
                }
            };
            Ok((vif, model))
        })
        .collect()
}

/// xl's default bridge name.
const DEFAULT_BRIDGE: &str = "xenbr0";

/// dom0's disks from `dom0_disk=` options, each in xl's disk syntax.
fn dom0_disks(specs: &[String]) -> Result<Vec<crate::vdisk::DiskConfig>, String> {
    let mut parsed = Vec::new();
    for s in specs {
        let (d, warnings) = ferrite_config::DiskSpec::parse(s).map_err(|e| format!("dom0_disk={}: {}", s, e))?;
        for w in warnings {
            log::warn!("dom0_disk={}: {}", s, w);
        }
        parsed.push(d);
    }
    pvh_disks(&parsed, &BootModules)
}

/// A PVH domain's disks as virtio-blk (`xvdX`, `sdX` or `hdX` names
/// alike; the guest names them itself, `vdX` in Linux): `phy:` host disks,
/// and `file:` and `nbd:` disks on NBD servers.
fn pvh_disks(specs: &[ferrite_config::DiskSpec], files: &dyn Files) -> Result<Vec<crate::vdisk::DiskConfig>, String> {
    use ferrite_config::{Access, DevType, DiskKind};
    use crate::vdisk::{DiskConfig, DiskSource};
    let mut disks = Vec::new();
    for d in specs {
        if d.devtype == DevType::Cdrom {
            return Err(format!("disk {}: PVH domains have no CD-ROMs", d.vdev.name));
        }
        let target = d.target.clone().ok_or_else(|| format!("disk {}: no target", d.vdev.name))?;
        let source = match d.kind {
            DiskKind::File | DiskKind::Nbd => DiskSource::Nbd(files.nbd_disk(d)?),
            DiskKind::Phy | DiskKind::Unspecified => DiskSource::Host(target),
            DiskKind::Module => return Err(format!("disk {}: module: disks are for HVM guests only, for now", d.vdev.name)),
        };
        disks.push(DiskConfig { source, vdev: d.vdev.name.clone(), read_only: d.access == Access::ReadOnly });
    }
    Ok(disks)
}

/// virtio-blk disks an HVM guest may have (PCI devices 00:03.0 onwards in
/// its stub domain).
const MAX_HVM_VIRTIO_DISKS: usize = 8;

/// An HVM domain's firmware, disks and optional direct-boot kernel. The
/// stub-domain image always comes from the boot modules.
fn hvm_boot(cfg: &ferrite_config::DomainConfig, files: &dyn Files) -> Result<Boot, String> {
    use ferrite_abi::StubDiskModel;
    use ferrite_config::{Access, DevType, DiskSpecification, DiskTransport, Firmware, VdevBus};
    let mut virtio_disks = 0usize;
    let bios = match &cfg.firmware {
        None | Some(Firmware::Bios) => files.get(DEFAULT_BIOS_MODULE, "the BIOS")?,
        Some(Firmware::Path(p)) => files.get(p, "the firmware")?,
        Some(Firmware::Uefi) => return Err("UEFI firmware is not supported; use firmware='bios'".into()),
    };
    let stub_image = MODULES
        .get()
        .and_then(|mods| mods.iter().find(|(name, _)| name.starts_with(STUBDOM_MODULE)))
        .map(|(_, bytes)| Blob::Module(bytes))
        .ok_or_else(|| format!("no stub-domain image: load {} as a boot module", STUBDOM_MODULE))?;
    let mut disks = Vec::new();
    for d in &cfg.disks {
        if d.devtype == DevType::Cdrom {
            return Err(format!("disk {}: CD-ROMs are not emulated yet", d.vdev.name));
        }
        let model = match (d.specification, d.transport) {
            (DiskSpecification::Xen, _) => {
                if d.vdev.bus != VdevBus::Ide || d.vdev.disk > 3 || d.vdev.partition != 0 {
                    return Err(format!(
                        "disk {}: HVM guests get IDE disks (hda, hdb, hdc or hdd), or virtio-blk with specification=virtio",
                        d.vdev.name
                    ));
                }
                StubDiskModel::Ide
            }
            (DiskSpecification::Virtio, DiskTransport::Mmio) => {
                return Err(format!("disk {}: HVM guests get virtio-blk on PCI; use transport=pci (or none)", d.vdev.name));
            }
            (DiskSpecification::Virtio, _) => {
                if d.vdev.bus == VdevBus::Number || d.vdev.partition != 0 {
                    return Err(format!("disk {}: name a whole disk (e.g. xvda) for a virtio disk", d.vdev.name));
                }
                virtio_disks += 1;
                if virtio_disks > MAX_HVM_VIRTIO_DISKS {
                    return Err(format!("disk {}: at most {} virtio disks for an HVM guest", d.vdev.name, MAX_HVM_VIRTIO_DISKS));
                }
                StubDiskModel::VirtioPci
            }
        };
        let target = d.target.clone().ok_or_else(|| format!("disk {}: no target", d.vdev.name))?;
        let (image, nbd) = match d.kind {
            ferrite_config::DiskKind::Module => (Some(files.get(&target, "disk image")?), None),
            // Served over NBD, as for PVH: `xl create` serves `file:`
            // images; `nbd:` names a server.
            ferrite_config::DiskKind::File | ferrite_config::DiskKind::Nbd => (None, Some(files.nbd_disk(d)?)),
            ferrite_config::DiskKind::Phy | ferrite_config::DiskKind::Unspecified => (None, None),
        };
        disks.push(crate::domain::HvmDisk { target, vdev: d.vdev.name.clone(), read_only: d.access == Access::ReadOnly, model, image, nbd });
    }
    let linux = match cfg.kernel.as_deref() {
        Some(k) => Some(crate::domain::HvmLinux {
            kernel: files.get(k, "kernel")?,
            initrd: cfg.ramdisk.as_deref().map(|f| files.get(f, "ramdisk")).transpose()?,
            cmdline: cfg.cmdline.clone().unwrap_or_default(),
            option_rom: files.get(LINUXBOOT_ROM_MODULE, "the direct-boot option ROM")?,
        }),
        None => None,
    };
    let boot_order = cfg
        .boot
        .iter()
        .map(|b| match b {
            ferrite_config::BootDevice::Floppy => 'a',
            ferrite_config::BootDevice::Disk => 'c',
            ferrite_config::BootDevice::Cdrom => 'd',
            ferrite_config::BootDevice::Network => 'n',
        })
        .collect();
    Ok(Boot::Hvm(crate::domain::HvmBoot {
        bios,
        stub_image,
        disks,
        nics: hvm_nics(cfg)?,
        linux,
        boot_order,
        fault_inject_ata_command: cfg.device_model_fault_inject,
        fault_inject_wild_access: cfg.device_model_fault_inject_wild,
    }))
}

/// A kernel module's command line: its string without the file name (the
/// first word, which QEMU and GRUB legacy put there).
fn module_args(cmdline: &str, loader: Option<&str>) -> String {
    let norm = bootinfo::normalize_multiboot_cmdline(cmdline, loader);
    let name = module_name(cmdline);
    match norm.split_once(' ') {
        Some((first, rest)) if first.rsplit('/').next() == Some(name) && !name.contains('=') => String::from(rest.trim_start()),
        None if norm.rsplit('/').next() == Some(name) && !name.contains('=') => String::new(),
        _ => norm,
    }
}
