//! Parser for xl-style domain configuration files (Xen's `xl.cfg` format).
//!
//! Two layers:
//!
//! * [`syntax`]: bytes → [`Entry`] list (`key = value`, values are quoted
//!   strings, integers or lists; `#` comments; `;` separators; `+=`).
//! * the semantic layer: entries → a checked [`DomainConfig`] with
//!   [`Diagnostic`]s that carry the file name, line and key and display as
//!   `guest1.cfg:7: memory: expected a number of MiB, found 'lots'`.
//!
//! Entry point: [`parse`]. Used by the hypervisor (files arrive as boot
//! modules) and by the host `ferrite` CLI. Input is untrusted: any byte
//! string gives a result or diagnostics, never a panic; sizes are bounded
//! ([`syntax::MAX_FILE_SIZE`], [`syntax::MAX_STRING_LEN`],
//! [`syntax::MAX_LIST_ITEMS`], [`diag::MAX_DIAGNOSTICS`]).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cpus;
pub mod diag;
pub mod disk;
mod domain;
pub mod syntax;
mod util;
pub mod vif;

#[cfg(test)]
mod tests;

pub use cpus::{CpuAffinity, CpuSet};
pub use diag::{Diagnostic, Severity};
pub use disk::{
    Access, DevType, DiskFormat, DiskKind, DiskSpec, DiskSpecification, DiskTransport, Vdev,
    VdevBus,
};
pub use domain::{
    parse, Action, BootDevice, DomainConfig, Firmware, GuestType, Serial, DEFAULT_MEMORY_MIB,
    MAX_MEMORY_MIB, MAX_NAME_LEN, MAX_VCPUS,
};
pub use syntax::{parse_entries, Entry, ListItem, Value};
pub use util::{parse_size, SizeError, Uuid};
pub use vif::{MacAddr, VifSpec};
