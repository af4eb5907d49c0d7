//! The NBD (network block device) protocol, both ends, without I/O.
//!
//! `file:` disks are served by the toolstack (`ferrite nbd-serve`, started
//! by `ferrite xl create`) and read by the hypervisor over its TCP/IP
//! stack; `nbd:HOST:PORT/EXPORT` disks name any standard server
//! (`qemu-nbd`, `nbdkit`, `nbd-server`). This crate holds what both ends
//! need, as pure logic the host tests:
//!
//! - [`ClientHandshake`]: the client's fixed-newstyle negotiation of one
//!   export (`NBD_OPT_GO`, falling back to `NBD_OPT_EXPORT_NAME` on servers
//!   that do not know it, and to plain newstyle on servers that are not
//!   "fixed").
//! - [`ServerHandshake`]: the server's side of the same negotiation.
//! - The transmission phase with simple replies: [`encode_request`],
//!   [`decode_request`], [`encode_simple_reply`], [`decode_simple_reply`],
//!   and the checks a server makes before it carries a request out
//!   ([`check_request`]).
//! - The attach hello ([`encode_attach_hello`], [`decode_attach_hello`]):
//!   what a server that connects to its client (dom0's `file:` disks over
//!   vsock) sends before the handshake, naming the disk by a token.
//!
//! Both handshakes are driven the same way: the caller sends what
//! `poll_output` hands out and feeds what it receives to `feed`, which
//! consumes whole messages only and says how many bytes it took; the rest
//! stays with the caller, to be fed again once more has arrived. Every
//! error is final: the caller sends what `poll_output` still holds (a
//! last reply or an `NBD_OPT_ABORT`) and closes the connection.
//!
//! Everything the peer sends is treated as hostile: magic numbers are
//! checked, every length is bounded before anything is buffered
//! ([`MAX_OPTION_REPLY`], [`MAX_OPTION_DATA`], [`MAX_REQUEST_BYTES`]), and
//! nothing panics on any input (a deterministic fuzz test checks this).
//!
//! Structured replies, block status, TLS and the extended-headers
//! extension are not implemented: the client does not ask for them and the
//! server refuses them (`NBD_REP_ERR_UNSUP`), which the protocol allows.
//! All numbers on the wire are big-endian.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod attach;
mod client;
mod error;
mod server;
mod transmission;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;

pub use attach::{
    decode_attach_hello, encode_attach_hello, AttachError, ATTACH_HELLO_BYTES, ATTACH_MAGIC, ATTACH_TOKEN_BYTES,
};
pub use client::ClientHandshake;
pub use error::NbdError;
pub use server::ServerHandshake;
pub use transmission::{
    check_request, decode_request, decode_simple_reply, encode_request, encode_simple_reply,
    Request, SimpleReply, REPLY_HEADER_BYTES, REQUEST_HEADER_BYTES,
};

/// The most a client sends in one READ or WRITE request and the most the
/// server accepts: 32 MiB, the payload limit the protocol says no server
/// should treat as an attack, and the default maximum payload.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;

/// The most data the client buffers for one option reply. Strings in the
/// protocol are at most 4096 bytes; a longer reply is an error.
pub const MAX_OPTION_REPLY: u32 = 16 << 10;

/// The most option data the server buffers for one option. Longer options
/// are skipped and refused with `NBD_REP_ERR_TOO_BIG`, except
/// `NBD_OPT_EXPORT_NAME`, which cannot be refused and ends the session.
pub const MAX_OPTION_DATA: u32 = 16 << 10;

/// The longest export name either end accepts (the protocol's limit on
/// strings).
pub const MAX_NAME_BYTES: usize = 4096;

/// The IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Magic numbers.
pub mod magic {
    /// `NBDMAGIC`: the first 8 bytes a server sends.
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// `IHAVEOPT`: the newstyle greeting's second magic, and every option's.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// The oldstyle greeting's second magic (not supported).
    pub const OLDSTYLE: u64 = 0x0000_4202_8186_1253;
    /// Every fixed-newstyle option reply.
    pub const OPTION_REPLY: u64 = 0x0003_e889_0455_65a9;
    /// `NBD_REQUEST_MAGIC`.
    pub const REQUEST: u32 = 0x2560_9513;
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    pub const SIMPLE_REPLY: u32 = 0x6744_6698;
    /// `NBD_STRUCTURED_REPLY_MAGIC` (only recognised, to say so in errors).
    pub const STRUCTURED_REPLY: u32 = 0x668e_33ef;
}

/// Handshake flags (server, 16 bits) and client flags (32 bits).
pub mod handshake_flags {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 1 << 1;
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags: what the export is and which commands it takes.
pub mod flags {
    /// `NBD_FLAG_HAS_FLAGS`: always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`: writes and trims fail with `EPERM`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`: `NBD_CMD_FLUSH` is understood.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`: `NBD_CMD_FLAG_FUA` is understood.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`: `NBD_CMD_TRIM` is understood.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF` (structured replies only).
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_FLAG_SEND_CACHE`.
    pub const SEND_CACHE: u16 = 1 << 10;
}

/// Command flags (16 bits in every request).
pub mod cmd_flags {
    /// `NBD_CMD_FLAG_FUA`: the reply waits until the data is durable.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE` (`NBD_CMD_WRITE_ZEROES` only).
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF` (structured replies only).
    pub const DF: u16 = 1 << 2;
}

/// Option numbers (`NBD_OPT_*`).
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
    pub const EXTENDED_HEADERS: u32 = 11;

    /// The option's name, for messages.
    pub fn name(option: u32) -> &'static str {
        match option {
            EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            ABORT => "NBD_OPT_ABORT",
            LIST => "NBD_OPT_LIST",
            STARTTLS => "NBD_OPT_STARTTLS",
            INFO => "NBD_OPT_INFO",
            GO => "NBD_OPT_GO",
            STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
            _ => "an unknown option",
        }
    }
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERROR_BIT: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERROR_BIT | 1;
    pub const ERR_POLICY: u32 = ERROR_BIT | 2;
    pub const ERR_INVALID: u32 = ERROR_BIT | 3;
    pub const ERR_PLATFORM: u32 = ERROR_BIT | 4;
    pub const ERR_TLS_REQD: u32 = ERROR_BIT | 5;
    pub const ERR_UNKNOWN: u32 = ERROR_BIT | 6;
    pub const ERR_SHUTDOWN: u32 = ERROR_BIT | 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERROR_BIT | 8;
    pub const ERR_TOO_BIG: u32 = ERROR_BIT | 9;

    /// The reply type's name, for messages.
    pub fn name(reply: u32) -> &'static str {
        match reply {
            ACK => "NBD_REP_ACK",
            SERVER => "NBD_REP_SERVER",
            INFO => "NBD_REP_INFO",
            META_CONTEXT => "NBD_REP_META_CONTEXT",
            ERR_UNSUP => "NBD_REP_ERR_UNSUP",
            ERR_POLICY => "NBD_REP_ERR_POLICY",
            ERR_INVALID => "NBD_REP_ERR_INVALID",
            ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
            ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
            ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
            ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
            ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
            r if r & ERROR_BIT != 0 => "an unknown error reply",
            _ => "an unknown reply",
        }
    }
}

/// Information types in `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// The error values a reply carries (`NBD_E*`, errno numbers on Linux).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;

    /// What the error means, for log lines ("Input/output error").
    /// Unknown values read as `EINVAL`, as the protocol asks of clients.
    pub fn describe(error: u32) -> &'static str {
        match error {
            0 => "success",
            EPERM => "Operation not permitted",
            EIO => "Input/output error",
            ENOMEM => "Cannot allocate memory",
            ENOSPC => "No space left on device",
            EOVERFLOW => "Value too large",
            ENOTSUP => "Operation not supported",
            ESHUTDOWN => "Server is shutting down",
            _ => "Invalid argument",
        }
    }
}

/// Request types (`NBD_CMD_*`) this crate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
}

impl Command {
    /// The type number on the wire.
    pub const fn to_wire(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
        }
    }

    /// The command a type number names, if it is one of these.
    pub const fn from_wire(kind: u16) -> Option<Command> {
        match kind {
            0 => Some(Command::Read),
            1 => Some(Command::Write),
            2 => Some(Command::Disc),
            3 => Some(Command::Flush),
            4 => Some(Command::Trim),
            _ => None,
        }
    }
}

/// An export as negotiated: its size in bytes and its transmission flags
/// ([`flags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
}

impl Export {
    pub fn read_only(&self) -> bool {
        self.flags & flags::READ_ONLY != 0
    }
    pub fn can_flush(&self) -> bool {
        self.flags & flags::SEND_FLUSH != 0
    }
    pub fn can_fua(&self) -> bool {
        self.flags & flags::SEND_FUA != 0
    }
    pub fn can_trim(&self) -> bool {
        self.flags & flags::SEND_TRIM != 0
    }
}

/// A server's size constraints (`NBD_INFO_BLOCK_SIZE`). A client that
/// asked for them, as [`ClientHandshake`] does, must keep to them: offsets
/// and lengths multiples of `min`, payloads at most `max_payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSize {
    pub min: u32,
    pub preferred: u32,
    pub max_payload: u32,
}

impl BlockSize {
    /// What holds when the server says nothing: 1 byte, 4 KiB, 32 MiB.
    pub const DEFAULT: BlockSize = BlockSize {
        min: 1,
        preferred: 4096,
        max_payload: MAX_REQUEST_BYTES,
    };

    /// Whether the values are usable: `min` a power of two of at most
    /// 64 KiB, `preferred` a power of two at least `min`, `max_payload` at
    /// least `min`. (The protocol asks more of `preferred` and
    /// `max_payload`; a client loses nothing by tolerating less.)
    pub fn is_valid(&self) -> bool {
        self.min.is_power_of_two()
            && self.min <= 1 << 16
            && self.preferred.is_power_of_two()
            && self.preferred >= self.min
            && self.max_payload >= self.min
    }

    /// The largest READ or WRITE a client should send: `max_payload`,
    /// at most [`MAX_REQUEST_BYTES`], rounded down to a multiple of `min`.
    pub fn max_request(&self) -> u32 {
        let max = self.max_payload.min(MAX_REQUEST_BYTES);
        let min = self.min.max(1);
        max - max % min
    }
}

/// Big-endian readers over a slice the caller has checked is long enough.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
