/* hello: prints one line and powers off. The smallest useful PVH guest. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg:    .asciz  "hello from a Ferrite PVH test guest\n"
