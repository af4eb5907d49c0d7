//! dom0's channel to the hypervisor: a virtio-vsock device (virtio-mmio,
//! in dom0's DSDT like its disks, `ferrite_devmodel::virtio::vsock`) whose
//! stream connections to host port [`MGMT_PORT`] the management service
//! serves (`mgmt::poll_vsock`), and to [`NBD_PORT`] the NBD client
//! (`nbd::poll_vsock`: `file:` disks an `xl create` in dom0 serves). Only
//! dom0 gets one, so `ferrite xl` in dom0 needs no network at all.
//!
//! The guest's notifies take its packets in (on its vCPU); the service,
//! polled on CPU 0, reads and writes the connections and moves the replies
//! into the guest's receive buffers. What the device needs of its domain
//! is `virtio_host::DeviceHost` (memory and interrupt lines).

use crate::mm::guest::GuestRam;
use crate::virtio_host::{DeviceHost, GuestErrorLog};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use ferrite_devmodel::virtio::vsock::{VirtioVsock, VirtioVsockMmio, VsockEvent};
use ferrite_devmodel::virtio::Effect;
use ferrite_loader::acpi::{virtio_mmio_base, virtio_mmio_gsi};
use spin::Mutex;

/// dom0's context ID (the first a guest may have).
pub const DOM0_CID: u64 = 3;
/// The host port `ferrite xl` connects to, as on TCP.
pub const MGMT_PORT: u32 = 7070;
/// The host port dom0's `ferrite nbd-serve --vsock` connects to, to serve
/// a `file:` disk (`nbd`: the hypervisor is the NBD client on it).
pub const NBD_PORT: u32 = 7071;

pub struct VsockDevice {
    slot: usize,
    state: Mutex<State>,
}

struct State {
    model: VirtioVsockMmio,
    /// What the guest did that the service has not seen yet.
    events: Vec<VsockEvent>,
    line: bool,
    errors: GuestErrorLog,
}

/// dom0's device and dom0 itself, weakly (they go when dom0 does).
type Dom0Device = (Weak<VsockDevice>, Weak<dyn DeviceHost>);

/// The domain that has the device (dom0), for the service.
static DOM0: Mutex<Option<Dom0Device>> = Mutex::new(None);

impl VsockDevice {
    /// A device at virtio-mmio slot `slot`.
    pub fn new(slot: usize) -> Arc<VsockDevice> {
        let model = VirtioVsockMmio::new(DOM0_CID, &[MGMT_PORT, NBD_PORT]);
        Arc::new(VsockDevice { slot, state: Mutex::new(State { model, events: Vec::new(), line: false, errors: GuestErrorLog::default() }) })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Makes this dom0's device, the one the service serves.
    pub fn register(self: &Arc<Self>, host: Weak<dyn DeviceHost>) {
        *DOM0.lock() = Some((Arc::downgrade(self), host));
    }

    /// The offset in this device's window, if `gpa` is in it.
    pub fn offset(&self, gpa: u64) -> Option<u64> {
        let base = virtio_mmio_base(self.slot);
        (base..base + 0x1000).contains(&gpa).then(|| gpa - base)
    }

    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        if offset >= VirtioVsockMmio::WINDOW_LEN {
            return 0;
        }
        self.state.lock().model.read(offset, size)
    }

    /// A guest write into the window; a notify takes the guest's packets
    /// in (and refills its receive side).
    pub fn mmio_write(&self, host: &dyn DeviceHost, offset: u64, size: u8, value: u64) {
        if offset >= VirtioVsockMmio::WINDOW_LEN {
            return;
        }
        let mut st = self.state.lock();
        if let Effect::Notify(_) = st.model.write(offset, size, value) {
            let State { model, events, .. } = &mut *st;
            let result = model.process(&mut GuestRam(host.memory()), events);
            if let Err(e) = result {
                st.errors.log(host.name(), &"vsock", &e);
            }
        }
        self.update_line(&mut st, host);
    }

    fn update_line(&self, st: &mut State, host: &dyn DeviceHost) {
        let level = st.model.irq_level();
        if level != st.line {
            st.line = level;
            host.set_gsi(virtio_mmio_gsi(self.slot), level);
        }
    }
}

/// Whether dom0 has a device (and is there).
pub fn present() -> bool {
    DOM0.lock().as_ref().is_some_and(|(d, h)| d.strong_count() > 0 && h.strong_count() > 0)
}

/// Runs `f` on dom0's device with the events since the last call, then
/// moves what `f` sent into dom0's receive buffers. Nothing (false) when
/// dom0 has no device (or is gone).
pub fn serve(f: impl FnOnce(&mut VirtioVsock, Vec<VsockEvent>)) -> bool {
    let Some((dev, host)) = DOM0.lock().as_ref().and_then(|(d, h)| Some((d.upgrade()?, h.upgrade()?))) else { return false };
    let mut st = dev.state.lock();
    let events = core::mem::take(&mut st.events);
    f(&mut st.model, events);
    let flushed = st.model.flush(&mut GuestRam(host.memory()));
    if let Err(e) = flushed {
        st.errors.log(host.name(), &"vsock", &e);
    }
    dev.update_line(&mut st, &*host);
    true
}

/// Whether dom0 has a device with anything open (the service then polls
/// it often).
pub fn busy() -> bool {
    let Some(dev) = DOM0.lock().as_ref().and_then(|(d, _)| d.upgrade()) else { return false };
    let st = dev.state.lock();
    !st.events.is_empty() || st.model.connections() > 0
}
