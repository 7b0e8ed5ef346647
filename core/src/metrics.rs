//! What runs report, real and simulated alike: each VCPU's time in esxtop's terms, and the
//! dispatcher's own figures and trace.

use serde::Serialize;

use crate::stats::Percentiles;

/// A VCPU's accumulated times, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VcpuTimes {
    pub run_ns: u64,
    pub ready_ns: u64,
    pub costop_ns: u64,
    pub wait_ns: u64,
}

/// One stretch of a VCPU on a pCPU (pCPU `None` under a policy that does not gate: Linux
/// chose the core), in nanoseconds since the dispatcher started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Span {
    pub vcpu: u32,
    pub pcpu: Option<u32>,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the dispatcher measured over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DispatchReport {
    /// Times a VCPU passed the gate onto a pCPU another VCPU occupied (must be 0).
    pub gate_violations: u64,
    /// Events handled (wake, block, yield, down, tick).
    pub events: u64,
    /// VCPUs told to leave their pCPU.
    pub preemptions: u64,
    /// Policy decision plus applying it, per event, in nanoseconds.
    pub decision_ns: Percentiles,
    /// Decision to the VCPU out of KVM_RUN, per preemption, in nanoseconds.
    pub preemption_ns: Percentiles,
    /// A pCPU granted to a waiting VCPU to its thread past the gate, in nanoseconds.
    pub resume_ns: Percentiles,
    /// A grant change published to the VM's VCPUs all up or down to match, in nanoseconds.
    pub reconfiguration_ns: Percentiles,
    /// Co-stopped time per VCPU (global id), in nanoseconds.
    pub costop_ns: Vec<u64>,
    /// Who ran where when.
    #[serde(skip)]
    pub trace: Vec<Span>,
}
