//! Guest ACPI tables: RSDP (v2), XSDT, RSDT, FADT (revision 5), FACS, MADT
//! and a minimal DSDT, all with correct checksums.
//!
//! The I/O ports and IRQs written into the tables are in
//! [`PlatformLayout`]; the hypervisor's platform emulation must use the same
//! values (the `DEFAULT_*` constants), so both sides agree.
//!
//! What the guest is told (default layout):
//! * ACPI is always enabled: `SMI_CMD = 0`, so the OS never tries to switch
//!   modes; PM1a_CNT must read back with `SCI_EN` (bit 0) set.
//! * PM1a event block at 0xB000 (4 bytes: status word, enable word),
//!   PM1a control block at 0xB004 (2 bytes), 32-bit PM timer at 0xB008
//!   (`TMR_VAL_EXT`, 3.579545 MHz), no GPE blocks.
//! * SCI on IRQ 9 = GSI 9, level-triggered, active high (MADT interrupt
//!   source override, as QEMU describes it).
//! * Sleep: writing PM1a_CNT with `SLP_EN` (bit 13) and `SLP_TYP` (bits
//!   10–12) = [`DEFAULT_SLP_TYP_S5`] means "power off" (the DSDT's `_S5_`).
//! * Reset: write 0x06 to I/O port 0xCF9 (`RESET_REG_SUP`).
//! * Power button: the fixed-feature button (PM1 status/enable bit 8,
//!   `PWR_BUTTON` flag clear) and a `PNP0C0C` device `\_SB.PWRB` in the DSDT.
//! * Local APIC at 0xFEE00000 (APIC IDs 0..vcpus-1, ACPI UIDs the same), one
//!   I/O APIC at 0xFEC00000, GSI base 0, ISA IRQ0 → GSI 2.

use crate::aml;
use crate::bytes::{put_u16, put_u32, put_u64};
use crate::LoadError;
use alloc::vec::Vec;

pub const DEFAULT_PM1A_EVT_PORT: u16 = 0xb000;
pub const DEFAULT_PM1A_CNT_PORT: u16 = 0xb004;
pub const DEFAULT_PM_TMR_PORT: u16 = 0xb008;
pub const DEFAULT_RESET_PORT: u16 = 0xcf9;
pub const DEFAULT_RESET_VALUE: u8 = 0x06;
pub const DEFAULT_SCI_IRQ: u8 = 9;
/// `SLP_TYP` for S5 (soft off) in the DSDT `_S5_` package.
pub const DEFAULT_SLP_TYP_S5: u8 = 5;
pub const DEFAULT_IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const DEFAULT_LAPIC_ADDR: u32 = 0xfee0_0000;
/// Block lengths (bytes).
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1_CNT_LEN: u8 = 2;
pub const PM_TMR_LEN: u8 = 4;
/// PM timer frequency.
pub const PM_TIMER_HZ: u32 = 3_579_545;
/// PM1 status/enable bits.
pub const PM1_TMR_STS: u16 = 1 << 0;
pub const PM1_PWRBTN_STS: u16 = 1 << 8;
pub const PM1_WAK_STS: u16 = 1 << 15;
/// PM1 control bits.
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
pub const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
pub const PM1_CNT_SLP_TYP_MASK: u16 = 7 << 10;
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;

/// Where the emulated ACPI platform devices live. The tables are built
/// from it and the hypervisor's emulation should use the same instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformLayout {
    pub pm1a_evt: u16,
    pub pm1a_cnt: u16,
    pub pm_tmr: u16,
    /// FADT `TMR_VAL_EXT`: the PM timer counts 32 bits (else 24).
    pub pm_tmr_32bit: bool,
    pub reset_port: u16,
    pub reset_value: u8,
    /// ISA IRQ (= GSI) of the SCI.
    pub sci_irq: u8,
    pub slp_typ_s5: u8,
    pub lapic_addr: u32,
    pub ioapic_addr: u32,
    pub ioapic_id: u8,
    pub ioapic_gsi_base: u32,
    /// MADT `PCAT_COMPAT`: dual 8259 PICs are present.
    pub pcat_compat: bool,
    /// FADT `IAPC_BOOT_ARCH.8042`: an i8042 keyboard controller is present.
    pub i8042: bool,
    /// A PCI root bridge (`\_SB.PCI0`, PNP0A03, bus 0, config ports
    /// 0xCF8–0xCFF) whose 32-bit memory window is `[start, end]`: HVM
    /// guests have a PCI bus, and an ACPI OS only scans buses the DSDT
    /// describes.
    pub pci_root_mem: Option<(u32, u32)>,
    /// virtio-mmio devices (`LNRO0005` in the DSDT, as Linux's
    /// virtio_mmio driver finds them through ACPI): slot i, when present,
    /// is a [`VIRTIO_MMIO_WINDOW`]-byte window at
    /// [`virtio_mmio_base`]`(i)` raising GSI [`virtio_mmio_gsi`]`(i)`
    /// (level-triggered, active high).
    pub virtio_mmio: [bool; MAX_VIRTIO_MMIO],
}

/// Most virtio-mmio devices a domain has (one per free I/O APIC pin 16-23).
pub const MAX_VIRTIO_MMIO: usize = 8;
/// The first virtio-mmio window, just below the I/O APIC's page; one page
/// per device so each traps on its own.
pub const VIRTIO_MMIO_BASE: u64 = 0xFEB0_0000;
/// Bytes of registers per virtio-mmio device (0x100 of registers, then
/// the device's configuration space).
pub const VIRTIO_MMIO_WINDOW: u64 = 0x200;

/// Where virtio-mmio device `slot` is.
pub const fn virtio_mmio_base(slot: usize) -> u64 {
    VIRTIO_MMIO_BASE + (slot as u64) * 0x1000
}

/// The GSI (I/O APIC pin) virtio-mmio device `slot` raises.
pub const fn virtio_mmio_gsi(slot: usize) -> u8 {
    16 + slot as u8
}

impl PlatformLayout {
    pub const DEFAULT: Self = Self {
        pm1a_evt: DEFAULT_PM1A_EVT_PORT,
        pm1a_cnt: DEFAULT_PM1A_CNT_PORT,
        pm_tmr: DEFAULT_PM_TMR_PORT,
        pm_tmr_32bit: true,
        reset_port: DEFAULT_RESET_PORT,
        reset_value: DEFAULT_RESET_VALUE,
        sci_irq: DEFAULT_SCI_IRQ,
        slp_typ_s5: DEFAULT_SLP_TYP_S5,
        lapic_addr: DEFAULT_LAPIC_ADDR,
        ioapic_addr: DEFAULT_IOAPIC_ADDR,
        ioapic_id: 0,
        ioapic_gsi_base: 0,
        pcat_compat: false,
        i8042: false,
        pci_root_mem: None,
        virtio_mmio: [false; MAX_VIRTIO_MMIO],
    };
}

impl Default for PlatformLayout {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Most vCPUs the MADT describes (xAPIC IDs; 0xFF is broadcast).
pub const MAX_VCPUS: u32 = 255;
pub const OEM_ID: &[u8; 6] = b"FERRIT";
pub const OEM_TABLE_ID: &[u8; 8] = b"FERRITE ";
pub const CREATOR_ID: &[u8; 4] = b"FRRT";
/// Size of the RSDP (revision 2).
pub const RSDP_SIZE: usize = 36;
const HEADER_SIZE: usize = 36;
/// The FACS gets the first page of the blob (e820 NVS); the other tables
/// follow it (e820 ACPI).
pub const FACS_PAGE: usize = 4096;
/// FADT revision 5 (ACPI 5.x) is 268 bytes.
pub const FADT_REVISION: u8 = 5;
pub const FADT_MINOR: u8 = 1;
pub const FADT_SIZE: usize = 268;

/// FADT flags.
pub const FADT_WBINVD: u32 = 1 << 0;
pub const FADT_PROC_C1: u32 = 1 << 2;
pub const FADT_PWR_BUTTON: u32 = 1 << 4;
pub const FADT_SLP_BUTTON: u32 = 1 << 5;
pub const FADT_TMR_VAL_EXT: u32 = 1 << 8;
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH flags.
pub const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
pub const BOOT_ARCH_8042: u16 = 1 << 1;
pub const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// The ACPI checksum byte that makes `data` sum to 0.
pub fn checksum(data: &[u8]) -> u8 {
    0u8.wrapping_sub(data.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A table: header with `sig`, revision, our OEM fields, and `body`;
/// length and checksum filled.
pub fn sdt(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_SIZE + body.len();
    let mut t = alloc::vec![0u8; len];
    t[0..4].copy_from_slice(sig);
    put_u32(&mut t, 4, len as u32);
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    put_u32(&mut t, 24, 1);
    t[28..32].copy_from_slice(CREATOR_ID);
    put_u32(&mut t, 32, 1);
    t[HEADER_SIZE..].copy_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// Generic Address Structure in System I/O space.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    if port != 0 {
        g[0] = 1; // SystemIO
        g[1] = bit_width;
        g[2] = 0;
        g[3] = access_size;
        g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    }
    g
}

/// The DSDT's AML: `Name(\_S5_, Package(4){t, t, 0, 0})` and
/// `Scope(\_SB_) { Device(PWRB) { Name(_HID, EisaId("PNP0C0C")) } }`.
pub fn dsdt_aml(p: &PlatformLayout) -> Vec<u8> {
    let t = u64::from(p.slp_typ_s5);
    let mut a = aml::name(
        "\\_S5",
        &aml::package(&[
            aml::integer(t),
            aml::integer(t),
            aml::integer(0),
            aml::integer(0),
        ]),
    );
    let pwrb = aml::device(
        "PWRB",
        &aml::name("_HID", &aml::dword(aml::eisa_id("PNP0C0C"))),
    );
    let mut sb = pwrb;
    if let Some((start, end)) = p.pci_root_mem {
        sb.extend(pci_root_aml(start, end));
    }
    for slot in (0..MAX_VIRTIO_MMIO).filter(|&i| p.virtio_mmio[i]) {
        sb.extend(virtio_mmio_aml(slot));
    }
    a.extend(aml::scope("\\_SB", &sb));
    a
}

/// `Device(VRxx)`: a virtio-mmio device as Linux's driver matches it in
/// ACPI (`LNRO0005`), its register window and its interrupt in `_CRS`.
fn virtio_mmio_aml(slot: usize) -> Vec<u8> {
    let base = virtio_mmio_base(slot) as u32;
    // Memory32Fixed(ReadWrite, base, window).
    let mut res = alloc::vec![0x86, 0x09, 0x00, 0x01];
    res.extend_from_slice(&base.to_le_bytes());
    res.extend_from_slice(&(VIRTIO_MMIO_WINDOW as u32).to_le_bytes());
    // Interrupt(ResourceConsumer, Level, ActiveHigh, Exclusive) { gsi }:
    // flags bit 0 consumer, bit 1 clear = level, bit 2 clear = high.
    res.extend_from_slice(&[0x89, 0x06, 0x00, 0x01, 0x01]);
    res.extend_from_slice(&u32::from(virtio_mmio_gsi(slot)).to_le_bytes());
    res.extend_from_slice(&[0x79, 0x00]); // end tag
    let mut body = aml::name("_HID", &aml::string("LNRO0005"));
    body.extend(aml::name("_UID", &aml::integer(slot as u64)));
    body.extend(aml::name("_CRS", &aml::buffer(&res)));
    aml::device(&alloc::format!("VR{:02X}", slot), &body)
}

/// `Device(PCI0)`: the PCI host bridge with its resources (`_CRS`): bus
/// numbers 0–255, the configuration ports, the I/O ranges around them, the
/// legacy VGA window and the 32-bit memory window `[mem_start, mem_end]`.
fn pci_root_aml(mem_start: u32, mem_end: u32) -> Vec<u8> {
    // Large resource descriptors (ACPI 6.4, 6.4.3.5): Word/DWord address
    // space with "minimum and maximum fixed" flags.
    fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let mut d = alloc::vec![0x88, 0x0D, 0x00, kind, 0x0C, type_flags];
        for v in [0u16, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }
    fn dword_memory(min: u32, max: u32) -> Vec<u8> {
        // Type-specific flags: read-write, cacheable.
        let mut d = alloc::vec![0x87, 0x17, 0x00, 0x00, 0x0C, 0x03];
        for v in [0u32, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d
    }
    let mut res = word_space(2, 0, 0, 0xFF); // bus numbers
    res.extend_from_slice(&[0x47, 0x01, 0xF8, 0x0C, 0xF8, 0x0C, 0x01, 0x08]); // IO 0xCF8, 8 ports
    res.extend(word_space(1, 0x03, 0x0000, 0x0CF7));
    res.extend(word_space(1, 0x03, 0x0D00, 0xFFFF));
    res.extend(dword_memory(0x000A_0000, 0x000B_FFFF));
    if mem_start <= mem_end {
        res.extend(dword_memory(mem_start, mem_end));
    }
    res.extend_from_slice(&[0x79, 0x00]); // end tag
    let mut body = aml::name("_HID", &aml::dword(aml::eisa_id("PNP0A03")));
    body.extend(aml::name("_ADR", &aml::integer(0)));
    body.extend(aml::name("_UID", &aml::integer(0)));
    body.extend(aml::name("_BBN", &aml::integer(0)));
    body.extend(aml::name("_CRS", &aml::buffer(&res)));
    aml::device("PCI0", &body)
}

/// The FADT body (after the header).
fn fadt_body(p: &PlatformLayout, facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = alloc::vec![0u8; FADT_SIZE - HEADER_SIZE];
    let o = |abs: usize| abs - HEADER_SIZE;
    put_u32(&mut b, o(36), facs as u32); // FIRMWARE_CTRL (same as X_)
    put_u32(&mut b, o(40), dsdt as u32); // DSDT (same as X_)
    b[o(45)] = 0; // Preferred_PM_Profile: unspecified
    put_u16(&mut b, o(46), p.sci_irq.into());
    put_u32(&mut b, o(48), 0); // SMI_CMD: ACPI always enabled
    put_u32(&mut b, o(56), p.pm1a_evt.into());
    put_u32(&mut b, o(64), p.pm1a_cnt.into());
    put_u32(&mut b, o(76), p.pm_tmr.into());
    b[o(88)] = PM1_EVT_LEN;
    b[o(89)] = PM1_CNT_LEN;
    b[o(91)] = PM_TMR_LEN;
    // P_LVL2/3 latencies above 100/1000 µs: C2/C3 not supported.
    put_u16(&mut b, o(96), 101);
    put_u16(&mut b, o(98), 1001);
    b[o(108)] = 0x32; // CENTURY: CMOS index of the century byte
    let mut boot_arch = BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_VGA_NOT_PRESENT;
    if p.i8042 {
        boot_arch |= BOOT_ARCH_8042;
    }
    put_u16(&mut b, o(109), boot_arch);
    let mut flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RESET_REG_SUP;
    if p.pm_tmr_32bit {
        flags |= FADT_TMR_VAL_EXT;
    }
    put_u32(&mut b, o(112), flags);
    b[o(116)..o(128)].copy_from_slice(&gas_io(p.reset_port, 8, 1));
    b[o(128)] = p.reset_value;
    b[o(131)] = FADT_MINOR;
    put_u64(&mut b, o(132), facs);
    put_u64(&mut b, o(140), dsdt);
    b[o(148)..o(160)].copy_from_slice(&gas_io(p.pm1a_evt, PM1_EVT_LEN * 8, 2));
    b[o(172)..o(184)].copy_from_slice(&gas_io(p.pm1a_cnt, PM1_CNT_LEN * 8, 2));
    b[o(208)..o(220)].copy_from_slice(&gas_io(p.pm_tmr, PM_TMR_LEN * 8, 3));
    b
}

fn madt_body(p: &PlatformLayout, vcpus: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&p.lapic_addr.to_le_bytes());
    b.extend_from_slice(&u32::from(p.pcat_compat).to_le_bytes());
    for i in 0..vcpus {
        // Processor Local APIC: UID, APIC ID, flags = enabled.
        b.extend_from_slice(&[0, 8, i as u8, i as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC.
    b.extend_from_slice(&[1, 12, p.ioapic_id, 0]);
    b.extend_from_slice(&p.ioapic_addr.to_le_bytes());
    b.extend_from_slice(&p.ioapic_gsi_base.to_le_bytes());
    // Interrupt source overrides: IRQ0 → GSI2 (conforming), SCI level/high.
    b.extend_from_slice(&[2, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&[2, 10, 0, p.sci_irq]);
    b.extend_from_slice(&u32::from(p.sci_irq).to_le_bytes());
    b.extend_from_slice(&0x000du16.to_le_bytes()); // active high, level
                                                   // Local APIC NMI: all processors, LINT1, conforming.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    b
}

/// The tables, laid out for a blob at guest-physical `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// GPA of `bytes[0]` (page aligned).
    pub base: u64,
    /// FACS page, then DSDT, FADT, MADT, XSDT, RSDT.
    pub bytes: Vec<u8>,
    /// The RSDP, to be written separately (at `rsdp_gpa`).
    pub rsdp: [u8; RSDP_SIZE],
    pub facs: u64,
    pub dsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    pub xsdt: u64,
    pub rsdt: u64,
}

impl AcpiTables {
    /// [base, base + FACS_PAGE) is e820 NVS; the rest e820 ACPI.
    pub fn nvs_len(&self) -> u64 {
        FACS_PAGE as u64
    }
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Build all tables for a blob at `base` (4 KiB aligned, below 4 GiB) and
/// the RSDP pointing to them.
pub fn build_tables(base: u64, p: &PlatformLayout, vcpus: u32) -> Result<AcpiTables, LoadError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(LoadError::BadVcpuCount(vcpus));
    }
    assert!(base % 4096 == 0, "ACPI blob must be page aligned");
    let mut bytes = alloc::vec![0u8; FACS_PAGE];
    // FACS: signature, length 64, version 2; no checksum.
    bytes[0..4].copy_from_slice(b"FACS");
    put_u32(&mut bytes, 4, 64);
    bytes[32] = 2;
    let facs = base;
    let push = |bytes: &mut Vec<u8>, t: Vec<u8>| -> u64 {
        while bytes.len() % 16 != 0 {
            bytes.push(0);
        }
        let at = base + bytes.len() as u64;
        bytes.extend(t);
        at
    };
    let dsdt = push(&mut bytes, sdt(b"DSDT", 2, &dsdt_aml(p)));
    let fadt = push(
        &mut bytes,
        sdt(b"FACP", FADT_REVISION, &fadt_body(p, facs, dsdt)),
    );
    let madt = push(&mut bytes, sdt(b"APIC", 4, &madt_body(p, vcpus)));
    let mut xb = Vec::new();
    let mut rb = Vec::new();
    for t in [fadt, madt] {
        xb.extend_from_slice(&t.to_le_bytes());
        rb.extend_from_slice(&(t as u32).to_le_bytes());
    }
    let xsdt = push(&mut bytes, sdt(b"XSDT", 1, &xb));
    let rsdt = push(&mut bytes, sdt(b"RSDT", 1, &rb));
    if base
        .checked_add(bytes.len() as u64)
        .is_none_or(|e| e > crate::e820::FOUR_GIB)
    {
        return Err(LoadError::OutsideRam {
            what: "ACPI tables (must be below 4 GiB)",
            start: base,
            len: bytes.len() as u64,
        });
    }
    let mut rsdp = [0u8; RSDP_SIZE];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2;
    put_u32(&mut rsdp, 16, rsdt as u32);
    put_u32(&mut rsdp, 20, RSDP_SIZE as u32);
    put_u64(&mut rsdp, 24, xsdt);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    Ok(AcpiTables {
        base,
        bytes,
        rsdp,
        facs,
        dsdt,
        fadt,
        madt,
        xsdt,
        rsdt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(d: &[u8]) -> u8 {
        d.iter().fold(0u8, |a, &b| a.wrapping_add(b))
    }
    fn u32at(d: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(d[o..o + 4].try_into().unwrap())
    }
    fn u64at(d: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(d[o..o + 8].try_into().unwrap())
    }
    fn table(t: &AcpiTables, gpa: u64) -> &[u8] {
        let o = (gpa - t.base) as usize;
        let len = u32at(&t.bytes, o + 4) as usize;
        &t.bytes[o..o + len]
    }

    #[test]
    fn rsdp_and_roots() {
        let t = build_tables(0x0fff_0000, &PlatformLayout::DEFAULT, 4).unwrap();
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[..20]), 0);
        assert_eq!(sum(&t.rsdp), 0);
        assert_eq!(t.rsdp[15], 2);
        assert_eq!(u64at(&t.rsdp, 24), t.xsdt);
        assert_eq!(u32at(&t.rsdp, 16) as u64, t.rsdt);
        let x = table(&t, t.xsdt);
        assert_eq!(&x[0..4], b"XSDT");
        assert_eq!(sum(x), 0);
        assert_eq!(x.len(), 36 + 16);
        assert_eq!(u64at(x, 36), t.fadt);
        assert_eq!(u64at(x, 44), t.madt);
        let r = table(&t, t.rsdt);
        assert_eq!(sum(r), 0);
        assert_eq!(u32at(r, 40) as u64, t.madt);
        for gpa in [t.dsdt, t.fadt, t.madt, t.xsdt, t.rsdt] {
            let tb = table(&t, gpa);
            assert_eq!(
                sum(tb),
                0,
                "checksum of {:?}",
                core::str::from_utf8(&tb[..4])
            );
            assert_eq!(&tb[10..16], OEM_ID);
        }
        // FACS: 64-byte aligned, signature, length.
        assert_eq!(t.facs % 64, 0);
        assert_eq!(&t.bytes[0..4], b"FACS");
        assert_eq!(u32at(&t.bytes, 4), 64);
    }

    #[test]
    fn fadt_fields() {
        let p = PlatformLayout::DEFAULT;
        let t = build_tables(0x0fff_0000, &p, 1).unwrap();
        let f = table(&t, t.fadt);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(f.len(), 268);
        assert_eq!(f[8], 5);
        assert_eq!(u32at(f, 36) as u64, t.facs);
        assert_eq!(u32at(f, 40) as u64, t.dsdt);
        assert_eq!(u64at(f, 132), t.facs);
        assert_eq!(u64at(f, 140), t.dsdt);
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9);
        assert_eq!(u32at(f, 48), 0);
        assert_eq!(u32at(f, 56), 0xb000);
        assert_eq!(u32at(f, 64), 0xb004);
        assert_eq!(u32at(f, 76), 0xb008);
        assert_eq!((f[88], f[89], f[91]), (4, 2, 4));
        let flags = u32at(f, 112);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        assert_ne!(flags & FADT_TMR_VAL_EXT, 0);
        assert_eq!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_eq!(flags & FADT_PWR_BUTTON, 0);
        // RESET_REG: SystemIO, 8 bits, byte access, 0xCF9; value 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64at(f, 120), 0xcf9);
        assert_eq!(f[128], 6);
        // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK.
        assert_eq!(&f[148..152], &[1, 32, 0, 2]);
        assert_eq!(u64at(f, 152), 0xb000);
        assert_eq!(&f[172..176], &[1, 16, 0, 2]);
        assert_eq!(u64at(f, 176), 0xb004);
        assert_eq!(&f[208..212], &[1, 32, 0, 3]);
        assert_eq!(u64at(f, 212), 0xb008);
        // PM1b and GPE blocks absent.
        assert!(f[160..172].iter().all(|&b| b == 0));
        assert!(f[220..244].iter().all(|&b| b == 0));
    }

    #[test]
    fn madt_entries() {
        for vcpus in [1u32, 3, 255] {
            let t = build_tables(0x1000_0000, &PlatformLayout::DEFAULT, vcpus).unwrap();
            let m = table(&t, t.madt);
            assert_eq!(&m[0..4], b"APIC");
            assert_eq!(u32at(m, 36), 0xfee0_0000);
            let mut o = 44;
            let (mut lapics, mut ioapics, mut isos, mut nmis) = (0u32, 0, Vec::new(), 0);
            while o < m.len() {
                let (ty, len) = (m[o], m[o + 1] as usize);
                assert!(len >= 2 && o + len <= m.len());
                match ty {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(m[o + 2] as u32, lapics);
                        assert_eq!(m[o + 3] as u32, lapics);
                        assert_eq!(u32at(m, o + 4), 1);
                        lapics += 1;
                    }
                    1 => {
                        assert_eq!(len, 12);
                        assert_eq!(u32at(m, o + 4), 0xfec0_0000);
                        assert_eq!(u32at(m, o + 8), 0);
                        ioapics += 1;
                    }
                    2 => {
                        assert_eq!(len, 10);
                        isos.push((
                            m[o + 3],
                            u32at(m, o + 4),
                            u16::from_le_bytes([m[o + 8], m[o + 9]]),
                        ));
                    }
                    4 => nmis += 1,
                    _ => panic!("unexpected MADT entry {ty}"),
                }
                o += len;
            }
            assert_eq!(o, m.len());
            assert_eq!(lapics, vcpus);
            assert_eq!(ioapics, 1);
            assert_eq!(nmis, 1);
            assert_eq!(isos, [(0, 2, 0), (9, 9, 0xd)]);
        }
        assert_eq!(
            build_tables(0, &PlatformLayout::DEFAULT, 0),
            Err(LoadError::BadVcpuCount(0))
        );
        assert_eq!(
            build_tables(0, &PlatformLayout::DEFAULT, 256),
            Err(LoadError::BadVcpuCount(256))
        );
    }

    #[test]
    fn dsdt_describes_a_pci_root_bridge_when_asked() {
        let p = PlatformLayout { pci_root_mem: Some((0x1000_0000, 0xFEBF_FFFF)), ..PlatformLayout::DEFAULT };
        let t = build_tables(0x1000_0000, &p, 1).unwrap();
        let d = table(&t, t.dsdt);
        let aml = &d[36..];
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"PCI0"));
        assert!(has(&aml::dword(aml::eisa_id("PNP0A03"))));
        // The memory window's bounds, little-endian, in the _CRS buffer.
        assert!(has(&[0x00, 0x00, 0x00, 0x10, 0xFF, 0xFF, 0xBF, 0xFE]));
        // Checksum still right.
        assert_eq!(d.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let plain = build_tables(0x1000_0000, &PlatformLayout::DEFAULT, 1).unwrap();
        assert!(!table(&plain, plain.dsdt).windows(4).any(|w| w == b"PCI0"));
    }

    #[test]
    fn dsdt_describes_virtio_mmio_devices() {
        let mut p = PlatformLayout::DEFAULT;
        p.virtio_mmio[0] = true;
        p.virtio_mmio[3] = true;
        let t = build_tables(0x1000_0000, &p, 1).unwrap();
        let d = table(&t, t.dsdt);
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"VR00") && has(b"VR03") && !has(b"VR01"));
        assert!(has(b"LNRO0005\0"));
        // Slot 3: its window and GSI 19.
        assert!(has(&[0x86, 0x09, 0x00, 0x01, 0x00, 0x30, 0xB0, 0xFE, 0x00, 0x02, 0x00, 0x00]));
        assert!(has(&[0x89, 0x06, 0x00, 0x01, 0x01, 19, 0, 0, 0]));
        assert_eq!(d.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
    }

    #[test]
    fn dsdt_structure() {
        let t = build_tables(0x1000_0000, &PlatformLayout::DEFAULT, 1).unwrap();
        let d = table(&t, t.dsdt);
        assert_eq!(&d[0..4], b"DSDT");
        assert_eq!(d[8], 2);
        let aml = &d[36..];
        // Name(\_S5_, Package(4){5, 5, 0, 0})
        assert_eq!(
            &aml[..15],
            &[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 4, 0x0a, 5, 0x0a, 5, 0, 0]
        );
        // Scope(\_SB_) spans exactly to the end of the table.
        let s = &aml[15..];
        assert_eq!(s[0], aml::SCOPE_OP);
        assert_eq!(s[1] as usize, s.len() - 1);
        assert_eq!(&s[2..7], b"\\_SB_");
        assert_eq!(&s[7..9], &[0x5b, 0x82]);
        assert_eq!(s[9] as usize, s.len() - 9);
        assert_eq!(&s[10..14], b"PWRB");
        assert_eq!(&s[14..19], &[0x08, b'_', b'H', b'I', b'D']);
        assert_eq!(&s[19..24], &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]);
        assert_eq!(s.len(), 24);
    }

    #[test]
    fn checksum_helper() {
        let mut v = alloc::vec![1u8, 2, 3, 0];
        v[3] = checksum(&v);
        assert_eq!(sum(&v), 0);
        assert_eq!(checksum(&[]), 0);
    }
}
