//! The guest's NICs (`StubConfig::nics`): each a PCI function whose
//! frames go to the hypervisor's bridge with NET_SEND, and whose received
//! frames come from its receive ring in the stub's RAM (`ferrite_abi::
//! net_rx`), filled by the bridge.
//!
//! - `model=virtio-net`: virtio-net over virtio-pci. A frame the guest
//!   sends is handed over as the pieces of the guest's own buffers (the
//!   hypervisor copies them once, into the receivers).
//! - `model=e1000`: not emulated yet by this stub (the NIC is left out,
//!   with a warning).
//!
//! A frame the guest has no buffer for stays in the ring until it posts
//! one (its receive-queue notify), so nothing is lost between the ring
//! and the guest; a full ring makes the hypervisor drop new frames.

use crate::guest_memory::GuestWindow;
use crate::{hypercall, memory};
use alloc::boxed::Box;
use alloc::vec::Vec;
use ferrite_abi::{net_rx, StubNic, StubNicModel};
use ferrite_devmodel::pci::PciBus;
use ferrite_devmodel::virtio::net::{RxOutcome, TxFrame, QUEUE_RX, QUEUE_TX};
use ferrite_devmodel::virtio::queue::scatter;
use ferrite_devmodel::virtio::{self, Effect, VirtioNetPci};
use log::{info, warn};

/// Frames taken from the transmit queue per round, and rounds per notify
/// (a whole ring of the largest size).
const TX_BATCH: usize = 32;
const TX_ROUNDS: usize = 8;
/// Protocol errors logged per NIC (a guest can repeat them).
const ERRORS_LOGGED: u32 = 8;

pub struct Nic {
    /// 00:slot.0 on the PCI bus.
    pub slot: u8,
    handle: u32,
    dev: VirtioNetPci,
    errors: u32,
    /// One frame from the ring, on its way to the guest.
    frame: Box<[u8; net_rx::MAX_FRAME as usize]>,
    frames: Vec<TxFrame>,
}

/// Puts NIC `nic` on the bus at 00:slot.0.
pub fn attach(pci: &mut PciBus, slot: u8, nic: &StubNic) -> Option<Nic> {
    let m = nic.mac;
    let mac = alloc::format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
    if nic.model != StubNicModel::VirtioPci {
        warn!("NIC {} ({}): model {:?} is not emulated by this stub; not attached", nic.handle, mac, nic.model);
        return None;
    }
    if !pci.add_function(slot, 0, virtio::pci::net_config_space()) {
        warn!("NIC {} ({}): PCI slot {} is taken; not attached", nic.handle, mac, slot);
        return None;
    }
    info!("NIC {}: virtio-net {} at PCI 00:{:02x}.0", nic.handle, mac, slot);
    Some(Nic {
        slot,
        handle: nic.handle,
        dev: VirtioNetPci::new(nic.mac),
        errors: 0,
        frame: Box::new([0; net_rx::MAX_FRAME as usize]),
        frames: Vec::with_capacity(TX_BATCH),
    })
}

impl Nic {
    /// The BAR its registers are in.
    pub fn bar_index(&self) -> usize {
        virtio::pci::BAR_INDEX
    }

    pub fn irq_level(&self) -> bool {
        self.dev.irq_level()
    }

    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        self.dev.bar_read(offset, size)
    }

    pub fn mmio_write(&mut self, mem: GuestWindow, offset: u64, size: u8, value: u64) {
        match self.dev.bar_write(offset, size, value) {
            Effect::Notify(QUEUE_TX) => self.transmit(mem),
            Effect::Notify(QUEUE_RX) => self.receive_pending(mem),
            _ => {}
        }
    }

    fn transmit(&mut self, mut mem: GuestWindow) {
        let mut frames = core::mem::take(&mut self.frames);
        for _ in 0..TX_ROUNDS {
            frames.clear();
            if let Err(e) = self.dev.take_tx(&mut mem, TX_BATCH, &mut frames) {
                self.protocol_error(&e);
                break;
            }
            for f in &frames {
                let pieces: Vec<(u64, u32)> = f.pieces.iter().map(|p| (p.gpa, p.len)).collect();
                if let Err(e) = hypercall::net_send(self.handle, &pieces, true) {
                    warn!("NIC {}: NET_SEND: {:?}", self.handle, e);
                }
            }
            if let Err(e) = self.dev.complete_tx(&mut mem, &frames) {
                self.protocol_error(&e);
                break;
            }
            if frames.len() < TX_BATCH {
                break;
            }
        }
        self.frames = frames;
    }

    /// Moves frames from the receive ring into the guest's buffers, until
    /// the ring is empty or the guest has no buffer.
    pub fn receive_pending(&mut self, mut mem: GuestWindow) {
        let produced = memory::net_rx_produced(self.handle);
        let mut consumed = memory::net_rx_consumed(self.handle);
        for _ in 0..net_rx::SLOTS {
            if consumed == produced {
                break;
            }
            let len = memory::net_rx_frame(self.handle, consumed, &mut self.frame);
            let frame = &self.frame[..len];
            let mut into = mem;
            let outcome = match len {
                0 => Ok(RxOutcome::NotReady),
                _ => self.dev.receive(&mut mem, len as u32, |pieces| scatter(&mut into, pieces, 0, frame).is_ok()),
            };
            match outcome {
                // Kept for when the guest posts a buffer.
                Ok(RxOutcome::NoBuffer) if len > 0 && self.dev.live() => break,
                Ok(_) => {}
                Err(e) => self.protocol_error(&e),
            }
            consumed = consumed.wrapping_add(1);
        }
        memory::set_net_rx_consumed(self.handle, consumed);
    }

    fn protocol_error(&mut self, e: &virtio::VirtioError) {
        if self.errors < ERRORS_LOGGED {
            warn!("NIC {}: virtio-net: {}; the device waits for the driver's reset", self.handle, e);
        }
        self.errors = self.errors.saturating_add(1);
    }
}
