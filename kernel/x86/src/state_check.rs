//! Why the CPU refused to enter a guest, for the domain's crash report,
//! whichever backend asked: the VMRUN consistency check (`vmrun`) or VM
//! entry guest-state check (`vmentry`) the state fails, or the CPU's own
//! verdict when no check Ferrite redoes names it.

use crate::vmentry::{vm_instruction_error, EntryFailure, VmentryCheck};
use crate::vmrun::VmrunCheck;
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateCheck {
    /// SVM: a VMRUN consistency check (VMEXIT_INVALID).
    Vmrun(VmrunCheck),
    /// VMX: a guest-state check (VM-entry failure, exit reason 33).
    Vmentry(VmentryCheck),
    /// VMX: VMLAUNCH/VMRESUME failed with this VM-instruction error.
    VmInstructionError(u32),
    /// VMX: a VM-entry failure exit that no guest-state check explains.
    EntryFailure(EntryFailure),
}

impl fmt::Display for StateCheck {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StateCheck::Vmrun(c) => write!(f, "{c}"),
            StateCheck::Vmentry(c) => write!(f, "{c}"),
            StateCheck::VmInstructionError(n) => {
                write!(f, "VM-instruction error {n} ({})", vm_instruction_error(*n).unwrap_or("not in the SDM's table"))
            }
            StateCheck::EntryFailure(e) => write!(f, "{e}"),
        }
    }
}
