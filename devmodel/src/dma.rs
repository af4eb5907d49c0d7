//! What a DMA-capable device model needs from its surroundings: the memory
//! of the one guest it serves, and the block device behind a disk.
//!
//! Both are traits so the same model runs in the stub domain (guest memory
//! through its mapped window, blocks through hypercalls to the
//! hypervisor's virtio-blk driver) and in host unit tests (vectors).
//! Every guest-physical address and length handed to these traits comes
//! from the guest and is untrusted: implementations check it and return an
//! error rather than touch anything outside the guest.

use core::fmt;

/// Why a guest-memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// The range is not (entirely) guest RAM.
    OutOfRange { gpa: u64, len: u64 },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::OutOfRange { gpa, len } => {
                write!(f, "guest range {:#x}+{:#x} is not guest RAM", gpa, len)
            }
        }
    }
}

/// The served guest's physical memory.
pub trait GuestMemoryAccess {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// One contiguous piece of a scatter-gather transfer in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaSegment {
    pub gpa: u64,
    pub len: u32,
}

/// Why a block request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// The disk is read-only.
    ReadOnly,
    /// The sector range is past the end of the disk.
    OutOfRange,
    /// A guest address in the request is not guest RAM.
    BadAddress,
    /// The backing device reported an error.
    Io,
}

/// Sector size of every emulated disk.
pub const SECTOR_SIZE: usize = 512;

/// A disk's backing store. Transfers are whole 512-byte sectors. The
/// `*_guest` forms move data straight between the backing device and
/// guest memory (no copy through the device model); `segments` together
/// cover exactly `count * 512` bytes.
pub trait BlockBackend {
    /// Size in 512-byte sectors.
    fn sectors(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read_to_guest(&mut self, lba: u64, count: u32, segments: &[DmaSegment]) -> Result<(), BlockError>;
    fn write_from_guest(&mut self, lba: u64, count: u32, segments: &[DmaSegment]) -> Result<(), BlockError>;
    /// Reads `buf.len() / 512` sectors into a buffer of the device model
    /// (PIO transfers).
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> Result<(), BlockError>;
}
