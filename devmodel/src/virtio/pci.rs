//! The virtio-pci transport (virtio 1.x §4.1), modern only: PCI device
//! 0x1AF4:0x1042 (virtio-blk), revision 1, with the four vendor-specific
//! capabilities Linux's `virtio_pci_modern` and SeaBIOS look for, all in
//! one 32-bit memory BAR ([`BAR_INDEX`], [`BAR_SIZE`] bytes), one region
//! per page:
//!
//! | BAR offset | region | capability |
//! | --- | --- | --- |
//! | 0x0000 | common configuration (`struct virtio_pci_common_cfg`) | type 1 |
//! | 0x1000 | ISR status (one byte, read to clear) | type 3 |
//! | 0x2000 | device configuration (`struct virtio_blk_config`) | type 4 |
//! | 0x3000 | notifications (queue n at +4n; `notify_off_multiplier` 4) | type 2 |
//!
//! No MSI-X: the device raises INTx (pin A), level-triggered, while the
//! ISR is not 0; `config_msix_vector` and `queue_msix_vector` read
//! VIRTIO_MSI_NO_VECTOR and ignore writes, so a driver uses INTx. No
//! VIRTIO_PCI_CAP_PCI_CFG window either (drivers use the BAR).
//!
//! Every access is the guest's and hostile: registers answer only at
//! their own offset and natural size (64-bit queue addresses also as two
//! 32-bit halves); anything else reads 0 and is ignored on write, as are
//! accesses past a region. Queue registers answer only for a queue the
//! device has (queue_select past them: size 0, writes ignored) and are
//! frozen while it is enabled. Queue n is notified by writing n (16 or 32
//! bits) at its own notify address; any other notify write does nothing,
//! and a notify before the queue is set up finds nothing to take.
//!
//! The register logic serves any device with any number of queues
//! ([`PciLayout`]): [`VirtioBlkPci`] and [`VirtioNetPci`] use it.
//!
//! The PCI configuration space itself ([`config_space`]) is a
//! [`ConfigSpace`] on the stub's [`PciBus`](crate::pci::PciBus); the
//! caller decodes the BAR from it and hands BAR-relative accesses here.

use super::blk::{BlkDiskInfo, VirtioBlk, DEVICE_ID_BLOCK};
use super::net::{VirtioNet, DEVICE_ID_NET};
use super::common::{read_config, set_high, set_low, Effect, VirtioState};
use crate::pci::{self, Bar, ConfigSpace};

/// Red Hat / Qumranet, the virtio PCI vendor.
pub const VENDOR_VIRTIO: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device ID.
pub const DEVICE_ID_MODERN_BASE: u16 = 0x1040;
pub const DEVICE_VIRTIO_BLK: u16 = DEVICE_ID_MODERN_BASE + DEVICE_ID_BLOCK as u16;
pub const DEVICE_VIRTIO_NET: u16 = DEVICE_ID_MODERN_BASE + DEVICE_ID_NET as u16;
/// Network controller, Ethernet.
pub const CLASS_ETHERNET: u32 = 0x02_00_00;
/// Mass storage, "other" (QEMU says SCSI; drivers match the IDs).
pub const CLASS_STORAGE_OTHER: u32 = 0x01_80_00;
/// The BAR holding every region.
pub const BAR_INDEX: usize = 0;
pub const BAR_SIZE: u32 = 0x4000;

pub const COMMON_OFFSET: u64 = 0x0000;
/// `sizeof(struct virtio_pci_common_cfg)` of virtio 1.1 (up to
/// `queue_device`).
pub const COMMON_LEN: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 1;
pub const DEVICE_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// virtio-blk's notify region: one queue, notified at the region's start.
pub const NOTIFY_LEN: u64 = 4;
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Capability IDs and virtio capability types (§4.1.4).
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
/// Where the capability list starts in configuration space.
pub const CAP_LIST_START: u8 = 0x40;
/// PCI status bit: a capability list is present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
pub const CAPABILITIES_POINTER: u8 = 0x34;

/// `struct virtio_pci_common_cfg` offsets.
pub mod common_cfg {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// VIRTIO_MSI_NO_VECTOR.
pub const NO_VECTOR: u16 = 0xffff;

/// The shape of a virtio-pci device's BAR: how long its device
/// configuration is and how many queues it notifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciLayout {
    /// Bytes of the device-specific configuration (at most 0x1000).
    pub device_config_len: u64,
    /// Virtqueues: the notify region holds one 4-byte address per queue
    /// (at most 0x400).
    pub num_queues: u16,
}

impl PciLayout {
    /// virtio-blk: `struct virtio_blk_config`, one queue.
    pub const BLK: PciLayout = PciLayout {
        device_config_len: super::blk::CONFIG_LEN as u64,
        num_queues: 1,
    };

    /// virtio-net: `mac` and `status`, receive and transmit queues.
    pub const NET: PciLayout = PciLayout {
        device_config_len: 8,
        num_queues: 2,
    };

    /// Bytes of the notify region.
    pub fn notify_len(&self) -> u64 {
        u64::from(NOTIFY_OFF_MULTIPLIER) * u64::from(self.num_queues)
    }
}

/// The virtio-blk function's configuration space: identity, the memory
/// BAR, interrupt pin A, and the capability list. Command bits the guest
/// may set: memory space, bus master, INTx disable.
pub fn config_space() -> ConfigSpace {
    config_space_for(DEVICE_VIRTIO_BLK, CLASS_STORAGE_OTHER, PciLayout::BLK)
}

/// The configuration space of a virtio-pci function with PCI device ID
/// `device_id` (0x1040 + the virtio device ID), class code `class`, and
/// the BAR regions `layout` describes.
pub fn config_space_for(device_id: u16, class: u32, layout: PciLayout) -> ConfigSpace {
    let mut c = ConfigSpace::new(VENDOR_VIRTIO, device_id, class, 0x01, 0x00);
    let command = pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE;
    let [lo, hi] = command.to_le_bytes();
    c.set_wmask(pci::COMMAND, lo);
    c.set_wmask(pci::COMMAND + 1, hi);
    c.set_u16(pci::STATUS, STATUS_CAP_LIST);
    // Subsystem vendor and ID, as QEMU sets them.
    c.set_u16(0x2c, VENDOR_VIRTIO);
    c.set_u16(0x2e, 0x1100);
    c.set_bar(
        BAR_INDEX,
        Bar::Mem32 {
            size: BAR_SIZE,
            prefetchable: false,
        },
    );
    c.set_u8(pci::INTERRUPT_PIN, 1);
    c.set_u8(CAPABILITIES_POINTER, CAP_LIST_START);
    let caps: [(u8, u64, u64); 4] = [
        (CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN),
        (CAP_ISR_CFG, ISR_OFFSET, ISR_LEN),
        (CAP_DEVICE_CFG, DEVICE_OFFSET, layout.device_config_len),
        (CAP_NOTIFY_CFG, NOTIFY_OFFSET, layout.notify_len()),
    ];
    let mut at = CAP_LIST_START;
    for (i, &(kind, offset, len)) in caps.iter().enumerate() {
        let cap_len: u8 = if kind == CAP_NOTIFY_CFG { 20 } else { 16 };
        let next = if i + 1 == caps.len() { 0 } else { at + cap_len };
        c.set_u8(at, CAP_ID_VENDOR);
        c.set_u8(at + 1, next);
        c.set_u8(at + 2, cap_len);
        c.set_u8(at + 3, kind);
        c.set_u8(at + 4, BAR_INDEX as u8);
        c.set_u8(at + 5, 0); // id
        c.set_u32(at + 8, offset as u32);
        c.set_u32(at + 12, len as u32);
        if kind == CAP_NOTIFY_CFG {
            c.set_u32(at + 16, NOTIFY_OFF_MULTIPLIER);
        }
        at = next;
    }
    c
}

/// A virtio-blk device behind the virtio-pci transport. Dereferences to
/// [`VirtioBlk`] for the requests and the interrupt status.
#[derive(Debug, Clone)]
pub struct VirtioBlkPci {
    blk: VirtioBlk,
}

impl VirtioBlkPci {
    pub fn new(disk: BlkDiskInfo) -> Self {
        VirtioBlkPci {
            blk: VirtioBlk::new_pci(disk),
        }
    }

    /// A guest read of `size` bytes at `offset` in the BAR.
    pub fn bar_read(&mut self, offset: u64, size: u8) -> u64 {
        match region(offset, size, PciLayout::BLK) {
            Some((Region::Common, off)) => common_read(self.blk.state(), off, size),
            Some((Region::Isr, 0)) if size == 1 => {
                // Reading the ISR acknowledges it and lowers INTx.
                u64::from(self.blk.take_interrupt_status() as u8)
            }
            Some((Region::Device, off)) => read_config(self.blk.config(), off, size),
            _ => 0,
        }
    }

    /// A guest write of `size` bytes at `offset` in the BAR. A notify of
    /// queue 0 returns [`Effect::Notify`]`(0)`; a reset [`Effect::Reset`]
    /// (and forgets every request in flight).
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u64) -> Effect {
        match region(offset, size, PciLayout::BLK) {
            Some((Region::Common, off)) => self.blk.register_write(|s| common_write(s, off, size, value)),
            Some((Region::Notify, off)) => notify_write(self.blk.state(), off, size, value),
            _ => Effect::None,
        }
    }
}

impl core::ops::Deref for VirtioBlkPci {
    type Target = VirtioBlk;
    fn deref(&self) -> &VirtioBlk {
        &self.blk
    }
}

impl core::ops::DerefMut for VirtioBlkPci {
    fn deref_mut(&mut self) -> &mut VirtioBlk {
        &mut self.blk
    }
}

/// The virtio-net function's configuration space.
pub fn net_config_space() -> ConfigSpace {
    config_space_for(DEVICE_VIRTIO_NET, CLASS_ETHERNET, PciLayout::NET)
}

/// A virtio-net device behind the virtio-pci transport (HVM guests'
/// `model=virtio-net` vifs). Dereferences to [`VirtioNet`].
#[derive(Debug, Clone)]
pub struct VirtioNetPci {
    net: VirtioNet,
}

impl VirtioNetPci {
    pub fn new(mac: [u8; 6]) -> Self {
        VirtioNetPci { net: VirtioNet::new_pci(mac) }
    }

    /// A guest read of `size` bytes at `offset` in the BAR.
    pub fn bar_read(&mut self, offset: u64, size: u8) -> u64 {
        match region(offset, size, PciLayout::NET) {
            Some((Region::Common, off)) => common_read(self.net.state(), off, size),
            Some((Region::Isr, 0)) if size == 1 => u64::from(self.net.take_interrupt_status() as u8),
            Some((Region::Device, off)) => read_config(self.net.config(), off, size),
            _ => 0,
        }
    }

    /// A guest write of `size` bytes at `offset` in the BAR: a notify
    /// returns [`Effect::Notify`] with the queue.
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u64) -> Effect {
        match region(offset, size, PciLayout::NET) {
            Some((Region::Common, off)) => self.net.register_write(|s| common_write(s, off, size, value)),
            Some((Region::Notify, off)) => notify_write(self.net.state(), off, size, value),
            _ => Effect::None,
        }
    }
}

impl core::ops::Deref for VirtioNetPci {
    type Target = VirtioNet;
    fn deref(&self) -> &VirtioNet {
        &self.net
    }
}

impl core::ops::DerefMut for VirtioNetPci {
    fn deref_mut(&mut self) -> &mut VirtioNet {
        &mut self.net
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Common,
    Isr,
    Device,
    Notify,
}

/// The region an access of `size` bytes at BAR `offset` falls entirely
/// in, and the offset inside it. Sizes other than 1, 2, 4 and 8, and
/// accesses that straddle a region's end, are nobody's.
fn region(offset: u64, size: u8, layout: PciLayout) -> Option<(Region, u64)> {
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let regions = [
        (Region::Common, COMMON_OFFSET, COMMON_LEN),
        (Region::Isr, ISR_OFFSET, ISR_LEN),
        (Region::Device, DEVICE_OFFSET, layout.device_config_len),
        (Region::Notify, NOTIFY_OFFSET, layout.notify_len()),
    ];
    let end = offset.checked_add(u64::from(size))?;
    regions
        .iter()
        .find(|&&(_, start, len)| offset >= start && end <= start + len)
        .map(|&(r, start, _)| (r, offset - start))
}

/// A write at `off` in the notify region: queue n's address is 4n, and
/// the value written (16 or 32 bits) must be n, as Linux's `vp_notify`
/// writes it.
fn notify_write(s: &VirtioState, off: u64, size: u8, value: u64) -> Effect {
    let multiplier = u64::from(NOTIFY_OFF_MULTIPLIER);
    if !matches!(size, 2 | 4) || off % multiplier != 0 {
        return Effect::None;
    }
    let queue = off / multiplier;
    if u64::from(value as u16) != queue {
        return Effect::None;
    }
    s.notify(queue as u32)
}

/// Whether an access is the natural one for a register of `width` bytes
/// at `reg`.
fn at(off: u64, size: u8, reg: u64, width: u8) -> bool {
    off == reg && size == width
}

fn common_read(s: &VirtioState, off: u64, size: u8) -> u64 {
    use common_cfg::*;
    let sel = s.selected();
    match (off, size) {
        (DEVICE_FEATURE_SELECT, 4) => u64::from(s.device_features_sel),
        (DEVICE_FEATURE, 4) => u64::from(s.device_features_word()),
        (DRIVER_FEATURE_SELECT, 4) => u64::from(s.driver_features_sel),
        (DRIVER_FEATURE, 4) => match s.driver_features_sel {
            0 => s.driver_features & 0xffff_ffff,
            1 => s.driver_features >> 32,
            _ => 0,
        },
        (CONFIG_MSIX_VECTOR, 2) | (QUEUE_MSIX_VECTOR, 2) => u64::from(NO_VECTOR),
        (NUM_QUEUES, 2) => u64::from(s.num_queues()),
        (DEVICE_STATUS, 1) => u64::from(s.status as u8),
        (CONFIG_GENERATION, 1) => 0,
        (QUEUE_SELECT, 2) => u64::from(s.queue_sel as u16),
        // A queue that does not exist has size 0 (§4.1.4.3.2).
        (QUEUE_SIZE, 2) => sel.map_or(0, |q| u64::from(q.num as u16)),
        (QUEUE_ENABLE, 2) => sel.map_or(0, |q| u64::from(q.ready)),
        // Queue n is notified at n × the multiplier.
        (QUEUE_NOTIFY_OFF, 2) => sel.map_or(0, |_| u64::from(s.queue_sel as u16)),
        _ => match (sel, queue_address(off, size)) {
            (Some(q), Some((reg, part))) => {
                let full = match reg {
                    QUEUE_DESC => q.desc_gpa,
                    QUEUE_DRIVER => q.avail_gpa,
                    _ => q.used_gpa,
                };
                match part {
                    Part::Whole => full,
                    Part::Low => full & 0xffff_ffff,
                    Part::High => full >> 32,
                }
            }
            _ => 0,
        },
    }
}

#[derive(Clone, Copy)]
enum Part {
    Whole,
    Low,
    High,
}

/// A 64-bit queue address register accessed whole or as a 32-bit half.
fn queue_address(off: u64, size: u8) -> Option<(u64, Part)> {
    use common_cfg::*;
    [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE].into_iter().find_map(|reg| {
        if at(off, size, reg, 8) {
            Some((reg, Part::Whole))
        } else if at(off, size, reg, 4) {
            Some((reg, Part::Low))
        } else if at(off, size, reg + 4, 4) {
            Some((reg, Part::High))
        } else {
            None
        }
    })
}

fn common_write(s: &mut VirtioState, off: u64, size: u8, value: u64) -> Effect {
    use common_cfg::*;
    let v = value as u32;
    match (off, size) {
        (DEVICE_FEATURE_SELECT, 4) => s.device_features_sel = v,
        (DRIVER_FEATURE_SELECT, 4) => s.driver_features_sel = v,
        (DRIVER_FEATURE, 4) => s.write_driver_features(v),
        (DEVICE_STATUS, 1) => return s.write_status(v & 0xff),
        (QUEUE_SELECT, 2) => s.queue_sel = v & 0xffff,
        // The driver may lower the size; enabling checks it.
        (QUEUE_SIZE, 2) => {
            if let Some(q) = s.selected_writable() {
                q.num = v & 0xffff;
            }
        }
        // Only 1 may be written (§4.1.4.3.2); the device is reset through
        // device_status.
        (QUEUE_ENABLE, 2) if v & 0xffff == 1 => return s.write_queue_ready(1),
        // Queue addresses; read-only registers, MSI-X vectors (none) and
        // everything else are ignored.
        _ => {
            if let (Some((reg, part)), Some(q)) = (queue_address(off, size), s.selected_writable()) {
                let field = match reg {
                    QUEUE_DESC => &mut q.desc_gpa,
                    QUEUE_DRIVER => &mut q.avail_gpa,
                    _ => &mut q.used_gpa,
                };
                match part {
                    Part::Whole => *field = value,
                    Part::Low => set_low(field, v),
                    Part::High => set_high(field, v),
                }
            }
        }
    }
    Effect::None
}
