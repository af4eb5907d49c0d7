//! The hypervisor console: the serial port, plus an in-memory ring of
//! everything logged (what `dmesg` shows), and the `log` backend.

use crate::drivers::uart::{LineConfig, Uart, COM1};
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::AtomicU32;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

const RING_SIZE: usize = 64 * 1024;

/// A byte ring that keeps the newest `capacity` bytes written to it (the
/// hypervisor's `dmesg`, and each domain's console history).
pub struct LogRing {
    buf: Vec<u8>,
    capacity: usize,
    /// Total bytes ever written; the write position is `written % capacity`.
    written: usize,
}

impl LogRing {
    /// The storage is allocated on first use.
    pub const fn new(capacity: usize) -> Self {
        LogRing { buf: Vec::new(), capacity, written: 0 }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.buf.len() != self.capacity {
            self.buf.resize(self.capacity, 0);
        }
        for &b in bytes {
            self.buf[self.written % self.capacity] = b;
            self.written = self.written.wrapping_add(1);
        }
    }

    /// Total bytes ever written: the position just past the newest byte.
    pub fn written(&self) -> u64 {
        self.written as u64
    }

    /// Up to `max` bytes from absolute position `from` (moved up to the
    /// oldest byte still kept, so a slow reader skips what was lost), and
    /// the position after them.
    pub fn read_from(&self, from: u64, max: usize) -> (alloc::vec::Vec<u8>, u64) {
        let written = self.written as u64;
        let oldest = written.saturating_sub(self.capacity as u64);
        let start = from.clamp(oldest, written);
        let n = ((written - start) as usize).min(max);
        let out = (0..n).map(|i| self.buf[((start as usize) + i) % self.capacity]).collect();
        (out, start + n as u64)
    }

    /// Forgets everything written (`xl dmesg -c`).
    pub fn clear(&mut self) {
        self.written = 0;
    }

    /// Calls `f` with the retained contents, oldest first, in at most two pieces.
    pub fn read(&self, mut f: impl FnMut(&[u8])) {
        if self.written <= self.capacity {
            f(&self.buf[..self.written.min(self.buf.len())]);
        } else {
            let pos = self.written % self.capacity;
            f(&self.buf[pos..]);
            f(&self.buf[..pos]);
        }
    }
}

struct Console {
    uart: Uart,
    ring: LogRing,
    /// The focused domain's line shown as it is typed and not ended yet:
    /// the name to show again if other output breaks into it.
    partial: Option<DomainName>,
    /// Other output ended that line on the terminal (with a newline); the
    /// domain's next bytes start a new one, prefix first.
    broken: bool,
}

/// A domain name kept without allocating (names are at most
/// `ferrite_config::MAX_NAME_LEN` bytes; a longer one is cut).
#[derive(Clone, Copy)]
struct DomainName {
    buf: [u8; 64],
    len: usize,
}

impl DomainName {
    fn new(name: &str) -> Self {
        let mut end = name.len().min(64);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0; 64];
        buf[..end].copy_from_slice(&name.as_bytes()[..end]);
        DomainName { buf, len: end }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Console {
    /// Before other output (a hypervisor line, another domain's line):
    /// ends the focused domain's unfinished line on the terminal, so the
    /// two never share a line.
    fn break_partial(&mut self) {
        if self.partial.is_some() && !self.broken {
            self.uart.write_bytes(b"\n");
            self.broken = true;
        }
    }
}

static CONSOLE: Mutex<Console> =
    Mutex::new(Console { uart: Uart::new(COM1), ring: LogRing::new(RING_SIZE), partial: None, broken: false });
static UART_ENABLED: AtomicBool = AtomicBool::new(true);

/// `console_timestamps=boot`: lines start with the time since boot.
static TIMESTAMPS: AtomicBool = AtomicBool::new(false);

pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

/// Writes `[seconds.micros] ` (time since the hypervisor's entry) when
/// console timestamps are on, as Xen's `console_timestamps=boot` does.
pub fn write_timestamp(out: &mut impl Write) {
    if TIMESTAMPS.load(Ordering::Relaxed) {
        let us = crate::arch::time::uptime_ns() / 1000;
        let _ = write!(out, "[{:5}.{:06}] ", us / 1_000_000, us % 1_000_000);
    }
}

/// Sets up the serial line; `enabled` is false for `console=none`.
pub fn init(line: LineConfig, enabled: bool) {
    UART_ENABLED.store(enabled, Ordering::Relaxed);
    if enabled {
        CONSOLE.lock().uart.configure(line);
    }
}

/// Writes raw text to the console and the log ring.
pub fn write_str(s: &str) {
    let mut c = CONSOLE.lock();
    c.ring.push(s.as_bytes());
    if UART_ENABLED.load(Ordering::Relaxed) {
        c.break_partial();
        c.uart.write_bytes(s.as_bytes());
    }
}

/// Writes to the serial line only (not the log ring), on a line of its own.
fn write_serial(bytes: &[u8]) {
    if UART_ENABLED.load(Ordering::Relaxed) {
        let mut c = CONSOLE.lock();
        c.break_partial();
        c.uart.write_bytes(bytes);
    }
}

/// Writes without taking the console lock: only for the panic path, where
/// the lock may be held by the CPU that panicked or by a stopped CPU.
pub fn write_str_unlocked(s: &str) {
    Uart::new(COM1).write_bytes(s.as_bytes());
}

/// Runs `f` over the log ring's contents (what `dmesg` prints).
pub fn with_log_ring(f: impl FnMut(&[u8])) {
    CONSOLE.lock().ring.read(f);
}

/// Empties the hypervisor's log ring (`xl dmesg -c`).
pub fn clear_log_ring() {
    CONSOLE.lock().ring.clear();
}

/// A fixed buffer that formats one log line without allocating.
struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // The crates Ferrite uses (virtio-drivers, smoltcp) log their own
        // progress at info and below; only their warnings and errors are
        // news to an administrator.
        let ours = metadata.target().starts_with("ferrite");
        metadata.level() <= log::max_level() && (ours || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = LineBuf { buf: [0; 512], len: 0 };
        let tag = match record.level() {
            log::Level::Error => "ERROR: ",
            log::Level::Warn => "WARNING: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        write_timestamp(&mut line);
        let _ = write!(line, "(ferrite) {}{}", tag, record.args());
        if line.len == line.buf.len() {
            line.buf[line.len - 4..].copy_from_slice(b"...\n");
        } else {
            let _ = line.write_str("\n");
        }
        // The buffer only ever holds whole UTF-8 pieces or the ASCII marker.
        let text = core::str::from_utf8(&line.buf[..line.len]).unwrap_or("(ferrite) <bad utf-8>\n");
        write_str(text);
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// `print!` to the hypervisor console, without the log prefix.
pub fn print_fmt(args: fmt::Arguments) {
    let mut line = LineBuf { buf: [0; 512], len: 0 };
    let _ = line.write_fmt(args);
    write_serial(&line.buf[..line.len]);
}

/// Like [`print_fmt`], but the text goes to the serial line only, not into
/// the log ring: for replaying the ring itself (`d`), which would
/// otherwise copy the ring into itself on every press.
pub fn print_fmt_unlogged(args: fmt::Arguments) {
    let mut line = LineBuf { buf: [0; 512], len: 0 };
    let _ = line.write_fmt(args);
    write_serial(&line.buf[..line.len]);
}

/// Where console input goes: 0 = the hypervisor, else domain id + 1.
static FOCUS: AtomicU32 = AtomicU32::new(0);
/// Consecutive Ctrl-a presses seen.
static CTRL_A: AtomicU32 = AtomicU32::new(0);

const CTRL_A_KEY: u8 = 0x01;

/// Where console input goes: the hypervisor's debug keys, or a domain's
/// UART. The console sits below both, so they register here at boot
/// (`register_input`) instead of the console calling up into them.
pub trait InputTargets: Sync {
    /// A key for the hypervisor itself.
    fn hypervisor_key(&self, key: u8);
    /// Ids of the domains alive, ascending.
    fn domain_ids(&self) -> Vec<u32>;
    fn domain_name(&self, id: u32) -> Option<alloc::string::String>;
    /// One byte for domain `id`'s console; false when it is gone.
    fn domain_input(&self, id: u32, byte: u8) -> bool;
}

static INPUT_TARGETS: spin::Once<&'static dyn InputTargets> = spin::Once::new();

/// Sets where input goes; until then it is read and dropped.
pub fn register_input(targets: &'static dyn InputTargets) {
    INPUT_TARGETS.call_once(|| targets);
}

/// Reads what arrived on the serial line and routes it: three Ctrl-a in a
/// row switch the input between the hypervisor and each domain (as in
/// Xen); other bytes go to the focused domain's UART, or are hypervisor
/// keys. Called regularly by CPU 0's scheduling loop.
pub fn poll_input() {
    if !UART_ENABLED.load(Ordering::Relaxed) {
        return;
    }
    loop {
        let byte = {
            let c = CONSOLE.lock();
            c.uart.read_byte()
        };
        let Some(b) = byte else { break };
        if b == CTRL_A_KEY {
            if CTRL_A.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                CTRL_A.store(0, Ordering::SeqCst);
                switch_focus();
            }
            continue;
        }
        // Fewer than three Ctrl-a were real input: pass them on.
        let pending = CTRL_A.swap(0, Ordering::SeqCst);
        for _ in 0..pending {
            input_byte(CTRL_A_KEY);
        }
        input_byte(b);
    }
}

/// The domain console input goes to (None: the hypervisor).
pub fn input_focus() -> Option<u32> {
    FOCUS.load(Ordering::SeqCst).checked_sub(1)
}

pub fn set_input_focus(id: Option<u32>) {
    FOCUS.store(id.map_or(0, |i| i + 1), Ordering::SeqCst);
}

fn switch_focus() {
    let Some(targets) = INPUT_TARGETS.get() else { return };
    let ids = targets.domain_ids();
    let cur = FOCUS.load(Ordering::SeqCst);
    // Order: hypervisor (0), then domains by id.
    let next = if cur == 0 {
        ids.first().map_or(0, |&id| id + 1)
    } else {
        ids.iter().find(|&&id| id + 1 > cur).map_or(0, |&id| id + 1)
    };
    FOCUS.store(next, Ordering::SeqCst);
    match next {
        0 => log::info!("*** input to Ferrite (press 'h' for keys; Ctrl-a three times to switch)"),
        n => log::info!(
            "*** input to domain {} ({}) (Ctrl-a three times to switch)",
            n - 1,
            targets.domain_name(n - 1).unwrap_or_default()
        ),
    }
}

fn input_byte(b: u8) {
    let Some(targets) = INPUT_TARGETS.get() else { return };
    match FOCUS.load(Ordering::SeqCst) {
        0 => targets.hypervisor_key(b),
        n => {
            if !targets.domain_input(n - 1, b) {
                // The domain is gone: input returns to the hypervisor.
                FOCUS.store(0, Ordering::SeqCst);
                targets.hypervisor_key(b);
            }
        }
    }
}

/// Writes one domain console line (`(name) text`), timestamped if asked.
pub fn domain_line(name: &str, text: &str) {
    let mut line = LineBuf { buf: [0; 512], len: 0 };
    write_timestamp(&mut line);
    let _ = write!(line, "({}) ", name);
    let head = core::str::from_utf8(&line.buf[..line.len]).unwrap_or("");
    let text = printable(text);
    // Guests' lines go to the serial console only: the log ring is the
    // hypervisor's (`dmesg`), which no guest can flood out of view. Each
    // domain keeps its own history.
    if UART_ENABLED.load(Ordering::Relaxed) {
        let mut c = CONSOLE.lock();
        c.break_partial();
        for piece in [head, &text, "\n"] {
            c.uart.write_bytes(piece.as_bytes());
        }
    }
}

/// Output of the focused domain, shown as it comes (serial only, as
/// `domain_line`), after [`domain_line_start`]. If other output broke
/// into its line meanwhile, the rest goes on a new line with the prefix
/// again; a newline ends the line.
pub fn write_guest_str(s: &str) {
    if !UART_ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut c = CONSOLE.lock();
    if let Some(name) = c.partial {
        if c.broken {
            c.broken = false;
            if s == "\n" {
                // Other output already ended the line on the terminal.
                c.partial = None;
                return;
            }
            let mut head = LineBuf { buf: [0; 512], len: 0 };
            write_timestamp(&mut head);
            let _ = write!(head, "({}) ", name.as_str());
            c.uart.write_bytes(&head.buf[..head.len]);
        }
    }
    c.uart.write_bytes(s.as_bytes());
    if s.ends_with('\n') {
        c.partial = None;
    }
}

/// A guest's line as the administrator's terminal and the log may show
/// it: control characters (C0, DEL, C1) in caret notation (`ESC` as
/// `^[`), so no guest can move the cursor, clear the screen, retitle the
/// window or hide earlier lines. Tabs stay. (The domain that has console
/// input, an interactive shell, gets its bytes raw, as a terminal would.)
fn printable(text: &str) -> alloc::borrow::Cow<'_, str> {
    let is_control = |c: char| (c < ' ' && c != '\t') || ('\u{7f}'..='\u{9f}').contains(&c);
    if !text.chars().any(is_control) {
        return alloc::borrow::Cow::Borrowed(text);
    }
    let mut out = alloc::string::String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c < ' ' && c != '\t' {
            out.push('^');
            out.push(char::from(c as u8 ^ 0x40));
        } else if c == '\u{7f}' {
            out.push_str("^?");
        } else if is_control(c) {
            // C1 (e.g. U+009B, a one-character CSI).
            let _ = write!(out, "<{:02x}>", c as u32);
        } else {
            out.push(c);
        }
    }
    alloc::borrow::Cow::Owned(out)
}

/// The start of a domain line shown as it is typed (the focused domain):
/// its prefix, on the serial line only (guest lines stay out of the log
/// ring, prefixes included: a flood of them would push the hypervisor's
/// own lines out).
pub fn domain_line_start(name: &str) {
    if !UART_ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let mut line = LineBuf { buf: [0; 512], len: 0 };
    write_timestamp(&mut line);
    let _ = write!(line, "({}) ", name);
    let mut c = CONSOLE.lock();
    // Another domain's unfinished line (focus moved) ends here.
    c.break_partial();
    c.uart.write_bytes(&line.buf[..line.len]);
    c.partial = Some(DomainName::new(name));
    c.broken = false;
}
