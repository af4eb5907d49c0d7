/* cr_efer_checks: CR0, CR3 and EFER writes follow the architecture (AMD
 * APM vol. 2 3.1 and table 14-5 "Long-Mode Consistency Checks"; Intel
 * SDM vol. 3A 2.5 and 4.1.1): each write a CPU refuses raises #GP and
 * changes nothing, the legal ones are taken. Before Ferrite checked them,
 * such writes went into the VMCB and either made the next VMRUN fail
 * (the domain crashed with exit -1) or left a state no CPU can be in.
 *
 * The guest goes from 32-bit protected mode without paging through PAE
 * paging into long mode (64-bit, then compatibility mode) and back, trying
 * each write where it matters. Expectations for bits of optional features
 * (EFER.NXE, FFXSR, TCE, SVME) come from the CPUID the guest sees.
 * A #GP handler counts and resumes after the instruction tried.
 *
 * Prints "<reg>: ok <what> -> <#GP|taken>" or "<reg>: FAIL ..." per
 * check, then "cr: done <n> checks" and powers off. The 64-bit checks
 * are recorded in 64-bit mode and printed once back in 32-bit code. */
        .include "pvh.inc"

        .set MSR_EFER,      0xC0000080
        .set CR0_PE,        1 << 0
        .set CR0_EM,        1 << 2
        .set CR0_TS,        1 << 3
        .set CR0_ET,        1 << 4
        .set CR0_NW,        1 << 29
        .set CR0_CD,        1 << 30
        .set CR0_PG,        1 << 31
        .set CR4_PAE,       1 << 5
        .set EFER_SCE,      1 << 0
        .set EFER_LME,      1 << 8
        .set EFER_LMA,      1 << 10
        .set EFER_NXE,      1 << 11
        .set EFER_SVME,     1 << 12
        .set EFER_LMSLE,    1 << 13
        .set EFER_FFXSR,    1 << 14
        .set EFER_TCE,      1 << 15
        .set CODE64,        0x18
        /* What a check expects (cur_expect) */
        .set TAKEN,         0
        .set GP,            1
        .set HOLDS,         2       /* a condition, not a write */
        /* CPUID register index for expect_feature */
        .set R_EBX, 0
        .set R_ECX, 1
        .set R_EDX, 2

/* BEGIN reg, what[, expect]: names the check and (unless given by
 * expect_feature) what it expects; a #GP in what follows, up to END,
 * resumes at END. Touches no register or flag. */
.macro BEGIN reg, what, expect=keep
        .pushsection .rodata
7:      .asciz  "\reg"
8:      .asciz  "\what"
        .popsection
        movl    $7b, cur_reg
        movl    $8b, cur_what
        .ifnc   \expect,keep
        movl    $\expect, cur_expect
        .endif
        movl    $0, gp_count
        movl    $9f, resume
.endm

/* END / END64: records whether a #GP came (32-bit / 64-bit code). */
.macro END
9:      call    record
.endm
.macro END64
9:      call    record64
.endm

/* HOLDS_IF cc, reg, what: records whether condition `cc` holds (flags as
 * the code before left them). */
.macro HOLDS_IF cc, reg, what
        set\cc  held
        BEGIN   \reg, "\what", HOLDS
9:      call    record
.endm
.macro HOLDS_IF64 cc, reg, what
        set\cc  held
        BEGIN   \reg, "\what", HOLDS
9:      call    record64
.endm

        .text
_start:
        ENTER
        FLAT_TABLES
        lgdt    gdt_ptr                 /* the same 0x08/0x10, plus 64-bit code */
        GATE    13, gp32
        call    build_tables
        call    find_max_phys
        movl    %cr0, %eax
        movl    %eax, saved_cr0

        /* ---- CR0, 32-bit protected mode, paging off ---- */
        movl    saved_cr0, %eax
        andl    $~CR0_PE, %eax
        orl     $CR0_PG, %eax
        BEGIN   cr0, "PG set with PE clear", GP
        movl    %eax, %cr0
        END

        movl    saved_cr0, %eax
        andl    $~CR0_CD, %eax
        orl     $CR0_NW, %eax
        BEGIN   cr0, "NW set with CD clear", GP
        movl    %eax, %cr0
        END

        movl    saved_cr0, %eax
        orl     $CR0_CD | CR0_NW, %eax
        BEGIN   cr0, "CD and NW set", TAKEN
        movl    %eax, %cr0
        END
        movl    %cr0, %eax
        andl    $CR0_CD | CR0_NW, %eax
        cmpl    $CR0_CD | CR0_NW, %eax
        HOLDS_IF e, cr0, "CD and NW read back"
        call    restore_cr0

        movl    saved_cr0, %eax
        andl    $~CR0_ET, %eax
        BEGIN   cr0, "ET cleared", TAKEN
        movl    %eax, %cr0
        END
        movl    %cr0, %eax
        testl   $CR0_ET, %eax
        HOLDS_IF nz, cr0, "ET still reads 1"
        call    restore_cr0

        /* LMSW: loads MP, EM, TS; sets PE but never clears it. EM makes
         * it a change beyond TS/MP, so it exits under Ferrite. */
        movw    $CR0_EM | CR0_PE, %ax
        BEGIN   cr0, "LMSW sets EM", TAKEN
        lmsw    %ax
        END
        movl    %cr0, %eax
        testl   $CR0_EM, %eax
        HOLDS_IF nz, cr0, "EM set by LMSW"
        xorl    %eax, %eax
        BEGIN   cr0, "LMSW of 0", TAKEN
        lmsw    %ax
        END
        movl    %cr0, %eax
        andl    $CR0_EM | CR0_PE, %eax
        cmpl    $CR0_PE, %eax
        HOLDS_IF e, cr0, "LMSW cleared EM and kept PE"
        BEGIN   cr0, "LMSW from memory", TAKEN
        lmsw    lmsw_word
        END
        movl    %cr0, %eax
        testl   $CR0_EM, %eax
        HOLDS_IF nz, cr0, "EM set by LMSW from memory"
        call    restore_cr0

        movl    saved_cr0, %eax
        orl     $CR0_TS, %eax
        movl    %eax, %cr0
        BEGIN   cr0, "CLTS", TAKEN
        clts
        END
        movl    %cr0, %eax
        testl   $CR0_TS, %eax
        HOLDS_IF z, cr0, "TS clear after CLTS"

        /* ---- EFER, paging off ---- */
        call    save_efer
        orl     $1 << 9, %eax
        BEGIN   efer, "reserved bit 9", GP
        wrmsr
        END
        call    restore_efer
        orl     $1 << 31, %edx
        BEGIN   efer, "reserved bit 63", GP
        wrmsr
        END
        call    restore_efer
        orl     $EFER_LMSLE, %eax
        BEGIN   efer, "LMSLE (never offered)", GP
        wrmsr
        END
        call    restore_efer
        orl     $EFER_LMA, %eax
        BEGIN   efer, "LMA set with paging off", GP
        wrmsr
        END
        call    restore_efer

        movl    $0x80000001, %eax
        movl    $R_ECX, %ecx
        movl    $17, %edx
        call    expect_feature
        call    save_efer
        orl     $EFER_TCE, %eax
        BEGIN   efer, "TCE as CPUID says"
        wrmsr
        END
        call    restore_efer

        movl    $0x80000001, %eax
        movl    $R_EDX, %ecx
        movl    $25, %edx
        call    expect_feature
        call    save_efer
        orl     $EFER_FFXSR, %eax
        BEGIN   efer, "FFXSR as CPUID says"
        wrmsr
        END
        call    restore_efer

        movl    $0x80000001, %eax
        movl    $R_ECX, %ecx
        movl    $2, %edx
        call    expect_feature
        call    save_efer
        orl     $EFER_SVME, %eax
        BEGIN   efer, "SVME as CPUID says"
        wrmsr
        END
        call    restore_efer

        movl    $0x80000001, %eax
        movl    $R_EDX, %ecx
        movl    $20, %edx
        call    expect_feature
        call    save_efer
        orl     $EFER_NXE, %eax
        BEGIN   efer, "NXE as CPUID says"
        wrmsr
        END
        call    restore_efer

        call    save_efer
        orl     $EFER_SCE, %eax
        BEGIN   efer, "SCE", TAKEN
        wrmsr
        END
        call    restore_efer
        call    flush

        /* ---- PAE paging without long mode ---- */
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pdpt_pae, %eax
        movl    %eax, %cr3
        /* A present PDPTE with a reserved bit (bit 1): Intel loads the
         * four PDPTEs at the MOV CR0 that turns on PAE paging and refuses
         * it with #GP (SDM vol. 3A 4.4.1); AMD reads them at each walk, so
         * the write is taken. Paging goes off again either way. */
        movl    $3, pdpt_pae + 8
        call    expect_gp_on_intel
        movl    saved_cr0, %eax
        orl     $CR0_PG, %eax
        BEGIN   cr0, "PG with a reserved PDPTE bit (#GP on Intel)"
        movl    %eax, %cr0
        END
        movl    saved_cr0, %eax
        movl    %eax, %cr0
        movl    $0, pdpt_pae + 8
        movl    $pdpt_pae, %eax
        movl    %eax, %cr3
        movl    saved_cr0, %eax
        orl     $CR0_PG, %eax
        BEGIN   cr0, "PG with PAE, LME clear", TAKEN
        movl    %eax, %cr0
        END
        call    save_efer
        orl     $EFER_LME, %eax
        BEGIN   efer, "LME set while paging is on", GP
        wrmsr
        END
        call    restore_efer
        movl    saved_cr0, %eax
        BEGIN   cr0, "PG cleared (legacy mode)", TAKEN
        movl    %eax, %cr0
        END

        /* ---- long mode ---- */
        call    save_efer
        orl     $EFER_LME, %eax
        BEGIN   efer, "LME set with paging off", TAKEN
        wrmsr
        END
        movl    %cr4, %eax
        andl    $~CR4_PAE, %eax
        movl    %eax, %cr4
        movl    saved_cr0, %eax
        orl     $CR0_PG, %eax
        BEGIN   cr0, "PG with LME set and PAE clear", GP
        movl    %eax, %cr0
        END
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    saved_cr0, %eax
        orl     $CR0_PG, %eax
        BEGIN   cr0, "PG with LME and PAE (long mode)", TAKEN
        movl    %eax, %cr0
        END
        cmpl    $0, gp_count
        jne     no_long_mode
        /* Long mode is active (compatibility mode): 64-bit IDT. */
        lidt    idt64_ptr
        movl    $MSR_EFER, %ecx
        rdmsr
        testl   $EFER_LMA, %eax
        HOLDS_IF nz, efer, "LMA set once paging is on"
        ljmp    $CODE64, $long64

        .code64
long64:
        movq    %cr0, %rax
        btsq    $32, %rax
        BEGIN   cr0, "bit 32 set", GP
        movq    %rax, %cr0
        END64
        movq    %cr0, %rax
        btrq    $31, %rax
        BEGIN   cr0, "PG cleared in 64-bit mode", GP
        movq    %rax, %cr0
        END64
        movq    %cr0, %rax
        orq     $CR0_TS, %rax
        BEGIN   cr0, "TS set in 64-bit mode", TAKEN
        movq    %rax, %cr0
        END64
        clts

        movq    %cr3, %rbx
        movl    max_phys, %ecx
        movq    %rbx, %rax
        btsq    %rcx, %rax
        BEGIN   cr3, "bit MAXPHYADDR set", GP
        movq    %rax, %cr3
        END64
        movq    %rbx, %rax
        btsq    $52, %rax
        BEGIN   cr3, "bit 52 set", GP
        movq    %rax, %cr3
        END64
        movq    %rbx, %rax
        btsq    $63, %rax
        BEGIN   cr3, "bit 63 set without PCIDE", GP
        movq    %rax, %cr3
        END64
        movq    %cr3, %rax
        cmpq    %rbx, %rax
        HOLDS_IF64 e, cr3, "unchanged after the refused writes"
        movq    %rbx, %rax
        BEGIN   cr3, "the same value again", TAKEN
        movq    %rax, %cr3
        END64

        movl    $MSR_EFER, %ecx
        rdmsr
        andl    $~EFER_LME, %eax
        BEGIN   efer, "LME cleared in long mode", GP
        wrmsr
        END64
        movl    $MSR_EFER, %ecx
        rdmsr
        andl    $~EFER_LMA, %eax
        BEGIN   efer, "LMA cleared in long mode", GP
        wrmsr
        END64
        movq    %cr4, %rax
        andq    $~CR4_PAE, %rax
        BEGIN   cr4, "PAE cleared in long mode", GP
        movq    %rax, %cr4
        END64

        /* Back to compatibility mode (CS 0x08, L=0). */
        pushq   $0x08
        pushq   $compat
        lretq

        .code32
compat:
        movl    saved_cr0, %eax
        BEGIN   cr0, "PG cleared in compatibility mode", TAKEN
        movl    %eax, %cr0
        END
        lidt    flat_idt_ptr
        movl    $MSR_EFER, %ecx
        rdmsr
        testl   $EFER_LMA, %eax
        HOLDS_IF z, efer, "LMA clear once paging is off"
        call    restore_efer
no_long_mode:
        call    restore_cr0
        call    flush
        movl    $msg_done, %esi
        call    puts
        movl    nrec, %eax
        call    putdec
        movl    $msg_checks, %esi
        call    puts
        jmp     poweroff

/* #GP: count, and resume where BEGIN said. */
gp32:
        addl    $4, %esp                /* the error code */
        pushl   %eax
        movl    resume, %eax
        movl    %eax, 4(%esp)
        popl    %eax
        incl    gp_count
        iret

        .code64
gp64:
        addq    $8, %rsp
        pushq   %rax
        movl    resume, %eax
        movq    %rax, 8(%rsp)
        popq    %rax
        incl    gp_count
        iretq

/* record64: record (below) from 64-bit code. */
record64:
        pushq   %rax
        pushq   %rdi
        movl    nrec, %edi
        shll    $4, %edi
        addl    $records, %edi
        movl    cur_reg, %eax
        movl    %eax, (%rdi)
        movl    cur_what, %eax
        movl    %eax, 4(%rdi)
        movl    cur_expect, %eax
        movl    %eax, 8(%rdi)
        cmpl    $HOLDS, %eax
        jne     1f
        movzbl  held, %eax
        jmp     2f
1:      movl    gp_count, %eax
2:      movl    %eax, 12(%rdi)
        incl    nrec
        popq    %rdi
        popq    %rax
        ret
        .code32

/* record: appends {reg, what, expected, got} to `records`; got is the
 * number of #GPs, or for HOLDS checks 1 if the condition held. */
record:
        pushal
        movl    nrec, %edi
        shll    $4, %edi
        addl    $records, %edi
        movl    cur_reg, %eax
        movl    %eax, (%edi)
        movl    cur_what, %eax
        movl    %eax, 4(%edi)
        movl    cur_expect, %eax
        movl    %eax, 8(%edi)
        cmpl    $HOLDS, %eax
        jne     1f
        movzbl  held, %eax
        jmp     2f
1:      movl    gp_count, %eax
2:      movl    %eax, 12(%edi)
        incl    nrec
        popal
        ret

/* flush: prints the records not printed yet. */
flush:
        pushal
1:      movl    nprinted, %ebx
        cmpl    nrec, %ebx
        jae     9f
        shll    $4, %ebx
        addl    $records, %ebx
        movl    (%ebx), %esi
        call    puts                    /* reg */
        movl    8(%ebx), %eax           /* expected */
        movl    12(%ebx), %edx          /* got */
        cmpl    $HOLDS, %eax
        je      5f
        cmpl    %eax, %edx
        jne     3f
        movl    $msg_ok, %esi
        call    puts
        movl    4(%ebx), %esi
        call    puts
        movl    $msg_arrow, %esi
        call    puts
        call    outcome
        jmp     8f
3:      movl    $msg_fail, %esi
        call    puts
        movl    4(%ebx), %esi
        call    puts
        movl    $msg_arrow, %esi
        call    puts
        call    outcome
        movl    $msg_expected, %esi
        call    puts
        movl    8(%ebx), %edx
        call    outcome
        jmp     8f
5:      movl    $msg_ok, %esi
        cmpl    $1, %edx
        je      6f
        movl    $msg_fail, %esi
6:      call    puts
        movl    4(%ebx), %esi
        call    puts
8:      movb    $'\n', %al
        call    putc
        incl    nprinted
        jmp     1b
9:      popal
        ret

/* outcome: prints "taken" for %edx = 0, "#GP" for 1, else "<n> #GPs". */
outcome:
        pushl   %esi
        movl    $msg_taken, %esi
        testl   %edx, %edx
        jz      1f
        movl    $msg_gp, %esi
        cmpl    $1, %edx
        je      1f
        movl    %edx, %eax
        call    putdec
        movl    $msg_gps, %esi
1:      call    puts
        popl    %esi
        ret

/* expect_feature: cur_expect = TAKEN if CPUID leaf %eax has bit %edx set
 * in register %ecx (R_EBX/R_ECX/R_EDX), else GP. */
expect_feature:
        pushal
        movl    %eax, %ebp
        movl    %ecx, %esi
        movl    %edx, %edi
        movl    $GP, cur_expect
        movl    %ebp, %eax
        andl    $0x80000000, %eax
        cpuid                           /* the highest leaf of its range */
        cmpl    %ebp, %eax
        jb      1f
        movl    %ebp, %eax
        xorl    %ecx, %ecx
        cpuid
        movl    %ebx, fregs
        movl    %ecx, fregs + 4
        movl    %edx, fregs + 8
        movl    fregs(,%esi,4), %eax
        btl     %edi, %eax
        jnc     1f
        movl    $TAKEN, cur_expect
1:      popal
        ret

/* expect_gp_on_intel: cur_expect = GP if CPUID's vendor is GenuineIntel,
 * else TAKEN. */
expect_gp_on_intel:
        pushal
        xorl    %eax, %eax
        cpuid
        movl    $TAKEN, cur_expect
        cmpl    $0x756e6547, %ebx       /* "Genu" */
        jne     1f
        cmpl    $0x6c65746e, %ecx       /* "ntel" */
        jne     1f
        movl    $GP, cur_expect
1:      popal
        ret

/* find_max_phys: max_phys = CPUID 0x8000_0008 EAX[7:0], or 36. */
find_max_phys:
        pushal
        movl    $0x80000000, %eax
        cpuid
        cmpl    $0x80000008, %eax
        jb      1f
        movl    $0x80000008, %eax
        cpuid
        movzbl  %al, %eax
        movl    %eax, max_phys
1:      popal
        ret

/* save_efer: saved_efer = EFER, left in %edx:%eax, %ecx = MSR_EFER. */
save_efer:
        movl    $MSR_EFER, %ecx
        rdmsr
        movl    %eax, saved_efer
        movl    %edx, saved_efer + 4
        ret

/* restore_efer: EFER = saved_efer (and left in %edx:%eax, %ecx = EFER). */
restore_efer:
        movl    $MSR_EFER, %ecx
        movl    saved_efer, %eax
        movl    saved_efer + 4, %edx
        wrmsr
        ret

restore_cr0:
        pushl   %eax
        movl    saved_cr0, %eax
        movl    %eax, %cr0
        popl    %eax
        ret

/* build_tables: identity map of the first GiB in 2 MiB pages, reached
 * from a PAE PDPT (legacy PAE paging) and from a PML4 (long mode). */
build_tables:
        pushal
        movl    $pd, %edi
        movl    $0x83, %eax             /* present, writable, 2 MiB */
        movl    $512, %ecx
1:      movl    %eax, (%edi)
        movl    $0, 4(%edi)
        addl    $0x200000, %eax
        addl    $8, %edi
        loop    1b
        movl    $pd + 1, pdpt_pae       /* PAE PDPTEs: present only */
        movl    $pd + 3, pdpt64
        movl    $pdpt64 + 3, pml4
        /* #GP gate: 64-bit interrupt gate to gp64 in CODE64. */
        movl    $gp64, %eax
        movl    $idt64 + 13 * 16, %edi
        movw    %ax, (%edi)
        movw    $CODE64, 2(%edi)
        movw    $0x8E00, 4(%edi)
        shrl    $16, %eax
        movw    %ax, 6(%edi)
        popal
        ret

        .section .rodata
msg_ok:         .asciz ": ok "
msg_fail:       .asciz ": FAIL "
msg_arrow:      .asciz " -> "
msg_expected:   .asciz ", expected "
msg_taken:      .asciz "taken"
msg_gp:         .asciz "#GP"
msg_gps:        .asciz " #GPs"
msg_done:       .asciz "cr: done "
msg_checks:     .asciz " checks\n"

        .data
        .balign 8
gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      /* 0x08: flat 32-bit code */
        .quad   0x00CF92000000FFFF      /* 0x10: flat data */
        .quad   0x00AF9A000000FFFF      /* 0x18: 64-bit code */
gdt_ptr:
        .word   4 * 8 - 1
        .long   gdt
        .balign 16
/* 64-bit IDT: vectors 0-13, only #GP filled in (by build_tables). */
idt64:
        .fill   14 * 16, 1, 0
idt64_ptr:
        .word   14 * 16 - 1
        .long   idt64
lmsw_word:  .word CR0_EM | CR0_PE
        .balign 4
gp_count:   .long 0
resume:     .long 0
cur_reg:    .long 0
cur_what:   .long 0
cur_expect: .long 0
held:       .byte 0
        .balign 4
nrec:       .long 0
nprinted:   .long 0
max_phys:   .long 36
saved_cr0:  .long 0
saved_efer: .long 0, 0
fregs:      .long 0, 0, 0
records:    .fill 64 * 16, 1, 0
        .balign 4096
pml4:       .fill 4096, 1, 0
pdpt64:     .fill 4096, 1, 0
pd:         .fill 4096, 1, 0
pdpt_pae:   .fill 32, 1, 0
