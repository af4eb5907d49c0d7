//! Per-CPU GDT and TSS, built with the `x86_64` crate's
//! `GlobalDescriptorTable` and `TaskStateSegment`. Every interrupt vector
//! runs on an IST stack (the prebuilt `core` uses the red zone, so an
//! interrupt must never push onto the interrupted stack).
//!
//! The layout is fixed, because other code names the selectors: the VMX
//! host state (HOST_CS/SS/DS/ES/TR selectors) and the IDT's gates. Null,
//! 64-bit code at `KERNEL_CS`, data at `KERNEL_DS`, the 16-byte TSS
//! descriptor at `TSS_SEL`. The crate's code and data descriptors have the
//! accessed bit preset (0x9B/0x93), so loading a segment never makes the CPU
//! write the table (see the Bochs notes on the AP trampoline); the table is
//! heap memory and writable anyway, as it must be for LTR, which marks the
//! TSS descriptor busy. Each CPU loads its TSS exactly once.

use alloc::boxed::Box;
use alloc::vec;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

/// IST slots (1-based, as in the IDT).
pub const IST_DEFAULT: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_NMI: u8 = 3;
pub const IST_MACHINE_CHECK: u8 = 4;

const IST_STACK_SIZE: usize = 32 * 1024;

/// The selector of a ring-0 GDT entry (`KERNEL_CS`, ...).
pub const fn kernel_selector(sel: u16) -> SegmentSelector {
    SegmentSelector::new(sel >> 3, PrivilegeLevel::Ring0)
}

/// One CPU's descriptor tables: null, code, data and a TSS (two entries).
pub struct CpuTables {
    gdt: GlobalDescriptorTable<5>,
    tss: &'static TaskStateSegment,
}

impl CpuTables {
    /// The GDT's linear (= physical) address, as GDTR holds it.
    pub fn gdt_base(&self) -> u64 {
        self.gdt.entries().as_ptr() as u64
    }

    /// The TSS's linear (= physical) address, as TR's base holds it.
    pub fn tss_base(&self) -> u64 {
        core::ptr::from_ref(self.tss) as u64
    }
}

/// Builds and loads this CPU's GDT and TSS (with fresh IST stacks).
pub fn init_cpu() -> &'static CpuTables {
    let mut tss = TaskStateSegment::new();
    for slot in [IST_DEFAULT, IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let stack = vec![0u8; IST_STACK_SIZE].leak();
        let top = (stack.as_ptr() as u64 + IST_STACK_SIZE as u64) & !0xF;
        tss.interrupt_stack_table[usize::from(slot) - 1] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let mut gdt = GlobalDescriptorTable::<5>::empty();
    let cs = gdt.append(Descriptor::kernel_code_segment());
    let ds = gdt.append(Descriptor::kernel_data_segment());
    let tr = gdt.append(Descriptor::tss_segment(tss));
    assert!(
        cs == kernel_selector(KERNEL_CS) && ds == kernel_selector(KERNEL_DS) && tr == kernel_selector(TSS_SEL),
        "GDT layout differs from the selector constants"
    );
    let tables: &'static CpuTables = Box::leak(Box::new(CpuTables { gdt, tss }));
    tables.gdt.load();
    // SAFETY: the GDT just loaded is leaked ('static, never modified again
    // but by the CPU's own accessed/busy bits) and holds a 64-bit code
    // segment at `cs`, a data segment at `ds` and an available TSS (with
    // valid IST stacks) at `tr`, loaded once on this CPU.
    unsafe {
        CS::set_reg(cs);
        DS::set_reg(ds);
        ES::set_reg(ds);
        SS::set_reg(ds);
        load_tss(tr);
    }
    tables
}
