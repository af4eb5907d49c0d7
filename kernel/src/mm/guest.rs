//! A guest's physical memory: host frames in chunks, the nested page table
//! that maps them, and checked copies in and out. Every guest-physical
//! address and length that reaches the hypervisor goes through these checks.

use super::paging::{PageTables, SIZE_2M, USER, WRITABLE};
use super::{alloc_contiguous, free_contiguous};
use alloc::vec::Vec;
use core::fmt;
use ferrite_devmodel::dma::{DmaError, GuestMemoryAccess};

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

/// Start of the hole below 4 GiB kept free of RAM for MMIO (LAPIC, IOAPIC,
/// PCI BARs); the same value the loader puts in the guest's e820.
pub const PCI_HOLE_START: u64 = 0xC000_0000;

pub struct GuestMemory {
    chunks: Vec<Chunk>,
    /// Read-only firmware images (the BIOS at the top of 4 GiB): mapped
    /// without write permission, readable by the hypervisor, not RAM.
    rom: Vec<Chunk>,
    npt: PageTables,
    /// One past the highest guest-physical RAM address.
    size: u64,
    /// Bytes of RAM (excluding the hole).
    ram_bytes: u64,
}

impl GuestMemory {
    /// Allocates `size` bytes (rounded up to 2 MiB) of zeroed RAM from
    /// guest-physical 0, skipping the PCI hole `[PCI_HOLE_START, 4 GiB)`
    /// (RAM that would fall there is placed above 4 GiB), and builds its
    /// nested page table.
    pub fn new(size: u64) -> Result<Self, GuestMemError> {
        let size = size.div_ceil(SIZE_2M) * SIZE_2M;
        let npt = PageTables::new_nested().map_err(|_| GuestMemError::OutOfMemory { requested: size })?;
        let mut mem = GuestMemory { chunks: Vec::new(), rom: Vec::new(), npt, size: 0, ram_bytes: 0 };
        let mut gpa = 0;
        while mem.ram_bytes < size {
            if gpa == PCI_HOLE_START {
                gpa = 1 << 32;
            }
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
            mem.ram_bytes += SIZE_2M;
        }
        Ok(mem)
    }

    /// Bytes of guest RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    pub fn npt_root(&self) -> u64 {
        self.npt.root()
    }

    /// Host address for `[gpa, gpa+len)` if it lies within one chunk.
    /// Chunks are 2 MiB each, in guest-physical order from 0, with the PCI
    /// hole skipped (`new`), so the one holding `gpa` is found by
    /// arithmetic: every guest memory access comes here, and a search of a
    /// large guest's chunk list was over a third of the hypervisor's
    /// instructions under a network load (BENCHMARKS.md).
    fn host_range(&self, gpa: u64, len: u64) -> Option<(u64, u64)> {
        let index = ferrite_mm::guest_ram::chunk_index(gpa, PCI_HOLE_START, SIZE_2M)?;
        let chunk = self.chunks.get(usize::try_from(index).ok()?)?;
        if gpa < chunk.gpa || gpa - chunk.gpa >= chunk.len {
            return None;
        }
        let off = gpa - chunk.gpa;
        let n = len.min(chunk.len - off);
        Some((chunk.hpa + off, n))
    }

    /// Whether `[gpa, gpa+len)` is entirely guest RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => return false,
        }
        // Chunks are sorted and 2 MiB each; the only gap is the PCI hole.
        let end = gpa + len;
        !(gpa < (1 << 32) && end > PCI_HOLE_START && self.size > PCI_HOLE_START)
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), GuestMemError> {
        if self.contains(gpa, len) {
            Ok(())
        } else {
            Err(GuestMemError::OutOfRange { gpa, len })
        }
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemError> {
        // Most reads (page-table entries, instructions, descriptors) lie in
        // one chunk of RAM: served at once. ROM is never in RAM, so RAM
        // first changes nothing.
        if let Some((hpa, n)) = self.host_range(gpa, buf.len() as u64) {
            if n == buf.len() as u64 {
                // SAFETY: `host_range` found the whole range inside one
                // chunk owned by this guest; the destination is a distinct
                // buffer.
                unsafe { core::ptr::copy_nonoverlapping(hpa as *const u8, buf.as_mut_ptr(), buf.len()) };
                return Ok(());
            }
        }
        if let Some(rom) = self.rom.iter().find(|c| gpa >= c.gpa && gpa.checked_add(buf.len() as u64).is_some_and(|e| e <= c.gpa + c.len)) {
            // SAFETY: the range lies inside a ROM chunk owned by this guest.
            unsafe { core::ptr::copy_nonoverlapping((rom.hpa + (gpa - rom.gpa)) as *const u8, buf.as_mut_ptr(), buf.len()) };
            return Ok(());
        }
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

    /// Takes `&self`: guest RAM is shared by the guest's vCPUs and the
    /// devices that DMA into it, as on real hardware; the bounds are what
    /// the hypervisor guarantees.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemError> {
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

    /// Copies `len` bytes from `src`'s RAM at `src_gpa` into this guest's
    /// RAM at `gpa`: one guest's frame straight into another's buffer.
    /// Both ranges are checked; `src` may be this guest (memmove).
    pub fn copy_from_guest(&self, gpa: u64, src: &GuestMemory, src_gpa: u64, len: u64) -> Result<(), GuestMemError> {
        self.check(gpa, len)?;
        src.check(src_gpa, len)?;
        let mut done = 0u64;
        while done < len {
            let (to, n) = self.host_range(gpa + done, len - done).ok_or(GuestMemError::OutOfRange { gpa, len })?;
            let (from, m) = src.host_range(src_gpa + done, n).ok_or(GuestMemError::OutOfRange { gpa: src_gpa, len })?;
            // SAFETY: `check` and `host_range` confirm both pieces lie inside
            // chunks owned by their guests; `copy` allows overlap (a guest
            // sending to itself).
            unsafe { core::ptr::copy(from as *const u8, to as *mut u8, m as usize) };
            done += m;
        }
        Ok(())
    }

    /// Fills `[gpa, gpa+len)` with `byte`.
    pub fn fill(&self, gpa: u64, len: u64, byte: u8) -> Result<(), GuestMemError> {
        self.check(gpa, len)?;
        let mut done = 0u64;
        while done < len {
            let (hpa, n) = self.host_range(gpa + done, len - done).ok_or(GuestMemError::OutOfRange { gpa, len })?;
            // SAFETY: as in `write`.
            unsafe { core::ptr::write_bytes(hpa as *mut u8, byte, n as usize) };
            done += n;
        }
        Ok(())
    }
}

impl GuestMemory {
    /// Maps a copy of `image` read-only at `gpa` (page aligned, outside
    /// RAM): firmware ROM. Guest writes to it fault to the hypervisor,
    /// which drops them.
    pub fn map_rom(&mut self, gpa: u64, image: &[u8]) -> Result<(), GuestMemError> {
        let len = (image.len() as u64).div_ceil(4096) * 4096;
        let frames = (len / 4096) as usize;
        let oom = GuestMemError::OutOfMemory { requested: len };
        let hpa = alloc_contiguous(frames, 1).ok_or(oom)?;
        // SAFETY: the frames were just allocated for this ROM and are identity mapped.
        unsafe {
            core::ptr::write_bytes(hpa as *mut u8, 0xFF, len as usize);
            core::ptr::copy_nonoverlapping(image.as_ptr(), hpa as *mut u8, image.len());
        }
        self.rom.push(Chunk { gpa, hpa, len });
        self.npt.map_range(gpa, hpa, len, USER).map_err(|_| oom)
    }

    /// Whether `gpa` lies in a ROM image.
    pub fn is_rom(&self, gpa: u64) -> bool {
        self.rom.iter().any(|c| gpa >= c.gpa && gpa < c.gpa + c.len)
    }

    /// Maps all of `other`'s RAM into this guest at `base + gpa`: how a
    /// stub domain sees the one guest it serves. The caller keeps `other`
    /// alive for as long as this mapping exists.
    pub fn map_window(&mut self, base: u64, other: &GuestMemory) -> Result<(), GuestMemError> {
        for c in &other.chunks {
            self.npt
                .map_range(base + c.gpa, c.hpa, c.len, WRITABLE | USER)
                .map_err(|_| GuestMemError::OutOfMemory { requested: c.len })?;
        }
        Ok(())
    }

    /// Maps one host page (shared with the hypervisor) at `gpa`.
    pub fn map_shared_page(&mut self, gpa: u64, hpa: u64) -> Result<(), GuestMemError> {
        self.npt.map_4k(gpa, hpa, WRITABLE | USER).map_err(|_| GuestMemError::OutOfMemory { requested: 4096 })
    }

    /// The host-physical pieces of `[gpa, gpa+len)`, which must be RAM: for
    /// devices that DMA straight into guest memory.
    pub fn host_segments(&self, gpa: u64, len: u64, out: &mut Vec<(u64, u64)>) -> Result<(), GuestMemError> {
        self.check(gpa, len)?;
        let mut done = 0u64;
        while done < len {
            let (hpa, n) = self.host_range(gpa + done, len - done).ok_or(GuestMemError::OutOfRange { gpa, len })?;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == hpa => last.1 += n,
                _ => out.push((hpa, n)),
            }
            done += n;
        }
        Ok(())
    }

    /// One past the highest guest-physical RAM address.
    pub fn top(&self) -> u64 {
        self.size
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for c in &self.rom {
            free_contiguous(c.hpa, (c.len / 4096) as usize);
        }
        for c in &self.chunks {
            free_contiguous(c.hpa, (c.len / 4096) as usize);
        }
    }
}

/// A guest's RAM as a device model reaches it (`ferrite_devmodel`'s
/// `GuestMemoryAccess`; every address checked by [`GuestMemory`]).
pub struct GuestRam<'a>(pub &'a GuestMemory);

impl GuestMemoryAccess for GuestRam<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.0.read(gpa, buf).map_err(|_| DmaError::OutOfRange { gpa, len: buf.len() as u64 })
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        self.0.write(gpa, data).map_err(|_| DmaError::OutOfRange { gpa, len: data.len() as u64 })
    }
}
