//! Building the hypervisor image and the stub-domain image.
//!
//! The kernel and the stub domain are bare-metal binaries built for the
//! host target with their own linker scripts, so they get their own target
//! directory
//! (`<workspace>/target/baremetal`): host tools and tests built in `target/`
//! never share (or invalidate) its artifacts, and a cargo build started from
//! inside `cargo test` does not wait for the outer cargo's lock.

use crate::multiboot;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The images `ferrite build` produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorImages {
    /// `ferrite-hv` as linked: multiboot1 (a.out kludge), multiboot2 and PVH.
    pub multiboot: PathBuf,
    /// `ferrite-hv.pvh`: the same bytes with the multiboot1 magic zeroed, so
    /// QEMU's `-kernel` boots it through the PVH ELF note.
    pub pvh: PathBuf,
    /// `ferrite-stubdom`: the stub-domain unikernel (ELF64 linked at
    /// `ferrite_abi::IMAGE_BASE`) the hypervisor starts for each HVM guest.
    pub stubdom: PathBuf,
    /// `ferrite-stubdom-hostile`: a stub domain that attacks the hypervisor
    /// through every hypercall and shared page (tests only).
    pub stubdom_hostile: PathBuf,
}

/// Cargo profile of the hypervisor build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    #[default]
    Release,
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// The workspace root, known at compile time (tools/ is one of its members).
pub fn workspace_root() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR"));
    tools.parent().map(Path::to_path_buf).unwrap_or_else(|| tools.to_path_buf())
}

/// `<workspace>/target/baremetal`.
pub fn baremetal_target_dir() -> PathBuf {
    workspace_root().join("target").join("baremetal")
}

/// The cargo to run: the one that started us when there is one (`cargo
/// run`/`cargo test` set `CARGO`), so the toolchain matches.
pub fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"))
}

/// The `cargo build` command for the hypervisor and the stub domain
/// (exposed for tests/logging).
pub fn cargo_build_command(profile: Profile) -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root()).args(["build", "-p", "ferrite-kernel", "-p", "ferrite-stubdom"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    cmd.arg("--target-dir").arg(baremetal_target_dir());
    // An inherited CARGO_TARGET_DIR would be overridden by --target-dir
    // anyway; RUSTFLAGS meant for host tools must not reach the images.
    cmd.env_remove("RUSTFLAGS").env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

/// Builds the hypervisor and the stub domain with cargo and writes
/// `ferrite-hv.pvh` next to them. Progress goes to stderr; cargo's own
/// output is inherited.
pub fn build_hypervisor(profile: Profile) -> Result<HypervisorImages> {
    eprintln!("building hypervisor and stub-domain images ({} profile)...", profile.dir());
    let mut cmd = cargo_build_command(profile);
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {} (is Rust installed and on PATH?)", cargo_program().display()))?;
    if !status.success() {
        bail!("building the hypervisor failed ({status}); see cargo's messages above");
    }
    let multiboot = baremetal_target_dir().join(profile.dir()).join("ferrite-hv");
    let pvh = multiboot.with_extension("pvh");
    let stubdom = stubdom_image(profile);
    write_pvh_copy(&multiboot, &pvh)?;
    let stubdom_hostile = stubdom.with_file_name("ferrite-stubdom-hostile");
    for image in [&stubdom, &stubdom_hostile] {
        if !image.is_file() {
            bail!("cargo did not produce the stub-domain image {}", image.display());
        }
    }
    eprintln!("hypervisor image:   {}", multiboot.display());
    eprintln!("PVH-only image:     {}", pvh.display());
    eprintln!("stub-domain image:  {}", stubdom.display());
    Ok(HypervisorImages { multiboot, pvh, stubdom, stubdom_hostile })
}

/// `<workspace>/target/static`: the `ferrite` command linked statically,
/// in its own target directory (other RUSTFLAGS than the host tools').
pub fn static_target_dir() -> PathBuf {
    workspace_root().join("target").join("static")
}

/// The `cargo build` command for the static `ferrite` command (glibc,
/// `+crt-static`), which a busybox initramfs without a C library can run.
pub fn static_ferrite_command() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "-p", "ferrite-tools", "--bin", "ferrite", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(static_target_dir())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    cmd
}

/// Builds the static `ferrite` command (for dom0's initramfs: `ferrite xl`
/// over vsock) and returns its path. Progress goes to stderr; cargo's own
/// output is inherited.
pub fn build_static_ferrite() -> Result<PathBuf> {
    eprintln!("building the static ferrite command for dom0 (release, +crt-static)...");
    let status = static_ferrite_command()
        .status()
        .with_context(|| format!("cannot run {} (is Rust installed and on PATH?)", cargo_program().display()))?;
    if !status.success() {
        bail!("building the static ferrite command failed ({status}); see cargo's messages above");
    }
    let exe = static_target_dir().join("x86_64-unknown-linux-gnu").join("release").join("ferrite");
    if !exe.is_file() {
        bail!("cargo did not produce the static ferrite command {}", exe.display());
    }
    eprintln!("static ferrite:     {}", exe.display());
    Ok(exe)
}

/// Where `cargo_build_command` leaves the stub-domain image.
pub fn stubdom_image(profile: Profile) -> PathBuf {
    baremetal_target_dir().join(profile.dir()).join("ferrite-stubdom")
}

/// Copies `src` to `dst` with the multiboot1 magic zeroed (see
/// [`multiboot::strip_multiboot1`]). Written to a temporary name and renamed,
/// so a concurrent reader never sees a half-written image.
pub fn write_pvh_copy(src: &Path, dst: &Path) -> Result<()> {
    let mut bytes =
        std::fs::read(src).with_context(|| format!("cannot read the hypervisor image {}", src.display()))?;
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) || bytes.get(4) != Some(&2) {
        bail!("{} is not a 64-bit ELF file; rebuild with `ferrite build`", src.display());
    }
    multiboot::strip_multiboot1(&mut bytes).with_context(|| format!("making the PVH copy of {}", src.display()))?;
    let tmp = dst.with_extension(format!("pvh.tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_command_targets_the_images_in_their_own_target_dir() {
        let cmd = cargo_build_command(Profile::Release);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let dir = baremetal_target_dir().to_string_lossy().into_owned();
        assert_eq!(
            args,
            ["build", "-p", "ferrite-kernel", "-p", "ferrite-stubdom", "--release", "--target-dir", dir.as_str()]
        );
        assert!(dir.ends_with("target/baremetal"));
        let debug = cargo_build_command(Profile::Debug);
        assert!(!debug.get_args().any(|a| a == "--release"));
    }

    #[test]
    fn stubdom_image_is_next_to_the_hypervisor() {
        assert_eq!(stubdom_image(Profile::Release), baremetal_target_dir().join("release").join("ferrite-stubdom"));
        assert_eq!(stubdom_image(Profile::Debug), baremetal_target_dir().join("debug").join("ferrite-stubdom"));
        assert!(workspace_root().join("stubdom").join("Cargo.toml").is_file());
    }

    #[test]
    fn workspace_root_holds_the_tools_crate() {
        assert!(workspace_root().join("tools").join("Cargo.toml").is_file());
    }

    #[test]
    fn pvh_copy_rejects_non_elf_and_strips_elf() {
        let dir = std::env::temp_dir().join(format!("ferrite-tools-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("img");
        let dst = dir.join("img.pvh");
        std::fs::write(&src, b"not an elf").unwrap();
        assert!(write_pvh_copy(&src, &dst).is_err());

        let mut elf = vec![0u8; 4096];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        let magic = multiboot::MULTIBOOT1_MAGIC;
        elf[64..68].copy_from_slice(&magic.to_le_bytes());
        elf[72..76].copy_from_slice(&0u32.wrapping_sub(magic).to_le_bytes());
        std::fs::write(&src, &elf).unwrap();
        write_pvh_copy(&src, &dst).unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(&out[64..68], &[0; 4]);
        assert_eq!(out.len(), elf.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
