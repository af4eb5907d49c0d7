/*
 * An MBR for the several-disks HVM test (qemu-tests/tests/hvm_disks.rs):
 * SeaBIOS boots it from hda at 0x7C00, in real mode with DL = the boot
 * drive. Using only int 13h and COM1, it
 *
 *   1. asks how many hard disks the BIOS has (AH=08h): prints
 *      "disks: count NN";
 *   2. for each drive 80, 81, ...: reads sectors 1..CHECK_SECTORS (AH=42h)
 *      and checks each: dword 0 = (tag << 24) | LBA with the tag found in
 *      the drive's sector 1, dword 508/4 = its complement; sums every
 *      byte; prints "disks: DD tag TT sum=SSSSSSSS" (DD = the drive);
 *   3. on every drive but the boot drive, then writes sector WRITE_LBA
 *      with the bytes (0xa0 + 0x10 * tag + i) (AH=43h): prints
 *      "disks: DD write ok", or "disks: DD write err SS" (SS = the int 13h
 *      status in AH) when the BIOS reports a failure;
 *   4. prints "disks: done" and powers off through the ACPI PM1a port.
 *
 * Other failures print "disks: DD FAIL <letter> LLLLLLLL" (LBA) and power
 * off: c = no hard disk count, r = read error, d = wrong sector contents.
 */
    .code16
    .set COM1, 0x3f8
    .set PM1A_CNT, 0xb004
    .set CHECK_SECTORS, 128
    .set BATCH, 16
    .set WRITE_LBA, 300
    .set BUF_SEG, 0x1000

    /* Variables live below the boot sector, outside its 512 bytes. */
    .set tag, 0x600        /* dword: the drive's tag << 24 */
    .set boot, 0x604       /* byte: the boot drive */
    .set drive, 0x605      /* byte: the drive being checked */
    .set last, 0x606       /* byte: the last drive number */

    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmp $0, $1f
1:  sti
    cld
    movb %dl, boot
    movb $0x80, drive

    /* How many hard disks? DL = the count. */
    movb $0x08, %ah
    movb $0x80, %dl
    int $0x13
    movb $'c', %bl
    jc fail
    testb %dl, %dl
    jz fail
    movb %dl, %al
    addb $0x7f, %al
    movb %al, last
    movw $BUF_SEG, %ax
    movw %ax, %es
    pushw %dx
    call prefix
    movw $msg_count, %si
    call puts
    popw %ax
    call puthex2
    call newline

drive_loop:
    xorl %ebp, %ebp        /* the byte sum */
    xorl %ebx, %ebx
    incw %bx               /* the LBA */
read_loop:
    movb $0x42, %ah
    movb $BATCH, %cl
    call transfer
    movb $'r', %dl
    jc fail_dl
    xorw %di, %di
    movw $BATCH, %cx
check_sector:
    movl %es:(%di), %eax
    cmpw $1, %bx
    jne 2f
    andl $0xff000000, %eax
    movl %eax, tag
2:  movl tag, %eax
    orl %ebx, %eax
    movb $'d', %dl
    cmpl %eax, %es:(%di)
    jne fail_dl
    notl %eax
    cmpl %eax, %es:508(%di)
    jne fail_dl
    pushw %cx
    movw $512, %cx
sum_loop:
    movzbl %es:(%di), %eax
    addl %eax, %ebp
    incw %di
    loop sum_loop
    popw %cx
    incw %bx
    loop check_sector
    cmpw $CHECK_SECTORS + 1, %bx
    jb read_loop

    /* "disks: DD tag TT sum=SSSSSSSS" */
    call print_drive
    movw $msg_tag, %si
    call puts
    movb tag + 3, %al
    call puthex2
    movw $msg_sum, %si
    call puts
    movl %ebp, %eax
    movw $8, %cx
    call puthex
    call newline

    movb drive, %al
    cmpb boot, %al
    je next_drive

    /* Write the drive's pattern to WRITE_LBA. */
    movw $WRITE_LBA, %bx
    movb tag + 3, %al
    shlb $4, %al
    addb $0xa0, %al
    xorw %di, %di
    movw $512, %cx
3:  stosb
    incb %al
    loop 3b
    movb $0x43, %ah
    movb $1, %cl
    call transfer
    pushw %ax
    pushfw
    call print_drive
    movw $msg_write, %si
    call puts
    popfw
    popw %ax
    movw $msg_ok, %si
    jnc 4f
    movw $msg_err, %si
    call puts
    movb %ah, %al
    call puthex2
    jmp 8f
4:  call puts
8:  call newline

next_drive:
    movb drive, %al
    cmpb last, %al
    jae done
    incb drive
    jmp drive_loop

done:
    call prefix
    movw $msg_done, %si
    call puts
    call newline
poweroff:
    movw $PM1A_CNT, %dx
    movw $0x3400, %ax /* SLP_TYP = 5 (S5), SLP_EN */
    outw %ax, %dx
    cli
5:  hlt
    jmp 5b

/* "disks: DD FAIL <DL> <EBX>" */
fail_dl:
    movb %dl, %bl
/* "disks: DD FAIL <BL> <EBX>" */
fail:
    call print_drive
    movw $msg_fail, %si
    call puts
    movb %bl, %al
    call putc
    movb $' ', %al
    call putc
    movl %ebx, %eax
    movw $8, %cx
    call puthex
    call newline
    jmp poweroff

/* CL sectors from LBA BX to or from BUF_SEG:0 with int 13h function AH
   (AL = 0: writes are not verified); CF on error, AH = the status. */
transfer:
    movb %cl, dap_count
    movw %bx, dap_lba
    movb $0, %al
    movb drive, %dl
    movw $dap, %si
    int $0x13
    ret

/* "disks: DD" */
print_drive:
    call prefix
    movb drive, %al
/* Prints AL as 2 hex digits. */
puthex2:
    shll $24, %eax
    movw $2, %cx
/* Prints the top CX hex digits of EAX on COM1. */
puthex:
    roll $4, %eax
    pushl %eax
    andb $0x0f, %al
    addb $'0', %al
    cmpb $'9', %al
    jbe 6f
    addb $('a' - '9' - 1), %al
6:  call putc
    popl %eax
    loop puthex
    ret

prefix:
    movw $msg_prefix, %si
    jmp puts
newline:
    movw $msg_nl, %si
/* Prints the NUL-terminated string at DS:SI on COM1. */
puts:
    lodsb
    testb %al, %al
    jz 7f
    call putc
    jmp puts
7:  ret

/* Prints AL on COM1; clobbers DX. */
putc:
    movw $COM1, %dx
    outb %al, %dx
    ret

/* The int 13h extensions' disk address packet. */
    .p2align 2
dap:        .word 16
dap_count:  .word 0
            .word 0, BUF_SEG
dap_lba:    .long 0, 0

msg_prefix:  .asciz "disks: "
msg_count:   .asciz "count "
msg_tag:     .asciz " tag "
msg_sum:     .asciz " sum="
msg_write:   .asciz " write "
msg_ok:      .asciz "ok"
msg_err:     .asciz "err "
msg_done:    .asciz "done"
msg_fail:    .asciz " FAIL "
msg_nl:      .asciz "\r\n"

    .org 510
    .byte 0x55, 0xaa
