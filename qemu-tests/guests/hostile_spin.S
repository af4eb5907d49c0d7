/* hostile_spin: interrupts off, then an endless loop. Only the hypervisor's
 * preemption timer can take the CPU back from it. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        cli
1:      jmp     1b

        .section .rodata
msg:    .asciz  "spinning\n"
