//! Queued spinlocks in the manner of Linux's qspinlock: `qspin`, and with [`pv::Pv`] waiting,
//! `pvqspin`.
//!
//! The lock is one word: a locked byte, a pending bit, and the tail of a queue of waiters.
//! Uncontended, locking is one compare-and-swap of 0 to locked. The first waiter of a
//! spinning lock sets the pending bit and spins on the word itself; later ones queue in an
//! MCS queue of nodes, each spinning on its own node, so that a hand-over touches one cache
//! line of one waiter. Only the queue's head spins on the lock word. A lock that is free may
//! be taken by any thread that finds it so, queued or not (a steal): FIFO order is kept among
//! the queued, but a waiter that is not running does not hold up one that is.
//!
//! The tail is the address of the last node, shifted above the pending bit (addresses are
//! below 2^48), rather than Linux's CPU and nesting index: nodes belong to threads here, and
//! guest threads move between VCPUs.
//!
//! How waiters wait is the [`QueueWait`] strategy: [`Spin`] spins and queues its nodes on the
//! waiter's stack; [`pv::Pv`] spins for a bounded time and then blocks.

pub mod pv;
#[cfg(all(test, feature = "std"))]
mod tests;

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::ptr;

use atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::{Spin, tsc};
use crate::record::LockStats;
use crate::runtime::Lock;

/// Atomics, and the spin hint: loom's under the model checker, the machine's otherwise.
pub(crate) mod atomic {
    #[cfg(loom)]
    pub use loom::hint::spin_loop;
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};

    #[cfg(not(loom))]
    pub use core::hint::spin_loop;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
}

/// The locked byte: held.
const LOCKED: u64 = 1;
/// The locked byte: held, and the queue's head is blocked: the unlocker must wake it.
const SLOW: u64 = 3;
const LOCKED_MASK: u64 = 0xff;
/// One waiter spins on the lock word itself, ahead of the queue.
const PENDING: u64 = 1 << 8;
const TAIL_SHIFT: u32 = 16;
const TAIL_MASK: u64 = !0 << TAIL_SHIFT;

/// A node's state: it heads the queue.
const HEAD: u8 = 0x80;

/// A queued waiter's node. `K` is how to wake it if it blocks (`()` if it never does).
pub struct Node<K> {
    /// The waiter queued behind this one, once it has linked itself.
    next: AtomicPtr<Node<K>>,
    /// [`HEAD`] once the predecessor has made it the queue's head, and for paravirtual
    /// waiters whether it runs, is halted (about to block, or blocked), or is hashed (the lock
    /// is marked slow for it: its unlocker will wake it). One word, so that the predecessor
    /// and the waiter agree with one read-modify-write each on whether it must be woken.
    state: AtomicU8,
    /// Paravirtual waiters: whether a wake-up is pending or the waiter sleeps (see [`pv`]).
    wake: AtomicU8,
    /// The CPU (VCPU) the waiter runs on, for its successor to look at.
    cpu: AtomicU32,
    waker: K,
}

impl<K> Node<K> {
    /// A node for a waiter on `cpu`, woken through `waker`.
    pub fn new(cpu: u32, waker: K) -> Self {
        Node {
            next: AtomicPtr::new(ptr::null_mut()),
            state: AtomicU8::new(pv::RUNNING),
            wake: AtomicU8::new(pv::IDLE),
            cpu: AtomicU32::new(cpu),
            waker,
        }
    }

    /// Readies a node that was used before for another wait.
    fn reset(&self, cpu: u32) {
        self.next.store(ptr::null_mut(), Ordering::Relaxed);
        self.state.store(pv::RUNNING, Ordering::Relaxed);
        self.wake.store(pv::IDLE, Ordering::Relaxed);
        self.cpu.store(cpu, Ordering::Relaxed);
    }

    fn is_head(&self) -> bool {
        self.state.load(Ordering::Acquire) & HEAD != 0
    }

    fn tail(&self) -> u64 {
        let address = self as *const Self as u64;
        debug_assert!(address >> (64 - TAIL_SHIFT) == 0, "a node address fits the tail");
        address << TAIL_SHIFT
    }

    /// The node a lock word's tail names.
    ///
    /// # Safety
    /// The tail must be nonzero, and its node still queued (its waiter cannot leave the queue
    /// before the one behind it has linked itself) or never freed.
    unsafe fn of_tail<'a>(word: u64) -> &'a Node<K> {
        // SAFETY: by the caller's contract the address is a live node.
        unsafe { &*((word >> TAIL_SHIFT) as *const Node<K>) }
    }
}

/// The lock's shared state, apart from what it protects: what [`QueueWait`] strategies act on.
pub struct LockWord<K> {
    word: AtomicU64,
    /// The blocked head the unlocker of a slow lock wakes: Linux keeps it in a hash table to
    /// keep the lock four bytes; a lock here can afford the pointer.
    hashed: AtomicPtr<Node<K>>,
}

impl<K> LockWord<K> {
    fn new() -> Self {
        LockWord { word: AtomicU64::new(0), hashed: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Takes the lock if neither held nor pending, whoever is queued. Returns whether it did,
    /// and if so whether others were queued (a steal, unless the taker is their head).
    fn try_lock(&self) -> Option<bool> {
        let mut word = self.word.load(Ordering::Relaxed);
        while word & (LOCKED_MASK | PENDING) == 0 {
            match self.word.compare_exchange_weak(word, word | LOCKED, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(word & TAIL_MASK != 0),
                Err(now) => word = now,
            }
        }
        None
    }

    /// Takes the lock for the holder of the pending bit, clearing the bit, if it is not held.
    fn take_pending(&self) -> bool {
        let word = self.word.load(Ordering::Relaxed);
        word & LOCKED_MASK == 0
            && self.word.compare_exchange(word, (word & !PENDING) | LOCKED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Whether the lock is neither held nor pending (the head may take it).
    fn free(&self) -> bool {
        self.word.load(Ordering::SeqCst) & (LOCKED_MASK | PENDING) == 0
    }
}

/// How a [`QueuedLock`]'s waiters wait: the seam where a paravirtual runtime plugs in.
pub trait QueueWait: Send + Sync {
    /// How a blocked waiter is woken.
    type Waker: Sync;

    /// Whether the first waiter spins on the lock word (the pending bit) before queueing.
    /// Linux's paravirtual lock queues at once, so that every waiter has a node to block on.
    const PENDING: bool;

    /// Runs `wait` with the calling thread's node, readied for a new wait.
    fn with_node<R>(&self, wait: impl FnOnce(&Node<Self::Waker>) -> R) -> R;

    /// Waits until `node` is the queue's head; `prev` is the node ahead of it.
    fn wait_node(&self, node: &Node<Self::Waker>, prev: &Node<Self::Waker>, stats: &mut LockStats);

    /// Waits, as the queue's head, until it takes the lock.
    fn wait_head(&self, lock: &LockWord<Self::Waker>, node: &Node<Self::Waker>, stats: &mut LockStats);

    /// Makes `next` the queue's head; called by the holder.
    fn make_head(&self, _lock: &LockWord<Self::Waker>, next: &Node<Self::Waker>) {
        next.state.fetch_or(HEAD, Ordering::Release);
    }

    /// Releases the lock, held by the caller, whose counters are `stats`.
    fn unlock(&self, lock: &LockWord<Self::Waker>, stats: &mut LockStats);
}

/// Waiters spin, whatever happens to the threads ahead of them: `qspin`.
impl QueueWait for Spin {
    type Waker = ();
    const PENDING: bool = true;

    fn with_node<R>(&self, wait: impl FnOnce(&Node<()>) -> R) -> R {
        // A spinning waiter never reads another's node once it has linked itself behind it,
        // so its node may live on its stack.
        wait(&Node::new(0, ()))
    }

    fn wait_node(&self, node: &Node<()>, _prev: &Node<()>, _stats: &mut LockStats) {
        while !node.is_head() {
            atomic::spin_loop();
        }
    }

    fn wait_head(&self, lock: &LockWord<()>, _node: &Node<()>, _stats: &mut LockStats) {
        while lock.try_lock().is_none() {
            atomic::spin_loop();
        }
    }

    fn unlock(&self, lock: &LockWord<()>, _stats: &mut LockStats) {
        lock.word.fetch_sub(LOCKED, Ordering::Release);
    }
}

/// A queued spinlock around a `T`; its waiters wait as `W` says. Counters are updated by the
/// holder, as for the ticket lock.
pub struct QueuedLock<T, W: QueueWait = Spin> {
    lock: LockWord<W::Waker>,
    wait: W,
    stats: UnsafeCell<LockStats>,
    value: UnsafeCell<T>,
}

// SAFETY: one holder at a time gets `&mut T`, and `stats` is only touched by the holder.
unsafe impl<T: Send, W: QueueWait> Sync for QueuedLock<T, W> {}
// SAFETY: owning the lock owns the `T`; nodes are not part of it.
unsafe impl<T: Send, W: QueueWait> Send for QueuedLock<T, W> {}

impl<T> QueuedLock<T> {
    /// A `qspin` lock.
    pub fn new(value: T) -> Self {
        QueuedLock::with_wait(value, Spin)
    }
}

impl<T, W: QueueWait> QueuedLock<T, W> {
    pub fn with_wait(value: T, wait: W) -> Self {
        QueuedLock {
            lock: LockWord::new(),
            wait,
            stats: UnsafeCell::new(LockStats::ZERO),
            value: UnsafeCell::new(value),
        }
    }

    /// Whether the lock is held, or has a waiter pending or queued.
    pub fn busy(&self) -> bool {
        self.lock.word.load(Ordering::Relaxed) != 0
    }

    /// The contended path: returns what the wait adds to the counters.
    #[cold]
    fn lock_slow(&self) -> LockStats {
        let mut stats = LockStats { contended: 1, ..LockStats::ZERO };
        let start = tsc();
        if !(W::PENDING && self.pending()) {
            if let Some(stolen) = self.lock.try_lock() {
                stats.steals += u64::from(stolen);
            } else {
                self.wait.with_node(|node| self.queue(node, &mut stats));
            }
        }
        stats.spin_cycles += tsc() - start;
        stats
    }

    /// Waits as the pending waiter if there is none yet and nobody is queued; returns whether
    /// it took the lock that way.
    fn pending(&self) -> bool {
        let word = &self.lock.word;
        if word.load(Ordering::Relaxed) & !LOCKED_MASK != 0 {
            return false;
        }
        let before = word.fetch_or(PENDING, Ordering::Acquire);
        if before & !LOCKED_MASK != 0 {
            // Someone else is pending or queued: undo our bit if it was ours, and queue.
            if before & PENDING == 0 {
                word.fetch_and(!PENDING, Ordering::Relaxed);
            }
            return false;
        }
        // Nobody may take the lock while it is pending (stealers and the head wait for the
        // bit to clear): wait for the holder, then clear pending and set locked in one step.
        while word.load(Ordering::Acquire) & LOCKED_MASK != 0 {
            atomic::spin_loop();
        }
        word.fetch_sub(PENDING - LOCKED, Ordering::Acquire);
        true
    }

    /// Queues `node`, waits to be the head, takes the lock, and passes the head on.
    fn queue(&self, node: &Node<W::Waker>, stats: &mut LockStats) {
        let word = &self.lock.word;
        let tail = node.tail();
        let mut before = word.load(Ordering::Relaxed);
        while let Err(now) =
            word.compare_exchange_weak(before, (before & !TAIL_MASK) | tail, Ordering::AcqRel, Ordering::Relaxed)
        {
            before = now;
        }
        if before & TAIL_MASK != 0 {
            // SAFETY: the node we replaced as tail waits until we link ourselves behind it.
            let prev = unsafe { Node::of_tail(before) };
            prev.next.store(node as *const _ as *mut _, Ordering::Release);
            self.wait.wait_node(node, prev, stats);
        }
        self.wait.wait_head(&self.lock, node, stats);
        // Held. If we are the last in the queue, empty it; else pass the head on.
        let mut now = word.load(Ordering::Relaxed);
        while now & TAIL_MASK == tail {
            match word.compare_exchange_weak(now, now & !TAIL_MASK, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(changed) => now = changed,
            }
        }
        let next = loop {
            let next = node.next.load(Ordering::Acquire);
            if !next.is_null() {
                break next;
            }
            atomic::spin_loop();
        };
        // SAFETY: the next waiter's node stays queued until it is the head and holds the lock,
        // which we do.
        self.wait.make_head(&self.lock, unsafe { &*next });
    }
}

/// Holds a [`QueuedLock`]; unlocks when dropped.
pub struct QueuedGuard<'a, T, W: QueueWait> {
    lock: &'a QueuedLock<T, W>,
}

impl<T: Send, W: QueueWait> Lock<T> for QueuedLock<T, W> {
    type Guard<'a>
        = QueuedGuard<'a, T, W>
    where
        Self: 'a;

    fn lock(&self) -> QueuedGuard<'_, T, W> {
        let fast = self.lock.word.compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok();
        let waited = (!fast).then(|| self.lock_slow());
        // SAFETY: this thread holds the lock.
        let stats = unsafe { &mut *self.stats.get() };
        stats.acquisitions += 1;
        if let Some(waited) = waited {
            stats.add(waited);
        }
        QueuedGuard { lock: self }
    }

    fn stats(&self) -> LockStats {
        let guard = self.lock();
        // SAFETY: held.
        let mut stats = unsafe { *guard.lock.stats.get() };
        // Not this read's own acquisition.
        stats.acquisitions -= 1;
        stats
    }
}

impl<T, W: QueueWait> Deref for QueuedGuard<'_, T, W> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T, W: QueueWait> DerefMut for QueuedGuard<'_, T, W> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T, W: QueueWait> Drop for QueuedGuard<'_, T, W> {
    fn drop(&mut self) {
        // SAFETY: still held until `unlock` releases it.
        let stats = unsafe { &mut *self.lock.stats.get() };
        self.lock.wait.unlock(&self.lock.lock, stats);
    }
}
