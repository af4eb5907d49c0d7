//! Disks on NBD servers: `nbd:HOST:PORT/EXPORT` targets, and `file:`
//! images the toolstack serves for `ferrite xl create`. The hypervisor is
//! the client, over its own TCP/IP stack (`net`): one TCP connection per
//! disk, the handshake and request framing from `ferrite-nbd`, requests
//! pipelined. Data moves between the socket buffers and the guest's memory
//! through [`NbdBuffer`], one copy each way, as TCP needs.
//!
//! The connection is driven from the network poll on CPU 0. A request that
//! cannot complete (the server went away or refused, or stopped answering)
//! ends in an error for the guest and a log line, never a hang. When the
//! last domain using a disk is gone, the client says goodbye (NBD_CMD_DISC)
//! and closes; a toolstack's server then exits.
//!
//! `file:` disks an `xl create` in dom0 serves come the other way, since
//! dom0 may have no IP network: its `ferrite nbd-serve --vsock` connects
//! to the hypervisor on dom0's vsock ([`crate::vsock::NBD_PORT`]), names
//! the disk with the token the create carried (`ferrite_nbd`'s attach
//! hello), and the hypervisor is the NBD client on that stream from then
//! on. The protocol code is the same for both ([`Transport`]); vsock
//! connections are driven from the vsock poll (`mgmt::poll_vsock`).

use crate::arch::time;
use crate::net::{self, Service};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use ferrite_devmodel::dma::DmaSegment;
use ferrite_devmodel::virtio::vsock::{ConnId, ConnState, VirtioVsock};
use ferrite_nbd::{decode_attach_hello, decode_simple_reply, encode_request, ClientHandshake, Command, Export, ATTACH_HELLO_BYTES, ATTACH_TOKEN_BYTES};
use log::{info, warn};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, Ipv4Address};
use spin::Mutex;

/// Per-connection socket buffers: room for a few large requests in flight.
const SOCKET_BUFFER: usize = 256 << 10;
/// Requests on the wire at once, per disk.
const MAX_IN_FLIGHT: usize = 32;
/// A server that answers nothing for this long while requests wait is
/// given up on.
pub const REPLY_TIMEOUT_US: u64 = 30_000_000;
/// Connecting and the handshake together.
const CONNECT_TIMEOUT_US: u64 = 30_000_000;

/// The guest's side of one request: where its data comes from and goes.
pub trait NbdBuffer: Send + Sync {
    /// A write's payload: `buf.len()` bytes at `offset` in the request's
    /// data; false when the guest's memory is not there any more.
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool;
    /// A read's data at `offset`.
    fn write(&self, offset: usize, data: &[u8]) -> bool;
    /// The request is over: `ok`, or an error for the guest. Called once,
    /// from the network poll, with no NBD lock held.
    fn done(&self, ok: bool);
}

/// Runs `f(gpa, range in the piece)` over the pieces of `segments` (a
/// request's data, in order, in some guest's memory) that hold bytes
/// `[offset, offset + len)`; false when `f` fails or the data is shorter.
/// For [`NbdBuffer`]s over guest memory.
pub fn for_pieces(segments: &[DmaSegment], offset: usize, len: usize, mut f: impl FnMut(u64, core::ops::Range<usize>) -> bool) -> bool {
    let (mut skip, mut done) = (offset, 0usize);
    for s in segments {
        if done == len {
            break;
        }
        let seg_len = s.len as usize;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len - done);
        if !f(s.gpa + skip as u64, done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == len
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NbdOp {
    Read,
    Write,
    Flush,
}

struct Pending {
    op: NbdOp,
    offset: u64,
    len: u32,
    buffer: Arc<dyn NbdBuffer>,
}

enum Status {
    Connecting,
    /// The export, and the largest request the server takes.
    Ready(Export, u32),
    Failed(String),
}

/// Where a disk's server is.
enum Endpoint {
    /// The hypervisor connects to it over TCP.
    Tcp(Ipv4Address, u16),
    /// dom0's server connects over vsock, naming it by the token it is
    /// registered under (`connect_vsock`).
    Vsock,
}

/// A disk on an NBD server, shared by the domains that use it and the
/// connection that serves it.
pub struct NbdDisk {
    name: String,
    endpoint: Endpoint,
    export: String,
    inner: Mutex<Inner>,
    /// The export as the handshake gave it, kept after a failure too: a
    /// disk's size and flags do not change when its server goes away.
    negotiated: spin::Once<Export>,
}

struct Inner {
    status: Status,
    /// Submitted, not yet on the wire.
    queue: VecDeque<Pending>,
}

/// Requests not yet told, over every NBD disk on TCP: while non-zero,
/// idle CPUs poll the network without pause (`Service::transferring`).
/// dom0's vsock disks are not counted (the vsock poll moves them).
static OUTSTANDING: AtomicUsize = AtomicUsize::new(0);
/// Disks waiting for their connection to be set up by the poll.
static NEW_DISKS: Mutex<Vec<Weak<NbdDisk>>> = Mutex::new(Vec::new());
/// The client service is on the network stack (`init`).
static REGISTERED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Puts the NBD client on the network stack. Call once, after `net::init`
/// (not from inside the network poll: `net::register` takes its lock).
pub fn init() {
    if net::register(Box::new(NbdClients { conns: Vec::new(), next_port: 0 })) {
        REGISTERED.store(true, Ordering::SeqCst);
    }
}

impl NbdDisk {
    /// `HOST:PORT/EXPORT`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The export once the handshake is done; `Ok(None)` while it goes
    /// on; the reason once it failed.
    pub fn export(&self) -> Result<Option<Export>, String> {
        match &self.inner.lock().status {
            Status::Connecting => Ok(None),
            Status::Ready(e, _) => Ok(Some(*e)),
            Status::Failed(why) => Err(why.clone()),
        }
    }

    /// The export once the handshake has given it, also after the server
    /// went away (its requests fail then).
    pub fn negotiated(&self) -> Option<Export> {
        self.negotiated.get().copied()
    }

    /// Queues a request; its end comes through `buffer.done`. One longer
    /// than the server takes goes as several.
    pub fn submit(&self, op: NbdOp, offset: u64, len: u32, buffer: Arc<dyn NbdBuffer>) {
        let mut inner = self.inner.lock();
        let max = match inner.status {
            Status::Ready(_, max) => max.max(4096),
            Status::Connecting => ferrite_nbd::MAX_REQUEST_BYTES,
            Status::Failed(_) => {
                drop(inner);
                buffer.done(false);
                return;
            }
        };
        let tcp = matches!(self.endpoint, Endpoint::Tcp(..));
        if len <= max || op == NbdOp::Flush {
            if tcp {
                OUTSTANDING.fetch_add(1, Ordering::SeqCst);
            }
            inner.queue.push_back(Pending { op, offset, len, buffer });
            drop(inner);
            if tcp {
                net::transfer_queued();
            }
            return;
        }
        let pieces = len.div_ceil(max);
        let whole = Arc::new(Split { buffer, left: AtomicUsize::new(pieces as usize), failed: core::sync::atomic::AtomicBool::new(false) });
        for i in 0..pieces {
            let start = i * max;
            let piece = Arc::new(Piece { whole: whole.clone(), base: start as usize });
            if tcp {
                OUTSTANDING.fetch_add(1, Ordering::SeqCst);
            }
            inner.queue.push_back(Pending { op, offset: offset + u64::from(start), len: max.min(len - start), buffer: piece });
        }
        drop(inner);
        if tcp {
            net::transfer_queued();
        }
    }

    /// Marks the disk failed and takes every queued request off it.
    fn fail(&self, why: String) -> Vec<Pending> {
        let mut inner = self.inner.lock();
        if !matches!(inner.status, Status::Failed(_)) {
            warn!("nbd {}: {}; its requests fail from now on", self.name, why);
            inner.status = Status::Failed(why);
        }
        inner.queue.drain(..).collect()
    }
}

/// A request sent as several: done when every piece is.
struct Split {
    buffer: Arc<dyn NbdBuffer>,
    left: AtomicUsize,
    failed: core::sync::atomic::AtomicBool,
}

/// One piece of a split request: its data starts at `base` in the whole's.
struct Piece {
    whole: Arc<Split>,
    base: usize,
}

impl NbdBuffer for Piece {
    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        self.whole.buffer.read(self.base + offset, buf)
    }

    fn write(&self, offset: usize, data: &[u8]) -> bool {
        self.whole.buffer.write(self.base + offset, data)
    }

    fn done(&self, ok: bool) {
        if !ok {
            self.whole.failed.store(true, Ordering::SeqCst);
        }
        if self.whole.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.whole.buffer.done(!self.whole.failed.load(Ordering::SeqCst));
        }
    }
}

/// Parses `HOST:PORT/EXPORT` (HOST an IPv4 address; `/EXPORT` may be left
/// out for the default export "").
pub fn parse_target(target: &str) -> Result<([u8; 4], u16, String), String> {
    let (endpoint, export) = target.split_once('/').unwrap_or((target, ""));
    let (host, port) = endpoint.split_once(':').ok_or_else(|| format!("'{}' is not HOST:PORT/EXPORT", target))?;
    let addr: Ipv4Address = host.parse().map_err(|_| format!("'{}' is not an IPv4 address (names are not resolved)", host))?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(|| format!("'{}' is not a TCP port", port))?;
    Ok((addr.octets(), port, String::from(export)))
}

/// Starts connecting to `addr:port` for `export`; the handshake goes on
/// in the network poll (watch [`NbdDisk::export`]).
pub fn connect(addr: [u8; 4], port: u16, export: &str) -> Result<Arc<NbdDisk>, String> {
    if !REGISTERED.load(Ordering::SeqCst) {
        return Err(String::from("the hypervisor has no network (no virtio-net NIC, or mgmt=off), so it cannot reach an NBD server"));
    }
    let addr = Ipv4Address::from(addr);
    let disk = Arc::new(NbdDisk {
        name: format!("{}:{}/{}", addr, port, export),
        endpoint: Endpoint::Tcp(addr, port),
        export: String::from(export),
        inner: Mutex::new(Inner { status: Status::Connecting, queue: VecDeque::new() }),
        negotiated: spin::Once::new(),
    });
    NEW_DISKS.lock().push(Arc::downgrade(&disk));
    Ok(disk)
}

/// Waits, polling the network itself, until the disks are connected or
/// one failed. For boot, before the scheduler runs (CPU 0 only).
pub fn wait_ready(disks: &[Arc<NbdDisk>], timeout_us: u64) -> Result<(), String> {
    let deadline = time::uptime_us() + timeout_us;
    loop {
        let mut all = true;
        for d in disks {
            match d.export() {
                Ok(Some(_)) => {}
                Ok(None) => all = false,
                Err(why) => return Err(format!("NBD disk {}: {}", d.name, why)),
            }
        }
        if all {
            return Ok(());
        }
        if time::uptime_us() > deadline {
            return Err(String::from("an NBD server did not answer in time"));
        }
        net::poll();
        core::hint::spin_loop();
    }
}

/// The byte stream under one NBD connection: a TCP socket on the
/// hypervisor's stack, or a vsock connection from dom0 (like `mgmt`'s
/// `Pipe`).
trait Transport {
    /// Offers received bytes to `take`, which returns how many it used;
    /// returns that.
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize;
    /// Offers room for bytes to `fill`, which returns how many it wrote
    /// there; returns that (all of them are sent).
    fn send(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> usize;
    /// The server is gone or will send no more (a connection still being
    /// set up is not).
    fn closed(&self) -> bool;
    /// Closes in order: what was sent still goes out.
    fn close(&mut self);
    /// Ends the connection at once.
    fn abort(&mut self);
}

struct TcpTransport<'a>(&'a mut tcp::Socket<'static>);

impl Transport for TcpTransport<'_> {
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        if !self.0.can_recv() {
            return 0;
        }
        self.0
            .recv(|src| {
                let n = take(src).min(src.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    fn send(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> usize {
        if !self.0.can_send() {
            return 0;
        }
        self.0
            .send(|dst| {
                let n = fill(dst).min(dst.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    fn closed(&self) -> bool {
        !self.0.is_open() || (!self.0.may_recv() && self.0.state() != tcp::State::SynSent)
    }

    fn close(&mut self) {
        self.0.close();
    }

    fn abort(&mut self) {
        self.0.abort();
    }
}

/// A connection from dom0's server on its vsock device.
struct VsockTransport<'a> {
    model: &'a mut VirtioVsock,
    id: ConnId,
    /// Where a write's payload is gathered before it is queued.
    scratch: &'a mut Vec<u8>,
}

impl Transport for VsockTransport<'_> {
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        self.model.recv_with(self.id, |data| take(data))
    }

    fn send(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> usize {
        let room = self.model.send_capacity(self.id);
        if room == 0 {
            return 0;
        }
        self.scratch.resize(room, 0);
        let n = fill(&mut self.scratch[..room]).min(room);
        self.model.send(self.id, &self.scratch[..n])
    }

    fn closed(&self) -> bool {
        self.model.state(self.id) != Some(ConnState::Established) || !self.model.may_recv(self.id)
    }

    fn close(&mut self) {
        self.model.close(self.id);
    }

    fn abort(&mut self) {
        self.model.abort(self.id);
    }
}

/// Requests that ended, to be told to their guests once no NBD or vsock
/// lock is held; `tcp`: they are TCP disks' (counted in [`OUTSTANDING`]).
pub struct Completions {
    done: Vec<(Arc<dyn NbdBuffer>, bool)>,
    tcp: bool,
}

impl Completions {
    /// Tells each request's guest.
    pub fn run(self) {
        for (buffer, ok) in self.done {
            if self.tcp {
                OUTSTANDING.fetch_sub(1, Ordering::SeqCst);
            }
            buffer.done(ok);
        }
    }
}

/// The client connections, as a network service.
struct NbdClients {
    conns: Vec<(SocketHandle, Conn)>,
    next_port: u16,
}

enum Phase {
    Handshake(Box<ClientHandshake>),
    Transmit,
    /// Goodbye sent (or not possible): closing the connection.
    Closing,
}

struct Conn {
    disk: Weak<NbdDisk>,
    phase: Phase,
    started_us: u64,
    /// Received bytes not yet used (handshake replies, reply headers).
    rx: Vec<u8>,
    /// Bytes to send before anything else (handshake, request headers).
    out: Vec<u8>,
    /// A write's payload going out: (cookie, bytes sent).
    sending: Option<(u64, usize)>,
    /// A read's data coming in: (cookie, bytes received, ok so far).
    receiving: Option<(u64, usize, bool)>,
    in_flight: Vec<(u64, Pending)>,
    next_cookie: u64,
    last_reply_us: u64,
}

impl Service for NbdClients {
    fn attach(&mut self, _sockets: &mut SocketSet<'static>) {}

    fn poll(&mut self, sockets: &mut SocketSet<'static>, iface: &mut Interface, now_us: u64) {
        let new: Vec<Weak<NbdDisk>> = core::mem::take(&mut *NEW_DISKS.lock());
        for disk in new {
            if let Some(d) = disk.upgrade() {
                self.open(&d, disk.clone(), sockets, iface, now_us);
            }
        }
        let mut finished = Vec::new();
        for (handle, c) in self.conns.iter_mut() {
            c.poll(&mut TcpTransport(sockets.get_mut::<tcp::Socket>(*handle)), now_us, &mut finished);
        }
        self.conns.retain(|(handle, c)| {
            let gone = matches!(c.phase, Phase::Closing) && !sockets.get::<tcp::Socket>(*handle).is_open();
            if gone {
                sockets.remove(*handle);
            }
            !gone
        });
        Completions { done: finished, tcp: true }.run();
    }

    fn busy(&self) -> bool {
        !self.conns.is_empty()
    }

    fn transferring(&self) -> bool {
        OUTSTANDING.load(Ordering::SeqCst) > 0 || self.conns.iter().any(|(_, c)| matches!(c.phase, Phase::Handshake(_)))
    }
}

impl NbdClients {
    fn open(&mut self, disk: &NbdDisk, weak: Weak<NbdDisk>, sockets: &mut SocketSet<'static>, iface: &mut Interface, now_us: u64) {
        let Endpoint::Tcp(addr, port) = disk.endpoint else { return };
        let rx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]);
        let tx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        self.next_port = self.next_port.wrapping_add(1);
        let local_port = 49152 + (self.next_port % 16384);
        if let Err(e) = socket.connect(iface.context(), (IpAddress::Ipv4(addr), port), local_port) {
            let failed = disk.fail(format!("cannot connect: {}", e));
            Completions { done: failed.into_iter().map(|p| (p.buffer, false)).collect(), tcp: true }.run();
            return;
        }
        info!("nbd {}: connecting", disk.name);
        let handle = sockets.add(socket);
        self.conns.push((handle, Conn::new(disk, weak, now_us)));
    }
}

impl Conn {
    /// A connection to `disk`'s server, its handshake to come.
    fn new(disk: &NbdDisk, weak: Weak<NbdDisk>, now_us: u64) -> Conn {
        Conn {
            disk: weak,
            phase: Phase::Handshake(Box::new(ClientHandshake::new(&disk.export))),
            started_us: now_us,
            rx: Vec::new(),
            out: Vec::new(),
            sending: None,
            receiving: None,
            in_flight: Vec::new(),
            next_cookie: 1,
            last_reply_us: now_us,
        }
    }

    fn poll(&mut self, sock: &mut dyn Transport, now_us: u64, finished: &mut Vec<(Arc<dyn NbdBuffer>, bool)>) {
        let Some(disk) = self.disk.upgrade() else {
            // Nobody uses the disk any more: goodbye, then close.
            if matches!(self.phase, Phase::Transmit) && self.sending.is_none() {
                self.out.extend_from_slice(&encode_request(0, Command::Disc, 0, 0, 0));
                flush_out(sock, &mut self.out);
            }
            self.fail_all(None, finished);
            if !matches!(self.phase, Phase::Closing) {
                sock.close();
                self.phase = Phase::Closing;
            }
            return;
        };
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        if sock.closed() {
            let why = if matches!(self.phase, Phase::Handshake(_)) { "the server refused or closed the connection" } else { "the server closed the connection" };
            return self.fail(sock, &disk, String::from(why), finished);
        }
        match &mut self.phase {
            Phase::Handshake(hs) => {
                if now_us > self.started_us + CONNECT_TIMEOUT_US {
                    return self.fail(sock, &disk, String::from("no answer to the handshake in time"), finished);
                }
                let rx = &mut self.rx;
                sock.recv(&mut |data| {
                    rx.extend_from_slice(data);
                    data.len()
                });
                match hs.feed(&self.rx) {
                    Ok(n) => {
                        self.rx.drain(..n);
                    }
                    Err(e) => return self.fail(sock, &disk, format!("handshake: {}", e), finished),
                }
                hs.poll_output(&mut self.out);
                flush_out(sock, &mut self.out);
                if let Some(export) = hs.export() {
                    let sizes = hs.block_size().unwrap_or(ferrite_nbd::BlockSize::DEFAULT);
                    if sizes.min > 512 || export.size % 512 != 0 {
                        let why = format!("the export needs {}-byte blocks or is not whole 512-byte sectors ({} bytes); Ferrite's disks have 512-byte sectors", sizes.min, export.size);
                        return self.fail(sock, &disk, why, finished);
                    }
                    info!(
                        "nbd {}: connected in {} ms, {} MiB{}",
                        disk.name,
                        (now_us - self.started_us) / 1000,
                        export.size >> 20,
                        if export.read_only() { ", read-only" } else { "" }
                    );
                    disk.negotiated.call_once(|| export);
                    disk.inner.lock().status = Status::Ready(export, sizes.max_request());
                    self.phase = Phase::Transmit;
                    self.last_reply_us = now_us;
                }
            }
            Phase::Transmit => {
                if let Err(why) = self.transmit(sock, &disk, now_us, finished) {
                    self.fail(sock, &disk, why, finished);
                }
            }
            Phase::Closing => {}
        }
    }

    /// Sends what waits and takes in replies.
    fn transmit(&mut self, sock: &mut dyn Transport, disk: &NbdDisk, now_us: u64, finished: &mut Vec<(Arc<dyn NbdBuffer>, bool)>) -> Result<(), String> {
        // Out: headers, then a write's payload, then the next request.
        loop {
            flush_out(sock, &mut self.out);
            if !self.out.is_empty() {
                break;
            }
            if let Some((cookie, sent)) = self.sending {
                let Some((_, p)) = self.in_flight.iter().find(|(c, _)| *c == cookie) else { return Err(String::from("lost a write in flight")) };
                let (len, buffer) = (p.len as usize, p.buffer.clone());
                let mut ok = true;
                let n = sock.send(&mut |dst| {
                    let n = dst.len().min(len - sent);
                    // A guest whose memory is gone still sends its
                    // bytes (zeros): the stream must stay in step.
                    if !buffer.read(sent, &mut dst[..n]) {
                        dst[..n].fill(0);
                        ok = false;
                    }
                    n
                });
                if !ok {
                    warn!("nbd {}: a write's data is no longer in guest memory", disk.name);
                }
                if sent + n == len {
                    self.sending = None;
                    continue;
                }
                self.sending = Some((cookie, sent + n));
                break;
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                break;
            }
            let Some(p) = disk.inner.lock().queue.pop_front() else { break };
            let cookie = self.next_cookie;
            self.next_cookie += 1;
            let command = match p.op {
                NbdOp::Read => Command::Read,
                NbdOp::Write => Command::Write,
                NbdOp::Flush => Command::Flush,
            };
            self.out.extend_from_slice(&encode_request(cookie, command, 0, p.offset, p.len));
            if p.op == NbdOp::Write && p.len > 0 {
                self.sending = Some((cookie, 0));
            }
            if self.in_flight.is_empty() {
                self.last_reply_us = now_us;
            }
            self.in_flight.push((cookie, p));
        }

        // In: reply headers, and a read's data after its header.
        loop {
            if let Some((cookie, got, ok)) = self.receiving {
                let Some(i) = self.in_flight.iter().position(|(c, _)| *c == cookie) else { return Err(String::from("lost a read in flight")) };
                let (len, buffer) = (self.in_flight[i].1.len as usize, self.in_flight[i].1.buffer.clone());
                let mut still_ok = ok;
                let n = sock.recv(&mut |src| {
                    let n = src.len().min(len - got);
                    still_ok &= buffer.write(got, &src[..n]);
                    n
                });
                if got + n < len {
                    self.receiving = Some((cookie, got + n, still_ok));
                    if n == 0 {
                        break;
                    }
                    continue;
                }
                self.receiving = None;
                let (_, p) = self.in_flight.remove(i);
                finished.push((p.buffer, still_ok));
                self.last_reply_us = now_us;
                continue;
            }
            if self.rx.len() < 16 {
                let want = 16 - self.rx.len();
                let rx = &mut self.rx;
                let n = sock.recv(&mut |src| {
                    let n = src.len().min(want);
                    rx.extend_from_slice(&src[..n]);
                    n
                });
                if n == 0 {
                    break;
                }
                continue;
            }
            let reply = match decode_simple_reply(&self.rx) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(format!("bad reply: {}", e)),
            };
            self.rx.clear();
            let Some(i) = self.in_flight.iter().position(|(c, _)| *c == reply.cookie) else {
                return Err(format!("a reply for request {:#x}, which was never sent", reply.cookie));
            };
            let p = &self.in_flight[i].1;
            if reply.error == 0 && p.op == NbdOp::Read && p.len > 0 {
                self.receiving = Some((reply.cookie, 0, true));
                continue;
            }
            if reply.error != 0 {
                warn!("nbd {}: {:?} of {} bytes at {:#x}: the server answered error {}", disk.name, p.op, p.len, p.offset, reply.error);
            }
            let (_, p) = self.in_flight.remove(i);
            finished.push((p.buffer, reply.error == 0));
            self.last_reply_us = now_us;
        }
        if !self.in_flight.is_empty() && now_us > self.last_reply_us + REPLY_TIMEOUT_US {
            return Err(format!("no reply for {} s", REPLY_TIMEOUT_US / 1_000_000));
        }
        Ok(())
    }

    fn fail(&mut self, sock: &mut dyn Transport, disk: &NbdDisk, why: String, finished: &mut Vec<(Arc<dyn NbdBuffer>, bool)>) {
        sock.abort();
        self.phase = Phase::Closing;
        self.fail_all(Some(disk.fail(why)), finished);
    }

    /// Every request in flight (and those `queued`) ends in an error.
    fn fail_all(&mut self, queued: Option<Vec<Pending>>, finished: &mut Vec<(Arc<dyn NbdBuffer>, bool)>) {
        self.sending = None;
        self.receiving = None;
        for (_, p) in self.in_flight.drain(..) {
            finished.push((p.buffer, false));
        }
        for p in queued.into_iter().flatten() {
            finished.push((p.buffer, false));
        }
    }
}

/// Sends as much of `out` as the connection takes.
fn flush_out(sock: &mut dyn Transport, out: &mut Vec<u8>) {
    if out.is_empty() {
        return;
    }
    let src = &out[..];
    let n = sock.send(&mut |dst| {
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
        n
    });
    out.drain(..n);
}

// ------------------------------------------------------------ dom0's vsock

/// Connections from dom0's servers at once, attached or not (each served
/// disk needs one).
const VSOCK_CONNS: usize = 8;
/// dom0 disks waiting for their server at once.
const VSOCK_WAITING: usize = 8;
/// A connection that has not named a disk waiting for it this long after
/// it came is closed.
const ATTACH_TIMEOUT_US: u64 = 30_000_000;

type Token = [u8; ATTACH_TOKEN_BYTES];

/// dom0 disks whose server has not attached yet, by token. An entry goes
/// when a server claims it (tokens are single-use) or its disk is dropped.
static VSOCK_WAITING_DISKS: Mutex<Vec<(Token, Weak<NbdDisk>)>> = Mutex::new(Vec::new());
/// dom0's connections to [`crate::vsock::NBD_PORT`].
static VSOCK_NBD: Mutex<Vec<VsockConn>> = Mutex::new(Vec::new());

struct VsockConn {
    id: ConnId,
    came_us: u64,
    /// The attach hello so far.
    hello: Vec<u8>,
    /// The NBD client, once the hello named a waiting disk.
    conn: Option<Conn>,
    /// Ended (closed or aborted, its id released).
    over: bool,
}

/// A disk that dom0's `ferrite nbd-serve --vsock` will serve, attaching
/// with `token` (from the `xl create` that names it); its export is
/// negotiated once the server has attached (watch [`NbdDisk::export`]).
pub fn connect_vsock(token: [u8; ATTACH_TOKEN_BYTES], export: &str, label: &str) -> Result<Arc<NbdDisk>, String> {
    if !crate::vsock::present() {
        return Err(String::from("dom0 has no vsock device for its NBD servers"));
    }
    if token == [0; ATTACH_TOKEN_BYTES] {
        return Err(String::from("the all-zero token names no disk"));
    }
    let mut waiting = VSOCK_WAITING_DISKS.lock();
    waiting.retain(|(_, d)| d.strong_count() > 0);
    if waiting.iter().any(|(t, _)| *t == token) {
        return Err(String::from("another disk is waiting for its server with the same token"));
    }
    if waiting.len() >= VSOCK_WAITING {
        return Err(format!("{} disks already wait for their dom0 servers", VSOCK_WAITING));
    }
    let disk = Arc::new(NbdDisk {
        name: format!("vsock:dom0/{}", label),
        endpoint: Endpoint::Vsock,
        export: String::from(export),
        inner: Mutex::new(Inner { status: Status::Connecting, queue: VecDeque::new() }),
        negotiated: spin::Once::new(),
    });
    waiting.push((token, Arc::downgrade(&disk)));
    Ok(disk)
}

/// dom0 connects to the NBD port: taken while there is room (its hello
/// comes next), else refused.
pub fn vsock_incoming(model: &mut VirtioVsock, conn: ConnId, now_us: u64) {
    let mut conns = VSOCK_NBD.lock();
    if conns.len() < VSOCK_CONNS && model.accept(conn) {
        conns.push(VsockConn { id: conn, came_us: now_us, hello: Vec::new(), conn: None, over: false });
    } else {
        warn!("nbd: dom0 opened more than {} vsock NBD connections; refused", VSOCK_CONNS);
        model.refuse(conn);
    }
}

/// Whether some dom0 NBD connection is open.
pub fn vsock_busy() -> bool {
    !VSOCK_NBD.lock().is_empty()
}

enum Claim {
    /// The disk waiting for the token (now taken off the waiting list).
    Disk(Arc<NbdDisk>, Weak<NbdDisk>),
    /// The token's disk is gone (its create failed or timed out).
    Gone,
    /// No disk waits for the token (its create may not have come yet).
    Unknown,
}

fn claim(token: &Token) -> Claim {
    let mut waiting = VSOCK_WAITING_DISKS.lock();
    let Some(i) = waiting.iter().position(|(t, _)| t == token) else { return Claim::Unknown };
    let (_, weak) = waiting.swap_remove(i);
    match weak.upgrade() {
        Some(d) => Claim::Disk(d, weak),
        None => Claim::Gone,
    }
}

/// Drives dom0's NBD connections on its vsock device (from the vsock
/// poll, with the device's state held): attach hellos, then the NBD
/// client. Run the returned completions once the device is let go of.
pub fn poll_vsock(model: &mut VirtioVsock, now_us: u64) -> Completions {
    let mut finished = Vec::new();
    let mut scratch = Vec::new();
    let mut conns = VSOCK_NBD.lock();
    for c in conns.iter_mut() {
        let mut t = VsockTransport { model: &mut *model, id: c.id, scratch: &mut scratch };
        if let Some(conn) = c.conn.as_mut() {
            conn.poll(&mut t, now_us, &mut finished);
            c.over = matches!(conn.phase, Phase::Closing);
            continue;
        }
        if t.closed() {
            info!("nbd: a dom0 server left before naming its disk");
            t.abort();
            c.over = true;
            continue;
        }
        let want = ATTACH_HELLO_BYTES - c.hello.len();
        let hello = &mut c.hello;
        t.recv(&mut |src| {
            let n = src.len().min(want);
            hello.extend_from_slice(&src[..n]);
            n
        });
        match decode_attach_hello(&c.hello) {
            Err(e) => {
                warn!("nbd: dom0's vsock NBD connection: {}; closed", e);
                t.abort();
                c.over = true;
            }
            Ok(Some(token)) => match claim(&token) {
                Claim::Disk(disk, weak) => {
                    info!("nbd {}: dom0's server attached", disk.name);
                    c.conn = Some(Conn::new(&disk, weak, now_us));
                }
                Claim::Gone => {
                    info!("nbd: a dom0 server named a disk whose domain was not created; closed");
                    t.abort();
                    c.over = true;
                }
                Claim::Unknown => {}
            },
            Ok(None) => {}
        }
        if c.conn.is_none() && !c.over && now_us > c.came_us + ATTACH_TIMEOUT_US {
            warn!("nbd: a dom0 server named no disk waiting for it within {} s; closed", ATTACH_TIMEOUT_US / 1_000_000);
            t.abort();
            c.over = true;
        }
    }
    conns.retain(|c| !c.over);
    Completions { done: finished, tcp: false }
}

/// dom0's vsock device is gone: its NBD connections with it (their
/// requests fail).
pub fn vsock_gone() -> Completions {
    let mut finished = Vec::new();
    for c in VSOCK_NBD.lock().drain(..) {
        let Some(mut conn) = c.conn else { continue };
        let queued = conn.disk.upgrade().map(|d| d.fail(String::from("dom0's vsock device is gone")));
        conn.fail_all(queued, &mut finished);
    }
    Completions { done: finished, tcp: false }
}
