/* timer_latency: how late a halted vCPU's timer interrupt arrives while
 * another domain's vCPU keeps the same host CPU busy (run beside
 * `spin.S` on one host CPU; under -icount the figures are exact).
 * Measures the TSC frequency against the ACPI PM timer, then 50 times
 * arms the TSC-deadline timer 2 ms ahead, halts, and records how far past
 * the deadline the interrupt handler ran. Prints
 *   BENCH-TSC <tsc ticks> <pm ticks>            TSC against the PM timer
 *   BENCH timer_wakeup <sum of ticks late> 50
 *   BENCH-MAX timer_wakeup <worst ticks late>
 *   latency: timer wake-up avg <n> us max <n> us over 50
 * and powers off. */
        .include "pvh.inc"

        .set MSR_TSC_DEADLINE, 0x6E0
        .set X2APIC_LVT_TMR,   0x832
        .set VEC_TIMER,        0x40
        .set ROUNDS,           50

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        X2APIC_ON
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $(2 << 17) | VEC_TIMER, %eax    /* TSC-deadline mode */
        xorl    %edx, %edx
        wrmsr
        call    calibrate_tsc
        movl    %eax, ticks_per_us
        call    put_bench_tsc
        /* 2 ms ahead. */
        imull   $2000, %eax
        movl    %eax, ahead
        movl    $ROUNDS, rounds_left
round:
        rdtsc
        addl    ahead, %eax
        adcl    $0, %edx
        movl    %eax, deadline
        movl    %edx, deadline + 4
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
        movl    $0, fired
1:      sti
        hlt
        cli
        cmpl    $0, fired
        je      1b
        /* late = isr_tsc - deadline, in ticks (fits 32 bits). */
        movl    isr_tsc, %eax
        subl    deadline, %eax
        addl    %eax, late_sum
        cmpl    late_max, %eax
        jbe     2f
        movl    %eax, late_max
2:      decl    rounds_left
        jnz     round
        movl    $msg_sum, %esi
        call    puts
        movl    late_sum, %eax
        call    putdec
        movl    $msg_max_ticks, %esi
        call    puts
        movl    late_max, %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        movl    $msg_avg, %esi
        call    puts
        movl    late_sum, %eax
        xorl    %edx, %edx
        movl    $ROUNDS, %ecx
        divl    %ecx
        xorl    %edx, %edx
        divl    ticks_per_us
        call    putdec
        movl    $msg_max, %esi
        call    puts
        movl    late_max, %eax
        xorl    %edx, %edx
        divl    ticks_per_us
        call    putdec
        movl    $msg_over, %esi
        call    puts
        jmp     poweroff

timer_isr:
        pushal
        rdtsc
        movl    %eax, isr_tsc
        movl    $1, fired
        movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret

        .section .rodata
msg_sum:    .asciz "BENCH timer_wakeup "
msg_max_ticks: .asciz " 50\nBENCH-MAX timer_wakeup "
msg_nl:     .asciz "\n"
msg_avg:    .asciz "latency: timer wake-up avg "
msg_max:    .asciz " us max "
msg_over:   .asciz " us over 50\n"

        .data
ticks_per_us: .long 0
ahead:      .long 0
deadline:   .long 0, 0
isr_tsc:    .long 0
fired:      .long 0
rounds_left: .long 0
late_sum:   .long 0
late_max:   .long 0
