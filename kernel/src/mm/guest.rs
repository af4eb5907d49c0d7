//! A guest's physical memory: host frames in chunks, the nested page table
//! that maps them, and checked copies in and out. Every guest-physical
//! address and length that reaches the hypervisor goes through these checks.

use super::paging::{PageTables, SIZE_2M, USER, WRITABLE};
use super::{alloc_contiguous, free_contiguous};
use alloc::vec::Vec;
use core::fmt;

/// One host-contiguous piece of guest RAM.
struct Chunk {
    gpa: u64,
    hpa: u64,
    len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemError {
    OutOfMemory { requested: u64 },
    /// The access `[gpa, gpa+len)` is not entirely guest RAM.
    OutOfRange { gpa: u64, len: u64 },
}

impl fmt::Display for GuestMemError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            GuestMemError::OutOfMemory { requested } => {
                write!(f, "not enough free host memory for {} MiB of guest RAM", requested >> 20)
            }
            GuestMemError::OutOfRange { gpa, len } => {
                write!(f, "guest access {:#x}+{:#x} is outside guest RAM", gpa, len)
            }
        }
    }
}

pub struct GuestMemory {
    chunks: Vec<Chunk>,
    npt: PageTables,
    size: u64,
}

impl GuestMemory {
    /// Allocates `size` bytes (rounded up to 2 MiB) of zeroed RAM at
    /// guest-physical 0 and builds its nested page table.
    pub fn new(size: u64) -> Result<Self, GuestMemError> {
        let size = size.div_ceil(SIZE_2M) * SIZE_2M;
        let npt = PageTables::new().map_err(|_| GuestMemError::OutOfMemory { requested: size })?;
        let mut mem = GuestMemory { chunks: Vec::new(), npt, size: 0 };
        let mut gpa = 0;
        while gpa < size {
            let frames = (SIZE_2M / 4096) as usize;
            let hpa = alloc_contiguous(frames, frames).or_else(|| alloc_contiguous(frames, 1));
            let Some(hpa) = hpa else {
                return Err(GuestMemError::OutOfMemory { requested: size });
            };
            // SAFETY: the chunk was just allocated to this guest and is identity mapped.
            unsafe { core::ptr::write_bytes(hpa as *mut u8, 0, SIZE_2M as usize) };
            mem.chunks.push(Chunk { gpa, hpa, len: SIZE_2M });
            mem.npt
                .map_range(gpa, hpa, SIZE_2M, WRITABLE | USER)
                .map_err(|_| GuestMemError::OutOfMemory { requested: size })?;
            gpa += SIZE_2M;
            mem.size = gpa;
        }
        Ok(mem)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn npt_root(&self) -> u64 {
        self.npt.root()
    }

    /// Host address for `[gpa, gpa+len)` if it lies within one chunk.
    fn host_range(&self, gpa: u64, len: u64) -> Option<(u64, u64)> {
        let chunk = self.chunks.iter().find(|c| gpa >= c.gpa && gpa < c.gpa + c.len)?;
        let off = gpa - chunk.gpa;
        let n = len.min(chunk.len - off);
        Some((chunk.hpa + off, n))
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), GuestMemError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(GuestMemError::OutOfRange { gpa, len }),
        }
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemError> {
        self.check(gpa, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let (hpa, n) = self
                .host_range(gpa + done as u64, (buf.len() - done) as u64)
                .ok_or(GuestMemError::OutOfRange { gpa, len: buf.len() as u64 })?;
            // SAFETY: `check` and `host_range` confirm the source lies inside a
            // chunk owned by this guest; the destination is a distinct buffer.
            unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, buf[done..].as_mut_ptr(), n as usize) };
            done += n as usize;
        }
        Ok(())
    }

    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError> {
        self.check(gpa, data.len() as u64)?;
        let mut done = 0usize;
        while done < data.len() {
            let (hpa, n) = self
                .host_range(gpa + done as u64, (data.len() - done) as u64)
                .ok_or(GuestMemError::OutOfRange { gpa, len: data.len() as u64 })?;
            // SAFETY: as in `read`, with the chunk as the destination.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), hpa as *mut u8, n as usize) };
            done += n as usize;
        }
        Ok(())
    }

    pub fn read_u32(&self, gpa: u64) -> Result<u32, GuestMemError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for c in &self.chunks {
            free_contiguous(c.hpa, (c.len / 4096) as usize);
        }
    }
}
