//! A page of host memory shared with a guest (a stub domain's I/O-request
//! page). The guest writes it concurrently at any time, so every access
//! here is an atomic or a volatile copy, and nothing read from it is
//! trusted beyond its bytes.

use super::{alloc_zeroed_page, free_page};
use core::sync::atomic::{AtomicU32, Ordering};

pub struct SharedPage {
    hpa: u64,
}

const PAGE: usize = 4096;

impl SharedPage {
    pub fn new() -> Option<Self> {
        Some(SharedPage { hpa: alloc_zeroed_page()? })
    }

    pub fn hpa(&self) -> u64 {
        self.hpa
    }

    fn atomic(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= PAGE, "shared page offset {offset:#x}");
        // SAFETY: the page is owned by `self` for its lifetime, identity
        // mapped, and the offset is aligned and inside it; AtomicU32 has
        // the layout of u32, and every access to the word is atomic.
        unsafe { &*((self.hpa as usize + offset) as *const AtomicU32) }
    }

    pub fn load_u32(&self, offset: usize) -> u32 {
        self.atomic(offset).load(Ordering::Acquire)
    }

    pub fn store_u32(&self, offset: usize, value: u32) {
        self.atomic(offset).store(value, Ordering::Release)
    }

    pub fn compare_exchange_u32(&self, offset: usize, current: u32, new: u32) -> bool {
        self.atomic(offset).compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE, "shared page read {offset:#x}+{}", buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the owned, identity-mapped page (checked
            // above); volatile because the guest may write concurrently.
            *b = unsafe { core::ptr::read_volatile((self.hpa as usize + offset + i) as *const u8) };
        }
    }

    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE, "shared page write {offset:#x}+{}", data.len());
        let mut i = 0;
        // Whole aligned u64s where possible (a request is a few of them).
        while i < data.len() {
            let at = self.hpa as usize + offset + i;
            if at % 8 == 0 && data.len() - i >= 8 {
                let word = u64::from_le_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
                // SAFETY: inside the owned, identity-mapped page (checked
                // above), 8-byte aligned; volatile as the guest may look.
                unsafe { core::ptr::write_volatile(at as *mut u64, word) };
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                unsafe { core::ptr::write_volatile(at as *mut u8, data[i]) };
                i += 1;
            }
        }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        free_page(self.hpa);
    }
}
