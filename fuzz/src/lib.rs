//! `ferrite-fuzz`: coverage-guided fuzzing of the parsers that read
//! untrusted input, on the stable toolchain.
//!
//! * [`coverage`]: a SanitizerCoverage (`trace-pc-guard`) runtime of our
//!   own: edge hit counts, when the build is instrumented (`ferrite fuzz`
//!   does that; `cargo test` does not, and then the engine fuzzes blind).
//! * [`engine`]: the loop: seeds, mutation of corpus entries, inputs kept
//!   when they reach new edges, panics caught per input, crashing inputs
//!   saved with the command that reproduces them, progress and a report.
//! * [`mutate`]: byte-level and dictionary mutations.
//! * [`targets`]: one module per parser family, each with seeds that are
//!   valid inputs and properties beyond "does not panic".
//!
//! The binary (`src/main.rs`) is the driver `ferrite fuzz` builds and runs.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod coverage;
pub mod engine;
pub mod mutate;
pub mod rng;
pub mod targets;

pub use engine::{fuzz, run_one, Options, Report};
pub use targets::{find, Target, TARGETS};
