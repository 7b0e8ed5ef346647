//! The queued lock, after Linux's qspinlock: waiters queue in FIFO order (MCS) and only the
//! queue's head waits on the lock itself. An unlock leaves the lock free rather than handing
//! it to a waiter: the head takes it when its VCPU runs, and a thread that arrives while it
//! is free takes it past the queue (a steal). So a preempted head holds up only the waiters
//! queued behind it, not the running threads that arrive.
//!
//! `pvqspin` adds Linux's paravirtual slow path: a queued waiter spins for `pvq_spin_us`, or
//! less once its predecessor is preempted or blocked, then blocks its thread; made the head
//! while blocked, it is not kicked then, but the lock is marked slow so that its unlock kicks
//! it (pv_kick_node). The head spins for `pvq_head_us`, then marks the lock slow and blocks.
//! An unlock kicks only for a lock marked slow, once, and the lock stays free meanwhile. A
//! waiter blocks at most once per wait: kicked, it spins until it takes the lock, even if a
//! thread stole it meanwhile (a spurious wake-up). So a contended acquisition costs at most
//! one kick.

use sched::Ns;
use workloads::timing::PV_CHECK_PERIOD_NS;

use super::super::{Activity, Guest, Monitor, Next, ThreadState};
use super::Locks;
use crate::model::LockOps;

impl Guest {
    /// The lock is free: a head spinning on a running VCPU takes it at once; a blocked head
    /// is kicked if it marked the lock slow. Returns whether the unlocker kicked a VCPU.
    pub(super) fn queued_unlock(&mut self, m: &mut Monitor) -> bool {
        self.holder = None;
        let Some(&head) = self.lock_queue.front() else { return false };
        if std::mem::take(&mut self.slow) {
            debug_assert!(self.threads[head].halted && self.threads[head].state == ThreadState::Blocked);
            self.stats.kicks += 1;
            return self.ready(head, m);
        }
        // A head preempted (or woken and not running yet) takes it when it runs, for one
        // operation, as a ticket handed to a preempted VCPU; running threads may steal it
        // meanwhile.
        let ThreadState::On(y) = self.threads[head].state else { return false };
        if self.is_running(y) {
            // At cache speed, as a ticket handed to a running VCPU: a batch again.
            let LockOps { ops, batch: most, .. } = self.model.lock.expect("a locking model");
            self.threads[head].batch = most.min(ops - self.threads[head].ops);
            self.take_queued(head, m);
            self.poke(y, 0, m);
        }
        false
    }

    /// `x`'s thread `t`, queued since `since` (or since it became the head, or ran again
    /// after blocking), waits for the lock.
    pub(super) fn queued_wait(&mut self, x: usize, t: usize, since: Ns, m: &mut Monitor) -> Option<Next> {
        let woken = std::mem::take(&mut self.threads[t].halted);
        let head = self.lock_queue.front() == Some(&t);
        if head && self.holder.is_none() {
            self.take_queued(t, m);
            self.threads[t].pc += 1;
            self.cpus[x].activity = Activity::Run;
            return None;
        }
        if woken && head {
            // Kicked by an unlock, but the lock was taken meanwhile.
            self.stats.spurious_wakeups += 1;
        }
        let Locks::PvQspin { spin, head: head_spin, .. } = self.locks else { return Some(Next::Wait) };
        if self.threads[t].slow_path {
            // Kicked once this wait: the unlock that kicked it took the lock off the slow
            // list, so it spins until it takes it (Linux hashes a lock once per wait).
            return Some(Next::Wait);
        }
        let bound = since + if head { head_spin } else { spin };
        let early = !head && self.predecessor_stopped(t, m);
        if !early && m.now < bound {
            return Some(Next::After(bound - m.now));
        }
        self.threads[t].slow_path = true;
        self.stats.slow_paths += 1;
        self.stats.blocks += 1;
        self.threads[t].halted = true;
        // A blocked head is kicked by the unlock; a blocked queued waiter, once its
        // predecessor has taken the lock and made it the head.
        self.slow |= head;
        self.release_thread(x, ThreadState::Blocked, m);
        // Its successor sees it stopped at its next check, and blocks too.
        if let Some(ThreadState::On(z)) = self.successor(t).map(|s| self.threads[s].state) {
            self.poke(z, PV_CHECK_PERIOD_NS, m);
        }
        None
    }

    /// Head `t` takes the free lock. Its successor becomes the head: spinning, it starts its
    /// head's spin now; blocked, it stays so and the lock is marked slow, so that this
    /// holder's unlock kicks it.
    fn take_queued(&mut self, t: usize, m: &mut Monitor) {
        let head = self.lock_queue.pop_front();
        debug_assert_eq!(head, Some(t));
        self.holder = Some(t);
        let Some(&next) = self.lock_queue.front() else { return };
        if self.threads[next].halted {
            self.slow = true;
        } else if let ThreadState::On(y) = self.threads[next].state {
            debug_assert!(matches!(self.cpus[y].activity, Activity::LockWait { .. }));
            self.cpus[y].activity = Activity::LockWait { since: m.now };
            if matches!(self.locks, Locks::PvQspin { .. }) {
                self.poke(y, 0, m);
            }
        }
    }

    /// The thread queued just before `t`, if `t` is not the head.
    pub(super) fn predecessor(&self, t: usize) -> Option<usize> {
        let at = self.lock_queue.iter().position(|&w| w == t)?;
        at.checked_sub(1).map(|p| self.lock_queue[p])
    }

    fn successor(&self, t: usize) -> Option<usize> {
        let at = self.lock_queue.iter().position(|&w| w == t)?;
        self.lock_queue.get(at + 1).copied()
    }

    /// Whether `t`'s predecessor has stopped spinning: blocked, or on a VCPU the shared
    /// page shows preempted. Its own turn is then at least a kick away.
    fn predecessor_stopped(&self, t: usize, m: &Monitor) -> bool {
        self.predecessor(t).is_some_and(|p| match self.threads[p].state {
            ThreadState::On(y) => self.preempted_now(y, m),
            _ => self.threads[p].halted,
        })
    }
}
