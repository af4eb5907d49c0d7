//! The virtio-mmio version 2 register file (virtio 1.x §4.2.2): a register
//! front end over [`VirtioState`], for a device with any number of
//! virtqueues. QueueSel picks the queue the queue registers address (one
//! that does not exist reads 0 and ignores writes); QueueNotify names the
//! queue notified ([`Effect::Notify`], nothing for a queue that does not
//! exist).
//!
//! Control registers (below 0x100) are 32 bits wide: other sizes or
//! misaligned offsets read 0 and writes are ignored. The device-specific
//! configuration space at 0x100 reads in any size 1/2/4/8 as bytes (past
//! its end as 0) and is read-only.

use super::common::{read_config, set_high, set_low, Effect, VirtioState};

/// What a guest write asks of the caller (the transport-neutral [`Effect`]).
pub use super::common::Effect as MmioEffect;

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const VENDOR_ID: u64 = 0x00c;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const SHM_SEL: u64 = 0x0ac;
pub const SHM_LEN_LOW: u64 = 0x0b0;
pub const SHM_LEN_HIGH: u64 = 0x0b4;
pub const SHM_BASE_LOW: u64 = 0x0b8;
pub const SHM_BASE_HIGH: u64 = 0x0bc;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;
/// Size of one virtio-mmio window.
pub const WINDOW_LEN: u64 = 0x200;

/// "virt", little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Ferrite's vendor ID: "FRRT" in memory order.
pub const FERRITE_VENDOR_ID: u32 = u32::from_le_bytes(*b"FRRT");

/// A guest read of the window at `offset` (`config`: the device's
/// configuration space).
pub(crate) fn read(s: &VirtioState, offset: u64, size: u8, config: &[u8]) -> u64 {
    if offset >= CONFIG {
        return read_config(config, offset - CONFIG, size);
    }
    if size != 4 || offset % 4 != 0 {
        return 0;
    }
    let q = s.selected();
    let value: u32 = match offset {
        MAGIC_VALUE => MAGIC,
        VERSION => 2,
        DEVICE_ID => s.device_id(),
        VENDOR_ID => FERRITE_VENDOR_ID,
        DEVICE_FEATURES => s.device_features_word(),
        QUEUE_NUM_MAX if q.is_some() => u32::from(s.queue_num_max),
        QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
        INTERRUPT_STATUS => s.interrupt_status,
        STATUS => s.status,
        // No shared memory regions: their length and base read as -1.
        SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
        // The configuration never changes while the device runs.
        CONFIG_GENERATION => 0,
        // Write-only registers, and queues that do not exist.
        _ => 0,
    };
    u64::from(value)
}

/// A guest write to the window.
pub(crate) fn write(s: &mut VirtioState, offset: u64, size: u8, value: u64) -> Effect {
    if offset >= CONFIG || size != 4 || offset % 4 != 0 {
        return Effect::None;
    }
    let v = value as u32;
    match offset {
        DEVICE_FEATURES_SEL => s.device_features_sel = v,
        DRIVER_FEATURES_SEL => s.driver_features_sel = v,
        DRIVER_FEATURES => s.write_driver_features(v),
        QUEUE_SEL => s.queue_sel = v,
        QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
        | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
            // Queue layout registers exist only for a queue the device
            // has, and are frozen while it is ready (§4.2.2.3).
            if let Some(q) = s.selected_writable() {
                match offset {
                    QUEUE_NUM => q.num = v,
                    QUEUE_DESC_LOW => set_low(&mut q.desc_gpa, v),
                    QUEUE_DESC_HIGH => set_high(&mut q.desc_gpa, v),
                    QUEUE_DRIVER_LOW => set_low(&mut q.avail_gpa, v),
                    QUEUE_DRIVER_HIGH => set_high(&mut q.avail_gpa, v),
                    QUEUE_DEVICE_LOW => set_low(&mut q.used_gpa, v),
                    _ => set_high(&mut q.used_gpa, v),
                }
            }
        }
        QUEUE_READY => return s.write_queue_ready(v),
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        QUEUE_NOTIFY => return s.notify(v),
        INTERRUPT_ACK => s.interrupt_status &= !v,
        STATUS => return s.write_status(v),
        _ => {}
    }
    Effect::None
}
