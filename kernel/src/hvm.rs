//! HVM domains: an unmodified guest that starts at the reset vector in real
//! mode with a BIOS (SeaBIOS), with PC devices emulated by a stub domain
//! of its own, built and destroyed together with it.
//!
//! Memory: RAM from 0 up to the PCI hole at 3 GiB and the rest from 4 GiB;
//! the BIOS image read-only at the top of 4 GiB, and its last 128 KiB also
//! at 0xE0000–0xFFFFF (as RAM: SeaBIOS makes that range writable and
//! copies itself there anyway, as it does on QEMU with PAM).

use crate::mm::blob::Blob;
use crate::domain::{Action, Boot, Domain, DomainSpec, HvmBoot, LoaderMemory, Role};
use crate::drivers::virtio_blk;
use crate::ioreq::IoreqServer;
use crate::mm::guest::{GuestMemory, PCI_HOLE_START};
use crate::platform::Devices;
use crate::stubdom::{DiskBackend, StubBackends, StubDisk};
use crate::virt::{Capabilities, EntryState, Segment};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use ferrite_abi::{DataSource, DirectLinuxBoot, StubConfig, GUEST_WINDOW, IOREQ_GPA, IOREQ_SLOTS, STUB_RAM_BYTES};
use log::info;
use spin::Mutex;

/// The BIOS's low alias ends at 1 MiB.
const LOW_BIOS_END: u64 = 0x10_0000;
const LOW_BIOS_MAX: usize = 128 << 10;

fn hvm_boot(spec: &DomainSpec) -> Result<&HvmBoot, String> {
    match &spec.boot {
        Boot::Hvm(h) => Ok(h),
        _ => Err(format!("{}: not an HVM domain", spec.name)),
    }
}

/// Builds an HVM domain and its stub domain and starts both.
pub fn create(spec: DomainSpec, caps: Capabilities) -> Result<Arc<Domain>, String> {
    let name = spec.name.clone();
    let h = hvm_boot(&spec)?.clone();
    if !caps.real_mode {
        return Err(format!(
            "{}: HVM guests start in real mode (the BIOS), which needs VMX's unrestricted guest, and this CPU lacks it; PVH guests (type = \"pvh\") run here",
            name
        ));
    }
    if spec.vcpus as usize > IOREQ_SLOTS {
        return Err(format!("{}: at most {} vCPUs for an HVM guest", name, IOREQ_SLOTS));
    }
    let bios = h.bios.clone();
    if bios.is_empty() || bios.len() % 4096 != 0 || bios.len() > (16 << 20) {
        return Err(format!("{}: the BIOS image is {} bytes; expected a multiple of 4 KiB up to 16 MiB (e.g. SeaBIOS bios-256k.bin)", name, bios.len()));
    }
    // Every disk must exist before anything is built.
    let mut disks = Vec::new();
    for d in &h.disks {
        let device = match (&d.image, &d.nbd) {
            (Some(image), _) => {
                let ram = crate::drivers::ramdisk::RamDisk::new(&d.target, image.clone(), !d.read_only).map_err(|e| format!("{}: {}", name, e))?;
                DiskBackend::Ram(Arc::new(ram))
            }
            (None, Some(nbd)) => {
                // Connected before the domain is built (as for PVH disks):
                // its size and flags are what the stub is told.
                nbd.export()
                    .map_err(|why| format!("{}: disk {}: NBD {}: {}", name, d.vdev, nbd.name(), why))?
                    .ok_or_else(|| format!("{}: disk {}: NBD {} is not connected yet", name, d.vdev, nbd.name()))?;
                DiskBackend::Nbd(nbd.clone())
            }
            (None, None) => DiskBackend::Host(virtio_blk::find(&d.target).ok_or_else(|| {
                format!("{}: disk '{}' is not a host disk (give Ferrite a virtio-blk device with serial={})", name, d.target, d.target)
            })?),
        };
        disks.push(StubDisk { device, read_only: d.read_only });
    }
    // A RAM disk is the domain's own copy (or read-only): only host disks
    // and NBD exports can be shared, and are claimed as PVH disks are.
    let wanted: Vec<(String, bool)> = disks
        .iter()
        .filter(|s| !matches!(s.device, DiskBackend::Ram(_)))
        .map(|s| (s.device.claim_target(), !s.read_only && !s.device.read_only()))
        .collect();
    crate::disk_claims::check(&name, &wanted, None)?;

    crate::domain::check_memory(&name, spec.memory_bytes + ferrite_abi::STUB_RAM_BYTES)?;
    let mut mem = GuestMemory::new(spec.memory_bytes).map_err(|e| format!("{}: {}", name, e))?;
    mem.map_rom((1 << 32) - bios.len() as u64, &bios).map_err(|e| format!("{}: BIOS: {}", name, e))?;
    let low = &bios[bios.len().saturating_sub(LOW_BIOS_MAX)..];
    mem.write(LOW_BIOS_END - low.len() as u64, low).map_err(|e| format!("{}: BIOS: {}", name, e))?;
    let ram = mem.ram_bytes();
    let below_4g = ram.min(PCI_HOLE_START);
    let above_4g = ram - below_4g;

    let layout = crate::platform::guest_layout();
    let devices = Devices::new_hvm(layout, below_4g, above_4g, spec.vcpus);
    let ioreq = Arc::new(IoreqServer::new().ok_or_else(|| format!("{}: out of memory", name))?);
    let role = Role::Hvm { ioreq: ioreq.clone(), stub: Mutex::new(alloc::sync::Weak::new()) };
    let guest = Domain::build(spec, mem, devices, role, Vec::new(), reset_vector(), caps)?;
    if let Err(e) = crate::disk_claims::check(&name, &wanted, Some(guest.id)) {
        guest.shut_down(crate::domain::DomainState::Crashed(e.clone()));
        return Err(e);
    }

    let stub = match create_stub(&guest, &h, ioreq.clone(), disks, below_4g, above_4g, caps) {
        Ok(s) => s,
        Err(e) => {
            guest.shut_down(crate::domain::DomainState::Crashed(format!("no stub domain: {}", e)));
            return Err(e);
        }
    };
    if let Role::Hvm { stub: link, .. } = &guest.role {
        *link.lock() = Arc::downgrade(&stub);
    }
    ioreq.set_stub_vcpu(stub.runnable(0));
    for d in &h.disks {
        if let Some(nbd) = &d.nbd {
            let model = match d.model {
                ferrite_abi::StubDiskModel::Ide => "IDE",
                ferrite_abi::StubDiskModel::VirtioPci => "virtio-blk on PCI",
            };
            info!("domain {} ({}): disk {} is NBD export {} ({}), {}", guest.id, guest.name, d.vdev, nbd.name(), if d.read_only { "r" } else { "w" }, model);
        }
    }
    info!(
        "domain {} ({}): HVM, {} MiB, {} vCPUs, BIOS {} KiB, {} disk(s); device model in domain {} ({})",
        guest.id,
        guest.name,
        ram >> 20,
        guest.spec.vcpus,
        bios.len() >> 10,
        h.disks.len(),
        stub.id,
        stub.name
    );
    stub.start();
    guest.start();
    Ok(guest)
}

/// A PC's vCPU after reset: real mode, CS base 0xFFFF0000, IP 0xFFF0.
fn reset_vector() -> EntryState {
    let data = Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x93 };
    EntryState {
        rip: 0xFFF0,
        rflags: 2,
        cr0: 0x10,
        cs: Segment { selector: 0xF000, base: 0xFFFF_0000, limit: 0xFFFF, attrib: 0x9B },
        ds: data,
        tr: Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x8B },
        gdtr_limit: 0xFFFF,
        ..Default::default()
    }
}

/// 64-bit flat state for a stub domain entering at `rip` with the page
/// tables at `cr3`.
fn stub_entry(rip: u64, cr3: u64, rdi: u64) -> EntryState {
    EntryState {
        rip,
        rdi,
        rflags: 2,
        cr0: 0x8001_0033, // PG, WP, NE, ET, MP, PE
        cr3,
        cr4: 0x620,       // OSXMMEXCPT, OSFXSR, PAE
        efer: 0x500,      // LMA, LME
        cs: Segment { selector: 0x08, base: 0, limit: 0xFFFF_FFFF, attrib: 0xA9B },
        ds: Segment { selector: 0x10, base: 0, limit: 0xFFFF_FFFF, attrib: 0xC93 },
        tr: Segment { selector: 0x18, base: 0, limit: 0x67, attrib: 0x8B },
        ..Default::default()
    }
}

fn create_stub(
    guest: &Arc<Domain>,
    h: &HvmBoot,
    ioreq: Arc<IoreqServer>,
    disks: Vec<StubDisk>,
    below_4g: u64,
    above_4g: u64,
    caps: Capabilities,
) -> Result<Arc<Domain>, String> {
    let name = format!("{}-dm", guest.name);
    let mut mem = GuestMemory::new(STUB_RAM_BYTES).map_err(|e| format!("{}: {}", name, e))?;
    mem.map_shared_page(IOREQ_GPA, ioreq.page_hpa()).map_err(|e| format!("{}: {}", name, e))?;
    mem.map_shared_page(ferrite_abi::BUFIO_GPA, ioreq.bufio_hpa()).map_err(|e| format!("{}: {}", name, e))?;
    mem.map_window(GUEST_WINDOW, &guest.mem).map_err(|e| format!("{}: {}", name, e))?;

    let mut data: Vec<Blob> = Vec::new();
    let mut source = |bytes: &Blob| {
        data.push(bytes.clone());
        DataSource { handle: (data.len() - 1) as u32, len: bytes.len() as u64 }
    };
    let linux = h.linux.as_ref().map(|l| DirectLinuxBoot {
        kernel: source(&l.kernel),
        initrd: l.initrd.as_ref().map(&mut source),
        cmdline: l.cmdline.clone(),
        option_rom: source(&l.option_rom),
    });
    let nics: Vec<_> = h
        .nics
        .iter()
        .enumerate()
        .map(|(i, (vif, model))| crate::hvmnet::StubNic::new(i as u32, vif.clone(), *model, ioreq.clone()))
        .collect();
    let layout = crate::platform::guest_layout();
    let config = StubConfig {
        guest_id: guest.id,
        guest_name: guest.name.clone(),
        vcpus: guest.spec.vcpus,
        ram_below_4g: below_4g,
        ram_above_4g: above_4g,
        disks: h
            .disks
            .iter()
            .zip(&disks)
            .enumerate()
            .map(|(i, (d, s))| ferrite_abi::StubDisk {
                handle: i as u32,
                name: d.target.clone(),
                vdev: d.vdev.clone(),
                sectors: s.device.sectors(),
                read_only: s.read_only || s.device.read_only(),
                model: d.model,
            })
            .collect(),
        nics: nics.iter().map(|n| n.abi()).collect(),
        linux,
        boot_order: h.boot_order.clone(),
        pm1a_evt: layout.pm1a_evt,
        pm1a_cnt: layout.pm1a_cnt,
        pm_tmr: layout.pm_tmr,
        pm_tmr_32bit: layout.pm_tmr_32bit,
        sci_irq: layout.sci_irq,
        fault_inject_ata_command: h.fault_inject_ata_command,
        fault_inject_wild_access: h.fault_inject_wild_access,
    };
    let bytes = config.to_bytes().map_err(|e| format!("{}: encoding its configuration: {}", name, e))?;
    let entry = ferrite_loader::stub::load_stub(&h.stub_image, &bytes, guest.mem.top(), &mut LoaderMemory(&mem))
        .map_err(|e| format!("{}: cannot load the stub domain image: {}", name, e))?;
    let spec = DomainSpec {
        name,
        memory_bytes: STUB_RAM_BYTES,
        vcpus: 1,
        boot: Boot::Stub,
        affinity: Vec::new(),
        privileged: false,
        on_poweroff: Action::Destroy,
        on_reboot: Action::Destroy,
        on_crash: Action::Destroy,
    };
    let backends = StubBackends { guest: guest.clone(), ioreq, disks, data, nics: nics.clone(), block_wait: Mutex::new(None) };
    let devices = Devices::new_pvh(layout);
    let stub = Domain::build(spec, mem, devices, Role::Stub(alloc::boxed::Box::new(backends)), Vec::new(), stub_entry(entry.rip, entry.cr3, entry.rdi), caps)?;
    let host: Arc<dyn crate::virtio_host::DeviceHost> = stub.clone();
    for n in &nics {
        if let Err(e) = n.attach(Arc::downgrade(&host)) {
            let e = format!("{}: vif {}: {}", guest.name, n.config().mac, e);
            stub.shut_down(crate::domain::DomainState::Crashed(e.clone()));
            return Err(e);
        }
        info!("domain {} ({}): vif {} on bridge {}, {} in {}", guest.id, guest.name, n.config().mac, n.config().bridge, n.model_name(), stub.name);
    }
    Ok(stub)
}
