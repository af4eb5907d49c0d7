//! Linux direct boot through fw_cfg, as QEMU's `x86_load_linux` prepares
//! it for a "high and recent" kernel, for the `linuxboot_dma.bin` option
//! ROM to load:
//!
//! * the real-mode setup part (`(setup_sects + 1) * 512` bytes) at
//!   [`SETUP_ADDR`] 0x10000, its header patched: `type_of_loader` 0xB0
//!   (QEMU), `CAN_USE_HEAP` with `heap_end_ptr` 0xFE00, `cmd_line_ptr`,
//!   `ramdisk_image/size`, and `vid_mode` from a `vga=` argument;
//! * the command line at [`CMDLINE_ADDR`] 0x20000;
//! * the protected-mode kernel (the rest of the image) at [`KERNEL_ADDR`]
//!   1 MiB;
//! * the initrd page-aligned just below `initrd_max`: the header's
//!   `initrd_addr_max` (or 4 GiB − 1 with `XLF_CAN_BE_LOADED_ABOVE_4G`),
//!   lowered below low RAM minus [`ACPI_DATA_SIZE`] (the room QEMU leaves
//!   the BIOS for its tables). The option ROM moves it under the top of
//!   RAM SeaBIOS reports when that differs from the header's limit.
//!
//! Kernel and initrd stay external (boot-module handle plus offset); only
//! the setup part and the command line are held.

use super::{key, ItemData};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use ferrite_loader::bzimage::{off, HDRS_MAGIC, LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G};
use ferrite_loader::layout::MAX_CMDLINE;

/// Where the real-mode setup part goes.
pub const SETUP_ADDR: u32 = 0x1_0000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u32 = 0x2_0000;
/// Where the protected-mode kernel goes.
pub const KERNEL_ADDR: u32 = 0x10_0000;
/// Room QEMU's PC machines keep free at the top of low RAM for the
/// BIOS's ACPI tables and data (`acpi_data_size`).
pub const ACPI_DATA_SIZE: u64 = 0x2_8000;
/// Oldest boot protocol accepted: 2.06 (`cmdline_size`, 4 GiB-safe
/// `initrd_addr_max`).
pub const MIN_PROTOCOL: u16 = 0x0206;
/// The option ROM's fw_cfg file name.
pub const LINUXBOOT_DMA_ROM: &str = "genroms/linuxboot_dma.bin";
/// `type_of_loader`: QEMU's id (0xB), revision 0.
pub const TYPE_OF_LOADER_QEMU: u8 = 0xb0;
/// `loadflags.CAN_USE_HEAP`.
pub const CAN_USE_HEAP: u8 = 0x80;
const VID_MODE: usize = 0x1fa;
const HEAP_END_PTR: usize = 0x224;
/// `heap_end_ptr`: up to the command line, less 0x200 (as QEMU).
pub const HEAP_END: u16 = (CMDLINE_ADDR - SETUP_ADDR - 0x200) as u16;

/// An external object: a boot module the stub domain can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalBlob {
    pub handle: u32,
    pub len: u64,
}

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct LinuxBootConfig<'a> {
    /// The start of the bzImage: at least its setup part
    /// ([`linux_setup_size`] bytes; reading 32 KiB covers every kernel
    /// up to 64 setup sectors, 128.5 KiB covers all).
    pub image_head: &'a [u8],
    /// The whole bzImage file.
    pub kernel: ExternalBlob,
    pub initrd: Option<ExternalBlob>,
    pub cmdline: &'a str,
}

/// What was computed (the values of the fw_cfg items).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxBootPlan {
    pub protocol: u16,
    pub setup_addr: u32,
    pub setup_size: u32,
    pub cmdline_addr: u32,
    /// Command line bytes including the NUL.
    pub cmdline_size: u32,
    pub kernel_addr: u32,
    pub kernel_size: u32,
    /// Offset of the protected-mode kernel in the bzImage file.
    pub kernel_offset: u64,
    /// 0 when there is no initrd.
    pub initrd_addr: u32,
    pub initrd_size: u32,
    pub initrd_max: u32,
    /// `vid_mode` written from `vga=`, if any.
    pub vid_mode: Option<u16>,
}

/// The plan and the items it becomes.
#[derive(Clone, Debug)]
pub struct LinuxItems {
    pub plan: LinuxBootPlan,
    /// `(selector, data)` for items 0x07–0x18.
    pub items: Vec<(u16, ItemData)>,
}

/// Why a kernel cannot be booted this way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinuxBootError {
    /// The head is too short to hold what is needed (`need` bytes).
    HeadTooShort {
        need: u64,
        have: u64,
    },
    /// No `"HdrS"` at 0x202.
    NotBzImage,
    /// `boot_flag` at 0x1FE is not 0xAA55.
    BadBootFlag(u16),
    ProtocolTooOld {
        version: u16,
        need: u16,
    },
    /// `LOADED_HIGH` clear: a zImage, loaded at 0x10000.
    NotLoadedHigh,
    /// The file is not longer than its setup part.
    KernelTooShort {
        setup_size: u64,
        file_len: u64,
    },
    /// The protected-mode kernel is 4 GiB or more.
    KernelTooLarge(u64),
    /// The setup part overlaps its heap / the command line.
    SetupTooLarge(u64),
    CmdlineTooLong {
        len: u64,
        max: u64,
    },
    CmdlineHasNul,
    /// `vga=` with a value QEMU would reject.
    BadVgaMode,
    InitrdTooLarge {
        size: u64,
        max: u64,
    },
    /// Low RAM cannot hold the kernel (`init_size` from 1 MiB), the initrd
    /// and the BIOS's data.
    RamTooSmall {
        below_4g: u64,
        need: u64,
    },
}

impl fmt::Display for LinuxBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LinuxBootError::*;
        match self {
            HeadTooShort { need, have } => write!(
                f,
                "bzImage head is {have:#x} bytes; {need:#x} are needed (the whole setup part)"
            ),
            NotBzImage => f.write_str("not a Linux bzImage (no \"HdrS\" at 0x202)"),
            BadBootFlag(v) => write!(f, "bzImage boot_flag at 0x1fe is {v:#06x}, not 0xaa55"),
            ProtocolTooOld { version, need } => write!(
                f,
                "bzImage boot protocol {}.{:02} is too old (need {}.{:02} or later)",
                version >> 8,
                version & 0xff,
                need >> 8,
                need & 0xff
            ),
            NotLoadedHigh => f.write_str("zImage (LOADED_HIGH clear) is not supported; use a bzImage"),
            KernelTooShort { setup_size, file_len } => write!(
                f,
                "bzImage of {file_len:#x} bytes has no kernel after its {setup_size:#x}-byte setup part"
            ),
            KernelTooLarge(n) => write!(f, "protected-mode kernel of {n:#x} bytes is 4 GiB or more"),
            SetupTooLarge(n) => write!(
                f,
                "bzImage setup part of {n:#x} bytes does not fit below its heap end {HEAP_END:#x}"
            ),
            CmdlineTooLong { len, max } => {
                write!(f, "command line is {len} bytes; this kernel accepts at most {max}")
            }
            CmdlineHasNul => f.write_str("command line contains a NUL byte"),
            BadVgaMode => f.write_str("invalid 'vga=' kernel parameter"),
            InitrdTooLarge { size, max } => {
                write!(f, "initrd of {size:#x} bytes is too large (must be below {max:#x})")
            }
            RamTooSmall { below_4g, need } => write!(
                f,
                "low RAM of {below_4g:#x} bytes is too small for this kernel and initrd (need {need:#x})"
            ),
        }
    }
}

fn u16_at(d: &[u8], o: u64) -> u16 {
    let o = o as usize;
    u16::from_le_bytes([d[o], d[o + 1]])
}
fn u32_at(d: &[u8], o: u64) -> u32 {
    let o = o as usize;
    u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
}
fn put_u16(d: &mut [u8], o: usize, v: u16) {
    d[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(d: &mut [u8], o: usize, v: u32) {
    d[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// Size of the setup part (`(setup_sects + 1) * 512`, `setup_sects` 0
/// meaning 4): how much of the image [`plan_linux_boot`] needs.
pub fn linux_setup_size(head: &[u8]) -> Result<u64, LinuxBootError> {
    let at = off::SETUP_SECTS as usize;
    let Some(&sects) = head.get(at) else {
        return Err(LinuxBootError::HeadTooShort {
            need: at as u64 + 1,
            have: head.len() as u64,
        });
    };
    let sects = if sects == 0 { 4 } else { u64::from(sects) };
    Ok((sects + 1) * 512)
}

/// QEMU's `vga=` parsing: `normal`, `ext`, `ask`, or a number (C `strtoul`
/// base 0) ended by a space or the end.
fn vga_mode(cmdline: &str) -> Result<Option<u16>, LinuxBootError> {
    let Some(i) = cmdline.find("vga=") else {
        return Ok(None);
    };
    let v = &cmdline[i + 4..];
    if v.starts_with("normal") {
        return Ok(Some(0xffff));
    }
    if v.starts_with("ext") {
        return Ok(Some(0xfffe));
    }
    if v.starts_with("ask") {
        return Ok(Some(0xfffd));
    }
    let word = v.split(' ').next().unwrap_or("");
    let (digits, radix) =
        if let Some(h) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
            (h, 16)
        } else if word.len() > 1 && word.starts_with('0') {
            (&word[1..], 8)
        } else {
            (word, 10)
        };
    match u32::from_str_radix(digits, radix) {
        // stw_p: the low 16 bits are stored.
        Ok(n) if !digits.starts_with(['+', '-']) => Ok(Some(n as u16)),
        _ => Err(LinuxBootError::BadVgaMode),
    }
}

/// Plan a direct Linux boot for a guest with `below_4g` bytes of RAM
/// below 4 GiB, and produce the fw_cfg items 0x07–0x18.
pub fn plan_linux_boot(
    cfg: &LinuxBootConfig<'_>,
    below_4g: u64,
) -> Result<LinuxItems, LinuxBootError> {
    let head = cfg.image_head;
    let setup_size = linux_setup_size(head)?;
    if (head.len() as u64) < setup_size {
        return Err(LinuxBootError::HeadTooShort {
            need: setup_size,
            have: head.len() as u64,
        });
    }
    // setup_size >= 2560 > 0x264: every header field below is in `head`.
    if u32_at(head, off::HEADER) != HDRS_MAGIC {
        return Err(LinuxBootError::NotBzImage);
    }
    let flag = u16_at(head, off::BOOT_FLAG);
    if flag != 0xaa55 {
        return Err(LinuxBootError::BadBootFlag(flag));
    }
    let protocol = u16_at(head, off::VERSION);
    if protocol < MIN_PROTOCOL {
        return Err(LinuxBootError::ProtocolTooOld {
            version: protocol,
            need: MIN_PROTOCOL,
        });
    }
    let loadflags = head[off::LOADFLAGS as usize];
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxBootError::NotLoadedHigh);
    }
    if setup_size > u64::from(HEAP_END) {
        return Err(LinuxBootError::SetupTooLarge(setup_size));
    }
    if cfg.kernel.len <= setup_size {
        return Err(LinuxBootError::KernelTooShort {
            setup_size,
            file_len: cfg.kernel.len,
        });
    }
    let kernel_size = cfg.kernel.len - setup_size;
    if kernel_size > u64::from(u32::MAX) {
        return Err(LinuxBootError::KernelTooLarge(kernel_size));
    }

    // Command line.
    let cmdline = cfg.cmdline;
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxBootError::CmdlineHasNul);
    }
    let max = u64::from(u32_at(head, off::CMDLINE_SIZE)).min(MAX_CMDLINE);
    if cmdline.len() as u64 > max {
        return Err(LinuxBootError::CmdlineTooLong {
            len: cmdline.len() as u64,
            max,
        });
    }
    let vid_mode = vga_mode(cmdline)?;

    // Memory: the kernel needs init_size (2.10+) from 1 MiB.
    let init_size = if protocol >= 0x020a {
        u64::from(u32_at(head, off::INIT_SIZE))
    } else {
        0
    };
    let kernel_end = u64::from(KERNEL_ADDR) + kernel_size.max(init_size);
    let usable = below_4g.saturating_sub(ACPI_DATA_SIZE);
    if kernel_end > usable {
        return Err(LinuxBootError::RamTooSmall {
            below_4g,
            need: kernel_end + ACPI_DATA_SIZE,
        });
    }

    // Highest initrd address, as QEMU.
    let xloadflags = if protocol >= 0x020c {
        u16_at(head, off::XLOADFLAGS)
    } else {
        0
    };
    let mut initrd_max: u64 = if xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
        u64::from(u32::MAX)
    } else {
        u64::from(u32_at(head, off::INITRD_ADDR_MAX))
    };
    if initrd_max >= usable {
        initrd_max = usable - 1;
    }

    let mut setup: Vec<u8> = head[..setup_size as usize].to_vec();
    put_u32(&mut setup, off::CMD_LINE_PTR, CMDLINE_ADDR);
    if let Some(m) = vid_mode {
        put_u16(&mut setup, VID_MODE, m);
    }
    setup[off::TYPE_OF_LOADER] = TYPE_OF_LOADER_QEMU;
    setup[off::LOADFLAGS as usize] |= CAN_USE_HEAP;
    put_u16(&mut setup, HEAP_END_PTR, HEAP_END);

    let mut items = Vec::new();
    let le = |v: u32| ItemData::Bytes(v.to_le_bytes().to_vec());
    let (mut initrd_addr, mut initrd_size) = (0u32, 0u32);
    if let Some(rd) = cfg.initrd {
        if rd.len >= initrd_max {
            return Err(LinuxBootError::InitrdTooLarge {
                size: rd.len,
                max: initrd_max,
            });
        }
        let addr = (initrd_max - rd.len) & !0xfff;
        if addr < kernel_end {
            return Err(LinuxBootError::RamTooSmall {
                below_4g,
                need: (kernel_end + rd.len + 0xfff + ACPI_DATA_SIZE + 1) & !0xfff,
            });
        }
        // Both below 4 GiB: initrd_max <= u32::MAX.
        initrd_addr = addr as u32;
        initrd_size = rd.len as u32;
        put_u32(&mut setup, off::RAMDISK_IMAGE, initrd_addr);
        put_u32(&mut setup, off::RAMDISK_SIZE, initrd_size);
        items.push((key::INITRD_ADDR, le(initrd_addr)));
        items.push((key::INITRD_SIZE, le(initrd_size)));
        items.push((
            key::INITRD_DATA,
            ItemData::External {
                handle: rd.handle,
                offset: 0,
                len: rd.len,
            },
        ));
    }

    let mut cl = String::from(cmdline).into_bytes();
    cl.push(0);
    let plan = LinuxBootPlan {
        protocol,
        setup_addr: SETUP_ADDR,
        setup_size: setup_size as u32,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_size: cl.len() as u32,
        kernel_addr: KERNEL_ADDR,
        kernel_size: kernel_size as u32,
        kernel_offset: setup_size,
        initrd_addr,
        initrd_size,
        initrd_max: initrd_max as u32,
        vid_mode,
    };
    items.push((key::CMDLINE_ADDR, le(CMDLINE_ADDR)));
    items.push((key::CMDLINE_SIZE, le(plan.cmdline_size)));
    items.push((key::CMDLINE_DATA, ItemData::Bytes(cl)));
    items.push((key::KERNEL_ADDR, le(KERNEL_ADDR)));
    items.push((key::KERNEL_SIZE, le(plan.kernel_size)));
    items.push((
        key::KERNEL_DATA,
        ItemData::External {
            handle: cfg.kernel.handle,
            offset: setup_size,
            len: kernel_size,
        },
    ));
    items.push((key::SETUP_ADDR, le(SETUP_ADDR)));
    items.push((key::SETUP_SIZE, le(plan.setup_size)));
    items.push((key::SETUP_DATA, ItemData::Bytes(setup)));
    Ok(LinuxItems { plan, items })
}
