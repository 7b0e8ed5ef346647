//! The queued locks on host threads, and under `--cfg loom` model-checked: loom runs each
//! test body under every interleaving of its threads (up to a bound on preemptions) and fails
//! on a data race on the protected value (mutual exclusion), on a deadlock (a lost wake-up:
//! every thread blocked), or on a failed assertion.

use std::boxed::Box;
use std::vec::Vec;

#[cfg(loom)]
use loom::cell::UnsafeCell;
#[cfg(loom)]
use loom::sync::{Arc, Condvar, Mutex};
#[cfg(loom)]
use loom::thread;
#[cfg(not(loom))]
use std::sync::{Arc, Condvar, Mutex};
#[cfg(not(loom))]
use std::thread;

use super::pv::{Paravirt, Pv};
use super::{Node, QueueWait, QueuedLock};
#[cfg(not(loom))]
use crate::record::LockStats;
use crate::runtime::Lock;

/// Host threads as the paravirtual lock's system: a thread blocks on a condition variable;
/// no CPU is ever preempted, but waiters still stop early behind a blocked predecessor. The
/// spin bounds are counted in clock readings, so that short ones send waiters to sleep.
struct Threads {
    spin: u64,
}

/// A blocked host thread's wake-up: set, then signalled.
struct Parker {
    woken: Mutex<bool>,
    signal: Condvar,
}

static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Paravirt for Threads {
    type Waker = Parker;

    fn take_node(&self) -> &'static Node<Parker> {
        Box::leak(Box::new(Node::new(0, Parker { woken: Mutex::new(false), signal: Condvar::new() })))
    }

    fn give_node(&self, _node: &'static Node<Parker>) {}

    fn cpu(&self) -> u32 {
        0
    }

    fn preempted(&self, _cpu: u32) -> bool {
        false
    }

    fn block(&self, waker: &Parker, sleep: &dyn Fn() -> bool) {
        let mut woken = waker.woken.lock().unwrap();
        if !sleep() {
            return;
        }
        while !*woken {
            woken = waker.signal.wait(woken).unwrap();
        }
        *woken = false;
    }

    fn wake(&self, waker: &Parker) {
        *waker.woken.lock().unwrap() = true;
        waker.signal.notify_one();
    }

    fn now(&self) -> u64 {
        CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn node_spin(&self) -> u64 {
        self.spin
    }

    fn head_spin(&self) -> u64 {
        self.spin
    }
}

/// `threads` threads each take `lock` `rounds` times and add one to the counter it guards;
/// returns the lock's counters.
#[cfg(not(loom))]
fn hammer<W: QueueWait + Send + 'static>(lock: QueuedLock<u64, W>, threads: u64, rounds: u64) -> LockStats {
    let lock = Arc::new(lock);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                for _ in 0..rounds {
                    *lock.lock() += 1;
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|handle| handle.join().unwrap());
    assert_eq!(*lock.lock(), threads * rounds);
    assert!(!lock.busy(), "no waiter left queued or pending");
    lock.stats()
}

#[cfg(not(loom))]
#[test]
fn qspin_counts_exactly() {
    // Few rounds: spinning waiters of a FIFO queue wait for descheduled ones on a busy host.
    let stats = hammer(QueuedLock::new(0), 3, 1_000);
    assert_eq!(stats.acquisitions, 3_001, "{stats:?}");
    assert!(stats.contended <= stats.acquisitions && stats.steals <= stats.contended, "{stats:?}");
    assert_eq!((stats.blocks, stats.kicks), (0, 0), "spinning waiters never block");
}

#[cfg(not(loom))]
#[test]
fn pvqspin_counts_exactly_and_wakes_every_sleeper() {
    for spin in [0, 50, 5_000] {
        let stats = hammer(QueuedLock::with_wait(0, Pv(Threads { spin })), 4, 5_000);
        assert_eq!(stats.acquisitions, 20_001, "{stats:?}");
        assert!(stats.steals <= stats.contended && stats.slow_paths <= stats.contended, "{stats:?}");
        // A wait that went slow is hashed once and woken once, by the unlock that finds the
        // lock slow.
        assert!(stats.kicks <= stats.slow_paths && stats.spurious_wakeups <= stats.blocks, "{stats:?}");
        assert!(spin > 0 || stats.contended == 0 || stats.blocks > 0, "no spinning: contention blocks ({stats:?})");
    }
}

#[cfg(loom)]
mod model {
    use super::*;
    use crate::sync::Spin;

    /// `threads` threads take the lock `rounds` times each, incrementing a loom cell it
    /// guards (two holders at once would be a data race loom reports), under every
    /// interleaving with up to `preemptions` preemptions (threads switching other than where
    /// they wait). The bounds keep each test to seconds; with them, loom finds the lost
    /// wake-up of an unlock that does not wake the hashed head, and of a holder that makes a
    /// halted waiter head without hashing it.
    fn check<W: QueueWait + 'static>(
        make: fn() -> QueuedLock<UnsafeCell<u64>, W>,
        threads: u64,
        rounds: u64,
        preemptions: usize,
    ) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(preemptions);
        // Spinning waiters take a branch per look at the lock, each a yield to the others.
        model.max_branches = 100_000;
        model.check(move || {
            let lock = Arc::new(make());
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let lock = Arc::clone(&lock);
                    thread::spawn(move || {
                        for _ in 0..rounds {
                            lock.lock().with_mut(|value| unsafe { *value += 1 });
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|handle| handle.join().unwrap());
            assert_eq!(lock.lock().with(|value| unsafe { *value }), threads * rounds);
            assert!(!lock.busy());
        });
    }

    fn qspin() -> QueuedLock<UnsafeCell<u64>, Spin> {
        QueuedLock::new(UnsafeCell::new(0))
    }

    fn pvqspin() -> QueuedLock<UnsafeCell<u64>, Pv<Threads>> {
        // Spin bounds of a clock reading or two: every wait goes to sleep quickly.
        QueuedLock::with_wait(UnsafeCell::new(0), Pv(Threads { spin: 1 }))
    }

    #[test]
    fn qspin_two_threads_twice() {
        check(qspin, 2, 2, 3);
    }

    #[test]
    fn qspin_three_threads_queue_and_steal() {
        check(qspin, 3, 1, 1);
    }

    #[test]
    fn pvqspin_two_threads_twice_no_lost_wakeup() {
        check(pvqspin, 2, 2, 3);
    }

    #[test]
    fn pvqspin_three_threads_hand_over_under_stealing() {
        check(pvqspin, 3, 1, 2);
    }
}
