/* x2apic: switches its local APIC to x2APIC mode (IA32_APIC_BASE.EXTD)
 * and drives it only through MSRs: reads its ID, takes a one-shot timer
 * interrupt and a self-IPI, and checks that the xAPIC MMIO page is gone
 * (x2APIC mode disables it). Prints "x2apic id=<n> timer=<n> selfipi=<n>"
 * or "x2apic FAIL <why>", then powers off. */
        .include "pvh.inc"

        .set MSR_APIC_BASE,   0x1B
        .set X2APIC_ID,       0x802
        .set X2APIC_EOI,      0x80B
        .set X2APIC_SVR,      0x80F
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
        /* PVH leaves GDTR undefined: load our own GDT (flat code 0x08,
         * data 0x10) so interrupt gates have a code segment to name. */
        lgdt    gdt_ptr
        ljmp    $0x08, $9f
9:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        /* An IDT with the two vectors (32-bit interrupt gates). */
        movw    $0x08, %bx
        movl    $timer_isr, %eax
        movl    $idt + VEC_TIMER * 8, %edi
        call    set_gate
        movl    $self_isr, %eax
        movl    $idt + VEC_SELF * 8, %edi
        call    set_gate
        lidt    idt_ptr
        /* Enable x2APIC: EN (11) and EXTD (10). */
        movl    $MSR_APIC_BASE, %ecx
        rdmsr
        orl     $(1 << 11) | (1 << 10), %eax
        wrmsr
        movl    $X2APIC_SVR, %ecx
        movl    $0x1FF, %eax
        xorl    %edx, %edx
        wrmsr
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

/* set_gate: interrupt gate at %edi for handler %eax, selector %bx. */
set_gate:
        movw    %ax, (%edi)
        movw    %bx, 2(%edi)
        movw    $0x8E00, 4(%edi)
        shrl    $16, %eax
        movw    %ax, 6(%edi)
        ret

timer_isr:
        pushal
        incl    timer_count
        movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret

self_isr:
        pushal
        incl    self_count
        movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret

        .section .rodata
msg_ok:     .asciz "x2apic id="
msg_timer:  .asciz " timer="
msg_self:   .asciz " selfipi="
msg_nl:     .asciz "\n"
msg_none:   .asciz "x2apic FAIL not offered in CPUID\n"

        .data
        .balign 8
gdt:        .quad 0
            .quad 0x00CF9A000000FFFF    /* 0x08: flat 32-bit code */
            .quad 0x00CF92000000FFFF    /* 0x10: flat data */
gdt_ptr:    .word 3 * 8 - 1
            .long gdt
        .balign 8
idt:        .fill 256, 8, 0
idt_ptr:    .word 256 * 8 - 1
            .long idt
apic_id:    .long 0
timer_count: .long 0
self_count: .long 0
