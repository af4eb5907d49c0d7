//! A raw disk image laid out the way an installed Debian system is: an
//! MBR with one bootable Linux partition at 1 MiB, GRUB (i386-pc) in the
//! MBR and the gap before the partition, and an ext4 root file system with
//! `/boot/vmlinuz`, `/boot/initrd.img` and `/boot/grub/grub.cfg`. Booting
//! it exercises the whole chain a real guest goes through: BIOS → GRUB's
//! `boot.img` → `core.img` → `grub.cfg` → Linux → initramfs → `switch_root`
//! onto the disk → `/sbin/init`.
//!
//! Everything is made by an ordinary user with Debian's tools, no loop
//! mounts: `grub-mkimage` makes `core.img`, our own code does what
//! `grub-bios-setup` does with it (see [`install_boot_img`] and
//! [`prepare_core_img`]), `mke2fs -d` fills the file system from a staging
//! folder, `debugfs` gives the files to root and reads `/marker` back.
//!
//! The root system is busybox. Its `/sbin/init` ([`ROOT_INIT_SCRIPT`])
//! prints, in order:
//!
//! * `FERRITE-ROOT-INIT cpus=<N> kernel=<release> uptime=<seconds>` (the
//!   first field of `/proc/uptime`)
//! * `FERRITE-ROOT-DEVICE <device mounted on />` (`/dev/sda1`)
//! * `FERRITE-ROOT-SHA256 <hex>` of `/data/blob`, 32 MiB of pseudo-random
//!   bytes whose hash the builder computed on the host
//! * `FERRITE-ROOT-MARKER written` after writing the caller's marker to
//!   `/marker` and syncing
//!
//! then powers off. A failure prints a `FERRITE-INITRAMFS-FAIL ...` or
//! `FERRITE-ROOT-FAIL ...` line and powers off.
//!
//! GRUB is installed like `grub-install --no-rs-codes`: GRUB's default adds
//! Reed-Solomon recovery codes after `core.img` in the gap, which only
//! matter when the gap gets damaged; `core.img` says it has none (its
//! redundancy field is 0) and boots the same.

use crate::deps::{self, Tool};
use crate::{guest_images, initramfs, iso};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bytes per disk sector.
pub const SECTOR: usize = 512;
/// The whole disk.
pub const DISK_BYTES: u64 = 96 << 20;
/// Where partition 1 starts (1 MiB, what Debian's installer and fdisk use);
/// sectors 1 up to here are the "MBR gap" GRUB embeds `core.img` in.
pub const PARTITION_START_LBA: u64 = 2048;
/// The root partition's device in the guest (IDE disk 0 through libata).
pub const ROOT_DEVICE: &str = "/dev/sda1";
/// Size of `/data/blob`, the file the guest hashes.
pub const BLOB_BYTES: usize = 32 << 20;
/// Seed of `/data/blob`'s contents: the same bytes on every build.
pub const BLOB_SEED: u64 = 0x1257_a11e_d0d1_5c00;
/// The root file system's UUID: fixed so builds are reproducible, and
/// grub.cfg finds the partition by it (`search --fs-uuid`) as Debian's does.
pub const ROOT_FS_UUID: &str = "4f3e8a2c-5d17-4b0e-9c61-7a2b3d4e5f60";
/// The MBR's disk signature (bytes 0x1B8..0x1BC, "FERR"), fixed for
/// reproducibility.
pub const DISK_SIGNATURE: u32 = u32::from_le_bytes(*b"FERR");
/// GRUB modules built into `core.img`: enough to read grub.cfg from the ext4
/// partition and boot Linux from it, with the menu on the serial port.
pub const GRUB_CORE_MODULES: &[&str] =
    &["biosdisk", "part_msdos", "ext2", "normal", "linux", "configfile", "echo", "search", "serial", "terminal"];
/// Kernel modules the initramfs loads (those the kernel has built in are
/// skipped): the IDE controller, the SCSI disk driver, the root file system.
pub const INITRAMFS_MODULES: &[&str] = &["ata_piix", "sd_mod", "ext4"];

const GRUB_MKIMAGE: Tool =
    Tool { program: "grub-mkimage", package: "grub-common", why: "makes GRUB's core.img for the installed disk" };
const MKE2FS: Tool =
    Tool { program: "mke2fs", package: "e2fsprogs", why: "makes the installed disk's ext4 root file system" };
const DEBUGFS: Tool =
    Tool { program: "debugfs", package: "e2fsprogs", why: "edits and reads the ext4 image without mounting it" };
const E2FSCK: Tool =
    Tool { program: "e2fsck", package: "e2fsprogs", why: "replays the ext4 journal before reading /marker back" };
const SHA256SUM: Tool = Tool { program: "sha256sum", package: "coreutils", why: "hashes /data/blob on the host" };

// ---------------------------------------------------------------------------
// The MBR partition table (pure).
// ---------------------------------------------------------------------------

/// Offset of the disk signature in the MBR; GRUB calls it the Windows NT magic.
const MBR_DISK_SIGNATURE: usize = 0x1b8;
/// Offset of the first of the four 16-byte partition entries.
const MBR_PARTITION_TABLE: usize = 0x1be;
/// Offset of the 0x55, 0xAA boot signature.
const MBR_BOOT_SIGNATURE: usize = 0x1fe;

/// Partition type of a Linux file system.
pub const PARTITION_TYPE_LINUX: u8 = 0x83;

/// The CHS address of `lba` in an MBR entry, with the 255-head, 63-sector
/// geometry fdisk uses; past cylinder 1023 the "too large" marker
/// (1023, 254, 63), which every reader takes as "use the LBA fields".
pub fn chs_bytes(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [head as u8, (sector as u8) | (((cylinder >> 8) as u8) << 6), cylinder as u8]
}

/// One 16-byte MBR partition entry: status (0x80 bootable), CHS first, type,
/// CHS last, first LBA (u32 LE), sector count (u32 LE).
pub fn partition_entry(bootable: bool, partition_type: u8, start_lba: u64, sectors: u64) -> Result<[u8; 16], String> {
    if sectors == 0 {
        return Err("an MBR partition needs at least one sector".into());
    }
    let end_lba = start_lba + sectors - 1;
    let (start32, count32) = match (u32::try_from(start_lba), u32::try_from(sectors)) {
        (Ok(s), Ok(c)) if u32::try_from(end_lba).is_ok() => (s, c),
        _ => return Err(format!("partition at LBA {start_lba} of {sectors} sectors is past the MBR's 2 TiB limit")),
    };
    let mut e = [0u8; 16];
    e[0] = if bootable { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs_bytes(start_lba));
    e[4] = partition_type;
    e[5..8].copy_from_slice(&chs_bytes(end_lba));
    e[8..12].copy_from_slice(&start32.to_le_bytes());
    e[12..16].copy_from_slice(&count32.to_le_bytes());
    Ok(e)
}

/// An MBR with no boot code: `disk_signature`, partition 1 bootable, type
/// 0x83, from [`PARTITION_START_LBA`] to the end of a `disk_bytes` disk, the
/// other three entries empty, and the boot signature.
pub fn partitioned_mbr(disk_bytes: u64, disk_signature: u32) -> Result<[u8; SECTOR], String> {
    let total = disk_bytes / SECTOR as u64;
    if disk_bytes % SECTOR as u64 != 0 || total <= PARTITION_START_LBA {
        return Err(format!(
            "a disk of {disk_bytes} bytes cannot hold a partition at LBA {PARTITION_START_LBA} (use a whole number of sectors, more than 1 MiB)"
        ));
    }
    let mut mbr = [0u8; SECTOR];
    mbr[MBR_DISK_SIGNATURE..MBR_DISK_SIGNATURE + 4].copy_from_slice(&disk_signature.to_le_bytes());
    let entry = partition_entry(true, PARTITION_TYPE_LINUX, PARTITION_START_LBA, total - PARTITION_START_LBA)?;
    mbr[MBR_PARTITION_TABLE..MBR_PARTITION_TABLE + 16].copy_from_slice(&entry);
    mbr[MBR_BOOT_SIGNATURE] = 0x55;
    mbr[MBR_BOOT_SIGNATURE + 1] = 0xaa;
    Ok(mbr)
}

// ---------------------------------------------------------------------------
// GRUB i386-pc installation: what grub-bios-setup does (pure).
// Offsets from GRUB's include/grub/i386/pc/boot.h and kernel.h; the steps
// follow util/setup.c (grub_util_bios_setup, the embedding path).
// ---------------------------------------------------------------------------

/// boot.img: the BIOS parameter block GRUB keeps from the old sector.
const BOOT_BPB_START: usize = 0x3;
const BOOT_BPB_END: usize = 0x5a;
/// boot.img: the sector `core.img` starts at (u64 LE).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the BIOS drive to boot from; 0xFF means "the one the BIOS says".
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a 2-byte `jmp` that skips the "BIOS passed a floppy number for
/// a hard disk" workaround; grub-bios-setup turns it into two NOPs for disks.
const BOOT_DRIVE_CHECK: usize = 0x66;
/// Segment core.img's second sector is loaded at (0x800 + 512 / 16): the
/// first goes to 0x8000, the rest right after it.
const CORE_LOAD_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);
/// The blocklist diskboot.img reads the rest of core.img by: 12-byte
/// entries (start u64, length u16 sectors, segment u16) growing down from
/// the end of core.img's first sector, ended by an all-zero entry.
const BLOCKLIST_ENTRY: usize = 12;
/// Offset, in core.img's second sector, of the length of the part that has
/// no Reed-Solomon codes; 0xFFFF means a core.img this layout doesn't fit.
const CORE_NO_RS_LENGTH: usize = 0x14;
/// The most sectors grub-bios-setup embeds: what fits between
/// GRUB_KERNEL_I386_PC_LINK_ADDR (0x9000) and 0x78000, where the real-mode
/// memory GRUB may use ends.
pub const CORE_MAX_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR as u64;

/// boot.img as grub-bios-setup writes it to a hard disk's MBR: the BPB
/// area (0x03..0x5A) and the disk signature and partition table
/// (0x1B8..0x1FE) from `current_mbr`, the sector `core.img` starts at,
/// boot drive 0xFF and the drive check's `jmp` replaced by two NOPs.
pub fn install_boot_img(boot_img: &[u8], current_mbr: &[u8], core_sector: u64) -> Result<[u8; SECTOR], String> {
    if boot_img.len() != SECTOR {
        return Err(format!("boot.img is {} bytes, not {SECTOR}: is grub-pc-bin installed correctly?", boot_img.len()));
    }
    if current_mbr.len() != SECTOR {
        return Err(format!("the current MBR is {} bytes, not {SECTOR}", current_mbr.len()));
    }
    if boot_img[MBR_BOOT_SIGNATURE..] != [0x55, 0xaa] {
        return Err("boot.img does not end with the 0x55AA boot signature".into());
    }
    // A short jmp (EB xx) where GRUB 2's boot.S has it; anything else is a
    // boot.img whose layout this code does not know.
    if boot_img[BOOT_DRIVE_CHECK] != 0xeb {
        return Err(format!(
            "boot.img has {:#04x} at the drive check (offset {BOOT_DRIVE_CHECK:#x}), not GRUB 2's short jmp 0xeb: unknown GRUB version",
            boot_img[BOOT_DRIVE_CHECK]
        ));
    }
    let mut mbr = [0u8; SECTOR];
    mbr.copy_from_slice(boot_img);
    mbr[BOOT_BPB_START..BOOT_BPB_END].copy_from_slice(&current_mbr[BOOT_BPB_START..BOOT_BPB_END]);
    mbr[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_sector.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xff;
    mbr[BOOT_DRIVE_CHECK] = 0x90;
    mbr[BOOT_DRIVE_CHECK + 1] = 0x90;
    mbr[MBR_DISK_SIGNATURE..MBR_BOOT_SIGNATURE].copy_from_slice(&current_mbr[MBR_DISK_SIGNATURE..MBR_BOOT_SIGNATURE]);
    Ok(mbr)
}

/// core.img as grub-bios-setup embeds it at `first_sector` (contiguous
/// sectors, `gap_sectors` of them free): padded with zeros to whole
/// sectors, its blocklist cleared and set to one entry covering everything
/// after the first sector, then the terminator. Fails when it does not fit.
pub fn prepare_core_img(core_img: &[u8], first_sector: u64, gap_sectors: u64) -> Result<Vec<u8>, String> {
    let sectors = core_img.len().div_ceil(SECTOR) as u64;
    if sectors < 2 {
        return Err(format!("core.img is only {} bytes: grub-mkimage output is at least two sectors", core_img.len()));
    }
    let limit = gap_sectors.min(CORE_MAX_SECTORS);
    if sectors > limit {
        return Err(format!(
            "core.img is {} bytes ({sectors} sectors) but only {limit} sectors fit (the gap before the partition has {gap_sectors}, GRUB loads at most {CORE_MAX_SECTORS}): embed fewer GRUB modules",
            core_img.len()
        ));
    }
    let mut core = core_img.to_vec();
    core.resize(sectors as usize * SECTOR, 0);
    let no_rs = u16::from_le_bytes([core[SECTOR + CORE_NO_RS_LENGTH], core[SECTOR + CORE_NO_RS_LENGTH + 1]]);
    if no_rs == 0xffff {
        return Err("core.img version mismatch (its no-Reed-Solomon length is 0xFFFF): use boot.img and grub-mkimage from the same GRUB".into());
    }
    // Clear the old entries, as grub-bios-setup does, down to the first
    // all-zero one; running into diskboot.img's code means no terminator.
    let first_entry = SECTOR - BLOCKLIST_ENTRY;
    let mut at = first_entry;
    while core[at + 8..at + 10] != [0, 0] {
        core[at..at + BLOCKLIST_ENTRY].fill(0);
        at = at.checked_sub(BLOCKLIST_ENTRY).filter(|&a| a > 0).ok_or("no terminator in core.img's blocklist")?;
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| format!("core.img has {sectors} sectors, too many"))?;
    core[first_entry..first_entry + 8].copy_from_slice(&(first_sector + 1).to_le_bytes());
    core[first_entry + 8..first_entry + 10].copy_from_slice(&rest.to_le_bytes());
    core[first_entry + 10..first_entry + 12].copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());
    core[first_entry - BLOCKLIST_ENTRY..first_entry].fill(0);
    Ok(core)
}

// ---------------------------------------------------------------------------
// Boot configuration and the guest's scripts (pure).
// ---------------------------------------------------------------------------

/// The Linux command line: `root=/dev/sda1 ro console=ttyS0 quiet` (as
/// Debian's grub.cfg: the root is mounted read-only, init remounts it) and
/// the caller's words. A caller's `loglevel=` replaces `quiet`. Nothing
/// here tells the guest it runs under a hypervisor.
pub fn kernel_cmdline(extra: &str) -> Result<String, String> {
    if extra.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("extra kernel command line {extra:?} contains a control character"));
    }
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let mut words = vec![format!("root={ROOT_DEVICE}"), "ro".into(), "console=ttyS0".into()];
    if !extra.iter().any(|w| w.starts_with("loglevel=")) {
        words.push("quiet".into());
    }
    words.extend(extra.iter().map(|w| w.to_string()));
    Ok(words.join(" "))
}

/// grub.cfg as grub-mkconfig would write it for one kernel (trimmed): the
/// menu on the serial port and the screen, no delay, the partition found by
/// its UUID.
pub fn grub_cfg(cmdline: &str) -> String {
    let args = cmdline.split_whitespace().map(iso::grub_quote).collect::<Vec<_>>().join(" ");
    format!(
        "# Written by ferrite-tools (tools/src/installed_disk.rs).\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set default=0\n\
         set timeout=0\n\
         \n\
         menuentry 'linux' {{\n\
         \x20   insmod part_msdos\n\
         \x20   insmod ext2\n\
         \x20   set root='hd0,msdos1'\n\
         \x20   search --no-floppy --fs-uuid --set=root {ROOT_FS_UUID}\n\
         \x20   echo 'Loading Linux ...'\n\
         \x20   linux /boot/vmlinuz {args}\n\
         \x20   echo 'Loading initial ramdisk ...'\n\
         \x20   initrd /boot/initrd.img\n\
         }}\n"
    )
}

/// `/init` of the initramfs: loads the modules in `/modules.order`, waits
/// (bounded) for the `root=` device, mounts it as ext4 (`ro` unless `rw` is
/// on the command line) on `/newroot`, moves `/dev`, `/proc` and `/sys`
/// there and hands over with `switch_root` to `/sbin/init`. Every failure
/// prints a `FERRITE-INITRAMFS-FAIL` line and powers off. Only applets in
/// [`initramfs::BUSYBOX_APPLETS`] run by name; `switch_root` through
/// `busybox`.
pub const INITRAMFS_INIT_SCRIPT: &str = r#"#!/bin/sh
# /init of the installed disk's initramfs: find the root, mount it, switch to it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
fail() {
    echo "FERRITE-INITRAMFS-FAIL $*"
    poweroff -f
    sleep 10
}
root=/dev/sda1
mode=ro
for w in $(cat /proc/cmdline); do
    case "$w" in
        root=*) root="${w#root=}" ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
    esac
done
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-INITRAMFS-FAIL insmod $m (continuing)"
done
# The disk appears when its driver has probed it: poll in short steps, up to 30 s.
i=0
while [ ! -b "$root" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b "$root" ]; then
    echo "FERRITE-INITRAMFS-FAIL root device $root did not appear within 30 s; block devices: $(ls /sys/class/block)"
    dmesg | grep -i -E 'ata|scsi|sd[a-z]' | busybox tail -20
    fail "no root device"
fi
mkdir -p /newroot
mount -t ext4 -o "$mode" "$root" /newroot || fail "cannot mount $root (ext4, $mode) on /newroot"
[ -x /newroot/sbin/init ] || fail "$root has no executable /sbin/init"
for d in dev proc sys; do
    mount --move "/$d" "/newroot/$d" || fail "cannot move /$d to /newroot/$d"
done
# PID 1 must run switch_root, so this is an exec: if it fails, init exits and
# the kernel panics ("Attempted to kill init"), as with Debian's initramfs.
exec busybox switch_root /newroot /sbin/init
"#;

/// `/sbin/init` of the root file system; see the module documentation for
/// what it prints.
pub const ROOT_INIT_SCRIPT: &str = r#"#!/bin/sh
# /sbin/init of Ferrite's installed test system (PID 1 after switch_root).
export PATH=/bin
[ -r /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
fail() {
    echo "FERRITE-ROOT-FAIL $*"
    poweroff -f
    sleep 10
}
cpus=$(grep -c '^processor' /proc/cpuinfo)
kernel=$(uname -r)
# Linux's uptime (seconds since its clock started) as this line is printed:
# read last, so no fork comes between it and the echo.
read -r uptime _ < /proc/uptime
echo "FERRITE-ROOT-INIT cpus=$cpus kernel=$kernel uptime=$uptime"
# The last mount on / is the visible one.
rootdev=none
rootopts=
while read -r dev mnt fstype opts rest; do
    if [ "$mnt" = / ]; then rootdev=$dev; rootopts=$opts; fi
done < /proc/mounts
echo "FERRITE-ROOT-DEVICE $rootdev"
sum=$(sha256sum /data/blob) || fail "cannot read /data/blob"
echo "FERRITE-ROOT-SHA256 ${sum%% *}"
case ",$rootopts," in
    *,ro,*) mount -o remount,rw / || fail "cannot remount / read-write" ;;
esac
cat /etc/ferrite-marker > /marker || fail "cannot write /marker"
sync
echo "FERRITE-ROOT-MARKER written"
# Read-only again, so the journal is checkpointed as on a clean shutdown.
mount -o remount,ro / || echo "FERRITE-ROOT-WARNING cannot remount / read-only"
poweroff -f
sleep 10
fail "still running after poweroff -f"
"#;

/// Busybox applets the root file system gets as `/bin/<applet>` links:
/// every one [`ROOT_INIT_SCRIPT`] runs, and a few for looking around.
pub const ROOT_APPLETS: &[&str] = &[
    "sh",
    "cat",
    "dmesg",
    "echo",
    "grep",
    "ls",
    "mkdir",
    "mount",
    "poweroff",
    "reboot",
    "sha256sum",
    "sleep",
    "sync",
    "umount",
    "uname",
];

/// Modules named in a kernel's `modules.builtin` (`kernel/fs/ext4/ext4.ko`
/// → `ext4`), with `-` as `_` as the kernel does.
pub fn builtin_module_names(modules_builtin: &str) -> Vec<String> {
    modules_builtin
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(|n| n.replace('-', "_"))
        .collect()
}

/// `wanted` minus the modules `modules_builtin` lists.
pub fn loadable_modules<'a>(wanted: &[&'a str], modules_builtin: &str) -> Vec<&'a str> {
    let builtin = builtin_module_names(modules_builtin);
    wanted.iter().copied().filter(|w| !builtin.contains(&w.replace('-', "_"))).collect()
}

/// `len` deterministic pseudo-random bytes (xorshift64*, 8 bytes a step).
pub fn pseudo_random_blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The mke2fs configuration used instead of the host's `/etc/mke2fs.conf`,
/// so the file system is the same on every host: Debian 12's ext4 features,
/// all of which GRUB 2.06 reads (newer defaults such as `orphan_file` or
/// `metadata_csum_seed` may not be).
const MKE2FS_CONF: &str = "[defaults]\n\
    \tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\
    \tdefault_mntopts = acl,user_xattr\n\
    \tenable_periodic_fsck = 0\n\
    \tblocksize = 4096\n\
    \tinode_size = 256\n\
    \tinode_ratio = 16384\n\
    \n\
    [fs_types]\n\
    \text4 = {\n\
    \t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\
    \t}\n";

// ---------------------------------------------------------------------------
// Building the disk (runs host tools).
// ---------------------------------------------------------------------------

/// A built disk image and what a boot of it should show.
#[derive(Debug, Clone)]
pub struct InstalledDisk {
    /// The raw disk image.
    pub path: PathBuf,
    /// Hex SHA-256 of `/data/blob`, as the guest prints it.
    pub blob_sha256: String,
    /// The marker the guest writes to `/marker`.
    pub marker: String,
    /// The Linux command line in grub.cfg.
    pub kernel_cmdline: String,
}

impl InstalledDisk {
    /// Regexes of the guest's console lines in the order a good boot prints
    /// them (unanchored at the start, for consoles that prefix lines, e.g.
    /// with a domain name): GRUB's `Booting` line, then `/sbin/init`'s.
    pub fn expected_console_lines(&self, cpus: u32) -> Vec<String> {
        vec![
            r"Booting `linux'".to_string(),
            format!(r"FERRITE-ROOT-INIT cpus={cpus} kernel=\S+ uptime=[0-9]+\.[0-9]+$"),
            format!("FERRITE-ROOT-DEVICE {ROOT_DEVICE}$"),
            format!("FERRITE-ROOT-SHA256 {}$", self.blob_sha256),
            "FERRITE-ROOT-MARKER written$".to_string(),
        ]
    }

    /// The contents of `/marker` on the disk's root file system (an error
    /// if it is missing). Works on a copy of the partition, whose journal
    /// is replayed first, so the image itself is not changed.
    pub fn read_marker(&self) -> Result<String, String> {
        read_file_from_root(&self.path, "/marker")
    }
}

/// A host program from PATH, else from `/usr/sbin` or `/sbin` (an ordinary
/// user's PATH on Debian lacks them, and e2fsprogs lives there).
fn find_tool(tool: &Tool) -> Result<PathBuf, String> {
    if let Some(p) = deps::find_program(tool.program) {
        return Ok(p);
    }
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(tool.program);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "`{}` not found on PATH, in /usr/sbin or /sbin (it {}): install it with `sudo apt-get install -y {}`",
        tool.program, tool.why, tool.package
    ))
}

/// Runs `cmd`; an error names `what`, the exit status and stderr.
fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output, String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        let output = [&out.stderr, &out.stdout]
            .iter()
            .map(|o| String::from_utf8_lossy(o).trim().to_string())
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!("{what} failed ({}):\n{output}", out.status));
    }
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    fs::copy(from, to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", to.display()))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let out = run(Command::new(find_tool(&SHA256SUM)?).arg(path), &format!("sha256sum {}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha256sum {} printed {text:?}, not a hash", path.display()));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Builds `dir/disk.img`, an installed-looking system disk (see the module
/// documentation), whose `/sbin/init` writes `marker` to `/marker`;
/// `extra_cmdline` is added to the Linux command line (see
/// [`kernel_cmdline`]). Fetches Debian's `linux-image-cloud-amd64` and
/// `busybox-static` if they are not cached. Work files go to `dir` and are
/// removed, except `disk.img`, `core.img` and `grub.cfg` (for inspection).
pub fn build_installed_disk(dir: &Path, marker: &str, extra_cmdline: &str) -> Result<InstalledDisk, String> {
    if marker.is_empty() || marker.contains(['\n', '\0']) {
        return Err(format!("marker {marker:?} must be one non-empty line"));
    }
    let cmdline = kernel_cmdline(extra_cmdline)?;
    let grub_dir = Path::new(deps::GRUB_PC_DIR);
    let boot_img_path = grub_dir.join("boot.img");
    if !boot_img_path.is_file() {
        return Err(format!(
            "{} is missing (GRUB's BIOS boot files): install them with `sudo apt-get install -y {}`",
            boot_img_path.display(),
            deps::GRUB_PC_PACKAGE
        ));
    }
    let grub_mkimage = find_tool(&GRUB_MKIMAGE)?;
    let mke2fs = find_tool(&MKE2FS)?;
    let debugfs = find_tool(&DEBUGFS)?;

    let kernel_root = guest_images::fetch_debian_package("linux-image-cloud-amd64")?;
    let vmlinuz = guest_images::find_vmlinuz(&kernel_root)?;
    let busybox = initramfs::debian_busybox()?;
    let initrd = installed_initramfs(&kernel_root)?;

    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let core_path = dir.join("core.img");
    let mut mkimage = Command::new(&grub_mkimage);
    mkimage
        .args(["-O", "i386-pc", "-d"])
        .arg(grub_dir)
        .arg("-o")
        .arg(&core_path)
        .args(["-p", "(hd0,msdos1)/boot/grub"])
        .args(GRUB_CORE_MODULES);
    run(&mut mkimage, "grub-mkimage (making GRUB's core.img)")?;
    let core_img = fs::read(&core_path).map_err(|e| format!("cannot read {}: {e}", core_path.display()))?;
    let core_img = prepare_core_img(&core_img, 1, PARTITION_START_LBA - 1)?;

    // The root file system's files.
    let staging = dir.join("rootfs");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| format!("cannot clear {}: {e}", staging.display()))?;
    }
    for (d, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("sbin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("data", 0o755),
        ("boot", 0o755),
        ("boot/grub", 0o755),
        ("boot/grub/i386-pc", 0o755),
    ] {
        make_dir(&staging.join(d), mode)?;
    }
    copy_file(&busybox, &staging.join("bin/busybox"), 0o755)?;
    for applet in ROOT_APPLETS {
        let link = staging.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link)
            .map_err(|e| format!("cannot create the symlink {}: {e}", link.display()))?;
    }
    write_file(&staging.join("sbin/init"), ROOT_INIT_SCRIPT.as_bytes(), 0o755)?;
    write_file(&staging.join("etc/ferrite-marker"), marker.as_bytes(), 0o644)?;
    write_file(
        &staging.join("etc/fstab"),
        format!("UUID={ROOT_FS_UUID} / ext4 errors=remount-ro 0 1\n").as_bytes(),
        0o644,
    )?;
    copy_file(&vmlinuz, &staging.join("boot/vmlinuz"), 0o644)?;
    write_file(&staging.join("boot/initrd.img"), &initrd, 0o644)?;
    let cfg = grub_cfg(&cmdline);
    write_file(&staging.join("boot/grub/grub.cfg"), cfg.as_bytes(), 0o644)?;
    write_file(&dir.join("grub.cfg"), cfg.as_bytes(), 0o644)?;
    // What grub-install leaves in /boot/grub/i386-pc: the modules (GRUB
    // loads any not built into core.img from here), their lists, the images.
    let entries = fs::read_dir(grub_dir).map_err(|e| format!("cannot list {}: {e}", grub_dir.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".mod") || name.ends_with(".lst") || name == "boot.img" {
            copy_file(&e.path(), &staging.join("boot/grub/i386-pc").join(&name), 0o644)?;
        }
    }
    copy_file(&core_path, &staging.join("boot/grub/i386-pc/core.img"), 0o644)?;
    let blob_path = staging.join("data/blob");
    write_file(&blob_path, &pseudo_random_blob(BLOB_SEED, BLOB_BYTES), 0o644)?;
    let blob_sha256 = sha256_file(&blob_path)?;

    // The ext4 image of partition 1.
    let partition_bytes = DISK_BYTES - PARTITION_START_LBA * SECTOR as u64;
    let part_path = dir.join("rootfs.ext4");
    let part = fs::File::create(&part_path).map_err(|e| format!("cannot create {}: {e}", part_path.display()))?;
    part.set_len(partition_bytes).map_err(|e| format!("cannot size {}: {e}", part_path.display()))?;
    drop(part);
    let conf_path = dir.join("mke2fs.conf");
    write_file(&conf_path, MKE2FS_CONF.as_bytes(), 0o644)?;
    let mut mkfs = Command::new(&mke2fs);
    mkfs.env("MKE2FS_CONFIG", &conf_path)
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-U", ROOT_FS_UUID])
        .arg("-E")
        .arg(format!("hash_seed={ROOT_FS_UUID},root_owner=0:0"))
        .arg("-d")
        .arg(&staging)
        .arg(&part_path);
    run(&mut mkfs, &format!("mke2fs -t ext4 -d {} {}", staging.display(), part_path.display()))?;
    give_files_to_root(&debugfs, &part_path, &staging)?;

    // The disk: MBR with boot.img and the partition table, core.img in the
    // gap, the partition at 1 MiB.
    let disk_path = dir.join("disk.img");
    let boot_img = fs::read(&boot_img_path).map_err(|e| format!("cannot read {}: {e}", boot_img_path.display()))?;
    let mbr = install_boot_img(&boot_img, &partitioned_mbr(DISK_BYTES, DISK_SIGNATURE)?, 1)?;
    let disk = fs::File::create(&disk_path).map_err(|e| format!("cannot create {}: {e}", disk_path.display()))?;
    let disk_err = |e: std::io::Error| format!("cannot write {}: {e}", disk_path.display());
    disk.set_len(DISK_BYTES).map_err(disk_err)?;
    disk.write_all_at(&mbr, 0).map_err(disk_err)?;
    disk.write_all_at(&core_img, SECTOR as u64).map_err(disk_err)?;
    let mut part = fs::File::open(&part_path).map_err(|e| format!("cannot read {}: {e}", part_path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = PARTITION_START_LBA * SECTOR as u64;
    loop {
        let n = part.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", part_path.display()))?;
        if n == 0 {
            break;
        }
        // Unwritten stretches of a fresh file read back as zeros: keep them sparse.
        if buf[..n].iter().any(|&b| b != 0) {
            disk.write_all_at(&buf[..n], offset).map_err(disk_err)?;
        }
        offset += n as u64;
    }
    disk.sync_all().map_err(disk_err)?;
    drop(disk);

    for p in [&part_path, &conf_path] {
        let _ = fs::remove_file(p);
    }
    let _ = fs::remove_dir_all(&staging);
    Ok(InstalledDisk { path: disk_path, blob_sha256, marker: marker.to_string(), kernel_cmdline: cmdline })
}

/// The initramfs: busybox, [`INITRAMFS_MODULES`] that the kernel in
/// `kernel_root` does not have built in (with their dependencies) and
/// [`INITRAMFS_INIT_SCRIPT`].
fn installed_initramfs(kernel_root: &Path) -> Result<Vec<u8>, String> {
    let modules_dir = kernel_root.join("lib/modules");
    let version_dir = fs::read_dir(&modules_dir)
        .map_err(|e| format!("cannot read {}: {e}", modules_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("kernel").is_dir())
        .ok_or_else(|| format!("no lib/modules/<version>/kernel in {}", kernel_root.display()))?;
    // Missing modules.builtin: assume nothing is built in (insmod of all).
    let builtin = fs::read_to_string(version_dir.join("modules.builtin")).unwrap_or_default();
    let wanted = loadable_modules(INITRAMFS_MODULES, &builtin);
    let modules = initramfs::kernel_modules(kernel_root, &wanted)?;
    initramfs::busybox_initramfs_with_modules(INITRAMFS_INIT_SCRIPT, &modules)
}

/// Every path under `staging`, relative and with a leading `/`, parents first.
fn staged_paths(staging: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![staging.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&d)
            .map_err(|e| format!("cannot list {}: {e}", d.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let rel =
                p.strip_prefix(staging).map_err(|_| format!("{} is outside {}", p.display(), staging.display()))?;
            out.push(format!("/{}", rel.display()));
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// `mke2fs -d` copies owners from the staging folder, i.e. the user who
/// built it; an installed system's files belong to root.
fn give_files_to_root(debugfs: &Path, image: &Path, staging: &Path) -> Result<(), String> {
    let mut script = String::new();
    for p in staged_paths(staging)? {
        if p.contains(|c: char| c.is_whitespace() || c == '"') {
            return Err(format!("staged path {p:?} has a space or quote, which the debugfs script cannot name"));
        }
        script.push_str(&format!("set_inode_field {p} uid 0\nset_inode_field {p} gid 0\n"));
    }
    let script_path = image.with_extension("debugfs");
    write_file(&script_path, script.as_bytes(), 0o644)?;
    let out = run(
        Command::new(debugfs).arg("-w").arg("-f").arg(&script_path).arg(image),
        &format!("debugfs -w -f {} {}", script_path.display(), image.display()),
    )?;
    let _ = fs::remove_file(&script_path);
    // debugfs exits 0 even when a command fails; it says so on stderr.
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(format!("debugfs could not give the files in {} to root:\n{}", image.display(), errors.join("\n")));
    }
    Ok(())
}

/// The contents of `path` in partition 1 of `disk`: the partition is copied
/// out (the disk stays untouched), its journal replayed with `e2fsck -E
/// journal_only` (a guest that did not unmount may have the file only
/// there), and the file read with `debugfs`.
/// Makes `image` a `bytes`-long ext4 file system holding the files under
/// `staging` (owned by root), with the same features on every host.
pub fn make_ext4_image(image: &Path, bytes: u64, staging: &Path) -> Result<(), String> {
    let mke2fs = find_tool(&MKE2FS)?;
    let debugfs = find_tool(&DEBUGFS)?;
    let f = fs::File::create(image).map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    f.set_len(bytes).map_err(|e| format!("cannot size {}: {e}", image.display()))?;
    drop(f);
    let conf_path = image.with_extension("mke2fs.conf");
    write_file(&conf_path, MKE2FS_CONF.as_bytes(), 0o644)?;
    let mut mkfs = Command::new(&mke2fs);
    mkfs.env("MKE2FS_CONFIG", &conf_path).args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"]).arg(staging).arg(image);
    let made = run(&mut mkfs, &format!("mke2fs -t ext4 -d {} {}", staging.display(), image.display()));
    let _ = fs::remove_file(&conf_path);
    made?;
    give_files_to_root(&debugfs, image, staging)
}

/// The bytes of `path` in the ext4 file system `image` (a copy of it has
/// its journal replayed first, so what a guest wrote and synced is seen).
pub fn read_file_from_ext4(image: &Path, path: &str) -> Result<Vec<u8>, String> {
    let debugfs = find_tool(&DEBUGFS)?;
    let e2fsck = find_tool(&E2FSCK)?;
    let copy = image.with_extension(format!("replayed-{}.ext4", std::process::id()));
    let result = (|| {
        fs::copy(image, &copy).map_err(|e| format!("cannot copy {}: {e}", image.display()))?;
        let replay = Command::new(&e2fsck).args(["-y", "-E", "journal_only"]).arg(&copy).output().map_err(|e| format!("cannot run e2fsck: {e}"))?;
        if !matches!(replay.status.code(), Some(0 | 1)) {
            return Err(format!("e2fsck -E journal_only on {} failed ({}): {}", image.display(), replay.status, String::from_utf8_lossy(&replay.stderr).trim()));
        }
        let out = run(Command::new(&debugfs).arg("-R").arg(format!("cat {path}")).arg(&copy), &format!("debugfs -R 'cat {path}' {}", image.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(problem) = stderr.lines().find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()) {
            return Err(format!("cannot read {path} from {}: {problem}", image.display()));
        }
        Ok(out.stdout)
    })();
    let _ = fs::remove_file(&copy);
    result
}

pub fn read_file_from_root(disk: &Path, path: &str) -> Result<String, String> {
    let debugfs = find_tool(&DEBUGFS)?;
    let e2fsck = find_tool(&E2FSCK)?;
    let bytes = fs::read(disk).map_err(|e| format!("cannot read the disk image {}: {e}", disk.display()))?;
    let start = PARTITION_START_LBA as usize * SECTOR;
    if bytes.len() <= start {
        return Err(format!("{} is {} bytes: too small to hold partition 1 at 1 MiB", disk.display(), bytes.len()));
    }
    let copy = disk.with_extension(format!("partition1-{}.ext4", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&copy).map_err(|e| format!("cannot create {}: {e}", copy.display()))?;
        f.write_all(&bytes[start..]).map_err(|e| format!("cannot write {}: {e}", copy.display()))?;
        drop(f);
        let replay = Command::new(&e2fsck)
            .args(["-y", "-E", "journal_only"])
            .arg(&copy)
            .output()
            .map_err(|e| format!("cannot run e2fsck: {e}"))?;
        // 0: clean, 1: the journal was replayed; anything else is an error.
        if !matches!(replay.status.code(), Some(0 | 1)) {
            return Err(format!(
                "e2fsck -E journal_only on partition 1 of {} failed ({}): {}",
                disk.display(),
                replay.status,
                String::from_utf8_lossy(&replay.stderr).trim()
            ));
        }
        let out = run(
            Command::new(&debugfs).arg("-R").arg(format!("cat {path}")).arg(&copy),
            &format!("debugfs -R 'cat {path}' (partition 1 of {})", disk.display()),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(problem) = stderr.lines().find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()) {
            return Err(format!("cannot read {path} from partition 1 of {}: {problem}", disk.display()));
        }
        String::from_utf8(out.stdout).map_err(|_| format!("{path} on {} is not UTF-8", disk.display()))
    })();
    let _ = fs::remove_file(&copy);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_fdisk() {
        // fdisk's first partition at 1 MiB: head 32, sector 33, cylinder 0.
        assert_eq!(chs_bytes(2048), [0x20, 0x21, 0x00]);
        assert_eq!(chs_bytes(0), [0, 1, 0]);
        // LBA 196607 = cylinder 12, head 60, sector 48.
        assert_eq!(chs_bytes(196_607), [60, 48, 12]);
        // Cylinder 1023 = 16434495..16450559; bits 8-9 of the cylinder go to the sector byte.
        assert_eq!(chs_bytes(1023 * 255 * 63), [0, 0xc1, 0xff]);
        assert_eq!(chs_bytes(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn partition_table_layout() {
        let mbr = partitioned_mbr(DISK_BYTES, 0x1234_5678).unwrap();
        assert_eq!(&mbr[0x1b8..0x1bc], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&mbr[0x1bc..0x1be], &[0, 0]);
        let total = (DISK_BYTES / 512) as u32;
        let mut want = vec![0x80, 0x20, 0x21, 0x00, 0x83, 60, 48, 12];
        want.extend_from_slice(&2048u32.to_le_bytes());
        want.extend_from_slice(&(total - 2048).to_le_bytes());
        assert_eq!(&mbr[0x1be..0x1ce], &want[..]);
        assert!(mbr[0x1ce..0x1fe].iter().all(|&b| b == 0), "entries 2-4 are empty");
        assert_eq!(&mbr[0x1fe..], &[0x55, 0xaa]);
        assert!(mbr[..0x1b8].iter().all(|&b| b == 0), "no boot code yet");
        assert!(partitioned_mbr(1 << 20, 0).is_err(), "no room after 1 MiB");
        assert!(partitioned_mbr(DISK_BYTES + 1, 0).is_err(), "not whole sectors");
        assert!(partition_entry(true, 0x83, 2048, 0).is_err());
        assert!(partition_entry(true, 0x83, 2048, u64::from(u32::MAX)).is_err(), "past 2 TiB");
    }

    /// A stand-in boot.img with GRUB 2's layout where it matters.
    fn fake_boot_img() -> Vec<u8> {
        let mut b: Vec<u8> = (0..512).map(|i| (i * 7 % 251) as u8).collect();
        b[0..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        b[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&1u64.to_le_bytes());
        b[BOOT_DRIVE] = 0xff;
        b[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0xeb, 0x05]);
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    #[test]
    fn boot_img_is_patched_like_grub_bios_setup() {
        let boot = fake_boot_img();
        let mut current = partitioned_mbr(DISK_BYTES, 0xdead_beef).unwrap();
        current[BOOT_BPB_START..BOOT_BPB_END].fill(0x42);
        let mbr = install_boot_img(&boot, &current, 0x1_0000_0002).unwrap();
        assert_eq!(&mbr[..3], &boot[..3], "the jump over the BPB stays");
        assert!(mbr[BOOT_BPB_START..BOOT_BPB_END].iter().all(|&b| b == 0x42), "BPB from the disk");
        assert_eq!(&mbr[0x5a..0x5c], &boot[0x5a..0x5c]);
        assert_eq!(&mbr[0x5c..0x64], &0x1_0000_0002u64.to_le_bytes());
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(mbr[0x65], boot[0x65]);
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&mbr[0x68..0x1b8], &boot[0x68..0x1b8], "the code stays");
        assert_eq!(&mbr[0x1b8..0x200], &current[0x1b8..0x200], "signature and partition table from the disk");

        let mut bad = boot.clone();
        bad[511] = 0;
        assert!(install_boot_img(&bad, &current, 1).is_err(), "no 0x55AA");
        let mut bad = boot.clone();
        bad[BOOT_DRIVE_CHECK] = 0x90;
        assert!(install_boot_img(&bad, &current, 1).is_err(), "unknown layout");
        assert!(install_boot_img(&boot[..511], &current, 1).is_err());
        assert!(install_boot_img(&boot, &current[..100], 1).is_err());
    }

    #[test]
    fn real_boot_img_takes_the_patch() {
        let path = Path::new(deps::GRUB_PC_DIR).join("boot.img");
        let Ok(boot) = fs::read(&path) else {
            eprintln!("note: no {} (apt-get install grub-pc-bin); checked with the stand-in only", path.display());
            return;
        };
        let mbr = install_boot_img(&boot, &partitioned_mbr(DISK_BYTES, DISK_SIGNATURE).unwrap(), 1).unwrap();
        assert_eq!(&mbr[0x5c..0x64], &1u64.to_le_bytes());
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(mbr[0x1be], 0x80);
    }

    /// A stand-in core.img: `len` bytes, an old blocklist entry (and
    /// garbage in the entry below it, which must become the terminator).
    fn fake_core_img(len: usize) -> Vec<u8> {
        let mut c: Vec<u8> = (0..len).map(|i| (i % 13 + 1) as u8).collect();
        let first = SECTOR - BLOCKLIST_ENTRY;
        c[first..first + 8].copy_from_slice(&2u64.to_le_bytes());
        c[first + 8..first + 10].copy_from_slice(&7u16.to_le_bytes());
        c[first + 10..first + 12].copy_from_slice(&0x820u16.to_le_bytes());
        // The next entry down is the terminator (length 0) with junk around it.
        c[first - BLOCKLIST_ENTRY + 8..first - BLOCKLIST_ENTRY + 10].fill(0);
        c[SECTOR + CORE_NO_RS_LENGTH..SECTOR + CORE_NO_RS_LENGTH + 2].copy_from_slice(&0x75bu16.to_le_bytes());
        c
    }

    #[test]
    fn core_img_blocklist_covers_the_rest() {
        let core = fake_core_img(3 * SECTOR + 100);
        let out = prepare_core_img(&core, 1, 2047).unwrap();
        assert_eq!(out.len(), 4 * SECTOR, "padded to whole sectors");
        assert!(out[3 * SECTOR + 100..].iter().all(|&b| b == 0), "padding is zeros");
        let e = SECTOR - BLOCKLIST_ENTRY;
        assert_eq!(&out[e..e + 8], &2u64.to_le_bytes(), "starts right after the first sector");
        assert_eq!(&out[e + 8..e + 10], &3u16.to_le_bytes(), "the other three sectors");
        assert_eq!(&out[e + 10..e + 12], &0x820u16.to_le_bytes(), "loaded after the first sector at 0x8000");
        assert!(out[e - BLOCKLIST_ENTRY..e].iter().all(|&b| b == 0), "terminator");
        assert_eq!(&out[..e - BLOCKLIST_ENTRY], &core[..e - BLOCKLIST_ENTRY], "diskboot code untouched");
        assert_eq!(&out[SECTOR..3 * SECTOR + 100], &core[SECTOR..], "the rest untouched");

        // Elsewhere on a disk: the blocklist follows.
        let out = prepare_core_img(&core, 99, 2047).unwrap();
        assert_eq!(&out[e..e + 8], &100u64.to_le_bytes());
    }

    #[test]
    fn core_img_that_does_not_fit_is_refused() {
        let core = fake_core_img(10 * SECTOR);
        let err = prepare_core_img(&core, 1, 9).unwrap_err();
        assert!(err.contains("only 9 sectors fit"), "{err}");
        assert!(prepare_core_img(&core, 1, 10).is_ok());
        let big = fake_core_img((CORE_MAX_SECTORS as usize + 1) * SECTOR);
        let err = prepare_core_img(&big, 1, 2047).unwrap_err();
        assert!(err.contains(&format!("GRUB loads at most {CORE_MAX_SECTORS}")), "{err}");
        assert!(prepare_core_img(&core[..SECTOR], 1, 2047).is_err(), "one sector is no core.img");
        let mut mismatch = core.clone();
        mismatch[SECTOR + CORE_NO_RS_LENGTH..SECTOR + CORE_NO_RS_LENGTH + 2].fill(0xff);
        assert!(prepare_core_img(&mismatch, 1, 2047).unwrap_err().contains("version mismatch"));
        // No terminator anywhere: every entry has a length.
        let mut endless = core.clone();
        let mut length_at = SECTOR - BLOCKLIST_ENTRY + 8;
        while length_at >= BLOCKLIST_ENTRY {
            endless[length_at] = 1;
            length_at -= BLOCKLIST_ENTRY;
        }
        endless[length_at] = 1;
        assert!(prepare_core_img(&endless, 1, 2047).unwrap_err().contains("no terminator"));
    }

    #[test]
    fn real_grub_mkimage_output_takes_the_patch() {
        let Ok(mkimage) = find_tool(&GRUB_MKIMAGE) else {
            eprintln!(
                "note: no grub-mkimage (apt-get install grub-common grub-pc-bin); checked with the stand-in only"
            );
            return;
        };
        if !Path::new(deps::GRUB_PC_DIR).join("normal.mod").is_file() {
            eprintln!("note: no {} (apt-get install grub-pc-bin)", deps::GRUB_PC_DIR);
            return;
        }
        let out = std::env::temp_dir().join(format!("ferrite-core-test-{}.img", std::process::id()));
        let status = Command::new(mkimage)
            .args(["-O", "i386-pc", "-d", deps::GRUB_PC_DIR, "-o"])
            .arg(&out)
            .args(["-p", "(hd0,msdos1)/boot/grub"])
            .args(GRUB_CORE_MODULES)
            .status()
            .unwrap();
        assert!(status.success());
        let core = fs::read(&out).unwrap();
        fs::remove_file(&out).unwrap();
        let patched = prepare_core_img(&core, 1, PARTITION_START_LBA - 1).unwrap();
        let e = SECTOR - BLOCKLIST_ENTRY;
        // grub-mkimage already points the blocklist at sector 2 with the same
        // length; embedding at sector 1 gives the same answer.
        assert_eq!(&patched[e..SECTOR], &core[e..SECTOR]);
        assert_eq!(patched.len(), core.len().div_ceil(SECTOR) * SECTOR);
        // No Reed-Solomon codes were asked for.
        assert_eq!(&core[SECTOR + 0x10..SECTOR + 0x14], &[0, 0, 0, 0]);
    }

    #[test]
    fn default_cmdline_has_no_hypervisor_hints() {
        let c = kernel_cmdline("").unwrap();
        assert_eq!(c, "root=/dev/sda1 ro console=ttyS0 quiet");
        for hint in ["tsc", "ferrite", "xen", "kvm", "hypervisor", "clocksource", "no_timer_check", "lpj="] {
            assert!(!c.contains(hint), "{hint} in {c:?}");
        }
        assert_eq!(kernel_cmdline("  foo=1   bar ").unwrap(), "root=/dev/sda1 ro console=ttyS0 quiet foo=1 bar");
        assert_eq!(kernel_cmdline("loglevel=7").unwrap(), "root=/dev/sda1 ro console=ttyS0 loglevel=7");
        assert!(kernel_cmdline("a\nb").is_err());
    }

    #[test]
    fn grub_cfg_boots_one_linux_entry() {
        let cfg = grub_cfg(&kernel_cmdline("init.x=$y").unwrap());
        assert!(cfg.contains("set timeout=0\n"));
        assert_eq!(cfg.matches("menuentry ").count(), 1);
        assert!(cfg.contains("menuentry 'linux' {\n"));
        assert!(cfg.contains("    linux /boot/vmlinuz root=/dev/sda1 ro console=ttyS0 quiet 'init.x=$y'\n"), "{cfg}");
        assert!(cfg.contains("    initrd /boot/initrd.img\n"));
        assert!(cfg.contains(&format!("--fs-uuid --set=root {ROOT_FS_UUID}\n")));
        assert!(cfg.ends_with("}\n"));
    }

    #[test]
    fn scripts_only_run_linked_applets() {
        let root_init_runs = ["mount", "grep", "uname", "sha256sum", "cat", "sync", "poweroff", "sleep"];
        for cmd in root_init_runs {
            let runs = |script: &str| script.contains(&format!("{cmd} ")) || script.contains(&format!("{cmd}\n"));
            assert!(runs(ROOT_INIT_SCRIPT), "{cmd} not in /sbin/init");
            assert!(ROOT_APPLETS.contains(&cmd), "/sbin/init runs {cmd:?}, which has no /bin link");
        }
        let initramfs_runs = ["mount", "cat", "insmod", "sleep", "ls", "dmesg", "grep", "mkdir", "poweroff"];
        for cmd in initramfs_runs {
            assert!(INITRAMFS_INIT_SCRIPT.contains(&format!("{cmd} ")), "{cmd} not in the initramfs /init");
            assert!(initramfs::BUSYBOX_APPLETS.contains(&cmd), "the initramfs /init runs {cmd:?}, which has no link");
        }
        // The others run through busybox itself.
        assert!(INITRAMFS_INIT_SCRIPT.contains("exec busybox switch_root /newroot /sbin/init"));
        assert!(INITRAMFS_INIT_SCRIPT.contains("busybox tail "));
        assert!(ROOT_INIT_SCRIPT.contains("cat /etc/ferrite-marker > /marker"));
    }

    #[test]
    fn builtin_modules_are_not_loaded() {
        let builtin = "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/lib/crc-t10dif.ko\n";
        assert_eq!(builtin_module_names(builtin), ["ext4", "jbd2", "crc_t10dif"]);
        assert_eq!(loadable_modules(INITRAMFS_MODULES, builtin), ["ata_piix", "sd_mod"]);
        assert_eq!(loadable_modules(INITRAMFS_MODULES, ""), INITRAMFS_MODULES);
        assert_eq!(loadable_modules(&["crc-t10dif", "x"], builtin), ["x"]);
    }

    #[test]
    fn blob_is_deterministic() {
        let a = pseudo_random_blob(BLOB_SEED, 4099);
        assert_eq!(a.len(), 4099);
        assert_eq!(a, pseudo_random_blob(BLOB_SEED, 4099));
        assert_eq!(&a[..100], &pseudo_random_blob(BLOB_SEED, 100)[..]);
        assert_ne!(a, pseudo_random_blob(BLOB_SEED + 2, 4099));
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 250);
    }
}
