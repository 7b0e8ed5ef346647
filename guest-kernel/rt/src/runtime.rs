//! The guest kernel as a `workloads::Runtime`: guest threads, the spinlock family chosen at
//! boot (`locks=`: ticket or queued, spinning or paravirtual, see [`crate::sync::pv`] and
//! [`crate::sync::pvq`]), the blocking primitives of [`crate::sync`], and the TSC clock.

use alloc::vec::Vec;

use workloads::record::LockStats;
use workloads::sync::queued::QueuedLock;
use workloads::sync::queued::pv::Pv;
use workloads::sync::{Either, KindedBarrier, TicketLock};
use workloads::{BarrierKind, Lock, Runtime};

use crate::sync::pv::{self, GuestWait};
use crate::sync::pvq::GuestThreads;
use crate::sync::{Condvar, Mutex, MutexGuard, WaitQueue, family, relax};
use crate::{boot, clock, sched};

/// A spinlock of the family chosen at boot: a ticket lock (spinning or paravirtual, as
/// [`GuestWait`] was made), or a queued one, spinning or paravirtual.
pub type GuestSpinLock<T> = Either<TicketLock<T, GuestWait>, Either<QueuedLock<T>, QueuedLock<T, Pv<GuestThreads>>>>;

/// The guest runtime as a [`workloads::Runtime`], to run workloads on guest threads (inside
/// [`crate::sched::start`]).
pub struct GuestRuntime;

impl<T: Send> Lock<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        Self: 'a;

    fn lock(&self) -> MutexGuard<'_, T> {
        Mutex::lock(self)
    }

    fn stats(&self) -> LockStats {
        Mutex::stats(self)
    }
}

impl workloads::Condvar for Condvar {
    fn notify_one(&self) {
        Condvar::notify_one(self);
    }

    fn notify_all(&self) {
        Condvar::notify_all(self);
    }
}

/// Barriers of either kind.
pub type GuestBarrier = KindedBarrier<WaitQueue>;

impl Runtime for GuestRuntime {
    type SpinLock<T: Send> = GuestSpinLock<T>;
    type Mutex<T: Send> = Mutex<T>;
    type Condvar = Condvar;
    type Barrier = GuestBarrier;

    fn spin_lock<T: Send>(&self, value: T) -> GuestSpinLock<T> {
        match family() {
            "qspin" => Either::B(Either::A(QueuedLock::new(value))),
            "pvqspin" => Either::B(Either::B(QueuedLock::with_wait(value, Pv(GuestThreads)))),
            _ => Either::A(TicketLock::with_wait(value, GuestWait::new())),
        }
    }

    fn mutex<T: Send>(&self, value: T) -> Mutex<T> {
        Mutex::new(value)
    }

    fn condvar(&self) -> Condvar {
        Condvar::new()
    }

    fn barrier(&self, parties: usize, kind: BarrierKind) -> GuestBarrier {
        KindedBarrier::new(kind, parties, if pv::enabled() { pv::relax } else { relax }, WaitQueue::new())
    }

    fn wait<'a, T: Send>(
        &self,
        condvar: &Condvar,
        guard: <Mutex<T> as Lock<T>>::Guard<'a>,
    ) -> <Mutex<T> as Lock<T>>::Guard<'a> {
        condvar.wait(guard)
    }

    fn parallel(&self, threads: usize, body: &(dyn Fn(usize) -> u64 + Sync)) -> Vec<u64> {
        // SAFETY: every thread is joined below, before `body`'s borrow ends; a panic in a
        // thread ends the whole VM (panic = abort), so none outlives it either way.
        let body: &'static (dyn Fn(usize) -> u64 + Sync) = unsafe { core::mem::transmute(body) };
        let handles: Vec<_> = (0..threads).map(|i| sched::spawn(move || body(i))).collect();
        handles.into_iter().map(sched::JoinHandle::join).collect()
    }

    fn yield_now(&self) {
        sched::yield_now();
    }

    fn now_ns(&self) -> u64 {
        clock::ticks_to_ns(clock::tsc())
    }

    fn cpus(&self) -> usize {
        boot::nr_vcpus() as usize
    }

    fn name(&self) -> &'static str {
        "guest"
    }

    fn lock_family(&self) -> &'static str {
        family()
    }
}
