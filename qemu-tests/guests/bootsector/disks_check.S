/*
 * An MBR for the several-disks HVM test (qemu-tests/tests/hvm_disks.rs):
 * SeaBIOS boots it from hda (drive 0x80) at 0x7C00, in real mode with DL =
 * the boot drive. Using only int 13h and COM1, it
 *
 *   1. asks how many hard disks the BIOS has (AH=08h): prints
 *      "disks: count NN";
 *   2. for each drive 80, 81, ... : reads sectors 1..CHECK_SECTORS (AH=42h)
 *      and checks each: dword 0 = (tag << 24) | LBA with the tag of the
 *      drive's sector 1, dword 508/4 = its complement; sums every byte;
 *      prints "disks: drive DD tag TT sum=SSSSSSSS";
 *   3. on every drive but the boot drive, then writes sector WRITE_LBA with
 *      the bytes (0xa0 + 0x10 * tag + i) (AH=43h) and reads it back:
 *      prints "disks: drive DD write ok", or "disks: drive DD write
 *      refused SS" (SS = the int 13h status in AH) when the write fails;
 *   4. prints "disks: done" and powers off through the ACPI PM1a port.
 *
 * Other failures print "disks: FAIL <letter> DD LLLLLLLL" (drive, LBA):
 * c = no drive count, r = read error, d = wrong sector contents, v = the
 * written sector reads back different.
 */
    .code16
    .set COM1, 0x3f8
    .set PM1A_CNT, 0xb004
    .set CHECK_SECTORS, 128
    .set BATCH, 16
    .set WRITE_LBA, 300
    .set BUF_SEG, 0x1000

    /* Variables live below the boot sector, outside its 512 bytes. */
    .set dap, 0x600
    .set dap_count, 0x602
    .set dap_off, 0x604
    .set dap_seg, 0x606
    .set dap_lba, 0x608
    .set dap_lba_hi, 0x60c
    .set lba, 0x610
    .set sum, 0x614
    .set tag, 0x618        /* dword: the drive's tag << 24 */
    .set boot, 0x61c       /* byte: the boot drive */
    .set drive, 0x61d      /* byte: the drive being checked */
    .set last, 0x61e       /* byte: the last drive number */

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
    movw $16, dap
    movl $0, dap_lba_hi
    movw $0, dap_off
    movw $BUF_SEG, dap_seg

    /* How many hard disks? DL = the count. */
    movb $0x08, %ah
    movb $0x80, %dl
    int $0x13
    jc fail_count
    movb $'c', %bl
    testb %dl, %dl
    jz fail
    movb %dl, %al
    addb $0x7f, %al
    movb %al, last
    movw $msg_count, %si
    call puts
    movb %dl, %al
    call puthex2
    call newline

drive_loop:
    movl $1, lba
    xorl %eax, %eax
    movl %eax, sum
read_loop:
    movb $0x42, %ah
    movw $BATCH, %cx
    call transfer
    jc fail_read

    /* Check and sum the batch. */
    movw $BUF_SEG, %ax
    movw %ax, %es
    xorw %di, %di
    movw $BATCH, %cx
check_sector:
    movl %es:(%di), %eax
    cmpl $1, lba
    jne 2f
    andl $0xff000000, %eax
    movl %eax, tag
2:  movl tag, %eax
    orl lba, %eax
    cmpl %eax, %es:(%di)
    jne fail_pattern
    notl %eax
    cmpl %eax, %es:508(%di)
    jne fail_pattern
    pushw %cx
    movw $512, %cx
    movl sum, %edx
sum_loop:
    movzbl %es:(%di), %eax
    addl %eax, %edx
    incw %di
    loop sum_loop
    movl %edx, sum
    popw %cx
    incl lba
    loop check_sector
    cmpl $CHECK_SECTORS + 1, lba
    jb read_loop

    /* "disks: drive DD tag TT sum=SSSSSSSS" */
    call print_drive
    movw $msg_tag, %si
    call puts
    movb tag + 3, %al
    call puthex2
    movw $msg_sum, %si
    call puts
    movl sum, %eax
    movw $8, %cx
    call puthex
    call newline

    movb drive, %al
    cmpb boot, %al
    je next_drive

    /* Write the drive's pattern to WRITE_LBA and read it back. */
    movl $WRITE_LBA, lba
    call fill
    movw $0x4300, %ax
    call transfer_1
    jc write_refused
    xorw %di, %di
    movw $256, %cx
    xorw %ax, %ax
    rep stosw
    movb $0x42, %ah
    call transfer_1
    jc fail_read
    call fill_byte
    xorw %di, %di
    movw $512, %cx
verify:
    cmpb %al, %es:(%di)
    jne fail_verify
    incb %al
    incw %di
    loop verify
    call print_drive
    movw $msg_write_ok, %si
    call puts
    call newline
    jmp next_drive
write_refused:
    pushw %ax
    call print_drive
    movw $msg_refused, %si
    call puts
    popw %ax
    movb %ah, %al
    call puthex2
    call newline

next_drive:
    movb drive, %al
    cmpb last, %al
    jae done
    incb drive
    jmp drive_loop

done:
    movw $msg_done, %si
    call puts
    call newline
poweroff:
    movw $PM1A_CNT, %dx
    movw $0x3400, %ax /* SLP_TYP = 5 (S5), SLP_EN */
    outw %ax, %dx
    cli
3:  hlt
    jmp 3b

fail_count:
    movb $'c', %bl
    jmp fail
fail_read:
    movb $'r', %bl
    jmp fail
fail_verify:
    movb $'v', %bl
    jmp fail
fail_pattern:
    movb $'d', %bl
fail:
    movw $msg_fail, %si
    call puts
    movb %bl, %al
    call putc
    movb $' ', %al
    call putc
    movb drive, %al
    call puthex2
    movb $' ', %al
    call putc
    movl lba, %eax
    movw $8, %cx
    call puthex
    call newline
    jmp poweroff

/* One sector at lba to or from BUF_SEG:0 with int 13h function AH. */
transfer_1:
    movw $1, %cx
/* CX sectors at lba with int 13h function AH (AL = 0: a write is not
   verified); CF on error, AH = the status. */
transfer:
    movb $0, %al
    movw %cx, dap_count
    movl lba, %edx
    movl %edx, dap_lba
    movb drive, %dl
    movw $dap, %si
    int $0x13
    ret

/* AL = the first byte of the drive's write pattern. */
fill_byte:
    movb tag + 3, %al
    shlb $4, %al
    addb $0xa0, %al
    ret

/* Fills BUF_SEG:0..512 with the drive's write pattern; ES = BUF_SEG. */
fill:
    movw $BUF_SEG, %ax
    movw %ax, %es
    call fill_byte
    xorw %di, %di
    movw $512, %cx
5:  stosb
    incb %al
    loop 5b
    ret

/* "disks: drive DD" */
print_drive:
    movw $msg_drive, %si
    call puts
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

putc:
    pushw %dx
    movw $COM1, %dx
    outb %al, %dx
    popw %dx
    ret

msg_count:       .asciz "disks: count "
msg_drive:       .asciz "disks: drive "
msg_tag:         .asciz " tag "
msg_sum:         .asciz " sum="
msg_write_ok:    .asciz " write ok"
msg_refused:     .asciz " write refused "
msg_done:        .asciz "disks: done"
msg_fail:        .asciz "disks: FAIL "
msg_nl:          .asciz "\r\n"

    .org 510
    .byte 0x55, 0xaa
