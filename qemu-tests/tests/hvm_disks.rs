//! HVM guests' disks, end to end: SeaBIOS in an HVM domU, its IDE
//! controller emulated by its stub domain, each IDE disk backed by a QEMU
//! virtio-blk device that the hypervisor drives.
//!
//! * Read-only disks: a disk attached `r` in the xl config, and a disk
//!   attached `w` whose host device is read-only, both refuse the guest's
//!   write (the IDE model aborts it, int 13h fails) and keep their data:
//!   the stub takes a disk as read-only when the config or the device says
//!   so. The guest is the test MBR of hvm.rs
//!   (`guests/bootsector/mbr_disk_check.S`).
//! * Several disks per guest: booted from hda, `guests/bootsector/
//!   disks_check.S` checks every BIOS hard disk (each written with its own
//!   tag) and writes one sector to each but the boot disk; the host then
//!   finds each write on the right image and nothing else changed. With
//!   four disks (hda..hdd, both IDE channels), the read-only hdd refuses
//!   its write while the others take theirs.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::regex::Regex;
use ferrite_qemu_tests::{
    base_qemu, images, pseudo_random_bytes, seabios_image, test_dir, virtio_disk_args, Vm,
    BASE_CMDLINE,
};
use std::path::{Path, PathBuf};

const SECTOR: usize = 512;
const DISK_SECTORS: usize = 2048;
/// The sector both boot sectors write.
const WRITE_LBA: usize = 300;
/// The sectors `mbr_disk_check.S` reads and checks.
const MBR_CHECK_SECTORS: usize = 256;
/// The sectors `disks_check.S` reads and checks on each drive.
const DISKS_CHECK_SECTORS: usize = 128;
/// The LBA `mbr_disk_check.S` reports when its write fails: its `lba`
/// variable, one past the last sector it checked (it does not set it to
/// WRITE_LBA for the write).
const MBR_FAIL_W_LBA: usize = MBR_CHECK_SECTORS + 1;

const NO_DOMAINS_LEFT: &str = r"\(ferrite\) no domains left running";

/// A disk image of `sectors`: sector 0 is `mbr` (or zeros), every other
/// sector has dword 0 = `(tag << 24) | LBA` and its last dword the
/// complement (what both boot sectors check), pseudo-random bytes from
/// `seed` between.
fn disk_image(mbr: Option<&[u8]>, tag: u8, seed: u64, sectors: usize) -> Vec<u8> {
    let mut disk = pseudo_random_bytes(seed, sectors * SECTOR);
    match mbr {
        Some(mbr) => disk[..SECTOR].copy_from_slice(mbr),
        None => disk[..SECTOR].fill(0),
    }
    for lba in 1..sectors {
        let s = &mut disk[lba * SECTOR..(lba + 1) * SECTOR];
        let head = (u32::from(tag) << 24) | lba as u32;
        s[..4].copy_from_slice(&head.to_le_bytes());
        s[508..].copy_from_slice(&(!head).to_le_bytes());
    }
    disk
}

/// The byte sum of sectors 1..=`n`, as the boot sectors report it.
fn sum(disk: &[u8], n: usize) -> u32 {
    disk[SECTOR..(n + 1) * SECTOR]
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

/// What `disks_check.S` writes to WRITE_LBA of the drive tagged `tag`.
fn write_pattern(tag: u8) -> Vec<u8> {
    let first = 0xa0u8.wrapping_add(tag.wrapping_mul(0x10));
    (0..SECTOR).map(|i| first.wrapping_add(i as u8)).collect()
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `dir/<name>.cfg` for an HVM guest with `disks` (xl disk specs).
fn hvm_config(dir: &Path, name: &str, disks: &[&str]) -> ModuleSpec {
    let disks: Vec<String> = disks.iter().map(|d| format!("'{d}'")).collect();
    let text = format!(
        "# written by qemu-tests/tests/hvm_disks.rs\nname = \"{name}\"\ntype = \"hvm\"\nmemory = 64\n\
         vcpus = 1\ndisk = [ {} ]\non_crash = \"destroy\"\n",
        disks.join(", ")
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, text.as_bytes());
    ModuleSpec::new(path, "")
}

/// Assembles `guests/bootsector/<source>.S`.
fn boot_sector(dir: &Path, source: &str) -> Vec<u8> {
    match guestasm::assemble_boot_sector(
        &guestasm::guests_dir().join(format!("bootsector/{source}.S")),
        &dir.join(format!("{source}.bin")),
    ) {
        Ok(b) => b,
        Err(e) => panic!("cannot assemble the boot sector {source}: {e:#}"),
    }
}

/// Ferrite with HVM guest `hvm1` (`disks` in its config) and the given
/// QEMU disk arguments, on [`ferrite_qemu_tests::HVM_HOST_CPUS`].
fn start(test: &str, dir: &Path, disks: &[&str], disk_args: Vec<String>) -> Vm {
    let q = base_qemu()
        .smp(ferrite_qemu_tests::HVM_HOST_CPUS)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(hvm_config(dir, "hvm1", disks))
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(disk_args);
    Vm::start(test, dir, q)
}

/// Some console line in `text` matches `pattern`, or the test fails.
fn expect_line(vm: &mut Vm, text: &str, pattern: &str) {
    let re = Regex::new(pattern).unwrap_or_else(|e| panic!("bad regex {pattern:?}: {e}"));
    if !text.lines().any(|l| re.is_match(l.trim_end())) {
        vm.fail(&format!("no console line matches /{pattern}/"));
    }
}

/// The guest and its stub domain powered off, nothing crashed, Ferrite
/// reported success.
fn expect_clean_power_off(vm: &mut Vm) {
    vm.expect_lines(&[r"domain \d+ \(hvm1\) powered off", NO_DOMAINS_LEFT]);
    let text = vm.console_text();
    expect_line(vm, &text, r"domain \d+ \(hvm1-dm\) powered off");
    if text.contains("crashed") {
        vm.fail("no domain should crash here");
    }
    vm.expect_success();
}

/// `path` holds exactly `expected`; else the test fails naming the first
/// differing sector.
fn expect_image(vm: &mut Vm, path: &Path, expected: &[u8], what: &str) {
    let after = read_file(path);
    if after != expected {
        let first = after.iter().zip(expected).position(|(a, b)| a != b);
        vm.fail(&format!(
            "{} ({what}) does not hold what it should: {} bytes, {} expected; first difference at byte {first:?} (sector {:?})",
            path.display(),
            after.len(),
            expected.len(),
            first.map(|b| b / SECTOR)
        ));
    }
}

/// One guest, one disk (`disk0`, the MBR disk) attached with `spec`, its
/// QEMU drive read-only or not: the MBR reads its sectors, then its write
/// must fail with nothing written.
fn read_only_disk_refuses_the_write(test: &str, spec: &str, device_read_only: bool) {
    let dir = test_dir(test);
    let image = disk_image(
        Some(&boot_sector(&dir, "mbr_disk_check")),
        0,
        7,
        DISK_SECTORS,
    );
    let path = dir.join("disk0.img");
    write_file(&path, &image);
    let mut vm = start(
        test,
        &dir,
        &[spec],
        virtio_disk_args(&path, "disk0", device_read_only),
    );
    let host_ro = if device_read_only {
        "read-only"
    } else {
        "read-write"
    };
    vm.expect_lines(&[
        &format!(
            r"\(ferrite\) disk disk0: 1 MiB \({DISK_SECTORS} sectors\), {host_ro}, virtio-blk at "
        ),
        r"domain \d+ \(hvm1\): HVM, 64 MiB, .*1 disk\(s\); device model in domain \d+ \(hvm1-dm\)$",
        // The stub learned that the disk is read-only (from the config or
        // from the device) ...
        &format!(r"^\(hvm1-dm\) disk 0 \(disk0\): IDE hda, {DISK_SECTORS} sectors, read-only$"),
        // ... so the guest's reads passed (the FAIL is no r or d) and its
        // write failed.
        &format!(r"^\(hvm1\) mbr: FAIL w {MBR_FAIL_W_LBA:08x}$"),
    ]);
    expect_clean_power_off(&mut vm);
    let text = vm.console_text();
    if text.contains("mbr: ok") {
        vm.fail("the MBR reported success on a read-only disk");
    }
    expect_image(&mut vm, &path, &image, "read-only disk");
}

#[test]
fn read_only_disk_in_the_config_refuses_the_guests_write() {
    read_only_disk_refuses_the_write(
        "read_only_disk_in_the_config_refuses_the_guests_write",
        "phy:disk0,hda,r",
        false,
    );
}

#[test]
fn read_only_host_disk_refuses_the_guests_write() {
    read_only_disk_refuses_the_write(
        "read_only_host_disk_refuses_the_guests_write",
        "phy:disk0,hda,w",
        true,
    );
}

/// A disk of the several-disks tests.
struct TestDisk {
    serial: String,
    vdev: &'static str,
    read_only: bool,
    tag: u8,
    sectors: usize,
    path: PathBuf,
    image: Vec<u8>,
}

/// Boots `hvm1` with `disks` (vdev, read-only, sectors), disk i being
/// `disk<i>` with tag i; disk 0 (hda) holds `disks_check.S`. Checks what
/// the guest reports for each BIOS drive (80 + i is disk i) and what each
/// image holds afterwards.
fn several_disks(test: &str, disks: &[(&'static str, bool, usize)]) {
    let dir = test_dir(test);
    let mbr = boot_sector(&dir, "disks_check");
    let mut all = Vec::new();
    let mut args = Vec::new();
    for (i, &(vdev, read_only, sectors)) in disks.iter().enumerate() {
        let serial = format!("disk{i}");
        let tag = i as u8;
        // (`pseudo_random_bytes` ignores the seed's low bit.)
        let seed = (i as u64 + 1) << 8;
        let image = disk_image((i == 0).then_some(mbr.as_slice()), tag, seed, sectors);
        let path = dir.join(format!("{serial}.img"));
        write_file(&path, &image);
        args.extend(virtio_disk_args(&path, &serial, false));
        all.push(TestDisk {
            serial,
            vdev,
            read_only,
            tag,
            sectors,
            path,
            image,
        });
    }
    let mut sums: Vec<u32> = all
        .iter()
        .map(|d| sum(&d.image, DISKS_CHECK_SECTORS))
        .collect();
    sums.sort();
    sums.dedup();
    assert_eq!(sums.len(), all.len(), "the disks must hold different data");
    let specs: Vec<String> = all
        .iter()
        .map(|d| {
            format!(
                "phy:{},{},{}",
                d.serial,
                d.vdev,
                if d.read_only { "r" } else { "w" }
            )
        })
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut vm = start(test, &dir, &specs, args);

    let mut expected: Vec<String> = vec![format!(
        r"domain \d+ \(hvm1\): HVM, 64 MiB, .*{} disk\(s\); device model in domain \d+ \(hvm1-dm\)$",
        all.len()
    )];
    for (i, d) in all.iter().enumerate() {
        expected.push(format!(
            r"^\(hvm1-dm\) disk {i} \({}\): IDE {}, {} sectors{}$",
            d.serial,
            d.vdev,
            d.sectors,
            if d.read_only { ", read-only" } else { "" }
        ));
    }
    // The guest's own lines are checked below, once it is done: SeaBIOS's
    // serial console flushes the end of "Booting from Hard Disk...\n" lazily
    // from its timer interrupt, so ".\n" can land inside the boot sector's
    // first line (as on a real serial line), and is taken out first.
    let mut guest_lines = vec![format!(r"^\(hvm1\) .*disks: count {:02x}$", all.len())];
    for (i, d) in all.iter().enumerate() {
        let drive = 0x80 + i;
        guest_lines.push(format!(
            r"^\(hvm1\) disks: {drive:02x} tag {:02x} sum={:08x}$",
            d.tag,
            sum(&d.image, DISKS_CHECK_SECTORS)
        ));
        if i != 0 {
            // The IDE model aborts the write; SeaBIOS reports some error.
            let result = if d.read_only { "err [0-9a-f]{2}" } else { "ok" };
            guest_lines.push(format!(r"^\(hvm1\) disks: {drive:02x} write {result}$"));
        }
    }
    guest_lines.push(r"^\(hvm1\) disks: done$".to_string());
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    vm.expect_lines(&expected);
    vm.expect_lines(&[r"\(hvm1\) disks: done"]);
    expect_clean_power_off(&mut vm);
    let text = vm.console_text().replace(".\r\n(hvm1) ", "").replace(".\n(hvm1) ", "");
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let mut from = 0;
    for pattern in &guest_lines {
        let re = Regex::new(pattern).unwrap_or_else(|e| panic!("bad regex {pattern:?}: {e}"));
        match lines[from..].iter().position(|l| re.is_match(l)) {
            Some(i) => from += i + 1,
            None => vm.fail(&format!("the console lacks a line matching {pattern:?} (in order)")),
        }
    }
    let text = vm.console_text();
    if text.contains("disks: ") && text.contains(" FAIL ") {
        vm.fail("the boot sector reported a failure");
    }

    // Each write landed on its own disk's image and nowhere else: the boot
    // disk and the read-only disks are unchanged, each writable disk holds
    // its own pattern at WRITE_LBA and its data elsewhere.
    for (i, d) in all.iter().enumerate() {
        let mut want = d.image.clone();
        if i != 0 && !d.read_only {
            want[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR]
                .copy_from_slice(&write_pattern(d.tag));
        }
        let what = format!(
            "{} as {}{}",
            d.serial,
            d.vdev,
            if d.read_only { ", read-only" } else { "" }
        );
        expect_image(&mut vm, &d.path, &want, &what);
    }
}

#[test]
fn hvm_guest_reads_and_writes_its_second_disk() {
    // hdb is twice hda's size: each IDE drive reports its own disk.
    several_disks(
        "hvm_guest_reads_and_writes_its_second_disk",
        &[
            ("hda", false, DISK_SECTORS),
            ("hdb", false, 2 * DISK_SECTORS),
        ],
    );
}

#[test]
fn hvm_guest_with_four_disks_on_both_ide_channels() {
    several_disks(
        "hvm_guest_with_four_disks_on_both_ide_channels",
        &[
            ("hda", false, DISK_SECTORS),
            ("hdb", false, DISK_SECTORS),
            ("hdc", false, 2 * DISK_SECTORS),
            ("hdd", true, DISK_SECTORS),
        ],
    );
}

/// Two configs naming the same host disk: the second is refused with a
/// reason when either would write it (the first runs as usual, its data
/// never changed under it by another guest); two read-only users share it.
fn shared_disk(test: &str, first: &str, second: &str, refused: bool) {
    let dir = test_dir(test);
    let image = disk_image(Some(&boot_sector(&dir, "mbr_disk_check")), 0, 7, DISK_SECTORS);
    let path = dir.join("disk0.img");
    write_file(&path, &image);
    let q = base_qemu()
        .smp(ferrite_qemu_tests::HVM_HOST_CPUS)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(hvm_config(&dir, "hvm1", &[first]))
        .module(hvm_config(&dir, "hvm2", &[second]))
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(virtio_disk_args(&path, "disk0", false));
    let mut vm = Vm::start(test, &dir, q);
    vm.expect_lines(&[r"domain \d+ \(hvm1\): HVM, 64 MiB, .*1 disk\(s\)"]);
    if refused {
        vm.expect_lines(&[
            r"hvm2: disk 'disk0' is (written|used read-only) by domain \d+ \(hvm1\); a disk written by one domain cannot be used by another",
            r"domain \d+ \(hvm1\) powered off",
            NO_DOMAINS_LEFT,
        ]);
        if vm.console_text().contains("(hvm2) ") {
            vm.fail("the refused domain ran");
        }
    } else {
        vm.expect_lines(&[r"domain \d+ \(hvm2\): HVM, 64 MiB, .*1 disk\(s\)", NO_DOMAINS_LEFT]);
    }
    vm.wait_exit();
}

#[test]
fn a_disk_written_by_one_domain_is_refused_to_another() {
    shared_disk("a_disk_written_by_one_domain_is_refused_to_another", "phy:disk0,hda,w", "phy:disk0,hda,w", true);
}

#[test]
fn a_disk_used_read_only_is_refused_to_a_writer() {
    shared_disk("a_disk_used_read_only_is_refused_to_a_writer", "phy:disk0,hda,r", "phy:disk0,hda,w", true);
}

#[test]
fn read_only_users_share_a_disk() {
    shared_disk("read_only_users_share_a_disk", "phy:disk0,hda,r", "phy:disk0,hda,r", false);
}

/// `fs rep outsb` to the stub's UART prints the bytes at FS:SI, plain
/// `rep outsb` those at DS:SI (`guests/bootsector/string_io.S`): without
/// decode assists the hypervisor reads the segment from the instruction's
/// prefixes (before, it always used ES). With DF=1 it walks backwards, as
/// hardware does. Also: the guest's control characters reach the console
/// in caret notation.
#[test]
fn string_output_reads_from_the_segment_the_instruction_names() {
    let name = "string_output_reads_from_the_segment_the_instruction_names";
    let dir = test_dir(name);
    let image = disk_image(Some(&boot_sector(&dir, "string_io")), 0, 7, DISK_SECTORS);
    let path = dir.join("disk0.img");
    write_file(&path, &image);
    let mut vm = start(name, &dir, &["phy:disk0,hda,w"], virtio_disk_args(&path, "disk0", false));
    vm.expect_lines(&[r"^\(hvm1\) .*ds: ok$", r"^\(hvm1\) fs: ok$", r"^\(hvm1\) df: ok$", r"domain \d+ \(hvm1\) powered off"]);
    let text = vm.console_text();
    if text.contains("WRONG") {
        vm.fail("OUTS read from ES");
    }
    // SeaBIOS clears the screen with escape sequences: they reach the
    // console in caret notation, never raw (console::printable).
    if text.contains('\u{1b}') {
        vm.fail("a guest's escape character reached the console raw");
    }
    if !text.contains("^[[2J") {
        vm.fail("SeaBIOS's clear-screen sequence is not shown in caret notation");
    }
}

/// Read-modify-write instructions on device memory the stub domain
/// emulates (`guests/bootsector/mmio_rmw.S`: OR, XCHG, BTS and INC on a
/// PCI-hole address, from protected mode) each read once, write the value
/// computed from the real read once, and complete. Before, the write
/// replaced the instruction's own pending read and was sent again at every
/// replay: the guest never got past its first OR.
#[test]
fn read_modify_write_on_stub_mmio_completes_with_the_real_value() {
    let name = "read_modify_write_on_stub_mmio_completes_with_the_real_value";
    let dir = test_dir(name);
    let image = disk_image(Some(&boot_sector(&dir, "mmio_rmw")), 0, 7, DISK_SECTORS);
    let path = dir.join("disk0.img");
    write_file(&path, &image);
    let mut vm = start(name, &dir, &["phy:disk0,hda,w"], virtio_disk_args(&path, "disk0", false));
    vm.expect_lines(&[r"^\(hvm1\) .*rmw: ok$", r"domain \d+ \(hvm1\) powered off"]);
}
