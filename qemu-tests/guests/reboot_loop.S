/* reboot_loop: prints "reboot_loop up" and resets itself at once through
 * the FADT's reset register (port 0xCF9, value 6, as Ferrite's tables
 * say), so a domain with on_reboot='restart' comes back and does it
 * again, for ever. */
        .include "pvh.inc"

        .set RESET_PORT,    0xCF9
        .set RESET_VALUE,   0x06

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        movw    $RESET_PORT, %dx
        movb    $RESET_VALUE, %al
        outb    %al, %dx
1:      cli
        hlt
        jmp     1b

        .section .rodata
msg:    .asciz  "reboot_loop up\n"
