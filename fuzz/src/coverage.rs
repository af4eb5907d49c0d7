//! Edge coverage from LLVM's SanitizerCoverage (`trace-pc-guard`), with
//! our own runtime, so it works on the stable toolchain.
//!
//! `ferrite fuzz` builds the driver with
//! `-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3
//! -C llvm-args=-sanitizer-coverage-trace-pc-guard`: LLVM then gives every
//! edge of every instrumented function a 32-bit guard and calls
//! [`__sanitizer_cov_trace_pc_guard`] with it each time the edge runs, after
//! [`__sanitizer_cov_trace_pc_guard_init`] was called once per module with
//! the module's guards. We number the guards and count hits per edge in
//! [`COUNTERS`] (saturating at 255). LLVM does not instrument functions
//! whose names start with `__sanitizer_`, so the callbacks do not recurse.
//!
//! In a build without those flags (`cargo test`) nothing calls the
//! callbacks and [`edges_known`] stays 0: the engine then fuzzes without
//! coverage feedback.
//!
//! This is the crate's only `unsafe`: reading and numbering the guards LLVM
//! hands us by raw pointer.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Edges we can count; guards numbered beyond this share the last counter.
pub const MAX_EDGES: usize = 1 << 20;

/// Hit counts, one byte per edge (edge `n` is byte `n % 8` of word `n / 8`),
/// packed in words so that finding the hit edges after a run skips eight
/// untouched edges at a time. Atomics only so the statics need no
/// `unsafe`; the fuzz loop is single-threaded and uses plain relaxed loads
/// and stores.
static COUNTERS: [AtomicU64; MAX_EDGES / 8] = [const { AtomicU64::new(0) }; MAX_EDGES / 8];
/// Guards numbered so far; guard numbers are 1..=EDGES.
static EDGES: AtomicU32 = AtomicU32::new(0);

/// Called by each instrumented module's constructor (possibly more than
/// once for one range) with its guards `[start, stop)`.
///
/// # Safety
/// LLVM passes the bounds of the module's guard array.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard_init(start: *mut u32, stop: *mut u32) {
    if start.is_null() || start == stop {
        return;
    }
    let mut guard = start;
    while guard < stop {
        // SAFETY: `guard` lies in [start, stop), the guard array LLVM gave us
        // for this module; it lives as long as the program and no other
        // thread runs before `main`.
        unsafe {
            if *guard == 0 {
                let n = EDGES.load(Relaxed).saturating_add(1);
                EDGES.store(n, Relaxed);
                *guard = n.min(MAX_EDGES as u32 - 1);
            }
            guard = guard.add(1);
        }
    }
}

/// Called on every instrumented edge with that edge's guard.
///
/// # Safety
/// LLVM passes a pointer to one of the guards numbered by
/// [`__sanitizer_cov_trace_pc_guard_init`].
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard(guard: *mut u32) {
    // SAFETY: `guard` points into a guard array LLVM registered through
    // `__sanitizer_cov_trace_pc_guard_init`, valid for the program's life.
    let index = unsafe { *guard } as usize;
    if let Some(word) = COUNTERS.get(index / 8) {
        let shift = (index % 8) * 8;
        let v = word.load(Relaxed);
        if (v >> shift) & 0xff != 0xff {
            word.store(v + (1 << shift), Relaxed);
        }
    }
}

/// How many edges the instrumentation registered (0 without it).
pub fn edges_known() -> usize {
    (EDGES.load(Relaxed) as usize).min(MAX_EDGES - 1)
}

/// Zeroes the hit counts before running one input.
pub fn reset() {
    for w in &COUNTERS[..=edges_known() / 8] {
        w.store(0, Relaxed);
    }
}

/// Calls `f(edge, hits)` for every edge hit since [`reset`].
pub fn for_each_hit(mut f: impl FnMut(usize, u8)) {
    for (i, w) in COUNTERS[..=edges_known() / 8].iter().enumerate() {
        let mut v = w.load(Relaxed);
        while v != 0 {
            let byte = v.trailing_zeros() as usize / 8;
            f(i * 8 + byte, (v >> (byte * 8)) as u8);
            v &= !(0xff << (byte * 8));
        }
    }
}
