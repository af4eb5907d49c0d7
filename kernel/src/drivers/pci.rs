//! Host PCI: configuration space access, enumeration of the functions the
//! firmware numbered, memory BARs, and the command-register bits a driver
//! needs (memory decoding, bus mastering).
//!
//! Configuration space is reached through PCIe ECAM when ACPI's MCFG gives a
//! window below 4 GiB (always identity mapped, as device memory, by the host
//! page tables), else through configuration mechanism #1 (ports 0xCF8/0xCFC,
//! first 256 bytes of each function only).
//!
//! Enumeration scans bus 0 and, recursively, the secondary bus of every
//! PCI-to-PCI bridge whose bus numbers the firmware (SeaBIOS under QEMU)
//! assigned; bridges it left unconfigured are skipped, not programmed.

use alloc::vec::Vec;
use core::fmt;
use crate::arch::pio::{inl, outl};

/// Bus, device and function of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.device, self.function)
    }
}

const VENDOR_ID: u16 = 0x00;
const COMMAND: u16 = 0x04;
const CLASS_REVISION: u16 = 0x08;
const HEADER_TYPE: u16 = 0x0E;
const BAR0: u16 = 0x10;
const BRIDGE_BUS_NUMBERS: u16 = 0x18;
const BRIDGE_MEMORY_WINDOW: u16 = 0x20;
const BRIDGE_PREFETCHABLE_WINDOW: u16 = 0x24;
const BRIDGE_PREFETCHABLE_BASE_HIGH: u16 = 0x28;

pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;

const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
const HEADER_TYPE_BRIDGE: u8 = 0x01;

const CONFIG_ADDRESS_PORT: u16 = 0xCF8;
const CONFIG_DATA_PORT: u16 = 0xCFC;

/// Serializes mechanism #1: an access is two port operations that another
/// CPU must not interleave with its own.
static PORT_ACCESS: spin::Mutex<()> = spin::Mutex::new(());

/// How configuration space is reached. Cheap to copy: it holds no state.
#[derive(Clone, Copy, Debug)]
pub enum ConfigAccess {
    /// PCIe ECAM: function `bb:dd.f` at `base + (bb << 20 | dd << 15 | f << 12)`
    /// (the MCFG base is that of bus 0 even when its first bus is not 0),
    /// for buses `first_bus..=last_bus`; other buses go through the ports.
    Ecam { base: u64, first_bus: u8, last_bus: u8 },
    /// Configuration mechanism #1 only.
    Ports,
}

impl ConfigAccess {
    /// Picks ECAM from the MCFG entries (base, first bus, last bus) when one
    /// covers bus 0 and lies below 4 GiB, else the ports.
    pub fn new(mcfg: &[(u64, u8, u8)]) -> Self {
        let usable = |&&(base, first, last): &&(u64, u8, u8)| {
            let end = base.checked_add((u64::from(last) + 1) << 20);
            first == 0 && base != 0 && end.is_some_and(|e| e <= 1 << 32)
        };
        match mcfg.iter().find(usable) {
            Some(&(base, first_bus, last_bus)) => ConfigAccess::Ecam { base, first_bus, last_bus },
            None => ConfigAccess::Ports,
        }
    }

    /// Reads the aligned doubleword at `offset` (0..4096 for ECAM, 0..256
    /// through the ports; outside that, all ones like an absent function).
    pub fn read32(&self, at: PciAddress, offset: u16) -> u32 {
        debug_assert!(offset % 4 == 0);
        match self.ecam_address(at, offset) {
            Some(addr) => {
                // SAFETY: `ecam_address` only returns addresses inside the
                // MCFG window, which lies below 4 GiB and so is identity
                // mapped (uncached, as non-RAM) by the host page tables; a
                // configuration read has no memory-safety effect.
                unsafe { core::ptr::read_volatile(addr as *const u32) }
            }
            None if offset < 256 => {
                let _guard = PORT_ACCESS.lock();
                outl(CONFIG_ADDRESS_PORT, mechanism1_address(at, offset));
                inl(CONFIG_DATA_PORT)
            }
            None => u32::MAX,
        }
    }

    /// Writes the aligned doubleword at `offset` (ignored where `read32`
    /// returns all ones).
    pub fn write32(&self, at: PciAddress, offset: u16, value: u32) {
        debug_assert!(offset % 4 == 0);
        match self.ecam_address(at, offset) {
            Some(addr) => {
                // SAFETY: as in `read32`; configuration registers are not
                // memory Rust knows about.
                unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
            }
            None if offset < 256 => {
                let _guard = PORT_ACCESS.lock();
                outl(CONFIG_ADDRESS_PORT, mechanism1_address(at, offset));
                outl(CONFIG_DATA_PORT, value);
            }
            None => {}
        }
    }

    fn ecam_address(&self, at: PciAddress, offset: u16) -> Option<u64> {
        match *self {
            ConfigAccess::Ecam { base, first_bus, last_bus } if (first_bus..=last_bus).contains(&at.bus) && offset < 4096 => {
                let function = (u64::from(at.bus) << 20) | (u64::from(at.device & 31) << 15) | (u64::from(at.function & 7) << 12);
                Some(base + function + u64::from(offset))
            }
            _ => None,
        }
    }

    pub fn read16(&self, at: PciAddress, offset: u16) -> u16 {
        (self.read32(at, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    pub fn read8(&self, at: PciAddress, offset: u16) -> u8 {
        (self.read32(at, offset & !3) >> ((offset & 3) * 8)) as u8
    }

    /// Sets bits in the command register. The status register shares the
    /// doubleword; its error bits are write-one-to-clear, so zeros are
    /// written there.
    pub fn set_command_bits(&self, at: PciAddress, bits: u16) {
        let command = self.read16(at, COMMAND);
        self.write32(at, COMMAND, u32::from(command | bits));
    }

    /// Clears bits in the command register (see `set_command_bits`).
    pub fn clear_command_bits(&self, at: PciAddress, bits: u16) {
        let command = self.read16(at, COMMAND);
        self.write32(at, COMMAND, u32::from(command & !bits));
    }
}

fn mechanism1_address(at: PciAddress, offset: u16) -> u32 {
    (1 << 31) | (u32::from(at.bus) << 16) | (u32::from(at.device & 31) << 11) | (u32::from(at.function & 7) << 8) | u32::from(offset & 0xFC)
}


/// A PCI function found by `enumerate`.
#[derive(Clone, Copy, Debug)]
pub struct PciFunction {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
}

/// Every function on bus 0 and on the buses behind firmware-numbered
/// bridges, in bus/device/function order of discovery.
pub fn enumerate(cfg: &ConfigAccess) -> Vec<PciFunction> {
    let mut found = Vec::new();
    let mut seen_bus = [false; 256];
    let mut pending = alloc::vec![0u8];
    seen_bus[0] = true;
    while let Some(bus) = pending.pop() {
        for device in 0..32 {
            let first = PciAddress { bus, device, function: 0 };
            if cfg.read16(first, VENDOR_ID) == 0xFFFF {
                continue;
            }
            let functions = if cfg.read8(first, HEADER_TYPE) & HEADER_TYPE_MULTIFUNCTION != 0 { 8 } else { 1 };
            for function in 0..functions {
                let address = PciAddress { bus, device, function };
                let ids = cfg.read32(address, VENDOR_ID);
                if ids as u16 == 0xFFFF {
                    continue;
                }
                let class = cfg.read32(address, CLASS_REVISION);
                found.push(PciFunction {
                    address,
                    vendor_id: ids as u16,
                    device_id: (ids >> 16) as u16,
                    class: (class >> 24) as u8,
                    subclass: (class >> 16) as u8,
                });
                if cfg.read8(address, HEADER_TYPE) & 0x7F == HEADER_TYPE_BRIDGE {
                    // Bus numbers: primary, secondary, subordinate. A
                    // secondary bus at or below ours means "not set up".
                    let secondary = (cfg.read32(address, BRIDGE_BUS_NUMBERS) >> 8) as u8;
                    if secondary > bus && !seen_bus[usize::from(secondary)] {
                        seen_bus[usize::from(secondary)] = true;
                        pending.push(secondary);
                    }
                }
            }
        }
    }
    found
}

/// A memory BAR: where it is and how large it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBar {
    pub index: u8,
    pub address: u64,
    pub size: u64,
    pub is_64bit: bool,
}

/// The memory BARs of a function, sized by the usual write-all-ones probe
/// with decoding turned off meanwhile. An address of 0 means the firmware
/// left the BAR unassigned.
pub fn memory_bars(cfg: &ConfigAccess, at: PciAddress) -> Vec<MemoryBar> {
    // A bridge has two BARs; its other registers hold bus numbers and windows.
    let count = match cfg.read8(at, HEADER_TYPE) & 0x7F {
        0 => 6,
        HEADER_TYPE_BRIDGE => 2,
        _ => return Vec::new(),
    };
    let mut bars = Vec::new();
    let command = cfg.read16(at, COMMAND);
    cfg.clear_command_bits(at, COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE);
    let mut index = 0u8;
    while index < count {
        let offset = BAR0 + 4 * u16::from(index);
        let low = cfg.read32(at, offset);
        if low & 1 != 0 {
            index += 1; // an I/O BAR
            continue;
        }
        let is_64bit = low & 0b110 == 0b100 && index + 1 < count;
        cfg.write32(at, offset, u32::MAX);
        let mut mask = u64::from(cfg.read32(at, offset) & !0xF);
        cfg.write32(at, offset, low);
        let mut address = u64::from(low & !0xF);
        if is_64bit {
            let high = cfg.read32(at, offset + 4);
            cfg.write32(at, offset + 4, u32::MAX);
            mask |= u64::from(cfg.read32(at, offset + 4)) << 32;
            cfg.write32(at, offset + 4, high);
            address |= u64::from(high) << 32;
        } else if mask != 0 {
            mask |= 0xFFFF_FFFF_0000_0000;
        }
        if mask != 0 {
            bars.push(MemoryBar { index, address, size: (!mask).wrapping_add(1), is_64bit });
        }
        index += if is_64bit { 2 } else { 1 };
    }
    cfg.write32(at, COMMAND, u32::from(command));
    bars
}

/// Gives addresses to memory BARs the firmware left at 0, so the function
/// can be used without a BIOS that assigns them (SeaBIOS does, so under
/// QEMU this normally finds nothing to do). Each BAR gets a naturally
/// aligned slot below the I/O APIC (0xFEC0_0000), above every BAR and
/// bridge window already assigned on the scanned buses, and above the
/// start of the PCI hole of QEMU's PC machines: the end of the ECAM window
/// on q35 (RAM lies below it), 0xE000_0000 on i440fx (no MCFG). Only
/// functions on bus 0 are served: one behind a bridge would also need the
/// bridge's window moved. Returns the BARs assigned.
pub fn assign_unassigned_bars(cfg: &ConfigAccess, functions: &[PciFunction]) -> Vec<(PciAddress, MemoryBar)> {
    let all: Vec<(PciAddress, MemoryBar)> =
        functions.iter().flat_map(|f| memory_bars(cfg, f.address).into_iter().map(|b| (f.address, b))).collect();
    if all.iter().all(|(at, b)| b.address != 0 || at.bus != 0) {
        return Vec::new();
    }
    let hole_start = match *cfg {
        ConfigAccess::Ecam { base, last_bus, .. } => base + ((u64::from(last_bus) + 1) << 20),
        ConfigAccess::Ports => 0xE000_0000,
    };
    let bars_end = all.iter().filter(|(_, b)| b.address != 0 && b.address < 1 << 32).map(|(_, b)| b.address + b.size).max().unwrap_or(0);
    let windows_end = functions.iter().filter_map(|f| bridge_memory_windows_end(cfg, f.address)).max().unwrap_or(0);
    let mut next = hole_start.max(bars_end).max(windows_end);
    let mut assigned = Vec::new();
    // Largest first keeps the natural alignment padding small.
    let mut todo: Vec<&(PciAddress, MemoryBar)> = all.iter().filter(|(at, b)| b.address == 0 && at.bus == 0).collect();
    todo.sort_by_key(|(_, b)| core::cmp::Reverse(b.size));
    for &(at, bar) in todo {
        let start = next.next_multiple_of(bar.size.max(4096));
        if start + bar.size > PCI_HOLE_END {
            log::warn!("pci {}: no room below 4 GiB for BAR {} ({} KiB); left unassigned", at, bar.index, bar.size >> 10);
            continue;
        }
        let offset = BAR0 + 4 * u16::from(bar.index);
        let flags = cfg.read32(at, offset) & 0xF;
        cfg.write32(at, offset, start as u32 | flags);
        if bar.is_64bit {
            cfg.write32(at, offset + 4, 0);
        }
        next = start + bar.size;
        assigned.push((at, MemoryBar { address: start, ..bar }));
    }
    assigned
}

/// The end of the highest memory window below 4 GiB that a bridge
/// forwards, if `at` is a bridge with one open.
fn bridge_memory_windows_end(cfg: &ConfigAccess, at: PciAddress) -> Option<u64> {
    if cfg.read8(at, HEADER_TYPE) & 0x7F != HEADER_TYPE_BRIDGE {
        return None;
    }
    // Base and limit registers: address bits 31:20 in bits 15:4 of each
    // half; the limit is inclusive of its last MiB. A prefetchable window
    // placed above 4 GiB (upper base at 0x28) cannot collide with ours.
    let prefetchable_high = cfg.read32(at, BRIDGE_PREFETCHABLE_WINDOW) & 0xF == 1 && cfg.read32(at, BRIDGE_PREFETCHABLE_BASE_HIGH) != 0;
    [BRIDGE_MEMORY_WINDOW, BRIDGE_PREFETCHABLE_WINDOW]
        .into_iter()
        .filter(|&offset| offset == BRIDGE_MEMORY_WINDOW || !prefetchable_high)
        .filter_map(|offset| {
            let reg = cfg.read32(at, offset);
            let base = u64::from(reg & 0xFFF0) << 16;
            let limit = (u64::from(reg >> 16 & 0xFFF0) << 16) | 0xF_FFFF;
            (limit > base).then_some(limit + 1)
        })
        .max()
}

/// The end of the 32-bit PCI hole: the I/O APIC, HPET and local APIC follow.
const PCI_HOLE_END: u64 = 0xFEC0_0000;
