//! Port I/O, over the `x86_64` crate's `Port` types.
//!
//! The hypervisor owns the platform's I/O ports, and callers name ports of
//! devices they drive (UART, PIT, CMOS, PCI configuration, ACPI PM, reset,
//! QEMU's debug exit). A port access has no memory-safety effect, so these
//! helpers are safe; they exist so call sites stay `outb(port, value)`.

use x86_64::instructions::port::{PortRead, PortReadOnly, PortWrite, PortWriteOnly};

fn write<T: PortWrite>(port: u16, value: T) {
    // SAFETY: see the module comment: a port write the hypervisor makes to
    // a device it drives cannot break memory safety.
    unsafe { PortWriteOnly::new(port).write(value) }
}

fn read<T: PortRead>(port: u16) -> T {
    // SAFETY: as for `write`; a port read has no memory-safety effect.
    unsafe { PortReadOnly::new(port).read() }
}

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    write(port, value)
}

/// Reads a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    read(port)
}

/// Writes a word to an I/O port.
#[inline]
pub fn outw(port: u16, value: u16) {
    write(port, value)
}

/// Reads a word from an I/O port.
#[inline]
pub fn inw(port: u16) -> u16 {
    read(port)
}

/// Writes a doubleword to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    write(port, value)
}

/// Reads a doubleword from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    read(port)
}
