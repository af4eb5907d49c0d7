//! HVM guests: SeaBIOS (the system QEMU's `bios-256k.bin`) runs in an HVM
//! domU under Ferrite, with its PC devices (PCI, IDE with bus-master DMA,
//! fw_cfg, UART, i8042, ...) emulated by the guest's own stub domain, and
//! boots real code from the emulated IDE disk, which is backed by a QEMU
//! virtio-blk device driven by the hypervisor, or from a virtio-blk PCI
//! disk (`specification=virtio`) the stub domain emulates on the same
//! backing.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{base_qemu, images, seabios_image, test_dir, virtio_disk_args, Vm, BASE_CMDLINE};
use std::path::{Path, PathBuf};

const SECTOR: usize = 512;
/// What `mbr_disk_check.S` checks and where it writes.
const CHECK_SECTORS: u32 = 256;
const WRITE_LBA: usize = 300;

/// A disk image: the boot sector, then sectors whose first dword is their
/// LBA and last dword its complement, with varying bytes between.
fn disk_image(mbr: &[u8], sectors: usize) -> Vec<u8> {
    guestasm::mbr_test_disk(mbr, sectors)
}

/// The byte sum the boot sector reports for sectors 1..=CHECK_SECTORS.
fn expected_sum(disk: &[u8]) -> u32 {
    disk[SECTOR..(CHECK_SECTORS as usize + 1) * SECTOR].iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

/// `dir/<name>.cfg` for an HVM guest with `disks` (xl disk specs).
fn hvm_config(dir: &Path, name: &str, disks: &[&str], extra: &str) -> ModuleSpec {
    let disks: Vec<String> = disks.iter().map(|d| format!("'{d}'")).collect();
    let text = format!(
        "# written by qemu-tests/tests/hvm.rs\nname = \"{name}\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\n\
         disk = [ {} ]\non_crash = \"destroy\"\n{extra}",
        disks.join(", ")
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, text.as_bytes());
    ModuleSpec::new(path, "")
}

fn boot_sector(dir: &Path) -> Vec<u8> {
    match guestasm::assemble_boot_sector(&guestasm::guests_dir().join("bootsector/mbr_disk_check.S"), &dir.join("mbr.bin")) {
        Ok(b) => b,
        Err(e) => panic!("cannot assemble the boot sector: {e:#}"),
    }
}

fn stubdom_module() -> ModuleSpec {
    ModuleSpec::new(PathBuf::from(&images().stubdom), "")
}

#[test]
fn seabios_boots_an_mbr_from_the_emulated_ide_disk() {
    boot_mbr("seabios_boots_an_mbr_from_the_emulated_ide_disk", "phy:disk0,hda,w");
}

#[test]
fn seabios_boots_an_mbr_from_a_virtio_blk_pci_disk() {
    boot_mbr("seabios_boots_an_mbr_from_a_virtio_blk_pci_disk", "phy:disk0,xvda,w,specification=virtio");
}

/// SeaBIOS boots `mbr_disk_check.S` from the guest's only disk
/// (`disk_spec`), which reads sectors through int 13h and writes one.
fn boot_mbr(name: &str, disk_spec: &str) {
    let dir = test_dir(name);
    let disk = disk_image(&boot_sector(&dir), 2048);
    let disk_path = dir.join("disk0.img");
    write_file(&disk_path, &disk);
    let q = base_qemu()
        .smp(ferrite_qemu_tests::HVM_HOST_CPUS)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(hvm_config(&dir, "hvm1", &[disk_spec], ""))
        .module(stubdom_module())
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(virtio_disk_args(&disk_path, "disk0", false));
    let mut vm = Vm::start(name, &dir, q);
    let ok = format!(r"^\(hvm1\) mbr: ok sectors={:08x} sum={:08x}$", CHECK_SECTORS, expected_sum(&disk));
    // (No line is expected for the boot sector's "mbr: started": SeaBIOS's
    // serial console flushes the end of "Booting from Hard Disk...\n"
    // lazily, from its timer interrupt, so it can land inside that line.
    // The boot sector halts for two interrupts before "mbr: ok", its last
    // two free bytes, so that line comes after the flush.)
    vm.expect_lines(&[r"domain \d+ \(hvm1\): HVM, 64 MiB", &ok, r"domain \d+ \(hvm1\) powered off"]);
    vm.expect_success();
    // The sector the boot code wrote through int 13h is on the host disk.
    let after = std::fs::read(&disk_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", disk_path.display()));
    let written = &after[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR];
    let expected: Vec<u8> = (0..SECTOR).map(|i| (0x5a + i) as u8).collect();
    if written != expected.as_slice() {
        vm.fail(&format!("sector {WRITE_LBA} on the host disk is not what the guest wrote: {:02x?}...", &written[..16]));
    }
}
