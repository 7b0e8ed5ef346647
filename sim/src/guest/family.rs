//! The spinlock family a VM's guest runs (`locks=`), with the bounds of its paravirtual
//! waits: read once from the guest parameters.

use sched::Ns;

/// The spinlock family, with the bounds of its paravirtual waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Locks {
    /// Ticket lock; waiters spin.
    Spin,
    /// Ticket lock; a waiter yields to a preempted holder after `yield_after` and blocks its
    /// VCPU after `block_after`.
    Pv { yield_after: Ns, block_after: Ns },
    /// Queued lock; waiters spin.
    Qspin,
    /// Queued lock; a queued waiter blocks its thread after `spin` (or as soon as its
    /// predecessor stops), the head after `head`. `yield_after` is for the runtime's other
    /// paravirtual waits (a barrier's relax).
    PvQspin { yield_after: Ns, spin: Ns, head: Ns },
}

impl Locks {
    /// The family the guest parameters name.
    pub(super) fn of(guest: &workloads::Params) -> anyhow::Result<Locks> {
        let us = |key: &str| guest.u64(key) * 1_000;
        Ok(match guest.str("locks") {
            "spin" => Locks::Spin,
            "pv" => Locks::Pv { yield_after: us("pv_yield_us"), block_after: us("pv_block_us") },
            "qspin" => Locks::Qspin,
            "pvqspin" => {
                Locks::PvQspin { yield_after: us("pv_yield_us"), spin: us("pvq_spin_us"), head: us("pvq_head_us") }
            }
            other => anyhow::bail!("the simulator has no model of the lock family {other}"),
        })
    }

    /// With a paravirtual family, how long the runtime's waits spin before they look at the
    /// VCPUs in the shared page.
    pub(super) fn pv_yield(self) -> Option<Ns> {
        match self {
            Locks::Pv { yield_after, .. } | Locks::PvQspin { yield_after, .. } => Some(yield_after),
            Locks::Spin | Locks::Qspin => None,
        }
    }

    pub(super) fn queued(self) -> bool {
        matches!(self, Locks::Qspin | Locks::PvQspin { .. })
    }
}
