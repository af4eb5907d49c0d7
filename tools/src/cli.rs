//! The `ferrite` command line, parsed by hand (four subcommands do not need
//! a parser framework, and this keeps the tool quick to build).

use crate::build::Profile;
use crate::modules::ModuleSpec;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The command line `up` and `iso` start from; `--append` adds to it.
pub const DEFAULT_CMDLINE: &str = "console=com1 com1=115200,8n1 dom0_mem=256M";

pub const USAGE: &str = "\
ferrite: build and boot the Ferrite hypervisor

USAGE:
    ferrite build [--debug]
        Build the hypervisor image (target/baremetal/<profile>/ferrite-hv),
        its PVH-only copy (ferrite-hv.pvh) and the stub-domain image
        (ferrite-stubdom) next to them, with the hostile test stub
        (ferrite-stubdom-hostile, for tests only).
    ferrite up [--debug] [--smp N] [--mem MiB] [--tcg|--kvm] [--append \"CMDLINE\"]
               [--dom0-vcpus N] [--selftest-only]
               [--module PATH[=ARGS]]... [-- EXTRA QEMU ARGS]
        Build, then boot Ferrite in QEMU with the console on this terminal
        (Ctrl-a x quits). Defaults: --smp 2 --mem 1024, KVM only when nested
        virtualization works, else TCG with -cpu qemu64,+svm,+npt.
        Without --module, the demo boots Debian's Linux (linux-image-cloud-amd64,
        fetched once with apt-get download and cached in ~/.cache/ferrite) as a
        PVH dom0 with a busybox initramfs and a shell on the console, with
        --dom0-vcpus vCPUs (default 1; the option also sets dom0_max_vcpus= for
        your own --module dom0). If the packages cannot be fetched, or with
        --selftest-only, only the built-in self-test guest runs.
    ferrite iso --out FILE [--debug] [--module PATH[=ARGS]]... [--append \"CMDLINE\"]
        Build, then make a BIOS GRUB rescue ISO booting Ferrite via multiboot2.
    ferrite test [--bochs] [-- ARGS FOR THE TEST BINARIES]
        Check host dependencies, then run
        `cargo test --workspace --no-fail-fast -- --test-threads=2 [ARGS]`: every
        test binary runs, even after one fails, and no test is ever rerun.
        Cargo's output (stdout and stderr, in order) is shown on stdout, then a
        summary: each test binary's passed/failed/ignored counts, every failed
        test as binary::test_name, and last the totals line
        `N passed, M failed, K skipped` (K: ignored tests). The exit status is
        non-zero if a test failed, a test binary crashed, or cargo failed (e.g.
        a compile error).
        One test: `cargo run --release -p ferrite-tools -- test -- <name filter>`
        passes the filter to every test binary; to run one QEMU test directly:
        `cargo test -p ferrite-qemu-tests --test <file> -- --exact <name>`
        (<file>: a qemu-tests/tests/ file name without .rs, e.g. boot).
        --bochs runs only the binaries that boot Ferrite under Bochs
        (`hostile_bochs`, `vmx_bochs`: Intel VMX and AMD SVM models; needs
        bochs, bochsbios, vgabios, bochs-term; about 7 minutes on 2 cores).
    ferrite xl [--host H] [--port P] [--key-file F] SUBCOMMAND [ARGS]
        Manage the domains of a running Ferrite like Xen's xl (list, info,
        create, console, shutdown, destroy, vcpu-pin, ...) through its
        management service; `ferrite xl help` lists the subcommands.
";

/// `ferrite help` for `bench` (kept apart from [`USAGE`] to keep edits small).
pub const BENCH_USAGE: &str = crate::bench::USAGE;
pub const BENCH_SCHED_USAGE: &str = crate::bench_sched::USAGE;
pub const BENCH_DISKS_USAGE: &str = crate::bench_disks::USAGE;
pub const BENCH_NET_USAGE: &str = crate::bench_net::USAGE;
pub const BENCH_XL_USAGE: &str = crate::bench_xl::USAGE;

/// Which accelerator the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Probe the host (see `qemu::choose_accel`).
    #[default]
    Auto,
    Tcg,
    Kvm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpArgs {
    pub profile: Profile,
    pub smp: u32,
    pub mem_mib: u32,
    pub accel: AccelChoice,
    pub append: Vec<String>,
    pub modules: Vec<ModuleSpec>,
    pub qemu_extra: Vec<String>,
    /// `--selftest-only`: skip the Linux dom0 demo.
    pub selftest_only: bool,
    /// `--dom0-vcpus`: dom0's vCPU count (`dom0_max_vcpus=`); the Linux
    /// demo uses 1 when it is not given.
    pub dom0_vcpus: Option<u32>,
}

impl Default for UpArgs {
    fn default() -> Self {
        UpArgs {
            profile: Profile::Release,
            smp: 2,
            mem_mib: 1024,
            accel: AccelChoice::Auto,
            append: Vec::new(),
            modules: Vec::new(),
            qemu_extra: Vec::new(),
            selftest_only: false,
            dom0_vcpus: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoArgs {
    pub profile: Profile,
    pub out: PathBuf,
    pub append: Vec<String>,
    pub modules: Vec<ModuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Build { profile: Profile },
    Up(UpArgs),
    Iso(IsoArgs),
    /// `bochs`: only the test binaries that boot Ferrite under Bochs.
    Test { test_args: Vec<String>, bochs: bool },
    Bench(crate::bench::BenchArgs),
    /// `ferrite bench sched ...`.
    BenchSched(crate::bench_sched::Args),
    /// `ferrite bench disks ...`.
    BenchDisks(crate::bench_disks::Args),
    /// `ferrite bench net ...`.
    BenchNet(crate::bench_net::Args),
    /// `ferrite bench xl ...`.
    BenchXl(crate::bench_xl::Args),
    Stress(crate::stress::StressArgs),
    /// `ferrite xl ...`: the arguments after `xl`, parsed by the binary's
    /// `xl` module.
    Xl(Vec<String>),
    /// `ferrite nbd-serve FILE ...`.
    NbdServe(crate::nbd_server::ServeArgs),
    /// `ferrite fuzz ...`: the arguments after `fuzz`, for the fuzz driver.
    Fuzz(Vec<String>),
    Help,
}

/// The full kernel command line: [`DEFAULT_CMDLINE`] then the `--append`s.
pub fn full_cmdline(append: &[String]) -> String {
    let mut s = DEFAULT_CMDLINE.to_string();
    for a in append {
        let a = a.trim();
        if !a.is_empty() {
            s.push(' ');
            s.push_str(a);
        }
    }
    s
}

/// Yields `--flag value` and `--flag=value` alike.
struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let a = self.items.get(self.pos).cloned();
        self.pos += 1;
        a
    }
    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String> {
        match inline {
            Some(v) => Ok(v),
            None => self.next().with_context(|| format!("{flag} needs a value; see `ferrite help`")),
        }
    }
    fn rest(&mut self) -> Vec<String> {
        let r = self.items.get(self.pos..).unwrap_or(&[]).to_vec();
        self.pos = self.items.len();
        r
    }
}

fn number(flag: &str, v: &str) -> Result<u32> {
    v.parse().with_context(|| format!("{flag} expects a whole number, got {v:?}"))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Result<Cmd> {
    let mut args = Args { items: argv.into_iter().map(Into::into).collect(), pos: 0 };
    let Some(sub) = args.next() else {
        return Ok(Cmd::Help);
    };
    let mut profile = Profile::Release;
    let mut up = UpArgs::default();
    let mut iso_out: Option<PathBuf> = None;
    let mut test_args = Vec::new();
    let mut bochs = false;
    match sub.as_str() {
        "help" | "-h" | "--help" => return Ok(Cmd::Help),
        "bench" => {
            let rest = args.rest();
            if rest.first().map(String::as_str) == Some("sched") {
                return Ok(Cmd::BenchSched(crate::bench_sched::parse_args(&rest[1..])?));
            }
            if rest.first().map(String::as_str) == Some("disks") {
                return Ok(Cmd::BenchDisks(crate::bench_disks::parse_args(&rest[1..])?));
            }
            if rest.first().map(String::as_str) == Some("net") {
                return Ok(Cmd::BenchNet(crate::bench_net::parse_args(&rest[1..])?));
            }
            if rest.first().map(String::as_str) == Some("xl") {
                return Ok(Cmd::BenchXl(crate::bench_xl::parse_args(&rest[1..])?));
            }
            return Ok(Cmd::Bench(crate::bench::parse_args(&rest)?));
        }
        "stress" => return Ok(Cmd::Stress(crate::stress::parse_args(&args.rest())?)),
        "xl" => return Ok(Cmd::Xl(args.rest())),
        "nbd-serve" => return Ok(Cmd::NbdServe(crate::nbd_server::parse_args(&args.rest())?)),
        "fuzz" => return Ok(Cmd::Fuzz(args.rest())),
        "build" | "up" | "iso" | "test" => {}
        other => bail!("unknown command {other:?}; expected build, up, iso, test, bench, stress, fuzz, xl or nbd-serve (see `ferrite help`)"),
    }
    while let Some(arg) = args.next() {
        if arg == "--" {
            match sub.as_str() {
                "up" => up.qemu_extra = args.rest(),
                "test" => test_args = args.rest(),
                _ => bail!("`ferrite {sub}` takes no arguments after `--`"),
            }
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match (sub.as_str(), flag.as_str()) {
            (_, "-h" | "--help") => return Ok(Cmd::Help),
            ("build" | "up" | "iso", "--debug") => profile = Profile::Debug,
            ("up", "--smp") => up.smp = number("--smp", &args.value("--smp", inline)?)?,
            ("up", "--mem") => up.mem_mib = number("--mem", &args.value("--mem", inline)?)?,
            ("up", "--tcg") => up.accel = AccelChoice::Tcg,
            ("up", "--kvm") => up.accel = AccelChoice::Kvm,
            ("up", "--selftest-only") => up.selftest_only = true,
            ("up", "--dom0-vcpus") => {
                up.dom0_vcpus = Some(number("--dom0-vcpus", &args.value("--dom0-vcpus", inline)?)?)
            }
            ("up" | "iso", "--append") => up.append.push(args.value("--append", inline)?),
            ("up" | "iso", "--module") => up.modules.push(ModuleSpec::parse(&args.value("--module", inline)?)?),
            ("test", "--bochs") => bochs = true,
            ("iso", "--out" | "-o") => iso_out = Some(PathBuf::from(args.value("--out", inline)?)),
            _ => bail!("unknown option {arg:?} for `ferrite {sub}` (see `ferrite help`)"),
        }
    }
    if up.smp == 0 {
        bail!("--smp must be at least 1");
    }
    if up.dom0_vcpus == Some(0) {
        bail!("--dom0-vcpus must be at least 1");
    }
    Ok(match sub.as_str() {
        "build" => Cmd::Build { profile },
        "up" => Cmd::Up(UpArgs { profile, ..up }),
        "iso" => Cmd::Iso(IsoArgs {
            profile,
            out: iso_out.context("`ferrite iso` needs --out FILE (e.g. --out ferrite.iso)")?,
            append: up.append,
            modules: up.modules,
        }),
        _ => Cmd::Test { test_args, bochs },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_help() {
        assert_eq!(parse(Vec::<String>::new()).unwrap(), Cmd::Help);
        assert_eq!(parse(["build"]).unwrap(), Cmd::Build { profile: Profile::Release });
        assert_eq!(parse(["build", "--debug"]).unwrap(), Cmd::Build { profile: Profile::Debug });
        assert_eq!(parse(["up", "--help"]).unwrap(), Cmd::Help);
        assert!(parse(["frob"]).is_err());
        assert!(parse(["build", "--smp", "2"]).is_err());
    }

    #[test]
    fn up_options() {
        let Cmd::Up(u) = parse([
            "up",
            "--smp",
            "4",
            "--mem=2048",
            "--tcg",
            "--append",
            "loglvl=all",
            "--module",
            "d0=root=/dev/x",
            "--",
            "-s",
            "-S",
        ])
        .unwrap() else {
            panic!("not up")
        };
        assert_eq!(u.smp, 4);
        assert_eq!(u.mem_mib, 2048);
        assert_eq!(u.accel, AccelChoice::Tcg);
        assert_eq!(u.append, ["loglvl=all"]);
        assert_eq!(u.modules, [ModuleSpec::new("d0", "root=/dev/x")]);
        assert_eq!(u.qemu_extra, ["-s", "-S"]);
        let Cmd::Up(d) = parse(["up"]).unwrap() else { panic!() };
        assert_eq!(d, UpArgs::default());
        assert!(parse(["up", "--smp"]).is_err());
        assert!(parse(["up", "--smp", "two"]).is_err());
        assert!(parse(["up", "--smp", "0"]).is_err());
        assert!(parse(["up", "--out", "x"]).is_err());
        assert!(!d.selftest_only);
        assert_eq!(d.dom0_vcpus, None);
        let Cmd::Up(s) = parse(["up", "--selftest-only", "--dom0-vcpus=2"]).unwrap() else { panic!() };
        assert!(s.selftest_only);
        assert_eq!(s.dom0_vcpus, Some(2));
        assert!(parse(["up", "--dom0-vcpus", "0"]).is_err());
        assert!(parse(["iso", "--out", "x", "--selftest-only"]).is_err());
    }

    #[test]
    fn iso_options() {
        let Cmd::Iso(i) =
            parse(["iso", "--out", "f.iso", "--module", "m1=a=1", "--module=m2", "--append", "x=y"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.out, PathBuf::from("f.iso"));
        assert_eq!(i.modules, [ModuleSpec::new("m1", "a=1"), ModuleSpec::new("m2", "")]);
        assert_eq!(full_cmdline(&i.append), "console=com1 com1=115200,8n1 dom0_mem=256M x=y");
        let e = parse(["iso"]).unwrap_err();
        assert!(e.to_string().contains("--out"), "{e}");
    }

    #[test]
    fn test_passes_args_through() {
        assert_eq!(parse(["test"]).unwrap(), Cmd::Test { test_args: vec![], bochs: false });
        assert_eq!(parse(["test", "--", "boots"]).unwrap(), Cmd::Test { test_args: vec!["boots".into()], bochs: false });
        assert_eq!(parse(["test", "--bochs"]).unwrap(), Cmd::Test { test_args: vec![], bochs: true });
        assert!(parse(["build", "--", "x"]).is_err());
    }

    #[test]
    fn bench_sched_is_its_own_command() {
        let sched = crate::bench_sched::Args { write: true, prebuilt: false };
        assert_eq!(parse(["bench", "sched", "--write"]).unwrap(), Cmd::BenchSched(sched));
        assert!(matches!(parse(["bench", "--write"]).unwrap(), Cmd::Bench(_)));
        assert!(parse(["bench", "sched", "--no-hvm"]).is_err());
        assert!(matches!(parse(["bench", "disks", "--no-nbd"]).unwrap(), Cmd::BenchDisks(a) if !a.nbd && a.pvh));
        assert!(matches!(parse(["bench", "net", "--no-hvm"]).unwrap(), Cmd::BenchNet(a) if !a.hvm && a.pvh));
        assert_eq!(parse(["bench", "xl", "--write"]).unwrap(), Cmd::BenchXl(crate::bench_xl::Args { write: true, prebuilt: false }));
        assert!(parse(["bench", "xl", "--no-hvm"]).is_err());
    }

    #[test]
    fn nbd_serve_is_its_own_command() {
        let Cmd::NbdServe(a) = parse(["nbd-serve", "d.img", "--once", "--listen", "127.0.0.1:0"]).unwrap() else {
            panic!("not nbd-serve")
        };
        assert_eq!((a.file.to_str(), a.once, a.listen.as_str()), (Some("d.img"), true, "127.0.0.1:0"));
        assert!(parse(["nbd-serve"]).is_err());
    }

    #[test]
    fn xl_passes_args_through() {
        let expected = Cmd::Xl(["--port", "1", "list", "-l"].map(String::from).to_vec());
        assert_eq!(parse(["xl", "--port", "1", "list", "-l"]).unwrap(), expected);
        assert_eq!(parse(["xl"]).unwrap(), Cmd::Xl(vec![]));
    }

    #[test]
    fn fuzz_passes_args_through() {
        let expected = Cmd::Fuzz(["elf", "--execs", "10"].map(String::from).to_vec());
        assert_eq!(parse(["fuzz", "elf", "--execs", "10"]).unwrap(), expected);
        assert_eq!(parse(["fuzz"]).unwrap(), Cmd::Fuzz(vec![]));
    }
}
