use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
struct V {
    id: u32,
    affinity: u64,
}

impl Task for V {
    fn same(&self, other: &Self) -> bool {
        self.id == other.id
    }
    fn affinity(&self) -> u64 {
        self.affinity
    }
}

fn v(id: u32) -> V {
    V { id, affinity: u64::MAX }
}

fn pinned(id: u32, cpu: usize) -> V {
    V { id, affinity: 1 << cpu }
}

/// A policy with `cpus` CPUs and `tasks` runnable (queued in order).
fn policy(cpus: usize, tasks: &[V]) -> Policy<V> {
    let mut p = Policy::new();
    for c in 0..cpus {
        p.add_cpu(c);
    }
    for t in tasks {
        p.add_blocked(t.clone());
        p.wake(t, 0);
    }
    p
}

#[test]
fn picks_the_least_vtime_that_may_run_there() {
    let mut p = policy(2, &[v(1), pinned(2, 1)]);
    assert_eq!(p.pick(0, 0).unwrap().task.id, 1);
    p.put(0, 3000, End::Runnable);
    // vCPU 2 (vtime 0) may not run on CPU 0: vCPU 1 runs again.
    let picked = p.pick(0, 3000).unwrap();
    assert_eq!((picked.task.id, picked.yield_at_us), (1, 3000 + SLICE_US));
    assert!(p.has_work(1) && !p.has_work(0));
    assert_eq!(p.pick(1, 3000).unwrap().task.id, 2);
    assert!(p.pick(0, 3000).is_none());
}

#[test]
fn equal_vtimes_go_in_queue_order() {
    let mut p = policy(1, &[v(1), v(2), v(3)]);
    assert_eq!(p.pick(0, 0).unwrap().task.id, 1);
}

#[test]
fn a_woken_vcpu_preempts_a_spinner_at_once() {
    let mut p = policy(1, &[v(1)]);
    p.add_blocked(v(2));
    p.pick(0, 0);
    assert_eq!(p.wake(&v(2), 5000), Some(Preempt { cpu: 0, at_us: 5000 }));
    assert_eq!(p.yield_at(0), Some(5000));
    p.put(0, 5000, End::Runnable);
    assert_eq!(p.pick(0, 5000).unwrap().task.id, 2);
}

#[test]
fn sleeping_earns_at_most_the_wake_credit() {
    let mut p = policy(1, &[v(1)]);
    p.add_blocked(v(2));
    for t in 0..100 {
        p.pick(0, t * SLICE_US);
        p.put(0, (t + 1) * SLICE_US, End::Runnable);
    }
    let now = 100 * SLICE_US;
    p.pick(0, now);
    p.wake(&v(2), now);
    assert_eq!(p.vtime(&v(2), now), Some(now - WAKE_CREDIT_US));
    // vCPU 1 blocks; vCPU 2 runs 50 ms, blocks and wakes: it keeps its
    // vtime (the floor is behind it); vCPU 1, waking next, is raised to
    // vCPU 2's vtime less the credit.
    p.put(0, now, End::Blocked);
    p.pick(0, now);
    let later = now + 5 * SLICE_US;
    p.put(0, later, End::Blocked);
    p.wake(&v(2), later);
    let v2 = now - WAKE_CREDIT_US + 5 * SLICE_US;
    assert_eq!(p.vtime(&v(2), later), Some(v2));
    p.wake(&v(1), later);
    assert_eq!(p.vtime(&v(1), later), Some(v2 - WAKE_CREDIT_US));
}

#[test]
fn a_busy_waker_waits_until_the_runner_leads_by_the_margin() {
    let mut p = policy(1, &[v(1)]);
    p.pick(0, 0);
    // vCPU 2 wakes constantly and has run as much as vCPU 1 so far.
    p.add_blocked(v(2));
    p.wake(&v(2), 0);
    p.put(0, 10_000, End::Runnable);
    p.pick(0, 10_000); // vCPU 2, vtime 0..
    p.put(0, 20_000, End::Blocked); // ..10_000
    p.pick(0, 20_000); // vCPU 1 at 10_000
    assert_eq!(p.wake(&v(2), 20_400), Some(Preempt { cpu: 0, at_us: 20_000 + PREEMPT_LEAD_US }));
}

#[test]
fn a_free_cpu_takes_the_woken_vcpu_instead_of_a_preemption() {
    let mut p = policy(2, &[v(1)]);
    p.add_blocked(v(2));
    p.pick(0, 0);
    assert_eq!(p.wake(&v(2), 5000), None);
    assert_eq!(p.pick(1, 5000).unwrap().task.id, 2);
}

#[test]
fn a_pinned_vcpu_preempts_only_where_it_may_run() {
    let busy_pair = |third: V| {
        let mut p = policy(2, &[v(1), v(2)]);
        p.add_blocked(third);
        p.pick(0, 0);
        p.pick(1, 0);
        p.put(0, 1000, End::Runnable);
        p.put(1, 8000, End::Runnable);
        p.pick(0, 8000); // vCPU 1 from vtime 1000
        p.pick(1, 8000); // vCPU 2 from vtime 8000
        p
    };
    // CPU 1's vCPU has run longer, but vCPU 3 may only use CPU 0.
    let mut p = busy_pair(pinned(3, 0));
    assert_eq!(p.wake(&pinned(3, 0), 9000), Some(Preempt { cpu: 0, at_us: 9000 }));
    let mut q = busy_pair(v(3));
    assert_eq!(q.wake(&v(3), 9000), Some(Preempt { cpu: 1, at_us: 9000 }));
}

#[test]
fn of_two_woken_at_once_the_second_waits_at_most_the_margin() {
    let mut p = policy(1, &[v(1)]);
    p.add_blocked(v(2));
    p.add_blocked(v(3));
    p.pick(0, 0);
    assert_eq!(p.wake(&v(2), 5000), Some(Preempt { cpu: 0, at_us: 5000 }));
    assert_eq!(p.wake(&v(3), 5000), None); // CPU 0 is choosing again anyway
    p.put(0, 5000, End::Runnable);
    let picked = p.pick(0, 5000).unwrap();
    assert_eq!(picked.task.id, 2);
    assert_eq!(picked.yield_at_us, 5000 + PREEMPT_LEAD_US);
    assert_eq!(picked.preempt, Some(Preempt { cpu: 0, at_us: 5000 + PREEMPT_LEAD_US }));
}

#[test]
fn an_interrupt_to_a_queued_vcpu_preempts_without_credit() {
    let mut p = policy(1, &[v(1), v(2)]);
    // Both were just woken: the second waits at most the margin.
    assert_eq!(p.pick(0, 0).unwrap().yield_at_us, PREEMPT_LEAD_US);
    p.put(0, 1000, End::Runnable);
    assert_eq!(p.pick(0, 1000).unwrap().yield_at_us, 1000 + SLICE_US);
    // vCPU 1 is queued at vtime 1000, vCPU 2 runs from 0: it yields once
    // it leads by the margin, at vtime 2000.
    assert_eq!(p.nudge(&v(1), 1300), Some(Preempt { cpu: 0, at_us: 3000 }));
    assert_eq!(p.nudge(&v(1), 1400), None);
    assert_eq!(p.nudge(&v(2), 1400), None); // running, not queued
}

#[test]
fn waking_a_queued_or_running_vcpu_changes_nothing() {
    let mut p = policy(1, &[v(1), v(2)]);
    p.pick(0, 0);
    assert_eq!(p.yield_at(0), Some(PREEMPT_LEAD_US));
    assert_eq!(p.wake(&v(1), 100), None);
    assert_eq!(p.wake(&v(2), 100), None);
    assert_eq!(p.yield_at(0), Some(PREEMPT_LEAD_US));
    p.put(0, 100, End::Runnable);
    assert_eq!(p.pick(0, 100).unwrap().task.id, 2);
}

#[test]
fn removed_and_stopped_vcpus_are_gone() {
    let mut p = policy(1, &[v(1), v(2)]);
    p.add_blocked(v(3));
    p.remove(&v(2));
    p.remove(&v(3));
    assert!(p.blocked().next().is_none());
    p.pick(0, 0);
    p.put(0, 10, End::Stopped);
    assert!(p.pick(0, 10).is_none());
    assert_eq!(p.vtime(&v(1), 10), None);
    assert!(!p.yield_now(0, 10));
}

#[test]
fn yield_now_ends_the_turn() {
    let mut p = policy(1, &[v(1)]);
    p.pick(0, 0);
    assert!(p.yield_now(0, 40));
    assert_eq!(p.yield_at(0), Some(40));
}

// ---- simulations, in steps of 1 us ----

/// What a simulated vCPU does.
#[derive(Clone, Copy)]
enum Kind {
    /// Always runnable.
    Spin,
    /// A timer every `period`; each tick handled costs `work` of CPU;
    /// one tick can wait while it works, more are dropped.
    Periodic { period: u64, work: u64 },
}

struct Sim {
    kind: Kind,
    task: V,
    ran: u64,
    work_left: u64,
    pending: bool,
    handled: u64,
    /// Ticks from a timer firing to the vCPU running its work.
    waits: Vec<u64>,
    fired_at: Option<u64>,
    blocked: bool,
}

/// Runs `kinds` on `cpus` host CPUs for `duration` us; returns each
/// vCPU's record and the number of switches.
fn simulate(cpus: usize, kinds: &[(Kind, u64)], duration: u64) -> (Vec<Sim>, u64) {
    let mut p: Policy<V> = Policy::new();
    for c in 0..cpus {
        p.add_cpu(c);
    }
    let mut sims: Vec<Sim> = kinds
        .iter()
        .enumerate()
        .map(|(i, &(kind, affinity))| Sim {
            kind,
            task: V { id: i as u32, affinity },
            ran: 0,
            work_left: 0,
            pending: false,
            handled: 0,
            waits: Vec::new(),
            fired_at: None,
            blocked: true,
        })
        .collect();
    for s in &mut sims {
        p.add_blocked(s.task.clone());
        if let Kind::Spin = s.kind {
            s.blocked = false;
            p.wake(&s.task, 0);
        }
    }
    let mut on: Vec<Option<usize>> = vec![None; cpus];
    let mut switches = 0;
    for now in 0..duration {
        for s in sims.iter_mut() {
            if let Kind::Periodic { period, work } = s.kind {
                if now > 0 && now % period == 0 {
                    if s.blocked {
                        s.blocked = false;
                        s.work_left = work;
                        s.fired_at = Some(now);
                        p.wake(&s.task, now);
                    } else {
                        s.pending = true;
                    }
                }
            }
        }
        for (cpu, slot) in on.iter_mut().enumerate() {
            if let Some(i) = *slot {
                let s = &sims[i];
                let end = if s.blocked { Some(End::Blocked) } else { (p.yield_at(cpu).unwrap() <= now).then_some(End::Runnable) };
                if let Some(end) = end {
                    p.put(cpu, now, end);
                    *slot = None;
                }
            }
            if slot.is_none() {
                if let Some(picked) = p.pick(cpu, now) {
                    let i = picked.task.id as usize;
                    *slot = Some(i);
                    switches += 1;
                    if let Some(t) = sims[i].fired_at.take() {
                        sims[i].waits.push(now - t);
                    }
                }
            }
        }
        for i in on.iter().flatten() {
            let s = &mut sims[*i];
            s.ran += 1;
            if let Kind::Periodic { work, .. } = s.kind {
                s.work_left -= 1;
                if s.work_left == 0 {
                    s.handled += 1;
                    if s.pending {
                        s.pending = false;
                        s.work_left = work;
                    } else {
                        s.blocked = true;
                    }
                }
            }
        }
    }
    (sims, switches)
}

const ALL: u64 = u64::MAX;

#[test]
fn a_vcpu_waking_every_100us_to_work_90us_cannot_starve_a_spinner() {
    let (sims, _) = simulate(1, &[(Kind::Spin, ALL), (Kind::Periodic { period: 100, work: 90 }, ALL)], 300_000);
    let (spin, waker) = (&sims[0], &sims[1]);
    assert!(spin.ran >= 140_000, "spinner ran {} of 300000 us", spin.ran);
    assert!(waker.ran >= 140_000, "waker ran {} of 300000 us", waker.ran);
    assert!(waker.handled >= 1500, "waker handled {} ticks", waker.handled);
}

#[test]
fn a_light_waker_runs_the_moment_it_wakes() {
    let (sims, switches) =
        simulate(1, &[(Kind::Spin, ALL), (Kind::Periodic { period: 2000, work: 50 }, ALL)], 300_000);
    let waker = &sims[1];
    assert_eq!(waker.handled, 149);
    assert_eq!(waker.waits.iter().max(), Some(&0));
    assert!(sims[0].ran > 290_000);
    assert!(switches < 2 * 150 + 5, "{switches} switches");
}

#[test]
fn spinners_take_turns_in_whole_slices() {
    let (sims, switches) = simulate(1, &[(Kind::Spin, ALL), (Kind::Spin, ALL)], 300_000);
    // Woken together at the start, the first yields after the margin;
    // from then on whole slices.
    assert_eq!(switches, 31);
    assert!(sims[0].ran.abs_diff(150_000) <= PREEMPT_LEAD_US, "{}", sims[0].ran);
}

#[test]
fn three_busy_wakers_and_a_spinner_share_two_cpus() {
    let busy = Kind::Periodic { period: 100, work: 90 };
    let (sims, _) = simulate(2, &[(Kind::Spin, ALL), (busy, ALL), (busy, ALL), (busy, ALL)], 300_000);
    for s in &sims {
        // An equal share is 150_000 us of the 600_000.
        assert!(s.ran >= 120_000, "vCPU {} ran {}", s.task.id, s.ran);
    }
}

#[test]
fn a_waker_pinned_to_a_cpu_is_served_there_promptly() {
    let light = Kind::Periodic { period: 1000, work: 20 };
    let (sims, _) = simulate(2, &[(Kind::Spin, 1), (Kind::Spin, 2), (light, 2)], 100_000);
    let waker = &sims[2];
    assert_eq!(waker.handled, 99);
    assert_eq!(waker.waits.iter().max(), Some(&0));
    assert!(sims[0].ran == 100_000, "the spinner on CPU 0 was never disturbed");
}
