//! The bytes a domain boots from: a boot module (in memory the loader
//! handed over, never freed), or a file uploaded at runtime (`xl create`),
//! held in host frames until the last domain specification that names it
//! is gone. A domain that restarts (`on_reboot="restart"`) keeps its files.

use alloc::sync::Arc;
use core::ops::Deref;

#[derive(Clone)]
pub enum Blob {
    Module(&'static [u8]),
    Uploaded(Arc<FrameBuffer>),
}

impl core::fmt::Debug for Blob {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Blob::Module(bytes) => bytes,
            Blob::Uploaded(buf) => buf.as_slice(),
        }
    }
}

/// A byte buffer in physically contiguous host frames (the heap is far too
/// small for a kernel and its initrd), zeroed when made, freed on drop.
pub struct FrameBuffer {
    pa: u64,
    frames: usize,
    len: usize,
}

impl FrameBuffer {
    /// None when `len` bytes of contiguous frames are not free.
    pub fn new(len: usize) -> Option<Self> {
        let frames = len.div_ceil(4096).max(1);
        let pa = super::alloc_contiguous(frames, 1)?;
        let buf = FrameBuffer { pa, frames, len };
        // SAFETY: the frames were just allocated for this buffer alone and
        // are identity mapped writable host RAM.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, frames * 4096) };
        Some(buf)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `pa` starts `frames` frames owned by this buffer until
        // drop, identity mapped; `len` is within them.
        unsafe { core::slice::from_raw_parts(self.pa as *const u8, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.pa as *mut u8, self.len) }
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        super::free_contiguous(self.pa, self.frames);
    }
}
