//! The messages, as serde types encoded with postcard.
//!
//! Postcard writes an enum as its variant's index, then the fields in
//! order, with no names. So the wire format *is* the declaration order:
//! **only append** variants to an enum, and never add, remove or reorder
//! the fields of a struct or variant already released (a new field means
//! a new variant or a [`crate::PROTOCOL_VERSION`] bump). A new request
//! gets its own new response variant, so an older client, which never
//! sends it, never sees one; a server answers a request index it does not
//! know with [`ErrorCode::Unsupported`] and carries on.

use crate::frame::{encode_frame, FrameError};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Everything a client sends: the two handshake steps, then requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Variant 0 with `version` first, in every version of the protocol,
    /// so any server can tell a client of another version.
    Hello(Hello),
    Proof(Proof),
    Request(Request),
}

/// Everything a server sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    Challenge(Challenge),
    Welcome(Welcome),
    Response(Response),
}

/// `ClientMessage` / `ServerMessage` by reference: the same encoding
/// (serde sees the same variant indices), without cloning a message to
/// send it.
#[derive(Serialize)]
pub(crate) enum ClientMessageRef<'a> {
    Hello(&'a Hello),
    Proof(&'a Proof),
    Request(&'a Request),
}

#[derive(Serialize)]
pub(crate) enum ServerMessageRef<'a> {
    Challenge(&'a Challenge),
    Welcome(&'a Welcome),
    Response(&'a Response),
}

/// A request as a frame (what the client sends after the login).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    encode_frame(&ClientMessageRef::Request(request))
}

/// A response as a frame.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    encode_frame(&ServerMessageRef::Response(response))
}

/// Client → server, first: the client's version and its nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub client_nonce: [u8; 32],
}

/// Server → client, answering [`Hello`]: the server's nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u32,
    pub server_nonce: [u8; 32],
}

/// Client → server: proof that the client holds the secret (see
/// [`crate::handshake`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub mac: [u8; 32],
}

/// Server → client: the login succeeded, and the server's own proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub server_mac: [u8; 32],
}

/// A domain, as the user named it: a number is an id (xl's rule: an
/// all-digit argument is a domain id), anything else a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DomRef {
    Id(u32),
    Name(String),
}

impl DomRef {
    /// xl's reading of a command-line argument.
    pub fn parse(arg: &str) -> DomRef {
        match arg.parse::<u32>() {
            Ok(id) if arg.bytes().all(|b| b.is_ascii_digit()) => DomRef::Id(id),
            _ => DomRef::Name(String::from(arg)),
        }
    }

    /// Whether this names the domain `id` called `name`.
    pub fn matches(&self, id: u32, name: &str) -> bool {
        match self {
            DomRef::Id(i) => *i == id,
            DomRef::Name(n) => n == name,
        }
    }
}

impl fmt::Display for DomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomRef::Id(id) => write!(f, "{id}"),
            DomRef::Name(name) => f.write_str(name),
        }
    }
}

/// A file `xl create` uploads with the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The value the configuration gives it (`kernel = "..."`,
    /// `ramdisk`, `firmware`), exactly as written, so the server can
    /// match config keys to files.
    pub name: String,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// A `file:` disk of an `xl create` configuration that the client serves
/// over NBD from its own machine: the hypervisor connects to `port` on the
/// address the management connection comes from; or, with `vsock_token`
/// (a client in dom0, talking over vsock), the server connects to the
/// hypervisor's vsock port for NBD and names the disk with this token in
/// its attach hello (`ferrite_nbd::encode_attach_hello`), and `port` is
/// unused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedDisk {
    /// The disk's target exactly as the configuration writes it (the path
    /// after `file:`).
    pub target: String,
    pub port: u16,
    pub export: String,
    /// 128 random bits, single-use: the server that says them is the
    /// disk's. Last, so the fields before keep their places on the wire.
    pub vsock_token: Option<[u8; 16]>,
}

/// Client → server. Each gets exactly one [`Response`], in order, except
/// [`Request::ConsoleInput`], which gets none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// → [`Response::Domains`], every domain, dom0 first.
    List,
    /// → [`Response::Host`].
    Info,
    /// → [`Response::Uptime`].
    Uptime,
    /// → [`Response::Log`]: the hypervisor's log ring; `clear` empties it.
    Dmesg { clear: bool },
    /// Stop the domain at once. → `Ok`.
    Destroy(DomRef),
    /// Ask the guest to power off (it may take a while or refuse). → `Ok`.
    Shutdown { dom: DomRef },
    /// Ask the guest to reboot. → `Ok`.
    Reboot(DomRef),
    /// → `Ok`.
    Pause(DomRef),
    /// → `Ok`.
    Unpause(DomRef),
    /// One domain's vCPUs, or every domain's. → [`Response::Vcpus`].
    VcpuList(Option<DomRef>),
    /// Hard affinity of one vCPU (`None`: all of them): bit N = host CPU N.
    /// → `Ok`.
    VcpuPin { dom: DomRef, vcpu: Option<u32>, pcpus: u64 },
    /// Starts an upload: the configuration text (as `xl create` read it,
    /// overrides appended) and the files it names, which follow as
    /// `FileChunk`s. → `Ok` when the server accepts the upload (the
    /// configuration parses, the sizes fit), else `Error` and the upload
    /// is dropped.
    /// `served`: the configuration's `file:` disks, each on an NBD server
    /// the client runs.
    Create { config_name: String, config_text: String, files: Vec<FileMeta>, served: Vec<ServedDisk> },
    /// `data` (at most [`crate::MAX_CHUNK`] bytes) of file `index` at
    /// `offset`; chunks of a file come in order. → `Ok`.
    FileChunk { index: u32, offset: u64, data: Vec<u8> },
    /// Every byte sent: check the digests, build and start the domain.
    /// → [`Response::Created`].
    CreateCommit,
    /// Attach to the domain's console. → `Ok`, then the server pushes
    /// [`Response::ConsoleOutput`] as the guest writes, until
    /// `ConsoleDetach` (answered `Ok`, after any output pushed before it)
    /// or an `Error` push (the domain went away), which ends the
    /// attachment.
    ConsoleAttach(DomRef),
    /// Bytes typed on the attached console. No response.
    ConsoleInput(Vec<u8>),
    /// → `Ok`.
    ConsoleDetach,
    /// `xl trigger`: an event from the virtual platform's outside, on
    /// vCPU `vcpu` where the kind targets one. → `Ok`.
    Trigger { dom: DomRef, trigger: Trigger, vcpu: u32 },
    /// The domain's virtual NICs and their counters. → [`Response::Vifs`].
    NetworkList(DomRef),
}

/// What `xl trigger` sends (xl's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// An NMI injected into one vCPU, whatever its local APIC's LINT1 says
    /// (as Xen does; for a hung guest's NMI watchdog or crash dump).
    Nmi,
    /// The reset button: the domain stops at once and follows its
    /// `on_reboot` action, as when the guest resets itself.
    Reset,
    /// The ACPI power button (what `xl shutdown` presses).
    Power,
}

/// Server → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Domains(Vec<DomainInfo>),
    Host(HostInfo),
    Uptime(Vec<UptimeInfo>),
    Log(String),
    Vcpus(Vec<VcpuInfo>),
    Created { id: u32 },
    ConsoleOutput(Vec<u8>),
    Error(ErrorReply),
    Vifs(Vec<VifInfo>),
}

/// One line of `xl network-list`: a NIC, its bridge and its counters, from
/// the guest's side (`rx` is what reached the guest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifInfo {
    /// The vif's index in the domain's `vif = [...]`.
    pub index: u32,
    pub mac: [u8; 6],
    pub bridge: String,
    /// `virtio-net`, `e1000`.
    pub model: String,
    /// Whether it is on its bridge (false once the domain has stopped).
    pub connected: bool,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames it sent that the bridge dropped, and of those spoofed.
    pub tx_dropped: u64,
    pub tx_spoofed: u64,
    /// Frames for it dropped for lack of room (its ring or buffers).
    pub rx_dropped: u64,
}

/// One line of `xl list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub id: u32,
    pub mem_mib: u64,
    pub vcpus: u32,
    pub state: DomainState,
    pub cpu_time_ns: u64,
}

/// A domain's state flags, xl's `r b p s c d` (bits, not a string, so
/// both ends agree on what they mean; unknown bits are ignored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState(pub u8);

impl DomainState {
    /// A vCPU is on a host CPU right now.
    pub const RUNNING: u8 = 1 << 0;
    /// Every vCPU is halted, waiting for an event.
    pub const BLOCKED: u8 = 1 << 1;
    pub const PAUSED: u8 = 1 << 2;
    /// Powered off or rebooting, not yet gone.
    pub const SHUTDOWN: u8 = 1 << 3;
    pub const CRASHED: u8 = 1 << 4;
    /// Being torn down.
    pub const DYING: u8 = 1 << 5;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    /// xl's six-character column, such as `r-----` or `--p---`.
    pub fn xl(self) -> String {
        let letters = [
            (Self::RUNNING, 'r'),
            (Self::BLOCKED, 'b'),
            (Self::PAUSED, 'p'),
            (Self::SHUTDOWN, 's'),
            (Self::CRASHED, 'c'),
            (Self::DYING, 'd'),
        ];
        letters.iter().map(|&(bit, c)| if self.has(bit) { c } else { '-' }).collect()
    }
}

/// `xl info`: the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Such as `Ferrite 0.1.0`.
    pub version: String,
    pub host_cpus: u32,
    pub total_mib: u64,
    pub free_mib: u64,
    /// Exact figures (Ferrite's own `xl info` lines): free host memory and
    /// the hypervisor heap in use, in bytes; what leak checks compare.
    pub free_bytes: u64,
    pub heap_used_bytes: u64,
    pub uptime_ns: u64,
    /// What guests can be (xl's `xen_caps`), such as `hvm-x86_64`, `pvh-x86_64`.
    pub capabilities: Vec<String>,
    /// The hypervisor's command line.
    pub cmdline: String,
}

/// One line of `xl uptime`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UptimeInfo {
    pub name: String,
    pub id: u32,
    pub uptime_ns: u64,
}

/// One line of `xl vcpu-list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    pub dom_name: String,
    pub dom_id: u32,
    pub vcpu: u32,
    /// The host CPU it runs on or last ran on; `None` if it never ran.
    pub pcpu: Option<u32>,
    pub state: VcpuState,
    pub time_ns: u64,
    /// Hard affinity: bit N = host CPU N.
    pub affinity: u64,
}

/// A vCPU's state flags, xl's three-character `r b p` column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState(pub u8);

impl VcpuState {
    pub const RUNNING: u8 = 1 << 0;
    pub const BLOCKED: u8 = 1 << 1;
    /// Not started (or its domain is paused).
    pub const PAUSED: u8 = 1 << 2;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    /// Such as `r--`, `-b-` or `--p`.
    pub fn xl(self) -> String {
        let letters = [(Self::RUNNING, 'r'), (Self::BLOCKED, 'b'), (Self::PAUSED, 'p')];
        letters.iter().map(|&(bit, c)| if self.has(bit) { c } else { '-' }).collect()
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NoSuchDomain,
    /// Malformed, unexpected or out-of-order message.
    BadRequest,
    /// The uploaded configuration does not parse or cannot be built.
    BadConfig,
    AuthFailed,
    /// Logins are refused for a while after a failed one.
    TooManyAttempts,
    /// Another operation holds what this one needs (a console already
    /// attached, an upload in progress).
    Busy,
    /// A request this hypervisor does not implement.
    Unsupported,
    Internal,
    VersionMismatch,
    /// A domain of that name exists already.
    AlreadyExists,
    /// Not enough free host memory.
    NoMemory,
    /// A code from a newer peer.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::NoSuchDomain => "no such domain",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::BadConfig => "bad configuration",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::TooManyAttempts => "too many failed logins",
            ErrorCode::Busy => "busy",
            ErrorCode::Unsupported => "not supported",
            ErrorCode::Internal => "internal error",
            ErrorCode::VersionMismatch => "protocol version mismatch",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::NoMemory => "not enough memory",
            ErrorCode::Unknown => "error",
        })
    }
}

/// A failed request: what kind, and a sentence for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    /// One line, without the code's own wording: `domain 'web' does not exist`.
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

/// `code: message`, or the code alone when there is no message; one line
/// (control characters from the peer are replaced) so a CLI can print it.
impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.message.is_empty() {
            f.write_str(": ")?;
            for c in self.message.chars() {
                let c = if c.is_control() { ' ' } else { c };
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}
