//! Boot information from Multiboot1, Multiboot2 or PVH, in one shape.
//!
//! The structures are read through [`PhysMemory`] (the kernel reads its
//! identity map; tests read a byte vector), so every address and size in them
//! is treated as untrusted: counts are capped, sizes checked, additions
//! checked for overflow, and strings read with a length cap.
//!
//! Layouts:
//! * Multiboot1: the Multiboot Specification 0.6.96, section 3.3
//!   ("Boot information format").
//! * Multiboot2: the Multiboot2 Specification 2.0, section 3.6.
//! * PVH: Xen's `xen/include/public/arch-x86/hvm/start_info.h`
//!   (`struct hvm_start_info`, `hvm_modlist_entry`, `hvm_memmap_table_entry`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// EAX value from a Multiboot1 loader.
pub const MULTIBOOT1_MAGIC: u32 = 0x2BAD_B002;
/// EAX value from a Multiboot2 loader.
pub const MULTIBOOT2_MAGIC: u32 = 0x36D7_6289;
/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`).
pub const PVH_MAGIC: u32 = 0x336E_C578;

/// At most this many boot modules are accepted.
pub const MAX_MODULES: usize = 64;
/// At most this many memory map entries are accepted.
pub const MAX_MEMORY_MAP_ENTRIES: usize = 512;
/// Command lines (the kernel's and the modules') are cut at this length.
pub const MAX_CMDLINE_LEN: usize = 4096;
/// The boot loader name is cut at this length.
pub const MAX_LOADER_NAME_LEN: usize = 256;
/// Largest Multiboot2 information block accepted (`total_size`).
pub const MAX_MULTIBOOT2_INFO_SIZE: u32 = 1 << 20;

/// Read access to physical memory during boot (the kernel implements it
/// over its identity map; tests over a byte vector).
pub trait PhysMemory {
    /// Fills `buf` with the bytes at physical address `paddr`, or fails
    /// (typically [`BootError::OutOfRange`]) if any of them is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError>;
}

/// The protocol the hypervisor was started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pvh,
    Multiboot1,
    Multiboot2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pvh => "PVH",
            Protocol::Multiboot1 => "Multiboot1",
            Protocol::Multiboot2 => "Multiboot2",
        })
    }
}

/// Kind of a physical memory range (E820 types; PVH uses the same values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Type 1: RAM free for use.
    Usable,
    /// Type 2.
    Reserved,
    /// Type 3: ACPI tables; RAM once they have been read.
    AcpiReclaimable,
    /// Type 4: ACPI non-volatile storage; must be preserved.
    AcpiNvs,
    /// Type 5: defective RAM.
    Bad,
    /// Any other type (e.g. PVH 6 = disabled, 7 = persistent memory).
    Other(u32),
}

impl MemoryKind {
    /// The kind for an E820/Multiboot/PVH type number.
    pub fn from_e820(t: u32) -> MemoryKind {
        match t {
            1 => MemoryKind::Usable,
            2 => MemoryKind::Reserved,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Bad,
            other => MemoryKind::Other(other),
        }
    }

    /// Which kind wins where ranges overlap: anything beats usable RAM.
    fn precedence(self) -> u8 {
        match self {
            MemoryKind::Usable => 0,
            MemoryKind::AcpiReclaimable => 1,
            MemoryKind::Other(_) => 2,
            MemoryKind::Reserved => 3,
            MemoryKind::AcpiNvs => 4,
            MemoryKind::Bad => 5,
        }
    }
}

/// One physical memory range, `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// Exclusive end (parsing guarantees `start + len` does not overflow).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A file loaded by the boot loader, `[start, end)` (end exclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootModule {
    pub start: u64,
    pub end: u64,
    /// The module's string as the loader gave it (not normalized).
    pub cmdline: String,
}

/// Everything Ferrite needs from its boot loader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub loader_name: Option<String>,
    /// The hypervisor's command line, without the image path multiboot
    /// loaders put in front (see [`normalize_multiboot_cmdline`]).
    pub cmdline: String,
    /// The memory map as the loader gave it (see
    /// [`BootInfo::sanitized_memory_map`]).
    pub memory_map: Vec<MemoryRegion>,
    pub modules: Vec<BootModule>,
    /// Physical address of the ACPI RSDP, when the loader gave one. For
    /// Multiboot2 this is the copy inside the information block.
    pub rsdp_paddr: Option<u64>,
}

/// Why the boot information could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// `[paddr, paddr + len)` is not readable memory.
    OutOfRange { paddr: u64, len: u64 },
    /// EAX held no known magic value and no protocol hint was given.
    UnknownMagic(u32),
    /// The PVH start info does not begin with [`PVH_MAGIC`].
    BadPvhMagic(u32),
    /// The Multiboot2 information block is not 8-byte aligned.
    Misaligned { paddr: u64 },
    /// The Multiboot2 `total_size` is too small or too large.
    BadTotalSize(u32),
    /// A Multiboot2 tag is malformed.
    BadTag { offset: u32, tag_type: u32, size: u32, reason: &'static str },
    /// The Multiboot2 tag list ends without an end tag.
    MissingEndTag,
    TooManyModules { count: u64 },
    TooManyMemoryMapEntries { count: u64 },
    /// A memory map entry has a size the parser cannot use.
    BadMemoryMapEntrySize(u32),
    /// A memory map entry or a module whose end does not fit in 64 bits, or
    /// a module that ends before it starts.
    BadRange { what: &'static str, start: u64, len: u64 },
    /// An address computation overflowed (a structure at the top of memory).
    AddressOverflow,
    /// The loader gave neither a memory map nor the basic memory sizes.
    NoMemoryMap,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::OutOfRange { paddr, len } => {
                write!(f, "{} bytes at physical address {:#x} are not readable", len, paddr)
            }
            BootError::UnknownMagic(m) => write!(
                f,
                "unknown boot loader magic {:#010x} (expected multiboot1 {:#010x} or multiboot2 {:#010x})",
                m, MULTIBOOT1_MAGIC, MULTIBOOT2_MAGIC
            ),
            BootError::BadPvhMagic(m) => {
                write!(f, "PVH start info has magic {:#010x}, expected {:#010x}", m, PVH_MAGIC)
            }
            BootError::Misaligned { paddr } => {
                write!(f, "multiboot2 information at {:#x} is not 8-byte aligned", paddr)
            }
            BootError::BadTotalSize(s) => write!(
                f,
                "multiboot2 information total_size {} is out of bounds (16..={})",
                s, MAX_MULTIBOOT2_INFO_SIZE
            ),
            BootError::BadTag { offset, tag_type, size, reason } => write!(
                f,
                "multiboot2 tag type {} of size {} at offset {}: {}",
                tag_type, size, offset, reason
            ),
            BootError::MissingEndTag => f.write_str("multiboot2 information has no end tag"),
            BootError::TooManyModules { count } => {
                write!(f, "{} boot modules (at most {} are supported)", count, MAX_MODULES)
            }
            BootError::TooManyMemoryMapEntries { count } => write!(
                f,
                "{} memory map entries (at most {} are supported)",
                count, MAX_MEMORY_MAP_ENTRIES
            ),
            BootError::BadMemoryMapEntrySize(s) => write!(f, "memory map entry size {} is invalid", s),
            BootError::BadRange { what, start, len } => {
                write!(f, "{} at {:#x} with length {:#x} does not fit in the address space", what, start, len)
            }
            BootError::AddressOverflow => f.write_str("a boot structure extends past the end of the address space"),
            BootError::NoMemoryMap => f.write_str("the boot loader gave no memory map"),
        }
    }
}

/// Parses the boot information.
///
/// `magic` and `info_paddr` are EAX and EBX at entry. The PVH entry point
/// passes `Some(Protocol::Pvh)` (PVH has no EAX magic; `info_paddr` is the
/// `hvm_start_info` address); otherwise the protocol follows from `magic`.
pub fn parse(
    magic: u32,
    info_paddr: u64,
    mem: &dyn PhysMemory,
    protocol_hint: Option<Protocol>,
) -> Result<BootInfo, BootError> {
    let protocol = match (protocol_hint, magic) {
        (Some(p), _) => p,
        (None, MULTIBOOT1_MAGIC) => Protocol::Multiboot1,
        (None, MULTIBOOT2_MAGIC) => Protocol::Multiboot2,
        (None, m) => return Err(BootError::UnknownMagic(m)),
    };
    let mut info = match protocol {
        Protocol::Pvh => parse_pvh(info_paddr, mem)?,
        Protocol::Multiboot1 => parse_multiboot1(info_paddr, mem)?,
        Protocol::Multiboot2 => parse_multiboot2(info_paddr, mem)?,
    };
    if info.memory_map.is_empty() {
        return Err(BootError::NoMemoryMap);
    }
    if protocol != Protocol::Pvh {
        info.cmdline = normalize_multiboot_cmdline(&info.cmdline, info.loader_name.as_deref());
    }
    Ok(info)
}

/// Removes the image path multiboot loaders put in front of the kernel's
/// command line.
///
/// GRUB Legacy and QEMU's `-kernel` multiboot loader pass
/// `"<image path> <arguments>"` as the kernel command line, so a bare
/// `parse()` of it would see the path as an (unknown) option. GRUB 2 skips
/// the file name (its `multiboot`/`multiboot2` commands pass only the
/// arguments), so, as Xen does (`cmdline_cook`), the first word is kept when
/// the loader name says GRUB 2. As an extra guard, a first word containing
/// `=` is an option, not a path, and is kept. PVH is not touched: its command
/// line (`hvm_start_info.cmdline_paddr`) holds only arguments.
/// Module strings are left alone: they are the modules' own business (a dom0
/// kernel's string is its path followed by its command line).
pub fn normalize_multiboot_cmdline(cmdline: &str, loader_name: Option<&str>) -> String {
    let trimmed = cmdline.trim_start_matches([' ', '\t']);
    let is_grub2 = loader_name.is_some_and(|n| n.starts_with("GRUB ") && !n.starts_with("GRUB 0."));
    let first_end = trimmed.find([' ', '\t']).unwrap_or(trimmed.len());
    let first = &trimmed[..first_end];
    if is_grub2 || first.contains('=') {
        return String::from(trimmed);
    }
    String::from(trimmed[first_end..].trim_start_matches([' ', '\t']))
}

impl BootInfo {
    /// The memory map sorted by address, with overlaps resolved in favour of
    /// the more restrictive kind (anything beats usable RAM; see
    /// `MemoryKind::precedence`), empty ranges dropped and adjacent ranges of
    /// the same kind merged. Gaps stay gaps (not memory).
    pub fn sanitized_memory_map(&self) -> Vec<MemoryRegion> {
        sanitize_memory_map(&self.memory_map)
    }
}

/// See [`BootInfo::sanitized_memory_map`].
pub fn sanitize_memory_map(map: &[MemoryRegion]) -> Vec<MemoryRegion> {
    let mut points: Vec<u64> = Vec::with_capacity(map.len() * 2);
    for r in map.iter().filter(|r| r.len > 0) {
        points.push(r.start);
        points.push(r.end());
    }
    points.sort_unstable();
    points.dedup();
    let mut out: Vec<MemoryRegion> = Vec::new();
    for w in points.windows(2) {
        let (s, e) = (w[0], w[1]);
        let kind = map
            .iter()
            .filter(|r| r.len > 0 && r.start <= s && e <= r.end())
            .map(|r| r.kind)
            .max_by_key(|k| k.precedence());
        let Some(kind) = kind else { continue };
        match out.last_mut() {
            Some(last) if last.kind == kind && last.end() == s => last.len += e - s,
            _ => out.push(MemoryRegion { start: s, len: e - s, kind }),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Reading helpers.

fn addr(base: u64, off: u64) -> Result<u64, BootError> {
    base.checked_add(off).ok_or(BootError::AddressOverflow)
}

fn read_bytes<const N: usize>(mem: &dyn PhysMemory, paddr: u64) -> Result<[u8; N], BootError> {
    paddr.checked_add(N as u64).ok_or(BootError::AddressOverflow)?;
    let mut b = [0u8; N];
    mem.read(paddr, &mut b)?;
    Ok(b)
}

fn read_u32(mem: &dyn PhysMemory, paddr: u64) -> Result<u32, BootError> {
    Ok(u32::from_le_bytes(read_bytes::<4>(mem, paddr)?))
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Reads a NUL-terminated string of at most `cap` bytes (cut there if no NUL
/// comes first), lossily decoded as UTF-8. Address 0 means "no string".
/// Reads in small pieces that never cross a 4 KiB boundary, so a short
/// string near the end of readable memory is still read.
fn read_cstr(mem: &dyn PhysMemory, paddr: u64, cap: usize) -> Result<String, BootError> {
    if paddr == 0 {
        return Ok(String::new());
    }
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64];
    let mut p = paddr;
    while out.len() < cap {
        let to_page_end = 4096 - (p & 4095);
        let n = (chunk.len() as u64).min(to_page_end).min((cap - out.len()) as u64) as usize;
        p.checked_add(n as u64).ok_or(BootError::AddressOverflow)?;
        mem.read(p, &mut chunk[..n])?;
        if let Some(nul) = chunk[..n].iter().position(|&c| c == 0) {
            out.extend_from_slice(&chunk[..nul]);
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        p += n as u64;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads a string stored inside a structure of known extent: at most
/// `max_len` bytes (and the cap), stopping at the first NUL.
fn read_bounded_str(mem: &dyn PhysMemory, paddr: u64, max_len: u64, cap: usize) -> Result<String, BootError> {
    let n = (max_len.min(cap as u64)) as usize;
    let mut buf = alloc::vec![0u8; n];
    paddr.checked_add(n as u64).ok_or(BootError::AddressOverflow)?;
    mem.read(paddr, &mut buf)?;
    let end = buf.iter().position(|&c| c == 0).unwrap_or(n);
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn region(start: u64, len: u64, kind: u32) -> Result<Option<MemoryRegion>, BootError> {
    if start.checked_add(len).is_none() {
        return Err(BootError::BadRange { what: "memory map entry", start, len });
    }
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(MemoryRegion { start, len, kind: MemoryKind::from_e820(kind) }))
}

fn module(start: u64, end: u64, cmdline: String) -> Result<BootModule, BootError> {
    if end < start {
        return Err(BootError::BadRange { what: "boot module", start, len: end.wrapping_sub(start) });
    }
    Ok(BootModule { start, end, cmdline })
}

/// The two ranges multiboot's `mem_lower`/`mem_upper` (KiB) describe.
fn synthesize_map(mem_lower_kib: u32, mem_upper_kib: u32) -> Vec<MemoryRegion> {
    let mut map = Vec::new();
    if mem_lower_kib > 0 {
        // Conventional memory ends at 640 KiB at most.
        let len = (u64::from(mem_lower_kib) * 1024).min(0xA_0000);
        map.push(MemoryRegion { start: 0, len, kind: MemoryKind::Usable });
    }
    if mem_upper_kib > 0 {
        map.push(MemoryRegion { start: 0x10_0000, len: u64::from(mem_upper_kib) * 1024, kind: MemoryKind::Usable });
    }
    map
}

// ---------------------------------------------------------------------------
// Multiboot1.

const MB1_FLAG_MEM: u32 = 1 << 0;
const MB1_FLAG_CMDLINE: u32 = 1 << 2;
const MB1_FLAG_MODS: u32 = 1 << 3;
const MB1_FLAG_MMAP: u32 = 1 << 6;
const MB1_FLAG_LOADER_NAME: u32 = 1 << 9;
/// Bytes of the info structure up to and including `boot_loader_name`.
const MB1_INFO_LEN: usize = 68;
/// base_addr u64, length u64, type u32 (after the `size` field).
const MB1_MMAP_ENTRY_MIN: u32 = 20;

fn parse_multiboot1(info: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    let b = read_bytes::<MB1_INFO_LEN>(mem, info)?;
    let flags = le32(&b, 0);
    let (mem_lower, mem_upper) = (le32(&b, 4), le32(&b, 8));

    let cmdline = if flags & MB1_FLAG_CMDLINE != 0 {
        read_cstr(mem, u64::from(le32(&b, 16)), MAX_CMDLINE_LEN)?
    } else {
        String::new()
    };

    let mut modules = Vec::new();
    if flags & MB1_FLAG_MODS != 0 {
        let (count, base) = (le32(&b, 20), u64::from(le32(&b, 24)));
        if count as usize > MAX_MODULES {
            return Err(BootError::TooManyModules { count: u64::from(count) });
        }
        for i in 0..u64::from(count) {
            let m = read_bytes::<16>(mem, addr(base, i * 16)?)?;
            let s = read_cstr(mem, u64::from(le32(&m, 8)), MAX_CMDLINE_LEN)?;
            modules.push(module(u64::from(le32(&m, 0)), u64::from(le32(&m, 4)), s)?);
        }
    }

    let mut memory_map = Vec::new();
    if flags & MB1_FLAG_MMAP != 0 {
        let (length, base) = (u64::from(le32(&b, 44)), u64::from(le32(&b, 48)));
        let mut off = 0u64;
        while off < length {
            if memory_map.len() >= MAX_MEMORY_MAP_ENTRIES {
                return Err(BootError::TooManyMemoryMapEntries { count: memory_map.len() as u64 + 1 });
            }
            // The `size` field precedes each entry and does not count itself.
            let size = read_u32(mem, addr(base, off)?)?;
            if size < MB1_MMAP_ENTRY_MIN || off + 4 + u64::from(size) > length {
                return Err(BootError::BadMemoryMapEntrySize(size));
            }
            let e = read_bytes::<20>(mem, addr(base, off + 4)?)?;
            if let Some(r) = region(le64(&e, 0), le64(&e, 8), le32(&e, 16))? {
                memory_map.push(r);
            }
            off += 4 + u64::from(size);
        }
    } else if flags & MB1_FLAG_MEM != 0 {
        memory_map = synthesize_map(mem_lower, mem_upper);
    }

    let loader_name = if flags & MB1_FLAG_LOADER_NAME != 0 {
        Some(read_cstr(mem, u64::from(le32(&b, 64)), MAX_LOADER_NAME_LEN)?)
    } else {
        None
    };

    Ok(BootInfo { protocol: Protocol::Multiboot1, loader_name, cmdline, memory_map, modules, rsdp_paddr: None })
}

// ---------------------------------------------------------------------------
// Multiboot2.

const MB2_TAG_END: u32 = 0;
const MB2_TAG_CMDLINE: u32 = 1;
const MB2_TAG_LOADER_NAME: u32 = 2;
const MB2_TAG_MODULE: u32 = 3;
const MB2_TAG_BASIC_MEMINFO: u32 = 4;
const MB2_TAG_MMAP: u32 = 6;
const MB2_TAG_ACPI_OLD: u32 = 14;
const MB2_TAG_ACPI_NEW: u32 = 15;
/// RSDP revision 0 is 20 bytes, revision 2 (XSDT) 36 bytes.
const RSDP_V1_LEN: u32 = 20;
const RSDP_V2_LEN: u32 = 36;

fn parse_multiboot2(info: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    if info & 7 != 0 {
        return Err(BootError::Misaligned { paddr: info });
    }
    let total = read_u32(mem, info)?;
    if !(16..=MAX_MULTIBOOT2_INFO_SIZE).contains(&total) {
        return Err(BootError::BadTotalSize(total));
    }
    addr(info, u64::from(total))?;

    let mut cmdline: Option<String> = None;
    let mut loader_name: Option<String> = None;
    let mut modules = Vec::new();
    let mut memory_map = Vec::new();
    let mut have_mmap = false;
    let mut meminfo: Option<(u32, u32)> = None;
    let (mut rsdp_old, mut rsdp_new) = (None, None);

    let mut off: u32 = 8;
    loop {
        if off.checked_add(8).is_none_or(|e| e > total) {
            return Err(BootError::MissingEndTag);
        }
        let tag = info + u64::from(off);
        let h = read_bytes::<8>(mem, tag)?;
        let (tag_type, size) = (le32(&h, 0), le32(&h, 4));
        let bad = |reason| BootError::BadTag { offset: off, tag_type, size, reason };
        if size < 8 {
            return Err(bad("size is smaller than the tag header"));
        }
        if u64::from(off) + u64::from(size) > u64::from(total) {
            return Err(bad("extends past total_size"));
        }
        let need = |min: u32| if size < min { Err(bad("too small for its type")) } else { Ok(()) };
        match tag_type {
            MB2_TAG_END => break,
            MB2_TAG_CMDLINE if cmdline.is_none() => {
                cmdline = Some(read_bounded_str(mem, tag + 8, u64::from(size - 8), MAX_CMDLINE_LEN)?);
            }
            MB2_TAG_LOADER_NAME if loader_name.is_none() => {
                loader_name = Some(read_bounded_str(mem, tag + 8, u64::from(size - 8), MAX_LOADER_NAME_LEN)?);
            }
            MB2_TAG_MODULE => {
                need(16)?;
                if modules.len() >= MAX_MODULES {
                    return Err(BootError::TooManyModules { count: modules.len() as u64 + 1 });
                }
                let m = read_bytes::<8>(mem, tag + 8)?;
                let s = read_bounded_str(mem, tag + 16, u64::from(size - 16), MAX_CMDLINE_LEN)?;
                modules.push(module(u64::from(le32(&m, 0)), u64::from(le32(&m, 4)), s)?);
            }
            MB2_TAG_BASIC_MEMINFO => {
                need(16)?;
                let m = read_bytes::<8>(mem, tag + 8)?;
                meminfo = Some((le32(&m, 0), le32(&m, 4)));
            }
            MB2_TAG_MMAP if !have_mmap => {
                need(16)?;
                have_mmap = true;
                let m = read_bytes::<8>(mem, tag + 8)?;
                let entry_size = le32(&m, 0);
                if entry_size < 24 {
                    return Err(BootError::BadMemoryMapEntrySize(entry_size));
                }
                let count = (size - 16) / entry_size;
                if count as usize > MAX_MEMORY_MAP_ENTRIES {
                    return Err(BootError::TooManyMemoryMapEntries { count: u64::from(count) });
                }
                for i in 0..u64::from(count) {
                    let e = read_bytes::<20>(mem, tag + 16 + i * u64::from(entry_size))?;
                    if let Some(r) = region(le64(&e, 0), le64(&e, 8), le32(&e, 16))? {
                        memory_map.push(r);
                    }
                }
            }
            MB2_TAG_ACPI_OLD => {
                need(8 + RSDP_V1_LEN)?;
                rsdp_old.get_or_insert(tag + 8);
            }
            MB2_TAG_ACPI_NEW => {
                need(8 + RSDP_V2_LEN)?;
                rsdp_new.get_or_insert(tag + 8);
            }
            _ => {} // Other tags (framebuffer, ELF sections, EFI, ...) are not used.
        }
        // Tags start on 8-byte boundaries; `size` excludes the padding.
        let next = (u64::from(off) + u64::from(size) + 7) & !7;
        off = u32::try_from(next).map_err(|_| BootError::MissingEndTag)?;
    }

    if !have_mmap {
        if let Some((lower, upper)) = meminfo {
            memory_map = synthesize_map(lower, upper);
        }
    }
    Ok(BootInfo {
        protocol: Protocol::Multiboot2,
        loader_name,
        cmdline: cmdline.unwrap_or_default(),
        memory_map,
        modules,
        rsdp_paddr: rsdp_new.or(rsdp_old),
    })
}

// ---------------------------------------------------------------------------
// PVH (struct hvm_start_info).

/// Size of `hvm_start_info` version 0 (through `rsdp_paddr`).
const PVH_INFO_V0_LEN: usize = 40;
/// Size of version 1 (adds `memmap_paddr`, `memmap_entries`, `reserved`).
const PVH_INFO_V1_LEN: usize = 56;
const PVH_MODLIST_ENTRY_LEN: u64 = 32;
const PVH_MEMMAP_ENTRY_LEN: u64 = 24;

fn parse_pvh(info: u64, mem: &dyn PhysMemory) -> Result<BootInfo, BootError> {
    let b = read_bytes::<PVH_INFO_V0_LEN>(mem, info)?;
    let magic = le32(&b, 0);
    if magic != PVH_MAGIC {
        return Err(BootError::BadPvhMagic(magic));
    }
    let version = le32(&b, 4);
    let nr_modules = le32(&b, 12);
    let modlist = le64(&b, 16);
    let cmdline = read_cstr(mem, le64(&b, 24), MAX_CMDLINE_LEN)?;
    let rsdp = le64(&b, 32);

    if nr_modules as usize > MAX_MODULES {
        return Err(BootError::TooManyModules { count: u64::from(nr_modules) });
    }
    let mut modules = Vec::new();
    for i in 0..u64::from(nr_modules) {
        let m = read_bytes::<{ PVH_MODLIST_ENTRY_LEN as usize }>(mem, addr(modlist, i * PVH_MODLIST_ENTRY_LEN)?)?;
        let (start, size) = (le64(&m, 0), le64(&m, 8));
        let end = start.checked_add(size).ok_or(BootError::BadRange { what: "boot module", start, len: size })?;
        let s = read_cstr(mem, le64(&m, 16), MAX_CMDLINE_LEN)?;
        modules.push(module(start, end, s)?);
    }

    let mut memory_map = Vec::new();
    // Later versions only append fields, so everything >= 1 has the map.
    if version >= 1 {
        let v1 = read_bytes::<PVH_INFO_V1_LEN>(mem, info)?;
        let (map, entries) = (le64(&v1, 40), le32(&v1, 48));
        if entries as usize > MAX_MEMORY_MAP_ENTRIES {
            return Err(BootError::TooManyMemoryMapEntries { count: u64::from(entries) });
        }
        if map != 0 {
            for i in 0..u64::from(entries) {
                let e = read_bytes::<{ PVH_MEMMAP_ENTRY_LEN as usize }>(mem, addr(map, i * PVH_MEMMAP_ENTRY_LEN)?)?;
                if let Some(r) = region(le64(&e, 0), le64(&e, 8), le32(&e, 16))? {
                    memory_map.push(r);
                }
            }
        }
    }

    Ok(BootInfo {
        protocol: Protocol::Pvh,
        loader_name: None,
        cmdline,
        memory_map,
        modules,
        rsdp_paddr: (rsdp != 0).then_some(rsdp),
    })
}

#[cfg(test)]
mod tests;
