//! `tandem compare`: the same scenarios under each policy, side by side in one run, each VM's
//! result as a fraction of its ideal (median over repeated, interleaved runs), as a table and
//! an SVG bar chart.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use plotters::prelude::*;
use sched::PolicyKind;
use serde::Serialize;

use crate::bench::Summary;
use crate::cli::open_kvm;
use crate::image;
use crate::report;
use crate::runner::{self, References, ScenarioResult};
use crate::scenario::Scenario;

/// The scenarios compared by default: the thesis's two cases at 1.5x to 3x overcommit.
const BUILTIN: &[(&str, &str)] = &[
    ("independent.toml", include_str!("../../scenarios/independent.toml")),
    ("synchronizing.toml", include_str!("../../scenarios/synchronizing.toml")),
    ("independent-3vm.toml", include_str!("../../scenarios/independent-3vm.toml")),
    ("synchronizing-3vm.toml", include_str!("../../scenarios/synchronizing-3vm.toml")),
    ("independent-wide.toml", include_str!("../../scenarios/independent-wide.toml")),
    ("synchronizing-wide.toml", include_str!("../../scenarios/synchronizing-wide.toml")),
];

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Scenario files to compare (default: the built-in set, as in scenarios/)
    pub scenarios: Vec<PathBuf>,
    /// Policies to compare
    #[arg(long, value_delimiter = ',', default_values_t = PolicyKind::ALL)]
    pub policies: Vec<PolicyKind>,
    /// Runs of each scenario under each policy (interleaved); the table shows medians
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Write a bar chart of the median ratios to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write every run's full results to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One bar of the comparison: a VM of a scenario under a policy.
#[derive(Debug, Clone, Serialize)]
struct Cell {
    scenario: String,
    vm: String,
    policy: String,
    /// Ratio to ideal in each run.
    ratios: Vec<f64>,
    median: f64,
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let scenarios = load(&args.scenarios)?;
    let kvm = open_kvm()?;
    let image = image::DEFAULT_GUEST;
    let mut results: Vec<ScenarioResult> = Vec::new();
    for run in 0..args.runs {
        for scenario in &scenarios {
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
                references.measure(&kvm, image, &scenario, false)?;
                let result = runner::run(&kvm, image, &scenario, Some(&references))?;
                if let Some(failed) = result.vms.iter().find(|vm| !vm.ok) {
                    bail!("{} under {policy}: {}", name(&scenario), failed.outcome);
                }
                results.push(result);
            }
        }
    }

    let cells = cells(&scenarios, &args.policies, &results);
    print_table(&scenarios, &args.policies, &cells);
    print_dispatcher(&results);
    if let Some(path) = &args.svg {
        chart(path, &args.policies, &cells)?;
    }
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::json!({ "cells": cells, "runs": results }))?;
    }
    Ok(())
}

fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Scenario>> {
    if paths.is_empty() {
        return BUILTIN.iter().map(|(file, text)| Scenario::parse(&PathBuf::from(file), text)).collect();
    }
    paths.iter().map(|path| Scenario::load(path)).collect()
}

fn name(scenario: &Scenario) -> String {
    let path = &scenario.path;
    path.file_stem().map_or_else(|| path.display().to_string(), |stem| stem.to_string_lossy().into_owned())
}

fn cells(scenarios: &[Scenario], policies: &[PolicyKind], results: &[ScenarioResult]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for scenario in scenarios {
        let path = scenario.path.display().to_string();
        for vm in &scenario.vms {
            for policy in policies {
                let ratios: Vec<f64> = results
                    .iter()
                    .filter(|r| r.scenario == path && r.policy == policy.name())
                    .flat_map(|r| r.vms.iter().filter(|v| v.name == vm.name).filter_map(|v| v.ratio))
                    .collect();
                let median = if ratios.is_empty() { f64::NAN } else { Summary::of(ratios.clone()).median };
                cells.push(Cell {
                    scenario: name(scenario),
                    vm: vm.name.clone(),
                    policy: policy.name().to_owned(),
                    ratios,
                    median,
                });
            }
        }
    }
    cells
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
                match cell.filter(|c| c.median.is_finite()) {
                    Some(cell) => print!(" {:>16.3}", cell.median),
                    None => print!(" {:>16}", "cannot run"),
                }
            }
            println!();
        }
    }
}

fn print_dispatcher(results: &[ScenarioResult]) {
    let violations: u64 = results.iter().map(|r| r.dispatch.gate_violations).sum();
    let gated: Vec<&ScenarioResult> = results.iter().filter(|r| r.policy != PolicyKind::Host.name()).collect();
    let median = |values: Vec<f64>| if values.is_empty() { 0.0 } else { Summary::of(values).median };
    println!(
        "dispatcher, median over gated runs: decision p50 {:.1} us p99 {:.1} us; preemption latency p50 {:.1} us \
         p99 {:.1} us; gate violations in all runs: {violations}",
        median(gated.iter().map(|r| r.dispatch.decision_ns.p50 as f64 / 1e3).collect()),
        median(gated.iter().map(|r| r.dispatch.decision_ns.p99 as f64 / 1e3).collect()),
        median(gated.iter().map(|r| r.dispatch.preemption_ns.p50 as f64 / 1e3).collect()),
        median(gated.iter().map(|r| r.dispatch.preemption_ns.p99 as f64 / 1e3).collect()),
    );
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
