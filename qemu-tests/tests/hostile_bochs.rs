//! Hostile guests that need a CPU QEMU's TCG does not emulate faithfully:
//! the exception loops of XSA-156. QEMU never raises #AC (alignment checks
//! are not implemented), and a data breakpoint hit while it reads the IDT
//! aborts QEMU 7.2 itself. So these run under Bochs (Debian's `bochs`,
//! 2.7, `model=ryzen`: AMD SVM with nested paging, one CPU), booted from a
//! GRUB ISO, its COM1 in a file (`/work/shared/bochs/NOTES.md` has the
//! pitfalls). Bochs counts time in instructions (`ips`, `clock:
//! sync=none`), so the ticker's pace does not depend on the host's load.

use ferrite_qemu_tests::ferrite_tools::iso;
use ferrite_qemu_tests::regex;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{guest_module, images, pvh_config_module, test_dir};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// How long a Bochs run may take (Ferrite boots in about 5 s of it).
const BOCHS_LIMIT: Duration = Duration::from_secs(300);

/// A running Bochs (inside script(1), which gives its `term` display a
/// tty), stopped by its process ids when dropped.
struct Bochs {
    script: Child,
    serial: std::path::PathBuf,
    log: std::path::PathBuf,
    started: Instant,
}

impl Bochs {
    /// Builds a GRUB ISO of Ferrite (`cmdline`) and `modules` and boots it
    /// on one SVM CPU.
    fn start(dir: &Path, cmdline: &str, modules: Vec<ModuleSpec>) -> Bochs {
        for prog in ["bochs-bin", "script"] {
            if ferrite_qemu_tests::ferrite_tools::deps::find_program(prog).is_none() {
                panic!("{prog} not found: apt-get install bochs bochsbios vgabios bochs-term bsdutils");
            }
        }
        // GRUB's module2 hands over only the arguments, while Ferrite
        // names a module by its string's first word: the file name.
        let modules = modules
            .into_iter()
            .map(|m| {
                let name = m.file_name().unwrap_or_else(|e| panic!("{e:#}"));
                ModuleSpec::new(m.path, name)
            })
            .collect();
        let iso_path = dir.join("ferrite.iso");
        let spec = iso::IsoSpec { hypervisor: images().multiboot.clone(), cmdline: cmdline.to_string(), modules };
        if let Err(e) = iso::build_iso(&spec, &iso_path, &dir.join("iso-staging")) {
            panic!("cannot build the ISO: {e:#}");
        }
        let serial = dir.join("serial.log");
        let log = dir.join("bochs.log");
        let bxrc = dir.join("ferrite.bxrc");
        let config = format!(
            "megs: 256\n\
             romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
             vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
             cpu: model=ryzen, count=1, ips=100000000, reset_on_triple_fault=0\n\
             display_library: term\n\
             boot: cdrom\n\
             ata0-slave: type=cdrom, path={}, status=inserted\n\
             com1: enabled=1, mode=file, dev={}\n\
             panic: action=fatal\nerror: action=report\ninfo: action=report\ndebug: action=ignore\n\
             clock: sync=none, time0=local\n",
            iso_path.display(),
            serial.display()
        );
        let rc = dir.join("continue.rc");
        for (path, text) in [(&bxrc, config.as_str()), (&rc, "c\nquit\n")] {
            if let Err(e) = std::fs::write(path, text) {
                panic!("cannot write {}: {e}", path.display());
            }
        }
        let script = Command::new("script")
            .arg("-qec")
            .arg(format!("exec bochs-bin -q -f '{}' -rc '{}' -log '{}'", bxrc.display(), rc.display(), log.display()))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Bochs: {e}"));
        Bochs { script, serial, log, started: Instant::now() }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).replace('\r', "")
    }

    /// Waits until every regex of `patterns` matches some console line;
    /// panics with the console's tail if Bochs exits or time runs out.
    fn wait_for_all(&mut self, patterns: &[&str]) -> String {
        let res: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
        loop {
            let text = self.console();
            if res.iter().all(|re| text.lines().any(|l| re.is_match(l))) {
                return text;
            }
            let exited = matches!(self.script.try_wait(), Ok(Some(_)));
            if exited || self.started.elapsed() > BOCHS_LIMIT {
                let missing: Vec<&str> = patterns.iter().zip(&res).filter(|(_, re)| !text.lines().any(|l| re.is_match(l))).map(|(p, _)| *p).collect();
                let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                let bochs_log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let panics: Vec<&str> = bochs_log.lines().filter(|l| l.contains("p[") || l.contains("PANIC")).take(5).collect();
                panic!(
                    "Bochs {} after {:.0?} without {missing:?}\nconsole tail:\n{}\nBochs panics: {panics:?}",
                    if exited { "exited" } else { "timed out" },
                    self.started.elapsed(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Bochs {
    fn drop(&mut self) {
        // bochs-bin is script's child, and may live on after a SIGTERM (and
        // after script): TERM it, then KILL it, by its id, until script,
        // which ends with its child, has ended.
        let pid = self.script.id().to_string();
        let children: Vec<String> = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &pid])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        for signal in ["-TERM", "-KILL"] {
            for child in &children {
                let _ = Command::new("kill").arg(signal).arg(child).stderr(Stdio::null()).status();
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.script.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !matches!(self.script.try_wait(), Ok(None)) {
                return;
            }
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

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
    let name = "an_alignment_check_loop_does_not_hold_the_host_cpu";
    let dir = exception_loop_beside_ticker(name, "ac", "ac_loop", "(ac) ac: 1 #AC, error code 0, at the misaligned load");
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
    exception_loop_beside_ticker("a_debug_exception_loop_does_not_hold_the_host_cpu", "db", "db_loop", "(db) db: 3 single-step traps");
}

/// Boots domain `domain` (guest `guest`, which prints `first_ok`, then
/// "<domain>: looping" and loops taking exceptions for ever) beside the
/// ticker on one Bochs CPU: the ticker must print all its ticks, most of
/// them after the loop began, at most 1 s apart, and the looping domain
/// must not crash or print FAIL. Returns the test directory.
fn exception_loop_beside_ticker(name: &str, domain: &str, guest: &str, first_ok: &str) -> std::path::PathBuf {
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, domain, guest, 16),
        pvh_config_module(&dir, "ticker", "ticker", 16),
        guest_module(guest, &dir),
        guest_module("ticker", &dir),
    ];
    let looping_line = format!("({domain}) {domain}: looping");
    let mut bochs = Bochs::start(&dir, "console=com1 console_timestamps=boot", modules);
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
