//! The multiboot1 header, and how to hide it.
//!
//! QEMU's `-kernel` tries multiboot1 before the PVH ELF note, and for a
//! 64-bit ELF it accepts multiboot1 only through the a.out kludge. To boot
//! the same image through its PVH entry we make a copy whose multiboot1
//! magic is zeroed: QEMU then finds no multiboot1 header and falls back to
//! the `XEN_ELFNOTE_PHYS32_ENTRY` note.

use std::fmt;

/// `0x1BADB002`, the multiboot1 header magic.
pub const MULTIBOOT1_MAGIC: u32 = 0x1BAD_B002;

/// The multiboot1 specification (and QEMU) search the first 8192 bytes.
pub const MULTIBOOT1_SEARCH: usize = 8192;

/// Why no header could be stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripError {
    /// No 4-byte aligned magic with a valid checksum in the search window.
    NoHeader {
        /// How many aligned magics were seen whose checksum did not match.
        bad_checksums: usize,
    },
}

impl fmt::Display for StripError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripError::NoHeader { bad_checksums } => {
                write!(
                    f,
                    "no multiboot1 header (magic {MULTIBOOT1_MAGIC:#010x} with a valid checksum, 4-byte aligned) \
                     in the first {MULTIBOOT1_SEARCH} bytes"
                )?;
                if *bad_checksums > 0 {
                    write!(f, " ({bad_checksums} magic(s) found with a bad checksum)")?;
                }
                write!(f, "; is this really the Ferrite image (kernel/src/arch/entry.rs)?")
            }
        }
    }
}

impl std::error::Error for StripError {}

fn le32(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Offsets of every valid multiboot1 header: 4-byte aligned, within the
/// first [`MULTIBOOT1_SEARCH`] bytes, magic + flags + checksum == 0 mod 2^32.
/// Also returns how many aligned magics had a wrong checksum.
pub fn find_headers(image: &[u8]) -> (Vec<usize>, usize) {
    let window = image.len().min(MULTIBOOT1_SEARCH);
    let mut found = Vec::new();
    let mut bad = 0;
    let mut off = 0;
    // The header is 12 bytes; it must fit in the window entirely.
    while off + 12 <= window {
        if le32(image, off) == Some(MULTIBOOT1_MAGIC) {
            let flags = le32(image, off + 4).unwrap_or(0);
            let checksum = le32(image, off + 8).unwrap_or(0);
            if MULTIBOOT1_MAGIC.wrapping_add(flags).wrapping_add(checksum) == 0 {
                found.push(off);
            } else {
                bad += 1;
            }
        }
        off += 4;
    }
    (found, bad)
}

/// Zeroes the magic of every valid multiboot1 header in `image` and returns
/// their offsets; errors when there is none (a silently unchanged copy would
/// boot through multiboot1 and make a "PVH" test meaningless).
pub fn strip_multiboot1(image: &mut [u8]) -> Result<Vec<usize>, StripError> {
    let (found, bad_checksums) = find_headers(image);
    if found.is_empty() {
        return Err(StripError::NoHeader { bad_checksums });
    }
    for &off in &found {
        image[off..off + 4].fill(0);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> [u8; 12] {
        let checksum = 0u32.wrapping_sub(MULTIBOOT1_MAGIC).wrapping_sub(flags);
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&MULTIBOOT1_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&checksum.to_le_bytes());
        h
    }

    fn image_with(at: usize, h: &[u8]) -> Vec<u8> {
        let mut img: Vec<u8> = (0..16384u32).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
        img[at..at + h.len()].copy_from_slice(h);
        img
    }

    #[test]
    fn strips_valid_header_and_nothing_else() {
        let mut img = image_with(0x1000, &header(0x0001_0003));
        let orig = img.clone();
        assert_eq!(strip_multiboot1(&mut img), Ok(vec![0x1000]));
        assert_eq!(&img[0x1000..0x1004], &[0, 0, 0, 0]);
        // flags and checksum are kept; every other byte is unchanged.
        assert_eq!(&img[0x1004..], &orig[0x1004..]);
        assert_eq!(&img[..0x1000], &orig[..0x1000]);
        // Stripped twice: nothing left to find.
        assert!(strip_multiboot1(&mut img).is_err());
    }

    #[test]
    fn no_header_is_a_clear_error() {
        let mut img = vec![0u8; 9000];
        let err = strip_multiboot1(&mut img).unwrap_err();
        assert_eq!(err, StripError::NoHeader { bad_checksums: 0 });
        assert!(err.to_string().contains("no multiboot1 header"));
    }

    #[test]
    fn bad_checksum_is_not_matched() {
        let mut h = header(0x0001_0003);
        h[8] ^= 1;
        let mut img = image_with(0x40, &h);
        let err = strip_multiboot1(&mut img).unwrap_err();
        assert_eq!(err, StripError::NoHeader { bad_checksums: 1 });
        assert!(err.to_string().contains("bad checksum"));
        assert_eq!(&img[0x40..0x44], &MULTIBOOT1_MAGIC.to_le_bytes());
    }

    #[test]
    fn unaligned_or_late_headers_are_ignored() {
        let mut img = image_with(0x42, &header(0));
        assert!(strip_multiboot1(&mut img).is_err());
        let mut img = image_with(MULTIBOOT1_SEARCH, &header(0));
        assert!(strip_multiboot1(&mut img).is_err());
        // The last slot that still fits entirely in the window is found.
        let mut img = image_with(MULTIBOOT1_SEARCH - 12, &header(0));
        assert_eq!(strip_multiboot1(&mut img), Ok(vec![MULTIBOOT1_SEARCH - 12]));
    }

    #[test]
    fn short_images_do_not_panic() {
        let mut img = header(2).to_vec();
        assert_eq!(strip_multiboot1(&mut img), Ok(vec![0]));
        let mut tiny = vec![0x02, 0xB0];
        assert!(strip_multiboot1(&mut tiny).is_err());
    }
}
