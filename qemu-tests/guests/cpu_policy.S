/* cpu_policy: checks the CPU a guest is shown, as start-up code of Linux,
 * the BSDs and independent test kernels probes it. Each check prints
 * "cpu-policy: ok <what>" or "cpu-policy: FAIL <what>"; the guest then
 * prints "cpu-policy: done" and powers off. An MSR access Ferrite refused
 * would #GP, which with this guest's empty IDT is a triple fault: the test
 * sees the domain crash instead of "done".
 *
 * - AMD's legacy performance counters PERF_CTL0-3/PERF_CTR0-3
 *   (C001_0000-C001_0007) always exist (no CPUID bit): they read 0 and
 *   accept writes (no virtual PMU).
 * - NB_CFG (C001_001F), which Linux reads on AMD, reads without a fault.
 * - CPUID hides SVM (8000_0001:ECX[2]) and SEV/SME (leaf 8000_001F: the
 *   extended maximum stays below it, and the leaf reads as zeros).
 * - CPUID.1:ECX.OSXSAVE (27) follows the guest's own CR4.OSXSAVE (0 here),
 *   not the host's.
 * - IA32_PAT keeps a value written (it used to fall back to the default at
 *   the next scheduling slice).
 * - When RDTSCP exists, TSC_AUX is the guest's own: written, then read back
 *   by RDTSCP. */
        .include "pvh.inc"

.macro CHECK_OK label
        movl    $\label, %esi
        call    ok
.endm

        .text
_start:
        ENTER
        /* PERF_CTL0-3, PERF_CTR0-3: write 0, then read 0. */
        movl    $0xC0010000, %ecx
1:      xorl    %eax, %eax
        xorl    %edx, %edx
        wrmsr
        rdmsr
        orl     %edx, %eax
        jnz     fail_perf
        incl    %ecx
        cmpl    $0xC0010008, %ecx
        jne     1b
        CHECK_OK msg_perf
        /* NB_CFG reads. */
        movl    $0xC001001F, %ecx
        rdmsr
        CHECK_OK msg_nbcfg
        /* SVM hidden. */
        movl    $0x80000001, %eax
        cpuid
        testl   $(1 << 2), %ecx
        jnz     fail_svm
        CHECK_OK msg_svm
        /* SEV leaf out of range and zero. */
        movl    $0x80000000, %eax
        cpuid
        cmpl    $0x8000001F, %eax
        jae     fail_sev
        movl    $0x8000001F, %eax
        xorl    %ecx, %ecx
        cpuid
        orl     %ebx, %eax
        orl     %ecx, %eax
        orl     %edx, %eax
        jnz     fail_sev
        CHECK_OK msg_sev
        /* OSXSAVE follows the guest's CR4 (clear here). */
        movl    $1, %eax
        cpuid
        testl   $(1 << 27), %ecx
        jnz     fail_osxsave
        CHECK_OK msg_osxsave
        /* IA32_PAT keeps what was written, across 50 ms of scheduling
         * slices (entry 2 set to WC). */
        movl    $0x277, %ecx
        movl    $0x00070106, %eax
        movl    $0x00070406, %edx
        wrmsr
        movl    $(PM_TMR_HZ / 20), %eax
        call    pm_wait
        movl    $0x277, %ecx
        rdmsr
        cmpl    $0x00070106, %eax
        jne     fail_pat
        cmpl    $0x00070406, %edx
        jne     fail_pat
        CHECK_OK msg_pat
        /* TSC_AUX through RDTSCP, when the CPU has it. */
        movl    $0x80000001, %eax
        cpuid
        testl   $(1 << 27), %edx
        jz      2f
        movl    $0xC0000103, %ecx
        movl    $0x1234, %eax
        xorl    %edx, %edx
        wrmsr
        rdtscp
        cmpl    $0x1234, %ecx
        jne     fail_tscaux
        CHECK_OK msg_tscaux
        jmp     3f
2:      movl    $msg_no_rdtscp, %esi
        call    puts
3:      movl    $msg_done, %esi
        call    puts
        jmp     poweroff

/* ok: prints "cpu-policy: ok " and the string at %esi. */
ok:
        pushl   %esi
        movl    $msg_ok, %esi
        call    puts
        popl    %esi
        call    puts
        ret

fail_perf:    movl $msg_perf, %esi
              jmp  fail
fail_svm:     movl $msg_svm, %esi
              jmp  fail
fail_sev:     movl $msg_sev, %esi
              jmp  fail
fail_osxsave: movl $msg_osxsave, %esi
              jmp  fail
fail_pat:     movl $msg_pat, %esi
              jmp  fail
fail_tscaux:  movl $msg_tscaux, %esi
fail:
        pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     3b

        .section .rodata
msg_ok:       .asciz "cpu-policy: ok "
msg_fail:     .asciz "cpu-policy: FAIL "
msg_perf:     .asciz "perf counters read 0 and take writes\n"
msg_nbcfg:    .asciz "NB_CFG reads\n"
msg_svm:      .asciz "SVM hidden\n"
msg_sev:      .asciz "SEV leaf hidden\n"
msg_osxsave:  .asciz "OSXSAVE follows CR4\n"
msg_tscaux:   .asciz "TSC_AUX is the guest's\n"
msg_pat:      .asciz "PAT keeps what was written\n"
msg_no_rdtscp: .asciz "cpu-policy: no RDTSCP on this CPU\n"
msg_done:     .asciz "cpu-policy: done\n"
