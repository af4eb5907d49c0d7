//! Platform behaviour a PVH domain sees that the Linux boots do not show
//! directly: its TSC is offset to start near zero when the domain is
//! created (guests do not see the host's uptime), RDTSC and the IA32_TSC
//! MSR agree, and the TSC advances at the rate Ferrite reports.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::regex::Regex;
use ferrite_qemu_tests::{base_qemu, images, test_dir, Vm, BASE_CMDLINE};

#[test]
fn a_domains_tsc_starts_near_zero_and_counts_at_the_host_rate() {
    let name = "a_domains_tsc_starts_near_zero_and_counts_at_the_host_rate";
    let dir = test_dir(name);
    let elf = guestasm::build_guest("tsc", &dir).unwrap_or_else(|e| panic!("cannot assemble the tsc guest: {e:#}"));
    let cfg = dir.join("tsc.cfg");
    std::fs::write(&cfg, "name = \"tsc\"\ntype = \"pvh\"\nkernel = \"tsc.elf\"\nmemory = 32\nvcpus = 1\n")
        .expect("write the config");
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE).module(ModuleSpec::new(&cfg, "")).module(ModuleSpec::new(&elf, ""));
    let mut vm = Vm::start(name, &dir, q);
    let mhz_line = vm.wait_for(r"TSC (\d+) MHz", vm.remaining());
    let line = vm.wait_for(r"^\(tsc\) tsc rdtsc=\d+ msr=\d+ after=\d+$", vm.remaining());
    vm.expect_lines(&[r"domain \d+ \(tsc\) powered off"]);
    vm.expect_success();
    let mhz: u64 = Regex::new(r"TSC (\d+) MHz").unwrap().captures(&mhz_line).unwrap()[1].parse().unwrap();
    let c = Regex::new(r"rdtsc=(\d+) msr=(\d+) after=(\d+)").unwrap().captures(&line).unwrap();
    let (t0, t1, t2): (u64, u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap(), c[3].parse().unwrap());
    let hz = mhz * 1_000_000;
    // The guest runs within moments of its creation; the host had been up
    // for Ferrite's whole boot (well over 0.1 s) by then.
    if t0 >= hz / 10 {
        vm.fail(&format!("the guest's first RDTSC read {t0} (over 0.1 s of {mhz} MHz): not offset to its creation"));
    }
    if t1 < t0 || t1 - t0 > hz / 100 {
        vm.fail(&format!("IA32_TSC ({t1}) does not follow RDTSC ({t0})"));
    }
    // 0.1 s of PM timer later: 0.1 s of TSC, give or take half.
    let delta = t2.saturating_sub(t0);
    if delta < hz / 20 || delta > hz * 3 / 20 {
        vm.fail(&format!("0.1 s of PM timer took {delta} TSC ticks at {mhz} MHz"));
    }
}

/// `xl pause`/`unpause` through Ferrite's console keys ("<id>p", "<id>u"):
/// a paused domain makes no progress, and goes on where it was once
/// unpaused.
#[test]
fn a_paused_domain_stops_and_resumes() {
    use std::time::Duration;
    let name = "a_paused_domain_stops_and_resumes";
    let dir = test_dir(name);
    let elf = guestasm::build_guest("ticker", &dir).unwrap_or_else(|e| panic!("cannot assemble the ticker: {e:#}"));
    let cfg = dir.join("ticker.cfg");
    std::fs::write(&cfg, "name = \"ticker\"\ntype = \"pvh\"\nkernel = \"ticker.elf\"\nmemory = 32\nvcpus = 1\n")
        .expect("write the config");
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE).module(ModuleSpec::new(&cfg, "")).module(ModuleSpec::new(&elf, ""));
    let (mut vm, mut input) = Vm::start_interactive(name, &dir, q, ferrite_qemu_tests::vm_timeout());
    vm.wait_for(r"^\(ticker\) tick 2$", vm.remaining());
    if let Err(e) = input.type_slowly("0p", Duration::from_millis(50)) {
        vm.fail(&format!("cannot type: {e}"));
    }
    vm.wait_for(r"domain 0 \(ticker\) paused", Duration::from_secs(10));
    let ticks = |vm: &Vm| vm.console_text().lines().filter(|l| l.starts_with("(ticker) tick ")).count();
    let at_pause = ticks(&vm);
    // A tick is 100 ms: a running ticker would print several in 1.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    let later = ticks(&vm);
    if later > at_pause + 1 {
        vm.fail(&format!("the paused ticker went on ticking ({at_pause} ticks at the pause, {later} 1.5 s later)"));
    }
    if let Err(e) = input.type_slowly("0u", Duration::from_millis(50)) {
        vm.fail(&format!("cannot type: {e}"));
    }
    vm.wait_for(r"domain 0 \(ticker\) unpaused", Duration::from_secs(10));
    vm.wait_for(r"^\(ticker\) ticker done$", vm.remaining());
    vm.expect_lines(&[r"domain 0 \(ticker\) powered off"]);
    vm.expect_success();
}

/// A domain that does not fit in the host's free memory is refused up
/// front with a clear error; the others start and run.
#[test]
fn a_domain_larger_than_free_memory_is_refused_clearly() {
    let name = "a_domain_larger_than_free_memory_is_refused_clearly";
    let dir = test_dir(name);
    let elf = guestasm::build_guest("tsc", &dir).unwrap_or_else(|e| panic!("cannot assemble the tsc guest: {e:#}"));
    let huge = dir.join("huge.cfg");
    std::fs::write(&huge, "name = \"huge\"\ntype = \"pvh\"\nkernel = \"tsc.elf\"\nmemory = 65536\nvcpus = 1\n").expect("write");
    let small = dir.join("tsc.cfg");
    std::fs::write(&small, "name = \"tsc\"\ntype = \"pvh\"\nkernel = \"tsc.elf\"\nmemory = 32\nvcpus = 1\n").expect("write");
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(ModuleSpec::new(&huge, ""))
        .module(ModuleSpec::new(&small, ""))
        .module(ModuleSpec::new(&elf, ""));
    let mut vm = Vm::start(name, &dir, q);
    vm.wait_for(r"huge not started: huge: needs \d+ MiB of host memory but only \d+ MiB are free", vm.remaining());
    vm.wait_for(r"domain \d+ \(tsc\) powered off", vm.remaining());
    vm.expect_success();
}

/// The local APIC in x2APIC mode: a guest enables it through
/// IA32_APIC_BASE, then uses only MSRs (ID, SVR, timer, EOI, SELF IPI) and
/// receives its timer interrupt and a self-IPI.
#[test]
fn a_guest_drives_its_local_apic_in_x2apic_mode() {
    let name = "a_guest_drives_its_local_apic_in_x2apic_mode";
    let dir = test_dir(name);
    let elf = guestasm::build_guest("x2apic", &dir).unwrap_or_else(|e| panic!("cannot assemble the x2apic guest: {e:#}"));
    let cfg = dir.join("x2apic.cfg");
    std::fs::write(&cfg, "name = \"x2apic\"\ntype = \"pvh\"\nkernel = \"x2apic.elf\"\nmemory = 32\nvcpus = 1\n").expect("write");
    let q = base_qemu().kernel(&images().multiboot).append(BASE_CMDLINE).module(ModuleSpec::new(&cfg, "")).module(ModuleSpec::new(&elf, ""));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(x2apic\) x2apic id=0 timer=1 selfipi=1$", r"domain \d+ \(x2apic\) powered off"]);
    vm.expect_success();
}
