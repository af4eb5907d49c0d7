//! The receive path: filters, VLAN stripping, the receive ring.

use super::{
    reg, E1000, CTRL_VME, DESC_LEN, ETH_HLEN, ETH_P_8021Q, ETH_ZLEN, ICR_RXDMT0, ICR_RXO,
    ICR_RXT0, MAX_FRAME, MAX_JUMBO_FRAME, RAH_AV, RCTL_BAM, RCTL_BSEX, RCTL_BSIZE_SHIFT,
    RCTL_LPE, RCTL_MO_SHIFT, RCTL_MPE, RCTL_RDMTS_SHIFT, RCTL_SBP, RCTL_SECRC, RCTL_UPE,
    RCTL_VFE,
};
use crate::dma::GuestMemoryAccess;

/// Receive descriptor status bits.
pub const RXD_STAT_DD: u8 = 1 << 0;
pub const RXD_STAT_EOP: u8 = 1 << 1;
/// Ignore checksum indication: no receive checksum offload.
pub const RXD_STAT_IXSM: u8 = 1 << 2;
/// The frame carried an 802.1Q tag, now in the special field.
pub const RXD_STAT_VP: u8 = 1 << 3;
/// Receive data error: here, the buffer was not guest RAM.
pub const RXD_ERR_RXE: u8 = 1 << 7;

/// What [`E1000::receive`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into the guest's receive buffers.
    Delivered,
    /// Dropped: not enough free receive descriptors (MPC counted), or the
    /// ring is not usable (head/tail past its end, not guest RAM).
    NoBuffer,
    /// Dropped: not for this card (address or VLAN filter), a runt, or
    /// longer than RCTL.LPE allows.
    Filtered,
    /// Dropped: receive is off (RCTL.EN clear, no ring, link down, or
    /// DMA disabled).
    NotReady,
}

impl E1000 {
    /// Delivers the Ethernet frame `frame` (without FCS) to the guest.
    pub fn receive(&mut self, mem: &mut dyn GuestMemoryAccess, frame: &[u8]) -> RxOutcome {
        if !self.rx_ready() {
            return RxOutcome::NotReady;
        }
        if frame.len() < ETH_HLEN {
            self.stat_inc(reg::RUC);
            self.counters.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        let max = if self.rctl & RCTL_LPE != 0 { MAX_JUMBO_FRAME } else { MAX_FRAME };
        // SBP lets long frames through up to what the host buffer holds.
        if frame.len() > MAX_JUMBO_FRAME || (frame.len() > max && self.rctl & RCTL_SBP == 0) {
            self.stat_inc(reg::ROC);
            self.counters.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        if !self.accepts(frame) {
            self.counters.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        let mut buf = core::mem::take(&mut self.rx_buf);
        buf.clear();
        let mut tag = None;
        if self.ctrl & CTRL_VME != 0 && is_tagged(frame) {
            tag = Some(u16::from_be_bytes([frame[14], frame[15]]));
            buf.extend_from_slice(&frame[..12]);
            buf.extend_from_slice(&frame[16..]);
        } else {
            buf.extend_from_slice(frame);
        }
        if buf.len() < ETH_ZLEN {
            buf.resize(ETH_ZLEN, 0);
        }
        let len = buf.len();
        if self.rctl & RCTL_SECRC == 0 {
            // The FCS stays, as on the wire: Linux's e1000 strips 4 bytes.
            let fcs = crc32(&buf);
            buf.extend_from_slice(&fcs.to_le_bytes());
        }
        let outcome = self.rx_write(mem, &buf, len, tag);
        self.rx_buf = buf;
        outcome
    }

    /// RCTL.BSIZE with BSEX: the size of every receive buffer.
    pub(super) fn rx_buffer_size(&self) -> usize {
        let bsize = (self.rctl >> RCTL_BSIZE_SHIFT) & 3;
        if self.rctl & RCTL_BSEX != 0 {
            // BSEX with 00 is reserved; 2048 as without BSEX.
            [2048, 16384, 8192, 4096][bsize as usize]
        } else {
            [2048, 1024, 512, 256][bsize as usize]
        }
    }

    /// The destination and VLAN filters.
    fn accepts(&self, frame: &[u8]) -> bool {
        if is_tagged(frame) && self.rctl & RCTL_VFE != 0 {
            let vid = u16::from_be_bytes([frame[14], frame[15]]) & 0xfff;
            if self.vfta[usize::from(vid >> 5)] & (1 << (vid & 31)) == 0 {
                return false;
            }
        }
        let dst = &frame[..6];
        let group = dst[0] & 1 != 0;
        if dst == [0xff; 6] {
            if self.rctl & RCTL_BAM != 0 {
                return true;
            }
        } else if group {
            if self.rctl & RCTL_MPE != 0 {
                return true;
            }
        } else if self.rctl & RCTL_UPE != 0 {
            return true;
        }
        for pair in self.ra.chunks_exact(2) {
            if pair[1] & RAH_AV == 0 {
                continue;
            }
            let [a, b, c, d] = pair[0].to_le_bytes();
            let [e, f, _, _] = pair[1].to_le_bytes();
            if dst == [a, b, c, d, e, f] {
                return true;
            }
        }
        if !group {
            return false;
        }
        // Inexact multicast filter: 12 bits of the address picked by
        // RCTL.MO index the 4096-bit table.
        let shift = [4, 3, 2, 0][((self.rctl >> RCTL_MO_SHIFT) & 3) as usize];
        let hash = ((u32::from(dst[5]) << 8 | u32::from(dst[4])) >> shift) & 0xfff;
        self.mta[(hash >> 5) as usize] & (1 << (hash & 31)) != 0
    }

    /// Writes `data` (the frame, `len` bytes, and its FCS if kept) into
    /// the descriptors from RDH on, one buffer each, as the hardware
    /// does. Descriptors with a null buffer address are skipped (marked
    /// done, length 0). Nothing is written unless enough descriptors are
    /// free for the whole frame.
    fn rx_write(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        data: &[u8],
        len: usize,
        tag: Option<u16>,
    ) -> RxOutcome {
        let n = Self::ring_size(self.rdlen);
        let Some(free) = self.rx_free_descriptors() else {
            self.counters.rx_bad_buffers += 1;
            return RxOutcome::NoBuffer;
        };
        let bufsize = self.rx_buffer_size();
        let total = data.len();
        let need = total.div_ceil(bufsize);
        let base = self.rx_ring_base();
        let desc_at = |i: u32| base.checked_add(u64::from(i) * DESC_LEN);

        let mut usable = 0;
        let mut idx = self.rdh;
        for _ in 0..free {
            if usable >= need {
                break;
            }
            let Some(addr) = desc_at(idx).and_then(|at| read_u64(mem, at)) else {
                self.counters.rx_bad_buffers += 1;
                return RxOutcome::NoBuffer;
            };
            if addr != 0 {
                usable += 1;
            }
            idx = (idx + 1) % n;
        }
        if usable < need {
            self.stat_inc(reg::MPC);
            self.stat_inc(reg::RNBC);
            self.raise(ICR_RXO);
            self.counters.rx_no_buffer += 1;
            return RxOutcome::NoBuffer;
        }

        let special = tag.unwrap_or(0).to_le_bytes();
        let mut off = 0;
        let mut idx = self.rdh;
        for _ in 0..free {
            if off >= total {
                break;
            }
            // Re-read: the guest may have changed the ring meanwhile.
            let Some(at) = desc_at(idx) else { break };
            let Some(addr) = read_u64(mem, at) else { break };
            let mut status = RXD_STAT_DD;
            let mut errors = 0;
            let mut length = 0;
            if addr != 0 {
                let chunk = bufsize.min(total - off);
                if mem.write(addr, &data[off..off + chunk]).is_err() {
                    errors |= RXD_ERR_RXE;
                    self.counters.rx_bad_buffers += 1;
                }
                off += chunk;
                length = chunk as u16;
                if off >= total {
                    status |= RXD_STAT_EOP | RXD_STAT_IXSM;
                }
            }
            if tag.is_some() {
                status |= RXD_STAT_VP;
            }
            // Length and checksum first, then status with DD, so a
            // driver polling DD sees a complete descriptor.
            let [l0, l1] = length.to_le_bytes();
            let _ = mem.write(at + 8, &[l0, l1, 0, 0]);
            let _ = mem.write(at + 12, &[status, errors, special[0], special[1]]);
            idx = (idx + 1) % n;
        }
        self.rdh = idx;
        if off < total {
            // The guest took buffers away between the two passes.
            self.counters.rx_bad_buffers += 1;
        }

        self.counters.rx_frames += 1;
        self.counters.rx_bytes += len as u64;
        self.stat_inc(reg::GPRC);
        self.stat_inc(reg::TPR);
        self.stat_add64(reg::GORCL, len as u64 + 4);
        self.stat_add64(reg::TORL, len as u64 + 4);
        self.stat_size_bucket(reg::PRC64, len + 4);
        if data[..6] == [0xff; 6] {
            self.stat_inc(reg::BPRC);
        } else if data[0] & 1 != 0 {
            self.stat_inc(reg::MPRC);
        }

        let mut cause = ICR_RXT0;
        // Free descriptors at or below RDLEN/2, /4 or /8 (RCTL.RDMTS).
        let shift = ((self.rctl >> RCTL_RDMTS_SHIFT) & 3) + 1;
        let left = self.rx_free_descriptors().unwrap_or(0);
        if u64::from(left) * DESC_LEN <= u64::from(self.rdlen >> shift) {
            cause |= ICR_RXDMT0;
        }
        self.raise(cause);
        RxOutcome::Delivered
    }
}

fn is_tagged(frame: &[u8]) -> bool {
    frame.len() >= ETH_HLEN + 4 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_8021Q
}

fn read_u64(mem: &mut dyn GuestMemoryAccess, at: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(at, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The Ethernet FCS (CRC-32, reflected); sent least significant byte
/// first.
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}
