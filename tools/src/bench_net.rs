//! `ferrite bench net`: what moving bytes over Ferrite's bridges costs,
//! counted in instructions (issue 13's benchmarks).
//!
//! Like `ferrite bench disks` ([`crate::bench_disks`]): Debian's cloud
//! kernel with a busybox initramfs whose `/init` is [`INIT_SCRIPT`], QEMU
//! with `-icount shift=0,sleep=off` and one CPU, so a TSC delta read in a
//! guest (`qemu-tests/guests/userspace/disktool.S`) counts the instructions
//! of the whole emulated machine (both guests and the hypervisor). Every
//! guest has one virtio-net NIC on `bridge0`. Scenarios, one QEMU at a
//! time:
//!
//! * `pvh`: two PVH domUs; `netb` (10.0.0.2) sends to a TCP sink in `neta`
//!   (10.0.0.1, `disktool sink`) and pings it;
//! * `uplink`: one PVH domU (10.0.2.20) with `uplink=bridge0` on the
//!   hypervisor's command line sends to a sink this tool runs on the
//!   developer's 127.0.0.1, reached as 10.0.2.2 through QEMU's user network;
//! * `hvm`: `netb` is an HVM domU with `model=virtio-net` (its stub domain
//!   models the NIC), sending to and pinging the PVH `neta`.
//!
//! The sender moves zeros with `disktool send` (TCP writes of exactly 4 KiB,
//! 64 KiB or 1 MiB; timed from before the connect to the sink's close after
//! it read everything), the same to a sink on its own loopback (Linux's TCP
//! without a NIC), and busybox's `dd bs=64k | nc` (whose nc moves 1 KiB per
//! read and write). Beside them, in the same guest, a `rep movsl` copy
//! (`disktool copy`): the issue's baseline.

use crate::bench;
use crate::bench_disks::{assemble_disktool, best_worst, ferrite_qemu, n0, ratio, size_name};
use crate::build::{self, Profile};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite bench net [--write] [--no-build] [--no-pvh] [--no-uplink] [--no-hvm]
        Boot Debian's Linux in domUs on bridge0 under -icount
        shift=0,sleep=off and print instructions per MiB of TCP sent at
        4 KiB, 64 KiB and 1 MiB writes (disktool send; and busybox dd | nc
        at 64 KiB) PVH guest to PVH guest, PVH guest to a sink on the
        developer's host through the uplink, and HVM guest (virtio-net) to
        PVH guest, beside the same sends over the guest's loopback and a rep
        movsl copy in the same guest, and the ping round trip. --write
        updates its section of BENCHMARKS.md; --no-build uses
        target/baremetal as it is.
";

pub const BEGIN_MARKER: &str = "<!-- ferrite bench net: begin generated results -->";
pub const END_MARKER: &str = "<!-- ferrite bench net: end generated results -->";

/// Per scenario: two Linux boots and a few hundred MiB over TCP.
const LIMIT: Duration = Duration::from_secs(1800);

/// TCP sends: (label, write bytes, MiB sent).
pub const SEQ: [(&str, u64, u64); 3] = [("4k", 4096, 8), ("64k", 65536, 16), ("1m", 1 << 20, 32)];
/// MiB of the `dd bs=64k | nc` send.
pub const NC_MIB: u64 = 8;
/// Times every measurement is made in one boot (best and worst reported).
pub const ROUNDS: u32 = 3;
/// MiB of the in-memory `rep movsl` copy.
pub const COPY_MIB: u64 = 32;
/// `ping -A -c PINGS`, less the same with `-c 1`, is PINGS - 1 round trips.
pub const PINGS: u64 = 101;
/// The guests' memory.
pub const GUEST_MIB: u32 = 192;
/// The sink's port in the receiving guest, the port that ends its run, and
/// the sender's loopback sink.
pub const SINK_PORT: u16 = 5000;
pub const STOP_PORT: u16 = 5002;
pub const LOOPBACK_PORT: u16 = 5001;
/// Issue 13's target: PVH guest to guest at most this many times a copy,
/// per MiB at 64 KiB writes.
pub const TARGET_X_COPY: f64 = 3.0;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub write: bool,
    pub prebuilt: bool,
    pub pvh: bool,
    pub uplink: bool,
    pub hvm: bool,
}

pub fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args { write: false, prebuilt: false, pvh: true, uplink: true, hvm: true };
    for w in args {
        match w.as_str() {
            "--write" => a.write = true,
            "--no-build" => a.prebuilt = true,
            "--no-pvh" => a.pvh = false,
            "--no-uplink" => a.uplink = false,
            "--no-hvm" => a.hvm = false,
            other => bail!("unknown option {other:?} for `ferrite bench net` (see `ferrite help`)"),
        }
    }
    Ok(a)
}

/// The guests' `/init`. `ferrite.net_role=sink` runs `disktool sink` on
/// [`SINK_PORT`] until a connection to `ferrite.stop`'s port;
/// `ferrite.net_role=sender` measures against `ferrite.peer`:`ferrite.port`
/// and prints `NETBENCH <path> <name> <ticks> <bytes> <writes>` lines (path
/// `peer`, `lo` (its loopback), `nc` (busybox `dd | nc` to the peer), `ping`
/// or `-` for the baselines), `NETBENCH-PING <min/avg/max ms>` per round,
/// then `NETBENCH-DONE`.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do
    insmod "/modules/$m" 2>/dev/null || echo "NETBENCH-MODULE-FAIL $m"
done
role=none; ip=; peer=; gw=; port=__SINK_PORT__; ping=0; stop=
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.net_role=*) role="${w#ferrite.net_role=}" ;;
        ferrite.ip=*) ip="${w#ferrite.ip=}" ;;
        ferrite.peer=*) peer="${w#ferrite.peer=}" ;;
        ferrite.gw=*) gw="${w#ferrite.gw=}" ;;
        ferrite.port=*) port="${w#ferrite.port=}" ;;
        ferrite.ping=*) ping="${w#ferrite.ping=}" ;;
        ferrite.stop=*) stop="${w#ferrite.stop=}" ;;
    esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
    echo "NETBENCH-MISSING eth0: $(ls /sys/class/net)"
    poweroff -f
fi
ip link set lo up
ip addr add "$ip/24" dev eth0
ip link set eth0 up
[ -n "$gw" ] && ip route add default via "$gw"
echo "NETBENCH-ETH0 $(cat /sys/class/net/eth0/address) $ip mtu $(cat /sys/class/net/eth0/mtu)"
T=/bin/disktool
case "$role" in
sink)
    $T sink __SINK_PORT__ </dev/null &
    # busybox nc with stdin at EOF shuts its sending half at once and exits
    # when the peer shuts its own: one connection ends the run.
    nc -l -p __STOP_PORT__ </dev/null >/dev/null
    echo "NETBENCH-SINK-DONE"
    poweroff -f
    ;;
sender) ;;
*)
    echo "NETBENCH-ROLE unknown: $role"
    poweroff -f
    ;;
esac
# sendrun PATH HOST PORT NAME SIZE COUNT: disktool's own ticks, from before
# its connect to the sink's close after it read everything.
sendrun() {
    ticks=$($T send $2 $3 $5 $6 2>/tmp/err) || { echo "NETBENCH-FAIL $1 $4 $(head -n 1 /tmp/err)"; return; }
    echo "NETBENCH $1 $4 $ticks $(($5 * $6)) $6"
}
# timed PATH NAME BYTES WRITES COMMAND...: the TSC around COMMAND.
timed() {
    path=$1; name=$2; bytes=$3; writes=$4; shift 4
    t0=$($T tsc)
    "$@" >/tmp/out 2>/tmp/err || echo "NETBENCH-FAIL $path $name $(head -n 1 /tmp/err)"
    t1=$($T tsc)
    echo "NETBENCH $path $name $((t1 - t0)) $bytes $writes"
}
nc_pipe() { dd if=/dev/zero bs=$1 count=$2 2>/dev/null | nc $3 $4; }
$T sink __LOOPBACK_PORT__ </dev/null &
t0=$($T tsc); t1=$($T tsc)
echo "NETBENCH - tsc_pair $((t1 - t0)) 0 0"
echo "NETBENCH - rep_movsd $($T copy __COPY_MIB__) $((__COPY_MIB__ << 20)) __COPY_MIB__"
i=0
until $T send 127.0.0.1 __LOOPBACK_PORT__ 1 0 >/dev/null 2>&1 || [ "$i" -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
i=0
until $T send $peer $port 1 0 >/dev/null 2>&1 || [ "$i" -ge 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "NETBENCH-READY after $i tries"
for round in $(seq 1 __ROUNDS__); do
    for s in __SEQ__; do
        label=${s%%:*}; rest=${s#*:}; bs=${rest%%:*}; mib=${rest#*:}
        n=$(( (mib << 20) / bs ))
        sendrun peer $peer $port open_$label $bs 0
        sendrun peer $peer $port send_$label $bs $n
        sendrun lo 127.0.0.1 __LOOPBACK_PORT__ open_$label $bs 0
        sendrun lo 127.0.0.1 __LOOPBACK_PORT__ send_$label $bs $n
    done
    n=$(( (__NC_MIB__ << 20) / 65536 ))
    timed nc open_64k 0 0 nc_pipe 65536 0 $peer $port
    timed nc send_64k $((n << 16)) $n nc_pipe 65536 $n $peer $port
    if [ "$ping" = 1 ]; then
        timed ping one 0 1 ping -A -q -c 1 $peer
        timed ping many 0 __PINGS__ ping -A -q -c __PINGS__ $peer
        echo "NETBENCH-PING $(grep -o '[0-9]* packets received' /tmp/out | cut -d' ' -f1) $(grep -o 'min/avg/max = [0-9./]*' /tmp/out | cut -d' ' -f3)"
    fi
done
[ -n "$stop" ] && $T send $peer $stop 1 0 >/dev/null
echo "NETBENCH-DONE"
poweroff -f
"#;

/// [`INIT_SCRIPT`] with its sizes filled in.
pub fn init_script() -> String {
    let seq: Vec<String> = SEQ.iter().map(|(l, bs, mib)| format!("{l}:{bs}:{mib}")).collect();
    INIT_SCRIPT
        .replace("__SEQ__", &seq.join(" "))
        .replace("__COPY_MIB__", &COPY_MIB.to_string())
        .replace("__NC_MIB__", &NC_MIB.to_string())
        .replace("__PINGS__", &PINGS.to_string())
        .replace("__ROUNDS__", &ROUNDS.to_string())
        .replace("__SINK_PORT__", &SINK_PORT.to_string())
        .replace("__STOP_PORT__", &STOP_PORT.to_string())
        .replace("__LOOPBACK_PORT__", &LOOPBACK_PORT.to_string())
}

/// One `NETBENCH` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub path: String,
    pub name: String,
    pub ticks: u64,
    pub bytes: u64,
    pub writes: u64,
}

/// What the guests printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub lines: Vec<Line>,
    pub done: bool,
    /// `NETBENCH-PING`: (replies, min, avg, max in ms) per round.
    pub pings: Vec<(u64, f64, f64, f64)>,
    /// `NETBENCH-FAIL`, `-MISSING`, `-MODULE-FAIL`, `-ROLE` lines.
    pub problems: Vec<String>,
    /// `NETBENCH-ETH0` and `-READY` lines.
    pub info: Vec<String>,
    /// The hypervisor's count for the sender's NIC when it left the bridge
    /// (the whole run, loopback aside).
    pub sender_vif: Option<VifStats>,
}

/// `netb: vif MAC ... left bridge B: sent N frames (B bytes), received M (C
/// bytes); ...`, the hypervisor's line when a NIC goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VifStats {
    pub sent_frames: u64,
    pub sent_bytes: u64,
    pub received_frames: u64,
    pub received_bytes: u64,
}

/// The numbers of a `<guest>: vif ... left bridge ...: sent ...` line.
pub fn parse_vif_line(line: &str, guest: &str) -> Option<VifStats> {
    let rest = &line[line.find(&format!("{guest}: vif "))?..];
    let rest = &rest[rest.find(": sent ")? + 7..];
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(4)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    match nums[..] {
        [sent_frames, sent_bytes, received_frames, received_bytes] => {
            Some(VifStats { sent_frames, sent_bytes, received_frames, received_bytes })
        }
        _ => None,
    }
}

/// Finds the `NETBENCH` lines in a console log (after any `(domain) ` or
/// timestamp prefix).
pub fn parse(text: &str) -> Report {
    let mut r = Report::default();
    for l in text.lines() {
        if l.contains("left bridge") {
            r.sender_vif = parse_vif_line(l, SENDER).or(r.sender_vif);
        }
        let Some(pos) = l.find("NETBENCH") else { continue };
        let rest = &l[pos..];
        if rest.starts_with("NETBENCH-DONE") {
            r.done = true;
            continue;
        }
        if rest.starts_with("NETBENCH-SINK-DONE") {
            continue;
        }
        if rest.starts_with("NETBENCH-ETH0") || rest.starts_with("NETBENCH-READY") {
            r.info.push(l.trim().to_string());
            continue;
        }
        if let Some(p) = rest.strip_prefix("NETBENCH-PING ") {
            let w: Vec<&str> = p.split_whitespace().collect();
            let times: Vec<f64> = w.get(1).map(|t| t.split('/').filter_map(|v| v.parse().ok()).collect()).unwrap_or_default();
            match (w.first().and_then(|n| n.parse().ok()), &times[..]) {
                (Some(n), [min, avg, max]) => r.pings.push((n, *min, *avg, *max)),
                _ => r.problems.push(rest.to_string()),
            }
            continue;
        }
        if rest.starts_with("NETBENCH-") {
            r.problems.push(rest.to_string());
            continue;
        }
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.len() != 6 || w[0] != "NETBENCH" {
            continue;
        }
        let (Ok(ticks), Ok(bytes), Ok(writes)) = (w[3].parse(), w[4].parse(), w[5].parse()) else { continue };
        r.lines.push(Line { path: w[1].into(), name: w[2].into(), ticks, bytes, writes });
    }
    r
}

impl Report {
    /// The round of `name` on `path` with the fewest ticks.
    pub fn get(&self, path: &str, name: &str) -> Option<&Line> {
        self.lines.iter().filter(|l| l.path == path && l.name == name).min_by_key(|l| l.ticks)
    }
    /// The round with the most ticks.
    pub fn worst(&self, path: &str, name: &str) -> Option<&Line> {
        self.lines.iter().filter(|l| l.path == path && l.name == name).max_by_key(|l| l.ticks)
    }
    fn per_mib_of(&self, l: Option<&Line>, path: &str, label: &str) -> Option<f64> {
        let l = l?;
        let fixed = self.get(path, &format!("open_{label}")).map_or(0.0, |o| o.ticks as f64);
        (l.bytes > 0).then(|| (l.ticks as f64 - fixed).max(0.0) / (l.bytes as f64 / MIB))
    }
    /// Instructions per MiB sent on `path` at write size `label`, best
    /// round, less the best of the same send with no data (the connect,
    /// the close, the program's exec and exit).
    pub fn per_mib(&self, path: &str, label: &str) -> Option<f64> {
        self.per_mib_of(self.get(path, &format!("send_{label}")), path, label)
    }
    /// The same, worst round.
    pub fn worst_per_mib(&self, path: &str, label: &str) -> Option<f64> {
        self.per_mib_of(self.worst(path, &format!("send_{label}")), path, label)
    }
    /// The `rep movsl` copy per MiB.
    pub fn copy_per_mib(&self) -> Option<f64> {
        let l = self.get("-", "rep_movsd")?;
        Some(l.ticks as f64 / (l.bytes as f64 / MIB))
    }
    fn ping_round_trip(&self, many: Option<&Line>) -> Option<f64> {
        let (many, one) = (many?, self.get("ping", "one")?);
        (many.writes > 1).then(|| many.ticks.saturating_sub(one.ticks) as f64 / (many.writes - 1) as f64)
    }
    /// Instructions per ping round trip: `ping -A -c N` less `ping -A -c 1`
    /// over N - 1 (best round).
    pub fn ping_rtt(&self) -> Option<f64> {
        self.ping_round_trip(self.get("ping", "many"))
    }
    pub fn worst_ping_rtt(&self) -> Option<f64> {
        self.ping_round_trip(self.worst("ping", "many"))
    }
    /// ping's own figures over all rounds: (replies, lowest min, mean avg,
    /// highest max) in ms.
    pub fn ping_reported(&self) -> Option<(u64, f64, f64, f64)> {
        if self.pings.is_empty() {
            return None;
        }
        let n = self.pings.iter().map(|p| p.0).sum();
        let min = self.pings.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let avg = self.pings.iter().map(|p| p.2).sum::<f64>() / self.pings.len() as f64;
        let max = self.pings.iter().map(|p| p.3).fold(0.0, f64::max);
        Some((n, min, avg, max))
    }
}

/// A scenario: one QEMU boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Pvh,
    Uplink,
    Hvm,
}

impl Scenario {
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Pvh => "pvh",
            Scenario::Uplink => "uplink",
            Scenario::Hvm => "hvm",
        }
    }
    pub fn what(self) -> &'static str {
        match self {
            Scenario::Pvh => "PVH guest → PVH guest on bridge0 (virtio-mmio NICs in the hypervisor)",
            Scenario::Uplink => {
                "PVH guest → a sink on the developer's host (bridge0's uplink: the host's virtio-net NIC, QEMU's user network)"
            }
            Scenario::Hvm => "HVM guest (`model=virtio-net`, in its stub domain) → PVH guest on bridge0",
        }
    }
    fn has_ping(self) -> bool {
        self != Scenario::Uplink
    }
}

/// A domU config: `name` of `kind` with `args` on its command line and
/// `vif`.
pub fn guest_config(name: &str, kind: &str, args: &str, vif: &str) -> String {
    format!(
        "# written by `ferrite bench net`\nname = \"{name}\"\ntype = \"{kind}\"\nmemory = {GUEST_MIB}\nvcpus = 1\n\
         kernel = \"vmlinux\"\nramdisk = \"initramfs-net.cpio\"\ncmdline = \"console=ttyS0 loglevel=4 {args}\"\n\
         vif = [ '{vif}' ]\non_crash = \"destroy\"\n"
    )
}

/// The sender's command-line arguments for a peer on bridge0.
pub fn sender_args(ip: &str, peer: &str, port: u16, ping: bool, stop: bool, gw: Option<&str>) -> String {
    let mut s = format!("ferrite.net_role=sender ferrite.ip={ip} ferrite.peer={peer} ferrite.port={port}");
    if ping {
        s.push_str(" ferrite.ping=1");
    }
    if stop {
        let _ = write!(s, " ferrite.stop={STOP_PORT}");
    }
    if let Some(gw) = gw {
        let _ = write!(s, " ferrite.gw={gw}");
    }
    s
}

/// The sending guest's name.
pub const SENDER: &str = "netb";
const SINK_ARGS: &str = "ferrite.net_role=sink ferrite.ip=10.0.0.1";
const SINK_VIF: &str = "mac=00:16:3e:00:00:0a, bridge=bridge0";

/// A TCP sink on the host's loopback until dropped: reads every connection
/// to its end and counts the bytes.
struct HostSink {
    port: u16,
    bytes: Arc<AtomicU64>,
}

impl HostSink {
    fn start() -> Result<HostSink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        // The thread ends with the process (the listener is never closed).
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(HostSink { port, bytes })
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Run {
    pub scenario: Scenario,
    pub report: Report,
    pub command: String,
    pub wall: Duration,
    /// Bytes the host sink received (the uplink scenario).
    pub host_bytes: Option<u64>,
}

struct Guest {
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

fn guest_files(dir: &Path) -> Result<Guest> {
    use crate::{guest_images, initramfs};
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").map_err(anyhow::Error::msg)?;
    guest_images::fetch_debian_package("busybox-static").map_err(anyhow::Error::msg)?;
    let vmlinuz = guest_images::find_vmlinuz(&root).map_err(anyhow::Error::msg)?;
    // PVH guests find their NIC through virtio_mmio, HVM guests through
    // virtio_pci.
    let modules = initramfs::kernel_modules(&root, &["virtio_mmio", "virtio_pci", "virtio_net"]).map_err(anyhow::Error::msg)?;
    let tool = assemble_disktool(dir)?;
    let image = initramfs::busybox_initramfs_with_modules_and_programs(&init_script(), &modules, &[("disktool", &tool)])
        .map_err(anyhow::Error::msg)?;
    let initrd = dir.join("initramfs-net.cpio");
    std::fs::write(&initrd, image).with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(Guest { vmlinuz, initrd })
}

fn run_scenario(s: Scenario, images: &build::HypervisorImages, guest: &Guest, dir: &Path) -> Result<Run> {
    let sdir = dir.join(s.key());
    std::fs::create_dir_all(&sdir)?;
    let kernel = sdir.join("vmlinux");
    std::fs::copy(&guest.vmlinuz, &kernel).context("cannot copy the kernel")?;
    let initrd = sdir.join("initramfs-net.cpio");
    std::fs::copy(&guest.initrd, &initrd).context("cannot copy the initramfs")?;
    let cfg = |name: &str, text: String| -> Result<PathBuf> {
        let p = sdir.join(format!("{name}.cfg"));
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let mut host_sink = None;
    let q = match s {
        Scenario::Pvh => {
            let a = cfg("neta", guest_config("neta", "pvh", SINK_ARGS, SINK_VIF))?;
            let args = sender_args("10.0.0.2", "10.0.0.1", SINK_PORT, true, true, None);
            let b = cfg(SENDER, guest_config(SENDER, "pvh", &args, "mac=00:16:3e:00:00:0b, bridge=bridge0"))?;
            ferrite_qemu(&images.multiboot, &[&a, &b, &kernel, &initrd], Vec::new())
        }
        Scenario::Uplink => {
            let sink = HostSink::start()?;
            let args = sender_args("10.0.2.20", "10.0.2.2", sink.port, false, false, Some("10.0.2.2"));
            host_sink = Some(sink);
            let b = cfg(SENDER, guest_config(SENDER, "pvh", &args, "mac=00:16:3e:00:00:0b, bridge=bridge0"))?;
            let link = crate::xl::link::prepare(&sdir, None)?;
            ferrite_qemu(&images.multiboot, &[link.key_module.path.as_path(), &b, &kernel, &initrd], link.qemu_args)
                .append("uplink=bridge0")
        }
        Scenario::Hvm => {
            let a = cfg("neta", guest_config("neta", "pvh", SINK_ARGS, SINK_VIF))?;
            let args = sender_args("10.0.0.2", "10.0.0.1", SINK_PORT, true, true, None);
            let b = cfg(SENDER, guest_config(SENDER, "hvm", &args, "model=virtio-net, bridge=bridge0"))?;
            let bios = bench::seabios_image()?;
            let rom = PathBuf::from("/usr/share/qemu/linuxboot_dma.bin");
            if !rom.is_file() {
                bail!("{} is missing: sudo apt-get install qemu-system-data", rom.display());
            }
            ferrite_qemu(&images.multiboot, &[&a, &b, &kernel, &initrd, &images.stubdom, &bios, &rom], Vec::new())
        }
    };
    eprintln!("bench net: {} under icount (minutes)...", s.key());
    let start = Instant::now();
    let (text, _outcome, command) = bench::run_captured(q, &sdir, LIMIT)?;
    let wall = start.elapsed();
    let report = parse(&text);
    if !report.done {
        bail!("{}: the sender did not finish (no NETBENCH-DONE); see {}/console.log", s.key(), sdir.display());
    }
    let host_bytes = host_sink.map(|h| h.bytes.load(Ordering::Relaxed));
    Ok(Run { scenario: s, report, command, wall, host_bytes })
}

/// One scenario's table: instructions per MiB sent (best of [`ROUNDS`],
/// the worst in brackets), against the copy and the guest's loopback.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| TCP writes | per MiB | ÷ copy | loopback, per MiB | ÷ loopback |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    let copy = r.copy_per_mib();
    for (label, _, _) in SEQ {
        let peer = r.per_mib("peer", label);
        let lo = r.per_mib("lo", label);
        let _ = writeln!(
            s,
            "| `disktool send`, {} | {} | {} | {} | {} |",
            size_name(label),
            best_worst(peer, r.worst_per_mib("peer", label)),
            ratio(peer, copy),
            best_worst(lo, r.worst_per_mib("lo", label)),
            ratio(peer, lo),
        );
    }
    let nc = r.per_mib("nc", "64k");
    let _ = writeln!(
        s,
        "| busybox `dd bs=64k \\| nc` (1 KiB per read and write) | {} | {} | | |",
        best_worst(nc, r.worst_per_mib("nc", "64k")),
        ratio(nc, copy),
    );
    s
}

/// The ping line, when the scenario pinged.
pub fn ping_line(r: &Report) -> Option<String> {
    let rtt = r.ping_rtt()?;
    let mut s = format!(
        "Ping round trip (TSC around `ping -A -c {PINGS}` less `ping -A -c 1`, over {}; best of {ROUNDS}): **{}** instructions",
        PINGS - 1,
        best_worst(Some(rtt), r.worst_ping_rtt())
    );
    if let Some((n, min, avg, max)) = r.ping_reported() {
        let _ = write!(
            s,
            "; ping's own RTT (virtual ms, 1 ms = 1,000,000 instructions; {n} replies): min {min:.3}, avg {avg:.3}, max {max:.3} ms \
             = {} / {} / {} instructions",
            n0(Some(min * 1e6)),
            n0(Some(avg * 1e6)),
            n0(Some(max * 1e6))
        );
    }
    Some(s)
}

/// The issue's target against a PVH-to-PVH report.
pub fn target_line(r: &Report) -> String {
    match (r.per_mib("peer", "64k"), r.copy_per_mib()) {
        (Some(p), Some(c)) if c > 0.0 => {
            let x = p / c;
            format!(
                "Issue 13's target, PVH guest to guest at most {TARGET_X_COPY}× a copy per MiB at 64 KiB writes: **{}** ({x:.2}×)",
                if x <= TARGET_X_COPY { "met" } else { "missed" }
            )
        }
        _ => "Issue 13's target: not measured".into(),
    }
}

/// What the hypervisor counted on the sender's NIC.
pub fn wire_line(r: &Report) -> Option<String> {
    let v = r.sender_vif?;
    (v.sent_frames > 0).then(|| {
        format!(
            "the sender's NIC, whole run (all rounds, loopback aside): sent {} frames of {} bytes on average, received {} \
             (one per {:.1} sent)",
            n0(Some(v.sent_frames as f64)),
            n0(Some(v.sent_bytes as f64 / v.sent_frames as f64)),
            n0(Some(v.received_frames as f64)),
            v.sent_frames as f64 / v.received_frames.max(1) as f64
        )
    })
}

fn baseline_line(r: &Report) -> String {
    let opens: Vec<String> = SEQ
        .iter()
        .map(|(l, _, _)| format!("{} {}", size_name(l), n0(r.get("peer", &format!("open_{l}")).map(|o| o.ticks as f64))))
        .collect();
    format!(
        "`rep movsl` copy {} per MiB; a send with no data (exec, connect, close; subtracted from every figure): {}; \
         `dd | nc` with no data {}; the timer alone {}",
        n0(r.copy_per_mib()),
        opens.join(", "),
        n0(r.get("nc", "open_64k").map(|o| o.ticks as f64)),
        n0(r.get("-", "tsc_pair").map(|o| o.ticks as f64)),
    )
}

pub const HOW: &str = "\
How measured: one QEMU per scenario, `-smp 1 -icount shift=0,sleep=off`, Debian's cloud kernel (6.1) and a busybox \
initramfs in every guest (1 vCPU, 192 MiB, MTU 1500). The sender's TSC, read by \
`qemu-tests/guests/userspace/disktool.S`, counts the instructions of the whole emulated machine (sender, receiver, \
hypervisor, stub domain): `disktool send` connects, writes zeros in writes of the given size, shuts its sending half \
and reads until the sink (`disktool sink`, 1 MiB reads) closes after reading everything; the same send with no data \
is taken off. \"Loopback\" is the same send to a sink on the sender's own `lo`: Linux's TCP on both ends with no NIC. \
busybox's `nc` reads and writes 1 KiB at a time, so its row is mostly nc. Best of three rounds, the worst in \
brackets. While every CPU is halted, `sleep=off` jumps the clock to the next timer, so a figure is an upper bound on \
instructions when something waited for a timer; and QEMU's user network (the uplink) runs on host time, so waits for it \
count as the polling done meanwhile.";

pub fn markdown(runs: &[Run], commit: &str, date: &str, qemu: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN_MARKER}");
    let _ = writeln!(s, "Measured {date} at Ferrite `{commit}` with {qemu} (`ferrite bench net --write`).\n");
    let _ = writeln!(s, "{HOW}\n");
    for run in runs {
        let _ = writeln!(s, "**{}** (`{}`), instructions:\n", run.scenario.what(), run.scenario.key());
        s.push_str(&table(&run.report));
        s.push('\n');
        if run.scenario.has_ping() {
            if let Some(p) = ping_line(&run.report) {
                let _ = writeln!(s, "{p}.\n");
            }
        }
        if run.scenario == Scenario::Pvh {
            let _ = writeln!(s, "{}.\n", target_line(&run.report));
        }
        let _ = writeln!(s, "Baselines in the same guest: {}.\n", baseline_line(&run.report));
        if let Some(w) = wire_line(&run.report) {
            let _ = writeln!(s, "On the wire: {w}.\n");
        }
        if let Some(b) = run.host_bytes {
            let _ = writeln!(s, "The host's sink received {} bytes.\n", n0(Some(b as f64)));
        }
        for p in &run.report.problems {
            let _ = writeln!(s, "* guest said: `{p}`");
        }
        let _ = writeln!(
            s,
            "QEMU wall-clock time {:.0?}. Command:\n\n```sh\n{}\n```\n",
            run.wall,
            bench::shorten(&run.command)
        );
    }
    let _ = writeln!(s, "{END_MARKER}");
    s
}

pub fn text(runs: &[Run]) -> String {
    let mut s = String::new();
    for run in runs {
        let _ = writeln!(s, "\n{} ({})", run.scenario.what(), run.scenario.key());
        s.push_str(&table(&run.report));
        if let Some(p) = ping_line(&run.report) {
            let _ = writeln!(s, "{p}");
        }
        if run.scenario == Scenario::Pvh {
            let _ = writeln!(s, "{}", target_line(&run.report));
        }
        let _ = writeln!(s, "baselines: {}", baseline_line(&run.report));
        if let Some(w) = wire_line(&run.report) {
            let _ = writeln!(s, "on the wire: {w}");
        }
        if let Some(b) = run.host_bytes {
            let _ = writeln!(s, "host sink received {b} bytes");
        }
        for p in &run.report.problems {
            let _ = writeln!(s, "guest said: {p}");
        }
    }
    s
}

pub fn splice(doc: &str, section: &str) -> String {
    bench::splice_between(doc, BEGIN_MARKER, END_MARKER, section)
}

pub fn main(args: &Args) -> Result<()> {
    crate::deps::require(&[crate::deps::QEMU])?;
    let images =
        if args.prebuilt { bench::prebuilt_images(Profile::Release)? } else { build::build_hypervisor(Profile::Release)? };
    let dir = build::workspace_root().join("target").join("bench").join("net");
    std::fs::create_dir_all(&dir)?;
    let guest = guest_files(&dir)?;
    let mut runs = Vec::new();
    let mut failed = Vec::new();
    for (on, s) in [(args.pvh, Scenario::Pvh), (args.uplink, Scenario::Uplink), (args.hvm, Scenario::Hvm)] {
        if !on {
            continue;
        }
        match run_scenario(s, &images, &guest, &dir) {
            Ok(run) => {
                eprintln!("{}: done (wall {:.0?})", s.key(), run.wall);
                print!("{}", text(std::slice::from_ref(&run)));
                runs.push(run);
            }
            Err(e) => {
                eprintln!("{}: FAILED: {e:#}", s.key());
                failed.push(s.key());
            }
        }
    }
    if args.write {
        let path = build::workspace_root().join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let section = markdown(&runs, &bench::git_commit(), &bench::today(), &bench::qemu_version());
        std::fs::write(&path, splice(&doc, &section)).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
(neta) NETBENCH-ETH0 00:16:3e:00:00:0a 10.0.0.1 mtu 1500
(netb) NETBENCH - tsc_pair 1000 0 0
(netb) NETBENCH - rep_movsd 8388608 33554432 32
(netb) NETBENCH-READY after 3 tries
(netb) NETBENCH peer open_64k 2000000 0 0
(netb) NETBENCH peer send_64k 18000000 16777216 256
(netb) NETBENCH peer send_64k 34000000 16777216 256
(netb) NETBENCH lo open_64k 1000000 0 0
(netb) NETBENCH lo send_64k 9000000 16777216 256
(netb) NETBENCH nc open_64k 3000000 0 0
(netb) NETBENCH nc send_64k 67000000 8388608 128
(netb) NETBENCH ping one 1500000 0 1
(netb) NETBENCH ping many 11500000 0 101
(netb) NETBENCH-PING 101 0.081/0.095/0.210
(netb) NETBENCH-PING 101 0.079/0.105/0.190
(netb) NETBENCH-FAIL peer send_4k disktool: socket, connect, bind, write or read failed
(neta) NETBENCH-SINK-DONE
(netb) NETBENCH-DONE
(ferrite) neta: vif 00:16:3e:00:00:0a left bridge bridge0: sent 29087 frames (1929842 bytes), received 148353 (211127990 bytes); dropped: 0 sent
(ferrite) netb: vif 00:16:3e:0d:bf:37 (virtio-net) left bridge bridge0: sent 148351 frames (211127858 bytes), received 36725 (2433950 bytes); dropped: 0 sent
";

    #[test]
    fn parses_and_computes() {
        let r = parse(SAMPLE);
        assert!(r.done);
        assert_eq!(r.lines.len(), 11);
        assert_eq!(r.info.len(), 2);
        assert_eq!(r.problems, ["NETBENCH-FAIL peer send_4k disktool: socket, connect, bind, write or read failed"]);
        assert_eq!(r.copy_per_mib(), Some(262144.0));
        assert_eq!(r.per_mib("peer", "64k"), Some(1_000_000.0));
        assert_eq!(r.worst_per_mib("peer", "64k"), Some(2_000_000.0));
        assert_eq!(r.per_mib("lo", "64k"), Some(500_000.0));
        assert_eq!(r.per_mib("nc", "64k"), Some(8_000_000.0));
        assert_eq!(r.per_mib("peer", "4k"), None);
        assert_eq!(r.ping_rtt(), Some(100_000.0));
        assert_eq!(r.pings.len(), 2);
        let (n, min, avg, max) = r.ping_reported().unwrap();
        assert_eq!((n, min, max), (202, 0.079, 0.210));
        assert!((avg - 0.1).abs() < 1e-9);
        let t = table(&r);
        assert!(t.contains("| `disktool send`, 64 KiB | 1,000,000 (2,000,000) | 3.81 | 500,000 | 2.00 |"), "{t}");
        assert!(t.contains("| `disktool send`, 4 KiB | – | – | – | – |"), "{t}");
        assert!(t.contains("nc` (1 KiB per read and write) | 8,000,000 | 30.52 | | |"), "{t}");
        assert!(target_line(&r).contains("**missed** (3.81×)"));
        let p = ping_line(&r).unwrap();
        assert!(p.contains("**100,000** instructions"), "{p}");
        assert!(p.contains("= 79,000 / 100,000 / 210,000 instructions"), "{p}");
        let v = VifStats { sent_frames: 148351, sent_bytes: 211127858, received_frames: 36725, received_bytes: 2433950 };
        assert_eq!(r.sender_vif, Some(v));
        let w = wire_line(&r).unwrap();
        assert!(w.contains("sent 148,351 frames of 1,423 bytes on average, received 36,725 (one per 4.0 sent)"), "{w}");
        assert_eq!(parse_vif_line("(ferrite) netb: vif 00:16:3e:00:00:0b left bridge bridge0: sent 3 frames", "netb"), None);
    }

    #[test]
    fn bad_ping_line_is_a_problem() {
        let r = parse("(netb) NETBENCH-PING 0 \n(netb) NETBENCH peer send_64k x 1 1\n");
        assert_eq!(r.problems, ["NETBENCH-PING 0 "]);
        assert!(r.lines.is_empty() && !r.done);
        assert_eq!(r.ping_reported(), None);
    }

    #[test]
    fn script_configs_and_args() {
        let s = init_script();
        assert!(s.contains("for s in 4k:4096:8 64k:65536:16 1m:1048576:32; do"));
        assert!(s.contains("ping -A -q -c 101 $peer"));
        assert!(!s.contains("__"), "{s}");
        let a = parse_args(&["--write".into(), "--no-uplink".into()]).unwrap();
        assert!(a.write && !a.uplink && a.pvh && a.hvm && !a.prebuilt);
        assert!(parse_args(&["--no-bare".into()]).is_err());
        let args = sender_args("10.0.2.20", "10.0.2.2", 4321, false, false, Some("10.0.2.2"));
        assert_eq!(args, "ferrite.net_role=sender ferrite.ip=10.0.2.20 ferrite.peer=10.0.2.2 ferrite.port=4321 ferrite.gw=10.0.2.2");
        let c = guest_config("netb", "hvm", &args, "model=virtio-net, bridge=bridge0");
        assert!(c.contains("type = \"hvm\"") && c.contains("vif = [ 'model=virtio-net, bridge=bridge0' ]"), "{c}");
        assert!(c.contains("cmdline = \"console=ttyS0 loglevel=4 ferrite.net_role=sender"), "{c}");
    }

    #[test]
    fn markdown_splices() {
        let run = Run {
            scenario: Scenario::Pvh,
            report: parse(SAMPLE),
            command: "qemu-system-x86_64 -icount shift=0,sleep=off".into(),
            wall: Duration::from_secs(42),
            host_bytes: None,
        };
        let md = markdown(&[run], "abc1234", "2026-12-06 10:00 UTC", "QEMU 7.2");
        assert!(md.starts_with(BEGIN_MARKER) && md.trim_end().ends_with(END_MARKER));
        assert!(md.contains("at Ferrite `abc1234` with QEMU 7.2"));
        assert!(md.contains("**missed** (3.81×)"));
        assert!(md.contains("QEMU wall-clock time 42s"));
        let doc = format!("# B\n\n## Networking\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\nafter\n");
        assert_eq!(splice(&doc, &md), format!("# B\n\n## Networking\n\n{md}after\n"));
        assert!(splice("# B\n", &md).ends_with(&md));
    }
}
