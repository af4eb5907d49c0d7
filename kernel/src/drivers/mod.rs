//! Drivers for the host's own devices.

pub mod uart;
pub mod pci;
pub mod virtio_blk;
