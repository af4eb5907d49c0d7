/*
 * An MBR for the HVM BIOS test: SeaBIOS loads it from the emulated IDE
 * disk at 0x7C00 and jumps to it in real mode with DL = the boot drive.
 * It uses only BIOS services (int 13h extensions) and the serial port:
 *
 *   1. reads sectors 1..CHECK_SECTORS with int 13h AH=42h, a few at a
 *      time, and checks each one: dword 0 = its LBA, dword 508/4 = ~LBA
 *      (the test wrote them so), summing every byte;
 *   2. writes sector WRITE_LBA with a pattern (AH=43h) and reads it back;
 *   3. prints "mbr: ok sectors=N sum=XXXXXXXX" (or "mbr: FAIL ...") on COM1
 *      and powers the machine off through the ACPI PM1a control port.
 */
    .code16
    .set COM1, 0x3f8
    .set PM1A_CNT, 0xb004
    .set CHECK_SECTORS, 256
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
    .set drive, 0x618

    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    ljmp $0, $1f
1:  sti
    movb %dl, drive
    movw $16, dap
    movw $msg_start, %si
    call puts

    /* Extensions present? */
    movb $0x41, %ah
    movw $0x55aa, %bx
    movb drive, %dl
    int $0x13
    jc fail_ext
    cmpw $0xaa55, %bx
    jne fail_ext

    movl $1, lba
    xorl %eax, %eax
    movl %eax, sum
read_loop:
    /* DAP: 16 bytes, BATCH sectors to BUF_SEG:0 from lba. */
    movw $BATCH, dap_count
    movw $0, dap_off
    movw $BUF_SEG, dap_seg
    movl lba, %eax
    movl %eax, dap_lba
    movl $0, dap_lba_hi
    movb $0x42, %ah
    movb drive, %dl
    movw $dap, %si
    int $0x13
    jc fail_read

    /* Check and sum the batch. */
    pushw %ds
    movw $BUF_SEG, %ax
    movw %ax, %es
    xorw %di, %di
    movw $BATCH, %cx
check_sector:
    movl lba, %eax
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
    popw %ds
    cmpl $CHECK_SECTORS + 1, lba
    jb read_loop

    /* Write a pattern to WRITE_LBA and read it back. */
    movw $BUF_SEG, %ax
    movw %ax, %es
    xorw %di, %di
    movw $512, %cx
    movb $0x5a, %al
fill:
    movb %al, %es:(%di)
    incb %al
    incw %di
    loop fill
    movw $1, dap_count
    movw $0, dap_off
    movw $BUF_SEG, dap_seg
    movl $WRITE_LBA, dap_lba
    movw $0x4300, %ax
    movb drive, %dl
    movw $dap, %si
    int $0x13
    jc fail_write
    /* Clobber the buffer, read back, compare. */
    xorw %di, %di
    movw $512, %cx
clear:
    movb $0, %es:(%di)
    incw %di
    loop clear
    movw $1, dap_count
    movb $0x42, %ah
    movb drive, %dl
    movw $dap, %si
    int $0x13
    jc fail_read
    xorw %di, %di
    movw $512, %cx
    movb $0x5a, %al
verify:
    cmpb %al, %es:(%di)
    jne fail_verify
    incb %al
    incw %di
    loop verify

    /* SeaBIOS flushes the end of "Booting from Hard Disk...\n" from its
     * timer interrupt: let two interrupts pass (IF=1), so it lands before
     * this line instead of inside it. (The room: the messages end in
     * "\n" alone; the console drops "\r" anyway.) */
    hlt
    hlt
    movw $msg_ok, %si
    call puts
    movl $CHECK_SECTORS, %eax
    call puthex
    movw $msg_sum, %si
    call puts
    movl sum, %eax
    call puthex
    movw $msg_nl, %si
    call puts
poweroff:
    movw $PM1A_CNT, %dx
    movw $0x3400, %ax /* SLP_TYP = 5 (S5), SLP_EN */
    outw %ax, %dx
    cli
2:  hlt
    jmp 2b

/* Failures print "mbr: FAIL <letter> <lba>": e = no int 13h extensions,
   r = read error, w = write error, v = write read back differs,
   d = wrong sector contents. */
fail_ext:
    movb $'e', %bl
    jmp fail
fail_read:
    movb $'r', %bl
    jmp fail
fail_write:
    movb $'w', %bl
    jmp fail
fail_verify:
    movb $'v', %bl
    jmp fail
fail_pattern:
    popw %ds
    movb $'d', %bl
fail:
    movw $msg_fail, %si
    call puts
    movb %bl, %al
    movw $COM1, %dx
    outb %al, %dx
    movb $' ', %al
    outb %al, %dx
    movl lba, %eax
    call puthex
    movw $msg_nl, %si
    call puts
    jmp poweroff

/* Prints the NUL-terminated string at DS:SI on COM1. */
puts:
    pushw %ax
    pushw %dx
3:  lodsb
    testb %al, %al
    jz 4f
    movw $COM1, %dx
    outb %al, %dx
    jmp 3b
4:  popw %dx
    popw %ax
    ret

/* Prints EAX as 8 hex digits on COM1. */
puthex:
    pushl %ecx
    pushw %dx
    movw $8, %cx
5:  roll $4, %eax
    pushl %eax
    andb $0x0f, %al
    addb $'0', %al
    cmpb $'9', %al
    jbe 6f
    addb $('a' - '9' - 1), %al
6:  movw $COM1, %dx
    outb %al, %dx
    popl %eax
    loop 5b
    popw %dx
    popl %ecx
    ret

msg_start:       .asciz "mbr: started\n"
msg_ok:          .asciz "mbr: ok sectors="
msg_sum:         .asciz " sum="
msg_nl:          .asciz "\n"
msg_fail:        .asciz "mbr: FAIL "

    .org 510
    .byte 0x55, 0xaa
