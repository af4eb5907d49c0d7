//! Debian's Linux as an HVM guest: SeaBIOS boots it directly through
//! fw_cfg (QEMU's `linuxboot_dma.bin` option ROM, kernel, initrd and
//! command line served by the stub domain), its `ata_piix` driver finds
//! the stub's PIIX4 IDE disk and picks a UDMA mode, reads 64 MiB by
//! bus-master DMA (the data goes from the host virtio-blk device straight
//! into guest memory) whose hash must match the host's, writes a marker,
//! reboots (Ferrite rebuilds the guest and its stub domain) and finds the
//! marker again. The same with the disk as virtio-blk on the stub's PCI
//! bus (`specification=virtio`): Debian's `virtio_pci` and `virtio_blk`
//! modules drive it, with INTx through the PIIX4 PIRQ routes.

use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::ferrite_tools::{guest_images, initramfs};
use ferrite_qemu_tests::{
    base_qemu, debian_packages, images, linux_vm_timeout, linuxboot_rom, pseudo_random_bytes, seabios_image, test_dir,
    virtio_disk_args, Vm, BASE_CMDLINE,
};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHECK_MIB: usize = 64;
const DISK_MIB: usize = 72;
/// Past the checked area: where the guest writes its marker.
const MARKER_LBA: usize = (CHECK_MIB + 4) * 2048;

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

fn sha256_hex(path: &Path, bytes: usize) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {bytes} '{}' | sha256sum", path.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run sha256sum: {e}"));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// The cloud kernel's bzImage and an initramfs with `modules` (and their
/// dependencies) and the HVM disk init, or None to skip.
fn hvm_linux_files(test: &str, dir: &Path, modules: &[&str]) -> Option<(PathBuf, PathBuf)> {
    if !debian_packages(test, &["linux-image-cloud-amd64", "busybox-static"]) {
        return None;
    }
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinuz = guest_images::find_vmlinuz(&root).unwrap_or_else(|e| panic!("[{test}] {e}"));
    let modules = initramfs::kernel_modules(&root, modules).unwrap_or_else(|e| panic!("[{test}] {e}"));
    let image = initramfs::busybox_initramfs_with_modules(initramfs::HVM_DISK_INIT_SCRIPT, &modules)
        .unwrap_or_else(|e| panic!("[{test}] cannot build the initramfs: {e}"));
    let initrd = dir.join("initramfs-hvm.cpio");
    write_file(&initrd, &image);
    Some((vmlinuz, initrd))
}

#[test]
fn linux_boots_hvm_uses_udma_and_keeps_data_across_a_restart() {
    linux_disk_round_trip(
        "linux_boots_hvm_uses_udma_and_keeps_data_across_a_restart",
        &["ata_piix", "sd_mod"],
        "phy:disk0,hda,w",
        "sda",
        Some(r"^\(hvmlinux\) FERRITE-ATA configured for XFER_UDMA_\d+$"),
    );
}

#[test]
fn linux_hvm_guest_uses_a_virtio_blk_pci_disk_and_keeps_data_across_a_restart() {
    linux_disk_round_trip(
        "linux_hvm_guest_uses_a_virtio_blk_pci_disk_and_keeps_data_across_a_restart",
        &["virtio_pci", "virtio_blk"],
        "phy:disk0,xvda,w,specification=virtio",
        "vda",
        None,
    );
}

/// Boots Linux with one disk (`disk_spec`, seen as `/dev/<dev>`), checks
/// its hash, writes a marker, restarts, finds the marker, and checks it on
/// the host image.
fn linux_disk_round_trip(name: &str, modules: &[&str], disk_spec: &str, dev: &str, ata_line: Option<&str>) {
    let dir = test_dir(name);
    let Some((vmlinuz, initrd)) = hvm_linux_files(name, &dir, modules) else { return };
    // A pseudo-random disk; the marker sector starts zeroed.
    let mut disk = pseudo_random_bytes(0x5eed, DISK_MIB << 20);
    disk[MARKER_LBA * 512..(MARKER_LBA + 1) * 512].fill(0);
    let disk_path = dir.join("disk0.img");
    write_file(&disk_path, &disk);
    drop(disk);
    let host_sum = sha256_hex(&disk_path, CHECK_MIB << 20);
    let marker = format!("{:08x}", std::process::id());

    let kernel_name = vmlinuz.file_name().unwrap().to_string_lossy().into_owned();
    let cfg = format!(
        "# written by qemu-tests/tests/hvm_linux.rs\nname = \"hvmlinux\"\ntype = \"hvm\"\nmemory = 256\nvcpus = 1\n\
         kernel = \"{kernel_name}\"\nramdisk = \"initramfs-hvm.cpio\"\n\
         cmdline = \"console=ttyS0 loglevel=4 ferrite.check_mib={CHECK_MIB} ferrite.marker={marker} ferrite.marker_lba={MARKER_LBA} ferrite.disk={dev}\"\n\
         disk = [ '{disk_spec}' ]\non_reboot = \"restart\"\non_crash = \"destroy\"\n"
    );
    let cfg_path = dir.join("hvmlinux.cfg");
    write_file(&cfg_path, cfg.as_bytes());
    let q = base_qemu()
        .memory_mib(1024)
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(ModuleSpec::new(&cfg_path, ""))
        .module(ModuleSpec::new(&vmlinuz, ""))
        .module(ModuleSpec::new(&initrd, ""))
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .module(ModuleSpec::new(linuxboot_rom(), ""))
        .extra_args(virtio_disk_args(&disk_path, "disk0", false));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout() * 2);
    let sha = format!(r"^\(hvmlinux\) FERRITE-DISK-SHA256 {host_sum}$");
    let mut lines = vec![r"domain \d+ \(hvmlinux\): HVM, 256 MiB", r"^\(hvmlinux\) .*FERRITE-INIT cpus=1 "];
    lines.extend(ata_line);
    lines.extend([
        sha.as_str(),
        r"^\(hvmlinux\) FERRITE-MARKER written$",
        r"domain \d+ \(hvmlinux\) rebooting",
        r"domain \d+ \(hvmlinux\) restarted as domain \d+",
        r"^\(hvmlinux\) .*FERRITE-INIT cpus=1 ",
        sha.as_str(),
        r"^\(hvmlinux\) FERRITE-MARKER found$",
        r"domain \d+ \(hvmlinux\) powered off",
    ]);
    vm.expect_lines(&lines);
    vm.expect_success();
    let after = std::fs::read(&disk_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", disk_path.display()));
    let want = format!("FERRITE-MARKER-{marker}");
    if !after[MARKER_LBA * 512..].starts_with(want.as_bytes()) {
        vm.fail("the marker the guest wrote is not on the host disk image");
    }
}
