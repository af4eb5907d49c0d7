//! Framing: a frame is a 4-byte little-endian payload length, then that
//! many bytes of postcard. TCP is a byte stream, so both ends need the
//! length to find message boundaries; a fixed-width prefix lets a reader
//! reject an oversized frame from its first four bytes, before buffering
//! any of it.

use crate::MAX_FRAME;
use alloc::vec::Vec;
use core::fmt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// What can go wrong turning messages into frames and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame declared (or a message needs) more than [`MAX_FRAME`] bytes.
    TooLarge(usize),
    /// A frame declared a length of 0; no message encodes to nothing.
    Empty,
    /// The payload is not a valid message.
    Malformed,
    /// The payload holds a valid message followed by this many more bytes.
    TrailingBytes(usize),
    /// The message could not be serialized (out of memory).
    Encode,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit of {MAX_FRAME}"),
            FrameError::Empty => f.write_str("frame of length 0"),
            FrameError::Malformed => f.write_str("malformed message"),
            FrameError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            FrameError::Encode => f.write_str("message could not be encoded"),
        }
    }
}

/// `message` as one frame: length prefix and postcard payload.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let header = alloc::vec![0; HEADER_LEN];
    let mut out = postcard::to_extend(message, header).map_err(|_| FrameError::Encode)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    // `len` fits: MAX_FRAME < 2^32.
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// A frame's payload as a message; the whole payload must be used.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes::<T>(payload).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Checks a length prefix.
fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_FRAME => Err(FrameError::TooLarge(n)),
        n => Ok(n),
    }
}

/// Cuts a byte stream into frame payloads, however the bytes arrive.
///
/// [`feed`](Self::feed) takes as many bytes as fit (the buffer never holds
/// more than `MAX_FRAME + 4`, one largest frame) and reports how many, so
/// a caller reading from a socket leaves the rest there: TCP's own flow
/// control then holds back the peer. [`next_frame`](Self::next_frame)
/// hands out complete payloads. A length prefix of 0 or above
/// [`MAX_FRAME`] poisons the reader: the stream has lost its framing and
/// every later call fails with the same error.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// Start of the first frame whose header is not yet known to be good
    /// and complete (so each header is checked once per frame).
    scan: usize,
    poisoned: Option<FrameError>,
}

impl FrameReader {
    /// The most bytes the reader ever holds.
    pub const CAPACITY: usize = MAX_FRAME + HEADER_LEN;

    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from `data`; returns how many (0 when the buffer is
    /// full: take frames out first). Fails once the stream's framing is
    /// broken.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        self.compact();
        let room = Self::CAPACITY - self.buf.len();
        let n = data.len().min(room);
        // Grow by doubling, as Vec does, but never past CAPACITY.
        let needed = self.buf.len() + n;
        if needed > self.buf.capacity() {
            let target = needed.max(self.buf.capacity() * 2).min(Self::CAPACITY);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..n]);
        // Check every header that is now complete, so a bad length is
        // reported as soon as its four bytes arrive.
        while self.scan + HEADER_LEN <= self.buf.len() {
            let mut header = [0; HEADER_LEN];
            header.copy_from_slice(&self.buf[self.scan..self.scan + HEADER_LEN]);
            match frame_len(header) {
                Err(e) => {
                    self.poison(e);
                    return Err(e);
                }
                Ok(len) if self.scan + HEADER_LEN + len <= self.buf.len() => self.scan += HEADER_LEN + len,
                Ok(_) => break,
            }
        }
        Ok(n)
    }

    /// The next complete payload, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(e) = self.poisoned {
            return Err(e);
        }
        // Frames before `scan` have good headers and are complete.
        if self.start >= self.scan {
            return Ok(None);
        }
        let mut header = [0; HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        let len = frame_len(header)?;
        let body = self.start + HEADER_LEN;
        let payload = self.buf[body..body + len].to_vec();
        self.start = body + len;
        if self.start == self.buf.len() {
            // Empty: give back the memory of a large frame.
            if self.buf.capacity() > Self::CAPACITY / 4 {
                self.buf = Vec::new();
            }
            self.buf.clear();
            self.start = 0;
            self.scan = 0;
        }
        Ok(Some(payload))
    }

    /// Bytes held: frames not yet taken and a partial frame. Non-zero when
    /// the peer closes means it stopped in the middle of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes allocated for the buffer (at most [`Self::CAPACITY`]).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn poison(&mut self, e: FrameError) {
        self.poisoned = Some(e);
        self.buf = Vec::new();
        self.start = 0;
        self.scan = 0;
    }

    /// Drops the bytes already handed out (at most once per frame taken).
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
    }
}
