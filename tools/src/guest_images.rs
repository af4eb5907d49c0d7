//! Fetching and caching of guest images from Debian packages.
//!
//! Packages are downloaded with `apt-get download` and unpacked with
//! `dpkg-deb -x` into a cache outside the repository:
//!
//! ```text
//! $FERRITE_CACHE/debs/<name>/          (default $FERRITE_CACHE: ~/.cache/ferrite)
//!     <name>_<version>_<arch>.deb      the downloaded package
//!     root/                            its unpacked contents
//!     resolved                         for a metapackage: the real package's name
//! ```
//!
//! A metapackage such as `linux-image-cloud-amd64` contains no files of its
//! own; it depends on a versioned package (`linux-image-6.1.0-56-cloud-amd64`),
//! which is fetched instead and cached under its own name. Once something is
//! cached, no network or apt access is needed; delete its folder to refresh it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache root: `$FERRITE_CACHE`, else `$HOME/.cache/ferrite`.
pub fn cache_root() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("FERRITE_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or("neither FERRITE_CACHE nor HOME is set; cannot choose a cache folder")?;
    Ok(PathBuf::from(home).join(".cache").join("ferrite"))
}

/// Folder for package `name`: `<cache root>/debs/<name>`.
pub fn package_dir(name: &str) -> Result<PathBuf, String> {
    Ok(cache_root()?.join("debs").join(name))
}

fn valid_package_name(name: &str) -> bool {
    // Debian policy: lower case letters, digits, + - . ; at least two
    // characters, starting with an alphanumeric.
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// The unpacked contents of a cached package, if it is complete.
fn cached_root(name: &str) -> Result<Option<PathBuf>, String> {
    let dir = package_dir(name)?;
    if let Ok(real) = fs::read_to_string(dir.join("resolved")) {
        let real = real.trim();
        if valid_package_name(real) && real != name {
            return cached_root(real);
        }
    }
    let root = dir.join("root");
    Ok(root.is_dir().then_some(root))
}

/// Whether package `name` is already unpacked in the cache (so fetching it
/// needs no network).
pub fn is_cached(name: &str) -> bool {
    valid_package_name(name) && matches!(cached_root(name), Ok(Some(_)))
}

/// Fetch Debian package `name` into the cache (if not already there) and
/// return the folder it is unpacked in. Metapackages are followed to the
/// package they depend on, whose folder is returned.
pub fn fetch_debian_package(name: &str) -> Result<PathBuf, String> {
    fetch_inner(name, 0)
}

fn fetch_inner(name: &str, depth: u32) -> Result<PathBuf, String> {
    if !valid_package_name(name) {
        return Err(format!("{name:?} is not a valid Debian package name"));
    }
    if depth > 3 {
        return Err(format!("metapackage chain too long while resolving {name}"));
    }
    if let Some(root) = cached_root(name)? {
        return Ok(root);
    }
    let dir = package_dir(name)?;
    fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create cache folder {}: {e}", dir.display()))?;
    // Work in a private temporary folder inside the cache (same file
    // system, so the final rename is atomic).
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = download_and_unpack(name, &dir, &tmp, depth);
    let _ = fs::remove_dir_all(&tmp);
    if result.is_err() {
        // Leave no empty folder behind for a package that failed.
        let _ = fs::remove_dir(&dir);
    }
    result
}

fn download_and_unpack(name: &str, dir: &Path, tmp: &Path, depth: u32) -> Result<PathBuf, String> {
    eprintln!("ferrite: downloading Debian package {name} (apt-get download) ...");
    let out = Command::new("apt-get")
        .arg("download")
        .arg(name)
        .current_dir(tmp)
        .output()
        .map_err(|e| format!("cannot run apt-get (is this a Debian system?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`apt-get download {name}` failed ({}): {}\nIf the package is unknown or the lists are stale, run `apt-get update` (as root) and try again.",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let deb =
        find_deb(tmp)?.ok_or_else(|| format!("apt-get download {name} produced no .deb file"))?;
    let deb_name = deb
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "ferrite: got {} ({} KiB); unpacking ...",
        deb_name.to_string_lossy(),
        size / 1024
    );

    let unpack = tmp.join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack),
        "dpkg-deb -x",
    )?;

    if is_metapackage(&unpack).map_err(|e| format!("cannot read {}: {e}", unpack.display()))? {
        let depends = run(
            Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"),
            "dpkg-deb -f Depends",
        )?;
        let real = pick_dependency(name, &depends).ok_or_else(|| {
            format!("{name} is a metapackage but its Depends ({depends:?}) names no package")
        })?;
        eprintln!("ferrite: {name} is a metapackage for {real}");
        let root = fetch_inner(&real, depth + 1)?;
        fs::write(dir.join("resolved"), format!("{real}\n"))
            .map_err(|e| format!("cannot write {}: {e}", dir.join("resolved").display()))?;
        let _ = fs::rename(&deb, dir.join(&deb_name));
        return Ok(root);
    }

    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::rename(&unpack, &root)
        .map_err(|e| format!("cannot move unpacked files to {}: {e}", root.display()))?;
    let _ = fs::rename(&deb, dir.join(&deb_name));
    eprintln!("ferrite: {name} cached in {}", root.display());
    Ok(root)
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn find_deb(dir: &Path) -> Result<Option<PathBuf>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb")))
}

/// A package is a metapackage when it ships nothing outside `usr/share`
/// (documentation and bug-reporting files only).
fn is_metapackage(root: &Path) -> io::Result<bool> {
    fn has_payload(p: &Path, rel: &Path) -> io::Result<bool> {
        for e in fs::read_dir(p)? {
            let e = e?;
            let rel = rel.join(e.file_name());
            if rel.starts_with("usr/share") {
                continue;
            }
            let ft = e.file_type()?;
            if !ft.is_dir() || has_payload(&e.path(), &rel)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
    Ok(!has_payload(root, Path::new(""))?)
}

/// From a `Depends` field, the package a metapackage stands for: the first
/// dependency that shares the name's first two dash-separated words
/// (`linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64`), else
/// the first dependency. Version constraints and alternatives are dropped.
pub fn pick_dependency(name: &str, depends: &str) -> Option<String> {
    let deps: Vec<String> = depends
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .filter(|d| valid_package_name(d))
        .collect();
    let prefix: String = name.split('-').take(2).collect::<Vec<_>>().join("-") + "-";
    deps.iter()
        .find(|d| d.starts_with(&prefix) && d.as_str() != name)
        .or(deps.first())
        .cloned()
}

/// The kernel of Debian's `linux-image-<flavour>` (e.g. `cloud-amd64`,
/// `amd64`), fetched into the cache if needed: the path of its
/// `boot/vmlinuz-*`.
pub fn debian_kernel(flavour: &str) -> Result<PathBuf, String> {
    let root = fetch_debian_package(&format!("linux-image-{flavour}"))?;
    find_vmlinuz(&root)
}

/// The uncompressed ELF `vmlinux` of Debian's `linux-image-<flavour>`,
/// extracted from the bzImage payload with the system decompressor (`xz`,
/// `lz4`, `zstd`, `gzip`, ...) and cached next to the vmlinuz as
/// `vmlinux-<version>`. Unlike the bzImage it carries the Xen PVH entry
/// note, so it can be started through the PVH entry.
pub fn debian_vmlinux(flavour: &str) -> Result<PathBuf, String> {
    let vmlinuz = debian_kernel(flavour)?;
    let name = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vmlinuz-unknown");
    let out = vmlinuz.with_file_name(name.replacen("vmlinuz", "vmlinux", 1));
    if out.is_file() {
        return Ok(out);
    }
    let image =
        fs::read(&vmlinuz).map_err(|e| format!("cannot read {}: {e}", vmlinuz.display()))?;
    eprintln!("ferrite: extracting vmlinux from {} ...", vmlinuz.display());
    let elf = extract_vmlinux(&image)?;
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, &elf).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &out).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(out)
}

/// Decompress a bzImage's payload (the kernel's ELF vmlinux).
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, String> {
    let rd32 = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if rd32(0x202) != Some(0x5372_6448) {
        return Err("not a bzImage (no \"HdrS\" at 0x202)".into());
    }
    let version = image
        .get(0x206..0x208)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0);
    if version < 0x0208 {
        return Err(format!(
            "bzImage protocol {version:#x} has no payload fields"
        ));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let kernel = (setup_sects + 1) * 512;
    let (off, len) = (
        rd32(0x248).unwrap_or(0) as usize,
        rd32(0x24c).unwrap_or(0) as usize,
    );
    let payload = kernel
        .checked_add(off)
        .and_then(|s| Some((s, s.checked_add(len)?)))
        .and_then(|(s, e)| image.get(s..e))
        .filter(|p| p.len() > 4)
        .ok_or("bzImage payload_offset/payload_length are out of range")?;
    if payload.starts_with(b"\x7fELF") {
        return Ok(payload.to_vec());
    }
    // The kernel build appends the uncompressed size (4 bytes) to every
    // format except gzip.
    let trimmed = &payload[..payload.len() - 4];
    let (tool, args, data): (&str, &[&str], &[u8]) = if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"], payload)
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        ("xz", &["-dc", "--single-stream"], trimmed)
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dcq"], trimmed)
    } else if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        ("lz4", &["-dc"], trimmed)
    } else if payload.starts_with(b"BZh") {
        ("bzip2", &["-dc"], trimmed)
    } else if payload.starts_with(&[0x5d, 0, 0]) {
        ("xz", &["-dc", "--format=lzma"], trimmed)
    } else if payload.starts_with(&[0x89, b'L', b'Z', b'O']) {
        ("lzop", &["-dc"], trimmed)
    } else {
        return Err("bzImage payload is in an unknown format".into());
    };
    let elf = pipe_through(tool, args, data)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(format!("`{tool}` did not produce an ELF image"));
    }
    Ok(elf)
}

fn pipe_through(tool: &str, args: &[&str], data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{tool}` (install it with apt-get): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            // An early exit of the tool shows up in its status below.
            let _ = stdin.write_all(data);
        });
        child.wait_with_output()
    })
    .map_err(|e| format!("`{tool}` failed: {e}"))?;
    // Some tools complain about trailing bytes yet produce the whole
    // output; judge by the output.
    if out.stdout.is_empty() {
        return Err(format!(
            "`{tool}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The `boot/vmlinuz-*` inside an unpacked kernel package.
pub fn find_vmlinuz(root: &Path) -> Result<PathBuf, String> {
    let boot = root.join("boot");
    let rd =
        fs::read_dir(&boot).map_err(|e| format!("{} has no boot/ folder: {e}", root.display()))?;
    let mut found: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("no boot/vmlinuz-* in {}", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_versioned_dependency() {
        assert_eq!(
            pick_dependency(
                "linux-image-cloud-amd64",
                "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
            )
            .as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            pick_dependency(
                "linux-image-amd64",
                "kmod, linux-image-6.1.0-56-amd64 (= 6.1.192-2) | foo"
            )
            .as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            pick_dependency("busybox", "libc6 (>= 2.34)").as_deref(),
            Some("libc6")
        );
        assert_eq!(pick_dependency("x-y", ""), None);
    }

    #[test]
    fn package_names() {
        assert!(valid_package_name("linux-image-6.1.0-56-cloud-amd64"));
        assert!(valid_package_name("g++"));
        assert!(!valid_package_name("../etc"));
        assert!(!valid_package_name("-x"));
        assert!(!valid_package_name("a b"));
    }

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0; 0x10]);
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn extracts_vmlinux() {
        let elf = b"\x7fELF\x02\x01\x01 pretend vmlinux".to_vec();
        assert_eq!(extract_vmlinux(&fake_bzimage(&elf)).unwrap(), elf);
        // gzip (if the tool is there).
        if let Ok(gz) = pipe_through("gzip", &["-c"], &elf) {
            assert_eq!(extract_vmlinux(&fake_bzimage(&gz)).unwrap(), elf);
        }
        assert!(extract_vmlinux(&fake_bzimage(b"garbage!")).is_err());
        assert!(extract_vmlinux(b"short").is_err());
        let mut bad = fake_bzimage(&elf);
        bad[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract_vmlinux(&bad).is_err());
    }

    #[test]
    fn metapackage_detection() {
        let t = std::env::temp_dir().join(format!("ferrite-gi-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        fs::create_dir_all(t.join("meta/usr/share/doc/x")).unwrap();
        fs::write(t.join("meta/usr/share/doc/x/copyright"), "c").unwrap();
        fs::create_dir_all(t.join("real/boot")).unwrap();
        fs::write(t.join("real/boot/vmlinuz-1.2-amd64"), "k").unwrap();
        assert!(is_metapackage(&t.join("meta")).unwrap());
        assert!(!is_metapackage(&t.join("real")).unwrap());
        assert_eq!(
            find_vmlinuz(&t.join("real")).unwrap(),
            t.join("real/boot/vmlinuz-1.2-amd64")
        );
        assert!(find_vmlinuz(&t.join("meta")).is_err());
        fs::remove_dir_all(&t).unwrap();
    }
}
