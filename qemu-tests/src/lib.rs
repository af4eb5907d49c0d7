//! The QEMU test harness: boots Ferrite (or any small kernel) under QEMU,
//! captures its serial console to a file, waits for lines on it, and reads
//! Ferrite's verdict from QEMU's exit status.
//!
//! * The hypervisor image is built once per test process ([`images`]):
//!   concurrent test threads block on the same build instead of racing.
//! * Every VM has a wall-clock deadline (default [`DEFAULT_TIMEOUT`], or
//!   `FERRITE_QEMU_TIMEOUT_SECS`); QEMU is killed when it passes and when the
//!   [`Vm`] is dropped, so a hung guest never outlives its test.
//! * A failing check panics with the QEMU command line, QEMU's stderr and the
//!   last [`TAIL_LINES`] console lines: enough to debug from a CI log.
//! * Artifacts (console log, stderr, modules, ISO) stay in
//!   `target/qemu-tests/<test name>/` after the run, for inspection.
//!
//! Exit protocol: Ferrite booted with `debug_exit=0xf4` writes 0 (success)
//! or 1 (failure) to QEMU's isa-debug-exit device, which exits with
//! `(value << 1) | 1`: 1 or 3. With `-no-reboot`, a triple fault exits 0.

use ferrite_tools::build::{self, HypervisorImages, Profile};
use ferrite_tools::modules::ModuleSpec;
use ferrite_tools::qemu::{QemuCommand, RunOutcome};
use regex::Regex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use ferrite_tools;
pub use regex;

pub mod bochs;

/// Per-VM wall-clock limit: TCG on a busy 2-core machine is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Console lines quoted in a failure message.
pub const TAIL_LINES: usize = 60;

/// What every Ferrite test boot passes on its command line.
pub const BASE_CMDLINE: &str = "console=com1 debug_exit=0xf4";

/// The VM deadline: `FERRITE_QEMU_TIMEOUT_SECS` when set, else
/// [`DEFAULT_TIMEOUT`].
pub fn vm_timeout() -> Duration {
    std::env::var("FERRITE_QEMU_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// The hypervisor images, built (release profile) on first use in this
/// process. Panics with the build error in every test that needs them.
pub fn images() -> &'static HypervisorImages {
    static IMAGES: OnceLock<Result<HypervisorImages, String>> = OnceLock::new();
    let built = IMAGES.get_or_init(|| build::build_hypervisor(Profile::Release).map_err(|e| format!("{e:#}")));
    match built {
        Ok(images) => images,
        Err(e) => panic!("cannot build the hypervisor image, so no QEMU test can run:\n{e}"),
    }
}

/// The `ferrite` command itself (built once), for what runs it as a
/// separate process: `xl create`'s background NBD servers find it through
/// `FERRITE_EXE`, which this sets.
pub fn ferrite_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let root = build::workspace_root();
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "ferrite-tools", "--bin", "ferrite"])
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build the ferrite command: {e}"));
        assert!(status.success(), "building the ferrite command failed");
        let exe = root.join("target").join("release").join("ferrite");
        std::env::set_var("FERRITE_EXE", &exe);
        exe
    })
}

/// The `ferrite` command linked statically (glibc, `+crt-static`), built
/// once into `target/static`: it runs inside a guest's busybox initramfs.
pub fn ferrite_static_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| build::build_static_ferrite().unwrap_or_else(|e| panic!("{e:#}")))
}

/// Modules of Debian's kernel package at `root` that are not built in,
/// with what they depend on (`initramfs::debian_kernel_modules`).
pub fn debian_modules(test: &str, root: &Path, wanted: &[&str]) -> Vec<(String, Vec<u8>)> {
    ferrite_tools::initramfs::debian_kernel_modules(root, wanted).unwrap_or_else(|e| panic!("[{test}] {e}"))
}

/// Debian's cloud kernel (its bzImage, entered through the 64-bit boot
/// protocol: a sixth of the ELF's size, which `xl create` uploads) and an
/// initramfs with `virtio_mmio`, `virtio_blk` and `ext4` running
/// [`ferrite_tools::initramfs::PVH_DISK_INIT_SCRIPT`], written into `dir`
/// as `vmlinux` and `initramfs-vdisk.cpio`; None (after saying why) when
/// the packages cannot be had.
pub fn pvh_disk_guest(test: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    use ferrite_tools::{guest_images, initramfs};
    if !debian_packages(test, &["linux-image-cloud-amd64", "busybox-static"]) {
        return None;
    }
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinux = guest_images::find_vmlinuz(&root).unwrap_or_else(|e| panic!("[{test}] {e}"));
    let modules = debian_modules(test, &root, &["virtio_mmio", "virtio_blk", "ext4"]);
    let image = initramfs::busybox_initramfs_with_modules(initramfs::PVH_DISK_INIT_SCRIPT, &modules)
        .unwrap_or_else(|e| panic!("[{test}] cannot build the initramfs: {e}"));
    let kernel = dir.join("vmlinux");
    std::fs::copy(&vmlinux, &kernel).unwrap_or_else(|e| panic!("[{test}] cannot copy the kernel: {e}"));
    let initrd = dir.join("initramfs-vdisk.cpio");
    std::fs::write(&initrd, image).unwrap_or_else(|e| panic!("[{test}] cannot write {}: {e}", initrd.display()));
    Some((kernel, initrd))
}

/// A fresh, empty artifact directory `target/qemu-tests/<name>`.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = build::workspace_root().join("target").join("qemu-tests").join(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            panic!("cannot clear the test directory {}: {e}", dir.display());
        }
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create the test directory {}: {e}", dir.display());
    }
    dir
}

/// QEMU as the scenarios run it: q35, `qemu64,+svm,+npt` under TCG, 512 MiB,
/// one CPU, isa-debug-exit, `-no-reboot`, no display or network.
pub fn base_qemu() -> QemuCommand {
    QemuCommand::new().machine("q35").cpu(ferrite_tools::qemu::TCG_CPU).memory_mib(512).smp(1).debug_exit(true)
}

/// Why a wait ended without a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The wait's own timeout passed (QEMU keeps running).
    Timeout(Duration),
    /// The VM deadline passed; QEMU was killed.
    Deadline(Duration),
    /// QEMU exited first.
    Exited(RunOutcome),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Timeout(d) => write!(f, "not seen within {:.0?}", d),
            WaitError::Deadline(d) => write!(f, "VM deadline of {:.0?} passed; QEMU killed", d),
            WaitError::Exited(o) => write!(f, "QEMU exited first: {}", o.describe()),
        }
    }
}

/// A running (or finished) QEMU with its console captured to a file.
pub struct Vm {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    console: PathBuf,
    stderr: PathBuf,
    command_line: String,
    started: Instant,
    limit: Duration,
    status: Option<ExitStatus>,
    killed_at_deadline: bool,
    /// Lines before this index are consumed by [`Vm::expect_lines`].
    cursor: usize,
}

impl Vm {
    /// Starts `qemu` with its serial console captured to `dir/console.log`
    /// and the default VM deadline ([`vm_timeout`]).
    pub fn start(name: &str, dir: &Path, qemu: QemuCommand) -> Vm {
        Self::start_with_timeout(name, dir, qemu, vm_timeout())
    }

    pub fn start_with_timeout(name: &str, dir: &Path, qemu: QemuCommand, limit: Duration) -> Vm {
        let console = dir.join("console.log");
        let stderr = dir.join("qemu-stderr.log");
        let qemu = qemu.serial_file(&console);
        let command_line = qemu.command_line();
        let fail = |what: String| -> ! { panic!("[{name}] {what}\nQEMU command line:\n  {command_line}") };
        let mut cmd = match qemu.command() {
            Ok(c) => c,
            Err(e) => fail(format!("invalid QEMU configuration: {e:#}")),
        };
        if let Err(e) = File::create(&console) {
            fail(format!("cannot create {}: {e}", console.display()));
        }
        let err_file = match File::create(&stderr) {
            Ok(f) => f,
            Err(e) => fail(format!("cannot create {}: {e}", stderr.display())),
        };
        let out_file = match File::create(dir.join("qemu-stdout.log")) {
            Ok(f) => f,
            Err(e) => fail(format!("cannot create qemu-stdout.log: {e}")),
        };
        cmd.stdin(Stdio::null()).stdout(out_file).stderr(err_file);
        let _ = std::fs::write(dir.join("qemu-command.txt"), format!("{command_line}\n"));
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => fail(format!(
                "cannot start {}: {e}\nInstall QEMU with: sudo apt-get install qemu-system-x86",
                qemu.program.display()
            )),
        };
        Vm {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            child: Some(child),
            console,
            stderr,
            command_line,
            started: Instant::now(),
            limit,
            status: None,
            killed_at_deadline: false,
            cursor: 0,
        }
    }

    /// The QEMU command line, shell-quoted.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// This VM's artifact directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the console printed so far (lossy UTF-8, with `\r` and
    /// terminal escape sequences, e.g. GRUB's screen clearing, removed).
    pub fn console_text(&self) -> String {
        static ANSI: OnceLock<Regex> = OnceLock::new();
        let ansi = ANSI.get_or_init(|| compile(r"\x1b\[[0-9;?]*[A-Za-z]"));
        let bytes = std::fs::read(&self.console).unwrap_or_default();
        ansi.replace_all(&String::from_utf8_lossy(&bytes), "").replace('\r', "")
    }

    /// The console's lines: complete ones while QEMU runs, all once it exited.
    pub fn lines(&self) -> Vec<String> {
        let text = self.console_text();
        let mut lines: Vec<String> = text.split('\n').map(String::from).collect();
        // The piece after the last newline is incomplete unless QEMU is done.
        let last = lines.pop().unwrap_or_default();
        if self.status.is_some() && !last.is_empty() {
            lines.push(last);
        }
        lines
    }

    /// Time left before the VM deadline.
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.started.elapsed())
    }

    /// Non-blocking: has QEMU exited? Records the status.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// Kills QEMU (if running) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                if let Ok(st) = child.wait() {
                    self.status = Some(st);
                }
            }
        }
    }

    /// Whether QEMU was killed because the VM deadline passed.
    pub fn hit_deadline(&self) -> bool {
        self.killed_at_deadline
    }

    fn enforce_deadline(&mut self) -> bool {
        if self.poll_exit().is_none() && self.remaining().is_zero() {
            self.killed_at_deadline = true;
            self.kill();
            return true;
        }
        false
    }

    /// Waits for a console line at index `from` or later that matches `re`;
    /// returns its index and text.
    fn wait_from(&mut self, re: &Regex, from: usize, timeout: Duration) -> Result<(usize, String), WaitError> {
        let start = Instant::now();
        loop {
            let exited = self.poll_exit().is_some();
            let lines = self.lines();
            if let Some((i, l)) = lines.iter().enumerate().skip(from).find(|(_, l)| re.is_match(l)) {
                return Ok((i, l.clone()));
            }
            if exited {
                let st = self.status.map(RunOutcome::from_status).unwrap_or(RunOutcome::Signaled);
                return Err(if self.killed_at_deadline {
                    WaitError::Deadline(self.limit)
                } else {
                    WaitError::Exited(st)
                });
            }
            if self.enforce_deadline() {
                // One last look: the line may have arrived just now.
                continue;
            }
            if start.elapsed() >= timeout {
                return Err(WaitError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` (and the VM deadline) for any console line
    /// matching the regex `pattern`; returns the line. Does not panic.
    pub fn try_wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String, WaitError> {
        let re = compile(pattern);
        self.wait_from(&re, 0, timeout).map(|(_, l)| l)
    }

    /// Like [`Vm::try_wait_for`], but a miss fails the test.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> String {
        match self.try_wait_for(pattern, timeout) {
            Ok(l) => l,
            Err(e) => self.fail(&format!("waiting for console line /{pattern}/: {e}")),
        }
    }

    /// Waits for lines matching `patterns` in this order, each after the
    /// previous match (and after earlier `expect_lines` matches), within the
    /// VM deadline. Returns the matched lines.
    pub fn expect_lines(&mut self, patterns: &[&str]) -> Vec<String> {
        let mut found = Vec::with_capacity(patterns.len());
        for p in patterns {
            let re = compile(p);
            let timeout = self.remaining().max(Duration::from_millis(1));
            match self.wait_from(&re, self.cursor, timeout) {
                Ok((i, l)) => {
                    self.cursor = i + 1;
                    found.push(l);
                }
                Err(e) => {
                    let seen = if found.is_empty() { String::new() } else { format!(" (after {found:?})") };
                    self.fail(&format!("expecting console line /{p}/ in order{seen}: {e}"))
                }
            }
        }
        found
    }

    /// Waits for QEMU to exit (killing it at the VM deadline) and interprets
    /// the status.
    pub fn wait_exit(&mut self) -> RunOutcome {
        loop {
            if let Some(st) = self.poll_exit() {
                return RunOutcome::from_status(st);
            }
            if self.enforce_deadline() {
                return RunOutcome::Signaled;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requires Ferrite's success verdict (QEMU status 1) with console
    /// output (QEMU also exits 1 when it cannot start at all).
    pub fn expect_success(&mut self) {
        let outcome = self.wait_exit();
        if self.killed_at_deadline {
            self.fail(&format!("timed out: still running after {:.0?}; QEMU killed", self.limit));
        }
        match outcome {
            RunOutcome::Success if self.console_text().trim().is_empty() => self.fail(
                "QEMU exited with status 1 but the console is empty: QEMU itself probably failed (see its stderr)",
            ),
            RunOutcome::Success => {}
            other => self.fail(&format!("expected success, got: {}", other.describe())),
        }
    }

    /// Fails the test with `msg`, the QEMU command line, its stderr and the
    /// console tail.
    pub fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        panic!("{}", self.report(msg));
    }

    /// The failure report (also useful for logging).
    pub fn report(&self, msg: &str) -> String {
        let lines = self.lines();
        let tail_start = lines.len().saturating_sub(TAIL_LINES);
        let mut r = format!("[{}] {msg}\n", self.name);
        r.push_str(&format!("elapsed: {:.1?} (deadline {:.0?})\n", self.started.elapsed(), self.limit));
        if let Some(st) = self.status {
            r.push_str(&format!("QEMU status: {st} ({})\n", RunOutcome::from_status(st).describe()));
        }
        r.push_str(&format!("QEMU command line:\n  {}\n", self.command_line));
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if !stderr.trim().is_empty() {
            r.push_str("QEMU stderr:\n");
            for l in stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev() {
                r.push_str(&format!("  {l}\n"));
            }
        }
        r.push_str(&format!(
            "console ({} lines; last {}, full log in {}):\n",
            lines.len(),
            lines.len() - tail_start,
            self.console.display()
        ));
        for l in &lines[tail_start..] {
            r.push_str(&format!("  | {l}\n"));
        }
        r
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn compile(pattern: &str) -> Regex {
    match Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => panic!("bad test pattern /{pattern}/: {e}"),
    }
}

/// FNV-1a, 32-bit: what Ferrite prints for each boot module.
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811C_9DC5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Deterministic pseudo-random bytes (xorshift64*), so module contents are
/// the same on every run and a wrong offset or truncation changes the hash.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A boot module a test wrote, with what Ferrite should report for it.
#[derive(Debug, Clone)]
pub struct TestModule {
    pub spec: ModuleSpec,
    pub size: usize,
    pub fnv: u32,
}

/// Writes `len` pseudo-random bytes to `dir/name` and describes the module.
pub fn write_module(dir: &Path, name: &str, seed: u64, len: usize, args: &str) -> TestModule {
    let data = pseudo_random_bytes(seed, len);
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, &data) {
        panic!("cannot write module {}: {e}", path.display());
    }
    TestModule { spec: ModuleSpec::new(path, args), size: len, fnv: fnv1a32(&data) }
}

/// One `module <i>: <size> bytes at 0x<addr>, cmdline "<...>", fnv1a32 0x<hash>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub index: usize,
    pub size: u64,
    pub addr: u64,
    pub cmdline: String,
    pub fnv: u32,
}

/// The regex matching module `index`'s line.
pub fn module_line_pattern(index: usize) -> String {
    format!(r#"module {index}: (\d+) bytes at 0x([0-9a-f]+), cmdline "(.*)", fnv1a32 0x([0-9a-f]{{8}})\s*$"#)
}

/// Parses Ferrite's report of module `index` from a console line.
pub fn parse_module_line(index: usize, line: &str) -> Option<ModuleLine> {
    let re = compile(&module_line_pattern(index));
    let c = re.captures(line)?;
    Some(ModuleLine {
        index,
        size: c[1].parse().ok()?,
        addr: u64::from_str_radix(&c[2], 16).ok()?,
        cmdline: c[3].to_string(),
        fnv: u32::from_str_radix(&c[4], 16).ok()?,
    })
}

/// Waits for module `index`'s line and checks its size, hash and cmdline
/// (which must contain the module's args; a loader may prefix the path).
pub fn expect_module(vm: &mut Vm, index: usize, m: &TestModule) -> ModuleLine {
    let line = vm.wait_for(&module_line_pattern(index), vm.remaining());
    let Some(got) = parse_module_line(index, &line) else {
        vm.fail(&format!("cannot parse module line {line:?}"));
    };
    let mut problems = Vec::new();
    if got.size != m.size as u64 {
        problems.push(format!("size {} != {} written", got.size, m.size));
    }
    if got.fnv != m.fnv {
        problems.push(format!("fnv1a32 {:#010x} != {:#010x} of the file", got.fnv, m.fnv));
    }
    if !got.cmdline.contains(&m.spec.args) {
        problems.push(format!("cmdline {:?} lacks {:?}", got.cmdline, m.spec.args));
    }
    if got.addr == 0 {
        problems.push("address 0".to_string());
    }
    if !problems.is_empty() {
        vm.fail(&format!("module {index} ({}) reported wrongly: {}", m.spec.path.display(), problems.join("; ")));
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_known_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn pseudo_random_is_deterministic_and_seeded() {
        let a = pseudo_random_bytes(1, 5000);
        assert_eq!(a, pseudo_random_bytes(1, 5000));
        assert_ne!(a, pseudo_random_bytes(2, 5000));
        // Not degenerate: many distinct byte values.
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }

    #[test]
    fn module_line_parses() {
        let l = r#"(ferrite) module 1: 70000 bytes at 0x1a3000, cmdline "/t/mod2 arg2=two", fnv1a32 0x0badf00d"#;
        assert_eq!(
            parse_module_line(1, l),
            Some(ModuleLine {
                index: 1,
                size: 70000,
                addr: 0x1a3000,
                cmdline: "/t/mod2 arg2=two".into(),
                fnv: 0x0badf00d
            })
        );
        assert_eq!(parse_module_line(0, l), None);
        assert_eq!(parse_module_line(1, &l.replace("0x0badf00d", "0xBADF00D")), None);
    }
}

// ---------------------------------------------------------------------------
// Linux guests (dom0 Linux from Debian packages with a busybox initramfs).
// ---------------------------------------------------------------------------

/// Default per-VM limit for tests that boot Linux (per boot). A healthy
/// boot to power-off takes seconds under TCG; the limit is generous for
/// loaded hosts, and only a hang ever waits for it.
pub const DEFAULT_LINUX_TIMEOUT: Duration = Duration::from_secs(180);

/// The VM deadline for one Linux boot: `FERRITE_LINUX_TIMEOUT_SECS` when set,
/// else [`DEFAULT_LINUX_TIMEOUT`]. Tests that boot twice use twice this.
pub fn linux_vm_timeout() -> Duration {
    std::env::var("FERRITE_LINUX_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LINUX_TIMEOUT)
}

/// Whether `FERRITE_REQUIRE_GUESTS` is set (to anything but empty or `0`):
/// then a guest image that cannot be fetched fails the test instead of
/// skipping it.
pub fn guests_required() -> bool {
    std::env::var("FERRITE_REQUIRE_GUESTS").is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0")
}

/// The files a dom0 Linux boot needs.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// The uncompressed ELF vmlinux (it has the PVH entry note).
    pub vmlinux: PathBuf,
    /// The busybox initramfs (uncompressed newc cpio) with the test init.
    pub initramfs: PathBuf,
}

/// Fetches (or finds cached) Debian's `linux-image-<flavour>` and
/// `busybox-static`, and writes `dir/initramfs.cpio` with
/// [`ferrite_tools::initramfs::TEST_INIT_SCRIPT`] as `/init`.
///
/// Returns `None` (after printing why) when the packages cannot be
/// downloaded and [`guests_required`] is false; the test should then return
/// early. Any other failure (extracting the kernel, building the archive)
/// fails the test.
pub fn linux_guest(test: &str, flavour: &str, dir: &Path) -> Option<LinuxGuest> {
    use ferrite_tools::{guest_images, initramfs};
    let kernel_pkg = format!("linux-image-{flavour}");
    if !debian_packages(test, &[kernel_pkg.as_str(), "busybox-static"]) {
        return None;
    }
    let vmlinux = guest_images::debian_vmlinux(flavour)
        .unwrap_or_else(|e| panic!("[{test}] cannot extract vmlinux from {kernel_pkg}: {e}"));
    let image = initramfs::busybox_initramfs(initramfs::TEST_INIT_SCRIPT)
        .unwrap_or_else(|e| panic!("[{test}] cannot build the busybox initramfs: {e}"));
    let path = dir.join("initramfs.cpio");
    if let Err(e) = std::fs::write(&path, &image) {
        panic!("[{test}] cannot write {}: {e}", path.display());
    }
    Some(LinuxGuest { vmlinux, initramfs: path })
}

/// Fetches (or finds cached) Debian packages `pkgs`. False (after saying
/// why) when one cannot be fetched and [`guests_required`] is false: the
/// test then returns early; with it set, the test fails.
pub fn debian_packages(test: &str, pkgs: &[&str]) -> bool {
    for pkg in pkgs {
        if let Err(e) = ferrite_tools::guest_images::fetch_debian_package(pkg) {
            if guests_required() {
                panic!("[{test}] cannot fetch Debian package {pkg} and FERRITE_REQUIRE_GUESTS is set:\n{e}");
            }
            eprintln!(
                "[{test}] SKIPPED (passes without running): cannot fetch Debian package {pkg}: {e}\n\
                 [{test}] set FERRITE_REQUIRE_GUESTS=1 to make this a failure"
            );
            return false;
        }
    }
    true
}

/// The Linux command line for the test init: `ferrite.test=<action>` picks
/// poweroff, reboot or shell. `loglevel=4` keeps the kernel's own output
/// (every byte is a trapped UART write) to warnings and worse.
pub fn linux_cmdline(action: &str) -> String {
    ferrite_tools::initramfs::test_linux_cmdline(action)
}

/// QEMU for a dom0 Linux boot: q35, 1 GiB, 2 host CPUs, Ferrite with
/// `dom0_mem=256M dom0_max_vcpus=<vcpus>`, module 0 the kernel with
/// `linux_args`, module 1 the initramfs.
pub fn dom0_linux_qemu(guest: &LinuxGuest, vcpus: u32, linux_args: &str) -> QemuCommand {
    base_qemu()
        .memory_mib(1024)
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .append(&format!("dom0_mem=256M dom0_max_vcpus={vcpus}"))
        .module(ModuleSpec::new(&guest.vmlinux, linux_args))
        .module(ModuleSpec::new(&guest.initramfs, ""))
}

/// The test init's `FERRITE-INIT ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitLine {
    pub cpus: u32,
    pub mem_kb: u64,
    pub date: i64,
    pub kernel: String,
}

/// The regex of the init line.
pub const INIT_LINE_PATTERN: &str = r"FERRITE-INIT cpus=(\d+) mem_kb=(\d+) date=(-?\d+) kernel=(\S+)";

/// Parses a console line holding the `FERRITE-INIT` report.
pub fn parse_init_line(line: &str) -> Option<InitLine> {
    let c = compile(INIT_LINE_PATTERN).captures(line)?;
    Some(InitLine {
        cpus: c[1].parse().ok()?,
        mem_kb: c[2].parse().ok()?,
        date: c[3].parse().ok()?,
        kernel: c[4].to_string(),
    })
}

/// Checks an init line against what the test configured: the vCPU count,
/// memory a little under 256 MiB (the kernel keeps some), the guest clock
/// within a day of the host's. Returns the problems found.
pub fn check_init_line(got: &InitLine, vcpus: u32, host_now: i64) -> Vec<String> {
    let mut problems = Vec::new();
    if got.cpus != vcpus {
        problems.push(format!("cpus={} but dom0_max_vcpus={vcpus}", got.cpus));
    }
    if !(200_000 < got.mem_kb && got.mem_kb <= 262_144) {
        problems.push(format!("mem_kb={} is not in (200000, 262144] for dom0_mem=256M", got.mem_kb));
    }
    if (got.date - host_now).abs() > 86_400 {
        problems.push(format!("guest date {} is more than a day from the host's {host_now}", got.date));
    }
    problems
}

/// Seconds since the Unix epoch on the host.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Waits for the next `FERRITE-INIT` line (in order, see
/// [`Vm::expect_lines`]), parses and checks it; fails the test on a problem.
pub fn expect_init_line(vm: &mut Vm, vcpus: u32) -> InitLine {
    let line = vm.expect_lines(&[INIT_LINE_PATTERN]).remove(0);
    let Some(got) = parse_init_line(&line) else {
        vm.fail(&format!("cannot parse the init line {line:?}"));
    };
    let problems = check_init_line(&got, vcpus, unix_now());
    if !problems.is_empty() {
        vm.fail(&format!("the init line {line:?} is wrong: {}", problems.join("; ")));
    }
    got
}

/// Waits for the workload verdict and requires `ok`; returns its seconds.
pub fn expect_workload_ok(vm: &mut Vm) -> u64 {
    let line = vm.expect_lines(&[r"FERRITE-WORKLOAD (ok|FAIL)"]).remove(0);
    let secs = compile(r"FERRITE-WORKLOAD ok (\d+)").captures(&line).and_then(|c| c[1].parse().ok());
    match secs {
        Some(s) => s,
        None => vm.fail(&format!("the guest workload failed: {line:?}")),
    }
}

/// Typing into a VM's serial console (see [`Vm::start_interactive`]).
pub struct ConsoleInput {
    stdin: std::process::ChildStdin,
}

impl ConsoleInput {
    /// Sends `text` a byte at a time, `gap` apart, as a person types: the
    /// emulated UART a guest reads has no deep FIFO, so a burst of input
    /// can lose bytes.
    pub fn type_slowly(&mut self, text: &str, gap: Duration) -> std::io::Result<()> {
        use std::io::Write;
        for b in text.bytes() {
            self.stdin.write_all(&[b])?;
            self.stdin.flush()?;
            std::thread::sleep(gap);
        }
        Ok(())
    }
}

impl Vm {
    /// Like [`Vm::start_with_timeout`], but the serial console is QEMU's
    /// stdio (no monitor multiplexing, so every byte reaches Ferrite):
    /// output goes to `dir/console.log` as usual, input comes from the
    /// returned [`ConsoleInput`].
    pub fn start_interactive(name: &str, dir: &Path, qemu: QemuCommand, limit: Duration) -> (Vm, ConsoleInput) {
        use ferrite_tools::qemu::{Display, Serial};
        let console = dir.join("console.log");
        let stderr = dir.join("qemu-stderr.log");
        let mut qemu = qemu.serial(Serial::Stdio).display(Display::None);
        qemu.no_monitor = true;
        let command_line = qemu.command_line();
        let fail = |what: String| -> ! { panic!("[{name}] {what}\nQEMU command line:\n  {command_line}") };
        let mut cmd = match qemu.command() {
            Ok(c) => c,
            Err(e) => fail(format!("invalid QEMU configuration: {e:#}")),
        };
        let out_file =
            File::create(&console).unwrap_or_else(|e| fail(format!("cannot create {}: {e}", console.display())));
        let err_file =
            File::create(&stderr).unwrap_or_else(|e| fail(format!("cannot create {}: {e}", stderr.display())));
        cmd.stdin(Stdio::piped()).stdout(out_file).stderr(err_file);
        let _ = std::fs::write(dir.join("qemu-command.txt"), format!("{command_line}\n"));
        let mut child = cmd.spawn().unwrap_or_else(|e| fail(format!("cannot start QEMU: {e}")));
        let Some(stdin) = child.stdin.take() else { fail("QEMU has no stdin pipe".into()) };
        let vm = Vm {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            child: Some(child),
            console,
            stderr,
            command_line,
            started: Instant::now(),
            limit,
            status: None,
            killed_at_deadline: false,
            cursor: 0,
        };
        (vm, ConsoleInput { stdin })
    }
}

#[cfg(test)]
mod linux_tests {
    use super::*;

    #[test]
    fn init_line_parses_and_checks() {
        let l = "(dom0) FERRITE-INIT cpus=2 mem_kb=227848 date=1795000000 kernel=6.1.0-56-cloud-amd64";
        let got = parse_init_line(l).unwrap();
        assert_eq!(
            got,
            InitLine { cpus: 2, mem_kb: 227_848, date: 1_795_000_000, kernel: "6.1.0-56-cloud-amd64".into() }
        );
        assert!(check_init_line(&got, 2, 1_795_000_100).is_empty());
        assert_eq!(check_init_line(&got, 1, 1_795_000_000).len(), 1);
        assert_eq!(check_init_line(&got, 2, 1_795_100_000).len(), 1);
        let small = InitLine { mem_kb: 100_000, ..got.clone() };
        assert_eq!(check_init_line(&small, 2, got.date).len(), 1);
        let big = InitLine { mem_kb: 262_145, ..got };
        assert_eq!(check_init_line(&big, 2, big.date).len(), 1);
        assert_eq!(parse_init_line("FERRITE-INIT cpus= mem_kb=1"), None);
    }

    #[test]
    fn linux_cmdline_has_no_commas() {
        for a in ["poweroff", "reboot", "shell"] {
            assert!(!linux_cmdline(a).contains(','));
            assert!(linux_cmdline(a).ends_with(&format!("ferrite.test={a}")));
        }
    }
}

/// Host CPUs for the SeaBIOS MBR scenarios: two, so guests and their stub
/// domains run on different CPUs at once. (They ran on one while the
/// two-CPU host reset was open; ARCHITECTURE.md, "Two host CPUs under
/// QEMU TCG", has its causes and fixes.)
pub const HVM_HOST_CPUS: u32 = 2;

/// SeaBIOS as the system's QEMU install ships it (Debian's `seabios`
/// package, a dependency of `qemu-system-x86`).
pub fn seabios_image() -> PathBuf {
    ferrite_tools::guestasm::seabios_image()
        .unwrap_or_else(|| panic!("SeaBIOS (bios-256k.bin) is not installed: apt-get install seabios (it comes with qemu-system-x86)"))
}

/// QEMU's direct Linux boot option ROM.
pub fn linuxboot_rom() -> PathBuf {
    let p = PathBuf::from("/usr/share/qemu/linuxboot_dma.bin");
    if !p.is_file() {
        panic!("{} is missing: apt-get install qemu-system-data", p.display());
    }
    p
}

/// QEMU arguments attaching raw image `path` as virtio-blk disk `serial`.
pub fn virtio_disk_args(path: &Path, serial: &str, read_only: bool) -> Vec<String> {
    let file = path.display().to_string().replace(',', ",,");
    let ro = if read_only { ",readonly=on" } else { "" };
    vec![
        "-drive".to_string(),
        format!("file={file},if=none,id={serial},format=raw{ro}"),
        "-device".to_string(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

/// `qemu-tests/guests/<name>.S` assembled into `dir/<name>.elf`, as a boot
/// module.
pub fn guest_module(name: &str, dir: &Path) -> ModuleSpec {
    match ferrite_tools::guestasm::build_guest(name, dir) {
        Ok(p) => ModuleSpec::new(p, ""),
        Err(e) => panic!("cannot assemble guest {name}: {e:#}"),
    }
}

/// What `guests/odd_apic.S` must report as `odd: ok ...`: its odd-size,
/// misaligned and page-straddling LAPIC and I/O APIC accesses, each with
/// the answer the architecture (or KVM, where it is silent) gives.
pub const ODD_APIC_CHECKS: &[&str] = &[
    "lapic version readable",
    "lapic 1-byte read",
    "lapic 2-byte read",
    "lapic 1-byte read at +2",
    "lapic misaligned 4-byte read",
    "lapic 8-byte read low half",
    "lapic 8-byte read high half",
    "lapic read straddling the page end",
    "lapic read between registers",
    "lapic 4-byte TPR write",
    "lapic 1-byte TPR write ignored",
    "lapic 2-byte TPR write ignored",
    "lapic misaligned TPR write ignored",
    "lapic 1-byte write at TPR+3 ignored",
    "lapic 8-byte TPR write takes the low half",
    "lapic version write ignored",
    "lapic narrow ICR writes ignored",
    "lapic self-IPI offset reads 0",
    "lapic 8-byte write at the page end",
    "ioapic 1-byte IOREGSEL write",
    "ioapic version (4-byte read)",
    "ioapic 1-byte IOWIN read",
    "ioapic 2-byte IOWIN read",
    "ioapic 8-byte IOWIN read low half",
    "ioapic 8-byte IOWIN read high half",
    "ioapic misaligned IOWIN read",
    "ioapic read beyond IOWIN",
    "ioapic read straddling the page end",
    "ioapic write at IOREGSEL+1 ignored",
    "ioapic 8-byte IOREGSEL write takes the low byte",
    "ioapic 2-byte IOWIN write ignored",
    "ioapic 1-byte IOWIN write ignored",
    "ioapic misaligned IOWIN write ignored",
    "ioapic 8-byte IOWIN write takes the low half",
    "ioapic redirection entry restored",
];

/// Writes `dir/<domain>.cfg`, a PVH domU booting `<kernel>.elf` with
/// `memory_mib` and 1 vCPU (destroyed if it crashes), as a boot module.
pub fn pvh_config_module(dir: &Path, domain: &str, kernel: &str, memory_mib: u32) -> ModuleSpec {
    pvh_smp_config_module(dir, domain, kernel, memory_mib, 1)
}

/// [`pvh_config_module`] with `vcpus` vCPUs.
pub fn pvh_smp_config_module(dir: &Path, domain: &str, kernel: &str, memory_mib: u32, vcpus: u32) -> ModuleSpec {
    let path = dir.join(format!("{domain}.cfg"));
    let text = format!(
        "# {domain}: written by a qemu-tests test\n\
         name = \"{domain}\"\ntype = \"pvh\"\nkernel = \"{kernel}.elf\"\nmemory = {memory_mib}\nvcpus = {vcpus}\n\
         on_crash = \"destroy\"\n"
    );
    if let Err(e) = std::fs::write(&path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    ModuleSpec::new(path, "")
}
