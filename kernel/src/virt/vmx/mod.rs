//! Intel VMX backend: detection (VMX, IA32_FEATURE_CONTROL, the true
//! controls, EPT, VPID, unrestricted guest, TPR shadow), VMXON per CPU,
//! the VMCS-based vCPU, `vmx_run` (VMLAUNCH/VMRESUME) and exit decoding
//! into the generic `VmExit`.
//!
//! The vCPU keeps a software copy of the guest state it may change
//! (control registers, segments, descriptor tables, interruptibility) and
//! writes it into the VMCS before an entry when it changed; after every
//! exit the state the guest can change without an exit is read back. So
//! `VcpuOps` accessors never touch the VMCS, which is current only on the
//! CPU running the vCPU. A VMCS is loaded (VMPTRLD) at a slice's first
//! entry and cleared (VMCLEAR) when the slice ends (`release_fpu`), so a
//! vCPU can run on any CPU next.
//!
//! Files: `setup.rs` (detection, VMXON), `entry.rs` (`vmx_run`), this
//! file (the vCPU: VMCS set-up, guest state in and out, one entry),
//! `exits.rs` (exit decoding), `ops.rs` (`VcpuOps`), `invalid.rs` (a
//! failed entry named), `vmcs.rs` (field encodings, VMX instructions).

mod entry;
mod exits;
mod invalid;
mod ops;
mod setup;
mod vmcs;

use self::entry::vmx_run;
use self::setup::{VmxConfig, CONFIG, NEXT_TOKEN, VMX_CPUS};
pub(super) use self::setup::{detect, enable_cpu, enabled_on_this_cpu};
use self::vmcs::*;
use super::{BackendKind, Capabilities, DetectError, EntryState, GuestRegs, PagingState, Segment, VcpuOps, VmExit};
use crate::arch::cpu::{self, msr};
use crate::arch::fpu::{self, FpuState, SseRegs};
use crate::arch::percpu::{self, MAX_CPUS};
use crate::mm;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::interrupts;
use x86_64::instructions::tables::sidt;
use x86_64::registers::control::Cr2;
use x86_64::registers::debug::{DebugAddressRegister, Dr0, Dr1, Dr2, Dr3, Dr6};
use x86_64::registers::model_specific::{Efer, FsBase, GsBase};
use x86_64::registers::xcontrol::XCr0;

const CR0_PE: u64 = 1;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;

const INTERRUPTIBILITY_STI: u32 = 1 << 0;
const INTERRUPTIBILITY_MOV_SS: u32 = 1 << 1;
const INTERRUPTIBILITY_NMI: u32 = 1 << 3;

const EVENT_VALID: u32 = 1 << 31;
const EVENT_ERROR_CODE: u32 = 1 << 11;
const EVENT_EXTERNAL: u32 = 0 << 8;
const EVENT_NMI: u32 = 2 << 8;
const EVENT_HW_EXCEPTION: u32 = 3 << 8;

const DB_VECTOR: u8 = 1;
const UD_VECTOR: u8 = 6;
const PF_VECTOR: u8 = 14;
const AC_VECTOR: u8 = 17;
const DR6_B0_B3: u64 = 0xF;
const DR6_BS: u64 = 1 << 14;
const DR7_GD: u64 = 1 << 13;

/// The MSRs a VMX exit does not switch that Linux-style guests own
/// (STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE): the hypervisor never uses
/// them, so they hold the guest's values while a slice runs and are saved
/// when it ends.
const SYSCALL_MSRS: [u32; 5] = [0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102];

fn rdmsr(index: u32) -> u64 {
    // SAFETY: only called with architectural MSRs that exist on every CPU
    // with VMX (the VMX capability MSRs after CPUID.1:ECX.VMX was checked,
    // FEATURE_CONTROL, PAT, EFER, FS/GS base, SYSENTER, the syscall MSRs).
    unsafe { cpu::rdmsr(index) }
}


/// The guest state the vCPU keeps outside the VMCS (see the module
/// comment). `cr0`/`cr4` are what the guest sees (the read shadows); the
/// VMCS holds them with the bits VMX requires.
#[derive(Clone, Copy, Debug, Default)]
struct GuestState {
    cr0: u64,
    /// Not in the VMCS: the CPU's own CR2 holds it while the guest runs.
    cr2: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    dr6: u64,
    dr7: u64,
    pat: u64,
    interruptibility: u32,
    pdpte: [u64; 4],
}

/// The segment registers, descriptor tables and SYSENTER MSRs: state the
/// guest changes without exits but the run loop rarely needs, so after an
/// exit it is read from the VMCS only when asked for (`VmxVcpu::tables`),
/// or when the slice ends.
#[derive(Clone, Copy, Debug, Default)]
struct Tables {
    /// ES, CS, SS, DS, FS, GS.
    segs: [Segment; 6],
    ldtr: Segment,
    tr: Segment,
    gdtr: Segment,
    idtr: Segment,
    sysenter: [u64; 3],
}

fn read_tables() -> Tables {
    let mut t = Tables::default();
    for (i, seg) in t.segs.iter_mut().enumerate() {
        let off = 2 * i as u32;
        *seg = Segment {
            selector: read(GUEST_ES_SEL + off) as u16,
            base: read(GUEST_ES_BASE + off),
            limit: read(GUEST_ES_LIMIT + off) as u32,
            attrib: from_access_rights(read(GUEST_ES_AR + off)),
        };
    }
    t.ldtr = Segment {
        selector: read(GUEST_LDTR_SEL) as u16,
        base: read(GUEST_LDTR_BASE),
        limit: read(GUEST_LDTR_LIMIT) as u32,
        attrib: from_access_rights(read(GUEST_LDTR_AR)),
    };
    t.tr = Segment {
        selector: read(GUEST_TR_SEL) as u16,
        base: read(GUEST_TR_BASE),
        limit: read(GUEST_TR_LIMIT) as u32,
        attrib: from_access_rights(read(GUEST_TR_AR)),
    };
    t.gdtr = Segment { base: read(GUEST_GDTR_BASE), limit: read(GUEST_GDTR_LIMIT) as u32, ..Default::default() };
    t.idtr = Segment { base: read(GUEST_IDTR_BASE), limit: read(GUEST_IDTR_LIMIT) as u32, ..Default::default() };
    t.sysenter = [read(GUEST_SYSENTER_CS), read(GUEST_SYSENTER_ESP), read(GUEST_SYSENTER_EIP)];
    t
}

/// What the last exit reported.
#[derive(Clone, Copy, Debug, Default)]
struct ExitInfo {
    reason: u32,
    qualification: u64,
    instruction_len: u64,
    instruction_info: u32,
    intr_info: u32,
    intr_error: u32,
    gpa: u64,
    /// IDT-vectoring information and error code: the event whose
    /// delivery the exit cut short.
    vectoring: u32,
    vectoring_error: u32,
}

/// One virtual CPU under VMX.
pub struct VmxVcpu {
    /// Why the last `InvalidState` exit happened (`VcpuOps::state_check`).
    state_check: Option<ferrite_x86::StateCheck>,
    vmcs_pa: u64,
    msr_bitmap_pa: u64,
    vapic_pa: u64,
    iopm_pa: u64,
    eptp: u64,
    vpid: u16,
    config: VmxConfig,
    regs: GuestRegs,
    st: GuestState,
    /// See `Tables`; valid while `tables_fresh`, else in the VMCS (which
    /// is then current on the CPU running this vCPU).
    tables: core::cell::RefCell<Tables>,
    tables_fresh: core::cell::Cell<bool>,
    /// `st` changed since it was last written into the VMCS.
    dirty: bool,
    exit: ExitInfo,
    /// The primary processor-based controls (windows, CR8 loads, MOV DR).
    proc: u32,
    /// The event to inject at the next entry (VM-entry interruption
    /// information; 0: none), its error code and instruction length.
    inject: u32,
    inject_error: u32,
    inject_len: u32,
    tsc_offset: u64,
    guest_fpu: FpuState,
    sse: SseRegs,
    fpu_loaded: bool,
    /// Names this vCPU in the per-CPU owner fields (never 0).
    token: u64,
    fpu_cpu: usize,
    syscall_msrs: [u64; 5],
    debug_regs: Option<[u64; 4]>,
    guest_xcr0: u64,
    tsc_aux: Option<u64>,
    /// The VMCS has been through VMCLEAR once and holds the controls.
    initialized: bool,
    /// The CPU on which the VMCS is active (`usize::MAX`: cleared).
    active_cpu: usize,
    launched: bool,
    last_cpu: usize,
    flush_tlb: bool,
}

/// The SVM-layout MSR permission map (two bits per MSR: read, write; the
/// ranges 0-0x1FFF at 0 and 0xC000_0000-0xC000_1FFF at 0x800) as VMX's
/// bitmap (read-low, read-high, write-low, write-high, 1 KiB each).
fn translate_msr_map(msrpm: u64, bitmap: u64) {
    for (svm_base, vmx_read, vmx_write) in [(0u64, 0u64, 0x800u64), (0x800, 0x400, 0xC00)] {
        for index in 0..0x2000u64 {
            let bit = index * 2;
            // SAFETY: both maps are identity-mapped pages this vCPU's
            // domain owns (8 KiB and 4 KiB); every offset is inside them.
            unsafe {
                let pair = (((msrpm + svm_base + bit / 8) as *const u8).read() >> (bit % 8)) & 3;
                if pair & 1 == 0 {
                    let p = (bitmap + vmx_read + index / 8) as *mut u8;
                    p.write(p.read() & !(1 << (index % 8)));
                }
                if pair & 2 == 0 {
                    let p = (bitmap + vmx_write + index / 8) as *mut u8;
                    p.write(p.read() & !(1 << (index % 8)));
                }
            }
        }
    }
}

/// A segment's access rights in VMX's form (bit 16: unusable) from the
/// compressed form the generic code uses.
fn to_access_rights(seg: &Segment, always_usable: bool) -> u64 {
    let a = u64::from(seg.attrib);
    if a & 0x80 == 0 && !always_usable {
        return 1 << 16;
    }
    let mut ar = (a & 0xFF) | ((a & 0xF00) << 4);
    if a & 0x10 != 0 {
        // Code and data segments in use have been accessed (the CPU sets
        // the bit when it loads them; VM entry insists).
        ar |= 1;
    }
    ar
}

fn from_access_rights(ar: u64) -> u16 {
    if ar & (1 << 16) != 0 {
        return 0;
    }
    ((ar & 0xFF) | ((ar >> 4) & 0xF00)) as u16
}

fn write(field: u32, value: u64) {
    // SAFETY: only called between VMPTRLD of this vCPU's VMCS and the end
    // of its slice, on the CPU where it is current. A value VM entry
    // rejects makes the entry fail cleanly (reported, the domain crashes).
    if let Err(e) = unsafe { vmwrite(field, value) } {
        log::error!("vmwrite {:#x} = {:#x} failed: {:?}", field, value, e);
    }
}

fn read(field: u32) -> u64 {
    // SAFETY: as in `write`: this vCPU's VMCS is current on this CPU.
    unsafe { vmread(field) }
}

impl VmxVcpu {
    /// A vCPU whose guest-physical memory is the EPT rooted at
    /// `ept_root`, tagged `vpid`, with the I/O map (one bit per port, 8 KiB:
    /// VMX's bitmaps A and B) and the SVM-layout MSR map translated.
    pub fn new(caps: Capabilities, ept_root: u64, vpid: u32, iopm_pa: u64, msrpm_pa: u64) -> Option<Self> {
        let config = *CONFIG.get()?;
        let _ = caps;
        let vmcs_pa = mm::alloc_zeroed_page()?;
        let Some(msr_bitmap_pa) = mm::alloc_zeroed_page() else {
            mm::free_page(vmcs_pa);
            return None;
        };
        let Some(vapic_pa) = mm::alloc_zeroed_page() else {
            mm::free_page(vmcs_pa);
            mm::free_page(msr_bitmap_pa);
            return None;
        };
        // SAFETY: all three pages were just allocated to this vCPU and are
        // identity mapped; the VMCS starts with the revision identifier.
        unsafe {
            (vmcs_pa as *mut u32).write_volatile(config.revision);
            core::ptr::write_bytes(msr_bitmap_pa as *mut u8, 0xFF, 4096);
        }
        translate_msr_map(msrpm_pa, msr_bitmap_pa);
        let Some(guest_fpu) = FpuState::new() else {
            for pa in [vmcs_pa, msr_bitmap_pa, vapic_pa] {
                mm::free_page(pa);
            }
            return None;
        };
        let mut vcpu = VmxVcpu {
            vmcs_pa,
            msr_bitmap_pa,
            vapic_pa,
            iopm_pa,
            // Write-back, a 4-level walk.
            eptp: ept_root | (3 << 3) | 6,
            vpid: if config.vpid { (vpid & 0xFFFF).max(1) as u16 } else { 0 },
            config,
            regs: GuestRegs::default(),
            st: GuestState { pat: 0x0007_0406_0007_0406, dr6: 0xFFFF_0FF0, dr7: 0x400, ..Default::default() },
            tables: core::cell::RefCell::new(Tables::default()),
            tables_fresh: core::cell::Cell::new(true),
            dirty: true,
            exit: ExitInfo::default(),
            proc: config.proc,
            inject: 0,
            inject_error: 0,
            inject_len: 0,
            tsc_offset: 0,
            guest_fpu,
            sse: SseRegs::new(),
            fpu_loaded: false,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            fpu_cpu: usize::MAX,
            syscall_msrs: [0; 5],
            debug_regs: None,
            guest_xcr0: 1,
            tsc_aux: cpu_has_tsc_aux().then_some(0),
            initialized: false,
            active_cpu: usize::MAX,
            launched: false,
            last_cpu: usize::MAX,
            flush_tlb: false,
            state_check: None,
        };
        vcpu.reset_real_mode(0xF000, 0xFFF0);
        Some(vcpu)
    }

    /// The controls and fixed fields, written once into a fresh VMCS.
    fn write_controls(&self) {
        let c = &self.config;
        write(PIN_CONTROLS, u64::from(c.pin));
        write(PROC_CONTROLS2, u64::from(c.proc2));
        write(EXIT_CONTROLS, u64::from(c.exit));
        // #DB and #AC always exit (XSA-156: their delivery can loop inside
        // the CPU); #UD exits so that VMMCALL, the hypercall instruction
        // of guests written for SVM, works here too.
        write(EXCEPTION_BITMAP, (1 << DB_VECTOR) | (1 << AC_VECTOR) | (1 << UD_VECTOR));
        write(PF_ERROR_MASK, 0);
        write(PF_ERROR_MATCH, 0);
        write(CR3_TARGET_COUNT, 0);
        write(EXIT_MSR_STORE_COUNT, 0);
        write(EXIT_MSR_LOAD_COUNT, 0);
        write(ENTRY_MSR_LOAD_COUNT, 0);
        write(IO_BITMAP_A, self.iopm_pa);
        write(IO_BITMAP_B, self.iopm_pa + 0x1000);
        write(MSR_BITMAP, self.msr_bitmap_pa);
        write(VIRTUAL_APIC_PAGE, self.vapic_pa);
        write(TPR_THRESHOLD, 0);
        write(EPT_POINTER, self.eptp);
        if self.vpid != 0 {
            write(VPID, u64::from(self.vpid));
        }
        write(VMCS_LINK_POINTER, u64::MAX);
        // Every CR0 and CR4 bit belongs to the hypervisor: the guest reads
        // the shadows, and each write that changes a bit exits and is
        // checked (`vcpu::cr`).
        write(CR0_MASK, u64::MAX);
        write(CR4_MASK, u64::MAX);
        write(GUEST_DEBUGCTL, 0);
        write(GUEST_ACTIVITY, 0);
    }

    /// The host state a VM exit loads, for the CPU running the vCPU now.
    fn write_host_state(&self) {
        // This CPU's GDT and TSS (`gdt::init_cpu`), and the shared IDT.
        let tables = percpu::current().tables;
        let tss_sel = u64::from(crate::arch::gdt::TSS_SEL);
        write(HOST_CR0, cpu::read_cr0());
        write(HOST_CR3, cpu::read_cr3());
        write(HOST_CR4, cpu::read_cr4());
        write(HOST_CS_SEL, u64::from(crate::arch::gdt::KERNEL_CS));
        for f in [HOST_SS_SEL, HOST_DS_SEL, HOST_ES_SEL] {
            write(f, u64::from(crate::arch::gdt::KERNEL_DS));
        }
        write(HOST_FS_SEL, 0);
        write(HOST_GS_SEL, 0);
        write(HOST_TR_SEL, tss_sel);
        write(HOST_FS_BASE, FsBase::read().as_u64());
        write(HOST_GS_BASE, GsBase::read().as_u64());
        write(HOST_TR_BASE, tables.tss_base());
        write(HOST_GDTR_BASE, tables.gdt_base());
        write(HOST_IDTR_BASE, sidt().base.as_u64());
        write(HOST_SYSENTER_CS, 0);
        write(HOST_SYSENTER_ESP, 0);
        write(HOST_SYSENTER_EIP, 0);
        write(HOST_EFER, Efer::read_raw());
        write(HOST_PAT, rdmsr(MSR_PAT));
    }

    /// Writes `st` into the VMCS.
    fn write_guest_state(&self) {
        let c = &self.config;
        let st = &self.st;
        let t = self.tables();
        // VMX requires CR0.NE (and PE/PG unless the guest is unrestricted)
        // and CR4.VMXE; the guest sees its own values in the shadows.
        let cr0_fixed0 = if c.unrestricted { c.cr0_fixed0 & !(CR0_PE | CR0_PG) } else { c.cr0_fixed0 };
        let (cr0, cr3, cr4, efer) = if self.unpaged() {
            // Paging off without unrestricted guest: the CPU pages through
            // the identity map (4 MiB pages, so CR4.PSE and not PAE), and
            // long mode stays off until the guest's own paging is on (VM
            // entry wants EFER.LME = LMA while CR0.PG is set).
            (st.cr0 | CR0_PG, super::UNPAGED_IDENTITY_MAP_GPA, (st.cr4 & !CR4_PAE) | CR4_PSE, st.efer & !(EFER_LME | EFER_LMA))
        } else {
            (st.cr0, st.cr3, st.cr4, st.efer)
        };
        write(GUEST_CR0, (cr0 | cr0_fixed0 | CR0_NE) & c.cr0_fixed1);
        write(CR0_READ_SHADOW, st.cr0);
        write(GUEST_CR4, (cr4 | c.cr4_fixed0) & c.cr4_fixed1);
        write(CR4_READ_SHADOW, st.cr4);
        write(GUEST_CR3, cr3);
        write(GUEST_EFER, efer);
        let ia32e = efer & EFER_LMA != 0;
        write(ENTRY_CONTROLS, u64::from(if ia32e { c.entry | ENTRY_IA32E } else { c.entry }));
        write(GUEST_DR7, st.dr7);
        write(GUEST_PAT, st.pat);
        for (i, seg) in t.segs.iter().enumerate() {
            let off = 2 * i as u32;
            write(GUEST_ES_SEL + off, u64::from(seg.selector));
            write(GUEST_ES_BASE + off, seg.base);
            write(GUEST_ES_LIMIT + off, u64::from(seg.limit));
            write(GUEST_ES_AR + off, to_access_rights(seg, i == 1));
        }
        write(GUEST_LDTR_SEL, u64::from(t.ldtr.selector));
        write(GUEST_LDTR_BASE, t.ldtr.base);
        write(GUEST_LDTR_LIMIT, u64::from(t.ldtr.limit));
        write(GUEST_LDTR_AR, to_access_rights(&t.ldtr, false) & !1);
        write(GUEST_TR_SEL, u64::from(t.tr.selector));
        write(GUEST_TR_BASE, t.tr.base);
        write(GUEST_TR_LIMIT, u64::from(t.tr.limit));
        // A task register is always busy (type 11, or 3 for a 16-bit TSS).
        write(GUEST_TR_AR, to_access_rights(&t.tr, true) | 2);
        write(GUEST_GDTR_BASE, t.gdtr.base);
        write(GUEST_GDTR_LIMIT, u64::from(t.gdtr.limit));
        write(GUEST_IDTR_BASE, t.idtr.base);
        write(GUEST_IDTR_LIMIT, u64::from(t.idtr.limit));
        write(GUEST_SYSENTER_CS, t.sysenter[0]);
        write(GUEST_SYSENTER_ESP, t.sysenter[1]);
        write(GUEST_SYSENTER_EIP, t.sysenter[2]);
        for (i, p) in st.pdpte.iter().enumerate() {
            write(GUEST_PDPTE0 + 2 * i as u32, *p);
        }
    }

    /// Reads back what the guest may have changed without an exit.
    fn read_guest_state(&mut self) {
        let unpaged = self.unpaged();
        let st = &mut self.st;
        if !unpaged {
            // Unpaged, the guest's CR3 is `st.cr3` (its MOVs exit).
            st.cr3 = read(GUEST_CR3);
        }
        st.dr7 = read(GUEST_DR7);
        // Segments and tables: when asked for (`tables`).
        self.tables_fresh.set(false);
        st.interruptibility = read(GUEST_INTERRUPTIBILITY) as u32;
        if st.cr0 & CR0_PG != 0 && st.cr4 & (1 << 5) != 0 && st.efer & EFER_LMA == 0 {
            for (i, p) in st.pdpte.iter_mut().enumerate() {
                *p = read(GUEST_PDPTE0 + 2 * i as u32);
            }
        }
    }

    /// The segments and tables, read from the VMCS first if an exit made
    /// them stale (the VMCS is then current here: a stale vCPU is between
    /// an exit and the end of its slice, on its CPU, under its lock).
    fn tables(&self) -> core::cell::Ref<'_, Tables> {
        if !self.tables_fresh.get() {
            *self.tables.borrow_mut() = read_tables();
            self.tables_fresh.set(true);
        }
        self.tables.borrow()
    }

    fn set_tables(&mut self, t: Tables) {
        *self.tables.get_mut() = t;
        self.tables_fresh.set(true);
        self.dirty = true;
    }

    fn next_rip(&self) -> u64 {
        self.regs.rip.wrapping_add(self.exit.instruction_len)
    }

    /// Protected mode with paging off on a CPU without unrestricted
    /// guest: the guest runs on the identity map, and its MOVs to and
    /// from CR3 exit (`emulate_unpaged_cr3`).
    fn unpaged(&self) -> bool {
        !self.config.unrestricted && self.st.cr0 & CR0_PG == 0
    }

    /// Does a MOV to or from CR3 while `unpaged`: the guest's CR3 is kept
    /// here until it turns paging on. True if this exit was that.
    fn emulate_unpaged_cr3(&mut self) -> bool {
        let q = self.exit.qualification;
        if self.exit.reason & 0xFFFF != EXIT_CR_ACCESS || q & 0xF != 3 || !self.unpaged() {
            return false;
        }
        // Outside long mode (which needs paging) the operand is 32 bits.
        let reg = gpr_mut(&mut self.regs, ((q >> 8) & 0xF) as u8);
        match (q >> 4) & 3 {
            0 => self.st.cr3 = *reg & 0xFFFF_FFFF,
            1 => *reg = self.st.cr3 & 0xFFFF_FFFF,
            _ => return false,
        }
        self.regs.rip = self.next_rip();
        self.st.interruptibility &= !(INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS);
        if self.regs.rflags & RFLAGS_TF != 0 {
            self.inject_single_step();
        }
        true
    }

    /// The CPU's mode for address sizes: 8 in 64-bit code, else CS.D.
    fn default_address_size(&self) -> u8 {
        let cs = self.tables().segs[1];
        if self.st.efer & EFER_LMA != 0 && cs.attrib & (1 << 9) != 0 {
            8
        } else if cs.attrib & (1 << 10) != 0 {
            4
        } else {
            2
        }
    }

    fn exit_idt_vectoring_valid(&self) -> bool {
        self.inject & EVENT_VALID != 0
    }

    /// VMCLEARs the VMCS on this CPU, so that it can be loaded anywhere.
    fn clear_vmcs(&mut self) {
        if self.active_cpu == usize::MAX {
            return;
        }
        let cpu = percpu::current_index();
        if cpu != self.active_cpu {
            log::error!("vmx: VMCS of a vCPU active on cpu {} released on cpu {}", self.active_cpu, cpu);
            return;
        }
        // What is still only in the VMCS comes out before it is cleared.
        self.tables();
        // SAFETY: VMX is on here and the VMCS is this vCPU's, active here.
        if let Err(e) = unsafe { vmclear(self.vmcs_pa) } {
            log::error!("vmx: VMCLEAR failed: {:?}", e);
        }
        let slot = &VMX_CPUS[cpu];
        if slot.current_vmcs.load(Ordering::Relaxed) == self.vmcs_pa {
            slot.current_vmcs.store(0, Ordering::Relaxed);
        }
        self.active_cpu = usize::MAX;
        self.launched = false;
    }

    fn can_inject(&self) -> bool {
        self.inject & EVENT_VALID == 0
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        if self.active_cpu != usize::MAX {
            // Still active on some CPU (the slice never ended): the CPU may
            // write the VMCS back at any time, so its page is not reused.
            log::error!("vmx: a vCPU dropped with its VMCS active; its page is leaked");
        } else {
            mm::free_page(self.vmcs_pa);
        }
        mm::free_page(self.msr_bitmap_pa);
        mm::free_page(self.vapic_pa);
    }
}

/// Whether this CPU has IA32_TSC_AUX (CPUID RDTSCP or RDPID).
fn cpu_has_tsc_aux() -> bool {
    cpu::cpuid(0x8000_0001, 0).edx & (1 << 27) != 0 || cpu::cpuid(7, 0).ecx & (1 << 22) != 0
}

fn xsetbv(value: u64) {
    // SAFETY: callers pass either the host XCR0 (set up by `fpu::init_cpu`) or
    // a guest value validated by the XSETBV exit handler against the host's
    // supported set, with x87 set.
    unsafe { XCr0::write_raw(value) };
}

/// Loads a vCPU's DR0-3. They only hold breakpoint addresses; the host's
/// DR7 (loaded at every VM exit as 0x400) enables none.
fn load_debug_regs(dr: &[u64; 4]) {
    Dr0::write(dr[0]);
    Dr1::write(dr[1]);
    Dr2::write(dr[2]);
    Dr3::write(dr[3]);
}

fn read_debug_regs() -> [u64; 4] {
    [Dr0::read(), Dr1::read(), Dr2::read(), Dr3::read()]
}

fn write_dr6(value: u64) {
    // SAFETY: DR6 is a status register; the host never reads it.
    unsafe { core::arch::asm!("mov dr6, {}", in(reg) value, options(nostack, nomem)) };
}

/// CR2 is not switched by VM entry or exit: each vCPU's is loaded before
/// its entries and read back after its exits (the hypervisor takes no
/// page faults, so the register is otherwise unused).
fn write_cr2(value: u64) {
    // SAFETY: CR2 only reports page-fault addresses; writing it changes
    // nothing else.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) value, options(nostack, nomem)) };
}

fn read_cr2() -> u64 {
    Cr2::read_raw()
}

fn read_dr6() -> u64 {
    Dr6::read_raw()
}

/// The general-purpose register numbered `n` as VMX exit qualifications
/// number them (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP,
/// 6 = RSI, 7 = RDI, 8-15 = R8-R15).
fn gpr_mut(regs: &mut GuestRegs, n: u8) -> &mut u64 {
    match n & 0xF {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

impl VmxVcpu {
    /// One VM entry and the exit that ends it.
    fn run_once(&mut self) -> VmExit {
        let cpu = percpu::current_index();
        let slot = &VMX_CPUS[cpu];
        if slot.vmxon_pa.load(Ordering::Acquire) == 0 {
            return VmExit::InvalidState;
        }
        if self.active_cpu != usize::MAX && self.active_cpu != cpu {
            log::error!("vmx: vCPU active on cpu {} run on cpu {}", self.active_cpu, cpu);
            return VmExit::InvalidState;
        }
        if !self.initialized {
            // SAFETY: VMX is on; VMCLEAR puts the fresh VMCS (revision
            // written by `new`) into the clear launch state.
            if let Err(e) = unsafe { vmclear(self.vmcs_pa) } {
                log::error!("vmx: VMCLEAR of a new VMCS failed: {:?}", e);
                return VmExit::InvalidState;
            }
        }
        if slot.current_vmcs.load(Ordering::Relaxed) != self.vmcs_pa {
            // SAFETY: the VMCS is this vCPU's and not active on another
            // CPU (checked above: it was cleared when its last slice ended).
            if let Err(e) = unsafe { vmptrld(self.vmcs_pa) } {
                log::error!("vmx: VMPTRLD failed: {:?}", e);
                return VmExit::InvalidState;
            }
            slot.current_vmcs.store(self.vmcs_pa, Ordering::Relaxed);
        }
        if !self.initialized {
            self.write_controls();
            self.initialized = true;
            self.dirty = true;
        }
        if self.active_cpu != cpu {
            self.write_host_state();
            self.active_cpu = cpu;
        }
        // Translations this CPU may hold for this VPID or EPT from another
        // vCPU or an older mapping: flush them when the vCPU comes here from
        // elsewhere or another vCPU ran here, and after a CR4 change.
        let moved = cpu != self.last_cpu || slot.last_vcpu.load(Ordering::Relaxed) != self.token;
        if moved {
            // SAFETY: VMX is on; detection checked the INVEPT types.
            let _ = unsafe { invept(if self.config.invept_single { 1 } else { 2 }, self.eptp) };
            slot.last_vcpu.store(self.token, Ordering::Relaxed);
            self.last_cpu = cpu;
        }
        if (moved || core::mem::take(&mut self.flush_tlb)) && self.vpid != 0 {
            // SAFETY: VMX is on; detection checked INVVPID and its types.
            let _ = unsafe { invvpid(if self.config.invvpid_single { 1 } else { 2 }, self.vpid) };
        }
        if self.dirty {
            self.write_guest_state();
            self.dirty = false;
        }
        write(GUEST_RSP, self.regs.rsp);
        write(GUEST_RIP, self.regs.rip);
        write(GUEST_RFLAGS, self.regs.rflags | 2);
        let mut interruptibility = self.st.interruptibility;
        if self.regs.rflags & RFLAGS_IF == 0 {
            // VM entry refuses STI blocking with IF clear.
            interruptibility &= !INTERRUPTIBILITY_STI;
        }
        write(GUEST_INTERRUPTIBILITY, u64::from(interruptibility));
        // A single step pending over an interrupt shadow (VM entry insists).
        let pending_dbg = if self.regs.rflags & RFLAGS_TF != 0 && interruptibility & 3 != 0 { DR6_BS } else { 0 };
        write(GUEST_PENDING_DBG, pending_dbg);
        let cr3_exits = if self.unpaged() { PROC_CR3_LOAD | PROC_CR3_STORE } else { 0 };
        write(PROC_CONTROLS, u64::from(self.proc | cr3_exits));
        write(TSC_OFFSET, self.tsc_offset);
        write(ENTRY_INTR_INFO, u64::from(self.inject));
        write(ENTRY_EXCEPTION_ERROR, u64::from(self.inject_error));
        write(ENTRY_INSTRUCTION_LEN, u64::from(self.inject_len));
        if let Some(aux) = self.tsc_aux {
            if slot.loaded_tsc_aux.load(Ordering::Relaxed) != aux {
                // SAFETY: the MSR exists (checked when `tsc_aux` was set up)
                // and `set_tsc_aux` only accepts values with bits 63:32 clear.
                unsafe { cpu::wrmsr(msr::TSC_AUX, aux) };
                slot.loaded_tsc_aux.store(aux, Ordering::Relaxed);
            }
        }
        if !self.fpu_loaded {
            // First entry of the slice: the FPU image and the syscall MSRs
            // go in, unless this CPU still holds them from this vCPU.
            if self.fpu_cpu != cpu || slot.fpu_owner.load(Ordering::Relaxed) != self.token {
                self.guest_fpu.restore();
                for (m, v) in SYSCALL_MSRS.iter().zip(self.syscall_msrs) {
                    // SAFETY: these MSRs exist on every x86_64 CPU; the
                    // host does not use them. Values were read from the
                    // CPU (or are 0), so they are canonical.
                    unsafe { cpu::wrmsr(*m, v) };
                }
                slot.fpu_owner.store(self.token, Ordering::Relaxed);
                self.fpu_cpu = cpu;
            }
            self.fpu_loaded = true;
        }
        if let Some(dr) = self.debug_regs {
            if slot.dr_owner.load(Ordering::Relaxed) != self.token {
                load_debug_regs(&dr);
                slot.dr_owner.store(self.token, Ordering::Relaxed);
            }
        }
        write_dr6(self.st.dr6);
        write_cr2(self.st.cr2);
        let use_xsave = fpu::uses_xsave();
        if use_xsave {
            xsetbv(self.guest_xcr0);
        }
        // SAFETY: this vCPU's VMCS is current on this CPU with complete
        // controls, host state for this CPU and the guest state written
        // above; `regs` and `sse` outlive the call. VM entry checks the
        // guest state itself and fails cleanly (reported below).
        let failed = unsafe { vmx_run(&mut self.regs, &mut self.sse, u64::from(self.launched)) };
        if use_xsave {
            xsetbv(fpu::host_xcr0());
        }
        if failed != 0 {
            let error = read(VM_INSTRUCTION_ERROR);
            log::error!("vmx: {} failed, VM-instruction error {}", if self.launched { "VMRESUME" } else { "VMLAUNCH" }, error);
            self.state_check = Some(ferrite_x86::StateCheck::VmInstructionError(error as u32));
            return VmExit::InvalidState;
        }
        let reason = read(EXIT_REASON) as u32;
        // An entry that failed on the guest state (bit 31) leaves the VMCS
        // as it was: not launched if this was VMLAUNCH.
        if reason & (1 << 31) == 0 {
            self.launched = true;
        }
        self.st.dr6 = read_dr6();
        self.st.cr2 = read_cr2();
        if let Some(dr) = self.debug_regs.as_mut() {
            *dr = read_debug_regs();
        }
        self.regs.rsp = read(GUEST_RSP);
        self.regs.rip = read(GUEST_RIP);
        self.regs.rflags = read(GUEST_RFLAGS);
        self.read_guest_state();
        self.exit = ExitInfo {
            reason,
            qualification: read(EXIT_QUALIFICATION),
            instruction_len: read(EXIT_INSTRUCTION_LEN),
            instruction_info: read(EXIT_INSTRUCTION_INFO) as u32,
            intr_info: read(EXIT_INTR_INFO) as u32,
            intr_error: read(EXIT_INTR_ERROR) as u32,
            gpa: read(GUEST_PHYSICAL_ADDRESS),
            vectoring: 0,
            vectoring_error: 0,
        };
        // An event whose delivery the exit cut short (IDT-vectoring
        // information) is delivered again at the next entry, except
        // software interrupts and INT3/INTO, which their instruction raises
        // again when it runs again.
        let vectoring = read(IDT_VECTORING_INFO) as u32;
        self.exit.vectoring = vectoring;
        let kind = (vectoring >> 8) & 7;
        if vectoring & EVENT_VALID != 0 {
            self.exit.vectoring_error = read(IDT_VECTORING_ERROR) as u32;
        }
        if vectoring & EVENT_VALID != 0 && kind != 4 && kind != 6 {
            self.inject = vectoring & !(1 << 12);
            self.inject_error = self.exit.vectoring_error;
            self.inject_len = self.exit.instruction_len as u32;
            if kind == 2 {
                // An NMI being delivered again: not blocked meanwhile.
                self.st.interruptibility &= !INTERRUPTIBILITY_NMI;
            }
        } else {
            self.inject = 0;
        }
        self.decode_exit()
    }
}
