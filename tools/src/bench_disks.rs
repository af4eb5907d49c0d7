//! `ferrite bench disks`: what a disk request costs a guest, counted in
//! instructions, for every disk path Ferrite has (issue 12 item 5).
//!
//! Each scenario boots Debian's cloud kernel with a busybox initramfs whose
//! `/init` ([`INIT_SCRIPT`]) reads and writes its disks with `dd` (`iflag=
//! direct`/`oflag=direct`: every request goes to the device, not the page
//! cache) and random 4 KiB `pread`s (`qemu-tests/guests/userspace/disktool.S`,
//! a static program that also reads the TSC and makes the `rep movsl` copy
//! baseline). QEMU runs with `-icount shift=0,sleep=off`, so a TSC delta in
//! the guest is a count of instructions of the whole emulated machine
//! (guest, hypervisor, stub domain). Scenarios, one QEMU at a time:
//!
//! * `pvh`: a PVH domU with `disk = ['phy:bench,xvda,w']` (virtio-mmio in
//!   the hypervisor, a host virtio-blk disk behind it);
//! * `nbd`: the same domU with `nbd:10.0.2.2:PORT/data` served by the host's
//!   `qemu-nbd` through QEMU's user network (the hypervisor is the NBD
//!   client over its TCP/IP stack);
//! * `hvm`: an HVM domU (SeaBIOS, the kernel through fw_cfg) with an IDE
//!   disk (`hda`, bus-master DMA) and a virtio-blk PCI disk
//!   (`specification=virtio`), both modelled in its stub domain;
//! * `bare`: the same kernel and init on bare QEMU (`-machine pc`, QEMU's
//!   own virtio-blk-pci and PIIX IDE), the reference.
//!
//! In every guest the init also times the same `dd` from `/dev/zero` to
//! `/dev/null` (Linux's cost per request without a device) and a `rep movsl`
//! copy of 32 MiB in memory (the issue's baseline).

use crate::bench::{self, ICOUNT};
use crate::build::{self, Profile};
use crate::modules::ModuleSpec;
use crate::qemu::QemuCommand;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite bench disks [--write] [--no-build] [--no-pvh] [--no-nbd] [--no-hvm] [--no-bare] [--null-disks]
        Boot Debian's Linux under -icount shift=0,sleep=off on every disk
        path (PVH virtio-blk on a host disk, PVH virtio-blk on qemu-nbd, HVM
        IDE DMA and HVM virtio-blk in the stub domain, and bare QEMU as the
        reference) and print instructions per MiB of sequential reads and
        writes at 4 KiB, 64 KiB and 1 MiB requests and per random 4 KiB read,
        beside a dd from /dev/zero to /dev/null and a rep movsl copy in the
        same guest. Takes several minutes per scenario. --write updates its
        section of BENCHMARKS.md; --no-build uses target/baremetal as it is.
        --null-disks backs the host disks with QEMU's null-co driver (no
        host file I/O; not the NBD export), to see how much of a figure is
        the wait for QEMU's I/O thread.
";

pub const BEGIN_MARKER: &str = "<!-- ferrite bench disks: begin generated results -->";
pub const END_MARKER: &str = "<!-- ferrite bench disks: end generated results -->";

/// Per scenario: a Linux boot and about 100 MiB of I/O under icount.
const LIMIT: Duration = Duration::from_secs(2400);

/// Sequential runs: (label, request bytes, MiB moved).
pub const SEQ: [(&str, u64, u64); 3] = [("4k", 4096, 4), ("64k", 65536, 16), ("1m", 1 << 20, 32)];
/// Random 4 KiB reads per disk.
pub const RAND_READS: u64 = 1024;
/// Times every disk measurement is made in one boot; the tables give the
/// best (fewest instructions) and the worst.
pub const ROUNDS: u32 = 3;
/// MiB of the in-memory `rep movsl` copy.
pub const COPY_MIB: u64 = 32;
/// Each disk image (sparse).
pub const DISK_MIB: u64 = 64;
/// The guests' memory.
pub const GUEST_MIB: u32 = 256;

const MIB: f64 = (1u64 << 20) as f64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub write: bool,
    pub prebuilt: bool,
    pub pvh: bool,
    pub nbd: bool,
    pub hvm: bool,
    pub bare: bool,
    /// Back the host disks with QEMU's `null-co` driver (`--null-disks`).
    pub null: bool,
}

pub fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args { write: false, prebuilt: false, pvh: true, nbd: true, hvm: true, bare: true, null: false };
    for w in args {
        match w.as_str() {
            "--write" => a.write = true,
            "--no-build" => a.prebuilt = true,
            "--no-pvh" => a.pvh = false,
            "--no-nbd" => a.nbd = false,
            "--no-hvm" => a.hvm = false,
            "--no-bare" => a.bare = false,
            "--null-disks" => a.null = true,
            other => bail!("unknown option {other:?} for `ferrite bench disks` (see `ferrite help`)"),
        }
    }
    Ok(a)
}

/// The guest's `/init`. `ferrite.bench_disks=vda,sda` names the disks to
/// measure. Prints `DISKBENCH <disk> <name> <ticks> <bytes> <requests>`
/// lines (disk `-` for the baselines), then `DISKBENCH-DONE` and powers off.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "FERRITE-INIT cpus=$(grep -c '^processor' /proc/cpuinfo) kernel=$(uname -r)"
for m in $(cat /modules.order); do
    insmod "/modules/$m" 2>/dev/null || echo "DISKBENCH-MODULE-FAIL $m"
done
disks=vda
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.bench_disks=*) disks="${w#ferrite.bench_disks=}" ;;
    esac
done
disks=$(echo "$disks" | busybox tr , ' ')
T=/bin/disktool
for d in $disks; do
    i=0
    while [ ! -b /dev/$d ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b /dev/$d ] || { echo "DISKBENCH-MISSING $d"; ls /sys/block; }
done
# ios DISK: "<reads completed> <writes completed>" from its block stats.
ios() {
    [ -r /sys/block/$1/stat ] || { echo "0 0"; return; }
    read -r r _ _ _ w _ < /sys/block/$1/stat
    echo "$r $w"
}
# timed DISK NAME BYTES REQUESTS COMMAND...: the TSC around COMMAND, and
# how many requests the disk's driver completed meanwhile.
timed() {
    dev=$1; name=$2; bytes=$3; reqs=$4; shift 4
    i0=$(ios $dev)
    t0=$($T tsc)
    "$@" 2>/tmp/err || echo "DISKBENCH-FAIL $dev $name $(head -n 1 /tmp/err)"
    t1=$($T tsc)
    i1=$(ios $dev)
    echo "DISKBENCH $dev $name $((t1 - t0)) $bytes $reqs"
    echo "DISKBENCH-IOS $dev $name $((${i1% *} - ${i0% *})) $((${i1#* } - ${i0#* }))"
}
t0=$($T tsc); t1=$($T tsc)
echo "DISKBENCH - tsc_pair $((t1 - t0)) 0 0"
echo "DISKBENCH - rep_movsd $($T copy __COPY_MIB__) $((__COPY_MIB__ << 20)) __COPY_MIB__"
for s in __SEQ__; do
    label=${s%%:*}; rest=${s#*:}; bs=${rest%%:*}; mib=${rest#*:}
    n=$(( (mib << 20) / bs ))
    timed - zero_open_$label 0 0 dd if=/dev/zero of=/dev/null bs=$bs count=0
    timed - zero_$label $((mib << 20)) $n dd if=/dev/zero of=/dev/null bs=$bs count=$n
done
for round in $(seq 1 __ROUNDS__); do
for d in $disks; do
    [ -b /dev/$d ] || continue
    q=/sys/block/$d/queue
    [ "$round" = 1 ] && echo "DISKBENCH-QUEUE $d max_segments=$(cat $q/max_segments) max_segment_size=$(cat $q/max_segment_size) max_sectors_kb=$(cat $q/max_sectors_kb) nr_requests=$(cat $q/nr_requests)"
    for s in __SEQ__; do
        label=${s%%:*}; rest=${s#*:}; bs=${rest%%:*}; mib=${rest#*:}
        n=$(( (mib << 20) / bs ))
        timed $d open_$label 0 0 dd if=/dev/$d of=/dev/null bs=$bs count=0 iflag=direct
        timed $d read_$label $((mib << 20)) $n dd if=/dev/$d of=/dev/null bs=$bs count=$n iflag=direct
        timed $d write_$label $((mib << 20)) $n dd if=/dev/zero of=/dev/$d bs=$bs count=$n oflag=direct
    done
    span=$(( $(cat /sys/block/$d/size) * 512 ))
    i0=$(ios $d)
    ticks=$($T rand /dev/$d __RAND__ $span) || echo "DISKBENCH-FAIL $d rand4k"
    i1=$(ios $d)
    echo "DISKBENCH $d rand4k $ticks $((__RAND__ * 4096)) __RAND__"
    echo "DISKBENCH-IOS $d rand4k $((${i1% *} - ${i0% *})) $((${i1#* } - ${i0#* }))"
done
done
echo "DISKBENCH-DONE"
poweroff -f
"#;

/// [`INIT_SCRIPT`] with its sizes filled in.
pub fn init_script() -> String {
    let seq: Vec<String> = SEQ.iter().map(|(l, bs, mib)| format!("{l}:{bs}:{mib}")).collect();
    INIT_SCRIPT
        .replace("__SEQ__", &seq.join(" "))
        .replace("__COPY_MIB__", &COPY_MIB.to_string())
        .replace("__RAND__", &RAND_READS.to_string())
        .replace("__ROUNDS__", &ROUNDS.to_string())
}

/// One `DISKBENCH` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub disk: String,
    pub name: String,
    pub ticks: u64,
    pub bytes: u64,
    pub requests: u64,
}

/// What a guest printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<Line>,
    pub done: bool,
    /// `DISKBENCH-FAIL`, `-MISSING` and `-MODULE-FAIL` lines.
    pub problems: Vec<String>,
    /// `DISKBENCH-QUEUE` lines: each disk's request queue limits.
    pub queues: Vec<String>,
    /// `DISKBENCH-IOS`: (disk, name, reads, writes) the guest's driver
    /// completed during a measurement.
    pub ios: Vec<(String, String, u64, u64)>,
}

/// Finds the `DISKBENCH` lines in a console log (after any `(domain) ` or
/// timestamp prefix).
pub fn parse(text: &str) -> Report {
    let mut r = Report::default();
    for l in text.lines() {
        let Some(pos) = l.find("DISKBENCH") else { continue };
        let rest = &l[pos..];
        if rest.starts_with("DISKBENCH-DONE") {
            r.done = true;
            continue;
        }
        if let Some(q) = rest.strip_prefix("DISKBENCH-QUEUE ") {
            r.queues.push(q.to_string());
            continue;
        }
        if let Some(io) = rest.strip_prefix("DISKBENCH-IOS ") {
            let w: Vec<&str> = io.split_whitespace().collect();
            if let [disk, name, reads, writes] = w[..] {
                if let (Ok(reads), Ok(writes)) = (reads.parse(), writes.parse()) {
                    r.ios.push((disk.to_string(), name.to_string(), reads, writes));
                }
            }
            continue;
        }
        if rest.starts_with("DISKBENCH-") {
            r.problems.push(rest.to_string());
            continue;
        }
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.len() != 6 || w[0] != "DISKBENCH" {
            continue;
        }
        let (Ok(ticks), Ok(bytes), Ok(requests)) = (w[3].parse(), w[4].parse(), w[5].parse()) else { continue };
        r.lines.push(Line { disk: w[1].into(), name: w[2].into(), ticks, bytes, requests });
    }
    r
}

impl Report {
    /// The round of `name` on `disk` with the fewest ticks.
    pub fn get(&self, disk: &str, name: &str) -> Option<&Line> {
        self.lines.iter().filter(|l| l.disk == disk && l.name == name).min_by_key(|l| l.ticks)
    }
    /// The round with the most ticks.
    pub fn worst(&self, disk: &str, name: &str) -> Option<&Line> {
        self.lines.iter().filter(|l| l.disk == disk && l.name == name).max_by_key(|l| l.ticks)
    }
    /// Instructions per MiB of the worst round of `name`, minus the best
    /// `open` (so the spread is the transfer's alone).
    pub fn worst_per_mib(&self, disk: &str, name: &str, open: &str) -> Option<f64> {
        let l = self.worst(disk, name)?;
        let fixed = self.ticks(disk, open).unwrap_or(0.0);
        (l.bytes > 0).then(|| (l.ticks as f64 - fixed).max(0.0) / (l.bytes as f64 / MIB))
    }
    fn ticks(&self, disk: &str, name: &str) -> Option<f64> {
        self.get(disk, name).map(|l| l.ticks as f64)
    }
    /// Instructions per MiB of `name` on `disk`, minus `open` (the same
    /// command with count=0: dd's exec, open and exit, and the timer's own
    /// cost).
    pub fn per_mib(&self, disk: &str, name: &str, open: &str) -> Option<f64> {
        let l = self.get(disk, name)?;
        let fixed = self.ticks(disk, open).unwrap_or(0.0);
        (l.bytes > 0).then(|| (l.ticks as f64 - fixed).max(0.0) / (l.bytes as f64 / MIB))
    }
    /// The `rep movsl` copy per MiB.
    pub fn copy_per_mib(&self) -> Option<f64> {
        let l = self.get("-", "rep_movsd")?;
        Some(l.ticks as f64 / (l.bytes as f64 / MIB))
    }
    /// `dd if=/dev/zero of=/dev/null` per MiB at request size `label`.
    pub fn zero_per_mib(&self, label: &str) -> Option<f64> {
        self.per_mib("-", &format!("zero_{label}"), &format!("zero_open_{label}"))
    }
    /// Requests the guest's driver completed during the best round of
    /// `name` on `disk` (its `DISKBENCH-IOS` line follows the round's).
    pub fn driver_requests(&self, disk: &str, name: &str) -> Option<u64> {
        let rounds = self.lines.iter().filter(|l| l.disk == disk && l.name == name);
        let best = rounds.enumerate().min_by_key(|(_, l)| l.ticks)?.0;
        self.ios.iter().filter(|i| i.0 == disk && i.1 == name).nth(best).map(|i| i.2 + i.3)
    }
    /// Random 4 KiB reads: instructions per request (best round).
    pub fn rand_per_request(&self, disk: &str) -> Option<f64> {
        let l = self.get(disk, "rand4k")?;
        (l.requests > 0).then(|| l.ticks as f64 / l.requests as f64)
    }
    /// The same, worst round.
    pub fn worst_rand_per_request(&self, disk: &str) -> Option<f64> {
        let l = self.worst(disk, "rand4k")?;
        (l.requests > 0).then(|| l.ticks as f64 / l.requests as f64)
    }
}

/// A scenario: one QEMU boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Pvh,
    Nbd,
    Hvm,
    Bare,
}

impl Scenario {
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Pvh => "pvh",
            Scenario::Nbd => "nbd",
            Scenario::Hvm => "hvm",
            Scenario::Bare => "bare",
        }
    }
    /// (guest disk, what it is) for each disk the scenario measures.
    pub fn disks(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Scenario::Pvh => &[("vda", "PVH virtio-blk, host virtio-blk disk (`phy:`)")],
            Scenario::Nbd => &[("vda", "PVH virtio-blk, NBD export of `qemu-nbd` on the host (`nbd:`)")],
            Scenario::Hvm => &[
                ("sda", "HVM IDE bus-master DMA (`hda`, stub domain)"),
                ("vda", "HVM virtio-blk PCI (`specification=virtio`, stub domain)"),
            ],
            Scenario::Bare => &[
                ("vda", "bare QEMU, its virtio-blk-pci"),
                ("sda", "bare QEMU, its PIIX IDE (`-machine pc`)"),
            ],
        }
    }
    fn guest_cmdline(self) -> String {
        let disks: Vec<&str> = self.disks().iter().map(|d| d.0).collect();
        // On bare QEMU a halted CPU under `sleep=off` jumps the clock to
        // the next timer instead of counting: the guest must not halt
        // while it waits for its disk. Under Ferrite the hypervisor polls
        // its host disk (and NBD socket) while a request is in flight, so
        // the guest halts as usual.
        let idle = if self == Scenario::Bare { " idle=poll" } else { "" };
        format!("console=ttyS0 loglevel=4{idle} ferrite.bench_disks={}", disks.join(","))
    }
}

/// The files every scenario boots.
struct Guest {
    /// The bzImage (PVH domUs take it through the 64-bit boot protocol).
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

fn guest_files(dir: &Path) -> Result<Guest> {
    use crate::{guest_images, initramfs};
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").map_err(anyhow::Error::msg)?;
    guest_images::fetch_debian_package("busybox-static").map_err(anyhow::Error::msg)?;
    let vmlinuz = guest_images::find_vmlinuz(&root).map_err(anyhow::Error::msg)?;
    let modules = initramfs::kernel_modules(&root, &["virtio_mmio", "virtio_pci", "virtio_blk", "ata_piix", "sd_mod"])
        .map_err(anyhow::Error::msg)?;
    let tool = assemble_disktool(dir)?;
    let image = initramfs::busybox_initramfs_with_modules_and_programs(&init_script(), &modules, &[("disktool", &tool)])
        .map_err(anyhow::Error::msg)?;
    let initrd = dir.join("initramfs-disks.cpio");
    std::fs::write(&initrd, image).with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(Guest { vmlinuz, initrd })
}

/// `qemu-tests/guests/userspace/disktool.S` as a static Linux program
/// (also `ferrite bench net`'s).
pub(crate) fn assemble_disktool(dir: &Path) -> Result<Vec<u8>> {
    let src = crate::guestasm::guests_dir().join("userspace").join("disktool.S");
    let obj = dir.join("disktool.o");
    let out = dir.join("disktool");
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<()> {
        let o = cmd.output().with_context(|| format!("cannot run {what}"))?;
        if !o.status.success() {
            bail!("{what} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    run(std::process::Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src), "as")?;
    run(
        std::process::Command::new("ld")
            .args(["-m", "elf_x86_64", "--build-id=none", "-nostdlib", "-static", "-e", "_start", "-o"])
            .arg(&out)
            .arg(&obj),
        "ld",
    )?;
    std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
}

/// A sparse disk image of [`DISK_MIB`].
fn disk_image(path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.set_len(DISK_MIB << 20)?;
    Ok(())
}

/// The `-drive` option for image `path` (or, with `null`, QEMU's `null-co`
/// driver of the same size: reads give zeros, writes are dropped, and no
/// host file I/O happens) attached as `if`.
fn drive_spec(path: &Path, null: bool, attach: &str) -> String {
    if null {
        format!("driver=null-co,size={},read-zeroes=on,{attach}", DISK_MIB << 20)
    } else {
        format!("file={},format=raw,{attach}", path.display().to_string().replace(',', ",,"))
    }
}

fn drive_args(path: &Path, id: &str, null: bool) -> Vec<String> {
    vec![
        "-drive".into(),
        drive_spec(path, null, &format!("if=none,id={id}")),
        "-device".into(),
        format!("virtio-blk-pci,drive={id},serial={id}"),
    ]
}

/// Ferrite on one host CPU, icount, with `modules`.
pub(crate) fn ferrite_qemu(hv: &Path, modules: &[&Path], extra: Vec<String>) -> QemuCommand {
    let mut q = QemuCommand::new()
        .machine("q35")
        .memory_mib(1024)
        .smp(1)
        .debug_exit(true)
        .kernel(hv)
        .append("console=com1 debug_exit=0xf4");
    for m in modules {
        q = q.module(ModuleSpec::new(m, ""));
    }
    q.extra_args(extra).extra_args(["-icount", ICOUNT])
}

fn pvh_config(s: Scenario, target: &str) -> String {
    format!(
        "# written by `ferrite bench disks`\nname = \"disks\"\ntype = \"pvh\"\nmemory = {GUEST_MIB}\nvcpus = 1\n\
         kernel = \"vmlinux\"\nramdisk = \"initramfs-disks.cpio\"\ncmdline = \"{}\"\n\
         disk = [ '{target},xvda,w' ]\non_crash = \"destroy\"\n",
        s.guest_cmdline()
    )
}

fn hvm_config(kernel: &str) -> String {
    format!(
        "# written by `ferrite bench disks`\nname = \"disks\"\ntype = \"hvm\"\nmemory = {GUEST_MIB}\nvcpus = 1\n\
         kernel = \"{kernel}\"\nramdisk = \"initramfs-disks.cpio\"\ncmdline = \"{}\"\n\
         disk = [ 'phy:ide0,hda,w', 'phy:vblk0,xvdb,w,specification=virtio' ]\non_crash = \"destroy\"\n",
        Scenario::Hvm.guest_cmdline()
    )
}

/// `qemu-nbd` serving a file on a free local port until dropped.
struct QemuNbd {
    child: std::process::Child,
    port: u16,
}

impl QemuNbd {
    fn start(image: &Path) -> Result<QemuNbd> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new("qemu-nbd")
            .args(["-f", "raw", "-x", "data", "-b", "127.0.0.1", "-p", &port.to_string(), "--persistent", "--cache=writeback"])
            .arg(image)
            .spawn()
            .context("cannot start qemu-nbd (sudo apt-get install qemu-utils)")?;
        let mut s = QemuNbd { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = s.child.kill();
                bail!("qemu-nbd did not start listening");
            }
            if let Some(st) = s.child.try_wait()? {
                bail!("qemu-nbd exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.port = port;
        Ok(s)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct Run {
    pub scenario: Scenario,
    pub report: Report,
    pub command: String,
    pub wall: Duration,
}

fn run_scenario(s: Scenario, images: &build::HypervisorImages, guest: &Guest, dir: &Path, null: bool) -> Result<Run> {
    let sdir = dir.join(s.key());
    std::fs::create_dir_all(&sdir)?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = sdir.join(name);
        std::fs::copy(from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    let initrd = copy(&guest.initrd, "initramfs-disks.cpio")?;
    let mut _nbd = None;
    let q = match s {
        Scenario::Pvh | Scenario::Nbd => {
            let kernel = copy(&guest.vmlinuz, "vmlinux")?;
            let disk = sdir.join("disk.img");
            disk_image(&disk)?;
            let (target, extra) = if s == Scenario::Nbd {
                let server = QemuNbd::start(&disk)?;
                let link = crate::xl::link::prepare(&sdir, None)?;
                let target = format!("nbd:10.0.2.2:{}/data", server.port);
                _nbd = Some(server);
                (target, link.qemu_args)
            } else {
                ("phy:bench".to_string(), drive_args(&disk, "bench", null))
            };
            let cfg = sdir.join("disks.cfg");
            std::fs::write(&cfg, pvh_config(s, &target))?;
            ferrite_qemu(&images.multiboot, &[&cfg, &kernel, &initrd], extra)
        }
        Scenario::Hvm => {
            let name = guest.vmlinuz.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let kernel = copy(&guest.vmlinuz, &name)?;
            let (ide, vblk) = (sdir.join("ide0.img"), sdir.join("vblk0.img"));
            disk_image(&ide)?;
            disk_image(&vblk)?;
            let cfg = sdir.join("disks.cfg");
            std::fs::write(&cfg, hvm_config(&name))?;
            let bios = bench::seabios_image()?;
            let rom = PathBuf::from("/usr/share/qemu/linuxboot_dma.bin");
            if !rom.is_file() {
                bail!("{} is missing: sudo apt-get install qemu-system-data", rom.display());
            }
            let mut extra = drive_args(&ide, "ide0", null);
            extra.extend(drive_args(&vblk, "vblk0", null));
            ferrite_qemu(&images.multiboot, &[&cfg, &kernel, &initrd, &images.stubdom, &bios, &rom], extra)
        }
        Scenario::Bare => {
            let (vblk, ide) = (sdir.join("vblk0.img"), sdir.join("ide0.img"));
            disk_image(&vblk)?;
            disk_image(&ide)?;
            let mut extra = drive_args(&vblk, "vblk0", null);
            extra.extend([
                "-drive".to_string(),
                drive_spec(&ide, null, "if=ide"),
                "-icount".to_string(),
                ICOUNT.to_string(),
            ]);
            QemuCommand::new()
                .machine("pc")
                .cpu("qemu64")
                .memory_mib(GUEST_MIB)
                .smp(1)
                .kernel(&guest.vmlinuz)
                .append(&s.guest_cmdline())
                .module(ModuleSpec::new(&initrd, ""))
                .extra_args(extra)
        }
    };
    eprintln!("bench disks: {} under icount (minutes)...", s.key());
    let start = Instant::now();
    let (text, _outcome, command) = bench::run_captured(q, &sdir, LIMIT)?;
    let wall = start.elapsed();
    let report = parse(&text);
    if !report.done {
        bail!(
            "{}: the guest did not finish (no DISKBENCH-DONE); see {}/console.log",
            s.key(),
            sdir.display()
        );
    }
    Ok(Run { scenario: s, report, command, wall })
}

pub(crate) fn n0(v: Option<f64>) -> String {
    match v {
        Some(v) => {
            let s = format!("{:.0}", v);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        None => "–".into(),
    }
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

pub(crate) fn size_name(label: &str) -> &'static str {
    match label {
        "4k" => "4 KiB",
        "64k" => "64 KiB",
        "1m" => "1 MiB",
        _ => "?",
    }
}

/// "best (worst)".
pub(crate) fn best_worst(best: Option<f64>, worst: Option<f64>) -> String {
    match (best, worst) {
        (Some(b), Some(w)) if n0(Some(w)) != n0(Some(b)) => format!("{} ({})", n0(Some(b)), n0(Some(w))),
        _ => n0(best),
    }
}

/// One disk's table: per MiB for the sequential runs, per request for the
/// random reads (best of [`ROUNDS`], the worst in brackets), against the
/// `rep movsl` copy and the `dd` from `/dev/zero` to `/dev/null` of the
/// same guest.
pub fn disk_table(r: &Report, disk: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| requests | read, per MiB | write, per MiB | read ÷ copy | write ÷ copy | read ÷ dd zero→null | write ÷ dd zero→null | guest requests per MiB |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let copy = r.copy_per_mib();
    for (label, _, mib) in SEQ {
        let open = format!("open_{label}");
        let (read, write) = (format!("read_{label}"), format!("write_{label}"));
        let rd = r.per_mib(disk, &read, &open);
        let wr = r.per_mib(disk, &write, &open);
        let zero = r.zero_per_mib(label);
        let reqs = r.driver_requests(disk, &read).map(|n| n as f64 / mib as f64);
        let _ = writeln!(
            s,
            "| sequential {} | {} | {} | {} | {} | {} | {} | {} |",
            size_name(label),
            best_worst(rd, r.worst_per_mib(disk, &read, &open)),
            best_worst(wr, r.worst_per_mib(disk, &write, &open)),
            ratio(rd, copy),
            ratio(wr, copy),
            ratio(rd, zero),
            ratio(wr, zero),
            reqs.map_or("–".into(), |v| format!("{v:.0}"))
        );
    }
    let rand = r.rand_per_request(disk);
    let zero4k = r.get("-", "zero_4k").zip(r.get("-", "zero_open_4k")).map(|(z, o)| {
        (z.ticks.saturating_sub(o.ticks)) as f64 / z.requests.max(1) as f64
    });
    let copy4k = copy.map(|c| c / 256.0);
    let _ = writeln!(
        s,
        "| random 4 KiB reads, **per request** | {} | | {} | | {} | | |",
        best_worst(rand, r.worst_rand_per_request(disk)),
        ratio(rand, copy4k),
        ratio(rand, zero4k),
    );
    s
}

/// The baselines measured in one guest.
pub fn baseline_line(r: &Report) -> String {
    let zero: Vec<String> = SEQ
        .iter()
        .map(|(l, _, _)| format!("{} requests {}", size_name(l), n0(r.zero_per_mib(l))))
        .collect();
    let opens: Vec<String> = SEQ
        .iter()
        .map(|(l, _, _)| format!("{} {}", size_name(l), n0(r.ticks("-", &format!("zero_open_{l}")))))
        .collect();
    format!(
        "`rep movsl` copy {} per MiB; `dd if=/dev/zero of=/dev/null` per MiB: {}; a `dd ... count=0` (exec, open, exit, \
         the timer; subtracted from every dd figure, measured for each device and size): {}; the timer alone {}",
        n0(r.copy_per_mib()),
        zero.join(", "),
        opens.join(", "),
        n0(r.ticks("-", "tsc_pair"))
    )
}

pub fn markdown(runs: &[Run], commit: &str, date: &str, qemu: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN_MARKER}");
    let _ = writeln!(s, "Measured {date} at Ferrite `{commit}` with {qemu} (`ferrite bench disks --write`).");
    let _ = writeln!(s, "Instructions (TSC ticks under `-icount shift=0,sleep=off`), the whole emulated machine.\n");
    for run in runs {
        for (disk, what) in run.scenario.disks() {
            let _ = writeln!(s, "**{what}** (`{}`, guest `/dev/{disk}`):\n", run.scenario.key());
            s.push_str(&disk_table(&run.report, disk));
            s.push('\n');
        }
        let _ = writeln!(s, "Baselines in the same guest: {}.\n", baseline_line(&run.report));
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
        for (disk, what) in run.scenario.disks() {
            let _ = writeln!(s, "\n{what} ({}, /dev/{disk})", run.scenario.key());
            s.push_str(&disk_table(&run.report, disk));
        }
        let _ = writeln!(s, "baselines: {}", baseline_line(&run.report));
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
    if args.null && args.write {
        bail!("--null-disks is an experiment beside the real figures; it does not --write");
    }
    let dir = build::workspace_root().join("target").join("bench").join(if args.null { "disks-null" } else { "disks" });
    std::fs::create_dir_all(&dir)?;
    let guest = guest_files(&dir)?;
    let mut runs = Vec::new();
    let wanted = [(args.pvh, Scenario::Pvh), (args.nbd, Scenario::Nbd), (args.hvm, Scenario::Hvm), (args.bare, Scenario::Bare)];
    let mut failed = Vec::new();
    for (on, s) in wanted {
        if !on {
            continue;
        }
        match run_scenario(s, &images, &guest, &dir, args.null) {
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
(disks) FERRITE-INIT cpus=1 kernel=6.1
(disks) DISKBENCH - tsc_pair 1000 0 0
(disks) DISKBENCH - rep_movsd 8388608 33554432 32
(disks) DISKBENCH - zero_open_4k 500000 0 0
(disks) DISKBENCH - zero_4k 4500000 4194304 1024
(disks) DISKBENCH vda open_4k 600000 0 0
(disks) DISKBENCH vda read_4k 40600000 4194304 1024
(disks) DISKBENCH-IOS vda read_4k 1024 0
(disks) DISKBENCH vda read_4k 80600000 4194304 1024
(disks) DISKBENCH vda rand4k 51200000 4194304 1024
(disks) DISKBENCH-FAIL vda write_4k dd: bad
DISKBENCH-DONE
";

    #[test]
    fn parses_and_computes() {
        let r = parse(SAMPLE);
        assert!(r.done);
        assert_eq!(r.lines.len(), 8);
        assert_eq!(r.driver_requests("vda", "read_4k"), Some(1024));
        assert_eq!(r.worst_per_mib("vda", "read_4k", "open_4k"), Some(20_000_000.0));
        assert_eq!(r.problems, ["DISKBENCH-FAIL vda write_4k dd: bad"]);
        assert_eq!(r.copy_per_mib(), Some(262144.0));
        assert_eq!(r.zero_per_mib("4k"), Some(1_000_000.0));
        assert_eq!(r.per_mib("vda", "read_4k", "open_4k"), Some(10_000_000.0));
        assert_eq!(r.rand_per_request("vda"), Some(50_000.0));
        let t = disk_table(&r, "vda");
        assert!(t.contains("| sequential 4 KiB | 10,000,000 (20,000,000) | – | 38.15 | – | 10.00 | – | 256 |"), "{t}");
        assert!(t.contains("| random 4 KiB reads, **per request** | 50,000 | | 48.83 | | 12.80 | | |"), "{t}");
    }

    #[test]
    fn script_and_args() {
        let s = init_script();
        assert!(s.contains("for s in 4k:4096:4 64k:65536:16 1m:1048576:32; do"));
        assert!(!s.contains("__"));
        let a = parse_args(&["--write".into(), "--no-nbd".into()]).unwrap();
        assert!(a.write && !a.nbd && a.pvh && a.hvm && a.bare);
        assert!(parse_args(&["--no-linux".into()]).is_err());
        assert!(pvh_config(Scenario::Nbd, "nbd:10.0.2.2:1/data").contains("disk = [ 'nbd:10.0.2.2:1/data,xvda,w' ]"));
        assert!(hvm_config("vmlinuz").contains("ferrite.bench_disks=sda,vda"));
    }

    #[test]
    fn splices() {
        let doc = format!("# B\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\nafter\n");
        assert_eq!(splice(&doc, &format!("{BEGIN_MARKER}\nnew\n{END_MARKER}\n")), format!("# B\n\n{BEGIN_MARKER}\nnew\n{END_MARKER}\nafter\n"));
    }
}
