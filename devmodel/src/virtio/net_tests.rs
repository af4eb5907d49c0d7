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
    offloads: u64,
}

impl Guest {
    /// A driver that takes none of the offloads.
    fn new() -> Self {
        Guest::with(0)
    }

    /// A driver that takes the offloads in `offloads` (of those offered).
    fn with(offloads: u64) -> Self {
        let mut g =
            Guest { dev: VirtioNetMmio::new(MAC), mem: Ram::new(), next: [0; 2], avail_idx: [0; 2], offloads };
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
        assert_eq!(offered, feature::VERSION_1 | feature::INDIRECT_DESC | net_feature::MAC | net_feature::OFFLOADS);
        let offered = (offered & !net_feature::OFFLOADS) | (offered & self.offloads);
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
    assert_eq!(g.dev.receive(&mut g.mem, 98, &Offload::NONE, |_| unreachable!()).unwrap(), RxOutcome::NoBuffer);
    assert_eq!(g.dev.stats().rx_no_buffer, 1);
    // Linux: one buffer holding the header and the frame.
    let head = g.post(0, &[(RXBUF, LINUX_RX, true)]);
    let mut mem = core::mem::replace(&mut g.mem, Ram::new());
    let mut pieces_seen = Vec::new();
    let outcome = g
        .dev
        .receive(&mut mem, 98, &Offload::NONE, |pieces| {
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
        let r = g.dev.receive(&mut g.mem, 60, &Offload::NONE, |_| panic!("no copy into a bad buffer"));
        assert_eq!(r.unwrap(), RxOutcome::NoBuffer);
    }
    assert_eq!(g.used(0).iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
    assert_eq!(g.dev.stats().rx_bad_buffers, 2);
    // A copy that fails gives the buffer back empty too.
    g.post(0, &[(RXBUF, LINUX_RX, true)]);
    assert_eq!(g.dev.receive(&mut g.mem, 60, &Offload::NONE, |_| false).unwrap(), RxOutcome::NoBuffer);
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
    assert_eq!(dev.receive(&mut mem, 60, &Offload::NONE, |_| true).unwrap(), RxOutcome::NotReady);
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
            let _ = g.dev.receive(&mut g.mem, 60, &Offload::NONE, |_| true);
            if g.dev.broken().is_some() {
                g.init();
            }
        }
    }
}

// ---- offloads and merged receive buffers ----

/// A header asking for `flags`/`gso_type` with the given fields.
fn offload_hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&66u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

impl Guest {
    /// Sends `len` bytes of frame after header `h`, in one descriptor.
    fn send_with(&mut self, h: [u8; HDR_LEN], len: usize) -> u16 {
        let at = TXBUF + 0x2_0000 * u64::from(self.next[1] % 8);
        self.mem.put(at, &h);
        self.mem.put(at + HDR_LEN as u64, &frame(len, 1));
        self.post(1, &[(at, (HDR_LEN + len) as u32, false)])
    }
}

#[test]
fn a_tso_frame_is_taken_with_its_offload_when_negotiated() {
    use crate::net_offload::{Csum, Gso, GsoKind};
    let mut g = Guest::with(net_feature::OFFLOADS);
    g.send_with(offload_hdr(1, 1, 1448, 34, 16), 65_000);
    g.send_with(offload_hdr(1, 0, 0, 34, 6), 300);
    let frames = g.take();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].len, 65_000);
    assert_eq!(
        frames[0].offload,
        Offload {
            csum: Some(Csum { start: 34, offset: 16 }),
            gso: Some(Gso { kind: GsoKind::Tcp4, ecn: false, size: 1448, hdr_len: 66 })
        }
    );
    assert_eq!(frames[1].offload.gso, None);
    assert_eq!(g.dev.stats().tx_gso, 1);
    // Not negotiated: dropped.
    let mut g = Guest::with(net_feature::CSUM);
    g.send_with(offload_hdr(1, 1, 1448, 34, 16), 65_000);
    g.send_with(offload_hdr(1, 0, 0, 34, 16), 300);
    let frames = g.take();
    assert_eq!(frames.len(), 1);
    assert_eq!(g.dev.stats().tx_bad_offload, 1);
}

#[test]
fn hostile_offload_headers_are_dropped_counted_and_given_back() {
    let mut g = Guest::with(net_feature::OFFLOADS);
    let bad = [
        (offload_hdr(2, 0, 0, 0, 0), 60),        // DATA_VALID from a driver
        (offload_hdr(1, 0, 0, 50, 10), 60),      // checksum past the end
        (offload_hdr(1, 3, 1472, 34, 6), 9000),  // UFO
        (offload_hdr(1, 5, 1472, 34, 6), 9000),  // USO
        (offload_hdr(0, 1, 1448, 34, 16), 9000), // GSO without NEEDS_CSUM
        (offload_hdr(1, 1, 0, 34, 16), 9000),    // gso_size 0
        (offload_hdr(1, 1, 9000, 34, 16), 9000), // segments bigger than a frame
        (offload_hdr(1, 0x80, 0, 34, 16), 9000), // ECN without GSO
    ];
    for (h, len) in bad {
        g.send_with(h, len);
    }
    // Too long even for GSO.
    g.send_with(offload_hdr(1, 1, 1448, 34, 16), MAX_GSO_FRAME + 1);
    assert!(g.take().is_empty());
    assert_eq!(g.used(1).len(), 9);
    assert!(g.used(1).iter().all(|&(_, len)| len == 0));
    assert_eq!(g.dev.stats().tx_malformed, 9);
    assert_eq!(g.dev.stats().tx_bad_offload, 8);
    assert!(g.dev.broken().is_none());
}

#[test]
fn offloads_offered_to_the_receiver_follow_what_it_negotiated() {
    use net_feature::*;
    assert_eq!(Guest::new().dev.rx_offloads(), RxOffloads::NONE);
    let all = Guest::with(OFFLOADS).dev.rx_offloads();
    assert!(all.csum && all.tso4 && all.tso6 && all.ecn);
    // TSO without GUEST_CSUM is not taken.
    let r = Guest::with(GUEST_TSO4 | GUEST_TSO6).dev.rx_offloads();
    assert_eq!(r, RxOffloads::NONE);
}

/// Receives `f` with offload `o` into `g`, copying it as the bridge does.
fn deliver(g: &mut Guest, f: &[u8], o: &Offload) -> RxOutcome {
    let mut pieces = Vec::new();
    let r = g
        .dev
        .receive(&mut g.mem, f.len() as u32, o, |p| {
            pieces = p.to_vec();
            true
        })
        .unwrap();
    if r == RxOutcome::Delivered {
        scatter(&mut g.mem, &pieces, 0, f).unwrap();
    }
    r
}

#[test]
fn a_big_frame_fills_several_merged_buffers() {
    use crate::net_offload::{Csum, Gso, GsoKind};
    let mut g = Guest::with(net_feature::OFFLOADS);
    let heads: Vec<u16> = (0..6).map(|i| g.post(0, &[(RXBUF + 0x1000 * i, LINUX_RX, true)])).collect();
    let f = frame(6000, 9);
    let o = Offload {
        csum: Some(Csum { start: 34, offset: 16 }),
        gso: Some(Gso { kind: GsoKind::Tcp4, ecn: false, size: 1448, hdr_len: 66 }),
    };
    assert_eq!(deliver(&mut g, &f, &o), RxOutcome::Delivered);
    // 12 + 6000 bytes over buffers of 1530: four of them.
    let used = g.used(0);
    assert_eq!(used.len(), 4);
    assert_eq!(used.iter().map(|u| u.0 as u16).collect::<Vec<_>>(), heads[..4]);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![LINUX_RX, LINUX_RX, LINUX_RX, 6012 - 3 * LINUX_RX]);
    let h = g.mem.get(RXBUF, HDR_LEN);
    assert_eq!(h, crate::net_offload::rx_header(&o, 4));
    let mut got = g.mem.get(RXBUF + HDR_LEN as u64, LINUX_RX as usize - HDR_LEN).to_vec();
    for i in 1..4u64 {
        got.extend_from_slice(g.mem.get(RXBUF + 0x1000 * i, LINUX_RX as usize));
    }
    got.truncate(6000);
    assert_eq!(got, f);
    assert_eq!(g.dev.stats().rx_gso, 1);
    assert_eq!(g.dev.stats().rx_buffers, 4);
    // The next frame takes the next buffer.
    assert_eq!(deliver(&mut g, &frame(60, 1), &Offload::NONE), RxOutcome::Delivered);
    assert_eq!(g.used(0)[4], (u32::from(heads[4]), HDR_LEN as u32 + 60));
    assert_eq!(g.mem.get(RXBUF + 0x4000, HDR_LEN), crate::net_offload::rx_header(&Offload::NONE, 1));
}

#[test]
fn too_few_merged_buffers_stay_posted_for_the_next_frame() {
    let mut g = Guest::with(net_feature::MRG_RXBUF);
    let first = g.post(0, &[(RXBUF, 1000, true)]);
    g.post(0, &[(RXBUF + 0x1000, 100, true)]);
    // A frame needing more than is posted: dropped, nothing used.
    let f = frame(1518, 2);
    assert_eq!(deliver(&mut g, &f, &Offload::NONE), RxOutcome::NoBuffer);
    assert!(g.used(0).is_empty());
    assert_eq!(g.dev.stats().rx_no_buffer, 1);
    // A small one takes the first buffer, as if nothing had happened.
    assert_eq!(deliver(&mut g, &frame(60, 2), &Offload::NONE), RxOutcome::Delivered);
    assert_eq!(g.used(0), vec![(u32::from(first), HDR_LEN as u32 + 60)]);
    // Offloads the driver did not take are refused (the caller's bug).
    let csum = Offload { csum: Some(crate::net_offload::Csum { start: 34, offset: 16 }), gso: None };
    assert_eq!(deliver(&mut g, &frame(60, 2), &csum), RxOutcome::NoBuffer);
}

#[test]
fn a_bad_buffer_in_a_merge_gives_them_all_back_empty() {
    let mut g = Guest::with(net_feature::MRG_RXBUF);
    g.post(0, &[(RXBUF, 600, true)]);
    g.post(0, &[(RXBUF + 0x1000, 600, false)]); // read-only
    g.post(0, &[(RXBUF + 0x2000, 600, true)]);
    assert_eq!(deliver(&mut g, &frame(1500, 3), &Offload::NONE), RxOutcome::NoBuffer);
    assert_eq!(g.used(0).iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
    assert_eq!(g.dev.stats().rx_bad_buffers, 1);
    // A first buffer without room for the header.
    let mut g = Guest::with(net_feature::MRG_RXBUF);
    g.post(0, &[(RXBUF + 0x3000, 8, true)]);
    g.post(0, &[(RXBUF + 0x4000, 600, true)]);
    assert_eq!(deliver(&mut g, &frame(60, 3), &Offload::NONE), RxOutcome::NoBuffer);
    assert_eq!(g.used(0), vec![(0, 0)]);
    assert_eq!(g.dev.stats().rx_bad_buffers, 1);
}

#[test]
fn random_offload_traffic_never_panics_and_stays_bounded() {
    let mut rng = Rng::new(0x6d72_6700);
    for _ in 0..200 {
        let mut g = Guest::with(net_feature::OFFLOADS & !(rng.next() & net_feature::OFFLOADS));
        for _ in 0..30 {
            if rng.chance(40) {
                let mut h = [0u8; HDR_LEN];
                for b in h.iter_mut() {
                    *b = if rng.chance(50) { 0 } else { rng.u8() };
                }
                g.send_with(h, 14 + rng.below(70_000) as usize);
            } else if rng.chance(50) {
                g.post(0, &[(RXBUF + rng.below(0x8000), rng.below(3000) as u32, rng.chance(90))]);
            } else {
                let len = 14 + rng.below(MAX_GSO_FRAME as u64) as usize;
                let o = if g.dev.rx_offloads().tso4 && rng.chance(50) {
                    use crate::net_offload::{Csum, Gso, GsoKind};
                    Offload {
                        csum: Some(Csum { start: 34, offset: 16 }),
                        gso: Some(Gso { kind: GsoKind::Tcp4, ecn: false, size: 1448, hdr_len: 66 }),
                    }
                } else {
                    Offload::NONE
                };
                let f = frame(len, 0);
                let _ = deliver(&mut g, &f, &o);
            }
            let mut out = Vec::new();
            let _ = g.dev.take_tx(&mut g.mem, 256, &mut out);
            for f in &out {
                let max = if f.offload.gso.is_some() { MAX_GSO_FRAME } else { MAX_FRAME };
                assert!((ETH_HLEN..=max).contains(&(f.len as usize)));
            }
            let _ = g.dev.complete_tx(&mut g.mem, &out);
            assert!(g.used(0).len() <= 256 * 30);
        }
    }
}

#[test]
fn a_quiet_receive_queue_asks_for_no_notifies() {
    let mut g = Guest::with(net_feature::MRG_RXBUF);
    let used_flags = RINGS + 0x2000;
    g.post(0, &[(RXBUF, LINUX_RX, true)]);
    assert_eq!(deliver(&mut g, &frame(60, 1), &Offload::NONE), RxOutcome::Delivered);
    assert_eq!(g.mem.u16(used_flags), 0);
    g.dev.quiet_receive_notifies();
    g.post(0, &[(RXBUF, LINUX_RX, true)]);
    assert_eq!(deliver(&mut g, &frame(60, 1), &Offload::NONE), RxOutcome::Delivered);
    assert_eq!(g.mem.u16(used_flags), super::queue::USED_F_NO_NOTIFY);
}
