//! The in-hypervisor platform of a domain: the devices a PVH kernel
//! touches (UART console, I/O APIC, ACPI PM1/PM timer/reset, CMOS RTC, PIT)
//! plus each vCPU's local APIC, and the wiring between them: port and MMIO
//! routing, ISA IRQ → GSI, I/O APIC → LAPIC delivery, IPIs.
//!
//! An HVM domain has the same interrupt controllers and timers plus the
//! legacy 8259 PIC; its UART and every other device live in its stub
//! domain, which drives interrupt lines through [`Devices::set_isa_irq`].
//!
//! The device logic lives in `ferrite-devmodel`; this module only routes.

use crate::arch::time;
use core::sync::atomic::Ordering;
use alloc::vec::Vec;
use ferrite_devmodel::acpi_pm::{AcpiPm, AcpiPmLayout, IoWrite, PowerEvent};
use ferrite_devmodel::ioapic::{Delivery, IoApic};
use ferrite_devmodel::lapic::{DeliveryMode, DestMode, IpiRequest, Lapic, Shorthand};
use ferrite_devmodel::pic::Pic;
use ferrite_devmodel::pit::Pit;
use ferrite_devmodel::rtc::Rtc;
use ferrite_devmodel::uart16550::Uart16550;
use ferrite_devmodel::{Clock, WallClock};
use ferrite_loader::acpi::PlatformLayout;

pub const COM1_BASE: u16 = 0x3F8;
const COM1_GSI: u8 = 4;
const RTC_GSI: u8 = 8;
/// ISA IRQ 0 (the PIT) arrives on GSI 2, as the MADT override says.
const PIT_GSI: u8 = 2;
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;

/// Guest time: the host TSC in nanoseconds (guests read the same TSC).
pub struct HostClock;

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

pub struct HostWallClock;

impl WallClock for HostWallClock {
    fn unix_time(&self) -> u64 {
        time::unix_time()
    }
}

/// The host's ACPI PM timer port (0: none) and whether it counts 32 bits,
/// when guests read it directly.
static HOST_PM_TIMER: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Guests read the host's PM timer at `port` directly instead of an
/// emulated one (called once at boot, nested under another hypervisor).
///
/// Why: a guest calibrates its TSC against a reference clock it reads by
/// port I/O, and rejects every sample whose read took longer than a few
/// tens of microseconds (Linux: `tsc_read_refs`, the PIT loops), since on
/// hardware that means an SMI hit it. Nested, every exit costs that much
/// or more (QEMU's TCG: 20-150 µs per round trip), so an emulated timer
/// never yields a sample, Linux marks its TSC unusable, and a PVH kernel,
/// which has no PIT interrupt to fall back on, hangs calibrating its
/// LAPIC timer. The outer hypervisor's PM timer counts real time at
/// 3.579545 MHz like ours, against the same TSC the guest reads, so it is
/// the same clock without the exit. The register is read-only and the
/// outer hypervisor ignores writes; no other host port is opened.
pub fn use_host_pm_timer(port: u16, is_32bit: bool) {
    let value = u32::from(port) | if is_32bit { 1 << 16 } else { 0 };
    HOST_PM_TIMER.store(value, Ordering::Relaxed);
}

/// The host PM timer port guests read directly, if any.
pub fn host_pm_timer_port() -> Option<u16> {
    let port = HOST_PM_TIMER.load(Ordering::Relaxed) as u16;
    (port != 0).then_some(port)
}

/// Where new guests' ACPI fixed hardware is (their tables and the
/// emulation agree on it): the defaults, with the host's PM timer when
/// guests read it directly.
pub fn guest_layout() -> PlatformLayout {
    let host = HOST_PM_TIMER.load(Ordering::Relaxed);
    let mut layout = PlatformLayout::DEFAULT;
    if host as u16 != 0 {
        layout.pm_tmr = host as u16;
        layout.pm_tmr_32bit = host & (1 << 16) != 0;
    }
    layout
}

/// What a device access asks of the caller beyond the access itself.
#[derive(Default)]
pub struct Effects {
    /// Interrupts to deliver to the domain's LAPICs.
    pub deliveries: Vec<Delivery>,
    pub power: Option<PowerEvent>,
    /// The console produced output.
    pub console: bool,
    /// The PIC's output may have changed (vCPU 0 should look).
    pub pic: bool,
}

/// Which ports a domain's in-hypervisor devices decode; a copy lives in
/// the domain so an exit can tell without taking the device lock.
#[derive(Clone, Copy, Debug)]
pub struct PortMap {
    pic: bool,
    uart: bool,
    pm: AcpiPmLayout,
}

impl PortMap {
    /// Whether a device in the hypervisor decodes `port` (else, in an HVM
    /// domain, the access goes to the stub domain).
    pub fn is_local(&self, port: u16, size: u8) -> bool {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 | 0x80 => self.pic,
            0x40..=0x43 | 0x61 | 0x70 | 0x71 => true,
            COM1_BASE..=0x3FF => self.uart,
            _ => self.pm.handles(port, size),
        }
    }
}

/// The domain-wide devices.
pub struct Devices {
    pub uart: Uart16550,
    pub ioapic: IoApic,
    pub pm: AcpiPm,
    pub rtc: Rtc,
    pub pit: Pit,
    pub layout: PlatformLayout,
    /// HVM only: the legacy PIC pair.
    pub pic: Option<Pic>,
    /// PVH: the UART is here; HVM: in the stub domain.
    has_uart: bool,
    pm_layout: AcpiPmLayout,
    /// Last level driven onto each GSI by a level-style source.
    uart_line: bool,
    /// Console input waiting for room in the UART's receive FIFO.
    input_backlog: alloc::collections::VecDeque<u8>,
    rtc_line: bool,
    sci_line: bool,
}

impl Devices {
    /// The devices of a PVH domain.
    pub fn new_pvh(layout: PlatformLayout) -> Self {
        Self::new(layout, false)
    }

    /// The in-hypervisor devices of an HVM domain: no UART (its stub
    /// domain has it), a PIC, and CMOS memory-size fields for its BIOS.
    pub fn new_hvm(layout: PlatformLayout, ram_below_4g: u64, ram_above_4g: u64, vcpus: u32) -> Self {
        let mut d = Self::new(layout, true);
        // The CMOS fields a PC BIOS reads (SeaBIOS falls back on them when
        // fw_cfg has no e820): base memory in KiB, memory over 1 MiB in
        // KiB (capped), over 16 MiB in 64 KiB units, over 4 GiB in 64 KiB
        // units, and QEMU's CPU-count-minus-one at 0x5F.
        let over_1m_kib = (ram_below_4g.saturating_sub(1 << 20) >> 10).min(0xFFFF);
        let over_16m_64k = (ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xFFFF);
        let over_4g_64k = ram_above_4g >> 16;
        for (index, value) in [
            (0x15, 640u64 & 0xFF),
            (0x16, 640 >> 8),
            (0x17, over_1m_kib & 0xFF),
            (0x18, over_1m_kib >> 8),
            (0x30, over_1m_kib & 0xFF),
            (0x31, over_1m_kib >> 8),
            (0x34, over_16m_64k & 0xFF),
            (0x35, over_16m_64k >> 8),
            (0x5B, over_4g_64k & 0xFF),
            (0x5C, (over_4g_64k >> 8) & 0xFF),
            (0x5D, (over_4g_64k >> 16) & 0xFF),
            (0x5F, u64::from(vcpus.saturating_sub(1))),
        ] {
            d.rtc.set_cmos(index, value as u8);
        }
        d
    }

    fn new(layout: PlatformLayout, hvm: bool) -> Self {
        let pm_layout = AcpiPmLayout {
            pm1a_evt: layout.pm1a_evt,
            pm1a_cnt: layout.pm1a_cnt,
            pm_tmr: layout.pm_tmr,
            reset_port: layout.reset_port,
            reset_value: layout.reset_value,
            slp_typ_s5: layout.slp_typ_s5,
            timer_32bit: layout.pm_tmr_32bit,
        };
        Devices {
            uart: Uart16550::new(),
            ioapic: IoApic::new(layout.ioapic_id),
            pm: AcpiPm::new(pm_layout),
            rtc: Rtc::new(&HostWallClock),
            pit: Pit::new(),
            layout,
            pic: hvm.then(Pic::new),
            has_uart: !hvm,
            pm_layout,
            uart_line: false,
            input_backlog: alloc::collections::VecDeque::new(),
            rtc_line: false,
            sci_line: false,
        }
    }

    /// Drives the level-triggered lines from the devices' current state.
    fn update_lines(&mut self, fx: &mut Effects) {
        let uart = self.has_uart && self.uart.irq_pending();
        if uart != self.uart_line {
            self.uart_line = uart;
            self.set_isa_irq(COM1_GSI, uart, fx);
        }
        let rtc = self.rtc.irq_level();
        if rtc != self.rtc_line {
            self.rtc_line = rtc;
            self.set_isa_irq(RTC_GSI, rtc, fx);
        }
        let sci = self.pm.sci_level();
        if sci != self.sci_line {
            self.sci_line = sci;
            self.set_isa_irq(self.layout.sci_irq, sci, fx);
        }
    }

    /// The ACPI power button was pressed (`xl shutdown`): PWRBTN_STS, and
    /// the SCI if the guest enabled it.
    pub fn press_power_button(&mut self, fx: &mut Effects) {
        self.pm.press_power_button();
        self.update_lines(fx);
    }

    /// Drives ISA interrupt line `irq` (0–15; 16–23 are I/O APIC only) to
    /// `level`: into the PIC (HVM) and onto its I/O APIC pin (IRQ 0 is
    /// wired to pin 2, as the MADT's override says).
    pub fn set_isa_irq(&mut self, irq: u8, level: bool, fx: &mut Effects) {
        if irq > 23 {
            return;
        }
        if let Some(pic) = self.pic.as_mut() {
            if irq < 16 {
                pic.set_irq(irq, level);
                fx.pic = true;
            }
        }
        let gsi = if irq == 0 { PIT_GSI } else { irq };
        fx.deliveries.extend(self.ioapic.set_irq(gsi, level));
    }

    /// Drives I/O APIC pin `gsi` (16-23: PCI-style and virtio-mmio lines,
    /// not on the PIC) to `level`.
    pub fn set_gsi(&mut self, gsi: u8, level: bool, fx: &mut Effects) {
        if gsi < 16 {
            self.set_isa_irq(gsi, level, fx);
        } else if gsi <= 23 {
            fx.deliveries.extend(self.ioapic.set_irq(gsi, level));
        }
    }

    /// Whether the PIC asks the CPU for an interrupt (HVM).
    pub fn pic_pending(&self) -> bool {
        self.pic.as_ref().is_some_and(|p| p.has_interrupt())
    }

    /// The PIC's interrupt acknowledge cycle: the vector to inject.
    pub fn pic_acknowledge(&mut self) -> Option<u8> {
        self.pic.as_mut()?.acknowledge()
    }

    /// Advances the timed devices to now.
    pub fn tick(&mut self, fx: &mut Effects) {
        let now = time::now_ns();
        if self.pit.tick(now) {
            self.set_isa_irq(0, true, fx);
            self.set_isa_irq(0, false, fx);
        }
        self.rtc.poll(&HostWallClock, &HostClock);
        self.pm.update(&HostClock);
        self.update_lines(fx);
    }

    /// The earliest time a device needs `tick`, in TSC nanoseconds.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        [self.pit.next_irq0_ns(), self.rtc.next_event_ns(&HostClock), self.pm.next_event_ns()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Which ports these devices decode (fixed for the domain's life).
    pub fn port_map(&self) -> PortMap {
        PortMap { pic: self.pic.is_some(), uart: self.has_uart, pm: self.pm_layout }
    }

    /// Whether a write to `port` may move a timer deadline (PIT, RTC,
    /// ACPI PM).
    pub fn is_timer_port(&self, port: u16, size: u8) -> bool {
        matches!(port, 0x40..=0x43 | 0x61 | 0x70 | 0x71) || self.pm.handles(port, size)
    }

    /// A port read; `None` when no device decodes the port.
    pub fn port_read(&mut self, port: u16, size: u8, fx: &mut Effects) -> Option<u32> {
        let value = match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 if size == 1 && self.pic.is_some() => {
                u32::from(self.pic.as_mut()?.io_read(port)?)
            }
            // POST codes and Linux's I/O delay: nothing behind it.
            0x80 if self.pic.is_some() => u32::MAX >> (32 - 8 * u32::from(size.min(4))),
            COM1_BASE..=0x3FF if size == 1 && self.has_uart => {
                let v = u32::from(self.uart.read((port - COM1_BASE) as u8));
                self.refill_input();
                self.update_lines(fx);
                v
            }
            0x70 | 0x71 if size == 1 => u32::from(self.rtc.io_read(port, &HostWallClock, &HostClock)),
            0x40..=0x43 | 0x61 if size == 1 => u32::from(self.pit.io_read(port, &HostClock)),
            // The ACPI PM registers, or nothing (`io_read` checks the port).
            _ => self.pm.io_read(port, size, &HostClock)?,
        };
        Some(value)
    }

    /// A port write; returns false when no device decodes the port.
    pub fn port_write(&mut self, port: u16, size: u8, value: u32, fx: &mut Effects) -> bool {
        match port {
            0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1 if size == 1 && self.pic.is_some() => {
                if let Some(pic) = self.pic.as_mut() {
                    pic.io_write(port, value as u8);
                }
                fx.pic = true;
            }
            0x80 if self.pic.is_some() => {}
            COM1_BASE..=0x3FF if size == 1 && self.has_uart => {
                self.uart.write((port - COM1_BASE) as u8, value as u8);
                fx.console = true;
            }
            0x70 | 0x71 if size == 1 => self.rtc.io_write(port, value as u8, &HostWallClock, &HostClock),
            0x40..=0x43 | 0x61 if size == 1 => self.pit.io_write(port, value as u8, &HostClock),
            _ if self.pm.handles(port, size) => match self.pm.io_write(port, size, value, &HostClock) {
                IoWrite::Unhandled => return false,
                IoWrite::Handled => {}
                IoWrite::Event(e) => fx.power = Some(e),
            },
            _ => return false,
        }
        self.update_lines(fx);
        true
    }

    /// Console input for the guest's UART. Bytes wait in a backlog (capped)
    /// while the guest's receive FIFO is full, so typing ahead loses nothing.
    pub fn push_input(&mut self, byte: u8, fx: &mut Effects) {
        if self.input_backlog.len() < 4096 {
            self.input_backlog.push_back(byte);
        }
        self.refill_input();
        self.update_lines(fx);
    }

    /// HVM: console input for the stub domain's UART, up to `max` bytes.
    pub fn take_input(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.input_backlog.len());
        self.input_backlog.drain(..n).collect()
    }

    fn refill_input(&mut self) {
        if !self.has_uart {
            return;
        }
        while self.uart.rx_space() > 0 {
            let Some(b) = self.input_backlog.pop_front() else { break };
            self.uart.push_input(b);
        }
    }

    pub fn ioapic_read(&mut self, offset: u64, size: u8) -> u64 {
        self.ioapic.read_mmio(offset, size)
    }

    pub fn ioapic_write(&mut self, offset: u64, size: u8, value: u64, fx: &mut Effects) {
        fx.deliveries.extend(self.ioapic.write_mmio(offset, size, value));
    }

    /// A level-triggered interrupt was EOIed at a LAPIC.
    pub fn eoi(&mut self, vector: u8, fx: &mut Effects) {
        fx.deliveries.extend(self.ioapic.eoi(vector));
    }
}

/// Which LAPICs an I/O APIC message or IPI goes to. `lapics` is every
/// vCPU's LAPIC in vCPU order; `source` the sender's index for IPIs. A
/// hardware-disabled LAPIC gets nothing, not even a broadcast.
pub fn targets(lapics: &[&Lapic], dest: u32, mode: DestMode, x2apic: bool, shorthand: Shorthand, source: Option<usize>) -> Vec<usize> {
    (0..lapics.len())
        .filter(|&i| {
            lapics[i].on_bus()
                && match shorthand {
                    Shorthand::SelfOnly => Some(i) == source,
                    Shorthand::AllIncludingSelf => true,
                    Shorthand::AllExcludingSelf => Some(i) != source,
                    Shorthand::None => lapics[i].matches_dest(dest, mode, x2apic),
                }
        })
        .collect()
}

/// Lowest-priority delivery: the one target that gets it
/// (`lapic::lowest_priority`: the lowest processor priority, ties to the
/// lowest vCPU), or none when no target can take it.
fn lowest_priority_target(lapics: &[&Lapic], targets: Vec<usize>) -> Vec<usize> {
    ferrite_devmodel::lapic::lowest_priority(targets.into_iter().map(|i| (i, lapics[i]))).into_iter().collect()
}

/// An interrupt for one vCPU, decided by routing.
pub enum VcpuEvent {
    Fixed { vector: u8, level: bool },
    Init,
    Startup(u8),
    Nmi,
}

/// Turns an I/O APIC delivery into per-vCPU events.
pub fn route_delivery(lapics: &[&Lapic], d: &Delivery) -> Vec<(usize, VcpuEvent)> {
    let mut t = targets(lapics, u32::from(d.dest), d.dest_mode, false, Shorthand::None, None);
    if d.delivery_mode == DeliveryMode::LowestPriority {
        t = lowest_priority_target(lapics, t);
    }
    let ev = |_: usize| match d.delivery_mode {
        DeliveryMode::Nmi => Some(VcpuEvent::Nmi),
        DeliveryMode::Fixed | DeliveryMode::LowestPriority => Some(VcpuEvent::Fixed { vector: d.vector, level: d.level_triggered }),
        _ => None,
    };
    t.into_iter().filter_map(|i| ev(i).map(|e| (i, e))).collect()
}

/// Turns an IPI into per-vCPU events.
pub fn route_ipi(lapics: &[&Lapic], req: &IpiRequest, source: usize) -> Vec<(usize, VcpuEvent)> {
    let mut t = targets(lapics, req.dest, req.dest_mode, req.x2apic, req.shorthand, Some(source));
    if req.mode == DeliveryMode::LowestPriority {
        t = lowest_priority_target(lapics, t);
    }
    t.into_iter()
        .filter_map(|i| {
            let e = match req.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => VcpuEvent::Fixed { vector: req.vector, level: false },
                DeliveryMode::Init if !req.is_init_deassert() => VcpuEvent::Init,
                DeliveryMode::Startup => VcpuEvent::Startup(req.vector),
                DeliveryMode::Nmi => VcpuEvent::Nmi,
                _ => return None,
            };
            Some((i, e))
        })
        .collect()
}
