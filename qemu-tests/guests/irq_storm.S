/* irq_storm: as many interrupts as one vCPU can make itself: its LAPIC
 * timer periodic with an initial count of 1 (divide by 1), and self-IPIs
 * (x2APIC SELF_IPI) sent back to back with IF=1, each handler signalling
 * EOI, both at once: STORM_IPIS self-IPIs while the timer runs (it stops
 * itself after STORM_TIMER interrupts, or when the IPIs are done). Then it
 * prints
 *   storm: <ipis> ipis, <timer> timer interrupts
 * and powers off. Beside timer_latency.S it shows whether one domain's
 * storm delays another's interrupts. */
        .include "pvh.inc"

        .set X2APIC_LVT_TMR,   0x832
        .set X2APIC_TMICT,     0x838
        .set X2APIC_TDCR,      0x83E
        .set X2APIC_SELF_IPI,  0x83F
        .set VEC_TIMER,        0x41
        .set VEC_IPI,          0x42
        .set STORM_IPIS,       20000
        .set STORM_TIMER,      2000

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        GATE    VEC_IPI, ipi_isr
        X2APIC_ON
        movl    $X2APIC_TDCR, %ecx
        movl    $0xB, %eax                      /* divide by 1 */
        xorl    %edx, %edx
        wrmsr
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $(1 << 17) | VEC_TIMER, %eax    /* periodic */
        wrmsr
        movl    $X2APIC_TMICT, %ecx
        movl    $1, %eax
        wrmsr
        sti
        xorl    %ebx, %ebx
1:      movl    $X2APIC_SELF_IPI, %ecx
        movl    $VEC_IPI, %eax
        xorl    %edx, %edx
        wrmsr
        incl    %ebx
        cmpl    $STORM_IPIS, %ebx
        jb      1b
        cli
        /* Stop the timer before reporting. */
        movl    $X2APIC_TMICT, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $msg_storm, %esi
        call    puts
        movl    ipi_count, %eax
        call    putdec
        movl    $msg_ipis, %esi
        call    puts
        movl    timer_count, %eax
        call    putdec
        movl    $msg_timer, %esi
        call    puts
        jmp     poweroff

/* The timer's handler: counts, stops the timer after STORM_TIMER. */
timer_isr:
        pushal
        incl    timer_count
        cmpl    $STORM_TIMER, timer_count
        jb      1f
        movl    $X2APIC_TMICT, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
1:      movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret
        X2APIC_EOI_ISR ipi_isr, ipi_count

        .section .rodata
msg_storm:  .asciz "storm: "
msg_ipis:   .asciz " ipis, "
msg_timer:  .asciz " timer interrupts\n"

        .data
        .balign 4
timer_count: .long 0
ipi_count:   .long 0
