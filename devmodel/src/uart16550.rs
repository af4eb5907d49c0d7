//! 16550A UART.
//!
//! Register offsets 0–7 from the port base (COM1 = 0x3F8, IRQ 4). Bytes the
//! guest transmits collect in an output buffer the caller drains with
//! [`Uart16550::take_output`]; bytes for the guest go in with
//! [`Uart16550::push_input`]. Transmission is instantaneous, except that a
//! full output buffer (the caller is not draining) reads as "THR not empty",
//! which gives the guest back-pressure instead of losing bytes.
//!
//! Interrupts: [`Uart16550::irq_pending`] is the level of the IRQ pin as a PC
//! wires it (gated by MCR.OUT2, and low in loopback mode); poll it after
//! every access and after `push_input`/`take_output`.
//!
//! The receive "character timeout" is approximated as immediate: data below
//! the FIFO trigger level reports IIR = 0xC (timeout) at once, so a guest
//! never waits for it.
//!
//! Linux's 8250 autoconfig identifies this model as a 16550A: the scratch
//! and IER tests pass, the loopback MSR test reads 0x90, IIR bits 6–7 read
//! 0b11 once FIFOs are enabled, IIR bits 4–5 stay clear (no EFR, no 64-byte
//! FIFO) and IER bits 4–7 are not writable.

use alloc::vec::Vec;

/// Register offsets.
pub const RBR_THR_DLL: u8 = 0;
pub const IER_DLM: u8 = 1;
pub const IIR_FCR: u8 = 2;
pub const LCR: u8 = 3;
pub const MCR: u8 = 4;
pub const LSR: u8 = 5;
pub const MSR: u8 = 6;
pub const SCR: u8 = 7;

pub const IER_RDI: u8 = 1 << 0;
pub const IER_THRI: u8 = 1 << 1;
pub const IER_RLSI: u8 = 1 << 2;
pub const IER_MSI: u8 = 1 << 3;

pub const IIR_NO_INT: u8 = 0x01;
pub const IIR_MSI: u8 = 0x00;
pub const IIR_THRI: u8 = 0x02;
pub const IIR_RDI: u8 = 0x04;
pub const IIR_RLSI: u8 = 0x06;
pub const IIR_TIMEOUT: u8 = 0x0c;
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

pub const FCR_ENABLE_FIFO: u8 = 1 << 0;
pub const FCR_CLEAR_RCVR: u8 = 1 << 1;
pub const FCR_CLEAR_XMIT: u8 = 1 << 2;

pub const LCR_DLAB: u8 = 1 << 7;

pub const MCR_DTR: u8 = 1 << 0;
pub const MCR_RTS: u8 = 1 << 1;
pub const MCR_OUT1: u8 = 1 << 2;
pub const MCR_OUT2: u8 = 1 << 3;
pub const MCR_LOOP: u8 = 1 << 4;

pub const LSR_DR: u8 = 1 << 0;
pub const LSR_OE: u8 = 1 << 1;
pub const LSR_BI: u8 = 1 << 4;
pub const LSR_THRE: u8 = 1 << 5;
pub const LSR_TEMT: u8 = 1 << 6;

pub const MSR_DCTS: u8 = 1 << 0;
pub const MSR_DDSR: u8 = 1 << 1;
pub const MSR_TERI: u8 = 1 << 2;
pub const MSR_DDCD: u8 = 1 << 3;
pub const MSR_CTS: u8 = 1 << 4;
pub const MSR_DSR: u8 = 1 << 5;
pub const MSR_RI: u8 = 1 << 6;
pub const MSR_DCD: u8 = 1 << 7;

/// Depth of the receive FIFO.
pub const FIFO_SIZE: usize = 16;
/// Default limit of the transmit buffer before THRE reads as busy.
pub const DEFAULT_TX_LIMIT: usize = 4096;

#[derive(Clone, Debug)]
pub struct Uart16550 {
    rx: [u8; FIFO_SIZE],
    rx_head: usize,
    rx_len: usize,
    tx: Vec<u8>,
    tx_limit: usize,
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// Error bits of the LSR (OE, BI), cleared by reading the LSR.
    lsr_err: u8,
    /// Modem status inputs (bits 4–7) when not in loopback, and delta bits.
    msr_in: u8,
    msr_delta: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// THRE interrupt latch: set when the THR becomes empty or THRI is
    /// enabled while it is empty; cleared by reading IIR (when THRE is the
    /// reported source) or writing THR.
    thr_ipending: bool,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// A UART in its reset state with the modem lines "connected"
    /// (DCD, DSR, CTS asserted) and the default transmit limit.
    pub fn new() -> Self {
        Self::with_tx_limit(DEFAULT_TX_LIMIT)
    }

    /// As [`Uart16550::new`], with the output buffer bounded to `limit`
    /// bytes (at least 1).
    pub fn with_tx_limit(limit: usize) -> Self {
        Uart16550 {
            rx: [0; FIFO_SIZE],
            rx_head: 0,
            rx_len: 0,
            tx: Vec::new(),
            tx_limit: limit.max(1),
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_err: 0,
            msr_in: MSR_DCD | MSR_DSR | MSR_CTS,
            msr_delta: 0,
            scr: 0,
            dll: 0x0c, // 9600 baud from 1.8432 MHz
            dlm: 0,
            thr_ipending: false,
        }
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE_FIFO != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn trigger_level(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn thr_empty(&self) -> bool {
        self.tx.len() < self.tx_limit
    }

    fn clear_rx(&mut self) {
        self.rx_head = 0;
        self.rx_len = 0;
    }

    fn rx_push(&mut self, byte: u8) -> bool {
        if self.rx_len >= self.rx_capacity() {
            self.lsr_err |= LSR_OE;
            return false;
        }
        let idx = (self.rx_head + self.rx_len) % FIFO_SIZE;
        self.rx[idx] = byte;
        self.rx_len += 1;
        true
    }

    fn rx_pop(&mut self) -> u8 {
        if self.rx_len == 0 {
            return 0;
        }
        let b = self.rx[self.rx_head];
        self.rx_head = (self.rx_head + 1) % FIFO_SIZE;
        self.rx_len -= 1;
        b
    }

    /// Modem status inputs as the MSR shows them (bits 4–7).
    fn msr_status(&self) -> u8 {
        if self.loopback() {
            let m = self.mcr;
            let mut s = 0;
            if m & MCR_RTS != 0 {
                s |= MSR_CTS;
            }
            if m & MCR_DTR != 0 {
                s |= MSR_DSR;
            }
            if m & MCR_OUT1 != 0 {
                s |= MSR_RI;
            }
            if m & MCR_OUT2 != 0 {
                s |= MSR_DCD;
            }
            s
        } else {
            self.msr_in & 0xf0
        }
    }

    fn note_msr_change(&mut self, old: u8, new: u8) {
        let changed = old ^ new;
        if changed & MSR_CTS != 0 {
            self.msr_delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_delta |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            self.msr_delta |= MSR_DDCD;
        }
        // Trailing edge of RI.
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_delta |= MSR_TERI;
        }
    }

    /// The interrupt identification the IIR would show now (low 4 bits),
    /// or `None` when nothing is pending.
    fn pending_source(&self) -> Option<u8> {
        if self.ier & IER_RLSI != 0 && self.lsr_err != 0 {
            return Some(IIR_RLSI);
        }
        if self.ier & IER_RDI != 0 && self.rx_len > 0 {
            return Some(if self.rx_len >= self.trigger_level() {
                IIR_RDI
            } else {
                IIR_TIMEOUT
            });
        }
        if self.ier & IER_THRI != 0 && self.thr_ipending {
            return Some(IIR_THRI);
        }
        if self.ier & IER_MSI != 0 && self.msr_delta != 0 {
            return Some(IIR_MSI);
        }
        None
    }

    fn lsr(&self) -> u8 {
        let mut v = self.lsr_err;
        if self.rx_len > 0 {
            v |= LSR_DR;
        }
        if self.thr_empty() {
            v |= LSR_THRE | LSR_TEMT;
        }
        v
    }

    fn iir(&self) -> u8 {
        let fifo = if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        fifo | self.pending_source().unwrap_or(IIR_NO_INT)
    }

    /// A guest read of register `offset` (only the low 3 bits are decoded,
    /// as on an ISA card). Reads have side effects (RBR pops, IIR clears
    /// the THRE interrupt, LSR clears errors, MSR clears deltas).
    pub fn read(&mut self, offset: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset & 7 {
            RBR_THR_DLL if dlab => self.dll,
            RBR_THR_DLL => self.rx_pop(),
            IER_DLM if dlab => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => {
                let v = self.iir();
                if v & 0x0f == IIR_THRI {
                    self.thr_ipending = false;
                }
                v
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr();
                self.lsr_err = 0;
                v
            }
            MSR => {
                let v = self.msr_status() | self.msr_delta;
                self.msr_delta = 0;
                v
            }
            _ => self.scr,
        }
    }

    /// A guest write of `value` to register `offset` (low 3 bits decoded).
    pub fn write(&mut self, offset: u8, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset & 7 {
            RBR_THR_DLL if dlab => self.dll = value,
            RBR_THR_DLL => {
                if self.loopback() {
                    self.rx_push(value);
                } else if self.thr_empty() {
                    self.tx.push(value);
                }
                // Transmission is instantaneous: the THR is empty again
                // unless the caller has stopped draining the output.
                self.thr_ipending = self.thr_empty();
            }
            IER_DLM if dlab => self.dlm = value,
            IER_DLM => {
                let old = self.ier;
                self.ier = value & 0x0f;
                if (self.ier ^ old) & IER_THRI != 0 && self.ier & IER_THRI != 0 && self.thr_empty()
                {
                    self.thr_ipending = true;
                }
            }
            IIR_FCR => {
                if (value ^ self.fcr) & FCR_ENABLE_FIFO != 0 {
                    self.clear_rx();
                }
                if value & FCR_CLEAR_RCVR != 0 {
                    self.clear_rx();
                }
                // Bits 1-2 self-clear; bits 3-5 (DMA mode, 64-byte FIFO)
                // are not implemented.
                self.fcr = value & (FCR_ENABLE_FIFO | 0xc0);
                if !self.fifo_enabled() {
                    self.fcr = 0;
                }
            }
            LCR => self.lcr = value,
            MCR => {
                let old = self.msr_status();
                self.mcr = value & 0x1f;
                let new = self.msr_status();
                self.note_msr_change(old, new);
            }
            LSR | MSR => {} // factory test registers: writes ignored
            _ => self.scr = value,
        }
    }

    /// Level of the UART's IRQ pin: an interrupt condition is pending and
    /// enabled, and MCR.OUT2 (the PC's interrupt gate) is set outside
    /// loopback mode.
    pub fn irq_pending(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.pending_source().is_some()
    }

    /// Whether an enabled interrupt condition is pending, ignoring OUT2 and
    /// loopback gating (what IIR bit 0 shows).
    pub fn interrupt_condition(&self) -> bool {
        self.pending_source().is_some()
    }

    /// Deliver a received byte to the guest. Returns false (and flags an
    /// overrun, as the hardware would) when the receive FIFO is full; in
    /// loopback mode the line is disconnected and the byte is dropped.
    pub fn push_input(&mut self, byte: u8) -> bool {
        if self.loopback() {
            return false;
        }
        self.rx_push(byte)
    }

    /// How many more bytes [`Uart16550::push_input`] accepts now; a caller
    /// with a backlog can feed exactly this many without overrunning.
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity().saturating_sub(self.rx_len)
        }
    }

    /// Take the bytes the guest has transmitted since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        let was_full = !self.thr_empty();
        let out = core::mem::take(&mut self.tx);
        if was_full {
            self.thr_ipending = true;
        }
        out
    }

    /// Bytes transmitted and not yet taken.
    pub fn pending_output(&self) -> &[u8] {
        &self.tx
    }

    /// Set the modem status inputs (CTS, DSR, RI, DCD) seen outside
    /// loopback mode; changes set the MSR delta bits.
    pub fn set_modem_inputs(&mut self, cts: bool, dsr: bool, ri: bool, dcd: bool) {
        let old = self.msr_in;
        let mut new = 0;
        for (on, bit) in [(cts, MSR_CTS), (dsr, MSR_DSR), (ri, MSR_RI), (dcd, MSR_DCD)] {
            if on {
                new |= bit;
            }
        }
        self.msr_in = new;
        if !self.loopback() {
            self.note_msr_change(old, new);
        }
    }

    /// The programmed divisor latch (DLM:DLL); 0 reads as 0.
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_len(&self) -> usize {
        self.rx_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// The register sequence of Linux's `autoconfig()` /
    /// `autoconfig_16550a()` in drivers/tty/serial/8250/8250_port.c.
    /// Returns the name Linux would give the port.
    fn linux_autoconfig(u: &mut Uart16550) -> &'static str {
        // IER scratch test.
        let scratch = u.read(IER_DLM);
        u.write(IER_DLM, 0);
        let scratch2 = u.read(IER_DLM) & 0x0f;
        u.write(IER_DLM, 0x0f);
        let scratch3 = u.read(IER_DLM) & 0x0f;
        u.write(IER_DLM, scratch);
        if scratch2 != 0 || scratch3 != 0x0f {
            return "none";
        }
        let save_mcr = u.read(MCR);
        let save_lcr = u.read(LCR);
        // Loopback test.
        u.write(MCR, MCR_LOOP | 0x0a);
        let status1 = u.read(MSR) & 0xf0;
        u.write(MCR, save_mcr);
        if status1 != 0x90 {
            return "loopback-failed";
        }
        // EFR probe with LCR = 0xBF.
        u.write(LCR, 0xbf);
        u.write(2, 0); // EFR (IIR/FCR on a 16550A: FCR = 0)
        u.write(LCR, 0);
        u.write(IIR_FCR, FCR_ENABLE_FIFO);
        let scratch = u.read(IIR_FCR) >> 6;
        let mut kind = match scratch {
            0 => "8250/16450",
            1 => "unknown",
            2 => "16550",
            _ => "16550A",
        };
        if scratch == 3 {
            // autoconfig_16550a
            u.write(LCR, 0xbf);
            if u.read(2) == 0 {
                kind = "16650+";
            }
            u.write(LCR, 0x80);
            if u.read(2) == 0 {
                kind = "16650";
            }
            // NS SuperIO check.
            u.write(LCR, 0);
            let s1 = u.read(MCR);
            u.write(LCR, 0xe0);
            let mut s2 = u.read(2);
            if (s2 ^ s1) & MCR_LOOP == 0 {
                u.write(LCR, 0);
                u.write(MCR, s1 ^ MCR_LOOP);
                u.write(LCR, 0xe0);
                s2 = u.read(2);
                u.write(LCR, 0);
                u.write(MCR, s1);
                if (s2 ^ s1) & MCR_LOOP != 0 {
                    kind = "NS16550A";
                }
            }
            // TI16750 check.
            u.write(LCR, 0);
            u.write(IIR_FCR, FCR_ENABLE_FIFO | 0x20);
            let st1 = u.read(IIR_FCR) & 0xe0;
            u.write(IIR_FCR, FCR_ENABLE_FIFO);
            u.write(LCR, 0x80);
            u.write(IIR_FCR, FCR_ENABLE_FIFO | 0x20);
            let st2 = u.read(IIR_FCR) & 0xe0;
            u.write(IIR_FCR, FCR_ENABLE_FIFO);
            u.write(LCR, 0);
            if st1 == 0xc0 && st2 == 0xe0 {
                kind = "16750";
            }
            // XScale UUE bit.
            let iersave = u.read(IER_DLM);
            u.write(IER_DLM, iersave | 0x40);
            if u.read(IER_DLM) & 0x40 != 0 {
                kind = "XScale";
            }
            u.write(IER_DLM, iersave);
        }
        u.write(LCR, save_lcr);
        // serial8250_clear_fifos
        u.write(IIR_FCR, FCR_ENABLE_FIFO);
        u.write(IIR_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT);
        u.write(IIR_FCR, 0);
        kind
    }

    #[test]
    fn linux_identifies_16550a() {
        let mut u = Uart16550::new();
        assert_eq!(linux_autoconfig(&mut u), "16550A");
        // The probe leaves no interrupt or error behind.
        assert_eq!(u.read(LSR) & (LSR_OE | LSR_DR), 0);
        assert!(!u.irq_pending());
    }

    #[test]
    fn scratch_and_divisor_latch() {
        let mut u = Uart16550::new();
        u.write(SCR, 0x5a);
        assert_eq!(u.read(SCR), 0x5a);
        u.write(LCR, LCR_DLAB | 0x03);
        u.write(RBR_THR_DLL, 0x01);
        u.write(IER_DLM, 0x00);
        assert_eq!(u.read(RBR_THR_DLL), 0x01);
        assert_eq!(u.divisor(), 1);
        u.write(LCR, 0x03);
        // DLL writes did not transmit and IER is untouched.
        assert!(u.pending_output().is_empty());
        assert_eq!(u.read(IER_DLM), 0);
        assert_eq!(u.read(LCR), 0x03);
    }

    #[test]
    fn transmit_and_thre_interrupt() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert!(!u.irq_pending());
        u.write(IER_DLM, IER_THRI);
        assert!(u.irq_pending());
        assert_eq!(u.read(IIR_FCR), IIR_THRI);
        // Reading IIR cleared the THRE interrupt.
        assert!(!u.irq_pending());
        assert_eq!(u.read(IIR_FCR), IIR_NO_INT);
        for &b in b"hi\n" {
            u.write(RBR_THR_DLL, b);
        }
        assert!(u.irq_pending());
        assert_eq!(u.take_output(), b"hi\n");
        assert!(u.take_output().is_empty());
        // Writing THR clears, transmission sets again.
        u.read(IIR_FCR);
        assert!(!u.irq_pending());
        // Linux's UART_BUG_THRE test: IER 0 then THRI re-asserts THRE.
        u.write(IER_DLM, 0);
        u.write(IER_DLM, IER_THRI);
        assert_eq!(u.read(IIR_FCR) & IIR_NO_INT, 0);
    }

    #[test]
    fn out2_gates_the_irq_pin() {
        let mut u = Uart16550::new();
        u.write(IER_DLM, IER_THRI);
        assert!(u.interrupt_condition());
        assert!(!u.irq_pending());
        u.write(MCR, MCR_OUT2);
        assert!(u.irq_pending());
    }

    #[test]
    fn receive_fifo_levels_and_overrun() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_OUT2);
        u.write(IER_DLM, IER_RDI | IER_RLSI);
        // Non-FIFO mode: one byte deep.
        assert!(u.push_input(b'a'));
        assert!(!u.push_input(b'b'));
        assert_eq!(u.read(IIR_FCR), IIR_RLSI);
        assert_eq!(u.read(LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(u.read(IIR_FCR), IIR_RDI);
        assert_eq!(u.read(RBR_THR_DLL), b'a');
        assert!(!u.irq_pending());
        // FIFO mode, trigger level 8.
        u.write(IIR_FCR, FCR_ENABLE_FIFO | 0x80);
        assert_eq!(u.rx_space(), 16);
        for i in 0..5 {
            u.push_input(i);
        }
        assert_eq!(u.read(IIR_FCR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
        for i in 5..16 {
            assert!(u.push_input(i));
        }
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.read(IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI);
        assert!(!u.push_input(99));
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
        for i in 0..16 {
            assert_eq!(u.read(RBR_THR_DLL), i);
        }
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        assert_eq!(u.read(IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
        // Reading an empty RBR is harmless.
        assert_eq!(u.read(RBR_THR_DLL), 0);
        // FCR clear.
        u.push_input(1);
        u.write(IIR_FCR, FCR_ENABLE_FIFO | FCR_CLEAR_RCVR);
        assert_eq!(u.rx_len(), 0);
    }

    #[test]
    fn loopback_echoes_and_maps_modem_lines() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_LOOP);
        assert_eq!(u.read(MSR) & 0xf0, 0);
        u.write(MCR, MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2);
        let msr = u.read(MSR);
        assert_eq!(msr & 0xf0, 0xf0);
        assert_eq!(msr & 0x0f, MSR_DCTS | MSR_DDSR | MSR_DDCD);
        assert_eq!(u.read(MSR) & 0x0f, 0);
        u.write(RBR_THR_DLL, 0x42);
        assert!(u.pending_output().is_empty());
        assert_eq!(u.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(u.read(RBR_THR_DLL), 0x42);
        assert!(!u.push_input(1));
        u.write(MCR, 0);
        assert_eq!(u.read(MSR) & 0xf0, MSR_DCD | MSR_DSR | MSR_CTS);
    }

    #[test]
    fn full_output_buffer_applies_backpressure() {
        let mut u = Uart16550::with_tx_limit(4);
        u.write(MCR, MCR_OUT2);
        u.write(IER_DLM, IER_THRI);
        u.read(IIR_FCR);
        for b in 0..6 {
            u.write(RBR_THR_DLL, b);
        }
        assert_eq!(u.pending_output(), &[0, 1, 2, 3]);
        assert_eq!(u.read(LSR) & LSR_THRE, 0);
        assert!(!u.irq_pending());
        assert_eq!(u.take_output(), [0, 1, 2, 3]);
        assert!(u.irq_pending());
        assert_eq!(u.read(LSR) & LSR_THRE, LSR_THRE);
    }

    #[test]
    fn modem_status_interrupt() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_OUT2);
        u.write(IER_DLM, IER_MSI);
        assert!(!u.irq_pending());
        u.set_modem_inputs(true, true, false, false);
        assert!(u.irq_pending());
        assert_eq!(u.read(IIR_FCR), IIR_MSI);
        assert_eq!(u.read(MSR), MSR_CTS | MSR_DSR | MSR_DDCD);
        assert!(!u.irq_pending());
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let mut rng = Rng::new(0x0016_550a);
        let mut u = Uart16550::with_tx_limit(64);
        for _ in 0..20_000 {
            match rng.below(10) {
                0..=3 => {
                    let _ = u.read(rng.u8());
                }
                4..=7 => u.write(rng.u8(), rng.u8()),
                8 => {
                    u.push_input(rng.u8());
                }
                _ => {
                    let out = u.take_output();
                    assert!(out.len() <= 64);
                }
            }
            assert!(u.rx_len() <= FIFO_SIZE);
            assert!(u.pending_output().len() <= 64);
            let iir = u.iir();
            assert_eq!(iir & 0x30, 0, "IIR bits 4-5 must stay clear");
            assert!(matches!(
                iir & 0x0f,
                0x00 | 0x01 | 0x02 | 0x04 | 0x06 | 0x0c
            ));
            if u.irq_pending() {
                assert_eq!(iir & 1, 0);
            }
            assert_eq!(u.ier & 0xf0, 0);
        }
    }
}
