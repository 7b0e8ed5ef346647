//! The native runtime: workloads on host threads, the bare-metal baseline. Spinlocks (the
//! spinning families, `locks=spin` or `qspin`) and spinning barriers are the shared
//! pure-atomics ones of [`crate::sync`]; mutexes, condition variables and blocking barriers
//! are built on `std::sync`.

use std::cell::Cell;
use std::num::NonZero;
use std::ops::{Deref, DerefMut};
use std::string::String;
use std::sync::{PoisonError, TryLockError};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::record::LockStats;
use crate::runtime::{BarrierKind, Lock, Runtime};
use crate::sync::queued::QueuedLock;
use crate::sync::{Either, KindedBarrier, TicketLock, WaitSet, tsc};
use crate::{Error, GUEST_PARAMS, ParamError, Params, Record};

/// How long a blocking barrier's waiter spins before it blocks.
const BARRIER_SPIN: Duration = Duration::from_micros(50);
/// Spin-wait iterations between yields of the CPU, so that spinning threads let descheduled
/// ones run when there are more threads than CPUs.
const SPINS_PER_YIELD: u32 = 1000;

/// Host threads.
pub struct NativeRuntime {
    cpus: usize,
    start: Instant,
    /// Whether spinlocks are queued (`qspin`) rather than ticket locks (`spin`).
    queued: bool,
}

impl NativeRuntime {
    /// A runtime whose default thread count is `cpus`, or the host's available parallelism,
    /// with ticket spinlocks.
    pub fn new(cpus: Option<usize>) -> Self {
        let cpus = cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZero::get));
        NativeRuntime { cpus, start: Instant::now(), queued: false }
    }

    /// The same with the spinning family `locks`: "spin" or "qspin" (the paravirtual
    /// families need a guest's VCPUs).
    pub fn with_locks(cpus: Option<usize>, locks: &str) -> Result<Self, ParamError> {
        let queued = match locks {
            "spin" => false,
            "qspin" => true,
            other => {
                return Err(ParamError::NotAChoice {
                    key: "locks".into(),
                    value: other.into(),
                    choices: "spin, qspin (natively only the spinning families run)".into(),
                });
            }
        };
        Ok(NativeRuntime { queued, ..NativeRuntime::new(cpus) })
    }
}

/// Runs `workload` with `key=value` arguments `args` on host threads, counting `cpus` CPUs
/// as its own (all host CPUs if `None`): the bare-metal baseline. `locks=` among the
/// arguments chooses the spinlock family, as in the guest.
pub fn run(workload: &str, cpus: Option<usize>, args: &[String]) -> Result<Record, Error> {
    let (runtime_args, args) = crate::split_guest_args(args.iter().map(String::as_str));
    let locks = Params::parse(GUEST_PARAMS, runtime_args)?;
    crate::run(&NativeRuntime::with_locks(cpus, locks.str("locks"))?, workload, &args)
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

/// Where native threads block: a std mutex-protected count of sleepers and a condition
/// variable; waiters first spin for [`BARRIER_SPIN`].
#[derive(Default)]
pub struct Sleepers {
    count: std::sync::Mutex<usize>,
    wake_up: std::sync::Condvar,
}

impl WaitSet for Sleepers {
    fn spin_until(&self, done: &dyn Fn() -> bool) -> bool {
        let deadline = Instant::now() + BARRIER_SPIN;
        while !done() {
            if Instant::now() >= deadline {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }

    fn wait_while(&self, blocked: &dyn Fn() -> bool) {
        // The condition is checked under the lock that `wake_all` takes, and the wait releases
        // it atomically: a wake-up after the change cannot fall between check and wait.
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count += 1;
        while blocked() {
            count = self.wake_up.wait(count).unwrap_or_else(PoisonError::into_inner);
        }
        *count -= 1;
    }

    fn wake_all(&self) {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let anyone = *count > 0;
        drop(count);
        if anyone {
            self.wake_up.notify_all();
        }
    }
}

impl Runtime for NativeRuntime {
    type SpinLock<T: Send> = Either<TicketLock<T>, QueuedLock<T>>;
    type Mutex<T: Send> = Mutex<T>;
    type Condvar = Condvar;
    type Barrier = KindedBarrier<Sleepers>;

    fn spin_lock<T: Send>(&self, value: T) -> Self::SpinLock<T> {
        if self.queued { Either::B(QueuedLock::new(value)) } else { Either::A(TicketLock::new(value)) }
    }

    fn mutex<T: Send>(&self, value: T) -> Mutex<T> {
        Mutex { inner: std::sync::Mutex::new(Guarded { value, stats: LockStats::default() }) }
    }

    fn condvar(&self) -> Condvar {
        Condvar(std::sync::Condvar::new())
    }

    fn barrier(&self, parties: usize, kind: BarrierKind) -> KindedBarrier<Sleepers> {
        KindedBarrier::new(kind, parties, relax, Sleepers::default())
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
        if self.queued { "qspin" } else { "spin" }
    }
}
