//! Starting the other CPUs (INIT-SIPI-SIPI) through a real-mode trampoline.
//!
//! The trampoline code is copied to physical page `TRAMPOLINE_CODE` (mapped
//! read-execute) and reads its per-AP parameters from `TRAMPOLINE_DATA`
//! (read-write, never executable), so no page is ever writable and
//! executable.

use super::{apic, cpu, time};
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::registers::model_specific::Efer;

pub const TRAMPOLINE_CODE: u64 = 0x8000;
pub const TRAMPOLINE_DATA: u64 = 0x9000;

/// Parameters an AP reads while starting, at `TRAMPOLINE_DATA`.
#[repr(C)]
struct ApBootData {
    cr3: u32,
    efer: u32,
    stack_top: u64,
    entry: u64,
    arg: u64,
}

core::arch::global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .set TRAMP, 0x8000
    .set DATA, 0x9000
    .code16
ap_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (tramp_gdtr - ap_trampoline_start + TRAMP)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(tramp32 - ap_trampoline_start + TRAMP)

    .code32
tramp32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl (DATA + 0), %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl (DATA + 4), %eax
    wrmsr
    /* PG, WP, MP on; EM, TS off; CD/NW (30/29) off: an AP comes out of
     * INIT with caching disabled (CR0 = 0x60000010). */
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | (1 << 1)), %eax
    andl $~((1 << 2) | (1 << 3) | (1 << 29) | (1 << 30)), %eax
    movl %eax, %cr0
    ljmpl $0x18, $(tramp64 - ap_trampoline_start + TRAMP)

    .code64
tramp64:
    xorl %eax, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq (DATA + 8), %rsp
    movq (DATA + 24), %rdi
    movq (DATA + 16), %rax
    xorl %ebp, %ebp
    call *%rax
1:  hlt
    jmp 1b

    .balign 8
/* The accessed bits are preset (types 0x9B/0x93): loading a segment whose
 * descriptor lacks it makes the CPU write it, and this page is read-only
 * once paging is on, so real CPUs (and Bochs) would page-fault with no IDT
 * yet: a triple fault. QEMU's TCG does not write the bit. */
tramp_gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF93000000FFFF    /* 0x10: data */
    .quad 0x00AF9B000000FFFF    /* 0x18: 64-bit code */
tramp_gdt_end:
tramp_gdtr:
    .word tramp_gdt_end - tramp_gdt - 1
    .long tramp_gdt - ap_trampoline_start + TRAMP
ap_trampoline_end:
    .code64
    "#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The trampoline's machine code, to be copied to `TRAMPOLINE_CODE`.
pub fn trampoline_code() -> &'static [u8] {
    // SAFETY: both symbols delimit the trampoline in .rodata.
    unsafe { super::blob_between(core::ptr::addr_of!(ap_trampoline_start), core::ptr::addr_of!(ap_trampoline_end)) }
}

static AP_ALIVE: AtomicBool = AtomicBool::new(false);

/// Called by an AP as soon as it runs Rust code on its own stack.
pub fn signal_alive() {
    AP_ALIVE.store(true, Ordering::SeqCst);
}

/// Starts one AP and waits (up to a second) until it reports alive.
/// Returns whether it came up.
pub fn start_one(apic_id: u32, stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> bool {
    let efer = Efer::read_raw();
    let data = ApBootData {
        cr3: cpu::read_cr3() as u32,
        efer: (efer & ((1 << 8) | (1 << 11))) as u32,
        stack_top,
        entry: entry as usize as u64,
        arg,
    };
    AP_ALIVE.store(false, Ordering::SeqCst);
    // SAFETY: TRAMPOLINE_DATA is a reserved low page, identity mapped
    // writable, used only here, and one AP starts at a time.
    unsafe { core::ptr::write_volatile(TRAMPOLINE_DATA as *mut ApBootData, data) };
    apic::start_ap(apic_id, (TRAMPOLINE_CODE >> 12) as u8);
    let deadline = time::uptime_us() + 1_000_000;
    while !AP_ALIVE.load(Ordering::SeqCst) {
        if time::uptime_us() > deadline {
            return false;
        }
        cpu::pause();
    }
    true
}
