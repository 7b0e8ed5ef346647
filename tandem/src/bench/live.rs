//! What the live socket costs the VMs: each scenario under each policy run twice in a row
//! against the same references, once with a reader taking a snapshot every `--period-ms`
//! (a harder reader than `tandem top`'s one a second) and once without, in alternating order,
//! over `--runs` rounds; each VM's median ratio to its ideal with and without, side by side.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use tandem_core::experiment::{Cell, cells, name};
use tandem_core::live::Snapshot;
use tandem_core::results::References;
use tandem_core::stats::{Percentiles, Summary, median};
use tandem_kvm::{image, open_kvm, runner, stop};

use crate::compare::{self, Selection};
use crate::report;

#[derive(Debug, Args)]
pub struct LiveArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Milliseconds between the reader's snapshots
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub period_ms: u64,
}

/// Takes snapshots from the live socket until stopped.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<u64>>>,
}

impl Reader {
    fn start(path: PathBuf, period: Duration) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut took_ns = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut json = Vec::new();
                UnixStream::connect(&path)?.read_to_end(&mut json)?;
                let snapshot: Snapshot = serde_json::from_slice(&json)?;
                // Only the snapshots of running VMs count: those are the ones that can cost.
                if !snapshot.vms.is_empty() {
                    took_ns.push(started.elapsed().as_nanos() as u64);
                }
                std::thread::sleep(period);
            }
            Ok(took_ns)
        });
        Reader { stop, thread }
    }

    /// Stops it: how long each snapshot of running VMs took to take.
    fn finish(self) -> anyhow::Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the reader panicked")
    }
}

pub fn live(args: &LiveArgs) -> anyhow::Result<()> {
    let selection = &args.selection;
    let scenarios = compare::load(selection)?;
    let variants = compare::variants(selection, &scenarios)?;
    // The process's own socket, which `tandem bench` serves as every command that runs VMs.
    let socket = tandem_core::live::socket_path(std::process::id());
    anyhow::ensure!(socket.exists(), "this process serves no live socket (see the line above) to measure");
    let period = Duration::from_millis(args.period_ms);
    let kvm = open_kvm()?;
    let bar = report::progress(selection.runs * variants.len(), "pairs of runs");
    let (mut without, mut with, mut snapshots_ns) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..selection.runs {
        for scenario in &variants {
            bar.set_message(format!("{} under {}", name(scenario), scenario.policy));
            let mut references = References::default();
            runner::measure_references(&kvm, image::DEFAULT_GUEST, scenario, &mut references, false)?;
            let run = || runner::run_scenario(&kvm, image::DEFAULT_GUEST, scenario, Some(&references));
            // Alternate which goes first, so that drift between the two does not favour one.
            for read in if round % 2 == 0 { [false, true] } else { [true, false] } {
                if stop::interrupted().is_some() {
                    anyhow::bail!("interrupted");
                }
                let result = if read {
                    let reader = Reader::start(socket.clone(), period);
                    let result = run();
                    snapshots_ns.extend(reader.finish()?);
                    result?
                } else {
                    run()?
                };
                compare::check(scenario, &result)?;
                if read { &mut with } else { &mut without }.push(result);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let (without, with) =
        (cells(&scenarios, &selection.policies, &without), cells(&scenarios, &selection.policies, &with));
    print!("{}", table(&without, &with, &Percentiles::of(snapshots_ns)));
    Ok(())
}

/// Each VM's median ratio without and with the reader, their quotient, and a summary: the
/// quotients' median and spread over the VMs, against the runs' own spread without the
/// reader (the noise).
fn table(without: &[Cell], with: &[Cell], snapshots: &Percentiles) -> String {
    let mut out = format!("{:<34} {:<8} {:<16} {:>8} {:>8} {:>8}\n", "scenario", "VM", "policy", "off", "on", "on/off");
    let (mut quotients, mut spreads) = (Vec::new(), Vec::new());
    for (off, on) in without.iter().zip(with).filter(|(off, on)| off.median > 0.0 && on.median > 0.0) {
        let quotient = on.median / off.median;
        quotients.push(quotient);
        if off.ratios.len() > 1 {
            let (max, min) = off.ratios.iter().fold((f64::MIN, f64::MAX), |(max, min), &r| (max.max(r), min.min(r)));
            spreads.push((max - min) / off.median);
        }
        let line = format!(
            "{:<34} {:<8} {:<16} {:>8.3} {:>8.3} {:>8.3}\n",
            off.scenario, off.vm, off.policy, off.median, on.median, quotient
        );
        out.push_str(&line);
    }
    if !quotients.is_empty() {
        let count = quotients.len();
        let summary = Summary::of(quotients);
        let noise = median(&spreads)
            .map_or_else(|| "needs more than one run".to_owned(), |spread| format!("median {:.1}%", 100.0 * spread));
        out.push_str(&format!(
            "on/off over {count} VMs: median {:.3}, p10 {:.3}, p90 {:.3}; the runs' own spread without the reader \
             ((max - min) / median per VM): {noise}\n",
            summary.median, summary.p10, summary.p90,
        ));
    }
    out.push_str(&format!(
        "{} snapshots of running VMs, each taken (connect, JSON, read) in p50 {:.0} us, p99 {:.0} us\n",
        snapshots.count,
        snapshots.p50 as f64 / 1e3,
        snapshots.p99 as f64 / 1e3
    ));
    out
}
