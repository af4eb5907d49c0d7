//! `ferrite fuzz`: build the fuzz driver (`fuzz/`, `ferrite-fuzz`) with
//! SanitizerCoverage and run it.
//!
//! Coverage comes from stable rustc flags (`-C passes=sancov-module` with
//! the trace-pc-guard callbacks, which `ferrite-fuzz` implements itself),
//! given in `RUSTFLAGS` with an explicit `--target`: cargo then applies
//! them to the driver and the libraries under test but not to build
//! scripts and proc macros (serde's derive), which could not link the
//! callbacks. The build has its own target directory
//! (`target/fuzz`) and the `fuzz` profile (optimized, overflow checks,
//! unwinding), so it never invalidates the normal builds.

use crate::build::{cargo_program, workspace_root};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

pub const USAGE: &str = "\
    ferrite fuzz [TARGET...] [--execs N] [--seconds S] [--seed N] [--progress SECS]
                 [--list] [--reproduce FILE]
        Build the fuzz driver with coverage instrumentation, then fuzz each
        TARGET (default: all; --list names them and their properties) in
        turn for N executions (default 1000000) or S seconds, printing
        progress (execs/s, corpus, edges, crashes) and a summary. Crashing
        inputs are saved under target/fuzz/crashes/<target>/ with the command
        that reproduces one (--reproduce FILE runs TARGET on FILE, panic
        shown). Exit status 1 if a target crashed.
";

/// The host target, named explicitly so RUSTFLAGS skip build scripts and
/// proc macros.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The stable flags that make LLVM call the coverage callbacks on every
/// edge.
pub const COVERAGE_RUSTFLAGS: &str =
    "-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 -C llvm-args=-sanitizer-coverage-trace-pc-guard";

/// `<workspace>/target/fuzz`: the driver's own target directory; crashes
/// go to its `crashes/`.
pub fn fuzz_dir() -> PathBuf {
    workspace_root().join("target").join("fuzz")
}

/// Where [`build_command`] leaves the driver.
pub fn driver_path() -> PathBuf {
    fuzz_dir().join(HOST_TARGET).join("fuzz").join("ferrite-fuzz")
}

/// The cargo command that builds the instrumented driver.
pub fn build_command() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root())
        .args(["build", "--profile", "fuzz", "-p", "ferrite-fuzz", "--target", HOST_TARGET, "--target-dir"])
        .arg(fuzz_dir())
        // CARGO_ENCODED_RUSTFLAGS would take precedence over ours.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", COVERAGE_RUSTFLAGS);
    cmd
}

/// Builds the instrumented driver; returns its path.
pub fn build_driver() -> Result<PathBuf> {
    eprintln!("fuzz: building the driver with coverage instrumentation (target/fuzz)");
    let status = build_command()
        .status()
        .with_context(|| format!("cannot run {} (is Rust installed and on PATH?)", cargo_program().display()))?;
    if !status.success() {
        bail!("building the fuzz driver failed ({status}); see cargo's messages above");
    }
    Ok(driver_path())
}

/// The driver's command line: the user's arguments, plus where crashes go
/// and how to reproduce them unless given.
pub fn driver_args(args: &[String]) -> Vec<String> {
    let mut out = args.to_vec();
    if !args.iter().any(|a| a == "--crash-dir") {
        out.push("--crash-dir".into());
        out.push(fuzz_dir().join("crashes").display().to_string());
    }
    out.push("--reproduce-command".into());
    out.push("cargo run --release -p ferrite-tools -- fuzz".into());
    out
}

/// `ferrite fuzz ARGS`: build, then run the driver with them.
pub fn main(args: &[String]) -> Result<ExitCode> {
    let driver = build_driver()?;
    let status = Command::new(&driver)
        .args(driver_args(args))
        .status()
        .with_context(|| format!("cannot run {}", driver.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_instruments_only_the_target_and_keeps_its_own_dir() {
        let cmd = build_command();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.windows(2).any(|w| w == ["--target", HOST_TARGET]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--profile", "fuzz"]), "{args:?}");
        assert!(args.contains(&fuzz_dir().display().to_string()));
        let rustflags = cmd.get_envs().find(|(k, _)| *k == "RUSTFLAGS").and_then(|(_, v)| v).unwrap();
        assert_eq!(rustflags, COVERAGE_RUSTFLAGS);
    }

    #[test]
    fn crashes_go_under_target_fuzz_unless_told() {
        let a = driver_args(&["elf".into(), "--execs".into(), "10".into()]);
        assert_eq!(&a[..3], ["elf", "--execs", "10"]);
        assert!(a.windows(2).any(|w| w[0] == "--crash-dir" && w[1].ends_with("target/fuzz/crashes")), "{a:?}");
        let b = driver_args(&["--crash-dir".into(), "/tmp/x".into()]);
        assert_eq!(b.iter().filter(|x| *x == "--crash-dir").count(), 1);
    }
}
