//! Four-level x86_64 page tables, used both for the hypervisor's own address
//! space and as nested page tables for guests: NPT (same format; nested
//! tables need the U/S bit at every level) or EPT (the same walk and
//! non-leaf entries, leaves with EPT permissions and memory type).

use super::{alloc_zeroed_page, free_page};
use core::sync::atomic::{AtomicBool, Ordering};

/// The format of the nested page tables guests' memory is mapped with.
/// Non-leaf entries are the same bits in both (7: present/writable/user,
/// or read/write/execute); leaves differ in the memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFormat {
    /// AMD NPT: ordinary x86_64 page-table entries.
    Npt,
    /// Intel EPT: read (bit 0), write (1), execute (2), memory type in
    /// bits 5:3 (write-back here); bit 63 is not NX but "suppress #VE".
    Ept,
}

static NESTED_EPT: AtomicBool = AtomicBool::new(false);

/// Chosen by the virtualization backend at boot, before any guest memory
/// exists.
pub fn set_nested_format(format: NestedFormat) {
    NESTED_EPT.store(format == NestedFormat::Ept, Ordering::SeqCst);
}

/// An EPT leaf for NPT-style `flags`: readable (present), writable as
/// WRITABLE says, executable unless NO_EXECUTE, write-back.
fn ept_leaf(flags: u64) -> u64 {
    const EPT_WRITE_BACK: u64 = 6 << 3;
    let exec = if flags & NO_EXECUTE == 0 { 4 } else { 0 };
    PRESENT | (flags & WRITABLE) | exec | EPT_WRITE_BACK
}

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const WRITE_THROUGH: u64 = 1 << 3;
pub const CACHE_DISABLE: u64 = 1 << 4;
pub const HUGE: u64 = 1 << 7;
pub const NO_EXECUTE: u64 = 1 << 63;

const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Non-leaf entries grant everything; leaves decide.
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;

pub const SIZE_4K: u64 = 0x1000;
pub const SIZE_2M: u64 = 0x20_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    Misaligned,
    /// Something is already mapped there with a different granularity.
    Conflict,
}

/// The entries of the table in the identity-mapped frame `pa`.
fn table(pa: u64) -> &'static mut [u64; 512] {
    // SAFETY: `pa` is always a frame this module allocated for a table (or
    // the root), zero-initialised, identity mapped and owned by exactly one
    // `PageTables`, which never hands out two overlapping references at
    // once (each walk holds one reference at a time).
    unsafe { &mut *(pa as *mut [u64; 512]) }
}

pub struct PageTables {
    root: u64,
    /// Leaves are EPT entries (`ept_leaf`).
    ept: bool,
}

impl PageTables {
    /// The hypervisor's own tables.
    pub fn new() -> Result<Self, MapError> {
        Ok(PageTables { root: alloc_zeroed_page().ok_or(MapError::OutOfMemory)?, ept: false })
    }

    /// Nested tables for a guest, in the format the backend chose.
    pub fn new_nested() -> Result<Self, MapError> {
        Ok(PageTables { root: alloc_zeroed_page().ok_or(MapError::OutOfMemory)?, ept: NESTED_EPT.load(Ordering::SeqCst) })
    }

    fn leaf(&self, pa: u64, flags: u64) -> u64 {
        if self.ept {
            pa | ept_leaf(flags)
        } else {
            pa | flags | PRESENT
        }
    }

    /// The physical address to load into CR3 / the nested CR3.
    pub fn root(&self) -> u64 {
        self.root
    }

    fn index(va: u64, level: u32) -> usize {
        ((va >> (12 + 9 * level)) & 0x1FF) as usize
    }

    /// Returns the table at `stop_level` (0 = PT, 1 = PD) covering `va`,
    /// creating intermediate tables as needed.
    fn table_for(&mut self, va: u64, stop_level: u32) -> Result<u64, MapError> {
        let mut pa = self.root;
        for level in (stop_level + 1..=3).rev() {
            let entries = table(pa);
            let e = &mut entries[Self::index(va, level)];
            if *e & PRESENT == 0 {
                let new = alloc_zeroed_page().ok_or(MapError::OutOfMemory)?;
                *e = new | TABLE_FLAGS;
            } else if *e & HUGE != 0 {
                return Err(MapError::Conflict);
            }
            pa = *e & ADDR_MASK;
        }
        Ok(pa)
    }

    pub fn map_4k(&mut self, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
        if va % SIZE_4K != 0 || pa % SIZE_4K != 0 {
            return Err(MapError::Misaligned);
        }
        let pt = self.table_for(va, 0)?;
        table(pt)[Self::index(va, 0)] = self.leaf(pa, flags);
        Ok(())
    }

    pub fn map_2m(&mut self, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
        if va % SIZE_2M != 0 || pa % SIZE_2M != 0 {
            return Err(MapError::Misaligned);
        }
        let pd = self.table_for(va, 1)?;
        let e = &mut table(pd)[Self::index(va, 1)];
        if *e & PRESENT != 0 && *e & HUGE == 0 {
            return Err(MapError::Conflict);
        }
        *e = self.leaf(pa, flags) | HUGE;
        Ok(())
    }

    /// Maps `[va, va+len)` to `[pa, pa+len)` with the largest pages alignment allows.
    pub fn map_range(&mut self, va: u64, pa: u64, len: u64, flags: u64) -> Result<(), MapError> {
        let mut off = 0;
        while off < len {
            let (v, p) = (va + off, pa + off);
            if v % SIZE_2M == 0 && p % SIZE_2M == 0 && len - off >= SIZE_2M {
                self.map_2m(v, p, flags)?;
                off += SIZE_2M;
            } else {
                self.map_4k(v, p, flags)?;
                off += SIZE_4K;
            }
        }
        Ok(())
    }

    fn free_level(pa: u64, level: u32) {
        if level > 0 {
            for &e in table(pa).iter() {
                if e & PRESENT != 0 && e & HUGE == 0 {
                    Self::free_level(e & ADDR_MASK, level - 1);
                }
            }
        }
        free_page(pa);
    }
}

impl Drop for PageTables {
    /// Frees the table frames (not the memory they map).
    fn drop(&mut self) {
        Self::free_level(self.root, 3);
    }
}
