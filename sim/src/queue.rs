//! The simulator's event queue: events in time order and, among events due at the same time,
//! in the order they were scheduled, so that a run replays identically.

use dary_heap::QuaternaryHeap as BinaryHeap;
use std::cmp::Ordering;

use sched::Ns;

/// An event and its place in the order: the time in the high half, the sequence number
/// in the low (one integer compares faster than a pair).
struct Entry<T> {
    key: u128,
    event: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed: the heap's greatest entry is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// A priority queue of events by time, first in first out among equal times.
pub struct EventQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        EventQueue { heap: BinaryHeap::new(), seq: 0 }
    }
}

impl<T> EventQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `event` at time `at`.
    pub fn push(&mut self, at: Ns, event: T) {
        self.heap.push(Entry { key: u128::from(at) << 64 | u128::from(self.seq), event });
        self.seq += 1;
    }

    /// When the next event is due.
    pub fn next_time(&self) -> Option<Ns> {
        self.heap.peek().map(|entry| (entry.key >> 64) as Ns)
    }

    /// Takes the next event.
    pub fn pop(&mut self) -> Option<(Ns, T)> {
        self.heap.pop().map(|entry| ((entry.key >> 64) as Ns, entry.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_order_and_in_push_order_among_equal_times() {
        let mut queue = EventQueue::new();
        for (at, name) in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (0, "start"), (10, "a3")] {
            queue.push(at, name);
        }
        assert_eq!(queue.next_time(), Some(0));
        let order: Vec<(Ns, &str)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, [(0, "start"), (10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]);
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.next_time(), None);
    }

    #[test]
    fn interleaved_pushes_and_pops_stay_ordered() {
        let mut queue = EventQueue::new();
        let mut rng = sched::harness::Lcg(7);
        let mut last = 0;
        let mut popped = 0;
        for round in 0..10_000u64 {
            // Events are only ever scheduled at or after the present, as in a simulation.
            queue.push(last + rng.below(1000), round);
            if round % 3 == 0 {
                let (at, _) = queue.pop().unwrap();
                assert!(at >= last);
                last = at;
                popped += 1;
            }
        }
        while let Some((at, _)) = queue.pop() {
            assert!(at >= last);
            last = at;
            popped += 1;
        }
        assert_eq!(popped, 10_000);
    }
}
