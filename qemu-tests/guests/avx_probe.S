/* avx_probe: can this guest run a VEX instruction? Enables SSE,
 * CR4.OSXSAVE and XCR0 = 7 (x87, SSE, AVX), prints CPUID.1:ECX and XCR0
 * as XGETBV reads them, then runs vxorps on YMM0: "avx: vex ok", or
 * "avx: #UD" from its #UD handler. */
        .include "pvh.inc"

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    6, ud_handler
        GATE    13, gp_handler
        movl    %cr0, %eax
        andl    $~(1 << 2), %eax
        orl     $(1 << 1), %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     $(3 << 9) | (1 << 18), %eax
        movl    %eax, %cr4
        movl    $msg_ecx, %esi
        call    puts
        movl    $1, %eax
        cpuid
        movl    %ecx, %eax
        call    putdec
        xorl    %ecx, %ecx
        movl    $7, %eax
        xorl    %edx, %edx
        xsetbv
        movl    $msg_xcr0, %esi
        call    puts
        xorl    %ecx, %ecx
        xgetbv
        call    putdec
        movl    $msg_cr4, %esi
        call    puts
        movl    %cr4, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        vxorps  %ymm0, %ymm0, %ymm0
        movl    $msg_ok, %esi
        call    puts
        jmp     poweroff
ud_handler:
        movl    $msg_ud, %esi
        call    puts
        jmp     poweroff
gp_handler:
        movl    $msg_gp, %esi
        call    puts
        jmp     poweroff

        .section .rodata
msg_ecx:  .asciz "avx: cpuid.1.ecx "
msg_xcr0: .asciz " xcr0 "
msg_cr4:  .asciz " cr4 "
msg_ok:   .asciz "avx: vex ok\n"
msg_ud:   .asciz "avx: #UD\n"
msg_gp:   .asciz "avx: #GP\n"
