//! Port I/O.

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: the hypervisor owns the platform's I/O ports; callers pick
    // ports of devices they drive (UART, PIT, debug-exit), which has no
    // memory-safety effect.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; a port read has no memory-safety effect.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Writes a doubleword to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

/// Writes a word to an I/O port.
#[inline]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads a word from an I/O port.
#[inline]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `inb`.
    unsafe { core::arch::asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags)) }
    value
}
