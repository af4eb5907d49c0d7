//! The transmit ring: legacy, context and data descriptors, checksum
//! insertion, TCP segmentation, VLAN tag insertion.
//!
//! A packet is the data of its descriptors up to the one with EOP,
//! gathered into one host buffer (at most [`TX_BUF_MAX`] bytes for a TSO
//! packet, [`MAX_FRAME`] otherwise). It survives across TDT writes, as on
//! the hardware, until its EOP descriptor arrives. Then, with the offsets
//! of the last context descriptor of its kind (a TSE context for TSO
//! packets, the other one for checksum offload), the checksums the first
//! data descriptor's POPTS ask for are inserted and the frame (or each
//! TSO segment) goes to the embedder.

use alloc::vec::Vec;

use super::{
    reg, E1000, CTRL_VME, DESC_LEN, ETH_HLEN, ETH_P_8021Q, ETH_ZLEN, ICR_TXDW, ICR_TXQE,
    MAX_FRAME, TCTL_EN, TCTL_PSP,
};
use crate::dma::GuestMemoryAccess;
pub use crate::net_offload::MIN_TSO_MSS;
use crate::net_offload::{fold, get_be16, put_be16, put_checksum, segment, Tso};

/// Largest TSO packet (headers and payload) the device gathers; Linux's
/// GSO packets for the e1000 stay below 64 KiB.
pub const TX_BUF_MAX: usize = 64 * 1024;

/// DCMD bits (the top byte of a descriptor's second dword).
pub const CMD_EOP: u8 = 1 << 0;
pub const CMD_IFCS: u8 = 1 << 1;
/// Legacy: insert checksum (IC). Data: TCP segmentation enable (TSE).
pub const CMD_IC_TSE: u8 = 1 << 2;
pub const CMD_RS: u8 = 1 << 3;
/// Report packet sent (82544 and earlier; treated as RS).
pub const CMD_RPS: u8 = 1 << 4;
pub const CMD_DEXT: u8 = 1 << 5;
pub const CMD_VLE: u8 = 1 << 6;
pub const CMD_IDE: u8 = 1 << 7;
/// Descriptor types (with DEXT), bits 23:20 of the second dword.
pub const DTYP_CONTEXT: u32 = 0;
pub const DTYP_DATA: u32 = 1;
/// Context TUCMD bits.
pub const TUCMD_TCP: u8 = 1 << 0;
pub const TUCMD_IP: u8 = 1 << 1;
pub const TUCMD_TSE: u8 = 1 << 2;
/// Data descriptor POPTS: insert IP checksum, insert TCP/UDP checksum.
pub const POPTS_IXSM: u8 = 1 << 0;
pub const POPTS_TXSM: u8 = 1 << 1;
/// Status: descriptor done.
pub const STA_DD: u8 = 1 << 0;

/// Offsets and options from a context descriptor.
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    ipcss: u8,
    ipcso: u8,
    ipcse: u16,
    tucss: u8,
    tucso: u8,
    tucse: u16,
    hdr_len: u8,
    mss: u16,
    ipv4: bool,
    tcp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// A buffer is not guest RAM.
    BadAddress,
    /// More data than the host buffer holds.
    Oversize,
}

/// The packet being gathered and the contexts.
#[derive(Debug, Clone)]
pub(super) struct TxState {
    ctx: Context,
    tso_ctx: Context,
    /// Gathered packet; capacity [`TX_BUF_MAX`], never grown.
    buf: Vec<u8>,
    /// One outgoing frame (a TSO segment); capacity MAX_FRAME + 4.
    seg: Vec<u8>,
    in_packet: bool,
    legacy: bool,
    tso: bool,
    popts: u8,
    descs: u32,
    drop: Option<Drop>,
}

impl TxState {
    pub(super) fn new() -> Self {
        TxState {
            ctx: Context::default(),
            tso_ctx: Context::default(),
            buf: Vec::with_capacity(TX_BUF_MAX),
            seg: Vec::with_capacity(MAX_FRAME + 4),
            in_packet: false,
            legacy: false,
            tso: false,
            popts: 0,
            descs: 0,
            drop: None,
        }
    }

    pub(super) fn reset(&mut self) {
        self.ctx = Context::default();
        self.tso_ctx = Context::default();
        self.end_packet();
    }

    fn end_packet(&mut self) {
        self.buf.clear();
        self.in_packet = false;
        self.legacy = false;
        self.tso = false;
        self.popts = 0;
        self.descs = 0;
        self.drop = None;
    }
}

impl E1000 {
    /// Runs the transmit ring from TDH to TDT: at most one ring's worth
    /// of descriptors. A head or tail past the ring's end, or a ring that
    /// is not guest RAM, stops it (counted) until the driver fixes it.
    pub(super) fn transmit(&mut self, mem: &mut dyn GuestMemoryAccess, out: &mut dyn FnMut(&[u8])) {
        if self.tctl & TCTL_EN == 0 || !self.dma_enabled {
            return;
        }
        let n = Self::ring_size(self.tdlen);
        if n == 0 {
            return;
        }
        if self.tdh >= n || self.tdt >= n {
            self.counters.tx_bad_ring += 1;
            return;
        }
        let base = self.tx_ring_base();
        let mut cause = 0;
        let mut done = 0;
        while self.tdh != self.tdt && done < n {
            let Some(at) = base.checked_add(u64::from(self.tdh) * DESC_LEN) else {
                self.counters.tx_bad_ring += 1;
                break;
            };
            let mut d = [0u8; DESC_LEN as usize];
            if mem.read(at, &mut d).is_err() {
                self.counters.tx_bad_ring += 1;
                break;
            }
            let cmd = d[11];
            self.tx_descriptor(mem, &d, n, out);
            if cmd & (CMD_RS | CMD_RPS) != 0 {
                // DD set, the error bits (EC, LC, TU) clear.
                let sta = (d[12] & !0x0e) | STA_DD;
                let _ = mem.write(at + 12, &[sta]);
                cause |= ICR_TXDW;
            }
            self.tdh = (self.tdh + 1) % n;
            done += 1;
        }
        // The queue went empty (not merely: is empty).
        if done > 0 && self.tdh == self.tdt {
            cause |= ICR_TXQE;
        }
        self.raise(cause);
    }

    /// One descriptor `d`, from a ring of `n` descriptors.
    fn tx_descriptor(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        d: &[u8; 16],
        n: u32,
        out: &mut dyn FnMut(&[u8]),
    ) {
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let lower = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        let upper = u32::from_le_bytes([d[12], d[13], d[14], d[15]]);
        let cmd = d[11];
        let dtyp = (lower >> 20) & 0xf;
        let ext = cmd & CMD_DEXT != 0;
        if ext && dtyp == DTYP_CONTEXT {
            self.tx_context(d);
            return;
        }
        if ext && dtyp != DTYP_DATA {
            self.counters.tx_bad_descriptors += 1;
            return;
        }
        let len = if ext { lower & 0xf_ffff } else { lower & 0xffff } as usize;
        let tx = &mut self.tx;
        if !tx.in_packet {
            tx.in_packet = true;
            tx.legacy = !ext;
            tx.tso = ext && cmd & CMD_IC_TSE != 0;
            tx.popts = if ext { (upper >> 8) as u8 } else { 0 };
        }
        tx.descs += 1;
        if tx.descs > n {
            // Every descriptor of the ring and still no EOP.
            tx.end_packet();
            self.counters.tx_no_eop += 1;
            return;
        }
        if tx.drop.is_none() && len > 0 {
            let cap = if tx.tso { TX_BUF_MAX } else { MAX_FRAME };
            let have = tx.buf.len();
            if len > cap - have {
                tx.drop = Some(Drop::Oversize);
            } else {
                tx.buf.resize(have + len, 0);
                if mem.read(addr, &mut tx.buf[have..]).is_err() {
                    tx.buf.truncate(have);
                    tx.drop = Some(Drop::BadAddress);
                }
            }
        }
        if cmd & CMD_EOP == 0 {
            return;
        }
        // VLE, the tag and the legacy checksum fields count on the EOP
        // descriptor.
        let vlan = (cmd & CMD_VLE != 0 && self.ctrl & CTRL_VME != 0).then_some((upper >> 16) as u16);
        let legacy_csum = (!ext && cmd & CMD_IC_TSE != 0).then_some((d[10], d[13]));
        let mut buf = core::mem::take(&mut self.tx.buf);
        match self.tx.drop {
            Some(Drop::BadAddress) => self.counters.tx_bad_address += 1,
            Some(Drop::Oversize) => self.counters.tx_oversize_or_malformed += 1,
            None if self.tx.tso && !self.tx.legacy => self.tx_segment(&buf, vlan, out),
            None => {
                if let Some((cso, css)) = legacy_csum {
                    put_checksum(&mut buf, usize::from(cso), usize::from(css), 0);
                } else if !self.tx.legacy {
                    let c = self.tx.ctx;
                    self.insert_checksums(&mut buf, &c, self.tx.popts);
                }
                self.emit(&mut buf, vlan, out);
            }
        }
        self.tx.buf = buf;
        self.tx.end_packet();
    }

    fn tx_context(&mut self, d: &[u8; 16]) {
        let tucmd = d[11];
        let c = Context {
            ipcss: d[0],
            ipcso: d[1],
            ipcse: u16::from_le_bytes([d[2], d[3]]),
            tucss: d[4],
            tucso: d[5],
            tucse: u16::from_le_bytes([d[6], d[7]]),
            hdr_len: d[13],
            mss: u16::from_le_bytes([d[14], d[15]]),
            ipv4: tucmd & TUCMD_IP != 0,
            tcp: tucmd & TUCMD_TCP != 0,
        };
        if tucmd & TUCMD_TSE != 0 {
            self.tx.tso_ctx = c;
        } else {
            self.tx.ctx = c;
        }
    }

    fn insert_checksums(&mut self, frame: &mut [u8], c: &Context, popts: u8) {
        if popts & POPTS_TXSM != 0 {
            put_checksum(frame, usize::from(c.tucso), usize::from(c.tucss), usize::from(c.tucse));
        }
        if popts & POPTS_IXSM != 0 {
            put_checksum(frame, usize::from(c.ipcso), usize::from(c.ipcss), usize::from(c.ipcse));
        }
    }

    /// TCP segmentation ([`net_offload::segment`]): the header (hdr_len
    /// bytes) copied in front of each MSS-sized piece of payload, the
    /// length, ID and sequence fields fixed up per segment, and the
    /// checksums computed per segment as the hardware does: the driver
    /// leaves the pseudo-header sum without the length in the TCP
    /// checksum field; each segment's length is added to it here.
    fn tx_segment(&mut self, buf: &[u8], vlan: Option<u16>, out: &mut dyn FnMut(&[u8])) {
        let c = self.tx.tso_ctx;
        let popts = self.tx.popts;
        let hdr = usize::from(c.hdr_len);
        let mss = usize::from(c.mss);
        if hdr < ETH_HLEN || hdr > buf.len() || mss < MIN_TSO_MSS || hdr + mss > MAX_FRAME {
            self.counters.tx_oversize_or_malformed += 1;
            return;
        }
        self.stat_inc(reg::TSCTC);
        let t = Tso {
            hdr_len: hdr,
            mss,
            l3: usize::from(c.ipcss),
            ipv4: c.ipv4,
            l4: usize::from(c.tucss),
            tcp: c.tcp,
            cwr_first_only: false,
        };
        let tucso = usize::from(c.tucso);
        let mut seg = core::mem::take(&mut self.tx.seg);
        segment(buf, &t, &mut seg, &mut |seg, _, l4len| {
            if popts & POPTS_TXSM != 0 {
                if let Some(partial) = get_be16(seg, tucso) {
                    let s = u32::from(partial) + l4len as u32;
                    put_be16(seg, tucso, fold(u64::from(s)));
                }
            }
            self.insert_checksums(seg, &c, popts);
            self.emit(seg, vlan, out);
        });
        self.tx.seg = seg;
    }

    /// Hands one frame to the embedder: the 802.1Q tag inserted after the
    /// addresses if asked, padded to 60 bytes if TCTL.PSP, counted. With
    /// the link down the frame is lost, as on a dead wire; its
    /// descriptors still complete so the driver does not stall.
    fn emit(&mut self, frame: &mut Vec<u8>, vlan: Option<u16>, out: &mut dyn FnMut(&[u8])) {
        if frame.len() < ETH_HLEN {
            self.counters.tx_oversize_or_malformed += 1;
            return;
        }
        if !self.link_up {
            return;
        }
        if let Some(tci) = vlan {
            let [t0, t1] = ETH_P_8021Q.to_be_bytes();
            let [c0, c1] = tci.to_be_bytes();
            frame.splice(12..12, [t0, t1, c0, c1]);
        }
        if self.tctl & TCTL_PSP != 0 && frame.len() < ETH_ZLEN {
            frame.resize(ETH_ZLEN, 0);
        }
        out(frame);
        let len = frame.len();
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += len as u64;
        self.stat_inc(reg::GPTC);
        self.stat_inc(reg::TPT);
        self.stat_add64(reg::GOTCL, len as u64 + 4);
        self.stat_add64(reg::TOTL, len as u64 + 4);
        self.stat_size_bucket(reg::PTC64, len + 4);
        if frame[..6] == [0xff; 6] {
            self.stat_inc(reg::BPTC);
        } else if frame[0] & 1 != 0 {
            self.stat_inc(reg::MPTC);
        }
    }
}
