/* cr4_checks: CR4 writes follow the CPUID the guest sees (AMD APM vol. 2,
 * 3.1.3; Intel SDM vol. 3A, 2.5): setting a reserved bit, or the bit of a
 * feature CPUID does not offer, raises #GP and leaves CR4 as it was; bits
 * of offered features are taken. Before Ferrite intercepted CR4 writes,
 * such a write went straight into the VMCB and either took effect
 * (a feature the host has but the guest was not offered) or made the next
 * VMRUN fail, crashing the domain.
 *
 * For each CR4 bit in the table: "cr4: ok <bit> <taken|#GP>", or
 * "cr4: FAIL <bit> ...". Then "cr4: done <n> checks" and power-off. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        FLAT_TABLES
        /* #GP handler: counts, and skips the 3-byte `mov %eax, %cr4`. */
        GATE    13, gp_handler
        movl    $table, %ebp
next:
        movl    (%ebp), %ebx            /* the CR4 bit number, or -1: end */
        cmpl    $-1, %ebx
        je      done
        /* Expected: taken when CPUID offers the feature, else #GP. */
        movl    4(%ebp), %eax           /* CPUID leaf, 0 = reserved bit */
        movl    $0, expect_taken
        testl   %eax, %eax
        jz      1f
        xorl    %eax, %eax
        cpuid                           /* %eax: the highest basic leaf */
        cmpl    4(%ebp), %eax
        jb      1f
        movl    4(%ebp), %eax
        xorl    %ecx, %ecx
        cpuid
        movl    8(%ebp), %esi           /* 0 = EBX, 1 = ECX, 2 = EDX */
        movl    %ebx, regs
        movl    %ecx, regs + 4
        movl    %edx, regs + 8
        movl    regs(,%esi,4), %eax
        movl    12(%ebp), %ecx
        btl     %ecx, %eax
        jnc     1f
        movl    $1, expect_taken
1:      movl    (%ebp), %ebx
        /* Try it: CR4 | bit. */
        movl    gp_count, %edi
        movl    %cr4, %edx
        movl    %edx, %eax
        btsl    %ebx, %eax
        movl    %eax, %esi              /* the value written */
        mov     %eax, %cr4
        movl    %cr4, %eax
        cmpl    gp_count, %edi
        jne     faulted
        /* Taken: CR4 must read back as written. */
        cmpl    %esi, %eax
        jne     bad_readback
        cmpl    $0, expect_taken
        je      wrongly_taken
        mov     %edx, %cr4              /* restore */
        movl    $msg_taken, %esi
        jmp     ok
faulted:
        cmpl    %edx, %eax              /* CR4 unchanged */
        jne     bad_readback
        cmpl    $1, expect_taken
        je      wrongly_faulted
        movl    $msg_gp, %esi
ok:     pushl   %esi
        movl    $msg_ok, %esi
        call    puts
        movl    (%ebp), %eax
        call    putdec
        popl    %esi
        call    puts
        incl    checks
        addl    $16, %ebp
        jmp     next

wrongly_taken:
        movl    $msg_wrongly_taken, %esi
        jmp     fail
wrongly_faulted:
        movl    $msg_wrongly_faulted, %esi
        jmp     fail
bad_readback:
        movl    $msg_readback, %esi
fail:   pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        movl    (%ebp), %eax
        call    putdec
        popl    %esi
        call    puts
        addl    $16, %ebp
        jmp     next

done:
        movl    $msg_done, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $msg_checks, %esi
        call    puts
        jmp     poweroff

gp_handler:
        addl    $4, %esp                /* the error code */
        addl    $3, (%esp)              /* past `mov %eax, %cr4` */
        incl    gp_count
        iret

        .section .rodata
/* bit, CPUID leaf (0: reserved), register (0 EBX, 1 ECX, 2 EDX), bit */
table:
        .long   4,  1, 2, 3             /* PSE */
        .long   7,  1, 2, 13            /* PGE */
        .long   9,  1, 2, 24            /* OSFXSR: FXSR */
        .long   10, 1, 2, 25            /* OSXMMEXCPT: SSE */
        .long   13, 1, 1, 5             /* VMXE: VMX */
        .long   14, 1, 1, 6             /* SMXE: SMX */
        .long   15, 0, 0, 0             /* reserved */
        .long   16, 7, 0, 0             /* FSGSBASE */
        .long   18, 1, 1, 26            /* OSXSAVE: XSAVE */
        .long   20, 7, 0, 7             /* SMEP */
        .long   21, 7, 0, 20            /* SMAP */
        .long   22, 7, 1, 3             /* PKE: PKU */
        .long   25, 0, 0, 0             /* reserved */
        .long   31, 0, 0, 0             /* reserved */
        .long   -1
msg_ok:              .asciz "cr4: ok "
msg_taken:           .asciz " taken\n"
msg_gp:              .asciz " #GP\n"
msg_fail:            .asciz "cr4: FAIL "
msg_wrongly_taken:   .asciz " taken though CPUID does not offer it\n"
msg_wrongly_faulted: .asciz " #GP though CPUID offers it\n"
msg_readback:        .asciz " CR4 does not read back as it should\n"
msg_done:            .asciz "cr4: done "
msg_checks:          .asciz " checks\n"

        .data
gp_count:   .long 0
checks:     .long 0
expect_taken: .long 0
regs:       .long 0, 0, 0
