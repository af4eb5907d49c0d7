/* task_switch: hardware task switches through 32-bit TSSs (Intel SDM vol.
 * 3A 7.3, 6.11; AMD APM vol. 2, 12.3), each way a program or the CPU can
 * start one:
 *
 *  * CALL to a TSS descriptor: the called task runs with the caller in its
 *    back link, NT set, TR its own, its registers from its TSS, CR0.TS
 *    set; the caller stays busy. Its IRET (NT=1) returns to the caller
 *    after the CALL, with the caller's registers, NT clear, the called
 *    task free again and NT clear in its saved EFLAGS. A second CALL
 *    resumes it after that IRET.
 *  * JMP to a TSS descriptor: no back link, NT clear, the old task free;
 *    a JMP back resumes the old task after its JMP.
 *  * INT n through a task gate: the interrupted task resumes after the
 *    INT.
 *  * #GP (with an error code) through a task gate: the error code is on
 *    the handler task's stack, the interrupted task saved at the faulting
 *    instruction (the handler moves it past, then IRETs).
 *
 * Prints "task: ok <what>" per check and "task: done <n> checks", or
 * "task: FAIL <what> (got <value>)", then powers off. */
        .include "pvh.inc"

        .set MAIN_SEL,      0x18
        .set CALLEE_SEL,    0x20
        .set JUMPED_SEL,    0x28
        .set GP_SEL,        0x30
        .set INT_SEL,       0x38
        .set BAD_SEL,       0x80        /* beyond the GDT's limit */
        .set TSS_LIMIT,     0x67
        .set EFLAGS_NT,     (1 << 14)
        .set CR0_TS,        (1 << 3)
        .set INT_VECTOR,    0x40

/* CHECK value, expected, what: one check, compared as 32-bit values. */
.macro CHECK value, expected, what
        .pushsection .rodata
8:      .asciz  "\what"
        .popsection
        movl    \value, %eax
        movl    $8b, %esi
        cmpl    \expected, %eax
        call    check
.endm

/* INIT_TSS tss, entry, stack: a ring-0 task at `entry` on its own stack,
 * flat segments, IF=0, no I/O bitmap. */
.macro INIT_TSS tss, entry, stack
        movl    $\entry, \tss + 0x20
        movl    $0x2, \tss + 0x24
        movl    $\stack, \tss + 0x38
        movl    $0x10, \tss + 0x48
        movl    $0x08, \tss + 0x4C
        movl    $0x10, \tss + 0x50
        movl    $0x10, \tss + 0x54
        movw    $0x68, \tss + 0x66
.endm

/* TASK_GATE vector, selector: a present DPL-0 task gate in `flat_idt`. */
.macro TASK_GATE vector, selector
        movl    $(\selector << 16), flat_idt + (\vector) * 8
        movl    $(0x85 << 8), flat_idt + (\vector) * 8 + 4
.endm

        .text
_start:
        ENTER
        FLAT_TABLES
        movl    $main_tss, %eax
        movl    $task_gdt + MAIN_SEL, %edi
        call    set_tss_descriptor
        movl    $callee_tss, %eax
        movl    $task_gdt + CALLEE_SEL, %edi
        call    set_tss_descriptor
        movl    $jumped_tss, %eax
        movl    $task_gdt + JUMPED_SEL, %edi
        call    set_tss_descriptor
        movl    $gp_tss, %eax
        movl    $task_gdt + GP_SEL, %edi
        call    set_tss_descriptor
        movl    $int_tss, %eax
        movl    $task_gdt + INT_SEL, %edi
        call    set_tss_descriptor
        lgdt    task_gdt_ptr
        movw    $MAIN_SEL, %ax
        ltr     %ax
        movw    $0x68, main_tss + 0x66
        INIT_TSS callee_tss, callee, callee_stack_top
        movl    $0x1234, callee_tss + 0x28          /* EAX */
        INIT_TSS jumped_tss, jumped, jumped_stack_top
        movw    $0x7777, jumped_tss                 /* a back link JMP keeps */
        INIT_TSS gp_tss, gp_task, gp_stack_top
        INIT_TSS int_tss, int_task, int_stack_top
        TASK_GATE 13, GP_SEL
        TASK_GATE INT_VECTOR, INT_SEL

        /* CALL, and the called task's IRET back. */
        movl    $0xCAFE, %ebx
        lcall   $CALLEE_SEL, $0
        movl    %ebx, ebx_after
        pushfl
        popl    %eax
        andl    $EFLAGS_NT, %eax
        movl    %eax, nt_after
        str     %ax
        movzwl  %ax, %eax
        movl    %eax, tr_after
        clts
        CHECK   callee_count, $1, "call: the called task ran"
        CHECK   callee_link, $MAIN_SEL, "call: its back link names the caller"
        CHECK   callee_nt, $EFLAGS_NT, "call: NT set in the called task"
        CHECK   callee_eax, $0x1234, "call: its registers loaded from its TSS"
        CHECK   callee_tr, $CALLEE_SEL, "call: TR names the called task"
        CHECK   callee_ts, $CR0_TS, "call: CR0.TS set"
        CHECK   callee_caller_access, $0x8B, "call: the caller stays busy"
        CHECK   tr_after, $MAIN_SEL, "iret: back in the caller"
        CHECK   nt_after, $0, "iret: NT clear in the caller"
        CHECK   ebx_after, $0xCAFE, "iret: the caller's registers restored"
        movzbl  task_gdt + CALLEE_SEL + 5, %ecx
        CHECK   %ecx, $0x89, "iret: the called task free again"
        movl    callee_tss + 0x24, %ecx
        andl    $EFLAGS_NT, %ecx
        CHECK   %ecx, $0, "iret: NT clear in the returning task's saved EFLAGS"
        lcall   $CALLEE_SEL, $0
        CHECK   callee_count, $2, "call: a second CALL resumes the task after its IRET"

        /* JMP there and back. */
        ljmp    $JUMPED_SEL, $0
        str     %ax
        movzwl  %ax, %eax
        CHECK   %eax, $MAIN_SEL, "jmp: a JMP back resumes the first task"
        CHECK   jumped_count, $1, "jmp: the task ran"
        CHECK   jumped_nt, $0, "jmp: NT clear"
        CHECK   jumped_link, $0x7777, "jmp: no back link written"
        CHECK   jumped_main_access, $0x89, "jmp: the task jumped from is free"
        movzbl  task_gdt + JUMPED_SEL + 5, %ecx
        CHECK   %ecx, $0x89, "jmp: the task jumped back from is free"
        movzbl  task_gdt + MAIN_SEL + 5, %ecx
        CHECK   %ecx, $0x8B, "jmp: the running task is busy"

        /* INT n through a task gate. */
        int     $INT_VECTOR
after_int:
        CHECK   int_count, $1, "int: the gate's task ran"
        CHECK   int_saved_eip, $after_int, "int: the interrupted task saved after the INT"
        CHECK   int_link, $MAIN_SEL, "int: its back link names the interrupted task"
        CHECK   int_nt, $EFLAGS_NT, "int: NT set in the gate's task"

        /* #GP(BAD_SEL) through a task gate. */
        movw    $BAD_SEL, %ax
gp_insn:
        movw    %ax, %ds                /* 2 bytes, faults */
        CHECK   gp_count, $1, "#GP: the gate's task ran"
        CHECK   gp_error, $BAD_SEL, "#GP: its error code on the new task's stack"
        CHECK   gp_esp, $gp_stack_top-4, "#GP: nothing else pushed"
        CHECK   gp_saved_eip, $gp_insn, "#GP: the task saved at the faulting instruction"
        CHECK   gp_link, $MAIN_SEL, "#GP: its back link names the faulting task"
        str     %ax
        movzwl  %ax, %eax
        CHECK   %eax, $MAIN_SEL, "#GP: its IRET returns to the faulting task"

        movl    $msg_done, %esi
        call    puts
        movl    checks, %eax
        call    putdec
        movl    $msg_checks, %esi
        call    puts
        jmp     poweroff

/* check: ZF from the comparison of %eax with the expected value, %esi the
 * check's name. Prints ok and counts it, or FAIL and powers off. */
check:
        jne     1f
        pushl   %esi
        movl    $msg_ok, %esi
        call    puts
        popl    %esi
        call    puts
        movl    $msg_nl, %esi
        call    puts
        incl    checks
        ret
1:      pushl   %esi
        movl    $msg_fail, %esi
        call    puts
        popl    %esi
        call    puts
        movl    $msg_got, %esi
        call    puts
        call    putdec
        movl    $msg_close, %esi
        call    puts
        jmp     poweroff

        .include "tss.inc"

/* The called task: each CALL enters it where its last IRET left it. */
callee:
        cmpl    $0, callee_count
        jne     1f
        movl    %eax, callee_eax
1:      incl    callee_count
        movzwl  callee_tss, %eax
        movl    %eax, callee_link
        pushfl
        popl    %eax
        andl    $EFLAGS_NT, %eax
        movl    %eax, callee_nt
        str     %ax
        movzwl  %ax, %eax
        movl    %eax, callee_tr
        movl    %cr0, %eax
        andl    $CR0_TS, %eax
        movl    %eax, callee_ts
        movzbl  task_gdt + MAIN_SEL + 5, %eax
        movl    %eax, callee_caller_access
        iret                            /* NT=1: back to the caller */
        jmp     callee

/* The task JMP goes to; it JMPs back. */
jumped:
        incl    jumped_count
        pushfl
        popl    %eax
        andl    $EFLAGS_NT, %eax
        movl    %eax, jumped_nt
        movzwl  jumped_tss, %eax
        movl    %eax, jumped_link
        movzbl  task_gdt + MAIN_SEL + 5, %eax
        movl    %eax, jumped_main_access
        ljmp    $MAIN_SEL, $0

/* The INT n task. */
int_task:
        incl    int_count
        movl    main_tss + 0x20, %eax
        movl    %eax, int_saved_eip
        movzwl  int_tss, %eax
        movl    %eax, int_link
        pushfl
        popl    %eax
        andl    $EFLAGS_NT, %eax
        movl    %eax, int_nt
        iret
        jmp     int_task

/* The #GP task: takes the error code, moves the faulting task past the
 * faulting instruction, returns to it. */
gp_task:
        movl    %esp, gp_esp
        popl    %eax
        movl    %eax, gp_error
        incl    gp_count
        movl    main_tss + 0x20, %eax
        movl    %eax, gp_saved_eip
        addl    $2, main_tss + 0x20
        movzwl  gp_tss, %eax
        movl    %eax, gp_link
        iret
        jmp     gp_task

        .section .rodata
msg_ok:     .asciz "task: ok "
msg_fail:   .asciz "task: FAIL "
msg_got:    .asciz " (got "
msg_close:  .asciz ")\n"
msg_nl:     .asciz "\n"
msg_done:   .asciz "task: done "
msg_checks: .asciz " checks\n"

        .data
        .balign 4
checks:                 .long 0
ebx_after:              .long 0
nt_after:               .long 0
tr_after:               .long 0
callee_count:           .long 0
callee_eax:             .long 0
callee_link:            .long 0
callee_nt:              .long 0
callee_tr:              .long 0
callee_ts:              .long 0
callee_caller_access:   .long 0
jumped_count:           .long 0
jumped_nt:              .long 0
jumped_link:            .long 0
jumped_main_access:     .long 0
int_count:              .long 0
int_saved_eip:          .long 0
int_link:               .long 0
int_nt:                 .long 0
gp_count:               .long 0
gp_error:               .long 0
gp_esp:                 .long 0
gp_saved_eip:           .long 0
gp_link:                .long 0
        .balign 8
task_gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: flat 32-bit code */
        .quad   0x00CF92000000FFFF      /* 0x10: flat data */
        .quad   0                       /* 0x18: the first task's TSS */
        .quad   0                       /* 0x20: the called task's */
        .quad   0                       /* 0x28: the jumped-to task's */
        .quad   0                       /* 0x30: the #GP task's */
        .quad   0                       /* 0x38: the INT task's */
task_gdt_ptr:
        .word   8 * 8 - 1
        .long   task_gdt
        .balign 16
main_tss:
        .fill   0x68, 1, 0
callee_tss:
        .fill   0x68, 1, 0
jumped_tss:
        .fill   0x68, 1, 0
gp_tss:
        .fill   0x68, 1, 0
int_tss:
        .fill   0x68, 1, 0
        .balign 16
callee_stack:
        .fill   512, 1, 0
callee_stack_top:
jumped_stack:
        .fill   512, 1, 0
jumped_stack_top:
gp_stack:
        .fill   512, 1, 0
gp_stack_top:
int_stack:
        .fill   512, 1, 0
int_stack_top:
