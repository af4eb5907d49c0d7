//! Small value parsers: sizes and UUIDs.

use core::fmt;

/// Why [`parse_size`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not `<number>[K|M|G|T]`.
    Malformed,
    /// Does not fit in 64 bits of bytes.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::Malformed => "expected a size like 512, 512M or 2G",
            SizeError::Overflow => "size is too large",
        })
    }
}

/// Parses `<number>[suffix]` into bytes: the number is decimal or `0x` hex;
/// the suffix is one of `B`, `K`, `M`, `G`, `T` (binary units, either case,
/// an optional trailing `B`/`iB` allowed: `512MiB`); without a suffix the
/// number is in units of `default_unit` bytes (e.g. `1 << 20` for MiB).
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_hexdigit() || c == 'x' || c == 'X'))
        .unwrap_or(s.len());
    // A hex number may contain 'b'; a decimal one followed by "B" must not be
    // read as hex. Decide by prefix.
    let (num, suffix) = if s.starts_with("0x") || s.starts_with("0X") {
        s.split_at(split)
    } else {
        let d = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s.split_at(d)
    };
    let n = crate::syntax::parse_int(num).map_err(|_| SizeError::Malformed)?;
    let unit: u64 = match suffix {
        "" => default_unit,
        "B" | "b" => 1,
        _ => {
            let mut cs = suffix.chars();
            let shift = match cs.next().map(|c| c.to_ascii_uppercase()) {
                Some('K') => 10,
                Some('M') => 20,
                Some('G') => 30,
                Some('T') => 40,
                _ => return Err(SizeError::Malformed),
            };
            match cs.as_str() {
                "" | "B" | "b" | "iB" | "ib" => {}
                _ => return Err(SizeError::Malformed),
            }
            1u64 << shift
        }
    };
    n.checked_mul(unit).ok_or(SizeError::Overflow)
}

/// A domain UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses the 8-4-4-4-12 hex form, e.g.
    /// `a6a3f200-bcbb-cdbd-c06e-9e71f739310f` (either case).
    pub fn parse(s: &str) -> Option<Uuid> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let hi = (b[i] as char).to_digit(16)?;
            let lo = (b[i + 1] as char).to_digit(16)?;
            out[n] = (hi * 16 + lo) as u8;
            n += 1;
            i += 2;
        }
        Some(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
