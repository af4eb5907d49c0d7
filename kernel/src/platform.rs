//! The in-hypervisor platform of a PVH domain: the devices a PVH kernel
//! touches (UART console, I/O APIC, ACPI PM1/PM timer/reset, CMOS RTC, PIT)
//! plus each vCPU's local APIC, and the wiring between them: port and MMIO
//! routing, ISA IRQ → GSI, I/O APIC → LAPIC delivery, IPIs.
//!
//! The device logic lives in `ferrite-devmodel`; this module only routes.

use crate::arch::time;
use alloc::vec::Vec;
use ferrite_devmodel::acpi_pm::{AcpiPm, AcpiPmLayout, IoWrite, PowerEvent};
use ferrite_devmodel::ioapic::{Delivery, IoApic};
use ferrite_devmodel::lapic::{DeliveryMode, DestMode, IpiRequest, Lapic, Shorthand};
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

/// What a device access asks of the caller beyond the access itself.
#[derive(Default)]
pub struct Effects {
    /// Interrupts to deliver to the domain's LAPICs.
    pub deliveries: Vec<Delivery>,
    pub power: Option<PowerEvent>,
    /// The console produced output.
    pub console: bool,
}

/// The domain-wide devices.
pub struct Devices {
    pub uart: Uart16550,
    pub ioapic: IoApic,
    pub pm: AcpiPm,
    pub rtc: Rtc,
    pub pit: Pit,
    pub layout: PlatformLayout,
    /// Last level driven onto each GSI by a level-style source.
    uart_line: bool,
    /// Console input waiting for room in the UART's receive FIFO.
    input_backlog: alloc::collections::VecDeque<u8>,
    rtc_line: bool,
    sci_line: bool,
}

impl Devices {
    pub fn new(layout: PlatformLayout) -> Self {
        let pm_layout = AcpiPmLayout {
            pm1a_evt: layout.pm1a_evt,
            pm1a_cnt: layout.pm1a_cnt,
            pm_tmr: layout.pm_tmr,
            reset_port: layout.reset_port,
            reset_value: layout.reset_value,
            slp_typ_s5: layout.slp_typ_s5,
            ..AcpiPmLayout::default()
        };
        Devices {
            uart: Uart16550::new(),
            ioapic: IoApic::new(layout.ioapic_id),
            pm: AcpiPm::new(pm_layout),
            rtc: Rtc::new(&HostWallClock),
            pit: Pit::new(),
            layout,
            uart_line: false,
            input_backlog: alloc::collections::VecDeque::new(),
            rtc_line: false,
            sci_line: false,
        }
    }

    /// Drives the level-triggered lines from the devices' current state.
    fn update_lines(&mut self, fx: &mut Effects) {
        let uart = self.uart.irq_pending();
        if uart != self.uart_line {
            self.uart_line = uart;
            fx.deliveries.extend(self.ioapic.set_irq(COM1_GSI, uart));
        }
        let rtc = self.rtc.irq_level();
        if rtc != self.rtc_line {
            self.rtc_line = rtc;
            fx.deliveries.extend(self.ioapic.set_irq(RTC_GSI, rtc));
        }
        let sci = self.pm.sci_level();
        if sci != self.sci_line {
            self.sci_line = sci;
            fx.deliveries.extend(self.ioapic.set_irq(self.layout.sci_irq, sci));
        }
    }

    /// Advances the timed devices to now.
    pub fn tick(&mut self, fx: &mut Effects) {
        let now = time::now_ns();
        if self.pit.tick(now) {
            fx.deliveries.extend(self.ioapic.set_irq(PIT_GSI, true));
            fx.deliveries.extend(self.ioapic.set_irq(PIT_GSI, false));
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

    /// A port read; `None` when no device decodes the port.
    pub fn port_read(&mut self, port: u16, size: u8, fx: &mut Effects) -> Option<u32> {
        let value = match port {
            COM1_BASE..=0x3FF if size == 1 => {
                let v = u32::from(self.uart.read((port - COM1_BASE) as u8));
                self.refill_input();
                self.update_lines(fx);
                v
            }
            0x70 | 0x71 if size == 1 => u32::from(self.rtc.io_read(port, &HostWallClock, &HostClock)),
            0x40..=0x43 | 0x61 if size == 1 => u32::from(self.pit.io_read(port, &HostClock)),
            _ if self.pm.handles(port, size) => self.pm.io_read(port, size, &HostClock)?,
            _ => return None,
        };
        Some(value)
    }

    /// A port write; returns false when no device decodes the port.
    pub fn port_write(&mut self, port: u16, size: u8, value: u32, fx: &mut Effects) -> bool {
        match port {
            COM1_BASE..=0x3FF if size == 1 => {
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

    fn refill_input(&mut self) {
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
/// vCPU's LAPIC in vCPU order; `source` the sender's index for IPIs.
pub fn targets(lapics: &[&Lapic], dest: u32, mode: DestMode, x2apic: bool, shorthand: Shorthand, source: Option<usize>) -> Vec<usize> {
    (0..lapics.len())
        .filter(|&i| match shorthand {
            Shorthand::SelfOnly => Some(i) == source,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => Some(i) != source,
            Shorthand::None => lapics[i].matches_dest(dest, mode, x2apic),
        })
        .collect()
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
        t.truncate(1);
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
        t.truncate(1);
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
