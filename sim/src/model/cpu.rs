//! `cpu`: independent tasks, split evenly over the threads.

use sched::Ns;
use workloads::{ParamError, share};

use super::{Args, Model, Program, Step};

/// One game-tree search of `cpu` (the guest does 880 tasks/s on 2 VCPUs here, native 280/s
/// on 1 CPU at a slower moment).
const CPU_TASK: Ns = 2_500_000;

#[derive(Debug)]
pub(super) struct Cpu {
    tasks: usize,
    threads: usize,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let threads = args.per_vcpu("threads", 1);
    Ok(Model::of(args, threads, Cpu { tasks: args.params.u64("tasks") as usize, threads }))
}

impl Program for Cpu {
    fn step(&self, thread: usize, pc: u64, _done: u64) -> Step {
        if pc < share(self.tasks, self.threads, thread).len() as u64 {
            Step::Compute { ns: CPU_TASK, ops: 1 }
        } else {
            Step::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{model, ops, program};
    use super::*;

    #[test]
    fn cpu_splits_its_tasks_over_one_thread_per_vcpu() {
        let cpu = model("cpu", 3, &["tasks=10"]);
        assert_eq!(cpu.threads, 3);
        let programs: Vec<Vec<Step>> = (0..3).map(|t| program(&cpu, t)).collect();
        assert_eq!(programs.iter().map(|p| ops(p)).collect::<Vec<_>>(), [4, 3, 3]);
        assert!(programs[0][..4].iter().all(|step| *step == Step::Compute { ns: CPU_TASK, ops: 1 }));
    }
}
