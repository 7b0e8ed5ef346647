//! A discrete-event simulator of pCPUs, VMs, VCPUs and the workloads in them, driving the
//! very same `sched` policies as the real dispatcher, through the same [`Policy`] trait, in
//! virtual time.
//!
//! The [`engine`] plays the dispatcher: it owns the time, the event queue, the pCPUs and the
//! policy, and carries out the policy's assignment with the monitor's costs. The [`guest`]
//! model plays the unikernel in each VM: cooperative threads running [`model`] programs on
//! the VCPUs, ticket spinlocks and barriers that spin or, with PV locks, yield to a
//! preempted VCPU and block until kicked, pipeline queues, idle VCPUs that poll and then
//! block, demand reported and the VCPU grant followed, a server's threads waiting for
//! requests from the NIC; it hands what it asks of the monitor to the engine as values. The
//! [`load`] on a server is the monitor's load generator, closed or open loop, which measures
//! each request's latency, and its [`host`] thread carries the traffic to and from the guest,
//! taking pCPU time the dispatcher does not see. Nothing depends on the wall clock or on
//! hashing order: the same scenario and seed give the same result, byte for byte.
//!
//! [`Policy`]: sched::Policy

mod engine;
mod guest;
mod host;
mod load;
mod model;
mod queue;
mod rng;
#[cfg(test)]
mod tests;

use anyhow::Context;
use sched::Ns;
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;
use workloads::Record;

use engine::Sim;

/// Most virtual time a reference run is simulated.
const REFERENCE_LIMIT: Ns = 10_000_000_000;

/// Simulates (once) the reference run of every VM of `scenario` into `references`.
fn measure_references(scenario: &Scenario, references: &mut References) -> anyhow::Result<()> {
    references.measure(scenario, |vm, solo| {
        // A workload without end reaches its steady rate long before this.
        let mut config = scenario.sim.clone();
        let end = config.duration.unwrap_or((scenario.timeout_s * 1e9) as Ns);
        config.duration = Some(end.min(REFERENCE_LIMIT));
        let (run, _) = Sim::new(solo, &config, false)?.run(solo);
        let elapsed_s = run.elapsed_ns as f64 / 1e9;
        let rate = run.vms[0].record.as_ref().map(Record::rate).filter(|rate| *rate > 0.0);
        rate.with_context(|| format!("the simulated reference run of {} did no work in {elapsed_s:.1} s", vm.workload))
    })
}

/// A finished simulation: its result, and the engine's events (its unit of work).
pub struct SimOutcome {
    pub result: ScenarioResult,
    pub events: u64,
}

/// Simulates `scenario` (its `[sim]` table applied) and sets each VM's result against its
/// simulated reference, like a real run.
pub fn simulate(scenario: &Scenario, references: &mut References, trace: bool) -> anyhow::Result<SimOutcome> {
    if let Some(vm) = scenario.vms.iter().find(|vm| vm.kernel.is_some()) {
        anyhow::bail!(
            "{}: VM {} boots a kernel of its own, which the simulator has no model of",
            scenario.path.display(),
            vm.name
        );
    }
    let (run, events) = Sim::new(scenario, &scenario.sim, trace)?.run(scenario);
    measure_references(scenario, references)?;
    Ok(SimOutcome { result: ScenarioResult::of(scenario, run, Some(references)), events })
}
