//! A vCPU's time slice: what the scheduler runs (`Runnable`), from taking
//! a SIPI or an I/O answer through the run loop to blocking until its next
//! event.

use super::exits::VcpuPlatform;
use super::*;

impl Runnable for Vcpu {
    fn run_slice(self: Arc<Self>) -> SliceEnd {
        let start = crate::arch::time::now_ns();
        let me = self.clone();
        let end = self.run_slice_inner();
        me.run_ns.fetch_add(crate::arch::time::now_ns().saturating_sub(start), Ordering::Relaxed);
        end
    }

    fn affinity(&self) -> u64 {
        self.affinity.load(Ordering::Relaxed)
    }

    fn wake_deadline_us(&self) -> Option<u64> {
        if self.event_only.load(Ordering::SeqCst) {
            return None;
        }
        let ns = self.wake_at_ns.load(Ordering::SeqCst);
        (ns != u64::MAX).then_some(ns / 1000)
    }

    fn sched(&self) -> &SchedState {
        &self.sched
    }
}

impl Vcpu {
    fn run_slice_inner(self: Arc<Self>) -> SliceEnd {
        let Some(domain) = self.domain.upgrade() else {
            return SliceEnd::Stopped;
        };
        if domain.state() != DomainState::Running {
            return SliceEnd::Stopped;
        }
        if domain.is_paused() {
            // Unpausing wakes it; its timers keep their deadline meanwhile.
            return self.block_for_event(self.next_deadline_ns(&domain));
        }
        let mut arch = self.arch.lock();
        {
            // Both under the LAPIC lock (see `post`): an INIT or SIPI that
            // arrives meanwhile is seen whole at the next slice.
            let lapic = self.lapic.lock();
            if lapic.is_waiting_for_sipi() {
                drop(lapic);
                return self.block_for_event(self.next_deadline_ns(&domain));
            }
            if let Some(page) = self.start_page.lock().take() {
                arch.reset_real_mode(u16::from(page) << 8, 0);
            }
        }
        // Waiting on the stub domain and not answered yet: keep waiting.
        if self.io_wait.lock().is_some() {
            if let Role::Hvm { ioreq, .. } = &domain.role {
                if !ioreq.is_done(self.id) {
                    return self.block_for_event(self.next_deadline_ns(&domain));
                }
            }
        }
        // A stub domain blocked in BLOCK_IO: finish the hypercall with the
        // request's result (rax) once it is over, else keep waiting (woken
        // for something else meanwhile: that waits for its next WAIT).
        if self.in_block_io.load(Ordering::SeqCst) {
            if let Role::Stub(b) = &domain.role {
                match b.block_io_result() {
                    Ok(rax) => {
                        arch.regs_mut().rax = rax;
                        self.in_block_io.store(false, Ordering::SeqCst);
                    }
                    Err(deadline) => return self.block(Some(deadline)),
                }
            }
        }
        // A stub domain woken in WAIT: tell it why right away (rax), or
        // keep it waiting if nothing is there (a spurious wake-up).
        if self.in_wait.load(Ordering::SeqCst) {
            if let Role::Stub(b) = &domain.role {
                let work = b.pending_work();
                if work == 0 {
                    return self.block(None);
                }
                arch.regs_mut().rax = work;
                self.in_wait.store(false, Ordering::SeqCst);
            }
        }
        // The deadline kept when the last slice ended is still right
        // unless another vCPU reprogrammed a shared timer since (0).
        let cached = self.wake_at_ns.load(Ordering::SeqCst);
        let mut platform = VcpuPlatform {
            domain: &domain,
            vcpu: &self,
            sched: crate::sched::SliceClock::current(),
            shutdown: None,
            halted: false,
            deadline_ns: (cached != u64::MAX).then_some(cached),
            deadline_stale: cached == 0 || self.first_slice.swap(false, Ordering::SeqCst),
            waiting: false,
            now_ns: 0,
            cr8: self.lapic.lock().cr8(),
            cr8_exits: false,
        };
        arch.set_tsc_offset(domain.tsc_offset());
        let (outcome, _exits) = vcpu::run(&mut arch, &mut platform, 0);
        arch.release_fpu();
        drop(arch);
        if let Some(state) = platform.shutdown.take() {
            domain.shut_down(state);
            return SliceEnd::Stopped;
        }
        match outcome {
            RunOutcome::Crashed(why) => {
                domain.shut_down(DomainState::Crashed(format!("vcpu {}: {}", self.id, why)));
                SliceEnd::Stopped
            }
            RunOutcome::Finished(_) => {
                self.wake_at_ns.store(0, Ordering::SeqCst);
                SliceEnd::Preempted
            }
            RunOutcome::Halted if domain.state() != DomainState::Running => SliceEnd::Stopped,
            RunOutcome::WaitingForIo | RunOutcome::Halted if platform.halted || platform.waiting => {
                // The deadline the run loop kept is still right unless a
                // device changed since.
                let mut deadline = if platform.deadline_stale { self.next_deadline_ns(&domain) } else { platform.deadline_ns };
                if self.in_block_io.load(Ordering::SeqCst) {
                    // Its request's completion wakes it (also one that came
                    // before it blocks: the scheduler then requeues it);
                    // the deadline bounds how long that may take.
                    if let Role::Stub(b) = &domain.role {
                        deadline = Some(b.block_io_deadline());
                    }
                }
                if platform.waiting {
                    self.block_for_event(deadline)
                } else {
                    self.block(deadline)
                }
            }
            RunOutcome::WaitingForIo | RunOutcome::Halted => {
                let deadline = if platform.deadline_stale { self.next_deadline_ns(&domain) } else { platform.deadline_ns };
                self.wake_at_ns.store(deadline.unwrap_or(u64::MAX), Ordering::SeqCst);
                SliceEnd::Preempted
            }
        }
    }

    /// Ends a slice blocked, remembering when the vCPU's timers need it.
    fn block(&self, deadline_ns: Option<u64>) -> SliceEnd {
        self.event_only.store(false, Ordering::SeqCst);
        self.wake_at_ns.store(deadline_ns.unwrap_or(u64::MAX), Ordering::SeqCst);
        SliceEnd::Blocked
    }

    /// Ends a slice blocked until an I/O answer, a SIPI or the end of a
    /// pause: its timers
    /// cannot act before then (the instruction waiting for the answer has
    /// not completed), and a deadline already past would have the
    /// scheduler wake it again and again for nothing.
    fn block_for_event(&self, deadline_ns: Option<u64>) -> SliceEnd {
        self.event_only.store(true, Ordering::SeqCst);
        self.wake_at_ns.store(deadline_ns.unwrap_or(u64::MAX), Ordering::SeqCst);
        SliceEnd::Blocked
    }

}

