/* bench: round-trip costs of the exits a PVH guest takes most, measured
 * with rdtsc (not intercepted by Ferrite). Run it under QEMU with
 * `-icount shift=0,sleep=off`: every guest-visible tick is then one
 * executed instruction of the emulated machine (guest + hypervisor + the
 * SVM world switch), and the numbers repeat exactly run after run.
 *
 * Prints, then powers off:
 *   BENCH-TSC <tsc ticks> <pm timer ticks>      TSC against the PM timer
 *   BENCH <name> <ticks> <iterations>           best of ROUNDS rounds
 * where <ticks> covers all <iterations> of one round, loop included.
 */
        .include "pvh.inc"

        .set ITERS,  1000
        .set ROUNDS, 5
        .set CAL_PM_TICKS, 35795                /* 10 ms of PM timer */

        .pushsection .data
        .balign 4
t0_lo:   .long 0
t0_hi:   .long 0
best_lo: .long 0
best_hi: .long 0
        .popsection

/* Register set-up done once per round, after the first rdtsc (which
 * clobbers %edx), so it is outside the measured loop body. */
.macro SETUP_NONE
.endm
.macro SETUP_PM_TMR
        movw    $PM_TMR, %dx
.endm
.macro SETUP_LSR
        movw    $COM1_LSR, %dx
.endm
.macro SETUP_LAPIC
        movl    $0xFEE00030, %ebx               /* LAPIC version register */
.endm

/* Loop bodies of more than one instruction (a `;` would end the MEASURE
 * line itself). */
.macro CPUID_HV_LEAF
        movl    $0x40000000, %eax
        cpuid
.endm

/* MEASURE name, setup, insn...: ROUNDS rounds of ITERS executions of insn
 * (plus `dec %edi; jnz`), keeps the smallest round and prints it. The body
 * may clobber %eax, %ebx, %ecx, %edx (cpuid does) but not %edi or %ebp. */
.macro MEASURE name, setup, insn:vararg
        movl    $0xFFFFFFFF, best_lo
        movl    $0xFFFFFFFF, best_hi
        movl    $ROUNDS, %ebp
90:     rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        \setup
        movl    $ITERS, %edi
91:     \insn
        decl    %edi
        jnz     91b
        rdtsc
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        cmpl    best_hi, %edx
        ja      92f
        jb      93f
        cmpl    best_lo, %eax
        jae     92f
93:     movl    %eax, best_lo
        movl    %edx, best_hi
92:     decl    %ebp
        jnz     90b
        movl    $bench_prefix, %esi
        call    puts
        movl    $name_\@, %esi
        call    puts
        movb    $' ', %al
        call    putc
        movl    best_lo, %eax
        movl    best_hi, %edx
        call    putdec64
        movb    $' ', %al
        call    putc
        movl    $ITERS, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        .pushsection .rodata
name_\@: .asciz "\name"
        .popsection
.endm

        .text
_start:
        ENTER
        movl    $hello, %esi
        call    puts

        /* TSC rate: TSC ticks across CAL_PM_TICKS PM timer ticks, starting
         * on a PM timer edge. */
        movw    $PM_TMR, %dx
        inl     %dx, %eax
        movl    %eax, %ebx
1:      inl     %dx, %eax
        cmpl    %eax, %ebx
        je      1b
        movl    %eax, %ebx                      /* PM time at the edge */
        rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movw    $PM_TMR, %dx
2:      inl     %dx, %eax
        subl    %ebx, %eax
        andl    $0xFFFFFF, %eax
        cmpl    $CAL_PM_TICKS, %eax
        jb      2b
        movl    %eax, %ecx                      /* PM ticks elapsed */
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

        MEASURE loop_nop,      SETUP_NONE,   nop
        MEASURE pm_timer_inl,  SETUP_PM_TMR, inl %dx, %eax
        MEASURE uart_lsr_inb,  SETUP_LSR,    inb %dx, %al
        MEASURE cpuid_hv_leaf, SETUP_NONE,   CPUID_HV_LEAF
        MEASURE lapic_mmio_read, SETUP_LAPIC, movl (%ebx), %eax

        movl    $done, %esi
        call    puts
        jmp     poweroff

        .section .rodata
hello:        .asciz "bench: Ferrite exit round trips (rdtsc; use -icount shift=0,sleep=off)\n"
tsc_prefix:   .asciz "BENCH-TSC "
bench_prefix: .asciz "BENCH "
done:         .asciz "bench done\n"
