//! `multiboot1`, `multiboot2`, `pvh`: `ferrite_boot::bootinfo::parse` on
//! boot information a loader left in memory. The input is physical memory
//! from [`BASE`] on, the information block at its start.
//!
//! Properties of a successful parse: a non-empty memory map of at most
//! `MAX_MEMORY_MAP_ENTRIES` non-empty regions that do not wrap; at most
//! `MAX_MODULES` modules, none ending before it starts; strings within
//! their caps; a multiboot2 RSDP inside the information block; the
//! multiboot command line without leading blanks; a bounded amount of
//! memory read. The sanitized map is sorted, disjoint, merged, and gives
//! each address the most restrictive kind any original region gives it.
//! Failures are errors with a message, never panics.

use super::{le, Target};
use ferrite_boot::bootinfo::{
    self, BootError, BootInfo, MemoryKind, MemoryRegion, PhysMemory, Protocol, MAX_CMDLINE_LEN, MAX_LOADER_NAME_LEN,
    MAX_MEMORY_MAP_ENTRIES, MAX_MODULES, MULTIBOOT1_MAGIC, MULTIBOOT2_MAGIC, PVH_MAGIC,
};
use std::cell::Cell;

/// Physical address of the first input byte (and of the information).
pub const BASE: u64 = 0x1_0000;

const DICTIONARY: &[&[u8]] = &[
    b"\x00\x00\x01\x00",
    b"\x78\xc5\x6e\x33",
    b"\x01\x00\x00\x00",
    b"\x06\x00\x00\x00",
    b"\x18\x00\x00\x00",
    b"\x14\x00\x00\x00",
    b"GRUB 2.06\0",
    b"dom0_mem=512M ",
    b"\x00\x00\x10\x00\x00\x00\x00\x00",
];

pub const MULTIBOOT1: Target = Target {
    name: "multiboot1",
    about: "Multiboot1 information: bounded counts and strings, sane regions and modules, sanitized map consistent",
    max_len: 4096,
    seeds: || vec![multiboot1_seed(), multiboot1_seed()[..68].to_vec()],
    dictionary: DICTIONARY,
    run: |input| run(input, MULTIBOOT1_MAGIC, None),
};

pub const MULTIBOOT2: Target = Target {
    name: "multiboot2",
    about: "Multiboot2 tags: as multiboot1, plus the RSDP inside the information block",
    max_len: 4096,
    seeds: || vec![multiboot2_seed()],
    dictionary: DICTIONARY,
    run: |input| run(input, MULTIBOOT2_MAGIC, None),
};

pub const PVH: Target = Target {
    name: "pvh",
    about: "PVH hvm_start_info (v0/v1): as multiboot1, command line passed unchanged",
    max_len: 4096,
    seeds: || vec![pvh_seed(1), pvh_seed(0)],
    dictionary: DICTIONARY,
    run: |input| run(input, 0, Some(Protocol::Pvh)),
};

/// The input as physical memory at [`BASE`], page-granular; counts the
/// bytes read.
struct InputMemory<'a> {
    bytes: &'a [u8],
    read: Cell<u64>,
}

impl PhysMemory for InputMemory<'_> {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        self.read.set(self.read.get() + buf.len() as u64);
        // Memory is readable by whole pages: the input, then zeros to the
        // end of its last page.
        let readable = (self.bytes.len() as u64).div_ceil(4096) * 4096;
        let bad = BootError::OutOfRange { paddr, len: buf.len() as u64 };
        let start = paddr.checked_sub(BASE).ok_or(bad.clone())?;
        if start.checked_add(buf.len() as u64).is_none_or(|end| end > readable) {
            return Err(bad);
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.bytes.get(start as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
}

fn run(input: &[u8], magic: u32, hint: Option<Protocol>) {
    let mem = InputMemory { bytes: input, read: Cell::new(0) };
    let result = bootinfo::parse(magic, BASE, &mem, hint);
    // 64 modules and their strings, 512 map entries, a 1 MiB multiboot2
    // block, with room to spare: nothing an input says makes it read more.
    assert!(mem.read.get() <= 2 << 20, "read {} bytes of boot information", mem.read.get());
    match result {
        Ok(info) => check(&info, input, hint.unwrap_or(if magic == MULTIBOOT1_MAGIC { Protocol::Multiboot1 } else { Protocol::Multiboot2 })),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check(info: &BootInfo, input: &[u8], protocol: Protocol) {
    assert_eq!(info.protocol, protocol);
    assert!(!info.memory_map.is_empty(), "parse succeeded without a memory map");
    assert!(info.memory_map.len() <= MAX_MEMORY_MAP_ENTRIES);
    for r in &info.memory_map {
        assert!(r.len > 0 && r.start.checked_add(r.len).is_some(), "bad region {r:?}");
    }
    assert!(info.modules.len() <= MAX_MODULES);
    for m in &info.modules {
        assert!(m.start <= m.end, "module {m:?} ends before it starts");
        assert!(m.cmdline.chars().count() <= MAX_CMDLINE_LEN);
    }
    assert!(info.cmdline.chars().count() <= MAX_CMDLINE_LEN);
    if let Some(n) = &info.loader_name {
        assert!(n.chars().count() <= MAX_LOADER_NAME_LEN);
    }
    match protocol {
        Protocol::Multiboot2 => {
            if let Some(r) = info.rsdp_paddr {
                let total = le(input, 0, 4);
                assert!(r >= BASE + 8 && r + 20 <= BASE + total, "RSDP {r:#x} outside the information block");
            }
        }
        Protocol::Multiboot1 => assert_eq!(info.rsdp_paddr, None),
        Protocol::Pvh => {}
    }
    if protocol != Protocol::Pvh {
        assert!(!info.cmdline.starts_with([' ', '\t']), "{:?}", info.cmdline);
    }
    check_sanitized(&info.memory_map, &info.sanitized_memory_map());
}

/// `MemoryKind::precedence`, restated: anything beats usable RAM.
fn precedence(k: MemoryKind) -> u8 {
    match k {
        MemoryKind::Usable => 0,
        MemoryKind::AcpiReclaimable => 1,
        MemoryKind::Other(_) => 2,
        MemoryKind::Reserved => 3,
        MemoryKind::AcpiNvs => 4,
        MemoryKind::Bad => 5,
    }
}

fn kind_at(map: &[MemoryRegion], addr: u64) -> Option<MemoryKind> {
    map.iter().filter(|r| r.start <= addr && addr < r.end()).map(|r| r.kind).max_by_key(|&k| precedence(k))
}

fn check_sanitized(original: &[MemoryRegion], clean: &[MemoryRegion]) {
    for r in clean {
        assert!(r.len > 0, "empty sanitized region {r:?}");
    }
    for w in clean.windows(2) {
        assert!(w[0].end() <= w[1].start, "sanitized regions overlap or are unsorted: {w:?}");
        assert!(!(w[0].end() == w[1].start && w[0].kind == w[1].kind), "unmerged neighbours {w:?}");
    }
    // At every boundary of the original map, the sanitized kind is the
    // most restrictive original kind (which implies equal coverage).
    for r in original {
        for a in [r.start, r.end() - 1] {
            let want = kind_at(original, a);
            let got = clean.iter().find(|c| c.start <= a && a < c.end()).map(|c| c.kind);
            let same = match (want, got) {
                (Some(w), Some(g)) => precedence(w) == precedence(g) && (w == g || !matches!(w, MemoryKind::Other(_))),
                (None, None) => true,
                _ => false,
            };
            assert!(same, "address {a:#x}: original says {want:?}, sanitized {got:?}");
        }
    }
    for c in clean {
        assert!(kind_at(original, c.start).is_some(), "sanitized {c:?} starts outside every original region");
    }
}

// ---------------------------------------------------------------------------
// Seeds: well-formed information blocks, pointers relative to BASE.

fn put(v: &mut Vec<u8>, at: usize, width: usize, value: u64) {
    if v.len() < at + width {
        v.resize(at + width, 0);
    }
    v[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn put_str(v: &mut Vec<u8>, at: usize, s: &str) {
    let b: Vec<u8> = s.bytes().chain([0]).collect();
    if v.len() < at + b.len() {
        v.resize(at + b.len(), 0);
    }
    v[at..at + b.len()].copy_from_slice(&b);
}

fn multiboot1_seed() -> Vec<u8> {
    let mut v = vec![0u8; 0x200];
    let flags = 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9;
    put(&mut v, 0, 4, flags);
    put(&mut v, 4, 4, 639);
    put(&mut v, 8, 4, 130_048);
    put(&mut v, 16, 4, BASE + 0x100);
    put(&mut v, 20, 4, 2);
    put(&mut v, 24, 4, BASE + 0x80);
    put(&mut v, 44, 4, 3 * 24);
    put(&mut v, 48, 4, BASE + 0x140);
    put(&mut v, 64, 4, BASE + 0x1c0);
    for (i, (start, end, s)) in [(0x20_0000u64, 0x30_0000u64, 0x1d0u64), (0x30_0000, 0x30_1000, 0x1f0)].into_iter().enumerate() {
        put(&mut v, 0x80 + i * 16, 4, start);
        put(&mut v, 0x84 + i * 16, 4, end);
        put(&mut v, 0x88 + i * 16, 4, BASE + s);
    }
    put_str(&mut v, 0x100, "/boot/ferrite console=com1 dom0_mem=512M");
    for (i, (base, len, kind)) in [(0u64, 0x9_fc00u64, 1u64), (0xf_0000, 0x1_0000, 2), (0x10_0000, 0x7ff0_0000, 1)].into_iter().enumerate() {
        let o = 0x140 + i * 24;
        put(&mut v, o, 4, 20);
        put(&mut v, o + 4, 8, base);
        put(&mut v, o + 12, 8, len);
        put(&mut v, o + 20, 4, kind);
    }
    // GRUB Legacy puts the image path in front of the command line.
    put_str(&mut v, 0x1c0, "GRUB 0.97");
    put_str(&mut v, 0x1d0, "dom0 root=/dev/sda");
    put_str(&mut v, 0x1f0, "initrd");
    v.truncate(0x200);
    v
}

fn multiboot2_seed() -> Vec<u8> {
    let mut v = vec![0u8; 8];
    let tag = |v: &mut Vec<u8>, ty: u32, body: &[u8]| {
        let at = v.len();
        put(v, at, 4, ty.into());
        put(v, at + 4, 4, 8 + body.len() as u64);
        v.extend_from_slice(body);
        while v.len() % 8 != 0 {
            v.push(0);
        }
    };
    tag(&mut v, 1, b"console=com1 dom0_mem=512M\0");
    tag(&mut v, 2, b"GRUB 2.06\0");
    let mut module = Vec::new();
    module.extend_from_slice(&0x20_0000u32.to_le_bytes());
    module.extend_from_slice(&0x30_0000u32.to_le_bytes());
    module.extend_from_slice(b"/boot/vmlinuz console=hvc0\0");
    tag(&mut v, 3, &module);
    tag(&mut v, 4, &[0x7f, 2, 0, 0, 0, 0xfc, 1, 0]);
    let mut mmap = Vec::new();
    mmap.extend_from_slice(&24u32.to_le_bytes());
    mmap.extend_from_slice(&0u32.to_le_bytes());
    for (base, len, kind) in [(0u64, 0x9_fc00u64, 1u32), (0xf_0000, 0x1_0000, 2), (0x10_0000, 0x7ff0_0000, 1), (0x7ff0_0000, 0x1_0000, 3)] {
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
        mmap.extend_from_slice(&0u32.to_le_bytes());
    }
    tag(&mut v, 6, &mmap);
    tag(&mut v, 14, b"RSD PTR \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    tag(&mut v, 0, &[]);
    let total = v.len() as u64;
    put(&mut v, 0, 4, total);
    v
}

fn pvh_seed(version: u64) -> Vec<u8> {
    let mut v = vec![0u8; 0x200];
    put(&mut v, 0, 4, PVH_MAGIC.into());
    put(&mut v, 4, 4, version);
    put(&mut v, 12, 4, 1);
    put(&mut v, 16, 8, BASE + 0x40);
    put(&mut v, 24, 8, BASE + 0x100);
    put(&mut v, 32, 8, 0xf_0000);
    put(&mut v, 40, 8, BASE + 0x140);
    put(&mut v, 48, 4, 3);
    put(&mut v, 0x40, 8, 0x20_0000);
    put(&mut v, 0x48, 8, 0x10_0000);
    put(&mut v, 0x50, 8, BASE + 0x1c0);
    put_str(&mut v, 0x100, "console=com1 dom0_mem=512M");
    for (i, (base, len, kind)) in [(0u64, 0x9_fc00u64, 1u64), (0xf_0000, 0x1_0000, 2), (0x10_0000, 0x7ff0_0000, 1)].into_iter().enumerate() {
        let o = 0x140 + i * 24;
        put(&mut v, o, 8, base);
        put(&mut v, o + 8, 8, len);
        put(&mut v, o + 16, 4, kind);
    }
    put_str(&mut v, 0x1c0, "initrd");
    v.truncate(0x200);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse() {
        for (seed, magic, hint) in [
            (multiboot1_seed(), MULTIBOOT1_MAGIC, None),
            (multiboot2_seed(), MULTIBOOT2_MAGIC, None),
            (pvh_seed(1), 0, Some(Protocol::Pvh)),
        ] {
            let mem = InputMemory { bytes: &seed, read: Cell::new(0) };
            let info = bootinfo::parse(magic, BASE, &mem, hint).unwrap();
            assert_eq!(info.modules.len(), if magic == MULTIBOOT1_MAGIC { 2 } else { 1 }, "{info:?}");
            assert!(info.memory_map.len() >= 3, "{info:?}");
            assert!(info.cmdline.starts_with("console=com1"), "{info:?}");
        }
    }
}
