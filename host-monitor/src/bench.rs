//! `tandem bench`: boot time (process start to guest exit) and the round trip of an empty
//! hypercall, measured side by side in one run. Medians over repeated runs: these machines
//! are shared and noisy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::cli::{RunArgs, run_vm};
use crate::vm::Outcome;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Boots per VCPU count
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// VCPU counts to boot with
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub vcpus: Vec<u32>,
}

/// Median, 10th and 90th percentile of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

impl Summary {
    /// Summarizes a non-empty sample.
    pub fn of(mut sample: Vec<f64>) -> Summary {
        assert!(!sample.is_empty(), "empty sample");
        sample.sort_by(f64::total_cmp);
        let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
        Summary { median: at(0.5), p10: at(0.1), p90: at(0.9) }
    }
}

/// Time from spawning `tandem run hello --vcpus N` to its exit.
fn boot_time(vcpus: u32) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let started = Instant::now();
    let status = Command::new(exe)
        .args(["run", "hello", "--vcpus", &vcpus.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot start tandem")?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("tandem run hello --vcpus {vcpus} failed with {status}");
    }
    Ok(elapsed)
}

/// The guest's own measurement of an empty hypercall, in ns.
fn hypercall_round_trip() -> anyhow::Result<f64> {
    let args = RunArgs {
        program: "hypercall".into(),
        vcpus: 1,
        mem: 128,
        kernel: None,
        timeout: 60.0,
        stats: false,
        args: vec!["batches=21".into(), "calls=200".into()],
    };
    let report = run_vm(&args)?;
    if report.outcome != Outcome::Exited(0) {
        bail!("{}", report.outcome.describe("hypercall"));
    }
    let record = report.reports.first().context("the hypercall program reported nothing")?;
    let value: serde_json::Value = serde_json::from_str(record).context("bad report record")?;
    value["median_ns"].as_f64().context("report lacks median_ns")
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    println!("boot time, process start to guest exit (`tandem run hello`), {} runs each:", args.runs);
    for &vcpus in &args.vcpus {
        let times = (0..args.runs)
            .map(|_| boot_time(vcpus).map(|t| t.as_secs_f64() * 1e3))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let s = Summary::of(times);
        println!("  {vcpus:>2} VCPU(s): median {:.2} ms  (p10 {:.2}, p90 {:.2})", s.median, s.p10, s.p90);
    }
    let ns = hypercall_round_trip()?;
    println!("empty hypercall round trip (guest loop, median of 21 batches of 200): {:.1} us", ns / 1e3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_picks_order_statistics() {
        let s = Summary::of((1..=11).rev().map(f64::from).collect());
        assert_eq!(s, Summary { median: 6.0, p10: 2.0, p90: 10.0 });
        assert_eq!(Summary::of(vec![3.0]).median, 3.0);
    }
}
