//! `tandem bench`: measurements taken side by side in one run, reported as medians over
//! repeated runs (these machines are shared and noisy).
//! - `boot`: process start to guest exit, and the round trip of an empty hypercall;
//! - `workloads`: each workload in a guest against the same code on host threads;
//! - [`net`]: the guest's TCP echo server against a native one;
//! - [`kv`]: `redis-benchmark` against the guest's `kv` server and against `redis-server`;
//! - [`soak`]: many VMs and a long run of grant changes in one process: what it keeps;
//! - [`live`]: what the live socket costs the VMs, read and unread, side by side.
//!
//! [`server`] boots the guest servers of the last two.

mod kv;
mod live;
mod net;
mod server;
mod soak;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use workloads::Record;

use tandem_core::guest::{self, Kernel, VmConfig};
use tandem_core::scenario::DEFAULT_MEM_MIB;
use tandem_core::stats::Summary;
use tandem_kvm::vm::{self, Outcome};
use tandem_kvm::{image, open_kvm};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot time (process start to guest exit) and the empty hypercall round trip
    Boot(BootArgs),
    /// Every workload in a guest and natively, interleaved, with the guest/native ratio
    Workloads(WorkloadArgs),
    /// TCP echo through the guest's network against a native echo server: latency,
    /// requests/s, bulk throughput, exits per request
    Net(net::NetArgs),
    /// redis-benchmark against the guest's kv server and against redis-server on the same
    /// cores: requests/s, p50/p99, exits per request
    Kv(kv::KvArgs),
    /// Many VMs booted and ended in one process, then a scenario whose grant changes every
    /// few ms run for a while: open fds, resident memory and threads as it goes
    Soak(soak::SoakArgs),
    /// The scenarios run with a reader of the live socket and without, interleaved against
    /// the same references: each VM's median ratio to its ideal both ways
    Live(live::LiveArgs),
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Boots per VCPU count
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// VCPU counts to boot with
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub vcpus: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Runs of each workload in each place
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// VCPUs of the guest, and CPUs (threads) of the native run
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Workloads to run (all by default)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn bench(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Boot(args) => boot(args),
        BenchCommand::Workloads(args) => workloads(args),
        BenchCommand::Net(args) => net::net(args),
        BenchCommand::Kv(args) => kv::kv(args),
        BenchCommand::Soak(args) => soak::soak(args),
        BenchCommand::Live(args) => live::live(args),
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

/// Runs a guest quietly and returns the records it reported.
fn guest_records(program: &str, vcpus: u32, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let config = VmConfig {
        name: program.to_owned(),
        vcpus,
        mem_mib: DEFAULT_MEM_MIB,
        cmdline: guest::cmdline(program, &args, Kernel::Embedded)?,
        timeout: Duration::from_secs(300),
        echo_console: false,
        net: None,
    };
    let report = vm::run_alone(&open_kvm()?, &config, image::DEFAULT_GUEST)?;
    if report.outcome != Outcome::Exited(0) {
        bail!("{}", report.outcome.describe(program));
    }
    Ok(report.reports)
}

/// The guest's own measurement of an empty hypercall, in ns.
fn hypercall_round_trip() -> anyhow::Result<f64> {
    let reports = guest_records("hypercall", 1, &["batches=21", "calls=200"])?;
    let record = reports.first().context("the hypercall program reported nothing")?;
    let value: serde_json::Value = serde_json::from_str(record).context("bad report record")?;
    value["median_ns"].as_f64().context("report lacks median_ns")
}

fn boot(args: &BootArgs) -> anyhow::Result<()> {
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

fn workloads(args: &WorkloadArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let names: Vec<&str> = if args.only.is_empty() {
        // A served workload's baseline is another server's (`tandem bench kv`).
        workloads::WORKLOADS.iter().filter(|w| !w.served).map(|w| w.name).collect()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    let vcpus = args.vcpus;
    println!(
        "guest ({vcpus} VCPUs) vs native ({vcpus} threads), default parameters, median of {} interleaved runs:",
        args.runs
    );
    println!("{:<10} {:>16} {:>16} {:>12} {:>8}", "workload", "native", "guest", "unit/s", "ratio");
    for name in names {
        let (mut native, mut guest) = (Vec::new(), Vec::new());
        let mut checksums = Vec::new();
        let mut unit = String::new();
        for _ in 0..args.runs {
            let record = workloads::native::run(name, Some(vcpus as usize), &[]).with_context(|| name.to_owned())?;
            checksums.push(record.checksum);
            unit.clone_from(&record.unit);
            native.push(record.rate());
            let reports = guest_records(name, vcpus, &[])?;
            let record = Record::from_json(reports.first().context("the workload reported nothing")?)?;
            checksums.push(record.checksum);
            guest.push(record.rate());
        }
        let (native, guest) = (Summary::of(native).median, Summary::of(guest).median);
        let same = if checksums.windows(2).all(|w| w[0] == w[1]) { "" } else { "  (checksums differ)" };
        println!("{name:<10} {native:>16.1} {guest:>16.1} {unit:>12} {:>8.3}{same}", guest / native);
    }
    Ok(())
}
