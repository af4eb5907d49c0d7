//! The VMCB (AMD APM vol. 2, appendix B): a 4 KiB page, control area at
//! 0x000, state save area at 0x400. Accessed by offset through safe slice
//! reads and writes.
//!
//! The constants are the architectural map, kept whole even where Ferrite
//! does not use a field yet.
#![allow(dead_code)]

use crate::virt::Segment;

// Control area.
pub const INTERCEPT_CR: usize = 0x000;
pub const INTERCEPT_DR: usize = 0x004;
pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
pub const INTERCEPT_MISC1: usize = 0x00C;
pub const INTERCEPT_MISC2: usize = 0x010;
pub const IOPM_BASE: usize = 0x040;
pub const MSRPM_BASE: usize = 0x048;
pub const TSC_OFFSET: usize = 0x050;
pub const GUEST_ASID: usize = 0x058;
pub const TLB_CONTROL: usize = 0x05C;
pub const VINTR: usize = 0x060;
pub const INTERRUPT_SHADOW: usize = 0x068;
pub const EXIT_CODE: usize = 0x070;
pub const EXIT_INFO1: usize = 0x078;
pub const EXIT_INFO2: usize = 0x080;
pub const EXIT_INT_INFO: usize = 0x088;
pub const NP_ENABLE: usize = 0x090;
pub const EVENT_INJ: usize = 0x0A8;
pub const N_CR3: usize = 0x0B0;
pub const CLEAN_BITS: usize = 0x0C0;
pub const NEXT_RIP: usize = 0x0C8;
pub const INSN_FETCHED: usize = 0x0D0;
pub const INSN_BYTES: usize = 0x0D1;

// State save area.
pub const ES: usize = 0x400;
pub const CS: usize = 0x410;
pub const SS: usize = 0x420;
pub const DS: usize = 0x430;
pub const FS: usize = 0x440;
pub const GS: usize = 0x450;
pub const GDTR: usize = 0x460;
pub const LDTR: usize = 0x470;
pub const IDTR: usize = 0x480;
pub const TR: usize = 0x490;
pub const CPL: usize = 0x4CB;
pub const EFER: usize = 0x4D0;
pub const CR4: usize = 0x548;
pub const CR3: usize = 0x550;
pub const CR0: usize = 0x558;
pub const CR2: usize = 0x640;
pub const DR7: usize = 0x560;
pub const DR6: usize = 0x568;
pub const RFLAGS: usize = 0x570;
pub const RIP: usize = 0x578;
pub const RSP: usize = 0x5D8;
pub const RAX: usize = 0x5F8;
pub const G_PAT: usize = 0x668;

// Intercept bits in INTERCEPT_MISC1.
/// INTERCEPT_CR: bits 0-15 reads of CR0-15, bits 16-31 writes.
pub const INTERCEPT_CR0_WRITE: u32 = 1 << 16;
pub const INTERCEPT_CR4_WRITE: u32 = 1 << (16 + 4);
pub const INTERCEPT_CR8_WRITE: u32 = 1 << (16 + 8);
pub const INTERCEPT_INTR: u32 = 1 << 0;
/// CR0 writes that change a bit other than TS and MP (MOV to CR0, LMSW).
pub const INTERCEPT_CR0_SEL_WRITE: u32 = 1 << 5;
pub const INTERCEPT_VINTR: u32 = 1 << 4;
pub const INTERCEPT_NMI: u32 = 1 << 1;
pub const INTERCEPT_SMI: u32 = 1 << 2;
pub const INTERCEPT_INIT: u32 = 1 << 3;
pub const INTERCEPT_CPUID: u32 = 1 << 18;
pub const INTERCEPT_IRET: u32 = 1 << 20;
pub const INTERCEPT_INVD: u32 = 1 << 22;
pub const INTERCEPT_HLT: u32 = 1 << 24;
pub const INTERCEPT_INVLPGA: u32 = 1 << 26;
pub const INTERCEPT_IOIO: u32 = 1 << 27;
pub const INTERCEPT_MSR: u32 = 1 << 28;
pub const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
// Intercept bits in INTERCEPT_MISC2.
pub const INTERCEPT_VMRUN: u32 = 1 << 0;
pub const INTERCEPT_VMMCALL: u32 = 1 << 1;
pub const INTERCEPT_VMLOAD: u32 = 1 << 2;
pub const INTERCEPT_VMSAVE: u32 = 1 << 3;
pub const INTERCEPT_STGI: u32 = 1 << 4;
pub const INTERCEPT_CLGI: u32 = 1 << 5;
pub const INTERCEPT_SKINIT: u32 = 1 << 6;
pub const INTERCEPT_XSETBV: u32 = 1 << 13;

// Exit codes.
pub const EXIT_CR_WRITE_BASE: u64 = 0x10;
pub const EXIT_CR_WRITE_LAST: u64 = 0x1F;
pub const EXIT_DR_READ_BASE: u64 = 0x20;
pub const EXIT_DR_WRITE_LAST: u64 = 0x3F;
pub const EXIT_EXCP_BASE: u64 = 0x40;
pub const EXIT_INTR: u64 = 0x60;
pub const EXIT_NMI: u64 = 0x61;
pub const EXIT_SMI: u64 = 0x62;
pub const EXIT_INIT: u64 = 0x63;
pub const EXIT_VINTR: u64 = 0x64;
pub const EXIT_CR0_SEL_WRITE: u64 = 0x65;
pub const EXIT_CPUID: u64 = 0x72;
pub const EXIT_IRET: u64 = 0x74;
pub const EXIT_HLT: u64 = 0x78;
pub const EXIT_IOIO: u64 = 0x7B;
pub const EXIT_MSR: u64 = 0x7C;
pub const EXIT_SHUTDOWN: u64 = 0x7F;
pub const EXIT_VMRUN: u64 = 0x80;
pub const EXIT_VMMCALL: u64 = 0x81;
pub const EXIT_XSETBV: u64 = 0x8D;
pub const EXIT_NPF: u64 = 0x400;
/// VMRUN refused the guest state (-1). QEMU's TCG stores its 32-bit -1
/// zero-extended, 0xFFFF_FFFF, and also uses it where a guest MOV to CR3
/// or CR4 should have raised #GP (`cpu_vmexit(SVM_EXIT_ERR)` in its
/// `helper_write_crN`).
pub const EXIT_INVALID: u64 = u64::MAX;
pub const EXIT_INVALID_QEMU: u64 = 0xFFFF_FFFF;

/// One VMCB page, owned for the life of its vCPU (or CPU, for the host
/// save page).
pub struct Vmcb {
    page: &'static mut [u8; 4096],
    pa: u64,
}

impl Drop for Vmcb {
    fn drop(&mut self) {
        // A vCPU's VMCB goes with it (its domain is destroyed); nothing can
        // run on it any more, since running needs `&mut` the vCPU.
        crate::mm::free_page(self.pa);
    }
}

impl Vmcb {
    /// Owns `page` (at `pa`) from now on: it is freed with the VMCB.
    pub fn new(page: &'static mut [u8; 4096], pa: u64) -> Self {
        Vmcb { page, pa }
    }

    pub fn pa(&self) -> u64 {
        self.pa
    }

    pub fn read_u8(&self, off: usize) -> u8 {
        self.page[off]
    }

    pub fn write_u8(&mut self, off: usize, v: u8) {
        self.page[off] = v;
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.page[off..off + 2].try_into().unwrap())
    }

    pub fn write_u16(&mut self, off: usize, v: u16) {
        self.page[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.page[off..off + 4].try_into().unwrap())
    }

    pub fn write_u32(&mut self, off: usize, v: u32) {
        self.page[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn read_u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.page[off..off + 8].try_into().unwrap())
    }

    pub fn write_u64(&mut self, off: usize, v: u64) {
        self.page[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set_segment(&mut self, off: usize, seg: Segment) {
        self.write_u16(off, seg.selector);
        self.write_u16(off + 2, seg.attrib);
        self.write_u32(off + 4, seg.limit);
        self.write_u64(off + 8, seg.base);
    }

    pub fn segment(&self, off: usize) -> Segment {
        Segment {
            selector: self.read_u16(off),
            attrib: self.read_u16(off + 2),
            limit: self.read_u32(off + 4),
            base: self.read_u64(off + 8),
        }
    }
}
