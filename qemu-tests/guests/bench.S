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
 * Except lapic_timer_irq (last): one round of TIMER_ITERS TSC-deadline
 * timer interrupts, <ticks> the sum over them of (the handler's rdtsc -
 * the programmed deadline), nothing subtracted.
 */
        .include "pvh.inc"

        .set ITERS,  1000
        .set ROUNDS, 5
        .set CAL_PM_TICKS, 35795                /* 10 ms of PM timer */

        .set TIMER_ITERS,    1000
        .set TIMER_DELTA,    20000              /* deadline = rdtsc + this */
        .set TIMER_VECTOR,   0xF0
        .set LAPIC_EOI,      0xFEE000B0
        .set LAPIC_SVR,      0xFEE000F0
        .set LAPIC_LVT_TMR,  0xFEE00320
        .set LVT_TSC_DEADLINE, 2 << 17
        .set MSR_TSC_DEADLINE, 0x6E0
        .set CODE_SEL,       0x08
        .set DATA_SEL,       0x10

        .pushsection .data
        .balign 4
t0_lo:   .long 0
t0_hi:   .long 0
best_lo: .long 0
best_hi: .long 0
dl_lo:   .long 0                                /* programmed deadline */
dl_hi:   .long 0
irq_lo:  .long 0                                /* handler's rdtsc */
irq_hi:  .long 0
irq_seen: .long 0
tot_lo:  .long 0
tot_hi:  .long 0
        .balign 8
/* Our own flat GDT, so the IDT gate's selector is one we know. */
gdt:    .quad   0
        .quad   0x00CF9A000000FFFF              /* 0x08: code, 32-bit, flat */
        .quad   0x00CF92000000FFFF              /* 0x10: data, flat */
gdt_end:
gdt_ptr: .word  gdt_end - gdt - 1
        .long   gdt
        .balign 8
/* IDT up to TIMER_VECTOR; every other gate is not present, so a stray
 * exception still ends in a triple fault. */
idt:    .fill   (TIMER_VECTOR + 1) * 8, 1, 0
idt_end:
idt_ptr: .word  idt_end - idt - 1
        .long   idt
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

        call    timer_irq_bench

        movl    $done, %esi
        call    puts
        jmp     poweroff

/* timer_irq_bench: TSC-deadline timer interrupt delivery latency. Loads
 * our GDT and an IDT with timer_isr at TIMER_VECTOR, enables the LAPIC,
 * puts the LVT timer in TSC-deadline mode, then TIMER_ITERS times: arms
 * IA32_TSC_DEADLINE = rdtsc + TIMER_DELTA, halts (sti; hlt) until the
 * handler ran, and adds (handler's rdtsc - deadline) to the total. */
timer_irq_bench:
        lgdt    gdt_ptr
        ljmp    $CODE_SEL, $1f
1:      movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        /* 32-bit interrupt gate: offset 15:0 | selector, then offset 31:16
         * | P, DPL 0, type 0xE. */
        movl    $timer_isr, %eax
        movl    %eax, %edx
        andl    $0xFFFF, %eax
        orl     $(CODE_SEL << 16), %eax
        andl    $0xFFFF0000, %edx
        orl     $0x8E00, %edx
        movl    %eax, idt + TIMER_VECTOR * 8
        movl    %edx, idt + TIMER_VECTOR * 8 + 4
        lidt    idt_ptr
        movl    $0x1FF, LAPIC_SVR               /* enable, spurious 0xFF */
        movl    $(LVT_TSC_DEADLINE | TIMER_VECTOR), LAPIC_LVT_TMR
        movl    $0, tot_lo
        movl    $0, tot_hi
        movl    $TIMER_ITERS, %edi
2:      movl    $0, irq_seen
        rdtsc
        addl    $TIMER_DELTA, %eax
        adcl    $0, %edx
        movl    %eax, dl_lo
        movl    %edx, dl_hi
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
3:      sti
        hlt                                     /* sti's shadow covers it */
        cli
        cmpl    $0, irq_seen
        je      3b
        movl    irq_lo, %eax
        movl    irq_hi, %edx
        subl    dl_lo, %eax
        sbbl    dl_hi, %edx
        addl    %eax, tot_lo
        adcl    %edx, tot_hi
        decl    %edi
        jnz     2b
        movl    $(1 << 16), LAPIC_LVT_TMR       /* masked again */
        lidt    null_idt
        movl    $bench_prefix, %esi
        call    puts
        movl    $timer_name, %esi
        call    puts
        movb    $' ', %al
        call    putc
        movl    tot_lo, %eax
        movl    tot_hi, %edx
        call    putdec64
        movb    $' ', %al
        call    putc
        movl    $TIMER_ITERS, %eax
        call    putdec
        movb    $'\n', %al
        call    putc
        ret

/* timer_isr: records the TSC first, then EOI. */
timer_isr:
        pushl   %eax
        pushl   %edx
        rdtsc
        movl    %eax, irq_lo
        movl    %edx, irq_hi
        movl    $1, irq_seen
        movl    $0, LAPIC_EOI
        popl    %edx
        popl    %eax
        iret

        .section .rodata
timer_name:   .asciz "lapic_timer_irq"
hello:        .asciz "bench: Ferrite exit round trips (rdtsc; use -icount shift=0,sleep=off)\n"
tsc_prefix:   .asciz "BENCH-TSC "
bench_prefix: .asciz "BENCH "
done:         .asciz "bench done\n"
