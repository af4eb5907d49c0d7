//! QEMU's firmware configuration device (fw_cfg), x86 I/O-port flavour,
//! with the DMA interface.
//!
//! It hands an HVM guest's firmware what QEMU would: SeaBIOS
//! (`bios-256k.bin`) finds the `"QEMU"` signature and reads RAM size,
//! e820 map, CPU counts, boot order and ACPI tables (through QEMU's BIOS
//! linker/loader script) from it, and QEMU's `linuxboot_dma.bin` option
//! ROM, handed to SeaBIOS as the file `genroms/linuxboot_dma.bin`, boots a
//! Linux bzImage from the kernel/initrd/command-line items.
//!
//! Ports (as QEMU's `fw_cfg_io`):
//!
//! | port | access | meaning |
//! | --- | --- | --- |
//! | 0x510 | 16-bit write | select an item; resets the data offset |
//! | 0x510, 0x511 | 8-bit read | next data byte; 0 past the end |
//! | 0x514 | 32-bit write (big endian) | DMA address, high half (clears the low half) |
//! | 0x518 | 32-bit write (big endian) | DMA address, low half; starts the transfer |
//! | 0x514–0x51B | read | the bytes of `"QEMU CFG"` |
//!
//! A DMA request is a 16-byte big-endian structure in guest memory:
//! `u32 control, u32 length, u64 address`. Control bits: [`dma_ctl`]; with
//! `SELECT` the item in the top 16 bits is selected first. On completion the
//! device writes `control = 0`, or `ERROR` on any failure (the structure or
//! the data range is not guest RAM, a write to a read-only item). Reads past
//! the end of an item fill the rest of the guest buffer with zeros; skips
//! past the end simply complete (QEMU's behaviour).
//!
//! Small items are owned bytes; large ones (kernel, initrd, option ROMs)
//! are [`ItemData::External`]: a handle the stub domain resolves through
//! [`ExternalData`], so the model never holds them (the stub domain has at
//! most 4 MiB of its own memory).
//!
//! Work per request is bounded: one `io_write` moves at most
//! [`FwCfg::dma_budget`] bytes (default [`DEFAULT_DMA_BUDGET`]); a longer
//! transfer stays pending (the guest keeps polling its control word) and
//! the caller continues it with [`FwCfg::continue_dma`] while
//! [`FwCfg::dma_pending`]. Another write to the device while a transfer is
//! pending aborts that transfer with `ERROR`.
//!
//! Items and files are put together with [`FwCfgBuilder`]; Linux direct
//! boot is planned by [`plan_linux_boot`] (as QEMU's `x86_load_linux`); the
//! ACPI linker/loader script is written with [`table_loader`].

use crate::dma::{DmaError, GuestMemoryAccess};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

mod builder;
mod linux;
pub mod table_loader;
#[cfg(test)]
mod tests;

pub use builder::{pc_cmos_memory, FwCfgBuilder, FwCfgError, MAX_FILES};
pub use linux::{
    linux_setup_size, plan_linux_boot, ExternalBlob, LinuxBootConfig, LinuxBootError,
    LinuxBootPlan, LinuxItems, ACPI_DATA_SIZE, CMDLINE_ADDR, KERNEL_ADDR, LINUXBOOT_DMA_ROM,
    MIN_PROTOCOL, SETUP_ADDR,
};

/// Selector port (16-bit writes).
pub const PORT_SELECTOR: u16 = 0x510;
/// Data port (8-bit reads).
pub const PORT_DATA: u16 = 0x511;
/// DMA address, high 32 bits (big endian).
pub const PORT_DMA_HIGH: u16 = 0x514;
/// DMA address, low 32 bits (big endian); writing it starts the transfer.
pub const PORT_DMA_LOW: u16 = 0x518;
/// What reads of 0x514–0x51B return, byte by byte.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Bits of the `ID` item.
pub const ID_TRADITIONAL: u32 = 1 << 0;
pub const ID_DMA: u32 = 1 << 1;

/// DMA control bits.
pub mod dma_ctl {
    pub const ERROR: u32 = 0x01;
    pub const READ: u32 = 0x02;
    pub const SKIP: u32 = 0x04;
    pub const SELECT: u32 = 0x08;
    pub const WRITE: u32 = 0x10;
}

/// Item selectors (`include/standard-headers/linux/qemu_fw_cfg.h`).
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MACHINE_ID: u16 = 0x06;
    pub const KERNEL_ADDR: u16 = 0x07;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const KERNEL_CMDLINE: u16 = 0x09;
    pub const INITRD_ADDR: u16 = 0x0a;
    pub const INITRD_SIZE: u16 = 0x0b;
    pub const BOOT_DEVICE: u16 = 0x0c;
    pub const NUMA: u16 = 0x0d;
    pub const BOOT_MENU: u16 = 0x0e;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const KERNEL_ENTRY: u16 = 0x10;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_ADDR: u16 = 0x13;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_ADDR: u16 = 0x16;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
    pub const FILE_DIR: u16 = 0x19;
    /// Selector of the first file; file `i` (in name order) is `FILE_FIRST + i`.
    pub const FILE_FIRST: u16 = 0x20;
    /// Set in a selector to ask for writing (ignored for lookup).
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// Architecture-specific items.
    pub const ARCH_LOCAL: u16 = 0x8000;
    pub const ENTRY_MASK: u16 = !(WRITE_CHANNEL | ARCH_LOCAL);
    /// x86: `-acpitable` tables (u16 count + entries); SeaBIOS reads it.
    pub const ACPI_TABLES: u16 = ARCH_LOCAL;
    pub const SMBIOS_ENTRIES: u16 = ARCH_LOCAL + 1;
    /// x86: u32, 1 when ISA IRQ0 is wired to I/O APIC pin 2.
    pub const IRQ0_OVERRIDE: u16 = ARCH_LOCAL + 2;
    /// x86: legacy reservations table (u32 count, 20-byte entries); SeaBIOS
    /// uses it only when `etc/e820` is absent.
    pub const E820_TABLE: u16 = ARCH_LOCAL + 3;
    pub const HPET: u16 = ARCH_LOCAL + 4;
}

/// Length of a file name field in the directory (NUL included).
pub const FILE_NAME_SIZE: usize = 56;
/// Size of one directory entry.
pub const DIR_ENTRY_SIZE: usize = 64;
/// Default bytes moved per DMA call before the transfer is left pending.
pub const DEFAULT_DMA_BUDGET: u64 = 16 << 20;
/// Largest single [`ExternalData::copy_to_guest`] call the device makes.
pub const EXTERNAL_CHUNK: u64 = 4 << 20;
const ZERO_CHUNK: usize = 4096;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
const READ_AHEAD: usize = 512;

/// The contents of an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemData {
    /// Held by the model (small items).
    Bytes(Vec<u8>),
    /// `len` bytes from `offset` of the external object `handle`.
    External { handle: u32, offset: u64, len: u64 },
}

impl ItemData {
    pub fn len(&self) -> u64 {
        match self {
            ItemData::Bytes(b) => b.len() as u64,
            ItemData::External { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an external copy failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalError {
    /// The external object could not be read (unknown handle, past its end,
    /// backend error).
    Source,
    /// The destination is not guest RAM.
    Guest(DmaError),
}

impl fmt::Display for ExternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExternalError::Source => f.write_str("external data could not be read"),
            ExternalError::Guest(e) => e.fmt(f),
        }
    }
}

/// Large items the model does not hold (the kernel, the initrd, option
/// ROMs), identified by a handle the stub domain chose.
pub trait ExternalData {
    /// Read `buf.len()` bytes at `offset` of `handle` (port reads).
    fn read(&mut self, handle: u32, offset: u64, buf: &mut [u8]) -> Result<(), ExternalError>;

    /// Copy `len` bytes at `offset` of `handle` to guest-physical `gpa`.
    /// The stub domain implements this with a hypercall so the hypervisor
    /// copies straight from the boot module into guest RAM, checking the
    /// guest range itself. The default bounces through a small buffer and
    /// writes through `mem`.
    fn copy_to_guest(
        &mut self,
        handle: u32,
        offset: u64,
        gpa: u64,
        len: u64,
        mem: &mut dyn GuestMemoryAccess,
    ) -> Result<(), ExternalError> {
        let mut buf = [0u8; 512];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let src = offset.checked_add(done).ok_or(ExternalError::Source)?;
            self.read(handle, src, &mut buf[..n])?;
            mem.write(gpa + done, &buf[..n])
                .map_err(ExternalError::Guest)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// An [`ExternalData`] with nothing in it (every access fails).
pub struct NoExternalData;

impl ExternalData for NoExternalData {
    fn read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), ExternalError> {
        Err(ExternalError::Source)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DmaOp {
    Read,
    Write,
    Skip,
}

/// A transfer in progress.
#[derive(Clone, Copy, Debug)]
struct DmaRun {
    /// Where the request structure (and its control word) is.
    ctl_gpa: u64,
    op: DmaOp,
    addr: u64,
    remaining: u64,
    error: bool,
}

/// Read-ahead for port reads of external items.
#[derive(Default)]
struct ReadAhead {
    handle: u32,
    start: u64,
    buf: Vec<u8>,
}

impl ReadAhead {
    fn byte(&mut self, ext: &mut dyn ExternalData, handle: u32, pos: u64, left: u64) -> u8 {
        if self.handle == handle && pos >= self.start && pos - self.start < self.buf.len() as u64 {
            return self.buf[(pos - self.start) as usize];
        }
        let n = left.min(READ_AHEAD as u64) as usize;
        self.buf.clear();
        self.buf.resize(n, 0);
        if n == 0 || ext.read(handle, pos, &mut self.buf).is_err() {
            self.buf.clear();
            return 0;
        }
        self.handle = handle;
        self.start = pos;
        self.buf[0]
    }
}

/// The device. Built by [`FwCfgBuilder::build`].
pub struct FwCfg {
    /// Keyed by selector without the write-channel bit.
    items: BTreeMap<u16, ItemData>,
    /// File names in directory order; file `i` has selector `FILE_FIRST + i`.
    files: Vec<String>,
    dma_enabled: bool,
    selector: u16,
    offset: u64,
    dma_addr: u64,
    dma: Option<DmaRun>,
    dma_budget: u64,
    read_ahead: ReadAhead,
}

fn lookup_key(selector: u16) -> u16 {
    selector & !key::WRITE_CHANNEL
}

impl FwCfg {
    pub(crate) fn from_parts(
        items: BTreeMap<u16, ItemData>,
        files: Vec<String>,
        dma_enabled: bool,
    ) -> Self {
        Self {
            items,
            files,
            dma_enabled,
            selector: key::SIGNATURE,
            offset: 0,
            dma_addr: 0,
            dma: None,
            dma_budget: DEFAULT_DMA_BUDGET,
            read_ahead: ReadAhead::default(),
        }
    }

    /// Back to the power-on state (signature selected, no DMA pending);
    /// for guest resets.
    pub fn reset(&mut self) {
        self.selector = key::SIGNATURE;
        self.offset = 0;
        self.dma_addr = 0;
        self.dma = None;
    }

    /// Selector of the file `name`, if present.
    pub fn selector_of(&self, name: &str) -> Option<u16> {
        self.files
            .iter()
            .position(|f| f == name)
            .map(|i| key::FILE_FIRST + i as u16)
    }

    /// File names in directory order.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|s| s.as_str())
    }

    /// The item behind `selector`.
    pub fn item(&self, selector: u16) -> Option<&ItemData> {
        self.items.get(&lookup_key(selector))
    }

    /// The contents of file `name`.
    pub fn file(&self, name: &str) -> Option<&ItemData> {
        self.item(self.selector_of(name)?)
    }

    /// Is the DMA interface offered (ID bit 1, ports 0x514–0x51B)?
    pub fn dma_enabled(&self) -> bool {
        self.dma_enabled
    }

    /// Bytes one call moves at most before leaving a transfer pending.
    pub fn dma_budget(&self) -> u64 {
        self.dma_budget
    }

    /// Set the per-call DMA budget (at least 1 byte).
    pub fn set_dma_budget(&mut self, bytes: u64) {
        self.dma_budget = bytes.max(1);
    }

    /// Is a DMA transfer started but not finished? Then the caller should
    /// call [`FwCfg::continue_dma`] (the guest polls its control word).
    pub fn dma_pending(&self) -> bool {
        self.dma.is_some()
    }

    /// Move up to the budget of a pending transfer; completes it (control
    /// word written) when done. Does nothing when none is pending.
    pub fn continue_dma(&mut self, mem: &mut dyn GuestMemoryAccess, ext: &mut dyn ExternalData) {
        self.run_dma(mem, ext);
    }

    /// A port read. `None` when `port` is not one of the device's.
    pub fn io_read(&mut self, port: u16, size: u8, ext: &mut dyn ExternalData) -> Option<u32> {
        match port {
            PORT_SELECTOR | PORT_DATA => Some(if size == 1 {
                u32::from(self.data_byte(ext))
            } else {
                // QEMU accepts only byte reads here; others read as 0.
                0
            }),
            0x514..=0x51b if self.dma_enabled => {
                let at = usize::from(port - PORT_DMA_HIGH);
                let n = usize::from(size);
                if !matches!(n, 1 | 2 | 4) || at + n > DMA_SIGNATURE.len() {
                    return Some(0);
                }
                let mut v = [0u8; 4];
                v[..n].copy_from_slice(&DMA_SIGNATURE[at..at + n]);
                Some(u32::from_le_bytes(v))
            }
            _ => None,
        }
    }

    /// A port write. Returns whether `port` is one of the device's.
    /// Writing the low DMA address starts a transfer, which reads and
    /// writes guest memory through `mem` and external items through `ext`.
    pub fn io_write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        mem: &mut dyn GuestMemoryAccess,
        ext: &mut dyn ExternalData,
    ) -> bool {
        let ours = matches!(port, PORT_SELECTOR | PORT_DATA)
            || (self.dma_enabled && (0x514..=0x51b).contains(&port));
        if !ours {
            return false;
        }
        if self.dma.is_some() {
            self.abort_dma(mem);
        }
        match (port, size) {
            (PORT_SELECTOR, 2) => self.select(value as u16),
            // Data writes were removed from QEMU in 2.4: ignored, as are
            // other sizes.
            (PORT_DMA_HIGH, 4) => self.dma_addr = u64::from(value.swap_bytes()) << 32,
            (PORT_DMA_LOW, 4) => {
                let gpa = self.dma_addr | u64::from(value.swap_bytes());
                self.dma_addr = 0;
                self.start_dma(gpa, mem, ext);
            }
            _ => {}
        }
        true
    }

    fn select(&mut self, selector: u16) {
        self.selector = selector;
        self.offset = 0;
    }

    fn data_byte(&mut self, ext: &mut dyn ExternalData) -> u8 {
        let Some(item) = self.items.get(&lookup_key(self.selector)) else {
            return 0;
        };
        let off = self.offset;
        if off >= item.len() {
            return 0;
        }
        let b = match item {
            ItemData::Bytes(v) => v[off as usize],
            ItemData::External {
                handle,
                offset,
                len,
            } => self
                .read_ahead
                .byte(ext, *handle, offset.saturating_add(off), len - off),
        };
        self.offset = off + 1;
        b
    }

    fn finish(mem: &mut dyn GuestMemoryAccess, ctl_gpa: u64, error: bool) {
        let v = if error { dma_ctl::ERROR } else { 0 };
        // Nothing more can be done if the control word is not writable.
        let _ = mem.write(ctl_gpa, &v.to_be_bytes());
    }

    fn abort_dma(&mut self, mem: &mut dyn GuestMemoryAccess) {
        if let Some(d) = self.dma.take() {
            Self::finish(mem, d.ctl_gpa, true);
        }
    }

    fn start_dma(&mut self, gpa: u64, mem: &mut dyn GuestMemoryAccess, ext: &mut dyn ExternalData) {
        let mut raw = [0u8; 16];
        if gpa.checked_add(16).is_none() || mem.read(gpa, &mut raw).is_err() {
            Self::finish(mem, gpa, true);
            return;
        }
        let be32 = |o: usize| u32::from_be_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let control = be32(0);
        let mut length = u64::from(be32(4));
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[8..16]);
        let addr = u64::from_be_bytes(a);
        if control & dma_ctl::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let op = if control & dma_ctl::READ != 0 {
            DmaOp::Read
        } else if control & dma_ctl::WRITE != 0 {
            DmaOp::Write
        } else {
            if control & dma_ctl::SKIP == 0 {
                length = 0;
            }
            DmaOp::Skip
        };
        self.dma = Some(DmaRun {
            ctl_gpa: gpa,
            op,
            addr,
            remaining: length,
            error: false,
        });
        self.run_dma(mem, ext);
    }

    fn run_dma(&mut self, mem: &mut dyn GuestMemoryAccess, ext: &mut dyn ExternalData) {
        let Some(mut d) = self.dma.take() else {
            return;
        };
        let mut budget = self.dma_budget;
        while d.remaining > 0 && !d.error && budget > 0 {
            let item = self.items.get(&lookup_key(self.selector));
            let item_len = item.map_or(0, |i| i.len());
            let len;
            match item {
                Some(item) if self.offset < item_len => {
                    let mut n = d.remaining.min(item_len - self.offset);
                    match d.op {
                        DmaOp::Read => {
                            n = n.min(budget);
                            if d.addr.checked_add(n).is_none() {
                                d.error = true;
                            } else {
                                match item {
                                    ItemData::Bytes(v) => {
                                        let s = self.offset as usize;
                                        d.error = mem.write(d.addr, &v[s..s + n as usize]).is_err();
                                    }
                                    ItemData::External { handle, offset, .. } => {
                                        n = n.min(EXTERNAL_CHUNK);
                                        d.error = match offset.checked_add(self.offset) {
                                            Some(src) => ext
                                                .copy_to_guest(*handle, src, d.addr, n, mem)
                                                .is_err(),
                                            None => true,
                                        };
                                    }
                                }
                            }
                            budget -= n;
                        }
                        // Every item is read-only.
                        DmaOp::Write => d.error = true,
                        DmaOp::Skip => {}
                    }
                    self.offset += n;
                    len = n;
                }
                _ => {
                    // No item, or past its end.
                    let mut n = d.remaining;
                    match d.op {
                        DmaOp::Read => {
                            n = n.min(budget);
                            let mut done = 0u64;
                            while done < n && !d.error {
                                let k = (n - done).min(ZERO_CHUNK as u64);
                                d.error = match d.addr.checked_add(done) {
                                    Some(at) if at.checked_add(k).is_some() => {
                                        mem.write(at, &ZEROS[..k as usize]).is_err()
                                    }
                                    _ => true,
                                };
                                done += k;
                            }
                            budget -= n;
                        }
                        DmaOp::Write => d.error = true,
                        DmaOp::Skip => {}
                    }
                    len = n;
                }
            }
            d.addr = d.addr.wrapping_add(len);
            d.remaining -= len;
        }
        if d.remaining == 0 || d.error {
            Self::finish(mem, d.ctl_gpa, d.error);
        } else {
            self.dma = Some(d);
        }
    }
}
