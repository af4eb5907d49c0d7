//! The panic handler: report where and why, stop every CPU, and tell QEMU
//! (when `debug_exit=` is set) that the run failed.

use crate::arch::{apic, cpu, idt};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

struct RawConsole;

impl Write for RawConsole {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::console::write_str_unlocked(s);
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Stop the other CPUs first so their output does not interleave.
    idt::STOP_ALL.store(true, Ordering::SeqCst);
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A second panic (or a panic on another CPU at the same time).
        cpu::halt_forever();
    }
    let cpu = crate::arch::percpu::current_index();
    let mut out = RawConsole;
    let _ = write!(out, "\n(ferrite) PANIC on CPU {}", cpu);
    if let Some(loc) = info.location() {
        let _ = write!(out, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
    }
    let _ = writeln!(out, ":\n(ferrite) {}", info.message());
    // Only CPUs the hypervisor started have an NMI handler; an AP still in
    // firmware would triple-fault the machine before this message is out.
    if crate::arch::percpu::online_count() > 1 {
        apic::nmi_all_others();
    }
    let _ = writeln!(out, "(ferrite) all CPUs stopped");
    crate::report_exit(false);
    cpu::halt_forever()
}
