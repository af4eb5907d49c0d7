/* hostile_msr: reads an MSR nobody implements. Ferrite injects #GP; with a
 * zero-limit IDT that becomes a double and then a triple fault, and Ferrite
 * must crash only this domain. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        movl    $0xDEADBEEF, %ecx
        .globl  fault_insn              /* the test expects the crash here */
fault_insn:
        rdmsr
        movl    $survived, %esi         /* not reached */
        call    puts
        jmp     poweroff

        .section .rodata
msg:      .asciz "hostile: rdmsr 0xdeadbeef\n"
survived: .asciz "hostile: rdmsr returned (expected #GP)\n"
