//! The transport-neutral state of a virtio device with one virtqueue:
//! feature negotiation, device status, the queue's configuration, the
//! interrupt status, reset and DEVICE_NEEDS_RESET. The register front ends
//! ([`super::mmio`], [`super::pci`]) decode guest accesses into calls
//! here; the device logic ([`super::blk`]) reads the queue and raises
//! interrupts through it.

use super::queue::SplitQueue;
use super::{feature, interrupt, status, VirtioError};

/// What a guest register write asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver notified the request queue: call `take_requests`.
    Notify,
    /// The device was reset (status 0) or its queue disabled: every
    /// request taken before is forgotten and its completion will be
    /// ignored; the backend may drop the work.
    Reset,
}

/// The state both transports share.
#[derive(Debug, Clone)]
pub struct VirtioState {
    device_id: u32,
    device_features: u64,
    pub(crate) queue_num_max: u16,
    /// QueueNum after a reset: 0 for virtio-mmio (the driver must write
    /// it), QueueNumMax for virtio-pci (`queue_size` reads the maximum
    /// until the driver lowers it).
    queue_num_at_reset: u32,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) driver_features: u64,
    pub(crate) queue_sel: u32,
    pub(crate) queue: SplitQueue,
    pub(crate) interrupt_status: u32,
    pub(crate) status: u32,
    /// Bumped by every reset or queue disable: requests taken before carry
    /// an older value and their completions are dropped.
    pub(crate) generation: u32,
    /// Set with DEVICE_NEEDS_RESET; nothing is processed until reset.
    pub(crate) broken: Option<VirtioError>,
    /// A protocol error found during a register write, reported by the
    /// next call that can return an error.
    pub(crate) unreported: Option<VirtioError>,
}

impl VirtioState {
    pub fn new(device_id: u32, device_features: u64, queue_num_max: u16, queue_num_at_reset: u32) -> Self {
        let mut queue = SplitQueue::default();
        queue.num = queue_num_at_reset;
        VirtioState {
            device_id,
            device_features,
            queue_num_max,
            queue_num_at_reset,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue,
            interrupt_status: 0,
            status: 0,
            generation: 0,
            broken: None,
            unreported: None,
        }
    }

    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    fn reset(&mut self) {
        *self = VirtioState {
            generation: self.generation.wrapping_add(1),
            ..VirtioState::new(
                self.device_id,
                self.device_features,
                self.queue_num_max,
                self.queue_num_at_reset,
            )
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

    /// The selected queue exists (only queue 0 does).
    pub(crate) fn queue_selected(&self) -> bool {
        self.queue_sel == 0
    }

    /// The selected queue's layout may be written: it exists and is not
    /// enabled (§4.1.4.3.2, §4.2.2.3).
    pub(crate) fn queue_writable(&self) -> bool {
        self.queue_selected() && !self.queue.ready
    }

    /// The 32 feature bits DeviceFeaturesSel selects (0 past 64 bits).
    pub(crate) fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        }
    }

    /// DriverFeatures for the half DriverFeaturesSel selects; frozen once
    /// FEATURES_OK is set.
    pub(crate) fn write_driver_features(&mut self, v: u32) {
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    /// QueueReady / queue_enable. Enabling checks the queue's
    /// configuration (a bad one breaks the device); disabling forgets the
    /// requests in flight.
    pub(crate) fn write_queue_ready(&mut self, v: u32) -> Effect {
        if !self.queue_selected() {
            return Effect::None;
        }
        match (v & 1 != 0, self.queue.ready) {
            (true, false) => {
                if let Err(e) = self.queue.enable(self.queue_num_max) {
                    self.fail(e);
                    self.unreported = Some(e);
                }
                Effect::None
            }
            (false, true) => {
                self.queue.ready = false;
                self.generation = self.generation.wrapping_add(1);
                Effect::Reset
            }
            _ => Effect::None,
        }
    }

    /// Status / device_status. 0 resets the device.
    pub(crate) fn write_status(&mut self, v: u32) -> Effect {
        if v == 0 {
            self.reset();
            return Effect::Reset;
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
        Effect::None
    }
}

pub(crate) fn set_low(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

pub(crate) fn set_high(reg: &mut u64, v: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
}

/// Little-endian bytes of a device configuration space at `offset`, in
/// sizes 1, 2, 4 or 8 (others read 0); bytes past its end read 0.
pub(crate) fn read_config(config: &[u8], offset: u64, size: u8) -> u64 {
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
