//! `ferrite xl` tests: argument parsing, output formats, the session file,
//! and the commands end to end against the loopback fake service.

use super::fake_service::{start_truncating_peer, FakeService};
use super::target::{self, ConnectOpts};
use super::*;
use ferrite_mgmt::{DomainState, HostInfo, Secret, UptimeInfo, VcpuInfo, VcpuState, DEFAULT_PORT};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn cmd(list: &[&str]) -> Result<XlCmd> {
    parse_args(&args(list)).map(|a| a.cmd)
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrite-xl-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const KEY: [u8; 32] = [0x42; 32];

fn target_for(addr: std::net::SocketAddr, key: [u8; 32]) -> Target {
    Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        secret: Secret::from_bytes(key),
        key_source: "test key".into(),
    }
}

/// Runs a command against `target`; returns (result, stdout, stderr).
fn run_with(target: &Target, c: XlCmd, input: &[u8], shutdown_timeout: Duration) -> (Result<()>, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        input: Some(Box::new(std::io::Cursor::new(input.to_vec()))),
        input_is_terminal: false,
        err_is_terminal: false,
        shutdown_timeout,
        poll_interval: Duration::from_millis(20),
    };
    let r = run(c, target, &mut io);
    (r, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

fn run_ok(target: &Target, c: XlCmd) -> String {
    let (r, out, err) = run_with(target, c, b"", Duration::from_secs(5));
    r.unwrap_or_else(|e| panic!("{e:#}\nstderr: {err}"));
    out
}

fn run_err(target: &Target, c: XlCmd) -> String {
    let (r, _, _) = run_with(target, c, b"", Duration::from_secs(5));
    let e = format!("{:#}", r.unwrap_err());
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn parses_xl_arguments() {
    let a = parse_args(&args(&["--host", "10.0.0.1", "--port=7071", "--key-file", "k", "list", "-l"])).unwrap();
    assert_eq!(a.connect, ConnectOpts { host: Some("10.0.0.1".into()), port: Some(7071), key_file: Some("k".into()) });
    assert_eq!(a.cmd, XlCmd::List { long: true, dom: None });
    assert_eq!(cmd(&[]).unwrap(), XlCmd::Help);
    assert_eq!(cmd(&["help"]).unwrap(), XlCmd::Help);
    assert_eq!(cmd(&["list", "web"]).unwrap(), XlCmd::List { long: false, dom: Some(DomRef::Name("web".into())) });
    assert_eq!(cmd(&["destroy", "3"]).unwrap(), XlCmd::Destroy(DomRef::Id(3)));
    assert_eq!(cmd(&["dmesg", "--clear"]).unwrap(), XlCmd::Dmesg { clear: true });
    assert_eq!(cmd(&["shutdown", "-wa"]).unwrap(), XlCmd::Shutdown { wait: true, all: true, dom: None });
    assert_eq!(
        cmd(&["shutdown", "-w", "web"]).unwrap(),
        XlCmd::Shutdown { wait: true, all: false, dom: Some(DomRef::Name("web".into())) }
    );
    assert_eq!(
        cmd(&["vcpu-pin", "web", "all", "0-1,3"]).unwrap(),
        XlCmd::VcpuPin { dom: DomRef::Name("web".into()), vcpu: None, pcpus: 0b1011 }
    );
    assert_eq!(
        cmd(&["vcpu-pin", "1", "0", "2", "-"]).unwrap(),
        XlCmd::VcpuPin { dom: DomRef::Id(1), vcpu: Some(0), pcpus: 4 }
    );
    assert_eq!(
        cmd(&["create", "-c", "g.cfg", "memory=64", "name='x'"]).unwrap(),
        XlCmd::Create { console: true, config: "g.cfg".into(), overrides: args(&["memory=64", "name='x'"]) }
    );
    assert_eq!(
        cmd(&["vcpu-list", "a", "b"]).unwrap(),
        XlCmd::VcpuList(vec![DomRef::Name("a".into()), DomRef::Name("b".into())])
    );
    assert_eq!(cmd(&["network-list", "web", "3"]).unwrap(), XlCmd::NetworkList(vec![DomRef::Name("web".into()), DomRef::Id(3)]));
    assert!(cmd(&["network-list"]).is_err());
    assert_eq!(cmd(&["reboot", "-F", "web"]).unwrap(), XlCmd::Reboot { force: true, dom: DomRef::Name("web".into()) });
    assert_eq!(cmd(&["reboot", "2"]).unwrap(), XlCmd::Reboot { force: false, dom: DomRef::Id(2) });
    assert_eq!(
        cmd(&["trigger", "web", "nmi", "1"]).unwrap(),
        XlCmd::Trigger { dom: DomRef::Name("web".into()), trigger: Trigger::Nmi, vcpu: 1 }
    );
    assert_eq!(cmd(&["trigger", "3", "reset"]).unwrap(), XlCmd::Trigger { dom: DomRef::Id(3), trigger: Trigger::Reset, vcpu: 0 });
    for bad in [
        &["frob"][..],
        &["reboot"],
        &["trigger", "web"],
        &["trigger", "web", "sleep"],
        &["trigger", "web", "nmi", "x"],
        &["destroy"],
        &["destroy", "a", "b"],
        &["list", "-x"],
        &["shutdown"],
        &["shutdown", "-a", "web"],
        &["vcpu-pin", "web", "x", "1"],
        &["vcpu-pin", "web", "0", "64"],
        &["vcpu-pin", "web", "0", "1", "2"],
        &["create"],
        &["create", "g.cfg", "memory"],
        &["--port", "99999", "list"],
        &["--bogus", "1", "list"],
    ] {
        assert!(cmd(bad).is_err(), "{bad:?} accepted");
    }
}

fn sample_domains() -> Vec<DomainInfo> {
    vec![
        DomainInfo {
            name: "Domain-0".into(),
            id: 0,
            mem_mib: 256,
            vcpus: 2,
            state: DomainState(DomainState::RUNNING),
            cpu_time_ns: 12_340_000_000,
        },
        DomainInfo {
            name: "hvmdemo".into(),
            id: 12,
            mem_mib: 64,
            vcpus: 1,
            state: DomainState(DomainState::BLOCKED),
            cpu_time_ns: 50_000_000,
        },
    ]
}

#[test]
fn formats_list_like_xl() {
    assert_eq!(
        format::list(&sample_domains()),
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
         Domain-0                                     0   256     2     r-----      12.3\n\
         hvmdemo                                     12    64     1     -b----       0.1\n"
    );
    let json = format::list_long(&sample_domains()[..1]);
    assert_eq!(
        json,
        "[\n    {\n        \"domid\": 0,\n        \"name\": \"Domain-0\",\n        \"memory_mib\": 256,\n        \
         \"vcpus\": 2,\n        \"state\": \"r-----\",\n        \"cpu_time\": 12.3\n    }\n]\n"
    );
}

#[test]
fn formats_info_and_uptime_like_xl() {
    let host = HostInfo {
        version: "Ferrite 0.1.0".into(),
        host_cpus: 2,
        total_mib: 1024,
        free_mib: 700,
            free_bytes: 0,
            heap_used_bytes: 0,
        uptime_ns: 93_784_000_000_000,
        capabilities: vec!["hvm-x86_64".into(), "pvh-x86_64".into()],
        cmdline: "console=com1".into(),
    };
    let text = format::info("127.0.0.1", &host, None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "host                   : 127.0.0.1");
    assert!(lines.contains(&"release                : 0.1.0"));
    assert!(lines.contains(&"nr_cpus                : 2"));
    assert!(lines.contains(&"total_memory           : 1024"));
    assert!(lines.contains(&"free_memory            : 700"));
    assert!(lines.contains(&"xen_caps               : hvm-x86_64 pvh-x86_64"));
    assert!(lines.contains(&"uptime                 : 1 day,  2:03:04"));
    assert_eq!(format::info("h", &host, Some("free_mem")), "700\n");
    assert_eq!(format::uptime_string(59_000_000_000), " 0:00:59");
    assert_eq!(format::uptime_string(3 * 86_400_000_000_000 + 36_000_000_000_000), "3 days, 10:00:00");
    let up = format::uptime(&[UptimeInfo { name: "web".into(), id: 3, uptime_ns: 3_661_000_000_000 }]);
    assert_eq!(up, "Name                                ID Uptime\nweb                                  3  1:01:01\n");
}

#[test]
fn formats_vcpu_list_like_xl() {
    let v = |vcpu, pcpu, state, affinity| VcpuInfo {
        dom_name: "Domain-0".into(),
        dom_id: 0,
        vcpu,
        pcpu,
        state: VcpuState(state),
        time_ns: 271_100_000_000,
        affinity,
    };
    let text =
        format::vcpu_list(&[v(0, Some(1), VcpuState::BLOCKED, u64::MAX), v(1, None, VcpuState::PAUSED, 0b11)], 4);
    assert_eq!(
        text,
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n\
         Domain-0                             0     0    1   -b-     271.1  all / all\n\
         Domain-0                             0     1    -   --p     271.1  0-1 / all\n"
    );
}

#[test]
fn cpu_maps_and_lists() {
    assert_eq!(format::cpumap(0b1111, 4), "all");
    assert_eq!(format::cpumap(u64::MAX, 64), "all");
    assert_eq!(format::cpumap(0, 4), "none");
    assert_eq!(format::cpumap(0b1011_0111, 8), "0-2,4-5,7");
    assert_eq!(format::cpumap(1 << 63, 64), "63");
    assert_eq!(format::parse_cpus("0-1,3").unwrap(), 0b1011);
    assert_eq!(format::parse_cpus("all").unwrap(), u64::MAX);
    assert_eq!(format::parse_cpus("^1").unwrap(), !0b10);
    assert_eq!(format::parse_cpus("63").unwrap(), 1 << 63);
    for bad in ["64", "", "3-1", "x", "0-70", "node:0"] {
        assert!(format::parse_cpus(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn session_file_round_trip_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("session");
    let path = dir.join("sub").join("xl-session");
    let secret = target::generate_secret().unwrap();
    write_session_file(&path, "127.0.0.1", 7071, &secret).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let s = read_session_file(&path).unwrap();
    assert_eq!((s.host.as_str(), s.port, s.secret.as_bytes()), ("127.0.0.1", 7071, secret.as_bytes()));
    // Rewriting replaces it, still private.
    write_session_file(&path, "::1", 7, &Secret::from_bytes(KEY)).unwrap();
    assert_eq!(read_session_file(&path).unwrap().port, 7);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::write(&path, "host=h\nport=1\nkey=abc\n").unwrap();
    let e = read_session_file(&path).unwrap_err().to_string();
    assert!(e.contains(":3: key: a key is 64 hex digits") && !e.contains("abc"), "{e}");
    std::fs::write(&path, "# comment\nhost=h\nfuture=1\n").unwrap();
    assert!(read_session_file(&path).unwrap_err().to_string().contains("no port= line"));
    assert_ne!(target::generate_secret().unwrap().as_bytes(), secret.as_bytes());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn target_comes_from_flags_env_session_then_system_key() {
    let dir = scratch("resolve");
    let session = dir.join("xl-session");
    let key_file = dir.join("key");
    let system = dir.join("system.key");
    std::fs::write(&key_file, format!("{}\n", Secret::from_bytes([1; 32]).to_hex())).unwrap();
    let no_env = |_: &str| None;
    // Nothing anywhere: a clear error.
    let e = target::resolve(&ConnectOpts::default(), &no_env, &session, &system, target::DEFAULT_HOST).unwrap_err().to_string();
    assert!(e.starts_with("no key to log in with"), "{e}");
    // The system key, on the default address.
    std::fs::write(&system, Secret::from_bytes([2; 32]).to_hex()).unwrap();
    let t = target::resolve(&ConnectOpts::default(), &no_env, &session, &system, target::DEFAULT_HOST).unwrap();
    assert_eq!((t.host.as_str(), t.port, t.secret.as_bytes()[0]), ("127.0.0.1", DEFAULT_PORT, 2));
    // The session file wins over it.
    write_session_file(&session, "10.1.1.1", 5555, &Secret::from_bytes([3; 32])).unwrap();
    let t = target::resolve(&ConnectOpts::default(), &no_env, &session, &system, target::DEFAULT_HOST).unwrap();
    assert_eq!((t.host.as_str(), t.port, t.secret.as_bytes()[0]), ("10.1.1.1", 5555, 3));
    // The environment over the session file.
    let key_path = key_file.display().to_string();
    let env = |k: &str| match k {
        target::ENV_HOST => Some("envhost".to_string()),
        target::ENV_PORT => Some("6000".to_string()),
        target::ENV_KEY_FILE => Some(key_path.clone()),
        _ => None,
    };
    let t = target::resolve(&ConnectOpts::default(), &env, &session, &system, target::DEFAULT_HOST).unwrap();
    assert_eq!((t.host.as_str(), t.port, t.secret.as_bytes()[0]), ("envhost", 6000, 1));
    // Flags over everything.
    std::fs::write(&system, Secret::from_bytes([4; 32]).to_hex()).unwrap();
    let flags = ConnectOpts { host: Some("flaghost".into()), port: Some(1), key_file: Some(system.clone()) };
    let t = target::resolve(&flags, &env, &session, &system, target::DEFAULT_HOST).unwrap();
    assert_eq!((t.host.as_str(), t.port, t.secret.as_bytes()[0]), ("flaghost", 1, 4));
    let bad_port = |k: &str| (k == target::ENV_PORT).then(|| "http".to_string());
    assert!(target::resolve(&ConnectOpts::default(), &bad_port, &session, &system, target::DEFAULT_HOST).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn commands_against_the_fake_service() {
    let fake = FakeService::start(Secret::from_bytes(KEY));
    let t = target_for(fake.addr, KEY);
    let out = run_ok(&t, XlCmd::List { long: false, dom: None });
    assert!(out.starts_with("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"), "{out}");
    assert!(
        out.contains("\nweb                                          1   128     1     -b----       1.5\n"),
        "{out}"
    );
    assert_eq!(run_ok(&t, XlCmd::List { long: false, dom: Some(DomRef::Id(2)) }).lines().count(), 2);
    let info = run_ok(&t, XlCmd::Info { field: None });
    assert!(
        info.contains("nr_cpus                : 4\n") && info.contains("uptime                 :  1:02:03\n"),
        "{info}"
    );
    assert!(run_ok(&t, XlCmd::Uptime { doms: vec![DomRef::Name("web".into())] }).contains("web"));
    assert_eq!(run_ok(&t, XlCmd::Dmesg { clear: true }), "(ferrite) boot complete\n");
    assert_eq!(run_ok(&t, XlCmd::Dmesg { clear: false }), "");
    let vcpus = run_ok(&t, XlCmd::VcpuList(vec![]));
    assert!(
        vcpus.ends_with("web                                  1     0    2   -b-       1.5  1-2 / all\n"),
        "{vcpus}"
    );
    let nics = run_ok(&t, XlCmd::NetworkList(vec![DomRef::Name("web".into()), DomRef::Id(2)]));
    assert_eq!(
        nics,
        "Name             Idx Mac Addr.          Bridge      Model       Link    TX pkts     TX bytes   RX pkts     RX bytes    TX drop  RX drop\n\
         web              0   00:16:3e:0d:bf:37  bridge0     virtio-net  up         1017        67792     46803     70198534      9(9s)        0\n"
    );
    assert_eq!(run_err(&t, XlCmd::NetworkList(vec![DomRef::Name("nope".into())])), "no such domain: domain 'nope' does not exist");
    run_ok(&t, XlCmd::VcpuPin { dom: DomRef::Name("web".into()), vcpu: Some(0), pcpus: 1 });
    run_ok(&t, XlCmd::Pause(DomRef::Id(1)));
    run_ok(&t, XlCmd::Destroy(DomRef::Name("db".into())));
    assert!(!run_ok(&t, XlCmd::List { long: false, dom: None }).contains("db"));
    assert_eq!(
        run_err(&t, XlCmd::Destroy(DomRef::Name("nope".into()))),
        "no such domain: domain 'nope' does not exist"
    );
    assert_eq!(run_err(&t, XlCmd::List { long: false, dom: Some(DomRef::Id(9)) }), "domain '9' does not exist");
    let st = fake.state.lock().unwrap();
    assert!(st.requests.contains(&Request::VcpuPin { dom: DomRef::Name("web".into()), vcpu: Some(0), pcpus: 1 }));
}

#[test]
fn login_failures_are_one_clear_line() {
    let fake = FakeService::start_frozen(Secret::from_bytes(KEY));
    let e = run_err(&target_for(fake.addr, [0x43; 32]), XlCmd::List { long: false, dom: None });
    assert!(
        e.starts_with(&format!("the Ferrite management service at {} refused the key from test key", fake.addr)),
        "{e}"
    );
    // Right after a failure the service makes everyone wait.
    let e = run_err(&target_for(fake.addr, KEY), XlCmd::List { long: false, dom: None });
    assert!(e.contains("refused the login: too many failed logins"), "{e}");
    // A peer that cuts its answer short.
    let e = run_err(&target_for(start_truncating_peer(), KEY), XlCmd::Info { field: None });
    assert!(e.ends_with("closed the connection in the middle of a message"), "{e}");
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = run_err(&Target { port, ..target_for(fake.addr, KEY) }, XlCmd::Info { field: None });
    assert!(e.starts_with(&format!("cannot reach the Ferrite management service at 127.0.0.1:{port}: ")), "{e}");
    assert!(e.ends_with("; is Ferrite running (ferrite up) and the port forwarded?"), "{e}");
}

#[test]
fn shutdown_waits_until_the_domain_is_gone() {
    let fake = FakeService::start(Secret::from_bytes(KEY));
    let t = target_for(fake.addr, KEY);
    let (r, _, err) = run_with(
        &t,
        XlCmd::Shutdown { wait: true, all: false, dom: Some(DomRef::Name("web".into())) },
        b"",
        Duration::from_secs(5),
    );
    r.unwrap();
    assert_eq!(err, "Shutting down domain 1\nWaiting for 1 domains\nDomain 1 has been shut down\n");
    // -a: every domain but dom0; one of them never goes.
    fake.state.lock().unwrap().stubborn.push(2);
    let (r, _, _) = run_with(&t, XlCmd::Shutdown { wait: true, all: true, dom: None }, b"", Duration::from_secs(1));
    assert_eq!(format!("{:#}", r.unwrap_err()), "domain db did not shut down within 1 s; it is still running");
    let st = fake.state.lock().unwrap();
    assert!(!st.requests.contains(&Request::Shutdown { dom: DomRef::Id(0) }));
}

#[test]
fn create_checks_then_uploads() {
    let fake = FakeService::start(Secret::from_bytes(KEY));
    let t = target_for(fake.addr, KEY);
    let dir = scratch("create");
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(dir.join("boot/vmlinuz"), &kernel).unwrap();
    std::fs::write(dir.join("initrd"), b"tiny").unwrap();
    let cfg = dir.join("guest.cfg");
    std::fs::write(&cfg, "name = 'guest'\ntype = 'pvh'\nmemory = 64\nkernel = 'boot/vmlinuz'\nramdisk = 'initrd'")
        .unwrap();
    let create = XlCmd::Create { console: false, config: cfg.clone(), overrides: args(&["memory = 96"]) };
    let (r, _, err) = run_with(&t, create, b"", Duration::from_secs(5));
    r.unwrap_or_else(|e| panic!("{e:#}\n{err}"));
    assert!(err.starts_with(&format!("Parsing config from {}\n", cfg.display())), "{err}");
    assert!(err.contains("sent boot/vmlinuz: 0.3 MiB\n") && err.contains("sent initrd: 0.0 MiB\n"), "{err}");
    {
        let st = fake.state.lock().unwrap();
        let (text, files) = st.created.last().unwrap();
        assert!(text.ends_with("ramdisk = 'initrd'\nmemory = 96\n"), "{text}");
        assert_eq!(files[0].0.name, "boot/vmlinuz");
        assert_eq!(files[0].1, kernel);
        assert_eq!(files[1].1, b"tiny");
        assert!(st.domains.iter().any(|d| d.name == "guest" && d.mem_mib == 96));
    }
    // Errors in the file are reported with file, line and key; nothing is sent.
    let before = fake.state.lock().unwrap().requests.len();
    std::fs::write(&cfg, "name = 'bad'\ntype = 'pvh'\nmemory = 'lots'\nkernel = 'boot/vmlinuz'\n").unwrap();
    let (r, _, err) = run_with(
        &t,
        XlCmd::Create { console: false, config: cfg.clone(), overrides: vec![] },
        b"",
        Duration::from_secs(5),
    );
    assert!(err.contains(&format!("{}:3: memory: ", cfg.display())), "{err}");
    assert!(format!("{:#}", r.unwrap_err()).contains("nothing was sent"));
    // A missing kernel is found before connecting, too.
    std::fs::write(&cfg, "name = 'k'\ntype = 'pvh'\nkernel = 'missing'\n").unwrap();
    let (r, _, _) =
        run_with(&t, XlCmd::Create { console: false, config: cfg, overrides: vec![] }, b"", Duration::from_secs(5));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("guest.cfg: kernel: cannot open ") && e.contains("missing"), "{e}");
    assert_eq!(fake.state.lock().unwrap().requests.len(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn console_forwards_both_ways_until_ctrl_bracket() {
    let fake = FakeService::start(Secret::from_bytes(KEY));
    let t = target_for(fake.addr, KEY);
    let (r, out, _) =
        run_with(&t, XlCmd::Console(DomRef::Name("web".into())), b"ls\r\x1dignored", Duration::from_secs(5));
    r.unwrap();
    assert_eq!(out, "welcome to web\r\nls\r");
    assert_eq!(fake.state.lock().unwrap().console_input, b"ls\r");
    // The service ends the console when the domain goes away.
    let (r, out, _) = run_with(&t, XlCmd::Console(DomRef::Name("db".into())), b"", Duration::from_secs(5));
    assert_eq!(out, "db going down\r\n");
    assert_eq!(format!("{:#}", r.unwrap_err()), "the console of db ended: no such domain: domain 'db' was destroyed");
    assert_eq!(
        run_err(&t, XlCmd::Console(DomRef::Id(7))),
        "cannot attach to the console of 7: no such domain: domain '7' does not exist"
    );
}

#[test]
fn run_captured_gives_output_errors_and_success() {
    let fake = FakeService::start(Secret::from_bytes(KEY));
    let t = target_for(fake.addr, KEY);
    let (out, err, ok) = run_captured(&t, &["list", "web"], None, Captured::default());
    assert!(ok && err.is_empty(), "{err}");
    assert!(out.contains("\nweb ") && !out.contains("db "), "{out}");
    let (_, err, ok) = run_captured(&t, &["destroy", "nope"], None, Captured::default());
    assert!(!ok && err.contains("'nope' does not exist"), "{err}");
    let (out, err, ok) = run_captured(&t, &["frobnicate"], None, Captured::default());
    assert!(!ok && out.is_empty() && err.contains("frobnicate"), "{err}");
}
