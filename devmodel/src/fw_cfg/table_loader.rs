//! QEMU's BIOS linker/loader script (`etc/table-loader`,
//! `hw/acpi/bios-linker-loader.c`): 128-byte little-endian commands the
//! firmware (SeaBIOS `romfile_loader.c`, OVMF) executes to place fw_cfg
//! files in guest memory and patch pointers and checksums between them.
//!
//! | command | fields after the u32 command |
//! | --- | --- |
//! | `ALLOCATE` (1) | `file[56]`, `u32 align`, `u8 zone` (1 high, 2 F segment) |
//! | `ADD_POINTER` (2) | `dest_file[56]`, `src_file[56]`, `u32 offset`, `u8 size` |
//! | `ADD_CHECKSUM` (3) | `file[56]`, `u32 offset`, `u32 start`, `u32 length` |
//!
//! `ADD_POINTER` adds the address where `src_file` was allocated to the
//! `size`-byte integer at `offset` of `dest_file`; `ADD_CHECKSUM` subtracts
//! the byte sum of the range from the byte at `offset`.

use super::FILE_NAME_SIZE;
use alloc::vec::Vec;
use ferrite_loader::acpi_blob::{BlobFile, RelocatableAcpi};

pub const COMMAND_SIZE: usize = 128;
pub const ALLOCATE: u32 = 1;
pub const ADD_POINTER: u32 = 2;
pub const ADD_CHECKSUM: u32 = 3;
pub const WRITE_POINTER: u32 = 4;
pub const ZONE_HIGH: u8 = 1;
pub const ZONE_FSEG: u8 = 2;

/// fw_cfg file names QEMU uses for its ACPI tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";

/// A script under construction. File names must be shorter than 56 bytes
/// (the caller's file names are checked by the builder).
#[derive(Clone, Debug, Default)]
pub struct TableLoader {
    bytes: Vec<u8>,
}

fn put_name(cmd: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(FILE_NAME_SIZE - 1);
    cmd[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

impl TableLoader {
    pub fn new() -> Self {
        Self::default()
    }

    fn command(&mut self, c: u32) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + COMMAND_SIZE, 0);
        let cmd = &mut self.bytes[start..];
        cmd[0..4].copy_from_slice(&c.to_le_bytes());
        cmd
    }

    pub fn allocate(&mut self, file: &str, align: u32, zone: u8) -> &mut Self {
        let c = self.command(ALLOCATE);
        put_name(c, 4, file);
        c[60..64].copy_from_slice(&align.to_le_bytes());
        c[64] = zone;
        self
    }

    pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) -> &mut Self {
        let c = self.command(ADD_POINTER);
        put_name(c, 4, dest);
        put_name(c, 60, src);
        c[116..120].copy_from_slice(&offset.to_le_bytes());
        c[120] = size;
        self
    }

    pub fn add_checksum(&mut self, file: &str, offset: u32, start: u32, len: u32) -> &mut Self {
        let c = self.command(ADD_CHECKSUM);
        put_name(c, 4, file);
        c[60..64].copy_from_slice(&offset.to_le_bytes());
        c[64..68].copy_from_slice(&start.to_le_bytes());
        c[68..72].copy_from_slice(&len.to_le_bytes());
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The script for relocatable ACPI tables stored as [`ACPI_TABLES_FILE`]
/// and [`ACPI_RSDP_FILE`]: allocate both (tables in high memory, RSDP in
/// the F segment where OSes scan for it), then every pointer, then every
/// checksum.
pub fn acpi_script(acpi: &RelocatableAcpi) -> TableLoader {
    let name = |f: BlobFile| match f {
        BlobFile::Tables => ACPI_TABLES_FILE,
        BlobFile::Rsdp => ACPI_RSDP_FILE,
    };
    let mut l = TableLoader::new();
    l.allocate(ACPI_TABLES_FILE, acpi.tables_align, ZONE_HIGH);
    l.allocate(ACPI_RSDP_FILE, acpi.rsdp_align, ZONE_FSEG);
    for p in &acpi.pointers {
        l.add_pointer(name(p.file), name(p.target), p.offset, p.size);
    }
    for c in &acpi.checksums {
        l.add_checksum(name(c.file), c.offset, c.start, c.len);
    }
    l
}
