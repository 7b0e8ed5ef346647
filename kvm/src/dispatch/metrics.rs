//! What the dispatcher measures: the time each decision takes (policy plus applying the
//! assignment), the preemption latency (decision to VCPU out of KVM_RUN), the resume latency
//! (pCPU granted to VCPU thread past the gate), the time a VM takes to follow a new grant,
//! each VCPU's co-stopped time, and a trace of who ran where.

use std::time::{Duration, Instant};

use sched::VcpuId;
use tandem_core::metrics::{DispatchReport, Span};
use tandem_core::stats::Percentiles;

/// Samples kept per latency kind and trace spans kept per run, so that a long run cannot
/// make the monitor hold unbounded memory.
const SAMPLES_MAX: usize = 1 << 20;

/// Latencies in nanoseconds, at most `SAMPLES_MAX`.
#[derive(Debug, Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn push(&mut self, latency: Duration) {
        if self.0.len() < SAMPLES_MAX {
            self.0.push(latency.as_nanos() as u64);
        }
    }

    fn percentiles(&mut self) -> Percentiles {
        Percentiles::of(std::mem::take(&mut self.0))
    }
}

/// One VCPU's open intervals and co-stopped total.
#[derive(Debug, Default)]
struct VcpuMetrics {
    /// When it was told to leave its pCPU, while it has not yet.
    revoked_at: Option<Instant>,
    /// When it got its pCPU (or became runnable, without gating).
    running_since: Option<Instant>,
    /// When it was granted the pCPU its thread has not yet passed the gate onto.
    granted_at: Option<Instant>,
    /// Since when it has been co-stopped, while it waits.
    costopped_since: Option<Instant>,
    costop_ns: u64,
}

/// A running count and total of latencies, for the live view (the samples stop at
/// `SAMPLES_MAX`; these do not).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Total {
    pub count: u64,
    pub ns: u64,
}

impl Total {
    fn add(&mut self, latency: Duration) {
        self.count += 1;
        self.ns += latency.as_nanos() as u64;
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    /// Time 0 of the trace.
    origin: Instant,
    events: u64,
    preemptions: u64,
    pub decisions: Total,
    pub preempted: Total,
    decision: Samples,
    preemption: Samples,
    resume: Samples,
    reconfiguration: Samples,
    trace: Vec<Span>,
    vcpus: Vec<VcpuMetrics>,
}

impl Metrics {
    pub fn new(origin: Instant, vcpus: usize) -> Metrics {
        Metrics {
            origin,
            events: 0,
            preemptions: 0,
            decisions: Total::default(),
            preempted: Total::default(),
            decision: Samples::default(),
            preemption: Samples::default(),
            resume: Samples::default(),
            reconfiguration: Samples::default(),
            trace: Vec::new(),
            vcpus: (0..vcpus).map(|_| VcpuMetrics::default()).collect(),
        }
    }

    /// An event was handled, its decision begun at `started`.
    pub fn decided(&mut self, started: Instant) {
        let took = started.elapsed();
        self.events += 1;
        self.decisions.add(took);
        self.decision.push(took);
    }

    /// `vcpu` is told to leave its pCPU.
    pub fn revoked(&mut self, vcpu: VcpuId) {
        self.vcpus[vcpu.index()].revoked_at = Some(Instant::now());
        self.preemptions += 1;
    }

    /// `vcpu` keeps its pCPU after all.
    pub fn kept(&mut self, vcpu: VcpuId) {
        self.vcpus[vcpu.index()].revoked_at = None;
    }

    /// `vcpu` left KVM_RUN to give its pCPU back: the preemption latency, if it was told to.
    pub fn left(&mut self, vcpu: VcpuId) {
        if let Some(at) = self.vcpus[vcpu.index()].revoked_at.take() {
            let took = at.elapsed();
            self.preempted.add(took);
            self.preemption.push(took);
        }
    }

    /// `vcpu` is granted a pCPU: it runs from now, once its thread passes the gate.
    pub fn granted(&mut self, vcpu: VcpuId) {
        let now = Instant::now();
        let metrics = &mut self.vcpus[vcpu.index()];
        metrics.running_since = Some(now);
        metrics.granted_at = Some(now);
    }

    /// `vcpu` runs from now without a gate.
    pub fn runs_ungated(&mut self, vcpu: VcpuId) {
        self.vcpus[vcpu.index()].running_since = Some(Instant::now());
    }

    /// `vcpu`'s thread passed the gate: the resume latency, if it was granted a pCPU.
    pub fn passed_gate(&mut self, vcpu: VcpuId) {
        if let Some(at) = self.vcpus[vcpu.index()].granted_at.take() {
            self.resume.push(at.elapsed());
        }
    }

    /// `vcpu` stops running (on `pcpu`, if it held one): the span it ran, for the trace.
    pub fn released(&mut self, vcpu: VcpuId, pcpu: Option<usize>) {
        let metrics = &mut self.vcpus[vcpu.index()];
        if pcpu.is_some() {
            metrics.revoked_at = None;
        }
        if let Some(since) = metrics.running_since.take()
            && self.trace.len() < SAMPLES_MAX
        {
            let start_ns = since.duration_since(self.origin).as_nanos() as u64;
            let end_ns = self.origin.elapsed().as_nanos() as u64;
            self.trace.push(Span { vcpu: vcpu.0, pcpu: pcpu.map(|p| p as u32), start_ns, end_ns });
        }
    }

    /// Whether `vcpu` is co-stopped now.
    pub fn costopped(&mut self, vcpu: VcpuId, costopped: bool) {
        let metrics = &mut self.vcpus[vcpu.index()];
        match (costopped, metrics.costopped_since) {
            (true, None) => metrics.costopped_since = Some(Instant::now()),
            (false, Some(since)) => {
                metrics.costop_ns += since.elapsed().as_nanos() as u64;
                metrics.costopped_since = None;
            }
            _ => {}
        }
    }

    /// VCPUs told to leave their pCPU so far.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Whether `vcpu` is co-stopped now.
    pub fn is_costopped(&self, vcpu: VcpuId) -> bool {
        self.vcpus[vcpu.index()].costopped_since.is_some()
    }

    /// Co-stopped time of `vcpu` so far, in nanoseconds.
    pub fn costop_ns(&self, vcpu: VcpuId) -> u64 {
        let metrics = &self.vcpus[vcpu.index()];
        metrics.costop_ns + metrics.costopped_since.map_or(0, |since| since.elapsed().as_nanos() as u64)
    }

    /// A VM followed a grant published `took` ago.
    pub fn reconfigured(&mut self, took: Duration) {
        self.reconfiguration.push(took);
    }

    /// Everything measured, with the gate's `violations`; co-stops still open end now.
    pub fn report(&mut self, violations: u64) -> DispatchReport {
        for v in 0..self.vcpus.len() {
            self.costopped(VcpuId(v as u32), false);
        }
        DispatchReport {
            gate_violations: violations,
            events: self.events,
            preemptions: self.preemptions,
            decision_ns: self.decision.percentiles(),
            preemption_ns: self.preemption.percentiles(),
            resume_ns: self.resume.percentiles(),
            reconfiguration_ns: self.reconfiguration.percentiles(),
            costop_ns: self.vcpus.iter().map(|metrics| metrics.costop_ns).collect(),
            trace: std::mem::take(&mut self.trace),
        }
    }
}
