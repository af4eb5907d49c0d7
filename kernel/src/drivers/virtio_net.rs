//! The host NIC: QEMU's `virtio-net-pci`, driven with `virtio-drivers`
//! and offered to smoltcp as a `phy::Device`. It carries the hypervisor's
//! own traffic (the management service) and, when a bridge has it as its
//! uplink, the guests' frames to and from the outside: a received frame
//! not addressed to the hypervisor's MAC goes to the `divert` hook only
//! (broadcast and multicast to both), so guests' traffic never reaches the
//! hypervisor's own stack.
//!
//! Polled, not interrupt-driven: the management service needs no more
//! than the scheduler's polling gives it (see `net`).

use super::pci::{self, ConfigAccess, PciFunction};
use super::virtio::{self, FerriteHal};
use alloc::format;
use alloc::string::String;
use core::cell::RefCell;
use log::{error, info};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::pci::PciTransport;

/// virtio-net's PCI device IDs: transitional and modern-only.
const VIRTIO_NET_TRANSITIONAL: u16 = 0x1000;
const VIRTIO_NET_MODERN: u16 = 0x1041;
/// Descriptors per queue (receive buffers posted at once).
const QUEUE_SIZE: usize = 16;
/// One buffer per frame: a 1514-byte Ethernet frame plus the virtio-net
/// header, rounded up.
const BUFFER_LEN: usize = 2048;
const MTU: usize = 1500;

type Nic = VirtIONet<FerriteHal, PciTransport, QUEUE_SIZE>;

/// The NIC as smoltcp sees it.
pub struct NetDevice {
    nic: RefCell<Nic>,
    pub mac: [u8; 6],
    pub pci: pci::PciAddress,
    /// Where received frames for other addresses go (the uplink), if
    /// anywhere.
    pub divert: Option<fn(&[u8])>,
}

/// Frames looked at per `receive` call: diverted ones are consumed here,
/// so the loop needs a bound.
const RX_PER_CALL: usize = 16;

/// Finds the first virtio-net function and brings it up; logs why not.
pub fn probe(config: ConfigAccess, functions: &[PciFunction]) -> Option<NetDevice> {
    let f = functions
        .iter()
        .find(|f| f.vendor_id == virtio::VENDOR_ID && matches!(f.device_id, VIRTIO_NET_TRANSITIONAL | VIRTIO_NET_MODERN))?;
    match bring_up(config, f) {
        Ok(dev) => {
            let m = dev.mac;
            info!("net: virtio-net at {}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", dev.pci, m[0], m[1], m[2], m[3], m[4], m[5]);
            Some(dev)
        }
        Err(why) => {
            error!("net: virtio-net at {}: not usable: {}", f.address, why);
            None
        }
    }
}

fn bring_up(config: ConfigAccess, f: &PciFunction) -> Result<NetDevice, String> {
    let transport = virtio::pci_transport(config, f.address)?;
    let nic = Nic::new(transport, BUFFER_LEN).map_err(|e| format!("virtio-net set-up: {}", e))?;
    Ok(NetDevice { mac: nic.mac_address(), nic: RefCell::new(nic), pci: f.address, divert: None })
}

impl NetDevice {
    /// Sends a frame of `len` bytes that `fill` writes (the uplink's
    /// frames); false when the NIC has no room or `fill` fails.
    pub fn send_raw(&self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let mut nic = self.nic.borrow_mut();
        if !nic.can_send() || len > MTU + 14 + 4 {
            return false;
        }
        let mut tx = nic.new_tx_buffer(len);
        if !fill(tx.packet_mut()) {
            return false;
        }
        nic.send(tx).is_ok()
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = NetRxToken<'a>;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        for _ in 0..RX_PER_CALL {
            let mut nic = self.nic.borrow_mut();
            if !nic.can_recv() || !nic.can_send() {
                return None;
            }
            let buffer = nic.receive().ok()?;
            drop(nic);
            let packet = buffer.packet();
            let Some(divert) = self.divert else {
                return Some((NetRxToken { nic: &self.nic, buffer }, NetTxToken { nic: &self.nic }));
            };
            let dst = packet.get(..6).unwrap_or(&[]);
            let ours = dst == self.mac;
            let group = dst.first().is_some_and(|b| b & 1 != 0);
            if !ours {
                divert(packet);
            }
            if ours || group {
                return Some((NetRxToken { nic: &self.nic, buffer }, NetTxToken { nic: &self.nic }));
            }
            if let Err(e) = self.nic.borrow_mut().recycle_rx_buffer(buffer) {
                error!("net: cannot give a receive buffer back to the NIC: {}", e);
            }
        }
        None
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.nic.borrow().can_send().then_some(NetTxToken { nic: &self.nic })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(1);
        caps
    }
}

pub struct NetRxToken<'a> {
    nic: &'a RefCell<Nic>,
    buffer: RxBuffer,
}

impl phy::RxToken for NetRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.buffer.packet());
        // The buffer goes back to the device for the next frame.
        if let Err(e) = self.nic.borrow_mut().recycle_rx_buffer(self.buffer) {
            error!("net: cannot give a receive buffer back to the NIC: {}", e);
        }
        result
    }
}

pub struct NetTxToken<'a> {
    nic: &'a RefCell<Nic>,
}

impl phy::TxToken for NetTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut nic = self.nic.borrow_mut();
        let mut tx = nic.new_tx_buffer(len);
        let result = f(tx.packet_mut());
        if let Err(e) = nic.send(tx) {
            error!("net: send failed: {}", e);
        }
        result
    }
}
