//! The pipeline's bounded queues between stages, counted in batches: a stage blocks on an
//! empty or full queue until the stage on the other side wakes it.

use std::collections::VecDeque;

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

/// What a thread's pop or push came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Passed {
    /// The queue was empty (full): the thread waits on it.
    Blocked,
    /// A batch went through, and woke this thread waiting on the queue's other side.
    Through { woken: Option<usize> },
}

impl Fifo {
    pub(super) fn new(capacity: u64) -> Fifo {
        Fifo { capacity, ..Fifo::default() }
    }

    /// Thread `t` takes a batch, or waits while the queue is empty.
    pub(super) fn pop(&mut self, t: usize) -> Passed {
        if self.items == 0 {
            self.poppers.push_back(t);
            return Passed::Blocked;
        }
        self.items -= 1;
        Passed::Through { woken: self.pushers.pop_front() }
    }

    /// Thread `t` puts a batch in, or waits while the queue is full.
    pub(super) fn push(&mut self, t: usize) -> Passed {
        if self.items >= self.capacity {
            self.pushers.push_back(t);
            return Passed::Blocked;
        }
        self.items += 1;
        Passed::Through { woken: self.poppers.pop_front() }
    }
}
