//! `ferrite stress`: boot the busiest configuration many times and count.
//!
//! One boot is Debian's Linux as a multi-vCPU PVH dom0 (it runs the test
//! init's parallel workload and powers off) with two HVM guests beside it
//! (SeaBIOS boots a boot sector from an emulated IDE disk that reads 256
//! sectors back and powers off), on a two-CPU QEMU. A boot passes when all
//! three reported success and Ferrite said `no domains left running`.
//! Every failure is shown with the console's tail and, for a host reset,
//! each CPU's state from the QEMU monitor (QEMU runs with `-no-shutdown`,
//! so a triple fault pauses it instead of exiting).
//!
//! `--bochs` boots dom0 alone (Bochs has no virtio disks for the HVM
//! guests) from a GRUB ISO in Bochs' AMD SVM model with two CPUs.

use crate::build::{self, HypervisorImages, Profile};
use crate::modules::ModuleSpec;
use crate::qemu::{QemuCommand, TcgThreads};
use crate::{guest_images, guestasm, initramfs, iso};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite stress [--boots N] [--jobs J] [--vcpus V] [--mttcg] [--timeout SECS] [--bochs [--vmx]]
        Build, then boot Debian's Linux as a PVH dom0 with V vCPUs (default 4)
        plus two HVM guests (SeaBIOS + stub domain + IDE disk) on a two-CPU
        QEMU, N times (default 20), J at a time (default 1; more boots at once
        load the machine harder). Prints each result, the console tail and,
        for a host reset, every CPU's state; ends with the pass count. QEMU
        runs its CPUs on one thread unless --mttcg is given (see
        ARCHITECTURE.md, \"Two host CPUs under QEMU TCG\"). --bochs boots dom0
        alone from a GRUB ISO in Bochs' SVM model (2 CPUs; about 100 s a boot),
        or with --vmx in its Intel VMX model.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StressArgs {
    pub boots: u32,
    pub jobs: u32,
    pub vcpus: u32,
    pub threads: TcgThreads,
    pub timeout: Duration,
    pub bochs: bool,
    /// With `bochs`: Bochs' Intel VMX model instead of its AMD SVM one.
    pub vmx: bool,
}

impl Default for StressArgs {
    fn default() -> Self {
        StressArgs { boots: 20, jobs: 1, vcpus: 4, threads: TcgThreads::Single, timeout: Duration::from_secs(300), bochs: false, vmx: false }
    }
}

pub fn parse_args(args: &[String]) -> Result<StressArgs> {
    let mut s = StressArgs::default();
    let mut it = args.iter();
    let number = |flag: &str, v: Option<&String>| -> Result<u32> {
        let v = v.with_context(|| format!("{flag} needs a number"))?;
        v.parse::<u32>().ok().filter(|&n| n > 0).with_context(|| format!("{flag} {v:?}: expected a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--boots" => s.boots = number("--boots", it.next())?,
            "--jobs" => s.jobs = number("--jobs", it.next())?,
            "--vcpus" => s.vcpus = number("--vcpus", it.next())?,
            "--timeout" => s.timeout = Duration::from_secs(number("--timeout", it.next())?.into()),
            "--mttcg" => s.threads = TcgThreads::Multi,
            "--bochs" => s.bochs = true,
            "--vmx" => s.vmx = true,
            other => bail!("unknown option {other:?} for `ferrite stress` (see `ferrite help`)"),
        }
    }
    if s.vmx && !s.bochs {
        bail!("--vmx needs --bochs (QEMU's TCG emulates only SVM)");
    }
    if s.vcpus > 64 {
        bail!("--vcpus {}: at most 64", s.vcpus);
    }
    Ok(s)
}

/// How one boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// The host reset (a triple fault in the hypervisor).
    HostReset,
    /// Ferrite reported a domain crash; the line says which.
    GuestCrash(String),
    /// Not everything finished in time.
    Timeout,
    /// QEMU or Ferrite ended without everything done.
    Incomplete(String),
}

/// What a passing boot prints.
const EXPECTED: [&str; 4] =
    ["(dom0) FERRITE-WORKLOAD ok", "(hvm1) mbr: ok", "(hvm2) mbr: ok", "(ferrite) no domains left running"];

/// Judges a finished boot from its console text (pure; unit-tested).
pub fn judge(console: &str, reset: bool, timed_out: bool, expect_hvm: bool) -> Verdict {
    if reset {
        return Verdict::HostReset;
    }
    if let Some(line) = console.lines().find(|l| l.contains(") crashed:") || l.contains("Kernel panic")) {
        return Verdict::GuestCrash(line.trim().to_string());
    }
    let missing: Vec<&str> =
        EXPECTED.iter().copied().filter(|e| (expect_hvm || !e.starts_with("(hvm")) && !console.contains(e)).collect();
    if missing.is_empty() {
        Verdict::Passed
    } else if timed_out {
        Verdict::Timeout
    } else {
        Verdict::Incomplete(format!("missing {}", missing.join(", ")))
    }
}

/// Files one boot needs, made once.
struct Scenario {
    dir: PathBuf,
    images: HypervisorImages,
    vmlinux: PathBuf,
    initramfs: PathBuf,
    mbr: Vec<u8>,
    bios: PathBuf,
}

fn prepare(dir: &Path) -> Result<Scenario> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let images = build::build_hypervisor(Profile::Release)?;
    for pkg in ["linux-image-cloud-amd64", "busybox-static"] {
        guest_images::fetch_debian_package(pkg).map_err(anyhow::Error::msg)?;
    }
    let vmlinux = guest_images::debian_vmlinux("cloud-amd64").map_err(anyhow::Error::msg)?;
    let initramfs_path = dir.join("initramfs.cpio");
    let image = initramfs::busybox_initramfs(initramfs::TEST_INIT_SCRIPT).map_err(anyhow::Error::msg)?;
    std::fs::write(&initramfs_path, image).with_context(|| format!("cannot write {}", initramfs_path.display()))?;
    let mbr = guestasm::assemble_boot_sector(&guestasm::guests_dir().join("bootsector/mbr_disk_check.S"), &dir.join("mbr.bin"))?;
    let bios = guestasm::seabios_image().context("SeaBIOS is not installed: apt-get install seabios")?;
    Ok(Scenario { dir: dir.to_path_buf(), images, vmlinux, initramfs: initramfs_path, mbr, bios })
}

/// The QEMU command for boot `n`, with its own disks and monitor socket.
fn qemu_for(sc: &Scenario, args: &StressArgs, n: u32) -> Result<(QemuCommand, PathBuf, PathBuf)> {
    let run = sc.dir.join(format!("boot-{n}"));
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("cannot clear {}", run.display()))?;
    }
    std::fs::create_dir_all(&run).with_context(|| format!("cannot create {}", run.display()))?;
    let console = run.join("console.log");
    let monitor = run.join("monitor.sock");
    let mut q = QemuCommand::new()
        .smp(2)
        .memory_mib(2048)
        .tcg_threads(args.threads)
        .debug_exit(true)
        .serial_file(&console)
        .kernel(&sc.images.multiboot)
        .append(&format!("console=com1 debug_exit=0xf4 dom0_mem=512M dom0_max_vcpus={}", args.vcpus))
        .module(ModuleSpec::new(&sc.vmlinux, initramfs::test_linux_cmdline("poweroff")))
        .module(ModuleSpec::new(&sc.initramfs, ""));
    for name in ["hvm1", "hvm2"] {
        let disk = run.join(format!("{name}.img"));
        std::fs::write(&disk, guestasm::mbr_test_disk(&sc.mbr, 2048)).with_context(|| format!("cannot write {}", disk.display()))?;
        let cfg = run.join(format!("{name}.cfg"));
        let text = format!(
            "name = \"{name}\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\ndisk = [ 'phy:{name},hda,w' ]\non_crash = \"destroy\"\n"
        );
        std::fs::write(&cfg, text).with_context(|| format!("cannot write {}", cfg.display()))?;
        q = q.module(ModuleSpec::new(cfg, "")).extra_args([
            "-drive".to_string(),
            format!("file={},if=none,id={name},format=raw", disk.display().to_string().replace(',', ",,")),
            "-device".to_string(),
            format!("virtio-blk-pci,drive={name},serial={name}"),
        ]);
    }
    q = q.module(ModuleSpec::new(&sc.images.stubdom, "")).module(ModuleSpec::new(&sc.bios, ""));
    // No `-monitor none`: the monitor goes to a socket, and a reset pauses.
    q.no_monitor = false;
    q = q.extra_args(["-no-shutdown".to_string(), "-monitor".to_string(), format!("unix:{},server,nowait", monitor.display())]);
    Ok((q, console, monitor))
}

/// Sends monitor commands and returns what came back.
fn monitor(sock: &Path, commands: &[&str]) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    for c in commands {
        s.write_all(format!("{c}\n").as_bytes()).ok()?;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) if !out.is_empty() => break,
                Err(_) => {}
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The lines of `info registers -a` that say where each CPU was.
fn cpu_digest(regs: &str) -> String {
    regs.lines()
        .filter(|l| ["CPU#", "RIP=", "CR0=", "TR ", "GS ", "IDT=", "EFER="].iter().any(|k| l.starts_with(k)))
        .map(|l| format!("    {}", l.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Running {
    n: u32,
    child: Child,
    console: PathBuf,
    monitor: PathBuf,
    started: Instant,
}

fn start(sc: &Scenario, args: &StressArgs, n: u32) -> Result<Running> {
    let (q, console, mon) = qemu_for(sc, args, n)?;
    let child = q.command()?.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("cannot start QEMU")?;
    Ok(Running { n, child, console, monitor: mon, started: Instant::now() })
}

/// Polls a boot; `Some` once it is over (QEMU is then stopped).
fn poll(r: &mut Running, timeout: Duration) -> Option<(Verdict, String)> {
    let console = std::fs::read_to_string(&r.console).unwrap_or_default();
    let exited = matches!(r.child.try_wait(), Ok(Some(_)));
    let done = console.contains("no domains left running");
    let timed_out = r.started.elapsed() > timeout;
    // With -no-shutdown a reset leaves QEMU paused: ask it.
    let status = if exited || done { String::new() } else { monitor(&r.monitor, &["info status"]).unwrap_or_default() };
    let reset = status.contains("shutdown") || status.contains("internal-error");
    if !(exited || done || reset || timed_out) {
        return None;
    }
    let mut detail = String::new();
    if reset {
        detail = cpu_digest(&monitor(&r.monitor, &["info registers -a"]).unwrap_or_default());
    }
    if !exited {
        let _ = r.child.kill();
    }
    let _ = r.child.wait();
    let console = std::fs::read_to_string(&r.console).unwrap_or_default();
    Some((judge(&console, reset, timed_out && !done, true), detail))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

pub fn main(args: &StressArgs) -> Result<bool> {
    if args.bochs {
        return bochs(args);
    }
    // One directory per threading mode, so both can run side by side.
    let dir = build::workspace_root().join("target").join(match args.threads {
        TcgThreads::Single => "stress",
        TcgThreads::Multi => "stress-mttcg",
    });
    let sc = prepare(&dir)?;
    eprintln!(
        "stress: {} boots, {} at a time: Linux dom0 with {} vCPUs + 2 HVM guests on 2 host CPUs ({})",
        args.boots,
        args.jobs,
        args.vcpus,
        match args.threads {
            TcgThreads::Single => "QEMU single-threaded TCG",
            TcgThreads::Multi => "QEMU multi-threaded TCG",
        }
    );
    let mut next = 1;
    let mut running: Vec<Running> = Vec::new();
    let mut passed = 0;
    let mut failures: Vec<(u32, Verdict)> = Vec::new();
    while next <= args.boots || !running.is_empty() {
        while running.len() < args.jobs as usize && next <= args.boots {
            running.push(start(&sc, args, next)?);
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut i = 0;
        while i < running.len() {
            if let Some((verdict, detail)) = poll(&mut running[i], args.timeout) {
                let r = running.swap_remove(i);
                let secs = r.started.elapsed().as_secs();
                if verdict == Verdict::Passed {
                    passed += 1;
                    println!("boot {:>3}: ok ({secs} s)", r.n);
                } else {
                    println!("boot {:>3}: FAILED ({secs} s): {verdict:?}\n  console tail ({}):\n{}", r.n, r.console.display(), tail(&r.console, 12));
                    if !detail.is_empty() {
                        println!("  CPU state at the reset (QEMU monitor):\n{detail}");
                    }
                    failures.push((r.n, verdict));
                }
            } else {
                i += 1;
            }
        }
    }
    let count = |f: fn(&Verdict) -> bool| failures.iter().filter(|(_, v)| f(v)).count();
    println!(
        "stress: {passed}/{} boots passed (host resets {}, guest crashes {}, timeouts {}, incomplete {})",
        args.boots,
        count(|v| matches!(v, Verdict::HostReset)),
        count(|v| matches!(v, Verdict::GuestCrash(_))),
        count(|v| matches!(v, Verdict::Timeout)),
        count(|v| matches!(v, Verdict::Incomplete(_)))
    );
    Ok(failures.is_empty())
}

/// The Bochs machine: Bochs' AMD SVM model (or, with `vmx`, its Intel VMX
/// one) with two CPUs, GRUB ISO on the CD, COM1 to a file, a triple fault
/// stops Bochs with a register dump.
fn bochs_config(iso: &Path, serial: &Path, vmx: bool) -> String {
    format!(
        "megs: 1024\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         cpu: model={}, count=2, ips=100000000, reset_on_triple_fault=0\n\
         display_library: term\n\
         boot: cdrom\n\
         ata0-slave: type=cdrom, path={}, status=inserted\n\
         com1: enabled=1, mode=file, dev={}\n\
         panic: action=fatal\nerror: action=report\ninfo: action=report\ndebug: action=ignore\n\
         clock: sync=none, time0=local\n",
        if vmx { "corei7_skylake_x" } else { "ryzen" },
        iso.display(),
        serial.display()
    )
}

fn bochs(args: &StressArgs) -> Result<bool> {
    for prog in ["bochs-bin", "script"] {
        if Command::new("sh").arg("-c").arg(format!("command -v {prog}")).stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
            bail!("{prog} not found: apt-get install bochs bochsbios vgabios bochs-term bsdutils");
        }
    }
    let dir = build::workspace_root().join("target").join("stress-bochs");
    let sc = prepare(&dir)?;
    let iso_path = dir.join("ferrite.iso");
    let spec = iso::IsoSpec {
        hypervisor: sc.images.multiboot.clone(),
        cmdline: format!("console=com1 com1=115200,8n1 dom0_mem=256M dom0_max_vcpus={}", args.vcpus),
        modules: vec![ModuleSpec::new(&sc.vmlinux, initramfs::test_linux_cmdline("poweroff")), ModuleSpec::new(&sc.initramfs, "")],
    };
    iso::build_iso(&spec, &iso_path, &dir.join("iso-staging"))?;
    let mut passed = 0;
    for n in 1..=args.boots {
        let serial = dir.join(format!("serial-{n}.log"));
        let _ = std::fs::remove_file(&serial);
        let bxrc = dir.join("ferrite.bxrc");
        std::fs::write(&bxrc, bochs_config(&iso_path, &serial, args.vmx))?;
        let rc = dir.join("continue.rc");
        std::fs::write(&rc, "c\nquit\n")?;
        let log = dir.join(format!("bochs-{n}.log"));
        let started = Instant::now();
        let mut child = Command::new("script")
            .arg("-qec")
            .arg(format!("exec bochs-bin -q -f '{}' -rc '{}' -log '{}'", bxrc.display(), rc.display(), log.display()))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start Bochs")?;
        let verdict = loop {
            std::thread::sleep(Duration::from_secs(1));
            let console = std::fs::read_to_string(&serial).unwrap_or_default();
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let done = console.contains("no domains left running");
            let timed_out = started.elapsed() > args.timeout;
            if exited || done || timed_out {
                let bochs_log = std::fs::read_to_string(&log).unwrap_or_default();
                let reset = bochs_log.contains("3rd (") || bochs_log.contains("triple fault");
                break judge(&console, reset, timed_out && !done, false);
            }
        };
        // script(1) runs bochs-bin as its child: stop both.
        let _ = Command::new("pkill").arg("-P").arg(child.id().to_string()).status();
        let _ = child.kill();
        let _ = child.wait();
        let secs = started.elapsed().as_secs();
        if verdict == Verdict::Passed {
            passed += 1;
            println!("bochs boot {n:>3}: ok ({secs} s)");
        } else {
            println!("bochs boot {n:>3}: FAILED ({secs} s): {verdict:?}\n  console tail:\n{}", tail(&serial, 12));
        }
    }
    println!("stress (bochs {}, 2 CPUs): {passed}/{} boots passed", if args.vmx { "vmx" } else { "svm" }, args.boots);
    Ok(passed == args.boots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "(dom0) FERRITE-WORKLOAD ok 1\n(hvm1) mbr: ok sectors=00000100 sum=1\n\
                        (hvm2) mbr: ok sectors=00000100 sum=1\n(ferrite) no domains left running\n";

    #[test]
    fn verdicts() {
        assert_eq!(judge(GOOD, false, false, true), Verdict::Passed);
        assert_eq!(judge(GOOD, true, false, true), Verdict::HostReset);
        let crash = format!("{GOOD}(ferrite) ERROR: domain 0 (dom0) crashed: vcpu 1: triple fault\n");
        assert!(matches!(judge(&crash, false, false, true), Verdict::GuestCrash(l) if l.contains("vcpu 1")));
        assert_eq!(judge("(dom0) FERRITE-WORKLOAD ok 1\n", false, true, true), Verdict::Timeout);
        assert!(matches!(judge("(dom0) FERRITE-WORKLOAD ok 1\n", false, false, true), Verdict::Incomplete(m) if m.contains("hvm1")));
        let dom0_only = "(dom0) FERRITE-WORKLOAD ok 1\n(ferrite) no domains left running\n";
        assert_eq!(judge(dom0_only, false, false, false), Verdict::Passed);
    }

    #[test]
    fn arguments() {
        let a = parse_args(&["--boots".into(), "100".into(), "--jobs".into(), "2".into(), "--mttcg".into()]).unwrap();
        assert_eq!((a.boots, a.jobs, a.threads), (100, 2, TcgThreads::Multi));
        assert!(parse_args(&["--boots".into(), "0".into()]).is_err());
        assert!(parse_args(&["--frobnicate".into()]).is_err());
        assert_eq!(parse_args(&[]).unwrap(), StressArgs::default());
    }

    #[test]
    fn digest_keeps_where_each_cpu_was() {
        let regs = "CPU#0\nRAX=1 RBX=2\nRIP=000000000022b5b5 RFL=00000246\nCR0=80010013 CR2=0000000000287100\nXMM00=0\nCPU#1\nRIP=1\n";
        assert_eq!(cpu_digest(regs), "    CPU#0\n    RIP=000000000022b5b5 RFL=00000246\n    CR0=80010013 CR2=0000000000287100\n    CPU#1\n    RIP=1");
    }
}
