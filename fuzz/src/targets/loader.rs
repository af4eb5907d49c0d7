//! `elf` and `bzimage`: `ferrite_loader::load_with_options` on an untrusted
//! kernel image, with a fuzzed guest size, vCPU count, initrd and command
//! line.
//!
//! Input: `[ram, vcpus, initrd pages, cmdline length]`, the command line,
//! then the image. Properties of a successful load: every range is inside
//! guest RAM, off page 0, sorted and disjoint; every byte the loader wrote
//! lies in one of them; the e820 is sorted and describes each range as
//! usable (RAM, or ACPI/NVS for the tables); the entry state points at what
//! was written (`hvm_start_info` with its magic, command line, memory map;
//! or `boot_params`, page tables and a kernel that holds the entry); the
//! command line and initrd are in guest memory as given. A failed load is
//! an error with a message, never a panic.

use super::images::{self, Seg};
use super::{le, Target};
use ferrite_loader::bzimage;
use ferrite_loader::e820::{E820Type, GuestRamMap};
use ferrite_loader::layout::{LoadOptions, ACPI_REGION_SIZE};
use ferrite_loader::start_info::XEN_HVM_START_MAGIC_VALUE;
use ferrite_loader::{elf, BootPlan, EntryState, GuestMemory, ImageKind, LoadError};
use std::collections::BTreeMap;
use std::sync::OnceLock;

pub const ELF: Target = Target {
    name: "elf",
    about: "ELF kernel with the PVH note -> guest layout: ranges in RAM and disjoint, writes inside them, e820 consistent, start_info/cmdline/initrd as planned",
    max_len: 8192,
    seeds: elf_seeds,
    dictionary: &[b"\x7fELF\x02\x01\x01", b"\x7fELF\x01\x01\x01", b"Xen\0", b"\x12\0\0\0", b"\x04\0\0\0", b"\x01\0\0\0", b"\x00\x00\x10\x00"],
    run,
};

pub const BZIMAGE: Target = Target {
    name: "bzimage",
    about: "Linux bzImage -> guest layout (64-bit boot protocol or the PVH note of an ELF payload): as `elf`, plus boot_params, page tables and an entry inside the loaded kernel",
    max_len: 8192,
    seeds: bzimage_seeds,
    dictionary: &[b"HdrS", b"\x55\xaa", b"\x0f\x02", b"\x1f\x8b", b"\x7fELF", b"\x00\x00\x00\x01", b"\x00\x00\x20\x00"],
    run,
};

/// Guest sizes the first byte picks from (some too small, some with RAM
/// above 4 GiB).
const RAM_SIZES: [u64; 8] = [3 << 20, 4 << 20, 5 << 20, 16 << 20, 256 << 20, 3 << 30, 4 << 30, 6 << 30];

/// Encodes a loader input (the inverse of [`decode_input`]).
fn input(ram: u8, vcpus: u8, initrd_pages: u8, cmdline: &str, image: &[u8]) -> Vec<u8> {
    let mut v = vec![ram, vcpus, initrd_pages, cmdline.len() as u8];
    v.extend_from_slice(&cmdline.as_bytes()[..cmdline.len().min(255)]);
    v.extend_from_slice(image);
    v
}

fn elf_seeds() -> Vec<Vec<u8>> {
    let high = images::elf(
        true,
        &[Seg { paddr: 0x100_0000, data: vec![0x90; 0x200], memsz: 0x10_0000 }],
        &images::pvh_notes(0x100_0010),
    );
    vec![
        input(4, 1, 0, "console=ttyS0", &images::pvh_elf(true)),
        input(3, 2, 3, "root=/dev/vda", &images::pvh_elf(false)),
        input(6, 4, 1, "", &high),
        input(7, 255, 0, "x", &images::pvh_elf(true)),
    ]
}

fn bzimage_seeds() -> Vec<Vec<u8>> {
    let gzip = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
    let pvh_payload = images::pvh_elf(true);
    vec![
        input(4, 1, 2, "console=ttyS0 quiet", &images::bzimage(0x020f, 1, &gzip, 0x1000)),
        input(3, 2, 0, "", &images::bzimage(0x020c, 3, &gzip, 0x400)),
        input(4, 1, 1, "earlyprintk", &images::bzimage(0x020f, 1, &pvh_payload, 0x1000)),
        input(7, 8, 0, "", &images::bzimage(0x0206, 0, &[], 0x800)),
    ]
}

struct Decoded<'a> {
    ram: u64,
    vcpus: u32,
    initrd_len: usize,
    cmdline: String,
    image: &'a [u8],
}

fn decode_input(input: &[u8]) -> Decoded<'_> {
    let initrd_pages = le(input, 2, 1) as usize;
    let cmd_len = le(input, 3, 1) as usize;
    let cmd_end = (4 + cmd_len).min(input.len());
    let cmd_start = 4.min(cmd_end);
    Decoded {
        ram: RAM_SIZES[le(input, 0, 1) as usize % RAM_SIZES.len()],
        vcpus: le(input, 1, 1) as u32,
        // Not page-aligned, so the initrd's end is interesting too.
        initrd_len: (initrd_pages * 4096).saturating_sub(initrd_pages % 7),
        cmdline: String::from_utf8_lossy(&input[cmd_start..cmd_end]).into_owned(),
        image: &input[cmd_end..],
    }
}

/// Byte `i` of every initrd.
fn initrd_byte(i: usize) -> u8 {
    (i % 251) as u8 ^ 0x5a
}

/// Guest memory that keeps only the pages written (fills are always zero
/// fills in the loader, and absent pages read as zero) and remembers every
/// write, so a guest of 6 GiB costs nothing.
struct SparseMemory {
    size: u64,
    map: GuestRamMap,
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
    writes: Vec<(u64, u64)>,
    outside: Option<(u64, u64)>,
}

impl SparseMemory {
    fn new(size: u64) -> SparseMemory {
        SparseMemory { size, map: GuestRamMap::new(size), pages: BTreeMap::new(), writes: Vec::new(), outside: None }
    }

    fn check(&mut self, gpa: u64, len: u64) -> Result<(), LoadError> {
        self.writes.push((gpa, len));
        if !self.map.contains(gpa, len) {
            self.outside.get_or_insert((gpa, len));
            return Err(LoadError::GuestWrite { gpa, len });
        }
        Ok(())
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let a = gpa + i;
                self.pages.get(&(a >> 12)).map_or(0, |p| p[(a & 0xfff) as usize])
            })
            .collect()
    }

    fn read_u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }

    fn read_u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.read(gpa, 8).try_into().unwrap())
    }
}

impl GuestMemory for SparseMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), LoadError> {
        self.check(gpa, data.len() as u64)?;
        let mut done = 0;
        while done < data.len() {
            let a = gpa + done as u64;
            let off = (a & 0xfff) as usize;
            let n = (4096 - off).min(data.len() - done);
            let page = self.pages.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]));
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), LoadError> {
        self.check(gpa, len)?;
        assert_eq!(byte, 0, "the loader only zero-fills");
        if len == 0 {
            return Ok(());
        }
        let end = gpa + len;
        for (&page, bytes) in self.pages.range_mut(gpa >> 12..=(end - 1) >> 12) {
            let base = page << 12;
            let from = gpa.max(base) - base;
            let to = end.min(base + 4096) - base;
            bytes[from as usize..to as usize].fill(0);
        }
        Ok(())
    }
}

/// The initrd bytes: the same pattern for every input, made once.
fn initrd_pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| (0..255 * 4096).map(initrd_byte).collect())
}

fn run(input: &[u8]) {
    let d = decode_input(input);
    let initrd = (d.initrd_len > 0).then(|| &initrd_pattern()[..d.initrd_len]);
    let mut mem = SparseMemory::new(d.ram);
    let result = ferrite_loader::layout::load_with_options(d.image, initrd, &d.cmdline, &mut mem, d.vcpus, &LoadOptions::default());
    assert_eq!(mem.outside, None, "the loader wrote outside guest RAM");
    match result {
        Ok(plan) => check_plan(&plan, &d, initrd, &mem),
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

fn range<'p>(plan: &'p BootPlan, what: &str) -> Option<&'p ferrite_loader::UsedRange> {
    plan.ranges.iter().find(|r| r.what == what)
}

fn check_plan(plan: &BootPlan, d: &Decoded<'_>, initrd: Option<&[u8]>, mem: &SparseMemory) {
    let map = GuestRamMap::new(d.ram);
    // The ranges: in RAM, off page 0, sorted, disjoint.
    for r in &plan.ranges {
        assert!(r.len > 0, "empty range {r:?}");
        assert!(map.contains(r.start, r.len), "{r:?} is outside guest RAM ({:#x})", d.ram);
        assert!(r.start >= 0x1000, "{r:?} uses page 0");
    }
    for w in plan.ranges.windows(2) {
        assert!(w[0].end() <= w[1].start, "{:?} and {:?} overlap or are unsorted", w[0], w[1]);
    }
    // Every write lies inside one planned range.
    for &(gpa, len) in &mem.writes {
        if len == 0 {
            continue;
        }
        assert!(
            plan.ranges.iter().any(|r| gpa >= r.start && gpa + len <= r.end()),
            "a write of {len:#x} bytes at {gpa:#x} is in no planned range"
        );
    }
    // The e820: sorted, disjoint, and each range is described as usable.
    ferrite_loader::e820::validate(&plan.e820).expect("the e820 is sorted and disjoint");
    for r in &plan.ranges {
        let allowed: &[E820Type] = match r.what {
            "RSDP" => &[E820Type::Reserved],
            "ACPI tables" => &[E820Type::Acpi, E820Type::Nvs],
            _ => &[E820Type::Ram],
        };
        let mut covered = 0;
        for e in plan.e820.iter().filter(|e| e.addr < r.end() && r.start < e.end()) {
            assert!(allowed.contains(&e.kind), "{r:?} overlaps e820 {e:?}");
            covered += e.end().min(r.end()) - e.addr.max(r.start);
        }
        assert_eq!(covered, r.len, "{r:?} is not fully described by the e820");
    }
    assert_eq!(range(plan, "ACPI tables").map(|r| r.len), Some(ACPI_REGION_SIZE));
    // The command line and the initrd, as given.
    let mut cmdline = d.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    assert_eq!(mem.read(plan.cmdline, cmdline.len()), cmdline, "the command line in guest memory");
    match (plan.initrd, initrd) {
        (None, None) => {}
        (Some((at, len)), Some(rd)) => {
            assert_eq!(len, rd.len() as u64);
            assert_eq!(range(plan, "initrd").map(|r| (r.start, r.len)), Some((at, len)));
            for i in [0, rd.len() / 2, rd.len() - 1] {
                assert_eq!(mem.read(at + i as u64, 1)[0], initrd_byte(i), "initrd byte {i}");
            }
        }
        (p, r) => panic!("initrd planned {p:?} for an initrd of {:?} bytes", r.map(<[u8]>::len)),
    }
    match plan.entry {
        EntryState::Pvh { entry, start_info } => {
            assert!(matches!(plan.kind, ImageKind::Elf { .. } | ImageKind::BzImagePvh { .. }));
            let si = u64::from(start_info);
            assert_eq!(range(plan, "hvm_start_info").map(|r| r.start), Some(si));
            assert_eq!(mem.read_u32(si), XEN_HVM_START_MAGIC_VALUE, "start_info magic");
            assert_eq!(mem.read_u64(si + 16) != 0, plan.initrd.is_some(), "modlist_paddr");
            assert_eq!(mem.read_u32(si + 12), u32::from(plan.initrd.is_some()), "nr_modules");
            assert_eq!(mem.read_u64(si + 24), plan.cmdline, "cmdline_paddr");
            assert_eq!(mem.read_u64(si + 32), plan.rsdp, "rsdp_paddr");
            assert_eq!(mem.read_u32(si + 48) as usize, plan.e820.len(), "memmap_entries");
            let e = u64::from(entry);
            assert!(
                plan.ranges.iter().any(|r| r.what == "kernel segment" && e >= r.start && e < r.end()),
                "PVH entry {e:#x} is in no kernel segment"
            );
            // The image's own view agrees.
            let elf_bytes = match plan.kind {
                ImageKind::Elf { .. } => d.image,
                _ => bzimage::parse(d.image).expect("parsed before").payload,
            };
            let parsed = elf::parse(elf_bytes).expect("parsed before");
            assert_eq!(parsed.pvh_entry, Some(entry));
        }
        EntryState::Linux64 { entry, boot_params, cr3, gdt } => {
            let ImageKind::BzImage64 { .. } = plan.kind else { panic!("Linux64 entry for {:?}", plan.kind) };
            assert_eq!(range(plan, "boot_params").map(|r| r.start), Some(boot_params));
            assert_eq!(range(plan, "identity page tables").map(|r| r.start), Some(cr3));
            assert_eq!(range(plan, "boot GDT").map(|r| r.start), Some(gdt));
            let bz = bzimage::parse(d.image).expect("parsed before");
            let kernel = range(plan, "kernel").expect("a kernel range");
            let loaded_end = kernel.start + bz.kernel.len() as u64;
            assert!(entry >= kernel.start && entry < loaded_end, "64-bit entry {entry:#x} is outside the loaded kernel {:#x}..{loaded_end:#x}", kernel.start);
            assert_eq!(mem.read(boot_params + 0x202, 4), b"HdrS", "boot_params header");
            assert_eq!(mem.read_u32(boot_params + 0x228) as u64 | (mem.read_u32(boot_params + 0xc8) as u64) << 32, plan.cmdline);
            if let Some((at, _)) = plan.initrd {
                assert!(at + initrd.map_or(0, |r| r.len() as u64) <= u64::from(bz.header.initrd_addr_max) + 1, "initrd above initrd_addr_max");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_loads() {
        // The last bzImage seed (protocol 2.06) is refused on purpose.
        let bz = bzimage_seeds();
        for s in elf_seeds().iter().chain(&bz[..bz.len() - 1]) {
            let d = decode_input(s);
            let mut mem = SparseMemory::new(d.ram);
            let initrd = (d.initrd_len > 0).then(|| &initrd_pattern()[..d.initrd_len]);
            let r = ferrite_loader::layout::load_with_options(d.image, initrd, &d.cmdline, &mut mem, d.vcpus, &LoadOptions::default());
            let plan = r.unwrap_or_else(|e| panic!("seed does not load: {e}"));
            check_plan(&plan, &d, initrd, &mem);
        }
    }
}
