//! What a workload needs from the system it runs on.

use alloc::vec::Vec;
use core::ops::DerefMut;

use crate::record::LockStats;

/// A lock around a `T`.
pub trait Lock<T>: Send + Sync {
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a;

    fn lock(&self) -> Self::Guard<'_>;

    /// Acquisitions, contended ones, and time spent waiting, so far.
    fn stats(&self) -> LockStats;
}

/// A condition variable, used with the runtime's [`Runtime::Mutex`] through [`Runtime::wait`].
pub trait Condvar: Send + Sync {
    fn notify_one(&self);
    fn notify_all(&self);
}

/// A reusable barrier for a fixed number of parties.
pub trait Barrier: Send + Sync {
    /// Waits until every party has arrived; returns true in exactly one of them per generation.
    fn wait(&self) -> bool;
}

/// How barrier waiters wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierKind {
    /// Spin until the last party arrives (like OpenMP's active wait policy): the VCPU never
    /// blocks. Other threads of the same CPU still get to run.
    Spin,
    /// Spin for a bounded time, then block until the last party wakes everyone.
    SpinThenBlock,
}

/// The guest kernel or native threads.
pub trait Runtime: Sync {
    /// The spinlock family chosen for this run (pure spinning, or paravirtual).
    type SpinLock<T: Send>: Lock<T>;
    /// A blocking mutex: waiters spin briefly, then block.
    type Mutex<T: Send>: Lock<T>;
    type Condvar: Condvar;
    type Barrier: Barrier;

    fn spin_lock<T: Send>(&self, value: T) -> Self::SpinLock<T>;
    fn mutex<T: Send>(&self, value: T) -> Self::Mutex<T>;
    fn condvar(&self) -> Self::Condvar;
    fn barrier(&self, parties: usize, kind: BarrierKind) -> Self::Barrier;

    /// Releases the mutex guarded by `guard`, waits for a notification on `condvar`, and
    /// locks the mutex again. Spurious wake-ups are allowed: callers loop on their condition.
    fn wait<'a, T: Send>(
        &self,
        condvar: &Self::Condvar,
        guard: <Self::Mutex<T> as Lock<T>>::Guard<'a>,
    ) -> <Self::Mutex<T> as Lock<T>>::Guard<'a>;

    /// Runs `body(0)`, ..., `body(threads - 1)` on threads of their own and returns their
    /// results in order, once all have finished.
    fn parallel(&self, threads: usize, body: &(dyn Fn(usize) -> u64 + Sync)) -> Vec<u64>;

    /// Gives the CPU to another runnable thread, if there is one.
    fn yield_now(&self);

    /// A monotonic clock, in nanoseconds.
    fn now_ns(&self) -> u64;

    /// CPUs (VCPUs in a guest) the runtime runs threads on: the default thread count.
    fn cpus(&self) -> usize;

    /// "guest" or "native".
    fn name(&self) -> &'static str;

    /// Name of the spinlock family, one of [`crate::LOCK_FAMILIES`].
    fn lock_family(&self) -> &'static str;
}
