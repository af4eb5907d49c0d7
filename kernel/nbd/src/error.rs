//! Everything that ends an NBD session, with a message a person can act on.

use alloc::string::String;
use core::fmt;

use crate::{opt, rep};

/// Why a handshake or a transmission-phase message failed. Every error is
/// final for the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdError {
    /// A magic number was not what the protocol puts there.
    BadMagic {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    /// The server speaks the oldstyle handshake, which this client does not.
    Oldstyle,
    /// The server has no export by this name (`NBD_REP_ERR_UNKNOWN`, or it
    /// closed the connection after `NBD_OPT_EXPORT_NAME`).
    UnknownExport(String),
    /// The server refused an option with an error reply.
    OptionRefused {
        option: u32,
        reply: u32,
        message: String,
    },
    /// The server answered an option the client did not send.
    UnexpectedReply { sent: u32, got: u32 },
    /// An option reply announced more data than the client buffers.
    OptionReplyTooLong { option: u32, length: u32 },
    /// An `NBD_REP_INFO` reply had the wrong length for its type.
    BadInfo { info: u16, length: u32 },
    /// `NBD_REP_ACK` to `NBD_OPT_GO` came without `NBD_INFO_EXPORT`.
    MissingExportInfo,
    /// The transmission flags lack `NBD_FLAG_HAS_FLAGS`.
    BadTransmissionFlags(u16),
    /// The export is larger than 2^63 - 1 bytes.
    ExportTooLarge(u64),
    /// The server's size constraints break the protocol's rules.
    BadBlockSize {
        min: u32,
        preferred: u32,
        max_payload: u32,
    },
    /// The client set client flags the server did not offer or know.
    BadClientFlags(u32),
    /// An export name longer than the protocol allows.
    NameTooLong(usize),
    /// `NBD_OPT_EXPORT_NAME` with more data than the server buffers.
    ExportNameTooLong(u32),
    /// The client ended the negotiation (`NBD_OPT_ABORT`).
    ClientAborted,
    /// The peer closed the connection mid-handshake.
    Closed(&'static str),
    /// A structured reply arrived, which this client never negotiates.
    StructuredReply,
    /// A write request with more payload than [`crate::MAX_REQUEST_BYTES`].
    RequestTooLarge { length: u32 },
}

impl fmt::Display for NbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdError::BadMagic {
                what,
                expected,
                got,
            } => write!(
                f,
                "bad magic in the {what}: {got:#x} where {expected:#x} belongs (is this an NBD peer?)"
            ),
            NbdError::Oldstyle => f.write_str(
                "the server speaks the oldstyle NBD handshake, which is not supported (use a newstyle server)",
            ),
            NbdError::UnknownExport(name) => {
                write!(f, "the server has no export named '{name}'")
            }
            NbdError::OptionRefused {
                option,
                reply,
                message,
            } => {
                write!(f, "server refused {}: {}", opt::name(*option), rep::name(*reply))?;
                if !message.is_empty() {
                    write!(f, " ({message})")?;
                }
                Ok(())
            }
            NbdError::UnexpectedReply { sent, got } => write!(
                f,
                "the server answered option {got} ({}) while {} was pending",
                opt::name(*got),
                opt::name(*sent)
            ),
            NbdError::OptionReplyTooLong { option, length } => write!(
                f,
                "the server's reply to {} announces {length} bytes, more than the {} accepted",
                opt::name(*option),
                crate::MAX_OPTION_REPLY
            ),
            NbdError::BadInfo { info, length } => write!(
                f,
                "the server sent NBD_REP_INFO type {info} with a bad length of {length} bytes"
            ),
            NbdError::MissingExportInfo => f.write_str(
                "the server accepted NBD_OPT_GO without describing the export (no NBD_INFO_EXPORT)",
            ),
            NbdError::BadTransmissionFlags(flags) => write!(
                f,
                "the server's transmission flags {flags:#06x} lack NBD_FLAG_HAS_FLAGS"
            ),
            NbdError::ExportTooLarge(size) => {
                write!(f, "the server announces an export of {size} bytes, more than 2^63 - 1")
            }
            NbdError::BadBlockSize {
                min,
                preferred,
                max_payload,
            } => write!(
                f,
                "the server's block sizes are invalid (minimum {min}, preferred {preferred}, maximum payload {max_payload})"
            ),
            NbdError::BadClientFlags(flags) => {
                write!(f, "the client sent unknown or unoffered client flags {flags:#x}")
            }
            NbdError::NameTooLong(len) => write!(
                f,
                "an export name of {len} bytes is longer than the {} NBD allows",
                crate::MAX_NAME_BYTES
            ),
            NbdError::ExportNameTooLong(len) => write!(
                f,
                "the client sent NBD_OPT_EXPORT_NAME with {len} bytes of name, more than the {} accepted",
                crate::MAX_OPTION_DATA
            ),
            NbdError::ClientAborted => f.write_str("the client ended the negotiation (NBD_OPT_ABORT)"),
            NbdError::Closed(when) => write!(f, "the peer closed the connection {when}"),
            NbdError::StructuredReply => f.write_str(
                "the server sent a structured reply, which was not negotiated",
            ),
            NbdError::RequestTooLarge { length } => write!(
                f,
                "a write request of {length} bytes exceeds the {} accepted",
                crate::MAX_REQUEST_BYTES
            ),
        }
    }
}

impl core::error::Error for NbdError {}
