//! Diagnostics: errors and warnings tied to a file, a line and a key.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file cannot be used as it is.
    Error,
    /// Something was ignored, defaulted or mapped; the domain can still be built.
    Warning,
}

/// One message about a configuration file.
///
/// Displays as `guest1.cfg:7: memory: expected a number of MiB, found 'lots'`
/// (errors) or `guest1.cfg:3: warning: vnc: unknown key; ignored` (warnings).
/// `line` is 1-based; 0 means the message is about the whole file (for
/// example a required key that is missing), and the line part is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    pub key: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// At most this many diagnostics are kept per file; one more says the rest
/// were dropped. Bounds the output for a file full of garbage.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Collects diagnostics for one file.
pub(crate) struct Sink<'a> {
    file: &'a str,
    pub(crate) diags: Vec<Diagnostic>,
    dropped: usize,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a str) -> Self {
        Sink {
            file,
            diags: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, severity: Severity, line: u32, key: Option<&str>, message: String) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            self.dropped += 1;
            return;
        }
        self.diags.push(Diagnostic {
            severity,
            file: String::from(self.file),
            line,
            key: key.map(String::from),
            message,
        });
    }

    pub(crate) fn error(&mut self, line: u32, key: Option<&str>, message: String) {
        self.push(Severity::Error, line, key, message);
    }

    pub(crate) fn warn(&mut self, line: u32, key: Option<&str>, message: String) {
        self.push(Severity::Warning, line, key, message);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    /// Finishes: diagnostics sorted by line (stable), plus a note when some
    /// were dropped. A dropped diagnostic may have been an error, so the
    /// note is an error when any error was seen.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| d.line);
        if self.dropped > 0 {
            let severity = if self.has_errors() {
                Severity::Error
            } else {
                Severity::Warning
            };
            self.diags.push(Diagnostic {
                severity,
                file: String::from(self.file),
                line: 0,
                key: None,
                message: alloc::format!("{} more diagnostics not shown", self.dropped),
            });
        }
        self.diags
    }
}

/// Shows a value from the file inside a message: quoted, at most 40
/// characters, control characters escaped (a config file must not be able
/// to send escape sequences to the console through an error message).
pub(crate) struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 40;
        f.write_str("'")?;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX {
                f.write_str("...")?;
                break;
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        f.write_str("'")
    }
}
