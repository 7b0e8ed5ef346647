//! The guest as the system under the paravirtual queued lock (`locks=pvqspin`, see
//! `workloads::sync::queued::pv`): a waiter blocks its thread, so that its VCPU runs another
//! runnable thread if it has one and blocks in the monitor only if it has none (the
//! scheduler's idle path); it looks at a predecessor's VCPU in the shared page, with no exit.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use pv_abi::MAX_VCPUS;
use pv_abi::shared::VcpuState;
use spinning_top::Spinlock;
use workloads::sync::queued::Node;
use workloads::sync::queued::pv::Paravirt;

use super::pv::state_of;
use crate::sched::{self, Thread};
use crate::{clock, percpu};

/// The spin bounds, set at boot from `pvq_spin_us` and `pvq_head_us` (in TSC ticks).
static NODE_SPIN: AtomicU64 = AtomicU64::new(0);
static HEAD_SPIN: AtomicU64 = AtomicU64::new(0);

/// Per VCPU, the nodes of waits that are over, for the next waits: nodes are never freed.
static POOLS: [Spinlock<Vec<&'static Node<Sleeper>>>; MAX_VCPUS] = [const { Spinlock::new(Vec::new()) }; MAX_VCPUS];

/// Sets the spin bounds of the waits to come.
pub(crate) fn set_bounds(node_spin_ns: u64, head_spin_ns: u64) {
    NODE_SPIN.store(clock::ns_to_ticks(node_spin_ns), Ordering::Relaxed);
    HEAD_SPIN.store(clock::ns_to_ticks(head_spin_ns), Ordering::Relaxed);
}

/// The thread asleep on a node, while it sleeps.
pub struct Sleeper {
    thread: Spinlock<Option<Arc<Thread>>>,
}

/// Guest threads on VCPUs.
pub struct GuestThreads;

impl Paravirt for GuestThreads {
    type Waker = Sleeper;

    fn take_node(&self) -> &'static Node<Sleeper> {
        let pooled = POOLS[percpu::vcpu_id() as usize].lock().pop();
        pooled.unwrap_or_else(|| Box::leak(Box::new(Node::new(0, Sleeper { thread: Spinlock::new(None) }))))
    }

    fn give_node(&self, node: &'static Node<Sleeper>) {
        POOLS[percpu::vcpu_id() as usize].lock().push(node);
    }

    fn cpu(&self) -> u32 {
        percpu::vcpu_id()
    }

    /// A waiter on this very VCPU is not running either: we are.
    fn preempted(&self, cpu: u32) -> bool {
        cpu == percpu::vcpu_id() || state_of(cpu) == Some(VcpuState::Preempted)
    }

    fn block(&self, sleeper: &Sleeper, sleep: &dyn Fn() -> bool) {
        let me = sched::current();
        *sleeper.thread.lock() = Some(Arc::clone(&me));
        // Marked blocking before `sleep()` publishes it: a wake from then on is not missed.
        sched::prepare_block(&me);
        if sleep() {
            sched::block();
        } else {
            sched::cancel_block(&me);
            sleeper.thread.lock().take();
        }
    }

    fn wake(&self, sleeper: &Sleeper) {
        let thread = sleeper.thread.lock().take();
        if let Some(thread) = thread {
            sched::wake(&thread);
        }
    }

    fn now(&self) -> u64 {
        clock::tsc()
    }

    fn node_spin(&self) -> u64 {
        NODE_SPIN.load(Ordering::Relaxed)
    }

    fn head_spin(&self) -> u64 {
        HEAD_SPIN.load(Ordering::Relaxed)
    }

    fn went_slow(&self) {
        super::pv::count_slow_path();
    }
}
