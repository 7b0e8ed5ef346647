//! Scenarios: which pCPUs, which policy, which VMs running what. Read from TOML files
//! ([`file`]), e.g.
//!
//! ```toml
//! pcpus = 2                     # a count (the first N CPUs this process may use) or [0, 1]
//! timeout_s = 300               # VMs still running then are stopped
//!
//! [policy]
//! name = "credit"               # host, credit, cosched-strict, cosched-relaxed, dynamic
//! slice_ms = 30                 # optional tunables (see `sched::Params`): slice_ms,
//!                               # accounting_ms, skew_ms, tick_ms, raise_ms, lower_ms
//!
//! [[vm]]
//! name = "a"
//! vcpus = 2
//! weight = 256                  # optional, default 256
//! cap = 50                      # optional, percent of one pCPU
//! workload = "nbody"           # a workload of the embedded guest, or with `kernel` the
//!                               # program name that kernel gets (default: the file's name)
//! kernel = "build/app.elf"      # optional: a kernel of the user's, relative to the file
//! args = { barrier = "spin" }   # the workload's parameters
//! locks = "spin"                # optional, the guest's spinlock family
//! start_delay_ms = 0            # optional
//!
//! [sim]                         # optional, read by `tandem sim` only (see `sim_config`)
//! scale = 4
//! ```
//!
//! Every error in a file names the file, the line and the key. Experiments build scenarios
//! as values (see `experiment`).

pub mod file;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use sched::{Params, PolicyKind, Topology, VmSpec};

use workloads::kv::load::Load;

use crate::guest::{self, VmConfig};
use crate::host::available_cores;
use crate::net::{HostForward, NetConfig};
use crate::sim_config::SimConfig;

/// Xen's default weight.
pub const DEFAULT_WEIGHT: u32 = 256;
/// VMs still running after this long are stopped, unless the scenario says otherwise.
pub const DEFAULT_TIMEOUT_S: f64 = 600.0;
/// Guest memory of a VM that does not say.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// A VM's `key=value` words: the workload's arguments in key order, then `locks=`.
fn vm_words(mut args: Vec<(&str, String)>, locks: &str) -> Vec<String> {
    args.sort_by(|a, b| a.0.cmp(b.0));
    args.into_iter().map(|(key, value)| format!("{key}={value}")).chain([format!("locks={locks}")]).collect()
}

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Host CPU of each pCPU.
    pub cores: Vec<usize>,
    pub policy: PolicyKind,
    pub params: Params,
    pub timeout_s: f64,
    pub vms: Vec<VmPlan>,
    /// How to simulate it (the `[sim]` table; defaults without one).
    pub sim: SimConfig,
}

/// Whether a scenario is to run on this host or in the simulator, whose pCPUs are not the
/// host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Host,
    Sim,
}

/// Most pCPUs a simulated scenario may have.
pub const MAX_SIM_PCPUS: usize = 4096;

impl Target {
    /// The pCPUs a scenario for this target may use, in order: the host CPUs this process
    /// may run on, or simulated ones.
    pub fn pcpus(self) -> Vec<usize> {
        match self {
            Target::Host => available_cores(),
            Target::Sim => (0..MAX_SIM_PCPUS).collect(),
        }
    }
}

/// One VM of a scenario.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub name: String,
    pub vcpus: u32,
    pub weight: u32,
    pub cap: Option<u32>,
    /// The program its kernel runs: a workload of the embedded guest's, or whatever a kernel
    /// of the user's makes of it (by default the kernel file's name).
    pub workload: String,
    /// A kernel of the user's to boot instead of the embedded guest.
    pub kernel: Option<PathBuf>,
    /// `key=value` words: the workload's, then `locks=`.
    pub args: Vec<String>,
    pub locks: String,
    pub mem_mib: u64,
    pub start_delay_ms: u64,
}

impl Scenario {
    /// A scenario built as a value rather than read from a file: the first `pcpus` pCPUs of
    /// `target`, `policy` at its default tunables, `vms` (see [`VmPlan::new`]); checked as a
    /// file would be.
    pub fn build(
        path: &str,
        target: Target,
        pcpus: usize,
        policy: PolicyKind,
        timeout_s: f64,
        vms: Vec<VmPlan>,
        sim: SimConfig,
    ) -> anyhow::Result<Scenario> {
        let available = target.pcpus();
        if pcpus == 0 || pcpus > available.len() {
            bail!("{path}: {pcpus} pCPUs asked for; this process may use 1 to {} host CPUs", available.len());
        }
        let cores = available[..pcpus].to_vec();
        let params = Params::default();
        let scenario =
            Scenario { path: PathBuf::from(path), cores, policy, params, timeout_s, vms, sim }.for_target(target);
        scenario.check_policy_fits().map_err(|message| anyhow::anyhow!("{path}: {message}"))?;
        Ok(scenario)
    }

    /// The scenario as `target` runs it: the simulator applies `[sim] scale`.
    fn for_target(self, target: Target) -> Scenario {
        match target {
            Target::Host => self,
            Target::Sim => self.scaled(self.sim.scale),
        }
    }

    /// The scenario `factor` times over: `factor` times the pCPUs, and each VM `factor` times
    /// (VM `a` as `a.0`, `a.1`, ...). For the simulator: the pCPUs are numbered anew.
    pub fn scaled(&self, factor: u32) -> Scenario {
        if factor <= 1 {
            return self.clone();
        }
        let mut scenario = self.clone();
        scenario.cores = (0..self.cores.len() * factor as usize).collect();
        scenario.vms = (0..factor)
            .flat_map(|copy| {
                self.vms.iter().map(move |vm| VmPlan { name: format!("{}.{copy}", vm.name), ..vm.clone() })
            })
            .collect();
        scenario
    }

    /// The same scenario under another policy or on another number of this host's CPUs.
    pub fn with(&self, policy: Option<PolicyKind>, pcpus: Option<usize>) -> anyhow::Result<Scenario> {
        self.with_cores(policy, pcpus, &available_cores())
    }

    /// The same simulated scenario under another policy or on another number of pCPUs.
    pub fn with_sim(&self, policy: Option<PolicyKind>, pcpus: Option<usize>) -> anyhow::Result<Scenario> {
        self.with_cores(policy, pcpus, &(0..MAX_SIM_PCPUS).collect::<Vec<_>>())
    }

    fn with_cores(
        &self,
        policy: Option<PolicyKind>,
        pcpus: Option<usize>,
        available: &[usize],
    ) -> anyhow::Result<Scenario> {
        let mut scenario = self.clone();
        if let Some(policy) = policy {
            scenario.policy = policy;
        }
        if let Some(n) = pcpus {
            if n == 0 || n > available.len() {
                bail!("--pcpus {n}: 1 to {} pCPUs may be used", available.len());
            }
            scenario.cores = available[..n].to_vec();
        }
        scenario.check_policy_fits().map_err(|message| anyhow::anyhow!("{}: {message}", self.path.display()))?;
        Ok(scenario)
    }

    /// The scenario with every VM on the spinlock family `locks`, named `<name>-<locks>`.
    pub fn with_locks(&self, locks: &str) -> Scenario {
        let mut scenario = self.clone();
        let stem = self.path.file_stem().map_or_else(String::new, |stem| stem.to_string_lossy().into_owned());
        scenario.path = self.path.with_file_name(format!("{stem}-{locks}.toml"));
        for vm in &mut scenario.vms {
            vm.locks = locks.to_owned();
            vm.args.retain(|arg| !arg.starts_with("locks="));
            vm.args.push(format!("locks={locks}"));
        }
        scenario
    }

    /// `vm` alone at 1x: as many VCPUs as fit on this scenario's pCPUs (`min(vcpus, pCPUs)`),
    /// on that many of them, under `credit`, at the default weight, without cap or delay.
    /// Its rate gives `vm`'s ideal.
    pub fn reference_of(&self, vm: &VmPlan) -> Scenario {
        let width = vm.vcpus.min(self.cores.len() as u32);
        Scenario {
            cores: self.cores[..width as usize].to_vec(),
            policy: PolicyKind::Credit,
            vms: vec![VmPlan { vcpus: width, start_delay_ms: 0, weight: DEFAULT_WEIGHT, cap: None, ..vm.clone() }],
            ..self.clone()
        }
    }

    /// What tells `vm`'s reference run apart from others in this scenario's pCPUs.
    pub fn reference_key(&self, vm: &VmPlan) -> String {
        let kernel = vm.kernel.as_ref().map_or_else(String::new, |path| format!("{} ", path.display()));
        format!("{kernel}{} {} on {}", vm.workload, vm.args.join(" "), vm.vcpus.min(self.cores.len() as u32))
    }

    /// Strict co-scheduling runs a VM only when all its VCPUs fit on distinct pCPUs.
    fn check_policy_fits(&self) -> Result<(), String> {
        if self.policy != PolicyKind::CoschedStrict {
            return Ok(());
        }
        match self.vms.iter().find(|vm| vm.vcpus as usize > self.cores.len()) {
            Some(vm) => Err(format!(
                "VM {} has {} VCPUs but there are {} pCPUs: under cosched-strict it could never run",
                vm.name,
                vm.vcpus,
                self.cores.len()
            )),
            None => Ok(()),
        }
    }

    /// Refuses a scenario this host cannot run, before any VM starts: guest memory past the
    /// host's (`host_memory` bytes), or more threads than the process may start
    /// (`threads_left`): a thread per VCPU, per VM, per NIC backend and per load generator,
    /// and the dispatcher's.
    pub fn check_resources(&self, host_memory: Option<u64>, threads_left: Option<u64>) -> anyhow::Result<()> {
        let mem_mib: u64 = self.vms.iter().map(|vm| vm.mem_mib).sum();
        if let Some(host) = host_memory.filter(|&host| mem_mib << 20 > host) {
            bail!(
                "{}: its VMs have {mem_mib} MiB of guest memory in all, more than this host's {} MiB",
                self.path.display(),
                host >> 20
            );
        }
        let served = self.vms.iter().filter(|vm| vm.served().ok().flatten().is_some()).count() as u64;
        let threads = self.vms.iter().map(|vm| u64::from(vm.vcpus) + 2).sum::<u64>() + served + 1;
        if let Some(left) = threads_left.filter(|&left| threads > left) {
            bail!(
                "{}: its VMs need {threads} threads, and this process may start {left} more (ulimit -u)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// What the policy sees.
    pub fn topology(&self) -> Topology {
        let vms = self.vms.iter().map(|vm| VmSpec { vcpus: vm.vcpus, weight: vm.weight, cap: vm.cap }).collect();
        Topology::new(self.cores.len() as u32, vms)
    }
}

/// How the monitor drives a VM's served workload: the guest port its server listens on,
/// and the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub port: u16,
    pub load: Load,
}

impl VmPlan {
    /// A VM named `name` of `vcpus` VCPUs running `workload` with `args` on the spinlock
    /// family `locks`, at the defaults of a scenario file for everything else; checked as
    /// `tandem run` checks a VM.
    pub fn new(name: &str, vcpus: u32, workload: &str, args: &[(&str, &str)], locks: &str) -> anyhow::Result<VmPlan> {
        let plan = VmPlan {
            name: name.to_owned(),
            vcpus,
            weight: DEFAULT_WEIGHT,
            cap: None,
            workload: workload.to_owned(),
            kernel: None,
            args: vm_words(args.iter().map(|&(key, value)| (key, value.to_owned())).collect(), locks),
            locks: locks.to_owned(),
            mem_mib: DEFAULT_MEM_MIB,
            start_delay_ms: 0,
        };
        plan.vm_config(1.0)?;
        Ok(plan)
    }

    /// Whether it reports a result whose rate a reference run can measure: a workload, or a
    /// kernel of the user's (not a program that misbehaves on purpose).
    pub fn has_reference(&self) -> bool {
        self.kernel.is_some() || !guest::HOSTILE_PROGRAMS.contains(&self.workload.as_str())
    }

    /// Which kernel it boots.
    pub fn guest_kernel(&self) -> guest::Kernel {
        if self.kernel.is_some() { guest::Kernel::User } else { guest::Kernel::Embedded }
    }

    /// If its workload is served ([`workloads::WorkloadInfo::served`]), how the monitor
    /// drives it, from its arguments.
    pub fn served(&self) -> anyhow::Result<Option<Served>> {
        let Some(info) = workloads::workload(&self.workload).filter(|info| info.served) else {
            return Ok(None);
        };
        let (_, args) = workloads::split_guest_args(self.args.iter().map(String::as_str));
        let bad = |error| anyhow::anyhow!("bad arguments for workload {}: {error}", self.workload);
        let params = workloads::Params::parse(info.params, args).map_err(bad)?;
        let port = params.u64_in("port", 1..=u64::from(u16::MAX), "not a TCP port").map_err(bad)? as u16;
        Ok(Some(Served { port, load: Load::from_params(&params).map_err(bad)? }))
    }

    /// Whether it is a served workload driven by an open loop, whose clients ask a fixed rate.
    pub fn open_loop(&self) -> bool {
        self.served().ok().flatten().is_some_and(|served| served.load.rate.is_some())
    }

    /// The VM to boot, stopped after `timeout_s`: the same checks `tandem run` makes
    /// (memory size, parameters and their values). It has a NIC under user-mode networking;
    /// a served workload's port is forwarded from an ephemeral port of the host's loopback.
    pub fn vm_config(&self, timeout_s: f64) -> anyhow::Result<VmConfig> {
        let forwards = match self.served()? {
            Some(served) => vec![HostForward {
                host: std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
                guest_port: served.port,
            }],
            None => Vec::new(),
        };
        let config = VmConfig {
            name: self.name.clone(),
            vcpus: self.vcpus,
            mem_mib: self.mem_mib,
            cmdline: guest::cmdline(&self.workload, &self.args, self.guest_kernel())?,
            timeout: Duration::from_secs_f64(timeout_s),
            echo_console: false,
            net: Some(NetConfig::user_forwarding(forwards)),
        };
        config.check()?;
        Ok(config)
    }
}
