//! `ferrite bench xl`: what runtime management costs, counted in
//! instructions (issue 11's benchmarks).
//!
//! One QEMU run with `-icount shift=0,sleep=off` and one host CPU (`-smp
//! 1`), so a TSC delta, in the hypervisor or in a guest, is a count of
//! instructions of the whole emulated machine. Ferrite boots with its
//! management NIC and key (`xl::link`, as `ferrite up` and the tests), an
//! idle keeper domain and `loglvl=debug`, which turns on the service's two
//! timing lines (`mgmt.rs`); the real `ferrite xl` client code drives it
//! from the host:
//!
//! * `list`: `xl list`, [`LISTS`] times. The service logs the TSC ticks
//!   from the read that brought the request to the reply queued in its
//!   session (decoding, the domain snapshot, encoding). The client's own
//!   round trip runs on the host, outside the emulated machine, so it has
//!   no instruction count.
//! * `create`: `xl create` of `guests/xl_bench.S` (a 16 MiB PVH domain),
//!   [`CREATES`] times. The service logs the ticks from the `CreateCommit`
//!   (every file in) to the domain built, and where the domain's TSC was 0
//!   (Ferrite starts it at 0 when it builds the domain); the guest's first
//!   instruction reads its TSC, so their sum is commit to first guest
//!   instruction. The upload before the commit is paced by the host and
//!   left out.
//! * `console`: the same guest with `cmdline = "c"` prints rounds of
//!   [`ROUND_BYTES`] bytes (64-byte lines), timing each with its TSC: first
//!   with no client attached, then with `xl console` attached (the client
//!   types `c` to start them). Instructions per KiB attached, detached, and
//!   the difference: what delivering a KiB to the client costs (the
//!   service's console pushes, TCP and virtio-net). The client's copy is
//!   checked to hold every byte of each attached round.

use crate::bench::{self, ICOUNT};
use crate::build::{self, Profile};
use crate::guestasm;
use crate::modules::ModuleSpec;
use crate::qemu::QemuCommand;
use crate::xl::{self, link, Captured, Target};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite bench xl [--write] [--no-build]
        Boot Ferrite with its management service under -icount
        shift=0,sleep=off and drive it with `ferrite xl` from here: the
        instructions from xl create's commit to the new guest's first
        instruction, the service's instructions per xl list, and console
        output per KiB with and without an attached xl console. --write
        updates its section of BENCHMARKS.md; --no-build uses
        target/baremetal as it is.
";

pub const BEGIN_MARKER: &str = "<!-- ferrite bench xl: begin generated results -->";
pub const END_MARKER: &str = "<!-- ferrite bench xl: end generated results -->";

/// `xl list` calls measured.
pub const LISTS: usize = 20;
/// `xl create` calls measured.
pub const CREATES: usize = 6;
/// Console rounds per phase (`guests/xl_bench.S`, ROUNDS); the first of
/// each phase starts with a different serial-console line budget and is
/// left out.
pub const ROUNDS: usize = 4;
/// Bytes per console round (`guests/xl_bench.S`, LINES × 64).
pub const ROUND_BYTES: u64 = 512 * 64;
/// The created guests' RAM (`memory = 16`), which Ferrite zeroes.
pub const GUEST_RAM_BYTES: u64 = 16 << 20;
/// The whole run, at most.
const LIMIT: Duration = Duration::from_secs(1800);

pub use crate::bench::WriteArgs as Args;

pub fn parse_args(args: &[String]) -> Result<Args> {
    crate::bench::parse_write_args("xl", args)
}

/// The numbers after `key` in `line` (`key` followed by digits).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The service's `list answered N TSC ticks` lines, in order.
pub fn list_ticks(console: &str) -> Vec<u64> {
    console.lines().filter_map(|l| number_after(l, "mgmt: timing: list answered ")).collect()
}

/// The service's create lines: (built, TSC zero), in order.
pub fn create_ticks(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter(|l| l.contains("mgmt: timing: domain "))
        .filter_map(|l| Some((number_after(l, " built ")?, number_after(l, "its TSC is 0 at +")?)))
        .collect()
}

/// `(dom) xlbench first_tsc=N` of domain `dom`.
pub fn first_tsc(console: &str, dom: &str) -> Option<u64> {
    let prefix = format!("({dom}) xlbench first_tsc=");
    console.lines().find_map(|l| number_after(l, &prefix))
}

/// One console round: its number, ticks and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub round: u64,
    pub ticks: u64,
    pub bytes: u64,
}

/// The `xlbench round R ticks=T bytes=B` lines in `text`, in order.
pub fn rounds(text: &str) -> Vec<Round> {
    text.lines()
        .filter_map(|l| {
            Some(Round {
                round: number_after(l, "xlbench round ")?,
                ticks: number_after(l, " ticks=")?,
                bytes: number_after(l, " bytes=")?,
            })
        })
        .collect()
}

/// The bytes the client received of round `r`: from the end of its
/// `xlbench begin R` line to the start of its `xlbench round R` line.
pub fn delivered(client: &str, r: u64) -> Option<u64> {
    let begin = format!("xlbench begin {r}\n");
    let start = client.find(&begin)? + begin.len();
    let end = start + client[start..].find(&format!("xlbench round {r} "))?;
    Some((end - start) as u64)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Results {
    /// Service instructions per `xl list`.
    pub lists: Vec<u64>,
    /// Per `xl create`: (commit to domain built, commit to first guest instruction).
    pub creates: Vec<(u64, u64)>,
    /// Console rounds with no client, then with `xl console` attached
    /// (the first of each left out).
    pub detached: Vec<Round>,
    pub attached: Vec<Round>,
    /// Bytes of each attached round the client received.
    pub delivered: Vec<u64>,
    pub command: String,
    pub wall: Duration,
}

fn per_kib(r: &Round) -> f64 {
    r.ticks as f64 / (r.bytes as f64 / 1024.0)
}

impl Results {
    pub fn list_median(&self) -> Option<f64> {
        median(&self.lists.iter().map(|&t| t as f64).collect::<Vec<_>>())
    }
    pub fn built_median(&self) -> Option<f64> {
        median(&self.creates.iter().map(|c| c.0 as f64).collect::<Vec<_>>())
    }
    pub fn first_insn_median(&self) -> Option<f64> {
        median(&self.creates.iter().map(|c| c.1 as f64).collect::<Vec<_>>())
    }
    pub fn detached_per_kib(&self) -> Option<f64> {
        median(&self.detached.iter().map(per_kib).collect::<Vec<_>>())
    }
    pub fn attached_per_kib(&self) -> Option<f64> {
        median(&self.attached.iter().map(per_kib).collect::<Vec<_>>())
    }
    fn range(v: impl Iterator<Item = f64>) -> String {
        let v: Vec<f64> = v.collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        if v.is_empty() {
            "–".into()
        } else {
            format!("{lo:.0}–{hi:.0}")
        }
    }

    /// (what, median, range, samples) rows.
    pub fn rows(&self) -> Vec<(&'static str, Option<f64>, String, usize)> {
        let attached_cost = match (self.attached_per_kib(), self.detached_per_kib()) {
            (Some(a), Some(d)) => Some(a - d),
            _ => None,
        };
        vec![
            ("xl list: request read to reply queued (service)", self.list_median(), Self::range(self.lists.iter().map(|&t| t as f64)), self.lists.len()),
            ("xl create: commit to domain built", self.built_median(), Self::range(self.creates.iter().map(|c| c.0 as f64)), self.creates.len()),
            ("xl create: commit to the guest's first instruction", self.first_insn_median(), Self::range(self.creates.iter().map(|c| c.1 as f64)), self.creates.len()),
            (
                "the same, less zeroing its 16 MiB (`rep stosb`, 1 a byte)",
                self.first_insn_median().map(|m| m - GUEST_RAM_BYTES as f64),
                "".into(),
                self.creates.len(),
            ),
            ("console output per KiB, no client", self.detached_per_kib(), Self::range(self.detached.iter().map(per_kib)), self.detached.len()),
            ("console output per KiB, xl console attached", self.attached_per_kib(), Self::range(self.attached.iter().map(per_kib)), self.attached.len()),
            ("delivering a KiB to xl console (difference)", attached_cost, "".into(), self.attached.len()),
        ]
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for (what, m, range, n) in self.rows() {
            let m = m.map_or("-".to_string(), |m| format!("{m:.0}"));
            let _ = writeln!(s, "{what:<54} {m:>12} instructions (median of {n}; range {range})");
        }
        let _ = writeln!(s, "console bytes the client received per attached round: {:?} of {ROUND_BYTES}", self.delivered);
        s
    }

    pub fn markdown(&self, commit: &str, date: &str, qemu: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{BEGIN_MARKER}");
        let _ = writeln!(s, "Measured {date} at Ferrite `{commit}` with {qemu} (`ferrite bench xl --write`).\n");
        let _ = writeln!(s, "| what | instructions (median) | range | samples |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
        for (what, m, range, n) in self.rows() {
            let m = m.map_or("–".to_string(), |m| format!("{m:.0}"));
            let range = if range.is_empty() { "".to_string() } else { range };
            let _ = writeln!(s, "| {what} | {m} | {range} | {n} |");
        }
        let _ = writeln!(
            s,
            "\nThe client received {} of the {} attached rounds' {} bytes each in full.",
            self.delivered.iter().filter(|&&d| d == ROUND_BYTES).count(),
            self.delivered.len(),
            ROUND_BYTES
        );
        let _ = writeln!(s, "\nCommand (QEMU wall-clock time {:.0?}):\n\n```sh\n{}\n```", self.wall, bench::shorten(&self.command));
        let _ = writeln!(s, "{END_MARKER}");
        s
    }
}

/// Runs `ferrite xl ARGS` with the client code; its output, or an error
/// with what it printed.
fn xl(target: &Target, args: &[&str], input: Option<Box<dyn Read + Send>>, out: Captured) -> Result<String> {
    let (out, err, ok) = xl::run_captured(target, args, input, out);
    if !ok {
        bail!("xl {}: {err}", args.join(" "));
    }
    Ok(out)
}

/// Ctrl-]: `xl console`'s detach key.
const CTRL_RBRACKET: u8 = 0x1d;

/// Typed input for `xl console`: `c`, then Ctrl-] when told.
struct StartThenDetach {
    started: bool,
    detach: mpsc::Receiver<()>,
    done: bool,
}

impl Read for StartThenDetach {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        if !self.started {
            self.started = true;
            buf[0] = b'c';
            return Ok(1);
        }
        let _ = self.detach.recv();
        self.done = true;
        buf[0] = CTRL_RBRACKET;
        Ok(1)
    }
}

/// QEMU running with its console in a file.
struct Machine {
    child: Child,
    console: PathBuf,
    deadline: Instant,
}

impl Machine {
    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).replace('\r', "")
    }

    /// Waits until `ready` holds for the console text (polled; the machine
    /// may not have exited meanwhile).
    fn wait<T>(&mut self, what: &str, limit: Duration, ready: impl Fn(&str) -> Option<T>) -> Result<T> {
        let end = (Instant::now() + limit).min(self.deadline);
        loop {
            if let Some(v) = ready(&self.text()) {
                return Ok(v);
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("QEMU exited ({st}) while waiting for {what}; console in {}", self.console.display());
            }
            if Instant::now() > end {
                bail!("no {what} after {limit:?}; console in {}", self.console.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for QEMU to exit by itself.
    fn wait_exit(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, name: &str, cmdline: &str) -> Result<String> {
    let cfg = dir.join(format!("{name}.cfg"));
    let cmdline = if cmdline.is_empty() { String::new() } else { format!("cmdline = \"{cmdline}\"\n") };
    let mib = GUEST_RAM_BYTES >> 20;
    std::fs::write(&cfg, format!("name = \"{name}\"\ntype = \"pvh\"\nkernel = \"xl_bench.elf\"\nmemory = {mib}\nvcpus = 1\n{cmdline}"))?;
    Ok(cfg.display().to_string())
}

/// Boots the machine and runs the three measurements.
pub fn run(hv: &Path, dir: &Path) -> Result<Results> {
    std::fs::create_dir_all(dir)?;
    guestasm::build_guest("xl_bench", dir)?;
    let keeper_elf = guestasm::build_guest("idle", dir)?;
    let keeper = dir.join("keeper.cfg");
    std::fs::write(&keeper, "name = \"keeper\"\ntype = \"pvh\"\nkernel = \"idle.elf\"\nmemory = 16\nvcpus = 1\n")?;
    let link = link::prepare(dir, None)?;
    let session = xl::read_session_file(&link.session_file)?;
    let target = Target { host: session.host, port: session.port, secret: session.secret, key_source: "bench".into() };
    let console = dir.join("console.log");
    // The last run's console must not answer this run's waits.
    match std::fs::remove_file(&console) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", console.display()));
        }
        _ => {}
    }
    let q = QemuCommand::new()
        .machine("q35")
        .memory_mib(512)
        .smp(1)
        .debug_exit(true)
        .kernel(hv)
        .append("console=com1 loglvl=debug debug_exit=0xf4")
        .module(ModuleSpec::new(keeper, ""))
        .module(ModuleSpec::new(keeper_elf, ""))
        .module(link.key_module.clone())
        .extra_args(&link.qemu_args)
        .extra_args(["-icount", ICOUNT])
        .serial_file(&console);
    let command = q.command_line();
    std::fs::write(dir.join("qemu-command.txt"), format!("{command}\n"))?;
    eprintln!("{command}");
    let mut cmd = q.command()?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("qemu-stderr.log"))?);
    let start = Instant::now();
    let child = cmd.spawn().context("cannot start qemu-system-x86_64 (sudo apt-get install qemu-system-x86)")?;
    let mut m = Machine { child, console, deadline: start + LIMIT };
    let boot = Duration::from_secs(600);
    m.wait("the management service", boot, |t| t.contains("mgmt: ferrite xl service on TCP port").then_some(()))?;
    m.wait("a DHCP address", boot, |t| t.contains("net: address ").then_some(()))?;
    m.wait("the keeper domain", boot, |t| t.contains("(keeper) idle ready").then_some(()))?;
    let step = Duration::from_secs(300);

    eprintln!("xl list x {LISTS}...");
    for i in 0..LISTS {
        let out = xl(&target, &["list"], None, Captured::default())?;
        if !out.contains("keeper") {
            bail!("xl list shows no keeper:\n{out}");
        }
        m.wait("the service's list timing line (is loglvl=debug honoured?)", step, |t| (list_ticks(t).len() > i).then_some(()))?;
    }
    let lists = list_ticks(&m.text());

    eprintln!("xl create x {CREATES}...");
    let mut creates = Vec::new();
    for i in 0..CREATES {
        let name = format!("xlb{i}");
        let cfg = write_config(dir, &name, "")?;
        xl(&target, &["create", &cfg], None, Captured::default())?;
        let first = m.wait("the created guest's first TSC", step, |t| first_tsc(t, &name))?;
        let (built, zero) = m.wait("the service's create timing line", step, |t| create_ticks(t).get(i).copied())?;
        creates.push((built, zero + first));
        xl(&target, &["destroy", &name], None, Captured::default())?;
    }

    eprintln!("console rounds, detached then attached...");
    let cfg = write_config(dir, "xlcon", "c")?;
    xl(&target, &["create", &cfg], None, Captured::default())?;
    m.wait("the detached rounds", step, |t| t.contains("(xlcon) xlbench detached done").then_some(()))?;
    let detached: Vec<Round> = rounds(
        &m.text().lines().filter_map(|l| l.strip_prefix("(xlcon) ")).collect::<Vec<_>>().join("\n"),
    );
    let out = Captured::default();
    let (detach_tx, detach_rx) = mpsc::channel();
    let console = {
        let (target, out) = (target.clone(), out.clone());
        let input = Box::new(StartThenDetach { started: false, detach: detach_rx, done: false });
        std::thread::spawn(move || xl(&target, &["console", "xlcon"], Some(input), out))
    };
    let attached_done = m.wait("the attached rounds on the client", step, |_| out.text().contains("xlbench attached done").then_some(()));
    let _ = detach_tx.send(());
    let joined = console.join().map_err(|_| anyhow::anyhow!("the xl console thread panicked"))?;
    attached_done?;
    joined?;
    let client = out.text().replace('\r', "");
    std::fs::write(dir.join("xl-console.txt"), &client)?;
    // What came after the attach's backlog.
    let fresh = client.rsplit("xlbench detached done").next().unwrap_or("");
    let attached = rounds(fresh);
    let delivered: Vec<u64> = attached.iter().map(|r| delivered(fresh, r.round).unwrap_or(0)).collect();
    xl(&target, &["destroy", "xlcon"], None, Captured::default())?;
    let _ = xl(&target, &["destroy", "keeper"], None, Captured::default());
    m.wait_exit(step);
    let skip_first = |v: Vec<Round>| v.into_iter().filter(|r| r.round > 0).collect::<Vec<_>>();
    if detached.len() != ROUNDS || attached.len() != ROUNDS {
        bail!("expected {ROUNDS} console rounds each way, got {} detached and {} attached", detached.len(), attached.len());
    }
    Ok(Results {
        lists,
        creates,
        detached: skip_first(detached),
        attached: skip_first(attached.clone()),
        delivered: attached.iter().zip(delivered).filter(|(r, _)| r.round > 0).map(|(_, d)| d).collect(),
        command,
        wall: start.elapsed(),
    })
}

pub fn main(args: &Args) -> Result<()> {
    crate::deps::require(&[crate::deps::QEMU])?;
    let images = if args.prebuilt { bench::prebuilt_images(Profile::Release)? } else { build::build_hypervisor(Profile::Release)? };
    let dir = build::workspace_root().join("target").join("bench").join("xl");
    let results = run(&images.multiboot, &dir)?;
    print!("{}", results.text());
    if args.write {
        let path = build::workspace_root().join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let section = results.markdown(&bench::git_commit(), &bench::today(), &bench::qemu_version());
        std::fs::write(&path, bench::splice_between(&doc, BEGIN_MARKER, END_MARKER, &section))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
(ferrite) mgmt: timing: list answered 41234 TSC ticks after its bytes were read
(ferrite) mgmt: timing: list answered 40000 TSC ticks after its bytes were read
(ferrite) mgmt: timing: domain 3 built 900000 TSC ticks after its create commit; its TSC is 0 at +850000
(xlb0) xlbench first_tsc=120000
(xlcon) xlbench round 0 ticks=5000000 bytes=32768
(xlcon) xlbench round 1 ticks=4096000 bytes=32768
";

    #[test]
    fn parses_the_timing_lines() {
        assert_eq!(list_ticks(CONSOLE), [41234, 40000]);
        assert_eq!(create_ticks(CONSOLE), [(900_000, 850_000)]);
        assert_eq!(first_tsc(CONSOLE, "xlb0"), Some(120_000));
        assert_eq!(first_tsc(CONSOLE, "xlb1"), None);
        let r = rounds(CONSOLE);
        assert_eq!(r, [Round { round: 0, ticks: 5_000_000, bytes: 32768 }, Round { round: 1, ticks: 4_096_000, bytes: 32768 }]);
        assert_eq!(per_kib(&r[1]), 128_000.0);
    }

    #[test]
    fn counts_delivered_bytes_between_the_markers() {
        let client = "junk\nxlbench begin 1\nabc\ndef\nxlbench round 1 ticks=5 bytes=8\nxlbench begin 2\nxlbench round 2 ticks=1 bytes=0\n";
        assert_eq!(delivered(client, 1), Some(8));
        assert_eq!(delivered(client, 2), Some(0));
        assert_eq!(delivered(client, 3), None);
    }

    #[test]
    fn results_make_rows_and_a_section() {
        let round = |r, ticks| Round { round: r, ticks, bytes: 32768 };
        let res = Results {
            lists: vec![100, 300, 200],
            creates: vec![(10, 20), (30, 40)],
            detached: vec![round(1, 3_200_000), round(2, 3_200_000)],
            attached: vec![round(1, 4_800_000), round(2, 4_800_000)],
            delivered: vec![32768, 32768],
            command: "qemu".into(),
            wall: Duration::from_secs(3),
        };
        assert_eq!(res.list_median(), Some(200.0));
        assert_eq!(res.first_insn_median(), Some(40.0));
        let md = res.markdown("abc", "today", "QEMU 7.2");
        assert!(md.starts_with(BEGIN_MARKER) && md.trim_end().ends_with(END_MARKER), "{md}");
        assert!(md.contains("| xl list: request read to reply queued (service) | 200 | 100–300 | 3 |"), "{md}");
        assert!(md.contains("| delivering a KiB to xl console (difference) | 50000 |  | 2 |"), "{md}");
        assert!(md.contains("received 2 of the 2 attached rounds"), "{md}");
        assert!(res.text().contains("console output per KiB, no client"));
        assert!(parse_args(&["--bogus".into()]).is_err());
        assert_eq!(parse_args(&["--write".into()]).unwrap(), Args { write: true, prebuilt: false });
    }
}
