//! `tandem sweep`: the simulator over a grid of pCPU counts, overcommit ratios, workload
//! mixes, spinlock families and policies, on every core, written out as CSV, JSON and one
//! SVG per pCPU count (result / ideal against overcommit, a line per policy).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use sched::PolicyKind;
use serde::Serialize;

use tandem_core::experiment::SweepPoint;
use tandem_core::results::References;
use tandem_core::scenario::MAX_SIM_PCPUS;

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
    #[arg(long, value_delimiter = ',', default_values = ["spin", "pv"], value_parser = ["spin", "pv"])]
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

/// One point of the grid.
#[derive(Debug, Clone, Serialize)]
struct Point {
    pcpus: u32,
    overcommit: f64,
    mix: String,
    locks: String,
    policy: String,
    vms: usize,
    vcpus: u32,
    /// Mean over the VMs of result / ideal.
    mean_ratio: f64,
    /// The worst VM's result / ideal.
    min_ratio: f64,
    fairness: f64,
    utilization: f64,
    events: u64,
    wall_s: f64,
}

pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be more than 0 and at most 3600 seconds");
    }
    if let Some(bad) = args.overcommit.iter().find(|o| !(**o > 0.0 && **o <= 64.0)) {
        bail!("--overcommit {bad}: ratios are more than 0 and at most 64");
    }
    if let Some(bad) = args.pcpus.iter().find(|p| **p == 0 || **p as usize > MAX_SIM_PCPUS) {
        bail!("--pcpus {bad}: 1 to {} pCPUs", MAX_SIM_PCPUS);
    }
    let mut grid = Vec::new();
    for &pcpus in &args.pcpus {
        for &overcommit in &args.overcommit {
            for mix in &args.mixes {
                for locks in &args.locks {
                    let point =
                        SweepPoint { pcpus, overcommit, mix, locks, duration_s: args.duration, seed: args.seed };
                    let scenario = point.scenario()?;
                    for &policy in &args.policies {
                        if let Ok(scenario) = scenario.with_sim(Some(policy), None) {
                            grid.push((pcpus, overcommit, mix.clone(), locks.clone(), scenario));
                        }
                    }
                }
            }
        }
    }

    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let bar = ProgressBar::new(grid.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} points, {eta} left {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let next = AtomicUsize::new(0);
    let points: Mutex<Vec<Option<anyhow::Result<Point>>>> = Mutex::new((0..grid.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let mut references = References::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pcpus, overcommit, mix, locks, scenario)) = grid.get(index) else { break };
                    bar.set_message(format!("{} {mix} {locks}, {pcpus} pCPUs {overcommit}x", scenario.policy));
                    let started = Instant::now();
                    let point = tandem_sim::simulate(scenario, &mut references, false).map(|outcome| {
                        let ratios: Vec<f64> = outcome.result.vms.iter().filter_map(|vm| vm.ratio).collect();
                        Point {
                            pcpus: *pcpus,
                            overcommit: *overcommit,
                            mix: mix.clone(),
                            locks: locks.clone(),
                            policy: scenario.policy.name().to_owned(),
                            vms: scenario.vms.len(),
                            vcpus: scenario.vms.iter().map(|vm| vm.vcpus).sum(),
                            mean_ratio: ratios.iter().sum::<f64>() / ratios.len().max(1) as f64,
                            min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
                            fairness: outcome.result.fairness.unwrap_or(f64::NAN),
                            utilization: outcome.result.utilization,
                            events: outcome.events,
                            wall_s: started.elapsed().as_secs_f64(),
                        }
                    });
                    points.lock().expect("sweep results")[index] = Some(point);
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let points: Vec<Point> = points
        .into_inner()
        .expect("sweep results")
        .into_iter()
        .map(|point| point.expect("every point was simulated"))
        .collect::<anyhow::Result<_>>()?;

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    write_csv(&args.out.join("sweep.csv"), &points)?;
    report::write_json(&args.out.join("sweep.json"), &points)?;
    for &pcpus in &args.pcpus {
        let path = args.out.join(format!("sweep-{pcpus}pcpus.svg"));
        plot(&path, pcpus, args, &points)?;
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

fn write_csv(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let mut text = String::from(
        "pcpus,overcommit,mix,locks,policy,vms,vcpus,mean_ratio,min_ratio,fairness,utilization,events,wall_s\n",
    );
    for p in points {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.3}",
            p.pcpus,
            p.overcommit,
            p.mix,
            p.locks,
            p.policy,
            p.vms,
            p.vcpus,
            p.mean_ratio,
            p.min_ratio,
            p.fairness,
            p.utilization,
            p.events,
            p.wall_s
        );
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// One SVG for `pcpus`: a panel per mix and lock family, mean result / ideal against
/// overcommit, a line per policy.
fn plot(path: &Path, pcpus: u32, args: &SweepArgs, points: &[Point]) -> anyhow::Result<()> {
    let (rows, cols) = (args.mixes.len(), args.locks.len());
    let root = SVGBackend::new(path, (420 * cols as u32, 300 * rows as u32 + 40)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let root =
            root.titled(&format!("{pcpus} pCPUs: mean result / ideal per VM (simulated)"), ("sans-serif", 18))?;
        let panels = root.split_evenly((rows, cols));
        let x_max = args.overcommit.iter().copied().fold(1.0, f64::max);
        let x_min = args.overcommit.iter().copied().fold(x_max, f64::min);
        for (panel, (mix, locks)) in
            panels.iter().zip(args.mixes.iter().flat_map(|mix| args.locks.iter().map(move |locks| (mix, locks))))
        {
            let mine: Vec<&Point> =
                points.iter().filter(|p| p.pcpus == pcpus && &p.mix == mix && &p.locks == locks).collect();
            let top = mine.iter().map(|p| p.mean_ratio).filter(|r| r.is_finite()).fold(1.0, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{mix}, {locks} locks"), ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(x_min - 0.1..x_max + 0.1, 0.0..top)?;
            chart.configure_mesh().x_desc("overcommit (VCPUs / pCPUs)").y_desc("result / ideal").draw()?;
            for (k, policy) in args.policies.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let mut line: Vec<(f64, f64)> =
                    mine.iter().filter(|p| p.policy == policy.name()).map(|p| (p.overcommit, p.mean_ratio)).collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(policy.name())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2)));
                chart.draw_series(line.into_iter().map(|xy| Circle::new(xy, 3, color.filled())))?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}
