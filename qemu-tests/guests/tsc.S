/* tsc: reports what the guest's TSC reads. Ferrite offsets each domain's
 * TSC so it starts near 0 when the domain is created: prints
 * "tsc rdtsc=<n> msr=<n> after=<n>" (RDTSC, then the IA32_TSC MSR, then
 * RDTSC again after 0.1 s of PM timer) and powers off. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        rdtsc
        movl    %eax, t0
        movl    %edx, t0 + 4
        movl    $0x10, %ecx
        rdmsr
        movl    %eax, t1
        movl    %edx, t1 + 4
        movl    $357954, %eax           /* 0.1 s of 3.579545 MHz */
        call    pm_wait
        rdtsc
        movl    %eax, t2
        movl    %edx, t2 + 4

        movl    $msg_rdtsc, %esi
        call    puts
        movl    t0, %eax
        movl    t0 + 4, %edx
        call    putdec64
        movl    $msg_msr, %esi
        call    puts
        movl    t1, %eax
        movl    t1 + 4, %edx
        call    putdec64
        movl    $msg_after, %esi
        call    puts
        movl    t2, %eax
        movl    t2 + 4, %edx
        call    putdec64
        movl    $msg_nl, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_rdtsc:  .asciz "tsc rdtsc="
msg_msr:    .asciz " msr="
msg_after:  .asciz " after="
msg_nl:     .asciz "\n"

        .data
        .balign 8
t0:     .quad 0
t1:     .quad 0
t2:     .quad 0
