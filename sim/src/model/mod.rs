//! Workload models: each real workload as a program of steps per thread, with the costs of
//! its pieces measured on this machine.
//!
//! A program is a pure function from a thread and its program counter to a [`Step`], so a
//! thread's state is one counter and a model can be as long as the simulation without being
//! stored. The models keep each workload's structure: `cpu`'s independent tasks, `nbody`'s
//! two barriers per timestep, `locks`' acquire / critical section / release / think cycle,
//! `pipeline`'s bounded queues between stages, `phases`' busy phases joined at the end, `kv`'s
//! thread per connection waiting for its requests and answering them.
//! Fine-grained work is grouped: one simulated pipeline item stands for a batch of real ones
//! of about [`SimConfig::grain`](tandem_core::sim_config::SimConfig), and so does a lock
//! acquisition found free (the fraction of time spent in critical sections, which decides what
//! a preemption hits, is unchanged). A lock handed to a waiter whose VCPU is not running covers
//! one operation: such a hand-over costs a VCPU switch per operation.
//!
//! Each workload's model is a module of its own with one line in [`MODELS`], under the
//! workload's name in [`workloads::WORKLOADS`].

mod cpu;
mod kv;
mod locks;
mod nbody;
mod phases;
mod pipeline;

use std::collections::BTreeMap;

use anyhow::Context;
use sched::Ns;
use workloads::{BarrierKind, ParamError, Params, WorkloadInfo};

use tandem_core::scenario::VmPlan;

/// Builds a workload's model from its arguments, or says which one is out of its range.
type Build = fn(&Args) -> Result<Model, ParamError>;

/// Declares the models: each workload's name, its module and the module's [`Program`]. It
/// makes [`MODELS`] and [`Programs`], one variant per program, so that a thread's step is a
/// `match` the compiler inlines into the guest model's loop rather than a call through a
/// trait object (which cost `tandem sim` at scale 7-15% of its time).
macro_rules! models {
    ($($name:literal => $module:ident :: $program:ident,)*) => {
        /// Every workload's model, under the workload's name.
        const MODELS: &[(&str, Build)] = &[$(($name, $module::model),)*];

        /// Every workload's program.
        #[derive(Debug)]
        enum Programs {
            $($program($module::$program),)*
        }

        impl Programs {
            fn step(&self, thread: usize, pc: u64, done: u64) -> Step {
                match self {
                    $(Programs::$program(program) => program.step(thread, pc, done),)*
                }
            }
        }

        $(impl From<$module::$program> for Programs {
            fn from(program: $module::$program) -> Programs {
                Programs::$program(program)
            }
        })*
    };
}

models! {
    "cpu" => cpu::Cpu,
    "nbody" => nbody::Nbody,
    "locks" => locks::Locks,
    "pipeline" => pipeline::Pipeline,
    "phases" => phases::Phases,
    "kv" => kv::Kv,
}

/// One unit of `common::work` (1.95 ns: 500 units per `locks` operation take 0.98 µs).
const WORK_UNIT_PS: u64 = 1_950;

/// What a thread does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Compute for `ns`; `ops` units of the workload's result are done when it ends.
    Compute { ns: Ns, ops: u64 },
    /// Compute until `ns` after the VM's barrier last opened (the phase's end on the
    /// clock), yielding to the VCPU's other threads every `slice`.
    Busy { ns: Ns, slice: Ns },
    /// Take the VM's ticket spinlock, for a batch of operations if it is free, else for one.
    Lock,
    /// The critical sections of the operations the lock was taken for.
    Critical,
    /// Release it.
    Unlock,
    /// The work outside the lock of those operations; they are done at its end.
    Think,
    /// Wait at the VM's barrier; `ops` units are done when it opens.
    Barrier { ops: u64 },
    /// Take a batch from queue `q`, blocking while it is empty.
    Pop(usize),
    /// Put a batch into queue `q`, blocking while it is full.
    Push(usize),
    /// Wait for requests on the thread's connection (blocking while none has come in), and
    /// take all that have: pipelined requests are served as one batch.
    Receive,
    /// Compute `ns` for each request taken; with `done`, they are done at its end.
    Execute { ns: Ns, done: bool },
    /// Write the replies to the requests taken: they leave for the client.
    Reply,
    /// The thread ends.
    Done,
}

/// A workload's threads as programs.
pub trait Program {
    /// Thread `thread`'s step number `pc`, when it has done `done` ops.
    fn step(&self, thread: usize, pc: u64, done: u64) -> Step;
}

/// How a workload uses the VM's ticket lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOps {
    /// Operations per thread.
    pub ops: u64,
    /// Most operations one acquisition is taken for.
    pub batch: u64,
    /// One operation's critical section.
    pub cs: Ns,
    /// One operation's work outside the lock.
    pub think: Ns,
}

/// The load on a served workload: what the monitor's load generator does, and the host's part
/// of a request's round trip: the host thread's work on each message (see `host`), and the
/// time a message takes beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// Requests over the run.
    pub requests: u64,
    /// Connections, a thread each.
    pub clients: usize,
    /// Requests a connection keeps in flight in a closed loop.
    pub pipeline: usize,
    /// Requests/s over all connections of an open loop; `None`: a closed loop.
    pub rate: Option<u64>,
    /// From the client's sending a request to the host thread's having it to carry.
    pub request_path: Ns,
    /// From the host thread's having carried a reply to the client's having it.
    pub reply_path: Ns,
    /// The host thread's CPU time for a connection's requests, from the client's socket to
    /// their frame in the NIC's ring.
    pub request_host: Ns,
    /// The host thread's CPU time for a connection's replies, from the NIC's ring to the
    /// client's having read them.
    pub reply_host: Ns,
}

/// The shape of one VM's workload.
#[derive(Debug)]
pub struct Model {
    /// The workload as the registry describes it.
    pub workload: &'static WorkloadInfo,
    pub threads: usize,
    pub barrier: BarrierKind,
    /// Capacity of each queue, in batches.
    pub queues: Vec<u64>,
    /// What a queue operation costs on top while the stage on the queue's other side runs on
    /// another VCPU (the queue's cache lines move between them).
    pub queue_crossing: Ns,
    /// How it uses the ticket lock, if it takes it.
    pub lock: Option<LockOps>,
    /// The load on it, if it is a server.
    pub served: Option<Served>,
    /// The workload's parameters, all of them, as the real workload reports them.
    pub params: BTreeMap<String, String>,
    program: Programs,
}

/// What a model is built from.
pub struct Args<'a> {
    workload: &'static WorkloadInfo,
    params: &'a Params,
    vcpus: u32,
    /// Fine-grained work is simulated in steps of about this much (at least 1 ns).
    grain: Ns,
}

impl Args<'_> {
    /// Parameter `key`, a count whose 0 means one per VCPU (and at least `min`).
    fn per_vcpu(&self, key: &str, min: u64) -> usize {
        match self.params.u64(key) {
            0 => (self.vcpus as u64).max(min) as usize,
            n => n as usize,
        }
    }

    /// Parameter `key`, a number of work units, as the time they take.
    fn work_ns(&self, key: &str) -> Ns {
        self.params.u64(key) * WORK_UNIT_PS / 1000
    }
}

impl Model {
    /// `threads` threads running `program`, with a spinning barrier, no queues and no lock.
    fn of(args: &Args, threads: usize, program: impl Into<Programs>) -> Model {
        Model {
            workload: args.workload,
            threads,
            barrier: BarrierKind::Spin,
            queues: Vec::new(),
            queue_crossing: 0,
            lock: None,
            served: None,
            params: BTreeMap::new(),
            program: program.into(),
        }
    }

    /// The model of `plan`'s workload on `vcpus` VCPUs, fine-grained work in steps of about
    /// `grain`.
    pub fn new(plan: &VmPlan, grain: Ns) -> anyhow::Result<Model> {
        let no_model = || format!("no model for workload {}", plan.workload);
        let info = workloads::workload(&plan.workload).with_context(no_model)?;
        let (_, args) = workloads::split_guest_args(plan.args.iter().map(String::as_str));
        let bad = |error: ParamError| anyhow::anyhow!("bad arguments for workload {}: {error}", plan.workload);
        let params = Params::parse(info.params, args).map_err(bad)?;
        let (_, build) = MODELS.iter().find(|(name, _)| *name == info.name).with_context(no_model)?;
        let model =
            build(&Args { workload: info, params: &params, vcpus: plan.vcpus, grain: grain.max(1) }).map_err(bad)?;
        Ok(Model { params: params.values().clone(), ..model })
    }

    /// Thread `thread`'s step number `pc`, when it has done `done` ops.
    pub fn step(&self, thread: usize, pc: u64, done: u64) -> Step {
        self.program.step(thread, pc, done)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VM of `vcpus` VCPUs running `workload` with `args`.
    pub(crate) fn plan(workload: &str, vcpus: u32, args: &[&str]) -> VmPlan {
        VmPlan {
            name: "a".into(),
            vcpus,
            weight: 256,
            cap: None,
            workload: workload.into(),
            kernel: None,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            locks: "spin".into(),
            mem_mib: 128,
            start_delay_ms: 0,
        }
    }

    /// The model of `workload` with `args` on `vcpus` VCPUs, in steps of about 20 µs.
    pub(super) fn model(workload: &str, vcpus: u32, args: &[&str]) -> Model {
        Model::new(&plan(workload, vcpus, args), 20_000).unwrap()
    }

    /// Every step of `thread` up to its end, each lock acquisition for a whole batch.
    pub(super) fn program(model: &Model, thread: usize) -> Vec<Step> {
        let batch = model.lock.map_or(0, |lock| lock.batch);
        let mut steps = Vec::new();
        let mut done = 0;
        for pc in 0.. {
            let step = model.step(thread, pc, done);
            done += match step {
                Step::Compute { ops, .. } | Step::Barrier { ops } => ops,
                Step::Think => batch,
                _ => 0,
            };
            steps.push(step);
            if step == Step::Done {
                return steps;
            }
        }
        unreachable!()
    }

    /// The ops `steps` count.
    pub(super) fn ops(steps: &[Step]) -> u64 {
        steps
            .iter()
            .map(|step| match step {
                Step::Compute { ops, .. } | Step::Barrier { ops } => *ops,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn every_workload_has_a_model_and_every_model_a_workload() {
        for workload in workloads::WORKLOADS {
            let model = model(workload.name, 2, &[]);
            assert!(model.threads > 0, "{}", workload.name);
            assert_eq!(program(&model, 0).last(), Some(&Step::Done), "{}", workload.name);
        }
        for (name, _) in MODELS {
            assert!(workloads::WORKLOADS.iter().any(|w| w.name == *name), "a model of no workload: {name}");
        }
    }

    #[test]
    fn a_model_keeps_every_parameter_of_its_workload_for_the_record() {
        let cpu = model("cpu", 2, &["tasks=10", "locks=pv"]);
        assert_eq!(cpu.params["tasks"], "10");
        assert_eq!(cpu.params["threads"], "0");
        assert!(!cpu.params.contains_key("locks"), "guest parameters are the runtime's");
    }

    #[test]
    fn unknown_workloads_and_bad_arguments_are_refused() {
        let unknown = Model::new(&plan("gobmk", 2, &[]), 20_000).unwrap_err();
        assert_eq!(unknown.to_string(), "no model for workload gobmk");
        let bad = Model::new(&plan("cpu", 2, &["tasks=x"]), 20_000).unwrap_err();
        assert!(bad.to_string().starts_with("bad arguments for workload cpu: "), "{bad}");
    }
}
