//! The split virtqueue (virtio 1.x §2.7), device side.
//!
//! The driver owns the descriptor table and the available ring, the device
//! the used ring. Every value read from the guest is checked before use:
//! the available index may move at most `size` past the device's position,
//! heads and `next` fields must lie inside their table, and a chain may be
//! no longer than its table (so loops end) nor than [`MAX_CHAIN`] buffers.

use alloc::vec::Vec;

use super::VirtioError;
use crate::dma::GuestMemoryAccess;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// avail.flags: the driver does not want used-buffer interrupts now.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the driver need not notify the device of new buffers.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Most buffers accepted in one chain, indirect tables included. Linux
/// sizes its requests from `seg_max` + header + status, which a device
/// offering `seg_max = MAX_CHAIN - 2` keeps within this.
pub const MAX_CHAIN: u32 = 256;

/// One guest buffer of a chain, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub gpa: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

#[derive(Debug, Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One split virtqueue as the driver configured it through the transport.
#[derive(Debug, Clone, Default)]
pub struct SplitQueue {
    /// QueueNum as written; checked when the queue is enabled.
    pub num: u32,
    pub ready: bool,
    pub desc_gpa: u64,
    pub avail_gpa: u64,
    pub used_gpa: u64,
    /// The next available-ring slot the device will read.
    last_avail: u16,
    /// The device's used.idx.
    used_idx: u16,
}

fn not_ram(what: &'static str, gpa: u64, len: usize) -> VirtioError {
    VirtioError::NotInGuestRam {
        what,
        gpa,
        len: len as u64,
    }
}

fn read_u16(
    mem: &mut dyn GuestMemoryAccess,
    what: &'static str,
    gpa: u64,
) -> Result<u16, VirtioError> {
    let mut b = [0u8; 2];
    mem.read(gpa, &mut b).map_err(|_| not_ram(what, gpa, 2))?;
    Ok(u16::from_le_bytes(b))
}

impl SplitQueue {
    /// Checks the configuration when the driver sets QueueReady, and starts
    /// the queue from index 0 (a fresh queue, as after reset).
    pub fn enable(&mut self, max: u16) -> Result<(), VirtioError> {
        let num = self.num;
        if num == 0 || num > u32::from(max) || !num.is_power_of_two() {
            return Err(VirtioError::BadQueueSize { size: num, max });
        }
        let n = u64::from(num);
        // Alignments from §2.7 (table 16, avail 2, used 4); the whole ring
        // must fit below 2^64 so offsets into it never wrap.
        let rings = [
            ("descriptor table", self.desc_gpa, 16, DESC_SIZE * n),
            ("available ring", self.avail_gpa, 2, 6 + 2 * n),
            ("used ring", self.used_gpa, 4, 6 + 8 * n),
        ];
        for (ring, gpa, align, len) in rings {
            if gpa % align != 0 || gpa.checked_add(len).is_none() {
                return Err(VirtioError::BadRingAddress { ring, gpa });
            }
        }
        self.ready = true;
        self.last_avail = 0;
        self.used_idx = 0;
        Ok(())
    }

    /// Queue size in use (valid once ready).
    pub fn size(&self) -> u16 {
        self.num as u16
    }

    /// Reads avail.idx once and returns how many heads are waiting.
    pub fn available(&self, mem: &mut dyn GuestMemoryAccess) -> Result<u16, VirtioError> {
        let avail_idx = read_u16(mem, "available ring", self.avail_gpa + 2)?;
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending > self.size() {
            return Err(VirtioError::AvailIndexJump {
                last_seen: self.last_avail,
                avail_idx,
                size: self.size(),
            });
        }
        Ok(pending)
    }

    /// Takes the next head from the available ring. Only call it for heads
    /// [`SplitQueue::available`] counted.
    pub fn pop_head(&mut self, mem: &mut dyn GuestMemoryAccess) -> Result<u16, VirtioError> {
        let size = self.size();
        let slot = u64::from(self.last_avail % size);
        let head = read_u16(mem, "available ring", self.avail_gpa + 4 + 2 * slot)?;
        if head >= size {
            return Err(VirtioError::HeadOutOfRange { head, size });
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(head)
    }

    /// Collects the buffers of the chain at `head` into `out` (cleared
    /// first): zero or more direct descriptors, possibly ending in one
    /// indirect table (§2.7.5.3).
    pub fn walk_chain(
        &self,
        mem: &mut dyn GuestMemoryAccess,
        head: u16,
        indirect_ok: bool,
        out: &mut Vec<Buffer>,
    ) -> Result<(), VirtioError> {
        out.clear();
        let size = self.size();
        let mut index = head;
        // A chain cannot use a descriptor twice without looping, so more
        // than `size` steps means a loop.
        for _ in 0..size {
            let gpa = self.desc_gpa + DESC_SIZE * u64::from(index);
            let d = read_desc(mem, "descriptor table", gpa)?;
            if d.flags & DESC_F_INDIRECT != 0 {
                if !indirect_ok {
                    return Err(VirtioError::IndirectNotNegotiated { head });
                }
                if d.flags & DESC_F_NEXT != 0 {
                    return Err(VirtioError::IndirectWithNext { head });
                }
                return walk_indirect(mem, head, d, out);
            }
            push_buffer(out, head, d)?;
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next >= size {
                return Err(VirtioError::NextOutOfRange {
                    head,
                    next: d.next,
                    table_len: u32::from(size),
                });
            }
            index = d.next;
        }
        Err(VirtioError::ChainTooLong {
            head,
            limit: u32::from(size),
        })
    }

    /// Puts `head` in the used ring (element first, then used.idx) and says
    /// whether the driver wants an interrupt for it (avail.flags).
    pub fn push_used(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        head: u16,
        len: u32,
    ) -> Result<bool, VirtioError> {
        self.push_used_batch(mem, &[(head, len)])
    }

    /// Puts several `(head, len)` in the used ring, every element before
    /// used.idx moves once over all of them (a driver reading the ring
    /// meanwhile sees all or none: virtio-net's merged receive buffers),
    /// and says whether the driver wants an interrupt.
    pub fn push_used_batch(
        &mut self,
        mem: &mut dyn GuestMemoryAccess,
        elems: &[(u16, u32)],
    ) -> Result<bool, VirtioError> {
        let mut next = self.used_idx;
        for &(head, len) in elems {
            let slot = u64::from(next % self.size());
            let elem_gpa = self.used_gpa + 4 + 8 * slot;
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            mem.write(elem_gpa, &elem)
                .map_err(|_| not_ram("used ring", elem_gpa, 8))?;
            next = next.wrapping_add(1);
        }
        mem.write(self.used_gpa + 2, &next.to_le_bytes())
            .map_err(|_| not_ram("used ring", self.used_gpa + 2, 2))?;
        self.used_idx = next;
        let flags = read_u16(mem, "available ring", self.avail_gpa)?;
        Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
    }

    /// Sets used.flags: `USED_F_NO_NOTIFY` asks the driver not to notify
    /// the device of new buffers (it still may).
    pub fn set_used_flags(&mut self, mem: &mut dyn GuestMemoryAccess, flags: u16) -> Result<(), VirtioError> {
        mem.write(self.used_gpa, &flags.to_le_bytes()).map_err(|_| not_ram("used ring", self.used_gpa, 2))
    }

    /// Puts the last `n` heads taken back in the available ring (none of
    /// them used yet): the device reads them again next time.
    pub fn unpop(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_sub(n);
    }
}

fn read_desc(
    mem: &mut dyn GuestMemoryAccess,
    what: &'static str,
    gpa: u64,
) -> Result<Descriptor, VirtioError> {
    let mut b = [0u8; 16];
    mem.read(gpa, &mut b).map_err(|_| not_ram(what, gpa, 16))?;
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&b[..8]);
    Ok(Descriptor {
        addr: u64::from_le_bytes(addr),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

fn push_buffer(out: &mut Vec<Buffer>, head: u16, d: Descriptor) -> Result<(), VirtioError> {
    if out.len() as u32 >= MAX_CHAIN {
        return Err(VirtioError::ChainTooLong {
            head,
            limit: MAX_CHAIN,
        });
    }
    out.push(Buffer {
        gpa: d.addr,
        len: d.len,
        writable: d.flags & DESC_F_WRITE != 0,
    });
    Ok(())
}

/// Walks the indirect table `table` refers to. Its WRITE flag is ignored,
/// as §2.7.5.3.2 requires.
fn walk_indirect(
    mem: &mut dyn GuestMemoryAccess,
    head: u16,
    table: Descriptor,
    out: &mut Vec<Buffer>,
) -> Result<(), VirtioError> {
    let len = table.len;
    if len == 0 || len % DESC_SIZE as u32 != 0 || table.addr.checked_add(u64::from(len)).is_none() {
        return Err(VirtioError::BadIndirectTable { head, len });
    }
    let entries = len / DESC_SIZE as u32;
    let mut index: u32 = 0;
    // As with the main table: more steps than entries means a loop; the
    // buffer count is bounded by MAX_CHAIN in push_buffer as well.
    for _ in 0..entries.min(MAX_CHAIN + 1) {
        let gpa = table.addr + DESC_SIZE * u64::from(index);
        let d = read_desc(mem, "indirect descriptor table", gpa)?;
        if d.flags & DESC_F_INDIRECT != 0 {
            return Err(VirtioError::NestedIndirect { head });
        }
        push_buffer(out, head, d)?;
        if d.flags & DESC_F_NEXT == 0 {
            return Ok(());
        }
        if u32::from(d.next) >= entries {
            return Err(VirtioError::NextOutOfRange {
                head,
                next: d.next,
                table_len: entries,
            });
        }
        index = u32::from(d.next);
    }
    Err(VirtioError::ChainTooLong {
        head,
        limit: entries.min(MAX_CHAIN),
    })
}

/// Reads `out.len()` bytes of a chain's buffers from byte `skip` on.
pub fn gather(mem: &mut dyn GuestMemoryAccess, chain: &[Buffer], skip: u64, out: &mut [u8]) -> bool {
    let mut skip = skip;
    let mut done = 0usize;
    for b in chain {
        if done == out.len() {
            break;
        }
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let Some(gpa) = b.gpa.checked_add(skip) else { return false };
        if mem.read(gpa, &mut out[done..done + n]).is_err() {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == out.len()
}

/// Writes `data` into a chain's buffers from byte `skip` on (the caller
/// checked that they hold it).
pub fn scatter(mem: &mut dyn GuestMemoryAccess, chain: &[Buffer], skip: u64, data: &[u8]) -> Result<(), VirtioError> {
    let mut skip = skip;
    let mut done = 0usize;
    for b in chain {
        if done == data.len() {
            break;
        }
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        let not_ram = VirtioError::NotInGuestRam {
            what: "rx buffer",
            gpa: b.gpa,
            len,
        };
        let gpa = b.gpa.checked_add(skip).ok_or(not_ram)?;
        mem.write(gpa, &data[done..done + n]).map_err(|_| not_ram)?;
        done += n;
        skip = 0;
    }
    Ok(())
}
