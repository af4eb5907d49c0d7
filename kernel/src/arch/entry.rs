//! The hypervisor's first instructions: the multiboot1/multiboot2 headers,
//! the Xen PVH ELF note, and the 32-bit entry paths that build boot page
//! tables, enter long mode, enable SSE and call `kmain`.
//!
//! All three loaders enter in 32-bit protected mode with paging off. The
//! boot page tables identity-map the first 4 GiB with 2 MiB pages; the memory
//! module replaces them with W^X tables once Rust code runs.

/// Boot protocol hint handed to `kmain` (PVH has no magic in eax).
pub const ENTRY_MULTIBOOT: u32 = 0;
pub const ENTRY_PVH: u32 = 1;

core::arch::global_asm!(
    r#"
    .set MB1_MAGIC, 0x1BADB002
    /* page-align modules (bit 0), memory info (bit 1), a.out kludge (bit 16) */
    .set MB1_FLAGS, 0x00010003
    .set MB2_MAGIC, 0xE85250D6

    .section .multiboot_headers, "a"
    .balign 8
mb1_header:
    .long MB1_MAGIC
    .long MB1_FLAGS
    .long -(MB1_MAGIC + MB1_FLAGS)
    .long mb1_header            /* header_addr */
    .long __image_start         /* load_addr */
    .long __load_end            /* load_end_addr */
    .long __image_end           /* bss_end_addr */
    .long _start32_multiboot    /* entry_addr */

    .balign 8
mb2_header:
    .long MB2_MAGIC
    .long 0                     /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header
    .long -(MB2_MAGIC + 0 + (mb2_header_end - mb2_header))
    /* entry address tag */
    .balign 8
    .word 3, 0
    .long 12
    .long _start32_multiboot
    /* module alignment tag: page-align modules */
    .balign 8
    .word 6, 0
    .long 8
    /* end tag */
    .balign 8
    .word 0, 0
    .long 8
mb2_header_end:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32_pvh
    .balign 4

    .section .boot.data, "aw"
    .balign 8
boot_magic:     .long 0
boot_info:      .long 0
boot_protocol:  .long 0
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00209A0000000000    /* 0x08: 64-bit code */
    .quad 0x0000920000000000    /* 0x10: data */
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .boot.text, "ax"
    .code32
    .global _start32_multiboot
_start32_multiboot:
    cli
    cld
    movl %eax, boot_magic
    movl %ebx, boot_info
    movl ${multiboot}, boot_protocol
    jmp start32_common

    .global _start32_pvh
_start32_pvh:
    cli
    cld
    movl $0x336ec578, boot_magic
    movl %ebx, boot_info
    movl ${pvh}, boot_protocol

start32_common:
    /* Zero .bss (page tables and stacks live there). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    movl $boot_stack_top, %esp

    /* Long mode and NX are required; without them there is nothing to do. */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode
    movl %edx, %ebp             /* keep NX support bit (20) */

    /* PML4[0] -> PDPT; PDPT[0..4] -> four PDs of 2 MiB pages = 4 GiB. */
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 1b
    xorl %ecx, %ecx
2:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax             /* present, writable, 2 MiB */
    movl %eax, boot_pd(,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax              /* high dword: (i << 21) >> 32 */
    movl %eax, boot_pd+4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b

    /* CR4: PAE, OSFXSR, OSXMMEXCPT (SSE before any Rust code). */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    /* EFER: LME, plus NXE when the CPU has NX. */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    testl $(1 << 20), %ebp
    jz 3f
    orl $(1 << 11), %eax
3:
    wrmsr
    /* CR0: PG, PE, MP; clear EM (x87 emulation) and TS, and CD/NW (30/29):
     * firmware may hand over a CPU with caching off. */
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 0) | (1 << 1)), %eax
    andl $~((1 << 2) | (1 << 3) | (1 << 29) | (1 << 30)), %eax
    movl %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $long_mode_entry

no_long_mode:
    /* Tell the serial port, then stop. */
    movl $no_lm_msg, %esi
4:
    movb (%esi), %al
    testb %al, %al
    jz 5f
    movw $0x3F8, %dx
    outb %al, %dx
    incl %esi
    jmp 4b
5:
    hlt
    jmp 5b
no_lm_msg:
    .asciz "ferrite: this CPU has no long mode; Ferrite needs an x86_64 CPU\r\n"

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl boot_magic(%rip), %edi
    movl boot_info(%rip), %esi
    movl boot_protocol(%rip), %edx
    call kmain
6:
    cli
    hlt
    jmp 6b

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096 * 4
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 256 * 1024
    .global boot_stack_top
boot_stack_top:
    "#,
    multiboot = const ENTRY_MULTIBOOT,
    pvh = const ENTRY_PVH,
    options(att_syntax)
);
