/* spin: keeps its host CPU busy for about 0.5 s of PM-timer time (a tight
 * loop between timer reads), then prints "spin: done" and powers off. The
 * CPU-bound neighbour of the latency benchmarks. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $50, %ebx
1:      movl    $35795, %eax            /* 10 ms */
        call    pm_wait
        decl    %ebx
        jnz     1b
        movl    $msg_done, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_done:   .asciz "spin: done\n"
