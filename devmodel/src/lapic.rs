//! Local APIC: xAPIC (MMIO) and x2APIC (MSR) register interfaces, interrupt
//! acceptance and priority, EOI, the timer (one-shot, periodic,
//! TSC-deadline), IPIs and the INIT/SIPI start-up state.
//!
//! One [`Lapic`] per vCPU. The caller:
//! * routes MMIO accesses to the 4 KiB page at [`Lapic::mmio_base`] (xAPIC
//!   mode only) to [`Lapic::read_mmio`]/[`Lapic::write_mmio`], and MSRs
//!   0x800–0x8FF to [`Lapic::read_msr`]/[`Lapic::write_msr`] (an `Err` means
//!   "inject #GP"); IA32_APIC_BASE (0x1B) goes to [`Lapic::set_apic_base`],
//!   IA32_TSC_DEADLINE (0x6E0) to [`Lapic::write_msr`]/[`Lapic::read_msr`];
//! * acts on the [`LapicEffect`] a write returns (route an IPI, broadcast a
//!   level-triggered EOI to the I/O APIC);
//! * before entering the guest: `tick(now)`, then
//!   [`Lapic::highest_pending`]; when it injects vector `v` it calls
//!   [`Lapic::ack`]`(v)`;
//! * arms a host timer for [`Lapic::next_timer_deadline_ns`] (re-query
//!   after every write and every `tick`).
//!
//! Time: the timer counts at `timer_hz` (default 1 GHz, i.e. one tick per
//! nanosecond before the divider). The guest TSC is assumed to be
//! `now_ns * tsc_hz / 1e9` (the caller's [`Clock`] starts at guest TSC 0);
//! a TSC deadline is converted with that relation.
//!
//! Start-up: INIT and SIPI IPIs are returned to the caller like any other
//! IPI; the caller delivers them to the target's LAPIC with
//! [`Lapic::receive_init`] and [`Lapic::receive_sipi`], which keep the
//! "wait for SIPI" state; `receive_sipi` returns the start page when the
//! vCPU must start (CS = vector << 8, IP = 0, real mode). Whether an INIT
//! also resets the vCPU's registers is the caller's business.
//!
//! Destinations: physical, logical flat and cluster (xAPIC DFR/LDR), and
//! x2APIC logical clusters ([`Lapic::matches_dest`]); lowest-priority
//! messages go to one of the matching APICs ([`lowest_priority`]).
//!
//! Local interrupt pins: the chipset's NMI line arrives on LINT1
//! ([`Lapic::signal_lint1`]), the 8259's INTR on LINT0
//! ([`Lapic::accepts_pic_interrupts`]).
//!
//! The task priority is also CR8 in 64-bit mode ([`Lapic::cr8`],
//! [`Lapic::write_cr8`]): the caller keeps the CPU's copy in step.
//!
//! Simplifications: the APIC ID is read-only in both modes; fixed
//! interrupts sent to a software-disabled APIC are dropped; EOI-broadcast
//! suppression and the CMCI LVT are not offered (version 0x50014: six
//! LVT entries); APR reads 0.

use crate::clock::{mul_div, ticks_to_ns_ceil};
use crate::Clock;

/// Default xAPIC MMIO base.
/// The shortest period a periodic timer fires at (as KVM's
/// `min_timer_period_us`): a count of 1 would otherwise make the vCPU exit
/// for its timer at every entry, before running a single instruction, and
/// its interrupt (waiting for the next instruction boundary) would never
/// be taken. Linux's periodic tick is milliseconds long.
pub const MIN_PERIODIC_NS: u64 = 100_000;

pub const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;
/// IA32_APIC_BASE bits.
pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// First and last x2APIC MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
pub const MSR_X2APIC_LAST: u32 = 0x8ff;

/// Version register: version 0x14, max LVT entry 5 (six LVTs).
pub const APIC_VERSION: u32 = 0x0005_0014;

/// xAPIC register offsets.
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const RRD: u32 = 0xc0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC only (MSR 0x83F).
    pub const SELF_IPI: u32 = 0x3f0;
}

pub const SVR_ENABLE: u32 = 1 << 8;
pub const LVT_MASKED: u32 = 1 << 16;
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;

/// ESR bits.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub const ESR_RECV_ILLEGAL_VECTOR: u32 = 1 << 6;
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

// LVT indices.
const LVT_TIMER: usize = 0;
const LVT_THERMAL: usize = 1;
const LVT_PERF: usize = 2;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
const NUM_LVT: usize = 6;

/// Writable bits per LVT entry (vector, delivery mode, polarity, trigger,
/// mask, timer mode).
const LVT_WRITABLE: [u32; NUM_LVT] = [
    0x0007_00ff, // timer: vector, mask, mode (2 bits)
    0x0001_07ff, // thermal: vector, delivery mode, mask
    0x0001_07ff, // perf
    0x0001_a7ff, // LINT0: + polarity, trigger
    0x0001_a7ff, // LINT1
    0x0001_00ff, // error: vector, mask
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// IA32_APIC_BASE.EN clear: the APIC is off; MMIO and MSRs do nothing.
    Disabled,
    XApic,
    X2Apic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicError {
    /// Raise #GP in the guest (bad MSR, reserved bits, read of a
    /// write-only register, invalid mode transition).
    GeneralProtection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestMode {
    Physical,
    Logical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
    /// Encoding 0b011, reserved.
    Reserved,
}

impl DeliveryMode {
    /// Decode the 3-bit delivery mode field (ICR, LVT, I/O APIC RTE).
    pub fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Startup,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// An IPI the guest asked for by writing the ICR. The caller routes it to
/// the target vCPUs' LAPICs ([`Lapic::accept`], [`Lapic::receive_init`],
/// [`Lapic::receive_sipi`], NMI injection); use [`Lapic::matches_dest`] to
/// find targets when `shorthand` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpiRequest {
    /// Destination: 8-bit xAPIC ID/logical mask, or 32-bit x2APIC value.
    pub dest: u32,
    pub dest_mode: DestMode,
    pub shorthand: Shorthand,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Level: assert (true) or de-assert.
    pub level: bool,
    /// Trigger mode: level (true) or edge.
    pub level_triggered: bool,
    /// The sender was in x2APIC mode (`dest` is a 32-bit x2APIC value).
    pub x2apic: bool,
    /// APIC ID of the sender (for the self shorthands).
    pub source: u32,
}

impl IpiRequest {
    /// The legacy "INIT level de-assert" IPI, which real CPUs ignore.
    pub fn is_init_deassert(&self) -> bool {
        self.mode == DeliveryMode::Init && !self.level && self.level_triggered
    }
}

/// What a register write asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicEffect {
    None,
    /// Route this IPI.
    Ipi(IpiRequest),
    /// A level-triggered interrupt with this vector was EOIed: broadcast
    /// the EOI to the I/O APIC(s).
    EoiBroadcast(u8),
}

/// Static configuration of a LAPIC.
#[derive(Clone, Copy, Debug)]
pub struct LapicConfig {
    /// APIC ID (x2APIC ID; the xAPIC ID is its low 8 bits).
    pub id: u32,
    /// Bootstrap processor (IA32_APIC_BASE.BSP); APs start waiting for SIPI.
    pub bsp: bool,
    /// Whether CPUID advertises x2APIC (else EXTD is a reserved bit).
    pub x2apic: bool,
    /// Timer input frequency before the divider (the "bus clock").
    pub timer_hz: u64,
    /// Guest TSC frequency, for IA32_TSC_DEADLINE.
    pub tsc_hz: u64,
    /// Physical address width (MAXPHYADDR) for the APIC base reserved bits.
    pub phys_addr_bits: u8,
}

impl LapicConfig {
    pub fn new(id: u32, bsp: bool) -> Self {
        LapicConfig {
            id,
            bsp,
            x2apic: true,
            timer_hz: 1_000_000_000,
            tsc_hz: 1_000_000_000,
            phys_addr_bits: 48,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

#[derive(Clone, Debug)]
pub struct Lapic {
    cfg: LapicConfig,
    apic_base: u64,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as last latched by a write, and errors seen since.
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; NUM_LVT],
    timer_initial: u32,
    timer_divide: u32,
    /// Start of the current one-shot/periodic count.
    timer_start_ns: u64,
    /// When the armed timer fires next (any mode).
    timer_deadline_ns: Option<u64>,
    tsc_deadline: u64,
    wait_for_sipi: bool,
}

fn bit_test(bits: &[u32; 8], v: u8) -> bool {
    bits[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn bit_set(bits: &mut [u32; 8], v: u8) {
    bits[usize::from(v >> 5)] |= 1 << (v & 31);
}

fn bit_clear(bits: &mut [u32; 8], v: u8) {
    bits[usize::from(v >> 5)] &= !(1 << (v & 31));
}

fn highest_bit(bits: &[u32; 8]) -> Option<u8> {
    (0..8usize)
        .rev()
        .find(|&i| bits[i] != 0)
        .map(|i| (i as u8) * 32 + (31 - bits[i].leading_zeros()) as u8)
}

impl Lapic {
    pub fn new(cfg: LapicConfig) -> Self {
        let mut cfg = cfg;
        cfg.phys_addr_bits = cfg.phys_addr_bits.clamp(36, 52);
        let mut l = Lapic {
            cfg,
            apic_base: DEFAULT_APIC_BASE
                | APIC_BASE_ENABLE
                | if cfg.bsp { APIC_BASE_BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_MASKED; NUM_LVT],
            timer_initial: 0,
            timer_divide: 0,
            timer_start_ns: 0,
            timer_deadline_ns: None,
            tsc_deadline: 0,
            wait_for_sipi: !cfg.bsp,
        };
        l.reset_registers();
        l
    }

    /// Power-up / INIT state of everything but the ID and APIC base.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xffff_ffff;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASKED; NUM_LVT];
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.timer_deadline_ns = None;
        self.tsc_deadline = 0;
        if self.mode() == ApicMode::X2Apic {
            self.ldr = self.x2apic_ldr();
        }
    }

    // ---- mode and identity ----

    pub fn mode(&self) -> ApicMode {
        if self.apic_base & APIC_BASE_ENABLE == 0 {
            ApicMode::Disabled
        } else if self.apic_base & APIC_BASE_EXTD != 0 {
            ApicMode::X2Apic
        } else {
            ApicMode::XApic
        }
    }

    pub fn id(&self) -> u32 {
        self.cfg.id
    }

    /// Guest-physical base of the xAPIC MMIO page.
    pub fn mmio_base(&self) -> u64 {
        self.apic_base & !0xfff & ((1u64 << self.cfg.phys_addr_bits) - 1)
    }

    /// Whether MMIO accesses should be decoded (xAPIC mode).
    pub fn mmio_enabled(&self) -> bool {
        self.mode() == ApicMode::XApic
    }

    /// The IA32_APIC_BASE MSR value.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Whether the legacy PIC's INTR reaches the CPU through this LAPIC:
    /// the LAPIC is hardware-disabled (INTR goes straight to the core), or
    /// LINT0 is unmasked (virtual-wire mode), as QEMU decides it.
    pub fn accepts_pic_interrupts(&self) -> bool {
        self.mode() == ApicMode::Disabled || self.lvt[LVT_LINT0] & LVT_MASKED == 0
    }

    /// Sets LINT0 to ExtINT, unmasked: the virtual-wire state a PC's boot
    /// processor is in when its BIOS starts (QEMU resets the BSP so), so
    /// the 8259 PIC's interrupts are delivered.
    pub fn set_virtual_wire(&mut self) {
        self.lvt[LVT_LINT0] = 0x700;
    }

    /// Hardware- and software-enabled: interrupts can be delivered.
    pub fn enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled && self.software_enabled()
    }

    fn x2apic_ldr(&self) -> u32 {
        let id = self.cfg.id;
        ((id >> 4) << 16) | (1 << (id & 0xf))
    }

    /// A guest write of IA32_APIC_BASE. Reserved bits, EXTD without x2APIC
    /// support, and the invalid transitions (x2APIC → xAPIC, disabled →
    /// x2APIC, EXTD without EN) are `Err` (#GP). The BSP bit is read-only.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), LapicError> {
        let mut reserved = !((1u64 << self.cfg.phys_addr_bits) - 1) | 0xff | (1 << 9);
        if !self.cfg.x2apic {
            reserved |= APIC_BASE_EXTD;
        }
        if value & reserved != 0 {
            return Err(LapicError::GeneralProtection);
        }
        let en = value & APIC_BASE_ENABLE != 0;
        let extd = value & APIC_BASE_EXTD != 0;
        let new_mode = match (en, extd) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(LapicError::GeneralProtection),
        };
        let old_mode = self.mode();
        match (old_mode, new_mode) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(LapicError::GeneralProtection)
            }
            _ => {}
        }
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        if old_mode != new_mode {
            match new_mode {
                ApicMode::Disabled => self.reset_registers(),
                ApicMode::X2Apic => self.ldr = self.x2apic_ldr(),
                ApicMode::XApic => {}
            }
        }
        Ok(())
    }

    // ---- INIT / SIPI ----

    /// An INIT IPI (or INIT reset) arrived: reset the APIC registers (ID
    /// and base survive) and wait for a SIPI.
    pub fn receive_init(&mut self) {
        self.reset_registers();
        self.wait_for_sipi = true;
    }

    /// A Startup IPI arrived. Returns the start page vector when the vCPU
    /// was waiting for SIPI (it must now start at `vector << 12`, real
    /// mode CS = `vector << 8`); a SIPI at a running vCPU is ignored.
    pub fn receive_sipi(&mut self, vector: u8) -> Option<u8> {
        if self.wait_for_sipi {
            self.wait_for_sipi = false;
            Some(vector)
        } else {
            None
        }
    }

    /// The vCPU must not run until a SIPI arrives.
    pub fn is_waiting_for_sipi(&self) -> bool {
        self.wait_for_sipi
    }

    // ---- interrupt state ----

    fn isrv(&self) -> u8 {
        highest_bit(&self.isr).unwrap_or(0)
    }

    /// Processor priority register.
    pub fn ppr(&self) -> u8 {
        let tpr = (self.tpr & 0xff) as u8;
        let isrv = self.isrv();
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xf0
        }
    }

    fn record_error(&mut self, bits: u32) -> bool {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if lvt & LVT_MASKED == 0 && self.enabled() {
            self.set_irr((lvt & 0xff) as u8, false)
        } else {
            false
        }
    }

    fn set_irr(&mut self, vector: u8, level: bool) -> bool {
        if vector < 16 {
            self.esr_pending |= ESR_RECV_ILLEGAL_VECTOR;
            return false;
        }
        bit_set(&mut self.irr, vector);
        if level {
            bit_set(&mut self.tmr, vector);
        } else {
            bit_clear(&mut self.tmr, vector);
        }
        true
    }

    /// Accept a fixed-mode interrupt (from an IPI, the I/O APIC or an
    /// MSI): set its IRR bit and record the trigger mode in the TMR.
    /// Returns false when it was dropped: APIC disabled (hardware or
    /// software), or an illegal vector (0–15, which also sets ESR bit 6).
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.record_error(ESR_RECV_ILLEGAL_VECTOR);
            return false;
        }
        self.set_irr(vector, level_triggered)
    }

    /// The vector to inject next, if any: the highest IRR vector whose
    /// priority class is above the PPR's.
    pub fn highest_pending(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = highest_bit(&self.irr)?;
        if v >> 4 > self.ppr() >> 4 {
            Some(v)
        } else {
            None
        }
    }

    /// Any IRR bit set at all, regardless of priority (diagnostics; a
    /// halted vCPU should wake only for [`Lapic::highest_pending`]).
    pub fn irr_nonempty(&self) -> bool {
        self.irr.iter().any(|&w| w != 0)
    }

    /// The caller injected `vector`: move it from IRR to ISR.
    pub fn ack(&mut self, vector: u8) {
        if bit_test(&self.irr, vector) {
            bit_clear(&mut self.irr, vector);
            bit_set(&mut self.isr, vector);
        }
    }

    /// End of interrupt: retire the highest in-service vector. Returns
    /// `EoiBroadcast(v)` when it was level-triggered.
    pub fn eoi(&mut self) -> LapicEffect {
        let Some(v) = highest_bit(&self.isr) else {
            return LapicEffect::None;
        };
        bit_clear(&mut self.isr, v);
        if bit_test(&self.tmr, v) {
            bit_clear(&mut self.tmr, v);
            LapicEffect::EoiBroadcast(v)
        } else {
            LapicEffect::None
        }
    }

    pub fn irr_bit(&self, vector: u8) -> bool {
        bit_test(&self.irr, vector)
    }

    pub fn isr_bit(&self, vector: u8) -> bool {
        bit_test(&self.isr, vector)
    }

    // ---- task priority as CR8 ----

    /// CR8 as the guest reads it in 64-bit mode: TPR bits 7:4 (SDM 10.8.6.1).
    pub fn cr8(&self) -> u8 {
        (self.tpr >> 4) as u8
    }

    /// A write of CR8 (done by the CPU, which keeps its own copy, or
    /// intercepted): TPR bits 7:4 from CR8 bits 3:0, bits 3:0 cleared.
    /// Bits 63:4 are reserved (`Err`: #GP).
    pub fn write_cr8(&mut self, value: u64) -> Result<(), LapicError> {
        if value > 0xf {
            return Err(LapicError::GeneralProtection);
        }
        self.tpr = (value as u32) << 4;
        Ok(())
    }

    /// An interrupt waits in the IRR that the task priority holds back (its
    /// class is not above the TPR's): lowering CR8, which the CPU may do
    /// without an exit, would let it in, so the caller should make CR8
    /// writes exit meanwhile (KVM's `update_cr8_intercept`).
    pub fn tpr_holds_back(&self) -> bool {
        self.mode() != ApicMode::Disabled
            && highest_bit(&self.irr).is_some_and(|v| v >> 4 <= (self.tpr >> 4) as u8)
    }

    // ---- timer ----

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt[LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot, // 3 is reserved; treated as one-shot
        }
    }

    fn divisor(&self) -> u64 {
        let d = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        if d == 7 {
            1
        } else {
            2 << d
        }
    }

    /// Nanoseconds for `ticks` timer ticks after the divider.
    fn ticks_ns(&self, ticks: u64) -> u64 {
        ticks_to_ns_ceil(
            ticks.saturating_mul(self.divisor()),
            self.cfg.timer_hz,
            1_000_000_000,
        )
    }

    /// A periodic timer's period: the count's length, but never under
    /// [`MIN_PERIODIC_NS`].
    fn period_ns(&self) -> u64 {
        self.ticks_ns(u64::from(self.timer_initial)).max(MIN_PERIODIC_NS)
    }

    fn elapsed_ticks(&self, now: u64) -> u64 {
        let ns = now.saturating_sub(self.timer_start_ns);
        mul_div(ns, self.cfg.timer_hz, 1_000_000_000) / self.divisor()
    }

    fn start_count(&mut self, now: u64) {
        self.timer_start_ns = now;
        self.timer_deadline_ns = if self.timer_initial == 0 {
            None
        } else if self.timer_mode() == TimerMode::Periodic {
            Some(now.saturating_add(self.period_ns()))
        } else {
            Some(now.saturating_add(self.ticks_ns(u64::from(self.timer_initial))))
        };
    }

    fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == TimerMode::TscDeadline || self.timer_initial == 0 {
            return 0;
        }
        let init = u64::from(self.timer_initial);
        let elapsed = self.elapsed_ticks(now);
        match self.timer_mode() {
            TimerMode::Periodic => (init - elapsed % init) as u32,
            _ => {
                if self.timer_deadline_ns.is_none() || elapsed >= init {
                    0
                } else {
                    (init - elapsed) as u32
                }
            }
        }
    }

    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        ticks_to_ns_ceil(tsc, self.cfg.tsc_hz, 1_000_000_000)
    }

    fn arm_tsc_deadline(&mut self) {
        self.timer_deadline_ns = if self.tsc_deadline == 0 {
            None
        } else {
            Some(self.tsc_to_ns(self.tsc_deadline))
        };
    }

    /// When the host must call [`Lapic::tick`] next, in [`Clock`] ns.
    /// `None`: the timer is not armed. A masked timer still counts (and
    /// reports a deadline); it just delivers nothing.
    pub fn next_timer_deadline_ns(&self) -> Option<u64> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        self.timer_deadline_ns
    }

    /// Advance the timer to `now`. Returns true when it expired (and set
    /// the LVT timer vector in the IRR unless masked). Periodic timers
    /// re-arm; periods missed entirely are coalesced into one interrupt.
    pub fn tick(&mut self, now: u64) -> bool {
        let Some(deadline) = self.timer_deadline_ns else {
            return false;
        };
        if now < deadline || self.mode() == ApicMode::Disabled {
            return false;
        }
        match self.timer_mode() {
            TimerMode::Periodic if self.timer_initial != 0 => {
                let period = self.period_ns();
                let behind = now.saturating_sub(deadline) / period + 1;
                let next = deadline.saturating_add(behind.saturating_mul(period));
                // Keep the counter phase consistent with the new deadline.
                self.timer_start_ns = next.saturating_sub(period);
                self.timer_deadline_ns = Some(next);
            }
            TimerMode::TscDeadline => {
                self.tsc_deadline = 0;
                self.timer_deadline_ns = None;
            }
            _ => self.timer_deadline_ns = None,
        }
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED == 0 && self.enabled() {
            self.set_irr((lvt & 0xff) as u8, false);
        }
        true
    }

    // ---- register file ----

    fn write_lvt(&mut self, idx: usize, value: u32) {
        let mut v = value & LVT_WRITABLE[idx];
        if !self.software_enabled() {
            v |= LVT_MASKED;
        }
        if idx == LVT_TIMER {
            let old_mode = self.timer_mode();
            self.lvt[idx] = v;
            let new_mode = self.timer_mode();
            // Switching between TSC-deadline and count modes disarms;
            // between one-shot and periodic a running count goes on (its
            // deadline is the same; `tick` decides whether to re-arm).
            if old_mode != new_mode
                && (old_mode == TimerMode::TscDeadline || new_mode == TimerMode::TscDeadline)
            {
                self.timer_deadline_ns = None;
                self.timer_initial = 0;
                self.tsc_deadline = 0;
            }
        } else {
            self.lvt[idx] = v;
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & 0x3ff;
        if !self.software_enabled() {
            for l in self.lvt.iter_mut() {
                *l |= LVT_MASKED;
            }
        }
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        let left = self.current_count(now);
        self.timer_divide = value & 0xb;
        // A running count keeps its remaining ticks at the new rate.
        if self.timer_mode() != TimerMode::TscDeadline
            && self.timer_deadline_ns.is_some()
            && left > 0
        {
            let init = u64::from(self.timer_initial);
            let done = init - u64::from(left).min(init);
            self.timer_start_ns = now.saturating_sub(self.ticks_ns(done));
            self.timer_deadline_ns = Some(now.saturating_add(self.ticks_ns(u64::from(left))));
        }
    }

    fn send_ipi(&mut self, low: u32, high: u32) -> LapicEffect {
        let x2 = self.mode() == ApicMode::X2Apic;
        let mode = DeliveryMode::from_bits(low >> 8);
        let vector = (low & 0xff) as u8;
        let shorthand = match (low >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.record_error(ESR_SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        if mode == DeliveryMode::Reserved {
            return LapicEffect::None;
        }
        LapicEffect::Ipi(IpiRequest {
            dest: if x2 { high } else { high >> 24 },
            dest_mode: if low & (1 << 11) != 0 {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            shorthand,
            mode,
            vector,
            level: low & (1 << 14) != 0 || !matches!(mode, DeliveryMode::Init),
            level_triggered: low & (1 << 15) != 0,
            x2apic: x2,
            source: self.cfg.id,
        })
    }

    /// Read a register by xAPIC offset (bits 4–11 of the MMIO offset).
    /// `None` for a register that does not exist in the current mode.
    fn read_reg(&mut self, reg: u32, now: u64) -> Option<u32> {
        let x2 = self.mode() == ApicMode::X2Apic;
        Some(match reg {
            reg::ID => {
                if x2 {
                    self.cfg.id
                } else {
                    (self.cfg.id & 0xff) << 24
                }
            }
            reg::VERSION => APIC_VERSION,
            reg::TPR => self.tpr,
            reg::APR if !x2 => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::RRD if !x2 => 0,
            reg::LDR => self.ldr,
            reg::DFR if !x2 => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[((reg - reg::ISR) >> 4) as usize],
            0x180..=0x1f0 => self.tmr[((reg - reg::TMR) >> 4) as usize],
            0x200..=0x270 => self.irr[((reg - reg::IRR) >> 4) as usize],
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low & !(1 << 12), // delivery status: idle
            reg::ICR_HIGH if !x2 => self.icr_high,
            reg::LVT_TIMER => self.lvt[LVT_TIMER],
            reg::LVT_THERMAL => self.lvt[LVT_THERMAL],
            reg::LVT_PERF => self.lvt[LVT_PERF],
            reg::LVT_LINT0 => self.lvt[LVT_LINT0],
            reg::LVT_LINT1 => self.lvt[LVT_LINT1],
            reg::LVT_ERROR => self.lvt[LVT_ERROR],
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        })
    }

    /// Write a register by xAPIC offset. `Err` for a register that does
    /// not exist or is read-only (x2APIC: #GP; xAPIC: ignored).
    fn write_reg(&mut self, reg: u32, value: u32, now: u64) -> Result<LapicEffect, LapicError> {
        let x2 = self.mode() == ApicMode::X2Apic;
        let gp = Err(LapicError::GeneralProtection);
        match reg {
            reg::TPR => self.tpr = value & 0xff,
            reg::EOI => {
                if x2 && value != 0 {
                    return gp;
                }
                return Ok(self.eoi());
            }
            reg::LDR if !x2 => self.ldr = value & 0xff00_0000,
            reg::DFR if !x2 => self.dfr = value | 0x0fff_ffff,
            reg::SVR => self.write_svr(value),
            reg::ESR => {
                if x2 && value != 0 {
                    return gp;
                }
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW => {
                self.icr_low = value & 0x000c_cfff;
                return Ok(self.send_ipi(self.icr_low, self.icr_high));
            }
            reg::ICR_HIGH if !x2 => self.icr_high = value & 0xff00_0000,
            reg::LVT_TIMER => self.write_lvt(LVT_TIMER, value),
            reg::LVT_THERMAL => self.write_lvt(LVT_THERMAL, value),
            reg::LVT_PERF => self.write_lvt(LVT_PERF, value),
            reg::LVT_LINT0 => self.write_lvt(LVT_LINT0, value),
            reg::LVT_LINT1 => self.write_lvt(LVT_LINT1, value),
            reg::LVT_ERROR => self.write_lvt(LVT_ERROR, value),
            reg::TIMER_INITIAL => {
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.timer_initial = value;
                    self.start_count(now);
                }
            }
            reg::TIMER_DIVIDE => self.write_divide(value, now),
            reg::SELF_IPI if x2 => {
                self.accept((value & 0xff) as u8, false);
            }
            // Read-only (ID, version, PPR, ISR, ...) or absent.
            _ => return gp,
        }
        Ok(LapicEffect::None)
    }

    /// A guest read of the xAPIC MMIO page at `offset` (0..4096) with an
    /// access of `size` bytes (1, 2, 4 or 8). Registers are 32 bits wide
    /// at 16-byte boundaries; a read within one returns the addressed bytes,
    /// anything else reads 0. Outside xAPIC mode the page reads as all ones
    /// (nothing decodes it).
    pub fn read_mmio(&mut self, offset: u64, size: u8, clock: &dyn Clock) -> u64 {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        if !self.mmio_enabled() || offset >= 0x1000 {
            return mask;
        }
        let within = (offset & 0xf) as u32;
        if within >= 4 {
            return 0;
        }
        let reg = (offset as u32) & 0xff0;
        if reg == reg::SELF_IPI {
            return 0;
        }
        let v = self.read_reg(reg, clock.now_ns()).unwrap_or_else(|| {
            self.record_error(ESR_ILLEGAL_REGISTER);
            0
        });
        (u64::from(v) >> (within * 8)) & mask
    }

    /// A guest write of the xAPIC MMIO page. Only aligned 32-bit writes
    /// (or wider, of which the low 32 bits count) take effect, as on KVM;
    /// writes to read-only or absent registers are ignored.
    pub fn write_mmio(
        &mut self,
        offset: u64,
        size: u8,
        value: u64,
        clock: &dyn Clock,
    ) -> LapicEffect {
        if !self.mmio_enabled() || offset >= 0x1000 || offset & 0xf != 0 || size < 4 {
            return LapicEffect::None;
        }
        let reg = offset as u32;
        if reg == reg::SELF_IPI {
            return LapicEffect::None;
        }
        match self.write_reg(reg, value as u32, clock.now_ns()) {
            Ok(e) => e,
            Err(_) => {
                if self.read_reg(reg, clock.now_ns()).is_none() {
                    self.record_error(ESR_ILLEGAL_REGISTER);
                }
                LapicEffect::None
            }
        }
    }

    /// Whether `msr` is one this model handles (x2APIC range or
    /// IA32_TSC_DEADLINE). IA32_APIC_BASE is separate.
    pub fn handles_msr(msr: u32) -> bool {
        (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) || msr == MSR_TSC_DEADLINE
    }

    /// A guest RDMSR. x2APIC MSRs outside x2APIC mode, absent registers and
    /// write-only ones (EOI, self-IPI) are `Err` (#GP).
    pub fn read_msr(&mut self, msr: u32, clock: &dyn Clock) -> Result<u64, LapicError> {
        if msr == MSR_TSC_DEADLINE {
            return Ok(if self.timer_mode() == TimerMode::TscDeadline {
                self.tsc_deadline
            } else {
                0
            });
        }
        if self.mode() != ApicMode::X2Apic || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return Err(LapicError::GeneralProtection);
        }
        let reg = (msr - MSR_X2APIC_FIRST) << 4;
        if reg == reg::ICR_LOW {
            return Ok((u64::from(self.icr_high) << 32) | u64::from(self.icr_low & !(1 << 12)));
        }
        if matches!(reg, reg::EOI | reg::SELF_IPI) {
            return Err(LapicError::GeneralProtection);
        }
        self.read_reg(reg, clock.now_ns())
            .map(u64::from)
            .ok_or(LapicError::GeneralProtection)
    }

    /// A guest WRMSR of an x2APIC register or IA32_TSC_DEADLINE.
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        clock: &dyn Clock,
    ) -> Result<LapicEffect, LapicError> {
        let now = clock.now_ns();
        if msr == MSR_TSC_DEADLINE {
            // Ignored outside TSC-deadline mode.
            if self.timer_mode() == TimerMode::TscDeadline && self.mode() != ApicMode::Disabled {
                self.tsc_deadline = value;
                self.arm_tsc_deadline();
            }
            return Ok(LapicEffect::None);
        }
        if self.mode() != ApicMode::X2Apic || !(MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr) {
            return Err(LapicError::GeneralProtection);
        }
        let reg = (msr - MSR_X2APIC_FIRST) << 4;
        if reg == reg::ICR_LOW {
            self.icr_high = (value >> 32) as u32;
            self.icr_low = value as u32 & 0x000c_cfff;
            return Ok(self.send_ipi(self.icr_low, self.icr_high));
        }
        // All other x2APIC registers are 32 bits; upper half reserved.
        if value >> 32 != 0 {
            return Err(LapicError::GeneralProtection);
        }
        match reg {
            reg::TPR if value > 0xff => Err(LapicError::GeneralProtection),
            reg::SELF_IPI if value > 0xff => Err(LapicError::GeneralProtection),
            _ => self.write_reg(reg, value as u32, now),
        }
    }
}

mod delivery;
pub use delivery::{lowest_priority, Lint1Delivery};

#[cfg(test)]
mod tests;
