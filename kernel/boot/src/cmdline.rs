//! The hypervisor command line, in Xen's style.
//!
//! Tokens are separated by whitespace (no quoting). Each is `key=value` or a
//! bare `key`; for boolean options a bare `key` means true and `no-key`
//! false. In option names `-` and `_` are interchangeable, as in Xen.
//! Unknown or malformed options never abort parsing: they produce a
//! [`Diagnostic`] and the option keeps its default (or earlier) value. Later
//! occurrences of an option override earlier ones.
//!
//! | option | syntax | default |
//! | --- | --- | --- |
//! | `console=` | comma list of `com1`, `com2`, `vga`, `none` | `com1` |
//! | `com1=` | `<baud>|auto[/<clock>][,<data><parity><stop>]` e.g. `115200,8n1` | `115200,8n1` |
//! | `dom0_mem=` | comma list of `<size>`, `min:<size>`, `max:<size>` | unset |
//! | `dom0_max_vcpus=` | `<n>`, `<min>-<max>`, `<min>-` | unset |
//! | `dom0_vcpus_pin` | boolean | false |
//! | `dom0_disk=` | a disk in xl's syntax, e.g. `phy:disk0,xvda,w`; repeat for more (Ferrite-specific) | none |
//! | `uplink=` | a bridge name: the host NIC joins that bridge, so its guests reach the outside (Ferrite-specific) | none |
//! | `loglvl=` | `none|error|warning|info|debug|all` `[/<level>]` | `info` |
//! | `debug_exit=` | I/O port, `0x..` or decimal, nonzero | unset |
//! | `selftest=` | boolean | true |
//!
//! Booleans accept `1/0`, `yes/no`, `true/false`, `on/off`,
//! `enable/disable`.
//!
//! Sizes follow Xen's `parse_size_and_unit`: a number (decimal, or hex with
//! `0x`) with an optional suffix `B`, `K`, `M`, `G` or `T` (either case,
//! powers of 1024). **Without a suffix the number is in KiB**, as in Xen
//! (`dom0_mem=524288` is 512 MiB), so Xen command lines keep their meaning.
//! A leading `-` in `dom0_mem` means "all host memory but this much", as in
//! Xen. Xen's percentage forms (`25%`) are not supported.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

mod mgmt;
pub use mgmt::{parse_key, redact, MgmtOptions, DEFAULT_PORT as DEFAULT_MGMT_PORT};

/// Where console output goes (`console=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleTarget {
    Com1,
    Com2,
    Vga,
}

/// Serial parity (`com1=...,8n1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Serial line settings from `com1=<baud>,<data><parity><stop>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineConfig {
    /// None keeps what the firmware or boot loader set (`auto`).
    pub baud: Option<u32>,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig { baud: Some(115_200), data_bits: 8, parity: Parity::None, stop_bits: 1 }
    }
}

/// A memory size in `dom0_mem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemSize {
    /// This many bytes.
    Bytes(u64),
    /// All host memory except this many bytes (`-<size>`).
    AllBut(u64),
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (neg, v) = match *self {
            MemSize::Bytes(v) => ("", v),
            MemSize::AllBut(v) => ("-", v),
        };
        f.write_str(neg)?;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if v != 0 && v % (1u64 << shift) == 0 {
                return write!(f, "{}{}", v >> shift, unit);
            }
        }
        write!(f, "{}B", v)
    }
}

/// `dom0_mem=`: the initial amount and the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dom0Mem {
    pub amount: Option<MemSize>,
    pub min: Option<MemSize>,
    pub max: Option<MemSize>,
}

impl fmt::Display for Dom0Mem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (prefix, v) in [("", self.amount), ("min:", self.min), ("max:", self.max)] {
            if let Some(v) = v {
                write!(f, "{}{}{}", sep, prefix, v)?;
                sep = ",";
            }
        }
        Ok(())
    }
}

/// `dom0_max_vcpus=`: `N` is `min = max = N`; `min-` leaves max open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuRange {
    pub min: u32,
    pub max: Option<u32>,
}

/// `loglvl=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    None,
    Error,
    Warning,
    Info,
    Debug,
    All,
}

impl LogLevel {
    pub fn to_level_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::None => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warning => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::All => log::LevelFilter::Trace,
        }
    }

    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "none" => LogLevel::None,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "all" => LogLevel::All,
            _ => return None,
        })
    }
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Console outputs; empty for `console=none`.
    pub console: Vec<ConsoleTarget>,
    pub com1: LineConfig,
    pub dom0_mem: Option<Dom0Mem>,
    pub dom0_max_vcpus: Option<VcpuRange>,
    pub dom0_vcpus_pin: bool,
    /// `dom0_disk=`, in order: dom0's virtio-blk disks, each in xl's disk
    /// syntax (checked when dom0 is built, by the config crate's parser).
    pub dom0_disks: Vec<String>,
    /// `uplink=BRIDGE`: the bridge the host NIC joins (as `brconfig
    /// bridge0 add wm0` does in a NetBSD dom0).
    pub uplink: Option<String>,
    pub loglvl: LogLevel,
    /// Port of QEMU's isa-debug-exit device: when set, the hypervisor
    /// reports its result there (Ferrite-specific).
    pub debug_exit: Option<u16>,
    /// Run the built-in self-test guest at boot (Ferrite-specific).
    pub selftest: bool,
    /// `console_timestamps=boot`: prefix console lines with the time since
    /// the hypervisor started (Xen's option; `none` and `boot` supported).
    pub console_timestamps: bool,
    /// `pm_timer=`: which ACPI PM timer guests read (Ferrite-specific).
    pub pm_timer: PmTimerChoice,
    /// `mgmt=`, `mgmt_ip=`, `mgmt_gw=`, `mgmt_port=`, `mgmt_key=`: the
    /// management service (Ferrite-specific).
    pub mgmt: MgmtOptions,
}

/// Which ACPI PM timer guests read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PmTimerChoice {
    /// The host's when Ferrite itself runs under a hypervisor (its exits
    /// are too slow for guests to calibrate against an emulated one),
    /// else the emulated one.
    #[default]
    Auto,
    /// Always the emulated one (what the exit benchmarks measure).
    Emulated,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            console: vec![ConsoleTarget::Com1],
            com1: LineConfig::default(),
            dom0_mem: None,
            dom0_max_vcpus: None,
            dom0_vcpus_pin: false,
            dom0_disks: Vec::new(),
            uplink: None,
            loglvl: LogLevel::Info,
            debug_exit: None,
            selftest: true,
            console_timestamps: false,
            pm_timer: PmTimerChoice::Auto,
            mgmt: MgmtOptions::default(),
        }
    }
}

impl Options {
    /// Whether output goes to the serial port (COM1).
    pub fn console_serial(&self) -> bool {
        self.console.contains(&ConsoleTarget::Com1)
    }

    /// The COM1 line settings.
    pub fn com1_line(&self) -> LineConfig {
        self.com1
    }

    /// The `log` crate's filter for `loglvl=`.
    pub fn log_level(&self) -> log::LevelFilter {
        self.loglvl.to_level_filter()
    }
}

/// What was wrong with one option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not an option Ferrite knows.
    Unknown,
    /// The value could not be used; `expected` describes the syntax.
    BadValue { value: String, expected: &'static str },
    /// The option needs `=value`.
    MissingValue { expected: &'static str },
    /// `no-<option>` for an option that is not boolean.
    NotBoolean,
    /// Part of the value was accepted, this part ignored.
    PartIgnored { part: String, why: &'static str },
}

/// One complaint about the command line, naming the option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The option's name as written (without `=value`).
    pub option: String,
    pub problem: Problem,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Unknown => write!(f, "unknown option '{}' ignored", self.option),
            Problem::BadValue { value, expected } => write!(
                f,
                "bad value '{}' for {} (expected {}); using the default",
                value, self.option, expected
            ),
            Problem::MissingValue { expected } => {
                write!(f, "option '{}' needs a value (expected {}); using the default", self.option, expected)
            }
            Problem::NotBoolean => write!(f, "option '{}' is not a boolean; 'no-{}' ignored", self.option, self.option),
            Problem::PartIgnored { part, why } => write!(f, "{}: '{}' ignored ({})", self.option, part, why),
        }
    }
}

const EXPECT_BOOL: &str = "a boolean: 1/0, yes/no, true/false, on/off";
const EXPECT_CONSOLE: &str = "a list of com1, com2, vga, none";
const EXPECT_COM1: &str = "<baud>[,<data><parity><stop>] like 115200,8n1, with a baud rate dividing 115200 or auto";
const EXPECT_DOM0_MEM: &str = "a size like 512M, or 512M,max:1G";
const EXPECT_VCPUS: &str = "a count like 4 or a range like 1-4";
const EXPECT_LOGLVL: &str = "none, error, warning, info, debug or all";
const EXPECT_PORT: &str = "a nonzero I/O port like 0xf4";

/// Parses a boolean value as Xen's `parse_bool` does.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "yes" | "true" | "on" | "enable" => Some(true),
        "0" | "no" | "false" | "off" | "disable" => Some(false),
        _ => None,
    }
}

/// Parses an unsigned number, decimal or hex with `0x`, without sign.
fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A size as Xen's `parse_size_and_unit`: number plus optional `B/K/M/G/T`
/// suffix; no suffix means KiB.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'B' | b'b' if !s.starts_with("0x") && !s.starts_with("0X") => (&s[..s.len() - 1], 0),
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 10),
    };
    let v = parse_u64(num)?;
    v.checked_mul(1u64 << shift)
}

fn parse_mem_size(s: &str) -> Option<MemSize> {
    match s.strip_prefix('-') {
        Some(rest) => parse_size(rest).map(MemSize::AllBut),
        None => parse_size(s).map(MemSize::Bytes),
    }
}

fn parse_dom0_mem(v: &str) -> Option<Dom0Mem> {
    let mut d = Dom0Mem::default();
    for item in v.split(',') {
        if let Some(x) = item.strip_prefix("min:") {
            d.min = Some(parse_mem_size(x)?);
        } else if let Some(x) = item.strip_prefix("max:") {
            d.max = Some(parse_mem_size(x)?);
        } else {
            d.amount = Some(parse_mem_size(item)?);
        }
    }
    if let (Some(MemSize::Bytes(lo)), Some(MemSize::Bytes(hi))) = (d.min, d.max) {
        if lo > hi {
            return None;
        }
    }
    Some(d)
}

fn parse_vcpus(v: &str) -> Option<VcpuRange> {
    let num = |s: &str| -> Option<u32> {
        let n = u32::try_from(parse_u64(s)?).ok()?;
        (n >= 1).then_some(n)
    };
    let r = match v.split_once('-') {
        None => {
            let n = num(v)?;
            VcpuRange { min: n, max: Some(n) }
        }
        Some((lo, "")) | Some((lo, "max")) => VcpuRange { min: num(lo)?, max: None },
        Some((lo, hi)) => {
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return None;
            }
            VcpuRange { min: lo, max: Some(hi) }
        }
    };
    Some(r)
}

fn parse_loglvl(v: &str) -> Option<LogLevel> {
    // `<level>/<rate-limited level>`: the second part is checked but unused.
    let (lvl, guest) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    if let Some(g) = guest {
        LogLevel::parse(g)?;
    }
    LogLevel::parse(lvl)
}

fn parse_port(v: &str) -> Option<u16> {
    let p = u16::try_from(parse_u64(v)?).ok()?;
    (p != 0).then_some(p)
}

/// Parses `com1=`. Returns the line settings and any ignored trailing part
/// (I/O base, IRQ, ... which Ferrite does not take from the command line).
fn parse_com1(v: &str) -> Option<(LineConfig, Option<&str>)> {
    let mut cfg = LineConfig::default();
    let mut parts = v.splitn(3, ',');
    let speed = parts.next()?;
    // `<baud>/<clock hz>`: the UART clock is the PC standard; ignored.
    let baud = speed.split_once('/').map_or(speed, |(b, _)| b);
    cfg.baud = if baud == "auto" {
        None
    } else {
        let b = u32::try_from(parse_u64(baud)?).ok()?;
        if b == 0 || b > 115_200 || 115_200 % b != 0 {
            return None;
        }
        Some(b)
    };
    if let Some(dps) = parts.next().filter(|s| !s.is_empty()) {
        let d = dps.as_bytes();
        if d.len() != 3 {
            return None;
        }
        cfg.data_bits = match d[0] {
            b'5'..=b'8' => d[0] - b'0',
            _ => return None,
        };
        cfg.parity = match d[1] {
            b'n' | b'N' => Parity::None,
            b'o' | b'O' => Parity::Odd,
            b'e' | b'E' => Parity::Even,
            _ => return None,
        };
        cfg.stop_bits = match d[2] {
            b'1' => 1,
            b'2' => 2,
            _ => return None,
        };
    }
    Some((cfg, parts.next().filter(|s| !s.is_empty())))
}

/// Parses `console=`: known entries are kept, unknown ones reported.
fn parse_console(v: &str, option: &str, diags: &mut Vec<Diagnostic>) -> Option<Vec<ConsoleTarget>> {
    let mut out = Vec::new();
    let mut any_valid = false;
    for item in v.split(',') {
        let t = match item {
            "com1" => ConsoleTarget::Com1,
            "com2" => ConsoleTarget::Com2,
            "vga" => ConsoleTarget::Vga,
            "none" => {
                any_valid = true;
                continue;
            }
            _ => {
                diags.push(Diagnostic {
                    option: option.to_owned(),
                    problem: Problem::PartIgnored { part: item.to_owned(), why: "unknown console" },
                });
                continue;
            }
        };
        any_valid = true;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    any_valid.then_some(out)
}

/// Parses the hypervisor command line. Never fails: problems are returned
/// as diagnostics and the affected options keep their defaults.
pub fn parse(s: &str) -> (Options, Vec<Diagnostic>) {
    let mut o = Options::default();
    let mut diags = Vec::new();
    for token in s.split_ascii_whitespace() {
        let (raw_name, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let (negated, base) = match raw_name.strip_prefix("no-") {
            Some(rest) if !rest.is_empty() => (true, rest),
            _ => (false, raw_name),
        };
        let name: String = base.chars().map(|c| if c == '-' { '_' } else { c }).collect();
        let diag = |problem| Diagnostic { option: base.to_owned(), problem };
        let bad = |expected: &'static str| {
            diag(match value {
                Some(v) => Problem::BadValue { value: v.to_owned(), expected },
                None => Problem::MissingValue { expected },
            })
        };

        // Booleans.
        let bool_slot = match name.as_str() {
            "dom0_vcpus_pin" => Some(&mut o.dom0_vcpus_pin),
            "selftest" => Some(&mut o.selftest),
            _ => None,
        };
        if let Some(slot) = bool_slot {
            let v = match (negated, value) {
                (false, None) => Some(true),
                (false, Some(v)) => parse_bool(v),
                // `no-key=value` is not a thing.
                (true, None) => Some(false),
                (true, Some(_)) => None,
            };
            match v {
                Some(b) => *slot = b,
                None if negated => diags.push(diag(Problem::BadValue {
                    value: token.to_owned(),
                    expected: "no-<option> without a value",
                })),
                None => diags.push(bad(EXPECT_BOOL)),
            }
            continue;
        }

        if name == "dom0_disk" {
            match value {
                Some(v) if !v.is_empty() => o.dom0_disks.push(v.to_owned()),
                _ => diags.push(bad("a disk in xl syntax, e.g. phy:disk0,xvda,w")),
            }
            continue;
        }
        if name == "uplink" {
            match value {
                Some(v) if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => {
                    o.uplink = Some(v.to_owned())
                }
                _ => diags.push(bad("a bridge name, e.g. bridge0")),
            }
            continue;
        }
        if name == "pm_timer" {
            match value {
                Some("auto") => o.pm_timer = PmTimerChoice::Auto,
                Some("emulated") => o.pm_timer = PmTimerChoice::Emulated,
                _ => diags.push(bad("auto or emulated")),
            }
            continue;
        }
        if let Some(slot) = name.strip_prefix("mgmt") {
            let done = match (slot, value) {
                ("", Some("dhcp")) => {
                    o.mgmt.enabled = true;
                    o.mgmt.static_ip = None;
                    true
                }
                ("", Some("off")) => {
                    o.mgmt.enabled = false;
                    true
                }
                ("", _) => {
                    diags.push(bad(mgmt::EXPECT_MGMT));
                    true
                }
                ("_ip", v) => {
                    match v.and_then(mgmt::parse_ip_prefix) {
                        Some(ip) => o.mgmt.static_ip = Some(ip),
                        None => diags.push(bad(mgmt::EXPECT_IP_PREFIX)),
                    }
                    true
                }
                ("_gw", v) => {
                    match v.and_then(mgmt::parse_ipv4) {
                        Some(ip) => o.mgmt.gateway = Some(ip),
                        None => diags.push(bad(mgmt::EXPECT_IP)),
                    }
                    true
                }
                ("_port", v) => {
                    match v.and_then(mgmt::parse_tcp_port) {
                        Some(p) => o.mgmt.port = p,
                        None => diags.push(bad(mgmt::EXPECT_TCP_PORT)),
                    }
                    true
                }
                ("_key", v) => {
                    match v.and_then(mgmt::parse_key) {
                        Some(k) => o.mgmt.key = Some(k),
                        // The value is not repeated: it may be most of a secret.
                        None => diags.push(Diagnostic {
                            option: base.to_owned(),
                            problem: Problem::BadValue { value: "<hidden>".to_owned(), expected: mgmt::EXPECT_KEY },
                        }),
                    }
                    true
                }
                _ => false,
            };
            if done {
                continue;
            }
        }
        if name == "console_timestamps" {
            match value {
                None | Some("boot") => o.console_timestamps = true,
                Some("none") => o.console_timestamps = false,
                Some(_) => diags.push(bad("none or boot")),
            }
            continue;
        }
        let known = matches!(name.as_str(), "console" | "com1" | "dom0_mem" | "dom0_max_vcpus" | "loglvl" | "debug_exit");
        if !known {
            diags.push(Diagnostic { option: raw_name.to_owned(), problem: Problem::Unknown });
            continue;
        }
        if negated {
            diags.push(diag(Problem::NotBoolean));
            continue;
        }
        let Some(v) = value else {
            let expected = match name.as_str() {
                "console" => EXPECT_CONSOLE,
                "com1" => EXPECT_COM1,
                "dom0_mem" => EXPECT_DOM0_MEM,
                "dom0_max_vcpus" => EXPECT_VCPUS,
                "loglvl" => EXPECT_LOGLVL,
                _ => EXPECT_PORT,
            };
            diags.push(bad(expected));
            continue;
        };
        match name.as_str() {
            "console" => match parse_console(v, base, &mut diags) {
                Some(c) => o.console = c,
                None => diags.push(bad(EXPECT_CONSOLE)),
            },
            "com1" => match parse_com1(v) {
                Some((cfg, rest)) => {
                    o.com1 = cfg;
                    if let Some(rest) = rest {
                        diags.push(diag(Problem::PartIgnored {
                            part: rest.to_owned(),
                            why: "only the speed and line format are configurable",
                        }));
                    }
                }
                None => diags.push(bad(EXPECT_COM1)),
            },
            "dom0_mem" => match parse_dom0_mem(v) {
                Some(d) => o.dom0_mem = Some(d),
                None => diags.push(bad(EXPECT_DOM0_MEM)),
            },
            "dom0_max_vcpus" => match parse_vcpus(v) {
                Some(r) => o.dom0_max_vcpus = Some(r),
                None => diags.push(bad(EXPECT_VCPUS)),
            },
            "loglvl" => match parse_loglvl(v) {
                Some(l) => o.loglvl = l,
                None => diags.push(bad(EXPECT_LOGLVL)),
            },
            _ => match parse_port(v) {
                Some(p) => o.debug_exit = Some(p),
                None => diags.push(bad(EXPECT_PORT)),
            },
        }
    }
    (o, diags)
}

#[cfg(test)]
mod tests;
