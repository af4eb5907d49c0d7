/* tpr_cr8: in 64-bit mode CR8 is the local APIC's task priority
 * (SDM vol. 3A 10.8.6.1; AMD APM vol. 2 16.6.4): CR8 bits 3:0 are TPR
 * bits 7:4, and a write of either is seen through the other, however the
 * APIC is reached (xAPIC MMIO at 0x80, x2APIC MSR 0x808). An interrupt
 * whose class is not above the task priority waits, and comes in as soon
 * as CR8 is lowered below it.
 *
 * Under SVM the guest's MOV CR8 goes to the VMCB's V_TPR without an exit,
 * while Ferrite's LAPIC model keeps its own TPR: before they were kept in
 * step, CR8 and the TPR register disagreed and an interrupt came in above
 * CR8.
 *
 * The guest goes to long mode (4 GiB identity-mapped, 2 MiB pages), then
 * prints "tpr: PASS <what>" or "tpr: FAIL <what>: got <x> want <y>" per
 * check, and "tpr: done <n> checks". The x2APIC checks run only where
 * CPUID offers x2APIC ("tpr: skip x2APIC" otherwise, as on QEMU 7.2's
 * TCG). */
        .include "pvh.inc"

        .set MSR_EFER,      0xC0000080
        .set CODE64,        0x18
        .set LAPIC,         0xFEE00000
        .set TPR,           0x80
        .set EOI,           0xB0
        .set SVR,           0xF0
        .set IRR2,          0x220       /* IRR bits of vectors 0x40-0x5F */
        .set ICR_LOW,       0x300
        .set X2APIC_TPR,    0x808
        .set VEC,           0x50        /* priority class 5 */

        .text
_start:
        ENTER
        lgdt    gdt_ptr
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        /* The xAPIC, software-enabled (spurious vector 0xFF); nothing
         * from the 8259 (under QEMU alone SeaBIOS leaves its timer on). */
        movl    $0x1FF, LAPIC + SVR
        movl    $0x10000, LAPIC + 0x350 /* LVT LINT0 masked */
        movb    $0xFF, %al
        outb    %al, $0x21
        outb    %al, $0xA1
        call    build_tables
        movl    %cr4, %eax
        orl     $1 << 5, %eax           /* PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $1 << 8, %eax           /* LME */
        wrmsr
        movl    %cr0, %eax
        orl     $1 << 31, %eax          /* PG: long mode */
        movl    %eax, %cr0
        ljmp    $CODE64, $long64

        .code64
long64:
        lidt    idt64_ptr
        movq    $stack_top, %rsp
        /* The LAPIC's page through %rbx: an absolute address above 2 GiB
         * does not fit a sign-extended displacement. */
        movl    $LAPIC, %ebx

        /* A TPR written through MMIO is CR8. Bits 3:0 of the TPR are not
         * part of CR8, and stay as written across exits. */
        movl    $0x5A, TPR(%rbx)
        movq    %cr8, %rax
        movq    $5, %rdx
        movq    $msg_tpr_cr8, %rsi
        call    check
        movl    TPR(%rbx), %eax
        movq    $0x5A, %rdx
        movq    $msg_tpr_low, %rsi
        call    check

        /* CR8 written is the TPR (bits 3:0 cleared). */
        movq    $3, %rax
        movq    %rax, %cr8
        movl    TPR(%rbx), %eax
        movq    $0x30, %rdx
        movq    $msg_cr8_tpr, %rsi
        call    check

        /* CR8 = 15 holds a self-IPI of class 5 back, with IF=1. */
        movq    $15, %rax
        movq    %rax, %cr8
        sti
        movl    $0, ICR_LOW + 0x10(%rbx)      /* ICR high: no destination */
        movl    $(1 << 18) | VEC, ICR_LOW(%rbx)  /* fixed, self */
        movl    $200000, %ecx
1:      pause
        loop    1b
        movl    hits, %eax
        xorl    %edx, %edx
        movq    $msg_held, %rsi
        call    check
        movl    IRR2(%rbx), %eax
        andl    $1 << (VEC - 0x40), %eax
        movq    $1 << (VEC - 0x40), %rdx
        movq    $msg_irr, %rsi
        call    check
        /* CR8 = 5: the class is still not above it. */
        movq    $5, %rax
        movq    %rax, %cr8
        movl    $20000, %ecx
1:      pause
        loop    1b
        movl    hits, %eax
        xorl    %edx, %edx
        movq    $msg_held5, %rsi
        call    check
        /* CR8 = 4: in it comes, at once (a short spin, no exit needed). */
        movq    $4, %rax
        movq    %rax, %cr8
        movl    $1000, %ecx
1:      pause
        loop    1b
        movl    hits, %eax
        movq    $1, %rdx
        movq    $msg_in, %rsi
        call    check
        movq    %cr8, %rax
        movq    $4, %rdx
        movq    $msg_cr8_kept, %rsi
        call    check
        cli
        movq    $0, %rax
        movq    %rax, %cr8

        /* x2APIC: the TPR MSR is CR8 too. */
        movl    $1, %eax
        cpuid
        btl     $21, %ecx
        jc      1f
        movq    $msg_skip_x2, %rsi
        call    puts
        jmp     done
1:      movl    $MSR_APIC_BASE, %ecx
        rdmsr
        orl     $(1 << 11) | (1 << 10), %eax
        wrmsr
        movl    $X2APIC_TPR, %ecx
        movl    $0x70, %eax
        xorl    %edx, %edx
        wrmsr
        movq    %cr8, %rax
        movq    $7, %rdx
        movq    $msg_x2_cr8, %rsi
        call    check
        movq    $2, %rax
        movq    %rax, %cr8
        movl    $X2APIC_TPR, %ecx
        rdmsr
        movq    $0x20, %rdx
        movq    $msg_cr8_x2, %rsi
        call    check

done:   movq    $msg_done, %rsi
        call    puts
        movl    nchecks, %eax
        call    putdec2
        movq    $msg_checks, %rsi
        call    puts
        jmp     poweroff

/* check: one check, %rax got, %rdx wanted, %rsi its name. */
check:
        incl    nchecks
        pushq   %rsi
        movq    $msg_pass, %rsi
        cmpq    %rdx, %rax
        je      1f
        movq    $msg_fail, %rsi
1:      call    puts
        popq    %rsi
        call    puts
        cmpq    %rdx, %rax
        je      2f
        movq    $msg_got, %rsi
        call    puts
        call    puthex
        movq    $msg_want, %rsi
        call    puts
        movq    %rdx, %rax
        call    puthex
2:      movq    $msg_nl, %rsi
        jmp     puts

/* puthex: %rax in hex ("0x..."); keeps registers but %rax. Decimal for
 * the small numbers here would need pvh.inc's putdec, which is 32-bit
 * code (PUSHA). */
puthex:
        pushq   %rcx
        pushq   %rdx
        movq    %rax, %rdx
        movb    $'0', %al
        call    putc
        movb    $'x', %al
        call    putc
        movl    $60, %ecx
        /* Skip leading zeros (keep the last digit). */
1:      movq    %rdx, %rax
        shrq    %cl, %rax
        testb   $0xF, %al
        jnz     2f
        subl    $4, %ecx
        jnz     1b
2:      movq    %rdx, %rax
        shrq    %cl, %rax
        andb    $0xF, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     3f
        addb    $'a' - '0' - 10, %al
3:      call    putc
        subl    $4, %ecx
        jns     2b
        popq    %rdx
        popq    %rcx
        ret

/* putdec2: %eax (below 100) in decimal. */
putdec2:
        pushq   %rcx
        pushq   %rdx
        movl    $10, %ecx
        xorl    %edx, %edx
        divl    %ecx
        testl   %eax, %eax
        jz      1f
        addb    $'0', %al
        call    putc
1:      movb    %dl, %al
        addb    $'0', %al
        call    putc
        popq    %rdx
        popq    %rcx
        ret

vec_isr:
        pushq   %rax
        incl    hits
        movl    $LAPIC, %eax
        movl    $0, EOI(%rax)
        popq    %rax
        iretq

        .code32
/* build_tables: identity map of the low 4 GiB in 2 MiB pages (the LAPIC
 * is at 0xFEE00000), and the 64-bit IDT's gate for VEC. */
build_tables:
        pushal
        movl    $pds, %edi
        movl    $0x83, %eax             /* present, writable, 2 MiB */
        xorl    %edx, %edx
        movl    $4 * 512, %ecx
1:      movl    %eax, (%edi)
        movl    %edx, 4(%edi)
        addl    $0x200000, %eax
        adcl    $0, %edx
        addl    $8, %edi
        loop    1b
        movl    $pds + 0x0003, pdpt
        movl    $pds + 0x1003, pdpt + 8
        movl    $pds + 0x2003, pdpt + 16
        movl    $pds + 0x3003, pdpt + 24
        movl    $pdpt + 3, pml4
        movl    $vec_isr, %eax
        movl    $idt64 + VEC * 16, %edi
        movw    %ax, (%edi)
        movw    $CODE64, 2(%edi)
        movw    $0x8E00, 4(%edi)
        shrl    $16, %eax
        movw    %ax, 6(%edi)
        popal
        ret

        .section .rodata
msg_pass:       .asciz "tpr: PASS "
msg_fail:       .asciz "tpr: FAIL "
msg_got:        .asciz ": got "
msg_want:       .asciz " want "
msg_nl:         .asciz "\n"
msg_done:       .asciz "tpr: done "
msg_checks:     .asciz " checks\n"
msg_skip_x2:    .asciz "tpr: skip x2APIC (not in CPUID)\n"
msg_tpr_cr8:    .asciz "TPR 0x5A written by MMIO reads as CR8 5"
msg_tpr_low:    .asciz "TPR bits 3:0 read back as written"
msg_cr8_tpr:    .asciz "CR8 3 written reads as TPR 0x30"
msg_held:       .asciz "CR8 15 holds a class-5 interrupt back"
msg_irr:        .asciz "the held-back interrupt waits in the IRR"
msg_held5:      .asciz "CR8 5 still holds it back"
msg_in:         .asciz "CR8 4 lets it in at once"
msg_cr8_kept:   .asciz "CR8 reads 4 after the interrupt"
msg_x2_cr8:     .asciz "x2APIC TPR 0x70 written by WRMSR reads as CR8 7"
msg_cr8_x2:     .asciz "CR8 2 written reads as x2APIC TPR 0x20"

        .data
        .balign 8
gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: flat 32-bit code */
        .quad   0x00CF92000000FFFF      /* 0x10: flat data */
        .quad   0x00AF9A000000FFFF      /* 0x18: 64-bit code */
gdt_ptr:
        .word   4 * 8 - 1
        .long   gdt
        .balign 16
idt64:
        .fill   256 * 16, 1, 0
idt64_ptr:
        .word   256 * 16 - 1
        .quad   idt64
        .balign 4
hits:       .long 0
nchecks:    .long 0
        .balign 4096
pml4:       .fill 4096, 1, 0
pdpt:       .fill 4096, 1, 0
pds:        .fill 4 * 4096, 1, 0
