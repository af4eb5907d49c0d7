//! IDE (parallel ATA) disk controller: the two legacy channels of a PIIX4
//! IDE function (8086:7111) with up to two ATA disks each, PIO transfers
//! and SFF-8038i bus-master DMA.
//!
//! | channel | command block | control | IRQ | bus-master offsets |
//! | --- | --- | --- | --- | --- |
//! | 0 (primary) | 0x1F0–0x1F7 | 0x3F6 | 14 | 0–7 |
//! | 1 (secondary) | 0x170–0x177 | 0x376 | 15 | 8–15 |
//!
//! The caller decodes guest port accesses: [`Ide::io_read`] /
//! [`Ide::io_write`] for the legacy ports, [`Ide::bm_read`] /
//! [`Ide::bm_write`] with the offset into the bus-master block (PCI BAR4
//! belongs to whoever owns the PCI config space), and the bulk
//! [`Ide::read_data`] / [`Ide::write_data`] for `rep insw/outsw/insd/outsd`
//! on a data port. After every access it polls [`Ide::irq_level`] for each
//! channel and maps channel 0/1 to IRQ 14/15.
//!
//! Everything completes synchronously inside the access that starts it:
//! a PIO block is read from the backend when its DRQ phase begins and
//! written when the guest has filled it; a DMA transfer runs as soon as a
//! DMA command is pending *and* the bus-master engine is active (start
//! bit written 0→1), in either order, with exactly one call to
//! [`BlockBackend::read_to_guest`] / [`BlockBackend::write_from_guest`];
//! the data never passes through the model. Guest memory
//! ([`GuestMemoryAccess`]) is only *read*, to walk the PRD table.
//!
//! ## Absent drives
//!
//! * A channel without drives floats: every command-block and control
//!   register reads 0xFF, the data port 0xFFFF; writes are ignored. Linux
//!   sees status 0xFF (no device); SeaBIOS's power-up wait detects the
//!   floating bus and its register test fails.
//! * With one drive present and the other one selected, the present drive
//!   answers for it (ATA-6 §9.16.1): status and alternate status read 0x00,
//!   the other registers read the present drive's values, commands are
//!   ignored. Linux's classification then finds "no device" for it, and
//!   IDENTIFY word 93 tells SeaBIOS not to probe a missing slave.
//!
//! ## Errors
//!
//! Out-of-range sectors end a command with ERR and IDNF; writes to a
//! read-only disk end it with ERR and ABRT before any data moves; backend
//! I/O errors with ERR and UNC (reads) or ABRT (writes); unknown commands
//! with ABRT. A DMA transfer whose bus-master direction bit does not match
//! the command, or whose PRD table or buffers are not guest RAM, sets the
//! bus-master error bit. A PRD table shorter than the transfer moves no
//! data and leaves the engine as SFF-8038i describes (active, interrupt and
//! error bits all clear); the drive reports ERR/ABRT without interrupt, so
//! the guest's timeout handling resets the channel.
//!
//! ## Fault injection
//!
//! [`Ide::set_panic_on_command`] makes the model `panic!` on purpose when
//! the guest writes a given command byte. It exists only so a test build of
//! the stub domain can prove that a crashing device model takes down its
//! own guest and nothing else; it is off unless the caller turns it on.
//!
//! Not modelled: ATAPI devices, the PIIX timing registers (PCI config
//! space), tagged/queued commands, security and SMART feature sets, HPA.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use crate::dma::{BlockBackend, BlockError, DmaSegment, GuestMemoryAccess, SECTOR_SIZE};

pub const PRIMARY_CMD_BASE: u16 = 0x1f0;
pub const PRIMARY_CTL: u16 = 0x3f6;
pub const SECONDARY_CMD_BASE: u16 = 0x170;
pub const SECONDARY_CTL: u16 = 0x376;
/// ISA IRQ of channel 0 / channel 1.
pub const CHANNEL_IRQ: [u8; 2] = [14, 15];
/// Size of the bus-master register block (PCI BAR4).
pub const BM_REGS_LEN: u16 = 16;

/// Command-block register offsets.
pub const REG_DATA: u8 = 0;
pub const REG_ERROR_FEATURE: u8 = 1;
pub const REG_NSECTOR: u8 = 2;
pub const REG_LBAL: u8 = 3;
pub const REG_LBAM: u8 = 4;
pub const REG_LBAH: u8 = 5;
pub const REG_DEVICE: u8 = 6;
pub const REG_STATUS_COMMAND: u8 = 7;

pub const ST_BSY: u8 = 0x80;
pub const ST_DRDY: u8 = 0x40;
pub const ST_DF: u8 = 0x20;
pub const ST_DSC: u8 = 0x10;
pub const ST_DRQ: u8 = 0x08;
pub const ST_ERR: u8 = 0x01;

pub const ERR_AMNF: u8 = 0x01;
pub const ERR_ABRT: u8 = 0x04;
pub const ERR_IDNF: u8 = 0x10;
pub const ERR_UNC: u8 = 0x40;

pub const DEV_LBA: u8 = 0x40;
pub const DEV_DEV1: u8 = 0x10;

pub const DC_NIEN: u8 = 0x02;
pub const DC_SRST: u8 = 0x04;
pub const DC_HOB: u8 = 0x80;

/// Bus-master command register: start/stop, and direction (1 = the
/// controller writes memory, i.e. a device read).
pub const BM_CMD_START: u8 = 0x01;
pub const BM_CMD_TO_MEMORY: u8 = 0x08;
pub const BM_ST_ACTIVE: u8 = 0x01;
pub const BM_ST_ERROR: u8 = 0x02;
pub const BM_ST_INTR: u8 = 0x04;
pub const BM_ST_DRV0_DMA: u8 = 0x20;
pub const BM_ST_DRV1_DMA: u8 = 0x40;

/// Largest READ/WRITE MULTIPLE block (IDENTIFY word 47).
pub const MAX_MULTIPLE: u8 = 16;
/// Most PRD entries read for one transfer (one 4 KiB table, as Linux and
/// QEMU use; also enough for the largest transfer in 64 KiB entries).
pub const PRD_MAX_ENTRIES: usize = 512;

const FIRMWARE_REV: &[u8] = b"FRT 0.1";

/// Why [`Ide::attach`] refused a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// Channel is not 0/1 or unit is not 0/1.
    NoSuchSlot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chs {
    cyls: u16,
    heads: u8,
    spt: u8,
}

impl Chs {
    /// The usual translation: 63 sectors, 16 heads, up to 16383 cylinders
    /// (smaller for tiny disks so the geometry never exceeds the disk).
    fn default_for(total: u64) -> Chs {
        let spt = total.clamp(1, 63);
        let heads = (total / spt).clamp(1, 16);
        let cyls = (total / (heads * spt)).clamp(1, 16383);
        Chs {
            cyls: cyls as u16,
            heads: heads as u8,
            spt: spt as u8,
        }
    }

    fn sectors(self) -> u64 {
        u64::from(self.cyls) * u64::from(self.heads) * u64::from(self.spt)
    }

    fn to_lba(self, cyl: u16, head: u8, sector: u8) -> Option<u64> {
        if sector == 0 || sector > self.spt || head >= self.heads || cyl >= self.cyls {
            return None;
        }
        let track = u64::from(cyl) * u64::from(self.heads) + u64::from(head);
        Some(track * u64::from(self.spt) + u64::from(sector) - 1)
    }

    fn chs_of(self, lba: u64) -> (u16, u8, u8) {
        let spt = u64::from(self.spt.max(1));
        let heads = u64::from(self.heads.max(1));
        let sector = (lba % spt) + 1;
        let track = lba / spt;
        let head = track % heads;
        let cyl = (track / heads).min(0xffff);
        (cyl as u16, head as u8, sector as u8)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    Chs,
    Lba28,
    Lba48,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DmaMode {
    None,
    Mw(u8),
    Udma(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PioDir {
    /// IDENTIFY: one 512-byte block from the model, then done.
    Identify,
    In,
    Out,
}

/// A PIO command in its data phase. `lba` is the first sector of the
/// current DRQ block, `cur` its size in sectors, `remaining` the sectors
/// after it.
#[derive(Clone, Copy, Debug)]
struct Pio {
    dir: PioDir,
    lba: u64,
    cur: u32,
    remaining: u32,
    per_block: u32,
    addr: Addr,
}

/// A DMA command waiting for (or running on) the bus-master engine.
#[derive(Clone, Copy, Debug)]
struct PendingDma {
    unit: usize,
    lba: u64,
    count: u32,
    /// Disk write (memory → disk).
    to_disk: bool,
    addr: Addr,
}

struct Drive {
    disk: Box<dyn BlockBackend + Send>,
    model: [u8; 40],
    serial: [u8; 20],
    sectors: u64,
    geometry: Chs,
    current: Chs,
    status: u8,
    error: u8,
    multiple: u8,
    dma_mode: DmaMode,
    write_cache: bool,
    pio: Option<Pio>,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

fn ata_chars<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, c) in out.iter_mut().zip(s.bytes()) {
        *o = if (0x20..0x7f).contains(&c) { c } else { b'?' };
    }
    out
}

/// Store an ATA string: two characters per word, the first in the high
/// byte, padded with spaces.
fn put_string(words: &mut [u16], s: &[u8]) {
    for (i, w) in words.iter_mut().enumerate() {
        let hi = s.get(2 * i).copied().unwrap_or(b' ');
        let lo = s.get(2 * i + 1).copied().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

impl Drive {
    fn new(disk: Box<dyn BlockBackend + Send>, model: &str, serial: &str) -> Drive {
        let sectors = disk.sectors();
        let geometry = Chs::default_for(sectors);
        Drive {
            disk,
            model: ata_chars(model),
            serial: ata_chars(serial),
            sectors,
            geometry,
            current: geometry,
            status: ST_DRDY | ST_DSC,
            error: ERR_AMNF,
            multiple: 0,
            dma_mode: DmaMode::None,
            write_cache: true,
            pio: None,
            buf: vec![0; usize::from(MAX_MULTIPLE) * SECTOR_SIZE],
            pos: 0,
            end: 0,
        }
    }

    /// Power-on / hardware-reset defaults of the SET FEATURES, SET
    /// MULTIPLE and INITIALIZE DEVICE PARAMETERS settings.
    fn power_on_defaults(&mut self) {
        self.current = self.geometry;
        self.multiple = 0;
        self.dma_mode = DmaMode::None;
        self.write_cache = true;
        self.stop_transfer();
        self.status = ST_DRDY | ST_DSC;
        self.error = ERR_AMNF;
    }

    fn stop_transfer(&mut self) {
        self.pio = None;
        self.pos = 0;
        self.end = 0;
    }

    fn identify(&self, unit: usize, other_present: bool) -> [u16; 256] {
        let mut w = [0u16; 256];
        let g = self.geometry;
        let c = self.current;
        let lba28 = self.sectors.min(0x0fff_ffff) as u32;
        let cur_cap = c.sectors().min(self.sectors).min(u64::from(u32::MAX)) as u32;
        w[0] = 0x0040; // ATA device, fixed
        w[1] = g.cyls;
        w[3] = u16::from(g.heads);
        w[6] = u16::from(g.spt);
        put_string(&mut w[10..20], &self.serial);
        put_string(&mut w[23..27], FIRMWARE_REV);
        put_string(&mut w[27..47], &self.model);
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
        w[49] = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11); // DMA, LBA, IORDY
        w[50] = 0x4000;
        w[51] = 0x0200;
        w[52] = 0x0200;
        w[53] = 0x0007; // words 54-58, 64-70 and 88 valid
        w[54] = c.cyls;
        w[55] = u16::from(c.heads);
        w[56] = u16::from(c.spt);
        w[57] = cur_cap as u16;
        w[58] = (cur_cap >> 16) as u16;
        if self.multiple != 0 {
            w[59] = 0x0100 | u16::from(self.multiple);
        }
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[63] = 0x0007;
        if let DmaMode::Mw(n) = self.dma_mode {
            w[63] |= 1 << (8 + n);
        }
        w[64] = 0x0003; // PIO 3 and 4
        w[65] = 120;
        w[66] = 120;
        w[67] = 120;
        w[68] = 120;
        w[80] = 0x007e; // ATA-1 … ATA/ATAPI-6
        w[81] = 0x0022; // ATA/ATAPI-6 published, ANSI INCITS 361-2002
        w[82] = (1 << 14) | (1 << 5) | (1 << 3); // NOP, write cache, PM
        w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10); // flush ext, flush, LBA48
        w[84] = 1 << 14;
        w[85] = (1 << 14) | (1 << 3) | (u16::from(self.write_cache) << 5);
        w[86] = (1 << 13) | (1 << 12) | (1 << 10);
        w[87] = 1 << 14;
        w[88] = 0x003f;
        if let DmaMode::Udma(n) = self.dma_mode {
            w[88] |= 1 << (8 + n);
        }
        // Hardware reset result: jumper-selected, diagnostics passed, 80-wire
        // cable; device 0 also says whether it answers for a missing device 1.
        w[93] = if unit == 0 {
            let mut v = 0x6000 | 0x000b;
            if other_present {
                v |= 0x0030; // PDIAG- and DASP- seen from device 1
            } else {
                v |= 0x0040; // device 0 responds when device 1 is selected
            }
            v
        } else {
            0x6000 | 0x0b00
        };
        for (i, part) in w[100..104].iter_mut().enumerate() {
            *part = (self.sectors >> (16 * i)) as u16;
        }
        w[255] = 0x00a5;
        let mut sum = 0u8;
        for word in &w[..255] {
            let [lo, hi] = word.to_le_bytes();
            sum = sum.wrapping_add(lo).wrapping_add(hi);
        }
        sum = sum.wrapping_add(0xa5);
        w[255] |= u16::from(0u8.wrapping_sub(sum)) << 8;
        w
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Taskfile {
    feature: u8,
    hob_feature: u8,
    nsector: u8,
    hob_nsector: u8,
    lbal: u8,
    hob_lbal: u8,
    lbam: u8,
    hob_lbam: u8,
    lbah: u8,
    hob_lbah: u8,
    device: u8,
}

impl Taskfile {
    fn signature(&mut self) {
        *self = Taskfile {
            nsector: 1,
            lbal: 1,
            ..Taskfile::default()
        };
    }

    fn lba28(&self) -> u64 {
        u64::from(self.device & 0x0f) << 24
            | u64::from(self.lbah) << 16
            | u64::from(self.lbam) << 8
            | u64::from(self.lbal)
    }

    fn lba48(&self) -> u64 {
        u64::from_le_bytes([
            self.lbal,
            self.lbam,
            self.lbah,
            self.hob_lbal,
            self.hob_lbam,
            self.hob_lbah,
            0,
            0,
        ])
    }

    fn count28(&self) -> u32 {
        match self.nsector {
            0 => 256,
            n => u32::from(n),
        }
    }

    fn count48(&self) -> u32 {
        match u16::from_le_bytes([self.nsector, self.hob_nsector]) {
            0 => 65536,
            n => u32::from(n),
        }
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct BusMaster {
    cmd: u8,
    status: u8,
    prd: u32,
}

struct Channel {
    tf: Taskfile,
    ctl: u8,
    selected: usize,
    drives: [Option<Drive>; 2],
    intrq: bool,
    bm: BusMaster,
    dma: Option<PendingDma>,
}

/// What a command asks the selected drive to do once decoded.
enum Op {
    Done,
    Abort,
}

impl Channel {
    fn new() -> Channel {
        let mut tf = Taskfile::default();
        tf.signature();
        Channel {
            tf,
            ctl: 0,
            selected: 0,
            drives: [None, None],
            intrq: false,
            bm: BusMaster::default(),
            dma: None,
        }
    }

    fn hardware_reset(&mut self) {
        self.tf.signature();
        self.ctl = 0;
        self.selected = 0;
        self.intrq = false;
        self.bm = BusMaster::default();
        self.dma = None;
        for d in self.drives.iter_mut().flatten() {
            d.power_on_defaults();
        }
    }

    fn empty(&self) -> bool {
        self.drives.iter().all(Option::is_none)
    }

    fn srst(&self) -> bool {
        self.ctl & DC_SRST != 0
    }

    fn other_present(&self, unit: usize) -> bool {
        self.drives.get(unit ^ 1).is_some_and(Option::is_some)
    }

    /// The drive that drives the bus for register reads: the selected one,
    /// or the other one answering for a missing selected drive.
    fn responder(&self) -> Option<&Drive> {
        self.drives
            .get(self.selected)
            .and_then(Option::as_ref)
            .or_else(|| self.drives.get(self.selected ^ 1).and_then(Option::as_ref))
    }

    fn raise_irq(&mut self) {
        self.intrq = true;
        if self.ctl & DC_NIEN == 0 {
            self.bm.status |= BM_ST_INTR;
        }
    }

    fn irq_level(&self) -> bool {
        self.intrq && self.ctl & DC_NIEN == 0 && !self.empty()
    }

    fn status_value(&self) -> u8 {
        match self.drives.get(self.selected).and_then(Option::as_ref) {
            None => 0,
            Some(_) if self.srst() => ST_BSY,
            Some(d) => d.status,
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        if self.empty() {
            return 0xff;
        }
        let hob = self.ctl & DC_HOB != 0;
        let tf = &self.tf;
        match reg {
            REG_ERROR_FEATURE => self.responder().map_or(0, |d| d.error),
            REG_NSECTOR if hob => tf.hob_nsector,
            REG_NSECTOR => tf.nsector,
            REG_LBAL if hob => tf.hob_lbal,
            REG_LBAL => tf.lbal,
            REG_LBAM if hob => tf.hob_lbam,
            REG_LBAM => tf.lbam,
            REG_LBAH if hob => tf.hob_lbah,
            REG_LBAH => tf.lbah,
            REG_DEVICE => tf.device,
            _ => {
                self.intrq = false;
                self.status_value()
            }
        }
    }

    fn write_reg(&mut self, reg: u8, v: u8, mem: &mut dyn GuestMemoryAccess) {
        if self.empty() {
            return;
        }
        self.ctl &= !DC_HOB;
        let tf = &mut self.tf;
        match reg {
            REG_ERROR_FEATURE => {
                tf.hob_feature = tf.feature;
                tf.feature = v;
            }
            REG_NSECTOR => {
                tf.hob_nsector = tf.nsector;
                tf.nsector = v;
            }
            REG_LBAL => {
                tf.hob_lbal = tf.lbal;
                tf.lbal = v;
            }
            REG_LBAM => {
                tf.hob_lbam = tf.lbam;
                tf.lbam = v;
            }
            REG_LBAH => {
                tf.hob_lbah = tf.lbah;
                tf.lbah = v;
            }
            REG_DEVICE => {
                tf.device = v;
                self.selected = usize::from(v & DEV_DEV1 != 0);
            }
            _ => self.command(v, mem),
        }
    }

    fn write_ctl(&mut self, v: u8) {
        if self.empty() {
            return;
        }
        let old = self.ctl;
        self.ctl = v;
        if old & DC_SRST == 0 && v & DC_SRST != 0 {
            // Reset asserted: everything in flight is abandoned; status
            // reads BSY until SRST is cleared.
            self.intrq = false;
            self.dma = None;
            for d in self.drives.iter_mut().flatten() {
                d.stop_transfer();
            }
        } else if old & DC_SRST != 0 && v & DC_SRST == 0 {
            self.finish_reset();
        }
        if old & DC_NIEN != 0 && v & DC_NIEN == 0 && self.intrq {
            // INTRQ becomes visible: a rising edge for the bus master.
            self.bm.status |= BM_ST_INTR;
        }
    }

    /// End of a soft reset or EXECUTE DEVICE DIAGNOSTIC: ATA signature,
    /// diagnostics passed, device 0 selected.
    fn finish_reset(&mut self) {
        self.tf.signature();
        self.selected = 0;
        self.dma = None;
        for d in self.drives.iter_mut().flatten() {
            d.stop_transfer();
            d.status = ST_DRDY | ST_DSC;
            d.error = ERR_AMNF;
        }
    }

    // ---- data port ----------------------------------------------------

    fn selected_drive(&mut self) -> Option<&mut Drive> {
        self.drives.get_mut(self.selected).and_then(Option::as_mut)
    }

    /// Bytes left in the current PIO block of the selected drive, and its
    /// direction (true = data-in).
    fn pio_window(&mut self) -> Option<(bool, usize)> {
        if self.srst() {
            return None;
        }
        let d = self.selected_drive()?;
        let pio = d.pio?;
        if d.pos >= d.end {
            return None;
        }
        Some((pio.dir != PioDir::Out, d.end - d.pos))
    }

    fn data_read_word(&mut self) -> Option<u16> {
        match self.pio_window() {
            Some((true, _)) => {}
            _ => return None,
        }
        let unit = self.selected;
        let d = self.drives.get_mut(unit)?.as_mut()?;
        let lo = d.buf.get(d.pos).copied().unwrap_or(0xff);
        let hi = d.buf.get(d.pos + 1).copied().unwrap_or(0xff);
        d.pos += 2;
        if d.pos >= d.end {
            self.block_done(unit);
        }
        Some(u16::from_le_bytes([lo, hi]))
    }

    fn data_write_word(&mut self, v: u16) -> bool {
        match self.pio_window() {
            Some((false, _)) => {}
            _ => return false,
        }
        let unit = self.selected;
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return false;
        };
        let [lo, hi] = v.to_le_bytes();
        if let Some(b) = d.buf.get_mut(d.pos) {
            *b = lo;
        }
        if let Some(b) = d.buf.get_mut(d.pos + 1) {
            *b = hi;
        }
        d.pos += 2;
        if d.pos >= d.end {
            self.block_done(unit);
        }
        true
    }

    fn read_data(&mut self, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let rest = &mut out[done..];
            let avail = match self.pio_window() {
                Some((true, n)) => n,
                _ => {
                    rest.fill(0xff);
                    break;
                }
            };
            if rest.len() == 1 {
                // An odd trailing byte: one more word access, low byte kept.
                let w = self.data_read_word().unwrap_or(0xffff);
                rest[0] = w as u8;
                done += 1;
                continue;
            }
            let n = avail.min(rest.len()) & !1;
            let unit = self.selected;
            let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
                break;
            };
            let Some(src) = d.buf.get(d.pos..d.pos + n) else {
                break;
            };
            rest[..n].copy_from_slice(src);
            d.pos += n;
            done += n;
            if d.pos >= d.end {
                self.block_done(unit);
            }
        }
        done.min(out.len())
    }

    fn write_data(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            let avail = match self.pio_window() {
                Some((false, n)) => n,
                _ => break,
            };
            if rest.len() == 1 {
                if self.data_write_word(u16::from(rest[0])) {
                    done += 1;
                }
                break;
            }
            let n = avail.min(rest.len()) & !1;
            let unit = self.selected;
            let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
                break;
            };
            let pos = d.pos;
            let Some(dst) = d.buf.get_mut(pos..pos + n) else {
                break;
            };
            dst.copy_from_slice(&rest[..n]);
            d.pos += n;
            done += n;
            if d.pos >= d.end {
                self.block_done(unit);
            }
        }
        done
    }

    // ---- command completion helpers --------------------------------

    fn complete(&mut self, unit: usize) {
        if let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) {
            d.stop_transfer();
            d.status = ST_DRDY | ST_DSC;
        }
        self.raise_irq();
    }

    fn fail(&mut self, unit: usize, error: u8) {
        if let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) {
            d.stop_transfer();
            d.status = ST_DRDY | ST_DSC | ST_ERR;
            d.error = error;
        }
        self.raise_irq();
    }

    /// Report `lba` in the address registers in the command's form.
    fn set_position(&mut self, unit: usize, lba: u64, addr: Addr) {
        let Some(d) = self.drives.get(unit).and_then(Option::as_ref) else {
            return;
        };
        let tf = &mut self.tf;
        match addr {
            Addr::Chs => {
                let (c, h, s) = d.current.chs_of(lba);
                tf.lbal = s;
                tf.lbam = c as u8;
                tf.lbah = (c >> 8) as u8;
                tf.device = (tf.device & 0xf0) | (h & 0x0f);
            }
            Addr::Lba28 => {
                let b = lba.to_le_bytes();
                tf.lbal = b[0];
                tf.lbam = b[1];
                tf.lbah = b[2];
                tf.device = (tf.device & 0xf0) | (b[3] & 0x0f);
            }
            Addr::Lba48 => {
                let b = lba.to_le_bytes();
                tf.lbal = b[0];
                tf.lbam = b[1];
                tf.lbah = b[2];
                tf.hob_lbal = b[3];
                tf.hob_lbam = b[4];
                tf.hob_lbah = b[5];
            }
        }
    }

    fn backend_error(&mut self, unit: usize, e: BlockError, lba: u64, addr: Addr, to_disk: bool) {
        self.set_position(unit, lba, addr);
        let code = match e {
            BlockError::OutOfRange => ERR_IDNF,
            BlockError::ReadOnly | BlockError::BadAddress => ERR_ABRT,
            BlockError::Io if to_disk => ERR_ABRT,
            BlockError::Io => ERR_UNC,
        };
        self.fail(unit, code);
    }

    // ---- commands -----------------------------------------------------

    /// The address and sector count of a read/write command, checked
    /// against the disk. `Err` carries the error register value.
    fn decode_range(&self, unit: usize, ext: bool) -> Result<(u64, u32, Addr), u8> {
        let d = self
            .drives
            .get(unit)
            .and_then(Option::as_ref)
            .ok_or(ERR_ABRT)?;
        let tf = &self.tf;
        let (lba, count, addr) = if ext {
            (tf.lba48(), tf.count48(), Addr::Lba48)
        } else if tf.device & DEV_LBA != 0 {
            (tf.lba28(), tf.count28(), Addr::Lba28)
        } else {
            let cyl = u16::from_le_bytes([tf.lbam, tf.lbah]);
            let lba = d
                .current
                .to_lba(cyl, tf.device & 0x0f, tf.lbal)
                .ok_or(ERR_IDNF)?;
            (lba, tf.count28(), Addr::Chs)
        };
        match lba.checked_add(u64::from(count)) {
            Some(end) if end <= d.sectors => Ok((lba, count, addr)),
            _ => Err(ERR_IDNF),
        }
    }

    fn command(&mut self, cmd: u8, mem: &mut dyn GuestMemoryAccess) {
        if self.srst() {
            return;
        }
        let unit = self.selected;
        let other = self.other_present(unit);
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            // Commands for a missing device are ignored (the present
            // device does not execute them).
            return;
        };
        // A new command replaces whatever was in progress.
        d.stop_transfer();
        d.error = 0;
        self.dma = None;
        self.intrq = false;

        let op = match cmd {
            0xec => {
                let words = d.identify(unit, other);
                for (chunk, w) in d.buf.chunks_exact_mut(2).zip(words.iter()) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                self.start_pio(unit, PioDir::Identify, 0, 1, 1, Addr::Lba28);
                return;
            }
            // READ / WRITE SECTORS (with and without retries), EXT.
            0x20 | 0x21 => return self.pio_command(unit, PioDir::In, false, false),
            0x24 => return self.pio_command(unit, PioDir::In, true, false),
            0x30 | 0x31 => return self.pio_command(unit, PioDir::Out, false, false),
            0x34 => return self.pio_command(unit, PioDir::Out, true, false),
            // READ / WRITE MULTIPLE, EXT.
            0xc4 => return self.pio_command(unit, PioDir::In, false, true),
            0x29 => return self.pio_command(unit, PioDir::In, true, true),
            0xc5 => return self.pio_command(unit, PioDir::Out, false, true),
            0x39 => return self.pio_command(unit, PioDir::Out, true, true),
            // READ / WRITE DMA, EXT.
            0xc8 | 0xc9 => return self.dma_command(unit, false, false, mem),
            0x25 => return self.dma_command(unit, false, true, mem),
            0xca | 0xcb => return self.dma_command(unit, true, false, mem),
            0x35 => return self.dma_command(unit, true, true, mem),
            // READ VERIFY SECTORS, EXT: range check only.
            0x40..=0x42 => {
                return match self.decode_range(unit, cmd == 0x42) {
                    Ok(_) => self.complete(unit),
                    Err(e) => self.fail(unit, e),
                };
            }
            0xc6 => {
                let n = self.tf.nsector;
                if n == 0 || (n <= MAX_MULTIPLE && n.is_power_of_two()) {
                    d.multiple = n;
                    Op::Done
                } else {
                    Op::Abort
                }
            }
            0xef => self.set_features(unit),
            0xe7 | 0xea => match d.disk.flush() {
                Ok(()) => Op::Done,
                Err(_) => Op::Abort,
            },
            0x91 => {
                let heads = (self.tf.device & 0x0f) + 1;
                let spt = self.tf.nsector;
                if spt == 0 {
                    Op::Abort
                } else {
                    let per_cyl = u64::from(heads) * u64::from(spt);
                    let cyls = (d.sectors / per_cyl).min(16383);
                    d.current = Chs {
                        cyls: cyls as u16,
                        heads,
                        spt,
                    };
                    Op::Done
                }
            }
            // RECALIBRATE, SEEK, power management: nothing to do.
            0x10..=0x1f | 0x70..=0x7f => Op::Done,
            0xe0..=0xe3 | 0xe6 | 0x94..=0x97 | 0x99 => Op::Done,
            // CHECK POWER MODE: active or idle.
            0xe5 | 0x98 => {
                self.tf.nsector = 0xff;
                Op::Done
            }
            0x90 => {
                self.finish_reset();
                self.raise_irq();
                return;
            }
            _ => {
                log::trace!("ide: command {:#04x} aborted", cmd);
                Op::Abort
            }
        };
        match op {
            Op::Done => self.complete(unit),
            Op::Abort => self.fail(unit, ERR_ABRT),
        }
    }

    fn set_features(&mut self, unit: usize) -> Op {
        let (feature, nsector) = (self.tf.feature, self.tf.nsector);
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return Op::Abort;
        };
        match feature {
            0x03 => match nsector {
                0x00 | 0x01 | 0x08..=0x0c => Op::Done,
                0x20..=0x22 => {
                    d.dma_mode = DmaMode::Mw(nsector & 7);
                    Op::Done
                }
                0x40..=0x45 => {
                    d.dma_mode = DmaMode::Udma(nsector & 7);
                    Op::Done
                }
                _ => Op::Abort,
            },
            0x02 => {
                d.write_cache = true;
                Op::Done
            }
            0x82 => {
                d.write_cache = false;
                match d.disk.flush() {
                    Ok(()) => Op::Done,
                    Err(_) => Op::Abort,
                }
            }
            _ => Op::Done,
        }
    }

    fn pio_command(&mut self, unit: usize, dir: PioDir, ext: bool, multiple: bool) {
        let Some(d) = self.drives.get(unit).and_then(Option::as_ref) else {
            return;
        };
        let per_block = if multiple {
            if d.multiple == 0 {
                return self.fail(unit, ERR_ABRT);
            }
            u32::from(d.multiple)
        } else {
            1
        };
        if dir == PioDir::Out && d.disk.read_only() {
            return self.fail(unit, ERR_ABRT);
        }
        match self.decode_range(unit, ext) {
            Ok((lba, count, addr)) => self.start_pio(unit, dir, lba, count, per_block, addr),
            Err(e) => self.fail(unit, e),
        }
    }

    /// Enter the data phase of a PIO command with its first DRQ block.
    fn start_pio(
        &mut self,
        unit: usize,
        dir: PioDir,
        lba: u64,
        count: u32,
        per_block: u32,
        addr: Addr,
    ) {
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return;
        };
        let cur = count.min(per_block).max(1);
        d.pio = Some(Pio {
            dir,
            lba,
            cur,
            remaining: count.saturating_sub(cur),
            per_block,
            addr,
        });
        match dir {
            PioDir::Identify => {
                d.pos = 0;
                d.end = SECTOR_SIZE;
                d.status = ST_DRDY | ST_DSC | ST_DRQ;
                self.raise_irq();
            }
            PioDir::In => self.load_in_block(unit),
            PioDir::Out => {
                // The first block is requested without an interrupt.
                d.pos = 0;
                d.end = cur as usize * SECTOR_SIZE;
                d.status = ST_DRDY | ST_DSC | ST_DRQ;
            }
        }
    }

    /// Read the current data-in block from the backend and offer it.
    fn load_in_block(&mut self, unit: usize) {
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return;
        };
        let Some(pio) = d.pio else {
            return;
        };
        let len = pio.cur as usize * SECTOR_SIZE;
        let res = match d.buf.get_mut(..len) {
            Some(buf) => d.disk.read(pio.lba, buf),
            None => Err(BlockError::Io),
        };
        match res {
            Ok(()) => {
                d.pos = 0;
                d.end = len;
                d.status = ST_DRDY | ST_DSC | ST_DRQ;
                self.raise_irq();
            }
            Err(e) => self.backend_error(unit, e, pio.lba, pio.addr, false),
        }
    }

    /// The guest has moved the whole current block.
    fn block_done(&mut self, unit: usize) {
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return;
        };
        let Some(mut pio) = d.pio else {
            return;
        };
        match pio.dir {
            PioDir::Identify => {
                d.stop_transfer();
                d.status = ST_DRDY | ST_DSC;
            }
            PioDir::In => {
                let last = pio.lba + u64::from(pio.cur) - 1;
                if pio.remaining == 0 {
                    d.stop_transfer();
                    d.status = ST_DRDY | ST_DSC;
                    self.set_position(unit, last, pio.addr);
                    return;
                }
                pio.lba += u64::from(pio.cur);
                pio.cur = pio.remaining.min(pio.per_block);
                pio.remaining -= pio.cur;
                d.pio = Some(pio);
                self.load_in_block(unit);
            }
            PioDir::Out => {
                let len = pio.cur as usize * SECTOR_SIZE;
                let mut res = match d.buf.get(..len) {
                    Some(buf) => d.disk.write(pio.lba, buf),
                    None => Err(BlockError::Io),
                };
                if res.is_ok() && pio.remaining == 0 && !d.write_cache {
                    res = d.disk.flush();
                }
                if let Err(e) = res {
                    return self.backend_error(unit, e, pio.lba, pio.addr, true);
                }
                let last = pio.lba + u64::from(pio.cur) - 1;
                if pio.remaining == 0 {
                    self.set_position(unit, last, pio.addr);
                    return self.complete(unit);
                }
                pio.lba += u64::from(pio.cur);
                pio.cur = pio.remaining.min(pio.per_block);
                pio.remaining -= pio.cur;
                d.pio = Some(pio);
                d.pos = 0;
                d.end = pio.cur as usize * SECTOR_SIZE;
                d.status = ST_DRDY | ST_DSC | ST_DRQ;
                self.raise_irq();
            }
        }
    }

    // ---- DMA ------------------------------------------------------------

    fn dma_command(
        &mut self,
        unit: usize,
        to_disk: bool,
        ext: bool,
        mem: &mut dyn GuestMemoryAccess,
    ) {
        let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) else {
            return;
        };
        if to_disk && d.disk.read_only() {
            return self.fail(unit, ERR_ABRT);
        }
        match self.decode_range(unit, ext) {
            Ok((lba, count, addr)) => {
                if let Some(d) = self.drives.get_mut(unit).and_then(Option::as_mut) {
                    d.status = ST_DRDY | ST_DSC | ST_DRQ;
                }
                self.dma = Some(PendingDma {
                    unit,
                    lba,
                    count,
                    to_disk,
                    addr,
                });
                self.run_dma(mem);
            }
            Err(e) => self.fail(unit, e),
        }
    }

    fn write_bm_cmd(&mut self, v: u8, mem: &mut dyn GuestMemoryAccess) {
        let old = self.bm.cmd;
        self.bm.cmd = v & (BM_CMD_START | BM_CMD_TO_MEMORY);
        if old & BM_CMD_START == 0 && v & BM_CMD_START != 0 {
            self.bm.status |= BM_ST_ACTIVE;
            self.run_dma(mem);
        } else if old & BM_CMD_START != 0 && v & BM_CMD_START == 0 {
            self.bm.status &= !BM_ST_ACTIVE;
        }
    }

    /// Run the pending DMA command if the engine is active.
    fn run_dma(&mut self, mem: &mut dyn GuestMemoryAccess) {
        if self.bm.status & BM_ST_ACTIVE == 0 {
            return;
        }
        let Some(p) = self.dma.take() else {
            return;
        };
        if self.drives.get(p.unit).and_then(Option::as_ref).is_none() {
            return;
        }
        let to_memory = self.bm.cmd & BM_CMD_TO_MEMORY != 0;
        if to_memory == p.to_disk {
            // Direction bit contradicts the command.
            self.bm.status = (self.bm.status & !BM_ST_ACTIVE) | BM_ST_ERROR;
            self.set_position(p.unit, p.lba, p.addr);
            return self.fail(p.unit, ERR_ABRT);
        }
        let need = u64::from(p.count) * SECTOR_SIZE as u64;
        let mut segs: Vec<DmaSegment> = Vec::new();
        let mut total = 0u64;
        let mut exact_end = false;
        let base = u64::from(self.bm.prd & !3);
        for i in 0..PRD_MAX_ENTRIES as u64 {
            let mut e = [0u8; 8];
            if mem.read(base + i * 8, &mut e).is_err() {
                // Master abort reading the table.
                self.bm.status = (self.bm.status & !BM_ST_ACTIVE) | BM_ST_ERROR;
                self.set_position(p.unit, p.lba, p.addr);
                return self.fail(p.unit, ERR_ABRT);
            }
            let gpa = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1;
            let raw = u16::from_le_bytes([e[4], e[5]]) & 0xfffe;
            let len = if raw == 0 {
                0x1_0000u64
            } else {
                u64::from(raw)
            };
            let eot = e[7] & 0x80 != 0;
            let take = len.min(need - total);
            segs.push(DmaSegment {
                gpa: u64::from(gpa),
                len: take as u32,
            });
            total += take;
            if total == need {
                exact_end = eot && take == len;
                break;
            }
            if eot {
                break;
            }
        }
        if total < need {
            // PRD table smaller than the transfer: the engine stops with
            // interrupt, error and active all clear (SFF-8038i); no data
            // moves and the drive gives up without an interrupt.
            self.bm.status &= !BM_ST_ACTIVE;
            self.set_position(p.unit, p.lba, p.addr);
            if let Some(d) = self.drives.get_mut(p.unit).and_then(Option::as_mut) {
                d.stop_transfer();
                d.status = ST_DRDY | ST_DSC | ST_ERR;
                d.error = ERR_ABRT;
            }
            return;
        }
        let Some(d) = self.drives.get_mut(p.unit).and_then(Option::as_mut) else {
            return;
        };
        let res = if p.to_disk {
            d.disk.write_from_guest(p.lba, p.count, &segs)
        } else {
            d.disk.read_to_guest(p.lba, p.count, &segs)
        };
        let res = match res {
            Ok(()) if p.to_disk && !d.write_cache => d.disk.flush(),
            r => r,
        };
        match res {
            Ok(()) => {
                if exact_end {
                    self.bm.status &= !BM_ST_ACTIVE;
                }
                let last = p.lba + u64::from(p.count) - 1;
                self.set_position(p.unit, last, p.addr);
                self.complete(p.unit);
            }
            Err(e) => {
                self.bm.status &= !BM_ST_ACTIVE;
                if e == BlockError::BadAddress {
                    self.bm.status |= BM_ST_ERROR;
                }
                self.backend_error(p.unit, e, p.lba, p.addr, p.to_disk);
            }
        }
    }

    fn bm_read_byte(&self, off: usize) -> u8 {
        match off {
            0 => self.bm.cmd,
            2 => {
                self.bm.status
                    & (BM_ST_ACTIVE | BM_ST_ERROR | BM_ST_INTR | BM_ST_DRV0_DMA | BM_ST_DRV1_DMA)
            }
            4..=7 => self.bm.prd.to_le_bytes()[off - 4],
            _ => 0,
        }
    }

    fn bm_write_byte(&mut self, off: usize, v: u8, mem: &mut dyn GuestMemoryAccess) {
        match off {
            0 => self.write_bm_cmd(v, mem),
            2 => {
                let clear = v & (BM_ST_ERROR | BM_ST_INTR);
                let rw = BM_ST_DRV0_DMA | BM_ST_DRV1_DMA;
                self.bm.status = (self.bm.status & !clear & !rw) | (v & rw);
            }
            4..=7 => {
                let mut b = self.bm.prd.to_le_bytes();
                b[off - 4] = v;
                self.bm.prd = u32::from_le_bytes(b) & !3;
            }
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Port {
    Cmd(usize, u8),
    Ctl(usize),
}

fn decode(port: u16) -> Option<Port> {
    match port {
        0x1f0..=0x1f7 => Some(Port::Cmd(0, (port - PRIMARY_CMD_BASE) as u8)),
        0x170..=0x177 => Some(Port::Cmd(1, (port - SECONDARY_CMD_BASE) as u8)),
        PRIMARY_CTL => Some(Port::Ctl(0)),
        SECONDARY_CTL => Some(Port::Ctl(1)),
        _ => None,
    }
}

/// Access sizes other than 1, 2 and 4 are treated as the next smaller one.
fn norm_size(size: u8) -> u16 {
    match size {
        0 | 1 => 1,
        2 | 3 => 2,
        _ => 4,
    }
}

/// The IDE function: two channels, their drives and the bus-master engine.
pub struct Ide {
    channels: [Channel; 2],
    panic_on_command: Option<u8>,
}

impl Default for Ide {
    fn default() -> Self {
        Self::new()
    }
}

impl Ide {
    /// A controller with no drives, in its power-on state.
    pub fn new() -> Self {
        Ide {
            channels: [Channel::new(), Channel::new()],
            panic_on_command: None,
        }
    }

    /// Connect a disk as `unit` (0 = master, 1 = slave) of `channel`
    /// (0 = primary, 1 = secondary), replacing any disk there. `model`
    /// (40 characters) and `serial` (20) are what IDENTIFY reports;
    /// longer strings are cut, bytes outside printable ASCII become '?'.
    /// The capacity is read from the backend once, here.
    pub fn attach(
        &mut self,
        channel: usize,
        unit: usize,
        disk: Box<dyn BlockBackend + Send>,
        model: &str,
        serial: &str,
    ) -> Result<(), AttachError> {
        let ch = self
            .channels
            .get_mut(channel)
            .ok_or(AttachError::NoSuchSlot)?;
        let slot = ch.drives.get_mut(unit).ok_or(AttachError::NoSuchSlot)?;
        *slot = Some(Drive::new(disk, model, serial));
        ch.dma = None;
        Ok(())
    }

    /// Disconnect a disk and hand its backend back.
    pub fn detach(&mut self, channel: usize, unit: usize) -> Option<Box<dyn BlockBackend + Send>> {
        let ch = self.channels.get_mut(channel)?;
        let drive = ch.drives.get_mut(unit)?.take()?;
        if ch.dma.is_some_and(|p| p.unit == unit) {
            ch.dma = None;
        }
        Some(drive.disk)
    }

    /// Whether a disk is attached at `channel`/`unit`.
    pub fn has_drive(&self, channel: usize, unit: usize) -> bool {
        self.channels
            .get(channel)
            .and_then(|c| c.drives.get(unit))
            .is_some_and(Option::is_some)
    }

    /// Hardware (power-on / PCI) reset: both channels, their drives'
    /// settings and the bus-master registers return to power-on values.
    pub fn reset(&mut self) {
        for ch in &mut self.channels {
            ch.hardware_reset();
        }
    }

    /// Fault injection for isolation tests of the stub domain: while set
    /// to `Some(cmd)`, a guest write of `cmd` to either channel's command
    /// register makes this model **panic deliberately**. Never enable it
    /// outside such a test build.
    pub fn set_panic_on_command(&mut self, cmd: Option<u8>) {
        self.panic_on_command = cmd;
    }

    /// Whether `port` is one of the legacy command-block or control ports.
    pub fn handles(port: u16) -> bool {
        decode(port).is_some()
    }

    /// A guest IN of `size` bytes (1, 2 or 4) at `port`; `None` when the
    /// port is not ours. On a data port a 2-byte access moves one word, a
    /// 4-byte access two, a 1-byte access one word of which the low byte
    /// is returned. Wider accesses to other registers read consecutive
    /// ports (0xFF where nothing answers).
    pub fn io_read(&mut self, port: u16, size: u8) -> Option<u32> {
        let first = decode(port)?;
        let n = norm_size(size);
        if let Port::Cmd(c, REG_DATA) = first {
            let ch = &mut self.channels[c];
            let mut v = 0u32;
            for i in 0..n.div_ceil(2) {
                let w = ch.data_read_word().unwrap_or(0xffff);
                v |= u32::from(w) << (16 * i);
            }
            let mask = if n == 1 {
                0xff
            } else {
                u32::MAX >> (32 - 8 * u32::from(n))
            };
            return Some(v & mask);
        }
        let mut v = 0u32;
        for i in 0..n {
            let b = match decode(port.wrapping_add(i)) {
                Some(Port::Cmd(c, r)) if r != REG_DATA => self.channels[c].read_reg(r),
                Some(Port::Ctl(c)) => {
                    let ch = &self.channels[c];
                    if ch.empty() {
                        0xff
                    } else {
                        ch.status_value()
                    }
                }
                _ => 0xff,
            };
            v |= u32::from(b) << (8 * i);
        }
        Some(v)
    }

    /// A guest OUT of `size` bytes at `port`; returns false when the port
    /// is not ours. `mem` is the served guest's memory: a command write
    /// may start a bus-master transfer, which reads the PRD table.
    pub fn io_write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        mem: &mut dyn GuestMemoryAccess,
    ) -> bool {
        let Some(first) = decode(port) else {
            return false;
        };
        let n = norm_size(size);
        if let Port::Cmd(c, REG_DATA) = first {
            let ch = &mut self.channels[c];
            for i in 0..n.div_ceil(2) {
                ch.data_write_word((value >> (16 * i)) as u16);
            }
            return true;
        }
        for i in 0..n {
            let b = (value >> (8 * i)) as u8;
            match decode(port.wrapping_add(i)) {
                Some(Port::Cmd(c, REG_STATUS_COMMAND)) => {
                    if self.panic_on_command == Some(b) {
                        panic!(
                            "ide: deliberate panic on command {:#04x} (fault injection switch)",
                            b
                        );
                    }
                    self.channels[c].write_reg(REG_STATUS_COMMAND, b, mem);
                }
                Some(Port::Cmd(c, r)) if r != REG_DATA => self.channels[c].write_reg(r, b, mem),
                Some(Port::Ctl(c)) => self.channels[c].write_ctl(b),
                _ => {}
            }
        }
        true
    }

    /// `rep insw`/`insd` on `channel`'s data port: fills all of `buf`,
    /// exactly as `buf.len() / 2` 16-bit reads would (an odd last byte is
    /// the low byte of one more word read). Bytes past the end of the
    /// drive's data read 0xFF. Returns how many bytes came from the drive.
    pub fn read_data(&mut self, channel: usize, buf: &mut [u8]) -> usize {
        match self.channels.get_mut(channel) {
            Some(ch) => ch.read_data(buf),
            None => {
                buf.fill(0xff);
                0
            }
        }
    }

    /// `rep outsw`/`outsd` on `channel`'s data port, as `data.len() / 2`
    /// 16-bit writes (an odd last byte is written as a word with high
    /// byte 0). Returns how many bytes the drive took; the rest were
    /// written while it expected no data and are dropped.
    pub fn write_data(&mut self, channel: usize, data: &[u8]) -> usize {
        match self.channels.get_mut(channel) {
            Some(ch) => ch.write_data(data),
            None => 0,
        }
    }

    /// A guest read of `size` bytes at `offset` into the 16-byte
    /// bus-master block (0–7 channel 0, 8–15 channel 1). Bytes outside the
    /// block read 0xFF.
    pub fn bm_read(&self, offset: u16, size: u8) -> u32 {
        let mut v = 0u32;
        for i in 0..norm_size(size) {
            let off = usize::from(offset.wrapping_add(i));
            let b = match self.channels.get(off / 8) {
                Some(ch) => ch.bm_read_byte(off % 8),
                None => 0xff,
            };
            v |= u32::from(b) << (8 * i);
        }
        v
    }

    /// A guest write into the bus-master block. Setting the start bit
    /// with a DMA command pending (or issuing the command after the
    /// start) runs the transfer at once.
    pub fn bm_write(&mut self, offset: u16, size: u8, value: u32, mem: &mut dyn GuestMemoryAccess) {
        for i in 0..norm_size(size) {
            let off = usize::from(offset.wrapping_add(i));
            let b = (value >> (8 * i)) as u8;
            if let Some(ch) = self.channels.get_mut(off / 8) {
                ch.bm_write_byte(off % 8, b, mem);
            }
        }
    }

    /// Level of `channel`'s interrupt line (channel 0 → IRQ 14, 1 → IRQ
    /// 15): a drive interrupt is pending and nIEN is clear. Reading the
    /// status register (not the alternate status) lowers it.
    pub fn irq_level(&self, channel: usize) -> bool {
        self.channels.get(channel).is_some_and(Channel::irq_level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaError;
    use crate::testutil::Rng;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    // ---- test doubles -------------------------------------------------

    type SharedMem = Arc<Mutex<Vec<u8>>>;

    /// Guest memory as the model sees it: reads only (the model must never
    /// write guest memory itself; DMA data goes through the backend).
    struct Mem {
        ram: SharedMem,
        writes: usize,
    }

    impl GuestMemoryAccess for Mem {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
            let ram = self.ram.lock().unwrap();
            let oor = DmaError::OutOfRange {
                gpa,
                len: buf.len() as u64,
            };
            let start = usize::try_from(gpa).map_err(|_| oor)?;
            let src = ram
                .get(start..start.checked_add(buf.len()).ok_or(oor)?)
                .ok_or(oor)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&mut self, _gpa: u64, _data: &[u8]) -> Result<(), DmaError> {
            self.writes += 1;
            Ok(())
        }
    }

    /// Content of a never-written sector.
    fn pattern(lba: u64, i: usize) -> u8 {
        (lba.wrapping_mul(131) as u8) ^ (i as u8).wrapping_mul(7) ^ ((i >> 8) as u8)
    }

    fn pattern_sector(lba: u64) -> Vec<u8> {
        (0..SECTOR_SIZE).map(|i| pattern(lba, i)).collect()
    }

    #[derive(Default)]
    struct DiskState {
        size: u64,
        written: BTreeMap<u64, Vec<u8>>,
        read_only: bool,
        fail_io: bool,
        flushes: u32,
        dma_calls: u32,
        pio_writes: u32,
    }

    impl DiskState {
        fn sector(&self, lba: u64) -> Vec<u8> {
            self.written
                .get(&lba)
                .cloned()
                .unwrap_or_else(|| pattern_sector(lba))
        }
    }

    /// What the fuzz driver tells the backend so it can check every DMA
    /// request against a reference walk of the PRD table.
    #[derive(Default)]
    struct PrdOracle {
        prd: [u32; 2],
        enabled: bool,
    }

    struct TestDisk {
        st: Arc<Mutex<DiskState>>,
        ram: SharedMem,
        channel: usize,
        oracle: Arc<Mutex<PrdOracle>>,
    }

    impl TestDisk {
        fn check_range(&self, lba: u64, count: u64) -> Result<(), BlockError> {
            let size = self.st.lock().unwrap().size;
            match lba.checked_add(count) {
                Some(end) if end <= size => Ok(()),
                _ => Err(BlockError::OutOfRange),
            }
        }

        /// Every segment must be (a prefix of) the PRD entry at the same
        /// position in the table the guest programmed: the model may not
        /// invent or stretch ranges.
        fn check_segments(&self, count: u32, segs: &[DmaSegment]) {
            let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
            assert_eq!(
                total,
                u64::from(count) * 512,
                "segments must cover the transfer exactly"
            );
            let o = self.oracle.lock().unwrap();
            if !o.enabled {
                return;
            }
            let ram = self.ram.lock().unwrap();
            let base = u64::from(o.prd[self.channel] & !3);
            assert!(segs.len() <= PRD_MAX_ENTRIES);
            for (i, s) in segs.iter().enumerate() {
                let at = (base + 8 * i as u64) as usize;
                let e = &ram[at..at + 8];
                let gpa = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1);
                let raw = u32::from(u16::from_le_bytes([e[4], e[5]]) & 0xfffe);
                let len = if raw == 0 { 0x10000 } else { raw };
                assert_eq!(s.gpa, gpa, "segment {} address", i);
                assert!(s.len <= len && s.len > 0, "segment {} length", i);
                if i + 1 < segs.len() {
                    assert_eq!(s.len, len, "only the last segment may be cut");
                    assert_eq!(e[7] & 0x80, 0, "no segment after the end-of-table entry");
                }
            }
        }

        fn guest_range(&self, s: &DmaSegment) -> Result<core::ops::Range<usize>, BlockError> {
            let len = self.ram.lock().unwrap().len() as u64;
            let end = s
                .gpa
                .checked_add(u64::from(s.len))
                .ok_or(BlockError::BadAddress)?;
            if end > len {
                return Err(BlockError::BadAddress);
            }
            Ok(s.gpa as usize..end as usize)
        }
    }

    impl BlockBackend for TestDisk {
        fn sectors(&self) -> u64 {
            self.st.lock().unwrap().size
        }
        fn read_only(&self) -> bool {
            self.st.lock().unwrap().read_only
        }
        fn read_to_guest(
            &mut self,
            lba: u64,
            count: u32,
            segs: &[DmaSegment],
        ) -> Result<(), BlockError> {
            self.check_segments(count, segs);
            self.check_range(lba, u64::from(count))?;
            self.st.lock().unwrap().dma_calls += 1;
            if self.st.lock().unwrap().fail_io {
                return Err(BlockError::Io);
            }
            let mut data = Vec::new();
            for i in 0..u64::from(count) {
                data.extend(self.st.lock().unwrap().sector(lba + i));
            }
            let ranges = segs
                .iter()
                .map(|s| self.guest_range(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut ram = self.ram.lock().unwrap();
            let mut off = 0;
            for r in ranges {
                let n = r.len();
                ram[r].copy_from_slice(&data[off..off + n]);
                off += n;
            }
            Ok(())
        }
        fn write_from_guest(
            &mut self,
            lba: u64,
            count: u32,
            segs: &[DmaSegment],
        ) -> Result<(), BlockError> {
            self.check_segments(count, segs);
            self.check_range(lba, u64::from(count))?;
            let mut st = self.st.lock().unwrap();
            st.dma_calls += 1;
            if st.read_only {
                return Err(BlockError::ReadOnly);
            }
            if st.fail_io {
                return Err(BlockError::Io);
            }
            let ranges = segs
                .iter()
                .map(|s| self.guest_range(s))
                .collect::<Result<Vec<_>, _>>()?;
            let ram = self.ram.lock().unwrap();
            let mut data = Vec::new();
            for r in ranges {
                data.extend_from_slice(&ram[r]);
            }
            for (i, chunk) in data.chunks(512).enumerate() {
                st.written.insert(lba + i as u64, chunk.to_vec());
            }
            Ok(())
        }
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.check_range(lba, (buf.len() / 512) as u64)?;
            let st = self.st.lock().unwrap();
            if st.fail_io {
                return Err(BlockError::Io);
            }
            for (i, chunk) in buf.chunks_mut(512).enumerate() {
                chunk.copy_from_slice(&st.sector(lba + i as u64));
            }
            Ok(())
        }
        fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
            self.check_range(lba, (buf.len() / 512) as u64)?;
            let mut st = self.st.lock().unwrap();
            if st.read_only {
                return Err(BlockError::ReadOnly);
            }
            if st.fail_io {
                return Err(BlockError::Io);
            }
            st.pio_writes += 1;
            for (i, chunk) in buf.chunks(512).enumerate() {
                st.written.insert(lba + i as u64, chunk.to_vec());
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            self.st.lock().unwrap().flushes += 1;
            Ok(())
        }
    }

    const RAM_SIZE: usize = 1 << 20;
    const P: u16 = PRIMARY_CMD_BASE;
    const PC: u16 = PRIMARY_CTL;

    struct Rig {
        ide: Ide,
        mem: Mem,
        oracle: Arc<Mutex<PrdOracle>>,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                ide: Ide::new(),
                mem: Mem {
                    ram: Arc::new(Mutex::new(vec![0; RAM_SIZE])),
                    writes: 0,
                },
                oracle: Arc::new(Mutex::new(PrdOracle::default())),
            }
        }

        fn disk(
            &mut self,
            channel: usize,
            unit: usize,
            sectors: u64,
            model: &str,
        ) -> Arc<Mutex<DiskState>> {
            let st = Arc::new(Mutex::new(DiskState {
                size: sectors,
                ..DiskState::default()
            }));
            let disk = TestDisk {
                st: st.clone(),
                ram: self.mem.ram.clone(),
                channel,
                oracle: self.oracle.clone(),
            };
            self.ide
                .attach(channel, unit, Box::new(disk), model, "FRT-SERIAL-0001")
                .unwrap();
            st
        }

        fn inb(&mut self, port: u16) -> u8 {
            self.ide.io_read(port, 1).unwrap() as u8
        }
        fn inw(&mut self, port: u16) -> u16 {
            self.ide.io_read(port, 2).unwrap() as u16
        }
        fn outb(&mut self, port: u16, v: u8) {
            assert!(self.ide.io_write(port, 1, u32::from(v), &mut self.mem));
        }
        fn bm_outb(&mut self, off: u16, v: u8) {
            self.ide.bm_write(off, 1, u32::from(v), &mut self.mem);
        }
        fn bm_outl(&mut self, off: u16, v: u32) {
            self.ide.bm_write(off, 4, v, &mut self.mem);
        }
        fn bm_inb(&mut self, off: u16) -> u8 {
            self.ide.bm_read(off, 1) as u8
        }
        fn ram(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
            self.mem.ram.lock().unwrap()
        }

        /// Taskfile for an LBA28 command on the primary channel.
        fn lba28(&mut self, unit: u8, lba: u32, count: u8, cmd: u8) {
            self.outb(P + 6, 0xe0 | (unit << 4) | ((lba >> 24) as u8 & 0xf));
            self.outb(P + 2, count);
            self.outb(P + 3, lba as u8);
            self.outb(P + 4, (lba >> 8) as u8);
            self.outb(P + 5, (lba >> 16) as u8);
            self.outb(P + 7, cmd);
        }

        /// Taskfile for an LBA48 command, as Linux's ata_sff_tf_load
        /// writes it (HOB bytes first).
        fn lba48(&mut self, unit: u8, lba: u64, count: u16, cmd: u8) {
            let b = lba.to_le_bytes();
            let c = count.to_le_bytes();
            self.outb(P + 2, c[1]);
            self.outb(P + 3, b[3]);
            self.outb(P + 4, b[4]);
            self.outb(P + 5, b[5]);
            self.outb(P + 2, c[0]);
            self.outb(P + 3, b[0]);
            self.outb(P + 4, b[1]);
            self.outb(P + 5, b[2]);
            self.outb(P + 6, 0x40 | (unit << 4));
            self.outb(P + 7, cmd);
        }

        /// SeaBIOS `ata_pio_transfer` for a data-in command already
        /// issued: insw per block, pause, check status. Panics where
        /// SeaBIOS would report an error.
        fn seabios_pio_in(&mut self, blocks: usize, block_bytes: usize) -> Vec<u8> {
            let st = self.inb(P + 7);
            assert_eq!(st & (ST_BSY | ST_ERR | ST_DRQ), ST_DRQ, "ata_wait_data");
            let mut out = Vec::new();
            for i in 0..blocks {
                let mut buf = vec![0; block_bytes];
                for w in buf.chunks_mut(2) {
                    w.copy_from_slice(&self.inw(P).to_le_bytes());
                }
                out.extend(buf);
                self.inb(PC); // pause
                let st = self.inb(P + 7);
                assert_eq!(st & ST_BSY, 0);
                let want = if i + 1 == blocks { 0 } else { ST_DRQ };
                assert_eq!(st & (ST_BSY | ST_DF | ST_DRQ | ST_ERR), want, "block {}", i);
            }
            out
        }

        fn identify(&mut self, unit: u8) -> [u16; 256] {
            self.outb(P + 6, 0xa0 | (unit << 4));
            self.outb(P + 7, 0xec);
            let mut raw = [0u8; 512];
            assert_eq!(self.inb(P + 7) & (ST_DRQ | ST_ERR), ST_DRQ);
            assert_eq!(self.ide.read_data(0, &mut raw), 512);
            assert_eq!(self.inb(P + 7), ST_DRDY | ST_DSC);
            let mut w = [0u16; 256];
            for (i, c) in raw.chunks(2).enumerate() {
                w[i] = u16::from_le_bytes([c[0], c[1]]);
            }
            w
        }

        /// Write a PRD table at `at`: (address, byte count) pairs, the last
        /// one marked end-of-table.
        fn prd(&mut self, at: usize, entries: &[(u32, u32)]) {
            let mut ram = self.ram();
            for (i, &(addr, len)) in entries.iter().enumerate() {
                let e = &mut ram[at + 8 * i..at + 8 * i + 8];
                e[..4].copy_from_slice(&addr.to_le_bytes());
                e[4..6].copy_from_slice(&(len as u16).to_le_bytes());
                e[6] = 0;
                e[7] = if i + 1 == entries.len() { 0x80 } else { 0 };
            }
        }

        /// Linux ata_bmdma_setup + exec_command + ata_bmdma_start.
        fn linux_dma(&mut self, prd_at: u32, to_memory: bool, lba: u32, count: u8, cmd: u8) {
            self.bm_outl(4, prd_at);
            let c = self.bm_inb(0) & !(BM_CMD_TO_MEMORY | BM_CMD_START);
            self.bm_outb(0, c | if to_memory { BM_CMD_TO_MEMORY } else { 0 });
            self.bm_outb(2, BM_ST_INTR | BM_ST_ERROR);
            self.lba28(0, lba, count, cmd);
            let c = self.bm_inb(0);
            self.bm_outb(0, c | BM_CMD_START);
        }
    }

    fn model_string(w: &[u16]) -> String {
        let mut s = String::new();
        for &x in w {
            s.push((x >> 8) as u8 as char);
            s.push(x as u8 as char);
        }
        s.trim_end().to_string()
    }

    // ---- probing ------------------------------------------------------

    /// SeaBIOS ata_detect on the primary channel: power-up wait, select,
    /// register test (0x55/0xAA), SRST pulse, IDENTIFY PACKET (aborts),
    /// IDENTIFY, word 93 says device 0 answers for a missing device 1.
    #[test]
    fn seabios_detect_master_identify_and_skip_missing_slave() {
        let mut r = Rig::new();
        let sectors = 64 * 2048; // 64 MiB
        r.disk(0, 0, sectors, "FERRITE HARDDISK");
        let mut found = Vec::new();
        for slave in 0..2u8 {
            // powerup_await_non_bsy
            let st = r.inb(P + 7);
            assert_eq!(st & ST_BSY, 0);
            let newdh = if slave == 1 { 0xb0 } else { 0xa0 };
            r.outb(P + 6, newdh);
            r.outb(P + 6, newdh);
            let dh = r.inb(P + 6);
            r.outb(P + 2, 0x55);
            r.outb(P + 3, 0xaa);
            let sc = r.inb(P + 2);
            let sn = r.inb(P + 3);
            if sc != 0x55 || sn != 0xaa || dh != newdh {
                continue;
            }
            if slave == 0 {
                // ata_reset
                r.outb(PC, 0x08 | DC_NIEN | DC_SRST);
                assert_eq!(r.inb(PC), ST_BSY);
                r.outb(PC, 0x08 | DC_NIEN);
                assert_eq!(r.inb(P + 7) & ST_BSY, 0);
                r.outb(P + 6, 0xa0);
                r.outb(PC, 0x08);
            }
            // init_drive_atapi: IDENTIFY PACKET DEVICE must fail.
            r.outb(PC, 0x08 | DC_NIEN);
            r.outb(P + 6, newdh);
            r.outb(P + 7, 0xa1);
            let st = r.inb(P + 7);
            assert_eq!(st & (ST_ERR | ST_DRQ), ST_ERR);
            assert_eq!(r.inb(P + 1), ERR_ABRT);
            r.outb(PC, 0x08);
            let st = r.inb(P + 7);
            assert_ne!(st, 0);
            assert_ne!(st & ST_DRDY, 0);
            r.outb(PC, 0x08 | DC_NIEN);
            let w = r.identify(slave);
            r.outb(PC, 0x08);
            found.push(w);
            if slave == 0 && w[93] & 0xdf61 == 0x4041 {
                break;
            }
        }
        assert_eq!(found.len(), 1, "only the master is probed");
        let w = found[0];
        assert_eq!(w[0], 0x0040);
        assert_eq!(model_string(&w[27..47]), "FERRITE HARDDISK");
        assert_eq!(model_string(&w[10..20]), "FRT-SERIAL-0001");
        assert_eq!((w[1], w[3], w[6]), (130, 16, 63));
        assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, sectors as u32);
        let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(w[100 + i]) << (16 * i));
        assert_eq!(lba48, sectors);
        assert_ne!(w[83] & (1 << 10), 0, "LBA48");
        assert_ne!(w[49] & (1 << 9), 0, "LBA");
        assert_ne!(w[49] & (1 << 8), 0, "DMA");
        assert_eq!(w[53] & 7, 7);
        assert_eq!(w[88], 0x003f, "UDMA 0-5 supported, none selected yet");
        assert_eq!(w[63], 0x0007);
        assert_eq!(w[80], 0x007e);
        assert_eq!(w[255] & 0xff, 0xa5);
        let sum = w.iter().fold(0u8, |a, x| {
            a.wrapping_add(*x as u8).wrapping_add((x >> 8) as u8)
        });
        assert_eq!(sum, 0, "integrity word");
    }

    /// Linux ata_sff: ata_devchk on both devices, SRST, wait_after_reset,
    /// ata_sff_dev_classify. The missing slave answers devchk through the
    /// master but classifies as "none" (status 0); the master is ATA.
    #[test]
    fn linux_devchk_softreset_classify_master_ata_absent_slave_none() {
        let mut r = Rig::new();
        r.disk(0, 0, 4096, "D0");
        let devchk = |r: &mut Rig, dev: u8| {
            r.outb(P + 6, 0xa0 | (dev << 4));
            r.inb(PC);
            for (a, b) in [(0x55, 0xaa), (0xaa, 0x55), (0x55, 0xaa)] {
                r.outb(P + 2, a);
                r.outb(P + 3, b);
            }
            (r.inb(P + 2), r.inb(P + 3)) == (0x55, 0xaa)
        };
        let dev0 = devchk(&mut r, 0);
        let dev1 = devchk(&mut r, 1);
        assert!(dev0);
        // ata_bus_softreset
        r.outb(P + 6, 0xa0);
        r.outb(PC, 0x08 | DC_SRST);
        r.outb(PC, 0x08);
        // wait_after_reset: device 0 not busy; device 1 registers show 1/1.
        assert_eq!(r.inb(P + 7) & ST_BSY, 0);
        if dev1 {
            r.outb(P + 6, 0xb0);
            assert_eq!((r.inb(P + 2), r.inb(P + 3)), (1, 1));
            let st = r.inb(P + 7);
            assert!(st & ST_BSY == 0 && st != 0xff);
        }
        let classify = |r: &mut Rig, dev: u8| -> &'static str {
            r.outb(P + 6, 0xa0 | (dev << 4));
            let err = r.inb(P + 1);
            let (lbam, lbah) = (r.inb(P + 4), r.inb(P + 5));
            if !(err == 0 || err == 1 || (dev == 0 && err == 0x81)) {
                return "none";
            }
            match (lbam, lbah) {
                (0, 0) if r.inb(P + 7) == 0 => "none",
                (0, 0) => "ata",
                (0x14, 0xeb) => "atapi",
                _ => "unknown",
            }
        };
        assert_eq!(classify(&mut r, 0), "ata");
        assert_eq!(classify(&mut r, 1), "none");
        // Commands to the missing slave are ignored; the line stays low.
        r.outb(P + 6, 0xb0);
        r.outb(P + 7, 0xec);
        assert!(!r.ide.irq_level(0));
        assert_eq!(r.inb(P + 7), 0);
    }

    /// A channel with no drives floats: every register reads 0xFF, which
    /// SeaBIOS's powerup_await_non_bsy and Linux's status checks take as
    /// "nothing here" at once.
    #[test]
    fn empty_channel_floats_ff() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        for port in 0x170..=0x177u16 {
            assert_eq!(r.ide.io_read(port, 1), Some(0xff), "port {:#x}", port);
        }
        assert_eq!(r.ide.io_read(0x376, 1), Some(0xff));
        assert_eq!(r.ide.io_read(0x170, 2), Some(0xffff));
        assert_eq!(r.ide.io_read(0x170, 4), Some(0xffff_ffff));
        r.outb(0x176, 0xa0);
        r.outb(0x172, 0x55);
        assert_eq!(r.inb(0x172), 0xff);
        r.outb(0x177, 0xec);
        assert!(!r.ide.irq_level(1));
        assert_eq!(r.ide.io_read(0x3f7, 1), None, "floppy's port is not ours");
        assert_eq!(r.ide.io_read(0x1f8, 1), None);
    }

    // ---- PIO ------------------------------------------------------------

    /// int 13h read as SeaBIOS does it: nIEN, READ SECTORS (0x20) LBA28
    /// count 3, insw per sector with status checks between blocks.
    #[test]
    fn seabios_pio_read_sectors_lba28() {
        let mut r = Rig::new();
        r.disk(0, 0, 1000, "D0");
        r.outb(PC, 0x08 | DC_NIEN);
        r.lba28(0, 17, 3, 0x20);
        assert!(!r.ide.irq_level(0), "nIEN masks the line");
        let data = r.seabios_pio_in(3, 512);
        for i in 0..3 {
            assert_eq!(
                &data[i * 512..(i + 1) * 512],
                &pattern_sector(17 + i as u64)[..]
            );
        }
        // Position reports the last sector transferred.
        assert_eq!(r.inb(P + 3), 19);
        assert_eq!(r.mem.writes, 0);
    }

    /// READ SECTORS with CHS addressing (cyl 1, head 2, sector 5 on the
    /// reported 16/63 geometry); sector 0 is IDNF.
    #[test]
    fn pio_read_chs_translated_with_reported_geometry() {
        let mut r = Rig::new();
        r.disk(0, 0, 20000, "D0");
        r.outb(P + 6, 0xa2);
        r.outb(P + 2, 1);
        r.outb(P + 3, 5);
        r.outb(P + 4, 1);
        r.outb(P + 5, 0);
        r.outb(P + 7, 0x20);
        let data = r.seabios_pio_in(1, 512);
        assert_eq!(data, pattern_sector((16 + 2) * 63 + 4));
        r.outb(P + 3, 0);
        r.outb(P + 7, 0x20);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
        assert_eq!(r.inb(P + 1), ERR_IDNF);
        // INITIALIZE DEVICE PARAMETERS changes the translation: 4 heads, 17 spt.
        r.outb(P + 6, 0xa3);
        r.outb(P + 2, 17);
        r.outb(P + 7, 0x91);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        r.outb(P + 6, 0xa1);
        r.outb(P + 2, 1);
        r.outb(P + 3, 2);
        r.outb(P + 4, 3);
        r.outb(P + 5, 0);
        r.outb(P + 7, 0x20);
        assert_eq!(
            r.seabios_pio_in(1, 512),
            pattern_sector((3 * 4 + 1) * 17 + 1)
        );
        let w = r.identify(0);
        assert_eq!((w[54], w[55], w[56]), (20000 / 68, 4, 17));
    }

    /// WRITE SECTORS (0x30) of 3 sectors with outsw: DRQ for the first
    /// block without interrupt, an interrupt after each block, data on disk.
    #[test]
    fn pio_write_sectors_interrupt_per_block() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        r.outb(PC, 0x08);
        r.lba28(0, 40, 3, 0x30);
        assert_eq!(
            r.ide.io_read(PC, 1),
            Some(u32::from(ST_DRDY | ST_DSC | ST_DRQ))
        );
        assert!(!r.ide.irq_level(0));
        for i in 0..3u8 {
            let buf = vec![0x10 + i; 512];
            assert_eq!(r.ide.write_data(0, &buf), 512);
            assert!(r.ide.irq_level(0), "interrupt after block {}", i);
            let st = r.inb(P + 7);
            assert!(!r.ide.irq_level(0), "status read lowers INTRQ");
            assert_eq!(
                st,
                if i < 2 {
                    ST_DRDY | ST_DSC | ST_DRQ
                } else {
                    ST_DRDY | ST_DSC
                }
            );
        }
        let st = d.lock().unwrap();
        for i in 0..3u8 {
            assert_eq!(st.sector(40 + u64::from(i)), vec![0x10 + i; 512]);
        }
        assert_eq!(st.sector(43), pattern_sector(43));
        assert_eq!(st.pio_writes, 3);
    }

    /// SET MULTIPLE MODE 4, READ MULTIPLE (0xC4) of 10 sectors: blocks of
    /// 4, 4, 2 sectors, one interrupt each; WRITE MULTIPLE (0xC5) alike.
    #[test]
    fn read_write_multiple_blocks_of_4_4_2() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        r.outb(P + 6, 0xe0);
        r.outb(P + 7, 0xc4);
        assert_eq!(
            r.inb(P + 1),
            ERR_ABRT,
            "READ MULTIPLE before SET MULTIPLE aborts"
        );
        r.outb(P + 2, 3);
        r.outb(P + 7, 0xc6);
        assert_eq!(r.inb(P + 1), ERR_ABRT, "3 is not a power of two");
        r.outb(P + 2, 4);
        r.outb(P + 7, 0xc6);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        assert_eq!(r.identify(0)[59], 0x0104);
        r.lba28(0, 100, 10, 0xc4);
        let mut irqs = 0;
        let mut data = Vec::new();
        for block in [4usize, 4, 2] {
            if r.ide.irq_level(0) {
                irqs += 1;
            }
            assert_eq!(r.inb(P + 7) & ST_DRQ, ST_DRQ);
            let mut buf = vec![0; block * 512];
            assert_eq!(r.ide.read_data(0, &mut buf), block * 512);
            data.extend(buf);
        }
        assert_eq!(irqs, 3);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        for i in 0..10u64 {
            assert_eq!(
                &data[i as usize * 512..][..512],
                &pattern_sector(100 + i)[..]
            );
        }
        r.lba28(0, 200, 10, 0xc5);
        let src: Vec<u8> = (0..10 * 512).map(|i| (i * 3) as u8).collect();
        let mut off = 0;
        for block in [4usize, 4, 2] {
            assert_eq!(r.inb(P + 7) & ST_DRQ, ST_DRQ);
            assert_eq!(
                r.ide.write_data(0, &src[off..off + block * 512]),
                block * 512
            );
            off += block * 512;
        }
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        let st = d.lock().unwrap();
        assert_eq!(st.pio_writes, 3);
        for i in 0..10 {
            assert_eq!(
                st.sector(200 + i as u64),
                src[i * 512..(i + 1) * 512].to_vec()
            );
        }
    }

    /// The bulk data calls equal word accesses: the same sectors read by
    /// 16-bit IN, 32-bit IN and one read_data with an odd length.
    #[test]
    fn bulk_read_data_equals_word_and_dword_accesses() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        r.lba28(0, 5, 2, 0x20);
        let mut words = Vec::new();
        for _ in 0..256 {
            words.extend(r.inw(P).to_le_bytes());
        }
        for _ in 0..128 {
            words.extend(r.ide.io_read(P, 4).unwrap().to_le_bytes());
        }
        assert_eq!(words[..512], pattern_sector(5)[..]);
        assert_eq!(words[512..], pattern_sector(6)[..]);
        r.lba28(0, 5, 2, 0x20);
        let mut bulk = vec![0u8; 1025];
        assert_eq!(r.ide.read_data(0, &mut bulk), 1024);
        assert_eq!(bulk[..1024], words[..]);
        assert_eq!(bulk[1024], 0xff, "past the data the bus floats");
        // Odd split: 3 bytes (two words) then the rest.
        r.lba28(0, 5, 1, 0x20);
        let mut a = [0u8; 3];
        assert_eq!(r.ide.read_data(0, &mut a), 3);
        assert_eq!(a, [words[0], words[1], words[2]]);
        let mut b = vec![0u8; 508];
        r.ide.read_data(0, &mut b);
        assert_eq!(b[..], words[4..512]);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
    }

    /// LBA48 READ SECTORS EXT (0x24) above the 28-bit limit; HOB readback
    /// of the position; IDENTIFY caps words 60-61.
    #[test]
    fn lba48_read_ext_above_2_pow_28_and_hob_readback() {
        let mut r = Rig::new();
        let size = (1u64 << 28) + 1000;
        r.disk(0, 0, size, "BIG");
        let w = r.identify(0);
        assert_eq!((w[60], w[61]), (0xffff, 0x0fff));
        let lba48 = (0..4).fold(0u64, |a, i| a | u64::from(w[100 + i]) << (16 * i));
        assert_eq!(lba48, size);
        let lba = (1u64 << 28) + 5;
        r.lba48(0, lba, 3, 0x24);
        let data = r.seabios_pio_in(3, 512);
        assert_eq!(data[1024..], pattern_sector(lba + 2)[..]);
        let last = lba + 2;
        assert_eq!(
            (r.inb(P + 3), r.inb(P + 4), r.inb(P + 5)),
            (last as u8, (last >> 8) as u8, (last >> 16) as u8)
        );
        r.outb(PC, DC_HOB);
        assert_eq!(r.inb(P + 3), (last >> 24) as u8);
        r.outb(P + 2, 0); // any taskfile write clears HOB
        assert_eq!(r.inb(P + 3), last as u8);
        // LBA28 READ cannot reach it; count 0 means 256 (verify at the end).
        r.lba48(0, size - 65536, 0, 0x42);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC, "count 0 = 65536 fits");
        r.lba48(0, size - 65535, 0, 0x42);
        assert_eq!(r.inb(P + 1), ERR_IDNF, "65536 from here is past the end");
        r.lba48(0, u64::from(u32::MAX) << 16 | 0xffff, 0xffff, 0x24);
        assert_eq!(r.inb(P + 1), ERR_IDNF, "no overflow at 2^48-1");
    }

    #[test]
    fn lba28_count_zero_is_256_sectors() {
        let mut r = Rig::new();
        r.disk(0, 0, 1000, "D0");
        r.lba28(0, 1000 - 256, 0, 0x40);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        r.lba28(0, 1000 - 255, 0, 0x40);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
        assert_eq!(r.inb(P + 1), ERR_IDNF);
        r.lba28(0, 1000 - 256, 0, 0x20);
        let data = r.seabios_pio_in(256, 512);
        assert_eq!(data[255 * 512..], pattern_sector(999)[..]);
    }

    /// Writes to a read-only disk: WRITE SECTORS, WRITE MULTIPLE and WRITE
    /// DMA end with ERR/ABRT before any data phase; the disk is untouched.
    #[test]
    fn read_only_disk_write_aborts_and_data_untouched() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 100, "RO");
        d.lock().unwrap().read_only = true;
        r.outb(P + 2, 2);
        r.outb(P + 7, 0xc6);
        for cmd in [0x30u8, 0x34, 0xc5, 0x39] {
            if cmd == 0x34 || cmd == 0x39 {
                r.lba48(0, 3, 1, cmd);
            } else {
                r.lba28(0, 3, 1, cmd);
            }
            assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR, "cmd {:#x}", cmd);
            assert_eq!(r.inb(P + 1), ERR_ABRT);
            assert_eq!(r.ide.write_data(0, &[0xee; 512]), 0, "no DRQ");
        }
        r.prd(0x1000, &[(0x2000, 512)]);
        r.ram()[0x2000..0x2200].fill(0xee);
        r.linux_dma(0x1000, false, 3, 1, 0xca);
        assert_eq!(r.inb(P + 1), ERR_ABRT);
        let st = d.lock().unwrap();
        assert!(st.written.is_empty());
        assert_eq!((st.pio_writes, st.dma_calls), (0, 0));
    }

    /// Backend errors: a failing read ends with ERR/UNC and the failing
    /// LBA in the registers; a failing write with ERR/ABRT.
    #[test]
    fn backend_io_error_reports_unc_and_abrt() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 100, "D0");
        d.lock().unwrap().fail_io = true;
        r.lba28(0, 9, 2, 0x20);
        assert!(r.ide.irq_level(0));
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
        assert_eq!(r.inb(P + 1), ERR_UNC);
        assert_eq!(r.inb(P + 3), 9);
        r.lba28(0, 9, 1, 0x30);
        r.ide.write_data(0, &[1; 512]);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
        assert_eq!(r.inb(P + 1), ERR_ABRT);
        r.lba28(0, 99, 2, 0x20);
        assert_eq!(r.inb(P + 1), ERR_IDNF, "range error");
    }

    /// FLUSH CACHE (0xE7) and FLUSH CACHE EXT (0xEA) reach the backend;
    /// with the write cache disabled (SET FEATURES 0x82) every write
    /// command flushes too, and IDENTIFY word 85 follows.
    #[test]
    fn flush_cache_counted_and_write_cache_off_flushes_writes() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 100, "D0");
        r.outb(P + 6, 0xe0);
        r.outb(P + 7, 0xe7);
        assert!(r.ide.irq_level(0));
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        r.outb(P + 7, 0xea);
        assert_eq!(d.lock().unwrap().flushes, 2);
        assert_ne!(r.identify(0)[85] & (1 << 5), 0);
        r.outb(P + 1, 0x82);
        r.outb(P + 7, 0xef);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        assert_eq!(r.identify(0)[85] & (1 << 5), 0);
        let before = d.lock().unwrap().flushes;
        r.lba28(0, 1, 2, 0x30);
        r.ide.write_data(0, &[7; 1024]);
        assert_eq!(d.lock().unwrap().flushes, before + 1);
        r.outb(P + 1, 0x02);
        r.outb(P + 7, 0xef);
        assert_ne!(r.identify(0)[85] & (1 << 5), 0);
    }

    /// SET FEATURES transfer mode: UDMA2 (0x42) → word 88 high byte bit 2,
    /// MWDMA2 (0x22) → word 63 bit 10 and UDMA deselected; bad mode aborts.
    #[test]
    fn set_features_xfer_mode_updates_words_63_and_88() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        let setxfer = |r: &mut Rig, mode: u8| {
            r.outb(P + 1, 0x03);
            r.outb(P + 2, mode);
            r.outb(P + 6, 0xa0);
            r.outb(P + 7, 0xef);
            r.inb(P + 7)
        };
        assert_eq!(setxfer(&mut r, 0x0c), ST_DRDY | ST_DSC, "PIO4");
        assert_eq!(setxfer(&mut r, 0x42), ST_DRDY | ST_DSC, "UDMA2");
        let w = r.identify(0);
        assert_eq!((w[63], w[88]), (0x0007, 0x043f));
        assert_eq!(setxfer(&mut r, 0x22), ST_DRDY | ST_DSC, "MWDMA2");
        let w = r.identify(0);
        assert_eq!((w[63], w[88]), (0x0407, 0x003f));
        assert_eq!(
            setxfer(&mut r, 0x46),
            ST_DRDY | ST_DSC | ST_ERR,
            "UDMA6 unsupported"
        );
        assert_eq!(r.inb(P + 1), ERR_ABRT);
        let w = r.identify(0);
        let sum = w.iter().fold(0u8, |a, x| {
            a.wrapping_add(*x as u8).wrapping_add((x >> 8) as u8)
        });
        assert_eq!(sum, 0);
        // Other SET FEATURES subcommands are accepted.
        r.outb(P + 1, 0x66);
        r.outb(P + 7, 0xef);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
    }

    /// SRST mid-transfer: BSY while asserted, then the ATA signature
    /// (count 1, LBA 1/0/0, device 0, error 1) and status 0x50.
    #[test]
    fn soft_reset_mid_transfer_gives_ata_signature() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        r.disk(0, 1, 100, "D1");
        r.outb(P + 6, 0xb0);
        r.lba28(1, 7, 4, 0x20);
        r.inw(P);
        r.outb(PC, DC_SRST);
        assert_eq!(r.inb(PC), ST_BSY);
        r.outb(P + 7, 0xec); // ignored while in reset
        r.outb(PC, 0);
        assert!(!r.ide.irq_level(0));
        assert_eq!(r.inb(P + 6), 0);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        assert_eq!(
            (
                r.inb(P + 1),
                r.inb(P + 2),
                r.inb(P + 3),
                r.inb(P + 4),
                r.inb(P + 5)
            ),
            (1, 1, 1, 0, 0)
        );
        assert_eq!(r.ide.io_read(P, 2), Some(0xffff), "transfer abandoned");
        r.outb(P + 6, 0xb0);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        // A master with a slave reports both in word 93.
        let w0 = r.identify(0);
        assert_eq!(w0[93] & 0xdf61, 0x6021 & 0xdf61);
        assert_ne!(w0[93] & 0xdf61, 0x4041);
        let w1 = r.identify(1);
        assert_eq!(w1[93] & 0x00ff, 0);
        // EXECUTE DEVICE DIAGNOSTIC also posts the signature, with an interrupt.
        r.outb(P + 7, 0x90);
        assert!(r.ide.irq_level(0));
        assert_eq!((r.inb(P + 1), r.inb(P + 4)), (1, 0));
    }

    /// nIEN masks the line; status read lowers it, alternate status doesn't.
    #[test]
    fn nien_masks_line_and_status_read_acknowledges() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        r.outb(PC, DC_NIEN);
        r.outb(P + 6, 0xa0);
        r.outb(P + 7, 0xe7);
        assert!(!r.ide.irq_level(0));
        assert_eq!(r.bm_inb(2) & BM_ST_INTR, 0);
        r.outb(PC, 0);
        assert!(
            r.ide.irq_level(0),
            "pending interrupt shows once nIEN clears"
        );
        assert_ne!(r.bm_inb(2) & BM_ST_INTR, 0);
        r.inb(PC);
        assert!(r.ide.irq_level(0));
        r.inb(P + 7);
        assert!(!r.ide.irq_level(0));
        assert!(!r.ide.irq_level(1));
        assert!(!r.ide.irq_level(7));
    }

    #[test]
    fn unknown_and_packet_commands_abort() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        for cmd in [0x00u8, 0x08, 0xa0, 0xa1, 0xb0, 0xf8, 0x27, 0xff] {
            r.outb(P + 6, 0xa0);
            r.outb(P + 7, cmd);
            assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR, "cmd {:#x}", cmd);
            assert_eq!(r.inb(P + 1), ERR_ABRT);
        }
        for cmd in [0x10u8, 0xe0, 0xe1, 0xe2, 0xe3, 0xe6, 0x70] {
            r.outb(P + 7, cmd);
            assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC, "cmd {:#x}", cmd);
        }
        r.outb(P + 7, 0xe5);
        assert_eq!(r.inb(P + 2), 0xff, "CHECK POWER MODE: active");
    }

    // ---- bus-master DMA ------------------------------------------------

    /// Linux-style READ DMA (0xC8) of 4 sectors through a 4-entry PRD table
    /// with odd sizes, one entry crossing a 4 KiB page; exactly one backend
    /// call; canaries around the buffers intact; completion: BM
    /// interrupt set, active clear, drive 0x50, IRQ 14 up.
    #[test]
    fn dma_read_4_entry_prd_odd_sizes_crossing_page() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        r.ram()[0x10000..0x20000].fill(0xcc);
        let entries = [
            (0x10ff0u32, 0x100u32),
            (0x12002, 0x302),
            (0x13000, 0x1fe),
            (0x14000, 0x200),
        ];
        r.prd(0x8000, &entries);
        r.linux_dma(0x8000, true, 50, 4, 0xc8);
        assert!(r.ide.irq_level(0));
        assert_eq!(
            r.bm_inb(2) & (BM_ST_INTR | BM_ST_ACTIVE | BM_ST_ERROR),
            BM_ST_INTR
        );
        assert_eq!(d.lock().unwrap().dma_calls, 1);
        // Linux's interrupt path: stop the engine, read status, clear.
        let c = r.bm_inb(0);
        r.bm_outb(0, c & !BM_CMD_START);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        r.bm_outb(2, BM_ST_INTR | BM_ST_ERROR);
        assert_eq!(r.bm_inb(2), 0);
        let mut expect = Vec::new();
        for i in 0..4 {
            expect.extend(pattern_sector(50 + i));
        }
        let ram = r.ram();
        let mut off = 0;
        for &(a, l) in &entries {
            assert_eq!(
                ram[a as usize..(a + l) as usize],
                expect[off..off + l as usize]
            );
            off += l as usize;
            assert_eq!(ram[(a + l) as usize], 0xcc, "canary after {:#x}", a);
            assert_eq!(ram[a as usize - 1], 0xcc, "canary before {:#x}", a);
        }
        drop(ram);
        assert_eq!(r.mem.writes, 0);
    }

    /// WRITE DMA EXT (0x35) with the start bit set *before* the command
    /// (the other order), 3-entry table, data lands on disk.
    #[test]
    fn dma_write_ext_start_before_command() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        let src: Vec<u8> = (0..1536).map(|i| (i * 13 + 1) as u8).collect();
        r.ram()[0x30000..0x30000 + 1536].copy_from_slice(&src);
        r.prd(
            0x8000,
            &[(0x30000, 0x0ff2), (0x30ff2, 0x0002), (0x30ff4, 0x1000)],
        );
        r.bm_outl(4, 0x8000);
        r.bm_outb(0, BM_CMD_START);
        assert_eq!(r.bm_inb(2) & BM_ST_ACTIVE, BM_ST_ACTIVE);
        r.lba48(0, 600, 3, 0x35);
        // The last entry is longer than needed: active stays set.
        assert_eq!(
            r.bm_inb(2) & (BM_ST_INTR | BM_ST_ACTIVE | BM_ST_ERROR),
            BM_ST_INTR | BM_ST_ACTIVE
        );
        r.bm_outb(0, 0);
        assert_eq!(r.bm_inb(2) & BM_ST_ACTIVE, 0);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC);
        let st = d.lock().unwrap();
        for i in 0..3 {
            assert_eq!(
                st.sector(600 + i as u64),
                src[i * 512..(i + 1) * 512].to_vec()
            );
        }
    }

    /// PRD table of 1000 bytes for a 1024-byte read: nothing moves, the
    /// engine reads interrupt=0 active=0 error=0, no IRQ, drive ERR.
    #[test]
    fn dma_prd_too_short_moves_nothing() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        r.ram()[0x20000..0x21000].fill(0xcc);
        r.prd(0x8000, &[(0x20000, 600), (0x20400, 400)]);
        r.linux_dma(0x8000, true, 0, 2, 0xc8);
        assert_eq!(r.bm_inb(2) & (BM_ST_INTR | BM_ST_ACTIVE | BM_ST_ERROR), 0);
        assert!(!r.ide.irq_level(0));
        assert_eq!(r.inb(PC) & (ST_BSY | ST_DRQ | ST_ERR), ST_ERR);
        assert_eq!(d.lock().unwrap().dma_calls, 0);
        assert!(r.ram()[0x20000..0x21000].iter().all(|&b| b == 0xcc));
    }

    /// Direction bit says "to memory" but the command writes the disk:
    /// bus-master error, drive ABRT, nothing transferred.
    #[test]
    fn dma_direction_mismatch_is_an_error() {
        let mut r = Rig::new();
        let d = r.disk(0, 0, 1000, "D0");
        r.prd(0x8000, &[(0x20000, 512)]);
        r.linux_dma(0x8000, true, 0, 1, 0xca);
        assert_eq!(
            r.bm_inb(2) & (BM_ST_INTR | BM_ST_ACTIVE | BM_ST_ERROR),
            BM_ST_INTR | BM_ST_ERROR
        );
        assert_eq!(r.inb(P + 1), ERR_ABRT);
        assert_eq!(d.lock().unwrap().dma_calls, 0);
    }

    /// PRD table outside guest RAM, and a PRD entry pointing outside RAM:
    /// both end with the bus-master error bit.
    #[test]
    fn dma_prd_or_buffer_outside_ram_sets_error() {
        let mut r = Rig::new();
        r.disk(0, 0, 1000, "D0");
        r.linux_dma(0xfff0_0000, true, 0, 1, 0xc8);
        assert_ne!(r.bm_inb(2) & BM_ST_ERROR, 0);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
        r.prd(0x8000, &[(0xffff_0000, 512)]);
        r.linux_dma(0x8000, true, 0, 1, 0xc8);
        assert_ne!(r.bm_inb(2) & BM_ST_ERROR, 0);
        assert_eq!(r.inb(P + 7), ST_DRDY | ST_DSC | ST_ERR);
    }

    /// Bus-master register block: command bits 0/3 only, status W1C bits
    /// 1/2, R/W bits 5/6, simplex 0, PRD pointer dword-aligned, secondary
    /// at offset 8.
    #[test]
    fn bm_registers_read_write_semantics() {
        let mut r = Rig::new();
        r.bm_outb(0, 0xff);
        assert_eq!(r.bm_inb(0), 0x09);
        assert_eq!(r.bm_inb(2), BM_ST_ACTIVE);
        r.bm_outb(0, 0);
        r.bm_outb(2, 0xff);
        assert_eq!(r.bm_inb(2), 0x60);
        r.bm_outl(4, 0x1234_5677);
        assert_eq!(r.ide.bm_read(4, 4), 0x1234_5674);
        assert_eq!(r.ide.bm_read(12, 4), 0);
        r.bm_outl(12, 0xabcd);
        assert_eq!(r.ide.bm_read(12, 2), 0xabcc);
        assert_eq!(
            r.ide.bm_read(15, 4),
            0xffff_ff00,
            "past the block reads 0xFF"
        );
    }

    /// Secondary channel DMA uses offsets 8–15 and raises channel 1 only.
    #[test]
    fn secondary_channel_dma_raises_irq15_only() {
        let mut r = Rig::new();
        r.disk(1, 0, 100, "S0");
        r.prd(0x8000, &[(0x20000, 512)]);
        r.bm_outl(12, 0x8000);
        r.bm_outb(8, BM_CMD_TO_MEMORY);
        r.outb(0x176, 0xe0);
        r.outb(0x172, 1);
        r.outb(0x173, 9);
        r.outb(0x174, 0);
        r.outb(0x175, 0);
        r.outb(0x177, 0xc8);
        r.bm_outb(8, BM_CMD_TO_MEMORY | BM_CMD_START);
        assert!(r.ide.irq_level(1));
        assert!(!r.ide.irq_level(0));
        assert_eq!(r.bm_inb(10) & BM_ST_INTR, BM_ST_INTR);
        assert_eq!(r.bm_inb(2), 0);
        assert_eq!(r.ram()[0x20000..0x20200], pattern_sector(9)[..]);
    }

    #[test]
    #[should_panic(expected = "deliberate panic")]
    fn fault_injection_switch_panics_on_chosen_command() {
        let mut r = Rig::new();
        r.disk(0, 0, 100, "D0");
        r.outb(P + 7, 0xe7);
        r.ide.set_panic_on_command(Some(0xec));
        r.outb(P + 7, 0xe7);
        r.outb(P + 7, 0xec);
    }

    #[test]
    fn attach_rejects_bad_slots_and_detach_returns_backend() {
        let mut r = Rig::new();
        r.disk(0, 1, 10, "X");
        assert!(r.ide.has_drive(0, 1));
        let st = Arc::new(Mutex::new(DiskState::default()));
        let mk = || -> Box<dyn BlockBackend + Send> {
            Box::new(TestDisk {
                st: st.clone(),
                ram: r.mem.ram.clone(),
                channel: 0,
                oracle: r.oracle.clone(),
            })
        };
        assert_eq!(
            r.ide.attach(2, 0, mk(), "m", "s"),
            Err(AttachError::NoSuchSlot)
        );
        assert_eq!(
            r.ide.attach(0, 2, mk(), "m", "s"),
            Err(AttachError::NoSuchSlot)
        );
        assert!(r.ide.detach(0, 1).is_some());
        assert!(!r.ide.has_drive(0, 1));
        assert_eq!(r.ide.io_read(P + 7, 1), Some(0xff));
    }

    // ---- fuzz -----------------------------------------------------------

    /// 100k random operations: port accesses of every size, ATA commands
    /// with random taskfiles, bus-master programming with PRD tables that
    /// point anywhere (inside and outside RAM), resets. Checks: no panic;
    /// the model never writes guest memory itself; every DMA request's
    /// segments are exactly the programmed PRD entries (so device reads
    /// only write, and device writes only read, inside PRD ranges); the
    /// read-only disk is never modified.
    #[test]
    fn fuzz_random_guest_never_panics_or_escapes_prd_ranges() {
        let mut r = Rig::new();
        r.oracle.lock().unwrap().enabled = true;
        let ro = r.disk(0, 0, 3000, "RO");
        ro.lock().unwrap().read_only = true;
        let rw = r.disk(0, 1, 5000, "RW");
        let rw2 = r.disk(1, 0, 70000, "RW2");
        let mut rng = Rng::new(0x1de_f022);
        const CMDS: &[u8] = &[
            0xec, 0xa1, 0x20, 0x24, 0x30, 0x34, 0xc4, 0x29, 0xc5, 0x39, 0xc8, 0x25, 0xca, 0x35,
            0x40, 0x42, 0xc6, 0xef, 0xe7, 0xea, 0x91, 0x10, 0xe5, 0x90, 0x00,
        ];
        let ports: [u16; 20] = [
            0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6, 0x170, 0x171, 0x172,
            0x173, 0x174, 0x175, 0x176, 0x177, 0x376, 0x1ef, 0x3f7,
        ];
        for _ in 0..100_000 {
            let prd = [r.ide.bm_read(4, 4), r.ide.bm_read(12, 4)];
            r.oracle.lock().unwrap().prd = prd;
            let size = [1u8, 2, 4, 3, 0][rng.below(5) as usize];
            match rng.below(100) {
                0..=24 => {
                    let port = ports[rng.below(ports.len() as u64) as usize];
                    let v = rng.next() as u32;
                    r.ide.io_write(port, size, v, &mut r.mem);
                }
                25..=44 => {
                    let port = ports[rng.below(ports.len() as u64) as usize];
                    r.ide.io_read(port, size);
                }
                45..=59 => {
                    // A plausible command: small LBA and count, then the command.
                    let base = if rng.chance(50) { 0x1f0 } else { 0x170 };
                    let dev = if rng.chance(70) { 0xe0 } else { rng.u8() }
                        | if rng.chance(50) { 0x10 } else { 0 };
                    r.outb(base + 6, dev);
                    for reg in 1..6u16 {
                        let small = if reg >= 4 { 0 } else { rng.below(8) as u8 };
                        let v = if rng.chance(80) { small } else { rng.u8() };
                        r.outb(base + reg, v);
                        if rng.chance(30) {
                            r.outb(base + reg, if rng.chance(80) { small } else { rng.u8() });
                        }
                    }
                    let cmd = if rng.chance(90) {
                        CMDS[rng.below(CMDS.len() as u64) as usize]
                    } else {
                        rng.u8()
                    };
                    r.outb(base + 7, cmd);
                    if rng.chance(50) {
                        // Follow with a data phase, usually whole sectors.
                        let ch = usize::from(base == 0x170);
                        let len = if rng.chance(80) {
                            512 * rng.below(6)
                        } else {
                            rng.below(3000)
                        } as usize;
                        let mut buf = vec![0u8; len];
                        if rng.chance(50) {
                            r.ide.read_data(ch, &mut buf);
                        } else {
                            rng_fill(&mut rng, &mut buf);
                            r.ide.write_data(ch, &buf);
                        }
                    }
                }
                60..=71 => {
                    let ch = rng.below(2) as usize;
                    let mut buf = vec![0u8; rng.below(4100) as usize];
                    if rng.chance(50) {
                        r.ide.read_data(ch, &mut buf);
                    } else {
                        rng_fill(&mut rng, &mut buf);
                        r.ide.write_data(ch + rng.below(2) as usize * 5, &buf);
                    }
                }
                72..=81 => {
                    // A PRD table somewhere, entries pointing anywhere.
                    let at = (rng.below(RAM_SIZE as u64 / 8) * 8) as usize;
                    let n = 1 + rng.below(8) as usize;
                    let mut ram = r.ram();
                    for i in 0..n {
                        let Some(e) = ram.get_mut(at + 8 * i..at + 8 * i + 8) else {
                            break;
                        };
                        let addr = if rng.chance(85) {
                            rng.below(RAM_SIZE as u64) as u32
                        } else {
                            rng.next() as u32
                        };
                        let len = if rng.chance(50) {
                            rng.below(0x1000) as u16
                        } else {
                            rng.next() as u16
                        };
                        e[..4].copy_from_slice(&addr.to_le_bytes());
                        e[4..6].copy_from_slice(&len.to_le_bytes());
                        e[6] = 0;
                        e[7] = if i + 1 == n || rng.chance(10) {
                            0x80
                        } else {
                            rng.u8() & 0x7f
                        };
                    }
                    drop(ram);
                    let off = if rng.chance(50) { 4 } else { 12 };
                    let v = if rng.chance(90) {
                        at as u32
                    } else {
                        rng.next() as u32
                    };
                    r.ide.bm_write(off, 4, v, &mut r.mem);
                }
                82..=95 => {
                    let off = rng.below(17) as u16;
                    if rng.chance(60) {
                        r.ide.bm_write(off, size, rng.next() as u32, &mut r.mem);
                    } else {
                        r.ide.bm_read(off, size);
                    }
                }
                96..=97 => {
                    let ctl = if rng.chance(50) { 0x170 + 0x206 } else { 0x3f6 };
                    r.outb(ctl, rng.u8() & 0x86);
                }
                98 if rng.chance(10) => r.ide.reset(),
                98 => {
                    // A Linux-like DMA sequence with random perturbations.
                    let ch = rng.below(2) as u16;
                    let base = if ch == 0 { 0x1f0 } else { 0x170 };
                    let at = (rng.below(RAM_SIZE as u64 / 8 - 8) * 8) as usize;
                    let n = 1 + rng.below(6) as usize;
                    {
                        let mut ram = r.ram();
                        for i in 0..n {
                            let e = &mut ram[at + 8 * i..at + 8 * i + 8];
                            let addr = rng.below(RAM_SIZE as u64 + 0x1000) as u32;
                            let len = (1 + rng.below(0x800)) as u16;
                            e[..4].copy_from_slice(&addr.to_le_bytes());
                            e[4..6].copy_from_slice(&len.to_le_bytes());
                            e[6] = 0;
                            e[7] = if i + 1 == n { 0x80 } else { 0 };
                        }
                    }
                    let read = rng.chance(50);
                    r.ide.bm_write(ch * 8 + 4, 4, at as u32, &mut r.mem);
                    let dir = if read ^ rng.chance(5) {
                        BM_CMD_TO_MEMORY
                    } else {
                        0
                    };
                    r.ide.bm_write(ch * 8, 1, u32::from(dir), &mut r.mem);
                    r.ide.bm_write(ch * 8 + 2, 1, 6, &mut r.mem);
                    r.oracle.lock().unwrap().prd = [r.ide.bm_read(4, 4), r.ide.bm_read(12, 4)];
                    let start_first = rng.chance(30);
                    if start_first {
                        r.ide
                            .bm_write(ch * 8, 1, u32::from(dir | BM_CMD_START), &mut r.mem);
                    }
                    r.outb(base + 6, 0xe0 | if rng.chance(50) { 0x10 } else { 0 });
                    r.outb(base + 2, 1 + rng.below(4) as u8);
                    r.outb(base + 3, rng.u8());
                    r.outb(base + 4, 0);
                    r.outb(base + 5, 0);
                    r.outb(base + 7, if read { 0xc8 } else { 0xca });
                    if !start_first {
                        r.ide
                            .bm_write(ch * 8, 1, u32::from(dir | BM_CMD_START), &mut r.mem);
                    }
                    r.ide.bm_write(ch * 8, 1, u32::from(dir), &mut r.mem);
                    r.inb(base + 7);
                }
                _ => {
                    let ch = rng.below(3) as usize;
                    r.ide.irq_level(ch);
                }
            }
        }
        assert_eq!(
            r.mem.writes, 0,
            "the model never writes guest memory itself"
        );
        let ro = ro.lock().unwrap();
        assert!(ro.written.is_empty());
        assert_eq!(ro.pio_writes, 0);
        // The fuzz did reach the interesting paths.
        let (a, b) = (rw.lock().unwrap(), rw2.lock().unwrap());
        assert!(
            a.dma_calls + b.dma_calls > 100,
            "dma calls {} {}",
            a.dma_calls,
            b.dma_calls
        );
        assert!(
            a.pio_writes + b.pio_writes > 50,
            "pio writes {} {}",
            a.pio_writes,
            b.pio_writes
        );
    }

    fn rng_fill(rng: &mut Rng, buf: &mut [u8]) {
        for b in buf {
            *b = rng.u8();
        }
    }
}
