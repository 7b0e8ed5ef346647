//! A scenario's results, real or simulated, computed once for both: each VM's result set
//! against its ideal, pCPU utilization and fairness.
//!
//! The ideal comes from a reference run of the same VM alone at 1x: `min(vcpus, pcpus)`
//! VCPUs on as many pCPUs under `credit` (see [`Scenario::reference_of`]). A VM whose fair
//! share is `s` pCPUs should then do its work at `reference rate * s / min(vcpus, pcpus)`.
//! A server driven by an open loop is the exception: its clients ask a fixed rate whatever
//! its share, so its ideal is to keep up as it did alone (its reference rate), and how well
//! it did shows in its latency.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sched::VcpuId;
use serde::Serialize;
use workloads::Record;

use crate::metrics::{DispatchReport, VcpuTimes};
use crate::scenario::{Scenario, VmPlan};
use crate::stats::jain;

/// What a scenario run produced.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub policy: String,
    /// Whether it comes from the simulator rather than real VMs.
    pub simulated: bool,
    /// Host CPU of each pCPU.
    pub cores: Vec<usize>,
    /// From the first VM's start to the last VM's end.
    pub elapsed_s: f64,
    /// VCPU run time over pCPU time available.
    pub utilization: f64,
    /// Jain's index over the VMs' ratios to their ideal (1 = perfectly even).
    pub fairness: Option<f64>,
    pub vms: Vec<VmResult>,
    pub dispatch: DispatchReport,
    /// The signal (SIGINT, SIGTERM) that stopped the run before its VMs ended, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
}

/// One VM's part of a [`ScenarioResult`].
#[derive(Debug, Clone, Serialize)]
pub struct VmResult {
    pub name: String,
    pub workload: String,
    pub locks: String,
    pub vcpus: u32,
    pub weight: u32,
    pub cap: Option<u32>,
    /// How it ended, in words.
    pub outcome: String,
    /// Whether the guest exited with 0 (its self-checks passed).
    pub ok: bool,
    /// Whether it was stopped at the scenario's timeout.
    pub timed_out: bool,
    pub elapsed_s: f64,
    /// The workload's result record.
    pub record: Option<Record>,
    /// Its fair share of the pCPUs, in pCPUs.
    pub fair_share: f64,
    /// Ops per second it should reach at its fair share, if a reference was measured.
    pub ideal_rate: Option<f64>,
    /// Its rate over the ideal.
    pub ratio: Option<f64>,
    /// Per VCPU: RUN, RDY, CSTP and WAIT time.
    pub vcpu_times: Vec<VcpuTimes>,
}

impl VmResult {
    /// Ops per second the workload reported.
    pub fn rate(&self) -> Option<f64> {
        self.record.as_ref().map(Record::rate)
    }
}

/// What one VM did, before it is set against its ideal.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// How it ended, in words.
    pub outcome: String,
    /// Whether it ended well (a real guest exited with 0).
    pub ok: bool,
    pub timed_out: bool,
    pub elapsed_s: f64,
    pub record: Option<Record>,
    pub vcpu_times: Vec<VcpuTimes>,
}

/// How a scenario's VMs ran together, before their results are set against their ideals.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// Per VM of the scenario, in its order.
    pub vms: Vec<VmRun>,
    /// From the first VM's start to the last VM's end, in nanoseconds.
    pub elapsed_ns: u64,
    pub simulated: bool,
    pub dispatch: DispatchReport,
}

impl ScenarioResult {
    /// The result of `run`, a run of `scenario`: with `references`, each VM against its
    /// ideal, and if every VM has one, Jain's index over their ratios.
    pub fn of(scenario: &Scenario, run: ScenarioRun, references: Option<&References>) -> ScenarioResult {
        let topology = scenario.topology();
        let pcpus = scenario.cores.len() as u32;
        let vms: Vec<VmResult> = scenario
            .vms
            .iter()
            .zip(run.vms)
            .zip(topology.fair_shares())
            .map(|((plan, vm), share)| {
                let width = plan.vcpus.min(pcpus);
                let ideal_rate = references
                    .and_then(|r| r.rate(scenario, plan))
                    .map(|rate| if plan.open_loop() { rate } else { rate * share / f64::from(width) });
                let ratio = match (&vm.record, ideal_rate) {
                    (Some(record), Some(ideal)) => Some(record.rate() / ideal),
                    _ => None,
                };
                VmResult {
                    name: plan.name.clone(),
                    workload: plan.workload.clone(),
                    locks: plan.locks.clone(),
                    vcpus: plan.vcpus,
                    weight: plan.weight,
                    cap: plan.cap,
                    outcome: vm.outcome,
                    ok: vm.ok,
                    timed_out: vm.timed_out,
                    elapsed_s: vm.elapsed_s,
                    record: vm.record,
                    fair_share: share,
                    ideal_rate,
                    ratio,
                    vcpu_times: vm.vcpu_times,
                }
            })
            .collect();
        let run_ns: u64 = vms.iter().flat_map(|vm| &vm.vcpu_times).map(|times| times.run_ns).sum();
        let utilization = run_ns as f64 / (run.elapsed_ns as f64 * scenario.cores.len() as f64).max(1.0);
        let ratios: Vec<f64> = vms.iter().filter_map(|vm| vm.ratio).collect();
        let fairness = (ratios.len() == vms.len()).then(|| jain(&ratios));
        ScenarioResult {
            scenario: scenario.path.display().to_string(),
            policy: scenario.policy.name().to_owned(),
            simulated: run.simulated,
            cores: scenario.cores.clone(),
            elapsed_s: run.elapsed_ns as f64 / 1e9,
            utilization,
            fairness,
            vms,
            dispatch: run.dispatch,
            interrupted_by: None,
        }
    }
}

/// Reference rates (ops per second at 1x) by what tells reference runs apart
/// ([`Scenario::reference_key`]), each measured once, on KVM or in the simulator.
#[derive(Debug, Default)]
pub struct References {
    rates: HashMap<String, f64>,
}

impl References {
    /// `vm`'s reference rate, if measured.
    pub fn rate(&self, scenario: &Scenario, vm: &VmPlan) -> Option<f64> {
        self.rates.get(&scenario.reference_key(vm)).copied()
    }

    /// Measures with `measure` (given a VM and its reference scenario) the reference rate of
    /// every VM of `scenario` that has one ([`VmPlan::has_reference`]) and is not known yet.
    pub fn measure(
        &mut self,
        scenario: &Scenario,
        mut measure: impl FnMut(&VmPlan, &Scenario) -> anyhow::Result<f64>,
    ) -> anyhow::Result<()> {
        for vm in scenario.vms.iter().filter(|vm| vm.has_reference()) {
            if let Entry::Vacant(entry) = self.rates.entry(scenario.reference_key(vm)) {
                entry.insert(measure(vm, &scenario.reference_of(vm))?);
            }
        }
        Ok(())
    }
}

/// Names a VCPU of `scenario` (by its id over all VMs) as `vm/vcpuN`.
pub fn vcpu_name(scenario: &Scenario, vcpu: VcpuId) -> String {
    let topology = scenario.topology();
    let vm = topology.vm_of(vcpu);
    format!("{}/vcpu{}", scenario.vms[vm].name, vcpu.0 - topology.vcpu(vm, 0).0)
}

#[cfg(test)]
mod tests {
    use sched::PolicyKind;

    use super::*;
    use crate::scenario::Target;
    use crate::sim_config::SimConfig;

    fn record(ops: u64) -> Record {
        let rt = workloads::native::NativeRuntime::new(Some(1));
        Record { ops, elapsed_ns: 1_000_000_000, ..workloads::run(&rt, "cpu", &["tasks=1"]).unwrap() }
    }

    #[test]
    fn an_ideal_scales_with_the_fair_share_but_an_open_loop_asks_its_rate() {
        let vms = vec![
            VmPlan::new("cpu", 2, "cpu", &[], "spin").unwrap(),
            VmPlan::new("closed", 2, "kv", &[("requests", "100")], "spin").unwrap(),
            VmPlan::new("open", 2, "kv", &[("requests", "100"), ("rate", "1000")], "spin").unwrap(),
        ];
        let scenario =
            Scenario::build("t.toml", Target::Sim, 2, PolicyKind::Credit, 10.0, vms, SimConfig::default()).unwrap();
        let mut references = References::default();
        references.measure(&scenario, |vm, _| Ok(if vm.name == "open" { 1000.0 } else { 3000.0 })).unwrap();
        let run = |ops| VmRun {
            outcome: String::new(),
            ok: true,
            timed_out: false,
            elapsed_s: 1.0,
            record: Some(record(ops)),
            vcpu_times: Vec::new(),
        };
        let run = ScenarioRun {
            vms: vec![run(1000), run(1000), run(1000)],
            elapsed_ns: 1,
            simulated: true,
            dispatch: DispatchReport::default(),
        };
        let result = ScenarioResult::of(&scenario, run, Some(&references));
        let ideals: Vec<f64> = result.vms.iter().map(|vm| vm.ideal_rate.unwrap()).collect();
        // A third of 2 pCPUs each: 3000 / s at 2 VCPUs scaled to 2/3 pCPU; the open loop asks 1000 / s.
        assert_eq!(ideals, [1000.0, 1000.0, 1000.0]);
        assert!(result.vms.iter().all(|vm| (vm.ratio.unwrap() - 1.0).abs() < 1e-12));
    }
}
