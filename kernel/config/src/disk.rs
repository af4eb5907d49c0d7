//! One `disk = [ ... ]` element (xl-disk-configuration).
//!
//! Accepted forms:
//!
//! * positional `[<target>, [<format>, [<vdev>, [<access>]]]]`, e.g.
//!   `/dev/vg/guest,raw,xvda,rw` or `/dev/vg/guest,,hda`;
//! * the legacy xend form `[<prefix>:]<target>,<vdev>[:cdrom],<access>`
//!   with prefixes `phy:`, `file:` (recorded as [`DiskKind`]), `raw:`,
//!   `qcow:`, `qcow2:`, `vhd:`, `qed:` (format), `tap:`, `tap2:`, `aio:`,
//!   `tapdisk:`, `ioemu:` (ignored);
//! * `key=value` parameters `target=`, `format=`, `vdev=`, `access=`,
//!   `devtype=`, `backend=`, `backendtype=`, `script=`,
//!   `specification=xen|virtio` and `transport=pci|mmio` (Xen 4.18+: the
//!   device the guest sees; for Ferrite's HVM guests `virtio` is a
//!   virtio-blk PCI device instead of emulated IDE), and the flags
//!   `cdrom`, `direct-io-safe`, `discard`, `no-discard`, mixed freely
//!   with positional ones. `target=` takes the whole rest of the string
//!   (commas included), so it must come last.
//!
//! A positional parameter in the format position that is not a known format
//! but is a valid vdev is read as the vdev (so `NAME,xvda,w` works without
//! a prefix). Empty values mean "default". Each parameter may be given once.

use alloc::format;
use alloc::string::String;

use crate::diag::Shown;

/// Image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow,
    Qcow2,
    Vhd,
    Qed,
}

impl DiskFormat {
    fn parse(s: &str) -> Option<DiskFormat> {
        Some(match s {
            "raw" => DiskFormat::Raw,
            "qcow" => DiskFormat::Qcow,
            "qcow2" => DiskFormat::Qcow2,
            "vhd" => DiskFormat::Vhd,
            "qed" => DiskFormat::Qed,
            _ => return None,
        })
    }
}

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Disk or CD-ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevType {
    Disk,
    Cdrom,
}

/// What the target names, from a legacy `phy:`/`file:`/`nbd:` prefix or
/// `backendtype=phy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// Not said; the consumer decides from the name.
    Unspecified,
    /// A block device (`phy:`).
    Phy,
    /// An image file (`file:`).
    File,
    /// An export on an NBD server (`nbd:HOST:PORT/EXPORT`; Ferrite is the
    /// client, not a block script).
    Nbd,
    /// A boot module served from RAM (`module:NAME`, Ferrite's own).
    Module,
}

/// `specification=`: the kind of device the guest sees (xl 4.18+).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskSpecification {
    /// `xen` (the default): for an HVM guest the emulated device its vdev
    /// names (IDE for `hdX`); PVH domains always get virtio-blk.
    #[default]
    Xen,
    /// `virtio`: a virtio-blk device (for an HVM guest, on its PCI bus).
    Virtio,
}

/// `transport=`: how a `specification=virtio` disk reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskTransport {
    /// Not given: the domain type's own (PCI for HVM, MMIO for PVH).
    #[default]
    Default,
    Mmio,
    Pci,
}

/// The bus family of a virtual device name (docs/misc/vbd-interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VdevBus {
    /// `hda`..`hdd`: emulated IDE (primary/secondary, master/slave).
    Ide,
    /// `sda`, `sdb`, ... : emulated SCSI/AHCI, disks 0..15.
    Scsi,
    /// `xvda`, ... or `d<N>[p<M>]`: Xen virtual disks.
    Xen,
    /// A raw Xen vbd number (`0x1`, `51712`), as NetBSD configs use.
    Number,
}

/// A parsed virtual device name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vdev {
    /// As written (without any `:cdrom` suffix).
    pub name: String,
    pub bus: VdevBus,
    /// Disk index on the bus (hda → 0, hdc → 2, xvdb → 1); the raw number
    /// for [`VdevBus::Number`].
    pub disk: u32,
    /// Partition (0 = whole disk).
    pub partition: u32,
}

impl Vdev {
    /// Parses a virtual device name: `hd[a-d]N`, `sd[a-z]+N`, `xvd[a-z]+N`,
    /// `d<disk>[p<part>]`, or a number (decimal or `0x` hex).
    pub fn parse(s: &str) -> Result<Vdev, String> {
        let bad = || {
            format!(
                "invalid virtual device {} (expected hda..hdd, sdX, xvdX or a number)",
                Shown(s)
            )
        };
        if s.is_empty() {
            return Err(String::from("empty virtual device name"));
        }
        let name = String::from(s);
        if s.as_bytes()[0].is_ascii_digit() {
            let n = crate::syntax::parse_int(s).map_err(|_| bad())?;
            let n = u32::try_from(n).map_err(|_| bad())?;
            return Ok(Vdev {
                name,
                bus: VdevBus::Number,
                disk: n,
                partition: 0,
            });
        }
        let (bus, rest) = if let Some(r) = s.strip_prefix("xvd") {
            (VdevBus::Xen, r)
        } else if let Some(r) = s.strip_prefix("hd") {
            (VdevBus::Ide, r)
        } else if let Some(r) = s.strip_prefix("sd") {
            (VdevBus::Scsi, r)
        } else if let Some(r) = s.strip_prefix('d') {
            // d<disk>[p<part>]
            let (d, p) = match r.split_once('p') {
                Some((d, p)) => (d, Some(p)),
                None => (r, None),
            };
            let disk = small_decimal(d).ok_or_else(bad)?;
            let partition = match p {
                Some(p) => small_decimal(p).filter(|&p| p > 0).ok_or_else(bad)?,
                None => 0,
            };
            if disk >= 1 << 20 || partition > 255 {
                return Err(format!("virtual device {} is out of range", Shown(s)));
            }
            return Ok(Vdev {
                name,
                bus: VdevBus::Xen,
                disk,
                partition,
            });
        } else {
            return Err(bad());
        };
        let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        if letters == 0 || letters > 4 {
            return Err(bad());
        }
        let mut disk: u32 = 0;
        for b in rest[..letters].bytes() {
            disk = disk * 26 + u32::from(b - b'a' + 1);
        }
        disk -= 1;
        let part = &rest[letters..];
        let partition = if part.is_empty() {
            0
        } else {
            small_decimal(part).filter(|&p| p > 0).ok_or_else(bad)?
        };
        let (max_disk, max_part) = match bus {
            VdevBus::Ide => (3, 63),
            VdevBus::Scsi => (15, 15),
            _ if disk < 16 => ((1 << 20) - 1, 15),
            _ => ((1 << 20) - 1, 255),
        };
        if disk > max_disk {
            return Err(match bus {
                VdevBus::Ide => format!("{}: emulated IDE has only hda..hdd", Shown(s)),
                VdevBus::Scsi => format!("{}: SCSI disks go up to sdp", Shown(s)),
                _ => format!("virtual device {} is out of range", Shown(s)),
            });
        }
        if partition > max_part {
            return Err(format!(
                "partition number in {} is too large (limit {max_part})",
                Shown(s)
            ));
        }
        Ok(Vdev {
            name,
            bus,
            disk,
            partition,
        })
    }
}

fn small_decimal(s: &str) -> Option<u32> {
    if s.is_empty()
        || s.len() > 9
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// One disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The backing store (device or file name); `None` only for an empty CD-ROM.
    pub target: Option<String>,
    pub format: DiskFormat,
    pub vdev: Vdev,
    pub access: Access,
    pub devtype: DevType,
    pub kind: DiskKind,
    /// `backend=`: the domain serving the disk (default: dom0).
    pub backend: Option<String>,
    /// `script=` (or a legacy `iscsi:`/`nbd:`/... prefix).
    pub script: Option<String>,
    /// `specification=`.
    pub specification: DiskSpecification,
    /// `transport=` (only with `specification=virtio`).
    pub transport: DiskTransport,
}

/// Warnings from parsing one disk; the caller attaches file/line/key.
pub(crate) type Warnings = alloc::vec::Vec<String>;

fn set_once(slot: &mut Option<String>, what: &str, v: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{what} is given more than once"));
    }
    *slot = Some(String::from(v));
    Ok(())
}

impl DiskSpec {
    /// Parses one disk specification string.
    pub fn parse(spec: &str) -> Result<(DiskSpec, Warnings), String> {
        let mut warnings = Warnings::new();
        let mut target: Option<String> = None;
        let mut format: Option<String> = None;
        let mut vdev: Option<String> = None;
        let mut access: Option<String> = None;
        let mut devtype: Option<String> = None;
        let mut backend: Option<String> = None;
        let mut backendtype: Option<String> = None;
        let mut script: Option<String> = None;
        let mut specification: Option<String> = None;
        let mut transport: Option<String> = None;
        let mut kind = DiskKind::Unspecified;
        let mut npos = 0usize; // next positional slot: 0 target, 1 format, 2 vdev, 3 access
        let mut rest = spec;
        while !rest.is_empty() || npos == 0 {
            let trimmed = rest.trim_start();
            if let Some(t) = trimmed.strip_prefix("target=") {
                if target.as_deref().is_some_and(|t| !t.is_empty()) {
                    return Err(String::from("target is given more than once"));
                }
                target = Some(String::from(t));
                break;
            }
            let (param, next) = match trimmed.split_once(',') {
                Some((p, n)) => (p.trim_end(), Some(n)),
                None => (trimmed.trim_end(), None),
            };
            rest = next.unwrap_or("");
            if let Some((k, v)) = param.split_once('=') {
                let v = v.trim();
                match k.trim() {
                    "format" => set_once(&mut format, "format", v)?,
                    "vdev" => set_once(&mut vdev, "vdev", v)?,
                    "access" => set_once(&mut access, "access", v)?,
                    "devtype" => set_once(&mut devtype, "devtype", v)?,
                    "backend" => set_once(&mut backend, "backend", v)?,
                    "backendtype" => set_once(&mut backendtype, "backendtype", v)?,
                    "script" => set_once(&mut script, "script", v)?,
                    "specification" => set_once(&mut specification, "specification", v)?,
                    "transport" => set_once(&mut transport, "transport", v)?,
                    k @ ("colo-host" | "colo-port" | "colo-export" | "active-disk"
                    | "hidden-disk") => warnings.push(format!(
                        "disk parameter '{k}' is not supported by Ferrite; ignored"
                    )),
                    k => return Err(format!("unknown disk parameter {}", Shown(k))),
                }
            } else {
                match param {
                    "cdrom" => set_once(&mut devtype, "devtype", "cdrom")?,
                    "discard" | "no-discard" | "direct-io-safe" | "colo" => {
                        warnings.push(format!("disk flag '{param}' is ignored by Ferrite"))
                    }
                    _ => {
                        // Positional.
                        match npos {
                            0 => {
                                let mut t = param;
                                let mut had_prefix = false;
                                while let Some((p, after)) = t.split_once(':') {
                                    match p {
                                        "phy" => kind = DiskKind::Phy,
                                        "file" => kind = DiskKind::File,
                                        "tap" | "tap2" | "aio" | "tapdisk" | "ioemu" => {}
                                        "raw" | "qcow" | "qcow2" | "vhd" | "qed" => {
                                            set_once(&mut format, "format", p)?
                                        }
                                        "nbd" => kind = DiskKind::Nbd,
                                        "module" => kind = DiskKind::Module,
                                        "iscsi" | "enbd" | "drbd" => {
                                            set_once(&mut script, "script", &format!("block-{p}"))?
                                        }
                                        _ => break,
                                    }
                                    had_prefix = true;
                                    t = after;
                                }
                                if !t.is_empty() {
                                    target = Some(String::from(t));
                                }
                                npos = if had_prefix { 2 } else { 1 };
                            }
                            1 => {
                                if param.is_empty() || DiskFormat::parse(param).is_some() {
                                    if !param.is_empty() {
                                        set_once(&mut format, "format", param)?;
                                    }
                                    npos = 2;
                                } else if Vdev::parse(param.split(':').next().unwrap_or("")).is_ok()
                                {
                                    // Legacy order without a prefix: target,vdev,access.
                                    legacy_vdev(param, &mut vdev, &mut devtype)?;
                                    npos = 3;
                                } else {
                                    return Err(format!(
                                        "unknown disk format {} (expected raw, qcow, qcow2, vhd or qed)",
                                        Shown(param)
                                    ));
                                }
                            }
                            2 => {
                                if !param.is_empty() {
                                    legacy_vdev(param, &mut vdev, &mut devtype)?;
                                }
                                npos = 3;
                            }
                            3 => {
                                if !param.is_empty() {
                                    set_once(&mut access, "access", param)?;
                                }
                                npos = 4;
                            }
                            _ => {
                                return Err(format!(
                                    "too many positional parameters at {}",
                                    Shown(param)
                                ))
                            }
                        }
                    }
                }
            }
            if next.is_none() {
                break;
            }
        }

        let format = match format.as_deref() {
            None | Some("") => DiskFormat::Raw,
            Some(f) => DiskFormat::parse(f).ok_or_else(|| {
                format!(
                    "unknown disk format {} (expected raw, qcow, qcow2, vhd or qed)",
                    Shown(f)
                )
            })?,
        };
        if format != DiskFormat::Raw {
            warnings.push(format!(
                "disk format {format:?} is not supported by Ferrite's block backends; only raw is"
            ));
        }
        let devtype = match devtype.as_deref() {
            None | Some("") | Some("disk") => DevType::Disk,
            Some("cdrom") => DevType::Cdrom,
            Some(d) => return Err(format!("unknown devtype {} (expected cdrom)", Shown(d))),
        };
        let access = match access.as_deref() {
            None | Some("") => match devtype {
                DevType::Cdrom => Access::ReadOnly,
                DevType::Disk => Access::ReadWrite,
            },
            Some("r" | "ro") => Access::ReadOnly,
            Some("w" | "rw") => Access::ReadWrite,
            Some(a) => {
                return Err(format!(
                    "unknown access mode {} (expected r, ro, w or rw)",
                    Shown(a)
                ))
            }
        };
        if devtype == DevType::Cdrom && access == Access::ReadWrite {
            return Err(String::from("a CD-ROM cannot be writable"));
        }
        let vdev = match vdev.as_deref() {
            None | Some("") => {
                return Err(String::from(
                    "no virtual device (vdev) given, e.g. 'xvda' or 'hda'",
                ))
            }
            Some(v) => Vdev::parse(v)?,
        };
        match backendtype.as_deref() {
            None | Some("") => {}
            Some("phy") => kind = DiskKind::Phy,
            Some("qdisk" | "tap" | "standalone") => {}
            Some(b) => {
                return Err(format!(
                    "unknown backendtype {} (expected phy, qdisk or tap)",
                    Shown(b)
                ))
            }
        }
        let specification = match specification.as_deref() {
            None | Some("") | Some("xen") => DiskSpecification::Xen,
            Some("virtio") => DiskSpecification::Virtio,
            Some(x) => {
                return Err(format!(
                    "unknown disk specification {} (expected xen or virtio)",
                    Shown(x)
                ))
            }
        };
        let transport = match transport.as_deref() {
            None | Some("") => DiskTransport::Default,
            Some("mmio") => DiskTransport::Mmio,
            Some("pci") => DiskTransport::Pci,
            Some(x) => {
                return Err(format!(
                    "unknown disk transport {} (expected pci or mmio)",
                    Shown(x)
                ))
            }
        };
        if transport != DiskTransport::Default && specification != DiskSpecification::Virtio {
            return Err(String::from(
                "transport= applies only to specification=virtio disks",
            ));
        }
        if specification == DiskSpecification::Virtio && devtype == DevType::Cdrom {
            return Err(String::from("a virtio disk cannot be a CD-ROM"));
        }
        let target = target.filter(|t| !t.is_empty());
        if target.is_none() && devtype != DevType::Cdrom {
            return Err(String::from("no target (backing device or file) given"));
        }
        if script.is_some() {
            warnings.push(String::from(
                "block scripts are not supported by Ferrite; 'script' ignored",
            ));
        }
        Ok((
            DiskSpec {
                target,
                format,
                vdev,
                access,
                devtype,
                kind,
                backend: backend.filter(|b| !b.is_empty()),
                script: script.filter(|s| !s.is_empty()),
                specification,
                transport,
            },
            warnings,
        ))
    }
}

/// `hdc:cdrom` / `hdc:disk` / `hdc`.
fn legacy_vdev(
    param: &str,
    vdev: &mut Option<String>,
    devtype: &mut Option<String>,
) -> Result<(), String> {
    match param.split_once(':') {
        Some((v, dt)) => {
            set_once(vdev, "vdev", v)?;
            if dt != "disk" {
                set_once(devtype, "devtype", dt)?;
            }
        }
        None => set_once(vdev, "vdev", param)?,
    }
    Ok(())
}

/// A host disk a running domain uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskClaim {
    /// The host disk (a `phy:` target).
    pub target: alloc::string::String,
    pub domain: u32,
    pub writable: bool,
}

/// Whether a domain may use host disk `target` (`writable` or not) while
/// `claims` hold: as Xen's block hotplug scripts decide, a disk written by
/// one domain is used by no other, and read-only users may share it.
/// Returns the claim in the way.
pub fn disk_sharing_conflict<'a>(
    claims: &'a [DiskClaim],
    target: &str,
    writable: bool,
) -> Option<&'a DiskClaim> {
    claims
        .iter()
        .find(|c| c.target == target && (c.writable || writable))
}

#[cfg(test)]
mod sharing_tests {
    use super::*;

    fn claim(target: &str, domain: u32, writable: bool) -> DiskClaim {
        DiskClaim {
            target: target.into(),
            domain,
            writable,
        }
    }

    #[test]
    fn writers_are_exclusive_and_readers_share() {
        let claims = [claim("disk0", 1, true), claim("disk1", 2, false)];
        assert_eq!(
            disk_sharing_conflict(&claims, "disk0", true),
            Some(&claims[0])
        );
        assert_eq!(
            disk_sharing_conflict(&claims, "disk0", false),
            Some(&claims[0])
        );
        assert_eq!(
            disk_sharing_conflict(&claims, "disk1", true),
            Some(&claims[1])
        );
        assert_eq!(disk_sharing_conflict(&claims, "disk1", false), None);
        assert_eq!(disk_sharing_conflict(&claims, "disk2", true), None);
        assert_eq!(disk_sharing_conflict(&[], "disk0", true), None);
    }
}
