//! The loader's error type. Every variant says what was wrong in its
//! `Display`, with the offending numbers.

use crate::bzimage::Compression;
use core::fmt;

/// Why an image could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// A structure of the image runs past its end.
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
        available: u64,
    },
    /// Neither `\x7fELF` nor a bzImage with a `HdrS` setup header.
    UnknownFormat,
    /// An ELF identification or header field has a value we do not support.
    ElfUnsupported { what: &'static str, value: u64 },
    /// A program header is inconsistent.
    ElfBadSegment { index: usize, reason: &'static str },
    /// Two PT_LOAD segments overlap in guest-physical memory.
    SegmentsOverlap { first: usize, second: usize },
    /// No `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY` (18).
    NoPvhEntry,
    /// A `Xen` PHYS32_ENTRY note exists but is malformed.
    BadPvhNote(&'static str),
    /// The PVH entry point lies in no loaded segment.
    EntryOutsideSegments { entry: u64 },
    /// The bzImage setup header is invalid.
    BadSetupHeader(&'static str),
    /// The bzImage speaks a boot protocol older than we need.
    ProtocolTooOld { version: u16, need: u16 },
    /// The bzImage has no 64-bit entry (`XLF_KERNEL_64` clear).
    NotKernel64,
    /// The bzImage payload is compressed, so it has no directly usable
    /// ELF (and so no PVH note); use the 64-bit boot protocol instead.
    CompressedPayload(Compression),
    /// The bzImage payload is neither compressed nor ELF.
    PayloadNotElf,
    /// A range we would load lies (partly) outside guest RAM.
    OutsideRam {
        what: &'static str,
        start: u64,
        len: u64,
    },
    /// Two things we would load overlap.
    Overlap {
        what: &'static str,
        start: u64,
        len: u64,
        other: &'static str,
        other_start: u64,
        other_len: u64,
    },
    /// No free space of the required size is left.
    NoSpace { what: &'static str, size: u64 },
    /// The command line is longer than the kernel or the layout allows.
    CmdlineTooLong { len: u64, max: u64 },
    /// The command line contains a NUL byte.
    CmdlineHasNul,
    /// The number of vCPUs is outside 1..=255 (xAPIC IDs).
    BadVcpuCount(u32),
    /// Guest RAM is too small to hold the layout at all.
    MemoryTooSmall { have: u64, need: u64 },
    /// A [`crate::GuestMemory`] refused a write.
    GuestWrite { gpa: u64, len: u64 },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LoadError::*;
        match self {
            Truncated { what, offset, len, available } => write!(
                f,
                "image truncated: {what} needs bytes {offset:#x}..+{len:#x} but the image has {available:#x} bytes"
            ),
            UnknownFormat => write!(f, "unknown image format: neither ELF (\\x7fELF) nor a Linux bzImage (\"HdrS\" at 0x202)"),
            ElfUnsupported { what, value } => write!(f, "unsupported ELF {what}: {value:#x}"),
            ElfBadSegment { index, reason } => write!(f, "ELF program header {index}: {reason}"),
            SegmentsOverlap { first, second } => {
                write!(f, "ELF PT_LOAD segments {first} and {second} overlap in physical memory")
            }
            NoPvhEntry => write!(
                f,
                "ELF image has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 18, name \"Xen\")"
            ),
            BadPvhNote(why) => write!(f, "malformed Xen PHYS32_ENTRY note: {why}"),
            EntryOutsideSegments { entry } => {
                write!(f, "PVH entry point {entry:#x} is not inside any loaded segment")
            }
            BadSetupHeader(why) => write!(f, "invalid bzImage setup header: {why}"),
            ProtocolTooOld { version, need } => write!(
                f,
                "bzImage boot protocol {}.{:02} is too old (need {}.{:02} or later)",
                version >> 8,
                version & 0xff,
                need >> 8,
                need & 0xff
            ),
            NotKernel64 => write!(f, "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)"),
            CompressedPayload(c) => write!(
                f,
                "bzImage payload is {c}-compressed, so it carries no usable PVH ELF note; boot it with the Linux 64-bit boot protocol"
            ),
            PayloadNotElf => write!(f, "bzImage payload is neither a known compressed format nor an ELF image"),
            OutsideRam { what, start, len } => write!(
                f,
                "{what} at {start:#x}..{:#x} lies outside guest RAM",
                start.saturating_add(*len)
            ),
            Overlap { what, start, len, other, other_start, other_len } => write!(
                f,
                "{what} at {start:#x}..{:#x} overlaps {other} at {other_start:#x}..{:#x}",
                start.saturating_add(*len),
                other_start.saturating_add(*other_len)
            ),
            NoSpace { what, size } => write!(f, "no room in guest RAM below 4 GiB for {what} ({size:#x} bytes)"),
            CmdlineTooLong { len, max } => {
                write!(f, "command line is {len} bytes, longer than the {max} bytes allowed")
            }
            CmdlineHasNul => write!(f, "command line contains a NUL byte"),
            BadVcpuCount(n) => write!(f, "{n} vCPUs requested; supported are 1..=255"),
            MemoryTooSmall { have, need } => {
                write!(f, "guest RAM of {have:#x} bytes is too small (need at least {need:#x})")
            }
            GuestWrite { gpa, len } => {
                write!(f, "guest memory write at {gpa:#x}..+{len:#x} is outside guest memory")
            }
        }
    }
}
