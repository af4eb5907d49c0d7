/* odd_apic: 1-, 2-, 8-byte and misaligned accesses to the xAPIC page
 * (0xFEE00000) and the I/O APIC window (0xFEC00000), each checked against
 * what `ferrite-devmodel`'s models document (lapic.rs `read_mmio` /
 * `write_mmio`, ioapic.rs `read_mmio` / `write_mmio`), which is what the
 * SDM and the 82093AA datasheet allow:
 *   - reads within a 32-bit register return the bytes addressed (so a
 *     narrow read is the low bytes), other offsets read 0;
 *   - LAPIC writes take effect only when aligned and 4 bytes or wider (an
 *     8-byte write counts its low 32 bits); narrower or misaligned ones
 *     are ignored; writes to read-only registers are ignored;
 *   - IOREGSEL takes its low byte from any access size at offset 0; IOWIN
 *     writes need 4 bytes or more.
 * 8-byte accesses are SSE2 MOVQ (the only 8-byte data move in 32-bit
 * mode). Prints "odd: ok <what>" or "odd: FAIL <what> got <n> want <n>"
 * for each, then "odd: done" and powers off. */
        .include "pvh.inc"

        .set LAPIC,    0xFEE00000
        .set IOAPIC,   0xFEC00000
        .set IOREGSEL, IOAPIC
        .set IOWIN,    IOAPIC + 0x10

/* CHECK what: compares %eax (got) with %edx (want). */
.macro CHECK what
        movl    $9f, %esi
        call    check
        .pushsection .rodata
9:      .asciz  "\what"
        .popsection
.endm

/* Q2EDXEAX: %xmm0's low quadword into %edx:%eax. */
.macro Q2EDXEAX
        movd    %xmm0, %eax
        psrlq   $32, %xmm0
        movd    %xmm0, %edx
.endm

/* QSET lo, hi: %xmm0 = hi:lo. */
.macro QSET lo, hi
        movl    $\lo, qtmp
        movl    $\hi, qtmp + 4
        movq    qtmp, %xmm0
.endm

        .text
_start:
        ENTER
        /* SSE on: CR0.EM off, MP on; CR4.OSFXSR. */
        movl    %cr0, %eax
        andl    $~(1 << 2), %eax
        orl     $(1 << 1), %eax
        movl    %eax, %cr0
        movl    %cr4, %eax
        orl     $(1 << 9), %eax
        movl    %eax, %cr4

        /* ---- local APIC reads: the version register at 0x30. */
        movl    LAPIC + 0x30, %eax
        movl    %eax, ver
        cmpl    $0xFFFFFFFF, %eax
        je      1f
        testl   %eax, %eax
        jz      1f
        movl    $.Lok_ver, %esi
        call    puts
        jmp     2f
1:      movl    $.Lbad_ver, %esi
        call    puts
2:
        movzbl  LAPIC + 0x30, %eax
        movzbl  ver, %edx
        CHECK   "lapic 1-byte read"
        movzwl  LAPIC + 0x30, %eax
        movzwl  ver, %edx
        CHECK   "lapic 2-byte read"
        movzbl  LAPIC + 0x32, %eax
        movzbl  ver + 2, %edx
        CHECK   "lapic 1-byte read at +2"
        movl    LAPIC + 0x31, %eax
        movl    ver, %edx
        shrl    $8, %edx
        CHECK   "lapic misaligned 4-byte read"
        movq    LAPIC + 0x30, %xmm0
        Q2EDXEAX
        movl    %edx, hi
        movl    ver, %edx
        CHECK   "lapic 8-byte read low half"
        movl    hi, %eax
        xorl    %edx, %edx
        CHECK   "lapic 8-byte read high half"
        movl    LAPIC + 0xFFE, %eax
        xorl    %edx, %edx
        CHECK   "lapic read straddling the page end"
        movl    LAPIC + 0x34, %eax
        xorl    %edx, %edx
        CHECK   "lapic read between registers"

        /* ---- local APIC writes: TPR (0x80). */
        movl    $0x20, LAPIC + 0x80
        movl    LAPIC + 0x80, %eax
        movl    $0x20, %edx
        CHECK   "lapic 4-byte TPR write"
        movb    $0x50, LAPIC + 0x80
        movl    LAPIC + 0x80, %eax
        movl    $0x20, %edx
        CHECK   "lapic 1-byte TPR write ignored"
        movw    $0x50, LAPIC + 0x80
        movl    LAPIC + 0x80, %eax
        movl    $0x20, %edx
        CHECK   "lapic 2-byte TPR write ignored"
        movl    $0x50, LAPIC + 0x81
        movl    LAPIC + 0x80, %eax
        movl    $0x20, %edx
        CHECK   "lapic misaligned TPR write ignored"
        movb    $0x50, LAPIC + 0x83
        movl    LAPIC + 0x80, %eax
        movl    $0x20, %edx
        CHECK   "lapic 1-byte write at TPR+3 ignored"
        QSET    0x30, 0xDEADBEEF
        movq    %xmm0, LAPIC + 0x80
        movl    LAPIC + 0x80, %eax
        movl    $0x30, %edx
        CHECK   "lapic 8-byte TPR write takes the low half"
        movl    $0, LAPIC + 0x80
        /* Read-only version: a write changes nothing. */
        movl    $0x12345678, LAPIC + 0x30
        movl    LAPIC + 0x30, %eax
        movl    ver, %edx
        CHECK   "lapic version write ignored"
        /* A 1-byte ICR write sends nothing and leaves ICR as it was. */
        movl    LAPIC + 0x300, %eax
        movl    %eax, icr
        movb    $0x41, LAPIC + 0x300
        movw    $0x4041, LAPIC + 0x300
        movl    LAPIC + 0x300, %eax
        movl    icr, %edx
        CHECK   "lapic narrow ICR writes ignored"
        /* Narrow EOI and self-IPI-offset writes: nothing to see, must
         * not crash. */
        movb    $0, LAPIC + 0xB0
        movw    $0, LAPIC + 0xB2
        movl    $0x41, LAPIC + 0x3F0
        movl    LAPIC + 0x3F0, %eax
        xorl    %edx, %edx
        CHECK   "lapic self-IPI offset reads 0"
        QSET    0, 0
        movq    %xmm0, LAPIC + 0xFFC
        movl    LAPIC + 0x80, %eax
        xorl    %edx, %edx
        CHECK   "lapic 8-byte write at the page end"

        /* ---- I/O APIC: the version register (index 1). */
        movb    $1, IOREGSEL
        movl    IOREGSEL, %eax
        movl    $1, %edx
        CHECK   "ioapic 1-byte IOREGSEL write"
        movl    IOWIN, %eax
        movl    %eax, iover
        movzbl  %al, %eax
        movl    $0x11, %edx
        CHECK   "ioapic version (4-byte read)"
        movzbl  IOWIN, %eax
        movzbl  iover, %edx
        CHECK   "ioapic 1-byte IOWIN read"
        movzwl  IOWIN, %eax
        movzwl  iover, %edx
        CHECK   "ioapic 2-byte IOWIN read"
        movq    IOWIN, %xmm0
        Q2EDXEAX
        movl    %edx, hi
        movl    iover, %edx
        CHECK   "ioapic 8-byte IOWIN read low half"
        movl    hi, %eax
        xorl    %edx, %edx
        CHECK   "ioapic 8-byte IOWIN read high half"
        movl    IOWIN + 1, %eax
        xorl    %edx, %edx
        CHECK   "ioapic misaligned IOWIN read"
        movl    IOAPIC + 0x20, %eax
        xorl    %edx, %edx
        CHECK   "ioapic read beyond IOWIN"
        movl    IOAPIC + 0xFFE, %eax
        xorl    %edx, %edx
        CHECK   "ioapic read straddling the page end"
        movb    $0x10, IOREGSEL + 1
        movl    IOREGSEL, %eax
        movl    $1, %edx
        CHECK   "ioapic write at IOREGSEL+1 ignored"
        QSET    0x10, 0xFFFFFFFF
        movq    %xmm0, IOREGSEL
        movzbl  IOREGSEL, %eax
        movl    $0x10, %edx
        CHECK   "ioapic 8-byte IOREGSEL write takes the low byte"
        /* Redirection entry 0, low half (index 0x10, selected above). */
        movl    IOWIN, %eax
        movl    %eax, rte
        movw    $0x0031, IOWIN
        movl    IOWIN, %eax
        movl    rte, %edx
        CHECK   "ioapic 2-byte IOWIN write ignored"
        movb    $0x31, IOWIN
        movl    IOWIN, %eax
        movl    rte, %edx
        CHECK   "ioapic 1-byte IOWIN write ignored"
        movl    $0x00010031, IOWIN + 2
        movl    IOWIN, %eax
        movl    rte, %edx
        CHECK   "ioapic misaligned IOWIN write ignored"
        QSET    0x00010031, 0xDEADBEEF
        movq    %xmm0, IOWIN
        movl    IOWIN, %eax
        movl    $0x00010031, %edx
        CHECK   "ioapic 8-byte IOWIN write takes the low half"
        movl    rte, %eax
        movl    %eax, IOWIN
        movl    IOWIN, %eax
        movl    rte, %edx
        CHECK   "ioapic redirection entry restored"

        movl    $.Ldone, %esi
        call    puts
        jmp     poweroff

/* check: "odd: ok <what>" when %eax == %edx, else
 * "odd: FAIL <what> got <eax> want <edx>"; %esi names it. */
check:
        pushal
        cmpl    %edx, %eax
        jne     1f
        pushl   %esi
        movl    $.Lok, %esi
        call    puts
        popl    %esi
        call    puts
        movb    $'\n', %al
        call    putc
        popal
        ret
1:      pushl   %esi
        movl    $.Lfail, %esi
        call    puts
        popl    %esi
        call    puts
        movl    $.Lgot, %esi
        call    puts
        call    putdec
        movl    $.Lwant, %esi
        call    puts
        movl    %edx, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        popal
        ret

        .section .rodata
.Lok:     .asciz "odd: ok "
.Lfail:   .asciz "odd: FAIL "
.Lgot:    .asciz " got "
.Lwant:   .asciz " want "
.Lok_ver: .asciz "odd: ok lapic version readable\n"
.Lbad_ver: .asciz "odd: FAIL lapic version reads 0 or all ones\n"
.Ldone:   .asciz "odd: done\n"

        .data
        .balign 8
qtmp:   .long 0, 0
ver:    .long 0
iover:  .long 0
hi:     .long 0
icr:    .long 0
rte:    .long 0
