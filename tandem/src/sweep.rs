//! `tandem sweep`: the simulator over a grid of pCPU counts, overcommit ratios, workload
//! mixes, spinlock families and policies, on every core, written out as CSV, JSON and one
//! SVG per pCPU count (result / ideal against overcommit, a line per policy).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sched::PolicyKind;
use tandem_core::experiment::{SweepGrid, SweepPoint, SweepResult};
use tandem_core::results::References;
use tandem_kvm::outcome::signal_name;
use tandem_kvm::stop;

use crate::report;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// pCPU counts
    #[arg(long, value_delimiter = ',', default_values_t = [2, 8, 32, 64])]
    pub pcpus: Vec<u32>,
    /// Overcommit ratios: VCPUs over pCPUs (VMs are added until the VCPUs reach it)
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 2.0, 3.0, 4.0])]
    pub overcommit: Vec<f64>,
    /// Workload mixes: independent (cpu), synchronizing (nbody), locks, mixed (all four)
    #[arg(long, value_delimiter = ',', default_values = ["independent", "synchronizing", "locks", "mixed"])]
    pub mixes: Vec<String>,
    /// Spinlock families
    #[arg(long, value_delimiter = ',', default_values = ["spin", "pv"], value_parser = clap::builder::PossibleValuesParser::new(workloads::LOCK_FAMILIES))]
    pub locks: Vec<String>,
    /// Policies
    #[arg(long, value_delimiter = ',', default_values_t = PolicyKind::ALL)]
    pub policies: Vec<PolicyKind>,
    /// Virtual seconds each point is simulated
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub duration: f64,
    /// Seed of every point
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads to simulate on (default: one per core)
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Directory for sweep.csv, sweep.json and sweep-<N>pcpus.svg
    #[arg(long, value_name = "DIR", default_value = "sweep")]
    pub out: PathBuf,
}

impl SweepArgs {
    /// The grid these arguments describe.
    pub fn grid(&self) -> SweepGrid {
        SweepGrid {
            pcpus: self.pcpus.clone(),
            overcommit: self.overcommit.clone(),
            mixes: self.mixes.clone(),
            locks: self.locks.clone(),
            policies: self.policies.clone(),
            duration_s: self.duration,
            seed: self.seed,
        }
    }
}

pub fn sweep(args: &SweepArgs) -> anyhow::Result<()> {
    let grid = args.grid();
    let scenarios = grid.scenarios()?;

    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let bar = report::progress(scenarios.len(), "points");
    let next = AtomicUsize::new(0);
    let points: Mutex<Vec<Option<anyhow::Result<SweepResult>>>> =
        Mutex::new((0..scenarios.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let mut references = References::default();
                // SIGINT or SIGTERM: no new point is started.
                while stop::interrupted().is_none() {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((point, scenario)) = scenarios.get(index) else { break };
                    let SweepPoint { pcpus, overcommit, mix, locks, .. } = point;
                    bar.set_message(format!("{} {mix} {locks}, {pcpus} pCPUs {overcommit}x", scenario.policy));
                    let started = Instant::now();
                    let point = tandem_sim::simulate(scenario, &mut references, false).map(|outcome| {
                        SweepResult::of(point, &outcome.result, outcome.events, started.elapsed().as_secs_f64())
                    });
                    points.lock().expect("sweep results")[index] = Some(point);
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let interrupted = stop::interrupted();
    let points: Vec<SweepResult> = points
        .into_inner()
        .expect("sweep results")
        .into_iter()
        .filter_map(|point| {
            assert!(point.is_some() || interrupted.is_some(), "every point was simulated");
            point
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(signal) = interrupted {
        // What had finished, in files that say they are not the whole grid.
        std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
        report::sweep::write_csv(&args.out.join("sweep-incomplete.csv"), &points)?;
        report::write_json(&args.out.join("sweep-incomplete.json"), &points)?;
        eprintln!(
            "interrupted by {}: {} of {} points, in {}/sweep-incomplete.{{csv,json}}",
            signal_name(signal),
            points.len(),
            scenarios.len(),
            args.out.display()
        );
        return Ok(());
    }

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    report::sweep::write_csv(&args.out.join("sweep.csv"), &points)?;
    report::write_json(&args.out.join("sweep.json"), &points)?;
    for &pcpus in &args.pcpus {
        let path = args.out.join(format!("sweep-{pcpus}pcpus.svg"));
        report::sweep::plot(&path, pcpus, &grid, &points)?;
    }
    let events: u64 = points.iter().map(|p| p.events).sum();
    let wall: f64 = points.iter().map(|p| p.wall_s).sum();
    eprintln!(
        "{} points, {events} events in {wall:.1} s of simulation ({:.2} M events/s per thread); results in {}",
        points.len(),
        events as f64 / wall.max(1e-9) / 1e6,
        args.out.display()
    );
    Ok(())
}
