//! The guest kernel as a `workloads::Runtime`: guest threads, the spinlock family chosen at
//! boot (spinning or paravirtual, see [`crate::sync::pv`]), the blocking primitives of
//! [`crate::sync`], and the TSC clock.

use alloc::vec::Vec;

use workloads::record::LockStats;
use workloads::sync::{KindedBarrier, TicketLock};
use workloads::{BarrierKind, Lock, Runtime};

use crate::sync::pv::{self, GuestWait};
use crate::sync::{Condvar, Mutex, MutexGuard, WaitQueue, relax};
use crate::{boot, clock, sched};

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
    type SpinLock<T: Send> = TicketLock<T, GuestWait>;
    type Mutex<T: Send> = Mutex<T>;
    type Condvar = Condvar;
    type Barrier = GuestBarrier;

    fn spin_lock<T: Send>(&self, value: T) -> TicketLock<T, GuestWait> {
        TicketLock::with_wait(value, GuestWait::new())
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
        if pv::enabled() { "pv" } else { "spin" }
    }
}
