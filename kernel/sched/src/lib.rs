//! Ferrite's vCPU scheduling decisions as pure logic: which vCPU a host
//! CPU runs next, for how long, and which running vCPU a woken one
//! preempts. The kernel's `sched.rs` keeps a [`Policy`] under its lock and
//! does the rest (vCPU states, host timers, IPIs).
//!
//! Virtual time: every vCPU has a `vtime`, the microseconds it has run. A
//! host CPU runs the queued vCPU with the least vtime that may run there
//! (its affinity), for at most [`SLICE_US`]. A vCPU woken from blocked (an
//! interrupt or its timer) is queued with its vtime raised to at least
//! `floor - WAKE_CREDIT_US`, the floor being the least vtime of the vCPUs
//! that want a CPU, so sleeping earns at most that much credit. It then
//! preempts, among the host CPUs it may use, the one whose vCPU has the
//! most vtime: at once if that one is more than [`PREEMPT_LEAD_US`] ahead,
//! otherwise at the moment it will be.
//!
//! So a vCPU that wakes now and then and runs briefly (a timer tick, an
//! IPI, a stub domain's I/O request) runs at once, like the BOOST of Xen's
//! credit scheduler; one that wakes constantly and runs a lot soon has as
//! much vtime as its neighbours, and from then on takes turns with them
//! every `PREEMPT_LEAD_US` or so: it cannot push anyone below an equal
//! share. vCPUs that never block take turns in whole slices.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

/// Longest a vCPU runs while others wait for its host CPU.
pub const SLICE_US: u64 = 10_000;
/// Most run time a woken vCPU may be behind the least-served runnable one.
/// Above [`PREEMPT_LEAD_US`], so a vCPU woken after a sleep preempts at once.
pub const WAKE_CREDIT_US: u64 = 2_000;
/// How far ahead (in run time) a running vCPU must be of a woken one to be
/// preempted for it; bounds how often two busy vCPUs switch.
pub const PREEMPT_LEAD_US: u64 = 1_000;

/// A vCPU as the policy sees it.
pub trait Task: Clone {
    fn same(&self, other: &Self) -> bool;
    /// Host CPUs it may run on (bit i = CPU i).
    fn affinity(&self) -> u64;
}

/// Host CPU `cpu` must stop its vCPU at `at_us` (it may be now or past):
/// the caller arranges that (a timer, or an IPI for another CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preempt {
    pub cpu: usize,
    pub at_us: u64,
}

/// How a vCPU's turn on a host CPU ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It can run on (preempted, or woken while it was blocking).
    Runnable,
    Blocked,
    /// It never runs again.
    Stopped,
}

/// What [`Policy::pick`] chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked<T> {
    pub task: T,
    /// When it must give the CPU up.
    pub yield_at_us: u64,
    /// A woken vCPU still waiting preempts some CPU (possibly this one:
    /// then `yield_at_us` already says so).
    pub preempt: Option<Preempt>,
}

struct Entry<T> {
    task: T,
    vtime: u64,
    /// Woken from blocked and not run since.
    woken: bool,
}

struct Running<T> {
    task: T,
    /// vtime when its turn began at `since`.
    vtime: u64,
    since: u64,
    yield_at: u64,
}

impl<T> Running<T> {
    fn vtime_at(&self, now: u64) -> u64 {
        self.vtime + now.saturating_sub(self.since)
    }
}

struct Cpu<T> {
    online: bool,
    running: Option<Running<T>>,
}

/// The run queue, the blocked vCPUs and what each host CPU runs. Times
/// are microseconds on one clock shared by all host CPUs.
pub struct Policy<T> {
    queued: Vec<Entry<T>>,
    blocked: Vec<Entry<T>>,
    cpus: Vec<Cpu<T>>,
    /// Least vtime of the vCPUs wanting a CPU, as last seen; never falls.
    floor: u64,
}

fn cpu_bit(cpu: usize) -> u64 {
    u32::try_from(cpu).ok().and_then(|c| 1u64.checked_shl(c)).unwrap_or(0)
}

impl<T: Task> Default for Policy<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Task> Policy<T> {
    pub const fn new() -> Self {
        Policy { queued: Vec::new(), blocked: Vec::new(), cpus: Vec::new(), floor: 0 }
    }

    /// Host CPU `cpu` takes part in scheduling.
    pub fn add_cpu(&mut self, cpu: usize) {
        while self.cpus.len() <= cpu {
            self.cpus.push(Cpu { online: false, running: None });
        }
        self.cpus[cpu].online = true;
    }

    /// A new vCPU, blocked until woken.
    pub fn add_blocked(&mut self, task: T) {
        self.blocked.push(Entry { task, vtime: self.floor, woken: false });
    }

    /// Forgets a vCPU that is queued or blocked (a running one leaves
    /// through [`Policy::put`] with [`End::Stopped`]).
    pub fn remove(&mut self, task: &T) {
        self.queued.retain(|e| !e.task.same(task));
        self.blocked.retain(|e| !e.task.same(task));
    }

    /// A blocked vCPU becomes runnable: queued with its wake-up credit;
    /// returns the preemption it causes, if any. A vCPU not known as
    /// blocked is queued at the floor.
    pub fn wake(&mut self, task: &T, now: u64) -> Option<Preempt> {
        let mut e = match self.blocked.iter().position(|e| e.task.same(task)) {
            Some(i) => self.blocked.swap_remove(i),
            None if self.queued.iter().any(|e| e.task.same(task)) || self.is_running(task) => return None,
            None => Entry { task: task.clone(), vtime: self.floor, woken: false },
        };
        e.vtime = e.vtime.max(self.update_floor(now).saturating_sub(WAKE_CREDIT_US));
        e.woken = true;
        let (affinity, vtime) = (e.task.affinity(), e.vtime);
        self.queued.push(e);
        self.place(affinity, vtime, now)
    }

    /// A queued vCPU got an interrupt: it preempts a CPU as a woken one
    /// would, but with the vtime it has (no credit).
    pub fn nudge(&mut self, task: &T, now: u64) -> Option<Preempt> {
        let e = self.queued.iter().find(|e| e.task.same(task))?;
        let (affinity, vtime) = (e.task.affinity(), e.vtime);
        self.place(affinity, vtime, now)
    }

    /// The next vCPU for `cpu`: the queued one with the least vtime that
    /// may run there (the longest queued first among equals).
    pub fn pick(&mut self, cpu: usize, now: u64) -> Option<Picked<T>> {
        self.add_cpu(cpu);
        let bit = cpu_bit(cpu);
        let mut best: Option<(usize, u64)> = None;
        for (i, e) in self.queued.iter().enumerate() {
            if e.task.affinity() & bit != 0 && best.is_none_or(|(_, v)| e.vtime < v) {
                best = Some((i, e.vtime));
            }
        }
        let e = self.queued.remove(best?.0);
        let yield_at = now + SLICE_US;
        self.cpus[cpu].running = Some(Running { task: e.task.clone(), vtime: e.vtime, since: now, yield_at });
        // A woken vCPU this CPU did not take must not wait a whole slice.
        let waiting = self.queued.iter().filter(|e| e.woken).min_by_key(|e| e.vtime).map(|e| (e.task.affinity(), e.vtime));
        let preempt = waiting.and_then(|(affinity, vtime)| self.place(affinity, vtime, now));
        let yield_at_us = self.cpus[cpu].running.as_ref().map_or(yield_at, |r| r.yield_at);
        Some(Picked { task: e.task, yield_at_us, preempt })
    }

    /// `cpu`'s vCPU stopped running at `now`, for reason `end`.
    pub fn put(&mut self, cpu: usize, now: u64, end: End) {
        let Some(r) = self.cpus.get_mut(cpu).and_then(|c| c.running.take()) else {
            return;
        };
        let e = Entry { vtime: r.vtime_at(now), task: r.task, woken: false };
        match end {
            End::Runnable => self.queued.push(e),
            End::Blocked => self.blocked.push(e),
            End::Stopped => {}
        }
    }

    /// Makes `cpu`'s vCPU yield now (e.g. its affinity no longer has the
    /// CPU); false when it runs nothing.
    pub fn yield_now(&mut self, cpu: usize, now: u64) -> bool {
        match self.cpus.get_mut(cpu).and_then(|c| c.running.as_mut()) {
            Some(r) => {
                r.yield_at = r.yield_at.min(now);
                true
            }
            None => false,
        }
    }

    /// Whether a queued vCPU may run on `cpu`.
    pub fn has_work(&self, cpu: usize) -> bool {
        let bit = cpu_bit(cpu);
        self.queued.iter().any(|e| e.task.affinity() & bit != 0)
    }

    pub fn blocked(&self) -> impl Iterator<Item = &T> {
        self.blocked.iter().map(|e| &e.task)
    }

    /// A vCPU's vtime now, wherever it is.
    pub fn vtime(&self, task: &T, now: u64) -> Option<u64> {
        let parked = self.queued.iter().chain(&self.blocked).find(|e| e.task.same(task)).map(|e| e.vtime);
        parked.or_else(|| self.running(task).map(|r| r.vtime_at(now)))
    }

    /// When `cpu`'s vCPU must yield (None: it runs none).
    pub fn yield_at(&self, cpu: usize) -> Option<u64> {
        self.cpus.get(cpu)?.running.as_ref().map(|r| r.yield_at)
    }

    fn running(&self, task: &T) -> Option<&Running<T>> {
        self.cpus.iter().filter_map(|c| c.running.as_ref()).find(|r| r.task.same(task))
    }

    fn is_running(&self, task: &T) -> bool {
        self.running(task).is_some()
    }

    fn update_floor(&mut self, now: u64) -> u64 {
        let queued = self.queued.iter().map(|e| e.vtime);
        let running = self.cpus.iter().filter_map(|c| c.running.as_ref()).map(|r| r.vtime_at(now));
        if let Some(least) = queued.chain(running).min() {
            self.floor = self.floor.max(least);
        }
        self.floor
    }

    /// Where a runnable vCPU with `vtime` gets a CPU soon: nowhere to
    /// preempt if a CPU it may use runs nothing or is about to choose
    /// again; else the CPU whose vCPU has the most vtime yields once that
    /// one is `PREEMPT_LEAD_US` ahead (now, if it is already).
    fn place(&mut self, affinity: u64, vtime: u64, now: u64) -> Option<Preempt> {
        let mut victim: Option<(usize, u64)> = None;
        for (i, c) in self.cpus.iter().enumerate() {
            if !c.online || affinity & cpu_bit(i) == 0 {
                continue;
            }
            let r = c.running.as_ref()?;
            if r.yield_at <= now {
                return None;
            }
            let v = r.vtime_at(now);
            if victim.is_none_or(|(_, most)| v > most) {
                victim = Some((i, v));
            }
        }
        let (cpu, v) = victim?;
        let at = now + (vtime + PREEMPT_LEAD_US).saturating_sub(v);
        let r = self.cpus[cpu].running.as_mut()?;
        if at >= r.yield_at {
            return None;
        }
        r.yield_at = at;
        Some(Preempt { cpu, at_us: at })
    }
}

#[cfg(test)]
mod tests;
