//! Test helpers: fake clocks, a deterministic PRNG, an independent
//! Internet checksum.

use crate::{Clock, WallClock};
use core::cell::Cell;

#[derive(Default)]
pub struct FakeClock(pub Cell<u64>);

impl FakeClock {
    pub fn new(ns: u64) -> Self {
        FakeClock(Cell::new(ns))
    }
    pub fn set(&self, ns: u64) {
        self.0.set(ns);
    }
    pub fn advance(&self, ns: u64) {
        self.0.set(self.0.get().saturating_add(ns));
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Default)]
pub struct FakeWall(pub Cell<u64>);

impl WallClock for FakeWall {
    fn unix_time(&self) -> u64 {
        self.0.get()
    }
}

/// xorshift64*: deterministic, seedable, good enough for fuzz loops.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The Internet checksum (RFC 1071) of `parts` taken as one run of bytes,
/// byte pair by byte pair, carries folded as they happen: written apart
/// from the code under test, to check its checksums.
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: alloc::vec::Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut acc: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u32::from(bytes[i]);
        let lo = u32::from(*bytes.get(i + 1).unwrap_or(&0));
        acc += hi << 8 | lo;
        if acc > 0xffff {
            acc = (acc & 0xffff) + 1;
        }
        i += 2;
    }
    !(acc as u16)
}
