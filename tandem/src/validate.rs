//! `tandem validate`: the same scenarios run on KVM and in the simulator, each VM's result
//! (as a fraction of its ideal) side by side with the relative error.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use sched::PolicyKind;
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;
use tandem_core::stats::{self, Summary};

use tandem_core::experiment::{Cell, cells};

use crate::compare::{self, Selection};
use crate::report;

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
    /// Write the comparison to FILE as Markdown: a summary, then a table of scenario and VM
    /// by policy, each entry real / simulated
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
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
        None => cells(&scenarios, &selection.policies, &compare::measure(selection, &scenarios)?),
    };
    let simulated = cells(&scenarios, &selection.policies, &simulate(selection, &scenarios, args.seeds)?);
    let mut rows = Vec::new();
    // A scenario a policy cannot run (VMs wider than the pCPUs under strict co-scheduling)
    // has no result either way.
    for sim in simulated.into_iter().filter(|cell| !cell.median.is_nan()) {
        let Some(real) =
            real.iter().find(|r| r.scenario == sim.scenario && r.vm == sim.vm && r.policy == sim.policy).cloned()
        else {
            bail!("no real result for VM {} of {} under {}", sim.vm, sim.scenario, sim.policy);
        };
        let error = relative_error(sim.median, real.median);
        let agrees = agree(sim.median, real.median, args.tolerance);
        let lowest = real.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = real.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let within_runs = (lowest..=highest).contains(&sim.median);
        rows.push(Row { real, sim, error, agrees, within_runs });
    }
    print_table(&rows, args.tolerance);
    if let Some(path) = &args.json {
        report::write_json(path, &serde_json::json!({ "rows": rows }))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown(&rows, &selection.policies))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// |result - reference| / reference, if the reference is not 0.
fn relative_error(result: f64, reference: f64) -> Option<f64> {
    (reference > 0.0).then(|| (result - reference).abs() / reference)
}

/// Whether `result` is within `tolerance` of `reference`, or both have collapsed.
fn agree(result: f64, reference: f64, tolerance: f64) -> bool {
    let collapsed = result < COLLAPSED && reference < COLLAPSED;
    collapsed || relative_error(result, reference).is_some_and(|e| e <= tolerance)
}

/// How well the real runs repeat: of the runs of cells with at least three, how many agree
/// with the median of their cell's other runs (the bar a simulated result is held to).
fn repeatability(rows: &[Row], tolerance: f64) -> (usize, usize) {
    let mut runs = (0, 0);
    for ratios in rows.iter().map(|row| &row.real.ratios).filter(|ratios| ratios.len() >= 3) {
        for (i, &run) in ratios.iter().enumerate() {
            let others: Vec<f64> = ratios.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &r)| r).collect();
            let median = stats::median(&others).expect("a cell of three runs or more");
            runs.0 += usize::from(agree(run, median, tolerance));
            runs.1 += 1;
        }
    }
    runs
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

/// How a comparison came out as a whole.
struct Totals {
    agree: usize,
    /// Disagreeing, but within the real runs' range.
    spread: usize,
    median_error: f64,
    largest_error: f64,
}

impl Totals {
    fn of(rows: &[Row]) -> Totals {
        let errors: Vec<f64> = rows.iter().filter_map(|row| row.error).collect();
        Totals {
            agree: rows.iter().filter(|row| row.agrees).count(),
            spread: rows.iter().filter(|row| !row.agrees && row.within_runs).count(),
            largest_error: errors.iter().copied().fold(0.0, f64::max),
            median_error: if errors.is_empty() { 0.0 } else { Summary::of(errors).median },
        }
    }
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
    let Totals { agree, spread, median_error, largest_error } = Totals::of(rows);
    let collapsed = rows.iter().filter(|row| row.real.median < COLLAPSED && row.sim.median < COLLAPSED).count();
    println!(
        "{agree} of {} within {:.0}% ({collapsed} of them collapsed below {COLLAPSED} in both), {spread} more within the \
         range of their real runs; median error {:.1}%, largest {:.1}%",
        rows.len(),
        tolerance * 100.0,
        median_error * 100.0,
        largest_error * 100.0
    );
    let (repeated, runs) = repeatability(rows, tolerance);
    if runs > 0 {
        println!(
            "the real runs themselves: {repeated} of {runs} ({:.0}%) within {:.0}% of the median of their cell's other \
             runs, against {:.0}% of the simulated results within {:.0}% of the real median",
            100.0 * repeated as f64 / runs as f64,
            tolerance * 100.0,
            100.0 * agree as f64 / rows.len().max(1) as f64,
            tolerance * 100.0
        );
    }
}

/// The comparison as Markdown: how many agree, overall, by workload (a scenario's name up to
/// its first `-`) and by policy; then a row per scenario and VM, a column per policy, each
/// entry real / simulated, **x** where they disagree, t/o after a real median with runs
/// stopped at their timeout, - where the policy cannot run the scenario.
fn markdown(rows: &[Row], policies: &[PolicyKind]) -> String {
    let Totals { agree, spread, median_error, .. } = Totals::of(rows);
    let tally = |key: &dyn Fn(&Row) -> String| {
        let mut groups: Vec<(String, usize, usize)> = Vec::new();
        for row in rows {
            let name = key(row);
            let at = groups.iter().position(|(group, ..)| *group == name).unwrap_or_else(|| {
                groups.push((name, 0, 0));
                groups.len() - 1
            });
            groups[at].1 += usize::from(row.agrees);
            groups[at].2 += 1;
        }
        // Best agreement first (ties: first seen first).
        groups.sort_by(|a, b| (b.1 * a.2).cmp(&(a.1 * b.2)));
        groups.iter().map(|(name, agree, all)| format!("{name} {agree} of {all}")).collect::<Vec<_>>().join(", ")
    };
    let workload = |row: &Row| row.real.scenario.split('-').next().unwrap_or_default().to_owned();
    let policy = |row: &Row| format!("`{}`", row.real.policy);
    let mut text = format!(
        "{agree} of {} agree, median error {:.1}%. {spread} of the {} others lie within the range of their real \
         runs. By workload: {}. By policy: {}.\n\n",
        rows.len(),
        median_error * 100.0,
        rows.len() - agree,
        tally(&workload),
        tally(&policy)
    );
    let short = |policy: &PolicyKind| policy.name().trim_start_matches("cosched-").to_owned();
    let header: Vec<String> = policies.iter().map(short).collect();
    text += &format!("| scenario | VM | {} |\n|---|---|{}\n", header.join(" | "), "---|".repeat(policies.len()));
    let mut vms: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        let vm = (row.real.scenario.as_str(), row.real.vm.as_str());
        if !vms.contains(&vm) {
            vms.push(vm);
        }
    }
    for (scenario, vm) in vms {
        let entries: Vec<String> = policies
            .iter()
            .map(|policy| {
                let found = rows
                    .iter()
                    .find(|row| row.real.scenario == scenario && row.real.vm == vm && row.real.policy == policy.name());
                let Some(row) = found else { return "-".to_owned() };
                let timeouts = if row.real.timeouts > 0 { " t/o" } else { "" };
                let mark = if row.agrees { "" } else { " **x**" };
                format!("{:.2}{timeouts} / {:.2}{mark}", row.real.median, row.sim.median)
            })
            .collect();
        text += &format!("| {scenario} | {vm} | {} |\n", entries.join(" | "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratios: &[f64]) -> Row {
        let cell = Cell {
            scenario: "s".to_owned(),
            vm: "a".to_owned(),
            policy: "credit".to_owned(),
            ratios: ratios.to_vec(),
            timeouts: 0,
            median: 0.0,
        };
        Row { real: cell.clone(), sim: cell, error: None, agrees: false, within_runs: false }
    }

    #[test]
    fn agreement_is_relative_except_between_collapsed_results() {
        assert!(agree(0.86, 1.0, 0.15) && agree(1.15, 1.0, 0.15));
        assert!(!agree(0.84, 1.0, 0.15) && !agree(1.16, 1.0, 0.15));
        assert!(agree(0.001, 0.04, 0.15), "both collapsed");
        assert!(!agree(0.2, 0.0, 0.15), "no relative error against 0");
    }

    #[test]
    fn repeatability_counts_runs_agreeing_with_the_median_of_their_cells_other_runs() {
        // Each 1.0 is 9% off the others' median 1.1, and 1.1 10% off 1.0; 1.8 is 80% off 1.0.
        // A cell of two runs has no median of others to speak of.
        let rows = [row(&[1.0, 1.0, 1.1, 1.8]), row(&[0.5, 0.5, 0.5]), row(&[1.0, 2.0])];
        assert_eq!(repeatability(&rows, 0.15), (6, 7));
        // Of two others, the median is their mean: 1.0 is 31% off (1.1 + 1.8) / 2.
        assert_eq!(repeatability(&[row(&[1.0, 1.1, 1.8])], 0.15), (0, 3));
    }

    #[test]
    fn the_markdown_tallies_agreement_and_lays_policies_out_as_columns() {
        let cell = |scenario: &str, vm: &str, policy: PolicyKind, median: f64, timeouts: usize| Cell {
            scenario: scenario.to_owned(),
            vm: vm.to_owned(),
            policy: policy.name().to_owned(),
            ratios: vec![median],
            timeouts,
            median,
        };
        let pair = |scenario, vm, policy, real, sim, timeouts| Row {
            real: cell(scenario, vm, policy, real, timeouts),
            sim: cell(scenario, vm, policy, sim, 0),
            error: relative_error(sim, real),
            agrees: agree(sim, real, 0.15),
            within_runs: false,
        };
        let rows = [
            pair("locks-2x-pv", "a", PolicyKind::Credit, 1.0, 0.9, 0),
            pair("locks-2x-pv", "a", PolicyKind::CoschedRelaxed, 0.5, 1.0, 1),
            pair("nbody-3x-spin", "wide", PolicyKind::Credit, 0.8, 0.8, 0),
        ];
        let text = markdown(&rows, &[PolicyKind::Credit, PolicyKind::CoschedStrict, PolicyKind::CoschedRelaxed]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2 of 3 agree, median error 10.0%. 0 of the 1 others lie within the range of their real runs. By \
             workload: nbody 1 of 1, locks 1 of 2. By policy: `credit` 2 of 2, `cosched-relaxed` 0 of 1."
        );
        assert_eq!(lines[2], "| scenario | VM | credit | strict | relaxed |");
        assert_eq!(lines[4], "| locks-2x-pv | a | 1.00 / 0.90 | - | 0.50 t/o / 1.00 **x** |");
        assert_eq!(lines[5], "| nbody-3x-spin | wide | 0.80 / 0.80 | - | - |");
    }
}
