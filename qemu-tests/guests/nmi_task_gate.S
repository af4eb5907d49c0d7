/* nmi_task_gate: an NMI whose IDT entry is a task gate switches to the
 * task its TSS describes, with the interrupted task linked back, and the
 * handler task's IRET returns to that task (AMD APM vol. 2, 12.3 and
 * 8.7.1; Intel SDM vol. 3A, 7.3 and 6.11). The handler task sends a second
 * NMI and spins: NMIs are blocked until its IRET, so the second arrives
 * after the task switch back, enters the handler task again at the
 * instruction after its IRET, and does not nest (nesting would go through
 * a busy task's gate, a #GP, and with no #GP handler a triple fault).
 * Prints "nmi-task: 2 delivered through the task gate, none nested" or
 * "nmi-task: FAIL <why>", then powers off. */
        .include "pvh.inc"

        /* xAPIC MMIO (paging is off): bare QEMU's TCG has no x2APIC. */
        .set APIC_ID,         0xFEE00020
        .set APIC_SVR,        0xFEE000F0
        .set APIC_ICR_LOW,    0xFEE00300
        .set APIC_ICR_HIGH,   0xFEE00310
        .set ICR_NMI,         (4 << 8)
        .set MAIN_TSS_SEL,    0x18
        .set NMI_TSS_SEL,     0x20
        .set TSS_LIMIT,       0x67
        .set EFLAGS_NT,       (1 << 14)

        .text
_start:
        ENTER
        FLAT_TABLES
        movl    $0x1FF, APIC_SVR
        movl    APIC_ID, %eax
        movl    %eax, apic_id           /* the ID in bits 31:24 */

        /* Our own GDT: the flat code and data segments at the same
         * selectors as FLAT_TABLES', and two 32-bit TSS descriptors. */
        movl    $main_tss, %eax
        movl    $task_gdt + MAIN_TSS_SEL, %edi
        call    set_tss_descriptor
        movl    $nmi_tss, %eax
        movl    $task_gdt + NMI_TSS_SEL, %edi
        call    set_tss_descriptor
        lgdt    task_gdt_ptr
        movw    $MAIN_TSS_SEL, %ax
        ltr     %ax

        /* The handler task starts at nmi_task on its own stack, flat
         * segments, IF=0. Paging is off, so its CR3 is never loaded. */
        movl    $nmi_task, nmi_tss + 0x20           /* EIP */
        movl    $0x2, nmi_tss + 0x24                /* EFLAGS */
        movl    $nmi_stack_top, nmi_tss + 0x38      /* ESP */
        movl    $0x10, nmi_tss + 0x48               /* ES */
        movl    $0x08, nmi_tss + 0x4C               /* CS */
        movl    $0x10, nmi_tss + 0x50               /* SS */
        movl    $0x10, nmi_tss + 0x54               /* DS */
        movw    $0x68, nmi_tss + 0x66               /* no I/O bitmap */
        movw    $0x68, main_tss + 0x66

        /* IDT entry 2: a task gate (type 5, present, DPL 0) naming the
         * handler task's TSS. */
        movl    $flat_idt + 2 * 8, %edi
        movl    $(NMI_TSS_SEL << 16), (%edi)
        movl    $(0x85 << 8), 4(%edi)

        call    send_nmi
        movl    $50000000, %ecx
1:      cmpl    $2, nmi_count
        jae     2f
        loop    1b
        movl    $msg_missing, %esi
        jmp     fail
2:      cmpl    $0, bad_link
        jne     link_fail
        cmpl    $0, bad_nt
        jne     nt_fail
        cmpl    $0, early
        jne     early_fail
        cmpl    $2, nmi_count
        jne     count_fail
        /* Back in this task: its TSS is busy again, the handler's free. */
        str     %ax
        cmpw    $MAIN_TSS_SEL, %ax
        jne     tr_fail
        movl    $msg_ok, %esi
        call    puts
        jmp     poweroff

link_fail:
        movl    $msg_link, %esi
        jmp     fail
nt_fail:
        movl    $msg_nt, %esi
        jmp     fail
early_fail:
        movl    $msg_early, %esi
        jmp     fail
count_fail:
        movl    $msg_count, %esi
        jmp     fail
tr_fail:
        movl    $msg_tr, %esi
fail:   pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        jmp     poweroff

        .include "tss.inc"

/* send_nmi: NMI, physical destination = this vCPU's own APIC ID. */
send_nmi:
        movl    apic_id, %eax
        movl    %eax, APIC_ICR_HIGH
        movl    $ICR_NMI, APIC_ICR_LOW
        ret

/* The handler task. Each NMI enters it where its last IRET left it. */
nmi_task:
        incl    nmi_count
        /* The task switch links the interrupted task and sets NT. */
        movzwl  nmi_tss, %eax
        cmpl    $MAIN_TSS_SEL, %eax
        je      1f
        incl    bad_link
1:      pushfl
        popl    %eax
        testl   $EFLAGS_NT, %eax
        jnz     2f
        incl    bad_nt
2:      cmpl    $1, nmi_count
        jne     3f
        /* The first one sends the second, then spins: delivering it now
         * would nest. It may only arrive after the IRET below. */
        call    send_nmi
        movl    $2000000, %ecx
4:      loop    4b
        cmpl    $1, nmi_count
        je      3f
        incl    early
3:      iret                            /* NT=1: back to the linked task */
        jmp     nmi_task

        .section .rodata
msg_ok:      .asciz "nmi-task: 2 delivered through the task gate, none nested\n"
msg_fail:    .asciz "nmi-task: FAIL "
msg_missing: .asciz "fewer than 2 NMIs arrived\n"
msg_link:    .asciz "the handler task's back link is not the interrupted task\n"
msg_nt:      .asciz "NT is clear in the handler task\n"
msg_early:   .asciz "the second NMI arrived before the handler task's IRET\n"
msg_count:   .asciz "more than 2 NMIs arrived\n"
msg_tr:      .asciz "TR does not name the interrupted task after the return\n"

        .data
        .balign 4
apic_id:   .long 0
nmi_count: .long 0
bad_link:  .long 0
bad_nt:    .long 0
early:     .long 0
        .balign 8
task_gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: flat 32-bit code */
        .quad   0x00CF92000000FFFF      /* 0x10: flat data */
        .quad   0                       /* 0x18: this task's TSS */
        .quad   0                       /* 0x20: the NMI handler task's TSS */
task_gdt_ptr:
        .word   5 * 8 - 1
        .long   task_gdt
        .balign 16
main_tss:
        .fill   0x68, 1, 0
nmi_tss:
        .fill   0x68, 1, 0
        .balign 16
nmi_stack:
        .fill   1024, 1, 0
nmi_stack_top:
