//! Boot-time parsing for the Ferrite hypervisor.
//!
//! * [`bootinfo`]: the three boot protocols Ferrite can be started with
//!   (Multiboot1, Multiboot2 and Xen's PVH `hvm_start_info`), read through
//!   the [`bootinfo::PhysMemory`] trait and turned into one
//!   [`bootinfo::BootInfo`].
//! * [`cmdline`]: the Xen-style hypervisor command line.
//!
//! Everything here is pure logic over untrusted input: malformed data gives
//! an error or a diagnostic, never a panic.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi_sleep;
pub mod bootinfo;
pub mod cmdline;
