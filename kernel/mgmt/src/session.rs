//! The server's side of one connection, as a state machine the
//! hypervisor drives: no sockets, no clock, no RNG. The caller moves bytes
//! between the session and its TCP socket, executes the requests the
//! session hands out, and passes in the time and the session's nonce.
//!
//! Anything wrong on the wire (a malformed, oversized or unexpected frame,
//! a request before the login, a connection closed inside a frame) gets
//! one `Error` response and ends the session: after such an error the
//! stream cannot be trusted to be in step any more.

use crate::frame::{decode, encode_frame, FrameReader};
use crate::handshake::{server_mac, verify_client_mac};
use crate::message::{
    encode_response, Challenge, ClientMessage, ErrorCode, ErrorReply, Request, Response, ServerMessageRef, Welcome,
};
use crate::secret::Secret;
use crate::throttle::AuthThrottle;
use crate::{MAX_FRAME, PROTOCOL_VERSION};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A login not finished within this many microseconds of the connection
/// is dropped ([`ServerSession::check_timeout`]), so idle connections
/// cannot hold the service's few sockets.
pub const HANDSHAKE_TIMEOUT_US: u64 = 10_000_000;

/// While more than this many bytes wait to be sent, the session hands out
/// no request: a client that sends without reading cannot make the
/// hypervisor queue responses without bound.
pub const OUTPUT_HIGH_WATER: usize = MAX_FRAME;

/// Number of [`Request`] variants this version knows; a higher index is a
/// newer client's request, answered `Unsupported` without ending the
/// session. (A test keeps it in step with the enum.)
pub const REQUEST_VARIANTS: u32 = 19;

/// `ClientMessage`'s variant indices (see [`crate::message`]).
const HELLO_TAG: u32 = 0;
const REQUEST_TAG: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    AwaitHello,
    AwaitProof,
    Authenticated,
    /// Finished: send what [`ServerSession::outgoing`] still holds, then
    /// close the socket.
    Closed,
}

/// One connection to the management service.
///
/// ```text
/// on accept:     ServerSession::new(secret, 32 random bytes, now)
/// on readable:   n = session.feed(bytes)  (keep the rest for later)
///                while let Some(req) = session.next_request(now, &mut throttle) {
///                    session.respond(&execute(req));   // not for ConsoleInput
///                }
/// console output: session.respond(&Response::ConsoleOutput(bytes)) while attached
/// on writable:   n = socket.send(session.outgoing()); session.advance_outgoing(n)
/// on EOF:        session.peer_closed()
/// periodically:  session.check_timeout(now)
/// is_closed() and outgoing() empty: close the socket
/// ```
#[derive(Debug)]
pub struct ServerSession {
    secret: Secret,
    server_nonce: [u8; 32],
    client_nonce: [u8; 32],
    state: SessionState,
    reader: FrameReader,
    out: Vec<u8>,
    started_us: u64,
}

impl ServerSession {
    /// `server_nonce`: 32 fresh random bytes for this connection; `now_us`:
    /// the caller's monotonic clock, for [`HANDSHAKE_TIMEOUT_US`].
    pub fn new(secret: Secret, server_nonce: [u8; 32], now_us: u64) -> Self {
        ServerSession {
            secret,
            server_nonce,
            client_nonce: [0; 32],
            state: SessionState::AwaitHello,
            reader: FrameReader::new(),
            out: Vec::new(),
            started_us: now_us,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == SessionState::Closed
    }

    /// Takes received bytes; returns how many it used. Fewer than given
    /// means its buffer holds a whole frame: call
    /// [`next_request`](Self::next_request), then feed the rest. Once
    /// closed it discards everything.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.is_closed() {
            return data.len();
        }
        match self.reader.feed(data) {
            Ok(n) => n,
            Err(e) => {
                self.fail(ErrorCode::BadRequest, format!("{e}"));
                data.len()
            }
        }
    }

    /// The next authenticated request, if one is complete. Handshake
    /// messages and protocol errors are dealt with on the way (their
    /// answers queued). Returns `None` while too much output waits
    /// ([`OUTPUT_HIGH_WATER`]). Each request must be answered with
    /// [`respond`](Self::respond) before the next is taken, except
    /// [`Request::ConsoleInput`], which gets no answer.
    pub fn next_request(&mut self, now_us: u64, throttle: &mut AuthThrottle) -> Option<Request> {
        loop {
            if self.is_closed() || self.out.len() > OUTPUT_HIGH_WATER {
                return None;
            }
            let payload = match self.reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => {
                    self.fail(ErrorCode::BadRequest, format!("{e}"));
                    return None;
                }
            };
            match self.state {
                SessionState::AwaitHello => self.on_hello(&payload, now_us, throttle),
                SessionState::AwaitProof => self.on_proof(&payload, now_us, throttle),
                SessionState::Authenticated => {
                    if let Some(request) = self.on_request(&payload) {
                        return Some(request);
                    }
                }
                SessionState::Closed => return None,
            }
        }
    }

    /// Queues a response: the answer to a request, or a console push.
    /// Ignored unless authenticated. A response too large for one frame is
    /// replaced by an `Internal` error.
    pub fn respond(&mut self, response: &Response) {
        if self.state != SessionState::Authenticated {
            return;
        }
        match encode_response(response) {
            Ok(frame) => self.out.extend_from_slice(&frame),
            Err(e) => {
                let reply = Response::Error(ErrorReply::new(ErrorCode::Internal, format!("response not sent: {e}")));
                self.queue(&ServerMessageRef::Response(&reply));
            }
        }
    }

    /// Bytes waiting to be sent.
    pub fn outgoing(&self) -> &[u8] {
        &self.out
    }

    /// The first `n` bytes of [`outgoing`](Self::outgoing) were sent.
    pub fn advance_outgoing(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// All bytes waiting to be sent, taken out.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.out)
    }

    /// The peer closed its side (EOF). Stopping inside a frame is an error;
    /// either way the session is over.
    pub fn peer_closed(&mut self) {
        if self.is_closed() {
            return;
        }
        if self.reader.buffered() > 0 {
            let n = self.reader.buffered();
            self.fail(ErrorCode::BadRequest, format!("connection closed inside a frame ({n} bytes buffered)"));
        } else {
            self.state = SessionState::Closed;
        }
    }

    /// Ends a login that has taken longer than [`HANDSHAKE_TIMEOUT_US`];
    /// returns whether the session is closed.
    pub fn check_timeout(&mut self, now_us: u64) -> bool {
        let logging_in = matches!(self.state, SessionState::AwaitHello | SessionState::AwaitProof);
        if logging_in && now_us.saturating_sub(self.started_us) > HANDSHAKE_TIMEOUT_US {
            self.fail(ErrorCode::BadRequest, "login not completed in time");
        }
        self.is_closed()
    }

    /// The session's buffers, for tests and accounting: (input, output).
    pub fn buffered(&self) -> (usize, usize) {
        (self.reader.buffered(), self.out.len())
    }

    fn on_hello(&mut self, payload: &[u8], now_us: u64, throttle: &AuthThrottle) {
        // A Hello of any version starts with its tag and the version, so
        // a client of another version is told so whatever else changed.
        if let Ok(((HELLO_TAG, version), _)) = postcard::take_from_bytes::<(u32, u32)>(payload) {
            if version != PROTOCOL_VERSION {
                let msg = format!("this hypervisor speaks protocol version {PROTOCOL_VERSION}, the client {version}");
                return self.fail(ErrorCode::VersionMismatch, msg);
            }
        }
        let hello = match decode::<ClientMessage>(payload) {
            Ok(ClientMessage::Hello(h)) => h,
            Ok(_) => return self.fail(ErrorCode::BadRequest, "log in first: the first message must be Hello"),
            Err(e) => return self.fail(ErrorCode::BadRequest, format!("{e}")),
        };
        if let Err(wait_us) = throttle.check(now_us) {
            return self.fail(ErrorCode::TooManyAttempts, retry_message(wait_us));
        }
        self.client_nonce = hello.client_nonce;
        self.state = SessionState::AwaitProof;
        let challenge = Challenge { version: PROTOCOL_VERSION, server_nonce: self.server_nonce };
        self.queue(&ServerMessageRef::Challenge(&challenge));
    }

    fn on_proof(&mut self, payload: &[u8], now_us: u64, throttle: &mut AuthThrottle) {
        let proof = match decode::<ClientMessage>(payload) {
            Ok(ClientMessage::Proof(p)) => p,
            Ok(_) => return self.fail(ErrorCode::BadRequest, "log in first: expected the Proof"),
            Err(e) => return self.fail(ErrorCode::BadRequest, format!("{e}")),
        };
        // Checked here too, not only at Hello: connections opened during a
        // quiet moment must not all get to try their proofs at once.
        if let Err(wait_us) = throttle.check(now_us) {
            return self.fail(ErrorCode::TooManyAttempts, retry_message(wait_us));
        }
        if !verify_client_mac(&self.secret, &self.server_nonce, &self.client_nonce, &proof.mac) {
            throttle.record_failure(now_us);
            return self.fail(ErrorCode::AuthFailed, "wrong key");
        }
        throttle.record_success();
        self.state = SessionState::Authenticated;
        let welcome = Welcome { server_mac: server_mac(&self.secret, &self.client_nonce, &self.server_nonce) };
        self.queue(&ServerMessageRef::Welcome(&welcome));
    }

    fn on_request(&mut self, payload: &[u8]) -> Option<Request> {
        match decode::<ClientMessage>(payload) {
            Ok(ClientMessage::Request(r)) => Some(r),
            Ok(_) => {
                self.fail(ErrorCode::BadRequest, "already logged in");
                None
            }
            Err(e) => {
                match postcard::take_from_bytes::<(u32, u32)>(payload) {
                    // A newer client's request: the frame is intact, so say
                    // so and carry on.
                    Ok(((REQUEST_TAG, index), _)) if index >= REQUEST_VARIANTS => {
                        let reply = ErrorReply::new(
                            ErrorCode::Unsupported,
                            format!("request #{index} is not supported by this hypervisor"),
                        );
                        self.respond(&Response::Error(reply));
                    }
                    _ => self.fail(ErrorCode::BadRequest, format!("{e}")),
                }
                None
            }
        }
    }

    fn queue(&mut self, message: &ServerMessageRef<'_>) {
        // Handshake messages and errors are small: encoding cannot fail
        // short of memory, and then there is nothing better to send.
        if let Ok(frame) = encode_frame(message) {
            self.out.extend_from_slice(&frame);
        }
    }

    /// Queues an error and ends the session.
    fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
        if self.is_closed() {
            return;
        }
        let reply = Response::Error(ErrorReply::new(code, message));
        self.queue(&ServerMessageRef::Response(&reply));
        self.state = SessionState::Closed;
        // Nothing more will be read.
        self.reader = FrameReader::new();
    }
}

fn retry_message(wait_us: u64) -> String {
    let tenths = wait_us.div_ceil(100_000);
    format!("a login failed recently; retry in {}.{} s", tenths / 10, tenths % 10)
}
