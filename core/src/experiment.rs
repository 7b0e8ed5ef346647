//! Experiments as values: the scenarios of `tandem compare`'s co-design matrix and of
//! `tandem sweep`'s grid are built here directly from the workload registry, and a
//! comparison's results are gathered into cells (a VM of a scenario under a policy, over
//! repeated runs).

use sched::PolicyKind;
use serde::{Deserialize, Serialize};

use crate::results::{ScenarioResult, VmResult};
use crate::scenario::{MAX_SIM_PCPUS, Scenario, Target, VmPlan};
use crate::sim_config::SimConfig;
use crate::stats::Summary;

/// The matrix's pCPUs.
pub const MATRIX_PCPUS: usize = 2;
/// A matrix VM stuck in a collapse (a convoy of spinning waiters) is stopped after this long.
pub const MATRIX_TIMEOUT_S: f64 = 20.0;

/// The matrix's scenario of `workload` at `level` times overcommit of 2 pCPUs: one 2-VCPU
/// VM (1), two (2), or a 4-VCPU and a 2-VCPU VM (3), each running the workload with its
/// matrix arguments, named `<workload>-<level>x`.
pub fn matrix(workload: &str, level: u32) -> anyhow::Result<Scenario> {
    let Some(args) = workloads::workload(workload).and_then(|w| w.matrix_args) else {
        let known: Vec<&str> =
            workloads::WORKLOADS.iter().filter(|w| w.matrix_args.is_some()).map(|w| w.name).collect();
        anyhow::bail!("--workloads: unknown workload `{workload}` (known: {})", known.join(", "));
    };
    let widths: &[(&str, u32)] = match level {
        1 => &[("a", 2)],
        2 => &[("a", 2), ("b", 2)],
        _ => &[("wide", 4), ("narrow", 2)],
    };
    let vms = widths
        .iter()
        .map(|&(name, vcpus)| VmPlan::new(name, vcpus, workload, args, "spin"))
        .collect::<anyhow::Result<_>>()?;
    let path = format!("{workload}-{level}x.toml");
    Scenario::build(&path, Target::Host, MATRIX_PCPUS, PolicyKind::Credit, MATRIX_TIMEOUT_S, vms, SimConfig::default())
}

/// The sweep's workload mixes, each's workloads dealt to its VMs in turn.
pub const MIXES: &[(&str, &[&str])] = &[
    ("independent", &["cpu"]),
    ("synchronizing", &["nbody"]),
    ("locks", &["locks"]),
    ("mixed", &["cpu", "nbody", "locks", "pipeline"]),
];

/// The sweep's VM widths, dealt in turn (at most the pCPU count).
const SWEEP_WIDTHS: &[u32] = &[2, 4, 8];

/// A sweep's grid: every combination of its axes, each under every policy that can run it.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepGrid {
    pub pcpus: Vec<u32>,
    /// VCPUs over pCPUs: VMs are added until the VCPUs reach it.
    pub overcommit: Vec<f64>,
    /// Names of [`MIXES`].
    pub mixes: Vec<String>,
    pub locks: Vec<String>,
    pub policies: Vec<PolicyKind>,
    /// Virtual seconds each point is simulated.
    pub duration_s: f64,
    pub seed: u64,
}

impl SweepGrid {
    /// Every point's scenario under every policy that can run it (strict co-scheduling
    /// cannot run a VM wider than the pCPUs), with the point.
    pub fn scenarios(&self) -> anyhow::Result<Vec<(SweepPoint, Scenario)>> {
        if !(self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            anyhow::bail!("--duration must be more than 0 and at most 3600 seconds");
        }
        if let Some(bad) = self.overcommit.iter().find(|o| !(**o > 0.0 && **o <= 64.0)) {
            anyhow::bail!("--overcommit {bad}: ratios are more than 0 and at most 64");
        }
        if let Some(bad) = self.pcpus.iter().find(|p| **p == 0 || **p as usize > MAX_SIM_PCPUS) {
            anyhow::bail!("--pcpus {bad}: 1 to {MAX_SIM_PCPUS} pCPUs");
        }
        let mut scenarios = Vec::new();
        for &pcpus in &self.pcpus {
            for &overcommit in &self.overcommit {
                for mix in &self.mixes {
                    for locks in &self.locks {
                        let point = SweepPoint {
                            pcpus,
                            overcommit,
                            mix: mix.clone(),
                            locks: locks.clone(),
                            duration_s: self.duration_s,
                            seed: self.seed,
                        };
                        let scenario = point.scenario()?;
                        for &policy in &self.policies {
                            if let Ok(scenario) = scenario.with_sim(Some(policy), None) {
                                scenarios.push((point.clone(), scenario));
                            }
                        }
                    }
                }
            }
        }
        Ok(scenarios)
    }
}

/// One point of the sweep's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub pcpus: u32,
    /// VCPUs over pCPUs: VMs are added until the VCPUs reach it.
    pub overcommit: f64,
    /// A name of [`MIXES`].
    pub mix: String,
    pub locks: String,
    /// Virtual seconds it is simulated.
    pub duration_s: f64,
    pub seed: u64,
}

/// A point of the grid simulated under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub pcpus: u32,
    pub overcommit: f64,
    pub mix: String,
    pub locks: String,
    pub policy: String,
    pub vms: usize,
    pub vcpus: u32,
    /// Mean over the VMs of result / ideal.
    pub mean_ratio: f64,
    /// The worst VM's result / ideal.
    pub min_ratio: f64,
    pub fairness: f64,
    pub utilization: f64,
    /// The simulator's events.
    pub events: u64,
    /// Wall time it took to simulate.
    pub wall_s: f64,
}

impl SweepResult {
    /// What `point`, simulated as `result` (of `events` events in `wall_s`), came to.
    pub fn of(point: &SweepPoint, result: &ScenarioResult, events: u64, wall_s: f64) -> SweepResult {
        let ratios: Vec<f64> = result.vms.iter().filter_map(|vm| vm.ratio).collect();
        SweepResult {
            pcpus: point.pcpus,
            overcommit: point.overcommit,
            mix: point.mix.clone(),
            locks: point.locks.clone(),
            policy: result.policy.clone(),
            vms: result.vms.len(),
            vcpus: result.vms.iter().map(|vm| vm.vcpus).sum(),
            mean_ratio: ratios.iter().sum::<f64>() / ratios.len().max(1) as f64,
            min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            fairness: result.fairness.unwrap_or(f64::NAN),
            utilization: result.utilization,
            events,
            wall_s,
        }
    }
}

impl SweepPoint {
    /// The point's scenario, to simulate: VMs of the mix's workloads with their endless
    /// arguments, under `credit` (to be set per policy with [`Scenario::with_sim`]).
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let Some(&(_, workloads)) = MIXES.iter().find(|(name, _)| *name == self.mix) else {
            let names: Vec<&str> = MIXES.iter().map(|(name, _)| *name).collect();
            anyhow::bail!("--mixes: unknown mix `{}` (known: {})", self.mix, names.join(", "));
        };
        let target = (f64::from(self.pcpus) * self.overcommit).round().max(1.0) as u32;
        let (mut vcpus, mut vms) = (0, Vec::new());
        while vcpus < target {
            let index = vms.len();
            let width = SWEEP_WIDTHS[index % SWEEP_WIDTHS.len()].min(self.pcpus).min(target - vcpus).max(1);
            let workload = workloads[index % workloads.len()];
            let args = workloads::workload(workload).map_or(&[][..], |w| w.endless_args);
            vms.push(VmPlan::new(&format!("{workload}{index}"), width, workload, args, &self.locks)?);
            vcpus += width;
        }
        let path = format!("{}-{}-{}pcpus-{}x.toml", self.mix, self.locks, self.pcpus, self.overcommit);
        let sim =
            SimConfig { duration: Some((self.duration_s * 1e9) as sched::Ns), seed: self.seed, ..SimConfig::default() };
        let timeout_s = crate::scenario::DEFAULT_TIMEOUT_S;
        Scenario::build(&path, Target::Sim, self.pcpus as usize, PolicyKind::Credit, timeout_s, vms, sim)
    }
}

/// A scenario's short name: its file's stem.
pub fn name(scenario: &Scenario) -> String {
    let path = &scenario.path;
    path.file_stem().map_or_else(|| path.display().to_string(), |stem| stem.to_string_lossy().into_owned())
}

/// A VM of a scenario under a policy, over repeated runs: one bar of a comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub scenario: String,
    pub vm: String,
    pub policy: String,
    /// Ratio to ideal in each run (0 for a run stopped at the timeout).
    pub ratios: Vec<f64>,
    /// Runs stopped at the timeout.
    pub timeouts: usize,
    /// NaN (`null` in JSON) if the policy cannot run the scenario.
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    /// A served workload: its clients' p99 latency in each run that answered them all, in
    /// microseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p99_us: Vec<f64>,
}

impl Cell {
    /// The median of [`p99_us`](Self::p99_us), if it has any.
    pub fn median_p99_us(&self) -> Option<f64> {
        (!self.p99_us.is_empty()).then(|| Summary::of(self.p99_us.clone()).median)
    }
}

/// Reads `null` (JSON has no NaN) as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(value: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(value)?.unwrap_or(f64::NAN))
}

/// Each scenario VM's ratios under each policy, with their median.
pub fn cells(scenarios: &[Scenario], policies: &[PolicyKind], results: &[ScenarioResult]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for scenario in scenarios {
        let path = scenario.path.display().to_string();
        for vm in &scenario.vms {
            for policy in policies {
                let runs: Vec<&VmResult> = results
                    .iter()
                    .filter(|r| r.scenario == path && r.policy == policy.name())
                    .flat_map(|r| r.vms.iter().filter(|v| v.name == vm.name))
                    .collect();
                // A run stopped at its timeout reports nothing: counted as 0 (a matrix run takes
                // well under a second at its ideal, and is stopped after 20 s).
                let ratios: Vec<f64> =
                    runs.iter().filter_map(|v| if v.timed_out { Some(0.0) } else { v.ratio }).collect();
                let timeouts = runs.iter().filter(|v| v.timed_out).count();
                let median = if ratios.is_empty() { f64::NAN } else { Summary::of(ratios.clone()).median };
                let p99_us = runs
                    .iter()
                    .filter_map(|v| v.record.as_ref()?.latency)
                    .map(|latency| latency.p99_ns as f64 / 1e3)
                    .collect();
                cells.push(Cell {
                    scenario: name(scenario),
                    vm: vm.name.clone(),
                    policy: policy.name().to_owned(),
                    ratios,
                    timeouts,
                    median,
                    p99_us,
                });
            }
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_matrix_scenario_is_the_one_its_file_would_say() {
        let built = matrix("nbody", 3).unwrap();
        let text = "pcpus = 2\ntimeout_s = 20\n[policy]\nname = \"credit\"\n\
                    [[vm]]\nname = \"wide\"\nvcpus = 4\nworkload = \"nbody\"\nargs = { steps = 300, barrier = \"spin\" }\n\
                    [[vm]]\nname = \"narrow\"\nvcpus = 2\nworkload = \"nbody\"\nargs = { steps = 300, barrier = \"spin\" }\n";
        let parsed = Scenario::parse(Path::new("nbody-3x.toml"), text).unwrap();
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
        assert_eq!(built.vms[0].args, ["barrier=spin", "steps=300", "locks=spin"]);
    }

    #[test]
    fn the_matrix_knows_only_workloads_that_have_matrix_arguments() {
        let error = matrix("phases", 2).unwrap_err().to_string();
        assert_eq!(error, "--workloads: unknown workload `phases` (known: cpu, nbody, locks, pipeline, kv)");
        assert_eq!(matrix("locks", 2).unwrap().vms.len(), 2);
    }

    #[test]
    fn a_sweep_point_adds_vms_until_its_vcpus_reach_the_overcommit() {
        for (pcpus, overcommit) in [(2, 1.0), (8, 3.0), (32, 2.5), (64, 4.0)] {
            let point =
                SweepPoint { pcpus, overcommit, mix: "mixed".into(), locks: "pv".into(), duration_s: 1.5, seed: 7 };
            let scenario = point.scenario().unwrap();
            let vcpus: u32 = scenario.vms.iter().map(|vm| vm.vcpus).sum();
            assert_eq!(f64::from(vcpus), (f64::from(pcpus) * overcommit).round());
            assert!(scenario.vms.iter().all(|vm| vm.vcpus <= pcpus && vm.locks == "pv"));
            assert_eq!(scenario.cores.len(), pcpus as usize);
            assert_eq!((scenario.sim.duration, scenario.sim.seed), (Some(1_500_000_000), 7));
        }
        let unknown = SweepPoint {
            pcpus: 2,
            overcommit: 1.0,
            mix: "nosuch".into(),
            locks: "spin".into(),
            duration_s: 1.0,
            seed: 1,
        };
        assert!(unknown.scenario().unwrap_err().to_string().starts_with("--mixes: unknown mix `nosuch`"));
    }

    #[test]
    fn every_workload_runs_endlessly_in_a_sweep_and_its_matrix_arguments_are_valid() {
        for workload in workloads::WORKLOADS {
            VmPlan::new("a", 2, workload.name, workload.endless_args, "spin").unwrap();
            if let Some(args) = workload.matrix_args {
                VmPlan::new("a", 2, workload.name, args, "pv").unwrap();
            }
        }
    }
}
