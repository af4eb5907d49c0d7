/*
 * An MBR checking read-modify-write instructions on device memory that the
 * stub domain emulates (a PCI-hole address no device claims: reads give
 * all ones, writes are dropped). Each such instruction must read once,
 * write the value computed from what it read once, and complete: `orl`,
 * `xchgl`, `btsl` and `incl` on that address, from 32-bit protected mode.
 * Prints "rmw: ok" (or "rmw: WRONG <n>") on COM1, then powers off.
 * Before the fix the first `orl` never completed (its write overwrote its
 * own read request, and every replay sent the write again).
 */
    .code16
    .set COM1, 0x3f8
    .set PM1A_CNT, 0xb004
    .set HOLE, 0xfeb00000

    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmp $0, $1f
1:  lgdt gdt_ptr
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32

    .code32
pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x7c00, %esp
    xorl %ebx, %ebx                 /* failed check number, 0 = none */
    /* OR: the flags follow the value read (all ones: SF set, ZF clear). */
    orl $1, HOLE
    js 2f
    movl $1, %ebx
2:  /* XCHG: the old value (all ones) comes back in EAX. */
    movl $0x12345678, %eax
    xchgl %eax, HOLE
    cmpl $0xffffffff, %eax
    je 3f
    movl $2, %ebx
3:  /* BTS: CF is the bit read (set). */
    clc
    btsl $3, HOLE
    jc 4f
    movl $3, %ebx
4:  /* INC: all ones + 1 sets ZF. */
    incl HOLE
    jz 5f
    movl $4, %ebx
5:  movl $msg_ok, %esi
    testl %ebx, %ebx
    jz 6f
    movl $msg_wrong, %esi
    addb %bl, digit
6:  call puts
    movw $PM1A_CNT, %dx
    movw $(5 << 10) | (1 << 13), %ax
    outw %ax, %dx
7:  hlt
    jmp 7b

puts:
    lodsb
    testb %al, %al
    jz 8f
    movw $COM1, %dx
    outb %al, %dx
    jmp puts
8:  ret

    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_ptr:
    .word gdt_ptr - gdt - 1
    .long gdt

msg_ok:    .asciz "rmw: ok\n"
msg_wrong: .ascii "rmw: WRONG "
digit:     .asciz "0\n"

    .org 510
    .byte 0x55, 0xaa
