//! Host tests of virtio-vsock: a fake guest driver doing what Linux's
//! `vmw_vsock_virtio_transport` does (three queues over virtio-mmio, rx
//! buffers of 4 KiB + header posted, connect, RW with credit, shutdown),
//! hostile packets, multi-queue register behaviour, and seeded fuzzing.

use super::mmio::*;
use super::queue::{DESC_F_NEXT, DESC_F_WRITE};
use super::tests::Ram;
use super::vsock::*;
use super::*;
use crate::testutil::Rng;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

const CID: u64 = 3;
const PORT: u32 = 7070;
/// Queue q's rings at RINGS + q × 0x4000: table, avail +0x1000, used +0x2000.
const RINGS: u64 = 0x1_0000;
/// rx buffers: 8 KiB apart.
const RXBUF: u64 = 0x10_0000;
/// tx packets: 16 slots of 0x11000 bytes (header + 64 KiB + slack).
const TXBUF: u64 = 0x20_0000;
const TX_SLOT: u64 = 0x1_1000;
/// Linux's rx buffer: VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE + the header.
const LINUX_RX: u32 = 4096 + HDR_LEN as u32;
/// The guest sockets' buffer (Linux's default 256 KiB).
const GUEST_BUF: u32 = 256 * 1024;
const HOLE: u64 = 0x4000_0000;

struct Ring {
    base: u64,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
    next: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
}

struct Guest {
    dev: VirtioVsockMmio,
    mem: Ram,
    rings: Vec<Ring>,
    /// rx heads posted: head → (gpa, len).
    rx_posted: BTreeMap<u16, (u64, u32)>,
    /// Packets the device wrote, in order (header, payload).
    got: Vec<(VsockHdr, Vec<u8>)>,
    events: Vec<VsockEvent>,
    tx_slot: u64,
    /// Re-post rx buffers as Linux does after taking a packet.
    refill: bool,
    /// tx packets sent since the last `process` (16 slots of payload).
    tx_pending: usize,
}

fn hdr(op: u16, guest_port: u32, host_port: u32) -> VsockHdr {
    VsockHdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF,
        ..VsockHdr::default()
    }
}

impl Guest {
    fn new(ports: &[u32]) -> Self {
        let mut g = Guest::bare(ports);
        g.post_rx(64, LINUX_RX);
        g
    }

    /// Set up, no rx buffers posted, no refills.
    fn bare(ports: &[u32]) -> Self {
        let mut g = Guest {
            dev: VirtioVsockMmio::new(CID, ports),
            mem: Ram::new(),
            rings: Vec::new(),
            rx_posted: BTreeMap::new(),
            got: Vec::new(),
            events: Vec::new(),
            tx_slot: 0,
            refill: false,
            tx_pending: 0,
        };
        g.init(QUEUE_SIZE_MAX);
        g.refill = true;
        g
    }

    fn rd(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4) as u32
    }

    fn wr(&mut self, off: u64, v: u32) -> Effect {
        self.dev.write(off, 4, u64::from(v))
    }

    /// virtio_mmio probe + virtio_vsock_probe: three queues, features.
    fn init(&mut self, num: u16) {
        assert_eq!(self.rd(MAGIC_VALUE), MAGIC);
        assert_eq!(self.rd(VERSION), 2);
        assert_eq!(self.rd(DEVICE_ID), DEVICE_ID_VSOCK);
        assert_eq!(self.wr(STATUS, 0), Effect::Reset);
        self.wr(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(DEVICE_FEATURES);
        self.wr(DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(DEVICE_FEATURES);
        let offered = u64::from(hi) << 32 | u64::from(lo);
        assert_eq!(offered, feature::VERSION_1 | feature::INDIRECT_DESC);
        let wanted = offered;
        self.wr(DRIVER_FEATURES_SEL, 1);
        self.wr(DRIVER_FEATURES, (wanted >> 32) as u32);
        self.wr(DRIVER_FEATURES_SEL, 0);
        self.wr(DRIVER_FEATURES, wanted as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(STATUS, s);
        assert_eq!(self.rd(STATUS), s);
        self.rings.clear();
        for q in 0..3u32 {
            let base = RINGS + u64::from(q) * 0x4000;
            self.wr(QUEUE_SEL, q);
            assert_eq!(self.rd(QUEUE_READY), 0);
            assert_eq!(self.rd(QUEUE_NUM_MAX), u32::from(QUEUE_SIZE_MAX));
            self.wr(QUEUE_NUM, u32::from(num));
            self.wr(QUEUE_DESC_LOW, base as u32);
            self.wr(QUEUE_DESC_HIGH, 0);
            self.wr(QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.wr(QUEUE_DRIVER_HIGH, 0);
            self.wr(QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.wr(QUEUE_DEVICE_HIGH, 0);
            self.mem.bytes[base as usize..(base + 0x4000) as usize].fill(0);
            self.wr(QUEUE_READY, 1);
            assert_eq!(self.rd(QUEUE_READY), 1);
            self.rings.push(Ring {
                base,
                size: num,
                avail_idx: 0,
                used_seen: 0,
                next: 0,
            });
        }
        self.wr(STATUS, s | status::DRIVER_OK);
        self.rx_posted.clear();
        self.tx_slot = 0;
    }

    fn write_desc(&mut self, q: usize, index: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let at = self.rings[q].desc() + 16 * u64::from(index);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&gpa.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.put(at, &d);
    }

    /// A chain of (gpa, len, writable) in queue q; returns its head.
    fn chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.rings[q].next;
        for (i, &(gpa, len, w)) in bufs.iter().enumerate() {
            let r = &mut self.rings[q];
            let idx = r.next;
            r.next = (r.next + 1) % r.size;
            let next = r.next;
            let mut flags = if w { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(q, idx, gpa, len, flags, next);
        }
        head
    }

    fn make_available(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = u64::from(r.avail_idx % r.size);
        let (avail, idx) = (r.avail(), r.avail_idx.wrapping_add(1));
        r.avail_idx = idx;
        self.mem.put(avail + 4 + 2 * slot, &head.to_le_bytes());
        self.mem.put(avail + 2, &idx.to_le_bytes());
    }

    fn kick(&mut self, q: u16) {
        assert_eq!(self.wr(QUEUE_NOTIFY, u32::from(q)), Effect::Notify(q));
    }

    /// Posts n rx buffers of len bytes (one writable descriptor each, as
    /// Linux 6.x does).
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let head = self.rings[0].next;
            let gpa = RXBUF + 0x2000 * u64::from(head);
            let h = self.chain(0, &[(gpa, len, true)]);
            self.rx_posted.insert(h, (gpa, len));
            self.make_available(0, h);
        }
        self.kick(0);
    }

    /// Sends a tx packet: the header and payload in two descriptors (one
    /// when there is no payload); `len` is the header's as given.
    fn send_raw(&mut self, h: VsockHdr, payload: &[u8]) {
        let slot = TXBUF + TX_SLOT * (self.tx_slot % 16);
        self.tx_slot += 1;
        self.tx_pending += 1;
        self.mem.put(slot, &h.to_bytes());
        self.mem.put(slot + 64, payload);
        let mut bufs = vec![(slot, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            bufs.push((slot + 64, payload.len() as u32, false));
        }
        let head = self.chain(1, &bufs);
        self.make_available(1, head);
        self.kick(1);
    }

    fn send(&mut self, mut h: VsockHdr, payload: &[u8]) {
        h.len = payload.len() as u32;
        self.send_raw(h, payload);
    }

    /// The device's turn; returns its events.
    fn process(&mut self) -> Vec<VsockEvent> {
        self.tx_pending = 0;
        self.dev.process(&mut self.mem, &mut self.events).expect("no protocol error");
        self.collect();
        core::mem::take(&mut self.events)
    }

    fn flush(&mut self) {
        self.dev.flush(&mut self.mem).expect("no protocol error");
        self.collect();
    }

    /// Takes rx used elements (checking each against its buffer) into
    /// `got`, re-posting buffers; acks the interrupt.
    fn collect(&mut self) {
        let s = self.rd(INTERRUPT_STATUS);
        self.wr(INTERRUPT_ACK, s);
        assert!(!self.dev.irq_level());
        let mut reposted = 0;
        loop {
            let r = &self.rings[0];
            if self.mem.u16(r.used() + 2) == r.used_seen {
                break;
            }
            let e = r.used() + 4 + 8 * u64::from(r.used_seen % r.size);
            let r = &mut self.rings[0];
            r.used_seen = r.used_seen.wrapping_add(1);
            let (id, len) = (self.mem.u32(e) as u16, self.mem.u32(e + 4));
            let (gpa, cap) = self.rx_posted.remove(&id).expect("a posted rx head");
            assert!(len <= cap, "used len {len} > buffer {cap}");
            if len == 0 {
                continue;
            }
            let hb: [u8; HDR_LEN] = self.mem.get(gpa, HDR_LEN).try_into().unwrap();
            let h = VsockHdr::parse(&hb);
            assert_eq!(len as usize, HDR_LEN + h.len as usize);
            assert!(h.len <= MAX_PKT_PAYLOAD);
            assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
            let payload = self.mem.get(gpa + HDR_LEN as u64, h.len as usize).to_vec();
            self.got.push((h, payload));
            reposted += 1;
        }
        if self.refill && reposted > 0 {
            self.post_rx(reposted, LINUX_RX);
        }
    }

    fn take_got(&mut self) -> Vec<(VsockHdr, Vec<u8>)> {
        core::mem::take(&mut self.got)
    }

    /// connect(): REQUEST, the embedder accepts, RESPONSE arrives.
    fn connect(&mut self, guest_port: u32) -> ConnId {
        self.send(hdr(op::REQUEST, guest_port, PORT), &[]);
        let ev = self.process();
        let [VsockEvent::Incoming { conn, guest_port: gp, host_port }] = ev[..] else {
            panic!("events {ev:?}");
        };
        assert_eq!((gp, host_port), (guest_port, PORT));
        assert_eq!(self.dev.state(conn), Some(ConnState::Pending));
        assert!(self.dev.accept(conn));
        assert!(!self.dev.accept(conn), "accepted once");
        self.flush();
        let got = self.take_got();
        assert_eq!(got.len(), 1);
        let (h, _) = &got[0];
        assert_eq!(h.op, op::RESPONSE);
        assert_eq!((h.src_port, h.dst_port), (PORT, guest_port));
        assert_eq!((h.buf_alloc, h.fwd_cnt, h.len), (RX_BUF_ALLOC, 0, 0));
        assert_eq!(self.dev.state(conn), Some(ConnState::Established));
        conn
    }

    fn expect_rst(&mut self, guest_port: u32, host_port: u32) {
        let got = self.take_got();
        assert_eq!(got.len(), 1, "{got:?}");
        let (h, _) = &got[0];
        assert_eq!(h.op, op::RST);
        assert_eq!((h.src_port, h.dst_port), (host_port, guest_port));
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

// ---------------------------------------------------------------- registers

#[test]
fn identification_features_and_guest_cid() {
    let mut g = Guest::new(&[PORT]);
    let mut d = VirtioVsockMmio::new(0x1_2345_6789, &[]);
    assert_eq!(d.read(CONFIG, 8), 0x1_2345_6789);
    assert_eq!(d.read(CONFIG, 4), 0x2345_6789);
    assert_eq!(d.read(CONFIG + 4, 4), 1);
    assert_eq!(d.read(CONFIG + 8, 4), 0, "past the config");
    d.write(CONFIG, 4, 7);
    assert_eq!(d.guest_cid(), 0x1_2345_6789, "read-only");
    assert_eq!(g.rd(DEVICE_ID), 19);
    assert_eq!(g.dev.negotiated_features(), feature::VERSION_1 | feature::INDIRECT_DESC);
    // Nothing before a connection.
    assert_eq!(g.process(), vec![]);
    assert!(g.take_got().is_empty());
}

#[test]
fn queue_registers_are_per_queue() {
    let mut d = VirtioVsockMmio::new(CID, &[PORT]);
    let rd = |d: &mut VirtioVsockMmio, off| d.read(off, 4) as u32;
    d.write(STATUS, 4, u64::from(status::ACKNOWLEDGE | status::DRIVER));
    for q in 0..3u64 {
        d.write(QUEUE_SEL, 4, q);
        d.write(QUEUE_NUM, 4, 2 << q);
        d.write(QUEUE_DESC_LOW, 4, 0x1000 * (q + 1));
        d.write(QUEUE_DRIVER_LOW, 4, 0x10_0000 * (q + 1));
        d.write(QUEUE_DEVICE_LOW, 4, 0x100_0000 * (q + 1));
    }
    // Queue 1 enabled; the others not.
    d.write(QUEUE_SEL, 4, 1);
    d.write(QUEUE_READY, 4, 1);
    assert_eq!(rd(&mut d, QUEUE_READY), 1);
    for q in [0u64, 2] {
        d.write(QUEUE_SEL, 4, q);
        assert_eq!(rd(&mut d, QUEUE_READY), 0, "queue {q}");
    }
    let queue = |d: &VirtioVsockMmio, q: u16| {
        let s = d.transport_queue(q).unwrap();
        (s.num, s.ready, s.desc_gpa, s.avail_gpa, s.used_gpa)
    };
    assert_eq!(queue(&d, 0), (2, false, 0x1000, 0x10_0000, 0x100_0000));
    assert_eq!(queue(&d, 1), (4, true, 0x2000, 0x20_0000, 0x200_0000));
    assert_eq!(queue(&d, 2), (8, false, 0x3000, 0x30_0000, 0x300_0000));
    // Queue 1 is frozen while ready; queue 0 is not.
    d.write(QUEUE_SEL, 4, 1);
    d.write(QUEUE_NUM, 4, 16);
    d.write(QUEUE_DESC_LOW, 4, 0x9000);
    d.write(QUEUE_SEL, 4, 0);
    d.write(QUEUE_NUM, 4, 32);
    assert_eq!(queue(&d, 1), (4, true, 0x2000, 0x20_0000, 0x200_0000));
    assert_eq!(queue(&d, 0).0, 32);
    // A queue the device does not have: reads 0, writes ignored.
    for sel in [3u64, 4, 0xffff, 0xffff_ffff] {
        d.write(QUEUE_SEL, 4, sel);
        assert_eq!(rd(&mut d, QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut d, QUEUE_READY), 0);
        d.write(QUEUE_NUM, 4, 4);
        d.write(QUEUE_DESC_LOW, 4, 0x5000);
        assert_eq!(d.write(QUEUE_READY, 4, 1), Effect::None);
        assert_eq!(rd(&mut d, QUEUE_READY), 0);
    }
    assert_eq!(queue(&d, 2), (8, false, 0x3000, 0x30_0000, 0x300_0000));
    // Notifications name their queue; others are nothing.
    for q in 0..3u16 {
        assert_eq!(d.write(QUEUE_NOTIFY, 4, u64::from(q)), Effect::Notify(q));
    }
    for v in [3u64, 0x1_0000, 0xffff_ffff] {
        assert_eq!(d.write(QUEUE_NOTIFY, 4, v), Effect::None);
    }
    // Disabling one queue resets (Reset effect); a bad size on another
    // breaks the device.
    d.write(QUEUE_SEL, 4, 1);
    assert_eq!(d.write(QUEUE_READY, 4, 0), Effect::Reset);
    d.write(QUEUE_SEL, 4, 2);
    d.write(QUEUE_NUM, 4, 3);
    d.write(QUEUE_READY, 4, 1);
    assert_ne!(rd(&mut d, STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(matches!(d.broken(), Some(VirtioError::BadQueueSize { size: 3, .. })));
}

#[test]
fn blk_still_has_exactly_one_queue() {
    let mut d = VirtioBlkMmio::new(BlkDiskInfo {
        sectors: 8,
        read_only: false,
        serial: [0; 20],
    });
    d.write(QUEUE_SEL, 4, 0);
    assert_eq!(d.read(QUEUE_NUM_MAX, 4), 256);
    d.write(QUEUE_SEL, 4, 1);
    assert_eq!(d.read(QUEUE_NUM_MAX, 4), 0);
    d.write(QUEUE_NUM, 4, 4);
    d.write(QUEUE_SEL, 4, 0);
    assert_eq!(d.write(QUEUE_NOTIFY, 4, 0), Effect::Notify(0));
    assert_eq!(d.write(QUEUE_NOTIFY, 4, 1), Effect::None);
    let mut p = VirtioBlkPci::new(BlkDiskInfo {
        sectors: 8,
        read_only: false,
        serial: [0; 20],
    });
    use super::pci::common_cfg::*;
    use super::pci::NOTIFY_OFFSET;
    assert_eq!(p.bar_read(NUM_QUEUES, 2), 1);
    assert_eq!(p.bar_read(QUEUE_NOTIFY_OFF, 2), 0);
    p.bar_write(QUEUE_SELECT, 2, 1);
    assert_eq!(p.bar_read(QUEUE_SIZE, 2), 0);
    assert_eq!(p.bar_read(QUEUE_NOTIFY_OFF, 2), 0);
    assert_eq!(p.bar_write(NOTIFY_OFFSET, 2, 0), Effect::Notify(0));
    assert_eq!(p.bar_write(NOTIFY_OFFSET, 2, 1), Effect::None);
    assert_eq!(p.bar_write(NOTIFY_OFFSET + 4, 2, 1), Effect::None, "past the region");
}

// ------------------------------------------------------------ the protocol

#[test]
fn connect_exchange_and_guest_close() {
    let mut g = Guest::new(&[PORT, 22]);
    let c = g.connect(40001);
    assert_eq!(g.dev.connections(), 1);
    // Guest → host.
    g.send(hdr(op::RW, 40001, PORT), b"hello");
    assert_eq!(g.process(), vec![VsockEvent::Readable { conn: c }]);
    assert_eq!(g.dev.recv_queue(c), 5);
    let mut buf = [0u8; 16];
    assert_eq!(g.dev.recv(c, &mut buf), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(g.dev.recv(c, &mut buf), 0);
    assert!(g.take_got().is_empty(), "no credit update for 5 bytes");
    // Host → guest.
    assert!(g.dev.may_send(c));
    assert_eq!(g.dev.send(c, b"world"), 5);
    g.flush();
    let got = g.take_got();
    assert_eq!(got.len(), 1);
    let (h, p) = &got[0];
    assert_eq!((h.op, h.src_port, h.dst_port, h.kind), (op::RW, PORT, 40001, TYPE_STREAM));
    assert_eq!((h.buf_alloc, h.fwd_cnt), (RX_BUF_ALLOC, 5), "the credit rides along");
    assert_eq!(p, b"world");
    // The guest closes: SHUTDOWN(RCV|SEND); the host answers RST.
    let mut s = hdr(op::SHUTDOWN, 40001, PORT);
    s.flags = shutdown::RCV | shutdown::SEND;
    g.send(s, &[]);
    let ev = g.process();
    assert_eq!(ev, vec![VsockEvent::Readable { conn: c }, VsockEvent::Closed { conn: c }]);
    g.expect_rst(40001, PORT);
    assert_eq!(g.dev.state(c), Some(ConnState::Closed));
    assert!(!g.dev.may_recv(c));
    assert_eq!(g.dev.send(c, b"late"), 0);
    g.dev.close(c);
    assert_eq!(g.dev.state(c), None);
    assert_eq!(g.dev.connections(), 0);
    // The same port pair connects again.
    let c2 = g.connect(40001);
    assert_ne!(c, c2);
}

#[test]
fn host_close_sends_data_then_shutdown_and_waits_for_rst() {
    let mut g = Guest::new(&[PORT]);
    let c = g.connect(40002);
    assert_eq!(g.dev.send(c, b"bye"), 3);
    g.dev.close(c);
    assert_eq!(g.dev.state(c), None, "the id is released");
    assert_eq!(g.dev.send(c, b"x"), 0);
    g.flush();
    let got = g.take_got();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].0.op, &got[0].1[..]), (op::RW, &b"bye"[..]));
    assert_eq!((got[1].0.op, got[1].0.flags), (op::SHUTDOWN, shutdown::RCV | shutdown::SEND));
    assert_eq!(g.dev.connections(), 1, "waiting for the guest's RST");
    // Data still in flight from the guest is taken and dropped.
    g.send(hdr(op::RW, 40002, PORT), b"ignored");
    assert_eq!(g.process(), vec![]);
    g.send(hdr(op::RST, 40002, PORT), &[]);
    assert_eq!(g.process(), vec![], "no event: the embedder closed it");
    assert!(g.take_got().is_empty(), "an RST is not answered");
    assert_eq!(g.dev.connections(), 0);
}

#[test]
fn guest_half_close_is_end_of_stream() {
    let mut g = Guest::new(&[PORT]);
    let c = g.connect(40003);
    g.send(hdr(op::RW, 40003, PORT), b"request");
    let mut s = hdr(op::SHUTDOWN, 40003, PORT);
    s.flags = shutdown::SEND;
    g.send(s, &[]);
    assert_eq!(g.process(), vec![VsockEvent::Readable { conn: c }]);
    assert!(g.dev.may_recv(c));
    let mut all = Vec::new();
    g.dev.recv_with(c, |d| {
        all.extend_from_slice(d);
        d.len()
    });
    assert_eq!(all, b"request");
    assert!(!g.dev.may_recv(c), "end of stream");
    // The host still answers.
    assert!(g.dev.may_send(c));
    assert_eq!(g.dev.send(c, b"answer"), 6);
    g.flush();
    assert_eq!(g.take_got()[0].1, b"answer");
    // More data after SHUTDOWN(SEND) is a violation.
    g.send(hdr(op::RW, 40003, PORT), b"more");
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    g.expect_rst(40003, PORT);
}

#[test]
fn unlisted_ports_and_refusals_get_rst() {
    let mut g = Guest::new(&[PORT]);
    g.send(hdr(op::REQUEST, 40004, 9999), &[]);
    assert_eq!(g.process(), vec![]);
    g.expect_rst(40004, 9999);
    // The embedder refuses.
    g.send(hdr(op::REQUEST, 40005, PORT), &[]);
    let ev = g.process();
    let [VsockEvent::Incoming { conn, .. }] = ev[..] else { panic!("{ev:?}") };
    g.dev.refuse(conn);
    g.flush();
    g.expect_rst(40005, PORT);
    assert_eq!(g.dev.connections(), 0);
    assert_eq!(g.dev.state(conn), None);
    // The embedder aborts an open connection.
    let c = g.connect(40006);
    assert_eq!(g.dev.send(c, b"dropped"), 7);
    g.dev.abort(c);
    g.flush();
    g.expect_rst(40006, PORT);
}

#[test]
fn host_to_guest_respects_the_guest_credit_and_buffer_sizes() {
    let mut g = Guest::new(&[PORT]);
    let mut req = hdr(op::REQUEST, 40007, PORT);
    req.buf_alloc = 1000;
    g.send(req, &[]);
    let ev = g.process();
    let [VsockEvent::Incoming { conn: c, .. }] = ev[..] else { panic!("{ev:?}") };
    g.dev.accept(c);
    g.flush();
    g.take_got();
    let data = pattern(3000, 1);
    assert_eq!(g.dev.send_capacity(c), 1000);
    assert_eq!(g.dev.send(c, &data), 1000);
    assert_eq!(g.dev.send(c, &data[1000..]), 0);
    g.flush();
    let got = g.take_got();
    let ops: Vec<u16> = got.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, vec![op::RW, op::CREDIT_REQUEST]);
    assert_eq!(got[0].1, data[..1000]);
    // The guest's reader took 600 bytes: CREDIT_UPDATE.
    let mut u = hdr(op::CREDIT_UPDATE, 40007, PORT);
    u.buf_alloc = 1000;
    u.fwd_cnt = 600;
    g.send(u, &[]);
    g.process();
    assert_eq!(g.dev.send_capacity(c), 600);
    assert_eq!(g.dev.send(c, &data[1000..]), 600);
    g.flush();
    assert_eq!(g.take_got()[0].1, data[1000..1600]);
    // A guest claiming to have read more than it was sent gains nothing.
    u.fwd_cnt = 5000;
    g.send(u, &[]);
    g.process();
    assert_eq!(g.dev.send_capacity(c), 0);
    // Large credit: packets are cut to the rx buffers (4 KiB of payload).
    u.buf_alloc = GUEST_BUF;
    u.fwd_cnt = 1600;
    g.send(u, &[]);
    g.process();
    let big = pattern(TX_BUF_CAP + 100, 2);
    assert_eq!(g.dev.send(c, &big), TX_BUF_CAP, "bounded by the buffer cap");
    g.flush();
    let got = g.take_got();
    assert!(got.iter().all(|(h, p)| h.op == op::RW && p.len() <= 4096));
    let joined: Vec<u8> = got.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(joined, big[..TX_BUF_CAP]);
}

#[test]
fn guest_to_host_credit_exhaustion_and_recovery() {
    let mut g = Guest::new(&[PORT]);
    let c = g.connect(40008);
    // The guest fills the advertised buffer exactly, 16 KiB at a time.
    let data = pattern(RX_BUF_ALLOC as usize, 3);
    for piece in data.chunks(16 * 1024) {
        g.send(hdr(op::RW, 40008, PORT), piece);
    }
    assert_eq!(g.process(), vec![VsockEvent::Readable { conn: c }]);
    assert_eq!(g.dev.recv_queue(c), RX_BUF_ALLOC as usize);
    // The embedder takes a little: the guest still knows of no credit
    // beyond half, so an update goes out once it takes enough.
    let mut buf = vec![0u8; 20_000];
    assert_eq!(g.dev.recv(c, &mut buf), 20_000);
    g.flush();
    let got = g.take_got();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.fwd_cnt), (op::CREDIT_UPDATE, 20_000));
    assert_eq!(buf, data[..20_000]);
    // Now 20 000 bytes fit, and not one more.
    g.send(hdr(op::RW, 40008, PORT), &pattern(20_000, 4));
    g.process();
    assert_eq!(g.dev.recv_queue(c), RX_BUF_ALLOC as usize);
    assert_eq!(g.dev.stats().credit_violations, 0);
    g.send(hdr(op::RW, 40008, PORT), b"!");
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    g.expect_rst(40008, PORT);
    assert_eq!(g.dev.stats().credit_violations, 1);
    // What was accepted is still readable after the reset.
    let mut rest = Vec::new();
    g.dev.recv_with(c, |d| {
        rest.extend_from_slice(d);
        d.len()
    });
    assert_eq!(rest.len(), RX_BUF_ALLOC as usize);
    assert_eq!(rest[..data.len() - 20_000], data[20_000..]);
    // A CREDIT_REQUEST is answered.
    let c2 = g.connect(40009);
    g.send(hdr(op::CREDIT_REQUEST, 40009, PORT), &[]);
    g.process();
    let got = g.take_got();
    assert_eq!((got[0].0.op, got[0].0.buf_alloc), (op::CREDIT_UPDATE, RX_BUF_ALLOC));
    assert_eq!(g.dev.state(c2), Some(ConnState::Established));
}

#[test]
fn device_reset_ends_every_connection() {
    let mut g = Guest::new(&[PORT]);
    let a = g.connect(40010);
    let b = g.connect(40011);
    g.dev.close(b);
    g.send(hdr(op::RW, 40010, PORT), b"x");
    g.process();
    assert_eq!(g.take_got()[0].0.op, op::SHUTDOWN);
    assert_eq!(g.wr(STATUS, 0), Effect::Reset);
    g.init(QUEUE_SIZE_MAX);
    g.post_rx(8, LINUX_RX);
    let ev = g.process();
    assert_eq!(ev, vec![VsockEvent::Closed { conn: a }]);
    assert_eq!(g.dev.connections(), 1, "a, until released");
    assert_eq!(g.dev.recv_queue(a), 1);
    g.dev.close(a);
    assert_eq!(g.dev.connections(), 0);
    assert!(g.take_got().is_empty());
    g.connect(40010);
}

// ---------------------------------------------------------------- hostile

#[test]
fn wrong_cids_and_short_or_writable_chains_are_dropped() {
    let mut g = Guest::new(&[PORT]);
    let c = g.connect(40012);
    for (src, dst) in [(4, HOST_CID), (CID, 3), (CID | 1 << 32, HOST_CID), (CID, 1), (HOST_CID, HOST_CID)] {
        let mut h = hdr(op::REQUEST, 40013, PORT);
        h.src_cid = src;
        h.dst_cid = dst;
        g.send(h, &[]);
        let mut h = hdr(op::RW, 40012, PORT);
        h.src_cid = src;
        h.dst_cid = dst;
        g.send(h, b"spoofed");
        assert_eq!(g.process(), vec![]);
    }
    assert!(g.take_got().is_empty(), "dropped, not answered");
    assert_eq!(g.dev.recv_queue(c), 0);
    assert_eq!(g.dev.stats().dropped, 10);
    // A chain shorter than the header; a chain with a writable buffer.
    let slot = TXBUF;
    g.mem.put(slot, &hdr(op::REQUEST, 40014, PORT).to_bytes());
    let head = g.chain(1, &[(slot, 20, false)]);
    g.make_available(1, head);
    let head = g.chain(1, &[(slot, 44, false), (slot + 64, 8, true)]);
    g.make_available(1, head);
    let head = g.chain(1, &[(slot, 30, false), (slot + 30, 14, false)]);
    g.mem.put(slot + 30, &hdr(op::REQUEST, 40014, PORT).to_bytes()[30..]);
    g.make_available(1, head);
    let ev = g.process();
    assert_eq!(ev.len(), 1, "only the split header is a packet: {ev:?}");
    assert_eq!(g.dev.stats().dropped, 12);
    // A header not in RAM.
    let head = g.chain(1, &[(HOLE, 44, false)]);
    g.make_available(1, head);
    assert_eq!(g.process(), vec![]);
    assert_eq!(g.dev.stats().dropped, 13);
    assert!(g.dev.broken().is_none());
}

#[test]
fn bad_lengths_ops_and_types_get_rst() {
    let mut g = Guest::new(&[PORT]);
    // len past the chain's bytes.
    let c = g.connect(40015);
    let mut h = hdr(op::RW, 40015, PORT);
    h.len = 100;
    g.send_raw(h, &[1; 50]);
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    g.expect_rst(40015, PORT);
    g.dev.close(c);
    // len past the 64 KiB cap, though the buffers hold it.
    let c = g.connect(40016);
    g.send(hdr(op::RW, 40016, PORT), &vec![7; MAX_PKT_PAYLOAD as usize + 1]);
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    g.expect_rst(40016, PORT);
    g.dev.close(c);
    // Payload on a control packet.
    let c = g.connect(40017);
    g.send(hdr(op::CREDIT_UPDATE, 40017, PORT), b"junk");
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    g.expect_rst(40017, PORT);
    g.dev.close(c);
    // Unknown ops and REQUEST/RESPONSE on an open connection.
    for bad in [op::INVALID, 8, 0xffff, op::REQUEST, op::RESPONSE] {
        let c = g.connect(40018);
        g.send(hdr(bad, 40018, PORT), &[]);
        assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }], "op {bad}");
        g.expect_rst(40018, PORT);
        g.dev.close(c);
    }
    // Other socket types: RST with the type echoed; an RST is not answered.
    for kind in [0u16, 2, 3, 0xffff] {
        let mut h = hdr(op::REQUEST, 40019, PORT);
        h.kind = kind;
        g.send(h, &[]);
        assert_eq!(g.process(), vec![]);
        let got = g.take_got();
        assert_eq!((got[0].0.op, got[0].0.kind), (op::RST, kind));
        h.op = op::RST;
        g.send(h, &[]);
        g.process();
        assert!(g.take_got().is_empty());
    }
    // Packets on no connection: RST, except RST.
    for o in [op::RW, op::RESPONSE, op::SHUTDOWN, op::CREDIT_UPDATE, op::CREDIT_REQUEST, 9] {
        g.send(hdr(o, 40020, PORT), &[]);
        assert_eq!(g.process(), vec![]);
        g.expect_rst(40020, PORT);
    }
    g.send(hdr(op::RW, 40020, PORT), b"data on nothing");
    g.process();
    g.expect_rst(40020, PORT);
    // Before the embedder answers, only RST is allowed.
    g.send(hdr(op::REQUEST, 40021, PORT), &[]);
    let ev = g.process();
    let [VsockEvent::Incoming { conn, .. }] = ev[..] else { panic!("{ev:?}") };
    g.send(hdr(op::RW, 40021, PORT), b"early");
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn }]);
    g.expect_rst(40021, PORT);
    assert!(!g.dev.accept(conn));
    g.dev.refuse(conn);
    assert!(g.take_got().is_empty(), "already over: no second RST");
    assert_eq!(g.dev.connections(), 0);
    assert!(g.dev.broken().is_none());
}

#[test]
fn connection_cap_and_reclaiming_closing_slots() {
    let mut g = Guest::new(&[PORT]);
    let conns: Vec<ConnId> = (0..MAX_CONNS as u32).map(|i| g.connect(41000 + i)).collect();
    let idx: std::collections::BTreeSet<usize> = conns.iter().map(ConnId::index).collect();
    assert_eq!(idx.len(), MAX_CONNS);
    assert!(idx.iter().all(|&i| i < MAX_CONNS));
    g.send(hdr(op::REQUEST, 42000, PORT), &[]);
    assert_eq!(g.process(), vec![]);
    g.expect_rst(42000, PORT);
    // A closing connection whose guest never answers is reset for a new one.
    g.dev.close(conns[3]);
    g.flush();
    assert_eq!(g.take_got()[0].0.op, op::SHUTDOWN);
    g.send(hdr(op::REQUEST, 42001, PORT), &[]);
    let ev = g.process();
    assert!(matches!(ev[..], [VsockEvent::Incoming { host_port: PORT, guest_port: 42001, .. }]));
    g.expect_rst(41003, PORT);
    assert_eq!(g.dev.connections(), MAX_CONNS);
    // Stale ids do nothing.
    assert_eq!(g.dev.send(conns[3], b"x"), 0);
    g.dev.abort(conns[3]);
    assert_eq!(g.dev.connections(), MAX_CONNS);
}

#[test]
fn rx_buffers_too_small_or_readable_are_given_back_empty() {
    let mut g = Guest::bare(&[PORT]);
    // A 20-byte buffer, a readable one, then a good one split in two.
    let h1 = g.chain(0, &[(RXBUF, 20, true)]);
    g.rx_posted.insert(h1, (RXBUF, 20));
    g.make_available(0, h1);
    let h2 = g.chain(0, &[(RXBUF + 0x2000, 100, false)]);
    g.rx_posted.insert(h2, (RXBUF + 0x2000, 100));
    g.make_available(0, h2);
    g.kick(0);
    g.send(hdr(op::REQUEST, 40023, 9), &[]);
    g.process();
    assert!(g.take_got().is_empty());
    assert_eq!(g.dev.stats().bad_rx_buffers, 2);
    assert!(g.dev.has_output(), "the RST still waits");
    // Split header: framing is not assumed.
    let h3 = g.chain(0, &[(RXBUF + 0x4000, 30, true), (RXBUF + 0x5000, 14, true)]);
    g.make_available(0, h3);
    g.kick(0);
    g.dev.flush(&mut g.mem).unwrap();
    let r = &g.rings[0];
    assert_eq!(g.mem.u16(r.used() + 2), 3);
    let e = r.used() + 4 + 8 * 2;
    assert_eq!((g.mem.u32(e), g.mem.u32(e + 4)), (u32::from(h3), HDR_LEN as u32));
    let mut hb = [0u8; HDR_LEN];
    hb[..30].copy_from_slice(g.mem.get(RXBUF + 0x4000, 30));
    hb[30..].copy_from_slice(g.mem.get(RXBUF + 0x5000, 14));
    let h = VsockHdr::parse(&hb);
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 9, 40023));
    // An rx buffer outside RAM breaks the device.
    g.send(hdr(op::REQUEST, 40024, 9), &[]);
    let h4 = g.chain(0, &[(HOLE, 4096, true)]);
    g.make_available(0, h4);
    let e = g.dev.process(&mut g.mem, &mut g.events).unwrap_err();
    assert!(matches!(e, VirtioError::NotInGuestRam { .. }), "{e:?}");
    assert_ne!(g.rd(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(g.dev.irq_level());
}

#[test]
fn ring_protocol_errors_break_the_device() {
    let mut g = Guest::new(&[PORT]);
    let c = g.connect(40025);
    // avail.idx jumps on the tx queue.
    let avail = g.rings[1].avail();
    g.mem.put(avail + 2, &500u16.to_le_bytes());
    let e = g.dev.process(&mut g.mem, &mut g.events).unwrap_err();
    assert!(matches!(e, VirtioError::AvailIndexJump { .. }), "{e:?}");
    assert!(g.dev.broken().is_some());
    // Stopped until reset; the connections end with it.
    assert_eq!(g.dev.process(&mut g.mem, &mut g.events), Ok(()));
    assert_eq!(g.dev.send(c, b"x"), 1, "queued; nothing moves");
    g.events.clear();
    g.init(QUEUE_SIZE_MAX);
    g.post_rx(4, LINUX_RX);
    assert_eq!(g.process(), vec![VsockEvent::Closed { conn: c }]);
    assert!(g.take_got().is_empty());
}

// ------------------------------------------------------------------- fuzz

/// A guest and an embedder behaving well, with random sizes, timings and
/// consumption on both sides: every byte arrives once and in order both
/// ways, and the device never sends more than the guest's credit.
#[test]
fn random_flows_keep_order_and_credit() {
    let mut rng = Rng::new(0x76_736f_636b);
    for round in 0..8 {
        let mut g = Guest::new(&[PORT]);
        let nconn = 1 + rng.below(4) as u32;
        let mut ids = Vec::new();
        // Per connection: guest's sent stream, host's received bytes,
        // host's sent stream, guest's received bytes, guest's buf_alloc,
        // guest fwd_cnt (consumed), guest rx queue (unconsumed).
        struct Side {
            g2h: Vec<u8>,
            g2h_sent: usize,
            h2g: Vec<u8>,
            h2g_sent: usize,
            host_got: Vec<u8>,
            guest_got: Vec<u8>,
            guest_fwd: u32,
            guest_unread: usize,
            host_fwd_seen: u32,
            host_buf: u32,
        }
        let mut sides = Vec::new();
        for i in 0..nconn {
            ids.push(g.connect(43000 + i));
            let n1 = rng.below(300_000) as usize;
            let n2 = rng.below(300_000) as usize;
            sides.push(Side {
                g2h: pattern(n1, i as u8 + round),
                g2h_sent: 0,
                h2g: pattern(n2, 100 + i as u8),
                h2g_sent: 0,
                host_got: Vec::new(),
                guest_got: Vec::new(),
                guest_fwd: 0,
                guest_unread: 0,
                host_fwd_seen: 0,
                host_buf: RX_BUF_ALLOC,
            });
        }
        // The guest's sockets advertise a random buffer from the start.
        let guest_buf = 1 + rng.below(u64::from(GUEST_BUF)) as u32;
        for i in 0..nconn {
            let mut h = hdr(op::CREDIT_UPDATE, 43000 + i, PORT);
            h.buf_alloc = guest_buf;
            g.send(h, &[]);
        }
        assert_eq!(g.process(), vec![]);
        for _step in 0..20_000 {
            let i = rng.below(u64::from(nconn)) as usize;
            let (c, s) = (ids[i], &mut sides[i]);
            let port = 43000 + i as u32;
            match rng.below(6) {
                0 => {
                    // The guest sends within the credit it knows of.
                    let credit = s.host_buf - (s.g2h_sent as u32 - s.host_fwd_seen);
                    let n = (rng.below(70_000) as usize)
                        .min(credit as usize)
                        .min(s.g2h.len() - s.g2h_sent)
                        .min(MAX_PKT_PAYLOAD as usize);
                    if n > 0 {
                        let mut h = hdr(op::RW, port, PORT);
                        h.buf_alloc = guest_buf;
                        h.fwd_cnt = s.guest_fwd;
                        let chunk = s.g2h[s.g2h_sent..s.g2h_sent + n].to_vec();
                        g.send(h, &chunk);
                        s.g2h_sent += n;
                    }
                }
                1 => {
                    // The embedder takes some.
                    let mut buf = vec![0u8; rng.below(50_000) as usize];
                    let n = g.dev.recv(c, &mut buf);
                    s.host_got.extend_from_slice(&buf[..n]);
                }
                2 => {
                    let n = rng.below(40_000) as usize;
                    let end = (s.h2g_sent + n).min(s.h2g.len());
                    let took = g.dev.send(c, &s.h2g[s.h2g_sent..end]);
                    s.h2g_sent += took;
                }
                3 => {
                    // The guest's reader consumes and tells the host.
                    let n = (rng.below(100_000) as usize).min(s.guest_unread);
                    s.guest_unread -= n;
                    s.guest_fwd = s.guest_fwd.wrapping_add(n as u32);
                    let mut h = hdr(op::CREDIT_UPDATE, port, PORT);
                    h.buf_alloc = guest_buf;
                    h.fwd_cnt = s.guest_fwd;
                    g.send(h, &[]);
                }
                _ => {
                    let ev = g.process();
                    assert!(ev.iter().all(|e| matches!(e, VsockEvent::Readable { .. })), "{ev:?}");
                }
            }
            // Deliver what the device wrote.
            for (h, p) in g.take_got() {
                let j = (h.dst_port - 43000) as usize;
                let s = &mut sides[j];
                assert!(h.fwd_cnt.wrapping_sub(s.host_fwd_seen) <= RX_BUF_ALLOC);
                s.host_fwd_seen = h.fwd_cnt;
                s.host_buf = h.buf_alloc;
                match h.op {
                    op::RW => {
                        s.guest_got.extend_from_slice(&p);
                        s.guest_unread += p.len();
                        assert!(s.guest_unread <= guest_buf as usize, "credit exceeded");
                    }
                    op::CREDIT_UPDATE => {}
                    op::CREDIT_REQUEST => {
                        let mut h = hdr(op::CREDIT_UPDATE, h.dst_port, PORT);
                        h.buf_alloc = guest_buf;
                        h.fwd_cnt = s.guest_fwd;
                        g.send(h, &[]);
                    }
                    o => panic!("op {o}"),
                }
            }
            if g.tx_pending >= 8 {
                let ev = g.process();
                assert!(ev.iter().all(|e| matches!(e, VsockEvent::Readable { .. })), "{ev:?}");
            }
        }
        for (i, s) in sides.iter().enumerate() {
            eprintln!(
                "round {round} conn {i}: guest → host {}/{}, host → guest {}/{}",
                s.host_got.len(),
                s.g2h.len(),
                s.guest_got.len(),
                s.h2g.len()
            );
            assert_eq!(s.host_got[..], s.g2h[..s.host_got.len()], "conn {i} guest → host");
            assert_eq!(s.guest_got[..], s.h2g[..s.guest_got.len()], "conn {i} host → guest");
            assert!(s.host_got.len() > s.g2h.len() / 4 || s.g2h.len() < 100_000);
            assert!(s.guest_got.len() > s.h2g.len() / 4 || s.h2g.len() < 100_000);
        }
        assert_eq!(g.dev.stats().credit_violations, 0);
        assert!(g.dev.broken().is_none());
    }
}

/// Random packets (plausible and garbage), rx buffers of random shapes,
/// register writes, resets and embedder calls. Checks: no panic; the
/// device writes guest memory only in rx buffers and the rx and tx used
/// rings; every packet it writes fits its buffer and is from the host to
/// the guest's CID; connections and queued bytes stay bounded.
#[test]
fn fuzz_random_guests_never_panic() {
    let mut rng = Rng::new(0x7673_6f63_6b02);
    let mut stats = [0usize; 5]; // incoming, closed, readable, protocol errors, packets out
    for _round in 0..40 {
        let mut g = Guest::new(&[PORT, 22]);
        let mut held: Vec<ConnId> = Vec::new();
        for _ in 0..3000 {
            match rng.below(100) {
                0..=39 => {
                    let mut h = hdr(
                        if rng.chance(70) { [1, 1, 3, 4, 5, 5, 5, 5, 6, 7][rng.below(10) as usize] } else { rng.next() as u16 },
                        44000 + rng.below(8) as u32,
                        if rng.chance(70) { PORT } else { [22, 9, rng.next() as u32][rng.below(3) as usize] },
                    );
                    if rng.chance(10) {
                        h.src_cid = rng.below(5);
                    }
                    if rng.chance(10) {
                        h.dst_cid = rng.below(5);
                    }
                    if rng.chance(10) {
                        h.kind = rng.below(4) as u16;
                    }
                    h.flags = rng.below(4) as u32;
                    h.buf_alloc = if rng.chance(80) { GUEST_BUF } else { rng.next() as u32 };
                    h.fwd_cnt = rng.next() as u32 % 0x10_0000;
                    let n = if h.op == op::RW || rng.chance(5) { rng.below(9000) as usize } else { 0 };
                    let payload = pattern(n, rng.next() as u8);
                    if rng.chance(90) {
                        g.send(h, &payload);
                    } else {
                        h.len = rng.next() as u32 % 0x2_0000;
                        g.send_raw(h, &payload);
                    }
                }
                40..=44 => {
                    // Garbage in the rings.
                    // (Not queue 0's table: rx buffers may lie anywhere,
                    // which would defeat the write check.)
                    let q = rng.below(3) as usize;
                    let lo = if q == 0 { 0x1000 } else { 0 };
                    let at = g.rings[q].base + lo + rng.below(0x3000 - lo);
                    let v = rng.next().to_le_bytes();
                    g.mem.put(at, &v[..1 + rng.below(8) as usize]);
                }
                45..=54 => {
                    let before = g.mem_writes();
                    match g.dev.process(&mut g.mem, &mut g.events) {
                        Ok(()) => {}
                        Err(e) => {
                            assert!(!alloc::format!("{e}").is_empty());
                            stats[3] += 1;
                        }
                    }
                    g.check_writes(before);
                    for e in core::mem::take(&mut g.events) {
                        match e {
                            VsockEvent::Incoming { conn, .. } => {
                                stats[0] += 1;
                                if rng.chance(80) {
                                    g.dev.accept(conn);
                                    held.push(conn);
                                } else {
                                    g.dev.refuse(conn);
                                }
                            }
                            VsockEvent::Closed { .. } => stats[1] += 1,
                            VsockEvent::Readable { .. } => stats[2] += 1,
                        }
                    }
                }
                55..=64 if !held.is_empty() => {
                    let c = held[rng.below(held.len() as u64) as usize];
                    match rng.below(5) {
                        0 => {
                            let mut b = vec![0; rng.below(70_000) as usize];
                            g.dev.recv(c, &mut b);
                        }
                        1 => {
                            g.dev.send(c, &pattern(rng.below(70_000) as usize, 9));
                        }
                        2 => {
                            g.dev.close(c);
                            held.retain(|&x| x != c);
                        }
                        3 => {
                            g.dev.abort(c);
                            held.retain(|&x| x != c);
                        }
                        _ => {
                            g.dev.state(c);
                            g.dev.may_recv(c);
                            g.dev.may_send(c);
                        }
                    }
                }
                65..=79 => {
                    // rx buffers of random shapes, sometimes bad.
                    let len = [LINUX_RX, 44, 45, 20, 0, 8192][rng.below(6) as usize];
                    let head = g.rings[0].next;
                    let gpa = if rng.chance(3) { HOLE } else { RXBUF + 0x2000 * u64::from(head) };
                    let h = g.chain(0, &[(gpa, len, rng.chance(95))]);
                    g.rx_posted.insert(h, (gpa, len));
                    g.make_available(0, h);
                }
                80..=89 => {
                    let before = g.mem_writes();
                    if g.dev.flush(&mut g.mem).is_err() {
                        stats[3] += 1;
                    }
                    g.check_writes(before);
                }
                90..=94 => {
                    let off = rng.below(0x40) * 4;
                    if off != STATUS || rng.chance(10) {
                        g.dev.write(off, 4, rng.below(512));
                    } else {
                        g.dev.read(off, [1, 2, 4, 8][rng.below(4) as usize]);
                    }
                }
                95 => {
                    g.init(QUEUE_SIZE_MAX);
                    g.post_rx(16, LINUX_RX);
                }
                _ => {
                    let s = g.rd(INTERRUPT_STATUS);
                    g.wr(INTERRUPT_ACK, s);
                }
            }
            assert!(g.dev.connections() <= MAX_CONNS);
            for &c in &held {
                assert!(g.dev.recv_queue(c) <= RX_BUF_ALLOC as usize);
                assert!(g.dev.send_capacity(c) <= TX_BUF_CAP);
            }
        }
        stats[4] += g.dev.stats().rx_packets as usize;
    }
    eprintln!("incoming, closed, readable, protocol errors, packets out: {stats:?}");
    assert!(stats[0] > 500, "{stats:?}");
    assert!(stats[1] > 200, "{stats:?}");
    assert!(stats[2] > 100, "{stats:?}");
    assert!(stats[3] > 20, "{stats:?}");
    assert!(stats[4] > 2000, "{stats:?}");
}

impl Guest {
    fn mem_writes(&self) -> usize {
        self.mem.writes.len()
    }

    /// Every write since `before` is in a posted rx buffer or a used ring.
    fn check_writes(&self, before: usize) {
        for &(gpa, len) in &self.mem.writes[before..] {
            let end = gpa + len as u64;
            let in_used = (0..2).any(|q| {
                let used = RINGS + q * 0x4000 + 0x2000;
                gpa >= used && end <= used + 0x1000
            });
            let in_rx = gpa >= RXBUF && end <= TXBUF;
            assert!(in_used || in_rx, "write at {gpa:#x}+{len}");
        }
    }
}
