//! `xl console`: the guest's console on this terminal until Ctrl-]
//! (0x1d, xl's escape), as with `xl console` on Xen.
//!
//! The service pushes output whenever the guest writes, so this thread
//! reads the connection while a second thread forwards what is typed. On
//! a terminal the line discipline is switched off (`stty raw -echo`, and
//! back on exit), so every key, Ctrl-C included, goes to the guest; the
//! `stty` program keeps this crate free of unsafe termios calls.

use super::client::Client;
use anyhow::{bail, Context, Result};
use ferrite_mgmt::{encode_request, DomRef, Request, Response};
use std::io::{Read, Write};

use std::process::{Command, Stdio};

/// Ctrl-]: detaches, as in xl.
pub const ESCAPE: u8 = 0x1d;

/// The terminal's settings while the console is attached; restored on drop.
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal> {
        let out = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .output()
            .context("cannot run stty to read the terminal settings")?;
        if !out.status.success() {
            bail!("stty -g failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let saved = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let status = Command::new("stty").args(["raw", "-echo"]).stdin(Stdio::inherit()).status();
        if !status.map(|s| s.success()).unwrap_or(false) {
            bail!("cannot switch the terminal to raw mode (stty raw -echo failed)");
        }
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = Command::new("stty").arg(&self.saved).stdin(Stdio::inherit()).status();
    }
}

/// Sends what is typed: bytes before Ctrl-] as input, then the detach.
/// End of input (a pipe, not a terminal) stops the forwarding but not the
/// attachment, as with xl.
fn forward_input(mut input: Box<dyn Read + Send>, mut conn: super::client::Stream) {
    let mut buf = [0u8; 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let (typed, escape) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        let mut frames = Vec::new();
        if !typed.is_empty() {
            frames.extend(encode_request(&Request::ConsoleInput(typed.to_vec())).unwrap_or_default());
        }
        if escape {
            frames.extend(encode_request(&Request::ConsoleDetach).unwrap_or_default());
        }
        if conn.write_all(&frames).is_err() || escape {
            return;
        }
    }
}

/// Attaches to `dom`'s console: guest output to `out`, `input` to the
/// guest, until Ctrl-] in `input` (`Ok`) or the service ends it (`Err`). `terminal`:
/// `input` is this process's terminal, to be put in raw mode.
pub fn attach(
    client: &mut Client,
    dom: DomRef,
    input: Box<dyn Read + Send>,
    terminal: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    client
        .call_ok(&Request::ConsoleAttach(dom.clone()))
        .with_context(|| format!("cannot attach to the console of {dom}"))?;
    client.set_answer_timeout(None)?;
    let writer = client.writer()?;
    let raw = if terminal {
        let _ = writeln!(err, "attached to the console of domain {dom}; Ctrl-] detaches");
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    // Not joined: a thread blocked reading the terminal cannot be woken,
    // and it ends with the process.
    std::thread::spawn(move || forward_input(input, writer));
    let result = loop {
        match client.receive() {
            Ok(Response::ConsoleOutput(bytes)) => {
                if out.write_all(&bytes).and_then(|_| out.flush()).is_err() {
                    break Ok(());
                }
            }
            Ok(Response::Ok) => break Ok(()),
            Ok(Response::Error(e)) => break Err(anyhow::anyhow!("the console of {dom} ended: {e}")),
            Ok(other) => break Err(client.unexpected(&other)),
            Err(e) => break Err(e),
        }
    };
    drop(raw);
    if terminal && result.is_ok() {
        let _ = writeln!(err);
    }
    result
}
