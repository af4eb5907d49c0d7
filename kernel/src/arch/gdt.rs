//! Per-CPU GDT and TSS. Every interrupt vector runs on an IST stack (the
//! prebuilt `core` uses the red zone, so an interrupt must never push onto
//! the interrupted stack).

use alloc::boxed::Box;
use alloc::vec;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

/// IST slots (1-based, as in the IDT).
pub const IST_DEFAULT: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_NMI: u8 = 3;
pub const IST_MACHINE_CHECK: u8 = 4;

const IST_STACK_SIZE: usize = 32 * 1024;

#[repr(C, packed(4))]
#[derive(Default)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 5],
    tss: Tss,
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Builds and loads this CPU's GDT and TSS (with fresh IST stacks).
pub fn init_cpu() -> &'static CpuTables {
    let mut tss = Tss { iomap_base: core::mem::size_of::<Tss>() as u16, ..Default::default() };
    for slot in [IST_DEFAULT, IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let stack = vec![0u8; IST_STACK_SIZE].leak();
        let top = (stack.as_ptr() as u64 + IST_STACK_SIZE as u64) & !0xF;
        tss.ist[usize::from(slot) - 1] = top;
    }
    let tables = Box::leak(Box::new(CpuTables { gdt: [0; 5], tss }));
    let tss_addr = core::ptr::addr_of!(tables.tss) as u64;
    let tss_limit = (core::mem::size_of::<Tss>() - 1) as u64;
    tables.gdt[1] = 0x00AF_9A00_0000_FFFF; // 64-bit code, DPL 0
    tables.gdt[2] = 0x00CF_9200_0000_FFFF; // data
    tables.gdt[3] = (tss_limit & 0xFFFF)
        | ((tss_addr & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((tss_limit >> 16) & 0xF) << 48)
        | (((tss_addr >> 24) & 0xFF) << 56);
    tables.gdt[4] = tss_addr >> 32;
    let ptr = Pointer { limit: (core::mem::size_of_val(&tables.gdt) - 1) as u16, base: tables.gdt.as_ptr() as u64 };
    // SAFETY: the GDT is leaked ('static) and holds valid code/data/TSS
    // descriptors at the selectors loaded here; the far return reloads CS.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "mov ax, {ds}",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            ds = const KERNEL_DS,
            cs = const KERNEL_CS as u64,
            tss = in(reg) TSS_SEL,
            tmp = out(reg) _,
            out("ax") _,
        );
    }
    tables
}
