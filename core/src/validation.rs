//! How far to trust the simulator: each VM's result as a fraction of its ideal, real (median
//! of runs) against simulated (median of seeds), row by row, with the agreement counted and
//! the real runs' own repeatability as the bar.

use serde::{Deserialize, Serialize};

use crate::experiment::Cell;
use crate::stats::{self, Summary};

/// Below this a result has collapsed (a VM stuck in a convoy): two collapsed results agree
/// whatever their ratio.
pub const COLLAPSED: f64 = 0.05;

/// One VM of one scenario under one policy, measured and simulated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub real: Cell,
    pub sim: Cell,
    /// |simulated - real| / real, if the real result is not 0.
    pub error: Option<f64>,
    pub agrees: bool,
    /// Whether the simulated result lies within the real runs' own range.
    #[serde(default)]
    pub within_runs: bool,
}

/// Rows of every simulated cell that has a result, each against the real cell of the same
/// scenario, VM and policy (an error if there is none).
pub fn rows(real: &[Cell], simulated: Vec<Cell>, tolerance: f64) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    // A scenario a policy cannot run (VMs wider than the pCPUs under strict co-scheduling)
    // has no result either way.
    for sim in simulated.into_iter().filter(|cell| !cell.median.is_nan()) {
        let Some(real) =
            real.iter().find(|r| r.scenario == sim.scenario && r.vm == sim.vm && r.policy == sim.policy).cloned()
        else {
            anyhow::bail!("no real result for VM {} of {} under {}", sim.vm, sim.scenario, sim.policy);
        };
        let error = relative_error(sim.median, real.median);
        let agrees = agree(sim.median, real.median, tolerance);
        let lowest = real.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = real.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let within_runs = (lowest..=highest).contains(&sim.median);
        rows.push(Row { real, sim, error, agrees, within_runs });
    }
    Ok(rows)
}

/// |result - reference| / reference, if the reference is not 0.
pub fn relative_error(result: f64, reference: f64) -> Option<f64> {
    (reference > 0.0).then(|| (result - reference).abs() / reference)
}

/// Whether `result` is within `tolerance` of `reference`, or both have collapsed.
pub fn agree(result: f64, reference: f64, tolerance: f64) -> bool {
    let collapsed = result < COLLAPSED && reference < COLLAPSED;
    collapsed || relative_error(result, reference).is_some_and(|e| e <= tolerance)
}

/// How well the real runs repeat: of the runs of cells with at least three, how many agree
/// with the median of their cell's other runs (the bar a simulated result is held to).
pub fn repeatability(rows: &[Row], tolerance: f64) -> (usize, usize) {
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

/// How a comparison came out as a whole.
pub struct Totals {
    pub agree: usize,
    /// Disagreeing, but within the real runs' range.
    pub spread: usize,
    pub median_error: f64,
    pub largest_error: f64,
}

impl Totals {
    pub fn of(rows: &[Row]) -> Totals {
        let errors: Vec<f64> = rows.iter().filter_map(|row| row.error).collect();
        Totals {
            agree: rows.iter().filter(|row| row.agrees).count(),
            spread: rows.iter().filter(|row| !row.agrees && row.within_runs).count(),
            largest_error: errors.iter().copied().fold(0.0, f64::max),
            median_error: if errors.is_empty() { 0.0 } else { Summary::of(errors).median },
        }
    }
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
            p99_us: Vec::new(),
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
}
