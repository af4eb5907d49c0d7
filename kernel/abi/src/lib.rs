//! The interface between the Ferrite hypervisor and a stub domain: the
//! stub's memory map, its start-up configuration, the I/O-request slots it
//! serves and the hypercalls it makes.
//!
//! A stub domain is an ordinary guest of the hypervisor, started in 64-bit
//! mode, that emulates the devices of exactly one HVM guest. Its nested
//! page tables map its own RAM, its I/O-request page and (read-write, at
//! [`GUEST_WINDOW`]) its guest's RAM; nothing else. Everything it hands the
//! hypervisor is checked there before use.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Memory map of a stub domain (guest-physical = the stub's virtual address:
// the hypervisor builds identity page tables for it).

/// Bytes of RAM a stub domain gets, from guest-physical 0.
pub const STUB_RAM_BYTES: u64 = 4 << 20;
/// The postcard-encoded [`StubConfig`], preceded by its length (u32 LE).
pub const START_INFO_GPA: u64 = 0x1000;
pub const START_INFO_MAX: u64 = 0xF000;
/// The stub's page tables are built by the hypervisor from here up.
pub const PAGE_TABLES_GPA: u64 = 0x10_000;
pub const PAGE_TABLES_END: u64 = 0x100_000;
/// Where the stub image is linked.
pub const IMAGE_BASE: u64 = 0x100_000;
/// The I/O-request page: one [`IoRequest`] slot per guest vCPU.
pub const IOREQ_GPA: u64 = STUB_RAM_BYTES;
/// The buffered-write page: port writes that need no answer, queued by
/// the hypervisor without stopping the guest (see [`bufio`]).
pub const BUFIO_GPA: u64 = IOREQ_GPA + 0x1000;
/// Receive rings of the guest's NICs, in the stub's RAM: NIC `handle`'s
/// ring is [`NET_RX_RING_BYTES`] at `NET_RX_GPA + handle * NET_RX_RING_BYTES`
/// (see [`net_rx`]). The stub image must end below it.
pub const NET_RX_GPA: u64 = 0x30_0000;
pub const NET_RX_RING_BYTES: u64 = 0x2_0000;
/// NICs a guest may have (the rings fill the stub's last MiB).
pub const MAX_NICS: usize = 8;

// A ring holds a useful number of frames, each up to 1518 bytes.
const _: () = assert!(net_rx::SLOTS >= 16 && net_rx::MAX_FRAME >= 1518);

/// A NIC's receive ring: frames the hypervisor's bridge delivers for the
/// guest, written by the hypervisor and taken by the stub, which hands
/// them to its NIC model. The hypervisor writes a slot (length, then the
/// frame), then bumps PRODUCED; the stub reads slots up to PRODUCED, then
/// bumps CONSUMED. Both count frames, wrapping; slot = count % SLOTS.
/// A full ring drops the frame (the hypervisor counts it).
pub mod net_rx {
    /// u32, written by the hypervisor.
    pub const PRODUCED: u64 = 0;
    /// u32, written by the stub.
    pub const CONSUMED: u64 = 4;
    /// The first slot.
    pub const SLOTS_OFFSET: u64 = 0x1000;
    pub const SLOT_BYTES: u64 = 2048;
    pub const SLOTS: u32 = ((super::NET_RX_RING_BYTES - SLOTS_OFFSET) / SLOT_BYTES) as u32;
    /// In a slot: the frame's length (u32), then the frame.
    pub const SLOT_LEN: u64 = 0;
    pub const SLOT_FRAME: u64 = 4;
    /// The longest frame a slot holds.
    pub const MAX_FRAME: u64 = SLOT_BYTES - SLOT_FRAME;
}

/// NET_SEND: one piece of a frame (in a list the stub passes).
pub mod net_piece {
    pub const SIZE: usize = 16;
    /// u64 address, u32 length, u32 reserved (0).
    pub const ADDR: usize = 0;
    pub const LEN: usize = 8;
}
/// Pieces of one frame at most.
pub const NET_MAX_PIECES: usize = 64;

/// The served guest's RAM appears at `GUEST_WINDOW + guest-physical`.
pub const GUEST_WINDOW: u64 = 0x80_0000_0000;
/// The largest guest-physical address the window covers.
pub const GUEST_WINDOW_MAX: u64 = 0x80_0000_0000;
/// Slots in the I/O-request page (so at most this many guest vCPUs).
pub const IOREQ_SLOTS: usize = 4096 / IOREQ_SLOT_SIZE;
pub const IOREQ_SLOT_SIZE: usize = 64;

// ---------------------------------------------------------------------------
// I/O requests.

/// Slot states. The hypervisor moves a slot FREE → READY; the stub READY →
/// DONE (writing `data` for reads); the hypervisor DONE → FREE when it
/// resumes the guest vCPU.
pub const STATE_FREE: u32 = 0;
pub const STATE_READY: u32 = 1;
pub const STATE_DONE: u32 = 2;

pub const KIND_PIO: u8 = 0;
pub const KIND_MMIO: u8 = 1;

pub const DIR_WRITE: u8 = 0;
pub const DIR_READ: u8 = 1;

/// `data` is the guest-physical address of a buffer of `count * size`
/// bytes (string I/O: `rep ins/outs`), not the value.
pub const FLAG_DATA_IS_GPA: u8 = 1 << 0;
/// String I/O walks the buffer downwards (RFLAGS.DF).
pub const FLAG_DOWN: u8 = 1 << 1;

/// Byte offsets of the fields of a slot (`#[repr(C)]` layout, all
/// little-endian). Both sides read and write slots with these offsets.
pub mod slot {
    pub const STATE: usize = 0; // u32
    pub const KIND: usize = 4; // u8
    pub const DIR: usize = 5; // u8
    pub const SIZE: usize = 6; // u8: 1, 2, 4 or 8
    pub const FLAGS: usize = 7; // u8
    pub const COUNT: usize = 8; // u32: repetitions, at least 1
    pub const VCPU: usize = 12; // u32
    pub const ADDR: usize = 16; // u64: port or guest-physical address
    pub const DATA: usize = 24; // u64
}

/// One request as plain values (what a slot holds, minus its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoRequest {
    pub kind: u8,
    pub dir: u8,
    pub size: u8,
    pub flags: u8,
    pub count: u32,
    pub vcpu: u32,
    pub addr: u64,
    pub data: u64,
}

impl IoRequest {
    pub fn is_read(&self) -> bool {
        self.dir == DIR_READ
    }

    /// Encodes the fields (not the state) into a slot.
    pub fn encode(&self, slot_bytes: &mut [u8; IOREQ_SLOT_SIZE]) {
        slot_bytes[slot::KIND] = self.kind;
        slot_bytes[slot::DIR] = self.dir;
        slot_bytes[slot::SIZE] = self.size;
        slot_bytes[slot::FLAGS] = self.flags;
        slot_bytes[slot::COUNT..slot::COUNT + 4].copy_from_slice(&self.count.to_le_bytes());
        slot_bytes[slot::VCPU..slot::VCPU + 4].copy_from_slice(&self.vcpu.to_le_bytes());
        slot_bytes[slot::ADDR..slot::ADDR + 8].copy_from_slice(&self.addr.to_le_bytes());
        slot_bytes[slot::DATA..slot::DATA + 8].copy_from_slice(&self.data.to_le_bytes());
    }

    pub fn decode(slot_bytes: &[u8; IOREQ_SLOT_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([slot_bytes[o], slot_bytes[o + 1], slot_bytes[o + 2], slot_bytes[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        IoRequest {
            kind: slot_bytes[slot::KIND],
            dir: slot_bytes[slot::DIR],
            size: slot_bytes[slot::SIZE],
            flags: slot_bytes[slot::FLAGS],
            count: u32_at(slot::COUNT),
            vcpu: u32_at(slot::VCPU),
            addr: u64_at(slot::ADDR),
            data: u64_at(slot::DATA),
        }
    }
}

/// Buffered port writes (Xen's "buffered ioreq"): the stub lists the port
/// ranges whose writes it can take late (the write has no result and the
/// device's reaction can wait for the stub's next turn); the hypervisor
/// appends such writes to a ring instead of making the guest wait, and the
/// stub applies the ring, in order, before any request in the slots — so
/// a later read still sees every earlier write. If the ring is full the
/// write goes through a slot as usual.
///
/// Page layout: `PRODUCED` u32 (hypervisor, count of entries written),
/// `CONSUMED` u32 (stub, count applied), `RANGES`: [`BUFIO_RANGES`] pairs of
/// u16 (first, last port; first > last = unused) written by the stub, then
/// [`BUFIO_ENTRIES`] entries of 8 bytes: u16 port, u8 size, u8 reserved,
/// u32 value; entry `n` is at index `n % BUFIO_ENTRIES`.
pub mod bufio {
    pub const PRODUCED: usize = 0;
    pub const CONSUMED: usize = 4;
    pub const RANGES: usize = 8;
    pub const ENTRIES: usize = 128;
    pub const ENTRY_SIZE: usize = 8;
}
pub const BUFIO_RANGES: usize = 16;
pub const BUFIO_ENTRIES: usize = 256;
// The range table ends before the ring, and the ring fits the page.
const _: () = assert!(bufio::RANGES + BUFIO_RANGES * 4 <= bufio::ENTRIES);
const _: () = assert!(bufio::ENTRIES + BUFIO_ENTRIES * bufio::ENTRY_SIZE <= 4096);

/// One buffered port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BufferedWrite {
    pub port: u16,
    pub size: u8,
    pub value: u32,
}

impl BufferedWrite {
    pub fn encode(&self) -> [u8; bufio::ENTRY_SIZE] {
        let mut e = [0u8; bufio::ENTRY_SIZE];
        e[0..2].copy_from_slice(&self.port.to_le_bytes());
        e[2] = self.size;
        e[4..8].copy_from_slice(&self.value.to_le_bytes());
        e
    }

    pub fn decode(e: &[u8; bufio::ENTRY_SIZE]) -> Self {
        BufferedWrite { port: u16::from_le_bytes([e[0], e[1]]), size: e[2], value: u32::from_le_bytes([e[4], e[5], e[6], e[7]]) }
    }
}

// ---------------------------------------------------------------------------
// Hypercalls: `vmmcall` with the number in rax and arguments in rdi, rsi,
// rdx, r10, r8; the result comes back in rax (0 or a value on success, a
// negative `Errno` on failure).

pub mod hypercall {
    /// Print `len` bytes at stub address `arg0` on the hypervisor console,
    /// prefixed with the stub's name.
    pub const CONSOLE_WRITE: u64 = 0x100;
    /// Block until a slot is READY or the guest's console has input;
    /// returns [`crate::WAIT_REQUESTS`] and/or [`crate::WAIT_INPUT`] (never
    /// 0). With [`crate::WAIT_FLAG_ANSWERED`] in `arg0` it first does what
    /// IOREQ_DONE does (one exit instead of two per batch).
    pub const WAIT: u64 = 0x101;
    /// Slots were moved to DONE: resume the guest vCPUs waiting on them.
    pub const IOREQ_DONE: u64 = 0x102;
    /// Drive guest interrupt line `arg0` (ISA IRQ / GSI 0..23) to level `arg1`.
    pub const SET_IRQ: u64 = 0x103;
    /// A block request described by a [`crate::BlockRequest`] at stub address
    /// `arg0`; `arg1` = its length in bytes.
    pub const BLOCK_IO: u64 = 0x104;
    /// Copy `arg3` bytes of data source `arg0` from offset `arg1` to
    /// `arg2`: a guest-physical address of the served guest if `arg4` is
    /// [`crate::DEST_GUEST`], else a stub address.
    pub const DATA_READ: u64 = 0x105;
    /// The guest asked for a platform action: `arg0` is a [`crate::PowerAction`] code.
    pub const GUEST_POWER: u64 = 0x106;
    /// Take up to `arg1` bytes of console input for the guest into stub
    /// address `arg0`; returns the count.
    pub const CONSOLE_INPUT: u64 = 0x107;
    /// Output of the guest's console (UART) — `len` bytes at stub address
    /// `arg0`, shown with the guest's name.
    pub const GUEST_CONSOLE_WRITE: u64 = 0x108;
    /// NIC `arg0` sends a frame of `arg2` pieces listed at stub address
    /// `arg1` (each [`crate::net_piece`]); the pieces are guest-physical
    /// addresses of the served guest if `arg3` is [`crate::DEST_GUEST`],
    /// else stub addresses. Returns 0 (also when the bridge drops it).
    pub const NET_SEND: u64 = 0x109;
}

/// WAIT result bits: some slot is READY; console input is waiting.
pub const WAIT_REQUESTS: u64 = 1 << 0;
pub const WAIT_INPUT: u64 = 1 << 1;
/// ... frames wait in a NIC's receive ring.
pub const WAIT_NET: u64 = 1 << 2;
/// WAIT argument: slots were moved to DONE since the last call.
pub const WAIT_FLAG_ANSWERED: u64 = 1 << 0;

pub const DEST_STUB: u64 = 0;
pub const DEST_GUEST: u64 = 1;

/// Error results of hypercalls (returned negated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Errno {
    /// A handle, number or flag is not valid.
    Inval = 22,
    /// An address range is outside the memory the stub may name.
    Fault = 14,
    /// The disk is read-only.
    Rofs = 30,
    /// The backing device failed.
    Io = 5,
    /// No such hypercall.
    Nosys = 38,
}

impl Errno {
    pub fn as_result(self) -> u64 {
        (-(self as i64)) as u64
    }

    pub fn from_result(value: u64) -> Option<Self> {
        // Wrapping: i64::MIN (bit 63 alone) has no negation and is no errno.
        match (value as i64).wrapping_neg() {
            22 => Some(Errno::Inval),
            14 => Some(Errno::Fault),
            30 => Some(Errno::Rofs),
            5 => Some(Errno::Io),
            38 => Some(Errno::Nosys),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum PowerAction {
    Reset = 0,
    PowerOff = 1,
}

impl PowerAction {
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(PowerAction::Reset),
            1 => Some(PowerAction::PowerOff),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Block requests (the BLOCK_IO hypercall argument).

pub const BLOCK_READ: u32 = 0;
pub const BLOCK_WRITE: u32 = 1;
pub const BLOCK_FLUSH: u32 = 2;
/// The most segments one request may carry.
pub const BLOCK_MAX_SEGMENTS: usize = 128;
/// Most sectors one request moves: 32 MiB, an ATA command's limit
/// (LBA48, 65536 sectors). It bounds the time one BLOCK_IO call holds a
/// host CPU, however the segments overlap.
pub const BLOCK_MAX_SECTORS: u32 = 65536;
/// Segment addresses are guest-physical addresses of the served guest
/// (DMA); without it they are stub addresses (PIO buffers).
pub const BLOCK_FLAG_GUEST: u32 = 1;

/// Layout: header of 24 bytes — disk u32, op u32, lba u64, count u32
/// (sectors), nsegs u16, flags u16 — then `nsegs` entries of (u64 address,
/// u32 length, u32 reserved).
pub mod block {
    pub const HEADER: usize = 24;
    pub const SEGMENT: usize = 16;
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BlockRequest {
    pub disk: u32,
    pub op: u32,
    pub lba: u64,
    pub count: u32,
    pub flags: u32,
    pub segments: Vec<(u64, u32)>,
}

impl BlockRequest {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.op.to_le_bytes());
        out.extend_from_slice(&self.lba.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.segments.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.flags as u16).to_le_bytes());
        for &(addr, len) in &self.segments {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
    }

    /// Parses an untrusted request; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let u32_at = |o: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?)) };
        let u64_at = |o: usize| -> Option<u64> { Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?)) };
        let nsegs = u32_at(20)? & 0xFFFF;
        let flags = u32_at(20)? >> 16;
        if nsegs as usize > BLOCK_MAX_SEGMENTS {
            return None;
        }
        let mut segments = Vec::with_capacity(nsegs as usize);
        for i in 0..nsegs as usize {
            let o = block::HEADER + i * block::SEGMENT;
            // The whole entry, reserved word included, must be there.
            bytes.get(o..o + block::SEGMENT)?;
            segments.push((u64_at(o)?, u32_at(o + 8)?));
        }
        Some(BlockRequest { disk: u32_at(0)?, op: u32_at(4)?, lba: u64_at(8)?, count: u32_at(16)?, flags, segments })
    }

    /// Whether a read or write fits a disk of `disk_sectors`: at most
    /// [`BLOCK_MAX_SECTORS`], inside the disk (no LBA wrap), and its
    /// segments adding up to exactly its sectors.
    pub fn check_transfer(&self, disk_sectors: u64) -> Result<(), &'static str> {
        if self.count > BLOCK_MAX_SECTORS {
            return Err("more sectors than one request may move");
        }
        let end = self.lba.checked_add(u64::from(self.count)).ok_or("the LBA range wraps")?;
        if end > disk_sectors {
            return Err("past the end of the disk");
        }
        let total: u64 = self.segments.iter().map(|&(_, l)| u64::from(l)).sum();
        if total != u64::from(self.count) * 512 {
            return Err("the segments do not add up to the sectors");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The stub's configuration, written by the hypervisor at START_INFO_GPA.

/// How the served guest sees a disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StubDiskModel {
    /// Emulated IDE at the channel/unit its vdev names (`hda`..`hdd`).
    #[default]
    Ide,
    /// virtio-blk on the guest's PCI bus (xl `specification=virtio`).
    VirtioPci,
}

/// A disk of the served guest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StubDisk {
    /// Handle for BLOCK_IO.
    pub handle: u32,
    /// The backing device's name (the `phy:` target).
    pub name: String,
    /// Guest-side name: "hda".."hdd" (IDE channel/unit) for IDE; the
    /// config's vdev (for the log) for virtio-blk.
    pub vdev: String,
    pub sectors: u64,
    pub read_only: bool,
    pub model: StubDiskModel,
}

/// How the served guest sees a NIC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StubNicModel {
    /// An Intel 82540EM (xl `model=e1000`, the default).
    #[default]
    E1000,
    /// virtio-net on the guest's PCI bus (xl `model=virtio-net`).
    VirtioPci,
}

/// A NIC of the served guest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubNic {
    /// Handle for NET_SEND, and its receive ring's index.
    pub handle: u32,
    pub mac: [u8; 6],
    pub model: StubNicModel,
}

/// A blob the stub can read with DATA_READ but does not hold (kernel,
/// initrd, option ROM).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSource {
    pub handle: u32,
    pub len: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirectLinuxBoot {
    pub kernel: DataSource,
    pub initrd: Option<DataSource>,
    pub cmdline: String,
    /// QEMU's `linuxboot_dma.bin`, handed to SeaBIOS as an option ROM.
    pub option_rom: DataSource,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StubConfig {
    /// The served guest's domain id and name.
    pub guest_id: u32,
    pub guest_name: String,
    pub vcpus: u32,
    /// Guest RAM below 4 GiB (from 0) and above 4 GiB (from 4 GiB).
    pub ram_below_4g: u64,
    pub ram_above_4g: u64,
    pub disks: Vec<StubDisk>,
    /// NICs, at most [`MAX_NICS`].
    pub nics: Vec<StubNic>,
    pub linux: Option<DirectLinuxBoot>,
    /// SeaBIOS boot order (fw_cfg `bootorder`), may be empty.
    pub boot_order: String,
    /// ACPI fixed-hardware ports the hypervisor emulates (for the tables).
    pub pm1a_evt: u16,
    pub pm1a_cnt: u16,
    pub pm_tmr: u16,
    /// The PM timer counts 32 bits (else 24).
    pub pm_tmr_32bit: bool,
    pub sci_irq: u8,
    /// Test builds only: make the IDE model panic on this ATA command.
    pub fault_inject_ata_command: Option<u8>,
    /// Test builds only: that command makes the stub write outside the
    /// memory it may touch (just past its guest window) instead of
    /// panicking; the hypervisor must fault it, not serve it.
    pub fault_inject_wild_access: bool,
}

impl StubConfig {
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioreq_round_trips_through_a_slot() {
        let req = IoRequest { kind: KIND_PIO, dir: DIR_READ, size: 2, flags: FLAG_DATA_IS_GPA, count: 256, vcpu: 3, addr: 0x1F0, data: 0x7C00 };
        let mut slot = [0u8; IOREQ_SLOT_SIZE];
        req.encode(&mut slot);
        assert_eq!(IoRequest::decode(&slot), req);
        assert_eq!(u32::from_le_bytes(slot[0..4].try_into().unwrap()), STATE_FREE);
    }

    #[test]
    fn block_transfers_are_checked() {
        let seg = |n: u32| vec![(0x1000u64, n * 512)];
        let req = |lba: u64, count: u32, segments| BlockRequest { disk: 0, op: BLOCK_READ, lba, count, flags: 0, segments };
        assert_eq!(req(0, 8, seg(8)).check_transfer(100), Ok(()));
        assert_eq!(req(92, 8, seg(8)).check_transfer(100), Ok(()));
        assert!(req(93, 8, seg(8)).check_transfer(100).is_err());
        assert!(req(u64::MAX - 3, 8, seg(8)).check_transfer(u64::MAX).is_err());
        assert!(req(0, 8, seg(7)).check_transfer(100).is_err());
        // 32 MiB passes; one sector more does not, however it is laid out.
        assert_eq!(req(0, BLOCK_MAX_SECTORS, vec![(0x1000, 16 << 20), (0x1000, 16 << 20)]).check_transfer(1 << 30), Ok(()));
        assert!(req(0, BLOCK_MAX_SECTORS + 1, vec![(0x1000, 16 << 20), (0x1000, (16 << 20) + 512)]).check_transfer(1 << 30).is_err());
    }

    #[test]
    fn block_request_round_trips_and_rejects_garbage() {
        let req = BlockRequest { disk: 1, op: BLOCK_WRITE, lba: 77, count: 3, flags: BLOCK_FLAG_GUEST, segments: vec![(0x1000, 512), (0x9000, 1024)] };
        let mut bytes = Vec::new();
        req.encode(&mut bytes);
        assert_eq!(BlockRequest::decode(&bytes), Some(req));
        assert_eq!(BlockRequest::decode(&bytes[..30]), None);
        let mut huge = bytes.clone();
        huge[20..22].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(BlockRequest::decode(&huge), None);
    }

    /// Found by `ferrite fuzz block-request`: a last segment without its
    /// reserved word was accepted.
    #[test]
    fn block_request_with_a_truncated_last_segment_is_refused() {
        let req = BlockRequest { disk: 0, op: BLOCK_READ, lba: 0, count: 2, flags: 0, segments: vec![(0x1000, 512), (0x2000, 512)] };
        let mut bytes = Vec::new();
        req.encode(&mut bytes);
        assert_eq!(BlockRequest::decode(&bytes), Some(req));
        for cut in 1..=4 {
            assert_eq!(BlockRequest::decode(&bytes[..bytes.len() - cut]), None, "{cut} bytes short");
        }
    }

    #[test]
    fn config_round_trips() {
        let cfg = StubConfig {
            guest_id: 2,
            guest_name: "hvm1".into(),
            vcpus: 1,
            ram_below_4g: 256 << 20,
            ram_above_4g: 0,
            disks: vec![
                StubDisk { handle: 0, name: "disk0".into(), vdev: "hda".into(), sectors: 2048, read_only: false, model: StubDiskModel::Ide },
                StubDisk {
                    handle: 1,
                    name: "disk1".into(),
                    vdev: "xvda".into(),
                    sectors: 4096,
                    read_only: true,
                    model: StubDiskModel::VirtioPci,
                },
            ],
            nics: vec![
                StubNic { handle: 0, mac: [0, 0x16, 0x3e, 1, 2, 3], model: StubNicModel::E1000 },
                StubNic { handle: 1, mac: [0, 0x16, 0x3e, 1, 2, 4], model: StubNicModel::VirtioPci },
            ],
            linux: None,
            boot_order: String::new(),
            pm1a_evt: 0xB000,
            pm1a_cnt: 0xB004,
            pm_tmr: 0xB008,
            pm_tmr_32bit: true,
            sci_irq: 9,
            fault_inject_ata_command: None,
            fault_inject_wild_access: false,
        };
        assert_eq!(StubConfig::from_bytes(&cfg.to_bytes().unwrap()).unwrap(), cfg);
        let wild = StubConfig { fault_inject_ata_command: Some(0xEC), fault_inject_wild_access: true, ..cfg.clone() };
        assert_eq!(StubConfig::from_bytes(&wild.to_bytes().unwrap()).unwrap(), wild);
        assert!(StubConfig::from_bytes(&[0xFF; 3]).is_err());
    }

    #[test]
    fn net_rx_rings_fit_the_stubs_last_mib() {
        assert_eq!(NET_RX_GPA + MAX_NICS as u64 * NET_RX_RING_BYTES, STUB_RAM_BYTES);
    }

    #[test]
    fn buffered_write_round_trips() {
        let w = BufferedWrite { port: 0x1F2, size: 1, value: 0x80 };
        assert_eq!(BufferedWrite::decode(&w.encode()), w);
        // That the layout fits the page is checked at compile time, next to
        // the constants.
    }

    #[test]
    fn errno_round_trips() {
        for e in [Errno::Inval, Errno::Fault, Errno::Rofs, Errno::Io, Errno::Nosys] {
            assert_eq!(Errno::from_result(e.as_result()), Some(e));
        }
        // Found by `ferrite fuzz ioreq-slot`: negating i64::MIN overflowed
        // (a panic in debug builds).
        assert_eq!(Errno::from_result(1 << 63), None);
        assert_eq!(Errno::from_result(0), None);
    }
}
