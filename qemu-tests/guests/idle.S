/* idle: prints "idle ready", then halts with interrupts off for good: a
 * domain that keeps Ferrite running and uses no CPU time (its vCPU stays
 * blocked), for tests that need the host's CPUs for something else. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
1:      cli
        hlt
        jmp     1b

        .section .rodata
msg:    .asciz  "idle ready\n"
