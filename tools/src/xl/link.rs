//! The link between a Ferrite booted under QEMU and `ferrite xl` on the
//! developer's host: a fresh key, a virtio-net NIC on QEMU's user network
//! with a host port forwarded to the service, and the files that tell
//! both ends about them. `ferrite up` and the tests use it.

use super::target::{generate_secret, write_private_file, write_session_file, DEFAULT_HOST};
use crate::modules::ModuleSpec;
use anyhow::{Context, Result};
use ferrite_mgmt::DEFAULT_PORT;
use std::path::{Path, PathBuf};

/// The boot module the hypervisor reads its key from (see the kernel's
/// `key_module`): a file, so the key shows in no process list or log.
pub const KEY_MODULE_NAME: &str = "mgmt.key";

/// What `prepare` set up.
pub struct UpLink {
    /// The host port forwarded to the service.
    pub port: u16,
    /// `dir/mgmt.key`: give it to Ferrite as a boot module.
    pub key_module: ModuleSpec,
    /// `dir/xl-session`: what `ferrite xl` reads.
    pub session_file: PathBuf,
    /// The NIC and the forward, for QEMU's command line.
    pub qemu_args: Vec<String>,
}

/// Writes a new key and session file into `dir` and picks the host port:
/// `preferred` when it is free, else any free one.
pub fn prepare(dir: &Path, preferred: Option<u16>) -> Result<UpLink> {
    let secret = generate_secret()?;
    let key_path = dir.join(KEY_MODULE_NAME);
    write_private_file(&key_path, &format!("{}\n", secret.to_hex()))?;
    let port = free_port(preferred)?;
    let session_file = dir.join("xl-session");
    write_session_file(&session_file, DEFAULT_HOST, port, &secret)?;
    let qemu_args = vec![
        "-netdev".to_string(),
        format!("user,id=mgmt,hostfwd=tcp:{DEFAULT_HOST}:{port}-:{DEFAULT_PORT}"),
        "-device".to_string(),
        // No option ROM: the NIC is the hypervisor's, nothing boots from it.
        "virtio-net-pci,netdev=mgmt,romfile=".to_string(),
    ];
    Ok(UpLink { port, key_module: ModuleSpec::new(key_path, ""), session_file, qemu_args })
}

/// A host port nothing listens on now (QEMU binds it a moment later; a
/// race with another program is possible but harmless: QEMU then says so).
fn free_port(preferred: Option<u16>) -> Result<u16> {
    if let Some(p) = preferred {
        if std::net::TcpListener::bind((DEFAULT_HOST, p)).is_ok() {
            return Ok(p);
        }
    }
    let l = std::net::TcpListener::bind((DEFAULT_HOST, 0)).context("cannot find a free local TCP port")?;
    Ok(l.local_addr()?.port())
}
