//! The runtime a bare-metal Ferrite binary (the hypervisor, a stub domain)
//! needs from outside `core`: the memory intrinsics the compiler emits
//! calls to (`memcpy` and friends) and the symbols the prebuilt `core`
//! references (`rust_eh_personality`, `_Unwind_Resume`; with
//! `panic = "abort"` they are never reached).
//!
//! Written in assembly so LLVM cannot recognise the loops and turn them
//! back into calls to themselves. A binary links this crate with
//! `use ferrite_rt as _;` (or `extern crate ferrite_rt;`).
//!
//! Only for bare-metal binaries (linked with `-nostdlib`): in a hosted
//! program these symbols would clash with the C library's. Nothing else
//! in the workspace depends on this crate.

#![no_std]

core::arch::global_asm!(
    r#"
    .section .text.intrinsics, "ax"
    .global memcpy
memcpy:
    /* Eight bytes a step, then the tail: `rep movsb` without ERMS (and
       under QEMU's icount, one instruction a byte) costs eight times more. */
    movq %rdi, %rax
    movq %rdx, %rcx
    shrq $3, %rcx
    rep movsq
    movq %rdx, %rcx
    andq $7, %rcx
    rep movsb
    ret

    .global memmove
memmove:
    movq %rdi, %rax
    movq %rdx, %rcx
    cmpq %rsi, %rdi
    jbe 1f
    leaq (%rsi,%rdx), %r8
    cmpq %r8, %rdi
    jae 1f
    /* Overlapping with dst above src: copy backwards. */
    leaq -1(%rsi,%rdx), %rsi
    leaq -1(%rdi,%rdx), %rdi
    std
    rep movsb
    cld
    ret
1:
    /* Forwards, eight bytes a step (as memcpy). */
    shrq $3, %rcx
    rep movsq
    movq %rdx, %rcx
    andq $7, %rcx
    rep movsb
    ret

    .global memset
memset:
    movq %rdi, %r9
    movzbl %sil, %eax
    movabsq $0x0101010101010101, %r8
    imulq %r8, %rax
    movq %rdx, %rcx
    shrq $3, %rcx
    rep stosq
    movq %rdx, %rcx
    andq $7, %rcx
    rep stosb
    movq %r9, %rax
    ret

    .global memcmp
    .global bcmp
memcmp:
bcmp:
    xorl %eax, %eax
    testq %rdx, %rdx
    jz 3f
2:
    movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    subl %ecx, %eax
    jnz 3f
    incq %rdi
    incq %rsi
    decq %rdx
    jnz 2b
3:
    ret

    .global rust_eh_personality
rust_eh_personality:
    ret

    .global _Unwind_Resume
_Unwind_Resume:
    ud2
    "#,
    options(att_syntax)
);
