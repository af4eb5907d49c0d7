//! The hypervisor's own network stack: smoltcp over the host virtio-net
//! NIC, an IPv4 address from DHCP (or the command line), and the TCP
//! services registered on it (the management service).
//!
//! It is polled from CPU 0's scheduling loop between guest slices and
//! while it idles (`poll`, `poll_delay_us`), and, while a service moves
//! data (an upload, NBD requests), by any idle CPU without pause
//! (`poll_while_transferring`): a guest keeping CPU 0 busy must not stall
//! the transfer. Whoever polls holds the stack's lock; others skip.
//!
//! Layering: this module knows nothing of what a service does. A service
//! implements [`Service`] and registers itself; `net` only hands it the
//! socket set at each poll.

use crate::arch::time;
use crate::drivers::virtio_net::NetDevice;
use alloc::boxed::Box;
use alloc::vec::Vec;
use ferrite_boot::cmdline::MgmtOptions;
use log::info;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use spin::Mutex;

/// A TCP service or client on the hypervisor's address: it owns sockets
/// in the set (created in `attach`, or later at a poll) and serves them at
/// every poll.
pub trait Service: Send {
    /// Creates the service's sockets.
    fn attach(&mut self, sockets: &mut SocketSet<'static>);
    /// Moves data between the service's sockets and its sessions; `iface`
    /// is there for connecting out (`tcp::Socket::connect`).
    fn poll(&mut self, sockets: &mut SocketSet<'static>, iface: &mut Interface, now_us: u64);
    /// Whether a client is connected (the stack is then polled more often).
    fn busy(&self) -> bool;
    /// Whether data is moving now (idle CPUs then poll without pause).
    fn transferring(&self) -> bool {
        false
    }
}

/// Frames for the outside that arrived while the stack was busy: sent at
/// the next poll. Bounded; more are dropped (counted in `UPLINK_DROPS`).
static UPLINK_QUEUE: Mutex<alloc::collections::VecDeque<Vec<u8>>> = Mutex::new(alloc::collections::VecDeque::new());
const UPLINK_QUEUE_MAX: usize = 128;
static UPLINK_DROPS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Frames moved to or from the outside since the last poll: while there
/// are, idle CPUs keep polling.
static UPLINK_MOVED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Some service moves data (`Service::transferring`, as of the last poll).
static TRANSFERRING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

struct Stack {
    device: NetDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    services: Vec<Box<dyn Service>>,
}

static STACK: Mutex<Option<Stack>> = Mutex::new(None);

/// How often CPU 0 polls while a client is connected, and while idle.
const ACTIVE_POLL_US: u64 = 2_000;
const IDLE_POLL_US: u64 = 20_000;

fn now() -> Instant {
    Instant::from_micros(time::uptime_us() as i64)
}

/// Brings the stack up on `device` as the options say. Logs the address
/// when it is static; DHCP's arrives later (see `poll`).
pub fn init(device: NetDevice, opts: &MgmtOptions) {
    let mut device = device;
    let mac = EthernetAddress(device.mac);
    let config = Config::new(HardwareAddress::Ethernet(mac));
    let mut iface = Interface::new(config, &mut device, now());
    let mut sockets = SocketSet::new(Vec::new());
    let dhcp = match opts.static_ip {
        Some((ip, prefix)) => {
            let addr = Ipv4Address::from(ip);
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(addr, prefix)));
            });
            if let Some(gw) = opts.gateway {
                let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::from(gw));
            }
            info!("net: address {}/{} (static){}", addr, prefix, opts.gateway.map_or(alloc::string::String::new(), |g| alloc::format!(", gateway {}", Ipv4Address::from(g))));
            None
        }
        None => {
            info!("net: asking for an address by DHCP");
            Some(sockets.add(dhcpv4::Socket::new()))
        }
    };
    *STACK.lock() = Some(Stack { device, iface, sockets, dhcp, services: Vec::new() });
}

/// Sends received frames that are not the hypervisor's to `divert` (a
/// bridge's uplink); false when there is no NIC.
pub fn set_divert(divert: fn(&[u8])) -> bool {
    let mut guard = STACK.lock();
    let Some(stack) = guard.as_mut() else { return false };
    stack.device.divert = Some(divert);
    true
}

/// The NIC's MAC address, if there is a NIC.
pub fn mac() -> Option<[u8; 6]> {
    STACK.lock().as_ref().map(|s| s.device.mac)
}

/// Sends a frame of `len` bytes that `fill` writes out of the NIC (a
/// bridge's frame for the outside): at once when the stack is free, else
/// copied and queued for the next poll. False when it was dropped.
pub fn send_raw(len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
    UPLINK_MOVED.store(true, core::sync::atomic::Ordering::Relaxed);
    if let Some(mut guard) = STACK.try_lock() {
        if UPLINK_QUEUE.lock().is_empty() {
            return guard.as_mut().is_some_and(|s| s.device.send_raw(len, fill));
        }
    }
    // The stack is busy (possibly on this very path, when a frame from
    // the outside is flooded back out), or older frames wait: keep order.
    let mut frame = alloc::vec![0u8; len];
    if !fill(&mut frame) {
        return false;
    }
    let mut queue = UPLINK_QUEUE.lock();
    if queue.len() >= UPLINK_QUEUE_MAX {
        UPLINK_DROPS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        return false;
    }
    queue.push_back(frame);
    transfer_queued();
    true
}

/// Frames came from the wire for a bridge: idle CPUs keep polling.
pub fn note_uplink_traffic() {
    UPLINK_MOVED.store(true, core::sync::atomic::Ordering::Relaxed);
    TRANSFERRING.store(true, core::sync::atomic::Ordering::Relaxed);
}

fn flush_uplink_queue(device: &NetDevice) {
    loop {
        let Some(frame) = UPLINK_QUEUE.lock().pop_front() else { return };
        if !device.send_raw(frame.len(), |buf| {
            buf.copy_from_slice(&frame);
            true
        }) {
            UPLINK_DROPS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Adds a service; false when there is no network.
pub fn register(mut service: Box<dyn Service>) -> bool {
    let mut guard = STACK.lock();
    let Some(stack) = guard.as_mut() else { return false };
    service.attach(&mut stack.sockets);
    stack.services.push(service);
    true
}

/// Idle work: while a service moves data, an idle CPU polls the stack
/// instead of halting.
pub fn poll_while_transferring() -> bool {
    if !TRANSFERRING.load(core::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    poll();
    true
}

/// A service has queued data to move: idle CPUs poll the stack from now
/// on (the next poll recomputes the flag), rather than halting until CPU
/// 0's next poller run (up to `ACTIVE_POLL_US` later).
pub fn transfer_queued() {
    TRANSFERRING.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// Moves packets and runs the services (any CPU; one at a time).
pub fn poll() {
    let Some(mut guard) = STACK.try_lock() else { return };
    let Some(stack) = guard.as_mut() else { return };
    let now_us = time::uptime_us();
    // Bounded: a flood of frames cannot keep CPU 0 here.
    for _ in 0..8 {
        let changed = stack.iface.poll(now(), &mut stack.device, &mut stack.sockets);
        if changed == smoltcp::iface::PollResult::None {
            break;
        }
    }
    if let Some(h) = stack.dhcp {
        dhcp_event(stack, h);
    }
    let Stack { services, sockets, iface, device, .. } = stack;
    for s in services.iter_mut() {
        s.poll(sockets, iface, now_us);
    }
    flush_uplink_queue(device);
    let uplink = UPLINK_MOVED.swap(false, core::sync::atomic::Ordering::Relaxed);
    TRANSFERRING.store(uplink || services.iter().any(|s| s.transferring()), core::sync::atomic::Ordering::Relaxed);
    // Replies the services queued go out now, not at the next poll.
    iface.poll(now(), device, sockets);
}

/// How long CPU 0 may idle before the stack wants polling again.
pub fn poll_delay_us() -> Option<u64> {
    let guard = STACK.try_lock()?;
    let stack = guard.as_ref()?;
    let busy = stack.services.iter().any(|s| s.busy());
    Some(if busy { ACTIVE_POLL_US } else { IDLE_POLL_US })
}

fn dhcp_event(stack: &mut Stack, handle: SocketHandle) {
    let event = stack.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
    match event {
        None => {}
        Some(dhcpv4::Event::Configured(config)) => {
            stack.iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(IpCidr::Ipv4(config.address));
            });
            match config.router {
                Some(router) => {
                    let _ = stack.iface.routes_mut().add_default_ipv4_route(router);
                }
                None => stack.iface.routes_mut().remove_default_ipv4_route().map_or((), |_| ()),
            }
            info!(
                "net: address {} by DHCP{}",
                config.address,
                config.router.map_or(alloc::string::String::new(), |r| alloc::format!(", gateway {}", r))
            );
        }
        Some(dhcpv4::Event::Deconfigured) => {
            info!("net: DHCP lease lost; asking again");
            stack.iface.update_ip_addrs(|addrs| addrs.clear());
            stack.iface.routes_mut().remove_default_ipv4_route();
        }
    }
}
