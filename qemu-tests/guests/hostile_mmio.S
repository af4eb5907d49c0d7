/* hostile_mmio: writes to guest-physical 0xE0000000 (paging is off, so the
 * linear address is the physical one), which is neither RAM nor a device:
 * Ferrite must crash this domain and log the address. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        movl    $msg, %esi
        call    puts
        .globl  fault_insn              /* the test expects the crash here */
fault_insn:
        movl    $0x12345678, 0xE0000000
        movl    $survived, %esi         /* not reached */
        call    puts
        jmp     poweroff

        .section .rodata
msg:      .asciz "hostile: write to unmapped 0xe0000000\n"
survived: .asciz "hostile: unmapped write returned\n"
