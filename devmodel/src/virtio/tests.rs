//! Host tests: a fake guest RAM and a small driver that sets the device up
//! as Linux's virtio_mmio + virtio_blk do.

use super::blk::{blk_feature, req_type, QUEUE_SIZE_MAX, SEG_MAX};
use super::mmio::*;
use super::queue::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use super::*;
use crate::dma::{DmaError, DmaSegment, GuestMemoryAccess};
use crate::testutil::Rng;
use alloc::vec;
use alloc::vec::Vec;

const RAM_SIZE: usize = 4 << 20;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
/// Request headers: 32 bytes per head.
const HDRS: u64 = 0x1_4000;
/// Status bytes: one per head.
const STATUS_BYTES: u64 = 0x1_7000;
/// Indirect tables: 4 KiB per head (256 descriptors).
const TABLES: u64 = 0x10_0000;
/// Data buffers from here on.
const DATA: u64 = 0x20_0000;
/// Not guest RAM.
const HOLE: u64 = 0x4000_0000;

pub(super) struct Ram {
    pub(super) bytes: Vec<u8>,
    /// (gpa, len) of every write, for the fuzz checks.
    pub(super) writes: Vec<(u64, usize)>,
}

impl Ram {
    pub(super) fn new() -> Self {
        Ram {
            bytes: vec![0; RAM_SIZE],
            writes: Vec::new(),
        }
    }
    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, DmaError> {
        let err = DmaError::OutOfRange {
            gpa,
            len: len as u64,
        };
        let end = gpa.checked_add(len as u64).ok_or(err)?;
        if end > RAM_SIZE as u64 {
            return Err(err);
        }
        Ok(gpa as usize..end as usize)
    }
    pub(super) fn put(&mut self, gpa: u64, d: &[u8]) {
        self.bytes[gpa as usize..gpa as usize + d.len()].copy_from_slice(d);
    }
    pub(super) fn get(&self, gpa: u64, len: usize) -> &[u8] {
        &self.bytes[gpa as usize..gpa as usize + len]
    }
    pub(super) fn u16(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.get(gpa, 2).try_into().unwrap())
    }
    pub(super) fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.get(gpa, 4).try_into().unwrap())
    }
}

impl GuestMemoryAccess for Ram {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(gpa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        self.writes.push((gpa, data.len()));
        Ok(())
    }
}

/// One guest buffer as the driver describes it.
#[derive(Clone, Copy, Debug)]
struct Buf {
    gpa: u64,
    len: u32,
    write: bool,
}

fn r(gpa: u64, len: u32) -> Buf {
    Buf {
        gpa,
        len,
        write: false,
    }
}

fn w(gpa: u64, len: u32) -> Buf {
    Buf {
        gpa,
        len,
        write: true,
    }
}

const SERIAL: [u8; 20] = *b"FERRITE-DISK-0001\0\0\0";

fn disk(sectors: u64, read_only: bool) -> BlkDiskInfo {
    BlkDiskInfo {
        sectors,
        read_only,
        serial: SERIAL,
    }
}

/// The guest side: Linux's probe sequence and a simple ring driver.
struct Guest {
    dev: VirtioBlkMmio,
    mem: Ram,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
    /// Next descriptor handed out, round robin.
    next_desc: u16,
}

impl Guest {
    fn new(d: BlkDiskInfo) -> Self {
        let mut g = Guest {
            dev: VirtioBlkMmio::new(d),
            mem: Ram::new(),
            size: 0,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        };
        g.init(QUEUE_SIZE_MAX, true);
        g
    }

    fn rd(&mut self, off: u64) -> u32 {
        self.dev.read(off, 4) as u32
    }

    fn wr(&mut self, off: u64, v: u32) -> MmioEffect {
        self.dev.write(off, 4, u64::from(v))
    }

    fn features(&mut self) -> u64 {
        self.wr(DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(DEVICE_FEATURES);
        self.wr(DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    fn set_driver_features(&mut self, f: u64) {
        self.wr(DRIVER_FEATURES_SEL, 1);
        self.wr(DRIVER_FEATURES, (f >> 32) as u32);
        self.wr(DRIVER_FEATURES_SEL, 0);
        self.wr(DRIVER_FEATURES, f as u32);
    }

    /// vm_reset, then virtio_dev_probe and virtblk_probe's set-up.
    fn init(&mut self, num: u16, indirect: bool) {
        assert_eq!(self.rd(MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.rd(VERSION), 2);
        assert_eq!(self.rd(DEVICE_ID), 2);
        assert_eq!(self.wr(STATUS, 0), MmioEffect::Reset);
        assert_eq!(self.rd(STATUS), 0);
        self.wr(STATUS, status::ACKNOWLEDGE);
        self.wr(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.features();
        let mut wanted = feature::VERSION_1
            | blk_feature::SEG_MAX
            | blk_feature::BLK_SIZE
            | blk_feature::FLUSH
            | blk_feature::RO;
        if indirect {
            wanted |= feature::INDIRECT_DESC;
        }
        self.set_driver_features(offered & wanted);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.wr(STATUS, s);
        assert_eq!(self.rd(STATUS), s, "FEATURES_OK accepted");
        self.wr(QUEUE_SEL, 0);
        assert_eq!(self.rd(QUEUE_READY), 0);
        assert_eq!(self.rd(QUEUE_NUM_MAX), u32::from(QUEUE_SIZE_MAX));
        self.wr(QUEUE_NUM, u32::from(num));
        self.wr(QUEUE_DESC_LOW, DESC as u32);
        self.wr(QUEUE_DESC_HIGH, 0);
        self.wr(QUEUE_DRIVER_LOW, AVAIL as u32);
        self.wr(QUEUE_DRIVER_HIGH, 0);
        self.wr(QUEUE_DEVICE_LOW, USED as u32);
        self.wr(QUEUE_DEVICE_HIGH, 0);
        // Linux allocates the rings zeroed.
        self.mem.bytes[DESC as usize..HDRS as usize].fill(0);
        self.wr(QUEUE_READY, 1);
        assert_eq!(self.rd(QUEUE_READY), 1);
        self.wr(STATUS, s | status::DRIVER_OK);
        self.size = num;
        self.avail_idx = 0;
        self.used_seen = 0;
        self.next_desc = 0;
    }

    fn write_desc(&mut self, at: u64, b: Buf, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&b.gpa.to_le_bytes());
        d[8..12].copy_from_slice(&b.len.to_le_bytes());
        let f = flags | if b.write { DESC_F_WRITE } else { 0 };
        d[12..14].copy_from_slice(&f.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.put(at, &d);
    }

    /// Puts a chain in the descriptor table (or an indirect table) and
    /// returns its head, without making it available.
    fn build(&mut self, bufs: &[Buf], indirect: bool) -> u16 {
        let head = self.next_desc;
        if indirect {
            self.next_desc = (self.next_desc + 1) % self.size;
            let table = TABLES + 0x1000 * u64::from(head);
            for (i, b) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let flags = if last { 0 } else { DESC_F_NEXT };
                self.write_desc(table + 16 * i as u64, *b, flags, i as u16 + 1);
            }
            let t = r(table, 16 * bufs.len() as u32);
            self.write_desc(DESC + 16 * u64::from(head), t, DESC_F_INDIRECT, 0);
        } else {
            for (i, b) in bufs.iter().enumerate() {
                let idx = self.next_desc;
                self.next_desc = (self.next_desc + 1) % self.size;
                let last = i + 1 == bufs.len();
                let flags = if last { 0 } else { DESC_F_NEXT };
                self.write_desc(DESC + 16 * u64::from(idx), *b, flags, self.next_desc);
            }
        }
        head
    }

    fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem.put(AVAIL + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.put(AVAIL + 2, &self.avail_idx.to_le_bytes());
    }

    fn kick(&mut self) {
        assert_eq!(self.wr(QUEUE_NOTIFY, 0), MmioEffect::Notify(0));
    }

    /// Submits a virtio-blk request: header, data, status; returns the head.
    fn submit(&mut self, kind: u32, sector: u64, data: &[Buf], indirect: bool) -> u16 {
        let head = self.next_desc;
        let hdr = HDRS + 32 * u64::from(head);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.put(hdr, &h);
        let status_gpa = STATUS_BYTES + u64::from(head);
        self.mem.put(status_gpa, &[0xff]);
        let mut bufs = vec![r(hdr, 16)];
        bufs.extend_from_slice(data);
        bufs.push(w(status_gpa, 1));
        let got = self.build(&bufs, indirect);
        assert_eq!(got, head);
        self.make_available(head);
        self.kick();
        head
    }

    fn take(&mut self) -> Vec<BlkRequest> {
        self.dev
            .take_requests(&mut self.mem, 1024)
            .expect("no protocol error")
    }

    fn take_err(&mut self) -> VirtioError {
        let e = self.dev.take_requests(&mut self.mem, 1024).unwrap_err();
        self.assert_needs_reset();
        e
    }

    fn assert_needs_reset(&mut self) {
        assert_ne!(self.rd(STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(self.rd(INTERRUPT_STATUS) & interrupt::CONFIG_CHANGE, 0);
        assert!(self.dev.irq_level());
        assert!(self.dev.broken().is_some());
        // Stopped until reset: nothing more is taken, no error repeated.
        assert_eq!(self.dev.take_requests(&mut self.mem, 16), Ok(vec![]));
    }

    fn complete(&mut self, req: &BlkRequest, s: BlkStatus) {
        self.dev.complete(&mut self.mem, &req.id, s).unwrap();
    }

    fn used(&mut self) -> Option<(u32, u32)> {
        if self.mem.u16(USED + 2) == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        let e = USED + 4 + 8 * slot;
        Some((self.mem.u32(e), self.mem.u32(e + 4)))
    }

    fn status_of(&self, head: u16) -> u8 {
        self.mem.get(STATUS_BYTES + u64::from(head), 1)[0]
    }

    /// The interrupt handler: read InterruptStatus, ACK it.
    fn ack(&mut self) -> u32 {
        let s = self.rd(INTERRUPT_STATUS);
        self.wr(INTERRUPT_ACK, s);
        s
    }

    /// Submits a request the model must finish by itself with `status`.
    fn expect_done(&mut self, kind: u32, sector: u64, data: &[Buf], indirect: bool, st: u8) {
        let head = self.submit(kind, sector, data, indirect);
        assert_eq!(self.take(), vec![], "finished inside");
        assert_eq!(self.status_of(head), st);
        let (id, len) = self.used().expect("used element");
        assert_eq!(id, u32::from(head));
        assert!(len >= 1);
        assert_eq!(self.dev.in_flight(), 0);
        assert_eq!(self.ack(), interrupt::USED_BUFFER);
        assert!(!self.dev.irq_level());
    }
}

fn seg(gpa: u64, len: u32) -> DmaSegment {
    DmaSegment { gpa, len }
}

// ---------------------------------------------------------------- registers

#[test]
fn identification_features_and_config() {
    let mut g = Guest::new(disk(2048, false));
    assert_eq!(g.rd(VENDOR_ID), FERRITE_VENDOR_ID);
    let f = g.features();
    let expect = feature::VERSION_1
        | feature::INDIRECT_DESC
        | blk_feature::SEG_MAX
        | blk_feature::BLK_SIZE
        | blk_feature::FLUSH;
    assert_eq!(f, expect);
    assert_eq!(f & feature::EVENT_IDX, 0);
    // Capacity, seg_max, blk_size, by the sizes Linux reads them in.
    assert_eq!(g.dev.read(CONFIG, 4), 2048);
    assert_eq!(g.dev.read(CONFIG + 4, 4), 0);
    assert_eq!(g.dev.read(CONFIG, 8), 2048);
    assert_eq!(g.dev.read(CONFIG + 12, 4), u64::from(SEG_MAX));
    assert_eq!(g.dev.read(CONFIG + 20, 4), 512);
    assert_eq!(g.dev.read(CONFIG + 21, 1), 2);
    assert_eq!(g.dev.read(CONFIG + 20, 2), 512);
    // Odd sizes, offsets past the config and past the window read 0.
    assert_eq!(g.dev.read(CONFIG, 3), 0);
    assert_eq!(g.dev.read(CONFIG + 0xfc, 8), 0);
    assert_eq!(g.dev.read(0x1ff, 8), 0);
    assert_eq!(g.dev.read(u64::MAX, 8), 0);
    assert_eq!(g.dev.read(u64::MAX - 2, 4), 0);
    assert_eq!(g.dev.read(MAGIC_VALUE, 2), 0);
    assert_eq!(g.dev.read(MAGIC_VALUE + 1, 4), 0);
    assert_eq!(g.dev.read(MAGIC_VALUE, 8), 0);
    // No shared memory regions; config generation steady.
    assert_eq!(g.rd(SHM_LEN_LOW), u32::MAX);
    assert_eq!(g.rd(SHM_LEN_HIGH), u32::MAX);
    assert_eq!(g.rd(CONFIG_GENERATION), 0);
    // Only queue 0 exists.
    g.wr(QUEUE_SEL, 1);
    assert_eq!(g.rd(QUEUE_NUM_MAX), 0);
    assert_eq!(g.rd(QUEUE_READY), 0);
    g.wr(QUEUE_READY, 1);
    g.wr(QUEUE_SEL, 0);
    assert_eq!(g.rd(QUEUE_READY), 1);
    assert_eq!(g.wr(QUEUE_NOTIFY, 1), MmioEffect::None);
    // Config space is read-only.
    g.dev.write(CONFIG, 4, 7);
    assert_eq!(g.dev.read(CONFIG, 4), 2048);
    // Features past 64 bits read 0.
    g.wr(DEVICE_FEATURES_SEL, 2);
    assert_eq!(g.rd(DEVICE_FEATURES), 0);

    let ro = VirtioBlkMmio::new(disk(8, true));
    let mut ro = Guest {
        dev: ro,
        mem: Ram::new(),
        size: 0,
        avail_idx: 0,
        used_seen: 0,
        next_desc: 0,
    };
    assert_ne!(ro.features() & blk_feature::RO, 0);
}

#[test]
fn features_ok_refused_for_unoffered_or_legacy_features() {
    let mut g = Guest::new(disk(8, false));
    let base = status::ACKNOWLEDGE | status::DRIVER;
    for bad in [
        0,                                       // no VERSION_1: legacy driver
        feature::VERSION_1 | feature::EVENT_IDX, // not offered
        feature::VERSION_1 | 1 << 40,
    ] {
        g.wr(STATUS, 0);
        g.wr(STATUS, base);
        g.set_driver_features(bad);
        g.wr(STATUS, base | status::FEATURES_OK);
        assert_eq!(
            g.rd(STATUS),
            base,
            "FEATURES_OK must not stick for {:#x}",
            bad
        );
        g.wr(STATUS, base | status::FEATURES_OK | status::DRIVER_OK);
        // Requests are not processed without FEATURES_OK.
        assert_eq!(g.dev.take_requests(&mut g.mem, 8), Ok(vec![]));
    }
    g.wr(STATUS, 0);
    g.wr(STATUS, base);
    g.set_driver_features(feature::VERSION_1);
    g.wr(STATUS, base | status::FEATURES_OK);
    assert_eq!(g.rd(STATUS), base | status::FEATURES_OK);
    // Features are frozen once FEATURES_OK is set.
    g.set_driver_features(feature::VERSION_1 | feature::EVENT_IDX);
    assert_eq!(g.dev.negotiated_features(), feature::VERSION_1);
    // The driver cannot set DEVICE_NEEDS_RESET itself.
    g.wr(
        STATUS,
        base | status::FEATURES_OK | status::DEVICE_NEEDS_RESET,
    );
    assert_eq!(g.rd(STATUS), base | status::FEATURES_OK);
}

#[test]
fn queue_registers_frozen_while_ready() {
    let mut g = Guest::new(disk(64, false));
    g.wr(QUEUE_DESC_LOW, 0x5000);
    g.wr(QUEUE_DRIVER_LOW, 0x6000);
    g.wr(QUEUE_DEVICE_LOW, 0x7000);
    g.wr(QUEUE_NUM, 4);
    // Still works on the original rings.
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.used(), Some((0, 513)));
}

// ---------------------------------------------------------------- requests

#[test]
fn read_one_segment_completes_with_data_len() {
    let mut g = Guest::new(disk(2048, false));
    assert!(!g.dev.irq_level());
    let head = g.submit(req_type::IN, 7, &[w(DATA, 4096)], false);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    let q = &reqs[0];
    assert_eq!(q.op, BlkOp::Read);
    assert_eq!(q.sector, 7);
    assert_eq!(q.segments, vec![seg(DATA, 4096)]);
    assert_eq!(q.id.head, head);
    assert_eq!(q.id.data_len, 4096);
    assert_eq!(q.id.status_gpa, STATUS_BYTES + u64::from(head));
    assert_eq!(g.dev.in_flight(), 1);
    // Nothing in the used ring and no interrupt until completion.
    assert_eq!(g.used(), None);
    assert!(!g.dev.irq_level());
    g.complete(q, BlkStatus::Ok);
    assert_eq!(g.dev.in_flight(), 0);
    assert_eq!(g.status_of(head), 0);
    assert_eq!(g.used(), Some((u32::from(head), 4097)));
    assert!(g.dev.irq_level());
    assert_eq!(g.rd(INTERRUPT_STATUS), interrupt::USED_BUFFER);
    g.ack();
    assert!(!g.dev.irq_level());
    // A second completion of the same request is ignored.
    g.complete(q, BlkStatus::Ok);
    assert_eq!(g.used(), None);
    assert!(!g.dev.irq_level());
}

#[test]
fn failed_read_reports_only_the_status_byte() {
    let mut g = Guest::new(disk(2048, false));
    let head = g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let reqs = g.take();
    g.complete(&reqs[0], BlkStatus::IoErr);
    assert_eq!(g.status_of(head), 1);
    assert_eq!(g.used(), Some((u32::from(head), 1)));
}

#[test]
fn write_many_segments_direct() {
    let mut g = Guest::new(disk(2048, false));
    let data = [r(DATA, 512), r(DATA + 0x1000, 1024), r(DATA + 0x3000, 2560)];
    let head = g.submit(req_type::OUT, 100, &data, false);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].op, BlkOp::Write);
    assert_eq!(reqs[0].sector, 100);
    assert_eq!(
        reqs[0].segments,
        vec![
            seg(DATA, 512),
            seg(DATA + 0x1000, 1024),
            seg(DATA + 0x3000, 2560)
        ]
    );
    assert_eq!(reqs[0].id.data_len, 4096);
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.status_of(head), 0);
    assert_eq!(g.used(), Some((u32::from(head), 1)));
}

#[test]
fn indirect_requests_up_to_seg_max() {
    let mut g = Guest::new(disk(1 << 20, false));
    let n = SEG_MAX as usize;
    let data: Vec<Buf> = (0..n)
        .map(|i| w(DATA + 0x1000 * i as u64 / 2, 512))
        .collect();
    let head = g.submit(req_type::IN, 1000, &data, true);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].segments.len(), n);
    for (i, s) in reqs[0].segments.iter().enumerate() {
        assert_eq!(*s, seg(DATA + 0x1000 * i as u64 / 2, 512));
    }
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.used(), Some((u32::from(head), 512 * n as u32 + 1)));
    // A write through an indirect table too, several in flight at once.
    let a = g.submit(req_type::OUT, 0, &[r(DATA, 512), r(DATA + 512, 512)], true);
    let b = g.submit(req_type::IN, 8, &[w(DATA + 0x2000, 512)], true);
    let reqs = g.take();
    assert_eq!(reqs.len(), 2);
    assert_eq!(g.dev.in_flight(), 2);
    // Out of order completion.
    g.complete(&reqs[1], BlkStatus::Ok);
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.used(), Some((u32::from(b), 513)));
    assert_eq!(g.used(), Some((u32::from(a), 1)));
}

#[test]
fn chain_of_direct_descriptors_ending_in_an_indirect_table() {
    // §2.7.5.3.2: zero or more direct descriptors followed by one indirect.
    let mut g = Guest::new(disk(64, false));
    let hdr = HDRS;
    g.mem.put(hdr, &[0; 16]); // IN, sector 0
    let table = TABLES;
    g.write_desc(table, w(DATA, 512), DESC_F_NEXT, 1);
    g.write_desc(table + 16, w(STATUS_BYTES, 1), 0, 0);
    g.write_desc(DESC, r(hdr, 16), DESC_F_NEXT, 1);
    g.write_desc(DESC + 16, r(table, 32), DESC_F_INDIRECT, 0);
    g.make_available(0);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].segments, vec![seg(DATA, 512)]);
    assert_eq!(reqs[0].id.status_gpa, STATUS_BYTES);
}

#[test]
fn framing_is_not_assumed() {
    // Header split over two descriptors, the first data bytes in the
    // header's buffer, status sharing the last data buffer.
    let mut g = Guest::new(disk(64, false));
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&req_type::OUT.to_le_bytes());
    h[8..].copy_from_slice(&5u64.to_le_bytes());
    g.mem.put(DATA, &h[..10]);
    g.mem.put(DATA + 0x100, &h[10..]);
    let head = g.build(
        &[r(DATA, 10), r(DATA + 0x100, 6 + 512), w(STATUS_BYTES, 1)],
        false,
    );
    g.make_available(head);
    let reqs = g.take();
    assert_eq!(reqs[0].op, BlkOp::Write);
    assert_eq!(reqs[0].sector, 5);
    assert_eq!(reqs[0].segments, vec![seg(DATA + 0x106, 512)]);

    // A read whose status byte is the last byte of its data buffer.
    let mut g = Guest::new(disk(64, false));
    g.mem.put(HDRS, &[0; 16]);
    let head = g.build(&[r(HDRS, 16), w(DATA, 1024 + 1)], false);
    g.make_available(head);
    let reqs = g.take();
    assert_eq!(reqs[0].segments, vec![seg(DATA, 1024)]);
    assert_eq!(reqs[0].id.status_gpa, DATA + 1024);
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.mem.get(DATA + 1024, 1), [0]);
    assert_eq!(g.used(), Some((u32::from(head), 1025)));
}

#[test]
fn flush_goes_to_the_backend() {
    let mut g = Guest::new(disk(64, false));
    let head = g.submit(req_type::FLUSH, 0, &[], false);
    let reqs = g.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].op, BlkOp::Flush);
    assert!(reqs[0].segments.is_empty());
    g.complete(&reqs[0], BlkStatus::Ok);
    assert_eq!(g.status_of(head), 0);
    assert_eq!(g.used(), Some((u32::from(head), 1)));
    // Flush with data is malformed.
    g.expect_done(req_type::FLUSH, 0, &[r(DATA, 512)], false, 1);
}

#[test]
fn get_id_returns_the_serial() {
    let mut g = Guest::new(disk(64, false));
    g.mem.put(DATA, &[0xaa; 32]);
    g.expect_done(req_type::GET_ID, 0, &[w(DATA, 20)], false, 0);
    assert_eq!(g.mem.get(DATA, 20), SERIAL);
    assert_eq!(g.mem.get(DATA + 20, 1), [0xaa]);
    // The used len counted the ID and the status byte.
    let slot = u64::from((g.used_seen - 1) % g.size);
    assert_eq!(g.mem.u32(USED + 4 + 8 * slot + 4), 21);
    // Split buffers, shorter than 20: what fits.
    g.mem.put(DATA, &[0xaa; 32]);
    g.expect_done(req_type::GET_ID, 0, &[w(DATA, 4), w(DATA + 8, 4)], true, 0);
    assert_eq!(g.mem.get(DATA, 4), &SERIAL[..4]);
    assert_eq!(g.mem.get(DATA + 8, 4), &SERIAL[4..8]);
    // No buffer, or a buffer not in RAM.
    g.expect_done(req_type::GET_ID, 0, &[], false, 1);
    g.expect_done(req_type::GET_ID, 0, &[w(HOLE, 20)], false, 1);
}

#[test]
fn unsupported_types_get_unsupp() {
    let mut g = Guest::new(disk(64, false));
    for kind in [2, 10, 11, 13, 14, 0x8000_0000, u32::MAX] {
        g.expect_done(kind, 0, &[r(DATA, 512)], false, 2);
    }
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut g = Guest::new(disk(64, true));
    assert_ne!(g.dev.negotiated_features() & blk_feature::RO, 0);
    g.expect_done(req_type::OUT, 0, &[r(DATA, 512)], false, 1);
    // Flush has nothing to do; reads work.
    g.expect_done(req_type::FLUSH, 0, &[], false, 0);
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    assert_eq!(g.take().len(), 1);
}

#[test]
fn malformed_requests_end_with_ioerr() {
    let mut g = Guest::new(disk(64, false));
    let cases: Vec<(u32, u64, Vec<Buf>)> = vec![
        // Past the end, straddling the end, sector overflow.
        (req_type::IN, 64, vec![w(DATA, 512)]),
        (req_type::OUT, 63, vec![r(DATA, 1024)]),
        (req_type::IN, u64::MAX, vec![w(DATA, 512)]),
        (req_type::IN, u64::MAX / 512 * 512, vec![w(DATA, 512)]),
        // Not whole sectors.
        (req_type::IN, 0, vec![w(DATA, 511)]),
        (req_type::OUT, 0, vec![r(DATA, 512), r(DATA + 512, 100)]),
        // Wrong directions: read data device-readable, write data writable.
        (req_type::IN, 0, vec![r(DATA, 512)]),
        (req_type::OUT, 0, vec![w(DATA, 512)]),
        (req_type::IN, 0, vec![r(DATA, 512), w(DATA, 512)]),
        // No data at all.
        (req_type::IN, 0, vec![]),
        (req_type::OUT, 0, vec![]),
        // Zero-length buffers.
        (req_type::IN, 0, vec![w(DATA, 512), w(DATA, 0)]),
        (req_type::OUT, 0, vec![r(DATA, 0), r(DATA, 512)]),
        // Larger than the request limit.
        (
            req_type::IN,
            0,
            vec![w(DATA, MAX_REQUEST_BYTES), w(DATA, 512)],
        ),
    ];
    for (kind, sector, data) in cases {
        for indirect in [false, true] {
            g.expect_done(kind, sector, &data, indirect, 1);
        }
    }
    // A readable buffer after a writable one (data before the status).
    let mut g = Guest::new(disk(64, false));
    g.mem.put(HDRS, &[0; 16]);
    let head = g.build(
        &[r(HDRS, 16), w(DATA, 512), r(DATA, 512), w(STATUS_BYTES, 1)],
        false,
    );
    g.make_available(head);
    assert_eq!(g.take(), vec![]);
    assert_eq!(g.status_of(head), 1);
    // Header too short, or not in RAM.
    for hdr in [r(HDRS, 8), r(HOLE, 16), r(u64::MAX - 3, 16)] {
        let st = w(STATUS_BYTES + u64::from(g.next_desc), 1);
        let head = g.build(&[hdr, w(DATA, 512), st], false);
        g.make_available(head);
        assert_eq!(g.take(), vec![]);
        assert_eq!(g.status_of(head), 1);
    }
    // Data buffers outside RAM are the backend's to check: passed on.
    g.submit(req_type::IN, 0, &[w(HOLE, 512)], false);
    assert_eq!(g.take()[0].segments, vec![seg(HOLE, 512)]);
}

// ---------------------------------------------------------------- interrupts

#[test]
fn no_interrupt_flag_is_honoured() {
    let mut g = Guest::new(disk(64, false));
    g.mem.put(AVAIL, &1u16.to_le_bytes());
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let reqs = g.take();
    g.complete(&reqs[0], BlkStatus::Ok);
    assert!(g.used().is_some());
    assert!(!g.dev.irq_level());
    g.mem.put(AVAIL, &0u16.to_le_bytes());
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let reqs = g.take();
    g.complete(&reqs[0], BlkStatus::Ok);
    assert!(g.dev.irq_level());
    // Partial ACK leaves the line up.
    g.wr(INTERRUPT_ACK, interrupt::CONFIG_CHANGE);
    assert!(g.dev.irq_level());
    g.wr(INTERRUPT_ACK, interrupt::USED_BUFFER);
    assert!(!g.dev.irq_level());
}

#[test]
fn max_bounds_the_batch() {
    let mut g = Guest::new(disk(64, false));
    for i in 0..5 {
        g.submit(req_type::IN, i, &[w(DATA, 512)], true);
    }
    let a = g.dev.take_requests(&mut g.mem, 2).unwrap();
    assert_eq!(a.len(), 2);
    assert!(g.dev.more_available());
    assert_eq!(g.dev.take_requests(&mut g.mem, 0).unwrap(), vec![]);
    let b = g.dev.take_requests(&mut g.mem, 8).unwrap();
    assert_eq!(b.len(), 3);
    assert!(!g.dev.more_available());
    let sectors: Vec<u64> = a.iter().chain(&b).map(|q| q.sector).collect();
    assert_eq!(sectors, vec![0, 1, 2, 3, 4]);
    assert_eq!(g.dev.in_flight(), 5);
}

#[test]
fn ring_indices_wrap() {
    // A small queue driven through more than 65536 requests.
    let mut g = Guest::new(disk(64, false));
    g.init(4, true);
    for i in 0..70_000u32 {
        let head = g.submit(req_type::IN, u64::from(i % 64), &[w(DATA, 512)], true);
        let reqs = g.take();
        assert_eq!(reqs.len(), 1);
        g.complete(&reqs[0], BlkStatus::Ok);
        assert_eq!(g.used(), Some((u32::from(head), 513)));
    }
}

// ---------------------------------------------------------------- reset

#[test]
fn reset_mid_flight_drops_stale_completions() {
    let mut g = Guest::new(disk(64, false));
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    g.submit(req_type::OUT, 1, &[r(DATA, 512)], false);
    let old = g.take();
    assert_eq!(g.dev.in_flight(), 2);
    assert_eq!(g.wr(STATUS, 0), MmioEffect::Reset);
    assert_eq!(g.dev.in_flight(), 0);
    assert_eq!(g.rd(STATUS), 0);
    assert_eq!(g.rd(QUEUE_READY), 0);
    assert!(!g.dev.irq_level());
    g.init(QUEUE_SIZE_MAX, true);
    let new_head = g.submit(req_type::IN, 3, &[w(DATA, 512)], false);
    assert_eq!(new_head, old[0].id.head, "same head reused after reset");
    let new = g.take();
    assert_eq!(new.len(), 1);
    // The old completions land nowhere, even for a head now reused.
    g.mem.put(STATUS_BYTES, &[0xee, 0xee]);
    for q in &old {
        g.complete(q, BlkStatus::Ok);
    }
    assert_eq!(g.used(), None);
    assert_eq!(g.mem.get(STATUS_BYTES, 2), [0xee, 0xee]);
    assert_eq!(g.dev.in_flight(), 1);
    g.complete(&new[0], BlkStatus::Ok);
    assert_eq!(g.used(), Some((u32::from(new_head), 513)));
}

#[test]
fn disabling_the_queue_forgets_requests() {
    let mut g = Guest::new(disk(64, false));
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let old = g.take();
    assert_eq!(g.wr(QUEUE_READY, 0), MmioEffect::Reset);
    assert_eq!(g.rd(QUEUE_READY), 0);
    assert_eq!(g.dev.in_flight(), 0);
    g.complete(&old[0], BlkStatus::Ok);
    assert_eq!(g.used(), None);
}

#[test]
fn forged_request_ids_are_ignored() {
    let mut g = Guest::new(disk(64, false));
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    let q = g.take().remove(0);
    let mut forged = q.id;
    forged.head = 300;
    g.dev.complete(&mut g.mem, &forged, BlkStatus::Ok).unwrap();
    forged.head = 5;
    g.dev.complete(&mut g.mem, &forged, BlkStatus::Ok).unwrap();
    assert_eq!(g.used(), None);
    // The model's own record of the status address wins.
    let mut moved = q.id;
    moved.status_gpa = DATA + 0x100;
    g.dev.complete(&mut g.mem, &moved, BlkStatus::Ok).unwrap();
    assert_eq!(g.status_of(q.id.head), 0);
    assert_eq!(g.used(), Some((u32::from(q.id.head), 513)));
}

// ---------------------------------------------------------------- protocol errors

/// Runs `setup` on a fresh device and checks it ends in NEEDS_RESET with
/// the expected error, and that a reset brings the device back.
fn expect_broken(setup: impl FnOnce(&mut Guest), check: impl FnOnce(&VirtioError)) {
    let mut g = Guest::new(disk(64, false));
    setup(&mut g);
    let e = g.take_err();
    check(&e);
    assert!(!alloc::format!("{}", e).is_empty());
    assert_eq!(g.dev.broken(), Some(&e));
    g.init(QUEUE_SIZE_MAX, true);
    assert!(g.dev.broken().is_none());
    assert_eq!(g.rd(STATUS) & status::DEVICE_NEEDS_RESET, 0);
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    assert_eq!(g.take().len(), 1);
}

#[test]
fn avail_index_jump() {
    expect_broken(
        |g| g.mem.put(AVAIL + 2, &257u16.to_le_bytes()),
        |e| {
            assert!(matches!(
                e,
                VirtioError::AvailIndexJump { avail_idx: 257, .. }
            ))
        },
    );
    // Backwards is a jump of nearly 65536.
    expect_broken(
        |g| g.mem.put(AVAIL + 2, &u16::MAX.to_le_bytes()),
        |e| assert!(matches!(e, VirtioError::AvailIndexJump { .. })),
    );
}

#[test]
fn head_out_of_range() {
    expect_broken(
        |g| g.make_available(256),
        |e| {
            assert_eq!(
                *e,
                VirtioError::HeadOutOfRange {
                    head: 256,
                    size: 256
                }
            )
        },
    );
}

#[test]
fn next_out_of_range() {
    expect_broken(
        |g| {
            g.write_desc(DESC, r(HDRS, 16), DESC_F_NEXT, 256);
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::NextOutOfRange { next: 256, .. })),
    );
    expect_broken(
        |g| {
            g.write_desc(DESC, r(TABLES, 32), DESC_F_INDIRECT, 0);
            g.write_desc(TABLES, r(HDRS, 16), DESC_F_NEXT, 2);
            g.make_available(0);
        },
        |e| {
            assert!(matches!(
                e,
                VirtioError::NextOutOfRange {
                    next: 2,
                    table_len: 2,
                    ..
                }
            ))
        },
    );
}

#[test]
fn descriptor_loops() {
    expect_broken(
        |g| {
            g.write_desc(DESC, r(HDRS, 16), DESC_F_NEXT, 1);
            g.write_desc(DESC + 16, w(DATA, 512), DESC_F_NEXT, 0);
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::ChainTooLong { limit: 256, .. })),
    );
    expect_broken(
        |g| {
            g.write_desc(DESC + 32, w(DATA, 512), DESC_F_NEXT, 2);
            g.make_available(2);
        },
        |e| assert!(matches!(e, VirtioError::ChainTooLong { .. })),
    );
    // A loop inside an indirect table.
    expect_broken(
        |g| {
            g.write_desc(DESC, r(TABLES, 48), DESC_F_INDIRECT, 0);
            g.write_desc(TABLES, r(HDRS, 16), DESC_F_NEXT, 1);
            g.write_desc(TABLES + 16, w(DATA, 512), DESC_F_NEXT, 2);
            g.write_desc(TABLES + 32, w(DATA, 512), DESC_F_NEXT, 1);
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::ChainTooLong { limit: 3, .. })),
    );
    // A huge indirect table with a long chain: bounded by MAX_CHAIN.
    expect_broken(
        |g| {
            g.write_desc(DESC, r(TABLES, 0x4000), DESC_F_INDIRECT, 0);
            for i in 0..1024u16 {
                g.write_desc(TABLES + 16 * u64::from(i), w(DATA, 512), DESC_F_NEXT, i + 1);
            }
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::ChainTooLong { limit: 256, .. })),
    );
}

#[test]
fn indirect_rules() {
    // Not negotiated.
    let mut g = Guest::new(disk(64, false));
    g.init(QUEUE_SIZE_MAX, false);
    g.submit(req_type::IN, 0, &[w(DATA, 512)], true);
    assert_eq!(g.take_err(), VirtioError::IndirectNotNegotiated { head: 0 });
    // INDIRECT with NEXT.
    expect_broken(
        |g| {
            g.write_desc(DESC, r(TABLES, 32), DESC_F_INDIRECT | DESC_F_NEXT, 1);
            g.make_available(0);
        },
        |e| assert_eq!(*e, VirtioError::IndirectWithNext { head: 0 }),
    );
    // Nested.
    expect_broken(
        |g| {
            g.write_desc(DESC, r(TABLES, 32), DESC_F_INDIRECT, 0);
            g.write_desc(TABLES, r(HDRS, 16), DESC_F_NEXT, 1);
            g.write_desc(TABLES + 16, r(TABLES, 32), DESC_F_INDIRECT, 0);
            g.make_available(0);
        },
        |e| assert_eq!(*e, VirtioError::NestedIndirect { head: 0 }),
    );
    // Bad table lengths.
    for len in [0, 8, 17] {
        expect_broken(
            |g| {
                g.write_desc(DESC, r(TABLES, len), DESC_F_INDIRECT, 0);
                g.make_available(0);
            },
            |e| assert_eq!(*e, VirtioError::BadIndirectTable { head: 0, len }),
        );
    }
    // Table not in RAM, or wrapping the address space.
    expect_broken(
        |g| {
            g.write_desc(DESC, r(HOLE, 32), DESC_F_INDIRECT, 0);
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::NotInGuestRam { gpa: HOLE, .. })),
    );
    expect_broken(
        |g| {
            g.write_desc(DESC, r(u64::MAX - 15, 32), DESC_F_INDIRECT, 0);
            g.make_available(0);
        },
        |e| assert!(matches!(e, VirtioError::BadIndirectTable { .. })),
    );
}

#[test]
fn chain_without_status_byte() {
    for last in [r(DATA, 1), w(DATA, 0)] {
        expect_broken(
            |g| {
                let head = g.build(&[r(HDRS, 16), w(DATA, 512), last], false);
                g.make_available(head);
            },
            |e| assert_eq!(*e, VirtioError::NoStatusByte { head: 0 }),
        );
    }
}

#[test]
fn status_byte_not_in_ram() {
    // The read goes to the backend; completing it fails.
    let mut g = Guest::new(disk(64, false));
    g.mem.put(HDRS, &[0; 16]);
    let head = g.build(&[r(HDRS, 16), w(DATA, 512), w(HOLE, 1)], false);
    g.make_available(head);
    let reqs = g.take();
    let e = g.dev.complete(&mut g.mem, &reqs[0].id, BlkStatus::Ok);
    assert!(matches!(
        e,
        Err(VirtioError::NotInGuestRam { gpa: HOLE, .. })
    ));
    g.assert_needs_reset();
    // Finished inside (unsupported type): the error comes from take.
    expect_broken(
        |g| {
            g.mem.put(HDRS, &99u32.to_le_bytes());
            let head = g.build(&[r(HDRS, 16), w(HOLE, 1)], false);
            g.make_available(head);
        },
        |e| {
            assert!(matches!(
                e,
                VirtioError::NotInGuestRam {
                    what: "status byte",
                    ..
                }
            ))
        },
    );
}

#[test]
fn head_reused_while_in_flight() {
    expect_broken(
        |g| {
            let head = g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
            assert_eq!(g.take().len(), 1);
            g.make_available(head);
        },
        |e| assert_eq!(*e, VirtioError::HeadInFlight { head: 0 }),
    );
}

#[test]
fn batch_is_dropped_on_error() {
    expect_broken(
        |g| {
            g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
            g.make_available(300);
        },
        |_| {},
    );
    let mut g = Guest::new(disk(64, false));
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    g.make_available(300);
    g.take_err();
    assert_eq!(g.dev.in_flight(), 0);
}

#[test]
fn rings_not_in_ram() {
    for (reg, gpa) in [
        (QUEUE_DESC_LOW, 0x100_0000u32),
        (QUEUE_DRIVER_LOW, 0x100_0000),
        (QUEUE_DEVICE_LOW, 0x100_0000),
    ] {
        let mut g = Guest::new(disk(64, false));
        g.wr(QUEUE_READY, 0);
        g.wr(reg, gpa);
        g.wr(QUEUE_READY, 1);
        assert_eq!(g.rd(QUEUE_READY), 1);
        if reg != QUEUE_DRIVER_LOW {
            g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
            // The used ring is only touched on completion.
            if reg == QUEUE_DEVICE_LOW {
                let reqs = g.take();
                let e = g
                    .dev
                    .complete(&mut g.mem, &reqs[0].id, BlkStatus::Ok)
                    .unwrap_err();
                assert!(matches!(
                    e,
                    VirtioError::NotInGuestRam {
                        what: "used ring",
                        ..
                    }
                ));
                continue;
            }
        }
        let e = g.take_err();
        assert!(matches!(e, VirtioError::NotInGuestRam { .. }), "{:?}", e);
    }
}

#[test]
fn bad_queue_setup() {
    let cases: [&[(u64, u32)]; 7] = [
        &[(QUEUE_NUM, 0)],
        &[(QUEUE_NUM, 3)],
        &[(QUEUE_NUM, 512)],
        &[(QUEUE_DESC_LOW, 0x1_0008)],
        &[(QUEUE_DRIVER_LOW, 0x1_1001)],
        &[(QUEUE_DEVICE_LOW, 0x1_2002)],
        // The used ring would wrap around the address space.
        &[
            (QUEUE_DEVICE_LOW, 0xffff_fffc),
            (QUEUE_DEVICE_HIGH, 0xffff_ffff),
        ],
    ];
    for writes in cases {
        let mut g = Guest::new(disk(64, false));
        g.wr(QUEUE_READY, 0);
        for &(reg, v) in writes {
            g.wr(reg, v);
        }
        g.wr(QUEUE_READY, 1);
        assert_eq!(g.rd(QUEUE_READY), 0, "not enabled");
        assert!(g.dev.irq_level());
        let e = g.take_err();
        assert!(
            matches!(
                e,
                VirtioError::BadQueueSize { .. } | VirtioError::BadRingAddress { .. }
            ),
            "{:?}",
            e
        );
    }
}

#[test]
fn nothing_happens_before_driver_ok() {
    let mut g = Guest::new(disk(64, false));
    g.wr(STATUS, 0);
    g.init(QUEUE_SIZE_MAX, true);
    let s = g.rd(STATUS);
    g.wr(STATUS, 0);
    // Rings set up, requests queued, but DRIVER_OK not yet written.
    g.wr(STATUS, status::ACKNOWLEDGE | status::DRIVER);
    g.set_driver_features(feature::VERSION_1);
    g.wr(
        STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    g.wr(QUEUE_NUM, 256);
    g.wr(QUEUE_DESC_LOW, DESC as u32);
    g.wr(QUEUE_DRIVER_LOW, AVAIL as u32);
    g.wr(QUEUE_DEVICE_LOW, USED as u32);
    g.wr(QUEUE_READY, 1);
    g.mem.bytes[AVAIL as usize..USED as usize].fill(0);
    g.avail_idx = 0;
    g.next_desc = 0;
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    assert_eq!(g.take(), vec![]);
    g.wr(STATUS, s);
    assert_eq!(g.take().len(), 1);
    // FAILED stops processing as well.
    g.submit(req_type::IN, 0, &[w(DATA, 512)], false);
    g.wr(STATUS, s | status::FAILED);
    assert_eq!(g.take(), vec![]);
}

// ---------------------------------------------------------------- fuzz

/// Random guests: descriptors, indirect tables, ring indices and MMIO
/// writes, half plausible and half garbage, with completions in random
/// order and resets. Checks: no panic; requests handed out are well formed
/// (whole sectors, inside the disk, bounded segment count, no writes on
/// the read-only disk); the model writes guest memory only in the used
/// ring, a status byte or a GET_ID buffer; in-flight never exceeds the
/// queue size.
#[test]
fn fuzz_random_rings_never_panic() {
    let mut rng = Rng::new(0x7172_7469_6f00);
    let mut stats = [0usize; 4]; // requests, protocol errors, done inside, resets
    let mut kinds = std::collections::BTreeMap::new();
    for round in 0..60 {
        let read_only = round % 4 == 3;
        let sectors = 1 + rng.below(5000);
        let mut g = Guest::new(disk(sectors, read_only));
        let num = [2u16, 4, 16, 256][rng.below(4) as usize];
        g.init(num, rng.chance(80));
        let mut held: Vec<BlkRequest> = Vec::new();
        for _ in 0..4000 {
            match rng.below(100) {
                0..=44 => fuzz_submit(&mut g, &mut rng, sectors),
                45..=49 if rng.chance(30) => {
                    // Garbage straight into the rings and tables.
                    let base = [DESC, AVAIL, USED, TABLES, HDRS][rng.below(5) as usize];
                    let at = base + rng.below(0x1000);
                    let v = rng.next().to_le_bytes();
                    let n = 1 + rng.below(8) as usize;
                    g.mem.put(at, &v[..n]);
                }
                50..=54 => {
                    let bump = if rng.chance(95) {
                        rng.below(4)
                    } else {
                        rng.next()
                    } as u16;
                    g.avail_idx = g.avail_idx.wrapping_add(bump);
                    g.mem.put(AVAIL + 2, &g.avail_idx.to_le_bytes());
                }
                55..=74 => {
                    let max = rng.below(20) as usize;
                    let before = g.mem.writes.len();
                    match g.dev.take_requests(&mut g.mem, max) {
                        Ok(reqs) => {
                            assert!(reqs.len() <= max);
                            for q in &reqs {
                                check_request(q, sectors, read_only);
                            }
                            stats[0] += reqs.len();
                            held.extend(reqs);
                        }
                        Err(e) => {
                            let msg = alloc::format!("{}", e);
                            assert!(!msg.is_empty());
                            let debug = alloc::format!("{:?}", e);
                            let variant = debug.split([' ', '{']).next().unwrap_or("").to_owned();
                            *kinds.entry(variant).or_insert(0usize) += 1;
                            stats[1] += 1;
                        }
                    }
                    stats[2] += check_writes(&g.mem.writes[before..], num);
                }
                75..=89 if !held.is_empty() => {
                    let i = rng.below(held.len() as u64) as usize;
                    let q = held.swap_remove(i);
                    let s =
                        [BlkStatus::Ok, BlkStatus::IoErr, BlkStatus::Unsupp][rng.below(3) as usize];
                    let before = g.mem.writes.len();
                    let _ = g.dev.complete(&mut g.mem, &q.id, s);
                    check_writes(&g.mem.writes[before..], num);
                }
                90..=95 => {
                    let off = if rng.chance(70) {
                        rng.below(0x40) * 4
                    } else {
                        rng.next() % 0x300
                    };
                    let size = [1u8, 2, 4, 8, 3][rng.below(5) as usize];
                    if rng.chance(50) {
                        g.dev.read(off, size);
                    } else if off != STATUS && off != QUEUE_READY || rng.chance(10) {
                        let v = if rng.chance(50) {
                            rng.below(512)
                        } else {
                            rng.next()
                        };
                        g.dev.write(off, size, v);
                    }
                }
                96 => {
                    g.ack();
                }
                97 => {
                    stats[3] += 1;
                    let num = [2u16, 4, 16, 256][rng.below(4) as usize];
                    g.init(num, rng.chance(80));
                }
                _ => {
                    g.dev.irq_level();
                }
            }
            assert!(g.dev.in_flight() <= usize::from(QUEUE_SIZE_MAX));
        }
    }
    // The fuzz reached the interesting paths.
    eprintln!(
        "requests, protocol errors, finished inside, resets: {:?}",
        stats
    );
    eprintln!("protocol errors: {:?}", kinds);
    assert!(stats[0] > 2000, "requests {:?}", stats);
    assert!(stats[1] > 100, "protocol errors {:?}", stats);
    assert!(stats[2] > 500, "finished inside {:?}", stats);
    assert!(stats[3] > 50, "resets {:?}", stats);
}

/// A request that is plausible more often than not.
fn fuzz_submit(g: &mut Guest, rng: &mut Rng, sectors: u64) {
    let kind = match rng.below(10) {
        0..=3 => req_type::IN,
        4..=6 => req_type::OUT,
        7 => req_type::FLUSH,
        8 => req_type::GET_ID,
        _ => rng.next() as u32,
    };
    let sector = if rng.chance(90) {
        rng.below(sectors)
    } else {
        rng.next()
    };
    let n = if rng.chance(80) {
        1 + rng.below(4)
    } else {
        rng.below(300)
    } as usize;
    let data_write = if rng.chance(90) {
        kind != req_type::OUT
    } else {
        rng.chance(50)
    };
    let data: Vec<Buf> = (0..n)
        .map(|_| Buf {
            gpa: if rng.chance(95) {
                DATA + rng.below(0x7_0000)
            } else {
                rng.next()
            },
            len: if rng.chance(85) {
                512 * (1 + rng.below(8)) as u32
            } else {
                rng.next() as u32 % 5000
            },
            write: data_write ^ rng.chance(3),
        })
        .collect();
    let indirect = rng.chance(50);
    if data.len() + 2 > usize::from(g.size) && !indirect {
        return;
    }
    let head = g.next_desc;
    let hdr = HDRS + 32 * u64::from(head);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    g.mem.put(hdr, &h);
    let mut bufs = vec![r(hdr, 16)];
    bufs.extend(data);
    bufs.push(w(STATUS_BYTES + u64::from(head), 1));
    if rng.chance(5) {
        let i = rng.below(bufs.len() as u64) as usize;
        bufs[i].write ^= true;
    }
    let head = g.build(&bufs, indirect);
    if rng.chance(3) {
        // A bad next, flag or length somewhere in the main table.
        let at = DESC + 16 * rng.below(u64::from(g.size)) + 8 + rng.below(8);
        g.mem.put(at, &[rng.u8()]);
    }
    g.make_available(head);
    if rng.chance(70) {
        g.dev.write(QUEUE_NOTIFY, 4, 0);
    }
}

fn check_request(q: &BlkRequest, sectors: u64, read_only: bool) {
    let total: u64 = q.segments.iter().map(|s| u64::from(s.len)).sum();
    assert_eq!(total, u64::from(q.id.data_len));
    match q.op {
        BlkOp::Flush => {
            assert!(q.segments.is_empty());
            assert!(!read_only);
        }
        BlkOp::Read | BlkOp::Write => {
            assert!(!q.segments.is_empty());
            assert!(q.segments.len() <= super::queue::MAX_CHAIN as usize);
            assert!(q.segments.iter().all(|s| s.len > 0));
            assert_eq!(total % 512, 0);
            assert!(total <= u64::from(MAX_REQUEST_BYTES));
            assert!(q.sector + total / 512 <= sectors);
            assert!(!(read_only && q.op == BlkOp::Write));
        }
    }
}

/// Every write the model made: the used ring (elements, idx), one status
/// byte, or up to 20 GET_ID bytes. Returns how many status bytes.
fn check_writes(writes: &[(u64, usize)], num: u16) -> usize {
    let used_end = USED + 6 + 8 * u64::from(num);
    let mut statuses = 0;
    for &(gpa, len) in writes {
        let in_used = gpa >= USED && gpa + len as u64 <= used_end;
        assert!(
            in_used || len <= 20,
            "write {:#x}+{} outside the used ring",
            gpa,
            len
        );
        if len == 1 && !in_used {
            statuses += 1;
        }
    }
    statuses
}
