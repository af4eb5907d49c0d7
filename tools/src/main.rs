//! `ferrite`: builds Ferrite, boots it under QEMU, makes GRUB ISOs and runs
//! the test suite. See `ferrite help` and the library modules.

use anyhow::{bail, Context, Result};
use ferrite_tools::build;
use ferrite_tools::cli::{self, AccelChoice, Cmd, IsoArgs, UpArgs};
use ferrite_tools::qemu::{self, Accel, Display, QemuCommand, Serial};
use ferrite_tools::{deps, iso};
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
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build { profile } => {
            build::build_hypervisor(profile)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up(args) => up(args),
        Cmd::Iso(args) => make_iso(args),
        Cmd::Test { test_args } => test(&test_args),
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
    let mut q = QemuCommand::new()
        .accel(accel)
        .memory_mib(args.mem_mib)
        .smp(args.smp)
        .kernel(&images.multiboot)
        .append(&cli::full_cmdline(&args.append))
        .serial(Serial::MonStdio)
        .display(Display::Nographic)
        .extra_args(&args.qemu_extra);
    for m in args.modules {
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
    // Replace this process with QEMU: the terminal, signals and exit status
    // are QEMU's own.
    use std::os::unix::process::CommandExt;
    let err = command.exec();
    Err(err).context("cannot start qemu-system-x86_64 (sudo apt-get install qemu-system-x86)")
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

fn test(test_args: &[String]) -> Result<ExitCode> {
    let start = Instant::now();
    let missing = deps::check(&deps::TEST_TOOLS);
    if !missing.is_empty() {
        eprintln!("ferrite test: {}", missing.message());
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("host dependencies present (qemu-system-x86_64, grub-mkrescue, xorriso, mformat)");
    let mut cmd = Command::new(build::cargo_program());
    cmd.current_dir(build::workspace_root()).args(["test", "--workspace", "--", "--test-threads=2"]).args(test_args);
    eprintln!("running: cargo test --workspace -- --test-threads=2 {}", test_args.join(" "));
    let status = cmd.status().context("cannot run cargo (is Rust installed and on PATH?)")?;
    let secs = start.elapsed().as_secs();
    eprintln!(
        "ferrite test: {} in {}m{:02}s",
        if status.success() { "passed" } else { "FAILED" },
        secs / 60,
        secs % 60
    );
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
