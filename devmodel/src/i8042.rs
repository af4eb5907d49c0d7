//! i8042 PS/2 controller with a keyboard and a mouse (aux) port, at ports
//! 0x60 (data) and 0x64 (status / command).
//!
//! Commands are processed instantly, so IBF always reads 0. Bytes for the
//! guest wait in three queues: controller responses (always delivered),
//! keyboard bytes and aux bytes (held back while that interface is
//! disabled in the command byte, as a device cannot clock data in then).
//! One byte at a time sits in the output buffer behind port 0x60.
//!
//! Interrupts: [`I8042::irq1_level`] / [`I8042::irq12_level`] are the IRQ 1
//! and IRQ 12 lines: high while the output buffer holds a keyboard / aux
//! byte and the command byte enables that interrupt. Both are
//! edge-triggered at the PIC, so after the guest reads a byte the output
//! buffer stays empty (lines low) until the next byte is loaded: the
//! caller propagates the levels after every access, then calls
//! [`I8042::pump`] and propagates them again, which gives the PIC the
//! falling and rising edge a real controller makes between bytes. (Any
//! later guest access also loads the next byte, so a guest that polls the
//! status register never stalls.)
//!
//! System effects are polled: [`I8042::take_reset_request`] (output port
//! bit 0 driven low, or a pulse command such as 0xFE) and [`I8042::a20`]
//! (output port bit 1; a PC ORs it with port 0x92's A20 bit).
//!
//! Keyboard bytes from [`I8042::push_scancode`] are delivered as given;
//! the caller produces the scan code set the guest expects (set 1 when the
//! command byte's translate bit is set, see [`I8042::translating`]).
//! Replies that depend on translation (the identify ID byte and the
//! current scan code set) are translated, as on a real controller.

use alloc::collections::VecDeque;

pub const PORT_DATA: u16 = 0x60;
pub const PORT_STATUS: u16 = 0x64;
pub const PORT_COMMAND: u16 = 0x64;

/// Status register bits.
pub const STATUS_OBF: u8 = 1 << 0;
pub const STATUS_IBF: u8 = 1 << 1;
pub const STATUS_SYS: u8 = 1 << 2;
/// Last write went to the command port.
pub const STATUS_CMD: u8 = 1 << 3;
/// Keyboard not inhibited (the keylock switch).
pub const STATUS_UNLOCKED: u8 = 1 << 4;
pub const STATUS_AUX_OBF: u8 = 1 << 5;

/// Command byte bits.
pub const CTR_KBD_INT: u8 = 1 << 0;
pub const CTR_AUX_INT: u8 = 1 << 1;
pub const CTR_SYS: u8 = 1 << 2;
pub const CTR_KBD_DISABLE: u8 = 1 << 4;
pub const CTR_AUX_DISABLE: u8 = 1 << 5;
pub const CTR_TRANSLATE: u8 = 1 << 6;

/// Output port bits.
pub const OUT_RESET: u8 = 1 << 0;
pub const OUT_A20: u8 = 1 << 1;
pub const OUT_KBD_OBF: u8 = 1 << 4;
pub const OUT_AUX_OBF: u8 = 1 << 5;

/// Device replies.
pub const ACK: u8 = 0xfa;
pub const RESEND: u8 = 0xfe;
pub const BAT_OK: u8 = 0xaa;

/// Bound on each device's queue: a guest spamming identify commands, or a
/// host pushing faster than the guest reads, drops bytes instead of
/// growing memory (a real device would stall the same way).
pub const QUEUE_LIMIT: usize = 64;

/// Output port after reset: not in reset, A20 on, keyboard clock/data
/// high.
const OUTPORT_RESET: u8 = 0xcf;
/// Input port: keyboard not inhibited.
const INPORT: u8 = 0x80;

/// Where a byte in the output buffer came from, for status bit 5 and the
/// interrupt it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Kbd,
    Aux,
}

/// A controller command waiting for its data byte on port 0x60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// 0x60–0x7F: write internal RAM byte (0 = command byte).
    WriteRam(u8),
    WriteOutport,
    WriteKbdObuf,
    WriteAuxObuf,
    WriteAux,
}

/// A device command waiting for its argument byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevArg {
    None,
    Leds,
    Typematic,
    ScanSet,
    Resolution,
    SampleRate,
}

#[derive(Clone, Debug)]
struct Keyboard {
    scanning: bool,
    arg: DevArg,
    leds: u8,
    typematic: u8,
    scan_set: u8,
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Keyboard {
            scanning: true,
            arg: DevArg::None,
            leds: 0,
            typematic: 0x2b,
            scan_set: 2,
            last_sent: 0,
        }
    }

    fn defaults(&mut self) {
        self.typematic = 0x2b;
        self.scan_set = 2;
        self.arg = DevArg::None;
    }
}

#[derive(Clone, Debug)]
struct Mouse {
    reporting: bool,
    remote: bool,
    scaling21: bool,
    resolution: u8,
    sample_rate: u8,
    arg: DevArg,
    last_sent: u8,
}

impl Mouse {
    fn new() -> Self {
        Mouse {
            reporting: false,
            remote: false,
            scaling21: false,
            resolution: 2,
            sample_rate: 100,
            arg: DevArg::None,
            last_sent: 0,
        }
    }

    fn defaults(&mut self) {
        let last = self.last_sent;
        *self = Mouse::new();
        self.last_sent = last;
    }
}

#[derive(Clone, Debug)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte.
    ram: [u8; 32],
    outport: u8,
    status_cmd: bool,
    pending: Pending,
    /// The output buffer (OBF set when Some).
    obuf: Option<(u8, Source)>,
    /// What port 0x60 returns when the buffer is empty: the last byte.
    last_read: u8,
    ctrl_q: VecDeque<(u8, Source)>,
    kbd_q: VecDeque<u8>,
    aux_q: VecDeque<u8>,
    kbd: Keyboard,
    mouse: Mouse,
    reset_request: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// Controller after power-on: command byte 0 (firmware programs it),
    /// A20 on, keyboard scanning, mouse not reporting.
    pub fn new() -> Self {
        I8042 {
            ram: [0; 32],
            outport: OUTPORT_RESET,
            status_cmd: false,
            pending: Pending::None,
            obuf: None,
            last_read: 0,
            ctrl_q: VecDeque::new(),
            kbd_q: VecDeque::new(),
            aux_q: VecDeque::new(),
            kbd: Keyboard::new(),
            mouse: Mouse::new(),
            reset_request: false,
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    /// Move the next deliverable byte into an empty output buffer.
    /// Controller responses first, then keyboard, then aux; device bytes
    /// wait while their interface is disabled. Returns whether a byte was
    /// loaded (the IRQ levels may have risen).
    pub fn pump(&mut self) -> bool {
        if self.obuf.is_some() {
            return false;
        }
        let ctr = self.ctr();
        let next = if let Some(e) = self.ctrl_q.pop_front() {
            Some(e)
        } else if ctr & CTR_KBD_DISABLE == 0 && !self.kbd_q.is_empty() {
            self.kbd_q.pop_front().map(|b| (b, Source::Kbd))
        } else if ctr & CTR_AUX_DISABLE == 0 && !self.aux_q.is_empty() {
            self.aux_q.pop_front().map(|b| (b, Source::Aux))
        } else {
            None
        };
        self.obuf = next;
        next.is_some()
    }

    fn ctrl_reply(&mut self, b: u8, src: Source) {
        if self.ctrl_q.len() < QUEUE_LIMIT {
            self.ctrl_q.push_back((b, src));
        }
    }

    fn kbd_send(&mut self, b: u8) {
        self.kbd.last_sent = b;
        if self.kbd_q.len() < QUEUE_LIMIT {
            self.kbd_q.push_back(b);
        }
    }

    fn aux_send(&mut self, b: u8) {
        self.mouse.last_sent = b;
        if self.aux_q.len() < QUEUE_LIMIT {
            self.aux_q.push_back(b);
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED | (self.ctr() & CTR_SYS);
        if self.status_cmd {
            s |= STATUS_CMD;
        }
        match self.obuf {
            Some((_, Source::Aux)) => s |= STATUS_OBF | STATUS_AUX_OBF,
            Some((_, Source::Kbd)) => s |= STATUS_OBF,
            None => {}
        }
        s
    }

    /// A guest IN; None if `port` is not 0x60 or 0x64. Reading 0x60 empties
    /// the output buffer (an empty buffer reads the last byte again).
    pub fn io_read(&mut self, port: u16) -> Option<u8> {
        if port != PORT_DATA && port != PORT_STATUS {
            return None;
        }
        self.pump();
        Some(if port == PORT_DATA {
            if let Some((b, _)) = self.obuf.take() {
                self.last_read = b;
            }
            self.last_read
        } else {
            self.status()
        })
    }

    /// A guest OUT; false if `port` is not 0x60 or 0x64.
    pub fn io_write(&mut self, port: u16, value: u8) -> bool {
        match port {
            PORT_DATA => {
                self.pump();
                self.status_cmd = false;
                self.write_data(value);
            }
            PORT_COMMAND => {
                self.pump();
                self.status_cmd = true;
                self.command(value);
            }
            _ => return false,
        }
        self.pump();
        true
    }

    fn command(&mut self, cmd: u8) {
        // A new command abandons one still waiting for its data byte.
        self.pending = Pending::None;
        match cmd {
            0x20..=0x3f => {
                let v = self.ram[usize::from(cmd & 0x1f)];
                self.ctrl_reply(v, Source::Kbd);
            }
            0x60..=0x7f => self.pending = Pending::WriteRam(cmd & 0x1f),
            0xa7 => self.ram[0] |= CTR_AUX_DISABLE,
            0xa8 => self.ram[0] &= !CTR_AUX_DISABLE,
            0xa9 => self.ctrl_reply(0x00, Source::Kbd), // aux interface OK
            0xaa => {
                // Self test passed; the system flag says POST has run.
                self.ram[0] |= CTR_SYS;
                self.ctrl_reply(0x55, Source::Kbd);
            }
            0xab => self.ctrl_reply(0x00, Source::Kbd), // keyboard interface OK
            0xad => self.ram[0] |= CTR_KBD_DISABLE,
            0xae => self.ram[0] &= !CTR_KBD_DISABLE,
            0xc0 => self.ctrl_reply(INPORT, Source::Kbd),
            0xd0 => {
                let mut v = self.outport & !(OUT_KBD_OBF | OUT_AUX_OBF);
                match self.obuf {
                    Some((_, Source::Kbd)) => v |= OUT_KBD_OBF,
                    Some((_, Source::Aux)) => v |= OUT_AUX_OBF,
                    None => {}
                }
                self.ctrl_reply(v, Source::Kbd);
            }
            0xd1 => self.pending = Pending::WriteOutport,
            0xd2 => self.pending = Pending::WriteKbdObuf,
            0xd3 => self.pending = Pending::WriteAuxObuf,
            0xd4 => self.pending = Pending::WriteAux,
            0xdd => self.outport &= !OUT_A20,
            0xdf => self.outport |= OUT_A20,
            // Pulse output port bits 0-3 whose command bit is 0; only the
            // reset line (bit 0) has a lasting effect.
            0xf0..=0xff if cmd & 1 == 0 => self.reset_request = true,
            // Other commands (password, test inputs, vendor ones) do
            // nothing.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match core::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => {
                // Talking to the keyboard enables its interface, as the
                // controller must release the clock line to send.
                self.ram[0] &= !CTR_KBD_DISABLE;
                self.keyboard_byte(value);
            }
            Pending::WriteRam(i) => {
                self.ram[usize::from(i & 0x1f)] = value & if i == 0 { 0x7f } else { 0xff }
            }
            Pending::WriteOutport => {
                if value & OUT_RESET == 0 {
                    self.reset_request = true;
                }
                // The reset line comes back high with the machine.
                self.outport = value | OUT_RESET;
            }
            Pending::WriteKbdObuf => self.ctrl_reply(value, Source::Kbd),
            Pending::WriteAuxObuf => self.ctrl_reply(value, Source::Aux),
            Pending::WriteAux => {
                self.ram[0] &= !CTR_AUX_DISABLE;
                self.mouse_byte(value);
            }
        }
    }

    /// The controller translates set-2 codes to set 1; the only reply
    /// bytes this changes are the ID and the scan code set numbers.
    fn xlate(&self, b: u8) -> u8 {
        if self.ctr() & CTR_TRANSLATE == 0 {
            return b;
        }
        match b {
            0x01 => 0x43,
            0x02 => 0x41,
            0x03 => 0x3f,
            0x83 => 0x41,
            _ => b,
        }
    }

    fn keyboard_byte(&mut self, b: u8) {
        match core::mem::replace(&mut self.kbd.arg, DevArg::None) {
            DevArg::Leds => {
                self.kbd.leds = b & 7;
                return self.kbd_send(ACK);
            }
            DevArg::Typematic => {
                self.kbd.typematic = b & 0x7f;
                return self.kbd_send(ACK);
            }
            DevArg::ScanSet => {
                match b {
                    0 => {
                        self.kbd_send(ACK);
                        let set = self.xlate(self.kbd.scan_set);
                        self.kbd_send(set);
                    }
                    1..=3 => {
                        self.kbd.scan_set = b;
                        self.kbd_send(ACK);
                    }
                    _ => self.kbd_send(RESEND),
                }
                return;
            }
            _ => {}
        }
        match b {
            0xed => {
                self.kbd.arg = DevArg::Leds;
                self.kbd_send(ACK);
            }
            0xee => self.kbd_send(0xee),
            0xf0 => {
                self.kbd.arg = DevArg::ScanSet;
                self.kbd_send(ACK);
            }
            0xf2 => {
                self.kbd_send(ACK);
                self.kbd_send(0xab);
                let id = self.xlate(0x83);
                self.kbd_send(id);
            }
            0xf3 => {
                self.kbd.arg = DevArg::Typematic;
                self.kbd_send(ACK);
            }
            0xf4 => {
                self.kbd.scanning = true;
                self.kbd_send(ACK);
            }
            0xf5 => {
                // Disable: also restore defaults and drop buffered keys.
                self.kbd_q.clear();
                self.kbd.defaults();
                self.kbd.scanning = false;
                self.kbd_send(ACK);
            }
            0xf6 => {
                self.kbd_q.clear();
                self.kbd.defaults();
                self.kbd.scanning = true;
                self.kbd_send(ACK);
            }
            // Set-3 key type commands: accepted, no effect.
            0xf7..=0xfd => self.kbd_send(ACK),
            0xfe => {
                let last = self.kbd.last_sent;
                self.kbd_send(last);
            }
            0xff => {
                self.kbd_q.clear();
                self.kbd = Keyboard::new();
                self.kbd_send(ACK);
                self.kbd_send(BAT_OK);
            }
            _ => self.kbd_send(RESEND),
        }
    }

    fn mouse_status_bytes(&self) -> [u8; 3] {
        let m = &self.mouse;
        let flags =
            u8::from(m.remote) << 6 | u8::from(m.reporting) << 5 | u8::from(m.scaling21) << 4;
        [flags, m.resolution, m.sample_rate]
    }

    fn mouse_byte(&mut self, b: u8) {
        match core::mem::replace(&mut self.mouse.arg, DevArg::None) {
            DevArg::Resolution => {
                self.mouse.resolution = b & 3;
                return self.aux_send(ACK);
            }
            DevArg::SampleRate => {
                self.mouse.sample_rate = b;
                return self.aux_send(ACK);
            }
            _ => {}
        }
        match b {
            0xe6 => {
                self.mouse.scaling21 = false;
                self.aux_send(ACK);
            }
            0xe7 => {
                self.mouse.scaling21 = true;
                self.aux_send(ACK);
            }
            0xe8 => {
                self.mouse.arg = DevArg::Resolution;
                self.aux_send(ACK);
            }
            0xe9 => {
                self.aux_send(ACK);
                for s in self.mouse_status_bytes() {
                    self.aux_send(s);
                }
            }
            0xea => {
                self.mouse.remote = false;
                self.aux_send(ACK);
            }
            0xeb => {
                // Read data: an empty movement packet (bit 3 always 1).
                self.aux_send(ACK);
                for s in [0x08, 0x00, 0x00] {
                    self.aux_send(s);
                }
            }
            0xf0 => {
                self.mouse.remote = true;
                self.aux_send(ACK);
            }
            0xf2 => {
                self.aux_send(ACK);
                self.aux_send(0x00); // plain PS/2 mouse
            }
            0xf3 => {
                self.mouse.arg = DevArg::SampleRate;
                self.aux_send(ACK);
            }
            0xf4 => {
                self.mouse.reporting = true;
                self.aux_send(ACK);
            }
            0xf5 => {
                self.mouse.reporting = false;
                self.aux_send(ACK);
            }
            0xf6 => {
                self.mouse.defaults();
                self.aux_send(ACK);
            }
            0xfe => {
                let last = self.mouse.last_sent;
                self.aux_send(last);
            }
            0xff => {
                self.aux_q.clear();
                self.mouse.defaults();
                self.aux_send(ACK);
                self.aux_send(BAT_OK);
                self.aux_send(0x00);
            }
            // Wrap mode and vendor extensions are not supported.
            _ => self.aux_send(RESEND),
        }
    }

    /// Keyboard input: one byte as the guest will read it. Dropped (false)
    /// while the keyboard is not scanning or its queue is full.
    pub fn push_scancode(&mut self, byte: u8) -> bool {
        if !self.kbd.scanning || self.kbd_q.len() >= QUEUE_LIMIT {
            return false;
        }
        self.kbd_q.push_back(byte);
        self.pump();
        true
    }

    /// Mouse input: one byte of a movement packet. Dropped (false) unless
    /// the mouse is reporting in stream mode and its queue has room.
    pub fn push_aux(&mut self, byte: u8) -> bool {
        if !self.mouse.reporting || self.mouse.remote || self.aux_q.len() >= QUEUE_LIMIT {
            return false;
        }
        self.aux_q.push_back(byte);
        self.pump();
        true
    }

    /// IRQ 1 line: a keyboard byte waits in the output buffer and the
    /// command byte enables keyboard interrupts.
    pub fn irq1_level(&self) -> bool {
        matches!(self.obuf, Some((_, Source::Kbd))) && self.ctr() & CTR_KBD_INT != 0
    }

    /// IRQ 12 line: an aux byte waits and aux interrupts are enabled.
    pub fn irq12_level(&self) -> bool {
        matches!(self.obuf, Some((_, Source::Aux))) && self.ctr() & CTR_AUX_INT != 0
    }

    /// Whether the guest asked for a system reset since the last call.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }

    /// The A20 gate as the controller's output port drives it.
    pub fn a20(&self) -> bool {
        self.outport & OUT_A20 != 0
    }

    /// The command byte.
    pub fn command_byte(&self) -> u8 {
        self.ctr()
    }

    /// Whether the controller translates keyboard codes to set 1.
    pub fn translating(&self) -> bool {
        self.ctr() & CTR_TRANSLATE != 0
    }

    /// The keyboard's scan code set (1–3) and LED state (bit 0 scroll,
    /// bit 1 num, bit 2 caps lock).
    pub fn keyboard_state(&self) -> (u8, u8) {
        (self.kbd.scan_set, self.kbd.leds)
    }

    /// Bytes waiting for the guest, including the output buffer.
    pub fn pending_bytes(&self) -> usize {
        usize::from(self.obuf.is_some()) + self.ctrl_q.len() + self.kbd_q.len() + self.aux_q.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use alloc::vec::Vec;

    /// Drain what the guest can read now, as a polling driver does:
    /// (byte, came from aux).
    fn drain(k: &mut I8042) -> Vec<(u8, bool)> {
        let mut out = Vec::new();
        for _ in 0..200 {
            let s = k.io_read(0x64).unwrap();
            if s & STATUS_OBF == 0 {
                break;
            }
            out.push((k.io_read(0x60).unwrap(), s & STATUS_AUX_OBF != 0));
        }
        out
    }

    fn bytes(k: &mut I8042) -> Vec<u8> {
        drain(k).into_iter().map(|(b, _)| b).collect()
    }

    fn cmd(k: &mut I8042, c: u8) -> Vec<u8> {
        k.io_write(0x64, c);
        bytes(k)
    }

    fn cmd_arg(k: &mut I8042, c: u8, a: u8) -> Vec<u8> {
        k.io_write(0x64, c);
        k.io_write(0x60, a);
        bytes(k)
    }

    fn kbd(k: &mut I8042, b: u8) -> Vec<u8> {
        k.io_write(0x60, b);
        bytes(k)
    }

    fn aux(k: &mut I8042, b: u8) -> Vec<(u8, bool)> {
        k.io_write(0x64, 0xd4);
        k.io_write(0x60, b);
        drain(k)
    }

    #[test]
    fn foreign_ports() {
        let mut k = I8042::new();
        assert_eq!(k.io_read(0x61), None);
        assert_eq!(k.io_read(0x65), None);
        assert!(!k.io_write(0x92, 1));
    }

    #[test]
    fn status_and_controller_tests() {
        let mut k = I8042::new();
        let s = k.io_read(0x64).unwrap();
        assert_eq!(s & (STATUS_OBF | STATUS_IBF | STATUS_SYS), 0);
        assert_eq!(cmd(&mut k, 0xaa), [0x55]);
        assert_eq!(
            k.io_read(0x64).unwrap() & (STATUS_SYS | STATUS_CMD),
            STATUS_SYS | STATUS_CMD
        );
        assert_eq!(cmd(&mut k, 0xab), [0x00]);
        assert_eq!(cmd(&mut k, 0xa9), [0x00]);
        assert_eq!(cmd(&mut k, 0xc0), [0x80]);
        // Empty buffer: the data port repeats the last byte.
        assert_eq!(k.io_read(0x60), Some(0x80));
        // IBF never set.
        k.io_write(0x64, 0x60);
        assert_eq!(k.io_read(0x64).unwrap() & STATUS_IBF, 0);
        k.io_write(0x60, 0x47);
        assert_eq!(k.io_read(0x64).unwrap() & STATUS_CMD, 0);
    }

    #[test]
    fn command_byte_and_interface_enables() {
        let mut k = I8042::new();
        assert_eq!(cmd_arg(&mut k, 0x60, 0x47), []);
        assert_eq!(cmd(&mut k, 0x20), [0x47]);
        assert_eq!(k.command_byte(), 0x47);
        assert!(k.translating());
        // Bit 7 is reserved.
        cmd_arg(&mut k, 0x60, 0xff);
        assert_eq!(cmd(&mut k, 0x20), [0x7f]);
        cmd_arg(&mut k, 0x60, 0x00);
        k.io_write(0x64, 0xa7);
        assert_eq!(cmd(&mut k, 0x20), [CTR_AUX_DISABLE]);
        k.io_write(0x64, 0xa8);
        k.io_write(0x64, 0xad);
        assert_eq!(cmd(&mut k, 0x20), [CTR_KBD_DISABLE]);
        k.io_write(0x64, 0xae);
        assert_eq!(cmd(&mut k, 0x20), [0]);
        // Internal RAM beyond the command byte.
        cmd_arg(&mut k, 0x65, 0x5a);
        assert_eq!(cmd(&mut k, 0x25), [0x5a]);
    }

    #[test]
    fn keyboard_commands() {
        let mut k = I8042::new();
        assert_eq!(kbd(&mut k, 0xff), [ACK, BAT_OK]);
        assert_eq!(kbd(&mut k, 0xf2), [ACK, 0xab, 0x83]);
        assert_eq!(kbd(&mut k, 0xf5), [ACK]);
        assert!(!k.push_scancode(0x1c));
        assert_eq!(kbd(&mut k, 0xf4), [ACK]);
        assert_eq!(kbd(&mut k, 0xf6), [ACK]);
        assert_eq!(kbd(&mut k, 0xed), [ACK]);
        assert_eq!(kbd(&mut k, 0x07), [ACK]);
        assert_eq!(k.keyboard_state(), (2, 7));
        assert_eq!(kbd(&mut k, 0xf3), [ACK]);
        assert_eq!(kbd(&mut k, 0x20), [ACK]);
        assert_eq!(kbd(&mut k, 0xf0), [ACK]);
        assert_eq!(kbd(&mut k, 0x00), [ACK, 0x02]);
        assert_eq!(kbd(&mut k, 0xf0), [ACK]);
        assert_eq!(kbd(&mut k, 0x01), [ACK]);
        assert_eq!(k.keyboard_state().0, 1);
        assert_eq!(kbd(&mut k, 0xf0), [ACK]);
        assert_eq!(kbd(&mut k, 0x09), [RESEND]);
        assert_eq!(kbd(&mut k, 0xee), [0xee]);
        assert_eq!(kbd(&mut k, 0x42), [RESEND]);
        assert_eq!(kbd(&mut k, 0xfe), [RESEND]);
        // With translation the ID and set bytes come out translated.
        cmd_arg(&mut k, 0x60, CTR_TRANSLATE);
        assert_eq!(kbd(&mut k, 0xf2), [ACK, 0xab, 0x41]);
        assert_eq!(kbd(&mut k, 0xf0), [ACK]);
        assert_eq!(kbd(&mut k, 0x00), [ACK, 0x43]);
    }

    #[test]
    fn seabios_keyboard_init_with_interface_disabled() {
        // SeaBIOS sends keyboard commands with KBDDIS set in the command
        // byte and polls for the replies.
        let mut k = I8042::new();
        assert_eq!(cmd(&mut k, 0xaa), [0x55]);
        cmd_arg(&mut k, 0x60, CTR_KBD_DISABLE | CTR_AUX_DISABLE);
        assert_eq!(kbd(&mut k, 0xff), [ACK, BAT_OK]);
        assert_eq!(k.command_byte() & CTR_KBD_DISABLE, 0);
        cmd_arg(&mut k, 0x60, CTR_KBD_DISABLE | CTR_AUX_DISABLE);
        assert_eq!(kbd(&mut k, 0xf5), [ACK]);
        // Device bytes wait while the interface is disabled...
        k.io_write(0x64, 0xad);
        assert!(k.io_write(0x60, 0xf4) && k.io_read(0x64).unwrap() & STATUS_OBF != 0);
        assert_eq!(bytes(&mut k), [ACK]);
        k.io_write(0x64, 0xad);
        k.kbd.scanning = true;
        assert!(k.push_scancode(0x1e));
        assert_eq!(k.io_read(0x64).unwrap() & STATUS_OBF, 0);
        // ...but controller replies still come out.
        assert_eq!(cmd(&mut k, 0x20), [CTR_KBD_DISABLE | CTR_AUX_DISABLE]);
        k.io_write(0x64, 0xae);
        assert_eq!(bytes(&mut k), [0x1e]);
    }

    #[test]
    fn mouse_commands() {
        let mut k = I8042::new();
        assert_eq!(aux(&mut k, 0xff), [(ACK, true), (BAT_OK, true), (0, true)]);
        assert_eq!(aux(&mut k, 0xf2), [(ACK, true), (0, true)]);
        for c in [0xf6, 0xe6, 0xe7, 0xea, 0xf4, 0xf5] {
            assert_eq!(aux(&mut k, c), [(ACK, true)], "command {c:#x}");
        }
        assert_eq!(aux(&mut k, 0xe8), [(ACK, true)]);
        assert_eq!(aux(&mut k, 0x03), [(ACK, true)]);
        assert_eq!(aux(&mut k, 0xf3), [(ACK, true)]);
        assert_eq!(aux(&mut k, 200), [(ACK, true)]);
        assert_eq!(aux(&mut k, 0xe7), [(ACK, true)]);
        assert_eq!(aux(&mut k, 0xf4), [(ACK, true)]);
        assert_eq!(
            aux(&mut k, 0xe9),
            [(ACK, true), (0x30, true), (3, true), (200, true)]
        );
        // Linux's IntelliMouse probe (rates 200, 100, 80) still reads ID 0.
        for r in [200, 100, 80] {
            aux(&mut k, 0xf3);
            aux(&mut k, r);
        }
        assert_eq!(aux(&mut k, 0xf2), [(ACK, true), (0, true)]);
        assert_eq!(aux(&mut k, 0xe1), [(RESEND, true)]);
        // A byte to 0x60 without 0xD4 goes to the keyboard.
        k.io_write(0x60, 0xf4);
        assert_eq!(drain(&mut k), [(ACK, false)]);
    }

    #[test]
    fn linux_aux_loop_test_and_irq12() {
        let mut k = I8042::new();
        // i8042_check_aux: AUX_LOOP returns the byte flagged as aux data.
        assert_eq!(cmd_arg(&mut k, 0xd3, 0x5a), [0x5a]);
        k.io_write(0x64, 0xd3);
        k.io_write(0x60, 0xa5);
        assert_eq!(
            k.io_read(0x64).unwrap() & (STATUS_OBF | STATUS_AUX_OBF),
            0x21
        );
        assert!(!k.irq12_level(), "AUXINT off");
        k.io_read(0x60);
        cmd_arg(&mut k, 0x60, CTR_AUX_INT | CTR_KBD_INT);
        cmd_arg(&mut k, 0xd3, 0xa5);
        k.io_write(0x64, 0xd3);
        k.io_write(0x60, 0xa5);
        assert!(k.irq12_level());
        assert!(!k.irq1_level());
        assert_eq!(k.io_read(0x60), Some(0xa5));
        assert!(!k.irq12_level());
        // D2 fakes keyboard data: IRQ 1.
        k.io_write(0x64, 0xd2);
        k.io_write(0x60, 0x1c);
        assert!(k.irq1_level());
        assert_eq!(k.io_read(0x64).unwrap() & STATUS_AUX_OBF, 0);
        assert_eq!(k.io_read(0x60), Some(0x1c));
    }

    #[test]
    fn irq1_drops_between_queued_bytes() {
        let mut k = I8042::new();
        cmd_arg(&mut k, 0x60, CTR_KBD_INT | CTR_TRANSLATE);
        assert!(k.push_scancode(0xe0));
        assert!(k.push_scancode(0x48));
        assert!(k.irq1_level());
        // The guest's IRQ handler reads one byte; the line falls...
        assert_eq!(k.io_read(0x60), Some(0xe0));
        assert!(!k.irq1_level());
        // ...and rises again when the caller pumps: a fresh edge.
        assert!(k.pump());
        assert!(k.irq1_level());
        assert!(!k.pump(), "buffer full");
        assert_eq!(k.io_read(0x60), Some(0x48));
        assert!(!k.pump());
        assert!(!k.irq1_level());
        // Interrupt disabled: byte waits without IRQ.
        cmd_arg(&mut k, 0x60, 0);
        k.push_scancode(0x1c);
        assert!(!k.irq1_level());
        assert_eq!(bytes(&mut k), [0x1c]);
    }

    #[test]
    fn output_port_a20_and_reset() {
        let mut k = I8042::new();
        assert!(k.a20());
        assert!(!k.take_reset_request());
        assert_eq!(cmd(&mut k, 0xd0), [0xcf]);
        k.io_write(0x64, 0xdd);
        assert!(!k.a20());
        k.io_write(0x64, 0xdf);
        assert!(k.a20());
        cmd_arg(&mut k, 0xd1, 0xdd);
        assert!(!k.a20());
        assert!(!k.take_reset_request());
        cmd_arg(&mut k, 0xd1, 0xdf);
        assert!(k.a20());
        // D0 reports OBF bits for what is in the buffer right now.
        k.io_write(0x64, 0xd2);
        k.io_write(0x60, 0x00);
        k.io_write(0x64, 0xd0);
        assert_eq!(bytes(&mut k), [0x00, 0xdf | OUT_KBD_OBF]);
        // Writing the reset line low resets.
        cmd_arg(&mut k, 0xd1, 0xde);
        assert!(k.take_reset_request());
        assert!(!k.take_reset_request());
        // Pulse commands: 0xFE resets, 0xFF and odd ones do not.
        k.io_write(0x64, 0xff);
        k.io_write(0x64, 0xfd);
        assert!(!k.take_reset_request());
        k.io_write(0x64, 0xfe);
        assert!(k.take_reset_request());
        k.io_write(0x64, 0xf0);
        assert!(k.take_reset_request());
    }

    #[test]
    fn queues_are_bounded() {
        let mut k = I8042::new();
        for _ in 0..1000 {
            k.io_write(0x60, 0xf2);
        }
        let mut n = 0;
        while k.push_scancode(1) {
            n += 1;
        }
        assert_eq!(n, 0);
        assert!(k.pending_bytes() <= 3 * QUEUE_LIMIT + 1);
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let mut rng = Rng::new(0x8042);
        let mut k = I8042::new();
        let interesting = [
            0x20, 0x60, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xad, 0xae, 0xc0, 0xd0, 0xd1, 0xd2, 0xd3,
            0xd4, 0xdd, 0xdf, 0xfe, 0xff, 0xf2, 0xf4, 0xf5, 0xed, 0xe9, 0xf0, 0xf3,
        ];
        for _ in 0..100_000 {
            let v = if rng.chance(60) {
                interesting[rng.below(interesting.len() as u64) as usize]
            } else {
                rng.u8()
            };
            match rng.below(12) {
                0..=3 => {
                    let port = [0x60u16, 0x64, 0x61, 0x65][rng.below(4) as usize];
                    let r = k.io_read(port);
                    assert_eq!(r.is_some(), port == 0x60 || port == 0x64);
                    if port == 0x64 {
                        let s = r.unwrap();
                        assert_eq!(s & STATUS_IBF, 0);
                        if s & STATUS_AUX_OBF != 0 {
                            assert!(s & STATUS_OBF != 0);
                        }
                    }
                }
                4..=8 => {
                    let port = if rng.chance(50) { 0x60 } else { 0x64 };
                    assert!(k.io_write(port, v));
                }
                9 => {
                    k.push_scancode(rng.u8());
                }
                10 => {
                    k.push_aux(rng.u8());
                }
                _ => {
                    k.pump();
                    k.take_reset_request();
                }
            }
            assert!(k.ctrl_q.len() <= QUEUE_LIMIT);
            assert!(k.kbd_q.len() <= QUEUE_LIMIT);
            assert!(k.aux_q.len() <= QUEUE_LIMIT);
            assert_eq!(k.command_byte() & 0x80, 0);
            assert!(!(k.irq1_level() && k.irq12_level()));
            if k.irq1_level() {
                assert!(k.command_byte() & CTR_KBD_INT != 0);
            }
            if k.irq12_level() {
                assert!(k.command_byte() & CTR_AUX_INT != 0);
            }
            assert!(k.kbd.scan_set >= 1 && k.kbd.scan_set <= 3);
            // A pump after any access leaves the buffer full if anything
            // deliverable is queued.
            let mut k2 = k.clone();
            k2.pump();
            if !k2.ctrl_q.is_empty() {
                assert!(k2.obuf.is_some());
            }
        }
    }
}
