//! The VM's spinlock, of the family `locks=` names: a FIFO ticket lock ([`ticket`]: `spin`,
//! `pv`) or a queued lock after Linux's qspinlock ([`queued`]: `qspin`, `pvqspin`). Taking a
//! free lock is the same for every family; waiting and handing on differ.

mod queued;
mod ticket;

use sched::Ns;

use super::family::Locks;
use super::{Activity, Guest, Monitor, Next, ThreadState};
use crate::model::LockOps;

impl Guest {
    /// Thread `t` on `x`, having done `done` operations, takes the lock: for a batch if it
    /// is free, else it queues for one operation.
    pub(super) fn lock(&mut self, x: usize, t: usize, done: u64, now: Ns) {
        let LockOps { ops, batch: most, .. } = self.model.lock.expect("a locking model");
        self.stats.acquisitions += 1;
        if self.holder.is_none() {
            // A ticket lock is free only with nobody queued; a queued lock also between an
            // unlock and its head taking it.
            if !self.lock_queue.is_empty() {
                self.stats.steals += 1;
            }
            self.holder = Some(t);
            self.threads[t].pc += 1;
            self.threads[t].batch = most.min(ops - done);
        } else {
            self.stats.contended += 1;
            self.threads[t].batch = 1;
            self.threads[t].slow_path = false;
            self.lock_queue.push_back(t);
            self.cpus[x].activity = Activity::LockWait { since: now };
        }
    }

    /// Thread `t` releases the lock. Returns whether it kicked a waiter.
    pub(super) fn unlock(&mut self, t: usize, m: &mut Monitor) -> bool {
        self.threads[t].pc += 1;
        if self.locks.queued() { self.queued_unlock(m) } else { self.ticket_unlock(m) }
    }

    /// `x`'s thread waits for the lock since `since`.
    pub(super) fn lock_wait(&mut self, x: usize, since: Ns, m: &mut Monitor) -> Option<Next> {
        let t = self.cpus[x].thread.expect("a lock waiter has a thread");
        if self.holder == Some(t) {
            // Handed over by the unlock.
            self.threads[t].pc += 1;
            self.cpus[x].activity = Activity::Run;
            return None;
        }
        if self.locks.queued() { self.queued_wait(x, t, since, m) } else { self.ticket_wait(x, since, m) }
    }

    /// Whether the lock waiter on `z`, waiting since `since`, notices by `looking` that VCPU
    /// `y` was preempted.
    pub(super) fn notices_preemption(&self, z: usize, y: usize, since: Ns, looking: Ns) -> bool {
        match self.locks {
            // It looks at whoever it waits for, past its first bound.
            Locks::Pv { yield_after, .. } => since + yield_after <= looking,
            // A queued waiter watches its predecessor only.
            Locks::PvQspin { .. } => {
                let t = self.cpus[z].thread.expect("a lock waiter has a thread");
                self.predecessor(t).is_some_and(|p| self.threads[p].state == ThreadState::On(y))
            }
            Locks::Spin | Locks::Qspin => false,
        }
    }
}
