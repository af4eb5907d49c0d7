//! Host disks: Ferrite finds QEMU's virtio-blk PCI devices at boot and
//! reports each one's name (its serial), size and read-only flag.
//!
//! Three disks cover the variants the driver must handle: a transitional
//! device (legacy + modern, QEMU's default) that is writable, a modern-only
//! device that QEMU exports read-only (so it offers VIRTIO_BLK_F_RO), and a
//! disk without a serial behind a PCIe root port (a bridge the firmware
//! numbers as bus 1), which is named after its PCI address.
//!
//! Reading and writing are exercised by the HVM disk path (IDE in the stub
//! domain), which moves guest sectors through these devices.

use ferrite_qemu_tests::{base_qemu, images, pseudo_random_bytes, test_dir, Vm, BASE_CMDLINE};
use std::path::Path;

/// Writes a raw disk image of `len` bytes (pseudo-random, so a disk read at
/// a wrong offset would be visible to anyone reading it).
fn write_image(dir: &Path, name: &str, len: usize) -> String {
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, pseudo_random_bytes(len as u64, len)) {
        panic!("cannot write the disk image {}: {e}", path.display());
    }
    // QEMU's option syntax: a comma inside a value is written twice.
    path.display().to_string().replace(',', ",,")
}

#[test]
fn finds_virtio_disks_with_names_sizes_and_read_only_flag() {
    let name = "finds_virtio_disks_with_names_sizes_and_read_only_flag";
    let dir = test_dir(name);
    let alpha = write_image(&dir, "alpha.img", 8 << 20);
    let beta = write_image(&dir, "beta.img", 3 << 20);
    let gamma = write_image(&dir, "gamma.img", 1 << 20);
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE).extra_args([
        "-drive".to_string(),
        format!("file={alpha},if=none,id=alpha,format=raw"),
        "-device".to_string(),
        "virtio-blk-pci,drive=alpha,serial=alpha,addr=0x5".to_string(),
        "-drive".to_string(),
        format!("file={beta},if=none,id=beta,format=raw,readonly=on"),
        "-device".to_string(),
        "virtio-blk-pci,drive=beta,serial=beta,disable-legacy=on,addr=0x6".to_string(),
        "-device".to_string(),
        "pcie-root-port,id=port1,chassis=1,addr=0x7".to_string(),
        "-drive".to_string(),
        format!("file={gamma},if=none,id=gamma,format=raw"),
        "-device".to_string(),
        "virtio-blk-pci,drive=gamma,bus=port1".to_string(),
    ]);
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[
        r"\(ferrite\) disk alpha: 8 MiB \(16384 sectors\), read-write, virtio-blk at 00:05\.0$",
        r"\(ferrite\) disk beta: 3 MiB \(6144 sectors\), read-only, virtio-blk at 00:06\.0$",
        r"\(ferrite\) disk pci-01-00-0: 1 MiB \(2048 sectors\), read-write, virtio-blk at 01:00\.0$",
        "boot complete",
    ]);
    vm.expect_success();
    let text = vm.console_text();
    if text.contains("virtio-blk at") && text.contains("not usable") {
        vm.fail("a virtio-blk device was reported as not usable");
    }
}
