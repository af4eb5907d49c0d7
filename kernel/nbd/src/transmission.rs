//! The transmission phase with simple replies: request headers, reply
//! headers, and what a server checks before carrying a request out.
//!
//! Request (28 bytes): magic u32, command flags u16, type u16, cookie u64,
//! offset u64, length u32; a WRITE's `length` bytes of data follow.
//! Simple reply (16 bytes): magic u32, error u32, cookie u64; a successful
//! READ's `length` bytes of data follow.

use crate::MAX_REQUEST_BYTES;
use crate::{be16, be32, be64, cmd_flags, errno, magic, Command, Export, NbdError};

/// Bytes in a request header.
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Bytes in a simple reply header.
pub const REPLY_HEADER_BYTES: usize = 16;

/// A request header as the server decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cmd_flags`]).
    pub flags: u16,
    /// The type number as sent.
    pub kind: u16,
    /// The command, when `kind` is one this crate knows; the server answers
    /// the others with `EINVAL` ([`check_request`]).
    pub command: Option<Command>,
    /// The client's opaque tag, echoed in the reply (NBD's "handle").
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Bytes of data that follow this header on the wire: the payload of a
    /// WRITE, nothing otherwise. The server must read them even when it
    /// refuses the request, to stay in step with the client.
    pub fn payload_len(&self) -> u32 {
        if self.command == Some(Command::Write) {
            self.length
        } else {
            0
        }
    }
}

/// A simple reply header as the client decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0, or an [`errno`] value.
    pub error: u32,
    pub cookie: u64,
}

/// The 28-byte request header. For [`Command::Write`] the caller sends
/// `length` bytes of data right after it.
pub fn encode_request(
    cookie: u64,
    cmd: Command,
    flags: u16,
    offset: u64,
    length: u32,
) -> [u8; REQUEST_HEADER_BYTES] {
    let mut b = [0u8; REQUEST_HEADER_BYTES];
    b[0..4].copy_from_slice(&magic::REQUEST.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_wire().to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&length.to_be_bytes());
    b
}

/// The request header at the start of `input`, once all 28 bytes are
/// there (`Ok(None)` before). A WRITE's payload follows: the caller reads
/// [`Request::payload_len`] more bytes. Errors (bad magic, a WRITE larger
/// than [`MAX_REQUEST_BYTES`]) leave the stream unusable: close it.
pub fn decode_request(input: &[u8]) -> Result<Option<Request>, NbdError> {
    if input.len() < REQUEST_HEADER_BYTES {
        return Ok(None);
    }
    let m = be32(input, 0);
    if m != magic::REQUEST {
        return Err(NbdError::BadMagic {
            what: "request header",
            expected: magic::REQUEST.into(),
            got: m.into(),
        });
    }
    let kind = be16(input, 6);
    let request = Request {
        flags: be16(input, 4),
        kind,
        command: Command::from_wire(kind),
        cookie: be64(input, 8),
        offset: be64(input, 16),
        length: be32(input, 24),
    };
    if request.payload_len() > MAX_REQUEST_BYTES {
        return Err(NbdError::RequestTooLarge {
            length: request.length,
        });
    }
    Ok(Some(request))
}

/// The 16-byte simple reply header. A successful READ's data follows it.
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; REPLY_HEADER_BYTES] {
    let mut b = [0u8; REPLY_HEADER_BYTES];
    b[0..4].copy_from_slice(&magic::SIMPLE_REPLY.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The simple reply header at the start of `input`, once all 16 bytes are
/// there (`Ok(None)` before). If it answers a READ and `error` is 0, the
/// data follows: the client knows its length from its own request (look
/// the cookie up; an unknown cookie is the caller's protocol error).
pub fn decode_simple_reply(input: &[u8]) -> Result<Option<SimpleReply>, NbdError> {
    if input.len() < REPLY_HEADER_BYTES {
        return Ok(None);
    }
    let m = be32(input, 0);
    if m == magic::STRUCTURED_REPLY {
        return Err(NbdError::StructuredReply);
    }
    if m != magic::SIMPLE_REPLY {
        return Err(NbdError::BadMagic {
            what: "reply header",
            expected: magic::SIMPLE_REPLY.into(),
            got: m.into(),
        });
    }
    Ok(Some(SimpleReply {
        error: be32(input, 4),
        cookie: be64(input, 8),
    }))
}

/// What a server checks before it carries a request out on `export`,
/// following the protocol's advice on error values: unknown commands,
/// command flags and commands the export does not offer → `EINVAL`; writes
/// and trims on a read-only export → `EPERM`; reads and trims beyond the
/// end → `EINVAL`, writes beyond it → `ENOSPC`; reads longer than
/// [`MAX_REQUEST_BYTES`] → `EINVAL`. `Ok` for `Disc` (no reply is sent).
pub fn check_request(request: &Request, export: &Export) -> Result<(), u32> {
    let Some(command) = request.command else {
        return Err(errno::EINVAL);
    };
    let allowed_flags = if export.can_fua() { cmd_flags::FUA } else { 0 };
    if request.flags & !allowed_flags != 0 {
        return Err(errno::EINVAL);
    }
    let in_range = request
        .offset
        .checked_add(u64::from(request.length))
        .is_some_and(|end| end <= export.size);
    match command {
        Command::Read => {
            if request.length > MAX_REQUEST_BYTES || !in_range {
                return Err(errno::EINVAL);
            }
        }
        Command::Write => {
            if export.read_only() {
                return Err(errno::EPERM);
            }
            if !in_range {
                return Err(errno::ENOSPC);
            }
        }
        Command::Trim => {
            if !export.can_trim() {
                return Err(errno::EINVAL);
            }
            if export.read_only() {
                return Err(errno::EPERM);
            }
            if !in_range {
                return Err(errno::EINVAL);
            }
        }
        Command::Flush => {
            if !export.can_flush() {
                return Err(errno::EINVAL);
            }
        }
        Command::Disc => {}
    }
    Ok(())
}
