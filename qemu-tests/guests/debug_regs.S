/* debug_regs: debug exceptions and debug registers, which Ferrite
 * intercepts (#DB always, DR accesses until first use) and must give back
 * exactly as hardware would.
 *
 * 1. Single-step: with EFLAGS.TF set, each instruction traps with #DB; the
 *    handler counts five and clears TF in the saved flags. Prints
 *    "debug: 5 single-step traps" (or the count it got).
 * 2. DR0 is this guest's own: it is 0 when the guest first reads it, even
 *    if another domain on the same host CPU set its own DR0 before; a value
 *    written stays across 300 ms of sharing the CPU. Prints
 *    "debug: dr0 0 at start" and "debug: dr0 kept", or FAIL lines. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        /* Our own GDT (the PVH boot state only promises the loaded segment
         * registers, not a GDT behind them), so the #DB gate's selector is
         * a real code segment. */
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        /* An IDT with #DB (vector 1) only, 32-bit interrupt gate, on our CS. */
        movl    $db_handler, %eax
        movw    %ax, idt + 8            /* offset 15:0 */
        shrl    $16, %eax
        movw    %ax, idt + 14           /* offset 31:16 */
        movw    %cs, %ax
        movw    %ax, idt + 10           /* selector */
        movw    $0x8E00, idt + 12       /* present, DPL 0, 32-bit interrupt gate */
        lidt    idt_desc

        /* 1. Five single steps. */
        pushfl
        orl     $0x100, (%esp)
        popfl
        nop
        nop
        nop
        nop
        nop
        nop
        nop
        nop
        movl    $msg_steps, %esi
        call    puts
        movl    db_count, %eax
        call    putdec
        movl    $msg_steps2, %esi
        call    puts

        /* 2. DR0 starts at 0, and keeps what we write. */
        movl    %dr0, %eax
        testl   %eax, %eax
        jnz     1f
        movl    $msg_dr0_zero, %esi
        call    puts
        jmp     2f
1:      movl    $msg_dr0_leak, %esi
        call    puts
        call    putdec
        movb    $'\n', %al
        call    putc
2:      rdtsc
        orl     $1, %eax
        movl    %eax, marker
        movl    %eax, %dr0
        movl    $(PM_TMR_HZ * 3 / 10), %eax      /* 300 ms */
        call    pm_wait
        movl    %dr0, %eax
        cmpl    marker, %eax
        jne     3f
        movl    $msg_dr0_kept, %esi
        call    puts
        jmp     4f
3:      movl    $msg_dr0_lost, %esi
        call    puts
4:      movl    $msg_done, %esi
        call    puts
        jmp     poweroff

/* #DB: count; after five, clear TF in the interrupted EFLAGS. */
db_handler:
        incl    db_count
        cmpl    $5, db_count
        jb      1f
        andl    $~0x100, 8(%esp)        /* EIP, CS, EFLAGS */
1:      iretl

        .data
        .balign 8
gdt:    .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: flat 32-bit code */
        .quad   0x00CF92000000FFFF      /* 0x10: flat data */
gdt_desc:
        .word   3 * 8 - 1
        .long   gdt
        .balign 8
idt:    .fill   2 * 8, 1, 0
idt_desc:
        .word   2 * 8 - 1
        .long   idt
db_count: .long 0
marker:   .long 0

        .section .rodata
msg_steps:    .asciz "debug: "
msg_steps2:   .asciz " single-step traps\n"
msg_dr0_zero: .asciz "debug: dr0 0 at start\n"
msg_dr0_leak: .asciz "debug: FAIL dr0 at start holds "
msg_dr0_kept: .asciz "debug: dr0 kept\n"
msg_dr0_lost: .asciz "debug: FAIL dr0 changed under the guest\n"
msg_done:     .asciz "debug: done\n"
