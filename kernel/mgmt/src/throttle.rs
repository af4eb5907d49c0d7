//! Rate limiting of failed logins, so the secret cannot be guessed at
//! network speed.
//!
//! One throttle serves every connection ("after a failure from anyone"):
//! per-address state would need memory per attacker, and an attacker can
//! use many addresses anyway. The price is that a legitimate client waits
//! too while someone hammers the port.

/// Delay after the first failure; it doubles with each consecutive one.
pub const BASE_DELAY_US: u64 = 500_000;
/// The delay stops doubling here.
pub const MAX_DELAY_US: u64 = 30_000_000;

/// After each failed login, every login is refused until a delay has
/// passed: [`BASE_DELAY_US`], doubling per consecutive failure up to
/// [`MAX_DELAY_US`]; a successful login resets it. Time is the caller's
/// monotonic clock in microseconds. Two integers, whatever the traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthThrottle {
    consecutive_failures: u32,
    blocked_until_us: u64,
}

impl AuthThrottle {
    pub const fn new() -> Self {
        AuthThrottle { consecutive_failures: 0, blocked_until_us: 0 }
    }

    /// `Ok` if a login may be tried at `now_us`, else how many
    /// microseconds remain. A refused attempt does not extend the delay.
    pub fn check(&self, now_us: u64) -> Result<(), u64> {
        if now_us < self.blocked_until_us {
            Err(self.blocked_until_us - now_us)
        } else {
            Ok(())
        }
    }

    pub fn record_failure(&mut self, now_us: u64) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let doublings = (self.consecutive_failures - 1).min(16);
        let delay = (BASE_DELAY_US << doublings).min(MAX_DELAY_US);
        self.blocked_until_us = now_us.saturating_add(delay);
    }

    pub fn record_success(&mut self) {
        *self = AuthThrottle::new();
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}
