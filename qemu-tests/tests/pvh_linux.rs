//! Debian's Linux as a PVH dom0 under Ferrite (QEMU TCG + SVM, 1 GiB, 2
//! host CPUs, `dom0_mem=256M`), with a busybox initramfs whose `/init` is
//! `ferrite_tools::initramfs::TEST_INIT_SCRIPT`: it reports CPUs, memory,
//! clock and kernel release, runs a parallel sha256sum workload, then powers
//! off or reboots as `ferrite.test=` says.
//!
//! The kernel and busybox come from Debian packages (`apt-get download`,
//! cached in `~/.cache/ferrite`). Without apt access the tests print a note
//! and pass, unless `FERRITE_REQUIRE_GUESTS=1` (CI) makes that a failure.
//! A boot to power-off takes 3-6 s of wall time under TCG here; the VM
//! deadline is `FERRITE_LINUX_TIMEOUT_SECS` (default 180 s; boots take seconds) per boot.

use ferrite_qemu_tests::{
    dom0_linux_qemu, expect_init_line, expect_workload_ok, linux_cmdline, linux_guest, linux_vm_timeout, test_dir, Vm,
};
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use std::time::{Duration, Instant};

/// Boots dom0 Linux with `vcpus` vCPUs and `ferrite.test=poweroff`, checks
/// the init and workload lines, the power-off and Ferrite's success exit.
fn boot_and_power_off(name: &str, flavour: &str, vcpus: u32) {
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, flavour, &dir) else { return };
    let q = dom0_linux_qemu(&guest, vcpus, &linux_cmdline("poweroff"));
    let started = Instant::now();
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    let init = expect_init_line(&mut vm, vcpus);
    let at_init = started.elapsed();
    let secs = expect_workload_ok(&mut vm);
    vm.expect_lines(&["FERRITE-POWEROFF", r"domain 0 \(dom0\) powered off", "no domains left running"]);
    vm.expect_success();
    eprintln!(
        "[{name}] Linux {} with {} vCPU(s), {} kB: init after {:.0?}, workload {secs} s (guest clock), \
         powered off after {:.0?}",
        init.kernel,
        init.cpus,
        init.mem_kb,
        at_init,
        started.elapsed()
    );
}

#[test]
fn dom0_boots_to_init_and_powers_off() {
    boot_and_power_off("dom0_boots_to_init_and_powers_off", "cloud-amd64", 1);
}

#[test]
fn dom0_generic_kernel_boots_to_init_and_powers_off() {
    boot_and_power_off("dom0_generic_kernel_boots_to_init_and_powers_off", "amd64", 1);
}

#[test]
fn dom0_with_two_vcpus() {
    boot_and_power_off("dom0_with_two_vcpus", "cloud-amd64", 2);
}

/// dom0 rebooting reboots the machine, as in Xen: Linux's reboot reaches
/// Ferrite as a reset, and the host goes down with it (with no domUs to
/// stop first).
#[test]
fn dom0_reboot_reboots_the_machine() {
    let name = "dom0_reboot_reboots_the_machine";
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, "cloud-amd64", &dir) else { return };
    let q = dom0_linux_qemu(&guest, 1, &linux_cmdline("reboot"));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    expect_init_line(&mut vm, 1);
    expect_workload_ok(&mut vm);
    vm.expect_lines(&["FERRITE-REBOOTING", r"domain 0 \(dom0\) rebooting", r"host: dom0 rebooted; rebooting the machine"]);
    vm.expect_success();
}

/// The `ferrite up` demo's path: `ferrite.test=shell` leaves a busybox shell
/// on the console. Three Ctrl-a switch Ferrite's console input to dom0; a
/// typed command runs; `poweroff -f` ends the run.
#[test]
fn dom0_shell_takes_console_input() {
    let name = "dom0_shell_takes_console_input";
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, "cloud-amd64", &dir) else { return };
    let q = dom0_linux_qemu(&guest, 1, &linux_cmdline("shell"));
    let (mut vm, mut input) = Vm::start_interactive(name, &dir, q, linux_vm_timeout());
    expect_init_line(&mut vm, 1);
    vm.expect_lines(&["FERRITE-SHELL", "built-in shell"]);
    let gap = Duration::from_millis(20);
    let mut typed = |vm: &mut Vm, text: &str| {
        if let Err(e) = input.type_slowly(text, gap) {
            vm.fail(&format!("cannot write {text:?} to QEMU's stdin: {e}"));
        }
    };
    // Input goes to dom0 by default (as in Xen); three Ctrl-a go to Ferrite
    // and three more come back.
    typed(&mut vm, "\x01\x01\x01");
    vm.expect_lines(&[r"input to Ferrite"]);
    typed(&mut vm, "\x01\x01\x01");
    vm.expect_lines(&[r"input to domain 0 \(dom0\)"]);
    // The echoed command line shows `$((6 * 7))`; only the shell's output has 42.
    typed(&mut vm, "echo FERRITE-ECHO $((6 * 7)) $(grep -c ^processor /proc/cpuinfo)\n");
    vm.expect_lines(&["FERRITE-ECHO 42 1"]);
    typed(&mut vm, "poweroff -f\n");
    vm.expect_lines(&[r"domain 0 \(dom0\) powered off", "no domains left running"]);
    vm.expect_success();
}

/// Overcommit: four vCPUs of one guest on two pCPUs.
#[test]
fn dom0_with_four_vcpus_on_two_cpus() {
    boot_and_power_off("dom0_with_four_vcpus_on_two_cpus", "cloud-amd64", 4);
}

/// dom0 and a PVH domU from an xl-style config module run side by side,
/// each console prefixed with its name, and both power off cleanly.
#[test]
fn dom0_and_a_config_domu_run_at_once() {
    let name = "dom0_and_a_config_domu_run_at_once";
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, "cloud-amd64", &dir) else { return };
    let domu_kernel = dir.join("domu-vmlinux");
    let domu_initrd = dir.join("domu-initrd.cpio");
    std::fs::copy(&guest.vmlinux, &domu_kernel).expect("copy the domU kernel");
    std::fs::copy(&guest.initramfs, &domu_initrd).expect("copy the domU initrd");
    let cfg = dir.join("guest1.cfg");
    std::fs::write(
        &cfg,
        format!(
            "# a PVH domU started at boot\nname = \"guest1\"\ntype = \"pvh\"\nkernel = \"domu-vmlinux\"\n\
             ramdisk = \"domu-initrd.cpio\"\nmemory = 128\nvcpus = 1\ncmdline = \"{}\"\n",
            linux_cmdline("poweroff")
        ),
    )
    .expect("write the config");
    let q = dom0_linux_qemu(&guest, 1, &linux_cmdline("poweroff"))
        .module(ModuleSpec::new(&domu_kernel, ""))
        .module(ModuleSpec::new(&domu_initrd, ""))
        .module(ModuleSpec::new(&cfg, ""));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    vm.expect_lines(&[r"domain 1 \(guest1\): 128 MiB", "no domains left running"]);
    let text = vm.console_text();
    for want in [
        "(dom0) FERRITE-INIT cpus=1",
        "(guest1) FERRITE-INIT cpus=1",
        "domain 0 (dom0) powered off",
        "domain 1 (guest1) powered off",
    ] {
        if !text.contains(want) {
            vm.fail(&format!("the console lacks {want:?}"));
        }
    }
    vm.expect_success();
}
