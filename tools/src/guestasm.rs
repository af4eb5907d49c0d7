//! Tiny PVH test guests: assembles `qemu-tests/guests/*.S` (GNU as, 32-bit
//! code) with the system `as` and `ld` into ELF files that carry the Xen
//! `PHYS32_ENTRY` note, loaded at 1 MiB, so Ferrite can boot them as PVH
//! domains. Used by the hostile-guest tests and `ferrite bench`.

use crate::build;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the guests load: 1 MiB, above the real-mode area.
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// `XEN_ELFNOTE_PHYS32_ENTRY`.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One loadable segment (RWX: the guests are a few hundred bytes of code
/// and data) and a `PT_NOTE` segment for `.note.Xen`, which Ferrite's
/// loader finds through the program headers.
pub const LINKER_SCRIPT: &str = "\
ENTRY(_start)
PHDRS
{
    image PT_LOAD FLAGS(7);
    note  PT_NOTE FLAGS(4);
}
SECTIONS
{
    . = 0x100000;
    .text : { *(.text .text.*) } :image
    .rodata : { *(.rodata .rodata.*) } :image
    .note.Xen : { KEEP(*(.note.Xen)) } :image :note
    .data : { *(.data .data.*) } :image
    .bss : { *(.bss .bss.*) *(COMMON) } :image
    /DISCARD/ : { *(.note.gnu.*) *(.comment) }
}
";

/// `qemu-tests/guests`: the guest sources (and their shared `pvh.inc`, `tss.inc`).
pub fn guests_dir() -> PathBuf {
    build::workspace_root().join("qemu-tests").join("guests")
}

/// The source of the guest called `name` (`hello` → `qemu-tests/guests/hello.S`).
pub fn guest_source(name: &str) -> PathBuf {
    guests_dir().join(format!("{name}.S"))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run {what} ({:?}); install binutils (sudo apt-get install binutils)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Assembles `source` (GNU as; `.include` files are looked up next to it)
/// and links it at [`LOAD_ADDRESS`] into the PVH ELF `out`, then checks the
/// result has the Xen PHYS32_ENTRY note. Returns the PVH entry address.
///
/// Intermediate files get unique names and the ELF is renamed into place,
/// so concurrent callers writing the same `out` do not see partial files.
pub fn assemble_pvh_guest(source: &Path, out: &Path) -> Result<u32> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    if !source.is_file() {
        bail!("guest source {} does not exist", source.display());
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tag = format!(
        "{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let file = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into());
    let obj = dir.join(format!(".{file}.{tag}.o"));
    let script = dir.join(format!(".{file}.{tag}.ld"));
    let tmp_elf = dir.join(format!(".{file}.{tag}.elf"));
    let include = source.parent().unwrap_or(Path::new("."));
    let result = (|| -> Result<u32> {
        std::fs::write(&script, LINKER_SCRIPT)
            .with_context(|| format!("cannot write {}", script.display()))?;
        run(
            Command::new("as")
                .arg("--64")
                .arg("-I")
                .arg(include)
                .arg("-o")
                .arg(&obj)
                .arg(source),
            &format!("as --64 {}", source.display()),
        )?;
        run(
            Command::new("ld")
                .args([
                    "-m",
                    "elf_x86_64",
                    "--build-id=none",
                    "-nostdlib",
                    "-static",
                    "-e",
                    "_start",
                    "-T",
                ])
                .arg(&script)
                .arg("-o")
                .arg(&tmp_elf)
                .arg(&obj),
            &format!("ld (linking {})", source.display()),
        )?;
        let elf = std::fs::read(&tmp_elf)
            .with_context(|| format!("cannot read {}", tmp_elf.display()))?;
        let entry = pvh_entry(&elf)
            .with_context(|| format!("{} (from {})", out.display(), source.display()))?;
        std::fs::rename(&tmp_elf, out)
            .with_context(|| format!("cannot move the guest to {}", out.display()))?;
        Ok(entry)
    })();
    for f in [&obj, &script, &tmp_elf] {
        let _ = std::fs::remove_file(f);
    }
    result
}

/// Assembles a real-mode boot sector (`.code16`, linked at 0x7C00) into a
/// flat binary of exactly 512 bytes ending in the 0x55AA signature: the
/// MBR of a test disk that a BIOS loads and runs.
pub fn assemble_boot_sector(source: &Path, out: &Path) -> Result<Vec<u8>> {
    let bin = assemble_real_mode(source, out, "boot sector")?;
    if bin.len() != 512 || bin[510..] != [0x55, 0xAA] {
        bail!("{}: the boot sector is {} bytes; it must be 512 ending in 55 aa (pad with .org 510)", source.display(), bin.len());
    }
    Ok(bin)
}

/// `as --32` and `ld` to a flat binary linked at 0x7C00 (where a BIOS
/// loads a boot sector).
fn assemble_real_mode(source: &Path, out: &Path, what: &str) -> Result<Vec<u8>> {
    if !source.is_file() {
        bail!("{what} source {} does not exist", source.display());
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let obj = out.with_extension("o");
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(source), &format!("as --32 {}", source.display()))?;
    run(
        Command::new("ld")
            .args(["-m", "elf_i386", "--build-id=none", "-nostdlib", "-static", "-Ttext", "0x7c00", "--oformat", "binary", "-e", "0x7c00"])
            .arg("-o")
            .arg(out)
            .arg(&obj),
        &format!("ld (linking {})", source.display()),
    )?;
    let _ = std::fs::remove_file(&obj);
    std::fs::read(out).with_context(|| format!("cannot read {}", out.display()))
}

/// Most bytes [`assemble_boot_image`] accepts: what fits below the BIOS
/// data at 0x9FC00 when loaded at 0x7C00 is more, but a single int 13h
/// call moves at most 127 sectors.
pub const BOOT_IMAGE_MAX: usize = 64 << 10;

/// Like [`assemble_boot_sector`], for boot code longer than one sector:
/// assembles `source` (`.code16` at the start, linked at 0x7C00) into a
/// flat binary of a whole number of 512-byte sectors (at most
/// [`BOOT_IMAGE_MAX`] bytes) whose first sector ends in the 0x55AA
/// signature. The first sector is the MBR a BIOS loads; it must load the
/// following sectors itself (e.g. with int 13h AH=42h), which is why the
/// source, not this function, decides the image's length (pad it with
/// `.org <sectors * 512>` at the end).
pub fn assemble_boot_image(source: &Path, out: &Path) -> Result<Vec<u8>> {
    let bin = assemble_real_mode(source, out, "boot image")?;
    if bin.len() < 512 || bin.len() % 512 != 0 || bin.len() > BOOT_IMAGE_MAX || bin[510..512] != [0x55, 0xAA] {
        bail!(
            "{}: the boot image is {} bytes; it must be whole 512-byte sectors, at most {} bytes, with 55 aa at offset 510 (pad with .org 510 and .org <sectors * 512>)",
            source.display(),
            bin.len(),
            BOOT_IMAGE_MAX
        );
    }
    Ok(bin)
}

/// Assembles `qemu-tests/guests/<name>.S` into `dir/<name>.elf`.
pub fn build_guest(name: &str, dir: &Path) -> Result<PathBuf> {
    let out = dir.join(format!("{name}.elf"));
    assemble_pvh_guest(&guest_source(name), &out)?;
    Ok(out)
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The PHYS32_ENTRY value of an ELF64's `Xen` note (found through its
/// `PT_NOTE` program headers, as Ferrite's loader does).
pub fn pvh_entry(elf: &[u8]) -> Result<u32> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        bail!("not an ELF64 file");
    }
    let bad = || anyhow::anyhow!("truncated ELF header");
    let phoff = u64_at(elf, 0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(elf, 0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(elf, 0x38).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let off = u64_at(elf, ph + 8).ok_or_else(bad)? as usize;
        let size = u64_at(elf, ph + 32).ok_or_else(bad)? as usize;
        let notes = elf
            .get(off..off.saturating_add(size))
            .context("PT_NOTE runs past the end of the file")?;
        let mut p = 0;
        let align4 = |n: usize| (n + 3) & !3;
        while p + 12 <= notes.len() {
            let namesz = u32_at(notes, p).unwrap_or(0) as usize;
            let descsz = u32_at(notes, p + 4).unwrap_or(0) as usize;
            let ty = u32_at(notes, p + 8).unwrap_or(0);
            let name_at = p + 12;
            let desc_at = name_at + align4(namesz);
            let name = notes
                .get(name_at..name_at + namesz)
                .context("note name runs past its segment")?;
            if name == b"Xen\0" && ty == XEN_ELFNOTE_PHYS32_ENTRY {
                let desc = notes
                    .get(desc_at..desc_at + descsz)
                    .context("note data runs past its segment")?;
                let entry = u32_at(desc, 0).context("PHYS32_ENTRY note shorter than 4 bytes")?;
                return Ok(entry);
            }
            p = desc_at + align4(descsz);
        }
    }
    bail!("no Xen PHYS32_ENTRY note in a PT_NOTE segment (Ferrite cannot boot it as PVH)")
}

/// The value of symbol `name` in an ELF64 file's `.symtab` (e.g. a label
/// a test guest exports, like `fault_insn`).
pub fn symbol_address(elf: &[u8], name: &str) -> Result<u64> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        bail!("not an ELF64 file");
    }
    let bad = || anyhow::anyhow!("truncated ELF file");
    let shoff = u64_at(elf, 0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(elf, 0x3A).ok_or_else(bad)? as usize;
    let shnum = u16_at(elf, 0x3C).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize, u32)> {
        let sh = shoff + i * shentsize;
        Some((
            u32_at(elf, sh + 4)?,
            u64_at(elf, sh + 0x18)? as usize,
            u64_at(elf, sh + 0x20)? as usize,
            u32_at(elf, sh + 0x28)?,
        ))
    };
    for i in 0..shnum {
        let (ty, off, size, link) = section(i).ok_or_else(bad)?;
        if ty != 2 {
            continue; // not SHT_SYMTAB
        }
        let (_, stroff, strsize, _) = section(link as usize).ok_or_else(bad)?;
        let strtab = elf.get(stroff..stroff + strsize).ok_or_else(bad)?;
        let syms = elf.get(off..off + size).ok_or_else(bad)?;
        for sym in syms.chunks_exact(24) {
            let n = u32_at(sym, 0).unwrap_or(0) as usize;
            let sym_name = strtab
                .get(n..)
                .and_then(|t| t.split(|&b| b == 0).next())
                .unwrap_or(b"");
            if sym_name == name.as_bytes() {
                return Ok(u64_at(sym, 8).unwrap_or(0));
            }
        }
    }
    bail!("no symbol {name:?} in the ELF file")
}

/// A test disk for the HVM demo and tests: `mbr` in sector 0, then
/// `sectors - 1` sectors whose first dword is their LBA and last dword its
/// complement, with varying bytes between (what
/// `qemu-tests/guests/bootsector/mbr_disk_check.S` checks).
pub fn mbr_test_disk(mbr: &[u8], sectors: usize) -> Vec<u8> {
    const SECTOR: usize = 512;
    let mut disk = vec![0u8; sectors.max(1) * SECTOR];
    let n = mbr.len().min(SECTOR);
    disk[..n].copy_from_slice(&mbr[..n]);
    for lba in 1..sectors {
        let s = &mut disk[lba * SECTOR..(lba + 1) * SECTOR];
        for (i, b) in s.iter_mut().enumerate() {
            *b = (lba.wrapping_mul(31) + i * 7) as u8;
        }
        s[..4].copy_from_slice(&(lba as u32).to_le_bytes());
        s[508..].copy_from_slice(&(!(lba as u32)).to_le_bytes());
    }
    disk
}

/// SeaBIOS as the system's QEMU install ships it (Debian's `seabios`
/// package, which `qemu-system-x86` depends on), if present.
pub fn seabios_image() -> Option<PathBuf> {
    ["/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/bios-256k.bin"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_binutils() -> bool {
        Command::new("as")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn every_guest_assembles_with_a_pvh_note() {
        if !have_binutils() {
            eprintln!("SKIPPED: no `as` (binutils) on this host");
            return;
        }
        let dir = build::workspace_root().join("target").join("guestasm-unit");
        let mut names: Vec<String> = std::fs::read_dir(guests_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".S"))
                    .map(String::from)
            })
            .collect();
        names.sort();
        assert!(names.iter().any(|n| n == "hello"), "{names:?}");
        for name in names {
            let elf = build_guest(&name, &dir).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let bytes = std::fs::read(&elf).unwrap();
            let entry = pvh_entry(&bytes).unwrap();
            // The entry is _start, inside the image at 1 MiB.
            assert!(
                (LOAD_ADDRESS as u32..LOAD_ADDRESS as u32 + 0x10_0000).contains(&entry),
                "{name}: {entry:#x}"
            );
            assert_eq!(
                u64_at(&bytes, 0x18),
                Some(u64::from(entry)),
                "{name}: ELF entry != PVH entry"
            );
            assert_eq!(
                symbol_address(&bytes, "_start").unwrap(),
                u64::from(entry),
                "{name}"
            );
            assert!(symbol_address(&bytes, "no_such_symbol").is_err());
        }
    }

    #[test]
    fn boot_images_assemble() {
        if !have_binutils() {
            eprintln!("SKIPPED: no `as` (binutils) on this host");
            return;
        }
        let dir = build::workspace_root().join("target").join("guestasm-unit");
        let src = guests_dir().join("bootsector");
        let bench = assemble_boot_image(&src.join("bench_hvm.S"), &dir.join("bench_hvm.bin")).unwrap();
        assert!(bench.len() > 512 && bench.len() % 512 == 0, "{}", bench.len());
        assert_eq!(bench[510..512], [0x55, 0xAA]);
        // A one-sector MBR is a boot image too; a longer image is no boot sector.
        let mbr = assemble_boot_image(&src.join("mbr_disk_check.S"), &dir.join("mbr_image.bin")).unwrap();
        assert_eq!(mbr.len(), 512);
        assert!(assemble_boot_sector(&src.join("bench_hvm.S"), &dir.join("bench_hvm_sector.bin")).is_err());
        assert!(assemble_boot_image(&src.join("no_such.S"), &dir.join("x.bin")).is_err());
    }

    #[test]
    fn missing_note_and_garbage_are_errors() {
        assert!(pvh_entry(b"not an elf").is_err());
        // A minimal ELF64 header with no program headers.
        let mut h = vec![0u8; 64];
        h[..5].copy_from_slice(b"\x7fELF\x02");
        let e = pvh_entry(&h).unwrap_err();
        assert!(e.to_string().contains("PHYS32_ENTRY"), "{e}");
    }
}
