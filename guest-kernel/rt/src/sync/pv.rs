//! Paravirtual waiting (`locks=pv`): waiters that look, through the shared page, at the VCPU
//! they wait for.
//!
//! A ticket-lock waiter spins for `pv_yield_us`; from then on it checks,
//! every [`PV_CHECK_PERIOD_NS`], the VCPU that holds (or is next to take) the ticket being
//! served: if the monitor shows that VCPU preempted, spinning is pointless and the waiter
//! yields its physical CPU to it (a directed yield). Once it has waited `pv_block_us`,
//! it blocks its VCPU, whatever that VCPU's state, and the unlocker that serves its ticket
//! kicks it: yields past that bound would go on for as long as the holder stays preempted,
//! an exit each (the simulator showed such yield storms eating whole pCPUs at 10x
//! overcommit), where one block and one kick do. Both cost an exit
//! (~55 µs on these machines), so they are skipped when the shared page says they are
//! useless: no yield unless the VCPU waited for is preempted, no kick unless a waiter is
//! blocked on the very ticket now served. A spinning barrier's waiters yield to a preempted
//! sibling the same way.
//!
//! Blocking is race-free as in Linux's pv ticketlocks: the waiter counts itself in the lock's
//! `blocked`, publishes (lock, ticket) in its VCPU's `WAITING` slot and checks its turn once
//! more before it blocks; the unlocker moves `serving` on and then reads `blocked` (all
//! sequentially consistent): either the waiter sees its turn, or the unlocker sees the waiter.
//! A kick that arrives before the block makes the block return at once.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pv_abi::MAX_VCPUS;
use pv_abi::shared::VcpuState;
use workloads::record::LockStats;
use workloads::sync::{Spin, TicketWait};
use workloads::timing::PV_CHECK_PERIOD_NS;

use crate::{boot, clock, hypercall, percpu};

/// A blocked waiter re-checks its turn after this long even without a kick: a safety net,
/// not a path the protocol needs.
const BLOCK_TIMEOUT_NS: u64 = 10_000_000;
/// Ticket owners remembered per lock; waiters beyond it only make the hint stale.
const OWNER_SLOTS: usize = MAX_VCPUS;

/// The bounds of a paravirtual wait, set at boot from the `pv_yield_us` and `pv_block_us`
/// guest parameters.
pub(crate) struct Thresholds {
    pub yield_after_ns: u64,
    pub block_after_ns: u64,
}

static YIELD_AFTER_NS: AtomicU64 = AtomicU64::new(0);
static BLOCK_AFTER_NS: AtomicU64 = AtomicU64::new(0);

/// Per VCPU: the (lock, ticket) its blocked waiter waits for, 0 if none.
static WAITING: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Per VCPU: when its barrier waiters next look for a preempted sibling (TSC).
static NEXT_LOOK: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// Sets the bounds of the paravirtual waits to come.
pub(crate) fn set_thresholds(thresholds: Thresholds) {
    YIELD_AFTER_NS.store(thresholds.yield_after_ns, Ordering::Relaxed);
    BLOCK_AFTER_NS.store(thresholds.block_after_ns, Ordering::Relaxed);
}

/// Whether the family chosen at boot is paravirtual (`locks=pv` or `pvqspin`).
pub(crate) fn enabled() -> bool {
    workloads::paravirtual(super::family())
}

/// The state of VCPU `vcpu` as the monitor shows it in the shared page.
pub(crate) fn state_of(vcpu: u32) -> Option<VcpuState> {
    let slot = boot::shared_page().vcpus.get(vcpu as usize)?;
    VcpuState::from_u32(slot.state.load(Ordering::Relaxed))
}

/// Counts a lock waiter of this VCPU gone to the slow path, where the monitor sees it live.
pub(crate) fn count_slow_path() {
    boot::shared_page().vcpus[percpu::vcpu_id() as usize].lock_slow_paths.fetch_add(1, Ordering::Relaxed);
}

/// The ticket lock's waiting strategy in the guest: plain spinning, or paravirtual.
pub struct GuestWait {
    paravirt: bool,
    /// The VCPU that took each ticket (by ticket modulo [`OWNER_SLOTS`]).
    owners: [AtomicU32; OWNER_SLOTS],
    /// Waiters blocked or about to block.
    blocked: AtomicU32,
    kicks: AtomicU64,
}

impl GuestWait {
    /// The family chosen at boot.
    pub(crate) fn new() -> Self {
        GuestWait {
            paravirt: enabled(),
            owners: [const { AtomicU32::new(0) }; OWNER_SLOTS],
            blocked: AtomicU32::new(0),
            kicks: AtomicU64::new(0),
        }
    }

    /// What a blocked waiter publishes: this lock and its ticket, never 0.
    fn waiting_word(&self, ticket: u32) -> u64 {
        // Guest memory is below 4 GiB, so the address's low half tells locks apart.
        ((self as *const Self as u64) << 32) | u64::from(ticket) | (1 << 63)
    }

    fn block(&self, serving: &AtomicU32, ticket: u32, stats: &mut LockStats) {
        let slot = &WAITING[percpu::vcpu_id() as usize];
        self.blocked.fetch_add(1, Ordering::SeqCst);
        slot.store(self.waiting_word(ticket), Ordering::SeqCst);
        if serving.load(Ordering::SeqCst) != ticket {
            stats.blocks += 1;
            hypercall::block(clock::deadline_after_ns(BLOCK_TIMEOUT_NS));
            if serving.load(Ordering::Acquire) != ticket {
                stats.spurious_wakeups += 1;
            }
        }
        slot.store(0, Ordering::SeqCst);
        self.blocked.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TicketWait for GuestWait {
    fn took(&self, ticket: u32) {
        if self.paravirt {
            self.owners[ticket as usize % OWNER_SLOTS].store(percpu::vcpu_id(), Ordering::Relaxed);
        }
    }

    fn wait(&self, serving: &AtomicU32, ticket: u32, stats: &mut LockStats) {
        if !self.paravirt {
            return Spin.wait(serving, ticket, stats);
        }
        let me = percpu::vcpu_id();
        let start = clock::tsc();
        let block_at = start + clock::ns_to_ticks(BLOCK_AFTER_NS.load(Ordering::Relaxed));
        let mut next_check = start + clock::ns_to_ticks(YIELD_AFTER_NS.load(Ordering::Relaxed));
        let mut slow = false;
        loop {
            let served = serving.load(Ordering::Acquire);
            if served == ticket {
                break;
            }
            let now = clock::tsc();
            if now < next_check {
                core::hint::spin_loop();
                continue;
            }
            if !slow {
                stats.slow_paths += 1;
                count_slow_path();
            }
            slow = true;
            let owner = self.owners[served as usize % OWNER_SLOTS].load(Ordering::Relaxed);
            if now >= block_at {
                self.block(serving, ticket, stats);
            } else if owner != me && state_of(owner) == Some(VcpuState::Preempted) {
                let _ = hypercall::yield_to(Some(owner));
                stats.directed_yields += 1;
            }
            next_check = clock::tsc() + clock::ns_to_ticks(PV_CHECK_PERIOD_NS);
        }
        stats.spin_cycles += clock::tsc() - start;
    }

    fn unlocked(&self, next: u32) {
        if !self.paravirt || self.blocked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let word = self.waiting_word(next);
        if let Some(vcpu) = (0..boot::nr_vcpus()).find(|&v| WAITING[v as usize].load(Ordering::SeqCst) == word) {
            let _ = hypercall::kick(vcpu);
            self.kicks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> LockStats {
        LockStats { kicks: self.kicks.load(Ordering::Relaxed), ..LockStats::ZERO }
    }
}

/// One step of a paravirtual spin-wait at a barrier: [`super::relax`], and at most every
/// `pv_yield_us` a look for a preempted sibling VCPU (the laggard may be on it), to yield to.
pub(crate) fn relax() {
    super::relax();
    let me = percpu::vcpu_id();
    let now = clock::tsc();
    let next_look = &NEXT_LOOK[me as usize];
    if now < next_look.load(Ordering::Relaxed) {
        return;
    }
    next_look.store(now + clock::ns_to_ticks(YIELD_AFTER_NS.load(Ordering::Relaxed)), Ordering::Relaxed);
    if let Some(sibling) = (0..boot::nr_vcpus()).find(|&v| v != me && state_of(v) == Some(VcpuState::Preempted)) {
        let _ = hypercall::yield_to(Some(sibling));
    }
}
