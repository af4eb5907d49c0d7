//! What a domain is built from (a config file, the boot command line or
//! `xl create`): kept whole, so that a restart builds the same domain
//! again.

use crate::mm::blob::Blob;
use alloc::string::String;
use alloc::vec::Vec;

/// What happens when a domain powers off, reboots or crashes (xl's
/// `on_poweroff` / `on_reboot` / `on_crash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
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

/// A disk of an HVM guest, from its config.
#[derive(Clone)]
pub struct HvmDisk {
    /// The host disk (virtio-blk serial) backing it, or the config's
    /// `file:`/`nbd:` target (for messages).
    pub target: String,
    /// Where the guest sees it: `hda`..`hdd` for IDE; any vdev for
    /// virtio-blk (the guest names those itself).
    pub vdev: String,
    pub read_only: bool,
    /// IDE or virtio-blk on the PCI bus (xl `specification=`).
    pub model: ferrite_abi::StubDiskModel,
    /// `module:NAME`: the boot module served from RAM instead of a host disk.
    pub image: Option<Blob>,
    /// `file:` and `nbd:`: the NBD export serving it, connected before
    /// the domain is built (and kept for its restarts, as PVH disks are).
    pub nbd: Option<alloc::sync::Arc<crate::nbd::NbdDisk>>,
}

/// Direct Linux boot through fw_cfg (xl's `kernel=`/`ramdisk=`/`cmdline=`
/// for HVM), done by QEMU's `linuxboot_dma.bin` option ROM under SeaBIOS.
#[derive(Clone)]
pub struct HvmLinux {
    pub kernel: Blob,
    pub initrd: Option<Blob>,
    pub cmdline: String,
    pub option_rom: Blob,
}

/// What an HVM domain boots with.
#[derive(Clone)]
pub struct HvmBoot {
    pub bios: Blob,
    pub stub_image: Blob,
    pub disks: Vec<HvmDisk>,
    /// NICs: each a port on its bridge, emulated by the stub domain.
    pub nics: Vec<(crate::vnet::VifConfig, ferrite_abi::StubNicModel)>,
    pub linux: Option<HvmLinux>,
    pub boot_order: String,
    /// Test builds of the stub: make its IDE model crash on this command.
    pub fault_inject_ata_command: Option<u8>,
    /// ... and make that command a write outside the stub's memory instead.
    pub fault_inject_wild_access: bool,
}
