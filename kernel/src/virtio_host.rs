//! What a PVH domain's virtio-mmio devices (disks, the vsock device,
//! NICs) need of their domain, and the budget their protocol-error
//! messages share. The devices sit below domains: a domain implements
//! `DeviceHost` and hands itself to them.

use crate::mm::guest::GuestMemory;
use log::warn;

/// The domain, as its devices see it.
pub trait DeviceHost: Send + Sync {
    fn memory(&self) -> &GuestMemory;
    /// Drives the I/O APIC pin `gsi` to `level`.
    fn set_gsi(&self, gsi: u8, level: bool);
    /// For messages.
    fn name(&self) -> &str;
}

/// A guest's virtio protocol errors on one device, logged the first
/// [`GuestErrorLog::MAX`] times: a guest that breaks and resets its device
/// in a loop must not flood the log.
#[derive(Default)]
pub(crate) struct GuestErrorLog(u32);

impl GuestErrorLog {
    const MAX: u32 = 8;

    /// Logs `e` on `device` (e.g. "disk xvda") of domain `domain`, unless
    /// the budget is spent.
    pub(crate) fn log(&mut self, domain: &str, device: &dyn core::fmt::Display, e: &dyn core::fmt::Display) {
        if self.0 < Self::MAX {
            self.0 += 1;
            let more = if self.0 == Self::MAX { " (further errors on this device are not logged)" } else { "" };
            warn!("{}: {}: {}; the device needs a reset{}", domain, device, e, more);
        }
    }
}
