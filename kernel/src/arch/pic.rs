//! The legacy 8259 PICs: remapped away from the exception vectors and
//! masked. The firmware leaves them delivering IRQ 0 (the PIT) at vector 8,
//! which would look like a double fault the first time interrupts open.

use super::pio::outb;

pub fn disable() {
    // ICW1: init, ICW4 needed; ICW2: vectors 0x20/0x28; ICW3: cascade on
    // IRQ 2; ICW4: 8086 mode. Then mask every line.
    for (cmd, data, base, cascade) in [(0x20u16, 0x21u16, 0x20u8, 0x04u8), (0xA0, 0xA1, 0x28, 0x02)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xFF);
    }
}
