//! Tests against Debian's real kernels, taken from the guest-image cache
//! that `ferrite-tools`' `guest_images::fetch_debian_package` fills
//! (`$FERRITE_CACHE/debs/…`, default `~/.cache/ferrite/debs/…`).
//!
//! They run when the cache already has the kernels, or when
//! `FERRITE_REAL_IMAGES=1` (then missing kernels are fetched with
//! `apt-get download` + `dpkg-deb -x` into the same layout). Otherwise they
//! print a note and pass, so they never need the network.

use ferrite_loader::bzimage::{self, Compression, PayloadKind, XLF_KERNEL_64};
use ferrite_loader::layout::{EntryState, ImageKind};
use ferrite_loader::{elf, load_pvh, LoadError, VecMemory};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn cache_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FERRITE_CACHE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d));
    }
    Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/ferrite"))
}

fn vmlinuz_in(root: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    v.sort();
    v.pop()
}

fn cached_kernel(flavour: &str) -> Option<PathBuf> {
    let debs = cache_root()?.join("debs");
    let meta = debs.join(format!("linux-image-{flavour}"));
    let real = std::fs::read_to_string(meta.join("resolved")).ok()?;
    vmlinuz_in(&debs.join(real.trim()).join("root"))
}

/// Same cache layout as `guest_images.rs`, for FERRITE_REAL_IMAGES=1.
fn fetch_kernel(flavour: &str) -> Result<PathBuf, String> {
    let debs = cache_root().ok_or("no HOME")?.join("debs");
    let meta = format!("linux-image-{flavour}");
    let out = Command::new("apt-cache")
        .args(["depends", &meta])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let real = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().to_string())
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| format!("cannot resolve {meta} (run `apt-get update`?)"))?;
    let dir = debs.join(&real);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("fetching {real} with apt-get download ...");
    let st = Command::new("apt-get")
        .args(["download", &real])
        .current_dir(&dir)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!(
            "apt-get download {real} failed (run `apt-get update`?)"
        ));
    }
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("no .deb downloaded")?;
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root"))
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("dpkg-deb -x failed".into());
    }
    std::fs::create_dir_all(debs.join(&meta)).map_err(|e| e.to_string())?;
    std::fs::write(debs.join(&meta).join("resolved"), format!("{real}\n"))
        .map_err(|e| e.to_string())?;
    vmlinuz_in(&dir.join("root")).ok_or_else(|| "no vmlinuz in package".into())
}

fn kernel(flavour: &str) -> Option<PathBuf> {
    if let Some(p) = cached_kernel(flavour) {
        return Some(p);
    }
    if std::env::var("FERRITE_REAL_IMAGES").as_deref() == Ok("1") {
        return Some(
            fetch_kernel(flavour).unwrap_or_else(|e| panic!("FERRITE_REAL_IMAGES=1 but: {e}")),
        );
    }
    println!(
        "note: skipping real-image test: linux-image-{flavour} is not in the guest-image cache \
         (set FERRITE_REAL_IMAGES=1 to fetch it)"
    );
    None
}

/// Decompress a bzImage payload with the system tool, if there is one. The
/// kernel build appends the 4-byte uncompressed size to every format but
/// gzip; strip it first.
fn decompress(payload: &[u8], c: Compression) -> Option<Vec<u8>> {
    let (tool, args): (&str, &[&str]) = match c {
        Compression::Gzip => ("gzip", &["-dc"]),
        Compression::Xz => ("xz", &["-dc", "--single-stream"]),
        Compression::Zstd => ("zstd", &["-dcq"]),
        Compression::Lz4 => ("lz4", &["-dc"]),
        Compression::Bzip2 => ("bzip2", &["-dc"]),
        Compression::Lzma => ("xz", &["-dc", "--format=lzma"]),
        Compression::Lzo => ("lzop", &["-dc"]),
    };
    let data = if c == Compression::Gzip {
        payload.to_vec()
    } else {
        payload[..payload.len() - 4].to_vec()
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    (!out.stdout.is_empty()).then_some(out.stdout)
}

fn check_kernel(flavour: &str) {
    let Some(path) = kernel(flavour) else { return };
    let image = std::fs::read(&path).unwrap();
    println!("{flavour}: {} ({} bytes)", path.display(), image.len());

    let bz = bzimage::parse(&image).expect("Debian vmlinuz parses as a bzImage");
    let h = bz.header;
    println!(
        "{flavour}: boot protocol {}, xloadflags {:#x}, relocatable {}, kernel_alignment {:#x}, pref_address {:#x}, init_size {:#x}, cmdline_size {}, payload {:#x}+{:#x}",
        h.version_str(), h.xloadflags, h.relocatable_kernel, h.kernel_alignment, h.pref_address, h.init_size,
        h.cmdline_size, h.payload_offset, h.payload_length
    );
    assert!(h.version >= 0x020c, "protocol {}", h.version_str());
    assert_ne!(h.xloadflags & XLF_KERNEL_64, 0, "XLF_KERNEL_64");
    assert!(h.relocatable_kernel);
    assert!(h.init_size as usize > bz.kernel.len());
    bz.check_64bit().unwrap();

    let kind = bz.payload_kind();
    println!("{flavour}: payload: {kind:?}");
    let PayloadKind::Compressed(c) = kind else {
        panic!("expected a compressed payload, got {kind:?}")
    };
    assert_eq!(bz.elf_payload(), Err(LoadError::CompressedPayload(c)));
    println!(
        "{flavour}: PVH from the bzImage: {}",
        LoadError::CompressedPayload(c)
    );

    // (a) The Linux 64-bit boot protocol.
    let mut mem = VecMemory::new(512 << 20);
    let initrd = vec![0xA5u8; 1 << 20];
    let plan = load_pvh(
        &image,
        Some(&initrd),
        "console=ttyS0 earlyprintk=serial",
        &mut mem,
        2,
    )
    .unwrap();
    assert_eq!(
        plan.kind,
        ImageKind::BzImage64 {
            protocol: h.version,
            payload: kind
        }
    );
    let EntryState::Linux64 {
        entry, boot_params, ..
    } = plan.entry
    else {
        panic!("{:?}", plan.entry)
    };
    let k = plan.ranges.iter().find(|r| r.what == "kernel").unwrap();
    assert_eq!(entry, k.start + 0x200);
    assert_eq!(k.start % u64::from(h.kernel_alignment), 0);
    assert_eq!(mem.read(k.start, bz.kernel.len()).unwrap(), bz.kernel);
    assert_eq!(mem.read(boot_params + 0x202, 4).unwrap(), b"HdrS");
    for w in plan.ranges.windows(2) {
        assert!(w[0].end() <= w[1].start, "{:x?} / {:x?}", w[0], w[1]);
    }
    println!("{flavour}: 64-bit entry {entry:#x}, boot_params {boot_params:#x}");
    for r in &plan.ranges {
        println!(
            "{flavour}:   {:#010x}..{:#010x} {}",
            r.start,
            r.end(),
            r.what
        );
    }

    // (b) What the compressed payload holds: vmlinux, with the PVH note.
    let Some(vmlinux) = decompress(bz.payload, c) else {
        println!("{flavour}: note: no {c} tool to decompress the payload; PVH note not checked");
        return;
    };
    let e = elf::parse(&vmlinux).expect("decompressed payload is an ELF");
    println!(
        "{flavour}: decompressed payload: {:?} ELF, {} bytes, {} PT_LOAD segments, phys {:x?}, PVH entry {:x?}",
        e.class, vmlinux.len(), e.segments.len(), e.phys_span(), e.pvh_entry
    );
    assert!(
        e.pvh_entry.is_some(),
        "Debian vmlinux is built with CONFIG_PVH=y"
    );
    // And that vmlinux loads through the PVH path.
    let mut mem = VecMemory::new(512 << 20);
    let plan = load_pvh(&vmlinux, Some(&initrd), "console=ttyS0", &mut mem, 2).unwrap();
    let EntryState::Pvh { entry, start_info } = plan.entry else {
        panic!("{:?}", plan.entry)
    };
    assert_eq!(Some(entry), e.pvh_entry);
    println!("{flavour}: vmlinux via PVH: entry {entry:#x}, start_info {start_info:#x}");
}

#[test]
fn debian_cloud_kernel() {
    check_kernel("cloud-amd64");
}

#[test]
fn debian_generic_kernel() {
    check_kernel("amd64");
}
