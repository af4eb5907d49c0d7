//! xl's output formats, column for column (`xl list`, `xl info`,
//! `xl uptime`, `xl vcpu-list`), so scripts written for Xen's xl can read
//! Ferrite's; and xl's CPU list syntax for `vcpu-pin`.

use anyhow::{bail, Result};
use ferrite_config::CpuSet;
use ferrite_mgmt::{DomainInfo, HostInfo, UptimeInfo, VcpuInfo, VifInfo};
use std::fmt::Write as _;

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `xl list`: `%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f` under xl's
/// header line (which has tabs where the rows have spaces, as in xl).
pub fn list(domains: &[DomainInfo]) -> String {
    let mut s = String::from("Name                                        ID   Mem VCPUs\tState\tTime(s)\n");
    for d in domains {
        let _ = writeln!(
            s,
            "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
            d.name,
            d.id,
            d.mem_mib,
            d.vcpus,
            d.state.xl(),
            seconds(d.cpu_time_ns)
        );
    }
    s
}

/// `xl list -l`: the domains as a JSON array (xl prints each domain's
/// full configuration; the service reports what `list` shows).
pub fn list_long(domains: &[DomainInfo]) -> String {
    let mut s = String::from("[\n");
    for (i, d) in domains.iter().enumerate() {
        let fields = [
            ("domid", d.id.to_string()),
            ("name", json_string(&d.name)),
            ("memory_mib", d.mem_mib.to_string()),
            ("vcpus", d.vcpus.to_string()),
            ("state", json_string(&d.state.xl())),
            ("cpu_time", format!("{:.1}", seconds(d.cpu_time_ns))),
        ];
        s.push_str("    {\n");
        for (j, (key, value)) in fields.iter().enumerate() {
            let comma = if j + 1 < fields.len() { "," } else { "" };
            let _ = writeln!(s, "        \"{key}\": {value}{comma}");
        }
        s.push_str(if i + 1 < domains.len() { "    },\n" } else { "    }\n" });
    }
    s.push_str("]\n");
    s
}

fn json_string(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// xl's uptime: `H:MM:SS`, `1 day, H:MM:SS`, `N days, H:MM:SS` (hours
/// padded to two columns).
pub fn uptime_string(ns: u64) -> String {
    let total = ns / 1_000_000_000;
    let (day, hour, min, sec) = (total / 86400, total % 86400 / 3600, total % 3600 / 60, total % 60);
    match day {
        0 => format!("{hour:2}:{min:02}:{sec:02}"),
        1 => format!("1 day, {hour:2}:{min:02}:{sec:02}"),
        d => format!("{d} days, {hour:2}:{min:02}:{sec:02}"),
    }
}

/// `xl uptime`: `%-33s %4d %s`.
pub fn uptime(entries: &[UptimeInfo]) -> String {
    let mut s = format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime");
    for e in entries {
        let _ = writeln!(s, "{:<33} {:>4} {}", e.name, e.id, uptime_string(e.uptime_ns));
    }
    s
}

/// `xl info`'s `key : value` lines, keys padded to 23 columns. `host` is
/// the address `ferrite xl` talks to.
pub fn info_lines(host: &str, info: &HostInfo) -> Vec<(&'static str, String)> {
    let release = info.version.rsplit(' ').next().unwrap_or(&info.version).to_string();
    vec![
        ("host", host.to_string()),
        ("release", release),
        ("version", info.version.clone()),
        ("machine", "x86_64".to_string()),
        ("nr_cpus", info.host_cpus.to_string()),
        ("max_cpu_id", info.host_cpus.saturating_sub(1).to_string()),
        ("total_memory", info.total_mib.to_string()),
        ("free_memory", info.free_mib.to_string()),
        ("free_bytes", info.free_bytes.to_string()),
        ("heap_used_bytes", info.heap_used_bytes.to_string()),
        ("xen_version", info.version.clone()),
        ("xen_caps", info.capabilities.join(" ")),
        ("xen_commandline", info.cmdline.clone()),
        ("uptime", uptime_string(info.uptime_ns)),
    ]
}

/// `xl info`, or with `field`, as xl does, the values of the keys that
/// start with it.
pub fn info(host: &str, info: &HostInfo, field: Option<&str>) -> String {
    let mut s = String::new();
    for (key, value) in info_lines(host, info) {
        match field {
            None => {
                let _ = writeln!(s, "{key:<23}: {value}");
            }
            Some(f) if key.starts_with(f) => {
                let _ = writeln!(s, "{value}");
            }
            Some(_) => {}
        }
    }
    s
}

/// xl's CPU map: `all`, `none`, or ranges such as `0-2,5`, over the
/// host's `host_cpus` CPUs.
pub fn cpumap(mask: u64, host_cpus: u32) -> String {
    let n = host_cpus.min(64);
    let host_mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mask = mask & host_mask;
    if mask == 0 {
        return "none".into();
    }
    if mask == host_mask {
        return "all".into();
    }
    let mut parts = Vec::new();
    let mut cpu = 0;
    while cpu < n {
        if mask & (1 << cpu) == 0 {
            cpu += 1;
            continue;
        }
        let start = cpu;
        while cpu + 1 < n && mask & (1 << (cpu + 1)) != 0 {
            cpu += 1;
        }
        parts.push(if start == cpu { start.to_string() } else { format!("{start}-{cpu}") });
        cpu += 1;
    }
    parts.join(",")
}

/// `xl vcpu-list`: header `%-32s %5s %5s %5s %5s %9s %s`, rows
/// `%-32s %5u %5u%5u %3c%c%c %9.1f  HARD / SOFT` (Ferrite has no soft
/// affinity: always `all`).
pub fn vcpu_list(vcpus: &[VcpuInfo], host_cpus: u32) -> String {
    let mut s = format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} {}\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)"
    );
    for v in vcpus {
        let cpu = v.pcpu.map_or_else(|| "-".to_string(), |c| c.to_string());
        let _ = writeln!(
            s,
            "{:<32} {:>5} {:>5}{:>5}   {} {:>9.1}  {} / all",
            v.dom_name,
            v.dom_id,
            v.vcpu,
            cpu,
            v.state.xl(),
            seconds(v.time_ns),
            cpumap(v.affinity, host_cpus)
        );
    }
    s
}

/// `xl network-list DOM...`: one line per NIC, in each domain's `vif`
/// order. xl's own columns (back-end domain, event channel, ring
/// references, xenstore path) have no meaning here; Ferrite shows the
/// bridge, the model and the counters instead (TX is what the guest sent;
/// a drop count with `(Ns)` includes N spoofed frames).
pub fn network_list(rows: &[(String, VifInfo)]) -> String {
    let mut s = format!(
        "{:<16} {:<4}{:<19}{:<12}{:<12}{:<6}{:>9} {:>12} {:>9} {:>12} {:>10} {:>8}\n",
        "Name", "Idx", "Mac Addr.", "Bridge", "Model", "Link", "TX pkts", "TX bytes", "RX pkts", "RX bytes", "TX drop", "RX drop"
    );
    for (dom, v) in rows {
        let m = v.mac;
        let mac = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
        let tx_drop = if v.tx_spoofed > 0 { format!("{}({}s)", v.tx_dropped, v.tx_spoofed) } else { v.tx_dropped.to_string() };
        let _ = writeln!(
            s,
            "{:<16} {:<4}{:<19}{:<12}{:<12}{:<6}{:>9} {:>12} {:>9} {:>12} {:>10} {:>8}",
            dom,
            v.index,
            mac,
            v.bridge,
            v.model,
            if v.connected { "up" } else { "down" },
            v.tx_packets,
            v.tx_bytes,
            v.rx_packets,
            v.rx_bytes,
            tx_drop,
            v.rx_dropped
        );
    }
    s
}

/// A `vcpu-pin` CPU list (`all`, `0-1,3`, `^2`, as xl reads them) as the
/// protocol's 64-bit mask.
pub fn parse_cpus(text: &str) -> Result<u64> {
    let set = CpuSet::parse(text).map_err(|e| anyhow::anyhow!("CPU list {text:?}: {e}"))?;
    // `all` and exclusions from it include every CPU number; the mask
    // covers the first 64, which is all the protocol can name.
    let from_all = set.contains(64) && set.contains(ferrite_config::cpus::MAX_CPUS as u32 - 1);
    let mut mask = 0u64;
    for cpu in set.iter() {
        if cpu < 64 {
            mask |= 1 << cpu;
        } else if !from_all {
            bail!("CPU list {text:?}: CPU {cpu} is beyond the 64 CPUs Ferrite can pin to");
        }
    }
    if mask == 0 {
        bail!("CPU list {text:?} selects no CPU below 64");
    }
    Ok(mask)
}
