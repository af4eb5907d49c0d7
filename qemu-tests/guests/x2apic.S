/* x2apic: switches its local APIC to x2APIC mode (IA32_APIC_BASE.EXTD)
 * and drives it only through MSRs: reads its ID, takes a one-shot timer
 * interrupt and a self-IPI, and checks that the xAPIC MMIO page is gone
 * (x2APIC mode disables it). Prints "x2apic id=<n> timer=<n> selfipi=<n>"
 * or "x2apic FAIL <why>", then powers off. */
        .include "pvh.inc"

        .set X2APIC_LVT_TMR,  0x832
        .set X2APIC_TMR_INIT, 0x838
        .set X2APIC_TMR_DIV,  0x83E
        .set X2APIC_SELF_IPI, 0x83F
        .set VEC_TIMER,       0x40
        .set VEC_SELF,        0x41

        .text
_start:
        ENTER
        /* CPUID.1:ECX bit 21 = x2APIC. */
        movl    $1, %eax
        cpuid
        btl     $21, %ecx
        jnc     no_x2apic
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        GATE    VEC_SELF, self_isr
        X2APIC_ON
        movl    $X2APIC_ID, %ecx
        rdmsr
        movl    %eax, apic_id
        /* One-shot timer, divide by 1, 100000 ticks. */
        movl    $X2APIC_TMR_DIV, %ecx
        movl    $0xB, %eax
        wrmsr
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $VEC_TIMER, %eax
        wrmsr
        movl    $X2APIC_TMR_INIT, %ecx
        movl    $100000, %eax
        wrmsr
        sti
1:      hlt
        cmpl    $0, timer_count
        je      1b
        /* A self-IPI through the x2APIC-only SELF IPI register. */
        movl    $X2APIC_SELF_IPI, %ecx
        movl    $VEC_SELF, %eax
        xorl    %edx, %edx
        wrmsr
        movl    $100, %ecx
2:      cmpl    $0, self_count
        jne     3f
        pause
        loop    2b
3:      cli
        movl    $msg_ok, %esi
        call    puts
        movl    apic_id, %eax
        call    putdec
        movl    $msg_timer, %esi
        call    puts
        movl    timer_count, %eax
        call    putdec
        movl    $msg_self, %esi
        call    puts
        movl    self_count, %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        jmp     poweroff

no_x2apic:
        movl    $msg_none, %esi
        call    puts
        jmp     poweroff

        X2APIC_EOI_ISR timer_isr, timer_count
        X2APIC_EOI_ISR self_isr, self_count

        .section .rodata
msg_ok:     .asciz "x2apic id="
msg_timer:  .asciz " timer="
msg_self:   .asciz " selfipi="
msg_nl:     .asciz "\n"
msg_none:   .asciz "x2apic FAIL not offered in CPUID\n"

        .data
apic_id:    .long 0
timer_count: .long 0
self_count: .long 0
