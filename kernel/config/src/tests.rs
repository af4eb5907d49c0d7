//! Unit tests: syntax, every key, malformed input, fuzzing.

use super::*;
use std::string::{String, ToString};
use std::vec::Vec;

fn ok(text: &str) -> (DomainConfig, Vec<Diagnostic>) {
    match parse("t.cfg", text.as_bytes()) {
        Ok(r) => r,
        Err(d) => panic!(
            "unexpected errors: {:#?}",
            d.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        ),
    }
}

fn errs(text: &[u8]) -> Vec<String> {
    match parse("t.cfg", text) {
        Ok((c, _)) => panic!("expected errors, got {c:#?}"),
        Err(d) => {
            assert!(d.iter().any(Diagnostic::is_error));
            d.iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect()
        }
    }
}

fn has(list: &[String], needle: &str) -> bool {
    list.iter().any(|s| s.contains(needle))
}

fn warns(d: &[Diagnostic]) -> Vec<String> {
    d.iter()
        .filter(|d| !d.is_error())
        .map(|d| d.to_string())
        .collect()
}

const BASE: &str = "name = 'g'\ntype = 'pvh'\nmemory = 256\nkernel = 'vmlinuz'\n";

fn with(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

// ---- syntax layer ----

#[test]
fn syntax_values() {
    let (e, d) = parse_entries(
        "f",
        b"a = 'x'\nb = \"y\"; c = 0x10 ;\nd = [ 'p', \"q\",\n  # comment\n  3, ]\ne += 'z' # trailing\n",
    );
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(e.len(), 5);
    assert_eq!(e[0].value, Value::Str("x".into()));
    assert_eq!(e[1].line, 2);
    assert_eq!(e[2].key, "c");
    assert_eq!(e[2].value, Value::Int(16));
    assert_eq!(e[2].line, 2);
    match &e[3].value {
        Value::List(items) => {
            assert_eq!(items.len(), 3);
            assert_eq!(
                items[2],
                ListItem {
                    value: Value::Int(3),
                    line: 5
                }
            );
        }
        v => panic!("{v:?}"),
    }
    assert!(e[4].append);
    assert_eq!(e[4].line, 6);
}

#[test]
fn syntax_escapes() {
    let (e, d) = parse_entries("f", br#"a = 'it\'s\t\x41\101\\ "ok"'"#);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(e[0].value, Value::Str("it's\tAA\\ \"ok\"".into()));
    let (_, d) = parse_entries("f", br"a = 'bad \q'");
    assert!(d[0].message.contains("unknown escape"), "{d:?}");
    let (_, d) = parse_entries("f", br"a = '\xff'");
    assert!(d[0].message.contains("only ASCII"), "{d:?}");
    let (_, d) = parse_entries("f", br"a = '\0'");
    assert!(d[0].message.contains("NUL"), "{d:?}");
}

#[test]
fn syntax_crlf_bom_and_empty() {
    let (e, d) = parse_entries("f", b"\xef\xbb\xbfa = 1\r\nb = 'x'\r\n");
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(e.len(), 2);
    let (e, d) = parse_entries("f", b"");
    assert!(e.is_empty() && d.is_empty());
    let (e, d) = parse_entries("f", b"\n\n# only comments\n   \n;;\n");
    assert!(e.is_empty() && d.is_empty());
}

#[test]
fn unterminated_string() {
    let (e, d) = parse_entries("g.cfg", b"a = 'abc\nb = 2\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 1);
    assert!(d[0].message.contains("unterminated string"));
    assert_eq!(e.len(), 1, "parsing resumes on the next line");
    assert_eq!(e[0].key, "b");
    let (_, d) = parse_entries("g.cfg", b"a = \"abc");
    assert!(d[0].message.contains("end of file"));
}

#[test]
fn bad_lists() {
    // Unterminated.
    let (_, d) = parse_entries("f", b"disk = [ 'a',\n 'b'\n");
    assert!(d[0].message.contains("unterminated list"), "{d:?}");
    // Missing comma, then recovery at the closing bracket.
    let (e, d) = parse_entries("f", b"disk = [ 'a' 'b',\n 'c' ]\nname = 'x'\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("expected ',' or ']'"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].key, "name");
    // Nested, empty item.
    let (_, d) = parse_entries("f", b"a = [ [1] ]\nb = [ 'x',, 'y' ]\nc = [ , ]\n");
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[0].message.contains("nested"));
    assert!(d[1].message.contains("empty list item"));
    // Unterminated string inside a multi-line list: one error, resumes at next statement.
    let (e, d) = parse_entries("f", b"vif = [ 'mac=1,\n  'x' ]\nname = 'n'\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(e.last().map(|e| e.key.as_str()), Some("name"));
    // Empty list is fine.
    let (e, d) = parse_entries("f", b"a = []\n");
    assert!(d.is_empty());
    assert_eq!(e[0].value, Value::List(Vec::new()));
}

#[test]
fn missing_equals_and_values() {
    let (e, d) = parse_entries(
        "f",
        b"memory 512\nname = \nkernel = bzImage\n= 3\nvcpus = 2 3\nok = 1\n",
    );
    let msgs: Vec<_> = d.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(d.len(), 5, "{msgs:?}");
    assert!(msgs[0].1.contains("missing '='"));
    assert!(msgs[1].1.contains("missing value"));
    assert!(msgs[2].1.contains("bare word 'bzImage'"));
    assert!(msgs[3].1.contains("expected a key name"));
    assert!(msgs[4].1.contains("unexpected '3'"));
    assert_eq!(e.len(), 1);
}

#[test]
fn numbers() {
    let (e, d) = parse_entries("f", b"a = 18446744073709551615\nb = 0xFFFFFFFFFFFFFFFF\n");
    assert!(d.is_empty());
    assert_eq!(e[0].value, Value::Int(u64::MAX));
    assert_eq!(e[1].value, Value::Int(u64::MAX));
    let (_, d) = parse_entries("f", b"a = 18446744073709551616\nb = 0x1FFFFFFFFFFFFFFFF\nc = 99999999999999999999999999999999\n");
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|d| d.message.contains("too large")), "{d:?}");
    let (_, d) = parse_entries("f", b"a = 010\nb = 12abc\nc = 1.5\nd = -1\ne = 0x\n");
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(d[0].message.contains("leading zero"));
    assert!(d[1].message.contains("malformed number"));
    assert!(d[3].message.contains("negative"));
}

#[test]
fn non_utf8() {
    // In a comment: fine.
    let (_, d) = parse_entries("f", b"# caf\xe9\na = 1\n");
    assert!(d.is_empty());
    // In a string: error, with the line.
    let (e, d) = parse_entries("f", b"a = 1\nb = 'caf\xe9'\nc = 2\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 2);
    assert!(d[0].message.contains("not valid UTF-8"));
    assert_eq!(e.len(), 2);
    // As a key.
    let (_, d) = parse_entries("f", b"\xff\xfe = 1\n");
    assert!(d[0].message.contains("not UTF-8"), "{d:?}");
    // Valid UTF-8 in a string is kept.
    let (e, _) = parse_entries("f", "a = 'héllo'".as_bytes());
    assert_eq!(e[0].value, Value::Str("héllo".into()));
    // Whole-file parse with a bad name string.
    let e = errs(b"name = '\xc3\x28'\nmemory = 1\n");
    assert!(
        has(&e, "t.cfg:1: name: string is not valid UTF-8")
            || has(&e, "t.cfg:1: string is not valid UTF-8"),
        "{e:?}"
    );
}

#[test]
fn very_long_lines() {
    // A long comment is fine.
    let mut t = String::from("# ");
    t.push_str(&"x".repeat(200_000));
    t.push('\n');
    t.push_str(BASE);
    ok(&t);
    // A long string is rejected, and the rest is still parsed.
    let t = format!("cmdline = '{}'\nbogus = 1\n{BASE}", "y".repeat(100_000));
    let e = errs(t.as_bytes());
    assert!(
        has(&e, "t.cfg:1: cmdline: string is longer than 8192 bytes"),
        "{e:?}"
    );
    // Exactly at the limit is fine.
    let (c, _) = ok(&with(&format!(
        "cmdline = '{}'",
        "z".repeat(syntax::MAX_STRING_LEN)
    )));
    assert_eq!(c.cmdline.unwrap().len(), syntax::MAX_STRING_LEN);
    // A huge file.
    let big = vec![b'#'; syntax::MAX_FILE_SIZE + 1];
    let e = errs(&big);
    assert!(has(&e, "limit"), "{e:?}");
    // Too many list items.
    let items: Vec<String> = (0..300).map(|i| format!("'{i}'")).collect();
    let e = errs(with(&format!("vif = [ {} ]", items.join(","))).as_bytes());
    assert!(has(&e, "more than 256 items"), "{e:?}");
}

#[test]
fn diagnostics_are_capped() {
    let text = "@\n".repeat(10_000);
    let d = parse("t.cfg", text.as_bytes()).unwrap_err();
    assert_eq!(d.len(), diag::MAX_DIAGNOSTICS + 1);
    assert!(d
        .last()
        .unwrap()
        .message
        .contains("more diagnostics not shown"));
}

// ---- diagnostics format ----

#[test]
fn display_format() {
    let e = errs(b"name = 'guest1'\ntype='hvm'\n\n\n\n\nmemory = 'lots'\n");
    assert_eq!(
        e,
        ["t.cfg:7: memory: expected a number of MiB, found 'lots'"]
    );
    let d = parse(
        "guest1.cfg",
        b"name='a'\nmemory=1\ntype='hvm'\nvnc=1\nfoo='x'\n",
    )
    .unwrap()
    .1;
    let w = warns(&d);
    assert_eq!(
        w,
        [
            "guest1.cfg:4: warning: vnc: not supported by Ferrite; ignored",
            "guest1.cfg:5: warning: foo: unknown key; ignored"
        ]
    );
    let e = errs(b"type='hvm'\n");
    assert_eq!(e, ["t.cfg: name: required key is missing"]);
    // Control characters in values are escaped in messages.
    let e = errs(b"name = 'a\\x1b[31m'\ntype='hvm'\n");
    assert!(has(&e, "\\u{1b}"), "{e:?}");
}

#[test]
fn collects_all_errors() {
    let e = errs(b"name = 'bad name'\ntype = 'pv'\nmemory = 0\nvcpus = 999\nuuid = 'nope'\non_crash = 'explode'\n");
    assert_eq!(e.len(), 6, "{e:?}");
    assert!(e[0].starts_with("t.cfg:1: name:"));
    assert!(e[1].contains("t.cfg:2: type: PV guests are not supported"));
    assert!(e[2].contains("t.cfg:3: memory: must be more than 0"));
    assert!(e[3].contains("t.cfg:4: vcpus: 999 is out of range"));
    assert!(e[4].contains("t.cfg:5: uuid:"));
    assert!(e[5].contains("t.cfg:6: on_crash: unknown action"));
}

// ---- NetBSD HOWTO style examples ----

#[test]
fn netbsd_howto_style_pv_becomes_error() {
    // A classic NetBSD PV domU: no type → with a kernel we pick PVH (warned).
    let text = r#"
# -*- mode: python; -*-
kernel = "/netbsd-XEN3_DOMU.gz"
memory = 512
name = "nbsd"
vif = [ 'mac=aa:00:00:50:02:f0, bridge=bridge0' ]
disk = [ 'file:/n0/xen/nbsd-wd0,0x1,w' ]
root = "xbd0"
"#;
    let (c, d) = ok(text);
    assert_eq!(c.name, "nbsd");
    assert_eq!(c.guest_type, GuestType::Pvh);
    assert!(has(&warns(&d), "type: not given"), "{d:?}");
    assert_eq!(c.memory_mib, 512);
    assert_eq!(c.cmdline.as_deref(), Some("root=xbd0"));
    assert_eq!(c.disks[0].kind, DiskKind::File);
    assert_eq!(c.disks[0].target.as_deref(), Some("/n0/xen/nbsd-wd0"));
    assert_eq!(c.disks[0].vdev.bus, VdevBus::Number);
    assert_eq!(c.disks[0].vdev.disk, 1);
    assert_eq!(c.disks[0].access, Access::ReadWrite);
    assert_eq!(c.vifs[0].mac, Some(MacAddr([0xaa, 0, 0, 0x50, 2, 0xf0])));
    assert_eq!(c.vifs[0].bridge(), Some("bridge0"));
    // Explicit type='pv' is rejected.
    let e = errs(format!("{text}type = 'pv'\n").as_bytes());
    assert!(has(&e, "PV guests are not supported by Ferrite"), "{e:?}");
}

#[test]
fn netbsd_howto_style_hvm() {
    let text = r#"
type = 'hvm'
memory = 3902
name = 'hvm1'
vcpus = 4
vif = [ 'type=ioemu, bridge=bridge0, mac=00:16:3e:00:00:13' ]
disk = [
    'phy:/dev/zvol/dsk/tank/hvm1,hda,w',
    'file:/home/iso/debian.iso,hdc:cdrom,r',
]
boot = 'cd'
serial = 'pty'
vnc = 1
usb = 1
usbdevice = 'tablet'
on_poweroff = 'destroy'
on_reboot = 'restart'
on_crash = 'preserve'
"#;
    let (c, d) = ok(text);
    assert_eq!(c.guest_type, GuestType::Hvm);
    assert_eq!((c.vcpus, c.maxvcpus), (4, 4));
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.disks[0].kind, DiskKind::Phy);
    assert_eq!(
        c.disks[0].vdev,
        Vdev {
            name: "hda".into(),
            bus: VdevBus::Ide,
            disk: 0,
            partition: 0
        }
    );
    assert_eq!(c.disks[1].devtype, DevType::Cdrom);
    assert_eq!(c.disks[1].vdev.disk, 2);
    assert_eq!(c.disks[1].access, Access::ReadOnly);
    assert_eq!(c.boot, [BootDevice::Disk, BootDevice::Cdrom]);
    assert_eq!(c.serial, Serial::Pty);
    assert_eq!(c.on_crash, Action::Preserve);
    assert_eq!(c.vifs[0].get("type"), Some("ioemu"));
    let w = warns(&d);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(has(&w, "vnc: not supported"));
}

// ---- each key ----

#[test]
fn key_name() {
    assert_eq!(ok(&with("name = 'a.b-c_9'")).0.name, "a.b-c_9");
    for bad in [
        "''",
        "'with space'",
        "'ünï'",
        "'1234'",
        &format!("'{}'", "n".repeat(65)),
    ] {
        let e = errs(format!("name = {bad}\ntype='hvm'\n").as_bytes());
        assert!(has(&e, "t.cfg:1: name:"), "{bad}: {e:?}");
    }
    ok(&format!(
        "name = '{}'\ntype='hvm'\nmemory=1\n",
        "n".repeat(64)
    ));
    let e = errs(b"name = 5\ntype='hvm'\n");
    assert!(has(&e, "expected a quoted string, found a number"));
}

#[test]
fn key_type_and_builder() {
    assert_eq!(
        ok("name='a'\nbuilder='hvm'\nmemory=1\n").0.guest_type,
        GuestType::Hvm
    );
    let (c, d) = ok("name='a'\nbuilder='hvm'\ntype='pvh'\nkernel='k'\nmemory=1\n");
    assert_eq!(c.guest_type, GuestType::Pvh);
    assert!(has(&warns(&d), "builder: ignored"));
    assert!(has(&errs(b"name='a'\nbuilder='generic'\n"), "PV guest"));
    assert!(has(
        &errs(b"name='a'\ntype='xen'\n"),
        "unknown guest type 'xen'"
    ));
    // No type, no kernel → HVM with a warning.
    let (c, d) = ok("name='a'\nmemory=64\n");
    assert_eq!(c.guest_type, GuestType::Hvm);
    assert!(has(&warns(&d), "no kernel is given"));
    // PVH without a kernel.
    assert!(has(
        &errs(b"name='a'\ntype='pvh'\nmemory=1\n"),
        "kernel: a PVH guest needs a kernel"
    ));
}

#[test]
fn key_memory_and_maxmem() {
    let (c, _) = ok(&with("maxmem = 1024"));
    assert_eq!((c.memory_mib, c.maxmem_mib), (256, 1024));
    let (c, _) = ok("name='a'\ntype='hvm'\nmemory='2G'\n");
    assert_eq!((c.memory_mib, c.maxmem_mib), (2048, 2048));
    let (c, _) = ok("name='a'\ntype='hvm'\nmemory=\"512\"\n");
    assert_eq!(c.memory_mib, 512);
    let (c, d) = ok("name='a'\ntype='hvm'\n");
    assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
    assert!(has(&warns(&d), "memory: not given"));
    assert!(has(
        &errs(with("maxmem = 100").as_bytes()),
        "maxmem: 100 MiB is less than memory (256 MiB)"
    ));
    assert!(has(
        &errs(b"name='a'\ntype='hvm'\nmemory=0xffffffffffffffff\n"),
        "more than the limit"
    ));
    assert!(has(
        &errs(b"name='a'\ntype='hvm'\nmemory='99999999999T'\n"),
        "too large"
    ));
    assert!(has(
        &errs(b"name='a'\ntype='hvm'\nmemory='1536K'\n"),
        "not a whole number of MiB"
    ));
    assert!(has(
        &errs(b"name='a'\ntype='hvm'\nmemory=[1]\n"),
        "expected a number of MiB, found a list"
    ));
}

#[test]
fn key_vcpus() {
    let (c, _) = ok(&with("vcpus = 2\nmaxvcpus = 8"));
    assert_eq!((c.vcpus, c.maxvcpus), (2, 8));
    assert_eq!(ok(&with("vcpus = 128")).0.vcpus, 128);
    assert!(has(&errs(with("vcpus = 0").as_bytes()), "out of range"));
    assert!(has(&errs(with("vcpus = 129").as_bytes()), "out of range"));
    assert!(has(
        &errs(with("vcpus = 4\nmaxvcpus = 2").as_bytes()),
        "maxvcpus: 2 is less than vcpus (4)"
    ));
    assert!(has(
        &errs(with("vcpus = 'two'").as_bytes()),
        "expected a number of vCPUs, found 'two'"
    ));
}

#[test]
fn key_cpus() {
    let (c, _) = ok(&with("cpus = '0-3,5'"));
    let Some(CpuAffinity::All(s)) = c.cpus else {
        panic!()
    };
    assert_eq!(s.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 5]);
    assert_eq!(s.to_string(), "0-3,5");
    let (c, _) = ok(&with("cpus = 'all,^0'"));
    let s = c.cpus.unwrap().union();
    assert!(!s.contains(0) && s.contains(1) && s.contains(4095));
    let (c, _) = ok(&with("vcpus = 2\ncpus = ['2', '3-4']"));
    let a = c.cpus.unwrap();
    assert_eq!(a.for_vcpu(1).unwrap().to_string(), "3-4");
    assert_eq!(a.union().to_string(), "2-4");
    assert!(a.for_vcpu(2).is_none());
    let (c, _) = ok(&with("cpus = 7"));
    assert_eq!(c.cpus.unwrap().union().to_string(), "7");
    assert!(has(&errs(with("cpus = '3-1'").as_bytes()), "backwards"));
    assert!(has(&errs(with("cpus = '0-99999'").as_bytes()), "too large"));
    assert!(has(
        &errs(with("cpus = 'x'").as_bytes()),
        "expected a CPU number"
    ));
    assert!(has(
        &errs(with("cpus = '^0-4095'").as_bytes()),
        "selects no CPU"
    ));
    assert!(has(&errs(with("cpus = ''").as_bytes()), "empty CPU list"));
    assert!(has(&errs(with("cpus = 'nodes:0'").as_bytes()), "NUMA"));
    let (_, d) = ok(&with("cpus = ['1','2','3']"));
    assert!(has(&warns(&d), "extra ones are ignored"));
}

#[test]
fn key_kernel_ramdisk_cmdline() {
    let (c, _) = ok(&with("ramdisk = 'initrd.img'\ncmdline = 'console=ttyS0'"));
    assert_eq!(c.kernel.as_deref(), Some("vmlinuz"));
    assert_eq!(c.ramdisk.as_deref(), Some("initrd.img"));
    assert_eq!(c.cmdline.as_deref(), Some("console=ttyS0"));
    let (c, _) = ok(&with("root = '/dev/xvda1'\nextra = 'console=hvc0 ro'"));
    assert_eq!(
        c.cmdline.as_deref(),
        Some("root=/dev/xvda1 console=hvc0 ro")
    );
    let (c, _) = ok(&with("extra = 'quiet'"));
    assert_eq!(c.cmdline.as_deref(), Some("quiet"));
    let (c, d) = ok(&with("cmdline = 'a'\nextra = 'b'"));
    assert_eq!(c.cmdline.as_deref(), Some("a"));
    assert!(has(&warns(&d), "extra: ignored in favour of 'cmdline'"));
    let (c, _) = ok(&with("cmdline = 'a'\ncmdline += ' b'"));
    assert_eq!(c.cmdline.as_deref(), Some("a b"));
    assert!(has(
        &errs(with("kernel = ''").as_bytes()),
        "kernel: must not be empty"
    ));
}

#[test]
fn key_actions() {
    let (c, d) = ok(&with(
        "on_poweroff='preserve'\non_reboot='destroy'\non_crash='coredump-restart'\non_watchdog='rename-restart'",
    ));
    assert_eq!(c.on_poweroff, Action::Preserve);
    assert_eq!(c.on_reboot, Action::Destroy);
    assert_eq!(c.on_crash, Action::Restart);
    assert_eq!(c.on_watchdog, Action::Restart);
    assert_eq!(warns(&d).len(), 2);
    let (c, _) = ok(&with("on_crash='coredump-destroy'\non_reboot='soft-reset'"));
    assert_eq!(
        (c.on_crash, c.on_reboot),
        (Action::Destroy, Action::Restart)
    );
    let (c, _) = ok(BASE);
    assert_eq!(
        (c.on_poweroff, c.on_reboot, c.on_crash, c.on_watchdog),
        (
            Action::Destroy,
            Action::Restart,
            Action::Destroy,
            Action::Destroy
        )
    );
}

#[test]
fn key_disk() {
    let (c, _) = ok(&with(
        "disk = [ 'phy:NAME,xvda,w', 'format=raw, vdev=xvdb, access=ro, target=a,b c', '/img,,xvdc', \
         'NAME2,raw,xvdd,rw', 'NAME3,xvde,r', ',hdc:cdrom,r', 'vdev=xvdf, cdrom', 'tap:aio:/x,xvdg1,w' ]",
    ));
    let d = &c.disks;
    assert_eq!(d.len(), 8);
    assert_eq!(
        (d[0].target.as_deref(), d[0].kind, d[0].vdev.disk),
        (Some("NAME"), DiskKind::Phy, 0)
    );
    assert_eq!(
        (d[1].target.as_deref(), d[1].access),
        (Some("a,b c"), Access::ReadOnly)
    );
    assert_eq!(
        (d[2].format, d[2].access),
        (DiskFormat::Raw, Access::ReadWrite)
    );
    assert_eq!(d[3].vdev.disk, 3);
    assert_eq!(
        (d[4].vdev.name.as_str(), d[4].access),
        ("xvde", Access::ReadOnly)
    );
    assert_eq!(
        (d[5].target.as_deref(), d[5].devtype),
        (None, DevType::Cdrom)
    );
    assert_eq!(
        (d[6].devtype, d[6].access),
        (DevType::Cdrom, Access::ReadOnly)
    );
    assert_eq!(d[7].vdev.partition, 1);
    // Vdev names.
    assert_eq!(Vdev::parse("sdb3").unwrap().disk, 1);
    assert_eq!(Vdev::parse("xvdaa").unwrap().disk, 26);
    assert_eq!(Vdev::parse("xvdaa200").unwrap().partition, 200);
    assert!(Vdev::parse("xvda200").is_err());
    assert_eq!(
        Vdev::parse("d5p2").unwrap(),
        Vdev {
            name: "d5p2".into(),
            bus: VdevBus::Xen,
            disk: 5,
            partition: 2
        }
    );
    for bad in [
        "hde",
        "hda64",
        "sdq",
        "xvd",
        "xvda0",
        "vda",
        "xvdA",
        "xvdaaaaa",
        "0x1ffffffff",
    ] {
        assert!(Vdev::parse(bad).is_err(), "{bad}");
    }
    // Errors.
    for (spec, msg) in [
        ("NAME", "no virtual device"),
        ("NAME,raw,xvda,rx", "unknown access mode"),
        ("NAME,vmdk,xvda", "unknown disk format 'vmdk'"),
        ("NAME,,hde", "only hda..hdd"),
        ("vdev=xvda", "no target"),
        ("NAME,xvda,w,extra", "too many positional"),
        ("NAME,,xvda,w,cdrom,x", "too many positional"),
        ("bogus=1,NAME,,xvda", "unknown disk parameter 'bogus'"),
        ("NAME,,xvda,w,cdrom", "cannot be writable"),
        ("NAME,,xvda,w,access=r", "access is given more than once"),
    ] {
        let e = errs(with(&format!("disk = [ '{spec}' ]")).as_bytes());
        assert!(has(&e, msg), "{spec}: {e:?}");
        assert!(has(&e, "t.cfg:5: disk:"), "{e:?}");
    }
    assert!(has(
        &errs(with("disk = ['a,,xvda', 'b,,xvda']").as_bytes()),
        "used twice"
    ));
    assert!(has(
        &errs(with("disk = [ 1 ]").as_bytes()),
        "list items must be quoted strings"
    ));
    // A single string counts as a one-element list; qcow2 warns.
    let (c, d) = ok(&with("disk = 'img,qcow2,xvda'"));
    assert_eq!(c.disks[0].format, DiskFormat::Qcow2);
    assert!(has(&warns(&d), "only raw"));
    // Multi-line list: each error reports its own line.
    let e = errs(with("disk = [\n  'a,,xvda',\n  'b,,hdz',\n]").as_bytes());
    assert!(has(&e, "t.cfg:7: disk:"), "{e:?}");
}

#[test]
fn key_vif() {
    let (c, d) = ok(&with(
        "vif = [ 'mac=00:16:3e:00:00:01, bridge=xenbr0, model=e1000', '', 'bridge=br1,foo=bar' ]",
    ));
    assert_eq!(c.vifs.len(), 3);
    assert_eq!(c.vifs[0].mac.unwrap().to_string(), "00:16:3e:00:00:01");
    assert_eq!(c.vifs[0].model(), Some("e1000"));
    assert!(c.vifs[1].params.is_empty());
    assert_eq!(c.vifs[2].get("foo"), Some("bar"));
    assert!(has(&warns(&d), "unknown vif parameter 'foo'"));
    for (spec, msg) in [
        ("mac=00:16:3e:00:00", "invalid MAC"),
        ("mac=00:16:3e:00:00:0g", "invalid MAC"),
        ("mac=01:00:5e:00:00:01", "multicast"),
        ("mac=ff:ff:ff:ff:ff:ff", "multicast"),
        ("mac=00:00:00:00:00:00", "not usable"),
        ("bridge", "expected key=value"),
        ("type=tap", "unknown vif type"),
    ] {
        let e = errs(with(&format!("vif = [ '{spec}' ]")).as_bytes());
        assert!(has(&e, msg), "{spec}: {e:?}");
    }
    assert!(has(
        &errs(with("vif = ['mac=00:16:3e:00:00:01', 'mac=00:16:3E:00:00:01']").as_bytes()),
        "used twice"
    ));
    assert_eq!(MacAddr::parse("00-16-3e-00-00-02").unwrap().0[5], 2);
}

#[test]
fn key_firmware_boot_serial_stubdom() {
    let hvm = "name='a'\ntype='hvm'\nmemory=1\n";
    let (c, _) = ok(&format!("{hvm}firmware='/usr/share/seabios/bios-256k.bin'"));
    assert_eq!(
        c.firmware,
        Some(Firmware::Path("/usr/share/seabios/bios-256k.bin".into()))
    );
    assert_eq!(
        ok(&format!("{hvm}firmware='bios'")).0.firmware,
        Some(Firmware::Bios)
    );
    assert_eq!(
        ok(&format!("{hvm}bios='ovmf'")).0.firmware,
        Some(Firmware::Uefi)
    );
    let (c, _) = ok(&format!("{hvm}bios='seabios'\nbios_path_override='sb.bin'"));
    assert_eq!(c.firmware, Some(Firmware::Path("sb.bin".into())));
    assert!(has(
        &errs(format!("{hvm}firmware='rombios'").as_bytes()),
        "rombios"
    ));
    assert!(has(
        &errs(format!("{hvm}bios='rombios'").as_bytes()),
        "not supported"
    ));
    assert_eq!(
        ok(&format!("{hvm}boot='dcn'")).0.boot,
        [BootDevice::Cdrom, BootDevice::Disk, BootDevice::Network]
    );
    assert!(has(
        &errs(format!("{hvm}boot='cx'").as_bytes()),
        "not a boot order"
    ));
    assert!(has(&errs(format!("{hvm}boot='cc'").as_bytes()), "twice"));
    assert!(has(
        &errs(format!("{hvm}boot=''").as_bytes()),
        "must not be empty"
    ));
    assert_eq!(ok(&format!("{hvm}serial=['pty']")).0.serial, Serial::Pty);
    assert_eq!(ok(&format!("{hvm}serial='none'")).0.serial, Serial::None);
    assert!(has(
        &errs(format!("{hvm}serial='tcp:1.2.3.4:5'").as_bytes()),
        "expected 'pty' or 'none'"
    ));
    let (c, d) = ok(&format!("{hvm}device_model_stubdomain_override=0"));
    assert_eq!(c.device_model_stubdomain_override, Some(false));
    assert!(has(
        &warns(&d),
        "always runs the device model in a stub domain"
    ));
    assert_eq!(
        ok(&format!("{hvm}device_model_stubdomain_override='true'"))
            .0
            .device_model_stubdomain_override,
        Some(true)
    );
    assert!(has(
        &errs(format!("{hvm}device_model_stubdomain_override=2").as_bytes()),
        "expected a boolean"
    ));
    let (_, d) = ok(&with("boot='c'"));
    assert!(has(&warns(&d), "ignored for a PVH guest"));
}

#[test]
fn key_uuid() {
    let (c, _) = ok(&with("uuid = 'A6A3F200-bcbb-cdbd-c06e-9e71f739310f'"));
    assert_eq!(
        c.uuid.unwrap().to_string(),
        "a6a3f200-bcbb-cdbd-c06e-9e71f739310f"
    );
    for bad in [
        "a6a3f200bcbbcdbdc06e9e71f739310f",
        "a6a3f200-bcbb-cdbd-c06e-9e71f739310",
        "g6a3f200-bcbb-cdbd-c06e-9e71f739310f",
        "a6a3f200-bcbb-cdbd-c06e+9e71f739310f",
    ] {
        assert!(
            has(&errs(with(&format!("uuid = '{bad}'")).as_bytes()), "uuid: "),
            "{bad}"
        );
    }
}

#[test]
fn duplicates_and_append() {
    let (c, d) = ok(&with("memory = 512"));
    assert_eq!(c.memory_mib, 512, "last one wins");
    assert_eq!(warns(&d), ["t.cfg:5: warning: memory: given again (first on line 3); this value replaces the earlier one"]);
    let (c, _) = ok(&with(
        "disk = ['a,,xvda']\ndisk += ['b,,xvdb']\ndisk += 'c,,xvdc'",
    ));
    assert_eq!(c.disks.len(), 3);
    assert!(has(
        &errs(with("memory += 'x'").as_bytes()),
        "cannot append a string to a number"
    ));
    // `+=` without an earlier value is a plain assignment.
    assert_eq!(ok(&with("vif += ['']")).0.vifs.len(), 1);
}

#[test]
fn syntax_error_key_not_reported_missing() {
    let e = errs(b"name = 'abc\ntype='hvm'\n");
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn parse_size_cases() {
    const M: u64 = 1 << 20;
    assert_eq!(parse_size("512", M), Ok(512 * M));
    assert_eq!(parse_size("512M", 1), Ok(512 * M));
    assert_eq!(parse_size("2g", 1), Ok(2 << 30));
    assert_eq!(parse_size("4KiB", 1), Ok(4096));
    assert_eq!(parse_size("0x10k", 1), Ok(16 << 10));
    assert_eq!(parse_size("100B", M), Ok(100));
    assert_eq!(parse_size("1T", 1), Ok(1 << 40));
    assert_eq!(parse_size("lots", M), Err(SizeError::Malformed));
    assert_eq!(parse_size("5X", M), Err(SizeError::Malformed));
    assert_eq!(parse_size("5MM", M), Err(SizeError::Malformed));
    assert_eq!(parse_size("", M), Err(SizeError::Malformed));
    assert_eq!(parse_size("99999999999T", 1), Err(SizeError::Overflow));
    assert_eq!(
        parse_size("18446744073709551616", 1),
        Err(SizeError::Malformed)
    );
}

// ---- fuzzing ----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEED_CFG: &str = r#"name = "fuzz"
type = 'hvm'   # comment
memory = 0x200; maxmem = "1G"
vcpus = 2
cpus = [ "0-1", '^0,3' ]
disk = [ 'phy:NAME,hda,w', 'format=raw, vdev=xvdb, access=ro, target=x',
  ',hdc:cdrom,r', ]
vif = [ 'mac=00:16:3e:00:00:01,bridge=br0,model=e1000' ]
boot = "cd"; serial = 'pty'
uuid = 'a6a3f200-bcbb-cdbd-c06e-9e71f739310f'
cmdline = 'console=ttyS0 \x41\t\'q\''
extra += "x"
on_crash = 'coredump-restart'
"#;

#[test]
fn seed_config_parses() {
    let (c, _) = ok(SEED_CFG);
    assert_eq!(c.memory_mib, 512);
    assert_eq!(c.maxmem_mib, 1024);
}

#[test]
fn fuzz_random_bytes_no_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"ab=[]'\",;#\\\n \t0x19_-:^+\xff\xc3";
    for i in 0..20_000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if i % 2 == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        let _ = parse("fuzz.cfg", &bytes);
        let _ = parse_entries("fuzz.cfg", &bytes);
    }
}

#[test]
fn fuzz_mutations_no_panic() {
    let mut rng = Rng(42);
    let seed = SEED_CFG.as_bytes();
    let tokens: &[&[u8]] = &[
        b"'",
        b"\"",
        b"[",
        b"]",
        b",",
        b"=",
        b"+=",
        b"#",
        b"\n",
        b"\\",
        b"0x",
        b"99999999999999999999",
        b"\xff",
        b";",
        b"-",
        b":",
    ];
    for _ in 0..20_000 {
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.below(6) {
            let pos = rng.below(b.len() + 1);
            match rng.below(4) {
                0 if pos < b.len() => {
                    b.remove(pos);
                }
                1 if pos < b.len() => b[pos] = rng.next() as u8,
                2 => {
                    let t = tokens[rng.below(tokens.len())];
                    b.splice(pos..pos, t.iter().copied());
                }
                _ => {
                    let end = (pos + rng.below(20)).min(b.len());
                    let chunk = b[pos.min(end)..end].to_vec();
                    b.splice(pos..pos, chunk);
                }
            }
        }
        match parse("m.cfg", &b) {
            Ok((c, _)) => {
                assert!(c.vcpus >= 1 && c.vcpus <= c.maxvcpus && c.maxvcpus <= MAX_VCPUS);
                assert!(c.memory_mib >= 1 && c.memory_mib <= c.maxmem_mib);
            }
            Err(d) => {
                assert!(d.iter().any(Diagnostic::is_error));
                assert!(d.len() <= diag::MAX_DIAGNOSTICS + 1);
                for x in &d {
                    let _ = x.to_string();
                }
            }
        }
        // Component parsers on random text.
        let s = String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned();
        let _ = DiskSpec::parse(&s);
        let _ = VifSpec::parse(&s);
        let _ = CpuSet::parse(&s);
        let _ = Vdev::parse(&s);
        let _ = parse_size(&s, 1);
    }
}

#[test]
fn nbd_targets_are_kept_whole() {
    let (d, warnings) = DiskSpec::parse("nbd:10.0.2.2:10809/web,xvda,w").unwrap();
    assert_eq!(d.kind, DiskKind::Nbd);
    assert_eq!(d.target.as_deref(), Some("10.0.2.2:10809/web"));
    assert!(d.script.is_none() && warnings.is_empty(), "{warnings:?}");
}

#[test]
fn module_disks_name_a_boot_module() {
    let (d, warnings) = DiskSpec::parse("module:disk0.img,hda,w").unwrap();
    assert_eq!(d.kind, DiskKind::Module);
    assert_eq!(d.target.as_deref(), Some("disk0.img"));
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn virtio_specification_and_transport() {
    use crate::disk::{DiskSpecification, DiskTransport};
    let (d, w) = DiskSpec::parse("phy:disk0,xvda,w,specification=virtio").unwrap();
    assert_eq!(d.specification, DiskSpecification::Virtio);
    assert_eq!(d.transport, DiskTransport::Default);
    assert_eq!(d.vdev.name, "xvda");
    assert!(w.is_empty(), "{w:?}");
    let (d, _) =
        DiskSpec::parse("vdev=hda,access=rw,specification=virtio,transport=pci,target=disk1")
            .unwrap();
    assert_eq!(
        (d.specification, d.transport),
        (DiskSpecification::Virtio, DiskTransport::Pci)
    );
    assert_eq!(d.target.as_deref(), Some("disk1"));
    let (d, _) = DiskSpec::parse("disk0,raw,xvdb,r,specification=virtio,transport=mmio").unwrap();
    assert_eq!(d.transport, DiskTransport::Mmio);
    let (d, _) = DiskSpec::parse("phy:disk0,hda,w").unwrap();
    assert_eq!(
        (d.specification, d.transport),
        (DiskSpecification::Xen, DiskTransport::Default)
    );
    let (d, _) = DiskSpec::parse("phy:disk0,hda,w,specification=xen").unwrap();
    assert_eq!(d.specification, DiskSpecification::Xen);
    for (bad, why) in [
        (
            "phy:disk0,xvda,w,specification=scsi",
            "unknown disk specification",
        ),
        (
            "phy:disk0,xvda,w,specification=virtio,transport=ccw",
            "unknown disk transport",
        ),
        (
            "phy:disk0,xvda,w,transport=pci",
            "only to specification=virtio",
        ),
        (
            "phy:disk0,xvda,w,specification=virtio,specification=xen",
            "more than once",
        ),
        ("phy:disk0,hdc:cdrom,r,specification=virtio", "CD-ROM"),
    ] {
        let e = DiskSpec::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn generated_macs_are_stable_xen_prefixed_and_distinct() {
    let a0 = MacAddr::generated("web", 0);
    assert_eq!(a0, MacAddr::generated("web", 0));
    assert_eq!(&a0.0[..3], &[0x00, 0x16, 0x3e]);
    assert_eq!(a0.0[3] & 0x80, 0);
    assert_ne!(a0, MacAddr::generated("web", 1));
    assert_ne!(a0, MacAddr::generated("db", 0));
    // Unicast and usable as written.
    assert_eq!(MacAddr::parse(&a0.to_string()), Ok(a0));
}
