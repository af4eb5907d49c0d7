//! System Control Port A (port 0x92, "fast A20 and reset").
//!
//! Bit 1 gates A20 and reads back; bit 0 requests a fast CPU reset when
//! written as 1 and always reads 0. Other bits (security lock, disk
//! activity LEDs) are stored and read back without effect. A PC's A20 line
//! is the OR of this bit and the i8042 output port's A20 bit.

pub const PORT: u16 = 0x92;

const FAST_RESET: u8 = 1 << 0;
const A20: u8 = 1 << 1;

#[derive(Clone, Debug, Default)]
pub struct Port92 {
    value: u8,
    reset_request: bool,
}

impl Port92 {
    /// Reset state: A20 bit clear (the i8042 holds A20 on at power-up).
    pub fn new() -> Self {
        Self::default()
    }

    /// A guest IN; None if `port` is not 0x92.
    pub fn io_read(&self, port: u16) -> Option<u8> {
        (port == PORT).then_some(self.value)
    }

    /// A guest OUT; false if `port` is not 0x92.
    pub fn io_write(&mut self, port: u16, value: u8) -> bool {
        if port != PORT {
            return false;
        }
        if value & FAST_RESET != 0 {
            self.reset_request = true;
        }
        // The reset bit is a trigger, not state: it reads back 0.
        self.value = value & !FAST_RESET;
        true
    }

    /// The A20 gate bit.
    pub fn a20(&self) -> bool {
        self.value & A20 != 0
    }

    /// Whether the guest requested a reset since the last call.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn a20_round_trip() {
        let mut p = Port92::new();
        assert!(!p.a20());
        assert_eq!(p.io_read(0x92), Some(0));
        assert!(p.io_write(0x92, 0x02));
        assert!(p.a20());
        assert_eq!(p.io_read(0x92), Some(0x02));
        // The common "in al,0x92; or al,2; out 0x92,al" idiom, twice.
        let v = p.io_read(0x92).unwrap() | 2;
        p.io_write(0x92, v);
        assert_eq!(p.io_read(0x92), Some(0x02));
        p.io_write(0x92, 0x00);
        assert!(!p.a20());
        assert!(!p.take_reset_request());
    }

    #[test]
    fn fast_reset_reads_zero_and_is_taken_once() {
        let mut p = Port92::new();
        p.io_write(0x92, 0x03);
        assert_eq!(p.io_read(0x92), Some(0x02));
        assert!(p.a20());
        assert!(p.take_reset_request());
        assert!(!p.take_reset_request());
        // Other bits are stored.
        p.io_write(0x92, 0xc8);
        assert_eq!(p.io_read(0x92), Some(0xc8));
    }

    #[test]
    fn foreign_ports() {
        let mut p = Port92::new();
        assert_eq!(p.io_read(0x93), None);
        assert!(!p.io_write(0x91, 0xff));
        assert!(!p.take_reset_request());
        assert_eq!(p.io_read(0x92), Some(0));
    }

    #[test]
    fn fuzz_no_panic_and_invariants() {
        let mut rng = Rng::new(0x92);
        let mut p = Port92::new();
        for _ in 0..100_000 {
            let port = 0x90 + rng.below(4) as u16;
            let v = rng.u8();
            if rng.chance(50) {
                let wrote = p.io_write(port, v);
                assert_eq!(wrote, port == 0x92);
                if wrote {
                    assert_eq!(p.take_reset_request(), v & 1 != 0);
                    assert_eq!(p.a20(), v & 2 != 0);
                }
            } else if let Some(r) = p.io_read(port) {
                assert_eq!(port, 0x92);
                assert_eq!(r & 1, 0);
                assert_eq!(r & 2 != 0, p.a20());
            }
        }
    }
}
