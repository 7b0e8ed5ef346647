//! The native runtime: workloads on host threads, the bare-metal baseline. Spinlocks and
//! spinning barriers are the shared pure-atomics ones of [`crate::sync`]; mutexes, condition
//! variables and blocking barriers are built on `std::sync`.

use std::cell::Cell;
use std::num::NonZero;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, TryLockError};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::record::LockStats;
use crate::runtime::{BarrierKind, Lock, Runtime};
use crate::sync::{KindedBarrier, SpinBarrier, TicketLock, tsc};

/// How long a blocking barrier's waiter spins before it blocks.
const BARRIER_SPIN: Duration = Duration::from_micros(50);
/// Spin-wait iterations between yields of the CPU, so that spinning threads let descheduled
/// ones run when there are more threads than CPUs.
const SPINS_PER_YIELD: u32 = 1000;

/// Host threads.
pub struct NativeRuntime {
    cpus: usize,
    start: Instant,
}

impl NativeRuntime {
    /// A runtime whose default thread count is `cpus`, or the host's available parallelism.
    pub fn new(cpus: Option<usize>) -> Self {
        let cpus = cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZero::get));
        NativeRuntime { cpus, start: Instant::now() }
    }
}

/// A `std::sync::Mutex` that counts acquisitions, contended ones and cycles waited.
pub struct Mutex<T> {
    inner: std::sync::Mutex<Guarded<T>>,
}

/// What the mutex protects: the value and its counters (updated by the holder).
struct Guarded<T> {
    value: T,
    stats: LockStats,
}

/// Holds a [`Mutex`]; unlocks when dropped.
pub struct MutexGuard<'a, T>(std::sync::MutexGuard<'a, Guarded<T>>);

impl<T: Send> Lock<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        Self: 'a;

    fn lock(&self) -> MutexGuard<'_, T> {
        let (mut guard, waited) = match self.inner.try_lock() {
            Ok(guard) => (guard, 0),
            Err(TryLockError::Poisoned(poisoned)) => (poisoned.into_inner(), 0),
            Err(TryLockError::WouldBlock) => {
                let start = tsc();
                let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                (guard, (tsc() - start).max(1))
            }
        };
        let stats = &mut guard.stats;
        stats.acquisitions += 1;
        if waited > 0 {
            stats.contended += 1;
            stats.spin_cycles += waited;
        }
        MutexGuard(guard)
    }

    fn stats(&self) -> LockStats {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).stats
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0.value
    }
}

/// A `std::sync::Condvar`, for [`Mutex`].
pub struct Condvar(std::sync::Condvar);

impl crate::runtime::Condvar for Condvar {
    fn notify_one(&self) {
        self.0.notify_one();
    }

    fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// One step of a spin-wait: pause, and now and then yield the CPU.
fn relax() {
    std::thread_local! {
        static SPINS: Cell<u32> = const { Cell::new(0) };
    }
    let spins = SPINS.get().wrapping_add(1);
    SPINS.set(spins);
    if spins.is_multiple_of(SPINS_PER_YIELD) {
        std::thread::yield_now();
    } else {
        core::hint::spin_loop();
    }
}

/// A barrier whose waiters spin briefly, then block until the last party wakes them.
pub struct BlockingBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Waiters blocked on `wake_up`.
    sleepers: std::sync::Mutex<usize>,
    wake_up: std::sync::Condvar,
}

impl BlockingBarrier {
    /// A barrier for `parties` threads.
    pub fn new(parties: usize) -> Self {
        assert!(parties > 0, "a barrier needs at least one party");
        BlockingBarrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            sleepers: std::sync::Mutex::new(0),
            wake_up: std::sync::Condvar::new(),
        }
    }
}

impl crate::runtime::Barrier for BlockingBarrier {
    fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let passed = || self.generation.load(Ordering::Acquire) != generation;
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            // Under the lock: a waiter that saw the old generation under it is asleep by now,
            // and counted.
            let sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
            self.generation.store(generation.wrapping_add(1), Ordering::Release);
            let wake = *sleepers > 0;
            drop(sleepers);
            if wake {
                self.wake_up.notify_all();
            }
            return true;
        }
        let deadline = Instant::now() + BARRIER_SPIN;
        while !passed() && Instant::now() < deadline {
            core::hint::spin_loop();
        }
        if !passed() {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
            *sleepers += 1;
            while !passed() {
                sleepers = self.wake_up.wait(sleepers).unwrap_or_else(PoisonError::into_inner);
            }
            *sleepers -= 1;
        }
        false
    }
}

impl Runtime for NativeRuntime {
    type SpinLock<T: Send> = TicketLock<T>;
    type Mutex<T: Send> = Mutex<T>;
    type Condvar = Condvar;
    type Barrier = KindedBarrier<BlockingBarrier>;

    fn spin_lock<T: Send>(&self, value: T) -> TicketLock<T> {
        TicketLock::new(value)
    }

    fn mutex<T: Send>(&self, value: T) -> Mutex<T> {
        Mutex { inner: std::sync::Mutex::new(Guarded { value, stats: LockStats::default() }) }
    }

    fn condvar(&self) -> Condvar {
        Condvar(std::sync::Condvar::new())
    }

    fn barrier(&self, parties: usize, kind: BarrierKind) -> KindedBarrier<BlockingBarrier> {
        match kind {
            BarrierKind::Spin => KindedBarrier::Spin(SpinBarrier::new(parties, relax)),
            BarrierKind::SpinThenBlock => KindedBarrier::SpinThenBlock(BlockingBarrier::new(parties)),
        }
    }

    fn wait<'a, T: Send>(
        &self,
        condvar: &Condvar,
        guard: <Mutex<T> as Lock<T>>::Guard<'a>,
    ) -> <Mutex<T> as Lock<T>>::Guard<'a> {
        let mut guard = condvar.0.wait(guard.0).unwrap_or_else(PoisonError::into_inner);
        // Taking the mutex again is an acquisition, as in the guest.
        guard.stats.acquisitions += 1;
        MutexGuard(guard)
    }

    fn parallel(&self, threads: usize, body: &(dyn Fn(usize) -> u64 + Sync)) -> Vec<u64> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|i| scope.spawn(move || body(i))).collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }

    fn yield_now(&self) {
        std::thread::yield_now();
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn cpus(&self) -> usize {
        self.cpus
    }

    fn name(&self) -> &'static str {
        "native"
    }

    fn lock_family(&self) -> &'static str {
        "spin"
    }
}
