//! `pvqspin`: the queued lock with a paravirtual slow path, after Linux's pvqspinlock
//! (`pv_wait_node`, `pv_kick_node`, `pv_wait_head_or_lock`), written for tandem's guest
//! threads, which block as threads: the VCPU runs another thread if it has one and blocks in
//! the monitor only if it has none.
//!
//! - A queued waiter spins on its node for a bounded time, looking at its predecessor: if
//!   that one's VCPU is preempted, or it is blocked itself, the wait will be long and the
//!   waiter stops spinning early. Then it marks itself halted and blocks.
//! - The holder that makes a halted waiter the queue's head does not wake it (it would only
//!   spin as head while the lock is held): it marks the lock slow and records the head in it
//!   (hashes it), so that the unlock wakes it.
//! - The head spins for a bounded time trying to take the lock, with the pending bit set so
//!   that nobody steals it meanwhile; then it clears the bit, hashes itself, marks the lock
//!   slow, and blocks. A free lock may be taken by any running thread meanwhile: a blocked
//!   waiter never holds one up. Woken, the head spins until it has the lock.
//! - Unlocking a lock not marked slow is one compare-and-swap; a slow one unhashes the head,
//!   releases the lock and wakes the head: at most one wake-up per hand-over.
//!
//! A wake-up is never lost: a sleeper publishes `SLEEPING` in its node only once its thread
//! may be woken, and a waker that swaps in `WOKEN` wakes the thread only if it slept, so a
//! wake that comes first makes the sleep return at once. Nodes are never freed (see
//! [`Paravirt::take_node`]), so a late wake-up or a look at a predecessor that has moved on
//! reads a live node: at worst a wasted check or a spurious wake-up, which the loops absorb.

use super::atomic::{self, Ordering};
use super::{HEAD, LOCKED, LOCKED_MASK, LockWord, Node, PENDING, QueueWait, SLOW};
use crate::record::LockStats;

/// Node states.
pub(super) const RUNNING: u8 = 0;
const HALTED: u8 = 1;
const HASHED: u8 = 2;

/// Node wake-up states.
pub(super) const IDLE: u8 = 0;
const SLEEPING: u8 = 1;
const WOKEN: u8 = 2;

/// What the paravirtual queued lock needs from the system under it.
pub trait Paravirt: Send + Sync {
    /// Wakes the thread asleep on a node.
    type Waker: Sync + 'static;

    /// A node for the calling thread's wait, from a pool: nodes are never freed, only reused.
    fn take_node(&self) -> &'static Node<Self::Waker>;

    /// Gives a node back to the pool once its wait is over.
    fn give_node(&self, node: &'static Node<Self::Waker>);

    /// The CPU (VCPU) the calling thread runs on.
    fn cpu(&self) -> u32;

    /// Whether `cpu` is preempted: its threads make no progress now.
    fn preempted(&self, cpu: u32) -> bool;

    /// Blocks the calling thread on `waker`, unless `sleep()`, called once the thread may be
    /// woken, returns false.
    fn block(&self, waker: &Self::Waker, sleep: &dyn Fn() -> bool);

    /// Wakes the thread blocked on `waker`.
    fn wake(&self, waker: &Self::Waker);

    /// A clock for the spin bounds.
    fn now(&self) -> u64;

    /// How long a queued waiter spins on its node, in [`now`](Self::now)'s units.
    fn node_spin(&self) -> u64;

    /// How long the queue's head spins for the lock before it blocks.
    fn head_spin(&self) -> u64;

    /// A wait went to the slow path (once per wait), for a system that counts them live.
    fn went_slow(&self) {}
}

/// Paravirtual waiting on the system `P`.
pub struct Pv<P>(pub P);

impl<P: Paravirt> Pv<P> {
    /// Blocks on `node` while `needed()`, unless it was woken already; returns whether it
    /// slept.
    fn sleep(&self, node: &Node<P::Waker>, needed: impl Fn() -> bool) -> bool {
        let slept = core::cell::Cell::new(false);
        self.0.block(&node.waker, &|| {
            let sleeping =
                needed() && node.wake.compare_exchange(IDLE, SLEEPING, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            slept.set(sleeping);
            sleeping
        });
        node.wake.swap(IDLE, Ordering::SeqCst);
        node.cpu.store(self.0.cpu(), Ordering::Relaxed);
        slept.get()
    }

    /// This wait went slow: counted once.
    fn went_slow(&self, stats: &mut LockStats) {
        if stats.slow_paths == 0 {
            stats.slow_paths = 1;
            self.0.went_slow();
        }
    }

    /// Wakes `node`'s thread if it sleeps, or makes its next sleep return at once.
    fn kick(&self, node: &Node<P::Waker>) {
        if node.wake.swap(WOKEN, Ordering::SeqCst) == SLEEPING {
            self.0.wake(&node.waker);
        }
    }

    /// Spins for up to `ticks` until `done()`, giving up early when `give_up()`. Bounded, so
    /// its pauses are the processor's even under the model checker: the waits yield to other
    /// threads (a step loom must take) only where they go round again.
    fn spin(&self, ticks: u64, done: impl Fn() -> bool, give_up: impl Fn() -> bool) -> bool {
        let deadline = self.0.now().saturating_add(ticks);
        loop {
            if done() {
                return true;
            }
            if give_up() || self.0.now() >= deadline {
                return false;
            }
            core::hint::spin_loop();
        }
    }
}

impl<P: Paravirt> QueueWait for Pv<P> {
    type Waker = P::Waker;
    const PENDING: bool = false;

    fn with_node<R>(&self, wait: impl FnOnce(&Node<P::Waker>) -> R) -> R {
        let node = self.0.take_node();
        node.reset(self.0.cpu());
        let result = wait(node);
        self.0.give_node(node);
        result
    }

    fn wait_node(&self, node: &Node<P::Waker>, prev: &Node<P::Waker>, stats: &mut LockStats) {
        let is_head = || node.is_head();
        let stalled = || {
            prev.state.load(Ordering::Relaxed) & !HEAD != RUNNING || self.0.preempted(prev.cpu.load(Ordering::Relaxed))
        };
        loop {
            if self.spin(self.0.node_spin(), is_head, stalled) {
                return;
            }
            // These counters are this wait's own: it went slow, once.
            self.went_slow(stats);
            // Halted only if not made head yet; a holder that makes it head after this sees
            // it halted and hashes it for its unlock to wake.
            if node.state.compare_exchange(RUNNING, HALTED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                if self.sleep(node, || true) {
                    stats.blocks += 1;
                    stats.spurious_wakeups += u64::from(!is_head());
                }
                let _ = node.state.compare_exchange(HALTED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
            }
            if is_head() {
                return;
            }
            atomic::spin_loop();
        }
    }

    fn make_head(&self, lock: &LockWord<P::Waker>, next: &Node<P::Waker>) {
        let halted = |state| state == HALTED;
        let before = next.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
            Some(if halted(state) { HEAD | HASHED } else { state | HEAD })
        });
        if before.is_ok_and(halted) {
            lock.hashed.store(next as *const _ as *mut _, Ordering::SeqCst);
            // Held by us: only the locked byte's value changes, from locked to slow.
            lock.word.fetch_or(SLOW, Ordering::SeqCst);
        }
    }

    fn wait_head(&self, lock: &LockWord<P::Waker>, node: &Node<P::Waker>, stats: &mut LockStats) {
        let word = &lock.word;
        // Hashed already if the holder that made us head saw us halted.
        let mut hashed = node.state.load(Ordering::Acquire) & !HEAD == HASHED;
        loop {
            node.state.store(HEAD | RUNNING, Ordering::Release);
            // While the head spins, the pending bit keeps others from stealing the lock: a
            // woken head is not starved. It takes the lock by clearing the bit.
            word.fetch_or(PENDING, Ordering::AcqRel);
            if self.spin(self.0.head_spin(), || lock.take_pending(), || false) {
                return;
            }
            word.fetch_and(!PENDING, Ordering::AcqRel);
            self.went_slow(stats);
            if !hashed {
                // Hash ourselves, then mark the lock slow; if it is free meanwhile, take it.
                hashed = true;
                lock.hashed.store(node as *const _ as *mut _, Ordering::SeqCst);
                let mut now = word.load(Ordering::SeqCst);
                loop {
                    let next = if now & (LOCKED_MASK | PENDING) == 0 { now | LOCKED } else { now | SLOW };
                    if next == now {
                        break;
                    }
                    match word.compare_exchange(now, next, Ordering::SeqCst, Ordering::SeqCst) {
                        // Ours. `hashed` may name us until the next head or holder that marks
                        // the lock slow overwrites it first: only a slow lock's unlock reads it.
                        Ok(_) if next & LOCKED_MASK == LOCKED => return,
                        Ok(_) => break,
                        Err(changed) => now = changed,
                    }
                }
            }
            // Asleep while the lock is marked slow: the unlock that clears the mark unhashes and
            // wakes us, once. Woken, we spin until we have it (a steal between the unlock and
            // our spin only makes us spin longer), so a wait costs at most one wake-up.
            node.state.store(HEAD | HASHED, Ordering::Release);
            if self.sleep(node, || word.load(Ordering::SeqCst) & LOCKED_MASK == SLOW) {
                stats.blocks += 1;
                stats.spurious_wakeups += u64::from(!lock.free());
            }
            atomic::spin_loop();
        }
    }

    fn unlock(&self, lock: &LockWord<P::Waker>, stats: &mut LockStats) {
        // Acquire on failure too: a slow lock's hashed head was stored before it was marked.
        let fast = lock.word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            (word & LOCKED_MASK == LOCKED).then_some(word & !LOCKED_MASK)
        });
        if fast.is_ok() {
            return;
        }
        // Slow: a head sleeps, recorded in the lock.
        let head = lock.hashed.swap(core::ptr::null_mut(), Ordering::SeqCst);
        stats.kicks += u64::from(!head.is_null());
        lock.word.fetch_and(!LOCKED_MASK, Ordering::SeqCst);
        if !head.is_null() {
            // SAFETY: nodes are never freed (see `Paravirt::take_node`).
            self.kick(unsafe { &*head });
        }
    }
}
