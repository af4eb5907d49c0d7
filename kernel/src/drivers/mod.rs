//! Drivers for the host's own devices.

pub mod uart;
pub mod pci;
pub mod ramdisk;
pub mod virtio;
pub mod virtio_blk;
pub mod virtio_net;

use alloc::vec::Vec;
use log::info;

/// Every function on the host's PCI buses, with unassigned memory BARs
/// placed (firmware under QEMU's direct kernel boot leaves some empty).
pub fn host_pci_functions(config: &pci::ConfigAccess) -> Vec<pci::PciFunction> {
    let functions = pci::enumerate(config);
    for f in &functions {
        log::debug!("pci {}: {:04x}:{:04x} class {:02x}.{:02x}", f.address, f.vendor_id, f.device_id, f.class, f.subclass);
    }
    for (at, bar) in pci::assign_unassigned_bars(config, &functions) {
        info!("pci {}: BAR {} was unassigned; placed at {:#x} ({} KiB)", at, bar.index, bar.address, bar.size >> 10);
    }
    functions
}
