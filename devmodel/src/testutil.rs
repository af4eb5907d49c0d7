//! Test helpers: fake clocks and a deterministic PRNG.

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
