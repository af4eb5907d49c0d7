//! The management service: `ferrite xl` talks to it over TCP (port 7070 by
//! default) on the hypervisor's own address. The protocol (framing,
//! messages, the challenge–response login, throttling of failed logins)
//! lives in `ferrite-mgmt`; this module owns the sockets and carries out
//! the requests against the domains (`domain::admin`).
//!
//! A client is hostile until it proves it knows the key: nothing but the
//! login is read before that, every frame is bounded, and a session that
//! misbehaves gets one error and is closed while the others go on.

use crate::arch::{cpu, percpu, time};
use crate::domain::{self, AdminError};
use crate::net::{self, Service};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ferrite_boot::cmdline::MgmtOptions;
use crate::launch::{self, Files};
use crate::mm::blob::{Blob, FrameBuffer};
use alloc::sync::Arc;
use ferrite_mgmt::{
    AuthThrottle, DomRef, DomainInfo, DomainState, ErrorCode, ErrorReply, FileHasher, FileMeta, HostInfo, Request, Response, Secret,
    ServedDisk, ServerSession, Trigger, Upload, UptimeInfo, VcpuInfo, VcpuState, VifInfo,
};
use ferrite_devmodel::virtio::vsock::{ConnId, ConnState as VsockConnState, VirtioVsock, VsockEvent};
use log::{info, warn};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Clients served at once; one more waits in the TCP backlog.
const CONNECTIONS: usize = 4;
/// Socket buffers: a whole maximal frame need not fit (the session reads
/// as it comes), this only bounds what is in flight.
const SOCKET_BUFFER: usize = 64 * 1024;
/// Console output sent per poll to an attached client, at most.
const CONSOLE_CHUNK: usize = 4096;
/// Console history shown when a client attaches.
const CONSOLE_BACKLOG: u64 = 2048;

/// Starts the service (call once the stack is up).
pub fn start(opts: &MgmtOptions) {
    let secret = match opts.key {
        Some(k) => Some(Secret::from_bytes(k)),
        None => {
            warn!("mgmt: no key set (mgmt_key=); every client will be refused. `ferrite up` sets one; see README, \"Managing domains\"");
            None
        }
    };
    let service = MgmtService { port: opts.port, secret, conns: Vec::new(), throttle: AuthThrottle::new(), nonces: 0 };
    if net::register(Box::new(service)) {
        info!("mgmt: ferrite xl service on TCP port {}", opts.port);
    }
}

struct MgmtService {
    port: u16,
    secret: Option<Secret>,
    conns: Vec<Conn>,
    throttle: AuthThrottle,
    nonces: u64,
}

struct Conn {
    handle: SocketHandle,
    session: Option<ServerSession>,
    state: ConnState,
}

/// What a client has going beyond single requests.
#[derive(Default)]
struct ConnState {
    /// The domain whose console this client is attached to, and the
    /// position of the next byte to send.
    console: Option<(u32, u64)>,
    /// An `xl create` whose files are arriving.
    create: Option<PendingCreate>,
    /// An `xl create` whose files are in, waiting for its NBD disks to
    /// connect before the domain is built (the answer waits too).
    connecting: Option<(PendingCreate, u64)>,
    /// The client's address (its `file:` disks are served from there).
    peer: Option<[u8; 4]>,
    /// The client is in dom0, on its vsock: its `file:` disks' servers
    /// attach over vsock.
    dom0_vsock: bool,
}

/// A config checked and its files being received into host frames.
struct PendingCreate {
    config: ferrite_config::DomainConfig,
    upload: Upload,
    buffers: Vec<FrameBuffer>,
    /// The `file:` disks the client serves.
    served: Vec<ServedDisk>,
    /// NBD connections for the config's `file:` and `nbd:` disks, by the
    /// disk's target.
    nbd: Vec<(String, Arc<crate::nbd::NbdDisk>)>,
    /// When the upload began (for the log line at its end).
    started_us: u64,
    /// The TSC when its `CreateCommit` arrived (`ferrite bench xl`).
    commit_tsc: u64,
}

/// How long `xl create` waits for its disks' NBD servers.
const NBD_CONNECT_TIMEOUT_US: u64 = 30_000_000;

/// Host memory an upload must leave free besides the domain's own RAM.
const CREATE_RESERVE: u64 = 32 << 20;

impl Service for MgmtService {
    fn attach(&mut self, sockets: &mut SocketSet<'static>) {
        for _ in 0..CONNECTIONS {
            let rx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]);
            let tx = tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]);
            let mut socket = tcp::Socket::new(rx, tx);
            // Every ACK at once: uploads wait on them (smoltcp's default
            // delays ACKs by 10 ms, which paced a peer to one segment per
            // delay).
            socket.set_ack_delay(None);
            let handle = sockets.add(socket);
            self.conns.push(Conn { handle, session: None, state: ConnState::default() });
        }
    }

    fn poll(&mut self, sockets: &mut SocketSet<'static>, _iface: &mut smoltcp::iface::Interface, now_us: u64) {
        for i in 0..self.conns.len() {
            self.poll_conn(i, sockets, now_us);
        }
    }

    fn busy(&self) -> bool {
        self.conns.iter().any(|c| c.session.is_some())
    }

    fn transferring(&self) -> bool {
        self.conns.iter().any(|c| c.state.create.is_some() || c.state.connecting.is_some())
    }
}

impl MgmtService {
    fn poll_conn(&mut self, i: usize, sockets: &mut SocketSet<'static>, now_us: u64) {
        let port = self.port;
        let handle = self.conns[i].handle;
        {
            let sock = sockets.get_mut::<tcp::Socket>(handle);
            if !sock.is_open() {
                self.conns[i].session = None;
                self.conns[i].state = ConnState::default();
                if let Err(e) = sock.listen(port) {
                    warn!("mgmt: cannot listen on port {}: {}", port, e);
                }
                return;
            }
            if !sock.is_active() {
                return; // listening
            }
        }
        if self.conns[i].session.is_none() {
            self.conns[i].session = Some(new_session(self.secret.as_ref(), &mut self.nonces, now_us));
        }
        let sock = sockets.get_mut::<tcp::Socket>(handle);
        let conn = &mut self.conns[i];
        let Some(session) = conn.session.as_mut() else { return };
        if conn.state.peer.is_none() {
            if let Some(ep) = sock.remote_endpoint() {
                let smoltcp::wire::IpAddress::Ipv4(ip) = ep.addr;
                conn.state.peer = Some(ip.octets());
            }
        }
        drive(session, &mut conn.state, &mut TcpPipe(sock), now_us, &mut self.throttle);
    }
}

/// A fresh challenge for a new client: unpredictable to anyone without the
/// key (it is hashed in) and never repeated (`counter`).
fn fresh_nonce(secret: Option<&Secret>, counter: u64) -> [u8; 32] {
    let mut seed = Vec::with_capacity(64);
    if let Some(s) = secret {
        seed.extend_from_slice(s.as_bytes());
    }
    seed.extend_from_slice(&cpu::rdtsc().to_le_bytes());
    seed.extend_from_slice(&counter.to_le_bytes());
    seed.extend_from_slice(&time::uptime_ns().to_le_bytes());
    FileHasher::digest(&seed)
}

/// A new client's session, its challenge fresh (`counter` counts them).
fn new_session(secret: Option<&Secret>, counter: &mut u64, now_us: u64) -> ServerSession {
    *counter += 1;
    // Without a key no proof can succeed: a random one stands in.
    let key = secret.cloned().unwrap_or_else(|| Secret::from_bytes(fresh_nonce(None, *counter)));
    *counter += 1;
    ServerSession::new(key, fresh_nonce(secret, *counter), now_us)
}

/// Sessions over dom0's vsock (`vsock`): the same protocol and login as
/// on TCP, polled on CPU 0 whether or not the host has a NIC.
struct VsockSessions {
    secret: Option<Secret>,
    conns: Vec<VsockConn>,
    throttle: AuthThrottle,
    nonces: u64,
}

struct VsockConn {
    id: ConnId,
    session: ServerSession,
    state: ConnState,
}

static VSOCK: spin::Mutex<Option<VsockSessions>> = spin::Mutex::new(None);

/// Serves dom0's vsock connections (call once at boot, with the key).
pub fn start_vsock(opts: &MgmtOptions) {
    let secret = opts.key.map(Secret::from_bytes);
    *VSOCK.lock() = Some(VsockSessions { secret, conns: Vec::new(), throttle: AuthThrottle::new(), nonces: 0 });
    crate::sched::register_poller(crate::sched::Poller { poll: poll_vsock, next_us: || crate::vsock::busy().then_some(500) });
}

fn poll_vsock() {
    let Some(mut guard) = VSOCK.try_lock() else { return };
    let Some(svc) = guard.as_mut() else { return };
    let now_us = time::uptime_us();
    let mut completions = None;
    let served = crate::vsock::serve(|model, events| {
        for ev in events {
            match ev {
                VsockEvent::Incoming { conn, host_port, .. } if host_port == crate::vsock::NBD_PORT => {
                    crate::nbd::vsock_incoming(model, conn, now_us);
                }
                VsockEvent::Incoming { conn, .. } => {
                    if svc.conns.len() < CONNECTIONS && model.accept(conn) {
                        let session = new_session(svc.secret.as_ref(), &mut svc.nonces, now_us);
                        svc.conns.push(VsockConn { id: conn, session, state: ConnState { dom0_vsock: true, ..ConnState::default() } });
                    } else {
                        model.refuse(conn);
                    }
                }
                VsockEvent::Readable { .. } | VsockEvent::Closed { .. } => {}
            }
        }
        let VsockSessions { conns, throttle, .. } = svc;
        for c in conns.iter_mut() {
            drive(&mut c.session, &mut c.state, &mut VsockPipe { model: &mut *model, conn: c.id }, now_us, throttle);
        }
        conns.retain(|c| {
            let over = model.state(c.id).is_none_or(|s| s == VsockConnState::Closed);
            if over {
                model.abort(c.id);
            }
            !over
        });
        // After the sessions: a create may have just registered a disk.
        completions = Some(crate::nbd::poll_vsock(model, now_us));
    });
    drop(guard);
    if !served && crate::nbd::vsock_busy() {
        completions = Some(crate::nbd::vsock_gone());
    }
    // Told with no vsock or service lock held.
    if let Some(c) = completions {
        c.run();
    }
}

/// A vsock connection as a session's pipe.
struct VsockPipe<'a> {
    model: &'a mut VirtioVsock,
    conn: ConnId,
}

impl Pipe for VsockPipe<'_> {
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        self.model.recv_with(self.conn, |data| take(data))
    }

    fn send(&mut self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        self.model.send(self.conn, data)
    }

    fn peer_done(&self) -> bool {
        !self.model.may_recv(self.conn)
    }

    fn close(&mut self) {
        self.model.close(self.conn);
    }
}

/// A management connection's byte stream, whatever carries it (TCP on the
/// host NIC, or dom0's vsock).
trait Pipe {
    /// Offers received bytes to `take`, which returns how many it used;
    /// returns that.
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize;
    /// Sends what fits; returns how much.
    fn send(&mut self, data: &[u8]) -> usize;
    /// The peer will send nothing more.
    fn peer_done(&self) -> bool;
    fn close(&mut self);
}

struct TcpPipe<'a, 'b>(&'a mut tcp::Socket<'b>);

impl Pipe for TcpPipe<'_, '_> {
    fn recv(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        if !self.0.can_recv() {
            return 0;
        }
        self.0.recv(|data| {
            let n = take(data);
            (n, n)
        })
        .unwrap_or(0)
    }

    fn send(&mut self, data: &[u8]) -> usize {
        if data.is_empty() || !self.0.can_send() {
            return 0;
        }
        self.0.send_slice(data).unwrap_or(0)
    }

    fn peer_done(&self) -> bool {
        !self.0.may_recv()
    }

    fn close(&mut self) {
        self.0.close();
    }
}

/// One round of a session over its pipe: requests in and answered, an
/// attached console's output, replies out.
fn drive(session: &mut ServerSession, state: &mut ConnState, pipe: &mut dyn Pipe, now_us: u64, throttle: &mut AuthThrottle) {
    // In: only what the session takes (it bounds its own buffer); a few
    // rounds, so an upload's chunks do not wait a poll each.
    for _ in 0..4 {
        let arrival_tsc = cpu::rdtsc();
        let fed = pipe.recv(&mut |data| session.feed(data));
        while state.connecting.is_none() {
            let Some(request) = session.next_request(now_us, throttle) else { break };
            let list = matches!(request, Request::List);
            if let Some(response) = serve(request, state) {
                session.respond(&response);
            }
            if list {
                // For `ferrite bench xl` (loglvl=debug).
                log::debug!("mgmt: timing: list answered {} TSC ticks after its bytes were read", cpu::rdtsc().wrapping_sub(arrival_tsc));
            }
        }
        if fed == 0 {
            break;
        }
    }
    if pipe.peer_done() && !session.is_closed() {
        session.peer_closed();
    }
    session.check_timeout(now_us);
    if let Some(response) = creation_progress(state, now_us) {
        session.respond(&response);
    }
    // Console output for an attached client, a bounded piece per poll.
    if let Some((dom, pos)) = state.console {
        if session.outgoing().len() < SOCKET_BUFFER {
            match domain::console_output(dom, pos, CONSOLE_CHUNK) {
                Some((bytes, next)) => {
                    state.console = Some((dom, next));
                    if !bytes.is_empty() {
                        session.respond(&Response::ConsoleOutput(bytes));
                    }
                }
                None => {
                    state.console = None;
                    session.respond(&error(ErrorCode::NoSuchDomain, format!("domain {} is gone", dom)));
                }
            }
        }
    }
    // Out.
    let n = pipe.send(session.outgoing());
    session.advance_outgoing(n);
    if session.is_closed() && session.outgoing().is_empty() {
        pipe.close();
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply::new(code, message))
}

fn resolve(dom: &DomRef) -> Result<u32, Response> {
    let found = match dom {
        DomRef::Id(id) => domain::lookup(Some(*id), ""),
        DomRef::Name(name) => domain::lookup(None, name),
    };
    found.ok_or_else(|| error(ErrorCode::NoSuchDomain, format!("no domain {}", dom)))
}

fn admin_result(r: Result<(), AdminError>, dom: &DomRef) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(AdminError::NoSuchDomain) => error(ErrorCode::NoSuchDomain, format!("no domain {}", dom)),
        Err(AdminError::Refused(why)) => error(ErrorCode::BadRequest, why),
    }
}

/// Carries out one request; None for the one request with no answer.
fn serve(request: Request, state: &mut ConnState) -> Option<Response> {
    let console = &mut state.console;
    let with_dom = |dom: &DomRef, f: &dyn Fn(u32) -> Result<(), AdminError>| match resolve(dom) {
        Ok(id) => admin_result(f(id), dom),
        Err(e) => e,
    };
    Some(match request {
        Request::List => Response::Domains(domain_list()),
        Request::Info => Response::Host(host_info()),
        Request::Uptime => Response::Uptime(
            domain::summaries()
                .into_iter()
                .map(|d| UptimeInfo { name: d.name, id: d.id, uptime_ns: d.uptime_ns })
                .collect(),
        ),
        Request::Dmesg { clear } => {
            let mut text = Vec::new();
            crate::console::with_log_ring(|piece| text.extend_from_slice(piece));
            if clear {
                crate::console::clear_log_ring();
            }
            Response::Log(String::from_utf8_lossy(&text).into_owned())
        }
        Request::Destroy(DomRef::Name(name)) if resolve(&DomRef::Name(name.clone())).is_err() && domain::cancel_restart(&name) => {
            // Between its reboot and its rebuild: destroyed once rebuilt.
            Response::Ok
        }
        Request::Destroy(dom) => with_dom(&dom, &|id| {
            if id == 0 && domain::is_privileged(id) {
                return Err(AdminError::Refused(String::from("dom0 cannot be destroyed; shut the host down instead (xl shutdown -a, then dom0)")));
            }
            domain::destroy(id)
        }),
        Request::Shutdown { dom } => with_dom(&dom, &domain::press_power_button),
        Request::Reboot(dom) => match resolve(&dom) {
            Ok(_) => error(
                ErrorCode::Unsupported,
                "the guest has no PV control interface to ask it to reboot; `xl reboot -F` presses its reset button instead (unsaved data is lost), or reboot it from inside",
            ),
            Err(e) => e,
        },
        Request::Trigger { dom, trigger, vcpu } => with_dom(&dom, &|id| match trigger {
            Trigger::Nmi => domain::inject_nmi(id, vcpu),
            Trigger::Power => domain::press_power_button(id),
            Trigger::Reset if domain::is_privileged(id) => {
                Err(AdminError::Refused(String::from("dom0 cannot be reset from here; reboot the host from dom0")))
            }
            Trigger::Reset => domain::press_reset_button(id),
        }),
        Request::Pause(dom) => with_dom(&dom, &|id| domain::set_paused_by_id(id, true)),
        Request::Unpause(dom) => with_dom(&dom, &|id| domain::set_paused_by_id(id, false)),
        Request::VcpuList(dom) => {
            let only = match dom.as_ref().map(resolve) {
                Some(Ok(id)) => Some(id),
                Some(Err(e)) => return Some(e),
                None => None,
            };
            Response::Vcpus(vcpu_list(only))
        }
        Request::NetworkList(dom) => match resolve(&dom) {
            Ok(id) => match domain::network_list(id) {
                Some(vifs) => Response::Vifs(
                    vifs.into_iter()
                        .enumerate()
                        .map(|(i, v)| VifInfo {
                            index: i as u32,
                            mac: v.mac,
                            bridge: v.bridge,
                            model: String::from(v.model),
                            connected: v.connected,
                            tx_packets: v.port.tx_packets,
                            tx_bytes: v.port.tx_bytes,
                            rx_packets: v.port.rx_packets,
                            rx_bytes: v.port.rx_bytes,
                            tx_dropped: v.port.tx_dropped,
                            tx_spoofed: v.port.tx_spoofed,
                            rx_dropped: v.port.rx_dropped,
                        })
                        .collect(),
                ),
                None => error(ErrorCode::NoSuchDomain, format!("no domain {}", dom)),
            },
            Err(e) => e,
        },
        Request::VcpuPin { dom, vcpu, pcpus } => with_dom(&dom, &|id| domain::pin_vcpus(id, vcpu, pcpus)),
        Request::Create { config_name, config_text, files, served } => {
            state.create = None;
            match begin_create(&config_name, &config_text, files, served) {
                Ok(pending) => {
                    state.create = Some(pending);
                    Response::Ok
                }
                Err(e) => e,
            }
        }
        Request::FileChunk { index, offset, data } => match state.create.as_mut() {
            Some(pending) => match pending.upload.accept(index, offset, &data) {
                Ok(()) => {
                    // Checked by `accept`: the file exists, the range is
                    // inside its announced length (= the buffer's).
                    let buf = pending.buffers[index as usize].as_mut_slice();
                    buf[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                    Response::Ok
                }
                Err(e) => {
                    state.create = None;
                    Response::Error(e)
                }
            },
            None => error(ErrorCode::BadRequest, "a file chunk with no create under way"),
        },
        Request::CreateCommit => {
            let Some(mut pending) = state.create.take() else {
                return Some(error(ErrorCode::BadRequest, "nothing to create: send Create and its files first"));
            };
            pending.commit_tsc = cpu::rdtsc();
            log_received(&pending);
            match connect_disks(&mut pending, state.peer, state.dom0_vsock) {
                Ok(true) => {
                    // Answered once the disks are connected.
                    state.connecting = Some((pending, crate::arch::time::uptime_us() + NBD_CONNECT_TIMEOUT_US));
                    return None;
                }
                Ok(false) => finish_create(pending),
                Err(e) => error(ErrorCode::BadConfig, format!("{}: {}", pending.config.name, e)),
            }
        }
        Request::ConsoleAttach(dom) => match resolve(&dom) {
            Ok(id) => {
                let start = domain::console_position(id, CONSOLE_BACKLOG).unwrap_or(0);
                *console = Some((id, start));
                Response::Ok
            }
            Err(e) => e,
        },
        Request::ConsoleInput(bytes) => {
            if let Some((id, _)) = *console {
                domain::console_type(id, &bytes);
            }
            return None;
        }
        Request::ConsoleDetach => {
            *console = None;
            Response::Ok
        }
    })
}

fn domain_list() -> Vec<DomainInfo> {
    domain::summaries()
        .into_iter()
        .map(|d| {
            let mut state = 0;
            for (on, bit) in [
                (d.running, DomainState::RUNNING),
                (d.blocked, DomainState::BLOCKED),
                (d.paused, DomainState::PAUSED),
                (d.shutdown, DomainState::SHUTDOWN),
                (d.crashed, DomainState::CRASHED),
                (d.dying, DomainState::DYING),
            ] {
                if on {
                    state |= bit;
                }
            }
            DomainInfo { name: d.name, id: d.id, mem_mib: d.memory_bytes >> 20, vcpus: d.vcpus, state: DomainState(state), cpu_time_ns: d.cpu_time_ns }
        })
        .collect()
}

fn vcpu_list(only: Option<u32>) -> Vec<VcpuInfo> {
    domain::vcpu_summaries(only)
        .into_iter()
        .map(|v| {
            let mut state = 0;
            for (on, bit) in [(v.running, VcpuState::RUNNING), (v.blocked, VcpuState::BLOCKED), (v.paused, VcpuState::PAUSED)] {
                if on {
                    state |= bit;
                }
            }
            VcpuInfo {
                dom_name: v.dom_name,
                dom_id: v.dom_id,
                vcpu: v.vcpu,
                pcpu: v.pcpu,
                state: VcpuState(state),
                time_ns: v.time_ns,
                affinity: v.affinity,
            }
        })
        .collect()
}

fn host_info() -> HostInfo {
    HostInfo {
        version: format!("Ferrite {}", env!("CARGO_PKG_VERSION")),
        host_cpus: percpu::online_count() as u32,
        total_mib: crate::mm::total_bytes() >> 20,
        free_mib: crate::mm::free_bytes() >> 20,
        free_bytes: crate::mm::free_bytes(),
        heap_used_bytes: crate::mm::heap::usage().0 as u64,
        uptime_ns: time::uptime_ns(),
        capabilities: vec![String::from("hvm-x86_64"), String::from("pvh-x86_64")],
        cmdline: crate::boot_cmdline(),
    }
}

/// Checks an `xl create`: the config parses, the domain name is free,
/// every announced file is one the config names, and there is room for
/// the files besides the domain's memory; then sets up their buffers.
fn begin_create(config_name: &str, config_text: &str, files: Vec<FileMeta>, served: Vec<ServedDisk>) -> Result<PendingCreate, Response> {
    let config = match ferrite_config::parse(config_name, config_text.as_bytes()) {
        Ok((cfg, _warnings)) => cfg,
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(|e| format!("{}", e)).collect();
            return Err(error(ErrorCode::BadConfig, text.join("\n")));
        }
    };
    if domain::lookup(None, &config.name).is_some() {
        return Err(error(ErrorCode::AlreadyExists, format!("a domain named '{}' already exists", config.name)));
    }
    let named: Vec<&str> = [config.kernel.as_deref(), config.ramdisk.as_deref()]
        .into_iter()
        .flatten()
        .chain(match &config.firmware {
            Some(ferrite_config::Firmware::Path(p)) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    if let Some(f) = files.iter().find(|f| !named.contains(&f.name.as_str())) {
        return Err(error(ErrorCode::BadRequest, format!("'{}' is not a file {} names (kernel, ramdisk or firmware)", f.name, config_name)));
    }
    let room = crate::mm::free_bytes().saturating_sub(config.memory_mib << 20).saturating_sub(CREATE_RESERVE);
    let upload = Upload::new(files, room).map_err(Response::Error)?;
    let mut buffers = Vec::new();
    for f in upload.files() {
        let buf = usize::try_from(f.len).ok().and_then(FrameBuffer::new).ok_or_else(|| {
            error(ErrorCode::NoMemory, format!("no {} MiB of contiguous host memory for '{}'", f.len.div_ceil(1 << 20), f.name))
        })?;
        buffers.push(buf);
    }
    info!("mgmt: receiving {} for domain '{}' ({} file(s))", config_name, config.name, buffers.len());
    Ok(PendingCreate { config, upload, buffers, served, nbd: Vec::new(), started_us: crate::arch::time::uptime_us(), commit_tsc: 0 })
}

/// Says how much an upload brought and how long it took.
fn log_received(pending: &PendingCreate) {
    let bytes: u64 = pending.upload.files().iter().map(|f| f.len).sum();
    let ms = (crate::arch::time::uptime_us() - pending.started_us) / 1000;
    info!("mgmt: received {} KiB for domain '{}' in {} ms", bytes >> 10, pending.config.name, ms);
}

/// Starts the NBD connections of the config's `file:` disks (on the
/// client's machine, at the ports it named; or, for a client in dom0
/// (`dom0_vsock`), waiting for its servers to attach over vsock with the
/// tokens it named) and `nbd:` disks; true when there are some to wait
/// for.
fn connect_disks(pending: &mut PendingCreate, peer: Option<[u8; 4]>, dom0_vsock: bool) -> Result<bool, String> {
    use ferrite_config::DiskKind;
    for d in &pending.config.disks {
        let target = d.target.clone().unwrap_or_default();
        let (addr, port, export) = match d.kind {
            DiskKind::File => {
                let served = pending.served.iter().find(|s| s.target == target).ok_or_else(|| {
                    format!("disk {}: file:{} is not served by the client (its `xl create` serves file: disks over NBD)", d.vdev.name, target)
                })?;
                match (served.vsock_token, dom0_vsock) {
                    (Some(token), true) => {
                        let nbd = crate::nbd::connect_vsock(token, &served.export, &served.export)
                            .map_err(|e| format!("disk {}: {}", d.vdev.name, e))?;
                        pending.nbd.push((target, nbd));
                        continue;
                    }
                    (Some(_), false) => {
                        return Err(format!("disk {}: served over vsock, which only a client in dom0 has", d.vdev.name));
                    }
                    (None, _) => {}
                }
                let addr = peer.ok_or_else(|| {
                    format!("disk {}: served over TCP, but the client's address is unknown (a client in dom0 serves over vsock)", d.vdev.name)
                })?;
                (addr, served.port, served.export.clone())
            }
            DiskKind::Nbd => crate::nbd::parse_target(&target).map_err(|e| format!("disk {}: {}", d.vdev.name, e))?,
            DiskKind::Phy | DiskKind::Unspecified | DiskKind::Module => continue,
        };
        let nbd = crate::nbd::connect(addr, port, &export)?;
        pending.nbd.push((target, nbd));
    }
    Ok(!pending.nbd.is_empty())
}

/// An `xl create` waiting for its NBD disks: the answer once they are all
/// connected (the domain built), one failed, or time ran out.
fn creation_progress(state: &mut ConnState, now_us: u64) -> Option<Response> {
    let (pending, deadline) = state.connecting.as_ref()?;
    let mut waiting = false;
    let mut failed = None;
    for (target, nbd) in &pending.nbd {
        match nbd.export() {
            Ok(Some(_)) => {}
            Ok(None) => waiting = true,
            Err(why) => {
                failed = Some(format!("{}: disk {}: NBD {}: {}", pending.config.name, target, nbd.name(), why));
                break;
            }
        }
    }
    if failed.is_none() && waiting && now_us < *deadline {
        return None;
    }
    let (pending, _) = state.connecting.take()?;
    if let Some(why) = failed {
        return Some(error(ErrorCode::BadConfig, why));
    }
    if waiting {
        return Some(error(ErrorCode::BadConfig, format!("{}: an NBD server for its disks did not answer in time", pending.config.name)));
    }
    Some(finish_create(pending))
}

/// The uploaded files by the names the config gives them; the platform
/// files (BIOS, option ROM) from the boot modules; the NBD disks
/// connected for it.
struct Uploaded(Vec<(String, Blob)>, Vec<(String, Arc<crate::nbd::NbdDisk>)>);

impl Files for Uploaded {
    fn get(&self, file: &str, what: &str) -> Result<Blob, String> {
        match self.0.iter().find(|(name, _)| name == file) {
            Some((_, blob)) => Ok(blob.clone()),
            None => launch::BootModules.get(file, what),
        }
    }

    fn nbd_disk(&self, disk: &ferrite_config::DiskSpec) -> Result<Arc<crate::nbd::NbdDisk>, String> {
        let target = disk.target.as_deref().unwrap_or("");
        self.1
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, nbd)| nbd.clone())
            .ok_or_else(|| format!("disk {}: no NBD connection for '{}'", disk.vdev.name, target))
    }
}

fn finish_create(pending: PendingCreate) -> Response {
    let PendingCreate { config, upload, buffers, nbd, commit_tsc, .. } = pending;
    let files = match upload.finish() {
        Ok(f) => f,
        Err(e) => return Response::Error(e),
    };
    let uploaded = Uploaded(files.into_iter().zip(buffers).map(|(f, b)| (f.name, Blob::Uploaded(Arc::new(b)))).collect(), nbd);
    let spec = match launch::spec_from_config(&config, &uploaded) {
        Ok(s) => s,
        Err(e) => return error(ErrorCode::BadConfig, format!("{}: {}", config.name, e)),
    };
    let Some(caps) = crate::virt_caps() else {
        return error(ErrorCode::Internal, "this host cannot run guests (no usable virtualization)");
    };
    match domain::Domain::create(spec, caps) {
        Ok(d) => {
            // For `ferrite bench xl` (loglvl=debug): the domain's TSC read
            // 0 at host TSC -offset, so its first instruction's TSC plus
            // the second figure is that instruction's distance from the
            // commit.
            let built = cpu::rdtsc().wrapping_sub(commit_tsc);
            let tsc_zero = 0u64.wrapping_sub(d.tsc_offset()).wrapping_sub(commit_tsc);
            log::debug!("mgmt: timing: domain {} built {} TSC ticks after its create commit; its TSC is 0 at +{}", d.id, built, tsc_zero);
            Response::Created { id: d.id }
        }
        Err(e) => error(ErrorCode::Internal, e),
    }
}
