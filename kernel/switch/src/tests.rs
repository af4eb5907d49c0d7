use super::*;

const A: Mac = [0x00, 0x16, 0x3e, 0, 0, 1];
const B: Mac = [0x00, 0x16, 0x3e, 0, 0, 2];
const OUTSIDE: Mac = [0x52, 0x55, 0x0a, 0, 2, 2];
const BCAST: Mac = [0xff; 6];

fn hdr(dst: Mac, src: Mac) -> [u8; 14] {
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12] = 0x08;
    h
}

fn two_vifs() -> (Switch, PortId, PortId) {
    let mut s = Switch::new();
    let a = s.add_port(PortKind::Vif { mac: A }, 0).unwrap();
    let b = s.add_port(PortKind::Vif { mac: B }, 0).unwrap();
    (s, a, b)
}

#[test]
fn unicast_goes_to_the_owner_only() {
    let (mut s, a, b) = two_vifs();
    assert_eq!(s.ingress(a, &hdr(B, A), 100, 0), Decision::Unicast(b));
    assert_eq!(s.ingress(b, &hdr(A, B), 100, 0), Decision::Unicast(a));
    assert_eq!(s.counters(a).unwrap().tx_packets, 1);
    assert_eq!(s.counters(a).unwrap().tx_bytes, 100);
}

#[test]
fn broadcast_and_multicast_flood_every_other_port() {
    let (mut s, a, b) = two_vifs();
    let up = s.add_port(PortKind::Uplink, 0).unwrap();
    assert_eq!(s.ingress(a, &hdr(BCAST, A), 60, 0), Decision::Flood);
    assert_eq!(s.ingress(a, &hdr([0x01, 0, 0x5e, 0, 0, 1], A), 60, 0), Decision::Flood);
    let mut out = Vec::new();
    s.flood_targets(a, &mut out);
    assert_eq!(out, [b, up]);
}

#[test]
fn unknown_unicast_goes_to_the_uplink_or_nowhere() {
    let (mut s, a, _) = two_vifs();
    assert_eq!(s.ingress(a, &hdr(OUTSIDE, A), 60, 0), Decision::Drop(DropReason::NoRoute));
    let up = s.add_port(PortKind::Uplink, 0).unwrap();
    assert_eq!(s.ingress(a, &hdr(OUTSIDE, A), 60, 0), Decision::Unicast(up));
    assert_eq!(s.ingress(up, &hdr(A, OUTSIDE), 60, 0), Decision::Unicast(a));
    // From the uplink to an address that is not here: not flooded back.
    assert_eq!(s.ingress(up, &hdr([0x02, 0, 0, 0, 0, 9], OUTSIDE), 60, 0), Decision::Drop(DropReason::Reflected));
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let (mut s, a, _) = two_vifs();
    let up = s.add_port(PortKind::Uplink, 0).unwrap();
    assert_eq!(s.ingress(a, &hdr(B, B), 60, 0), Decision::Drop(DropReason::Spoofed));
    assert_eq!(s.ingress(a, &hdr(B, OUTSIDE), 60, 0), Decision::Drop(DropReason::Spoofed));
    // The outside may not pretend to be a local guest.
    assert_eq!(s.ingress(up, &hdr(B, A), 60, 0), Decision::Drop(DropReason::Spoofed));
    assert_eq!(s.ingress(a, &hdr(B, [0x01, 0, 0, 0, 0, 1]), 60, 0), Decision::Drop(DropReason::MulticastSource));
    let c = s.counters(a).unwrap();
    assert_eq!((c.tx_packets, c.tx_dropped, c.tx_spoofed), (0, 3, 2));
}

#[test]
fn runts_and_frames_to_oneself_are_dropped() {
    let (mut s, a, _) = two_vifs();
    assert_eq!(s.ingress(a, &hdr(B, A)[..13], 13, 0), Decision::Drop(DropReason::Runt));
    assert_eq!(s.ingress(a, &hdr(B, A), 10, 0), Decision::Drop(DropReason::Runt));
    assert_eq!(s.ingress(a, &hdr(A, A), 60, 0), Decision::Drop(DropReason::Reflected));
}

#[test]
fn duplicate_macs_second_uplinks_and_bad_macs_are_refused() {
    let (mut s, _, _) = two_vifs();
    assert_eq!(s.add_port(PortKind::Vif { mac: A }, 0), Err(AddError::DuplicateMac(A)));
    assert_eq!(s.add_port(PortKind::Vif { mac: BCAST }, 0), Err(AddError::BadMac(BCAST)));
    assert_eq!(s.add_port(PortKind::Vif { mac: [0; 6] }, 0), Err(AddError::BadMac([0; 6])));
    s.add_port(PortKind::Uplink, 0).unwrap();
    assert_eq!(s.add_port(PortKind::Uplink, 0), Err(AddError::SecondUplink));
}

#[test]
fn a_removed_port_leaves_nothing_behind_and_its_id_stays_dead() {
    let (mut s, a, b) = two_vifs();
    assert!(s.remove_port(b).is_some());
    assert_eq!(s.port_count(), 1);
    assert_eq!(s.ingress(a, &hdr(B, A), 60, 0), Decision::Drop(DropReason::NoRoute));
    assert_eq!(s.ingress(b, &hdr(A, B), 60, 0), Decision::Drop(DropReason::NoSuchPort));
    // The MAC is free again, the slot is reused, the old id still dead.
    let b2 = s.add_port(PortKind::Vif { mac: B }, 0).unwrap();
    assert_eq!(b2.index(), b.index());
    assert_ne!(b2, b);
    assert_eq!(s.ingress(b, &hdr(A, B), 60, 0), Decision::Drop(DropReason::NoSuchPort));
    assert_eq!(s.ingress(a, &hdr(B, A), 60, 0), Decision::Unicast(b2));
    assert!(s.remove_port(b).is_none());
}

#[test]
fn ports_are_bounded() {
    let mut s = Switch::new();
    for i in 0..MAX_PORTS {
        s.add_port(PortKind::Vif { mac: [0, 0x16, 0x3e, 0, 1, i as u8] }, 0).unwrap();
    }
    assert_eq!(s.add_port(PortKind::Vif { mac: [0, 0x16, 0x3e, 0, 2, 0] }, 0), Err(AddError::Full));
}

#[test]
fn a_broadcast_storm_is_held_to_the_flood_budget() {
    let (mut s, a, b) = two_vifs();
    let flooded = (0..10_000).filter(|_| s.ingress(a, &hdr(BCAST, A), 60, 5) == Decision::Flood).count();
    assert_eq!(flooded, FLOOD_BURST as usize);
    // A second later, another second's worth.
    let flooded = (0..10_000).filter(|_| s.ingress(a, &hdr(BCAST, A), 60, 1005) == Decision::Flood).count();
    assert_eq!(flooded, FLOOD_BURST.min(FLOOD_PER_SEC) as usize);
    // Unicast and the other port's floods are not affected.
    assert_eq!(s.ingress(a, &hdr(B, A), 60, 1005), Decision::Unicast(b));
    assert_eq!(s.ingress(b, &hdr(BCAST, B), 60, 1005), Decision::Flood);
    // A clock that goes backwards gives nothing.
    let flooded = (0..10).filter(|_| s.ingress(a, &hdr(BCAST, A), 60, 0) == Decision::Flood).count();
    assert_eq!(flooded, 0);
}

#[test]
fn the_flood_budget_refills_at_its_rate() {
    let (mut s, a, _) = two_vifs();
    for _ in 0..FLOOD_BURST {
        assert_eq!(s.ingress(a, &hdr(BCAST, A), 60, 0), Decision::Flood);
    }
    let mut flooded = 0;
    for ms in 1..=100u64 {
        while s.ingress(a, &hdr(BCAST, A), 60, ms) == Decision::Flood {
            flooded += 1;
        }
    }
    assert_eq!(flooded, (FLOOD_PER_SEC / 10) as usize);
}

#[test]
fn receiver_counters() {
    let (mut s, _, b) = two_vifs();
    s.delivered(b, 60);
    s.undelivered(b);
    let c = s.counters(b).unwrap();
    assert_eq!((c.rx_packets, c.rx_bytes, c.rx_dropped), (1, 60, 1));
}
