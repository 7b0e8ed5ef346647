//! The live view of a running monitor: what its socket serves ([`Snapshot`]: cumulative
//! counters, as /proc serves them), where that socket is, and the rates between two snapshots
//! ([`Interval`]: %RUN, %RDY, %CSTP and %WAIT as esxtop shows them, and events per second).
//!
//! The server keeps no state per reader: any number of readers may sample at any period, and
//! each turns two of its own snapshots into an interval.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a monitor process serves at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    /// The command it runs (`run`, `scenario`, `compare`, `validate`).
    pub command: String,
    /// Nanoseconds since the process started serving: the clock of every `*_ns` instant here.
    pub at_ns: u64,
    pub dispatchers: Vec<DispatcherLive>,
    pub vms: Vec<VmLive>,
}

/// A dispatcher's counters since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatcherLive {
    /// Unique within the process.
    pub id: u64,
    pub policy: String,
    pub pcpus: u32,
    /// When it started.
    pub started_ns: u64,
    /// Events decided, and the time all those decisions took.
    pub decisions: u64,
    pub decision_ns: u64,
    /// VCPUs told to leave their pCPU; of those that left, how many and in how long in all
    /// (from the decision to the VCPU out of KVM_RUN).
    pub preemptions: u64,
    pub preempted: u64,
    pub preemption_ns: u64,
}

/// A VM's counters since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmLive {
    /// Unique within the process.
    pub id: u64,
    pub name: String,
    /// The id of the dispatcher its VCPUs run under.
    pub dispatcher: u64,
    pub started_ns: u64,
    /// VCPUs the policy grants it, under a policy that grants (`dynamic`).
    pub grant: Option<u32>,
    /// Runnable threads its guest reports, over all its VCPUs.
    pub demand: u32,
    pub vcpus: Vec<VcpuLive>,
}

/// Where a VCPU is now, in esxtop's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VcpuState {
    /// On a pCPU.
    Run,
    /// Runnable, waiting for a pCPU.
    Rdy,
    /// Runnable, held back by a co-scheduler for its siblings.
    Cstp,
    /// Blocked until a kick or its deadline.
    Wait,
    /// Offline: not started, or taken down.
    Off,
}

impl std::fmt::Display for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            VcpuState::Run => "RUN",
            VcpuState::Rdy => "RDY",
            VcpuState::Cstp => "CSTP",
            VcpuState::Wait => "WAIT",
            VcpuState::Off => "OFF",
        };
        f.pad(name)
    }
}

/// A VCPU's counters since its VM started. Its time splits into run, ready, co-stopped,
/// blocked and offline, which add up to the VM's age.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuLive {
    pub id: u32,
    pub state: VcpuState,
    pub run_ns: u64,
    pub ready_ns: u64,
    pub costop_ns: u64,
    pub wait_ns: u64,
    pub offline_ns: u64,
    /// Exits by kind: each hypercall by its name, and `other` (kicks out of KVM_RUN,
    /// unknown ports).
    pub exits: BTreeMap<String, u64>,
    /// Times a lock waiter on this VCPU left its spin for the paravirtual slow path (a yield
    /// or a block), as the guest counts them in the shared page.
    pub lock_slow_paths: u64,
}

/// The directory of the live sockets: `$XDG_RUNTIME_DIR/tandem`, else `/tmp/tandem-UID`.
pub fn socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tandem"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("tandem-{}", unsafe { libc::getuid() })),
    }
}

/// The live socket of process `pid`.
pub fn socket_path(pid: u32) -> PathBuf {
    socket_dir().join(format!("{pid}.sock"))
}

/// Whether process `pid` exists: a socket of one that does not is stale.
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// The process a socket in [`socket_dir`] belongs to, from its name.
pub fn socket_pid(path: &std::path::Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".sock")?.parse().ok()
}

/// What happened between two snapshots of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub pid: u32,
    pub command: String,
    /// The later snapshot's instant, in seconds since the process started serving.
    pub at_s: f64,
    pub seconds: f64,
    pub dispatchers: Vec<DispatcherRates>,
    pub vms: Vec<VmRates>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DispatcherRates {
    pub id: u64,
    pub policy: String,
    pub pcpus: u32,
    pub decisions_per_s: f64,
    /// Mean decision and preemption latency over the interval, if there were any.
    pub decision_us: Option<f64>,
    pub preemption_us: Option<f64>,
    pub preemptions_per_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmRates {
    pub id: u64,
    pub name: String,
    pub policy: String,
    pub grant: Option<u32>,
    pub demand: u32,
    pub vcpus: Vec<VcpuRates>,
}

/// A VCPU over an interval: shares of its time in percent (adding up to 100, with offline
/// time in %WAIT, as esxtop counts idle time there), and events per second.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuRates {
    pub id: u32,
    pub state: VcpuState,
    pub run: f64,
    pub ready: f64,
    pub costop: f64,
    pub wait: f64,
    /// The part of `wait` the VCPU was offline.
    pub offline: f64,
    pub exits_per_s: f64,
    pub blocks_per_s: f64,
    pub kicks_per_s: f64,
    pub lock_slow_per_s: f64,
}

impl VmRates {
    /// The VM's line: its VCPUs' shares added up (so up to 100 per VCPU, as esxtop's group
    /// lines) and their rates added up; the state of its busiest VCPU.
    pub fn total(&self) -> VcpuRates {
        let state = self.vcpus.iter().map(|vcpu| vcpu.state).min_by_key(|state| *state as u8).unwrap_or(VcpuState::Off);
        let sum = |field: fn(&VcpuRates) -> f64| self.vcpus.iter().map(field).sum();
        VcpuRates {
            id: self.vcpus.len() as u32,
            state,
            run: sum(|v| v.run),
            ready: sum(|v| v.ready),
            costop: sum(|v| v.costop),
            wait: sum(|v| v.wait),
            offline: sum(|v| v.offline),
            exits_per_s: sum(|v| v.exits_per_s),
            blocks_per_s: sum(|v| v.blocks_per_s),
            kicks_per_s: sum(|v| v.kicks_per_s),
            lock_slow_per_s: sum(|v| v.lock_slow_per_s),
        }
    }
}

impl Interval {
    /// The rates from `before` to `now` (two snapshots of the same process, `before` taken
    /// first). A VM or dispatcher that `before` did not have counts from its start; without
    /// `before`, everything does.
    pub fn between(before: Option<&Snapshot>, now: &Snapshot) -> Interval {
        let from_ns = before.map_or(0, |snapshot| snapshot.at_ns);
        let policies: BTreeMap<u64, &str> = now.dispatchers.iter().map(|d| (d.id, d.policy.as_str())).collect();
        let dispatchers = now
            .dispatchers
            .iter()
            .map(|dispatcher| {
                let earlier = before.and_then(|b| b.dispatchers.iter().find(|d| d.id == dispatcher.id));
                dispatcher_rates(earlier, dispatcher, seconds(from_ns.max(dispatcher.started_ns), now.at_ns))
            })
            .collect();
        let vms = now
            .vms
            .iter()
            .map(|vm| {
                let earlier = before.and_then(|b| b.vms.iter().find(|v| v.id == vm.id));
                let span_ns = now.at_ns.saturating_sub(from_ns.max(vm.started_ns));
                VmRates {
                    id: vm.id,
                    name: vm.name.clone(),
                    policy: policies.get(&vm.dispatcher).copied().unwrap_or("?").to_owned(),
                    grant: vm.grant,
                    demand: vm.demand,
                    vcpus: vm
                        .vcpus
                        .iter()
                        .map(|vcpu| {
                            let earlier = earlier.and_then(|vm| vm.vcpus.iter().find(|v| v.id == vcpu.id));
                            vcpu_rates(earlier, vcpu, span_ns)
                        })
                        .collect(),
                }
            })
            .collect();
        Interval {
            pid: now.pid,
            command: now.command.clone(),
            at_s: now.at_ns as f64 / 1e9,
            seconds: seconds(from_ns, now.at_ns),
            dispatchers,
            vms,
        }
    }
}

fn seconds(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// Events per second, or 0 over an empty interval.
fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}

fn dispatcher_rates(before: Option<&DispatcherLive>, now: &DispatcherLive, seconds: f64) -> DispatcherRates {
    let delta = |field: fn(&DispatcherLive) -> u64| field(now).saturating_sub(before.map_or(0, field));
    let mean_us = |count: u64, ns: u64| (count > 0).then(|| ns as f64 / count as f64 / 1e3);
    DispatcherRates {
        id: now.id,
        policy: now.policy.clone(),
        pcpus: now.pcpus,
        decisions_per_s: per_second(delta(|d| d.decisions), seconds),
        decision_us: mean_us(delta(|d| d.decisions), delta(|d| d.decision_ns)),
        preemption_us: mean_us(delta(|d| d.preempted), delta(|d| d.preemption_ns)),
        preemptions_per_s: per_second(delta(|d| d.preemptions), seconds),
    }
}

/// A VCPU's rates over `span_ns`. Its shares are of `span_ns`: they add up to 100 only as far
/// as the accounting is right.
fn vcpu_rates(before: Option<&VcpuLive>, now: &VcpuLive, span_ns: u64) -> VcpuRates {
    let delta = |field: fn(&VcpuLive) -> u64| field(now).saturating_sub(before.map_or(0, field));
    let (run, ready, costop, wait, offline) = (
        delta(|v| v.run_ns),
        delta(|v| v.ready_ns),
        delta(|v| v.costop_ns),
        delta(|v| v.wait_ns),
        delta(|v| v.offline_ns),
    );
    let share = |ns: u64| if span_ns > 0 { 100.0 * ns as f64 / span_ns as f64 } else { 0.0 };
    let exits = |now: &VcpuLive, kind: &str| now.exits.get(kind).copied().unwrap_or(0);
    let exit_delta = |kind: &str| exits(now, kind).saturating_sub(before.map_or(0, |b| exits(b, kind)));
    let total_exits = now.exits.values().sum::<u64>().saturating_sub(before.map_or(0, |b| b.exits.values().sum()));
    let seconds = span_ns as f64 / 1e9;
    VcpuRates {
        id: now.id,
        state: now.state,
        run: share(run),
        ready: share(ready),
        costop: share(costop),
        wait: share(wait + offline),
        offline: share(offline),
        exits_per_s: per_second(total_exits, seconds),
        blocks_per_s: per_second(exit_delta("block"), seconds),
        kicks_per_s: per_second(exit_delta("kick"), seconds),
        lock_slow_per_s: per_second(delta(|v| v.lock_slow_paths), seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(id: u32, state: VcpuState, [run, ready, costop, wait, offline]: [u64; 5], blocks: u64) -> VcpuLive {
        let exits = BTreeMap::from([("block".to_owned(), blocks), ("other".to_owned(), 2 * blocks)]);
        VcpuLive {
            id,
            state,
            run_ns: run,
            ready_ns: ready,
            costop_ns: costop,
            wait_ns: wait,
            offline_ns: offline,
            exits,
            lock_slow_paths: blocks / 2,
        }
    }

    fn snapshot(at_ns: u64, vms: Vec<VmLive>) -> Snapshot {
        let dispatcher = DispatcherLive {
            id: 1,
            policy: "credit".into(),
            pcpus: 2,
            started_ns: 0,
            decisions: at_ns / 100_000,
            decision_ns: at_ns / 10,
            preemptions: 10,
            preempted: 10,
            preemption_ns: 500_000,
        };
        Snapshot { pid: 7, command: "scenario".into(), at_ns, dispatchers: vec![dispatcher], vms }
    }

    fn vm(id: u64, started_ns: u64, vcpus: Vec<VcpuLive>) -> VmLive {
        VmLive { id, name: format!("vm{id}"), dispatcher: 1, started_ns, grant: None, demand: 3, vcpus }
    }

    #[test]
    fn shares_are_of_the_interval_and_rates_per_second_of_it() {
        let before = snapshot(
            1_000_000_000,
            vec![vm(1, 0, vec![vcpu(0, VcpuState::Run, [500, 300, 100, 100, 0].map(|x| x * 1_000_000), 100)])],
        );
        let now = snapshot(
            3_000_000_000,
            vec![vm(1, 0, vec![vcpu(0, VcpuState::Wait, [1500, 700, 300, 500, 0].map(|x| x * 1_000_000), 500)])],
        );
        let interval = Interval::between(Some(&before), &now);
        assert_eq!(interval.seconds, 2.0);
        let rates = &interval.vms[0].vcpus[0];
        assert_eq!((rates.run, rates.ready, rates.costop, rates.wait), (50.0, 20.0, 10.0, 20.0));
        assert_eq!((rates.blocks_per_s, rates.exits_per_s, rates.lock_slow_per_s), (200.0, 600.0, 100.0));
        assert_eq!(rates.state, VcpuState::Wait);
        assert_eq!(interval.vms[0].policy, "credit");
        let dispatcher = &interval.dispatchers[0];
        assert_eq!(dispatcher.decisions_per_s, 10_000.0);
        assert_eq!(dispatcher.decision_us, Some(10.0));
        assert_eq!((dispatcher.preemption_us, dispatcher.preemptions_per_s), (None, 0.0), "none in the interval");
    }

    #[test]
    fn a_vm_new_since_the_last_snapshot_counts_from_its_start_and_offline_time_is_wait() {
        let before = snapshot(1_000_000_000, Vec::new());
        let now = snapshot(
            2_000_000_000,
            vec![vm(2, 1_500_000_000, vec![vcpu(1, VcpuState::Off, [100, 0, 0, 100, 300].map(|x| x * 1_000_000), 0)])],
        );
        let rates = &Interval::between(Some(&before), &now).vms[0].vcpus[0];
        assert_eq!((rates.run, rates.wait, rates.offline), (20.0, 80.0, 60.0));
        let total = Interval::between(None, &now).vms[0].total();
        assert_eq!((total.id, total.state, total.run), (1, VcpuState::Off, 20.0));
    }

    #[test]
    fn a_vm_line_adds_its_vcpus_up_and_shows_the_busiest_state() {
        let times = [250, 250, 0, 500, 0].map(|x| x * 1_000_000);
        let now = snapshot(
            1_000_000_000,
            vec![vm(1, 0, vec![vcpu(0, VcpuState::Wait, times, 10), vcpu(1, VcpuState::Rdy, times, 20)])],
        );
        let total = Interval::between(None, &now).vms[0].total();
        assert_eq!(
            (total.id, total.state, total.run, total.wait, total.blocks_per_s),
            (2, VcpuState::Rdy, 50.0, 100.0, 30.0)
        );
    }

    #[test]
    fn sockets_are_named_after_their_process() {
        assert_eq!(socket_path(1234).file_name().unwrap(), "1234.sock");
        assert_eq!(socket_pid(&socket_path(1234)), Some(1234));
        assert_eq!(socket_pid(std::path::Path::new("/tmp/x.sock")), None);
    }

    #[test]
    fn a_snapshot_survives_json() {
        let now = snapshot(1, vec![vm(1, 0, vec![vcpu(0, VcpuState::Cstp, [1, 2, 3, 4, 5], 6)])]);
        let text = serde_json::to_string(&now).unwrap();
        assert!(text.contains("\"state\":\"CSTP\""), "{text}");
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), now);
    }
}
