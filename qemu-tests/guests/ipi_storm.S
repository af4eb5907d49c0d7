/* ipi_storm: two vCPUs of one guest send each other fixed IPIs as fast as
 * they can. The boot vCPU starts vCPU 1 (INIT, SIPI to a real-mode
 * trampoline at 0x8000); then, with IF=1, each writes its x2APIC ICR
 * STORM_IPIS times, naming the other (vector 0x42 to vCPU 0, 0x43 to
 * vCPU 1), each handler counting and signalling EOI. When both are done
 * the boot vCPU prints
 *   ipistorm: vcpu0 received <n>, vcpu1 received <n> of <STORM_IPIS> each
 * (a fixed IPI to a vector already pending merges with it, so fewer may
 * arrive than were sent, but never none) and powers off; or
 * "ipistorm: FAIL <why>". Beside timer_latency.S it shows whether one
 * guest's IPI storm delays another domain's interrupts. */
        .include "pvh.inc"

        .set X2APIC_ICR,       0x830
        .set VEC_TO_BSP,       0x42
        .set VEC_TO_AP,        0x43
        .set TRAMPOLINE,       0x8000           /* SIPI vector 0x08 */
        .set STORM_IPIS,       20000

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    VEC_TO_BSP, bsp_isr
        GATE    VEC_TO_AP, ap_isr
        X2APIC_ON
        START_AP TRAMPOLINE
        movl    $200, %ebx                      /* 200 x 1 ms */
1:      cmpl    $0, ap_ready
        jne     2f
        movl    $(PM_TMR_HZ / 1000), %eax
        call    pm_wait
        decl    %ebx
        jnz     1b
        movl    $msg_no_ap, %esi
        jmp     fail
2:      movl    $1, go
        sti
        movl    $1, %edi                        /* destination: vCPU 1 */
        movl    $VEC_TO_AP, %esi
        call    storm
        /* Wait for vCPU 1 to finish its half (5 s at most). */
        movl    $5000, %ebx
3:      cmpl    $0, ap_done
        jne     4f
        movl    $(PM_TMR_HZ / 1000), %eax
        call    pm_wait
        decl    %ebx
        jnz     3b
        movl    $msg_ap_stuck, %esi
        jmp     fail
4:      cli
        movl    $msg_head, %esi
        call    puts
        movl    bsp_count, %eax
        call    putdec
        movl    $msg_mid, %esi
        call    puts
        movl    ap_count, %eax
        call    putdec
        movl    $msg_of, %esi
        call    puts
        movl    $STORM_IPIS, %eax
        call    putdec
        movl    $msg_each, %esi
        call    puts
        cmpl    $0, bsp_count
        je      5f
        cmpl    $0, ap_count
        je      5f
        jmp     poweroff
5:      movl    $msg_none, %esi
        jmp     fail

/* storm: STORM_IPIS fixed IPIs with vector %esi to x2APIC ID %edi. */
storm:
        movl    $STORM_IPIS, %ebx
        movl    $X2APIC_ICR, %ecx
1:      movl    %esi, %eax
        movl    %edi, %edx
        wrmsr
        decl    %ebx
        jnz     1b
        ret

fail:   pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     poweroff

        X2APIC_EOI_ISR bsp_isr, bsp_count
        X2APIC_EOI_ISR ap_isr, ap_count

/* vCPU 1 in protected mode: its own stack, the shared tables, its LAPIC
 * on; storms vCPU 0 once it says go, then says it is done and halts. */
ap_main:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $ap_stack_top, %esp
        lidt    flat_idt_ptr
        X2APIC_ON
        movl    $1, ap_ready
1:      pause
        cmpl    $0, go
        je      1b
        sti
        xorl    %edi, %edi                      /* destination: vCPU 0 */
        movl    $VEC_TO_BSP, %esi
        call    storm
        movl    $1, ap_done
2:      hlt
        jmp     2b

/* vCPU 1's real-mode start-up code, copied to TRAMPOLINE. */
        AP_TRAMPOLINE ap_main

        .section .rodata
msg_head:       .asciz "ipistorm: vcpu0 received "
msg_mid:        .asciz ", vcpu1 received "
msg_of:         .asciz " of "
msg_each:       .asciz " each\n"
msg_fail:       .asciz "ipistorm: FAIL "
msg_no_ap:      .asciz "vCPU 1 did not start\n"
msg_ap_stuck:   .asciz "vCPU 1 did not finish its storm\n"
msg_none:       .asciz "a vCPU received no IPI\n"

        .data
        .balign 4
ap_ready:       .long 0
go:             .long 0
ap_done:        .long 0
bsp_count:      .long 0
ap_count:       .long 0
        .balign 16
ap_stack:       .fill 4096, 1, 0
ap_stack_top:
