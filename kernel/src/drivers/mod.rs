//! Drivers for the host's own devices.

pub mod uart;
