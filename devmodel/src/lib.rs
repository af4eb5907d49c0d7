//! Ferrite's platform device models as pure, safe logic.
//!
//! Every model here is a plain state machine: the hypervisor (or, later, an
//! HVM stub domain) decodes a guest access and calls `read`/`write` (or the
//! port/MMIO/MSR variants); the model never calls out. Interrupts are
//! reported as *line levels* the caller polls after each access or timer
//! event (`irq_pending()`, `irq_level()`, `sci_level()`), or as values
//! returned from the access (`Option<Delivery>`, [`lapic::LapicEffect`]).
//! Time comes in through the [`Clock`] and [`WallClock`] traits.
//!
//! Every input is treated as hostile: out-of-range offsets, odd access
//! sizes and reserved register values never panic; they read as a sane
//! value, are ignored, or are reported as an error the caller turns into a
//! guest fault.
//!
//! | module | device |
//! | --- | --- |
//! | [`uart16550`] | 16550A UART (COM port) |
//! | [`lapic`] | local APIC, xAPIC MMIO and x2APIC MSRs, timer, IPIs |
//! | [`ioapic`] | 24-pin I/O APIC (version 0x11) |
//! | [`acpi_pm`] | ACPI fixed hardware: PM1a event/control, PM timer, reset |
//! | [`rtc`] | MC146818 RTC and CMOS RAM |
//! | [`pit`] | i8254 PIT and port 0x61 |
//! | [`pic`] | dual 8259A PIC and the ELCR |
//! | [`pci`] | PCI configuration space (mechanism #1), i440FX/PIIX4 functions |
//! | [`i8042`] | PS/2 keyboard controller with keyboard and mouse |
//! | [`port92`] | System Control Port A (fast A20, fast reset) |
//! | [`fw_cfg`] | QEMU firmware configuration (I/O ports + DMA), Linux direct boot, ACPI linker/loader |
//! | [`e1000`] | Intel 82540EM Gigabit Ethernet (e1000): registers, EEPROM, PHY, descriptor rings with checksum offload and TSO |
//! | [`ide`] | PIIX4 IDE: two ATA channels, PIO and bus-master DMA |
//! | [`net_offload`] | checksums, TCP segmentation and virtio-net's offload header, shared by the NICs and the hypervisor's bridge |
//! | [`virtio`] | virtio-mmio v2 and virtio-pci transports (N queues), split virtqueue, virtio-blk (disks), virtio-vsock (dom0 ↔ management service) |

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod console_limit;
pub mod acpi_pm;
pub mod clock;
pub mod dma;
pub mod e1000;
pub mod fw_cfg;
pub mod ide;
pub mod ioapic;
pub mod i8042;
pub mod lapic;
pub mod net_offload;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod rtc;
pub mod uart16550;
pub mod virtio;

pub use clock::{Clock, WallClock};

#[cfg(test)]
pub(crate) mod testutil;
