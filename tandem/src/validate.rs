//! `tandem validate`: the same scenarios run on KVM and in the simulator, each VM's result
//! (as a fraction of its ideal) side by side with the relative error.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;

use tandem_core::experiment::{self, Cell, cells};
use tandem_core::validation::{self, Row};

use crate::compare::{self, Selection};
use crate::report;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Simulated runs per scenario and policy (seeds 1 to N); the table shows their median
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub seeds: u64,
    /// Take the real results from FILE (written by an earlier `validate --json` or `compare
    /// --json`) instead of running the VMs
    #[arg(long, value_name = "FILE")]
    pub real: Option<PathBuf>,
    /// Largest relative error counted as agreement
    #[arg(long, default_value_t = 0.15)]
    pub tolerance: f64,
    /// Write the real and simulated results side by side to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the comparison to FILE as Markdown: a summary, then a table of scenario and VM
    /// by policy, each entry real / simulated
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
}

pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let selection = &args.selection;
    let mut scenarios = compare::load(selection)?;
    let real = match &args.real {
        Some(path) => {
            let real = load_real(path)?;
            // The file's scenarios only: it may come from a matrix of fewer lock families.
            scenarios.retain(|scenario| real.iter().any(|cell| cell.scenario == experiment::name(scenario)));
            anyhow::ensure!(!scenarios.is_empty(), "{} has no result for these scenarios", path.display());
            real
        }
        None => cells(&scenarios, &selection.policies, &compare::measure(selection, &scenarios)?),
    };
    let simulated = cells(&scenarios, &selection.policies, &simulate(selection, &scenarios, args.seeds)?);
    let rows = validation::rows(&real, simulated, args.tolerance)?;
    print!("{}", report::validate::table(&rows, args.tolerance));
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::json!({ "rows": rows }))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::validate::markdown(&rows, &selection.policies))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The real cells of an earlier `validate --json` (its rows' real halves) or `compare --json`
/// (its cells).
fn load_real(path: &PathBuf) -> anyhow::Result<Vec<Cell>> {
    #[derive(Deserialize)]
    struct File {
        rows: Vec<Row>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str::<File>(&text) {
        Ok(file) => Ok(file.rows.into_iter().map(|row| row.real).collect()),
        Err(_) => compare::load_cells(path).map_err(|_| {
            anyhow::anyhow!(
                "{} is the JSON of neither `tandem validate --json` nor `tandem compare --json`",
                path.display()
            )
        }),
    }
}

/// Simulates every scenario under every policy with seeds 1 to `seeds`.
fn simulate(selection: &Selection, scenarios: &[Scenario], seeds: u64) -> anyhow::Result<Vec<ScenarioResult>> {
    let mut results = Vec::new();
    let mut references = References::default();
    for scenario in scenarios {
        for &policy in &selection.policies {
            let Ok(mut scenario) = scenario.with_sim(Some(policy), None) else { continue };
            for seed in 1..=seeds {
                scenario.sim.seed = seed;
                results.push(tandem_sim::simulate(&scenario, &mut references, false)?.result);
            }
        }
    }
    Ok(results)
}
