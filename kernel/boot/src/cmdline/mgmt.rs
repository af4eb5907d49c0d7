//! The management service's options (Ferrite-specific): whether the
//! hypervisor goes on the network for `ferrite xl`, how it gets its
//! address, its port and the shared secret.
//!
//! - `mgmt=dhcp` (default) or `mgmt=off`;
//! - `mgmt_ip=A.B.C.D/PREFIX` a static address instead of DHCP, with
//!   `mgmt_gw=A.B.C.D` its default gateway (optional);
//! - `mgmt_port=N` the TCP port (default 7070);
//! - `mgmt_key=<64 hex digits>` the 32-byte secret clients prove they know.
//!   It never appears in the log: [`redact`] hides it from the command
//!   line the hypervisor prints.

use alloc::string::String;

/// The default TCP port of the management service.
pub const DEFAULT_PORT: u16 = 7070;

/// How the management service is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MgmtOptions {
    /// `mgmt=off` turns the service (and the hypervisor's network) off.
    pub enabled: bool,
    /// A static address and prefix length; `None` means DHCP.
    pub static_ip: Option<([u8; 4], u8)>,
    pub gateway: Option<[u8; 4]>,
    pub port: u16,
    /// The shared secret; without one the service refuses every client.
    pub key: Option<[u8; 32]>,
}

impl Default for MgmtOptions {
    fn default() -> Self {
        MgmtOptions { enabled: true, static_ip: None, gateway: None, port: DEFAULT_PORT, key: None }
    }
}

pub(super) const EXPECT_MGMT: &str = "dhcp or off";
pub(super) const EXPECT_IP_PREFIX: &str = "an IPv4 address with a prefix length, e.g. 10.0.2.15/24";
pub(super) const EXPECT_IP: &str = "an IPv4 address, e.g. 10.0.2.2";
pub(super) const EXPECT_TCP_PORT: &str = "a TCP port number from 1 to 65535";
pub(super) const EXPECT_KEY: &str = "64 hexadecimal digits (32 bytes), e.g. from `ferrite up` or `head -c32 /dev/urandom | xxd -p -c64`";

pub(super) fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for byte in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *byte = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub(super) fn parse_ip_prefix(s: &str) -> Option<([u8; 4], u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|&p| (1..=32).contains(&p))?;
    Some((parse_ipv4(ip)?, prefix))
}

pub(super) fn parse_tcp_port(s: &str) -> Option<u16> {
    s.parse().ok().filter(|&p| p != 0)
}

/// 64 hex digits → the 32-byte key.
pub fn parse_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The command line as it may be printed: every `mgmt_key=` value
/// replaced by `<hidden>`.
pub fn redact(cmdline: &str) -> String {
    let mut out = String::with_capacity(cmdline.len());
    let mut rest = cmdline;
    while let Some(value_start) = find_key_value(rest) {
        out.push_str(&rest[..value_start]);
        out.push_str("<hidden>");
        let value_len = rest[value_start..].find(|c: char| c.is_ascii_whitespace()).unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

/// Where the value of the first `mgmt_key=` option starts: every spelling
/// `parse` takes for it (`mgmt-key=`, and either with the `no-` prefix,
/// which `parse` ignores for this option), at a word start.
fn find_key_value(s: &str) -> Option<usize> {
    let mut from = 0;
    while from < s.len() {
        let rel = s[from..].find(['m', 'n'])?;
        let at = from + rel;
        let word_start = at == 0 || s.as_bytes()[at - 1].is_ascii_whitespace();
        let tail = &s[at..];
        let name = tail.strip_prefix("no-").unwrap_or(tail);
        if word_start && (name.starts_with("mgmt_key=") || name.starts_with("mgmt-key=")) {
            return Some(at + (tail.len() - name.len()) + "mgmt_key=".len());
        }
        from = at + 1;
    }
    None
}
