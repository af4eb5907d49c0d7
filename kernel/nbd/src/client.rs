//! The client's handshake: negotiate one export, fixed newstyle.
//!
//! ```text
//! S: NBDMAGIC, IHAVEOPT, handshake flags (u16)
//! C: client flags (u32)
//! C: IHAVEOPT, NBD_OPT_GO, length, name length (u32), name, 1 info request (NBD_INFO_BLOCK_SIZE)
//! S: NBD_REP_INFO (NBD_INFO_EXPORT: size, transmission flags), NBD_REP_INFO (block sizes)..., NBD_REP_ACK
//!    or NBD_REP_ERR_UNSUP → C: NBD_OPT_EXPORT_NAME, S: size, flags [, 124 zeroes]
//!    or another error → C: NBD_OPT_ABORT, and the caller closes
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use crate::{
    be16, be32, be64, flags, handshake_flags as hf, info, magic, opt, rep, BlockSize, Export,
    NbdError, MAX_NAME_BYTES, MAX_OPTION_REPLY,
};

/// The server's greeting: two magics and the handshake flags.
const GREETING_BYTES: usize = 8 + 8 + 2;
/// An option reply header: magic, option, reply type, length.
const OPTION_REPLY_HEADER: usize = 8 + 4 + 4 + 4;
/// The answer to `NBD_OPT_EXPORT_NAME` before the zeroes: size, flags.
const EXPORT_NAME_REPLY: usize = 8 + 2;
/// The zeroes that follow unless `NBD_FLAG_C_NO_ZEROES` was agreed.
const ZEROES: usize = 124;
/// How much of a server's error message is kept.
const MAX_MESSAGE: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the server's greeting.
    Greeting,
    /// `NBD_OPT_GO` sent; collecting its replies.
    Go,
    /// `NBD_OPT_EXPORT_NAME` sent; waiting for the export's size and flags.
    ExportName,
    Done,
    Failed,
}

/// The client side of the handshake for one export (the name may be
/// empty: the server's default export). See the crate documentation for
/// how to drive it.
#[derive(Debug)]
pub struct ClientHandshake {
    name: String,
    state: State,
    out: Vec<u8>,
    no_zeroes: bool,
    /// From `NBD_INFO_EXPORT`, until the `NBD_REP_ACK` makes it final.
    offered: Option<Export>,
    export: Option<Export>,
    block_size: Option<BlockSize>,
    error: Option<NbdError>,
}

impl ClientHandshake {
    pub fn new(export_name: &str) -> Self {
        ClientHandshake {
            name: String::from(export_name),
            state: State::Greeting,
            out: Vec::new(),
            no_zeroes: false,
            offered: None,
            export: None,
            block_size: None,
            error: None,
        }
    }

    /// Moves the bytes to send to the server onto the end of `out`.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// Feeds bytes received from the server; returns how many it consumed
    /// (whole messages only: keep the rest and feed it again with more).
    /// Stops consuming once the export is negotiated. An error is final;
    /// `poll_output` may then still hold an `NBD_OPT_ABORT` to send before
    /// closing.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut used = 0;
        loop {
            let step = match self.state {
                State::Greeting => self.greeting(&input[used..]),
                State::Go => self.go_reply(&input[used..]),
                State::ExportName => self.export_name_reply(&input[used..]),
                State::Done | State::Failed => Ok(0),
            };
            match step {
                Ok(0) => return Ok(used),
                Ok(n) => used += n,
                Err(e) => {
                    self.state = State::Failed;
                    self.error = Some(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// The export, once negotiated.
    pub fn export(&self) -> Option<Export> {
        self.export
    }

    /// The size constraints to keep to, once the export is negotiated: the
    /// server's if it sent them, else [`BlockSize::DEFAULT`].
    pub fn block_size(&self) -> Option<BlockSize> {
        self.export
            .map(|_| self.block_size.unwrap_or(BlockSize::DEFAULT))
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What it means that the server closed the connection now: after
    /// `NBD_OPT_EXPORT_NAME` that is how a server refuses an export.
    pub fn closed(&self) -> NbdError {
        match self.state {
            State::ExportName => NbdError::UnknownExport(self.name.clone()),
            State::Done => NbdError::Closed("after the NBD handshake"),
            _ => NbdError::Closed("during the NBD handshake"),
        }
    }

    fn greeting(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if input.len() < GREETING_BYTES {
            return Ok(0);
        }
        let m = be64(input, 0);
        if m != magic::NBDMAGIC {
            return Err(NbdError::BadMagic {
                what: "server greeting",
                expected: magic::NBDMAGIC,
                got: m,
            });
        }
        let m = be64(input, 8);
        if m == magic::OLDSTYLE {
            return Err(NbdError::Oldstyle);
        }
        if m != magic::IHAVEOPT {
            return Err(NbdError::BadMagic {
                what: "server greeting",
                expected: magic::IHAVEOPT,
                got: m,
            });
        }
        if self.name.len() > MAX_NAME_BYTES {
            return Err(NbdError::NameTooLong(self.name.len()));
        }
        let server_flags = be16(input, 16);
        let fixed = server_flags & hf::FIXED_NEWSTYLE != 0;
        self.no_zeroes = server_flags & hf::NO_ZEROES != 0;
        // Only flags the server offered (it must drop us otherwise).
        let mut client_flags = 0;
        if fixed {
            client_flags |= hf::C_FIXED_NEWSTYLE;
        }
        if self.no_zeroes {
            client_flags |= hf::C_NO_ZEROES;
        }
        self.out.extend_from_slice(&client_flags.to_be_bytes());
        if fixed {
            self.send_go();
        } else {
            // Plain newstyle: NBD_OPT_EXPORT_NAME is the only option there is.
            self.send_export_name();
        }
        Ok(GREETING_BYTES)
    }

    fn send_go(&mut self) {
        let name = self.name.as_bytes();
        let mut data = Vec::with_capacity(4 + name.len() + 4);
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name);
        // One information request: the block sizes, so that a server with
        // constraints tells them (and this client keeps to them).
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        push_option(&mut self.out, opt::GO, &data);
        self.state = State::Go;
    }

    fn send_export_name(&mut self) {
        let name = self.name.clone();
        push_option(&mut self.out, opt::EXPORT_NAME, name.as_bytes());
        self.state = State::ExportName;
    }

    /// A soft disconnect after a refusal.
    fn send_abort(&mut self) {
        push_option(&mut self.out, opt::ABORT, &[]);
    }

    fn go_reply(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if input.len() < OPTION_REPLY_HEADER {
            return Ok(0);
        }
        let m = be64(input, 0);
        if m != magic::OPTION_REPLY {
            return Err(NbdError::BadMagic {
                what: "option reply",
                expected: magic::OPTION_REPLY,
                got: m,
            });
        }
        let option = be32(input, 8);
        let reply = be32(input, 12);
        let length = be32(input, 16);
        if option != opt::GO {
            return Err(NbdError::UnexpectedReply {
                sent: opt::GO,
                got: option,
            });
        }
        if length > MAX_OPTION_REPLY {
            return Err(NbdError::OptionReplyTooLong { option, length });
        }
        let total = OPTION_REPLY_HEADER + length as usize;
        if input.len() < total {
            return Ok(0);
        }
        let data = &input[OPTION_REPLY_HEADER..total];
        match reply {
            rep::ACK => {
                let export = self.offered.ok_or(NbdError::MissingExportInfo)?;
                self.export = Some(export);
                self.state = State::Done;
            }
            rep::INFO => self.info(data)?,
            rep::ERR_UNSUP => {
                // An older server: the option every server knows.
                self.offered = None;
                self.block_size = None;
                self.send_export_name();
            }
            rep::ERR_UNKNOWN => {
                self.send_abort();
                return Err(NbdError::UnknownExport(self.name.clone()));
            }
            r if r & rep::ERROR_BIT != 0 => {
                self.send_abort();
                return Err(NbdError::OptionRefused {
                    option,
                    reply,
                    message: printable(data),
                });
            }
            // Replies with no meaning for NBD_OPT_GO carry nothing we need.
            _ => {}
        }
        Ok(total)
    }

    fn info(&mut self, data: &[u8]) -> Result<(), NbdError> {
        let length = data.len() as u32;
        if data.len() < 2 {
            return Err(NbdError::BadInfo {
                info: 0xffff,
                length,
            });
        }
        let kind = be16(data, 0);
        match kind {
            info::EXPORT => {
                if data.len() != 12 {
                    return Err(NbdError::BadInfo { info: kind, length });
                }
                self.offered = Some(checked_export(be64(data, 2), be16(data, 10))?);
            }
            info::BLOCK_SIZE => {
                if data.len() != 14 {
                    return Err(NbdError::BadInfo { info: kind, length });
                }
                let sizes = BlockSize {
                    min: be32(data, 2),
                    preferred: be32(data, 6),
                    max_payload: be32(data, 10),
                };
                if !sizes.is_valid() {
                    return Err(NbdError::BadBlockSize {
                        min: sizes.min,
                        preferred: sizes.preferred,
                        max_payload: sizes.max_payload,
                    });
                }
                self.block_size = Some(sizes);
            }
            // The client must ignore information it does not understand.
            _ => {}
        }
        Ok(())
    }

    fn export_name_reply(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        let total = EXPORT_NAME_REPLY + if self.no_zeroes { 0 } else { ZEROES };
        if input.len() < total {
            return Ok(0);
        }
        let export = checked_export(be64(input, 0), be16(input, 8))?;
        self.export = Some(export);
        self.state = State::Done;
        Ok(total)
    }
}

/// Appends one option (`IHAVEOPT`, option, length, data).
pub(crate) fn push_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&magic::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn checked_export(size: u64, transmission_flags: u16) -> Result<Export, NbdError> {
    if transmission_flags & flags::HAS_FLAGS == 0 {
        return Err(NbdError::BadTransmissionFlags(transmission_flags));
    }
    if size > i64::MAX as u64 {
        return Err(NbdError::ExportTooLarge(size));
    }
    Ok(Export {
        size,
        flags: transmission_flags,
    })
}

/// A peer's message, safe to log: at most [`MAX_MESSAGE`] bytes, invalid
/// UTF-8 and control characters replaced.
fn printable(data: &[u8]) -> String {
    let data = &data[..data.len().min(MAX_MESSAGE)];
    String::from_utf8_lossy(data)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
