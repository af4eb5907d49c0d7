//! `ferrite-loader`: turns guest kernel images into a guest memory layout.
//!
//! * [`elf`]: ELF64/ELF32 program headers and the Xen `PHYS32_ENTRY` note
//!   (the PVH entry point).
//! * [`bzimage`]: the Linux bzImage setup header, payload extraction and
//!   compression detection, and the `boot_params` zero page.
//! * [`start_info`]: the PVH `hvm_start_info` (version 1, with memmap).
//! * [`e820`]: the guest physical memory map (RAM, legacy hole, PCI hole,
//!   ACPI ranges).
//! * [`acpi`] and [`aml`]: guest ACPI tables (RSDP, XSDT, RSDT, FADT, FACS,
//!   MADT, DSDT) and the small AML encoder the DSDT is written with;
//!   [`acpi_blob`]: the same tables as relocatable blobs with pointer and
//!   checksum fixups (for QEMU's BIOS linker/loader through fw_cfg).
//! * [`paging`]: the identity page tables and GDT the Linux 64-bit boot
//!   protocol needs, and the initial vCPU register state for both entries.
//! * [`layout`]: [`load_pvh`], which puts all of it together.
//!
//! Everything read from an image is untrusted: every offset and size is
//! bounds-checked with checked arithmetic, and failures are a [`LoadError`]
//! whose `Display` says what was wrong.
//!
//! Guest memory is written only through the [`GuestMemory`] trait. Its
//! contract: guest RAM of `size()` bytes is laid out as
//! [`e820::GuestRamMap::new`] describes (RAM from 0 up to
//! `min(size, PCI_HOLE_START)`, the rest from 4 GiB), and every GPA in those
//! ranges is writable, including the legacy VGA/BIOS hole 0xA0000–0xFFFFF,
//! which is backed like RAM (it is only reported as non-RAM in the e820).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod acpi_blob;
pub mod aml;
mod bytes;
pub mod bzimage;
pub mod e820;
pub mod elf;
mod error;
pub mod layout;
pub mod paging;
pub mod start_info;
pub mod stub;

pub use acpi::PlatformLayout;
pub use error::LoadError;
pub use layout::{load_pvh, BootPlan, EntryState, ImageKind, UsedRange};

/// Guest-physical memory as the loader sees it. See the crate docs for the
/// address map the implementation must back.
pub trait GuestMemory {
    /// Total guest RAM in bytes.
    fn size(&self) -> u64;
    /// Copy `data` to guest-physical address `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), LoadError>;
    /// Set `len` bytes from `gpa` to `byte`.
    fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), LoadError>;
}

/// A `Vec`-backed [`GuestMemory`] whose GPAs are the indices of the vector
/// (so it models guests with all RAM below the PCI hole). Used by the tests
/// and useful to host tools.
#[derive(Clone, Debug)]
pub struct VecMemory {
    bytes: alloc::vec::Vec<u8>,
}

impl VecMemory {
    /// `size` bytes of zeroed guest RAM.
    pub fn new(size: usize) -> Self {
        Self {
            bytes: alloc::vec![0; size],
        }
    }
    /// The whole of guest memory.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    /// `len` bytes at `gpa`, or `None` if out of range.
    pub fn read(&self, gpa: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(gpa).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
    fn range(&self, gpa: u64, len: u64) -> Result<core::ops::Range<usize>, LoadError> {
        let err = LoadError::GuestWrite { gpa, len };
        let start = usize::try_from(gpa).map_err(|_| err.clone())?;
        let len = usize::try_from(len).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or(err.clone())?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for VecMemory {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), LoadError> {
        let r = self.range(gpa, data.len() as u64)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), LoadError> {
        let r = self.range(gpa, len)?;
        self.bytes[r].fill(byte);
        Ok(())
    }
}
