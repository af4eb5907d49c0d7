//! The transport-neutral state of a virtio device with one or more
//! virtqueues: feature negotiation, device status, each queue's
//! configuration (QueueSel picks the one the queue registers address), the
//! interrupt status, reset and DEVICE_NEEDS_RESET. The register front ends
//! ([`super::mmio`], [`super::pci`]) decode guest accesses into calls
//! here; the device logic ([`super::blk`], [`super::vsock`]) reads its
//! queues and raises interrupts through it.

use alloc::vec;
use alloc::vec::Vec;

use super::queue::SplitQueue;
use super::{feature, interrupt, status, VirtioError};

/// What a guest register write asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver notified the queue with this index (always below the
    /// device's queue count; 0 for virtio-blk's request queue).
    Notify(u16),
    /// The device was reset (status 0) or a queue disabled: every
    /// request taken before is forgotten and its completion will be
    /// ignored; the backend may drop the work.
    Reset,
}

/// The state both transports share.
#[derive(Debug, Clone)]
pub struct VirtioState {
    device_id: u32,
    device_features: u64,
    /// QueueNumMax of every queue.
    pub(crate) queue_num_max: u16,
    /// QueueNum after a reset: 0 for virtio-mmio (the driver must write
    /// it), QueueNumMax for virtio-pci (`queue_size` reads the maximum
    /// until the driver lowers it).
    queue_num_at_reset: u32,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) driver_features: u64,
    /// QueueSel as written: may name a queue that does not exist.
    pub(crate) queue_sel: u32,
    /// The device's virtqueues, indexed as the driver numbers them; the
    /// count is fixed at creation (at least 1).
    pub(crate) queues: Vec<SplitQueue>,
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
    /// A device with `num_queues` virtqueues (at least 1 is made).
    pub fn new(
        device_id: u32,
        device_features: u64,
        num_queues: u16,
        queue_num_max: u16,
        queue_num_at_reset: u32,
    ) -> Self {
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
            queues: vec![queue; usize::from(num_queues.max(1))],
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
                self.num_queues(),
                self.queue_num_max,
                self.queue_num_at_reset,
            )
        };
    }

    /// The features both sides agreed on (valid once FEATURES_OK stuck).
    pub fn negotiated(&self) -> u64 {
        self.driver_features & self.device_features
    }

    /// How many virtqueues the device has.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Queue `index`, if the device has it.
    pub fn queue(&self, index: u16) -> Option<&SplitQueue> {
        self.queues.get(usize::from(index))
    }

    pub(crate) fn queue_mut(&mut self, index: u16) -> Option<&mut SplitQueue> {
        self.queues.get_mut(usize::from(index))
    }

    /// The driver finished initialisation and nothing is broken.
    pub fn device_live(&self) -> bool {
        let want = status::FEATURES_OK | status::DRIVER_OK;
        self.status & want == want
            && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && self.broken.is_none()
    }

    /// Queue `index` may be processed: the device is live and the queue
    /// exists and is enabled.
    pub fn queue_live(&self, index: u16) -> bool {
        self.device_live() && self.queue(index).is_some_and(|q| q.ready)
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

    /// The queue QueueSel names, if it exists (reads of a missing queue's
    /// registers return 0, writes are ignored).
    pub(crate) fn selected(&self) -> Option<&SplitQueue> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get(i))
    }

    /// The selected queue if its layout may be written: it exists and is
    /// not enabled (§4.1.4.3.2, §4.2.2.3).
    pub(crate) fn selected_writable(&mut self) -> Option<&mut SplitQueue> {
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
            .filter(|q| !q.ready)
    }

    /// A notification naming queue `index`: [`Effect::Notify`] for a queue
    /// the device has, nothing otherwise.
    pub(crate) fn notify(&self, index: u32) -> Effect {
        match u16::try_from(index) {
            Ok(i) if i < self.num_queues() => Effect::Notify(i),
            _ => Effect::None,
        }
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

    /// QueueReady / queue_enable of the selected queue. Enabling checks
    /// the queue's configuration (a bad one breaks the device); disabling
    /// forgets the requests in flight (of every queue: the generation is
    /// the device's).
    pub(crate) fn write_queue_ready(&mut self, v: u32) -> Effect {
        let max = self.queue_num_max;
        let Some(q) = usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            return Effect::None;
        };
        match (v & 1 != 0, q.ready) {
            (true, false) => {
                if let Err(e) = q.enable(max) {
                    self.fail(e);
                    self.unreported = Some(e);
                }
                Effect::None
            }
            (false, true) => {
                q.ready = false;
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
