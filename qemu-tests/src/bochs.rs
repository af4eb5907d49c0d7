//! Booting Ferrite under Bochs (Debian's `bochs` 2.7), the second x86
//! emulator: Intel VMX with EPT, VPID and unrestricted guest
//! (`corei7_skylake_x`), or AMD SVM with nested paging (`ryzen`).
//! Ferrite boots from a GRUB ISO with its COM1 in a file; Bochs has no
//! isa-debug-exit, so verdicts come from the console
//! (`/work/shared/bochs/NOTES.md` has the pitfalls). Bochs counts time in
//! instructions (`ips`, `clock: sync=none`), so a guest's pace does not
//! depend on the host's load.

use crate::ferrite_tools::iso;
use crate::ferrite_tools::modules::ModuleSpec;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The emulated machine.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    /// Bochs' CPU model: `ryzen` (SVM), `corei7_skylake_x` (VMX) or
    /// `corei5_lynnfield_750` (VMX without unrestricted guest).
    pub model: &'static str,
    pub cpus: u32,
    pub megs: u32,
}

impl Machine {
    /// AMD SVM with nested paging.
    pub fn svm(cpus: u32) -> Machine {
        Machine { model: "ryzen", cpus, megs: 256 }
    }

    /// Intel VMX with EPT, VPID and unrestricted guest.
    pub fn vmx(cpus: u32) -> Machine {
        Machine { model: "corei7_skylake_x", cpus, megs: 256 }
    }

    /// Intel VMX with EPT and VPID but no unrestricted guest (Bochs'
    /// Nehalem, `corei5_lynnfield_750`: like the first CPUs with EPT).
    pub fn vmx_without_unrestricted_guest(cpus: u32) -> Machine {
        Machine { model: "corei5_lynnfield_750", cpus, megs: 256 }
    }
}

/// How long a Bochs run may take (Ferrite boots in about 5 s of it).
pub const BOCHS_LIMIT: Duration = Duration::from_secs(300);

/// A running Bochs (inside script(1), which gives its `term` display a
/// tty), stopped by its process ids when dropped.
pub struct Bochs {
    script: Child,
    /// How long `wait_for_all` waits (`BOCHS_LIMIT` unless changed).
    pub limit: Duration,
    serial: std::path::PathBuf,
    log: std::path::PathBuf,
    pub started: Instant,
}

impl Bochs {
    /// Builds a GRUB ISO of Ferrite (`cmdline`) and `modules` and boots it
    /// on `machine`. Each module's string becomes its file name: GRUB's
    /// module2 hands over only the arguments, while Ferrite names a module
    /// by its string's first word.
    pub fn start(dir: &Path, cmdline: &str, modules: Vec<ModuleSpec>, machine: Machine) -> Bochs {
        let modules = modules
            .into_iter()
            .map(|m| {
                let name = m.file_name().unwrap_or_else(|e| panic!("{e:#}"));
                ModuleSpec::new(m.path, name)
            })
            .collect();
        Bochs::start_with_module_strings(dir, cmdline, modules, machine)
    }

    /// As `start`, with each module's string passed as it is (module 0,
    /// dom0's kernel, takes its command line there).
    pub fn start_with_module_strings(dir: &Path, cmdline: &str, modules: Vec<ModuleSpec>, machine: Machine) -> Bochs {
        for prog in ["bochs-bin", "script"] {
            if crate::ferrite_tools::deps::find_program(prog).is_none() {
                panic!("{prog} not found: apt-get install bochs bochsbios vgabios bochs-term bsdutils");
            }
        }
        let iso_path = dir.join("ferrite.iso");
        let spec = iso::IsoSpec { hypervisor: crate::images().multiboot.clone(), cmdline: cmdline.to_string(), modules };
        if let Err(e) = iso::build_iso(&spec, &iso_path, &dir.join("iso-staging")) {
            panic!("cannot build the ISO: {e:#}");
        }
        let serial = dir.join("serial.log");
        let log = dir.join("bochs.log");
        let bxrc = dir.join("ferrite.bxrc");
        let config = format!(
            "megs: {}\n\
             romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
             vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
             cpu: model={}, count={}, ips=100000000, reset_on_triple_fault=0\n\
             display_library: term\n\
             boot: cdrom\n\
             ata0-slave: type=cdrom, path={}, status=inserted\n\
             com1: enabled=1, mode=file, dev={}\n\
             panic: action=fatal\nerror: action=report\ninfo: action=report\ndebug: action=ignore\n\
             clock: sync=none, time0=local\n",
            machine.megs,
            machine.model,
            machine.cpus,
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
        Bochs { script, limit: BOCHS_LIMIT, serial, log, started: Instant::now() }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).replace('\r', "")
    }

    /// Waits until every regex of `patterns` matches some console line;
    /// panics with the console's tail if Bochs exits or time runs out.
    pub fn wait_for_all(&mut self, patterns: &[&str]) -> String {
        let res: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
        loop {
            let text = self.console();
            if res.iter().all(|re| text.lines().any(|l| re.is_match(l))) {
                return text;
            }
            let exited = matches!(self.script.try_wait(), Ok(Some(_)));
            if exited || self.started.elapsed() > self.limit {
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

