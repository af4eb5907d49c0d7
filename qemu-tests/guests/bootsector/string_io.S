/*
 * An MBR checking that string output reads from the segment the
 * instruction names: `fs rep outsb` takes its bytes from FS:SI, plain
 * `rep outsb` from DS:SI (never ES, INS's segment). Without decode assists
 * the CPU does not report the segment, so the hypervisor must read the
 * instruction's prefixes (it used ES before). Prints on COM1, through the
 * stub domain's UART, "ds: ok" and "fs: ok" (ES holds "es: WRONG", DS:0
 * the interrupt vector table), then "df: ok" with DF=1 (`std; rep
 * outsb` walks backwards from the last byte of a reversed message: a
 * hypervisor that ignored DF would print "\n" and then bytes past it),
 * then powers off.
 */
    .code16
    .set COM1, 0x3f8
    .set PM1A_CNT, 0xb004
    .set ES_SEG, 0x100
    .set FS_SEG, 0x200

    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmp $0, $1f
1:  cld
    /* ES:0 = "es: WRONG\n", FS:0 = "fs: ok\n". */
    movw $ES_SEG, %ax
    movw %ax, %es
    movw $msg_es, %si
    xorw %di, %di
    movw $len_es, %cx
    rep movsb
    movw $FS_SEG, %ax
    movw %ax, %es
    movw $msg_fs, %si
    xorw %di, %di
    movw $len_fs, %cx
    rep movsb
    movw $ES_SEG, %ax
    movw %ax, %es
    movw $FS_SEG, %ax
    movw %ax, %fs
    movw $COM1, %dx
    /* DS:SI: the default segment. */
    movw $msg_ds, %si
    movw $len_ds, %cx
    rep outsb
    /* FS:0, with DS:0 the IVT and ES:0 the wrong text. */
    xorw %si, %si
    movw $len_fs, %cx
    fs rep outsb
    /* DF=1: from the last byte of "\nko :fd" down to its first. */
    movw $msg_rev + len_rev - 1, %si
    movw $len_rev, %cx
    std
    rep outsb
    cld
    /* Power off: S5 through PM1a control. */
    movw $PM1A_CNT, %dx
    movw $(5 << 10) | (1 << 13), %ax
    outw %ax, %dx
2:  hlt
    jmp 2b

msg_ds: .ascii "ds: ok\n"
    .set len_ds, . - msg_ds
msg_es: .ascii "es: WRONG\n"
    .set len_es, . - msg_es
msg_fs: .ascii "fs: ok\n"
    .set len_fs, . - msg_fs
msg_rev: .ascii "\nko :fd"
    .set len_rev, . - msg_rev

    .org 510
    .byte 0x55, 0xaa
