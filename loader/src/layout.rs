//! [`load_pvh`]: detect the image format, place everything in guest RAM
//! without overlaps, write it, and say how to start the vCPU.
//!
//! Placement (all below 4 GiB):
//! * page 0 is never used (0 means "absent" in `hvm_start_info`);
//! * 0xA0000–0xFFFFF is the legacy VGA/BIOS area; the RSDP sits at
//!   [`RSDP_GPA`] (0xF0000), where BIOS-style scans find it too;
//! * the ACPI tables take the top [`ACPI_REGION_SIZE`] of low RAM (first
//!   page e820 NVS, for the FACS; the rest e820 ACPI);
//! * the kernel goes where the image says (ELF `p_paddr`; bzImage
//!   `pref_address`, aligned to `kernel_alignment`);
//! * the initrd goes as high as possible below the ACPI tables (and below
//!   `initrd_addr_max` for bzImages), 4 KiB aligned;
//! * small boot data (command line, `hvm_start_info`, module list, memory
//!   map, or `boot_params`, page tables and GDT) go in the first free
//!   spots from 0x1000 up, below 0xA0000 when they fit.

use crate::acpi::{self, PlatformLayout};
use crate::bytes::{align_down, align_up};
use crate::bzimage::{self, PayloadKind};
use crate::e820::{self, E820Entry, E820Type, GuestRamMap};
use crate::elf::{self, ElfClass, ElfImage};
use crate::paging::{self, InitialCpuState};
use crate::start_info::{self, Module, StartInfo};
use crate::{GuestMemory, LoadError};
use alloc::vec::Vec;

/// Where the RSDP is written.
pub const RSDP_GPA: u64 = 0xf_0000;
/// Room reserved for the ACPI tables at the top of low RAM.
pub const ACPI_REGION_SIZE: u64 = 0x1_0000;
/// Longest command line accepted (before a bzImage's own `cmdline_size`).
pub const MAX_CMDLINE: u64 = 0x1_0000;
/// Smallest guest we lay out.
pub const MIN_GUEST_RAM: u64 = 4 << 20;
const PAGE: u64 = 4096;

/// A range of guest-physical memory the loader filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedRange {
    pub what: &'static str,
    pub start: u64,
    pub len: u64,
}

impl UsedRange {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What kind of image was loaded, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An ELF kernel with the PVH note.
    Elf { class: ElfClass },
    /// A bzImage whose payload is an uncompressed ELF with the PVH note;
    /// the payload was loaded as an ELF.
    BzImagePvh { protocol: u16 },
    /// A bzImage started through the Linux 64-bit boot protocol (its
    /// payload is compressed, or an ELF without the PVH note).
    BzImage64 { protocol: u16, payload: PayloadKind },
}

/// How to start the boot vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// 32-bit PVH entry: protected mode, paging off, `ebx` = `start_info`.
    Pvh { entry: u32, start_info: u32 },
    /// Linux 64-bit entry: long mode with the identity map at `cr3`, the
    /// boot GDT at `gdt` (CS 0x10, DS 0x18), `rsi` = `boot_params`.
    Linux64 {
        entry: u64,
        boot_params: u64,
        cr3: u64,
        gdt: u64,
    },
}

impl EntryState {
    /// The full initial register state for this entry.
    pub fn cpu_state(&self) -> InitialCpuState {
        match *self {
            EntryState::Pvh { entry, start_info } => paging::pvh_cpu_state(entry, start_info),
            EntryState::Linux64 {
                entry,
                boot_params,
                cr3,
                gdt,
            } => paging::linux64_cpu_state(entry, boot_params, cr3, gdt),
        }
    }
}

/// The result of [`load_pvh`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub kind: ImageKind,
    pub entry: EntryState,
    /// Everything written, sorted by address, not overlapping.
    pub ranges: Vec<UsedRange>,
    /// The memory map given to the guest.
    pub e820: Vec<E820Entry>,
    pub rsdp: u64,
    /// (GPA, length) of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    pub cmdline: u64,
    pub platform: PlatformLayout,
}

/// Options for [`load_with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub platform: PlatformLayout,
    /// `hvm_start_info.flags` (e.g. `SIF_PRIVILEGED | SIF_INITDOMAIN` for
    /// a PVH dom0).
    pub start_info_flags: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            platform: PlatformLayout::DEFAULT,
            start_info_flags: 0,
        }
    }
}

/// Load `image` (ELF with the PVH note, or bzImage) with `initrd` and
/// `cmdline` into `mem` for a guest with `vcpus` vCPUs, using the default
/// platform layout.
pub fn load_pvh(
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    mem: &mut dyn GuestMemory,
    vcpus: u32,
) -> Result<BootPlan, LoadError> {
    load_with_options(image, initrd, cmdline, mem, vcpus, &LoadOptions::default())
}

/// Free-space bookkeeping over guest RAM.
struct Allocator {
    map: GuestRamMap,
    used: Vec<UsedRange>,
}

impl Allocator {
    fn reserve(&mut self, what: &'static str, start: u64, len: u64) -> Result<(), LoadError> {
        if len == 0 {
            return Ok(());
        }
        if !self.map.contains(start, len) {
            return Err(LoadError::OutsideRam { what, start, len });
        }
        let end = start + len;
        if let Some(o) = self.used.iter().find(|u| start < u.end() && u.start < end) {
            return Err(LoadError::Overlap {
                what,
                start,
                len,
                other: o.what,
                other_start: o.start,
                other_len: o.len,
            });
        }
        self.used.push(UsedRange { what, start, len });
        Ok(())
    }

    fn collides(&self, start: u64, len: u64) -> Option<UsedRange> {
        let end = start + len;
        self.used
            .iter()
            .filter(|u| start < u.end() && u.start < end)
            .min_by_key(|u| u.start)
            .copied()
    }

    /// Lowest aligned free spot in [lo, hi).
    fn find_lowest(&self, lo: u64, hi: u64, len: u64, align: u64) -> Option<u64> {
        let mut pos = lo;
        loop {
            let cand = align_up(pos, align)?;
            if cand.checked_add(len)? > hi {
                return None;
            }
            match self
                .used
                .iter()
                .filter(|u| cand < u.end() && u.start < cand + len)
                .map(|u| u.end())
                .max()
            {
                None => return Some(cand),
                Some(e) => pos = e,
            }
        }
    }

    /// Highest aligned free spot in [lo, hi).
    fn find_highest(&self, lo: u64, hi: u64, len: u64, align: u64) -> Option<u64> {
        let mut cand = align_down(hi.checked_sub(len)?, align);
        loop {
            if cand < lo {
                return None;
            }
            match self.collides(cand, len) {
                None => return Some(cand),
                Some(_) => {
                    let lowest = self
                        .used
                        .iter()
                        .filter(|u| cand < u.end() && u.start < cand + len)
                        .map(|u| u.start)
                        .min()?;
                    cand = align_down(lowest.checked_sub(len)?, align);
                }
            }
        }
    }

    /// Small boot data: lowest spot from 0x1000, preferring below 0xA0000.
    fn alloc_low(&mut self, what: &'static str, len: u64, align: u64) -> Result<u64, LoadError> {
        let at = self
            .find_lowest(PAGE, e820::LOW_RAM_END, len, align)
            .or_else(|| self.find_lowest(e820::ONE_MIB, self.map.low_end, len, align))
            .ok_or(LoadError::NoSpace { what, size: len })?;
        self.reserve(what, at, len)?;
        Ok(at)
    }

    fn alloc_high(
        &mut self,
        what: &'static str,
        len: u64,
        align: u64,
        limit: u64,
    ) -> Result<u64, LoadError> {
        let hi = limit.min(self.map.low_end);
        let at = self
            .find_highest(e820::ONE_MIB, hi, len, align)
            .ok_or(LoadError::NoSpace { what, size: len })?;
        self.reserve(what, at, len)?;
        Ok(at)
    }
}

/// What the kernel part of the image turned into.
enum Kernel<'a> {
    Pvh {
        elf: ElfImage,
        bytes: &'a [u8],
        kind: ImageKind,
    },
    Linux64 {
        bz: bzimage::BzImage<'a>,
        payload: PayloadKind,
    },
}

fn classify(image: &[u8]) -> Result<Kernel<'_>, LoadError> {
    if elf::is_elf(image) {
        let e = elf::parse(image)?;
        if e.pvh_entry.is_none() {
            return Err(LoadError::NoPvhEntry);
        }
        let kind = ImageKind::Elf { class: e.class };
        return Ok(Kernel::Pvh {
            elf: e,
            bytes: image,
            kind,
        });
    }
    if bzimage::is_bzimage(image) {
        let bz = bzimage::parse(image)?;
        let payload = bz.payload_kind();
        if payload == PayloadKind::Elf {
            // QEMU's approach: an uncompressed ELF payload may carry the
            // PVH note; use it when it does.
            match elf::parse(bz.payload) {
                Ok(e) if e.pvh_entry.is_some() => {
                    let kind = ImageKind::BzImagePvh {
                        protocol: bz.header.version,
                    };
                    return Ok(Kernel::Pvh {
                        elf: e,
                        bytes: bz.payload,
                        kind,
                    });
                }
                Ok(_) => log::info!(
                    "bzImage ELF payload has no PVH note; using the 64-bit boot protocol"
                ),
                Err(err) => log::warn!(
                    "bzImage ELF payload unusable ({err}); using the 64-bit boot protocol"
                ),
            }
        } else if let PayloadKind::Compressed(c) = payload {
            log::info!("bzImage payload is {c}-compressed; using the Linux 64-bit boot protocol");
        }
        bz.check_64bit()?;
        return Ok(Kernel::Linux64 { bz, payload });
    }
    Err(LoadError::UnknownFormat)
}

/// [`load_pvh`] with an explicit platform layout and start_info flags.
pub fn load_with_options(
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    mem: &mut dyn GuestMemory,
    vcpus: u32,
    opts: &LoadOptions,
) -> Result<BootPlan, LoadError> {
    if vcpus == 0 || vcpus > acpi::MAX_VCPUS {
        return Err(LoadError::BadVcpuCount(vcpus));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineHasNul);
    }
    let map = GuestRamMap::new(mem.size());
    if map.low_end < MIN_GUEST_RAM {
        return Err(LoadError::MemoryTooSmall {
            have: mem.size(),
            need: MIN_GUEST_RAM,
        });
    }
    let kernel = classify(image)?;
    let mut a = Allocator {
        map,
        used: Vec::new(),
    };
    a.reserve("null page", 0, PAGE)?;
    a.reserve(
        "legacy VGA/BIOS area",
        e820::LOW_RAM_END,
        e820::ONE_MIB - e820::LOW_RAM_END,
    )?;

    // ACPI tables at the top of low RAM.
    let acpi_base = align_down(map.low_end - ACPI_REGION_SIZE, PAGE);
    a.reserve("ACPI tables", acpi_base, ACPI_REGION_SIZE)?;
    let tables = acpi::build_tables(acpi_base, &opts.platform, vcpus)?;
    if tables.len() > ACPI_REGION_SIZE {
        return Err(LoadError::NoSpace {
            what: "ACPI tables",
            size: tables.len(),
        });
    }

    // The kernel.
    let (kind, pvh_entry) = match &kernel {
        Kernel::Pvh { elf, kind, .. } => {
            for s in &elf.segments {
                a.reserve("kernel segment", s.paddr, s.memsz)?;
            }
            (*kind, elf.pvh_entry)
        }
        Kernel::Linux64 { bz, payload } => (
            ImageKind::BzImage64 {
                protocol: bz.header.version,
                payload: *payload,
            },
            None,
        ),
    };
    let mut linux_load = 0u64;
    if let Kernel::Linux64 { bz, .. } = &kernel {
        let h = &bz.header;
        let need = bz.memory_needed();
        let align = if h.kernel_alignment == 0 {
            0x20_0000
        } else {
            u64::from(h.kernel_alignment)
        };
        let pref = if h.pref_address != 0 {
            h.pref_address
        } else {
            u64::from(h.code32_start).max(e820::ONE_MIB)
        };
        let first = if h.relocatable_kernel {
            align_up(pref, align).unwrap_or(pref)
        } else {
            pref
        };
        linux_load = match a.reserve("kernel", first, need) {
            Ok(()) => first,
            Err(e) if !h.relocatable_kernel => return Err(e),
            Err(_) => {
                let at = a
                    .find_lowest(e820::ONE_MIB, map.low_end, need, align)
                    .ok_or(LoadError::NoSpace {
                        what: "kernel (init_size)",
                        size: need,
                    })?;
                a.reserve("kernel", at, need)?;
                at
            }
        };
    }

    // The initrd, high.
    let initrd_at = match initrd {
        Some(rd) if !rd.is_empty() => {
            let limit = match &kernel {
                Kernel::Linux64 { bz, .. } => {
                    u64::from(bz.header.initrd_addr_max).saturating_add(1)
                }
                Kernel::Pvh { .. } => e820::FOUR_GIB,
            };
            Some(a.alloc_high("initrd", rd.len() as u64, PAGE, limit)?)
        }
        _ => None,
    };

    // The command line.
    let max_cmdline = match &kernel {
        Kernel::Linux64 { bz, .. } if bz.header.cmdline_size != 0 => {
            u64::from(bz.header.cmdline_size).min(MAX_CMDLINE)
        }
        _ => MAX_CMDLINE,
    };
    let cmd_len = cmdline.len() as u64;
    if cmd_len > max_cmdline {
        return Err(LoadError::CmdlineTooLong {
            len: cmd_len,
            max: max_cmdline,
        });
    }
    let cmdline_at = a.alloc_low("command line", cmd_len + 1, 16)?;

    // The memory map.
    let mut eb = map.base_e820();
    eb.add(acpi_base, tables.nvs_len(), E820Type::Nvs);
    eb.add(
        acpi_base + tables.nvs_len(),
        ACPI_REGION_SIZE - tables.nvs_len(),
        E820Type::Acpi,
    );
    let e820 = eb.finish();
    e820::validate(&e820)?;

    // Boot data and entry.
    let initrd_len = initrd.map_or(0, |r| r.len() as u64);
    let entry = match &kernel {
        Kernel::Pvh { .. } => {
            let si_at = a.alloc_low("hvm_start_info", start_info::START_INFO_SIZE as u64, 8)?;
            let mods: Vec<Module> = initrd_at
                .map(|p| Module {
                    paddr: p,
                    size: initrd_len,
                    cmdline_paddr: 0,
                })
                .into_iter()
                .collect();
            let modlist = start_info::modlist_bytes(&mods);
            let modlist_at = if mods.is_empty() {
                0
            } else {
                a.alloc_low("module list", modlist.len() as u64, 8)?
            };
            let memmap = start_info::memmap_bytes(&e820);
            let memmap_at = a.alloc_low("memory map", memmap.len() as u64, 8)?;
            let si = StartInfo {
                flags: opts.start_info_flags,
                nr_modules: mods.len() as u32,
                modlist_paddr: modlist_at,
                cmdline_paddr: cmdline_at,
                rsdp_paddr: RSDP_GPA,
                memmap_paddr: memmap_at,
                memmap_entries: e820.len() as u32,
            };
            mem.write(si_at, &si.to_bytes())?;
            if modlist_at != 0 {
                mem.write(modlist_at, &modlist)?;
            }
            mem.write(memmap_at, &memmap)?;
            let si_at = u32::try_from(si_at).map_err(|_| LoadError::NoSpace {
                what: "hvm_start_info below 4 GiB",
                size: 56,
            })?;
            EntryState::Pvh {
                entry: pvh_entry.unwrap_or(0),
                start_info: si_at,
            }
        }
        Kernel::Linux64 { bz, .. } => {
            let bp_at = a.alloc_low("boot_params", bzimage::BOOT_PARAMS_SIZE as u64, PAGE)?;
            let pt_at = a.alloc_low(
                "identity page tables",
                paging::IDENTITY_PT_PAGES * PAGE,
                PAGE,
            )?;
            let gdt_at = a.alloc_low("boot GDT", paging::GDT_SIZE as u64, 16)?;
            let bp = bzimage::build_boot_params(
                bz,
                &bzimage::BootParamsInput {
                    cmdline_gpa: cmdline_at,
                    ramdisk_gpa: initrd_at.unwrap_or(0),
                    ramdisk_size: if initrd_at.is_some() { initrd_len } else { 0 },
                    rsdp_gpa: RSDP_GPA,
                    e820: &e820,
                },
            )?;
            mem.write(bp_at, &bp)?;
            mem.write(pt_at, &paging::identity_page_tables(pt_at))?;
            mem.write(gdt_at, &paging::boot_gdt())?;
            EntryState::Linux64 {
                entry: linux_load + bzimage::ENTRY64_OFFSET,
                boot_params: bp_at,
                cr3: pt_at,
                gdt: gdt_at,
            }
        }
    };

    // Everything else.
    match &kernel {
        Kernel::Pvh { elf, bytes, .. } => elf::load_segments(elf, bytes, mem)?,
        Kernel::Linux64 { bz, .. } => {
            mem.write(linux_load, bz.kernel)?;
            let need = bz.memory_needed();
            let klen = bz.kernel.len() as u64;
            // init_size beyond the image: the decompressor's workspace
            // and BSS; zero it so no stale data is visible.
            mem.fill(linux_load + klen, need - klen, 0)?;
        }
    }
    if let (Some(at), Some(rd)) = (initrd_at, initrd) {
        mem.write(at, rd)?;
    }
    let mut c = Vec::with_capacity(cmdline.len() + 1);
    c.extend_from_slice(cmdline.as_bytes());
    c.push(0);
    mem.write(cmdline_at, &c)?;
    mem.fill(acpi_base, ACPI_REGION_SIZE, 0)?;
    mem.write(acpi_base, &tables.bytes)?;
    mem.write(RSDP_GPA, &tables.rsdp)?;

    let mut ranges: Vec<UsedRange> = a
        .used
        .iter()
        .filter(|u| u.what != "null page" && u.what != "legacy VGA/BIOS area")
        .copied()
        .collect();
    ranges.push(UsedRange {
        what: "RSDP",
        start: RSDP_GPA,
        len: acpi::RSDP_SIZE as u64,
    });
    ranges.sort_by_key(|r| r.start);
    for r in &ranges {
        log::debug!("guest {:#012x}..{:#012x} {}", r.start, r.end(), r.what);
    }
    Ok(BootPlan {
        kind,
        entry,
        ranges,
        e820,
        rsdp: RSDP_GPA,
        initrd: initrd_at.map(|p| (p, initrd_len)),
        cmdline: cmdline_at,
        platform: opts.platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testimg::{self, Seg};
    use crate::VecMemory;
    use alloc::vec;

    fn pvh_elf(elf64: bool) -> Vec<u8> {
        let segs = vec![
            Seg {
                paddr: 0x100_0000,
                data: vec![0x90; 0x2000],
                memsz: 0x3000,
            },
            Seg {
                paddr: 0x100_4000,
                data: vec![0xcc; 0x100],
                memsz: 0x100,
            },
        ];
        testimg::build(elf64, &segs, &testimg::pvh_note(0x100_0010))
    }

    fn rd64(m: &VecMemory, gpa: u64) -> u64 {
        u64::from_le_bytes(m.read(gpa, 8).unwrap().try_into().unwrap())
    }
    fn rd32(m: &VecMemory, gpa: u64) -> u32 {
        u32::from_le_bytes(m.read(gpa, 4).unwrap().try_into().unwrap())
    }

    fn check_no_overlaps(plan: &BootPlan, ram: u64) {
        for w in plan.ranges.windows(2) {
            assert!(w[0].end() <= w[1].start, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
        for r in &plan.ranges {
            assert!(r.end() <= ram && r.start >= PAGE, "{r:x?}");
        }
        e820::validate(&plan.e820).unwrap();
    }

    #[test]
    fn elf_pvh_layout() {
        for elf64 in [true, false] {
            let ram = 64u64 << 20;
            let mut mem = VecMemory::new(ram as usize);
            let initrd = vec![0x5a; 0x12345];
            let plan =
                load_pvh(&pvh_elf(elf64), Some(&initrd), "console=ttyS0", &mut mem, 2).unwrap();
            check_no_overlaps(&plan, ram);
            let EntryState::Pvh { entry, start_info } = plan.entry else {
                panic!()
            };
            assert_eq!(entry, 0x100_0010);
            let st = plan.entry.cpu_state();
            assert_eq!(st.rbx, start_info as u64);
            assert_eq!(st.rip, 0x100_0010);
            let si = start_info as u64;
            assert_eq!(rd32(&mem, si), start_info::XEN_HVM_START_MAGIC_VALUE);
            assert_eq!(rd32(&mem, si + 4), 1);
            assert_eq!(rd32(&mem, si + 12), 1);
            // Module list -> initrd, 4K aligned, near the top, below ACPI.
            let ml = rd64(&mem, si + 16);
            let (ip, il) = plan.initrd.unwrap();
            assert_eq!(rd64(&mem, ml), ip);
            assert_eq!(rd64(&mem, ml + 8), 0x12345);
            assert_eq!(il, 0x12345);
            assert_eq!(ip % PAGE, 0);
            assert!(
                ip + il <= ram - ACPI_REGION_SIZE && ip + il > ram - ACPI_REGION_SIZE - 2 * PAGE
            );
            assert!(mem
                .read(ip, il as usize)
                .unwrap()
                .iter()
                .all(|&b| b == 0x5a));
            // Command line.
            let cl = rd64(&mem, si + 24);
            assert_eq!(mem.read(cl, 14).unwrap(), b"console=ttyS0\0");
            // RSDP and memmap.
            assert_eq!(rd64(&mem, si + 32), RSDP_GPA);
            assert_eq!(mem.read(RSDP_GPA, 8).unwrap(), b"RSD PTR ");
            let mm = rd64(&mem, si + 40);
            let n = rd32(&mem, si + 48) as usize;
            assert_eq!(n, plan.e820.len());
            for (i, e) in plan.e820.iter().enumerate() {
                assert_eq!(rd64(&mem, mm + 24 * i as u64), e.addr);
                assert_eq!(rd64(&mem, mm + 24 * i as u64 + 8), e.size);
                assert_eq!(rd32(&mem, mm + 24 * i as u64 + 16), e.kind as u32);
            }
            // Kernel bytes and BSS.
            assert_eq!(mem.read(0x100_0000, 1).unwrap(), &[0x90]);
            assert_eq!(mem.read(0x100_2000, 1).unwrap(), &[0]);
            assert_eq!(mem.read(0x100_4000, 1).unwrap(), &[0xcc]);
            // e820: ACPI region reported as NVS + ACPI, the rest RAM.
            assert!(plan
                .e820
                .iter()
                .any(|e| e.kind == E820Type::Acpi && e.end() == ram));
            assert!(plan
                .e820
                .iter()
                .any(|e| e.kind == E820Type::Nvs && e.addr == ram - ACPI_REGION_SIZE));
            // Boot data is in RAM (the kernel reads it) and not in reserved ranges.
            let ram_has = |a: u64| {
                plan.e820
                    .iter()
                    .any(|e| e.kind == E820Type::Ram && a >= e.addr && a < e.end())
            };
            assert!(ram_has(si) && ram_has(ip) && ram_has(0x100_0000));
        }
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let mut mem = VecMemory::new(32 << 20);
        let plan = load_pvh(&pvh_elf(true), None, "", &mut mem, 1).unwrap();
        let EntryState::Pvh { start_info, .. } = plan.entry else {
            panic!()
        };
        assert_eq!(rd32(&mem, start_info as u64 + 12), 0);
        assert_eq!(rd64(&mem, start_info as u64 + 16), 0);
        assert!(plan.initrd.is_none());
    }

    #[test]
    fn errors_are_reported() {
        let mut mem = VecMemory::new(32 << 20);
        // Segment above guest RAM.
        let img = testimg::build(
            true,
            &[Seg {
                paddr: 0x300_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
            &testimg::pvh_note(0x300_0000),
        );
        let err = load_pvh(&img, None, "", &mut mem, 1).unwrap_err();
        assert!(matches!(err, LoadError::OutsideRam { .. }), "{err}");
        // Segment on top of the BIOS area.
        let img = testimg::build(
            true,
            &[Seg {
                paddr: 0xe0000,
                data: vec![1; 16],
                memsz: 0x30000,
            }],
            &testimg::pvh_note(0xe0000),
        );
        let err = load_pvh(&img, None, "", &mut mem, 1).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Overlap {
                    other: "legacy VGA/BIOS area",
                    ..
                }
            ),
            "{err}"
        );
        assert!(alloc::format!("{err}").contains("overlaps legacy VGA/BIOS area"));
        // Segment over the ACPI tables.
        let img = testimg::build(
            true,
            &[Seg {
                paddr: (32 << 20) - 0x2000,
                data: vec![1; 16],
                memsz: 16,
            }],
            &testimg::pvh_note((32 << 20) - 0x2000),
        );
        assert!(matches!(
            load_pvh(&img, None, "", &mut mem, 1),
            Err(LoadError::Overlap {
                other: "ACPI tables",
                ..
            })
        ));
        // No PVH note.
        let img = testimg::build(
            true,
            &[Seg {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
            &[],
        );
        assert_eq!(
            load_pvh(&img, None, "", &mut mem, 1),
            Err(LoadError::NoPvhEntry)
        );
        // Initrd too large.
        let big = vec![0u8; 31 << 20];
        assert!(matches!(
            load_pvh(&pvh_elf(true), Some(&big), "", &mut mem, 1),
            Err(LoadError::NoSpace { what: "initrd", .. })
        ));
        // Junk, vCPUs, cmdline, tiny memory.
        assert_eq!(
            load_pvh(b"hello", None, "", &mut mem, 1),
            Err(LoadError::UnknownFormat)
        );
        assert_eq!(
            load_pvh(&pvh_elf(true), None, "", &mut mem, 0),
            Err(LoadError::BadVcpuCount(0))
        );
        assert_eq!(
            load_pvh(&pvh_elf(true), None, "a\0b", &mut mem, 1),
            Err(LoadError::CmdlineHasNul)
        );
        let long = "x".repeat(MAX_CMDLINE as usize + 1);
        assert!(matches!(
            load_pvh(&pvh_elf(true), None, &long, &mut mem, 1),
            Err(LoadError::CmdlineTooLong { .. })
        ));
        let mut tiny = VecMemory::new(1 << 20);
        assert!(matches!(
            load_pvh(&pvh_elf(true), None, "", &mut tiny, 1),
            Err(LoadError::MemoryTooSmall { .. })
        ));
    }

    fn bz(payload: &[u8]) -> Vec<u8> {
        crate::bzimage::testimg::build(
            0x020f,
            crate::bzimage::XLF_KERNEL_64 | crate::bzimage::XLF_CAN_BE_LOADED_ABOVE_4G,
            payload,
            0x8000,
        )
    }

    #[test]
    fn bzimage_compressed_uses_linux64() {
        let img = bz(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]);
        let ram = 64u64 << 20;
        let mut mem = VecMemory::new(ram as usize);
        let initrd = vec![7u8; 0x3000];
        let plan = load_pvh(
            &img,
            Some(&initrd),
            "console=ttyS0 root=/dev/vda",
            &mut mem,
            4,
        )
        .unwrap();
        check_no_overlaps(&plan, ram);
        assert_eq!(
            plan.kind,
            ImageKind::BzImage64 {
                protocol: 0x020f,
                payload: PayloadKind::Compressed(crate::bzimage::Compression::Xz)
            }
        );
        let EntryState::Linux64 {
            entry,
            boot_params,
            cr3,
            gdt,
        } = plan.entry
        else {
            panic!()
        };
        assert_eq!(entry, 0x100_0200);
        // Kernel copied to pref_address; init_size zeroed past it.
        assert_eq!(mem.read(0x100_0000, 0x8000).unwrap(), &img[5 * 512..]);
        let k = plan.ranges.iter().find(|r| r.what == "kernel").unwrap();
        assert_eq!((k.start, k.len), (0x100_0000, 0x40_0000));
        // boot_params.
        assert_eq!(mem.read(boot_params + 0x202, 4).unwrap(), b"HdrS");
        let cl = rd32(&mem, boot_params + 0x228) as u64;
        assert_eq!(mem.read(cl, 28).unwrap(), b"console=ttyS0 root=/dev/vda\0");
        let (ip, il) = plan.initrd.unwrap();
        assert_eq!(rd32(&mem, boot_params + 0x218) as u64, ip);
        assert_eq!(rd32(&mem, boot_params + 0x21c) as u64, il);
        assert!(ip + il <= 0x7fff_ffff);
        assert_eq!(
            mem.read(boot_params + 0x1e8, 1).unwrap()[0] as usize,
            plan.e820.len()
        );
        assert_eq!(rd64(&mem, boot_params + 0x70), RSDP_GPA);
        // Page tables and GDT.
        assert_eq!(rd64(&mem, cr3) & !0xfff, cr3 + 0x1000);
        assert_eq!(rd64(&mem, gdt + 16), crate::paging::GDT_CODE64);
        let st = plan.entry.cpu_state();
        assert_eq!(
            (st.rip, st.rsi, st.cr3, st.gdtr_base),
            (entry, boot_params, cr3, gdt)
        );
        assert_eq!(st.cs.selector, 0x10);
        // A too-long command line for this kernel (cmdline_size 2047).
        let long = "y".repeat(2048);
        assert_eq!(
            load_pvh(&img, None, &long, &mut mem, 1),
            Err(LoadError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
    }

    #[test]
    fn bzimage_with_pvh_elf_payload() {
        let payload = pvh_elf(true);
        let img = bz(&payload);
        let mut mem = VecMemory::new(64 << 20);
        let plan = load_pvh(&img, None, "x", &mut mem, 1).unwrap();
        assert_eq!(plan.kind, ImageKind::BzImagePvh { protocol: 0x020f });
        assert!(matches!(
            plan.entry,
            EntryState::Pvh {
                entry: 0x100_0010,
                ..
            }
        ));
        // An ELF payload without the note falls back to the 64-bit protocol.
        let plain = testimg::build(
            true,
            &[Seg {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 16,
            }],
            &[],
        );
        let img = bz(&plain);
        let plan = load_pvh(&img, None, "x", &mut mem, 1).unwrap();
        assert_eq!(
            plan.kind,
            ImageKind::BzImage64 {
                protocol: 0x020f,
                payload: PayloadKind::Elf
            }
        );
    }

    #[test]
    fn big_guest_layout_stays_below_pci_hole() {
        // A GuestMemory that accepts writes only below the PCI hole, for a
        // 6 GiB guest, without allocating it.
        struct Sparse(u64, Vec<(u64, u64)>);
        impl GuestMemory for Sparse {
            fn size(&self) -> u64 {
                self.0
            }
            fn write(&mut self, gpa: u64, d: &[u8]) -> Result<(), LoadError> {
                self.fill(gpa, d.len() as u64, 0)
            }
            fn fill(&mut self, gpa: u64, len: u64, _: u8) -> Result<(), LoadError> {
                if gpa + len > e820::PCI_HOLE_START {
                    return Err(LoadError::GuestWrite { gpa, len });
                }
                self.1.push((gpa, len));
                Ok(())
            }
        }
        let mut mem = Sparse(6 << 30, Vec::new());
        let plan = load_pvh(&pvh_elf(true), Some(&[1, 2, 3]), "", &mut mem, 8).unwrap();
        check_no_overlaps(&plan, e820::PCI_HOLE_START);
        assert_eq!(plan.e820.last().unwrap().addr, e820::FOUR_GIB);
        let (ip, _) = plan.initrd.unwrap();
        assert!(
            ip < e820::PCI_HOLE_START - ACPI_REGION_SIZE
                && ip > e820::PCI_HOLE_START - ACPI_REGION_SIZE - 2 * PAGE
        );
    }

    #[test]
    fn allocator_finds_gaps() {
        let mut a = Allocator {
            map: GuestRamMap::new(16 << 20),
            used: Vec::new(),
        };
        a.reserve("a", 0x1000, 0x1000).unwrap();
        a.reserve("b", 0x3000, 0x1000).unwrap();
        assert_eq!(a.find_lowest(0x1000, 0xa0000, 0x1000, 0x1000), Some(0x2000));
        assert_eq!(a.find_lowest(0x1000, 0xa0000, 0x1001, 0x1000), Some(0x4000));
        assert_eq!(a.find_highest(0x1000, 0x4000, 0x1000, 0x1000), Some(0x2000));
        assert_eq!(a.find_highest(0x1000, 0x4000, 0x2000, 0x1000), None);
        assert!(matches!(
            a.reserve("c", 0x1800, 0x10),
            Err(LoadError::Overlap { other: "a", .. })
        ));
        assert!(matches!(
            a.reserve("d", (16 << 20) - 1, 2),
            Err(LoadError::OutsideRam { .. })
        ));
        assert!(matches!(
            a.reserve("e", u64::MAX, 2),
            Err(LoadError::OutsideRam { .. })
        ));
    }
}
