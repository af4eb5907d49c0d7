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
//!
//! And a guest on a bridge with the host NIC as its uplink (`uplink=`)
//! fetches a file from a TCP server on the developer's host through QEMU's
//! user network, but cannot reach the hypervisor's management service.

use ferrite_qemu_tests::ferrite_tools::initramfs;
use sha2::Digest;
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{
    base_qemu, debian_modules, debian_packages, images, linux_vm_timeout, linuxboot_rom, seabios_image, test_dir, Vm, BASE_CMDLINE,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
mib=64
clients=1
wait_flood=0
for w in $(cat /proc/cmdline); do
    case "$w" in
        ferrite.net_role=*) role="${w#ferrite.net_role=}" ;;
        ferrite.ip=*) ip="${w#ferrite.ip=}" ;;
        ferrite.port=*) port="${w#ferrite.port=}" ;;
        ferrite.mib=*) mib="${w#ferrite.mib=}" ;;
        ferrite.clients=*) clients="${w#ferrite.clients=}" ;;
        ferrite.wait_flood=*) wait_flood="${w#ferrite.wait_flood=}" ;;
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
    dd if=/dev/urandom of=/www/data bs=1M count="$mib" 2>/dev/null
    echo "FERRITE-NET-SHA256 served $(sha256sum /www/data | cut -d' ' -f1)"
    printf '#!/bin/sh\necho done >> /tmp/done\necho "Content-Type: text/plain"\necho\necho bye\n' > /www/cgi-bin/done
    printf '#!/bin/sh\ntouch /www/flooding\necho "Content-Type: text/plain"\necho\necho ok\n' > /www/cgi-bin/flooding
    chmod +x /www/cgi-bin/flooding
    chmod +x /www/cgi-bin/done
    touch /www/ready
    httpd -p 80 -h /www
    echo "FERRITE-NET serving"
    while [ "$(cat /tmp/done 2>/dev/null | wc -l)" -lt "$clients" ]; do sleep 0.2; done
    echo "FERRITE-NET server done"
    rm -f /www/ready
    sleep 1
    poweroff -f
    ;;
client)
    i=0
    until wget -q -O /dev/null "http://$server/ready" 2>/dev/null || [ "$i" -ge 600 ]; do sleep 1; i=$((i + 1)); done
    if [ "$wait_flood" = 1 ]; then
        i=0
        until wget -q -O /dev/null "http://$server/flooding" 2>/dev/null || [ "$i" -ge 600 ]; do sleep 1; i=$((i + 1)); done
        echo "FERRITE-NET fetching during a flood"
    fi
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
flooder)
    # Minimum-size frames to the server's MAC as fast as pktgen can send
    # them, in bursts, until the server is gone.
    i=0
    until wget -q -O /dev/null "http://$server/ready" 2>/dev/null || [ "$i" -ge 600 ]; do sleep 1; i=$((i + 1)); done
    ping -c 1 -W 2 "$server" >/dev/null 2>&1
    victim=$(ip neigh show "$server" | grep -o '..:..:..:..:..:..' | head -1)
    echo "add_device eth0" > /proc/net/pktgen/kpktgend_0
    for setting in "count 50000" "pkt_size 60" "delay 0" "clone_skb 0" "dst $server" "dst_mac $victim"; do
        echo "$setting" > /proc/net/pktgen/eth0
    done
    wget -q -O /dev/null "http://$server/cgi-bin/flooding"
    echo "FERRITE-NET flooding $victim"
    sent=0
    while wget -q -O /dev/null "http://$server/ready" 2>/dev/null; do
        echo start > /proc/net/pktgen/pgctrl
        sent=$((sent + $(grep -o 'pkts-sofar: [0-9]*' /proc/net/pktgen/eth0 | cut -d' ' -f2)))
    done
    echo "FERRITE-NET flooder sent $sent"
    poweroff -f
    ;;
isolated)
    echo "FERRITE-NET other-bridge ping received $(pings 3)"
    poweroff -f
    ;;
uplink)
    ip route add default via 10.0.2.2
    echo "FERRITE-NET-SHA256 outside $(wget -q -O - "http://10.0.2.2:$port/blob" | sha256sum | cut -d' ' -f1)"
    if nc -w 5 10.0.2.15 7070 </dev/null >/dev/null 2>&1; then
        echo "FERRITE-NET management service reachable"
    else
        echo "FERRITE-NET management service unreachable"
    fi
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
    net_config_with(dir, name, memory, &format!("ferrite.net_role={role} ferrite.ip={ip}"), vif)
}

fn net_config_with(dir: &Path, name: &str, memory: u32, args: &str, vif: &str) -> ModuleSpec {
    let cfg = format!(
        "# written by qemu-tests/tests/pvh_net.rs\nname = \"{name}\"\ntype = \"pvh\"\nmemory = {memory}\nvcpus = 1\n\
         kernel = \"vmlinux\"\nramdisk = \"initramfs-net.cpio\"\n\
         cmdline = \"console=ttyS0 loglevel=4 {args}\"\n\
         vif = [ '{vif}' ]\non_crash = \"destroy\"\n"
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, cfg.as_bytes());
    ModuleSpec::new(&path, "")
}

/// QEMU for the network tests: 1 GiB, two CPUs, Ferrite with the tests'
/// command line.
fn net_qemu() -> ferrite_qemu_tests::ferrite_tools::qemu::QemuCommand {
    base_qemu().memory_mib(1024).smp(2).kernel(&images().multiboot).append(BASE_CMDLINE)
}

/// The SHA-256 at the end of the first console line matching `pattern`.
fn hash_line(vm: &mut Vm, pattern: &str) -> String {
    let line = vm.wait_for(pattern, vm.remaining());
    line.rsplit(' ').next().unwrap_or_default().to_string()
}

/// Waits for `guest`'s hash of the file it fetched; it must be `served`.
fn expect_fetched(vm: &mut Vm, guest: &str, served: &str) {
    let fetched = hash_line(vm, &format!(r"^\({guest}\) FERRITE-NET-SHA256 fetched [0-9a-f]{{64}}$"));
    if fetched != served {
        vm.fail(&format!("{guest} fetched a file with SHA-256 {fetched}; neta served {served}"));
    }
}

/// Debian's kernel and the network initramfs in `dir` (`vmlinux`,
/// `initramfs-net.cpio`); None when the packages cannot be had.
fn net_guest(name: &str, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    // PVH guests find their NIC through virtio_mmio, HVM guests through
    // virtio_pci; each loads all and uses what it has.
    net_guest_from(name, dir, "linux-image-cloud-amd64", &["virtio_mmio", "virtio_pci", "virtio_net", "pktgen"], "")
}

/// `package`'s kernel and an initramfs with `modules` (and what they
/// depend on) and the network init, written into `dir` with `suffix`.
fn net_guest_from(name: &str, dir: &Path, package: &str, modules: &[&str], suffix: &str) -> Option<(PathBuf, PathBuf)> {
    if !debian_packages(name, &[package, "busybox-static"]) {
        return None;
    }
    use ferrite_qemu_tests::ferrite_tools::guest_images;
    let root = guest_images::fetch_debian_package(package).unwrap();
    let vmlinux = guest_images::find_vmlinuz(&root).unwrap_or_else(|e| panic!("[{name}] {e}"));
    let modules = debian_modules(name, &root, modules);
    let image = initramfs::busybox_initramfs_with_modules(NET_INIT_SCRIPT, &modules)
        .unwrap_or_else(|e| panic!("[{name}] cannot build the initramfs: {e}"));
    let kernel = dir.join(format!("vmlinux{suffix}"));
    std::fs::copy(&vmlinux, &kernel).unwrap_or_else(|e| panic!("[{name}] cannot copy the kernel: {e}"));
    let initrd = dir.join(format!("initramfs-net{suffix}.cpio"));
    write_file(&initrd, &image);
    Some((kernel, initrd))
}

/// An HVM domU config module: Linux booted directly by SeaBIOS, with one
/// NIC of `model` on bridge0. The e1000 guest runs Debian's generic kernel
/// (the cloud kernel has no e1000 driver).
fn hvm_net_config(dir: &Path, name: &str, args: &str, model: &str) -> ModuleSpec {
    let suffix = if model == "e1000" { "-generic" } else { "" };
    let cfg = format!(
        "# written by qemu-tests/tests/pvh_net.rs\nname = \"{name}\"\ntype = \"hvm\"\nmemory = 192\nvcpus = 1\n\
         kernel = \"vmlinux{suffix}\"\nramdisk = \"initramfs-net{suffix}.cpio\"\n\
         cmdline = \"console=ttyS0 loglevel=4 {args}\"\n\
         vif = [ 'model={model}, bridge=bridge0' ]\non_crash = \"destroy\"\n"
    );
    let path = dir.join(format!("{name}.cfg"));
    write_file(&path, cfg.as_bytes());
    ModuleSpec::new(&path, "")
}

/// HVM guests, one per NIC model, each ping a PVH guest on the same
/// bridge and fetch a file from it over TCP.
fn hvm_guests_reach_a_pvh_guest(name: &str, models: &[&str]) {
    let dir = test_dir(name);
    let Some((kernel, initrd)) = net_guest(name, &dir) else { return };
    let generic = if models.contains(&"e1000") {
        let Some(files) = net_guest_from(name, &dir, "linux-image-amd64", &["e1000"], "-generic") else { return };
        Some(files)
    } else {
        None
    };
    let mut q = net_qemu()
        .module(net_config_with(
            &dir,
            "neta",
            160,
            &format!("ferrite.net_role=server ferrite.ip=10.0.0.1 ferrite.mib=8 ferrite.clients={}", models.len()),
            "mac=00:16:3e:00:00:0a, bridge=bridge0",
        ));
    for (i, model) in models.iter().enumerate() {
        let guest = format!("hvm{}", model.replace('-', ""));
        q = q.module(hvm_net_config(&dir, &guest, &format!("ferrite.net_role=client ferrite.ip=10.0.0.{}", 11 + i), model));
    }
    for (k, i) in generic.iter() {
        q = q.module(ModuleSpec::new(k, "")).module(ModuleSpec::new(i, ""));
    }
    let q = q
        .module(ModuleSpec::new(&kernel, ""))
        .module(ModuleSpec::new(&initrd, ""))
        .module(ModuleSpec::new(PathBuf::from(&images().stubdom), ""))
        .module(ModuleSpec::new(seabios_image(), ""))
        .module(ModuleSpec::new(linuxboot_rom(), ""));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout() * 2);
    let served = hash_line(&mut vm, r"^\(neta\) FERRITE-NET-SHA256 served [0-9a-f]{64}$");
    for model in models {
        let guest = format!("hvm{}", model.replace('-', ""));
        vm.wait_for(&format!(r"domain \d+ \({guest}\): vif 00:16:3e:[0-9a-f:]{{8}} on bridge bridge0, {model} in {guest}-dm"), vm.remaining());
        vm.wait_for(&format!(r"^\({guest}\) FERRITE-NET ping received 3$"), vm.remaining());
        expect_fetched(&mut vm, &guest, &served);
        vm.wait_for(&format!(r"^\({guest}\) FERRITE-NET client done$"), vm.remaining());
    }
    vm.wait_for(r"^\(neta\) FERRITE-NET server done$", vm.remaining());
    vm.expect_success();
}

#[test]
fn hvm_guests_with_e1000_and_virtio_net_reach_a_pvh_guest() {
    hvm_guests_reach_a_pvh_guest("hvm_guests_with_e1000_and_virtio_net_reach_a_pvh_guest", &["virtio-net", "e1000"]);
}

#[test]
fn pvh_guests_talk_over_a_bridge_and_nothing_else() {
    let name = "pvh_guests_talk_over_a_bridge_and_nothing_else";
    let dir = test_dir(name);
    let Some((kernel, initrd)) = net_guest(name, &dir) else { return };

    let q = net_qemu()
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
    let served = hash_line(&mut vm, r"^\(neta\) FERRITE-NET-SHA256 served [0-9a-f]{64}$");
    vm.wait_for(r"^\(netb\) FERRITE-NET ping received 3$", vm.remaining());
    expect_fetched(&mut vm, "netb", &served);
    vm.wait_for(r"^\(netb\) FERRITE-NET spoofed ping received 0$", vm.remaining());
    vm.wait_for(r"^\(netb\) FERRITE-NET own-mac ping received 3$", vm.remaining());
    vm.wait_for(r"^\(netb\) FERRITE-NET client done$", vm.remaining());
    vm.wait_for(r"^\(neta\) FERRITE-NET server done$", vm.remaining());
    // The switch counted netb's spoofed frames, and each bridge went with
    // its last port: nothing stale is left.
    vm.wait_for(
        &format!(r"netb: vif {netb_mac} left bridge bridge0: sent [1-9]\d* frames \(\d+ bytes\), received [1-9]\d* \(\d+ bytes\); dropped: [1-9]\d* sent \([1-9]\d* spoofed\)"),
        vm.remaining(),
    );
    vm.wait_for(r"bridge bridge1: no ports left; removed", vm.remaining());
    vm.wait_for(r"bridge bridge0: no ports left; removed", vm.remaining());
    vm.expect_success();
}

/// A one-request-at-a-time HTTP/1.0 server on the host's loopback serving
/// `body` for any path; returns its port.
fn serve_http_once(body: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!("HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body));
        }
    });
    port
}

#[test]
fn a_guest_reaches_the_developers_host_through_the_uplink_but_not_the_hypervisor() {
    let name = "a_guest_reaches_the_developers_host_through_the_uplink_but_not_the_hypervisor";
    let dir = test_dir(name);
    let Some((kernel, initrd)) = net_guest(name, &dir) else { return };
    let blob = ferrite_qemu_tests::pseudo_random_bytes(0x0a71, 8 << 20);
    let want: String = sha2::Sha256::digest(&blob).iter().map(|b| format!("{b:02x}")).collect();
    let port = serve_http_once(blob);
    let link = ferrite_qemu_tests::ferrite_tools::xl::link::prepare(&dir, None).expect("network link");
    let q = base_qemu()
        .memory_mib(512)
        .smp(2)
        .kernel(&images().multiboot)
        .append(&format!("{BASE_CMDLINE} uplink=bridge0"))
        .module(link.key_module.clone())
        .module(net_config_with(&dir, "netu", 160, &format!("ferrite.net_role=uplink ferrite.ip=10.0.2.20 ferrite.port={port}"), "bridge=bridge0"))
        .module(ModuleSpec::new(&kernel, ""))
        .module(ModuleSpec::new(&initrd, ""))
        .extra_args(link.qemu_args.clone());
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout());
    vm.expect_lines(&[
        r"net: the host NIC \(52:54:00:12:34:56\) is the uplink of bridge bridge0",
        r"domain \d+ \(netu\): vif 00:16:3e:[0-9a-f:]{8} on bridge bridge0, virtio-net",
        r"^\(netu\) FERRITE-NET eth0 00:16:3e:[0-9a-f:]{8} 10\.0\.2\.20$",
    ]);
    let got = vm.expect_lines(&[r"^\(netu\) FERRITE-NET-SHA256 outside [0-9a-f]{64}$"]);
    if !got[0].ends_with(&want) {
        vm.fail(&format!("the guest fetched {}, the host served {want}", got[0]));
    }
    vm.expect_lines(&[r"^\(netu\) FERRITE-NET management service unreachable$"]);
    vm.expect_success();
}

#[test]
fn a_flooding_guest_does_not_stop_a_transfer_between_two_others() {
    let name = "a_flooding_guest_does_not_stop_a_transfer_between_two_others";
    let dir = test_dir(name);
    let Some((kernel, initrd)) = net_guest(name, &dir) else { return };
    let q = net_qemu()
        .module(net_config_with(&dir, "neta", 192, "ferrite.net_role=server ferrite.ip=10.0.0.1 ferrite.mib=16", "mac=00:16:3e:00:00:0a, bridge=bridge0"))
        .module(net_config_with(&dir, "netb", 128, "ferrite.net_role=client ferrite.ip=10.0.0.2 ferrite.wait_flood=1", "bridge=bridge0"))
        .module(net_config_with(&dir, "netf", 128, "ferrite.net_role=flooder ferrite.ip=10.0.0.9", "bridge=bridge0"))
        .module(ModuleSpec::new(&kernel, ""))
        .module(ModuleSpec::new(&initrd, ""));
    let mut vm = Vm::start_with_timeout(name, &dir, q, linux_vm_timeout() * 2);
    let served = hash_line(&mut vm, r"^\(neta\) FERRITE-NET-SHA256 served [0-9a-f]{64}$");
    vm.wait_for(r"^\(netf\) FERRITE-NET flooding 00:16:3e:00:00:0a$", vm.remaining());
    vm.wait_for(r"^\(netb\) FERRITE-NET fetching during a flood$", vm.remaining());
    expect_fetched(&mut vm, "netb", &served);
    vm.wait_for(r"^\(netb\) FERRITE-NET client done$", vm.remaining());
    vm.wait_for(r"^\(neta\) FERRITE-NET server done$", vm.remaining());
    // The flood really ran all along: at least one whole burst.
    let sent = vm.wait_for(r"^\(netf\) FERRITE-NET flooder sent \d+$", vm.remaining());
    let sent: u64 = sent.rsplit(' ').next().unwrap().parse().unwrap();
    if sent < 50_000 {
        vm.fail(&format!("the flooder sent only {sent} frames"));
    }
    vm.expect_success();
}
