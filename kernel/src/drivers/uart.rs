//! The host serial port (a 16550 UART): the hypervisor console.

use crate::arch::pio::{inb, outb};
pub use ferrite_boot::cmdline::{LineConfig, Parity};

pub const COM1: u16 = 0x3F8;

pub struct Uart {
    base: u16,
}

impl Uart {
    pub const fn new(base: u16) -> Self {
        Uart { base }
    }

    pub fn configure(&self, cfg: LineConfig) {
        let b = self.base;
        outb(b + 1, 0x00); // no interrupts
        let mut lcr = match cfg.data_bits {
            5 => 0,
            6 => 1,
            7 => 2,
            _ => 3,
        };
        if cfg.stop_bits == 2 {
            lcr |= 1 << 2;
        }
        lcr |= match cfg.parity {
            Parity::None => 0,
            Parity::Odd => 0b001 << 3,
            Parity::Even => 0b011 << 3,
        };
        if let Some(baud) = cfg.baud {
            let divisor = (115_200 / baud.clamp(1, 115_200)).max(1) as u16;
            outb(b + 3, 0x80); // DLAB
            outb(b, divisor as u8);
            outb(b + 1, (divisor >> 8) as u8);
        }
        outb(b + 3, lcr);
        outb(b + 2, 0xC7); // FIFOs on, cleared, 14-byte threshold
        outb(b + 4, 0x03); // DTR, RTS
    }

    pub fn write_byte(&self, byte: u8) {
        // Bounded wait for the transmit holding register: a missing UART
        // must not hang the hypervisor.
        let mut spins = 0u32;
        while inb(self.base + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        outb(self.base, byte);
    }

    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }

    /// A received byte, if any.
    pub fn read_byte(&self) -> Option<u8> {
        if inb(self.base + 5) & 1 != 0 {
            Some(inb(self.base))
        } else {
            None
        }
    }
}
