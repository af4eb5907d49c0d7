//! The guest's disks ([`BlockBackend`]) through the BLOCK_IO hypercall.
//!
//! DMA moves data straight between the host disk and guest memory: the
//! request names guest-physical segments (`BLOCK_FLAG_GUEST`) and the
//! hypervisor's driver transfers into them. PIO buffers of the device
//! model are stub memory, named by their (identity-mapped) addresses.
//!
//! One BLOCK_IO request carries at most `BLOCK_MAX_SEGMENTS` segments
//! covering whole sectors, while a guest's scatter list (an IDE PRD table
//! has up to 512 entries of any even length) need not. [`plan`] cuts the
//! list into requests at sector boundaries; the rare sectors that are
//! spread over more segments than one request may carry go through a
//! bounce buffer in the stub.

use crate::guest_memory::GuestRam;
use crate::hypercall;
use crate::memory;
use alloc::vec;
use alloc::vec::Vec;
use ferrite_abi::{
    BlockRequest, Errno, StubDisk, BLOCK_FLAG_GUEST, BLOCK_FLUSH, BLOCK_MAX_SEGMENTS, BLOCK_READ, BLOCK_WRITE,
};
use ferrite_devmodel::dma::{BlockBackend, BlockError, DmaSegment, SECTOR_SIZE};

const SECTOR: u64 = SECTOR_SIZE as u64;
/// Sectors per bounce-buffer transfer.
const BOUNCE_SECTORS: u32 = 128;

/// One disk of the guest.
pub struct StubBlock {
    handle: u32,
    sectors: u64,
    read_only: bool,
    ram: GuestRam,
    /// The encoded request (reused).
    request: Vec<u8>,
}

impl StubBlock {
    pub fn new(disk: &StubDisk, ram: GuestRam) -> Self {
        StubBlock { handle: disk.handle, sectors: disk.sectors, read_only: disk.read_only, ram, request: Vec::new() }
    }

    fn check_range(&self, lba: u64, count: u64) -> Result<(), BlockError> {
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(BlockError::OutOfRange),
        }
    }

    fn submit(
        &mut self,
        op: u32,
        lba: u64,
        count: u32,
        flags: u32,
        segments: Vec<(u64, u32)>,
    ) -> Result<(), BlockError> {
        let req = BlockRequest { disk: self.handle, op, lba, count, flags, segments };
        req.encode(&mut self.request);
        hypercall::block_io(&self.request).map_err(|e| {
            log::warn!("disk {}: BLOCK_IO op {} lba {} count {}: {:?}", self.handle, op, lba, count, e);
            match e {
                Errno::Rofs => BlockError::ReadOnly,
                Errno::Fault => BlockError::BadAddress,
                _ => BlockError::Io,
            }
        })
    }

    /// A transfer between the disk and guest memory.
    fn guest_transfer(&mut self, write: bool, lba: u64, count: u32, segments: &[DmaSegment]) -> Result<(), BlockError> {
        self.check_range(lba, u64::from(count))?;
        if write && self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        if total != u64::from(count) * SECTOR {
            return Err(BlockError::BadAddress);
        }
        for s in segments {
            self.ram.check(s.gpa, u64::from(s.len)).map_err(|_| BlockError::BadAddress)?;
        }
        let op = if write { BLOCK_WRITE } else { BLOCK_READ };
        let mut lba = lba;
        for piece in plan(segments, BLOCK_MAX_SEGMENTS, BOUNCE_SECTORS) {
            let n = piece.sectors;
            if piece.bounce {
                self.bounce(write, lba, n, &piece.segments)?;
            } else {
                self.submit(op, lba, n, BLOCK_FLAG_GUEST, piece.segments)?;
            }
            lba += u64::from(n);
        }
        Ok(())
    }

    /// Sectors whose guest buffers are too scattered for one request: the
    /// disk side goes through a stub buffer, the guest side through the
    /// window (ranges already checked against guest RAM).
    fn bounce(&mut self, write: bool, lba: u64, sectors: u32, segments: &[(u64, u32)]) -> Result<(), BlockError> {
        let mut buf = vec![0u8; sectors as usize * SECTOR_SIZE];
        if write {
            let mut at = 0;
            for &(gpa, len) in segments {
                memory::window_read(&self.ram, gpa, &mut buf[at..at + len as usize])
                    .map_err(|_| BlockError::BadAddress)?;
                at += len as usize;
            }
            self.write(lba, &buf)
        } else {
            self.read(lba, &mut buf)?;
            let mut at = 0;
            for &(gpa, len) in segments {
                memory::window_write(&self.ram, gpa, &buf[at..at + len as usize])
                    .map_err(|_| BlockError::BadAddress)?;
                at += len as usize;
            }
            Ok(())
        }
    }

    /// A transfer between the disk and a buffer in the stub.
    fn stub_transfer(&mut self, write: bool, lba: u64, addr: u64, len: usize) -> Result<(), BlockError> {
        if len & (SECTOR_SIZE - 1) != 0 {
            return Err(BlockError::BadAddress);
        }
        let count = len / SECTOR_SIZE;
        self.check_range(lba, count as u64)?;
        if write && self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if count == 0 {
            return Ok(());
        }
        let count = u32::try_from(count).map_err(|_| BlockError::OutOfRange)?;
        let len = u32::try_from(len).map_err(|_| BlockError::OutOfRange)?;
        let op = if write { BLOCK_WRITE } else { BLOCK_READ };
        self.submit(op, lba, count, 0, vec![(addr, len)])
    }
}

impl BlockBackend for StubBlock {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_to_guest(&mut self, lba: u64, count: u32, segments: &[DmaSegment]) -> Result<(), BlockError> {
        self.guest_transfer(false, lba, count, segments)
    }

    fn write_from_guest(&mut self, lba: u64, count: u32, segments: &[DmaSegment]) -> Result<(), BlockError> {
        self.guest_transfer(true, lba, count, segments)
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        // The hypervisor writes the buffer during the hypercall (whose asm
        // block tells the compiler memory may change).
        self.stub_transfer(false, lba, buf.as_mut_ptr() as u64, buf.len())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.stub_transfer(true, lba, buf.as_ptr() as u64, buf.len())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.submit(BLOCK_FLUSH, 0, 0, 0, Vec::new())
    }
}

/// A run of whole sectors of a scatter list, as one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    pub sectors: u32,
    /// Needs more than the allowed segments: use a bounce buffer.
    pub bounce: bool,
    pub segments: Vec<(u64, u32)>,
}

/// A position in a scatter list.
#[derive(Clone, Copy)]
struct Cursor {
    index: usize,
    offset: u32,
}

impl Cursor {
    /// Takes up to `bytes` bytes in at most `max_entries` pieces.
    fn take(&mut self, list: &[DmaSegment], mut bytes: u64, max_entries: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while bytes > 0 && out.len() < max_entries && self.index < list.len() {
            let s = list[self.index];
            let avail = s.len - self.offset;
            if avail == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = u64::from(avail).min(bytes) as u32;
            out.push((s.gpa + u64::from(self.offset), n));
            bytes -= u64::from(n);
            self.offset += n;
            if self.offset == s.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        out
    }
}

/// Cuts a scatter list that covers whole sectors into requests of at most
/// `max_segments` segments, each covering whole sectors. Sectors that
/// cannot be reached within `max_segments` segments become bounce pieces
/// of up to `bounce_sectors` sectors. A trailing partial sector (the list
/// does not cover whole sectors) is dropped; callers check the total.
pub fn plan(list: &[DmaSegment], max_segments: usize, bounce_sectors: u32) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut remaining: u64 = list.iter().map(|s| u64::from(s.len)).sum::<u64>() / SECTOR * SECTOR;
    let mut cursor = Cursor { index: 0, offset: 0 };
    while remaining > 0 {
        let reach: u64 = cursor.clone().take(list, remaining, max_segments).iter().map(|&(_, l)| u64::from(l)).sum();
        let whole = reach / SECTOR * SECTOR;
        let (bytes, bounce) =
            if whole > 0 { (whole, false) } else { ((u64::from(bounce_sectors.max(1)) * SECTOR).min(remaining), true) };
        let segments = cursor.take(list, bytes, usize::MAX);
        pieces.push(Piece { sectors: (bytes / SECTOR) as u32, bounce, segments });
        remaining -= bytes;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(gpa: u64, len: u32) -> DmaSegment {
        DmaSegment { gpa, len }
    }

    fn bytes(p: &Piece) -> u64 {
        p.segments.iter().map(|&(_, l)| u64::from(l)).sum()
    }

    #[test]
    fn simple_lists_are_one_request() {
        let list = [seg(0x1000, 4096), seg(0x8000, 512)];
        let p = plan(&list, 128, 128);
        assert_eq!(p, vec![Piece { sectors: 9, bounce: false, segments: vec![(0x1000, 4096), (0x8000, 512)] }]);
        assert!(plan(&[], 128, 128).is_empty());
        assert!(plan(&[seg(0x1000, 0)], 128, 128).is_empty());
    }

    #[test]
    fn long_lists_are_cut_at_sector_boundaries() {
        // 300 segments of 768 bytes: 450 sectors.
        let list: Vec<DmaSegment> = (0..300).map(|i| seg(0x10_0000 + i * 0x1000, 768)).collect();
        let p = plan(&list, 128, 128);
        assert_eq!(p.iter().map(|p| u64::from(p.sectors)).sum::<u64>(), 450);
        let mut joined: Vec<(u64, u32)> = Vec::new();
        for piece in &p {
            assert!(!piece.bounce);
            assert!(piece.segments.len() <= 128);
            assert_eq!(bytes(piece), u64::from(piece.sectors) * 512);
            for &(gpa, len) in &piece.segments {
                match joined.last_mut() {
                    Some(last) if last.0 + u64::from(last.1) == gpa => last.1 += len,
                    _ => joined.push((gpa, len)),
                }
            }
        }
        let original: Vec<(u64, u32)> = list.iter().map(|s| (s.gpa, s.len)).collect();
        assert_eq!(joined, original);
        // The first piece: 128 segments = 96 KiB = 192 sectors exactly.
        assert_eq!(p[0].sectors, 192);
    }

    #[test]
    fn scattered_sectors_bounce() {
        // 2-byte segments: one sector needs 256 of them.
        let list: Vec<DmaSegment> = (0..512).map(|i| seg(i * 16, 2)).collect();
        let p = plan(&list, 128, 1);
        assert_eq!(p.len(), 2);
        for piece in &p {
            assert!(piece.bounce);
            assert_eq!(piece.sectors, 1);
            assert_eq!(piece.segments.len(), 256);
        }
        assert_eq!(p[1].segments[0], (256 * 16, 2));
    }

    #[test]
    fn big_segments_split_inside() {
        // A 64 KiB segment then 1 KiB: one request; with max 1 segment, two.
        let list = [seg(0x20_0000, 0x1_0000), seg(0x40_0000, 1024)];
        assert_eq!(plan(&list, 128, 128).len(), 1);
        let p = plan(&list, 1, 128);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].segments, vec![(0x20_0000, 0x1_0000)]);
        assert_eq!(p[1].segments, vec![(0x40_0000, 1024)]);
        // A trailing partial sector is not planned.
        let p = plan(&[seg(0, 700)], 128, 128);
        assert_eq!(p, vec![Piece { sectors: 1, bounce: false, segments: vec![(0, 512)] }]);
    }
}
