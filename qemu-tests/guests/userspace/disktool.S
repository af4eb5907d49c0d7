/* disktool: a static x86_64 Linux program for `ferrite bench disks`, run
 * by the guest's busybox init. No libc; Linux system calls only.
 *
 *   disktool tsc                     print the TSC (rdtsc), one line
 *   disktool copy MIB                copy MIB MiB with `rep movsl`, 1 MiB at
 *                                    a time between two buffers; print the
 *                                    TSC ticks it took (after one untimed
 *                                    MiB that faults the buffers in)
 *   disktool rand DEV COUNT SPAN     COUNT preads of 4 KiB from DEV opened
 *                                    with O_DIRECT, at 4 KiB-aligned
 *                                    pseudo-random offsets below SPAN bytes
 *                                    (a fixed LCG, so every run reads the
 *                                    same blocks); print the ticks
 *
 * Under QEMU's `-icount shift=0,sleep=off` a TSC tick is one instruction
 * of the emulated machine. Exit status 0, or 1 (after a message on
 * stderr) when a read fails, 2 for bad arguments.
 */
        .set SYS_write, 1
        .set SYS_open, 2
        .set SYS_pread64, 17
        .set SYS_exit_group, 231
        .set O_DIRECT, 0x4000
        .set MIB, 1 << 20
        .set BLOCK, 4096

        .text
        .globl _start
_start:
        mov     (%rsp), %r12            /* argc */
        lea     8(%rsp), %r13           /* argv */
        cmp     $2, %r12
        jb      usage
        mov     8(%r13), %rbx
        movzbl  (%rbx), %eax
        cmp     $'t', %al
        je      cmd_tsc
        cmp     $'c', %al
        je      cmd_copy
        cmp     $'r', %al
        je      cmd_rand
usage:
        lea     usage_msg(%rip), %rsi
        mov     $usage_len, %edx
        mov     $2, %edi
        mov     $SYS_write, %eax
        syscall
        mov     $2, %edi
        jmp     exit

cmd_tsc:
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        call    print_u64
        xor     %edi, %edi
        jmp     exit

cmd_copy:
        cmp     $3, %r12
        jb      usage
        mov     16(%r13), %rdi
        call    parse_u64
        mov     %rax, %r14              /* MiB to copy */
        call    copy_mib                /* untimed: faults the pages in */
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %r15
1:      test    %r14, %r14
        jz      2f
        call    copy_mib
        dec     %r14
        jmp     1b
2:      rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        sub     %r15, %rax
        call    print_u64
        xor     %edi, %edi
        jmp     exit

/* One MiB from src_buf to dst_buf, 4 bytes per iteration. */
copy_mib:
        lea     src_buf(%rip), %rsi
        lea     dst_buf(%rip), %rdi
        mov     $MIB / 4, %ecx
        rep movsl
        ret

cmd_rand:
        cmp     $5, %r12
        jb      usage
        mov     24(%r13), %rdi
        call    parse_u64
        mov     %rax, %r14              /* reads */
        mov     32(%r13), %rdi
        call    parse_u64
        shr     $12, %rax               /* blocks in the span */
        test    %rax, %rax
        jz      usage
        mov     %rax, %rbp
        mov     16(%r13), %rdi          /* open(DEV, O_RDONLY | O_DIRECT) */
        mov     $O_DIRECT, %esi
        xor     %edx, %edx
        mov     $SYS_open, %eax
        syscall
        test    %rax, %rax
        js      fail
        mov     %rax, %rbx              /* fd */
        mov     $0x2545F4914F6CDD1D, %r12 /* LCG state */
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %r15
1:      test    %r14, %r14
        jz      2f
        mov     $6364136223846793005, %rax
        imul    %rax, %r12
        mov     $1442695040888963407, %rax
        add     %rax, %r12
        mov     %r12, %rax
        shr     $33, %rax
        xor     %edx, %edx
        div     %rbp                    /* rdx = block */
        mov     %rdx, %r10
        shl     $12, %r10               /* offset */
        mov     %rbx, %rdi
        lea     io_buf(%rip), %rsi
        mov     $BLOCK, %edx
        mov     $SYS_pread64, %eax
        syscall
        cmp     $BLOCK, %rax
        jne     fail
        dec     %r14
        jmp     1b
2:      rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        sub     %r15, %rax
        call    print_u64
        xor     %edi, %edi
        jmp     exit

fail:
        lea     fail_msg(%rip), %rsi
        mov     $fail_len, %edx
        mov     $2, %edi
        mov     $SYS_write, %eax
        syscall
        mov     $1, %edi
exit:
        mov     $SYS_exit_group, %eax
        syscall
        hlt

/* rax = the decimal number at (%rdi) (stops at the first non-digit). */
parse_u64:
        xor     %eax, %eax
1:      movzbl  (%rdi), %ecx
        sub     $'0', %ecx
        cmp     $9, %ecx
        ja      2f
        imul    $10, %rax, %rax
        add     %rcx, %rax
        inc     %rdi
        jmp     1b
2:      ret

/* Writes rax in decimal and a newline to stdout. */
print_u64:
        lea     num_end(%rip), %rsi
        movb    $'\n', (%rsi)
        mov     $1, %r8d                /* length so far */
        mov     $10, %ecx
1:      xor     %edx, %edx
        div     %rcx
        add     $'0', %dl
        dec     %rsi
        mov     %dl, (%rsi)
        inc     %r8
        test    %rax, %rax
        jnz     1b
        mov     %r8, %rdx
        mov     $1, %edi
        mov     $SYS_write, %eax
        syscall
        ret

        .section .rodata
usage_msg:
        .ascii  "usage: disktool tsc | copy MIB | rand DEV COUNT SPAN\n"
        .set usage_len, . - usage_msg
fail_msg:
        .ascii  "disktool: open or read failed\n"
        .set fail_len, . - fail_msg

        .bss
        .balign 4096
src_buf: .skip MIB
dst_buf: .skip MIB
io_buf:  .skip BLOCK
num_buf: .skip 31
num_end: .skip 1
