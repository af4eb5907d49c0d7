//! The `log` backend: one CONSOLE_WRITE per record (the hypervisor shows
//! it prefixed with the stub's name). Records are formatted into a fixed
//! buffer, never the heap, so logging (and the panic handler, which uses
//! the same buffer type) works when the heap is exhausted.

use crate::hypercall;
use core::fmt::{self, Write};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Longest line sent; longer ones are cut and end in "...".
pub const LINE_MAX: usize = 512;

/// A line being formatted, truncated at [`LINE_MAX`] bytes.
pub struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
    truncated: bool,
}

impl LineBuf {
    pub const fn new() -> Self {
        LineBuf { buf: [0; LINE_MAX], len: 0, truncated: false }
    }

    pub fn as_bytes(&mut self) -> &[u8] {
        if self.truncated {
            self.buf[LINE_MAX - 3..].copy_from_slice(b"...");
            self.len = LINE_MAX;
        }
        &self.buf[..self.len]
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_MAX - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = LineBuf::new();
        let _ = match record.level() {
            Level::Info => write!(line, "{}", record.args()),
            Level::Warn => write!(line, "warning: {}", record.args()),
            Level::Error => write!(line, "error: {}", record.args()),
            Level::Debug => write!(line, "debug: {}", record.args()),
            Level::Trace => write!(line, "trace: {}", record.args()),
        };
        hypercall::console_write(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger (Info and above).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// For warnings a guest can cause at will: true for the first 32 calls,
/// then for every 1024th, so a misbehaving guest cannot flood the
/// hypervisor console.
pub fn limited() -> bool {
    use core::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    n < 32 || n & 1023 == 0
}
