//! Blocking synchronization for guest threads: a wait queue, and on it a mutex (spin, then
//! block) and a condition variable. The wait queue is also the guest's `WaitSet` for the
//! spin-then-block barrier, which is shared with the native runtime in `workloads::sync`
//! together with the pure-spinning family (ticket spinlock, spinning barrier).

pub mod pv;
pub mod pvq;

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spinning_top::Spinlock;
use workloads::LOCK_FAMILIES;
use workloads::record::LockStats;
use workloads::sync::{WaitSet, tsc};
use workloads::timing::SPIN_BEFORE_BLOCK_NS;

use crate::clock;
use crate::sched::{self, Thread};

/// The spinlock family chosen at boot (`locks=`), as its index in [`LOCK_FAMILIES`].
static FAMILY: AtomicUsize = AtomicUsize::new(0);

/// Chooses the family of the spinlocks and barriers made from now on; `family` is one of
/// [`LOCK_FAMILIES`] (the guest parameters are checked before).
pub(crate) fn choose_family(family: &str) {
    let index = LOCK_FAMILIES.iter().position(|&known| known == family).expect("a family the parameters accept");
    FAMILY.store(index, Ordering::Relaxed);
}

/// The family chosen at boot.
pub(crate) fn family() -> &'static str {
    LOCK_FAMILIES[FAMILY.load(Ordering::Relaxed)]
}

/// Threads blocked until someone wakes them.
///
/// `queued` counts the waiters, and those deciding under the lock whether to wait, so that a
/// wake with nobody waiting (the common unlock) costs one load and no lock. A waiter counts
/// itself before it checks its condition and a waker changes the condition before it loads
/// the count (both sequentially consistent): either the waker sees the waiter, or the waiter
/// sees the change.
pub struct WaitQueue {
    waiters: Spinlock<VecDeque<Arc<Thread>>>,
    queued: AtomicUsize,
}

impl WaitQueue {
    /// An empty queue.
    pub const fn new() -> Self {
        WaitQueue { waiters: Spinlock::new(VecDeque::new()), queued: AtomicUsize::new(0) }
    }

    /// Blocks the running thread if `still_needed()` holds, checked under the queue's lock, so
    /// that a waker that changes the condition and then wakes the queue cannot be missed.
    pub fn wait_if(&self, still_needed: impl FnOnce() -> bool) {
        self.wait_then(still_needed, || {});
    }

    /// As [`wait_if`](Self::wait_if), and runs `after_enqueue` once the thread is on the queue,
    /// before it blocks (a condition variable releases its mutex there).
    fn wait_then(&self, still_needed: impl FnOnce() -> bool, after_enqueue: impl FnOnce()) {
        let me = sched::current();
        sched::prepare_block(&me);
        let mut waiters = self.waiters.lock();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if !still_needed() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            drop(waiters);
            sched::cancel_block(&me);
            after_enqueue();
            return;
        }
        waiters.push_back(me);
        drop(waiters);
        after_enqueue();
        sched::block();
    }

    /// Wakes the longest waiting thread, if any.
    pub fn wake_one(&self) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let thread = self.waiters.lock().pop_front();
        if let Some(thread) = thread {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            sched::wake(&thread);
        }
    }

    /// Wakes every waiting thread.
    pub fn wake_all(&self) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let threads = core::mem::take(&mut *self.waiters.lock());
        self.queued.fetch_sub(threads.len(), Ordering::SeqCst);
        for thread in threads {
            sched::wake(&thread);
        }
    }
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// Guest threads spin for [`SPIN_BEFORE_BLOCK_NS`] (yielding to their VCPU's other threads),
/// then block on the queue.
impl WaitSet for WaitQueue {
    fn spin_until(&self, done: &dyn Fn() -> bool) -> bool {
        spin_until(done)
    }

    fn wait_while(&self, blocked: &dyn Fn() -> bool) {
        while blocked() {
            self.wait_if(blocked);
        }
    }

    fn wake_all(&self) {
        WaitQueue::wake_all(self);
    }
}

/// Spins for up to [`SPIN_BEFORE_BLOCK_NS`] until `done()`, yielding to this VCPU's other
/// threads.
fn spin_until(done: &dyn Fn() -> bool) -> bool {
    let deadline = clock::deadline_after_ns(SPIN_BEFORE_BLOCK_NS);
    while !done() {
        if clock::tsc() >= deadline {
            return false;
        }
        relax();
    }
    true
}

/// One step of a spin-wait: let this VCPU's other threads run if any wait (the one we wait
/// for may be among them), else pause.
pub fn relax() {
    if sched::others_waiting() {
        sched::yield_now();
    } else {
        core::hint::spin_loop();
    }
}

/// A mutex whose waiters spin briefly, then block.
pub struct Mutex<T> {
    locked: AtomicBool,
    waiters: WaitQueue,
    stats: UnsafeCell<LockStats>,
    value: UnsafeCell<T>,
}

// SAFETY: one holder at a time gets `&mut T`; `stats` is touched only by the holder.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: owning the mutex owns the `T`.
unsafe impl<T: Send> Send for Mutex<T> {}

/// Holds a [`Mutex`] locked and gives access to its value; dropping it unlocks.
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Mutex {
            locked: AtomicBool::new(false),
            waiters: WaitQueue::new(),
            stats: UnsafeCell::new(LockStats::ZERO),
            value: UnsafeCell::new(value),
        }
    }

    fn try_acquire(&self) -> bool {
        self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Locks the mutex: spins briefly, then blocks the thread until it is free.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let waited = if self.try_acquire() { 0 } else { self.lock_contended() };
        // SAFETY: held.
        let stats = unsafe { &mut *self.stats.get() };
        stats.acquisitions += 1;
        if waited > 0 {
            stats.contended += 1;
            stats.spin_cycles += waited;
        }
        MutexGuard { mutex: self }
    }

    #[cold]
    fn lock_contended(&self) -> u64 {
        let start = tsc();
        if !spin_until(&|| !self.locked.load(Ordering::Relaxed) && self.try_acquire()) {
            while !self.try_acquire() {
                self.waiters.wait_if(|| self.locked.load(Ordering::SeqCst));
            }
        }
        (tsc() - start).max(1)
    }

    fn unlock(&self) {
        // Sequentially consistent, against the waiter count (see `WaitQueue`).
        self.locked.store(false, Ordering::SeqCst);
        self.waiters.wake_one();
    }

    /// Its acquisitions and how many waited, and for how long (those of this call left out).
    pub fn stats(&self) -> LockStats {
        let guard = self.lock();
        // SAFETY: held.
        let mut stats = unsafe { *guard.mutex.stats.get() };
        stats.acquisitions -= 1;
        stats
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the mutex.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the mutex exclusively.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

/// A condition variable for [`Mutex`].
pub struct Condvar {
    waiters: WaitQueue,
}

impl Default for Condvar {
    fn default() -> Self {
        Self::new()
    }
}

impl Condvar {
    /// A condition variable nobody waits on.
    pub const fn new() -> Self {
        Condvar { waiters: WaitQueue::new() }
    }

    /// Releases the guard's mutex, blocks until notified, and locks the mutex again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let mutex = guard.mutex;
        self.waiters.wait_then(|| true, move || drop(guard));
        mutex.lock()
    }

    /// Wakes one waiting thread, if any.
    pub fn notify_one(&self) {
        self.waiters.wake_one();
    }

    /// Wakes every waiting thread.
    pub fn notify_all(&self) {
        self.waiters.wake_all();
    }
}
