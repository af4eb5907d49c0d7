//! Boot modules given on the command line as `PATH[=ARGS]`.
//!
//! The same spec feeds QEMU's multiboot1 `-initrd "path args,path2 args"`
//! and GRUB's `module2 /boot/<name> args`, so the checks both need live here.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One boot module: a file and the command line handed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub path: PathBuf,
    /// Empty when no `=ARGS` was given.
    pub args: String,
}

impl ModuleSpec {
    pub fn new(path: impl Into<PathBuf>, args: impl Into<String>) -> Self {
        ModuleSpec { path: path.into(), args: args.into() }
    }

    /// Parses `PATH[=ARGS]`; the first `=` separates the two, so a path
    /// cannot contain `=` (rename or symlink the file).
    pub fn parse(spec: &str) -> Result<Self> {
        let (path, args) = match spec.split_once('=') {
            Some((p, a)) => (p, a),
            None => (spec, ""),
        };
        if path.is_empty() {
            bail!("module spec {spec:?} has no path; expected PATH[=ARGS], e.g. dom0.img=root=/dev/xvda");
        }
        if args.contains('\n') {
            bail!("module spec {spec:?}: the arguments must be on one line");
        }
        Ok(ModuleSpec::new(path, args))
    }

    /// The file name used inside an ISO (`/boot/<name>`).
    pub fn file_name(&self) -> Result<String> {
        let name =
            self.path.file_name().with_context(|| format!("module path {} has no file name", self.path.display()))?;
        Ok(name.to_string_lossy().into_owned())
    }
}

/// The value of QEMU's `-initrd` for multiboot1 modules: `path args` per
/// module, joined by commas. QEMU splits on commas and takes the path up to
/// the first space, so neither may appear where QEMU would misread them.
pub fn qemu_initrd_value(modules: &[ModuleSpec]) -> Result<String> {
    let mut parts = Vec::with_capacity(modules.len());
    for m in modules {
        let path = path_str(&m.path)?;
        if path.contains(',') {
            bail!(
                "module path {path:?} contains a comma, which QEMU's -initrd uses to separate modules; \
                 copy or symlink the file to a path without commas"
            );
        }
        if path.contains(char::is_whitespace) {
            bail!(
                "module path {path:?} contains whitespace, which QEMU's -initrd uses to separate a module's \
                 path from its arguments; copy or symlink the file to a path without spaces"
            );
        }
        if m.args.contains(',') {
            bail!(
                "arguments {:?} of module {path:?} contain a comma, which QEMU's -initrd uses to separate \
                 modules; use a GRUB ISO (`ferrite iso`) for such arguments",
                m.args
            );
        }
        if m.args.is_empty() {
            parts.push(path.to_string());
        } else {
            parts.push(format!("{path} {}", m.args));
        }
    }
    Ok(parts.join(","))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path {} is not valid UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_args() {
        assert_eq!(ModuleSpec::parse("a/b.img").unwrap(), ModuleSpec::new("a/b.img", ""));
        assert_eq!(
            ModuleSpec::parse("dom0=root=/dev/xvda console=hvc0").unwrap(),
            ModuleSpec::new("dom0", "root=/dev/xvda console=hvc0")
        );
        assert_eq!(ModuleSpec::parse("x=").unwrap(), ModuleSpec::new("x", ""));
        assert!(ModuleSpec::parse("=args").is_err());
        assert!(ModuleSpec::parse("").is_err());
        assert!(ModuleSpec::parse("x=a\nb").is_err());
    }

    #[test]
    fn file_name_is_the_basename() {
        assert_eq!(ModuleSpec::new("/tmp/d/mod1.bin", "").file_name().unwrap(), "mod1.bin");
        assert!(ModuleSpec::new("/", "").file_name().is_err());
    }

    #[test]
    fn initrd_value_joins_modules() {
        let mods =
            [ModuleSpec::new("/t/m1", "arg1=one"), ModuleSpec::new("/t/m2", ""), ModuleSpec::new("/t/m3", "a b")];
        assert_eq!(qemu_initrd_value(&mods).unwrap(), "/t/m1 arg1=one,/t/m2,/t/m3 a b");
        assert_eq!(qemu_initrd_value(&[]).unwrap(), "");
    }

    #[test]
    fn initrd_value_rejects_commas_and_spaces_in_paths() {
        let e = qemu_initrd_value(&[ModuleSpec::new("/t/a,b", "")]).unwrap_err();
        assert!(e.to_string().contains("comma"), "{e}");
        let e = qemu_initrd_value(&[ModuleSpec::new("/t/a b", "")]).unwrap_err();
        assert!(e.to_string().contains("whitespace"), "{e}");
        let e = qemu_initrd_value(&[ModuleSpec::new("/t/a", "x=1,2")]).unwrap_err();
        assert!(e.to_string().contains("comma"), "{e}");
    }
}
