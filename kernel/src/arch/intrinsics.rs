//! Memory intrinsics the compiler expects (`memcpy` and friends) and the
//! symbols the prebuilt `core` references. Written in assembly so LLVM cannot
//! recognise the loops and turn them back into calls to themselves.

core::arch::global_asm!(
    r#"
    .section .text.intrinsics, "ax"
    .global memcpy
memcpy:
    movq %rdi, %rax
    movq %rdx, %rcx
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
    rep movsb
    ret

    .global memset
memset:
    movq %rdi, %r9
    movl %esi, %eax
    movq %rdx, %rcx
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
