/* xl_bench: the guest `ferrite bench xl` creates (tools/src/bench_xl.rs).
 *
 * Its first instruction reads the TSC: Ferrite starts a domain's TSC at 0
 * when it builds the domain, so with the hypervisor's "built" log line this
 * gives `xl create` to the guest's first instruction. It prints
 * "xlbench first_tsc=<n>".
 *
 * With an empty command line it then halts for good (the bench destroys
 * it). With a command line starting with 'c' it measures console output:
 * ROUNDS rounds with no console client attached, "xlbench detached done",
 * then, once 'c' is typed on its console (by an attached `xl console`),
 * ROUNDS more, "xlbench attached done", and waits again ('q' powers off).
 * A round: half a second of PM timer (the serial console's line budget
 * refills), "xlbench begin <r>", LINES lines of 64 bytes timed with the
 * TSC, half a second, "xlbench round <r> ticks=<t> bytes=<b>". */
        .include "pvh.inc"

        .set ROUNDS,        4
        .set LINES,         512
        .set LINE_BYTES,    64
        .set COM1_LSR_DR,   0x01
        .set HALF_SECOND,   (PM_TMR_HZ / 2)

        .text
_start:
        rdtsc                           /* the first instruction */
        movl    %eax, first_tsc
        movl    %edx, first_tsc + 4
        ENTER
        movl    24(%ebx), %eax          /* hvm_start_info.cmdline_paddr */
        movl    %eax, cmdline
        movl    $msg_first, %esi
        call    puts
        movl    first_tsc, %eax
        movl    first_tsc + 4, %edx
        call    putdec64
        movb    $'\n', %al
        call    putc
        movl    cmdline, %esi
        testl   %esi, %esi
        jz      idle
        cmpb    $'c', (%esi)
        jne     idle
        call    rounds
        movl    $msg_detached, %esi
        call    puts
wait_key:
        movw    $COM1_LSR, %dx
        inb     %dx, %al
        testb   $COM1_LSR_DR, %al
        jnz     got_key
        movl    $(PM_TMR_HZ / 1000), %eax
        call    pm_wait
        jmp     wait_key
got_key:
        movw    $COM1, %dx
        inb     %dx, %al
        cmpb    $'q', %al
        je      poweroff
        cmpb    $'c', %al
        jne     wait_key
        call    rounds
        movl    $msg_attached, %esi
        call    puts
        jmp     wait_key
idle:
        hlt
        jmp     idle

/* rounds: ROUNDS timed rounds of LINES lines (see the top). */
rounds:
        xorl    %edi, %edi              /* round */
1:      movl    $HALF_SECOND, %eax
        call    pm_wait
        movl    $msg_begin, %esi
        call    puts
        movl    %edi, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        rdtsc
        movl    %eax, t0
        movl    %edx, t0 + 4
        movl    $LINES, %ecx
2:      movl    $line, %esi
        call    puts
        loop    2b
        rdtsc
        subl    t0, %eax
        sbbl    t0 + 4, %edx
        movl    %eax, t0
        movl    %edx, t0 + 4
        movl    $HALF_SECOND, %eax
        call    pm_wait
        movl    $msg_round, %esi
        call    puts
        movl    %edi, %eax
        call    putdec
        movl    $msg_ticks, %esi
        call    puts
        movl    t0, %eax
        movl    t0 + 4, %edx
        call    putdec64
        movl    $msg_bytes, %esi
        call    puts
        movl    $(LINES * LINE_BYTES), %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        incl    %edi
        cmpl    $ROUNDS, %edi
        jb      1b
        ret

        .section .rodata
msg_first:      .asciz "xlbench first_tsc="
msg_detached:   .asciz "xlbench detached done\n"
msg_attached:   .asciz "xlbench attached done\n"
msg_begin:      .asciz "xlbench begin "
msg_round:      .asciz "xlbench round "
msg_ticks:      .asciz " ticks="
msg_bytes:      .asciz " bytes="
/* 63 characters and a newline. */
line:           .asciz "xlbench 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS\n"

        .data
        .balign 8
first_tsc:      .quad 0
t0:             .quad 0
cmdline:        .long 0
