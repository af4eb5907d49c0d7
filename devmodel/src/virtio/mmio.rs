//! The virtio-mmio version 2 register file (virtio 1.x §4.2.2) with one
//! virtqueue, shared by the devices in this module.
//!
//! Control registers (below 0x100) are 32 bits wide: other sizes or
//! misaligned offsets read 0 and writes are ignored. The device-specific
//! configuration space at 0x100 reads in any size 1/2/4/8 as bytes (past
//! its end as 0) and is read-only.

use super::queue::SplitQueue;
use super::{feature, interrupt, status, VirtioError};

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

/// What a guest write asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioEffect {
    None,
    /// QueueNotify for the request queue: call `take_requests`.
    Notify,
    /// The device was reset (Status 0) or its queue disabled: every
    /// request taken before is forgotten and its completion will be
    /// ignored; the backend may drop the work.
    Reset,
}

/// The transport state of one device with one queue.
#[derive(Debug, Clone)]
pub struct Transport {
    device_id: u32,
    device_features: u64,
    queue_num_max: u16,
    device_features_sel: u32,
    driver_features_sel: u32,
    pub(crate) driver_features: u64,
    queue_sel: u32,
    pub(crate) queue: SplitQueue,
    pub(crate) interrupt_status: u32,
    pub(crate) status: u32,
    /// Bumped by every reset or queue disable: requests taken before carry
    /// an older value and their completions are dropped.
    pub(crate) generation: u32,
    /// Set with DEVICE_NEEDS_RESET; nothing is processed until reset.
    pub(crate) broken: Option<VirtioError>,
    /// A protocol error found during an MMIO write, reported by the next
    /// call that can return an error.
    pub(crate) unreported: Option<VirtioError>,
}

impl Transport {
    pub fn new(device_id: u32, device_features: u64, queue_num_max: u16) -> Self {
        Transport {
            device_id,
            device_features,
            queue_num_max,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue: SplitQueue::default(),
            interrupt_status: 0,
            status: 0,
            generation: 0,
            broken: None,
            unreported: None,
        }
    }

    fn reset(&mut self) {
        *self = Transport {
            generation: self.generation.wrapping_add(1),
            ..Transport::new(self.device_id, self.device_features, self.queue_num_max)
        };
    }

    /// The features both sides agreed on (valid once FEATURES_OK stuck).
    pub fn negotiated(&self) -> u64 {
        self.driver_features & self.device_features
    }

    /// The queue may be processed: the driver finished initialisation and
    /// nothing is broken.
    pub fn live(&self) -> bool {
        let want = status::FEATURES_OK | status::DRIVER_OK;
        self.status & want == want
            && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && self.queue.ready
            && self.broken.is_none()
    }

    /// Enters DEVICE_NEEDS_RESET and tells the driver with a
    /// configuration-change interrupt (§2.1.2).
    pub fn fail(&mut self, e: VirtioError) {
        // The caller gets the error back and logs it (rate-limited as it
        // sees fit): a guest can break and reset its device in a loop.
        if self.broken.is_none() {
            self.broken = Some(e);
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt_status |= interrupt::CONFIG_CHANGE;
    }

    pub fn read(&self, offset: u64, size: u8, config: &[u8]) -> u64 {
        if offset >= CONFIG {
            return read_config(config, offset - CONFIG, size);
        }
        if size != 4 || offset % 4 != 0 {
            return 0;
        }
        let q0 = self.queue_sel == 0;
        let value: u32 = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device_id,
            VENDOR_ID => FERRITE_VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX if q0 => u32::from(self.queue_num_max),
            QUEUE_READY if q0 => u32::from(self.queue.ready),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            // No shared memory regions: their length and base read as -1.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            // The configuration never changes while the device runs.
            CONFIG_GENERATION => 0,
            // Write-only registers, and queues that do not exist.
            _ => 0,
        };
        u64::from(value)
    }

    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> MmioEffect {
        if offset >= CONFIG || size != 4 || offset % 4 != 0 {
            return MmioEffect::None;
        }
        let v = value as u32;
        let q0 = self.queue_sel == 0;
        // Queue layout registers are frozen while the queue is ready (§4.2.2.3).
        let q_writable = q0 && !self.queue.ready;
        let q = &mut self.queue;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if q_writable => q.num = v,
            QUEUE_DESC_LOW if q_writable => set_low(&mut q.desc_gpa, v),
            QUEUE_DESC_HIGH if q_writable => set_high(&mut q.desc_gpa, v),
            QUEUE_DRIVER_LOW if q_writable => set_low(&mut q.avail_gpa, v),
            QUEUE_DRIVER_HIGH if q_writable => set_high(&mut q.avail_gpa, v),
            QUEUE_DEVICE_LOW if q_writable => set_low(&mut q.used_gpa, v),
            QUEUE_DEVICE_HIGH if q_writable => set_high(&mut q.used_gpa, v),
            QUEUE_READY if q0 => return self.write_queue_ready(v),
            QUEUE_NOTIFY if v == 0 => return MmioEffect::Notify,
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => return self.write_status(v),
            _ => {}
        }
        MmioEffect::None
    }

    fn write_queue_ready(&mut self, v: u32) -> MmioEffect {
        match (v & 1 != 0, self.queue.ready) {
            (true, false) => {
                if let Err(e) = self.queue.enable(self.queue_num_max) {
                    self.fail(e);
                    self.unreported = Some(e);
                }
                MmioEffect::None
            }
            (false, true) => {
                self.queue.ready = false;
                self.generation = self.generation.wrapping_add(1);
                MmioEffect::Reset
            }
            _ => MmioEffect::None,
        }
    }

    fn write_status(&mut self, v: u32) -> MmioEffect {
        if v == 0 {
            self.reset();
            return MmioEffect::Reset;
        }
        let mut new = v & 0xff & !status::DEVICE_NEEDS_RESET;
        // FEATURES_OK sticks only for an acceptable feature set: nothing
        // we did not offer, and the modern interface (§2.2.2, §6.1).
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered_only = self.driver_features & !self.device_features == 0;
            if !offered_only || self.driver_features & feature::VERSION_1 == 0 {
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new | (self.status & status::DEVICE_NEEDS_RESET);
        MmioEffect::None
    }
}

fn set_low(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

fn set_high(reg: &mut u64, v: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
}

/// Little-endian bytes of the configuration space at `offset`; bytes past
/// its end read 0.
fn read_config(config: &[u8], offset: u64, size: u8) -> u64 {
    if !matches!(size, 1 | 2 | 4 | 8) {
        return 0;
    }
    let mut value = 0u64;
    for i in 0..u64::from(size) {
        let byte = offset
            .checked_add(i)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
        value |= u64::from(byte) << (8 * i);
    }
    value
}
