//! The guest general-purpose register file and x86 partial-register rules.

/// Register numbers in x86 encoding order (ModRM/REX numbering).
pub const RAX: u8 = 0;
pub const RCX: u8 = 1;
pub const RDX: u8 = 2;
pub const RBX: u8 = 3;
pub const RSP: u8 = 4;
pub const RBP: u8 = 5;
pub const RSI: u8 = 6;
pub const RDI: u8 = 7;
pub const R8: u8 = 8;
pub const R9: u8 = 9;
pub const R10: u8 = 10;
pub const R11: u8 = 11;
pub const R12: u8 = 12;
pub const R13: u8 = 13;
pub const R14: u8 = 14;
pub const R15: u8 = 15;

/// A (sub-)register operand: a GPR number, an access size in bytes
/// (1, 2, 4 or 8) and, for size 1, whether it is the legacy high byte
/// (AH, CH, DH, BH = bits 15:8 of RAX, RCX, RDX, RBX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    /// 0..=15 in encoding order ([`RAX`] .. [`R15`]).
    pub index: u8,
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// Bits 15:8 of `index` (only with `size == 1`, `index < 4`).
    pub high8: bool,
}

impl Reg {
    /// The register named by a ModRM/opcode register field (REX bits
    /// already merged in) at `size`. Without any REX prefix byte registers
    /// 4..=7 are AH, CH, DH, BH; with one they are SPL, BPL, SIL, DIL.
    pub const fn from_encoding(index: u8, size: u8, rex_present: bool) -> Reg {
        let index = index & 15;
        if size == 1 && !rex_present && index >= 4 && index < 8 {
            Reg { index: index - 4, size: 1, high8: true }
        } else {
            Reg { index, size, high8: false }
        }
    }

    /// A full-width or low-part register (never a high byte).
    pub const fn new(index: u8, size: u8) -> Reg {
        Reg { index: index & 15, size, high8: false }
    }
}

/// Mask with the low `size` bytes set (`size` of 8 or more: all ones).
pub const fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}

/// Sign-extend the low `size` bytes of `v` to 64 bits.
pub const fn sign_extend(v: u64, size: u8) -> u64 {
    if size >= 8 {
        v
    } else {
        let shift = 64 - size as u32 * 8;
        (((v << shift) as i64) >> shift) as u64
    }
}

/// The sixteen general-purpose registers in encoding order
/// (`gprs[0]` = RAX, `gprs[1]` = RCX, ..., `gprs[4]` = RSP, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub gprs: [u64; 16],
}

impl Regs {
    pub const fn new(gprs: [u64; 16]) -> Regs {
        Regs { gprs }
    }

    /// The value of a (sub-)register, zero-extended to 64 bits.
    pub fn read(&self, r: Reg) -> u64 {
        let full = self.gprs[(r.index & 15) as usize];
        if r.high8 {
            (full >> 8) & 0xff
        } else {
            full & size_mask(r.size)
        }
    }

    /// Write a (sub-)register with x86 rules: 64-bit writes replace,
    /// 32-bit writes zero-extend into the upper half, 16- and 8-bit
    /// writes (including AH..BH) merge and leave the other bits alone.
    pub fn write(&mut self, r: Reg, value: u64) {
        let slot = &mut self.gprs[(r.index & 15) as usize];
        if r.high8 {
            *slot = (*slot & !0xff00) | ((value & 0xff) << 8);
            return;
        }
        match r.size {
            8 => *slot = value,
            4 => *slot = value & 0xffff_ffff,
            _ => {
                let m = size_mask(r.size);
                *slot = (*slot & !m) | (value & m);
            }
        }
    }

    /// Full 64-bit register by number.
    pub fn get(&self, index: u8) -> u64 {
        self.gprs[(index & 15) as usize]
    }

    /// Replace a full 64-bit register by number.
    pub fn set(&mut self, index: u8, value: u64) {
        self.gprs[(index & 15) as usize] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: u64 = 0x1122_3344_5566_7788;

    #[test]
    fn encoding_names() {
        // Without REX: 4..7 are AH, CH, DH, BH.
        assert_eq!(Reg::from_encoding(4, 1, false), Reg { index: RAX, size: 1, high8: true });
        assert_eq!(Reg::from_encoding(7, 1, false), Reg { index: RBX, size: 1, high8: true });
        assert_eq!(Reg::from_encoding(3, 1, false), Reg::new(RBX, 1));
        // With REX: SPL, BPL, SIL, DIL and R8B..R15B.
        assert_eq!(Reg::from_encoding(4, 1, true), Reg::new(RSP, 1));
        assert_eq!(Reg::from_encoding(7, 1, true), Reg::new(RDI, 1));
        assert_eq!(Reg::from_encoding(12, 1, true), Reg::new(R12, 1));
        // Wider sizes never name high bytes.
        assert_eq!(Reg::from_encoding(4, 2, false), Reg::new(RSP, 2));
    }

    #[test]
    fn reads() {
        let mut r = Regs::default();
        for i in 0..16 {
            r.set(i, V.rotate_left(i as u32 * 4));
        }
        for i in 0..16u8 {
            let v = V.rotate_left(i as u32 * 4);
            assert_eq!(r.read(Reg::new(i, 8)), v);
            assert_eq!(r.read(Reg::new(i, 4)), v & 0xffff_ffff);
            assert_eq!(r.read(Reg::new(i, 2)), v & 0xffff);
            assert_eq!(r.read(Reg::new(i, 1)), v & 0xff);
            if i < 4 {
                assert_eq!(r.read(Reg { index: i, size: 1, high8: true }), (v >> 8) & 0xff);
            }
        }
    }

    #[test]
    fn writes() {
        for i in 0..16u8 {
            let mut r = Regs::new([V; 16]);
            r.write(Reg::new(i, 8), 0xdead_beef_cafe_f00d);
            assert_eq!(r.get(i), 0xdead_beef_cafe_f00d);
            // 32-bit writes zero-extend.
            r.set(i, V);
            r.write(Reg::new(i, 4), 0xffff_ffff_8000_0001);
            assert_eq!(r.get(i), 0x8000_0001);
            // 16- and 8-bit writes merge; the value's upper bits are ignored.
            r.set(i, V);
            r.write(Reg::new(i, 2), 0xffff_abcd);
            assert_eq!(r.get(i), 0x1122_3344_5566_abcd);
            r.set(i, V);
            r.write(Reg::new(i, 1), 0x1ef);
            assert_eq!(r.get(i), 0x1122_3344_5566_77ef);
            if i < 4 {
                r.set(i, V);
                r.write(Reg { index: i, size: 1, high8: true }, 0x1ab);
                assert_eq!(r.get(i), 0x1122_3344_5566_ab88);
            }
            // Other registers untouched.
            for j in 0..16u8 {
                if j != i {
                    assert_eq!(r.get(j), V);
                }
            }
        }
    }

    #[test]
    fn extend_helpers() {
        assert_eq!(sign_extend(0x80, 1), u64::MAX << 7);
        assert_eq!(sign_extend(0x7fff, 2), 0x7fff);
        assert_eq!(sign_extend(0x8000_0000, 4), 0xffff_ffff_8000_0000);
        assert_eq!(sign_extend(5, 8), 5);
        assert_eq!(size_mask(1), 0xff);
        assert_eq!(size_mask(8), u64::MAX);
    }
}
