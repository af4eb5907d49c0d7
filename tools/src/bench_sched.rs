//! `ferrite bench sched`: how soon an interrupt reaches a vCPU, and how a
//! host CPU is shared, with one and with two vCPUs per host CPU.
//!
//! Every scenario boots Ferrite under QEMU with `-icount shift=0,sleep=off`
//! (as `ferrite bench` does: a guest's TSC tick is then one instruction of
//! the emulated machine, and the figures repeat run after run) with small
//! PVH guests from `qemu-tests/guests`:
//!
//! * `ipi_latency.S` (2 vCPUs): ticks from the sender's ICR write to the
//!   target's handler, for a target spinning with IF=1 and a halted one,
//!   the sender spinning until the handler ran. With `-smp 2` each vCPU
//!   has a host CPU; with `-smp 1` they share one.
//! * `timer_latency.S`: ticks from a TSC-deadline to its handler on a
//!   halted vCPU, alone on its host CPU, and beside `spin.S` (another
//!   domain keeping the same host CPU busy).
//! * `fair_spin.S` beside `fair_waker.S` on one host CPU: the share of the
//!   CPU a spinner gets beside a vCPU that wakes every 100 us and then
//!   works 90 us, and how many of its ticks the waker handled.

use crate::bench::{self, PM_TIMER_HZ};
use crate::build::{self, Profile};
use crate::guestasm;
use crate::modules::ModuleSpec;
use crate::qemu::{QemuCommand, RunOutcome};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite bench sched [--write] [--no-build]
        Boot the scheduling scenarios under -icount shift=0,sleep=off: IPI
        latency to a running and to a halted vCPU and timer wake-up latency,
        with one and with two vCPUs per host CPU, and a spinning vCPU's share
        of the CPU beside one that wakes every 100 us. --write updates its
        section of BENCHMARKS.md; --no-build uses target/baremetal as it is.
";

pub const BEGIN_MARKER: &str = "<!-- ferrite bench sched: begin generated results -->";
pub const END_MARKER: &str = "<!-- ferrite bench sched: end generated results -->";

/// Per scenario: a few seconds of icount time at most.
const LIMIT: Duration = Duration::from_secs(600);

pub use crate::bench::WriteArgs as Args;

pub fn parse_args(args: &[String]) -> Result<Args> {
    crate::bench::parse_write_args("sched", args)
}

/// One domain of a scenario: its name, the guest it boots, its vCPUs.
#[derive(Debug, Clone, Copy)]
pub struct Dom {
    pub name: &'static str,
    pub guest: &'static str,
    pub vcpus: u32,
}

/// One QEMU boot.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub key: &'static str,
    pub host_cpus: u32,
    pub domains: &'static [Dom],
}

const IPI: Dom = Dom { name: "ipi", guest: "ipi_latency", vcpus: 2 };
const LATENCY: Dom = Dom { name: "latency", guest: "timer_latency", vcpus: 1 };
const SPIN: Dom = Dom { name: "spin", guest: "spin", vcpus: 1 };

pub const SCENARIOS: [Scenario; 5] = [
    Scenario { key: "ipi-smp2", host_cpus: 2, domains: &[IPI] },
    Scenario { key: "ipi-smp1", host_cpus: 1, domains: &[IPI] },
    Scenario { key: "timer-alone", host_cpus: 1, domains: &[LATENCY] },
    Scenario { key: "timer-spin", host_cpus: 1, domains: &[SPIN, LATENCY] },
    Scenario {
        key: "fair",
        host_cpus: 1,
        domains: &[
            Dom { name: "spin", guest: "fair_spin", vcpus: 1 },
            Dom { name: "waker", guest: "fair_waker", vcpus: 1 },
        ],
    },
];

/// A PVH domU config for `d` with 16 MiB.
pub fn config_text(d: &Dom) -> String {
    format!(
        "name = \"{}\"\ntype = \"pvh\"\nkernel = \"{}.elf\"\nmemory = 16\nvcpus = {}\non_crash = \"destroy\"\n",
        d.name, d.guest, d.vcpus
    )
}

/// `BENCH <name> <sum> <rounds>` with its `BENCH-MAX <name> <worst>` and,
/// when printed, `BENCH-ROUNDS <name> <each round>...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub name: String,
    pub sum: u64,
    pub rounds: u64,
    pub worst: u64,
    pub each: Vec<u64>,
}

impl Latency {
    pub fn average(&self) -> f64 {
        self.sum as f64 / self.rounds.max(1) as f64
    }

    pub fn median(&self) -> Option<u64> {
        let mut v = self.each.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// What one scenario's guests printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// TSC ticks per ns, from the first `BENCH-TSC` line.
    pub ticks_per_ns: Option<f64>,
    pub latencies: Vec<Latency>,
    /// `fair-spin: ran <r> of <t> pm ticks, <n> loops`.
    pub spin_ran: Option<(u64, u64, u64)>,
    /// `fair-waker: <n> ticks handled`.
    pub waker_ticks: Option<u64>,
}

fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).filter_map(|w| w.parse().ok()).collect()
}

/// Parses console text (guest lines carry a `(domain) ` prefix).
pub fn parse(text: &str) -> Report {
    let mut r = Report::default();
    let mut worst: Vec<(String, u64)> = Vec::new();
    let mut each: Vec<(String, Vec<u64>)> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| w.starts_with("BENCH")) {
            let nums: Vec<u64> = words[i + 1..].iter().filter_map(|w| w.parse().ok()).collect();
            match (words[i], words.get(i + 1), nums.as_slice()) {
                ("BENCH-TSC", _, [tsc, pm, ..]) if r.ticks_per_ns.is_none() && *pm > 0 => {
                    r.ticks_per_ns = Some(*tsc as f64 / (*pm as f64 * 1e9 / PM_TIMER_HZ as f64));
                }
                ("BENCH", Some(name), [sum, rounds]) => r.latencies.push(Latency {
                    name: name.to_string(),
                    sum: *sum,
                    rounds: *rounds,
                    worst: 0,
                    each: Vec::new(),
                }),
                ("BENCH-MAX", Some(name), [w]) => worst.push((name.to_string(), *w)),
                ("BENCH-ROUNDS", Some(name), all) => each.push((name.to_string(), all.to_vec())),
                _ => {}
            }
        } else if let Some(rest) = line.split("fair-spin: ran ").nth(1) {
            if let [ran, total, loops, ..] = numbers(rest)[..] {
                r.spin_ran = Some((ran, total, loops));
            }
        } else if let Some(rest) = line.split("fair-waker: ").nth(1) {
            r.waker_ticks = numbers(rest).first().copied();
        }
    }
    for l in &mut r.latencies {
        if let Some((_, w)) = worst.iter().find(|(n, _)| *n == l.name) {
            l.worst = *w;
        }
        if let Some((_, e)) = each.iter().find(|(n, _)| *n == l.name) {
            l.each = e.clone();
        }
    }
    r
}

/// One scenario's run.
#[derive(Debug, Clone)]
pub struct Run {
    pub scenario: Scenario,
    pub report: Report,
    pub command: String,
    pub wall: Duration,
}

pub fn scenario_qemu(hv: &Path, s: &Scenario, modules: Vec<ModuleSpec>) -> QemuCommand {
    let mut q = QemuCommand::new()
        .machine("q35")
        .memory_mib(512)
        .smp(s.host_cpus)
        .debug_exit(true)
        .kernel(hv)
        .append("console=com1 debug_exit=0xf4");
    for m in modules {
        q = q.module(m);
    }
    q.extra_args(["-icount", bench::ICOUNT])
}

fn run_scenario(hv: &Path, s: &Scenario, dir: &Path) -> Result<Run> {
    let dir = dir.join(s.key);
    std::fs::create_dir_all(&dir)?;
    let mut cfgs = Vec::new();
    let mut elfs = Vec::new();
    for d in s.domains {
        let cfg = dir.join(format!("{}.cfg", d.name));
        std::fs::write(&cfg, config_text(d))?;
        cfgs.push(ModuleSpec::new(cfg, ""));
        elfs.push(ModuleSpec::new(guestasm::build_guest(d.guest, &dir)?, ""));
    }
    cfgs.extend(elfs);
    let start = Instant::now();
    let (text, outcome, command) = bench::run_captured(scenario_qemu(hv, s, cfgs), &dir, LIMIT)?;
    let wall = start.elapsed();
    if outcome != RunOutcome::Success || text.contains("FAIL") {
        bail!("scenario {} did not finish cleanly ({}); console in {}", s.key, outcome.describe(), dir.display());
    }
    Ok(Run { scenario: *s, report: parse(&text), command, wall })
}

/// One table row: what, vCPUs per host CPU, the latency.
pub struct Row {
    pub what: &'static str,
    pub per_cpu: u32,
    pub latency: Latency,
    pub ticks_per_ns: f64,
}

impl Row {
    /// The median round in instructions (None: the guest printed no rounds).
    pub fn median(&self) -> Option<f64> {
        self.latency.median().map(|m| m as f64 / self.ticks_per_ns)
    }
}

const ROWS: [(&str, &str, &str); 6] = [
    ("IPI to a running vCPU", "ipi-smp2", "ipi_running"),
    ("IPI to a running vCPU", "ipi-smp1", "ipi_running"),
    ("IPI to a halted vCPU (wake-up to handler)", "ipi-smp2", "ipi_halted"),
    ("IPI to a halted vCPU (wake-up to handler)", "ipi-smp1", "ipi_halted"),
    ("timer wake-up of a halted vCPU", "timer-alone", "timer_wakeup"),
    ("timer wake-up of a halted vCPU", "timer-spin", "timer_wakeup"),
];

pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut out = Vec::new();
    for (what, key, name) in ROWS {
        let Some(run) = runs.iter().find(|r| r.scenario.key == key) else { continue };
        let Some(l) = run.report.latencies.iter().find(|l| l.name == name) else { continue };
        let vcpus: u32 = run.scenario.domains.iter().map(|d| d.vcpus).sum();
        out.push(Row {
            what,
            per_cpu: vcpus / run.scenario.host_cpus,
            latency: l.clone(),
            ticks_per_ns: run.report.ticks_per_ns.unwrap_or(1.0),
        });
    }
    out
}

/// The fairness scenario in a sentence.
pub fn fairness_text(runs: &[Run]) -> Option<String> {
    let r = &runs.iter().find(|r| r.scenario.key == "fair")?.report;
    let (ran, total, loops) = r.spin_ran?;
    let ticks = r.waker_ticks?;
    Some(format!(
        "spinner ran {:.1} % of its 300 ms ({ran} of {total} PM ticks, {loops} loops); the waker handled {ticks} of \
         its 3000 ticks ({:.1} %)",
        100.0 * ran as f64 / total.max(1) as f64,
        100.0 * ticks as f64 / 3000.0
    ))
}

pub fn markdown(runs: &[Run], commit: &str, date: &str, qemu: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN_MARKER}");
    let _ = writeln!(s, "Measured {date} at Ferrite `{commit}` with {qemu} (`ferrite bench sched --write`).\n");
    let _ = writeln!(s, "| latency | vCPUs per host CPU | average | median | worst | rounds |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows(runs) {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {:.0} | {} |",
            r.what,
            r.per_cpu,
            r.latency.average() / r.ticks_per_ns,
            r.median().map_or("–".to_string(), |m| format!("{m:.0}")),
            r.latency.worst as f64 / r.ticks_per_ns,
            r.latency.rounds
        );
    }
    let _ = writeln!(s, "\n(instructions, i.e. TSC ticks under icount, from the send or the deadline to the handler)");
    if let Some(f) = fairness_text(runs) {
        let _ = writeln!(s, "\nFairness (`fair_spin.S` beside `fair_waker.S`, one host CPU): {f}.");
    }
    let _ = writeln!(s, "\nCommands (QEMU wall-clock time in brackets):\n\n```sh");
    for r in runs {
        let _ = writeln!(s, "# {} ({:.0?})\n{}", r.scenario.key, r.wall, bench::shorten(&r.command));
    }
    let _ = writeln!(s, "```");
    let _ = writeln!(s, "{END_MARKER}");
    s
}

pub fn text(runs: &[Run]) -> String {
    let mut s = String::new();
    for r in rows(runs) {
        let _ = writeln!(
            s,
            "{:<44} {} per host CPU: avg {:>10.0}  median {:>10}  worst {:>10.0} instructions ({} rounds)",
            r.what,
            r.per_cpu,
            r.latency.average() / r.ticks_per_ns,
            r.median().map_or("-".to_string(), |m| format!("{m:.0}")),
            r.latency.worst as f64 / r.ticks_per_ns,
            r.latency.rounds
        );
    }
    if let Some(f) = fairness_text(runs) {
        let _ = writeln!(s, "fairness: {f}");
    }
    s
}

/// Replaces this bench's section of `doc` (or appends one).
pub fn splice(doc: &str, section: &str) -> String {
    bench::splice_between(doc, BEGIN_MARKER, END_MARKER, section)
}

pub fn main(args: &Args) -> Result<()> {
    crate::deps::require(&[crate::deps::QEMU])?;
    let images =
        if args.prebuilt { bench::prebuilt_images(Profile::Release)? } else { build::build_hypervisor(Profile::Release)? };
    let dir = build::workspace_root().join("target").join("bench").join("sched");
    std::fs::create_dir_all(&dir)?;
    let mut runs = Vec::new();
    for s in &SCENARIOS {
        let run = run_scenario(&images.multiboot, s, &dir)?;
        eprintln!("{}: {:?} (wall {:.0?})", s.key, run.report, run.wall);
        runs.push(run);
    }
    print!("{}", text(&runs));
    if args.write {
        let path = build::workspace_root().join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let section = markdown(&runs, &bench::git_commit(), &bench::today(), &bench::qemu_version());
        std::fs::write(&path, splice(&doc, &section)).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
(ferrite) domain 1 (ipi) started
(ipi) BENCH-TSC 10000000 35795
(ipi) BENCH ipi_running 250000 50
(ipi) BENCH-MAX ipi_running 9000
(ipi) BENCH ipi_halted 500000 50
(ipi) BENCH-MAX ipi_halted 12000
(ipi) BENCH-ROUNDS ipi_halted 10000 9000 12000 
(spin) fair-spin: ran 500000 of 1073864 pm ticks, 4000000 loops
(waker) fair-waker: 1400 ticks handled
";

    #[test]
    fn parses_the_guests_lines() {
        let r = parse(SAMPLE);
        assert!((r.ticks_per_ns.unwrap() - 1.0).abs() < 1e-3);
        assert_eq!(r.latencies.len(), 2);
        let halted = Latency { name: "ipi_halted".into(), sum: 500_000, rounds: 50, worst: 12_000, each: vec![10_000, 9000, 12_000] };
        assert_eq!(r.latencies[1], halted);
        assert_eq!(r.latencies[1].median(), Some(10_000));
        assert_eq!(r.latencies[0].average(), 5000.0);
        assert_eq!(r.latencies[0].median(), None);
        assert_eq!(r.spin_ran, Some((500_000, 1_073_864, 4_000_000)));
        assert_eq!(r.waker_ticks, Some(1400));
        assert_eq!(parse("BENCH x y").latencies, vec![]);
    }

    #[test]
    fn rows_and_sections() {
        let run = |key: &str| Run {
            scenario: *SCENARIOS.iter().find(|s| s.key == key).unwrap(),
            report: parse(SAMPLE),
            command: "qemu".into(),
            wall: Duration::from_secs(1),
        };
        let runs = vec![run("ipi-smp2"), run("ipi-smp1"), run("fair")];
        let rows = rows(&runs);
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].per_cpu, rows[1].per_cpu), (1, 2));
        let md = markdown(&runs, "abc", "today", "QEMU");
        assert!(md.contains("| IPI to a halted vCPU (wake-up to handler) | 2 | 10000 | 10000 | 12000 | 50 |"), "{md}");
        assert!(md.contains("| IPI to a running vCPU | 1 | 5000 | – | 9000 | 50 |"), "{md}");
        assert!(md.contains("spinner ran 46.6 %"), "{md}");
        let doc = format!("# B\n\ntext\n\n{md}\nafter\n");
        assert_eq!(splice(&doc, "X\n"), "# B\n\ntext\n\nX\n\nafter\n");
        assert!(splice("# B\n", "X\n").ends_with("\n\nX\n"));
        assert!(config_text(&IPI).contains("vcpus = 2"));
    }
}
