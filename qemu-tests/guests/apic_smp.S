/* apic_smp: the local APICs of a 3-vCPU guest, as the Intel SDM vol. 3A
 * ch. 10 and the AMD APM vol. 2 ch. 16 describe them:
 *
 * - logical destinations (10.6.2.2): flat (DFR model 1111b, the LDR a
 *   bitmap) and cluster (0000b: MDA bits 7:4 a cluster, 3:0 its members)
 *   for fixed and lowest-priority IPIs, the all-ones broadcast, and
 *   physical mode for comparison;
 * - an I/O APIC route in logical mode (the RTC's periodic interrupt on
 *   pin 8): fixed to two CPUs, lowest priority to one of them;
 * - the platform's NMI on LINT1 (10.5.1): the guest prints "apic: lint1
 *   ready" and waits for the NMI button (Ferrite: the '<dom>n' key; QEMU:
 *   `nmi` in its monitor), with LINT1 set to NMI on CPU 0, masked on
 *   CPU 1 and fixed-mode (vector 0x52) on CPU 2;
 * - IA32_APIC_BASE.EN on CPU 1 (10.4.3, 10.12.5): cleared, the APIC is
 *   gone (CPUID.1:EDX.APIC clear, IPIs and broadcasts, NMIs too, miss
 *   it; x2APIC MSRs and disabled -> x2APIC raise #GP); set again, it is
 *   back in its power-up state (10.4.7.1) with its ID;
 * - x2APIC mode, where CPUID offers it (10.12.10): the LDR derived from
 *   the x2APIC ID and read-only, cluster destinations, the 32-bit
 *   broadcast, x2APIC -> xAPIC refused, x2APIC -> disabled -> xAPIC.
 *
 * CPU 0 (the BSP) starts the others with INIT and SIPI through a
 * real-mode trampoline at 0x70000; they then spin with IF=1 running the
 * BSP's commands (an MMIO or MSR access, CPUID), a #GP caught. Each
 * interrupt handler counts per CPU (CPUID's initial APIC ID); a delivery
 * check clears the counts, sends, lets every CPU run once more and
 * compares the bitmap of CPUs that took it (bit 8+i: more than once).
 *
 * Prints "apic: PASS <what>" or "apic: FAIL <what>: got <x> want <y>" per
 * check ("(cpu n)" after a lowest-priority one: who got it), then
 * "apic: done <n> checks", and powers off. */
        .include "pvh.inc"

        .set LAPIC,         0xFEE00000
        .set ID,            0x20
        .set TPR,           0x80
        .set EOI,           0xB0
        .set LDR,           0xD0
        .set DFR,           0xE0
        .set SVR,           0xF0
        .set ICR_LO,        0x300
        .set ICR_HI,        0x310
        .set LINT0,         0x350
        .set LINT1,         0x360
        .set IOAPIC,        0xFEC00000
        .set X2_ICR,        0x830
        .set X2_EOI,        0x80B
        .set X2_LDR,        0x80D
        .set X2_SVR,        0x80F
        .set X2_ID,         0x802
        .set VEC_IPI,       0x50
        .set VEC_RTC,       0x51
        .set VEC_LINT1,     0x52
        .set TRAMPOLINE,    0x70000
        .set LOGICAL,       1 << 11
        .set LOWPRI,        1 << 8
        .set NMI_MODE,      4 << 8
        .set MASKED,        1 << 16
        .set MS,            3580        /* PM timer ticks */
        /* Commands (`cmd_kind`) */
        .set NOP,           0
        .set MMIO_W,        1
        .set MMIO_R,        2
        .set WRMSR,         3
        .set RDMSR,         4
        .set CPUID_EDX,     5

/* ON cpu, kind, a, v: runs a command on CPU `cpu` (0: here) and waits for
 * it; %eax its result, %edx 1 if it raised #GP. */
.macro ON cpu, kind, a=0, v=0
        pushl   $\v
        pushl   $\a
        pushl   $\kind
        pushl   $\cpu
        call    on_cpu
        addl    $16, %esp
.endm

/* CHECK want, what: %eax must equal `want`. */
.macro CHECK want, what
        .pushsection .rodata
7:      .asciz  "\what"
        .popsection
        movl    $\want, %edx
        movl    $7b, %esi
        call    check_eq
.endm

/* CHECK_ONE allowed, what: the delivery bitmap in %eax names exactly one
 * CPU, one of the `allowed` bitmap. */
.macro CHECK_ONE allowed, what
        .pushsection .rodata
7:      .asciz  "\what"
        .popsection
        movl    $\allowed, %edx
        movl    $7b, %esi
        call    check_one
.endm

/* SEND icr_low, dest: sends an IPI from CPU 0 (xAPIC or x2APIC as
 * `x2mode` says) and returns the bitmap of CPUs that took VEC_IPI. */
.macro SEND icr_low, dest
        movl    $\icr_low, %eax
        movl    $\dest, %edx
        call    ipi_test
.endm

/* ALL kind, a, v: the same command on the three CPUs. */
.macro ALL kind, a, v
        ON      0, \kind, \a, \v
        ON      1, \kind, \a, \v
        ON      2, \kind, \a, \v
.endm

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    2, nmi_isr
        GATE    13, gp_isr
        GATE    VEC_IPI, ipi_isr
        GATE    VEC_RTC, rtc_isr
        GATE    VEC_LINT1, lint_isr
        /* Nothing from the 8259 (QEMU alone: SeaBIOS leaves it on). */
        movb    $0xFF, %al
        outb    %al, $0x21
        outb    %al, $0xA1
        movl    $MASKED, LAPIC + LINT0
        movl    $0x1FF, LAPIC + SVR
        call    start_aps

        /* ---- flat model: CPU i has logical ID bit i ---- */
        ON      0, MMIO_W, LAPIC + LDR, 0x01000000
        ON      1, MMIO_W, LAPIC + LDR, 0x02000000
        ON      2, MMIO_W, LAPIC + LDR, 0x04000000
        sti
        SEND    VEC_IPI, 1
        CHECK   0b010, "physical: destination 1 reaches CPU 1 only"
        SEND    LOGICAL | VEC_IPI, 0x04
        CHECK   0b100, "flat: 0x04 reaches CPU 2 only"
        SEND    LOGICAL | VEC_IPI, 0x06
        CHECK   0b110, "flat: 0x06 reaches CPUs 1 and 2"
        SEND    LOGICAL | VEC_IPI, 0x03
        CHECK   0b011, "flat: 0x03 reaches CPUs 0 (itself) and 1"
        SEND    LOGICAL | VEC_IPI, 0xFF
        CHECK   0b111, "flat: 0xFF reaches all"
        SEND    LOGICAL | VEC_IPI, 0x08
        CHECK   0, "flat: 0x08 reaches none"
        SEND    LOGICAL | LOWPRI | VEC_IPI, 0x06
        CHECK_ONE 0b110, "flat: lowest priority to 0x06 reaches one of CPUs 1 and 2"
        ON      1, MMIO_W, LAPIC + TPR, 0x40
        SEND    LOGICAL | LOWPRI | VEC_IPI, 0x06
        CHECK_ONE 0b110, "flat: lowest priority to 0x06 with CPU 1 at TPR 0x40 reaches one of CPUs 1 and 2"
        ON      1, MMIO_W, LAPIC + TPR, 0

        /* ---- cluster model: CPUs 0, 1 in cluster 1, CPU 2 in cluster 2 ---- */
        ALL     MMIO_W, LAPIC + DFR, 0x0FFFFFFF
        ON      0, MMIO_W, LAPIC + LDR, 0x11000000
        ON      1, MMIO_W, LAPIC + LDR, 0x12000000
        ON      2, MMIO_W, LAPIC + LDR, 0x21000000
        ON      1, MMIO_R, LAPIC + DFR
        CHECK   0x0FFFFFFF, "cluster: DFR reads model 0000b, the rest ones"
        SEND    LOGICAL | VEC_IPI, 0x13
        CHECK   0b011, "cluster: 0x13 reaches CPUs 0 and 1"
        SEND    LOGICAL | VEC_IPI, 0x12
        CHECK   0b010, "cluster: 0x12 reaches CPU 1 only"
        SEND    LOGICAL | VEC_IPI, 0x23
        CHECK   0b100, "cluster: 0x23 reaches CPU 2 only"
        SEND    LOGICAL | VEC_IPI, 0x31
        CHECK   0, "cluster: 0x31 reaches none"
        SEND    LOGICAL | VEC_IPI, 0xFF
        CHECK   0b111, "cluster: 0xFF reaches all"
        SEND    LOGICAL | LOWPRI | VEC_IPI, 0x13
        CHECK_ONE 0b011, "cluster: lowest priority to 0x13 reaches one of CPUs 0 and 1"

        /* ---- I/O APIC, logical (flat again): the RTC on pin 8 ---- */
        ALL     MMIO_W, LAPIC + DFR, 0xFFFFFFFF
        ON      0, MMIO_W, LAPIC + LDR, 0x01000000
        ON      1, MMIO_W, LAPIC + LDR, 0x02000000
        ON      2, MMIO_W, LAPIC + LDR, 0x04000000
        movl    $LOGICAL | VEC_RTC, %eax
        movl    $0x06, %edx
        call    rtc_test
        CHECK   0b110, "ioapic: RTC routed fixed to logical 0x06 reaches CPUs 1 and 2"
        movl    $LOGICAL | LOWPRI | VEC_RTC, %eax
        movl    $0x06, %edx
        call    rtc_test
        CHECK_ONE 0b110, "ioapic: RTC routed lowest priority to logical 0x06 reaches one of CPUs 1 and 2"

        /* ---- the NMI button on LINT1 ---- */
        ON      0, MMIO_W, LAPIC + LINT1, NMI_MODE
        ON      1, MMIO_W, LAPIC + LINT1, MASKED | NMI_MODE
        ON      2, MMIO_W, LAPIC + LINT1, VEC_LINT1
        call    lint1_test

        /* ---- IA32_APIC_BASE.EN on CPU 1 ---- */
        call    enable_test

        /* ---- x2APIC ---- */
        movl    $1, %eax
        cpuid
        btl     $21, %ecx
        jc      1f
        movl    $msg_skip_x2, %esi
        call    puts
        jmp     done
1:      call    x2apic_test
done:   cli
        movl    $msg_done, %esi
        call    puts
        movl    nchecks, %eax
        call    putdec
        movl    $msg_checks, %esi
        call    puts
        jmp     poweroff

/* ---------------------------------------------------------------- */

/* lint1_test: waits (30 s at most) for the NMI button, then checks who
 * got what. */
lint1_test:
        movl    $0, nmi_hits
        movl    $0, nmi_hits + 4
        movl    $0, nmi_hits + 8
        movl    $0, lint_hits
        movl    $0, lint_hits + 4
        movl    $0, lint_hits + 8
        movl    $msg_ready, %esi
        call    puts
        movl    $30000, %ecx
1:      cmpl    $0, nmi_hits
        jne     2f
        movl    $MS, %eax
        call    pm_wait
        loop    1b
2:      call    sync
        movl    $nmi_hits, %esi
        call    bitmap
        CHECK   0b001, "lint1: the NMI button is an NMI on CPU 0 (NMI), none on CPU 1 (masked)"
        movl    $lint_hits, %esi
        call    bitmap
        CHECK   0b100, "lint1: CPU 2 (fixed mode) takes LINT1's vector"
        ret

/* enable_test: IA32_APIC_BASE.EN cleared and set again on CPU 1. */
enable_test:
        ON      1, MMIO_W, LAPIC + TPR, 0x20
        ON      1, CPUID_EDX, 1
        andl    $1 << 9, %eax
        CHECK   1 << 9, "en: CPUID.1:EDX.APIC set while enabled"
        ON      1, WRMSR, MSR_APIC_BASE, 0xFEE00000
        movl    %edx, %eax
        CHECK   0, "en: EN cleared (xAPIC to disabled) is taken"
        ON      1, RDMSR, MSR_APIC_BASE
        CHECK   0xFEE00000, "en: IA32_APIC_BASE reads EN clear"
        ON      1, CPUID_EDX, 1
        andl    $1 << 9, %eax
        CHECK   0, "en: CPUID.1:EDX.APIC clear while disabled"
        SEND    VEC_IPI, 1
        CHECK   0, "en: a fixed IPI to it is not received"
        SEND    (3 << 18) | VEC_IPI, 0
        CHECK   0b100, "en: a broadcast (all but self) misses it"
        movl    $0, nmi_hits
        movl    $0, nmi_hits + 4
        movl    $0, nmi_hits + 8
        movl    $0, LAPIC + ICR_HI
        movl    $(3 << 18) | NMI_MODE, LAPIC + ICR_LO
        call    sync
        movl    $nmi_hits, %esi
        call    bitmap
        CHECK   0b100, "en: an NMI broadcast (all but self) misses it"
        ON      1, RDMSR, X2_ID
        movl    %edx, %eax
        CHECK   1, "en: x2APIC MSRs raise #GP while disabled"
        ON      1, WRMSR, MSR_APIC_BASE, 0xFEE00C00
        movl    %edx, %eax
        CHECK   1, "en: disabled to x2APIC raises #GP"
        /* The page read while disabled: what it shows is the platform's
         * business (nothing decodes it); it must not fault. */
        ON      1, MMIO_R, LAPIC + ID
        movl    %eax, %ebx
        movl    $msg_page, %esi
        call    puts
        movl    %ebx, %eax
        call    puthex
        movl    $msg_nl, %esi
        call    puts
        ON      1, WRMSR, MSR_APIC_BASE, 0xFEE00800
        movl    %edx, %eax
        CHECK   0, "en: EN set again (disabled to xAPIC) is taken"
        ON      1, RDMSR, MSR_APIC_BASE
        CHECK   0xFEE00800, "en: IA32_APIC_BASE reads EN set"
        ON      1, CPUID_EDX, 1
        andl    $1 << 9, %eax
        CHECK   1 << 9, "en: CPUID.1:EDX.APIC set again"
        ON      1, MMIO_R, LAPIC + ID
        CHECK   0x01000000, "en: re-enabled, its ID is kept"
        ON      1, MMIO_R, LAPIC + SVR
        CHECK   0xFF, "en: re-enabled, SVR is 0xFF (software-disabled)"
        ON      1, MMIO_R, LAPIC + TPR
        CHECK   0, "en: re-enabled, TPR is 0"
        ON      1, MMIO_R, LAPIC + LDR
        CHECK   0, "en: re-enabled, LDR is 0"
        ON      1, MMIO_R, LAPIC + LINT1
        CHECK   MASKED, "en: re-enabled, LVT LINT1 is masked and clear"
        ON      1, MMIO_W, LAPIC + SVR, 0x1FF
        SEND    VEC_IPI, 1
        CHECK   0b010, "en: software-enabled again, it takes a fixed IPI"
        ret

/* x2apic_test: every CPU to x2APIC mode, then its logical destinations
 * and the ways out of it. */
x2apic_test:
        ON      0, WRMSR, MSR_APIC_BASE, 0xFEE00D00
        ON      1, WRMSR, MSR_APIC_BASE, 0xFEE00C00
        ON      2, WRMSR, MSR_APIC_BASE, 0xFEE00C00
        ALL     WRMSR, X2_SVR, 0x1FF
        movl    $1, x2mode
        ON      0, RDMSR, X2_LDR
        CHECK   0x00000001, "x2apic: LDR of CPU 0 is cluster 0, bit 0"
        ON      1, RDMSR, X2_LDR
        CHECK   0x00000002, "x2apic: LDR of CPU 1 is cluster 0, bit 1"
        ON      2, RDMSR, X2_LDR
        CHECK   0x00000004, "x2apic: LDR of CPU 2 is cluster 0, bit 2"
        ON      0, WRMSR, X2_LDR, 0x00010001
        movl    %edx, %eax
        CHECK   1, "x2apic: writing the LDR raises #GP"
        SEND    LOGICAL | VEC_IPI, 0x00000006
        CHECK   0b110, "x2apic: logical 0x00000006 reaches CPUs 1 and 2"
        SEND    LOGICAL | VEC_IPI, 0x00000001
        CHECK   0b001, "x2apic: logical 0x00000001 reaches CPU 0 (itself) only"
        SEND    LOGICAL | VEC_IPI, 0x00010007
        CHECK   0, "x2apic: logical 0x00010007 (cluster 1) reaches none"
        SEND    LOGICAL | VEC_IPI, 0xFFFFFFFF
        CHECK   0b111, "x2apic: logical 0xFFFFFFFF reaches all"
        SEND    LOGICAL | LOWPRI | VEC_IPI, 0x00000006
        CHECK_ONE 0b110, "x2apic: lowest priority to 0x00000006 reaches one of CPUs 1 and 2"
        ON      2, WRMSR, MSR_APIC_BASE, 0xFEE00800
        movl    %edx, %eax
        CHECK   1, "x2apic: to xAPIC directly raises #GP"
        ON      2, WRMSR, MSR_APIC_BASE, 0xFEE00000
        movl    %edx, %eax
        CHECK   0, "x2apic: to disabled is taken"
        ON      2, WRMSR, MSR_APIC_BASE, 0xFEE00800
        movl    %edx, %eax
        CHECK   0, "x2apic: then to xAPIC is taken"
        ON      2, MMIO_R, LAPIC + ID
        CHECK   0x02000000, "x2apic: back in xAPIC mode, the ID reads 2"
        ON      2, MMIO_R, LAPIC + LDR
        CHECK   0, "x2apic: back in xAPIC mode, the LDR is 0"
        ret

/* ---------------------------------------------------------------- */

/* ipi_test: %eax ICR low, %edx destination; sends from CPU 0 and returns
 * the bitmap of CPUs that took VEC_IPI. */
ipi_test:
        movl    $0, hits
        movl    $0, hits + 4
        movl    $0, hits + 8
        cmpl    $0, x2mode
        jne     1f
        shll    $24, %edx
        movl    %edx, LAPIC + ICR_HI
        movl    %eax, LAPIC + ICR_LO
        jmp     2f
1:      movl    $X2_ICR, %ecx
        wrmsr
2:      call    sync
        movl    $hits, %esi
        jmp     bitmap

/* rtc_test: %eax the low half of I/O APIC pin 8's entry (edge, high),
 * %edx its destination; one RTC periodic interrupt goes through it (the
 * handler turns the RTC's interrupt off). Returns the bitmap of CPUs that
 * took VEC_RTC. */
rtc_test:
        pushl   %eax
        movl    $0, rtc_hits
        movl    $0, rtc_hits + 4
        movl    $0, rtc_hits + 8
        movl    $0x21, IOAPIC           /* IOREGSEL: pin 8, high half */
        shll    $24, %edx
        movl    %edx, IOAPIC + 0x10
        movl    $0x20, IOAPIC           /* low half, unmasked */
        popl    %eax
        movl    %eax, IOAPIC + 0x10
        movb    $0x0C, %al              /* C: clear pending flags */
        outb    %al, $0x70
        inb     $0x71, %al
        movb    $0x0A, %al              /* A: 32.768 kHz base, 64 Hz */
        outb    %al, $0x70
        movb    $0x2A, %al
        outb    %al, $0x71
        movb    $0x0B, %al              /* B: periodic interrupts on */
        outb    %al, $0x70
        inb     $0x71, %al
        orb     $0x40, %al
        movb    %al, %ah
        movb    $0x0B, %al
        outb    %al, $0x70
        movb    %ah, %al
        outb    %al, $0x71
        movl    $2000, %ecx             /* up to 2 s */
1:      movl    rtc_hits, %eax
        orl     rtc_hits + 4, %eax
        orl     rtc_hits + 8, %eax
        jnz     2f
        movl    $MS, %eax
        call    pm_wait
        loop    1b
2:      call    sync
        movl    $20 * MS, %eax
        call    pm_wait
        movl    $0x20, IOAPIC
        movl    $MASKED, IOAPIC + 0x10
        call    rtc_off
        movl    $rtc_hits, %esi
        jmp     bitmap

/* rtc_off: periodic interrupts off, flags cleared (the line drops).
 * Under a lock: two CPUs' index/data pairs must not interleave. */
rtc_off:
        pushl   %eax
1:      lock btsl $0, rtc_lock
        jnc     2f
        pause
        jmp     1b
2:
        movb    $0x0B, %al
        outb    %al, $0x70
        inb     $0x71, %al
        andb    $~0x40, %al
        movb    %al, %ah
        movb    $0x0B, %al
        outb    %al, $0x70
        movb    %ah, %al
        outb    %al, $0x71
        movb    $0x0C, %al
        outb    %al, $0x70
        inb     $0x71, %al
        movl    $0, rtc_lock
        popl    %eax
        ret

/* sync: every AP runs one more command (anything sent to it before is
 * taken by then: it spins with IF=1), and 2 ms pass for CPU 0. */
sync:
        ON      1, NOP
        ON      2, NOP
        movl    $2 * MS, %eax
        jmp     pm_wait

/* bitmap: %esi the three counters; %eax bit i if CPU i's is not 0, bit
 * 8+i if it is above 1. */
bitmap:
        pushl   %ecx
        xorl    %eax, %eax
        xorl    %ecx, %ecx
1:      cmpl    $0, (%esi,%ecx,4)
        je      2f
        btsl    %ecx, %eax
        cmpl    $1, (%esi,%ecx,4)
        je      2f
        addl    $8, %ecx
        btsl    %ecx, %eax
        subl    $8, %ecx
2:      incl    %ecx
        cmpl    $3, %ecx
        jb      1b
        popl    %ecx
        ret

/* check_eq: %eax got, %edx want, %esi what. */
check_eq:
        pushal
        incl    nchecks
        cmpl    %edx, %eax
        jne     1f
        movl    %esi, %ebx
        movl    $msg_pass, %esi
        call    puts
        movl    %ebx, %esi
        call    puts
        movl    $msg_nl, %esi
        call    puts
        popal
        ret
1:      call    print_fail
        popal
        ret

/* print_fail: "FAIL <what>: got <eax> want <edx>". */
print_fail:
        movl    %esi, %ebx
        movl    $msg_fail, %esi
        call    puts
        movl    %ebx, %esi
        call    puts
        movl    $msg_got, %esi
        call    puts
        call    puthex
        movl    $msg_want, %esi
        call    puts
        movl    %edx, %eax
        call    puthex
        movl    $msg_nl, %esi
        jmp     puts

/* check_one: %eax a delivery bitmap, %edx the allowed CPUs, %esi what. */
check_one:
        pushal
        incl    nchecks
        movl    %eax, %ecx
        testl   $0xFF00, %ecx           /* someone took it twice */
        jnz     1f
        testl   %ecx, %ecx
        jz      1f
        movl    %edx, %edi
        notl    %edi
        testl   %edi, %ecx              /* someone not allowed */
        jnz     1f
        leal    -1(%ecx), %edi          /* more than one bit */
        testl   %ecx, %edi
        jnz     1f
        movl    %esi, %ebx
        movl    $msg_pass, %esi
        call    puts
        movl    %ebx, %esi
        call    puts
        movl    $msg_cpu, %esi
        call    puts
        bsfl    %ecx, %eax
        call    putdec
        movl    $msg_close, %esi
        call    puts
        popal
        ret
1:      call    print_fail
        popal
        ret

/* puthex: %eax as "0x..." (8 digits). */
puthex:
        pushal
        movl    %eax, %edx
        movb    $'0', %al
        call    putc
        movb    $'x', %al
        call    putc
        movl    $8, %ecx
1:      roll    $4, %edx
        movb    %dl, %al
        andb    $0xF, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     2f
        addb    $'a' - '0' - 10, %al
2:      call    putc
        loop    1b
        popal
        ret

/* on_cpu(cpu, kind, a, v) on the stack: see ON. */
on_cpu:
        pushl   %ebp
        pushl   %ecx
        movl    12(%esp), %ebp
        movl    16(%esp), %eax
        movl    %eax, cmd_kind(,%ebp,4)
        movl    20(%esp), %eax
        movl    %eax, cmd_a(,%ebp,4)
        movl    24(%esp), %eax
        movl    %eax, cmd_v(,%ebp,4)
        testl   %ebp, %ebp
        jnz     1f
        call    exec_cmd
        jmp     3f
1:      incl    cmd_seq(,%ebp,4)
        movl    cmd_seq(,%ebp,4), %eax
        movl    $5000, %ecx             /* 5 s */
2:      cmpl    %eax, cmd_done(,%ebp,4)
        je      3f
        pushl   %eax
        movl    $MS, %eax
        call    pm_wait
        popl    %eax
        loop    2b
        movl    %ebp, %eax
        movl    $msg_no_answer, %esi
        jmp     fatal
3:      movl    cmd_r(,%ebp,4), %eax
        movl    cmd_gp(,%ebp,4), %edx
        popl    %ecx
        popl    %ebp
        ret

/* exec_cmd: runs the command in slot %ebp on this CPU; a #GP it raises
 * is caught (cmd_gp). Keeps every register. */
exec_cmd:
        pushal
        movl    $0, cmd_gp(,%ebp,4)
        movl    $8f, gp_resume(,%ebp,4)
        movl    cmd_a(,%ebp,4), %esi
        movl    cmd_v(,%ebp,4), %edi
        movl    cmd_kind(,%ebp,4), %eax
        cmpl    $MMIO_W, %eax
        je      1f
        cmpl    $MMIO_R, %eax
        je      2f
        cmpl    $WRMSR, %eax
        je      3f
        cmpl    $RDMSR, %eax
        je      4f
        cmpl    $CPUID_EDX, %eax
        je      5f
        jmp     8f
1:      movl    %edi, (%esi)
        jmp     8f
2:      movl    (%esi), %eax
        movl    %eax, cmd_r(,%ebp,4)
        jmp     8f
3:      movl    %esi, %ecx
        movl    %edi, %eax
        xorl    %edx, %edx
        wrmsr
        jmp     8f
4:      movl    %esi, %ecx
        rdmsr
        movl    %eax, cmd_r(,%ebp,4)
        jmp     8f
5:      movl    %esi, %eax
        xorl    %ecx, %ecx
        cpuid
        movl    %edx, cmd_r(,%ebp,4)
8:      popal
        ret

/* fatal: "apic: FAIL <%esi> <%eax>", then the count, and off. */
fatal:
        cli
        pushl   %eax
        pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        popl    %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        jmp     done

/* start_aps: INIT, SIPI, SIPI to all but itself; waits for both APs. */
start_aps:
        movl    $tramp_start, %esi
        movl    $TRAMPOLINE, %edi
        movl    $tramp_end - tramp_start, %ecx
        rep movsb
        movl    $0, LAPIC + ICR_HI
        movl    $0x000C4500, LAPIC + ICR_LO     /* INIT, assert */
        movl    $10 * MS, %eax
        call    pm_wait
        movl    $0x000C4600 | (TRAMPOLINE >> 12), LAPIC + ICR_LO
        movl    $MS, %eax
        call    pm_wait
        movl    $0x000C4600 | (TRAMPOLINE >> 12), LAPIC + ICR_LO
        movl    $5000, %ecx
1:      cmpl    $2, ap_ready
        je      2f
        movl    $MS, %eax
        call    pm_wait
        loop    1b
        movl    ap_ready, %eax
        movl    $msg_no_aps, %esi
        jmp     fatal
2:      ret

/* The AP's way from real mode to `ap_entry`, copied to TRAMPOLINE (the
 * SIPI starts it at CS = TRAMPOLINE >> 4, IP = 0). */
        .code16
tramp_start:
        cli
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   tramp_gdt_ptr - tramp_start
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $ap_entry
tramp_gdt_ptr:
        .word   3 * 8 - 1
        .long   flat_gdt
tramp_end:
        .code32

ap_entry:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $1, %eax
        cpuid
        shrl    $24, %ebx
        movl    %ebx, %ebp              /* its index (= APIC ID) */
        movl    %ebx, %esp
        shll    $12, %esp
        addl    $ap_stacks, %esp        /* the top of stack `index - 1` */
        lidt    flat_idt_ptr
        movl    $MASKED, LAPIC + LINT0
        movl    $0x1FF, LAPIC + SVR
        lock incl ap_ready
        sti
1:      movl    cmd_seq(,%ebp,4), %eax
        cmpl    %eax, cmd_done(,%ebp,4)
        jne     2f
        pause
        jmp     1b
2:      call    exec_cmd
        movl    %eax, cmd_done(,%ebp,4)
        jmp     1b

/* ---------------------------------------------------------------- */

/* cpu_index: %ebx = this CPU's initial APIC ID (CPUID.1:EBX[31:24]). */
.macro CPU_INDEX
        movl    $1, %eax
        cpuid
        shrl    $24, %ebx
.endm

/* eoi: an EOI in the current mode. */
eoi:
        cmpl    $0, x2mode
        jne     1f
        movl    $0, LAPIC + EOI
        ret
1:      movl    $X2_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        ret

ipi_isr:
        pushal
        CPU_INDEX
        incl    hits(,%ebx,4)
        call    eoi
        popal
        iret

lint_isr:
        pushal
        CPU_INDEX
        incl    lint_hits(,%ebx,4)
        call    eoi
        popal
        iret

/* The RTC's interrupt: counted, then the RTC's interrupts off, so one
 * periodic interrupt makes one message. */
rtc_isr:
        pushal
        CPU_INDEX
        incl    rtc_hits(,%ebx,4)
        call    rtc_off
        call    eoi
        popal
        iret

nmi_isr:
        pushal
        CPU_INDEX
        incl    nmi_hits(,%ebx,4)
        popal
        iret

/* #GP in a command: resume at the command's end (gp_resume). */
gp_isr:
        pushal
        CPU_INDEX
        movl    $1, cmd_gp(,%ebx,4)
        movl    gp_resume(,%ebx,4), %eax
        movl    %eax, 36(%esp)          /* the saved EIP, past the error code */
        popal
        addl    $4, %esp
        iret

        .section .rodata
msg_pass:       .asciz "apic: PASS "
msg_fail:       .asciz "apic: FAIL "
msg_got:        .asciz ": got "
msg_want:       .asciz " want "
msg_cpu:        .asciz " (cpu "
msg_close:      .asciz ")\n"
msg_nl:         .asciz "\n"
msg_done:       .asciz "apic: done "
msg_checks:     .asciz " checks\n"
msg_ready:      .asciz "apic: lint1 ready\n"
msg_page:       .asciz "apic: info the disabled APIC's ID register reads "
msg_skip_x2:    .asciz "apic: skip x2APIC (not in CPUID)\n"
msg_no_answer:  .asciz "no answer from CPU "
msg_no_aps:     .asciz "APs started: "

        .data
        .balign 4
nchecks:    .long 0
x2mode:     .long 0
ap_ready:   .long 0
rtc_lock:   .long 0
hits:       .long 0, 0, 0
rtc_hits:   .long 0, 0, 0
lint_hits:  .long 0, 0, 0
nmi_hits:   .long 0, 0, 0
/* The command mailboxes, one per CPU (CPU 0's is run in place). */
cmd_seq:    .long 0, 0, 0
cmd_done:   .long 0, 0, 0
cmd_kind:   .long 0, 0, 0
cmd_a:      .long 0, 0, 0
cmd_v:      .long 0, 0, 0
cmd_r:      .long 0, 0, 0
cmd_gp:     .long 0, 0, 0
gp_resume:  .long 0, 0, 0
        .balign 16
ap_stacks:  .fill 2 * 4096, 1, 0
