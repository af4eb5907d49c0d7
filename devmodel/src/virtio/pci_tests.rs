//! Host tests of the virtio-pci front end: the capability walk and BAR
//! set-up as SeaBIOS and Linux's `virtio_pci_modern` do them on the
//! stub's PCI bus, feature negotiation through the common configuration,
//! a request end to end with a fake guest RAM, and hostile accesses.

use super::blk::{blk_feature, req_type, BlkOp, BlkRequest, QUEUE_SIZE_MAX, SEG_MAX};
use super::pci::common_cfg::*;
use super::pci::*;
use super::queue::{DESC_F_NEXT, DESC_F_WRITE};
use super::tests::Ram;
use super::*;
use crate::dma::GuestMemoryAccess;
use crate::pci::{self, PciBus};
use crate::testutil::Rng;
use alloc::vec;
use alloc::vec::Vec;

const DEV: u8 = 3;
const BAR_BASE: u32 = 0xe000_0000;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const HDR: u64 = 0x1_4000;
const STATUS_BYTE: u64 = 0x1_5000;
const DATA: u64 = 0x20_0000;

fn disk(sectors: u64, read_only: bool) -> BlkDiskInfo {
    BlkDiskInfo {
        sectors,
        read_only,
        serial: *b"FERRITE-PCI-DISK\0\0\0\0",
    }
}

/// The bus as SeaBIOS leaves it: PIRQs routed to 10, 10, 11, 11, the
/// virtio function's BAR assigned and memory space enabled.
fn bus() -> PciBus {
    let mut b = PciBus::i440fx();
    assert!(b.add_function(DEV, 0, config_space()));
    for (i, irq) in [10u32, 10, 11, 11].into_iter().enumerate() {
        b.config_write(0, 1, 0, pci::PIIX4_PIRQRC + i as u8, 1, irq);
    }
    b
}

fn cfg_read(b: &PciBus, off: u8, size: u8) -> u32 {
    b.config_read(0, DEV, 0, off, size)
}

#[test]
fn linux_capability_walk_and_bar_assignment() {
    let mut b = bus();
    assert_eq!(cfg_read(&b, pci::VENDOR_ID, 2), 0x1af4);
    assert_eq!(cfg_read(&b, pci::DEVICE_ID, 2), 0x1042);
    assert_eq!(cfg_read(&b, pci::REVISION_ID, 1), 1);
    assert_eq!(cfg_read(&b, 0x2c, 2), 0x1af4);
    assert_eq!(cfg_read(&b, pci::INTERRUPT_PIN, 1), 1);
    // pci_find_capability: status bit 4, then the list from 0x34.
    assert_ne!(cfg_read(&b, pci::STATUS, 2) & 0x10, 0);
    let mut found = Vec::new();
    let mut pos = cfg_read(&b, CAPABILITIES_POINTER, 1) as u8;
    let mut ttl = 48;
    while pos != 0 && ttl > 0 {
        assert!(pos >= 0x40 && pos % 4 == 0, "capability at {pos:#x}");
        let id = cfg_read(&b, pos, 1) as u8;
        let next = cfg_read(&b, pos + 1, 1) as u8;
        if id == CAP_ID_VENDOR {
            // virtio_pci_find_capability reads these by byte and dword.
            let cap_len = cfg_read(&b, pos + 2, 1);
            let kind = cfg_read(&b, pos + 3, 1) as u8;
            let bar = cfg_read(&b, pos + 4, 1);
            let offset = cfg_read(&b, pos + 8, 4);
            let length = cfg_read(&b, pos + 12, 4);
            assert_eq!(bar, BAR_INDEX as u32);
            assert!(u64::from(offset) + u64::from(length) <= u64::from(BAR_SIZE));
            let extra = if kind == CAP_NOTIFY_CFG {
                assert_eq!(cap_len, 20);
                Some(cfg_read(&b, pos + 16, 4))
            } else {
                assert_eq!(cap_len, 16);
                None
            };
            found.push((kind, offset, length, extra));
        }
        pos = next;
        ttl -= 1;
    }
    found.sort();
    assert_eq!(
        found,
        vec![
            (CAP_COMMON_CFG, 0x0000, 0x38, None),
            (CAP_NOTIFY_CFG, 0x3000, 4, Some(NOTIFY_OFF_MULTIPLIER)),
            (CAP_ISR_CFG, 0x1000, 1, None),
            (CAP_DEVICE_CFG, 0x2000, 60, None),
        ]
    );
    // The capabilities are read-only.
    b.config_write(0, DEV, 0, 0x48, 4, 0xdead_beef);
    assert_eq!(cfg_read(&b, 0x48, 4), 0);

    // BAR sizing and assignment, then memory decoding.
    let bar0 = pci::BAR0;
    b.config_write(0, DEV, 0, bar0, 4, 0xffff_ffff);
    assert_eq!(cfg_read(&b, bar0, 4), !(BAR_SIZE - 1));
    b.config_write(0, DEV, 0, bar0, 4, BAR_BASE);
    assert_eq!(b.memory_bar(DEV, 0, BAR_INDEX), None, "memory space off");
    b.config_write(0, DEV, 0, pci::COMMAND, 2, 0x0006);
    assert_eq!(
        b.memory_bar(DEV, 0, BAR_INDEX),
        Some((u64::from(BAR_BASE), u64::from(BAR_SIZE)))
    );
    assert_eq!(b.memory_bar(DEV, 0, 1), None);
    // I/O space cannot be enabled: there is no I/O BAR.
    b.config_write(0, DEV, 0, pci::COMMAND, 2, 0x0007);
    assert_eq!(cfg_read(&b, pci::COMMAND, 2), 0x0006);

    // INTx: device 3 pin A is PIRQC ((3 - 1 + 0) mod 4), routed to IRQ
    // 11; INTx Disable and an unrouted PIRQ silence it.
    assert_eq!(b.intx_irq(DEV, 0), Some(11));
    b.config_write(0, DEV, 0, pci::COMMAND, 2, 0x0406);
    assert_eq!(b.intx_irq(DEV, 0), None);
    b.config_write(0, DEV, 0, pci::COMMAND, 2, 0x0006);
    b.config_write(0, 1, 0, pci::PIIX4_PIRQRC + 2, 1, 0x80);
    assert_eq!(b.intx_irq(DEV, 0), None);
    b.config_write(0, 1, 0, pci::PIIX4_PIRQRC + 2, 1, 5);
    assert_eq!(b.intx_irq(DEV, 0), Some(5));
    assert_eq!(b.intx_irq(DEV + 1, 0), None, "no such function");
}

/// The driver side, through the BAR as Linux's `virtio_pci_modern` and
/// `virtio_blk` use it.
struct Driver {
    dev: VirtioBlkPci,
    mem: Ram,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    fn new(d: BlkDiskInfo) -> Self {
        Driver {
            dev: VirtioBlkPci::new(d),
            mem: Ram::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn rd(&mut self, off: u64, size: u8) -> u64 {
        self.dev.bar_read(off, size)
    }

    fn wr(&mut self, off: u64, size: u8, v: u64) -> Effect {
        self.dev.bar_write(off, size, v)
    }

    fn status(&mut self) -> u8 {
        self.rd(DEVICE_STATUS, 1) as u8
    }

    fn features(&mut self) -> u64 {
        self.wr(DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.rd(DEVICE_FEATURE, 4);
        self.wr(DEVICE_FEATURE_SELECT, 4, 1);
        let hi = self.rd(DEVICE_FEATURE, 4);
        hi << 32 | lo
    }

    fn set_features(&mut self, f: u64) {
        self.wr(DRIVER_FEATURE_SELECT, 4, 0);
        self.wr(DRIVER_FEATURE, 4, f & 0xffff_ffff);
        self.wr(DRIVER_FEATURE_SELECT, 4, 1);
        self.wr(DRIVER_FEATURE, 4, f >> 32);
    }

    /// vp_reset, virtio_dev_probe's negotiation, setup_vq, DRIVER_OK.
    fn init(&mut self, queue_size: u16) {
        assert_eq!(self.wr(DEVICE_STATUS, 1, 0), Effect::Reset);
        assert_eq!(self.status(), 0);
        self.wr(DEVICE_STATUS, 1, 1);
        self.wr(DEVICE_STATUS, 1, 3);
        let offered = self.features();
        self.set_features(offered & (feature::VERSION_1 | blk_feature::SEG_MAX | blk_feature::BLK_SIZE | blk_feature::FLUSH));
        self.wr(DEVICE_STATUS, 1, 0xb);
        assert_eq!(self.status(), 0xb, "FEATURES_OK sticks");
        assert_eq!(self.rd(NUM_QUEUES, 2), 1);
        self.wr(QUEUE_SELECT, 2, 0);
        assert_eq!(self.rd(QUEUE_SIZE, 2), u64::from(QUEUE_SIZE_MAX));
        assert_eq!(self.rd(QUEUE_ENABLE, 2), 0);
        // SeaBIOS lowers the size to what it can handle.
        self.wr(QUEUE_SIZE, 2, u64::from(queue_size));
        assert_eq!(self.rd(QUEUE_SIZE, 2), u64::from(queue_size));
        assert_eq!(self.rd(QUEUE_NOTIFY_OFF, 2), 0);
        assert_eq!(self.rd(QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        // vp_iowrite64_twopart: low then high dword.
        for (reg, gpa) in [(QUEUE_DESC, DESC), (QUEUE_DRIVER, AVAIL), (QUEUE_DEVICE, USED)] {
            self.wr(reg, 4, gpa & 0xffff_ffff);
            self.wr(reg + 4, 4, gpa >> 32);
            assert_eq!(self.rd(reg, 8), gpa);
        }
        self.wr(QUEUE_ENABLE, 2, 1);
        assert_eq!(self.rd(QUEUE_ENABLE, 2), 1);
        self.wr(DEVICE_STATUS, 1, 0xf);
        assert_eq!(self.status(), 0xf);
    }

    fn desc(&mut self, index: u16, gpa: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&gpa.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.put(DESC + 16 * u64::from(index), &d);
    }

    /// A request in descriptors 0.. (header, data buffers, status) made
    /// available; no notification yet.
    fn queue_request(&mut self, kind: u32, sector: u64, data: &[(u64, u32)], queue_size: u16) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.put(HDR, &h);
        self.mem.put(STATUS_BYTE, &[0xff]);
        let dev_writes = if kind == req_type::IN { DESC_F_WRITE } else { 0 };
        self.desc(0, HDR, 16, DESC_F_NEXT, 1);
        for (i, &(gpa, len)) in data.iter().enumerate() {
            let i = i as u16 + 1;
            self.desc(i, gpa, len, DESC_F_NEXT | dev_writes, i + 1);
        }
        self.desc(data.len() as u16 + 1, STATUS_BYTE, 1, DESC_F_WRITE, 0);
        let slot = u64::from(self.avail_idx % queue_size);
        self.mem.put(AVAIL + 4 + 2 * slot, &0u16.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.put(AVAIL + 2, &self.avail_idx.to_le_bytes());
    }

    fn used(&mut self, queue_size: u16) -> Option<(u32, u32)> {
        if self.mem.u16(USED + 2) == self.used_seen {
            return None;
        }
        let e = USED + 4 + 8 * u64::from(self.used_seen % queue_size);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((self.mem.u32(e), self.mem.u32(e + 4)))
    }
}

/// What the stub does with a request: the "disk" is sector-numbered bytes.
fn run_backend(mem: &mut Ram, req: &BlkRequest) {
    assert_eq!(req.op, BlkOp::Read);
    let mut at = req.sector * 512;
    for s in &req.segments {
        let bytes: Vec<u8> = (0..u64::from(s.len)).map(|i| ((at + i) / 512) as u8 ^ (i as u8)).collect();
        mem.write(s.gpa, &bytes).unwrap();
        at += u64::from(s.len);
    }
}

#[test]
fn feature_negotiation_through_the_common_configuration() {
    let mut d = Driver::new(disk(64, true));
    let f = d.features();
    assert_eq!(
        f,
        feature::VERSION_1
            | feature::INDIRECT_DESC
            | blk_feature::SEG_MAX
            | blk_feature::BLK_SIZE
            | blk_feature::FLUSH
            | blk_feature::RO
    );
    // Past 64 feature bits: nothing.
    d.wr(DEVICE_FEATURE_SELECT, 4, 7);
    assert_eq!(d.rd(DEVICE_FEATURE, 4), 0);
    assert_eq!(d.rd(DEVICE_FEATURE_SELECT, 4), 7);
    // A legacy driver (no VERSION_1) and unoffered bits are refused.
    for bad in [blk_feature::FLUSH, feature::VERSION_1 | feature::EVENT_IDX] {
        d.wr(DEVICE_STATUS, 1, 0);
        d.wr(DEVICE_STATUS, 1, 3);
        d.set_features(bad);
        d.wr(DEVICE_STATUS, 1, 0xb);
        assert_eq!(d.status(), 3, "FEATURES_OK refused for {bad:#x}");
    }
    // SeaBIOS's choice: VERSION_1 and BLK_SIZE.
    d.wr(DEVICE_STATUS, 1, 0);
    d.wr(DEVICE_STATUS, 1, 3);
    d.set_features(feature::VERSION_1 | blk_feature::BLK_SIZE);
    d.wr(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(d.rd(DRIVER_FEATURE, 4), blk_feature::BLK_SIZE);
    d.wr(DEVICE_STATUS, 1, 0xb);
    assert_eq!(d.status(), 0xb);
    // Frozen after FEATURES_OK.
    d.set_features(feature::VERSION_1 | blk_feature::FLUSH);
    assert_eq!(d.dev.negotiated_features(), feature::VERSION_1 | blk_feature::BLK_SIZE);
    // The device configuration: capacity (as SeaBIOS reads it, 8 bytes,
    // and Linux, two dwords), seg_max, blk_size.
    assert_eq!(d.rd(DEVICE_OFFSET, 8), 64);
    assert_eq!(d.rd(DEVICE_OFFSET + 4, 4), 0);
    assert_eq!(d.rd(DEVICE_OFFSET + 12, 4), u64::from(SEG_MAX));
    assert_eq!(d.rd(DEVICE_OFFSET + 20, 4), 512);
    assert_eq!(d.rd(CONFIG_GENERATION, 1), 0);
    // Read-only.
    d.wr(DEVICE_OFFSET, 4, 1);
    assert_eq!(d.rd(DEVICE_OFFSET, 8), 64);
}

#[test]
fn a_read_request_end_to_end() {
    let mut d = Driver::new(disk(2048, false));
    d.init(128);
    assert!(!d.dev.irq_level());
    // A multi-segment read of 3 sectors at 100.
    let data = [(DATA, 512u32), (DATA + 0x1000, 1024)];
    d.queue_request(req_type::IN, 100, &data, 128);
    // Linux's vp_notify: a 16-bit write of the queue index.
    assert_eq!(d.wr(NOTIFY_OFFSET, 2, 0), Effect::Notify(0));
    let reqs = d.dev.take_requests(&mut d.mem, 16).unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].sector, 100);
    assert_eq!(reqs[0].segments.len(), 2);
    assert_eq!(reqs[0].segments[1].len, 1024);
    run_backend(&mut d.mem, &reqs[0]);
    d.dev.complete(&mut d.mem, &reqs[0].id, BlkStatus::Ok).unwrap();
    assert_eq!(d.mem.get(STATUS_BYTE, 1), &[0]);
    assert_eq!(d.used(128), Some((0, 1536 + 1)));
    assert_eq!(d.mem.get(DATA + 0x1000, 1)[0], 101);
    // INTx is up until the ISR is read (which clears it).
    assert!(d.dev.irq_level());
    assert_eq!(d.rd(ISR_OFFSET, 4), 0, "the ISR is one byte");
    assert!(d.dev.irq_level());
    assert_eq!(d.rd(ISR_OFFSET, 1), u64::from(interrupt::USED_BUFFER));
    assert!(!d.dev.irq_level());
    assert_eq!(d.rd(ISR_OFFSET, 1), 0);

    // A reset brings queue_size back to the maximum and forgets requests.
    d.queue_request(req_type::IN, 0, &[(DATA, 512)], 128);
    d.wr(NOTIFY_OFFSET, 2, 0);
    let reqs = d.dev.take_requests(&mut d.mem, 16).unwrap();
    assert_eq!(d.dev.in_flight(), 1);
    assert_eq!(d.wr(DEVICE_STATUS, 1, 0), Effect::Reset);
    assert_eq!(d.dev.in_flight(), 0);
    d.dev.complete(&mut d.mem, &reqs[0].id, BlkStatus::Ok).unwrap();
    assert_eq!(d.mem.get(STATUS_BYTE, 1), &[0xff], "stale completion ignored");
    assert_eq!(d.rd(QUEUE_SIZE, 2), u64::from(QUEUE_SIZE_MAX));
    assert_eq!(d.rd(QUEUE_ENABLE, 2), 0);
    assert_eq!(d.rd(QUEUE_DESC, 8), 0);
}

#[test]
fn hostile_register_accesses_are_contained() {
    let mut d = Driver::new(disk(16, false));
    // Notify before anything is set up: nothing to take.
    assert_eq!(d.wr(NOTIFY_OFFSET, 2, 0), Effect::Notify(0));
    assert_eq!(d.dev.take_requests(&mut d.mem, 16), Ok(vec![]));
    d.init(8);
    // Odd sizes, misaligned and straddling accesses read 0, change nothing.
    for (off, size) in [
        (DEVICE_STATUS, 2),
        (DEVICE_STATUS, 4),
        (DEVICE_FEATURE, 2),
        (DEVICE_FEATURE + 1, 4),
        (QUEUE_SIZE, 1),
        (QUEUE_SIZE, 3),
        (QUEUE_DESC + 2, 4),
        (COMMON_LEN - 2, 4),
        (COMMON_LEN, 4),
        (DEVICE_OFFSET + 58, 4),
        (DEVICE_OFFSET + 60, 1),
        (NOTIFY_OFFSET + 2, 4),
        (u64::from(BAR_SIZE) - 1, 2),
        (u64::from(BAR_SIZE), 4),
        (u64::MAX, 1),
        (u64::MAX - 3, 8),
        (DEVICE_FEATURE, 0),
        (DEVICE_FEATURE, 16),
    ] {
        assert_eq!(d.rd(off, size), 0, "read {off:#x}/{size}");
        assert_eq!(d.wr(off, size, u64::MAX), Effect::None, "write {off:#x}/{size}");
    }
    assert_eq!(d.status(), 0xf);
    assert_eq!(d.rd(QUEUE_SIZE, 2), 8);
    assert_eq!(d.rd(QUEUE_DESC, 8), DESC);
    // Queue layout is frozen while enabled.
    d.wr(QUEUE_SIZE, 2, 4);
    d.wr(QUEUE_DESC, 8, 0x9000);
    d.wr(QUEUE_DEVICE + 4, 4, 1);
    assert_eq!(d.rd(QUEUE_SIZE, 2), 8);
    assert_eq!(d.rd(QUEUE_DESC, 8), DESC);
    assert_eq!(d.rd(QUEUE_DEVICE, 8), USED);
    // queue_enable = 0 is not how a queue is stopped.
    d.wr(QUEUE_ENABLE, 2, 0);
    assert_eq!(d.rd(QUEUE_ENABLE, 2), 1);
    // Queues past 0 do not exist: size 0, nothing sticks, notify ignored.
    for q in [1u64, 2, 0xffff] {
        d.wr(QUEUE_SELECT, 2, q);
        assert_eq!(d.rd(QUEUE_SELECT, 2), q);
        assert_eq!(d.rd(QUEUE_SIZE, 2), 0);
        d.wr(QUEUE_SIZE, 2, 4);
        d.wr(QUEUE_DESC, 4, 0x5000);
        d.wr(QUEUE_ENABLE, 2, 1);
        assert_eq!(d.rd(QUEUE_SIZE, 2), 0);
        assert_eq!(d.rd(QUEUE_ENABLE, 2), 0);
        assert_eq!(d.rd(QUEUE_DESC, 8), 0);
        assert_eq!(d.wr(NOTIFY_OFFSET, 2, q), Effect::None);
    }
    d.wr(QUEUE_SELECT, 2, 0);
    assert_eq!(d.rd(QUEUE_DESC, 8), DESC);
    // Notify by a byte write is not a notify; MSI-X vectors cannot be set.
    assert_eq!(d.wr(NOTIFY_OFFSET, 1, 0), Effect::None);
    d.wr(CONFIG_MSIX_VECTOR, 2, 0);
    assert_eq!(d.rd(CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    // The device still works.
    d.queue_request(req_type::IN, 15, &[(DATA, 512)], 8);
    assert_eq!(d.wr(NOTIFY_OFFSET, 4, 0), Effect::Notify(0));
    let reqs = d.dev.take_requests(&mut d.mem, 16).unwrap();
    assert_eq!(reqs.len(), 1);

    // A queue enabled with a size that is not a power of two breaks the
    // device (DEVICE_NEEDS_RESET, config interrupt) until reset.
    d.wr(DEVICE_STATUS, 1, 0);
    d.wr(DEVICE_STATUS, 1, 3);
    d.set_features(feature::VERSION_1);
    d.wr(DEVICE_STATUS, 1, 0xb);
    d.wr(QUEUE_SIZE, 2, 3);
    d.wr(QUEUE_ENABLE, 2, 1);
    assert!(d.dev.take_requests(&mut d.mem, 16).is_err());
    assert_ne!(d.status() & 0x40, 0);
    assert_eq!(d.rd(ISR_OFFSET, 1), u64::from(interrupt::CONFIG_CHANGE));
    d.wr(DEVICE_STATUS, 1, 0);
    assert_eq!(d.status(), 0);
    assert!(d.dev.broken().is_none());
}

#[test]
fn fuzz_bar_accesses_never_panic() {
    let mut rng = Rng::new(0x7e57_0001);
    for round in 0..64 {
        let mut d = Driver::new(disk(1 + rng.below(4096), rng.chance(30)));
        if round % 2 == 0 {
            d.init(1 << rng.below(9));
        }
        for _ in 0..2000 {
            let off = match rng.below(4) {
                0 => rng.below(0x40),
                1 => [ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET][rng.below(3) as usize] + rng.below(0x48),
                2 => rng.next(),
                _ => rng.below(u64::from(BAR_SIZE) + 16),
            };
            let size = [1u8, 2, 4, 8, 3, 0][rng.below(6) as usize];
            if rng.chance(50) {
                d.rd(off, size);
            } else {
                let v = if rng.chance(50) { rng.below(4) } else { rng.next() };
                if d.wr(off, size, v) == Effect::Notify(0) {
                    // Rings in the fake RAM may be garbage: errors are fine.
                    if let Ok(reqs) = d.dev.take_requests(&mut d.mem, 8) {
                        for r in reqs {
                            let _ = d.dev.complete(&mut d.mem, &r.id, BlkStatus::IoErr);
                        }
                    }
                }
            }
            if rng.chance(5) {
                let at = rng.below(0x2_0000);
                let b = [rng.u8(), rng.u8()];
                d.mem.put(at, &b);
            }
        }
    }
}

#[test]
fn virtio_net_pci_has_two_queues_and_its_mac_in_the_device_region() {
    let c = super::pci::net_config_space();
    assert_eq!((c.vendor_id(), c.device_id()), (0x1af4, 0x1041));
    assert_eq!(c.u32_at(0x08) >> 8, super::pci::CLASS_ETHERNET);
    let mac = [0x00, 0x16, 0x3e, 0xaa, 0xbb, 0xcc];
    let mut dev = super::pci::VirtioNetPci::new(mac);
    let got: Vec<u8> = (0..6).map(|i| dev.bar_read(super::pci::DEVICE_OFFSET + i, 1) as u8).collect();
    assert_eq!(got, mac);
    assert_eq!(dev.bar_read(super::pci::COMMON_OFFSET + super::pci::common_cfg::NUM_QUEUES, 2), 2);
    // Queue 1 (transmit) is notified at its own address with its index.
    let notify1 = super::pci::NOTIFY_OFFSET + u64::from(super::pci::NOTIFY_OFF_MULTIPLIER);
    assert_eq!(dev.bar_write(notify1, 2, 1), Effect::Notify(1));
    assert_eq!(dev.bar_write(notify1, 2, 0), Effect::None);
}
