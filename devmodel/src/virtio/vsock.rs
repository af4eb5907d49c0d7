//! virtio-vsock (virtio 1.x §5.10), device ID 19: the host's end of the
//! guest's stream sockets to the host (CID 2), without I/O.
//!
//! Three queues: rx (0, device → driver packets), tx (1, driver → device)
//! and event (2, never used: the guest's CID does not change). The device
//! configuration is `le64 guest_cid`. Only stream sockets (type 1) exist;
//! no feature bits beyond VERSION_1 and INDIRECT_DESC are offered.
//!
//! The model is the device side of the stream protocol: it parses the
//! guest's tx packets (a 44-byte [`VsockHdr`] and `len` payload bytes,
//! framed however the descriptors split them), keeps per-connection state
//! for the connections the guest opens to ports the embedder listens on,
//! does the credit-based flow control both ways, and writes host → guest
//! packets into the guest's rx buffers.
//!
//! ## Hostile guests
//!
//! Everything in a tx packet is the guest's. A packet not from the guest's
//! own CID or not to the host CID is dropped (as vhost-vsock does); a
//! chain shorter than a header, or with device-writable buffers, is
//! dropped; a header whose `len` exceeds the chain's bytes or
//! [`MAX_PKT_PAYLOAD`], payload on a control packet, an unknown op, any
//! type but STREAM, data beyond the credit the model advertised, data
//! after the guest's SHUTDOWN(SEND), or an op that does not fit the
//! connection's state, ends the connection with RST (or is answered with
//! RST when there is no connection; an RST is never answered). Queue
//! protocol errors (ring indices, descriptors, rx buffers not in RAM)
//! break the device as for virtio-blk. An rx chain that cannot hold a
//! header is given back with length 0 (Linux drops such a buffer).
//!
//! Everything is bounded: [`MAX_CONNS`] connections (pending, open,
//! closing, or closed but not yet released by the embedder),
//! [`RX_BUF_ALLOC`] bytes received and not yet taken per connection (the
//! credit advertised to the guest), [`TX_BUF_CAP`] bytes queued towards
//! the guest per connection (and never more than the guest's credit),
//! [`MAX_PENDING_RSTS`] RST replies waiting for rx buffers, and per call
//! the work of one pass over the available ring.
//!
//! ## Use (a polled loop)
//!
//! Forward the guest's accesses to the window ([`VirtioVsockMmio::read`],
//! [`VirtioVsockMmio::write`]). On [`Effect::Notify`] (any queue), or on
//! every poll, call [`VirtioVsock::process`]: it takes the guest's tx
//! packets, returns [`VsockEvent`]s, and flushes what waits for the guest
//! into its rx buffers. Answer each [`VsockEvent::Incoming`] with
//! [`accept`](VirtioVsock::accept) or [`refuse`](VirtioVsock::refuse).
//! Move data with [`recv`](VirtioVsock::recv) /
//! [`recv_with`](VirtioVsock::recv_with) (taking bytes is what returns
//! credit to the guest) and [`send`](VirtioVsock::send) (it takes what the
//! guest's credit and the buffer cap allow), then call
//! [`flush`](VirtioVsock::flush). End every connection the embedder was
//! given with [`close`](VirtioVsock::close) (orderly: queued data, then
//! SHUTDOWN, then the guest's RST), [`abort`](VirtioVsock::abort) or
//! [`refuse`](VirtioVsock::refuse); after [`VsockEvent::Closed`] the
//! bytes already received stay readable until then. After every call set
//! the interrupt line to [`irq_level`](VirtioVsock::irq_level).

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use super::common::{Effect, VirtioState};
use super::mmio::WINDOW_LEN;
use super::queue::{gather, scatter, Buffer, MAX_CHAIN};
use super::{feature, interrupt, VirtioError};
use crate::dma::GuestMemoryAccess;

/// virtio device ID of a socket device.
pub const DEVICE_ID_VSOCK: u32 = 19;
/// The host's CID (VMADDR_CID_HOST): the only destination a guest may
/// send to.
pub const HOST_CID: u64 = 2;
pub const QUEUE_RX: u16 = 0;
pub const QUEUE_TX: u16 = 1;
pub const QUEUE_EVENT: u16 = 2;
/// QueueNumMax of each queue.
pub const QUEUE_SIZE_MAX: u16 = 128;
/// `sizeof(struct virtio_vsock_hdr)`.
pub const HDR_LEN: usize = 44;
/// Largest payload of one packet either way (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Connections at once, in any state.
pub const MAX_CONNS: usize = 16;
/// The receive buffer each connection advertises to the guest
/// (`buf_alloc`): bytes received and not yet taken by the embedder.
pub const RX_BUF_ALLOC: u32 = 64 * 1024;
/// Bytes queued towards the guest per connection.
pub const TX_BUF_CAP: usize = 64 * 1024;
/// RST replies waiting for rx buffers; more are dropped.
pub const MAX_PENDING_RSTS: usize = 64;

/// Packet ops (§5.10.6).
pub mod op {
    pub const INVALID: u16 = 0;
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Socket types.
pub const TYPE_STREAM: u16 = 1;

/// SHUTDOWN flags.
pub mod shutdown {
    /// The sender will receive no more.
    pub const RCV: u32 = 1;
    /// The sender will send no more.
    pub const SEND: u32 = 2;
}

/// `struct virtio_vsock_hdr`, little endian and packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VsockHdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl VsockHdr {
    pub fn parse(b: &[u8; HDR_LEN]) -> Self {
        let mut c = [0u8; 8];
        c.copy_from_slice(&b[0..8]);
        let src_cid = u64::from_le_bytes(c);
        c.copy_from_slice(&b[8..16]);
        VsockHdr {
            src_cid,
            dst_cid: u64::from_le_bytes(c),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            kind: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Names a connection the embedder was given. Stale ids (of a connection
/// since released) are ignored by every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    slot: u8,
    generation: u32,
}

impl ConnId {
    /// The connection's slot, below [`MAX_CONNS`]: an index for the
    /// embedder's own per-connection table (unique among live ids).
    pub fn index(&self) -> usize {
        usize::from(self.slot)
    }
}

/// What [`VirtioVsock::process`] tells the embedder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockEvent {
    /// The guest asks to connect from `guest_port` to `host_port` (one the
    /// embedder listens on): answer with `accept` or `refuse`.
    Incoming {
        conn: ConnId,
        guest_port: u32,
        host_port: u32,
    },
    /// New bytes wait on the connection, or the guest will send no more
    /// (check [`VirtioVsock::may_recv`]); at most once per connection per
    /// call.
    Readable { conn: ConnId },
    /// The connection is over (the guest's RST or full shutdown, a
    /// protocol violation, a device reset). Bytes already received can
    /// still be taken; release the id with `close`.
    Closed { conn: ConnId },
}

/// A connection as the embedder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Incoming, not yet accepted or refused.
    Pending,
    Established,
    /// Over; received bytes may remain.
    Closed,
}

/// Counters for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// tx packets taken from the guest.
    pub tx_packets: u64,
    /// Packets written into the guest's rx buffers.
    pub rx_packets: u64,
    /// tx packets dropped unanswered: not from the guest's CID or not to
    /// the host, chains too short for a header or with writable buffers.
    pub dropped: u64,
    /// RST packets queued for the guest.
    pub resets: u64,
    /// RST replies dropped because too many waited.
    pub resets_dropped: u64,
    /// Data beyond the advertised credit (the connection was reset).
    pub credit_violations: u64,
    /// rx chains that could not hold a header (given back empty).
    pub bad_rx_buffers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Established,
    /// The embedder closed it: queued data, then SHUTDOWN, then waiting
    /// for the guest's RST. The embedder's id is dead.
    Closing,
    /// Over; the embedder still holds the id.
    Dead,
}

#[derive(Debug, Clone)]
struct Conn {
    state: State,
    guest_port: u32,
    host_port: u32,
    // Guest → host.
    rx: VecDeque<u8>,
    /// Payload bytes received (wrapping).
    rx_cnt: u32,
    /// Payload bytes taken by the embedder (or discarded) (wrapping).
    fwd_cnt: u32,
    /// The `fwd_cnt` in the last packet sent to the guest.
    last_fwd_sent: u32,
    /// The guest sent SHUTDOWN(SEND) / SHUTDOWN(RCV).
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    // Host → guest.
    tx: VecDeque<u8>,
    /// Payload bytes written into rx buffers (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    // Control packets waiting.
    send_response: bool,
    send_credit_update: bool,
    send_credit_request: bool,
    credit_request_outstanding: bool,
    /// SHUTDOWN(RCV|SEND) once `tx` is empty.
    send_shutdown: bool,
    /// Readable already reported in this `process` call.
    readable_reported: bool,
}

impl Conn {
    fn new(guest_port: u32, host_port: u32, h: &VsockHdr) -> Self {
        Conn {
            state: State::Pending,
            guest_port,
            host_port,
            rx: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            peer_shut_send: false,
            peer_shut_rcv: false,
            tx: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: h.buf_alloc,
            peer_fwd_cnt: h.fwd_cnt,
            send_response: false,
            send_credit_update: false,
            send_credit_request: false,
            credit_request_outstanding: false,
            send_shutdown: false,
            readable_reported: false,
        }
    }

    /// Bytes the guest can take now: its buffer less what it has not
    /// acknowledged. A `fwd_cnt` ahead of what was sent gives nothing.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Bytes the guest may still send.
    fn rx_free(&self) -> u32 {
        RX_BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    fn sending(&self) -> bool {
        matches!(self.state, State::Established | State::Closing)
    }

    fn data_ready(&self) -> bool {
        !self.tx.is_empty() && self.peer_credit() > 0
    }

    fn wants_send(&self) -> bool {
        self.sending()
            && (self.send_response
                || self.send_credit_update
                || self.send_credit_request
                || self.data_ready()
                || (self.send_shutdown && self.tx.is_empty()))
    }

    /// After bytes were taken: tell the guest once the credit it knows of
    /// has fallen below half.
    fn consumed(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        let known_used = self.rx_cnt.wrapping_sub(self.last_fwd_sent);
        let known_free = RX_BUF_ALLOC.saturating_sub(known_used);
        if self.sending() && self.fwd_cnt != self.last_fwd_sent && known_free < RX_BUF_ALLOC / 2 {
            self.send_credit_update = true;
        }
    }

    /// The embedder may read and write it (ids of closing connections are
    /// dead).
    fn owned(&self) -> bool {
        self.state != State::Closing
    }
}

#[derive(Debug, Clone, Copy)]
struct Rst {
    guest_port: u32,
    host_port: u32,
    kind: u16,
}

/// A virtio-vsock device, whatever its transport.
#[derive(Debug, Clone)]
pub struct VirtioVsock {
    transport: VirtioState,
    guest_cid: u64,
    config: [u8; 8],
    listen: Vec<u32>,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    rsts: VecDeque<Rst>,
    /// Events from register writes (a reset's Closed), reported by the
    /// next `process`.
    deferred: Vec<VsockEvent>,
    /// Round-robin position over the connections for rx buffers.
    next_conn: usize,
    chain: Vec<Buffer>,
    scratch: Vec<u8>,
    stats: VsockStats,
}

impl VirtioVsock {
    fn with_transport(guest_cid: u64, listen_ports: &[u32], queue_num_at_reset: u32) -> Self {
        VirtioVsock {
            transport: VirtioState::new(
                DEVICE_ID_VSOCK,
                feature::VERSION_1 | feature::INDIRECT_DESC,
                3,
                QUEUE_SIZE_MAX,
                queue_num_at_reset,
            ),
            guest_cid,
            config: guest_cid.to_le_bytes(),
            listen: listen_ports.to_vec(),
            conns: vec![None; MAX_CONNS],
            generations: vec![0; MAX_CONNS],
            rsts: VecDeque::new(),
            deferred: Vec::new(),
            next_conn: 0,
            chain: Vec::with_capacity(MAX_CHAIN as usize),
            scratch: Vec::new(),
            stats: VsockStats::default(),
        }
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The features the driver accepted (meaningful once FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        self.transport.negotiated()
    }

    /// The interrupt line's level (level-triggered; InterruptACK lowers it).
    pub fn irq_level(&self) -> bool {
        self.transport.interrupt_status != 0
    }

    /// DEVICE_NEEDS_RESET is set, and why.
    pub fn broken(&self) -> Option<&VirtioError> {
        self.transport.broken.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn transport_queue(&self, index: u16) -> Option<&super::queue::SplitQueue> {
        self.transport.queue(index)
    }

    pub fn stats(&self) -> &VsockStats {
        &self.stats
    }

    /// Packets wait for the guest's rx buffers.
    pub fn has_output(&self) -> bool {
        !self.rsts.is_empty() || self.conns.iter().flatten().any(Conn::wants_send)
    }

    /// Connections in use (any state).
    pub fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    fn register_write(&mut self, f: impl FnOnce(&mut VirtioState) -> Effect) -> Effect {
        let effect = f(&mut self.transport);
        if effect == Effect::Reset {
            self.reset_connections();
        }
        effect
    }

    /// A device reset (or a queue disabled) ends every connection: the
    /// guest's driver resets its sockets too.
    fn reset_connections(&mut self) {
        for slot in 0..MAX_CONNS {
            let Some(c) = self.conns[slot].as_mut() else { continue };
            match c.state {
                State::Closing => self.free(slot),
                State::Dead => {}
                State::Pending | State::Established => {
                    c.state = State::Dead;
                    c.tx.clear();
                    let conn = self.id(slot);
                    if self.deferred.len() < MAX_CONNS {
                        self.deferred.push(VsockEvent::Closed { conn });
                    }
                }
            }
        }
        self.rsts.clear();
        self.next_conn = 0;
    }

    fn id(&self, slot: usize) -> ConnId {
        ConnId {
            slot: slot as u8,
            generation: self.generations[slot],
        }
    }

    fn free(&mut self, slot: usize) {
        self.conns[slot] = None;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
    }

    /// The slot of a connection the embedder holds.
    fn slot(&self, conn: ConnId) -> Option<usize> {
        let slot = usize::from(conn.slot);
        let c = self.conns.get(slot)?.as_ref()?;
        (self.generations[slot] == conn.generation && c.owned()).then_some(slot)
    }

    fn conn(&self, conn: ConnId) -> Option<&Conn> {
        self.conns[self.slot(conn)?].as_ref()
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        let slot = self.slot(conn)?;
        self.conns[slot].as_mut()
    }

    // ------------------------------------------------------------ embedder

    /// Accepts a pending connection: RESPONSE goes to the guest. False for
    /// any other id.
    pub fn accept(&mut self, conn: ConnId) -> bool {
        match self.conn_mut(conn) {
            Some(c) if c.state == State::Pending => {
                c.state = State::Established;
                c.send_response = true;
                true
            }
            _ => false,
        }
    }

    /// Refuses a pending connection (RST) and releases the id; for any
    /// other connection the same as [`abort`](Self::abort).
    pub fn refuse(&mut self, conn: ConnId) {
        self.abort(conn);
    }

    /// Ends a connection at once: RST (unless it is over already), queued
    /// data dropped, the id released.
    pub fn abort(&mut self, conn: ConnId) {
        let Some(slot) = self.slot(conn) else { return };
        if let Some(c) = &self.conns[slot] {
            if c.state != State::Dead {
                let (guest_port, host_port) = (c.guest_port, c.host_port);
                self.queue_rst(guest_port, host_port, TYPE_STREAM);
            }
        }
        self.free(slot);
    }

    /// Closes a connection in order and releases the id: data already
    /// queued still goes out, then SHUTDOWN(RCV|SEND); the guest answers
    /// with RST, which frees the slot (a connection still waiting for it
    /// is reset when a slot is needed). Received bytes not taken are
    /// dropped. A pending connection is refused; a closed one released.
    pub fn close(&mut self, conn: ConnId) {
        let Some(slot) = self.slot(conn) else { return };
        let Some(c) = self.conns[slot].as_mut() else { return };
        match c.state {
            State::Pending => self.abort(conn),
            State::Dead => self.free(slot),
            State::Established | State::Closing => {
                c.state = State::Closing;
                c.send_shutdown = true;
                let n = c.rx.len();
                c.rx.clear();
                c.consumed(n);
            }
        }
    }

    /// The connection's state; `None` for an id not (or no longer) held.
    pub fn state(&self, conn: ConnId) -> Option<ConnState> {
        self.conn(conn).map(|c| match c.state {
            State::Pending => ConnState::Pending,
            State::Established => ConnState::Established,
            _ => ConnState::Closed,
        })
    }

    /// Bytes received and not yet taken.
    pub fn recv_queue(&self, conn: ConnId) -> usize {
        self.conn(conn).map_or(0, |c| c.rx.len())
    }

    /// More bytes may come: some wait, or the guest may still send.
    pub fn may_recv(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some_and(|c| {
            !c.rx.is_empty()
                || (matches!(c.state, State::Pending | State::Established) && !c.peer_shut_send)
        })
    }

    /// Takes up to `buf.len()` received bytes; returns how many.
    pub fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> usize {
        self.recv_with(conn, |data| {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            n
        })
    }

    /// Shows `f` the received bytes (all of them, contiguous) and takes as
    /// many as it returns (at most all): for a consumer that takes part of
    /// its input, as `ServerSession::feed` does. Taking bytes returns
    /// credit to the guest (a CREDIT_UPDATE once the credit it knows of
    /// falls below half).
    pub fn recv_with(&mut self, conn: ConnId, f: impl FnOnce(&[u8]) -> usize) -> usize {
        let Some(c) = self.conn_mut(conn) else { return 0 };
        if c.rx.is_empty() {
            return 0;
        }
        let n = f(c.rx.make_contiguous()).min(c.rx.len());
        c.rx.drain(..n);
        c.consumed(n);
        n
    }

    /// The guest takes data on the connection (it is established and the
    /// guest has not shut down receiving).
    pub fn may_send(&self, conn: ConnId) -> bool {
        self.conn(conn)
            .is_some_and(|c| c.state == State::Established && !c.peer_shut_rcv)
    }

    /// How many bytes [`send`](Self::send) would take now.
    pub fn send_capacity(&self, conn: ConnId) -> usize {
        self.conn(conn).map_or(0, |c| {
            if c.state != State::Established || c.peer_shut_rcv {
                return 0;
            }
            let room = TX_BUF_CAP.saturating_sub(c.tx.len());
            let credit = (c.peer_credit() as usize).saturating_sub(c.tx.len());
            room.min(credit)
        })
    }

    /// Queues host → guest bytes; returns how many were taken: no more
    /// than the guest's credit (less what is queued) and
    /// [`TX_BUF_CAP`]. When the guest's credit stops it, the model asks
    /// the guest for a credit update. The bytes go out with
    /// [`flush`](Self::flush) as rx buffers allow.
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> usize {
        let n = data.len().min(self.send_capacity(conn));
        let Some(c) = self.conn_mut(conn) else { return 0 };
        if c.state != State::Established || c.peer_shut_rcv {
            return 0;
        }
        c.tx.extend(&data[..n]);
        let credit_bound = (c.peer_credit() as usize) <= c.tx.len();
        if n < data.len() && credit_bound && !c.credit_request_outstanding {
            c.send_credit_request = true;
            c.credit_request_outstanding = true;
        }
        n
    }

    // --------------------------------------------------------------- guest

    /// Takes the guest's tx packets (every one available, at most the
    /// queue size), appends what the embedder must know to `events`, then
    /// [`flush`](Self::flush)es. Does nothing with the queues before
    /// DRIVER_OK or while the device needs a reset. A queue protocol error
    /// breaks the device and is returned (once).
    pub fn process(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        events: &mut Vec<VsockEvent>,
    ) -> Result<(), VirtioError> {
        events.append(&mut self.deferred);
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        for c in self.conns.iter_mut().flatten() {
            c.readable_reported = false;
        }
        if self.transport.queue_live(QUEUE_TX) {
            let mut chain = core::mem::take(&mut self.chain);
            let result = self.take_tx(mem, &mut chain, events);
            self.chain = chain;
            if let Err(e) = result {
                self.transport.fail(e);
                return Err(e);
            }
        }
        self.flush(mem)
    }

    fn take_tx(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        chain: &mut Vec<Buffer>,
        events: &mut Vec<VsockEvent>,
    ) -> Result<(), VirtioError> {
        let indirect_ok = self.transport.negotiated() & feature::INDIRECT_DESC != 0;
        let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
        let pending = q.available(mem)?;
        for _ in 0..pending {
            let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
            let head = q.pop_head(mem)?;
            q.walk_chain(mem, head, indirect_ok, chain)?;
            self.stats.tx_packets += 1;
            self.tx_packet(mem, chain, events);
            let Some(q) = self.transport.queue_mut(QUEUE_TX) else { return Ok(()) };
            if q.push_used(mem, head, 0)? {
                self.transport.interrupt_status |= interrupt::USED_BUFFER;
            }
        }
        Ok(())
    }

    /// One tx packet. Nothing here breaks the device: the packet is
    /// dropped or answered with RST.
    fn tx_packet(&mut self, mem: &mut dyn GuestMemoryAccess, chain: &[Buffer], events: &mut Vec<VsockEvent>) {
        let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
        let mut hb = [0u8; HDR_LEN];
        if chain.iter().any(|b| b.writable)
            || total < HDR_LEN as u64
            || !gather(mem, chain, 0, &mut hb)
        {
            self.stats.dropped += 1;
            return;
        }
        let h = VsockHdr::parse(&hb);
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            self.stats.dropped += 1;
            return;
        }
        let well_formed = h.kind == TYPE_STREAM
            && h.len <= MAX_PKT_PAYLOAD
            && u64::from(h.len) <= total - HDR_LEN as u64
            && (h.op == op::RW || h.len == 0);
        let (guest_port, host_port) = (h.src_port, h.dst_port);
        let Some(slot) = self.find(guest_port, host_port) else {
            match h.op {
                op::RST => {}
                op::REQUEST if well_formed => self.incoming(&h, events),
                _ => self.queue_rst(guest_port, host_port, h.kind),
            }
            return;
        };
        if h.op == op::RST {
            self.end(slot, false, events);
            return;
        }
        let Some(c) = self.conns[slot].as_mut() else { return };
        if !well_formed {
            self.end(slot, true, events);
            return;
        }
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        let pending = c.state == State::Pending;
        match h.op {
            op::CREDIT_UPDATE if !pending => c.credit_request_outstanding = false,
            op::CREDIT_REQUEST if !pending => c.send_credit_update = true,
            op::RW if !pending => self.data(mem, slot, &h, chain, events),
            op::SHUTDOWN if !pending => {
                if h.flags & shutdown::RCV != 0 {
                    c.peer_shut_rcv = true;
                    c.tx.clear();
                }
                if h.flags & shutdown::SEND != 0 && !c.peer_shut_send {
                    c.peer_shut_send = true;
                    self.readable(slot, events);
                }
                let c = self.conns[slot].as_ref();
                if c.is_some_and(|c| c.peer_shut_rcv && c.peer_shut_send) {
                    // Both ways shut: the receiver of the last SHUTDOWN
                    // ends the connection with RST (§5.10.6.6).
                    self.end(slot, true, events);
                }
            }
            // REQUEST or RESPONSE on an existing connection, anything but
            // RST while pending, unknown ops.
            _ => self.end(slot, true, events),
        }
    }

    /// RW on an open (or closing) connection.
    fn data(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        slot: usize,
        h: &VsockHdr,
        chain: &[Buffer],
        events: &mut Vec<VsockEvent>,
    ) {
        let Some(c) = self.conns[slot].as_ref() else { return };
        if c.peer_shut_send {
            self.end(slot, true, events);
            return;
        }
        if h.len > c.rx_free() {
            self.stats.credit_violations += 1;
            self.end(slot, true, events);
            return;
        }
        if h.len == 0 {
            return;
        }
        let mut buf = core::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(h.len as usize, 0);
        let ok = gather(mem, chain, HDR_LEN as u64, &mut buf);
        if !ok {
            self.scratch = buf;
            self.end(slot, true, events);
            return;
        }
        let Some(c) = self.conns[slot].as_mut() else { return };
        c.rx_cnt = c.rx_cnt.wrapping_add(h.len);
        if c.state == State::Closing {
            // Nobody reads it any more: taken at once.
            c.consumed(buf.len());
        } else {
            c.rx.extend(&buf);
            self.readable(slot, events);
        }
        self.scratch = buf;
    }

    fn readable(&mut self, slot: usize, events: &mut Vec<VsockEvent>) {
        let conn = self.id(slot);
        if let Some(c) = self.conns[slot].as_mut() {
            if c.owned() && !c.readable_reported {
                c.readable_reported = true;
                events.push(VsockEvent::Readable { conn });
            }
        }
    }

    /// A REQUEST for a port pair with no connection.
    fn incoming(&mut self, h: &VsockHdr, events: &mut Vec<VsockEvent>) {
        let (guest_port, host_port) = (h.src_port, h.dst_port);
        if !self.listen.contains(&host_port) {
            self.queue_rst(guest_port, host_port, h.kind);
            return;
        }
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(slot) => Some(slot),
            None => {
                // Full: reset a connection the embedder closed and the
                // guest has not finished.
                let closing = self
                    .conns
                    .iter()
                    .position(|c| c.as_ref().is_some_and(|c| c.state == State::Closing));
                if let Some(slot) = closing {
                    self.end(slot, true, events);
                }
                closing
            }
        };
        let Some(slot) = slot else {
            self.queue_rst(guest_port, host_port, h.kind);
            return;
        };
        self.conns[slot] = Some(Conn::new(guest_port, host_port, h));
        events.push(VsockEvent::Incoming {
            conn: self.id(slot),
            guest_port,
            host_port,
        });
    }

    /// The live connection (not over) for a port pair.
    fn find(&self, guest_port: u32, host_port: u32) -> Option<usize> {
        self.conns.iter().position(|c| {
            c.as_ref().is_some_and(|c| {
                c.state != State::Dead && c.guest_port == guest_port && c.host_port == host_port
            })
        })
    }

    /// Ends a connection (with an RST to the guest if `rst`): the
    /// embedder's is kept as Closed (and told), a closing one is freed.
    fn end(&mut self, slot: usize, rst: bool, events: &mut Vec<VsockEvent>) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        let (guest_port, host_port) = (c.guest_port, c.host_port);
        let owned = c.owned();
        if owned {
            c.state = State::Dead;
            c.tx.clear();
            c.send_response = false;
            c.send_credit_update = false;
            c.send_credit_request = false;
            c.send_shutdown = false;
            events.push(VsockEvent::Closed {
                conn: self.id(slot),
            });
        } else {
            self.free(slot);
        }
        if rst {
            self.queue_rst(guest_port, host_port, TYPE_STREAM);
        }
    }

    fn queue_rst(&mut self, guest_port: u32, host_port: u32, kind: u16) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            self.stats.resets_dropped += 1;
            return;
        }
        self.stats.resets += 1;
        self.rsts.push_back(Rst {
            guest_port,
            host_port,
            kind,
        });
    }

    /// Writes waiting packets (RST replies first, then the connections'
    /// in turn: RESPONSE, data within the guest's credit, credit
    /// requests and updates, SHUTDOWN after the data) into the guest's rx
    /// buffers, as many as it has made available. Does nothing before
    /// DRIVER_OK or while the device needs a reset; a queue protocol error
    /// (or an rx buffer outside guest RAM) breaks the device.
    pub fn flush(&mut self, mem: &mut dyn GuestMemoryAccess) -> Result<(), VirtioError> {
        if let Some(e) = self.transport.unreported.take() {
            return Err(e);
        }
        if !self.transport.queue_live(QUEUE_RX) || !self.has_output() {
            return Ok(());
        }
        let mut chain = core::mem::take(&mut self.chain);
        let result = self.fill_rx(mem, &mut chain);
        self.chain = chain;
        if let Err(e) = result {
            self.transport.fail(e);
        }
        result
    }

    fn fill_rx(&mut self, mem: &mut dyn GuestMemoryAccess, chain: &mut Vec<Buffer>) -> Result<(), VirtioError> {
        let indirect_ok = self.transport.negotiated() & feature::INDIRECT_DESC != 0;
        let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(()) };
        let available = q.available(mem)?;
        for _ in 0..available {
            if !self.has_output() {
                break;
            }
            let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(()) };
            let head = q.pop_head(mem)?;
            q.walk_chain(mem, head, indirect_ok, chain)?;
            let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
            let used = if chain.iter().any(|b| !b.writable) || total < HDR_LEN as u64 {
                self.stats.bad_rx_buffers += 1;
                0
            } else {
                let room = (total - HDR_LEN as u64).min(u64::from(MAX_PKT_PAYLOAD)) as usize;
                match self.next_packet(room) {
                    Some((h, payload)) => {
                        scatter(mem, chain, 0, &h.to_bytes())?;
                        scatter(mem, chain, HDR_LEN as u64, &payload)?;
                        self.stats.rx_packets += 1;
                        (HDR_LEN + payload.len()) as u32
                    }
                    // has_output said there was one; given back empty
                    // rather than lost.
                    None => 0,
                }
            };
            let Some(q) = self.transport.queue_mut(QUEUE_RX) else { return Ok(()) };
            if q.push_used(mem, head, used)? {
                self.transport.interrupt_status |= interrupt::USED_BUFFER;
            }
        }
        Ok(())
    }

    /// The next packet to send, with at most `room` payload bytes.
    fn next_packet(&mut self, room: usize) -> Option<(VsockHdr, Vec<u8>)> {
        let base = VsockHdr {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            kind: TYPE_STREAM,
            buf_alloc: RX_BUF_ALLOC,
            ..VsockHdr::default()
        };
        if let Some(r) = self.rsts.pop_front() {
            return Some((
                VsockHdr {
                    src_port: r.host_port,
                    dst_port: r.guest_port,
                    kind: r.kind,
                    op: op::RST,
                    buf_alloc: 0,
                    ..base
                },
                Vec::new(),
            ));
        }
        let slot = (0..MAX_CONNS)
            .map(|i| (self.next_conn + i) % MAX_CONNS)
            .find(|&s| self.conns[s].as_ref().is_some_and(Conn::wants_send))?;
        self.next_conn = (slot + 1) % MAX_CONNS;
        let c = self.conns[slot].as_mut()?;
        let mut h = VsockHdr {
            src_port: c.host_port,
            dst_port: c.guest_port,
            fwd_cnt: c.fwd_cnt,
            ..base
        };
        let mut payload = Vec::new();
        if c.send_response {
            c.send_response = false;
            h.op = op::RESPONSE;
        } else if c.data_ready() && room > 0 {
            let n = c.tx.len().min(c.peer_credit() as usize).min(room);
            payload.extend(c.tx.drain(..n));
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            h.op = op::RW;
            h.len = n as u32;
        } else if c.send_credit_request {
            c.send_credit_request = false;
            h.op = op::CREDIT_REQUEST;
        } else if c.send_credit_update {
            h.op = op::CREDIT_UPDATE;
        } else if c.send_shutdown && c.tx.is_empty() {
            c.send_shutdown = false;
            h.op = op::SHUTDOWN;
            h.flags = shutdown::RCV | shutdown::SEND;
        } else {
            // Only data waits and the buffer has no room past the header:
            // a credit update is harmless and uses the buffer.
            h.op = op::CREDIT_UPDATE;
        }
        // Every header carries the credit.
        c.send_credit_update = false;
        c.last_fwd_sent = c.fwd_cnt;
        Some((h, payload))
    }
}

/// One virtio-mmio v2 window holding a virtio-vsock device. Dereferences
/// to [`VirtioVsock`] for the connections and the interrupt line.
#[derive(Debug, Clone)]
pub struct VirtioVsockMmio {
    vsock: VirtioVsock,
}

impl VirtioVsockMmio {
    pub const WINDOW_LEN: u64 = WINDOW_LEN;

    /// A device for the guest with CID `guest_cid` (3 or more), accepting
    /// connections to the host's `listen_ports`.
    pub fn new(guest_cid: u64, listen_ports: &[u32]) -> Self {
        VirtioVsockMmio {
            vsock: VirtioVsock::with_transport(guest_cid, listen_ports, 0),
        }
    }

    /// Guest MMIO read at `offset` in the window, `size` 1/2/4/8 bytes.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        super::mmio::read(&self.vsock.transport, offset, size, &self.vsock.config)
    }

    /// Guest MMIO write. QueueNotify returns [`Effect::Notify`] with the
    /// queue (call [`VirtioVsock::process`]); a Status write of 0 (or
    /// disabling a queue) returns [`Effect::Reset`] and ends every
    /// connection (their Closed events come with the next `process`).
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> Effect {
        self.vsock
            .register_write(|s| super::mmio::write(s, offset, size, value))
    }
}

impl core::ops::Deref for VirtioVsockMmio {
    type Target = VirtioVsock;
    fn deref(&self) -> &VirtioVsock {
        &self.vsock
    }
}

impl core::ops::DerefMut for VirtioVsockMmio {
    fn deref_mut(&mut self) -> &mut VirtioVsock {
        &mut self.vsock
    }
}
