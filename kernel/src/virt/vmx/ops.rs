//! The generic vCPU interface (`VcpuOps`) on a VMX vCPU: what the run
//! loop, domains and the self-test do to it.

use super::*;

impl VcpuOps for VmxVcpu {
    fn state_check(&self) -> Option<ferrite_x86::StateCheck> {
        self.state_check
    }

    fn run(&mut self) -> VmExit {
        if !self.config.unrestricted && self.st.cr0 & CR0_PE == 0 {
            return VmExit::Unsupported("real mode (this CPU's VMX has no unrestricted guest)");
        }
        loop {
            let exit = self.run_once();
            if !self.emulate_unpaged_cr3() {
                return exit;
            }
        }
    }

    fn switch_debug_regs(&mut self) {
        if self.debug_regs.is_none() {
            self.debug_regs = Some([0; 4]);
            self.proc &= !PROC_MOV_DR;
        }
    }

    fn release_fpu(&mut self) {
        if self.fpu_loaded {
            self.guest_fpu.save();
            for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall_msrs.iter_mut()) {
                *v = rdmsr(*m);
            }
            self.fpu_loaded = false;
        }
        self.clear_vmcs();
    }

    fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn reset_real_mode(&mut self, cs_selector: u16, ip: u16) {
        let data = Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x93 };
        let mut segs = [data; 6];
        segs[1] = Segment { selector: cs_selector, base: u64::from(cs_selector) << 4, limit: 0xFFFF, attrib: 0x9B };
        self.set_tables(Tables {
            segs,
            gdtr: Segment { limit: 0xFFFF, ..Default::default() },
            idtr: Segment { limit: 0xFFFF, ..Default::default() },
            ldtr: Segment { limit: 0xFFFF, attrib: 0x82, ..Default::default() },
            tr: Segment { limit: 0xFFFF, attrib: 0x8B, ..Default::default() },
            sysenter: [0; 3],
        });
        self.st.interruptibility = 0;
        self.inject = 0;
        self.proc &= !(PROC_INTERRUPT_WINDOW | PROC_NMI_WINDOW);
        self.st.cr0 = 0x10;
        self.st.cr2 = 0;
        self.st.cr3 = 0;
        self.st.cr4 = 0;
        self.st.efer = 0;
        self.st.pdpte = [0; 4];
        self.regs = GuestRegs { rip: u64::from(ip), rflags: 2, rdx: 0x600, ..Default::default() };
        self.guest_xcr0 = 1;
        self.dirty = true;
    }

    fn set_entry_state(&mut self, st: &EntryState) {
        self.reset_real_mode(0, 0);
        let mut t = *self.tables();
        t.segs = [st.ds; 6];
        t.segs[1] = st.cs;
        t.tr = st.tr;
        t.gdtr = Segment { base: st.gdtr_base, limit: u32::from(st.gdtr_limit), ..Default::default() };
        t.idtr = Segment::default();
        self.set_tables(t);
        self.st.cr0 = st.cr0;
        self.st.cr3 = st.cr3;
        self.st.cr4 = st.cr4;
        self.st.efer = st.efer;
        self.regs = GuestRegs { rip: st.rip, rbx: st.rbx, rsi: st.rsi, rdi: st.rdi, rflags: st.rflags | 2, ..Default::default() };
        self.dirty = true;
    }

    fn efer(&self) -> u64 {
        self.st.efer
    }

    fn set_efer(&mut self, efer: u64) {
        self.st.efer = efer;
        self.dirty = true;
    }

    fn set_cr0(&mut self, value: u64) {
        if ferrite_x86::cr::cr0_change_flushes_tlb(self.st.cr0, value) {
            self.flush_tlb = true;
        }
        self.st.cr0 = value;
        self.dirty = true;
    }

    fn set_cr4(&mut self, value: u64) {
        if ferrite_x86::cr::cr4_change_flushes_tlb(self.st.cr4, value) {
            self.flush_tlb = true;
        }
        self.st.cr4 = value;
        self.dirty = true;
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        if !self.can_inject() {
            // An event whose delivery the exit cut short goes first.
            return;
        }
        let mut event = u32::from(vector) | EVENT_HW_EXCEPTION | EVENT_VALID;
        // In real mode exceptions push no error code (VM entry insists).
        if let (Some(code), true) = (error_code, self.st.cr0 & CR0_PE != 0) {
            event |= EVENT_ERROR_CODE;
            self.inject_error = code;
        }
        self.inject = event;
        self.inject_len = 0;
    }

    fn inject_single_step(&mut self) {
        self.st.dr6 = (self.st.dr6 & !DR6_B0_B3) | DR6_BS;
        self.st.dr7 &= !DR7_GD;
        self.dirty = true;
        self.inject_exception(DB_VECTOR, None);
    }

    fn clear_interrupt_shadow(&mut self) {
        if self.st.interruptibility & (INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS) != 0 {
            self.st.interruptibility &= !(INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS);
        }
    }

    fn inject_nmi(&mut self) -> bool {
        if !self.can_inject() || self.st.interruptibility & (INTERRUPTIBILITY_NMI | INTERRUPTIBILITY_MOV_SS | INTERRUPTIBILITY_STI) != 0 {
            return false;
        }
        // The CPU blocks NMIs from this delivery until the handler's IRET.
        self.inject = 2 | EVENT_NMI | EVENT_VALID;
        self.inject_len = 0;
        true
    }

    fn iret_intercepted(&mut self) {}

    fn inject_page_fault(&mut self, address: u64, error_code: u32) {
        if !self.can_inject() {
            return;
        }
        self.st.cr2 = address;
        self.inject_exception(PF_VECTOR, Some(error_code));
    }

    fn set_xcr0(&mut self, xcr0: u64) {
        self.guest_xcr0 = xcr0;
    }

    fn xcr0(&self) -> u64 {
        self.guest_xcr0
    }

    fn guest_pat(&self) -> u64 {
        self.st.pat
    }

    fn set_guest_pat(&mut self, value: u64) {
        self.st.pat = value;
        self.dirty = true;
    }

    fn has_tsc_aux(&self) -> bool {
        self.tsc_aux.is_some()
    }

    fn tsc_aux(&self) -> u64 {
        self.tsc_aux.unwrap_or(0)
    }

    fn set_tsc_aux(&mut self, value: u64) {
        if self.tsc_aux.is_some() {
            self.tsc_aux = Some(value & 0xFFFF_FFFF);
        }
    }

    fn xmm(&self, index: u8) -> [u8; 16] {
        self.sse.xmm[usize::from(index & 15)]
    }

    fn set_xmm(&mut self, index: u8, value: [u8; 16]) {
        self.sse.xmm[usize::from(index & 15)] = value;
    }

    fn interruptible(&self) -> bool {
        self.regs.rflags & RFLAGS_IF != 0 && !self.in_interrupt_shadow() && !self.event_pending()
    }

    fn in_interrupt_shadow(&self) -> bool {
        self.st.interruptibility & (INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS) != 0
    }

    fn event_pending(&self) -> bool {
        self.inject & EVENT_VALID != 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.inject = u32::from(vector) | EVENT_EXTERNAL | EVENT_VALID;
        self.inject_len = 0;
    }

    fn request_interrupt_window(&mut self, on: bool) {
        if on {
            self.proc |= PROC_INTERRUPT_WINDOW;
            let virtual_nmis = self.config.pin & PIN_VIRTUAL_NMIS != 0;
            if virtual_nmis && self.st.interruptibility & INTERRUPTIBILITY_NMI != 0 && self.config.proc_may & PROC_NMI_WINDOW != 0 {
                // An NMI may be what waits: exit once the handler's IRET ran.
                self.proc |= PROC_NMI_WINDOW;
            }
        } else {
            self.proc &= !(PROC_INTERRUPT_WINDOW | PROC_NMI_WINDOW);
        }
    }

    fn cr8(&self) -> u8 {
        // SAFETY: the virtual-APIC page is this vCPU's, identity mapped; the
        // CPU keeps the guest's CR8 in VTPR (offset 0x80, bits 7:4).
        (unsafe { ((self.vapic_pa + 0x80) as *const u32).read_volatile() } >> 4) as u8 & 0xF
    }

    fn set_cr8(&mut self, cr8: u8) {
        // SAFETY: as in `cr8`.
        unsafe { ((self.vapic_pa + 0x80) as *mut u32).write_volatile(u32::from(cr8 & 0xF) << 4) };
    }

    fn intercept_cr8_writes(&mut self, on: bool) {
        if on {
            self.proc |= PROC_CR8_LOAD;
        } else {
            self.proc &= !PROC_CR8_LOAD;
        }
    }

    fn paging_state(&self) -> PagingState {
        PagingState { cr0: self.st.cr0, cr3: self.st.cr3, cr4: self.st.cr4, efer: self.st.efer }
    }

    fn code_segment(&self) -> Segment {
        self.tables().segs[1]
    }

    fn describe_state(&self) -> alloc::string::String {
        let t = self.tables();
        alloc::format!(
            "rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x} tr {:#x} base {:#x} exit {} qual {:#x} inject {:#x} interruptibility {:#x} proc {:#x}",
            self.regs.rsp,
            self.regs.rflags,
            t.segs[1].selector,
            self.st.cr0,
            self.st.cr2,
            self.st.cr3,
            self.st.cr4,
            self.st.efer,
            t.idtr.base,
            t.idtr.limit,
            t.tr.selector,
            t.tr.base,
            self.exit.reason,
            self.exit.qualification,
            self.inject,
            self.st.interruptibility,
            self.proc,
        )
    }

    fn set_tsc_offset(&mut self, offset: u64) {
        self.tsc_offset = offset;
    }

    fn segment(&self, index: u8) -> Segment {
        self.tables().segs[usize::from(index.min(5))]
    }

    fn keeps_pae_pdptes(&self) -> bool {
        true
    }

    fn set_pae_pdptes(&mut self, pdptes: [u64; 4]) {
        self.st.pdpte = pdptes;
        self.dirty = true;
    }

    fn set_segment(&mut self, index: u8, seg: Segment) {
        let mut t = *self.tables();
        t.segs[usize::from(index.min(5))] = seg;
        self.set_tables(t);
    }

    fn system_segments(&self) -> crate::virt::SystemSegments {
        let t = self.tables();
        crate::virt::SystemSegments { ldtr: t.ldtr, tr: t.tr, gdtr: t.gdtr }
    }

    fn set_ldtr(&mut self, seg: Segment) {
        let mut t = *self.tables();
        t.ldtr = seg;
        self.set_tables(t);
    }

    fn set_tr(&mut self, seg: Segment) {
        let mut t = *self.tables();
        t.tr = seg;
        self.set_tables(t);
    }

    fn set_cr3(&mut self, cr3: u64) {
        // A CR3 written into the VMCS flushes nothing: the guest's MOV to
        // CR3 would have flushed its VPID's non-global entries.
        self.st.cr3 = cr3;
        self.flush_tlb = true;
        self.dirty = true;
    }
}
