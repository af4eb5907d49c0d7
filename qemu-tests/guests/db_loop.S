/* db_loop: debug exceptions, and the #DB loop of XSA-156
 * (CVE-2015-8104): a #DB whose own delivery raises #DB again. On a host
 * that does not intercept #DB, the CPU loops delivering it in microcode
 * and never returns to the hypervisor.
 *
 * 1. Three single steps (EFLAGS.TF): the handler counts them and clears
 *    TF after the third. Prints "db: 3 single-step traps" (or FAIL).
 * 2. Prints "db: looping", puts a read/write data breakpoint (DR0, DR7
 *    L0, RW0 = 11, LEN0 = 11) on the #DB gate of its IDT and single-steps:
 *    delivering the #DB reads the gate, which hits the breakpoint, whose
 *    #DB is delivered at the handler's first instruction, reading the
 *    gate again, for ever. Nothing is printed after that; if the handler
 *    ever runs, "db: FAIL the loop ended" (the platform does not report
 *    breakpoints on the IDT read). */
        .include "pvh.inc"

        .set LOOP_STACK, 0xE00000       /* 14 MiB: the guest has 16 */

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    1, db_handler
        pushfl
        orl     $0x100, (%esp)
        popfl
        nop
        nop
        nop
        nop
        cmpl    $3, db_count
        jne     1f
        movl    $msg_steps_ok, %esi
        call    puts
        jmp     2f
1:      movl    $msg_steps_fail, %esi
        call    puts
        movl    db_count, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
2:      movl    $msg_looping, %esi
        call    puts
        movl    $1, looping
        movl    $flat_idt + 1 * 8, %eax
        movl    %eax, %dr0
        movl    $0x000F0001, %eax       /* L0, RW0 = 11, LEN0 = 11 */
        movl    %eax, %dr7
        /* Each delivery pushes 12 bytes (no stack switch at CPL 0): a
         * stack high in RAM lasts over a million of them (if it runs
         * out, the pushes wrap to 4 GiB, no RAM, and Ferrite crashes the
         * domain). */
        movl    $LOOP_STACK, %esp
        pushfl
        orl     $0x100, (%esp)
        popfl
        nop
        nop
        movl    $msg_loop_ended, %esi
        call    puts
3:      hlt
        jmp     3b

/* Counts; clears TF after three steps, or at once (and the breakpoint)
 * once looping, where it should never run. */
db_handler:
        pushl   %eax
        cmpl    $0, looping
        jne     2f
        incl    db_count
        cmpl    $3, db_count
        jb      1f
        andl    $~0x100, 12(%esp)       /* EAX, EIP, CS, EFLAGS */
1:      popl    %eax
        iretl
2:      xorl    %eax, %eax
        movl    %eax, %dr7
        andl    $~0x100, 12(%esp)
        popl    %eax
        iretl

        .data
        .balign 4
db_count: .long 0
looping:  .long 0

        .section .rodata
msg_steps_ok:   .asciz "db: 3 single-step traps\n"
msg_steps_fail: .asciz "db: FAIL single-step traps: "
msg_looping:    .asciz "db: looping\n"
msg_loop_ended: .asciz "db: FAIL the loop ended\n"
