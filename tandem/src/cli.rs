//! The `tandem` command line.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sched::PolicyKind;
use tandem_core::guest::{self, Kernel, VmConfig};
use tandem_core::net::NetConfig;
use tandem_core::results::{References, ScenarioResult};
use tandem_core::scenario::{DEFAULT_MEM_MIB, Scenario, Target};
use tandem_kvm::outcome::{interrupted_status, signal_name};
use tandem_kvm::vm::{self, Outcome, RunReport};
use tandem_kvm::{image, live, open_kvm, runner, stop};
use workloads::Record;

use crate::bench::{self, BenchCommand};
use crate::compare::{self, CompareArgs};
use crate::interrupt::{self, OnSignal};
use crate::report;
use crate::scaffold;
use crate::sweep::{self, SweepArgs};
use crate::top::{self, TopArgs};
use crate::validate::{self, ValidateArgs};

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Runs paravirtual SMP unikernels under KVM",
    long_about = "Runs paravirtual SMP unikernels under KVM. Without a command, compares the VCPU \
                  scheduling policies with spinning and paravirtual locks on a lock-heavy and a \
                  barrier-synchronized workload at 2x overcommit (`tandem compare --workloads \
                  locks,nbody --overcommit 2 --runs 1`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a guest and run a workload or another of its programs
    Run(RunArgs),
    /// Run a workload on host threads: the bare-metal baseline
    Native(NativeArgs),
    /// Run the VMs of a scenario file together under a VCPU scheduling policy
    Scenario(ScenarioArgs),
    /// Run scenarios under each policy, side by side, and compare each VM's result to its ideal
    Compare(CompareArgs),
    /// Simulate a scenario file in virtual time (same policies, modelled guests)
    Sim(SimArgs),
    /// Run scenarios on KVM and in the simulator, and compare each VM's results
    Validate(ValidateArgs),
    /// Watch a running tandem's VMs and VCPUs live (%RUN, %RDY, %CSTP, %WAIT), or write them as
    /// CSV with -b
    Top(TopArgs),
    /// Simulate a grid of pCPU counts, overcommit ratios, workload mixes, lock families and
    /// policies; write CSV, JSON and SVG plots
    Sweep(SweepArgs),
    /// List the workloads and their parameters
    Workloads,
    /// Lay out a guest application crate of your own in DIR, on tandem-rt from this checkout
    New(NewArgs),
    /// Build a guest application crate (release); the ELF's path is the last line of stdout
    Build(BuildArgs),
    /// Measure boot time and hypercalls, or workloads in the guest against native
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
#[command(after_help = exit_status_help())]
pub struct RunArgs {
    /// The guest program: a workload (see `tandem workloads`) or one of hello, hypercall,
    /// updown, selftest, fault, panic, hang, badcall; with --kernel, the program name that
    /// kernel gets (default: the kernel file's name)
    #[arg(required_unless_present_any = ["list", "kernel"])]
    pub program: Option<String>,
    /// List the workloads and their parameters, and exit
    #[arg(long)]
    pub list: bool,
    /// Number of VCPUs (1 to 64)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=pv_abi::MAX_VCPUS as i64))]
    pub vcpus: u32,
    /// Guest memory in MiB (even, 4 to 3072)
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEM_MIB)]
    pub mem: u64,
    /// Guest kernel ELF to boot instead of the embedded one (its arguments other than
    /// locks=, pv_yield_us and pv_block_us go to it unchecked)
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// Stop the guest after this many seconds (0: never, for a server that ends on a request)
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// The VM's network, in QEMU's words: user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...
    /// (user-mode, the host address 127.0.0.1 by default), tap,ifname=NAME[,ip=A.B.C.D/N]
    /// [,gateway=A.B.C.D] (an existing TAP device), or none
    #[arg(long, value_name = "BACKEND", default_value = "user", value_parser = parse_net)]
    pub net: NetArg,
    /// Print each VCPU's %RUN, %RDY, %WAIT and exits by kind (and the NIC's traffic) after the
    /// run
    #[arg(long)]
    pub stats: bool,
    /// Write the result records the guest reported to FILE, as a JSON array
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Arguments for the program, after `--` (every guest also takes locks=spin|pv, pv_yield_us,
    /// pv_block_us)
    #[arg(last = true, value_name = "KEY=VALUE")]
    pub args: Vec<String>,
}

/// What `tandem scenario` and `tandem sim` may change of a scenario file, and where they
/// write.
#[derive(Debug, Args)]
pub struct ScenarioOptions {
    /// Use this policy instead of the file's: host, credit, cosched-strict, cosched-relaxed,
    /// dynamic
    #[arg(long)]
    pub policy: Option<PolicyKind>,
    /// Use N pCPUs instead of the file's (on KVM: the first N host CPUs)
    #[arg(long, value_name = "N")]
    pub pcpus: Option<usize>,
    /// Write the results (tables' content, dispatcher figures) to FILE as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write which VCPU ran on which pCPU when to FILE, as Chrome trace-event JSON (Perfetto)
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 if every VM exited with 0 (its self-checks passed), 1 otherwise or for a \
    monitor error, 2 for bad command-line arguments.")]
pub struct ScenarioArgs {
    /// The scenario (TOML): pCPUs, policy, VMs (see scenarios/ for examples)
    pub file: PathBuf,
    #[command(flatten)]
    pub options: ScenarioOptions,
    /// Skip the reference runs (each VM alone at 1x) that give the ideal results
    #[arg(long)]
    pub no_reference: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "The scenario file may have a [sim] table: scale, duration_s, seed, costs (\"measured\" or \
    \"vmx\"), exit_us, kick_us, up_us, switch_us, preempt_us, timer_us, host_tick_us, boot_us, grain_us, jitter (see the \
    README). The same file and seed give the same output, byte for byte; the wall time and event rate go to stderr.")]
pub struct SimArgs {
    /// The scenario (TOML), as for `tandem scenario`, plus an optional [sim] table
    pub file: PathBuf,
    #[command(flatten)]
    pub options: ScenarioOptions,
    /// Seed instead of the file's
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The directory to create (or an empty one); its name is the application's
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The application crate
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct NativeArgs {
    /// The workload (see `tandem workloads`)
    pub workload: String,
    /// CPUs the workload counts as its own (its default thread count); all host CPUs if unset
    #[arg(long)]
    pub cpus: Option<usize>,
    /// Write the result record to FILE, as a JSON array of one
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The workload's parameters, after `--`
    #[arg(last = true, value_name = "KEY=VALUE")]
    pub args: Vec<String>,
}

fn exit_status_help() -> String {
    format!(
        "Exit status: the guest's exit code (0 = success, 1 = a workload's self-check failed, 64 = bad \
         program arguments; codes outside 0-255 give 1); {} if the guest panicked, {} if it faulted or \
         made a hypercall that cannot be answered, {} if it timed out; 1 for a monitor error (bad \
         kernel image, no KVM), 2 for bad command-line arguments.",
        vm::STATUS_PANIC,
        vm::STATUS_FAULT,
        vm::STATUS_TIMEOUT
    )
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds (0 for no timeout)")),
    }
}

/// A `--net` value: a network, or none.
#[derive(Clone, Debug)]
pub struct NetArg(pub Option<NetConfig>);

fn parse_net(text: &str) -> Result<NetArg, String> {
    NetConfig::parse(text).map(NetArg).map_err(|error| format!("{error:#}"))
}

impl RunArgs {
    /// The program named, or the kernel file's name.
    fn program(&self) -> String {
        let from_kernel = || self.kernel.as_ref()?.file_stem().map(|stem| stem.to_string_lossy().into_owned());
        self.program.clone().or_else(from_kernel).expect("clap requires a program unless --list or --kernel")
    }

    pub fn config(&self, echo_console: bool) -> anyhow::Result<VmConfig> {
        let kernel = if self.kernel.is_some() { Kernel::User } else { Kernel::Embedded };
        let program = self.program();
        Ok(VmConfig {
            name: program.clone(),
            vcpus: self.vcpus,
            mem_mib: self.mem,
            cmdline: guest::cmdline(&program, &self.args, kernel)?,
            timeout: if self.timeout == 0.0 { Duration::MAX } else { Duration::from_secs_f64(self.timeout) },
            echo_console,
            net: self.net.0.clone(),
        })
    }
}

/// Boots the configured guest and runs it to its outcome.
fn run_vm(args: &RunArgs, echo_console: bool) -> anyhow::Result<RunReport> {
    let config = args.config(echo_console)?;
    let image: Cow<'_, [u8]> = match &args.kernel {
        Some(path) => Cow::Owned(image::read(path)?),
        None => Cow::Borrowed(image::DEFAULT_GUEST),
    };
    vm::run_alone(&open_kvm()?, &config, &image)
}

/// `text` cut to at most `max` characters, saying how long it was.
fn abbreviate(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((cut, _)) => Cow::Owned(format!("{}... ({} bytes)", &text[..cut], text.len())),
        None => Cow::Borrowed(text),
    }
}

fn write_json(path: &Path, records: &[Record]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(records).context("encoding records")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn run_program(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        list_workloads();
        return Ok(ExitCode::SUCCESS);
    }
    let program = args.program();
    let report = run_vm(args, true)?;
    // Workload records were summarized on the guest console; show other records as they are.
    let mut records = Vec::new();
    for text in &report.reports {
        match Record::from_json(text) {
            Ok(record) => records.push(record),
            Err(_) => println!("[{program} report] {}", abbreviate(text, 400)),
        }
    }
    if let Some(path) = &args.json {
        write_json(path, &records)?;
    }
    if args.stats {
        print_vcpu_stats(&report);
        print_nic_stats(&report);
    }
    eprintln!("tandem: {} ({:.1} ms)", report.outcome.describe(&program), report.elapsed.as_secs_f64() * 1e3);
    if let Outcome::TimedOut(_) = report.outcome {
        let states: Vec<String> =
            report.vcpus.iter().enumerate().map(|(id, c)| format!("VCPU {id} {}", c.stopped)).collect();
        eprintln!("tandem: when stopped: {}", states.join(", "));
    }
    Ok(ExitCode::from(report.outcome.status()))
}

fn scenario(args: &ScenarioArgs) -> anyhow::Result<ExitCode> {
    let options = &args.options;
    let scenario = Scenario::load(&args.file)?.with(options.policy, options.pcpus)?;
    let kvm = open_kvm()?;
    let mut references = References::default();
    if !args.no_reference {
        runner::measure_references(&kvm, image::DEFAULT_GUEST, &scenario, &mut references, true)?;
    }
    let mut result =
        runner::run_scenario(&kvm, image::DEFAULT_GUEST, &scenario, (!args.no_reference).then_some(&references))?;
    result.interrupted_by = stop::interrupted().map(signal_name);
    print!("{}", report::scenario::table(&result));
    write_outputs(options, &scenario, &result)?;
    let all_ok = result.vms.iter().all(|vm| vm.ok);
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn sim(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let options = &args.options;
    let mut scenario = Scenario::load_for(&args.file, Target::Sim)?.with_sim(options.policy, options.pcpus)?;
    if let Some(seed) = args.seed {
        scenario.sim.seed = seed;
    }
    let started = Instant::now();
    let outcome = tandem_sim::simulate(&scenario, &mut References::default(), options.trace.is_some())?;
    let wall = started.elapsed().as_secs_f64();
    print!("{}", report::scenario::table(&outcome.result));
    eprintln!(
        "simulated {:.2} s in {wall:.2} s of wall time: {} events, {:.2} M events/s",
        outcome.result.elapsed_s,
        outcome.events,
        outcome.events as f64 / wall.max(1e-9) / 1e6
    );
    write_outputs(options, &scenario, &outcome.result)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a scenario's results and trace where `options` say.
fn write_outputs(options: &ScenarioOptions, scenario: &Scenario, result: &ScenarioResult) -> anyhow::Result<()> {
    if let Some(path) = &options.json {
        report::write_json(path, result)?;
    }
    if let Some(path) = &options.trace {
        report::trace::write_trace(path, scenario, result)?;
    }
    Ok(())
}

fn native(args: &NativeArgs) -> anyhow::Result<ExitCode> {
    let record =
        workloads::native::run(&args.workload, args.cpus, &args.args).with_context(|| args.workload.clone())?;
    println!("{}", record.summary());
    if let Some(path) = &args.json {
        write_json(path, std::slice::from_ref(&record))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let name = scaffold::new(&args.dir)?;
    let dir = args.dir.display();
    println!("created the guest application {name} in {dir}; build it and boot it with");
    println!("    tandem build {dir}");
    println!("    tandem run --kernel {dir}/target/x86_64-unknown-linux-gnu/release/{name} --vcpus 2 -- locks=pv");
    Ok(ExitCode::SUCCESS)
}

fn list_workloads() {
    for info in workloads::WORKLOADS {
        println!("{:<10} {}", info.name, info.about);
        print_params(info.params);
    }
    println!("In the guest, every workload also takes:");
    print_params(workloads::GUEST_PARAMS);
}

fn print_params(params: &[workloads::ParamSpec]) {
    for param in params {
        let values = param.choices.map_or_else(|| "N".to_owned(), |choices| choices.join("|"));
        let syntax = format!("{}={values}", param.name);
        println!("    {syntax:<20} default {:<8} {}", param.default, param.help);
    }
}

/// Per VCPU: RUN, RDY and WAIT as percentages of the run, and exits by kind.
fn print_vcpu_stats(report: &RunReport) {
    let percent = |ns: u64| ns as f64 * 100.0 / report.elapsed.as_nanos().max(1) as f64;
    println!("{:<6} {:>6} {:>6} {:>6} {:>8} by kind", "vcpu", "%RUN", "%RDY", "%WAIT", "exits");
    for (id, counters) in report.vcpus.iter().enumerate() {
        let times = counters.times;
        let kinds: Vec<String> = pv_abi::hypercall::Hypercall::ALL
            .iter()
            .zip(counters.hypercalls)
            .filter(|(_, n)| *n > 0)
            .map(|(call, n)| format!("{}={n}", call.name()))
            .chain((counters.other > 0).then(|| format!("other={}", counters.other)))
            .collect();
        println!(
            "{id:<6} {:>6.1} {:>6.1} {:>6.1} {:>8} {}",
            percent(times.run_ns),
            percent(times.ready_ns),
            percent(times.wait_ns),
            counters.total(),
            kinds.join(" ")
        );
    }
}

/// The NIC's traffic each way, its notifications and kicks, and the VM's exits per frame.
fn print_nic_stats(report: &RunReport) {
    let Some(nic) = report.net else { return };
    let exits: u64 = report.vcpus.iter().map(|vcpu| vcpu.total()).sum();
    let frames = nic.tx_packets + nic.rx_packets;
    println!(
        "nic    tx {} frames {} bytes ({} dropped; {} notifications to the backend), \
         rx {} frames {} bytes ({} dropped; {} kicks to the guest), backend slept {} times{}",
        nic.tx_packets,
        nic.tx_bytes,
        nic.tx_dropped,
        nic.notifications,
        nic.rx_packets,
        nic.rx_bytes,
        nic.rx_dropped,
        nic.kicks,
        nic.sleeps,
        if frames == 0 { String::new() } else { format!(", {:.3} exits per frame", exits as f64 / frames as f64) }
    );
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGINT and SIGTERM stop the VMs, and a command that runs them (or a sweep's points)
    // ends with what had finished; a simulation ends at once with 130 or 143; the others
    // are ended by the signal, as without a handler (`top` among them: it stops nothing, and
    // its CSV is flushed after each sample).
    let on_signal = match &cli.command {
        None
        | Some(
            Command::Run(_) | Command::Scenario(_) | Command::Compare(_) | Command::Validate(_) | Command::Sweep(_),
        ) => Some(OnSignal::Stop),
        Some(Command::Sim(_)) => Some(OnSignal::Exit),
        Some(_) => None,
    };
    let watch = match on_signal.map(interrupt::watch).transpose() {
        Ok(watch) => watch,
        Err(error) => {
            eprintln!("tandem: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let _live = live_socket(cli.command.as_ref());
    let result = match &cli.command {
        None => compare::compare(&CompareArgs::quick()).map(|()| ExitCode::SUCCESS),
        Some(command) => dispatch(command),
    };
    drop(watch);
    if let Some(signal) = stop::interrupted() {
        // An error now is the interruption's doing (a reference run stopped, say).
        let why = result.err().map(|error| format!(": {error:#}")).unwrap_or_default();
        eprintln!("tandem: interrupted by {}{why}", signal_name(signal));
        return ExitCode::from(interrupted_status(signal));
    }
    result.unwrap_or_else(|error| {
        eprintln!("tandem: error: {error:#}");
        ExitCode::FAILURE
    })
}

/// The live socket `tandem top` reads, served by the commands that run VMs; one that cannot be
/// served is said on stderr and the command runs without it.
fn live_socket(command: Option<&Command>) -> Option<live::LiveSocket> {
    let name = match command {
        None | Some(Command::Compare(_)) => "compare",
        Some(Command::Run(_)) => "run",
        Some(Command::Scenario(_)) => "scenario",
        Some(Command::Validate(_)) => "validate",
        Some(Command::Bench(_)) => "bench",
        Some(_) => return None,
    };
    live::serve(name).inspect_err(|error| eprintln!("tandem: no live view: {error:#}")).ok()
}

fn dispatch(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run_program(args),
        Command::Native(args) => native(args),
        Command::Scenario(args) => scenario(args),
        Command::Compare(args) => compare::compare(args).map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => sim(args),
        Command::Validate(args) => validate::validate(args).map(|()| ExitCode::SUCCESS),
        Command::Sweep(args) => sweep::sweep(args).map(|()| ExitCode::SUCCESS),
        Command::Top(args) => top::top(args).map(|()| ExitCode::SUCCESS),
        Command::Workloads => {
            list_workloads();
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(command) => bench::bench(command).map(|()| ExitCode::SUCCESS),
        Command::New(args) => new(args),
        Command::Build(args) => {
            println!("{}", scaffold::build(&args.dir)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
