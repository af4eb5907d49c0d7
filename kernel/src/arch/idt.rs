//! The interrupt descriptor table, shared by all CPUs, and the exception and
//! interrupt dispatch.
//!
//! Exceptions in the hypervisor are bugs: they are reported with the
//! faulting state and stop the machine. Interrupts are only used to wake
//! idle CPUs (an IPI) and to stop them on panic (an NMI).

use super::gdt::{IST_DEFAULT, IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use core::sync::atomic::{AtomicBool, Ordering};

/// An IPI that makes another CPU leave the guest or its idle halt.
pub const VECTOR_WAKEUP: u8 = 0xF0;
/// This CPU's APIC timer (scheduler ticks and guest timer deadlines).
pub const VECTOR_TIMER: u8 = 0xF1;
pub const VECTOR_SPURIOUS: u8 = 0xFF;

/// Set by the panic path: an NMI then stops the CPU that receives it.
pub static STOP_ALL: AtomicBool = AtomicBool::new(false);

/// Register state pushed by the interrupt stubs.
#[repr(C)]
#[derive(Debug)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call isr_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    static isr_stubs: u8;
}

#[repr(C, align(16))]
struct Idt([u128; 256]);

static mut IDT: Idt = Idt([0; 256]);

fn gate(handler: u64, ist: u8) -> u128 {
    let low = (handler & 0xFFFF)
        | (u64::from(KERNEL_CS) << 16)
        | (u64::from(ist) << 32)
        | (0x8E << 40) // present, DPL 0, 64-bit interrupt gate
        | (((handler >> 16) & 0xFFFF) << 48);
    u128::from(low) | (u128::from(handler >> 32) << 64)
}

/// Fills the IDT (once, on the boot CPU).
pub fn init() {
    // `isr_stubs` is the start of 256 16-byte aligned stubs defined above.
    let base = core::ptr::addr_of!(isr_stubs) as u64;
    for vector in 0..256u64 {
        let ist = match vector {
            2 => IST_NMI,
            8 => IST_DOUBLE_FAULT,
            18 => IST_MACHINE_CHECK,
            _ => IST_DEFAULT,
        };
        // SAFETY: called once on the boot CPU before any other CPU runs or
        // loads the IDT, so there is no concurrent access.
        unsafe { (*core::ptr::addr_of_mut!(IDT)).0[vector as usize] = gate(base + vector * 16, ist) };
    }
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: (256 * 16 - 1) as u16, base: core::ptr::addr_of!(IDT) as u64 };
    // SAFETY: the IDT is static and fully initialised by `init`.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack)) };
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
    "device not available", "double fault", "coprocessor overrun", "invalid TSS",
    "segment not present", "stack fault", "general protection", "page fault", "reserved",
    "x87 error", "alignment check", "machine check", "SIMD error", "virtualization",
    "control protection", "reserved", "reserved", "reserved", "reserved", "reserved",
    "reserved", "hypervisor injection", "VMM communication", "security", "reserved",
];

#[no_mangle]
extern "C" fn isr_dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as u8;
    match vector {
        2 if STOP_ALL.load(Ordering::SeqCst) => crate::arch::cpu::halt_forever(),
        VECTOR_SPURIOUS => {}
        VECTOR_TIMER => {
            // The one-shot timer is spent: nothing is armed any more.
            super::percpu::current().timer_deadline_ns.store(0, Ordering::Relaxed);
            super::apic::eoi();
        }
        32..=0xFE => super::apic::eoi(),
        0..=31 => {
            let cr2: u64;
            // SAFETY: reading CR2 has no side effects.
            unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
            panic!(
                "hypervisor exception {} ({}) error {:#x} at rip {:#x} cr2 {:#x} rsp {:#x}\n{:#x?}",
                vector, EXCEPTION_NAMES[vector as usize], frame.error_code, frame.rip, cr2, frame.rsp, frame
            );
        }
    }
}
