//! The host's ACPI tables, read with the `acpi` crate: the CPUs and I/O
//! APICs from the MADT, plus the HPET and PCIe ECAM (MCFG) when present.

use ::acpi::madt::{Madt, MadtEntry};
use ::acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// All of physical memory the hypervisor uses is identity mapped, so a
/// "mapping" is just the physical address.
#[derive(Clone, Copy)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        // SAFETY: ACPI tables live in firmware-reserved RAM below the
        // identity-mapped limit; the acpi crate validates table lengths and
        // checksums before reading past headers.
        unsafe {
            PhysicalMapping::new(physical_address, NonNull::new(physical_address as *mut T).expect("ACPI table at address 0"), size, size, *self)
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Debug, Default)]
pub struct Platform {
    /// APIC ids of usable CPUs, the boot CPU's included.
    pub cpu_apic_ids: Vec<u32>,
    pub io_apics: Vec<IoApic>,
    pub hpet: Option<u64>,
    /// (base, first bus, last bus) of PCIe configuration windows.
    pub ecam: Vec<(u64, u8, u8)>,
    /// The ACPI PM timer's I/O port and whether it counts 32 bits (none
    /// when the FADT has none, or puts it in memory space).
    pub pm_timer: Option<(u16, bool)>,
}

/// Reads the platform description from the RSDP (given by the boot loader,
/// or searched for in the BIOS areas).
pub fn discover(rsdp: Option<u64>) -> Result<Platform, ::acpi::AcpiError> {
    // SAFETY: the RSDP address comes from the boot loader (or the BIOS
    // search), which points at firmware tables in identity-mapped memory.
    let tables = unsafe {
        match rsdp {
            Some(addr) => AcpiTables::from_rsdp(IdentityHandler, addr as usize)?,
            None => AcpiTables::search_for_rsdp_bios(IdentityHandler)?,
        }
    };
    let mut platform = Platform::default();
    let madt = tables.find_table::<Madt>()?;
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                // Bit 0: enabled; bit 1: online capable (can be enabled later).
                let flags = e.flags;
                if flags & 1 != 0 {
                    platform.cpu_apic_ids.push(u32::from(e.apic_id));
                }
            }
            MadtEntry::LocalX2Apic(e) => {
                let flags = e.flags;
                if flags & 1 != 0 {
                    platform.cpu_apic_ids.push(e.x2apic_id);
                }
            }
            MadtEntry::IoApic(e) => platform.io_apics.push(IoApic {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            _ => {}
        }
    }
    if let Ok(hpet) = ::acpi::HpetInfo::new(&tables) {
        platform.hpet = Some(hpet.base_address as u64);
    }
    if let Ok(fadt) = tables.find_table::<::acpi::fadt::Fadt>() {
        if let Ok(Some(base)) = fadt.pm_timer_block() {
            if base.address_space == ::acpi::address::AddressSpace::SystemIo {
                if let Ok(port) = u16::try_from(base.address) {
                    platform.pm_timer = Some((port, { fadt.flags }.pm_timer_is_32_bit()));
                }
            }
        }
    }
    if let Ok(mcfg) = tables.find_table::<::acpi::mcfg::Mcfg>() {
        for e in mcfg.get().entries() {
            platform.ecam.push((e.base_address, e.bus_number_start, e.bus_number_end));
        }
    }
    Ok(platform)
}
