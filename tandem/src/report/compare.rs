//! `tandem compare`'s report: the table of median ratios, the dispatcher's figures, and the
//! bar chart.

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

/// Grouped bars: one group per scenario VM, one bar per policy.
pub fn chart(path: &PathBuf, policies: &[PolicyKind], cells: &[Cell]) -> anyhow::Result<()> {
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
