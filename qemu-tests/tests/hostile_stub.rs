//! A hostile stub domain: `ferrite-stubdom-hostile` (stubdom/src/hostile/)
//! in place of the real one. It serves no devices; it sends every
//! malformed hypercall and tampers with every field of the I/O-request page
//! and the buffered-write ring the hypervisor reads, and prints a verdict
//! per case (`HOSTILE <case> -> <result>: PASS|FAIL`). A second one floods
//! the console through its hypercalls. Every attempt must end in an error
//! return or be ignored; the hypervisor, the other stub and a PVH ticker
//! must keep running, the ticker at its pace.
//!
//! The guests are `ioloop`, a 4 KiB firmware image whose reset vector
//! loops `out 0x4f0, al; in al, 0x4f0` for ever: there always is a request
//! to tamper with, and what the stub answers shows in the next write.
//! No case destroys a stub (none has to: the hypervisor refuses or ignores
//! each one), so one boot covers them all.

use ferrite_qemu_tests::ferrite_tools::guestasm;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::regex::Regex;
use ferrite_qemu_tests::{base_qemu, images, linuxboot_rom, test_dir, virtio_disk_args, Vm, BASE_CMDLINE};
use std::path::{Path, PathBuf};

mod common;
use common::domain_lines;

/// Cases the hostile stub runs (its summary must count exactly these).
const CASES: usize = 122;
/// The console flood: lines the flood stub sends through each console
/// hypercall (16 calls of 4096 newlines).
const FLOOD_LINES: usize = 16 * 4096;
/// At most this many of them may reach the serial console: the burst of
/// a domain's console budget (500 lines) and 200 a second after it, for
/// the few seconds the flood takes under TCG. Before stub output had a
/// budget, all 65536 did.
const FLOOD_SHOWN_MAX: usize = 2500;
/// The ticker prints a line every 100 ms; no gap between two may exceed
/// this (a stub holding a host CPU or the console would stretch one).
const TICK_GAP_MAX_S: f64 = 1.0;
/// `ticker_long`: 100 ticks, 10 s, longer than the attacks take.
const TICKS: usize = 100;
/// The hostile guest's disk: room for the largest block request (32 MiB).
const DISK_BYTES: u64 = 40 << 20;

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

/// `ioloop.rom`: 4 KiB of HLT with, at the reset vector (offset 0xff0,
/// 0xFFFFFFF0 once mapped at the top of 4 GiB), `mov dx, 0x4f0` then
/// `out dx, al; in al, dx; jmp` back to the `out`.
fn ioloop_rom(dir: &Path) -> ModuleSpec {
    let mut rom = vec![0xF4u8; 4096];
    rom[0xFF0..0xFF7].copy_from_slice(&[0xBA, 0xF0, 0x04, 0xEE, 0xEC, 0xEB, 0xFC]);
    let path = dir.join("ioloop.rom");
    write_file(&path, &rom);
    ModuleSpec::new(path, "")
}

/// `dir/<name>.cfg`: an HVM guest running `ioloop.rom`, with `extra` keys.
fn ioloop_config(dir: &Path, name: &str, extra: &str) -> ModuleSpec {
    let text = format!(
        "# written by qemu-tests/tests/hostile_stub.rs\nname = \"{name}\"\ntype = \"hvm\"\nmemory = 16\nvcpus = 1\n\
         firmware = \"ioloop.rom\"\non_crash = \"destroy\"\n{extra}"
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, text.as_bytes());
    ModuleSpec::new(path, "")
}

fn ticker_modules(dir: &Path) -> [ModuleSpec; 2] {
    let cfg = dir.join("ticker.cfg");
    write_file(
        &cfg,
        b"name = \"ticker\"\ntype = \"pvh\"\nkernel = \"ticker_long.elf\"\nmemory = 64\nvcpus = 1\non_crash = \"destroy\"\n",
    );
    let elf = guestasm::build_guest("ticker_long", dir).unwrap_or_else(|e| panic!("cannot assemble the ticker guest: {e:#}"));
    [ModuleSpec::new(cfg, ""), ModuleSpec::new(elf, "")]
}

#[test]
fn hostile_stub_hypercalls_and_shared_page_tampering_are_refused() {
    let name = "hostile_stub_hypercalls_and_shared_page_tampering_are_refused";
    let dir = test_dir(name);
    let disk: PathBuf = dir.join("disk0.img");
    let file = std::fs::File::create(&disk).and_then(|f| f.set_len(DISK_BYTES));
    if let Err(e) = file {
        panic!("cannot create {}: {e}", disk.display());
    }
    let [ticker_cfg, ticker_elf] = ticker_modules(&dir);
    let q = base_qemu()
        .smp(2)
        .kernel(&images().multiboot)
        .append(&format!("{BASE_CMDLINE} console_timestamps=boot"))
        // Its boot files give DATA_READ a source to read past.
        .module(ioloop_config(&dir, "hostile", "disk = [ 'phy:disk0,hda,r' ]\nvif = [ 'bridge=hostilebr' ]\nkernel = \"ticker_long.elf\"\n"))
        // On the hostile stub's bridge: its storm fills this one's receive
        // ring, which its (flooding) stub never empties.
        .module(ioloop_config(&dir, "flood", "vif = [ 'bridge=hostilebr' ]\n"))
        .module(ticker_cfg)
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom_hostile), ""))
        .module(ioloop_rom(&dir))
        .module(ModuleSpec::new(linuxboot_rom(), ""))
        .module(ticker_elf)
        .extra_args(virtio_disk_args(&disk, "disk0", false));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[r"\(ferrite\) no domains left running"]);
    let text = vm.console_text();

    // Every case refused or ignored, all of them run.
    let verdicts = domain_lines(&text, "hostile-dm");
    let failed: Vec<&str> = verdicts.iter().map(|(_, l)| *l).filter(|l| l.starts_with("HOSTILE ") && !l.starts_with("HOSTILE summary") && !l.ends_with(": PASS"))
        .collect();
    let summary = format!("HOSTILE summary: {CASES} cases, {CASES} passed, 0 failed");
    if !failed.is_empty() || !verdicts.iter().any(|(_, l)| *l == summary) {
        vm.fail(&format!("the hostile stub's verdicts are not {CASES} passes:\n{}", failed.join("\n")));
    }
    for lost in ["panic", "crashed", "ERROR"] {
        if let Some(l) = text.lines().find(|l| l.contains(lost)) {
            vm.fail(&format!("nothing may panic or crash here: {l:?}"));
        }
    }
    for guest in ["hostile", "flood", "ticker"] {
        let off = Regex::new(&format!(r"domain \d+ \({guest}\) powered off")).unwrap();
        if !text.lines().any(|l| off.is_match(l)) {
            vm.fail(&format!("{guest} did not power off"));
        }
    }

    // The floods: the stub's own log lines and its guest's console each
    // kept to the console budget.
    let flood_verdicts = domain_lines(&text, "flood-dm");
    for (who, lines) in [("flood-dm", &flood_verdicts), ("flood", &domain_lines(&text, "flood"))] {
        let blank = lines.iter().filter(|(_, l)| l.trim().is_empty()).count();
        if blank > FLOOD_SHOWN_MAX {
            vm.fail(&format!("{blank} of the {FLOOD_LINES} blank lines {who} sent reached the console; at most {FLOOD_SHOWN_MAX} may"));
        }
    }
    if flood_verdicts.iter().any(|(_, l)| l.starts_with("HOSTILE ") && l.ends_with(": FAIL")) {
        vm.fail("the flood stub's hypercalls were refused");
    }

    // The ticker kept its pace while the stubs attacked.
    let (ticks, worst) = common::ticks(&text, "ticker");
    if ticks.len() != TICKS {
        vm.fail(&format!("the ticker printed {} ticks, not {TICKS}", ticks.len()));
    }
    if worst > TICK_GAP_MAX_S {
        vm.fail(&format!("the ticker's ticks were up to {worst:.3} s apart (at most {TICK_GAP_MAX_S} s)"));
    }
    // The ticks measured something: the attack ran while the ticker did.
    let attack: Vec<f64> = verdicts.iter().filter(|(_, l)| l.starts_with("HOSTILE ")).map(|(t, _)| *t).collect();
    let during = attack.iter().filter(|&&t| t <= ticks[TICKS - 1]).count();
    eprintln!(
        "ticks {:.3}..{:.3} s, worst gap {worst:.3} s; {during} of {} verdicts came while the ticker ran",
        ticks[0],
        ticks[TICKS - 1],
        attack.len()
    );
    if during == 0 {
        vm.fail("the ticker ended before the hostile stub began: its pace shows nothing");
    }
    // The flush storm (its verdict comes at its end) began while the
    // ticker ran: the verdict before it is its start.
    let hostile: Vec<&(f64, &str)> = verdicts.iter().filter(|(_, l)| l.starts_with("HOSTILE ")).collect();
    match hostile.iter().position(|(_, l)| l.starts_with("HOSTILE block-flush-storm ")) {
        Some(i) if i > 0 => {
            let (start, end) = (hostile[i - 1].0, hostile[i].0);
            eprintln!("flush storm {start:.3}..{end:.3} s");
            if start >= ticks[TICKS - 1] {
                vm.fail("the flush storm began after the ticker ended: its pace shows nothing");
            }
        }
        _ => vm.fail("no flush storm verdict after another"),
    }
    vm.expect_success();
}
