//! The PVH start-of-day structure (`xen/include/public/arch-x86/hvm/
//! start_info.h`), version 1 (with the memory map). Passed in `%ebx`.

use crate::bytes::{put_u32, put_u64};
use crate::e820::E820Entry;
use alloc::vec::Vec;

/// `XEN_HVM_START_MAGIC_VALUE` ("xEn3" with the 0x80 bit of 'E' set).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 adds `memmap_paddr`/`memmap_entries`.
pub const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info` (version 1).
pub const START_INFO_SIZE: usize = 56;
/// Size of one `hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// `SIF_xxx` flags (shared with the PV start_info).
pub const SIF_PRIVILEGED: u32 = 1 << 0;
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// `hvm_start_info`. Addresses of 0 mean "not present".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

impl StartInfo {
    /// The structure as the guest reads it.
    pub fn to_bytes(&self) -> [u8; START_INFO_SIZE] {
        let mut b = [0u8; START_INFO_SIZE];
        put_u32(&mut b, 0, XEN_HVM_START_MAGIC_VALUE);
        put_u32(&mut b, 4, START_INFO_VERSION);
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.nr_modules);
        put_u64(&mut b, 16, self.modlist_paddr);
        put_u64(&mut b, 24, self.cmdline_paddr);
        put_u64(&mut b, 32, self.rsdp_paddr);
        put_u64(&mut b, 40, self.memmap_paddr);
        put_u32(&mut b, 48, self.memmap_entries);
        // 52..56 reserved, zero.
        b
    }
}

/// One boot module (for Linux: the initrd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
    /// 0: no command line.
    pub cmdline_paddr: u64,
}

/// The `hvm_modlist_entry` array.
pub fn modlist_bytes(mods: &[Module]) -> Vec<u8> {
    let mut v = alloc::vec![0u8; mods.len() * MODLIST_ENTRY_SIZE];
    for (i, m) in mods.iter().enumerate() {
        let o = i * MODLIST_ENTRY_SIZE;
        put_u64(&mut v, o, m.paddr);
        put_u64(&mut v, o + 8, m.size);
        put_u64(&mut v, o + 16, m.cmdline_paddr);
    }
    v
}

/// The `hvm_memmap_table_entry` array (types are the e820 numbers).
pub fn memmap_bytes(e820: &[E820Entry]) -> Vec<u8> {
    let mut v = alloc::vec![0u8; e820.len() * MEMMAP_ENTRY_SIZE];
    for (i, e) in e820.iter().enumerate() {
        let o = i * MEMMAP_ENTRY_SIZE;
        put_u64(&mut v, o, e.addr);
        put_u64(&mut v, o + 8, e.size);
        put_u32(&mut v, o + 16, e.kind as u32);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::E820Type;

    #[test]
    fn layout_matches_header() {
        let si = StartInfo {
            flags: SIF_PRIVILEGED | SIF_INITDOMAIN,
            nr_modules: 1,
            modlist_paddr: 0x1040,
            cmdline_paddr: 0x2000,
            rsdp_paddr: 0xf0000,
            memmap_paddr: 0x1100,
            memmap_entries: 5,
        };
        let b = si.to_bytes();
        assert_eq!(&b[0..4], &0x336e_c578u32.to_le_bytes());
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0x1040);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0x2000);
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 0xf0000);
        assert_eq!(u64::from_le_bytes(b[40..48].try_into().unwrap()), 0x1100);
        assert_eq!(u32::from_le_bytes(b[48..52].try_into().unwrap()), 5);
        assert_eq!(&b[52..56], &[0; 4]);
    }

    #[test]
    fn arrays() {
        let m = modlist_bytes(&[Module {
            paddr: 0x7000_0000,
            size: 0x1234,
            cmdline_paddr: 0,
        }]);
        assert_eq!(m.len(), 32);
        assert_eq!(u64::from_le_bytes(m[8..16].try_into().unwrap()), 0x1234);
        let mm = memmap_bytes(&[
            E820Entry {
                addr: 0,
                size: 0xa0000,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: 0xf0000,
                size: 0x10000,
                kind: E820Type::Reserved,
            },
        ]);
        assert_eq!(mm.len(), 48);
        assert_eq!(u64::from_le_bytes(mm[24..32].try_into().unwrap()), 0xf0000);
        assert_eq!(u32::from_le_bytes(mm[40..44].try_into().unwrap()), 2);
        assert_eq!(&mm[44..48], &[0; 4]);
    }
}
