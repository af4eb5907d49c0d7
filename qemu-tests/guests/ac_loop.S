/* ac_loop: alignment-check exceptions, and the #AC loop of XSA-156
 * (CVE-2015-5307): an #AC whose own delivery raises #AC again. On a host
 * that does not intercept #AC, the CPU loops delivering it in microcode
 * and never returns to the hypervisor.
 *
 * With CR0.AM set, the guest drops to ring 3 (IOPL 3, so it may print)
 * with EFLAGS.AC set. Its #AC gate leads to a conforming code segment, so
 * the handler runs at CPL 3 on the interrupted stack (no stack switch).
 *
 * 1. A misaligned load: the handler counts, records the error code and
 *    the EIP, clears AC in the saved flags and returns. Prints
 *    "ac: 1 #AC, error code 0, at the misaligned load" (or FAIL).
 * 2. Prints "ac: looping", sets AC again and moves ESP to an odd
 *    address: the next push raises #AC, whose delivery pushes onto that
 *    stack and raises #AC again, for ever. Nothing is printed after that
 *    (the hypervisor must keep its CPU, the guest just keeps taking
 *    exceptions); "ac: FAIL the loop ended" if it ever returns. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        /* #AC (vector 17): a 32-bit interrupt gate to the conforming
         * segment 0x28. */
        movl    $ac_handler, %eax
        movw    %ax, idt + 17 * 8
        shrl    $16, %eax
        movw    %ax, idt + 17 * 8 + 6
        movw    $0x28, idt + 17 * 8 + 2
        movw    $0x8E00, idt + 17 * 8 + 4
        lidt    idt_desc
        movl    %cr0, %eax
        orl     $(1 << 18), %eax        /* AM */
        movl    %eax, %cr0
        movl    $msg_start, %esi
        call    puts
        pushl   $0x23                   /* SS */
        pushl   $user_stack_top
        pushl   $0x43002                /* AC, IOPL 3, IF clear */
        pushl   $0x1B                   /* CS */
        pushl   $ring3
        iretl

ring3:
        movw    $0x23, %ax
        movw    %ax, %ds
        movw    %ax, %es
        .globl  misaligned_load
misaligned_load:
        movl    misaligned, %eax
        cmpl    $1, ac_count
        jne     1f
        cmpl    $0, ac_err
        jne     1f
        cmpl    $misaligned_load, ac_eip
        jne     1f
        movl    $msg_first_ok, %esi
        call    puts
        jmp     2f
1:      movl    $msg_first_fail, %esi
        call    puts
        movl    ac_count, %eax
        call    putdec
        movb    $' ', %al
        call    putc
        movl    ac_err, %eax
        call    putdec
        movb    $' ', %al
        call    putc
        movl    ac_eip, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
2:      movl    $msg_looping, %esi
        call    puts
        pushfl
        orl     $0x40000, (%esp)
        popfl
        movl    $user_stack_top - 2, %esp
        pushl   %eax                    /* #AC, and again in its delivery */
        movl    $user_stack_top, %esp
        movl    $msg_loop_ended, %esi
        call    puts
3:      jmp     3b

/* Runs at CPL 3 (conforming code): counts, records, clears AC in the
 * interrupted flags. */
ac_handler:
        popl    ac_err
        incl    ac_count
        pushl   %eax
        movl    4(%esp), %eax
        movl    %eax, ac_eip
        popl    %eax
        andl    $~0x40000, 8(%esp)
        iretl

        .data
        .balign 8
gdt:    .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: ring-0 code */
        .quad   0x00CF92000000FFFF      /* 0x10: ring-0 data */
        .quad   0x00CFFA000000FFFF      /* 0x18: ring-3 code (0x1B) */
        .quad   0x00CFF2000000FFFF      /* 0x20: ring-3 data (0x23) */
        .quad   0x00CF9E000000FFFF      /* 0x28: ring-0 conforming code */
gdt_desc:
        .word   6 * 8 - 1
        .long   gdt
        .balign 8
idt:    .fill   32 * 8, 1, 0
idt_desc:
        .word   32 * 8 - 1
        .long   idt
        .balign 4
ac_count: .long 0
ac_err:   .long 0
ac_eip:   .long 0
        .balign 4
        .byte   0
misaligned:
        .long   0x12345678
        .balign 16
user_stack:
        .fill   4096, 1, 0
user_stack_top:

        .section .rodata
msg_start:      .asciz "ac: start\n"
msg_first_ok:   .asciz "ac: 1 #AC, error code 0, at the misaligned load\n"
msg_first_fail: .asciz "ac: FAIL first #AC: count, error code, eip "
msg_looping:    .asciz "ac: looping\n"
msg_loop_ended: .asciz "ac: FAIL the loop ended\n"
