/* hostile_ud: executes ud2. #UD with a zero-limit IDT → triple fault. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        .globl  fault_insn              /* the test expects the crash here */
fault_insn:
        ud2
        movl    $survived, %esi         /* not reached */
        call    puts
        jmp     poweroff

        .section .rodata
msg:      .asciz "hostile: ud2\n"
survived: .asciz "hostile: ud2 returned\n"
