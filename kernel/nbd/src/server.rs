//! The server's handshake: fixed newstyle, `NBD_FLAG_NO_ZEROES` offered.
//!
//! Answers `NBD_OPT_GO` and `NBD_OPT_INFO` (`NBD_INFO_EXPORT`, and
//! `NBD_INFO_BLOCK_SIZE` when asked), `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`
//! and `NBD_OPT_ABORT`; refuses everything else, structured replies and
//! TLS included, with `NBD_REP_ERR_UNSUP`, and unknown export names with
//! `NBD_REP_ERR_UNKNOWN`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{
    be16, be32, be64, flags, handshake_flags as hf, info, magic, opt, rep, BlockSize, Export,
    NbdError, MAX_OPTION_DATA,
};

/// An option header: magic, option, length.
const OPTION_HEADER: usize = 8 + 4 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ClientFlags,
    Option,
    /// Skipping the data of an option too long to buffer.
    Discard {
        option: u32,
        remaining: u32,
    },
    Done(usize),
    Failed,
}

/// The server side of the handshake over a fixed list of exports. See the
/// crate documentation for how to drive it; the greeting is queued at
/// once.
#[derive(Debug)]
pub struct ServerHandshake {
    exports: Vec<(String, Export)>,
    state: State,
    out: Vec<u8>,
    no_zeroes: bool,
    error: Option<NbdError>,
}

impl ServerHandshake {
    /// A server offering `exports` (names as clients ask for them; `""` is
    /// the default export). `NBD_FLAG_HAS_FLAGS` is added to every
    /// export's flags.
    pub fn new(exports: &[(&str, Export)]) -> Self {
        let exports = exports
            .iter()
            .map(|(name, e)| {
                let export = Export {
                    size: e.size,
                    flags: e.flags | flags::HAS_FLAGS,
                };
                (String::from(*name), export)
            })
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(&magic::NBDMAGIC.to_be_bytes());
        out.extend_from_slice(&magic::IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&(hf::FIXED_NEWSTYLE | hf::NO_ZEROES).to_be_bytes());
        ServerHandshake {
            exports,
            state: State::ClientFlags,
            out,
            no_zeroes: false,
            error: None,
        }
    }

    /// A server with one export.
    pub fn single(name: &str, export: Export) -> Self {
        Self::new(&[(name, export)])
    }

    /// Moves the bytes to send to the client onto the end of `out`.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// Feeds bytes received from the client; returns how many it consumed
    /// (whole options only, except that the data of an option too long to
    /// buffer is skipped as it comes). Stops consuming once the client has
    /// chosen an export: the rest is the transmission phase. An error is
    /// final; `poll_output` may still hold a last reply (the `NBD_REP_ACK`
    /// to `NBD_OPT_ABORT`) to send before closing.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let step = match self.state {
                State::ClientFlags => self.client_flags(rest),
                State::Option => self.option(rest),
                State::Discard { option, remaining } => Ok(self.discard(rest, option, remaining)),
                State::Done(_) | State::Failed => Ok(0),
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

    /// The index (in the list given to [`ServerHandshake::new`]) of the
    /// export the client chose, once the transmission phase has begun.
    pub fn done(&self) -> Option<usize> {
        match self.state {
            State::Done(i) => Some(i),
            _ => None,
        }
    }

    /// The export the client chose, with the flags it was sent.
    pub fn export(&self) -> Option<Export> {
        self.done().map(|i| self.exports[i].1)
    }

    fn client_flags(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if input.len() < 4 {
            return Ok(0);
        }
        let client = be32(input, 0);
        if client & !(hf::C_FIXED_NEWSTYLE | hf::C_NO_ZEROES) != 0 {
            return Err(NbdError::BadClientFlags(client));
        }
        // Both are offered; a client without C_FIXED_NEWSTYLE still gets
        // fixed-newstyle replies, which a plain newstyle client (sending
        // only NBD_OPT_EXPORT_NAME) never sees.
        self.no_zeroes = client & hf::C_NO_ZEROES != 0;
        self.state = State::Option;
        Ok(4)
    }

    fn discard(&mut self, input: &[u8], option: u32, remaining: u32) -> usize {
        let n = input.len().min(remaining as usize);
        let remaining = remaining - n as u32;
        if remaining == 0 {
            self.reply(option, rep::ERR_TOO_BIG, b"option data too long");
            self.state = State::Option;
        } else {
            self.state = State::Discard { option, remaining };
        }
        n
    }

    fn option(&mut self, input: &[u8]) -> Result<usize, NbdError> {
        if input.len() < OPTION_HEADER {
            return Ok(0);
        }
        let m = be64(input, 0);
        if m != magic::IHAVEOPT {
            return Err(NbdError::BadMagic {
                what: "client option",
                expected: magic::IHAVEOPT,
                got: m,
            });
        }
        let option = be32(input, 8);
        let length = be32(input, 12);
        if length > MAX_OPTION_DATA {
            if option == opt::EXPORT_NAME {
                // It has no error reply: the session ends.
                return Err(NbdError::ExportNameTooLong(length));
            }
            self.state = State::Discard {
                option,
                remaining: length,
            };
            return Ok(OPTION_HEADER);
        }
        let total = OPTION_HEADER + length as usize;
        if input.len() < total {
            return Ok(0);
        }
        let data = &input[OPTION_HEADER..total];
        match option {
            opt::EXPORT_NAME => {
                let Some(index) = self.find(data) else {
                    return Err(NbdError::UnknownExport(lossy(data)));
                };
                let export = self.exports[index].1;
                self.out.extend_from_slice(&export.size.to_be_bytes());
                self.out.extend_from_slice(&export.flags.to_be_bytes());
                if !self.no_zeroes {
                    self.out.extend_from_slice(&[0u8; 124]);
                }
                self.state = State::Done(index);
            }
            opt::ABORT => {
                // Any data is ignored, as the protocol asks.
                self.reply(option, rep::ACK, &[]);
                return Err(NbdError::ClientAborted);
            }
            opt::LIST => {
                if !data.is_empty() {
                    self.reply(option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data");
                } else {
                    for i in 0..self.exports.len() {
                        let name = self.exports[i].0.clone();
                        let mut d = Vec::with_capacity(4 + name.len());
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name.as_bytes());
                        self.reply(option, rep::SERVER, &d);
                    }
                    self.reply(option, rep::ACK, &[]);
                }
            }
            opt::INFO | opt::GO => self.info_or_go(option, data),
            _ => {
                let message = format!("{} is not supported", opt::name(option));
                self.reply(option, rep::ERR_UNSUP, message.as_bytes());
            }
        }
        Ok(total)
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`: name length (u32), name, count (u16),
    /// that many information types (u16 each), and nothing more.
    fn info_or_go(&mut self, option: u32, data: &[u8]) {
        let parsed = (|| {
            if data.len() < 6 {
                return None;
            }
            let name_len = be32(data, 0) as usize;
            if name_len > data.len() - 6 {
                return None;
            }
            let name = &data[4..4 + name_len];
            let count = be16(data, 4 + name_len) as usize;
            let requests = &data[6 + name_len..];
            if requests.len() != count * 2 {
                return None;
            }
            Some((name, requests))
        })();
        let Some((name, requests)) = parsed else {
            self.reply(option, rep::ERR_INVALID, b"malformed request");
            return;
        };
        let Some(index) = self.find(name) else {
            let message = format!("no export named '{}'", lossy(name));
            self.reply(option, rep::ERR_UNKNOWN, message.as_bytes());
            return;
        };
        let export = self.exports[index].1;
        let mut d = [0u8; 12];
        d[0..2].copy_from_slice(&info::EXPORT.to_be_bytes());
        d[2..10].copy_from_slice(&export.size.to_be_bytes());
        d[10..12].copy_from_slice(&export.flags.to_be_bytes());
        self.reply(option, rep::INFO, &d);
        let wants_block_size = requests
            .chunks_exact(2)
            .any(|r| be16(r, 0) == info::BLOCK_SIZE);
        if wants_block_size {
            let b = BlockSize::DEFAULT;
            let mut d = [0u8; 14];
            d[0..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
            d[2..6].copy_from_slice(&b.min.to_be_bytes());
            d[6..10].copy_from_slice(&b.preferred.to_be_bytes());
            d[10..14].copy_from_slice(&b.max_payload.to_be_bytes());
            self.reply(option, rep::INFO, &d);
        }
        self.reply(option, rep::ACK, &[]);
        if option == opt::GO {
            self.state = State::Done(index);
        }
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.exports.iter().position(|(n, _)| n.as_bytes() == name)
    }

    fn reply(&mut self, option: u32, reply: u32, data: &[u8]) {
        self.out
            .extend_from_slice(&magic::OPTION_REPLY.to_be_bytes());
        self.out.extend_from_slice(&option.to_be_bytes());
        self.out.extend_from_slice(&reply.to_be_bytes());
        self.out
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.out.extend_from_slice(data);
    }
}

/// A client-sent name for messages: at most 256 bytes, control
/// characters replaced.
fn lossy(name: &[u8]) -> String {
    let name = &name[..name.len().min(256)];
    String::from_utf8_lossy(name)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
