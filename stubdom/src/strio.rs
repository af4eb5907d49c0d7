//! Address arithmetic of string I/O (`rep ins/outs`, `FLAG_DATA_IS_GPA`):
//! `count` elements of `size` bytes at guest-physical `data`, element `i`
//! at `data + i*size`, or `data - i*size` when `FLAG_DOWN` (RFLAGS.DF) is
//! set. Elements are moved in chunks; a chunk is one contiguous guest
//! range. All arithmetic is checked: the request is hypervisor-made from
//! guest register values.

/// Guest-physical start of the contiguous range holding elements
/// `first..first+n` (`n >= 1`), or `None` if it wraps.
pub fn chunk_start(data: u64, size: u64, down: bool, first: u64, n: u64) -> Option<u64> {
    if down {
        let last = first.checked_add(n)?.checked_sub(1)?;
        data.checked_sub(last.checked_mul(size)?)
    } else {
        let start = data.checked_add(first.checked_mul(size)?)?;
        start.checked_add(n.checked_mul(size)?)?;
        Some(start)
    }
}

/// Address of element `i` of a string starting at `base` (MMIO strings:
/// the device address moves too).
pub fn element_addr(base: u64, size: u64, down: bool, i: u64) -> Option<u64> {
    let delta = i.checked_mul(size)?;
    if down {
        base.checked_sub(delta)
    } else {
        base.checked_add(delta)
    }
}

/// Reverses the order of the `size`-byte elements of `buf` (device order
/// ↔ memory order of a descending string), keeping each element's bytes.
pub fn reverse_elements(buf: &mut [u8], size: usize) {
    if size == 0 {
        return;
    }
    let n = buf.len() / size;
    for i in 0..n / 2 {
        let j = n - 1 - i;
        let (lo, hi) = buf.split_at_mut(j * size);
        lo[i * size..(i + 1) * size].swap_with_slice(&mut hi[..size]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascending_and_descending_chunks() {
        assert_eq!(chunk_start(0x1000, 2, false, 0, 4), Some(0x1000));
        assert_eq!(chunk_start(0x1000, 2, false, 4, 4), Some(0x1008));
        // Descending: elements 0..4 at 0x1000, 0xFFE, 0xFFC, 0xFFA.
        assert_eq!(chunk_start(0x1000, 2, true, 0, 4), Some(0xFFA));
        assert_eq!(chunk_start(0x1000, 2, true, 4, 2), Some(0xFF6));
        assert_eq!(chunk_start(2, 4, true, 0, 2), None);
        assert_eq!(chunk_start(u64::MAX - 3, 4, false, 0, 2), None);
        assert_eq!(chunk_start(0, 4, true, 0, 0), None);
    }

    #[test]
    fn element_addresses() {
        assert_eq!(element_addr(0x100, 4, false, 3), Some(0x10C));
        assert_eq!(element_addr(0x100, 4, true, 3), Some(0xF4));
        assert_eq!(element_addr(4, 4, true, 2), None);
        assert_eq!(element_addr(u64::MAX, 1, false, 1), None);
    }

    #[test]
    fn reversing_elements() {
        let mut b = [1, 2, 3, 4, 5, 6];
        reverse_elements(&mut b, 2);
        assert_eq!(b, [5, 6, 3, 4, 1, 2]);
        let mut b = [1, 2, 3, 4, 5, 6, 7, 8];
        reverse_elements(&mut b, 4);
        assert_eq!(b, [5, 6, 7, 8, 1, 2, 3, 4]);
        let mut b = [1, 2, 3];
        reverse_elements(&mut b, 1);
        assert_eq!(b, [3, 2, 1]);
    }
}
