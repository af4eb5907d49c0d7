//! virtio-net (virtio 1.x §5.1), device ID 1: one receive queue (0) and one
//! transmit queue (1), without I/O. The embedder (the hypervisor's switch)
//! decides where a frame goes and moves its bytes; this model owns the
//! queues and checks everything the guest put in them.
//!
//! Features offered: VERSION_1, INDIRECT_DESC and MAC (the address is in
//! the configuration space, with the link status word after it), and, on
//! the virtio-mmio front end (PVH guests' NICs in the hypervisor), the
//! offloads: CSUM, HOST_TSO4/6 and HOST_ECN (the guest may send frames
//! without their checksum, and TCP segments of up to 64 KiB,
//! [`MAX_GSO_FRAME`]), GUEST_CSUM, GUEST_TSO4/6 and GUEST_ECN (it takes
//! them too), and MRG_RXBUF (a frame may fill several receive buffers,
//! `num_buffers` in the header). Every frame is preceded in both
//! directions by the 12-byte `virtio_net_hdr_v1` ([`HDR_LEN`]); what a
//! transmitted frame still needs is its [`Offload`], checked by
//! [`net_offload::parse_tx_header`](crate::net_offload::parse_tx_header),
//! and the embedder hands a received frame's [`Offload`] to
//! [`receive`](VirtioNet::receive) only when the driver accepts it
//! ([`rx_offloads`](VirtioNet::rx_offloads)); otherwise it resolves it
//! first (`net_offload::resolve`). The virtio-pci front end (HVM guests,
//! in the stub domain, whose receive ring's slots hold one plain frame)
//! offers no offloads: its frames are at most [`MAX_FRAME`] bytes.
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
//! plus an Ethernet header, longer than the header plus [`MAX_FRAME`]
//! (without GSO) or [`MAX_GSO_FRAME`] (with), or whose header is nonsense
//! (flags, a GSO type or offloads that were not negotiated, a checksum
//! position outside the frame, a segment size below
//! [`MIN_TSO_MSS`](crate::net_offload::MIN_TSO_MSS) or above a frame) is
//! dropped and counted, and given back at once. A receive chain with
//! device-readable buffers or too small for the frame (with MRG_RXBUF:
//! buffers that together are too small, the first one without room for
//! the header) is given back empty and counted; when the guest has posted
//! too few buffers for a merged frame, they stay posted and the frame is
//! dropped as for a full ring.
//! Queue protocol errors (ring indices, descriptors, rings outside RAM)
//! break the device (DEVICE_NEEDS_RESET) as for the other devices. Work
//! per call is bounded by the caller's `max` and the queue size.

use alloc::vec::Vec;

use super::common::{Effect, VirtioState};
use super::mmio::WINDOW_LEN;
use super::queue::{scatter, Buffer, MAX_CHAIN};
use super::{feature, interrupt, VirtioError};
use crate::dma::GuestMemoryAccess;
pub use crate::net_offload::{Offload, RxOffloads, MAX_GSO_FRAME};
use crate::net_offload::{parse_tx_header, rx_header, TxOffloads};

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

/// Feature bits of this device type (§5.1.3).
pub mod net_feature {
    /// The device takes frames with a partial checksum (NEEDS_CSUM).
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes frames with a partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The device has a MAC address in its configuration space.
    pub const MAC: u64 = 1 << 5;
    /// The driver takes TCP segmentation offload frames (IPv4, IPv6, with
    /// ECN).
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The device takes them.
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    /// A received frame may fill several buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Everything the virtio-mmio front end offers beyond MAC.
    pub const OFFLOADS: u64 =
        CSUM | GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | HOST_TSO4 | HOST_TSO6 | HOST_ECN | MRG_RXBUF;
}

/// Receive buffers one frame may fill at most (with MRG_RXBUF): a whole
/// ring.
pub const MAX_RX_BUFFERS: usize = QUEUE_SIZE_MAX as usize;

/// What happened to the guest's frames, for the administrator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Well-formed frames the guest sent.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Of those, TCP segmentation offload frames, and their bytes.
    pub tx_gso: u64,
    pub tx_gso_bytes: u64,
    /// Transmit chains dropped as malformed.
    pub tx_malformed: u64,
    /// Of those, for a nonsense offload header.
    pub tx_bad_offload: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Of those, TCP segmentation offload frames handed over whole.
    pub rx_gso: u64,
    /// Receive buffers (with MRG_RXBUF: of every frame) used.
    pub rx_buffers: u64,
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
    /// What it still needs (checked; none unless negotiated).
    pub offload: Offload,
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
    /// A merged frame's receive buffers, and their (head, capacity).
    rx_pieces: Vec<Buffer>,
    rx_heads: Vec<(u16, u32)>,
    /// The embedder never waits for receive buffers (it drops a frame when
    /// there is none), so the driver is asked not to notify new ones.
    quiet_rx: bool,
    stats: NetStats,
}

impl VirtioNet {
    fn with_transport(mac: [u8; 6], queue_num_at_reset: u32, offloads: u64) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        // status: VIRTIO_NET_S_LINK_UP (read only with F_STATUS, which is
        // not offered; kept for a driver that reads it anyway).
        config[6] = 1;
        VirtioNet {
            transport: VirtioState::new(
                DEVICE_ID_NET,
                feature::VERSION_1 | feature::INDIRECT_DESC | net_feature::MAC | offloads,
                2,
                QUEUE_SIZE_MAX,
                queue_num_at_reset,
            ),
            config,
            chain: Vec::with_capacity(MAX_CHAIN as usize),
            rx_pieces: Vec::new(),
            rx_heads: Vec::new(),
            quiet_rx: false,
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

    fn has(&self, f: u64) -> bool {
        self.transport.negotiated() & f != 0
    }

    /// The offloads the driver takes in received frames: checksums with
    /// GUEST_CSUM, TCP segments with GUEST_TSO4/6 (and GUEST_CSUM, which
    /// they come with), ECN's with GUEST_ECN.
    pub fn rx_offloads(&self) -> RxOffloads {
        use net_feature::*;
        let csum = self.has(GUEST_CSUM);
        RxOffloads {
            csum,
            tso4: csum && self.has(GUEST_TSO4),
            tso6: csum && self.has(GUEST_TSO6),
            ecn: csum && self.has(GUEST_ECN),
        }
    }

    fn tx_offloads(&self) -> TxOffloads {
        use net_feature::*;
        let csum = self.has(CSUM);
        TxOffloads {
            csum,
            tso4: csum && self.has(HOST_TSO4),
            tso6: csum && self.has(HOST_TSO6),
            ecn: csum && self.has(HOST_ECN),
        }
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
        let allowed = self.tx_offloads();
        let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
        let pending = usize::from(q.available(mem)?).min(max);
        for _ in 0..pending {
            let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
            let head = q.pop_head(mem)?;
            q.walk_chain(mem, head, indirect_ok, chain)?;
            match frame_of(mem, chain, &allowed) {
                Ok((len, pieces, offload)) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += u64::from(len);
                    if offload.gso.is_some() {
                        self.stats.tx_gso += 1;
                        self.stats.tx_gso_bytes += u64::from(len);
                    }
                    out.push(TxFrame { head, generation, len, pieces, offload });
                }
                Err(why) => {
                    self.stats.tx_malformed += 1;
                    self.stats.tx_bad_offload += u64::from(why == TxDrop::Offload);
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

    /// Delivers a frame of `len` bytes that still needs `offload` into the
    /// guest's next receive buffer (with MRG_RXBUF, as many buffers as it
    /// takes): writes the header, then calls `copy` with the buffers'
    /// pieces after the header (at least `len` bytes) to put the frame
    /// there. `copy` returns false when it could not read the frame (the
    /// sender's memory); the buffers are then given back empty. An
    /// offload the driver does not take ([`rx_offloads`](Self::rx_offloads)),
    /// or a frame longer than [`MAX_FRAME`] (without GSO) or
    /// [`MAX_GSO_FRAME`], or shorter than an Ethernet header, is the
    /// caller's bug and is refused as `NoBuffer`.
    pub fn receive(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        len: u32,
        offload: &Offload,
        copy: impl FnOnce(&[Buffer]) -> bool,
    ) -> Result<RxOutcome, VirtioError> {
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        if !self.transport.queue_live(QUEUE_RX) {
            return Ok(RxOutcome::NotReady);
        }
        let max = if offload.gso.is_some() { MAX_GSO_FRAME } else { MAX_FRAME };
        if !(ETH_HLEN..=max).contains(&(len as usize)) || !self.rx_offloads().accepts(offload) {
            return Ok(RxOutcome::NoBuffer);
        }
        let mut chain = core::mem::take(&mut self.chain);
        let mut pieces = core::mem::take(&mut self.rx_pieces);
        let mut heads = core::mem::take(&mut self.rx_heads);
        pieces.clear();
        heads.clear();
        let result = self.fill_rx(mem, len, offload, copy, &mut chain, &mut pieces, &mut heads);
        self.chain = chain;
        self.rx_pieces = pieces;
        self.rx_heads = heads;
        result.map_err(|e| self.fail(e))
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_rx(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        len: u32,
        offload: &Offload,
        copy: impl FnOnce(&[Buffer]) -> bool,
        chain: &mut Vec<Buffer>,
        pieces: &mut Vec<Buffer>,
        heads: &mut Vec<(u16, u32)>,
    ) -> Result<RxOutcome, VirtioError> {
        let indirect_ok = self.has(feature::INDIRECT_DESC);
        let merge = self.has(net_feature::MRG_RXBUF);
        let need = HDR_LEN as u64 + u64::from(len);
        let mut total: u64 = 0;
        let mut fits = true;
        // Take buffers until the frame fits: one without MRG_RXBUF.
        while total < need {
            let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(RxOutcome::NotReady) };
            if heads.len() >= MAX_RX_BUFFERS || (!merge && !heads.is_empty()) {
                fits = false;
                break;
            }
            if q.available(mem)? == 0 {
                // Too few buffers posted: they stay the device's to use
                // for the next frame.
                q.unpop(heads.len() as u16);
                self.stats.rx_no_buffer += 1;
                return Ok(RxOutcome::NoBuffer);
            }
            let head = q.pop_head(mem)?;
            q.walk_chain(mem, head, indirect_ok, chain)?;
            let cap: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
            heads.push((head, cap.min(u64::from(u32::MAX)) as u32));
            if !chain.iter().all(|b| b.writable) || (total == 0 && cap < HDR_LEN as u64) || cap == 0 {
                fits = false;
                break;
            }
            pieces.extend_from_slice(chain);
            total += cap;
        }
        let mut delivered = false;
        if !fits {
            self.stats.rx_bad_buffers += 1;
        } else {
            let hdr = rx_header(offload, heads.len() as u16);
            scatter(mem, pieces, 0, &hdr)?;
            let after = skip(pieces, HDR_LEN as u64);
            if copy(&after) {
                delivered = true;
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += u64::from(len);
                self.stats.rx_gso += u64::from(offload.gso.is_some());
                self.stats.rx_buffers += heads.len() as u64;
            }
        }
        // Used lengths: the frame (and header) in order over the buffers.
        let mut left = if delivered { need } else { 0 };
        for (_, cap) in heads.iter_mut() {
            let n = left.min(u64::from(*cap));
            left -= n;
            *cap = n as u32;
        }
        let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(RxOutcome::NotReady) };
        if self.quiet_rx {
            q.set_used_flags(mem, super::queue::USED_F_NO_NOTIFY)?;
        }
        if q.push_used_batch(mem, heads)? {
            self.transport.interrupt_status |= interrupt::USED_BUFFER;
        }
        Ok(if delivered { RxOutcome::Delivered } else { RxOutcome::NoBuffer })
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
        VirtioNet::with_transport(mac, u32::from(QUEUE_SIZE_MAX), 0)
    }
}

/// Why a transmit chain was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxDrop {
    /// Its shape: writable buffers, lengths, an unreadable header.
    Shape,
    /// Its header's offload fields.
    Offload,
}

/// A transmit chain's frame: its length, pieces and offload, if the chain
/// is a well-formed one (driver-readable only, an Ethernet frame of
/// [`ETH_HLEN`] to [`MAX_FRAME`] bytes, or [`MAX_GSO_FRAME`] with GSO, a
/// header asking only for what `allowed` has, and sensibly).
fn frame_of(
    mem: &mut dyn GuestMemoryAccess,
    chain: &[Buffer],
    allowed: &TxOffloads,
) -> Result<(u32, Vec<Buffer>, Offload), TxDrop> {
    if chain.iter().any(|b| b.writable) {
        return Err(TxDrop::Shape);
    }
    let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
    let len = total.checked_sub(HDR_LEN as u64).ok_or(TxDrop::Shape)?;
    if !(ETH_HLEN as u64..=MAX_GSO_FRAME as u64).contains(&len) {
        return Err(TxDrop::Shape);
    }
    let mut hdr = [0u8; HDR_LEN];
    if !super::queue::gather(mem, chain, 0, &mut hdr) {
        return Err(TxDrop::Shape);
    }
    let offload = parse_tx_header(&hdr, len as usize, MAX_FRAME, allowed).map_err(|e| match e {
        crate::net_offload::OffloadError::Length => TxDrop::Shape,
        _ => TxDrop::Offload,
    })?;
    Ok((len as u32, skip(chain, HDR_LEN as u64), offload))
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

    /// A card with address `mac`, offering the offloads.
    pub fn new(mac: [u8; 6]) -> Self {
        VirtioNetMmio { net: VirtioNet::with_transport(mac, 0, net_feature::OFFLOADS) }
    }

    /// A card with address `mac` and no offloads.
    pub fn without_offloads(mac: [u8; 6]) -> Self {
        VirtioNetMmio { net: VirtioNet::with_transport(mac, 0, 0) }
    }

    /// Asks the driver not to notify new receive buffers (used.flags
    /// NO_NOTIFY, from the first frame received on): for an embedder that
    /// drops a frame when no buffer is posted rather than holding it until
    /// one is, a receive notify is an exit for nothing.
    pub fn quiet_receive_notifies(&mut self) {
        self.net.quiet_rx = true;
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
