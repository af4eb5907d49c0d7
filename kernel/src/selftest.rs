//! The self-test guest: a small program that starts in real mode, does port
//! I/O and CPUID, switches to protected mode and then long mode (with its
//! own page tables and an EFER write the hypervisor emulates), halts, and
//! reports back with a hypercall. The hypervisor checks every exit it saw
//! against the expected sequence, proving the run loop end to end.

use crate::mm::guest::GuestMemory;
use crate::virt::{ArchVcpu, BackendKind, EntryState, GuestRegs, Segment, VcpuConfig, VcpuOps, VmExit};
use crate::vcpu::{self, Platform, RunOutcome, HV_SIGNATURE};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Guest-physical load address of the program (CS = 0x0100, IP = 0).
const LOAD_GPA: u64 = 0x1000;
const PORT_MARK: u16 = 0x510;
const PORT_ECHO_IN: u16 = 0x511;
const PORT_ECHO_OUT: u16 = 0x512;
const PORT_VALUE: u16 = 0x514;
const ECHO_VALUE: u8 = 0x5A;
const HYPERCALL_DONE: u64 = 0x4645_0001;
const MEMORY_PATTERN: u64 = 0x1122_3344_5566_7788;

core::arch::global_asm!(
    r#"
    .section .rodata.selftest, "a"
    .global selftest_guest_start
    .global selftest_guest_end
    .global selftest_guest_pm32
    .global selftest_guest_gdt
    .set BASE, 0x1000
    .code16
selftest_guest_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x0FF0, %sp
    movw $0x510, %dx
    movb $'R', %al
    outb %al, %dx
    movl $0x40000000, %eax
    cpuid
    movw $0x514, %dx
    movl %ebx, %eax
    outl %eax, %dx
    movw $0x511, %dx
    inb %dx, %al
    incb %al
    movw $0x512, %dx
    outb %al, %dx
    lgdtl (st_gdtr - selftest_guest_start + BASE)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(st_pm32 - selftest_guest_start + BASE)

    .code32
selftest_guest_pm32:
st_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x510, %dx
    movb $'P', %al
    outb %al, %dx
    /* identity map the first 2 MiB: PML4 0x10000 -> PDPT 0x11000 -> PD 0x12000 */
    movl $0x11003, 0x10000
    movl $0, 0x10004
    movl $0x12003, 0x11000
    movl $0, 0x11004
    movl $0x83, 0x12000
    movl $0, 0x12004
    movl $0x10000, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(st_lm64 - selftest_guest_start + BASE)

    .code64
st_lm64:
    movw $0x510, %dx
    movb $'L', %al
    outb %al, %dx
    xorl %eax, %eax
    cpuid
    hlt
    movabsq $0x1122334455667788, %rax
    movq %rax, 0x20000
    movq 0x20000, %rbx
    movl $0x46450001, %eax
    vmmcall
1:  hlt
    jmp 1b

    .balign 8
selftest_guest_gdt:
st_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
st_gdt_end:
st_gdtr:
    .word st_gdt_end - st_gdt - 1
    .long st_gdt - selftest_guest_start + BASE
selftest_guest_end:
    .code64
    "#,
    options(att_syntax)
);

extern "C" {
    static selftest_guest_start: u8;
    static selftest_guest_end: u8;
    static selftest_guest_pm32: u8;
    static selftest_guest_gdt: u8;
}

/// Where the program's 32-bit part and GDT are loaded.
fn guest_address(symbol: *const u8) -> u64 {
    LOAD_GPA + (symbol as u64 - core::ptr::addr_of!(selftest_guest_start) as u64)
}

/// The state the program's real-mode part leaves the CPU in, for a CPU
/// that cannot run real mode (VMX without unrestricted guest): 32-bit
/// protected mode, paging off, its own GDT's flat segments.
fn protected_mode_entry() -> EntryState {
    let flat = |selector: u16, attrib: u16| Segment { selector, base: 0, limit: 0xFFFF_FFFF, attrib };
    EntryState {
        rip: guest_address(core::ptr::addr_of!(selftest_guest_pm32)),
        rflags: 2,
        cr0: 0x11,
        cs: flat(0x08, 0xC9B),
        ds: flat(0x10, 0xC93),
        tr: Segment { selector: 0, base: 0, limit: 0xFFFF, attrib: 0x8B },
        gdtr_base: guest_address(core::ptr::addr_of!(selftest_guest_gdt)),
        gdtr_limit: 31,
        ..Default::default()
    }
}

fn guest_program() -> &'static [u8] {
    // SAFETY: the two symbols delimit the program in .rodata.
    unsafe { crate::arch::blob_between(core::ptr::addr_of!(selftest_guest_start), core::ptr::addr_of!(selftest_guest_end)) }
}

/// One observed guest action.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Mark(u8),
    Value(u32),
    EchoIn,
    EchoOut(u8),
    Halt,
    Done(u64),
    Unexpected(String),
}

struct SelftestPlatform<'a> {
    events: Vec<Event>,
    /// The guest's RAM (its CR4 write is decoded from there).
    mem: &'a GuestMemory,
}

impl Platform for SelftestPlatform<'_> {
    fn guest_memory(&self) -> Option<&GuestMemory> {
        Some(self.mem)
    }

    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        if port == PORT_ECHO_IN && size == 1 {
            self.events.push(Event::EchoIn);
            u32::from(ECHO_VALUE)
        } else {
            self.events.push(Event::Unexpected(format!("in{} {:#x}", size, port)));
            0xFFFF_FFFF
        }
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        let event = match (port, size) {
            (PORT_MARK, 1) => Event::Mark(value as u8),
            (PORT_VALUE, 4) => Event::Value(value),
            (PORT_ECHO_OUT, 1) => Event::EchoOut(value as u8),
            _ => Event::Unexpected(format!("out{} {:#x} = {:#x}", size, port, value)),
        };
        self.events.push(event);
    }

    fn halt(&mut self) -> bool {
        self.events.push(Event::Halt);
        true
    }

    fn hypercall(&mut self, regs: &mut GuestRegs) -> Option<u64> {
        if regs.rax == HYPERCALL_DONE {
            self.events.push(Event::Done(regs.rbx));
            Some(regs.rbx)
        } else {
            self.events.push(Event::Unexpected(format!("hypercall {:#x}", regs.rax)));
            regs.rax = u64::MAX;
            None
        }
    }
}

/// Runs the self-test guest on this CPU. Returns a summary or what failed.
pub fn run(caps: crate::virt::Capabilities) -> Result<String, String> {
    let mut mem = GuestMemory::new(2 << 20).map_err(|e| format!("{}", e))?;
    mem.write(LOAD_GPA, guest_program()).map_err(|e| format!("{}", e))?;
    if let Some(page) = crate::virt::unpaged_identity_map() {
        mem.map_rom(crate::virt::UNPAGED_IDENTITY_MAP_GPA, &page[..]).map_err(|e| format!("{}", e))?;
    }
    let (iopm, msrpm) = crate::mm::alloc_intercept_maps().ok_or("out of memory for permission maps")?;
    let cfg = VcpuConfig { nested_root: mem.npt_root(), tag: 1, iopm_pa: iopm.0, msrpm_pa: msrpm.0 };
    let mut vcpu = ArchVcpu::new(caps, &cfg).ok_or("out of memory for a VMCB")?;
    if caps.real_mode {
        vcpu.reset_real_mode((LOAD_GPA >> 4) as u16, 0);
    } else {
        vcpu.set_entry_state(&protected_mode_entry());
    }
    let mut platform = SelftestPlatform { events: Vec::new(), mem: &mem };
    let (outcome, exits) = vcpu::run(&mut vcpu, &mut platform, 1000);
    vcpu.release_fpu();
    let refused = if caps.backend == BackendKind::Vmx { Some(refused_entry_is_named(caps, &cfg)) } else { None };
    crate::mm::free_intercept_maps(iopm, msrpm);
    let real_mode = [
        Event::Mark(b'R'),
        Event::Value(HV_SIGNATURE[0]),
        Event::EchoIn,
        Event::EchoOut(ECHO_VALUE + 1),
    ];
    let expected = [
        Event::Mark(b'P'),
        Event::Mark(b'L'),
        Event::Halt,
        Event::Done(MEMORY_PATTERN),
    ];
    if outcome != RunOutcome::Finished(MEMORY_PATTERN) {
        return Err(format!("guest ended with {:?} after {} exits; events {:?}", outcome, exits, platform.events));
    }
    let expected: Vec<&Event> = if caps.real_mode { real_mode.iter().chain(&expected).collect() } else { expected.iter().collect() };
    if platform.events.iter().collect::<Vec<_>>() != expected {
        return Err(format!("unexpected guest behaviour: saw {:?}, expected {:?}", platform.events, expected));
    }
    // The guest wrote its pattern at 0x20000 through its own page tables.
    let mut word = [0u8; 8];
    mem.read(0x20000, &mut word).map_err(|e| format!("{}", e))?;
    if u64::from_le_bytes(word) != MEMORY_PATTERN {
        return Err(format!("guest memory at 0x20000 holds {:#x}", u64::from_le_bytes(word)));
    }
    if let Some(refused) = refused {
        log::info!("selftest: a refused VM entry is named: {}", refused?);
    }
    Ok(format!(
        "{} exits: {}, long mode via emulated EFER write, HLT, hypercall",
        exits,
        if caps.real_mode { "real mode I/O and CPUID, protected mode" } else { "protected mode (real mode skipped: no unrestricted guest)" }
    ))
}

/// VMX: enters a throwaway vCPU with a guest state VM entry must refuse
/// (RFLAGS bit 15, reserved), so that the CPU's refusal comes back named by
/// the software checks (`ferrite_x86::vmentry`), which must find nothing
/// else wrong with the state the backend wrote. Returns the name.
fn refused_entry_is_named(caps: crate::virt::Capabilities, cfg: &VcpuConfig) -> Result<String, String> {
    use ferrite_x86::vmentry::VmentryCheck;
    use ferrite_x86::StateCheck;
    let mut vcpu = ArchVcpu::new(caps, cfg).ok_or("out of memory for a VMCS")?;
    vcpu.set_entry_state(&protected_mode_entry());
    vcpu.regs_mut().rflags |= 1 << 15;
    let exit = vcpu.run();
    vcpu.release_fpu();
    let want = StateCheck::Vmentry(VmentryCheck::RflagsReserved(1 << 15));
    match (exit, vcpu.state_check()) {
        (VmExit::InvalidState, Some(check)) if check == want => Ok(format!("{}", check)),
        (other, check) => Err(format!("a VM entry with RFLAGS bit 15 set ended with {:?} ({:?}), expected {:?}", other, check, want)),
    }
}
