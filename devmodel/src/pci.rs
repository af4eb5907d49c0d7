//! PCI configuration space of an i440FX/PIIX4 PC, configuration
//! mechanism #1.
//!
//! [`ConfigSpace`] is a reusable 256-byte configuration space: contents,
//! a per-byte mask of guest-writable bits, a per-byte mask of
//! write-1-to-clear bits, and BAR descriptions (the sizing protocol falls
//! out of the writable mask: writing all ones reads back the size mask with
//! the read-only type bits). [`PciBus`] is bus 0 with the functions added to
//! it, reached through ports 0xCF8 (address, dword access only) and
//! 0xCFC–0xCFF (data, byte/word/dword at the matching byte offset).
//!
//! [`PciBus::i440fx`] builds the PC: 00:00.0 82441FX host bridge (PAM,
//! SMRAM), 00:01.0 PIIX4 ISA bridge (PIRQ routing), 00:01.1 PIIX4 IDE in
//! legacy mode with the bus-master DMA BAR4. More functions (a virtio
//! device, say) are added with [`PciBus::add_function`]; device logic
//! reads the state it needs (command register, BARs) from its
//! [`ConfigSpace`] through [`PciBus::function`]. Nothing here calls out.
//!
//! Absent functions, other buses and a disabled address register read all
//! ones and ignore writes, like a master abort.

use alloc::vec::Vec;

pub const PORT_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PORT_CONFIG_DATA: u16 = 0xcfc;

/// Standard header offsets.
pub const VENDOR_ID: u8 = 0x00;
pub const DEVICE_ID: u8 = 0x02;
pub const COMMAND: u8 = 0x04;
pub const STATUS: u8 = 0x06;
pub const REVISION_ID: u8 = 0x08;
pub const CLASS_PROG_IF: u8 = 0x09;
pub const CACHE_LINE_SIZE: u8 = 0x0c;
pub const LATENCY_TIMER: u8 = 0x0d;
pub const HEADER_TYPE: u8 = 0x0e;
pub const BAR0: u8 = 0x10;
pub const INTERRUPT_LINE: u8 = 0x3c;
pub const INTERRUPT_PIN: u8 = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

pub const STATUS_DEVSEL_MEDIUM: u16 = 1 << 9;
pub const STATUS_FAST_BACK: u16 = 1 << 7;
/// Error bits software clears by writing 1: master data parity error,
/// signalled/received target abort, received master abort, signalled
/// system error, detected parity error.
pub const STATUS_W1C: u16 = 0xf900;

pub const HEADER_MULTIFUNCTION: u8 = 0x80;

pub const VENDOR_INTEL: u16 = 0x8086;
pub const DEVICE_82441FX: u16 = 0x1237;
pub const DEVICE_PIIX4_ISA: u16 = 0x7110;
pub const DEVICE_PIIX4_IDE: u16 = 0x7111;

/// 82441FX: PAM0–PAM6 and SMRAM.
pub const I440FX_PAM0: u8 = 0x59;
pub const I440FX_SMRAM: u8 = 0x72;
const SMRAM_D_OPEN: u8 = 1 << 6;
const SMRAM_D_CLS: u8 = 1 << 5;
const SMRAM_D_LCK: u8 = 1 << 4;
const SMRAM_G_SMRAME: u8 = 1 << 3;
/// C_BASE_SEG = 010: SMRAM at 0xA0000, read-only.
const SMRAM_RESET: u8 = 0x02;

/// PIIX4 function 0: PIRQ[A-D] route control.
pub const PIIX4_PIRQRC: u8 = 0x60;
const PIRQ_DISABLE: u8 = 0x80;

/// PIIX4 IDE: IDETIM primary/secondary, SIDETIM, UDMACTL, UDMATIM.
pub const PIIX4_IDETIM_PRI: u8 = 0x40;
pub const PIIX4_IDETIM_SEC: u8 = 0x42;
/// IDETIM bit 15: the channel decodes its legacy ports.
const IDETIM_DECODE_ENABLE: u16 = 1 << 15;
/// Index of the bus-master IDE base address (BMIBA) among the BARs.
const PIIX4_BMIBA_BAR: usize = 4;

/// Bus/device/function of the built-in functions.
pub const HOST_BRIDGE: (u8, u8) = (0, 0);
pub const ISA_BRIDGE: (u8, u8) = (1, 0);
pub const IDE: (u8, u8) = (1, 1);

/// What a base address register decodes. Sizes are powers of two; BARs
/// not described read 0 and ignore writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// I/O space, at least 4 bytes.
    Io { size: u32 },
    /// 32-bit memory space, at least 16 bytes.
    Mem32 { size: u32, prefetchable: bool },
    /// 64-bit memory space (uses this BAR and the next), at least 16 bytes.
    Mem64 { size: u64, prefetchable: bool },
}

impl Bar {
    fn valid(self) -> bool {
        match self {
            Bar::Io { size } => size >= 4 && size.is_power_of_two(),
            Bar::Mem32 { size, .. } => size >= 16 && size.is_power_of_two(),
            Bar::Mem64 { size, .. } => size >= 16 && size.is_power_of_two(),
        }
    }

    /// Read-only low type bits.
    fn type_bits(self) -> u32 {
        match self {
            Bar::Io { .. } => 0x1,
            Bar::Mem32 { prefetchable, .. } => u32::from(prefetchable) << 3,
            Bar::Mem64 { prefetchable, .. } => 0x4 | u32::from(prefetchable) << 3,
        }
    }

    /// Writable address bits across the (one or two) dwords.
    fn address_mask(self) -> u64 {
        match self {
            Bar::Io { size } => u64::from(!(size - 1) & !0x3),
            Bar::Mem32 { size, .. } => u64::from(!(size - 1) & !0xf),
            Bar::Mem64 { size, .. } => !(size - 1) & !0xf,
        }
    }
}

/// One PCI function's 256-byte configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; 256],
    /// Bits the guest may change.
    wmask: [u8; 256],
    /// Bits the guest clears by writing 1.
    w1c: [u8; 256],
    /// BAR descriptions; the upper half of a 64-bit BAR stays None.
    bars: [Option<Bar>; 6],
}

impl ConfigSpace {
    /// A type-0 header with the given identity. `class` is the 24-bit
    /// class code (base class, subclass, programming interface). The
    /// command register starts at 0 with nothing writable; cache line
    /// size, latency timer and interrupt line are writable; the error bits
    /// of the status register are write-1-to-clear.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, header_type: u8) -> Self {
        let mut c = ConfigSpace {
            data: [0; 256],
            wmask: [0; 256],
            w1c: [0; 256],
            bars: [None; 6],
        };
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.set_u8(REVISION_ID, revision);
        let [pi, sub, base, _] = class.to_le_bytes();
        c.set_u8(CLASS_PROG_IF, pi);
        c.set_u8(CLASS_PROG_IF + 1, sub);
        c.set_u8(CLASS_PROG_IF + 2, base);
        c.set_u8(HEADER_TYPE, header_type);
        c.set_wmask(CACHE_LINE_SIZE, 0xff);
        c.set_wmask(LATENCY_TIMER, 0xf8);
        c.set_wmask(INTERRUPT_LINE, 0xff);
        let [lo, hi] = STATUS_W1C.to_le_bytes();
        c.set_w1c(STATUS, lo);
        c.set_w1c(STATUS + 1, hi);
        c
    }

    /// Raw byte (no side effects); None past the end never happens for a
    /// u8 offset, so this is total.
    pub fn u8_at(&self, offset: u8) -> u8 {
        self.data[usize::from(offset)]
    }

    /// Raw little-endian word at `offset` (bytes past 0xFF read 0xFF).
    pub fn u16_at(&self, offset: u8) -> u16 {
        self.read(offset, 2) as u16
    }

    /// Raw little-endian dword at `offset` (bytes past 0xFF read 0xFF).
    pub fn u32_at(&self, offset: u8) -> u32 {
        self.read(offset, 4)
    }

    /// Set a byte as the device (not the guest) would: no masks applied.
    pub fn set_u8(&mut self, offset: u8, value: u8) {
        self.data[usize::from(offset)] = value;
    }

    /// Device-side word store; bytes past 0xFF are dropped.
    pub fn set_u16(&mut self, offset: u8, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.data.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    /// Device-side dword store; bytes past 0xFF are dropped.
    pub fn set_u32(&mut self, offset: u8, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.data.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    /// Which bits of byte `offset` the guest may write.
    pub fn set_wmask(&mut self, offset: u8, mask: u8) {
        self.wmask[usize::from(offset)] = mask;
    }

    /// Mark bits of byte `offset` as write-1-to-clear.
    pub fn set_w1c(&mut self, offset: u8, mask: u8) {
        self.w1c[usize::from(offset)] = mask;
    }

    /// Make bytes `offset..offset+len` fully writable (device-specific
    /// registers that are just storage). Stops at the end of the space.
    pub fn set_writable(&mut self, offset: u8, len: usize) {
        let start = usize::from(offset);
        let end = start.saturating_add(len).min(256);
        for m in &mut self.wmask[start..end] {
            *m = 0xff;
        }
    }

    /// Describe BAR `index` (0–5). Its address starts at 0. Returns false
    /// (and changes nothing) for a bad index, a bad size, or a 64-bit BAR
    /// in slot 5.
    pub fn set_bar(&mut self, index: usize, bar: Bar) -> bool {
        let wide = matches!(bar, Bar::Mem64 { .. });
        if index >= 6 || (wide && index >= 5) || !bar.valid() {
            return false;
        }
        let off = BAR0 + (index as u8) * 4;
        let mask = bar.address_mask();
        self.set_u32(off, bar.type_bits());
        self.set_mask32(off, mask as u32);
        self.bars[index] = Some(bar);
        if wide {
            self.set_u32(off + 4, 0);
            self.set_mask32(off + 4, (mask >> 32) as u32);
            self.bars[index + 1] = None;
        }
        true
    }

    fn set_mask32(&mut self, offset: u8, mask: u32) {
        for (i, b) in mask.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.wmask.get_mut(usize::from(offset) + i) {
                *slot = b;
            }
        }
    }

    /// The address BAR `index` holds (type bits stripped), or None when
    /// the BAR is not implemented or not yet assigned (0). Whether the
    /// function decodes it depends on the command register.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = (*self.bars.get(index)?)?;
        let off = BAR0 + (index as u8) * 4;
        let lo = u64::from(self.u32_at(off));
        let addr = match bar {
            Bar::Io { .. } => lo & !0x3,
            Bar::Mem32 { .. } => lo & !0xf,
            Bar::Mem64 { .. } => (lo & !0xf) | u64::from(self.u32_at(off + 4)) << 32,
        };
        (addr != 0).then_some(addr)
    }

    /// The BAR description at `index`, if any.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    pub fn status(&self) -> u16 {
        self.u16_at(STATUS)
    }

    pub fn vendor_id(&self) -> u16 {
        self.u16_at(VENDOR_ID)
    }

    pub fn device_id(&self) -> u16 {
        self.u16_at(DEVICE_ID)
    }

    /// A guest read of `size` bytes (1, 2 or 4; anything else is treated
    /// as 4) at `offset`, little-endian. Bytes beyond the 256-byte space
    /// read 0xFF.
    pub fn read(&self, offset: u8, size: u8) -> u32 {
        let n = access_len(size);
        let mut v = 0u32;
        for i in 0..n {
            let b = self
                .data
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0xff);
            v |= u32::from(b) << (8 * i);
        }
        v
    }

    /// A guest write: each byte changes only its writable bits, and
    /// write-1-to-clear bits written as 1 are cleared. Bytes beyond the
    /// space are dropped.
    pub fn write(&mut self, offset: u8, size: u8, value: u32) {
        let n = access_len(size);
        for (i, b) in value.to_le_bytes().into_iter().take(n).enumerate() {
            let idx = usize::from(offset) + i;
            let (Some(d), Some(&m), Some(&c)) =
                (self.data.get(idx), self.wmask.get(idx), self.w1c.get(idx))
            else {
                continue;
            };
            let nv = ((d & !m) | (b & m)) & !(b & c);
            self.data[idx] = nv;
        }
    }
}

fn access_len(size: u8) -> usize {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// One function on the bus.
#[derive(Clone, Debug)]
struct Slot {
    dev: u8,
    func: u8,
    config: ConfigSpace,
}

/// PCI bus 0 behind configuration mechanism #1.
#[derive(Clone, Debug, Default)]
pub struct PciBus {
    /// The 0xCF8 register (reserved bits 30:24 and 1:0 read 0).
    address: u32,
    slots: Vec<Slot>,
}

impl PciBus {
    /// An empty bus.
    pub fn new() -> Self {
        PciBus {
            address: 0,
            slots: Vec::new(),
        }
    }

    /// The i440FX/PIIX4 PC: host bridge, ISA bridge and IDE controller.
    pub fn i440fx() -> Self {
        let mut bus = PciBus::new();
        bus.add_function(HOST_BRIDGE.0, HOST_BRIDGE.1, host_bridge_82441fx());
        bus.add_function(ISA_BRIDGE.0, ISA_BRIDGE.1, piix4_isa());
        bus.add_function(IDE.0, IDE.1, piix4_ide());
        bus
    }

    /// Put a function at 00:dev.func. False (and nothing added) when the
    /// slot is out of range or taken. A function other than 0 is only
    /// found by software if function 0 says it is multi-function.
    pub fn add_function(&mut self, dev: u8, func: u8, config: ConfigSpace) -> bool {
        if dev >= 32 || func >= 8 || self.find(dev, func).is_some() {
            return false;
        }
        self.slots.push(Slot { dev, func, config });
        true
    }

    fn find(&self, dev: u8, func: u8) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.dev == dev && s.func == func)
    }

    /// The configuration space of 00:dev.func.
    pub fn function(&self, dev: u8, func: u8) -> Option<&ConfigSpace> {
        self.find(dev, func).map(|i| &self.slots[i].config)
    }

    /// Mutable access, for device models that set status bits or change
    /// their own registers.
    pub fn function_mut(&mut self, dev: u8, func: u8) -> Option<&mut ConfigSpace> {
        let i = self.find(dev, func)?;
        Some(&mut self.slots[i].config)
    }

    /// The current 0xCF8 value.
    pub fn config_address(&self) -> u32 {
        self.address
    }

    /// A guest IN. Claims 0xCF8 as a dword only (byte/word accesses to
    /// 0xCF8–0xCFB belong to other registers, e.g. the reset control
    /// register at 0xCF9) and 0xCFC–0xCFF for sizes 1, 2 and 4. An access
    /// to the data ports that runs past 0xCFF reads all ones. None when the
    /// access is not ours (or the size is not 1, 2 or 4).
    pub fn io_read(&self, port: u16, size: u8) -> Option<u32> {
        if !matches!(size, 1 | 2 | 4) {
            return None;
        }
        match port {
            PORT_CONFIG_ADDRESS if size == 4 => Some(self.address),
            0xcfc..=0xcff => {
                let byte = (port - PORT_CONFIG_DATA) as u8;
                if byte + size > 4 {
                    return Some(size_mask(size));
                }
                Some(match self.decode_address(byte) {
                    Some((bus, dev, func, off)) => self.config_read(bus, dev, func, off, size),
                    None => size_mask(size),
                })
            }
            _ => None,
        }
    }

    /// A guest OUT; the claiming rules of [`PciBus::io_read`]. Writes that
    /// run past 0xCFF, or go nowhere, are dropped.
    pub fn io_write(&mut self, port: u16, size: u8, value: u32) -> bool {
        if !matches!(size, 1 | 2 | 4) {
            return false;
        }
        match port {
            PORT_CONFIG_ADDRESS if size == 4 => {
                self.address = value & !0x7f00_0003;
                true
            }
            0xcfc..=0xcff => {
                let byte = (port - PORT_CONFIG_DATA) as u8;
                if byte + size <= 4 {
                    if let Some((bus, dev, func, off)) = self.decode_address(byte) {
                        self.config_write(bus, dev, func, off, size, value);
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// (bus, device, function, register offset) of a data-port access at
    /// byte `byte` of the dword, when the enable bit is set.
    fn decode_address(&self, byte: u8) -> Option<(u8, u8, u8, u8)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (a >> 16) as u8;
        let dev = ((a >> 11) & 0x1f) as u8;
        let func = ((a >> 8) & 0x7) as u8;
        let off = (a as u8 & 0xfc) | (byte & 3);
        Some((bus, dev, func, off))
    }

    /// Read `size` bytes (1, 2, 4; else 4) of a function's configuration
    /// space; absent functions and buses other than 0 read all ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, offset: u8, size: u8) -> u32 {
        if bus != 0 {
            return size_mask(size);
        }
        match self.function(dev, func) {
            Some(c) => c.read(offset, size),
            None => size_mask(size),
        }
    }

    /// Write `size` bytes of a function's configuration space through its
    /// masks; absent functions and other buses ignore it.
    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, offset: u8, size: u8, value: u32) {
        if bus != 0 {
            return;
        }
        let Some(c) = self.function_mut(dev, func) else {
            return;
        };
        c.write(offset, size, value);
        if (dev, func) == HOST_BRIDGE
            && c.vendor_id() == VENDOR_INTEL
            && c.device_id() == DEVICE_82441FX
        {
            smram_lock(c);
        }
    }

    fn builtin(&self, at: (u8, u8), device: u16) -> Option<&ConfigSpace> {
        let c = self.function(at.0, at.1)?;
        (c.vendor_id() == VENDOR_INTEL && c.device_id() == device).then_some(c)
    }

    /// The PIIX4 IDE bus-master register block (16 ports), when the IDE
    /// function decodes I/O and BAR4 holds an address that fits the I/O
    /// space.
    pub fn ide_bmdma_base(&self) -> Option<u16> {
        let c = self.builtin(IDE, DEVICE_PIIX4_IDE)?;
        if c.command() & COMMAND_IO == 0 {
            return None;
        }
        let base = c.bar_address(PIIX4_BMIBA_BAR)?;
        // The 16-byte block must lie below 64 KiB.
        if base > 0xfff0 {
            return None;
        }
        Some(base as u16)
    }

    /// Whether the IDE function may master the bus (DMA).
    pub fn ide_bus_master_enabled(&self) -> bool {
        self.builtin(IDE, DEVICE_PIIX4_IDE)
            .is_some_and(|c| c.command() & COMMAND_BUS_MASTER != 0)
    }

    /// Whether IDE channel 0 (primary, 0x1F0/0x3F6, IRQ 14) or 1
    /// (secondary, 0x170/0x376, IRQ 15) decodes its legacy ports: I/O
    /// space enabled and the channel's IDETIM decode-enable bit set.
    pub fn ide_channel_enabled(&self, channel: u8) -> bool {
        let reg = match channel {
            0 => PIIX4_IDETIM_PRI,
            1 => PIIX4_IDETIM_SEC,
            _ => return false,
        };
        self.builtin(IDE, DEVICE_PIIX4_IDE).is_some_and(|c| {
            c.command() & COMMAND_IO != 0 && c.u16_at(reg) & IDETIM_DECODE_ENABLE != 0
        })
    }

    /// The ISA IRQ PIRQ `pirq` (0–3 = A–D) is routed to, or None when the
    /// route is disabled or names a reserved IRQ (0, 1, 2, 8, 13).
    pub fn pirq_route(&self, pirq: u8) -> Option<u8> {
        if pirq >= 4 {
            return None;
        }
        let c = self.builtin(ISA_BRIDGE, DEVICE_PIIX4_ISA)?;
        let v = c.u8_at(PIIX4_PIRQRC + pirq);
        if v & PIRQ_DISABLE != 0 {
            return None;
        }
        match v & 0xf {
            irq @ (3..=7 | 9..=12 | 14 | 15) => Some(irq),
            _ => None,
        }
    }

    /// Where memory BAR `index` of 00:dev.func is decoded: (base, size),
    /// when the function has memory space enabled and the BAR is a memory
    /// BAR holding a non-zero address whose range does not wrap.
    pub fn memory_bar(&self, dev: u8, func: u8, index: usize) -> Option<(u64, u64)> {
        let c = self.function(dev, func)?;
        if c.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let size = match c.bar(index)? {
            Bar::Io { .. } => return None,
            Bar::Mem32 { size, .. } => u64::from(size),
            Bar::Mem64 { size, .. } => size,
        };
        let base = c.bar_address(index)?;
        base.checked_add(size)?;
        Some((base, size))
    }

    /// Where I/O BAR `index` of 00:dev.func is decoded: (base port,
    /// ports), when the function has I/O space enabled and the BAR is an
    /// I/O BAR holding a non-zero port whose range stays below 64 Ki.
    pub fn io_bar(&self, dev: u8, func: u8, index: usize) -> Option<(u16, u16)> {
        let c = self.function(dev, func)?;
        if c.command() & COMMAND_IO == 0 {
            return None;
        }
        let Bar::Io { size } = c.bar(index)? else { return None };
        let base = u16::try_from(c.bar_address(index)?).ok().filter(|&b| b != 0)?;
        let size = u16::try_from(size).ok()?;
        base.checked_add(size)?;
        Some((base, size))
    }

    /// Whether 00:dev.func may master the bus (command bit 2).
    pub fn bus_master(&self, dev: u8, func: u8) -> bool {
        self.function(dev, func).is_some_and(|c| c.command() & COMMAND_BUS_MASTER != 0)
    }

    /// The ISA IRQ the INTx line of 00:dev.func reaches: its interrupt pin
    /// (A-D) swizzled onto PIRQ A-D as on a PIIX (`(dev + pin - 2) mod 4`,
    /// what SeaBIOS assumes when it fills in the interrupt line register),
    /// then the PIIX4's route. None when the function has no pin, sets
    /// INTx Disable (command bit 10), or the PIRQ is not routed.
    pub fn intx_irq(&self, dev: u8, func: u8) -> Option<u8> {
        let c = self.function(dev, func)?;
        let pin = c.u8_at(INTERRUPT_PIN);
        if !(1..=4).contains(&pin) || c.command() & COMMAND_INTX_DISABLE != 0 {
            return None;
        }
        self.pirq_route((dev.wrapping_add(pin).wrapping_sub(2)) & 3)
    }

    /// PAM register `index` (0–6, config 0x59 + index) of the host bridge:
    /// bits 0/4 read enable, bits 1/5 write enable for its two segments.
    pub fn pam(&self, index: u8) -> Option<u8> {
        if index > 6 {
            return None;
        }
        Some(
            self.builtin(HOST_BRIDGE, DEVICE_82441FX)?
                .u8_at(I440FX_PAM0 + index),
        )
    }

    /// The host bridge SMRAM control register.
    pub fn smram(&self) -> Option<u8> {
        Some(
            self.builtin(HOST_BRIDGE, DEVICE_82441FX)?
                .u8_at(I440FX_SMRAM),
        )
    }
}

/// Once D_LCK is set, D_OPEN is forced off and only D_CLS stays writable
/// until reset: the guest cannot reopen SMRAM.
fn smram_lock(c: &mut ConfigSpace) {
    let v = c.u8_at(I440FX_SMRAM);
    if v & SMRAM_D_LCK != 0 {
        c.set_u8(I440FX_SMRAM, v & !SMRAM_D_OPEN);
        c.set_wmask(I440FX_SMRAM, SMRAM_D_CLS);
    }
}

/// 00:00.0 Intel 82441FX PMC (host bridge).
pub fn host_bridge_82441fx() -> ConfigSpace {
    let mut c = ConfigSpace::new(VENDOR_INTEL, DEVICE_82441FX, 0x06_00_00, 0x02, 0x00);
    c.set_u16(COMMAND, 0x0006);
    c.set_u16(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK);
    // Chipset registers (DRAM control, DRBs, error command/status ...)
    // are stored but have no effect here.
    c.set_writable(0x40, 0xc0);
    // PAM0 has only the 0xF0000 segment (high nibble); PAM1-6 have two.
    c.set_wmask(I440FX_PAM0, 0x30);
    for i in 1..7 {
        c.set_wmask(I440FX_PAM0 + i, 0x33);
    }
    c.set_u8(I440FX_SMRAM, SMRAM_RESET);
    c.set_wmask(
        I440FX_SMRAM,
        SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME,
    );
    c
}

/// 00:01.0 Intel 82371AB PIIX4 function 0 (PCI-to-ISA bridge).
pub fn piix4_isa() -> ConfigSpace {
    let mut c = ConfigSpace::new(
        VENDOR_INTEL,
        DEVICE_PIIX4_ISA,
        0x06_01_00,
        0x00,
        HEADER_MULTIFUNCTION,
    );
    c.set_u16(COMMAND, 0x0007);
    c.set_u16(STATUS, STATUS_DEVSEL_MEDIUM);
    // Everything device-specific is stored harmlessly (firmware and Linux
    // poke ISA clocks, APIC base, DMA routing ...).
    c.set_writable(0x40, 0xc0);
    c.set_u8(0x4c, 0x4d); // IORT
    c.set_u8(0x4e, 0x03); // XBCS
    c.set_u8(0x69, 0x02); // TOM
    for i in 0..4 {
        c.set_u8(PIIX4_PIRQRC + i, PIRQ_DISABLE);
        c.set_wmask(PIIX4_PIRQRC + i, 0x8f); // bits 6:4 reserved
    }
    c.set_u8(0x70, 0x80); // MBIRQ0/1: disabled
    c.set_u8(0x71, 0x80);
    c
}

/// 00:01.1 Intel 82371AB PIIX4 IDE, legacy mode with bus mastering.
pub fn piix4_ide() -> ConfigSpace {
    let mut c = ConfigSpace::new(VENDOR_INTEL, DEVICE_PIIX4_IDE, 0x01_01_80, 0x01, 0x00);
    c.set_u16(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK);
    c.set_wmask(COMMAND, (COMMAND_IO | COMMAND_BUS_MASTER) as u8);
    c.set_wmask(LATENCY_TIMER, 0xf0);
    // BARs 0-3 stay unimplemented: legacy ports, programming interface
    // read-only.
    c.set_bar(PIIX4_BMIBA_BAR, Bar::Io { size: 16 });
    // IDETIM (bits 11:10 reserved), SIDETIM, UDMACTL, UDMATIM.
    for reg in [PIIX4_IDETIM_PRI, PIIX4_IDETIM_SEC] {
        c.set_wmask(reg, 0xff);
        c.set_wmask(reg + 1, 0xf3);
    }
    c.set_wmask(0x44, 0xff);
    c.set_wmask(0x48, 0x0f);
    c.set_wmask(0x4a, 0x33);
    c.set_wmask(0x4b, 0x33);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn cf8(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
        0x8000_0000
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(off)
    }

    fn rd(b: &PciBus, dev: u8, func: u8, off: u8, size: u8) -> u32 {
        let mut b2 = b.clone();
        b2.io_write(0xcf8, 4, cf8(0, dev, func, off & 0xfc));
        b2.io_read(0xcfc + u16::from(off & 3), size).unwrap()
    }

    fn wr(b: &mut PciBus, dev: u8, func: u8, off: u8, size: u8, v: u32) {
        b.io_write(0xcf8, 4, cf8(0, dev, func, off & 0xfc));
        assert!(b.io_write(0xcfc + u16::from(off & 3), size, v));
    }

    #[test]
    fn seabios_and_linux_mechanism1_probe() {
        let mut b = PciBus::i440fx();
        // SeaBIOS: outl(0x80000000, 0xcf8); inl(0xcf8) == 0x80000000.
        assert!(b.io_write(0xcf8, 4, 0x8000_0000));
        assert_eq!(b.io_read(0xcf8, 4), Some(0x8000_0000));
        // Linux pci_check_type1 first does outb(0x01, 0xcfb): not ours.
        assert!(!b.io_write(0xcfb, 1, 0x01));
        assert_eq!(b.io_read(0xcf8, 2), None);
        assert_eq!(b.io_read(0xcf9, 1), None);
        assert_eq!(b.io_read(0xcf8, 4), Some(0x8000_0000));
        // Reserved bits read 0.
        b.io_write(0xcf8, 4, 0xffff_ffff);
        assert_eq!(b.io_read(0xcf8, 4), Some(0x80ff_fffc));
        // Other ports and sizes are not ours.
        assert_eq!(b.io_read(0xd00, 1), None);
        assert_eq!(b.io_read(0xcfc, 3), None);
        assert!(!b.io_write(0xcfc, 8, 0));
    }

    #[test]
    fn enumeration_finds_the_three_functions() {
        let b = PciBus::i440fx();
        let mut found = Vec::new();
        for dev in 0..32u8 {
            let id = rd(&b, dev, 0, 0, 4);
            if id & 0xffff == 0xffff {
                continue;
            }
            found.push((dev, 0, id));
            let multi = rd(&b, dev, 0, HEADER_TYPE, 1) & 0x80 != 0;
            if multi {
                for func in 1..8u8 {
                    let id = rd(&b, dev, func, 0, 4);
                    if id & 0xffff != 0xffff {
                        found.push((dev, func, id));
                    }
                }
            }
        }
        assert_eq!(
            found,
            [
                (0, 0, 0x1237_8086),
                (1, 0, 0x7110_8086),
                (1, 1, 0x7111_8086)
            ]
        );
        assert_eq!(rd(&b, 0, 0, 0x08, 4) >> 8, 0x06_00_00);
        assert_eq!(rd(&b, 1, 0, 0x08, 4) >> 8, 0x06_01_00);
        assert_eq!(rd(&b, 1, 1, 0x08, 4) >> 8, 0x01_01_80);
        assert_eq!(rd(&b, 1, 0, HEADER_TYPE, 1), 0x80);
        assert_eq!(rd(&b, 1, 1, HEADER_TYPE, 1), 0x00);
    }

    #[test]
    fn absent_devices_and_disabled_address_read_all_ones() {
        let mut b = PciBus::i440fx();
        assert_eq!(rd(&b, 5, 0, 0, 4), 0xffff_ffff);
        assert_eq!(rd(&b, 0, 3, 0, 2), 0xffff);
        assert_eq!(rd(&b, 31, 7, 0xff, 1), 0xff);
        assert_eq!(b.config_read(1, 0, 0, 0, 4), 0xffff_ffff);
        assert_eq!(b.config_read(0, 1, 7, 0, 1), 0xff);
        // Enable bit clear: nothing answers, writes go nowhere.
        b.io_write(0xcf8, 4, 0x0000_0000);
        assert_eq!(b.io_read(0xcfc, 4), Some(0xffff_ffff));
        b.io_write(0xcf8, 4, 0x0000_0004);
        b.io_write(0xcfc, 2, 0x0007);
        assert_eq!(b.config_read(0, 1, 1, COMMAND, 2), 0);
        // Writes to an absent function are harmless.
        wr(&mut b, 9, 0, 0x10, 4, 0xffff_ffff);
        b.config_write(3, 0, 0, 0x04, 4, 0xffff_ffff);
        assert_eq!(rd(&b, 0, 0, 0, 4), 0x1237_8086);
    }

    #[test]
    fn byte_and_word_access_at_data_port_offsets() {
        let mut b = PciBus::i440fx();
        // Dword 0x08 of the IDE function: rev 01, class 01 01 80.
        assert_eq!(rd(&b, 1, 1, 0x08, 4), 0x0101_8001);
        assert_eq!(rd(&b, 1, 1, 0x09, 1), 0x80);
        assert_eq!(rd(&b, 1, 1, 0x0a, 2), 0x0101);
        assert_eq!(rd(&b, 1, 1, 0x0b, 1), 0x01);
        assert_eq!(rd(&b, 0, 0, 0x02, 2), 0x1237);
        // Word write at 0xCFE lands on 0x42 (secondary IDETIM).
        wr(&mut b, 1, 1, 0x42, 2, 0x8000);
        assert_eq!(b.config_read(0, 1, 1, 0x40, 4), 0x8000_0000);
        // Byte write at 0xCFD lands on 0x41.
        wr(&mut b, 1, 1, 0x41, 1, 0x80);
        assert_eq!(b.config_read(0, 1, 1, 0x40, 4), 0x8000_8000);
        // Reserved IDETIM bits 11:10 stay clear.
        wr(&mut b, 1, 1, 0x40, 2, 0xffff);
        assert_eq!(b.config_read(0, 1, 1, 0x40, 2), 0xf3ff);
        // A word at 0xCFF or a dword at 0xCFD runs off the end: all ones,
        // writes dropped.
        b.io_write(0xcf8, 4, cf8(0, 1, 1, 0x40));
        assert_eq!(b.io_read(0xcff, 2), Some(0xffff));
        assert_eq!(b.io_read(0xcfd, 4), Some(0xffff_ffff));
        assert!(b.io_write(0xcfd, 4, 0));
        assert_eq!(b.config_read(0, 1, 1, 0x40, 2), 0xf3ff);
    }

    #[test]
    fn read_only_identity_and_status_w1c() {
        let mut b = PciBus::i440fx();
        wr(&mut b, 1, 1, 0x00, 4, 0);
        wr(&mut b, 1, 1, 0x08, 4, 0);
        assert_eq!(rd(&b, 1, 1, 0x00, 4), 0x7111_8086);
        assert_eq!(rd(&b, 1, 1, 0x08, 4), 0x0101_8001);
        // Device sets received-master-abort; the guest clears it with 1s
        // while writing 0 to other status bits leaves them.
        let c = b.function_mut(1, 1).unwrap();
        c.set_u16(STATUS, c.status() | 0x2000);
        assert_eq!(rd(&b, 1, 1, STATUS, 2), 0x2280);
        wr(&mut b, 1, 1, STATUS, 2, 0x0000);
        assert_eq!(rd(&b, 1, 1, STATUS, 2), 0x2280);
        wr(&mut b, 1, 1, STATUS, 2, 0x2000);
        assert_eq!(rd(&b, 1, 1, STATUS, 2), 0x0280);
        // A dword write to 0x04 programs command and clears status.
        b.function_mut(1, 1).unwrap().set_u16(STATUS, 0x2280);
        wr(&mut b, 1, 1, COMMAND, 4, 0xffff_ffff);
        assert_eq!(rd(&b, 1, 1, COMMAND, 4), 0x0280_0005);
    }

    #[test]
    fn ide_bar_sizing_and_assignment() {
        let mut b = PciBus::i440fx();
        // BARs 0-3 are unimplemented: read 0 before and after sizing.
        for bar in 0..4u8 {
            let off = BAR0 + bar * 4;
            assert_eq!(rd(&b, 1, 1, off, 4), 0);
            wr(&mut b, 1, 1, off, 4, 0xffff_ffff);
            assert_eq!(rd(&b, 1, 1, off, 4), 0);
        }
        let bar4 = BAR0 + 16;
        assert_eq!(rd(&b, 1, 1, bar4, 4), 0x0000_0001);
        // Sizing: all ones read back the 16-byte I/O size mask.
        wr(&mut b, 1, 1, bar4, 4, 0xffff_ffff);
        let sz = rd(&b, 1, 1, bar4, 4);
        assert_eq!(sz, 0xffff_fff1);
        assert_eq!((!(sz & !0x3)).wrapping_add(1), 16);
        assert_eq!(rd(&b, 1, 1, 0x24, 4), 0, "BAR5 unimplemented");
        assert_eq!(rd(&b, 1, 1, 0x30, 4), 0, "no expansion ROM");
        // Not decoded until assigned and I/O space is enabled.
        assert_eq!(b.ide_bmdma_base(), None);
        wr(&mut b, 1, 1, bar4, 4, 0xc000);
        assert_eq!(rd(&b, 1, 1, bar4, 4), 0xc001);
        assert_eq!(b.ide_bmdma_base(), None);
        assert!(!b.ide_bus_master_enabled());
        wr(&mut b, 1, 1, COMMAND, 2, 0x0001);
        assert_eq!(b.ide_bmdma_base(), Some(0xc000));
        assert!(!b.ide_bus_master_enabled());
        wr(&mut b, 1, 1, COMMAND, 2, 0x0007);
        assert_eq!(
            rd(&b, 1, 1, COMMAND, 2),
            0x0005,
            "memory space not writable"
        );
        assert!(b.ide_bus_master_enabled());
        // Unaligned low bits are dropped; addresses past 64 KiB are not
        // usable I/O ports.
        wr(&mut b, 1, 1, bar4, 4, 0xc00f);
        assert_eq!(b.ide_bmdma_base(), Some(0xc000));
        wr(&mut b, 1, 1, bar4, 4, 0x1_0000);
        assert_eq!(b.ide_bmdma_base(), None);
        wr(&mut b, 1, 1, bar4, 4, 0);
        assert_eq!(b.ide_bmdma_base(), None);
        // Byte-wise assignment works too.
        wr(&mut b, 1, 1, bar4 + 1, 1, 0xd0);
        assert_eq!(b.ide_bmdma_base(), Some(0xd000));
        // Legacy channels decode only with IDETIM.IDE set.
        assert!(!b.ide_channel_enabled(0));
        wr(&mut b, 1, 1, 0x40, 2, 0x8000);
        assert!(b.ide_channel_enabled(0));
        assert!(!b.ide_channel_enabled(1));
        assert!(!b.ide_channel_enabled(7));
    }

    #[test]
    fn ide_timing_registers_round_trip() {
        let mut b = PciBus::i440fx();
        // The values ata_piix programs for PIO4 / UDMA2 on both channels.
        wr(&mut b, 1, 1, 0x40, 2, 0xa307);
        wr(&mut b, 1, 1, 0x42, 2, 0xe377);
        wr(&mut b, 1, 1, 0x44, 1, 0xb3);
        wr(&mut b, 1, 1, 0x48, 1, 0xff);
        wr(&mut b, 1, 1, 0x4a, 2, 0x2222);
        assert_eq!(rd(&b, 1, 1, 0x40, 4), 0xe377_a307);
        assert_eq!(rd(&b, 1, 1, 0x44, 1), 0xb3);
        assert_eq!(rd(&b, 1, 1, 0x48, 1), 0x0f);
        assert_eq!(rd(&b, 1, 1, 0x4a, 2), 0x2222);
        // Undefined registers are read-only zero.
        wr(&mut b, 1, 1, 0x80, 4, 0xffff_ffff);
        assert_eq!(rd(&b, 1, 1, 0x80, 4), 0);
    }

    #[test]
    fn pam_and_smram_round_trip() {
        let mut b = PciBus::i440fx();
        assert_eq!(b.pam(0), Some(0));
        // SeaBIOS make_bios_writable_intel: dword RMW at 0x58 and 0x5C.
        let lo = rd(&b, 0, 0, 0x58, 4);
        let hi = rd(&b, 0, 0, 0x5c, 4);
        let mut bytes = [lo.to_le_bytes(), hi.to_le_bytes()].concat();
        bytes[2..8].fill(0x33);
        bytes[1] = 0x30;
        wr(
            &mut b,
            0,
            0,
            0x58,
            4,
            u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
        );
        wr(
            &mut b,
            0,
            0,
            0x5c,
            4,
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        );
        assert_eq!(rd(&b, 0, 0, 0x59, 1) & 0x10, 0x10);
        assert_eq!(b.pam(0), Some(0x30));
        for i in 1..7 {
            assert_eq!(b.pam(i), Some(0x33));
        }
        assert_eq!(b.pam(7), None);
        assert_eq!(rd(&b, 0, 0, 0x58, 4), 0x3333_3000);
        // Reserved PAM bits do not stick.
        wr(&mut b, 0, 0, 0x5a, 1, 0xff);
        assert_eq!(b.pam(1), Some(0x33));
        // SMRAM: C_BASE_SEG read-only, open/close, lock.
        assert_eq!(b.smram(), Some(0x02));
        wr(&mut b, 0, 0, I440FX_SMRAM, 1, 0x4a);
        assert_eq!(b.smram(), Some(0x4a));
        wr(&mut b, 0, 0, I440FX_SMRAM, 1, 0x1f);
        assert_eq!(b.smram(), Some(0x1a));
        wr(&mut b, 0, 0, I440FX_SMRAM, 1, 0x40);
        assert_eq!(b.smram(), Some(0x1a), "locked: D_OPEN stays off");
        wr(&mut b, 0, 0, I440FX_SMRAM, 1, 0x38);
        assert_eq!(b.smram(), Some(0x3a), "D_CLS still writable");
    }

    #[test]
    fn pirq_routing() {
        let mut b = PciBus::i440fx();
        assert_eq!(rd(&b, 1, 0, 0x60, 4), 0x8080_8080);
        for p in 0..4 {
            assert_eq!(b.pirq_route(p), None);
        }
        // SeaBIOS routes PIRQA-D to 10, 10, 11, 11 (byte writes).
        for (i, irq) in [10u8, 10, 11, 11].into_iter().enumerate() {
            wr(&mut b, 1, 0, 0x60 + i as u8, 1, u32::from(irq));
        }
        assert_eq!(rd(&b, 1, 0, 0x60, 4), 0x0b0b_0a0a);
        assert_eq!(b.pirq_route(0), Some(10));
        assert_eq!(b.pirq_route(3), Some(11));
        assert_eq!(b.pirq_route(4), None);
        // Reserved IRQs and reserved bits.
        wr(&mut b, 1, 0, 0x61, 1, 0x72);
        assert_eq!(rd(&b, 1, 0, 0x61, 1), 0x02);
        assert_eq!(b.pirq_route(1), None);
        wr(&mut b, 1, 0, 0x62, 1, 0x8b);
        assert_eq!(b.pirq_route(2), None);
        // Other ISA bridge registers are plain storage.
        wr(&mut b, 1, 0, 0xb0, 4, 0x1234_5678);
        assert_eq!(rd(&b, 1, 0, 0xb0, 4), 0x1234_5678);
    }

    #[test]
    fn config_space_bars_and_extra_functions() {
        let mut c = ConfigSpace::new(0x1af4, 0x1041, 0x02_00_00, 1, 0);
        assert!(!c.set_bar(6, Bar::Io { size: 32 }));
        assert!(!c.set_bar(0, Bar::Io { size: 24 }));
        assert!(!c.set_bar(
            5,
            Bar::Mem64 {
                size: 0x4000,
                prefetchable: true
            }
        ));
        assert!(c.set_bar(
            1,
            Bar::Mem32 {
                size: 0x1000,
                prefetchable: false
            }
        ));
        assert!(c.set_bar(
            4,
            Bar::Mem64 {
                size: 0x4000,
                prefetchable: true
            }
        ));
        c.set_wmask(COMMAND, 0x07);
        let mut b = PciBus::i440fx();
        assert!(b.add_function(3, 0, c.clone()));
        assert!(!b.add_function(3, 0, c.clone()), "slot taken");
        assert!(!b.add_function(32, 0, c.clone()));
        assert!(!b.add_function(4, 8, c));
        assert_eq!(rd(&b, 3, 0, 0, 4), 0x1041_1af4);
        // 32-bit memory BAR sizing.
        wr(&mut b, 3, 0, 0x14, 4, 0xffff_ffff);
        assert_eq!(rd(&b, 3, 0, 0x14, 4), 0xffff_f000);
        wr(&mut b, 3, 0, 0x14, 4, 0xfebf_1000);
        // 64-bit prefetchable BAR sizing over two dwords.
        assert_eq!(rd(&b, 3, 0, 0x20, 4), 0x0000_000c);
        wr(&mut b, 3, 0, 0x20, 4, 0xffff_ffff);
        wr(&mut b, 3, 0, 0x24, 4, 0xffff_ffff);
        assert_eq!(rd(&b, 3, 0, 0x20, 4), 0xffff_c00c);
        assert_eq!(rd(&b, 3, 0, 0x24, 4), 0xffff_ffff);
        wr(&mut b, 3, 0, 0x20, 4, 0xfe00_0000);
        wr(&mut b, 3, 0, 0x24, 4, 0x0000_0001);
        let f = b.function(3, 0).unwrap();
        assert_eq!(f.bar_address(1), Some(0xfebf_1000));
        assert_eq!(f.bar_address(4), Some(0x1_fe00_0000));
        assert_eq!(f.bar_address(5), None);
        assert_eq!(f.bar_address(0), None);
        assert_eq!(f.bar_address(99), None);
        assert_eq!(
            f.bar(4),
            Some(Bar::Mem64 {
                size: 0x4000,
                prefetchable: true
            })
        );
        // ConfigSpace reads past the end read 0xFF.
        assert_eq!(f.read(0xfe, 4), 0xffff_0000);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let mut rng = Rng::new(0x0440_0f00);
        let mut b = PciBus::i440fx();
        for _ in 0..100_000 {
            let size = [1u8, 2, 4, 0, 3, 8][rng.below(6) as usize];
            match rng.below(10) {
                0..=2 => {
                    // Mostly enabled addresses to devices 0-3 on bus 0.
                    let v = if rng.chance(80) {
                        cf8(
                            if rng.chance(90) { 0 } else { rng.u8() },
                            rng.below(4) as u8,
                            rng.below(8) as u8,
                            rng.u8(),
                        )
                    } else {
                        rng.next() as u32
                    };
                    b.io_write(0xcf8, 4, v);
                }
                3..=5 => {
                    let port = 0xcf8 + rng.below(9) as u16;
                    let r = b.io_read(port, size);
                    if let Some(v) = r {
                        assert!(matches!(size, 1 | 2 | 4));
                        assert_eq!(v & !size_mask(size), 0);
                    }
                }
                6..=8 => {
                    let port = 0xcf8 + rng.below(9) as u16;
                    let v = if rng.chance(30) {
                        0xffff_ffff
                    } else {
                        rng.next() as u32
                    };
                    b.io_write(port, size, v);
                }
                _ => {
                    b.config_write(
                        rng.u8() & 1,
                        rng.below(4) as u8,
                        rng.u8(),
                        rng.u8(),
                        size,
                        rng.next() as u32,
                    );
                }
            }
            // Identity never changes.
            assert_eq!(b.config_read(0, 0, 0, 0, 4), 0x1237_8086);
            assert_eq!(b.config_read(0, 1, 0, 0x08, 4) >> 8, 0x06_01_00);
            assert_eq!(b.config_read(0, 1, 1, 0x08, 4), 0x0101_8001);
            assert_eq!(b.config_read(0, 1, 0, HEADER_TYPE, 1), 0x80);
            // IDE: legacy BARs stay 0, BAR4 stays an I/O BAR.
            for off in [0x10u8, 0x14, 0x18, 0x1c, 0x24] {
                assert_eq!(b.config_read(0, 1, 1, off, 4), 0);
            }
            assert_eq!(b.config_read(0, 1, 1, 0x20, 4) & 0xf, 1);
            assert_eq!(b.config_read(0, 1, 1, COMMAND, 2) & !0x5, 0);
            // Absent functions stay absent.
            assert_eq!(b.config_read(0, 2, 0, 0, 4), 0xffff_ffff);
            // Accessors agree with the registers.
            if let Some(base) = b.ide_bmdma_base() {
                assert_eq!(base & 0xf, 0);
                assert!(b.config_read(0, 1, 1, COMMAND, 2) & 1 != 0);
            }
            for p in 0..4 {
                if let Some(irq) = b.pirq_route(p) {
                    assert!(!matches!(irq, 0 | 1 | 2 | 8 | 13) && irq < 16);
                }
            }
            assert_eq!(b.smram().unwrap() & 0x07, 0x02);
            if b.smram().unwrap() & SMRAM_D_LCK != 0 {
                assert_eq!(b.smram().unwrap() & SMRAM_D_OPEN, 0);
            }
            assert_eq!(b.config_address() & 0x7f00_0003, 0);
        }
    }
}
