//! The served guest's RAM as the device models see it
//! ([`GuestMemoryAccess`]): copies through the guest window, every range
//! checked against the guest's RAM layout first. Addresses and lengths come
//! from the guest (PRD tables, fw_cfg DMA descriptors, string I/O) and are
//! untrusted; nothing outside guest RAM is ever touched.

use crate::memory;
use ferrite_abi::{StubConfig, GUEST_WINDOW_MAX};
use ferrite_devmodel::dma::{DmaError, GuestMemoryAccess};

const FOUR_GIB: u64 = 1 << 32;

/// The guest's RAM: `[0, below_4g)` and `[4 GiB, 4 GiB + above_4g)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    below_4g: u64,
    above_4g: u64,
}

impl GuestRam {
    pub fn new(below_4g: u64, above_4g: u64) -> Self {
        // RAM "below 4 GiB" cannot reach past it; the window ends at
        // GUEST_WINDOW_MAX whatever the configuration says.
        let below_4g = below_4g.min(FOUR_GIB).min(GUEST_WINDOW_MAX);
        let above_4g = above_4g.min(GUEST_WINDOW_MAX.saturating_sub(FOUR_GIB));
        GuestRam { below_4g, above_4g }
    }

    pub fn from_config(cfg: &StubConfig) -> Self {
        Self::new(cfg.ram_below_4g, cfg.ram_above_4g)
    }

    /// One past the guest's RAM below 4 GiB.
    pub fn below_4g(&self) -> u64 {
        self.below_4g
    }

    /// Whether `[gpa, gpa+len)` lies entirely in one RAM range. An empty
    /// range is accepted anywhere in (or at the end of) RAM.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        end <= self.below_4g || (gpa >= FOUR_GIB && end <= FOUR_GIB + self.above_4g)
    }

    pub fn check(&self, gpa: u64, len: u64) -> Result<(), DmaError> {
        if self.contains(gpa, len) {
            Ok(())
        } else {
            Err(DmaError::OutOfRange { gpa, len })
        }
    }
}

/// [`GuestMemoryAccess`] over the guest window.
#[derive(Clone, Copy, Debug)]
pub struct GuestWindow {
    pub ram: GuestRam,
}

impl GuestMemoryAccess for GuestWindow {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        memory::window_read(&self.ram, gpa, buf)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        memory::window_write(&self.ram, gpa, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_below_and_above_4g() {
        let ram = GuestRam::new(256 << 20, 1 << 30);
        assert!(ram.contains(0, 4096));
        assert!(ram.contains((256 << 20) - 512, 512));
        assert!(!ram.contains((256 << 20) - 512, 513));
        assert!(!ram.contains(256 << 20, 1));
        assert!(ram.contains(256 << 20, 0));
        assert!(!ram.contains(0xFEE0_0000, 4));
        assert!(ram.contains(FOUR_GIB, 1 << 30));
        assert!(!ram.contains(FOUR_GIB, (1 << 30) + 1));
        assert!(!ram.contains(FOUR_GIB - 4, 8));
        assert!(!ram.contains(u64::MAX - 3, 8));
        assert!(!ram.contains(u64::MAX, 1));
    }

    #[test]
    fn no_ram_above_4g_and_bogus_sizes() {
        let ram = GuestRam::new(128 << 20, 0);
        assert!(!ram.contains(FOUR_GIB, 1));
        assert!(ram.check(FOUR_GIB, 1).is_err());
        // A configuration claiming more than 4 GiB "below 4 GiB" is cut.
        let ram = GuestRam::new(u64::MAX, u64::MAX);
        assert!(ram.contains(FOUR_GIB - 1, 1));
        assert!(!ram.contains(GUEST_WINDOW_MAX - 1, 2));
        assert!(ram.contains(GUEST_WINDOW_MAX - 1, 1));
    }
}
