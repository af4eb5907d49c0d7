//! The physical frame allocator: one bit per 4 KiB frame.
//!
//! Usable memory is a list of *zones* (page-aligned ranges of usable RAM
//! minus the reserved ranges given at construction). Each zone owns a run of
//! whole `u64` words in one bitmap (a `Vec`, so holes in the physical
//! address space cost nothing: 32 KiB of bitmap per GiB of RAM). A set bit
//! means the frame is free; the unused tail bits of a zone's last word stay
//! clear, so they are never handed out.
//!
//! Frames are identified by their physical address (`u64`, 4 KiB aligned):
//! the kernel identity-maps RAM, so the address is also the pointer.
//!
//! Every caller-supplied address and count is checked: freeing a frame that
//! is not allocated, not managed, reserved or misaligned returns a
//! [`FrameError`] and changes nothing.

use crate::region::{self, Range, PAGE_SIZE};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Memory at or above this address is ignored (64 TiB; bounds the bitmap a
/// bogus memory map could ask for).
pub const MAX_PHYS_ADDR: u64 = 1 << 46;

const PAGE_SHIFT: u32 = 12;

/// Why a frame operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not 4 KiB aligned.
    Misaligned { addr: u64 },
    /// The frame is not RAM this allocator manages (or a multi-frame range
    /// leaves the zone it starts in).
    NotManaged { addr: u64 },
    /// The frame was reserved with [`FrameAllocator::reserve`].
    Reserved { addr: u64 },
    /// Freeing a frame that is already free (double free).
    NotAllocated { addr: u64 },
    /// Reserving a frame that is currently allocated.
    InUse { addr: u64 },
    /// A count of zero, or one whose byte size overflows.
    BadCount { count: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::Misaligned { addr } => write!(f, "address {:#x} is not 4 KiB aligned", addr),
            FrameError::NotManaged { addr } => write!(f, "frame {:#x} is not managed memory", addr),
            FrameError::Reserved { addr } => write!(f, "frame {:#x} is reserved", addr),
            FrameError::NotAllocated { addr } => write!(f, "frame {:#x} is not allocated (double free?)", addr),
            FrameError::InUse { addr } => write!(f, "frame {:#x} is allocated and cannot be reserved", addr),
            FrameError::BadCount { count } => write!(f, "bad frame count {}", count),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Zone {
    /// First frame number (physical address >> 12).
    start: u64,
    frames: u64,
    /// First bitmap word; the zone's frame `start + i` is bit `word*64 + i`.
    word: usize,
}

impl Zone {
    fn end(&self) -> u64 {
        self.start + self.frames
    }
    fn bit(&self, frame: u64) -> usize {
        self.word * 64 + (frame - self.start) as usize
    }
    fn frame(&self, bit: usize) -> u64 {
        self.start + (bit - self.word * 64) as u64
    }
}

/// Bitmap allocator of 4 KiB physical frames.
pub struct FrameAllocator {
    zones: Vec<Zone>,
    /// Bit set = frame free.
    bitmap: Vec<u64>,
    /// Summary: bit `w` set = `bitmap[w]` has a free frame. Lets searches
    /// skip 64 full words (16 MiB) per step.
    summary: Vec<u64>,
    /// Ranges taken out with `reserve` after construction (page aligned,
    /// normalized).
    reserved: Vec<Range>,
    total: usize,
    free: usize,
    /// Word where the next single-frame search starts.
    hint: usize,
    /// Every bitmap word below this one is zero (no free frame): searches
    /// start here, so a full low part of memory is skipped at once.
    low: usize,
}

impl fmt::Debug for FrameAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("zones", &self.zones.len())
            .field("total", &self.total)
            .field("free", &self.free)
            .finish()
    }
}

impl FrameAllocator {
    /// Manages the whole 4 KiB frames in `usable` (`[start, end)` byte
    /// ranges, unsorted, possibly overlapping or unaligned) minus `reserved`
    /// (kernel image, boot modules, low memory, ...: any page they touch is
    /// left out). Memory at or above [`MAX_PHYS_ADDR`] is ignored. All frames
    /// start free. The bitmap lives on the heap, so it needs no reservation
    /// of its own.
    pub fn new(usable: &[(u64, u64)], reserved: &[(u64, u64)]) -> FrameAllocator {
        let usable: Vec<Range> = usable
            .iter()
            .filter_map(|&(s, e)| Range::new(s, e.min(MAX_PHYS_ADDR)).intersect(&Range::new(0, MAX_PHYS_ADDR)))
            .collect();
        let reserved: Vec<Range> = reserved.iter().map(|&r| Range::from(r)).collect();
        let ranges = region::usable_frames(&usable, &reserved);
        let mut zones = Vec::with_capacity(ranges.len());
        let mut words = 0usize;
        for r in &ranges {
            let frames = r.len() >> PAGE_SHIFT;
            zones.push(Zone { start: r.start >> PAGE_SHIFT, frames, word: words });
            words += frames.div_ceil(64) as usize;
        }
        let mut a = FrameAllocator { zones, bitmap: vec![0; words], summary: vec![0; words.div_ceil(64)], reserved: Vec::new(), total: 0, free: 0, hint: 0, low: 0 };
        for z in a.zones.clone() {
            a.set_bits(z.bit(z.start), z.bit(z.end()), true);
            a.total += z.frames as usize;
        }
        a.free = a.total;
        a
    }

    /// Bytes of bitmap `new` would allocate for these ranges.
    pub fn bitmap_bytes(usable: &[(u64, u64)], reserved: &[(u64, u64)]) -> usize {
        let usable: Vec<Range> = usable.iter().map(|&(s, e)| Range::new(s, e.min(MAX_PHYS_ADDR))).collect();
        let reserved: Vec<Range> = reserved.iter().map(|&r| Range::from(r)).collect();
        region::usable_frames(&usable, &reserved).iter().map(|r| (r.len() >> PAGE_SHIFT).div_ceil(64) as usize * 8).sum()
    }

    /// Frames managed (usable minus all reservations).
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Frames currently allocated.
    pub fn used_frames(&self) -> usize {
        self.total - self.free
    }

    /// The managed ranges (page aligned, sorted), including frames reserved
    /// after construction.
    pub fn managed_ranges(&self) -> impl Iterator<Item = Range> + '_ {
        self.zones.iter().map(|z| Range::new(z.start << PAGE_SHIFT, z.end() << PAGE_SHIFT))
    }

    /// Whether the frame at `addr` is free (None if not managed or not
    /// aligned).
    pub fn is_free(&self, addr: u64) -> Option<bool> {
        if addr & (PAGE_SIZE - 1) != 0 {
            return None;
        }
        let z = self.zone_of(addr >> PAGE_SHIFT)?;
        Some(self.get_bit(z.bit(addr >> PAGE_SHIFT)))
    }

    /// One frame, or None when memory is exhausted.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let n = self.bitmap.len();
        let low = self.low.min(n);
        let start = if self.hint < n { self.hint.max(low) } else { low };
        let bit = self.find_bit(start * 64, n * 64, true).or_else(|| self.find_bit(low * 64, start * 64, true))?;
        let w = bit / 64;
        self.bitmap[w] &= !(1u64 << (bit % 64));
        self.sync_summary(w);
        self.free -= 1;
        self.hint = w;
        let z = self.zone_of_word(w);
        Some(z.frame(bit) << PAGE_SHIFT)
    }

    /// `count` physically contiguous frames whose first frame number is a
    /// multiple of `align_frames` (a power of two; 1 for no alignment), e.g.
    /// `alloc_contiguous(3, 1)` for SVM's 12 KiB I/O permission map or
    /// `alloc_contiguous(512, 512)` for a 2 MiB page. Lowest fit first.
    pub fn alloc_contiguous(&mut self, count: usize, align_frames: usize) -> Option<u64> {
        if count == 0 || !align_frames.is_power_of_two() || count > self.free {
            return None;
        }
        let (count, align) = (count as u64, align_frames as u64);
        // Nothing is free below the first free frame: start there.
        let first_free = self.find_bit(self.low * 64, self.bitmap.len() * 64, true)?;
        self.low = first_free / 64;
        let first_zone = self.zones.partition_point(|z| z.word <= self.low) - 1;
        for zi in first_zone..self.zones.len() {
            let z = self.zones[zi];
            let from = if zi == first_zone { z.frame(first_free) } else { z.start };
            let mut cand = match region::align_up(from, align) {
                Some(c) => c,
                None => continue,
            };
            while cand.checked_add(count).is_some_and(|e| e <= z.end()) {
                let (lo, hi) = (z.bit(cand), z.bit(cand + count));
                match self.find_bit(lo, hi, false) {
                    None => {
                        self.set_bits(lo, hi, false);
                        self.free -= count as usize;
                        return Some(cand << PAGE_SHIFT);
                    }
                    Some(used) => {
                        // Skip past the used frame to the next free one.
                        let Some(next_free) = self.find_bit(used + 1, z.bit(z.end()), true) else { break };
                        match region::align_up(z.frame(next_free), align) {
                            Some(c) => cand = c,
                            None => break,
                        }
                    }
                }
            }
        }
        None
    }

    /// Returns one frame.
    pub fn free(&mut self, addr: u64) -> Result<(), FrameError> {
        self.free_contiguous(addr, 1)
    }

    /// Returns `count` contiguous frames starting at `addr` (as given by
    /// `alloc_contiguous`; they must lie in one managed zone). All frames are
    /// checked before any is freed.
    pub fn free_contiguous(&mut self, addr: u64, count: usize) -> Result<(), FrameError> {
        let (lo, hi) = self.check_range(addr, count)?;
        if let Some(bit) = self.find_bit(lo, hi, true) {
            let z = self.zone_of_word(bit / 64);
            return Err(FrameError::NotAllocated { addr: z.frame(bit) << PAGE_SHIFT });
        }
        self.set_bits(lo, hi, true);
        self.free += count;
        self.hint = lo / 64;
        self.low = self.low.min(lo / 64);
        Ok(())
    }

    /// Takes `[start, end)` (every page it touches) out of the allocator for
    /// good: firmware tables found late, a module, a device's memory. Pages
    /// that are not managed are ignored. Fails, changing nothing, if any
    /// page in the range is currently allocated. Returns how many frames were
    /// newly reserved.
    pub fn reserve(&mut self, start: u64, end: u64) -> Result<usize, FrameError> {
        let Some(r) = Range::new(start, end).pages_touching() else { return Ok(0) };
        // Already-reserved pages are allocated bits too; skip them.
        let pieces = region::subtract_all(&[r], &self.reserved);
        let mut spans = Vec::new();
        for p in &pieces {
            for z in &self.zones {
                let zr = Range::new(z.start << PAGE_SHIFT, z.end() << PAGE_SHIFT);
                if let Some(i) = zr.intersect(p) {
                    let i = Range::new(i.start, region::page_align_down(i.end));
                    if i.is_empty() {
                        continue;
                    }
                    let (lo, hi) = (z.bit(i.start >> PAGE_SHIFT), z.bit(i.end >> PAGE_SHIFT));
                    if let Some(used) = self.find_bit(lo, hi, false) {
                        return Err(FrameError::InUse { addr: z.frame(used) << PAGE_SHIFT });
                    }
                    spans.push((lo, hi));
                }
            }
        }
        let mut n = 0;
        for (lo, hi) in spans {
            self.set_bits(lo, hi, false);
            n += hi - lo;
        }
        self.free -= n;
        self.total -= n;
        self.reserved.push(r);
        region::normalize(&mut self.reserved);
        Ok(n)
    }

    /// Checks the internal invariants (tests only): the summary mirrors the
    /// bitmap, the free counter matches it, tail bits are never free.
    #[cfg(test)]
    fn check_invariants(&self) {
        let ones: u32 = self.bitmap.iter().map(|w| w.count_ones()).sum();
        assert_eq!(ones as usize, self.free);
        for (w, &word) in self.bitmap.iter().enumerate() {
            assert_eq!(self.summary[w / 64] & (1 << (w % 64)) != 0, word != 0, "summary of word {}", w);
            assert!(w >= self.low || word == 0, "word {} below low {} has free frames", w, self.low);
        }
        for z in &self.zones {
            let end = z.bit(z.end());
            assert!(self.find_bit(end, end.div_ceil(64) * 64, true).is_none(), "tail bits free");
        }
    }

    // -----------------------------------------------------------------------

    /// Validates a free of `count` frames at `addr`; returns its bit range.
    fn check_range(&self, addr: u64, count: usize) -> Result<(usize, usize), FrameError> {
        if count == 0 {
            return Err(FrameError::BadCount { count });
        }
        if addr & (PAGE_SIZE - 1) != 0 {
            return Err(FrameError::Misaligned { addr });
        }
        let first = addr >> PAGE_SHIFT;
        let z = self.zone_of(first).ok_or(FrameError::NotManaged { addr })?;
        let bytes = (count as u64).checked_mul(PAGE_SIZE).ok_or(FrameError::BadCount { count })?;
        let end = addr.checked_add(bytes).ok_or(FrameError::BadCount { count })?;
        let last = first + count as u64 - 1;
        if last >= z.end() {
            return Err(FrameError::NotManaged { addr: z.end() << PAGE_SHIFT });
        }
        if let Some(res) = self.reserved.iter().find(|res| res.overlaps(&Range::new(addr, end))) {
            return Err(FrameError::Reserved { addr: res.start.max(addr) });
        }
        Ok((z.bit(first), z.bit(last) + 1))
    }

    fn zone_of(&self, frame: u64) -> Option<Zone> {
        let i = self.zones.partition_point(|z| z.start <= frame);
        let z = *self.zones.get(i.checked_sub(1)?)?;
        (frame < z.end()).then_some(z)
    }

    /// The zone owning bitmap word `w` (which must be a valid word).
    fn zone_of_word(&self, w: usize) -> Zone {
        let i = self.zones.partition_point(|z| z.word <= w);
        self.zones[i - 1]
    }

    fn get_bit(&self, bit: usize) -> bool {
        self.bitmap[bit / 64] & (1u64 << (bit % 64)) != 0
    }

    /// Mask of bits `[lo, hi)` within word `w`'s 64 bits.
    fn mask(w: usize, lo: usize, hi: usize) -> u64 {
        let a = lo.max(w * 64) - w * 64;
        let b = hi.min(w * 64 + 64) - w * 64;
        if b - a == 64 {
            u64::MAX
        } else {
            ((1u64 << (b - a)) - 1) << a
        }
    }

    fn sync_summary(&mut self, w: usize) {
        let bit = 1u64 << (w % 64);
        if self.bitmap[w] != 0 {
            self.summary[w / 64] |= bit;
        } else {
            self.summary[w / 64] &= !bit;
        }
    }

    /// First bit in `[lo, hi)` equal to `value`; whole words skipped at once
    /// (and, looking for a free frame, 64 full words per summary word).
    fn find_bit(&self, lo: usize, hi: usize, value: bool) -> Option<usize> {
        if lo >= hi {
            return None;
        }
        if value {
            let last = (hi - 1) / 64;
            let mut w = lo / 64;
            while w <= last {
                let sm = self.summary[w / 64] & (u64::MAX << (w % 64));
                if sm == 0 {
                    w = (w / 64 + 1) * 64;
                    continue;
                }
                w = (w / 64) * 64 + sm.trailing_zeros() as usize;
                if w > last {
                    return None;
                }
                let hit = self.bitmap[w] & Self::mask(w, lo, hi);
                if hit != 0 {
                    return Some(w * 64 + hit.trailing_zeros() as usize);
                }
                w += 1;
            }
            return None;
        }
        for w in lo / 64..hi.div_ceil(64) {
            let word = if value { self.bitmap[w] } else { !self.bitmap[w] };
            let hit = word & Self::mask(w, lo, hi);
            if hit != 0 {
                return Some(w * 64 + hit.trailing_zeros() as usize);
            }
        }
        None
    }

    fn set_bits(&mut self, lo: usize, hi: usize, value: bool) {
        if lo >= hi {
            return;
        }
        for w in lo / 64..hi.div_ceil(64) {
            let m = Self::mask(w, lo, hi);
            if value {
                self.bitmap[w] |= m;
            } else {
                self.bitmap[w] &= !m;
            }
            self.sync_summary(w);
        }
    }
}

#[cfg(test)]
mod tests;
