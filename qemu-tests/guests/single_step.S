/* single_step: an instruction executed with RFLAGS.TF set is followed by
 * a single-step #DB (SDM vol. 3B 18.3.1.4; APM vol. 2 13.1.4), a trap:
 * the return RIP is the next instruction and DR6.BS is set. That must
 * hold for the instructions the hypervisor emulates too (CPUID, port I/O,
 * RDMSR/WRMSR, MMIO, control-register writes), not only for those the CPU
 * executes. An instruction that faults (#GP) instead does not trap.
 *
 * Each check sets TF with POPF (the trap then follows the instruction
 * after the POPF), runs one instruction, and looks at what the #DB
 * handler saw: it ran once, with the return EIP right after the
 * instruction and DR6.BS set. The handler clears TF in the frame it
 * returns to, so only one instruction is stepped.
 *
 * Prints "step: ok <what>" or "step: FAIL <what> ..." per check, then
 * "step: done <n> checks" and powers off. */
        .include "pvh.inc"

        .set TF,            1 << 8
        .set DR6_BS,        1 << 14
        .set MSR_EFER,      0xC0000080
        .set UART_SCR,      COM1 + 7
        .set LAPIC,         0xFEE00000
        .set CR0_EM,        1 << 2

/* STEP what: the next instruction runs with TF set; END_STEP checks. */
.macro STEP what
        .pushsection .rodata
8:      .asciz  "\what"
        .popsection
        movl    $8b, cur_what
        movl    $9f, expect_rip
        movl    $9f, resume
        movl    $0, db_count
        movl    $0, gp_count
        pushfl
        orl     $TF, (%esp)
        popfl
.endm

/* END_STEP: where the trap must return to. If the trap after the
 * instruction was lost, the still-set TF traps after the NOP instead,
 * which the check reports. */
.macro END_STEP
9:      nop
        call    check_step
.endm

/* END_FAULT: the instruction must raise #GP and no #DB. */
.macro END_FAULT
9:      nop
        call    check_fault
.endm

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    1, db_handler
        GATE    13, gp_handler

        /* Control: an instruction the CPU executes itself. */
        STEP    "nop (not emulated)"
        nop
        END_STEP

        xorl    %eax, %eax
        STEP    "cpuid"
        cpuid
        END_STEP

        movw    $UART_SCR, %dx
        movb    $0x5A, %al
        STEP    "out to the UART"
        outb    %al, %dx
        END_STEP

        movw    $COM1_LSR, %dx
        STEP    "in from the UART"
        inb     %dx, %al
        END_STEP

        movl    $MSR_EFER, %ecx
        STEP    "rdmsr"
        rdmsr
        END_STEP

        movl    $MSR_EFER, %ecx
        rdmsr
        STEP    "wrmsr"
        wrmsr
        END_STEP

        STEP    "mmio read of the local APIC"
        movl    LAPIC + 0x30, %eax      /* version */
        END_STEP

        STEP    "mmio write of the local APIC"
        movl    $0, LAPIC + 0x80        /* task priority */
        END_STEP

        movl    %cr0, %eax
        orl     $CR0_EM, %eax
        STEP    "mov to cr0"
        movl    %eax, %cr0
        END_STEP
        andl    $~CR0_EM, %eax
        movl    %eax, %cr0

        movl    %cr4, %eax
        STEP    "mov to cr4"
        movl    %eax, %cr4
        END_STEP

        /* A WRMSR that faults: #GP, no #DB. IA32_PKRS bits 63:32 are
         * reserved, and without PKS the MSR does not exist at all. (An
         * unknown MSR would do under Ferrite, but QEMU's TCG ignores
         * writes to those.) */
        movl    $0x6E1, %ecx
        xorl    %eax, %eax
        movl    $1, %edx
        STEP    "faulting wrmsr"
        wrmsr
        END_FAULT

        movl    $msg_done, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $msg_checks, %esi
        call    puts
        jmp     poweroff

/* #DB: counts, and keeps the return EIP and DR6; clears DR6 (its bits
 * are sticky) and TF in the frame it returns to. */
db_handler:
        pushl   %eax
        incl    db_count
        movl    4(%esp), %eax
        movl    %eax, db_eip
        movl    %dr6, %eax
        movl    %eax, db_dr6
        movl    $0xFFFF0FF0, %eax
        movl    %eax, %dr6
        andl    $~TF, 12(%esp)
        popl    %eax
        iret

/* #GP: counts, resumes at `resume` with TF clear. */
gp_handler:
        addl    $4, %esp                /* the error code */
        pushl   %eax
        incl    gp_count
        movl    resume, %eax
        movl    %eax, 4(%esp)
        andl    $~TF, 12(%esp)
        popl    %eax
        iret

/* check_step: one #DB, at expect_rip, with DR6.BS. */
check_step:
        pushal
        cmpl    $1, db_count
        jne     fail
        movl    db_eip, %eax
        cmpl    expect_rip, %eax
        jne     fail
        testl   $DR6_BS, db_dr6
        jz      fail
        cmpl    $0, gp_count
        jne     fail
        jmp     ok

/* check_fault: one #GP and no #DB. */
check_fault:
        pushal
        cmpl    $0, db_count
        jne     fail
        cmpl    $1, gp_count
        jne     fail
ok:     movl    $msg_ok, %esi
        call    puts
        movl    cur_what, %esi
        call    puts
        movb    $'\n', %al
        call    putc
        jmp     1f
fail:   movl    $msg_fail, %esi
        call    puts
        movl    cur_what, %esi
        call    puts
        movl    $msg_dbs, %esi
        call    puts
        movl    db_count, %eax
        call    putdec
        movl    $msg_at, %esi
        call    puts
        movl    db_eip, %eax
        subl    expect_rip, %eax
        call    putdec
        movl    $msg_dr6, %esi
        call    puts
        movl    db_dr6, %eax
        call    putdec
        movl    $msg_gps, %esi
        call    puts
        movl    gp_count, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
1:      incl    checks
        popal
        ret

        .section .rodata
msg_ok:     .asciz "step: ok "
msg_fail:   .asciz "step: FAIL "
msg_dbs:    .asciz ": #DB "
msg_at:     .asciz " times, last at expected+"
msg_dr6:    .asciz ", DR6 "
msg_gps:    .asciz ", #GP "
msg_done:   .asciz "step: done "
msg_checks: .asciz " checks\n"

        .data
        .balign 4
cur_what:   .long 0
expect_rip: .long 0
resume:     .long 0
db_count:   .long 0
db_eip:     .long 0
db_dr6:     .long 0
gp_count:   .long 0
checks:     .long 0
