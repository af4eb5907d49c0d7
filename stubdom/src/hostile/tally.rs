//! Verdicts: one console line per case, and the count of each kind.

use core::fmt;
use ferrite_abi::Errno;
use ferrite_stubdom::hypercall;

/// What the hypervisor must answer.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// This error.
    Err(Errno),
    /// Success (a value, whatever it is).
    Ok,
}

/// A hypercall result as the stub reads it.
pub struct Outcome(pub u64);

impl Outcome {
    pub fn errno(&self) -> Option<i64> {
        let v = self.0 as i64;
        (-4095..0).contains(&v).then_some(v)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.errno() {
            Some(e) => match Errno::from_result(self.0) {
                Some(name) => write!(f, "err {} ({:?})", e, name),
                None => write!(f, "err {}", e),
            },
            None => write!(f, "ok {:#x}", self.0),
        }
    }
}

#[derive(Default)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    /// Prints `case`'s verdict and counts it.
    pub fn verdict(&mut self, case: &str, pass: bool, what: fmt::Arguments) {
        if pass {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        log::info!("HOSTILE {} -> {}: {}", case, what, if pass { "PASS" } else { "FAIL" });
    }

    /// Makes hypercall `number` with `args`; the verdict is whether the
    /// result is `want`.
    pub fn call(&mut self, case: &str, number: u64, args: [u64; 5], want: Want) -> u64 {
        let r = hypercall::raw(number, args);
        let got = Outcome(r);
        let pass = match want {
            Want::Err(e) => r == e.as_result(),
            Want::Ok => got.errno().is_none(),
        };
        self.verdict(case, pass, format_args!("{}", got));
        r
    }
}
