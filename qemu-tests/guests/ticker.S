/* ticker: prints "tick N" for N = 1..TICKS, busy-waiting TICK_MS between
 * lines by polling the ACPI PM timer, then "ticker done" and powers off.
 * TICKS is 20 unless a file including this one sets it first
 * (ticker_long.S). */
        .include "pvh.inc"

        .ifndef TICKS
        .set TICKS,   20
        .endif
        .set TICK_MS, 100

        .text
_start:
        ENTER
        movl    $hello, %esi
        call    puts
        movl    $TICKS, %eax
        call    putdec
        movl    $hello_end, %esi
        call    puts
        movl    $1, %edi
1:      movl    $(PM_TMR_HZ / 1000 * TICK_MS), %eax
        call    pm_wait
        movl    $tick, %esi
        call    puts
        movl    %edi, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        incl    %edi
        cmpl    $TICKS, %edi
        jbe     1b
        movl    $done, %esi
        call    puts
        jmp     poweroff

        .section .rodata
hello:  .asciz  "ticker: "
hello_end: .asciz " ticks, 100 ms apart\n"
tick:   .asciz  "tick "
done:   .asciz  "ticker done\n"
