//! Hostile guests that need a CPU QEMU's TCG does not emulate faithfully:
//! the exception loops of XSA-156. QEMU never raises #AC (alignment checks
//! are not implemented), and a data breakpoint hit while it reads the IDT
//! aborts QEMU 7.2 itself. So these run under Bochs (Debian's `bochs`,
//! 2.7, `model=ryzen`: AMD SVM with nested paging, one CPU; and the same
//! loops again in `model=corei7_skylake_x`, Intel VMX with EPT), booted from a
//! GRUB ISO, its COM1 in a file (`/work/shared/bochs/NOTES.md` has the
//! pitfalls). Bochs counts time in instructions (`ips`, `clock:
//! sync=none`), so the ticker's pace does not depend on the host's load.

use ferrite_qemu_tests::bochs::{Bochs, Machine};
use ferrite_qemu_tests::regex;
use ferrite_qemu_tests::{guest_module, pvh_config_module, test_dir};

mod common;

/// The #AC loop (XSA-156, CVE-2015-5307; `guests/ac_loop.S`): a guest at
/// CPL 3 with CR0.AM and EFLAGS.AC whose #AC handler, a conforming
/// segment's code, runs on a misaligned stack, so every delivery of #AC
/// raises #AC again. Ferrite intercepts #AC, so each one is an exit: the
/// guest first gets an ordinary #AC (error code 0, at the misaligned load)
/// and, once looping, is not crashed but keeps taking its exceptions
/// (Bochs logs each misaligned stack write: thousands of them), while a
/// ticker on the same (only) host CPU prints all its ticks at its pace.
/// Without the intercept Bochs loops on one instruction for ever (checked
/// by taking `1 << AC_VECTOR` out of the intercepts: the ticker never
/// ticks).
#[test]
fn an_alignment_check_loop_does_not_hold_the_host_cpu() {
    alignment_check_loop("an_alignment_check_loop_does_not_hold_the_host_cpu", Machine::svm(1));
}

/// The same #AC loop under the VMX backend (#AC is in its exception
/// bitmap).
#[test]
fn an_alignment_check_loop_does_not_hold_the_host_cpu_under_vmx() {
    alignment_check_loop("an_alignment_check_loop_does_not_hold_the_host_cpu_under_vmx", Machine::vmx(1));
}

fn alignment_check_loop(name: &str, machine: Machine) {
    let dir = exception_loop_beside_ticker(name, "ac", "ac_loop", "(ac) ac: 1 #AC, error code 0, at the misaligned load", machine);
    let log = std::fs::read(dir.join("bochs.log")).unwrap_or_default();
    let marker = b"#AC misaligned access";
    let hits = log.windows(marker.len()).filter(|w| w == marker).count();
    eprintln!("[{name}] Bochs saw {hits} misaligned stack writes raise #AC");
    assert!(hits >= 1000, "only {hits} #AC raised: the guest did not loop");
}

/// The #DB loop (XSA-156, CVE-2015-8104; `guests/db_loop.S`): a data
/// breakpoint on the guest's own #DB gate, so delivering a #DB reads the
/// gate, hits the breakpoint and raises #DB again before the handler's
/// first instruction. Ferrite intercepts #DB: the guest first gets three
/// ordinary single-step traps and, once looping, keeps taking #DB exits
/// while the ticker on the same host CPU keeps its pace. (QEMU 7.2 cannot
/// run this guest at all: a breakpoint hit on the IDT read aborts QEMU
/// itself, `qemu_mutex_lock_iothread_impl: assertion failed`, with or
/// without Ferrite.)
#[test]
fn a_debug_exception_loop_does_not_hold_the_host_cpu() {
    exception_loop_beside_ticker("a_debug_exception_loop_does_not_hold_the_host_cpu", "db", "db_loop", "(db) db: 3 single-step traps", Machine::svm(1));
}

/// The same #DB loop under the VMX backend.
#[test]
fn a_debug_exception_loop_does_not_hold_the_host_cpu_under_vmx() {
    exception_loop_beside_ticker(
        "a_debug_exception_loop_does_not_hold_the_host_cpu_under_vmx",
        "db",
        "db_loop",
        "(db) db: 3 single-step traps",
        Machine::vmx(1),
    );
}

/// Boots domain `domain` (guest `guest`, which prints `first_ok`, then
/// "<domain>: looping" and loops taking exceptions for ever) beside the
/// ticker on one Bochs CPU: the ticker must print all its ticks, most of
/// them after the loop began, at most 1 s apart, and the looping domain
/// must not crash or print FAIL. Returns the test directory.
fn exception_loop_beside_ticker(name: &str, domain: &str, guest: &str, first_ok: &str, machine: Machine) -> std::path::PathBuf {
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, domain, guest, 16),
        pvh_config_module(&dir, "ticker", "ticker", 16),
        guest_module(guest, &dir),
        guest_module("ticker", &dir),
    ];
    let looping_line = format!("({domain}) {domain}: looping");
    let mut bochs = Bochs::start(&dir, "console=com1 console_timestamps=boot", modules, machine);
    let text = bochs.wait_for_all(&[&regex::escape(&looping_line), r"\(ticker\) ticker done$"]);
    drop(bochs);
    if let Some(l) = text.lines().find(|l| l.contains("FAIL") || l.contains("crashed") || l.contains("panic")) {
        panic!("[{name}] {l}");
    }
    if !text.lines().any(|l| l.ends_with(first_ok)) {
        panic!("[{name}] no {first_ok:?}: the ordinary exceptions were not delivered as they should be");
    }
    // The ticks came after the loop began, and at their pace.
    let looping = text.lines().filter_map(common::split_timestamp).find(|(_, l)| *l == looping_line).map(|(t, _)| t);
    let (ticks, worst) = common::ticks(&text, "ticker");
    let Some(looping) = looping else { panic!("[{name}] no timestamp on the looping line") };
    let after = ticks.iter().filter(|&&t| t > looping).count();
    eprintln!("[{name}] loop from {looping:.3} s; {} ticks, {after} after it, worst gap {worst:.3} s", ticks.len());
    assert_eq!(ticks.len(), 20, "the ticker printed {} ticks, not 20", ticks.len());
    assert!(after >= 10, "only {after} ticks came after the loop began: it must not hold the CPU");
    assert!(worst <= 1.0, "the ticker's ticks were up to {worst:.3} s apart beside the loop (at most 1 s)");
    dir
}
