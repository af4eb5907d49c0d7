//! The interrupt descriptor table, shared by all CPUs, and the exception and
//! interrupt dispatch.
//!
//! Exceptions in the hypervisor are bugs: they are reported with the
//! faulting state and stop the machine. Interrupts are only used to wake
//! idle CPUs (an IPI) and to stop them on panic (an NMI).

use super::gdt::{kernel_selector, IST_DEFAULT, IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{EntryOptions, InterruptDescriptorTable};
use x86_64::VirtAddr;

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

/// The IDT, built once by `init` and then only read (by every CPU's IDTR).
static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// The gate for `vector`, or None for the vectors the architecture
/// reserves (9, 15, 22-27, 31), which the crate's table keeps not present:
/// no CPU raises them, and a stray one would show up as a #NP naming it.
fn entry(idt: &mut InterruptDescriptorTable, vector: u8, handler: VirtAddr) -> Option<&mut EntryOptions> {
    // SAFETY: (every arm) `handler` is this vector's stub in `isr_stubs`,
    // which pushes the error code the CPU does not (so every stub leaves
    // the same frame) and never returns to the CPU but through IRETQ.
    let options = unsafe {
        match vector {
            0 => idt.divide_error.set_handler_addr(handler),
            1 => idt.debug.set_handler_addr(handler),
            2 => idt.non_maskable_interrupt.set_handler_addr(handler),
            3 => idt.breakpoint.set_handler_addr(handler),
            4 => idt.overflow.set_handler_addr(handler),
            5 => idt.bound_range_exceeded.set_handler_addr(handler),
            6 => idt.invalid_opcode.set_handler_addr(handler),
            7 => idt.device_not_available.set_handler_addr(handler),
            8 => idt.double_fault.set_handler_addr(handler),
            10 => idt.invalid_tss.set_handler_addr(handler),
            11 => idt.segment_not_present.set_handler_addr(handler),
            12 => idt.stack_segment_fault.set_handler_addr(handler),
            13 => idt.general_protection_fault.set_handler_addr(handler),
            14 => idt.page_fault.set_handler_addr(handler),
            16 => idt.x87_floating_point.set_handler_addr(handler),
            17 => idt.alignment_check.set_handler_addr(handler),
            18 => idt.machine_check.set_handler_addr(handler),
            19 => idt.simd_floating_point.set_handler_addr(handler),
            20 => idt.virtualization.set_handler_addr(handler),
            21 => idt.cp_protection_exception.set_handler_addr(handler),
            28 => idt.hv_injection_exception.set_handler_addr(handler),
            29 => idt.vmm_communication_exception.set_handler_addr(handler),
            30 => idt.security_exception.set_handler_addr(handler),
            32..=255 => idt[vector].set_handler_addr(handler),
            _ => return None,
        }
    };
    Some(options)
}

/// Fills the IDT (once, on the boot CPU): every vector's gate points at
/// its stub, in `KERNEL_CS`, as a DPL 0 interrupt gate on an IST stack.
pub fn init() {
    // `isr_stubs` is the start of 256 16-byte aligned stubs defined above.
    let base = core::ptr::addr_of!(isr_stubs) as u64;
    IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        for vector in 0..=255u8 {
            let ist = match vector {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => IST_DEFAULT,
            };
            let Some(options) = entry(&mut idt, vector, VirtAddr::new(base + u64::from(vector) * 16)) else { continue };
            // SAFETY: KERNEL_CS is the 64-bit code segment of every CPU's
            // GDT (`gdt::init_cpu`), and the IST slot has a stack in every
            // CPU's TSS. Interrupt gates keep IF clear, so the vectors
            // sharing IST_DEFAULT nest only through an exception inside a
            // handler, which is fatal anyway; NMI, #DF and #MC, which can
            // arrive inside a handler, have stacks of their own.
            unsafe {
                options.set_code_selector(kernel_selector(KERNEL_CS)).set_stack_index(u16::from(ist) - 1);
            }
        }
        idt
    });
}

/// Loads the IDT on this CPU.
pub fn load() {
    IDT.get().expect("idt::init runs before any CPU loads the IDT").load();
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
            let cr2 = Cr2::read_raw();
            panic!(
                "hypervisor exception {} ({}) error {:#x} at rip {:#x} cr2 {:#x} rsp {:#x}\n{:#x?}",
                vector, EXCEPTION_NAMES[vector as usize], frame.error_code, frame.rip, cr2, frame.rsp, frame
            );
        }
    }
}
