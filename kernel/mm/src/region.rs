//! Page alignment and half-open physical range arithmetic.

use alloc::vec::Vec;

/// Size of a frame / small page.
pub const PAGE_SIZE: u64 = 4096;

/// `x` rounded up to a multiple of `align` (a power of two), or None on
/// overflow or a bad alignment.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    if !align.is_power_of_two() {
        return None;
    }
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// `x` rounded down to a multiple of `align` (a power of two; 0 or a
/// non-power of two gives None).
pub fn align_down(x: u64, align: u64) -> Option<u64> {
    align.is_power_of_two().then(|| x & !(align - 1))
}

/// `x` rounded up to a page boundary, or None on overflow.
pub fn page_align_up(x: u64) -> Option<u64> {
    align_up(x, PAGE_SIZE)
}

/// `x` rounded down to a page boundary.
pub fn page_align_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// A half-open physical range `[start, end)`. `start > end` is treated as
/// empty everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl From<(u64, u64)> for Range {
    fn from((start, end): (u64, u64)) -> Range {
        Range { start, end }
    }
}

impl Range {
    pub const fn new(start: u64, end: u64) -> Range {
        Range { start, end }
    }

    /// `[start, start + len)`, or None if that overflows.
    pub fn from_start_len(start: u64, len: u64) -> Option<Range> {
        Some(Range { start, end: start.checked_add(len)? })
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// The common part, if not empty.
    pub fn intersect(&self, other: &Range) -> Option<Range> {
        let r = Range { start: self.start.max(other.start), end: self.end.min(other.end) };
        (!r.is_empty()).then_some(r)
    }

    /// What is left of `self` after removing `other`: up to two pieces
    /// (below and above `other`), each None when empty.
    pub fn subtract(&self, other: &Range) -> (Option<Range>, Option<Range>) {
        if self.is_empty() {
            return (None, None);
        }
        if !self.overlaps(other) {
            return (Some(*self), None);
        }
        let below = Range { start: self.start, end: other.start };
        let above = Range { start: other.end, end: self.end };
        ((!below.is_empty()).then_some(below), (!above.is_empty()).then_some(above))
    }

    /// The whole pages inside the range (start rounded up, end down), if any.
    pub fn pages_inside(&self) -> Option<Range> {
        let r = Range { start: page_align_up(self.start)?, end: page_align_down(self.end) };
        (!r.is_empty()).then_some(r)
    }

    /// The pages touching the range (start rounded down, end rounded up).
    ///
    /// Rounding the end up overflows only for ranges ending inside the last
    /// page of the address space; their end becomes `u64::MAX`, which still
    /// covers every whole page an allocator can hold (the last page never is
    /// one: its end, 2^64, is not representable).
    pub fn pages_touching(&self) -> Option<Range> {
        if self.is_empty() {
            return None;
        }
        let end = page_align_up(self.end).unwrap_or(u64::MAX);
        Some(Range { start: page_align_down(self.start), end })
    }
}

/// Sorts `ranges`, drops empty ones and merges overlapping or adjacent ones.
pub fn normalize(ranges: &mut Vec<Range>) {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges.iter() {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(*r),
        }
    }
    *ranges = out;
}

/// `base` minus every range in `remove`, normalized (sorted, merged).
pub fn subtract_all(base: &[Range], remove: &[Range]) -> Vec<Range> {
    let mut cur: Vec<Range> = base.to_vec();
    normalize(&mut cur);
    let mut rem: Vec<Range> = remove.to_vec();
    normalize(&mut rem);
    let mut out = Vec::with_capacity(cur.len());
    for r in cur {
        let mut piece = Some(r);
        for x in rem.iter() {
            let Some(p) = piece else { break };
            if x.start >= p.end {
                break;
            }
            if x.end <= p.start || x.is_empty() {
                continue;
            }
            let (below, above) = p.subtract(x);
            if let Some(b) = below {
                out.push(b);
            }
            piece = above;
        }
        if let Some(p) = piece {
            out.push(p);
        }
    }
    out
}

/// The whole frames usable for allocation: `usable` shrunk to page
/// boundaries, minus `reserved` grown to page boundaries (a partly reserved
/// page is not handed out). Sorted, merged, page aligned.
pub fn usable_frames(usable: &[Range], reserved: &[Range]) -> Vec<Range> {
    let mut u: Vec<Range> = usable.to_vec();
    normalize(&mut u);
    let u: Vec<Range> = u.iter().filter_map(|r| r.pages_inside()).collect();
    let r: Vec<Range> = reserved.iter().filter_map(|r| r.pages_touching()).collect();
    let mut out = subtract_all(&u, &r);
    out.retain(|r| !r.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn r(s: u64, e: u64) -> Range {
        Range::new(s, e)
    }

    #[test]
    fn alignment() {
        assert_eq!(align_up(0, 4096), Some(0));
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 4096), None);
        assert_eq!(align_up(u64::MAX - 4095, 4096), Some(u64::MAX - 4095));
        assert_eq!(align_up(5, 0), None);
        assert_eq!(align_up(5, 3), None);
        assert_eq!(align_up(5, 1), Some(5));
        assert_eq!(align_down(4097, 4096), Some(4096));
        assert_eq!(align_down(4097, 0), None);
        assert_eq!(align_down(u64::MAX, 1 << 63), Some(1 << 63));
        assert_eq!(page_align_up(0x1001), Some(0x2000));
        assert_eq!(page_align_up(u64::MAX), None);
        assert_eq!(page_align_down(0x1FFF), 0x1000);
    }

    #[test]
    fn range_basics() {
        assert!(r(5, 5).is_empty());
        assert!(r(6, 5).is_empty());
        assert_eq!(r(6, 5).len(), 0);
        assert_eq!(r(5, 9).len(), 4);
        assert!(r(5, 9).contains(5) && r(5, 9).contains(8) && !r(5, 9).contains(9));
        assert_eq!(Range::from_start_len(u64::MAX, 1), None);
        assert_eq!(Range::from_start_len(10, 5), Some(r(10, 15)));
        assert_eq!(Range::from((1, 2)), r(1, 2));
        assert!(r(0, 10).overlaps(&r(9, 20)));
        assert!(!r(0, 10).overlaps(&r(10, 20)));
        assert!(!r(0, 10).overlaps(&r(5, 5)));
        assert_eq!(r(0, 10).intersect(&r(5, 20)), Some(r(5, 10)));
        assert_eq!(r(0, 10).intersect(&r(10, 20)), None);
    }

    #[test]
    fn subtract_cases() {
        assert_eq!(r(0, 10).subtract(&r(3, 5)), (Some(r(0, 3)), Some(r(5, 10))));
        assert_eq!(r(0, 10).subtract(&r(0, 5)), (None, Some(r(5, 10))));
        assert_eq!(r(0, 10).subtract(&r(5, 10)), (Some(r(0, 5)), None));
        assert_eq!(r(0, 10).subtract(&r(0, 10)), (None, None));
        assert_eq!(r(0, 10).subtract(&r(20, 30)), (Some(r(0, 10)), None));
        assert_eq!(r(0, 10).subtract(&r(7, 3)), (Some(r(0, 10)), None));
        assert_eq!(r(5, 5).subtract(&r(0, 1)), (None, None));
    }

    #[test]
    fn page_rounding() {
        assert_eq!(r(0x1001, 0x3FFF).pages_inside(), Some(r(0x2000, 0x3000)));
        assert_eq!(r(0x1001, 0x1FFF).pages_inside(), None);
        assert_eq!(r(u64::MAX - 10, u64::MAX).pages_inside(), None);
        assert_eq!(r(0x1001, 0x1002).pages_touching(), Some(r(0x1000, 0x2000)));
        assert_eq!(r(u64::MAX - 10, u64::MAX).pages_touching(), Some(r(u64::MAX - 4095, u64::MAX)));
        assert_eq!(r(3, 3).pages_touching(), None);
    }

    #[test]
    fn normalize_and_subtract_all() {
        let mut v = vec![r(10, 20), r(0, 5), r(5, 7), r(15, 30), r(40, 40), r(50, 45), r(31, 35)];
        normalize(&mut v);
        assert_eq!(v, vec![r(0, 7), r(10, 30), r(31, 35)]);
        let out = subtract_all(&[r(0, 100), r(200, 300)], &[r(10, 20), r(15, 25), r(90, 210), r(299, 400)]);
        assert_eq!(out, vec![r(0, 10), r(25, 90), r(210, 299)]);
        assert_eq!(subtract_all(&[r(0, 100)], &[]), vec![r(0, 100)]);
        assert_eq!(subtract_all(&[r(0, 100)], &[r(0, 100)]), vec![]);
    }

    #[test]
    fn usable_frames_example() {
        // Low memory, the image and a module reserved; unaligned firmware ranges.
        let usable = [r(0, 0x9_FC00), r(0x10_0000, 0x8000_0000), r(0x1_0000_0000, 0x1_4000_0800)];
        let reserved = [r(0, 0x10_0000), r(0x20_0000, 0x40_0123), r(0x1_2000_0000, 0x1_2000_0001)];
        assert_eq!(
            usable_frames(&usable, &reserved),
            vec![
                r(0x10_0000, 0x20_0000),
                r(0x40_1000, 0x8000_0000),
                r(0x1_0000_0000, 0x1_2000_0000),
                r(0x1_2000_1000, 0x1_4000_0000),
            ]
        );
    }

    #[test]
    fn subtract_all_randomized_against_bitmap() {
        let mut x: u64 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let mut gen = |n: u64| -> Vec<Range> { (0..n).map(|_| r(next() % 128, next() % 128)).collect() };
            let base = gen(5);
            let rem = gen(5);
            let out = subtract_all(&base, &rem);
            for w in out.windows(2) {
                assert!(w[0].end < w[1].start, "not normalized: {:?}", out);
            }
            for a in 0..130 {
                let want = base.iter().any(|b| b.contains(a)) && !rem.iter().any(|b| b.contains(a));
                assert_eq!(out.iter().any(|o| o.contains(a)), want, "addr {} base {:?} rem {:?}", a, base, rem);
            }
        }
    }
}
