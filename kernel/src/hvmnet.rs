//! HVM guests' NICs: the device model (e1000 or virtio-net-pci) runs in
//! the guest's stub domain; this is the NIC's port on its bridge.
//!
//! - Sending: the stub's NET_SEND names the frame's pieces, in the guest's
//!   RAM (virtio-net: the guest's own buffers, so one copy, into the
//!   receivers) or in the stub's (e1000: the frame the model assembled,
//!   with the checksums and segmentation it offloads).
//! - Receiving: the bridge writes the frame into the NIC's receive ring
//!   in the stub's RAM (`ferrite_abi::net_rx`) and wakes the stub, whose
//!   model puts it into the guest's buffers: two copies, the price of a
//!   device model outside the hypervisor. A full ring drops the frame.
//!
//! - Offloads: none either way. NET_SEND carries plain frames, and the
//!   ring's slots hold one frame of at most 2 KiB, so the bridge resolves
//!   a PVH sender's checksum requests and TCP segments before they reach
//!   this endpoint (its [`Endpoint::offloads`] is the default, none).
//!
//! The stub is hostile: the ring's CONSUMED count is the only thing read
//! back from it, and a value that makes the ring look over-full only
//! drops its own guest's frames.

use crate::bridge::{Endpoint, Frame, Plug};
use crate::ioreq::IoreqServer;
use crate::virtio_host::DeviceHost;
use crate::vnet::VifConfig;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicU64, Ordering};
use ferrite_abi::{net_rx, StubNicModel, NET_RX_GPA, NET_RX_RING_BYTES};
use ferrite_devmodel::virtio::queue::Buffer;
use spin::{Mutex, Once};

pub struct StubNic {
    handle: u32,
    config: VifConfig,
    model: StubNicModel,
    /// The stub domain, whose RAM holds the receive ring.
    stub: Once<Weak<dyn DeviceHost>>,
    ioreq: Arc<IoreqServer>,
    /// Frames written into the ring, ever (the ring's PRODUCED).
    produced: Mutex<u32>,
    /// Frames dropped because the ring was full.
    ring_full: AtomicU64,
    plug: Plug,
}

impl StubNic {
    pub fn new(handle: u32, config: VifConfig, model: StubNicModel, ioreq: Arc<IoreqServer>) -> Arc<StubNic> {
        Arc::new(StubNic {
            handle,
            config,
            model,
            stub: Once::new(),
            ioreq,
            produced: Mutex::new(0),
            ring_full: AtomicU64::new(0),
            plug: Plug::default(),
        })
    }

    pub fn config(&self) -> &VifConfig {
        &self.config
    }

    pub fn abi(&self) -> ferrite_abi::StubNic {
        ferrite_abi::StubNic { handle: self.handle, mac: self.config.mac.0, model: self.model }
    }

    pub fn model_name(&self) -> &'static str {
        match self.model {
            StubNicModel::E1000 => "e1000",
            StubNicModel::VirtioPci => "virtio-net",
        }
    }

    /// Joins the bridge once the stub (whose RAM holds the ring) exists.
    pub fn attach(self: &Arc<Self>, stub: Weak<dyn DeviceHost>) -> Result<(), String> {
        self.stub.call_once(|| stub);
        let me: Arc<dyn Endpoint> = self.clone();
        self.plug.join(&self.config.bridge, self.config.mac.0, Arc::downgrade(&me))
    }

    /// Leaves the bridge; logs what went through the NIC.
    pub fn detach(&self, domain: &str) {
        let Some((bridge, c)) = self.plug.leave() else { return };
        log::info!(
            "{}: vif {} ({}) left bridge {}: sent {} frames ({} bytes), received {} ({} bytes); dropped: {} sent ({} spoofed), {} with its receive ring full",
            domain,
            self.config.mac,
            self.model_name(),
            bridge,
            c.tx_packets,
            c.tx_bytes,
            c.rx_packets,
            c.rx_bytes,
            c.tx_dropped,
            c.tx_spoofed,
            self.ring_full.load(Ordering::Relaxed)
        );
    }

    /// What `xl network-list` shows.
    pub fn stats(&self) -> crate::bridge::VifStats {
        let now = self.plug.counters();
        crate::bridge::VifStats {
            mac: self.config.mac.0,
            bridge: self.config.bridge.clone(),
            model: self.model_name(),
            connected: now.is_some(),
            port: now.map(|(_, c)| c).unwrap_or_default(),
        }
    }

    /// A frame the guest sent (NET_SEND, already checked in shape).
    pub fn send(&self, frame: &Frame) {
        self.plug.send(frame);
    }
}

impl Endpoint for StubNic {
    fn deliver(&self, frame: &Frame) -> bool {
        let Some(stub) = self.stub.get().and_then(Weak::upgrade) else { return false };
        let len = frame.bytes() as u64;
        if len > net_rx::MAX_FRAME {
            return false;
        }
        let mem = stub.memory();
        let ring = NET_RX_GPA + u64::from(self.handle) * NET_RX_RING_BYTES;
        let mut produced = self.produced.lock();
        let mut consumed = [0u8; 4];
        if mem.read(ring + net_rx::CONSUMED, &mut consumed).is_err() {
            return false;
        }
        if produced.wrapping_sub(u32::from_le_bytes(consumed)) >= net_rx::SLOTS {
            self.ring_full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let slot = ring + net_rx::SLOTS_OFFSET + u64::from(*produced % net_rx::SLOTS) * net_rx::SLOT_BYTES;
        let into = [Buffer { gpa: slot + net_rx::SLOT_FRAME, len: len as u32, writable: true }];
        if !frame.copy_to(mem, &into) || mem.write(slot + net_rx::SLOT_LEN, &(len as u32).to_le_bytes()).is_err() {
            return false;
        }
        // The frame before the count that publishes it (the stub reads in
        // the other order).
        core::sync::atomic::fence(Ordering::Release);
        let next = produced.wrapping_add(1);
        if mem.write(ring + net_rx::PRODUCED, &next.to_le_bytes()).is_err() {
            return false;
        }
        *produced = next;
        drop(produced);
        self.ioreq.notify_net();
        true
    }
}
