//! The vCPU scheduler: every vCPU of every domain can run on every pCPU
//! (unless pinned); a pCPU runs one vCPU for a time slice, then the next
//! runnable one; a pCPU with nothing to run halts until an interrupt (a
//! timer deadline or a wake-up IPI).
//!
//! Round robin over one global queue: with the handful of pCPUs and vCPUs
//! Ferrite targets, one lock is simpler than per-CPU queues with stealing
//! and costs nothing measurable.

use crate::arch::{apic, cpu, idt, percpu, time};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::Mutex;

/// How often an idle CPU 0 runs its pollers at the least.
const CONSOLE_POLL_US: u64 = 50_000;

/// Work CPU 0 does between slices and while idle (console input, the
/// network stack): registered by the layers above, so the scheduler does
/// not depend on them.
#[derive(Clone, Copy)]
pub struct Poller {
    pub poll: fn(),
    /// How soon it wants to run again (None: no sooner than usual).
    pub next_us: fn() -> Option<u64>,
}

static POLLERS: Mutex<alloc::vec::Vec<Poller>> = Mutex::new(alloc::vec::Vec::new());

pub fn register_poller(p: Poller) {
    POLLERS.lock().push(p);
}

fn run_pollers() -> u64 {
    let pollers = POLLERS.lock().clone();
    let mut next = CONSOLE_POLL_US;
    for p in pollers {
        (p.poll)();
        if let Some(us) = (p.next_us)() {
            next = next.min(us.max(1));
        }
    }
    next
}

/// Length of a time slice.
pub const SLICE_US: u64 = 10_000;

/// Something the scheduler can run: a vCPU, seen through what the
/// scheduler needs.
pub trait Runnable: Send + Sync {
    /// Runs on this pCPU until the slice ends at `slice_end_us`, the vCPU
    /// blocks, or it stops for good.
    fn run_slice(self: Arc<Self>, slice_end_us: u64) -> SliceEnd;
    /// pCPUs this vCPU may run on (bit i = pCPU i).
    fn affinity(&self) -> u64;
    /// For a blocked vCPU: when it must wake even without an interrupt
    /// (its guest timer), in uptime microseconds. Called with the
    /// scheduler lock held: must be cheap and take no lock.
    fn wake_deadline_us(&self) -> Option<u64>;
    fn sched(&self) -> &SchedState;
}

/// Why a slice ended.
pub enum SliceEnd {
    /// Still runnable: put it back in the queue.
    Preempted,
    /// Waiting for an interrupt (HLT) or a start-up IPI.
    Blocked,
    /// Will never run again (domain shut down or crashed).
    Stopped,
}

/// Scheduling state embedded in every vCPU.
pub struct SchedState {
    state: AtomicU8,
    /// pCPU it runs on while `RUNNING`.
    pcpu: AtomicUsize,
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const BLOCKED: u8 = 2;
const STOPPED: u8 = 3;
/// Woken while running: do not block at the end of the slice.
const RUNNING_WOKEN: u8 = 4;

impl SchedState {
    pub const fn new_blocked() -> Self {
        SchedState { state: AtomicU8::new(BLOCKED), pcpu: AtomicUsize::new(usize::MAX) }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state.load(Ordering::SeqCst), RUNNING | RUNNING_WOKEN)
    }

    pub fn is_blocked(&self) -> bool {
        self.state.load(Ordering::SeqCst) == BLOCKED
    }

    /// The pCPU it runs on, or last ran on (None: never ran).
    pub fn last_pcpu(&self) -> Option<usize> {
        let p = self.pcpu.load(Ordering::SeqCst);
        (p != usize::MAX).then_some(p)
    }

    /// The state in a word, for the debug dump ('v' key).
    pub fn describe(&self) -> &'static str {
        match self.state.load(Ordering::SeqCst) {
            QUEUED => "queued",
            RUNNING => "running",
            BLOCKED => "blocked",
            STOPPED => "stopped",
            _ => "running (woken)",
        }
    }
}

struct Scheduler {
    queue: VecDeque<Arc<dyn Runnable>>,
    /// Every blocked vCPU, to check timer deadlines.
    blocked: alloc::vec::Vec<Arc<dyn Runnable>>,
}

static SCHED: Mutex<Scheduler> = Mutex::new(Scheduler { queue: VecDeque::new(), blocked: alloc::vec::Vec::new() });
/// Bit i set: pCPU i is halted in the idle loop.
static IDLE_PCPUS: AtomicU64 = AtomicU64::new(0);

/// Makes a blocked vCPU runnable (an interrupt arrived, a SIPI, or it is
/// new). If it is running, it will not block at the end of its slice; if
/// it runs on another pCPU, that pCPU is kicked so a pending interrupt is
/// injected promptly.
pub fn wake(v: &Arc<dyn Runnable>) {
    let s = v.sched();
    loop {
        match s.state.load(Ordering::SeqCst) {
            BLOCKED => {
                if s.state.compare_exchange(BLOCKED, QUEUED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    let mut sched = SCHED.lock();
                    sched.blocked.retain(|b| !Arc::ptr_eq(b, v));
                    sched.queue.push_back(v.clone());
                    drop(sched);
                    kick_idle(v.affinity());
                    return;
                }
            }
            RUNNING => {
                if s.state.compare_exchange(RUNNING, RUNNING_WOKEN, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    let pcpu = s.pcpu.load(Ordering::SeqCst);
                    if pcpu != percpu::current_index() {
                        kick(pcpu);
                    }
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Makes a running vCPU leave its pCPU soon (its next exit ends the slice
/// early only if something else changed; the kick makes that exit come
/// now): used after its affinity changed.
pub fn kick_running(v: &Arc<dyn Runnable>) {
    let s = v.sched();
    if s.is_running() {
        let pcpu = s.pcpu.load(Ordering::SeqCst);
        if pcpu != percpu::current_index() && pcpu != usize::MAX {
            kick(pcpu);
        }
    }
}

/// Adds a new vCPU in the blocked state (it runs once woken).
pub fn add_blocked(v: Arc<dyn Runnable>) {
    SCHED.lock().blocked.push(v);
}

/// Marks a vCPU as never running again (its domain is gone).
pub fn stop(v: &Arc<dyn Runnable>) {
    v.sched().state.store(STOPPED, Ordering::SeqCst);
    let mut sched = SCHED.lock();
    sched.blocked.retain(|b| !Arc::ptr_eq(b, v));
    sched.queue.retain(|b| !Arc::ptr_eq(b, v));
}

fn kick(pcpu: usize) {
    if let Some(apic_id) = percpu::apic_id_of(pcpu) {
        apic::send_ipi(apic_id, idt::VECTOR_WAKEUP);
    }
}

fn kick_idle(affinity: u64) {
    let idle = IDLE_PCPUS.load(Ordering::SeqCst) & affinity;
    if idle != 0 {
        kick(idle.trailing_zeros() as usize);
    }
}

fn pick(pcpu: usize) -> Option<Arc<dyn Runnable>> {
    let mut sched = SCHED.lock();
    let pos = sched.queue.iter().position(|v| v.affinity() & (1 << pcpu) != 0)?;
    sched.queue.remove(pos)
}

/// Wakes blocked vCPUs whose deadline passed; returns the earliest
/// remaining deadline.
fn wake_expired(now: u64) -> Option<u64> {
    let mut expired: Option<alloc::vec::Vec<Arc<dyn Runnable>>> = None;
    let mut earliest: Option<u64> = None;
    {
        // `wake_deadline_us` reads a cached value, takes no lock.
        let sched = SCHED.lock();
        for v in &sched.blocked {
            match v.wake_deadline_us() {
                Some(d) if d <= now => expired.get_or_insert_with(alloc::vec::Vec::new).push(v.clone()),
                Some(d) => earliest = Some(earliest.map_or(d, |e: u64| e.min(d))),
                None => {}
            }
        }
    }
    for v in expired.iter().flatten() {
        wake(v);
    }
    earliest
}

/// The scheduling loop every pCPU ends in.
pub fn run_forever() -> ! {
    let me = percpu::current_index();
    loop {
        let poll_again_us = if me == 0 { run_pollers() } else { 0 };
        let now = time::now_ns() / 1000;
        let next_deadline = wake_expired(now);
        match pick(me) {
            Some(v) => {
                let s = v.sched();
                s.pcpu.store(me, Ordering::SeqCst);
                s.state.store(RUNNING, Ordering::SeqCst);
                let end = v.clone().run_slice((time::now_ns() / 1000) + SLICE_US);
                match end {
                    SliceEnd::Stopped => s.state.store(STOPPED, Ordering::SeqCst),
                    SliceEnd::Preempted => requeue(&v),
                    SliceEnd::Blocked => {
                        // Under the lock, so a `wake` that sees BLOCKED
                        // finds the vCPU in the blocked list (and takes it
                        // out) rather than racing with the push.
                        let mut sched = SCHED.lock();
                        if s.state.compare_exchange(RUNNING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                            sched.blocked.push(v.clone());
                        } else {
                            // Woken while it was deciding to block.
                            drop(sched);
                            requeue(&v);
                        }
                    }
                }
            }
            None => {
                // Nothing to run: sleep until the earliest guest timer or a kick.
                IDLE_PCPUS.fetch_or(1 << me, Ordering::SeqCst);
                let has_work = SCHED.lock().queue.iter().any(|v| v.affinity() & (1 << me) != 0);
                if !has_work {
                    let now = time::now_ns() / 1000;
                    let mut sleep = next_deadline.map_or(0, |d| d.saturating_sub(now).max(1));
                    if me == 0 {
                        // CPU 0 runs the pollers: wake when they want it.
                        sleep = if sleep == 0 { poll_again_us } else { sleep.min(poll_again_us) };
                    }
                    apic::arm_timer_us(sleep);
                    cpu::wait_for_interrupt();
                }
                IDLE_PCPUS.fetch_and(!(1 << me), Ordering::SeqCst);
            }
        }
    }
}

fn requeue(v: &Arc<dyn Runnable>) {
    let s = v.sched();
    if s.state.load(Ordering::SeqCst) == STOPPED {
        return;
    }
    s.state.store(QUEUED, Ordering::SeqCst);
    SCHED.lock().queue.push_back(v.clone());
    kick_idle(v.affinity() & !(1 << percpu::current_index()));
}

/// Lets host interrupts that arrived while a guest ran (they caused the
/// exit and are pending with interrupts off) be taken now.
pub fn take_pending_interrupts() {
    cpu::enable_interrupts_briefly();
}
