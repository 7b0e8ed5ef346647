//! `phases`: rounds of a parallel phase and a serial one on the clock, joined by barriers.

use sched::Ns;
use workloads::{BarrierKind, ParamError};

use super::{Args, Model, Program, Step};

/// `phases`' unit of work between two yields (1000 units).
const PHASES_CHUNK: Ns = 2_000;

#[derive(Debug)]
pub(super) struct Phases {
    rounds: u64,
    phase: Ns,
    /// How long a busy thread computes before it yields to a queued thread.
    slice: Ns,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let phases = Phases {
        rounds: args.params.u64("rounds"),
        phase: args.params.u64("phase_ms") * sched::MS,
        slice: args.grain.max(PHASES_CHUNK),
    };
    Ok(Model { barrier: BarrierKind::SpinThenBlock, ..Model::of(args, args.per_vcpu("threads", 1), phases) })
}

impl Program for Phases {
    fn step(&self, thread: usize, pc: u64, _done: u64) -> Step {
        // A round: every thread busy for a phase, a join; thread 0 busy for a phase while
        // the others wait, a join.
        if pc >= 4 * self.rounds {
            return Step::Done;
        }
        let busy = Step::Busy { ns: self.phase, slice: self.slice };
        match pc % 4 {
            0 => busy,
            1 => Step::Barrier { ops: 0 },
            2 if thread == 0 => busy,
            2 => Step::Compute { ns: 0, ops: 0 },
            _ => Step::Barrier { ops: 1 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{model, ops, program};
    use super::*;

    #[test]
    fn phases_alternate_parallel_and_serial_phases_joined_by_barriers() {
        let phases = model("phases", 4, &["rounds=3", "phase_ms=5"]);
        assert_eq!(phases.barrier, BarrierKind::SpinThenBlock);
        let main = program(&phases, 0);
        let other = program(&phases, 2);
        let busy = Step::Busy { ns: 5 * sched::MS, slice: 20_000 };
        assert_eq!(main[..4], [busy, Step::Barrier { ops: 0 }, busy, Step::Barrier { ops: 1 }]);
        assert_eq!(other[2], Step::Compute { ns: 0, ops: 0 });
        assert_eq!(ops(&main), 3);
        assert_eq!(main.len(), other.len());
    }
}
