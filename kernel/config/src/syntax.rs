//! The syntax layer: bytes → `key = value` entries.
//!
//! Grammar (the subset of xl's `libxlu` syntax that domain files use):
//!
//! ```text
//! file      = { statement | blank | comment }
//! statement = key ( "=" | "+=" ) value [ ";" ] [ comment ] ( newline | ";" ... | EOF )
//! key       = [A-Za-z_][A-Za-z0-9_]*
//! value     = string | number | list
//! string    = '...' | "..."       escapes: \n \r \t \\ \' \" \xHH (HH < 0x80) \ooo (< 0o200)
//! number    = decimal | 0x hex    (no leading zeros: xl would read 010 as octal)
//! list      = "[" [ item { "," item } [ "," ] ] "]"   items are strings or numbers,
//!                                                    may span lines and hold comments
//! comment   = "#" to end of line
//! ```
//!
//! Several statements may share a line when separated by `;`. Strings
//! cannot span lines. Bytes that are not valid UTF-8 are allowed only in
//! comments. A UTF-8 byte-order mark at the start is skipped.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::diag::{Shown, Sink};

/// Longest string value accepted, in bytes (after escapes).
pub const MAX_STRING_LEN: usize = 8192;
/// Most items accepted in one list.
pub const MAX_LIST_ITEMS: usize = 256;
/// Largest file accepted, in bytes.
pub const MAX_FILE_SIZE: usize = 1 << 20;

/// A value as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(u64),
    /// Items are `Str` or `Int`, never nested lists.
    List(Vec<ListItem>),
}

/// One element of a list, with the line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListItem {
    pub value: Value,
    pub line: u32,
}

/// One `key = value` (or `key += value`) statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    /// Line of the key (1-based).
    pub line: u32,
    /// `true` for `key += value` (append to the earlier value, as xl does).
    pub append: bool,
}

impl Value {
    /// A short description of the kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "a number",
            Value::List(_) => "a list",
        }
    }
}

/// A syntax error; the parser recovers after it.
struct SyntaxError {
    line: u32,
    message: String,
}

struct Lexer<'t> {
    text: &'t [u8],
    pos: usize,
    line: u32,
}

fn is_key_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Describes the byte at a position for "found ..." messages.
fn describe_at(text: &[u8], pos: usize) -> String {
    match text.get(pos) {
        None => String::from("end of file"),
        Some(b'\n') => String::from("end of line"),
        Some(&b) if b.is_ascii_graphic() => format!("'{}'", b as char),
        Some(&b) if b < 0x80 => format!("byte 0x{b:02x}"),
        Some(_) => {
            // Show a whole character when the bytes are valid UTF-8.
            let end = (pos + 4).min(text.len());
            for e in (pos + 1..=end).rev() {
                if let Ok(s) = core::str::from_utf8(&text[pos..e]) {
                    if let Some(c) = s.chars().next() {
                        return format!("'{c}'");
                    }
                }
            }
            format!("byte 0x{:02x} (not UTF-8)", text[pos])
        }
    }
}

impl<'t> Lexer<'t> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn peek2(&self) -> Option<u8> {
        self.text.get(self.pos + 1).copied()
    }

    fn err(&self, message: String) -> SyntaxError {
        SyntaxError {
            line: self.line,
            message,
        }
    }

    fn found(&self) -> String {
        describe_at(self.text, self.pos)
    }

    /// Skips spaces, tabs and carriage returns (not newlines).
    fn skip_spaces(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\x0c' | b'\x0b') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips a comment up to (not including) the newline.
    fn skip_comment(&mut self) {
        if self.peek() == Some(b'#') {
            while let Some(b) = self.peek() {
                if b == b'\n' {
                    break;
                }
                self.pos += 1;
            }
        }
    }

    fn newline(&mut self) {
        debug_assert_eq!(self.peek(), Some(b'\n'));
        self.pos += 1;
        self.line = self.line.saturating_add(1);
    }

    /// Skips whitespace, comments and newlines.
    fn skip_blank(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            if self.peek() == Some(b'\n') {
                self.newline();
            } else {
                return;
            }
        }
    }

    /// Skips to the start of the next line (or EOF).
    fn skip_line(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'\n' {
                self.newline();
                return;
            }
            self.pos += 1;
        }
    }

    /// After an error inside a list: skip lines until the `]` that closes
    /// it (consumed) or a line that starts a new statement (not consumed).
    fn recover_list(&mut self) {
        loop {
            // Scan the rest of the current line, quote-aware.
            let mut quote = None;
            while let Some(b) = self.peek() {
                if b == b'\n' {
                    break;
                }
                self.pos += 1;
                match quote {
                    Some(_) if b == b'\\' && self.peek().is_some_and(|c| c != b'\n') => {
                        self.pos += 1
                    }
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'\'' || b == b'"' => quote = Some(b),
                    None if b == b'#' => {
                        self.pos -= 1;
                        self.skip_comment();
                    }
                    None if b == b']' => return,
                    None => {}
                }
            }
            if self.peek().is_none() {
                return;
            }
            self.newline();
            if self.at_statement_start() {
                return;
            }
        }
    }

    /// Whether the current line looks like `key =` / `key +=`.
    fn at_statement_start(&self) -> bool {
        let mut p = self.pos;
        let t = self.text;
        while p < t.len() && (t[p] == b' ' || t[p] == b'\t') {
            p += 1;
        }
        if p >= t.len() || !is_key_start(t[p]) {
            return false;
        }
        while p < t.len() && is_key_char(t[p]) {
            p += 1;
        }
        while p < t.len() && (t[p] == b' ' || t[p] == b'\t') {
            p += 1;
        }
        t.get(p) == Some(&b'=') || (t.get(p) == Some(&b'+') && t.get(p + 1) == Some(&b'='))
    }

    fn key(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        match self.peek() {
            Some(b) if is_key_start(b) => {}
            _ => {
                return Err(self.err(format!(
                    "expected a key name at the start of a statement, found {}",
                    self.found()
                )))
            }
        }
        while self.peek().is_some_and(is_key_char) {
            self.pos += 1;
        }
        // Only ASCII was consumed.
        Ok(self.text[start..self.pos]
            .iter()
            .map(|&b| b as char)
            .collect())
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let quote = self.text[self.pos];
        let start_line = self.line;
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        let mut too_long = false;
        loop {
            let Some(b) = self.peek() else {
                return Err(SyntaxError {
                    line: start_line,
                    message: String::from(
                        "unterminated string: missing closing quote before end of file",
                    ),
                });
            };
            match b {
                b'\n' => {
                    return Err(SyntaxError {
                        line: start_line,
                        message: format!(
                            "unterminated string: missing closing {} before end of line",
                            if quote == b'"' { "\"" } else { "'" }
                        ),
                    })
                }
                _ if b == quote => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                0 => return Err(self.err(String::from("strings may not contain NUL bytes"))),
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
            if out.len() > MAX_STRING_LEN {
                too_long = true;
                out.clear();
            }
        }
        if too_long {
            return Err(SyntaxError {
                line: start_line,
                message: format!("string is longer than {MAX_STRING_LEN} bytes"),
            });
        }
        String::from_utf8(out).map_err(|_| SyntaxError {
            line: start_line,
            message: String::from("string is not valid UTF-8"),
        })
    }

    /// Reads the escape after a backslash; returns the byte it stands for.
    fn escape(&mut self) -> Result<u8, SyntaxError> {
        let Some(c) = self.peek() else {
            return Err(self.err(String::from(
                "unterminated string: backslash at end of file",
            )));
        };
        let v = match c {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'\\' | b'\'' | b'"' => c,
            b'x' => {
                self.pos += 1;
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 2 {
                    match self.peek().and_then(|d| (d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            self.pos += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    return Err(self.err(String::from("'\\x' escape needs hex digits")));
                }
                return self.escaped_byte(v);
            }
            b'0'..=b'7' => {
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 3 {
                    match self.peek() {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            self.pos += 1;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                return self.escaped_byte(v);
            }
            b'\n' => {
                return Err(self.err(String::from(
                    "unterminated string: backslash at end of line",
                )))
            }
            _ => {
                return Err(self.err(format!(
                    "unknown escape '\\{}' in string",
                    describe_at(self.text, self.pos).trim_matches('\'')
                )))
            }
        };
        self.pos += 1;
        Ok(v)
    }

    fn escaped_byte(&self, v: u32) -> Result<u8, SyntaxError> {
        match v {
            0 => Err(self.err(String::from("strings may not contain NUL bytes"))),
            1..=0x7f => Ok(v as u8),
            _ => Err(self.err(format!(
                "escape for byte 0x{v:x} is not allowed: only ASCII (below 0x80) may be escaped"
            ))),
        }
    }

    fn number(&mut self) -> Result<u64, SyntaxError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            self.pos += 1;
        }
        let tok: String = self.text[start..self.pos]
            .iter()
            .map(|&b| b as char)
            .collect();
        parse_int(&tok).map_err(|m| self.err(m))
    }

    /// A string or a number (list items, and the non-list values).
    fn scalar(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'0'..=b'9') => self.number().map(Value::Int),
            Some(b'-') if self.peek2().is_some_and(|b| b.is_ascii_digit()) => {
                Err(self.err(String::from("negative numbers are not allowed")))
            }
            Some(b) if is_key_start(b) => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| is_key_char(b) || b == b'-' || b == b'.' || b == b'/')
                {
                    self.pos += 1;
                }
                let word: String = self.text[start..self.pos]
                    .iter()
                    .map(|&b| b as char)
                    .collect();
                Err(self.err(format!(
                    "bare word {} is not a value: put strings in quotes",
                    Shown(&word)
                )))
            }
            _ => Err(self.err(format!(
                "expected a value (a quoted string, a number or a [list]), found {}",
                self.found()
            ))),
        }
    }

    fn list(&mut self) -> Result<Value, (SyntaxError, bool)> {
        let open_line = self.line;
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None => {
                    return Err((
                        SyntaxError {
                            line: open_line,
                            message: String::from(
                                "unterminated list: missing ']' before end of file",
                            ),
                        },
                        false,
                    ))
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::List(items));
                }
                Some(b'[') => {
                    return Err((self.err(String::from("lists cannot be nested")), true));
                }
                Some(b',') => {
                    return Err((
                        self.err(String::from(
                            "empty list item (two commas in a row, or a leading comma)",
                        )),
                        true,
                    ));
                }
                _ => {}
            }
            let line = self.line;
            let value = self.scalar().map_err(|e| (e, true))?;
            if items.len() >= MAX_LIST_ITEMS {
                return Err((
                    self.err(format!("list has more than {MAX_LIST_ITEMS} items")),
                    true,
                ));
            }
            items.push(ListItem { value, line });
            self.skip_blank();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                None => {
                    return Err((
                        SyntaxError {
                            line: open_line,
                            message: String::from(
                                "unterminated list: missing ']' before end of file",
                            ),
                        },
                        false,
                    ))
                }
                _ => {
                    return Err((
                        self.err(format!(
                            "expected ',' or ']' in list, found {}",
                            self.found()
                        )),
                        true,
                    ))
                }
            }
        }
    }

    /// One statement, starting at a key. On error, says whether the error
    /// happened inside a list (recovery must then look for the `]`).
    fn statement(&mut self) -> Result<Entry, (SyntaxError, bool)> {
        let line = self.line;
        let key = self.key().map_err(|e| (e, false))?;
        self.skip_spaces();
        let append = match (self.peek(), self.peek2()) {
            (Some(b'='), _) => {
                self.pos += 1;
                false
            }
            (Some(b'+'), Some(b'=')) => {
                self.pos += 2;
                true
            }
            _ => {
                return Err((
                    self.err(format!(
                        "{key}: missing '=' after the key name, found {}",
                        self.found()
                    )),
                    false,
                ))
            }
        };
        self.skip_spaces();
        let value = match self.peek() {
            Some(b'[') => self.list()?,
            Some(b'\n' | b'#') | None => {
                return Err((self.err(format!("{key}: missing value after '='")), false));
            }
            _ => self.scalar().map_err(|e| (prefix(&key, e), false))?,
        };
        self.skip_spaces();
        match self.peek() {
            Some(b';') => self.pos += 1,
            Some(b'#' | b'\n') | None => {}
            _ => {
                return Err((
                    self.err(format!(
                        "{key}: unexpected {} after the value (one statement per line, or separate them with ';')",
                        self.found()
                    )),
                    false,
                ))
            }
        }
        Ok(Entry {
            key,
            value,
            line,
            append,
        })
    }
}

fn prefix(key: &str, e: SyntaxError) -> SyntaxError {
    SyntaxError {
        line: e.line,
        message: format!("{key}: {}", e.message),
    }
}

/// Parses an integer token: decimal or `0x` hex, no sign, no leading zeros.
pub(crate) fn parse_int(tok: &str) -> Result<u64, String> {
    let bad = || format!("malformed number {}", Shown(tok));
    let (digits, radix) = match tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (tok, 10),
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return Err(bad());
    }
    if radix == 10 && digits.len() > 1 && digits.starts_with('0') {
        return Err(format!(
            "number {} has a leading zero (xl would read it as octal); write it without",
            Shown(tok)
        ));
    }
    u64::from_str_radix(digits, radix).map_err(|_| format!("number {} is too large", Shown(tok)))
}

/// Splits a configuration file into entries. Syntax errors are reported
/// into `sink`; parsing resumes at the next statement, so every error in
/// the file is reported. Returns the entries that parsed, and the keys of
/// statements that had errors (so the semantic layer does not also report
/// them as missing).
pub(crate) fn parse_entries_into(text: &[u8], sink: &mut Sink<'_>) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut broken = Vec::new();
    if text.len() > MAX_FILE_SIZE {
        sink.error(
            0,
            None,
            format!("file is {} bytes; the limit is {MAX_FILE_SIZE}", text.len()),
        );
        return (entries, broken);
    }
    let mut lx = Lexer {
        text,
        pos: 0,
        line: 1,
    };
    if text.starts_with(b"\xef\xbb\xbf") {
        lx.pos = 3;
    }
    loop {
        lx.skip_blank();
        while lx.peek() == Some(b';') {
            lx.pos += 1;
            lx.skip_blank();
        }
        if lx.peek().is_none() {
            break;
        }
        let key_start = lx.pos;
        match lx.statement() {
            Ok(e) => entries.push(e),
            Err((e, in_list)) => {
                sink.error(e.line, None, e.message);
                let key_end = text[key_start..]
                    .iter()
                    .position(|&b| !is_key_char(b))
                    .map_or(text.len(), |n| key_start + n);
                if key_end > key_start && is_key_start(text[key_start]) {
                    broken.push(
                        text[key_start..key_end]
                            .iter()
                            .map(|&b| b as char)
                            .collect(),
                    );
                }
                // Never go backwards; resume after the rest of the line
                // (or the rest of the list).
                if in_list {
                    lx.recover_list();
                    // The rest of the line after a `]` is dropped too.
                    if !lx.at_statement_start() {
                        lx.skip_line();
                    }
                } else {
                    lx.skip_line();
                }
            }
        }
    }
    (entries, broken)
}

/// The syntax layer on its own: all entries of a file in order, duplicates
/// included, with the syntax diagnostics (errors only).
pub fn parse_entries(file_name: &str, text: &[u8]) -> (Vec<Entry>, Vec<crate::Diagnostic>) {
    let mut sink = Sink::new(file_name);
    let (entries, _) = parse_entries_into(text, &mut sink);
    (entries, sink.finish())
}
