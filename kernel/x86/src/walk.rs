//! Guest page-table walks (guest virtual/linear → guest physical) and
//! instruction fetch at CS:RIP.
//!
//! The walker reads the guest's tables through [`GuestPhysRead`] and never
//! writes them: accessed/dirty bits are not set (the hardware already set
//! them when the access that exited walked the same tables). TLBs are not
//! modelled: the walk always reflects the tables as they are in memory.
//! PAE PDPTEs are read from memory at walk time (hardware caches them at
//! the MOV to CR3); a PDPTE with reserved bits set gives a #PF with RSVD
//! here instead of the #GP hardware raises at the CR3 load.
//! 1 GiB pages are always accepted in long mode (every CPU with SVM and
//! nested paging has them).

use crate::decode::CodeMode;

/// Read guest-physical memory. `Err(())` when any byte of the range is not
/// backed by guest RAM (unmapped, or MMIO the caller will not read).
#[allow(clippy::result_unit_err)]
pub trait GuestPhysRead {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()>;
}

impl<T: GuestPhysRead + ?Sized> GuestPhysRead for &T {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        (**self).read_phys(gpa, buf)
    }
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// #PF error code bits.
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_RSVD: u32 = 1 << 3;
pub const PF_FETCH: u32 = 1 << 4;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;
const PAGE_SIZE: u64 = 4096;

/// The control registers that select and drive paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The guest's MAXPHYADDR (CPUID 0x80000008 EAX[7:0]); physical
    /// address bits at and above it are reserved in paging entries.
    /// Values outside 32..=52 are clamped.
    pub max_phys_bits: u8,
}

impl PagingRegs {
    /// Paging off, MAXPHYADDR 48.
    pub const fn flat() -> PagingRegs {
        PagingRegs { cr0: CR0_PE, cr3: 0, cr4: 0, efer: 0, max_phys_bits: 48 }
    }

    /// Long mode is active (EFER.LMA, or EFER.LME with CR0.PG: the VMCB
    /// copy of EFER may come without LMA from a hand-built state).
    pub fn long_mode_active(&self) -> bool {
        self.efer & EFER_LMA != 0 || (self.efer & EFER_LME != 0 && self.cr0 & CR0_PG != 0)
    }

    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.long_mode_active() {
            if self.cr4 & CR4_LA57 != 0 {
                PagingMode::Level5
            } else {
                PagingMode::Level4
            }
        } else if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Legacy32
        }
    }

    fn maxphy(&self) -> u32 {
        (self.max_phys_bits as u32).clamp(32, 52)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical.
    Off,
    /// 32-bit paging, 4 KiB pages and 4 MiB pages with CR4.PSE (PSE-36).
    Legacy32,
    /// PAE: PDPT (4 entries) → PD → PT, 2 MiB large pages.
    Pae,
    /// 4-level long mode: 4 KiB, 2 MiB, 1 GiB pages.
    Level4,
    /// 5-level long mode (CR4.LA57).
    Level5,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Execute,
}

/// What is being accessed and with which privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    /// CPL 3 (user-mode access). Implicit supervisor accesses (descriptor
    /// tables) pass `false`.
    pub user: bool,
    /// Supervisor data accesses to user pages are allowed despite
    /// CR4.SMAP (RFLAGS.AC = 1 on an explicit access). Ignored otherwise.
    pub smap_allowed: bool,
}

impl Access {
    pub const fn new(kind: AccessKind, user: bool) -> Access {
        Access { kind, user, smap_allowed: false }
    }
    pub const fn read(user: bool) -> Access {
        Access::new(AccessKind::Read, user)
    }
    pub const fn write(user: bool) -> Access {
        Access::new(AccessKind::Write, user)
    }
    pub const fn execute(user: bool) -> Access {
        Access::new(AccessKind::Execute, user)
    }
}

/// A page fault to inject into the guest: vector 14 with `error_code`,
/// CR2 = `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    pub error_code: u32,
    pub address: u64,
}

impl PageFault {
    /// The fault was caused by reserved bits set in a paging entry.
    pub fn is_reserved_bit(&self) -> bool {
        self.error_code & PF_RSVD != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The guest takes a #PF (not present, protection, or reserved bits;
    /// see the error code).
    PageFault(PageFault),
    /// A paging structure (or, for fetches, the instruction bytes) lies in
    /// guest-physical memory that `read_phys` refused: not a guest fault
    /// the hypervisor can reflect, the caller decides (usually crash the
    /// domain or emulate an all-ones read).
    PhysReadFailed { gpa: u64 },
    /// A non-canonical linear address in long mode: the guest takes #GP(0)
    /// (or #SS(0) for stack accesses), not #PF.
    NonCanonical { address: u64 },
}

/// Errors of [`fetch_instruction`]: the same as a walk's.
pub type FetchError = WalkError;

fn read_entry<M: GuestPhysRead + ?Sized>(mem: &M, gpa: u64, wide: bool) -> Result<u64, WalkError> {
    if wide {
        let mut b = [0u8; 8];
        mem.read_phys(gpa, &mut b).map_err(|()| WalkError::PhysReadFailed { gpa })?;
        Ok(u64::from_le_bytes(b))
    } else {
        let mut b = [0u8; 4];
        mem.read_phys(gpa, &mut b).map_err(|()| WalkError::PhysReadFailed { gpa })?;
        Ok(u32::from_le_bytes(b) as u64)
    }
}

/// Mask of bits `lo..=hi`.
const fn bits(lo: u32, hi: u32) -> u64 {
    if hi < lo {
        0
    } else {
        (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
    }
}

/// Translate a linear address (segment base already added by the caller)
/// to a guest-physical address, checking permissions for `access`.
///
/// Honors CR0.WP, EFER.NXE (PAE and long mode), CR4.PSE (32-bit paging),
/// CR4.SMEP and CR4.SMAP. Protection keys are not modelled.
pub fn translate<M: GuestPhysRead + ?Sized>(
    mem: &M,
    regs: &PagingRegs,
    linear: u64,
    access: Access,
) -> Result<u64, WalkError> {
    let mode = regs.mode();
    let nxe = regs.efer & EFER_NXE != 0 && matches!(mode, PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5);
    let smep = regs.cr4 & CR4_SMEP != 0;
    let smap = regs.cr4 & CR4_SMAP != 0;

    let mut base_err = 0u32;
    if access.kind == AccessKind::Write {
        base_err |= PF_WRITE;
    }
    if access.user {
        base_err |= PF_USER;
    }
    if access.kind == AccessKind::Execute && (nxe || smep) {
        base_err |= PF_FETCH;
    }

    let maxphy = regs.maxphy();
    let addr_mask = bits(12, maxphy - 1);
    let address = match mode {
        PagingMode::Level4 | PagingMode::Level5 => linear,
        _ => linear & 0xffff_ffff,
    };
    let fault = |code: u32| WalkError::PageFault(PageFault { error_code: code, address });

    // (table base, shifts of each level's index, entry width)
    let (gpa, rw, us, xd) = match mode {
        PagingMode::Off => return Ok(address),
        PagingMode::Legacy32 => {
            let pde_addr = (regs.cr3 & 0xffff_f000) + ((address >> 22) & 0x3ff) * 4;
            let pde = read_entry(mem, pde_addr, false)?;
            if pde & PTE_P == 0 {
                return Err(fault(base_err));
            }
            if pde & PTE_PS != 0 && regs.cr4 & CR4_PSE != 0 {
                // PSE-36: PDE bits 20:13 hold physical address bits 39:32.
                let high_bits = maxphy.min(40) - 32;
                let rsvd = bits(13 + high_bits, 21);
                if pde & rsvd != 0 {
                    return Err(fault(base_err | PF_PRESENT | PF_RSVD));
                }
                let pa = (pde & 0xffc0_0000) | (((pde >> 13) & bits(0, 7)) << 32);
                (pa | (address & 0x3f_ffff), pde & PTE_RW != 0, pde & PTE_US != 0, false)
            } else {
                let pte_addr = (pde & 0xffff_f000) + ((address >> 12) & 0x3ff) * 4;
                let pte = read_entry(mem, pte_addr, false)?;
                if pte & PTE_P == 0 {
                    return Err(fault(base_err));
                }
                (
                    (pte & 0xffff_f000) | (address & 0xfff),
                    pde & pte & PTE_RW != 0,
                    pde & pte & PTE_US != 0,
                    false,
                )
            }
        }
        PagingMode::Pae => {
            let pdpte_addr = (regs.cr3 & 0xffff_ffe0) + ((address >> 30) & 3) * 8;
            let pdpte = read_entry(mem, pdpte_addr, true)?;
            if pdpte & PTE_P == 0 {
                return Err(fault(base_err));
            }
            // PDPTE: bits 2:1, 8:5 and 63:MAXPHYADDR are reserved, except
            // that bit 5 is let through: QEMU's TCG sets it (as the
            // accessed bit of other levels) in the guest's PDPTEs and does
            // not check 8:5 itself, and a walk here must not fail where
            // the CPU that ran the guest succeeded.
            let rsvd = bits(1, 2) | bits(6, 8) | bits(maxphy, 63);
            if pdpte & rsvd != 0 {
                return Err(fault(base_err | PF_PRESENT | PF_RSVD));
            }
            let entry_rsvd = bits(maxphy, 62) | if nxe { 0 } else { PTE_XD };
            walk_levels(mem, pdpte & addr_mask, address, &[21, 12], entry_rsvd, addr_mask, base_err)?
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let top_shift = if mode == PagingMode::Level5 { 56 } else { 47 };
            let sign = address >> top_shift;
            if sign != 0 && sign != (u64::MAX >> top_shift) {
                return Err(WalkError::NonCanonical { address });
            }
            let entry_rsvd = bits(maxphy, 51) | if nxe { 0 } else { PTE_XD };
            let shifts: &[u32] = if mode == PagingMode::Level5 { &[48, 39, 30, 21, 12] } else { &[39, 30, 21, 12] };
            walk_levels(mem, regs.cr3 & addr_mask, address, shifts, entry_rsvd, addr_mask, base_err)?
        }
    };

    // Permission checks on the combined rights of every level.
    let cr0_wp = regs.cr0 & CR0_WP != 0;
    let denied = match access.kind {
        AccessKind::Write => {
            if access.user {
                !us || !rw
            } else {
                (!rw && cr0_wp) || (us && smap && !access.smap_allowed)
            }
        }
        AccessKind::Read => {
            if access.user {
                !us
            } else {
                us && smap && !access.smap_allowed
            }
        }
        AccessKind::Execute => {
            (nxe && xd) || if access.user { !us } else { us && smep }
        }
    };
    if denied {
        return Err(fault(base_err | PF_PRESENT));
    }
    Ok(gpa)
}

/// Walk 64-bit-entry levels below `table` (PAE below the PDPT, or long
/// mode from the top). Returns (gpa, writable, user, execute-disable).
#[allow(clippy::too_many_arguments)]
fn walk_levels<M: GuestPhysRead + ?Sized>(
    mem: &M,
    mut table: u64,
    address: u64,
    shifts: &[u32],
    entry_rsvd: u64,
    addr_mask: u64,
    base_err: u32,
) -> Result<(u64, bool, bool, bool), WalkError> {
    let fault = |code: u32| WalkError::PageFault(PageFault { error_code: code, address });
    let (mut rw, mut us, mut xd) = (true, true, false);
    for (i, &shift) in shifts.iter().enumerate() {
        let entry_addr = table + ((address >> shift) & 0x1ff) * 8;
        let e = read_entry(mem, entry_addr, true)?;
        if e & PTE_P == 0 {
            return Err(fault(base_err));
        }
        let last = i + 1 == shifts.len();
        let mut rsvd = entry_rsvd;
        let large = !last && e & PTE_PS != 0;
        if large {
            match shift {
                21 => rsvd |= bits(13, 20),
                30 => rsvd |= bits(13, 29),
                // PS is reserved in PML4Es and PML5Es.
                _ => rsvd |= PTE_PS,
            }
        }
        if e & rsvd != 0 {
            return Err(fault(base_err | PF_PRESENT | PF_RSVD));
        }
        rw &= e & PTE_RW != 0;
        us &= e & PTE_US != 0;
        xd |= e & PTE_XD != 0;
        if large || last {
            let page_mask = (1u64 << shift) - 1;
            let pa = (e & addr_mask & !page_mask) | (address & page_mask);
            return Ok((pa, rw, us, xd));
        }
        table = e & addr_mask;
    }
    unreachable!("the last level always returns")
}

/// What the guest is running: paging registers plus the code segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMode {
    pub paging: PagingRegs,
    /// CS base (ignored in 64-bit mode).
    pub cs_base: u64,
    /// CS.L (64-bit code segment; only meaningful with long mode active).
    pub cs_l: bool,
    /// CS.D/B (32-bit default operand/address size).
    pub cs_db: bool,
    /// Current privilege level (3 for virtual-8086 mode).
    pub cpl: u8,
}

impl CpuMode {
    /// The decoding mode: 64-bit with long mode and CS.L, 16-bit in real
    /// mode (CR0.PE = 0) or with CS.D = 0, else 32-bit. Virtual-8086 mode
    /// callers should clear `cs_db`.
    pub fn code_mode(&self) -> CodeMode {
        if self.paging.long_mode_active() && self.cs_l {
            CodeMode::Bits64
        } else if self.paging.cr0 & CR0_PE == 0 || !self.cs_db {
            CodeMode::Bits16
        } else {
            CodeMode::Bits32
        }
    }

    /// Linear address of CS:RIP.
    pub fn code_linear(&self, rip: u64) -> u64 {
        match self.code_mode() {
            CodeMode::Bits64 => rip,
            CodeMode::Bits32 => self.cs_base.wrapping_add(rip & 0xffff_ffff) & 0xffff_ffff,
            CodeMode::Bits16 => self.cs_base.wrapping_add(rip & 0xffff) & 0xffff_ffff,
        }
    }
}

/// The result of [`fetch_instruction_ex`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: [u8; 15],
    /// How many of `bytes` are valid (1..=15).
    pub len: usize,
    /// Why fewer than 15 bytes were read, when the instruction crosses into
    /// a page that does not translate or is not readable. If the decoder
    /// then reports [`crate::DecodeError::Truncated`], this is the fault to
    /// inject (a #PF on the second page).
    pub tail_error: Option<WalkError>,
}

/// Read up to 15 instruction bytes at CS:RIP through the guest's page
/// tables (instruction-fetch permission checks, CPL 3 = user). The first
/// byte's page must translate and be readable, else its error is returned;
/// at a second page that fails the read stops cleanly and the count so far
/// is returned.
pub fn fetch_instruction<M: GuestPhysRead + ?Sized>(
    mem: &M,
    cpu: &CpuMode,
    rip: u64,
) -> Result<([u8; 15], usize), FetchError> {
    fetch_instruction_ex(mem, cpu, rip).map(|f| (f.bytes, f.len))
}

/// [`fetch_instruction`], also reporting why a fetch stopped short.
pub fn fetch_instruction_ex<M: GuestPhysRead + ?Sized>(
    mem: &M,
    cpu: &CpuMode,
    rip: u64,
) -> Result<Fetched, FetchError> {
    let access = Access::execute(cpu.cpl == 3);
    let linear = cpu.code_linear(rip);
    let mut bytes = [0u8; 15];
    let first = (PAGE_SIZE - (linear & (PAGE_SIZE - 1))).min(15) as usize;
    let gpa = translate(mem, &cpu.paging, linear, access)?;
    mem.read_phys(gpa, &mut bytes[..first]).map_err(|()| WalkError::PhysReadFailed { gpa })?;
    if first == 15 {
        return Ok(Fetched { bytes, len: 15, tail_error: None });
    }
    let mut next = linear.wrapping_add(first as u64);
    if cpu.code_mode() != CodeMode::Bits64 {
        next &= 0xffff_ffff;
    }
    let tail_error = match translate(mem, &cpu.paging, next, access) {
        Ok(gpa2) => match mem.read_phys(gpa2, &mut bytes[first..]) {
            Ok(()) => return Ok(Fetched { bytes, len: 15, tail_error: None }),
            Err(()) => WalkError::PhysReadFailed { gpa: gpa2 },
        },
        Err(e) => e,
    };
    bytes[first..].fill(0);
    Ok(Fetched { bytes, len: first, tail_error: Some(tail_error) })
}

#[cfg(test)]
mod tests;
