//! How much of a domain's console output reaches the administrator's
//! console: a token bucket over lines, so one guest cannot flood the
//! serial line (and hold the console lock while it drains) or push other
//! domains' lines and the hypervisor's own out of view. What is over the
//! budget is dropped and counted, never waited for.

/// Lines a domain may print at once after a quiet spell.
pub const BURST_LINES: u32 = 500;
/// Lines a second, sustained.
pub const LINES_PER_SEC: u32 = 200;
/// Drops are reported at most this often (the report is a line too).
pub const REPORT_EVERY_US: u64 = 5_000_000;

#[derive(Clone, Debug)]
pub struct LineBudget {
    tokens: u32,
    /// Time of the last refill, in microseconds.
    last_us: u64,
    /// Lines dropped and not reported yet.
    dropped: u64,
    /// When drops were last reported.
    reported_us: u64,
}

/// What to do with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; `dropped_before` lines were dropped and not reported yet
    /// (say so first; counts are held back for `REPORT_EVERY_US` after a
    /// report, so a steady flood gets one report every few seconds).
    Print { dropped_before: u64 },
    Drop,
}

impl LineBudget {
    pub const fn new(now_us: u64) -> Self {
        LineBudget { tokens: BURST_LINES, last_us: now_us, dropped: 0, reported_us: 0 }
    }

    /// One more line at `now_us`.
    pub fn line(&mut self, now_us: u64) -> Verdict {
        let elapsed = now_us.saturating_sub(self.last_us);
        let earned = elapsed.saturating_mul(u64::from(LINES_PER_SEC)) / 1_000_000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(BURST_LINES)) as u32;
            // Keep the remainder: time not yet worth a whole line.
            self.last_us += earned * 1_000_000 / u64::from(LINES_PER_SEC);
        }
        if self.tokens == 0 {
            self.dropped = self.dropped.saturating_add(1);
            return Verdict::Drop;
        }
        self.tokens -= 1;
        let report = self.dropped > 0 && (self.reported_us == 0 || now_us.saturating_sub(self.reported_us) >= REPORT_EVERY_US);
        if !report {
            return Verdict::Print { dropped_before: 0 };
        }
        self.reported_us = now_us.max(1);
        Verdict::Print { dropped_before: core::mem::take(&mut self.dropped) }
    }

    /// Lines dropped and not yet reported.
    pub fn pending_drops(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let mut b = LineBudget::new(0);
        for _ in 0..BURST_LINES {
            assert_eq!(b.line(0), Verdict::Print { dropped_before: 0 });
        }
        for _ in 0..7 {
            assert_eq!(b.line(0), Verdict::Drop);
        }
        assert_eq!(b.pending_drops(), 7);
        // One line's worth of time later, the next line goes out with the count.
        assert_eq!(b.line(1_000_000 / u64::from(LINES_PER_SEC)), Verdict::Print { dropped_before: 7 });
        assert_eq!(b.pending_drops(), 0);
        // More drops right after a report are held back, then reported.
        while b.line(10_000) != Verdict::Drop {}
        let held = b.pending_drops();
        assert!(held >= 1);
        assert_eq!(b.line(20_000), Verdict::Print { dropped_before: 0 });
        assert_eq!(b.pending_drops(), held);
        assert_eq!(b.line(5_000 + REPORT_EVERY_US), Verdict::Print { dropped_before: held });
    }

    #[test]
    fn the_sustained_rate_is_kept_and_quiet_time_refills_only_the_burst() {
        let mut b = LineBudget::new(0);
        for _ in 0..BURST_LINES {
            b.line(0);
        }
        // Ten seconds of a flood at 10 lines per millisecond: about
        // LINES_PER_SEC a second get through.
        let mut printed = 0u64;
        for ms in 1..=10_000u64 {
            for _ in 0..10 {
                if let Verdict::Print { .. } = b.line(ms * 1000) {
                    printed += 1;
                }
            }
        }
        let expected = 10 * u64::from(LINES_PER_SEC);
        assert!(printed.abs_diff(expected) <= 2, "printed {printed}, expected about {expected}");
        // A long quiet spell refills to the burst, no more.
        let later = 10_000_000 + 3_600_000_000;
        let mut burst = 0;
        while let Verdict::Print { .. } = b.line(later) {
            burst += 1;
        }
        assert_eq!(burst, BURST_LINES);
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_refill() {
        let mut b = LineBudget::new(5_000_000);
        for _ in 0..BURST_LINES {
            b.line(5_000_000);
        }
        assert_eq!(b.line(0), Verdict::Drop);
    }
}
