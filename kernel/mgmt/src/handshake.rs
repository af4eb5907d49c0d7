//! The challenge–response login, in both directions:
//!
//! ```text
//! client → Hello     { version, client_nonce }
//! server → Challenge { version, server_nonce }     or Error(VersionMismatch / TooManyAttempts)
//! client → Proof     { mac = HMAC(secret, "ferrite-mgmt-v1 client" ‖ server_nonce ‖ client_nonce) }
//! server → Welcome   { server_mac = HMAC(secret, "ferrite-mgmt-v1 server" ‖ client_nonce ‖ server_nonce) }
//!                                                  or Error(AuthFailed), then it closes
//! ```
//!
//! The secret never crosses the wire and each proof is bound to both
//! nonces, so a recorded login cannot be replayed against a new server
//! nonce. The distinct labels stop a proof from being reflected back as
//! the other side's. The server's MAC lets the client know it reached the
//! real hypervisor and not something else listening on the port. MACs are
//! compared in constant time (`Mac::verify_slice`).

use crate::frame::{encode_frame, FrameError};
use crate::message::{ClientMessageRef, ErrorReply, Hello, Proof, Response, ServerMessage};
use crate::secret::Secret;
use crate::PROTOCOL_VERSION;
use alloc::vec::Vec;
use core::fmt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const CLIENT_LABEL: &[u8] = b"ferrite-mgmt-v1 client";
const SERVER_LABEL: &[u8] = b"ferrite-mgmt-v1 server";

fn keyed(secret: &Secret, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac
}

/// The client's proof.
pub fn client_mac(secret: &Secret, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
    keyed(secret, CLIENT_LABEL, server_nonce, client_nonce).finalize().into_bytes().into()
}

/// The server's proof.
pub fn server_mac(secret: &Secret, client_nonce: &[u8; 32], server_nonce: &[u8; 32]) -> [u8; 32] {
    keyed(secret, SERVER_LABEL, client_nonce, server_nonce).finalize().into_bytes().into()
}

/// Checks a client's proof in constant time.
pub fn verify_client_mac(secret: &Secret, server_nonce: &[u8; 32], client_nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
    keyed(secret, CLIENT_LABEL, server_nonce, client_nonce).verify_slice(mac).is_ok()
}

/// Checks the server's proof in constant time.
pub fn verify_server_mac(secret: &Secret, client_nonce: &[u8; 32], server_nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
    keyed(secret, SERVER_LABEL, client_nonce, server_nonce).verify_slice(mac).is_ok()
}

/// Why the client side of the login failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server said no (wrong key, too many attempts, version...).
    Refused(ErrorReply),
    /// The server speaks another protocol version.
    VersionMismatch {
        server: u32,
    },
    /// The server's proof is wrong: it does not hold our key.
    BadServerProof,
    /// The server sent something that does not belong here.
    Unexpected,
    Frame(FrameError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Refused(reply) => write!(f, "{reply}"),
            HandshakeError::VersionMismatch { server } => {
                write!(f, "the server speaks protocol version {server}, this client {PROTOCOL_VERSION}")
            }
            HandshakeError::BadServerProof => {
                f.write_str("the server could not prove it holds the key (another service, or another key)")
            }
            HandshakeError::Unexpected => f.write_str("the server answered the login with an unexpected message"),
            HandshakeError::Frame(e) => write!(f, "{e}"),
        }
    }
}

/// The client's half of the login, I/O left to the caller:
/// send [`hello`](Self::hello), pass the server's answer to
/// [`on_challenge`](Self::on_challenge) and send the proof it returns, then
/// pass the next answer to [`on_welcome`](Self::on_welcome).
#[derive(Debug)]
pub struct ClientHandshake {
    secret: Secret,
    client_nonce: [u8; 32],
    server_nonce: Option<[u8; 32]>,
}

impl ClientHandshake {
    /// `client_nonce`: 32 fresh random bytes.
    pub fn new(secret: Secret, client_nonce: [u8; 32]) -> Self {
        ClientHandshake { secret, client_nonce, server_nonce: None }
    }

    /// The `Hello` frame.
    pub fn hello(&self) -> Result<Vec<u8>, HandshakeError> {
        let hello = Hello { version: PROTOCOL_VERSION, client_nonce: self.client_nonce };
        encode_frame(&ClientMessageRef::Hello(&hello)).map_err(HandshakeError::Frame)
    }

    /// The server's answer to `Hello` → the `Proof` frame to send.
    pub fn on_challenge(&mut self, answer: ServerMessage) -> Result<Vec<u8>, HandshakeError> {
        let challenge = match answer {
            ServerMessage::Challenge(c) => c,
            ServerMessage::Response(Response::Error(e)) => return Err(HandshakeError::Refused(e)),
            _ => return Err(HandshakeError::Unexpected),
        };
        if challenge.version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch { server: challenge.version });
        }
        self.server_nonce = Some(challenge.server_nonce);
        let mac = client_mac(&self.secret, &challenge.server_nonce, &self.client_nonce);
        encode_frame(&ClientMessageRef::Proof(&Proof { mac })).map_err(HandshakeError::Frame)
    }

    /// The server's answer to `Proof`: `Ok` once the server has proved it
    /// holds the key too.
    pub fn on_welcome(&self, answer: ServerMessage) -> Result<(), HandshakeError> {
        let server_nonce = self.server_nonce.ok_or(HandshakeError::Unexpected)?;
        match answer {
            ServerMessage::Welcome(w) => {
                if verify_server_mac(&self.secret, &self.client_nonce, &server_nonce, &w.server_mac) {
                    Ok(())
                } else {
                    Err(HandshakeError::BadServerProof)
                }
            }
            ServerMessage::Response(Response::Error(e)) => Err(HandshakeError::Refused(e)),
            _ => Err(HandshakeError::Unexpected),
        }
    }
}
