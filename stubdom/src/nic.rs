//! The guest's NICs (`StubConfig::nics`): each a PCI function whose
//! frames go to the hypervisor's bridge with NET_SEND, and whose received
//! frames come from its receive ring in the stub's RAM (`ferrite_abi::
//! net_rx`), filled by the bridge.
//!
//! - `model=virtio-net`: virtio-net over virtio-pci. A frame the guest
//!   sends is handed over as the pieces of the guest's own buffers (the
//!   hypervisor copies them once, into the receivers).
//! - `model=e1000`: an Intel 82540EM (`ferrite_devmodel::e1000`), BAR0
//!   registers and BAR1 I/O window. The model assembles each frame (it
//!   inserts checksums and cuts TSO segments), so a frame is sent from the
//!   stub's memory.
//!
//! A frame the guest has no buffer for stays in the ring until it posts
//! one (its receive-queue notify), so nothing is lost between the ring
//! and the guest; a full ring makes the hypervisor drop new frames.

use crate::guest_memory::GuestWindow;
use crate::{hypercall, memory};
use alloc::boxed::Box;
use alloc::vec::Vec;
use ferrite_abi::{net_rx, StubNic, StubNicModel};
use ferrite_devmodel::e1000::{self, E1000};
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

enum Model {
    Virtio(Box<VirtioNetPci>),
    E1000(Box<E1000>),
}

pub struct Nic {
    /// 00:slot.0 on the PCI bus.
    pub slot: u8,
    handle: u32,
    model: Model,
    errors: u32,
    /// One frame from the ring, on its way to the guest.
    frame: Box<[u8; net_rx::MAX_FRAME as usize]>,
    frames: Vec<TxFrame>,
}

/// Puts NIC `nic` on the bus at 00:slot.0.
pub fn attach(pci: &mut PciBus, slot: u8, nic: &StubNic) -> Option<Nic> {
    let m = nic.mac;
    let mac = alloc::format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
    let (config, model, name) = match nic.model {
        StubNicModel::VirtioPci => (virtio::pci::net_config_space(), Model::Virtio(Box::new(VirtioNetPci::new(nic.mac))), "virtio-net"),
        StubNicModel::E1000 => (e1000::config_space(), Model::E1000(Box::new(E1000::new(nic.mac))), "e1000"),
    };
    if !pci.add_function(slot, 0, config) {
        warn!("NIC {} ({}): PCI slot {} is taken; not attached", nic.handle, mac, slot);
        return None;
    }
    info!("NIC {}: {} {} at PCI 00:{:02x}.0", nic.handle, name, mac, slot);
    Some(Nic {
        slot,
        handle: nic.handle,
        model,
        errors: 0,
        frame: Box::new([0; net_rx::MAX_FRAME as usize]),
        frames: Vec::with_capacity(TX_BATCH),
    })
}

impl Nic {
    /// The BAR its registers are in.
    pub fn bar_index(&self) -> usize {
        match self.model {
            Model::Virtio(_) => virtio::pci::BAR_INDEX,
            Model::E1000(_) => 0,
        }
    }

    /// The I/O BAR it has, if any (the e1000's IOADDR/IODATA window).
    pub fn io_bar_index(&self) -> Option<usize> {
        matches!(self.model, Model::E1000(_)).then_some(1)
    }

    pub fn irq_level(&self) -> bool {
        match &self.model {
            Model::Virtio(d) => d.irq_level(),
            Model::E1000(d) => d.irq_level(),
        }
    }

    /// Bus mastering as the guest set it in the function's command
    /// register (the e1000 does no DMA without it).
    pub fn set_bus_master(&mut self, on: bool) {
        if let Model::E1000(d) = &mut self.model {
            d.set_dma_enabled(on);
        }
    }

    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        match &mut self.model {
            Model::Virtio(d) => d.bar_read(offset, size),
            Model::E1000(d) => d.mmio_read(offset, size),
        }
    }

    pub fn mmio_write(&mut self, mut mem: GuestWindow, offset: u64, size: u8, value: u64) {
        let handle = self.handle;
        match &mut self.model {
            Model::Virtio(d) => match d.bar_write(offset, size, value) {
                Effect::Notify(QUEUE_TX) => self.transmit_virtio(mem),
                Effect::Notify(QUEUE_RX) => self.receive_pending(mem),
                _ => {}
            },
            Model::E1000(d) => {
                d.mmio_write(&mut mem, offset, size, value, &mut |frame| send_from_stub(handle, frame));
                self.receive_pending(mem);
            }
        }
    }

    pub fn io_read(&mut self, offset: u64, size: u8) -> u32 {
        match &mut self.model {
            Model::E1000(d) => d.io_read(offset, size),
            Model::Virtio(_) => u32::MAX,
        }
    }

    pub fn io_write(&mut self, mut mem: GuestWindow, offset: u64, size: u8, value: u32) {
        let handle = self.handle;
        if let Model::E1000(d) = &mut self.model {
            d.io_write(&mut mem, offset, size, value, &mut |frame| send_from_stub(handle, frame));
            self.receive_pending(mem);
        }
    }

    fn transmit_virtio(&mut self, mut mem: GuestWindow) {
        let Model::Virtio(dev) = &mut self.model else { return };
        let mut frames = core::mem::take(&mut self.frames);
        for _ in 0..TX_ROUNDS {
            frames.clear();
            if let Err(e) = dev.take_tx(&mut mem, TX_BATCH, &mut frames) {
                protocol_error(self.handle, &mut self.errors, &e);
                break;
            }
            for f in &frames {
                let pieces: Vec<(u64, u32)> = f.pieces.iter().map(|p| (p.gpa, p.len)).collect();
                if let Err(e) = hypercall::net_send(self.handle, &pieces, true) {
                    warn!("NIC {}: NET_SEND: {:?}", self.handle, e);
                }
            }
            if let Err(e) = dev.complete_tx(&mut mem, &frames) {
                protocol_error(self.handle, &mut self.errors, &e);
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
            // Whether the frame waits in the ring for a buffer the guest
            // has not posted yet.
            let keep = match &mut self.model {
                _ if len == 0 => false,
                Model::Virtio(d) => {
                    let mut into = mem;
                    match d.receive(&mut mem, len as u32, &virtio::net::Offload::NONE, |pieces| scatter(&mut into, pieces, 0, frame).is_ok()) {
                        Ok(RxOutcome::NoBuffer) => d.live(),
                        Ok(_) => false,
                        Err(e) => {
                            protocol_error(self.handle, &mut self.errors, &e);
                            false
                        }
                    }
                }
                Model::E1000(d) => d.receive(&mut mem, frame) == e1000::RxOutcome::NoBuffer && !d.rx_buffers_available(),
            };
            if keep {
                break;
            }
            consumed = consumed.wrapping_add(1);
        }
        memory::set_net_rx_consumed(self.handle, consumed);
    }

}

fn protocol_error(handle: u32, errors: &mut u32, e: &virtio::VirtioError) {
    if *errors < ERRORS_LOGGED {
        warn!("NIC {}: virtio-net: {}; the device waits for the driver's reset", handle, e);
    }
    *errors = errors.saturating_add(1);
}

/// A frame the e1000 model assembled in the stub's memory.
fn send_from_stub(handle: u32, frame: &[u8]) {
    if let Err(e) = hypercall::net_send(handle, &[(frame.as_ptr() as u64, frame.len() as u32)], false) {
        warn!("NIC {}: NET_SEND: {:?}", handle, e);
    }
}
