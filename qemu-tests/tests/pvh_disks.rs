//! PVH domains' disks: Debian's Linux as a PVH domU finds two virtio-blk
//! disks through ACPI (virtio-mmio, `LNRO0005`), each a host virtio-blk
//! disk named by its serial (`phy:`). It mounts the writable one's ext4
//! file system, hashes a 64 MiB file on it (the hash must match the
//! host's), writes part of it back as a new file, and sees the read-only
//! one refuse a write; the new file is then read from the image on the
//! host.
//! Once as a domU (`disk=` in its config), once as dom0 (`dom0_disk=`),
//! and once with the writable disk on an NBD server (QEMU's `qemu-nbd`,
//! `nbd:10.0.2.2:PORT/data`: the host as QEMU's user network shows it).

use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::ferrite_tools::installed_disk;
use ferrite_qemu_tests::{
    base_qemu, images, linux_vm_timeout, pseudo_random_bytes, pvh_disk_guest, test_dir, virtio_disk_args, Vm, BASE_CMDLINE,
};
use sha2::{Digest, Sha256};
use std::path::Path;

const CHECK_MIB: usize = 16;
const COPY_MIB: usize = 8;
const COPY_TO_MIB: usize = 64;
const DISK_MIB: usize = 80;
/// The ext4 tests: a file system this big holding a `data.bin` of
/// `EXT4_FILE_MIB`.
const EXT4_DISK_MIB: usize = 112;
const EXT4_FILE_MIB: usize = 64;

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// A domU; both disks host virtio-blk devices.
    DomU,
    /// dom0, the same disks from `dom0_disk=`.
    Dom0,
    /// A domU whose writable disk is an export of `qemu-nbd` on the host.
    NbdDomU,
}

#[test]
fn pvh_linux_reads_and_writes_virtio_blk_disks() {
    disks_under_linux("pvh_linux_reads_and_writes_virtio_blk_disks", Setup::DomU);
}

#[test]
fn dom0_gets_virtio_blk_disks_from_the_command_line() {
    disks_under_linux("dom0_gets_virtio_blk_disks_from_the_command_line", Setup::Dom0);
}

#[test]
fn a_pvh_disk_on_an_nbd_server() {
    disks_under_linux("a_pvh_disk_on_an_nbd_server", Setup::NbdDomU);
}

/// `qemu-nbd` serving `image` as export `data` on a free local port; killed
/// when dropped.
struct QemuNbd {
    child: std::process::Child,
    port: u16,
}

impl QemuNbd {
    fn start(test: &str, image: &Path) -> Option<QemuNbd> {
        if std::process::Command::new("qemu-nbd").arg("--version").output().is_err() {
            if ferrite_qemu_tests::guests_required() {
                panic!("[{test}] qemu-nbd (Debian package qemu-utils) is missing and FERRITE_REQUIRE_GUESTS is set");
            }
            eprintln!("[{test}] SKIPPED (passes without running): qemu-nbd is not installed (Debian package qemu-utils)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("qemu-nbd")
            .args(["-f", "raw", "-x", "data", "-b", "127.0.0.1", "-p", &port.to_string(), "--persistent", "--cache=writeback"])
            .arg(image)
            .spawn()
            .unwrap_or_else(|e| panic!("[{test}] cannot start qemu-nbd: {e}"));
        // Wait until it listens (an event, not a fixed time).
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "[{test}] qemu-nbd did not start listening");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(QemuNbd { child, port })
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A booted guest with its two disks, and what the host wrote into them.
struct Booted {
    vm: Vm,
    dom: &'static str,
    data: Vec<u8>,
    data_path: std::path::PathBuf,
    ro: Vec<u8>,
    ro_path: std::path::PathBuf,
    nbd: Option<QemuNbd>,
}

/// Boots Linux with the disks as `setup` says and `ferrite.vdisk_mode=mode`;
/// None when a package or tool is missing (skipped).
fn boot(name: &str, setup: Setup, mode: &str) -> Option<Booted> {
    let dir = test_dir(name);
    let as_dom0 = setup == Setup::Dom0;
    let dom = if as_dom0 { "dom0" } else { "vdisk" };
    let (kernel, initrd) = pvh_disk_guest(name, &dir)?;
    let ext4 = mode == "ext4";
    let disk_mib = if ext4 { EXT4_DISK_MIB } else { DISK_MIB };
    let data_path = dir.join("data.img");
    let data = if ext4 {
        let data = pseudo_random_bytes(0xe474, EXT4_FILE_MIB << 20);
        let staging = dir.join("ext4-root");
        std::fs::create_dir_all(&staging).unwrap();
        write_file(&staging.join("data.bin"), &data);
        installed_disk::make_ext4_image(&data_path, (disk_mib as u64) << 20, &staging).unwrap_or_else(|e| panic!("[{name}] {e}"));
        data
    } else {
        let data = pseudo_random_bytes(0xd15c, disk_mib << 20);
        write_file(&data_path, &data);
        data
    };
    let ro = pseudo_random_bytes(0x0fee, CHECK_MIB << 20);
    let ro_path = dir.join("ro.img");
    write_file(&ro_path, &ro);

    let guest_cmdline = format!(
        "console=ttyS0 loglevel=4 ferrite.vdisk_mode={mode} ferrite.check_mib={CHECK_MIB} ferrite.copy_mib={COPY_MIB} ferrite.copy_to_mib={COPY_TO_MIB}"
    );
    let mut args = virtio_disk_args(&ro_path, "rodisk", false);
    let mut nbd = None;
    let data_disk = if setup == Setup::NbdDomU {
        let server = QemuNbd::start(name, &data_path)?;
        let link = ferrite_qemu_tests::ferrite_tools::xl::link::prepare(&dir, None).expect("network link");
        args.extend(link.qemu_args);
        let target = format!("nbd:10.0.2.2:{}/data", server.port);
        nbd = Some(server);
        target
    } else {
        args.extend(virtio_disk_args(&data_path, "data", false));
        String::from("phy:data")
    };
    let q = base_qemu().memory_mib(1024).smp(2).kernel(&images().multiboot);
    let q = if as_dom0 {
        q.append(&format!("{BASE_CMDLINE} dom0_mem=192M dom0_max_vcpus=2 dom0_disk=phy:data,xvda,w dom0_disk=phy:rodisk,xvdb,r"))
            .module(ModuleSpec::new(&kernel, &guest_cmdline))
            .module(ModuleSpec::new(&initrd, ""))
    } else {
        let cfg = format!(
            "# written by qemu-tests/tests/pvh_disks.rs\nname = \"vdisk\"\ntype = \"pvh\"\nmemory = 192\nvcpus = 2\n\
             kernel = \"vmlinux\"\nramdisk = \"initramfs-vdisk.cpio\"\ncmdline = \"{guest_cmdline}\"\n\
             disk = [ '{data_disk},xvda,w', 'phy:rodisk,xvdb,r' ]\non_crash = \"destroy\"\n"
        );
        let cfg_path = dir.join("vdisk.cfg");
        write_file(&cfg_path, cfg.as_bytes());
        q.append(BASE_CMDLINE)
            .module(ModuleSpec::new(&cfg_path, ""))
            .module(ModuleSpec::new(&kernel, ""))
            .module(ModuleSpec::new(&initrd, ""))
    };
    let q = q.extra_args(args);
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    vm.expect_lines(&[
        &if setup == Setup::NbdDomU {
            format!(r"domain \d+ \({dom}\): disk xvda is NBD export 10\.0\.2\.2:\d+/data \(w\), virtio-blk")
        } else {
            format!(r"domain \d+ \({dom}\): disk xvda is host disk data \(w\), virtio-blk")
        },
        &format!(r"domain \d+ \({dom}\): disk xvdb is host disk rodisk \(r\), virtio-blk"),
        &format!(r"^\({dom}\) FERRITE-INIT cpus=2 "),
        &format!(r"^\({dom}\) FERRITE-VDISK vda {} vdb {} ro=1$", (disk_mib << 20) / 512, (CHECK_MIB << 20) / 512),
    ]);
    Some(Booted { vm, dom, data, data_path, ro, ro_path, nbd })
}

impl Booted {
    /// The copy the guest made (and fsynced) is in the host's image, and
    /// nothing else changed.
    fn expect_copy_on_host(&mut self) {
        let after = std::fs::read(&self.data_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", self.data_path.display()));
        let copied = &after[COPY_TO_MIB << 20..(COPY_TO_MIB + COPY_MIB) << 20];
        if copied != &self.data[..COPY_MIB << 20] {
            self.vm.fail("the copy the guest wrote and fsynced is not in the host's image");
        }
        if after[..COPY_TO_MIB << 20] != self.data[..COPY_TO_MIB << 20] {
            self.vm.fail("the guest's writes changed bytes outside the copy's target");
        }
        if std::fs::read(&self.ro_path).unwrap() != self.ro {
            self.vm.fail("the read-only disk changed");
        }
    }
}

/// As a domU or dom0: an ext4 file system on vda (mounted; its 64 MiB
/// `data.bin` hashed, 8 MiB of it written back as `written.bin`), the
/// read-only vdb hashed and refusing a write. On an NBD server: the raw
/// hashes and a copy with two writers at once.
fn disks_under_linux(name: &str, setup: Setup) {
    let ext4 = setup != Setup::NbdDomU;
    let Some(mut b) = boot(name, setup, if ext4 { "ext4" } else { "check" }) else { return };
    let dom = b.dom;
    let ro_sum = format!(r"^\({dom}\) FERRITE-VDISK-SHA256 vdb {}$", sha256_hex(&b.ro));
    let refused = format!(r"^\({dom}\) FERRITE-VDISK vdb refused a write$");
    let off = format!(r"domain \d+ \({dom}\) powered off");
    if ext4 {
        let file_sum = format!(r"^\({dom}\) FERRITE-VDISK-EXT4 data.bin {}$", sha256_hex(&b.data));
        let wrote = format!(r"^\({dom}\) FERRITE-VDISK ext4 wrote written.bin$");
        b.vm.expect_lines(&[&file_sum, &wrote, &ro_sum, &refused, &off]);
        b.vm.expect_success();
        let written = installed_disk::read_file_from_ext4(&b.data_path, "/written.bin").unwrap_or_else(|e| b.vm.fail(&e));
        if written != b.data[..COPY_MIB << 20] {
            b.vm.fail("written.bin on the host's image is not what the guest wrote");
        }
        let kept = installed_disk::read_file_from_ext4(&b.data_path, "/data.bin").unwrap_or_else(|e| b.vm.fail(&e));
        if kept != b.data {
            b.vm.fail("data.bin changed on the host's image");
        }
        if std::fs::read(&b.ro_path).unwrap() != b.ro {
            b.vm.fail("the read-only disk changed");
        }
        return;
    }
    let data_sum = format!(r"^\({dom}\) FERRITE-VDISK-SHA256 vda {}$", sha256_hex(&b.data[..CHECK_MIB << 20]));
    let copied = format!(r"^\({dom}\) FERRITE-VDISK copied {COPY_MIB} MiB$");
    b.vm.expect_lines(&[&data_sum, &ro_sum, &copied, &refused, &off]);
    b.vm.expect_success();
    b.nbd = None;
    b.expect_copy_on_host();
}

/// What a guest's fsync acknowledged survives the machine dying right
/// after: QEMU is killed the moment the guest says it synced, and the
/// image holds the copy.
#[test]
fn what_a_guest_fsynced_survives_killing_the_machine() {
    let name = "what_a_guest_fsynced_survives_killing_the_machine";
    let Some(mut b) = boot(name, Setup::DomU, "durable") else { return };
    b.vm.expect_lines(&[r"^\(vdisk\) FERRITE-VDISK synced$"]);
    b.vm.kill();
    b.expect_copy_on_host();
}

/// An NBD server that dies under a running guest: the guest's reads fail
/// with I/O errors (no hang), the hypervisor says why, and the guest and
/// the hypervisor go on to a clean power-off.
#[test]
fn a_dead_nbd_server_gives_the_guest_io_errors() {
    let name = "a_dead_nbd_server_gives_the_guest_io_errors";
    let Some(mut b) = boot(name, Setup::NbdDomU, "until_error") else { return };
    b.vm.expect_lines(&[r"^\(vdisk\) FERRITE-VDISK reading until an error$"]);
    b.nbd = None; // kills qemu-nbd
    b.vm.expect_lines(&[
        r"nbd 10\.0\.2\.2:\d+/data: the server closed the connection; its requests fail from now on",
        r"^\(vdisk\) FERRITE-VDISK read failed after \d+ good reads$",
        r"domain \d+ \(vdisk\) powered off",
    ]);
    b.vm.expect_success();
}
