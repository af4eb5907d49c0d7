/* console_flood_forever: floods its console until it is destroyed, as
 * fast as it can (each byte one OUT to the UART, no waiting for THRE):
 * 100 short lines "f N", 1000 empty lines, then 1500 bytes with no
 * newline at all (the hypervisor cuts them into lines of its longest
 * length), again and again: well over the 200 lines a second a domain may
 * show, however slowly it runs. It never holds console focus (no dom0: input goes to the
 * hypervisor), so what it prints goes through its line budget. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        xorl    %edi, %edi
        movw    $COM1, %dx
1:      movl    $100, %ebx
2:      movb    $'f', %al
        outb    %al, %dx
        movb    $' ', %al
        outb    %al, %dx
        movl    %edi, %eax
        call    putdec
        movb    $'\n', %al
        outb    %al, %dx
        incl    %edi
        decl    %ebx
        jnz     2b
        movl    $1000, %ecx
        movb    $'\n', %al
3:      outb    %al, %dx
        loop    3b
        movl    $1500, %ecx
        movb    $'x', %al
4:      outb    %al, %dx
        loop    4b
        movb    $'\n', %al
        outb    %al, %dx
        jmp     1b
