//! Hostile guests: a domain that misbehaves is crashed (or, if it only
//! spins, preempted) and every other domain keeps running.
//!
//! Each scenario boots Ferrite with two boot-time domUs from xl-style config
//! modules (no dom0): a hostile guest and `ticker`, which prints `tick N`
//! every 100 ms (PM timer busy-wait) twenty times and powers off. The
//! guests are tiny assembly programs in `qemu-tests/guests/`, assembled
//! with the system `as`/`ld` (`ferrite_tools::guestasm`).

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::qemu::RunOutcome;
use ferrite_qemu_tests::regex;
use ferrite_qemu_tests::{base_qemu, guest_module, images, pvh_config_module, test_dir, Vm, BASE_CMDLINE};
use std::time::Duration;

mod common;

/// The ticker's lines, as the hypervisor console shows them.
const TICK: &str = r"^\(ticker\) tick \d+$";
const TICKER_DONE: &str = r"^\(ticker\) ticker done$";
const TICKER_OFF: &str = r"domain \d+ \(ticker\) powered off";

/// The address of the hostile guest's `fault_insn` label: where the crash
/// must be reported.
fn fault_rip(vm: &Vm, hostile: &str) -> String {
    let elf = vm.dir().join(format!("{hostile}.elf"));
    let bytes =
        std::fs::read(&elf).unwrap_or_else(|e| panic!("cannot read {}: {e}", elf.display()));
    match guestasm::symbol_address(&bytes, "fault_insn") {
        Ok(a) => format!("{a:#x}"),
        Err(e) => panic!("{}: {e:#}", elf.display()),
    }
}

/// Boots Ferrite with `hostile` (guest source name) as domain `name` and
/// the ticker, on `smp` host CPUs.
fn boot_with_ticker(test: &str, name: &str, hostile: &str, smp: u32) -> Vm {
    let dir = test_dir(test);
    let q = base_qemu()
        .smp(smp)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, name, hostile, 64))
        .module(pvh_config_module(&dir, "ticker", "ticker", 64))
        .module(guest_module(hostile, &dir))
        .module(guest_module("ticker", &dir));
    Vm::start(test, &dir, q)
}

/// The hostile guest printed `announce`, then crashed with a reason matching
/// `reason`; the ticker printed ticks after that and powered off; Ferrite
/// ran out of domains and reported failure (a domain crashed).
fn expect_crash_contained(mut vm: Vm, announce: &str, reason: &str) {
    vm.expect_lines(&[
        &format!(r"^\(hostile\) {announce}$"),
        &format!(r"ERROR: domain \d+ \(hostile\) crashed: {reason}"),
        // Still ticking after the crash, to the end.
        TICK,
        TICK,
        TICKER_DONE,
        TICKER_OFF,
        r"\(ferrite\) no domains left running",
    ]);
    let text = vm.console_text();
    if text
        .lines()
        .any(|l| l.starts_with("(hostile)") && l.contains("returned"))
    {
        vm.fail("the hostile guest ran past the instruction that should have crashed it");
    }
    if !text.contains("(ticker) tick 20") {
        vm.fail("the ticker did not print all 20 ticks");
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
fn hello_domu_prints_and_powers_off() {
    let dir = test_dir("hello_domu_prints_and_powers_off");
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "hello", "hello", 64))
        .module(guest_module("hello", &dir));
    let mut vm = Vm::start("hello_domu_prints_and_powers_off", &dir, q);
    vm.expect_lines(&[
        r"^\(hello\) hello from a Ferrite PVH test guest$",
        r"domain \d+ \(hello\) powered off",
        r"no domains left running",
    ]);
    vm.expect_success();
}

#[test]
fn unknown_msr_crashes_only_that_domain() {
    let vm = boot_with_ticker(
        "unknown_msr_crashes_only_that_domain",
        "hostile",
        "hostile_msr",
        2,
    );
    // #GP injected for the unknown MSR; with no IDT that is a triple fault,
    // at the rdmsr (a fault does not advance rip).
    let rip = fault_rip(&vm, "hostile_msr");
    expect_crash_contained(
        vm,
        "hostile: rdmsr 0xdeadbeef",
        &format!(r"vcpu 0: triple fault \(shutdown\) at rip {rip} \(rsp .*\)$"),
    );
}

#[test]
fn unmapped_mmio_write_crashes_only_that_domain() {
    let vm = boot_with_ticker(
        "unmapped_mmio_write_crashes_only_that_domain",
        "hostile",
        "hostile_mmio",
        2,
    );
    let rip = fault_rip(&vm, "hostile_mmio");
    expect_crash_contained(
        vm,
        "hostile: write to unmapped 0xe0000000",
        &format!(r"vcpu 0: write of unmapped guest-physical address 0xe0000000 at rip {rip} \(rsp .*\)$"),
    );
}

#[test]
fn invalid_opcode_crashes_only_that_domain() {
    let vm = boot_with_ticker(
        "invalid_opcode_crashes_only_that_domain",
        "hostile",
        "hostile_ud",
        2,
    );
    let rip = fault_rip(&vm, "hostile_ud");
    expect_crash_contained(
        vm,
        "hostile: ud2",
        &format!(r"vcpu 0: triple fault \(shutdown\) at rip {rip} \(rsp .*\)$"),
    );
}

/// One host CPU and a guest spinning with interrupts off: only Ferrite's
/// preemption timer lets the ticker run, and it must run to its end.
#[test]
fn spinning_domain_cannot_starve_another() {
    let mut vm = boot_with_ticker(
        "spinning_domain_cannot_starve_another",
        "spinner",
        "hostile_spin",
        1,
    );
    let lines = vm.expect_lines(&[
        r"^\(spinner\) spinning$",
        TICK,
        TICK,
        TICKER_DONE,
        TICKER_OFF,
    ]);
    let text = vm.console_text();
    if !text.contains("(ticker) tick 20") {
        vm.fail(&format!(
            "the ticker did not print all 20 ticks (matched {lines:?})"
        ));
    }
    if text.contains("crashed") {
        vm.fail("no domain should crash here: the spinner only spins");
    }
    // The spinner is still running, so Ferrite has not finished.
    if vm.poll_exit().is_some() {
        vm.fail("QEMU exited although the spinner domain should still be running");
    }
    vm.kill();
}

/// What start-up code probes gets architectural answers
/// (`guests/cpu_policy.S`): AMD's legacy perf counters and NB_CFG exist,
/// SVM and SEV are hidden, OSXSAVE follows the guest's CR4, TSC_AUX is the
/// guest's own. Before these were fixed, the first MSR access was a #GP
/// and this guest a triple fault.
#[test]
fn start_up_probes_get_architectural_answers() {
    let name = "start_up_probes_get_architectural_answers";
    let dir = test_dir(name);
    // RDTSCP on, so TSC_AUX is checked too (qemu64 lacks it).
    let q = base_qemu()
        .cpu("qemu64,+svm,+npt,+rdtscp")
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "policy", "cpu_policy", 64))
        .module(guest_module("cpu_policy", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(policy\) cpu-policy: done$", r"domain \d+ \(policy\) powered off"]);
    let text = vm.console_text();
    if text.contains("cpu-policy: FAIL") {
        vm.fail("a CPU policy check failed");
    }
    for want in ["perf counters read 0", "NB_CFG reads", "SVM hidden", "SEV leaf hidden", "OSXSAVE follows CR4", "PAT keeps what was written", "TSC_AUX is the guest's"] {
        if !text.contains(&format!("cpu-policy: ok {want}")) {
            vm.fail(&format!("no 'ok' for {want:?}"));
        }
    }
    vm.expect_success();
}

/// #DB is intercepted (so a looping delivery cannot hang the host CPU) and
/// given back exactly: five single-step traps arrive. Two domains on one
/// host CPU each see their own DR0: 0 at first even after the other set
/// one, and unchanged across sharing the CPU (`guests/debug_regs.S`).
#[test]
fn debug_traps_arrive_and_debug_registers_stay_private() {
    let name = "debug_traps_arrive_and_debug_registers_stay_private";
    let dir = test_dir(name);
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "dbg1", "debug_regs", 64))
        .module(pvh_config_module(&dir, "dbg2", "debug_regs", 64))
        .module(guest_module("debug_regs", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["no domains left running"]);
    let text = vm.console_text();
    for d in ["dbg1", "dbg2"] {
        for want in ["debug: 5 single-step traps", "debug: dr0 0 at start", "debug: dr0 kept", "debug: done"] {
            if !text.contains(&format!("({d}) {want}")) {
                vm.fail(&format!("({d}) did not print {want:?}"));
            }
        }
    }
    vm.expect_success();
}

/// A domU flooding its console without console focus (no dom0, so input
/// goes to the hypervisor; `guests/console_flood_forever.S`: one OUT per
/// byte, 100 short lines, 1000 empty ones and 1500 bytes with no newline,
/// for ever) beside a ticker and a domain that crashes half a second in
/// (`guests/late_crash.S`): the ticker's lines all appear at their pace,
/// the crash is reported on the console as it happens, the flood stays
/// within its line budget and its drops are reported, and the hypervisor's
/// log ring (replayed with the `d` key once the flooder is paused) still
/// holds the crash reason and its own boot lines, and none of the flood.
#[test]
fn a_console_flood_without_focus_keeps_other_output_and_crash_reasons() {
    console_flood_beside_ticker("a_console_flood_without_focus_keeps_other_output_and_crash_reasons", false);
}

/// The same flood from dom0, which has console focus (its bytes go to the
/// console as they come, until a line is over its budget): the same
/// guarantees hold.
#[test]
fn a_console_flood_with_focus_keeps_other_output_and_crash_reasons() {
    console_flood_beside_ticker("a_console_flood_with_focus_keeps_other_output_and_crash_reasons", true);
}

/// Ctrl-a, three times: console input to the next domain or the hypervisor.
const SWITCH_INPUT: &str = "\u{1}\u{1}\u{1}";

fn console_flood_beside_ticker(name: &str, focus: bool) {
    let dir = test_dir(name);
    // With focus, the flooder is dom0 (module 0, the dom0 kernel), which
    // has console input; without, a domU and no dom0.
    let (flooder, first) = if focus {
        ("dom0", guest_module("console_flood_forever", &dir))
    } else {
        ("flood", pvh_config_module(&dir, "flood", "console_flood_forever", 16))
    };
    let mut q = base_qemu()
        .smp(2)
        .kernel(&images().multiboot)
        .append(&format!("{BASE_CMDLINE} console_timestamps=boot"))
        .module(first)
        .module(pvh_config_module(&dir, "ticker", "ticker", 16))
        .module(pvh_config_module(&dir, "late", "late_crash", 16));
    if !focus {
        q = q.module(guest_module("console_flood_forever", &dir));
    }
    let q = q.module(guest_module("ticker", &dir)).module(guest_module("late_crash", &dir));
    let (mut vm, mut input) = Vm::start_interactive(name, &dir, q, ferrite_qemu_tests::vm_timeout());
    let rip = fault_rip(&vm, "late_crash");
    let crash = format!(r"ERROR: domain \d+ \(late\) crashed: vcpu 0: triple fault \(shutdown\) at rip {rip} ");
    vm.wait_for(&crash, vm.remaining());
    vm.wait_for(r"\(ticker\) ticker done$", vm.remaining());
    let report = vm.wait_for(&format!(r"domain \d+ \({flooder}\): \d+ console lines not shown"), vm.remaining());
    let id: u32 = regex::Regex::new(r"domain (\d+) \(").unwrap().captures(&report).unwrap()[1].parse().unwrap();
    let mut keys = String::new();
    if focus {
        // Input goes to dom0: switch it to the hypervisor (the other
        // domains are gone, so the next stop after dom0 is Ferrite).
        keys.push_str(SWITCH_INPUT);
    }
    // Pause the flooder, so its lines cannot land inside the replay.
    keys.push_str(&format!("{id}p"));
    if let Err(e) = input.type_slowly(&keys, Duration::from_millis(50)) {
        vm.fail(&format!("cannot type: {e}"));
    }
    if focus {
        vm.wait_for(r"\*\*\* input to Ferrite", Duration::from_secs(30));
    }
    vm.wait_for(&format!(r"domain {id} \({flooder}\) paused"), Duration::from_secs(30));
    if let Err(e) = input.type_slowly("d", Duration::from_millis(50)) {
        vm.fail(&format!("cannot type: {e}"));
    }
    vm.wait_for(r"----- end of log ring -----", Duration::from_secs(60));
    let text = vm.console_text();
    vm.kill();

    // The other domains' output, at its pace.
    let (ticks, worst) = common::ticks(&text, "ticker");
    eprintln!("[{name}] {} ticks, worst gap {worst:.3} s", ticks.len());
    if ticks.len() != 20 {
        vm.fail(&format!("the ticker printed {} ticks, not 20", ticks.len()));
    }
    if worst > 1.0 {
        vm.fail(&format!("the ticker's ticks were up to {worst:.3} s apart beside the flood (at most 1 s)"));
    }
    if !text.contains("(late) late: crashing in 500 ms") {
        vm.fail("the crashing domain's own line is missing");
    }
    // The flood's drops, counted and reported.
    let marker = format!("({flooder}): ");
    let dropped: u64 = text
        .lines()
        .filter_map(|l| l.split_once(marker.as_str()).and_then(|(_, t)| t.split(' ').next()).and_then(|n| n.parse::<u64>().ok()))
        .sum();
    let flood = common::domain_lines(&text, flooder);
    let span = flood.last().map_or(0.0, |l| l.0) - flood.first().map_or(0.0, |l| l.0);
    eprintln!("[{name}] flood lines shown {} over {span:.2} s, dropped and reported {dropped}", flood.len());
    if dropped == 0 {
        vm.fail("no flood line was reported dropped");
    }
    // The budget: a burst of 500 lines, then 200 a second.
    let budget = 500.0 + 200.0 * (span + 1.0);
    if flood.len() as f64 > budget {
        vm.fail(&format!("{} flood lines shown in {span:.2} s: over the budget of {budget:.0}", flood.len()));
    }
    // The log ring: the hypervisor's lines and the crash reason, no flood.
    let Some((_, ring)) = text.rsplit_once("----- log ring (") else { vm.fail("no log ring replay") };
    let ring = ring.split("----- end of log ring -----").next().unwrap_or("");
    let crash_re = regex::Regex::new(&crash).unwrap();
    if !crash_re.is_match(ring) {
        vm.fail("the log ring lost the crash reason of (late)");
    }
    if !ring.contains("boot complete") {
        vm.fail("the log ring lost the hypervisor's boot lines");
    }
    // No flood text, and no line of the flooder's either (a focused
    // domain's line prefixes once went there: a flood of them wiped it).
    let flood_text = regex::Regex::new(&format!(r"(?m)\({flooder}\) f \d|^(\[[ 0-9.]+\] )?\({flooder}\) ")).unwrap();
    if let Some(m) = flood_text.find(ring) {
        vm.fail(&format!("the flood's output is in the hypervisor's log ring: {:?}", m.as_str()));
    }
    if ring.contains("xxxxxxxx") {
        vm.fail("the flood's output is in the hypervisor's log ring");
    }
}
