//! The dispatcher's trace as Chrome trace events (opens in Perfetto or chrome://tracing).

use std::path::Path;

use sched::VcpuId;
use serde_json::json;
use tandem_core::results::{ScenarioResult, vcpu_name};
use tandem_core::scenario::Scenario;

use super::{micros, write_json};

/// Writes the dispatcher's trace as Chrome trace events: one track per pCPU, whose slices
/// are the VCPUs it ran; under a policy that does not gate, one track per VCPU (Linux chose
/// the core).
pub fn write_trace(path: &Path, scenario: &Scenario, result: &ScenarioResult) -> anyhow::Result<()> {
    const UNGATED_TRACK: u64 = 1000;
    let mut events = Vec::new();
    for (pcpu, core) in result.cores.iter().enumerate() {
        events.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": pcpu,
            "args": {"name": format!("pCPU {pcpu} (host CPU {core})")}}));
    }
    let mut named = std::collections::HashSet::new();
    for span in &result.dispatch.trace {
        let name = vcpu_name(scenario, VcpuId(span.vcpu));
        let tid = span.pcpu.map_or(UNGATED_TRACK + u64::from(span.vcpu), u64::from);
        if span.pcpu.is_none() && named.insert(span.vcpu) {
            events.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid,
                "args": {"name": format!("{name} (placed by Linux)")}}));
        }
        events.push(json!({
            "name": name, "cat": "vcpu", "ph": "X", "pid": 1, "tid": tid,
            "ts": micros(span.start_ns), "dur": micros(span.end_ns.saturating_sub(span.start_ns)),
        }));
    }
    let trace = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"scenario": result.scenario, "policy": result.policy},
    });
    write_json(path, &trace)
}
