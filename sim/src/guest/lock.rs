//! The VM's FIFO ticket spinlock: taking it, waiting for it (spinning, or with PV locks
//! yielding to a preempted holder and then blocking until kicked), and handing it on.

use sched::Ns;
use sched::harness::State;

use super::{Activity, Guest, Monitor, Next, Then, ThreadState};
use crate::model::LockOps;

impl Guest {
    /// Thread `t` on `x`, having done `done` operations, takes the lock: for a batch if it
    /// is free, else it queues for one operation.
    pub(super) fn lock(&mut self, x: usize, t: usize, done: u64, now: Ns) {
        let LockOps { ops, batch: most, .. } = self.model.lock.expect("a locking model");
        self.stats.acquisitions += 1;
        if self.holder.is_none() {
            self.holder = Some(t);
            self.threads[t].pc += 1;
            self.threads[t].batch = most.min(ops - done);
        } else {
            self.stats.contended += 1;
            self.threads[t].batch = 1;
            self.lock_queue.push_back(t);
            self.cpus[x].activity = Activity::LockWait { since: now };
        }
    }

    /// Thread `t` releases the lock to the next waiter. Returns whether it kicked one.
    pub(super) fn unlock(&mut self, t: usize, m: &mut Monitor) -> bool {
        self.threads[t].pc += 1;
        self.holder = self.lock_queue.pop_front();
        let Some(next) = self.holder else { return false };
        let ThreadState::On(y) = self.threads[next].state else { return false };
        // Handed to a running VCPU, the lock passes on at cache speed: a batch again. Handed
        // to a preempted or blocked one, it waits for that VCPU for each operation.
        if self.is_running(y) {
            let LockOps { ops, batch: most, .. } = self.model.lock.expect("a locking model");
            self.threads[next].batch = most.min(ops - self.threads[next].ops);
        }
        match m.states[y] {
            // Waiters looking at the ticket's owner see it preempted at their next check, as
            // when a running owner is preempted.
            State::Runnable if self.preempted_now(y, m) => self.preempted(y, m),
            State::Runnable => self.poke(y, 0, m),
            State::Blocked => {
                self.stats.kicks += 1;
                self.kick(y, m);
                return true;
            }
            State::Offline => {}
        }
        false
    }

    /// `x`'s thread waits for the lock since `since`.
    pub(super) fn lock_wait(&mut self, x: usize, since: Ns, m: &mut Monitor) -> Option<Next> {
        let t = self.cpus[x].thread.expect("a lock waiter has a thread");
        if self.holder == Some(t) {
            self.threads[t].pc += 1;
            self.cpus[x].activity = Activity::Run;
            return None;
        }
        let Some((yield_after, block_after)) = self.pv else { return Some(Next::Wait) };
        if m.now < since + yield_after {
            return Some(Next::After(since + yield_after - m.now));
        }
        let owner = self.holder.and_then(|h| match self.threads[h].state {
            ThreadState::On(y) => Some(y),
            _ => None,
        });
        if m.now >= since + block_after {
            self.stats.blocks += 1;
            self.hypercall(x, Then::Block, Activity::LockWait { since });
        } else if let Some(owner) = owner.filter(|&y| y != x && self.preempted_now(y, m)) {
            self.stats.directed_yields += 1;
            self.hypercall(x, Then::Yield(Some(owner)), Activity::LockWait { since });
        } else {
            return Some(Next::After(since + block_after - m.now));
        }
        None
    }
}
