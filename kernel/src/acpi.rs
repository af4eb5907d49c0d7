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
    /// How to switch the machine off or reset it.
    pub power: HostPower,
}

/// The machine's own power controls, as the FADT and DSDT describe them
/// (I/O-space registers only; None where the firmware gives none).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostPower {
    /// PM1a status (the power button's PWRBTN_STS) and enable registers.
    pub pm1a_event: Option<u16>,
    pub pm1a_control: Option<u16>,
    pub pm1b_control: Option<u16>,
    /// SLP_TYPa/b of \_S5 (soft off).
    pub s5: Option<(u8, u8)>,
    /// The FADT reset register (port) and the value to write.
    pub reset: Option<(u16, u8)>,
}

fn io_port(addr: Result<::acpi::address::GenericAddress, ::acpi::AcpiError>) -> Option<u16> {
    let a = addr.ok()?;
    (a.address_space == ::acpi::address::AddressSpace::SystemIo && a.address != 0).then(|| u16::try_from(a.address).ok()).flatten()
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
        platform.power.pm1a_event = io_port(fadt.pm1a_event_block());
        platform.power.pm1a_control = io_port(fadt.pm1a_control_block());
        platform.power.pm1b_control = io_port(fadt.pm1b_control_block().and_then(|b| b.ok_or(::acpi::AcpiError::TableMissing(::acpi::sdt::Signature::FADT))));
        if { fadt.flags }.supports_system_reset_via_fadt() {
            platform.power.reset = io_port(fadt.reset_register()).map(|port| (port, fadt.reset_value));
        }
        if let Ok(Some(base)) = fadt.pm_timer_block() {
            if base.address_space == ::acpi::address::AddressSpace::SystemIo {
                if let Ok(port) = u16::try_from(base.address) {
                    platform.pm_timer = Some((port, { fadt.flags }.pm_timer_is_32_bit()));
                }
            }
        }
    }
    if let Ok(dsdt) = tables.dsdt() {
        // SAFETY: the DSDT lies in firmware memory the identity map covers;
        // the acpi crate checked its header, and `length` is the AML body's.
        let aml = unsafe { core::slice::from_raw_parts(dsdt.address as *const u8, dsdt.length as usize) };
        platform.power.s5 = ferrite_boot::acpi_sleep::s5_sleep_types(aml);
    }
    if let Ok(mcfg) = tables.find_table::<::acpi::mcfg::Mcfg>() {
        for e in mcfg.get().entries() {
            platform.ecam.push((e.base_address, e.bus_number_start, e.bus_number_end));
        }
    }
    Ok(platform)
}
