//! Replaying an instruction whose MMIO accesses go to a device model that
//! answers later (an HVM guest's stub domain). The instruction is executed
//! again from the start each time an answer arrives; the accesses already
//! answered are replayed from this log, in order, and only the first new
//! one is sent. A read-modify-write (OR, AND, XCHG, BTS, ...) thus sends
//! its read, then its write computed from the real value, then completes,
//! and each access reaches the device exactly once.
//!
//! An access that does not match the log at its position (the guest
//! changed the instruction or its operands meanwhile) voids the log: the
//! instruction starts over, and no stale answer feeds an unrelated access.

/// One MMIO access of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    pub gpa: u64,
    pub size: u8,
    pub write: bool,
    /// The value written (writes), or 0 (reads).
    pub value: u64,
}

/// The most accesses one emulated instruction makes (a read and a write;
/// room to spare). More voids the instruction.
pub const MAX_ACCESSES: usize = 4;

/// What to do with an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Answered before: use this value (reads) and go on.
    Replay(u64),
    /// Send it to the device model and wait.
    Send,
    /// An earlier access of this execution is already waiting: do nothing
    /// (the instruction runs again once it is answered).
    Skip,
    /// The instruction makes more accesses than one instruction can.
    TooMany,
}

#[derive(Clone, Debug, Default)]
pub struct MmioReplay {
    answered: [Option<(MmioAccess, u64)>; MAX_ACCESSES],
    count: usize,
    /// Position of the next access in this execution.
    next: usize,
    /// The access sent and not yet answered.
    waiting: Option<MmioAccess>,
}

impl MmioReplay {
    /// An execution of the instruction starts.
    pub fn begin(&mut self) {
        self.next = 0;
    }

    /// The instruction's next access.
    pub fn access(&mut self, a: MmioAccess) -> Step {
        let k = self.next;
        self.next += 1;
        if k < self.count {
            match self.answered[k] {
                Some((logged, value)) if logged == a => return Step::Replay(value),
                _ => {
                    // Not the access recorded here: everything is stale.
                    self.clear();
                    self.next = 1;
                    return self.send(a, 0);
                }
            }
        }
        if self.waiting.is_some() {
            return Step::Skip;
        }
        self.send(a, k)
    }

    fn send(&mut self, a: MmioAccess, k: usize) -> Step {
        if k >= MAX_ACCESSES {
            return Step::TooMany;
        }
        self.waiting = Some(a);
        Step::Send
    }

    /// The answer to the access sent (its value for reads).
    pub fn answered(&mut self, value: u64) {
        if let Some(a) = self.waiting.take() {
            if self.count < MAX_ACCESSES {
                self.answered[self.count] = Some((a, value));
                self.count += 1;
            }
        }
    }

    /// An answer is in the log for an instruction that has yet to run
    /// again (no interrupt may come before it).
    pub fn replay_pending(&self) -> bool {
        self.count > 0 && self.waiting.is_none()
    }

    /// Whether an access of this execution waits for the device model.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The instruction completed: forget it.
    pub fn clear(&mut self) {
        *self = MmioReplay::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(gpa: u64) -> MmioAccess {
        MmioAccess { gpa, size: 4, write: false, value: 0 }
    }
    fn write(gpa: u64, value: u64) -> MmioAccess {
        MmioAccess { gpa, size: 4, write: true, value }
    }

    #[test]
    fn a_read_modify_write_sends_the_read_then_the_real_write_once() {
        let mut r = MmioReplay::default();
        // Execution 1: the read goes out; the write (computed from a
        // placeholder) must not.
        r.begin();
        assert_eq!(r.access(read(0x1000)), Step::Send);
        assert_eq!(r.access(write(0x1000, 1)), Step::Skip);
        r.answered(0xF0);
        assert!(r.replay_pending());
        // Execution 2: the read replays its answer; the write carries the
        // value computed from it.
        r.begin();
        assert_eq!(r.access(read(0x1000)), Step::Replay(0xF0));
        assert_eq!(r.access(write(0x1000, 0xF1)), Step::Send);
        r.answered(0);
        // Execution 3: both replay; the instruction completes.
        r.begin();
        assert_eq!(r.access(read(0x1000)), Step::Replay(0xF0));
        assert_eq!(r.access(write(0x1000, 0xF1)), Step::Replay(0));
        assert!(!r.is_waiting());
        r.clear();
        assert!(!r.replay_pending());
    }

    #[test]
    fn a_different_access_voids_the_log() {
        let mut r = MmioReplay::default();
        r.begin();
        assert_eq!(r.access(read(0x1000)), Step::Send);
        r.answered(7);
        // The guest rewrote the instruction: another address. The old
        // answer must not be used for it.
        r.begin();
        assert_eq!(r.access(read(0x2000)), Step::Send);
        r.answered(9);
        r.begin();
        assert_eq!(r.access(read(0x2000)), Step::Replay(9));
    }

    #[test]
    fn an_answer_with_nothing_sent_is_ignored_and_accesses_are_bounded() {
        let mut r = MmioReplay::default();
        r.answered(5);
        assert!(!r.replay_pending());
        for i in 0..MAX_ACCESSES as u64 {
            r.begin();
            for j in 0..i {
                assert!(matches!(r.access(write(j, j)), Step::Replay(_)));
            }
            assert_eq!(r.access(write(i, i)), Step::Send);
            r.answered(0);
        }
        r.begin();
        for j in 0..MAX_ACCESSES as u64 {
            assert!(matches!(r.access(write(j, j)), Step::Replay(_)));
        }
        assert_eq!(r.access(write(99, 0)), Step::TooMany);
    }
}
