//! One `vif = [ ... ]` element: `key=value` pairs separated by commas.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::diag::Shown;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `xx:xx:xx:xx:xx:xx` (also `-` separated). Rejects multicast
    /// (including broadcast) and all-zero addresses, which a NIC cannot own.
    pub fn parse(s: &str) -> Result<MacAddr, String> {
        let bad = || {
            format!(
                "invalid MAC address {} (expected six hex pairs like 00:16:3e:12:34:56)",
                Shown(s)
            )
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            n += 1;
        }
        if n != 6 {
            return Err(bad());
        }
        if out[0] & 1 != 0 {
            return Err(format!(
                "MAC address {} is a multicast address; a NIC needs a unicast one",
                Shown(s)
            ));
        }
        if out == [0; 6] {
            return Err(String::from("MAC address 00:00:00:00:00:00 is not usable"));
        }
        Ok(MacAddr(out))
    }
}

impl MacAddr {
    /// The address xl would make up for vif `index` of domain `domain`,
    /// under Xen's `00:16:3e` prefix, but stable: the same name and index
    /// give the same address on every boot (FNV-1a of both). The fourth
    /// byte's top bit is clear, as in Xen's generated addresses.
    pub fn generated(domain: &str, index: usize) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        for b in domain.bytes().chain([0u8]).chain((index as u32).to_le_bytes()) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [x, y, z, _] = h.to_be_bytes();
        MacAddr([0x00, 0x16, 0x3e, x & 0x7f, y, z])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Keys xl documents for a vif (xl-network-configuration). Others warn.
const KNOWN_KEYS: &[&str] = &[
    "mac",
    "bridge",
    "model",
    "type",
    "script",
    "ip",
    "vifname",
    "backend",
    "rate",
    "gatewaydev",
    "devid",
    "mtu",
    "trusted",
    "untrusted",
    "accel",
    "forwarddev",
];

/// One virtual NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifSpec {
    /// Every `key=value` as written (last one wins for repeated keys).
    pub params: BTreeMap<String, String>,
    /// `mac=`, validated.
    pub mac: Option<MacAddr>,
}

impl VifSpec {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// `mac=`, or the stable generated address of vif `index` of
    /// `domain` ([`MacAddr::generated`]).
    pub fn mac_or_generated(&self, domain: &str, index: usize) -> MacAddr {
        self.mac.unwrap_or_else(|| MacAddr::generated(domain, index))
    }

    pub fn bridge(&self) -> Option<&str> {
        self.get("bridge")
    }

    /// `model=` (e.g. `e1000`, `rtl8139`, `virtio-net`).
    pub fn model(&self) -> Option<&str> {
        self.get("model")
    }

    /// Parses `mac=00:16:3e:00:00:01, bridge=xenbr0, model=e1000`. An
    /// empty string is a NIC with every default, as in xl.
    pub fn parse(spec: &str) -> Result<(VifSpec, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut params = BTreeMap::new();
        for item in spec.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!("expected key=value, found {}", Shown(item)));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("missing key before '=' in {}", Shown(item)));
            }
            if !KNOWN_KEYS.contains(&k) {
                warnings.push(format!(
                    "unknown vif parameter {}; kept but unused",
                    Shown(k)
                ));
            }
            if params.insert(String::from(k), String::from(v)).is_some() {
                warnings.push(format!(
                    "vif parameter {} is given more than once; the last one is used",
                    Shown(k)
                ));
            }
        }
        let mac = match params.get("mac") {
            Some(m) => Some(MacAddr::parse(m)?),
            None => None,
        };
        if let Some(t) = params.get("type") {
            if t != "ioemu" && t != "vif" {
                return Err(format!(
                    "unknown vif type {} (expected ioemu or vif)",
                    Shown(t)
                ));
            }
        }
        Ok((VifSpec { params, mac }, warnings))
    }
}
