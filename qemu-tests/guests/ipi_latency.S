/* ipi_latency: how long an IPI takes from the sender's ICR write to the
 * target's handler, for a target that is running (spinning with IF=1)
 * and for one that is halted. A 2-vCPU PVH guest: the boot vCPU starts
 * vCPU 1 (INIT, SIPI to a real-mode trampoline copied to 0x8000), then
 * 50 times (20 for a spinning target, whose rounds can take a slice
 * each) reads the TSC, sends a fixed IPI to vCPU 1 and spins until vCPU
 * 1's handler, which reads the TSC first, has stored its time (as an OS
 * waits for a TLB shootdown's answer: the sender keeps its CPU). Before each halted round the sender sleeps (TSC-deadline timer,
 * halted, so a shared host CPU can run vCPU 1) until vCPU 1 has said it
 * halts, and then 200 us more, so vCPU 1 is blocked when the IPI goes.
 *
 * The halted rounds come first, and vCPU 1 halts until then: a vCPU that
 * has had more of a shared host CPU than the sender waits its turn.
 * vCPU 1 spins with `pause`, as idle and wait loops do (under QEMU's
 * single-threaded TCG, a pause also lets the other emulated CPU run).
 *
 * Prints, then powers off:
 *   BENCH-TSC <tsc ticks> <pm ticks>             TSC against the PM timer
 *   BENCH ipi_halted <sum of ticks> <rounds>
 *   BENCH-MAX ipi_halted <worst ticks>
 *   BENCH-ROUNDS ipi_halted <ticks> ...          every round
 *   (the same three for ipi_running)
 *   ipi: done
 * or "ipi: FAIL <why>". */
        .include "pvh.inc"

        .set X2APIC_ICR,       0x830
        .set X2APIC_LVT_TMR,   0x832
        .set MSR_TSC_DEADLINE, 0x6E0
        .set VEC_TIMER,        0x40
        .set VEC_PING,         0x50             /* to vCPU 1 */
        .set TRAMPOLINE,       0x8000           /* SIPI vector 0x08 */
        .set ROUNDS,           50               /* halted target */
        .set RUNNING_ROUNDS,   20

        .set PHASE_START,      0
        .set PHASE_RUNNING,    1
        .set PHASE_HALTED,     2

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TIMER, timer_isr
        GATE    VEC_PING, ping_isr
        X2APIC_ON
        movl    $X2APIC_LVT_TMR, %ecx
        movl    $(2 << 17) | VEC_TIMER, %eax    /* TSC-deadline mode */
        xorl    %edx, %edx
        wrmsr
        call    calibrate_tsc
        movl    %eax, ticks_per_us
        call    put_bench_tsc

        call    start_ap
        /* Halted target: vCPU 1 halts in a loop. */
        movl    $PHASE_HALTED, phase
        movl    $ROUNDS, %eax
        call    reset_stats
2:      movl    $200, %eax
        call    sleep_us
        cmpl    $0, ap_halting
        je      2b
        movl    $200, %eax
        call    sleep_us
        movl    $0, ap_halting
        call    ping_round
        decl    rounds_left
        jnz     2b
        movl    $msg_halted, %esi
        call    report
        /* Running target: vCPU 1 spins with IF=1 (the first IPI, not
         * counted, wakes it into that loop). */
        movl    $PHASE_RUNNING, phase
        movl    $RUNNING_ROUNDS, %eax
        call    reset_stats
        call    ping_round
        movl    $RUNNING_ROUNDS, %eax
        call    reset_stats
1:      call    ping_round
        decl    rounds_left
        jnz     1b
        movl    $msg_running, %esi
        call    report
        movl    $msg_done, %esi
        call    puts
        jmp     poweroff

/* reset_stats: a phase of %eax rounds starts (preserves %eax). */
reset_stats:
        movl    $0, sum_lo
        movl    $0, sum_hi
        movl    $0, worst
        movl    %eax, rounds
        movl    %eax, rounds_left
        ret

/* start_ap: INIT and SIPI to APIC ID 1 with the trampoline at 0x8000;
 * waits (sleeping, so a shared host CPU can run it) until it is up. */
start_ap:
        START_AP TRAMPOLINE
        movl    $200, %ebx                      /* 200 x 1 ms */
1:      cmpl    $0, ap_ready
        jne     2f
        movl    $1000, %eax
        call    sleep_us
        decl    %ebx
        jnz     1b
        movl    $msg_no_ap, %esi
        jmp     fail
2:      ret

/* ping_round: one IPI to vCPU 1, spinning until its handler ran; adds
 * the ticks from just before the ICR write to the handler's rdtsc. */
ping_round:
        movl    $0, pong
        rdtsc
        movl    %eax, t0_lo
        movl    %edx, t0_hi
        movl    $X2APIC_ICR, %ecx
        movl    $VEC_PING, %eax
        movl    $1, %edx
        wrmsr
1:      pause
        cmpl    $0, pong
        je      1b
        movl    recv_lo, %eax
        movl    recv_hi, %edx
        subl    t0_lo, %eax
        sbbl    t0_hi, %edx
        addl    %eax, sum_lo
        adcl    %edx, sum_hi
        testl   %edx, %edx
        jnz     2f
        cmpl    worst, %eax
        jbe     3f
2:      movl    %eax, worst
3:      movl    rounds, %ecx
        subl    rounds_left, %ecx
        movl    %eax, each(,%ecx,4)
        ret

/* sleep_us: halts for %eax microseconds (TSC-deadline timer). */
sleep_us:
        pushal
        mull    ticks_per_us
        movl    %eax, %esi
        movl    %edx, %edi
        rdtsc
        addl    %esi, %eax
        adcl    %edi, %edx
        movl    $0, fired
        movl    $MSR_TSC_DEADLINE, %ecx
        wrmsr
1:      sti
        hlt
        cli
        cmpl    $0, fired
        je      1b
        popal
        ret

/* report: "BENCH <name> <sum> <rounds>", "BENCH-MAX <name> <worst>" and
 * "BENCH-ROUNDS <name> <each>..."; %esi = the name followed by a space. */
report:
        pushl   %esi
        pushl   %esi
        pushl   %esi
        movl    $msg_bench, %esi
        call    puts
        popl    %esi
        call    puts
        movl    sum_lo, %eax
        movl    sum_hi, %edx
        call    putdec64
        movl    $msg_space, %esi
        call    puts
        movl    rounds, %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        movl    $msg_bench_max, %esi
        call    puts
        popl    %esi
        call    puts
        movl    worst, %eax
        call    putdec
        movl    $msg_nl, %esi
        call    puts
        movl    $msg_bench_rounds, %esi
        call    puts
        popl    %esi
        call    puts
        xorl    %ebx, %ebx
1:      movl    each(,%ebx,4), %eax
        call    putdec
        movl    $msg_space, %esi
        call    puts
        incl    %ebx
        cmpl    rounds, %ebx
        jb      1b
        movl    $msg_nl, %esi
        call    puts
        ret

fail:   pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     poweroff

timer_isr:
        movl    $1, fired
        jmp     eoi_iret

/* vCPU 1: the time first, then the answer. */
ping_isr:
        pushal
        rdtsc
        movl    %eax, recv_lo
        movl    %edx, recv_hi
        movl    $1, pong
        popal
eoi_iret:
        pushal
        movl    $X2APIC_EOI, %ecx
        xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        popal
        iret

/* vCPU 1 in protected mode: its own stack, the shared tables, its LAPIC
 * on; spins while the phase is "running", else halts in a loop, saying
 * so before each HLT. */
ap_main:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $ap_stack_top, %esp
        lidt    flat_idt_ptr
        X2APIC_ON
        movl    $1, ap_ready
2:      cmpl    $PHASE_RUNNING, phase
        je      3f
        movl    $1, ap_halting
        sti
        hlt
        cli
        jmp     2b
3:      sti
1:      pause
        cmpl    $PHASE_RUNNING, phase
        je      1b
        jmp     2b

/* vCPU 1's real-mode start-up code, copied to TRAMPOLINE. */
        AP_TRAMPOLINE ap_main

        .section .rodata
msg_bench:      .asciz "BENCH "
msg_bench_max:  .asciz "BENCH-MAX "
msg_bench_rounds: .asciz "BENCH-ROUNDS "
msg_running:    .asciz "ipi_running "
msg_halted:     .asciz "ipi_halted "
msg_space:      .asciz " "
msg_nl:         .asciz "\n"
msg_done:       .asciz "ipi: done\n"
msg_fail:       .asciz "ipi: FAIL "
msg_no_ap:      .asciz "vCPU 1 did not start\n"

        .data
        .balign 4
phase:          .long PHASE_START
ap_ready:       .long 0
ap_halting:     .long 0
pong:           .long 0
fired:          .long 0
ticks_per_us:   .long 0
rounds:         .long 0
rounds_left:    .long 0
t0_lo:          .long 0
t0_hi:          .long 0
recv_lo:        .long 0
recv_hi:        .long 0
sum_lo:         .long 0
sum_hi:         .long 0
worst:          .long 0
each:           .fill ROUNDS, 4, 0
        .balign 16
ap_stack:       .fill 4096, 1, 0
ap_stack_top:
