//! `tandem compare`: the same scenarios under each policy (and spinlock family), side by side
//! in one run, each VM's result as a fraction of its ideal (median over repeated, interleaved
//! runs), as a table and an SVG bar chart.
//!
//! Without scenario files it compares the co-design matrix: each workload at 1x, 2x and 3x
//! overcommit of 2 pCPUs (one 2-VCPU VM; two; a 4-VCPU and a 2-VCPU VM), under every lock
//! family (ticket and queued, spinning and paravirtual) and every policy.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use sched::PolicyKind;

use tandem_core::experiment::{self, Cell, cells, name};
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::Scenario;
use tandem_kvm::outcome::signal_name;
use tandem_kvm::{image, open_kvm, runner, stop};

use crate::report;

/// Which scenarios to run, under which policies, how many times: shared by `compare` and
/// `validate`.
#[derive(Debug, Args)]
pub struct Selection {
    /// Scenario files to compare (default: the co-design matrix of --workloads, --overcommit
    /// and --locks)
    pub scenarios: Vec<PathBuf>,
    /// Workloads of the matrix
    #[arg(long, value_delimiter = ',', default_values = ["locks", "nbody", "cpu", "pipeline", "kv"])]
    pub workloads: Vec<String>,
    /// Overcommit levels of the matrix: 1 (a 2-VCPU VM on 2 pCPUs), 2 (two), 3 (a 4-VCPU and
    /// a 2-VCPU VM)
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3], value_parser = clap::value_parser!(u32).range(1..=3))]
    pub overcommit: Vec<u32>,
    /// Spinlock families to compare, each scenario under each (default: all four for the
    /// matrix; each file's own)
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(workloads::LOCK_FAMILIES))]
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
    /// Write a heat map of the median ratios to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write every run's full results to FILE (JSON)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Take the results from FILE (written by an earlier `compare --json`) instead of running
    /// the VMs: the table and the heat map again
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    pub from: Option<PathBuf>,
}

impl CompareArgs {
    /// The main job, `tandem` without arguments: the lock-heavy and the barrier-synchronized
    /// workload at 2x overcommit, every lock family and policy, once (about 90 s).
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
            from: None,
        }
    }
}

pub fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let selection = &args.selection;
    let mut scenarios = load(selection)?;
    if let Some(path) = &args.from {
        let cells = load_cells(path)?;
        scenarios.retain(|scenario| cells.iter().any(|cell| cell.scenario == name(scenario)));
        anyhow::ensure!(!scenarios.is_empty(), "{} has no result for these scenarios", path.display());
        print!("{}", report::compare::table(&scenarios, &selection.policies, &cells));
        if let Some(svg) = &args.svg {
            report::compare::chart(svg, &selection.policies, &cells)?;
        }
        return Ok(());
    }
    let results = measure(selection, &scenarios)?;
    let cells = cells(&scenarios, &selection.policies, &results);
    print!("{}", report::compare::table(&scenarios, &selection.policies, &cells));
    print!("{}", report::compare::dispatcher(&results));
    if let Some(path) = &args.svg {
        report::compare::chart(path, &selection.policies, &cells)?;
    }
    if let Some(path) = &args.json {
        let mut json = serde_json::json!({ "cells": cells, "runs": results });
        if let Some(signal) = stop::interrupted() {
            json["interrupted_by"] = signal_name(signal).into();
        }
        report::write_json(path, &json)?;
    }
    Ok(())
}

/// Runs every scenario under every policy of `selection`, `runs` times over, interleaved,
/// with a progress bar and its estimate of the time left on stderr (hidden when stderr is
/// not a terminal, where each run's line says how far it got); if SIGINT or SIGTERM
/// interrupts it, the runs that had finished.
pub fn measure(args: &Selection, scenarios: &[Scenario]) -> anyhow::Result<Vec<ScenarioResult>> {
    let variants = variants(args, scenarios)?;
    let kvm = open_kvm()?;
    let image = image::DEFAULT_GUEST;
    let bar = report::progress(args.runs * variants.len(), "runs");
    let mut results: Vec<ScenarioResult> = Vec::new();
    for run in 0..args.runs {
        for scenario in &variants {
            if stop::interrupted().is_some() {
                break;
            }
            let what = format!("{} under {}", name(scenario), scenario.policy);
            bar.suspend(|| eprintln!("run {}/{}: {what}", run + 1, args.runs));
            bar.set_message(what);
            // Each run gets its own references, measured just before it: the speed of these
            // shared machines drifts by tens of percent within a minute, and a ratio is only
            // as good as the reference taken next to it.
            let mut references = References::default();
            let measured = runner::measure_references(&kvm, image, scenario, &mut references, false)
                .and_then(|()| runner::run_scenario(&kvm, image, scenario, Some(&references)));
            if stop::interrupted().is_some() {
                // This run was cut short: only those before it count.
                break;
            }
            let result = measured?;
            if let Err(failed) = check(scenario, &result) {
                bar.abandon();
                return Err(failed);
            }
            results.push(result);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(results)
}

/// An error naming the first VM that failed in `result`, a run of `scenario` (one stopped at
/// the timeout counts as 0, not as a failure).
pub fn check(scenario: &Scenario, result: &ScenarioResult) -> anyhow::Result<()> {
    match result.vms.iter().find(|vm| !vm.ok && !vm.timed_out) {
        Some(failed) => bail!("{} under {}: {}", name(scenario), scenario.policy, failed.outcome),
        None => Ok(()),
    }
}

/// Every scenario under every policy of `args` that can run it (a VM wider than the pCPUs
/// cannot under strict co-scheduling, say: skipped, with a line on stderr).
pub fn variants(args: &Selection, scenarios: &[Scenario]) -> anyhow::Result<Vec<Scenario>> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut variants = Vec::new();
    for scenario in scenarios {
        for &policy in &args.policies {
            match scenario.with(Some(policy), None) {
                Ok(variant) => variants.push(variant),
                Err(error) => eprintln!("skipped: {error:#}"),
            }
        }
    }
    Ok(variants)
}

/// The cells of an earlier `compare --json`.
pub fn load_cells(path: &PathBuf) -> anyhow::Result<Vec<Cell>> {
    #[derive(serde::Deserialize)]
    struct File {
        cells: Vec<Cell>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON of `tandem compare --json`", path.display()))?;
    Ok(file.cells)
}

/// The files' scenarios, or the matrix's; each under every family of `--locks`.
pub fn load(args: &Selection) -> anyhow::Result<Vec<Scenario>> {
    let (scenarios, locks) = if args.scenarios.is_empty() {
        let families = if args.locks.is_empty() {
            workloads::LOCK_FAMILIES.iter().map(|&f| f.to_owned()).collect()
        } else {
            args.locks.clone()
        };
        let mut scenarios = Vec::new();
        for workload in &args.workloads {
            for &level in &args.overcommit {
                scenarios.push(experiment::matrix(workload, level)?);
            }
        }
        (scenarios, families)
    } else {
        let scenarios = args.scenarios.iter().map(|path| Scenario::load(path)).collect::<Result<_, _>>()?;
        (scenarios, args.locks.clone())
    };
    if locks.is_empty() {
        return Ok(scenarios);
    }
    Ok(scenarios.iter().flat_map(|scenario| locks.iter().map(|family| scenario.with_locks(family))).collect())
}
