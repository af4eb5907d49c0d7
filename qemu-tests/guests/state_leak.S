/* state_leak: CPU state that VMRUN does not switch must not pass from one
 * domain to another sharing a host CPU (run on one host CPU beside
 * `state_leak_writer.S`, which sets WRITER to 1 and includes this file).
 *
 * The writer puts distinctive values in IA32_TSC_AUX (WRMSR 0xC0000103),
 * DR0-DR3 and DR7, XMM0-7 (and, with CHECK_YMM, the upper halves of
 * YMM0-7 through XRSTOR/XSAVE), MXCSR and the x87 control word, then for 500 ms checks they stay.
 * The reader writes none of them: it takes a snapshot at start (which must
 * be the architectural reset values), then for 500 ms keeps reading them
 * (TSC_AUX through RDMSR and RDTSCP; RDPID is not offered by QEMU's TCG)
 * and must see the same values every time, and never a writer value.
 *
 * Prints (prefix "leak: "):
 *   writer: "writer kept its values over <n> checks" or "FAIL writer ...";
 *   reader: "reader start values are the reset values" or
 *           "FAIL reader start <slot> = <value>",
 *           "reader saw <n> checks, <c> changed, <w> writer values";
 *   both:   "avx" or "no avx", "rdtscp" or "no rdtscp", then "done". */
        .include "pvh.inc"

        .ifndef WRITER
        .set WRITER, 0
        .endif
        /* The YMM upper halves are not checked yet (CHECK_YMM 0): QEMU
         * 7.2's TCG does not intercept a guest's XSETBV, so Ferrite never
         * learns XCR0 = 7 and loads XCR0 = 1 at the next VMRUN: VEX
         * instructions get #UD and an XRSTOR of AVX state #GP
         * (SECURITY.md, "Not covered yet"). */
        .set CHECK_YMM, 0
        .set MSR_TSC_AUX, 0xC0000103
        .set MARK,        0x5EC2E700
        .set DW,          73            /* dwords in a snapshot */
        /* Snapshot layout, in dwords. */
        .set S_AUX_MSR, 0
        .set S_AUX_TSCP, 1
        .set S_DR0, 2
        .set S_DR7, 6
        .set S_MXCSR, 7
        .set S_FCW, 8
        .set S_XMM, 9
        .set S_YMMH, 41

        .text
_start:
        ENTER
        /* SSE: CR0.EM off, MP on; CR4.OSFXSR, OSXMMEXCPT. */
        movl    %cr0, %eax
        andl    $~(1 << 2), %eax
        orl     $(1 << 1), %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     $(3 << 9), %eax
        movl    %eax, %cr4
        /* AVX: CPUID.1:ECX XSAVE (26) and AVX (28); CR4.OSXSAVE, XCR0 = 7. */
        movl    $1, %eax
        cpuid
        movl    %ecx, %eax
        andl    $(1 << 26) | (1 << 28), %eax
        cmpl    $(1 << 26) | (1 << 28), %eax
        jne     1f
        movl    %cr4, %eax
        orl     $(1 << 18), %eax
        movl    %eax, %cr4
        xorl    %ecx, %ecx
        movl    $7, %eax
        xorl    %edx, %edx
        xsetbv
        movl    $1, have_avx
1:      movl    $0x80000001, %eax
        cpuid
        btl     $27, %edx
        jnc     1f
        movl    $1, have_tscp
1:      movl    have_avx, %eax
        movl    $.Lavx, %esi
        movl    $.Lno_avx, %edi
        call    say_which
        movl    have_tscp, %eax
        movl    $.Ltscp, %esi
        movl    $.Lno_tscp, %edi
        call    say_which

        .if WRITER
        call    write_marks
        .endif
        movl    $start_snap, %edi
        call    snapshot
        .if WRITER == 0
        call    check_reset_values
        .endif

        /* 500 ms of checks. */
        movw    pm_tmr_port, %dx
        inl     %dx, %eax
        movl    %eax, t0
loop:
        movl    $snap, %edi
        call    snapshot
        incl    checks
        movl    $snap, %esi
        movl    $start_snap, %edi
        movl    $DW, %ecx
        repe cmpsl
        je      1f
        incl    changed
1:      movl    $snap, %esi
        call    count_marks
        addl    %eax, marks
        movw    pm_tmr_port, %dx
        inl     %dx, %eax
        subl    t0, %eax
        andl    $0xFFFFFF, %eax
        cmpl    $(PM_TMR_HZ / 2), %eax
        jb      loop

        .if WRITER
        cmpl    $0, changed
        jne     1f
        movl    $.Lkept, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $.Lchecks, %esi
        call    puts
        jmp     2f
1:      movl    $.Lwfail, %esi
        call    puts
        movl    changed, %eax
        call    putdec
        movl    $.Lof, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $.Lchecks, %esi
        call    puts
2:
        .else
        movl    $.Lsaw, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $.Lsaw2, %esi
        call    puts
        movl    changed, %eax
        call    putdec
        movl    $.Lsaw3, %esi
        call    puts
        movl    marks, %eax
        call    putdec
        movl    $.Lsaw4, %esi
        call    puts
        .endif
        movl    $.Ldone, %esi
        call    puts
        jmp     poweroff

/* say_which: prints the string at %esi when %eax != 0, else at %edi. */
say_which:
        testl   %eax, %eax
        jnz     1f
        movl    %edi, %esi
1:      call    puts
        ret

        .if WRITER
/* write_marks: the writer's distinctive values. */
write_marks:
        cmpl    $0, have_tscp
        je      1f
        movl    $MSR_TSC_AUX, %ecx
        movl    $MARK + 0x01, %eax
        xorl    %edx, %edx
        wrmsr
1:      movl    $MARK + 0x10, %eax
        movl    %eax, %dr0
        movl    $MARK + 0x20, %eax
        movl    %eax, %dr1
        movl    $MARK + 0x30, %eax
        movl    %eax, %dr2
        movl    $MARK + 0x40, %eax
        movl    %eax, %dr3
        movl    $0x4FF, %eax            /* L0-3, G0-3: execute breakpoints */
        movl    %eax, %dr7
        /* 32 dwords MARK+0x80.. into XMM0-7, MARK+0xC0.. for the YMM
         * upper halves. */
        movl    $0, %ecx
1:      leal    MARK + 0x80(%ecx), %eax
        movl    %eax, xbuf(,%ecx,4)
        leal    MARK + 0xC0(%ecx), %eax
        movl    %eax, ybuf(,%ecx,4)
        incl    %ecx
        cmpl    $32, %ecx
        jb      1b
        .if CHECK_YMM
        cmpl    $0, have_avx
        je      2f
        .else
        jmp     2f                      /* see CHECK_YMM at the top */
        .endif
        /* The YMM upper halves through XRSTOR (component 2 at offset
         * 576), not VEX code: see the test's doc comment. */
        movl    $7, %eax
        xorl    %edx, %edx
        xsave   xarea
        movl    $ybuf, %esi
        movl    $xarea + 576, %edi
        movl    $32, %ecx
        rep movsl
        orl     $4, xarea + 512         /* XSTATE_BV: AVX state present */
        movl    $7, %eax
        xorl    %edx, %edx
        xrstor  xarea
2:      /* Legacy SSE loads leave the upper halves as they are. */
        movdqu  xbuf + 0x00, %xmm0
        movdqu  xbuf + 0x10, %xmm1
        movdqu  xbuf + 0x20, %xmm2
        movdqu  xbuf + 0x30, %xmm3
        movdqu  xbuf + 0x40, %xmm4
        movdqu  xbuf + 0x50, %xmm5
        movdqu  xbuf + 0x60, %xmm6
        movdqu  xbuf + 0x70, %xmm7
        movl    $0xFF80, tmp            /* MXCSR: FZ, RC = toward zero */
        ldmxcsr tmp
        movw    $0x0F7F, tmp            /* FCW: RC = toward zero, PC = 64 */
        fldcw   tmp
        ret
        .else
/* check_reset_values: the reader's start snapshot holds the
 * architectural reset values (FCW 0x40 at RESET/INIT, or 0x37F as after
 * FNINIT); prints what differs. */
check_reset_values:
        movl    $0, bad
        movl    $start_snap, %esi
        movl    $0, %ecx
1:      movl    (%esi,%ecx,4), %eax
        xorl    %edx, %edx              /* want */
        cmpl    $S_DR7, %ecx
        jne     2f
        movl    $0x400, %edx
2:      cmpl    $S_MXCSR, %ecx
        jne     2f
        movl    $0x1F80, %edx
2:      cmpl    $S_FCW, %ecx
        jne     3f
        cmpl    $0x37F, %eax
        je      4f
        movl    $0x40, %edx
3:      cmpl    $S_AUX_TSCP, %ecx
        jne     3f
        cmpl    $0, have_tscp
        je      4f
3:      cmpl    %edx, %eax
        je      4f
        incl    bad
        pushl   %esi
        movl    $.Lstart_bad, %esi
        call    puts
        popl    %esi
        xchgl   %eax, %ecx
        call    putdec
        xchgl   %eax, %ecx
        pushl   %esi
        movl    $.Leq, %esi
        call    puts
        popl    %esi
        call    putdec
        movb    $'\n', %al
        call    putc
4:      incl    %ecx
        cmpl    $DW, %ecx
        jb      1b
        cmpl    $0, bad
        jne     5f
        movl    $.Lstart_ok, %esi
        call    puts
5:      ret
        .endif

/* snapshot: the state into the DW dwords at %edi. */
snapshot:
        pushal
        movl    %edi, %ebx
        movl    $MSR_TSC_AUX, %ecx
        xorl    %eax, %eax
        cmpl    $0, have_tscp
        je      1f
        rdmsr
1:      movl    %eax, S_AUX_MSR * 4(%ebx)
        xorl    %ecx, %ecx
        cmpl    $0, have_tscp
        je      1f
        rdtscp
1:      movl    %ecx, S_AUX_TSCP * 4(%ebx)
        movl    %dr0, %eax
        movl    %eax, (S_DR0 + 0) * 4(%ebx)
        movl    %dr1, %eax
        movl    %eax, (S_DR0 + 1) * 4(%ebx)
        movl    %dr2, %eax
        movl    %eax, (S_DR0 + 2) * 4(%ebx)
        movl    %dr3, %eax
        movl    %eax, (S_DR0 + 3) * 4(%ebx)
        movl    %dr7, %eax
        movl    %eax, S_DR7 * 4(%ebx)
        stmxcsr S_MXCSR * 4(%ebx)
        movl    $0, S_FCW * 4(%ebx)
        fnstcw  S_FCW * 4(%ebx)
        movdqu  %xmm0, (S_XMM * 4 + 0x00)(%ebx)
        movdqu  %xmm1, (S_XMM * 4 + 0x10)(%ebx)
        movdqu  %xmm2, (S_XMM * 4 + 0x20)(%ebx)
        movdqu  %xmm3, (S_XMM * 4 + 0x30)(%ebx)
        movdqu  %xmm4, (S_XMM * 4 + 0x40)(%ebx)
        movdqu  %xmm5, (S_XMM * 4 + 0x50)(%ebx)
        movdqu  %xmm6, (S_XMM * 4 + 0x60)(%ebx)
        movdqu  %xmm7, (S_XMM * 4 + 0x70)(%ebx)
        .if CHECK_YMM
        cmpl    $0, have_avx
        je      1f
        .else
        jmp     1f                      /* see CHECK_YMM at the top */
        .endif
        /* XSAVE of component 2 only; in its initial state XSAVE
         * writes nothing there, so zero it first. */
        leal    S_YMMH * 4(%ebx), %edi
        movl    $32, %ecx
        xorl    %eax, %eax
        rep stosl
        movl    $xarea + 576, %edi
        movl    $32, %ecx
        rep stosl
        movl    $4, %eax
        xorl    %edx, %edx
        xsave   xarea
        movl    $xarea + 576, %esi
        leal    S_YMMH * 4(%ebx), %edi
        movl    $32, %ecx
        rep movsl
        jmp     2f
1:      leal    S_YMMH * 4(%ebx), %edi
        movl    $32, %ecx
        xorl    %eax, %eax
        rep stosl
2:      popal
        ret

/* count_marks: how many of the DW dwords at %esi are writer values
 * (MARK + 1..0xFF, or DR7/MXCSR/FCW as the writer sets them), in %eax. */
count_marks:
        pushl   %ecx
        pushl   %edx
        xorl    %edx, %edx
        xorl    %ecx, %ecx
1:      movl    (%esi,%ecx,4), %eax
        andl    $0xFFFFFF00, %eax
        cmpl    $MARK, %eax
        jne     2f
        incl    %edx
2:      incl    %ecx
        cmpl    $DW, %ecx
        jb      1b
        cmpl    $0x4FF, S_DR7 * 4(%esi)
        jne     3f
        incl    %edx
3:      cmpl    $0xFF80, S_MXCSR * 4(%esi)
        jne     3f
        incl    %edx
3:      cmpw    $0x0F7F, S_FCW * 4(%esi)
        jne     3f
        incl    %edx
3:      movl    %edx, %eax
        popl    %edx
        popl    %ecx
        ret

        .section .rodata
.Lavx:      .asciz "leak: avx\n"
.Lno_avx:   .asciz "leak: no avx\n"
.Ltscp:     .asciz "leak: rdtscp\n"
.Lno_tscp:  .asciz "leak: no rdtscp\n"
.Lkept:     .asciz "leak: writer kept its values over "
.Lchecks:   .asciz " checks\n"
.Lwfail:    .asciz "leak: FAIL writer lost its values in "
.Lof:       .asciz " of "
.Lsaw:      .asciz "leak: reader saw "
.Lsaw2:     .asciz " checks, "
.Lsaw3:     .asciz " changed, "
.Lsaw4:     .asciz " writer values\n"
.Lstart_ok: .asciz "leak: reader start values are the reset values\n"
.Lstart_bad: .asciz "leak: FAIL reader start slot "
.Leq:       .asciz " = "
.Ldone:     .asciz "leak: done\n"

        .data
        .balign 16
start_snap: .fill DW, 4, 0
        .balign 16
snap:   .fill DW, 4, 0
        .balign 64
xarea:  .fill 1024, 1, 0
        .balign 16
xbuf:   .fill 32, 4, 0
ybuf:   .fill 32, 4, 0
have_avx:  .long 0
have_tscp: .long 0
t0:     .long 0
checks: .long 0
changed: .long 0
marks:  .long 0
bad:    .long 0
tmp:    .long 0
