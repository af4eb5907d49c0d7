//! The semantic layer: entries → [`DomainConfig`].

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::cpus::{CpuAffinity, CpuSet};
use crate::diag::{Diagnostic, Shown, Sink};
use crate::disk::{DiskSpec, VdevBus};
use crate::syntax::{parse_entries_into, parse_int, Entry, ListItem, Value};
use crate::util::{parse_size, Uuid};
use crate::vif::VifSpec;

/// Longest domain name.
pub const MAX_NAME_LEN: usize = 64;
/// Most vCPUs a domain may have.
pub const MAX_VCPUS: u32 = 128;
/// Largest `memory`/`maxmem`, in MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 24;
/// `memory` when the file does not say (a warning is given).
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// Kind of guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestType {
    /// Kernel entered at its PVH entry point; no device model.
    Pvh,
    /// Unmodified guest from a BIOS in real mode, devices from a stub domain.
    Hvm,
}

/// What to do when the guest powers off, reboots, crashes or its watchdog
/// fires. xl's `coredump-destroy`, `coredump-restart`, `rename-restart` and
/// `soft-reset` are accepted and mapped (with a warning) to `Destroy` or
/// `Restart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Destroy,
    Restart,
    /// Keep the domain (paused, resources held) for inspection.
    Preserve,
}

/// HVM firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// `bios`/`seabios` (the default for HVM).
    Bios,
    /// `uefi`/`ovmf`.
    Uefi,
    /// A firmware image by name/path (`firmware='/path'` or `bios_path_override=`).
    Path(String),
}

/// One letter of `boot=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    /// `a`
    Floppy,
    /// `c`
    Disk,
    /// `d`
    Cdrom,
    /// `n`
    Network,
}

/// `serial=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serial {
    None,
    Pty,
}

/// A checked domain configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    pub name: String,
    pub guest_type: GuestType,
    pub memory_mib: u64,
    /// At least `memory_mib`; equal to it when not given.
    pub maxmem_mib: u64,
    pub vcpus: u32,
    /// At least `vcpus`; equal to it when not given.
    pub maxvcpus: u32,
    /// `cpus=`; `None` = no pinning.
    pub cpus: Option<CpuAffinity>,
    pub kernel: Option<String>,
    pub ramdisk: Option<String>,
    /// `cmdline=`, or (xl's deprecated forms, used only without `cmdline`)
    /// `root=R extra=E` → `"root=R E"`.
    pub cmdline: Option<String>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    pub on_watchdog: Action,
    pub disks: Vec<DiskSpec>,
    pub vifs: Vec<VifSpec>,
    /// `None` = the default (BIOS for HVM; the kernel itself for PVH).
    pub firmware: Option<Firmware>,
    /// `boot=`; empty = default (`cd` for HVM).
    pub boot: Vec<BootDevice>,
    pub serial: Serial,
    /// `device_model_stubdomain_override` as written. Ferrite always runs
    /// HVM device models in a stub domain; `Some(false)` is warned about.
    pub device_model_stubdomain_override: Option<bool>,
    /// Testing only (`device_model_fault_inject_ata = 0xC8`): the stub
    /// domain's IDE model crashes when the guest issues this ATA command,
    /// to show that a device-model crash takes down only its own guest.
    pub device_model_fault_inject: Option<u8>,
    /// Testing only (`device_model_fault_inject_wild = 1`): the fault
    /// injection trigger above makes the stub domain write outside the
    /// memory it may touch instead of panicking, to show that such an
    /// access is faulted (and the stub destroyed with its guest), never
    /// served. Needs `device_model_fault_inject_ata`.
    pub device_model_fault_inject_wild: bool,
    pub uuid: Option<Uuid>,
}

/// Keys xl knows that Ferrite accepts but ignores (warned as unsupported).
const IGNORED_KEYS: &[&str] = &[
    "acpi",
    "apic",
    "pae",
    "hap",
    "hpet",
    "nestedhvm",
    "viridian",
    "stdvga",
    "vga",
    "videoram",
    "vnc",
    "vnclisten",
    "vncdisplay",
    "vncpasswd",
    "vncunused",
    "vncconsole",
    "sdl",
    "opengl",
    "keymap",
    "usb",
    "usbdevice",
    "usbctrl",
    "usbdev",
    "localtime",
    "rtc_timeoffset",
    "soundhw",
    "xen_platform_pci",
    "device_model_version",
    "device_model_override",
    "bootloader",
    "bootloader_args",
    "pci",
    "shadow_memory",
    "timer_mode",
    "on_soft_reset",
    "cpu_weight",
    "cpu_cap",
    "vfb",
    "vkb",
    "channel",
    "tsc_mode",
    "max_grant_frames",
    "max_maptrack_frames",
    "seclabel",
    "pool",
    "driver_domain",
    "e820_host",
];

/// Keys this parser reads.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "type",
    "builder",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "cpus",
    "kernel",
    "ramdisk",
    "cmdline",
    "extra",
    "root",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_watchdog",
    "disk",
    "vif",
    "firmware",
    "bios",
    "bios_path_override",
    "boot",
    "serial",
    "device_model_stubdomain_override",
    "device_model_fault_inject_ata",
    "device_model_fault_inject_wild",
    "uuid",
];

struct Ctx<'s, 'f> {
    values: BTreeMap<String, (Value, u32)>,
    broken: Vec<String>,
    sink: &'s mut Sink<'f>,
}

impl Ctx<'_, '_> {
    fn err(&mut self, line: u32, key: &str, msg: String) {
        self.sink.error(line, Some(key), msg);
    }

    fn warn(&mut self, line: u32, key: &str, msg: String) {
        self.sink.warn(line, Some(key), msg);
    }

    fn is_broken(&self, key: &str) -> bool {
        self.broken.iter().any(|k| k == key)
    }

    fn take(&mut self, key: &str) -> Option<(Value, u32)> {
        self.values.remove(key)
    }

    /// A string value; errors for other kinds.
    fn string(&mut self, key: &str) -> Option<(String, u32)> {
        match self.take(key)? {
            (Value::Str(s), line) => Some((s, line)),
            (v, line) => {
                self.err(
                    line,
                    key,
                    format!("expected a quoted string, found {}", v.kind()),
                );
                None
            }
        }
    }

    /// A non-empty string (path-like values).
    fn nonempty_string(&mut self, key: &str) -> Option<(String, u32)> {
        let (s, line) = self.string(key)?;
        if s.is_empty() {
            self.err(line, key, String::from("must not be empty"));
            return None;
        }
        Some((s, line))
    }

    /// A number; decimal strings (as xl accepts) too. `what` names the
    /// expected thing in messages ("a number of vCPUs").
    fn number(&mut self, key: &str, what: &str) -> Option<(u64, u32)> {
        match self.take(key)? {
            (Value::Int(n), line) => Some((n, line)),
            (Value::Str(s), line) => match parse_int(s.trim()) {
                Ok(n) => Some((n, line)),
                Err(_) => {
                    self.err(line, key, format!("expected {what}, found {}", Shown(&s)));
                    None
                }
            },
            (v, line) => {
                self.err(line, key, format!("expected {what}, found {}", v.kind()));
                None
            }
        }
    }

    /// A size in MiB: a number, or a string with a unit (`"2G"`).
    fn mib(&mut self, key: &str) -> Option<(u64, u32)> {
        let (v, line) = self.take(key)?;
        let mib = match &v {
            Value::Int(n) => Some(*n),
            Value::Str(s) => match parse_size(s, 1 << 20) {
                Ok(bytes) if bytes % (1 << 20) == 0 => Some(bytes >> 20),
                Ok(_) => {
                    self.err(
                        line,
                        key,
                        format!("{} is not a whole number of MiB", Shown(s)),
                    );
                    return None;
                }
                Err(crate::SizeError::Overflow) => {
                    self.err(line, key, format!("{} is too large", Shown(s)));
                    return None;
                }
                Err(_) => None,
            },
            Value::List(_) => None,
        };
        let Some(mib) = mib else {
            let found = match &v {
                Value::Str(s) => format!("{}", Shown(s)),
                other => String::from(other.kind()),
            };
            self.err(
                line,
                key,
                format!("expected a number of MiB, found {found}"),
            );
            return None;
        };
        if mib == 0 {
            self.err(line, key, String::from("must be more than 0 MiB"));
            return None;
        }
        if mib > MAX_MEMORY_MIB {
            self.err(
                line,
                key,
                format!("{mib} MiB is more than the limit of {MAX_MEMORY_MIB} MiB"),
            );
            return None;
        }
        Some((mib, line))
    }

    /// A list of strings; a single string counts as a one-element list.
    fn string_list(&mut self, key: &str) -> Option<Vec<(String, u32)>> {
        match self.take(key)? {
            (Value::Str(s), line) => Some(alloc::vec![(s, line)]),
            (Value::List(items), _) => {
                let mut out = Vec::new();
                for ListItem { value, line } in items {
                    match value {
                        Value::Str(s) => out.push((s, line)),
                        v => self.err(
                            line,
                            key,
                            format!("list items must be quoted strings, found {}", v.kind()),
                        ),
                    }
                }
                Some(out)
            }
            (v, line) => {
                self.err(
                    line,
                    key,
                    format!("expected a list of strings, found {}", v.kind()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<(bool, u32)> {
        let (v, line) = self.take(key)?;
        let b = match &v {
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            Value::Str(s) => match s.as_str() {
                "0" | "false" | "no" | "off" => Some(false),
                "1" | "true" | "yes" | "on" => Some(true),
                _ => None,
            },
            _ => None,
        };
        if b.is_none() {
            let found = match &v {
                Value::Str(s) => format!("{}", Shown(s)),
                Value::Int(n) => format!("{n}"),
                other => String::from(other.kind()),
            };
            self.err(
                line,
                key,
                format!("expected a boolean (0 or 1), found {found}"),
            );
        }
        b.map(|b| (b, line))
    }

    fn action(&mut self, key: &str, default: Action) -> Action {
        let Some((s, line)) = self.string(key) else {
            return default;
        };
        match s.as_str() {
            "destroy" => Action::Destroy,
            "restart" => Action::Restart,
            "preserve" => Action::Preserve,
            "coredump-destroy" | "coredump-restart" | "rename-restart" | "soft-reset" => {
                let mapped = if s == "coredump-destroy" {
                    Action::Destroy
                } else {
                    Action::Restart
                };
                self.warn(
                    line,
                    key,
                    format!(
                        "{} is not supported by Ferrite; using {mapped:?}",
                        Shown(&s)
                    ),
                );
                mapped
            }
            _ => {
                self.err(
                    line,
                    key,
                    format!(
                        "unknown action {} (expected destroy, restart, preserve, coredump-destroy, \
                         coredump-restart, rename-restart or soft-reset)",
                        Shown(&s)
                    ),
                );
                default
            }
        }
    }
}

/// Merges the entries into one value per key: a repeated `key =` warns
/// and the last wins; `key +=` appends to a string or list.
fn merge(entries: Vec<Entry>, sink: &mut Sink<'_>) -> BTreeMap<String, (Value, u32)> {
    let mut map: BTreeMap<String, (Value, u32)> = BTreeMap::new();
    for Entry {
        key,
        value,
        line,
        append,
    } in entries
    {
        match map.get_mut(&key) {
            Some((old, old_line)) if append => match (old, value) {
                (Value::Str(a), Value::Str(b)) => {
                    a.push_str(&b);
                    *old_line = line;
                }
                (Value::List(a), Value::List(b)) => {
                    a.extend(b);
                    *old_line = line;
                }
                (Value::List(a), v @ Value::Str(_)) => {
                    a.push(ListItem { value: v, line });
                    *old_line = line;
                }
                (old, v) => sink.error(
                    line,
                    Some(&key),
                    format!("cannot append {} to {} with '+='", v.kind(), old.kind()),
                ),
            },
            Some((_, old_line)) => {
                sink.warn(
                    line,
                    Some(&key),
                    format!("given again (first on line {old_line}); this value replaces the earlier one"),
                );
                map.insert(key, (value, line));
            }
            None => {
                map.insert(key, (value, line));
            }
        }
    }
    map
}

fn vcpu_count(c: &mut Ctx<'_, '_>, key: &str) -> Option<(u32, u32)> {
    let (n, line) = c.number(key, "a number of vCPUs")?;
    if n == 0 || n > u64::from(MAX_VCPUS) {
        c.err(line, key, format!("{n} is out of range (1..={MAX_VCPUS})"));
        return None;
    }
    Some((n as u32, line))
}

fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(String::from("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{} contains {}; only letters, digits, '_', '.' and '-' are allowed",
            Shown(name),
            Shown(c.encode_utf8(&mut [0; 4]))
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{} is all digits and would be taken for a domain id",
            Shown(name)
        ));
    }
    Ok(())
}

fn build(entries: Vec<Entry>, broken: Vec<String>, sink: &mut Sink<'_>) -> Option<DomainConfig> {
    let values = merge(entries, sink);
    let mut c = Ctx {
        values,
        broken,
        sink,
    };

    // name
    let name = match c.string("name") {
        Some((n, line)) => match valid_name(&n) {
            Ok(()) => Some(n),
            Err(m) => {
                c.err(line, "name", m);
                None
            }
        },
        None => {
            if !c.is_broken("name")
                && !c
                    .sink
                    .diags
                    .iter()
                    .any(|d| d.key.as_deref() == Some("name"))
            {
                c.sink
                    .error(0, Some("name"), String::from("required key is missing"));
            }
            None
        }
    };

    // type / builder
    let builder = c.string("builder");
    let ty = c.string("type");
    let guest_type = match (ty, builder) {
        (Some((t, line)), b) => {
            if let Some((_, bline)) = b {
                c.warn(
                    bline,
                    "builder",
                    String::from("ignored: 'type' is also given"),
                );
            }
            match t.as_str() {
                "pvh" => Some(GuestType::Pvh),
                "hvm" => Some(GuestType::Hvm),
                "pv" => {
                    c.err(
                        line,
                        "type",
                        String::from(
                            "PV guests are not supported by Ferrite; use type = 'pvh' (a PVH-capable kernel) or 'hvm'",
                        ),
                    );
                    None
                }
                _ => {
                    c.err(
                        line,
                        "type",
                        format!("unknown guest type {} (expected 'pvh' or 'hvm')", Shown(&t)),
                    );
                    None
                }
            }
        }
        (None, Some((b, line))) => match b.as_str() {
            "hvm" => Some(GuestType::Hvm),
            "generic" | "linux" => {
                c.err(line, "builder", format!("builder {} means a PV guest, which Ferrite does not support; use type = 'pvh' or 'hvm'", Shown(&b)));
                None
            }
            _ => {
                c.err(
                    line,
                    "builder",
                    format!("unknown builder {} (use type = 'pvh' or 'hvm')", Shown(&b)),
                );
                None
            }
        },
        (None, None) => None, // decided below, once we know about `kernel`
    };

    // memory
    let memory = c.mib("memory");
    let maxmem = c.mib("maxmem");
    let memory_mib = match memory {
        Some((m, _)) => m,
        None => {
            if !c.is_broken("memory")
                && !c
                    .sink
                    .diags
                    .iter()
                    .any(|d| d.key.as_deref() == Some("memory"))
            {
                c.sink.warn(
                    0,
                    Some("memory"),
                    format!("not given; using {DEFAULT_MEMORY_MIB} MiB"),
                );
            }
            DEFAULT_MEMORY_MIB
        }
    };
    let maxmem_mib = match maxmem {
        Some((mm, line)) if mm < memory_mib => {
            c.err(
                line,
                "maxmem",
                format!("{mm} MiB is less than memory ({memory_mib} MiB)"),
            );
            memory_mib
        }
        Some((mm, _)) => mm,
        None => memory_mib,
    };

    // vcpus
    let vcpus = vcpu_count(&mut c, "vcpus").map_or(1, |v| v.0);
    let maxvcpus = match vcpu_count(&mut c, "maxvcpus") {
        Some((m, line)) if m < vcpus => {
            c.err(
                line,
                "maxvcpus",
                format!("{m} is less than vcpus ({vcpus})"),
            );
            vcpus
        }
        Some((m, _)) => m,
        None => vcpus,
    };

    // cpus
    let cpus = match c.take("cpus") {
        None => None,
        Some((Value::Str(s), line)) => match CpuSet::parse(&s) {
            Ok(set) => Some(CpuAffinity::All(set)),
            Err(m) => {
                c.err(line, "cpus", m);
                None
            }
        },
        Some((Value::Int(n), line)) => {
            let mut set = CpuSet::new();
            if u32::try_from(n).map(|n| set.insert(n)) == Ok(true) {
                Some(CpuAffinity::All(set))
            } else {
                c.err(line, "cpus", format!("CPU number {n} is too large"));
                None
            }
        }
        Some((Value::List(items), list_line)) => {
            let mut sets = Vec::new();
            let mut ok = true;
            for ListItem { value, line } in items {
                let parsed = match value {
                    Value::Str(s) => CpuSet::parse(&s),
                    Value::Int(n) => {
                        let mut set = CpuSet::new();
                        if u32::try_from(n).map(|n| set.insert(n)) == Ok(true) {
                            Ok(set)
                        } else {
                            Err(format!("CPU number {n} is too large"))
                        }
                    }
                    Value::List(_) => Err(String::from("nested list")),
                };
                match parsed {
                    Ok(s) => sets.push(s),
                    Err(m) => {
                        c.err(line, "cpus", m);
                        ok = false;
                    }
                }
            }
            if sets.len() > maxvcpus as usize {
                c.warn(
                    list_line,
                    "cpus",
                    format!(
                        "{} per-vCPU entries for {maxvcpus} vCPUs; the extra ones are ignored",
                        sets.len()
                    ),
                );
                sets.truncate(maxvcpus as usize);
            }
            if ok && sets.is_empty() {
                c.err(list_line, "cpus", String::from("empty list"));
                ok = false;
            }
            ok.then_some(CpuAffinity::PerVcpu(sets))
        }
    };

    // kernel, ramdisk, cmdline
    let kernel = c.nonempty_string("kernel");
    let ramdisk = c.nonempty_string("ramdisk").map(|r| r.0);
    let cmdline_v = c.string("cmdline");
    let root = c.string("root");
    let extra = c.string("extra");
    let cmdline = match (cmdline_v, root, extra) {
        (Some((cl, _)), root, extra) => {
            for (k, v) in [("root", root), ("extra", extra)] {
                if let Some((_, line)) = v {
                    c.warn(
                        line,
                        k,
                        String::from("ignored in favour of 'cmdline' (as xl does)"),
                    );
                }
            }
            Some(cl)
        }
        (None, Some((r, _)), Some((e, _))) => Some(format!("root={r} {e}")),
        (None, Some((r, _)), None) => Some(format!("root={r}")),
        (None, None, Some((e, _))) => Some(e),
        (None, None, None) => None,
    };
    if cmdline
        .as_ref()
        .is_some_and(|s| s.len() > crate::syntax::MAX_STRING_LEN)
    {
        c.sink.error(
            0,
            Some("cmdline"),
            format!("longer than {} bytes", crate::syntax::MAX_STRING_LEN),
        );
    }

    // lifecycle actions (xl defaults)
    let on_poweroff = c.action("on_poweroff", Action::Destroy);
    let on_reboot = c.action("on_reboot", Action::Restart);
    let on_crash = c.action("on_crash", Action::Destroy);
    let on_watchdog = c.action("on_watchdog", Action::Destroy);

    // disks
    let mut disks: Vec<DiskSpec> = Vec::new();
    for (spec, line) in c.string_list("disk").unwrap_or_default() {
        match DiskSpec::parse(&spec) {
            Ok((d, warnings)) => {
                for w in warnings {
                    c.warn(line, "disk", w);
                }
                if disks.iter().any(|o| o.vdev.name == d.vdev.name) {
                    c.err(
                        line,
                        "disk",
                        format!("virtual device {} is used twice", Shown(&d.vdev.name)),
                    );
                } else {
                    disks.push(d);
                }
            }
            Err(m) => c.err(line, "disk", format!("{}: {m}", Shown(&spec))),
        }
    }

    // vifs
    let mut vifs: Vec<VifSpec> = Vec::new();
    for (spec, line) in c.string_list("vif").unwrap_or_default() {
        match VifSpec::parse(&spec) {
            Ok((v, warnings)) => {
                for w in warnings {
                    c.warn(line, "vif", w);
                }
                if let Some(mac) = v.mac.filter(|m| vifs.iter().any(|o| o.mac == Some(*m))) {
                    c.err(line, "vif", format!("MAC address {mac} is used twice"));
                } else {
                    vifs.push(v);
                }
            }
            Err(m) => c.err(line, "vif", m),
        }
    }

    // firmware
    let mut firmware = None;
    if let Some((f, line)) = c.nonempty_string("firmware") {
        firmware = match f.as_str() {
            "bios" | "seabios" => Some(Firmware::Bios),
            "uefi" | "ovmf" => Some(Firmware::Uefi),
            "rombios" => {
                c.err(
                    line,
                    "firmware",
                    String::from("rombios is not supported; use 'bios' (SeaBIOS)"),
                );
                None
            }
            "pvgrub32" | "pvgrub64" => {
                c.err(
                    line,
                    "firmware",
                    format!(
                        "{} is a PV firmware; Ferrite does not run PV guests",
                        Shown(&f)
                    ),
                );
                None
            }
            _ => Some(Firmware::Path(f)),
        };
    }
    if let Some((b, line)) = c.nonempty_string("bios") {
        let fw = match b.as_str() {
            "seabios" => Some(Firmware::Bios),
            "ovmf" => Some(Firmware::Uefi),
            _ => {
                c.err(
                    line,
                    "bios",
                    format!("{} is not supported (expected seabios or ovmf)", Shown(&b)),
                );
                None
            }
        };
        if firmware.is_none() {
            firmware = fw;
        }
    }
    if let Some((p, line)) = c.nonempty_string("bios_path_override") {
        if matches!(firmware, Some(Firmware::Uefi | Firmware::Path(_))) {
            c.warn(
                line,
                "bios_path_override",
                String::from("replaces the firmware chosen by 'firmware'/'bios'"),
            );
        }
        firmware = Some(Firmware::Path(p));
    }

    // boot order
    let mut boot = Vec::new();
    if let Some((b, line)) = c.string("boot") {
        for ch in b.chars() {
            let d = match ch {
                'a' => BootDevice::Floppy,
                'c' => BootDevice::Disk,
                'd' => BootDevice::Cdrom,
                'n' => BootDevice::Network,
                _ => {
                    c.err(
                        line,
                        "boot",
                        format!(
                            "{} is not a boot order: use the letters a, c, d and n",
                            Shown(&b)
                        ),
                    );
                    boot.clear();
                    break;
                }
            };
            if boot.contains(&d) {
                c.err(line, "boot", format!("{} names a device twice", Shown(&b)));
                boot.clear();
                break;
            }
            boot.push(d);
        }
        if b.is_empty() {
            c.err(line, "boot", String::from("must not be empty"));
        }
    }

    // serial: a string, or a list with one string (xl allows several; Ferrite one).
    let mut serial = Serial::None;
    if let Some(list) = c.string_list("serial") {
        if list.len() > 1 {
            c.warn(
                list[1].1,
                "serial",
                String::from("only one serial port is supported; the others are ignored"),
            );
        }
        if let Some((s, line)) = list.into_iter().next() {
            serial = match s.as_str() {
                "pty" => Serial::Pty,
                "none" => Serial::None,
                _ => {
                    c.err(
                        line,
                        "serial",
                        format!("{} is not supported (expected 'pty' or 'none')", Shown(&s)),
                    );
                    Serial::None
                }
            };
        }
    }

    let stub = c.boolean("device_model_stubdomain_override");
    let fault_inject = match c.number("device_model_fault_inject_ata", "an ATA command number") {
        Some((n, line)) if n > 0xFF => {
            c.err(line, "device_model_fault_inject_ata", format!("{} is not an ATA command (0 to 0xff)", n));
            None
        }
        Some((n, _)) => Some(n as u8),
        None => None,
    };
    let fault_inject_wild = match c.boolean("device_model_fault_inject_wild") {
        Some((true, line)) if fault_inject.is_none() && !c.is_broken("device_model_fault_inject_ata") => {
            c.warn(
                line,
                "device_model_fault_inject_wild",
                String::from("has no effect without device_model_fault_inject_ata (its trigger)"),
            );
            true
        }
        Some((b, _)) => b,
        None => false,
    };
    let uuid = match c.string("uuid") {
        Some((u, line)) => match Uuid::parse(&u) {
            Some(u) => Some(u),
            None => {
                c.err(
                    line,
                    "uuid",
                    format!(
                        "{} is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                        Shown(&u)
                    ),
                );
                None
            }
        },
        None => None,
    };

    // Leftover keys.
    let leftovers: Vec<(String, u32)> = core::mem::take(&mut c.values)
        .into_iter()
        .map(|(k, (_, line))| (k, line))
        .collect();
    for (k, line) in leftovers {
        debug_assert!(!KNOWN_KEYS.contains(&k.as_str()));
        if IGNORED_KEYS.contains(&k.as_str()) {
            c.warn(line, &k, String::from("not supported by Ferrite; ignored"));
        } else {
            c.warn(line, &k, String::from("unknown key; ignored"));
        }
    }

    // Decide the type when neither `type` nor `builder` was given.
    let guest_type = match guest_type {
        Some(t) => Some(t),
        None if c.is_broken("type") || c.is_broken("builder") => None,
        None if c
            .sink
            .diags
            .iter()
            .any(|d| matches!(d.key.as_deref(), Some("type" | "builder"))) =>
        {
            None
        }
        None => {
            let (t, why) = if kernel.is_some() {
                (GuestType::Pvh, "a kernel is given, so using 'pvh' (xl would default to 'pv', which Ferrite does not support)")
            } else {
                (GuestType::Hvm, "no kernel is given, so using 'hvm'")
            };
            c.sink.warn(0, Some("type"), format!("not given; {why}"));
            Some(t)
        }
    };

    // Cross-checks.
    if let Some(t) = guest_type {
        match t {
            GuestType::Pvh => {
                if kernel.is_none() && firmware.is_none() && !c.is_broken("kernel") {
                    c.sink.error(
                        0,
                        Some("kernel"),
                        String::from("a PVH guest needs a kernel"),
                    );
                }
                if !boot.is_empty() {
                    c.sink
                        .warn(0, Some("boot"), String::from("ignored for a PVH guest"));
                }
                for d in &disks {
                    if d.vdev.bus == VdevBus::Ide || d.devtype == crate::disk::DevType::Cdrom {
                        c.sink.warn(
                            0,
                            Some("disk"),
                            format!("{}: a PVH guest has no emulated IDE/CD-ROM; it sees a Xen virtual disk", Shown(&d.vdev.name)),
                        );
                    }
                }
            }
            GuestType::Hvm => {
                if let Some((false, line)) = stub {
                    c.warn(
                        line,
                        "device_model_stubdomain_override",
                        String::from(
                            "Ferrite always runs the device model in a stub domain; 0 is ignored",
                        ),
                    );
                }
            }
        }
    }
    Some(DomainConfig {
        name: name?,
        guest_type: guest_type?,
        memory_mib,
        maxmem_mib,
        vcpus,
        maxvcpus,
        cpus,
        kernel: kernel.map(|k| k.0),
        ramdisk,
        cmdline,
        on_poweroff,
        on_reboot,
        on_crash,
        on_watchdog,
        disks,
        vifs,
        firmware,
        boot,
        serial,
        device_model_stubdomain_override: stub.map(|s| s.0),
        device_model_fault_inject: fault_inject,
        device_model_fault_inject_wild: fault_inject_wild,
        uuid,
    })
}

/// Parses a domain configuration file.
///
/// `file_name` is only used in diagnostics. On success returns the
/// configuration and the warnings; on failure every diagnostic found
/// (errors and warnings, sorted by line): the parser does not stop at the
/// first error.
pub fn parse(
    file_name: &str,
    text: &[u8],
) -> Result<(DomainConfig, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut sink = Sink::new(file_name);
    let (entries, broken) = parse_entries_into(text, &mut sink);
    let cfg = build(entries, broken, &mut sink);
    let had_errors = sink.has_errors();
    let diags = sink.finish();
    match cfg {
        Some(cfg) if !had_errors => Ok((cfg, diags)),
        _ => Err(diags),
    }
}

#[cfg(test)]
mod fault_injection_tests {
    use super::*;
    use alloc::string::ToString;

    const HVM: &str = "name='a'\ntype='hvm'\nmemory=64\n";

    fn parsed(extra: &str) -> Result<(DomainConfig, Vec<String>), Vec<String>> {
        let text = format!("{HVM}{extra}\n");
        let strings = |d: &[Diagnostic]| d.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        match parse("t.cfg", text.as_bytes()) {
            Ok((c, d)) => Ok((c, strings(&d))),
            Err(d) => Err(strings(&d)),
        }
    }

    #[test]
    fn fault_inject_keys() {
        // Neither key: no fault injection.
        let (c, d) = parsed("").unwrap();
        assert_eq!((c.device_model_fault_inject, c.device_model_fault_inject_wild), (None, false));
        assert!(d.is_empty(), "{d:?}");
        // The ATA trigger, decimal or hex, with and without the wild switch.
        let (c, d) = parsed("device_model_fault_inject_ata = 236").unwrap();
        assert_eq!((c.device_model_fault_inject, c.device_model_fault_inject_wild), (Some(0xEC), false));
        assert!(d.is_empty(), "{d:?}");
        let (c, d) = parsed("device_model_fault_inject_ata = 0xEC\ndevice_model_fault_inject_wild = 1").unwrap();
        assert_eq!((c.device_model_fault_inject, c.device_model_fault_inject_wild), (Some(0xEC), true));
        assert!(d.is_empty(), "{d:?}");
        let (c, _) = parsed("device_model_fault_inject_ata = 0xEC\ndevice_model_fault_inject_wild = 'no'").unwrap();
        assert!(!c.device_model_fault_inject_wild);
        // The wild switch alone has no trigger: accepted with a warning.
        let (c, d) = parsed("device_model_fault_inject_wild = 1").unwrap();
        assert!(c.device_model_fault_inject_wild);
        assert!(d.iter().any(|s| s.contains("device_model_fault_inject_wild") && s.contains("no effect")), "{d:?}");
        // Not a boolean; not an ATA command.
        let e = parsed("device_model_fault_inject_ata = 1\ndevice_model_fault_inject_wild = 2").unwrap_err();
        assert!(e.iter().any(|s| s.contains("expected a boolean")), "{e:?}");
        let e = parsed("device_model_fault_inject_ata = 0x100").unwrap_err();
        assert!(e.iter().any(|s| s.contains("not an ATA command")), "{e:?}");
    }
}
