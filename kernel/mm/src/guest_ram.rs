//! Where a guest's RAM is: guest-physical 0 up to the PCI hole, then from
//! 4 GiB, in chunks of one size laid end to end (the kernel's
//! `GuestMemory`). Which chunk holds an address is arithmetic, not a
//! search: every guest memory access asks.

const FOUR_GIB: u64 = 1 << 32;

/// The index of the chunk of `chunk_bytes` holding `gpa`, for RAM laid out
/// from 0 with the hole `[hole_start, 4 GiB)` skipped; None inside the
/// hole. (Whether that chunk exists is the caller's to check.)
pub fn chunk_index(gpa: u64, hole_start: u64, chunk_bytes: u64) -> Option<u64> {
    let linear = if gpa < hole_start {
        gpa
    } else if gpa >= FOUR_GIB {
        hole_start + (gpa - FOUR_GIB)
    } else {
        return None;
    };
    Some(linear / chunk_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLE: u64 = 0xC000_0000;
    const CHUNK: u64 = 2 << 20;

    #[test]
    fn chunks_below_the_hole_count_from_zero() {
        assert_eq!(chunk_index(0, HOLE, CHUNK), Some(0));
        assert_eq!(chunk_index(CHUNK - 1, HOLE, CHUNK), Some(0));
        assert_eq!(chunk_index(CHUNK, HOLE, CHUNK), Some(1));
        assert_eq!(chunk_index(HOLE - 1, HOLE, CHUNK), Some(HOLE / CHUNK - 1));
    }

    #[test]
    fn the_hole_has_no_chunk_and_4_gib_continues_the_count() {
        assert_eq!(chunk_index(HOLE, HOLE, CHUNK), None);
        assert_eq!(chunk_index(FOUR_GIB - 1, HOLE, CHUNK), None);
        assert_eq!(chunk_index(FOUR_GIB, HOLE, CHUNK), Some(HOLE / CHUNK));
        assert_eq!(chunk_index(FOUR_GIB + CHUNK, HOLE, CHUNK), Some(HOLE / CHUNK + 1));
        assert_eq!(chunk_index(u64::MAX, HOLE, CHUNK), Some((HOLE + (u64::MAX - FOUR_GIB)) / CHUNK));
    }
}
