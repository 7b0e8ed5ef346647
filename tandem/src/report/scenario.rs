//! A scenario's result as a table: per VM its result against its ideal, per VCPU where its
//! time went (%RUN, %RDY, %CSTP, %WAIT), then utilization, fairness and the dispatcher.

use std::fmt::Write as _;

use tandem_core::metrics::VcpuTimes;
use tandem_core::results::ScenarioResult;

use super::micros;

fn percent(part: u64, whole: f64) -> f64 {
    if whole > 0.0 { part as f64 * 100.0 / whole } else { 0.0 }
}

/// The result as a table for people.
pub fn table(result: &ScenarioResult) -> String {
    let mut out = String::new();
    let place = if result.simulated { "simulated".to_owned() } else { format!("host CPUs {:?}", result.cores) };
    let _ = writeln!(
        out,
        "{}: policy {} on {} pCPUs ({place}), {:.2} s",
        result.scenario,
        result.policy,
        result.cores.len(),
        result.elapsed_s
    );
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:>5} {:>6} {:>6} {:>20} {:>14} {:>6}  outcome",
        "VM", "workload", "VCPUs", "weight", "share", "result", "ideal", "ratio"
    );
    for vm in &result.vms {
        let unit = vm.record.as_ref().map_or("", |r| r.unit.as_str());
        let rate = vm.rate().map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1} {unit}/s"));
        let ideal = vm.ideal_rate.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}"));
        let ratio = vm.ratio.map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.3}"));
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>5} {:>6} {:>6.2} {:>20} {:>14} {:>6}  {}",
            vm.name, vm.workload, vm.vcpus, vm.weight, vm.fair_share, rate, ideal, ratio, vm.outcome
        );
    }
    for vm in &result.vms {
        if let Some(latency) = vm.record.as_ref().and_then(|record| record.latency) {
            let _ = writeln!(
                out,
                "{:<10} latency, as its clients saw it: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
                vm.name,
                micros(latency.p50_ns),
                micros(latency.p99_ns),
                micros(latency.p999_ns),
                micros(latency.max_ns)
            );
        }
    }
    let _ = writeln!(out, "{:<10} {:>5} {:>6} {:>6} {:>6} {:>6}", "VCPU", "", "%RUN", "%RDY", "%CSTP", "%WAIT");
    for vm in &result.vms {
        let whole = vm.elapsed_s * 1e9;
        for (id, times) in vm.vcpu_times.iter().enumerate() {
            let VcpuTimes { run_ns, ready_ns, costop_ns, wait_ns } = *times;
            let _ = writeln!(
                out,
                "{:<10} {:>5} {:>6.1} {:>6.1} {:>6.1} {:>6.1}",
                vm.name,
                id,
                percent(run_ns, whole),
                percent(ready_ns, whole),
                percent(costop_ns, whole),
                percent(wait_ns, whole)
            );
        }
    }
    let fairness = result.fairness.map_or_else(|| "-".to_owned(), |f| format!("{f:.3}"));
    let _ = writeln!(out, "pCPU utilization {:.1}%, Jain's fairness index {fairness}", result.utilization * 100.0);
    let d = &result.dispatch;
    if result.simulated {
        let _ = writeln!(
            out,
            "dispatcher (simulated): {} events, {} preemptions taking {:.1} us each",
            d.events,
            d.preemptions,
            micros(d.preemption_ns.p50)
        );
    } else {
        let _ = writeln!(
            out,
            "dispatcher: {} events, decision p50 {:.1} us p99 {:.1} us; {} preemptions, latency p50 {:.1} us p99 {:.1} us; \
         pCPU granted to VCPU running p50 {:.1} us p99 {:.1} us; gate violations {}",
            d.events,
            micros(d.decision_ns.p50),
            micros(d.decision_ns.p99),
            d.preemptions,
            micros(d.preemption_ns.p50),
            micros(d.preemption_ns.p99),
            micros(d.resume_ns.p50),
            micros(d.resume_ns.p99),
            d.gate_violations
        );
    }
    if d.reconfiguration_ns.count > 0 {
        let _ = writeln!(
            out,
            "grant changes followed: {}, grant published to VCPUs up or down p50 {:.1} us p99 {:.1} us",
            d.reconfiguration_ns.count,
            micros(d.reconfiguration_ns.p50),
            micros(d.reconfiguration_ns.p99)
        );
    }
    out
}
