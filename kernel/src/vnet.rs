//! PVH domains' NICs: one virtio-net device per `vif`
//! (`ferrite_devmodel::virtio::net`) in the next virtio-mmio slot after the
//! domain's disks (and dom0's vsock), each a port on its bridge
//! (`bridge`).
//!
//! The guest's transmit notify moves its frames on its own vCPU: the
//! model hands over each frame as guest-physical pieces, the bridge copies
//! it straight into the receivers' buffers, and only then are the transmit
//! buffers given back. A frame for this NIC is written into its next
//! receive buffer by whoever sends it; with no free buffer it is dropped
//! and counted, as a real NIC does with a full ring.
//!
//! What the device needs of its domain is `virtio_host::DeviceHost` (memory and
//! interrupt lines).

use crate::bridge::{Endpoint, Frame, Plug};
use crate::mm::guest::GuestRam;
use crate::virtio_host::{DeviceHost, GuestErrorLog};
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use ferrite_config::MacAddr;
use ferrite_devmodel::virtio::net::{RxOffloads, RxOutcome, TxFrame, VirtioNetMmio, QUEUE_TX};
use ferrite_devmodel::virtio::Effect;
use ferrite_loader::acpi::{virtio_mmio_base, virtio_mmio_gsi};
use spin::{Mutex, Once};

/// Frames taken per round of a transmit notify, and rounds at most: a
/// whole ring of the largest size the model offers (bounded work per
/// exit; the guest notifies again for more).
const TX_BATCH: usize = 64;
const TX_ROUNDS: usize = 4;

/// A vif as the domain's configuration gives it.
#[derive(Clone, Debug)]
pub struct VifConfig {
    pub mac: MacAddr,
    pub bridge: String,
}

pub struct NetDevice {
    slot: usize,
    config: VifConfig,
    state: Mutex<State>,
    /// The domain, once built.
    host: Once<Weak<dyn DeviceHost>>,
    /// The bridge port, from `attach` to `detach`.
    plug: Plug,
}

struct State {
    model: VirtioNetMmio,
    line: bool,
    errors: GuestErrorLog,
}

impl NetDevice {
    /// A NIC at virtio-mmio slot `slot`.
    pub fn new(slot: usize, config: VifConfig) -> Arc<NetDevice> {
        let mut model = VirtioNetMmio::new(config.mac.0);
        // A frame finding no buffer is dropped, never held: receive
        // notifies would only cost exits.
        model.quiet_receive_notifies();
        Arc::new(NetDevice {
            slot,
            config,
            state: Mutex::new(State { model, line: false, errors: GuestErrorLog::default() }),
            host: Once::new(),
            plug: Plug::default(),
        })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn config(&self) -> &VifConfig {
        &self.config
    }

    /// Joins the NIC's bridge on behalf of `host` (its domain). Refused
    /// when its MAC is already on that bridge.
    pub fn attach(self: &Arc<Self>, host: Weak<dyn DeviceHost>) -> Result<(), String> {
        self.host.call_once(|| host);
        let me: Arc<dyn Endpoint> = self.clone();
        self.plug.join(&self.config.bridge, self.config.mac.0, Arc::downgrade(&me))
    }

    /// Leaves the bridge (the domain stopped); frames for it go nowhere.
    /// Logs what went through the NIC.
    pub fn detach(&self, domain: &str) {
        let Some((bridge, c)) = self.plug.leave() else { return };
        let nic = *self.state.lock().model.stats();
        log::info!(
            "{}: vif {} left bridge {}: sent {} frames ({} bytes), received {} ({} bytes); dropped: {} sent ({} spoofed), {} malformed ({} offload headers), {} for lack of receive buffers; offloads: {} TCP segments sent whole ({} bytes), {} received whole, {} frames in {} receive buffers",
            domain,
            self.config.mac,
            bridge,
            c.tx_packets,
            c.tx_bytes,
            c.rx_packets,
            c.rx_bytes,
            c.tx_dropped,
            c.tx_spoofed,
            nic.tx_malformed,
            nic.tx_bad_offload,
            c.rx_dropped,
            nic.tx_gso,
            nic.tx_gso_bytes,
            nic.rx_gso,
            nic.rx_packets,
            nic.rx_buffers
        );
    }

    /// What `xl network-list` shows.
    pub fn stats(&self) -> crate::bridge::VifStats {
        let now = self.plug.counters();
        crate::bridge::VifStats {
            mac: self.config.mac.0,
            bridge: self.config.bridge.clone(),
            model: "virtio-net",
            connected: now.is_some(),
            port: now.map(|(_, c)| c).unwrap_or_default(),
        }
    }

    /// The offset in this device's window, if `gpa` is in it.
    pub fn offset(&self, gpa: u64) -> Option<u64> {
        let base = virtio_mmio_base(self.slot);
        (base..base + 0x1000).contains(&gpa).then(|| gpa - base)
    }

    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        if offset >= VirtioNetMmio::WINDOW_LEN {
            return 0;
        }
        self.state.lock().model.read(offset, size)
    }

    /// A guest write into the window; a transmit notify sends the frames.
    pub fn mmio_write(&self, host: &dyn DeviceHost, offset: u64, size: u8, value: u64) {
        if offset >= VirtioNetMmio::WINDOW_LEN {
            return;
        }
        let effect = {
            let mut st = self.state.lock();
            let effect = st.model.write(offset, size, value);
            self.update_line(&mut st, host);
            effect
        };
        if effect == Effect::Notify(QUEUE_TX) {
            self.transmit(host);
        }
    }

    /// Sends what the guest queued: a batch at a time, with the device's
    /// lock dropped while the bridge delivers (the receivers lock their
    /// own devices).
    fn transmit(&self, host: &dyn DeviceHost) {
        let mem = host.memory();
        let mut frames: Vec<TxFrame> = Vec::with_capacity(TX_BATCH);
        for _ in 0..TX_ROUNDS {
            frames.clear();
            {
                let mut st = self.state.lock();
                if let Err(e) = st.model.take_tx(&mut GuestRam(mem), TX_BATCH, &mut frames) {
                    st.errors.log(host.name(), &self.what(), &e);
                }
                self.update_line(&mut st, host);
            }
            if frames.is_empty() {
                return;
            }
            for f in &frames {
                self.plug.send(&Frame::Guest { mem, pieces: &f.pieces, len: f.len, offload: f.offload });
            }
            let mut st = self.state.lock();
            if let Err(e) = st.model.complete_tx(&mut GuestRam(mem), &frames) {
                st.errors.log(host.name(), &self.what(), &e);
            }
            self.update_line(&mut st, host);
            if frames.len() < TX_BATCH {
                return;
            }
        }
    }

    fn what(&self) -> String {
        alloc::format!("vif {}", self.config.mac)
    }

    fn update_line(&self, st: &mut State, host: &dyn DeviceHost) {
        let level = st.model.irq_level();
        if level != st.line {
            st.line = level;
            host.set_gsi(virtio_mmio_gsi(self.slot), level);
        }
    }
}

impl Endpoint for NetDevice {
    fn offloads(&self) -> RxOffloads {
        self.state.lock().model.rx_offloads()
    }

    fn deliver(&self, frame: &Frame) -> bool {
        let Some(host) = self.host.get().and_then(Weak::upgrade) else { return false };
        let mem = host.memory();
        let mut st = self.state.lock();
        let result = st.model.receive(&mut GuestRam(mem), frame.bytes() as u32, &frame.offload(), |to| frame.copy_to(mem, to));
        let delivered = match result {
            Ok(outcome) => outcome == RxOutcome::Delivered,
            Err(e) => {
                st.errors.log(host.name(), &self.what(), &e);
                false
            }
        };
        self.update_line(&mut st, &*host);
        delivered
    }
}
