//! The VM's spinlock, of the family `locks=` names: a FIFO ticket lock ([`ticket`]: `spin`,
//! `pv`) or a queued lock after Linux's qspinlock ([`queued`]: `qspin`, `pvqspin`). Taking a
//! free lock is the same for every family; waiting and handing on differ.

mod queued;
mod ticket;

use sched::Ns;

use super::{Activity, Guest, Monitor, Next, ThreadState};
use crate::model::LockOps;

/// The spinlock family, with the bounds of its paravirtual waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Locks {
    /// Ticket lock; waiters spin.
    Spin,
    /// Ticket lock; a waiter yields to a preempted holder after `yield_after` and blocks its
    /// VCPU after `block_after`.
    Pv { yield_after: Ns, block_after: Ns },
    /// Queued lock; waiters spin.
    Qspin,
    /// Queued lock; a queued waiter blocks its thread after `spin` (or as soon as its
    /// predecessor stops), the head after `head`. `yield_after` is for the runtime's other
    /// paravirtual waits (a barrier's relax).
    PvQspin { yield_after: Ns, spin: Ns, head: Ns },
}

impl Locks {
    /// The family the guest parameters name.
    pub(super) fn of(guest: &workloads::Params) -> anyhow::Result<Locks> {
        let us = |key: &str| guest.u64(key) * 1_000;
        Ok(match guest.str("locks") {
            "spin" => Locks::Spin,
            "pv" => Locks::Pv { yield_after: us("pv_yield_us"), block_after: us("pv_block_us") },
            "qspin" => Locks::Qspin,
            "pvqspin" => {
                Locks::PvQspin { yield_after: us("pv_yield_us"), spin: us("pvq_spin_us"), head: us("pvq_head_us") }
            }
            other => anyhow::bail!("the simulator has no model of the lock family {other}"),
        })
    }

    /// With a paravirtual family, how long the runtime's waits spin before they look at the
    /// VCPUs in the shared page.
    pub(super) fn pv_yield(self) -> Option<Ns> {
        match self {
            Locks::Pv { yield_after, .. } | Locks::PvQspin { yield_after, .. } => Some(yield_after),
            Locks::Spin | Locks::Qspin => None,
        }
    }

    fn queued(self) -> bool {
        matches!(self, Locks::Qspin | Locks::PvQspin { .. })
    }
}

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
