//! Where the management service is and which key to log in with: flags,
//! else `FERRITE_XL_*` environment variables, else the session file
//! `ferrite up` writes, else the system key file on the default address.

use anyhow::{bail, Context, Result};
use ferrite_mgmt::{Secret, DEFAULT_PORT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const ENV_HOST: &str = "FERRITE_XL_HOST";
pub const ENV_PORT: &str = "FERRITE_XL_PORT";
pub const ENV_KEY_FILE: &str = "FERRITE_XL_KEY_FILE";
/// The key used when nothing else names one (a Ferrite installed on a host).
pub const SYSTEM_KEY_FILE: &str = "/etc/ferrite/xl.key";
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The host name meaning dom0's vsock channel to the hypervisor (the
/// default inside a Ferrite dom0, which has `/dev/vsock`).
pub const VSOCK_HOST: &str = "vsock";

/// `<workspace>/target/ferrite-up/xl-session`: written by `ferrite up` for
/// the Ferrite it boots, so `ferrite xl` finds it with no options.
pub fn session_file_path() -> PathBuf {
    crate::build::workspace_root().join("target").join("ferrite-up").join("xl-session")
}

/// The `--host/--port/--key-file` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOpts {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub key_file: Option<PathBuf>,
}

/// A service to log in to.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub secret: Secret,
    /// Where the key came from, for error messages (`key file F`).
    pub key_source: String,
}

impl Target {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The contents of a session file.
#[derive(Debug, Clone)]
pub struct SessionFile {
    pub host: String,
    pub port: u16,
    pub secret: Secret,
}

/// Writes a session file readable by its owner only (mode 0600): it holds
/// the key.
pub fn write_session_file(path: &Path, host: &str, port: u16, secret: &Secret) -> Result<()> {
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("session file host {host:?} is not a host name or address");
    }
    write_private_file(path, &format!("host={host}\nport={port}\nkey={}\n", secret.to_hex()))
}

/// Writes `text` to `path`, readable by its owner only (mode 0600), under
/// a temporary name then renamed, so a reader never sees half of it.
pub fn write_private_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Reads a session file (`host=`, `port=`, `key=` lines; `#` comments and
/// unknown keys are skipped, so later versions can add lines).
pub fn read_session_file(path: &Path) -> Result<SessionFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut host, mut port, mut secret) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let Some((key, value)) = line.split_once('=') else {
            bail!("{}: expected key=value", at());
        };
        let value = value.trim();
        match key.trim() {
            "host" => host = Some(value.to_string()),
            "port" => {
                port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| anyhow::anyhow!("{}: port: {value:?} is not a port number", at()))?,
                )
            }
            "key" => secret = Some(Secret::from_hex(value).map_err(|e| anyhow::anyhow!("{}: key: {e}", at()))?),
            _ => {}
        }
    }
    let missing = |what: &str| anyhow::anyhow!("{}: no {what}= line", path.display());
    Ok(SessionFile {
        host: host.ok_or_else(|| missing("host"))?,
        port: port.ok_or_else(|| missing("port"))?,
        secret: secret.ok_or_else(|| missing("key"))?,
    })
}

/// Reads a key file: 64 hex digits, surrounding whitespace ignored.
pub fn read_key_file(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    Secret::from_hex(&text).map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))
}

/// 32 bytes from the kernel's random number generator.
pub fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes)
}

/// A fresh random key, for `ferrite up` to give the hypervisor and write
/// into the session file.
pub fn generate_secret() -> Result<Secret> {
    random_bytes().map(Secret::from_bytes)
}

/// The host when nothing names one: dom0's vsock channel on a machine with
/// `/dev/vsock` (a Ferrite dom0), else [`DEFAULT_HOST`].
pub fn default_host() -> &'static str {
    if Path::new("/dev/vsock").exists() {
        VSOCK_HOST
    } else {
        DEFAULT_HOST
    }
}

/// Picks host, port and key, each from the first place that has it (see
/// the module comment), else `default_host`. `env` looks up environment
/// variables.
pub fn resolve(
    opts: &ConnectOpts,
    env: &dyn Fn(&str) -> Option<String>,
    session_path: &Path,
    system_key: &Path,
    default_host: &str,
) -> Result<Target> {
    let session = if session_path.exists() { Some(read_session_file(session_path)?) } else { None };
    let host = opts
        .host
        .clone()
        .or_else(|| env(ENV_HOST).filter(|h| !h.is_empty()))
        .or_else(|| session.as_ref().map(|s| s.host.clone()))
        .unwrap_or_else(|| default_host.to_string());
    let port = match (opts.port, env(ENV_PORT).filter(|p| !p.is_empty())) {
        (Some(p), _) => p,
        (None, Some(p)) => p.trim().parse().map_err(|_| anyhow::anyhow!("{ENV_PORT}={p:?} is not a port number"))?,
        (None, None) => session.as_ref().map_or(DEFAULT_PORT, |s| s.port),
    };
    let env_key = env(ENV_KEY_FILE).filter(|k| !k.is_empty()).map(PathBuf::from);
    let (secret, key_source) = if let Some(file) = opts.key_file.as_ref().or(env_key.as_ref()) {
        (read_key_file(file)?, format!("key file {}", file.display()))
    } else if let Some(s) = &session {
        (s.secret.clone(), format!("session file {}", session_path.display()))
    } else if system_key.exists() {
        (read_key_file(system_key)?, format!("key file {}", system_key.display()))
    } else {
        bail!(
            "no key to log in with: give --key-file FILE or set {ENV_KEY_FILE}, start Ferrite with `ferrite up` \
             (it writes {}), or install one in {}",
            session_path.display(),
            system_key.display()
        );
    };
    Ok(Target { host, port, secret, key_source })
}
