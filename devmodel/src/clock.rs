//! Time sources the device models read.

/// Monotonic guest time in nanoseconds. It must never go backwards; the
/// models tolerate it anyway (a smaller value than before reads as "no time
/// has passed").
pub trait Clock {
    fn now_ns(&self) -> u64;
}

/// Host wall-clock time in seconds since the Unix epoch (UTC).
pub trait WallClock {
    fn unix_time(&self) -> u64;
}

/// `value * mul / div` without intermediate overflow, saturating at
/// `u64::MAX`; `div == 0` gives 0.
pub(crate) fn mul_div(value: u64, mul: u64, div: u64) -> u64 {
    if div == 0 {
        return 0;
    }
    let r = u128::from(value) * u128::from(mul) / u128::from(div);
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// Smallest `t` with `mul_div(t, mul, div) >= ticks`, i.e. the first
/// nanosecond at which `ticks` ticks of a `mul`/`div` clock have elapsed.
/// Saturates at `u64::MAX`; `mul == 0` gives `u64::MAX` (never).
pub(crate) fn ticks_to_ns_ceil(ticks: u64, mul: u64, div: u64) -> u64 {
    if mul == 0 {
        return u64::MAX;
    }
    let r = (u128::from(ticks) * u128::from(div)).div_ceil(u128::from(mul));
    u64::try_from(r).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_div_and_inverse_agree() {
        for &(mul, div) in &[
            (3_579_545u64, 1_000_000_000u64),
            (1_193_182, 1_000_000_000),
            (1, 3),
        ] {
            for ticks in [0u64, 1, 2, 7, 1000, 123_456_789] {
                let t = ticks_to_ns_ceil(ticks, mul, div);
                assert!(mul_div(t, mul, div) >= ticks);
                if t > 0 {
                    assert!(mul_div(t - 1, mul, div) < ticks);
                }
            }
        }
        assert_eq!(mul_div(u64::MAX, u64::MAX, 1), u64::MAX);
        assert_eq!(mul_div(5, 5, 0), 0);
        assert_eq!(ticks_to_ns_ceil(5, 0, 1), u64::MAX);
    }
}
