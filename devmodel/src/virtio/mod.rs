//! Virtio devices (modern, virtio 1.x): the split virtqueue ([`queue`]),
//! the transport-neutral device state with any number of queues
//! ([`common`]), the devices on top of them (the block device [`blk`],
//! the socket device [`vsock`], the network card [`net`]), and two register front ends: virtio-mmio
//! version 2 ([`mmio`], PVH domains' devices in the hypervisor) and
//! virtio-pci ([`pci`], HVM guests' disks in the stub domain).
//!
//! As everywhere in this crate, the model is pure logic: the caller decodes
//! a guest access to the MMIO window and calls `read`/`write`, reads guest
//! memory through [`GuestMemoryAccess`](crate::dma::GuestMemoryAccess),
//! and polls the interrupt level afterwards. Everything the guest controls
//! (register values, ring indices, descriptors, headers) is hostile: a
//! request the model can answer with an error status is answered; a
//! broken queue protocol puts the device into DEVICE_NEEDS_RESET (status
//! bit 0x40, config-change interrupt) and the model touches the queue no
//! more until the driver resets it. Nothing panics, and the work done per
//! call is bounded by the queue size.

use core::fmt;

pub mod blk;
pub mod common;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod queue;
pub mod vsock;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod pci_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vsock_tests;

pub use blk::{
    BlkDiskInfo, BlkOp, BlkRequest, BlkRequestId, BlkStatus, VirtioBlk, VirtioBlkMmio,
    MAX_REQUEST_BYTES,
};
pub use common::Effect;
pub use mmio::MmioEffect;
pub use net::{NetStats, RxOutcome, TxFrame, VirtioNet, VirtioNetMmio};
pub use pci::{VirtioBlkPci, VirtioNetPci};
pub use vsock::{ConnId, ConnState, VirtioVsock, VirtioVsockMmio, VsockEvent};

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Transport-level feature bits (virtio 1.x §6).
pub mod feature {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

/// InterruptStatus bits.
pub mod interrupt {
    /// A buffer was put in the used ring.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration (or DEVICE_NEEDS_RESET) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// The driver broke the virtqueue protocol (or set up a queue that cannot
/// work). The device is then in DEVICE_NEEDS_RESET until the driver resets
/// it; the message says what was wrong, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioError {
    /// QueueReady=1 with a QueueNum that is 0, not a power of two, or above
    /// QueueNumMax.
    BadQueueSize { size: u32, max: u16 },
    /// A ring address is not aligned as the spec requires, or the ring
    /// would wrap around the address space.
    BadRingAddress { ring: &'static str, gpa: u64 },
    /// A ring (or an indirect table) is not in guest RAM.
    NotInGuestRam {
        what: &'static str,
        gpa: u64,
        len: u64,
    },
    /// avail.idx moved further than the queue size past the device's
    /// position (or backwards).
    AvailIndexJump {
        last_seen: u16,
        avail_idx: u16,
        size: u16,
    },
    /// An available-ring entry names a descriptor past the table.
    HeadOutOfRange { head: u16, size: u16 },
    /// A descriptor's `next` points past its table.
    NextOutOfRange {
        head: u16,
        next: u16,
        table_len: u32,
    },
    /// A chain longer than allowed: a loop, or more buffers than the
    /// device accepts in one request.
    ChainTooLong { head: u16, limit: u32 },
    /// INDIRECT used without VIRTIO_F_INDIRECT_DESC negotiated.
    IndirectNotNegotiated { head: u16 },
    /// A descriptor with both INDIRECT and NEXT.
    IndirectWithNext { head: u16 },
    /// INDIRECT inside an indirect table.
    NestedIndirect { head: u16 },
    /// An indirect table of zero length or not a multiple of 16 bytes.
    BadIndirectTable { head: u16, len: u32 },
    /// A head made available again while the device still owns it.
    HeadInFlight { head: u16 },
    /// The chain ends without a device-writable byte for the status.
    NoStatusByte { head: u16 },
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VirtioError::*;
        match *self {
            BadQueueSize { size, max } => write!(
                f,
                "queue enabled with QueueNum {} (must be a power of two from 1 to {})",
                size, max
            ),
            BadRingAddress { ring, gpa } => {
                write!(
                    f,
                    "{} at {:#x} is misaligned or wraps the address space",
                    ring, gpa
                )
            }
            NotInGuestRam { what, gpa, len } => {
                write!(f, "{} at {:#x}+{:#x} is not guest RAM", what, gpa, len)
            }
            AvailIndexJump {
                last_seen,
                avail_idx,
                size,
            } => write!(
                f,
                "avail.idx jumped from {} to {}, more than the queue size {}",
                last_seen, avail_idx, size
            ),
            HeadOutOfRange { head, size } => write!(
                f,
                "available ring names descriptor {} in a queue of {}",
                head, size
            ),
            NextOutOfRange {
                head,
                next,
                table_len,
            } => write!(
                f,
                "chain at head {}: next {} is past a table of {} descriptors",
                head, next, table_len
            ),
            ChainTooLong { head, limit } => write!(
                f,
                "chain at head {} is longer than {} descriptors (a loop?)",
                head, limit
            ),
            IndirectNotNegotiated { head } => write!(
                f,
                "chain at head {} uses an indirect table without VIRTIO_F_INDIRECT_DESC",
                head
            ),
            IndirectWithNext { head } => write!(
                f,
                "chain at head {}: a descriptor has both INDIRECT and NEXT",
                head
            ),
            NestedIndirect { head } => {
                write!(
                    f,
                    "chain at head {}: indirect table inside an indirect table",
                    head
                )
            }
            BadIndirectTable { head, len } => write!(
                f,
                "chain at head {}: indirect table of {} bytes (not a non-zero multiple of 16)",
                head, len
            ),
            HeadInFlight { head } => write!(
                f,
                "descriptor {} made available again while the device still owns it",
                head
            ),
            NoStatusByte { head } => write!(
                f,
                "chain at head {} ends without a device-writable status byte",
                head
            ),
        }
    }
}
