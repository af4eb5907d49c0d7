//! The machine's own life, Xen's way: dom0 powering off or rebooting, or
//! the machine's power button (QEMU's `system_powerdown`), stops the host.
//! Every domU is asked first (its ACPI power button), and destroyed if it
//! has not stopped within `GRACE_US`; then dom0 likewise; then the machine
//! is switched off through ACPI (S5) or reset.
//!
//! Runs as a CPU 0 poller: the power button is polled (PM1 status), and
//! the stop advances a step at a time, so guests keep running meanwhile.

use crate::acpi::HostPower;
use crate::arch::{pio, time};
use crate::domain;
use log::{error, info, warn};
use spin::Mutex;

/// How long domains get to stop after their power button is pressed.
const GRACE_US: u64 = 30_000_000;
/// PM1 status and control bits (ACPI 6.5, 4.8.3).
const PWRBTN_STS: u16 = 1 << 8;
const PWRBTN_EN: u16 = 1 << 8;
const SLP_EN: u16 = 1 << 13;

static POWER: spin::Once<HostPower> = spin::Once::new();
static STOP: Mutex<Option<Stop>> = Mutex::new(None);
/// Callers holding the switch-off (`hold`): a stop that has begun waits
/// while it is not 0, so the run's verdict is out before the machine goes.
static HOLDS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Holds (`true`) or releases (`false`) the machine's switch-off: while
/// anyone holds it, a stop that has begun waits. A domain's end is
/// handled under a hold (dom0's may begin the host's stop, and the last
/// one's is logged and reported to `debug_exit=`), which another CPU's
/// poll would otherwise race by switching off first.
pub fn hold(on: bool) {
    if on {
        HOLDS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    } else {
        HOLDS.fetch_sub(1, core::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
struct Stop {
    reboot: bool,
    stage: Stage,
    deadline_us: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    DomUs,
    Dom0,
    Done,
}

/// Remembers the machine's power controls and starts watching its power
/// button. Call once, at boot.
pub fn init(power: HostPower) {
    POWER.call_once(|| power);
    if let Some(port) = power.pm1a_event {
        // A press before now (or the firmware's) is old news.
        pio::outw(port, PWRBTN_STS);
        // The chipset latches presses only while the button is enabled
        // (PM1 enable, the second half of the 4-byte PM1 event block). The
        // SCI it may then raise goes nowhere: the host's I/O APIC leaves
        // its line masked, and the status is polled instead.
        let enable = port + 2;
        pio::outw(enable, pio::inw(enable) | PWRBTN_EN);
    }
    crate::sched::register_poller(crate::sched::Poller { poll, next_us: || None });
}

/// Starts stopping the host (once; later requests change nothing).
pub fn request_stop(reboot: bool, why: &str) {
    let mut stop = STOP.lock();
    if stop.is_some() {
        return;
    }
    info!("host: {}; {} the machine once the domains have stopped", why, if reboot { "rebooting" } else { "powering off" });
    *stop = Some(Stop { reboot, stage: Stage::DomUs, deadline_us: time::uptime_us() + GRACE_US });
    drop(stop);
    for id in domus() {
        let _ = domain::press_power_button(id);
    }
}

fn domus() -> alloc::vec::Vec<u32> {
    domain::dom0_and_domus().1
}

fn dom0() -> Option<u32> {
    domain::dom0_and_domus().0
}

fn poll() {
    if let Some(port) = POWER.get().and_then(|p| p.pm1a_event) {
        if pio::inw(port) & PWRBTN_STS != 0 {
            pio::outw(port, PWRBTN_STS); // write 1 to clear
            request_stop(false, "the machine's power button was pressed");
        }
    }
    let Some(mut stop) = *STOP.lock() else { return };
    // Read after STOP: a hold taken before the stop was requested is seen.
    if HOLDS.load(core::sync::atomic::Ordering::SeqCst) != 0 {
        return;
    }
    let now = time::uptime_us();
    loop {
        match stop.stage {
            Stage::DomUs => {
                let left = domus();
                if left.is_empty() {
                    stop.stage = Stage::Dom0;
                    stop.deadline_us = now + GRACE_US;
                    if let Some(id) = dom0() {
                        info!("host: the domUs have stopped; asking dom0 to power off");
                        let _ = domain::press_power_button(id);
                    }
                    continue;
                }
                if now >= stop.deadline_us {
                    for id in left {
                        warn!("host: domain {} did not stop within {} s of its power button; destroying it", id, GRACE_US / 1_000_000);
                        let _ = domain::destroy(id);
                    }
                }
            }
            Stage::Dom0 => match dom0() {
                None => {
                    stop.stage = Stage::Done;
                    *STOP.lock() = Some(stop);
                    switch_off(stop.reboot);
                    return;
                }
                Some(id) if now >= stop.deadline_us => {
                    warn!("host: dom0 did not stop within {} s of its power button; destroying it", GRACE_US / 1_000_000);
                    let _ = domain::destroy(id);
                }
                Some(_) => {}
            },
            Stage::Done => {}
        }
        break;
    }
    *STOP.lock() = Some(stop);
}

/// Switches the machine off (ACPI S5) or resets it. Under QEMU with
/// `debug_exit=`, the run was already reported when the last domain went.
fn switch_off(reboot: bool) {
    let power = POWER.get().copied().unwrap_or_default();
    if reboot {
        info!("host: resetting the machine");
        if let Some((port, value)) = power.reset {
            pio::outb(port, value);
        }
        // The PC's reset control register, then the keyboard controller.
        pio::outb(0xCF9, 0x06);
        pio::outb(0x64, 0xFE);
        time::delay_us(1_000_000);
        error!("host: the machine did not reset; it stays up, idle");
        return;
    }
    match (power.pm1a_control, power.s5) {
        (Some(a), Some((typ_a, typ_b))) => {
            info!("host: powering the machine off (ACPI S5)");
            if let Some(b) = power.pm1b_control {
                pio::outw(b, (u16::from(typ_b & 7) << 10) | SLP_EN);
            }
            pio::outw(a, (u16::from(typ_a & 7) << 10) | SLP_EN);
            // The chipset takes a moment (QEMU finishes its I/O first).
            time::delay_us(1_000_000);
            error!("host: the machine did not power off; it stays up, idle");
        }
        _ => error!("host: the firmware describes no ACPI soft-off (no PM1 control or \\_S5); it stays up, idle"),
    }
}
