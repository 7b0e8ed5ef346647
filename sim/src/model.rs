//! Workload models: each real workload as a program of steps per thread, with the costs of
//! its pieces measured on this machine.
//!
//! A program is a pure function from a thread and its program counter to a [`Step`], so a
//! thread's state is one counter and a model can be as long as the simulation without being
//! stored. The models keep each workload's structure: `cpu`'s independent tasks, `nbody`'s
//! two barriers per timestep, `locks`' acquire / critical section / release / think cycle,
//! `pipeline`'s bounded queues between stages, `phases`' busy phases joined at the end.
//! Fine-grained work is grouped: one simulated pipeline item stands for a batch of real ones
//! of about [`SimConfig::grain`](super::config::SimConfig), and so does a lock acquisition
//! found free (the fraction of time spent in critical sections, which decides what a
//! preemption hits, is unchanged). A lock handed to a waiter whose VCPU is not running covers
//! one operation: such a hand-over costs a VCPU switch per operation.

use anyhow::Context;
use sched::Ns;
use workloads::{BarrierKind, Params, share};

use tandem_core::scenario::VmPlan;

/// One game-tree search of `cpu` (the guest does 880 tasks/s on 2 VCPUs here, native 280/s
/// on 1 CPU at a slower moment).
const CPU_TASK: Ns = 2_500_000;
/// One body pair in `nbody`'s force loop (1.3-1.6 ms per 512-body step on 1 CPU).
const NBODY_PAIR: Ns = 5;
/// One body advanced in `nbody`'s second loop.
const NBODY_BODY: Ns = 20;
/// One unit of `common::work` (1.95 ns: 500 units per `locks` operation take 0.98 µs).
const WORK_UNIT_PS: u64 = 1_950;
/// An uncontended lock and unlock plus the bucket update.
const LOCK_OP: Ns = 8;
/// A pipeline queue's push or pop while the stage on its other side runs on another VCPU:
/// the queue's cache lines move between them (2 stages on 2 VCPUs pass 2.0 M items/s at 200
/// units an item, 0.5 µs a stage; on one VCPU, 0.39 µs, the work alone).
pub const QUEUE_SHARED: Ns = 110;
/// `phases`' unit of work between two yields (1000 units).
const PHASES_CHUNK: Ns = 2_000;
/// Critical sections are grouped into batches at most this long (or a tenth of the grain, if
/// more), well under the PV lock's bounds (10 µs, then 200 µs), so that a queue of waiters
/// behind running holders does not look stuck.
const MAX_CRITICAL_BATCH: Ns = 5_000;

/// What a thread does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Compute for `ns`; `ops` units of the workload's result are done when it ends.
    Compute { ns: Ns, ops: u64 },
    /// Compute until `ns` after the VM's barrier last opened (the phase's end on the
    /// clock), yielding to the VCPU's other threads every grain.
    Busy { ns: Ns },
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
    /// The thread ends.
    Done,
}

/// The shape of one VM's workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub workload: String,
    /// What one op is, as the real workload reports it.
    pub unit: &'static str,
    pub threads: usize,
    pub barrier: BarrierKind,
    /// Capacity of each queue, in batches.
    pub queues: Vec<u64>,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Cpu { tasks: usize },
    Nbody { bodies: usize, steps: u64 },
    Locks { ops: u64, batch: u64, cs: Ns, think: Ns },
    Pipeline { items: u64, batch: u64, stage: Ns },
    Phases { rounds: u64, phase: Ns },
}

impl Model {
    /// The model of `plan`'s workload on `vcpus` VCPUs, fine-grained work in steps of about
    /// `grain`.
    pub fn new(plan: &VmPlan, grain: Ns) -> anyhow::Result<Model> {
        let info = workloads::WORKLOADS
            .iter()
            .find(|w| w.name == plan.workload)
            .with_context(|| format!("no model for workload {}", plan.workload))?;
        let (_, args) = workloads::split_guest_args(plan.args.iter().map(String::as_str));
        let params = Params::parse(info.params, args)
            .map_err(|error| anyhow::anyhow!("bad arguments for workload {}: {error}", plan.workload))?;
        let per_cpu = |key: &str, min: u64| match params.u64(key) {
            0 => (plan.vcpus as u64).max(min) as usize,
            n => n as usize,
        };
        let units = |key: &str| params.u64(key) * WORK_UNIT_PS / 1000;
        let grain = grain.max(1);
        let (unit, threads, barrier, queues, kind) = match plan.workload.as_str() {
            "cpu" => {
                let tasks = params.u64("tasks") as usize;
                ("tasks", per_cpu("threads", 1), BarrierKind::Spin, vec![], Kind::Cpu { tasks })
            }
            "nbody" => {
                let barrier =
                    if params.str("barrier") == "spin" { BarrierKind::Spin } else { BarrierKind::SpinThenBlock };
                let kind = Kind::Nbody { bodies: params.u64("bodies") as usize, steps: params.u64("steps") };
                ("timesteps", per_cpu("threads", 1), barrier, vec![], kind)
            }
            "locks" => {
                let (cs, think) = (units("cs"), units("think") + LOCK_OP);
                let critical = MAX_CRITICAL_BATCH.max(grain / 10);
                let batch = (grain / (cs + think).max(1)).min(critical / cs.max(1)).max(1);
                let kind = Kind::Locks { ops: params.u64("ops"), batch, cs, think };
                ("ops", per_cpu("threads", 1), BarrierKind::Spin, vec![], kind)
            }
            "pipeline" => {
                let stages = per_cpu("stages", 2);
                let per_item = units("work");
                let batch = (grain / per_item.max(1)).max(1);
                let capacity = (params.u64("capacity") / batch).max(1);
                let kind = Kind::Pipeline { items: params.u64("items"), batch, stage: per_item };
                ("items", stages, BarrierKind::Spin, vec![capacity; stages - 1], kind)
            }
            "phases" => {
                let kind = Kind::Phases { rounds: params.u64("rounds"), phase: params.u64("phase_ms") * sched::MS };
                ("rounds", per_cpu("threads", 1), BarrierKind::SpinThenBlock, vec![], kind)
            }
            other => anyhow::bail!("no model for workload {other}"),
        };
        Ok(Model { workload: plan.workload.clone(), unit, threads, barrier, queues, kind })
    }

    /// For `locks`: (operations per thread, most operations per acquisition, critical
    /// section and think time of one operation).
    pub fn lock_ops(&self) -> Option<(u64, u64, Ns, Ns)> {
        match self.kind {
            Kind::Locks { ops, batch, cs, think } => Some((ops, batch, cs, think)),
            _ => None,
        }
    }

    /// Thread `thread`'s step number `pc`, when it has done `done` ops.
    pub fn step(&self, thread: usize, pc: u64, done: u64) -> Step {
        let threads = self.threads;
        match self.kind {
            Kind::Cpu { tasks } => {
                if pc < share(tasks, threads, thread).len() as u64 {
                    Step::Compute { ns: CPU_TASK, ops: 1 }
                } else {
                    Step::Done
                }
            }
            Kind::Nbody { bodies, steps } => {
                if pc >= 4 * steps {
                    return Step::Done;
                }
                let mine = share(bodies, threads, thread).len() as Ns;
                match pc % 4 {
                    0 => Step::Compute { ns: mine * bodies as Ns * NBODY_PAIR, ops: 0 },
                    1 => Step::Barrier { ops: 0 },
                    2 => Step::Compute { ns: mine * NBODY_BODY, ops: 0 },
                    _ => Step::Barrier { ops: 1 },
                }
            }
            Kind::Locks { ops, .. } => match pc % 4 {
                0 if done >= ops => Step::Done,
                0 => Step::Lock,
                1 => Step::Critical,
                2 => Step::Unlock,
                _ => Step::Think,
            },
            Kind::Pipeline { items, batch, stage } => {
                // Stage 0 computes and pushes; the middle ones pop, compute and push; the
                // last pops and computes.
                let batches = items.div_ceil(batch);
                let last = thread + 1 == threads;
                let parts = if thread == 0 || last { 2 } else { 3 };
                let (index, part) = (pc / parts, pc % parts);
                if index >= batches {
                    return Step::Done;
                }
                let this = batch.min(items - index * batch);
                let compute = Step::Compute { ns: this * stage, ops: if last { this } else { 0 } };
                match (thread, part) {
                    (0, 0) => compute,
                    (0, _) => Step::Push(0),
                    (_, 0) => Step::Pop(thread - 1),
                    (_, 1) => compute,
                    _ => Step::Push(thread),
                }
            }
            Kind::Phases { rounds, phase } => {
                // A round: every thread busy for a phase, a join; thread 0 busy for a
                // phase while the others wait, a join.
                if pc >= 4 * rounds {
                    return Step::Done;
                }
                match pc % 4 {
                    0 => Step::Busy { ns: phase },
                    1 => Step::Barrier { ops: 0 },
                    2 if thread == 0 => Step::Busy { ns: phase },
                    2 => Step::Compute { ns: 0, ops: 0 },
                    _ => Step::Barrier { ops: 1 },
                }
            }
        }
    }

    /// For `pipeline`: items per simulated batch.
    pub fn pipeline_batch(&self) -> u64 {
        match self.kind {
            Kind::Pipeline { batch, .. } => batch,
            _ => 1,
        }
    }

    /// How long a busy thread computes before it yields to a queued thread.
    pub fn busy_slice(&self, grain: Ns) -> Ns {
        grain.max(PHASES_CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(workload: &str, vcpus: u32, args: &[&str]) -> Model {
        let plan = VmPlan {
            name: "a".into(),
            vcpus,
            weight: 256,
            cap: None,
            workload: workload.into(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            locks: "spin".into(),
            mem_mib: 128,
            start_delay_ms: 0,
        };
        Model::new(&plan, 20_000).unwrap()
    }

    /// Every step of `thread` up to its end, each lock acquisition for `batch` operations.
    fn program(model: &Model, thread: usize) -> Vec<Step> {
        let batch = model.lock_ops().map_or(0, |(_, batch, ..)| batch);
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

    fn ops(steps: &[Step]) -> u64 {
        steps
            .iter()
            .map(|step| match step {
                Step::Compute { ops, .. } | Step::Barrier { ops } => *ops,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn cpu_splits_its_tasks_over_one_thread_per_vcpu() {
        let cpu = model("cpu", 3, &["tasks=10"]);
        assert_eq!(cpu.threads, 3);
        let programs: Vec<Vec<Step>> = (0..3).map(|t| program(&cpu, t)).collect();
        assert_eq!(programs.iter().map(|p| ops(p)).collect::<Vec<_>>(), [4, 3, 3]);
        assert!(programs[0][..4].iter().all(|step| *step == Step::Compute { ns: CPU_TASK, ops: 1 }));
    }

    #[test]
    fn nbody_meets_twice_per_timestep_and_counts_each_once() {
        let nbody = model("nbody", 2, &["steps=5", "bodies=100", "barrier=block"]);
        assert_eq!(nbody.barrier, BarrierKind::SpinThenBlock);
        let steps = program(&nbody, 1);
        assert_eq!(steps.len(), 5 * 4 + 1);
        assert_eq!(steps.iter().filter(|step| matches!(step, Step::Barrier { .. })).count(), 10);
        assert_eq!(ops(&steps), 5);
        assert_eq!(steps[0], Step::Compute { ns: 50 * 100 * NBODY_PAIR, ops: 0 });
    }

    #[test]
    fn locks_take_the_lock_for_a_batch_of_short_operations_then_think() {
        let locks = model("locks", 2, &["ops=1000", "cs=100", "think=400"]);
        let (ops, batch, cs, think) = locks.lock_ops().unwrap();
        assert_eq!(ops, 1000);
        assert!(batch > 1 && batch * cs <= MAX_CRITICAL_BATCH);
        assert_eq!(cs, 100 * WORK_UNIT_PS / 1000);
        assert_eq!(think, 400 * WORK_UNIT_PS / 1000 + LOCK_OP);
        let steps = program(&locks, 0);
        assert_eq!(&steps[..4], &[Step::Lock, Step::Critical, Step::Unlock, Step::Think]);
        assert_eq!(steps.len(), 4 * 1000usize.div_ceil(batch as usize) + 1);
        // The end depends on the operations done, not on the steps taken.
        assert_eq!(locks.step(1, 8, 999), Step::Lock);
        assert_eq!(locks.step(1, 8, 1000), Step::Done);
    }

    #[test]
    fn pipeline_stages_pass_every_item_through_every_queue() {
        let pipeline = model("pipeline", 3, &["items=1000", "capacity=64"]);
        assert_eq!(pipeline.threads, 3);
        assert_eq!(pipeline.queues.len(), 2);
        let programs: Vec<Vec<Step>> = (0..3).map(|t| program(&pipeline, t)).collect();
        let count = |p: &[Step], wanted: Step| p.iter().filter(|step| **step == wanted).count();
        let batches = count(&programs[0], Step::Push(0));
        assert!(batches > 1);
        assert_eq!(count(&programs[1], Step::Pop(0)), batches);
        assert_eq!(count(&programs[1], Step::Push(1)), batches);
        assert_eq!(count(&programs[2], Step::Pop(1)), batches);
        // Only the last stage counts items, each once.
        assert_eq!(ops(&programs[0]) + ops(&programs[1]), 0);
        assert_eq!(ops(&programs[2]), 1000);
    }

    #[test]
    fn phases_alternate_parallel_and_serial_phases_joined_by_barriers() {
        let phases = model("phases", 4, &["rounds=3", "phase_ms=5"]);
        assert_eq!(phases.barrier, BarrierKind::SpinThenBlock);
        let main = program(&phases, 0);
        let other = program(&phases, 2);
        assert_eq!(
            main[..4],
            [
                Step::Busy { ns: 5 * sched::MS },
                Step::Barrier { ops: 0 },
                Step::Busy { ns: 5 * sched::MS },
                Step::Barrier { ops: 1 }
            ]
        );
        assert_eq!(other[2], Step::Compute { ns: 0, ops: 0 });
        assert_eq!(ops(&main), 3);
        assert_eq!(main.len(), other.len());
    }
}
