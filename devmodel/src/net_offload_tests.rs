//! Host tests of the shared offloads: segmentation and checksums checked
//! with an independent checksum (RFC 1071 byte pair by byte pair), the
//! virtio-net header's checks, and hostile frames and headers.

use super::*;
use crate::testutil::{inet_checksum, Rng};

/// [`inet_checksum`] of one run of bytes.
fn inet_checksum_of(bytes: &[u8]) -> u16 {
    inet_checksum(&[bytes])
}
use alloc::vec;

const SRC4: [u8; 4] = [10, 0, 0, 2];
const DST4: [u8; 4] = [10, 0, 0, 1];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const MAX: usize = 1518;


/// Whether the TCP segment at `l4` checksums to zero with its pseudo
/// header (so the stored checksum is right).
fn tcp_ok(f: &[u8], l3: usize, ipv4: bool, l4: usize) -> bool {
    let mut p = Vec::new();
    let len = f.len() - l4;
    if ipv4 {
        p.extend_from_slice(&f[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&f[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
    }
    p.extend_from_slice(&f[l4..]);
    inet_checksum_of(&p) == 0
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// An Ethernet frame with IPv4 (or IPv6) and TCP (12 bytes of options),
/// sequence 1000, flags `flags`, the checksum field holding junk (what
/// Linux leaves there is the sender's business), optionally VLAN-tagged.
fn tcp_frame(ipv4: bool, vlan: bool, flags: u8, data: &[u8]) -> (Vec<u8>, usize, usize) {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    }
    let l3 = f.len() + 2;
    let tcp_len = 32 + data.len();
    if ipv4 {
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0xde, 0xad]);
        f.extend_from_slice(&SRC4);
        f.extend_from_slice(&DST4);
    } else {
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&SRC6);
        f.extend_from_slice(&DST6);
    }
    let l4 = f.len();
    f.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]); // ports
    f.extend_from_slice(&1000u32.to_be_bytes());
    f.extend_from_slice(&77u32.to_be_bytes());
    f.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0xbe, 0xef, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend_from_slice(data);
    (f, l3, l4)
}

fn gso(kind: GsoKind, ecn: bool, mss: u16, l4: usize) -> Offload {
    Offload {
        csum: Some(Csum { start: l4 as u16, offset: 16 }),
        gso: Some(Gso { kind, ecn, size: mss, hdr_len: (l4 + 32) as u16 }),
    }
}

fn resolve_all(frame: &[u8], o: &Offload, max: usize) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut f = frame.to_vec();
    let mut seg = Vec::new();
    let mut out = Vec::new();
    let n = resolve(&mut f, o, max, &mut seg, &mut |s| out.push(s.to_vec()))?;
    assert_eq!(n, out.len());
    Ok(out)
}

fn check_segments(ipv4: bool, vlan: bool, flags: u8, n: usize, mss: u16) {
    let data = payload(n);
    let (f, l3, l4) = tcp_frame(ipv4, vlan, flags, &data);
    let kind = if ipv4 { GsoKind::Tcp4 } else { GsoKind::Tcp6 };
    let segs = resolve_all(&f, &gso(kind, flags & 0x80 != 0, mss, l4), MAX).unwrap();
    let mss = usize::from(mss);
    assert_eq!(segs.len(), n.div_ceil(mss).max(1));
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(s.len() <= MAX);
        assert_eq!(&s[..l3], &f[..l3], "Ethernet header kept");
        if ipv4 {
            assert_eq!(usize::from(u16::from_be_bytes([s[l3 + 2], s[l3 + 3]])), s.len() - l3);
            assert_eq!(u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]), 0x1234 + i as u16);
            assert_eq!(inet_checksum_of(&s[l3..l3 + 20]), 0, "IPv4 header checksum");
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([s[l3 + 4], s[l3 + 5]])), s.len() - l3 - 40);
        }
        let seq = u32::from_be_bytes([s[l4 + 4], s[l4 + 5], s[l4 + 6], s[l4 + 7]]);
        assert_eq!(seq as usize, 1000 + i * mss);
        let last = i + 1 == segs.len();
        let fl = s[l4 + 13];
        assert_eq!(fl & 0x09, if last { flags & 0x09 } else { 0 }, "PSH/FIN on the last only");
        assert_eq!(fl & 0x80, if i == 0 { flags & 0x80 } else { 0 }, "CWR on the first only");
        assert_eq!(fl & 0x10, flags & 0x10, "ACK kept");
        assert!(tcp_ok(s, l3, ipv4, l4), "TCP checksum of segment {}", i);
        joined.extend_from_slice(&s[l4 + 32..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn tcp4_gso_is_segmented_with_every_checksum_right() {
    check_segments(true, false, 0x18, 65000, 1448);
    check_segments(true, false, 0x19, 2896, 1448);
    check_segments(true, false, 0x10, 1, 1448);
    check_segments(true, false, 0x18, 0, 1448);
    check_segments(true, true, 0x18, 10000, 1444);
    check_segments(true, false, 0x98, 5000, 1000); // CWR (ECN)
    check_segments(true, false, 0x18, 4097, MIN_TSO_MSS as u16);
}

#[test]
fn tcp6_gso_is_segmented_with_every_checksum_right() {
    check_segments(false, false, 0x18, 65000, 1428);
    check_segments(false, true, 0x19, 3001, 1400);
}

#[test]
fn a_checksum_request_is_filled_in() {
    // TCP: the field holds the pseudo-header sum (as Linux leaves it).
    let (mut f, l3, l4) = tcp_frame(true, false, 0x18, &payload(999));
    let ip_len = (f.len() - l3) as u16;
    f[l3 + 2..l3 + 4].copy_from_slice(&ip_len.to_be_bytes());
    let mut p = Vec::new();
    p.extend_from_slice(&SRC4);
    p.extend_from_slice(&DST4);
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&((f.len() - l4) as u16).to_be_bytes());
    let partial = !inet_checksum_of(&p);
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let o = Offload { csum: Some(Csum { start: l4 as u16, offset: 16 }), gso: None };
    let out = resolve_all(&f, &o, MAX).unwrap();
    assert_eq!(out.len(), 1);
    assert!(tcp_ok(&out[0], l3, true, l4));
    // Too long for a receiver: refused.
    assert_eq!(resolve_all(&f, &o, f.len() - 1), Err(OffloadError::Length));
    // Nothing to do: the frame as it is.
    assert_eq!(resolve_all(&f, &Offload::NONE, MAX).unwrap(), vec![f.clone()]);
}

#[test]
fn frames_whose_headers_do_not_match_are_refused() {
    let (f, l3, l4) = tcp_frame(true, false, 0x18, &payload(5000));
    let good = gso(GsoKind::Tcp4, false, 1448, l4);
    let cases: Vec<(Vec<u8>, Offload, OffloadError)> = vec![
        // IPv6 GSO of an IPv4 frame.
        (f.clone(), gso(GsoKind::Tcp6, false, 1448, l4), OffloadError::Headers),
        // Not TCP.
        ({ let mut g = f.clone(); g[l3 + 9] = 17; g }, good, OffloadError::Headers),
        // IHL below 5.
        ({ let mut g = f.clone(); g[l3] = 0x44; g }, good, OffloadError::Headers),
        // IP version 6 in an IPv4 ethertype.
        ({ let mut g = f.clone(); g[l3] = 0x65; g }, good, OffloadError::Headers),
        // Checksum start not TCP's header.
        (f.clone(), gso(GsoKind::Tcp4, false, 1448, l4 + 4), OffloadError::Headers),
        // Offset not TCP's checksum.
        (f.clone(), Offload { csum: Some(Csum { start: l4 as u16, offset: 6 }), ..good }, OffloadError::Headers),
        // Data offset below 5, and past the frame.
        ({ let mut g = f.clone(); g[l4 + 12] = 0x40; g }, good, OffloadError::Headers),
        ({ let mut g = f[..l4 + 40].to_vec(); g[l4 + 12] = 0xf0; g }, good, OffloadError::Headers),
        // GSO without a checksum request.
        (f.clone(), Offload { csum: None, ..good }, OffloadError::GsoFields),
        // Too small an MSS, segments too big for the receiver.
        (f.clone(), gso(GsoKind::Tcp4, false, 15, l4), OffloadError::GsoFields),
        (f.clone(), gso(GsoKind::Tcp4, false, 1473, l4), OffloadError::SegmentTooBig),
        // Truncated before the IP header.
        (f[..l3 + 4].to_vec(), good, OffloadError::Headers),
    ];
    for (i, (frame, o, want)) in cases.into_iter().enumerate() {
        assert_eq!(resolve_all(&frame, &o, MAX), Err(want), "case {}", i);
    }
}

fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

const ALL: TxOffloads = TxOffloads { csum: true, tso4: true, tso6: true, ecn: true };

#[test]
fn transmit_headers_are_checked() {
    use vnet_hdr::*;
    let p = |h: [u8; 12], len: usize, a: &TxOffloads| parse_tx_header(&h, len, MAX, a);
    // Nothing asked.
    assert_eq!(p(hdr(0, 0, 0, 0, 0, 0), 60, &TxOffloads::default()), Ok(Offload::NONE));
    // Linux's TSO: hdr_len is its linear part, a hint.
    let o = p(hdr(F_NEEDS_CSUM, GSO_TCPV4, 200, 1448, 34, 16), 65000, &ALL).unwrap();
    assert_eq!(o.gso, Some(Gso { kind: GsoKind::Tcp4, ecn: false, size: 1448, hdr_len: 200 }));
    assert_eq!(o.csum, Some(Csum { start: 34, offset: 16 }));
    assert!(p(hdr(F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 74, 1428, 54, 16), 9000, &ALL).is_ok());
    // A checksum request alone (UDP's field at 6).
    assert!(p(hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 6), 60, &ALL).is_ok());
    let bad: &[([u8; 12], usize, TxOffloads, OffloadError)] = &[
        (hdr(F_DATA_VALID, 0, 0, 0, 0, 0), 60, ALL, OffloadError::Flags),
        (hdr(0x80, 0, 0, 0, 0, 0), 60, ALL, OffloadError::Flags),
        (hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16), 60, TxOffloads::default(), OffloadError::Flags),
        (hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 25), 60, ALL, OffloadError::CsumRange),
        (hdr(F_NEEDS_CSUM, 0, 0, 0, 0xffff, 0xffff), 60, ALL, OffloadError::CsumRange),
        (hdr(F_NEEDS_CSUM, 0, 0, 0, 4, 0), 60, ALL, OffloadError::CsumRange),
        (hdr(F_NEEDS_CSUM, GSO_UDP, 42, 1472, 34, 6), 9000, ALL, OffloadError::GsoType),
        (hdr(F_NEEDS_CSUM, GSO_UDP_L4, 42, 1472, 34, 6), 9000, ALL, OffloadError::GsoType),
        (hdr(F_NEEDS_CSUM, 2, 66, 1448, 34, 16), 9000, ALL, OffloadError::GsoType),
        (hdr(0, GSO_ECN, 0, 0, 0, 0), 60, ALL, OffloadError::GsoType),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16), 9000, TxOffloads { tso4: false, ..ALL }, OffloadError::GsoType),
        (hdr(F_NEEDS_CSUM, GSO_TCPV6, 66, 1448, 54, 16), 9000, TxOffloads { tso6: false, ..ALL }, OffloadError::GsoType),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 66, 1448, 34, 16), 9000, TxOffloads { ecn: false, ..ALL }, OffloadError::GsoType),
        (hdr(0, GSO_TCPV4, 66, 1448, 34, 16), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 6), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 0, 34, 16), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 15, 34, 16), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1465, 34, 16), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 9001, 1448, 34, 16), 9000, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16), 52, ALL, OffloadError::GsoFields),
        (hdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16), MAX_GSO_FRAME + 1, ALL, OffloadError::Length),
        (hdr(0, 0, 0, 0, 0, 0), MAX + 1, ALL, OffloadError::Length),
        (hdr(0, 0, 0, 0, 0, 0), 13, ALL, OffloadError::Length),
    ];
    for (i, (h, len, a, want)) in bad.iter().enumerate() {
        assert_eq!(p(*h, *len, a), Err(*want), "case {}", i);
    }
}

#[test]
fn a_receive_header_says_what_the_transmit_header_said() {
    let o = gso(GsoKind::Tcp6, true, 1428, 54);
    let h = rx_header(&o, 7);
    assert_eq!(u16::from_le_bytes([h[10], h[11]]), 7);
    assert_eq!(parse_tx_header(&h, 9000, MAX, &ALL), Ok(o));
    assert_eq!(rx_header(&Offload::NONE, 1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
}

#[test]
fn receivers_take_only_what_they_negotiated() {
    let csum = Offload { csum: Some(Csum { start: 34, offset: 16 }), gso: None };
    let t4 = gso(GsoKind::Tcp4, false, 1448, 34);
    let t6e = gso(GsoKind::Tcp6, true, 1448, 54);
    assert!(RxOffloads::NONE.accepts(&Offload::NONE));
    assert!(!RxOffloads::NONE.accepts(&csum));
    let c = RxOffloads { csum: true, ..RxOffloads::NONE };
    assert!(c.accepts(&csum) && !c.accepts(&t4));
    let all = RxOffloads { csum: true, tso4: true, tso6: true, ecn: false };
    assert!(all.accepts(&t4) && !all.accepts(&t6e));
    assert!(RxOffloads { ecn: true, ..all }.accepts(&t6e));
}

#[test]
fn random_frames_and_offloads_never_panic_and_stay_bounded() {
    let mut rng = Rng::new(0x6f66_666c);
    let mut seg = Vec::new();
    for round in 0..3000 {
        let (mut f, _, l4) = tcp_frame(rng.chance(50), rng.chance(20), rng.u8(), &payload(rng.below(20_000) as usize));
        for _ in 0..rng.below(6) {
            let at = rng.below(l4 as u64 + 40) as usize % f.len();
            f[at] = rng.u8();
        }
        if rng.chance(10) {
            f.truncate(rng.below(f.len() as u64) as usize);
        }
        let o = if rng.chance(50) {
            let h = hdr(
                rng.u8() & 0x3,
                [0, 1, 3, 4, 5, 0x81, 0x84, rng.u8()][rng.below(8) as usize],
                rng.below(300) as u16,
                rng.below(2000) as u16,
                rng.below(100) as u16,
                rng.below(30) as u16,
            );
            match parse_tx_header(&h, f.len(), MAX, &ALL) {
                Ok(o) => o,
                Err(_) => continue,
            }
        } else {
            gso(if rng.chance(50) { GsoKind::Tcp4 } else { GsoKind::Tcp6 }, false, 16 + rng.below(1500) as u16, l4)
        };
        let max = 64 + rng.below(1500) as usize;
        let mut n = 0;
        let flen = f.len();
        let r = resolve(&mut f, &o, max, &mut seg, &mut |s| {
            assert!(s.len() <= max, "round {}", round);
            n += 1;
        });
        if let Ok(count) = r {
            assert_eq!(count, n);
            assert!(count <= flen / MIN_TSO_MSS + 1);
        }
    }
}

#[test]
fn the_fast_sum_is_the_plain_one() {
    let mut rng = Rng::new(0x73756d);
    for _ in 0..2000 {
        let n = rng.below(3000) as usize;
        let data: Vec<u8> = (0..n).map(|_| if rng.chance(20) { 0xff } else { rng.u8() }).collect();
        let want = inet_checksum_of(&data);
        assert_eq!(!fold(ones_sum(&data)), want, "{} bytes", n);
    }
    assert_eq!(!fold(ones_sum(&[0xff; 65536])), inet_checksum_of(&[0xff; 65536]));
}
