//! `ferrite bench`: what Ferrite's exits cost, counted in instructions.
//!
//! QEMU runs with `-icount shift=0,sleep=off`: its virtual clock advances
//! exactly 1 ns per executed instruction of the emulated machine, and the
//! TSC follows that clock. The bench guest (`qemu-tests/guests/bench.S`)
//! reads the TSC around 1000 round trips of each exit kind and prints
//! `BENCH <name> <ticks> <iterations>`; it also measures the TSC against
//! the ACPI PM timer (`BENCH-TSC <tsc ticks> <pm ticks>`), which gives the
//! TSC rate in ticks per ns and so turns ticks into instructions.
//!
//! The instructions counted are those of the whole emulated (L1) machine
//! while the guest waits: guest instructions, the SVM world switch as QEMU
//! executes it (VMRUN and #VMEXIT are one instruction each, however much
//! state they move) and every instruction Ferrite runs to handle the exit.
//!
//! The HVM scenario boots SeaBIOS in an HVM domU whose PC devices live in
//! its stub domain, from a virtio-blk-backed IDE disk whose boot sectors are
//! `qemu-tests/guests/bootsector/bench_hvm.S`. That guest times, in the same
//! run, a port read answered by the stub (`inb 0x1F7`, IDE status) beside
//! one answered in the hypervisor (`inl 0xB008`, PM timer), and IDE
//! bus-master DMA reads it programs itself against a `rep movsd` copy of
//! the same bytes (`BENCH-BYTES <name> <ticks> <bytes>` lines).
//!
//! Optionally (when Debian's kernel and busybox are cached) it also boots
//! Linux as dom0 to a one-line init that prints `/proc/uptime`: under icount
//! that uptime is the number of instructions (in ns) Linux needed from its
//! clock start to init. Ferrite runs with `console_timestamps=boot`, so the
//! `(dom0) FERRITE-BENCH-INIT ...` line also carries the time since
//! Ferrite's own entry: hypervisor boot, dom0 build and all of Linux's boot.
//!
//! The installed-system scenario (issue 15; when the Debian packages are
//! cached or can be fetched, and GRUB's BIOS files are installed) builds the
//! disk of [`crate::installed_disk`] (MBR, GRUB i386-pc, ext4 root with
//! Debian's cloud kernel and a busybox initramfs) and boots it twice under
//! icount: as the IDE disk of an HVM domU (2 vCPUs, 256 MiB, SeaBIOS, the
//! IDE model in its stub domain) on a one-CPU Ferrite with
//! `console_timestamps=boot`, and on bare QEMU (`-machine pc`, one CPU: see
//! [`INSTALLED_BARE_CPUS`]). From Ferrite's timestamps (1 ns = 1
//! instruction) it takes the domain's creation, GRUB's `Welcome to GRUB!`
//! and ``Booting `linux'`` lines and the root's `FERRITE-ROOT-INIT ...
//! uptime=<s>` line; Linux's clock started at that line's stamp minus the
//! uptime. Bare QEMU has no clock but Linux's own: its uptime at init.

use crate::build::{self, Profile};
use crate::guestasm;
use crate::modules::ModuleSpec;
use crate::qemu::{QemuCommand, RunOutcome};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The ACPI PM timer rate.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// What `-icount` is set to.
pub const ICOUNT: &str = "shift=0,sleep=off";

/// Markers around the generated part of BENCHMARKS.md.
pub const BEGIN_MARKER: &str = "<!-- ferrite bench: begin generated results -->";
pub const END_MARKER: &str = "<!-- ferrite bench: end generated results -->";

/// Wall-clock limits: the exit benchmark takes under a minute; Linux under
/// icount takes several.
const EXIT_BENCH_LIMIT: Duration = Duration::from_secs(300);
const LINUX_BENCH_LIMIT: Duration = Duration::from_secs(1500);
/// The HVM benchmark boots SeaBIOS first: a few minutes at most.
const HVM_BENCH_LIMIT: Duration = Duration::from_secs(600);
/// Each boot of the installed disk: SeaBIOS, GRUB and Linux to init.
const INSTALLED_BENCH_LIMIT: Duration = Duration::from_secs(1500);

/// The installed-system scenario's domain name, disk (virtio-blk serial),
/// vCPUs and memory: what qemu-tests/tests/hvm_installed.rs boots.
pub const INSTALLED_GUEST: &str = "installed";
pub const INSTALLED_DISK: &str = "disk0";
pub const INSTALLED_VCPUS: u32 = 2;
pub const INSTALLED_MEMORY_MIB: u32 = 256;
/// CPUs of the bare-QEMU boot: one, because with two QEMU 7.2's icount
/// round robin never gets Linux past `x86: Booting SMP configuration:`
/// (its clock stops; seen with this kernel, `-cpu qemu64`, `-smp 2`).
pub const INSTALLED_BARE_CPUS: u32 = 1;
/// Issue 15's target: from GRUB's menu to the kernel's start in at most
/// this many seconds of icount time.
pub const INSTALLED_TARGET_S: f64 = 2.0;

/// The HVM benchmark's domain and disk names.
pub const HVM_GUEST: &str = "benchhvm";
pub const HVM_DISK: &str = "benchdisk";
/// Its disk: 16 MiB; the boot image at sector 0, then every sector from
/// [`HVM_DATA_LBA`] on starts with its own LBA (what the guest checks).
pub const HVM_DISK_BYTES: usize = 16 << 20;
pub const HVM_DATA_LBA: usize = 2048;

pub const USAGE: &str = "\
    ferrite bench [--write] [--no-hvm] [--no-linux] [--no-installed] [--no-build] [--debug]
        Build, then boot the bench guest (qemu-tests/guests/bench.S) as a domU
        under QEMU with -icount shift=0,sleep=off and print what each exit
        costs in instructions (PM timer port read, UART LSR read, CPUID, LAPIC
        MMIO read), and the TSC-deadline timer interrupt's delivery latency.
        Then boot an HVM guest (SeaBIOS, boot code from
        qemu-tests/guests/bootsector/bench_hvm.S on an emulated IDE disk) and
        print the I/O-request round trip through its stub domain beside an
        in-hypervisor port read, and IDE bus-master DMA against a plain copy,
        in instructions per MiB (--no-hvm skips it). If Debian's Linux and
        busybox are cached, also boot Linux as dom0 to init (--no-linux skips
        it). If they are cached or can be fetched, also build an installed
        system disk (GRUB, ext4, Debian's kernel) and time its boot as an HVM
        guest from domain creation through GRUB to Linux's init, and on bare
        QEMU (--no-installed skips it). --no-build uses the images already in
        target/baremetal instead of running cargo. --write updates
        BENCHMARKS.md.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    pub profile: Profile,
    /// Update BENCHMARKS.md.
    pub write: bool,
    /// Run the HVM scenario (stub-domain round trip, IDE DMA).
    pub hvm: bool,
    /// Boot Linux to init too (when its packages are cached).
    pub linux: bool,
    /// Boot the installed-system disk (when its packages are available).
    pub installed: bool,
    /// Use the images in target/baremetal as they are (no cargo build).
    pub prebuilt: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            profile: Profile::Release,
            write: false,
            hvm: true,
            linux: true,
            installed: true,
            prebuilt: false,
        }
    }
}

/// Parses the arguments after `bench`.
pub fn parse_args(args: &[String]) -> Result<BenchArgs> {
    let mut b = BenchArgs::default();
    for a in args {
        match a.as_str() {
            "--write" => b.write = true,
            "--no-linux" => b.linux = false,
            "--no-hvm" => b.hvm = false,
            "--no-installed" => b.installed = false,
            "--no-build" => b.prebuilt = true,
            "--debug" => b.profile = Profile::Debug,
            other => bail!("unknown option {other:?} for `ferrite bench` (see `ferrite help`)"),
        }
    }
    Ok(b)
}

/// One `BENCH` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchLine {
    pub name: String,
    pub ticks: u64,
    pub iterations: u64,
}

/// Everything the bench guest printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// (TSC ticks, PM timer ticks) over the calibration interval.
    pub tsc_vs_pm: Option<(u64, u64)>,
    pub lines: Vec<BenchLine>,
    /// `BENCH-SUM <name> <ticks> <iterations>`: all rounds together (the
    /// HVM guest; `lines` has its best round).
    pub sums: Vec<BenchLine>,
    /// `BENCH-BYTES <name> <ticks> <bytes>`: the best round of a transfer
    /// (`iterations` holds the bytes).
    pub bytes: Vec<BenchLine>,
    /// `BENCH-BYTES-SUM <name> <ticks> <bytes>`: all rounds together.
    pub bytes_sums: Vec<BenchLine>,
    /// The guest printed `bench done`.
    pub done: bool,
}

/// Line tags the bench guests print.
const TAGS: [&str; 5] = ["BENCH", "BENCH-TSC", "BENCH-SUM", "BENCH-BYTES", "BENCH-BYTES-SUM"];

/// Parses console text (lines may carry a `(domain) ` prefix).
pub fn parse_guest_output(text: &str) -> GuestReport {
    let mut r = GuestReport::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| TAGS.contains(w)) else {
            if line.contains("bench done") {
                r.done = true;
            }
            continue;
        };
        let rest = &words[i + 1..];
        match (words[i], rest) {
            ("BENCH-TSC", [tsc, pm, ..]) => {
                if let (Ok(t), Ok(p)) = (tsc.parse(), pm.parse()) {
                    r.tsc_vs_pm = Some((t, p));
                }
            }
            (tag, [name, ticks, iters, ..]) => {
                if let (Ok(ticks), Ok(iterations)) = (ticks.parse(), iters.parse()) {
                    let list = match tag {
                        "BENCH" => &mut r.lines,
                        "BENCH-SUM" => &mut r.sums,
                        "BENCH-BYTES" => &mut r.bytes,
                        "BENCH-BYTES-SUM" => &mut r.bytes_sums,
                        _ => continue,
                    };
                    list.push(BenchLine {
                        name: name.to_string(),
                        ticks,
                        iterations,
                    });
                }
            }
            _ => {}
        }
    }
    r
}

/// One row of the results table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub what: &'static str,
    pub ticks: u64,
    pub iterations: u64,
    /// Instructions per iteration, loop included.
    pub per_op: f64,
    /// Minus the empty loop's cost per iteration.
    pub net: f64,
}

/// The numbers derived from a [`GuestReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// TSC ticks per ns (1.0 when the guest's TSC runs at 1 GHz).
    pub ticks_per_ns: f64,
    pub rows: Vec<Row>,
}

/// What each benchmark measures.
pub fn describe(name: &str) -> &'static str {
    match name {
        "loop_nop" => "empty loop (`nop; dec; jnz`): the baseline",
        "pm_timer_inl" => "`inl 0xB008`: ACPI PM timer, handled in the hypervisor",
        "uart_lsr_inb" => "`inb 0x3FD`: UART line status, handled in the hypervisor",
        "cpuid_hv_leaf" => "`cpuid` leaf 0x40000000 (\"FerriteHV\")",
        "lapic_mmio_read" => {
            "`mov (%ebx),%eax` from LAPIC 0xFEE00030: nested page fault + instruction decode"
        }
        "lapic_timer_irq" => {
            "TSC-deadline timer interrupt: ticks from the deadline to the guest's handler \
             (IA32_TSC_DEADLINE = rdtsc + 20000, `sti; hlt`; one round, the sum over all \
             iterations, nothing subtracted)"
        }
        "ide_status_inb" => {
            "`inb 0x1F7`: IDE status, answered by the IDE model in the stub domain \
             (I/O request round trip)"
        }
        "stub_unclaimed_inb" => {
            "`inb 0x240`: a port no device decodes; the stub domain answers 0xFF \
             (the round trip without a device model)"
        }
        "ide_dma_read_64k" => {
            "READ DMA (0xC8), 128 sectors = 64 KiB per command, one PRD entry; \
             bus master programmed and polled by the guest"
        }
        "ide_dma_read_ext_1m" => {
            "READ DMA EXT (0x25), 2048 sectors = 1 MiB per command, 16 PRD entries"
        }
        "rep_movsd_copy" => "`rep movsd` of as many bytes within guest memory: the baseline",
        _ => "",
    }
}

/// Whether a benchmark's iterations run inside the `nop; dec; jnz`-style
/// loop whose cost the "minus loop" column subtracts. `lapic_timer_irq`
/// measures from the deadline to the handler, which contains no loop.
pub fn subtracts_loop(name: &str) -> bool {
    !matches!(name, "loop_nop" | "lapic_timer_irq")
}

/// Ticks → instructions per operation. Fails when a line is missing.
pub fn compute(report: &GuestReport) -> Result<Results> {
    let (tsc, pm) = report
        .tsc_vs_pm
        .context("the bench guest printed no BENCH-TSC line")?;
    if tsc == 0 || pm == 0 {
        bail!("bad BENCH-TSC line: {tsc} TSC ticks over {pm} PM timer ticks");
    }
    // ticks per ns = tsc / (pm / PM_HZ seconds) / 1e9.
    let ticks_per_ns = tsc as f64 * PM_TIMER_HZ as f64 / pm as f64 / 1e9;
    let per_op = |l: &BenchLine| l.ticks as f64 / ticks_per_ns / l.iterations.max(1) as f64;
    let base = report
        .lines
        .iter()
        .find(|l| l.name == "loop_nop")
        .map(per_op)
        .unwrap_or(0.0);
    if report.lines.is_empty() {
        bail!("the bench guest printed no BENCH lines");
    }
    let rows = report
        .lines
        .iter()
        .map(|l| {
            let p = per_op(l);
            Row {
                name: l.name.clone(),
                what: describe(&l.name),
                ticks: l.ticks,
                iterations: l.iterations,
                per_op: p,
                net: if subtracts_loop(&l.name) { p - base } else { p },
            }
        })
        .collect();
    Ok(Results { ticks_per_ns, rows })
}

/// The Markdown table of results.
pub fn markdown_table(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("| benchmark | what one iteration does | TSC ticks (best of 5 rounds) | iterations | instructions / iteration | minus loop |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.1} | {:.1} |",
            row.name, row.what, row.ticks, row.iterations, row.per_op, row.net
        );
    }
    s
}

/// The plain-text table for the terminal.
pub fn text_table(r: &Results) -> String {
    let mut s = format!(
        "TSC: {:.4} ticks per ns of icount time (1 ns = 1 instruction)\n",
        r.ticks_per_ns
    );
    let _ = writeln!(
        s,
        "{:<18} {:>12} {:>6} {:>12} {:>12}",
        "benchmark", "ticks", "iters", "insns/iter", "minus loop"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<18} {:>12} {:>6} {:>12.1} {:>12.1}",
            row.name, row.ticks, row.iterations, row.per_op, row.net
        );
    }
    s
}

/// The HVM scenario's round trip whose target is checked, and the
/// in-hypervisor read printed beside it.
pub const HVM_ROUND_TRIP: &str = "ide_status_inb";
pub const HVM_LOCAL_READ: &str = "pm_timer_inl";
/// The DMA figure whose target is checked, and its baseline.
pub const HVM_DMA: &str = "ide_dma_read_64k";
pub const HVM_COPY: &str = "rep_movsd_copy";
/// Targets: a stub round trip in at most this many instructions, DMA in
/// at most this many times the instructions of the copy.
pub const ROUND_TRIP_TARGET: f64 = 4000.0;
pub const DMA_TARGET_RATIO: f64 = 1.5;

const MIB: f64 = (1u64 << 20) as f64;

/// A port-read row of the HVM scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct TripRow {
    pub name: String,
    pub what: &'static str,
    /// Ticks of the best round, and reads per round.
    pub ticks: u64,
    pub iterations: u64,
    /// Instructions per read in the best round, loop included.
    pub per_op: f64,
    /// The same minus the empty loop.
    pub net: f64,
    /// Minus the loop, averaged over every read of every round (`BENCH-SUM`;
    /// includes whatever else ran meanwhile, e.g. Ferrite's 10 ms tick).
    pub mean_net: Option<f64>,
    /// Reads in all rounds.
    pub total_iterations: Option<u64>,
}

/// A transfer row of the HVM scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRow {
    pub name: String,
    pub what: &'static str,
    /// Ticks of the best round, and bytes per round.
    pub ticks: u64,
    pub bytes: u64,
    /// Instructions per MiB in the best round.
    pub per_mib: f64,
    /// Instructions per MiB over all rounds.
    pub mean_per_mib: Option<f64>,
    /// `per_mib` over the copy's `per_mib`.
    pub vs_copy: Option<f64>,
}

/// The numbers of the HVM scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct HvmResults {
    pub ticks_per_ns: f64,
    pub trips: Vec<TripRow>,
    pub transfers: Vec<TransferRow>,
}

impl HvmResults {
    fn trip(&self, name: &str) -> Option<&TripRow> {
        self.trips.iter().find(|r| r.name == name)
    }

    fn transfer(&self, name: &str) -> Option<&TransferRow> {
        self.transfers.iter().find(|r| r.name == name)
    }

    /// The stub round trip (best round, minus loop) and whether it meets
    /// [`ROUND_TRIP_TARGET`].
    pub fn round_trip(&self) -> Option<(f64, bool)> {
        let t = self.trip(HVM_ROUND_TRIP)?.net;
        Some((t, t <= ROUND_TRIP_TARGET))
    }

    /// DMA over copy and whether it meets [`DMA_TARGET_RATIO`].
    pub fn dma_ratio(&self) -> Option<(f64, bool)> {
        let r = self.transfer(HVM_DMA)?.vs_copy?;
        Some((r, r <= DMA_TARGET_RATIO))
    }
}

/// Ticks → instructions for the HVM guest's report. Fails when a line the
/// targets need is missing.
pub fn compute_hvm(report: &GuestReport) -> Result<HvmResults> {
    let (tsc, pm) = report
        .tsc_vs_pm
        .context("the HVM bench guest printed no BENCH-TSC line")?;
    if tsc == 0 || pm == 0 {
        bail!("bad BENCH-TSC line: {tsc} TSC ticks over {pm} PM timer ticks");
    }
    let ticks_per_ns = tsc as f64 * PM_TIMER_HZ as f64 / pm as f64 / 1e9;
    let per_op = |l: &BenchLine| l.ticks as f64 / ticks_per_ns / l.iterations.max(1) as f64;
    let find = |list: &[BenchLine], name: &str| list.iter().find(|l| l.name == name).cloned();
    let base = find(&report.lines, "loop_nop").map(|l| per_op(&l)).unwrap_or(0.0);
    let base_mean = find(&report.sums, "loop_nop").map(|l| per_op(&l)).unwrap_or(base);
    let trips: Vec<TripRow> = report
        .lines
        .iter()
        .map(|l| {
            let p = per_op(l);
            let loop_row = l.name == "loop_nop";
            let sum = find(&report.sums, &l.name);
            TripRow {
                name: l.name.clone(),
                what: describe(&l.name),
                ticks: l.ticks,
                iterations: l.iterations,
                per_op: p,
                net: if loop_row { p } else { p - base },
                mean_net: sum.as_ref().map(|s| if loop_row { per_op(s) } else { per_op(s) - base_mean }),
                total_iterations: sum.map(|s| s.iterations),
            }
        })
        .collect();
    let per_mib = |l: &BenchLine| l.ticks as f64 / ticks_per_ns / (l.iterations.max(1) as f64 / MIB);
    let copy = find(&report.bytes, HVM_COPY).map(|l| per_mib(&l));
    let transfers: Vec<TransferRow> = report
        .bytes
        .iter()
        .map(|l| {
            let p = per_mib(l);
            TransferRow {
                name: l.name.clone(),
                what: describe(&l.name),
                ticks: l.ticks,
                bytes: l.iterations,
                per_mib: p,
                mean_per_mib: find(&report.bytes_sums, &l.name).map(|s| per_mib(&s)),
                vs_copy: copy.filter(|c| *c > 0.0).map(|c| p / c),
            }
        })
        .collect();
    let r = HvmResults { ticks_per_ns, trips, transfers };
    for name in [HVM_ROUND_TRIP, HVM_LOCAL_READ] {
        if r.trip(name).is_none() {
            bail!("the HVM bench guest printed no BENCH {name} line");
        }
    }
    for name in [HVM_DMA, HVM_COPY] {
        if r.transfer(name).is_none() {
            bail!("the HVM bench guest printed no BENCH-BYTES {name} line");
        }
    }
    Ok(r)
}

fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn opt0(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The two target lines of the HVM scenario, in words.
pub fn hvm_verdicts(r: &HvmResults) -> Vec<String> {
    let mut v = Vec::new();
    if let (Some((trip, ok)), Some(local)) = (r.round_trip(), r.trip(HVM_LOCAL_READ)) {
        v.push(format!(
            "I/O request round trip through the stub domain (`{HVM_ROUND_TRIP}`, minus loop): {trip:.0} instructions \
             (target <= {ROUND_TRIP_TARGET:.0}: {}); in-hypervisor port read in the same guest (`{HVM_LOCAL_READ}`): \
             {:.0} instructions; the stub costs {:.0} more",
            met(ok),
            local.net,
            trip - local.net
        ));
    }
    if let (Some((ratio, ok)), Some(dma), Some(copy)) = (r.dma_ratio(), r.transfer(HVM_DMA), r.transfer(HVM_COPY)) {
        v.push(format!(
            "IDE bus-master DMA read (`{HVM_DMA}`): {:.0} instructions per MiB; `rep movsd` copy: {:.0} per MiB; \
             ratio {ratio:.2} (target <= {DMA_TARGET_RATIO}: {})",
            dma.per_mib,
            copy.per_mib,
            met(ok)
        ));
    }
    v
}

/// The HVM scenario's Markdown tables.
pub fn hvm_markdown_tables(r: &HvmResults) -> String {
    let mut s = String::new();
    s.push_str("| port read | what one iteration does | TSC ticks (best round) | reads per round | instructions / read | minus loop | minus loop, mean of all reads |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for row in &r.trips {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.1} | {:.1} | {}{} |",
            row.name,
            row.what,
            row.ticks,
            row.iterations,
            row.per_op,
            row.net,
            opt1(row.mean_net),
            row.total_iterations.map_or_else(String::new, |n| format!(" ({n})"))
        );
    }
    s.push('\n');
    s.push_str("| transfer | what | TSC ticks (best round) | bytes per round | instructions / MiB (best round) | mean of all rounds | × copy |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for row in &r.transfers {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.0} | {} | {} |",
            row.name,
            row.what,
            row.ticks,
            row.bytes,
            row.per_mib,
            opt0(row.mean_per_mib),
            row.vs_copy.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
        );
    }
    s
}

/// The HVM scenario's plain-text tables.
pub fn hvm_text_table(r: &HvmResults) -> String {
    let mut s = format!(
        "HVM guest (SeaBIOS + stub domain) TSC: {:.4} ticks per ns of icount time\n",
        r.ticks_per_ns
    );
    let _ = writeln!(
        s,
        "{:<20} {:>12} {:>6} {:>12} {:>12} {:>12}",
        "port read", "ticks", "iters", "insns/read", "minus loop", "mean, all"
    );
    for row in &r.trips {
        let _ = writeln!(
            s,
            "{:<20} {:>12} {:>6} {:>12.1} {:>12.1} {:>12}",
            row.name,
            row.ticks,
            row.iterations,
            row.per_op,
            row.net,
            opt1(row.mean_net)
        );
    }
    let _ = writeln!(
        s,
        "{:<20} {:>12} {:>9} {:>12} {:>12} {:>7}",
        "transfer", "ticks", "bytes", "insns/MiB", "mean, all", "x copy"
    );
    for row in &r.transfers {
        let _ = writeln!(
            s,
            "{:<20} {:>12} {:>9} {:>12.0} {:>12} {:>7}",
            row.name,
            row.ticks,
            row.bytes,
            row.per_mib,
            opt0(row.mean_per_mib),
            row.vs_copy.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
        );
    }
    for v in hvm_verdicts(r) {
        let _ = writeln!(s, "{v}");
    }
    s
}

/// One run of the HVM scenario.
#[derive(Debug, Clone)]
pub struct HvmRun {
    pub results: HvmResults,
    pub command: String,
    pub wall: Duration,
}

/// SeaBIOS as QEMU ships it (`bios-256k.bin`).
pub fn seabios_image() -> Result<PathBuf> {
    ["/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/bios-256k.bin"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("SeaBIOS (bios-256k.bin) is not installed: sudo apt-get install seabios (it comes with qemu-system-x86)")
}

/// The HVM benchmark's disk: `boot` at sector 0, zeros up to
/// [`HVM_DATA_LBA`], then sectors whose first dword is their LBA.
pub fn hvm_disk_image(boot: &[u8]) -> Result<Vec<u8>> {
    if boot.len() > HVM_DATA_LBA * 512 {
        bail!("the boot image ({} bytes) runs into the data at sector {HVM_DATA_LBA}", boot.len());
    }
    let mut disk = vec![0u8; HVM_DISK_BYTES];
    disk[..boot.len()].copy_from_slice(boot);
    for (lba, sector) in disk.chunks_exact_mut(512).enumerate().skip(HVM_DATA_LBA) {
        sector[..4].copy_from_slice(&(lba as u32).to_le_bytes());
        sector[508..].copy_from_slice(&(!(lba as u32)).to_le_bytes());
    }
    Ok(disk)
}

/// The xl config of the HVM benchmark guest.
pub fn hvm_config_text() -> String {
    format!(
        "# written by `ferrite bench`\nname = \"{HVM_GUEST}\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\n\
         disk = [ 'phy:{HVM_DISK},hda,w' ]\non_crash = \"destroy\"\n"
    )
}

/// The QEMU command for the HVM benchmark: one CPU (so the guest and its
/// stub domain take turns on it and the round trip includes both
/// switches), icount, Ferrite with the HVM config, the stub-domain image,
/// SeaBIOS, and the disk as a virtio-blk device.
pub fn hvm_bench_qemu(hv: &Path, cfg: &Path, stubdom: &Path, bios: &Path, disk: &Path) -> QemuCommand {
    let file = disk.display().to_string().replace(',', ",,");
    QemuCommand::new()
        .machine("q35")
        .memory_mib(512)
        .smp(1)
        .debug_exit(true)
        .kernel(hv)
        // The emulated PM timer is one of the exits measured.
        .append("console=com1 debug_exit=0xf4 pm_timer=emulated")
        .module(ModuleSpec::new(cfg, ""))
        .module(ModuleSpec::new(stubdom, ""))
        .module(ModuleSpec::new(bios, ""))
        .extra_args([
            "-drive".to_string(),
            format!("file={file},if=none,id={HVM_DISK},format=raw"),
            "-device".to_string(),
            format!("virtio-blk-pci,drive={HVM_DISK},serial={HVM_DISK}"),
            "-icount".to_string(),
            ICOUNT.to_string(),
        ])
}

/// Boots the HVM benchmark guest and computes its figures.
fn hvm_bench(images: &build::HypervisorImages, dir: &Path) -> Result<HvmRun> {
    let hdir = dir.join("hvm");
    std::fs::create_dir_all(&hdir)?;
    let source = guestasm::guests_dir().join("bootsector").join("bench_hvm.S");
    let boot = guestasm::assemble_boot_image(&source, &hdir.join("bench_hvm.bin"))?;
    let disk = hdir.join("disk.img");
    std::fs::write(&disk, hvm_disk_image(&boot)?).with_context(|| format!("cannot write {}", disk.display()))?;
    let cfg = hdir.join(format!("{HVM_GUEST}.cfg"));
    std::fs::write(&cfg, hvm_config_text())?;
    let bios = seabios_image()?;
    let start = Instant::now();
    eprintln!("HVM guest (SeaBIOS, stub domain, IDE) under icount...");
    let (text, outcome, command) = run_captured(
        hvm_bench_qemu(&images.multiboot, &cfg, &images.stubdom, &bios, &disk),
        &hdir,
        HVM_BENCH_LIMIT,
    )?;
    let wall = start.elapsed();
    let report = parse_guest_output(&text);
    if !report.done || outcome != RunOutcome::Success {
        bail!(
            "the HVM bench guest did not finish cleanly ({}; 'bench done' {}seen). Console tail:\n{}",
            outcome.describe(),
            if report.done { "" } else { "not " },
            console_tail(&text)
        );
    }
    Ok(HvmRun { results: compute_hvm(&report)?, command, wall })
}

/// The last 25 lines of a console.
fn console_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// The Linux boot-to-init measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxResult {
    /// `/proc/uptime` at init, seconds of icount time (= 1e9 instructions).
    pub uptime_s: f64,
    /// The console timestamp of init's line: seconds from Ferrite's entry
    /// (`console_timestamps=boot`). `None` when the line had none.
    pub ferrite_s: Option<f64>,
    pub kernel: String,
    pub wall: Duration,
    pub command: String,
}

/// The init script for the Linux measurement: reports uptime, powers off.
pub const LINUX_INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "FERRITE-BENCH-INIT uptime=$up kernel=$(uname -r)"
poweroff -f
"#;

/// Parses `FERRITE-BENCH-INIT uptime=<s> kernel=<release>`.
pub fn parse_linux_line(text: &str) -> Option<(f64, String)> {
    let line = text.lines().find(|l| l.contains("FERRITE-BENCH-INIT"))?;
    let mut uptime = None;
    let mut kernel = String::new();
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("uptime=") {
            uptime = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("kernel=") {
            kernel = v.to_string();
        }
    }
    Some((uptime?, kernel))
}

/// Parses a leading console timestamp, `[<seconds>.<micros>] ` (Ferrite's
/// `console_timestamps=boot`; the seconds are space-padded).
pub fn parse_timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    let (secs, micros) = stamp.trim().split_once('.')?;
    if micros.len() != 6 || !micros.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(secs.parse::<u64>().ok()? as f64 + micros.parse::<u64>().ok()? as f64 / 1e6)
}

/// The timestamp of the `FERRITE-BENCH-INIT` line, if it has one.
pub fn parse_init_timestamp(text: &str) -> Option<f64> {
    parse_timestamp(text.lines().find(|l| l.contains("FERRITE-BENCH-INIT"))?)
}

/// The QEMU version line (`QEMU emulator version ...`).
pub fn qemu_version() -> String {
    std::process::Command::new(crate::deps::QEMU.program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `qemu` with its console in `dir/console.log` until it exits or
/// `limit` passes (then kills it). Returns the console text and outcome.
pub(crate) fn run_captured(
    qemu: QemuCommand,
    dir: &Path,
    limit: Duration,
) -> Result<(String, RunOutcome, String)> {
    let console = dir.join("console.log");
    let qemu = qemu.serial_file(&console);
    let line = qemu.command_line();
    std::fs::write(dir.join("qemu-command.txt"), format!("{line}\n"))?;
    eprintln!("{line}");
    let mut cmd = qemu.command()?;
    let stderr = std::fs::File::create(dir.join("qemu-stderr.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (sudo apt-get install qemu-system-x86)")?;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text =
        String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).replace('\r', "");
    let outcome = status
        .map(RunOutcome::from_status)
        .unwrap_or(RunOutcome::Signaled);
    if status.is_none() {
        bail!(
            "QEMU still running after {limit:?}; killed. Console in {}",
            console.display()
        );
    }
    Ok((text, outcome, line))
}

/// The QEMU command for the exit benchmark: one CPU, icount, Ferrite with
/// the bench guest as a 64 MiB domU.
pub fn exit_bench_qemu(hv: &Path, cfg: &Path, guest: &Path) -> QemuCommand {
    QemuCommand::new()
        .machine("q35")
        .memory_mib(512)
        .smp(1)
        .debug_exit(true)
        .kernel(hv)
        // The emulated PM timer is one of the exits measured.
        .append("console=com1 debug_exit=0xf4 pm_timer=emulated")
        .module(ModuleSpec::new(cfg, ""))
        .module(ModuleSpec::new(guest, ""))
        .extra_args(["-icount", ICOUNT])
}

/// Everything one `ferrite bench` run measured.
#[derive(Debug, Clone)]
pub struct BenchRun {
    pub results: Results,
    pub command: String,
    pub qemu: String,
    pub date: String,
    pub wall: Duration,
    /// The HVM scenario (`None` with `--no-hvm`).
    pub hvm: Option<std::result::Result<HvmRun, String>>,
    pub linux: Option<std::result::Result<LinuxResult, String>>,
    /// The installed-system boot (`None`: skipped or `--no-installed`).
    pub installed: Option<std::result::Result<InstalledRun, String>>,
    /// `git describe --always --dirty` of the workspace.
    pub commit: String,
}

pub(crate) fn git_commit() -> String {
    std::process::Command::new("git")
        .current_dir(build::workspace_root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A command line with the workspace root dropped from paths (where a path
/// starts: after a space, quote, comma, `=` or `:`), so it runs from there.
pub(crate) fn shorten(command: &str) -> String {
    let root = format!("{}/", build::workspace_root().display());
    let mut s = format!(" {command}");
    for lead in [" ", "'", ",", "=", ":"] {
        s = s.replace(&format!("{lead}{root}"), lead);
    }
    s[1..].to_string()
}

pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs the exit benchmark (and Linux, when asked and cached).
pub fn run(args: &BenchArgs) -> Result<BenchRun> {
    crate::deps::require(&[crate::deps::QEMU])?;
    let images = if args.prebuilt {
        prebuilt_images(args.profile)?
    } else {
        build::build_hypervisor(args.profile)?
    };
    let dir = build::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let guest = guestasm::build_guest("bench", &dir)?;
    let cfg = dir.join("bench.cfg");
    std::fs::write(
        &cfg,
        "name = \"bench\"\ntype = \"pvh\"\nkernel = \"bench.elf\"\nmemory = 64\nvcpus = 1\non_crash = \"destroy\"\n",
    )?;
    let start = Instant::now();
    let exit_dir = dir.join("exits");
    std::fs::create_dir_all(&exit_dir)?;
    let (text, outcome, command) = run_captured(
        exit_bench_qemu(&images.multiboot, &cfg, &guest),
        &exit_dir,
        EXIT_BENCH_LIMIT,
    )?;
    let wall = start.elapsed();
    let report = parse_guest_output(&text);
    if !report.done || outcome != RunOutcome::Success {
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "the bench guest did not finish cleanly ({}; 'bench done' {}seen). Console tail:\n{}",
            outcome.describe(),
            if report.done { "" } else { "not " },
            tail.join("\n")
        );
    }
    let results = compute(&report)?;
    let hvm = args.hvm.then(|| hvm_bench(&images, &dir).map_err(|e| format!("{e:#}")));
    let linux = if args.linux {
        linux_boot(&images.multiboot, &dir)
    } else {
        None
    };
    let installed = if args.installed {
        installed_boot(&images, &dir)
    } else {
        None
    };
    if let Some(Ok(i)) = &installed {
        // This scenario's paragraph on its own, e.g. to paste after a partial run.
        let md = dir.join("installed").join("result.md");
        std::fs::write(&md, installed_markdown(i)).with_context(|| format!("cannot write {}", md.display()))?;
    }
    Ok(BenchRun {
        results,
        command,
        qemu: qemu_version(),
        date: today(),
        wall,
        hvm,
        linux,
        installed,
        commit: git_commit(),
    })
}

/// Boots Debian's Linux as dom0 to [`LINUX_INIT_SCRIPT`] under icount.
/// `None` when the packages are not cached (nothing is downloaded).
fn linux_boot(hv: &Path, dir: &Path) -> Option<std::result::Result<LinuxResult, String>> {
    use crate::{guest_images, initramfs};
    const FLAVOUR: &str = "cloud-amd64";
    let kpkg = format!("linux-image-{FLAVOUR}");
    if !guest_images::is_cached(&kpkg) || !guest_images::is_cached("busybox-static") {
        eprintln!("linux boot-to-init: skipped ({kpkg} or busybox-static not cached; `ferrite up` fetches them)");
        return None;
    }
    let go = || -> std::result::Result<LinuxResult, String> {
        let vmlinux = guest_images::debian_vmlinux(FLAVOUR)?;
        let image = initramfs::busybox_initramfs(LINUX_INIT_SCRIPT)?;
        let ldir = dir.join("linux");
        std::fs::create_dir_all(&ldir).map_err(|e| e.to_string())?;
        let cpio: PathBuf = ldir.join("initramfs.cpio");
        std::fs::write(&cpio, image).map_err(|e| e.to_string())?;
        let q = QemuCommand::new()
            .memory_mib(1024)
            .smp(1)
            .debug_exit(true)
            .kernel(hv)
            .append("console=com1 debug_exit=0xf4 dom0_mem=256M dom0_max_vcpus=1 console_timestamps=boot")
            .module(ModuleSpec::new(&vmlinux, "console=ttyS0 loglevel=4"))
            .module(ModuleSpec::new(&cpio, ""))
            .extra_args(["-icount", ICOUNT]);
        let start = Instant::now();
        eprintln!("linux boot-to-init under icount (takes minutes)...");
        let (text, _outcome, command) =
            run_captured(q, &ldir, LINUX_BENCH_LIMIT).map_err(|e| format!("{e:#}"))?;
        let (uptime_s, kernel) = parse_linux_line(&text)
            .ok_or_else(|| format!("no FERRITE-BENCH-INIT line; see {}", ldir.display()))?;
        Ok(LinuxResult {
            uptime_s,
            ferrite_s: parse_init_timestamp(&text),
            kernel,
            wall: start.elapsed(),
            command,
        })
    };
    Some(go())
}

/// The images in target/baremetal as an earlier build left them (`--no-build`).
pub fn prebuilt_images(profile: Profile) -> Result<build::HypervisorImages> {
    let stubdom = build::stubdom_image(profile);
    let multiboot = stubdom.with_file_name("ferrite-hv");
    let pvh = multiboot.with_extension("pvh");
    for p in [&multiboot, &stubdom] {
        if !p.is_file() {
            bail!("--no-build: {} is missing; build it first (`ferrite build`)", p.display());
        }
    }
    eprintln!("using the prebuilt images {} and {}", multiboot.display(), stubdom.display());
    let stubdom_hostile = stubdom.with_file_name("ferrite-stubdom-hostile");
    Ok(build::HypervisorImages { multiboot, pvh, stubdom, stubdom_hostile })
}

/// A console line's leading `[<seconds>.<micros>] ` stamp and the rest.
pub fn split_timestamp(line: &str) -> Option<(f64, &str)> {
    let t = parse_timestamp(line)?;
    let (_, rest) = line.split_once(']')?;
    Some((t, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// The root init's `FERRITE-ROOT-INIT cpus=<N> kernel=<release> uptime=<s>`.
#[derive(Debug, Clone, PartialEq)]
pub struct RootInitLine {
    pub cpus: u32,
    pub kernel: String,
    /// Linux's `/proc/uptime` at init: seconds since its clock started.
    pub uptime_s: f64,
}

/// Parses a `FERRITE-ROOT-INIT` line (anywhere in `line`).
pub fn parse_root_init(line: &str) -> Option<RootInitLine> {
    let (_, rest) = line.split_once("FERRITE-ROOT-INIT ")?;
    let (mut cpus, mut kernel, mut uptime) = (None, None, None);
    for w in rest.split_whitespace() {
        if let Some(v) = w.strip_prefix("cpus=") {
            cpus = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("kernel=") {
            kernel = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("uptime=") {
            uptime = v.parse().ok();
        }
    }
    Some(RootInitLine { cpus: cpus?, kernel: kernel?, uptime_s: uptime? })
}

/// Console timestamps (seconds since Ferrite's entry = billions of
/// instructions under icount) of an installed-disk boot under Ferrite.
///
/// Ferrite stamps a line of a domain that does not have the console's
/// input focus (here: every one, there is no dom0) when its newline
/// arrives, so each stamp is the time a line *ended*.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledTimes {
    /// `(ferrite) domain N (installed): HVM, ...`
    pub created_s: f64,
    /// GRUB's welcome: the stamp of the `(installed) ... Welcome to GRUB`
    /// line, or of the guest line before it when that line also holds
    /// ``Booting `linux'`` (see `grub_menu_from_previous_line`).
    pub grub_menu_s: f64,
    /// SeaBIOS's serial console (sercon) passes on GRUB's early screen
    /// output without a newline between `Welcome to GRUB!` and the menu,
    /// so both can end up on one console line, stamped when the menu's
    /// ``Booting `linux'`` ends it. Then the welcome is placed at the end
    /// of the guest line before (`GRUB loading...`: core.img is in memory,
    /// GRUB decompresses it and prints the welcome next), which is at or
    /// just before it.
    pub grub_menu_from_previous_line: bool,
    /// ``(installed) ... Booting `linux'``
    pub booting_s: f64,
    /// `(installed) FERRITE-ROOT-INIT ...`
    pub init_s: f64,
    pub init: RootInitLine,
    /// A second estimate of when Linux's clock started, for checking the
    /// first: Ferrite's stamp minus Linux's own printk stamp on the last
    /// kernel message after init (with `quiet`, `reboot: Power down`).
    pub printk_kernel_start_s: Option<f64>,
}

impl InstalledTimes {
    /// When Linux's clock started: init's stamp minus its uptime.
    pub fn kernel_start_s(&self) -> f64 {
        self.init_s - self.init.uptime_s
    }

    /// The five intervals, in order, with a short name each.
    pub fn intervals(&self) -> [(&'static str, f64); 5] {
        [
            ("creation -> GRUB menu", self.grub_menu_s - self.created_s),
            ("GRUB menu -> Booting", self.booting_s - self.grub_menu_s),
            ("Booting -> kernel start", self.kernel_start_s() - self.booting_s),
            ("kernel start -> init", self.init.uptime_s),
            ("creation -> init", self.init_s - self.created_s),
        ]
    }

    /// GRUB's menu → the kernel's start (`Booting` → kernel start, the
    /// figure issue 15 targets) and whether it meets [`INSTALLED_TARGET_S`].
    pub fn target(&self) -> (f64, bool) {
        let t = self.kernel_start_s() - self.booting_s;
        (t, t <= INSTALLED_TARGET_S)
    }
}

/// Finds the lines of an installed-disk boot in Ferrite's console
/// (`console_timestamps=boot`); `guest` is the domain's name. The error
/// names the first line missing.
pub fn parse_installed_console(text: &str, guest: &str) -> std::result::Result<InstalledTimes, String> {
    let stamped: Vec<(f64, &str)> = text.lines().filter_map(split_timestamp).collect();
    let domain_prefix = format!("({guest}) ");
    let created = format!(" ({guest}): HVM");
    // The first timestamped line with `prefix` that contains `needle`.
    let find = |prefix: &str, needle: &str, what: &str| {
        stamped
            .iter()
            .position(|(_, l)| l.starts_with(prefix) && l.contains(needle))
            .ok_or_else(|| format!("no timestamped {what} line in the console"))
    };
    let c = find("(ferrite) domain ", &created, &format!("`domain N ({guest}): HVM`"))?;
    // Without the `!`: sercon may send it later, after escape sequences.
    let w = find(&domain_prefix, "Welcome to GRUB", "`Welcome to GRUB!`")?;
    let b = find(&domain_prefix, "Booting `linux'", "``Booting `linux'``")?;
    let i = find(&domain_prefix, "FERRITE-ROOT-INIT ", "`FERRITE-ROOT-INIT`")?;
    let grub_menu_from_previous_line = w == b;
    let grub_menu_s = if grub_menu_from_previous_line {
        stamped[..w]
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with(&domain_prefix))
            .map(|&(t, _)| t)
            .ok_or("GRUB's welcome shares a line with its menu and no guest line comes before it")?
    } else {
        stamped[w].0
    };
    let (init_s, line) = stamped[i];
    let init = parse_root_init(line).ok_or_else(|| format!("cannot parse the init line {line:?}"))?;
    let printk_kernel_start_s = stamped[i..].iter().rev().find_map(|&(t, l)| {
        let printk = parse_timestamp(l.strip_prefix(&domain_prefix)?)?;
        Some(t - printk)
    });
    Ok(InstalledTimes {
        created_s: stamped[c].0,
        grub_menu_s,
        grub_menu_from_previous_line,
        booting_s: stamped[b].0,
        init_s,
        init,
        printk_kernel_start_s,
    })
}

/// The installed disk's boot under Ferrite.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledFerrite {
    pub times: InstalledTimes,
    pub wall: Duration,
    pub command: String,
}

/// The installed disk's boot on bare QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledBare {
    pub init: RootInitLine,
    pub wall: Duration,
    pub command: String,
}

/// Both boots of the installed disk (each may fail on its own).
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledRun {
    pub ferrite: std::result::Result<InstalledFerrite, String>,
    pub bare: std::result::Result<InstalledBare, String>,
}

/// The xl config of the installed-system guest.
pub fn installed_config_text() -> String {
    format!(
        "# written by `ferrite bench`\nname = \"{INSTALLED_GUEST}\"\ntype = \"hvm\"\nmemory = {INSTALLED_MEMORY_MIB}\n\
         vcpus = {INSTALLED_VCPUS}\ndisk = [ 'phy:{INSTALLED_DISK},hda,w' ]\non_crash = \"destroy\"\n"
    )
}

/// The QEMU command for the installed disk under Ferrite: one host CPU,
/// icount, console timestamps, the config, the stub-domain image, SeaBIOS
/// and the disk as a virtio-blk device (the guest's IDE `hda`).
pub fn installed_ferrite_qemu(hv: &Path, cfg: &Path, stubdom: &Path, bios: &Path, disk: &Path) -> QemuCommand {
    let file = disk.display().to_string().replace(',', ",,");
    QemuCommand::new()
        .machine("q35")
        .memory_mib(1024)
        .smp(1)
        .debug_exit(true)
        .kernel(hv)
        .append("console=com1 debug_exit=0xf4 console_timestamps=boot")
        .module(ModuleSpec::new(cfg, ""))
        .module(ModuleSpec::new(stubdom, ""))
        .module(ModuleSpec::new(bios, ""))
        .extra_args([
            "-drive".to_string(),
            format!("file={file},if=none,id={INSTALLED_DISK},format=raw"),
            "-device".to_string(),
            format!("virtio-blk-pci,drive={INSTALLED_DISK},serial={INSTALLED_DISK}"),
            "-icount".to_string(),
            ICOUNT.to_string(),
        ])
}

/// The QEMU command for the installed disk on bare QEMU: a PC with
/// [`INSTALLED_BARE_CPUS`] CPUs and the guest's 256 MiB, the disk on IDE,
/// icount.
pub fn installed_bare_qemu(disk: &Path) -> QemuCommand {
    let file = disk.display().to_string().replace(',', ",,");
    QemuCommand::new()
        .machine("pc")
        .cpu("qemu64")
        .memory_mib(INSTALLED_MEMORY_MIB)
        .smp(INSTALLED_BARE_CPUS)
        .extra_args([
            "-drive".to_string(),
            format!("file={file},format=raw,if=ide"),
            "-icount".to_string(),
            ICOUNT.to_string(),
        ])
}

/// Copies the built disk into `run_dir` (each boot starts from the same
/// bytes; the copy stays, so the saved command runs again) and boots it
/// with `qemu(disk)`.
fn boot_installed_copy(
    disk: &Path,
    run_dir: &Path,
    qemu: impl FnOnce(&Path) -> QemuCommand,
) -> std::result::Result<(String, Duration, String), String> {
    std::fs::create_dir_all(run_dir).map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    let copy = run_dir.join("disk.img");
    std::fs::copy(disk, &copy).map_err(|e| format!("cannot copy {} to {}: {e}", disk.display(), copy.display()))?;
    let start = Instant::now();
    let (text, _outcome, command) =
        run_captured(qemu(&copy), run_dir, INSTALLED_BENCH_LIMIT).map_err(|e| format!("{e:#}"))?;
    Ok((text, start.elapsed(), command))
}

/// Builds the installed disk in `dir/installed/disk` and boots a copy of
/// it under Ferrite and on bare QEMU. `None` (after saying why) when the
/// Debian packages cannot be had or GRUB's BIOS files are not installed.
fn installed_boot(images: &build::HypervisorImages, dir: &Path) -> Option<std::result::Result<InstalledRun, String>> {
    use crate::{guest_images, installed_disk};
    for pkg in ["linux-image-cloud-amd64", "busybox-static"] {
        if let Err(e) = guest_images::fetch_debian_package(pkg) {
            eprintln!("installed system boot: skipped (cannot fetch Debian package {pkg}: {e})");
            return None;
        }
    }
    let boot_img = Path::new(crate::deps::GRUB_PC_DIR).join("boot.img");
    if !boot_img.is_file() || crate::deps::find_program("grub-mkimage").is_none() {
        eprintln!(
            "installed system boot: skipped (no {} or grub-mkimage: sudo apt-get install grub-pc-bin grub-common)",
            boot_img.display()
        );
        return None;
    }
    let go = || -> std::result::Result<InstalledRun, String> {
        let idir = dir.join("installed");
        let started = Instant::now();
        let disk = installed_disk::build_installed_disk(&idir.join("disk"), "ferrite-bench", "")?;
        eprintln!("installed system disk: built {} in {:.1?}", disk.path.display(), started.elapsed());
        let bios = seabios_image().map_err(|e| format!("{e:#}"))?;

        let fdir = idir.join("ferrite");
        std::fs::create_dir_all(&fdir).map_err(|e| format!("cannot create {}: {e}", fdir.display()))?;
        let cfg = fdir.join(format!("{INSTALLED_GUEST}.cfg"));
        std::fs::write(&cfg, installed_config_text()).map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
        eprintln!("installed system boot under Ferrite (HVM, stub domain, IDE) under icount...");
        let ferrite = boot_installed_copy(&disk.path, &fdir, |d| {
            installed_ferrite_qemu(&images.multiboot, &cfg, &images.stubdom, &bios, d)
        })
        .and_then(|(text, wall, command)| {
            let times = parse_installed_console(&text, INSTALLED_GUEST)
                .map_err(|e| format!("{e}; see {}/console.log. Console tail:\n{}", fdir.display(), console_tail(&text)))?;
            Ok(InstalledFerrite { times, wall, command })
        });

        let qdir = idir.join("qemu");
        eprintln!("installed system boot on bare QEMU under icount...");
        let bare = boot_installed_copy(&disk.path, &qdir, installed_bare_qemu).and_then(|(text, wall, command)| {
            let init = text.lines().find_map(parse_root_init).ok_or_else(|| {
                format!("no FERRITE-ROOT-INIT line; see {}/console.log. Console tail:\n{}", qdir.display(), console_tail(&text))
            })?;
            Ok(InstalledBare { init, wall, command })
        });
        Ok(InstalledRun { ferrite, bare })
    };
    Some(go())
}

/// One line of explanation for each interval of [`InstalledTimes::intervals`].
pub fn installed_interval_notes() -> [&'static str; 5] {
    [
        "Ferrite's `domain N (installed): HVM` line to GRUB's `Welcome to GRUB!`: the stub domain starts, \
         SeaBIOS runs its POST, reads the MBR and GRUB's core.img through int 13h and the stub's IDE model",
        "GRUB's normal mode: modules and grub.cfg read from the ext4 partition, the menu (timeout 0)",
        "GRUB reads vmlinuz and initrd.img through int 13h, then the kernel decompresses itself and sets up \
         until its clock starts (init's stamp minus Linux's uptime); issue 15's target is at most 2 s",
        "Linux's `/proc/uptime` on init's line: the kernel's boot (the second vCPU's bring-up included), the \
         initramfs loading the IDE and disk drivers and waiting for `/dev/sda1`, mounting it, `switch_root`, \
         the root init's first commands",
        "all of the above, domain creation to the root's `/sbin/init`",
    ]
}

/// Says where the GRUB menu stamp came from when it is not the welcome
/// line's own.
fn grub_menu_note(t: &InstalledTimes) -> Option<&'static str> {
    t.grub_menu_from_previous_line.then_some(
        "GRUB's welcome reached the console on one line with its menu (SeaBIOS's serial console puts no \
         newline between them, and Ferrite stamps a guest line when it ends), so the menu stamp is that of \
         the line before, `GRUB loading...`, which ends at or just before the welcome; the two GRUB \
         intervals split at that point",
    )
}

/// How far the two estimates of Linux's clock start may differ before the
/// check says so: the uptime's 10 ms step and a tick of slack.
pub const KERNEL_START_TOLERANCE_S: f64 = 0.02;

/// The cross-check of Linux's clock start, in words.
fn kernel_start_check(t: &InstalledTimes) -> String {
    let by_init = t.kernel_start_s();
    let Some(by_printk) = t.printk_kernel_start_s else {
        return format!(
            "Linux's clock started at {by_init:.3} s by init's line (its stamp minus the uptime, which has \
             10 ms steps); no kernel message after init to check it against"
        );
    };
    let mut s = format!(
        "Linux's clock started at {by_init:.3} s by init's line (its stamp minus the uptime, which has 10 ms \
         steps) and at {by_printk:.3} s by its last kernel message (stamp minus printk time)"
    );
    let diff = by_init - by_printk;
    if diff.abs() > KERNEL_START_TOLERANCE_S {
        let _ = write!(
            s,
            "; they differ by {diff:.3} s. Init's line goes out through the guest's interrupt-driven serial \
             driver and can reach the console late (a late UART interrupt holds it back), the kernel's own \
             messages are written by polling; by the printk stamp, Booting -> kernel start is {:.3} s",
            by_printk - t.booting_s
        );
    }
    s
}

/// The issue-15 target sentence.
fn installed_verdict(t: &InstalledTimes) -> String {
    let (v, ok) = t.target();
    format!(
        "GRUB's menu to the kernel's start (`Booting` → kernel start): {v:.3} s of icount time \
         (target <= {INSTALLED_TARGET_S:.0} s: {})",
        met(ok)
    )
}

/// The installed scenario for the terminal.
pub fn installed_text(run: &InstalledRun) -> String {
    let mut s = String::new();
    match &run.ferrite {
        Ok(f) => {
            let _ = writeln!(
                s,
                "installed system boot under Ferrite (Debian {}, HVM, {} vCPUs seen by Linux, -smp 1; \
                 seconds of icount time = 1e9 instructions; wall {:.0?}):",
                f.times.init.kernel, f.times.init.cpus, f.wall
            );
            for (name, v) in f.times.intervals() {
                let _ = writeln!(s, "  {name:<24} {v:>8.3} s");
            }
            let _ = writeln!(s, "  {}", installed_verdict(&f.times));
            let _ = writeln!(s, "  check: {}", kernel_start_check(&f.times));
            if let Some(n) = grub_menu_note(&f.times) {
                let _ = writeln!(s, "  note: {n}");
            }
        }
        Err(e) => {
            let _ = writeln!(s, "installed system boot under Ferrite: FAILED: {e}");
        }
    }
    match &run.bare {
        Ok(b) => {
            let _ = writeln!(
                s,
                "installed system boot on bare QEMU (-machine pc -smp {}): kernel start -> init (uptime) {:.3} s \
                 of icount time; QEMU wall-clock time {:.0?}",
                b.init.cpus, b.init.uptime_s, b.wall
            );
        }
        Err(e) => {
            let _ = writeln!(s, "installed system boot on bare QEMU: FAILED: {e}");
        }
    }
    s
}

/// The installed scenario's part of the generated section of BENCHMARKS.md.
pub fn installed_markdown(run: &InstalledRun) -> String {
    let mut s = String::new();
    s.push_str(
        "Installed system boot (issue 15): the disk of `tools/src/installed_disk.rs` (MBR, GRUB i386-pc, ext4 \
         root with Debian's kernel, a busybox initramfs that mounts `/dev/sda1`) booted from its own disk, \
         seconds of icount time (billions of L1 instructions, at most: halted stretches are skipped, not counted).\n\n",
    );
    let notes = installed_interval_notes();
    match &run.ferrite {
        Ok(f) => {
            let _ = writeln!(
                s,
                "Under Ferrite: an HVM domU (Debian `{}`, {} vCPUs, {INSTALLED_MEMORY_MIB} MiB, SeaBIOS, IDE `hda` \
                 modelled in its stub domain, backed by virtio-blk), `-smp 1`, `console_timestamps=boot`. QEMU \
                 wall-clock time {:.0?}.\n",
                f.times.init.kernel, f.times.init.cpus, f.wall
            );
            s.push_str("| interval | icount time (s) | what it covers |\n| --- | ---: | --- |\n");
            for ((name, v), note) in f.times.intervals().iter().zip(notes) {
                let _ = writeln!(s, "| {} | {v:.3} | {note} |", name.replace("->", "→"));
            }
            let _ = writeln!(s, "\n* {}.", installed_verdict(&f.times).replace("<=", "≤"));
            let _ = writeln!(
                s,
                "* Check (console stamps are seconds since Ferrite's entry): {}.",
                kernel_start_check(&f.times).replace("->", "→")
            );
            if let Some(n) = grub_menu_note(&f.times) {
                let _ = writeln!(s, "* {n}.");
            }
            s.push('\n');
            let _ = writeln!(s, "```sh\n{}\n```\n", shorten(&f.command));
        }
        Err(e) => {
            let _ = writeln!(s, "Under Ferrite: failed in this run: {}\n", e.lines().next().unwrap_or(""));
        }
    }
    match &run.bare {
        Ok(b) => {
            let _ = writeln!(
                s,
                "On bare QEMU (`-machine pc`, {} CPU: with two, QEMU 7.2's icount round robin stops Linux at \
                 `x86: Booting SMP configuration:`; {INSTALLED_MEMORY_MIB} MiB, the disk on IDE, same icount), \
                 where Linux's clock is the only one: kernel start → init (`/proc/uptime` on init's line) = \
                 **{:.3} s of icount time**; the whole run, BIOS to power-off, took {:.0?} of QEMU wall-clock \
                 time.\n\n```sh\n{}\n```",
                b.init.cpus,
                b.init.uptime_s,
                b.wall,
                shorten(&b.command)
            );
        }
        Err(e) => {
            let _ = writeln!(s, "On bare QEMU: failed in this run: {}", e.lines().next().unwrap_or(""));
        }
    }
    s
}

/// The generated section of BENCHMARKS.md.
pub fn markdown_section(run: &BenchRun) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN_MARKER}");
    let _ = writeln!(
        s,
        "Measured {} at Ferrite `{}` with {} (`ferrite bench --write`).\n",
        run.date, run.commit, run.qemu
    );
    let _ = writeln!(
        s,
        "Command (paths relative to the workspace; QEMU wall-clock time {:.0?}):\n\n```sh\n{}\n```\n",
        run.wall,
        shorten(&run.command)
    );
    let _ = writeln!(
        s,
        "TSC rate seen by the guest against the PM timer: {:.4} ticks per ns (so one tick is one instruction).\n",
        run.results.ticks_per_ns
    );
    s.push_str(&markdown_table(&run.results));
    s.push('\n');
    match &run.hvm {
        None => s.push_str("HVM guest: not measured in this run (`--no-hvm`).\n\n"),
        Some(Ok(h)) => {
            let _ = writeln!(
                s,
                "HVM guest (`qemu-tests/guests/bootsector/bench_hvm.S` booted by SeaBIOS from an emulated IDE disk, \
                 devices in its stub domain, 1 vCPU, `-smp 1`; TSC rate against the PM timer {:.4} ticks per ns). \
                 QEMU wall-clock time {:.0?}. Command:\n\n```sh\n{}\n```\n",
                h.results.ticks_per_ns,
                h.wall,
                shorten(&h.command)
            );
            s.push_str(&hvm_markdown_tables(&h.results));
            s.push('\n');
            for v in hvm_verdicts(&h.results) {
                let _ = writeln!(s, "* {}.", v.replace("<=", "≤"));
            }
            s.push('\n');
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "HVM guest: failed in this run: {}\n", e.lines().next().unwrap_or(""));
        }
    }
    match &run.linux {
        None => s.push_str("Linux boot-to-init: not measured in this run (packages not cached, or `--no-linux`).\n"),
        Some(Ok(l)) => {
            let _ = writeln!(
                s,
                "Linux boot-to-init (Debian `{}` as PVH dom0, 1 vCPU, 256 MiB, `-smp 1`): `/proc/uptime` at \
                 init = **{:.2} s of icount time**, i.e. at most {:.2} billion L1 instructions from Linux's clock \
                 start to `/init` (at most: while every CPU is halted, `sleep=off` jumps the clock to the next \
                 timer instead of counting instructions). {}QEMU wall-clock time {:.0?}. Command:\n\n```sh\n{}\n```",
                l.kernel,
                l.uptime_s,
                l.uptime_s,
                ferrite_sentence(l),
                l.wall,
                shorten(&l.command)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "Linux boot-to-init: failed in this run: {}", e.lines().next().unwrap_or(""));
        }
    }
    match &run.installed {
        None => s.push_str(
            "\nInstalled system boot: not measured in this run (packages or GRUB not available, or `--no-installed`).\n",
        ),
        Some(Ok(i)) => {
            s.push('\n');
            s.push_str(&installed_markdown(i));
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "\nInstalled system boot: failed in this run: {}", e.lines().next().unwrap_or(""));
        }
    }
    let _ = writeln!(s, "{END_MARKER}");
    s
}

/// The "Ferrite start → dom0 init" sentence of the Linux paragraph.
fn ferrite_sentence(l: &LinuxResult) -> String {
    match l.ferrite_s {
        Some(t) => format!(
            "Ferrite start → dom0 init (`console_timestamps=boot` stamp of init's `(dom0)` line, time \
             since Ferrite's entry) = **{t:.2} s of icount time**, i.e. at most {t:.2} billion L1 \
             instructions for the hypervisor's boot, building dom0 and Linux's whole boot to `/init`; \
             {:.2} s of it before Linux's clock started. ",
            t - l.uptime_s
        ),
        None => "Ferrite start → dom0 init: init's console line carried no timestamp. ".into(),
    }
}

/// The options of a bench command that only writes its results and may
/// skip the build (`bench sched`, `bench xl`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteArgs {
    pub write: bool,
    pub prebuilt: bool,
}

/// Parses `--write` and `--no-build` for `ferrite bench <command>`.
pub fn parse_write_args(command: &str, args: &[String]) -> Result<WriteArgs> {
    let mut a = WriteArgs::default();
    for arg in args {
        match arg.as_str() {
            "--write" => a.write = true,
            "--no-build" => a.prebuilt = true,
            other => bail!("unknown option {other:?} for `ferrite bench {command}` (see `ferrite help`)"),
        }
    }
    Ok(a)
}

/// Replaces the section from `begin` to `end` (markers included) in
/// `doc` with `section`, or appends `section` after a blank line.
pub(crate) fn splice_between(doc: &str, begin: &str, end: &str, section: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if e > b => {
            let e = e + end.len();
            let e = if doc[e..].starts_with('\n') { e + 1 } else { e };
            format!("{}{}{}", &doc[..b], section, &doc[e..])
        }
        _ => format!("{}\n\n{}", doc.trim_end(), section),
    }
}

/// Replaces the generated section of `doc` (or appends one).
pub fn splice(doc: &str, section: &str) -> String {
    match (doc.find(BEGIN_MARKER), doc.find(END_MARKER)) {
        (Some(b), Some(e)) if e > b => {
            let end = e + END_MARKER.len();
            let end = if doc[end..].starts_with('\n') {
                end + 1
            } else {
                end
            };
            format!("{}{}{}", &doc[..b], section, &doc[end..])
        }
        _ => format!("{}\n{}", doc.trim_end(), section),
    }
}

/// `ferrite bench`: run, print the table, optionally update BENCHMARKS.md.
pub fn main(args: &BenchArgs) -> Result<()> {
    let run = run(args)?;
    println!("{}", run.qemu);
    print!("{}", text_table(&run.results));
    match &run.hvm {
        Some(Ok(h)) => print!("{}", hvm_text_table(&h.results)),
        Some(Err(e)) => println!("HVM guest: FAILED: {e}"),
        None => println!("HVM guest: not measured"),
    }
    match &run.linux {
        Some(Ok(l)) => {
            println!(
                "linux boot-to-init ({}): uptime {:.3} s of icount time = at most {:.2}e9 instructions (wall {:.0?})",
                l.kernel, l.uptime_s, l.uptime_s, l.wall
            );
            match l.ferrite_s {
                Some(t) => println!("ferrite start -> dom0 init: {t:.3} s of icount time (console timestamp)"),
                None => println!("ferrite start -> dom0 init: no console timestamp on init's line"),
            }
        }
        Some(Err(e)) => println!("linux boot-to-init: FAILED: {e}"),
        None => println!("linux boot-to-init: not measured"),
    }
    match &run.installed {
        Some(Ok(i)) => print!("{}", installed_text(i)),
        Some(Err(e)) => println!("installed system boot: FAILED: {e}"),
        None => println!("installed system boot: not measured"),
    }
    if let Some(Err(_)) = &run.hvm {
        bail!("the HVM benchmark failed (see above){}", if args.write { "; BENCHMARKS.md not updated" } else { "" });
    }
    if args.write {
        let path = build::workspace_root().join("BENCHMARKS.md");
        let doc =
            std::fs::read_to_string(&path).unwrap_or_else(|_| "# Ferrite benchmarks\n".into());
        std::fs::write(&path, splice(&doc, &markdown_section(&run)))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
(ferrite) domain 1 (bench) started
(bench) bench: Ferrite exit round trips
(bench) BENCH-TSC 10000000 35795
(bench) BENCH loop_nop 3010 1000
(bench) BENCH pm_timer_inl 503010 1000
(bench) BENCH cpuid_hv_leaf 1003010 1000
(bench) BENCH lapic_timer_irq 2500000 1000
(bench) bench done
";

    #[test]
    fn parses_guest_output() {
        let r = parse_guest_output(SAMPLE);
        assert!(r.done);
        assert_eq!(r.tsc_vs_pm, Some((10_000_000, 35795)));
        assert_eq!(r.lines.len(), 4);
        assert_eq!(
            r.lines[1],
            BenchLine {
                name: "pm_timer_inl".into(),
                ticks: 503_010,
                iterations: 1000
            }
        );
        assert_eq!(parse_guest_output("BENCH x notanumber 5").lines, vec![]);
        assert!(!parse_guest_output("").done);
    }

    #[test]
    fn computes_instructions_per_op() {
        let r = compute(&parse_guest_output(SAMPLE)).unwrap();
        // 10,000,000 ticks over 35795 PM ticks (10.0000 ms) = 1.0 tick/ns.
        assert!((r.ticks_per_ns - 1.0).abs() < 1e-3, "{}", r.ticks_per_ns);
        assert!((r.rows[0].per_op - 3.01).abs() < 0.01);
        assert!((r.rows[1].net - 500.0).abs() < 0.5, "{:?}", r.rows[1]);
        // The timer latency has no loop to subtract.
        assert_eq!(r.rows[3].name, "lapic_timer_irq");
        assert!((r.rows[3].net - 2500.0).abs() < 2.0, "{:?}", r.rows[3]);
        assert!(r.rows[3].what.starts_with("TSC-deadline timer interrupt"));
        assert!(compute(&GuestReport::default()).is_err());
        let t = markdown_table(&r);
        assert!(t.contains("| `pm_timer_inl` |"), "{t}");
        assert!(text_table(&r).contains("cpuid_hv_leaf"));
    }

    #[test]
    fn args_and_linux_line() {
        assert_eq!(parse_args(&[]).unwrap(), BenchArgs::default());
        let a = parse_args(&["--write".into(), "--no-linux".into()]).unwrap();
        assert!(a.write && !a.linux);
        assert!(parse_args(&["--frob".into()]).is_err());
        // Wired into the `ferrite` command line.
        let cmd = crate::cli::parse(["bench", "--write"]).unwrap();
        assert_eq!(
            cmd,
            crate::cli::Cmd::Bench(BenchArgs {
                write: true,
                ..BenchArgs::default()
            })
        );
        assert!(crate::cli::parse(["bench", "--smp", "2"]).is_err());
        assert_eq!(
            parse_linux_line("(dom0) FERRITE-BENCH-INIT uptime=2.51 kernel=6.1.0-1-cloud-amd64"),
            Some((2.51, "6.1.0-1-cloud-amd64".into()))
        );
        assert_eq!(parse_linux_line("nothing"), None);
        assert_eq!(
            parse_init_timestamp("[    0.000100] (ferrite) x\n[    1.234567] (dom0) FERRITE-BENCH-INIT uptime=1.10 kernel=k\n"),
            Some(1.234567)
        );
        assert_eq!(parse_timestamp("[12345.000001] x"), Some(12345.000001));
        assert_eq!(parse_init_timestamp("(dom0) FERRITE-BENCH-INIT uptime=1.10 kernel=k"), None);
        assert_eq!(parse_timestamp("[ 1.23] x"), None);
    }

    const HVM_SAMPLE: &str = "\
(benchhvm) bench: Ferrite HVM device round trips and IDE DMA
(benchhvm) BENCH-TSC 10000000 35795
(benchhvm) BENCH loop_nop 3005 1000
(benchhvm) BENCH-SUM loop_nop 30050 10000
(benchhvm) BENCH pm_timer_inl 849005 1000
(benchhvm) BENCH-SUM pm_timer_inl 8490050 10000
(benchhvm) BENCH ide_status_inb 3503005 1000
(benchhvm) BENCH-SUM ide_status_inb 35100050 10000
(benchhvm) BENCH-BYTES ide_dma_read_64k 3000000 8388608
(benchhvm) BENCH-BYTES-SUM ide_dma_read_64k 9300000 25165824
(benchhvm) BENCH-BYTES rep_movsd_copy 2097152 8388608
(benchhvm) BENCH-BYTES-SUM rep_movsd_copy 6291456 25165824
(benchhvm) bench done
";

    #[test]
    fn hvm_report_parses_and_computes() {
        let r = parse_guest_output(HVM_SAMPLE);
        assert!(r.done);
        assert_eq!(r.lines.len(), 3);
        assert_eq!(r.sums.len(), 3);
        assert_eq!(r.bytes.len(), 2);
        assert_eq!(r.bytes_sums[0].iterations, 25_165_824);
        let h = compute_hvm(&r).unwrap();
        let (trip, ok) = h.round_trip().unwrap();
        assert!((trip - 3500.0).abs() < 1.0, "{trip}");
        assert!(ok);
        let mean = h.trips[2].mean_net.unwrap();
        assert!((mean - 3507.0).abs() < 1.0, "{mean}");
        // 2,097,152 ticks per 8 MiB = 262,144 per MiB; DMA 375,000.
        let copy = &h.transfers[1];
        assert!((copy.per_mib - 262_144.0).abs() < 100.0, "{copy:?}");
        let (ratio, ok) = h.dma_ratio().unwrap();
        assert!((ratio - 375_000.0 / 262_144.0).abs() < 0.01, "{ratio}");
        assert!(ok);
        assert!((h.transfers[0].mean_per_mib.unwrap() - 387_500.0).abs() < 100.0);
        let v = hvm_verdicts(&h);
        assert_eq!(v.len(), 2);
        assert!(v[0].contains("3500 instructions") && v[0].contains("met"), "{v:?}");
        assert!(hvm_markdown_tables(&h).contains("| `ide_status_inb` |"));
        assert!(hvm_text_table(&h).contains("rep_movsd_copy"));
        // The PVH computation ignores the HVM-only lines.
        assert_eq!(compute(&r).unwrap().rows.len(), 3);
        // A report without the DMA lines is an error.
        let no_dma: String = HVM_SAMPLE.lines().filter(|l| !l.contains("BYTES")).map(|l| format!("{l}\n")).collect();
        assert!(compute_hvm(&parse_guest_output(&no_dma)).is_err());
        // Over the targets: reported as missed.
        let slow = HVM_SAMPLE.replace("ide_status_inb 3503005", "ide_status_inb 12750005");
        let h = compute_hvm(&parse_guest_output(&slow)).unwrap();
        assert!(!h.round_trip().unwrap().1);
        assert!(hvm_verdicts(&h)[0].contains("MISSED"));
    }

    #[test]
    fn hvm_disk_config_and_command() {
        let boot = vec![0xAAu8; 4096];
        let disk = hvm_disk_image(&boot).unwrap();
        assert_eq!(disk.len(), HVM_DISK_BYTES);
        assert_eq!(&disk[..4096], &boot[..]);
        let at = |lba: usize| u32::from_le_bytes(disk[lba * 512..lba * 512 + 4].try_into().unwrap());
        assert_eq!(at(HVM_DATA_LBA), HVM_DATA_LBA as u32);
        assert_eq!(at(HVM_DATA_LBA + 777), (HVM_DATA_LBA + 777) as u32);
        assert_eq!(at(HVM_DATA_LBA - 1), 0);
        assert!(hvm_disk_image(&vec![0u8; HVM_DATA_LBA * 512 + 1]).is_err());
        let cfg = hvm_config_text();
        assert!(cfg.contains("type = \"hvm\"") && cfg.contains("'phy:benchdisk,hda,w'"), "{cfg}");
        let q = hvm_bench_qemu(
            Path::new("/x/ferrite-hv"),
            Path::new("/x/benchhvm.cfg"),
            Path::new("/x/ferrite-stubdom"),
            Path::new("/x/bios-256k.bin"),
            Path::new("/x/disk.img"),
        );
        let line = q.command_line();
        for want in [
            "-smp 1",
            "-icount shift=0,sleep=off",
            "virtio-blk-pci,drive=benchdisk,serial=benchdisk",
            "file=/x/disk.img,if=none,id=benchdisk,format=raw",
            "/x/benchhvm.cfg,/x/ferrite-stubdom,/x/bios-256k.bin",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        assert!(!parse_args(&["--no-hvm".into()]).unwrap().hvm);
        assert!(BenchArgs::default().hvm);
    }

    const INSTALLED_SAMPLE: &str = "\
[    0.012000] (ferrite) Ferrite 0.1.0 (x86_64) booted by multiboot1 loader \"qemu\"
[    0.100000] (ferrite) domain 0 (installed): HVM, 256 MiB, 2 vCPUs, BIOS 256 KiB, 1 disk(s); device model in domain 1 (installed-dm)
[    0.150000] (installed-dm) bios: Booting from Hard Disk...
[    0.900000] (installed) GRUB loading...
[    1.000000] (installed) \x1b[0;30;47mWelcome to GRUB!
[    1.250000] (installed) \x1b[H\x1b[J   Booting `linux' Booting `linux
[    5.750000] (installed) FERRITE-ROOT-INIT cpus=2 kernel=6.1.0-57-cloud-amd64 uptime=2.50
[    5.800000] (installed) FERRITE-ROOT-DEVICE /dev/sda1
[    6.000000] (installed) [    2.740000] reboot: Power down
";

    #[test]
    fn installed_console_parses_and_computes() {
        assert_eq!(split_timestamp("[    1.500000] (x) y"), Some((1.5, "(x) y")));
        assert_eq!(split_timestamp("(x) y"), None);
        assert_eq!(
            parse_root_init("(installed) FERRITE-ROOT-INIT cpus=2 kernel=6.1.0-57-cloud-amd64 uptime=1.23"),
            Some(RootInitLine { cpus: 2, kernel: "6.1.0-57-cloud-amd64".into(), uptime_s: 1.23 })
        );
        assert_eq!(parse_root_init("FERRITE-ROOT-INIT cpus=2 kernel=k"), None, "no uptime");
        let t = parse_installed_console(INSTALLED_SAMPLE, INSTALLED_GUEST).unwrap();
        assert_eq!((t.created_s, t.grub_menu_s, t.booting_s, t.init_s), (0.1, 1.0, 1.25, 5.75));
        assert!(!t.grub_menu_from_previous_line);
        assert!((t.printk_kernel_start_s.unwrap() - 3.26).abs() < 1e-9);
        // As sercon sends it: the welcome, escapes, the `!` and the menu on one line.
        let shared = INSTALLED_SAMPLE.replace(
            "\x1b[0;30;47mWelcome to GRUB!\n[    1.250000] (installed) \x1b[H",
            "\x1b[0;30;47mWelcome to GRUB\x1b[H!\x1b[H",
        );
        let s = parse_installed_console(&shared, INSTALLED_GUEST).unwrap();
        assert!(s.grub_menu_from_previous_line, "{shared}");
        assert_eq!((s.grub_menu_s, s.booting_s), (0.9, 1.0), "the `GRUB loading...` line's stamp");
        assert!((t.kernel_start_s() - 3.25).abs() < 1e-9);
        let want = [0.9, 0.25, 2.0, 2.5, 5.65];
        for ((name, got), want) in t.intervals().iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{name}: {got} != {want}");
        }
        assert!(t.target().1, "2.0 s meets a 2 s target");
        // A missing or untimestamped line is named.
        let untimed = INSTALLED_SAMPLE.replace("[    1.000000] (installed)", "(installed)");
        let err = parse_installed_console(&untimed, INSTALLED_GUEST).unwrap_err();
        assert!(err.contains("Welcome to GRUB!"), "{err}");
        let other = parse_installed_console(INSTALLED_SAMPLE, "other").unwrap_err();
        assert!(other.contains("domain N (other)"), "{other}");

        let run = InstalledRun {
            ferrite: Ok(InstalledFerrite { times: t.clone(), wall: Duration::from_secs(60), command: "q".into() }),
            bare: Ok(InstalledBare {
                init: RootInitLine { cpus: 2, kernel: "k".into(), uptime_s: 1.5 },
                wall: Duration::from_secs(20),
                command: "b".into(),
            }),
        };
        let md = installed_markdown(&run);
        assert!(md.contains("| Booting → kernel start | 2.000 |"), "{md}");
        assert!(md.contains("target ≤ 2 s: met"), "{md}");
        assert!(md.contains("**1.500 s of icount time**"), "{md}");
        let text = installed_text(&run);
        assert!(text.contains("creation -> init") && text.contains("5.650 s"), "{text}");
        let slow = InstalledRun {
            ferrite: Ok(InstalledFerrite {
                times: InstalledTimes { booting_s: 0.5, ..t.clone() },
                wall: Duration::ZERO,
                command: String::new(),
            }),
            bare: Err("boom".into()),
        };
        assert!(installed_text(&slow).contains("MISSED"));
        assert!(!kernel_start_check(&t).contains("differ"), "3.25 vs 3.26 s agree");
        let late = InstalledTimes { printk_kernel_start_s: Some(2.9), ..t.clone() };
        let c = kernel_start_check(&late);
        assert!(c.contains("differ by 0.350 s") && c.contains("Booting -> kernel start is 1.650 s"), "{c}");
        assert!(installed_markdown(&slow).contains("On bare QEMU: failed in this run: boom"));
    }

    #[test]
    fn installed_config_and_commands() {
        let cfg = installed_config_text();
        for want in ["name = \"installed\"", "type = \"hvm\"", "memory = 256", "vcpus = 2", "'phy:disk0,hda,w'"] {
            assert!(cfg.contains(want), "{want:?} not in {cfg}");
        }
        let line = installed_ferrite_qemu(
            Path::new("/x/ferrite-hv"),
            Path::new("/x/installed.cfg"),
            Path::new("/x/ferrite-stubdom"),
            Path::new("/x/bios-256k.bin"),
            Path::new("/x/disk.img"),
        )
        .command_line();
        for want in [
            "-smp 1",
            "-icount shift=0,sleep=off",
            "'console=com1 debug_exit=0xf4 console_timestamps=boot'",
            "file=/x/disk.img,if=none,id=disk0,format=raw",
            "virtio-blk-pci,drive=disk0,serial=disk0",
            "/x/installed.cfg,/x/ferrite-stubdom,/x/bios-256k.bin",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        let bare = installed_bare_qemu(Path::new("/x/disk.img")).command_line();
        for want in ["-machine pc", "-m 256", "-smp 1", "-drive file=/x/disk.img,format=raw,if=ide", "-icount shift=0,sleep=off"] {
            assert!(bare.contains(want), "{want:?} not in {bare}");
        }
        assert!(!bare.contains("-kernel"));
        let a = parse_args(&["--no-installed".into(), "--no-build".into()]).unwrap();
        assert!(!a.installed && a.prebuilt);
        assert!(BenchArgs::default().installed && !BenchArgs::default().prebuilt);
    }

    #[test]
    fn splices_generated_section() {
        let sec = format!("{BEGIN_MARKER}\nnew\n{END_MARKER}\n");
        let doc = format!("# T\n\nintro\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\n## after\n");
        let out = splice(&doc, &sec);
        assert_eq!(
            out,
            format!("# T\n\nintro\n\n{BEGIN_MARKER}\nnew\n{END_MARKER}\n\n## after\n")
        );
        let appended = splice("# T\n", &sec);
        assert!(appended.ends_with(&sec) && appended.starts_with("# T\n"));
    }
}
