/* exit_storm: reads the ACPI PM timer (an in-hypervisor port, one VM exit
 * per read) as fast as it can, 300,000 times, then reports and powers
 * off. Two of these on two host CPUs make both CPUs take #VMEXITs at
 * nearly the same moments, over and over: the load under which host
 * resets were seen (see ARCHITECTURE.md, "Two host CPUs under QEMU TCG"). */
        .include "pvh.inc"

        .set READS, 300000

        .text
_start:
        ENTER
        movl    $start_msg, %esi
        call    puts
        movl    $READS, %ecx
        /* The emulated PM timer (Ferrite runs with pm_timer=emulated
         * here): every read an exit. */
        movw    $PM_TMR, %dx
1:      inl     %dx, %eax
        decl    %ecx
        jnz     1b
        movl    $done_msg, %esi
        call    puts
        movl    $READS, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        jmp     poweroff

        .section .rodata
start_msg:  .asciz  "exit-storm: start\n"
done_msg:   .asciz  "exit-storm: done "
