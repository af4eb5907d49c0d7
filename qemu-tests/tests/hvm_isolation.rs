//! The isolation the stub-domain design promises (DESIGN.md, "Isolation
//! rules"), shown with real HVM guests: SeaBIOS in an HVM domU, its PC
//! devices emulated by its own stub domain, booting the test MBR
//! (`guests/bootsector/mbr_disk_check.S`) from an emulated IDE disk backed
//! by a QEMU virtio-blk device.
//!
//! * A device model that crashes (the IDE model's test-only fault
//!   injection switch, `device_model_fault_inject_ata`) takes down its own
//!   guest and nothing else: a PVH `ticker` domain keeps ticking to its end.
//! * Two HVM guests, each with its own stub domain, run at once and each
//!   reads (and writes) only its own disk.
//! * A stub domain that touches memory outside what it is given
//!   (`device_model_fault_inject_wild`: the same trigger makes the stub
//!   write just past its guest window) is faulted and destroyed with its
//!   guest, never served; the ticker keeps running.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::ferrite_tools::qemu::RunOutcome;
use ferrite_qemu_tests::regex::Regex;
use ferrite_qemu_tests::{
    base_qemu, images, pseudo_random_bytes, seabios_image, test_dir, virtio_disk_args, Vm,
    BASE_CMDLINE,
};
use std::path::{Path, PathBuf};

const SECTOR: usize = 512;
const DISK_SECTORS: usize = 2048;
/// What `mbr_disk_check.S` checks and where it writes.
const CHECK_SECTORS: u32 = 256;
const WRITE_LBA: usize = 300;
/// ATA IDENTIFY DEVICE: SeaBIOS issues it while probing the IDE disk,
/// long before it could boot from it.
const ATA_IDENTIFY: u8 = 0xEC;
/// The HVM guests' RAM (MiB); the stub's guest window ends there.
const GUEST_MIB: u64 = 64;
/// `ferrite_abi::GUEST_WINDOW`: the served guest's RAM appears at this
/// stub-physical address.
const GUEST_WINDOW: u64 = 0x80_0000_0000;
/// `ferrite_abi::IMAGE_BASE..STUB_RAM_BYTES`: where the stub's code lies.
const STUB_CODE: std::ops::Range<u64> = 0x10_0000..0x40_0000;

/// The ticker's lines (see hostile.rs), as the hypervisor console shows them.
const TICK: &str = r"^\(ticker\) tick \d+$";
const TICKER_DONE: &str = r"^\(ticker\) ticker done$";
const TICKER_OFF: &str = r"domain \d+ \(ticker\) powered off";
const NO_DOMAINS_LEFT: &str = r"\(ferrite\) no domains left running";

/// An HVM guest's creation line: captures its id and its stub domain's id.
fn created(name: &str) -> String {
    format!(
        r"domain (\d+) \({name}\): HVM, {GUEST_MIB} MiB, .*device model in domain (\d+) \({name}-dm\)$"
    )
}

/// A disk image: the boot sector, then sectors whose first dword is their
/// LBA and last dword its complement (what the MBR checks), with
/// pseudo-random bytes from `seed` between.
fn disk_image(mbr: &[u8], seed: u64) -> Vec<u8> {
    let mut disk = pseudo_random_bytes(seed, DISK_SECTORS * SECTOR);
    disk[..SECTOR].copy_from_slice(mbr);
    for lba in 1..DISK_SECTORS {
        let s = &mut disk[lba * SECTOR..(lba + 1) * SECTOR];
        s[..4].copy_from_slice(&(lba as u32).to_le_bytes());
        s[508..].copy_from_slice(&(!(lba as u32)).to_le_bytes());
    }
    disk
}

/// The byte sum the boot sector reports for sectors 1..=CHECK_SECTORS.
fn expected_sum(disk: &[u8]) -> u32 {
    disk[SECTOR..(CHECK_SECTORS as usize + 1) * SECTOR]
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `dir/<name>.cfg` for an HVM guest booting from host disk `disk` as hda.
fn hvm_config(dir: &Path, name: &str, disk: &str, extra: &str) -> ModuleSpec {
    let text = format!(
        "# written by qemu-tests/tests/hvm_isolation.rs\nname = \"{name}\"\ntype = \"hvm\"\n\
         memory = {GUEST_MIB}\nvcpus = 1\ndisk = [ 'phy:{disk},hda,w' ]\non_crash = \"destroy\"\n{extra}"
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, text.as_bytes());
    ModuleSpec::new(path, "")
}

/// `dir/ticker.cfg`: the PVH ticker of hostile.rs.
fn ticker_config(dir: &Path) -> ModuleSpec {
    let text =
        "# written by qemu-tests/tests/hvm_isolation.rs\nname = \"ticker\"\ntype = \"pvh\"\n\
                kernel = \"ticker.elf\"\nmemory = 64\nvcpus = 1\non_crash = \"destroy\"\n";
    let path = dir.join("ticker.cfg");
    write_file(&path, text.as_bytes());
    ModuleSpec::new(path, "")
}

fn ticker_kernel(dir: &Path) -> ModuleSpec {
    match guestasm::build_guest("ticker", dir) {
        Ok(p) => ModuleSpec::new(p, ""),
        Err(e) => panic!("cannot assemble the ticker guest: {e:#}"),
    }
}

fn boot_sector(dir: &Path) -> Vec<u8> {
    match guestasm::assemble_boot_sector(
        &guestasm::guests_dir().join("bootsector/mbr_disk_check.S"),
        &dir.join("mbr.bin"),
    ) {
        Ok(b) => b,
        Err(e) => panic!("cannot assemble the boot sector: {e:#}"),
    }
}

fn stubdom_module() -> ModuleSpec {
    ModuleSpec::new(PathBuf::from(&images().stubdom), "")
}

/// Writes `dir/<serial>.img` (the MBR disk with data `seed`); returns its
/// path, its contents and the QEMU arguments attaching it.
fn disk(dir: &Path, serial: &str, seed: u64) -> (PathBuf, Vec<u8>, Vec<String>) {
    let image = disk_image(&boot_sector(dir), seed);
    let path = dir.join(format!("{serial}.img"));
    write_file(&path, &image);
    let args = virtio_disk_args(&path, serial, false);
    (path, image, args)
}

/// Ferrite with HVM guest `hvm1` (its config's `extra` keys: the fault
/// injection) and the PVH ticker, on two host CPUs.
fn boot_faulty_guest_with_ticker(test: &str, extra: &str) -> Vm {
    let dir = test_dir(test);
    let (_, _, disk_args) = disk(&dir, "disk0", 0);
    // Two host CPUs: on one, the busy-waiting ticker can finish before
    // SeaBIOS reaches its disk, and "keeps running after the crash" would
    // not be shown.
    let q = base_qemu()
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(hvm_config(&dir, "hvm1", "disk0", extra))
        .module(ticker_config(&dir))
        .module(stubdom_module())
        .module(ModuleSpec::new(seabios_image(), ""))
        .module(ticker_kernel(&dir))
        .extra_args(disk_args);
    Vm::start(test, &dir, q)
}

fn capture(vm: &mut Vm, pattern: &str, line: &str, group: usize) -> String {
    match Regex::new(pattern)
        .ok()
        .and_then(|re| re.captures(line))
        .and_then(|c| c.get(group).map(|m| m.as_str().to_string()))
    {
        Some(s) => s,
        None => vm.fail(&format!(
            "cannot take group {group} of /{pattern}/ from {line:?}"
        )),
    }
}

/// After the guest and its stub domain crashed: the ticker printed ticks
/// after that, all twenty, and powered off; Ferrite ran out of domains and
/// reported failure (a domain crashed). The guest never got to its MBR.
fn expect_ticker_outlives_the_crash(mut vm: Vm) {
    vm.expect_lines(&[TICK, TICK, TICKER_DONE, TICKER_OFF, NO_DOMAINS_LEFT]);
    let text = vm.console_text();
    if !text.contains("(ticker) tick 20") {
        vm.fail("the ticker did not print all 20 ticks");
    }
    if text
        .lines()
        .any(|l| l.starts_with("(hvm1) ") && l.contains("mbr:"))
    {
        vm.fail("the HVM guest booted its MBR although its device model crashed while SeaBIOS probed the disk");
    }
    if text.contains("(hvm1) powered off") || text.contains("(hvm1-dm) powered off") {
        vm.fail("the crashed guest or its stub domain was reported powered off");
    }
    match vm.wait_exit() {
        RunOutcome::Failure => {}
        other => vm.fail(&format!(
            "a domain crashed, so Ferrite should report failure (QEMU status 3); got: {}",
            other.describe()
        )),
    }
}

#[test]
fn device_model_crash_takes_down_only_its_guest() {
    let mut vm = boot_faulty_guest_with_ticker(
        "device_model_crash_takes_down_only_its_guest",
        &format!("device_model_fault_inject_ata = {}\n", ATA_IDENTIFY),
    );
    let create = created("hvm1");
    let lines = vm.expect_lines(&[
        &create,
        &format!(r"^\(hvm1-dm\) warning: fault injection: the IDE model panics on ATA command {ATA_IDENTIFY:#04x}$"),
    ]);
    let guest = capture(&mut vm, &create, &lines[0], 1);
    let stub = capture(&mut vm, &create, &lines[0], 2);
    let lines = vm.expect_lines(&[
        // SeaBIOS found the controller and probes the disk: IDENTIFY.
        r"^\(hvm1-dm\) bios: ATA controller 1 at 1f0",
        &format!(
            r"^\(hvm1-dm\) panic at \S+: ide: deliberate panic on command {ATA_IDENTIFY:#04x} \(fault injection switch\)$"
        ),
        &format!(r"ERROR: domain {stub} \(hvm1-dm\) crashed: vcpu 0: triple fault \(shutdown\) at rip (0x[0-9a-f]+) \(rsp .*\)$"),
        &format!(
            r"ERROR: domain {guest} \(hvm1\) crashed: its device model \(hvm1-dm\) crashed: vcpu 0: triple fault \(shutdown\) at rip 0x[0-9a-f]+ \(rsp .*\)$"
        ),
    ]);
    let rip = capture(&mut vm, r"at rip 0x([0-9a-f]+) \(", &lines[2], 1);
    let rip = u64::from_str_radix(&rip, 16).unwrap_or(0);
    if !STUB_CODE.contains(&rip) {
        vm.fail(&format!(
            "the stub's triple fault at rip {rip:#x} is not in its code ({STUB_CODE:#x?})"
        ));
    }
    expect_ticker_outlives_the_crash(vm);
}

#[test]
fn stub_domain_touching_memory_outside_its_allowance_is_destroyed() {
    let wild = GUEST_WINDOW + (GUEST_MIB << 20);
    let mut vm = boot_faulty_guest_with_ticker(
        "stub_domain_touching_memory_outside_its_allowance_is_destroyed",
        &format!(
            "device_model_fault_inject_ata = {:#x}\ndevice_model_fault_inject_wild = 1\n",
            ATA_IDENTIFY
        ),
    );
    let create = created("hvm1");
    let lines = vm.expect_lines(&[
        &create,
        &format!(
            r"^\(hvm1-dm\) warning: fault injection: ATA command {ATA_IDENTIFY:#04x} makes this stub write to {wild:#x}, outside its memory$"
        ),
    ]);
    let guest = capture(&mut vm, &create, &lines[0], 1);
    let stub = capture(&mut vm, &create, &lines[0], 2);
    let access = format!("write of unmapped guest-physical address {wild:#x}");
    let lines = vm.expect_lines(&[
        r"^\(hvm1-dm\) bios: ATA controller 1 at 1f0",
        &format!(r"ERROR: domain {stub} \(hvm1-dm\) crashed: vcpu 0: {access} at rip 0x[0-9a-f]+ \(rsp .*\)$"),
        &format!(r"ERROR: domain {guest} \(hvm1\) crashed: its device model \(hvm1-dm\) crashed: vcpu 0: {access} at rip 0x[0-9a-f]+ \(rsp .*\)$"),
    ]);
    let rip = capture(&mut vm, r"at rip 0x([0-9a-f]+) \(", &lines[1], 1);
    let rip = u64::from_str_radix(&rip, 16).unwrap_or(0);
    if !STUB_CODE.contains(&rip) {
        vm.fail(&format!(
            "the stub's wild write at rip {rip:#x} is not in its code ({STUB_CODE:#x?})"
        ));
    }
    let text = vm.console_text();
    // The write was stopped at the nested page tables: the stub neither
    // went on (it would then panic saying so) nor fell back to the IDE
    // model's panic.
    if text.lines().any(|l| l.starts_with("(hvm1-dm) panic")) {
        vm.fail("the stub domain panicked: its wild write was not faulted, or the IDE model's panic ran instead");
    }
    expect_ticker_outlives_the_crash(vm);
}

#[test]
fn two_hvm_guests_with_their_own_stub_domains_run_at_once() {
    let name = "two_hvm_guests_with_their_own_stub_domains_run_at_once";
    let dir = test_dir(name);
    let (path_a, disk_a, args_a) = disk(&dir, "diska", 1);
    let (path_b, disk_b, args_b) = disk(&dir, "diskb", 2);
    let (sum_a, sum_b) = (expected_sum(&disk_a), expected_sum(&disk_b));
    assert_ne!(sum_a, sum_b, "the two disks must hold different data");
    let q = base_qemu()
        .smp(ferrite_qemu_tests::HVM_HOST_CPUS)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(hvm_config(&dir, "hvma", "diska", ""))
        .module(hvm_config(&dir, "hvmb", "diskb", ""))
        .module(stubdom_module())
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(args_a)
        .extra_args(args_b);
    let mut vm = Vm::start(name, &dir, q);
    let (create_a, create_b) = (created("hvma"), created("hvmb"));
    let lines = vm.expect_lines(&[&create_a, &create_b]);
    let (guest_a, guest_b) = (
        capture(&mut vm, &create_a, &lines[0], 1),
        capture(&mut vm, &create_b, &lines[1], 1),
    );
    let mut ids = vec![
        guest_a.clone(),
        capture(&mut vm, &create_a, &lines[0], 2),
        guest_b.clone(),
        capture(&mut vm, &create_b, &lines[1], 2),
    ];
    ids.sort();
    ids.dedup();
    if ids.len() != 4 {
        vm.fail(&format!(
            "two guests and two stub domains need four domain ids; got {ids:?} from {lines:?}"
        ));
    }
    // The two guests run side by side: their lines interleave in any order.
    let ok =
        |g: &str, sum: u32| format!(r"^\({g}\) mbr: ok sectors={CHECK_SECTORS:08x} sum={sum:08x}$");
    vm.expect_lines(&[NO_DOMAINS_LEFT]);
    let text = vm.console_text();
    for (g, sum) in [("hvma", sum_a), ("hvmb", sum_b)] {
        for pattern in [ok(g, sum), format!(r"domain \d+ \({g}\) powered off")] {
            let re = regex::Regex::new(&pattern).unwrap();
            if !text.lines().any(|l| re.is_match(l.trim_end())) {
                vm.fail(&format!("no console line matches /{pattern}/"));
            }
        }
    }
    for (g, dm, id) in [("hvma", "hvma-dm", &guest_a), ("hvmb", "hvmb-dm", &guest_b)] {
        // Each stub domain served only its own guest and disk.
        let want = format!("({dm}) stub domain for guest ");
        let stub_line = text.lines().find(|l| l.starts_with(&want)).unwrap_or("");
        if !stub_line.starts_with(&format!(
            "{want}{id} ({g}): 1 vCPU(s), RAM {GUEST_MIB} MiB below 4 GiB"
        )) {
            vm.fail(&format!(
                "stub domain {dm} does not say it serves {g}: {stub_line:?}"
            ));
        }
        let disk = if g == "hvma" { "diska" } else { "diskb" };
        if !text.contains(&format!(
            "({dm}) disk 0 ({disk}): IDE hda, {DISK_SECTORS} sectors"
        )) {
            vm.fail(&format!(
                "stub domain {dm} did not attach {disk} as its guest's hda"
            ));
        }
        if text
            .lines()
            .any(|l| l.starts_with(&format!("({g}) ")) && l.contains("mbr: FAIL"))
        {
            vm.fail(&format!("{g}'s boot sector reported a failure"));
        }
    }
    if text.contains("crashed") {
        vm.fail("no domain should crash here");
    }
    vm.expect_success();
    // Each guest wrote its pattern to its own disk and changed nothing else.
    let pattern: Vec<u8> = (0..SECTOR).map(|i| (0x5a + i) as u8).collect();
    for (path, before) in [(&path_a, &disk_a), (&path_b, &disk_b)] {
        let after = read_file(path);
        let mut expected = before.clone();
        expected[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR].copy_from_slice(&pattern);
        if after != expected {
            let first = after.iter().zip(&expected).position(|(a, b)| a != b);
            vm.fail(&format!(
                "{} is not its image plus the guest's sector {WRITE_LBA}: first difference at byte {first:?}",
                path.display()
            ));
        }
    }
}
