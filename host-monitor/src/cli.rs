//! The `tandem` command line.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use kvm_ioctls::Kvm;

use crate::bench::{self, BenchArgs};
use crate::image;
use crate::vm::{self, Outcome, RunReport, Vm, VmConfig};

#[derive(Debug, Parser)]
#[command(name = "tandem", version, about = "Runs paravirtual SMP unikernels under KVM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a guest and run one of its programs
    Run(RunArgs),
    /// Measure boot time and the hypercall round trip
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
#[command(after_help = exit_status_help())]
pub struct RunArgs {
    /// The guest program to run (the embedded guest has hello, hypercall, updown, fault, panic,
    /// hang, badcall)
    pub program: String,
    /// Number of VCPUs (1 to 64)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=pv_abi::MAX_VCPUS as i64))]
    pub vcpus: u32,
    /// Guest memory in MiB (even, 4 to 3072)
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub mem: u64,
    /// Guest kernel ELF to boot instead of the embedded one
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Stop the guest after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Print the exits of each VCPU, by kind, after the run
    #[arg(long)]
    pub stats: bool,
    /// Arguments for the program, after `--`
    #[arg(last = true, value_name = "KEY=VALUE")]
    pub args: Vec<String>,
}

fn exit_status_help() -> String {
    format!(
        "Exit status: the guest's exit code (0 = success; codes outside 0-255 give 1); {} if the guest \
         panicked, {} if it faulted or made a hypercall that cannot be answered, {} if it timed out; \
         1 for a monitor error (bad kernel image, no KVM), 2 for bad command-line arguments.",
        vm::STATUS_PANIC,
        vm::STATUS_FAULT,
        vm::STATUS_TIMEOUT
    )
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

impl RunArgs {
    /// The guest command line: the program name and its arguments.
    pub fn cmdline(&self) -> anyhow::Result<String> {
        for arg in &self.args {
            if !arg.contains('=') || arg.starts_with('=') || arg.contains(char::is_whitespace) {
                bail!("program argument {arg:?} is not key=value");
            }
        }
        if self.program.is_empty() || self.program.contains(char::is_whitespace) {
            bail!("program name {:?} must be one word", self.program);
        }
        Ok(std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" "))
    }

    pub fn config(&self) -> anyhow::Result<VmConfig> {
        Ok(VmConfig {
            name: self.program.clone(),
            vcpus: self.vcpus,
            mem_mib: self.mem,
            cmdline: self.cmdline()?,
            timeout: Duration::from_secs_f64(self.timeout),
        })
    }
}

/// Opens /dev/kvm with an error that says what to check.
pub fn open_kvm() -> anyhow::Result<Kvm> {
    Kvm::new().context("cannot open /dev/kvm (tandem needs KVM: check that /dev/kvm exists and is readable and writable)")
}

/// Boots the configured guest and runs it to its outcome.
pub fn run_vm(args: &RunArgs) -> anyhow::Result<RunReport> {
    let config = args.config()?;
    let image: Cow<'_, [u8]> = match &args.kernel {
        Some(path) => Cow::Owned(image::read(path)?),
        None => Cow::Borrowed(image::DEFAULT_GUEST),
    };
    let kvm = open_kvm()?;
    Vm::new(&kvm, &config, &image)?.run()
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let report = run_vm(args)?;
    for record in &report.reports {
        println!("[{} report] {record}", args.program);
    }
    if args.stats {
        print_exit_counters(&report);
    }
    eprintln!("tandem: {} ({:.1} ms)", report.outcome.describe(&args.program), report.elapsed.as_secs_f64() * 1e3);
    if let Outcome::TimedOut(_) = report.outcome {
        let states: Vec<String> = report.exits.iter().enumerate().map(|(id, c)| format!("VCPU {id} {}", c.stopped)).collect();
        eprintln!("tandem: when stopped: {}", states.join(", "));
    }
    Ok(ExitCode::from(report.outcome.status()))
}

fn print_exit_counters(report: &RunReport) {
    println!("{:<6} {:>8} by kind", "vcpu", "exits");
    for (id, counters) in report.exits.iter().enumerate() {
        let kinds: Vec<String> = pv_abi::hypercall::Hypercall::ALL
            .iter()
            .zip(counters.hypercalls)
            .filter(|(_, n)| *n > 0)
            .map(|(call, n)| format!("{}={n}", call.name()))
            .chain((counters.other > 0).then(|| format!("other={}", counters.other)))
            .collect();
        println!("{id:<6} {:>8} {}", counters.total(), kinds.join(" "));
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => run(args),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|error| {
        eprintln!("tandem: error: {error:#}");
        ExitCode::FAILURE
    })
}
