//! The shared secret: 32 bytes, written as 64 hex digits in key files,
//! the session file and wherever the hypervisor gets it from.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// The key both ends hold. It is only ever used as an HMAC key, never
/// sent; `Debug` does not show it, and there is deliberately no
/// `PartialEq` (a plain comparison would not be constant-time).
#[derive(Clone)]
pub struct Secret([u8; 32]);

/// Why a string is not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// Not 64 characters (after trimming whitespace).
    WrongLength(usize),
    /// The character at this 0-based position is not a hex digit (the
    /// character itself is not repeated: it is part of a secret).
    NotHex(usize),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::WrongLength(n) => {
                write!(f, "a key is 64 hex digits (32 bytes), found {n} characters")
            }
            SecretError::NotHex(i) => {
                write!(f, "a key is 64 hex digits (32 bytes), but character {} is not a hex digit", i + 1)
            }
        }
    }
}

impl Secret {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Secret(bytes)
    }

    /// Parses 64 hex digits, either case; surrounding whitespace (a key
    /// file's newline) is ignored.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let count = text.chars().count();
        if count != 64 {
            return Err(SecretError::WrongLength(count));
        }
        if let Some(i) = text.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(SecretError::NotHex(i));
        }
        // 64 ASCII hex digits from here on.
        let digits = text.as_bytes();
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = hex_value(digits[2 * i]) << 4 | hex_value(digits[2 * i + 1]);
        }
        Ok(Secret(bytes))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The value of a character already known to be a hex digit.
fn hex_value(c: u8) -> u8 {
    char::from(c).to_digit(16).unwrap_or(0) as u8
}

impl FromStr for Secret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, SecretError> {
        Secret::from_hex(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
