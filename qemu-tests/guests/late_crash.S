/* late_crash: prints a line, waits 500 ms (so another domain's flood is
 * under way), then executes ud2: with a zero-limit IDT a triple fault,
 * which crashes the domain with the reason in the hypervisor's log. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        movl    $(PM_TMR_HZ / 2), %eax
        call    pm_wait
        .globl  fault_insn              /* the test expects the crash here */
fault_insn:
        ud2
        movl    $survived, %esi         /* not reached */
        call    puts
        jmp     poweroff

        .section .rodata
msg:      .asciz "late: crashing in 500 ms\n"
survived: .asciz "late: ud2 returned\n"
