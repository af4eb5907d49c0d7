/* console_flood: a guest that floods its console as fast as it can:
 * FLOOD_LINES short lines, then a 16 KiB line with no newline at all, then
 * "flood done" and power-off. The hypervisor must rate-limit it (dropping
 * and counting what it drops), keep its own log, and keep other domains
 * running. */
        .include "pvh.inc"

        .set FLOOD_LINES, 20000
        .set LONG_LINE,   16384

        .text
_start:
        ENTER
        xorl    %edi, %edi
1:      movl    $msg_line, %esi
        call    puts
        movl    %edi, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        incl    %edi
        cmpl    $FLOOD_LINES, %edi
        jb      1b
        movl    $LONG_LINE, %ecx
2:      movb    $'x', %al
        call    putc
        loop    2b
        movb    $'\n', %al
        call    putc
        movl    $msg_done, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_line:   .asciz "flood "
msg_done:   .asciz "flood done\n"
