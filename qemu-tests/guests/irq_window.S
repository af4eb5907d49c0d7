/* irq_window: an interrupt that becomes pending while the guest has
 * IF=0 and is then held back (the guest raises its task priority above
 * it) must not keep the vCPU from running once it sets IF again.
 *
 * The hypervisor opens an interrupt window (an exit as soon as the guest
 * can take an interrupt) for the pending timer vector; when the TPR then
 * masks it, nothing is deliverable any more and the window must close,
 * or every entry exits again at once and the guest never runs another
 * instruction (Linux hung that way after masking the 8259 while the
 * BIOS's PIT interrupt was pending). Prints
 * "irq-window: ran <n> loops with the interrupt held back",
 * "irq-window: delivered after TPR lowered" and powers off, or
 * "irq-window: FAIL <why>". */
        .include "pvh.inc"

        .set X2APIC_TPR,      0x808
        .set X2APIC_IRR2,     0x822     /* IRR bits for vectors 0x40-0x5F */
        .set X2APIC_LVT_TMR,  0x832
        .set X2APIC_TMR_INIT, 0x838
        .set X2APIC_TMR_DIV,  0x83E
        .set VEC_TIMER,       0x40
        .set LOOPS,           100000

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        X2APIC_ON
        /* IF=0 from here: a one-shot timer, divide by 1, 1000 ticks. */
        cli
        movl    $X2APIC_TMR_DIV, %ecx
        movl    $0xB, %eax
        wrmsr
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $VEC_TIMER, %eax
        wrmsr
        movl    $X2APIC_TMR_INIT, %ecx
        movl    $1000, %eax
        wrmsr
        /* Wait (IF=0) until the vector is pending in the IRR. */
        movl    $10000000, %esi
1:      movl    $X2APIC_IRR2, %ecx
        rdmsr
        testl   $1, %eax
        jnz     2f
        decl    %esi
        jnz     1b
        movl    $msg_no_irr, %esi
        jmp     fail
        /* Hold it back: priority class 15 masks vector class 4. */
2:      movl    $X2APIC_TPR, %ecx
        movl    $0xF0, %eax
        xorl    %edx, %edx
        wrmsr
        sti
        /* Must run: nothing is deliverable now. */
        movl    $LOOPS, %ecx
3:      incl    loops
        loop    3b
        cmpl    $0, timer_count
        jne     early
        movl    $msg_ran, %esi
        call    puts
        movl    loops, %eax
        call    putdec
        movl    $msg_held, %esi
        call    puts
        /* Lower the TPR: the timer interrupt comes in now. */
        movl    $X2APIC_TPR, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $1000000, %ecx
4:      cmpl    $0, timer_count
        jne     5f
        loop    4b
        movl    $msg_never, %esi
        jmp     fail
5:      cli
        movl    $msg_delivered, %esi
        call    puts
        jmp     poweroff

early:
        movl    $msg_early, %esi
fail:
        cli
        pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     poweroff

        X2APIC_EOI_ISR timer_isr, timer_count

        .section .rodata
msg_ran:       .asciz "irq-window: ran "
msg_held:      .asciz " loops with the interrupt held back\n"
msg_delivered: .asciz "irq-window: delivered after TPR lowered\n"
msg_fail:      .asciz "irq-window: FAIL "
msg_no_irr:    .asciz "the timer vector never became pending\n"
msg_early:     .asciz "the interrupt came in above the task priority\n"
msg_never:     .asciz "the interrupt never came after the TPR was lowered\n"

        .data
timer_count: .long 0
loops:      .long 0
