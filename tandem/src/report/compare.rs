//! `tandem compare`'s report: the table of median ratios, the dispatcher's figures, and the
//! heat map.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use plotters::prelude::*;
use sched::PolicyKind;
use tandem_core::experiment::{Cell, name};
use tandem_core::results::ScenarioResult;
use tandem_core::scenario::{Scenario, VmPlan};
use tandem_core::stats::Summary;

/// Each scenario VM's median ratio to its ideal under each policy, a column per policy; then,
/// if any VM serves clients, their p99 latency the same way.
pub fn table(scenarios: &[Scenario], policies: &[PolicyKind], cells: &[Cell]) -> String {
    let mut out = String::from(
        "each VM's result as a fraction of its ideal (its work at its fair share of the pCPUs), median of runs:\n",
    );
    out += &grid(
        scenarios,
        policies,
        cells,
        |_| true,
        |cell| match cell {
            Some(cell) if cell.timeouts > 0 => format!("{:.3} ({} t/o)", cell.median, cell.timeouts),
            Some(cell) if cell.median.is_finite() => format!("{:.3}", cell.median),
            _ => "cannot run".to_owned(),
        },
    );
    let served = |vm: &VmPlan| workloads::workload(&vm.workload).is_some_and(|info| info.served);
    if scenarios.iter().any(|scenario| scenario.vms.iter().any(served)) {
        out += "the p99 latency of each served VM's requests, as its clients saw it, in ms, median of runs:\n";
        out += &grid(scenarios, policies, cells, served, |cell| {
            cell.and_then(Cell::median_p99_us).map_or_else(|| "-".to_owned(), |p99| format!("{:.2}", p99 / 1e3))
        });
    }
    out
}

/// A row per scenario VM that `shown` takes, a column per policy, each cell as `format` puts it.
fn grid(
    scenarios: &[Scenario],
    policies: &[PolicyKind],
    cells: &[Cell],
    shown: impl Fn(&VmPlan) -> bool,
    format: impl Fn(Option<&Cell>) -> String,
) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<24} {:<6} {:>5}", "scenario", "VM", "VCPUs");
    for policy in policies {
        let _ = write!(out, " {:>16}", policy.name());
    }
    let _ = writeln!(out);
    for scenario in scenarios {
        for vm in scenario.vms.iter().filter(|vm| shown(vm)) {
            let _ = write!(out, "{:<24} {:<6} {:>5}", name(scenario), vm.name, vm.vcpus);
            for policy in policies {
                let cell =
                    cells.iter().find(|c| c.scenario == name(scenario) && c.vm == vm.name && c.policy == policy.name());
                let _ = write!(out, " {:>16}", format(cell));
            }
            let _ = writeln!(out);
        }
    }
    out
}

/// The dispatcher's figures over all runs: medians of their decision and preemption
/// latencies, gate violations, grant changes.
pub fn dispatcher(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let violations: u64 = results.iter().map(|r| r.dispatch.gate_violations).sum();
    let gated: Vec<&ScenarioResult> = results.iter().filter(|r| r.policy != PolicyKind::Host.name()).collect();
    let preempting: Vec<&&ScenarioResult> = gated.iter().filter(|r| r.dispatch.preemption_ns.count > 0).collect();
    let median = |values: Vec<f64>| if values.is_empty() { 0.0 } else { Summary::of(values).median };
    let _ = writeln!(
        out,
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
        let _ = writeln!(
            out,
            "grant changes followed: {} in {} runs; grant published to VCPUs up or down, median over runs: p50 {:.1} us \
             p99 {:.1} us",
            reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.count).sum::<usize>(),
            reconfigured.len(),
            median(reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.p50 as f64 / 1e3).collect()),
            median(reconfigured.iter().map(|r| r.dispatch.reconfiguration_ns.p99 as f64 / 1e3).collect()),
        );
    }
    out
}

/// A heat map: a row per scenario VM (in the cells' order), a column per policy, each cell
/// its median ratio printed on a colour that diverges around 1.0 (red below, blue above, on a
/// log scale saturating at 1/4 and 4); grey where the policy cannot run the scenario. About
/// 600 pixels wide whatever the matrix, so it stays legible at README width.
pub fn chart(path: &PathBuf, policies: &[PolicyKind], cells: &[Cell]) -> anyhow::Result<()> {
    const LABEL: i32 = 230;
    const COLUMN: i32 = 74;
    const ROW: i32 = 18;
    const HEADER: i32 = 48;
    let mut rows: Vec<(String, String)> = Vec::new();
    for cell in cells {
        let row = (cell.scenario.clone(), cell.vm.clone());
        if !rows.contains(&row) {
            rows.push(row);
        }
    }
    let width = (LABEL + COLUMN * policies.len() as i32 + 10) as u32;
    let height = (HEADER + ROW * rows.len() as i32 + 10) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let font = ("sans-serif", 12).into_font();
        root.draw(&Text::new("result / ideal per VM, median of runs", (4, 4), font.clone().style(FontStyle::Bold)))?;
        for (k, policy) in policies.iter().enumerate() {
            let x = LABEL + COLUMN * k as i32;
            root.draw(&Text::new(policy.name().to_owned(), (x + 2, HEADER - 16), font.clone()))?;
        }
        for (r, (scenario, vm)) in rows.iter().enumerate() {
            let y = HEADER + ROW * r as i32;
            root.draw(&Text::new(format!("{scenario} {vm}"), (4, y + 3), font.clone()))?;
            for (k, policy) in policies.iter().enumerate() {
                let x = LABEL + COLUMN * k as i32;
                let cell = cells.iter().find(|c| c.scenario == *scenario && c.vm == *vm && c.policy == policy.name());
                let (fill, text) = match cell {
                    Some(cell) if cell.median.is_finite() => {
                        let mark = if cell.timeouts > 0 { " t/o" } else { "" };
                        (diverging(cell.median), format!("{:.2}{mark}", cell.median))
                    }
                    _ => (RGBColor(225, 225, 225), "-".to_owned()),
                };
                root.draw(&Rectangle::new([(x, y), (x + COLUMN - 2, y + ROW - 2)], fill.filled()))?;
                root.draw(&Text::new(text, (x + 6, y + 3), font.clone()))?;
            }
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}

/// White at 1.0, towards red below and blue above, on a log scale saturating at 1/4 and 4.
fn diverging(ratio: f64) -> RGBColor {
    let t = (ratio.max(1e-6).log2() / 2.0).clamp(-1.0, 1.0);
    let fade = |full: u8, t: f64| (255.0 - (255.0 - f64::from(full)) * t.abs()).round() as u8;
    if t < 0.0 {
        RGBColor(fade(214, t), fade(96, t), fade(77, t))
    } else {
        RGBColor(fade(67, t), fade(147, t), fade(195, t))
    }
}
