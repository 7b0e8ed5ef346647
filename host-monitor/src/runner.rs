//! Running a scenario: every VM in one monitor process, their VCPUs under one dispatcher, and
//! each VM's result set against its ideal (its work at its fair share of the pCPUs).
//!
//! The ideal comes from a reference run of the same VM alone at 1x: `min(vcpus, pcpus)`
//! VCPUs on as many pCPUs under `credit` (gated and pinned, so undisturbed). A VM whose fair
//! share is `s` pCPUs should then do its work at `reference rate * s / min(vcpus, pcpus)`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_ioctls::Kvm;
use sched::VcpuId;
use serde::Serialize;
use workloads::Record;

use crate::accounting::VcpuTimes;
use crate::dispatch::{DispatchReport, Dispatcher};
use crate::scenario::{Scenario, VmPlan};
use crate::vm::{Outcome, RunReport, Seat, Vm};

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

/// Reference rates (ops per second at 1x) by VM configuration, measured once per process.
#[derive(Debug, Default)]
pub struct References {
    rates: HashMap<String, f64>,
}

impl References {
    /// Measures (once) the reference of every VM of `scenario` whose result is a rate.
    pub fn measure(&mut self, kvm: &Kvm, image: &[u8], scenario: &Scenario, verbose: bool) -> anyhow::Result<()> {
        for vm in &scenario.vms {
            let key = scenario.reference_key(vm);
            if self.rates.contains_key(&key) {
                continue;
            }
            let solo = scenario.reference_of(vm);
            if verbose {
                let width = solo.cores.len();
                eprintln!("reference: {} with {width} VCPUs alone on {width} pCPUs under credit", vm.workload);
            }
            let result = run(kvm, image, &solo, None)?;
            let vm_result = &result.vms[0];
            let rate = vm_result
                .rate()
                .filter(|_| vm_result.ok)
                .with_context(|| format!("the reference run of {} failed: {}", vm.workload, vm_result.outcome))?;
            self.rates.insert(key, rate);
        }
        Ok(())
    }

    fn rate(&self, scenario: &Scenario, vm: &VmPlan) -> Option<f64> {
        self.rates.get(&scenario.reference_key(vm)).copied()
    }
}

/// Runs every VM of `scenario` to its end under the scenario's policy; with `references`,
/// sets each VM's result against its ideal.
pub fn run(
    kvm: &Kvm,
    image: &[u8],
    scenario: &Scenario,
    references: Option<&References>,
) -> anyhow::Result<ScenarioResult> {
    let topology = scenario.topology();
    let policy = scenario.policy.build(&scenario.params, &topology);
    let dispatcher = Dispatcher::start(policy, scenario.cores.clone(), &topology)
        .context("cannot start the dispatcher's timer thread")?;
    let reports = run_vms(kvm, image, scenario, &dispatcher);
    let dispatch = dispatcher.finish();
    let reports = reports?;

    let elapsed = reports.iter().map(|(report, delay)| *delay + report.elapsed).max().unwrap_or_default();
    let shares = topology.fair_shares();
    let mut vms = Vec::new();
    for ((plan, (report, _)), share) in scenario.vms.iter().zip(&reports).zip(shares) {
        let record = report.reports.iter().rev().find_map(|text| Record::from_json(text).ok());
        let width = plan.vcpus.min(scenario.cores.len() as u32);
        let ideal_rate = references.and_then(|r| r.rate(scenario, plan)).map(|rate| rate * share / f64::from(width));
        let ratio = match (&record, ideal_rate) {
            (Some(record), Some(ideal)) => Some(record.rate() / ideal),
            _ => None,
        };
        vms.push(VmResult {
            name: plan.name.clone(),
            workload: plan.workload.clone(),
            locks: plan.locks.clone(),
            vcpus: plan.vcpus,
            weight: plan.weight,
            cap: plan.cap,
            outcome: report.outcome.describe(&plan.name),
            ok: report.outcome == Outcome::Exited(0),
            timed_out: matches!(report.outcome, Outcome::TimedOut(_)),
            elapsed_s: report.elapsed.as_secs_f64(),
            record,
            fair_share: share,
            ideal_rate,
            ratio,
            vcpu_times: report.vcpus.iter().map(|vcpu| vcpu.times).collect(),
        });
    }
    let run_ns: u64 = vms.iter().flat_map(|vm| &vm.vcpu_times).map(|times| times.run_ns).sum();
    let utilization = run_ns as f64 / (elapsed.as_nanos() as f64 * scenario.cores.len() as f64).max(1.0);
    let ratios: Vec<f64> = vms.iter().filter_map(|vm| vm.ratio).collect();
    let fairness = (ratios.len() == vms.len()).then(|| jain(&ratios));
    Ok(ScenarioResult {
        scenario: scenario.path.display().to_string(),
        policy: scenario.policy.name().to_owned(),
        simulated: false,
        cores: scenario.cores.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        utilization,
        fairness,
        vms,
        dispatch,
    })
}

/// Boots every VM, then runs each (after its start delay) on its own thread; returns each
/// VM's report with its start delay.
fn run_vms(
    kvm: &Kvm,
    image: &[u8],
    scenario: &Scenario,
    dispatcher: &Arc<Dispatcher>,
) -> anyhow::Result<Vec<(RunReport, Duration)>> {
    let topology = scenario.topology();
    let mut vms = Vec::new();
    for (index, plan) in scenario.vms.iter().enumerate() {
        let config = plan.vm_config(scenario.timeout_s)?;
        let seat = Seat { dispatcher: Arc::clone(dispatcher), vm: index, first_vcpu: topology.vcpu(index, 0).0 };
        let vm = Vm::new(kvm, &config, image, seat).with_context(|| format!("cannot create VM {}", plan.name))?;
        vms.push((vm, Duration::from_millis(plan.start_delay_ms)));
    }
    let started = Instant::now();
    let threads: Vec<_> = vms
        .into_iter()
        .map(|(vm, delay)| {
            std::thread::spawn(move || {
                std::thread::sleep(delay.saturating_sub(started.elapsed()));
                vm.run().map(|report| (report, delay))
            })
        })
        .collect();
    threads.into_iter().map(|thread| thread.join().expect("a VM thread panicked")).collect()
}

/// Jain's fairness index of `values`: 1 when all are equal, 1/n when one has everything.
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|x| x * x).sum();
    if squares == 0.0 { 1.0 } else { sum * sum / (values.len() as f64 * squares) }
}

/// Names a dispatcher VCPU id as `vm/vcpuN`.
pub fn vcpu_name(scenario: &Scenario, vcpu: VcpuId) -> String {
    let topology = scenario.topology();
    let vm = topology.vm_of(vcpu);
    format!("{}/vcpu{}", scenario.vms[vm].name, vcpu.0 - topology.vcpu(vm, 0).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_when_even_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[0.8, 0.8, 0.8]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!(jain(&[1.0, 0.5]) < 1.0);
    }
}
