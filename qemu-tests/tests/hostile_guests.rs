//! Hostile guests, attack by attack (issue 10, "Tests to add → Hostile
//! guests"): CPU state leaking between domains on one host CPU, odd-size
//! interrupt-controller accesses, IPI and timer storms, reboot loops and
//! string I/O edge cases. The guests are tiny assembly programs in
//! `qemu-tests/guests/` (`ferrite_tools::guestasm`); each prints what it
//! saw and these tests check it against the architecture.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{
    base_qemu, guest_module, images, pseudo_random_bytes, pvh_config_module, pvh_smp_config_module, seabios_image, test_dir, virtio_disk_args, Vm,
    BASE_CMDLINE, HVM_HOST_CPUS,
};

/// Fails unless the console holds `(<domain>) <prefix>ok <what>` for each
/// of `wants`, and no `FAIL`.
fn expect_oks(vm: &mut Vm, domain: &str, prefix: &str, wants: &[&str]) {
    let text = vm.console_text();
    if let Some(l) = text.lines().find(|l| l.contains("FAIL")) {
        vm.fail(&format!("a check failed: {l}"));
    }
    for w in wants {
        if !text.contains(&format!("({domain}) {prefix}ok {w}\n")) {
            vm.fail(&format!("({domain}) did not print {prefix:?}ok {w:?}"));
        }
    }
}

/// 1-, 2-, 8-byte, misaligned and page-straddling accesses to the xAPIC
/// page and the I/O APIC window (`guests/odd_apic.S`): the hypervisor
/// survives them all, reads return the bytes addressed of the 32-bit
/// register (0 between registers), narrow or misaligned writes are ignored
/// (the LAPIC as on KVM; IOREGSEL takes any size, IOWIN needs 4 bytes or
/// more), and an 8-byte write counts its low 32 bits.
#[test]
fn odd_size_lapic_and_ioapic_accesses_are_survived_and_sane() {
    let name = "odd_size_lapic_and_ioapic_accesses_are_survived_and_sane";
    let dir = test_dir(name);
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "odd", "odd_apic", 16))
        .module(guest_module("odd_apic", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(odd\) odd: done$", r"domain \d+ \(odd\) powered off", "no domains left running"]);
    expect_oks(
        &mut vm,
        "odd",
        "odd: ",
        ferrite_qemu_tests::ODD_APIC_CHECKS,
    );
    vm.expect_success();
}

/// Two domains on one host CPU (`-smp 1`; `guests/state_leak.S`): the
/// writer sets IA32_TSC_AUX, DR0-3, DR7, XMM0-7, MXCSR and the x87 control word to distinctive values and keeps them
/// for 500 ms; the reader, which writes none of them, sees the
/// architectural reset values at its start and the same values at every
/// one of its checks over 500 ms of sharing the CPU (TSC_AUX through RDMSR
/// and RDTSCP), never one of the writer's. The CPU offers RDTSCP, XSAVE
/// and AVX (`+rdtscp,+xsave,+xsaveopt,+avx`: QEMU 7.2's `qemu64,+xsave`
/// without `+xsaveopt` hangs the first CR4.OSXSAVE write inside QEMU
/// itself). The YMM upper halves are not checked: QEMU 7.2 does not
/// intercept the guest's XSETBV, so its XCR0 = 7 is lost at the next
/// VMRUN and VEX instructions get #UD (`CHECK_YMM` in the guest;
/// `a_guest_with_avx_enabled_runs_vex_instructions`; SECURITY.md, "Not
/// covered yet"). RDPID cannot be checked: QEMU 7.2's TCG does not implement it,
/// so it is not offered.
#[test]
fn cpu_state_does_not_leak_between_domains_on_one_host_cpu() {
    let name = "cpu_state_does_not_leak_between_domains_on_one_host_cpu";
    let dir = test_dir(name);
    let q = base_qemu()
        .smp(1)
        .cpu("qemu64,+svm,+npt,+rdtscp,+xsave,+xsaveopt,+avx")
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "writer", "state_leak_writer", 16))
        .module(pvh_config_module(&dir, "reader", "state_leak", 16))
        .module(guest_module("state_leak_writer", &dir))
        .module(guest_module("state_leak", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&["no domains left running"]);
    let text = vm.console_text();
    if let Some(l) = text.lines().find(|l| l.contains("FAIL")) {
        vm.fail(&format!("a check failed: {l}"));
    }
    for d in ["writer", "reader"] {
        for want in ["leak: avx", "leak: rdtscp", "leak: done"] {
            if !text.lines().any(|l| l == format!("({d}) {want}")) {
                vm.fail(&format!("({d}) did not print {want:?}"));
            }
        }
    }
    let re = regex::Regex::new(r"(?m)^\(writer\) leak: writer kept its values over (\d+) checks$").unwrap();
    let Some(w) = re.captures(&text) else { vm.fail("the writer did not report keeping its values") };
    let writer_checks: u64 = w[1].parse().unwrap();
    if !text.contains("(reader) leak: reader start values are the reset values\n") {
        vm.fail("the reader's start values were not the reset values");
    }
    let re = regex::Regex::new(r"(?m)^\(reader\) leak: reader saw (\d+) checks, (\d+) changed, (\d+) writer values$").unwrap();
    let Some(r) = re.captures(&text) else { vm.fail("no reader summary") };
    let (checks, changed, marks): (u64, u64, u64) = (r[1].parse().unwrap(), r[2].parse().unwrap(), r[3].parse().unwrap());
    eprintln!("[{name}] writer: {writer_checks} checks; reader: {checks} checks, {changed} changed, {marks} writer values");
    if changed != 0 || marks != 0 {
        vm.fail(&format!("the reader saw its state change {changed} times and {marks} writer values"));
    }
    // The two really shared the CPU: each ran checks through the other's
    // half second (a 10 ms slice each way makes dozens of switches).
    if checks < 10 || writer_checks < 10 {
        vm.fail(&format!("too few checks to have shared the CPU: reader {checks}, writer {writer_checks}"));
    }
    vm.expect_success();
}

/// An interrupt storm in one domain (`guests/irq_storm.S`: its LAPIC timer
/// periodic with a count of 1, and self-IPIs back to back) does not delay
/// another domain's timer interrupts on the same host CPU
/// (`guests/timer_latency.S`, 50 wake-ups from HLT) beyond the bound the
/// spinning-neighbour test holds (`conformance::a_halted_vcpus_timer_fires_while_another_domain_spins`):
/// 2 ms, against a 10 ms slice; and the storming guest itself gets to run
/// and finish. Under `-icount`, so the figures count instructions and do
/// not depend on the host's load. Before periodic LAPIC timers were held to
/// `lapic::MIN_PERIODIC_NS` (as KVM's `min_timer_period_us`), a count of 1
/// made the vCPU exit for its timer at every entry before running an
/// instruction: the storming guest never ran again.
#[test]
fn an_interrupt_storm_does_not_delay_another_domains_timer() {
    let name = "an_interrupt_storm_does_not_delay_another_domains_timer";
    let dir = test_dir(name);
    let storm = pvh_config_module(&dir, "storm", "irq_storm", 16);
    storm_beside_timer_latency(name, &dir, storm, "irq_storm", r"^\(storm\) storm: \d+ ipis, \d+ timer interrupts$");
}

/// Two vCPUs of one guest sending each other fixed IPIs as fast as they
/// can (`guests/ipi_storm.S`: 20,000 ICR writes each, with IF=1) do not
/// delay another domain's timer interrupts on the same host CPU beyond
/// the bound above (2 ms); both storming vCPUs take IPIs and finish.
#[test]
fn an_ipi_storm_between_two_vcpus_does_not_delay_another_domains_timer() {
    let name = "an_ipi_storm_between_two_vcpus_does_not_delay_another_domains_timer";
    let dir = test_dir(name);
    let storm = pvh_smp_config_module(&dir, "storm", "ipi_storm", 16, 2);
    let line = storm_beside_timer_latency(
        name,
        &dir,
        storm,
        "ipi_storm",
        r"^\(storm\) ipistorm: vcpu0 received \d+, vcpu1 received \d+ of 20000 each$",
    );
    let re = regex::Regex::new(r"vcpu0 received (\d+), vcpu1 received (\d+)").unwrap();
    let c = re.captures(&line).unwrap();
    let (to0, to1): (u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
    assert!(to0 > 0 && to1 > 0 && to0 <= 20_000 && to1 <= 20_000, "IPIs received: {to0} and {to1} of 20000 each");
}

/// Boots `storm` (the config of domain `storm`, running guest `guest`)
/// beside `guests/timer_latency.S` on one host CPU under `-icount`; the
/// latency domain's 50 timer wake-ups may be at worst 2 ms late. Returns
/// the storm's summary line (matching `storm_line`).
fn storm_beside_timer_latency(name: &str, dir: &std::path::Path, storm: ModuleSpec, guest: &str, storm_line: &str) -> String {
    let q = base_qemu()
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(storm)
        .module(pvh_config_module(dir, "latency", "timer_latency", 16))
        .module(guest_module(guest, dir))
        .module(guest_module("timer_latency", dir))
        .extra_args(["-icount", ferrite_qemu_tests::ferrite_tools::bench::ICOUNT]);
    let mut vm = Vm::start(name, dir, q);
    // The two finish in either order.
    vm.expect_lines(&["no domains left running"]);
    vm.expect_success();
    let text = vm.console_text();
    if let Some(l) = text.lines().find(|l| l.contains("FAIL") || l.contains("crashed")) {
        vm.fail(&format!("a domain failed: {l}"));
    }
    let mut found = Vec::new();
    for pattern in [r"^\(latency\) latency: timer wake-up avg \d+ us max \d+ us over 50$", storm_line] {
        let re = regex::Regex::new(pattern).unwrap();
        match text.lines().find(|l| re.is_match(l)) {
            Some(l) => found.push(l.to_string()),
            None => vm.fail(&format!("no console line matches /{pattern}/")),
        }
    }
    eprintln!("[{name}] {}\n[{name}] {}", found[0], found[1]);
    let report = ferrite_qemu_tests::ferrite_tools::bench_sched::parse(&text);
    let (Some(tpns), Some(l)) = (report.ticks_per_ns, report.latencies.iter().find(|l| l.name == "timer_wakeup")) else {
        vm.fail("no BENCH-TSC or BENCH timer_wakeup line");
    };
    let worst_us = l.worst as f64 / tpns / 1000.0;
    eprintln!("[{name}] worst {worst_us:.1} us, average {:.1} us", l.average() / tpns / 1000.0);
    if worst_us > 2000.0 {
        vm.fail(&format!("a timer interrupt came {worst_us:.0} us late beside the storm (bound: 2000 us)"));
    }
    found.swap_remove(1)
}

/// String I/O edge cases through the stub domain, from an HVM guest in
/// paged protected mode (`guests/bootsector/strio_edges.S`, an MBR that
/// loads 15 more sectors): IDE `rep insw`/`rep outsw` whose first word
/// straddles two virtual pages mapped to frames that are not adjacent
/// (each byte in its own page, never the physically adjacent frame; the
/// written sector checked in the disk image here), `rep insb` with
/// ECX = 0x10000000 running into an unmapped page (#PF there, with EDI
/// and ECX showing the progress, as hardware leaves them; and at once
/// downwards), buffers in the BIOS ROM, the LAPIC page, the PCI hole and
/// beyond RAM (each completes, the ROM and LAPIC unchanged), and ring 3
/// with IOPL 3 (a user buffer works; a supervisor-only one is a #PF with
/// the user bit in the error code).
#[test]
fn string_io_edge_cases_through_the_stub_domain() {
    const SECTOR: usize = 512;
    const WRITE_LBA: usize = 300;
    let name = "string_io_edge_cases_through_the_stub_domain";
    let dir = test_dir(name);
    let boot = guestasm::assemble_boot_image(
        &guestasm::guests_dir().join("bootsector/strio_edges.S"),
        &dir.join("strio_edges.bin"),
    )
    .unwrap_or_else(|e| panic!("cannot assemble strio_edges: {e:#}"));
    let mut image = pseudo_random_bytes(11, 2048 * SECTOR);
    image[..boot.len()].copy_from_slice(&boot);
    let path = dir.join("disk0.img");
    std::fs::write(&path, &image).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let cfg = dir.join("hvm1.cfg");
    std::fs::write(
        &cfg,
        "name = \"hvm1\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\ndisk = [ 'phy:disk0,hda,w' ]\non_crash = \"destroy\"\n",
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", cfg.display()));
    let q = base_qemu()
        .smp(HVM_HOST_CPUS)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(ModuleSpec::new(cfg, ""))
        .module(ModuleSpec::new(images().stubdom.clone(), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .extra_args(virtio_disk_args(&path, "disk0", false));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(hvm1\) .*strio: start$", r"^\(hvm1\) strio: done$", r"domain \d+ \(hvm1\) powered off"]);
    let text = vm.console_text();
    for l in text.lines().filter(|l| l.contains("strio: outs from the ROM")) {
        eprintln!("[{name}] {l}");
    }
    expect_oks(
        &mut vm,
        "hvm1",
        "strio: ",
        &["ins straddle", "outs straddle", "huge count faults", "rom and mmio", "ring 3"],
    );
    if !text.contains("(hvm1) strio: ring 3 user page ok\n") {
        vm.fail("ring 3's rep outsb from a user page did not print");
    }
    if text.contains("crashed") {
        vm.fail("a domain crashed");
    }
    // The straddling OUTS wrote byte i = 3i + 0x5A, through two frames
    // that are not adjacent, to sector 300; nothing else changed.
    let after = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut want = image.clone();
    for (i, b) in want[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(3).wrapping_add(0x5A);
    }
    if after != want {
        let first = after.iter().zip(&want).position(|(a, b)| a != b);
        vm.fail(&format!("the disk image is not what the straddling rep outsw wrote: first difference at byte {first:?}"));
    }
}

/// A guest that enables AVX (CR4.OSXSAVE, XCR0 = 7) can run VEX
/// instructions (`guests/avx_probe.S`: `vxorps` on YMM0). Ignored: QEMU
/// 7.2's TCG does not implement SVM's XSETBV intercept, so the guest's
/// XSETBV takes effect without an exit, Ferrite never learns the guest's
/// XCR0, and its next VMRUN loads the one it knows (1): the guest then
/// reads XCR0 = 1 and gets #UD (SECURITY.md, "Not covered yet", has the
/// evidence). The same guest runs VEX under bare QEMU. Run it on a
/// platform that intercepts XSETBV (hardware, or a QEMU whose translator
/// checks `SVM_EXIT_XSETBV`).
#[test]
#[ignore = "QEMU 7.2's TCG lacks the SVM XSETBV intercept (SECURITY.md)"]
fn a_guest_with_avx_enabled_runs_vex_instructions() {
    let name = "a_guest_with_avx_enabled_runs_vex_instructions";
    let dir = test_dir(name);
    let q = base_qemu()
        .cpu("qemu64,+svm,+npt,+rdtscp,+xsave,+xsaveopt,+avx")
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "avx", "avx_probe", 16))
        .module(guest_module("avx_probe", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"^\(avx\) avx: cpuid", r"^\(avx\) avx: vex ok$", r"domain \d+ \(avx\) powered off"]);
    vm.expect_success();
}
