//! Test fixture: a stand-in for the hypervisor's management service on a
//! loopback port, built on `ferrite_mgmt::ServerSession` as the real one
//! is, answering from in-memory domains. Not the service itself: that
//! lives in the hypervisor.

use ferrite_mgmt::{
    AuthThrottle, DomRef, DomainInfo, DomainState, ErrorCode, ErrorReply, FileMeta, HostInfo, Request, Response,
    Secret, ServerSession, Upload, UptimeInfo, VcpuInfo, VcpuState, VifInfo,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A created domain: its configuration text, and each file with its bytes.
pub type Created = (String, Vec<(FileMeta, Vec<u8>)>);

/// What the fake hypervisor holds; tests read and change it.
#[derive(Debug)]
pub struct FakeState {
    pub domains: Vec<DomainInfo>,
    pub host: HostInfo,
    pub log: String,
    pub vcpus: Vec<VcpuInfo>,
    /// NICs by domain id.
    pub vifs: Vec<(u32, VifInfo)>,
    /// Domains that ignore `Shutdown`.
    pub stubborn: Vec<u32>,
    /// Domains asked to shut down: gone after the next `List`.
    pub shutting_down: Vec<u32>,
    /// Every request, in order.
    pub requests: Vec<Request>,
    /// Created domains: configuration text and the files with their bytes.
    pub created: Vec<Created>,
    pub console_input: Vec<u8>,
}

fn domain(name: &str, id: u32, mem_mib: u64, vcpus: u32, state: u8, cpu_time_ns: u64) -> DomainInfo {
    DomainInfo { name: name.into(), id, mem_mib, vcpus, state: DomainState(state), cpu_time_ns }
}

impl FakeState {
    fn new() -> Self {
        FakeState {
            domains: vec![
                domain("Domain-0", 0, 256, 2, DomainState::RUNNING, 12_340_000_000),
                domain("web", 1, 128, 1, DomainState::BLOCKED, 1_500_000_000),
                domain("db", 2, 512, 2, DomainState::PAUSED, 0),
            ],
            host: HostInfo {
                version: "Ferrite 0.1.0".into(),
                host_cpus: 4,
                total_mib: 4096,
                free_mib: 3000,
            free_bytes: 0,
            heap_used_bytes: 0,
                uptime_ns: 3_723_000_000_000,
                capabilities: vec!["hvm-x86_64".into(), "pvh-x86_64".into()],
                cmdline: "console=com1".into(),
            },
            log: "(ferrite) boot complete\n".into(),
            vcpus: vec![VcpuInfo {
                dom_name: "web".into(),
                dom_id: 1,
                vcpu: 0,
                pcpu: Some(2),
                state: VcpuState(VcpuState::BLOCKED),
                time_ns: 1_500_000_000,
                affinity: 0b0110,
            }],
            vifs: vec![(
                1,
                VifInfo {
                    index: 0,
                    mac: [0x00, 0x16, 0x3e, 0x0d, 0xbf, 0x37],
                    bridge: "bridge0".into(),
                    model: "virtio-net".into(),
                    connected: true,
                    tx_packets: 1017,
                    tx_bytes: 67792,
                    rx_packets: 46803,
                    rx_bytes: 70198534,
                    tx_dropped: 9,
                    tx_spoofed: 9,
                    rx_dropped: 0,
                },
            )],
            stubborn: Vec::new(),
            shutting_down: Vec::new(),
            requests: Vec::new(),
            created: Vec::new(),
            console_input: Vec::new(),
        }
    }

    fn find(&self, dom: &DomRef) -> Result<usize, ErrorReply> {
        self.domains
            .iter()
            .position(|d| dom.matches(d.id, &d.name))
            .ok_or_else(|| ErrorReply::new(ErrorCode::NoSuchDomain, format!("domain '{dom}' does not exist")))
    }
}

/// A running fake service.
pub struct FakeService {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeService {
    /// Listens on a free loopback port; connections are served until the
    /// test process ends.
    pub fn start(secret: Secret) -> FakeService {
        Self::start_with_clock(secret, true)
    }

    /// A service whose clock stands still, so a login throttle delay never
    /// runs out however slow the test machine is.
    pub fn start_frozen(secret: Secret) -> FakeService {
        Self::start_with_clock(secret, false)
    }

    fn start_with_clock(secret: Secret, ticking: bool) -> FakeService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::new()));
        let throttle = Arc::new(Mutex::new(AuthThrottle::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let epoch = ticking.then(Instant::now);
            for stream in listener.incoming().flatten() {
                let (state, throttle, secret) = (shared.clone(), throttle.clone(), secret.clone());
                std::thread::spawn(move || serve(stream, secret, &state, &throttle, epoch));
            }
        });
        FakeService { addr, state }
    }
}

/// What a `Create` left for the chunks and the commit.
struct PendingCreate {
    text: String,
    upload: Upload,
    data: Vec<Vec<u8>>,
}

fn serve(
    mut stream: TcpStream,
    secret: Secret,
    state: &Mutex<FakeState>,
    throttle: &Mutex<AuthThrottle>,
    epoch: Option<Instant>,
) {
    let now = || epoch.map_or(0, |e| e.elapsed().as_micros() as u64);
    let mut session = ServerSession::new(secret, super::target::random_bytes().unwrap(), now());
    let mut pending: Option<PendingCreate> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                session.peer_closed();
                let _ = stream.write_all(&session.take_outgoing());
                return;
            }
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        loop {
            let used = session.feed(rest);
            rest = &rest[used..];
            while let Some(request) = session.next_request(now(), &mut throttle.lock().unwrap()) {
                let mut st = state.lock().unwrap();
                st.requests.push(request.clone());
                for response in handle(&mut st, request, &mut pending) {
                    session.respond(&response);
                }
            }
            if rest.is_empty() || session.is_closed() {
                break;
            }
        }
        if stream.write_all(&session.take_outgoing()).is_err() || session.is_closed() {
            return;
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Vec<Response> {
    vec![Response::Error(ErrorReply::new(code, message))]
}

/// The fake hypervisor's answers (none for console input, several for a
/// console push).
fn handle(st: &mut FakeState, request: Request, pending: &mut Option<PendingCreate>) -> Vec<Response> {
    let ok = vec![Response::Ok];
    match request {
        Request::List => {
            let list = st.domains.clone();
            let gone = std::mem::take(&mut st.shutting_down);
            st.domains.retain(|d| !gone.contains(&d.id));
            vec![Response::Domains(list)]
        }
        Request::Info => vec![Response::Host(st.host.clone())],
        Request::Uptime => vec![Response::Uptime(
            st.domains
                .iter()
                .map(|d| UptimeInfo { name: d.name.clone(), id: d.id, uptime_ns: 90_061_000_000_000 })
                .collect(),
        )],
        Request::Dmesg { clear } => {
            let log = if clear { std::mem::take(&mut st.log) } else { st.log.clone() };
            vec![Response::Log(log)]
        }
        Request::Destroy(d) => match st.find(&d) {
            Ok(i) => {
                st.domains.remove(i);
                ok
            }
            Err(e) => vec![Response::Error(e)],
        },
        Request::Shutdown { dom } => match st.find(&dom) {
            Ok(i) => {
                let id = st.domains[i].id;
                if !st.stubborn.contains(&id) {
                    st.shutting_down.push(id);
                }
                ok
            }
            Err(e) => vec![Response::Error(e)],
        },
        Request::Reboot(d) | Request::Pause(d) | Request::Unpause(d) | Request::Trigger { dom: d, .. } => match st.find(&d) {
            Ok(_) => ok,
            Err(e) => vec![Response::Error(e)],
        },
        Request::VcpuList(d) => {
            let vcpus = st.vcpus.iter().filter(|v| d.as_ref().is_none_or(|d| d.matches(v.dom_id, &v.dom_name)));
            vec![Response::Vcpus(vcpus.cloned().collect())]
        }
        Request::NetworkList(d) => match st.find(&d) {
            Ok(i) => {
                let vifs = st.vifs.iter().filter(|(id, _)| *id == st.domains[i].id).map(|(_, v)| v.clone()).collect();
                vec![Response::Vifs(vifs)]
            }
            Err(e) => vec![Response::Error(e)],
        },
        Request::VcpuPin { dom, .. } => match st.find(&dom) {
            Ok(_) => ok,
            Err(e) => vec![Response::Error(e)],
        },
        Request::Create { config_name, config_text, files, .. } => {
            if let Err(diags) = ferrite_config::parse(&config_name, config_text.as_bytes()) {
                return error(ErrorCode::BadConfig, diags[0].to_string());
            }
            match Upload::new(files, 64 << 20) {
                Ok(upload) => {
                    let data = vec![Vec::new(); upload.files().len()];
                    *pending = Some(PendingCreate { text: config_text, upload, data });
                    ok
                }
                Err(e) => vec![Response::Error(e)],
            }
        }
        Request::FileChunk { index, offset, data } => {
            let Some(p) = pending.as_mut() else { return error(ErrorCode::BadRequest, "no upload in progress") };
            match p.upload.accept(index, offset, &data) {
                Ok(()) => {
                    p.data[index as usize].extend_from_slice(&data);
                    ok
                }
                Err(e) => vec![Response::Error(e)],
            }
        }
        Request::CreateCommit => {
            let Some(p) = pending.take() else { return error(ErrorCode::BadRequest, "no upload in progress") };
            match p.upload.finish() {
                Ok(files) => {
                    let id = st.domains.iter().map(|d| d.id).max().unwrap_or(0) + 1;
                    let (cfg, _) = ferrite_config::parse("c", p.text.as_bytes()).unwrap();
                    st.domains.push(domain(&cfg.name, id, cfg.memory_mib, cfg.vcpus, DomainState::RUNNING, 0));
                    st.created.push((p.text, files.into_iter().zip(p.data).collect()));
                    vec![Response::Created { id }]
                }
                Err(e) => vec![Response::Error(e)],
            }
        }
        Request::ConsoleAttach(d) => match st.find(&d) {
            // "db" is the domain that goes away while attached.
            Ok(i) if st.domains[i].name == "db" => vec![
                Response::Ok,
                Response::ConsoleOutput(b"db going down\r\n".to_vec()),
                Response::Error(ErrorReply::new(ErrorCode::NoSuchDomain, "domain 'db' was destroyed")),
            ],
            Ok(i) => vec![
                Response::Ok,
                Response::ConsoleOutput(format!("welcome to {}\r\n", st.domains[i].name).into_bytes()),
            ],
            Err(e) => vec![Response::Error(e)],
        },
        Request::ConsoleInput(bytes) => {
            st.console_input.extend_from_slice(&bytes);
            vec![Response::ConsoleOutput(bytes)]
        }
        Request::ConsoleDetach => ok,
    }
}

/// A peer that is not the service: it answers the login with a frame cut
/// short, then closes.
pub fn start_truncating_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[100, 0, 0, 0, 1, 2, 3]);
        }
    });
    addr
}
