//! Scenario files: TOML read with spans, so that every error names the file, the line and
//! the key. The format is shown in the parent module's doc.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sched::{MS, Ns, Params, PolicyKind};
use serde::Deserialize;
use toml::Spanned;

use super::{DEFAULT_MEM_MIB, DEFAULT_TIMEOUT_S, DEFAULT_WEIGHT, MAX_SIM_PCPUS, Scenario, Target, VmPlan, vm_words};
use crate::sim_config::{Costs, SimConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    pcpus: Spanned<Pcpus>,
    #[serde(default = "default_timeout")]
    timeout_s: Spanned<f64>,
    policy: Spanned<PolicyTable>,
    vm: Spanned<Vec<Spanned<VmTable>>>,
    sim: Option<Spanned<SimTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimTable {
    scale: Option<Spanned<i64>>,
    duration_s: Option<Spanned<f64>>,
    seed: Option<Spanned<i64>>,
    costs: Option<Spanned<String>>,
    exit_us: Option<Spanned<f64>>,
    kick_us: Option<Spanned<f64>>,
    up_us: Option<Spanned<f64>>,
    switch_us: Option<Spanned<f64>>,
    preempt_us: Option<Spanned<f64>>,
    timer_us: Option<Spanned<f64>>,
    host_tick_us: Option<Spanned<f64>>,
    boot_us: Option<Spanned<f64>>,
    grain_us: Option<Spanned<f64>>,
    jitter: Option<Spanned<f64>>,
}

fn default_timeout() -> Spanned<f64> {
    Spanned::new(0..0, DEFAULT_TIMEOUT_S)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Pcpus {
    Count(i64),
    List(Vec<i64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    name: Spanned<String>,
    slice_ms: Option<Spanned<f64>>,
    accounting_ms: Option<Spanned<f64>>,
    skew_ms: Option<Spanned<f64>>,
    tick_ms: Option<Spanned<f64>>,
    raise_ms: Option<Spanned<f64>>,
    lower_ms: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmTable {
    name: Spanned<String>,
    vcpus: Spanned<i64>,
    weight: Option<Spanned<i64>>,
    cap: Option<Spanned<i64>>,
    workload: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    args: Option<Spanned<BTreeMap<String, toml::Value>>>,
    locks: Option<Spanned<String>>,
    mem_mib: Option<Spanned<i64>>,
    start_delay_ms: Option<Spanned<i64>>,
}

/// What is wrong with a scenario file, and where.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read scenario {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Not TOML, or not the scenario's shape (an unknown or missing key).
    #[error("{}{}: {message}", path.display(), at(*line))]
    Syntax { path: PathBuf, line: Option<usize>, message: String },
    /// A value out of its range, or one that does not fit with the others.
    #[error("{}{}: `{key}`: {message}", path.display(), at(*line))]
    Value { path: PathBuf, line: Option<usize>, key: String, message: String },
}

impl FileError {
    /// The line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            FileError::Read { .. } => None,
            FileError::Syntax { line, .. } | FileError::Value { line, .. } => *line,
        }
    }

    /// The key whose value is wrong, if the error is about one (as `vm.vcpus`).
    pub fn key(&self) -> Option<&str> {
        match self {
            FileError::Value { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `:line` after a file name, or nothing.
fn at(line: Option<usize>) -> String {
    line.map(|line| format!(":{line}")).unwrap_or_default()
}

type Parsed<T> = Result<T, FileError>;

/// Builds errors that point into the file.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    fn error<T>(&self, span: std::ops::Range<usize>, key: &str, message: impl std::fmt::Display) -> Parsed<T> {
        let line = (span != (0..0)).then(|| self.line(span));
        Err(FileError::Value { path: self.path.to_owned(), line, key: key.to_owned(), message: message.to_string() })
    }
}

/// Converts a duration in milliseconds from the file, which must be positive.
fn millis(source: &Source, value: &Option<Spanned<f64>>, key: &str, default: Ns) -> Parsed<Ns> {
    match value {
        None => Ok(default),
        Some(ms) if *ms.get_ref() > 0.0 && ms.get_ref().is_finite() => Ok((ms.get_ref() * MS as f64) as Ns),
        Some(ms) => {
            source.error(ms.span(), key, format!("must be a positive number of milliseconds, not {}", ms.get_ref()))
        }
    }
}

/// Converts a duration in microseconds from the `[sim]` table, which must not be negative.
fn micros(source: &Source, value: &Option<Spanned<f64>>, key: &str, default: Ns) -> Parsed<Ns> {
    match value {
        None => Ok(default),
        Some(us) if *us.get_ref() >= 0.0 && us.get_ref().is_finite() => Ok((us.get_ref() * 1000.0) as Ns),
        Some(us) => {
            source.error(us.span(), key, format!("must be a number of microseconds >= 0, not {}", us.get_ref()))
        }
    }
}

fn parse_sim(source: &Source, table: &SimTable) -> Parsed<SimConfig> {
    let defaults = SimConfig::default();
    let scale = match &table.scale {
        None => defaults.scale,
        Some(scale) if (1..=1024).contains(scale.get_ref()) => *scale.get_ref() as u32,
        Some(scale) => return source.error(scale.span(), "sim.scale", "must be 1 to 1024"),
    };
    let duration = match &table.duration_s {
        None => None,
        Some(d) if *d.get_ref() > 0.0 && *d.get_ref() <= 86_400.0 => Some((d.get_ref() * 1e9) as Ns),
        Some(d) => return source.error(d.span(), "sim.duration_s", "must be more than 0 and at most 86400 seconds"),
    };
    let seed = match &table.seed {
        None => defaults.seed,
        Some(seed) if *seed.get_ref() >= 0 => *seed.get_ref() as u64,
        Some(seed) => return source.error(seed.span(), "sim.seed", "must not be negative"),
    };
    let preset = match &table.costs {
        None => defaults.costs,
        Some(name) => match Costs::preset(name.get_ref()) {
            Some(costs) => costs,
            None => return source.error(name.span(), "sim.costs", "the presets are \"measured\" and \"vmx\""),
        },
    };
    let costs = Costs {
        exit: micros(source, &table.exit_us, "sim.exit_us", preset.exit)?,
        kick: micros(source, &table.kick_us, "sim.kick_us", preset.kick)?,
        up: micros(source, &table.up_us, "sim.up_us", preset.up)?,
        switch: micros(source, &table.switch_us, "sim.switch_us", preset.switch)?,
        preempt: micros(source, &table.preempt_us, "sim.preempt_us", preset.preempt)?,
        timer: micros(source, &table.timer_us, "sim.timer_us", preset.timer)?,
        host_tick: micros(source, &table.host_tick_us, "sim.host_tick_us", preset.host_tick)?,
        boot: micros(source, &table.boot_us, "sim.boot_us", preset.boot)?,
    };
    let grain = micros(source, &table.grain_us, "sim.grain_us", defaults.grain)?.max(1);
    let jitter = match &table.jitter {
        None => defaults.jitter,
        Some(j) if (0.0..0.5).contains(j.get_ref()) => *j.get_ref(),
        Some(j) => return source.error(j.span(), "sim.jitter", "must be at least 0 and below 0.5"),
    };
    Ok(SimConfig { scale, duration, seed, costs, grain, jitter })
}

impl Scenario {
    /// Reads and checks a scenario file to run on this host.
    pub fn load(path: &Path) -> Parsed<Scenario> {
        Scenario::load_for(path, Target::Host)
    }

    /// Reads and checks a scenario file for `target`; for the simulator, `[sim] scale` is
    /// applied.
    pub fn load_for(path: &Path, target: Target) -> Parsed<Scenario> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
        Scenario::parse_for(path, &text, target)
    }

    /// Parses and checks scenario `text` read from `path`, to run on this host.
    pub fn parse(path: &Path, text: &str) -> Parsed<Scenario> {
        Scenario::parse_for(path, text, Target::Host)
    }

    /// Parses and checks scenario `text` read from `path` for `target`.
    pub fn parse_for(path: &Path, text: &str, target: Target) -> Parsed<Scenario> {
        let source = Source { path, text };
        let file: File = toml::from_str(text).map_err(|error| FileError::Syntax {
            path: path.to_owned(),
            line: error.span().map(|span| source.line(span)),
            message: error.message().to_owned(),
        })?;

        let available = target.pcpus();
        let cores = match file.pcpus.get_ref() {
            Pcpus::Count(n) if *n >= 1 && (*n as usize) <= available.len() => available[..*n as usize].to_vec(),
            Pcpus::Count(n) => {
                return source.error(
                    file.pcpus.span(),
                    "pcpus",
                    format!("{n} pCPUs asked for; this process may use 1 to {} host CPUs", available.len()),
                );
            }
            Pcpus::List(list) => {
                let mut cores = Vec::new();
                for &core in list {
                    if core < 0 || !available.contains(&(core as usize)) || cores.contains(&(core as usize)) {
                        return source.error(
                            file.pcpus.span(),
                            "pcpus",
                            format!("host CPU {core} is not usable or listed twice; usable: {available:?}"),
                        );
                    }
                    cores.push(core as usize);
                }
                if cores.is_empty() {
                    return source.error(file.pcpus.span(), "pcpus", "the list of host CPUs is empty");
                }
                cores
            }
        };

        let policy_table = file.policy.get_ref();
        let policy = match policy_table.name.get_ref().parse::<PolicyKind>() {
            Ok(policy) => policy,
            Err(message) => return source.error(policy_table.name.span(), "policy.name", message),
        };
        let defaults = Params::default();
        let params = Params {
            slice: millis(&source, &policy_table.slice_ms, "policy.slice_ms", defaults.slice)?,
            accounting: millis(&source, &policy_table.accounting_ms, "policy.accounting_ms", defaults.accounting)?,
            skew: millis(&source, &policy_table.skew_ms, "policy.skew_ms", defaults.skew)?,
            tick: millis(&source, &policy_table.tick_ms, "policy.tick_ms", defaults.tick)?,
            raise_after: millis(&source, &policy_table.raise_ms, "policy.raise_ms", defaults.raise_after)?,
            lower_after: millis(&source, &policy_table.lower_ms, "policy.lower_ms", defaults.lower_after)?,
        };

        let timeout_s = *file.timeout_s.get_ref();
        if !(timeout_s > 0.0 && timeout_s.is_finite()) {
            return source.error(file.timeout_s.span(), "timeout_s", "must be a positive number of seconds");
        }

        if file.vm.get_ref().is_empty() {
            return source.error(file.vm.span(), "vm", "a scenario needs at least one [[vm]]");
        }
        let mut vms: Vec<VmPlan> = Vec::new();
        for table in file.vm.get_ref() {
            let vm = parse_vm(&source, table.get_ref())?;
            if vms.iter().any(|other| other.name == vm.name) {
                return source.error(table.get_ref().name.span(), "vm.name", format!("two VMs are named {}", vm.name));
            }
            vms.push(vm);
        }
        let sim = match &file.sim {
            Some(table) => parse_sim(&source, table.get_ref())?,
            None => SimConfig::default(),
        };
        let scenario =
            Scenario { path: path.to_owned(), cores, policy, params, timeout_s, vms, sim }.for_target(target);
        if scenario.cores.len() > MAX_SIM_PCPUS {
            return source.error(file.pcpus.span(), "pcpus", format!("at most {MAX_SIM_PCPUS} simulated pCPUs"));
        }
        scenario
            .check_policy_fits()
            .or_else(|message| source.error(policy_table.name.span(), "policy.name", message))?;
        Ok(scenario)
    }
}

fn parse_vm(source: &Source, table: &VmTable) -> Parsed<VmPlan> {
    let name = table.name.get_ref().clone();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return source.error(table.name.span(), "vm.name", "use letters, digits, - and _");
    }
    let vcpus = *table.vcpus.get_ref();
    if !(1..=pv_abi::MAX_VCPUS as i64).contains(&vcpus) {
        return source.error(table.vcpus.span(), "vm.vcpus", format!("a VM has 1 to {} VCPUs", pv_abi::MAX_VCPUS));
    }
    let weight = match &table.weight {
        None => DEFAULT_WEIGHT,
        Some(weight) if (1..=65535).contains(weight.get_ref()) => *weight.get_ref() as u32,
        Some(weight) => return source.error(weight.span(), "vm.weight", "must be 1 to 65535"),
    };
    let cap = match &table.cap {
        None => None,
        Some(cap) if (1..=100 * vcpus).contains(cap.get_ref()) => Some(*cap.get_ref() as u32),
        Some(cap) => {
            return source.error(
                cap.span(),
                "vm.cap",
                format!("percent of one pCPU: 1 to {} for this VM", 100 * vcpus),
            );
        }
    };
    let kernel = match &table.kernel {
        None => None,
        Some(kernel) => {
            // Relative to the scenario file.
            let path = source.path.parent().unwrap_or(Path::new("")).join(kernel.get_ref());
            if let Err(error) = std::fs::metadata(&path) {
                return source.error(kernel.span(), "vm.kernel", format!("cannot read {}: {error}", path.display()));
            }
            Some(path)
        }
    };
    let workload = match (&table.workload, &kernel) {
        (Some(workload), _) => workload.get_ref().clone(),
        (None, Some(kernel)) => kernel.file_stem().map_or_else(String::new, |stem| stem.to_string_lossy().into_owned()),
        (None, None) => return source.error(table.name.span(), "vm.workload", "a VM needs a workload or a kernel"),
    };
    if kernel.is_none()
        && !workloads::WORKLOADS.iter().any(|w| w.name == workload)
        && !crate::guest::HOSTILE_PROGRAMS.contains(&workload.as_str())
    {
        let names: Vec<&str> = workloads::WORKLOADS.iter().map(|w| w.name).collect();
        let span = table.workload.as_ref().map_or_else(|| table.name.span(), Spanned::span);
        return source.error(
            span,
            "vm.workload",
            format!(
                "unknown workload `{workload}`; the workloads are {}, and the programs that misbehave {}",
                names.join(", "),
                crate::guest::HOSTILE_PROGRAMS.join(", ")
            ),
        );
    }
    let mut pairs = Vec::new();
    let args_span = (table.args.as_ref().map(Spanned::span))
        .or_else(|| table.workload.as_ref().map(Spanned::span))
        .unwrap_or_else(|| table.name.span());
    for (key, value) in table.args.iter().flat_map(|args| args.get_ref()) {
        let value = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(n) => n.to_string(),
            other => {
                let kind = other.type_str();
                return source.error(args_span, "vm.args", format!("{key} is a {kind}; use a string or an integer"));
            }
        };
        pairs.push((key.as_str(), value));
    }
    let locks = table.locks.as_ref().map_or_else(|| "spin".to_owned(), |locks| locks.get_ref().clone());
    let args = vm_words(pairs, &locks);
    let mem_mib = match &table.mem_mib {
        None => DEFAULT_MEM_MIB,
        Some(mem) if *mem.get_ref() > 0 => *mem.get_ref() as u64,
        Some(mem) => return source.error(mem.span(), "vm.mem_mib", "must be positive"),
    };
    let start_delay_ms = match &table.start_delay_ms {
        None => 0,
        Some(delay) if *delay.get_ref() >= 0 => *delay.get_ref() as u64,
        Some(delay) => return source.error(delay.span(), "vm.start_delay_ms", "must not be negative"),
    };
    let plan =
        VmPlan { name, vcpus: vcpus as u32, weight, cap, workload, kernel, args, locks, mem_mib, start_delay_ms };
    // The same checks `tandem run` makes: memory size, parameters and their values.
    if let Err(error) = plan.vm_config(1.0) {
        let message = format!("{error:#}");
        let (span, key) = match &table.locks {
            Some(locks) if message.contains("locks") => (locks.span(), "vm.locks"),
            _ => (args_span, "vm.args"),
        };
        return source.error(span, key, message);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
pcpus = 1
timeout_s = 30

[policy]
name = "cosched-relaxed"
skew_ms = 2.5

[[vm]]
name = "a"
vcpus = 1
weight = 512
cap = 50
workload = "nbody"
args = { bodies = 64, barrier = "block" }

[[vm]]
name = "b"
vcpus = 1
workload = "cpu"
start_delay_ms = 10
"#;

    fn parse(text: &str) -> Parsed<Scenario> {
        Scenario::parse(Path::new("test.toml"), text)
    }

    fn error(text: &str) -> FileError {
        parse(text).expect_err("the scenario should be refused")
    }

    #[test]
    fn a_good_scenario_parses_with_defaults_filled_in() {
        let scenario = parse(GOOD).unwrap();
        assert_eq!(scenario.cores.len(), 1);
        assert_eq!(scenario.policy, PolicyKind::CoschedRelaxed);
        assert_eq!(scenario.params.skew, 2_500_000);
        assert_eq!(scenario.params.slice, Params::default().slice);
        assert_eq!(scenario.timeout_s, 30.0);
        let a = &scenario.vms[0];
        assert_eq!((a.vcpus, a.weight, a.cap), (1, 512, Some(50)));
        assert_eq!(a.args, ["barrier=block", "bodies=64", "locks=spin"]);
        let b = &scenario.vms[1];
        assert_eq!((b.weight, b.cap, b.start_delay_ms, b.mem_mib), (DEFAULT_WEIGHT, None, 10, 128));
        assert_eq!(scenario.topology().nr_vcpus(), 2);
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let cases = [
            (GOOD.replace("weight = 512", "wieght = 512"), Some(12), None, "unknown field `wieght`"),
            (GOOD.replace("pcpus = 1", "pcpus = 4096"), Some(2), Some("pcpus"), "4096 pCPUs"),
            (GOOD.replace("pcpus = 1", "pcpus = [0, 0]"), Some(2), Some("pcpus"), "listed twice"),
            (GOOD.replace("vcpus = 1\nweight", "vcpus = 0\nweight"), Some(11), Some("vm.vcpus"), "1 to 64"),
            (GOOD.replace("\"cpu\"", "\"gobmk\""), Some(20), Some("vm.workload"), "unknown workload `gobmk`"),
            (GOOD.replace("cosched-relaxed", "fifo"), Some(6), Some("policy.name"), "unknown policy `fifo`"),
            (GOOD.replace("skew_ms = 2.5", "skew_ms = -1"), Some(7), Some("policy.skew_ms"), "positive"),
            (GOOD.replace("bodies = 64", "bodies = \"many\""), Some(15), Some("vm.args"), "bodies"),
            (GOOD.replace("bodies = 64", "bodies = 6.4"), Some(15), Some("vm.args"), "use a string or an integer"),
            (GOOD.replace("cap = 50", "cap = 500"), Some(13), Some("vm.cap"), "1 to 100"),
            (GOOD.replace("name = \"b\"", "name = \"a\""), Some(18), Some("vm.name"), "two VMs"),
            (GOOD.replace("[policy]", "[polcy]"), Some(5), None, "unknown field `polcy`"),
            ("pcpus = 1\n[policy]\nname = \"credit\"\n".to_owned(), Some(1), None, "missing field `vm`"),
            ("pcpus = \n".to_owned(), Some(1), None, ""),
        ];
        for (text, line, key, what) in cases {
            let error = error(&text);
            assert_eq!((error.line(), error.key()), (line, key), "{error}");
            let message = error.to_string();
            let place = match (line, key) {
                (Some(line), Some(key)) => format!("test.toml:{line}: `{key}`: "),
                (Some(line), None) => format!("test.toml:{line}: "),
                (None, _) => "test.toml".to_owned(),
            };
            assert!(message.starts_with(&place), "{message:?} should start with {place:?}");
            assert!(message.contains(what), "{message:?} should say {what:?}");
        }
    }

    #[test]
    fn a_served_vm_gets_its_port_forwarded_and_its_load_checked() {
        let kv = GOOD.replace("\"cpu\"", "\"kv\"\nargs = { port = 7000, clients = 4, rate = 900 }");
        let scenario = parse(&kv).unwrap();
        let served = scenario.vms[1].served().unwrap().unwrap();
        assert_eq!((served.port, served.load.clients, served.load.rate), (7000, 4, Some(900)));
        let config = scenario.vms[1].vm_config(1.0).unwrap();
        let crate::net::NetBackend::User { forwards } = config.net.unwrap().backend else { panic!("not user") };
        assert_eq!(forwards.len(), 1);
        assert_eq!((forwards[0].host.to_string(), forwards[0].guest_port), ("127.0.0.1:0".to_owned(), 7000));
        assert_eq!(scenario.vms[0].served().unwrap(), None, "nbody serves nothing");
        let error = error(&kv.replace("clients = 4", "clients = 0"));
        assert_eq!((error.line(), error.key()), (Some(21), Some("vm.args")), "{error}");
        assert!(error.to_string().contains("clients=0: 1 to 1024 connections"), "{error}");
    }

    #[test]
    fn a_scenario_past_the_hosts_memory_or_thread_limit_is_refused() {
        let scenario = parse(GOOD).unwrap();
        assert!(scenario.check_resources(Some(256 << 20), Some(8)).is_ok());
        assert!(scenario.check_resources(None, None).is_ok());
        let memory = scenario.check_resources(Some(200 << 20), None).unwrap_err().to_string();
        assert_eq!(memory, "test.toml: its VMs have 256 MiB of guest memory in all, more than this host's 200 MiB");
        // 2 VCPUs, 2 VMs, 2 NIC backends and the dispatcher.
        assert!(scenario.check_resources(None, Some(7)).is_ok());
        let threads = scenario.check_resources(None, Some(6)).unwrap_err().to_string();
        assert_eq!(threads, "test.toml: its VMs need 7 threads, and this process may start 6 more (ulimit -u)");
    }

    #[test]
    fn strict_co_scheduling_refuses_a_vm_wider_than_the_pcpus() {
        let wide = GOOD
            .replace("cosched-relaxed", "cosched-strict")
            .replace("vcpus = 1\nworkload = \"cpu\"", "vcpus = 2\nworkload = \"cpu\"");
        let error = error(&wide);
        assert_eq!((error.line(), error.key()), (Some(6), Some("policy.name")));
        let message = error.to_string();
        assert!(message.contains("VM b has 2 VCPUs but there are 1 pCPUs"), "{message}");
        // The same file under another policy is fine; switching to strict is refused.
        let relaxed = parse(&wide.replace("cosched-strict", "credit")).unwrap();
        assert!(relaxed.with(Some(PolicyKind::CoschedStrict), None).is_err());
        assert!(relaxed.with(None, Some(0)).is_err());
    }

    #[test]
    fn a_vm_may_boot_a_kernel_of_its_own_named_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("tandem-kernel-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("build")).unwrap();
        std::fs::write(dir.join("build/solver.elf"), b"an image").unwrap();
        let file = dir.join("s.toml");
        let vm =
            |extra: &str| format!("pcpus = 1\n[policy]\nname = \"credit\"\n[[vm]]\nname = \"a\"\nvcpus = 1\n{extra}\n");
        let own = Scenario::parse(&file, &vm("kernel = \"build/solver.elf\"\nargs = { rows = 9 }\nlocks = \"pv\""));
        let plan = own.unwrap().vms.remove(0);
        assert_eq!(plan.kernel.as_deref(), Some(dir.join("build/solver.elf").as_path()));
        assert_eq!(plan.workload, "solver", "the program is named after the kernel");
        assert_eq!(plan.args, ["rows=9", "locks=pv"]);
        let config = plan.vm_config(1.0).unwrap();
        assert_eq!(config.cmdline, "solver rows=9 locks=pv", "its own arguments go unchecked");

        let bad = |extra: &str| Scenario::parse(&file, &vm(extra)).unwrap_err();
        let missing = bad("kernel = \"nosuch.elf\"");
        assert_eq!((missing.line(), missing.key()), (Some(7), Some("vm.kernel")));
        assert!(missing.to_string().contains("nosuch.elf"), "{missing}");
        let neither = bad("");
        assert_eq!(neither.key(), Some("vm.workload"));
        assert!(neither.to_string().contains("a VM needs a workload or a kernel"), "{neither}");
        let bad_locks = bad("kernel = \"build/solver.elf\"\nlocks = \"ticket\"");
        assert_eq!(bad_locks.key(), Some("vm.locks"), "the guest runtime's parameters are checked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_example_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                // The examples use 2 pCPUs; a 1-CPU machine still checks everything else.
                let text =
                    text.replace("pcpus = 2", &format!("pcpus = {}", crate::host::available_cores().len().min(2)));
                if let Err(error) = Scenario::parse(&path, &text) {
                    panic!("{error:#}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 6, "only {seen} scenarios in {}", dir.display());
    }
}
