//! The scheduler: a woken vCPU runs promptly, and nobody is starved.
//! Every scenario runs under `-icount shift=0,sleep=off`, where a guest's
//! TSC and PM timer count instructions of the emulated machine: the
//! figures repeat run after run and do not depend on how busy the host
//! is. `ferrite bench sched` boots the same guests for BENCHMARKS.md.

use ferrite_qemu_tests::ferrite_tools::bench_sched::{self, Report};
use ferrite_qemu_tests::ferrite_tools::{bench, modules::ModuleSpec};
use ferrite_qemu_tests::{
    base_qemu, guest_module, images, pvh_config_module, pvh_smp_config_module, test_dir, vm_timeout, Vm, BASE_CMDLINE,
};
use std::time::Duration;

/// Boots the modules on `host_cpus` CPUs under icount; returns the
/// guests' figures once every domain has stopped.
fn run(name: &str, host_cpus: u32, modules: impl FnOnce(&std::path::Path) -> Vec<ModuleSpec>) -> (Vm, Report) {
    let dir = test_dir(name);
    let mut q = base_qemu()
        .smp(host_cpus)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .extra_args(["-icount", bench::ICOUNT]);
    for m in modules(&dir) {
        q = q.module(m);
    }
    // Spinning guests under icount run at a few million instructions a
    // second of wall-clock time: generous, for a loaded host.
    let mut vm = Vm::start_with_timeout(name, &dir, q, vm_timeout().max(Duration::from_secs(300)));
    vm.expect_lines(&["no domains left running"]);
    vm.expect_success();
    if vm.console_text().contains("FAIL") {
        vm.fail("a guest reported a failure");
    }
    let report = bench_sched::parse(&vm.console_text());
    (vm, report)
}

/// Microseconds of the named latency: (median or average, worst).
fn latency_us(vm: &mut Vm, r: &Report, name: &str) -> (f64, f64) {
    let (Some(tpns), Some(l)) = (r.ticks_per_ns, r.latencies.iter().find(|l| l.name == name)) else {
        vm.fail(&format!("no BENCH-TSC or BENCH {name} line"));
    };
    let typical = l.median().map_or(l.average(), |m| m as f64);
    (typical / tpns / 1000.0, l.worst as f64 / tpns / 1000.0)
}

/// Two vCPUs of one guest share one host CPU (`guests/ipi_latency.S`):
/// an IPI to the halted one, sent by the other as it goes on running,
/// reaches its handler within microseconds. Before, the target waited for
/// the sender's 10 ms slice to end.
///
/// An IPI to the other vCPU while it spins waits for the sender's slice
/// still (about 10 ms): the sender spins too, waiting for the answer, and
/// has had no more of the CPU than the target, so fairness says it may
/// finish its slice. Only printed.
#[test]
fn an_ipi_wakes_a_halted_vcpu_sharing_the_senders_host_cpu() {
    let name = "an_ipi_wakes_a_halted_vcpu_sharing_the_senders_host_cpu";
    let (mut vm, r) = run(name, 1, |dir| {
        vec![pvh_smp_config_module(dir, "ipi", "ipi_latency", 16, 2), guest_module("ipi_latency", dir)]
    });
    let (typical, worst) = latency_us(&mut vm, &r, "ipi_halted");
    let (running, running_worst) = latency_us(&mut vm, &r, "ipi_running");
    eprintln!("[{name}] halted target: median {typical:.1} us, worst {worst:.1} us; spinning target: median {running:.0} us, worst {running_worst:.0} us");
    if worst > 2000.0 {
        vm.fail(&format!("an IPI to a halted vCPU took {worst:.0} us (bound: 2000 us; a slice is 10000)"));
    }
}

/// With a host CPU each (`-smp 2`), IPIs reach a spinning vCPU and a
/// halted one within microseconds: a vCPU already woken in its slice is
/// kicked again for the next interrupt (it used to wait for its next exit,
/// up to its slice's end).
#[test]
fn ipis_reach_vcpus_on_other_host_cpus_promptly() {
    let name = "ipis_reach_vcpus_on_other_host_cpus_promptly";
    let (mut vm, r) = run(name, 2, |dir| {
        vec![pvh_smp_config_module(dir, "ipi", "ipi_latency", 16, 2), guest_module("ipi_latency", dir)]
    });
    for kind in ["ipi_running", "ipi_halted"] {
        let (typical, worst) = latency_us(&mut vm, &r, kind);
        eprintln!("[{name}] {kind}: median {typical:.1} us, worst {worst:.1} us");
        if worst > 2000.0 {
            vm.fail(&format!("{kind}: an IPI took {worst:.0} us (bound: 2000 us)"));
        }
    }
}

/// A vCPU that wakes every 100 us and then works 90 us (`fair_waker.S`)
/// beside one that spins (`fair_spin.S`) on one host CPU: each gets about
/// half. A woken vCPU preempts only while it has had less of the CPU than
/// the one running (plus a bounded credit for having slept), so the waker
/// cannot take the spinner's share, and the spinner no longer holds the
/// waker off for whole slices (before: the waker handled 5 % of its ticks).
#[test]
fn a_vcpu_that_wakes_constantly_does_not_starve_a_spinner() {
    let name = "a_vcpu_that_wakes_constantly_does_not_starve_a_spinner";
    let (mut vm, r) = run(name, 1, |dir| {
        vec![
            pvh_config_module(dir, "spin", "fair_spin", 16),
            pvh_config_module(dir, "waker", "fair_waker", 16),
            guest_module("fair_spin", dir),
            guest_module("fair_waker", dir),
        ]
    });
    let (Some((ran, total, loops)), Some(ticks)) = (r.spin_ran, r.waker_ticks) else {
        vm.fail("no fair-spin or fair-waker line");
    };
    let share = ran as f64 / total.max(1) as f64;
    eprintln!("[{name}] spinner ran {:.1} % ({loops} loops); waker handled {ticks} of 3000 ticks", 100.0 * share);
    if share < 0.35 {
        vm.fail(&format!("the spinner ran only {:.1} % of the time beside the waker (an equal share is 50 %)", 100.0 * share));
    }
    if ticks < 1000 {
        vm.fail(&format!("the waker handled only {ticks} of its 3000 ticks (half the CPU gives it about 1600)"));
    }
}
