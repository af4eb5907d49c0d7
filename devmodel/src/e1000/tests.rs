//! Host tests of the e1000 model: a small driver doing what Linux's
//! `e1000` does on an 82540EM (reset through the I/O window, the EEPROM
//! bit-banged through EECD, the PHY over MDIC, both rings), transmit of
//! plain, multi-descriptor, checksum-offloaded and TSO packets checked
//! with an independent checksum, receive into small buffers, filters,
//! MPC, interrupts, hostile descriptors and a seeded fuzz run.

use super::rx::*;
use super::tx::*;
use super::*;
use crate::dma::DmaError;
use crate::testutil::{inet_checksum, Rng};
use alloc::vec;
use alloc::vec::Vec;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const RAM_SIZE: usize = 4 << 20;
const TX_RING: u64 = 0x1_0000;
const RX_RING: u64 = 0x2_0000;
const TX_BUFS: u64 = 0x10_0000;
const RX_BUFS: u64 = 0x20_0000;
const RING: u32 = 256;
/// Not guest RAM.
const OUTSIDE: u64 = 0x8000_0000;

struct Ram(Vec<u8>);

impl Ram {
    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, DmaError> {
        let err = DmaError::OutOfRange { gpa, len: len as u64 };
        let end = gpa.checked_add(len as u64).ok_or(err)?;
        if end > self.0.len() as u64 {
            return Err(err);
        }
        Ok(gpa as usize..end as usize)
    }
    fn put(&mut self, gpa: u64, d: &[u8]) {
        self.0[gpa as usize..gpa as usize + d.len()].copy_from_slice(d);
    }
    fn get(&self, gpa: u64, len: usize) -> &[u8] {
        &self.0[gpa as usize..gpa as usize + len]
    }
}

impl GuestMemoryAccess for Ram {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.0[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, data.len())?;
        self.0[r].copy_from_slice(data);
        Ok(())
    }
}

struct Guest {
    dev: E1000,
    mem: Ram,
    sent: Vec<Vec<u8>>,
    /// Next transmit descriptor the driver fills.
    tx_tail: u32,
}

// ---- the driver ----

impl Guest {
    fn bare() -> Self {
        Guest { dev: E1000::new(MAC), mem: Ram(vec![0; RAM_SIZE]), sent: Vec::new(), tx_tail: 0 }
    }

    fn new() -> Self {
        let mut g = Guest::bare();
        g.linux_probe_and_open();
        g
    }

    fn rd(&mut self, off: u32) -> u32 {
        self.dev.mmio_read(u64::from(off), 4) as u32
    }

    fn wr(&mut self, off: u32, v: u32) {
        let sent = &mut self.sent;
        self.dev.mmio_write(&mut self.mem, u64::from(off), 4, u64::from(v), &mut |f| sent.push(f.to_vec()));
    }

    fn io_wr(&mut self, off: u64, v: u32) {
        let sent = &mut self.sent;
        self.dev.io_write(&mut self.mem, off, 4, v, &mut |f| sent.push(f.to_vec()));
    }

    // The Microwire EEPROM, bit by bit, as e1000_hw.c does it.
    fn ee_clock(&mut self, eecd: &mut u32, high: bool) {
        if high {
            *eecd |= EECD_SK;
        } else {
            *eecd &= !EECD_SK;
        }
        self.wr(reg::EECD, *eecd);
    }

    fn ee_shift_out(&mut self, eecd: &mut u32, data: u32, count: u32) {
        *eecd &= !(EECD_DO | EECD_DI);
        for bit in (0..count).rev() {
            *eecd &= !EECD_DI;
            if data >> bit & 1 != 0 {
                *eecd |= EECD_DI;
            }
            self.wr(reg::EECD, *eecd);
            self.ee_clock(eecd, true);
            self.ee_clock(eecd, false);
        }
        *eecd &= !EECD_DI;
        self.wr(reg::EECD, *eecd);
    }

    fn ee_shift_in(&mut self, eecd: &mut u32) -> u16 {
        let mut data = 0u16;
        for _ in 0..16 {
            data <<= 1;
            self.ee_clock(eecd, true);
            *eecd = self.rd(reg::EECD) & !EECD_DI;
            if *eecd & EECD_DO != 0 {
                data |= 1;
            }
            self.ee_clock(eecd, false);
        }
        data
    }

    fn eeprom_read(&mut self, first: u32, words: u32) -> Vec<u16> {
        let mut eecd = self.rd(reg::EECD);
        assert_ne!(eecd & EECD_PRES, 0);
        eecd |= EECD_REQ;
        self.wr(reg::EECD, eecd);
        assert_ne!(self.rd(reg::EECD) & EECD_GNT, 0);
        eecd &= !(EECD_DI | EECD_SK);
        self.wr(reg::EECD, eecd);
        eecd |= EECD_CS;
        self.wr(reg::EECD, eecd);
        let mut out = Vec::new();
        for w in first..first + words {
            self.ee_shift_out(&mut eecd, 0b110, 3);
            self.ee_shift_out(&mut eecd, w, 6);
            out.push(self.ee_shift_in(&mut eecd));
            // Standby: CS low, clock, CS high, clock low.
            eecd &= !(EECD_CS | EECD_SK);
            self.wr(reg::EECD, eecd);
            self.ee_clock(&mut eecd, true);
            eecd |= EECD_CS;
            self.wr(reg::EECD, eecd);
            self.ee_clock(&mut eecd, false);
        }
        eecd &= !(EECD_CS | EECD_DI | EECD_SK | EECD_REQ);
        self.wr(reg::EECD, eecd);
        out
    }

    fn mdic(&mut self, v: u32) -> u32 {
        self.wr(reg::MDIC, v);
        let r = self.rd(reg::MDIC);
        assert_ne!(r & MDIC_READY, 0, "MDI did not complete");
        r
    }

    fn phy_read(&mut self, r: usize) -> u16 {
        let v = self.mdic((r as u32) << MDIC_REG_SHIFT | phy::ADDRESS << MDIC_PHY_SHIFT | MDIC_OP_READ);
        assert_eq!(v & MDIC_ERROR, 0, "MDI error");
        v as u16
    }

    fn phy_write(&mut self, r: usize, d: u16) {
        let v = self.mdic(u32::from(d) | (r as u32) << MDIC_REG_SHIFT | phy::ADDRESS << MDIC_PHY_SHIFT | MDIC_OP_WRITE);
        assert_eq!(v & MDIC_ERROR, 0, "MDI error");
    }

    /// e1000_probe + e1000_open, in the order Linux touches things.
    fn linux_probe_and_open(&mut self) {
        // e1000_reset_hw: quiesce, then CTRL.RST through IOADDR/IODATA.
        self.wr(reg::IMC, 0xffff_ffff);
        self.wr(reg::RCTL, 0);
        self.wr(reg::TCTL, TCTL_PSP);
        let ctrl = self.rd(reg::CTRL);
        self.io_wr(0, reg::CTRL);
        self.io_wr(4, ctrl | CTRL_RST);
        assert_eq!(self.rd(reg::CTRL) & CTRL_RST, 0, "RST self-clears");
        let manc = self.rd(reg::MANC);
        self.wr(reg::MANC, manc & !(1 << 13));
        self.wr(reg::IMC, 0xffff_ffff);
        self.rd(reg::ICR);
        // EEPROM: checksum over all 64 words, MAC from words 0-2.
        let words = self.eeprom_read(0, 64);
        let sum = words.iter().fold(0u16, |a, &w| a.wrapping_add(w));
        assert_eq!(sum, EEPROM_SUM, "The EEPROM Checksum Is Not Valid");
        let mut mac = [0u8; 6];
        for i in 0..3 {
            mac[2 * i..2 * i + 2].copy_from_slice(&words[i].to_le_bytes());
        }
        assert_eq!(mac, MAC);
        // PHY: M88E1011 at address 1.
        let id = u32::from(self.phy_read(phy::ID1)) << 16 | u32::from(self.phy_read(phy::ID2));
        assert_eq!(id & 0xffff_fff0, phy::M88E1011_ID);
        // e1000_init_hw: VET, VFTA, RAR, MTA.
        self.wr(reg::VET, 0);
        for i in 0..128 {
            self.wr(reg::VFTA + 4 * i, 0);
        }
        self.wr(reg::RA, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.wr(reg::RA + 4, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV);
        for i in 1..16 {
            self.wr(reg::RA + 8 * i, 0);
            self.wr(reg::RA + 8 * i + 4, 0);
        }
        for i in 0..128 {
            self.wr(reg::MTA + 4 * i, 0);
        }
        // Copper link setup: SLU, PHY autoneg, restart.
        let ctrl = self.rd(reg::CTRL);
        self.wr(reg::CTRL, (ctrl | CTRL_SLU) & !(3 << 11));
        let sc = self.phy_read(phy::M88_SPEC_CTRL);
        self.phy_write(phy::M88_SPEC_CTRL, sc | 0x60);
        let c = self.phy_read(phy::CTRL);
        self.phy_write(phy::CTRL, c | phy::CTRL_RESET);
        let adv = self.phy_read(phy::AUTONEG_ADV);
        self.phy_write(phy::AUTONEG_ADV, adv);
        let gig = self.phy_read(phy::CTRL_1000T);
        self.phy_write(phy::CTRL_1000T, gig | 0x200);
        let c = self.phy_read(phy::CTRL);
        self.phy_write(phy::CTRL, c | 0x1000 | phy::CTRL_RESTART_AUTONEG);
        // Statistics cleared by reading them all.
        for off in (reg::STATS..reg::STATS_END).step_by(4) {
            self.rd(off);
        }
        // e1000_configure_tx.
        self.wr(reg::TDBAL, TX_RING as u32);
        self.wr(reg::TDBAH, 0);
        self.wr(reg::TDLEN, RING * 16);
        self.wr(reg::TDH, 0);
        self.wr(reg::TDT, 0);
        self.wr(reg::TIPG, 0x0060_200a);
        self.wr(reg::TIDV, 8);
        self.wr(reg::TADV, 32);
        self.wr(reg::TCTL, TCTL_EN | TCTL_PSP | 0x0f << 4 | 0x40 << 12);
        // e1000_configure_rx: 2048-byte buffers, all but one posted.
        self.wr(reg::RDTR, 0);
        self.wr(reg::RADV, 8);
        self.wr(reg::ITR, 195);
        self.wr(reg::RDBAH, 0);
        self.wr(reg::RDBAL, RX_RING as u32);
        self.wr(reg::RDLEN, RING * 16);
        self.wr(reg::RDH, 0);
        self.wr(reg::RDT, 0);
        self.wr(reg::RXCSUM, 1 << 9);
        self.wr(reg::RCTL, RCTL_EN | RCTL_BAM);
        self.post_rx(RING - 1, 2048);
        // e1000_irq_enable and the LSC kick that starts the watchdog.
        self.wr(reg::IMS, ICR_RXT0 | ICR_TXDW | ICR_RXDMT0 | ICR_RXSEQ | ICR_LSC);
        assert!(!self.dev.irq_level());
        self.wr(reg::ICS, ICR_LSC);
        assert!(self.dev.irq_level());
        assert_eq!(self.rd(reg::ICR), ICR_LSC);
        assert!(!self.dev.irq_level());
        // The watchdog: PHY link and autoneg, then STATUS for the speed.
        self.phy_read(phy::STATUS);
        let st = self.phy_read(phy::STATUS);
        assert_ne!(st & phy::STATUS_LINK, 0);
        assert_ne!(st & phy::STATUS_AUTONEG_COMPLETE, 0);
        let s = self.rd(reg::STATUS);
        assert_eq!(s & (STATUS_LU | STATUS_FD | (3 << 6)), STATUS_LU | STATUS_FD | STATUS_SPEED_1000);
        assert!(self.dev.rx_buffers_available());
    }

    /// The `count` descriptors from RDT on get `size`-byte buffers and
    /// are handed to the device.
    fn post_rx(&mut self, count: u32, size: u64) {
        let mut t = self.rd(reg::RDT);
        for _ in 0..count {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(RX_BUFS + u64::from(t) * size).to_le_bytes());
            self.mem.put(RX_RING + u64::from(t) * 16, &d);
            t = (t + 1) % RING;
        }
        self.wr(reg::RDT, t);
    }

    /// Queues the descriptors and writes TDT once.
    fn send(&mut self, descs: &[[u8; 16]]) {
        for d in descs {
            self.mem.put(TX_RING + u64::from(self.tx_tail) * 16, d);
            self.tx_tail = (self.tx_tail + 1) % RING;
        }
        let t = self.tx_tail;
        self.wr(reg::TDT, t);
    }

    /// Puts `data` in guest memory for transmit descriptor buffers.
    fn buf(&mut self, slot: u64, data: &[u8]) -> u64 {
        let at = TX_BUFS + slot * 0x1_0000;
        self.mem.put(at, data);
        at
    }

    fn rx_desc(&self, i: u32) -> (u64, u16, u8, u8, u16) {
        let d = self.mem.get(RX_RING + u64::from(i) * 16, 16);
        (
            u64::from_le_bytes(d[..8].try_into().unwrap()),
            u16::from_le_bytes([d[8], d[9]]),
            d[12],
            d[13],
            u16::from_le_bytes([d[14], d[15]]),
        )
    }

    fn take_sent(&mut self) -> Vec<Vec<u8>> {
        core::mem::take(&mut self.sent)
    }
}

// ---- descriptors ----

fn legacy(addr: u64, len: u16, cmd: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[11] = cmd;
    d
}

fn data_desc(addr: u64, len: u32, cmd: u8, popts: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    let lower = (len & 0xf_ffff) | DTYP_DATA << 20 | u32::from(cmd | CMD_DEXT) << 24;
    d[8..12].copy_from_slice(&lower.to_le_bytes());
    d[13] = popts;
    d
}

#[allow(clippy::too_many_arguments)]
fn context(ipcss: u8, ipcso: u8, ipcse: u16, tucss: u8, tucso: u8, tucse: u16, tucmd: u8, paylen: u32, hdr_len: u8, mss: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = ipcss;
    d[1] = ipcso;
    d[2..4].copy_from_slice(&ipcse.to_le_bytes());
    d[4] = tucss;
    d[5] = tucso;
    d[6..8].copy_from_slice(&tucse.to_le_bytes());
    let lower = (paylen & 0xf_ffff) | u32::from(tucmd | CMD_DEXT) << 24;
    d[8..12].copy_from_slice(&lower.to_le_bytes());
    d[13] = hdr_len;
    d[14..16].copy_from_slice(&mss.to_le_bytes());
    d
}

// ---- packets and an independent checksum ----

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 9];
const SRC_IP: [u8; 4] = [10, 0, 0, 2];
const DST_IP: [u8; 4] = [10, 0, 0, 1];

fn pseudo(proto: u8, l4len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&SRC_IP);
    p.extend_from_slice(&DST_IP);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4len as u16).to_be_bytes());
    p
}

/// Ethernet + IPv4 (20) + TCP (20 + 12 bytes of options) + payload, all
/// checksums and the IP length as the caller wants them filled later.
fn tcp_packet(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = (20 + 32 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&SRC_IP);
    f.extend_from_slice(&DST_IP);
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x50]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend_from_slice(payload);
    f
}

const TCP_HDR: usize = 14 + 20 + 32;

fn assert_ipv4_tcp_valid(f: &[u8]) {
    let ip = &f[14..34];
    assert_eq!(inet_checksum(&[ip]), 0, "IP header checksum");
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(tot, f.len() - 14, "IP total length");
    let tcp = &f[34..];
    assert_eq!(inet_checksum(&[&pseudo(6, tcp.len()), tcp]), 0, "TCP checksum");
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The FCS as a bitwise CRC-32, independent of the model's table.
fn crc32_bitwise(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            let m = (c & 1).wrapping_neg();
            c = (c >> 1) ^ (0xedb8_8320 & m);
        }
    }
    !c
}

fn frame_to_us(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((0..len - 14).map(|i| i as u8 ^ 0x5a));
    f
}

// ---- identity and bring-up ----

#[test]
fn pci_identity() {
    let mut c = config_space();
    assert_eq!(c.read(0x00, 4), 0x100e_8086);
    assert_eq!(c.read(0x08, 4), 0x0200_0003);
    assert_eq!(c.read(0x2c, 4), 0x001e_8086);
    assert_eq!(c.read(0x3d, 1), 1, "INTA#");
    assert_eq!(c.read(0x10, 4), 0, "BAR0: 32-bit non-prefetchable memory");
    assert_eq!(c.read(0x14, 4), 1, "BAR1: I/O");
    c.write(0x10, 4, 0xffff_ffff);
    c.write(0x14, 4, 0xffff_ffff);
    assert_eq!(c.read(0x10, 4), 0xfffe_0000, "128 KiB");
    assert_eq!(c.read(0x14, 4), 0xffff_ffc1, "64 bytes");
    c.write(0x10, 4, 0xfebc_0000);
    c.write(0x14, 4, 0xc000);
    assert_eq!(c.bar_address(0), Some(0xfebc_0000));
    assert_eq!(c.bar_address(1), Some(0xc000));
    c.write(pci::COMMAND, 2, 0xffff);
    assert_eq!(c.command(), 0x0407);
}

#[test]
fn eeprom_image_and_eerd() {
    let e = eeprom_image(MAC);
    assert_eq!(e.iter().fold(0u16, |a, &w| a.wrapping_add(w)), 0xbaba);
    assert_eq!(&e[..3], &[0x5452, 0x1200, 0x5634]);
    assert_eq!(e[0x0d], DEVICE_ID);
    let mut g = Guest::bare();
    for w in [0u32, 1, 2, 0x0a, 0x3f] {
        g.wr(reg::EERD, w << 8 | EERD_START);
        let v = g.rd(reg::EERD);
        assert_ne!(v & EERD_DONE, 0);
        assert_eq!((v >> 16) as u16, e[w as usize]);
    }
    g.wr(reg::EERD, 0x80 << 8 | EERD_START);
    assert_eq!(g.rd(reg::EERD) >> 16, 0, "past the EEPROM: done, no data");
    // A sequential Microwire read and a non-READ opcode.
    assert_eq!(g.eeprom_read(0x3e, 2), vec![e[0x3e], e[0x3f]]);
    let mut eecd = EECD_CS;
    g.wr(reg::EECD, eecd);
    g.ee_shift_out(&mut eecd, 0b101, 3);
    g.ee_shift_out(&mut eecd, 3, 6);
    assert_eq!(g.ee_shift_in(&mut eecd), 0xffff, "DO idles high");
}

#[test]
fn linux_bring_up() {
    let mut g = Guest::new();
    assert_eq!(g.rd(reg::RA), 0x1200_5452);
    assert_eq!(g.rd(reg::RA + 4), 0x8000_5634);
    // The PHY: link, write masks, the other bus address.
    assert_eq!(g.phy_read(phy::CTRL) & (phy::CTRL_RESET | phy::CTRL_RESTART_AUTONEG), 0);
    assert_eq!(g.phy_read(phy::LP_ABILITY) & 0x4000, 0x4000);
    assert_eq!(g.phy_read(phy::STATUS_1000T) & 0x0c00, 0x0c00);
    g.phy_write(phy::ID1, 0);
    assert_eq!(g.phy_read(phy::ID1), 0x0141, "read-only");
    // A software reset keeps what the driver configured; CTRL.PHY_RST
    // (a hardware reset) does not.
    assert_eq!(g.phy_read(phy::M88_SPEC_CTRL), 0x0360 | 0x60);
    g.phy_write(phy::CTRL, 0x1140 | phy::CTRL_RESET);
    assert_eq!(g.phy_read(phy::M88_SPEC_CTRL), 0x0360 | 0x60);
    let ctrl = g.rd(reg::CTRL);
    g.wr(reg::CTRL, ctrl | CTRL_PHY_RST);
    g.wr(reg::CTRL, ctrl);
    assert_eq!(g.phy_read(phy::M88_SPEC_CTRL), 0x0360);
    assert_ne!(g.phy_read(phy::STATUS) & phy::STATUS_LINK, 0);
    let v = g.mdic(2 << MDIC_PHY_SHIFT | MDIC_OP_READ);
    assert_ne!(v & MDIC_ERROR, 0);
    g.mdic(1 << MDIC_PHY_SHIFT | MDIC_OP_READ | MDIC_INT_EN);
    assert_ne!(g.rd(reg::ICR) & ICR_MDAC, 0);
    // Cable pulled and plugged back.
    g.dev.set_link_up(false);
    assert!(g.dev.irq_level());
    assert_eq!(g.rd(reg::ICR), ICR_LSC);
    assert_eq!(g.rd(reg::STATUS) & STATUS_LU, 0);
    assert_eq!(g.phy_read(phy::STATUS) & phy::STATUS_LINK, 0);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(64)), RxOutcome::NotReady);
    let a = g.buf(0, &frame_to_us(64));
    g.send(&[legacy(a, 64, CMD_EOP | CMD_RS)]);
    assert!(g.take_sent().is_empty(), "lost on the dead wire");
    assert_eq!(g.mem.get(TX_RING + 12, 1)[0], STA_DD);
    assert_eq!(g.rd(reg::ICR), ICR_TXDW | ICR_TXQE);
    g.dev.set_link_up(true);
    assert_eq!(g.rd(reg::ICR), ICR_LSC);
    assert_ne!(g.phy_read(phy::STATUS) & phy::STATUS_LINK, 0);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(64)), RxOutcome::Delivered);
}

#[test]
fn reset_through_io_window() {
    let mut g = Guest::new();
    g.wr(reg::RA, 0xdead_beef);
    g.wr(reg::MTA + 8, 5);
    g.wr(reg::IMS, 0xff);
    g.wr(reg::ICS, ICR_TXDW);
    g.io_wr(0, reg::RA);
    assert_eq!(g.dev.io_read(0, 4), reg::RA);
    assert_eq!(g.dev.io_read(4, 4), 0xdead_beef);
    assert_eq!(g.dev.io_read(8, 4), 0, "reserved");
    g.io_wr(0, reg::CTRL);
    g.io_wr(4, CTRL_RST | CTRL_SLU);
    assert_eq!(g.rd(reg::RA), 0x1200_5452, "RAL0 reloaded from the EEPROM");
    assert_eq!(g.rd(reg::MTA + 8), 0);
    assert_eq!(g.rd(reg::IMS), 0);
    assert_eq!(g.rd(reg::ICR), 0);
    assert_eq!(g.rd(reg::RCTL), 0);
    assert_eq!(g.rd(reg::TDLEN), 0);
    assert_eq!(g.rd(reg::PBA), 0x0010_0030);
    assert_eq!(g.rd(reg::CTRL) & CTRL_RST, 0);
    assert!(!g.dev.irq_level());
    assert!(!g.dev.rx_buffers_available());
}

#[test]
fn register_file_odds_and_ends() {
    let mut g = Guest::new();
    // Unknown offsets, SWSM/FWSM, past the BAR.
    for off in [0x4u32, 0x5b50, 0x5b54, 0x1_fffc, 0x8000] {
        g.wr(off, 0xffff_ffff);
        assert_eq!(g.rd(off), 0, "{off:#x}");
    }
    assert_eq!(g.dev.mmio_read(0x2_0000, 4), 0);
    // Masks.
    g.wr(reg::RDTR, 0xffff_ffff);
    assert_eq!(g.rd(reg::RDTR), 0xffff);
    g.wr(reg::TDLEN, 0x1234_5678);
    assert_eq!(g.rd(reg::TDLEN), 0x0004_5600);
    g.wr(reg::RDBAL, 0x1234_5677);
    assert_eq!(g.rd(reg::RDBAL), 0x1234_5670);
    g.wr(reg::RDBAL, RX_RING as u32);
    g.wr(reg::RA + 12, 0xffff_ffff);
    assert_eq!(g.rd(reg::RA + 12), 0x8003_ffff);
    // Access sizes.
    assert_eq!(g.dev.mmio_read(u64::from(reg::STATUS), 1) as u32, g.rd(reg::STATUS) & 0xff);
    assert_eq!(g.dev.mmio_read(u64::from(reg::RA) + 2, 2), 0x1200);
    assert_eq!(g.dev.mmio_read(u64::from(reg::RA), 8), 0x8000_5634_1200_5452);
    let mut nothing = |_: &[u8]| panic!("no frames");
    g.dev.mmio_write(&mut g.mem, u64::from(reg::MTA), 8, 0x1111_2222_3333_4444, &mut nothing);
    assert_eq!(g.rd(reg::MTA), 0x3333_4444);
    assert_eq!(g.rd(reg::MTA + 4), 0x1111_2222);
    g.dev.mmio_write(&mut g.mem, u64::from(reg::MTA) + 1, 1, 0xab, &mut nothing);
    assert_eq!(g.rd(reg::MTA), 0xab00, "widened with zeros");
    // Statistics: read-to-clear, 64-bit pairs cleared by the high half.
    g.dev.receive(&mut g.mem, &frame_to_us(100));
    assert_eq!(g.rd(reg::GPRC), 1);
    assert_eq!(g.rd(reg::GPRC), 0);
    assert_eq!(g.rd(reg::TPR), 1);
    assert_eq!(g.rd(reg::GORCL), 104);
    assert_eq!(g.rd(reg::GORCL), 104, "the low half does not clear");
    assert_eq!(g.rd(reg::GORCH), 0);
    assert_eq!(g.rd(reg::GORCL), 0);
    assert_eq!(g.rd(reg::PRC64 + 4), 1, "65-127 bytes");
    g.wr(reg::GPRC, 7);
    assert_eq!(g.rd(reg::GPRC), 0, "read-only");
}

#[test]
fn interrupt_registers() {
    let mut g = Guest::new();
    g.wr(reg::IMC, 0xffff_ffff);
    g.wr(reg::ICS, ICR_RXT0 | ICR_TXDW);
    assert!(!g.dev.irq_level(), "masked");
    assert_eq!(g.rd(reg::ICS), ICR_RXT0 | ICR_TXDW, "ICS reads ICR without clearing");
    g.wr(reg::IMS, ICR_TXDW);
    assert!(g.dev.irq_level());
    g.wr(reg::ICR, ICR_TXDW);
    assert!(!g.dev.irq_level(), "write 1 clears");
    assert_eq!(g.rd(reg::IMS), ICR_TXDW);
    g.wr(reg::IMS, ICR_RXT0);
    assert!(g.dev.irq_level());
    g.wr(reg::IMC, ICR_RXT0);
    assert!(!g.dev.irq_level());
    assert_eq!(g.rd(reg::IMS), ICR_TXDW);
    g.wr(reg::ICS, 0xffff_ffff);
    assert_eq!(g.rd(reg::ICR), 0x0001_ffff, "only the 82540's causes");
    assert_eq!(g.rd(reg::ICR), 0);
}

// ---- transmit ----

#[test]
fn tx_legacy_padded_with_status() {
    let mut g = Guest::new();
    let arp: Vec<u8> = (0..42u8).collect();
    let a = g.buf(0, &arp);
    g.send(&[legacy(a, 42, CMD_EOP | CMD_IFCS | CMD_RS)]);
    let sent = g.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][..42], &arp[..]);
    assert_eq!(sent[0].len(), 60, "PSP pads");
    assert!(sent[0][42..].iter().all(|&b| b == 0));
    assert_eq!(g.mem.get(TX_RING + 12, 1)[0] & STA_DD, STA_DD);
    assert_eq!(g.rd(reg::TDH), 1);
    assert!(g.dev.irq_level());
    assert_eq!(g.rd(reg::ICR), ICR_TXDW | ICR_TXQE);
    assert_eq!(g.rd(reg::GPTC), 1);
    assert_eq!(g.rd(reg::TPT), 1);
    assert_eq!(g.rd(reg::GOTCL), 64);
    // Without RS, no write-back and no TXDW.
    g.send(&[legacy(a, 42, CMD_EOP | CMD_IFCS)]);
    assert_eq!(g.take_sent().len(), 1);
    assert_eq!(g.mem.get(TX_RING + 16 + 12, 1)[0], 0);
    assert_eq!(g.rd(reg::ICR), ICR_TXQE);
    // Broadcast and multicast counters.
    let mut b = arp.clone();
    b[..6].fill(0xff);
    let a = g.buf(1, &b);
    g.send(&[legacy(a, 42, CMD_EOP)]);
    b[0] = 0x01;
    let a = g.buf(1, &b);
    g.send(&[legacy(a, 42, CMD_EOP)]);
    assert_eq!(g.rd(reg::BPTC), 1);
    assert_eq!(g.rd(reg::MPTC), 1);
    assert_eq!(g.dev.stats().tx_frames, 4);
}

#[test]
fn tx_multi_descriptor_packet() {
    let mut g = Guest::new();
    let f = tcp_packet(&payload(1000), 1, 0x18);
    let a = g.buf(0, &f[..TCP_HDR]);
    let b = g.buf(1, &f[TCP_HDR..500]);
    let c = g.buf(2, &f[500..]);
    // The first two descriptors alone send nothing, even across TDT writes.
    g.send(&[data_desc(a, TCP_HDR as u32, CMD_IFCS, 0), data_desc(b, (500 - TCP_HDR) as u32, CMD_IFCS, 0)]);
    assert!(g.sent.is_empty());
    g.send(&[data_desc(c, (f.len() - 500) as u32, CMD_IFCS | CMD_EOP | CMD_RS, 0)]);
    assert_eq!(g.take_sent(), vec![f.clone()]);
    // Legacy descriptors, with a zero-length one in the middle.
    let d = g.buf(3, &f);
    g.send(&[legacy(d, 100, 0), legacy(d, 0, 0), legacy(d + 100, (f.len() - 100) as u16, CMD_EOP)]);
    assert_eq!(g.take_sent(), vec![f]);
}

#[test]
fn tx_checksum_offload() {
    let mut g = Guest::new();
    // CHECKSUM_PARTIAL as Linux leaves it: the TCP field holds the folded
    // pseudo-header sum with the length; the IP checksum is already right.
    let mut f = tcp_packet(&payload(300), 0x1000, 0x18);
    let ip_c = inet_checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&ip_c.to_be_bytes());
    let l4 = f.len() - 34;
    let ph = !inet_checksum(&[&pseudo(6, l4)]);
    f[50..52].copy_from_slice(&ph.to_be_bytes());
    let a = g.buf(0, &f);
    g.send(&[
        context(14, 24, 33, 34, 50, 0, TUCMD_TCP, 0, 0, 0),
        data_desc(a, f.len() as u32, CMD_EOP | CMD_IFCS | CMD_RS, POPTS_TXSM),
    ]);
    let sent = g.take_sent();
    assert_eq!(sent.len(), 1);
    assert_ipv4_tcp_valid(&sent[0]);
    // IXSM computes the IP header checksum from a zero field; UDP with
    // both, and a checksum end (tucse) before the end of the frame.
    let mut u = Vec::new();
    u.extend_from_slice(&PEER);
    u.extend_from_slice(&MAC);
    u.extend_from_slice(&[0x08, 0x00]);
    let udp_len = 8 + 100;
    u.extend_from_slice(&[0x45, 0, 0, (20 + udp_len) as u8, 0, 1, 0, 0, 64, 17, 0, 0]);
    u.extend_from_slice(&SRC_IP);
    u.extend_from_slice(&DST_IP);
    u.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, udp_len as u8, 0, 0]);
    u.extend_from_slice(&payload(100));
    let ph = !inet_checksum(&[&pseudo(17, udp_len)]);
    u[40..42].copy_from_slice(&ph.to_be_bytes());
    let mut padded = u.clone();
    padded.extend_from_slice(&[0xee; 6]);
    let a = g.buf(1, &padded);
    g.send(&[
        context(14, 24, 33, 34, 40, (u.len() - 1) as u16, 0, 0, 0, 0),
        data_desc(a, padded.len() as u32, CMD_EOP | CMD_RS, POPTS_TXSM | POPTS_IXSM),
    ]);
    let s = &g.take_sent()[0];
    assert_eq!(inet_checksum(&[&s[14..34]]), 0);
    assert_eq!(inet_checksum(&[&pseudo(17, udp_len), &s[34..34 + udp_len]]), 0);
    assert_eq!(&s[u.len()..], &[0xee; 6], "past tucse is left alone");
    // Legacy IC: checksum from CSS to the end at CSO.
    let mut d = legacy(a, u.len() as u16, CMD_EOP | CMD_IC_TSE);
    d[10] = 40; // CSO
    d[13] = 34; // CSS
    g.mem.put(a + 40, &ph.to_be_bytes());
    g.send(&[d]);
    let s = &g.take_sent()[0];
    assert_eq!(inet_checksum(&[&pseudo(17, udp_len), &s[34..]]), 0);
    // Offsets outside the frame insert nothing (and do not panic).
    let a = g.buf(2, &u);
    g.send(&[
        context(200, 250, 0, 250, 254, 0, TUCMD_TCP, 0, 0, 0),
        data_desc(a, u.len() as u32, CMD_EOP, POPTS_TXSM | POPTS_IXSM),
    ]);
    assert_eq!(g.take_sent(), vec![u]);
}

/// Linux's e1000_tso: IP length and checksum 0, the TCP field the folded
/// pseudo-header sum without length, a TSE context, data descriptors
/// with TSE and both POPTS.
fn tso_packet(g: &mut Guest, data: &[u8], mss: u16, flags: u8, split: &[usize]) {
    let mut f = tcp_packet(data, 0xffff_f000, flags);
    f[16..18].fill(0);
    let ph = !inet_checksum(&[&pseudo(6, 0)]);
    f[50..52].copy_from_slice(&ph.to_be_bytes());
    let paylen = (f.len() - TCP_HDR) as u32;
    let mut descs = vec![context(14, 24, 33, 34, 50, 0, TUCMD_TCP | TUCMD_IP | TUCMD_TSE, paylen, TCP_HDR as u8, mss)];
    let mut at = 0;
    let mut bounds: Vec<usize> = split.to_vec();
    bounds.push(f.len());
    for (i, &end) in bounds.iter().enumerate() {
        let a = g.buf(i as u64, &f[at..end]);
        let last = i + 1 == bounds.len();
        let cmd = CMD_TSE_ | CMD_IFCS | if last { CMD_EOP | CMD_RS } else { 0 };
        descs.push(data_desc(a, (end - at) as u32, cmd, POPTS_TXSM | POPTS_IXSM));
        at = end;
    }
    g.send(&descs);
}

const CMD_TSE_: u8 = CMD_IC_TSE;

#[test]
fn tx_tso_segments() {
    let mut g = Guest::new();
    let data = payload(4000);
    // Header and payload in separate descriptors, payload split unevenly.
    tso_packet(&mut g, &data, 1448, 0x19, &[TCP_HDR, TCP_HDR + 1000, TCP_HDR + 3000]);
    let segs = g.take_sent();
    assert_eq!(segs.len(), 3);
    let mut got = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(s.len() <= MAX_FRAME);
        assert_ipv4_tcp_valid(s);
        assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16, "IP ID");
        let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
        assert_eq!(seq, 0xffff_f000u32.wrapping_add(1448 * i as u32), "sequence");
        let fl = s[47];
        if i < 2 {
            assert_eq!(fl, 0x10, "ACK only: PSH and FIN cleared");
            assert_eq!(s.len(), TCP_HDR + 1448);
        } else {
            assert_eq!(fl, 0x19, "PSH and FIN on the last");
        }
        got.extend_from_slice(&s[TCP_HDR..]);
    }
    assert_eq!(got, data);
    assert_eq!(g.rd(reg::TSCTC), 1);
    assert_eq!(g.rd(reg::GPTC), 3);
    assert_eq!(g.rd(reg::ICR) & ICR_TXDW, ICR_TXDW);
    // All in one descriptor, 64 KiB minus a bit, as the largest GSO
    // packet; then a payload that is an exact multiple of the MSS.
    let big = payload(TX_BUF_MAX - TCP_HDR);
    tso_packet(&mut g, &big, 1448, 0x18, &[]);
    let segs = g.take_sent();
    assert_eq!(segs.len(), big.len().div_ceil(1448));
    let mut got = Vec::new();
    for s in &segs {
        assert_ipv4_tcp_valid(s);
        got.extend_from_slice(&s[TCP_HDR..]);
    }
    assert_eq!(got, big);
    tso_packet(&mut g, &payload(2896), 1448, 0x18, &[TCP_HDR]);
    let segs = g.take_sent();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1][47], 0x18);
    // A packet past 64 KiB is dropped whole.
    tso_packet(&mut g, &payload(TX_BUF_MAX), 1448, 0x18, &[]);
    assert!(g.take_sent().is_empty());
    assert_eq!(g.dev.stats().tx_oversize_or_malformed, 1);
    // Unusable contexts: MSS 0 or tiny, header longer than the packet,
    // segments longer than a frame.
    for (mss, hdr) in [(0u16, TCP_HDR as u8), (15, TCP_HDR as u8), (1448, 255), (1500, TCP_HDR as u8)] {
        let f = tcp_packet(&payload(100), 0, 0x10);
        let a = g.buf(0, &f);
        g.send(&[
            context(14, 24, 33, 34, 50, 0, TUCMD_TCP | TUCMD_IP | TUCMD_TSE, 100, hdr, mss),
            data_desc(a, f.len() as u32, CMD_TSE_ | CMD_EOP, POPTS_TXSM | POPTS_IXSM),
        ]);
    }
    assert!(g.take_sent().is_empty());
    assert_eq!(g.dev.stats().tx_oversize_or_malformed, 5);
    // The smallest MSS, and a header-only packet (one segment).
    tso_packet(&mut g, &payload(100), MIN_TSO_MSS as u16, 0x18, &[TCP_HDR]);
    let segs = g.take_sent();
    assert_eq!(segs.len(), 7);
    segs.iter().for_each(|s| assert_ipv4_tcp_valid(s));
    tso_packet(&mut g, &[], 1448, 0x11, &[]);
    let segs = g.take_sent();
    assert_eq!(segs.len(), 1);
    assert_ipv4_tcp_valid(&segs[0]);
    assert_eq!(segs[0][47], 0x11);
}

#[test]
fn tx_vlan_insertion() {
    let mut g = Guest::new();
    let f = tcp_packet(&payload(1448), 5, 0x10);
    let a = g.buf(0, &f);
    let mut d = legacy(a, f.len() as u16, CMD_EOP | CMD_VLE);
    d[14..16].copy_from_slice(&0x2064u16.to_le_bytes());
    // VLE without CTRL.VME: no tag.
    g.send(&[d]);
    assert_eq!(g.take_sent(), vec![f.clone()]);
    let ctrl = g.rd(reg::CTRL);
    g.wr(reg::CTRL, ctrl | CTRL_VME);
    g.send(&[d]);
    let s = g.take_sent().remove(0);
    assert_eq!(s.len(), f.len() + 4);
    assert_eq!(&s[..12], &f[..12]);
    assert_eq!(&s[12..16], &[0x81, 0x00, 0x20, 0x64]);
    assert_eq!(&s[16..], &f[12..]);
}

// ---- receive ----

#[test]
fn rx_delivers_with_fcs() {
    let mut g = Guest::new();
    let f = frame_to_us(1514);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    let (addr, len, status, errors, _) = g.rx_desc(0);
    assert_eq!(len as usize, 1518, "frame and FCS");
    assert_eq!(status, RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM);
    assert_eq!(errors, 0);
    let got = g.mem.get(addr, 1518).to_vec();
    assert_eq!(&got[..1514], &f[..]);
    assert_eq!(u32::from_le_bytes(got[1514..].try_into().unwrap()), crc32_bitwise(&f));
    assert_eq!(g.rd(reg::RDH), 1);
    assert!(g.dev.irq_level());
    assert_eq!(g.rd(reg::ICR), ICR_RXT0);
    // A runt is padded to 60 bytes.
    let short = &frame_to_us(30)[..];
    g.dev.receive(&mut g.mem, short);
    let (addr, len, ..) = g.rx_desc(1);
    assert_eq!(len, 64);
    let got = g.mem.get(addr, 60);
    assert_eq!(&got[..30], short);
    assert!(got[30..].iter().all(|&b| b == 0));
    // SECRC: no FCS.
    let rctl = g.rd(reg::RCTL);
    g.wr(reg::RCTL, rctl | RCTL_SECRC);
    g.dev.receive(&mut g.mem, &frame_to_us(100));
    assert_eq!(g.rx_desc(2).1, 100);
    assert_eq!(g.dev.stats().rx_frames, 3);
    // Frames shorter than a header, or longer than allowed.
    assert_eq!(g.dev.receive(&mut g.mem, &[0; 13]), RxOutcome::Filtered);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(1519)), RxOutcome::Filtered);
    assert_eq!(g.rd(reg::ROC), 1);
    assert_eq!(g.rd(reg::RUC), 1);
    let rctl = g.rd(reg::RCTL);
    g.wr(reg::RCTL, rctl | RCTL_LPE | RCTL_BSEX | 1 << RCTL_BSIZE_SHIFT);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(9000)), RxOutcome::Delivered);
    assert_eq!(g.rx_desc(3).1, 9000);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(MAX_JUMBO_FRAME + 1)), RxOutcome::Filtered);
}

#[test]
fn rx_spans_small_buffers() {
    let mut g = Guest::new();
    g.wr(reg::RCTL, RCTL_EN | RCTL_BAM | 3 << RCTL_BSIZE_SHIFT);
    let f = frame_to_us(1000);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    let mut got = Vec::new();
    for i in 0..4 {
        let (addr, len, status, ..) = g.rx_desc(i);
        let want = if i < 3 { 256 } else { 1004 - 768 };
        assert_eq!(len as usize, want);
        let eop = if i == 3 { RXD_STAT_EOP | RXD_STAT_IXSM } else { 0 };
        assert_eq!(status, RXD_STAT_DD | eop);
        got.extend_from_slice(g.mem.get(addr, want));
    }
    assert_eq!(&got[..1000], &f[..]);
    assert_eq!(g.rd(reg::RDH), 4);
    // Buffer sizes of RCTL.BSIZE/BSEX.
    for (bits, size) in [(0u32, 2048usize), (1 << 16, 1024), (2 << 16, 512), (RCTL_BSEX | 1 << 16, 16384), (RCTL_BSEX | 2 << 16, 8192), (RCTL_BSEX | 3 << 16, 4096)] {
        g.wr(reg::RCTL, RCTL_EN | bits);
        assert_eq!(g.dev.rx_buffer_size(), size);
    }
    // A descriptor without a buffer is skipped (done, length 0).
    g.wr(reg::RCTL, RCTL_EN | RCTL_BAM);
    g.mem.put(RX_RING + 4 * 16, &[0; 8]);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    assert_eq!(g.rx_desc(4).1, 0);
    assert_eq!(g.rx_desc(4).2, RXD_STAT_DD);
    assert_eq!(g.rx_desc(5).1, 1004);
    assert_eq!(g.rd(reg::RDH), 6);
}

#[test]
fn rx_filters() {
    let mut g = Guest::new();
    let mut f = frame_to_us(100);
    let other = [0x02, 0, 0, 0, 0, 1];
    f[..6].copy_from_slice(&other);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered);
    // A second exact address.
    g.wr(reg::RA + 8, u32::from_le_bytes([2, 0, 0, 0]));
    g.wr(reg::RA + 12, 0x0100 | RAH_AV);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    g.wr(reg::RA + 12, 0x0100);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered, "not valid");
    // Promiscuous unicast.
    g.wr(reg::RCTL, RCTL_EN | RCTL_UPE);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    // Broadcast needs BAM.
    f[..6].fill(0xff);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered);
    g.wr(reg::RCTL, RCTL_EN | RCTL_BAM);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    // Multicast: the MTA bit Linux's hash (MO = 0: bits 47:36) selects.
    let mc = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    f[..6].copy_from_slice(&mc);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered);
    let hash = (u32::from(mc[4]) >> 4 | u32::from(mc[5]) << 4) & 0xfff;
    g.wr(reg::MTA + 4 * (hash >> 5), 1 << (hash & 31));
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    g.wr(reg::RCTL, RCTL_EN | 1 << RCTL_MO_SHIFT);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered, "other hash bits");
    g.wr(reg::RCTL, RCTL_EN | RCTL_MPE);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    // The MTA does not admit unicast.
    g.wr(reg::RCTL, RCTL_EN);
    for i in 0..128 {
        g.wr(reg::MTA + 4 * i, 0xffff_ffff);
    }
    f[..6].copy_from_slice(&other);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Filtered);
    // VLAN: the filter table, then stripping with CTRL.VME.
    let mut t = frame_to_us(100);
    t.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    g.wr(reg::RCTL, RCTL_EN | RCTL_VFE);
    assert_eq!(g.dev.receive(&mut g.mem, &t), RxOutcome::Filtered);
    g.wr(reg::VFTA, 1 << 5);
    let at = g.rd(reg::RDH);
    assert_eq!(g.dev.receive(&mut g.mem, &t), RxOutcome::Delivered);
    assert_eq!(g.rx_desc(at).1, 108, "tag kept without VME");
    let ctrl = g.rd(reg::CTRL);
    g.wr(reg::CTRL, ctrl | CTRL_VME);
    assert_eq!(g.dev.receive(&mut g.mem, &t), RxOutcome::Delivered);
    let (addr, len, status, _, special) = g.rx_desc(at + 1);
    assert_eq!(len, 104);
    assert_eq!(status & RXD_STAT_VP, RXD_STAT_VP);
    assert_eq!(special, 5);
    assert_eq!(g.mem.get(addr, 100), &frame_to_us(100)[..]);
    assert_eq!(g.dev.stats().rx_filtered, 7);
}

#[test]
fn rx_ring_full_counts_mpc() {
    let mut g = Guest::bare();
    g.wr(reg::RDBAL, RX_RING as u32);
    g.wr(reg::RDLEN, 8 * 16);
    g.wr(reg::RCTL, RCTL_EN | RCTL_BAM);
    g.wr(reg::IMS, ICR_RXT0 | ICR_RXDMT0 | ICR_RXO);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(60)), RxOutcome::NoBuffer);
    assert!(!g.dev.rx_buffers_available());
    for i in 0..8u64 {
        g.mem.put(RX_RING + i * 16, &(RX_BUFS + i * 2048).to_le_bytes());
    }
    g.wr(reg::RDT, 4);
    assert!(g.dev.rx_buffers_available());
    for i in 0..4 {
        assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(60)), RxOutcome::Delivered);
        // RDMTS = 1/2: 8 descriptors, threshold 4.
        let icr = g.rd(reg::ICR);
        assert_eq!(icr & ICR_RXDMT0 != 0, 3 - i <= 4, "free {}", 3 - i);
    }
    assert!(!g.dev.rx_buffers_available());
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(60)), RxOutcome::NoBuffer);
    assert_eq!(g.rd(reg::ICR), ICR_RXO);
    assert_eq!(g.rd(reg::MPC), 2, "this one and the one before any buffer");
    assert_eq!(g.rd(reg::RNBC), 2);
    // A frame needing more buffers than are free is refused whole.
    g.wr(reg::RDT, 5);
    g.wr(reg::RCTL, RCTL_EN | 3 << RCTL_BSIZE_SHIFT);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(600)), RxOutcome::NoBuffer);
    assert_eq!(g.rd(reg::RDH), 4);
    assert_eq!(g.rx_desc(4).2, 0, "nothing written");
    g.wr(reg::RDT, 7);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(300)), RxOutcome::Delivered);
    assert_eq!(g.rd(reg::RDH), 6);
    assert_eq!(g.dev.stats().rx_no_buffer, 3);
    // RCTL.EN off, DMA off.
    g.wr(reg::RCTL, 0);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(60)), RxOutcome::NotReady);
    g.wr(reg::RCTL, RCTL_EN);
    g.dev.set_dma_enabled(false);
    assert_eq!(g.dev.receive(&mut g.mem, &frame_to_us(60)), RxOutcome::NotReady);
}

// ---- hostile guests ----

#[test]
fn hostile_tx_descriptors() {
    let mut g = Guest::new();
    let f = frame_to_us(100);
    let a = g.buf(0, &f);
    // A buffer outside RAM: dropped, counted, still DD.
    g.send(&[legacy(a, 50, 0), legacy(OUTSIDE, 50, CMD_EOP | CMD_RS)]);
    assert!(g.take_sent().is_empty());
    assert_eq!(g.dev.stats().tx_bad_address, 1);
    assert_eq!(g.mem.get(TX_RING + 16 + 12, 1)[0] & STA_DD, STA_DD);
    // A buffer ending past the end of RAM, and one wrapping the address space.
    g.send(&[legacy(RAM_SIZE as u64 - 10, 100, CMD_EOP)]);
    g.send(&[data_desc(u64::MAX - 8, 100, CMD_EOP, 0)]);
    assert_eq!(g.dev.stats().tx_bad_address, 3);
    // Oversize without TSO, huge DTALEN with TSO.
    g.send(&[legacy(a, 1000, 0), legacy(a, 1000, CMD_EOP)]);
    g.send(&[data_desc(a, 0xf_ffff, CMD_EOP | CMD_TSE_, 0)]);
    assert_eq!(g.dev.stats().tx_oversize_or_malformed, 2);
    assert!(g.take_sent().is_empty());
    // Shorter than an Ethernet header.
    g.send(&[legacy(a, 10, CMD_EOP)]);
    assert_eq!(g.dev.stats().tx_oversize_or_malformed, 3);
    // Reserved descriptor type: skipped.
    let mut d = data_desc(a, 100, CMD_EOP, 0);
    d[10] = (d[10] & 0x0f) | 0x50;
    g.send(&[d]);
    assert_eq!(g.dev.stats().tx_bad_descriptors, 1);
    // The ring still works.
    g.send(&[legacy(a, 100, CMD_EOP)]);
    assert_eq!(g.take_sent(), vec![f.clone()]);
}

#[test]
fn hostile_tx_rings() {
    let mut g = Guest::new();
    let f = frame_to_us(100);
    let a = g.buf(0, &f);
    // No EOP anywhere in a ring of 8: every slot filled, tail chasing head.
    g.wr(reg::TDLEN, 8 * 16);
    g.wr(reg::TDH, 0);
    for i in 0..8 {
        g.mem.put(TX_RING + i * 16, &legacy(a, 100, 0));
    }
    for t in [7, 6, 5] {
        g.wr(reg::TDT, t);
    }
    assert!(g.take_sent().is_empty());
    assert_eq!(g.dev.stats().tx_no_eop, 2);
    assert_eq!(g.rd(reg::TDH), 5);
    // Tail past the end of the ring: refused, head stays.
    let h = g.rd(reg::TDH);
    g.wr(reg::TDT, 9);
    assert_eq!(g.rd(reg::TDH), h);
    assert_eq!(g.dev.stats().tx_bad_ring, 1);
    g.wr(reg::TDH, 0xffff);
    g.wr(reg::TDT, 0);
    assert_eq!(g.dev.stats().tx_bad_ring, 2);
    // Ring outside RAM, and straddling the end of the address space.
    g.wr(reg::TDH, 0);
    g.wr(reg::TDBAL, 0);
    g.wr(reg::TDBAH, 0x8000);
    g.wr(reg::TDT, 1);
    assert_eq!(g.rd(reg::TDH), 0);
    g.wr(reg::TDBAL, 0xffff_fff0);
    g.wr(reg::TDBAH, 0xffff_ffff);
    g.wr(reg::TDH, 1);
    g.wr(reg::TDT, 2);
    assert_eq!(g.dev.stats().tx_bad_ring, 4);
    // The largest ring (1 MiB) runs at most one lap per kick.
    g.wr(reg::TDBAH, 0);
    g.wr(reg::TDBAL, 0);
    g.wr(reg::TDLEN, 0xffff_ffff);
    assert_eq!(g.rd(reg::TDLEN), 0x000f_ff80);
    g.wr(reg::TDH, 1);
    g.wr(reg::TDT, 0);
    assert_eq!(g.rd(reg::TDH), 0);
    // TDLEN below 128 bytes is 0: nothing runs.
    g.wr(reg::TDLEN, 0x7f);
    g.wr(reg::TDT, 3);
    assert_eq!(g.rd(reg::TDH), 0);
    // TCTL.EN off: nothing runs.
    g.wr(reg::TDLEN, 4096);
    g.wr(reg::TCTL, 0);
    g.mem.put(TX_RING, &legacy(a, 100, CMD_EOP));
    g.wr(reg::TDT, 1);
    assert_eq!(g.rd(reg::TDH), 0);
    g.wr(reg::TDBAL, TX_RING as u32);
    g.wr(reg::TCTL, TCTL_EN);
    assert_eq!(g.take_sent(), vec![f], "TCTL.EN starts the ring");
}

#[test]
fn hostile_rx_rings() {
    let mut g = Guest::new();
    let f = frame_to_us(100);
    // A buffer outside RAM: the frame's descriptor gets RXE.
    g.mem.put(RX_RING, &OUTSIDE.to_le_bytes());
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    let (_, _, status, errors, _) = g.rx_desc(0);
    assert_eq!(status & RXD_STAT_DD, RXD_STAT_DD);
    assert_eq!(errors, RXD_ERR_RXE);
    assert_eq!(g.dev.stats().rx_bad_buffers, 1);
    // Head or tail past the end.
    g.wr(reg::RDT, 300);
    assert!(!g.dev.rx_buffers_available());
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::NoBuffer);
    g.wr(reg::RDT, 5);
    g.wr(reg::RDH, 0xffff);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::NoBuffer);
    // The ring outside RAM.
    g.wr(reg::RDH, 0);
    g.wr(reg::RDBAH, 0x10);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::NoBuffer);
    assert_eq!(g.rd(reg::RDH), 0);
    // RDLEN not a multiple of 128, or 0.
    g.wr(reg::RDBAH, 0);
    g.wr(reg::RDLEN, 0x7f);
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::NotReady);
    g.wr(reg::RDLEN, 0x1ff);
    assert_eq!(g.rd(reg::RDLEN), 0x180);
    g.mem.put(RX_RING, &RX_BUFS.to_le_bytes());
    assert_eq!(g.dev.receive(&mut g.mem, &f), RxOutcome::Delivered);
    assert_eq!(g.dev.stats().rx_bad_buffers, 4);
}

// ---- fuzz ----

/// Offsets a fuzzer should hit most.
const HOT: [u32; 24] = [
    reg::CTRL, reg::EECD, reg::EERD, reg::MDIC, reg::ICR, reg::ICS, reg::IMS, reg::IMC, reg::RCTL, reg::TCTL,
    reg::RDBAL, reg::RDBAH, reg::RDLEN, reg::RDH, reg::RDT, reg::TDBAL, reg::TDBAH, reg::TDLEN, reg::TDH,
    reg::TDT, reg::MTA, reg::RA, reg::VFTA, reg::GORCH,
];

#[test]
fn fuzz_never_panics_and_stays_bounded() {
    let mut rng = Rng::new(0x000e_1000_0008_2540);
    let mut g = Guest::new();
    let mut out_frames = 0u64;
    for round in 0..200_000u32 {
        match rng.below(12) {
            0..=3 => {
                let off = if rng.chance(80) { HOT[rng.below(HOT.len() as u64) as usize] } else { rng.below(0x2_1000) as u32 };
                let v = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => rng.below(512) as u32,
                    2 => (rng.below(64) as u32) << 4,
                    _ => TCTL_EN | RCTL_BAM | RCTL_UPE,
                };
                let size = [1u8, 2, 4, 4, 8, 3][rng.below(6) as usize];
                let mut n = 0usize;
                g.dev.mmio_write(&mut g.mem, u64::from(off), size, u64::from(v), &mut |f| {
                    assert!((ETH_HLEN..=MAX_FRAME + 4).contains(&f.len()), "frame of {}", f.len());
                    n += 1;
                });
                // One lap of at most 65528 descriptors, each packet at
                // most 4096 segments.
                assert!(n <= 65528 * 4096);
                out_frames += n as u64;
            }
            4 => {
                let off = rng.below(0x2_1000);
                g.dev.mmio_read(off, [1u8, 2, 4, 8][rng.below(4) as usize]);
            }
            5 => {
                let off = rng.below(0x48);
                let v = if rng.chance(50) { HOT[rng.below(HOT.len() as u64) as usize] } else { rng.next() as u32 };
                g.dev.io_write(&mut g.mem, off, 4, v, &mut |f| {
                    assert!(f.len() <= MAX_FRAME + 4);
                    out_frames += 1;
                });
                g.dev.io_read(rng.below(0x48), 4);
            }
            6..=8 => {
                // Descriptors in both rings: plausible or random.
                let ring = if rng.chance(50) { TX_RING } else { RX_RING };
                let i = rng.below(u64::from(RING));
                let mut d = [0u8; 16];
                for b in d.iter_mut() {
                    *b = rng.u8();
                }
                if rng.chance(70) {
                    let addr = if rng.chance(90) { TX_BUFS + rng.below(0x20_0000) } else { rng.next() };
                    d[..8].copy_from_slice(&addr.to_le_bytes());
                    // Mostly frame-sized lengths, DEXT types 0-2.
                    let max = if rng.chance(90) { 1600 } else { 0x1_0000 };
                    let len = rng.below(max) as u16;
                    d[8..10].copy_from_slice(&len.to_le_bytes());
                    d[10] &= 0x2f;
                    if rng.chance(20) {
                        // A TSO context with sane-ish offsets.
                        d[..8].copy_from_slice(&[14, 24, 33, 0, 34, 50, 0, 0]);
                        d[11] = CMD_DEXT | TUCMD_TSE | TUCMD_IP | TUCMD_TCP;
                        d[10] &= 0x0f;
                        d[13] = 54 + rng.below(20) as u8;
                        d[14..16].copy_from_slice(&(rng.below(1500) as u16).to_le_bytes());
                    }
                }
                g.mem.put(ring + i * 16, &d);
            }
            9 if rng.chance(10) => {
                // Put the rings back in working order now and then, so
                // the random descriptors keep being used.
                let n = [8u32, 16, 256][rng.below(3) as usize];
                let before = g.sent.len();
                for (r, v) in [
                    (reg::TDBAL, TX_RING as u32),
                    (reg::TDBAH, 0),
                    (reg::TDLEN, n * 16),
                    (reg::RDBAL, RX_RING as u32),
                    (reg::RDBAH, 0),
                    (reg::RDLEN, n * 16),
                    (reg::RDH, rng.below(u64::from(n)) as u32),
                    (reg::RDT, rng.below(u64::from(n)) as u32),
                    (reg::RCTL, RCTL_EN | RCTL_BAM | RCTL_UPE | (rng.below(4) as u32) << RCTL_BSIZE_SHIFT),
                    (reg::TDH, rng.below(u64::from(n)) as u32),
                    (reg::TCTL, TCTL_EN | TCTL_PSP),
                ] {
                    g.wr(r, v);
                }
                g.wr(reg::TDT, rng.below(u64::from(n)) as u32);
                out_frames += (g.sent.len() - before) as u64;
            }
            _ => {
                let len = rng.below(2100) as usize;
                let mut f: Vec<u8> = (0..len).map(|_| rng.u8()).collect();
                if len >= 6 && rng.chance(50) {
                    f[..6].copy_from_slice(&MAC);
                }
                let r = g.dev.receive(&mut g.mem, &f);
                let _ = r;
            }
        }
        let _ = g.dev.irq_level();
        let _ = g.dev.rx_buffers_available();
        if round % 10_000 == 0 {
            g.sent.clear();
        }
    }
    // Every path was exercised, and every frame handed out was counted.
    let s = *g.dev.stats();
    assert_eq!(s.tx_frames, out_frames);
    assert!(s.tx_frames > 1000 && s.rx_frames > 500, "{s:?}");
    assert!(s.tx_bad_address > 0 && s.tx_no_eop > 0 && s.tx_oversize_or_malformed > 0, "{s:?}");
    assert!(s.rx_no_buffer > 0 && s.rx_bad_buffers > 0 && s.tx_bad_ring > 0, "{s:?}");
}
