use super::*;
use crate::regs::*;
use CodeMode::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn dec(mode: CodeMode, s: &str) -> MmioOp {
    let b = hex(s);
    let op = decode_mmio(&b, mode).unwrap_or_else(|e| panic!("{s}: {e:?}"));
    assert_eq!(op.len, b.len(), "{s}: length");
    assert_eq!(instruction_length(&b, mode), Ok(b.len()), "{s}: instruction_length");
    op
}

fn r(i: u8, size: u8) -> Reg {
    Reg::new(i, size)
}
fn hi(i: u8) -> Reg {
    Reg { index: i, size: 1, high8: true }
}
fn mem(seg: Seg, base: Option<u8>, index: Option<u8>, scale: u8, disp: i64, asz: u8) -> MemOperand {
    MemOperand { seg, base, index, scale, disp, rip_relative: false, addr_size: asz }
}

use MmioKind::*;
use Operand::Imm;

// Encodings produced by GNU as 2.40 (see the comment on each line).
#[test]
fn mov_forms_64() {
    let t: &[(&str, MmioKind)] = &[
        ("89 07", Write { src: Operand::Reg(r(RAX, 4)), size: 4 }),                 // mov %eax,(%rdi)
        ("88 43 10", Write { src: Operand::Reg(r(RAX, 1)), size: 1 }),              // mov %al,0x10(%rbx)
        ("88 26", Write { src: Operand::Reg(hi(RAX)), size: 1 }),                   // mov %ah,(%rsi)
        ("40 88 36", Write { src: Operand::Reg(r(RSI, 1)), size: 1 }),              // mov %sil,(%rsi)
        ("66 44 89 8a 00 03 00 00", Write { src: Operand::Reg(r(R9, 2)), size: 2 }), // mov %r9w,0x300(%rdx)
        ("4f 89 3c e0", Write { src: Operand::Reg(r(R15, 8)), size: 8 }),           // mov %r15,(%r8,%r12,8)
        ("8b 0f", Read { dest: r(RCX, 4), size: 4, extend: Extend::None }),         // mov (%rdi),%ecx
        ("8a 3c 24", Read { dest: hi(RBX), size: 1, extend: Extend::None }),        // mov (%rsp),%bh
        ("44 8a 55 fc", Read { dest: r(R10, 1), size: 1, extend: Extend::None }),   // mov -4(%rbp),%r10b
        ("4c 8b 18", Read { dest: r(R11, 8), size: 8, extend: Extend::None }),      // mov (%rax),%r11
        ("c7 81 b0 00 00 00 78 56 34 12", Write { src: Imm(0x12345678), size: 4 }), // movl $0x12345678,0xb0(%rcx)
        ("48 c7 00 ff ff ff ff", Write { src: Imm(u64::MAX), size: 8 }),            // movq $-1,(%rax)
        ("66 c7 00 ef be", Write { src: Imm(0xbeef), size: 2 }),                    // movw $0xbeef,(%rax)
        ("c6 00 80", Write { src: Imm(0x80), size: 1 }),                            // movb $0x80,(%rax)
        ("0f b6 10", Read { dest: r(RDX, 4), size: 1, extend: Extend::Zero }),      // movzbl (%rax),%edx
        ("4c 0f b7 40 02", Read { dest: r(R8, 8), size: 2, extend: Extend::Zero }), // movzwq 2(%rax),%r8
        ("66 0f be 10", Read { dest: r(RDX, 2), size: 1, extend: Extend::Sign }),   // movsbw (%rax),%dx
        ("0f bf 08", Read { dest: r(RCX, 4), size: 2, extend: Extend::Sign }),      // movswl (%rax),%ecx
        ("48 63 08", Read { dest: r(RCX, 8), size: 4, extend: Extend::Sign }),      // movslq (%rax),%rcx
        ("a1 b0 00 e0 fe 00 00 00 00", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }), // movabs 0xfee000b0,%eax
        ("a2 00 00 e0 fe 00 00 00 00", Write { src: Operand::Reg(r(RAX, 1)), size: 1 }), // movabs %al,0xfee00000
        ("48 a3 88 77 66 55 44 33 22 11", Write { src: Operand::Reg(r(RAX, 8)), size: 8 }), // movabs %rax,0x1122334455667788
        ("64 8b 00", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }),      // mov %fs:(%rax),%eax
        ("0f c3 02", Write { src: Operand::Reg(r(RAX, 4)), size: 4 }),              // movnti %eax,(%rdx)
        ("67 8b 00", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }),      // mov (%eax),%eax
        ("8b 04 85 78 56 34 12", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }), // mov 0x12345678(,%rax,4),%eax
        ("41 8b 45 7f", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }),   // mov 0x7f(%r13),%eax
        ("41 8b 04 24", Read { dest: r(RAX, 4), size: 4, extend: Extend::None }),   // mov (%r12),%eax
    ];
    for (s, k) in t {
        assert_eq!(dec(Bits64, s).kind, *k, "{s}");
    }
}

#[test]
fn alu_and_misc_forms_64() {
    let t: &[(&str, MmioKind)] = &[
        ("81 88 f0 00 00 00 00 01 00 00", ReadModifyWrite { op: AluOp::Or, src: Imm(0x100), size: 4 }), // orl $0x100,0xf0(%rax)
        ("83 27 fe", ReadModifyWrite { op: AluOp::And, src: Imm(0xffff_fffe), size: 4 }), // andl $-2,(%rdi)
        ("80 03 03", ReadModifyWrite { op: AluOp::Add, src: Imm(3), size: 1 }),    // addb $3,(%rbx)
        ("29 0a", ReadModifyWrite { op: AluOp::Sub, src: Operand::Reg(r(RCX, 4)), size: 4 }), // sub %ecx,(%rdx)
        ("4c 33 48 08", AluRead { op: AluOp::Xor, dest: r(R9, 8), size: 8 }),     // xor 8(%rax),%r9
        ("83 38 05", ReadModifyWrite { op: AluOp::Cmp, src: Imm(5), size: 4 }),    // cmpl $5,(%rax)
        ("f6 00 01", ReadModifyWrite { op: AluOp::Test, src: Imm(1), size: 1 }),   // testb $1,(%rax)
        ("85 03", ReadModifyWrite { op: AluOp::Test, src: Operand::Reg(r(RAX, 4)), size: 4 }), // test %eax,(%rbx)
        ("f0 83 0c 24 00", ReadModifyWrite { op: AluOp::Or, src: Imm(0), size: 4 }), // lock orl $0,(%rsp)
        ("87 02", Xchg { reg: r(RAX, 4), size: 4 }),                               // xchg %eax,(%rdx)
        ("86 0a", Xchg { reg: r(RCX, 1), size: 1 }),                               // xchg (%rdx),%cl
        ("0f ba 28 05", Bit { op: BitOp::Bts, bit: Imm(5), size: 4 }),             // btsl $5,(%rax)
        ("0f a3 08", Bit { op: BitOp::Bt, bit: Operand::Reg(r(RCX, 4)), size: 4 }), // bt %ecx,(%rax)
        ("ff 00", Unary { op: UnaryOp::Inc, size: 4 }),                            // incl (%rax)
        ("66 ff 08", Unary { op: UnaryOp::Dec, size: 2 }),                         // decw (%rax)
        ("f6 10", Unary { op: UnaryOp::Not, size: 1 }),                            // notb (%rax)
        ("48 f7 18", Unary { op: UnaryOp::Neg, size: 8 }),                         // negq (%rax)
        ("66 0f 7e 08", WriteXmm { xmm: 1, size: 4 }),                             // movd %xmm1,(%rax)
        ("f3 0f 7e 10", ReadXmm { xmm: 2, size: 8 }),                              // movq (%rax),%xmm2
        ("66 0f d6 18", WriteXmm { xmm: 3, size: 8 }),                             // movq %xmm3,(%rax)
        ("66 44 0f 6e 08", ReadXmm { xmm: 9, size: 4 }),                           // movd (%rax),%xmm9
        ("f3 ab", String { op: StringOp::Stos, size: 4, addr_size: 8, src_seg: Seg::Ds }), // rep stosl
        ("f3 a4", String { op: StringOp::Movs, size: 1, addr_size: 8, src_seg: Seg::Ds }), // rep movsb
        ("48 a5", String { op: StringOp::Movs, size: 8, addr_size: 8, src_seg: Seg::Ds }), // movsq
        ("66 ad", String { op: StringOp::Lods, size: 2, addr_size: 8, src_seg: Seg::Ds }), // lodsw
    ];
    for (s, k) in t {
        assert_eq!(dec(Bits64, s).kind, *k, "{s}");
    }
    assert!(dec(Bits64, "f0 83 0c 24 00").lock);
    assert_eq!(dec(Bits64, "f3 ab").rep, Rep::Rep);
    assert_eq!(dec(Bits64, "48 a5").rep, Rep::None);
    assert_eq!(dec(Bits64, "f3 ab").mem, mem(Seg::Es, Some(RDI), None, 1, 0, 8));
    assert_eq!(dec(Bits64, "66 ad").mem, mem(Seg::Ds, Some(RSI), None, 1, 0, 8));
}

#[test]
fn memory_operands_64() {
    assert_eq!(dec(Bits64, "88 43 10").mem, mem(Seg::Ds, Some(RBX), None, 1, 0x10, 8));
    assert_eq!(dec(Bits64, "4f 89 3c e0").mem, mem(Seg::Ds, Some(R8), Some(R12), 8, 0, 8));
    assert_eq!(dec(Bits64, "8a 3c 24").mem, mem(Seg::Ss, Some(RSP), None, 1, 0, 8));
    assert_eq!(dec(Bits64, "44 8a 55 fc").mem, mem(Seg::Ss, Some(RBP), None, 1, -4, 8));
    assert_eq!(dec(Bits64, "41 8b 45 7f").mem, mem(Seg::Ds, Some(R13), None, 1, 0x7f, 8));
    assert_eq!(dec(Bits64, "41 8b 04 24").mem, mem(Seg::Ds, Some(R12), None, 1, 0, 8));
    assert_eq!(dec(Bits64, "8b 04 85 78 56 34 12").mem, mem(Seg::Ds, None, Some(RAX), 4, 0x12345678, 8));
    assert_eq!(dec(Bits64, "64 8b 00").mem.seg, Seg::Fs);
    assert_eq!(dec(Bits64, "67 8b 00").mem.addr_size, 4);
    let m = dec(Bits64, "a1 b0 00 e0 fe 00 00 00 00").mem;
    assert_eq!(m, mem(Seg::Ds, None, None, 1, 0xfee000b0, 8));

    let mut regs = Regs::default();
    regs.set(RBX, 0xfee0_0000);
    regs.set(R8, 0x1000);
    regs.set(R12, 3);
    regs.set(RAX, 0x10);
    let op = dec(Bits64, "88 43 10");
    assert_eq!(op.effective_address(&regs, 0), 0xfee0_0010);
    assert_eq!(dec(Bits64, "4f 89 3c e0").effective_address(&regs, 0), 0x1018);
    assert_eq!(dec(Bits64, "8b 04 85 78 56 34 12").effective_address(&regs, 0), 0x12345678 + 0x40);
    // RIP-relative: relative to the next instruction.
    let op = dec(Bits64, "8b 05 20 00 00 00");
    assert!(op.mem.rip_relative);
    assert_eq!(op.effective_address(&regs, 0x1000), 0x1000 + 6 + 0x20);
    // addr32 wraps to 32 bits.
    regs.set(RAX, 0x1_ffff_fff0);
    assert_eq!(dec(Bits64, "67 8b 00").effective_address(&regs, 0), 0xffff_fff0);
    // Linear address with an FS base.
    regs.set(RAX, 0x10);
    assert_eq!(dec(Bits64, "64 8b 00").linear_address(&regs, 0, 0x7000_0000), 0x7000_0010);
}

#[test]
fn forms_32_and_16() {
    let op = dec(Bits32, "a3 b0 00 e0 fe"); // mov %eax,0xfee000b0
    assert_eq!(op.kind, Write { src: Operand::Reg(r(RAX, 4)), size: 4 });
    assert_eq!(op.mem, mem(Seg::Ds, None, None, 1, 0xfee000b0, 4));
    let op = dec(Bits32, "a1 10 00 c0 fe"); // mov 0xfec00010,%eax
    assert_eq!(op.kind, Read { dest: r(RAX, 4), size: 4, extend: Extend::None });
    let op = dec(Bits32, "89 14 b3"); // mov %edx,(%ebx,%esi,4)
    assert_eq!(op.mem, mem(Seg::Ds, Some(RBX), Some(RSI), 4, 0, 4));
    let op = dec(Bits32, "66 c7 45 08 34 12"); // movw $0x1234,8(%ebp)
    assert_eq!(op.kind, Write { src: Imm(0x1234), size: 2 });
    assert_eq!(op.mem.seg, Seg::Ss);
    let op = dec(Bits32, "8a 4c 24 12"); // mov 0x12(%esp),%cl
    assert_eq!(op.kind, Read { dest: r(RCX, 1), size: 1, extend: Extend::None });
    assert_eq!(op.mem, mem(Seg::Ss, Some(RSP), None, 1, 0x12, 4));
    // 0x40-0x4f are INC/DEC outside 64-bit mode, not REX.
    assert_eq!(decode_mmio(&hex("48 8b 00"), Bits32), Err(DecodeError::Unsupported));
    assert_eq!(instruction_length(&hex("48 8b 00"), Bits32), Ok(1));
    // 32-bit mode: disp32 with mod=0 rm=5 is absolute, not RIP-relative.
    let op = dec(Bits32, "8b 05 b0 00 e0 fe");
    assert!(!op.mem.rip_relative);
    assert_eq!(op.effective_address(&Regs::default(), 0x1234), 0xfee000b0);
    let mut regs = Regs::default();
    regs.set(RAX, 0xffff_ffff_0000_0010);
    assert_eq!(dec(Bits32, "8b 00").effective_address(&regs, 0), 0x10);

    let op = dec(Bits16, "89 00"); // mov %ax,(%bx,%si)
    assert_eq!(op.kind, Write { src: Operand::Reg(r(RAX, 2)), size: 2 });
    assert_eq!(op.mem, mem(Seg::Ds, Some(RBX), Some(RSI), 1, 0, 2));
    let op = dec(Bits16, "8a 46 02"); // mov 2(%bp),%al
    assert_eq!(op.mem, mem(Seg::Ss, Some(RBP), None, 1, 2, 2));
    let op = dec(Bits16, "a1 34 12"); // mov 0x1234,%ax
    assert_eq!(op.kind, Read { dest: r(RAX, 2), size: 2, extend: Extend::None });
    assert_eq!(op.mem.disp, 0x1234);
    let op = dec(Bits16, "66 89 05"); // mov %eax,(%di)
    assert_eq!(op.kind, Write { src: Operand::Reg(r(RAX, 4)), size: 4 });
    assert_eq!(op.mem, mem(Seg::Ds, Some(RDI), None, 1, 0, 2));
    let op = dec(Bits16, "67 8b 18"); // mov (%eax),%bx
    assert_eq!(op.kind, Read { dest: r(RBX, 2), size: 2, extend: Extend::None });
    assert_eq!(op.mem, mem(Seg::Ds, Some(RAX), None, 1, 0, 4));
    let op = dec(Bits16, "c6 43 fd 05"); // movb $5,-3(%bp,%di)
    assert_eq!(op.kind, Write { src: Imm(5), size: 1 });
    assert_eq!(op.mem, mem(Seg::Ss, Some(RBP), Some(RDI), 1, -3, 2));
    let op = dec(Bits16, "8b 36 00 b0"); // mov 0xb000,%si  (mod=0 rm=6: disp16)
    assert_eq!(op.mem, mem(Seg::Ds, None, None, 1, -0x5000, 2));
    assert_eq!(op.effective_address(&Regs::default(), 0), 0xb000);
    let mut regs = Regs::default();
    regs.set(RBX, 0xfff0);
    regs.set(RSI, 0x20);
    assert_eq!(dec(Bits16, "89 00").effective_address(&regs, 0), 0x10); // wraps at 64 KiB
    assert_eq!(dec(Bits16, "89 00").linear_address(&regs, 0, 0x000f_0000), 0xf_0010);
}

#[test]
fn prefix_rules() {
    // REX followed by a legacy prefix is ignored: 48 66 89 07 = mov %ax,(%rdi).
    let op = dec(Bits64, "48 66 89 07");
    assert_eq!(op.kind, Write { src: Operand::Reg(r(RAX, 2)), size: 2 });
    // REX.W wins over 66.
    assert_eq!(dec(Bits64, "66 48 89 07").kind, Write { src: Operand::Reg(r(RAX, 8)), size: 8 });
    // Last segment override wins; 2e/3e etc are still reported.
    assert_eq!(dec(Bits64, "2e 65 8b 00").mem.seg, Seg::Gs);
    assert_eq!(dec(Bits32, "26 8b 00").mem.seg, Seg::Es);
    // REP/REPNE: the last wins.
    assert_eq!(dec(Bits32, "f3 f2 aa").rep, Rep::Repne);
    assert_eq!(dec(Bits32, "f3 aa").kind, String { op: StringOp::Stos, size: 1, addr_size: 4, src_seg: Seg::Ds });
    // Segment override applies to the rSI side of MOVS only.
    let op = dec(Bits32, "64 a5");
    assert_eq!(op.kind, String { op: StringOp::Movs, size: 4, addr_size: 4, src_seg: Seg::Fs });
    assert_eq!(op.mem.seg, Seg::Es);
    assert_eq!(op.string_step(0), 4);
    assert_eq!(op.string_step(FLAG_DF), -4);
    assert_eq!(dec(Bits16, "67 a5").kind, String { op: StringOp::Movs, size: 2, addr_size: 4, src_seg: Seg::Ds });
    // REX.B/X/R everywhere.
    assert_eq!(dec(Bits64, "43 89 04 0c").mem, mem(Seg::Ds, Some(R12), Some(R9), 1, 0, 8));
    // Index 4 without REX.X means no index, with it r12.
    assert_eq!(dec(Bits64, "8b 04 20").mem, mem(Seg::Ds, Some(RAX), None, 1, 0, 8));
    assert_eq!(dec(Bits64, "42 8b 04 20").mem, mem(Seg::Ds, Some(RAX), Some(R12), 1, 0, 8));
    // 16-bit operand moffs in 32-bit with addr16.
    let op = dec(Bits32, "67 a1 34 12");
    assert_eq!(op.mem, mem(Seg::Ds, None, None, 1, 0x1234, 2));
}

#[test]
fn errors() {
    use DecodeError::*;
    assert_eq!(decode_mmio(&hex("89 c0"), Bits64), Err(NotMemory)); // mov %eax,%eax
    assert_eq!(decode_mmio(&hex("0f b6 c0"), Bits64), Err(NotMemory));
    assert_eq!(decode_mmio(&hex("0f a2"), Bits64), Err(Unsupported)); // cpuid
    assert_eq!(decode_mmio(&hex("ff 30"), Bits64), Err(Unsupported)); // push (%rax)
    assert_eq!(decode_mmio(&hex("a6"), Bits64), Err(Unsupported)); // cmpsb
    assert_eq!(decode_mmio(&hex("c5 f9 7e 00"), Bits64), Err(Unsupported)); // vmovd %xmm0,(%rax)
    assert_eq!(decode_mmio(&hex("0f 7e 00"), Bits64), Err(Unsupported)); // MMX movd
    assert_eq!(decode_mmio(&hex("fe 10"), Bits64), Err(Invalid));
    assert_eq!(decode_mmio(&hex("c7 08 00 00 00 00"), Bits64), Err(Invalid));
    assert_eq!(decode_mmio(&hex("06"), Bits64), Err(Invalid));
    assert_eq!(decode_mmio(&hex(""), Bits64), Err(Truncated));
    assert_eq!(decode_mmio(&hex("8b"), Bits64), Err(Truncated));
    assert_eq!(decode_mmio(&hex("8b 04"), Bits64), Err(Truncated));
    assert_eq!(decode_mmio(&hex("8b 80 00 00 00"), Bits64), Err(Truncated));
    assert_eq!(decode_mmio(&hex("c7 00 01 02 03"), Bits64), Err(Truncated));
    assert_eq!(decode_mmio(&hex("48"), Bits64), Err(Truncated));
    // 15 prefixes: too long whatever follows.
    let long = hex("66 66 66 66 66 66 66 66 66 66 66 66 66 66 89 07");
    assert_eq!(decode_mmio(&long, Bits64), Err(TooLong));
    assert_eq!(instruction_length(&long, Bits64), Err(TooLong));
    let ok = hex("66 66 66 66 66 66 66 66 66 66 66 66 66 89 07");
    assert_eq!(instruction_length(&ok, Bits64), Ok(15));
    // 14 prefixes + opcode + imm32 = 19 > 15.
    assert_eq!(instruction_length(&hex("3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e 3e"), Bits32), Err(TooLong));
}

// Exit instructions and a spread of general forms, lengths checked against
// objdump (binutils 2.40). A further 1M instructions (qemu-system-x86_64's
// .text in 64-bit mode, and that text plus random bytes in all three modes)
// were cross-checked against objdump during development with no mismatch
// apart from objdump merging FWAIT into the following x87 instruction.
#[test]
fn lengths() {
    let t: &[(CodeMode, &str)] = &[
        (Bits64, "0f a2"),             // cpuid
        (Bits64, "0f 32"),             // rdmsr
        (Bits64, "0f 30"),             // wrmsr
        (Bits64, "f4"),                // hlt
        (Bits64, "0f 01 d9"),          // vmmcall
        (Bits64, "0f 01 c1"),          // vmcall
        (Bits64, "0f 01 d1"),          // xsetbv
        (Bits64, "e4 60"),             // in $0x60,%al
        (Bits64, "66 e5 40"),          // in $0x40,%ax
        (Bits64, "ec"),                // in (%dx),%al
        (Bits64, "ef"),                // out %eax,(%dx)
        (Bits64, "f3 6e"),             // rep outsb
        (Bits64, "0f 01 38"),          // invlpg (%rax)
        (Bits64, "0f 01 bc 24 00 01 00 00"), // invlpg 0x100(%rsp)
        (Bits64, "0f 22 d8"),          // mov %rax,%cr3
        (Bits64, "44 0f 20 c0"),       // mov %cr8,%rax
        (Bits32, "0f 20 00"),          // mov %cr0,%eax (mod ignored)
        (Bits64, "0f 23 f8"),          // mov %rax,%db7
        (Bits64, "0f 01 f9"),          // rdtscp
        (Bits64, "0f 31"),             // rdtsc
        (Bits64, "cd 80"),             // int $0x80
        (Bits64, "0f 09"),             // wbinvd
        (Bits64, "0f 01 df"),          // invlpga
        (Bits64, "0f 01 d8"),          // vmrun
        (Bits64, "f3 90"),             // pause
        (Bits64, "0f 0b"),             // ud2
        (Bits64, "48 b8 88 77 66 55 44 33 22 11"), // movabs $imm64,%rax
        (Bits64, "b8 01 00 00 00"),    // mov $1,%eax
        (Bits64, "66 b8 01 00"),       // mov $1,%ax
        (Bits64, "e8 00 00 00 00"),    // call rel32
        (Bits64, "0f 84 00 01 00 00"), // je rel32
        (Bits32, "66 e8 00 01"),       // callw rel16
        (Bits16, "e8 00 01"),          // call rel16
        (Bits16, "66 e8 00 01 00 00"), // calll rel32
        (Bits16, "ea 00 7c 00 00"),    // ljmp $0,$0x7c00
        (Bits32, "ea 00 00 10 00 08 00"), // ljmp $8,$0x100000
        (Bits16, "66 ea 00 00 10 00 08 00"), // ljmpl
        (Bits64, "c8 10 00 01"),       // enter
        (Bits64, "69 c0 00 01 00 00"), // imul $0x100,%eax,%eax
        (Bits64, "6b c0 10"),          // imul $16,%eax,%eax
        (Bits64, "f7 c1 00 00 01 00"), // test $0x10000,%ecx
        (Bits64, "f7 e1"),             // mul %ecx
        (Bits64, "66 f7 c1 00 01"),    // test $0x100,%cx
        (Bits64, "0f 1f 44 00 00"),    // nopl 0(%rax,%rax,1)
        (Bits64, "66 0f 1f 84 00 00 00 00 00"), // nopw
        (Bits64, "0f ae f0"),          // mfence
        (Bits64, "66 0f 3a 0f c1 08"), // palignr $8,%xmm1,%xmm0
        (Bits64, "66 0f 38 00 c1"),    // pshufb %xmm1,%xmm0
        (Bits64, "f3 0f b8 c1"),       // popcnt %ecx,%eax
        (Bits64, "c5 f8 77"),          // vzeroupper
        (Bits64, "c5 fd 6f 04 24"),    // vmovdqa (%rsp),%ymm0
        (Bits64, "c4 e3 7d 18 c1 01"), // vinsertf128 $1,%xmm1,%ymm0,%ymm0
        (Bits64, "62 f1 7c 48 28 44 24 01"), // vmovaps 0x40(%rsp),%zmm0
        (Bits64, "8f e9 78 c1 c1"),    // vphaddbw %xmm1,%xmm0 (XOP map 9)
        (Bits64, "0f 0f c1 b4"),       // pfmul %mm1,%mm0 (3DNow!)
        (Bits64, "66 0f 78 c1 04 08"), // extrq $8,$4,%xmm1
        (Bits32, "c4 00"),             // les (%eax),%eax
        (Bits32, "62 00"),             // bound %eax,(%eax)
        (Bits32, "8f 00"),             // pop (%eax)
    ];
    for (mode, s) in t {
        let b = hex(s);
        assert_eq!(instruction_length(&b, *mode), Ok(b.len()), "{mode:?} {s}");
        // Every prefix of a valid instruction is truncated, never wrong.
        for n in 0..b.len() {
            assert_eq!(instruction_length(&b[..n], *mode), Err(DecodeError::Truncated), "{mode:?} {s} [..{n}]");
        }
    }
    use DecodeError::Invalid;
    assert_eq!(instruction_length(&hex("0f 0b"), Bits16), Ok(2));
    assert_eq!(instruction_length(&hex("0f 04"), Bits64), Err(Invalid));
    assert_eq!(instruction_length(&hex("60"), Bits64), Err(Invalid));
    assert_eq!(instruction_length(&hex("60"), Bits32), Ok(1));
    assert_eq!(instruction_length(&hex("8f 20"), Bits64), Err(Invalid));
}

/// Every byte string in every mode: no panic, lengths within bounds, the
/// MMIO decoder agrees with the length decoder.
#[test]
fn fuzz_random_bytes() {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    // Bias towards interesting bytes: prefixes and escapes.
    const HOT: [u8; 16] = [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x64, 0x48, 0x41, 0x0f, 0x38, 0x3a, 0xc4, 0xc5, 0x62, 0x8f];
    let mut regs = Regs::default();
    for i in 0..300_000 {
        let n = (next() % 17) as usize;
        let mut b = [0u8; 16];
        for x in b.iter_mut() {
            let r = next();
            *x = if r & 3 == 0 { HOT[(r >> 8) as usize % 16] } else { (r >> 16) as u8 };
        }
        let b = &b[..n];
        regs.gprs[i % 16] = next();
        for mode in [Bits16, Bits32, Bits64] {
            let l = instruction_length(b, mode);
            if let Ok(l) = l {
                assert!(l >= 1 && l <= n && l <= 15);
            }
            match decode_mmio(b, mode) {
                Ok(op) => {
                    assert_eq!(Ok(op.len), l, "{b:02x?} {mode:?}");
                    let _ = op.effective_address(&regs, next());
                    let mut bus = FakeBus { value: next(), writes: 0 };
                    let mut fl = next();
                    let mut rr = regs;
                    let _ = op.execute(&mut rr, &mut fl, &mut bus);
                }
                Err(DecodeError::Truncated) => assert_eq!(l, Err(DecodeError::Truncated), "{b:02x?} {mode:?}"),
                Err(DecodeError::TooLong) => assert_eq!(l, Err(DecodeError::TooLong), "{b:02x?} {mode:?}"),
                Err(_) => {}
            }
        }
    }
}

struct FakeBus {
    value: u64,
    writes: usize,
}
impl MmioBus for FakeBus {
    fn read(&mut self, size: u8) -> u64 {
        self.value & size_mask(size)
    }
    fn write(&mut self, size: u8, value: u64) {
        assert_eq!(value & !size_mask(size), 0);
        self.value = value;
        self.writes += 1;
    }
}

fn run(mode: CodeMode, s: &str, regs: &mut Regs, rflags: &mut u64, dev: u64) -> (u64, usize) {
    let op = dec(mode, s);
    let mut bus = FakeBus { value: dev, writes: 0 };
    op.execute(regs, rflags, &mut bus).unwrap();
    (bus.value, bus.writes)
}

#[test]
fn execute_forms() {
    let mut regs = Regs::default();
    let mut fl = 0x2u64;
    // mov (%rdi),%ecx: zero-extends into RCX.
    regs.set(RCX, u64::MAX);
    run(Bits64, "8b 0f", &mut regs, &mut fl, 0x8000_0001);
    assert_eq!(regs.get(RCX), 0x8000_0001);
    // mov (%rsp),%bh merges into bits 15:8.
    regs.set(RBX, 0x1111_2222_3333_4444);
    run(Bits64, "8a 3c 24", &mut regs, &mut fl, 0xab);
    assert_eq!(regs.get(RBX), 0x1111_2222_3333_ab44);
    // movswl sign-extends to 32 then zero-extends to 64.
    run(Bits64, "0f bf 08", &mut regs, &mut fl, 0x8000);
    assert_eq!(regs.get(RCX), 0xffff_8000);
    // movslq.
    run(Bits64, "48 63 08", &mut regs, &mut fl, 0x8000_0000);
    assert_eq!(regs.get(RCX), 0xffff_ffff_8000_0000);
    // movsbw merges 16 bits.
    regs.set(RDX, 0xdead_beef_0000_0000);
    run(Bits64, "66 0f be 10", &mut regs, &mut fl, 0xfe);
    assert_eq!(regs.get(RDX), 0xdead_beef_0000_fffe);
    // mov %ah,(%rsi).
    regs.set(RAX, 0x1234);
    assert_eq!(run(Bits64, "88 26", &mut regs, &mut fl, 0), (0x12, 1));
    // movq $-1,(%rax).
    assert_eq!(run(Bits64, "48 c7 00 ff ff ff ff", &mut regs, &mut fl, 0), (u64::MAX, 1));
    // orl $0x100,0xf0(%rax).
    assert_eq!(run(Bits64, "81 88 f0 00 00 00 00 01 00 00", &mut regs, &mut fl, 0x3), (0x103, 1));
    assert_eq!(fl & (FLAG_ZF | FLAG_CF | FLAG_OF), 0);
    // cmpl $5,(%rax): no write, flags.
    assert_eq!(run(Bits64, "83 38 05", &mut regs, &mut fl, 5), (5, 0));
    assert_ne!(fl & FLAG_ZF, 0);
    run(Bits64, "83 38 05", &mut regs, &mut fl, 4);
    assert_ne!(fl & FLAG_CF, 0);
    assert_ne!(fl & FLAG_SF, 0);
    // testb $1,(%rax).
    assert_eq!(run(Bits64, "f6 00 01", &mut regs, &mut fl, 2), (2, 0));
    assert_ne!(fl & FLAG_ZF, 0);
    // xor 8(%rax),%r9.
    regs.set(R9, 0xff00);
    run(Bits64, "4c 33 48 08", &mut regs, &mut fl, 0x0ff0);
    assert_eq!(regs.get(R9), 0xf0f0);
    // xchg %eax,(%rdx).
    regs.set(RAX, 0xffff_ffff_0000_0007);
    assert_eq!(run(Bits64, "87 02", &mut regs, &mut fl, 9), (7, 1));
    assert_eq!(regs.get(RAX), 9);
    // btsl $5 / btl %ecx / btrl.
    assert_eq!(run(Bits64, "0f ba 28 05", &mut regs, &mut fl, 0), (0x20, 1));
    assert_eq!(fl & FLAG_CF, 0);
    regs.set(RCX, 37); // modulo 32
    assert_eq!(run(Bits64, "0f a3 08", &mut regs, &mut fl, 0x20), (0x20, 0));
    assert_ne!(fl & FLAG_CF, 0);
    // incl keeps CF; negq; notb.
    fl |= FLAG_CF;
    assert_eq!(run(Bits64, "ff 00", &mut regs, &mut fl, 0xffff_ffff), (0, 1));
    assert_ne!(fl & FLAG_ZF, 0);
    assert_ne!(fl & FLAG_CF, 0);
    assert_eq!(run(Bits64, "48 f7 18", &mut regs, &mut fl, 1), (u64::MAX, 1));
    assert_ne!(fl & FLAG_CF, 0);
    assert_eq!(run(Bits64, "f6 10", &mut regs, &mut fl, 0x0f), (0xf0, 1));
    // Strings and XMM are left to the caller.
    let op = dec(Bits64, "f3 ab");
    assert_eq!(op.execute(&mut regs, &mut fl, &mut FakeBus { value: 0, writes: 0 }), Err(DecodeError::Unsupported));
    // 16-bit: mov %ax,(%bx,%si) writes 16 bits.
    regs.set(RAX, 0xabcd_1234);
    assert_eq!(run(Bits16, "89 00", &mut regs, &mut fl, 0), (0x1234, 1));
}

#[test]
fn alu_flags() {
    // add: 0x7f + 1 (byte) overflows signed.
    let (r, f) = alu(AluOp::Add, 0x7f, 1, 1, 0);
    assert_eq!(r, 0x80);
    assert_eq!(f & (FLAG_OF | FLAG_SF | FLAG_AF | FLAG_CF), FLAG_OF | FLAG_SF | FLAG_AF);
    let (r, f) = alu(AluOp::Add, 0xff, 1, 1, 0);
    assert_eq!(r, 0);
    assert_eq!(f & (FLAG_CF | FLAG_ZF | FLAG_PF | FLAG_OF), FLAG_CF | FLAG_ZF | FLAG_PF);
    let (r, f) = alu(AluOp::Adc, u64::MAX, 0, 8, FLAG_CF);
    assert_eq!((r, f & FLAG_CF), (0, FLAG_CF));
    let (r, f) = alu(AluOp::Sub, 0x8000_0000, 1, 4, 0);
    assert_eq!(r, 0x7fff_ffff);
    assert_eq!(f & (FLAG_OF | FLAG_CF | FLAG_SF), FLAG_OF);
    let (r, f) = alu(AluOp::Sbb, 0, 0, 2, FLAG_CF);
    assert_eq!((r, f & (FLAG_CF | FLAG_SF)), (0xffff, FLAG_CF | FLAG_SF));
    let (_, f) = alu(AluOp::And, 3, 0, 4, FLAG_CF | FLAG_OF | 0x200);
    assert_eq!(f, FLAG_ZF | FLAG_PF | 0x200); // logic ops clear CF/OF, other flags kept
    let (r, f) = alu(AluOp::Xor, 1, 2, 1, 0);
    assert_eq!((r, f & FLAG_PF), (3, FLAG_PF));
    let (_, f) = unary(UnaryOp::Dec, 0x80, 1, FLAG_CF);
    assert_eq!(f & (FLAG_OF | FLAG_CF), FLAG_OF | FLAG_CF);
    let (r, f) = unary(UnaryOp::Neg, 0, 4, FLAG_CF);
    assert_eq!((r, f & (FLAG_CF | FLAG_ZF)), (0, FLAG_ZF));
}

#[test]
fn segment_overrides() {
    // rep outsb; fs rep outsw; rep with a DS override after REX is DS.
    assert_eq!(segment_override(&[0xf3, 0x6e], CodeMode::Bits32), Ok(None));
    assert_eq!(segment_override(&[0x64, 0xf3, 0x66, 0x6f], CodeMode::Bits32), Ok(Some(Seg::Fs)));
    assert_eq!(segment_override(&[0x2e, 0x3e, 0x6e], CodeMode::Bits16), Ok(Some(Seg::Ds)));
    assert_eq!(segment_override(&[0x26], CodeMode::Bits64), Err(DecodeError::Truncated));
}
