use super::*;
use alloc::string::ToString;

fn p(s: &str) -> Options {
    let (o, d) = parse(s);
    assert!(d.is_empty(), "unexpected diagnostics for {:?}: {:?}", s, d);
    o
}

fn diags(s: &str) -> (Options, Vec<String>) {
    let (o, d) = parse(s);
    (o, d.iter().map(|d| d.to_string()).collect())
}

const G: u64 = 1 << 30;
const M: u64 = 1 << 20;
const K: u64 = 1 << 10;

#[test]
fn defaults() {
    let o = p("");
    assert_eq!(o, Options::default());
    assert_eq!(o.console, vec![ConsoleTarget::Com1]);
    assert!(o.console_serial());
    assert_eq!(o.com1_line(), LineConfig { baud: Some(115_200), data_bits: 8, parity: Parity::None, stop_bits: 1 });
    assert_eq!(o.dom0_mem, None);
    assert_eq!(o.dom0_max_vcpus, None);
    assert!(!o.dom0_vcpus_pin);
    assert_eq!(o.log_level(), log::LevelFilter::Info);
    assert_eq!(o.debug_exit, None);
    assert!(o.selftest);
    assert_eq!(p("   \t  \n "), Options::default());
}

#[test]
fn full_line() {
    let o = p("console=com1,vga com1=9600,7e2 dom0_mem=512M,max:1G dom0_max_vcpus=1-4 dom0_vcpus_pin loglvl=all/warning debug_exit=0xf4 selftest=off");
    assert_eq!(o.console, vec![ConsoleTarget::Com1, ConsoleTarget::Vga]);
    assert_eq!(o.com1, LineConfig { baud: Some(9600), data_bits: 7, parity: Parity::Even, stop_bits: 2 });
    assert_eq!(
        o.dom0_mem,
        Some(Dom0Mem { amount: Some(MemSize::Bytes(512 * M)), min: None, max: Some(MemSize::Bytes(G)) })
    );
    assert_eq!(o.dom0_max_vcpus, Some(VcpuRange { min: 1, max: Some(4) }));
    assert!(o.dom0_vcpus_pin);
    assert_eq!(o.loglvl, LogLevel::All);
    assert_eq!(o.log_level(), log::LevelFilter::Trace);
    assert_eq!(o.debug_exit, Some(0xF4));
    assert!(!o.selftest);
}

#[test]
fn console() {
    assert_eq!(p("console=vga").console, vec![ConsoleTarget::Vga]);
    assert!(!p("console=vga").console_serial());
    assert_eq!(p("console=none").console, vec![]);
    assert!(!p("console=none").console_serial());
    assert_eq!(p("console=com2,com1,com1").console, vec![ConsoleTarget::Com2, ConsoleTarget::Com1]);
    let (o, d) = diags("console=com1,dbgp");
    assert_eq!(o.console, vec![ConsoleTarget::Com1]);
    assert_eq!(d, vec!["console: 'dbgp' ignored (unknown console)"]);
    let (o, d) = diags("console=banana");
    assert_eq!(o.console, vec![ConsoleTarget::Com1]);
    assert_eq!(d.len(), 2);
    assert!(d[1].starts_with("bad value 'banana' for console (expected a list of com1"), "{}", d[1]);
    let (o, d) = diags("console");
    assert_eq!(o.console, vec![ConsoleTarget::Com1]);
    assert!(d[0].starts_with("option 'console' needs a value"));
    let (_, d) = diags("console=");
    assert!(d.last().unwrap().starts_with("bad value '' for console"));
}

#[test]
fn com1() {
    assert_eq!(p("com1=115200").com1, LineConfig::default());
    assert_eq!(p("com1=auto").com1.baud, None);
    assert_eq!(p("com1=auto,8o1").com1, LineConfig { baud: None, data_bits: 8, parity: Parity::Odd, stop_bits: 1 });
    assert_eq!(p("com1=38400,5N1").com1, LineConfig { baud: Some(38400), data_bits: 5, parity: Parity::None, stop_bits: 1 });
    assert_eq!(p("com1=57600/1843200").com1.baud, Some(57600));
    assert_eq!(p("com1=19200,").com1.baud, Some(19200));
    let (o, d) = diags("com1=115200,8n1,0x3f8,4");
    assert_eq!(o.com1, LineConfig::default());
    assert_eq!(d, vec!["com1: '0x3f8,4' ignored (only the speed and line format are configurable)"]);
    for bad in ["com1=0", "com1=fast", "com1=115201", "com1=7", "com1=9600,9n1", "com1=9600,8x1", "com1=9600,8n3", "com1=9600,8n", "com1=", "com1=,8n1", "com1=99999999999999"] {
        let (o, d) = diags(&alloc::format!("com1=38400 {}", bad));
        assert_eq!(o.com1.baud, Some(38400), "{}", bad);
        assert_eq!(d.len(), 1, "{}: {:?}", bad, d);
        assert!(d[0].contains("for com1 (expected <baud>"), "{}", d[0]);
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512M"), Some(512 * M));
    assert_eq!(parse_size("512m"), Some(512 * M));
    assert_eq!(parse_size("2G"), Some(2 * G));
    assert_eq!(parse_size("1T"), Some(1 << 40));
    assert_eq!(parse_size("64k"), Some(64 * K));
    assert_eq!(parse_size("4096B"), Some(4096));
    assert_eq!(parse_size("4096"), Some(4096 * K), "no suffix means KiB, as in Xen");
    assert_eq!(parse_size("0x10M"), Some(16 * M));
    assert_eq!(parse_size("0x1b"), Some(27 * K), "b is a hex digit after 0x");
    assert_eq!(parse_size("0"), Some(0));
    for bad in ["", "M", "-1M", "1.5G", "1GB", "12Q", "0x", "0xG", "99999999999T", "18446744073709551616B", " 1M"] {
        assert_eq!(parse_size(bad), None, "{:?}", bad);
    }
}

#[test]
fn dom0_mem() {
    let d = |s: &str| p(&alloc::format!("dom0_mem={}", s)).dom0_mem.unwrap();
    assert_eq!(d("1G"), Dom0Mem { amount: Some(MemSize::Bytes(G)), min: None, max: None });
    assert_eq!(d("524288"), Dom0Mem { amount: Some(MemSize::Bytes(512 * M)), min: None, max: None });
    assert_eq!(
        d("min:256M,max:2G,1G"),
        Dom0Mem { amount: Some(MemSize::Bytes(G)), min: Some(MemSize::Bytes(256 * M)), max: Some(MemSize::Bytes(2 * G)) }
    );
    assert_eq!(d("max:1G"), Dom0Mem { amount: None, min: None, max: Some(MemSize::Bytes(G)) });
    assert_eq!(d("-2G"), Dom0Mem { amount: Some(MemSize::AllBut(2 * G)), min: None, max: None });
    // Later items override earlier ones, as do later options.
    assert_eq!(d("1G,2G").amount, Some(MemSize::Bytes(2 * G)));
    assert_eq!(p("dom0_mem=1G dom0_mem=3G").dom0_mem.unwrap().amount, Some(MemSize::Bytes(3 * G)));
    assert_eq!(d("512M,max:1G").to_string(), "512M,max:1G");
    assert_eq!(d("min:1000B,-3K").to_string(), "-3K,min:1000B");

    let (o, d) = diags("dom0_mem=1G dom0_mem=banana");
    assert_eq!(o.dom0_mem.unwrap().amount, Some(MemSize::Bytes(G)), "a bad value keeps the earlier one");
    assert_eq!(d, vec!["bad value 'banana' for dom0_mem (expected a size like 512M, or 512M,max:1G); using the default"]);
    for bad in ["dom0_mem", "dom0_mem=", "dom0_mem=1G,", "dom0_mem=max:", "dom0_mem=min:2G,max:1G", "dom0_mem=lots:1G", "dom0_mem=1G,,max:2G", "dom0_mem=--1G"] {
        let (o, d) = diags(bad);
        assert_eq!(o.dom0_mem, None, "{}", bad);
        assert_eq!(d.len(), 1, "{}", bad);
        assert!(d[0].contains("dom0_mem"), "{}", d[0]);
    }
}

#[test]
fn dom0_max_vcpus() {
    let v = |s: &str| p(&alloc::format!("dom0_max_vcpus={}", s)).dom0_max_vcpus.unwrap();
    assert_eq!(v("4"), VcpuRange { min: 4, max: Some(4) });
    assert_eq!(v("2-8"), VcpuRange { min: 2, max: Some(8) });
    assert_eq!(v("2-"), VcpuRange { min: 2, max: None });
    assert_eq!(v("2-max"), VcpuRange { min: 2, max: None });
    assert_eq!(v("3-3"), VcpuRange { min: 3, max: Some(3) });
    for bad in ["0", "-4", "4-2", "a", "", "1-2-3", "99999999999", "1-0"] {
        let (o, d) = diags(&alloc::format!("dom0_max_vcpus={}", bad));
        assert_eq!(o.dom0_max_vcpus, None, "{}", bad);
        assert_eq!(d.len(), 1, "{}", bad);
        assert!(d[0].contains("for dom0_max_vcpus (expected a count like 4"), "{}", d[0]);
    }
}

#[test]
fn booleans() {
    assert!(p("dom0_vcpus_pin").dom0_vcpus_pin);
    assert!(p("dom0-vcpus-pin").dom0_vcpus_pin, "- and _ are interchangeable");
    assert!(!p("dom0_vcpus_pin no-dom0_vcpus_pin").dom0_vcpus_pin);
    assert!(!p("no-selftest").selftest);
    assert!(p("selftest").selftest);
    for (v, want) in [
        ("1", true),
        ("yes", true),
        ("true", true),
        ("on", true),
        ("enable", true),
        ("0", false),
        ("no", false),
        ("false", false),
        ("off", false),
        ("disable", false),
    ] {
        assert_eq!(p(&alloc::format!("selftest={}", v)).selftest, want, "{}", v);
        assert_eq!(p(&alloc::format!("dom0_vcpus_pin={}", v)).dom0_vcpus_pin, want, "{}", v);
    }
    let (o, d) = diags("selftest=maybe");
    assert!(o.selftest);
    assert_eq!(d.len(), 1);
    assert!(d[0].starts_with("bad value 'maybe' for selftest (expected a boolean"), "{}", d[0]);
    let (o, d) = diags("selftest=");
    assert!(o.selftest);
    assert_eq!(d.len(), 1);
    let (o, d) = diags("no-selftest=1");
    assert!(o.selftest);
    assert_eq!(d.len(), 1);
    assert!(d[0].contains("selftest"), "{}", d[0]);
}

#[test]
fn loglvl() {
    for (v, l, f) in [
        ("none", LogLevel::None, log::LevelFilter::Off),
        ("error", LogLevel::Error, log::LevelFilter::Error),
        ("warning", LogLevel::Warning, log::LevelFilter::Warn),
        ("warn", LogLevel::Warning, log::LevelFilter::Warn),
        ("info", LogLevel::Info, log::LevelFilter::Info),
        ("debug", LogLevel::Debug, log::LevelFilter::Debug),
        ("all", LogLevel::All, log::LevelFilter::Trace),
        ("debug/none", LogLevel::Debug, log::LevelFilter::Debug),
    ] {
        let o = p(&alloc::format!("loglvl={}", v));
        assert_eq!(o.loglvl, l, "{}", v);
        assert_eq!(o.log_level(), f, "{}", v);
    }
    for bad in ["loudest", "", "debug/", "/debug", "all/banana", "DEBUG"] {
        let (o, d) = diags(&alloc::format!("loglvl={}", bad));
        assert_eq!(o.loglvl, LogLevel::Info, "{}", bad);
        assert_eq!(d.len(), 1, "{}", bad);
        assert!(d[0].contains("for loglvl (expected none, error"), "{}", d[0]);
    }
}

#[test]
fn debug_exit() {
    assert_eq!(p("debug_exit=0xf4").debug_exit, Some(0xF4));
    assert_eq!(p("debug_exit=0XF4").debug_exit, Some(0xF4));
    assert_eq!(p("debug_exit=501").debug_exit, Some(501));
    assert_eq!(p("debug-exit=0xffff").debug_exit, Some(0xFFFF));
    for bad in ["debug_exit", "debug_exit=0", "debug_exit=0x10000", "debug_exit=65536", "debug_exit=-1", "debug_exit=port", "debug_exit=0x", "debug_exit=0xf4g"] {
        let (o, d) = diags(bad);
        assert_eq!(o.debug_exit, None, "{}", bad);
        assert_eq!(d.len(), 1, "{}", bad);
        assert!(d[0].contains("debug_exit") && d[0].contains("a nonzero I/O port"), "{}", d[0]);
    }
    let (_, d) = diags("no-debug_exit");
    assert_eq!(d, vec!["option 'debug_exit' is not a boolean; 'no-debug_exit' ignored"]);
}

#[test]
fn unknown_options() {
    let (o, d) = diags("frobnicate console=vga x=1 no-frob = ==");
    assert_eq!(o.console, vec![ConsoleTarget::Vga]);
    assert_eq!(
        d,
        vec![
            "unknown option 'frobnicate' ignored",
            "unknown option 'x' ignored",
            "unknown option 'no-frob' ignored",
            "unknown option '' ignored",
            "unknown option '' ignored",
        ]
    );
    // Quotes are not special.
    let (_, d) = diags("\"console=vga\"");
    assert_eq!(d, vec!["unknown option '\"console' ignored"]);
    // Option names are case-sensitive, as in Xen.
    let (_, d) = diags("Console=vga");
    assert_eq!(d, vec!["unknown option 'Console' ignored"]);
}

#[test]
fn values_may_contain_equals_and_whitespace_variants() {
    let (_, d) = diags("dom0_mem=1G=2G");
    assert_eq!(d.len(), 1);
    assert!(d[0].starts_with("bad value '1G=2G' for dom0_mem"));
    let o = p("\tconsole=vga\n\nselftest=0\r\n");
    assert_eq!(o.console, vec![ConsoleTarget::Vga]);
    assert!(!o.selftest);
}

#[test]
fn random_lines_never_panic() {
    let pieces = [
        "console", "com1", "dom0_mem", "dom0_max_vcpus", "dom0_vcpus_pin", "loglvl", "debug_exit", "selftest", "no-", "=",
        ",", ":", "-", "/", "max:", "min:", "0x", "1", "0", "G", "k", "auto", "8n1", " ", "\u{e9}", "\u{0}", "999999999999999999999",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        let mut s = String::new();
        for _ in 0..(x % 12) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(pieces[(x % pieces.len() as u64) as usize]);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (_, d) = parse(&s);
        for diag in d {
            let _ = diag.to_string();
        }
    }
}

#[test]
fn console_timestamps() {
    assert!(!parse("").0.console_timestamps);
    assert!(parse("console_timestamps=boot").0.console_timestamps);
    assert!(parse("console_timestamps").0.console_timestamps);
    assert!(!parse("console_timestamps=boot console_timestamps=none").0.console_timestamps);
    let (o, d) = parse("console_timestamps=datems");
    assert!(!o.console_timestamps);
    assert_eq!(d.len(), 1);
    assert!(d[0].to_string().contains("datems"), "{}", d[0]);
}

#[test]
fn pm_timer_choice() {
    assert_eq!(parse("").0.pm_timer, PmTimerChoice::Auto);
    assert_eq!(parse("pm_timer=emulated").0.pm_timer, PmTimerChoice::Emulated);
    assert_eq!(parse("pm_timer=emulated pm_timer=auto").0.pm_timer, PmTimerChoice::Auto);
    for bad in ["pm_timer", "pm_timer=host2"] {
        let (o, d) = parse(bad);
        assert_eq!(o.pm_timer, PmTimerChoice::Auto);
        assert_eq!(d.len(), 1, "{bad}");
        assert!(d[0].to_string().contains("auto or emulated"), "{}", d[0]);
    }
}

#[test]
fn management_service_options() {
    let (o, d) = parse("mgmt_ip=10.0.2.15/24 mgmt_gw=10.0.2.2 mgmt_port=8080 mgmt_key=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    assert!(d.is_empty(), "{:?}", d);
    assert!(o.mgmt.enabled);
    assert_eq!(o.mgmt.static_ip, Some(([10, 0, 2, 15], 24)));
    assert_eq!(o.mgmt.gateway, Some([10, 0, 2, 2]));
    assert_eq!(o.mgmt.port, 8080);
    assert_eq!(o.mgmt.key.unwrap()[..4], [0x00, 0x11, 0x22, 0x33]);
    let (o, d) = parse("mgmt=off");
    assert!(d.is_empty() && !o.mgmt.enabled);
    assert_eq!(parse("").0.mgmt, MgmtOptions::default());
}

#[test]
fn bad_management_options_are_named_and_the_key_is_not_echoed() {
    let (o, d) = parse("mgmt=maybe mgmt_ip=10.0.2/24 mgmt_port=0 mgmt_key=abcd1234");
    assert_eq!(o.mgmt, MgmtOptions::default());
    let text: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(d.len(), 4, "{:?}", text);
    assert!(text.iter().any(|t| t.contains("mgmt_ip")));
    assert!(text.iter().all(|t| !t.contains("abcd1234")), "{:?}", text);
}

#[test]
fn the_key_is_redacted_from_the_printed_command_line() {
    assert_eq!(redact("console=com1 mgmt_key=0011 dom0_mem=1G"), "console=com1 mgmt_key=<hidden> dom0_mem=1G");
    assert_eq!(redact("mgmt_key=ff"), "mgmt_key=<hidden>");
    assert_eq!(redact("xmgmt_key=ff mgmt-key=aa"), "xmgmt_key=ff mgmt-key=<hidden>");
    assert_eq!(redact("console=com1"), "console=com1");
    // Found by `ferrite fuzz cmdline`: `parse` takes the key with the
    // `no-` prefix too, and `redact` printed it.
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for spelling in ["no-mgmt_key=", "no-mgmt-key="] {
        let line = format!("console=com1 {spelling}{key}");
        assert!(parse(&line).0.mgmt.key.is_some(), "{line}");
        assert_eq!(redact(&line), format!("console=com1 {spelling}<hidden>"));
    }
}

#[test]
fn dom0_disks_are_collected_in_order() {
    let (o, diags) = parse("dom0_disk=phy:disk0,xvda,w dom0-disk=phy:disk1,xvdb,r");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(o.dom0_disks, ["phy:disk0,xvda,w", "phy:disk1,xvdb,r"]);
    let (o, diags) = parse("dom0_disk dom0_disk=");
    assert!(o.dom0_disks.is_empty());
    assert_eq!(diags.len(), 2);
}

#[test]
fn uplink_names_a_bridge() {
    let (o, diags) = parse("uplink=bridge0");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(o.uplink.as_deref(), Some("bridge0"));
    for bad in ["uplink", "uplink=", "uplink=a,b", "uplink=br\u{1b}0"] {
        let (o, diags) = parse(bad);
        assert_eq!(o.uplink, None, "{bad}");
        assert_eq!(diags.len(), 1, "{bad}: {diags:?}");
    }
}
