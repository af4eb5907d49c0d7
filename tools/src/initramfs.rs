//! Initramfs images for Linux guests: a `newc` cpio archive writer (pure),
//! a reader for checking archives, and a busybox-based initramfs built
//! around Debian's statically linked `busybox-static`.
//!
//! The `newc` format (what Linux's initramfs unpacker reads, see the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`):
//! every entry is a 110-byte ASCII header (`070701` then 13 fields of 8 hex
//! digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
//! rdevmajor, rdevminor, namesize including the NUL, check), the name and a
//! NUL, padding to a multiple of 4 bytes (counted from the start of the
//! header), then the data, padded to a multiple of 4. A symlink's data is
//! its target. The archive ends with an entry named `TRAILER!!!`.
//!
//! Archives are reproducible: mtime 0, uid/gid 0, inode numbers assigned in
//! order from 1. Linux accepts the archive uncompressed as an initrd.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// `S_IFMT` bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Builds a `newc` archive in memory. Paths are relative (`bin/sh`; a
/// leading `/` is dropped), each parent directory must have been added
/// before its children (Linux's unpacker does not create missing parents),
/// and every path may appear once.
#[derive(Debug, Clone)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
    names: HashSet<String>,
    dirs: HashSet<String>,
}

impl Default for CpioWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter { buf: Vec::new(), next_ino: 1, names: HashSet::new(), dirs: HashSet::new() }
    }

    /// Checks and normalises `path`: no empty, `.` or `..` components, no
    /// NUL, not the trailer's name, not yet present, parent present.
    fn claim(&mut self, path: &str) -> Result<String, String> {
        let p = path.trim_start_matches('/');
        if p.is_empty() {
            return Err(format!("cpio path {path:?} is empty"));
        }
        if p.contains('\0') {
            return Err(format!("cpio path {path:?} contains a NUL byte"));
        }
        if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(format!("cpio path {path:?} has an empty, '.' or '..' component"));
        }
        if p == TRAILER {
            return Err(format!("cpio path {path:?} is reserved for the end-of-archive marker"));
        }
        if self.names.contains(p) {
            return Err(format!("cpio path {path:?} added twice"));
        }
        if let Some((parent, _)) = p.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                return Err(format!("cpio path {path:?}: parent directory {parent:?} was not added first"));
            }
        }
        self.names.insert(p.to_string());
        Ok(p.to_string())
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> Result<(), String> {
        let filesize = u32::try_from(data.len()).map_err(|_| format!("cpio entry {name:?} is larger than 4 GiB"))?;
        let ino = if name == TRAILER {
            0
        } else {
            let i = self.next_ino;
            self.next_ino += 1;
            i
        };
        let namesize = name.len() + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            filesize,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check (unused by newc)
        ];
        let start = self.buf.len();
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        let head = self.buf.len() - start;
        self.buf.resize(self.buf.len() + pad4(head), 0);
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + pad4(data.len()), 0);
        Ok(())
    }

    /// A directory with permission bits `perm` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, String> {
        let p = self.claim(path)?;
        self.entry(&p, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])?;
        self.dirs.insert(p);
        Ok(self)
    }

    /// A regular file with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<&mut Self, String> {
        let p = self.claim(path)?;
        self.entry(&p, S_IFREG | (perm & 0o7777), 1, (0, 0), data)?;
        Ok(self)
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, String> {
        if target.is_empty() || target.contains('\0') {
            return Err(format!("symlink {path:?} has an invalid target {target:?}"));
        }
        let p = self.claim(path)?;
        self.entry(&p, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())?;
        Ok(self)
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<&mut Self, String> {
        let p = self.claim(path)?;
        self.entry(&p, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])?;
        Ok(self)
    }

    /// Appends the `TRAILER!!!` entry and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // Cannot fail: empty data.
        let _ = self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.buf
    }
}

/// One entry read back from a `newc` archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl CpioEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

/// Reads a `newc` archive (without the trailer entry), checking magic,
/// field syntax, padding bytes and that the trailer is present.
pub fn parse_newc(data: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = data.get(pos..pos + HEADER_LEN).ok_or_else(|| format!("truncated header at offset {pos}"))?;
        if &header[..6] != MAGIC {
            return Err(format!("bad magic at offset {pos}"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s =
                std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|_| format!("non-ASCII field at {pos}"))?;
            *v = u32::from_str_radix(s, 16).map_err(|_| format!("bad hex field {s:?} at offset {pos}"))?;
        }
        let namesize = f[11] as usize;
        if namesize == 0 {
            return Err(format!("zero namesize at offset {pos}"));
        }
        let name_bytes = data
            .get(pos + HEADER_LEN..pos + HEADER_LEN + namesize)
            .ok_or_else(|| format!("truncated name at {pos}"))?;
        if name_bytes[namesize - 1] != 0 {
            return Err(format!("name at offset {pos} is not NUL-terminated"));
        }
        let name =
            String::from_utf8(name_bytes[..namesize - 1].to_vec()).map_err(|_| format!("non-UTF-8 name at {pos}"))?;
        let head = HEADER_LEN + namesize;
        let data_start = pos + head + pad4(head);
        if data.get(pos + head..data_start).is_none_or(|p| p.iter().any(|&b| b != 0)) {
            return Err(format!("bad name padding for {name:?}"));
        }
        let filesize = f[6] as usize;
        let file = data.get(data_start..data_start + filesize).ok_or_else(|| format!("truncated data for {name:?}"))?;
        let next = data_start + filesize + pad4(filesize);
        if data.get(data_start + filesize..next).is_none_or(|p| p.iter().any(|&b| b != 0)) {
            return Err(format!("bad data padding for {name:?}"));
        }
        pos = next;
        if name == TRAILER {
            return Ok(out);
        }
        out.push(CpioEntry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdev: (f[9], f[10]),
            data: file.to_vec(),
        });
    }
}

/// Busybox applets the initramfs gets as `bin/<applet> -> busybox` links
/// (every one [`TEST_INIT_SCRIPT`] uses, plus a few for the interactive
/// shell).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "cttyhack",
    "date",
    "dd",
    "dmesg",
    "echo",
    "free",
    "grep",
    "head",
    "insmod",
    "ls",
    "mkdir",
    "mount",
    "poweroff",
    "ps",
    "reboot",
    "rm",
    "seq",
    "setsid",
    "sha256sum",
    "sleep",
    "sort",
    "sync",
    "top",
    "umount",
    "uname",
    "uptime",
    "vi",
    "wc",
];

/// The init script the Linux tests and the `ferrite up` demo run as
/// `/init`. It prints (on the console):
///
/// * `FERRITE-INIT cpus=<N> mem_kb=<MemTotal> date=<unix time> kernel=<release>`
/// * `FERRITE-WORKLOAD ok <seconds>` after N parallel sha256sum loops over
///   a 1.3 MB file (`seq 1 200000`) agreed on the hash (`FERRITE-WORKLOAD FAIL ...` if not)
///
/// and then does what `ferrite.test=` on the kernel command line says:
/// `poweroff` (default; prints `FERRITE-POWEROFF`), `reboot` (prints
/// `FERRITE-REBOOTING`) or `shell` (prints `FERRITE-SHELL`, runs a shell on
/// the console, powers off when it exits).
pub const TEST_INIT_SCRIPT: &str = r#"#!/bin/sh
# Ferrite's test init: PID 1 in a busybox initramfs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp
# Modules the initramfs carries (the `ferrite up` demo dom0: virtio-mmio
# and vsock, for `ferrite xl`).
if [ -f /modules.order ]; then
    for m in $(cat /modules.order); do
        insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
    done
fi
cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(grep '^MemTotal:' /proc/meminfo | { read -r _ kb _; echo "$kb"; })
echo "FERRITE-INIT cpus=$cpus mem_kb=$mem_kb date=$(date +%s) kernel=$(uname -r)"

start=$(date +%s)
# Not /dev/urandom: before the kernel's CRNG is seeded, reading it runs a
# timer-jitter entropy loop, which is a different test.
seq 1 200000 > /tmp/data
i=0
while [ "$i" -lt "$cpus" ]; do
    ( for r in 1 2 3; do sha256sum /tmp/data; done > /tmp/sum.$i ) &
    i=$((i + 1))
done
wait
sums=$(cat /tmp/sum.* | sort -u | wc -l)
lines=$(cat /tmp/sum.* | wc -l)
end=$(date +%s)
if [ "$sums" = 1 ] && [ "$lines" = $((cpus * 3)) ]; then
    echo "FERRITE-WORKLOAD ok $((end - start))"
else
    echo "FERRITE-WORKLOAD FAIL: $sums distinct hashes in $lines lines from $cpus workers"
fi
rm -f /tmp/data /tmp/sum.*

action=poweroff
for w in $(cat /proc/cmdline); do
    case "$w" in ferrite.test=*) action="${w#ferrite.test=}" ;; esac
done
case "$action" in
    reboot)
        echo "FERRITE-REBOOTING"
        reboot -f
        ;;
    shell)
        # The ACPI power button (`xl shutdown`) powers off, as acpid
        # would, when the initramfs brought Linux's button and evdev.
        for e in /sys/class/input/event*; do
            [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
            ( dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 2>/dev/null
              echo "FERRITE-POWER-BUTTON: powering off"; poweroff -f ) &
        done
        echo "FERRITE-SHELL: busybox sh on the console; 'poweroff -f' (or exit) powers dom0 off"
        setsid cttyhack sh
        echo "FERRITE-POWEROFF"
        poweroff -f
        ;;
    *)
        echo "FERRITE-POWEROFF"
        poweroff -f
        ;;
esac
sleep 10
echo "FERRITE-INIT-ERROR: still running after ${action}"
poweroff -f
"#;

/// The Linux command line for [`TEST_INIT_SCRIPT`]: serial console,
/// `loglevel=4` (warnings and worse: every console byte is a trapped UART
/// write, so kernel chatter costs boot time) and `ferrite.test=<action>`
/// (`poweroff`, `reboot` or `shell`). No commas: QEMU's multiboot `-initrd`
/// splits modules on them.
pub fn test_linux_cmdline(action: &str) -> String {
    format!("console=ttyS0 loglevel=4 ferrite.test={action}")
}

/// A busybox initramfs (pure): `bin/busybox` (from `busybox`, a static
/// binary), `bin/<applet>` links for [`BUSYBOX_APPLETS`], `dev` with a
/// `console` node, `proc`, `sys`, `tmp`, `root` and `init` (mode 0755).
pub fn busybox_initramfs_from(busybox: &[u8], init_script: &str) -> Result<Vec<u8>, String> {
    let mut w = busybox_tree(busybox)?;
    w.file("init", 0o755, init_script.as_bytes())?;
    Ok(w.finish())
}

/// The busybox tree every test initramfs shares (everything but `init`).
fn busybox_tree(busybox: &[u8]) -> Result<CpioWriter, String> {
    let mut w = CpioWriter::new();
    w.dir("bin", 0o755)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for applet in BUSYBOX_APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    w.dir("dev", 0o755)?;
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.char_device("dev/null", 0o666, 1, 3)?;
    w.dir("proc", 0o555)?;
    w.dir("sys", 0o555)?;
    w.dir("tmp", 0o1777)?;
    w.dir("root", 0o700)?;
    Ok(w)
}

/// `bin/busybox` of Debian's `busybox-static`, fetched into the Ferrite
/// cache if needed (see [`crate::guest_images`]).
pub fn debian_busybox() -> Result<PathBuf, String> {
    let root = crate::guest_images::fetch_debian_package("busybox-static")?;
    let p = root.join("bin").join("busybox");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("busybox-static has no bin/busybox (looked in {})", root.display()))
    }
}

/// A busybox initramfs with `init_script` as `/init`, using Debian's
/// `busybox-static` (fetched and cached on first use).
pub fn busybox_initramfs(init_script: &str) -> Result<Vec<u8>, String> {
    let path = debian_busybox()?;
    let busybox = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !busybox.starts_with(b"\x7fELF") {
        return Err(format!("{} is not an ELF binary", path.display()));
    }
    busybox_initramfs_from(&busybox, init_script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/a", 0o644, b"").unwrap();
        w.file("bin/bb", 0o755, b"x").unwrap();
        w.file("bin/ccc", 0o600, b"four").unwrap();
        w.file("/bin/dddd", 0o644, b"hello").unwrap();
        w.symlink("bin/sh", "bb").unwrap();
        w.dir("etc", 0o700).unwrap();
        w.file("etc/longer-name.conf", 0o640, &[7u8; 1001]).unwrap();
        w.finish()
    }

    #[test]
    fn header_layout_is_newc() {
        let mut w = CpioWriter::new();
        w.file("ab", 0o755, b"xyz").unwrap();
        let a = w.finish();
        let expect_head = concat!(
            "070701", "00000001", "000081ED", "00000000", "00000000", "00000001", "00000000", "00000003", "00000000",
            "00000000", "00000000", "00000000", "00000003", "00000000"
        );
        assert_eq!(&a[..110], expect_head.as_bytes());
        // 110 + "ab\0" = 113 -> padded to 116; data 3 -> padded to 4.
        assert_eq!(&a[110..116], b"ab\0\0\0\0");
        assert_eq!(&a[116..120], b"xyz\0");
        // Trailer: inode 0, mode 0, nlink 1, namesize 11.
        let t = &a[120..];
        assert_eq!(&t[..14], b"07070100000000");
        assert_eq!(&t[94..102], b"0000000B");
        assert_eq!(&t[110..121], b"TRAILER!!!\0");
        assert_eq!(t.len(), 124);
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn round_trips_through_own_parser() {
        let a = sample();
        assert_eq!(a.len() % 4, 0);
        let e = parse_newc(&a).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/a", "bin/bb", "bin/ccc", "bin/dddd", "bin/sh", "etc", "etc/longer-name.conf"]);
        // Unique inodes from 1, mtime 0, owner root.
        for (i, x) in e.iter().enumerate() {
            assert_eq!(x.ino, i as u32 + 1);
            assert_eq!((x.mtime, x.uid, x.gid), (0, 0, 0));
        }
        assert!(e[0].is_dir() && e[0].mode == 0o40755 && e[0].nlink == 2);
        assert!(e[2].is_file() && e[2].mode == 0o100755 && e[2].data == b"x");
        assert_eq!(e[4].data, b"hello");
        assert!(e[5].is_symlink() && e[5].data == b"bb" && e[5].mode == 0o120777);
        assert_eq!(e[7].data, vec![7u8; 1001]);
        // Reproducible.
        assert_eq!(a, sample());
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = CpioWriter::new();
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.file("a//b", 0o644, b"").is_err());
        assert!(w.file("nul\0", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
        assert!(w.file("nodir/x", 0o644, b"").is_err(), "parent must come first");
        w.dir("d", 0o755).unwrap();
        w.file("d/x", 0o644, b"").unwrap();
        assert!(w.file("d/x", 0o644, b"").is_err(), "duplicate");
        assert!(w.symlink("d/l", "").is_err());
        // A failed add leaves no entry behind.
        assert_eq!(parse_newc(&w.finish()).unwrap().len(), 2);
    }

    #[test]
    fn parser_rejects_damage() {
        let a = sample();
        assert!(parse_newc(&a[..a.len() - 4]).is_err(), "no trailer");
        let mut b = a.clone();
        b[0] = b'1';
        assert!(parse_newc(&b).is_err());
        let mut c = a.clone();
        c[6] = b'G';
        assert!(parse_newc(&c).is_err());
        assert!(parse_newc(&[]).is_err());
    }

    #[test]
    fn busybox_layout() {
        let fake = b"\x7fELF fake busybox";
        let a = busybox_initramfs_from(fake, TEST_INIT_SCRIPT).unwrap();
        let e = parse_newc(&a).unwrap();
        let get = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("no {n}"));
        assert_eq!(get("bin/busybox").data, fake);
        assert_eq!(get("bin/busybox").mode, 0o100755);
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("init").data, TEST_INIT_SCRIPT.as_bytes());
        assert!(get("bin/sh").is_symlink() && get("bin/sh").data == b"busybox");
        assert_eq!(get("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        for d in ["dev", "proc", "sys", "tmp"] {
            assert!(get(d).is_dir());
        }
        // Every external command the script runs has an applet link.
        let used = [
            "mount",
            "mkdir",
            "grep",
            "date",
            "uname",
            "seq",
            "sha256sum",
            "cat",
            "sort",
            "wc",
            "rm",
            "reboot",
            "setsid",
            "cttyhack",
            "sh",
            "poweroff",
            "sleep",
        ];
        for cmd in used {
            assert!(TEST_INIT_SCRIPT.contains(&format!("{cmd} ")), "{cmd} not in the script");
            assert!(BUSYBOX_APPLETS.contains(&cmd), "the init script runs {cmd:?}, which has no applet link");
        }
    }

    /// `cpio` from PATH, else from the Ferrite cache's unpacked Debian
    /// `cpio` package (never downloaded here).
    fn find_cpio() -> Option<PathBuf> {
        let ok = |p: &Path| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if ok(Path::new("cpio")) {
            return Some(PathBuf::from("cpio"));
        }
        let cached = crate::guest_images::package_dir("cpio").ok()?.join("root/bin/cpio");
        ok(&cached).then_some(cached)
    }

    #[test]
    fn gnu_cpio_reads_the_archive() {
        let Some(cpio) = find_cpio() else {
            eprintln!("note: no `cpio` program (apt-get install cpio); checked against the built-in parser only");
            return;
        };
        let a = sample();
        let run = |args: &[&str], dir: &Path| {
            use std::io::Write;
            let mut c = Command::new(&cpio)
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(&a).unwrap();
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "cpio {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        };
        let t = std::env::temp_dir().join(format!("ferrite-cpio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        let list = run(&["-t", "--quiet"], &t);
        assert_eq!(
            list.lines().collect::<Vec<_>>(),
            ["bin", "bin/a", "bin/bb", "bin/ccc", "bin/dddd", "bin/sh", "etc", "etc/longer-name.conf"]
        );
        run(&["-i", "-d", "--quiet", "--no-absolute-filenames"], &t);
        assert_eq!(std::fs::read(t.join("bin/dddd")).unwrap(), b"hello");
        assert_eq!(std::fs::read(t.join("etc/longer-name.conf")).unwrap(), vec![7u8; 1001]);
        assert_eq!(std::fs::read_link(t.join("bin/sh")).unwrap(), PathBuf::from("bb"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(t.join("bin/bb")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::metadata(t.join("bin/ccc")).unwrap().permissions().mode() & 0o7777, 0o600);
        std::fs::remove_dir_all(&t).unwrap();
    }
}

/// The init script of the HVM disk test (`ferrite.test` is not used). It
/// loads the kernel modules listed in `/modules.order` (the IDE driver
/// and the disk driver, in dependency order), waits for `/dev/sda` (or the
/// disk `ferrite.disk=` names, e.g. `vda` for virtio-blk), and
/// prints:
///
/// * `FERRITE-INIT cpus=... mem_kb=... date=... kernel=...` (as the PVH test)
/// * `FERRITE-ATA configured for <mode>`: the transfer mode libata chose
///   (from sysfs `xfer_mode`; `none` without an ATA disk)
/// * `FERRITE-DISK-SHA256 <hash>` of the disk's first `ferrite.check_mib=` MiB
/// * then looks for `FERRITE-MARKER-<ferrite.marker=>` at sector
///   `ferrite.marker_lba=`: if absent it writes it, syncs, prints
///   `FERRITE-MARKER written` and reboots; if present it prints
///   `FERRITE-MARKER found` and powers off. So a domain that restarts
///   shows data written before the restart reads back after it.
pub const HVM_DISK_INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
cpus=$(grep -c '^processor' /proc/cpuinfo)
mem_kb=$(grep '^MemTotal:' /proc/meminfo | { read -r _ kb _; echo "$kb"; })
echo "FERRITE-INIT cpus=$cpus mem_kb=$mem_kb date=$(date +%s) kernel=$(uname -r)"
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
done
check_mib=64
marker=none
marker_lba=0
disk=sda
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.check_mib=*) check_mib="${w#ferrite.check_mib=}" ;;
        ferrite.marker=*) marker="${w#ferrite.marker=}" ;;
        ferrite.marker_lba=*) marker_lba="${w#ferrite.marker_lba=}" ;;
        ferrite.disk=*) disk="${w#ferrite.disk=}" ;;
    esac
done
i=0
while [ ! -b /dev/$disk ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b /dev/$disk ]; then
    echo "FERRITE-DISK none"
    ls /sys/bus/pci/devices
    dmesg | grep -i -E 'pci|ata|scsi|irq|acpi|virtio' | tail -60
    poweroff -f
fi
# libata's chosen transfer mode (its "configured for" message is debug-level).
mode=none
for f in /sys/class/ata_device/*/xfer_mode; do
    [ -r "$f" ] && m=$(cat "$f") && [ -n "$m" ] && [ "$m" != "<unknown>" ] && { mode="$m"; break; }
done
echo "FERRITE-ATA configured for $mode"
sum=$(dd if=/dev/$disk bs=1M count="$check_mib" 2>/dev/null | sha256sum)
echo "FERRITE-DISK-SHA256 ${sum%% *}"
want="FERRITE-MARKER-$marker"
have=$(dd if=/dev/$disk bs=512 skip="$marker_lba" count=1 2>/dev/null | head -c ${#want})
if [ "$have" = "$want" ]; then
    echo "FERRITE-MARKER found"
    poweroff -f
fi
echo -n "$want" | dd of=/dev/$disk bs=512 seek="$marker_lba" conv=sync,fsync 2>/dev/null
sync
echo "FERRITE-MARKER written"
reboot -f
sleep 10
poweroff -f
"#;

/// `/init` for a PVH guest with virtio-blk disks (the `virtio_mmio` and
/// `virtio_blk` modules in `/modules`): finds `/dev/vda` (read-write) and
/// `/dev/vdb` (read-only) through ACPI, hashes the first
/// `ferrite.check_mib` MiB of each, copies the first `ferrite.copy_mib`
/// MiB of vda to `ferrite.copy_to_mib` on it with two writers at once
/// (several requests in flight) and fsync, checks that vdb refuses a
/// write, and powers off. Each step prints a `FERRITE-VDISK` line.
///
/// `ferrite.vdisk_mode=ext4` instead mounts vda as ext4, hashes
/// `/data.bin`, writes its first `ferrite.copy_mib` MiB to `/written.bin`
/// (fsync, unmount), then checks vdb as above and powers off.
/// `ferrite.vdisk_mode=durable` makes the copy with fsync, says
/// `FERRITE-VDISK synced` and waits to be killed (the test then kills the
/// whole machine and checks the image); `ferrite.vdisk_mode=until_error`
/// reads vda (uncached) until a read fails, says so and powers off (the
/// test kills vda's server meanwhile).
pub const PVH_DISK_INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "FERRITE-INIT cpus=$cpus kernel=$(uname -r)"
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
done
check_mib=16
copy_mib=8
copy_to_mib=64
mode=check
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.vdisk_mode=*) mode="${w#ferrite.vdisk_mode=}" ;;
        ferrite.check_mib=*) check_mib="${w#ferrite.check_mib=}" ;;
        ferrite.copy_mib=*) copy_mib="${w#ferrite.copy_mib=}" ;;
        ferrite.copy_to_mib=*) copy_to_mib="${w#ferrite.copy_to_mib=}" ;;
    esac
done
i=0
while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; then
    echo "FERRITE-VDISK none"
    ls /sys/bus/virtio/devices /sys/bus/platform/devices
    dmesg | grep -i -E 'virtio|acpi|LNRO|irq' | tail -40
    poweroff -f
fi
echo "FERRITE-VDISK vda $(cat /sys/block/vda/size) vdb $(cat /sys/block/vdb/size) ro=$(cat /sys/block/vdb/ro)"
hash_disk() {
    sum=$(dd if=/dev/$1 bs=1M count="$check_mib" 2>/dev/null | sha256sum)
    echo "FERRITE-VDISK-SHA256 $1 ${sum%% *}"
}
try_vdb_write() {
    if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
        echo "FERRITE-VDISK vdb accepted a write"
    else
        echo "FERRITE-VDISK vdb refused a write"
    fi
}
case "$mode" in
ext4)
    mkdir -p /mnt
    if ! mount -t ext4 /dev/vda /mnt; then
        echo "FERRITE-VDISK ext4 mount failed"
        poweroff -f
    fi
    sum=$(sha256sum /mnt/data.bin)
    echo "FERRITE-VDISK-EXT4 data.bin ${sum%% *}"
    dd if=/mnt/data.bin of=/mnt/written.bin bs=1M count="$copy_mib" conv=fsync 2>/dev/null
    sync
    umount /mnt
    echo "FERRITE-VDISK ext4 wrote written.bin"
    hash_disk vdb
    try_vdb_write
    poweroff -f
    ;;
durable)
    dd if=/dev/vda of=/dev/vda bs=1M count="$copy_mib" seek="$copy_to_mib" conv=fsync 2>/dev/null
    echo "FERRITE-VDISK synced"
    while true; do sleep 10; done
    ;;
until_error)
    echo "FERRITE-VDISK reading until an error"
    i=0
    while dd if=/dev/vda of=/dev/null bs=64k count=16 skip=$(( (i % 64) * 16 )) iflag=direct 2>/dev/null; do
        i=$((i + 1))
        sleep 0.1
    done
    echo "FERRITE-VDISK read failed after $i good reads"
    poweroff -f
    ;;
esac
hash_disk vda
hash_disk vdb
half=$((copy_mib / 2))
dd if=/dev/vda of=/dev/vda bs=64k count=$((half * 16)) seek=$((copy_to_mib * 16)) conv=fsync 2>/dev/null &
dd if=/dev/vda of=/dev/vda bs=1M count=$half skip=$half seek=$((copy_to_mib + half)) conv=fsync 2>/dev/null &
wait
sync
echo "FERRITE-VDISK copied $copy_mib MiB"
try_vdb_write
poweroff -f
"#;

/// `/init` for a Linux dom0 that manages its Ferrite with `ferrite xl`
/// over vsock (the modules in `/modules`, the `ferrite` command in
/// `/bin`, the key in `/etc/ferrite/xl.key`): prints `xl list` and the
/// `nr_cpus` line of `xl info` between marker lines; with
/// `/etc/ferrite/made.cfg`, creates that domain and lists again; then
/// powers off.
pub const DOM0_XL_INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "FERRITE-INIT cpus=$(grep -c '^processor' /proc/cpuinfo)"
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
done
i=0
while [ ! -e /dev/vsock ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "FERRITE-XL-BEGIN"
ferrite xl list 2>&1
ferrite xl info 2>&1 | grep nr_cpus
echo "FERRITE-XL-END $?"
if [ -f /etc/ferrite/made.cfg ]; then
    ferrite xl create /etc/ferrite/made.cfg 2>&1
    echo "FERRITE-XL-CREATE $?"
    ferrite xl list 2>&1
fi
poweroff -f
"#;

/// The `depends=` list in a kernel module's `.modinfo`.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(pos) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[pos + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|d| !d.is_empty()).map(str::to_string).collect()
}

/// Kernel modules `wanted` and everything they depend on, from a kernel
/// package unpacked at `root` (`lib/modules/<version>/kernel/...`, no
/// modules.dep needed): (file name, contents) in load order.
pub fn kernel_modules(root: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let modules_dir = root.join("lib").join("modules");
    let version_dir = std::fs::read_dir(&modules_dir)
        .map_err(|e| format!("cannot read {}: {e}", modules_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("kernel").is_dir())
        .ok_or_else(|| format!("no lib/modules/<version>/kernel in {}", root.display()))?;
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![version_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(name.replace('-', "_"), p);
            }
        }
    }
    fn visit(
        name: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        out: &mut Vec<(String, Vec<u8>)>,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(), String> {
        let key = name.replace('-', "_");
        if !seen.insert(key.clone()) {
            return Ok(());
        }
        let path = index.get(&key).ok_or_else(|| format!("kernel module {name} is not in the package"))?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for dep in module_depends(&bytes) {
            visit(&dep, index, out, seen)?;
        }
        out.push((format!("{key}.ko"), bytes));
        Ok(())
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for w in wanted {
        visit(w, &index, &mut out, &mut seen)?;
    }
    Ok(out)
}

/// The modules `wanted` that Debian's kernel package at `root` has as
/// loadable modules (its `modules.builtin` lists the built-in ones), with
/// what they depend on, in load order (see [`kernel_modules`]).
pub fn debian_kernel_modules(root: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let builtin = std::fs::read_dir(root.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("modules.builtin")).ok())
        .unwrap_or_default();
    let wanted = crate::installed_disk::loadable_modules(wanted, &builtin);
    kernel_modules(root, &wanted)
}

/// What the `ferrite up` demo dom0 needs to run `ferrite xl` over vsock:
/// Linux's virtio-mmio and vsock transport modules and the power-button
/// ones (loaded by [`TEST_INIT_SCRIPT`] from `/modules`), with the static
/// `ferrite` command as `/bin/ferrite` and the management key in
/// `/etc/ferrite/xl.key` (mode 0600), plus `extra` files in
/// `/etc/ferrite`: (name, contents).
pub fn demo_dom0_initramfs(
    kernel_root: &Path,
    ferrite: &[u8],
    key_hex: &str,
    extra: &[(&str, &[u8])],
) -> Result<Vec<u8>, String> {
    let wanted: Vec<&str> = DOM0_XL_MODULES.iter().chain(&POWER_BUTTON_MODULES).copied().collect();
    let modules = debian_kernel_modules(kernel_root, &wanted)?;
    let key = format!("{}\n", key_hex.trim());
    let paths: Vec<String> = extra.iter().map(|(name, _)| format!("etc/ferrite/{name}")).collect();
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("etc/", 0o755, &[]),
        ("etc/ferrite/", 0o755, &[]),
        ("etc/ferrite/xl.key", 0o600, key.as_bytes()),
        ("bin/ferrite", 0o755, ferrite),
    ];
    files.extend(paths.iter().zip(extra).map(|(p, (_, data))| (p.as_str(), 0o644, *data)));
    busybox_initramfs_with(TEST_INIT_SCRIPT, &modules, &files)
}

/// The kernel modules a dom0 needs for `ferrite xl` over vsock.
pub const DOM0_XL_MODULES: [&str; 2] = ["virtio_mmio", "vmw_vsock_virtio_transport"];

/// Linux's ACPI power button and the input events [`TEST_INIT_SCRIPT`]'s
/// shell mode waits on, to power off when it is pressed (`xl shutdown`).
pub const POWER_BUTTON_MODULES: [&str; 2] = ["button", "evdev"];

/// The `ferrite up` demo domU's initramfs: [`TEST_INIT_SCRIPT`] with the
/// power-button modules, nothing else (no key: a domU has no business
/// with the management service).
pub fn demo_domu_initramfs(kernel_root: &Path) -> Result<Vec<u8>, String> {
    busybox_initramfs_with(TEST_INIT_SCRIPT, &debian_kernel_modules(kernel_root, &POWER_BUTTON_MODULES)?, &[])
}

/// A busybox initramfs with `init_script` as `/init` plus kernel modules
/// under `/modules` and their load order in `/modules.order`.
pub fn busybox_initramfs_with_modules(init_script: &str, modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    busybox_initramfs_with(init_script, modules, &[])
}

/// [`busybox_initramfs_with_modules`] plus `programs`, (name, contents)
/// written as `bin/<name>` with mode 0755.
pub fn busybox_initramfs_with_modules_and_programs(
    init_script: &str,
    modules: &[(String, Vec<u8>)],
    programs: &[(&str, &[u8])],
) -> Result<Vec<u8>, String> {
    let paths: Vec<String> = programs.iter().map(|(name, _)| format!("bin/{name}")).collect();
    let files: Vec<(&str, u32, &[u8])> = paths.iter().zip(programs).map(|(p, (_, bytes))| (p.as_str(), 0o755, *bytes)).collect();
    busybox_initramfs_with(init_script, modules, &files)
}

/// [`busybox_initramfs_with_modules`] plus `files`: (path without the
/// leading `/`, permissions, contents), in folders that must exist
/// (`bin`, `etc`) or that the list creates first (a path ending in `/`).
pub fn busybox_initramfs_with(init_script: &str, modules: &[(String, Vec<u8>)], files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>, String> {
    let path = debian_busybox()?;
    let busybox = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut w = busybox_tree(&busybox)?;
    for (path, perm, data) in files {
        match path.strip_suffix('/') {
            Some(dir) => {
                w.dir(dir, *perm)?;
            }
            None => {
                w.file(path, *perm, data)?;
            }
        }
    }
    w.dir("modules", 0o755)?;
    let mut order = String::new();
    for (name, bytes) in modules {
        w.file(&format!("modules/{name}"), 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("modules.order", 0o644, order.as_bytes())?;
    w.file("init", 0o755, init_script.as_bytes())?;
    Ok(w.finish())
}

#[cfg(test)]
mod module_tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = b"\x7fELF....license=GPL\0depends=scsi_mod,scsi_common\0retpoline=Y\0";
        assert_eq!(module_depends(ko), ["scsi_mod", "scsi_common"]);
        assert!(module_depends(b"depends=\0").is_empty());
        assert!(module_depends(b"nothing here").is_empty());
    }
}
