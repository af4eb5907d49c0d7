/*
 * bench_hvm: what an HVM guest's emulated devices cost, measured with
 * rdtsc inside the guest (`ferrite bench`). Run under QEMU with
 * `-icount shift=0,sleep=off`: a TSC tick is then one executed instruction
 * of the emulated machine (guest, hypervisor and stub domain together).
 *
 * SeaBIOS loads sector 0 (this MBR) from the emulated IDE disk (hda) at
 * 0x7C00 and jumps to it in real mode with DL = the boot drive. Then:
 *
 *   1. (16-bit) loads sectors 1..LOAD_SECTORS of the disk, the rest of
 *      this image, to 0x7E00 with int 13h AH=42h;
 *   2. (16-bit) masks both PICs, finds the PIIX4 IDE function at 00:01.1
 *      through ports 0xCF8/0xCFC, takes its bus-master block from BAR4
 *      (SeaBIOS assigned it) and makes sure I/O decoding and bus mastering
 *      are on; loads a flat GDT and enters 32-bit protected mode (no
 *      paging, interrupts off for good);
 *   3. measures the TSC against the ACPI PM timer (BENCH-TSC);
 *   4. port-read round trips, ROUNDS rounds of ITERS reads each:
 *      the empty loop, `inl 0xB008` (PM timer, in the hypervisor),
 *      `inb 0x1F7` (IDE status, in the stub domain), `inb 0x240` (a port
 *      nothing decodes: the stub answers 0xFF without a device model);
 *   5. IDE bus-master DMA reads of DMA_BYTES into guest memory, issued and
 *      polled by this code, DMA_ROUNDS times, as READ DMA of 128 sectors
 *      (64 KiB, one PRD entry) per command and as READ DMA EXT of 2048
 *      sectors (1 MiB, 16 PRD entries) per command; every round's data is
 *      checked afterwards (untimed): each sector's first dword is its LBA,
 *      as the disk image was written;
 *   6. the same DMA_BYTES copied with `rep movsd` within guest memory,
 *      DMA_ROUNDS times: the baseline;
 *   7. prints "bench done" and powers off through PM1a control.
 *
 * Output on COM1 (the stub's UART), one line each:
 *   BENCH-TSC <tsc ticks> <pm timer ticks>
 *   BENCH <name> <ticks of the best round> <reads per round>
 *   BENCH-SUM <name> <ticks of all rounds> <reads in all rounds>
 *   BENCH-BYTES <name> <ticks of the best round> <bytes per round>
 *   BENCH-BYTES-SUM <name> <ticks of all rounds> <bytes in all rounds>
 * or "bench: FAIL <what>" (then it powers off at once).
 */
        .code16

        .set COM1,           0x3F8
        .set PM_TMR,         0xB008
        .set PM1A_CNT,       0xB004
        .set PM1_SLP_S5,     (5 << 10) | (1 << 13)  /* SLP_TYP=5 (S5), SLP_EN */
        .set CAL_PM_TICKS,   35795                  /* 10 ms of PM timer */

        .set LOAD_SECTORS,   7                      /* image = 1 + this */
        .set STAGE2,         0x7E00
        .set DAP,            0x600                  /* int 13h packet */

        .set PCI_ADDR,       0xCF8
        .set PCI_DATA,       0xCFC
        .set PCI_IDE,        0x80000900             /* bus 0, dev 1, fn 1 */
        .set PIIX4_IDE_ID,   0x71118086

        .set IDE_NSECT,      0x1F2
        .set IDE_LBAL,       0x1F3
        .set IDE_LBAM,       0x1F4
        .set IDE_LBAH,       0x1F5
        .set IDE_DEVICE,     0x1F6
        .set IDE_STATUS,     0x1F7                  /* read: status, write: command */
        .set NOBODY_PORT,    0x240                  /* decoded by no device */
        .set ATA_READ_DMA,   0xC8
        .set ATA_READ_DMA_EXT, 0x25
        .set BM_CMD,         0                      /* bus-master register offsets */
        .set BM_STATUS,      2
        .set BM_PRD,         4
        .set BM_TO_MEMORY,   0x08
        .set BM_START,       0x01
        .set BM_ST_ERROR,    0x02
        .set BM_ST_INTR,     0x04
        .set BM_ST_DRV0_DMA, 0x20

        .set ITERS,          1000
        .set ROUNDS,         10

        .set PRD_TABLE,      0x1000                 /* 16 entries, 4-aligned */
        .set DMA_BUF,        0x1000000              /* 16 MiB */
        .set COPY_DST,       0x2000000              /* 32 MiB */
        .set DMA_BYTES,      8 << 20
        .set DMA_ROUNDS,     3
        .set DATA_LBA,       2048                   /* disk data from 1 MiB */

        .set CODE_SEL,       0x08
        .set DATA_SEL,       0x10

/* MEASURE name, port, insn...: ROUNDS rounds of ITERS executions of insn
 * (plus `dec %edi; jnz`) with %dx = port, between two rdtsc; keeps the
 * smallest round and the sum of all, prints both (32-bit code). */
.macro MEASURE name, port, insn:vararg
        movl    $0xFFFFFFFF, best_lo
        movl    $0xFFFFFFFF, best_hi
        movl    $0, sum_lo
        movl    $0, sum_hi
        movl    $ROUNDS, %ebp
90:     rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movw    $\port, %dx
        movl    $ITERS, %edi
91:     \insn
        decl    %edi
        jnz     91b
        rdtsc
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        call    record
        decl    %ebp
        jnz     90b
        movl    $name_\@, %esi
        movl    $ITERS, %eax
        movl    $ROUNDS, %ebx
        call    report
        jmp     95f
name_\@: .asciz "\name"
95:
.endm

        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7C00, %sp
        ljmp    $0, $1f
1:      cld

        /* 1. The rest of the image: LOAD_SECTORS from LBA 1 to 0x7E00. */
        movw    $16, DAP                            /* size, reserved */
        movw    $LOAD_SECTORS, DAP + 2
        movw    $STAGE2, DAP + 4                    /* offset */
        movw    $0, DAP + 6                         /* segment */
        movl    $1, DAP + 8                         /* LBA low */
        movl    $0, DAP + 12                        /* LBA high */
        movw    $DAP, %si
        movb    $0x42, %ah
        int     $0x13                               /* DL: boot drive */
        jc      load_failed
        cli                                         /* int 13h may enable */
        jmp     stage2

load_failed:
        movw    $msg_load_failed, %si
/* fail16: prints the string at %si on COM1, powers off (16-bit code). */
fail16:
        lodsb
        testb   %al, %al
        jz      poweroff16
        movw    $COM1, %dx
        outb    %al, %dx
        jmp     fail16
poweroff16:
        movw    $PM1A_CNT, %dx
        movw    $PM1_SLP_S5, %ax
        outw    %ax, %dx
2:      hlt
        jmp     2b

msg_load_failed: .asciz "bench: FAIL loading the image with int 13h\n"

        .org    510
        .byte   0x55, 0xAA

/* ---- Sector 1 onwards: loaded at 0x7E00. ------------------------------ */

stage2:
        /* 2. No interrupts from now on: mask both PICs (the in-hypervisor
         * PIC; nothing pending means nothing to inject). */
        movb    $0xFF, %al
        outb    %al, $0x21
        outb    %al, $0xA1

        /* 00:01.1 must be the PIIX4 IDE function. */
        movl    $PCI_IDE, %eax
        movw    $PCI_ADDR, %dx
        outl    %eax, %dx
        movw    $PCI_DATA, %dx
        inl     %dx, %eax
        cmpl    $PIIX4_IDE_ID, %eax
        jne     no_ide16
        /* Command register: I/O space (bit 0) and bus master (bit 2). */
        movl    $PCI_IDE + 0x04, %eax
        movw    $PCI_ADDR, %dx
        outl    %eax, %dx
        movw    $PCI_DATA, %dx
        inw     %dx, %ax
        movw    %ax, %bx
        orw     $0x05, %ax
        cmpw    %ax, %bx
        je      1f
        outw    %ax, %dx
1:      /* BAR4: the bus-master block, an I/O BAR (bit 0 set). */
        movl    $PCI_IDE + 0x20, %eax
        movw    $PCI_ADDR, %dx
        outl    %eax, %dx
        movw    $PCI_DATA, %dx
        inl     %dx, %eax
        testb   $1, %al
        jz      no_ide16
        andl    $0xFFFC, %eax
        jz      no_ide16
        movw    %ax, bm_base

        /* Flat 32-bit protected mode. */
        lgdt    gdt_ptr
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $pm32

no_ide16:
        movw    $msg_no_ide, %si
        jmp     fail16

        .code32
pm32:
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $0x7C00, %esp
        lidt    null_idt                            /* faults: triple fault */

        movl    $hello, %esi
        call    puts
        movl    $bm_msg, %esi
        call    puts
        movzwl  bm_base, %eax
        call    puthex16
        movb    $'\n', %al
        call    putc

        /* 3. TSC rate: TSC ticks across CAL_PM_TICKS PM timer ticks,
         * starting on a PM timer edge. */
        movw    $PM_TMR, %dx
        inl     %dx, %eax
        movl    %eax, %ebx
1:      inl     %dx, %eax
        cmpl    %eax, %ebx
        je      1b
        movl    %eax, %ebx                          /* PM time at the edge */
        rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movw    $PM_TMR, %dx
2:      inl     %dx, %eax
        subl    %ebx, %eax
        andl    $0xFFFFFF, %eax
        cmpl    $CAL_PM_TICKS, %eax
        jb      2b
        movl    %eax, %ecx                          /* PM ticks elapsed */
        rdtsc
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        movl    $tsc_prefix, %esi
        call    puts
        call    putdec64
        movb    $' ', %al
        call    putc
        movl    %ecx, %eax
        call    putdec
        movb    $'\n', %al
        call    putc

        /* 4. Port-read round trips. */
        MEASURE loop_nop,           0,           nop
        MEASURE pm_timer_inl,       PM_TMR,      inl %dx, %eax
        MEASURE ide_status_inb,     IDE_STATUS,  inb %dx, %al
        MEASURE stub_unclaimed_inb, NOBODY_PORT, inb %dx, %al

        /* 5. DMA reads, 64 KiB and 1 MiB per command. */
        movl    $128, sectors
        movb    $ATA_READ_DMA, ata_cmd
        movl    $name_dma64k, bytes_name
        call    dma_bench
        movl    $2048, sectors
        movb    $ATA_READ_DMA_EXT, ata_cmd
        movl    $name_dma1m, bytes_name
        call    dma_bench

        /* 6. The copy baseline. */
        call    copy_bench

        movl    $done, %esi
        call    puts
poweroff:
        movw    $PM1A_CNT, %dx
        movw    $PM1_SLP_S5, %ax
        outw    %ax, %dx
1:      hlt
        jmp     1b

/* fail: prints "bench: FAIL " and the string at %esi, powers off. */
fail:
        pushl   %esi
        movl    $fail_prefix, %esi
        call    puts
        popl    %esi
        call    puts
        movb    $'\n', %al
        call    putc
        jmp     poweroff

/* ---- Round trips ------------------------------------------------------- */


/* record: adds %edx:%eax (one round's ticks) to sum, keeps the smallest in
 * best. */
record:
        addl    %eax, sum_lo
        adcl    %edx, sum_hi
        cmpl    best_hi, %edx
        ja      1f
        jb      2f
        cmpl    best_lo, %eax
        jae     1f
2:      movl    %eax, best_lo
        movl    %edx, best_hi
1:      ret

/* report: prints "<prefix> <name> <best> <n>" and "<prefix>-SUM <name>
 * <sum> <n * rounds>" for name %esi, n %eax, rounds %ebx; prefix "BENCH"
 * or, when report_bytes is set, "BENCH-BYTES". */
report:
        pushl   %eax
        pushl   %esi
        movl    $bench_prefix, %esi
        call    puts
        cmpb    $0, report_bytes
        je      1f
        movl    $bytes_suffix, %esi
        call    puts
1:      movb    $' ', %al
        call    putc
        movl    (%esp), %esi
        call    puts
        movb    $' ', %al
        call    putc
        movl    best_lo, %eax
        movl    best_hi, %edx
        call    putdec64
        movb    $' ', %al
        call    putc
        movl    4(%esp), %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        /* The sum line. */
        movl    $bench_prefix, %esi
        call    puts
        cmpb    $0, report_bytes
        je      1f
        movl    $bytes_suffix, %esi
        call    puts
1:      movl    $sum_suffix, %esi
        call    puts
        movl    (%esp), %esi
        call    puts
        movb    $' ', %al
        call    putc
        movl    sum_lo, %eax
        movl    sum_hi, %edx
        call    putdec64
        movb    $' ', %al
        call    putc
        movl    4(%esp), %eax
        mull    %ebx                                /* n * rounds, < 2^32 */
        call    putdec
        movb    $'\n', %al
        call    putc
        popl    %esi
        popl    %eax
        ret

/* ---- IDE bus-master DMA ------------------------------------------------ */

/* dma_bench: DMA_ROUNDS rounds of reading DMA_BYTES from disk sector
 * DATA_LBA on to DMA_BUF in commands of `sectors` sectors (command byte
 * ata_cmd), timed; each round's buffer is zeroed before (untimed) and
 * checked after (untimed). Prints under the name at bytes_name. */
dma_bench:
        movl    $0xFFFFFFFF, best_lo
        movl    $0xFFFFFFFF, best_hi
        movl    $0, sum_lo
        movl    $0, sum_hi
        movl    $DMA_ROUNDS, rounds_left
1:      movl    $DMA_BUF, %edi                      /* zero the buffer */
        movl    $DMA_BYTES / 4, %ecx
        xorl    %eax, %eax
        rep stosl
        rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movl    $DATA_LBA, %ebx                     /* next LBA */
        movl    $DMA_BUF, %edi                      /* next buffer */
2:      call    dma_command
        movl    sectors, %eax
        addl    %eax, %ebx
        shll    $9, %eax
        addl    %eax, %edi
        cmpl    $DMA_BUF + DMA_BYTES, %edi
        jb      2b
        rdtsc
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        call    record
        /* Check: the first dword of sector i is DATA_LBA + i. */
        movl    $DMA_BUF, %edi
        movl    $DATA_LBA, %eax
3:      cmpl    %eax, (%edi)
        jne     dma_bad_data
        incl    %eax
        addl    $512, %edi
        cmpl    $DMA_BUF + DMA_BYTES, %edi
        jb      3b
        decl    rounds_left
        jnz     1b
        movb    $1, report_bytes
        movl    bytes_name, %esi
        movl    $DMA_BYTES, %eax
        movl    $DMA_ROUNDS, %ebx
        call    report
        movb    $0, report_bytes
        ret

dma_bad_data:
        movl    $msg_bad_data, %esi
        jmp     fail

/* dma_command: one READ DMA / READ DMA EXT of `sectors` sectors from LBA
 * %ebx into the buffer at %edi (64 KiB aligned), driven as a polling
 * driver does it: PRD table (one 64 KiB entry per 64 KiB), bus master
 * stopped and set to write memory, its interrupt and error bits cleared,
 * the PRD pointer loaded; the taskfile and the command; the engine
 * started; bus-master status polled for the interrupt bit; the engine
 * stopped; the drive's status read (which also acknowledges its
 * interrupt). Interrupts stay masked (IF = 0, PICs masked), but the
 * drive's interrupt line is live, as for an interrupt-driven driver.
 * Preserves %ebx, %edi. */
dma_command:
        /* PRD table: entry k = (buffer + k * 64 KiB, byte count 0 = 64 KiB),
         * end-of-table flag on the last. */
        movl    sectors, %ecx
        shrl    $7, %ecx                            /* 64 KiB entries */
        movl    $PRD_TABLE, %esi
        movl    %edi, %eax
1:      movl    %eax, (%esi)
        movl    $0, 4(%esi)
        addl    $0x10000, %eax
        addl    $8, %esi
        loop    1b
        movl    $0x80000000, -4(%esi)               /* EOT */

        movw    bm_base, %dx                        /* BM command: stop, to memory */
        movb    $BM_TO_MEMORY, %al
        outb    %al, %dx
        addw    $BM_STATUS, %dx                     /* clear interrupt and error */
        movb    $(BM_ST_DRV0_DMA | BM_ST_INTR | BM_ST_ERROR), %al
        outb    %al, %dx
        addw    $BM_PRD - BM_STATUS, %dx
        movl    $PRD_TABLE, %eax
        outl    %eax, %dx

        cmpb    $ATA_READ_DMA_EXT, ata_cmd
        je      2f
        /* READ DMA: 28-bit LBA, count 128 (1..256, 0 = 256). */
        movw    $IDE_NSECT, %dx
        movl    sectors, %eax
        outb    %al, %dx
        movl    %ebx, %eax
        incw    %dx                                 /* LBA 7:0 */
        outb    %al, %dx
        shrl    $8, %eax
        incw    %dx                                 /* LBA 15:8 */
        outb    %al, %dx
        shrl    $8, %eax
        incw    %dx                                 /* LBA 23:16 */
        outb    %al, %dx
        shrl    $8, %eax
        andb    $0x0F, %al
        orb     $0xE0, %al                          /* LBA, drive 0, LBA 27:24 */
        incw    %dx
        outb    %al, %dx
        jmp     3f
2:      /* READ DMA EXT: each register takes its high byte first. */
        movw    $IDE_NSECT, %dx
        movl    sectors, %eax
        movb    %ah, %al                            /* count 15:8 */
        outb    %al, %dx
        movl    sectors, %eax                       /* count 7:0 */
        outb    %al, %dx
        movl    %ebx, %eax
        shrl    $24, %eax
        incw    %dx                                 /* LBA 31:24 */
        outb    %al, %dx
        xorb    %al, %al
        incw    %dx                                 /* LBA 39:32 */
        outb    %al, %dx
        incw    %dx                                 /* LBA 47:40 */
        outb    %al, %dx
        movl    %ebx, %eax
        movw    $IDE_LBAL, %dx                      /* LBA 7:0 */
        outb    %al, %dx
        shrl    $8, %eax
        incw    %dx                                 /* LBA 15:8 */
        outb    %al, %dx
        shrl    $8, %eax
        incw    %dx                                 /* LBA 23:16 */
        outb    %al, %dx
        movb    $0xE0, %al                          /* LBA, drive 0 */
        incw    %dx
        outb    %al, %dx
3:      movw    $IDE_STATUS, %dx                    /* the command */
        movb    ata_cmd, %al
        outb    %al, %dx

        movw    bm_base, %dx                        /* start the engine */
        movb    $(BM_TO_MEMORY | BM_START), %al
        outb    %al, %dx
        addw    $BM_STATUS, %dx
4:      inb     %dx, %al                            /* poll */
        testb   $BM_ST_ERROR, %al
        jnz     dma_bm_error
        testb   $BM_ST_INTR, %al
        jz      4b
        subw    $BM_STATUS, %dx                     /* stop the engine */
        movb    $BM_TO_MEMORY, %al
        outb    %al, %dx
        movw    $IDE_STATUS, %dx                    /* drive status, acks INTRQ */
        inb     %dx, %al
        testb   $0x89, %al                          /* BSY, DRQ, ERR */
        jnz     dma_drive_error
        ret

dma_bm_error:
        movl    $msg_bm_error, %esi
        jmp     fail
dma_drive_error:
        movl    $msg_drive_error, %esi
        jmp     fail

/* ---- The copy baseline ------------------------------------------------- */

/* copy_bench: DMA_ROUNDS rounds of `rep movsd` of DMA_BYTES from DMA_BUF to
 * COPY_DST, each between two rdtsc. */
copy_bench:
        movl    $0xFFFFFFFF, best_lo
        movl    $0xFFFFFFFF, best_hi
        movl    $0, sum_lo
        movl    $0, sum_hi
        movl    $DMA_ROUNDS, %ebp
1:      rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movl    $DMA_BUF, %esi
        movl    $COPY_DST, %edi
        movl    $DMA_BYTES / 4, %ecx
        rep movsl
        rdtsc
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        call    record
        decl    %ebp
        jnz     1b
        movb    $1, report_bytes
        movl    $name_copy, %esi
        movl    $DMA_BYTES, %eax
        movl    $DMA_ROUNDS, %ebx
        call    report
        movb    $0, report_bytes
        ret

/* ---- Output on COM1 ---------------------------------------------------- */

/* putc: %al to COM1. The stub's UART hands every byte to the console when
 * the request is answered, so there is no transmit FIFO to wait for.
 * Preserves registers. */
putc:
        pushl   %edx
        movw    $COM1, %dx
        outb    %al, %dx
        popl    %edx
        ret

/* puts: the NUL-terminated string at %esi. Preserves registers. */
puts:
        pushl   %eax
        pushl   %esi
1:      lodsb
        testb   %al, %al
        jz      2f
        call    putc
        jmp     1b
2:      popl    %esi
        popl    %eax
        ret

/* putdec64: %edx:%eax as an unsigned decimal number. Preserves registers. */
putdec64:
        pushal
        movl    $decimal_end, %edi
        movl    $10, %ebx
1:      movl    %eax, %ecx                          /* low half */
        movl    %edx, %eax
        xorl    %edx, %edx
        divl    %ebx                                /* high / 10 */
        movl    %eax, %esi                          /* new high half */
        movl    %ecx, %eax
        divl    %ebx                                /* (high % 10 : low) / 10 */
        addb    $'0', %dl
        decl    %edi
        movb    %dl, (%edi)
        movl    %esi, %edx
        movl    %eax, %ecx
        orl     %edx, %ecx
        jnz     1b
        movl    %edi, %esi
        call    puts
        popal
        ret

/* putdec: %eax as an unsigned decimal number. */
putdec:
        pushl   %edx
        xorl    %edx, %edx
        call    putdec64
        popl    %edx
        ret

/* puthex16: %ax as 4 hex digits. Preserves registers. */
puthex16:
        pushl   %eax
        pushl   %ecx
        movl    %eax, %ecx
        shll    $16, %ecx
        movl    $4, %eax
1:      roll    $4, %ecx
        pushl   %eax
        movb    %cl, %al
        andb    $0x0F, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     2f
        addb    $('a' - '9' - 1), %al
2:      call    putc
        popl    %eax
        decl    %eax
        jnz     1b
        popl    %ecx
        popl    %eax
        ret

/* ---- Data (inside the image; the image is RAM) ------------------------- */

        .balign 8
gdt:    .quad   0
        .quad   0x00CF9A000000FFFF                  /* 0x08: code, 32-bit, flat */
        .quad   0x00CF92000000FFFF                  /* 0x10: data, flat */
gdt_end:
gdt_ptr: .word  gdt_end - gdt - 1
        .long   gdt
null_idt: .word 0
        .long   0
        .balign 4
bm_base:     .word 0, 0
t0_lo:       .long 0
t0_hi:       .long 0
best_lo:     .long 0
best_hi:     .long 0
sum_lo:      .long 0
sum_hi:      .long 0
sectors:     .long 0
bytes_name:  .long 0
rounds_left: .long 0
ata_cmd:     .byte 0
report_bytes: .byte 0
decimal_buf: .fill 24, 1, 0
decimal_end: .byte 0

hello:        .asciz "bench: Ferrite HVM device round trips and IDE DMA (rdtsc; use -icount shift=0,sleep=off)\n"
bm_msg:       .asciz "bench: IDE bus master at port 0x"
tsc_prefix:   .asciz "BENCH-TSC "
bench_prefix: .asciz "BENCH"
bytes_suffix: .asciz "-BYTES"
sum_suffix:   .asciz "-SUM "
fail_prefix:  .asciz "bench: FAIL "
done:         .asciz "bench done\n"
name_dma64k:  .asciz "ide_dma_read_64k"
name_dma1m:   .asciz "ide_dma_read_ext_1m"
name_copy:    .asciz "rep_movsd_copy"
msg_bad_data:    .asciz "DMA data differs from the disk"
msg_bm_error:    .asciz "bus-master error bit set"
msg_drive_error: .asciz "drive reports an error after DMA"
msg_no_ide:      .asciz "bench: FAIL no PIIX4 IDE with a bus-master BAR at 00:01.1\n"

        /* The image is exactly 1 + LOAD_SECTORS sectors (as stops here if
         * the code outgrows it). */
        .org    (1 + LOAD_SECTORS) * 512
