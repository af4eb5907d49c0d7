//! `vmx_run`: the entry and exit path in assembly (host registers saved,
//! guest GPRs and XMM/MXCSR loaded, VMLAUNCH or VMRESUME, and back).

use super::*;

core::arch::global_asm!(
    r#"
    .section .text.vmx_run, "ax"
    .global vmx_run
/* vmx_run(regs: rdi, sse: rsi, launched: rdx) -> rax
 * With this vCPU's VMCS current: writes HOST_RSP/HOST_RIP, loads the
 * guest GPRs from `regs` (RSP, RIP, RFLAGS are VMCS fields) and XMM0-15/
 * MXCSR from `sse`, enters the guest (VMRESUME if launched, else
 * VMLAUNCH) and, at VM exit or when the entry fails, stores both back.
 * Returns 0 after a VM exit, 1 when VMLAUNCH/VMRESUME failed. */
vmx_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rdi              /* regs */
    pushq %rsi              /* sse */
    movdqu 0(%rsi), %xmm0
    movdqu 16(%rsi), %xmm1
    movdqu 32(%rsi), %xmm2
    movdqu 48(%rsi), %xmm3
    movdqu 64(%rsi), %xmm4
    movdqu 80(%rsi), %xmm5
    movdqu 96(%rsi), %xmm6
    movdqu 112(%rsi), %xmm7
    movdqu 128(%rsi), %xmm8
    movdqu 144(%rsi), %xmm9
    movdqu 160(%rsi), %xmm10
    movdqu 176(%rsi), %xmm11
    movdqu 192(%rsi), %xmm12
    movdqu 208(%rsi), %xmm13
    movdqu 224(%rsi), %xmm14
    movdqu 240(%rsi), %xmm15
    ldmxcsr 256(%rsi)
    movq $0x6C14, %rax      /* HOST_RSP: the stack as it is now */
    vmwrite %rsp, %rax
    movq $0x6C16, %rax      /* HOST_RIP */
    leaq vmx_exit(%rip), %rbx
    vmwrite %rbx, %rax
    cmpq $0, %rdx           /* the flags survive the loads below */
    movq 0(%rdi), %rax
    movq 8(%rdi), %rbx
    movq 16(%rdi), %rcx
    movq 24(%rdi), %rdx
    movq 32(%rdi), %rsi
    movq 48(%rdi), %rbp
    movq 56(%rdi), %r8
    movq 64(%rdi), %r9
    movq 72(%rdi), %r10
    movq 80(%rdi), %r11
    movq 88(%rdi), %r12
    movq 96(%rdi), %r13
    movq 104(%rdi), %r14
    movq 112(%rdi), %r15
    movq 40(%rdi), %rdi
    jne 1f
    vmlaunch
    jmp vmx_fail
1:  vmresume
vmx_fail:
    pushq $1
    jmp vmx_save
vmx_exit:
    pushq $0
vmx_save:
    pushq %rdi
    movq 24(%rsp), %rdi     /* regs (guest rdi, status, sse, regs) */
    popq 40(%rdi)
    movq %rax, 0(%rdi)
    movq %rbx, 8(%rdi)
    movq %rcx, 16(%rdi)
    movq %rdx, 24(%rdi)
    movq %rsi, 32(%rdi)
    movq %rbp, 48(%rdi)
    movq %r8, 56(%rdi)
    movq %r9, 64(%rdi)
    movq %r10, 72(%rdi)
    movq %r11, 80(%rdi)
    movq %r12, 88(%rdi)
    movq %r13, 96(%rdi)
    movq %r14, 104(%rdi)
    movq %r15, 112(%rdi)
    popq %rax               /* status */
    movq 0(%rsp), %rsi      /* sse */
    movdqu %xmm0, 0(%rsi)
    movdqu %xmm1, 16(%rsi)
    movdqu %xmm2, 32(%rsi)
    movdqu %xmm3, 48(%rsi)
    movdqu %xmm4, 64(%rsi)
    movdqu %xmm5, 80(%rsi)
    movdqu %xmm6, 96(%rsi)
    movdqu %xmm7, 112(%rsi)
    movdqu %xmm8, 128(%rsi)
    movdqu %xmm9, 144(%rsi)
    movdqu %xmm10, 160(%rsi)
    movdqu %xmm11, 176(%rsi)
    movdqu %xmm12, 192(%rsi)
    movdqu %xmm13, 208(%rsi)
    movdqu %xmm14, 224(%rsi)
    movdqu %xmm15, 240(%rsi)
    stmxcsr 256(%rsi)
    ldmxcsr vmx_host_mxcsr(%rip)
    addq $16, %rsp          /* sse, regs */
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .section .rodata.vmx_run, "a"
    .balign 4
vmx_host_mxcsr:
    .long 0x1F80
    "#,
    options(att_syntax)
);

extern "C" {
    pub(super) fn vmx_run(regs: *mut GuestRegs, sse: *mut SseRegs, launched: u64) -> u64;
}
