//! Boot scenarios: Ferrite under QEMU TCG (`-cpu qemu64,+svm,+npt`, q35,
//! 512 MiB) through each boot protocol, checking what it prints and the
//! verdict it reports through isa-debug-exit (`debug_exit=0xf4`).

use ferrite_qemu_tests::ferrite_tools::iso::{build_iso, IsoSpec};
use ferrite_qemu_tests::{base_qemu, expect_module, images, test_dir, write_module, TestModule, Vm, BASE_CMDLINE};
use std::path::Path;

/// The two modules the multiboot scenarios load: sizes that are not page
/// multiples, so a rounded-up size would be caught.
fn two_modules(dir: &Path) -> [TestModule; 2] {
    [
        write_module(dir, "mod1", 0x5EED_0001, 5000, "arg1=one"),
        write_module(dir, "mod2", 0x5EED_0002, 70000, "arg2=two"),
    ]
}

#[test]
fn boots_via_pvh_elf_note() {
    let name = "boots_via_pvh_elf_note";
    let dir = test_dir(name);
    let q = base_qemu().kernel(&images().pvh).append(BASE_CMDLINE);
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["booted by pvh", "boot complete"]);
    vm.expect_success();
}

#[test]
fn boots_via_multiboot1_with_modules() {
    let name = "boots_via_multiboot1_with_modules";
    let dir = test_dir(name);
    let mods = two_modules(&dir);
    let mut q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE);
    for m in &mods {
        q = q.module(m.spec.clone());
    }
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["booted by multiboot1"]);
    for (i, m) in mods.iter().enumerate() {
        expect_module(&mut vm, i, m);
    }
    vm.expect_lines(&["boot complete"]);
    vm.expect_success();
}

#[test]
fn boots_via_grub_multiboot2_with_two_modules() {
    let name = "boots_via_grub_multiboot2_with_two_modules";
    let dir = test_dir(name);
    let mods = two_modules(&dir);
    let iso = dir.join("ferrite.iso");
    let spec = IsoSpec {
        hypervisor: images().multiboot.clone(),
        cmdline: BASE_CMDLINE.to_string(),
        modules: mods.iter().map(|m| m.spec.clone()).collect(),
    };
    if let Err(e) = build_iso(&spec, &iso, &dir.join("iso-root")) {
        panic!("[{name}] cannot build the GRUB ISO: {e:#}");
    }
    let mut vm = Vm::start(name, &dir, base_qemu().cdrom(&iso));
    let booted = vm.expect_lines(&["booted by multiboot2"]);
    if !booted[0].contains(r#"loader "GRUB"#) {
        vm.fail(&format!("the multiboot2 boot line does not name GRUB as the loader: {:?}", booted[0]));
    }
    for (i, m) in mods.iter().enumerate() {
        expect_module(&mut vm, i, m);
    }
    vm.expect_lines(&["boot complete"]);
    vm.expect_success();
}

#[test]
fn smp_two_cpus_have_svm() {
    let name = "smp_two_cpus_have_svm";
    let dir = test_dir(name);
    let q = base_qemu().smp(2).kernel(&images().multiboot).append(BASE_CMDLINE);
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["smp: 2 CPUs online, SVM enabled on 2", "boot complete"]);
    vm.expect_success();
}

#[test]
fn selftest_guest_passes() {
    let name = "selftest_guest_passes";
    let dir = test_dir(name);
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE);
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["selftest: PASS", "boot complete"]);
    vm.expect_success();
}

#[test]
fn bad_cmdline_value_is_reported_and_boot_continues() {
    let name = "bad_cmdline_value_is_reported_and_boot_continues";
    let dir = test_dir(name);
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE).append("dom0_mem=banana frobnicate=7");
    let mut vm = Vm::start(name, &dir, q);
    // Both warnings, in whatever order, then the boot goes on to the end.
    let t = vm.remaining();
    vm.wait_for(r"WARNING: .*(dom0_mem.*banana|banana.*dom0_mem)", t);
    let t = vm.remaining();
    vm.wait_for(r"WARNING: .*frobnicate", t);
    vm.expect_lines(&[r"WARNING: .*(dom0_mem|frobnicate)", r"WARNING: .*(dom0_mem|frobnicate)", "boot complete"]);
    vm.expect_success();
}
