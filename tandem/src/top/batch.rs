//! `tandem top -b`: esxtop's batch mode. A baseline snapshot, then one every delay, each
//! written as CSV rows on stdout (one per VCPU) and flushed, for a script or a spreadsheet.

use std::borrow::Cow;
use std::io::{ErrorKind, Write};
use std::time::Duration;

use tandem_core::live::{Interval, VcpuRates, VmRates};

use super::attach::{Sample, Source};

/// The CSV header: what each row holds.
pub const HEADER: &str = "sample,time_s,pid,policy,vm_id,vm,vcpu,state,%RUN,%RDY,%CSTP,%WAIT,%OFF,\
                          exits/s,blocks/s,kicks/s,lock_slow/s,grant,demand";

/// Writes the header and `samples` samples (all until the process ends, if `None`) to `out`,
/// `every` apart. A reader that goes away (a closed pipe) ends it as the process ending does.
pub fn run(source: &Source, every: Duration, samples: Option<u64>, out: &mut impl Write) -> anyhow::Result<()> {
    let mut before = source.fetch()?;
    if !write(out, &[HEADER.to_owned()])? {
        return Ok(());
    }
    for sample in (1..).take_while(|sample| samples.is_none_or(|count| *sample <= count)) {
        std::thread::sleep(every);
        let now = match source.sample()? {
            Sample::Snapshot(snapshot) => snapshot,
            Sample::Ended => {
                eprintln!("tandem top: process {} ended", source.pid);
                return Ok(());
            }
        };
        if !write(out, &rows(sample, &Interval::between(Some(&before), &now)))? {
            return Ok(());
        }
        before = now;
    }
    Ok(())
}

/// Writes `lines` and flushes them; false if the reader has gone (a closed pipe).
fn write(out: &mut impl Write, lines: &[String]) -> std::io::Result<bool> {
    let written = lines.iter().try_for_each(|line| writeln!(out, "{line}")).and_then(|()| out.flush());
    match written {
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(false),
        written => written.map(|()| true),
    }
}

/// Sample number `sample`'s rows: one per VCPU, VM by VM.
pub fn rows(sample: u64, interval: &Interval) -> Vec<String> {
    let vcpus = interval.vms.iter().flat_map(|vm| vm.vcpus.iter().map(move |vcpu| (vm, vcpu)));
    vcpus.map(|(vm, vcpu)| row(sample, interval, vm, vcpu)).collect()
}

fn row(sample: u64, interval: &Interval, vm: &VmRates, vcpu: &VcpuRates) -> String {
    format!(
        "{sample},{:.2},{},{},{},{},{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.1},{:.1},{:.1},{:.1},{},{}",
        interval.at_s,
        interval.pid,
        csv_field(&vm.policy),
        vm.id,
        csv_field(&vm.name),
        vcpu.id,
        vcpu.state,
        vcpu.run,
        vcpu.ready,
        vcpu.costop,
        vcpu.wait,
        vcpu.offline,
        vcpu.exits_per_s,
        vcpu.blocks_per_s,
        vcpu.kicks_per_s,
        vcpu.lock_slow_per_s,
        vm.grant.map(|grant| grant.to_string()).unwrap_or_default(),
        vm.demand
    )
}

/// `text` as a CSV field (RFC 4180): in quotes, its quotes doubled, if it holds a comma, a
/// quote or a line break; as it is otherwise.
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tandem_core::live::{DispatcherLive, Snapshot, VcpuLive, VcpuState, VmLive};

    use super::*;

    fn vcpu(id: u32, state: VcpuState, [run, ready, costop, wait, offline]: [u64; 5], exits: u64) -> VcpuLive {
        VcpuLive {
            id,
            state,
            run_ns: run * 1_000_000,
            ready_ns: ready * 1_000_000,
            costop_ns: costop * 1_000_000,
            wait_ns: wait * 1_000_000,
            offline_ns: offline * 1_000_000,
            exits: BTreeMap::from([("block".to_owned(), exits), ("kick".to_owned(), 2 * exits)]),
            lock_slow_paths: exits / 2,
        }
    }

    fn snapshot(at_ms: u64, vms: Vec<VmLive>) -> Snapshot {
        let dispatcher = DispatcherLive {
            id: 1,
            policy: "dynamic".into(),
            pcpus: 2,
            started_ns: 0,
            decisions: 0,
            decision_ns: 0,
            preemptions: 0,
            preempted: 0,
            preemption_ns: 0,
        };
        Snapshot { pid: 42, command: "scenario".into(), at_ns: at_ms * 1_000_000, dispatchers: vec![dispatcher], vms }
    }

    fn vm(id: u64, name: &str, grant: Option<u32>, vcpus: Vec<VcpuLive>) -> VmLive {
        VmLive { id, name: name.into(), dispatcher: 1, started_ns: 0, grant, demand: 3, vcpus }
    }

    #[test]
    fn a_row_per_vcpu_with_shares_and_rates_of_the_interval() {
        let before = snapshot(
            1000,
            vec![
                vm(1, "db", Some(2), vec![vcpu(0, VcpuState::Run, [500, 300, 100, 100, 0], 10)]),
                vm(2, "web", None, vec![vcpu(0, VcpuState::Run, [0; 5], 0), vcpu(1, VcpuState::Off, [0; 5], 0)]),
            ],
        );
        let now = snapshot(
            1500,
            vec![
                vm(1, "db", Some(2), vec![vcpu(0, VcpuState::Rdy, [750, 400, 150, 200, 0], 60)]),
                vm(
                    2,
                    "web",
                    None,
                    vec![
                        vcpu(0, VcpuState::Wait, [100, 0, 0, 400, 0], 5),
                        vcpu(1, VcpuState::Off, [0, 0, 0, 0, 500], 0),
                    ],
                ),
            ],
        );
        let rows = rows(3, &Interval::between(Some(&before), &now));
        assert_eq!(
            rows,
            [
                "3,1.50,42,dynamic,1,db,0,RDY,50.00,20.00,10.00,20.00,0.00,300.0,100.0,200.0,50.0,2,3",
                "3,1.50,42,dynamic,2,web,0,WAIT,20.00,0.00,0.00,80.00,0.00,30.0,10.0,20.0,4.0,,3",
                "3,1.50,42,dynamic,2,web,1,OFF,0.00,0.00,0.00,100.00,100.00,0.0,0.0,0.0,0.0,,3",
            ]
        );
        assert_eq!(rows[0].split(',').count(), HEADER.split(',').count());
    }

    #[test]
    fn names_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("db"), "db");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        let now = snapshot(1000, vec![vm(1, "a,\"b\"", None, vec![vcpu(0, VcpuState::Run, [1000, 0, 0, 0, 0], 0)])]);
        let row = &rows(1, &Interval::between(None, &now))[0];
        assert!(row.starts_with("1,1.00,42,dynamic,1,\"a,\"\"b\"\"\",0,RUN,100.00,"), "{row}");
    }
}
