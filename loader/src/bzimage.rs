//! Linux bzImage (`Documentation/arch/x86/boot.rst`): the setup header, the
//! protected-mode kernel and its payload, compression detection, and the
//! `boot_params` ("zero page") for the 64-bit boot protocol.

use crate::bytes::{put_u32, put_u64, slice, u16_at, u32_at, u64_at, u8_at};
use crate::e820::E820Entry;
use crate::LoadError;
use core::fmt;

/// Offsets in the image / in `boot_params` (the setup header sits at the
/// same offset in both).
pub mod off {
    pub const SETUP_SECTS: u64 = 0x1f1;
    pub const BOOT_FLAG: u64 = 0x1fe;
    pub const JUMP: u64 = 0x200;
    pub const HEADER: u64 = 0x202;
    pub const VERSION: u64 = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: u64 = 0x211;
    pub const CODE32_START: u64 = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: u64 = 0x22c;
    pub const KERNEL_ALIGNMENT: u64 = 0x230;
    pub const RELOCATABLE_KERNEL: u64 = 0x234;
    pub const MIN_ALIGNMENT: u64 = 0x235;
    pub const XLOADFLAGS: u64 = 0x236;
    pub const CMDLINE_SIZE: u64 = 0x238;
    pub const PAYLOAD_OFFSET: u64 = 0x248;
    pub const PAYLOAD_LENGTH: u64 = 0x24c;
    pub const SETUP_DATA: usize = 0x250;
    pub const PREF_ADDRESS: u64 = 0x258;
    pub const INIT_SIZE: u64 = 0x260;
    // boot_params outside the setup header
    pub const BP_ACPI_RSDP_ADDR: usize = 0x070;
    pub const BP_EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const BP_EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const BP_EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const BP_E820_ENTRIES: usize = 0x1e8;
    pub const BP_E820_TABLE: usize = 0x2d0;
}

/// `"HdrS"`.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol we need for the 64-bit entry with `xloadflags`,
/// `pref_address` and `init_size`.
pub const MIN_PROTOCOL_64: u16 = 0x020c;
/// `loadflags` bit: protected-mode code loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bits.
pub const XLF_KERNEL_64: u16 = 1 << 0;
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
pub const XLF_EFI_HANDOVER_32: u16 = 1 << 2;
pub const XLF_EFI_HANDOVER_64: u16 = 1 << 3;
pub const XLF_EFI_KEXEC: u16 = 1 << 4;
pub const XLF_5LEVEL: u16 = 1 << 5;
pub const XLF_5LEVEL_ENABLED: u16 = 1 << 6;
/// Size of `boot_params`.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Entries in `boot_params.e820_table`.
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;
/// Offset of the 64-bit entry from the protected-mode kernel's start.
pub const ENTRY64_OFFSET: u64 = 0x200;

/// The parts of the setup header the loader uses. Fields newer than the
/// image's protocol version read as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// `setup_sects` as used (0 in the image means 4).
    pub setup_sects: u8,
    /// Protocol version, e.g. 0x020f for 2.15.
    pub version: u16,
    pub loadflags: u8,
    pub code32_start: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: bool,
    pub min_alignment: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub payload_offset: u32,
    pub payload_length: u32,
    pub pref_address: u64,
    pub init_size: u32,
    /// Offset one past the end of the setup header (`0x202 + byte[0x201]`).
    pub header_end: u64,
}

impl SetupHeader {
    /// Protocol version as "2.15".
    pub fn version_str(&self) -> VersionDisplay {
        VersionDisplay(self.version)
    }
}

/// Displays a boot protocol version as `major.minor`.
pub struct VersionDisplay(pub u16);
impl fmt::Display for VersionDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 8, self.0 & 0xff)
    }
}

/// Compression of a bzImage payload, told by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

/// What a bzImage payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    Elf,
    Compressed(Compression),
    Unknown,
}

/// Tell the payload's format from its first bytes (the magics the kernel's
/// `lib/decompress.c` and `scripts/Makefile.lib` use).
pub fn detect_payload(payload: &[u8]) -> PayloadKind {
    let starts = |m: &[u8]| payload.starts_with(m);
    if starts(b"\x7fELF") {
        PayloadKind::Elf
    } else if starts(&[0x1f, 0x8b]) || starts(&[0x1f, 0x9e]) {
        PayloadKind::Compressed(Compression::Gzip)
    } else if starts(b"BZh") {
        PayloadKind::Compressed(Compression::Bzip2)
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        PayloadKind::Compressed(Compression::Xz)
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        PayloadKind::Compressed(Compression::Zstd)
    } else if starts(&[0x02, 0x21, 0x4c, 0x18]) || starts(&[0x04, 0x22, 0x4d, 0x18]) {
        PayloadKind::Compressed(Compression::Lz4)
    } else if starts(&[0x89, b'L', b'Z', b'O', 0x00]) {
        PayloadKind::Compressed(Compression::Lzo)
    } else if starts(&[0x5d, 0x00, 0x00]) {
        PayloadKind::Compressed(Compression::Lzma)
    } else {
        PayloadKind::Unknown
    }
}

/// A parsed bzImage.
#[derive(Clone, Copy, Debug)]
pub struct BzImage<'a> {
    pub header: SetupHeader,
    /// The whole image.
    pub image: &'a [u8],
    /// The protected-mode kernel: everything after the setup sectors.
    pub kernel: &'a [u8],
    /// The payload (`payload_offset`/`payload_length`, relative to the
    /// protected-mode kernel); empty before protocol 2.08.
    pub payload: &'a [u8],
}

impl<'a> BzImage<'a> {
    /// What the payload is.
    pub fn payload_kind(&self) -> PayloadKind {
        detect_payload(self.payload)
    }

    /// The payload if it is an uncompressed ELF (so it may carry the PVH
    /// note); otherwise why not.
    pub fn elf_payload(&self) -> Result<&'a [u8], LoadError> {
        match self.payload_kind() {
            PayloadKind::Elf => Ok(self.payload),
            PayloadKind::Compressed(c) => Err(LoadError::CompressedPayload(c)),
            PayloadKind::Unknown => Err(LoadError::PayloadNotElf),
        }
    }

    /// Check that the 64-bit boot protocol can be used.
    pub fn check_64bit(&self) -> Result<(), LoadError> {
        if self.header.version < MIN_PROTOCOL_64 {
            return Err(LoadError::ProtocolTooOld {
                version: self.header.version,
                need: MIN_PROTOCOL_64,
            });
        }
        if self.header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::NotKernel64);
        }
        if self.kernel.len() as u64 <= ENTRY64_OFFSET {
            return Err(LoadError::BadSetupHeader(
                "the protected-mode kernel ends before its 64-bit entry (offset 0x200)",
            ));
        }
        Ok(())
    }

    /// Memory the kernel needs from its load address: `init_size`, and at
    /// least the size of the protected-mode kernel.
    pub fn memory_needed(&self) -> u64 {
        u64::from(self.header.init_size).max(self.kernel.len() as u64)
    }
}

/// Is this a bzImage (boot flag 0xAA55 and `"HdrS"` at 0x202)?
pub fn is_bzimage(image: &[u8]) -> bool {
    u32_at(image, off::HEADER, "").ok() == Some(HDRS_MAGIC)
}

/// Parse the setup header and locate the kernel and payload.
pub fn parse(image: &[u8]) -> Result<BzImage<'_>, LoadError> {
    let magic = u32_at(image, off::HEADER, "setup header")?;
    if magic != HDRS_MAGIC {
        return Err(LoadError::UnknownFormat);
    }
    if u16_at(image, off::BOOT_FLAG, "setup header")? != 0xaa55 {
        return Err(LoadError::BadSetupHeader(
            "boot_flag at 0x1fe is not 0xAA55",
        ));
    }
    let version = u16_at(image, off::VERSION, "setup header")?;
    if version < 0x0200 {
        return Err(LoadError::ProtocolTooOld {
            version,
            need: 0x0200,
        });
    }
    let header_end = off::HEADER + u64::from(u8_at(image, off::JUMP + 1, "setup header")?);
    // The header copied into boot_params must end before e820_table etc.
    if header_end > 0x290 {
        return Err(LoadError::BadSetupHeader(
            "setup header end (0x202 + byte at 0x201) is past 0x290",
        ));
    }
    slice(image, 0, header_end, "setup header")?;
    let v = |min: u16| version >= min;
    let mut setup_sects = u8_at(image, off::SETUP_SECTS, "setup header")?;
    if setup_sects == 0 {
        setup_sects = 4;
    }
    let rd32 = |o: u64, min: u16| -> Result<u32, LoadError> {
        if v(min) && o + 4 <= header_end {
            u32_at(image, o, "setup header")
        } else {
            Ok(0)
        }
    };
    let h = SetupHeader {
        setup_sects,
        version,
        loadflags: u8_at(image, off::LOADFLAGS, "setup header")?,
        code32_start: rd32(off::CODE32_START, 0x0200)?,
        initrd_addr_max: if v(0x0203) {
            rd32(off::INITRD_ADDR_MAX, 0x0203)?
        } else {
            0x37ff_ffff
        },
        kernel_alignment: rd32(off::KERNEL_ALIGNMENT, 0x0205)?,
        relocatable_kernel: v(0x0205)
            && header_end > off::RELOCATABLE_KERNEL
            && u8_at(image, off::RELOCATABLE_KERNEL, "setup header")? != 0,
        min_alignment: if v(0x020a) && header_end > off::MIN_ALIGNMENT {
            u8_at(image, off::MIN_ALIGNMENT, "setup header")?
        } else {
            0
        },
        xloadflags: if v(0x020c) && header_end >= off::XLOADFLAGS + 2 {
            u16_at(image, off::XLOADFLAGS, "setup header")?
        } else {
            0
        },
        cmdline_size: if v(0x0206) {
            rd32(off::CMDLINE_SIZE, 0x0206)?
        } else {
            255
        },
        payload_offset: rd32(off::PAYLOAD_OFFSET, 0x0208)?,
        payload_length: rd32(off::PAYLOAD_LENGTH, 0x0208)?,
        pref_address: if v(0x020a) && header_end >= off::PREF_ADDRESS + 8 {
            u64_at(image, off::PREF_ADDRESS, "setup header")?
        } else {
            0
        },
        init_size: rd32(off::INIT_SIZE, 0x020a)?,
        header_end,
    };
    if h.loadflags & LOADED_HIGH == 0 {
        return Err(LoadError::BadSetupHeader(
            "not a bzImage (LOADED_HIGH clear: a zImage loaded at 0x10000)",
        ));
    }
    let kernel_off = (u64::from(setup_sects) + 1) * 512;
    if kernel_off >= image.len() as u64 {
        return Err(LoadError::BadSetupHeader(
            "setup_sects points past the end of the image",
        ));
    }
    let kernel = &image[kernel_off as usize..];
    if h.kernel_alignment != 0 && !h.kernel_alignment.is_power_of_two() {
        return Err(LoadError::BadSetupHeader(
            "kernel_alignment is not a power of two",
        ));
    }
    let payload = if h.payload_length == 0 {
        &kernel[..0]
    } else {
        slice(
            kernel,
            h.payload_offset.into(),
            h.payload_length.into(),
            "bzImage payload",
        )
        .map_err(|_| {
            LoadError::BadSetupHeader(
                "payload_offset/payload_length run past the end of the kernel",
            )
        })?
    };
    Ok(BzImage {
        header: h,
        image,
        kernel,
        payload,
    })
}

/// Inputs for [`build_boot_params`].
#[derive(Clone, Copy, Debug)]
pub struct BootParamsInput<'e> {
    pub cmdline_gpa: u64,
    pub ramdisk_gpa: u64,
    pub ramdisk_size: u64,
    pub rsdp_gpa: u64,
    pub e820: &'e [E820Entry],
}

/// Build the 4 KiB `boot_params`: zeroed, with the image's setup header
/// copied in and the loader's fields filled.
pub fn build_boot_params(
    bz: &BzImage<'_>,
    inp: &BootParamsInput<'_>,
) -> Result<[u8; BOOT_PARAMS_SIZE], LoadError> {
    let mut bp = [0u8; BOOT_PARAMS_SIZE];
    let start = off::SETUP_SECTS as usize;
    let end = bz.header.header_end as usize;
    bp[start..end].copy_from_slice(&bz.image[start..end]);
    // "Undefined" boot loader id; no heap, no KEEP_SEGMENTS, no quiet.
    bp[off::TYPE_OF_LOADER] = 0xff;
    bp[off::LOADFLAGS as usize] = bz.header.loadflags & LOADED_HIGH;
    put_u32(&mut bp, off::RAMDISK_IMAGE, inp.ramdisk_gpa as u32);
    put_u32(&mut bp, off::RAMDISK_SIZE, inp.ramdisk_size as u32);
    put_u32(
        &mut bp,
        off::BP_EXT_RAMDISK_IMAGE,
        (inp.ramdisk_gpa >> 32) as u32,
    );
    put_u32(
        &mut bp,
        off::BP_EXT_RAMDISK_SIZE,
        (inp.ramdisk_size >> 32) as u32,
    );
    put_u32(&mut bp, off::CMD_LINE_PTR, inp.cmdline_gpa as u32);
    put_u32(
        &mut bp,
        off::BP_EXT_CMD_LINE_PTR,
        (inp.cmdline_gpa >> 32) as u32,
    );
    if end >= off::SETUP_DATA + 8 {
        put_u64(&mut bp, off::SETUP_DATA, 0);
    }
    put_u64(&mut bp, off::BP_ACPI_RSDP_ADDR, inp.rsdp_gpa);
    if inp.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LoadError::NoSpace {
            what: "e820 table in boot_params",
            size: inp.e820.len() as u64,
        });
    }
    bp[off::BP_E820_ENTRIES] = inp.e820.len() as u8;
    for (i, e) in inp.e820.iter().enumerate() {
        let o = off::BP_E820_TABLE + i * 20;
        put_u64(&mut bp, o, e.addr);
        put_u64(&mut bp, o + 8, e.size);
        put_u32(&mut bp, o + 16, e.kind as u32);
    }
    Ok(bp)
}

/// Builders of synthetic bzImages for this crate's tests.
#[cfg(test)]
pub(crate) mod testimg {
    use alloc::vec::Vec;

    /// A bzImage with protocol `version`, 4 setup sectors, `payload` at
    /// offset 0x100 of the protected-mode kernel, kernel of `kernel_len`.
    pub fn build(version: u16, xloadflags: u16, payload: &[u8], kernel_len: usize) -> Vec<u8> {
        let setup = 5 * 512;
        let mut img = alloc::vec![0u8; setup + kernel_len.max(0x100 + payload.len())];
        img[0x1f1] = 4;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x200] = 0xeb;
        img[0x201] = 0x6a; // header ends at 0x26c
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[0x234] = 1;
        img[0x235] = 21;
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
        img[setup + 0x100..setup + 0x100 + payload.len()].copy_from_slice(payload);
        img
    }
}

#[cfg(test)]
mod tests {
    use super::testimg::build;
    use super::*;
    use crate::e820::E820Type;

    const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];

    /// Found by `ferrite fuzz bzimage`: a kernel of at most 0x200 bytes
    /// was started at an entry past its end.
    #[test]
    fn kernel_ending_before_the_64bit_entry_is_refused() {
        let short = build(0x020f, XLF_KERNEL_64, ZSTD, 0x200);
        let bz = parse(&short[..5 * 512 + 0x1c0]).unwrap();
        assert!(matches!(bz.check_64bit(), Err(LoadError::BadSetupHeader(_))));
        let mut ok = short.clone();
        ok.push(0);
        assert_eq!(parse(&ok).unwrap().check_64bit(), Ok(()));
    }

    #[test]
    fn parses_header_fields() {
        let img = build(
            0x020f,
            XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            ZSTD,
            0x1000,
        );
        let bz = parse(&img).unwrap();
        let h = bz.header;
        assert_eq!(h.version, 0x020f);
        assert_eq!(alloc::format!("{}", h.version_str()), "2.15");
        assert_eq!(h.setup_sects, 4);
        assert_eq!(h.xloadflags, 3);
        assert_eq!(h.kernel_alignment, 0x20_0000);
        assert!(h.relocatable_kernel);
        assert_eq!(h.pref_address, 0x100_0000);
        assert_eq!(h.init_size, 0x40_0000);
        assert_eq!(h.cmdline_size, 2047);
        assert_eq!(h.header_end, 0x26c);
        assert_eq!(bz.kernel.len(), 0x1000);
        assert_eq!(bz.payload, ZSTD);
        assert_eq!(
            bz.payload_kind(),
            PayloadKind::Compressed(Compression::Zstd)
        );
        assert_eq!(
            bz.elf_payload(),
            Err(LoadError::CompressedPayload(Compression::Zstd))
        );
        assert!(alloc::format!("{}", bz.elf_payload().unwrap_err()).contains("zstd"));
        assert_eq!(bz.memory_needed(), 0x40_0000);
        bz.check_64bit().unwrap();
    }

    #[test]
    fn detects_compressions() {
        let cases: &[(&[u8], PayloadKind)] = &[
            (&[0x1f, 0x8b, 8], PayloadKind::Compressed(Compression::Gzip)),
            (b"BZh9", PayloadKind::Compressed(Compression::Bzip2)),
            (
                &[0xfd, b'7', b'z', b'X', b'Z', 0],
                PayloadKind::Compressed(Compression::Xz),
            ),
            (
                &[0x02, 0x21, 0x4c, 0x18],
                PayloadKind::Compressed(Compression::Lz4),
            ),
            (
                &[0x89, b'L', b'Z', b'O', 0],
                PayloadKind::Compressed(Compression::Lzo),
            ),
            (
                &[0x5d, 0, 0, 0x80],
                PayloadKind::Compressed(Compression::Lzma),
            ),
            (ZSTD, PayloadKind::Compressed(Compression::Zstd)),
            (b"\x7fELF\x02", PayloadKind::Elf),
            (b"junk", PayloadKind::Unknown),
            (b"", PayloadKind::Unknown),
        ];
        for (bytes, want) in cases {
            assert_eq!(detect_payload(bytes), *want, "{bytes:x?}");
        }
    }

    #[test]
    fn rejects_bad_images() {
        let good = build(0x020f, XLF_KERNEL_64, ZSTD, 0x1000);
        for n in 0..0x400 {
            assert!(parse(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut bad = good.clone();
        bad[0x1fe] = 0;
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let mut bad = good.clone();
        bad[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let mut bad = good.clone();
        bad[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let mut bad = good.clone();
        bad[0x1f1] = 200; // setup sectors past the end
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let mut bad = good.clone();
        bad[0x201] = 0xff; // header end past 0x290
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let mut bad = good.clone();
        bad[0x230..0x234].copy_from_slice(&0x30_0000u32.to_le_bytes());
        assert!(matches!(parse(&bad), Err(LoadError::BadSetupHeader(_))));
        let old = build(0x020b, XLF_KERNEL_64, ZSTD, 0x1000);
        assert_eq!(
            parse(&old).unwrap().check_64bit(),
            Err(LoadError::ProtocolTooOld {
                version: 0x020b,
                need: 0x020c
            })
        );
        let no64 = build(0x020f, 0, ZSTD, 0x1000);
        assert_eq!(
            parse(&no64).unwrap().check_64bit(),
            Err(LoadError::NotKernel64)
        );
        assert!(!is_bzimage(b"\x7fELF"));
    }

    #[test]
    fn boot_params_layout() {
        let img = build(0x020f, XLF_KERNEL_64, ZSTD, 0x1000);
        let bz = parse(&img).unwrap();
        let e820 = [
            E820Entry {
                addr: 0,
                size: 0xa0000,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 0x1_0000_0000,
                kind: E820Type::Ram,
            },
        ];
        let bp = build_boot_params(
            &bz,
            &BootParamsInput {
                cmdline_gpa: 0x2000,
                ramdisk_gpa: 0x1_2345_6000,
                ramdisk_size: 0x1000,
                rsdp_gpa: 0xf0000,
                e820: &e820,
            },
        )
        .unwrap();
        assert_eq!(&bp[0x202..0x206], b"HdrS");
        assert_eq!(bp[0x210], 0xff);
        assert_eq!(
            u32::from_le_bytes(bp[0x228..0x22c].try_into().unwrap()),
            0x2000
        );
        assert_eq!(
            u32::from_le_bytes(bp[0x218..0x21c].try_into().unwrap()),
            0x2345_6000
        );
        assert_eq!(u32::from_le_bytes(bp[0xc0..0xc4].try_into().unwrap()), 1);
        assert_eq!(
            u64::from_le_bytes(bp[0x70..0x78].try_into().unwrap()),
            0xf0000
        );
        assert_eq!(bp[0x1e8], 2);
        assert_eq!(
            u64::from_le_bytes(bp[0x2d0 + 20..0x2d0 + 28].try_into().unwrap()),
            0x10_0000
        );
        assert_eq!(
            u32::from_le_bytes(bp[0x2d0 + 36..0x2d0 + 40].try_into().unwrap()),
            1
        );
        // Nothing past the header copy except what we set.
        assert!(bp[0x26c..0x2d0].iter().all(|&b| b == 0));
    }
}
