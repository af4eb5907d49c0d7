/* ticker: prints "tick N" for N = 1..TICKS, busy-waiting TICK_MS between
 * lines by polling the ACPI PM timer, then "ticker done" and powers off. */
        .include "pvh.inc"

        .set TICKS,   20
        .set TICK_MS, 100

        .text
_start:
        ENTER
        movl    $hello, %esi
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
hello:  .asciz  "ticker: 20 ticks, 100 ms apart\n"
tick:   .asciz  "tick "
done:   .asciz  "ticker done\n"
