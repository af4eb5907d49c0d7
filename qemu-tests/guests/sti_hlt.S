/* sti_hlt: the idle idiom `sti; hlt` must always be woken by the
 * interrupt that ends it. Each round arms a one-shot LAPIC timer about as
 * long as a nested world switch, then waits in its own copy of
 * `sti; hlt` (under QEMU's TCG, code run for the first time is translated
 * first, which widens the gap between the STI and the HLT; the timer's
 * host interrupt often lands there, inside the STI shadow), and checks
 * that the handler ran after the HLT, never before it. A handler that ran
 * before the HLT would leave the guest asleep with nothing to wake it: the
 * test then times out. Prints "sti_hlt rounds=<n> early=<n>". */
        .include "pvh.inc"

        .set X2APIC_LVT_TMR,  0x832
        .set X2APIC_TMR_INIT, 0x838
        .set X2APIC_TMR_DIV,  0x83E
        .set VEC_TIMER,       0x40
        .set ROUNDS,          400

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        X2APIC_ON
        movl    $X2APIC_TMR_DIV, %ecx
        movl    $0xB, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $VEC_TIMER, %eax
        wrmsr
        xorl    %ebx, %ebx              /* rounds done */
round:
        movl    timer_count, %esi       /* count before this round */
        /* 5-70 us, varied so the expiry lands at different points. */
        movl    %ebx, %eax
        imull   $7919, %eax
        andl    $0xFFFF, %eax
        addl    $5000, %eax
        movl    $X2APIC_TMR_INIT, %ecx
        xorl    %edx, %edx
        wrmsr
        movl    %ebx, %eax
        shll    $5, %eax
        addl    $waits, %eax
        jmp     *%eax
round_done:
        cli
        incl    %ebx
        cmpl    $ROUNDS, %ebx
        jb      round
        movl    $msg_ok, %esi
        call    puts
        movl    %ebx, %eax
        call    putdec
        movl    $msg_early, %esi
        call    puts
        movl    early_count, %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        jmp     poweroff

/* ROUNDS copies of the wait, 32 bytes apart. */
        .balign 32
waits:
        .rept   ROUNDS
        .balign 32
        sti
1:      hlt
        cmpl    %esi, timer_count
        je      1b
        jmp     round_done
        .endr

/* The timer handler: counts, and counts separately an interrupt taken
 * with the return address on a HLT (delivered inside the STI shadow). */
timer_isr:
        pushal
        incl    timer_count
        movl    32(%esp), %eax          /* return EIP */
        cmpb    $0xF4, (%eax)
        jne     2f
        incl    early_count
2:      movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret

        .section .rodata
msg_ok:     .asciz "sti_hlt rounds="
msg_early:  .asciz " early="
msg_nl:     .asciz "\n"

        .data
timer_count: .long 0
early_count: .long 0
