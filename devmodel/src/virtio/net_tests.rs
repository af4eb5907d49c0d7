//! Host tests of virtio-net: a small driver doing what Linux's virtio_net
//! does over virtio-mmio (two queues, 1530-byte receive buffers, header
//! and frame in separate transmit descriptors), hostile chains, and
//! seeded fuzzing of both queues.

use super::mmio::*;
use super::net::*;
use super::queue::{gather, scatter, Buffer, DESC_F_NEXT, DESC_F_WRITE};
use super::tests::Ram;
use super::*;
use crate::testutil::Rng;
use alloc::vec;
use alloc::vec::Vec;

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];
/// Queue q's rings at RINGS + q × 0x4000: table, avail +0x1000, used +0x2000.
const RINGS: u64 = 0x1_0000;
const RXBUF: u64 = 0x10_0000;
const TXBUF: u64 = 0x20_0000;
/// Linux's small receive buffer: header + GOOD_PACKET_LEN.
const LINUX_RX: u32 = HDR_LEN as u32 + 1518;

struct Guest {
    dev: VirtioNetMmio,
    mem: Ram,
    next: [u16; 2],
    avail_idx: [u16; 2],
}

impl Guest {
    fn new() -> Self {
        let mut g = Guest { dev: VirtioNetMmio::new(MAC), mem: Ram::new(), next: [0; 2], avail_idx: [0; 2] };
        g.init();
        g
    }

    fn rd(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4) as u32
    }

    fn wr(&mut self, off: u64, v: u32) -> Effect {
        self.dev.write(off, 4, u64::from(v))
    }

    fn init(&mut self) {
        assert_eq!(self.rd(DEVICE_ID), DEVICE_ID_NET);
        self.wr(STATUS, 0);
        self.wr(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(DEVICE_FEATURES);
        self.wr(DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(DEVICE_FEATURES);
        let offered = u64::from(hi) << 32 | u64::from(lo);
        assert_eq!(offered, feature::VERSION_1 | feature::INDIRECT_DESC | net_feature::MAC);
        self.wr(DRIVER_FEATURES_SEL, 1);
        self.wr(DRIVER_FEATURES, (offered >> 32) as u32);
        self.wr(DRIVER_FEATURES_SEL, 0);
        self.wr(DRIVER_FEATURES, offered as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(STATUS, s);
        for q in 0..2u32 {
            let base = RINGS + u64::from(q) * 0x4000;
            self.wr(QUEUE_SEL, q);
            assert_eq!(self.rd(QUEUE_NUM_MAX), u32::from(QUEUE_SIZE_MAX));
            self.wr(QUEUE_NUM, 256);
            self.wr(QUEUE_DESC_LOW, base as u32);
            self.wr(QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.wr(QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.mem.bytes[base as usize..(base + 0x4000) as usize].fill(0);
            self.wr(QUEUE_READY, 1);
        }
        self.wr(STATUS, s | status::DRIVER_OK);
        self.next = [0; 2];
        self.avail_idx = [0; 2];
        assert!(self.dev.live());
    }

    /// A chain of (gpa, len, writable) in queue q, made available.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let base = RINGS + q as u64 * 0x4000;
        let head = self.next[q];
        for (i, &(gpa, len, w)) in bufs.iter().enumerate() {
            let idx = self.next[q];
            self.next[q] = (idx + 1) % 256;
            let mut flags = if w { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&gpa.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&self.next[q].to_le_bytes());
            self.mem.put(base + 16 * u64::from(idx), &d);
        }
        let slot = u64::from(self.avail_idx[q] % 256);
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem.put(base + 0x1000 + 4 + 2 * slot, &head.to_le_bytes());
        self.mem.put(base + 0x1000 + 2, &self.avail_idx[q].to_le_bytes());
        head
    }

    /// Sends `frame` with a zero header in its own descriptor.
    fn send(&mut self, frame: &[u8]) -> u16 {
        let at = TXBUF + 0x1000 * u64::from(self.next[1] / 2);
        self.mem.put(at, &[0; HDR_LEN]);
        self.mem.put(at + 64, frame);
        self.post(1, &[(at, HDR_LEN as u32, false), (at + 64, frame.len() as u32, false)])
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = RINGS + q as u64 * 0x4000 + 0x2000;
        let n = self.mem.u16(used + 2);
        (0..n).map(|i| (self.mem.u32(used + 4 + 8 * u64::from(i)), self.mem.u32(used + 8 + 8 * u64::from(i)))).collect()
    }

    fn take(&mut self) -> Vec<TxFrame> {
        let mut out = Vec::new();
        self.dev.take_tx(&mut self.mem, 256, &mut out).expect("no protocol error");
        out
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f
}

#[test]
fn the_mac_is_in_the_configuration_space() {
    let mut g = Guest::new();
    let got: Vec<u8> = (0..6).map(|i| g.dev.read(CONFIG + i, 1) as u8).collect();
    assert_eq!(got, MAC);
    assert_eq!(g.dev.mac(), MAC);
}

#[test]
fn a_sent_frame_is_handed_over_in_place_and_given_back_when_completed() {
    let mut g = Guest::new();
    let f = frame(60, 1);
    let head = g.send(&f);
    let frames = g.take();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].len, 60);
    let mut bytes = vec![0u8; 60];
    assert!(gather(&mut g.mem, &frames[0].pieces, 0, &mut bytes));
    assert_eq!(bytes, f);
    // Not given back until the embedder has read it.
    assert!(g.used(1).is_empty());
    g.dev.complete_tx(&mut g.mem, &frames).unwrap();
    assert_eq!(g.used(1), vec![(u32::from(head), 0)]);
    assert!(g.dev.irq_level());
    assert_eq!(g.dev.stats().tx_packets, 1);
    assert_eq!(g.dev.stats().tx_bytes, 60);
}

#[test]
fn take_tx_stops_at_its_budget() {
    let mut g = Guest::new();
    for i in 0..5 {
        g.send(&frame(64, i));
    }
    let mut out = Vec::new();
    g.dev.take_tx(&mut g.mem, 3, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    g.dev.take_tx(&mut g.mem, 3, &mut out).unwrap();
    assert_eq!(out.len(), 5);
}

#[test]
fn malformed_frames_are_dropped_counted_and_given_back() {
    let mut g = Guest::new();
    // Runt: a header and 13 bytes.
    g.send(&frame(13, 0)[..13]);
    // Oversize.
    g.send(&frame(MAX_FRAME + 1, 0));
    // A device-writable buffer in a transmit chain.
    g.post(1, &[(TXBUF + 0x10_000, HDR_LEN as u32 + 60, true)]);
    // Offloads that were not negotiated (NEEDS_CSUM, GSO TCPv4).
    for (flags, gso) in [(1u8, 0u8), (0, 1)] {
        let at = TXBUF + 0x20_000 + u64::from(flags) * 0x1000;
        let mut hdr = [0u8; HDR_LEN];
        hdr[0] = flags;
        hdr[1] = gso;
        g.mem.put(at, &hdr);
        g.mem.put(at + HDR_LEN as u64, &frame(60, 0));
        g.post(1, &[(at, HDR_LEN as u32 + 60, false)]);
    }
    // Outside guest RAM: the frame is not readable.
    g.post(1, &[(0x4000_0000, HDR_LEN as u32 + 60, false)]);
    let frames = g.take();
    assert!(frames.is_empty());
    assert_eq!(g.used(1).len(), 6);
    assert!(g.used(1).iter().all(|&(_, len)| len == 0));
    assert_eq!(g.dev.stats().tx_malformed, 6);
    assert!(g.dev.broken().is_none());
}

#[test]
fn a_frame_is_received_into_the_next_buffer_with_its_header() {
    let mut g = Guest::new();
    let f = frame(98, 3);
    assert_eq!(g.dev.receive(&mut g.mem, 98, |_| unreachable!()).unwrap(), RxOutcome::NoBuffer);
    assert_eq!(g.dev.stats().rx_no_buffer, 1);
    // Linux: one buffer holding the header and the frame.
    let head = g.post(0, &[(RXBUF, LINUX_RX, true)]);
    let mut mem = core::mem::replace(&mut g.mem, Ram::new());
    let mut pieces_seen = Vec::new();
    let outcome = g
        .dev
        .receive(&mut mem, 98, |pieces| {
            pieces_seen = pieces.to_vec();
            true
        })
        .unwrap();
    assert_eq!(outcome, RxOutcome::Delivered);
    assert_eq!(pieces_seen, vec![Buffer { gpa: RXBUF + HDR_LEN as u64, len: LINUX_RX - HDR_LEN as u32, writable: true }]);
    scatter(&mut mem, &pieces_seen, 0, &f).unwrap();
    g.mem = mem;
    let mut hdr = [0u8; HDR_LEN];
    hdr[10] = 1;
    assert_eq!(g.mem.get(RXBUF, HDR_LEN), hdr);
    assert_eq!(g.mem.get(RXBUF + HDR_LEN as u64, 98), &f[..]);
    assert_eq!(g.used(0), vec![(u32::from(head), HDR_LEN as u32 + 98)]);
    assert_eq!(g.dev.stats().rx_packets, 1);
}

#[test]
fn unusable_receive_buffers_are_given_back_empty() {
    let mut g = Guest::new();
    g.post(0, &[(RXBUF, HDR_LEN as u32 + 50, true)]); // too small for 60
    g.post(0, &[(RXBUF + 0x1000, LINUX_RX, false)]); // read-only
    for _ in 0..2 {
        let r = g.dev.receive(&mut g.mem, 60, |_| panic!("no copy into a bad buffer"));
        assert_eq!(r.unwrap(), RxOutcome::NoBuffer);
    }
    assert_eq!(g.used(0).iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
    assert_eq!(g.dev.stats().rx_bad_buffers, 2);
    // A copy that fails gives the buffer back empty too.
    g.post(0, &[(RXBUF, LINUX_RX, true)]);
    assert_eq!(g.dev.receive(&mut g.mem, 60, |_| false).unwrap(), RxOutcome::NoBuffer);
    assert_eq!(g.used(0)[2].1, 0);
}

#[test]
fn frames_taken_before_a_reset_are_not_given_back_after_it() {
    let mut g = Guest::new();
    g.send(&frame(60, 0));
    let frames = g.take();
    assert_eq!(frames.len(), 1);
    g.init();
    g.dev.complete_tx(&mut g.mem, &frames).unwrap();
    assert!(g.used(1).is_empty());
}

#[test]
fn nothing_moves_before_driver_ok() {
    let mut dev = VirtioNetMmio::new(MAC);
    let mut mem = Ram::new();
    let mut out = Vec::new();
    dev.take_tx(&mut mem, 8, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(dev.receive(&mut mem, 60, |_| true).unwrap(), RxOutcome::NotReady);
}

#[test]
fn a_broken_ring_breaks_the_device_not_the_host() {
    let mut g = Guest::new();
    // avail.idx far past the queue size.
    g.mem.put(RINGS + 0x4000 + 0x1000 + 2, &1000u16.to_le_bytes());
    let mut out = Vec::new();
    assert!(matches!(g.dev.take_tx(&mut g.mem, 256, &mut out), Err(VirtioError::AvailIndexJump { .. })));
    assert!(g.dev.broken().is_some());
    assert_eq!(g.rd(STATUS) & status::DEVICE_NEEDS_RESET, status::DEVICE_NEEDS_RESET);
    // A reset brings it back.
    g.init();
    g.send(&frame(60, 0));
    assert_eq!(g.take().len(), 1);
}

#[test]
fn random_rings_never_panic_and_stay_bounded() {
    let mut rng = Rng::new(0x6e65_7400);
    for _ in 0..300 {
        let mut g = Guest::new();
        for _ in 0..20 {
            let q = rng.below(2) as usize;
            let base = RINGS + q as u64 * 0x4000;
            // Scribble over descriptors and the available ring.
            for _ in 0..rng.below(8) {
                let at = base + rng.below(0x1010);
                g.mem.put(at, &[rng.u8()]);
            }
            if rng.chance(50) {
                g.send(&frame(14 + rng.below(1600) as usize, rng.u8()));
            } else {
                g.post(0, &[(RXBUF + rng.below(0x4000), rng.below(2000) as u32, rng.chance(80))]);
            }
            let mut out = Vec::new();
            let _ = g.dev.take_tx(&mut g.mem, 256, &mut out);
            assert!(out.len() <= 256);
            for f in &out {
                assert!((ETH_HLEN..=MAX_FRAME).contains(&(f.len as usize)));
                assert_eq!(f.pieces.iter().map(|p| u64::from(p.len)).sum::<u64>(), u64::from(f.len));
            }
            let _ = g.dev.complete_tx(&mut g.mem, &out);
            let _ = g.dev.receive(&mut g.mem, 60, |_| true);
            if g.dev.broken().is_some() {
                g.init();
            }
        }
    }
}
