//! `ferrite`: builds Ferrite, boots it under QEMU, makes GRUB ISOs and runs
//! the test suite. See `ferrite help` and the library modules.

use anyhow::{bail, Context, Result};
use ferrite_tools::build;
use ferrite_tools::cli::{self, AccelChoice, Cmd, IsoArgs, UpArgs};
use ferrite_tools::modules::ModuleSpec;
use ferrite_tools::qemu::{self, Accel, Display, QemuCommand, Serial};
use ferrite_tools::{deps, guest_images, guestasm, initramfs, iso, xl};
use std::process::{Command, ExitCode};
use std::time::Instant;



fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(argv).and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferrite: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Help => {
            print!("{}", cli::USAGE);
            print!("{}", cli::BENCH_USAGE);
            print!("{}", cli::BENCH_SCHED_USAGE);
            print!("{}", cli::BENCH_DISKS_USAGE);
            print!("{}", cli::BENCH_NET_USAGE);
            print!("{}", cli::BENCH_XL_USAGE);
            print!("{}", ferrite_tools::stress::USAGE);
            print!("{}", ferrite_tools::nbd_server::USAGE);
            print!("{}", ferrite_tools::fuzz::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build { profile } => {
            build::build_hypervisor(profile)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up(args) => up(args),
        Cmd::Iso(args) => make_iso(args),
        Cmd::Test { test_args, bochs } => test(&test_args, bochs),
        Cmd::Bench(args) => {
            ferrite_tools::bench::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchSched(args) => {
            ferrite_tools::bench_sched::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchDisks(args) => {
            ferrite_tools::bench_disks::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchNet(args) => {
            ferrite_tools::bench_net::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchXl(args) => {
            ferrite_tools::bench_xl::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stress(args) => Ok(if ferrite_tools::stress::main(&args)? { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Cmd::Xl(args) => xl::main(&args),
        Cmd::NbdServe(args) => {
            ferrite_tools::nbd_server::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fuzz(args) => ferrite_tools::fuzz::main(&args),
    }
}

fn up(args: UpArgs) -> Result<ExitCode> {
    // Fail on a missing QEMU before spending minutes on a build.
    deps::require(&[deps::QEMU])?;
    let images = build::build_hypervisor(args.profile)?;
    let (accel, why) = match args.accel {
        AccelChoice::Tcg => (Accel::Tcg, "--tcg given".to_string()),
        AccelChoice::Kvm => {
            if !std::path::Path::new("/dev/kvm").exists() {
                bail!("--kvm given but /dev/kvm does not exist; drop --kvm to use TCG");
            }
            (Accel::Kvm, "--kvm given".to_string())
        }
        AccelChoice::Auto => qemu::choose_accel(&qemu::HostProbe::read()),
    };
    match accel {
        Accel::Kvm => eprintln!("accelerator: KVM with -cpu host ({why})"),
        Accel::Tcg => eprintln!("accelerator: TCG with -cpu {} ({why}); expect a slow boot", qemu::TCG_CPU),
    }
    let mut append = args.append.clone();
    let mut qemu_extra = args.qemu_extra.clone();
    let mut modules = args.modules.clone();
    let dom0_vcpus = args.dom0_vcpus.unwrap_or(1);
    if let Some(n) = args.dom0_vcpus {
        append.push(format!("dom0_max_vcpus={n}"));
    }
    // The management service: a NIC with the port forwarded, and a key
    // (which the demo dom0 carries too, for `ferrite xl` over vsock).
    let link = xl::link::prepare(&build::workspace_root().join("target").join("ferrite-up"), Some(ferrite_mgmt::DEFAULT_PORT))?;
    if !modules.is_empty() {
        eprintln!("demo: your --module files (no Linux demo)");
    } else if args.selftest_only {
        eprintln!("demo: the built-in self-test guest only (--selftest-only)");
    } else {
        match linux_demo(&link) {
            Ok(demo) => {
                eprintln!(
                    "demo: Debian Linux as PVH dom0 (dom0_mem=256M, {} vCPU(s)) running Ferrite's test init, then a \
                     busybox shell on the console ('poweroff -f' ends it; Ctrl-a x quits QEMU)\n\
                     demo: Ferrite switches console input between itself and each domain on Ctrl-a pressed three \
                     times; through QEMU's console that is six presses (QEMU turns Ctrl-a Ctrl-a into one Ctrl-a)",
                    dom0_vcpus
                );
                if args.dom0_vcpus.is_none() {
                    append.push(format!("dom0_max_vcpus={dom0_vcpus}"));
                }
                modules = demo;
                match hvm_demo(&images) {
                    Ok((hvm_modules, hvm_args)) => {
                        eprintln!(
                            "demo: and an HVM guest, hvmdemo: SeaBIOS with its devices in a stub domain (hvmdemo-dm), \
                             booting a test disk whose boot sector reads it back through the BIOS and powers off"
                        );
                        modules.extend(hvm_modules);
                        qemu_extra.extend(hvm_args);
                    }
                    Err(e) => eprintln!("demo: no HVM guest ({e})"),
                }
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or("unknown error");
                eprintln!("demo: cannot get the Linux guest ({first}); booting the built-in self-test demo instead");
            }
        }
    }
    qemu_extra.extend(link.qemu_args.iter().cloned());
    modules.push(link.key_module.clone());
    let mut q = QemuCommand::new()
        .accel(accel)
        .memory_mib(args.mem_mib)
        .smp(args.smp)
        .kernel(&images.multiboot)
        .append(&cli::full_cmdline(&append))
        .serial(Serial::MonStdio)
        .display(Display::Nographic)
        .extra_args(&qemu_extra);
    for m in modules {
        if !m.path.is_file() {
            bail!("module {} does not exist or is not a file", m.path.display());
        }
        q = q.module(m);
    }
    let mut command = q.command()?;
    eprintln!("{}", q.command_line());
    eprintln!(
        "starting QEMU: the Ferrite console is on this terminal; press Ctrl-a x to quit (Ctrl-a c: QEMU monitor)"
    );
    eprintln!(
        "manage it from another terminal: `cargo run --release -p ferrite-tools -- xl list` (the service is forwarded to \
         {}:{}; the key is in {}, readable by you only)",
        xl::target::DEFAULT_HOST,
        link.port,
        link.session_file.display()
    );
    // Replace this process with QEMU: the terminal, signals and exit status
    // are QEMU's own.
    use std::os::unix::process::CommandExt;
    let err = command.exec();
    Err(err).context("cannot start qemu-system-x86_64 (sudo apt-get install qemu-system-x86)")
}

/// The HVM demo guest's xl config.
const HVM_DEMO_CONFIG: &str = "# the ferrite up demo's HVM guest\nname = \"hvmdemo\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\n\
                               disk = [ 'phy:hvmdemo,hda,w' ]\n";

/// The HVM demo guest: an xl config, the stub-domain image and SeaBIOS
/// as boot modules, and a virtio-blk disk (QEMU arguments) holding the
/// test MBR.
fn hvm_demo(images: &build::HypervisorImages) -> std::result::Result<(Vec<ModuleSpec>, Vec<String>), String> {
    let bios = guestasm::seabios_image().ok_or("SeaBIOS is not installed: apt-get install seabios")?;
    let dir = build::workspace_root().join("target").join("ferrite-up");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let source = guestasm::guests_dir().join("bootsector").join("mbr_disk_check.S");
    let mbr = guestasm::assemble_boot_sector(&source, &dir.join("hvmdemo-mbr.bin")).map_err(|e| format!("{e:#}"))?;
    let disk = dir.join("hvmdemo-disk.img");
    std::fs::write(&disk, guestasm::mbr_test_disk(&mbr, 2048)).map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let cfg = dir.join("hvmdemo.cfg");
    std::fs::write(&cfg, HVM_DEMO_CONFIG).map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    let file = disk.display().to_string().replace(',', ",,");
    let qemu_args = vec![
        "-drive".to_string(),
        format!("file={file},if=none,id=hvmdemo,format=raw"),
        "-device".to_string(),
        "virtio-blk-pci,drive=hvmdemo,serial=hvmdemo".to_string(),
    ];
    Ok((vec![ModuleSpec::new(cfg, ""), ModuleSpec::new(images.stubdom.clone(), ""), ModuleSpec::new(bios, "")], qemu_args))
}

/// The Linux dom0 demo's boot modules: Debian's cloud kernel (vmlinux,
/// command line `ferrite.test=shell`) and a busybox initramfs running the
/// test init script, which ends in a shell on the console. dom0's
/// initramfs also carries the static `ferrite` command, the vsock modules
/// and the management key of `link`, so `ferrite xl` works in its shell;
/// the domU config it writes for `xl create` gets an initramfs without
/// them (a domU has no way to the service, and no business with the key).
fn linux_demo(link: &xl::link::UpLink) -> std::result::Result<Vec<ModuleSpec>, String> {
    const KERNEL_PKG: &str = "linux-image-cloud-amd64";
    const BUSYBOX_PKG: &str = "busybox-static";
    for pkg in [KERNEL_PKG, BUSYBOX_PKG] {
        let cached = guest_images::is_cached(pkg);
        eprintln!("fetching {pkg}{}...", if cached { " (cached)" } else { " (apt-get download)" });
        guest_images::fetch_debian_package(pkg)?;
    }
    let vmlinux = guest_images::debian_vmlinux("cloud-amd64")?;
    let dir = build::workspace_root().join("target").join("ferrite-up");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let image = initramfs::demo_domu_initramfs(&guest_images::fetch_debian_package(KERNEL_PKG)?)?;
    let (dom0_image, with) = match demo_dom0_image(KERNEL_PKG, link) {
        Ok(i) => (i, ", with /bin/ferrite and /etc/ferrite/xl.key"),
        Err(e) => {
            eprintln!("demo: dom0 gets no ferrite command ({e}); `ferrite xl` works from the host only");
            (image.clone(), "")
        }
    };
    let dom0_cpio = dir.join("dom0-initramfs.cpio");
    std::fs::write(&dom0_cpio, &dom0_image).map_err(|e| format!("cannot write {}: {e}", dom0_cpio.display()))?;
    eprintln!("dom0 kernel: {}\ndom0 initramfs: {} ({} KiB{with})", vmlinux.display(), dom0_cpio.display(), dom0_image.len() / 1024);
    // A domU to start at runtime (`ferrite xl create`): the same Linux,
    // the plain initramfs, with a shell on its console.
    let cpio = dir.join("initramfs.cpio");
    std::fs::write(&cpio, &image).map_err(|e| format!("cannot write {}: {e}", cpio.display()))?;
    let domu = dir.join("domu.cfg");
    let text = format!(
        "# A PVH domU for `ferrite xl create` (written by `ferrite up`)\nname = \"domu\"\ntype = \"pvh\"\n\
         kernel = \"{}\"\nramdisk = \"{}\"\ncmdline = \"{}\"\nmemory = 128\nvcpus = 1\n",
        vmlinux.display(),
        cpio.display(),
        initramfs::test_linux_cmdline("shell")
    );
    std::fs::write(&domu, text).map_err(|e| format!("cannot write {}: {e}", domu.display()))?;
    Ok(vec![ModuleSpec::new(vmlinux, initramfs::test_linux_cmdline("shell")), ModuleSpec::new(dom0_cpio, "")])
}

/// The demo dom0's initramfs: the test init and busybox, the static
/// `ferrite` command (built now), the vsock modules from `kernel_pkg`, the
/// key `link` made, and `/etc/ferrite/hvmdemo.cfg` (the HVM demo's config:
/// its files are boot modules, so `ferrite xl create` from dom0 needs
/// nothing uploaded).
fn demo_dom0_image(kernel_pkg: &str, link: &xl::link::UpLink) -> std::result::Result<Vec<u8>, String> {
    let exe = build::build_static_ferrite().map_err(|e| format!("{e:#}"))?;
    let ferrite = std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    let key_path = &link.key_module.path;
    let key = std::fs::read_to_string(key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let kernel_root = guest_images::fetch_debian_package(kernel_pkg)?;
    initramfs::demo_dom0_initramfs(&kernel_root, &ferrite, &key, &[("hvmdemo.cfg", HVM_DEMO_CONFIG.as_bytes())])
}

fn make_iso(args: IsoArgs) -> Result<ExitCode> {
    deps::require(&deps::ISO_TOOLS)?;
    for m in &args.modules {
        if !m.path.is_file() {
            bail!("module {} does not exist or is not a file", m.path.display());
        }
    }
    let images = build::build_hypervisor(args.profile)?;
    let staging = build::workspace_root().join("target").join("iso-staging");
    let spec =
        iso::IsoSpec { hypervisor: images.multiboot, cmdline: cli::full_cmdline(&args.append), modules: args.modules };
    eprintln!("making GRUB ISO {}...", args.out.display());
    iso::build_iso(&spec, &args.out, &staging)?;
    eprintln!(
        "wrote {}; boot it with: qemu-system-x86_64 -machine q35 -cpu {} -m 1024 -nographic -cdrom {}",
        args.out.display(),
        qemu::TCG_CPU,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The test binaries that boot Ferrite under Bochs (`ferrite test --bochs`).
const BOCHS_TEST_BINARIES: [&str; 2] = ["hostile_bochs", "vmx_bochs"];

/// `ferrite test`: every test binary of the workspace runs once (no
/// reruns, `--no-fail-fast`), then a summary per binary, the failed tests
/// and, as the very last line, the totals CI reads (`N passed, M failed,
/// K skipped`).
fn test(test_args: &[String], bochs: bool) -> Result<ExitCode> {
    let start = Instant::now();
    let missing = deps::check(&deps::TEST_TOOLS);
    if !missing.is_empty() {
        println!("ferrite test: {}", missing.message());
        println!("ferrite test: FAILED: no test ran");
        println!("{}", Totals::default().line());
        return Ok(ExitCode::FAILURE);
    }
    println!("host dependencies present (qemu-system-x86_64, grub-mkrescue, xorriso, mformat)");
    let mut args: Vec<String> = if bochs {
        ["test", "--release", "-p", "ferrite-qemu-tests"]
            .into_iter()
            .chain(BOCHS_TEST_BINARIES.iter().flat_map(|b| ["--test", b]))
            .chain(["--no-fail-fast", "--", "--test-threads=2"])
            .map(String::from)
            .collect()
    } else {
        ["test", "--workspace", "--no-fail-fast", "--", "--test-threads=2"].map(String::from).to_vec()
    };
    args.extend_from_slice(test_args);
    println!("running: cargo {}", args.join(" "));
    let mut summary = Summary::default();
    let cargo = run_merged(&args, |line| summary.feed(line));
    let secs = start.elapsed().as_secs();
    let elapsed = format!("{}m{:02}s", secs / 60, secs % 60);
    let cargo_status = match cargo {
        Ok(status) => CargoStatus::Exited { success: status.success(), status: status.to_string() },
        Err(e) => CargoStatus::NotRun(format!("{e:#}")),
    };
    let (report, ok) = summary.report(&cargo_status, &elapsed);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(report.as_bytes())?;
    out.flush()?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs `cargo args` with its stdout and stderr merged into one socket, so
/// that lines arrive in the order cargo and the test binaries wrote them
/// (cargo's `Running ...` before the binary's results), echoes each line on
/// stdout as it comes and hands it to `on_line`.
fn run_merged(args: &[String], mut on_line: impl FnMut(&str)) -> Result<std::process::ExitStatus> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;
    let (reader, writer) = UnixStream::pair().context("cannot create a socket pair for cargo's output")?;
    let writer_err = writer.try_clone().context("cannot duplicate the socket for cargo's output")?;
    let mut child = {
        let mut cmd = Command::new(build::cargo_program());
        cmd.current_dir(build::workspace_root())
            .args(args)
            .stdout(Stdio::from(OwnedFd::from(writer)))
            .stderr(Stdio::from(OwnedFd::from(writer_err)));
        cmd.spawn().context("cannot run cargo (is Rust installed and on PATH?)")?
        // `cmd` is dropped here with our copies of the write end, so the
        // reads below end when cargo and its children are done.
    };
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not `lines()`: output that is not UTF-8 (a guest's console)
        // must not stop the reading, or cargo would block on a full socket.
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("cannot read cargo's output");
            }
        }
        {
            // Echo failures (a closed stdout) must not stop the reading either.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
        let text = String::from_utf8_lossy(&buf);
        on_line(text.trim_end_matches(['\n', '\r']));
    }
    child.wait().context("cannot wait for cargo")
}

/// Passed, failed and ignored tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// The last line of `ferrite test`'s output, which CI reads.
    fn line(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.ignored)
    }
}

/// One test binary's results, from `cargo test` output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct BinaryResult {
    /// The binary's name without cargo's hash (`ferrite_boot`, `boot`), or
    /// `<crate> doc-tests`.
    name: String,
    /// What cargo said it runs (`unittests src/lib.rs`, `tests/boot.rs`);
    /// empty for doc-tests.
    source: String,
    /// From its `test result:` line; `None` if it printed none (it crashed,
    /// was killed, or is not a libtest binary).
    counts: Option<Totals>,
    /// The tests reported `... FAILED`, in order, once each.
    failed: Vec<String>,
    /// Past the `failures:` section header: `test ... FAILED` lines there
    /// are captured test output, not results.
    in_failures: bool,
}

/// The results of a `cargo test` run, fed its output line by line (stdout
/// and stderr merged, in order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Summary {
    binaries: Vec<BinaryResult>,
}

/// How cargo itself ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CargoStatus {
    Exited { success: bool, status: String },
    /// Cargo could not be started or its output read.
    NotRun(String),
}

/// The binary `cargo test` starts on a `Running` line: its name (cargo's
/// hash removed) and what it tests. Both `Running unittests src/lib.rs
/// (target/debug/deps/ferrite_boot-0123abcd)` and the older `Running
/// target/debug/deps/boot-0123abcd` are understood.
fn parse_running(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("Running ")?.trim();
    let (source, path) = match rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (")) {
        Some((source, path)) => (source.trim(), path),
        None => ("", rest),
    };
    let file = path.rsplit('/').next().unwrap_or(path);
    let name = match file.rsplit_once('-') {
        Some((stem, hash)) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => stem,
        _ => file,
    };
    let source = if source.is_empty() { path } else { source };
    Some((name.to_string(), source.to_string()))
}

/// The crate whose documentation tests start on a `Doc-tests <crate>` line.
fn parse_doc_tests(line: &str) -> Option<&str> {
    let name = line.trim().strip_prefix("Doc-tests ")?.trim();
    (!name.is_empty()).then_some(name)
}

/// The counts in a libtest `test result: ok. 5 passed; 0 failed; 1
/// ignored; 0 measured; 0 filtered out; finished in 0.01s` line.
fn parse_test_result(line: &str) -> Option<Totals> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut totals = Totals::default();
    let mut seen = false;
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => totals.passed = n,
            "failed" => totals.failed = n,
            "ignored" => totals.ignored = n,
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(totals)
}

/// The test name in a libtest `test foo::bar ... FAILED` line.
fn parse_failed_test(line: &str) -> Option<&str> {
    let name = line.strip_prefix("test ")?.strip_suffix(" ... FAILED")?.trim();
    (!name.is_empty()).then_some(name)
}

impl Summary {
    /// Takes one line of output (without its line ending).
    fn feed(&mut self, line: &str) {
        if let Some((name, source)) = parse_running(line) {
            self.binaries.push(BinaryResult { name, source, ..Default::default() });
        } else if let Some(krate) = parse_doc_tests(line) {
            self.binaries.push(BinaryResult { name: format!("{krate} doc-tests"), ..Default::default() });
        } else if let Some(counts) = parse_test_result(line) {
            let bin = self.current();
            // A second result line for one `Running` line: add it up.
            let before = bin.counts.unwrap_or_default();
            bin.counts = Some(Totals {
                passed: before.passed + counts.passed,
                failed: before.failed + counts.failed,
                ignored: before.ignored + counts.ignored,
            });
            bin.in_failures = false;
        } else if line.trim_end() == "failures:" {
            self.current().in_failures = true;
        } else if let Some(name) = parse_failed_test(line) {
            let bin = self.current();
            if !bin.in_failures && !bin.failed.iter().any(|f| f == name) {
                bin.failed.push(name.to_string());
            }
        }
    }

    /// The binary the lines now belong to; results before any `Running`
    /// line (there should be none) go to an "unknown" one.
    fn current(&mut self) -> &mut BinaryResult {
        if self.binaries.is_empty() {
            self.binaries.push(BinaryResult {
                name: "(unknown binary)".to_string(),
                source: "output before any `Running` line".to_string(),
                ..Default::default()
            });
        }
        self.binaries.last_mut().expect("just made non-empty")
    }

    /// Totals over all binaries; a binary without a result line counts as
    /// one failed test, so a crash never reads as "0 failed".
    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for b in &self.binaries {
            match b.counts {
                Some(c) => {
                    t.passed += c.passed;
                    t.failed += c.failed.max(b.failed.len() as u64);
                    t.ignored += c.ignored;
                }
                None => t.failed += 1,
            }
        }
        t
    }

    /// The summary to print after the run and whether the run passed. Its
    /// last line is exactly [`Totals::line`].
    fn report(&self, cargo: &CargoStatus, elapsed: &str) -> (String, bool) {
        use std::fmt::Write;
        let mut r = String::new();
        let totals = self.totals();
        let label = |b: &BinaryResult| {
            if b.source.is_empty() {
                b.name.clone()
            } else {
                format!("{} ({})", b.name, b.source)
            }
        };
        let width = self.binaries.iter().map(|b| label(b).len()).max().unwrap_or(0);
        let _ = writeln!(r, "\nferrite test: summary of {} test binaries", self.binaries.len());
        for b in &self.binaries {
            let label = label(b);
            match b.counts {
                Some(c) => {
                    let _ = writeln!(
                        r,
                        "  {label:<width$}  {} passed, {} failed, {} ignored",
                        c.passed, c.failed, c.ignored
                    );
                }
                None => {
                    let _ = writeln!(r, "  {label:<width$}  NO TEST RESULT (crashed or killed; see its output above)");
                }
            }
        }
        let mut failed: Vec<String> = Vec::new();
        for b in &self.binaries {
            failed.extend(b.failed.iter().map(|t| format!("{}::{t}", b.name)));
            match b.counts {
                None => failed.push(format!("{} (the whole binary: no test result)", b.name)),
                Some(c) if c.failed > b.failed.len() as u64 => failed.push(format!(
                    "{} ({} more failed test(s) whose names were not found; see its output above)",
                    b.name,
                    c.failed - b.failed.len() as u64
                )),
                Some(_) => {}
            }
        }
        if failed.is_empty() {
            let _ = writeln!(r, "failed tests: none");
        } else {
            let _ = writeln!(r, "failed tests ({}):", totals.failed);
            for f in &failed {
                let _ = writeln!(r, "  {f}");
            }
        }
        let ok = match cargo {
            CargoStatus::Exited { success: true, .. } if failed.is_empty() => {
                let _ = writeln!(r, "ferrite test: passed in {elapsed}");
                true
            }
            CargoStatus::Exited { success, status } => {
                if self.binaries.is_empty() {
                    let _ = writeln!(
                        r,
                        "ferrite test: FAILED in {elapsed}: cargo test failed ({status}) before running any test \
                         binary: a compile error? See cargo's messages above"
                    );
                } else if failed.is_empty() {
                    let _ = writeln!(
                        r,
                        "ferrite test: FAILED in {elapsed}: cargo test itself failed ({status}) although no test \
                         failed: a compile error or a test binary that could not run? See cargo's messages above"
                    );
                } else {
                    let also = if *success { String::new() } else { format!("; cargo test: {status}") };
                    let _ = writeln!(r, "ferrite test: FAILED in {elapsed}: {} failed{also}", totals.failed);
                }
                false
            }
            CargoStatus::NotRun(why) => {
                let _ = writeln!(r, "ferrite test: FAILED: cargo test did not run to the end: {why}");
                false
            }
        };
        let _ = writeln!(r, "{}", totals.line());
        (r, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_lines_name_the_binary() {
        assert_eq!(
            parse_running("     Running unittests src/lib.rs (target/debug/deps/ferrite_boot-0a1b2c3d4e5f6789)"),
            Some(("ferrite_boot".to_string(), "unittests src/lib.rs".to_string()))
        );
        assert_eq!(
            parse_running("     Running tests/boot.rs (target/debug/deps/boot-0123456789abcdef)"),
            Some(("boot".to_string(), "tests/boot.rs".to_string()))
        );
        // Older cargo: the path only.
        assert_eq!(
            parse_running("     Running target/debug/deps/hvm_disks-0123456789abcdef"),
            Some(("hvm_disks".to_string(), "target/debug/deps/hvm_disks-0123456789abcdef".to_string()))
        );
        assert_eq!(parse_running("test running ... ok"), None);
        assert_eq!(parse_running("running 3 tests"), None);
        assert_eq!(parse_doc_tests("   Doc-tests ferrite_boot"), Some("ferrite_boot"));
        assert_eq!(parse_doc_tests("Doc-tests"), None);
    }

    #[test]
    fn result_and_failed_lines() {
        assert_eq!(
            parse_test_result("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s"),
            Some(Totals { passed: 5, failed: 0, ignored: 1 })
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 71.20s"),
            Some(Totals { passed: 3, failed: 2, ignored: 0 })
        );
        assert_eq!(parse_test_result("test result is fine"), None);
        assert_eq!(parse_failed_test("test dom0_with_two_vcpus ... FAILED"), Some("dom0_with_two_vcpus"));
        assert_eq!(parse_failed_test("test tests::parse ... FAILED"), Some("tests::parse"));
        assert_eq!(parse_failed_test("test tests::parse ... ok"), None);
        assert_eq!(parse_failed_test("test slow ... ignored"), None);
        assert_eq!(parse_failed_test("  test x ... FAILED"), None);
    }

    const RUN: &str = "\
   Compiling ferrite-boot v0.1.0 (/w/kernel/boot)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 9.00s
     Running unittests src/lib.rs (target/debug/deps/ferrite_boot-0123456789abcdef)

running 3 tests
test a ... ok
test b ... ignored
test c ... ok

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/boot.rs (target/debug/deps/boot-fedcba9876543210)

running 3 tests
test boots ... ok
test dom0_with_two_vcpus ... FAILED
test hostile::wild ... FAILED

failures:

---- dom0_with_two_vcpus stdout ----
guest: test fake ... FAILED
test inner ... FAILED

failures:
    dom0_with_two_vcpus
    hostile::wild

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 80.00s

error: test failed, to rerun pass `-p ferrite-qemu-tests --test boot`
   Doc-tests ferrite_boot

running 1 test
test src/lib.rs - parse (line 10) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s

error: 1 target failed:
    `-p ferrite-qemu-tests --test boot`
";

    #[test]
    fn results_go_to_the_binary_that_ran_them() {
        let s = parse(RUN);
        let names: Vec<&str> = s.binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["ferrite_boot", "boot", "ferrite_boot doc-tests"]);
        assert_eq!(s.binaries[0].counts, Some(Totals { passed: 2, failed: 0, ignored: 1 }));
        assert!(s.binaries[0].failed.is_empty());
        assert_eq!(s.binaries[1].counts, Some(Totals { passed: 1, failed: 2, ignored: 0 }));
        // Lines in a failed test's captured output are not results.
        assert_eq!(s.binaries[1].failed, ["dom0_with_two_vcpus", "hostile::wild"]);
        assert_eq!(s.binaries[2].counts, Some(Totals { passed: 1, failed: 0, ignored: 0 }));
        assert_eq!(s.totals(), Totals { passed: 4, failed: 2, ignored: 1 });
    }

    fn exited(success: bool) -> CargoStatus {
        CargoStatus::Exited { success, status: if success { "exit status: 0" } else { "exit status: 101" }.to_string() }
    }

    #[test]
    fn report_lists_failures_and_ends_with_the_totals() {
        let (r, ok) = parse(RUN).report(&exited(false), "1m30s");
        assert!(!ok);
        assert!(r.contains("boot::dom0_with_two_vcpus\n"), "{r}");
        assert!(r.contains("boot::hostile::wild\n"), "{r}");
        assert!(r.contains("ferrite_boot (unittests src/lib.rs)"), "{r}");
        assert!(r.contains("\n  ferrite_boot doc-tests  "), "{r}");
        assert!(r.contains("2 passed, 0 failed, 1 ignored"), "{r}");
        assert!(r.contains("FAILED in 1m30s: 2 failed"), "{r}");
        assert_eq!(r.lines().last(), Some("4 passed, 2 failed, 1 skipped"));
        assert!(r.ends_with('\n'));

        let passing = RUN.replace("test dom0_with_two_vcpus ... FAILED", "").replace("test hostile::wild ... FAILED", "");
        let passing = passing.replace("FAILED. 1 passed; 2 failed", "ok. 3 passed; 0 failed");
        let (r, ok) = parse(&passing).report(&exited(true), "0m05s");
        assert!(ok, "{r}");
        assert!(r.contains("failed tests: none\nferrite test: passed in 0m05s\n6 passed, 0 failed, 1 skipped\n"), "{r}");
    }

    #[test]
    fn cargo_failing_without_a_test_failing_fails() {
        let compile_error = "   Compiling ferrite-boot v0.1.0\nerror[E0425]: cannot find value `x` in this scope\n\
                             error: could not compile `ferrite-boot` (lib test) due to 1 previous error\n";
        let (r, ok) = parse(compile_error).report(&exited(false), "0m10s");
        assert!(!ok);
        assert!(r.contains("cargo test failed (exit status: 101) before running any test binary"), "{r}");
        assert!(r.contains("compile error"), "{r}");
        assert_eq!(r.lines().last(), Some("0 passed, 0 failed, 0 skipped"));
        let (r, ok) = parse("     Running tests/a.rs (target/debug/deps/a-0123456789abcdef)\n\
                             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n")
        .report(&exited(false), "0m10s");
        assert!(!ok);
        assert!(r.contains("cargo test itself failed (exit status: 101) although no test failed"), "{r}");
        assert_eq!(r.lines().last(), Some("1 passed, 0 failed, 0 skipped"));
        let (r, ok) = Summary::default().report(&CargoStatus::NotRun("no cargo".into()), "0m00s");
        assert!(!ok);
        assert!(r.contains("did not run to the end: no cargo"), "{r}");
        assert_eq!(r.lines().last(), Some("0 passed, 0 failed, 0 skipped"));
    }

    #[test]
    fn a_binary_without_a_result_counts_as_a_failure() {
        let crashed = "     Running tests/hvm.rs (target/debug/deps/hvm-0123456789abcdef)\n\nrunning 2 tests\n\
                       test first ... ok\n\
                       error: test failed, to rerun pass `-p ferrite-qemu-tests --test hvm`\n\
                       Running tests/hvm_disks.rs (target/debug/deps/hvm_disks-0123456789abcdef)\n\
                       test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        let s = parse(crashed);
        assert_eq!(s.binaries.len(), 2);
        assert_eq!(s.binaries[0].counts, None);
        assert_eq!(s.totals(), Totals { passed: 1, failed: 1, ignored: 0 });
        let (r, ok) = s.report(&exited(false), "0m02s");
        assert!(!ok);
        assert!(r.contains("hvm (the whole binary: no test result)"), "{r}");
        assert!(r.contains("NO TEST RESULT"), "{r}");
        assert_eq!(r.lines().last(), Some("1 passed, 1 failed, 0 skipped"));
    }

    fn parse(output: &str) -> Summary {
        let mut s = Summary::default();
        for line in output.lines() {
            s.feed(line);
        }
        s
    }
}
