//! [`FwCfgBuilder`]: the items and files a PC guest's firmware expects,
//! as QEMU's `fw_cfg_init_io_dma` + `fw_cfg_arch_create` + `pc_memory_init`
//! + `x86_load_linux` + ACPI build put them.

use super::linux::{
    plan_linux_boot, LinuxBootConfig, LinuxBootError, LinuxBootPlan, LINUXBOOT_DMA_ROM,
};
use super::table_loader::{acpi_script, ACPI_RSDP_FILE, ACPI_TABLES_FILE, TABLE_LOADER_FILE};
use super::{
    key, ExternalBlob, FwCfg, ItemData, DIR_ENTRY_SIZE, FILE_NAME_SIZE, ID_DMA, ID_TRADITIONAL,
};
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use ferrite_loader::acpi::{PlatformLayout, MAX_VCPUS};
use ferrite_loader::acpi_blob::build_relocatable;
use ferrite_loader::e820::{E820Builder, E820Entry, E820Type, FOUR_GIB, ONE_MIB, PCI_HOLE_START};
use ferrite_loader::LoadError;

/// Why a configuration cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// A file name is empty, contains NUL, or has 56 bytes or more.
    BadFileName(String),
    DuplicateFile(String),
    TooManyFiles(usize),
    /// An item of 4 GiB or more, or an external range that overflows.
    ItemTooLarge {
        what: String,
        len: u64,
    },
    /// vCPU count outside 1..=255.
    BadVcpuCount(u32),
    /// RAM layout the PC map cannot describe.
    BadRam(&'static str),
    /// A numbered item selector in the file range (0x20..=0x3fff).
    BadSelector(u16),
    /// Something needs an earlier call: `ram` before `linux`, `cpus`
    /// before building ACPI tables.
    Missing(&'static str),
    Linux(LinuxBootError),
    Acpi(LoadError),
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FwCfgError::*;
        match self {
            BadFileName(n) => write!(
                f,
                "fw_cfg file name {n:?} must be 1..={} bytes without NUL",
                FILE_NAME_SIZE - 1
            ),
            DuplicateFile(n) => write!(f, "duplicate fw_cfg file name {n:?}"),
            TooManyFiles(n) => write!(f, "{n} fw_cfg files; at most {} fit", MAX_FILES),
            ItemTooLarge { what, len } => {
                write!(f, "fw_cfg item {what} of {len:#x} bytes is too large")
            }
            BadVcpuCount(n) => write!(f, "{n} vCPUs; supported are 1..={MAX_VCPUS}"),
            BadRam(why) => write!(f, "bad RAM layout: {why}"),
            BadSelector(s) => write!(f, "selector {s:#x} is in the file range; add files by name"),
            Missing(what) => write!(f, "fw_cfg configuration incomplete: {what}"),
            Linux(e) => write!(f, "Linux direct boot: {e}"),
            Acpi(e) => write!(f, "ACPI tables: {e}"),
        }
    }
}

impl From<LinuxBootError> for FwCfgError {
    fn from(e: LinuxBootError) -> Self {
        FwCfgError::Linux(e)
    }
}

/// Files get selectors FILE_FIRST..=0x3fff.
pub const MAX_FILES: usize = (key::ENTRY_MASK - key::FILE_FIRST) as usize + 1;

/// CMOS bytes QEMU's `pc_cmos_init` sets for memory size and CPU count,
/// which SeaBIOS reads before fw_cfg (its low-RAM size comes from CMOS
/// 0x34/0x35, or 0x30/0x31 below 16 MiB). `(index, value)` pairs for the
/// RTC model's `set_cmos`.
pub fn pc_cmos_memory(below_4g: u64, above_4g: u64, vcpus: u32) -> Vec<(u8, u8)> {
    let base_kib = (below_4g / 1024).min(640);
    let ext_kib = (below_4g.saturating_sub(ONE_MIB) / 1024).min(0xffff);
    let above_16m = (below_4g.saturating_sub(16 << 20) / 0x1_0000).min(0xffff);
    let high = above_4g / 0x1_0000;
    let b = |v: u64, s: u32| (v >> s) as u8;
    alloc::vec![
        (0x15, b(base_kib, 0)),
        (0x16, b(base_kib, 8)),
        (0x17, b(ext_kib, 0)),
        (0x18, b(ext_kib, 8)),
        (0x30, b(ext_kib, 0)),
        (0x31, b(ext_kib, 8)),
        (0x34, b(above_16m, 0)),
        (0x35, b(above_16m, 8)),
        (0x5b, b(high, 0)),
        (0x5c, b(high, 8)),
        (0x5d, b(high, 16)),
        (0x5f, vcpus.saturating_sub(1) as u8),
    ]
}

fn check_name(name: &str) -> Result<(), FwCfgError> {
    if name.is_empty() || name.len() >= FILE_NAME_SIZE || name.as_bytes().contains(&0) {
        return Err(FwCfgError::BadFileName(name.to_string()));
    }
    Ok(())
}

fn check_size(what: &str, d: &ItemData) -> Result<(), FwCfgError> {
    let ok = match d {
        ItemData::Bytes(b) => b.len() < u32::MAX as usize,
        ItemData::External { offset, len, .. } => {
            *len < u64::from(u32::MAX) && offset.checked_add(*len).is_some()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(FwCfgError::ItemTooLarge {
            what: what.to_string(),
            len: d.len(),
        })
    }
}

fn bytes(v: &[u8]) -> ItemData {
    ItemData::Bytes(v.to_vec())
}

/// Collects a guest's fw_cfg contents. Every setter is optional; what is
/// not set is absent (reads as zeros), as with a QEMU machine lacking it.
///
/// ```text
/// let mut b = FwCfgBuilder::new();
/// b.ram(below_4g, above_4g)?.cpus(vcpus)?.acpi(HVM_PLATFORM).bootorder("/pci@i0cf8/ide@1,1/drive@0/disk@0\n");
/// b.linuxboot_rom(ExternalBlob { handle: ROM, len: rom_len })?;
/// let plan = b.linux(&LinuxBootConfig { image_head, kernel, initrd, cmdline })?;
/// let fw = b.build()?;
/// ```
#[derive(Clone, Debug)]
pub struct FwCfgBuilder {
    items: BTreeMap<u16, ItemData>,
    files: BTreeMap<String, ItemData>,
    dma: bool,
    ram: Option<(u64, u64)>,
    reserved: Vec<(u64, u64)>,
    vcpus: Option<u32>,
    acpi: Option<PlatformLayout>,
    bootorder: Option<String>,
    boot_fail_wait: u32,
}

impl Default for FwCfgBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfgBuilder {
    /// Signature, ID (with DMA), zero UUID, `nographic` 1, boot menu off,
    /// IRQ0 override 1, `etc/boot-fail-wait` -1 (QEMU's defaults).
    pub fn new() -> Self {
        let mut items = BTreeMap::new();
        items.insert(key::SIGNATURE, bytes(b"QEMU"));
        items.insert(key::UUID, bytes(&[0; 16]));
        items.insert(key::NOGRAPHIC, bytes(&1u16.to_le_bytes()));
        items.insert(key::BOOT_MENU, bytes(&0u16.to_le_bytes()));
        items.insert(key::IRQ0_OVERRIDE, bytes(&1u32.to_le_bytes()));
        Self {
            items,
            files: BTreeMap::new(),
            dma: true,
            ram: None,
            reserved: Vec::new(),
            vcpus: None,
            acpi: None,
            bootorder: None,
            boot_fail_wait: u32::MAX,
        }
    }

    /// Offer the DMA interface (default on).
    pub fn dma(&mut self, on: bool) -> &mut Self {
        self.dma = on;
        self
    }

    /// Guest RAM: `below_4g` bytes from 0 (at most up to the PCI hole at
    /// 0xC0000000, as `ferrite_loader::e820` lays it out) and `above_4g`
    /// bytes from 4 GiB. Gives `RAM_SIZE` and `etc/e820`.
    pub fn ram(&mut self, below_4g: u64, above_4g: u64) -> Result<&mut Self, FwCfgError> {
        if below_4g < ONE_MIB {
            return Err(FwCfgError::BadRam("less than 1 MiB below 4 GiB"));
        }
        if below_4g > PCI_HOLE_START {
            return Err(FwCfgError::BadRam(
                "RAM below 4 GiB runs into the PCI hole at 0xC0000000",
            ));
        }
        if (below_4g | above_4g) & 0xfff != 0 {
            return Err(FwCfgError::BadRam("sizes must be multiples of 4 KiB"));
        }
        if FOUR_GIB.checked_add(above_4g).is_none() {
            return Err(FwCfgError::BadRam("RAM above 4 GiB overflows"));
        }
        self.ram = Some((below_4g, above_4g));
        Ok(self)
    }

    /// An extra e820 reservation (e.g. pages the hypervisor keeps in the
    /// hole); goes to `etc/e820` and the legacy `E820_TABLE` item.
    pub fn reserve(&mut self, addr: u64, len: u64) -> &mut Self {
        if len > 0 && addr.checked_add(len).is_some() {
            self.reserved.push((addr, len));
        }
        self
    }

    /// `vcpus` CPUs present at boot, and as many possible: `NB_CPUS`,
    /// `MAX_CPUS`, `etc/boot-cpus`, the NUMA item (no nodes). SeaBIOS
    /// waits until exactly this many CPUs answered its INIT-SIPI-SIPI.
    pub fn cpus(&mut self, vcpus: u32) -> Result<&mut Self, FwCfgError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(FwCfgError::BadVcpuCount(vcpus));
        }
        self.vcpus = Some(vcpus);
        Ok(self)
    }

    pub fn nographic(&mut self, on: bool) -> &mut Self {
        self.items
            .insert(key::NOGRAPHIC, bytes(&u16::from(on).to_le_bytes()));
        self
    }

    /// SeaBIOS's "Press ESC for boot menu" (`etc/show-boot-menu`).
    pub fn boot_menu(&mut self, on: bool) -> &mut Self {
        self.items
            .insert(key::BOOT_MENU, bytes(&u16::from(on).to_le_bytes()));
        self
    }

    /// Milliseconds SeaBIOS waits before rebooting when nothing boots;
    /// `None` = never (QEMU's default).
    pub fn boot_fail_wait_ms(&mut self, ms: Option<u32>) -> &mut Self {
        self.boot_fail_wait = ms.unwrap_or(u32::MAX);
        self
    }

    pub fn uuid(&mut self, uuid: [u8; 16]) -> &mut Self {
        self.items.insert(key::UUID, bytes(&uuid));
        self
    }

    /// The `bootorder` file: OpenFirmware device paths, one per line. When a
    /// `genroms/linuxboot_dma.bin` ROM is present, its entry is put first
    /// (QEMU gives it bootindex 0).
    pub fn bootorder(&mut self, text: &str) -> &mut Self {
        self.bootorder = Some(text.to_string());
        self
    }

    /// ACPI tables from `ferrite_loader` for this platform (use
    /// `ferrite_loader::acpi_blob::HVM_PLATFORM` for an HVM guest: legacy
    /// PICs, i8042), as `etc/acpi/tables`, `etc/acpi/rsdp` and the
    /// `etc/table-loader` script. Built by [`FwCfgBuilder::build`], which
    /// needs [`FwCfgBuilder::cpus`].
    pub fn acpi(&mut self, platform: PlatformLayout) -> &mut Self {
        self.acpi = Some(platform);
        self
    }

    /// Add file `name`.
    pub fn file(&mut self, name: &str, data: ItemData) -> Result<&mut Self, FwCfgError> {
        check_name(name)?;
        check_size(name, &data)?;
        if self.files.contains_key(name) {
            return Err(FwCfgError::DuplicateFile(name.to_string()));
        }
        self.files.insert(name.to_string(), data);
        Ok(self)
    }

    /// QEMU's `linuxboot_dma.bin` as `genroms/linuxboot_dma.bin`.
    pub fn linuxboot_rom(&mut self, rom: ExternalBlob) -> Result<&mut Self, FwCfgError> {
        self.file(
            LINUXBOOT_DMA_ROM,
            ItemData::External {
                handle: rom.handle,
                offset: 0,
                len: rom.len,
            },
        )
    }

    /// Linux direct boot items (0x07–0x18), computed as QEMU does; needs
    /// [`FwCfgBuilder::ram`] first. Returns what was computed.
    pub fn linux(&mut self, cfg: &LinuxBootConfig<'_>) -> Result<LinuxBootPlan, FwCfgError> {
        let (below_4g, _) = self
            .ram
            .ok_or(FwCfgError::Missing("ram() before linux()"))?;
        let li = plan_linux_boot(cfg, below_4g)?;
        for (k, d) in li.items {
            self.items.insert(k, d);
        }
        Ok(li.plan)
    }

    /// Set (or replace) a numbered item directly.
    pub fn item(&mut self, selector: u16, data: ItemData) -> Result<&mut Self, FwCfgError> {
        let sel = selector & !key::WRITE_CHANNEL;
        if sel & key::ARCH_LOCAL == 0 && sel >= key::FILE_FIRST || sel == key::FILE_DIR {
            return Err(FwCfgError::BadSelector(selector));
        }
        check_size("numbered item", &data)?;
        self.items.insert(sel, data);
        Ok(self)
    }

    fn e820(&self, below_4g: u64, above_4g: u64) -> (Vec<E820Entry>, Vec<E820Entry>) {
        let mut b = E820Builder::default();
        b.add(0, below_4g, E820Type::Ram);
        b.add(FOUR_GIB, above_4g, E820Type::Ram);
        for &(a, l) in &self.reserved {
            b.add(a, l, E820Type::Reserved);
        }
        let mut all = Vec::new();
        for e in b.finish() {
            // QEMU gives one RAM entry from 0. SeaBIOS takes low RAM from
            // CMOS and ignores e820 RAM starting below what CMOS said; split
            // at 1 MiB so a guest whose CMOS lacks the size still gets it.
            if e.kind == E820Type::Ram && e.addr < ONE_MIB && e.end() > ONE_MIB {
                all.push(E820Entry {
                    addr: e.addr,
                    size: ONE_MIB - e.addr,
                    kind: e.kind,
                });
                all.push(E820Entry {
                    addr: ONE_MIB,
                    size: e.end() - ONE_MIB,
                    kind: e.kind,
                });
            } else {
                all.push(e);
            }
        }
        let reserved = all
            .iter()
            .copied()
            .filter(|e| e.kind != E820Type::Ram)
            .collect();
        (all, reserved)
    }

    /// Finish: numbered items, files sorted by name (QEMU's order for
    /// current machine types) with selectors from 0x20, the directory.
    pub fn build(&self) -> Result<FwCfg, FwCfgError> {
        let mut items = self.items.clone();
        let mut files = self.files.clone();
        let id = ID_TRADITIONAL | if self.dma { ID_DMA } else { 0 };
        items.insert(key::ID, bytes(&id.to_le_bytes()));
        let ent = |e: &E820Entry, out: &mut Vec<u8>| {
            out.extend_from_slice(&e.addr.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&(e.kind as u32).to_le_bytes());
        };
        if let Some((below, above)) = self.ram {
            items.insert(key::RAM_SIZE, bytes(&(below + above).to_le_bytes()));
            let (all, reserved) = self.e820(below, above);
            let mut f = Vec::new();
            all.iter().for_each(|e| ent(e, &mut f));
            files.insert("etc/e820".to_string(), ItemData::Bytes(f));
            let mut legacy = (reserved.len() as u32).to_le_bytes().to_vec();
            reserved.iter().for_each(|e| ent(e, &mut legacy));
            items.insert(key::E820_TABLE, ItemData::Bytes(legacy));
        }
        if let Some(n) = self.vcpus {
            let n16 = (n as u16).to_le_bytes();
            items.insert(key::NB_CPUS, bytes(&n16));
            items.insert(key::MAX_CPUS, bytes(&n16));
            files.insert("etc/boot-cpus".to_string(), bytes(&n16));
            // u64 node count (0), then one u64 per possible CPU.
            items.insert(
                key::NUMA,
                ItemData::Bytes(alloc::vec![0; 8 * (1 + n as usize)]),
            );
        }
        if let Some(p) = self.acpi {
            let vcpus = self
                .vcpus
                .ok_or(FwCfgError::Missing("cpus() for the ACPI tables"))?;
            let acpi = build_relocatable(&p, vcpus).map_err(FwCfgError::Acpi)?;
            let script = acpi_script(&acpi).into_bytes();
            for (name, data) in [
                (ACPI_TABLES_FILE, acpi.tables),
                (ACPI_RSDP_FILE, acpi.rsdp.to_vec()),
                (TABLE_LOADER_FILE, script),
            ] {
                if files
                    .insert(name.to_string(), ItemData::Bytes(data))
                    .is_some()
                {
                    return Err(FwCfgError::DuplicateFile(name.to_string()));
                }
            }
        }
        files.insert(
            "etc/boot-fail-wait".to_string(),
            bytes(&self.boot_fail_wait.to_le_bytes()),
        );
        let rom_entry = alloc::format!("/rom@{LINUXBOOT_DMA_ROM}");
        let mut order = self.bootorder.clone();
        if files.contains_key(LINUXBOOT_DMA_ROM)
            && !order
                .as_deref()
                .unwrap_or("")
                .lines()
                .any(|l| l == rom_entry)
        {
            let rest = order.unwrap_or_default();
            order = Some(if rest.is_empty() {
                rom_entry
            } else {
                alloc::format!("{rom_entry}\n{rest}")
            });
        }
        if let Some(text) = order {
            // QEMU's list is NUL-terminated.
            let mut b = text.into_bytes();
            if b.last() != Some(&0) {
                b.push(0);
            }
            files.insert("bootorder".to_string(), ItemData::Bytes(b));
        }
        if files.len() > MAX_FILES {
            return Err(FwCfgError::TooManyFiles(files.len()));
        }
        // BTreeMap<String> iterates in byte order, as QEMU's strcmp sort.
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        let mut names = Vec::with_capacity(files.len());
        for (i, (name, data)) in files.into_iter().enumerate() {
            check_name(&name)?;
            check_size(&name, &data)?;
            let sel = key::FILE_FIRST + i as u16;
            let mut e = [0u8; DIR_ENTRY_SIZE];
            e[0..4].copy_from_slice(&(data.len() as u32).to_be_bytes());
            e[4..6].copy_from_slice(&sel.to_be_bytes());
            e[8..8 + name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&e);
            items.insert(sel, data);
            names.push(name);
        }
        items.insert(key::FILE_DIR, ItemData::Bytes(dir));
        Ok(FwCfg::from_parts(items, names, self.dma))
    }
}
