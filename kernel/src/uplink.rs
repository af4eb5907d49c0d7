//! A bridge's uplink (`uplink=BRIDGE` on the command line): the host NIC
//! as a port of that bridge, as `brconfig bridge0 add wm0` makes a
//! physical NIC part of a NetBSD dom0's bridge. Guests on the bridge then
//! reach whatever the NIC reaches (under QEMU, its user network: the
//! developer's host as 10.0.2.2, and NAT to the world).
//!
//! The NIC keeps its own MAC and address for the hypervisor's management
//! service, which stays apart: frames from the wire to the hypervisor's
//! MAC go to its stack only, everything else the wire sends goes to the
//! bridge only (broadcasts to both), and frames from guests go out on the
//! wire, never into the hypervisor's stack. So guests cannot reach the
//! management service, and the service is reachable from the wire side
//! only.

use crate::bridge::{Endpoint, Frame, Port};
use alloc::sync::Arc;
use ferrite_switch::PortKind;
use log::{error, info};
use spin::{Mutex, Once};

struct Uplink;

/// The uplink's port (and the endpoint it delivers to), once joined.
static PORT: Once<(Arc<Uplink>, Mutex<Port>)> = Once::new();

impl Endpoint for Uplink {
    fn deliver(&self, frame: &Frame) -> bool {
        crate::net::send_raw(frame.bytes(), |buf| frame.copy_into(buf))
    }
}

/// A frame from the wire for someone else: into the bridge.
fn from_wire(frame: &[u8]) {
    if let Some((_, port)) = PORT.get() {
        port.lock().send(&Frame::Host(frame));
        crate::net::note_uplink_traffic();
    }
}

/// Joins the host NIC to bridge `name`. Logs why not when there is no NIC.
pub fn start(name: &str) {
    let Some(mac) = crate::net::mac() else {
        error!("uplink={}: there is no host NIC to join to the bridge", name);
        return;
    };
    let endpoint = Arc::new(Uplink);
    let weak: alloc::sync::Weak<dyn Endpoint> = {
        let e: Arc<dyn Endpoint> = endpoint.clone();
        Arc::downgrade(&e)
    };
    match Port::join(name, PortKind::Uplink, weak) {
        Ok(port) => {
            PORT.call_once(|| (endpoint, Mutex::new(port)));
            crate::net::set_divert(from_wire);
            info!(
                "net: the host NIC ({}) is the uplink of bridge {}",
                ferrite_switch::MacFmt(&mac),
                name
            );
        }
        Err(e) => error!("uplink={}: {}", name, e),
    }
}
