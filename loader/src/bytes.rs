//! Bounds-checked little-endian access to untrusted byte slices, and the
//! matching writers for tables we build.

use crate::LoadError;

pub(crate) fn slice<'a>(
    data: &'a [u8],
    off: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], LoadError> {
    let end = off.checked_add(len);
    match end {
        Some(end) if end <= data.len() as u64 => Ok(&data[off as usize..end as usize]),
        _ => Err(LoadError::Truncated {
            what,
            offset: off,
            len,
            available: data.len() as u64,
        }),
    }
}

pub(crate) fn u8_at(d: &[u8], off: u64, what: &'static str) -> Result<u8, LoadError> {
    Ok(slice(d, off, 1, what)?[0])
}
pub(crate) fn u16_at(d: &[u8], off: u64, what: &'static str) -> Result<u16, LoadError> {
    let s = slice(d, off, 2, what)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}
pub(crate) fn u32_at(d: &[u8], off: u64, what: &'static str) -> Result<u32, LoadError> {
    let s = slice(d, off, 4, what)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
pub(crate) fn u64_at(d: &[u8], off: u64, what: &'static str) -> Result<u64, LoadError> {
    let s = slice(d, off, 8, what)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(s);
    Ok(u64::from_le_bytes(b))
}

/// Writers for buffers we own (offsets are ours, so out of range is a bug:
/// they panic in that case, as slice indexing does).
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) const fn align_up(v: u64, a: u64) -> Option<u64> {
    // `a` is a power of two.
    match v.checked_add(a - 1) {
        Some(x) => Some(x & !(a - 1)),
        None => None,
    }
}
pub(crate) const fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}
