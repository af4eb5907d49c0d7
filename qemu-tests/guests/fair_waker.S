/* fair_waker: a vCPU that wakes constantly and works hard each time: a
 * TSC-deadline timer every 100 us whose handler busies itself for WORK
 * iterations of `loop` (90 us under -icount, where one is one
 * instruction) before the vCPU halts again. Alone it would want nearly
 * the whole CPU; beside `fair_spin.S` a fair scheduler gives it about
 * half. Runs for 300 ms of PM timer, then prints
 *   fair-waker: <n> ticks handled
 * and powers off. */
        .include "pvh.inc"

        .set MSR_TSC_DEADLINE, 0x6E0
        .set X2APIC_LVT_TMR,   0x832
        .set VEC_TIMER,        0x40
        .set WINDOW,           1073864          /* 300 ms */
        .set PERIOD_US,        100
        .set WORK,             90000

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, tick_isr
        X2APIC_ON
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $(2 << 17) | VEC_TIMER, %eax    /* TSC-deadline mode */
        xorl    %edx, %edx
        wrmsr
        call    calibrate_tsc
        imull   $PERIOD_US, %eax
        movl    %eax, period
        movw    pm_tmr_port, %dx
        inl     %dx, %eax
        movl    %eax, start
        rdtsc
        movl    %eax, deadline
        movl    %edx, deadline + 4
        call    arm_next
1:      sti
        hlt
        cli
        movw    pm_tmr_port, %dx
        inl     %dx, %eax
        subl    start, %eax
        andl    $0xFFFFFF, %eax
        cmpl    $WINDOW, %eax
        jb      1b
        movl    $MSR_TSC_DEADLINE, %ecx         /* timer off */
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $msg_ticks, %esi
        call    puts
        movl    ticks, %eax
        call    putdec
        movl    $msg_handled, %esi
        call    puts
        jmp     poweroff

/* arm_next: deadline += period, or now + period if that has passed
 * already (missed ticks are dropped, not made up). */
arm_next:
        movl    deadline, %esi
        movl    deadline + 4, %edi
        addl    period, %esi
        adcl    $0, %edi
        rdtsc
        cmpl    %edx, %edi
        ja      2f
        jb      1f
        cmpl    %eax, %esi
        ja      2f
1:      movl    %eax, %esi
        movl    %edx, %edi
        addl    period, %esi
        adcl    $0, %edi
2:      movl    %esi, deadline
        movl    %edi, deadline + 4
        movl    %esi, %eax
        movl    %edi, %edx
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
        ret

tick_isr:
        pushal
        incl    ticks
        call    arm_next
        movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $WORK, %ecx
1:      loop    1b
        popal
        iret

        .section .rodata
msg_ticks:   .asciz "fair-waker: "
msg_handled: .asciz " ticks handled\n"

        .data
        .balign 8
deadline:   .long 0, 0
period:     .long 0
start:      .long 0
ticks:      .long 0
