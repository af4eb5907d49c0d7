//! The guest's emulated PC devices and the port/MMIO dispatch.
//!
//! | ports | device |
//! | --- | --- |
//! | 0x3F8–0x3FF | 16550 UART (COM1, IRQ 4): output → GUEST_CONSOLE_WRITE, input ← CONSOLE_INPUT |
//! | 0x402 | debug console: firmware log lines → CONSOLE_WRITE ("bios: ..."); reads 0xE9 |
//! | 0xCF8, 0xCFC–0xCFF | PCI configuration (i440FX + PIIX4 ISA/IDE) |
//! | 0xCF9 (byte) | PIIX reset control register: RST_CPU → GUEST_POWER Reset |
//! | 0x1F0–0x1F7, 0x3F6 / 0x170–0x177, 0x376 | IDE channels (IRQ 14/15), when decoded per PCI |
//! | PCI BAR4 of 00:01.1 (16 ports) | IDE bus-master DMA |
//! | 0x510, 0x511, 0x514–0x51B | fw_cfg (with DMA; boot files via DATA_READ) |
//! | 0x60, 0x64 | i8042 (IRQ 1/12); reset → GUEST_POWER Reset |
//! | 0x92 | system control port A; fast reset → GUEST_POWER Reset |
//!
//! | memory | device |
//! | --- | --- |
//! | PCI BAR0 of 00:03.0, 00:04.0, ... (16 KiB each) | virtio-blk over virtio-pci, one function per `specification=virtio` disk; INTx pin A through the PIIX4 PIRQ routes |
//! | PCI BAR0 of the functions after the disks (and BAR1, I/O, of an e1000) | the NICs (`nic`): virtio-net over virtio-pci or e1000, INTx pin A |
//!
//! Unclaimed port reads return all ones, unclaimed writes are ignored, and
//! so are MMIO accesses outside a decoded BAR: reads return all ones.
//! Interrupt lines (ISA IRQs 0-15; a PCI INTx line is ORed onto the IRQ
//! its PIRQ is routed to) are compared with what the hypervisor was last
//! told after every access, and changes sent with SET_IRQ.
//!
//! Not modelled here: A20 gating (port 0x92 bit 1 and the i8042 output
//! port are stored, but guest memory is always addressed with A20 on), PS/2
//! keyboard input (no input source yet).

use crate::block::StubBlock;
use crate::guest_memory::{GuestRam, GuestWindow};
use crate::{hypercall, memory};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use ferrite_abi::{PowerAction, StubConfig, StubDiskModel, GUEST_WINDOW};
use ferrite_devmodel::dma::{BlockBackend, DmaError, GuestMemoryAccess, SECTOR_SIZE};
use ferrite_devmodel::fw_cfg::{self, ExternalBlob, ExternalData, ExternalError, FwCfg, FwCfgBuilder, LinuxBootConfig};
use ferrite_devmodel::i8042::I8042;
use ferrite_devmodel::ide::{self, Ide};
use ferrite_devmodel::pci::PciBus;
use ferrite_devmodel::port92::Port92;
use ferrite_devmodel::uart16550::{self, Uart16550};
use ferrite_devmodel::virtio::blk::{BlkDiskInfo, BlkOp, BlkRequest, BlkStatus};
use ferrite_devmodel::virtio::{self, Effect, VirtioBlkPci};
use ferrite_loader::acpi_blob::HVM_PLATFORM;
use log::{info, warn};

const COM1: u16 = 0x3F8;
const COM1_IRQ: u8 = 4;
const DEBUGCON: u16 = 0x402;
/// What a debugcon read returns (QEMU's readback value).
const DEBUGCON_READBACK: u32 = 0xE9;
/// Longest firmware log line kept; longer ones are sent in pieces.
const DEBUGCON_LINE_MAX: usize = 200;
/// PIIX reset control register.
const RCR: u16 = 0xCF9;
const RCR_RST_CPU: u8 = 1 << 2;
const I8042_IRQ_KBD: u8 = 1;
const I8042_IRQ_AUX: u8 = 12;

/// ISA IRQs the stub may drive (SET_IRQ takes 0-23; PCI INTx reaches
/// the guest through a PIRQ route, which names an ISA IRQ).
const ISA_IRQS: usize = 16;
/// The PCI device number of the first virtio-blk function.
const FIRST_VIRTIO_SLOT: u8 = 3;
/// Most virtio-blk functions (the hypervisor allows 8).
const MAX_VIRTIO_DISKS: usize = 16;
/// Requests taken from a virtqueue per round (the guest waits for its
/// notify write until the queue is empty).
const VIRTIO_BATCH: usize = 32;
/// Protocol errors logged per virtio disk (a guest can repeat them).
const VIRTIO_ERRORS_LOGGED: u32 = 8;

/// A `specification=virtio` disk: a virtio-blk PCI function and its host
/// disk.
struct VirtioDisk {
    /// 00:slot.0 on the PCI bus.
    slot: u8,
    handle: u32,
    blk: VirtioBlkPci,
    backend: StubBlock,
    errors: u32,
}

pub struct Devices {
    ram: GuestRam,
    uart: Uart16550,
    debugcon: Vec<u8>,
    pci: PciBus,
    rcr: u8,
    ide: Ide,
    fw_cfg: Option<FwCfg>,
    boot_data: BootData,
    i8042: I8042,
    port92: Port92,
    virtio: Vec<VirtioDisk>,
    nics: Vec<crate::nic::Nic>,
    /// Levels last sent with SET_IRQ, one bit per ISA IRQ.
    lines: u16,
    /// The hypervisor may hold more console input for the guest.
    input_waiting: bool,
    /// Fault injection (tests only): the access a chosen ATA command makes.
    wild_access: Option<WildAccess>,
}

/// Fault injection for the isolation tests: when the guest writes `command`
/// to an IDE command register, the stub writes to `address`, which lies
/// outside the memory the hypervisor gives it. The hypervisor must fault
/// that write and destroy the stub with its guest, never serve it.
#[derive(Clone, Copy, Debug)]
struct WildAccess {
    command: u8,
    address: u64,
}

impl Devices {
    pub fn new(config: &StubConfig) -> Self {
        let ram = GuestRam::from_config(config);
        let mut ide = Ide::new();
        let mut pci = PciBus::i440fx();
        let mut virtio = Vec::new();
        for disk in &config.disks {
            if disk.model == StubDiskModel::VirtioPci {
                if let Some(v) = attach_virtio(&mut pci, virtio.len(), disk, ram) {
                    virtio.push(v);
                }
                continue;
            }
            let Some((channel, unit)) = ide_slot(&disk.vdev) else {
                warn!("disk {} ({}): vdev {:?} is not hda..hdd; not attached", disk.handle, disk.name, disk.vdev);
                continue;
            };
            let serial = format!("FRT{:05}", disk.handle);
            let backend = Box::new(StubBlock::new(disk, ram));
            match ide.attach(channel, unit, backend, "Ferrite HARDDISK", &serial) {
                Ok(()) => info!(
                    "disk {} ({}): IDE {}, {} sectors{}",
                    disk.handle,
                    disk.name,
                    disk.vdev,
                    disk.sectors,
                    if disk.read_only { ", read-only" } else { "" }
                ),
                Err(e) => warn!("disk {} ({}): cannot attach as {}: {:?}", disk.handle, disk.name, disk.vdev, e),
            }
        }
        let mut nics = Vec::new();
        for (i, nic) in config.nics.iter().enumerate().take(ferrite_abi::MAX_NICS) {
            let slot = FIRST_VIRTIO_SLOT as usize + virtio.len() + i;
            if let Some(n) = u8::try_from(slot).ok().filter(|&s| s < 32).and_then(|s| crate::nic::attach(&mut pci, s, nic)) {
                nics.push(n);
            }
        }
        let mut wild_access = None;
        match (config.fault_inject_ata_command, config.fault_inject_wild_access) {
            (Some(cmd), false) => {
                warn!("fault injection: the IDE model panics on ATA command {:#04x}", cmd);
                ide.set_panic_on_command(Some(cmd));
            }
            (Some(cmd), true) => {
                // Just past the guest's RAM below 4 GiB in the window: the
                // stub's own page tables map it, its nested page tables
                // must not.
                let target = WildAccess { command: cmd, address: GUEST_WINDOW + ram.below_4g() };
                warn!(
                    "fault injection: ATA command {:#04x} makes this stub write to {:#x}, outside its memory",
                    cmd, target.address
                );
                wild_access = Some(target);
            }
            (None, true) => warn!("fault injection: a wild access is asked for but no ATA command triggers it"),
            (None, false) => {}
        }
        let mut boot_data = BootData { ram };
        let fw_cfg = match build_fw_cfg(config, &mut boot_data) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!("fw_cfg: {}; the guest's firmware gets no configuration", e);
                None
            }
        };
        Devices {
            ram,
            uart: Uart16550::new(),
            debugcon: Vec::new(),
            pci,
            rcr: 0,
            ide,
            fw_cfg,
            boot_data,
            i8042: I8042::new(),
            port92: Port92::new(),
            virtio,
            nics,
            lines: 0,
            input_waiting: false,
            wild_access,
        }
    }

    pub fn guest_ram(&self) -> GuestRam {
        self.ram
    }

    fn window(&self) -> GuestWindow {
        GuestWindow { ram: self.ram }
    }

    /// The IDE channel whose legacy ports include `port`, if it decodes.
    fn ide_channel(&self, port: u16) -> Option<usize> {
        let channel = match port {
            0x1F0..=0x1F7 | ide::PRIMARY_CTL => 0,
            0x170..=0x177 | ide::SECONDARY_CTL => 1,
            _ => return None,
        };
        self.pci.ide_channel_enabled(channel as u8).then_some(channel)
    }

    /// Offset into the IDE bus-master block, if `port` is in it.
    fn ide_bm_offset(&self, port: u16) -> Option<u16> {
        let base = self.pci.ide_bmdma_base()?;
        let off = port.checked_sub(base)?;
        (off < ide::BM_REGS_LEN).then_some(off)
    }

    pub fn pio_read(&mut self, port: u16, size: u8) -> u32 {
        let v = self.pio_read_inner(port, size);
        self.sync_lines();
        v
    }

    fn pio_read_inner(&mut self, port: u16, size: u8) -> u32 {
        match port {
            COM1..=0x3FF => {
                let offset = (port - COM1) as u8;
                if offset == uart16550::RBR_THR_DLL || offset == uart16550::LSR {
                    // A polling guest looks for input here.
                    if self.uart.rx_len() == 0 {
                        self.pull_input();
                    }
                }
                u32::from(self.uart.read(offset))
            }
            DEBUGCON => DEBUGCON_READBACK,
            RCR if size == 1 => u32::from(self.rcr),
            0xCF8..=0xCFF => self.pci.io_read(port, size).unwrap_or(u32::MAX),
            0x60 | 0x64 => {
                let v = self.i8042.io_read(port).map_or(0xFF, u32::from);
                self.i8042_after_access();
                v
            }
            0x92 => self.port92.io_read(port).map_or(0xFF, u32::from),
            0x510..=0x51B => match &mut self.fw_cfg {
                Some(f) => f.io_read(port, size, &mut self.boot_data).unwrap_or(u32::MAX),
                None => u32::MAX,
            },
            _ => {
                if self.ide_channel(port).is_some() {
                    self.ide.io_read(port, size).unwrap_or(u32::MAX)
                } else if let Some(off) = self.ide_bm_offset(port) {
                    self.ide.bm_read(off, size)
                } else if let Some((i, off)) = self.nic_port(port) {
                    self.nic(i).io_read(off, size)
                } else {
                    u32::MAX
                }
            }
        }
    }

    pub fn pio_write(&mut self, port: u16, size: u8, value: u32) {
        self.pio_write_inner(port, size, value);
        self.sync_lines();
    }

    fn pio_write_inner(&mut self, port: u16, size: u8, value: u32) {
        let mut mem = self.window();
        match port {
            COM1..=0x3FF => self.uart.write((port - COM1) as u8, value as u8),
            DEBUGCON => self.debugcon_byte(value as u8),
            RCR if size == 1 => {
                self.rcr = value as u8 & 0x0E;
                if value as u8 & RCR_RST_CPU != 0 {
                    self.reset_request("reset control register (0xCF9)");
                }
            }
            0xCF8..=0xCFF => {
                self.pci.io_write(port, size, value);
                // A BAR may have moved.
                self.publish_buffered_ports();
            }
            0x60 | 0x64 => {
                self.i8042.io_write(port, value as u8);
                if self.i8042.take_reset_request() {
                    self.reset_request("i8042");
                }
                self.i8042_after_access();
            }
            0x92 => {
                self.port92.io_write(port, value as u8);
                if self.port92.take_reset_request() {
                    self.reset_request("port 0x92");
                }
            }
            0x510..=0x51B => {
                if let Some(f) = &mut self.fw_cfg {
                    f.io_write(port, size, value, &mut mem, &mut self.boot_data);
                }
            }
            _ => {
                if self.ide_channel(port).is_some() {
                    self.fault_injection(port, size, value);
                    self.ide.io_write(port, size, value, &mut mem);
                } else if let Some(off) = self.ide_bm_offset(port) {
                    self.ide.bm_write(off, size, value, &mut mem);
                } else if let Some((i, off)) = self.nic_port(port) {
                    self.nic(i).io_write(mem, off, size, value);
                }
            }
        }
    }

    /// The wild-access fault injection: fires when a byte of this IDE
    /// register write is the chosen command written to a command register.
    fn fault_injection(&self, port: u16, size: u8, value: u32) {
        let Some(wild) = self.wild_access else {
            return;
        };
        let command_regs = [ide::PRIMARY_CMD_BASE, ide::SECONDARY_CMD_BASE].map(|b| b + u16::from(ide::REG_STATUS_COMMAND));
        let hit = (0..u16::from(size.clamp(1, 4)))
            .any(|i| command_regs.contains(&port.wrapping_add(i)) && (value >> (8 * i)) as u8 == wild.command);
        if hit {
            crate::memory::wild_write(wild.address);
            panic!("fault injection: the write to {:#x}, outside this stub's memory, was not faulted", wild.address);
        }
    }

    /// `rep ins` of `buf.len() / size` elements from `port` into `buf`.
    pub fn pio_read_string(&mut self, port: u16, size: u8, buf: &mut [u8]) {
        if let Some(channel) = self.ide_data_port(port, size) {
            self.ide.read_data(channel, buf);
        } else {
            let n = usize::from(size);
            for elem in buf.chunks_exact_mut(n) {
                let v = self.pio_read_inner(port, size);
                elem.copy_from_slice(&v.to_le_bytes()[..n]);
            }
        }
        self.sync_lines();
    }

    /// `rep outs` of the elements of `data` to `port`.
    pub fn pio_write_string(&mut self, port: u16, size: u8, data: &[u8]) {
        if let Some(channel) = self.ide_data_port(port, size) {
            self.ide.write_data(channel, data);
        } else {
            let n = usize::from(size);
            for elem in data.chunks_exact(n) {
                let mut v = [0u8; 4];
                v[..n].copy_from_slice(elem);
                self.pio_write_inner(port, size, u32::from_le_bytes(v));
            }
        }
        self.sync_lines();
    }

    /// The channel whose data port `port` is, for 16/32-bit bulk transfers.
    fn ide_data_port(&self, port: u16, size: u8) -> Option<usize> {
        let channel = match port {
            ide::PRIMARY_CMD_BASE => 0,
            ide::SECONDARY_CMD_BASE => 1,
            _ => return None,
        };
        (matches!(size, 2 | 4) && self.pci.ide_channel_enabled(channel as u8)).then_some(channel)
    }

    /// The virtio disk whose BAR decodes `addr`, and the offset in it.
    fn virtio_at(&self, addr: u64) -> Option<(usize, u64)> {
        self.virtio.iter().enumerate().find_map(|(i, v)| {
            let (base, size) = self.pci.memory_bar(v.slot, 0, virtio::pci::BAR_INDEX)?;
            let off = addr.checked_sub(base)?;
            (off < size).then_some((i, off))
        })
    }

    /// The NIC whose I/O BAR decodes `port`, and the offset in it.
    fn nic_port(&self, port: u16) -> Option<(usize, u64)> {
        self.nics.iter().enumerate().find_map(|(i, n)| {
            let (base, size) = self.pci.io_bar(n.slot, 0, n.io_bar_index()?)?;
            let off = port.checked_sub(base)?;
            (off < size).then_some((i, u64::from(off)))
        })
    }

    /// NIC `i`, told whether it may master the bus now.
    fn nic(&mut self, i: usize) -> &mut crate::nic::Nic {
        let on = self.pci.bus_master(self.nics[i].slot, 0);
        let n = &mut self.nics[i];
        n.set_bus_master(on);
        n
    }

    /// The NIC whose memory BAR decodes `addr`, and the offset in it.
    fn nic_at(&self, addr: u64) -> Option<(usize, u64)> {
        self.nics.iter().enumerate().find_map(|(i, n)| {
            let (base, size) = self.pci.memory_bar(n.slot, 0, n.bar_index())?;
            let off = addr.checked_sub(base)?;
            (off < size).then_some((i, off))
        })
    }

    pub fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        let v = if let Some((i, off)) = self.virtio_at(addr) {
            self.virtio[i].blk.bar_read(off, size)
        } else if let Some((i, off)) = self.nic_at(addr) {
            self.nic(i).mmio_read(off, size)
        } else {
            u64::MAX
        };
        self.sync_lines();
        v
    }

    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64) {
        if let Some((i, off)) = self.virtio_at(addr) {
            if self.virtio[i].blk.bar_write(off, size, value) == Effect::Notify(0) {
                let mut mem = self.window();
                self.virtio[i].serve(&mut mem);
            }
        } else if let Some((i, off)) = self.nic_at(addr) {
            let mem = self.window();
            self.nic(i).mmio_write(mem, off, size, value);
        }
        self.sync_lines();
    }

    /// The bridge put frames in the NICs' receive rings.
    pub fn net_arrived(&mut self) {
        let mem = self.window();
        for i in 0..self.nics.len() {
            self.nic(i).receive_pending(mem);
        }
        self.sync_lines();
    }

    /// Before scanning the slots: input for the guest's UART.
    /// Tells the hypervisor which port writes it may queue instead of
    /// waiting for: those whose devices need no answer and whose effects
    /// can wait until the stub's next turn (anything the guest then reads
    /// goes through a slot, after the queued writes): the IDE and
    /// bus-master registers. Not the UART or debugcon: output queued just
    /// before the guest powers off (through the hypervisor's ACPI ports)
    /// would be lost with the stub. Not PCI configuration (it moves these
    /// ranges), fw_cfg (its DMA is watched in memory), the i8042 or resets.
    pub fn publish_buffered_ports(&self) {
        let mut ranges: Vec<(u16, u16)> = vec![(0x1F0, 0x1F7), (0x3F6, 0x3F6), (0x170, 0x177), (0x376, 0x376)];
        if let Some(base) = self.pci.ide_bmdma_base() {
            ranges.push((base, base.saturating_add(15)));
        }
        memory::set_bufio_ranges(&ranges);
    }

    /// The hypervisor has console input for the guest: take what fits.
    pub fn input_arrived(&mut self) {
        self.input_waiting = true;
        self.pull_input();
        self.sync_lines();
    }

    /// After a batch of requests: UART output to the guest's console and
    /// the interrupt lines. Returns whether background work is left (a
    /// fw_cfg DMA transfer larger than its budget), in which case the
    /// caller must come back without waiting.
    pub fn end_of_batch(&mut self) -> bool {
        if !self.uart.pending_output().is_empty() {
            let out = self.uart.take_output();
            hypercall::guest_console_write(&out);
        }
        let mut pending = false;
        if let Some(f) = &mut self.fw_cfg {
            if f.dma_pending() {
                let mut mem = GuestWindow { ram: self.ram };
                f.continue_dma(&mut mem, &mut self.boot_data);
                pending = f.dma_pending();
            }
        }
        self.sync_lines();
        pending
    }

    /// Moves waiting console input into the UART's receive FIFO. Only
    /// asks the hypervisor while it said there is input and the last
    /// request filled the FIFO (else every LSR poll would be a hypercall).
    fn pull_input(&mut self) {
        let room = self.uart.rx_space();
        if room == 0 || !self.input_waiting {
            return;
        }
        let mut buf = [0u8; uart16550::FIFO_SIZE];
        let want = room.min(uart16550::FIFO_SIZE);
        let n = hypercall::console_input(&mut buf[..want]);
        for &b in &buf[..n] {
            self.uart.push_input(b);
        }
        if n < want {
            self.input_waiting = false;
        }
    }

    fn debugcon_byte(&mut self, b: u8) {
        match b {
            b'\n' => self.flush_debugcon(),
            b'\r' => {}
            _ => {
                self.debugcon.push(b);
                if self.debugcon.len() >= DEBUGCON_LINE_MAX {
                    self.flush_debugcon();
                }
            }
        }
    }

    fn flush_debugcon(&mut self) {
        let mut line = Vec::with_capacity(self.debugcon.len() + 6);
        line.extend_from_slice(b"bios: ");
        line.extend(self.debugcon.drain(..).map(|c| if c.is_ascii_graphic() || c == b' ' { c } else { b'.' }));
        hypercall::console_write(&line);
    }

    /// The i8042 protocol: lines after the access, then after loading the
    /// next byte (an edge between bytes).
    fn i8042_after_access(&mut self) {
        self.sync_lines();
        if self.i8042.pump() {
            self.sync_lines();
        }
    }

    fn reset_request(&mut self, source: &str) {
        info!("guest reset requested through the {}", source);
        hypercall::guest_power(PowerAction::Reset);
    }

    /// Sends SET_IRQ for every line whose level changed.
    ///
    /// Runs at least twice per I/O request (after the access and at the
    /// end of the batch), so the levels are a bit mask: one compare when
    /// nothing changed, the usual case, instead of a pass over 16 lines.
    fn sync_lines(&mut self) {
        let line = |irq: u8, level: bool| u16::from(level) << irq;
        let mut levels = line(COM1_IRQ, self.uart.irq_pending())
            | line(ide::CHANNEL_IRQ[0], self.ide.irq_level(0))
            | line(ide::CHANNEL_IRQ[1], self.ide.irq_level(1))
            | line(I8042_IRQ_KBD, self.i8042.irq1_level())
            | line(I8042_IRQ_AUX, self.i8042.irq12_level());
        // PCI INTx is level-triggered and shareable: ORed onto the IRQ its
        // PIRQ is routed to now (the guest may change the route).
        let intx = self.virtio.iter().map(|v| (v.slot, v.blk.irq_level())).chain(self.nics.iter().map(|n| (n.slot, n.irq_level())));
        for (slot, level) in intx {
            if level {
                if let Some(irq) = self.pci.intx_irq(slot, 0).filter(|&irq| usize::from(irq) < ISA_IRQS) {
                    levels |= 1 << irq;
                }
            }
        }
        // Lowest IRQ first, as before.
        let mut changed = levels ^ self.lines;
        self.lines = levels;
        while changed != 0 {
            let irq = changed.trailing_zeros() as u8;
            changed &= changed - 1;
            hypercall::set_irq(irq, levels & (1 << irq) != 0);
        }
    }
}

/// Puts a virtio-blk function for `disk` on the bus at 00:(3 + index).0.
fn attach_virtio(pci: &mut PciBus, index: usize, disk: &ferrite_abi::StubDisk, ram: GuestRam) -> Option<VirtioDisk> {
    if index >= MAX_VIRTIO_DISKS {
        warn!("disk {} ({}): more than {} virtio disks; not attached", disk.handle, disk.name, MAX_VIRTIO_DISKS);
        return None;
    }
    let slot = FIRST_VIRTIO_SLOT + index as u8;
    if !pci.add_function(slot, 0, virtio::pci::config_space()) {
        warn!("disk {} ({}): PCI slot {} is taken; not attached", disk.handle, disk.name, slot);
        return None;
    }
    let mut serial = [0u8; 20];
    let name = format!("FRT{:05}", disk.handle);
    let n = name.len().min(serial.len());
    serial[..n].copy_from_slice(&name.as_bytes()[..n]);
    let blk = VirtioBlkPci::new(BlkDiskInfo { sectors: disk.sectors, read_only: disk.read_only, serial });
    info!(
        "disk {} ({}): virtio-blk {} at PCI 00:{:02x}.0, {} sectors{}",
        disk.handle,
        disk.name,
        disk.vdev,
        slot,
        disk.sectors,
        if disk.read_only { ", read-only" } else { "" }
    );
    Some(VirtioDisk { slot, handle: disk.handle, blk, backend: StubBlock::new(disk, ram), errors: 0 })
}

impl VirtioDisk {
    /// The guest notified the queue: takes every waiting request, runs it
    /// on the host disk (data straight between the host device and guest
    /// memory, BLOCK_IO with the request's segments) and completes it.
    fn serve(&mut self, mem: &mut GuestWindow) {
        loop {
            let reqs = match self.blk.take_requests(mem, VIRTIO_BATCH) {
                Ok(r) => r,
                Err(e) => {
                    self.protocol_error(&e);
                    return;
                }
            };
            for req in &reqs {
                let status = run_request(&mut self.backend, req);
                if let Err(e) = self.blk.complete(mem, &req.id, status) {
                    self.protocol_error(&e);
                    return;
                }
            }
            if !self.blk.more_available() {
                return;
            }
        }
    }

    fn protocol_error(&mut self, e: &virtio::VirtioError) {
        if self.errors < VIRTIO_ERRORS_LOGGED {
            warn!("disk {}: virtio-blk: {}; the device waits for the driver's reset", self.handle, e);
        }
        self.errors = self.errors.saturating_add(1);
    }
}

/// One request on the host disk.
fn run_request(backend: &mut StubBlock, req: &BlkRequest) -> BlkStatus {
    // The model checked the total: whole sectors, inside the disk.
    let count = req.id.data_len / SECTOR_SIZE as u32;
    let result = match req.op {
        BlkOp::Read => backend.read_to_guest(req.sector, count, &req.segments),
        BlkOp::Write => backend.write_from_guest(req.sector, count, &req.segments),
        BlkOp::Flush => backend.flush(),
    };
    match result {
        Ok(()) => BlkStatus::Ok,
        Err(_) => BlkStatus::IoErr,
    }
}

/// `hda`..`hdd` → (channel, unit).
fn ide_slot(vdev: &str) -> Option<(usize, usize)> {
    match vdev {
        "hda" => Some((0, 0)),
        "hdb" => Some((0, 1)),
        "hdc" => Some((1, 0)),
        "hdd" => Some((1, 1)),
        _ => None,
    }
}

/// The boot files (kernel, initrd, option ROM), read with DATA_READ:
/// `ExternalData` handles are the hypervisor's data-source handles.
struct BootData {
    ram: GuestRam,
}

impl ExternalData for BootData {
    fn read(&mut self, handle: u32, offset: u64, buf: &mut [u8]) -> Result<(), ExternalError> {
        hypercall::data_read_to_stub(handle, offset, buf).map_err(|_| ExternalError::Source)
    }

    fn copy_to_guest(
        &mut self,
        handle: u32,
        offset: u64,
        gpa: u64,
        len: u64,
        _mem: &mut dyn GuestMemoryAccess,
    ) -> Result<(), ExternalError> {
        self.ram.check(gpa, len).map_err(ExternalError::Guest)?;
        hypercall::data_read_to_guest(handle, offset, gpa, len).map_err(|e| match e {
            ferrite_abi::Errno::Fault => ExternalError::Guest(DmaError::OutOfRange { gpa, len }),
            _ => ExternalError::Source,
        })
    }
}

/// What SeaBIOS and (for direct Linux boot) `linuxboot_dma.bin` read.
fn build_fw_cfg(config: &StubConfig, data: &mut BootData) -> Result<FwCfg, alloc::string::String> {
    let mut b = FwCfgBuilder::new();
    b.ram(config.ram_below_4g, config.ram_above_4g).map_err(|e| format!("{}", e))?;
    b.cpus(config.vcpus).map_err(|e| format!("{}", e))?;
    let mut platform = HVM_PLATFORM;
    platform.pm1a_evt = config.pm1a_evt;
    platform.pm1a_cnt = config.pm1a_cnt;
    platform.pm_tmr = config.pm_tmr;
    platform.pm_tmr_32bit = config.pm_tmr_32bit;
    platform.sci_irq = config.sci_irq;
    // PCI BARs go between the top of low RAM and the I/O APIC.
    let low_top = config.ram_below_4g.min(0xC000_0000) as u32;
    platform.pci_root_mem = Some((low_top, 0xFEBF_FFFF));
    b.acpi(platform);
    if !config.boot_order.is_empty() {
        b.bootorder(&config.boot_order);
    }
    if let Some(linux) = &config.linux {
        b.linuxboot_rom(ExternalBlob { handle: linux.option_rom.handle, len: linux.option_rom.len })
            .map_err(|e| format!("{}", e))?;
        let head = read_kernel_head(data, linux.kernel.handle, linux.kernel.len)?;
        let plan = b
            .linux(&LinuxBootConfig {
                image_head: &head,
                kernel: ExternalBlob { handle: linux.kernel.handle, len: linux.kernel.len },
                initrd: linux.initrd.map(|i| ExternalBlob { handle: i.handle, len: i.len }),
                cmdline: &linux.cmdline,
            })
            .map_err(|e| format!("{}", e))?;
        info!(
            "direct Linux boot: protocol {:#x}, kernel {} bytes at {:#x}, initrd {} bytes at {:#x}",
            plan.protocol, plan.kernel_size, plan.kernel_addr, plan.initrd_size, plan.initrd_addr
        );
    }
    b.build().map_err(|e| format!("{}", e))
}

/// The setup part of a bzImage (what `plan_linux_boot` reads).
fn read_kernel_head(data: &mut BootData, handle: u32, len: u64) -> Result<Vec<u8>, alloc::string::String> {
    let first = len.min(4096) as usize;
    let mut head = vec![0u8; first];
    data.read(handle, 0, &mut head).map_err(|_| format!("cannot read the kernel (data source {})", handle))?;
    let setup = fw_cfg::linux_setup_size(&head).map_err(|e| format!("kernel: {}", e))?;
    let want = setup.min(len) as usize;
    if want > head.len() {
        head.resize(want, 0);
        data.read(handle, first as u64, &mut head[first..])
            .map_err(|_| format!("cannot read the kernel (data source {})", handle))?;
    }
    Ok(head)
}
