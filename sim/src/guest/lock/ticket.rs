//! The FIFO ticket lock: the unlock hands it to the next waiter in line, who waits for it
//! spinning, or with PV locks yields to a preempted holder and then blocks until kicked.

use sched::Ns;
use sched::harness::State;

use super::super::{Activity, Guest, Monitor, Next, Then, ThreadState};
use super::Locks;
use crate::model::LockOps;

impl Guest {
    /// The lock passes to the next waiter. Returns whether the unlocker kicked it.
    pub(super) fn ticket_unlock(&mut self, m: &mut Monitor) -> bool {
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

    /// `x`'s thread, not served yet, waits for its turn since `since`.
    pub(super) fn ticket_wait(&mut self, x: usize, since: Ns, m: &mut Monitor) -> Option<Next> {
        let Locks::Pv { yield_after, block_after } = self.locks else { return Some(Next::Wait) };
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
