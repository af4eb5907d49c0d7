//! The machine a guest sees behaves as the AMD APM and Intel SDM say:
//! small bare-metal guests (`qemu-tests/guests/`) check one architectural
//! rule each and print what they saw.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{base_qemu, images, test_dir, Vm, BASE_CMDLINE};
use std::path::Path;

fn guest(name: &str, dir: &Path) -> ModuleSpec {
    match guestasm::build_guest(name, dir) {
        Ok(p) => ModuleSpec::new(p, ""),
        Err(e) => panic!("cannot assemble guest {name}: {e:#}"),
    }
}

/// Writes `dir/<domain>.cfg` booting `<kernel>.elf` as a PVH domU with
/// 16 MiB and 1 vCPU.
fn config(dir: &Path, domain: &str, kernel: &str) -> ModuleSpec {
    let path = dir.join(format!("{domain}.cfg"));
    let text = format!(
        "# {domain}: written by qemu-tests/tests/conformance.rs\n\
         name = \"{domain}\"\ntype = \"pvh\"\nkernel = \"{kernel}.elf\"\nmemory = 16\nvcpus = 1\n\
         on_crash = \"destroy\"\n"
    );
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    ModuleSpec::new(path, "")
}

/// An interrupt that became pending while IF=0 and was then masked by the
/// task priority must not stop the vCPU once IF=1: the interrupt window
/// the hypervisor opened for it has to close (`guests/irq_window.S`).
/// Before the fix the guest never ran another instruction after STI, which
/// is how GRUB-loaded Linux hung right after masking the 8259.
#[test]
fn interrupt_held_back_by_the_tpr_does_not_stall_the_vcpu() {
    let name = "interrupt_held_back_by_the_tpr_does_not_stall_the_vcpu";
    let dir = test_dir(name);
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(config(&dir, "window", "irq_window"))
        .module(guest("irq_window", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[
        r"^\(window\) irq-window: ran 100000 loops with the interrupt held back$",
        r"^\(window\) irq-window: delivered after TPR lowered$",
        r"domain \d+ \(window\) powered off",
    ]);
    if vm.console_text().contains("irq-window: FAIL") {
        vm.fail("the guest reported a failure");
    }
    vm.expect_success();
}

/// CR4 writes follow the guest's CPUID: reserved bits and bits of features
/// it was not offered raise #GP and leave CR4 alone, offered ones are
/// taken (`guests/cr4_checks.S`, which reads CPUID itself to know what to
/// expect). Run with a CPU model that has SMEP, SMAP, FSGSBASE and PKU, so
/// both outcomes are exercised: those the guest is offered, and VMXE,
/// OSXSAVE (no XSAVE) and reserved bits it is not. PKE is the bit that
/// shows the intercept: the CPU has PKU but Ferrite hides it, so without
/// the check the write was taken (TCG checks CR4 against its own CPUID).
#[test]
fn cr4_writes_follow_the_guests_cpuid() {
    let name = "cr4_writes_follow_the_guests_cpuid";
    let dir = test_dir(name);
    let q = base_qemu()
        .cpu("qemu64,+svm,+npt,+smep,+smap,+fsgsbase,+pku")
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(config(&dir, "cr4", "cr4_checks"))
        .module(guest("cr4_checks", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(cr4\) cr4: done 14 checks$", r"domain \d+ \(cr4\) powered off"]);
    let text = vm.console_text();
    if text.contains("cr4: FAIL") {
        vm.fail("a CR4 check failed");
    }
    for want in ["4 taken", "7 taken", "15 #GP", "13 #GP", "22 #GP", "31 #GP"] {
        if !text.contains(&format!("cr4: ok {want}")) {
            vm.fail(&format!("no 'cr4: ok {want}'"));
        }
    }
    vm.expect_success();
}
