//! The gate, as VCPU threads pass it without the dispatcher's lock. pCPUs are host cores; a
//! VCPU thread may enter KVM_RUN only while it holds the pCPU the dispatcher granted it,
//! pinned to that pCPU's core. Each thread claims a per-pCPU occupant word as it passes the
//! gate, and a failed claim (a pCPU handed on before its holder left) counts as a violation.
//! A holder told to leave finds its revocation flag set before its next KVM_RUN.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use sched::VcpuId;

/// An occupant word with nobody on its pCPU.
const NOBODY: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Gate {
    /// Whether the policy gates VCPU threads; under one that does not (`host`), threads are
    /// only pinned to the pCPU set and Linux schedules them.
    gates: bool,
    /// Host core of each pCPU.
    cores: Vec<usize>,
    /// Per VCPU: its thread's id (0 until the thread registers), so that a pCPU is granted
    /// with the thread already moved to the pCPU's core.
    threads: Vec<AtomicI32>,
    /// Per VCPU: set when it must leave its pCPU (read by its thread before KVM_RUN).
    revoked: Vec<AtomicBool>,
    /// Per pCPU: the VCPU that passed the gate onto it, or `NOBODY`.
    occupants: Vec<AtomicU32>,
    violations: AtomicU64,
}

impl Gate {
    /// A gate (if `gates`) over host cores `cores`, one pCPU each, for `vcpus` VCPUs.
    pub fn new(gates: bool, cores: Vec<usize>, vcpus: usize) -> Gate {
        Gate {
            gates,
            threads: (0..vcpus).map(|_| AtomicI32::new(0)).collect(),
            revoked: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            occupants: cores.iter().map(|_| AtomicU32::new(NOBODY)).collect(),
            violations: AtomicU64::new(0),
            cores,
        }
    }

    pub fn gates(&self) -> bool {
        self.gates
    }

    /// Called by VCPU `vcpu`'s own thread before it first asks for a pCPU: records its thread
    /// id, or, without gating, pins it to the pCPU set for Linux to place.
    pub fn register_thread(&self, vcpu: VcpuId) {
        if self.gates {
            // SAFETY: gettid has no preconditions.
            self.threads[vcpu.index()].store(unsafe { libc::gettid() }, Ordering::Release);
        } else {
            set_affinity(0, &self.cores);
        }
    }

    /// Pins `vcpu`'s thread to `pcpu`'s core; false if its thread has not registered yet.
    pub fn pin(&self, vcpu: VcpuId, pcpu: usize) -> bool {
        let tid = self.threads[vcpu.index()].load(Ordering::Acquire);
        if tid != 0 {
            set_affinity(tid, &[self.cores[pcpu]]);
        }
        tid != 0
    }

    /// Whether `vcpu` must leave its pCPU.
    pub fn revoked(&self, vcpu: VcpuId) -> bool {
        self.revoked[vcpu.index()].load(Ordering::Acquire)
    }

    /// Sets whether `vcpu` must leave its pCPU; returns whether it already had to.
    pub fn revoke(&self, vcpu: VcpuId, revoked: bool) -> bool {
        self.revoked[vcpu.index()].swap(revoked, Ordering::AcqRel)
    }

    /// `vcpu`'s thread passes the gate onto `pcpu`.
    pub fn claim(&self, pcpu: usize, vcpu: VcpuId) {
        if self.occupants[pcpu].compare_exchange(NOBODY, vcpu.0, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `vcpu` gives `pcpu` back: it no longer occupies it, nor has to leave it.
    pub fn leave(&self, pcpu: usize, vcpu: VcpuId) {
        let _ = self.occupants[pcpu].compare_exchange(vcpu.0, NOBODY, Ordering::SeqCst, Ordering::SeqCst);
        self.revoked[vcpu.index()].store(false, Ordering::Release);
    }

    /// Failed claims so far.
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }
}

/// Pins thread `tid` (0: the calling thread) to `cores`. Failure (e.g. a core taken away by
/// a cgroup) only costs placement, not correctness, so it is ignored.
fn set_affinity(tid: libc::pid_t, cores: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it for core
    // numbers below CPU_SETSIZE, which the scenario checked against the host's CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
    }
}
