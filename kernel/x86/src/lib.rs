//! x86 helpers for emulating guest instructions without hardware decode
//! assists (QEMU's TCG SVM has neither NRIPS nor decode assists).
//!
//! * [`walk`]: guest-virtual → guest-physical translation through the
//!   guest's own page tables (all paging modes), with the exact #PF error
//!   code on failure, and [`walk::fetch_instruction`] to read the bytes at
//!   CS:RIP.
//! * [`decode`]: decoding of the instruction forms that touch MMIO into an
//!   [`decode::MmioOp`], effective-address computation, a general
//!   [`decode::instruction_length`], and [`decode::MmioOp::execute`] which
//!   performs the access against a device and writes registers/flags back.
//! * [`cpuid`]: the CPUID a guest sees (an allow-list over the host's).
//! * [`cr`]: the rules a guest's control-register and EFER writes must
//!   pass, against the CPUID it sees.
//! * [`vmrun`]: VMRUN's consistency checks on a VMCB, to name the one that
//!   failed when the CPU refuses the guest state.
//! * [`task`]: hardware task switches through a 32-bit TSS (CALL, JMP,
//!   IRET, task gates), for a CPU that exits instead of switching (VMX).
//! * [`vmentry`]: VM entry's guest-state checks on a VMCS, the same for
//!   VMX, with the texts of VM-instruction errors and entry-failure exits.
//! * [`StateCheck`]: either of those, as the crash report names it.
//! * [`regs`]: the general-purpose register file with x86 partial-register
//!   rules.
//!
//! Pure logic, no `unsafe`, host-tested.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cpuid;
pub mod cr;
pub mod decode;
pub mod mmio_replay;
pub mod regs;
pub mod task;
pub mod state_check;
pub mod vmentry;
pub mod vmrun;
pub mod walk;
#[cfg(test)]
mod test_ram;

pub use decode::{
    decode_cr_write, decode_mmio, instruction_length, segment_override, AluOp, BitOp, CodeMode, DecodeError, Extend, MemOperand,
    CrWrite, CrWriteOp, MmioBus, MmioKind, MmioOp, Operand, Rep, Seg, StringOp, UnaryOp,
};
pub use regs::{Reg, Regs};
pub use state_check::StateCheck;
pub use walk::{
    fetch_instruction, fetch_instruction_ex, translate, Access, AccessKind, CpuMode, Fetched,
    FetchError, GuestPhysRead, PageFault, PagingMode, PagingRegs, WalkError,
};
