//! `nbody`: per timestep, a force loop and an update loop, each followed by a barrier.

use sched::Ns;
use workloads::{BarrierKind, ParamError, share};

use super::{Args, Model, Program, Step};

/// One body pair in `nbody`'s force loop (1.3-1.6 ms per 512-body step on 1 CPU).
const NBODY_PAIR: Ns = 5;
/// One body advanced in `nbody`'s second loop.
const NBODY_BODY: Ns = 20;

#[derive(Debug)]
pub(super) struct Nbody {
    bodies: usize,
    steps: u64,
    threads: usize,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let barrier = if args.params.str("barrier") == "spin" { BarrierKind::Spin } else { BarrierKind::SpinThenBlock };
    let threads = args.per_vcpu("threads", 1);
    let nbody = Nbody { bodies: args.params.u64("bodies") as usize, steps: args.params.u64("steps"), threads };
    Ok(Model { barrier, ..Model::of(args, threads, nbody) })
}

impl Program for Nbody {
    fn step(&self, thread: usize, pc: u64, _done: u64) -> Step {
        if pc >= 4 * self.steps {
            return Step::Done;
        }
        let mine = share(self.bodies, self.threads, thread).len() as Ns;
        match pc % 4 {
            0 => Step::Compute { ns: mine * self.bodies as Ns * NBODY_PAIR, ops: 0 },
            1 => Step::Barrier { ops: 0 },
            2 => Step::Compute { ns: mine * NBODY_BODY, ops: 0 },
            _ => Step::Barrier { ops: 1 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{model, ops, program};
    use super::*;

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
}
