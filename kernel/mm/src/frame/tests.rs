use super::*;
use std::collections::{BTreeMap, BTreeSet};

const P: u64 = PAGE_SIZE;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const LAST_PAGE: u64 = u64::MAX - (P - 1);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn construction_respects_reservations_and_alignment() {
    let a = FrameAllocator::new(
        &[(0, 0x9_FC00), (0x10_0000, 0x800_0000), (0x1_0000_0800, 0x1_0001_0000)],
        &[(0, 0x10_0000), (0x20_0000, 0x40_0001)],
    );
    let ranges: Vec<Range> = a.managed_ranges().collect();
    assert_eq!(
        ranges,
        vec![
            Range::new(0x10_0000, 0x20_0000),
            Range::new(0x40_1000, 0x800_0000),
            Range::new(0x1_0000_1000, 0x1_0001_0000),
        ]
    );
    let frames = (0x10_0000 + (0x800_0000 - 0x40_1000) + 0xF000) / P;
    assert_eq!(a.total_frames() as u64, frames);
    assert_eq!(a.free_frames(), a.total_frames());
    assert_eq!(a.used_frames(), 0);
    assert_eq!(a.is_free(0x10_0000), Some(true));
    assert_eq!(a.is_free(0x30_0000), None);
    assert_eq!(a.is_free(0x10_0001), None);
}

#[test]
fn empty_and_degenerate_maps() {
    let mut a = FrameAllocator::new(&[], &[]);
    assert_eq!(a.total_frames(), 0);
    assert_eq!(a.alloc(), None);
    assert_eq!(a.alloc_contiguous(1, 1), None);
    assert_eq!(a.free(0x1000), Err(FrameError::NotManaged { addr: 0x1000 }));
    let a = FrameAllocator::new(&[(0x5000, 0x1000), (0x1001, 0x1FFF), (u64::MAX - 10, u64::MAX)], &[(9, 3)]);
    assert_eq!(a.total_frames(), 0);
    // Memory above MAX_PHYS_ADDR is ignored; a bogus huge range is clipped.
    let a = FrameAllocator::new(&[(MAX_PHYS_ADDR - 2 * P, u64::MAX)], &[]);
    assert_eq!(a.total_frames(), 2);
    assert_eq!(FrameAllocator::bitmap_bytes(&[(0, 4 * GIB)], &[]), 4 * 32 * 1024);
}

#[test]
fn alloc_all_then_exhausted_then_free() {
    let mut a = FrameAllocator::new(&[(0x10_0000, 0x10_0000 + 130 * P)], &[]);
    let mut got = BTreeSet::new();
    while let Some(f) = a.alloc() {
        assert_eq!(f % P, 0);
        assert!((0x10_0000..0x10_0000 + 130 * P).contains(&f));
        assert!(got.insert(f), "frame {:#x} handed out twice", f);
    }
    assert_eq!(got.len(), 130);
    assert_eq!(a.free_frames(), 0);
    assert_eq!(a.alloc_contiguous(1, 1), None);
    for &f in &got {
        a.free(f).unwrap();
    }
    assert_eq!(a.free_frames(), 130);
    assert_eq!(a.alloc_contiguous(130, 1), Some(0x10_0000));
}

#[test]
fn free_errors_change_nothing() {
    let mut a = FrameAllocator::new(&[(0x10_0000, 0x20_0000)], &[]);
    let f = a.alloc().unwrap();
    let before = a.free_frames();
    assert_eq!(a.free(f + 1), Err(FrameError::Misaligned { addr: f + 1 }));
    assert_eq!(a.free(0x30_0000), Err(FrameError::NotManaged { addr: 0x30_0000 }));
    assert_eq!(a.free(0), Err(FrameError::NotManaged { addr: 0 }));
    assert_eq!(a.free(LAST_PAGE), Err(FrameError::NotManaged { addr: LAST_PAGE }));
    let g = a.alloc().unwrap();
    assert_ne!(f, g);
    a.free(g).unwrap();
    assert_eq!(a.free(g), Err(FrameError::NotAllocated { addr: g }));
    assert_eq!(a.free_frames(), before);
    a.free(f).unwrap();
    assert_eq!(a.free(f), Err(FrameError::NotAllocated { addr: f }));
    assert_eq!(a.free_frames(), a.total_frames());
}

#[test]
fn contiguous_alignment_and_zone_bounds() {
    // Two zones: 0x10_0000..0x30_0000 and 0x40_0000..0x80_0000.
    let mut a = FrameAllocator::new(&[(0x10_0000, 0x30_0000), (0x40_0000, 0x80_0000)], &[]);
    let one = a.alloc().unwrap();
    assert_eq!(one, 0x10_0000);
    // 2 MiB aligned 2 MiB: 0x20_0000 region has only 1 MiB left in zone 0 → zone 1.
    let big = a.alloc_contiguous(512, 512).unwrap();
    assert_eq!(big, 0x40_0000);
    assert_eq!(big % (2 * MIB), 0);
    // An I/O permission map: 3 frames, any alignment; lowest fit.
    let iopm = a.alloc_contiguous(3, 1).unwrap();
    assert_eq!(iopm, 0x10_1000);
    let aligned = a.alloc_contiguous(4, 4).unwrap();
    assert_eq!(aligned, 0x10_4000);
    // Does not fit anywhere (zone 0 has < 2 MiB; zone 1 has exactly 2 MiB free at 0x60_0000).
    assert_eq!(a.alloc_contiguous(513, 1).map(|x| x >= 0x60_0000), None);
    assert_eq!(a.alloc_contiguous(512, 512), Some(0x60_0000));
    assert_eq!(a.alloc_contiguous(0, 1), None);
    assert_eq!(a.alloc_contiguous(1, 3), None);
    assert_eq!(a.alloc_contiguous(1, 0), None);
    assert_eq!(a.alloc_contiguous(usize::MAX, 1), None);
    assert_eq!(a.alloc_contiguous(1, 1 << 40), None);

    // free_contiguous checks everything first.
    assert_eq!(a.free_contiguous(big, 0), Err(FrameError::BadCount { count: 0 }));
    assert_eq!(a.free_contiguous(big, usize::MAX), Err(FrameError::BadCount { count: usize::MAX }));
    assert_eq!(a.free_contiguous(0x2F_F000, 2), Err(FrameError::NotManaged { addr: 0x30_0000 }));
    let free = a.free_frames();
    // Range partly free: error names the first free frame; nothing freed.
    a.free(iopm + P).unwrap();
    assert_eq!(a.free_contiguous(iopm, 3), Err(FrameError::NotAllocated { addr: iopm + P }));
    assert_eq!(a.free_frames(), free + 1);
    assert_eq!(a.is_free(iopm), Some(false));
    a.free(iopm).unwrap();
    a.free(iopm + 2 * P).unwrap();
    a.free_contiguous(big, 512).unwrap();
    a.free_contiguous(aligned, 4).unwrap();
    a.free_contiguous(0x60_0000, 512).unwrap();
    a.free(one).unwrap();
    assert_eq!(a.free_frames(), a.total_frames());
}

#[test]
fn reserve_later() {
    let mut a = FrameAllocator::new(&[(0x10_0000, 0x20_0000)], &[]);
    let total = a.total_frames();
    // Unaligned range: every page it touches.
    assert_eq!(a.reserve(0x10_0800, 0x10_2001), Ok(3));
    assert_eq!(a.total_frames(), total - 3);
    assert_eq!(a.free_frames(), total - 3);
    assert_eq!(a.free(0x10_1000), Err(FrameError::Reserved { addr: 0x10_1000 }));
    assert_eq!(a.free_contiguous(0x10_3000, 2), Err(FrameError::NotAllocated { addr: 0x10_3000 }));
    assert_eq!(a.free_contiguous(0x10_0000, 5), Err(FrameError::Reserved { addr: 0x10_0000 }));
    // Reserving again (overlapping) only counts new pages.
    assert_eq!(a.reserve(0x10_0000, 0x10_4000), Ok(1));
    // Outside managed memory: nothing to do.
    assert_eq!(a.reserve(0x50_0000, 0x60_0000), Ok(0));
    assert_eq!(a.reserve(5, 5), Ok(0));
    // An allocated frame cannot be reserved; nothing changes.
    let f = a.alloc().unwrap();
    assert_eq!(f, 0x10_4000);
    let free = a.free_frames();
    assert_eq!(a.reserve(0x10_4000 - P, 0x10_6000), Err(FrameError::InUse { addr: f }));
    assert_eq!(a.free_frames(), free);
    assert_eq!(a.is_free(0x10_5000), Some(true));
    // Nothing reserved is ever handed out.
    let mut all = Vec::new();
    while let Some(x) = a.alloc() {
        assert!(x >= 0x10_4000, "{:#x}", x);
        all.push(x);
    }
    assert_eq!(all.len() + 1, a.total_frames());
}

#[test]
fn large_memory_is_fast() {
    // 64 GiB in a few zones with a PCI hole; allocate the last frames of a
    // nearly full map and big aligned blocks.
    let mut a = FrameAllocator::new(&[(0, 3 * GIB), (4 * GIB, 64 * GIB)], &[(0, MIB)]);
    assert_eq!(a.total_frames() as u64, (63 * GIB - MIB) / P);
    let heap = a.alloc_contiguous((256 * MIB / P) as usize, 512).unwrap();
    assert_eq!(heap % (2 * MIB), 0);
    // Fill almost everything with 2 MiB blocks, then pick single frames.
    let mut blocks = 0;
    while a.free_frames() > 1024 {
        if a.alloc_contiguous(512, 512).is_none() {
            break;
        }
        blocks += 1;
    }
    assert!(blocks > 30_000);
    let mut singles = 0;
    while a.alloc().is_some() {
        singles += 1;
    }
    assert_eq!(a.free_frames(), 0);
    assert!(singles > 0);
    assert_eq!(a.alloc_contiguous(3, 1), None);
    a.check_invariants();
    a.free_contiguous(heap, (256 * MIB / P) as usize).unwrap();
    assert_eq!(a.alloc_contiguous(3, 4), Some(heap));
    a.check_invariants();
}

/// A simple model: the set of managed frames and the set of allocated ones.
struct Model {
    managed: BTreeSet<u64>,
    allocated: BTreeSet<u64>,
    reserved: BTreeSet<u64>,
}

impl Model {
    fn has_run(&self, count: u64, align: u64) -> bool {
        let free: Vec<u64> = self.managed.iter().copied().filter(|f| !self.allocated.contains(f) && !self.reserved.contains(f)).collect();
        let set: BTreeSet<u64> = free.iter().copied().collect();
        free.iter().any(|&f| (f / P) & (align - 1) == 0 && (0..count).all(|i| set.contains(&(f + i * P))))
    }
    fn free_count(&self) -> usize {
        self.managed.len() - self.allocated.len() - self.reserved.len()
    }
}

fn stress(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    // A random map: a few small zones with random holes, random reservations.
    let mut usable = Vec::new();
    let mut at = rng.below(64) * P + rng.below(P);
    for _ in 0..1 + rng.below(5) {
        let len = rng.below(300) * P + rng.below(P);
        usable.push((at, at + len));
        at += len + rng.below(8) * P;
    }
    let reserved: Vec<(u64, u64)> = (0..rng.below(4))
        .map(|_| {
            let s = rng.below(at);
            (s, s + rng.below(40 * P))
        })
        .collect();
    let mut a = FrameAllocator::new(&usable, &reserved);
    let managed: BTreeSet<u64> = a.managed_ranges().flat_map(|r| (r.start..r.end).step_by(P as usize)).collect();
    // The model's own view of what is managed.
    for f in (0..at + P).step_by(P as usize) {
        // Covered byte by byte by the union of the usable ranges.
        let mut pos = f;
        while let Some(&(_, e)) = usable.iter().find(|&&(s, e)| s <= pos && pos < e) {
            pos = e;
            if pos >= f + P {
                break;
            }
        }
        let in_usable = pos >= f + P;
        let in_res = reserved.iter().any(|&(s, e)| s < f + P && f < e && s < e);
        assert_eq!(managed.contains(&f), in_usable && !in_res, "frame {:#x} usable {:?} reserved {:?}", f, usable, reserved);
    }
    let mut m = Model { managed, allocated: BTreeSet::new(), reserved: BTreeSet::new() };
    let mut blocks: BTreeMap<u64, usize> = BTreeMap::new(); // contiguous allocations
    for step in 0..steps {
        match rng.below(10) {
            0..=3 => match a.alloc() {
                Some(f) => {
                    assert!(m.managed.contains(&f) && !m.reserved.contains(&f), "step {}: bad frame {:#x}", step, f);
                    assert!(m.allocated.insert(f), "step {}: {:#x} allocated twice", step, f);
                }
                None => assert_eq!(m.free_count(), 0, "step {}: alloc failed with free frames", step),
            },
            4..=5 => {
                let count = 1 + rng.below(6);
                let align = 1u64 << rng.below(4);
                match a.alloc_contiguous(count as usize, align as usize) {
                    Some(f) => {
                        assert_eq!((f / P) & (align - 1), 0);
                        for i in 0..count {
                            let x = f + i * P;
                            assert!(m.managed.contains(&x) && !m.reserved.contains(&x));
                            assert!(m.allocated.insert(x), "step {}: {:#x} allocated twice", step, x);
                        }
                        blocks.insert(f, count as usize);
                    }
                    None => assert!(!m.has_run(count, align), "step {}: missed a run of {} aligned {}", step, count, align),
                }
            }
            6..=7 => {
                // Free a random allocated frame (possibly from a block: then the
                // block is forgotten and its other frames freed one by one later).
                if let Some(&f) = m.allocated.iter().nth(rng.below(m.allocated.len().max(1) as u64) as usize) {
                    if let Some((&b, &n)) = blocks.range(..=f).next_back() {
                        if f < b + n as u64 * P {
                            blocks.remove(&b);
                        }
                    }
                    a.free(f).unwrap();
                    m.allocated.remove(&f);
                    assert_eq!(a.free(f), Err(FrameError::NotAllocated { addr: f }));
                }
            }
            8 => {
                if let Some((&b, &n)) = blocks.iter().nth(rng.below(blocks.len().max(1) as u64) as usize) {
                    blocks.remove(&b);
                    a.free_contiguous(b, n).unwrap();
                    for i in 0..n as u64 {
                        m.allocated.remove(&(b + i * P));
                    }
                    assert!(a.free_contiguous(b, n).is_err());
                }
            }
            _ => {
                // Bad frees and occasional reservations.
                let addr = rng.below(at + 8 * P) & !(P - 1);
                let before = a.free_frames();
                let r = a.free(addr);
                let expect_ok = m.allocated.contains(&addr);
                assert_eq!(r.is_ok(), expect_ok, "step {}: free({:#x}) = {:?}", step, addr, r);
                if expect_ok {
                    m.allocated.remove(&addr);
                    if let Some((&b, &n)) = blocks.range(..=addr).next_back() {
                        if addr < b + n as u64 * P {
                            blocks.remove(&b);
                        }
                    }
                } else {
                    assert_eq!(a.free_frames(), before);
                }
                assert!(a.free(addr + 1).is_err());
                if rng.below(8) == 0 {
                    let s = rng.below(at);
                    let e = s + rng.below(6 * P);
                    let pages: Vec<u64> = m
                        .managed
                        .iter()
                        .copied()
                        .filter(|&f| s < e && f < e && s < f + P && !m.reserved.contains(&f))
                        .collect();
                    let conflict = pages.iter().any(|f| m.allocated.contains(f));
                    match a.reserve(s, e) {
                        Ok(n) => {
                            assert!(!conflict);
                            assert_eq!(n, pages.len());
                            m.reserved.extend(pages);
                        }
                        Err(FrameError::InUse { addr }) => {
                            assert!(conflict && m.allocated.contains(&addr));
                        }
                        Err(e) => panic!("unexpected {:?}", e),
                    }
                }
            }
        }
        a.check_invariants();
        assert_eq!(a.free_frames(), m.free_count(), "step {}", step);
        assert_eq!(a.total_frames(), m.managed.len() - m.reserved.len(), "step {}", step);
    }
    // Free everything; then the whole allocator is free again.
    for &f in &m.allocated {
        a.free(f).unwrap();
    }
    assert_eq!(a.free_frames(), a.total_frames());
    for f in &m.managed {
        assert_eq!(a.is_free(*f), Some(!m.reserved.contains(f)));
    }
}

#[test]
fn stress_against_model() {
    for seed in 1..=60 {
        stress(seed * 0x9E37_79B9, 1500);
    }
}

#[test]
fn error_display() {
    assert_eq!(FrameError::NotAllocated { addr: 0x1000 }.to_string(), "frame 0x1000 is not allocated (double free?)");
    assert_eq!(FrameError::Misaligned { addr: 0x1001 }.to_string(), "address 0x1001 is not 4 KiB aligned");
    assert_eq!(FrameError::BadCount { count: 0 }.to_string(), "bad frame count 0");
}
