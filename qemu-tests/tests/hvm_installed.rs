//! The installed-system disk (`ferrite_tools::installed_disk`) on bare
//! QEMU, without Ferrite: SeaBIOS boots GRUB from the MBR, GRUB reads
//! grub.cfg, the kernel and the initramfs from the ext4 partition, the
//! initramfs mounts `/dev/sda1` and switches to it, and the root's
//! `/sbin/init` hashes a file and writes a marker that must reach the disk
//! image. This checks the disk itself, so a failure of the same disk under
//! Ferrite points at Ferrite.

use ferrite_qemu_tests::ferrite_tools::installed_disk::{build_installed_disk, InstalledDisk};
use ferrite_qemu_tests::ferrite_tools::qemu::{QemuCommand, TcgThreads};
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{
    base_qemu, debian_packages, images, linux_vm_timeout, seabios_image, test_dir, virtio_disk_args, Vm, BASE_CMDLINE,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CPUS: u32 = 2;

/// The disk in `dir`, or None (after saying why) when the Debian packages
/// cannot be fetched and guests are not required.
fn installed_disk(test: &str, dir: &Path, marker: &str) -> Option<InstalledDisk> {
    if !debian_packages(test, &["linux-image-cloud-amd64", "busybox-static"]) {
        return None;
    }
    let started = Instant::now();
    let disk = build_installed_disk(dir, marker, "").unwrap_or_else(|e| panic!("[{test}] cannot build the disk: {e}"));
    eprintln!("[{test}] built {} in {:.1?}", disk.path.display(), started.elapsed());
    Some(disk)
}

#[test]
fn installed_disk_boots_on_bare_qemu() {
    let name = "installed_disk_boots_on_bare_qemu";
    let dir = test_dir(name);
    let marker = format!("installed-{}-{}", std::process::id(), ferrite_qemu_tests::unix_now());
    let Some(disk) = installed_disk(name, &dir, &marker) else { return };

    // What `qemu-system-x86_64 -machine pc -m 256 -smp 2 -nographic
    // -no-reboot -drive file=disk.img,format=raw,if=ide` does, with the
    // serial port going to a file. No SVM: nothing nested runs here.
    let drive = format!("file={},format=raw,if=ide", disk.path.display().to_string().replace(',', ",,"));
    let q = QemuCommand::new()
        .machine("pc")
        .cpu("qemu64")
        .memory_mib(256)
        .smp(CPUS)
        .tcg_threads(TcgThreads::Multi)
        .extra_args(["-drive", drive.as_str()]);
    let started = Instant::now();
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    let patterns = disk.expected_console_lines(CPUS);
    vm.expect_lines(&patterns.iter().map(String::as_str).collect::<Vec<_>>());
    vm.wait_exit();
    if vm.hit_deadline() {
        vm.fail("still running after the guest wrote its marker: `poweroff -f` did not stop QEMU");
    }
    match vm.poll_exit() {
        Some(status) if status.success() => {}
        other => vm.fail(&format!("QEMU should exit 0 when the guest powers off, got {other:?}")),
    }
    eprintln!("[{name}] booted to power-off in {:.1?}", started.elapsed());
    match disk.read_marker() {
        Ok(got) if got == marker => {}
        Ok(got) => vm.fail(&format!("/marker on the disk image holds {got:?}, not {marker:?}")),
        Err(e) => vm.fail(&format!("cannot read /marker back from the disk image: {e}")),
    }
}

/// The same disk as the HVM guest's IDE disk under Ferrite (its host side
/// a virtio-blk disk), with `host_cpus` host CPUs: SeaBIOS in the guest,
/// the IDE controller in its stub domain, nothing on the guest's command
/// line but what its own grub.cfg says.
fn boots_under_ferrite(name: &str, host_cpus: u32) {
    let dir = test_dir(name);
    let marker = format!("installed-{}-{}", std::process::id(), ferrite_qemu_tests::unix_now());
    let Some(disk) = installed_disk(name, &dir, &marker) else { return };
    let cfg = dir.join("installed.cfg");
    let text = format!(
        "# written by qemu-tests/tests/hvm_installed.rs\nname = \"installed\"\ntype = \"hvm\"\nmemory = 256\n\
         vcpus = {CPUS}\ndisk = [ 'phy:disk0,hda,w' ]\non_crash = \"destroy\"\n"
    );
    if let Err(e) = std::fs::write(&cfg, text) {
        panic!("[{name}] cannot write {}: {e}", cfg.display());
    }
    let q = base_qemu()
        .memory_mib(1024)
        .smp(host_cpus)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(ModuleSpec::new(&cfg, ""))
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(virtio_disk_args(&disk.path, "disk0", false));
    let started = Instant::now();
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout() * 2);
    let patterns = disk.expected_console_lines(CPUS);
    let mut all = vec![r"domain \d+ \(installed\): HVM, 256 MiB".to_string()];
    all.extend(patterns);
    all.push(r"domain \d+ \(installed\) powered off".to_string());
    vm.expect_lines(&all.iter().map(String::as_str).collect::<Vec<_>>());
    vm.expect_success();
    eprintln!("[{name}] booted to power-off in {:.1?}", started.elapsed());
    match disk.read_marker() {
        Ok(got) if got == marker => {}
        Ok(got) => vm.fail(&format!("/marker on the disk image holds {got:?}, not {marker:?}")),
        Err(e) => vm.fail(&format!("cannot read /marker back from the disk image: {e}")),
    }
}

#[test]
fn installed_disk_boots_under_ferrite_on_one_host_cpu() {
    boots_under_ferrite("installed_disk_boots_under_ferrite_on_one_host_cpu", 1);
}

#[test]
fn installed_disk_boots_under_ferrite_on_two_host_cpus() {
    boots_under_ferrite("installed_disk_boots_under_ferrite_on_two_host_cpus", 2);
}
