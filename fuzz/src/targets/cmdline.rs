//! `cmdline`: the Xen-style hypervisor command line
//! (`ferrite_boot::cmdline::parse` and `redact`).
//!
//! Properties: every diagnostic names an option that is in the input (and
//! quotes a value from it, or hides it); the parsed options, written back
//! as a command line, parse to the same options without a diagnostic (the
//! parser round-trips); `redact` leaves no `mgmt_key` the parser would
//! accept and changes no other option.

use super::Target;
use ferrite_boot::cmdline::{self, ConsoleTarget, LogLevel, Options, Parity, PmTimerChoice, Problem};
use std::fmt::Write;

pub const CMDLINE: Target = Target {
    name: "cmdline",
    about: "hypervisor command line: diagnostics name an option of the input, options round-trip through their canonical text, redact hides every accepted mgmt_key",
    max_len: 512,
    seeds: || {
        [
            "console=com1 com1=115200,8n1 dom0_mem=512M,max:1G loglvl=all",
            "dom0_max_vcpus=1-4 dom0_vcpus_pin no-selftest debug_exit=0xf4",
            "console=com1,vga com1=auto/1843200,7e2,0x3f8 dom0_mem=-256M,min:128M",
            "mgmt=dhcp mgmt_ip=10.0.2.15/24 mgmt_gw=10.0.2.2 mgmt_port=7070 mgmt_key=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "pm_timer=emulated console_timestamps=boot selftest=off loglvl=warning/debug",
            "/boot/ferrite dom0_mem=524288 no-dom0-vcpus-pin unknown=1 =x no-",
            // The key spelled with `no-`, which `redact` once missed.
            "console=com1 no-mgmt-key=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    },
    dictionary: &[
        b"console=", b"com1=", b"dom0_mem=", b"dom0_max_vcpus=", b"dom0_vcpus_pin", b"loglvl=", b"debug_exit=", b"selftest",
        b"console_timestamps=", b"pm_timer=", b"mgmt=", b"mgmt_ip=", b"mgmt_gw=", b"mgmt_port=", b"mgmt_key=", b"mgmt-key=",
        b"no-", b"min:", b"max:", b"0x", b",8n1", b"auto", b"all", b" ", b"\t", b"=", b"-", b"/", b",",
        b"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ],
    run,
};

fn run(input: &[u8]) {
    let s = String::from_utf8_lossy(input);
    let (opts, diags) = cmdline::parse(&s);
    for d in &diags {
        assert!(s.contains(&d.option), "diagnostic for {:?}, which is not in the input", d.option);
        if let Problem::BadValue { value, .. } = &d.problem {
            assert!(value == "<hidden>" || s.contains(value.as_str()), "diagnostic quotes {value:?}, not in the input");
        }
        assert!(!d.to_string().is_empty());
    }

    let canonical = render(&opts);
    let (again, diags) = cmdline::parse(&canonical);
    assert!(diags.is_empty(), "canonical form {canonical:?} of {s:?} gives diagnostics {diags:?}");
    assert_eq!(again, opts, "options do not round-trip through {canonical:?}");

    let redacted = cmdline::redact(&s);
    let (after, _) = cmdline::parse(&redacted);
    assert_eq!(after.mgmt.key, None, "redact({s:?}) = {redacted:?} still holds a key");
    let mut without_key = opts.clone();
    without_key.mgmt.key = None;
    assert_eq!(after, without_key, "redact changed other options: {redacted:?}");
}

/// The options as a command line, each one spelled out.
fn render(o: &Options) -> String {
    let mut s = String::new();
    let console: Vec<&str> = o
        .console
        .iter()
        .map(|c| match c {
            ConsoleTarget::Com1 => "com1",
            ConsoleTarget::Com2 => "com2",
            ConsoleTarget::Vga => "vga",
        })
        .collect();
    let console = if console.is_empty() { "none".to_string() } else { console.join(",") };
    let _ = write!(s, "console={console}");
    let parity = match o.com1.parity {
        Parity::None => 'n',
        Parity::Odd => 'o',
        Parity::Even => 'e',
    };
    let baud = o.com1.baud.map_or("auto".to_string(), |b| b.to_string());
    let _ = write!(s, " com1={baud},{}{parity}{}", o.com1.data_bits, o.com1.stop_bits);
    if let Some(m) = &o.dom0_mem {
        let _ = write!(s, " dom0_mem={m}");
    }
    if let Some(v) = &o.dom0_max_vcpus {
        match v.max {
            Some(max) => {
                let _ = write!(s, " dom0_max_vcpus={}-{max}", v.min);
            }
            None => {
                let _ = write!(s, " dom0_max_vcpus={}-", v.min);
            }
        }
    }
    let _ = write!(s, " dom0_vcpus_pin={}", u8::from(o.dom0_vcpus_pin));
    let lvl = match o.loglvl {
        LogLevel::None => "none",
        LogLevel::Error => "error",
        LogLevel::Warning => "warning",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::All => "all",
    };
    let _ = write!(s, " loglvl={lvl}");
    if let Some(p) = o.debug_exit {
        let _ = write!(s, " debug_exit={p:#x}");
    }
    let _ = write!(s, " selftest={}", u8::from(o.selftest));
    let _ = write!(s, " console_timestamps={}", if o.console_timestamps { "boot" } else { "none" });
    let _ = write!(s, " pm_timer={}", if o.pm_timer == PmTimerChoice::Emulated { "emulated" } else { "auto" });
    // `mgmt=dhcp` clears a static address, so it comes first.
    let _ = write!(s, " mgmt={}", if o.mgmt.enabled { "dhcp" } else { "off" });
    if let Some(([a, b, c, d], prefix)) = o.mgmt.static_ip {
        let _ = write!(s, " mgmt_ip={a}.{b}.{c}.{d}/{prefix}");
    }
    if let Some([a, b, c, d]) = o.mgmt.gateway {
        let _ = write!(s, " mgmt_gw={a}.{b}.{c}.{d}");
    }
    let _ = write!(s, " mgmt_port={}", o.mgmt.port);
    if let Some(k) = o.mgmt.key {
        s += " mgmt_key=";
        for b in k {
            let _ = write!(s, "{b:02x}");
        }
    }
    s
}
