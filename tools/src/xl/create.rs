//! `xl create`: the configuration is read and checked here first (errors
//! name file, line and key, and nothing is sent), then it goes to the
//! hypervisor with the files it names, which the hypervisor cannot read
//! from the host itself. Its `file:` disks are served from here over NBD
//! by a background `ferrite nbd-serve` per disk, which the hypervisor
//! connects to (in dom0, over vsock, it connects to the hypervisor) and
//! which ends when the domain lets go of the disk.

use super::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use ferrite_config::{Access, Diagnostic, DiskKind, Firmware};
use ferrite_mgmt::{FileHasher, FileMeta, Request, Response, ServedDisk, MAX_CHUNK};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Chunks sent ahead of their `Ok`s: enough to keep the link busy, little
/// enough that the hypervisor never holds much.
const WINDOW: usize = 8;

/// A configuration ready to send.
#[derive(Debug)]
pub struct PreparedConfig {
    /// The config file's name (for the hypervisor's diagnostics).
    pub name: String,
    /// The file's text with the `key=value` overrides appended.
    pub text: String,
    /// The domain's name, from the configuration.
    pub domain: String,
    pub files: Vec<LocalFile>,
    /// The `file:` disks, served from this host.
    pub disks: Vec<LocalDisk>,
}

/// A `file:` disk image on this host.
#[derive(Debug, Clone)]
pub struct LocalDisk {
    /// As the configuration writes it.
    pub target: String,
    pub path: PathBuf,
    pub vdev: String,
    pub read_only: bool,
}

/// A file the configuration names, found on this host.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub meta: FileMeta,
    pub path: PathBuf,
}

/// The configuration text: the file, then each override on its own line
/// (later lines win, as with xl's `key=value` arguments).
pub fn config_text(file: &[u8], overrides: &[String]) -> String {
    // Only comments may hold bytes that are not UTF-8; replacing them
    // changes nothing the parser reads.
    let mut text = String::from_utf8_lossy(file).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for o in overrides {
        text.push_str(o);
        text.push('\n');
    }
    text
}

/// Reads and checks the configuration and the files it names. Warnings go
/// to `err`; errors are each diagnostic's line, then the failure.
pub fn prepare(config: &Path, overrides: &[String], err: &mut dyn Write) -> Result<PreparedConfig> {
    let raw = std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
    let text = config_text(&raw, overrides);
    let shown = config.display().to_string();
    let cfg = match ferrite_config::parse(&shown, text.as_bytes()) {
        Ok((cfg, warnings)) => {
            for w in warnings {
                let _ = writeln!(err, "{w}");
            }
            cfg
        }
        Err(diags) => {
            let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
            for d in &diags {
                let _ = writeln!(err, "{d}");
            }
            bail!("{shown} has {} error(s); nothing was sent", errors.len().max(1));
        }
    };
    let dir = config.parent().unwrap_or(Path::new("."));
    let mut named: Vec<(&str, String)> = Vec::new();
    named.extend(cfg.kernel.clone().map(|k| ("kernel", k)));
    named.extend(cfg.ramdisk.clone().map(|r| ("ramdisk", r)));
    if let Some(Firmware::Path(p)) = &cfg.firmware {
        named.push(("firmware", p.clone()));
    }
    let mut files: Vec<LocalFile> = Vec::new();
    for (key, value) in named {
        if files.iter().any(|f| f.meta.name == value) {
            continue;
        }
        let path = dir.join(&value);
        let (len, sha256) = digest_file(&path).map_err(|e| anyhow!("{shown}: {key}: {e}"))?;
        files.push(LocalFile { meta: FileMeta { name: value, len, sha256 }, path });
    }
    let mut disks = Vec::new();
    for d in cfg.disks.iter().filter(|d| d.kind == DiskKind::File) {
        let target = d.target.clone().unwrap_or_default();
        let path = dir.join(&target);
        let meta = std::fs::metadata(&path).map_err(|e| anyhow!("{shown}: disk {}: cannot use {}: {e}", d.vdev.name, path.display()))?;
        if !meta.is_file() || meta.len() % 512 != 0 {
            bail!("{shown}: disk {}: {} is not an image file of whole 512-byte sectors", d.vdev.name, path.display());
        }
        disks.push(LocalDisk { target, path, vdev: d.vdev.name.clone(), read_only: d.access == Access::ReadOnly });
    }
    let name = config.file_name().map_or_else(|| shown.clone(), |n| n.to_string_lossy().into_owned());
    Ok(PreparedConfig { name, text, domain: cfg.name, files, disks })
}

fn digest_file(path: &Path) -> std::result::Result<(u64, [u8; 32]), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut hasher = FileHasher::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hasher.finish()))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Progress of one file on stderr: a line rewritten in place on a
/// terminal, else one line when the file is done.
struct Progress<'a> {
    err: &'a mut dyn Write,
    terminal: bool,
    shown_at: u64,
}

impl Progress<'_> {
    fn update(&mut self, name: &str, sent: u64, total: u64) {
        if self.terminal && (sent == total || sent - self.shown_at >= 1 << 20 || sent == 0) {
            let _ = write!(self.err, "\rsending {name}: {} / {}", mib(sent), mib(total));
            let _ = self.err.flush();
            self.shown_at = sent;
        }
        if sent == total {
            if self.terminal {
                let _ = writeln!(self.err);
            } else {
                let _ = writeln!(self.err, "sent {name}: {}", mib(total));
            }
        }
    }
}

/// Sends the configuration and its files, then asks for the domain;
/// returns its id.
pub fn upload(client: &mut Client, config: &PreparedConfig, err: &mut dyn Write, terminal: bool) -> Result<u32> {
    let files = config.files.iter().map(|f| f.meta.clone()).collect();
    let mut served = Vec::new();
    for d in &config.disks {
        let cannot = || format!("cannot serve {} for disk {}", d.path.display(), d.vdev);
        if client.over_vsock() {
            // In dom0: the server connects to the hypervisor over vsock and
            // names the disk with a token only this request carries.
            let token = crate::nbd_server::spawn_background_vsock_server(&d.path, d.read_only, &d.vdev).with_context(cannot)?;
            let _ = writeln!(err, "serving {} as disk {} over NBD (vsock; it stops when the domain lets go of it)", d.path.display(), d.vdev);
            served.push(ServedDisk { target: d.target.clone(), port: 0, export: d.vdev.clone(), vsock_token: Some(token) });
            continue;
        }
        let port = crate::nbd_server::spawn_background_server(&d.path, d.read_only, &d.vdev).with_context(cannot)?;
        let _ = writeln!(err, "serving {} as disk {} over NBD (port {}; it stops when the domain lets go of it)", d.path.display(), d.vdev, port);
        served.push(ServedDisk { target: d.target.clone(), port, export: d.vdev.clone(), vsock_token: None });
    }
    let create = Request::Create { config_name: config.name.clone(), config_text: config.text.clone(), files, served };
    client.call_ok(&create).context("the hypervisor refused the configuration")?;
    let mut progress = Progress { err, terminal, shown_at: 0 };
    let mut in_flight = 0usize;
    for (index, file) in config.files.iter().enumerate() {
        let name = &file.meta.name;
        let mut f = std::fs::File::open(&file.path).with_context(|| format!("cannot open {}", file.path.display()))?;
        let mut offset = 0u64;
        progress.shown_at = 0;
        progress.update(name, 0, file.meta.len);
        while offset < file.meta.len {
            let want = (file.meta.len - offset).min(MAX_CHUNK as u64) as usize;
            let mut data = vec![0u8; want];
            f.read_exact(&mut data).with_context(|| format!("{} changed while being sent", file.path.display()))?;
            client.send(&Request::FileChunk { index: index as u32, offset, data })?;
            offset += want as u64;
            in_flight += 1;
            if in_flight == WINDOW {
                expect_chunk_ok(client)?;
                in_flight -= 1;
            }
            progress.update(name, offset, file.meta.len);
        }
    }
    for _ in 0..in_flight {
        expect_chunk_ok(client)?;
    }
    match client.call(&Request::CreateCommit).context("the hypervisor could not create the domain")? {
        Response::Created { id } => Ok(id),
        other => Err(client.unexpected(&other)),
    }
}

fn expect_chunk_ok(client: &mut Client) -> Result<()> {
    match client.receive()? {
        Response::Ok => Ok(()),
        Response::Error(e) => bail!("the hypervisor refused the upload: {e}"),
        other => Err(client.unexpected(&other)),
    }
}
