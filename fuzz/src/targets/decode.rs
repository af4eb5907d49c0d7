//! `decode`: x86 instruction lengths, MMIO decoding and emulation,
//! control-register writes (`ferrite_x86::decode`). Input: the code mode
//! (first byte), then the instruction bytes.
//!
//! Properties: a length is 1 to 15 bytes and within the input; it is the
//! same with the bytes after the instruction cut off, and every shorter
//! prefix is `Truncated`; `decode_mmio` and `decode_cr_write` agree with
//! `instruction_length` (length, truncation, too long); operands are
//! well-formed for the mode (scale, address size, register numbers,
//! RIP-relative only in 64-bit mode); emulation touches the device at most
//! once each way, with the instruction's access size, writes only values
//! of that size and only for forms that write, and leaves string and XMM
//! forms alone.

use super::{le, Target};
use ferrite_x86::decode::{self, CodeMode, DecodeError, MmioBus, MmioKind, MmioOp};
use ferrite_x86::regs::{size_mask, Regs};

pub const DECODE: Target = Target {
    name: "decode",
    about: "instruction length, MMIO decode and emulation, CR-write decode: lengths 1..=15 and prefix-stable, decoders agree, operands well-formed, emulation's device accesses sized and counted",
    max_len: 24,
    seeds: || {
        [
            "02 89 07",
            "02 4f 89 3c e0",
            "02 66 44 89 8a 00 03 00 00",
            "02 48 a3 88 77 66 55 44 33 22 11",
            "02 f0 83 0c 24 00",
            "02 f3 48 a5",
            "02 66 0f 7e 00",
            "02 0f 22 d8",
            "01 8b 05 00 00 e0 fe",
            "01 0f 01 30",
            "00 67 66 c7 04 24 34 12 78 56",
            "00 26 8a 07",
            "02 c4 e2 79 18 00",
            "02 0f ab 08",
        ]
        .iter()
        .map(|s| s.split(' ').map(|b| u8::from_str_radix(b, 16).unwrap()).collect())
        .collect()
    },
    dictionary: &[b"\x66", b"\x67", b"\xf0", b"\xf2", b"\xf3", b"\x2e", b"\x64", b"\x48", b"\x4c", b"\x41", b"\x0f", b"\x0f\x38", b"\x0f\x3a", b"\xc4", b"\xc5", b"\x62", b"\x8f", b"\x24", b"\x05"],
    run,
};

/// A device that checks how the emulation uses it.
struct CheckedBus {
    size: u8,
    value: u64,
    reads: u32,
    writes: u32,
}

impl MmioBus for CheckedBus {
    fn read(&mut self, size: u8) -> u64 {
        assert_eq!(size, self.size, "device read size");
        self.reads += 1;
        self.value
    }

    fn write(&mut self, size: u8, value: u64) {
        assert_eq!(size, self.size, "device write size");
        assert_eq!(value & !size_mask(size), 0, "a {size}-byte write of {value:#x}");
        self.writes += 1;
    }
}

fn run(input: &[u8]) {
    let mode = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64][le(input, 0, 1) as usize % 3];
    let bytes = input.get(1..).unwrap_or(&[]);
    let len = decode::instruction_length(bytes, mode);
    if let Ok(l) = len {
        assert!((1..=15).contains(&l) && l <= bytes.len(), "length {l} of {} bytes", bytes.len());
        assert_eq!(decode::instruction_length(&bytes[..l], mode), Ok(l), "length changes when the tail is cut");
        for k in 0..l {
            assert_eq!(decode::instruction_length(&bytes[..k], mode), Err(DecodeError::Truncated), "{k} of {l} bytes");
        }
        decode::segment_override(bytes, mode).expect("prefixes of a decodable instruction");
    }

    match decode::decode_mmio(bytes, mode) {
        Ok(op) => {
            assert_eq!(Ok(op.len), len, "decode_mmio and instruction_length disagree");
            assert_eq!(op.mode, mode);
            check_operands(&op, mode);
            check_execute(&op, input);
        }
        Err(e @ (DecodeError::Truncated | DecodeError::TooLong)) => assert_eq!(len, Err(e), "decode_mmio says {e:?}"),
        Err(_) => {}
    }

    match decode::decode_cr_write(bytes, mode) {
        Ok(w) => {
            assert_eq!(Ok(w.len), len, "decode_cr_write and instruction_length disagree");
            if let decode::CrWriteOp::LmswMem(m) = w.op {
                check_mem(&m, mode);
            }
            assert!(w.cr() < 16);
        }
        Err(e @ (DecodeError::Truncated | DecodeError::TooLong)) => assert_eq!(len, Err(e), "decode_cr_write says {e:?}"),
        Err(_) => {}
    }
}

fn check_mem(m: &decode::MemOperand, mode: CodeMode) {
    assert!([1, 2, 4, 8].contains(&m.scale), "scale {}", m.scale);
    let regs = if mode == CodeMode::Bits64 { 16 } else { 8 };
    assert!(m.base.is_none_or(|b| b < regs) && m.index.is_none_or(|i| i < regs), "{m:?}");
    match mode {
        CodeMode::Bits64 => assert!(m.addr_size == 8 || m.addr_size == 4, "{m:?}"),
        _ => assert!((m.addr_size == 2 || m.addr_size == 4) && !m.rip_relative, "{m:?}"),
    }
}

fn check_operands(op: &MmioOp, mode: CodeMode) {
    check_mem(&op.mem, mode);
    let size = op.access_size();
    assert!([1, 2, 4, 8].contains(&size), "access size {size} of {op:?}");
    if let MmioKind::Read { dest, size, .. } = op.kind {
        assert!(dest.size >= size, "{op:?}");
    }
}

fn check_execute(op: &MmioOp, input: &[u8]) {
    let mut regs = Regs::default();
    for (i, r) in regs.gprs.iter_mut().enumerate() {
        *r = 0x0123_4567_89ab_cdefu64.rotate_left(i as u32 * 8) ^ le(input, 1 + i, 1);
    }
    let before = regs;
    let mut rflags = 0x2 | (le(input, 2, 1) & 0x8d5);
    let flags_before = rflags;
    let mut bus = CheckedBus { size: op.access_size(), value: 0xfedc_ba98_7654_3210 & size_mask(op.access_size()), reads: 0, writes: 0 };
    let result = op.execute(&mut regs, &mut rflags, &mut bus);
    assert!(bus.reads <= 1 && bus.writes <= 1, "{} reads and {} writes for {op:?}", bus.reads, bus.writes);
    if bus.writes > 0 {
        assert!(op.writes_memory(), "{op:?} wrote memory");
    }
    if matches!(op.kind, MmioKind::String { .. } | MmioKind::ReadXmm { .. } | MmioKind::WriteXmm { .. }) {
        assert_eq!(result, Err(DecodeError::Unsupported));
        assert_eq!((bus.reads, bus.writes), (0, 0));
        assert!(regs == before && rflags == flags_before, "an unsupported form changed state");
    }
}
