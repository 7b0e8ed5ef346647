//! `pipeline`: producer/consumer stages, one thread each, connected by bounded queues built
//! from a mutex and two condition variables. Stage 0 produces the items, every stage works
//! on each item, and the last one folds them into a checksum.
//!
//! The last stage checks as it goes that the items arrive in order, each once, and
//! recomputes one in [`CHECK_EVERY`] sequentially to compare. (Recomputing them all after the
//! run, on one thread, took as long as the pipeline itself and competed with the other VMs
//! of a scenario after this one's result was in.)

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::common;
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, LockStats, Record, fnv1a};
use crate::runtime::{Condvar, Lock, Runtime};
use crate::{Error, WorkloadInfo};

/// `pipeline` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "pipeline",
    about: "producer/consumer stages over mutex + condvar queues",
    unit: "items",
    params: PARAMS,
    matrix_args: Some(&[("items", "400000")]),
    endless_args: &[("items", "1000000000000")],
    served: false,
};

/// The parameters of `pipeline`.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("stages", "0", "stages (threads), 2-256 (0: one per CPU, at least 2)"),
    ParamSpec::int("items", "1500000", "items through the pipeline"),
    ParamSpec::int("capacity", "64", "items each queue holds, at least 1"),
    ParamSpec::int("work", "200", "work units per item in each stage"),
];

/// The last stage recomputes one item in this many on its own.
const CHECK_EVERY: u64 = 256;

/// What stage `stage` does to an item.
fn transform(stage: usize, item: u64, units: u64) -> u64 {
    common::work(item.wrapping_add(stage as u64), units)
}

/// What the whole pipeline makes of `item`.
fn through(stages: usize, item: u64, units: u64) -> u64 {
    (0..stages).fold(item, |v, stage| transform(stage, v, units))
}

/// The whole computation on one thread.
#[cfg(all(test, feature = "std"))]
fn sequential(stages: usize, items: u64, units: u64) -> u64 {
    (1..=items).fold(FNV_OFFSET, |h, item| fnv1a(h, through(stages, item, units)))
}

/// An item in flight: its number and its value so far.
type Item = (u64, u64);

struct State {
    items: VecDeque<Item>,
    /// The producer is done: once `items` is empty, nothing more comes.
    closed: bool,
    /// Threads waiting on each condition variable: nobody is notified in vain.
    poppers_waiting: usize,
    pushers_waiting: usize,
}

/// A bounded FIFO queue.
struct Queue<'r, R: Runtime> {
    rt: &'r R,
    state: R::Mutex<State>,
    not_empty: R::Condvar,
    not_full: R::Condvar,
    capacity: usize,
}

impl<'r, R: Runtime> Queue<'r, R> {
    fn new(rt: &'r R, capacity: usize) -> Self {
        let state =
            State { items: VecDeque::with_capacity(capacity), closed: false, poppers_waiting: 0, pushers_waiting: 0 };
        Queue { rt, state: rt.mutex(state), not_empty: rt.condvar(), not_full: rt.condvar(), capacity }
    }

    /// Appends `item`, waiting while the queue is full.
    fn push(&self, item: Item) {
        let mut state = self.state.lock();
        while state.items.len() >= self.capacity {
            state.pushers_waiting += 1;
            state = self.rt.wait(&self.not_full, state);
            state.pushers_waiting -= 1;
        }
        state.items.push_back(item);
        let wake = state.poppers_waiting > 0;
        drop(state);
        if wake {
            self.not_empty.notify_one();
        }
    }

    /// The oldest item, waiting while the queue is empty; `None` once it is closed and empty.
    fn pop(&self) -> Option<Item> {
        let mut state = self.state.lock();
        let item = loop {
            if let Some(item) = state.items.pop_front() {
                break item;
            }
            if state.closed {
                return None;
            }
            state.poppers_waiting += 1;
            state = self.rt.wait(&self.not_empty, state);
            state.poppers_waiting -= 1;
        };
        let wake = state.pushers_waiting > 0;
        drop(state);
        if wake {
            self.not_full.notify_one();
        }
        Some(item)
    }

    /// Ends the stream: poppers get what is left, then `None`.
    fn close(&self) {
        self.state.lock().closed = true;
        self.not_empty.notify_all();
    }
}

/// What is wrong, if anything, with `item` of value `value` arriving at the last stage as
/// its `nth` item: items arrive in order, each once, and one in [`CHECK_EVERY`] has the value
/// computed sequentially.
fn check_arrival(stages: usize, units: u64, nth: u64, item: u64, value: u64) -> Option<String> {
    if item != nth {
        return Some(format!("item {item} reached the last stage in place of item {nth}"));
    }
    let expected = item.is_multiple_of(CHECK_EVERY).then(|| through(stages, item, units))?;
    (value != expected)
        .then(|| format!("item {item} came out as {value:#018x}, computed sequentially {expected:#018x}"))
}

/// Passes `items` through `stages` threads; checks the result against the same computation
/// done sequentially.
pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let stages =
        common::thread_count(rt, params, "stages", 2, "a pipeline has 2-256 stages (0: one per CPU, at least 2)")?;
    let items = params.u64("items");
    let capacity = params.u64_in("capacity", 1..=1 << 20, "between 1 and 2^20 items")? as usize;
    let units = params.u64("work");
    // Queue `k` runs from stage `k` to stage `k + 1`.
    let queues: Vec<Queue<'_, R>> = (1..stages).map(|_| Queue::new(rt, capacity)).collect();
    let result = AtomicU64::new(0);
    // What the last stage found wrong first, if anything.
    let wrong = rt.spin_lock(None::<String>);

    let start = rt.now_ns();
    let per_thread = rt.parallel(stages, &|stage| {
        let mut handled = 0;
        if stage == 0 {
            for item in 1..=items {
                queues[0].push((item, transform(0, item, units)));
                handled += 1;
            }
        } else {
            let mut checksum = FNV_OFFSET;
            while let Some((item, value)) = queues[stage - 1].pop() {
                let value = transform(stage, value, units);
                match queues.get(stage) {
                    Some(next) => next.push((item, value)),
                    None => {
                        checksum = fnv1a(checksum, value);
                        if let Some(error) = check_arrival(stages, units, handled + 1, item, value) {
                            wrong.lock().get_or_insert(error);
                        }
                    }
                }
                handled += 1;
            }
            if stage == stages - 1 {
                result.store(checksum, Ordering::Relaxed);
            }
        }
        if let Some(next) = queues.get(stage) {
            next.close();
        }
        handled
    });
    let elapsed_ns = rt.now_ns() - start;

    if let Some((stage, &handled)) = per_thread.iter().enumerate().find(|&(_, &handled)| handled != items) {
        return Err(Error::Check(format!("stage {stage} handled {handled} items of {items}")));
    }
    if let Some(error) = wrong.lock().take() {
        return Err(Error::Check(error));
    }
    let checksum = result.into_inner();
    let mut lock_stats = LockStats::default();
    queues.iter().for_each(|queue| lock_stats.add(queue.state.stats()));
    Ok(Record {
        elapsed_ns,
        ops: items,
        checksum,
        per_thread,
        lock_stats: Some(lock_stats),
        ..common::record(rt, WORKLOAD.name, params, WORKLOAD.unit)
    })
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::format;

    use super::sequential;
    use crate::native::NativeRuntime;

    #[test]
    fn the_last_stage_catches_items_out_of_order_and_wrong_values() {
        use super::{CHECK_EVERY, check_arrival, through};
        let item = CHECK_EVERY;
        let right = through(3, item, 7);
        assert_eq!(check_arrival(3, 7, item, item, right), None);
        assert!(check_arrival(3, 7, item, item + 1, right).unwrap().contains("in place of item"));
        assert!(check_arrival(3, 7, item, item, right ^ 1).unwrap().contains("computed sequentially"));
        // Between samples only the order is checked.
        assert_eq!(check_arrival(3, 7, item + 1, item + 1, 0), None);
    }

    #[test]
    fn checksum_matches_the_sequential_computation() {
        let rt = NativeRuntime::new(Some(2));
        for stages in 2..=4 {
            let stages_arg = format!("stages={stages}");
            let record = crate::run(&rt, "pipeline", &[&stages_arg, "items=1000", "capacity=3", "work=7"]).unwrap();
            assert_eq!(record.checksum, sequential(stages, 1000, 7));
            assert_eq!(record.per_thread, alloc::vec![1000; stages]);
            // Every item goes through every queue: at least one push and one pop each.
            assert!(record.lock_stats.unwrap().acquisitions >= 2 * 1000 * (stages as u64 - 1));
        }
    }
}
