//! A disk served from RAM: a boot module (`module:NAME` in a domain's
//! disk list), for machines without a host disk for the guest (Bochs has
//! no virtio devices). Read-only disks read the module where the loader
//! put it; writable ones get a private copy when the domain is built
//! (copy-on-write at the whole image: the module itself is never
//! written, and the copy goes with the domain).

use crate::mm::blob::{Blob, FrameBuffer};
use crate::drivers::virtio_blk::BlockIoError;
use alloc::string::String;

const SECTOR: u64 = 512;

enum Data {
    Shared(Blob),
    Private(spin::Mutex<FrameBuffer>),
}

pub struct RamDisk {
    name: String,
    data: Data,
    sectors: u64,
}

impl RamDisk {
    /// `image` must be a whole number of 512-byte sectors.
    pub fn new(name: &str, image: Blob, writable: bool) -> Result<RamDisk, String> {
        let len = image.len();
        if len == 0 || len as u64 % SECTOR != 0 {
            return Err(alloc::format!("disk image {} is {} bytes, not a whole number of 512-byte sectors", name, len));
        }
        let data = if writable {
            let mut copy = FrameBuffer::new(len).ok_or_else(|| alloc::format!("no {} KiB of host memory for a copy of disk image {}", len >> 10, name))?;
            copy.as_mut_slice().copy_from_slice(&image);
            Data::Private(spin::Mutex::new(copy))
        } else {
            Data::Shared(image)
        };
        Ok(RamDisk { name: String::from(name), data, sectors: len as u64 / SECTOR })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        matches!(self.data, Data::Shared(_))
    }

    /// The byte range of a transfer at `lba` over `segments`, checked.
    fn range(&self, lba: u64, segments: &[(u64, usize)]) -> Result<(usize, usize), BlockIoError> {
        let bytes = segments.iter().try_fold(0usize, |acc, &(_, l)| acc.checked_add(l)).ok_or(BlockIoError::NotSectorMultiple { bytes: usize::MAX })?;
        if bytes as u64 % SECTOR != 0 {
            return Err(BlockIoError::NotSectorMultiple { bytes });
        }
        let count = bytes as u64 / SECTOR;
        if lba.checked_add(count).is_none_or(|end| end > self.sectors) {
            return Err(BlockIoError::OutOfRange { lba, sectors: count, capacity: self.sectors });
        }
        for &(pa, l) in segments {
            if pa == 0 || pa.checked_add(l as u64).is_none() {
                return Err(BlockIoError::BadSegment { host_pa: pa, len: l });
            }
        }
        Ok(((lba * SECTOR) as usize, bytes))
    }

    /// Copies sectors from `lba` on into the segments (host physical
    /// address, length), in order.
    ///
    /// # Safety
    /// As `BlockDevice::read`: every segment is RAM (a guest's frames) that
    /// may be written during the call and that no Rust reference covers.
    pub unsafe fn read(&self, lba: u64, segments: &[(u64, usize)]) -> Result<(), BlockIoError> {
        let (mut off, _) = self.range(lba, segments)?;
        let mut copy = |image: &[u8]| {
            for &(pa, l) in segments {
                // SAFETY: `range` checked the bytes lie inside the image;
                // the caller guarantees the segment is writable RAM no
                // reference covers, identity mapped.
                unsafe { core::ptr::copy_nonoverlapping(image[off..off + l].as_ptr(), pa as *mut u8, l) };
                off += l;
            }
        };
        match &self.data {
            Data::Shared(blob) => copy(blob),
            Data::Private(buf) => copy(buf.lock().as_slice()),
        }
        Ok(())
    }

    /// Copies the segments' bytes to sectors from `lba` on.
    ///
    /// # Safety
    /// As `BlockDevice::write`: every segment is RAM that may be read during
    /// the call (its contents may change meanwhile).
    pub unsafe fn write(&self, lba: u64, segments: &[(u64, usize)]) -> Result<(), BlockIoError> {
        let (mut off, _) = self.range(lba, segments)?;
        let Data::Private(buf) = &self.data else { return Err(BlockIoError::ReadOnly) };
        let mut buf = buf.lock();
        let image = buf.as_mut_slice();
        for &(pa, l) in segments {
            // SAFETY: `range` checked the bytes lie inside the image; the
            // caller guarantees the segment is readable RAM, identity mapped.
            unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, image[off..off + l].as_mut_ptr(), l) };
            off += l;
        }
        Ok(())
    }
}
