//! Two host CPUs taking VM exits at the same moments, over and over: the
//! load under which the host used to reset (ARCHITECTURE.md, "Two host
//! CPUs under QEMU TCG"). Two PVH domains each read the ACPI PM timer
//! 300,000 times, one on each host CPU; both must finish and power off,
//! and the host must survive.
//!
//! This runs QEMU multi-threaded on purpose (every other multi-CPU test
//! runs it single-threaded): it is where QEMU's IGNNE race bites, and it
//! checks that Ferrite itself keeps FXRSTOR off its exit path. Before that
//! fix this test reset the host within seconds, every time.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::ferrite_tools::qemu::TcgThreads;
use ferrite_qemu_tests::{base_qemu, images, test_dir, Vm, BASE_CMDLINE};

#[test]
fn two_exit_storms_on_two_host_cpus() {
    let name = "two_exit_storms_on_two_host_cpus";
    let dir = test_dir(name);
    let elf = guestasm::build_guest("exit_storm", &dir).unwrap_or_else(|e| panic!("cannot assemble the guest: {e:#}"));
    let mut q = base_qemu().smp(2).tcg_threads(TcgThreads::Multi).kernel(&images().multiboot);
    // The storm is of reads of the emulated PM timer: each one an exit.
    q = q.append(&format!("{BASE_CMDLINE} pm_timer=emulated"));
    for n in ["storm1", "storm2"] {
        let cfg = dir.join(format!("{n}.cfg"));
        std::fs::write(&cfg, format!("name = \"{n}\"\ntype = \"pvh\"\nkernel = \"exit_storm.elf\"\nmemory = 16\nvcpus = 1\n"))
            .expect("write the config");
        q = q.module(ModuleSpec::new(&cfg, ""));
    }
    q = q.module(ModuleSpec::new(&elf, ""));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"smp: 2 CPUs online"]);
    for n in ["storm1", "storm2"] {
        vm.wait_for(&format!(r"^\({n}\) exit-storm: done 300000$"), vm.remaining());
    }
    vm.expect_lines(&["no domains left running"]);
    vm.expect_success();
}
