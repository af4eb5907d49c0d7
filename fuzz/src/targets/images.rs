//! Builders of valid kernel images for the loader seeds (and the short
//! CI round): ELF64/ELF32 with the Xen PVH note, bzImages with a
//! compressed or an ELF payload.

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// A note (4-byte padding).
pub fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&ntype.to_le_bytes());
    v.extend_from_slice(name);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v.extend_from_slice(desc);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// Xen's notes with `XEN_ELFNOTE_PHYS32_ENTRY` (18) = `entry`.
pub fn pvh_notes(entry: u32) -> Vec<u8> {
    let mut n = note(b"GNU\0", 3, &[1, 2, 3, 4]);
    n.extend(note(b"Xen\0", 6, b"linux\0"));
    n.extend(note(b"Xen\0", 18, &entry.to_le_bytes()));
    n
}

/// One PT_LOAD segment: `data` at `paddr`, `memsz` bytes in memory.
pub struct Seg {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

/// An x86 ELF (64- or 32-bit) with `segs` and a PT_NOTE of `notes`.
pub fn elf(elf64: bool, segs: &[Seg], notes: &[u8]) -> Vec<u8> {
    let (ehsize, phentsize) = if elf64 { (64usize, 56usize) } else { (52, 32) };
    let nph = segs.len() + usize::from(!notes.is_empty());
    let mut img = vec![0u8; ehsize + nph * phentsize];
    img[0..4].copy_from_slice(b"\x7fELF");
    img[4] = if elf64 { 2 } else { 1 };
    img[5] = 1;
    img[6] = 1;
    put(&mut img, 16, 2, 2); // ET_EXEC
    put(&mut img, 18, 2, if elf64 { 62 } else { 3 });
    put(&mut img, 20, 4, 1);
    if elf64 {
        put(&mut img, 24, 8, 0xffff_ffff_8100_0000);
        put(&mut img, 32, 8, 64);
        put(&mut img, 52, 2, 64);
        put(&mut img, 54, 2, 56);
        put(&mut img, 56, 2, nph as u64);
    } else {
        put(&mut img, 24, 4, 0x10_0000);
        put(&mut img, 28, 4, 52);
        put(&mut img, 40, 2, 52);
        put(&mut img, 42, 2, 32);
        put(&mut img, 44, 2, nph as u64);
    }
    let mut bodies: Vec<(u32, u64, u64, &[u8])> = segs.iter().map(|s| (PT_LOAD, s.paddr, s.memsz, &s.data[..])).collect();
    if !notes.is_empty() {
        bodies.push((PT_NOTE, 0, notes.len() as u64, notes));
    }
    for (i, (ty, paddr, memsz, body)) in bodies.into_iter().enumerate() {
        let base = ehsize + i * phentsize;
        let off = img.len() as u64;
        let filesz = body.len() as u64;
        if elf64 {
            put(&mut img, base, 4, ty.into());
            put(&mut img, base + 4, 4, 7);
            put(&mut img, base + 8, 8, off);
            put(&mut img, base + 16, 8, paddr | 0xffff_ffff_8000_0000);
            put(&mut img, base + 24, 8, paddr);
            put(&mut img, base + 32, 8, filesz);
            put(&mut img, base + 40, 8, memsz);
            put(&mut img, base + 48, 8, 4);
        } else {
            put(&mut img, base, 4, ty.into());
            put(&mut img, base + 4, 4, off);
            put(&mut img, base + 8, 4, paddr);
            put(&mut img, base + 12, 4, paddr);
            put(&mut img, base + 16, 4, filesz);
            put(&mut img, base + 20, 4, memsz);
            put(&mut img, base + 24, 4, 7);
            put(&mut img, base + 28, 4, 4);
        }
        img.extend_from_slice(body);
    }
    img
}

/// A small PVH kernel: code at 1 MiB (entry there), data and BSS above.
pub fn pvh_elf(elf64: bool) -> Vec<u8> {
    let segs = [
        Seg { paddr: 0x10_0000, data: vec![0xf4; 0x40], memsz: 0x1000 },
        Seg { paddr: 0x20_0000, data: vec![0x11; 0x20], memsz: 0x3000 },
    ];
    elf(elf64, &segs, &pvh_notes(0x10_0000))
}

/// A bzImage (4 setup sectors) with protocol `version`, `xloadflags`, and
/// `payload` at offset 0x100 of a protected-mode kernel of `kernel_len`.
pub fn bzimage(version: u16, xloadflags: u16, payload: &[u8], kernel_len: usize) -> Vec<u8> {
    let setup = 5 * 512;
    let mut img = vec![0u8; setup + kernel_len.max(0x100 + payload.len())];
    img[0x1f1] = 4;
    put(&mut img, 0x1fe, 2, 0xaa55);
    img[0x200] = 0xeb;
    img[0x201] = 0x6a; // the header ends at 0x26c
    img[0x202..0x206].copy_from_slice(b"HdrS");
    put(&mut img, 0x206, 2, version.into());
    img[0x211] = 1; // LOADED_HIGH
    put(&mut img, 0x214, 4, 0x10_0000);
    put(&mut img, 0x22c, 4, 0x7fff_ffff);
    put(&mut img, 0x230, 4, 0x20_0000);
    img[0x234] = 1; // relocatable
    img[0x235] = 21;
    put(&mut img, 0x236, 2, xloadflags.into());
    put(&mut img, 0x238, 4, 2047);
    put(&mut img, 0x248, 4, 0x100);
    put(&mut img, 0x24c, 4, payload.len() as u64);
    put(&mut img, 0x258, 8, 0x100_0000);
    put(&mut img, 0x260, 4, 0x40_0000);
    img[setup + 0x100..setup + 0x100 + payload.len()].copy_from_slice(payload);
    img
}

/// Writes the low `width` bytes of `v` at `at`, little-endian.
fn put(img: &mut [u8], at: usize, width: usize, v: u64) {
    img[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}
