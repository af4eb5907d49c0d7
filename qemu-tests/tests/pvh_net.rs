//! PVH domains' networking: Debian's Linux as PVH domUs, each with a
//! virtio-net NIC from its `vif = [...]` line (virtio-mmio, found through
//! ACPI), on the hypervisor's bridges.
//!
//! Three guests: `neta` (10.0.0.1) and `netb` (10.0.0.2) on `bridge0`,
//! `netc` (10.0.0.3, with the same subnet) alone on `bridge1`. netb pings
//! neta, downloads a 64 MiB file from neta's HTTP server over TCP (both
//! print its SHA-256), then changes its MAC and finds it can no longer
//! reach neta (the switch drops spoofed frames), and with its own MAC back
//! it can again. netc never reaches neta: bridges are apart.

use ferrite_qemu_tests::ferrite_tools::initramfs;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{base_qemu, debian_modules, debian_packages, images, linux_vm_timeout, test_dir, Vm, BASE_CMDLINE};
use std::path::Path;

/// `/init` of the network guests: loads the modules, configures eth0 from
/// `ferrite.ip=`, and plays `ferrite.net_role=`:
/// - `server`: makes a 64 MiB file, prints its hash, serves it with
///   busybox `httpd`, and powers off once a client fetched `/cgi-bin/done`;
/// - `client`: pings the server, fetches and hashes the file, checks that
///   a spoofed MAC cannot reach the server and its own MAC can, says
///   `done` to the server and powers off;
/// - `isolated`: pings the server (which must fail) and powers off.
const NET_INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
done
role=none
ip=
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.net_role=*) role="${w#ferrite.net_role=}" ;;
        ferrite.ip=*) ip="${w#ferrite.ip=}" ;;
    esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
    echo "FERRITE-NET no eth0"
    ls /sys/class/net /sys/bus/virtio/devices
    poweroff -f
fi
mac=$(cat /sys/class/net/eth0/address)
ip link set lo up
ip addr add "$ip/24" dev eth0
ip link set eth0 up
echo "FERRITE-NET eth0 $mac $ip"
server=10.0.0.1
pings() {
    ping -c "$1" -W 2 "$server" 2>&1 | grep -o '[0-9]* packets received' | cut -d' ' -f1
}
case "$role" in
server)
    mkdir -p /www/cgi-bin
    dd if=/dev/urandom of=/www/data bs=1M count=64 2>/dev/null
    echo "FERRITE-NET-SHA256 served $(sha256sum /www/data | cut -d' ' -f1)"
    printf '#!/bin/sh\ntouch /tmp/done\necho "Content-Type: text/plain"\necho\necho bye\n' > /www/cgi-bin/done
    chmod +x /www/cgi-bin/done
    touch /www/ready
    httpd -p 80 -h /www
    echo "FERRITE-NET serving"
    while [ ! -e /tmp/done ]; do sleep 0.2; done
    echo "FERRITE-NET server done"
    poweroff -f
    ;;
client)
    i=0
    until wget -q -O /dev/null "http://$server/ready" 2>/dev/null || [ "$i" -ge 600 ]; do sleep 1; i=$((i + 1)); done
    echo "FERRITE-NET ping received $(pings 3)"
    echo "FERRITE-NET-SHA256 fetched $(wget -q -O - "http://$server/data" | sha256sum | cut -d' ' -f1)"
    ip link set eth0 down
    ip link set eth0 address 00:16:3e:66:66:66
    ip link set eth0 up
    ip neigh flush dev eth0
    echo "FERRITE-NET spoofed ping received $(pings 2)"
    ip link set eth0 down
    ip link set eth0 address "$mac"
    ip link set eth0 up
    ip neigh flush dev eth0
    echo "FERRITE-NET own-mac ping received $(pings 3)"
    wget -q -O /dev/null "http://$server/cgi-bin/done"
    echo "FERRITE-NET client done"
    poweroff -f
    ;;
isolated)
    echo "FERRITE-NET other-bridge ping received $(pings 3)"
    poweroff -f
    ;;
esac
echo "FERRITE-NET unknown role $role"
poweroff -f
"#;

fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}

/// A domU config module: `name` with `role` and `ip` on `vif`.
fn net_config(dir: &Path, name: &str, memory: u32, role: &str, ip: &str, vif: &str) -> ModuleSpec {
    let cfg = format!(
        "# written by qemu-tests/tests/pvh_net.rs\nname = \"{name}\"\ntype = \"pvh\"\nmemory = {memory}\nvcpus = 1\n\
         kernel = \"vmlinux\"\nramdisk = \"initramfs-net.cpio\"\n\
         cmdline = \"console=ttyS0 loglevel=4 ferrite.net_role={role} ferrite.ip={ip}\"\n\
         vif = [ '{vif}' ]\non_crash = \"destroy\"\n"
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, cfg.as_bytes());
    ModuleSpec::new(&path, "")
}

#[test]
fn pvh_guests_talk_over_a_bridge_and_nothing_else() {
    let name = "pvh_guests_talk_over_a_bridge_and_nothing_else";
    if !debian_packages(name, &["linux-image-cloud-amd64", "busybox-static"]) {
        return;
    }
    use ferrite_qemu_tests::ferrite_tools::guest_images;
    let dir = test_dir(name);
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinux = guest_images::find_vmlinuz(&root).unwrap_or_else(|e| panic!("[{name}] {e}"));
    let modules = debian_modules(name, &root, &["virtio_mmio", "virtio_net"]);
    let image = initramfs::busybox_initramfs_with_modules(NET_INIT_SCRIPT, &modules)
        .unwrap_or_else(|e| panic!("[{name}] cannot build the initramfs: {e}"));
    let kernel = dir.join("vmlinux");
    std::fs::copy(&vmlinux, &kernel).unwrap_or_else(|e| panic!("[{name}] cannot copy the kernel: {e}"));
    let initrd = dir.join("initramfs-net.cpio");
    write_file(&initrd, &image);

    let q = base_qemu()
        .memory_mib(1024)
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(net_config(&dir, "neta", 256, "server", "10.0.0.1", "mac=00:16:3e:00:00:0a, bridge=bridge0"))
        // netb's MAC is generated from its name.
        .module(net_config(&dir, "netb", 160, "client", "10.0.0.2", "bridge=bridge0"))
        .module(net_config(&dir, "netc", 160, "isolated", "10.0.0.3", "mac=00:16:3e:00:00:0c, bridge=bridge1"))
        .module(ModuleSpec::new(&kernel, ""))
        .module(ModuleSpec::new(&initrd, ""));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    let lines = vm.expect_lines(&[
        r"domain \d+ \(neta\): vif 00:16:3e:00:00:0a on bridge bridge0, virtio-net",
        r"domain \d+ \(netb\): vif (00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}) on bridge bridge0, virtio-net",
        r"domain \d+ \(netc\): vif 00:16:3e:00:00:0c on bridge bridge1, virtio-net",
    ]);
    let netb_mac = lines[1].split_whitespace().find(|w| w.starts_with("00:16:3e:")).unwrap().to_string();
    // The guests run side by side: their lines come in any order, each
    // guest's own in order.
    let limit = vm.remaining();
    vm.wait_for(r"^\(neta\) FERRITE-NET eth0 00:16:3e:00:00:0a 10\.0\.0\.1$", limit);
    vm.wait_for(&format!(r"^\(netb\) FERRITE-NET eth0 {netb_mac} 10\.0\.0\.2$"), limit);
    vm.wait_for(r"^\(netc\) FERRITE-NET eth0 00:16:3e:00:00:0c 10\.0\.0\.3$", limit);
    vm.wait_for(r"^\(netc\) FERRITE-NET other-bridge ping received 0$", vm.remaining());
    let served = vm.wait_for(r"^\(neta\) FERRITE-NET-SHA256 served [0-9a-f]{64}$", vm.remaining());
    let served = served.rsplit(' ').next().unwrap().to_string();
    vm.wait_for(r"^\(netb\) FERRITE-NET ping received 3$", vm.remaining());
    let fetched = vm.wait_for(r"^\(netb\) FERRITE-NET-SHA256 fetched [0-9a-f]{64}$", vm.remaining());
    let fetched = fetched.rsplit(' ').next().unwrap().to_string();
    if fetched != served {
        vm.fail(&format!("netb fetched a file with SHA-256 {fetched}; neta served {served}"));
    }
    vm.wait_for(r"^\(netb\) FERRITE-NET spoofed ping received 0$", vm.remaining());
    vm.wait_for(r"^\(netb\) FERRITE-NET own-mac ping received 3$", vm.remaining());
    vm.wait_for(r"^\(netb\) FERRITE-NET client done$", vm.remaining());
    vm.wait_for(r"^\(neta\) FERRITE-NET server done$", vm.remaining());
    vm.expect_success();
}
