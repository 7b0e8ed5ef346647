//! Soak: VMs booted and ended one after another in one monitor process, then a scenario run
//! over and over for a while with its VCPU grant changing every few milliseconds. Open file
//! descriptors, resident memory and threads are sampled as it goes: they must stay flat. Each
//! guest checks its own threads (`phases` checks that every thread ran in every parallel
//! phase), so a run that ends well lost none.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use sched::{MS, PolicyKind};
use tandem_core::guest::{self, Kernel, VmConfig};
use tandem_core::net::NetConfig;
use tandem_core::scenario::{DEFAULT_MEM_MIB, Scenario, Target, VmPlan};
use tandem_core::sim_config::SimConfig;
use tandem_kvm::vm::{self, Outcome};
use tandem_kvm::{image, open_kvm, runner};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// VMs to boot and end one after another (2 VCPUs each, with a NIC)
    #[arg(long, default_value_t = 1000)]
    pub vms: u32,
    /// Minutes to run the scenario whose grant changes every few ms, over and over (0: none)
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
}

/// What the process holds at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

impl Sample {
    fn now() -> anyhow::Result<Sample> {
        let fds = std::fs::read_dir("/proc/self/fd").context("cannot list /proc/self/fd")?.count();
        let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find_map(|line| line.strip_prefix(name)).context("no such field")?;
            Ok(line.split_whitespace().next().context("empty field")?.parse()?)
        };
        Ok(Sample { fds, rss_kib: field("VmRSS:")?, threads: field("Threads:")? })
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fds, {:.1} MiB resident, {} threads", self.fds, self.rss_kib as f64 / 1024.0, self.threads)
    }
}

pub fn soak(args: &SoakArgs) -> anyhow::Result<()> {
    if args.vms > 0 {
        boots(args.vms)?;
    }
    if args.minutes > 0.0 {
        grant_changes(Duration::from_secs_f64(args.minutes * 60.0))?;
    }
    Ok(())
}

/// Boots `count` 2-VCPU VMs running `hello`, one after another.
fn boots(count: u32) -> anyhow::Result<()> {
    let kvm = open_kvm()?;
    let config = VmConfig {
        name: "hello".to_owned(),
        vcpus: 2,
        mem_mib: DEFAULT_MEM_MIB,
        cmdline: guest::cmdline("hello", &[], Kernel::Embedded)?,
        timeout: Duration::from_secs(30),
        echo_console: false,
        net: Some(NetConfig::user()),
    };
    let mut first = None;
    let started = Instant::now();
    for n in 1..=count {
        let report = vm::run_alone(&kvm, &config, image::DEFAULT_GUEST)?;
        if report.outcome != Outcome::Exited(0) {
            bail!("boot {n}: {}", report.outcome.describe("hello"));
        }
        // After the first VM, which sets up what the process keeps (the guest image, pools).
        if n == 1 {
            first = Some(Sample::now()?);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let first = first.context("no VM booted")?;
    println!(
        "{count} VMs (2 VCPUs, a NIC) booted and ended one after another in {elapsed:.1} s, {:.1} a second",
        f64::from(count) / elapsed
    );
    println!("  after the first: {first}");
    println!("  after the last:  {}", Sample::now()?);
    Ok(())
}

/// Runs a 4-VCPU `phases` VM on 2 pCPUs under `dynamic`, whose grant follows each 10 ms phase
/// (raised and lowered after 5 ms), over and over for `length`.
fn grant_changes(length: Duration) -> anyhow::Result<()> {
    let kvm = open_kvm()?;
    // A run is at most 100 s (5000 rounds of two phases), and the last one ends on time.
    let scenario = |rounds: u64| -> anyhow::Result<Scenario> {
        let rounds = rounds.clamp(1, 5000).to_string();
        let vm = VmPlan::new("phases", 4, "phases", &[("rounds", &rounds), ("phase_ms", "10")], "pv")?;
        let mut scenario =
            Scenario::build("soak.toml", Target::Host, 2, PolicyKind::Dynamic, 600.0, vec![vm], SimConfig::default())?;
        scenario.params.raise_after = 5 * MS;
        scenario.params.lower_after = 5 * MS;
        Ok(scenario)
    };
    println!(
        "a 4-VCPU phases VM (10 ms phases) on 2 pCPUs under dynamic, over and over for {:.0} s:",
        length.as_secs_f64()
    );
    let started = Instant::now();
    let (mut runs, mut changes) = (0, 0);
    let mut first = None;
    while started.elapsed() < length {
        let rounds = length.saturating_sub(started.elapsed()).as_millis() as u64 / 20;
        let result = runner::run_scenario(&kvm, image::DEFAULT_GUEST, &scenario(rounds)?, None)?;
        let vm = &result.vms[0];
        if !vm.ok {
            bail!("run {}: {}", runs + 1, vm.outcome);
        }
        runs += 1;
        changes += result.dispatch.reconfiguration_ns.count;
        let sample = Sample::now()?;
        println!(
            "  run {runs}: {} grant changes followed, p99 {:.0} us; {sample}",
            result.dispatch.reconfiguration_ns.count,
            result.dispatch.reconfiguration_ns.p99 as f64 / 1e3
        );
        first.get_or_insert(sample);
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "{runs} runs in {minutes:.1} minutes, {changes} grant changes followed ({:.0} a second), every run's threads checked",
        changes as f64 / (minutes * 60.0)
    );
    println!("  after the first run: {}", first.context("no run")?);
    println!("  after the last:      {}", Sample::now()?);
    Ok(())
}
