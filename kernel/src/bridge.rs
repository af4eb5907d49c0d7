//! The bridges of `vif = [ 'bridge=NAME' ]`: one virtual Ethernet switch
//! per name (`ferrite_switch` decides; this module moves the bytes), made
//! when its first port joins and gone with its last. A port is a guest's
//! NIC (`vnet`) or the bridge's uplink; whatever it is, it receives frames
//! through the [`Endpoint`] trait, so this module knows nothing of
//! domains or devices.
//!
//! A frame is moved on the sending vCPU: the switch's decision is taken
//! under the bridge's lock, the lock is dropped, and each destination
//! copies the frame straight from the sender's memory into its own
//! receive buffer (one copy). No lock of this module is held while an
//! endpoint runs, so two guests sending to each other at once cannot
//! deadlock.
//!
//! A frame from a PVH guest's virtio-net may still need work its sender
//! offloaded ([`Offload`]: its checksum, or cutting a TCP segment of up
//! to 64 KiB into frames). A receiver that takes that as it is
//! ([`Endpoint::offloads`]: a PVH virtio-net that negotiated the GUEST_*
//! features) gets the frame whole, still one copy; for every other one
//! (the uplink, HVM NICs through their stub's ring, PVH NICs without the
//! features) the bridge gathers the frame once and does the work in
//! software (`ferrite_devmodel::net_offload::resolve`: every checksum
//! filled, frames of at most `MAX_FRAME` bytes). A frame whose headers do
//! not match what its sender asked for is dropped for those receivers.

use crate::mm::guest::GuestMemory;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use ferrite_devmodel::net_offload::{resolve, Offload, RxOffloads};
use ferrite_devmodel::virtio::net::MAX_FRAME;
use ferrite_devmodel::virtio::queue::Buffer;
use ferrite_switch::{Decision, PortCounters, PortId, PortKind, Switch, ETH_HLEN};
use spin::Mutex;

/// A frame on its way: still in the sender's guest memory (with what its
/// sender offloaded, checked), or in a host buffer (from the uplink, or
/// resolved by the bridge).
pub enum Frame<'a> {
    Guest { mem: &'a GuestMemory, pieces: &'a [Buffer], len: u32, offload: Offload },
    Host(&'a [u8]),
}

impl Frame<'_> {
    /// What the frame still needs before it is on the wire.
    pub fn offload(&self) -> Offload {
        match self {
            Frame::Guest { offload, .. } => *offload,
            Frame::Host(_) => Offload::NONE,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Frame::Guest { len, .. } => *len as usize,
            Frame::Host(b) => b.len(),
        }
    }

    /// The first bytes (up to the Ethernet header); fewer when the frame
    /// is shorter or unreadable.
    fn header(&self, out: &mut [u8; ETH_HLEN]) -> usize {
        match self {
            Frame::Host(b) => {
                let n = b.len().min(ETH_HLEN);
                out[..n].copy_from_slice(&b[..n]);
                n
            }
            Frame::Guest { mem, pieces, .. } => {
                let mut done = 0;
                for p in pieces.iter() {
                    let n = (p.len as usize).min(ETH_HLEN - done);
                    if n == 0 || mem.read(p.gpa, &mut out[done..done + n]).is_err() {
                        break;
                    }
                    done += n;
                }
                done
            }
        }
    }

    /// Copies the frame into `buf` (exactly `bytes()` long); false if a
    /// piece is not RAM.
    pub fn copy_into(&self, buf: &mut [u8]) -> bool {
        match self {
            Frame::Host(b) => {
                if b.len() != buf.len() {
                    return false;
                }
                buf.copy_from_slice(b);
                true
            }
            Frame::Guest { mem, pieces, len, .. } => {
                if *len as usize != buf.len() {
                    return false;
                }
                let mut done = 0usize;
                for p in pieces.iter() {
                    let n = (p.len as usize).min(buf.len() - done);
                    if n > 0 && mem.read(p.gpa, &mut buf[done..done + n]).is_err() {
                        return false;
                    }
                    done += n;
                }
                done == buf.len()
            }
        }
    }

    /// Copies the frame into `dst`'s memory at the pieces `to` (which hold
    /// at least `len()` bytes). False if a piece on either side is not RAM
    /// or `to` is too short.
    pub fn copy_to(&self, dst: &GuestMemory, to: &[Buffer]) -> bool {
        let mut cur = Cursor { pieces: to, index: 0, offset: 0 };
        match self {
            Frame::Guest { mem, pieces, len, .. } => {
                let mut left = u64::from(*len);
                for p in pieces.iter() {
                    let n = u64::from(p.len).min(left);
                    let mut done = 0;
                    while done < n {
                        let Some((d, k)) = cur.take(n - done) else { return false };
                        let Some(src) = p.gpa.checked_add(done) else { return false };
                        if dst.copy_from_guest(d, mem, src, k).is_err() {
                            return false;
                        }
                        done += k;
                    }
                    left -= n;
                }
                left == 0
            }
            Frame::Host(bytes) => {
                let mut done = 0usize;
                while done < bytes.len() {
                    let Some((d, k)) = cur.take((bytes.len() - done) as u64) else { return false };
                    if dst.write(d, &bytes[done..done + k as usize]).is_err() {
                        return false;
                    }
                    done += k as usize;
                }
                true
            }
        }
    }
}

/// A position in a list of guest buffers.
struct Cursor<'a> {
    pieces: &'a [Buffer],
    index: usize,
    offset: u64,
}

impl Cursor<'_> {
    /// The next at most `max` bytes: where they go and how many.
    fn take(&mut self, max: u64) -> Option<(u64, u64)> {
        loop {
            let p = self.pieces.get(self.index)?;
            let len = u64::from(p.len);
            if self.offset >= len {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = max.min(len - self.offset);
            let gpa = p.gpa.checked_add(self.offset)?;
            self.offset += n;
            return Some((gpa, n));
        }
    }
}

/// A NIC as `xl network-list` shows it.
pub struct VifStats {
    pub mac: [u8; 6],
    pub bridge: String,
    pub model: &'static str,
    /// On its bridge now (false once its domain stopped).
    pub connected: bool,
    /// The bridge port's counters (zero once it left the bridge); its
    /// `rx_dropped` counts the frames the NIC had no room for.
    pub port: PortCounters,
}

/// Something a bridge delivers frames to.
pub trait Endpoint: Send + Sync {
    /// The offloads the port takes in frames as they are; frames needing
    /// others are resolved by the bridge first.
    fn offloads(&self) -> RxOffloads {
        RxOffloads::NONE
    }

    /// Puts `frame` into the port's receive side; false when it was
    /// dropped there (no free buffer, device not ready).
    fn deliver(&self, frame: &Frame) -> bool;
}

struct BridgeState {
    switch: Switch,
    endpoints: BTreeMap<PortId, Weak<dyn Endpoint>>,
}

pub struct Bridge {
    name: String,
    state: Mutex<BridgeState>,
}

static BRIDGES: Mutex<BTreeMap<String, Arc<Bridge>>> = Mutex::new(BTreeMap::new());

fn now_ms() -> u64 {
    crate::arch::time::now_ns() / 1_000_000
}

/// A port on a bridge, for as long as this handle lives.
pub struct Port {
    bridge: Arc<Bridge>,
    id: PortId,
}

impl Port {
    /// Joins bridge `name` (made if it does not exist yet) as `kind`,
    /// delivering to `endpoint`. Refused (with the reason) for a MAC
    /// already on the bridge, a second uplink, or a full bridge.
    pub fn join(name: &str, kind: PortKind, endpoint: Weak<dyn Endpoint>) -> Result<Port, String> {
        let mut bridges = BRIDGES.lock();
        let bridge = bridges
            .entry(String::from(name))
            .or_insert_with(|| {
                Arc::new(Bridge {
                    name: String::from(name),
                    state: Mutex::new(BridgeState { switch: Switch::new(), endpoints: BTreeMap::new() }),
                })
            })
            .clone();
        let mut st = bridge.state.lock();
        let id = st.switch.add_port(kind, now_ms()).map_err(|e| alloc::format!("bridge {}: {}", name, e))?;
        st.endpoints.insert(id, endpoint);
        drop(st);
        Ok(Port { bridge, id })
    }

    pub fn bridge_name(&self) -> &str {
        &self.bridge.name
    }

    pub fn counters(&self) -> PortCounters {
        self.bridge.state.lock().switch.counters(self.id).unwrap_or_default()
    }

    /// Sends a frame from this port: to its owner, to every other port
    /// (broadcast, multicast), to the uplink, or nowhere (dropped and
    /// counted by the switch).
    pub fn send(&self, frame: &Frame) {
        let mut header = [0u8; ETH_HLEN];
        let hlen = frame.header(&mut header);
        let mut targets: Vec<(PortId, Arc<dyn Endpoint>)> = Vec::new();
        {
            let mut st = self.bridge.state.lock();
            let decision = st.switch.ingress(self.id, &header[..hlen], frame.bytes(), now_ms());
            let ids: Vec<PortId> = match decision {
                Decision::Drop(_) => return,
                Decision::Unicast(to) => alloc::vec![to],
                Decision::Flood => {
                    let mut out = Vec::new();
                    st.switch.flood_targets(self.id, &mut out);
                    out
                }
            };
            for id in ids {
                if let Some(ep) = st.endpoints.get(&id).and_then(Weak::upgrade) {
                    targets.push((id, ep));
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let offload = frame.offload();
        let mut results: Vec<(PortId, bool)> = Vec::with_capacity(targets.len());
        let mut soft: Vec<(PortId, &Arc<dyn Endpoint>, bool)> = Vec::new();
        for (id, ep) in &targets {
            if offload.is_none() || ep.offloads().accepts(&offload) {
                results.push((*id, ep.deliver(frame)));
            } else {
                soft.push((*id, ep, true));
            }
        }
        if !soft.is_empty() {
            let done = resolve_frame(frame, &offload, &mut |seg| {
                for (_, ep, ok) in soft.iter_mut() {
                    *ok &= ep.deliver(&Frame::Host(seg));
                }
            });
            results.extend(soft.iter().map(|(id, _, ok)| (*id, done && *ok)));
        }
        let mut st = self.bridge.state.lock();
        for (id, ok) in results {
            if ok {
                st.switch.delivered(id, frame.bytes());
            } else {
                st.switch.undelivered(id);
            }
        }
    }
}

/// Gathers `frame` and does what `offload` asks in software, handing
/// each resulting frame (at most `MAX_FRAME` bytes) to `out`; false when
/// the frame cannot be read or its headers do not allow it.
fn resolve_frame(frame: &Frame, offload: &Offload, out: &mut dyn FnMut(&[u8])) -> bool {
    let mut whole = alloc::vec![0u8; frame.bytes()];
    if !frame.copy_into(&mut whole) {
        return false;
    }
    let mut seg = Vec::with_capacity(MAX_FRAME);
    resolve(&mut whole, offload, MAX_FRAME, &mut seg, out).is_ok()
}

/// A NIC's place on its bridge: empty until it joins, empty again once
/// it leaves (its domain stopped).
#[derive(Default)]
pub struct Plug(Mutex<Option<Port>>);

impl Plug {
    /// Joins bridge `bridge` as the vif with address `mac`, delivering to
    /// `endpoint`.
    pub fn join(&self, bridge: &str, mac: ferrite_switch::Mac, endpoint: Weak<dyn Endpoint>) -> Result<(), String> {
        let port = Port::join(bridge, PortKind::Vif { mac }, endpoint)?;
        *self.0.lock() = Some(port);
        Ok(())
    }

    /// Leaves the bridge: its name and the port's last counters, if it
    /// was on one.
    pub fn leave(&self) -> Option<(String, PortCounters)> {
        let port = self.0.lock().take()?;
        Some((String::from(port.bridge_name()), port.counters()))
    }

    /// Its bridge and counters now, if it is on one.
    pub fn counters(&self) -> Option<(String, PortCounters)> {
        let port = self.0.lock();
        let port = port.as_ref()?;
        Some((String::from(port.bridge_name()), port.counters()))
    }

    /// Sends `frame` from this NIC (nothing when it is not on a bridge).
    pub fn send(&self, frame: &Frame) {
        if let Some(port) = self.0.lock().as_ref() {
            port.send(frame);
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let mut bridges = BRIDGES.lock();
        let empty = {
            let mut st = self.bridge.state.lock();
            st.switch.remove_port(self.id);
            st.endpoints.remove(&self.id);
            st.switch.port_count() == 0
        };
        if empty {
            bridges.remove(&self.bridge.name);
            log::info!("bridge {}: no ports left; removed", self.bridge.name);
        }
    }
}
