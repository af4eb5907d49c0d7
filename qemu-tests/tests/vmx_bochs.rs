//! The Intel VMX backend, under Bochs' VMX model (`corei7_skylake_x`: VMX
//! with EPT, VPID and unrestricted guest; QEMU's TCG emulates only SVM).
//! Ferrite picks VMX at boot from the CPU's vendor and features, turns it
//! on on both CPUs and runs its self-test guest (real mode, protected
//! mode, long mode, port I/O, CPUID, HLT, a hypercall) through the same
//! run loop as under SVM. Then Debian's Linux as a PVH dom0 with two
//! vCPUs reaches its init and powers off (about 3 minutes of Bochs).

use ferrite_qemu_tests::bochs::{Bochs, Machine};
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{guest_module, linux_cmdline, linux_guest, pvh_config_module, pvh_smp_config_module, test_dir, ODD_APIC_CHECKS};
use std::time::Duration;

#[test]
fn the_self_test_passes_under_vmx() {
    let name = "the_self_test_passes_under_vmx";
    let dir = test_dir(name);
    let mut bochs = Bochs::start(&dir, "console=com1", Vec::new(), Machine::vmx(2));
    let text = bochs.wait_for_all(&[
        r"^\(ferrite\) virtualization: vmx: ept=yes unrestricted_guest=yes vpid=yes",
        r"^\(ferrite\) smp: 2 CPUs online, VMX enabled on 2$",
        // The CPU refused an entry the self-test made invalid on purpose,
        // and the software checks named the rule that was broken.
        r"^\(ferrite\) selftest: a refused VM entry is named: RFLAGS has reserved bits 0x8000 set$",
        r"^\(ferrite\) selftest: PASS",
        r"^\(ferrite\) boot complete",
    ]);
    drop(bochs);
    if let Some(l) = text.lines().find(|l| l.contains("FAIL") || l.contains("panic") || l.contains("(ferrite) vmx:")) {
        panic!("[{name}] {l}");
    }
}

#[test]
fn a_linux_pvh_dom0_with_two_vcpus_powers_off_under_vmx() {
    linux_dom0_with_two_vcpus(
        "a_linux_pvh_dom0_with_two_vcpus_powers_off_under_vmx",
        Machine::vmx(2),
        &[r"^\(ferrite\) smp: 2 CPUs online, VMX enabled on 2$", r"^\(dom0\) FERRITE-INIT cpus=2 "],
    );
}

/// Boots Debian's Linux as a PVH dom0 with two vCPUs (1 GiB machine,
/// `machine`'s CPU model): it must print each of `wants` and power off,
/// with nothing crashed or panicked and no VMX error on the way.
fn linux_dom0_with_two_vcpus(name: &str, machine: Machine, wants: &[&str]) {
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, "cloud-amd64", &dir) else { return };
    let modules = vec![ModuleSpec::new(&guest.vmlinux, linux_cmdline("poweroff")), ModuleSpec::new(&guest.initramfs, "")];
    let machine = Machine { megs: 1024, ..machine };
    let mut bochs = Bochs::start_with_module_strings(&dir, "console=com1 dom0_mem=256M dom0_max_vcpus=2", modules, machine);
    bochs.limit = Duration::from_secs(900);
    let mut patterns = wants.to_vec();
    patterns.push(r"^\(ferrite\) domain 0 \(dom0\) powered off$");
    let text = bochs.wait_for_all(&patterns);
    eprintln!("[{name}] dom0 powered off after {:.0?} of Bochs", bochs.started.elapsed());
    drop(bochs);
    if let Some(l) = text.lines().find(|l| l.contains("crashed") || l.contains("panic") || l.contains("(ferrite) vmx:")) {
        panic!("[{name}] {l}");
    }
}

/// A CPU whose VMX has EPT but no unrestricted guest (Bochs' Nehalem):
/// Ferrite still picks VMX. Guests cannot run in real mode there, so an
/// HVM guest is refused at create with the reason, while PVH guests run:
/// with paging off they page through an identity map the CPU is given
/// (`virt::UNPAGED_IDENTITY_MAP_GPA`), their CR3 kept aside until their
/// own paging is on. `cr_efer_checks` goes from protected mode without
/// paging through PAE paging into long mode and back out, and the
/// self-test starts at its 32-bit part.
#[test]
fn without_unrestricted_guest_pvh_runs_and_hvm_is_refused() {
    let name = "without_unrestricted_guest_pvh_runs_and_hvm_is_refused";
    let dir = test_dir(name);
    let cfg = dir.join("hvm1.cfg");
    std::fs::write(&cfg, "name = \"hvm1\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\n").expect("write the config");
    let modules = vec![
        pvh_config_module(&dir, "cr", "cr_efer_checks", 16),
        guest_module("cr_efer_checks", &dir),
        pvh_config_module(&dir, "ticker", "ticker", 16),
        guest_module("ticker", &dir),
        ModuleSpec::new(cfg, ""),
        ModuleSpec::new(std::path::PathBuf::from(&ferrite_qemu_tests::images().stubdom), ""),
        ModuleSpec::new(ferrite_qemu_tests::seabios_image(), ""),
    ];
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx_without_unrestricted_guest(2));
    let text = bochs.wait_for_all(&[
        r"^\(ferrite\) virtualization: vmx: ept=yes unrestricted_guest=no vpid=yes",
        r"^\(ferrite\) smp: 2 CPUs online, VMX enabled on 2$",
        r"^\(ferrite\) selftest: PASS \(\d+ exits: protected mode \(real mode skipped: no unrestricted guest\)",
        r"hvm1: HVM guests start in real mode \(the BIOS\), which needs VMX's unrestricted guest, and this CPU lacks it; PVH guests",
        r"^\(cr\) cr: done 44 checks$",
        r"domain \d+ \(cr\) powered off",
        r"^\(ticker\) ticker done$",
    ]);
    drop(bochs);
    let bad: Vec<&str> = text.lines().filter(|l| l.contains("FAIL") || l.contains("crashed") || l.contains("panic") || l.contains("(ferrite) vmx:")).collect();
    assert!(bad.is_empty(), "[{name}] {bad:#?}");
}

/// Debian's Linux as a PVH dom0 with two vCPUs on a VMX CPU without
/// unrestricted guest: it enters at the PVH entry with paging off (the
/// identity map), turns on its own paging and reaches init. Its second
/// vCPU would start in real mode through INIT/SIPI, which this CPU cannot
/// run: the SIPI is not taken, Linux reports the CPU as not booting and
/// goes on with one. About 4 minutes of Bochs.
#[test]
fn a_linux_pvh_dom0_runs_without_unrestricted_guest() {
    linux_dom0_with_two_vcpus(
        "a_linux_pvh_dom0_runs_without_unrestricted_guest",
        Machine::vmx_without_unrestricted_guest(2),
        &[
            r"^\(ferrite\) virtualization: vmx: ept=yes unrestricted_guest=no",
            r"dom0: only vCPU 0 will run: the others start in real mode",
            r"vcpu 1: SIPI not taken: real mode needs VMX's unrestricted guest",
            r"^\(dom0\) FERRITE-INIT cpus=1 ",
        ],
    );
}

/// The architectural-conformance guests of `conformance.rs`, all at once
/// beside each other on Bochs' two VMX CPUs: each checks one rule of the
/// machine it sees (interrupt windows, CR0/CR3/CR4/EFER writes, NMIs and
/// NMI task gates, task switches by CALL, JMP, IRET, INT n and a #GP,
/// single steps after emulated instructions, CR8 and the TPR) and must
/// report all its checks done, none failed, and power off. VMX exits on
/// every task switch (exit reason 9), so `nmi_task_gate` and `task_switch`
/// check Ferrite's emulation of them (`vcpu::task`); under SVM the CPU
/// switches tasks itself.
#[test]
fn the_conformance_guests_pass_under_vmx() {
    let name = "the_conformance_guests_pass_under_vmx";
    let dir = test_dir(name);
    let guests = [
        ("window", "irq_window", r"^\(window\) irq-window: delivered after TPR lowered$"),
        ("cr4", "cr4_checks", r"^\(cr4\) cr4: done 14 checks$"),
        ("nmi", "nmi", r"^\(nmi\) nmi: 2 delivered, none nested$"),
        ("cr", "cr_efer_checks", r"^\(cr\) cr: done 44 checks$"),
        ("step", "single_step", r"^\(step\) step: done 11 checks$"),
        ("tpr", "tpr_cr8", r"^\(tpr\) tpr: done 10 checks$"),
        ("nmitask", "nmi_task_gate", r"^\(nmitask\) nmi-task: 2 delivered through the task gate, none nested$"),
        ("task", "task_switch", r"^\(task\) task: done 30 checks$"),
    ];
    let mut modules = Vec::new();
    for (domain, guest, _) in guests {
        modules.push(pvh_config_module(&dir, domain, guest, 16));
        modules.push(guest_module(guest, &dir));
    }
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx(2));
    let mut patterns: Vec<String> = guests.iter().map(|(_, _, done)| done.to_string()).collect();
    patterns.extend(guests.iter().map(|(domain, _, _)| format!(r"domain \d+ \({domain}\) powered off")));
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let text = bochs.wait_for_all(&refs);
    drop(bochs);
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAIL") || l.contains("crashed") || l.contains("(ferrite) vmx:"))
        .collect();
    assert!(failures.is_empty(), "[{name}] {failures:#?}");
}

/// An HVM guest under VMX: SeaBIOS from its reset vector in real mode
/// (unrestricted guest), its devices served by a stub domain (64-bit, its
/// own EPT) through I/O requests, boots `mbr_disk_check.S` from an IDE
/// disk that is a boot module served from RAM (`module:disk0.img`; Bochs
/// has no virtio disks): the boot sector reads 256 sectors through int 13h
/// and checks their sum, and writes one (to the domain's private copy).
#[test]
fn seabios_boots_an_mbr_from_a_module_disk_under_vmx() {
    const SECTOR: usize = 512;
    const CHECK_SECTORS: usize = 256;
    let name = "seabios_boots_an_mbr_from_a_module_disk_under_vmx";
    let dir = test_dir(name);
    use ferrite_qemu_tests::ferrite_tools::guestasm;
    let mbr = guestasm::assemble_boot_sector(&guestasm::guests_dir().join("bootsector/mbr_disk_check.S"), &dir.join("mbr.bin"))
        .unwrap_or_else(|e| panic!("cannot assemble the boot sector: {e:#}"));
    let disk = guestasm::mbr_test_disk(&mbr, 2048);
    let sum = disk[SECTOR..(CHECK_SECTORS + 1) * SECTOR].iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    let disk_path = dir.join("disk0.img");
    std::fs::write(&disk_path, &disk).expect("write the disk image");
    let cfg = dir.join("hvm1.cfg");
    std::fs::write(
        &cfg,
        "name = \"hvm1\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\ndisk = [ 'module:disk0.img,hda,w' ]\non_crash = \"destroy\"\n",
    )
    .expect("write the config");
    let modules = vec![
        ModuleSpec::new(cfg, ""),
        ModuleSpec::new(disk_path.clone(), ""),
        ModuleSpec::new(std::path::PathBuf::from(&ferrite_qemu_tests::images().stubdom), ""),
        ModuleSpec::new(ferrite_qemu_tests::seabios_image(), ""),
    ];
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx(2));
    let ok = format!(r"^\(hvm1\) mbr: ok sectors={CHECK_SECTORS:08x} sum={sum:08x}$");
    let text = bochs.wait_for_all(&[r"domain \d+ \(hvm1\): HVM, 32 MiB", &ok, r"domain \d+ \(hvm1\) powered off"]);
    drop(bochs);
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("crashed") || l.contains("(ferrite) vmx:")).collect();
    assert!(failures.is_empty(), "[{name}] {failures:#?}");
    assert_eq!(std::fs::read(&disk_path).expect("read the disk image"), disk, "the module's file changed");
}

/// The address of guest `guest`'s `fault_insn` label, where its crash must
/// be reported.
fn fault_rip(dir: &std::path::Path, guest: &str) -> String {
    let elf = dir.join(format!("{guest}.elf"));
    let bytes = std::fs::read(&elf).unwrap_or_else(|e| panic!("cannot read {}: {e}", elf.display()));
    match ferrite_qemu_tests::ferrite_tools::guestasm::symbol_address(&bytes, "fault_insn") {
        Ok(a) => format!("{a:#x}"),
        Err(e) => panic!("{}: {e:#}", elf.display()),
    }
}

/// The hostile guests of `hostile.rs` side by side under VMX: an unknown
/// MSR, a write to unmapped guest-physical memory and UD2 each crash only
/// their own domain, at the faulting instruction; a guest spinning with
/// interrupts off does not starve the ticker; two domains keep their
/// debug registers private and get their single-step traps; the
/// start-up probes of `cpu_policy` get their answers.
#[test]
fn hostile_guests_are_contained_under_vmx() {
    let name = "hostile_guests_are_contained_under_vmx";
    let dir = test_dir(name);
    let domains = [
        ("msr", "hostile_msr"),
        ("mmio", "hostile_mmio"),
        ("ud", "hostile_ud"),
        ("spinner", "hostile_spin"),
        ("ticker", "ticker"),
        ("dbg1", "debug_regs"),
        ("dbg2", "debug_regs"),
    ];
    let mut modules = Vec::new();
    for (domain, guest) in domains {
        modules.push(pvh_config_module(&dir, domain, guest, 16));
    }
    for guest in ["hostile_msr", "hostile_mmio", "hostile_ud", "hostile_spin", "ticker", "debug_regs"] {
        modules.push(guest_module(guest, &dir));
    }
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx(2));
    let crash = |domain: &str, guest: &str, reason: &str| {
        format!(r"ERROR: domain \d+ \({domain}\) crashed: vcpu 0: {reason} at rip {} \(rsp .*\)$", fault_rip(&dir, guest))
    };
    let patterns = [
        crash("msr", "hostile_msr", r"triple fault \(shutdown\)"),
        crash("mmio", "hostile_mmio", "write of unmapped guest-physical address 0xe0000000"),
        crash("ud", "hostile_ud", r"triple fault \(shutdown\)"),
        r"^\(spinner\) spinning$".to_string(),
        r"^\(ticker\) tick 20$".to_string(),
        r"^\(ticker\) ticker done$".to_string(),
        r"^\(dbg1\) debug: done$".to_string(),
        r"^\(dbg2\) debug: done$".to_string(),
    ];
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let text = bochs.wait_for_all(&refs);
    drop(bochs);
    for d in ["dbg1", "dbg2"] {
        for want in ["debug: 5 single-step traps", "debug: dr0 0 at start", "debug: dr0 kept"] {
            assert!(text.contains(&format!("({d}) {want}")), "[{name}] ({d}) did not print {want:?}");
        }
    }
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAIL") || l.contains("(ferrite) vmx:") || l.contains("panic") || (l.contains("crashed") && (l.contains("(ticker)") || l.contains("(spinner)") || l.contains("(dbg"))))
        .collect();
    assert!(bad.is_empty(), "[{name}] {bad:#?}");
}

/// The rest of `hostile_guests.rs` and `hostile.rs`'s console flood, side
/// by side on Bochs' two VMX CPUs: odd-size, misaligned and
/// page-straddling LAPIC and I/O APIC accesses get the answers of
/// `ODD_APIC_CHECKS`; a guest storming itself with timer interrupts and
/// self-IPIs, and two vCPUs storming each other with IPIs, finish; a
/// console flood is cut to its budget and the rest counted; a guest that
/// crashes meanwhile is reported with its reason at its faulting
/// instruction; a ticker keeps ticking beside them all. (How late the
/// storms make another domain's timer is measured under QEMU's icount,
/// `hostile_guests.rs`; Bochs' clock here follows its own pace.)
#[test]
fn storms_floods_and_odd_apic_accesses_are_contained_under_vmx() {
    let name = "storms_floods_and_odd_apic_accesses_are_contained_under_vmx";
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, "odd", "odd_apic", 16),
        pvh_config_module(&dir, "storm", "irq_storm", 16),
        pvh_smp_config_module(&dir, "ipistorm", "ipi_storm", 16, 2),
        pvh_config_module(&dir, "flood", "console_flood", 16),
        pvh_config_module(&dir, "ticker", "ticker", 16),
        pvh_config_module(&dir, "late", "late_crash", 16),
        guest_module("odd_apic", &dir),
        guest_module("irq_storm", &dir),
        guest_module("ipi_storm", &dir),
        guest_module("console_flood", &dir),
        guest_module("ticker", &dir),
        guest_module("late_crash", &dir),
    ];
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx(2));
    bochs.limit = Duration::from_secs(600);
    let late = format!(r"ERROR: domain \d+ \(late\) crashed: vcpu 0: triple fault \(shutdown\) at rip {} ", fault_rip(&dir, "late_crash"));
    let text = bochs.wait_for_all(&[
        r"^\(odd\) odd: done$",
        r"^\(storm\) storm: \d+ ipis, \d+ timer interrupts$",
        r"^\(ipistorm\) ipistorm: vcpu0 received \d+, vcpu1 received \d+ of 20000 each$",
        r"^\(flood\) flood done$",
        r"domain \d+ \(flood\): \d+ console lines not shown",
        &late,
        r"^\(ticker\) tick 20$",
        r"^\(ticker\) ticker done$",
        r"no domains left running",
    ]);
    drop(bochs);
    for check in ODD_APIC_CHECKS {
        assert!(text.contains(&format!("(odd) odd: ok {check}\n")), "[{name}] (odd) did not print odd: ok {check:?}");
    }
    let counts = regex::Regex::new(r"ipistorm: vcpu0 received (\d+), vcpu1 received (\d+)").unwrap();
    let c = counts.captures(&text).expect("the IPI storm's line");
    let (to0, to1): (u64, u64) = (c[1].parse().unwrap(), c[2].parse().unwrap());
    assert!(to0 > 0 && to1 > 0 && to0 <= 20_000 && to1 <= 20_000, "[{name}] IPIs received: {to0} and {to1} of 20000 each");
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("FAIL") || l.contains("panic") || l.contains("(ferrite) vmx:") || (l.contains("crashed") && !l.contains("(late) crashed")))
        .collect();
    assert!(bad.is_empty(), "[{name}] {bad:#?}");
}

/// Two domains on one VMX CPU (`guests/state_leak.S`): the state VMX does
/// not switch itself (TSC_AUX, DR0-3, DR7, XMM, MXCSR, the x87 control
/// word) never passes from the writer to the reader; beside them an STI;HLT
/// guest is always woken by its interrupt, the start-up probes of
/// `cpu_policy` get their answers, and a guest that enables AVX (XCR0 = 7
/// through XSETBV, which VMX always intercepts) runs VEX instructions
/// (`guests/avx_probe.S`; ignored under QEMU 7.2, whose SVM lacks the
/// XSETBV intercept).
#[test]
fn cpu_state_stays_private_on_one_vmx_cpu() {
    let name = "cpu_state_stays_private_on_one_vmx_cpu";
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, "writer", "state_leak_writer", 16),
        pvh_config_module(&dir, "reader", "state_leak", 16),
        pvh_config_module(&dir, "sti_hlt", "sti_hlt", 16),
        pvh_config_module(&dir, "policy", "cpu_policy", 16),
        pvh_config_module(&dir, "avx", "avx_probe", 16),
        guest_module("avx_probe", &dir),
        guest_module("state_leak_writer", &dir),
        guest_module("state_leak", &dir),
        guest_module("sti_hlt", &dir),
        guest_module("cpu_policy", &dir),
    ];
    let mut bochs = Bochs::start(&dir, "console=com1", modules, Machine::vmx(1));
    let text = bochs.wait_for_all(&[
        r"^\(writer\) leak: done$",
        r"^\(reader\) leak: done$",
        r"^\(reader\) leak: reader start values are the reset values$",
        r"^\(reader\) leak: reader saw \d+ checks, 0 changed, 0 writer values$",
        r"^\(writer\) leak: writer kept its values over \d+ checks$",
        r"^\(sti_hlt\) sti_hlt rounds=400 early=0$",
        r"^\(policy\) cpu-policy: done$",
        r"^\(avx\) avx: vex ok$",
        r"no domains left running",
    ]);
    drop(bochs);
    let bad: Vec<&str> = text.lines().filter(|l| l.contains("FAIL") || l.contains("crashed") || l.contains("(ferrite) vmx:")).collect();
    assert!(bad.is_empty(), "[{name}] {bad:#?}");
}

/// What the exits of `guests/bench.S` cost under Bochs with each backend,
/// in Bochs instructions (its TSC runs at `ips`, one tick per emulated
/// instruction): the same guest and hypervisor on one CPU of Bochs' SVM
/// model and of its VMX model. Prints the table (run with --nocapture);
/// checks every round trip completed under both.
#[test]
fn exit_costs_under_bochs_svm_and_vmx() {
    use ferrite_qemu_tests::ferrite_tools::bench;
    let name = "exit_costs_under_bochs_svm_and_vmx";
    let mut reports = Vec::new();
    for (label, machine) in [("svm", Machine::svm(1)), ("vmx", Machine::vmx(1))] {
        let dir = test_dir(&format!("{name}_{label}"));
        let modules = vec![pvh_config_module(&dir, "bench", "bench", 64), guest_module("bench", &dir)];
        let mut bochs = Bochs::start(&dir, "console=com1 pm_timer=emulated", modules, machine);
        let text = bochs.wait_for_all(&[r"bench done", r"domain \d+ \(bench\) powered off"]);
        drop(bochs);
        let report = bench::parse_guest_output(&text);
        assert!(report.done && !report.lines.is_empty(), "[{name}] {label}: no results");
        reports.push((label, report));
    }
    eprintln!("[{name}] instructions per iteration under Bochs (loop included):");
    eprintln!("{:<22} {:>10} {:>10}", "benchmark", "svm", "vmx");
    let (svm, vmx) = (&reports[0].1, &reports[1].1);
    for l in &svm.lines {
        let per = |r: &bench::GuestReport| {
            r.lines.iter().find(|m| m.name == l.name).map(|m| m.ticks as f64 / m.iterations.max(1) as f64)
        };
        let v = per(vmx);
        eprintln!("{:<22} {:>10.1} {:>10}", l.name, per(svm).unwrap_or(0.0), v.map_or("-".into(), |v| format!("{v:.1}")));
        assert!(v.is_some(), "[{name}] vmx printed no {}", l.name);
    }
}
