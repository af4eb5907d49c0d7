//! Network offloads as pure logic, shared by the NIC models and the
//! hypervisor's bridge: the Internet checksum, TCP segmentation (one
//! large packet cut into MSS-sized frames, each with its headers fixed
//! up), and virtio-net's offload header (virtio 1.x §5.1.6), checked.
//!
//! - The e1000 model ([`crate::e1000`]) segments and checksums what its
//!   guest's context descriptors ask for with [`segment`] and
//!   [`put_checksum`], with the hardware's rules for the partial sums.
//! - virtio-net ([`crate::virtio::net`]) parses a transmit header into an
//!   [`Offload`] with [`parse_tx_header`]: what the frame still needs
//!   (a checksum at a place, segmentation) travels with it over the
//!   bridge. A receiver that negotiated the matching features
//!   ([`RxOffloads::accepts`]) takes it as it is, with the same request
//!   in its receive header ([`rx_header`]); for every other receiver the
//!   bridge does the work in software with [`resolve`], which reads and
//!   checks the frame's own headers (never trusting the sender's
//!   `hdr_len`, a hint only) and computes every checksum from scratch.
//!
//! Everything here takes hostile input: offsets outside the frame,
//! headers that do not parse and absurd segment sizes are refused
//! ([`OffloadError`]), never a panic, and the work is bounded by the
//! frame's length ([`MIN_TSO_MSS`]).

use alloc::vec::Vec;

/// Destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
/// TCP flag bits in byte 13 of the header.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Where TCP's checksum is, from the start of its header.
const TCP_CSUM_OFFSET: u16 = 16;

/// Smallest MSS segmented. No real TCP uses less (Linux sends at least
/// 48), and it bounds what one packet can turn into: a 64 KiB packet makes
/// at most 4096 segments.
pub const MIN_TSO_MSS: usize = 16;

/// The largest frame a segmentation offload carries: an IP packet of at
/// most 64 KiB after an Ethernet header with an 802.1Q tag.
pub const MAX_GSO_FRAME: usize = 64 * 1024 + ETH_HLEN + 4;

/// The ones'-complement sum of `data` as big-endian 16-bit words (an odd
/// last byte padded with zero), not folded: at most 2^16 - 1 per word, so
/// a frame of any size fits.
///
/// Summed four bytes at a time in the machine's order and swapped at the
/// end (RFC 1071 §2(B): the sum does not depend on byte order), about
/// one addition per four bytes.
pub fn ones_sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    let mut sum: u64 = chunks.by_ref().map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))).sum();
    let mut tail = [0u8; 4];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    sum += u64::from(u32::from_le_bytes(tail));
    // Little-endian words: fold to 16 bits, then swap into network order.
    u64::from(fold(sum).swap_bytes())
}

/// Folds a ones'-complement sum into 16 bits.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `frame[css..=cse]` (to the end when `cse` is
/// 0 or past it), including what the checksum field holds (a
/// pseudo-header sum, or 0), stored at `cso`. Offsets outside the frame
/// leave it as it is. A result of 0 is stored as 0xFFFF (the same sum;
/// 0 means "no checksum" to UDP).
pub fn put_checksum(frame: &mut [u8], cso: usize, css: usize, cse: usize) {
    let n = frame.len();
    let end = if cse != 0 && cse < n { cse + 1 } else { n };
    if css >= end || cso.saturating_add(2) > n {
        return;
    }
    let c = !fold(ones_sum(&frame[css..end]));
    let c = if c == 0 { 0xffff } else { c };
    put_be16(frame, cso, c);
}

pub(crate) fn get_be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at.checked_add(1)?)?]))
}

pub(crate) fn get_be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = at.checked_add(2).and_then(|e| b.get_mut(at..e)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

pub(crate) fn put_be32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = at.checked_add(4).and_then(|e| b.get_mut(at..e)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// How to cut a packet into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tso {
    /// Bytes of headers (Ethernet to L4) copied in front of each segment.
    pub hdr_len: usize,
    /// Payload bytes per segment (the last may have fewer).
    pub mss: usize,
    /// Where the IP header starts.
    pub l3: usize,
    /// IPv4 (total length and ID fixed up) or IPv6 (payload length).
    pub ipv4: bool,
    /// Where the TCP or UDP header starts.
    pub l4: usize,
    /// TCP (sequence number and flags) or UDP (its length).
    pub tcp: bool,
    /// Clear CWR in every segment after the first (what Linux's own GSO
    /// does for a packet with ECN).
    pub cwr_first_only: bool,
}

/// Cuts `packet` into segments as `t` says: the header in front of each
/// `mss` bytes of payload, with the IP total length (or IPv6 payload
/// length) and ID, the TCP sequence number (or UDP length) fixed up, and
/// PSH and FIN kept for the last segment only. Checksums are the
/// caller's: `each` gets every segment (built in `seg`, whose capacity is
/// reused), its index and its L4 length, to finish and send. Returns the
/// number of segments, or `None` (and nothing sent) when the header does
/// not fit the packet or the MSS is below [`MIN_TSO_MSS`]. Offsets
/// outside the header are the caller's to refuse; here a field outside
/// the segment is left alone.
pub fn segment(
    packet: &[u8],
    t: &Tso,
    seg: &mut Vec<u8>,
    each: &mut dyn FnMut(&mut Vec<u8>, usize, usize),
) -> Option<usize> {
    let hdr = t.hdr_len;
    let mss = t.mss;
    if hdr < ETH_HLEN || hdr > packet.len() || mss < MIN_TSO_MSS {
        return None;
    }
    let payload = &packet[hdr..];
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let start = (i * mss).min(payload.len());
        let end = (start + mss).min(payload.len());
        seg.clear();
        seg.extend_from_slice(&packet[..hdr]);
        seg.extend_from_slice(&payload[start..end]);
        let len = seg.len();
        if t.ipv4 {
            put_be16(seg, t.l3 + 2, len.saturating_sub(t.l3) as u16);
            if let Some(id) = get_be16(seg, t.l3 + 4) {
                put_be16(seg, t.l3 + 4, id.wrapping_add(i as u16));
            }
        } else {
            put_be16(seg, t.l3 + 4, len.saturating_sub(t.l3 + IPV6_HLEN) as u16);
        }
        let l4len = len.saturating_sub(t.l4);
        if t.tcp {
            if let Some(seq) = get_be32(seg, t.l4 + 4) {
                put_be32(seg, t.l4 + 4, seq.wrapping_add((i * mss) as u32));
            }
            if let Some(flags) = seg.get_mut(t.l4 + 13) {
                if i + 1 < count {
                    *flags &= !(TCP_PSH | TCP_FIN);
                }
                if i > 0 && t.cwr_first_only {
                    *flags &= !TCP_CWR;
                }
            }
        } else {
            put_be16(seg, t.l4 + 4, l4len as u16);
        }
        each(seg, i, l4len);
    }
    Some(count)
}

/// The IPv4 header checksum of the header at `l3` (its IHL), computed
/// afresh.
pub fn fill_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let Some(&vihl) = frame.get(l3) else { return };
    let ihl = usize::from(vihl & 0xf) * 4;
    if ihl < 20 || l3 + ihl > frame.len() {
        return;
    }
    put_be16(frame, l3 + 10, 0);
    let c = !fold(ones_sum(&frame[l3..l3 + ihl]));
    put_be16(frame, l3 + 10, c);
}

/// The TCP checksum of the segment at `l4` (to the end of `frame`),
/// computed afresh: the pseudo-header from the IPv4 or IPv6 header at
/// `l3`, whatever the field held before.
pub fn fill_tcp_checksum(frame: &mut [u8], l3: usize, ipv4: bool, l4: usize) {
    let csum_at = l4 + usize::from(TCP_CSUM_OFFSET);
    if l4 > frame.len() || csum_at + 2 > frame.len() {
        return;
    }
    let l4len = (frame.len() - l4) as u64;
    let pseudo = if ipv4 {
        match frame.get(l3 + 12..l3 + 20) {
            Some(addrs) => ones_sum(addrs),
            None => return,
        }
    } else {
        match frame.get(l3 + 8..l3 + 40) {
            Some(addrs) => ones_sum(addrs),
            None => return,
        }
    } + u64::from(IPPROTO_TCP)
        + (l4len & 0xffff)
        + (l4len >> 16);
    put_be16(frame, csum_at, 0);
    let c = !fold(pseudo + ones_sum(&frame[l4..]));
    put_be16(frame, csum_at, c);
}

/// virtio-net's per-packet header (`struct virtio_net_hdr_v1`).
pub mod vnet_hdr {
    /// Its length with VERSION_1 (`num_buffers` included).
    pub const LEN: usize = 12;
    /// flags: the checksum from `csum_start` on goes at `csum_start +
    /// csum_offset`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// flags (receive only): the checksums were checked.
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    /// gso_type bit: the TCP packet has CWR set (ECN).
    pub const GSO_ECN: u8 = 0x80;
}

/// Where a frame's checksum goes (virtio's NEEDS_CSUM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csum {
    /// Offset in the frame where the sum starts (to the end).
    pub start: u16,
    /// Where it goes, from `start`.
    pub offset: u16,
}

/// The segmentation a frame still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// The packet has ECN's CWR set (virtio's GSO_ECN).
    pub ecn: bool,
    /// Payload bytes per segment.
    pub size: u16,
    /// The sender's header length: a hint, passed on, never relied on.
    pub hdr_len: u16,
}

/// What a frame still needs before it is on the wire: nothing, its
/// checksum, or segmentation (which always comes with the checksum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    pub csum: Option<Csum>,
    pub gso: Option<Gso>,
}

impl Offload {
    pub const NONE: Offload = Offload { csum: None, gso: None };

    pub fn is_none(&self) -> bool {
        self.csum.is_none() && self.gso.is_none()
    }
}

/// The offloads a transmitting driver negotiated (the HOST_* features
/// and CSUM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub ecn: bool,
}

/// The offloads a receiver takes as they are (the GUEST_* features).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxOffloads {
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub ecn: bool,
}

impl RxOffloads {
    pub const NONE: RxOffloads = RxOffloads { csum: false, tso4: false, tso6: false, ecn: false };

    /// Whether a frame with `o` may be handed over as it is.
    pub fn accepts(&self, o: &Offload) -> bool {
        if o.csum.is_some() && !self.csum {
            return false;
        }
        match o.gso {
            None => true,
            Some(g) => {
                let kind = match g.kind {
                    GsoKind::Tcp4 => self.tso4,
                    GsoKind::Tcp6 => self.tso6,
                };
                kind && (!g.ecn || self.ecn)
            }
        }
    }
}

/// Why an offload header or a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// flags with bits other than NEEDS_CSUM, or NEEDS_CSUM not negotiated.
    Flags,
    /// csum_start/csum_offset outside the frame.
    CsumRange,
    /// A GSO type that is unknown or was not negotiated (UDP included).
    GsoType,
    /// GSO without NEEDS_CSUM, or gso_size/hdr_len nonsense.
    GsoFields,
    /// Longer than allowed for its kind (with or without GSO).
    Length,
    /// The frame's own headers do not match the offload (software path).
    Headers,
    /// Segments would not fit the receiver's frame size.
    SegmentTooBig,
}

/// Parses and checks a transmit header for a frame of `frame_len` bytes
/// (after the header) from a driver that negotiated `allowed`. The frame
/// may be at most `max_frame` bytes without GSO and [`MAX_GSO_FRAME`]
/// with; a GSO frame's segments (its hdr_len hint plus gso_size) at most
/// `max_frame`.
pub fn parse_tx_header(
    hdr: &[u8; vnet_hdr::LEN],
    frame_len: usize,
    max_frame: usize,
    allowed: &TxOffloads,
) -> Result<Offload, OffloadError> {
    let flags = hdr[0];
    let gso_type = hdr[1];
    let hdr_len = u16::from_le_bytes([hdr[2], hdr[3]]);
    let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
    let csum_start = u16::from_le_bytes([hdr[6], hdr[7]]);
    let csum_offset = u16::from_le_bytes([hdr[8], hdr[9]]);
    if frame_len < ETH_HLEN {
        return Err(OffloadError::Length);
    }
    if flags & !vnet_hdr::F_NEEDS_CSUM != 0 || (flags != 0 && !allowed.csum) {
        return Err(OffloadError::Flags);
    }
    let csum = if flags & vnet_hdr::F_NEEDS_CSUM != 0 {
        let at = usize::from(csum_start) + usize::from(csum_offset);
        if usize::from(csum_start) < ETH_HLEN || at + 2 > frame_len {
            return Err(OffloadError::CsumRange);
        }
        Some(Csum { start: csum_start, offset: csum_offset })
    } else {
        None
    };
    let ecn = gso_type & vnet_hdr::GSO_ECN != 0;
    let kind = match gso_type & !vnet_hdr::GSO_ECN {
        vnet_hdr::GSO_NONE if !ecn => None,
        vnet_hdr::GSO_TCPV4 if allowed.tso4 => Some(GsoKind::Tcp4),
        vnet_hdr::GSO_TCPV6 if allowed.tso6 => Some(GsoKind::Tcp6),
        _ => return Err(OffloadError::GsoType),
    };
    if ecn && !allowed.ecn {
        return Err(OffloadError::GsoType);
    }
    let gso = match kind {
        None => {
            if frame_len > max_frame {
                return Err(OffloadError::Length);
            }
            None
        }
        Some(kind) => {
            // The checksum must be TCP's, and its header must fit.
            let Some(c) = csum else { return Err(OffloadError::GsoFields) };
            if c.offset != TCP_CSUM_OFFSET
                || usize::from(c.start) + 20 > frame_len
                || usize::from(gso_size) < MIN_TSO_MSS
                || usize::from(hdr_len) > frame_len
                || usize::from(c.start) + 20 + usize::from(gso_size) > max_frame
            {
                return Err(OffloadError::GsoFields);
            }
            if frame_len > MAX_GSO_FRAME {
                return Err(OffloadError::Length);
            }
            Some(Gso { kind, ecn, size: gso_size, hdr_len })
        }
    };
    Ok(Offload { csum, gso })
}

/// The receive header for a frame with `o` (which the receiver accepts)
/// spread over `num_buffers` buffers.
pub fn rx_header(o: &Offload, num_buffers: u16) -> [u8; vnet_hdr::LEN] {
    let mut h = [0u8; vnet_hdr::LEN];
    if let Some(c) = o.csum {
        h[0] = vnet_hdr::F_NEEDS_CSUM;
        h[6..8].copy_from_slice(&c.start.to_le_bytes());
        h[8..10].copy_from_slice(&c.offset.to_le_bytes());
    }
    if let Some(g) = o.gso {
        h[1] = match g.kind {
            GsoKind::Tcp4 => vnet_hdr::GSO_TCPV4,
            GsoKind::Tcp6 => vnet_hdr::GSO_TCPV6,
        } | if g.ecn { vnet_hdr::GSO_ECN } else { 0 };
        h[2..4].copy_from_slice(&g.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&g.size.to_le_bytes());
    }
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

/// Does in software what `o` asks of `frame` (the whole frame, in host
/// memory): fills its checksum, or cuts it into segments of at most
/// `max_frame` bytes with every checksum filled; `out` gets each
/// resulting frame. Returns how many frames went to `out`. The frame's
/// own headers are read and checked: a GSO frame must be an Ethernet
/// frame (one 802.1Q tag at most) carrying IPv4 or IPv6 (no extension
/// headers) and TCP, with the checksum request pointing at TCP's field.
pub fn resolve(
    frame: &mut [u8],
    o: &Offload,
    max_frame: usize,
    seg: &mut Vec<u8>,
    out: &mut dyn FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let Some(g) = o.gso else {
        if frame.len() > max_frame || frame.len() < ETH_HLEN {
            return Err(OffloadError::Length);
        }
        if let Some(c) = o.csum {
            let start = usize::from(c.start);
            let at = start + usize::from(c.offset);
            if start < ETH_HLEN || at + 2 > frame.len() {
                return Err(OffloadError::CsumRange);
            }
            put_checksum(frame, at, start, 0);
        }
        out(frame);
        return Ok(1);
    };
    let Some(c) = o.csum else { return Err(OffloadError::GsoFields) };
    let (l3, ethertype) = match get_be16(frame, 12) {
        Some(ETH_P_8021Q) => (ETH_HLEN + 4, get_be16(frame, 16)),
        t => (ETH_HLEN, t),
    };
    let ipv4 = g.kind == GsoKind::Tcp4;
    let l4 = if ipv4 {
        if ethertype != Some(ETH_P_IPV4) {
            return Err(OffloadError::Headers);
        }
        let vihl = *frame.get(l3).ok_or(OffloadError::Headers)?;
        let ihl = usize::from(vihl & 0xf) * 4;
        if vihl >> 4 != 4 || ihl < 20 || frame.get(l3 + 9) != Some(&IPPROTO_TCP) {
            return Err(OffloadError::Headers);
        }
        l3 + ihl
    } else {
        if ethertype != Some(ETH_P_IPV6) {
            return Err(OffloadError::Headers);
        }
        let v = *frame.get(l3).ok_or(OffloadError::Headers)?;
        if v >> 4 != 6 || frame.get(l3 + 6) != Some(&IPPROTO_TCP) {
            return Err(OffloadError::Headers);
        }
        l3 + IPV6_HLEN
    };
    if usize::from(c.start) != l4 || c.offset != TCP_CSUM_OFFSET {
        return Err(OffloadError::Headers);
    }
    let doff = usize::from(*frame.get(l4 + 12).ok_or(OffloadError::Headers)? >> 4) * 4;
    let hdr_len = l4 + doff;
    if doff < 20 || hdr_len > frame.len() {
        return Err(OffloadError::Headers);
    }
    let mss = usize::from(g.size);
    if mss < MIN_TSO_MSS {
        return Err(OffloadError::GsoFields);
    }
    if hdr_len + mss > max_frame {
        return Err(OffloadError::SegmentTooBig);
    }
    let t = Tso { hdr_len, mss, l3, ipv4, l4, tcp: true, cwr_first_only: true };
    segment(frame, &t, seg, &mut |s, _, _| {
        if ipv4 {
            fill_ipv4_checksum(s, l3);
        }
        fill_tcp_checksum(s, l3, ipv4, l4);
        out(s);
    })
    .ok_or(OffloadError::Headers)
}

#[cfg(test)]
#[path = "net_offload_tests.rs"]
mod tests;
