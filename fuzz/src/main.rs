//! `ferrite-fuzz`: runs fuzz targets. Built and started by `ferrite fuzz`
//! (with coverage instrumentation); see `ferrite-fuzz --help`.

use ferrite_fuzz::{coverage, engine, Report, Target, TARGETS};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
ferrite-fuzz [TARGET...] [--execs N] [--seconds S] [--seed N] [--crash-dir DIR]
             [--progress SECS] [--reproduce FILE] [--list]
    Fuzzes each TARGET (default: all) in turn until N executions (default
    1000000) or S seconds, whichever comes first; prints progress every SECS
    (default 5) and a summary. Crashing inputs go to DIR/<target>/.
    --reproduce FILE runs one TARGET on FILE once, with the panic shown.
    The exit status is 1 if any target crashed.
";

struct Args {
    targets: Vec<&'static Target>,
    opts: engine::Options,
    reproduce: Option<PathBuf>,
    list: bool,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args { targets: Vec::new(), opts: engine::Options::default(), reproduce: None, list: false };
    a.opts.execs = None;
    a.opts.progress = Some(Duration::from_secs(5));
    let mut i = 0;
    let value = |i: &mut usize, flag: &str| -> Result<String, String> {
        *i += 1;
        argv.get(*i).cloned().ok_or(format!("{flag} needs a value"))
    };
    while i < argv.len() {
        let arg = argv[i].as_str();
        let num = |v: String, flag: &str| v.replace('_', "").parse::<f64>().map_err(|_| format!("{flag} expects a number, got {v:?}"));
        match arg {
            "--execs" => a.opts.execs = Some(num(value(&mut i, arg)?, arg)? as u64),
            "--seconds" => a.opts.time = Some(Duration::from_secs_f64(num(value(&mut i, arg)?, arg)?)),
            "--seed" => a.opts.seed = num(value(&mut i, arg)?, arg)? as u64,
            "--progress" => a.opts.progress = Some(Duration::from_secs_f64(num(value(&mut i, arg)?, arg)?)).filter(|d| !d.is_zero()),
            "--crash-dir" => a.opts.crash_dir = Some(PathBuf::from(value(&mut i, arg)?)),
            "--reproduce-command" => a.opts.reproduce_command = value(&mut i, arg)?,
            "--reproduce" => a.reproduce = Some(PathBuf::from(value(&mut i, arg)?)),
            "--list" => a.list = true,
            "-h" | "--help" => return Err(String::new()),
            name if !name.starts_with('-') => {
                let t = ferrite_fuzz::find(name).ok_or_else(|| {
                    format!("unknown target {name:?}; targets: {}", TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "))
                })?;
                a.targets.push(t);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        i += 1;
    }
    if a.targets.is_empty() {
        a.targets = TARGETS.iter().collect();
    }
    if a.opts.execs.is_none() && a.opts.time.is_none() {
        a.opts.execs = Some(1_000_000);
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ferrite-fuzz: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for t in TARGETS {
            println!("{:<14} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(file) = &args.reproduce {
        return reproduce(&args.targets, file);
    }
    let coverage = coverage::edges_known();
    if coverage == 0 {
        println!("coverage: none (this build is not instrumented): a mutation-only run over the seeds");
    } else {
        println!("coverage: {coverage} instrumented edges (SanitizerCoverage trace-pc-guard)");
    }
    let mut reports = Vec::new();
    for t in &args.targets {
        println!("== {}: {}", t.name, t.about);
        let r = engine::fuzz(t, &args.opts, &mut std::io::stdout());
        println!(
            "[{}] done: {} execs in {:.1} s ({:.0}/s), corpus {}, edges {}, crashes {}",
            r.target,
            r.execs,
            r.elapsed.as_secs_f64(),
            r.execs_per_second(),
            r.corpus,
            r.edges,
            r.crashes
        );
        reports.push(r);
    }
    print_summary(&reports);
    if reports.iter().any(|r| r.crashes > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_summary(reports: &[Report]) {
    println!();
    println!("{:<14} {:>12} {:>9} {:>10} {:>7} {:>7} {:>9} {:>8}", "target", "execs", "time s", "execs/s", "corpus", "edges", "features", "crashes");
    for r in reports {
        println!(
            "{:<14} {:>12} {:>9.1} {:>10.0} {:>7} {:>7} {:>9} {:>8}",
            r.target,
            r.execs,
            r.elapsed.as_secs_f64(),
            r.execs_per_second(),
            r.corpus,
            r.edges,
            r.features,
            r.crashes
        );
    }
    for r in reports {
        for note in &r.crash_notes {
            println!("crash in {note}");
        }
    }
}

/// Runs one target on a saved input without catching its panic.
fn reproduce(targets: &[&'static Target], file: &PathBuf) -> ExitCode {
    let [target] = targets else {
        eprintln!("ferrite-fuzz: --reproduce needs exactly one target");
        return ExitCode::from(2);
    };
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ferrite-fuzz: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    println!("{}: {} bytes from {}", target.name, input.len(), file.display());
    (target.run)(&input);
    println!("no crash");
    ExitCode::SUCCESS
}
