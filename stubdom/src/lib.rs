//! Ferrite stub domain: the device models of one HVM guest, run as a small
//! isolated guest of the hypervisor (see `ferrite_abi` for the contract).
//!
//! The library holds everything; the binaries are one line each:
//! `ferrite-stubdom` ([`serve`]: the device models) and, for tests only,
//! `ferrite-stubdom-hostile` (`src/hostile/`: a stub that attacks the
//! hypervisor through every hypercall and shared page, and prints a
//! verdict for each attempt).
//!
//! Start-up: the hypervisor enters `_start` in 64-bit mode (CPL0,
//! interrupts off, no IDT, identity page tables) with rdi = the start-info
//! address. The entry code ([`entry_point!`], expanded in each binary)
//! switches to the stub's own stack, enables SSE (the prebuilt `core` uses
//! it), clears .bss and calls the binary's `stub_main`, which hands the
//! start-info address to [`start`]: it reads the [`StubConfig`] and runs
//! the binary's main function ([`serve`]: build the devices and serve I/O
//! requests for ever).
//!
//! Failure model: the stub has no IDT, so any CPU exception is a triple
//! fault, which the hypervisor turns into destroying the stub and its
//! guest. A Rust panic prints its message with CONSOLE_WRITE and then
//! executes `ud2` to die the same way.
//!
//! `unsafe` lives only in [`hypercall`] (the `vmmcall` instruction) and
//! [`memory`] (every raw memory access: start info, I/O-request page,
//! guest window, page tables, heap arena), each block with its reason.

#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
// memcpy & co. and the symbols the prebuilt core references.
extern crate ferrite_rt;

mod block;
mod devices;
mod guest_memory;
pub mod hypercall;
mod ioreq;
mod logger;
pub mod memory;
mod nic;
mod strio;

use alloc::string::String;
use ferrite_abi::StubConfig;
use log::info;

/// The entry point, for a binary of this crate to expand once with its
/// main function (`fn(StubConfig) -> !`). CR0.MP set, CR0.EM clear,
/// CR4.OSFXSR|OSXMMEXCPT set before any compiled code runs (the
/// hypervisor's entry state is not trusted to have them). The stack lies in
/// the image (`linker.ld`); .bss is zeroed here rather than assuming the
/// loader did. rdi (the start-info address) is kept in r12 across the
/// clearing and handed to `stub_main`. A macro, so the assembly is part of
/// the binary itself and never left out of the link.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        #[allow(unsafe_code)] // the entry code
        mod entry {
            core::arch::global_asm!(
                r#"
    .section .text.entry, "ax"
    .global _start
_start:
    cli
    cld
    leaq __stack_top(%rip), %rsp
    xorl %ebp, %ebp
    movq %rdi, %r12

    movq %cr0, %rax
    andq $~(1 << 2), %rax       /* CR0.EM = 0: no x87 emulation */
    orq $(1 << 1), %rax         /* CR0.MP = 1 */
    movq %rax, %cr0
    movq %cr4, %rax
    orq $((1 << 9) | (1 << 10)), %rax   /* CR4.OSFXSR | CR4.OSXMMEXCPT */
    movq %rax, %cr4

    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movq %r12, %rdi
    call stub_main
1:
    ud2
    jmp 1b
    "#,
                options(att_syntax)
            );
        }

        /// The Rust entry, called once from `_start` with the start-info address.
        #[allow(unsafe_code)] // `no_mangle`: the symbol the entry assembly calls
        #[no_mangle]
        extern "C" fn stub_main(start_info: u64) -> ! {
            $crate::start(start_info, $main)
        }
    };
}

/// Sets up the heap, the logger and the stack guard, reads the
/// configuration at `start_info` and runs `main` with it.
pub fn start(start_info: u64, main: fn(StubConfig) -> !) -> ! {
    memory::init_heap();
    logger::init();
    memory::guard_stack();
    let config = match read_config(start_info) {
        Ok(c) => c,
        Err(e) => panic!("bad start info at {:#x}: {}", start_info, e),
    };
    main(config)
}

/// The stub domain proper: builds the devices of the guest `config`
/// describes and serves its I/O requests for ever.
pub fn serve(config: StubConfig) -> ! {
    info!(
        "stub domain for guest {} ({}): {} vCPU(s), RAM {} MiB below 4 GiB + {} MiB above, {} disk(s)",
        config.guest_id,
        config.guest_name,
        config.vcpus,
        config.ram_below_4g >> 20,
        config.ram_above_4g >> 20,
        config.disks.len()
    );
    let mut devices = devices::Devices::new(&config);
    devices.publish_buffered_ports();
    let (used, size) = memory::heap_usage();
    info!("devices ready; heap {} of {} KiB in use", used >> 10, size >> 10);
    ioreq::serve(&config, &mut devices)
}

fn read_config(start_info: u64) -> Result<StubConfig, String> {
    let bytes = memory::start_info(start_info).ok_or_else(|| String::from("length out of range"))?;
    StubConfig::from_bytes(bytes).map_err(|e| alloc::format!("cannot decode the configuration: {}", e))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let mut line = logger::LineBuf::new();
    let _ = match info.location() {
        Some(l) => write!(line, "panic at {}:{}: {}", l.file(), l.line(), info.message()),
        None => write!(line, "panic: {}", info.message()),
    };
    hypercall::console_write(line.as_bytes());
    hypercall::die()
}
