/*
 * A boot image (MBR + 15 sectors) for string I/O edge cases through the
 * stub domain (`hostile_guests::string_io_edge_cases_through_the_stub_domain`).
 * The MBR loads the rest with int 13h AH=42h, then enters 32-bit protected
 * mode with paging (32-bit, 4 MiB pages for the low identity map and the
 * top of the address space) and an IDT whose #PF and #GP handlers record
 * the fault (vector, error code, CR2, EIP, ECX/ESI/EDI at the fault) and
 * resume at `resume`. The virtual pages at 0x400000:
 *
 *   +0x0000 -> frame 0x200000 (user)   +0x1000 -> frame 0x180000 (user)
 *   +0x2000 -> frame 0x202000 (user)   +0x3000 not present
 *   +0x4000 -> frame 0x203000 (supervisor only)
 *
 * so the page after +0x0000 is not in the physically adjacent frame
 * (0x201000, filled with 0xEE). Checks, each "strio: ok <name>" or
 * "strio: FAIL <name>: got X want Y":
 *
 *   1. "ins straddle": READ SECTORS of LBA 1 with `rep insw` to 0x400FFF:
 *      the first word straddles the page; its high byte must land in frame
 *      0x180000, not 0x201000; the data equals an aligned reference read.
 *   2. "outs straddle": WRITE SECTORS of LBA 300 with `rep outsw` from
 *      0x400FFF (byte i = 3i + 0x5A written through the mapping; the test
 *      checks the disk image).
 *   3. "huge count faults": `rep insb` from the UART scratch register with
 *      ECX = 0x10000000 to 0x402000: #PF at 0x403000 (error code 2), EIP on
 *      the instruction, EDI = 0x403000, ECX = 0x10000000 - 0x1000, and the
 *      page before filled; downwards (DF=1) from 0x403FFF, in the
 *      unmapped page: #PF at once (CR2 0x403FFF), ECX and EDI unchanged.
 *   4. "rom and mmio": `rep insb` into the BIOS ROM at 0xFFFFFFF0 (the ROM
 *      unchanged, EDI wraps to 0), `rep outsb` from it, `rep insb` into the
 *      LAPIC ID register (unchanged) and into the unclaimed PCI hole,
 *      `rep insw` into 0xC0000000 (no RAM there), `rep outsb` from the
 *      PCI hole: each completes (ECX = 0, the index register moved), the
 *      guest runs on.
 *   5. "ring 3": at CPL 3 with IOPL 3, `rep outsb` from a user page prints
 *      "strio: ring 3 user page ok"; from the supervisor-only page it takes
 *      #PF with error code 5 (present, user, read), `rep insb` into it #PF
 *      with error code 7 (present, user, write); ECX, ESI/EDI unchanged,
 *      the page's contents unchanged.
 *
 * Then "strio: done" and power off.
 */
    .code16
    .set COM1, 0x3f8
    .set SCRATCH, 0x3ff
    .set PM1A_CNT, 0xb004
    .set ATA_DATA, 0x1f0
    .set ATA_STATUS, 0x1f7
    .set ATA_CTRL, 0x3f6
    .set SECTORS, 16
    .set PD, 0x20000
    .set PT, 0x21000
    .set REF, 0x30000
    .set VBASE, 0x400000
    .set STACK_TOP, 0x7c00
    .set USER_STACK_TOP, 0x70000
    .set WRITE_LBA, 300

    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $STACK_TOP, %sp
    ljmp $0, $1f
1:  /* DL: the boot drive, as SeaBIOS gave it. */
    movw $dap, %si
    movb $0x42, %ah
    int $0x13
    jc load_failed
    lgdt gdt_ptr
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32

load_failed:
    movw $msg_load, %si
2:  lodsb
    testb %al, %al
    jz 3f
    movw $COM1, %dx
    outb %al, %dx
    jmp 2b
3:  hlt
    jmp 3b

    .p2align 2
dap:
    .word 16
    .word SECTORS - 1
    .word 0x7e00, 0
    .quad 1
msg_load: .asciz "strio: FAIL cannot load the image\n"

    .p2align 3
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08: ring-0 code */
    .quad 0x00CF92000000FFFF        /* 0x10: ring-0 data */
    .quad 0x00CFFA000000FFFF        /* 0x18: ring-3 code (0x1B) */
    .quad 0x00CFF2000000FFFF        /* 0x20: ring-3 data (0x23) */
tss_desc:
    .quad 0                         /* 0x28: the TSS, filled in */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .org 510
    .byte 0x55, 0xaa

    /* ---- Sector 1 onwards: 32-bit code. ---- */
    .code32
pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $STACK_TOP, %esp
    cld
    /* The TSS: ESP0/SS0 for faults from ring 3. */
    movl $tss, %eax
    movw %ax, tss_desc + 2
    shrl $16, %eax
    movb %al, tss_desc + 4
    movb %ah, tss_desc + 7
    movw $tss_end - tss - 1, tss_desc
    movb $0x89, tss_desc + 5        /* present, DPL 0, available 32-bit TSS */
    movl $STACK_TOP, tss + 4
    movl $0x10, tss + 8
    movw $0x28, %ax
    ltr %ax
    /* IDT: every exception vector to `unexpected`, #GP and #PF recorded. */
    xorl %ecx, %ecx
1:  movl $unexpected, %eax
    leal idt(,%ecx,8), %edi
    call set_gate
    incl %ecx
    cmpl $32, %ecx
    jb 1b
    movl $gp_handler, %eax
    movl $idt + 13 * 8, %edi
    call set_gate
    movl $pf_handler, %eax
    movl $idt + 14 * 8, %edi
    call set_gate
    movl $bp_handler, %eax
    movl $idt + 3 * 8, %edi
    call set_gate
    lidt idt_ptr
    /* Page tables. */
    movl $PD, %edi
    xorl %eax, %eax
    movl $2048, %ecx                /* PD and PT: 8 KiB */
    rep stosl
    movl $0x00000087, PD            /* 0-4 MiB: 4 MiB, user, RW */
    movl $PT + 7, PD + 4            /* 4-8 MiB: the page table, user, RW */
    movl $0xC0000083, PD + 0x300 * 4 /* no RAM there */
    movl $0xFE800093, PD + 0x3FA * 4 /* PCI hole, uncached, supervisor */
    movl $0xFEC00093, PD + 0x3FB * 4 /* I/O APIC, LAPIC */
    movl $0xFFC00083, PD + 0x3FF * 4 /* the BIOS ROM */
    movl $0x200007, PT
    movl $0x180007, PT + 4
    movl $0x202007, PT + 8
    movl $0x203003, PT + 16         /* supervisor only */
    movl %cr4, %eax
    orl $0x10, %eax                 /* PSE */
    movl %eax, %cr4
    movl $PD, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    jmp 1f
1:  movb $0x02, %al                 /* nIEN: no disk interrupts */
    movw $ATA_CTRL, %dx
    outb %al, %dx
    movl $msg_start, %esi
    call puts

    /* ---- 1. INS straddling a page into non-adjacent frames. ---- */
    call test_begin
    movl $0x180000, %edi
    movb $0x11, %al
    movl $4096, %ecx
    rep stosb
    movl $0x200000, %edi
    movb $0x22, %al
    movl $4096, %ecx
    rep stosb
    movl $0x201000, %edi
    movb $0xEE, %al
    movl $4096, %ecx
    rep stosb
    movl $1, %eax
    movb $0x20, %bl                 /* READ SECTORS */
    call ata_command
    movl $REF, %edi
    movl $256, %ecx
    movw $ATA_DATA, %dx
    rep insw
    movl $1, %eax
    movb $0x20, %bl
    call ata_command
    movl $VBASE + 0xFFF, %edi
    movl $256, %ecx
    movw $ATA_DATA, %dx
    rep insw
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_ecx, %esi
    call expect
    movl %edi, %eax
    movl $VBASE + 0xFFF + 512, %ebx
    movl $n_edi, %esi
    call expect
    movzbl 0x200FFF, %eax
    movzbl REF, %ebx
    movl $n_low_byte, %esi
    call expect
    movzbl 0x180000, %eax
    movzbl REF + 1, %ebx
    movl $n_high_byte, %esi
    call expect
    movl 0x201000, %eax
    movl $0xEEEEEEEE, %ebx
    movl $n_adjacent, %esi
    call expect
    movl 0x200FFE, %eax             /* the byte before the buffer */
    andl $0xFF, %eax
    movl $0x22, %ebx
    movl $n_before, %esi
    call expect
    movl $REF + 1, %esi             /* the rest of the sector */
    movl $0x180000, %edi
    movl $511, %ecx
    repe cmpsb
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_rest, %esi
    call expect
    movl $n_t1, %esi
    call test_end

    /* ---- 2. OUTS straddling a page from non-adjacent frames. ---- */
    call test_begin
    movl $VBASE + 0xFFF, %edi
    xorl %ecx, %ecx
1:  leal (%ecx,%ecx,2), %eax
    addb $0x5A, %al
    movb %al, (%edi,%ecx)
    incl %ecx
    cmpl $512, %ecx
    jb 1b
    movl $WRITE_LBA, %eax
    movb $0x30, %bl                 /* WRITE SECTORS */
    call ata_command
    movl $VBASE + 0xFFF, %esi
    movl $256, %ecx
    movw $ATA_DATA, %dx
    rep outsw
    call ata_wait
    andl $0x29, %eax                /* DF, DRQ, ERR clear when done */
    xorl %ebx, %ebx
    movl $n_status, %esi
    call expect
    movl $n_t2, %esi
    call test_end

    /* ---- 3. A huge count that faults part-way. ---- */
    call test_begin
    movb $0xA5, %al
    movw $SCRATCH, %dx
    outb %al, %dx
    movl $0x202000, %edi
    xorl %eax, %eax
    movl $1024, %ecx
    rep stosl
    movl $t3_fault, resume
    movl $VBASE + 0x2000, %edi
    movl $0x10000000, %ecx
    movw $SCRATCH, %dx
t3_insn:
    rep insb
    movl $n_no_fault, %esi
    call fail
    jmp t3_down
t3_fault:
    movl f_vec, %eax
    movl $14, %ebx
    movl $n_vector, %esi
    call expect
    movl f_err, %eax
    movl $2, %ebx
    movl $n_err, %esi
    call expect
    movl f_cr2, %eax
    movl $VBASE + 0x3000, %ebx
    movl $n_cr2, %esi
    call expect
    movl f_eip, %eax
    movl $t3_insn, %ebx
    movl $n_eip, %esi
    call expect
    movl f_edi, %eax
    movl $VBASE + 0x3000, %ebx
    movl $n_edi, %esi
    call expect
    movl f_ecx, %eax
    movl $0x10000000 - 0x1000, %ebx
    movl $n_ecx, %esi
    call expect
    movl 0x202000, %eax
    movl $0xA5A5A5A5, %ebx
    movl $n_first, %esi
    call expect
    movl 0x202FFC, %eax
    movl $0xA5A5A5A5, %ebx
    movl $n_last, %esi
    call expect
t3_down:
    /* Downwards from the unmapped page: faults before moving anything. */
    movl $t3_down_fault, resume
    movl $VBASE + 0x3FFF, %edi
    movl $0x10000000, %ecx
    movw $SCRATCH, %dx
    std
t3_down_insn:
    rep insb
    cld
    movl $n_no_fault, %esi
    call fail
    jmp t3_end
t3_down_fault:
    movl f_cr2, %eax
    movl $VBASE + 0x3FFF, %ebx
    movl $n_cr2, %esi
    call expect
    movl f_eip, %eax
    movl $t3_down_insn, %ebx
    movl $n_eip, %esi
    call expect
    movl f_edi, %eax
    movl $VBASE + 0x3FFF, %ebx
    movl $n_edi, %esi
    call expect
    movl f_ecx, %eax
    movl $0x10000000, %ebx
    movl $n_ecx, %esi
    call expect
t3_end:
    movl $unexpected_fault, resume
    movl $n_t3, %esi
    call test_end

    /* ---- 4. Buffers in ROM and MMIO. ---- */
    call test_begin
    movl 0xFFFFFFF0, %eax
    movl %eax, rom_before
    movl 0xFFFFFFFC, %eax
    movl %eax, rom_before + 4
    movl $0xFFFFFFF0, %edi          /* INS into the ROM */
    movl $16, %ecx
    movw $SCRATCH, %dx
    rep insb
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_rom_in_ecx, %esi
    call expect
    movl %edi, %eax                 /* wrapped at 4 GiB */
    xorl %ebx, %ebx
    movl $n_rom_in_edi, %esi
    call expect
    movl 0xFFFFFFF0, %eax
    movl rom_before, %ebx
    movl $n_rom_kept, %esi
    call expect
    movl 0xFFFFFFFC, %eax
    movl rom_before + 4, %ebx
    movl $n_rom_kept, %esi
    call expect
    movl $0xFFFFFFF0, %esi          /* OUTS from the ROM */
    movl $16, %ecx
    movw $SCRATCH, %dx
    rep outsb
    movl %esi, %eax
    xorl %ebx, %ebx
    movl $n_rom_out_esi, %esi
    call expect
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_rom_out_ecx, %esi
    call expect
    movw $SCRATCH, %dx              /* what reached the device */
    inb %dx, %al
    movzbl %al, %eax
    movl %eax, rom_scratch
    movl 0xFEE00020, %eax           /* INS into the LAPIC ID register */
    movl %eax, apic_id
    movl $0xFEE00020, %edi
    movl $4, %ecx
    movw $SCRATCH, %dx
    rep insb
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_lapic_ecx, %esi
    call expect
    movl 0xFEE00020, %eax
    movl apic_id, %ebx
    movl $n_lapic_id, %esi
    call expect
    movl $0xFEB00000, %edi          /* INS into the unclaimed PCI hole */
    movl $64, %ecx
    movw $SCRATCH, %dx
    rep insb
    movl %edi, %eax
    movl $0xFEB00040, %ebx
    movl $n_hole_edi, %esi
    call expect
    movl $0xC0000000, %edi          /* INS where there is no RAM */
    movl $2048, %ecx
    movw $ATA_DATA, %dx
    rep insw
    movl %ecx, %eax
    xorl %ebx, %ebx
    movl $n_noram_ecx, %esi
    call expect
    movl $0xFEB00000, %esi          /* OUTS from the PCI hole */
    movl $64, %ecx
    movw $SCRATCH, %dx
    rep outsb
    movl %esi, %eax
    movl $0xFEB00040, %ebx
    movl $n_hole_esi, %esi
    call expect
    movl $msg_rom_scratch, %esi
    call puts
    movl rom_scratch, %eax
    call puthex
    movl $msg_rom_last, %esi
    call puts
    movzbl 0xFFFFFFFF, %eax
    call puthex
    movb $'\n', %al
    call putc
    movl $n_t4, %esi
    call test_end

    /* ---- 5. Ring 3 with IOPL 3 and a supervisor-only buffer. ---- */
    call test_begin
    movl $0x203000, %edi            /* the supervisor page: a marker */
    movl $0x5EC0DE00, %eax
    movl $1024, %ecx
    rep stosl
    movl $t5_user_back, resume
    movl $ring3_user_page, %eax
    jmp to_ring3
t5_user_back:
    movl f_vec, %eax                /* its int3 after the output */
    movl $3, %ebx
    movl $n_vector, %esi
    call expect
    movl $t5_outs_fault, resume
    movl $ring3_outs_super, %eax
    jmp to_ring3
t5_outs_fault:
    movl f_vec, %eax
    movl $14, %ebx
    movl $n_vector, %esi
    call expect
    movl f_err, %eax
    movl $5, %ebx
    movl $n_err_outs, %esi
    call expect
    movl f_cr2, %eax
    movl $VBASE + 0x4000, %ebx
    movl $n_cr2, %esi
    call expect
    movl f_eip, %eax
    movl $r3_outs_insn, %ebx
    movl $n_eip, %esi
    call expect
    movl f_esi, %eax
    movl $VBASE + 0x4000, %ebx
    movl $n_esi, %esi
    call expect
    movl f_ecx, %eax
    movl $16, %ebx
    movl $n_ecx, %esi
    call expect
    movl $t5_ins_fault, resume
    movl $ring3_ins_super, %eax
    jmp to_ring3
t5_ins_fault:
    movl f_vec, %eax
    movl $14, %ebx
    movl $n_vector, %esi
    call expect
    movl f_err, %eax
    movl $7, %ebx
    movl $n_err_ins, %esi
    call expect
    movl f_cr2, %eax
    movl $VBASE + 0x4000, %ebx
    movl $n_cr2, %esi
    call expect
    movl f_eip, %eax
    movl $r3_ins_insn, %ebx
    movl $n_eip, %esi
    call expect
    movl f_edi, %eax
    movl $VBASE + 0x4000, %ebx
    movl $n_edi, %esi
    call expect
    movl f_ecx, %eax
    movl $16, %ebx
    movl $n_ecx, %esi
    call expect
    movl 0x203000, %eax
    movl $0x5EC0DE00, %ebx
    movl $n_super_kept, %esi
    call expect
    movl $unexpected_fault, resume
    movl $n_t5, %esi
    call test_end

    movl $msg_done, %esi
    call puts
    movw $PM1A_CNT, %dx
    movw $(5 << 10) | (1 << 13), %ax
    outw %ax, %dx
1:  hlt
    jmp 1b

/* to_ring3: IRET to %eax at CPL 3, IOPL 3, interrupts off. */
to_ring3:
    pushl $0x23
    pushl $USER_STACK_TOP
    pushl $0x3002
    pushl $0x1B
    pushl %eax
    iretl

/* Ring-3 code: back to ring 0 through int3 (a #BP gate with DPL 3) or a
 * #PF. */
ring3_user_page:
    movw $0x23, %ax
    movw %ax, %ds
    movw %ax, %es
    movl $msg_user, %esi
    movl $len_user, %ecx
    movw $COM1, %dx
    rep outsb
    int3
ring3_outs_super:
    movw $0x23, %ax
    movw %ax, %ds
    movw %ax, %es
    movl $VBASE + 0x4000, %esi
    movl $16, %ecx
    movw $COM1, %dx
r3_outs_insn:
    rep outsb
    int3
ring3_ins_super:
    movw $0x23, %ax
    movw %ax, %ds
    movw %ax, %es
    movl $VBASE + 0x4000, %edi
    movl $16, %ecx
    movw $SCRATCH, %dx
r3_ins_insn:
    rep insb
    int3

/* ata_command: LBA28 command %bl for one sector at LBA %eax on the
 * master, then waits for DRQ (or BSY clear). */
ata_command:
    pushl %eax
    movw $0x1f2, %dx
    movb $1, %al
    outb %al, %dx
    movl (%esp), %eax
    movw $0x1f3, %dx
    outb %al, %dx
    shrl $8, %eax
    movw $0x1f4, %dx
    outb %al, %dx
    shrl $8, %eax
    movw $0x1f5, %dx
    outb %al, %dx
    shrl $8, %eax
    andb $0x0f, %al
    orb $0xe0, %al
    movw $0x1f6, %dx
    outb %al, %dx
    movb %bl, %al
    movw $ATA_STATUS, %dx
    outb %al, %dx
    popl %eax
    /* fall through */
/* ata_wait: polls the status until BSY is clear; the status in %eax. */
ata_wait:
    movw $ATA_STATUS, %dx
1:  inb %dx, %al
    testb $0x80, %al
    jnz 1b
    movzbl %al, %eax
    ret

/* Fault handlers: record, then resume at `resume` on the ring-0 stack. */
gp_handler:
    movl $13, f_vec
    jmp 1f
pf_handler:
    movl $14, f_vec
1:  movl %ecx, f_ecx
    movl %esi, f_esi
    movl %edi, f_edi
    popl f_err
    popl f_eip
    movl %cr2, %eax
    movl %eax, f_cr2
    jmp resume_ring0
bp_handler:
    movl $3, f_vec
resume_ring0:
    cld
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movl $STACK_TOP, %esp
    jmp *resume
unexpected:
    movl $msg_unexpected, %esi
    call puts
    movl (%esp), %eax
    call puthex
    movb $'\n', %al
    call putc
    jmp power_off
unexpected_fault:
    movl $msg_unexpected_fault, %esi
    call puts
    movl f_vec, %eax
    call puthex
    movb $' ', %al
    call putc
    movl f_eip, %eax
    call puthex
    movb $'\n', %al
    call putc
power_off:
    movw $PM1A_CNT, %dx
    movw $(5 << 10) | (1 << 13), %ax
    outw %ax, %dx
1:  hlt
    jmp 1b

/* set_gate: a 32-bit interrupt gate (DPL 3, so int3 works from ring 3)
 * for handler %eax at %edi. */
set_gate:
    movw %ax, (%edi)
    movw $0x08, 2(%edi)
    movw $0xEE00, 4(%edi)
    shrl $16, %eax
    movw %ax, 6(%edi)
    ret

test_begin:
    pushl %eax
    movl fails, %eax
    movl %eax, fails_before
    popl %eax
    ret

/* test_end: "strio: ok <name at %esi>" if nothing failed since test_begin. */
test_end:
    movl fails, %eax
    cmpl fails_before, %eax
    jne 1f
    pushl %esi
    movl $msg_ok, %esi
    call puts
    popl %esi
    call puts
    movb $'\n', %al
    call putc
1:  ret

/* expect: if %eax != %ebx, "strio: FAIL <name at %esi>: got X want Y". */
expect:
    cmpl %ebx, %eax
    je 1f
    incl fails
    pushl %esi
    movl $msg_fail, %esi
    call puts
    popl %esi
    call puts
    movl $msg_got, %esi
    call puts
    call puthex
    movl $msg_want, %esi
    call puts
    movl %ebx, %eax
    call puthex
    movb $'\n', %al
    call putc
1:  ret

/* fail: "strio: FAIL <name at %esi>". */
fail:
    incl fails
    pushl %esi
    movl $msg_fail, %esi
    call puts
    popl %esi
    call puts
    movb $'\n', %al
    call putc
    ret

putc:
    pushl %edx
    movw $COM1, %dx
    outb %al, %dx
    popl %edx
    ret

puts:
    pushl %eax
    pushl %esi
1:  lodsb
    testb %al, %al
    jz 2f
    call putc
    jmp 1b
2:  popl %esi
    popl %eax
    ret

/* puthex: %eax as 8 hex digits. */
puthex:
    pushl %eax
    pushl %ecx
    pushl %edx
    movl %eax, %edx
    movl $8, %ecx
1:  roll $4, %edx
    movl %edx, %eax
    andl $0xf, %eax
    movb hexdigits(%eax), %al
    call putc
    loop 1b
    popl %edx
    popl %ecx
    popl %eax
    ret

hexdigits: .ascii "0123456789abcdef"
msg_start: .asciz "strio: start\n"
msg_done: .asciz "strio: done\n"
msg_ok: .asciz "strio: ok "
msg_fail: .asciz "strio: FAIL "
msg_got: .asciz ": got "
msg_want: .asciz " want "
msg_unexpected: .asciz "strio: FAIL unexpected exception at "
msg_unexpected_fault: .asciz "strio: FAIL unexpected fault, vector/eip "
msg_rom_scratch: .asciz "strio: outs from the ROM left the device "
msg_rom_last: .asciz ", the ROM's last byte "
msg_user: .ascii "strio: ring 3 user page ok\n"
    .set len_user, . - msg_user
n_t1: .asciz "ins straddle"
n_t2: .asciz "outs straddle"
n_t3: .asciz "huge count faults"
n_t4: .asciz "rom and mmio"
n_t5: .asciz "ring 3"
n_ecx: .asciz "ecx"
n_edi: .asciz "edi"
n_esi: .asciz "esi"
n_low_byte: .asciz "low byte in the first page"
n_high_byte: .asciz "high byte in the next virtual page"
n_adjacent: .asciz "physically adjacent frame untouched"
n_before: .asciz "byte before the buffer"
n_rest: .asciz "bytes left unequal to the reference"
n_status: .asciz "status after the write"
n_no_fault: .asciz "no fault"
n_vector: .asciz "vector"
n_err: .asciz "error code"
n_err_outs: .asciz "error code of outs"
n_err_ins: .asciz "error code of ins"
n_cr2: .asciz "cr2"
n_eip: .asciz "eip"
n_first: .asciz "first dword"
n_last: .asciz "last dword before the fault"
n_rom_in_ecx: .asciz "ins to rom ecx"
n_rom_in_edi: .asciz "ins to rom edi"
n_rom_kept: .asciz "rom unchanged"
n_rom_out_esi: .asciz "outs from rom esi"
n_rom_out_ecx: .asciz "outs from rom ecx"
n_lapic_ecx: .asciz "ins to lapic ecx"
n_lapic_id: .asciz "lapic id unchanged"
n_hole_edi: .asciz "ins to pci hole edi"
n_noram_ecx: .asciz "ins beyond ram ecx"
n_hole_esi: .asciz "outs from pci hole esi"
n_super_kept: .asciz "supervisor page unchanged"

    .p2align 3
idt:
    .fill 32, 8, 0
idt_ptr:
    .word 32 * 8 - 1
    .long idt
    .p2align 2
tss:
    .fill 104, 1, 0
tss_end:
resume: .long unexpected_fault
f_vec: .long 0
f_err: .long 0
f_eip: .long 0
f_cr2: .long 0
f_ecx: .long 0
f_esi: .long 0
f_edi: .long 0
fails: .long 0
fails_before: .long 0
rom_before: .long 0, 0
rom_scratch: .long 0
apic_id: .long 0

    .org SECTORS * 512
