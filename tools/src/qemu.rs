//! Running Ferrite under QEMU: the command-line builder shared by `ferrite
//! up` and the integration tests, the accelerator choice, and the meaning of
//! QEMU's exit status under Ferrite's `debug_exit=` protocol.

use crate::deps;
use crate::modules::{qemu_initrd_value, ModuleSpec};
use anyhow::{bail, Result};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The I/O port of the isa-debug-exit device; Ferrite writes its verdict
/// there when booted with `debug_exit=0xf4`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// TCG's CPU model: AMD SVM with nested paging is what TCG emulates.
pub const TCG_CPU: &str = "qemu64,+svm,+npt";

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation with `-cpu qemu64,+svm,+npt`.
    Tcg,
    /// `-enable-kvm -cpu host`; needs nested virtualization on the host.
    Kvm,
}

/// How TCG runs several guest CPUs.
///
/// QEMU's multi-threaded TCG (one host thread per CPU, its default) has a
/// race that resets a nested-paging host: an FXRSTOR/XRSTOR/FRSTOR/FLDENV
/// on any CPU clears IGNNE in CPU 0's `hflags2` with an unlocked
/// read-modify-write (`cpu_clear_ignne` on `first_cpu`), which can undo
/// CPU 0's concurrent VMRUN/#VMEXIT update of its nested-paging flag.
/// Ferrite keeps FXRSTOR off its own exit path, but guests execute it
/// too, so multi-CPU runs default to one TCG thread. ARCHITECTURE.md,
/// "Two host CPUs under QEMU TCG", has the evidence and the reproducer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcgThreads {
    /// `-accel tcg,thread=single` when there is more than one CPU.
    #[default]
    Single,
    /// QEMU's default (one thread per CPU): faster, and exposed to the race.
    Multi,
}

/// What the host looks like, for [`choose_accel`] (gathered by
/// [`HostProbe::read`], built by hand in tests).
#[derive(Debug, Clone, Default)]
pub struct HostProbe {
    pub dev_kvm: bool,
    /// The `flags` words of /proc/cpuinfo contain `svm`.
    pub cpu_svm: bool,
    /// The `flags` words of /proc/cpuinfo contain `vmx`.
    pub cpu_vmx: bool,
    /// /sys/module/kvm_amd/parameters/nested, trimmed.
    pub kvm_amd_nested: Option<String>,
    /// /sys/module/kvm_intel/parameters/nested, trimmed.
    pub kvm_intel_nested: Option<String>,
}

impl HostProbe {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_flag = |flag: &str| {
            cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|w| w == flag))
        };
        let param = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        HostProbe {
            dev_kvm: Path::new("/dev/kvm").exists(),
            cpu_svm: has_flag("svm"),
            cpu_vmx: has_flag("vmx"),
            kvm_amd_nested: param("/sys/module/kvm_amd/parameters/nested"),
            kvm_intel_nested: param("/sys/module/kvm_intel/parameters/nested"),
        }
    }
}

fn enabled(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("Y" | "y" | "1"))
}

/// Picks KVM only when it can run a hypervisor inside: /dev/kvm exists, the
/// host CPU advertises SVM or VMX, and the matching KVM module has nested
/// virtualization on. Returns the choice and a one-line reason.
pub fn choose_accel(p: &HostProbe) -> (Accel, String) {
    if !p.dev_kvm {
        return (Accel::Tcg, "/dev/kvm does not exist".into());
    }
    if !p.cpu_svm && !p.cpu_vmx {
        return (Accel::Tcg, "the host CPU advertises neither svm nor vmx in /proc/cpuinfo".into());
    }
    if p.cpu_svm && enabled(&p.kvm_amd_nested) {
        return (Accel::Kvm, "/dev/kvm present, host has svm, kvm_amd nested=Y".into());
    }
    if p.cpu_vmx && enabled(&p.kvm_intel_nested) {
        return (Accel::Kvm, "/dev/kvm present, host has vmx, kvm_intel nested=Y".into());
    }
    let module = if p.cpu_svm { "kvm_amd" } else { "kvm_intel" };
    (Accel::Tcg, format!("nested virtualization is off or unknown ({module} parameter `nested` is not Y/1)"))
}

/// Where the guest's first serial port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// `-serial mon:stdio`: the terminal, multiplexed with the monitor
    /// (Ctrl-a x quits, Ctrl-a c switches to the monitor).
    MonStdio,
    /// `-serial stdio`: QEMU's stdout, e.g. a pipe read by the caller.
    Stdio,
    /// `-serial file:PATH`: appended to a file the caller polls.
    File(PathBuf),
    /// Whatever QEMU's defaults do.
    Default,
}

/// How QEMU shows its display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// `-display none` (tests).
    None,
    /// `-nographic` (interactive `ferrite up`).
    Nographic,
}

/// Builds a `qemu-system-x86_64` command line for booting Ferrite.
#[derive(Debug, Clone)]
pub struct QemuCommand {
    pub program: PathBuf,
    pub machine: String,
    pub accel: Accel,
    /// Under TCG with more than one CPU: how many host threads run them.
    pub tcg_threads: TcgThreads,
    /// `None`: [`TCG_CPU`] under TCG, `host` under KVM.
    pub cpu: Option<String>,
    pub memory_mib: u32,
    pub smp: u32,
    pub kernel: Option<PathBuf>,
    /// Kernel command-line words, joined by spaces for `-append`.
    pub append: Vec<String>,
    /// Multiboot1 modules (`-initrd "path args,..."`).
    pub modules: Vec<ModuleSpec>,
    pub cdrom: Option<PathBuf>,
    /// `-boot d` (boot the CD-ROM first).
    pub boot_cdrom: bool,
    pub serial: Serial,
    pub display: Display,
    /// `-monitor none` (when the serial is not multiplexed with it).
    pub no_monitor: bool,
    /// `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
    pub debug_exit: bool,
    pub no_reboot: bool,
    /// `-nic none`: Ferrite drives no NIC yet; don't emulate one.
    pub no_network: bool,
    pub extra: Vec<OsString>,
}

impl Default for QemuCommand {
    fn default() -> Self {
        QemuCommand {
            program: PathBuf::from(deps::QEMU.program),
            machine: "q35".into(),
            accel: Accel::Tcg,
            tcg_threads: TcgThreads::default(),
            cpu: None,
            memory_mib: 512,
            smp: 1,
            kernel: None,
            append: Vec::new(),
            modules: Vec::new(),
            cdrom: None,
            boot_cdrom: false,
            serial: Serial::Default,
            display: Display::None,
            no_monitor: false,
            debug_exit: false,
            no_reboot: true,
            no_network: true,
            extra: Vec::new(),
        }
    }
}

impl QemuCommand {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn machine(mut self, m: impl Into<String>) -> Self {
        self.machine = m.into();
        self
    }
    pub fn accel(mut self, a: Accel) -> Self {
        self.accel = a;
        self
    }
    pub fn tcg_threads(mut self, t: TcgThreads) -> Self {
        self.tcg_threads = t;
        self
    }

    pub fn cpu(mut self, c: impl Into<String>) -> Self {
        self.cpu = Some(c.into());
        self
    }
    pub fn memory_mib(mut self, m: u32) -> Self {
        self.memory_mib = m;
        self
    }
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }
    pub fn kernel(mut self, p: impl Into<PathBuf>) -> Self {
        self.kernel = Some(p.into());
        self
    }
    /// Adds words to the kernel command line (split on whitespace).
    pub fn append(mut self, words: &str) -> Self {
        self.append.extend(words.split_whitespace().map(String::from));
        self
    }
    pub fn module(mut self, m: ModuleSpec) -> Self {
        self.modules.push(m);
        self
    }
    /// Boots from this ISO (`-cdrom F -boot d`).
    pub fn cdrom(mut self, p: impl Into<PathBuf>) -> Self {
        self.cdrom = Some(p.into());
        self.boot_cdrom = true;
        self
    }
    pub fn serial(mut self, s: Serial) -> Self {
        self.serial = s;
        self
    }
    /// Serial to a file, display and monitor off: what tests want.
    pub fn serial_file(self, p: impl Into<PathBuf>) -> Self {
        let mut s = self.serial(Serial::File(p.into())).display(Display::None);
        s.no_monitor = true;
        s
    }
    pub fn display(mut self, d: Display) -> Self {
        self.display = d;
        self
    }
    pub fn debug_exit(mut self, on: bool) -> Self {
        self.debug_exit = on;
        self
    }
    pub fn no_reboot(mut self, on: bool) -> Self {
        self.no_reboot = on;
        self
    }
    pub fn extra_arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.extra.push(a.as_ref().to_os_string());
        self
    }
    pub fn extra_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.extra.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// The kernel command line passed with `-append`.
    pub fn cmdline(&self) -> String {
        self.append.join(" ")
    }

    /// The arguments (without the program), validated.
    pub fn args(&self) -> Result<Vec<OsString>> {
        if self.smp == 0 {
            bail!("--smp must be at least 1");
        }
        if self.memory_mib < 16 {
            bail!("--mem {} MiB is too small for Ferrite (use at least 64)", self.memory_mib);
        }
        if !self.modules.is_empty() && self.kernel.is_none() {
            bail!("multiboot modules (-initrd) need a kernel (-kernel)");
        }
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-machine");
        push(&self.machine);
        match self.accel {
            Accel::Kvm => push("-enable-kvm"),
            Accel::Tcg if self.smp > 1 && self.tcg_threads == TcgThreads::Single => {
                push("-accel");
                push("tcg,thread=single");
            }
            Accel::Tcg => {}
        }
        push("-cpu");
        push(self.cpu.as_deref().unwrap_or(match self.accel {
            Accel::Tcg => TCG_CPU,
            Accel::Kvm => "host",
        }));
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.smp.to_string());
        match self.display {
            Display::None => {
                push("-display");
                push("none");
            }
            Display::Nographic => push("-nographic"),
        }
        if self.no_monitor {
            push("-monitor");
            push("none");
        }
        if self.no_network {
            push("-nic");
            push("none");
        }
        if self.no_reboot {
            push("-no-reboot");
        }
        if self.debug_exit {
            push("-device");
            push(&format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"));
        }
        match &self.serial {
            Serial::MonStdio => {
                a.push("-serial".into());
                a.push("mon:stdio".into());
            }
            Serial::Stdio => {
                a.push("-serial".into());
                a.push("stdio".into());
            }
            Serial::File(p) => {
                a.push("-serial".into());
                let mut v = OsString::from("file:");
                v.push(p);
                a.push(v);
            }
            Serial::Default => {}
        }
        if let Some(k) = &self.kernel {
            a.push("-kernel".into());
            a.push(k.into());
            if !self.append.is_empty() {
                a.push("-append".into());
                a.push(self.cmdline().into());
            }
            if !self.modules.is_empty() {
                a.push("-initrd".into());
                a.push(qemu_initrd_value(&self.modules)?.into());
            }
        } else if !self.append.is_empty() {
            bail!("a kernel command line (-append) needs a kernel (-kernel); for an ISO, put it in grub.cfg");
        }
        if let Some(iso) = &self.cdrom {
            // -cdrom goes through QEMU's option parser: commas are doubled.
            let s = iso.to_str().ok_or_else(|| anyhow::anyhow!("ISO path {} is not UTF-8", iso.display()))?;
            a.push("-cdrom".into());
            a.push(s.replace(',', ",,").into());
        }
        if self.boot_cdrom {
            a.push("-boot".into());
            a.push("d".into());
        }
        a.extend(self.extra.iter().cloned());
        Ok(a)
    }

    /// The ready-to-spawn command.
    pub fn command(&self) -> Result<Command> {
        let mut c = Command::new(&self.program);
        c.args(self.args()?);
        // For profiling and debugging any QEMU the tools start, e.g.
        // `-plugin hvprof.so` (tools/profile) or `-gdb tcp::1234`.
        if let Ok(extra) = std::env::var("FERRITE_QEMU_EXTRA") {
            c.args(extra.split_whitespace());
        }
        Ok(c)
    }

    /// The command as a shell line, for logs and failure messages.
    pub fn command_line(&self) -> String {
        let mut s = shell_quote(&self.program.to_string_lossy());
        match self.args() {
            Ok(args) => {
                for a in args {
                    s.push(' ');
                    s.push_str(&shell_quote(&a.to_string_lossy()));
                }
            }
            Err(e) => s.push_str(&format!(" <invalid: {e}>")),
        }
        s
    }
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(w: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !w.is_empty() && w.chars().all(safe) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// What QEMU's exit status says about a Ferrite run booted with
/// `debug_exit=0xf4` and `-device isa-debug-exit,iobase=0xf4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Ferrite wrote 0: status (0 << 1) | 1 = 1.
    Success,
    /// Ferrite wrote 1: status (1 << 1) | 1 = 3.
    Failure,
    /// Status 0: with -no-reboot, the machine reset (e.g. a triple fault),
    /// or QEMU was quit from its monitor.
    Reset,
    /// Any other status. Note that QEMU also exits with 1 when it cannot
    /// start at all (bad option, missing file), which reads as `Success`:
    /// callers should also check that Ferrite printed something.
    Other(i32),
    /// Killed by a signal (e.g. our timeout).
    Signaled,
}

impl RunOutcome {
    pub fn from_status(status: ExitStatus) -> Self {
        match status.code() {
            Some(1) => RunOutcome::Success,
            Some(3) => RunOutcome::Failure,
            Some(0) => RunOutcome::Reset,
            Some(c) => RunOutcome::Other(c),
            None => RunOutcome::Signaled,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RunOutcome::Success => "Ferrite reported success (QEMU exit status 1)".into(),
            RunOutcome::Failure => "Ferrite reported failure (QEMU exit status 3)".into(),
            RunOutcome::Reset => "hypervisor reset (QEMU exit status 0: triple fault or reset with -no-reboot)".into(),
            RunOutcome::Other(c) => format!("QEMU exited with unexpected status {c}"),
            RunOutcome::Signaled => "QEMU was killed by a signal".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(c: &QemuCommand) -> Vec<String> {
        c.args().unwrap().into_iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn multi_cpu_tcg_is_single_threaded_unless_asked() {
        let one = QemuCommand::new().smp(1);
        assert!(!strs(&one).iter().any(|a| a == "-accel"));
        let multi = QemuCommand::new().smp(2).tcg_threads(TcgThreads::Multi);
        assert!(!strs(&multi).iter().any(|a| a == "-accel"));
        let kvm = QemuCommand::new().smp(2).accel(Accel::Kvm);
        assert!(!strs(&kvm).iter().any(|a| a.starts_with("tcg")));
    }

    #[test]
    fn test_style_command() {
        let c = QemuCommand::new()
            .smp(2)
            .kernel("/img/ferrite-hv.pvh")
            .append("console=com1 debug_exit=0xf4")
            .serial_file("/tmp/t/console.log")
            .debug_exit(true);
        assert_eq!(
            strs(&c),
            [
                "-machine",
                "q35",
                "-accel",
                "tcg,thread=single",
                "-cpu",
                "qemu64,+svm,+npt",
                "-m",
                "512",
                "-smp",
                "2",
                "-display",
                "none",
                "-monitor",
                "none",
                "-nic",
                "none",
                "-no-reboot",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-serial",
                "file:/tmp/t/console.log",
                "-kernel",
                "/img/ferrite-hv.pvh",
                "-append",
                "console=com1 debug_exit=0xf4",
            ]
        );
        assert_eq!(c.command().unwrap().get_program(), "qemu-system-x86_64");
    }

    #[test]
    fn up_style_command_with_modules_and_kvm() {
        let c = QemuCommand::new()
            .accel(Accel::Kvm)
            .memory_mib(1024)
            .kernel("/k")
            .append("console=com1  dom0_mem=256M ")
            .module(ModuleSpec::new("/m/a", "arg1=one"))
            .module(ModuleSpec::new("/m/b", "arg2=two"))
            .serial(Serial::MonStdio)
            .display(Display::Nographic)
            .extra_args(["-s", "-S"]);
        let a = strs(&c);
        assert_eq!(&a[..6], ["-machine", "q35", "-enable-kvm", "-cpu", "host", "-m"]);
        assert!(a.contains(&"-nographic".to_string()));
        let w = a.windows(2);
        let pairs: Vec<_> = w.map(|p| (p[0].clone(), p[1].clone())).collect();
        assert!(pairs.contains(&("-serial".into(), "mon:stdio".into())));
        assert!(pairs.contains(&("-append".into(), "console=com1 dom0_mem=256M".into())));
        assert!(pairs.contains(&("-initrd".into(), "/m/a arg1=one,/m/b arg2=two".into())));
        assert_eq!(&a[a.len() - 2..], ["-s", "-S"]);
        assert!(!a.contains(&"-device".to_string()));
    }

    #[test]
    fn cdrom_boot_and_comma_escaping() {
        let c = QemuCommand::new().cdrom("/t/a,b.iso").serial_file("/t/c");
        let a = strs(&c);
        let i = a.iter().position(|x| x == "-cdrom").unwrap();
        assert_eq!(a[i + 1], "/t/a,,b.iso");
        assert_eq!(&a[i + 2..i + 4], ["-boot", "d"]);
        assert!(!a.contains(&"-kernel".to_string()));
    }

    #[test]
    fn invalid_combinations_are_errors() {
        assert!(QemuCommand::new().smp(0).args().is_err());
        assert!(QemuCommand::new().append("x=1").args().is_err());
        assert!(QemuCommand::new().module(ModuleSpec::new("/a", "")).args().is_err());
        assert!(QemuCommand::new().kernel("/k").module(ModuleSpec::new("/a,b", "")).args().is_err());
    }

    #[test]
    fn command_line_is_shell_quoted() {
        let c = QemuCommand::new().kernel("/k").append("a=1 b=2");
        let line = c.command_line();
        assert!(line.starts_with("qemu-system-x86_64 -machine q35"), "{line}");
        assert!(line.ends_with("-kernel /k -append 'a=1 b=2'"), "{line}");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn accel_choice() {
        let mut p = HostProbe::default();
        assert_eq!(choose_accel(&p).0, Accel::Tcg);
        p.dev_kvm = true;
        let (a, why) = choose_accel(&p);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("neither svm nor vmx"), "{why}");
        p.cpu_svm = true;
        let (a, why) = choose_accel(&p);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("kvm_amd"), "{why}");
        p.kvm_amd_nested = Some("0".into());
        assert_eq!(choose_accel(&p).0, Accel::Tcg);
        p.kvm_amd_nested = Some("1".into());
        assert_eq!(choose_accel(&p).0, Accel::Kvm);
        let intel =
            HostProbe { dev_kvm: true, cpu_vmx: true, kvm_intel_nested: Some("Y".into()), ..Default::default() };
        assert_eq!(choose_accel(&intel).0, Accel::Kvm);
        let no_dev = HostProbe { dev_kvm: false, ..intel };
        assert_eq!(choose_accel(&no_dev).0, Accel::Tcg);
    }

    #[test]
    fn exit_status_meaning() {
        use std::os::unix::process::ExitStatusExt;
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(RunOutcome::from_status(st(1)), RunOutcome::Success);
        assert_eq!(RunOutcome::from_status(st(3)), RunOutcome::Failure);
        assert_eq!(RunOutcome::from_status(st(0)), RunOutcome::Reset);
        assert_eq!(RunOutcome::from_status(st(2)), RunOutcome::Other(2));
        assert_eq!(RunOutcome::from_status(ExitStatus::from_raw(9)), RunOutcome::Signaled);
        assert!(RunOutcome::Reset.describe().contains("hypervisor reset"));
    }
}
