use super::table_loader::{self, ACPI_RSDP_FILE, ACPI_TABLES_FILE, TABLE_LOADER_FILE};
use super::*;
use crate::testutil::Rng;
use alloc::string::ToString;
use alloc::vec;
use ferrite_loader::acpi::PlatformLayout;
use ferrite_loader::acpi_blob::HVM_PLATFORM;

// ---------------------------------------------------------------- fakes

/// Guest RAM [0, size) with a hole; records every write.
struct Ram {
    bytes: Vec<u8>,
    hole: (u64, u64),
    writes: Vec<(u64, u64)>,
}

impl Ram {
    fn new(size: usize) -> Self {
        Ram {
            bytes: vec![0; size],
            hole: (0, 0),
            writes: Vec::new(),
        }
    }
    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, DmaError> {
        let err = DmaError::OutOfRange {
            gpa,
            len: len as u64,
        };
        let end = gpa.checked_add(len as u64).ok_or(err)?;
        if end > self.bytes.len() as u64 || (gpa < self.hole.1 && end > self.hole.0) {
            return Err(err);
        }
        Ok(gpa as usize..end as usize)
    }
    fn put(&mut self, gpa: u64, d: &[u8]) {
        self.bytes[gpa as usize..gpa as usize + d.len()].copy_from_slice(d);
    }
    fn get(&self, gpa: u64, len: usize) -> &[u8] {
        &self.bytes[gpa as usize..gpa as usize + len]
    }
}

impl GuestMemoryAccess for Ram {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        self.writes.push((gpa, data.len() as u64));
        Ok(())
    }
}

/// External objects: handle = index.
#[derive(Default)]
struct Ext {
    blobs: Vec<Vec<u8>>,
    reads: usize,
    copies: usize,
}

impl ExternalData for Ext {
    fn read(&mut self, handle: u32, offset: u64, buf: &mut [u8]) -> Result<(), ExternalError> {
        self.reads += 1;
        let e = ExternalError::Source;
        let b = self.blobs.get(handle as usize).ok_or(e)?;
        let s = usize::try_from(offset).map_err(|_| e)?;
        let src = b.get(s..s.checked_add(buf.len()).ok_or(e)?).ok_or(e)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn copy_to_guest(
        &mut self,
        handle: u32,
        offset: u64,
        gpa: u64,
        len: u64,
        mem: &mut dyn GuestMemoryAccess,
    ) -> Result<(), ExternalError> {
        self.copies += 1;
        let b = self
            .blobs
            .get(handle as usize)
            .ok_or(ExternalError::Source)?;
        let s = offset as usize;
        let src = b.get(s..s + len as usize).ok_or(ExternalError::Source)?;
        mem.write(gpa, src).map_err(ExternalError::Guest)
    }
}

// ------------------------------------------------------- guest-side ops

fn select(fw: &mut FwCfg, sel: u16) {
    let mut ram = Ram::new(0);
    assert!(fw.io_write(PORT_SELECTOR, 2, sel.into(), &mut ram, &mut NoExternalData));
}

fn read_port(fw: &mut FwCfg, ext: &mut dyn ExternalData, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| fw.io_read(PORT_DATA, 1, ext).unwrap() as u8)
        .collect()
}

/// Issue a DMA request with its structure at `ctl`; run it to completion;
/// return the control word left in memory.
fn dma(
    fw: &mut FwCfg,
    ram: &mut Ram,
    ext: &mut dyn ExternalData,
    ctl: u64,
    control: u32,
    len: u32,
    addr: u64,
) -> u32 {
    let mut s = [0u8; 16];
    s[0..4].copy_from_slice(&control.to_be_bytes());
    s[4..8].copy_from_slice(&len.to_be_bytes());
    s[8..16].copy_from_slice(&addr.to_be_bytes());
    ram.put(ctl, &s);
    assert!(fw.io_write(
        PORT_DMA_HIGH,
        4,
        ((ctl >> 32) as u32).swap_bytes(),
        ram,
        ext
    ));
    assert!(fw.io_write(PORT_DMA_LOW, 4, (ctl as u32).swap_bytes(), ram, ext));
    while fw.dma_pending() {
        fw.continue_dma(ram, ext);
    }
    u32::from_be_bytes(ram.get(ctl, 4).try_into().unwrap())
}

fn read_sel(
    fw: &mut FwCfg,
    ram: &mut Ram,
    ext: &mut dyn ExternalData,
    sel: u16,
    len: usize,
) -> Vec<u8> {
    let buf = 0x8000;
    let c = dma(
        fw,
        ram,
        ext,
        0x100,
        (u32::from(sel) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        len as u32,
        buf,
    );
    assert_eq!(c, 0);
    ram.get(buf, len).to_vec()
}

fn read_file(fw: &mut FwCfg, ext: &mut dyn ExternalData, name: &str) -> Vec<u8> {
    let sel = fw
        .selector_of(name)
        .unwrap_or_else(|| panic!("no file {name}"));
    let len = fw.item(sel).unwrap().len() as usize;
    let mut ram = Ram::new(0x8000 + len + 16);
    read_sel(fw, &mut ram, ext, sel, len)
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn basic() -> FwCfg {
    let mut b = FwCfgBuilder::new();
    b.ram(256 << 20, 0)
        .unwrap()
        .cpus(2)
        .unwrap()
        .acpi(HVM_PLATFORM);
    b.bootorder("/pci@i0cf8/ide@1,1/drive@0/disk@0");
    b.file("opt/hello", ItemData::Bytes(b"hello world".to_vec()))
        .unwrap();
    b.build().unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn signature_and_id_through_ports() {
    let mut fw = basic();
    // Power-on: signature selected.
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 4), b"QEMU");
    select(&mut fw, key::SIGNATURE);
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 6), b"QEMU\0\0");
    // Port 0x510 reads data too (QEMU's combined region); wider reads are 0.
    select(&mut fw, key::SIGNATURE);
    assert_eq!(
        fw.io_read(PORT_SELECTOR, 1, &mut NoExternalData),
        Some(b'Q' as u32)
    );
    assert_eq!(fw.io_read(PORT_DATA, 2, &mut NoExternalData), Some(0));
    assert_eq!(
        fw.io_read(PORT_DATA, 1, &mut NoExternalData),
        Some(b'E' as u32)
    );
    select(&mut fw, key::ID);
    assert_eq!(
        le32(&read_port(&mut fw, &mut NoExternalData, 4), 0),
        ID_TRADITIONAL | ID_DMA
    );
    // Byte writes to the selector are not selects; data writes are ignored.
    let mut ram = Ram::new(0);
    select(&mut fw, key::SIGNATURE);
    assert!(fw.io_write(PORT_SELECTOR, 1, 1, &mut ram, &mut NoExternalData));
    assert!(fw.io_write(PORT_DATA, 1, 0x55, &mut ram, &mut NoExternalData));
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 1), b"Q");
    // Unknown selectors read as zeros.
    select(&mut fw, 0x1234);
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 3), [0, 0, 0]);
    // Not our ports.
    assert_eq!(fw.io_read(0x512, 1, &mut NoExternalData), None);
    assert!(!fw.io_write(0x50f, 2, 0, &mut ram, &mut NoExternalData));
    // Reset selects the signature again.
    select(&mut fw, key::ID);
    fw.reset();
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 4), b"QEMU");
}

#[test]
fn dma_register_signature() {
    let mut fw = basic();
    let sig: Vec<u8> = (0..8)
        .map(|i| {
            fw.io_read(PORT_DMA_HIGH + i, 1, &mut NoExternalData)
                .unwrap() as u8
        })
        .collect();
    assert_eq!(sig, b"QEMU CFG");
    assert_eq!(
        fw.io_read(PORT_DMA_HIGH, 4, &mut NoExternalData),
        Some(u32::from_le_bytes(*b"QEMU"))
    );
    assert_eq!(
        fw.io_read(PORT_DMA_LOW, 4, &mut NoExternalData),
        Some(u32::from_le_bytes(*b" CFG"))
    );
    assert_eq!(
        fw.io_read(PORT_DMA_LOW + 2, 2, &mut NoExternalData),
        Some(u32::from(u16::from_le_bytes(*b"FG")))
    );
    assert_eq!(
        fw.io_read(PORT_DMA_LOW + 2, 4, &mut NoExternalData),
        Some(0)
    );
    // Without DMA the ports and the ID bit are gone.
    let mut b = FwCfgBuilder::new();
    b.dma(false);
    let mut fw = b.build().unwrap();
    assert_eq!(fw.io_read(PORT_DMA_HIGH, 4, &mut NoExternalData), None);
    assert!(!fw.io_write(PORT_DMA_LOW, 4, 0, &mut Ram::new(0), &mut NoExternalData));
    select(&mut fw, key::ID);
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 4), [1, 0, 0, 0]);
}

#[test]
fn file_directory_sorted_and_select_by_name() {
    let mut fw = basic();
    select(&mut fw, key::FILE_DIR);
    let count = u32::from_be_bytes(
        read_port(&mut fw, &mut NoExternalData, 4)
            .try_into()
            .unwrap(),
    );
    let mut names = Vec::new();
    for i in 0..count {
        let e = read_port(&mut fw, &mut NoExternalData, 64);
        let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
        let sel = u16::from_be_bytes([e[4], e[5]]);
        assert_eq!(sel, key::FILE_FIRST + i as u16);
        assert_eq!(&e[6..8], &[0, 0]);
        let n = e[8..].iter().position(|&c| c == 0).unwrap();
        let name = core::str::from_utf8(&e[8..8 + n]).unwrap().to_string();
        assert!(e[8 + n..].iter().all(|&c| c == 0));
        assert_eq!(fw.selector_of(&name), Some(sel));
        assert_eq!(fw.item(sel).unwrap().len(), size as u64);
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for want in [
        "bootorder",
        "etc/acpi/rsdp",
        "etc/acpi/tables",
        "etc/boot-cpus",
        "etc/boot-fail-wait",
        "etc/e820",
        "etc/table-loader",
        "opt/hello",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Past the directory: zeros.
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 2), [0, 0]);
    // Select a file by name, as SeaBIOS without DMA does.
    let sel = fw.selector_of("opt/hello").unwrap();
    select(&mut fw, sel);
    assert_eq!(
        read_port(&mut fw, &mut NoExternalData, 13),
        b"hello world\0\0"
    );
    // The write-channel bit does not change what is read.
    select(&mut fw, sel | key::WRITE_CHANNEL);
    assert_eq!(read_port(&mut fw, &mut NoExternalData, 5), b"hello");
    assert_eq!(
        read_file(&mut fw, &mut NoExternalData, "bootorder"),
        b"/pci@i0cf8/ide@1,1/drive@0/disk@0\0"
    );
    assert_eq!(
        read_file(&mut fw, &mut NoExternalData, "etc/boot-fail-wait"),
        u32::MAX.to_le_bytes()
    );
}

#[test]
fn ram_cpu_and_legacy_items() {
    let mut b = FwCfgBuilder::new();
    b.ram(0xc000_0000, 0x4000_0000)
        .unwrap()
        .cpus(3)
        .unwrap()
        .reserve(0xfeff_c000, 0x4000);
    let mut fw = b.build().unwrap();
    let mut ram = Ram::new(0x10000);
    let mut x = NoExternalData;
    assert_eq!(
        le64(&read_sel(&mut fw, &mut ram, &mut x, key::RAM_SIZE, 8), 0),
        0x1_0000_0000
    );
    assert_eq!(read_sel(&mut fw, &mut ram, &mut x, key::NB_CPUS, 2), [3, 0]);
    assert_eq!(
        read_sel(&mut fw, &mut ram, &mut x, key::MAX_CPUS, 2),
        [3, 0]
    );
    assert_eq!(
        read_sel(&mut fw, &mut ram, &mut x, key::IRQ0_OVERRIDE, 4),
        [1, 0, 0, 0]
    );
    assert_eq!(
        read_sel(&mut fw, &mut ram, &mut x, key::BOOT_MENU, 2),
        [0, 0]
    );
    assert_eq!(
        read_sel(&mut fw, &mut ram, &mut x, key::NOGRAPHIC, 2),
        [1, 0]
    );
    // NUMA: node count 0, then max_cpus u64 words.
    assert_eq!(fw.item(key::NUMA).unwrap().len(), 8 * 4);
    assert_eq!(read_sel(&mut fw, &mut ram, &mut x, key::NUMA, 8), [0; 8]);
    assert_eq!(read_file(&mut fw, &mut x, "etc/boot-cpus"), [3, 0]);
    let e = read_file(&mut fw, &mut x, "etc/e820");
    let ents: Vec<(u64, u64, u32)> = e
        .chunks(20)
        .map(|c| (le64(c, 0), le64(c, 8), le32(c, 16)))
        .collect();
    assert_eq!(
        ents,
        [
            (0, 0x10_0000, 1),
            (0x10_0000, 0xc000_0000 - 0x10_0000, 1),
            (0xfeff_c000, 0x4000, 2),
            (0x1_0000_0000, 0x4000_0000, 1)
        ]
    );
    let legacy = read_sel(&mut fw, &mut ram, &mut x, key::E820_TABLE, 24);
    assert_eq!(le32(&legacy, 0), 1);
    assert_eq!(
        (le64(&legacy, 4), le64(&legacy, 12), le32(&legacy, 20)),
        (0xfeff_c000, 0x4000, 2)
    );
    // CMOS as QEMU's pc_cmos_init.
    let cmos = pc_cmos_memory(0xc000_0000, 0x4000_0000, 3);
    let get = |i: u8| cmos.iter().find(|c| c.0 == i).unwrap().1;
    assert_eq!((get(0x15), get(0x16)), (0x80, 0x02)); // 640 KiB
    assert_eq!((get(0x30), get(0x31)), (0xff, 0xff));
    let above16 = (0xc000_0000u64 - (16 << 20)) / 0x10000;
    assert_eq!(
        (get(0x34), get(0x35)),
        (above16 as u8, (above16 >> 8) as u8)
    );
    assert_eq!((get(0x5b), get(0x5c), get(0x5d)), (0, 0x40, 0));
    assert_eq!(get(0x5f), 2);
    let small = pc_cmos_memory(8 << 20, 0, 1);
    let g = |i: u8| small.iter().find(|c| c.0 == i).unwrap().1;
    assert_eq!((g(0x30), g(0x31), g(0x34)), (0x00, 0x1c, 0)); // 7 MiB in KiB
}

#[test]
fn builder_errors() {
    let mut b = FwCfgBuilder::new();
    assert!(matches!(
        b.file("", ItemData::Bytes(vec![])),
        Err(FwCfgError::BadFileName(_))
    ));
    let long = "x".repeat(56);
    assert!(matches!(
        b.file(&long, ItemData::Bytes(vec![])),
        Err(FwCfgError::BadFileName(_))
    ));
    b.file(&"y".repeat(55), ItemData::Bytes(vec![1])).unwrap();
    b.file("a", ItemData::Bytes(vec![])).unwrap();
    assert_eq!(
        b.file("a", ItemData::Bytes(vec![])).unwrap_err(),
        FwCfgError::DuplicateFile("a".into())
    );
    assert!(matches!(
        b.file(
            "big",
            ItemData::External {
                handle: 0,
                offset: 0,
                len: 1 << 32
            }
        ),
        Err(FwCfgError::ItemTooLarge { .. })
    ));
    assert!(matches!(
        b.file(
            "wrap",
            ItemData::External {
                handle: 0,
                offset: u64::MAX,
                len: 2
            }
        ),
        Err(FwCfgError::ItemTooLarge { .. })
    ));
    assert_eq!(b.cpus(0).unwrap_err(), FwCfgError::BadVcpuCount(0));
    assert_eq!(b.cpus(256).unwrap_err(), FwCfgError::BadVcpuCount(256));
    assert!(matches!(b.ram(0xd000_0000, 0), Err(FwCfgError::BadRam(_))));
    assert!(matches!(b.ram(1 << 19, 0), Err(FwCfgError::BadRam(_))));
    assert!(matches!(
        b.item(0x20, ItemData::Bytes(vec![])),
        Err(FwCfgError::BadSelector(0x20))
    ));
    b.item(0x8004, ItemData::Bytes(vec![1])).unwrap();
    // ACPI needs the CPU count.
    b.acpi(HVM_PLATFORM);
    assert!(matches!(b.build(), Err(FwCfgError::Missing(_))));
    b.cpus(1).unwrap();
    let fw = b.build().unwrap();
    assert!(fw.file(&"y".repeat(55)).is_some());
    // Linux needs the RAM size first.
    let head = bzimage_head(0x020f, 0, 0x37ff_ffff);
    let cfg = linux_cfg(&head, None, "");
    assert!(matches!(
        FwCfgBuilder::new().linux(&cfg),
        Err(FwCfgError::Missing(_))
    ));
    assert!(alloc::format!("{}", FwCfgError::BadVcpuCount(0)).contains("vCPUs"));
}

#[test]
fn dma_read_skip_select_and_zero_fill() {
    let mut fw = basic();
    let mut ram = Ram::new(0x10000);
    let mut x = NoExternalData;
    let hello = fw.selector_of("opt/hello").unwrap();
    // Select + read 5.
    let c = dma(
        &mut fw,
        &mut ram,
        &mut x,
        0x100,
        (u32::from(hello) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        5,
        0x2000,
    );
    assert_eq!(c, 0);
    assert_eq!(ram.get(0x2000, 5), b"hello");
    // Skip 1, then read the rest and beyond: zero-filled.
    ram.put(0x3000, &[0xaa; 16]);
    assert_eq!(
        dma(&mut fw, &mut ram, &mut x, 0x100, dma_ctl::SKIP, 1, 0),
        0
    );
    assert_eq!(
        dma(&mut fw, &mut ram, &mut x, 0x100, dma_ctl::READ, 12, 0x3000),
        0
    );
    assert_eq!(ram.get(0x3000, 13), b"world\0\0\0\0\0\0\0\xaa");
    // Skip past the end completes without error; reads then give zeros.
    assert_eq!(
        dma(&mut fw, &mut ram, &mut x, 0x100, dma_ctl::SKIP, 1000, 0),
        0
    );
    // No operation bit: just the select.
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            (u32::from(key::SIGNATURE) << 16) | dma_ctl::SELECT,
            100,
            0x4000
        ),
        0
    );
    assert_eq!(
        dma(&mut fw, &mut ram, &mut x, 0x100, dma_ctl::READ, 4, 0x4000),
        0
    );
    assert_eq!(ram.get(0x4000, 4), b"QEMU");
    // READ wins over WRITE and SKIP.
    let c = dma(
        &mut fw,
        &mut ram,
        &mut x,
        0x100,
        (u32::from(key::ID) << 16)
            | dma_ctl::SELECT
            | dma_ctl::READ
            | dma_ctl::WRITE
            | dma_ctl::SKIP,
        4,
        0x4000,
    );
    assert_eq!(c, 0);
    assert_eq!(ram.get(0x4000, 4), [3, 0, 0, 0]);
    // Length 0 reads complete at once.
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            dma_ctl::READ,
            0,
            0xffff_ffff_ffff
        ),
        0
    );
    // Control structure above 4 GiB through the high register.
    let mut big = Ram::new(0);
    big.bytes = vec![0; 0x2000];
    // (the structure itself must be RAM; in this fake there is none high,
    // so the request fails and nothing is written.)
    assert!(fw.io_write(PORT_DMA_HIGH, 4, 1u32.swap_bytes(), &mut big, &mut x));
    assert!(fw.io_write(PORT_DMA_LOW, 4, 0x100u32.swap_bytes(), &mut big, &mut x));
    assert!(big.writes.is_empty());
    // The high register is cleared after each transfer: a low-only write
    // now addresses the structure at 0x200.
    let mut s = [0u8; 16];
    s[0..4].copy_from_slice(
        &((u32::from(key::SIGNATURE) << 16) | dma_ctl::SELECT | dma_ctl::READ).to_be_bytes(),
    );
    s[4..8].copy_from_slice(&4u32.to_be_bytes());
    s[8..16].copy_from_slice(&0x5000u64.to_be_bytes());
    ram.put(0x200, &s);
    assert!(fw.io_write(PORT_DMA_LOW, 4, 0x200u32.swap_bytes(), &mut ram, &mut x));
    assert_eq!(ram.get(0x200, 4), [0; 4]);
    assert_eq!(ram.get(0x5000, 4), b"QEMU");
}

#[test]
fn dma_error_paths() {
    let mut fw = basic();
    let mut ram = Ram::new(0x10000);
    ram.hole = (0x8000, 0x9000);
    let mut x = NoExternalData;
    let hello = fw.selector_of("opt/hello").unwrap();
    let sel = |s: u16| (u32::from(s) << 16) | dma_ctl::SELECT;
    // Data range in the hole / past RAM / wrapping.
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(hello) | dma_ctl::READ,
            4,
            0x8ffe
        ),
        dma_ctl::ERROR
    );
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(hello) | dma_ctl::READ,
            4,
            0xfffe
        ),
        dma_ctl::ERROR
    );
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(hello) | dma_ctl::READ,
            4,
            u64::MAX - 1
        ),
        dma_ctl::ERROR
    );
    // Zero fill into the hole.
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(0x7777) | dma_ctl::READ,
            0x2000,
            0x7000
        ),
        dma_ctl::ERROR
    );
    // Writes: every item is read-only; past the end too; length 0 is fine.
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(hello) | dma_ctl::WRITE,
            4,
            0x2000
        ),
        dma_ctl::ERROR
    );
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(0x7777) | dma_ctl::WRITE,
            4,
            0x2000
        ),
        dma_ctl::ERROR
    );
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut x,
            0x100,
            sel(hello) | dma_ctl::WRITE,
            0,
            0x2000
        ),
        0
    );
    // The structure itself not in RAM: ERROR where possible, else nothing.
    let before = ram.writes.len();
    assert!(fw.io_write(PORT_DMA_LOW, 4, 0x8ff8u32.swap_bytes(), &mut ram, &mut x));
    assert_eq!(ram.writes.len(), before);
    ram.put(0xfff8, &[0x11; 8]);
    assert!(fw.io_write(PORT_DMA_LOW, 4, 0xfff8u32.swap_bytes(), &mut ram, &mut x));
    assert_eq!(ram.get(0xfff8, 4), dma_ctl::ERROR.to_be_bytes());
    // Odd-sized writes to the DMA registers are ignored.
    let before = ram.writes.len();
    assert!(fw.io_write(PORT_DMA_LOW, 2, 0x100, &mut ram, &mut x));
    assert!(fw.io_write(PORT_DMA_LOW + 1, 4, 0x100, &mut ram, &mut x));
    assert_eq!(ram.writes.len(), before);
    assert!(!fw.dma_pending());
}

#[test]
fn external_items_port_and_dma() {
    let kernel: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let mut ext = Ext {
        blobs: vec![vec![9; 10], kernel.clone()],
        ..Default::default()
    };
    let mut b = FwCfgBuilder::new();
    b.file(
        "opt/k",
        ItemData::External {
            handle: 1,
            offset: 1000,
            len: 50_000,
        },
    )
    .unwrap();
    b.file(
        "opt/bad",
        ItemData::External {
            handle: 7,
            offset: 0,
            len: 100,
        },
    )
    .unwrap();
    let mut fw = b.build().unwrap();
    // Port reads go through a read-ahead buffer.
    let sel = fw.selector_of("opt/k").unwrap();
    select(&mut fw, sel);
    let got = read_port(&mut fw, &mut ext, 2000);
    assert_eq!(got, &kernel[1000..3000]);
    assert!(ext.reads <= 2000 / 512 + 1, "{} reads", ext.reads);
    // DMA: one copy for the whole range, from the right offset.
    let mut ram = Ram::new(0x20000);
    let c = dma(
        &mut fw,
        &mut ram,
        &mut ext,
        0x100,
        (u32::from(sel) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        60_000,
        0x1000,
    );
    assert_eq!(c, 0);
    assert_eq!(ram.get(0x1000, 50_000), &kernel[1000..51_000]);
    assert!(ram.get(0x1000 + 50_000, 10_000).iter().all(|&b| b == 0));
    assert_eq!(ext.copies, 1);
    // Skip into the middle, then read.
    let c = dma(
        &mut fw,
        &mut ram,
        &mut ext,
        0x100,
        (u32::from(sel) << 16) | dma_ctl::SELECT | dma_ctl::SKIP,
        49_990,
        0,
    );
    assert_eq!(c, 0);
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut ext,
            0x100,
            dma_ctl::READ,
            10,
            0x1000
        ),
        0
    );
    assert_eq!(ram.get(0x1000, 10), &kernel[50_990..51_000]);
    // A broken source: ERROR by DMA, zeros by port.
    let bad = fw.selector_of("opt/bad").unwrap();
    assert_eq!(
        dma(
            &mut fw,
            &mut ram,
            &mut ext,
            0x100,
            (u32::from(bad) << 16) | dma_ctl::SELECT | dma_ctl::READ,
            10,
            0x1000
        ),
        dma_ctl::ERROR
    );
    select(&mut fw, bad);
    assert_eq!(read_port(&mut fw, &mut ext, 3), [0, 0, 0]);
    // The default copy_to_guest (bounce through `read`).
    struct Plain(Vec<u8>);
    impl ExternalData for Plain {
        fn read(&mut self, _: u32, offset: u64, buf: &mut [u8]) -> Result<(), ExternalError> {
            let s = offset as usize;
            buf.copy_from_slice(self.0.get(s..s + buf.len()).ok_or(ExternalError::Source)?);
            Ok(())
        }
    }
    let mut plain = Plain(kernel.clone());
    let c = dma(
        &mut fw,
        &mut ram,
        &mut plain,
        0x100,
        (u32::from(sel) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        3000,
        0x1000,
    );
    assert_eq!(c, 0);
    assert_eq!(ram.get(0x1000, 3000), &kernel[1000..4000]);
}

#[test]
fn dma_budget_continuation_and_abort() {
    let blob: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut ext = Ext {
        blobs: vec![blob.clone()],
        ..Default::default()
    };
    let mut b = FwCfgBuilder::new();
    b.file(
        "opt/x",
        ItemData::External {
            handle: 0,
            offset: 0,
            len: 40_000,
        },
    )
    .unwrap();
    let mut fw = b.build().unwrap();
    fw.set_dma_budget(4096);
    let mut ram = Ram::new(0x20000);
    let sel = fw.selector_of("opt/x").unwrap();
    let ctl = 0x100u64;
    let mut s = [0u8; 16];
    s[0..4]
        .copy_from_slice(&((u32::from(sel) << 16) | dma_ctl::SELECT | dma_ctl::READ).to_be_bytes());
    s[4..8].copy_from_slice(&50_000u32.to_be_bytes());
    s[8..16].copy_from_slice(&0x1000u64.to_be_bytes());
    ram.put(ctl, &s);
    fw.io_write(
        PORT_DMA_LOW,
        4,
        (ctl as u32).swap_bytes(),
        &mut ram,
        &mut ext,
    );
    let mut calls = 1;
    while fw.dma_pending() {
        // The guest still sees its request in flight.
        assert_ne!(ram.get(ctl, 4), [0, 0, 0, 0]);
        fw.continue_dma(&mut ram, &mut ext);
        calls += 1;
    }
    assert_eq!(calls, (50_000 + 4095) / 4096);
    assert_eq!(ram.get(ctl, 4), [0; 4]);
    assert_eq!(ram.get(0x1000, 40_000), &blob[..]);
    // Another write while a transfer is pending aborts it.
    ram.put(ctl, &s);
    fw.io_write(
        PORT_DMA_LOW,
        4,
        (ctl as u32).swap_bytes(),
        &mut ram,
        &mut ext,
    );
    assert!(fw.dma_pending());
    select_with(&mut fw, &mut ram, key::SIGNATURE);
    assert!(!fw.dma_pending());
    assert_eq!(ram.get(ctl, 4), dma_ctl::ERROR.to_be_bytes());
    fw.continue_dma(&mut ram, &mut ext); // nothing pending: no-op
}

fn select_with(fw: &mut FwCfg, ram: &mut Ram, sel: u16) {
    assert!(fw.io_write(PORT_SELECTOR, 2, sel.into(), ram, &mut NoExternalData));
}

// ------------------------------------------------------------- Linux boot

/// A bzImage head: 4 setup sectors + the first kernel sector.
fn bzimage_head(version: u16, xloadflags: u16, initrd_addr_max: u32) -> Vec<u8> {
    let mut img = vec![0u8; 5 * 512];
    img[0x1f1] = 4;
    img[0x1fa..0x1fc].copy_from_slice(&0xffffu16.to_le_bytes());
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x200] = 0xeb;
    img[0x201] = 0x6a;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    img[0x211] = 1;
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&initrd_addr_max.to_le_bytes());
    img[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    img[0x234] = 1;
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes());
    img
}

fn linux_cfg<'a>(
    head: &'a [u8],
    initrd: Option<ExternalBlob>,
    cmdline: &'a str,
) -> LinuxBootConfig<'a> {
    LinuxBootConfig {
        image_head: head,
        kernel: ExternalBlob {
            handle: 1,
            len: 0x40_0000,
        },
        initrd,
        cmdline,
    }
}

#[test]
fn linux_boot_items_like_qemu() {
    let head = bzimage_head(0x020f, 0x3, 0x7fff_ffff);
    let ram = 512u64 << 20;
    let mut b = FwCfgBuilder::new();
    b.ram(ram, 0).unwrap().cpus(1).unwrap();
    b.linuxboot_rom(ExternalBlob {
        handle: 3,
        len: 1536,
    })
    .unwrap();
    b.bootorder("/pci@i0cf8/ide@1,1/drive@0/disk@0\n");
    let rd = ExternalBlob {
        handle: 2,
        len: 0x12_3456,
    };
    let plan = b
        .linux(&linux_cfg(&head, Some(rd), "console=ttyS0 vga=0x317 quiet"))
        .unwrap();
    // CAN_BE_LOADED_ABOVE_4G: initrd_max = 4G-1, lowered below RAM - 0x28000.
    let max = ram - ACPI_DATA_SIZE - 1;
    assert_eq!(plan.initrd_max as u64, max);
    assert_eq!(plan.initrd_addr as u64, (max - rd.len) & !0xfff);
    assert_eq!(plan.initrd_size as u64, rd.len);
    assert_eq!(
        (
            plan.setup_addr,
            plan.setup_size,
            plan.cmdline_addr,
            plan.kernel_addr
        ),
        (0x10000, 2560, 0x20000, 0x100000)
    );
    assert_eq!(plan.kernel_size as u64, 0x40_0000 - 2560);
    assert_eq!(plan.kernel_offset, 2560);
    assert_eq!(plan.vid_mode, Some(0x317));
    let fw = b.build().unwrap();
    let u32item = |k: u16| match fw.item(k).unwrap() {
        ItemData::Bytes(b) => le32(b, 0),
        _ => panic!(),
    };
    assert_eq!(u32item(key::SETUP_ADDR), 0x10000);
    assert_eq!(u32item(key::SETUP_SIZE), 2560);
    assert_eq!(u32item(key::KERNEL_ADDR), 0x100000);
    assert_eq!(u32item(key::KERNEL_SIZE), plan.kernel_size);
    assert_eq!(u32item(key::CMDLINE_ADDR), 0x20000);
    assert_eq!(u32item(key::CMDLINE_SIZE), 30);
    assert_eq!(u32item(key::INITRD_ADDR), plan.initrd_addr);
    assert_eq!(u32item(key::INITRD_SIZE), 0x12_3456);
    assert_eq!(
        fw.item(key::CMDLINE_DATA),
        Some(&ItemData::Bytes(
            b"console=ttyS0 vga=0x317 quiet\0".to_vec()
        ))
    );
    assert_eq!(
        fw.item(key::KERNEL_DATA),
        Some(&ItemData::External {
            handle: 1,
            offset: 2560,
            len: 0x40_0000 - 2560
        })
    );
    assert_eq!(
        fw.item(key::INITRD_DATA),
        Some(&ItemData::External {
            handle: 2,
            offset: 0,
            len: 0x12_3456
        })
    );
    let ItemData::Bytes(setup) = fw.item(key::SETUP_DATA).unwrap() else {
        panic!()
    };
    assert_eq!(setup.len(), 2560);
    assert_eq!(setup[0x210], 0xb0);
    assert_eq!(setup[0x211], 0x81);
    assert_eq!(u16::from_le_bytes([setup[0x224], setup[0x225]]), 0xfe00);
    assert_eq!(le32(setup, 0x228), 0x20000);
    assert_eq!(le32(setup, 0x218), plan.initrd_addr);
    assert_eq!(le32(setup, 0x21c), 0x12_3456);
    assert_eq!(u16::from_le_bytes([setup[0x1fa], setup[0x1fb]]), 0x317);
    // Everything else is the image's.
    for (i, (&a, &b)) in setup.iter().zip(head.iter()).enumerate() {
        if !matches!(i, 0x1fa..=0x1fb | 0x210..=0x211 | 0x218..=0x21f | 0x224..=0x225 | 0x228..=0x22b)
        {
            assert_eq!(a, b, "byte {i:#x}");
        }
    }
    // The option ROM boots first.
    let ItemData::Bytes(order) = fw.file("bootorder").unwrap() else {
        panic!()
    };
    assert_eq!(
        order.as_slice(),
        b"/rom@genroms/linuxboot_dma.bin\n/pci@i0cf8/ide@1,1/drive@0/disk@0\n\0"
    );
    assert_eq!(
        fw.file(LINUXBOOT_DMA_ROM),
        Some(&ItemData::External {
            handle: 3,
            offset: 0,
            len: 1536
        })
    );
}

#[test]
fn linux_initrd_max_from_header_and_no_initrd() {
    // Without XLF_CAN_BE_LOADED_ABOVE_4G the header's limit holds.
    let head = bzimage_head(0x020b, 0, 0x37ff_ffff);
    let li = plan_linux_boot(
        &linux_cfg(
            &head,
            Some(ExternalBlob {
                handle: 2,
                len: 0x1000,
            }),
            "",
        ),
        2 << 30,
    )
    .unwrap();
    assert_eq!(li.plan.initrd_max, 0x37ff_ffff);
    assert_eq!(li.plan.initrd_addr, 0x37ff_e000);
    // Protocol 2.12 with the flag clear: same.
    let head = bzimage_head(0x020c, 0x1, 0x7fff_ffff);
    let li = plan_linux_boot(
        &linux_cfg(
            &head,
            Some(ExternalBlob {
                handle: 2,
                len: 0x1001,
            }),
            "",
        ),
        3 << 30,
    )
    .unwrap();
    assert_eq!(li.plan.initrd_addr, 0x7fff_e000);
    // No initrd: no initrd items, header untouched there; vga=normal/ext/ask.
    let head = bzimage_head(0x020f, 0x3, 0x7fff_ffff);
    let li = plan_linux_boot(&linux_cfg(&head, None, "vga=ask"), 64 << 20).unwrap();
    assert!(li
        .items
        .iter()
        .all(|(k, _)| !matches!(*k, key::INITRD_ADDR | key::INITRD_SIZE | key::INITRD_DATA)));
    assert_eq!(li.plan.initrd_addr, 0);
    assert_eq!(li.plan.vid_mode, Some(0xfffd));
    for (cl, m) in [
        ("a vga=normal", Some(0xffff)),
        ("vga=ext", Some(0xfffe)),
        ("vga=791 x", Some(791)),
        ("vga=010", Some(8)),
        ("novga", None),
    ] {
        assert_eq!(
            plan_linux_boot(&linux_cfg(&head, None, cl), 64 << 20)
                .unwrap()
                .plan
                .vid_mode,
            m,
            "{cl}"
        );
    }
}

#[test]
fn linux_boot_errors() {
    let good = bzimage_head(0x020f, 0x3, 0x7fff_ffff);
    let ram = 64u64 << 20;
    let e = |head: &[u8], initrd: Option<ExternalBlob>, cl: &str, ram: u64| {
        plan_linux_boot(&linux_cfg(head, initrd, cl), ram).unwrap_err()
    };
    assert_eq!(
        e(&good[..0x100], None, "", ram),
        LinuxBootError::HeadTooShort {
            need: 0x1f2,
            have: 0x100
        }
    );
    assert_eq!(
        e(&good[..2000], None, "", ram),
        LinuxBootError::HeadTooShort {
            need: 2560,
            have: 2000
        }
    );
    let mut h = good.clone();
    h[0x202] = b'X';
    assert_eq!(e(&h, None, "", ram), LinuxBootError::NotBzImage);
    let mut h = good.clone();
    h[0x1fe] = 0;
    assert_eq!(e(&h, None, "", ram), LinuxBootError::BadBootFlag(0xaa00));
    let h = bzimage_head(0x0205, 0, 0x37ff_ffff);
    let err = e(&h, None, "", ram);
    assert_eq!(
        err,
        LinuxBootError::ProtocolTooOld {
            version: 0x205,
            need: 0x206
        }
    );
    assert!(alloc::format!("{err}").contains("2.05 is too old (need 2.06"));
    let mut h = good.clone();
    h[0x211] = 0;
    assert_eq!(e(&h, None, "", ram), LinuxBootError::NotLoadedHigh);
    let mut h = good.clone();
    h[0x1f1] = 200;
    h.resize(201 * 512, 0);
    assert_eq!(
        e(&h, None, "", ram),
        LinuxBootError::SetupTooLarge(201 * 512)
    );
    let cfg = LinuxBootConfig {
        image_head: &good,
        kernel: ExternalBlob {
            handle: 1,
            len: 2560,
        },
        initrd: None,
        cmdline: "",
    };
    assert_eq!(
        plan_linux_boot(&cfg, ram).unwrap_err(),
        LinuxBootError::KernelTooShort {
            setup_size: 2560,
            file_len: 2560
        }
    );
    assert_eq!(
        e(&good, None, &"x".repeat(2048), ram),
        LinuxBootError::CmdlineTooLong {
            len: 2048,
            max: 2047
        }
    );
    assert_eq!(e(&good, None, "a\0b", ram), LinuxBootError::CmdlineHasNul);
    assert_eq!(e(&good, None, "vga=0x31z", ram), LinuxBootError::BadVgaMode);
    assert_eq!(e(&good, None, "vga=", ram), LinuxBootError::BadVgaMode);
    let big = ExternalBlob {
        handle: 2,
        len: ram,
    };
    assert!(matches!(
        e(&good, Some(big), "", ram),
        LinuxBootError::InitrdTooLarge { .. }
    ));
    // init_size (8 MiB) from 1 MiB does not fit in 8 MiB of RAM.
    assert!(matches!(
        e(&good, None, "", 8 << 20),
        LinuxBootError::RamTooSmall { .. }
    ));
    // An initrd that would overlap the kernel's init_size.
    let rd = ExternalBlob {
        handle: 2,
        len: 60 << 20,
    };
    assert!(matches!(
        e(&good, Some(rd), "", ram),
        LinuxBootError::RamTooSmall { .. }
    ));
    assert_eq!(linux_setup_size(&good), Ok(2560));
}

/// A Debian kernel from the test suite's cache, when present.
fn cached_vmlinuz() -> Option<std::path::PathBuf> {
    let root = match std::env::var_os("FERRITE_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache/ferrite"),
    };
    let mut found = Vec::new();
    for deb in std::fs::read_dir(root.join("debs")).ok()?.flatten() {
        let Ok(boot) = std::fs::read_dir(deb.path().join("root/boot")) else {
            continue;
        };
        for f in boot.flatten() {
            if f.file_name().to_string_lossy().starts_with("vmlinuz-") {
                found.push(f.path());
            }
        }
    }
    found.sort();
    found.pop()
}

#[test]
fn real_debian_kernel_if_cached() {
    let Some(path) = cached_vmlinuz() else {
        std::eprintln!("note: no cached Debian kernel; skipping");
        return;
    };
    let image = std::fs::read(&path).unwrap();
    let setup = linux_setup_size(&image).unwrap() as usize;
    let head = &image[..setup];
    let mut b = FwCfgBuilder::new();
    b.ram(1 << 30, 0)
        .unwrap()
        .cpus(1)
        .unwrap()
        .acpi(HVM_PLATFORM);
    let cfg = LinuxBootConfig {
        image_head: head,
        kernel: ExternalBlob {
            handle: 0,
            len: image.len() as u64,
        },
        initrd: Some(ExternalBlob {
            handle: 1,
            len: 8 << 20,
        }),
        cmdline: "console=ttyS0 earlyprintk=ttyS0",
    };
    let plan = b.linux(&cfg).unwrap();
    assert!(
        plan.protocol >= 0x020f,
        "{path:?}: protocol {:#x}",
        plan.protocol
    );
    assert_eq!(
        plan.kernel_offset + plan.kernel_size as u64,
        image.len() as u64
    );
    // Debian kernels set CAN_BE_LOADED_ABOVE_4G.
    assert_eq!(plan.initrd_max as u64, (1 << 30) - ACPI_DATA_SIZE - 1);
    let fw = b.build().unwrap();
    let mut ext = Ext {
        blobs: vec![image.clone(), vec![0x5a; 8 << 20]],
        ..Default::default()
    };
    // Read the kernel as linuxboot_dma does (SELECT|READ into its address).
    let mut fw = fw;
    let mut ram = Ram::new(0x110_0000 + plan.kernel_size as usize);
    let c = dma(
        &mut fw,
        &mut ram,
        &mut ext,
        0x7000,
        (u32::from(key::KERNEL_DATA) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        plan.kernel_size,
        0x100000,
    );
    assert_eq!(c, 0);
    assert!(ram.get(0x100000, plan.kernel_size as usize) == &image[setup..]);
    let c = dma(
        &mut fw,
        &mut ram,
        &mut ext,
        0x7000,
        (u32::from(key::SETUP_DATA) << 16) | dma_ctl::SELECT | dma_ctl::READ,
        plan.setup_size,
        0x10000,
    );
    assert_eq!(c, 0);
    let s = ram.get(0x10000, setup);
    assert_eq!(&s[0x202..0x206], b"HdrS");
    assert_eq!(s[0x210], 0xb0);
    assert_eq!(le32(s, 0x228), 0x20000);
    assert_eq!(le32(s, 0x218), plan.initrd_addr);
}

#[test]
fn linuxboot_dma_rom_if_installed() {
    let Ok(rom) = std::fs::read("/usr/share/qemu/linuxboot_dma.bin") else {
        std::eprintln!("note: no linuxboot_dma.bin; skipping");
        return;
    };
    let mut b = FwCfgBuilder::new();
    b.linuxboot_rom(ExternalBlob {
        handle: 0,
        len: rom.len() as u64,
    })
    .unwrap();
    let mut fw = b.build().unwrap();
    let mut ext = Ext {
        blobs: vec![rom.clone()],
        ..Default::default()
    };
    let got = read_file(&mut fw, &mut ext, LINUXBOOT_DMA_ROM);
    assert_eq!(got, rom);
    assert_eq!(&got[0..2], &[0x55, 0xaa]);
    assert_eq!(got[2] as usize * 512, rom.len());
    let order = read_file(&mut fw, &mut ext, "bootorder");
    assert_eq!(order, b"/rom@genroms/linuxboot_dma.bin\0");
}

// --------------------------------------------------- ACPI table loader

/// A tiny interpreter of the table-loader script, as SeaBIOS's
/// romfile_loader: files come from the device, placed at the given bases.
fn run_table_loader(fw: &mut FwCfg, high: u64, fseg: u64) -> (Ram, Vec<(String, u64, usize)>) {
    let script = read_file(fw, &mut NoExternalData, TABLE_LOADER_FILE);
    assert_eq!(script.len() % table_loader::COMMAND_SIZE, 0);
    let mut mem = Ram::new(0x1000_0000);
    let (mut high_next, mut fseg_next) = (high, fseg);
    let mut placed: Vec<(String, u64, usize)> = Vec::new();
    let name_at = |c: &[u8], o: usize| {
        let n = c[o..o + 56].iter().position(|&b| b == 0).unwrap();
        core::str::from_utf8(&c[o..o + n]).unwrap().to_string()
    };
    for c in script.chunks(table_loader::COMMAND_SIZE) {
        match le32(c, 0) {
            table_loader::ALLOCATE => {
                let (file, align, zone) = (name_at(c, 4), le32(c, 60) as u64, c[64]);
                assert!(align.is_power_of_two());
                let data = read_file(fw, &mut NoExternalData, &file);
                let next = if zone == table_loader::ZONE_FSEG {
                    &mut fseg_next
                } else {
                    &mut high_next
                };
                assert!(zone == table_loader::ZONE_FSEG || zone == table_loader::ZONE_HIGH);
                let at = (*next + align - 1) & !(align - 1);
                mem.put(at, &data);
                *next = at + data.len() as u64;
                assert!(placed.iter().all(|p| p.0 != file), "{file} allocated twice");
                placed.push((file, at, data.len()));
            }
            table_loader::ADD_POINTER => {
                let (dest, src, off, size) = (
                    name_at(c, 4),
                    name_at(c, 60),
                    le32(c, 116) as u64,
                    c[120] as usize,
                );
                let d = placed
                    .iter()
                    .find(|p| p.0 == dest)
                    .expect("dest allocated first")
                    .clone();
                let s = placed
                    .iter()
                    .find(|p| p.0 == src)
                    .expect("src allocated first")
                    .clone();
                assert!(matches!(size, 1 | 2 | 4 | 8) && off as usize + size <= d.2);
                let mut v = [0u8; 8];
                v[..size].copy_from_slice(mem.get(d.1 + off, size));
                let p = u64::from_le_bytes(v).wrapping_add(s.1);
                mem.put(d.1 + off, &p.to_le_bytes()[..size]);
            }
            table_loader::ADD_CHECKSUM => {
                let (file, off, start, len) = (
                    name_at(c, 4),
                    le32(c, 60) as u64,
                    le32(c, 64) as u64,
                    le32(c, 68) as usize,
                );
                let f = placed.iter().find(|p| p.0 == file).unwrap().clone();
                assert!(off < f.2 as u64 && start as usize + len <= f.2);
                let sum = mem
                    .get(f.1 + start, len)
                    .iter()
                    .fold(0u8, |a, &b| a.wrapping_add(b));
                let b = mem.get(f.1 + off, 1)[0].wrapping_sub(sum);
                mem.put(f.1 + off, &[b]);
            }
            other => panic!("unexpected command {other}"),
        }
    }
    (mem, placed)
}

fn sum(d: &[u8]) -> u8 {
    d.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn table(mem: &Ram, gpa: u64, sig: &[u8; 4]) -> Vec<u8> {
    let h = mem.get(gpa, 8);
    assert_eq!(&h[..4], sig, "at {gpa:#x}");
    let t = mem.get(gpa, le32(h, 4) as usize).to_vec();
    assert_eq!(sum(&t), 0, "{:?} checksum", core::str::from_utf8(sig));
    t
}

#[test]
fn table_loader_round_trip() {
    let vcpus = 5;
    let mut b = FwCfgBuilder::new();
    b.ram(256 << 20, 0)
        .unwrap()
        .cpus(vcpus)
        .unwrap()
        .acpi(HVM_PLATFORM);
    let mut fw = b.build().unwrap();
    let mut rng = Rng::new(42);
    for _ in 0..8 {
        let high = (0x0100_0000 + rng.below(0x0e00_0000)) & !0xf;
        let fseg = (0xe_0000 + rng.below(0x1_0000 - 64)) & !0xf;
        let (mem, placed) = run_table_loader(&mut fw, high, fseg);
        let rsdp_at = placed.iter().find(|p| p.0 == ACPI_RSDP_FILE).unwrap().1;
        let tables_at = placed.iter().find(|p| p.0 == ACPI_TABLES_FILE).unwrap().1;
        assert!((0xe_0000..0x10_0000).contains(&rsdp_at) && rsdp_at % 16 == 0);
        assert_eq!(tables_at % 64, 0);
        let rsdp = mem.get(rsdp_at, 36).to_vec();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        assert_eq!(rsdp[15], 2);
        let xsdt = table(&mem, le64(&rsdp, 24), b"XSDT");
        let rsdt = table(&mem, le32(&rsdp, 16) as u64, b"RSDT");
        let fadt_at = le64(&xsdt, 36);
        let madt_at = le64(&xsdt, 44);
        assert_eq!(le32(&rsdt, 36) as u64, fadt_at);
        assert_eq!(le32(&rsdt, 40) as u64, madt_at);
        let fadt = table(&mem, fadt_at, b"FACP");
        let p = PlatformLayout { ..HVM_PLATFORM };
        assert_eq!(le32(&fadt, 56), u32::from(p.pm1a_evt));
        assert_eq!(le32(&fadt, 64), u32::from(p.pm1a_cnt));
        assert_eq!(le32(&fadt, 76), u32::from(p.pm_tmr));
        assert_eq!(le64(&fadt, 120), u64::from(p.reset_port));
        assert_eq!(
            le32(&fadt, 112) & ferrite_loader::acpi::FADT_HW_REDUCED_ACPI,
            0
        );
        assert_ne!(
            u16::from_le_bytes([fadt[109], fadt[110]]) & ferrite_loader::acpi::BOOT_ARCH_8042,
            0
        );
        let dsdt_at = le64(&fadt, 140);
        assert_eq!(le32(&fadt, 40) as u64, dsdt_at);
        let dsdt = table(&mem, dsdt_at, b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PWRB"));
        let facs_at = le64(&fadt, 132);
        assert_eq!(le32(&fadt, 36) as u64, facs_at);
        assert_eq!(facs_at % 64, 0);
        assert_eq!(mem.get(facs_at, 4), b"FACS");
        let madt = table(&mem, madt_at, b"APIC");
        assert_eq!(le32(&madt, 40) & 1, 1, "PCAT_COMPAT");
        let (mut o, mut lapics, mut irq0) = (44, 0, false);
        while o < madt.len() {
            match madt[o] {
                0 => lapics += 1,
                2 if madt[o + 3] == 0 => irq0 = le32(&madt, o + 4) == 2,
                _ => {}
            }
            o += madt[o + 1] as usize;
        }
        assert_eq!(lapics, vcpus);
        assert!(irq0);
        // Everything lies inside the tables file.
        let tables_len = placed.iter().find(|p| p.0 == ACPI_TABLES_FILE).unwrap().2 as u64;
        for gpa in [fadt_at, madt_at, dsdt_at, facs_at, le64(&rsdp, 24)] {
            assert!(gpa >= tables_at && gpa < tables_at + tables_len);
        }
    }
}

// ------------------------------------------------------------------ fuzz

/// Random port and DMA traffic with random control structures: no panics,
/// and DMA writes land only in the addressed range or the control word.
#[test]
fn fuzz_ports_and_dma() {
    const RAM: usize = 0x4_0000;
    let blob: Vec<u8> = (0..0x3000u32).map(|i| i as u8).collect();
    let mut ext = Ext {
        blobs: vec![blob],
        ..Default::default()
    };
    let mut b = FwCfgBuilder::new();
    b.ram(64 << 20, 0)
        .unwrap()
        .cpus(2)
        .unwrap()
        .acpi(HVM_PLATFORM)
        .bootorder("x");
    b.file(
        "opt/ext",
        ItemData::External {
            handle: 0,
            offset: 0x10,
            len: 0x2000,
        },
    )
    .unwrap();
    b.file(
        "opt/broken",
        ItemData::External {
            handle: 9,
            offset: 0,
            len: 0x100,
        },
    )
    .unwrap();
    b.file("opt/empty", ItemData::Bytes(vec![])).unwrap();
    let mut fw = b.build().unwrap();
    let nfiles = fw.file_names().count() as u64;
    let mut ram = Ram::new(RAM);
    ram.hole = (0x2_0000, 0x2_1000);
    let mut rng = Rng::new(0xf00d);
    let mut dma_ops = 0;
    for i in 0..50_000u32 {
        if i % 997 == 0 {
            fw.set_dma_budget(1 + rng.below(0x3000));
        }
        let pick_sel = |rng: &mut Rng| -> u16 {
            match rng.below(4) {
                0 => rng.below(0x20) as u16,
                1 => (key::FILE_FIRST as u64 + rng.below(nfiles + 2)) as u16,
                2 => 0x8000 | rng.below(6) as u16,
                _ => rng.next() as u16,
            }
        };
        match rng.below(10) {
            0..=2 => {
                let s = pick_sel(&mut rng);
                let size = [1u8, 2, 4][rng.below(3) as usize];
                fw.io_write(PORT_SELECTOR, size, s.into(), &mut ram, &mut ext);
            }
            3..=4 => {
                let port = 0x50e + rng.below(16) as u16;
                let size = [1u8, 2, 4][rng.below(3) as usize];
                let _ = fw.io_read(port, size, &mut ext);
            }
            5 => {
                let port = 0x50e + rng.below(16) as u16;
                let size = [1u8, 2, 4][rng.below(3) as usize];
                let v = rng.next() as u32;
                let before = ram.writes.len();
                let pending = fw.dma_pending();
                fw.io_write(port, size, v, &mut ram, &mut ext);
                if !pending && port != PORT_DMA_LOW {
                    assert_eq!(ram.writes.len(), before);
                }
                while fw.dma_pending() {
                    fw.continue_dma(&mut ram, &mut ext);
                }
            }
            _ => {
                dma_ops += 1;
                // A random request structure somewhere (sometimes not RAM).
                let ctl = match rng.below(8) {
                    0 => rng.next(),
                    1 => 0x2_0000 - rng.below(16),
                    _ => rng.below(RAM as u64 - 16),
                };
                let mut control = rng.next() as u32 & 0xff;
                if rng.chance(70) {
                    control = (u32::from(pick_sel(&mut rng)) << 16)
                        | dma_ctl::SELECT
                        | [dma_ctl::READ, dma_ctl::SKIP, dma_ctl::WRITE, 0][rng.below(4) as usize];
                }
                let len = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => rng.below(0x100) as u32,
                    _ => rng.below(0x4000) as u32,
                };
                let addr = match rng.below(6) {
                    0 => rng.next(),
                    1 => u64::MAX - rng.below(0x100),
                    2 => 0x2_0000 - rng.below(0x100),
                    _ => rng.below(RAM as u64),
                };
                let mut s = [0u8; 16];
                s[0..4].copy_from_slice(&control.to_be_bytes());
                s[4..8].copy_from_slice(&len.to_be_bytes());
                s[8..16].copy_from_slice(&addr.to_be_bytes());
                let placed = ram.write(ctl, &s).is_ok();
                ram.writes.clear();
                // The request as the device will see it.
                let (dlen, daddr) = if placed {
                    (u64::from(len), addr)
                } else {
                    (0, 0)
                };
                if fw.dma_pending() {
                    // Starting a new request aborts the old one first.
                    fw.io_write(PORT_SELECTOR, 1, 0, &mut ram, &mut ext);
                    ram.writes.clear();
                }
                fw.io_write(
                    PORT_DMA_HIGH,
                    4,
                    ((ctl >> 32) as u32).swap_bytes(),
                    &mut ram,
                    &mut ext,
                );
                fw.io_write(
                    PORT_DMA_LOW,
                    4,
                    (ctl as u32).swap_bytes(),
                    &mut ram,
                    &mut ext,
                );
                let mut rounds = 0;
                while fw.dma_pending() {
                    fw.continue_dma(&mut ram, &mut ext);
                    rounds += 1;
                    assert!(rounds < 100_000);
                }
                for &(w, n) in &ram.writes {
                    let in_ctl = w == ctl && n == 4;
                    let in_data = placed
                        && w >= daddr
                        && w.checked_add(n)
                            .is_some_and(|e| e <= daddr.saturating_add(dlen));
                    assert!(
                        in_ctl || in_data,
                        "write {w:#x}+{n:#x} outside ctl {ctl:#x} / data {daddr:#x}+{dlen:#x}"
                    );
                }
                if placed {
                    // Completed: control is 0 or ERROR.
                    let c = u32::from_be_bytes(ram.get(ctl, 4).try_into().unwrap());
                    assert!(c == 0 || c == dma_ctl::ERROR, "control {c:#x}");
                }
                ram.writes.clear();
            }
        }
    }
    assert!(dma_ops > 10_000);
}
