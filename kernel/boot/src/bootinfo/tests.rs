use super::*;
use alloc::string::ToString;
use alloc::vec;

/// A window of readable physical memory `[base, base + bytes.len())`.
struct Mem {
    base: u64,
    bytes: Vec<u8>,
}

impl Mem {
    fn new(base: u64, len: usize) -> Mem {
        Mem { base, bytes: vec![0; len] }
    }
    fn put(&mut self, paddr: u64, data: &[u8]) {
        let o = (paddr - self.base) as usize;
        self.bytes[o..o + data.len()].copy_from_slice(data);
    }
    fn u32(&mut self, paddr: u64, v: u32) {
        self.put(paddr, &v.to_le_bytes());
    }
    fn u64(&mut self, paddr: u64, v: u64) {
        self.put(paddr, &v.to_le_bytes());
    }
    fn cstr(&mut self, paddr: u64, s: &str) {
        self.put(paddr, s.as_bytes());
        self.put(paddr + s.len() as u64, &[0]);
    }
}

impl PhysMemory for Mem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let err = BootError::OutOfRange { paddr, len: buf.len() as u64 };
        let end = paddr.checked_add(buf.len() as u64).ok_or(err.clone())?;
        if paddr < self.base || end > self.base + self.bytes.len() as u64 {
            return Err(err);
        }
        let o = (paddr - self.base) as usize;
        buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
        Ok(())
    }
}

fn usable(start: u64, len: u64) -> MemoryRegion {
    MemoryRegion { start, len, kind: MemoryKind::Usable }
}

fn reg(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion { start, len, kind }
}

// ---------------------------------------------------------------------------
// Multiboot1

const MB1: u64 = 0x1_0000;

/// A complete multiboot1 block: cmdline, 2 modules, a 3-entry mmap, name.
fn mb1_full() -> Mem {
    let mut m = Mem::new(0x1_0000, 0x1_0000);
    m.u32(MB1, MB1_FLAG_MEM | MB1_FLAG_CMDLINE | MB1_FLAG_MODS | MB1_FLAG_MMAP | MB1_FLAG_LOADER_NAME);
    m.u32(MB1 + 4, 639);
    m.u32(MB1 + 8, 130_048);
    m.u32(MB1 + 16, 0x1_1000);
    m.cstr(0x1_1000, "/boot/ferrite.elf console=com1 dom0_mem=512M");
    m.u32(MB1 + 20, 2);
    m.u32(MB1 + 24, 0x1_2000);
    m.u32(0x1_2000, 0x20_0000);
    m.u32(0x1_2004, 0x30_0000);
    m.u32(0x1_2008, 0x1_3000);
    m.cstr(0x1_3000, "/boot/vmlinuz root=/dev/xvda1");
    m.u32(0x1_2010, 0x30_0000);
    m.u32(0x1_2014, 0x30_1000);
    m.u32(0x1_2018, 0); // no string
    let entries: [(u64, u64, u32); 3] = [(0, 0x9_F000, 1), (0xF_0000, 0x1_0000, 2), (0x10_0000, 0x7F0_0000, 1)];
    let mut o = 0x1_4000;
    for (base, len, t) in entries {
        m.u32(o, 20);
        m.u64(o + 4, base);
        m.u64(o + 12, len);
        m.u32(o + 20, t);
        o += 24;
    }
    m.u32(MB1 + 44, 72);
    m.u32(MB1 + 48, 0x1_4000);
    m.u32(MB1 + 64, 0x1_5000);
    m.cstr(0x1_5000, "qemu");
    m
}

#[test]
fn multiboot1_full() {
    let m = mb1_full();
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    assert_eq!(b.protocol, Protocol::Multiboot1);
    assert_eq!(b.loader_name.as_deref(), Some("qemu"));
    assert_eq!(b.cmdline, "console=com1 dom0_mem=512M");
    assert_eq!(
        b.modules,
        vec![
            BootModule { start: 0x20_0000, end: 0x30_0000, cmdline: "/boot/vmlinuz root=/dev/xvda1".to_string() },
            BootModule { start: 0x30_0000, end: 0x30_1000, cmdline: String::new() },
        ]
    );
    assert_eq!(
        b.memory_map,
        vec![usable(0, 0x9_F000), reg(0xF_0000, 0x1_0000, MemoryKind::Reserved), usable(0x10_0000, 0x7F0_0000)]
    );
    assert_eq!(b.rsdp_paddr, None);
}

#[test]
fn multiboot1_mmap_entries_with_larger_size_and_zero_length() {
    let mut m = mb1_full();
    // Entry 0 declares size 28 (8 bytes of padding), entry 1 has length 0.
    let o = 0x1_6000;
    m.u32(o, 28);
    m.u64(o + 4, 0x10_0000);
    m.u64(o + 12, 0x100_0000);
    m.u32(o + 20, 3);
    m.u32(o + 32, 20);
    m.u64(o + 36, 0x200_0000);
    m.u64(o + 44, 0);
    m.u32(o + 52, 1);
    m.u32(MB1 + 44, 56);
    m.u32(MB1 + 48, o as u32);
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    assert_eq!(b.memory_map, vec![reg(0x10_0000, 0x100_0000, MemoryKind::AcpiReclaimable)]);
}

#[test]
fn multiboot1_without_mmap_synthesizes_from_mem_fields() {
    let mut m = mb1_full();
    m.u32(MB1, MB1_FLAG_MEM);
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    assert_eq!(b.memory_map, vec![usable(0, 639 * 1024), usable(0x10_0000, 130_048 * 1024)]);
    assert_eq!(b.cmdline, "");
    assert!(b.modules.is_empty());
    assert_eq!(b.loader_name, None);
}

#[test]
fn multiboot1_without_any_memory_information_fails() {
    let mut m = mb1_full();
    m.u32(MB1, MB1_FLAG_CMDLINE);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::NoMemoryMap));
}

#[test]
fn multiboot1_too_many_modules() {
    let mut m = mb1_full();
    m.u32(MB1 + 20, 65);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::TooManyModules { count: 65 }));
    m.u32(MB1 + 20, u32::MAX);
    assert!(matches!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::TooManyModules { .. })));
}

#[test]
fn multiboot1_module_ending_before_start() {
    let mut m = mb1_full();
    m.u32(0x1_2004, 0x10_0000);
    assert!(matches!(
        parse(MULTIBOOT1_MAGIC, MB1, &m, None),
        Err(BootError::BadRange { what: "boot module", start: 0x20_0000, .. })
    ));
}

#[test]
fn multiboot1_bad_mmap_entry_size() {
    let mut m = mb1_full();
    m.u32(0x1_4000, 12);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::BadMemoryMapEntrySize(12)));
    // An entry whose size runs past mmap_length.
    let mut m = mb1_full();
    m.u32(MB1 + 44, 70);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::BadMemoryMapEntrySize(20)));
    // A huge size field must not overflow the walk.
    let mut m = mb1_full();
    m.u32(0x1_4000, u32::MAX);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::BadMemoryMapEntrySize(u32::MAX)));
}

#[test]
fn multiboot1_mmap_entry_overflowing_address_space() {
    let mut m = mb1_full();
    m.u64(0x1_4004, u64::MAX - 10);
    m.u64(0x1_400C, 100);
    assert!(matches!(
        parse(MULTIBOOT1_MAGIC, MB1, &m, None),
        Err(BootError::BadRange { what: "memory map entry", .. })
    ));
}

#[test]
fn multiboot1_too_many_mmap_entries() {
    let mut m = Mem::new(0x1_0000, 0x10_0000);
    m.u32(MB1, MB1_FLAG_MMAP);
    let n = MAX_MEMORY_MAP_ENTRIES as u64 + 1;
    for i in 0..n {
        let o = 0x2_0000 + i * 24;
        m.u32(o, 20);
        m.u64(o + 4, i * 0x1000);
        m.u64(o + 12, 0x1000);
        m.u32(o + 20, 1);
    }
    m.u32(MB1 + 44, (n * 24) as u32);
    m.u32(MB1 + 48, 0x2_0000);
    assert!(matches!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::TooManyMemoryMapEntries { .. })));
    // Exactly the maximum is fine.
    m.u32(MB1 + 44, ((n - 1) * 24) as u32);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap().memory_map.len(), MAX_MEMORY_MAP_ENTRIES);
}

#[test]
fn multiboot1_info_out_of_range() {
    let m = mb1_full();
    assert!(matches!(parse(MULTIBOOT1_MAGIC, 0x1000, &m, None), Err(BootError::OutOfRange { .. })));
    assert!(matches!(parse(MULTIBOOT1_MAGIC, u64::MAX - 3, &m, None), Err(BootError::AddressOverflow)));
    // A cmdline pointer to unreadable memory.
    let mut m = mb1_full();
    m.u32(MB1 + 16, 0xFFFF_F000);
    assert!(matches!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::OutOfRange { .. })));
}

#[test]
fn multiboot1_unterminated_cmdline_is_capped() {
    let mut m = mb1_full();
    let long = "x".repeat(3 * MAX_CMDLINE_LEN);
    m.put(0x1_8000, long.as_bytes()); // no NUL within the cap
    m.u32(MB1 + 16, 0x1_8000);
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    // The first (and only) word is the "image path" and is stripped.
    assert_eq!(b.cmdline, "");
    m.put(0x1_8000, b"/ferrite a=");
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    assert_eq!(b.cmdline.len(), MAX_CMDLINE_LEN - "/ferrite ".len());
}

#[test]
fn multiboot1_string_at_end_of_readable_memory() {
    let mut m = mb1_full();
    let end = m.base + m.bytes.len() as u64;
    m.cstr(end - 6, "/k a=");
    m.u32(MB1 + 16, (end - 6) as u32);
    assert_eq!(parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap().cmdline, "a=");
    // Unterminated right up to the end: the read beyond fails.
    m.put(end - 1, b"b");
    assert!(matches!(parse(MULTIBOOT1_MAGIC, MB1, &m, None), Err(BootError::OutOfRange { .. })));
}

#[test]
fn invalid_utf8_is_decoded_lossily() {
    let mut m = mb1_full();
    m.put(0x1_1000, b"/k a=\xff\xfeb\0");
    let b = parse(MULTIBOOT1_MAGIC, MB1, &m, None).unwrap();
    assert_eq!(b.cmdline, "a=\u{FFFD}\u{FFFD}b");
}

// ---------------------------------------------------------------------------
// Multiboot2

const MB2: u64 = 0x2_0000;

struct Mb2Builder {
    mem: Mem,
    off: u64,
}

impl Mb2Builder {
    fn new() -> Self {
        Mb2Builder { mem: Mem::new(0x2_0000, 0x1_0000), off: 8 }
    }
    /// Appends a tag with `body` and returns its address.
    fn tag(&mut self, tag_type: u32, body: &[u8]) -> u64 {
        let at = MB2 + self.off;
        self.mem.u32(at, tag_type);
        self.mem.u32(at + 4, 8 + body.len() as u32);
        self.mem.put(at + 8, body);
        self.off = (self.off + 8 + body.len() as u64 + 7) & !7;
        at
    }
    fn finish(mut self) -> Mem {
        self.tag(0, &[]);
        self.mem.u32(MB2, self.off as u32);
        self.mem
    }
}

fn cstr_bytes(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn mb2_module(start: u32, end: u32, s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&start.to_le_bytes());
    v.extend_from_slice(&end.to_le_bytes());
    v.extend_from_slice(&cstr_bytes(s));
    v
}

fn mb2_mmap(entry_size: u32, entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&entry_size.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    for &(b, l, t) in entries {
        let mut e = vec![0u8; entry_size as usize];
        e[0..8].copy_from_slice(&b.to_le_bytes());
        e[8..16].copy_from_slice(&l.to_le_bytes());
        e[16..20].copy_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&e);
    }
    v
}

fn meminfo(lower: u32, upper: u32) -> Vec<u8> {
    let mut v = lower.to_le_bytes().to_vec();
    v.extend_from_slice(&upper.to_le_bytes());
    v
}

#[test]
fn multiboot2_full() {
    let mut b = Mb2Builder::new();
    b.tag(1, &cstr_bytes("console=com1 loglvl=all"));
    b.tag(2, &cstr_bytes("GRUB 2.06-13+deb12u1"));
    b.tag(21, &[1, 2, 3, 4, 5]); // unknown tag (load base address), skipped
    b.tag(3, &mb2_module(0x40_0000, 0x50_0000, "/vmlinuz console=hvc0"));
    b.tag(3, &mb2_module(0x50_0000, 0x50_0800, "initrd"));
    b.tag(4, &meminfo(639, 1000));
    b.tag(6, &mb2_mmap(24, &[(0, 0x9_FC00, 1), (0x10_0000, 0x3FF0_0000, 1), (0xFEC0_0000, 0x1000, 2), (0x4000_0000, 0x1_0000, 4)]));
    let old = b.tag(14, &[0x52; 20]);
    let new = b.tag(15, &[0x52; 36]);
    let m = b.finish();
    let i = parse(MULTIBOOT2_MAGIC, MB2, &m, None).unwrap();
    assert_eq!(i.protocol, Protocol::Multiboot2);
    assert_eq!(i.loader_name.as_deref(), Some("GRUB 2.06-13+deb12u1"));
    // GRUB 2 does not put the image path on the command line: kept whole.
    assert_eq!(i.cmdline, "console=com1 loglvl=all");
    assert_eq!(i.modules.len(), 2);
    assert_eq!(i.modules[0], BootModule { start: 0x40_0000, end: 0x50_0000, cmdline: "/vmlinuz console=hvc0".into() });
    assert_eq!(i.modules[1].cmdline, "initrd");
    assert_eq!(i.memory_map.len(), 4);
    assert_eq!(i.memory_map[3], reg(0x4000_0000, 0x1_0000, MemoryKind::AcpiNvs));
    assert_eq!(i.rsdp_paddr, Some(new + 8));
    assert_ne!(old + 8, new + 8);
}

#[test]
fn multiboot2_old_rsdp_only_and_mmap_with_larger_entries() {
    let mut b = Mb2Builder::new();
    b.tag(1, &cstr_bytes("/boot/ferrite selftest=0"));
    b.tag(6, &mb2_mmap(32, &[(0, 0x9_F000, 1), (0x10_0000, 0x100_0000, 5)]));
    let old = b.tag(14, &[0; 20]);
    let m = b.finish();
    let i = parse(MULTIBOOT2_MAGIC, MB2, &m, None).unwrap();
    assert_eq!(i.rsdp_paddr, Some(old + 8));
    assert_eq!(i.memory_map, vec![usable(0, 0x9_F000), reg(0x10_0000, 0x100_0000, MemoryKind::Bad)]);
    // No loader name: the first word is taken as the image path.
    assert_eq!(i.cmdline, "selftest=0");
}

#[test]
fn multiboot2_meminfo_only() {
    let mut b = Mb2Builder::new();
    b.tag(4, &meminfo(640, 2048));
    let m = b.finish();
    let i = parse(MULTIBOOT2_MAGIC, MB2, &m, None).unwrap();
    assert_eq!(i.memory_map, vec![usable(0, 0xA_0000), usable(0x10_0000, 2048 * 1024)]);
    assert_eq!(i.cmdline, "");
}

#[test]
fn multiboot2_structure_errors() {
    let mut b = Mb2Builder::new();
    b.tag(4, &meminfo(640, 2048));
    let good = b.finish();
    assert!(parse(MULTIBOOT2_MAGIC, MB2, &good, None).is_ok());

    assert_eq!(parse(MULTIBOOT2_MAGIC, MB2 + 4, &good, None), Err(BootError::Misaligned { paddr: MB2 + 4 }));

    let mut m = Mem { base: good.base, bytes: good.bytes.clone() };
    m.u32(MB2, 8);
    assert_eq!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::BadTotalSize(8)));
    m.u32(MB2, MAX_MULTIBOOT2_INFO_SIZE + 8);
    assert_eq!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::BadTotalSize(MAX_MULTIBOOT2_INFO_SIZE + 8)));

    // total_size cuts the end tag off.
    let mut m = Mem { base: good.base, bytes: good.bytes.clone() };
    m.u32(MB2, 8 + 16);
    assert_eq!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::MissingEndTag));

    // Tag size smaller than its header: would loop forever if accepted.
    let mut m = Mem { base: good.base, bytes: good.bytes.clone() };
    m.u32(MB2 + 12, 4);
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::BadTag { offset: 8, size: 4, .. })));
    m.u32(MB2 + 12, 0);
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::BadTag { .. })));

    // Tag extending past total_size.
    let mut m = Mem { base: good.base, bytes: good.bytes.clone() };
    m.u32(MB2 + 12, 0x1000);
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::BadTag { reason: "extends past total_size", .. })));

    // total_size larger than readable memory.
    let mut m = Mem { base: good.base, bytes: good.bytes.clone() };
    m.u32(MB2, 0x2_0000);
    m.u32(MB2 + 8, 99);
    m.u32(MB2 + 12, 0x1_8000);
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &m, None), Err(BootError::OutOfRange { .. })));
}

#[test]
fn multiboot2_tag_errors() {
    let mut b = Mb2Builder::new();
    b.tag(6, &mb2_mmap(16, &[]));
    assert_eq!(parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None), Err(BootError::BadMemoryMapEntrySize(16)));

    let mut b = Mb2Builder::new();
    b.tag(3, &[0; 4]);
    assert!(matches!(
        parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None),
        Err(BootError::BadTag { tag_type: 3, reason: "too small for its type", .. })
    ));

    let mut b = Mb2Builder::new();
    b.tag(15, &[0; 20]); // too small for an RSDP v2
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None), Err(BootError::BadTag { tag_type: 15, .. })));

    let mut b = Mb2Builder::new();
    b.tag(3, &mb2_module(0x5000, 0x4000, ""));
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None), Err(BootError::BadRange { .. })));

    let mut b = Mb2Builder::new();
    b.tag(4, &meminfo(1, 1));
    for _ in 0..=MAX_MODULES {
        b.tag(3, &mb2_module(0x5000, 0x6000, ""));
    }
    assert_eq!(
        parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None),
        Err(BootError::TooManyModules { count: MAX_MODULES as u64 + 1 })
    );

    let mut b = Mb2Builder::new();
    let entries: Vec<(u64, u64, u32)> = (0..=MAX_MEMORY_MAP_ENTRIES as u64).map(|i| (i << 12, 0x1000, 1)).collect();
    b.tag(6, &mb2_mmap(24, &entries));
    assert!(matches!(parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None), Err(BootError::TooManyMemoryMapEntries { .. })));
}

#[test]
fn multiboot2_unterminated_strings_stop_at_tag_end() {
    let mut b = Mb2Builder::new();
    b.tag(2, b"GRUB 2.12"); // no NUL: ends with the tag
    b.tag(1, b"dom0_mem=1G");
    b.tag(4, &meminfo(1, 1));
    let i = parse(MULTIBOOT2_MAGIC, MB2, &b.finish(), None).unwrap();
    assert_eq!(i.loader_name.as_deref(), Some("GRUB 2.12"));
    assert_eq!(i.cmdline, "dom0_mem=1G");
}

// ---------------------------------------------------------------------------
// PVH

const PVH: u64 = 0x3_0000;

fn pvh_full(version: u32) -> Mem {
    let mut m = Mem::new(0x3_0000, 0x1_0000);
    m.u32(PVH, PVH_MAGIC);
    m.u32(PVH + 4, version);
    m.u32(PVH + 8, 0);
    m.u32(PVH + 12, 2);
    m.u64(PVH + 16, 0x3_1000);
    m.u64(PVH + 24, 0x3_2000);
    m.cstr(0x3_2000, "console=com1 debug_exit=0xf4");
    m.u64(PVH + 32, 0xF_5A40);
    m.u64(PVH + 40, 0x3_3000);
    m.u32(PVH + 48, 3);
    // modules
    m.u64(0x3_1000, 0x100_0000);
    m.u64(0x3_1008, 0x20_0000);
    m.u64(0x3_1010, 0x3_4000);
    m.cstr(0x3_4000, "vmlinuz console=hvc0");
    m.u64(0x3_1020, 0x120_0000);
    m.u64(0x3_1028, 0x1000);
    m.u64(0x3_1030, 0);
    // memory map
    for (i, (a, s, t)) in [(0u64, 0x9_FC00u64, 1u32), (0x10_0000, 0x7F0_0000, 1), (0xFEFF_C000, 0x4000, 2)].iter().enumerate() {
        let e = 0x3_3000 + i as u64 * 24;
        m.u64(e, *a);
        m.u64(e + 8, *s);
        m.u32(e + 16, *t);
    }
    m
}

#[test]
fn pvh_full_v1() {
    let m = pvh_full(1);
    let i = parse(0, PVH, &m, Some(Protocol::Pvh)).unwrap();
    assert_eq!(i.protocol, Protocol::Pvh);
    assert_eq!(i.loader_name, None);
    // PVH command lines hold no image path: nothing stripped.
    assert_eq!(i.cmdline, "console=com1 debug_exit=0xf4");
    assert_eq!(i.rsdp_paddr, Some(0xF_5A40));
    assert_eq!(
        i.modules,
        vec![
            BootModule { start: 0x100_0000, end: 0x120_0000, cmdline: "vmlinuz console=hvc0".into() },
            BootModule { start: 0x120_0000, end: 0x120_1000, cmdline: String::new() },
        ]
    );
    assert_eq!(
        i.memory_map,
        vec![usable(0, 0x9_FC00), usable(0x10_0000, 0x7F0_0000), reg(0xFEFF_C000, 0x4000, MemoryKind::Reserved)]
    );
    // The hint wins over whatever EAX held.
    assert_eq!(parse(MULTIBOOT1_MAGIC, PVH, &m, Some(Protocol::Pvh)).unwrap(), i);
    // Later versions only append fields.
    let m = pvh_full(2);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)).unwrap().memory_map.len(), 3);
}

#[test]
fn pvh_v0_has_no_memory_map() {
    let m = pvh_full(0);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::NoMemoryMap));
}

#[test]
fn pvh_errors() {
    let mut m = pvh_full(1);
    m.u32(PVH, 0x1234);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::BadPvhMagic(0x1234)));

    let mut m = pvh_full(1);
    m.u32(PVH + 12, 1000);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::TooManyModules { count: 1000 }));

    let mut m = pvh_full(1);
    m.u32(PVH + 48, 513);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::TooManyMemoryMapEntries { count: 513 }));

    let mut m = pvh_full(1);
    m.u64(0x3_1008, u64::MAX);
    assert!(matches!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::BadRange { what: "boot module", .. })));

    let mut m = pvh_full(1);
    m.u64(PVH + 16, u64::MAX - 8);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::AddressOverflow));

    let mut m = pvh_full(1);
    m.u64(PVH + 40, 0x9000_0000);
    assert!(matches!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::OutOfRange { .. })));

    let mut m = pvh_full(1);
    m.u64(PVH + 40, 0);
    assert_eq!(parse(0, PVH, &m, Some(Protocol::Pvh)), Err(BootError::NoMemoryMap));
}

#[test]
fn unknown_magic_without_hint() {
    let m = pvh_full(1);
    assert_eq!(parse(0xDEAD_BEEF, PVH, &m, None), Err(BootError::UnknownMagic(0xDEAD_BEEF)));
    assert_eq!(parse(PVH_MAGIC, PVH, &m, None), Err(BootError::UnknownMagic(PVH_MAGIC)));
}

#[test]
fn errors_display() {
    let cases: Vec<(BootError, &str)> = vec![
        (BootError::UnknownMagic(1), "unknown boot loader magic 0x00000001"),
        (BootError::OutOfRange { paddr: 0x10, len: 4 }, "4 bytes at physical address 0x10 are not readable"),
        (BootError::TooManyModules { count: 70 }, "70 boot modules (at most 64 are supported)"),
        (BootError::NoMemoryMap, "the boot loader gave no memory map"),
        (BootError::MissingEndTag, "multiboot2 information has no end tag"),
        (
            BootError::BadTag { offset: 8, tag_type: 3, size: 4, reason: "too small for its type" },
            "multiboot2 tag type 3 of size 4 at offset 8: too small for its type",
        ),
    ];
    for (e, want) in cases {
        assert!(e.to_string().starts_with(want), "{} vs {}", e, want);
    }
}

// ---------------------------------------------------------------------------
// Command line normalization

#[test]
fn normalize_cmdline() {
    let n = normalize_multiboot_cmdline;
    assert_eq!(n("/boot/ferrite.elf console=com1", None), "console=com1");
    assert_eq!(n("ferrite.elf  console=com1  x", Some("qemu")), "console=com1  x");
    assert_eq!(n("/boot/xen.gz", Some("GRUB 0.97")), "");
    assert_eq!(n("  /boot/xen.gz a", Some("GRUB 0.97")), "a");
    assert_eq!(n("console=com1 x", Some("GRUB 2.06")), "console=com1 x");
    assert_eq!(n("dom0_mem=1G x", None), "dom0_mem=1G x");
    assert_eq!(n("", None), "");
    assert_eq!(n("   ", None), "");
}

// ---------------------------------------------------------------------------
// Memory map sanitization

#[test]
fn sanitize_resolves_overlaps_and_merges() {
    let map = vec![
        usable(0x10_0000, 0x10_0000),
        usable(0, 0x9_F000),
        usable(0x20_0000, 0x10_0000),             // adjacent: merged with the one before
        reg(0x28_0000, 0x1_0000, MemoryKind::Reserved), // punches a hole
        usable(0x40_0000, 0),                      // empty: dropped
        reg(0x9_E000, 0x2000, MemoryKind::AcpiNvs), // overlaps the end of low memory
        usable(0x30_0000, 0x1000),
        usable(0x30_0000, 0x2000), // duplicate/overlapping usable
    ];
    let info = BootInfo {
        protocol: Protocol::Multiboot1,
        loader_name: None,
        cmdline: String::new(),
        memory_map: map,
        modules: vec![],
        rsdp_paddr: None,
    };
    assert_eq!(
        info.sanitized_memory_map(),
        vec![
            usable(0, 0x9_E000),
            reg(0x9_E000, 0x2000, MemoryKind::AcpiNvs),
            usable(0x10_0000, 0x18_0000),
            reg(0x28_0000, 0x1_0000, MemoryKind::Reserved),
            usable(0x29_0000, 0x7_2000),
        ]
    );
}

#[test]
fn sanitize_precedence_and_top_of_memory() {
    let map = vec![
        reg(0x1000, 0x3000, MemoryKind::AcpiReclaimable),
        reg(0x2000, 0x1000, MemoryKind::Bad),
        usable(0, 0x10000),
        usable(u64::MAX - 0xFFFF, 0xFFFF),
        reg(u64::MAX - 0xFFF, 0xFFF, MemoryKind::Other(7)),
    ];
    assert_eq!(
        sanitize_memory_map(&map),
        vec![
            usable(0, 0x1000),
            reg(0x1000, 0x1000, MemoryKind::AcpiReclaimable),
            reg(0x2000, 0x1000, MemoryKind::Bad),
            reg(0x3000, 0x1000, MemoryKind::AcpiReclaimable),
            usable(0x4000, 0xC000),
            usable(u64::MAX - 0xFFFF, 0xF000),
            reg(u64::MAX - 0xFFF, 0xFFF, MemoryKind::Other(7)),
        ]
    );
}

#[test]
fn sanitize_randomized_against_page_model() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..300 {
        let n = (rng.next() % 12) as usize;
        let kinds = [MemoryKind::Usable, MemoryKind::Usable, MemoryKind::Reserved, MemoryKind::AcpiNvs, MemoryKind::Bad];
        let map: Vec<MemoryRegion> = (0..n)
            .map(|_| reg((rng.next() % 64) * 0x1000, (rng.next() % 16) * 0x1000, kinds[(rng.next() % 5) as usize]))
            .collect();
        let out = sanitize_memory_map(&map);
        // Sorted, non-overlapping, no zero lengths, same-kind neighbours not touching.
        for w in out.windows(2) {
            assert!(w[0].end() <= w[1].start);
            assert!(!(w[0].end() == w[1].start && w[0].kind == w[1].kind));
        }
        for page in 0..80u64 {
            let a = page * 0x1000;
            let want = map
                .iter()
                .filter(|r| r.start <= a && a < r.end())
                .map(|r| r.kind)
                .max_by_key(|k| k.precedence());
            let got = out.iter().find(|r| r.start <= a && a < r.end()).map(|r| r.kind);
            assert_eq!(got, want, "page {:#x} in {:?}", a, map);
        }
    }
}

// ---------------------------------------------------------------------------
// Robustness: random and mutated input never panics.

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn mutate(m: &mut Mem, rng: &mut Rng, base: u64, span: u64) {
    for _ in 0..1 + rng.next() % 6 {
        let at = base + rng.next() % span;
        let o = (at - m.base) as usize;
        if o < m.bytes.len() {
            m.bytes[o] = match rng.next() % 4 {
                0 => 0,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
        }
    }
}

#[test]
fn mutated_inputs_never_panic() {
    let mut rng = Rng(42);
    let mut mb2 = Mb2Builder::new();
    mb2.tag(1, &cstr_bytes("/x console=com1"));
    mb2.tag(2, &cstr_bytes("GRUB 2.06"));
    mb2.tag(3, &mb2_module(0x40_0000, 0x50_0000, "/vmlinuz"));
    mb2.tag(6, &mb2_mmap(24, &[(0, 0x9_FC00, 1), (0x10_0000, 0x3FF0_0000, 1)]));
    mb2.tag(15, &[0; 36]);
    let mb2 = mb2.finish();
    let (mb1, pvh) = (mb1_full(), pvh_full(1));
    let mut ok = 0;
    for i in 0..6000 {
        let (mut m, magic, at, hint, span) = match i % 3 {
            0 => (Mem { base: mb1.base, bytes: mb1.bytes.clone() }, MULTIBOOT1_MAGIC, MB1, None, 0x6000),
            1 => (Mem { base: mb2.base, bytes: mb2.bytes.clone() }, MULTIBOOT2_MAGIC, MB2, None, 0x120),
            _ => (Mem { base: pvh.base, bytes: pvh.bytes.clone() }, 0, PVH, Some(Protocol::Pvh), 0x5000),
        };
        mutate(&mut m, &mut rng, at, span);
        if let Ok(info) = parse(magic, at, &m, hint) {
            ok += 1;
            assert!(info.modules.len() <= MAX_MODULES);
            assert!(info.memory_map.len() <= MAX_MEMORY_MAP_ENTRIES);
            assert!(info.cmdline.len() <= 3 * MAX_CMDLINE_LEN);
            let _ = info.sanitized_memory_map();
        }
    }
    assert!(ok > 100, "mutations should not break every parse ({} ok)", ok);
}

#[test]
fn random_memory_never_panics() {
    let mut rng = Rng(7);
    for _ in 0..500 {
        let mut m = Mem::new(0x1000, 0x4000);
        for b in m.bytes.iter_mut() {
            *b = rng.next() as u8;
        }
        for (magic, hint) in [(MULTIBOOT1_MAGIC, None), (MULTIBOOT2_MAGIC, None), (0, Some(Protocol::Pvh))] {
            let at = (0x1000 + rng.next() % 0x4000) & !7;
            let _ = parse(magic, at, &m, hint);
        }
    }
}
