//! Physical memory management for Ferrite: the 4 KiB frame allocator and
//! the range arithmetic that feeds it.
//!
//! Pure logic, host-tested: the allocator only does bookkeeping on physical
//! addresses; the kernel maps and zeroes the frames.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod frame;
pub mod guest_ram;
pub mod region;

pub use frame::{FrameAllocator, FrameError, MAX_PHYS_ADDR};
pub use region::{PAGE_SIZE, Range};
