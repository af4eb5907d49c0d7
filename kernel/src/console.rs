//! The hypervisor console: the serial port, plus an in-memory ring of
//! everything logged (what `dmesg` shows), and the `log` backend.

use crate::drivers::uart::{LineConfig, Uart, COM1};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

const RING_SIZE: usize = 64 * 1024;

/// A byte ring that keeps the newest `RING_SIZE` bytes of console output.
pub struct LogRing {
    buf: [u8; RING_SIZE],
    /// Total bytes ever written; the write position is `written % RING_SIZE`.
    written: usize,
}

impl LogRing {
    const fn new() -> Self {
        LogRing { buf: [0; RING_SIZE], written: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.buf[self.written % RING_SIZE] = b;
            self.written = self.written.wrapping_add(1);
        }
    }

    /// Calls `f` with the retained contents, oldest first, in at most two pieces.
    pub fn read(&self, mut f: impl FnMut(&[u8])) {
        if self.written <= RING_SIZE {
            f(&self.buf[..self.written]);
        } else {
            let pos = self.written % RING_SIZE;
            f(&self.buf[pos..]);
            f(&self.buf[..pos]);
        }
    }
}

struct Console {
    uart: Uart,
    ring: LogRing,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console { uart: Uart::new(COM1), ring: LogRing::new() });
static UART_ENABLED: AtomicBool = AtomicBool::new(true);

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
        c.uart.write_bytes(s.as_bytes());
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
        metadata.level() <= log::max_level()
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
    if let Ok(text) = core::str::from_utf8(&line.buf[..line.len]) {
        write_str(text);
    }
}
