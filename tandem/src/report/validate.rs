//! `tandem validate`'s report: real against simulated, as a table for people and as
//! Markdown for the README.

use std::fmt::Write as _;

use sched::PolicyKind;
use tandem_core::validation::{COLLAPSED, Row, Totals, repeatability};

/// The comparison as a table: a row per scenario VM and policy, then the totals.
pub fn table(rows: &[Row], tolerance: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "each VM's result / ideal, real (median of runs) and simulated (median of seeds):");
    let _ = writeln!(out, "{:<24} {:<7} {:<16} {:>14} {:>8} {:>8}", "scenario", "VM", "policy", "real", "sim", "error");
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
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<16} {:>14} {:>8.3} {:>8}{mark}",
            row.real.scenario, row.real.vm, row.real.policy, real, row.sim.median, error
        );
    }
    let Totals { agree, spread, median_error, largest_error } = Totals::of(rows);
    let collapsed = rows.iter().filter(|row| row.real.median < COLLAPSED && row.sim.median < COLLAPSED).count();
    let _ = writeln!(
        out,
        "{agree} of {} within {:.0}% ({collapsed} of them collapsed below {COLLAPSED} in both), {spread} more within the \
         range of their real runs; median error {:.1}%, largest {:.1}%",
        rows.len(),
        tolerance * 100.0,
        median_error * 100.0,
        largest_error * 100.0
    );
    let (repeated, runs) = repeatability(rows, tolerance);
    if runs > 0 {
        let _ = writeln!(
            out,
            "the real runs themselves: {repeated} of {runs} ({:.0}%) within {:.0}% of the median of their cell's other \
             runs, against {:.0}% of the simulated results within {:.0}% of the real median",
            100.0 * repeated as f64 / runs as f64,
            tolerance * 100.0,
            100.0 * agree as f64 / rows.len().max(1) as f64,
            tolerance * 100.0
        );
    }
    out
}

/// The comparison as Markdown: how many agree, overall, by workload (a scenario's name up to
/// its first `-`) and by policy; then a row per scenario and VM, a column per policy, each
/// entry real / simulated, **x** where they disagree, t/o after a real median with runs
/// stopped at their timeout, - where the policy cannot run the scenario.
pub fn markdown(rows: &[Row], policies: &[PolicyKind]) -> String {
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
    use sched::PolicyKind;
    use tandem_core::experiment::Cell;
    use tandem_core::validation::{Row, agree, relative_error};

    use super::*;

    #[test]
    fn the_markdown_tallies_agreement_and_lays_policies_out_as_columns() {
        let cell = |scenario: &str, vm: &str, policy: PolicyKind, median: f64, timeouts: usize| Cell {
            scenario: scenario.to_owned(),
            vm: vm.to_owned(),
            policy: policy.name().to_owned(),
            ratios: vec![median],
            timeouts,
            median,
            p99_us: Vec::new(),
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
