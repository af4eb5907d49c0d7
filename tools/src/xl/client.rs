//! One logged-in connection to the management service: connect, log in,
//! then requests and their responses. Every failure becomes one line that
//! says what to do about it.

use super::target::Target;
use anyhow::{anyhow, bail, Context, Result};
use ferrite_mgmt::{
    decode, encode_request, ClientHandshake, ErrorCode, FrameReader, HandshakeError, Request, Response, ServerMessage,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The host's context ID, for `--host vsock` (dom0's channel).
const VSOCK_HOST_CID: u32 = 2;

/// The connection: TCP to the hypervisor's NIC, or dom0's vsock.
pub enum Stream {
    Tcp(TcpStream),
    Vsock(vsock::VsockStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Vsock(s) => Stream::Vsock(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Vsock(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Vsock(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Vsock(s) => s.flush(),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may take (a `create` builds a whole domain).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Client {
    stream: Stream,
    reader: FrameReader,
    /// Bytes read from the socket that the reader has not taken yet.
    pending: Vec<u8>,
    addr: String,
}

impl Client {
    /// Whether this connection is dom0's vsock channel.
    pub fn over_vsock(&self) -> bool {
        matches!(self.stream, Stream::Vsock(_))
    }

    /// Connects and logs in.
    pub fn connect(target: &Target) -> Result<Client> {
        if target.host == super::target::VSOCK_HOST {
            // dom0: the hypervisor's vsock device, no network needed.
            let addr = format!("vsock {}:{}", VSOCK_HOST_CID, target.port);
            let stream = vsock::VsockStream::connect_with_cid_port(VSOCK_HOST_CID, u32::from(target.port)).map_err(|e| {
                anyhow!("cannot reach the Ferrite management service over vsock: {e}; is this dom0 of a Ferrite, with the vsock modules loaded (modprobe vmw_vsock_virtio_transport)?")
            })?;
            let stream = Stream::Vsock(stream);
            stream.set_read_timeout(Some(ANSWER_TIMEOUT)).context("cannot set a socket timeout")?;
            let mut client = Client { stream, reader: FrameReader::new(), pending: Vec::new(), addr };
            client.log_in(target)?;
            return Ok(client);
        }
        let addr = target.addr();
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!(
                "cannot reach the Ferrite management service at {addr}: {e}; is Ferrite running (ferrite up) and the \
                 port forwarded?"
            )
        };
        let addrs: Vec<_> =
            (target.host.as_str(), target.port).to_socket_addrs().map_err(|e| unreachable(&e))?.collect();
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(unreachable(&e)),
            (None, None) => return Err(unreachable(&"the name has no address")),
        };
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).context("cannot set a socket timeout")?;
        let mut client = Client { stream: Stream::Tcp(stream), reader: FrameReader::new(), pending: Vec::new(), addr };
        client.log_in(target)?;
        Ok(client)
    }

    fn log_in(&mut self, target: &Target) -> Result<()> {
        let mut handshake = ClientHandshake::new(target.secret.clone(), super::target::random_bytes()?);
        let hello = handshake.hello().map_err(|e| anyhow!("{e}"))?;
        self.write(&hello)?;
        let answer = self.read_message()?;
        let proof = handshake.on_challenge(answer).map_err(|e| self.login_error(e, target))?;
        self.write(&proof)?;
        let answer = self.read_message()?;
        handshake.on_welcome(answer).map_err(|e| self.login_error(e, target))
    }

    fn login_error(&self, e: HandshakeError, target: &Target) -> anyhow::Error {
        let addr = &self.addr;
        let source = &target.key_source;
        match e {
            HandshakeError::Refused(r) if r.code == ErrorCode::AuthFailed => {
                anyhow!("the Ferrite management service at {addr} refused the key from {source} ({r})")
            }
            HandshakeError::Refused(r) => anyhow!("the Ferrite management service at {addr} refused the login: {r}"),
            HandshakeError::BadServerProof => anyhow!(
                "the service at {addr} could not prove it holds the key from {source}: it is not the Ferrite you \
                 meant, or that Ferrite uses another key"
            ),
            e => anyhow!("login to the Ferrite management service at {addr} failed: {e}"),
        }
    }

    /// Sends a request without waiting for an answer.
    pub fn send(&mut self, request: &Request) -> Result<()> {
        let frame = encode_request(request).map_err(|e| anyhow!("cannot send the request: {e}"))?;
        self.write(&frame)
    }

    /// The next response (an `Error` response is returned, not raised).
    pub fn receive(&mut self) -> Result<Response> {
        match self.read_message()? {
            ServerMessage::Response(r) => Ok(r),
            _ => bail!("the Ferrite management service at {} sent a login message after the login", self.addr),
        }
    }

    /// Sends a request and returns its answer; an `Error` answer becomes
    /// an error.
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        self.send(request)?;
        match self.receive()? {
            Response::Error(e) => Err(anyhow!("{e}")),
            r => Ok(r),
        }
    }

    /// [`call`](Self::call) for requests answered `Ok`.
    pub fn call_ok(&mut self, request: &Request) -> Result<()> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    pub fn unexpected(&self, response: &Response) -> anyhow::Error {
        let what = format!("{response:?}");
        let what: String = what.chars().take(60).collect();
        anyhow!("the Ferrite management service at {} sent an unexpected answer: {what}", self.addr)
    }

    /// A second handle on the socket, for a thread that only writes.
    pub fn writer(&self) -> Result<Stream> {
        self.stream.try_clone().context("cannot duplicate the connection")
    }

    /// `None`: wait for answers for ever (an attached console).
    pub fn set_answer_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout).context("cannot set a socket timeout")
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| anyhow!("lost the connection to the Ferrite management service at {}: {e}", self.addr))
    }

    fn read_message(&mut self) -> Result<ServerMessage> {
        let addr = self.addr.clone();
        let malformed = |e: &dyn std::fmt::Display| {
            anyhow!("the Ferrite management service at {addr} sent a malformed message: {e}")
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(payload) = self.reader.next_frame().map_err(|e| malformed(&e))? {
                return decode::<ServerMessage>(&payload)
                    .map_err(|e| malformed(&format_args!("{e} (is this client older than the hypervisor?)")));
            }
            if !self.pending.is_empty() {
                let n = self.reader.feed(&self.pending).map_err(|e| malformed(&e))?;
                self.pending.drain(..n);
                continue;
            }
            match self.stream.read(&mut buf) {
                Ok(0) if self.reader.buffered() > 0 => {
                    bail!("the Ferrite management service at {addr} closed the connection in the middle of a message")
                }
                Ok(0) => bail!("the Ferrite management service at {addr} closed the connection"),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!(
                        "the Ferrite management service at {addr} did not answer within {} s",
                        ANSWER_TIMEOUT.as_secs()
                    )
                }
                Err(e) => bail!("lost the connection to the Ferrite management service at {addr}: {e}"),
            }
        }
    }
}
