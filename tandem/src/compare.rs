//! `tandem compare`: the same scenarios under each policy (and spinlock family), side by side
//! in one run, each VM's result as a fraction of its ideal (median over repeated, interleaved
//! runs), as a table and an SVG bar chart.
//!
//! Without scenario files it compares the co-design matrix: each workload at 1x, 2x and 3x
//! overcommit of 2 pCPUs (one 2-VCPU VM; two; a 4-VCPU and a 2-VCPU VM), with spinning and
//! paravirtual locks, under every policy.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use plotters::prelude::*;
use sched::PolicyKind;

use tandem_core::experiment::{self, Cell, cells, name};
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;
use tandem_core::stats::Summary;
use tandem_kvm::{image, open_kvm, runner};

use crate::report;

/// Which scenarios to run, under which policies, how many times: shared by `compare` and
/// `validate`.
#[derive(Debug, Args)]
pub struct Selection {
    /// Scenario files to compare (default: the co-design matrix of --workloads, --overcommit
    /// and --locks)
    pub scenarios: Vec<PathBuf>,
    /// Workloads of the matrix
    #[arg(long, value_delimiter = ',', default_values = ["locks", "nbody", "cpu", "pipeline"])]
    pub workloads: Vec<String>,
    /// Overcommit levels of the matrix: 1 (a 2-VCPU VM on 2 pCPUs), 2 (two), 3 (a 4-VCPU and
    /// a 2-VCPU VM)
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3], value_parser = clap::value_parser!(u32).range(1..=3))]
    pub overcommit: Vec<u32>,
    /// Spinlock families to compare, each scenario under each (default: spin,pv for the
    /// matrix; each file's own)
    #[arg(long, value_delimiter = ',', value_parser = ["spin", "pv"])]
    pub locks: Vec<String>,
    /// Policies to compare
    #[arg(long, value_delimiter = ',', default_values_t = PolicyKind::ALL)]
    pub policies: Vec<PolicyKind>,
    /// Runs of each scenario under each policy (interleaved); the table shows medians
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Write a bar chart of the median ratios to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write every run's full results to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl CompareArgs {
    /// The main job, `tandem` without arguments: the lock-heavy and the barrier-synchronized
    /// workload at 2x overcommit, spin and PV locks, every policy, once (about a minute).
    pub fn quick() -> CompareArgs {
        CompareArgs {
            selection: Selection {
                scenarios: Vec::new(),
                workloads: vec!["locks".to_owned(), "nbody".to_owned()],
                overcommit: vec![2],
                locks: Vec::new(),
                policies: PolicyKind::ALL.to_vec(),
                runs: 1,
            },
            svg: None,
            json: None,
        }
    }
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let selection = &args.selection;
    let scenarios = load(selection)?;
    let results = measure(selection, &scenarios)?;
    let cells = cells(&scenarios, &selection.policies, &results);
    print_table(&scenarios, &selection.policies, &cells);
    print_dispatcher(&results);
    if let Some(path) = &args.svg {
        chart(path, &selection.policies, &cells)?;
    }
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::json!({ "cells": cells, "runs": results }))?;
    }
    Ok(())
}

/// Runs every scenario under every policy of `selection`, `runs` times over, interleaved.
pub fn measure(args: &Selection, scenarios: &[Scenario]) -> anyhow::Result<Vec<ScenarioResult>> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let kvm = open_kvm()?;
    let image = image::DEFAULT_GUEST;
    let mut results: Vec<ScenarioResult> = Vec::new();
    for run in 0..args.runs {
        for scenario in scenarios {
            for &policy in &args.policies {
                let scenario = match scenario.with(Some(policy), None) {
                    Ok(scenario) => scenario,
                    Err(error) => {
                        // E.g. a VM wider than the pCPUs under strict co-scheduling.
                        if run == 0 {
                            eprintln!("skipped: {error:#}");
                        }
                        continue;
                    }
                };
                eprintln!("run {}/{}: {} under {policy}", run + 1, args.runs, name(&scenario));
                // Each run gets its own references, measured just before it: the speed of these
                // shared machines drifts by tens of percent within a minute, and a ratio is only
                // as good as the reference taken next to it.
                let mut references = References::default();
                runner::measure_references(&kvm, image, &scenario, &mut references, false)?;
                let result = runner::run_scenario(&kvm, image, &scenario, Some(&references))?;
                if let Some(failed) = result.vms.iter().find(|vm| !vm.ok && !vm.timed_out) {
                    bail!("{} under {policy}: {}", name(&scenario), failed.outcome);
                }
                results.push(result);
            }
        }
    }
    Ok(results)
}

/// The files' scenarios, or the matrix's; each under every family of `--locks`.
pub fn load(args: &Selection) -> anyhow::Result<Vec<Scenario>> {
    let (scenarios, locks) = if args.scenarios.is_empty() {
        let families =
            if args.locks.is_empty() { vec!["spin".to_owned(), "pv".to_owned()] } else { args.locks.clone() };
        let mut scenarios = Vec::new();
        for workload in &args.workloads {
            for &level in &args.overcommit {
                scenarios.push(experiment::matrix(workload, level)?);
            }
        }
        (scenarios, families)
    } else {
        let scenarios = args.scenarios.iter().map(|path| Scenario::load(path)).collect::<anyhow::Result<_>>()?;
        (scenarios, args.locks.clone())
    };
    if locks.is_empty() {
        return Ok(scenarios);
    }
    Ok(scenarios.iter().flat_map(|scenario| locks.iter().map(|family| scenario.with_locks(family))).collect())
}

fn print_table(scenarios: &[Scenario], policies: &[PolicyKind], cells: &[Cell]) {
    println!("each VM's result as a fraction of its ideal (its work at its fair share of the pCPUs), median of runs:");
    print!("{:<24} {:<6} {:>5}", "scenario", "VM", "VCPUs");
    for policy in policies {
        print!(" {:>16}", policy.name());
    }
    println!();
    for scenario in scenarios {
        for vm in &scenario.vms {
            print!("{:<24} {:<6} {:>5}", name(scenario), vm.name, vm.vcpus);
            for policy in policies {
                let cell =
                    cells.iter().find(|c| c.scenario == name(scenario) && c.vm == vm.name && c.policy == policy.name());
                match cell {
                    Some(cell) if cell.timeouts > 0 => {
                        print!(" {:>16}", format!("{:.3} ({} t/o)", cell.median, cell.timeouts))
                    }
                    Some(cell) if cell.median.is_finite() => print!(" {:>16.3}", cell.median),
                    _ => print!(" {:>16}", "cannot run"),
                }
            }
            println!();
        }
    }
}

fn print_dispatcher(results: &[ScenarioResult]) {
    let violations: u64 = results.iter().map(|r| r.dispatch.gate_violations).sum();
    let gated: Vec<&ScenarioResult> = results.iter().filter(|r| r.policy != PolicyKind::Host.name()).collect();
    let preempting: Vec<&&ScenarioResult> = gated.iter().filter(|r| r.dispatch.preemption_ns.count > 0).collect();
    let median = |values: Vec<f64>| if values.is_empty() { 0.0 } else { Summary::of(values).median };
    println!(
        "dispatcher, median over gated runs: decision p50 {:.1} us p99 {:.1} us; preemption latency (runs with \
         preemptions) p50 {:.1} us \
         p99 {:.1} us; gate violations in all runs: {violations}",
        median(gated.iter().map(|r| r.dispatch.decision_ns.p50 as f64 / 1e3).collect()),
        median(gated.iter().map(|r| r.dispatch.decision_ns.p99 as f64 / 1e3).collect()),
        median(preempting.iter().map(|r| r.dispatch.preemption_ns.p50 as f64 / 1e3).collect()),
        median(preempting.iter().map(|r| r.dispatch.preemption_ns.p99 as f64 / 1e3).collect()),
    );
    let reconfigured: Vec<&ScenarioResult> =
        results.iter().filter(|r| r.dispatch.reconfiguration_ns.count > 0).collect();
    if !reconfigured.is_empty() {
        println!(
            "grant changes followed: {} in {} runs; grant published to VCPUs up or down, median over runs: p50 {:.1} us \
             p99 {:.1} us",
            reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.count).sum::<usize>(),
            reconfigured.len(),
            median(reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.p50 as f64 / 1e3).collect()),
            median(reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.p99 as f64 / 1e3).collect()),
        );
    }
}

/// Grouped bars: one group per scenario VM, one bar per policy.
fn chart(path: &PathBuf, policies: &[PolicyKind], cells: &[Cell]) -> anyhow::Result<()> {
    let groups: Vec<String> = {
        let mut groups: Vec<String> = Vec::new();
        for cell in cells {
            let group = format!("{} {}", cell.scenario, cell.vm);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        groups
    };
    let top = cells.iter().map(|c| c.median).filter(|m| m.is_finite()).fold(1.0, f64::max) * 1.1;
    let width = 160 + 90 * groups.len() as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("result / ideal per VM (median of runs)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(90)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..groups.len() as f64 - 0.5, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len())
            .x_label_formatter(&|x| groups.get(x.round() as usize).cloned().unwrap_or_default())
            .x_label_style(("sans-serif", 11).into_font().transform(FontTransform::Rotate90))
            .y_desc("result / ideal")
            .draw()?;
        let bar = 0.8 / policies.len() as f64;
        for (k, policy) in policies.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let bars = groups.iter().enumerate().filter_map(|(g, group)| {
                let cell =
                    cells.iter().find(|c| format!("{} {}", c.scenario, c.vm) == *group && c.policy == policy.name())?;
                let x0 = g as f64 - 0.4 + k as f64 * bar;
                cell.median
                    .is_finite()
                    .then(|| Rectangle::new([(x0, 0.0), (x0 + bar * 0.9, cell.median)], color.filled()))
            });
            chart
                .draw_series(bars)?
                .label(policy.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}
