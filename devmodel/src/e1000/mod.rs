//! Intel 82540EM Gigabit Ethernet controller ("e1000", PCI 8086:100E):
//! what QEMU's `-device e1000` is and what Linux's `e1000` driver drives,
//! without I/O.
//!
//! The embedder owns the PCI function ([`config_space`]) and decodes the
//! guest's accesses to BAR0 (128 KiB of registers: [`E1000::mmio_read`] /
//! [`E1000::mmio_write`]) and BAR1 (IOADDR/IODATA, an indirect window on
//! the same registers: [`E1000::io_read`] / [`E1000::io_write`]). After
//! every access it polls [`E1000::irq_level`] (INTx, pin A). A write to
//! TDT (or TCTL) runs the transmit ring at once: every frame the guest
//! sent is handed to the `out` callback as one Ethernet frame without FCS.
//! Frames for the guest go in through [`E1000::receive`];
//! [`E1000::rx_buffers_available`] says whether the guest has posted
//! receive buffers (check it after register writes to release frames held
//! back). When the guest turns bus mastering off, the embedder calls
//! [`E1000::set_dma_enabled`]`(false)`: the model then neither reads nor
//! writes guest memory.
//!
//! ## What is modelled
//!
//! * The registers Linux's `e1000` uses ([`reg`]): reset (CTRL.RST, also
//!   through the I/O window, as Linux issues it on the 82540), link status
//!   (always 1000 Mb/s full duplex; [`E1000::set_link_up`] for the
//!   embedder), the Microwire EEPROM behind EECD (Linux's only way to read
//!   it on the 82540) and EERD, the M88E1011 PHY behind MDIC, interrupt
//!   cause/mask registers, both descriptor rings, the receive address
//!   filter (16 exact entries, the 4096-bit multicast table, VLAN filter
//!   table), statistics (read-to-clear), and plain storage for the rest
//!   of what Linux writes. Unknown offsets read 0 and ignore writes;
//!   SWSM/FWSM are among them (the `e1000` driver uses them only for
//!   later MACs).
//! * Transmit ([`tx`]): legacy descriptors (with the legacy checksum
//!   insertion), context + data descriptors with IP and TCP/UDP checksum
//!   insertion and TCP segmentation (TSO), VLAN tag insertion, multi-
//!   descriptor packets, DD write-back for RS, TXDW/TXQE.
//! * Receive ([`rx`]): the address filters, VLAN stripping, padding to 60
//!   bytes, the FCS appended unless RCTL.SECRC (Linux's `e1000` strips 4
//!   bytes itself), frames spread over descriptors of RCTL.BSIZE/BSEX
//!   bytes, RXT0/RXDMT0/RXO, MPC when the ring is full. No receive
//!   checksum offload (IXSM tells the driver so).
//!
//! Not modelled: interrupt moderation timers (ITR, RDTR/RADV, TIDV/TADV
//! are stored; interrupts are raised at once), flow control, wake-up and
//! manageability, jumbo transmit frames, loopback, the flash.
//!
//! ## Hostile guests
//!
//! Ring lengths are masked as the hardware masks them (a multiple of 128
//! bytes, at most 1 MiB); a head or tail past the ring's end stops the
//! ring (counted). Every descriptor and buffer address goes through
//! [`GuestMemoryAccess`], which refuses anything outside the guest's RAM:
//! a transmit packet touching such a buffer, longer than the host buffer
//! (64 KiB for TSO, 1518 bytes otherwise), or without EOP within a ring's
//! worth of descriptors is dropped and counted; a receive buffer outside
//! RAM gets the frame's descriptor marked with RXE. One call does at most
//! one ring's worth of descriptors (a TSO packet becomes at most 4096
//! segments: MSS below [`tx::MIN_TSO_MSS`] is refused), and memory is
//! allocated only when the device is created.

use alloc::vec;
use alloc::vec::Vec;

use crate::dma::GuestMemoryAccess;
use crate::pci::{self, Bar, ConfigSpace};
use eeprom::Microwire;

mod eeprom;
pub mod phy;
mod regs;
pub mod rx;
pub mod tx;
#[cfg(test)]
mod tests;

pub use eeprom::{eeprom_image, EEPROM_CHECKSUM_WORD, EEPROM_SUM, EEPROM_WORDS};
pub use regs::*;
pub use rx::RxOutcome;

pub const VENDOR_ID: u16 = 0x8086;
pub const DEVICE_ID: u16 = 0x100e;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x8086;
pub const SUBSYSTEM_ID: u16 = 0x001e;
/// Network controller, Ethernet.
pub const CLASS_ETHERNET: u32 = 0x02_00_00;
pub const REVISION: u8 = 0x03;
/// BAR0: the register file.
pub const MMIO_BAR_SIZE: u32 = 0x2_0000;
/// BAR1: IOADDR at 0, IODATA at 4.
pub const IO_BAR_SIZE: u32 = 0x40;

/// Destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
/// Shortest frame on the wire without FCS; shorter ones are padded.
pub const ETH_ZLEN: usize = 60;
/// Longest frame without FCS (a 1500-byte payload and an 802.1Q tag).
pub const MAX_FRAME: usize = 1518;
/// Longest frame received with RCTL.LPE (16 KiB with the FCS).
pub const MAX_JUMBO_FRAME: usize = 16384 - 4;
/// The 802.1Q tag protocol identifier. Tags are matched and inserted
/// with this value whatever VET holds (the register is kept): Linux
/// writes VET = 0 while it initialises the 82540 and 0x8100 only later.
pub const ETH_P_8021Q: u16 = 0x8100;

/// The function's configuration space: identity, BAR0 (128 KiB, 32-bit,
/// non-prefetchable memory), BAR1 (64 bytes of I/O), interrupt pin A.
/// Command bits the guest may set: I/O, memory, bus master, INTx disable.
pub fn config_space() -> ConfigSpace {
    let mut c = ConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS_ETHERNET, REVISION, 0x00);
    let command =
        pci::COMMAND_IO | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE;
    let [lo, hi] = command.to_le_bytes();
    c.set_wmask(pci::COMMAND, lo);
    c.set_wmask(pci::COMMAND + 1, hi);
    // 66 MHz capable is not claimed; medium DEVSEL as the 82540 reports.
    c.set_u16(pci::STATUS, pci::STATUS_DEVSEL_MEDIUM);
    c.set_u16(0x2c, SUBSYSTEM_VENDOR_ID);
    c.set_u16(0x2e, SUBSYSTEM_ID);
    c.set_bar(0, Bar::Mem32 { size: MMIO_BAR_SIZE, prefetchable: false });
    c.set_bar(1, Bar::Io { size: IO_BAR_SIZE });
    c.set_u8(pci::INTERRUPT_PIN, 1);
    c
}

/// Registers that are plain storage here: (offset, writable bits, value
/// after reset).
const PLAIN: &[(u32, u32, u32)] = &[
    (reg::CTRL_EXT, 0xffff_ffff, 0),
    (reg::FCAL, 0xffff_ffff, 0),
    (reg::FCAH, 0x0000_ffff, 0),
    (reg::FCT, 0x0000_ffff, 0),
    (reg::VET, 0x0000_ffff, ETH_P_8021Q as u32),
    (reg::ITR, 0x0000_ffff, 0),
    (reg::FCTTV, 0x0000_ffff, 0),
    (reg::TXCW, 0xffff_ffff, 0),
    (reg::RXCW, 0, 0),
    (reg::TIPG, 0xffff_ffff, 0),
    (reg::AIT, 0x0000_ffff, 0),
    (reg::LEDCTL, 0xffff_ffff, 0x0000_0602),
    (reg::PBA, 0x0000_ffff, 0x0010_0030),
    (reg::FCRTL, 0xffff_ffff, 0),
    (reg::FCRTH, 0xffff_ffff, 0),
    (reg::RDTR, 0x0000_ffff, 0),
    (reg::RXDCTL, 0xffff_ffff, 0),
    (reg::RADV, 0x0000_ffff, 0),
    (reg::RSRPD, 0x0000_0fff, 0),
    (reg::TIDV, 0x0000_ffff, 0),
    (reg::TXDCTL, 0xffff_ffff, 0),
    (reg::TADV, 0x0000_ffff, 0),
    (reg::TSPMT, 0xffff_ffff, 0),
    (reg::RXCSUM, 0x0000_07ff, 0),
    (reg::WUC, 0xffff_ffff, 0),
    (reg::WUFC, 0xffff_ffff, 0),
    (reg::WUS, 0xffff_ffff, 0),
    // No manageability firmware: nothing for the driver to turn off.
    (reg::MANC, 0xffff_ffff, 0),
];

/// Value CTRL has after reset (link up forced, 1000 Mb/s, the software-
/// definable pins as QEMU's card reports them).
const CTRL_RESET_VALUE: u32 = CTRL_SWDPIN2 | CTRL_SWDPIN0 | CTRL_SPD_1000 | CTRL_SLU;

/// What happened to the guest's frames, for the administrator (the
/// guest-visible statistics registers are separate and read-to-clear).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E1000Stats {
    /// Frames handed to the embedder (TSO segments counted one by one).
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit packets dropped: a buffer outside guest RAM.
    pub tx_bad_address: u64,
    /// Transmit packets dropped: longer than the host buffer or the
    /// largest frame, shorter than an Ethernet header, or with a TSO
    /// context that cannot be applied.
    pub tx_oversize_or_malformed: u64,
    /// Transmit packets dropped: no EOP within a ring's worth of
    /// descriptors.
    pub tx_no_eop: u64,
    /// Descriptors of no known type (skipped).
    pub tx_bad_descriptors: u64,
    /// Ring kicks refused: head or tail past the end of the ring, or the
    /// descriptor ring outside guest RAM.
    pub tx_bad_ring: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames dropped: not enough free receive descriptors.
    pub rx_no_buffer: u64,
    /// Frames dropped by the address or VLAN filters, or as runts or
    /// oversize.
    pub rx_filtered: u64,
    /// Receive buffers outside guest RAM (descriptor marked RXE), or
    /// receive rings that are not guest RAM or have bad head/tail.
    pub rx_bad_buffers: u64,
}

/// One Intel 82540EM.
#[derive(Debug, Clone)]
pub struct E1000 {
    mac: [u8; 6],
    eeprom: [u16; EEPROM_WORDS],
    phy: [u16; 32],
    link_up: bool,
    dma_enabled: bool,

    ctrl: u32,
    eecd: Microwire,
    eerd: u32,
    mdic: u32,
    icr: u32,
    ims: u32,
    rctl: u32,
    tctl: u32,
    rdbal: u32,
    rdbah: u32,
    rdlen: u32,
    rdh: u32,
    rdt: u32,
    tdbal: u32,
    tdbah: u32,
    tdlen: u32,
    tdh: u32,
    tdt: u32,
    ra: [u32; 32],
    mta: [u32; 128],
    vfta: [u32; 128],
    stats: [u32; 64],
    plain: [u32; PLAIN.len()],
    ioaddr: u32,

    tx: tx::TxState,
    rx_buf: Vec<u8>,
    counters: E1000Stats,
}

/// Descriptor size, both rings.
const DESC_LEN: u64 = 16;
/// Bits of RDLEN/TDLEN that exist: a multiple of 128 bytes below 1 MiB.
const DLEN_MASK: u32 = 0x000f_ff80;

impl E1000 {
    /// A card with address `mac`, just out of power-on reset, link up.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut d = E1000 {
            mac,
            eeprom: eeprom_image(mac),
            phy: phy::defaults(),
            link_up: true,
            dma_enabled: true,
            ctrl: 0,
            eecd: Microwire::default(),
            eerd: 0,
            mdic: 0,
            icr: 0,
            ims: 0,
            rctl: 0,
            tctl: 0,
            rdbal: 0,
            rdbah: 0,
            rdlen: 0,
            rdh: 0,
            rdt: 0,
            tdbal: 0,
            tdbah: 0,
            tdlen: 0,
            tdh: 0,
            tdt: 0,
            ra: [0; 32],
            mta: [0; 128],
            vfta: [0; 128],
            stats: [0; 64],
            plain: [0; PLAIN.len()],
            ioaddr: 0,
            tx: tx::TxState::new(),
            rx_buf: vec![0; MAX_JUMBO_FRAME + 4],
            counters: E1000Stats::default(),
        };
        d.reset_mac();
        d
    }

    /// The card's address (as in the EEPROM).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The EEPROM contents.
    pub fn eeprom(&self) -> &[u16; EEPROM_WORDS] {
        &self.eeprom
    }

    pub fn stats(&self) -> &E1000Stats {
        &self.counters
    }

    /// The INTx line: some unmasked cause is pending.
    pub fn irq_level(&self) -> bool {
        self.icr & self.ims != 0
    }

    /// Whether the guest may be reached by DMA (PCI command bus master).
    /// Off, transmit does not run and receive answers NotReady.
    pub fn set_dma_enabled(&mut self, on: bool) {
        self.dma_enabled = on;
    }

    /// The cable: plugging or unplugging changes STATUS.LU and the PHY's
    /// link bits and raises LSC.
    pub fn set_link_up(&mut self, up: bool) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        self.apply_link_to_phy();
        self.raise(ICR_LSC);
    }

    /// The guest has receive buffers posted and receive enabled: a frame
    /// of ordinary size would be delivered now.
    pub fn rx_buffers_available(&self) -> bool {
        self.rx_ready() && self.rx_free_descriptors().is_some_and(|n| n > 0)
    }

    fn raise(&mut self, cause: u32) {
        self.icr |= cause & ICR_VALID;
    }

    /// CTRL.RST (and power-on): every MAC register back to its reset
    /// value, the EEPROM's address reloaded into RAL0/RAH0, a packet
    /// being assembled dropped. The PHY keeps its state (CTRL.PHY_RST
    /// resets it) and so does the host-side [`E1000Stats`].
    fn reset_mac(&mut self) {
        self.ctrl = CTRL_RESET_VALUE;
        self.eecd = Microwire::default();
        self.eerd = 0;
        self.mdic = 0;
        self.icr = 0;
        self.ims = 0;
        self.rctl = 0;
        self.tctl = 0;
        self.rdbal = 0;
        self.rdbah = 0;
        self.rdlen = 0;
        self.rdh = 0;
        self.rdt = 0;
        self.tdbal = 0;
        self.tdbah = 0;
        self.tdlen = 0;
        self.tdh = 0;
        self.tdt = 0;
        self.ra = [0; 32];
        let m = self.mac;
        self.ra[0] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        self.ra[1] = u32::from(u16::from_le_bytes([m[4], m[5]])) | RAH_AV;
        self.mta = [0; 128];
        self.vfta = [0; 128];
        self.stats = [0; 64];
        for (v, &(_, _, reset)) in self.plain.iter_mut().zip(PLAIN) {
            *v = reset;
        }
        self.ioaddr = 0;
        self.tx.reset();
    }

    fn status(&self) -> u32 {
        let mut s = STATUS_FD | STATUS_SPEED_1000 | STATUS_ASDV_1000;
        if self.link_up {
            s |= STATUS_LU;
        }
        s
    }

    /// Guest read of `size` bytes (1, 2, 4 or 8) at `offset` in BAR0.
    /// Registers are dwords: smaller reads see part of one (with its read
    /// side effects), 8-byte reads two. Past the BAR: 0.
    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= u64::from(MMIO_BAR_SIZE) {
            return 0;
        }
        let base = (offset & !3) as u32;
        let shift = (offset & 3) * 8;
        match size {
            8 if shift == 0 => {
                let lo = u64::from(self.read_reg(base));
                let hi = u64::from(self.read_reg(base.wrapping_add(4)));
                lo | hi << 32
            }
            1 | 2 => (u64::from(self.read_reg(base)) >> shift) & size_mask(size),
            _ => u64::from(self.read_reg(base)) >> shift,
        }
    }

    /// Guest write to BAR0. A write to TDT (or TCTL) transmits what the
    /// guest queued, through `out`. Writes smaller than a register are
    /// widened with zeros (as QEMU does); 8-byte writes hit two registers.
    pub fn mmio_write(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        offset: u64,
        size: u8,
        value: u64,
        out: &mut dyn FnMut(&[u8]),
    ) {
        if offset >= u64::from(MMIO_BAR_SIZE) {
            return;
        }
        let base = (offset & !3) as u32;
        let shift = (offset & 3) * 8;
        match size {
            8 if shift == 0 => {
                self.write_reg(mem, base, value as u32, out);
                self.write_reg(mem, base.wrapping_add(4), (value >> 32) as u32, out);
            }
            1 | 2 => {
                let v = ((value & size_mask(size)) << shift) as u32;
                self.write_reg(mem, base, v, out);
            }
            _ => self.write_reg(mem, base, (value << shift) as u32, out),
        }
    }

    /// Guest IN from BAR1: IOADDR at 0, IODATA (the register IOADDR
    /// names) at 4, everything else 0.
    pub fn io_read(&mut self, offset: u64, size: u8) -> u32 {
        let shift = (offset & 3) * 8;
        let v = match offset & !3 {
            0 => self.ioaddr,
            4 => {
                let at = u64::from(self.ioaddr);
                self.mmio_read(at, 4) as u32
            }
            _ => 0,
        };
        ((u64::from(v) >> shift) & size_mask(size)) as u32
    }

    /// Guest OUT to BAR1. IODATA writes the register IOADDR names, with
    /// the same effects as through BAR0 (Linux resets the 82540 this way).
    pub fn io_write(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        offset: u64,
        size: u8,
        value: u32,
        out: &mut dyn FnMut(&[u8]),
    ) {
        let shift = (offset & 3) * 8;
        let v = ((u64::from(value) & size_mask(size)) << shift) as u32;
        match offset & !3 {
            // Register offsets only (the 128 KiB window, dword aligned).
            0 => self.ioaddr = v & 0x0001_fffc,
            4 => {
                let at = u64::from(self.ioaddr);
                self.mmio_write(mem, at, 4, u64::from(v), out);
            }
            _ => {}
        }
    }

    fn read_reg(&mut self, off: u32) -> u32 {
        match off {
            reg::CTRL => self.ctrl,
            reg::STATUS => self.status(),
            reg::EECD => self.eecd_read(),
            reg::EERD => self.eerd_read(),
            reg::MDIC => self.mdic,
            reg::ICR => core::mem::take(&mut self.icr),
            // Write-only on paper; real cards (and QEMU) read ICR here
            // without clearing it.
            reg::ICS => self.icr,
            reg::IMS => self.ims,
            reg::RCTL => self.rctl,
            reg::TCTL => self.tctl,
            reg::RDBAL => self.rdbal,
            reg::RDBAH => self.rdbah,
            reg::RDLEN => self.rdlen,
            reg::RDH => self.rdh,
            reg::RDT => self.rdt,
            reg::TDBAL => self.tdbal,
            reg::TDBAH => self.tdbah,
            reg::TDLEN => self.tdlen,
            reg::TDH => self.tdh,
            reg::TDT => self.tdt,
            reg::STATS..reg::STATS_END => self.stat_read(off),
            reg::MTA..0x5400 => self.mta[((off - reg::MTA) / 4) as usize],
            reg::RA..0x5480 => self.ra[((off - reg::RA) / 4) as usize],
            reg::VFTA..0x5800 => self.vfta[((off - reg::VFTA) / 4) as usize],
            _ => match PLAIN.iter().position(|&(o, _, _)| o == off) {
                Some(i) => self.plain[i],
                None => 0,
            },
        }
    }

    fn write_reg(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        off: u32,
        v: u32,
        out: &mut dyn FnMut(&[u8]),
    ) {
        match off {
            reg::CTRL => {
                if v & CTRL_RST != 0 {
                    self.reset_mac();
                    return;
                }
                if v & CTRL_PHY_RST != 0 {
                    self.reset_phy();
                }
                self.ctrl = v & !CTRL_RST;
            }
            reg::EECD => self.eecd_write(v),
            reg::EERD => self.eerd = v,
            reg::MDIC => self.mdic_write(v),
            reg::ICR => self.icr &= !v,
            reg::ICS => self.raise(v),
            reg::IMS => self.ims |= v & ICR_VALID,
            reg::IMC => self.ims &= !v,
            reg::RCTL => self.rctl = v,
            reg::TCTL => {
                self.tctl = v;
                self.transmit(mem, out);
            }
            reg::RDBAL => self.rdbal = v & !0xf,
            reg::RDBAH => self.rdbah = v,
            reg::RDLEN => self.rdlen = v & DLEN_MASK,
            reg::RDH => self.rdh = v & 0xffff,
            reg::RDT => self.rdt = v & 0xffff,
            reg::TDBAL => self.tdbal = v & !0xf,
            reg::TDBAH => self.tdbah = v,
            reg::TDLEN => self.tdlen = v & DLEN_MASK,
            reg::TDH => self.tdh = v & 0xffff,
            reg::TDT => {
                self.tdt = v & 0xffff;
                self.transmit(mem, out);
            }
            // Statistics are read-only (and cleared by reading).
            reg::STATS..reg::STATS_END => {}
            reg::MTA..0x5400 => self.mta[((off - reg::MTA) / 4) as usize] = v,
            reg::RA..0x5480 => {
                let i = ((off - reg::RA) / 4) as usize;
                // RAH: address bits 47:32, address select, valid.
                self.ra[i] = if i % 2 == 1 { v & 0x8003_ffff } else { v };
            }
            reg::VFTA..0x5800 => self.vfta[((off - reg::VFTA) / 4) as usize] = v,
            _ => {
                if let Some(i) = PLAIN.iter().position(|&(o, _, _)| o == off) {
                    let mask = PLAIN[i].1;
                    self.plain[i] = (self.plain[i] & !mask) | (v & mask);
                }
            }
        }
    }

    // ---- statistics ----

    fn stat_index(off: u32) -> usize {
        ((off - reg::STATS) / 4) as usize & 63
    }

    /// Read-to-clear; a 64-bit counter clears as a whole when its high
    /// half is read (drivers read low, then high).
    fn stat_read(&mut self, off: u32) -> u32 {
        let i = Self::stat_index(off);
        let v = self.stats[i];
        match off {
            reg::GORCL | reg::GOTCL | reg::TORL | reg::TOTL => {}
            reg::GORCH | reg::GOTCH | reg::TORH | reg::TOTH => {
                self.stats[i] = 0;
                self.stats[i - 1] = 0;
            }
            _ => self.stats[i] = 0,
        }
        v
    }

    /// Counters saturate rather than wrap, as the hardware's do.
    fn stat_inc(&mut self, off: u32) {
        let i = Self::stat_index(off);
        self.stats[i] = self.stats[i].saturating_add(1);
    }

    fn stat_add64(&mut self, low: u32, n: u64) {
        let i = Self::stat_index(low);
        let cur = u64::from(self.stats[i]) | u64::from(self.stats[i + 1]) << 32;
        let new = cur.saturating_add(n);
        self.stats[i] = new as u32;
        self.stats[i + 1] = (new >> 32) as u32;
    }

    /// The 64/127/255/511/1023/1522-byte bucket (FCS included) from
    /// PRC64 or PTC64 on.
    fn stat_size_bucket(&mut self, first: u32, len_with_fcs: usize) {
        let bucket = match len_with_fcs {
            0..=63 => return,
            64 => 0,
            65..=127 => 1,
            128..=255 => 2,
            256..=511 => 3,
            512..=1023 => 4,
            _ => 5,
        };
        self.stat_inc(first + 4 * bucket);
    }

    // ---- rings ----

    fn rx_ready(&self) -> bool {
        self.dma_enabled && self.link_up && self.rctl & RCTL_EN != 0 && self.rdlen != 0
    }

    /// Descriptors in a ring of `len` bytes.
    fn ring_size(len: u32) -> u32 {
        len / DESC_LEN as u32
    }

    /// Descriptors the guest has given the device (head up to tail), or
    /// None if head or tail is past the end of the ring.
    fn rx_free_descriptors(&self) -> Option<u32> {
        let n = Self::ring_size(self.rdlen);
        if n == 0 || self.rdh >= n || self.rdt >= n {
            return None;
        }
        Some((self.rdt + n - self.rdh) % n)
    }

    fn rx_ring_base(&self) -> u64 {
        u64::from(self.rdbah) << 32 | u64::from(self.rdbal)
    }

    fn tx_ring_base(&self) -> u64 {
        u64::from(self.tdbah) << 32 | u64::from(self.tdbal)
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}
