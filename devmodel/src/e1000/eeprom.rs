//! The 82540's 64-word Microwire EEPROM, bit-banged through EECD (Linux's
//! only way to read it on this MAC) or read a word at a time through EERD.

use super::{
    E1000, DEVICE_ID, EECD_CS, EECD_DI, EECD_DO, EECD_FWE, EECD_GNT, EECD_PRES, EECD_REQ,
    EECD_SK, EERD_DONE, EERD_START, SUBSYSTEM_ID,
};

/// EEPROM words (64 of them: the 82540's Microwire part).
pub const EEPROM_WORDS: usize = 64;
pub const EEPROM_CHECKSUM_WORD: usize = 0x3f;
/// The 64 words sum to this.
pub const EEPROM_SUM: u16 = 0xbaba;
/// Microwire READ opcode (3 bits: start bit and 10).
const EEPROM_READ_OPCODE: u32 = 0b110;

/// The EEPROM image QEMU's e1000 ships (SDM tables 5-2 and 5-3), with
/// the MAC address, device and subsystem IDs and checksum filled in by
/// [`eeprom_image`].
const EEPROM_TEMPLATE: [u16; EEPROM_WORDS] = [
    0x0000, 0x0000, 0x0000, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000, //
    0x3000, 0x1000, 0x6403, 0x0000, 0x8086, 0x0000, 0x8086, 0x3040, //
    0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700, //
    0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706, //
    0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0x0000, //
];

/// The EEPROM contents for a card with address `mac`: MAC in words 0-2
/// (low byte first), subsystem ID (word 0x0B) and device ID (0x0D) as in
/// the configuration space, checksum word 0x3F making the sum 0xBABA.
pub fn eeprom_image(mac: [u8; 6]) -> [u16; EEPROM_WORDS] {
    let mut e = EEPROM_TEMPLATE;
    for i in 0..3 {
        e[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    e[0x0b] = SUBSYSTEM_ID;
    e[0x0d] = DEVICE_ID;
    let sum = e[..EEPROM_CHECKSUM_WORD].iter().fold(0u16, |a, &w| a.wrapping_add(w));
    e[EEPROM_CHECKSUM_WORD] = EEPROM_SUM.wrapping_sub(sum);
    e
}

/// The Microwire EEPROM's serial interface, as the driver bit-bangs it
/// through EECD.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Microwire {
    /// SK, CS, DI, FWE, REQ as last written.
    latched: u32,
    /// Bits shifted in since CS rose.
    val_in: u32,
    bits_in: u32,
    /// The stream position DO presents (word × 16 + bit, MSB first).
    bit_out: u32,
    reading: bool,
}

impl E1000 {
    pub(super) fn eecd_read(&self) -> u32 {
        let mut v = EECD_PRES | EECD_GNT | self.eecd.latched;
        let e = &self.eecd;
        // DO idles high; while reading it presents the addressed word,
        // most significant bit first.
        let word = self.eeprom[((e.bit_out >> 4) as usize) % EEPROM_WORDS];
        if !e.reading || (word >> (15 - (e.bit_out & 15))) & 1 != 0 {
            v |= EECD_DO;
        }
        v
    }

    pub(super) fn eecd_write(&mut self, v: u32) {
        let old = self.eecd.latched;
        let e = &mut self.eecd;
        e.latched = v & (EECD_SK | EECD_CS | EECD_DI | EECD_FWE | EECD_REQ);
        if v & EECD_CS == 0 {
            return;
        }
        if (v ^ old) & EECD_CS != 0 {
            // Chip select rises: a new command starts.
            e.val_in = 0;
            e.bits_in = 0;
            e.bit_out = 0;
            e.reading = false;
        }
        if (v ^ old) & EECD_SK == 0 {
            return;
        }
        if v & EECD_SK == 0 {
            // Falling clock: the next output bit.
            e.bit_out = e.bit_out.wrapping_add(1);
            return;
        }
        // Rising clock: shift DI in. After the 3-bit opcode and 6-bit
        // address, a READ streams words out from that address on.
        e.val_in = (e.val_in << 1) | u32::from(v & EECD_DI != 0);
        e.bits_in = e.bits_in.saturating_add(1);
        if e.bits_in == 9 && !e.reading {
            e.reading = (e.val_in >> 6) & 7 == EEPROM_READ_OPCODE;
            // The falling edge that ends this cycle moves to bit 0.
            e.bit_out = ((e.val_in & 0x3f) << 4).wrapping_sub(1);
        }
    }

    pub(super) fn eerd_read(&self) -> u32 {
        if self.eerd & EERD_START == 0 {
            return self.eerd;
        }
        let r = self.eerd & !EERD_START;
        let addr = ((r >> 8) & 0xff) as usize;
        match self.eeprom.get(addr) {
            Some(&w) => (u32::from(w) << 16) | EERD_DONE | (r & 0xff00),
            None => EERD_DONE | (r & 0xff00),
        }
    }
}
