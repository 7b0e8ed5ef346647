//! Running a scenario on KVM: every VM in one monitor process, their VCPUs under one
//! dispatcher; and measuring the reference runs that give each VM its ideal (alone at 1x,
//! gated and pinned under `credit`, so undisturbed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_ioctls::Kvm;
use tandem_core::results::{References, ScenarioResult, ScenarioRun, VmRun};
use tandem_core::scenario::Scenario;
use workloads::Record;

use crate::dispatch::{Dispatcher, Seat};
use crate::image;
use crate::outcome::Outcome;
use crate::vm::{RunReport, Vm};

/// Measures (once) the reference rate of every VM of `scenario` into `references`; with
/// `verbose`, says so on stderr.
pub fn measure_references(
    kvm: &Kvm,
    image: &[u8],
    scenario: &Scenario,
    references: &mut References,
    verbose: bool,
) -> anyhow::Result<()> {
    references.measure(scenario, |vm, solo| {
        if verbose {
            let width = solo.cores.len();
            eprintln!("reference: {} with {width} VCPUs alone on {width} pCPUs under credit", vm.workload);
        }
        let result = run_scenario(kvm, image, solo, None)?;
        let vm_result = &result.vms[0];
        vm_result
            .rate()
            .filter(|_| vm_result.ok)
            .with_context(|| format!("the reference run of {} failed: {}", vm.workload, vm_result.outcome))
    })
}

/// Runs every VM of `scenario` to its end under the scenario's policy, each booting its own
/// kernel if it names one and `image` otherwise; with `references`, sets each VM's result
/// against its ideal.
pub fn run_scenario(
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
    let vms = scenario
        .vms
        .iter()
        .zip(reports)
        .map(|(plan, (report, _))| VmRun {
            outcome: report.outcome.describe(&plan.name),
            ok: report.outcome == Outcome::Exited(0),
            timed_out: matches!(report.outcome, Outcome::TimedOut(_)),
            elapsed_s: report.elapsed.as_secs_f64(),
            record: report.reports.iter().rev().find_map(|text| Record::from_json(text).ok()),
            vcpu_times: report.vcpus.iter().map(|vcpu| vcpu.times).collect(),
        })
        .collect();
    let run = ScenarioRun { vms, elapsed_ns: elapsed.as_nanos() as u64, simulated: false, dispatch };
    Ok(ScenarioResult::of(scenario, run, references))
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
        let own_kernel = plan.kernel.as_deref().map(image::read).transpose()?;
        let image = own_kernel.as_deref().unwrap_or(image);
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
