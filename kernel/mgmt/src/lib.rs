//! The Ferrite management protocol: how `ferrite xl` on the host talks to
//! the management service inside the hypervisor (xl's job in Xen, issue 11).
//!
//! One TCP connection carries length-prefixed postcard messages
//! ([`frame`]). It opens with a challenge–response handshake over a shared
//! 32-byte [`Secret`] that never crosses the wire ([`handshake`]); after
//! it, the client sends [`Request`]s and the server answers each with one
//! [`Response`] ([`message`]), and pushes console output while a console is
//! attached.
//!
//! The hypervisor drives a [`ServerSession`] per connection: it feeds the
//! bytes it received, executes the authenticated requests the session hands
//! out, and sends what the session queued. The session is pure (no I/O, no
//! clock, no RNG: time and nonces come from the caller), so all of it is
//! tested on the host. Failed logins are rate-limited across connections by
//! one [`AuthThrottle`]; file uploads for `xl create` are checked by
//! [`Upload`].
//!
//! The handshake authenticates both ends; the traffic after it is neither
//! encrypted nor integrity-protected, so the service belongs on a trusted
//! link (QEMU's forwarded loopback port, a management network).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod frame;
pub mod handshake;
pub mod message;
pub mod secret;
pub mod session;
pub mod throttle;
pub mod upload;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

/// The protocol version both ends announce in the handshake. Bump it for
/// any change an older peer would misread; appending enum variants (new
/// requests with new responses) needs no bump, see [`message`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The TCP port the service listens on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 7070;

/// Largest payload of one frame. Bounds what either side buffers for a
/// single message; large data (kernel images) travels in [`MAX_CHUNK`]
/// pieces.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest `data` of one [`Request::FileChunk`].
pub const MAX_CHUNK: usize = 64 * 1024;

pub use frame::{decode, encode_frame, FrameError, FrameReader};
pub use handshake::{ClientHandshake, HandshakeError};
pub use message::{
    encode_request, encode_response, Challenge, ClientMessage, DomRef, DomainInfo, DomainState, ErrorCode, ErrorReply,
    FileMeta, Hello, HostInfo, Proof, Request, Response, ServedDisk, ServerMessage, Trigger, UptimeInfo, VcpuInfo, VcpuState, VifInfo, Welcome,
};
pub use secret::{Secret, SecretError};
pub use session::{ServerSession, SessionState};
pub use throttle::AuthThrottle;
pub use upload::{FileHasher, Upload};
