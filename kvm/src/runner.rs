//! Running a scenario on KVM: every VM in one monitor process, their VCPUs under one
//! dispatcher, a served workload's VM driven by a load generator; and measuring the
//! reference runs that give each VM its ideal (alone at 1x, gated and pinned under `credit`,
//! so undisturbed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_ioctls::Kvm;
use tandem_core::results::{References, ScenarioResult, ScenarioRun, VmRun};
use tandem_core::scenario::{Scenario, Served};
use workloads::Record;

use crate::dispatch::{Dispatcher, Seat};
use crate::image;
use crate::load::{self, LoadRun};
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
    scenario.check_resources(tandem_core::host::memory_bytes(), tandem_core::host::threads_left())?;
    let topology = scenario.topology();
    let dispatcher = Dispatcher::start(scenario.policy, &scenario.params, scenario.cores.clone(), &topology)
        .context("cannot start the dispatcher's timer thread")?;
    let reports = run_vms(kvm, image, scenario, &dispatcher);
    let dispatch = dispatcher.finish();
    let reports = reports?;

    let elapsed = reports.iter().map(|run| run.delay + run.report.elapsed).max().unwrap_or_default();
    let vms = scenario.vms.iter().zip(reports).map(|(plan, run)| vm_run(&plan.name, run)).collect();
    let run = ScenarioRun { vms, elapsed_ns: elapsed.as_nanos() as u64, simulated: false, dispatch };
    Ok(ScenarioResult::of(scenario, run, references))
}

/// What one VM of a scenario did: its run, its start delay, and its load if it serves.
struct PlanRun {
    report: RunReport,
    delay: Duration,
    load: Option<(Served, LoadRun)>,
}

/// A VM's result from its run: a served VM's record is the guest's with what its clients
/// measured, and it ends well only if its load was answered in full.
fn vm_run(name: &str, run: PlanRun) -> VmRun {
    let PlanRun { report, load, .. } = run;
    let guest_record = report.reports.iter().rev().find_map(|text| Record::from_json(text).ok());
    let mut outcome = report.outcome.describe(name);
    let (record, load_ok) = match load {
        None => (guest_record, true),
        Some((served, load)) => {
            if let Some(failure) = &load.failure {
                outcome = format!("{outcome}; its load: {failure}");
            }
            (load.record(&served.load, guest_record), load.failure.is_none())
        }
    };
    VmRun {
        outcome,
        ok: report.outcome == Outcome::Exited(0) && load_ok,
        timed_out: matches!(report.outcome, Outcome::TimedOut(_)),
        elapsed_s: report.elapsed.as_secs_f64(),
        record,
        vcpu_times: report.vcpus.iter().map(|vcpu| vcpu.times).collect(),
    }
}

/// Boots every VM, then runs each (after its start delay) on its own thread, a served VM
/// with its load generator on another; returns what each did.
fn run_vms(kvm: &Kvm, image: &[u8], scenario: &Scenario, dispatcher: &Arc<Dispatcher>) -> anyhow::Result<Vec<PlanRun>> {
    let topology = scenario.topology();
    let mut vms = Vec::new();
    for (index, plan) in scenario.vms.iter().enumerate() {
        let config = plan.vm_config(scenario.timeout_s)?;
        let own_kernel = plan.kernel.as_deref().map(image::read).transpose()?;
        let image = own_kernel.as_deref().unwrap_or(image);
        let seat = Seat { dispatcher: Arc::clone(dispatcher), vm: index, first_vcpu: topology.vcpu(index, 0).0 };
        let vm = Vm::new(kvm, &config, image, seat).with_context(|| format!("cannot create VM {}", plan.name))?;
        vms.push((vm, Duration::from_millis(plan.start_delay_ms), plan.served()?));
    }
    let started = Instant::now();
    let threads: Vec<_> = vms
        .into_iter()
        .map(|(vm, delay, served)| {
            std::thread::spawn(move || {
                let ended = Arc::new(AtomicBool::new(false));
                let load = served.map(|served| {
                    let addr = vm.forward_addrs()[0];
                    let ended = Arc::clone(&ended);
                    std::thread::spawn(move || {
                        let run = load::drive(addr, &served.load, &ended);
                        (served, run)
                    })
                });
                std::thread::sleep(delay.saturating_sub(started.elapsed()));
                let report = vm.run();
                ended.store(true, Ordering::Release);
                let load = load.map(|thread| thread.join().expect("a load generator panicked"));
                report.map(|report| PlanRun { report, delay, load })
            })
        })
        .collect();
    threads.into_iter().map(|thread| thread.join().expect("a VM thread panicked")).collect()
}
