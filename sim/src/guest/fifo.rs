//! The pipeline's bounded queues between stages, counted in batches: a stage blocks on an
//! empty or full queue until the stage on the other side wakes it.

use std::collections::VecDeque;

use super::{Guest, Monitor, ThreadState};

/// A pipeline queue, in batches.
#[derive(Clone, Debug, Default)]
pub(super) struct Fifo {
    items: u64,
    capacity: u64,
    /// Threads blocked until a batch comes.
    poppers: VecDeque<usize>,
    /// Threads blocked until there is room.
    pushers: VecDeque<usize>,
}

impl Fifo {
    pub(super) fn new(capacity: u64) -> Fifo {
        Fifo { capacity, ..Fifo::default() }
    }
}

impl Guest {
    /// Thread `t` on `x` takes a batch from queue `q`, or blocks while it is empty. Returns
    /// whether it kicked a VCPU.
    pub(super) fn pop(&mut self, x: usize, t: usize, q: usize, m: &mut Monitor) -> bool {
        let fifo = &mut self.queues[q];
        if fifo.items == 0 {
            fifo.poppers.push_back(t);
            self.release_thread(x, ThreadState::Blocked, m);
            return false;
        }
        fifo.items -= 1;
        let woken = fifo.pushers.pop_front();
        // Stage q pushes into queue q, stage q + 1 pops from it.
        self.passed(x, t, q, woken, m)
    }

    /// Thread `t` on `x` puts a batch into queue `q`, or blocks while it is full. Returns
    /// whether it kicked a VCPU.
    pub(super) fn push(&mut self, x: usize, t: usize, q: usize, m: &mut Monitor) -> bool {
        let fifo = &mut self.queues[q];
        if fifo.items >= fifo.capacity {
            fifo.pushers.push_back(t);
            self.release_thread(x, ThreadState::Blocked, m);
            return false;
        }
        fifo.items += 1;
        let woken = fifo.poppers.pop_front();
        self.passed(x, t, q + 1, woken, m)
    }

    /// Thread `t` on `x` passed a batch to or from the stage `partner`, waking thread
    /// `woken` on the queue's other side if it was blocked there.
    fn passed(&mut self, x: usize, t: usize, partner: usize, woken: Option<usize>, m: &mut Monitor) -> bool {
        self.threads[t].pc += 1;
        if let ThreadState::On(y) = self.threads[partner].state
            && y != x
            && self.is_running(y)
        {
            self.threads[t].debt += self.model.queue_crossing;
        }
        woken.is_some_and(|w| self.ready(w, m))
    }
}
