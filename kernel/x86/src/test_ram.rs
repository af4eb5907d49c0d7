//! Guest RAM for the host tests of the page walk and the task switch: a
//! byte vector from guest-physical 0, everything above it unbacked.

use crate::task::GuestPhys;
use crate::walk::GuestPhysRead;
use alloc::vec::Vec;

pub(crate) struct TestRam(pub Vec<u8>);

impl TestRam {
    pub(crate) fn w16(&mut self, a: u64, v: u16) {
        self.0[a as usize..a as usize + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn w32(&mut self, a: u64, v: u32) {
        self.0[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn w64(&mut self, a: u64, v: u64) {
        self.0[a as usize..a as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
}

impl GuestPhysRead for TestRam {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let end = gpa.checked_add(buf.len() as u64).ok_or(())?;
        if end > self.0.len() as u64 {
            return Err(());
        }
        buf.copy_from_slice(&self.0[gpa as usize..end as usize]);
        Ok(())
    }
}

impl GuestPhys for TestRam {
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        let end = gpa.checked_add(data.len() as u64).ok_or(())?;
        if end > self.0.len() as u64 {
            return Err(());
        }
        self.0[gpa as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
}
