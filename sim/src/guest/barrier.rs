//! The VM's barrier: spinning (PV: yielding to a preempted sibling) or spin-then-block.

use sched::Ns;
use workloads::BarrierKind;
use workloads::timing::SPIN_BEFORE_BLOCK_NS;

use super::{Activity, Guest, Monitor, Next, Then, ThreadState};

impl Guest {
    /// Thread `t` on `x` reaches the barrier, with `ops` done when it opens. Returns whether
    /// it kicked a VCPU.
    pub(super) fn arrive(&mut self, x: usize, t: usize, ops: u64, m: &mut Monitor) -> bool {
        self.arrived.push(t);
        if self.arrived.len() < self.threads.len() {
            let generation = self.generation;
            self.threads[t].waiting = Some(generation);
            let next_look = m.now + self.locks.pv_yield().unwrap_or(0);
            self.cpus[x].activity = Activity::BarrierWait { generation, since: m.now, next_look };
            return false;
        }
        self.generation += 1;
        self.opened_at = m.now;
        self.ops += ops;
        self.threads[t].ops += ops;
        self.threads[t].pc += 1;
        let mut kicked = false;
        for w in std::mem::take(&mut self.arrived) {
            if w == t {
                continue;
            }
            match self.threads[w].state {
                ThreadState::On(y) => self.poke(y, 0, m),
                ThreadState::Blocked => kicked |= self.ready(w, m),
                ThreadState::Ready | ThreadState::Done => {}
            }
        }
        kicked
    }

    /// `x`'s thread waits at the barrier for generation `generation` to pass, since `since`;
    /// with PV locks it looks for a preempted sibling at `next_look`.
    pub(super) fn barrier_wait(
        &mut self,
        x: usize,
        generation: u64,
        since: Ns,
        next_look: Ns,
        m: &mut Monitor,
    ) -> Option<Next> {
        let t = self.cpus[x].thread.expect("a barrier waiter has a thread");
        if self.generation != generation {
            self.pass_barrier(t);
            self.cpus[x].activity = Activity::Run;
            return None;
        }
        // relax(): let a thread with work have this VCPU.
        if self.work_ready() || self.surplus(x) {
            self.release_thread(x, ThreadState::Ready, m);
            return None;
        }
        let blocking = self.model.barrier == BarrierKind::SpinThenBlock;
        if blocking && m.now >= since + SPIN_BEFORE_BLOCK_NS {
            self.release_thread(x, ThreadState::Blocked, m);
            return None;
        }
        let mut next = if blocking { since + SPIN_BEFORE_BLOCK_NS } else { Ns::MAX };
        if let Some(yield_after) = self.locks.pv_yield() {
            let mut next_look = next_look;
            if m.now >= next_look {
                next_look = m.now + yield_after;
                let resume = Activity::BarrierWait { generation, since, next_look };
                if let Some(sibling) = self.preempted_sibling(x, m) {
                    self.hypercall(x, Then::Yield(Some(sibling)), resume);
                    return None;
                }
                self.cpus[x].activity = resume;
            }
            next = next.min(next_look);
        }
        if next == Ns::MAX {
            return Some(Next::Wait);
        }
        Some(Next::After(next.max(m.now) - m.now))
    }

    /// What thread `t`, picked up by a VCPU at `now`, goes on with.
    pub(super) fn resume_thread(&mut self, t: usize, now: Ns) -> Activity {
        if self.threads[t].halted {
            // A queued lock's waiter, woken: it spins again.
            return Activity::LockWait { since: now };
        }
        match self.threads[t].waiting {
            Some(generation) if generation == self.generation => {
                Activity::BarrierWait { generation, since: now, next_look: now }
            }
            Some(_) => {
                self.pass_barrier(t);
                Activity::Run
            }
            None => Activity::Run,
        }
    }

    fn pass_barrier(&mut self, t: usize) {
        let thread = &mut self.threads[t];
        thread.waiting = None;
        thread.pc += 1;
    }

    /// Whether thread `t` still waits at the barrier (its generation has not passed).
    pub(super) fn at_barrier(&self, t: usize) -> bool {
        self.threads[t].waiting == Some(self.generation)
    }

    /// Whether a thread with work (not a barrier waiter) is ready.
    fn work_ready(&self) -> bool {
        self.pool.iter().any(|&t| !self.at_barrier(t))
    }

    /// A sibling of `x` that is preempted, as the shared page shows it.
    fn preempted_sibling(&self, x: usize, m: &Monitor) -> Option<usize> {
        (0..self.cpus.len()).find(|&y| y != x && self.preempted_now(y, m))
    }
}
