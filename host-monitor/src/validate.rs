//! `tandem validate`: the same scenarios run on KVM and in the simulator, each VM's result
//! (as a fraction of its ideal) side by side with the relative error.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::compare::{self, Cell, Selection};
use crate::report;
use crate::runner::ScenarioResult;
use crate::scenario::Scenario;
use crate::sim;

/// Below this a result has collapsed (a VM stuck in a convoy): two collapsed results agree
/// whatever their ratio.
const COLLAPSED: f64 = 0.05;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Simulated runs per scenario and policy (seeds 1 to N); the table shows their median
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub seeds: u64,
    /// Take the real results from FILE (written by an earlier `validate --json`) instead of
    /// running the VMs
    #[arg(long, value_name = "FILE")]
    pub real: Option<PathBuf>,
    /// Largest relative error counted as agreement
    #[arg(long, default_value_t = 0.15)]
    pub tolerance: f64,
    /// Write the real and simulated results side by side to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One VM of one scenario under one policy, measured and simulated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    real: Cell,
    sim: Cell,
    /// |simulated - real| / real, if the real result is not 0.
    error: Option<f64>,
    agrees: bool,
    /// Whether the simulated result lies within the real runs' own range.
    #[serde(default)]
    within_runs: bool,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<()> {
    let selection = &args.selection;
    let scenarios = compare::load(selection)?;
    let real = match &args.real {
        Some(path) => load_real(path)?,
        None => compare::cells(&scenarios, &selection.policies, &compare::measure(selection, &scenarios)?),
    };
    let simulated = compare::cells(&scenarios, &selection.policies, &simulate(selection, &scenarios, args.seeds)?);
    let mut rows = Vec::new();
    // A scenario a policy cannot run (VMs wider than the pCPUs under strict co-scheduling)
    // has no result either way.
    for sim in simulated.into_iter().filter(|cell| !cell.median.is_nan()) {
        let Some(real) =
            real.iter().find(|r| r.scenario == sim.scenario && r.vm == sim.vm && r.policy == sim.policy).cloned()
        else {
            bail!("no real result for VM {} of {} under {}", sim.vm, sim.scenario, sim.policy);
        };
        let error = (real.median > 0.0).then(|| (sim.median - real.median).abs() / real.median);
        let collapsed = real.median < COLLAPSED && sim.median < COLLAPSED;
        let agrees = collapsed || error.is_some_and(|e| e <= args.tolerance);
        let lowest = real.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = real.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let within_runs = (lowest..=highest).contains(&sim.median);
        rows.push(Row { real, sim, error, agrees, within_runs });
    }
    print_table(&rows, args.tolerance);
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::json!({ "rows": rows }))?;
    }
    Ok(())
}

/// The real cells of an earlier `validate --json`.
fn load_real(path: &PathBuf) -> anyhow::Result<Vec<Cell>> {
    #[derive(Deserialize)]
    struct File {
        rows: Vec<Row>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON of `tandem validate --json`", path.display()))?;
    Ok(file.rows.into_iter().map(|row| row.real).collect())
}

/// Simulates every scenario under every policy with seeds 1 to `seeds`.
fn simulate(selection: &Selection, scenarios: &[Scenario], seeds: u64) -> anyhow::Result<Vec<ScenarioResult>> {
    let mut results = Vec::new();
    let mut references = sim::References::default();
    for scenario in scenarios {
        for &policy in &selection.policies {
            let Ok(mut scenario) = scenario.with_sim(Some(policy), None) else { continue };
            for seed in 1..=seeds {
                scenario.sim.seed = seed;
                results.push(sim::simulate(&scenario, &mut references, false)?.result);
            }
        }
    }
    Ok(results)
}

fn print_table(rows: &[Row], tolerance: f64) {
    println!("each VM's result / ideal, real (median of runs) and simulated (median of seeds):");
    println!("{:<24} {:<7} {:<16} {:>14} {:>8} {:>8}", "scenario", "VM", "policy", "real", "sim", "error");
    for row in rows {
        let real = if row.real.timeouts > 0 {
            format!("{:.3} ({} t/o)", row.real.median, row.real.timeouts)
        } else {
            format!("{:.3}", row.real.median)
        };
        let error = row.error.map_or_else(|| "-".to_owned(), |e| format!("{:.1}%", e * 100.0));
        let mark = match (row.agrees, row.within_runs) {
            (true, _) => "",
            (false, true) => "  <- off, within the real runs' range",
            (false, false) => "  <- off",
        };
        println!(
            "{:<24} {:<7} {:<16} {:>14} {:>8.3} {:>8}{mark}",
            row.real.scenario, row.real.vm, row.real.policy, real, row.sim.median, error
        );
    }
    let agree = rows.iter().filter(|row| row.agrees).count();
    let spread = rows.iter().filter(|row| !row.agrees && row.within_runs).count();
    let collapsed = rows.iter().filter(|row| row.real.median < COLLAPSED && row.sim.median < COLLAPSED).count();
    let errors: Vec<f64> = rows.iter().filter_map(|row| row.error).collect();
    let median_error = if errors.is_empty() { 0.0 } else { crate::bench::Summary::of(errors.clone()).median };
    println!(
        "{agree} of {} within {:.0}% ({collapsed} of them collapsed below {COLLAPSED} in both), {spread} more within the \
         range of their real runs; median error {:.1}%, largest {:.1}%",
        rows.len(),
        tolerance * 100.0,
        median_error * 100.0,
        errors.iter().copied().fold(0.0, f64::max) * 100.0
    );
}
