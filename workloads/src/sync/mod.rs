//! Synchronization that is pure atomics and so is the same code in every runtime: the ticket
//! spinlock (the `spin` family, and with a paravirtual [`TicketWait`] `pv`), the queued
//! spinlock ([`queued`]: `qspin`, and `pvqspin`), and the spinning barrier.

pub mod queued;

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::record::LockStats;
use crate::runtime::{Barrier, BarrierKind, Lock};

/// The TSC: cheap, monotonic enough on one machine for counting spin cycles.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions and is allowed at every privilege level here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How a [`TicketLock`]'s waiters wait for their turn: the seam where a paravirtual runtime
/// plugs in. [`Spin`] only spins.
pub trait TicketWait: Send + Sync {
    /// Called by every locker right after it took `ticket`, before it waits (a paravirtual
    /// lock records who holds or waits for which ticket).
    fn took(&self, _ticket: u32) {}

    /// Waits until `serving` reaches `ticket`; adds what it did to `stats` (all but the
    /// acquisition itself, which the lock counts).
    fn wait(&self, serving: &AtomicU32, ticket: u32, stats: &mut LockStats);

    /// Called right after an unlock moved `serving` on to `next`.
    fn unlocked(&self, _next: u32) {}

    /// Counters kept by the waiting strategy itself rather than the holder (kicks sent by
    /// unlockers), added to the lock's.
    fn stats(&self) -> LockStats {
        LockStats::default()
    }
}

/// Waiters spin until their turn, whatever happens to the holder: the non-PV family.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spin;

impl TicketWait for Spin {
    fn wait(&self, serving: &AtomicU32, ticket: u32, stats: &mut LockStats) {
        let start = tsc();
        while serving.load(Ordering::Acquire) != ticket {
            core::hint::spin_loop();
        }
        stats.spin_cycles += tsc() - start;
    }
}

/// A FIFO ticket spinlock; its waiters wait as `W` says. Counts acquisitions, contended
/// acquisitions and spin cycles; the counters are updated by the holder, so they cost no
/// extra atomics.
pub struct TicketLock<T, W = Spin> {
    next: AtomicU32,
    serving: AtomicU32,
    wait: W,
    stats: UnsafeCell<LockStats>,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one holder at a time (ticket order), and `stats`
// is only touched by the holder.
unsafe impl<T: Send, W: Sync> Sync for TicketLock<T, W> {}
// SAFETY: owning the lock owns the `T`.
unsafe impl<T: Send, W: Send> Send for TicketLock<T, W> {}

impl<T> TicketLock<T> {
    pub const fn new(value: T) -> Self {
        TicketLock::with_wait(value, Spin)
    }
}

impl<T, W> TicketLock<T, W> {
    pub const fn with_wait(value: T, wait: W) -> Self {
        TicketLock {
            next: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            wait,
            stats: UnsafeCell::new(LockStats::ZERO),
            value: UnsafeCell::new(value),
        }
    }

    /// The ticket now being served and the next one to hand out; the lock is held by the
    /// ticket being served whenever they differ.
    pub fn tickets(&self) -> (u32, u32) {
        (self.serving.load(Ordering::Relaxed), self.next.load(Ordering::Relaxed))
    }
}

/// Holds a [`TicketLock`]; unlocks when dropped.
pub struct TicketGuard<'a, T, W: TicketWait> {
    lock: &'a TicketLock<T, W>,
}

impl<T: Send, W: TicketWait> Lock<T> for TicketLock<T, W> {
    type Guard<'a>
        = TicketGuard<'a, T, W>
    where
        Self: 'a;

    fn lock(&self) -> TicketGuard<'_, T, W> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.wait.took(ticket);
        let waited = (self.serving.load(Ordering::Acquire) != ticket).then(|| {
            let mut waited = LockStats { contended: 1, ..LockStats::ZERO };
            self.wait.wait(&self.serving, ticket, &mut waited);
            waited
        });
        // SAFETY: this thread holds the lock.
        let stats = unsafe { &mut *self.stats.get() };
        stats.acquisitions += 1;
        if let Some(waited) = waited {
            stats.add(waited);
        }
        TicketGuard { lock: self }
    }

    fn stats(&self) -> LockStats {
        // Read under the lock: the holder is the only writer.
        let guard = self.lock();
        // SAFETY: held.
        let mut stats = unsafe { *guard.lock.stats.get() };
        // Not this read's own acquisition.
        stats.acquisitions -= 1;
        stats.add(self.wait.stats());
        stats
    }
}

impl<T, W: TicketWait> Deref for TicketGuard<'_, T, W> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T, W: TicketWait> DerefMut for TicketGuard<'_, T, W> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T, W: TicketWait> Drop for TicketGuard<'_, T, W> {
    fn drop(&mut self) {
        let next = self.lock.serving.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        self.lock.wait.unlocked(next);
    }
}

/// A lock of one of two kinds, chosen when it is made: how a runtime offers the family that
/// `locks=` picked through one [`Runtime::SpinLock`](crate::Runtime::SpinLock) type (nested
/// for more than two). Its guard is the chosen lock's guard.
pub enum Either<A, B> {
    A(A),
    B(B),
}

impl<T, A: Lock<T>, B: Lock<T>> Lock<T> for Either<A, B> {
    type Guard<'a>
        = Either<A::Guard<'a>, B::Guard<'a>>
    where
        Self: 'a;

    fn lock(&self) -> Self::Guard<'_> {
        match self {
            Either::A(lock) => Either::A(lock.lock()),
            Either::B(lock) => Either::B(lock.lock()),
        }
    }

    fn stats(&self) -> LockStats {
        match self {
            Either::A(lock) => lock.stats(),
            Either::B(lock) => lock.stats(),
        }
    }
}

impl<A: Deref, B: Deref<Target = A::Target>> Deref for Either<A, B> {
    type Target = A::Target;
    fn deref(&self) -> &A::Target {
        match self {
            Either::A(guard) => guard,
            Either::B(guard) => guard,
        }
    }
}

impl<A: DerefMut, B: DerefMut<Target = A::Target>> DerefMut for Either<A, B> {
    fn deref_mut(&mut self) -> &mut A::Target {
        match self {
            Either::A(guard) => guard,
            Either::B(guard) => guard,
        }
    }
}

/// A sense-reversing barrier whose waiters spin: the CPU never blocks. `relax` is called in
/// every spin iteration; a runtime with cooperative threads passes one that yields to other
/// runnable threads of the same CPU, since the laggard may be among them.
pub struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    relax: fn(),
}

impl SpinBarrier {
    pub fn new(parties: usize, relax: fn()) -> Self {
        assert!(parties > 0, "a barrier needs at least one party");
        SpinBarrier { parties, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0), relax }
    }

    /// Generations completed so far.
    pub fn generation(&self) -> usize {
        self.generation.load(Ordering::Acquire)
    }
}

impl Barrier for SpinBarrier {
    fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(generation.wrapping_add(1), Ordering::Release);
            return true;
        }
        while self.generation.load(Ordering::Acquire) == generation {
            (self.relax)();
        }
        false
    }
}

/// How a runtime makes threads wait: a bounded spin, then blocking until woken.
pub trait WaitSet: Send + Sync {
    /// Spins for the runtime's spin budget until `done()`; returns whether it became true.
    fn spin_until(&self, done: &dyn Fn() -> bool) -> bool;

    /// Blocks the calling thread while `blocked()` holds. A [`wake_all`](Self::wake_all) that
    /// follows a change of the condition is never missed.
    fn wait_while(&self, blocked: &dyn Fn() -> bool);

    /// Wakes every blocked thread.
    fn wake_all(&self);
}

/// A barrier whose waiters spin for a while, then block (in the runtime's [`WaitSet`]) until
/// the last party wakes them.
pub struct SpinThenBlockBarrier<W> {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    waiters: W,
}

impl<W: WaitSet> SpinThenBlockBarrier<W> {
    pub fn new(parties: usize, waiters: W) -> Self {
        assert!(parties > 0, "a barrier needs at least one party");
        SpinThenBlockBarrier { parties, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0), waiters }
    }
}

impl<W: WaitSet> Barrier for SpinThenBlockBarrier<W> {
    fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(generation.wrapping_add(1), Ordering::SeqCst);
            self.waiters.wake_all();
            return true;
        }
        let passed = || self.generation.load(Ordering::SeqCst) != generation;
        if !self.waiters.spin_until(&passed) {
            self.waiters.wait_while(&|| !passed());
        }
        false
    }
}

/// A barrier of either [`BarrierKind`], chosen per barrier.
pub enum KindedBarrier<W> {
    Spin(SpinBarrier),
    SpinThenBlock(SpinThenBlockBarrier<W>),
}

impl<W: WaitSet> KindedBarrier<W> {
    /// A barrier of `kind` for `parties`: spinning waiters call `relax`, blocking ones wait in
    /// `waiters`.
    pub fn new(kind: BarrierKind, parties: usize, relax: fn(), waiters: W) -> Self {
        match kind {
            BarrierKind::Spin => KindedBarrier::Spin(SpinBarrier::new(parties, relax)),
            BarrierKind::SpinThenBlock => KindedBarrier::SpinThenBlock(SpinThenBlockBarrier::new(parties, waiters)),
        }
    }
}

impl<W: WaitSet> Barrier for KindedBarrier<W> {
    fn wait(&self) -> bool {
        match self {
            KindedBarrier::Spin(barrier) => barrier.wait(),
            KindedBarrier::SpinThenBlock(barrier) => barrier.wait(),
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use std::sync::Arc;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn ticket_lock_counts_exactly() {
        // Few acquisitions: with more spinning threads than cores, every hand-off to a
        // descheduled waiter costs a scheduler time slice (FIFO ticket order).
        let lock = Arc::new(TicketLock::new(0u64));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*lock.lock(), 3_000);
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, 3_001);
        assert!(stats.contended <= stats.acquisitions);
        let (serving, next) = lock.tickets();
        assert_eq!(serving, next);
    }

    #[test]
    fn barrier_generations_never_mix() {
        const PARTIES: usize = 4;
        const ROUNDS: usize = 2_000;
        let barrier = Arc::new(SpinBarrier::new(PARTIES, std::thread::yield_now));
        let counter = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..PARTIES)
            .map(|_| {
                let (barrier, counter) = (Arc::clone(&barrier), Arc::clone(&counter));
                std::thread::spawn(move || {
                    let mut leaders = 0;
                    for round in 0..ROUNDS {
                        counter.fetch_add(1, Ordering::AcqRel);
                        barrier.wait();
                        // Everyone of this round has arrived, nobody of the next one yet.
                        assert_eq!(counter.load(Ordering::Acquire), (round + 1) * PARTIES);
                        leaders += usize::from(barrier.wait());
                    }
                    leaders
                })
            })
            .collect();
        let leaders: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(leaders, ROUNDS);
        assert_eq!(barrier.generation(), 2 * ROUNDS);
    }
}
