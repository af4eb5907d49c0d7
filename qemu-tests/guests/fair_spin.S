/* fair_spin: how much of the host CPU a spinning vCPU gets beside a
 * neighbour that wakes constantly (`fair_waker.S`). For WINDOW PM-timer
 * ticks (300 ms) it reads the PM timer in a loop; a step of at most
 * STEP ticks between two reads is time it ran, a longer one time it was
 * descheduled (under -icount a PM tick is about 280 instructions, and the
 * loop reads it every few). Prints
 *   fair-spin: ran <ticks> of <ticks> pm ticks, <n> loops
 * and powers off. */
        .include "pvh.inc"

        .set WINDOW, 1073864                    /* 300 ms */
        .set STEP,   2

        .text
_start:
        ENTER
        movw    pm_tmr_port, %dx
        inl     %dx, %eax
        movl    %eax, %ebx                      /* start */
        movl    %eax, %esi                      /* previous read */
        xorl    %edi, %edi                      /* ticks ran */
        xorl    %ebp, %ebp                      /* loops */
1:      incl    %ebp
        inl     %dx, %eax
        movl    %eax, %ecx
        subl    %esi, %ecx
        andl    $0xFFFFFF, %ecx
        movl    %eax, %esi
        cmpl    $STEP, %ecx
        ja      2f
        addl    %ecx, %edi
2:      subl    %ebx, %eax
        andl    $0xFFFFFF, %eax
        cmpl    $WINDOW, %eax
        jb      1b
        pushl   %eax
        movl    $msg_ran, %esi
        call    puts
        movl    %edi, %eax
        call    putdec
        movl    $msg_of, %esi
        call    puts
        popl    %eax
        call    putdec
        movl    $msg_ticks, %esi
        call    puts
        movl    %ebp, %eax
        call    putdec
        movl    $msg_loops, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_ran:    .asciz "fair-spin: ran "
msg_of:     .asciz " of "
msg_ticks:  .asciz " pm ticks, "
msg_loops:  .asciz " loops\n"
