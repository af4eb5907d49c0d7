//! Host programs Ferrite's tooling runs, and the Debian packages that ship
//! them, so every "not found" can end with the exact `apt-get` line.

use std::path::{Path, PathBuf};

/// A program we run, and where it comes from on Debian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    /// What it is needed for, for the error message.
    pub why: &'static str,
}

pub const QEMU: Tool =
    Tool { program: "qemu-system-x86_64", package: "qemu-system-x86", why: "boots Ferrite (`ferrite up`, qemu-tests)" };
pub const GRUB_MKRESCUE: Tool =
    Tool { program: "grub-mkrescue", package: "grub-common", why: "builds GRUB ISOs (`ferrite iso`)" };
pub const XORRISO: Tool = Tool { program: "xorriso", package: "xorriso", why: "writes the ISO for grub-mkrescue" };
pub const MFORMAT: Tool = Tool { program: "mformat", package: "mtools", why: "makes FAT images for grub-mkrescue" };

pub const LZ4: Tool = Tool { program: "lz4", package: "lz4", why: "unpacks Debian's cloud kernel for PVH boot" };
pub const XZ: Tool = Tool { program: "xz", package: "xz-utils", why: "unpacks Debian's generic kernel for PVH boot" };
pub const AS: Tool = Tool { program: "as", package: "binutils", why: "assembles the small test guests" };
pub const BOCHS: Tool = Tool {
    program: "bochs-bin",
    package: "bochs",
    why: "runs the exception-loop tests QEMU cannot (hostile_bochs; also bochsbios vgabios bochs-term)",
};

/// GRUB's BIOS platform files; without them grub-mkrescue makes an ISO
/// that does not boot under SeaBIOS.
pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
pub const GRUB_PC_PACKAGE: &str = "grub-pc-bin";

/// Everything `ferrite iso` needs.
pub const ISO_TOOLS: [Tool; 3] = [GRUB_MKRESCUE, XORRISO, MFORMAT];
/// Everything `ferrite test` needs.
pub const TEST_TOOLS: [Tool; 8] = [QEMU, GRUB_MKRESCUE, XORRISO, MFORMAT, LZ4, XZ, AS, BOCHS];

/// Looks `program` up in `PATH` like a shell would (a regular file with an
/// execute bit).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// What is missing from the host, as Debian packages (deduplicated, in the
/// order given) with a line per missing item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    pub packages: Vec<&'static str>,
    pub details: Vec<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    fn add(&mut self, package: &'static str, detail: String) {
        if !self.packages.contains(&package) {
            self.packages.push(package);
        }
        self.details.push(detail);
    }

    /// The command that installs what is missing.
    pub fn apt_line(&self) -> String {
        format!("sudo apt-get install -y {}", self.packages.join(" "))
    }

    /// A multi-line message: what is missing and the command that fixes it.
    pub fn message(&self) -> String {
        let mut s = String::from("missing host dependencies:\n");
        for d in &self.details {
            s.push_str("  - ");
            s.push_str(d);
            s.push('\n');
        }
        s.push_str("install them with:\n  ");
        s.push_str(&self.apt_line());
        s
    }
}

/// Checks `tools` with `lookup` (injectable for tests); adds grub-pc-bin when
/// grub-mkrescue is among them and `grub_pc_present` is false.
pub fn check_with(tools: &[Tool], lookup: impl Fn(&str) -> bool, grub_pc_present: bool) -> Missing {
    let mut missing = Missing::default();
    for t in tools {
        if !lookup(t.program) {
            missing.add(t.package, format!("`{}` not found on PATH (package {}; {})", t.program, t.package, t.why));
        }
    }
    if tools.contains(&GRUB_MKRESCUE) && !grub_pc_present {
        missing.add(
            GRUB_PC_PACKAGE,
            format!("{GRUB_PC_DIR} not found (package {GRUB_PC_PACKAGE}; GRUB's BIOS boot files for the ISO)"),
        );
    }
    missing
}

/// Checks `tools` on this host.
pub fn check(tools: &[Tool]) -> Missing {
    check_with(tools, |p| find_program(p).is_some(), Path::new(GRUB_PC_DIR).is_dir())
}

/// `Err` with [`Missing::message`] when anything in `tools` is missing.
pub fn require(tools: &[Tool]) -> anyhow::Result<()> {
    let missing = check(tools);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(missing.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing() {
        let m = check_with(&TEST_TOOLS, |_| true, true);
        assert!(m.is_empty());
    }

    #[test]
    fn names_packages_once_in_order() {
        let m = check_with(&TEST_TOOLS, |p| p == "xorriso", false);
        assert_eq!(m.packages, ["qemu-system-x86", "grub-common", "mtools", "lz4", "xz-utils", "binutils", "bochs", "grub-pc-bin"]);
        assert_eq!(
            m.apt_line(),
            "sudo apt-get install -y qemu-system-x86 grub-common mtools lz4 xz-utils binutils bochs grub-pc-bin"
        );
        let msg = m.message();
        assert!(msg.contains("`qemu-system-x86_64` not found"), "{msg}");
        assert!(msg.ends_with(&m.apt_line()));
    }

    #[test]
    fn qemu_alone_does_not_need_grub() {
        let m = check_with(&[QEMU], |_| false, false);
        assert_eq!(m.packages, ["qemu-system-x86"]);
    }

    #[test]
    fn finds_sh() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-ferrite").is_none());
    }
}
