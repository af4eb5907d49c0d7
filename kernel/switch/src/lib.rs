//! One virtual Ethernet switch (a bridge of xl's `vif = [ 'bridge=NAME' ]`)
//! as pure logic: which ports a frame goes to, what is dropped and why,
//! and the counters of every port. The kernel's `bridge.rs` keeps one
//! [`Switch`] per bridge name and moves the bytes.
//!
//! ## Forwarding
//!
//! A port is a guest's vif, with the one MAC address its config (or xl's
//! generated `00:16:3e` address) gives it, or the bridge's uplink, the
//! host's own NIC, behind which any number of machines live.
//!
//! - Broadcast and multicast frames are flooded to every other port.
//! - A unicast frame to a vif's MAC goes to that vif only.
//! - Any other unicast frame goes to the uplink, if the bridge has one,
//!   and is dropped otherwise.
//!
//! That is what a learning switch with anti-spoofing converges to, without
//! the learning table: a vif may only send from its own MAC, so each vif
//! MAC is known from the moment the port exists, and every other address
//! can only be behind the uplink. So there is no table for a hostile guest
//! (or the outside network) to fill or poison, and no unknown-unicast
//! flooding that would show one guest's traffic to another.
//!
//! ## What is dropped
//!
//! - Runts (shorter than an Ethernet header) and frames from a multicast
//!   source address.
//! - Spoofing: a vif's frame whose source is not its own MAC, and an
//!   uplink frame whose source is a local vif's MAC.
//! - A frame addressed to the port it came from.
//! - Floods beyond a port's budget: each port may flood [`FLOOD_BURST`]
//!   frames at once and [`FLOOD_PER_SEC`] a second, so one guest's
//!   broadcast storm costs every other guest at most that much work.
//!
//! Unicast needs no such limit: a sender pays for its frames with its own
//! CPU time (the hypervisor moves them on the sender's vCPU), and a
//! receiver without a free buffer drops (counted as `tx_dropped` on the
//! receiving port, as a NIC counts a full ring).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

#[cfg(test)]
mod tests;

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];

/// Ports on one switch at most.
pub const MAX_PORTS: usize = 64;
/// Frames a port may flood at once.
pub const FLOOD_BURST: u32 = 256;
/// Frames a port may flood per second, on average.
pub const FLOOD_PER_SEC: u32 = 1000;
/// Destination, source, EtherType.
pub const ETH_HLEN: usize = 14;

/// A port, as long as it exists: a removed port's id stays dead even when
/// its slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId {
    index: u16,
    generation: u32,
}

impl PortId {
    /// The slot number (for display; ids compare by generation too).
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }
}

/// What a port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A guest's NIC with this address.
    Vif { mac: Mac },
    /// The host NIC the bridge is joined to.
    Uplink,
}

/// A port's counters, from the port's side as `ip -s link` shows a NIC:
/// `rx_*` is what the switch delivered to the port, `tx_*` what the port
/// sent into the switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames this port sent that were dropped: runts, spoofed, to itself,
    /// to nobody, or over the flood budget.
    pub tx_dropped: u64,
    /// Of those, spoofed.
    pub tx_spoofed: u64,
    /// Frames for this port dropped because it had no free buffer.
    pub rx_dropped: u64,
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// A multicast source address.
    MulticastSource,
    /// A source address the port may not use.
    Spoofed,
    /// Addressed to the port it came from.
    Reflected,
    /// Unicast to no vif, and the bridge has no uplink.
    NoRoute,
    /// Over the port's flood budget.
    FloodLimit,
    /// The port was removed.
    NoSuchPort,
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    /// To this port only.
    Unicast(PortId),
    /// To every port but the sender ([`Switch::flood_targets`]).
    Flood,
}

/// Why a port could not be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddError {
    /// Another vif on this bridge has the address.
    DuplicateMac(Mac),
    /// The bridge already has an uplink.
    SecondUplink,
    /// [`MAX_PORTS`] ports already.
    Full,
    /// A multicast or all-zero address.
    BadMac(Mac),
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::DuplicateMac(m) => write!(f, "MAC address {} is already on this bridge", MacFmt(m)),
            AddError::SecondUplink => write!(f, "the bridge already has an uplink"),
            AddError::Full => write!(f, "the bridge has {} ports already", MAX_PORTS),
            AddError::BadMac(m) => write!(f, "MAC address {} is not a unicast address", MacFmt(m)),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub struct MacFmt<'a>(pub &'a Mac);

impl fmt::Display for MacFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// A token bucket of flood frames.
#[derive(Clone, Copy, Debug)]
struct FloodBudget {
    /// Tokens in thousandths of a frame, so refills of less than one frame
    /// per millisecond are not lost.
    milli_tokens: u64,
    last_ms: u64,
}

impl FloodBudget {
    const CAP: u64 = FLOOD_BURST as u64 * 1000;

    fn new(now_ms: u64) -> Self {
        FloodBudget { milli_tokens: Self::CAP, last_ms: now_ms }
    }

    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // FLOOD_PER_SEC frames a second = FLOOD_PER_SEC milli-frames a ms.
        let refill = elapsed.saturating_mul(u64::from(FLOOD_PER_SEC));
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(Self::CAP);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug)]
struct Port {
    id: PortId,
    kind: PortKind,
    counters: PortCounters,
    flood: FloodBudget,
}

/// One bridge.
#[derive(Clone, Debug, Default)]
pub struct Switch {
    slots: Vec<Option<Port>>,
    /// Generation of each slot's last port.
    generations: Vec<u32>,
    /// Every vif's MAC → its slot.
    owners: BTreeMap<Mac, u16>,
    uplink: Option<u16>,
}

fn is_multicast(m: &Mac) -> bool {
    m[0] & 1 != 0
}

impl Switch {
    pub fn new() -> Self {
        Switch::default()
    }

    /// Adds a port. A vif's MAC must be unicast and not on the bridge yet;
    /// a bridge has at most one uplink.
    pub fn add_port(&mut self, kind: PortKind, now_ms: u64) -> Result<PortId, AddError> {
        match kind {
            PortKind::Vif { mac } => {
                if is_multicast(&mac) || mac == [0; 6] {
                    return Err(AddError::BadMac(mac));
                }
                if self.owners.contains_key(&mac) {
                    return Err(AddError::DuplicateMac(mac));
                }
            }
            PortKind::Uplink if self.uplink.is_some() => return Err(AddError::SecondUplink),
            PortKind::Uplink => {}
        }
        let index = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < MAX_PORTS => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
            None => return Err(AddError::Full),
        };
        self.generations[index] = self.generations[index].wrapping_add(1);
        let id = PortId { index: index as u16, generation: self.generations[index] };
        match kind {
            PortKind::Vif { mac } => {
                self.owners.insert(mac, id.index);
            }
            PortKind::Uplink => self.uplink = Some(id.index),
        }
        self.slots[index] = Some(Port { id, kind, counters: PortCounters::default(), flood: FloodBudget::new(now_ms) });
        Ok(id)
    }

    /// Removes a port; its id is dead from now on. Its counters are
    /// returned (for a last report).
    pub fn remove_port(&mut self, id: PortId) -> Option<PortCounters> {
        self.port(id)?;
        let port = self.slots[id.index()].take()?;
        match port.kind {
            PortKind::Vif { mac } => {
                self.owners.remove(&mac);
            }
            PortKind::Uplink => self.uplink = None,
        }
        Some(port.counters)
    }

    fn port(&self, id: PortId) -> Option<&Port> {
        self.slots.get(id.index())?.as_ref().filter(|p| p.id == id)
    }

    fn port_mut(&mut self, id: PortId) -> Option<&mut Port> {
        self.slots.get_mut(id.index())?.as_mut().filter(|p| p.id == id)
    }

    /// How many ports the switch has.
    pub fn port_count(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Every port with its kind and counters, in slot order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortKind, PortCounters)> + '_ {
        self.slots.iter().flatten().map(|p| (p.id, p.kind, p.counters))
    }

    pub fn counters(&self, id: PortId) -> Option<PortCounters> {
        self.port(id).map(|p| p.counters)
    }

    /// Decides where a frame of `len` bytes from port `from` goes; `header`
    /// is its first bytes (at least [`ETH_HLEN`] unless it is a runt). The
    /// sender's counters are updated; the receivers' are updated by
    /// [`delivered`](Self::delivered) / [`undelivered`](Self::undelivered).
    pub fn ingress(&mut self, from: PortId, header: &[u8], len: usize, now_ms: u64) -> Decision {
        let decision = self.decide(from, header, len, now_ms);
        let Some(p) = self.port_mut(from) else { return Decision::Drop(DropReason::NoSuchPort) };
        match decision {
            Decision::Drop(reason) => {
                p.counters.tx_dropped += 1;
                if reason == DropReason::Spoofed {
                    p.counters.tx_spoofed += 1;
                }
            }
            _ => {
                p.counters.tx_packets += 1;
                p.counters.tx_bytes += len as u64;
            }
        }
        decision
    }

    fn decide(&mut self, from: PortId, header: &[u8], len: usize, now_ms: u64) -> Decision {
        let Some(port) = self.port(from) else { return Decision::Drop(DropReason::NoSuchPort) };
        if len < ETH_HLEN || header.len() < ETH_HLEN {
            return Decision::Drop(DropReason::Runt);
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&header[..6]);
        src.copy_from_slice(&header[6..12]);
        if is_multicast(&src) {
            return Decision::Drop(DropReason::MulticastSource);
        }
        let spoofed = match port.kind {
            PortKind::Vif { mac } => src != mac,
            PortKind::Uplink => self.owners.contains_key(&src),
        };
        if spoofed {
            return Decision::Drop(DropReason::Spoofed);
        }
        if is_multicast(&dst) {
            let Some(p) = self.port_mut(from) else { return Decision::Drop(DropReason::NoSuchPort) };
            return if p.flood.take(now_ms) { Decision::Flood } else { Decision::Drop(DropReason::FloodLimit) };
        }
        let to = match self.owners.get(&dst) {
            Some(&index) => index,
            None => match self.uplink {
                Some(index) => index,
                None => return Decision::Drop(DropReason::NoRoute),
            },
        };
        if to == from.index {
            return Decision::Drop(DropReason::Reflected);
        }
        match self.slots.get(usize::from(to)).and_then(Option::as_ref) {
            Some(p) => Decision::Unicast(p.id),
            None => Decision::Drop(DropReason::NoRoute),
        }
    }

    /// The ports a flood from `from` goes to: every other port.
    pub fn flood_targets(&self, from: PortId, out: &mut Vec<PortId>) {
        out.clear();
        out.extend(self.slots.iter().flatten().map(|p| p.id).filter(|&id| id != from));
    }

    /// A frame of `len` bytes reached port `to`.
    pub fn delivered(&mut self, to: PortId, len: usize) {
        if let Some(p) = self.port_mut(to) {
            p.counters.rx_packets += 1;
            p.counters.rx_bytes += len as u64;
        }
    }

    /// A frame for port `to` was dropped there (no free buffer).
    pub fn undelivered(&mut self, to: PortId) {
        if let Some(p) = self.port_mut(to) {
            p.counters.rx_dropped += 1;
        }
    }
}
