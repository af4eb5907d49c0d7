/* disktool: a static x86_64 Linux program for `ferrite bench disks` and
 * `ferrite bench net`, run by the guest's busybox init. No libc; Linux
 * system calls only.
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
 *   disktool send A.B.C.D PORT SIZE COUNT
 *                                    connect over TCP, write COUNT times
 *                                    SIZE bytes (at most 1 MiB) of zeros,
 *                                    shut the sending half, read until the
 *                                    peer closes; print the ticks from
 *                                    before the connect to the peer's close
 *   disktool sink PORT               accept TCP connections on PORT one at
 *                                    a time and read each (1 MiB reads)
 *                                    until the peer shuts it; never exits
 *
 * Under QEMU's `-icount shift=0,sleep=off` a TSC tick is one instruction
 * of the emulated machine. Exit status 0, or 1 (after a message on
 * stderr) when a read fails, 2 for bad arguments.
 */
        .set SYS_write, 1
        .set SYS_open, 2
        .set SYS_pread64, 17
        .set SYS_read, 0
        .set SYS_close, 3
        .set SYS_socket, 41
        .set SYS_connect, 42
        .set SYS_accept, 43
        .set SYS_shutdown, 48
        .set SYS_bind, 49
        .set SYS_listen, 50
        .set SYS_setsockopt, 54
        .set AF_INET, 2
        .set SOCK_STREAM, 1
        .set SHUT_WR, 1
        .set SOL_SOCKET, 1
        .set SO_REUSEADDR, 2
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
        cmp     $'s', %al
        jne     usage
        movzbl  1(%rbx), %eax
        cmp     $'e', %al
        je      cmd_send
        cmp     $'i', %al
        je      cmd_sink
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

/* send A.B.C.D PORT SIZE COUNT */
cmd_send:
        cmp     $6, %r12
        jb      usage
        mov     16(%r13), %rdi          /* the address, a byte at a time */
        xor     %ebx, %ebx
        mov     $4, %ebp
1:      call    parse_u64
        cmp     $255, %rax
        ja      usage
        shl     $8, %ebx
        or      %eax, %ebx
        movzbl  (%rdi), %eax
        inc     %rdi
        dec     %ebp
        jz      2f
        cmp     $'.', %al
        jne     usage
        jmp     1b
2:      bswap   %ebx                    /* network order */
        mov     %ebx, sa_addr(%rip)
        mov     24(%r13), %rdi
        call    set_port
        mov     32(%r13), %rdi
        call    parse_u64
        test    %rax, %rax
        jz      usage
        cmp     $MIB, %rax
        ja      usage
        mov     %rax, %rbp              /* SIZE */
        mov     40(%r13), %rdi
        call    parse_u64
        mov     %rax, %r14              /* COUNT */
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, %r15
        call    tcp_socket
        mov     %rax, %rbx
        mov     %rbx, %rdi
        lea     sockaddr(%rip), %rsi
        mov     $16, %edx
        mov     $SYS_connect, %eax
        syscall
        test    %rax, %rax
        jnz     net_fail
3:      test    %r14, %r14              /* COUNT writes of SIZE */
        jz      5f
        lea     src_buf(%rip), %r12
        mov     %rbp, %r13              /* left of this write */
4:      mov     %rbx, %rdi
        mov     %r12, %rsi
        mov     %r13, %rdx
        mov     $SYS_write, %eax
        syscall
        test    %rax, %rax
        jle     net_fail
        add     %rax, %r12
        sub     %rax, %r13
        jnz     4b
        dec     %r14
        jmp     3b
5:      mov     %rbx, %rdi
        mov     $SHUT_WR, %esi
        mov     $SYS_shutdown, %eax
        syscall
        mov     %rbx, %rdi              /* until the peer closes */
        call    drain
        js      net_fail
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        sub     %r15, %rax
        call    print_u64
        xor     %edi, %edi
        jmp     exit

/* sink PORT */
cmd_sink:
        cmp     $3, %r12
        jb      usage
        mov     16(%r13), %rdi
        call    set_port
        call    tcp_socket
        mov     %rax, %rbx
        movl    $1, one(%rip)
        mov     %rbx, %rdi
        mov     $SOL_SOCKET, %esi
        mov     $SO_REUSEADDR, %edx
        lea     one(%rip), %r10
        mov     $4, %r8d
        mov     $SYS_setsockopt, %eax
        syscall
        mov     %rbx, %rdi              /* sa_addr is 0: any address */
        lea     sockaddr(%rip), %rsi
        mov     $16, %edx
        mov     $SYS_bind, %eax
        syscall
        test    %rax, %rax
        jnz     net_fail
        mov     %rbx, %rdi
        mov     $4, %esi
        mov     $SYS_listen, %eax
        syscall
        test    %rax, %rax
        jnz     net_fail
1:      mov     %rbx, %rdi
        xor     %esi, %esi
        xor     %edx, %edx
        mov     $SYS_accept, %eax
        syscall
        test    %rax, %rax
        js      1b
        mov     %rax, %r12
        mov     %r12, %rdi
        call    drain
        mov     %r12, %rdi
        mov     $SYS_close, %eax
        syscall
        jmp     1b

/* Reads fd rdi into dst_buf until end of file (rax 0) or an error
 * (rax negative, sign flag set). */
drain:
        push    %rbx
        mov     %rdi, %rbx
1:      mov     %rbx, %rdi
        lea     dst_buf(%rip), %rsi
        mov     $MIB, %edx
        mov     $SYS_read, %eax
        syscall
        test    %rax, %rax
        jg      1b
        pop     %rbx
        test    %rax, %rax
        ret

/* sockaddr's family and port (the decimal at rdi, network order). */
set_port:
        call    parse_u64
        test    %rax, %rax
        jz      usage
        cmp     $65535, %rax
        ja      usage
        xchg    %al, %ah
        mov     %ax, sa_port(%rip)
        movw    $AF_INET, sa_family(%rip)
        ret

/* rax = a new TCP socket (exits on failure). */
tcp_socket:
        mov     $AF_INET, %edi
        mov     $SOCK_STREAM, %esi
        xor     %edx, %edx
        mov     $SYS_socket, %eax
        syscall
        test    %rax, %rax
        js      net_fail
        ret

net_fail:
        lea     net_fail_msg(%rip), %rsi
        mov     $net_fail_len, %edx
        mov     $2, %edi
        mov     $SYS_write, %eax
        syscall
        mov     $1, %edi
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
        .ascii  "usage: disktool tsc | copy MIB | rand DEV COUNT SPAN | send A.B.C.D PORT SIZE COUNT | sink PORT\n"
        .set usage_len, . - usage_msg
fail_msg:
        .ascii  "disktool: open or read failed\n"
        .set fail_len, . - fail_msg
net_fail_msg:
        .ascii  "disktool: socket, connect, bind, write or read failed\n"
        .set net_fail_len, . - net_fail_msg

        .bss
        .balign 4096
src_buf: .skip MIB
dst_buf: .skip MIB
io_buf:  .skip BLOCK
num_buf: .skip 31
num_end: .skip 1
        .balign 8
sockaddr:                               /* struct sockaddr_in */
sa_family: .skip 2
sa_port: .skip 2
sa_addr: .skip 4
        .skip 8
one:    .skip 4
