//! virtio-net (virtio 1.x §5.1), device ID 1: one receive queue (0) and one
//! transmit queue (1), without I/O. The embedder (the hypervisor's switch)
//! decides where a frame goes and moves its bytes; this model owns the
//! queues and checks everything the guest put in them.
//!
//! Features offered: VERSION_1, INDIRECT_DESC and MAC (the address is in
//! the configuration space, with the link status word after it). No
//! checksum offload, no segmentation offload and no mergeable receive
//! buffers: every frame is one Ethernet frame of at most [`MAX_FRAME`]
//! bytes, preceded in both directions by the 12-byte
//! `virtio_net_hdr_v1` ([`HDR_LEN`]).
//!
//! ## The data path, and why it copies once
//!
//! [`take_tx`](VirtioNet::take_tx) pops the guest's transmit chains and
//! returns each well-formed frame as the guest-physical pieces that hold
//! it ([`TxFrame`]), without reading the payload. The embedder reads the
//! Ethernet header, picks the destination, and hands the frame's bytes to
//! [`receive`](VirtioNet::receive) of the destination's device, whose
//! callback gets the destination buffer's pieces: a copy from one guest's
//! memory straight into another's. Only then does the embedder give the
//! transmit buffers back with [`complete_tx`](VirtioNet::complete_tx), so
//! the sender cannot reuse them while they are being read.
//!
//! ## Hostile guests
//!
//! A transmit chain with device-writable buffers, shorter than the header
//! plus an Ethernet header, longer than the header plus [`MAX_FRAME`], or
//! whose header asks for offloads that were not negotiated, is dropped and
//! counted, and given back at once. A receive chain with device-readable
//! buffers or too small for the frame is given back empty and counted.
//! Queue protocol errors (ring indices, descriptors, rings outside RAM)
//! break the device (DEVICE_NEEDS_RESET) as for the other devices. Work
//! per call is bounded by the caller's `max` and the queue size.

use alloc::vec::Vec;

use super::common::{Effect, VirtioState};
use super::mmio::WINDOW_LEN;
use super::queue::{scatter, Buffer, MAX_CHAIN};
use super::{feature, interrupt, VirtioError};
use crate::dma::GuestMemoryAccess;

/// virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
pub const QUEUE_RX: u16 = 0;
pub const QUEUE_TX: u16 = 1;
/// QueueNumMax of both queues.
pub const QUEUE_SIZE_MAX: u16 = 256;
/// `sizeof(struct virtio_net_hdr_v1)` (with `num_buffers`, always present
/// with VERSION_1).
pub const HDR_LEN: usize = 12;
/// Destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
/// The largest frame either way: a 1500-byte payload with an 802.1Q tag
/// (Linux's receive buffers without mergeable buffers hold this much).
pub const MAX_FRAME: usize = ETH_HLEN + 4 + 1500;

/// Feature bits of this device type.
pub mod net_feature {
    /// The device has a MAC address in its configuration space.
    pub const MAC: u64 = 1 << 5;
}

/// What happened to the guest's frames, for the administrator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Well-formed frames the guest sent.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed.
    pub tx_malformed: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames for the guest dropped: no receive buffer was available.
    pub rx_no_buffer: u64,
    /// Receive chains given back empty: read-only, or too small.
    pub rx_bad_buffers: u64,
}

/// One frame the guest sent: where its bytes are in the guest's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFrame {
    head: u16,
    generation: u32,
    /// Bytes of the Ethernet frame (without the virtio-net header).
    pub len: u32,
    /// The frame's pieces in guest-physical memory, in order.
    pub pieces: Vec<Buffer>,
}

/// What [`VirtioNet::receive`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into a receive buffer.
    Delivered,
    /// Dropped: the guest has no receive buffer (or no usable one) now.
    NoBuffer,
    /// Dropped: the driver has not set the device up (or must reset it).
    NotReady,
}

/// A virtio-net device, whatever its transport.
#[derive(Debug, Clone)]
pub struct VirtioNet {
    transport: VirtioState,
    config: [u8; 8],
    chain: Vec<Buffer>,
    stats: NetStats,
}

impl VirtioNet {
    fn with_transport(mac: [u8; 6], queue_num_at_reset: u32) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        // status: VIRTIO_NET_S_LINK_UP (read only with F_STATUS, which is
        // not offered; kept for a driver that reads it anyway).
        config[6] = 1;
        VirtioNet {
            transport: VirtioState::new(
                DEVICE_ID_NET,
                feature::VERSION_1 | feature::INDIRECT_DESC | net_feature::MAC,
                2,
                QUEUE_SIZE_MAX,
                queue_num_at_reset,
            ),
            config,
            chain: Vec::with_capacity(MAX_CHAIN as usize),
            stats: NetStats::default(),
        }
    }

    /// The MAC address the device reports.
    pub fn mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.config[..6]);
        m
    }

    /// The interrupt line's level (level-triggered; InterruptACK lowers it).
    pub fn irq_level(&self) -> bool {
        self.transport.interrupt_status != 0
    }

    /// DEVICE_NEEDS_RESET is set, and why.
    pub fn broken(&self) -> Option<&VirtioError> {
        self.transport.broken.as_ref()
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The driver has both queues running.
    pub fn live(&self) -> bool {
        self.transport.queue_live(QUEUE_RX) && self.transport.queue_live(QUEUE_TX)
    }

    fn fail(&mut self, e: VirtioError) -> VirtioError {
        self.transport.fail(e);
        e
    }

    /// Takes at most `max` of the guest's transmit chains. Well-formed
    /// frames are appended to `out` and stay the device's until
    /// [`complete_tx`](Self::complete_tx); malformed ones are dropped,
    /// counted and given back. Nothing happens before DRIVER_OK; a queue
    /// protocol error breaks the device and is returned.
    pub fn take_tx(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        max: usize,
        out: &mut Vec<TxFrame>,
    ) -> Result<(), VirtioError> {
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        if !self.transport.queue_live(QUEUE_TX) {
            return Ok(());
        }
        let mut chain = core::mem::take(&mut self.chain);
        let result = self.pop_tx(mem, max, &mut chain, out);
        self.chain = chain;
        result.map_err(|e| self.fail(e))
    }

    fn pop_tx(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        max: usize,
        chain: &mut Vec<Buffer>,
        out: &mut Vec<TxFrame>,
    ) -> Result<(), VirtioError> {
        let indirect_ok = self.transport.negotiated() & feature::INDIRECT_DESC != 0;
        let generation = self.transport.generation;
        let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
        let pending = usize::from(q.available(mem)?).min(max);
        for _ in 0..pending {
            let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
            let head = q.pop_head(mem)?;
            q.walk_chain(mem, head, indirect_ok, chain)?;
            match frame_of(mem, chain) {
                Some((len, pieces)) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += u64::from(len);
                    out.push(TxFrame { head, generation, len, pieces });
                }
                None => {
                    self.stats.tx_malformed += 1;
                    let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
                    if q.push_used(mem, head, 0)? {
                        self.transport.interrupt_status |= interrupt::USED_BUFFER;
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives transmit buffers back to the guest once their frames have
    /// been read. Frames taken before a reset (or a queue disable) are
    /// ignored: their buffers belong to the driver again.
    pub fn complete_tx<'a>(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        frames: impl IntoIterator<Item = &'a TxFrame>,
    ) -> Result<(), VirtioError> {
        if !self.transport.queue_live(QUEUE_TX) {
            return Ok(());
        }
        let generation = self.transport.generation;
        for f in frames {
            if f.generation != generation {
                continue;
            }
            let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
            match q.push_used(mem, f.head, 0) {
                Ok(true) => self.transport.interrupt_status |= interrupt::USED_BUFFER,
                Ok(false) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    /// Delivers a frame of `len` bytes into the guest's next receive
    /// buffer: writes the header, then calls `copy` with the buffer's
    /// pieces after the header (at least `len` bytes) to put the frame
    /// there. `copy` returns false when it could not read the frame (the
    /// sender's memory); the buffer is then given back empty. A frame
    /// longer than [`MAX_FRAME`] or shorter than an Ethernet header is the
    /// caller's bug and is refused as `NoBuffer`.
    pub fn receive(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        len: u32,
        copy: impl FnOnce(&[Buffer]) -> bool,
    ) -> Result<RxOutcome, VirtioError> {
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        if !self.transport.queue_live(QUEUE_RX) {
            return Ok(RxOutcome::NotReady);
        }
        if !(ETH_HLEN..=MAX_FRAME).contains(&(len as usize)) {
            return Ok(RxOutcome::NoBuffer);
        }
        let mut chain = core::mem::take(&mut self.chain);
        let result = self.fill_rx(mem, len, copy, &mut chain);
        self.chain = chain;
        result.map_err(|e| self.fail(e))
    }

    fn fill_rx(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        len: u32,
        copy: impl FnOnce(&[Buffer]) -> bool,
        chain: &mut Vec<Buffer>,
    ) -> Result<RxOutcome, VirtioError> {
        let indirect_ok = self.transport.negotiated() & feature::INDIRECT_DESC != 0;
        let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(RxOutcome::NotReady) };
        if q.available(mem)? == 0 {
            self.stats.rx_no_buffer += 1;
            return Ok(RxOutcome::NoBuffer);
        }
        let head = q.pop_head(mem)?;
        q.walk_chain(mem, head, indirect_ok, chain)?;
        let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
        let fits = chain.iter().all(|b| b.writable) && total >= (HDR_LEN as u64) + u64::from(len);
        let used = if !fits {
            self.stats.rx_bad_buffers += 1;
            0
        } else {
            // flags 0, gso NONE, num_buffers 1 (§5.1.6.4).
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1;
            scatter(mem, chain, 0, &hdr)?;
            let pieces = skip(chain, HDR_LEN as u64);
            if copy(&pieces) {
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += u64::from(len);
                HDR_LEN as u32 + len
            } else {
                0
            }
        };
        let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(RxOutcome::NotReady) };
        if q.push_used(mem, head, used)? {
            self.transport.interrupt_status |= interrupt::USED_BUFFER;
        }
        Ok(if used == 0 { RxOutcome::NoBuffer } else { RxOutcome::Delivered })
    }

    pub(crate) fn register_write(&mut self, f: impl FnOnce(&mut VirtioState) -> Effect) -> Effect {
        f(&mut self.transport)
    }

    /// The transport-neutral state, for the register front ends.
    pub(crate) fn state(&self) -> &VirtioState {
        &self.transport
    }

    /// The device configuration space (`mac`, `status`).
    pub(crate) fn config(&self) -> &[u8] {
        &self.config
    }

    /// Reads and clears the interrupt status (virtio-pci's ISR).
    pub(crate) fn take_interrupt_status(&mut self) -> u32 {
        core::mem::take(&mut self.transport.interrupt_status)
    }

    /// For the virtio-pci front end (QueueNum starts at the maximum).
    pub(crate) fn new_pci(mac: [u8; 6]) -> Self {
        VirtioNet::with_transport(mac, u32::from(QUEUE_SIZE_MAX))
    }
}

/// A transmit chain's frame: its length and pieces, if the chain is a
/// well-formed one (driver-readable only, a header asking for nothing,
/// an Ethernet frame of [`ETH_HLEN`] to [`MAX_FRAME`] bytes).
fn frame_of(mem: &mut dyn GuestMemoryAccess, chain: &[Buffer]) -> Option<(u32, Vec<Buffer>)> {
    if chain.iter().any(|b| b.writable) {
        return None;
    }
    let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
    let len = total.checked_sub(HDR_LEN as u64)?;
    if !(ETH_HLEN as u64..=MAX_FRAME as u64).contains(&len) {
        return None;
    }
    let mut hdr = [0u8; HDR_LEN];
    if !super::queue::gather(mem, chain, 0, &mut hdr) {
        return None;
    }
    // flags (NEEDS_CSUM, DATA_VALID) and gso_type need offloads this
    // device does not offer.
    if hdr[0] != 0 || hdr[1] != 0 {
        return None;
    }
    Some((len as u32, skip(chain, HDR_LEN as u64)))
}

/// The pieces of `chain` from byte `n` on.
fn skip(chain: &[Buffer], n: u64) -> Vec<Buffer> {
    let mut left = n;
    let mut out = Vec::with_capacity(chain.len());
    for b in chain {
        let len = u64::from(b.len);
        if left >= len {
            left -= len;
            continue;
        }
        // `gpa + left` cannot wrap: the chain's buffers were read as guest
        // RAM by the caller, or fail when the copy touches them.
        out.push(Buffer { gpa: b.gpa.wrapping_add(left), len: (len - left) as u32, writable: b.writable });
        left = 0;
    }
    out
}

/// One virtio-mmio v2 window holding a virtio-net device. Dereferences to
/// [`VirtioNet`].
#[derive(Debug, Clone)]
pub struct VirtioNetMmio {
    net: VirtioNet,
}

impl VirtioNetMmio {
    pub const WINDOW_LEN: u64 = WINDOW_LEN;

    /// A card with address `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        VirtioNetMmio { net: VirtioNet::with_transport(mac, 0) }
    }

    /// Guest MMIO read at `offset` in the window, `size` 1/2/4/8 bytes.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        super::mmio::read(&self.net.transport, offset, size, &self.net.config)
    }

    /// Guest MMIO write. QueueNotify returns [`Effect::Notify`] with the
    /// queue: for the transmit queue, call [`VirtioNet::take_tx`]; for the
    /// receive queue, frames held back for lack of buffers may go now.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> Effect {
        self.net.register_write(|s| super::mmio::write(s, offset, size, value))
    }
}

impl core::ops::Deref for VirtioNetMmio {
    type Target = VirtioNet;
    fn deref(&self) -> &VirtioNet {
        &self.net
    }
}

impl core::ops::DerefMut for VirtioNetMmio {
    fn deref_mut(&mut self) -> &mut VirtioNet {
        &mut self.net
    }
}
