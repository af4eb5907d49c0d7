//! The fuzz targets: each turns an input into a call of one untrusted-input
//! parser and checks properties of what comes back (a failed property
//! panics, and the engine records the input as a crash).

mod abi;
mod bootinfo;
mod cmdline;
mod decode;
pub mod images;
mod loader;
mod page_walk;

/// One fuzz target.
pub struct Target {
    /// The name `ferrite fuzz` takes.
    pub name: &'static str,
    /// What is fuzzed and which properties are checked (for `--list`).
    pub about: &'static str,
    /// Longest input the mutator makes.
    pub max_len: usize,
    /// Structure-aware starting inputs (valid images, info blocks, ...).
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens the mutator inserts (magic numbers, option names).
    pub dictionary: &'static [&'static [u8]],
    /// Runs one input; panics when a property fails.
    pub run: fn(&[u8]),
}

/// Every target, in the order `ferrite fuzz` runs them.
pub static TARGETS: &[Target] = &[
    loader::ELF,
    loader::BZIMAGE,
    bootinfo::MULTIBOOT1,
    bootinfo::MULTIBOOT2,
    bootinfo::PVH,
    cmdline::CMDLINE,
    page_walk::PAGE_WALK,
    decode::DECODE,
    abi::STUB_CONFIG,
    abi::BLOCK_REQUEST,
    abi::IOREQ_SLOT,
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Little-endian readers that return 0 past the end of the input, so a
/// short input still decodes to something.
pub(crate) fn le(input: &[u8], at: usize, width: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, slot) in b.iter_mut().enumerate().take(width) {
        *slot = input.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}
