//! The instructions behind a control-register write exit, for a CPU that
//! does not decode them itself (no decode assists, or LMSW, which decode
//! assists do not describe).

use super::{modrm, prefixes, CodeMode, Cur, DecodeError, MemOperand};

/// How an instruction writes a control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrWriteOp {
    /// `MOV CRn, reg` (0F 22 /r); `gpr` is 0 = RAX ... 15 = R15.
    Mov { cr: u8, gpr: u8 },
    /// `LMSW r16` (0F 01 /6, register form): CR0 bits 3:0 from `gpr`.
    LmswReg { gpr: u8 },
    /// `LMSW m16`: CR0 bits 3:0 from the word at this operand.
    LmswMem(MemOperand),
    /// `CLTS` (0F 06): clears CR0.TS.
    Clts,
}

/// A decoded control-register write and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrWrite {
    pub op: CrWriteOp,
    pub len: usize,
}

impl CrWrite {
    /// The control register written (LMSW and CLTS write CR0).
    pub fn cr(&self) -> u8 {
        match self.op {
            CrWriteOp::Mov { cr, .. } => cr,
            _ => 0,
        }
    }
}

/// Decodes the instruction at the start of `bytes` as a write of a control
/// register: MOV to CRn, LMSW or CLTS; anything else is `Unsupported`.
pub fn decode_cr_write(bytes: &[u8], mode: CodeMode) -> Result<CrWrite, DecodeError> {
    let mut cur = Cur { b: bytes, pos: 0 };
    let p = prefixes(&mut cur, mode)?;
    if cur.u8()? != 0x0f {
        return Err(DecodeError::Unsupported);
    }
    let op = match cur.u8()? {
        0x22 => {
            // The mod field is ignored: the operand is always a register.
            let b = cur.u8()?;
            let mut cr = ((b >> 3) & 7) | p.r();
            let gpr = (b & 7) | p.b();
            // AMD's alternative encoding of CR8 outside 64-bit mode: LOCK MOV CR0.
            if p.lock && cr == 0 {
                cr = 8;
            }
            CrWriteOp::Mov { cr, gpr }
        }
        0x06 => CrWriteOp::Clts,
        0x01 => {
            let m = modrm(&mut cur, mode, &p)?;
            if m.ext != 6 {
                return Err(DecodeError::Unsupported);
            }
            match m.mem {
                Some(mem) => CrWriteOp::LmswMem(mem),
                // With mod = 11 the r/m field (plus REX.B) names the register.
                None => CrWriteOp::LmswReg { gpr: (bytes[cur.pos - 1] & 7) | p.b() },
            }
        }
        _ => return Err(DecodeError::Unsupported),
    };
    Ok(CrWrite { op, len: cur.pos })
}

#[cfg(test)]
mod tests {
    use super::super::Seg;
    use super::*;
    use CodeMode::*;

    fn mov(cr: u8, gpr: u8, len: usize) -> Result<CrWrite, DecodeError> {
        Ok(CrWrite { op: CrWriteOp::Mov { cr, gpr }, len })
    }

    #[test]
    fn mov_to_cr_forms() {
        // mov cr4, rax / mov cr4, eax (32-bit) / mov cr4, r9 / mov cr8, rcx.
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0xe0], Bits64), mov(4, 0, 3));
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0xe0], Bits32), mov(4, 0, 3));
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x22, 0xe1], Bits64), mov(4, 9, 4));
        assert_eq!(decode_cr_write(&[0x44, 0x0f, 0x22, 0xc1], Bits64), mov(8, 1, 4));
        // mod bits other than 11 still name a register; mov cr0, ebx; in real mode too.
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0x03], Bits32), mov(0, 3, 3));
        assert_eq!(decode_cr_write(&[0x0f, 0x22, 0xc0], Bits16), mov(0, 0, 3));
        // LOCK MOV CR0 is CR8 (AMD), 0x41 outside 64-bit mode is INC ECX.
        assert_eq!(decode_cr_write(&[0xf0, 0x0f, 0x22, 0xc0], Bits32), mov(8, 0, 4));
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x22, 0xe1], Bits32), Err(DecodeError::Unsupported));
        // Not a write of a control register; truncated.
        assert_eq!(decode_cr_write(&[0x0f, 0x20, 0xe0], Bits64), Err(DecodeError::Unsupported));
        assert_eq!(decode_cr_write(&[0x0f, 0x22], Bits64), Err(DecodeError::Truncated));
    }

    #[test]
    fn lmsw_and_clts() {
        assert_eq!(decode_cr_write(&[0x0f, 0x06], Bits32), Ok(CrWrite { op: CrWriteOp::Clts, len: 2 }));
        // lmsw ax; lmsw r10w.
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0xf0], Bits32), Ok(CrWrite { op: CrWriteOp::LmswReg { gpr: 0 }, len: 3 }));
        assert_eq!(decode_cr_write(&[0x41, 0x0f, 0x01, 0xf2], Bits64), Ok(CrWrite { op: CrWriteOp::LmswReg { gpr: 10 }, len: 4 }));
        // lmsw [ebx+8]; lmsw [disp32] (RIP-relative in 64-bit mode).
        match decode_cr_write(&[0x0f, 0x01, 0x73, 0x08], Bits32) {
            Ok(CrWrite { op: CrWriteOp::LmswMem(m), len: 4 }) => {
                assert_eq!((m.base, m.disp, m.seg, m.addr_size), (Some(3), 8, Seg::Ds, 4));
            }
            other => panic!("{other:?}"),
        }
        match decode_cr_write(&[0x0f, 0x01, 0x35, 0x10, 0, 0, 0], Bits64) {
            Ok(CrWrite { op: CrWriteOp::LmswMem(m), len: 7 }) => assert!(m.rip_relative && m.disp == 0x10),
            other => panic!("{other:?}"),
        }
        // smsw (0F 01 /4) and lgdt (0F 01 /2) are not writes of a CR.
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0xe0], Bits32), Err(DecodeError::Unsupported));
        assert_eq!(decode_cr_write(&[0x0f, 0x01, 0x10], Bits32), Err(DecodeError::Unsupported));
        assert_eq!(decode_cr_write(&[0x0f, 0x01], Bits32), Err(DecodeError::Truncated));
    }
}
