//! ELF64 and ELF32 (little-endian, x86) kernel images: PT_LOAD segments at
//! their physical addresses, and the Xen `PHYS32_ENTRY` note that gives the
//! PVH entry point.
//!
//! Linux puts the note in vmlinux (`arch/x86/platform/pvh/head.S`:
//! `ELFNOTE(Xen, XEN_ELFNOTE_PHYS32_ENTRY, .long pvh_start_xen -
//! __START_KERNEL_map)`): name `"Xen\0"`, type 18, a 4-byte physical
//! address. Xen reads the value as a 4- or 8-byte number, and so do we.

use crate::bytes::{slice, u16_at, u32_at, u64_at};
use crate::LoadError;
use alloc::vec::Vec;

/// `XEN_ELFNOTE_PHYS32_ENTRY` from Xen's `public/elfnote.h`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// At most this many program headers (a real kernel has < 10).
pub const MAX_PHDRS: u16 = 256;

/// ELF class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfClass {
    Elf32,
    Elf64,
}

/// One PT_LOAD segment, validated: `offset + filesz` is inside the image,
/// `filesz <= memsz`, and `paddr + memsz` does not overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Index of the program header.
    pub index: usize,
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    /// One past the last guest-physical byte.
    pub fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// A parsed ELF kernel image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    pub class: ElfClass,
    pub machine: u16,
    /// `e_entry` (a virtual address for Linux; not what PVH uses).
    pub e_entry: u64,
    /// PT_LOAD segments with `memsz > 0`, sorted by `paddr`, not
    /// overlapping.
    pub segments: Vec<Segment>,
    /// The PVH entry from the `Xen` PHYS32_ENTRY note, if any.
    pub pvh_entry: Option<u32>,
}

impl ElfImage {
    /// Lowest and one-past-highest guest-physical address of the segments.
    pub fn phys_span(&self) -> Option<(u64, u64)> {
        let first = self.segments.first()?;
        let end = self.segments.iter().map(|s| s.end()).max()?;
        Some((first.paddr, end))
    }
}

/// Does `image` start with the ELF magic?
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Parse an ELF32 or ELF64 little-endian x86 image. Fails on any
/// inconsistent header field; segments must not overlap physically.
pub fn parse(image: &[u8]) -> Result<ElfImage, LoadError> {
    let ident = slice(image, 0, 16, "ELF identification")?;
    if &ident[0..4] != b"\x7fELF" {
        return Err(LoadError::UnknownFormat);
    }
    let class = match ident[4] {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        c => {
            return Err(LoadError::ElfUnsupported {
                what: "class (EI_CLASS)",
                value: c.into(),
            })
        }
    };
    if ident[5] != 1 {
        return Err(LoadError::ElfUnsupported {
            what: "data encoding (EI_DATA, need little-endian)",
            value: ident[5].into(),
        });
    }
    let machine = u16_at(image, 18, "ELF header")?;
    let want = match class {
        ElfClass::Elf32 => EM_386,
        ElfClass::Elf64 => EM_X86_64,
    };
    // An ELF32 x86-64 object (x32) or an ELF64 i386 one would be odd; only
    // the two natural pairings are accepted.
    if machine != want {
        return Err(LoadError::ElfUnsupported {
            what: "machine (e_machine)",
            value: machine.into(),
        });
    }
    let (e_entry, phoff, phentsize, phnum, min_phent) = match class {
        ElfClass::Elf64 => (
            u64_at(image, 24, "ELF header")?,
            u64_at(image, 32, "ELF header")?,
            u16_at(image, 54, "ELF header")?,
            u16_at(image, 56, "ELF header")?,
            56u16,
        ),
        ElfClass::Elf32 => (
            u32_at(image, 24, "ELF header")?.into(),
            u32_at(image, 28, "ELF header")?.into(),
            u16_at(image, 42, "ELF header")?,
            u16_at(image, 44, "ELF header")?,
            32u16,
        ),
    };
    if phnum == 0 {
        return Err(LoadError::ElfUnsupported {
            what: "number of program headers (e_phnum)",
            value: 0,
        });
    }
    if phnum > MAX_PHDRS {
        // Includes PN_XNUM (0xffff), the extended numbering we do not support.
        return Err(LoadError::ElfUnsupported {
            what: "number of program headers (e_phnum)",
            value: phnum.into(),
        });
    }
    if phentsize < min_phent {
        return Err(LoadError::ElfUnsupported {
            what: "program header size (e_phentsize)",
            value: phentsize.into(),
        });
    }
    // The whole table must be inside the image.
    let table_len = u64::from(phentsize) * u64::from(phnum);
    slice(image, phoff, table_len, "program header table")?;

    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for index in 0..usize::from(phnum) {
        let base = phoff + index as u64 * u64::from(phentsize);
        let p_type = u32_at(image, base, "program header")?;
        let (offset, paddr, filesz, memsz, align) = match class {
            ElfClass::Elf64 => (
                u64_at(image, base + 8, "program header")?,
                u64_at(image, base + 24, "program header")?,
                u64_at(image, base + 32, "program header")?,
                u64_at(image, base + 40, "program header")?,
                u64_at(image, base + 48, "program header")?,
            ),
            ElfClass::Elf32 => (
                u32_at(image, base + 4, "program header")?.into(),
                u32_at(image, base + 12, "program header")?.into(),
                u32_at(image, base + 16, "program header")?.into(),
                u32_at(image, base + 20, "program header")?.into(),
                u32_at(image, base + 28, "program header")?.into(),
            ),
        };
        match p_type {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(LoadError::ElfBadSegment {
                        index,
                        reason: "p_filesz is larger than p_memsz",
                    });
                }
                if offset
                    .checked_add(filesz)
                    .is_none_or(|e| e > image.len() as u64)
                {
                    return Err(LoadError::ElfBadSegment {
                        index,
                        reason: "file data (p_offset + p_filesz) runs past the end of the image",
                    });
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(LoadError::ElfBadSegment {
                        index,
                        reason: "p_paddr + p_memsz overflows",
                    });
                }
                if memsz > 0 {
                    segments.push(Segment {
                        index,
                        paddr,
                        offset,
                        filesz,
                        memsz,
                    });
                }
            }
            PT_NOTE => {
                let notes = slice(image, offset, filesz, "PT_NOTE segment").map_err(|_| {
                    LoadError::ElfBadSegment {
                        index,
                        reason: "PT_NOTE data runs past the end of the image",
                    }
                })?;
                if let Some(e) = find_pvh_note(notes, align)? {
                    pvh_entry.get_or_insert(e);
                }
            }
            _ => {}
        }
    }
    segments.sort_by_key(|s| s.paddr);
    for w in segments.windows(2) {
        if w[0].end() > w[1].paddr {
            let (a, b) = (w[0].index.min(w[1].index), w[0].index.max(w[1].index));
            return Err(LoadError::SegmentsOverlap {
                first: a,
                second: b,
            });
        }
    }
    if let Some(e) = pvh_entry {
        let e = u64::from(e);
        if !segments
            .iter()
            .any(|s| e >= s.paddr && e < s.paddr + s.filesz)
        {
            return Err(LoadError::EntryOutsideSegments { entry: e });
        }
    }
    Ok(ElfImage {
        class,
        machine,
        e_entry,
        segments,
        pvh_entry,
    })
}

/// Walk the notes of one PT_NOTE segment; return the PHYS32_ENTRY value.
/// `p_align` of 8 means 8-byte padding of name and descriptor (rare);
/// anything else means the usual 4.
pub fn find_pvh_note(notes: &[u8], p_align: u64) -> Result<Option<u32>, LoadError> {
    let pad = if p_align == 8 { 8u64 } else { 4u64 };
    let round = |v: u64| v.checked_add(pad - 1).map(|x| x & !(pad - 1));
    let mut off = 0u64;
    let len = notes.len() as u64;
    while off + 12 <= len {
        let namesz = u64::from(u32_at(notes, off, "note header")?);
        let descsz = u64::from(u32_at(notes, off + 4, "note header")?);
        let ntype = u32_at(notes, off + 8, "note header")?;
        let name_off = off + 12;
        let desc_off = round(namesz).and_then(|n| name_off.checked_add(n));
        let next = desc_off.and_then(|d| round(descsz).and_then(|x| d.checked_add(x)));
        let (Some(desc_off), Some(next)) = (desc_off, next) else {
            return Err(LoadError::BadPvhNote("note sizes overflow"));
        };
        if desc_off.checked_add(descsz).is_none_or(|e| e > len) {
            // A truncated trailing note: stop (the notes section is only
            // advisory except for the one we need).
            break;
        }
        let name = slice(notes, name_off, namesz, "note name")?;
        let is_xen = name == b"Xen\0" || name == b"Xen";
        if is_xen && ntype == XEN_ELFNOTE_PHYS32_ENTRY {
            let entry = match descsz {
                4 => u64::from(u32_at(notes, desc_off, "note")?),
                8 => u64_at(notes, desc_off, "note")?,
                _ => return Err(LoadError::BadPvhNote("descriptor is neither 4 nor 8 bytes")),
            };
            let entry = u32::try_from(entry)
                .map_err(|_| LoadError::BadPvhNote("entry point is above 4 GiB"))?;
            if entry == 0 {
                return Err(LoadError::BadPvhNote("entry point is 0"));
            }
            return Ok(Some(entry));
        }
        off = next;
    }
    Ok(None)
}

/// Copy the segments of `elf` (from `image`) into guest memory and zero
/// their BSS. Ranges are not checked here; `layout` reserves them first.
pub fn load_segments(
    elf: &ElfImage,
    image: &[u8],
    mem: &mut dyn crate::GuestMemory,
) -> Result<(), LoadError> {
    for s in &elf.segments {
        let data = slice(image, s.offset, s.filesz, "segment data")?;
        mem.write(s.paddr, data)?;
        if s.memsz > s.filesz {
            mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)?;
        }
    }
    Ok(())
}

/// Builders of synthetic ELF images, for this crate's tests.
#[cfg(test)]
pub(crate) mod testimg {
    use alloc::vec::Vec;

    pub struct Seg {
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// A note blob (4-byte padding).
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

    pub fn pvh_note(entry: u32) -> Vec<u8> {
        let mut n = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        n.extend(note(b"Xen\0", 6, b"linux\0"));
        n.extend(note(b"Xen\0", 18, &entry.to_le_bytes()));
        n
    }

    /// Build an ELF64 (or ELF32) x86 image with the given PT_LOAD segments
    /// and one PT_NOTE segment holding `notes` (if non-empty).
    pub fn build(elf64: bool, segs: &[Seg], notes: &[u8]) -> Vec<u8> {
        let (ehsize, phentsize) = if elf64 { (64usize, 56usize) } else { (52, 32) };
        let nph = segs.len() + usize::from(!notes.is_empty());
        let mut data_off = ehsize + nph * phentsize;
        let mut img = alloc::vec![0u8; data_off];
        img[0..4].copy_from_slice(b"\x7fELF");
        img[4] = if elf64 { 2 } else { 1 };
        img[5] = 1;
        img[6] = 1;
        let p16 =
            |img: &mut Vec<u8>, o: usize, v: u16| img[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let p32 =
            |img: &mut Vec<u8>, o: usize, v: u32| img[o..o + 4].copy_from_slice(&v.to_le_bytes());
        let p64 =
            |img: &mut Vec<u8>, o: usize, v: u64| img[o..o + 8].copy_from_slice(&v.to_le_bytes());
        p16(&mut img, 16, 2); // ET_EXEC
        p16(&mut img, 18, if elf64 { 62 } else { 3 });
        p32(&mut img, 20, 1);
        if elf64 {
            p64(&mut img, 24, 0xffff_ffff_8100_0000);
            p64(&mut img, 32, 64);
            p16(&mut img, 52, 64);
            p16(&mut img, 54, 56);
            p16(&mut img, 56, nph as u16);
        } else {
            p32(&mut img, 24, 0x10_0000);
            p32(&mut img, 28, 52);
            p16(&mut img, 40, 52);
            p16(&mut img, 42, 32);
            p16(&mut img, 44, nph as u16);
        }
        let mut bodies: Vec<(u32, u64, u64, u64, Vec<u8>)> = Vec::new();
        for s in segs {
            bodies.push((1, s.paddr, s.data.len() as u64, s.memsz, s.data.clone()));
        }
        if !notes.is_empty() {
            bodies.push((4, 0, notes.len() as u64, notes.len() as u64, notes.to_vec()));
        }
        for (i, (ty, paddr, filesz, memsz, body)) in bodies.iter().enumerate() {
            let base = ehsize + i * phentsize;
            let off = data_off as u64;
            if elf64 {
                p32(&mut img, base, *ty);
                p32(&mut img, base + 4, 7);
                p64(&mut img, base + 8, off);
                p64(&mut img, base + 16, *paddr | 0xffff_ffff_8000_0000);
                p64(&mut img, base + 24, *paddr);
                p64(&mut img, base + 32, *filesz);
                p64(&mut img, base + 40, *memsz);
                p64(&mut img, base + 48, 4);
            } else {
                p32(&mut img, base, *ty);
                p32(&mut img, base + 4, off as u32);
                p32(&mut img, base + 8, *paddr as u32);
                p32(&mut img, base + 12, *paddr as u32);
                p32(&mut img, base + 16, *filesz as u32);
                p32(&mut img, base + 20, *memsz as u32);
                p32(&mut img, base + 24, 7);
                p32(&mut img, base + 28, 4);
            }
            img.extend_from_slice(body);
            data_off += body.len();
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::testimg::*;
    use super::*;
    use alloc::vec;

    fn two_segs() -> Vec<Seg> {
        vec![
            Seg {
                paddr: 0x100_0000,
                data: vec![0xAA; 0x300],
                memsz: 0x1000,
            },
            Seg {
                paddr: 0x100_1000,
                data: vec![0xBB; 0x10],
                memsz: 0x10,
            },
        ]
    }

    #[test]
    fn parses_elf64_with_pvh_note() {
        let img = build(true, &two_segs(), &pvh_note(0x100_0040));
        let e = parse(&img).unwrap();
        assert_eq!(e.class, ElfClass::Elf64);
        assert_eq!(e.segments.len(), 2);
        assert_eq!(e.pvh_entry, Some(0x100_0040));
        assert_eq!(e.phys_span(), Some((0x100_0000, 0x100_1010)));
    }

    #[test]
    fn parses_elf32_with_pvh_note() {
        let img = build(false, &two_segs(), &pvh_note(0x100_1004));
        let e = parse(&img).unwrap();
        assert_eq!(e.class, ElfClass::Elf32);
        assert_eq!(e.pvh_entry, Some(0x100_1004));
    }

    #[test]
    fn eight_byte_note_descriptor() {
        let mut n = note(b"Xen\0", 18, &0x20_0000u64.to_le_bytes());
        n.extend(note(b"Xen\0", 18, &0x30_0000u32.to_le_bytes()));
        assert_eq!(find_pvh_note(&n, 4).unwrap(), Some(0x20_0000));
        let high = note(b"Xen\0", 18, &0x1_0000_0000u64.to_le_bytes());
        assert!(matches!(
            find_pvh_note(&high, 4),
            Err(LoadError::BadPvhNote(_))
        ));
        let odd = note(b"Xen\0", 18, &[1, 2]);
        assert!(matches!(
            find_pvh_note(&odd, 4),
            Err(LoadError::BadPvhNote(_))
        ));
    }

    #[test]
    fn no_note_and_other_vendors() {
        let img = build(
            true,
            &two_segs(),
            &note(b"Xex\0", 18, &0x100_0000u32.to_le_bytes()),
        );
        assert_eq!(parse(&img).unwrap().pvh_entry, None);
        let img = build(true, &two_segs(), &[]);
        assert_eq!(parse(&img).unwrap().pvh_entry, None);
    }

    #[test]
    fn rejects_overlapping_segments() {
        let segs = vec![
            Seg {
                paddr: 0x100_0000,
                data: vec![1; 16],
                memsz: 0x2000,
            },
            Seg {
                paddr: 0x100_1000,
                data: vec![2; 16],
                memsz: 0x10,
            },
        ];
        let err = parse(&build(true, &segs, &[])).unwrap_err();
        assert_eq!(
            err,
            LoadError::SegmentsOverlap {
                first: 0,
                second: 1
            }
        );
        assert!(alloc::format!("{err}").contains("overlap"));
    }

    #[test]
    fn rejects_entry_outside_segments() {
        let img = build(true, &two_segs(), &pvh_note(0x500_0000));
        assert_eq!(
            parse(&img).unwrap_err(),
            LoadError::EntryOutsideSegments { entry: 0x500_0000 }
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let good = build(true, &two_segs(), &pvh_note(0x100_0000));
        // Truncated everywhere: never panics, always an error.
        for n in 0..good.len() {
            let r = parse(&good[..n]);
            assert!(r.is_err(), "truncated to {n} parsed");
        }
        let mut bad = good.clone();
        bad[5] = 2; // big-endian
        assert!(matches!(parse(&bad), Err(LoadError::ElfUnsupported { .. })));
        let mut bad = good.clone();
        bad[18] = 40; // ARM
        assert!(matches!(parse(&bad), Err(LoadError::ElfUnsupported { .. })));
        let mut bad = good.clone();
        bad[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // PN_XNUM
        assert!(matches!(parse(&bad), Err(LoadError::ElfUnsupported { .. })));
        let mut bad = good.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
        assert!(matches!(parse(&bad), Err(LoadError::Truncated { .. })));
        // filesz > memsz in phdr 0
        let mut bad = good.clone();
        bad[64 + 32..64 + 40].copy_from_slice(&0x2000u64.to_le_bytes());
        assert!(matches!(
            parse(&bad),
            Err(LoadError::ElfBadSegment { index: 0, .. })
        ));
        // offset + filesz past the end
        let mut bad = good.clone();
        bad[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert!(matches!(
            parse(&bad),
            Err(LoadError::ElfBadSegment { index: 0, .. })
        ));
        // paddr + memsz overflows
        let mut bad = good.clone();
        bad[64 + 24..64 + 32].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert!(matches!(
            parse(&bad),
            Err(LoadError::ElfBadSegment { index: 0, .. })
        ));
        // note size fields overflow
        let mut n = note(b"Xen\0", 18, &[0; 4]);
        n[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(find_pvh_note(&n, 4).is_err() || find_pvh_note(&n, 4) == Ok(None));
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let img = build(true, &two_segs(), &pvh_note(0x100_0000));
        let e = parse(&img).unwrap();
        let mut mem = crate::VecMemory::new(0x200_0000);
        crate::GuestMemory::fill(&mut mem, 0x100_0000, 0x2000, 0x55).unwrap();
        load_segments(&e, &img, &mut mem).unwrap();
        assert!(mem
            .read(0x100_0000, 0x300)
            .unwrap()
            .iter()
            .all(|&b| b == 0xAA));
        assert!(mem.read(0x100_0300, 0xd00).unwrap().iter().all(|&b| b == 0));
        assert!(mem
            .read(0x100_1000, 0x10)
            .unwrap()
            .iter()
            .all(|&b| b == 0xBB));
        assert_eq!(mem.read(0x100_1010, 1).unwrap(), &[0x55]);
    }
}
