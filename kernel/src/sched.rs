//! The vCPU scheduler: every vCPU of every domain can run on every pCPU
//! (unless pinned); a pCPU runs one vCPU for a time slice, then the next
//! runnable one; a pCPU with nothing to run halts until an interrupt (a
//! timer deadline or a wake-up IPI).
//!
//! One global queue under one lock: with the handful of pCPUs and vCPUs
//! Ferrite targets, that is simpler than per-CPU queues with stealing and
//! costs nothing measurable. Which vCPU runs next, for how long, and whom
//! a woken vCPU preempts is decided by `ferrite_sched::Policy` (virtual
//! run time with a bounded wake-up credit: a vCPU woken by an interrupt
//! or its timer runs at once unless it has already had more than its
//! share); this module keeps the vCPU states, host timers and IPIs.

use crate::arch::percpu::MAX_CPUS;
use crate::arch::{apic, cpu, idt, percpu, time};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use ferrite_sched::{End, Policy, Preempt};
use spin::Mutex;

/// How often an idle CPU 0 runs its pollers at the least.
const CONSOLE_POLL_US: u64 = 50_000;
/// How often a busy CPU 0 runs them at the most: between slices, which
/// can be microseconds apart (a guest and its stub domain taking turns).
const POLL_GAP_NS: u64 = 1_000_000;

/// Work CPU 0 does between slices and while idle (console input, the
/// network stack): registered by the layers above, so the scheduler does
/// not depend on them.
#[derive(Clone, Copy)]
pub struct Poller {
    pub poll: fn(),
    /// How soon it wants to run again (None: no sooner than usual).
    pub next_us: fn() -> Option<u64>,
}

/// Room for the pollers (console and network today).
const MAX_POLLERS: usize = 8;

static POLLERS: Mutex<alloc::vec::Vec<Poller>> = Mutex::new(alloc::vec::Vec::new());

pub fn register_poller(p: Poller) {
    let mut pollers = POLLERS.lock();
    assert!(pollers.len() < MAX_POLLERS, "more than {MAX_POLLERS} pollers");
    pollers.push(p);
}

/// Work an idle pCPU does instead of halting while it reports more to
/// come (completions of asynchronous disk requests: the host's devices are
/// polled). Registered by the layers above.
static IDLE_WORK: spin::RwLock<alloc::vec::Vec<fn() -> bool>> = spin::RwLock::new(alloc::vec::Vec::new());

pub fn register_idle_work(work: fn() -> bool) {
    IDLE_WORK.write().push(work);
}

/// Runs the idle work; true while some of it is outstanding.
fn run_idle_work() -> bool {
    let mut outstanding = false;
    for work in IDLE_WORK.read().iter() {
        outstanding |= work();
    }
    outstanding
}

fn run_pollers() -> u64 {
    // Copied out (a poller may register another) onto the stack: this runs
    // at every slice boundary, and a heap copy cost about 150 instructions.
    let mut pollers = [None; MAX_POLLERS];
    for (slot, p) in pollers.iter_mut().zip(POLLERS.lock().iter()) {
        *slot = Some(*p);
    }
    let mut next = CONSOLE_POLL_US;
    for p in pollers.into_iter().flatten() {
        (p.poll)();
        if let Some(us) = (p.next_us)() {
            next = next.min(us.max(1));
        }
    }
    next
}

/// Something the scheduler can run: a vCPU, seen through what the
/// scheduler needs.
pub trait Runnable: Send + Sync {
    /// Runs on this pCPU until [`SliceClock::should_yield`] says so, the
    /// vCPU blocks, or it stops for good.
    fn run_slice(self: Arc<Self>) -> SliceEnd;
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

/// A vCPU as the policy sees it.
#[derive(Clone)]
struct Task(Arc<dyn Runnable>);

impl ferrite_sched::Task for Task {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    fn affinity(&self) -> u64 {
        self.0.affinity()
    }
}

/// Queue order, wake-up preemption and fairness live in `ferrite_sched`;
/// this lock is innermost (see ARCHITECTURE.md, locks).
static SCHED: Mutex<Policy<Task>> = Mutex::new(Policy::new());
/// Bit i set: pCPU i is halted in the idle loop.
static IDLE_PCPUS: AtomicU64 = AtomicU64::new(0);
/// When each pCPU's vCPU must give it up (TSC ns): its slice end, or
/// sooner for a woken vCPU. Mirrors the policy, written under its lock;
/// read without it on every exit.
static YIELD_AT_NS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
/// The earliest wake-up deadline of a blocked vCPU (TSC ns; `u64::MAX`
/// none), so a busy pCPU's timer fires for it too. Written under the lock.
static EARLIEST_WAKE_NS: AtomicU64 = AtomicU64::new(u64::MAX);

fn now_us() -> u64 {
    time::now_ns() / 1000
}

/// Records a preemption the policy decided (under the lock); returns the
/// pCPU to kick when it is another one.
fn preempt(p: Option<Preempt>) -> Option<usize> {
    let p = p?;
    YIELD_AT_NS.get(p.cpu)?.fetch_min(p.at_us.saturating_mul(1000), Ordering::SeqCst);
    (p.cpu != percpu::current_index()).then_some(p.cpu)
}

/// Makes a vCPU runnable (an interrupt arrived, a SIPI, or it is new).
/// A blocked one is queued and may preempt a busier vCPU; a queued one
/// may too (without the woken vCPU's credit). A running one will not
/// block at the end of its slice, and its pCPU is kicked so that a
/// pending interrupt is injected promptly.
pub fn wake(v: &Arc<dyn Runnable>) {
    let s = v.sched();
    loop {
        match s.state.load(Ordering::SeqCst) {
            BLOCKED => {
                if s.state.compare_exchange(BLOCKED, QUEUED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    let target = preempt(SCHED.lock().wake(&Task(v.clone()), now_us()));
                    kick_idle(v.affinity());
                    if let Some(t) = target {
                        kick(t);
                    }
                    return;
                }
            }
            QUEUED => {
                if let Some(t) = preempt(SCHED.lock().nudge(&Task(v.clone()), now_us())) {
                    kick(t);
                }
                return;
            }
            state @ (RUNNING | RUNNING_WOKEN) => {
                if state == RUNNING_WOKEN
                    || s.state.compare_exchange(RUNNING, RUNNING_WOKEN, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
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

/// Makes a running vCPU leave its pCPU soon if its affinity no longer
/// allows it there (used after its affinity changed).
pub fn kick_running(v: &Arc<dyn Runnable>) {
    let s = v.sched();
    if !s.is_running() {
        return;
    }
    let pcpu = s.pcpu.load(Ordering::SeqCst);
    if pcpu >= MAX_CPUS || v.affinity() & (1 << pcpu) != 0 {
        return;
    }
    if SCHED.lock().yield_now(pcpu, now_us()) {
        YIELD_AT_NS[pcpu].store(0, Ordering::SeqCst);
    }
    if pcpu != percpu::current_index() {
        kick(pcpu);
    }
}

/// Adds a new vCPU in the blocked state (it runs once woken).
pub fn add_blocked(v: Arc<dyn Runnable>) {
    SCHED.lock().add_blocked(Task(v));
}

/// Marks a vCPU as never running again (its domain is gone).
pub fn stop(v: &Arc<dyn Runnable>) {
    v.sched().state.store(STOPPED, Ordering::SeqCst);
    SCHED.lock().remove(&Task(v.clone()));
}

/// Another vCPU changed timers a blocked vCPU runs (its `wake_deadline_us`
/// dropped, possibly to 0): busy pCPUs must look again.
pub fn deadline_lowered(ns: u64) {
    let _sched = SCHED.lock();
    EARLIEST_WAKE_NS.fetch_min(ns, Ordering::SeqCst);
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

/// Wakes blocked vCPUs whose deadline passed; returns the earliest
/// remaining deadline.
fn wake_expired(now: u64) -> Option<u64> {
    let mut expired: Option<alloc::vec::Vec<Arc<dyn Runnable>>> = None;
    let mut earliest: Option<u64> = None;
    {
        // `wake_deadline_us` reads a cached value, takes no lock.
        let sched = SCHED.lock();
        for Task(v) in sched.blocked() {
            match v.wake_deadline_us() {
                Some(d) if d <= now => expired.get_or_insert_with(alloc::vec::Vec::new).push(v.clone()),
                Some(d) => earliest = Some(earliest.map_or(d, |e: u64| e.min(d))),
                None => {}
            }
        }
        EARLIEST_WAKE_NS.store(earliest.map_or(u64::MAX, |us| us.saturating_mul(1000)), Ordering::SeqCst);
    }
    for v in expired.iter().flatten() {
        wake(v);
    }
    earliest
}

/// What the run loop asks the scheduler at every entry and exit, bound
/// once per slice to the pCPU it runs on.
pub struct SliceClock {
    pc: &'static percpu::PerCpu,
    yield_at: &'static AtomicU64,
}

impl SliceClock {
    /// For the slice starting on this pCPU.
    pub fn current() -> SliceClock {
        let pc = percpu::current();
        SliceClock { pc, yield_at: &YIELD_AT_NS[pc.index] }
    }

    /// When this pCPU must next look at the scheduler (TSC ns): its
    /// vCPU's yield time or a blocked vCPU's deadline. The run loop arms
    /// the host timer for it.
    #[inline]
    pub fn next_event_ns(&self) -> u64 {
        self.yield_at.load(Ordering::Relaxed).min(EARLIEST_WAKE_NS.load(Ordering::Relaxed))
    }

    /// Whether the running vCPU must give up its pCPU now; checked after
    /// every exit. `now_ns` is the time taken before the entry: the clock
    /// is read again only when the host timer fired meanwhile, which is
    /// also when a blocked vCPU's deadline may have passed.
    #[inline]
    pub fn should_yield(&self, now_ns: u64) -> bool {
        if now_ns >= self.yield_at.load(Ordering::Relaxed) {
            return true;
        }
        self.pc.timer_deadline_ns.load(Ordering::Relaxed) == 0 && self.timer_fired()
    }

    #[cold]
    fn timer_fired(&self) -> bool {
        let now = time::now_ns();
        if now >= EARLIEST_WAKE_NS.load(Ordering::Relaxed) {
            wake_expired(now / 1000);
        }
        now >= self.yield_at.load(Ordering::SeqCst)
    }
}

/// The scheduling loop every pCPU ends in.
pub fn run_forever() -> ! {
    let me = percpu::current_index();
    SCHED.lock().add_cpu(me);
    // CPU 0: when the pollers last ran, and when they want to run again.
    let (mut polled_ns, mut poll_again_us) = (0, 0);
    loop {
        let mut now = time::now_ns();
        if me == 0 && now >= polled_ns + POLL_GAP_NS {
            poll_again_us = run_pollers();
            polled_ns = now;
            now = time::now_ns();
        }
        // The earliest deadline is never later than the true one (it is
        // lowered when a vCPU blocks): no scan while it has not passed.
        let earliest_ns = EARLIEST_WAKE_NS.load(Ordering::SeqCst);
        let next_deadline = if now >= earliest_ns {
            wake_expired(now / 1000)
        } else {
            Some(earliest_ns / 1000).filter(|_| earliest_ns != u64::MAX)
        };
        let picked = {
            let mut sched = SCHED.lock();
            sched.pick(me, now / 1000).map(|p| {
                YIELD_AT_NS[me].store(p.yield_at_us.saturating_mul(1000), Ordering::SeqCst);
                let s = p.task.0.sched();
                s.pcpu.store(me, Ordering::SeqCst);
                s.state.store(RUNNING, Ordering::SeqCst);
                (p.task.0, preempt(p.preempt))
            })
        };
        match picked {
            Some((v, target)) => {
                if let Some(t) = target {
                    kick(t);
                }
                let end = v.clone().run_slice();
                slice_ended(me, &v, end);
            }
            None => {
                // Nothing to run: sleep until the earliest guest timer or a kick.
                if run_idle_work() {
                    // Polling for completions: look for a vCPU to run
                    // again at once (a completion may have woken one).
                    core::hint::spin_loop();
                    continue;
                }
                IDLE_PCPUS.fetch_or(1 << me, Ordering::SeqCst);
                let has_work = SCHED.lock().has_work(me);
                if !has_work {
                    let now = time::now_ns();
                    let mut sleep = next_deadline.map_or(0, |d| d.saturating_sub(now / 1000).max(1));
                    if me == 0 {
                        // CPU 0 runs the pollers: wake when they want it.
                        let due = polled_ns + (poll_again_us * 1000).max(POLL_GAP_NS);
                        let poll = due.saturating_sub(now).div_ceil(1000).max(1);
                        sleep = if sleep == 0 { poll } else { sleep.min(poll) };
                    }
                    apic::arm_timer_us(sleep);
                    cpu::wait_for_interrupt();
                }
                IDLE_PCPUS.fetch_and(!(1 << me), Ordering::SeqCst);
            }
        }
    }
}

/// Puts the vCPU that ran on `me` back: queued, blocked or gone. Under
/// the lock, so a `wake` that sees BLOCKED finds it among the blocked.
fn slice_ended(me: usize, v: &Arc<dyn Runnable>, end: SliceEnd) {
    let s = v.sched();
    let mut sched = SCHED.lock();
    let now = now_us();
    let end = match end {
        SliceEnd::Stopped => End::Stopped,
        SliceEnd::Blocked if s.state.compare_exchange(RUNNING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst).is_ok() => {
            if let Some(us) = v.wake_deadline_us() {
                EARLIEST_WAKE_NS.fetch_min(us.saturating_mul(1000), Ordering::SeqCst);
            }
            End::Blocked
        }
        // Preempted, or woken while it was deciding to block.
        _ if s.state.load(Ordering::SeqCst) == STOPPED => End::Stopped,
        _ => {
            s.state.store(QUEUED, Ordering::SeqCst);
            End::Runnable
        }
    };
    if end == End::Stopped {
        s.state.store(STOPPED, Ordering::SeqCst);
    }
    sched.put(me, now, end);
    drop(sched);
    if end == End::Runnable {
        kick_idle(v.affinity() & !(1 << me));
    }
}

/// Lets host interrupts that arrived while a guest ran (they caused the
/// exit and are pending with interrupts off) be taken now.
pub fn take_pending_interrupts() {
    cpu::enable_interrupts_briefly();
}
