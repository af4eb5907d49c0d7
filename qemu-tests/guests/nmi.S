/* nmi: an NMI sent through the local APIC's ICR (delivery mode NMI, to
 * the vCPU's own APIC ID) arrives as vector 2 even with IF=0, and NMIs are
 * blocked from its delivery until the handler's IRET (AMD APM vol. 2,
 * 8.2.19; Intel SDM vol. 3A, 6.7.1): the handler sends a second NMI and
 * spins; that one must not nest, and must arrive after the IRET. Prints
 * "nmi: 2 delivered, none nested" or "nmi: FAIL <why>", then powers off. */
        .include "pvh.inc"

        .set X2APIC_ICR,      0x830
        .set ICR_NMI,         (4 << 8)

        .text
_start:
        ENTER
        FLAT_TABLES
        GATE    2, nmi_handler
        X2APIC_ON
        movl    $X2APIC_ID, %ecx
        rdmsr
        movl    %eax, apic_id
        /* IF stays 0 throughout: NMIs do not care. */
        call    send_nmi
        movl    $50000000, %ecx
1:      cmpl    $2, nmi_count
        jae     2f
        loop    1b
        movl    $msg_missing, %esi
        jmp     fail
2:      cmpl    $0, nested
        jne     nest_fail
        cmpl    $2, nmi_count
        jne     count_fail
        movl    $msg_ok, %esi
        call    puts
        jmp     poweroff

nest_fail:
        movl    $msg_nested, %esi
        jmp     fail
count_fail:
        movl    $msg_count, %esi
fail:   pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     poweroff

/* send_nmi: NMI, physical destination = this vCPU's own APIC ID. */
send_nmi:
        movl    $X2APIC_ICR, %ecx
        movl    $ICR_NMI, %eax
        movl    apic_id, %edx
        wrmsr
        ret

nmi_handler:
        pushal
        incl    depth
        cmpl    $1, depth
        je      1f
        incl    nested
1:      incl    nmi_count
        cmpl    $1, nmi_count
        jne     3f
        /* The first one sends the second, then spins: delivering it now
         * would nest. */
        call    send_nmi
        movl    $2000000, %ecx
2:      loop    2b
3:      decl    depth
        popal
        iret

        .section .rodata
msg_ok:      .asciz "nmi: 2 delivered, none nested\n"
msg_fail:    .asciz "nmi: FAIL "
msg_missing: .asciz "fewer than 2 NMIs arrived\n"
msg_nested:  .asciz "an NMI arrived inside the NMI handler\n"
msg_count:   .asciz "more than 2 NMIs arrived\n"

        .data
apic_id:    .long 0
nmi_count:  .long 0
depth:      .long 0
nested:     .long 0
