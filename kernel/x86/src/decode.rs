//! Instruction decoding: the MMIO instruction forms ([`decode_mmio`]),
//! their emulation against a device ([`MmioOp::execute`]), and general
//! instruction lengths ([`instruction_length`]).
//!
//! Never panics on any input: truncated input gives
//! [`DecodeError::Truncated`], more than 15 bytes [`DecodeError::TooLong`].

use crate::regs::{sign_extend, size_mask, Reg, Regs, RAX, RDI, RSI};

/// The processor's default code size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMode {
    /// Real mode, virtual-8086 mode, 16-bit protected mode (CS.D = 0).
    Bits16,
    /// 32-bit protected mode or compatibility mode (CS.D = 1).
    Bits32,
    /// 64-bit mode (long mode with CS.L = 1).
    Bits64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does (fetch more, or inject
    /// the fault that stopped the fetch).
    Truncated,
    /// The instruction would be longer than 15 bytes (#GP in hardware).
    TooLong,
    /// Not a valid instruction in this mode (#UD in hardware).
    Invalid,
    /// Valid, but not an MMIO form this decoder emulates.
    Unsupported,
    /// A register-only form: it cannot have caused a memory access.
    NotMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// REP/REPE (F3) or REPNE (F2) prefix, the last one given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rep {
    #[default]
    None,
    Rep,
    Repne,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Memory size equals register size.
    None,
    /// MOVZX.
    Zero,
    /// MOVSX, MOVSXD.
    Sign,
}

/// A register or immediate operand (immediates already sign-extended as
/// the instruction does and truncated to the operation size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Reg(Reg),
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

impl AluOp {
    fn from_index(i: u8) -> AluOp {
        [AluOp::Add, AluOp::Or, AluOp::Adc, AluOp::Sbb, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp][(i & 7) as usize]
    }

    /// CMP and TEST only set flags.
    pub fn writes_result(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Inc,
    Dec,
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringOp {
    /// ES:[rDI] ← seg:[rSI].
    Movs,
    /// ES:[rDI] ← AL/AX/EAX/RAX.
    Stos,
    /// AL/AX/EAX/RAX ← seg:[rSI].
    Lods,
}

/// What an MMIO instruction does. "mem" is the memory operand
/// ([`MmioOp::mem`]); sizes are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioKind {
    /// `dest ← extend(mem[size])` (MOV, MOVZX, MOVSX, MOVSXD). `dest.size`
    /// can be larger than `size` with an extension.
    Read { dest: Reg, size: u8, extend: Extend },
    /// `mem[size] ← src` (MOV, MOVNTI).
    Write { src: Operand, size: u8 },
    /// `mem ← mem op src`, flags updated (CMP/TEST: flags only, no write).
    ReadModifyWrite { op: AluOp, src: Operand, size: u8 },
    /// `dest ← dest op mem`, flags updated (CMP: flags only).
    AluRead { op: AluOp, dest: Reg, size: u8 },
    /// `mem ← op mem` (INC/DEC/NOT/NEG).
    Unary { op: UnaryOp, size: u8 },
    /// Exchange `reg` with memory (always locked in hardware).
    Xchg { reg: Reg, size: u8 },
    /// BT/BTS/BTR/BTC on memory; CF ← the selected bit. A register bit
    /// offset is used modulo the operand width (hardware would address a
    /// different word for larger offsets: compare addresses first).
    Bit { op: BitOp, bit: Operand, size: u8 },
    /// MOVS/STOS/LODS. `rep` is in [`MmioOp::rep`], the direction is
    /// RFLAGS.DF (see [`MmioOp::string_step`]). `src_seg` is the segment
    /// of the rSI operand (DS unless overridden); rDI always uses ES.
    String { op: StringOp, size: u8, addr_size: u8, src_seg: Seg },
    /// `xmm ← zero_extend(mem[size])` (MOVD/MOVQ into an XMM register).
    ReadXmm { xmm: u8, size: u8 },
    /// `mem[size] ← xmm[size]` (MOVD/MOVQ from an XMM register).
    WriteXmm { xmm: u8, size: u8 },
}

/// A memory operand: `seg:[base + index*scale + disp]` (or RIP-relative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// The effective segment (override or default). In 64-bit mode only
    /// FS and GS have a base.
    pub seg: Seg,
    pub base: Option<u8>,
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    pub disp: i64,
    /// `disp` is relative to the next instruction's RIP.
    pub rip_relative: bool,
    /// Address size in bytes: 2, 4 or 8.
    pub addr_size: u8,
}

impl MemOperand {
    /// The offset within the segment (effective address), wrapped to the
    /// address size. `next_rip` is only used for RIP-relative operands.
    pub fn offset(&self, regs: &Regs, next_rip: u64) -> u64 {
        let mut a = self.disp as u64;
        if self.rip_relative {
            a = a.wrapping_add(next_rip);
        }
        if let Some(b) = self.base {
            a = a.wrapping_add(regs.get(b));
        }
        if let Some(i) = self.index {
            a = a.wrapping_add(regs.get(i).wrapping_mul(self.scale as u64));
        }
        a & size_mask(self.addr_size)
    }
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioOp {
    pub kind: MmioKind,
    /// The memory operand. For MOVS/STOS it is the destination ES:[rDI],
    /// for LODS the source seg:[rSI].
    pub mem: MemOperand,
    /// Instruction length in bytes: add it to RIP after emulating.
    pub len: usize,
    pub lock: bool,
    pub rep: Rep,
    pub mode: CodeMode,
}

/// The device side of [`MmioOp::execute`]: the access goes to the address
/// that faulted, only the size varies.
pub trait MmioBus {
    fn read(&mut self, size: u8) -> u64;
    fn write(&mut self, size: u8, value: u64);
}

pub const FLAG_CF: u64 = 1 << 0;
pub const FLAG_PF: u64 = 1 << 2;
pub const FLAG_AF: u64 = 1 << 4;
pub const FLAG_ZF: u64 = 1 << 6;
pub const FLAG_SF: u64 = 1 << 7;
pub const FLAG_DF: u64 = 1 << 10;
pub const FLAG_OF: u64 = 1 << 11;
const STATUS: u64 = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF;

fn szp(r: u64, size: u8) -> u64 {
    let mut f = 0;
    if r & size_mask(size) == 0 {
        f |= FLAG_ZF;
    }
    if r & (1u64 << (size as u32 * 8 - 1)) != 0 {
        f |= FLAG_SF;
    }
    if (r as u8).count_ones() & 1 == 0 {
        f |= FLAG_PF;
    }
    f
}

/// Compute `a op b` at `size` bytes: (result truncated to size, new
/// RFLAGS with CF/PF/AF/ZF/SF/OF updated from `rflags`).
pub fn alu(op: AluOp, a: u64, b: u64, size: u8, rflags: u64) -> (u64, u64) {
    let size = match size {
        1 | 2 | 4 => size,
        _ => 8,
    };
    let m = size_mask(size);
    let sign = 1u64 << (size as u32 * 8 - 1);
    let (a, b) = (a & m, b & m);
    let cin = (rflags & FLAG_CF) as u128;
    let (r, mut f) = match op {
        AluOp::Add | AluOp::Adc => {
            let c = if op == AluOp::Adc { cin } else { 0 };
            let wide = a as u128 + b as u128 + c;
            let r = (wide as u64) & m;
            let mut f = 0;
            if wide > m as u128 {
                f |= FLAG_CF;
            }
            if (a ^ r) & (b ^ r) & sign != 0 {
                f |= FLAG_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= FLAG_AF;
            }
            (r, f)
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp => {
            let c = if op == AluOp::Sbb { cin } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c as u64) & m;
            let mut f = 0;
            if (a as u128) < b as u128 + c {
                f |= FLAG_CF;
            }
            if (a ^ b) & (a ^ r) & sign != 0 {
                f |= FLAG_OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= FLAG_AF;
            }
            (r, f)
        }
        AluOp::And | AluOp::Test => (a & b, 0),
        AluOp::Or => (a | b, 0),
        AluOp::Xor => (a ^ b, 0),
    };
    f |= szp(r, size);
    (r, (rflags & !STATUS) | f)
}

/// INC/DEC/NOT/NEG at `size` bytes: (result, new RFLAGS). INC/DEC keep CF;
/// NOT changes no flags.
pub fn unary(op: UnaryOp, a: u64, size: u8, rflags: u64) -> (u64, u64) {
    let m = size_mask(size);
    match op {
        UnaryOp::Not => (!a & m, rflags),
        UnaryOp::Inc | UnaryOp::Dec => {
            let aop = if op == UnaryOp::Inc { AluOp::Add } else { AluOp::Sub };
            let (r, f) = alu(aop, a, 1, size, rflags);
            (r, (f & !FLAG_CF) | (rflags & FLAG_CF))
        }
        UnaryOp::Neg => alu(AluOp::Sub, 0, a, size, rflags),
    }
}

// ---------------------------------------------------------------- bytes

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cur<'_> {
    fn peek_at(&self, ahead: usize) -> Result<u8, DecodeError> {
        let p = self.pos + ahead;
        if p >= 15 {
            Err(DecodeError::TooLong)
        } else {
            self.b.get(p).copied().ok_or(DecodeError::Truncated)
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = self.peek_at(0)?;
        self.pos += 1;
        Ok(v)
    }
    /// Little-endian unsigned value of `n` bytes.
    fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n {
            v |= (self.u8()? as u64) << (8 * i as u32);
        }
        Ok(v)
    }
    fn skip(&mut self, n: u8) -> Result<(), DecodeError> {
        self.le(n).map(|_| ())
    }
}

#[derive(Clone, Copy, Default)]
struct Prefixes {
    opsize: bool,
    addrsize: bool,
    lock: bool,
    rep: Rep,
    seg: Option<Seg>,
    /// The REX byte (0x40..=0x4F), 0 if none.
    rex: u8,
}

impl Prefixes {
    fn rex_present(&self) -> bool {
        self.rex != 0
    }
    fn w(&self) -> bool {
        self.rex & 8 != 0
    }
    fn r(&self) -> u8 {
        (self.rex & 4) << 1
    }
    fn x(&self) -> u8 {
        (self.rex & 2) << 2
    }
    fn b(&self) -> u8 {
        (self.rex & 1) << 3
    }
}

fn prefixes(cur: &mut Cur, mode: CodeMode) -> Result<Prefixes, DecodeError> {
    let mut p = Prefixes::default();
    loop {
        let b = cur.peek_at(0)?;
        match b {
            0x66 => p.opsize = true,
            0x67 => p.addrsize = true,
            0xf0 => p.lock = true,
            0xf2 => p.rep = Rep::Repne,
            0xf3 => p.rep = Rep::Rep,
            0x26 => p.seg = Some(Seg::Es),
            0x2e => p.seg = Some(Seg::Cs),
            0x36 => p.seg = Some(Seg::Ss),
            0x3e => p.seg = Some(Seg::Ds),
            0x64 => p.seg = Some(Seg::Fs),
            0x65 => p.seg = Some(Seg::Gs),
            0x40..=0x4f if mode == CodeMode::Bits64 => {
                p.rex = b;
                cur.pos += 1;
                continue;
            }
            _ => return Ok(p),
        }
        // A legacy prefix after REX makes the REX prefix ignored.
        p.rex = 0;
        cur.pos += 1;
    }
}

fn op_size(mode: CodeMode, p: &Prefixes) -> u8 {
    match mode {
        CodeMode::Bits64 if p.w() => 8,
        CodeMode::Bits64 | CodeMode::Bits32 => {
            if p.opsize {
                2
            } else {
                4
            }
        }
        CodeMode::Bits16 => {
            if p.opsize {
                4
            } else {
                2
            }
        }
    }
}

fn addr_size(mode: CodeMode, p: &Prefixes) -> u8 {
    match (mode, p.addrsize) {
        (CodeMode::Bits64, false) => 8,
        (CodeMode::Bits64, true) | (CodeMode::Bits32, false) | (CodeMode::Bits16, true) => 4,
        (CodeMode::Bits32, true) | (CodeMode::Bits16, false) => 2,
    }
}

struct ModRm {
    md: u8,
    /// The reg field with REX.R.
    reg: u8,
    /// The raw reg field (opcode extension).
    ext: u8,
    mem: Option<MemOperand>,
}

fn modrm(cur: &mut Cur, mode: CodeMode, p: &Prefixes) -> Result<ModRm, DecodeError> {
    let b = cur.u8()?;
    let md = b >> 6;
    let ext = (b >> 3) & 7;
    let rm = b & 7;
    let reg = ext | p.r();
    if md == 3 {
        return Ok(ModRm { md, reg, ext, mem: None });
    }
    let asz = addr_size(mode, p);
    let mut op = MemOperand { seg: Seg::Ds, base: None, index: None, scale: 1, disp: 0, rip_relative: false, addr_size: asz };
    let mut ss_default = false;
    if asz == 2 {
        const BASE: [Option<u8>; 8] = [Some(3), Some(3), Some(5), Some(5), Some(6), Some(7), Some(5), Some(3)];
        const INDEX: [Option<u8>; 8] = [Some(6), Some(7), Some(6), Some(7), None, None, None, None];
        op.base = BASE[rm as usize];
        op.index = INDEX[rm as usize];
        if md == 0 && rm == 6 {
            op.base = None;
            op.disp = cur.le(2)? as i16 as i64;
        } else {
            ss_default = op.base == Some(5);
            op.disp = match md {
                1 => cur.u8()? as i8 as i64,
                2 => cur.le(2)? as i16 as i64,
                _ => 0,
            };
        }
    } else {
        if rm == 4 {
            let sib = cur.u8()?;
            op.scale = 1 << (sib >> 6);
            let index = ((sib >> 3) & 7) | p.x();
            if index != 4 {
                op.index = Some(index);
            }
            if sib & 7 == 5 && md == 0 {
                op.disp = cur.le(4)? as i32 as i64;
            } else {
                let base = (sib & 7) | p.b();
                op.base = Some(base);
                ss_default = base == 4 || base == 5;
            }
        } else if rm == 5 && md == 0 {
            op.disp = cur.le(4)? as i32 as i64;
            op.rip_relative = mode == CodeMode::Bits64;
        } else {
            let base = rm | p.b();
            op.base = Some(base);
            ss_default = base == 5;
        }
        match md {
            1 => op.disp = cur.u8()? as i8 as i64,
            2 => op.disp = cur.le(4)? as i32 as i64,
            _ => {}
        }
    }
    op.seg = p.seg.unwrap_or(if ss_default { Seg::Ss } else { Seg::Ds });
    Ok(ModRm { md, reg, ext, mem: Some(op) })
}

// ---------------------------------------------------------------- MMIO

/// Decode the instruction at the start of `bytes` as an MMIO access.
///
/// Supported: MOV 88/89/8A/8B/C6/C7/A0-A3, MOVZX/MOVSX 0F B6/B7/BE/BF,
/// MOVSXD 63 (64-bit mode), MOVNTI 0F C3, ADD/OR/ADC/SBB/AND/SUB/XOR/CMP
/// (00-3B, 80-83), TEST (84/85, F6/F7 /0), NOT/NEG (F6/F7 /2 /3),
/// INC/DEC (FE/FF /0 /1), XCHG 86/87, BT/BTS/BTR/BTC (0F A3/AB/B3/BB,
/// 0F BA /4-7), MOVS/STOS/LODS (A4/A5/AA/AB/AC/AD with REP), MOVD/MOVQ
/// with XMM (66 0F 6E/7E, F3 0F 7E, 66 0F D6).
pub fn decode_mmio(bytes: &[u8], mode: CodeMode) -> Result<MmioOp, DecodeError> {
    let mut cur = Cur { b: bytes, pos: 0 };
    let p = prefixes(&mut cur, mode)?;
    let osz = op_size(mode, &p);
    let asz = addr_size(mode, &p);
    let rexp = p.rex_present();
    let op = cur.u8()?;

    let mem_of = |cur: &mut Cur| -> Result<(ModRm, MemOperand), DecodeError> {
        let m = modrm(cur, mode, &p)?;
        match m.mem {
            Some(mem) => Ok((m, mem)),
            None => Err(DecodeError::NotMemory),
        }
    };
    let imm = |cur: &mut Cur, n: u8, size: u8| -> Result<u64, DecodeError> {
        Ok(sign_extend(cur.le(n)?, n) & size_mask(size))
    };
    let string_mem = |es_rdi: bool| MemOperand {
        seg: if es_rdi { Seg::Es } else { p.seg.unwrap_or(Seg::Ds) },
        base: Some(if es_rdi { RDI } else { RSI }),
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
        addr_size: asz,
    };

    let (kind, mem) = match op {
        0x00..=0x3f if op & 7 < 4 => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let (m, mem) = mem_of(&mut cur)?;
            let r = Reg::from_encoding(m.reg, size, rexp);
            let aop = AluOp::from_index(op >> 3);
            if op & 2 == 0 {
                (MmioKind::ReadModifyWrite { op: aop, src: Operand::Reg(r), size }, mem)
            } else {
                (MmioKind::AluRead { op: aop, dest: r, size }, mem)
            }
        }
        0x80..=0x83 if !(op == 0x82 && mode == CodeMode::Bits64) => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let (m, mem) = mem_of(&mut cur)?;
            let n = if op == 0x81 { osz.min(4) } else { 1 };
            let v = imm(&mut cur, n, size)?;
            (MmioKind::ReadModifyWrite { op: AluOp::from_index(m.ext), src: Operand::Imm(v), size }, mem)
        }
        0x84..=0x8b => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let (m, mem) = mem_of(&mut cur)?;
            let r = Reg::from_encoding(m.reg, size, rexp);
            let kind = match op {
                0x84 | 0x85 => MmioKind::ReadModifyWrite { op: AluOp::Test, src: Operand::Reg(r), size },
                0x86 | 0x87 => MmioKind::Xchg { reg: r, size },
                0x88 | 0x89 => MmioKind::Write { src: Operand::Reg(r), size },
                _ => MmioKind::Read { dest: r, size, extend: Extend::None },
            };
            (kind, mem)
        }
        0x63 if mode == CodeMode::Bits64 => {
            let (m, mem) = mem_of(&mut cur)?;
            let size = osz.min(4);
            let extend = if osz == 8 { Extend::Sign } else { Extend::None };
            (MmioKind::Read { dest: Reg::new(m.reg, osz), size, extend }, mem)
        }
        0xa0..=0xa3 => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let moffs = cur.le(asz)?;
            let mem = MemOperand {
                seg: p.seg.unwrap_or(Seg::Ds),
                base: None,
                index: None,
                scale: 1,
                disp: moffs as i64,
                rip_relative: false,
                addr_size: asz,
            };
            let r = Reg::new(RAX, size);
            let kind = if op & 2 == 0 {
                MmioKind::Read { dest: r, size, extend: Extend::None }
            } else {
                MmioKind::Write { src: Operand::Reg(r), size }
            };
            (kind, mem)
        }
        0xa4 | 0xa5 | 0xaa | 0xab | 0xac | 0xad => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let sop = match op {
                0xa4 | 0xa5 => StringOp::Movs,
                0xaa | 0xab => StringOp::Stos,
                _ => StringOp::Lods,
            };
            let src_seg = p.seg.unwrap_or(Seg::Ds);
            (
                MmioKind::String { op: sop, size, addr_size: asz, src_seg },
                string_mem(sop != StringOp::Lods),
            )
        }
        0xc6 | 0xc7 => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let m = modrm(&mut cur, mode, &p)?;
            if m.ext != 0 {
                // XABORT/XBEGIN (register forms) or undefined.
                return Err(if m.ext == 7 && m.md == 3 { DecodeError::NotMemory } else { DecodeError::Invalid });
            }
            let mem = m.mem.ok_or(DecodeError::NotMemory)?;
            let v = imm(&mut cur, size.min(4), size)?;
            (MmioKind::Write { src: Operand::Imm(v), size }, mem)
        }
        0xf6 | 0xf7 | 0xfe | 0xff => {
            let size = if op & 1 != 0 { osz } else { 1 };
            let (m, mem) = mem_of(&mut cur)?;
            let kind = match (op, m.ext) {
                (0xf6 | 0xf7, 0 | 1) => {
                    let v = imm(&mut cur, size.min(4), size)?;
                    MmioKind::ReadModifyWrite { op: AluOp::Test, src: Operand::Imm(v), size }
                }
                (0xf6 | 0xf7, 2) => MmioKind::Unary { op: UnaryOp::Not, size },
                (0xf6 | 0xf7, 3) => MmioKind::Unary { op: UnaryOp::Neg, size },
                (0xfe | 0xff, 0) => MmioKind::Unary { op: UnaryOp::Inc, size },
                (0xfe | 0xff, 1) => MmioKind::Unary { op: UnaryOp::Dec, size },
                (0xfe, _) => return Err(DecodeError::Invalid),
                _ => return Err(DecodeError::Unsupported),
            };
            (kind, mem)
        }
        0x0f => {
            let op2 = cur.u8()?;
            match op2 {
                0xb6 | 0xb7 | 0xbe | 0xbf => {
                    let (m, mem) = mem_of(&mut cur)?;
                    let size = if op2 & 1 != 0 { 2 } else { 1 };
                    let extend = if op2 & 8 != 0 { Extend::Sign } else { Extend::Zero };
                    (MmioKind::Read { dest: Reg::new(m.reg, osz), size, extend }, mem)
                }
                0xc3 if !p.opsize && p.rep == Rep::None => {
                    let (m, mem) = mem_of(&mut cur)?;
                    let size = if p.w() { 8 } else { 4 };
                    (MmioKind::Write { src: Operand::Reg(Reg::new(m.reg, size)), size }, mem)
                }
                0xa3 | 0xab | 0xb3 | 0xbb => {
                    let (m, mem) = mem_of(&mut cur)?;
                    let bop = [BitOp::Bt, BitOp::Bts, BitOp::Btr, BitOp::Btc][((op2 >> 3) & 3) as usize];
                    (MmioKind::Bit { op: bop, bit: Operand::Reg(Reg::new(m.reg, osz)), size: osz }, mem)
                }
                0xba => {
                    let (m, mem) = mem_of(&mut cur)?;
                    if m.ext < 4 {
                        return Err(DecodeError::Invalid);
                    }
                    let bop = [BitOp::Bt, BitOp::Bts, BitOp::Btr, BitOp::Btc][(m.ext & 3) as usize];
                    let v = cur.u8()? as u64;
                    (MmioKind::Bit { op: bop, bit: Operand::Imm(v & (osz as u64 * 8 - 1)), size: osz }, mem)
                }
                0x6e if p.opsize && p.rep == Rep::None => {
                    let (m, mem) = mem_of(&mut cur)?;
                    (MmioKind::ReadXmm { xmm: m.reg, size: if p.w() { 8 } else { 4 } }, mem)
                }
                0x7e if p.rep == Rep::Rep => {
                    let (m, mem) = mem_of(&mut cur)?;
                    (MmioKind::ReadXmm { xmm: m.reg, size: 8 }, mem)
                }
                0x7e if p.opsize && p.rep == Rep::None => {
                    let (m, mem) = mem_of(&mut cur)?;
                    (MmioKind::WriteXmm { xmm: m.reg, size: if p.w() { 8 } else { 4 } }, mem)
                }
                0xd6 if p.opsize && p.rep == Rep::None => {
                    let (m, mem) = mem_of(&mut cur)?;
                    (MmioKind::WriteXmm { xmm: m.reg, size: 8 }, mem)
                }
                _ => {
                    // Report the right error for register forms / bad input.
                    return match instruction_length(bytes, mode) {
                        Err(e) => Err(e),
                        Ok(_) => Err(DecodeError::Unsupported),
                    };
                }
            }
        }
        _ => {
            return match instruction_length(bytes, mode) {
                Err(e) => Err(e),
                Ok(_) => Err(DecodeError::Unsupported),
            };
        }
    };
    Ok(MmioOp { kind, mem, len: cur.pos, lock: p.lock, rep: p.rep, mode })
}

impl MmioOp {
    /// Bytes accessed in memory per access (per iteration for strings).
    pub fn access_size(&self) -> u8 {
        match self.kind {
            MmioKind::Read { size, .. }
            | MmioKind::Write { size, .. }
            | MmioKind::ReadModifyWrite { size, .. }
            | MmioKind::AluRead { size, .. }
            | MmioKind::Unary { size, .. }
            | MmioKind::Xchg { size, .. }
            | MmioKind::Bit { size, .. }
            | MmioKind::String { size, .. }
            | MmioKind::ReadXmm { size, .. }
            | MmioKind::WriteXmm { size, .. } => size,
        }
    }

    /// Whether the instruction may write memory (string ops: MOVS/STOS).
    pub fn writes_memory(&self) -> bool {
        match self.kind {
            MmioKind::Write { .. } | MmioKind::Unary { .. } | MmioKind::Xchg { .. } | MmioKind::WriteXmm { .. } => true,
            MmioKind::ReadModifyWrite { op, .. } => op.writes_result(),
            MmioKind::Bit { op, .. } => op != BitOp::Bt,
            MmioKind::String { op, .. } => op != StringOp::Lods,
            MmioKind::Read { .. } | MmioKind::AluRead { .. } | MmioKind::ReadXmm { .. } => false,
        }
    }

    /// The memory operand's offset in its segment (effective address) for
    /// the instruction at `rip`.
    pub fn effective_address(&self, regs: &Regs, rip: u64) -> u64 {
        self.mem.offset(regs, rip.wrapping_add(self.len as u64))
    }

    /// `seg_base + effective address`, wrapped to 32 bits outside 64-bit
    /// mode. The caller supplies the base of `self.mem.seg` (0 in 64-bit
    /// mode except FS/GS).
    pub fn linear_address(&self, regs: &Regs, rip: u64, seg_base: u64) -> u64 {
        let a = seg_base.wrapping_add(self.effective_address(regs, rip));
        if self.mode == CodeMode::Bits64 {
            a
        } else {
            a & 0xffff_ffff
        }
    }

    /// The signed step of rSI/rDI per string iteration: ±size by RFLAGS.DF.
    pub fn string_step(&self, rflags: u64) -> i64 {
        let s = self.access_size() as i64;
        if rflags & FLAG_DF != 0 {
            -s
        } else {
            s
        }
    }

    /// Perform the access against `bus` and write registers/RFLAGS back.
    /// RIP is not advanced (add [`MmioOp::len`]). String and XMM forms
    /// return [`DecodeError::Unsupported`] without touching anything: the
    /// caller handles them with its own address translation / FPU state.
    pub fn execute<B: MmioBus + ?Sized>(&self, regs: &mut Regs, rflags: &mut u64, bus: &mut B) -> Result<(), DecodeError> {
        let val = |regs: &Regs, o: Operand| match o {
            Operand::Reg(r) => regs.read(r),
            Operand::Imm(v) => v,
        };
        match self.kind {
            MmioKind::Read { dest, size, extend } => {
                let v = bus.read(size) & size_mask(size);
                let v = if extend == Extend::Sign { sign_extend(v, size) } else { v };
                regs.write(dest, v);
            }
            MmioKind::Write { src, size } => bus.write(size, val(regs, src) & size_mask(size)),
            MmioKind::ReadModifyWrite { op, src, size } => {
                let m = bus.read(size);
                let (r, f) = alu(op, m, val(regs, src), size, *rflags);
                if op.writes_result() {
                    bus.write(size, r);
                }
                *rflags = f;
            }
            MmioKind::AluRead { op, dest, size } => {
                let m = bus.read(size);
                let (r, f) = alu(op, regs.read(dest), m, size, *rflags);
                if op.writes_result() {
                    regs.write(dest, r);
                }
                *rflags = f;
            }
            MmioKind::Unary { op, size } => {
                let m = bus.read(size) & size_mask(size);
                let (r, f) = unary(op, m, size, *rflags);
                bus.write(size, r);
                *rflags = f;
            }
            MmioKind::Xchg { reg, size } => {
                let m = bus.read(size) & size_mask(size);
                bus.write(size, regs.read(reg));
                regs.write(reg, m);
            }
            MmioKind::Bit { op, bit, size } => {
                let n = val(regs, bit) & (size as u64 * 8 - 1);
                let m = bus.read(size) & size_mask(size);
                let set = (m >> n) & 1 != 0;
                let r = match op {
                    BitOp::Bt => m,
                    BitOp::Bts => m | (1 << n),
                    BitOp::Btr => m & !(1 << n),
                    BitOp::Btc => m ^ (1 << n),
                };
                if op != BitOp::Bt {
                    bus.write(size, r);
                }
                *rflags = (*rflags & !FLAG_CF) | set as u64;
            }
            MmioKind::String { .. } | MmioKind::ReadXmm { .. } | MmioKind::WriteXmm { .. } => {
                return Err(DecodeError::Unsupported)
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- length

/// Size of a near-branch displacement: z-sized, except that in 64-bit
/// mode it is 32 bits unless a 66 prefix makes it 16 (AMD behaviour; Intel
/// ignores 66 there - compilers never emit it).
fn rel_z(mode: CodeMode, p: &Prefixes) -> u8 {
    if mode == CodeMode::Bits64 {
        if p.opsize {
            2
        } else {
            4
        }
    } else {
        op_size(mode, p).min(4)
    }
}

/// The length of the instruction at the start of `bytes`, for the one-
/// byte map, the 0F, 0F 38 and 0F 3A maps, 3DNow!, VEX, EVEX and XOP.
/// Opcodes that are #UD in `mode` give [`DecodeError::Invalid`]; LOCK
/// validity and the other #UD conditions (e.g. VEX after a 66/REX prefix)
/// are not checked.
pub fn instruction_length(bytes: &[u8], mode: CodeMode) -> Result<usize, DecodeError> {
    let mut cur = Cur { b: bytes, pos: 0 };
    let p = prefixes(&mut cur, mode)?;
    let osz = op_size(mode, &p);
    let asz = addr_size(mode, &p);
    let is64 = mode == CodeMode::Bits64;
    let z = osz.min(4);
    let op = cur.u8()?;

    // (has ModRM, immediate bytes)
    let (has_modrm, imm): (bool, u8) = match op {
        0x0f => return two_byte(&mut cur, mode, &p).map(|()| cur.pos),
        0xc4 | 0xc5 | 0x62 if is64 || cur.peek_at(0)? >> 6 == 3 => {
            return vex_like(&mut cur, mode, &p, op).map(|()| cur.pos)
        }
        0x8f if cur.peek_at(0)? & 0x1f >= 8 => return vex_like(&mut cur, mode, &p, op).map(|()| cur.pos),
        0x8f => {
            if (cur.peek_at(0)? >> 3) & 7 != 0 {
                return Err(DecodeError::Invalid);
            }
            (true, 0)
        }
        0x06 | 0x07 | 0x0e | 0x16 | 0x17 | 0x1e | 0x1f | 0x27 | 0x2f | 0x37 | 0x3f | 0x60 | 0x61 | 0x82 | 0x9a
        | 0xc4 | 0xc5 | 0x62 | 0xce | 0xd4 | 0xd5 | 0xd6 | 0xea
            if is64 =>
        {
            return Err(DecodeError::Invalid)
        }
        0xd6 => (false, 0), // SALC
        0x00..=0x3f => match op & 7 {
            0..=3 => (true, 0),
            4 => (false, 1),
            5 => (false, z),
            _ => (false, 0),
        },
        0x40..=0x61 => (false, 0),
        0x62 | 0x63 => (true, 0),
        0x68 => (false, z),
        0x69 => (true, z),
        0x6a => (false, 1),
        0x6b => (true, 1),
        0x6c..=0x6f => (false, 0),
        0x70..=0x7f => (false, 1),
        0x80 | 0x82 | 0x83 => (true, 1),
        0x81 => (true, z),
        0x84..=0x8e => (true, 0),
        0x90..=0x99 => (false, 0),
        0x9a | 0xea => (false, z + 2),
        0x9b..=0x9f => (false, 0),
        0xa0..=0xa3 => (false, asz),
        0xa4..=0xa7 | 0xaa..=0xaf => (false, 0),
        0xa8 => (false, 1),
        0xa9 => (false, z),
        0xb0..=0xb7 => (false, 1),
        0xb8..=0xbf => (false, if is64 && p.w() { 8 } else { z }),
        0xc0 | 0xc1 => (true, 1),
        0xc2 | 0xca => (false, 2),
        0xc3 | 0xc9 | 0xcb | 0xcc | 0xce | 0xcf => (false, 0),
        0xc4 | 0xc5 => (true, 0), // LES/LDS
        0xc6 => (true, 1),
        0xc7 => (true, z),
        0xc8 => (false, 3),
        0xcd | 0xd4 | 0xd5 => (false, 1),
        0xd0..=0xd3 | 0xd8..=0xdf => (true, 0),
        0xd7 => (false, 0),
        0xe0..=0xe7 | 0xeb => (false, 1),
        0xe8 | 0xe9 => (false, rel_z(mode, &p)),
        0xec..=0xef | 0xf1 | 0xf4 | 0xf5 | 0xf8..=0xfd => (false, 0),
        0xf6 | 0xf7 => {
            let ext = (cur.peek_at(0)? >> 3) & 7;
            let n = if op == 0xf6 { 1 } else { z };
            (true, if ext < 2 { n } else { 0 })
        }
        0xfe | 0xff => (true, 0),
        // Prefix bytes never reach here; 0x26.. are matched above.
        _ => return Err(DecodeError::Invalid),
    };
    if has_modrm {
        modrm(&mut cur, mode, &p)?;
    }
    cur.skip(imm)?;
    Ok(cur.pos)
}

fn two_byte(cur: &mut Cur, mode: CodeMode, p: &Prefixes) -> Result<(), DecodeError> {
    let op = cur.u8()?;
    let (has_modrm, imm): (bool, u8) = match op {
        0x00..=0x03 | 0x0d | 0x10..=0x1f | 0x28..=0x2f | 0x40..=0x6f | 0x74..=0x76 | 0x79 | 0x7c..=0x7f => (true, 0),
        0x05..=0x09 | 0x0b | 0x0e | 0x30..=0x35 | 0x37 | 0x77 => (false, 0),
        0x0f => (true, 1), // 3DNow!: the opcode follows as an immediate byte
        0x20..=0x23 => {
            // MOV to/from CRn/DRn: the mod field is ignored (always register).
            cur.skip(1)?;
            return Ok(());
        }
        0x38 => {
            cur.u8()?;
            (true, 0)
        }
        0x3a => {
            cur.u8()?;
            (true, 1)
        }
        0x70..=0x73 => (true, 1),
        // SSE4a EXTRQ/INSERTQ take two immediate bytes; plain 0F 78 is VMREAD.
        0x78 => (true, if p.opsize || p.rep == Rep::Repne { 2 } else { 0 }),
        0x80..=0x8f => (false, rel_z(mode, p)),
        0x90..=0x9f => (true, 0),
        0xa0..=0xa2 | 0xa8..=0xaa => (false, 0),
        0xa3 | 0xa5 | 0xab | 0xad..=0xaf => (true, 0),
        0xa4 | 0xac => (true, 1),
        0xb8 if p.rep != Rep::Rep => return Err(DecodeError::Invalid),
        0xba => (true, 1),
        0xb0..=0xbf => (true, 0),
        0xc0 | 0xc1 | 0xc3 | 0xc7 => (true, 0),
        0xc2 | 0xc4..=0xc6 => (true, 1),
        0xc8..=0xcf => (false, 0),
        0xd0..=0xff => (true, 0),
        _ => return Err(DecodeError::Invalid),
    };
    if has_modrm {
        modrm(cur, mode, p)?;
    }
    cur.skip(imm)
}

/// VEX (C4/C5), EVEX (62) and XOP (8F); `cur` is just past that byte.
fn vex_like(cur: &mut Cur, mode: CodeMode, p: &Prefixes, first: u8) -> Result<(), DecodeError> {
    let map = match first {
        0xc5 => {
            cur.u8()?;
            1
        }
        0xc4 | 0x8f => {
            let b1 = cur.u8()?;
            cur.u8()?;
            b1 & 0x1f
        }
        _ => {
            let p0 = cur.u8()?;
            cur.u8()?;
            cur.u8()?;
            (p0 & 7) | 0x20 // EVEX maps, tagged
        }
    };
    let op = cur.u8()?;
    let imm = match (first, map) {
        (0x8f, 8) => 1,
        (0x8f, 9) => 0,
        (0x8f, 0xa) => 4,
        (0x8f, _) => return Err(DecodeError::Invalid),
        (_, 1 | 0x21) => {
            if op == 0x77 && first != 0x62 {
                // VZEROUPPER / VZEROALL: no ModRM.
                return Ok(());
            }
            u8::from(matches!(op, 0x70..=0x73 | 0xc2 | 0xc4..=0xc6))
        }
        (_, 2 | 0x22 | 0x25 | 0x26) => 0,
        (_, 3 | 0x23) => 1,
        _ => return Err(DecodeError::Invalid),
    };
    // Under VEX/EVEX/XOP the register-extension bits are in the prefix;
    // only the length matters here, so decode ModRM with an empty REX.
    let np = Prefixes { rex: 0, ..*p };
    modrm(cur, mode, &np)?;
    cur.skip(imm)
}

mod cr_write;
#[cfg(test)]
mod tests;

pub use cr_write::{decode_cr_write, CrWrite, CrWriteOp};

/// The segment-override prefix of the instruction in `bytes`, if any (the
/// last one given counts). For OUTS, whose source segment the CPU reports
/// only with decode assists.
pub fn segment_override(bytes: &[u8], mode: CodeMode) -> Result<Option<Seg>, DecodeError> {
    let mut cur = Cur { b: bytes, pos: 0 };
    Ok(prefixes(&mut cur, mode)?.seg)
}
