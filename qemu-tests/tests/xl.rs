//! `ferrite xl` against a Ferrite running under QEMU: the hypervisor on
//! QEMU's user network (virtio-net, DHCP), its management service
//! forwarded to a host port, and the real client code (`xl::run`, what
//! the `ferrite xl` command runs) talking to it, as a developer would
//! from another terminal.

use ferrite_mgmt::ClientHandshake;
use ferrite_qemu_tests::{base_qemu, guest_module, images, pvh_config_module, test_dir, Vm, BASE_CMDLINE};
use ferrite_tools::xl::{self, link, Captured, Target};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `ferrite xl ARGS` in-process; returns (stdout, stderr, ok).
fn xl(target: &Target, args: &[&str]) -> (String, String, bool) {
    xl::run_captured(target, args, None, Captured::default())
}

/// Free host memory and the hypervisor's heap in use, in bytes, as
/// `xl info` reports them.
fn host_memory(target: &Target) -> (u64, u64) {
    let (out, err, ok) = xl(target, &["info"]);
    assert!(ok, "xl info: {err}");
    let field = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches([' ', ':']).trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("no {key} in xl info:\n{out}"))
    };
    (field("free_bytes"), field("heap_used_bytes"))
}

/// Two domains of `guests/console_button.S`: `guest`, which the test
/// manages, and `keeper`, which keeps Ferrite running (with `debug_exit=`
/// it ends when its last domain does) until the test destroys it last.
fn guests(dir: &std::path::Path) -> Vec<ferrite_tools::modules::ModuleSpec> {
    let guest = pvh_config_module(dir, "guest", "console_button", 16);
    // A NIC its (assembly) guest never drives: `xl network-list` shows it.
    let cfg = dir.join("guest.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap() + "vif = [ 'mac=00:16:3e:00:00:42, bridge=xlbr' ]\n";
    std::fs::write(&cfg, text).unwrap();
    vec![
        guest,
        pvh_config_module(dir, "keeper", "console_button", 16),
        guest_module("console_button", dir),
    ]
}

/// Boots Ferrite with no NIC and Debian's cloud kernel as dom0 (options
/// `dom0_opts`) running the busybox `init` script, with the vsock modules,
/// the static `ferrite` command, a fresh management key in
/// `/etc/ferrite/xl.key` and `files` (name, mode, bytes) in
/// `/etc/ferrite/`: a dom0 that reaches the management service over vsock.
fn boot_xl_dom0(name: &str, dir: &std::path::Path, init: &str, files: &[(&str, u32, &[u8])], dom0_opts: &str) -> Vm {
    let root = ferrite_tools::guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinuz = ferrite_tools::guest_images::find_vmlinuz(&root).unwrap();
    let modules = ferrite_qemu_tests::debian_modules(name, &root, &ferrite_tools::initramfs::DOM0_XL_MODULES);
    let exe = std::fs::read(ferrite_qemu_tests::ferrite_static_exe()).expect("the static ferrite command");
    let link = link::prepare(dir, None).expect("management key");
    let session = xl::read_session_file(&link.session_file).expect("session file");
    let key = format!("{}\n", session.secret.to_hex());
    let paths: Vec<String> = files.iter().map(|(file, _, _)| format!("etc/ferrite/{file}")).collect();
    // `bin` is in the busybox tree already.
    let mut tree: Vec<(&str, u32, &[u8])> =
        vec![("etc/", 0o755, &[]), ("etc/ferrite/", 0o755, &[]), ("etc/ferrite/xl.key", 0o600, key.as_bytes()), ("bin/ferrite", 0o755, &exe)];
    tree.extend(paths.iter().zip(files).map(|(path, &(_, mode, bytes))| (path.as_str(), mode, bytes)));
    let image = ferrite_tools::initramfs::busybox_initramfs_with(init, &modules, &tree).unwrap_or_else(|e| panic!("[{name}] {e}"));
    let initrd = dir.join("dom0-xl.cpio");
    std::fs::write(&initrd, image).unwrap();
    let q = base_qemu()
        .memory_mib(1024)
        .smp(2)
        .kernel(&images().multiboot)
        .append(&format!("{BASE_CMDLINE} {dom0_opts}"))
        .module(ferrite_tools::modules::ModuleSpec::new(&vmlinuz, "console=ttyS0 loglevel=4"))
        .module(ferrite_tools::modules::ModuleSpec::new(&initrd, ""))
        .module(link.key_module.clone());
    Vm::start_with_timeout(name, dir, q, ferrite_qemu_tests::linux_vm_timeout())
}

/// Boots Ferrite with the management link, the files HVM guests need
/// (the stub domain, SeaBIOS) as boot modules and a PVH keeper that holds
/// it up between guests; waits for the keeper.
fn boot_for_hvm_guests(name: &str, dir: &std::path::Path) -> (Vm, Target) {
    let modules = vec![
        pvh_config_module(dir, "keeper", "idle", 16),
        guest_module("idle", dir),
        ferrite_tools::modules::ModuleSpec::new(std::path::PathBuf::from(&images().stubdom), ""),
        ferrite_tools::modules::ModuleSpec::new(ferrite_qemu_tests::seabios_image(), ""),
    ];
    let (mut vm, target) = boot_with_link(name, dir, modules);
    vm.wait_for(r"^\(keeper\) idle ready$", Duration::from_secs(120));
    (vm, target)
}

/// Fails if anything on the console panicked or crashed.
fn refuse_panics_and_crashes(vm: &mut Vm) {
    let text = vm.console_text();
    for bad in ["panic", "crashed"] {
        if text.contains(bad) {
            vm.fail(&format!("the console says {bad:?}"));
        }
    }
}

/// Destroys `keeper`, the last domain: Ferrite then reports to QEMU and
/// exits, possibly before the reply leaves, so only the log is checked.
fn finish(mut vm: Vm, target: &Target) {
    let _ = xl(target, &["destroy", "keeper"]);
    vm.expect_lines(&[r"domain \d+ \(keeper\) destroyed"]);
    vm.expect_success();
}

/// Boots Ferrite with the management link and the guests in `modules`;
/// waits until the service has its address.
fn boot_with_link(name: &str, dir: &std::path::Path, modules: Vec<ferrite_tools::modules::ModuleSpec>) -> (Vm, Target) {
    boot_with_link_for(name, dir, modules, ferrite_qemu_tests::vm_timeout())
}

fn boot_with_link_for(name: &str, dir: &std::path::Path, modules: Vec<ferrite_tools::modules::ModuleSpec>, limit: Duration) -> (Vm, Target) {
    let link = link::prepare(dir, None).expect("management link");
    let session = xl::read_session_file(&link.session_file).expect("session file");
    let mut q = base_qemu().smp(2).kernel(&images().multiboot).append(BASE_CMDLINE).extra_args(&link.qemu_args);
    for m in modules {
        q = q.module(m);
    }
    q = q.module(link.key_module.clone());
    let mut vm = Vm::start_with_timeout(name, dir, q, limit);
    vm.wait_for(r"^\(ferrite\) mgmt: ferrite xl service on TCP port 7070$", Duration::from_secs(120));
    vm.wait_for(r"^\(ferrite\) net: address 10\.0\.2\.15/24 by DHCP", Duration::from_secs(120));
    let target = Target { host: session.host, port: session.port, secret: session.secret, key_source: "test".into() };
    (vm, target)
}

/// The developer's loop from the host: `list`, `info`, `dmesg`,
/// `vcpu-list`, `pause`/`unpause`, `console` (output seen, input typed,
/// Ctrl-] detaches), `trigger nmi`, `reboot -F`, then `shutdown -w` presses the guest's power button
/// and waits until it is gone. Unknown domains get one clear error.
#[test]
fn xl_manages_a_running_pvh_domain_from_the_host() {
    let name = "xl_manages_a_running_pvh_domain_from_the_host";
    let dir = test_dir(name);
    let modules = guests(&dir);
    let (mut vm, target) = boot_with_link(name, &dir, modules);
    vm.wait_for(r"^\(guest\) console_button ready$", Duration::from_secs(120));
    vm.wait_for(r"^\(keeper\) console_button ready$", Duration::from_secs(120));

    let (out, err, ok) = xl(&target, &["list"]);
    assert!(ok, "xl list failed: {err}");
    let row = out.lines().find(|l| l.starts_with("guest ")).unwrap_or_else(|| vm.fail(&format!("no guest row in xl list:\n{out}")));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[2..4], &["16", "1"], "xl list row: {row}");

    let (out, err, ok) = xl(&target, &["info"]);
    assert!(ok, "xl info failed: {err}");
    assert!(out.contains("nr_cpus                : 2"), "xl info:\n{out}");
    assert!(!out.contains(&target.secret.to_hex()), "xl info shows the key");
    let (out, _, ok) = xl(&target, &["dmesg"]);
    assert!(ok && out.contains("boot complete"), "xl dmesg:\n{out}");
    assert!(!out.contains(&target.secret.to_hex()), "the key is in the log");
    let (out, _, ok) = xl(&target, &["vcpu-list", "guest"]);
    assert!(ok && out.lines().any(|l| l.starts_with("guest ")), "xl vcpu-list:\n{out}");
    let (out, err, ok) = xl(&target, &["network-list", "guest", "keeper"]);
    assert!(ok, "xl network-list: {err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "one NIC (the guest's; the keeper has none):\n{out}");
    assert_eq!(&rows[0][..6], &["guest", "0", "00:16:3e:00:00:42", "xlbr", "virtio-net", "up"], "xl network-list:\n{out}");

    let (_, err, ok) = xl(&target, &["pause", "guest"]);
    assert!(ok, "pause: {err}");
    let (out, _, _) = xl(&target, &["list", "guest"]);
    assert!(out.contains("--p---"), "paused domain not shown paused:\n{out}");
    let (_, err, ok) = xl(&target, &["unpause", "guest"]);
    assert!(ok, "unpause: {err}");

    let (_, err, ok) = xl(&target, &["destroy", "nosuch"]);
    assert!(!ok && err.contains("nosuch"), "an unknown domain must be an error naming it: {err}");

    // The console: type a line, see the guest's echo, detach.
    let (detach_tx, detach_rx) = mpsc::channel::<()>();
    let input = Box::new(ScriptedInput { first: b"hello ferrite\r".to_vec(), then: detach_rx, done: false });
    let out = Captured::default();
    let console = {
        let (target, out) = (target.clone(), out.clone());
        std::thread::spawn(move || xl::run_captured(&target, &["console", "guest"], Some(input), out))
    };
    let start = Instant::now();
    while !out.text().contains("echo: hello ferrite") {
        if start.elapsed() > Duration::from_secs(60) {
            vm.fail(&format!("no echo through xl console; it showed:\n{}", out.text()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    detach_tx.send(()).unwrap();
    let (_, err, ok) = console.join().unwrap();
    assert!(ok, "xl console did not detach cleanly: {err}");
    vm.wait_for(r"^\(guest\) echo: hello ferrite$", Duration::from_secs(10));

    // Triggers: an NMI into vCPU 0 (the guest counts it), none into a
    // vCPU it lacks; `reboot` without a PV control interface needs -F,
    // which presses the reset button, and `on_reboot` restarts it.
    let (_, err, ok) = xl(&target, &["trigger", "guest", "nmi"]);
    assert!(ok, "xl trigger nmi: {err}");
    vm.wait_for(r"^\(guest\) nmi 1 received$", Duration::from_secs(60));
    let (_, err, ok) = xl(&target, &["trigger", "guest", "nmi", "3"]);
    assert!(!ok && err.contains("no vCPU 3"), "an NMI to a missing vCPU must be refused: {err}");
    let (_, err, ok) = xl(&target, &["reboot", "guest"]);
    assert!(!ok && err.contains("reboot -F"), "xl reboot without -F must point to it: {err}");
    let (_, err, ok) = xl(&target, &["reboot", "-F", "guest"]);
    assert!(ok, "xl reboot -F: {err}");
    vm.expect_lines(&[r"domain \d+ \(guest\) rebooting", r"domain \d+ \(guest\) restarted as domain \d+"]);
    vm.wait_for(r"^\(guest\) console_button ready$", Duration::from_secs(120));

    let (_, err, ok) = xl(&target, &["shutdown", "-w", "guest"]);
    assert!(ok, "xl shutdown -w: {err}");
    vm.expect_lines(&[r"^\(guest\) power button pressed$", r"domain \d+ \(guest\) powered off"]);
    let (out, _, _) = xl(&target, &["list"]);
    assert!(!out.contains("guest "), "a powered-off domain is still listed:\n{out}");
    finish(vm, &target);
}

/// Typed input for `xl console`: a line at once, then Ctrl-] when told.
struct ScriptedInput {
    first: Vec<u8>,
    then: mpsc::Receiver<()>,
    done: bool,
}

impl Read for ScriptedInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.len());
            buf[..n].copy_from_slice(&self.first[..n]);
            self.first.drain(..n);
            return Ok(n);
        }
        if self.done {
            return Ok(0);
        }
        let _ = self.then.recv();
        self.done = true;
        buf[0] = 0x1d;
        Ok(1)
    }
}

/// A wrong key is refused with a clear error; garbage and a truncated
/// frame get an error reply and a closed connection; the service keeps
/// answering the right client throughout.
#[test]
fn xl_refuses_a_wrong_key_and_survives_malformed_frames() {
    let name = "xl_refuses_a_wrong_key_and_survives_malformed_frames";
    let dir = test_dir(name);
    let modules = guests(&dir);
    let (mut vm, target) = boot_with_link(name, &dir, modules);

    let mut wrong = target.clone();
    wrong.secret = ferrite_mgmt::Secret::from_bytes([7; 32]);
    let (_, err, ok) = xl(&wrong, &["list"]);
    assert!(!ok, "a wrong key was accepted");
    assert!(err.to_lowercase().contains("key"), "the refusal should say the key is wrong: {err}");

    let addr = format!("{}:{}", target.host, target.port);
    // Garbage: a frame that is no message.
    let reply = raw_exchange(&addr, &[5, 0, 0, 0, b'h', b'e', b'l', b'l', b'o']);
    assert!(String::from_utf8_lossy(&reply).contains("malformed"), "garbage got {reply:?}");
    // Oversized: a length beyond the limit.
    let reply = raw_exchange(&addr, &[0xff, 0xff, 0xff, 0x7f]);
    assert!(!reply.is_empty(), "an oversized frame got no error reply");
    // Truncated: half a Hello, then the client hangs up.
    let hello = ClientHandshake::new(target.secret.clone(), [1; 32]).hello().unwrap();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    // Wrong keys are throttled, not locked out for good: the right key
    // works after the back-off.
    let start = Instant::now();
    loop {
        let (out, err, ok) = xl(&target, &["list"]);
        if ok {
            assert!(out.contains("guest"), "xl list after the attacks:\n{out}");
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            vm.fail(&format!("the service stopped answering the right key: {err}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, err, ok) = xl(&target, &["destroy", "guest"]);
    assert!(ok, "xl destroy: {err}");
    vm.expect_lines(&[r"domain \d+ \(guest\) destroyed"]);
    finish(vm, &target);
}

/// Sends `bytes` on a fresh connection and returns all the server sends
/// back before it closes.
fn raw_exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

/// `xl create` from files on the developer's host: the config is checked
/// here (errors by file, line and key), then sent with the kernel it names;
/// the new domain runs and talks on its console. A second create of the
/// same name is refused; a bad config never reaches the hypervisor.
#[test]
fn xl_creates_a_pvh_domain_from_files_on_the_host() {
    let name = "xl_creates_a_pvh_domain_from_files_on_the_host";
    let dir = test_dir(name);
    let modules = vec![pvh_config_module(&dir, "keeper", "console_button", 16), guest_module("console_button", &dir)];
    let (mut vm, target) = boot_with_link(name, &dir, modules);
    let cfg = dir.join("made.cfg");
    std::fs::write(&cfg, "name = \"made\"\ntype = \"pvh\"\nkernel = \"console_button.elf\"\nmemory = 24\nvcpus = 1\n").unwrap();
    let cfg = cfg.display().to_string();

    let (out, err, ok) = xl(&target, &["create", &cfg]);
    assert!(ok, "xl create: {err}\n{out}");
    vm.wait_for(r"^\(made\) console_button ready$", Duration::from_secs(60));
    let (out, _, _) = xl(&target, &["list", "made"]);
    assert!(out.lines().any(|l| l.starts_with("made ") && l.split_whitespace().nth(2) == Some("24")), "xl list:\n{out}");

    let (_, err, ok) = xl(&target, &["create", &cfg]);
    assert!(!ok && err.contains("already exists"), "a second 'made' was not refused: {err}");

    let bad = dir.join("bad.cfg");
    std::fs::write(&bad, "name = \"bad\"\nmemory = lots\nkernel = \"console_button.elf\"\n").unwrap();
    let (_, err, ok) = xl(&target, &["create", &bad.display().to_string()]);
    assert!(!ok && err.contains("bad.cfg:2") && err.contains("memory"), "a bad config must be reported by file, line and key: {err}");

    let (_, err, ok) = xl(&target, &["shutdown", "-w", "made"]);
    assert!(ok, "xl shutdown -w made: {err}");
    vm.expect_lines(&[r"domain \d+ \(made\) powered off"]);
    finish(vm, &target);
}

/// 200 `xl create` / `xl destroy` cycles, PVH and HVM (with its stub
/// domain) in turn: free host memory and the hypervisor's heap come back
/// to exactly where they were. Each has a NIC with the same MAC on the
/// same bridge, so a switch port left behind by a destroy would make the
/// next create fail (a MAC already on the bridge is refused).
#[test]
fn create_destroy_cycles_leak_no_host_memory() {
    let cycles = 200;
    let name = "create_destroy_cycles_leak_no_host_memory";
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, "keeper", "console_button", 16),
        guest_module("console_button", &dir),
        ferrite_tools::modules::ModuleSpec::new(&images().stubdom, ""),
        ferrite_tools::modules::ModuleSpec::new(ferrite_qemu_tests::seabios_image(), ""),
    ];
    // About a minute on an idle machine; room for a loaded one.
    let (mut vm, target) = boot_with_link_for(name, &dir, modules, Duration::from_secs(600));
    let pvh = dir.join("cycle-pvh.cfg");
    let vif = "vif = [ 'mac=00:16:3e:00:00:99, bridge=cyclebr' ]\n";
    std::fs::write(&pvh, format!("name = \"cycle\"\ntype = \"pvh\"\nkernel = \"console_button.elf\"\nmemory = 16\n{vif}")).unwrap();
    let hvm = dir.join("cycle-hvm.cfg");
    std::fs::write(&hvm, format!("name = \"cycle\"\ntype = \"hvm\"\nmemory = 32\nboot = \"c\"\n{vif}")).unwrap();
    let cycle = |i: usize| {
        let cfg = if i % 2 == 0 { &pvh } else { &hvm };
        let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
        assert!(ok, "cycle {i}: xl create: {err}\n{out}");
        let (_, err, ok) = xl(&target, &["destroy", "cycle"]);
        assert!(ok, "cycle {i}: xl destroy: {err}");
    };
    // Warm up: the first domains size the hypervisor's tables for good.
    for i in 0..4 {
        cycle(i);
    }
    let before = host_memory(&target);
    let start = Instant::now();
    for i in 0..cycles {
        cycle(i);
    }
    let after = host_memory(&target);
    eprintln!("{cycles} cycles in {:.1} s; free bytes {} -> {}, heap used {} -> {}", start.elapsed().as_secs_f64(), before.0, after.0, before.1, after.1);
    if after != before {
        vm.fail(&format!("host memory leaked over {cycles} create/destroy cycles: free {} -> {} bytes, heap used {} -> {} bytes", before.0, after.0, before.1, after.1));
    }
    finish(vm, &target);
}

/// A guest flooding its console (`guests/console_flood.S`: 20,000 lines
/// as fast as it can, then a 16 KiB line with no newline) cannot drown
/// the host: the serial console shows its first lines and then a budget of
/// lines a second, the rest are dropped and counted, the hypervisor's log
/// (`xl dmesg`) holds no guest output at all, and another domain (a
/// ticker) runs to its end meanwhile.
#[test]
fn a_console_flood_is_rate_limited_and_keeps_out_of_the_log() {
    let name = "a_console_flood_is_rate_limited_and_keeps_out_of_the_log";
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, "keeper", "console_button", 16),
        guest_module("console_button", &dir),
        pvh_config_module(&dir, "flood", "console_flood", 16),
        guest_module("console_flood", &dir),
        pvh_config_module(&dir, "ticker", "ticker", 16),
        guest_module("ticker", &dir),
    ];
    let (mut vm, target) = boot_with_link(name, &dir, modules);
    vm.wait_for(r"domain \d+ \(flood\) powered off", Duration::from_secs(120));
    vm.wait_for(r"^\(ticker\) ticker done$", Duration::from_secs(120));
    vm.wait_for(r"domain \d+ \(flood\): \d+ console lines not shown", Duration::from_secs(10));
    // One warning each time lines get through again after some were dropped.
    let dropped: u64 = vm
        .lines()
        .iter()
        .filter_map(|l| l.split_once("(flood): ").and_then(|(_, t)| t.split(' ').next()).and_then(|n| n.parse::<u64>().ok()))
        .sum();
    let shown = vm.lines().iter().filter(|l| l.starts_with("(flood) ")).count() as u64;
    eprintln!("[{name}] flood lines shown {shown}, dropped {dropped}");
    // 20,000 short lines, the pieces of the long one, the last line.
    assert!((20_000..20_100).contains(&(shown + dropped)), "every flood line is either shown or counted: {shown} + {dropped}");
    let reports = vm.lines().iter().filter(|l| l.contains("(flood): ")).count();
    assert!(reports <= 20, "{reports} drop reports: they must not flood the console themselves");
    // How many get through depends on how fast the flood runs (a loaded
    // machine runs it slower); the budget itself is unit-tested
    // (ferrite-devmodel console_limit). Even slowed down, the flood is
    // well over 200 lines a second.
    assert!(dropped >= 1_000, "the flood was not limited: {shown} shown, {dropped} dropped");
    let (log, err, ok) = xl(&target, &["dmesg"]);
    assert!(ok, "xl dmesg: {err}");
    assert!(log.contains("boot complete"), "the hypervisor's log lost its own lines:\n{log}");
    assert!(!log.contains("flood 1"), "guest output is in the hypervisor's log");
    finish(vm, &target);
}

/// `xl create` with `file:` disks: the images stay on the developer's
/// host, each served over NBD by a background `ferrite nbd-serve` the
/// create starts; the hypervisor connects back to them through QEMU's user
/// network, and Debian's Linux finds them as virtio-blk disks, hashes
/// both, copies part of the writable one with fsync and sees the read-only
/// one refuse. When the domain is gone its servers end by themselves.
#[test]
fn xl_create_serves_file_disks_over_nbd() {
    let name = "xl_create_serves_file_disks_over_nbd";
    let dir = test_dir(name);
    let Some((kernel, initrd)) = ferrite_qemu_tests::pvh_disk_guest(name, &dir) else { return };
    ferrite_qemu_tests::ferrite_exe();
    let data = ferrite_qemu_tests::pseudo_random_bytes(0xf11e, 80 << 20);
    std::fs::write(dir.join("data.img"), &data).unwrap();
    let ro = ferrite_qemu_tests::pseudo_random_bytes(0x0123, 16 << 20);
    std::fs::write(dir.join("ro.img"), &ro).unwrap();
    let cfg = dir.join("files.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"files\"\ntype = \"pvh\"\nmemory = 160\nvcpus = 1\nkernel = \"{}\"\nramdisk = \"{}\"\n\
             cmdline = \"console=ttyS0 loglevel=4 ferrite.check_mib=16 ferrite.copy_mib=8 ferrite.copy_to_mib=64\"\n\
             disk = [ 'file:data.img,xvda,w', 'file:ro.img,xvdb,r' ]\n",
            kernel.file_name().unwrap().to_string_lossy(),
            initrd.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    // A keeper that halts: one that spins would hold QEMU's single TCG
    // thread for whole 100 ms turns and starve the transfer's vCPU.
    let modules = vec![pvh_config_module(&dir, "keeper", "idle", 16), guest_module("idle", &dir)];
    let (mut vm, target) = boot_with_link_for(name, &dir, modules, ferrite_qemu_tests::linux_vm_timeout());
    vm.wait_for(r"^\(keeper\) idle ready$", Duration::from_secs(120));

    let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
    assert!(ok, "xl create: {err}\n{out}");
    let ports: Vec<u16> = err
        .lines()
        .filter_map(|l| l.split("over NBD (port ").nth(1)?.split(';').next()?.parse().ok())
        .collect();
    assert_eq!(ports.len(), 2, "xl create should say which ports serve the two disks:\n{err}");
    let sum = |bytes: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    vm.expect_lines(&[
        r"domain \d+ \(files\): disk xvda is NBD export 10\.0\.2\.2:\d+/xvda \(w\), virtio-blk",
        r"domain \d+ \(files\): disk xvdb is NBD export 10\.0\.2\.2:\d+/xvdb \(r\), virtio-blk",
        &format!(r"^\(files\) FERRITE-VDISK-SHA256 vda {}$", sum(&data[..16 << 20])),
        &format!(r"^\(files\) FERRITE-VDISK-SHA256 vdb {}$", sum(&ro)),
        r"^\(files\) FERRITE-VDISK copied 8 MiB$",
        r"^\(files\) FERRITE-VDISK vdb refused a write$",
        r"domain \d+ \(files\) powered off",
    ]);
    let after = std::fs::read(dir.join("data.img")).unwrap();
    assert!(after[64 << 20..72 << 20] == data[..8 << 20], "the guest's fsynced copy is not in the image on the host");
    // The servers end once the hypervisor lets go of the disks.
    let start = Instant::now();
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if start.elapsed() > Duration::from_secs(120) {
                vm.fail(&format!("the NBD server on port {port} is still running after its domain is gone"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    finish(vm, &target);
}

/// `ferrite xl create` of HVM guests whose disks are `file:` images on the
/// host: the command serves each over NBD as for PVH, the hypervisor
/// connects back, and the guest's stub domain does its block I/O on the
/// export (its vCPU blocked in BLOCK_IO until each NBD request is over).
/// SeaBIOS boots `mbr_disk_check.S` from the IDE `hda`, which reads 256
/// sectors through int 13h (their sum printed), and writes one, found in
/// the host file afterwards. A second guest gets a read-only ('r') image
/// as a virtio-blk disk: it boots from it, its write fails and the file is
/// unchanged. Each server ends once its domain is gone.
#[test]
fn xl_create_serves_file_disks_to_hvm_guests() {
    use ferrite_tools::guestasm;
    const SECTOR: usize = 512;
    const CHECK_SECTORS: usize = 256;
    const WRITE_LBA: usize = 300;
    let name = "xl_create_serves_file_disks_to_hvm_guests";
    let dir = test_dir(name);
    ferrite_qemu_tests::ferrite_exe();
    let mbr = guestasm::assemble_boot_sector(&guestasm::guests_dir().join("bootsector/mbr_disk_check.S"), &dir.join("mbr.bin"))
        .unwrap_or_else(|e| panic!("cannot assemble the boot sector: {e:#}"));
    let disk = guestasm::mbr_test_disk(&mbr, 2048);
    std::fs::write(dir.join("hvm.img"), &disk).unwrap();
    std::fs::write(dir.join("ro.img"), &disk).unwrap();
    let sum = disk[SECTOR..(CHECK_SECTORS + 1) * SECTOR].iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    let config = |domain: &str, disk: &str| {
        let path = dir.join(format!("{domain}.cfg"));
        std::fs::write(&path, format!("name = \"{domain}\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\ndisk = [ '{disk}' ]\n")).unwrap();
        path.display().to_string()
    };
    let served_port = |err: &str| -> u16 {
        let ports: Vec<u16> = err.lines().filter_map(|l| l.split("over NBD (port ").nth(1)?.split(';').next()?.parse().ok()).collect();
        assert_eq!(ports.len(), 1, "xl create should say which port serves the disk:\n{err}");
        ports[0]
    };
    let (mut vm, target) = boot_for_hvm_guests(name, &dir);
    let wait_gone = |vm: &mut Vm, port: u16| {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if start.elapsed() > Duration::from_secs(120) {
                vm.fail(&format!("the NBD server on port {port} is still running after its domain is gone"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Read-write, IDE: boots, reads, writes.
    let (out, err, ok) = xl(&target, &["create", &config("hvmfile", "file:hvm.img,hda,w")]);
    assert!(ok, "xl create: {err}\n{out}");
    let port = served_port(&err);
    vm.expect_lines(&[
        r"domain \d+ \(hvmfile\): disk hda is NBD export 10\.0\.2\.2:\d+/hda \(w\), IDE$",
        r"domain \d+ \(hvmfile\): HVM, 64 MiB, 1 vCPUs, .*1 disk\(s\); device model in domain \d+ \(hvmfile-dm\)$",
        r"^\(hvmfile-dm\) disk 0 \(hvm\.img\): IDE hda, 2048 sectors$",
        &format!(r"^\(hvmfile\) mbr: ok sectors={CHECK_SECTORS:08x} sum={sum:08x}$"),
        r"domain \d+ \(hvmfile\) powered off",
    ]);
    wait_gone(&mut vm, port);
    let after = std::fs::read(dir.join("hvm.img")).unwrap();
    let expected: Vec<u8> = (0..SECTOR).map(|i| (0x5a + i) as u8).collect();
    if after[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR] != expected[..] {
        vm.fail(&format!("sector {WRITE_LBA} of the host file is not what the guest wrote: {:02x?}...", &after[WRITE_LBA * SECTOR..WRITE_LBA * SECTOR + 16]));
    }
    let mut unchanged = disk.clone();
    unchanged[WRITE_LBA * SECTOR..(WRITE_LBA + 1) * SECTOR].copy_from_slice(&expected);
    if after != unchanged {
        vm.fail("the guest's image changed beyond the sector it wrote");
    }

    // Read-only, virtio-blk: boots and reads, its write is refused.
    let (out, err, ok) = xl(&target, &["create", &config("hvmro", "file:ro.img,xvda,r,specification=virtio")]);
    assert!(ok, "xl create: {err}\n{out}");
    let port = served_port(&err);
    vm.expect_lines(&[
        r"domain \d+ \(hvmro\): disk xvda is NBD export 10\.0\.2\.2:\d+/xvda \(r\), virtio-blk on PCI$",
        r"^\(hvmro-dm\) disk 0 \(ro\.img\): virtio-blk xvda at PCI 00:03\.0, 2048 sectors, read-only$",
        // Its reads passed (the FAIL is no r or d), its write failed.
        &format!(r"^\(hvmro\) mbr: FAIL w {:08x}$", CHECK_SECTORS + 1),
        r"domain \d+ \(hvmro\) powered off",
    ]);
    wait_gone(&mut vm, port);
    if std::fs::read(dir.join("ro.img")).unwrap() != disk {
        vm.fail("the read-only image changed");
    }
    if vm.console_text().contains("(hvmro) mbr: ok") {
        vm.fail("the MBR reported success on the read-only disk");
    }
    finish(vm, &target);
}

/// An HVM guest's `nbd:` disk whose server dies at the first request (it
/// closes the connection when the request's magic arrives, unanswered):
/// the hypervisor fails the request and every later one, the stub's
/// BLOCK_IO returns EIO instead of hanging, and SeaBIOS reports that it
/// could not read the boot disk; the guest is then destroyed as usual.
#[test]
fn a_dead_nbd_server_gives_an_hvm_guest_io_errors() {
    use ferrite_tools::nbd_server::{serve_stream, Image};
    /// The server's side of the stream, until an NBD request begins.
    struct UntilFirstRequest(std::net::TcpStream, [u8; 4]);
    impl Read for UntilFirstRequest {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // A byte at a time: the handshake is short, and the request's
            // magic must be seen before the server reads past it.
            // NBD_REQUEST_MAGIC, as every request starts.
            if self.1 == [0x25, 0x60, 0x95, 0x13] || buf.is_empty() {
                return Ok(0);
            }
            let n = self.0.read(&mut buf[..1])?;
            if n == 1 {
                self.1 = [self.1[1], self.1[2], self.1[3], buf[0]];
            }
            Ok(n)
        }
    }
    let name = "a_dead_nbd_server_gives_an_hvm_guest_io_errors";
    let dir = test_dir(name);
    let image_path = dir.join("dead.img");
    std::fs::write(&image_path, vec![0u8; 1 << 20]).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let image = Image::open(&image_path, false).unwrap();
        let writer = stream.try_clone().unwrap();
        // Ends with an error or at the "end" of the stream; the socket
        // closes when this returns.
        let _ = serve_stream(UntilFirstRequest(stream, [0; 4]), writer, &image, "hda");
    });
    let (mut vm, target) = boot_for_hvm_guests(name, &dir);
    let cfg = dir.join("hvmdead.cfg");
    std::fs::write(&cfg, format!("name = \"hvmdead\"\ntype = \"hvm\"\nmemory = 64\nvcpus = 1\ndisk = [ 'nbd:10.0.2.2:{port}/hda,hda,w' ]\n")).unwrap();
    let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
    assert!(ok, "xl create: {err}\n{out}");
    vm.expect_lines(&[
        r"domain \d+ \(hvmdead\): disk hda is NBD export 10\.0\.2\.2:\d+/hda \(w\), IDE$",
        r"nbd 10\.0\.2\.2:\d+/hda: the server closed the connection; its requests fail from now on",
        r"^\(hvmdead\) Boot failed: could not read the boot disk",
    ]);
    server.join().unwrap();
    destroy_and_wait(&mut vm, &target, "hvmdead");
    refuse_panics_and_crashes(&mut vm);
    finish(vm, &target);
}

/// Debian's Linux as an HVM guest whose IDE disk is a `file:` image that
/// `ferrite xl create` serves from the host: `ata_piix` reads 64 MiB by
/// bus-master DMA (each request an NBD request of the stub's BLOCK_IO)
/// whose hash matches the host's, writes a marker, reboots (Ferrite
/// rebuilds the guest and its stub on the same NBD connection) and finds
/// it again; the marker is in the host file afterwards, and the server
/// ends once the domain is gone.
#[test]
fn hvm_linux_hashes_and_writes_a_file_disk_served_by_xl_create() {
    use ferrite_tools::{guest_images, initramfs};
    const CHECK_MIB: usize = 64;
    const DISK_MIB: usize = 72;
    const MARKER_LBA: usize = (CHECK_MIB + 4) * 2048;
    let name = "hvm_linux_hashes_and_writes_a_file_disk_served_by_xl_create";
    let dir = test_dir(name);
    if !ferrite_qemu_tests::debian_packages(name, &["linux-image-cloud-amd64", "busybox-static"]) {
        return;
    }
    ferrite_qemu_tests::ferrite_exe();
    let root = guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinuz = guest_images::find_vmlinuz(&root).unwrap_or_else(|e| panic!("[{name}] {e}"));
    std::fs::copy(&vmlinuz, dir.join("vmlinuz")).unwrap();
    let modules = initramfs::kernel_modules(&root, &["ata_piix", "sd_mod"]).unwrap_or_else(|e| panic!("[{name}] {e}"));
    let image = initramfs::busybox_initramfs_with_modules(initramfs::HVM_DISK_INIT_SCRIPT, &modules)
        .unwrap_or_else(|e| panic!("[{name}] cannot build the initramfs: {e}"));
    std::fs::write(dir.join("initramfs-hvm.cpio"), &image).unwrap();
    let mut disk = ferrite_qemu_tests::pseudo_random_bytes(0x5eed, DISK_MIB << 20);
    disk[MARKER_LBA * 512..(MARKER_LBA + 1) * 512].fill(0);
    let host_sum: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&disk[..CHECK_MIB << 20]).iter().map(|b| format!("{b:02x}")).collect()
    };
    let disk_path = dir.join("disk.img");
    std::fs::write(&disk_path, &disk).unwrap();
    drop(disk);
    let marker = format!("{:08x}", std::process::id());
    let cfg = dir.join("hvmlinux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"hvmlinux\"\ntype = \"hvm\"\nmemory = 128\nvcpus = 1\nkernel = \"vmlinuz\"\nramdisk = \"initramfs-hvm.cpio\"\n\
             cmdline = \"console=ttyS0 loglevel=4 ferrite.check_mib={CHECK_MIB} ferrite.marker={marker} ferrite.marker_lba={MARKER_LBA} ferrite.disk=sda\"\n\
             disk = [ 'file:disk.img,hda,w' ]\non_reboot = \"restart\"\non_crash = \"destroy\"\n"
        ),
    )
    .unwrap();
    let modules = vec![
        pvh_config_module(&dir, "keeper", "idle", 16),
        guest_module("idle", &dir),
        ferrite_tools::modules::ModuleSpec::new(std::path::PathBuf::from(&images().stubdom), ""),
        ferrite_tools::modules::ModuleSpec::new(ferrite_qemu_tests::seabios_image(), ""),
        ferrite_tools::modules::ModuleSpec::new(ferrite_qemu_tests::linuxboot_rom(), ""),
    ];
    // 128 MiB: the machine's 512 MiB must hold the guest twice while it
    // restarts (the new one is built before the old one's memory goes).
    let (mut vm, target) = boot_with_link_for(name, &dir, modules, ferrite_qemu_tests::linux_vm_timeout() * 2);
    vm.wait_for(r"^\(keeper\) idle ready$", Duration::from_secs(120));
    let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
    assert!(ok, "xl create: {err}\n{out}");
    let port: u16 = err
        .lines()
        .find_map(|l| l.split("over NBD (port ").nth(1)?.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("xl create should say which port serves the disk:\n{err}"));
    let sha = format!(r"^\(hvmlinux\) FERRITE-DISK-SHA256 {host_sum}$");
    vm.expect_lines(&[
        r"domain \d+ \(hvmlinux\): disk hda is NBD export 10\.0\.2\.2:\d+/hda \(w\), IDE$",
        r"domain \d+ \(hvmlinux\): HVM, 128 MiB",
        r"^\(hvmlinux\) .*FERRITE-INIT cpus=1 ",
        r"^\(hvmlinux\) FERRITE-ATA configured for XFER_UDMA_\d+$",
        &sha,
        r"^\(hvmlinux\) FERRITE-MARKER written$",
        r"domain \d+ \(hvmlinux\) rebooting",
        r"domain \d+ \(hvmlinux\) restarted as domain \d+",
        r"^\(hvmlinux\) .*FERRITE-INIT cpus=1 ",
        &sha,
        r"^\(hvmlinux\) FERRITE-MARKER found$",
        r"domain \d+ \(hvmlinux\) powered off",
    ]);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        if start.elapsed() > Duration::from_secs(120) {
            vm.fail(&format!("the NBD server on port {port} is still running after its domain is gone"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = std::fs::read(&disk_path).unwrap();
    if !after[MARKER_LBA * 512..].starts_with(format!("FERRITE-MARKER-{marker}").as_bytes()) {
        vm.fail("the marker the guest wrote is not in the host file");
    }
    finish(vm, &target);
}

/// Destroys `name` (if it is being rebuilt just then, once rebuilt) and
/// waits until it is no longer listed.
fn destroy_and_wait(vm: &mut Vm, target: &Target, name: &str) {
    let (_, err, ok) = xl(target, &["destroy", name]);
    assert!(ok, "xl destroy {name}: {err}");
    vm.expect_lines(&[&format!(r"domain \d+ \({name}\) (destroyed|restarted as domain \d+, which was destroyed meanwhile)")]);
    let start = Instant::now();
    while xl(target, &["list"]).0.contains(&format!("{name} ")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the destroyed domain {name} is still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A guest that resets itself as soon as it starts, with
/// `on_reboot='restart'` (`guests/reboot_loop.S`): Ferrite rebuilds it 50
/// times while a ticker keeps running, and once it is destroyed the host
/// has exactly the memory it had before it was created.
#[test]
fn a_reboot_loop_leaks_nothing_and_stalls_no_one() {
    const RESTARTS: usize = 50;
    let name = "a_reboot_loop_leaks_nothing_and_stalls_no_one";
    let dir = test_dir(name);
    let modules = vec![
        pvh_config_module(&dir, "keeper", "idle", 16),
        pvh_config_module(&dir, "ticker", "ticker_long", 16),
        guest_module("idle", &dir),
        guest_module("ticker_long", &dir),
        guest_module("reboot_loop", &dir),
    ];
    let (mut vm, target) = boot_with_link(name, &dir, modules);
    vm.wait_for(r"^\(keeper\) idle ready$", Duration::from_secs(120));
    let cfg = dir.join("loop.cfg");
    std::fs::write(&cfg, "name = \"loop\"\ntype = \"pvh\"\nkernel = \"reboot_loop.elf\"\nmemory = 16\non_reboot = \"restart\"\n").unwrap();
    // Warm up once: the first domains size the hypervisor's tables for good.
    let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
    assert!(ok, "xl create: {err}\n{out}");
    vm.expect_lines(&[r"domain \d+ \(loop\) restarted as domain \d+"]);
    destroy_and_wait(&mut vm, &target, "loop");
    let before = host_memory(&target);

    let (out, err, ok) = xl(&target, &["create", &cfg.display().to_string()]);
    assert!(ok, "xl create: {err}\n{out}");
    // Each restart its own line, in order.
    vm.expect_lines(&[r"domain \d+ \(loop\) restarted as domain \d+"; RESTARTS]);
    // The ticker (100 ticks, 100 ms apart) ticks on through the loop.
    vm.expect_lines(&[r"^\(ticker\) tick \d+$"]);
    // The host still answers, and the looping domain is there to destroy.
    destroy_and_wait(&mut vm, &target, "loop");
    let after = host_memory(&target);
    if after != before {
        vm.fail(&format!("host memory changed over {RESTARTS} restarts: free {} -> {} bytes, heap used {} -> {} bytes", before.0, after.0, before.1, after.1));
    }
    vm.expect_lines(&[r"^\(ticker\) ticker done$", r"domain \d+ \(ticker\) powered off"]);
    refuse_panics_and_crashes(&mut vm);
    finish(vm, &target);
}

/// `ferrite xl` inside a Linux dom0 reaches the hypervisor over vsock,
/// with no network at all (Ferrite has no NIC here): dom0 gets a
/// virtio-vsock device in its DSDT, Linux's `vmw_vsock_virtio_transport`
/// drives it, and the static `ferrite` command in dom0's initramfs logs in
/// with the key, lists the domains, creates one from a config and kernel
/// in dom0's files (uploaded over vsock) and sees it listed and running.
#[test]
fn xl_in_dom0_reaches_the_hypervisor_over_vsock() {
    let name = "xl_in_dom0_reaches_the_hypervisor_over_vsock";
    let dir = test_dir(name);
    if !ferrite_qemu_tests::debian_packages(name, &["linux-image-cloud-amd64", "busybox-static"]) {
        return;
    }
    let guest = std::fs::read(guest_module("console_button", &dir).path).unwrap();
    let cfg = "name = \"made\"\ntype = \"pvh\"\nkernel = \"console_button.elf\"\nmemory = 16\n";
    let files: [(&str, u32, &[u8]); 2] = [("made.cfg", 0o644, cfg.as_bytes()), ("console_button.elf", 0o644, &guest)];
    let mut vm = boot_xl_dom0(name, &dir, ferrite_tools::initramfs::DOM0_XL_INIT_SCRIPT, &files, "dom0_mem=256M");
    vm.expect_lines(&[
        r"^\(dom0\) FERRITE-XL-BEGIN$",
        r"^\(dom0\) Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)",
        r"^\(dom0\) dom0\s+0\s+256\s+2\s",
        r"^\(dom0\) nr_cpus\s+: 2$",
        r"^\(dom0\) FERRITE-XL-END",
        r"^\(dom0\) FERRITE-XL-CREATE 0$",
        r"^\(dom0\) made\s+\d+\s+16\s+1\s",
        r"domain 0 \(dom0\) powered off",
    ]);
    if !vm.console_text().contains("(made) console_button ready") {
        vm.fail("the domain created from dom0 did not start");
    }
}

/// `/init` of the dom0 in `xl_create_in_dom0_serves_file_disks_over_vsock`:
/// creates `dfile` from `/etc/ferrite/dfile.cfg`, waits until it is gone,
/// prints the SHA-256 of the image's second 2 MiB (where the domain
/// copied its first 2 MiB) and whether the disks' servers have ended;
/// runs a server whose hello has the all-zero token; creates `dkill`
/// (the same disks, reading until an error) and kills its `xvda` server
/// at once; waits until `dkill` is gone and its other server with it.
/// Meanwhile a stray server, started first, whose token no create
/// carries, waits to be closed.
const DOM0_FILE_DISK_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "FERRITE-MODULE-FAIL $m"
done
i=0
while [ ! -e /dev/vsock ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
cp /etc/ferrite/ro.img /tmp/stray.img
FERRITE_NBD_TOKEN=0123456789abcdef0123456789abcdef ferrite nbd-serve --vsock /tmp/stray.img >/dev/null 2>&1 &
stray=$!
ferrite xl create /etc/ferrite/dfile.cfg 2>&1
echo "FERRITE-XL-CREATE $?"
i=0
while ferrite xl list 2>/dev/null | grep -q '^dfile ' && [ "$i" -lt 900 ]; do sleep 1; i=$((i + 1)); done
sum=$(dd if=/etc/ferrite/data.img bs=1M skip=2 count=2 2>/dev/null | sha256sum)
echo "FERRITE-DOM0-WRITTEN ${sum%% *}"
i=0
while ps | grep -q '[n]bd-serve /etc' && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ps | grep -q '[n]bd-serve /etc'; then echo "FERRITE-DOM0-SERVERS running"; else echo "FERRITE-DOM0-SERVERS gone"; fi
FERRITE_NBD_TOKEN=00000000000000000000000000000000 ferrite nbd-serve --vsock --once /etc/ferrite/ro.img >/dev/null 2>&1
echo "FERRITE-DOM0-ZERO-TOKEN ended"
ferrite xl create /etc/ferrite/dfile.cfg 'name="dkill"' \
    'cmdline="console=ttyS0 loglevel=4 ferrite.vdisk_mode=until_error"' 2>&1
echo "FERRITE-XL-CREATE $?"
for p in $(pidof ferrite); do
    if grep -q data.img "/proc/$p/cmdline"; then echo "FERRITE-DOM0-KILLING xvda's server"; kill -9 "$p"; fi
done
i=0
while ferrite xl list 2>/dev/null | grep -q '^dkill ' && [ "$i" -lt 900 ]; do sleep 1; i=$((i + 1)); done
i=0
while ps | grep -q '[n]bd-serve /etc' && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ps | grep -q '[n]bd-serve /etc'; then echo "FERRITE-DOM0-SERVERS running"; else echo "FERRITE-DOM0-SERVERS gone"; fi
wait "$stray"
echo "FERRITE-DOM0-STRAY ended"
poweroff -f
"#;

/// `xl create` in a dom0 with no network of a config whose `file:` disks
/// are image files in dom0's initramfs: each is served by a background
/// `ferrite nbd-serve --vsock`, which connects to the hypervisor over
/// dom0's vsock and names its disk with the create's token; Debian's
/// Linux in the new domain finds them as virtio-blk disks, hashes both,
/// copies 2 MiB within the writable one (fsync) and sees the read-only
/// one refuse. dom0 then finds the copy in its file, and the servers
/// gone with the domain. A server that names no disk is closed (the
/// all-zero token at once, a token no create carries after 30 s, while
/// the others attach past it); a second domain whose disk's server is
/// killed gets I/O errors, not a hang.
#[test]
fn xl_create_in_dom0_serves_file_disks_over_vsock() {
    let name = "xl_create_in_dom0_serves_file_disks_over_vsock";
    let dir = test_dir(name);
    let Some((kernel, initrd)) = ferrite_qemu_tests::pvh_disk_guest(name, &dir) else { return };
    let data = ferrite_qemu_tests::pseudo_random_bytes(0xd0f1, 4 << 20);
    let ro = ferrite_qemu_tests::pseudo_random_bytes(0xd0f2, 1 << 20);
    let cfg = "name = \"dfile\"\ntype = \"pvh\"\nmemory = 128\nvcpus = 1\nkernel = \"vmlinux\"\nramdisk = \"initramfs-vdisk.cpio\"\n\
               cmdline = \"console=ttyS0 loglevel=4 ferrite.check_mib=2 ferrite.copy_mib=2 ferrite.copy_to_mib=2\"\n\
               disk = [ 'file:data.img,xvda,w', 'file:ro.img,xvdb,r' ]\n";
    let guest_kernel = std::fs::read(&kernel).unwrap();
    let guest_initrd = std::fs::read(&initrd).unwrap();
    let files: [(&str, u32, &[u8]); 5] = [
        ("dfile.cfg", 0o644, cfg.as_bytes()),
        ("vmlinux", 0o644, &guest_kernel),
        ("initramfs-vdisk.cpio", 0o644, &guest_initrd),
        ("data.img", 0o644, &data),
        ("ro.img", 0o444, &ro),
    ];
    // No NIC: the hypervisor has no network, so only vsock can carry the
    // disks.
    let mut vm = boot_xl_dom0(name, &dir, DOM0_FILE_DISK_INIT, &files, "dom0_mem=320M dom0_max_vcpus=1");
    let sum = |bytes: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    vm.expect_lines(&[
        r"^\(dom0\) serving /etc/ferrite/data\.img as disk xvda over NBD \(vsock;",
        r"^\(dom0\) serving /etc/ferrite/ro\.img as disk xvdb over NBD \(vsock;",
        r"nbd vsock:dom0/xvd[ab]: dom0's server attached",
        r"nbd vsock:dom0/xvd[ab]: connected in \d+ ms",
        r"domain \d+ \(dfile\): disk xvda is NBD export vsock:dom0/xvda \(w\), virtio-blk",
        r"domain \d+ \(dfile\): disk xvdb is NBD export vsock:dom0/xvdb \(r\), virtio-blk",
        r"^\(dom0\) FERRITE-XL-CREATE 0$",
        &format!(r"^\(dfile\) FERRITE-VDISK-SHA256 vda {}$", sum(&data[..2 << 20])),
        &format!(r"^\(dfile\) FERRITE-VDISK-SHA256 vdb {}$", sum(&ro)),
        r"^\(dfile\) FERRITE-VDISK copied 2 MiB$",
        r"^\(dfile\) FERRITE-VDISK vdb refused a write$",
        r"domain \d+ \(dfile\) powered off",
        &format!(r"^\(dom0\) FERRITE-DOM0-WRITTEN {}$", sum(&data[..2 << 20])),
        r"^\(dom0\) FERRITE-DOM0-SERVERS gone$",
        r"nbd: dom0's vsock NBD connection: an attach hello with the all-zero token; closed",
        r"^\(dom0\) FERRITE-DOM0-ZERO-TOKEN ended$",
        r"domain \d+ \(dkill\): disk xvda is NBD export vsock:dom0/xvda \(w\), virtio-blk",
        r"^\(dom0\) FERRITE-XL-CREATE 0$",
        r"^\(dom0\) FERRITE-DOM0-KILLING xvda's server$",
        r"nbd vsock:dom0/xvda: the server closed the connection; its requests fail from now on",
        r"^\(dkill\) FERRITE-VDISK read failed after \d+ good reads$",
        r"domain \d+ \(dkill\) powered off",
        r"^\(dom0\) FERRITE-DOM0-SERVERS gone$",
        r"^\(dom0\) FERRITE-DOM0-STRAY ended$",
        r"domain 0 \(dom0\) powered off",
    ]);
    let text = vm.console_text();
    if !text.contains("nbd: a dom0 server named no disk waiting for it within 30 s; closed") {
        vm.fail("the stray server was not closed by its timeout");
    }
    for bad in ["panic", "FERRITE-MODULE-FAIL", "crashed"] {
        if text.contains(bad) {
            vm.fail(&format!("the console says {bad:?}"));
        }
    }
}

/// The `ferrite up` demo's dom0 (`initramfs::demo_dom0_initramfs`: the
/// test init's busybox shell, the static `ferrite` command, the vsock and
/// power-button modules, the key in `/etc/ferrite/xl.key`), with the NIC
/// `up` gives Ferrite: typed into dom0's shell, `ferrite xl list` and
/// `ferrite xl create` work over vsock; from the host, `xl shutdown -w`
/// stops the created domain, and `xl shutdown 0` presses dom0's power
/// button, which its init answers by powering off, and the machine with it.
#[test]
fn the_up_demo_dom0_runs_xl_in_its_shell() {
    let name = "the_up_demo_dom0_runs_xl_in_its_shell";
    let dir = test_dir(name);
    if !ferrite_qemu_tests::debian_packages(name, &["linux-image-cloud-amd64", "busybox-static"]) {
        return;
    }
    let root = ferrite_tools::guest_images::fetch_debian_package("linux-image-cloud-amd64").unwrap();
    let vmlinux = ferrite_tools::guest_images::debian_vmlinux("cloud-amd64").unwrap();
    let exe = std::fs::read(ferrite_qemu_tests::ferrite_static_exe()).expect("the static ferrite command");
    let link = link::prepare(&dir, None).expect("management link");
    let session = xl::read_session_file(&link.session_file).expect("session file");
    let guest = std::fs::read(guest_module("console_button", &dir).path).unwrap();
    let cfg = "name = \"made\"\ntype = \"pvh\"\nkernel = \"console_button.elf\"\nmemory = 16\n";
    let image = ferrite_tools::initramfs::demo_dom0_initramfs(
        &root,
        &exe,
        &session.secret.to_hex(),
        &[("made.cfg", cfg.as_bytes()), ("console_button.elf", &guest)],
    )
    .unwrap_or_else(|e| panic!("[{name}] {e}"));
    let initrd = dir.join("dom0-initramfs.cpio");
    std::fs::write(&initrd, image).unwrap();
    let q = base_qemu()
        .memory_mib(1024)
        .smp(2)
        .kernel(&images().multiboot)
        .append(&format!("{BASE_CMDLINE} dom0_mem=256M dom0_max_vcpus=1"))
        .module(ferrite_tools::modules::ModuleSpec::new(&vmlinux, ferrite_tools::initramfs::test_linux_cmdline("shell")))
        .module(ferrite_tools::modules::ModuleSpec::new(&initrd, ""))
        .module(link.key_module.clone())
        .extra_args(&link.qemu_args);
    let (mut vm, mut input) = Vm::start_interactive(name, &dir, q, ferrite_qemu_tests::linux_vm_timeout());
    vm.expect_lines(&[r"net: address 10\.0\.2\.15/24 by DHCP", r"^\(dom0\) FERRITE-SHELL", "built-in shell"]);
    let target = Target { host: session.host, port: session.port, secret: session.secret, key_source: "test".into() };
    let mut typed = |vm: &mut Vm, text: &str| {
        if let Err(e) = input.type_slowly(text, Duration::from_millis(20)) {
            vm.fail(&format!("cannot write {text:?} to QEMU's stdin: {e}"));
        }
    };
    // Each command ends with a marker only the shell's output has (its echo
    // of the typed line shows `$((...))`).
    typed(&mut vm, "ferrite xl list; echo XL-$((1000 + 1))-END\n");
    vm.expect_lines(&[r"^\(dom0\) Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)", r"^\(dom0\) dom0\s+0\s+256\s+1\s", r"^\(dom0\) XL-1001-END"]);
    typed(&mut vm, "ferrite xl create /etc/ferrite/made.cfg; echo XL-$((1000 + 2))-END $?\n");
    // Not anchored: a line may start after dom0's prompt, which has no
    // newline.
    vm.expect_lines(&[r"\(made\) console_button ready$"]);
    let (out, err, ok) = xl(&target, &["list", "made"]);
    assert!(ok && out.lines().any(|l| l.starts_with("made ")), "xl list from the host: {err}\n{out}");
    let (_, err, ok) = xl(&target, &["shutdown", "-w", "made"]);
    assert!(ok, "xl shutdown -w made: {err}");
    vm.expect_lines(&[r"\(made\) power button pressed$", r"domain \d+ \(made\) powered off"]);
    let (_, err, ok) = xl(&target, &["shutdown", "0"]);
    assert!(ok, "xl shutdown 0: {err}");
    vm.expect_lines(&[
        r"FERRITE-POWER-BUTTON: powering off",
        r"domain 0 \(dom0\) powered off",
        r"host: dom0 powered off; powering off the machine",
    ]);
    let text = vm.console_text();
    if text.contains("FERRITE-MODULE-FAIL") {
        vm.fail("a module in the demo dom0's initramfs did not load");
    }
    vm.expect_success();
}
