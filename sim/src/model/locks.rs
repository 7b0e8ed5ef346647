//! `locks`: operations of a critical section under the VM's ticket lock and think time
//! outside it, grouped in batches.

use sched::Ns;
use workloads::ParamError;

use super::{Args, LockOps, Model, Program, Step};

/// An uncontended lock and unlock plus the bucket update.
const LOCK_OP: Ns = 8;
/// Critical sections are grouped into batches at most this long (or a tenth of the grain, if
/// more), well under the PV lock's bounds (10 µs, then 200 µs), so that a queue of waiters
/// behind running holders does not look stuck.
const MAX_CRITICAL_BATCH: Ns = 5_000;

#[derive(Debug)]
pub(super) struct Locks {
    ops: u64,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let (cs, think) = (args.work_ns("cs"), args.work_ns("think") + LOCK_OP);
    let critical = MAX_CRITICAL_BATCH.max(args.grain / 10);
    let batch = (args.grain / (cs + think).max(1)).min(critical / cs.max(1)).max(1);
    let ops = args.params.u64("ops");
    let lock = LockOps { ops, batch, cs, think };
    Ok(Model { lock: Some(lock), ..Model::of(args, args.per_vcpu("threads", 1), Locks { ops }) })
}

impl Program for Locks {
    fn step(&self, _thread: usize, pc: u64, done: u64) -> Step {
        match pc % 4 {
            0 if done >= self.ops => Step::Done,
            0 => Step::Lock,
            1 => Step::Critical,
            2 => Step::Unlock,
            _ => Step::Think,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::WORK_UNIT_PS;
    use super::super::tests::{model, program};
    use super::*;

    #[test]
    fn locks_take_the_lock_for_a_batch_of_short_operations_then_think() {
        let locks = model("locks", 2, &["ops=1000", "cs=100", "think=400"]);
        let LockOps { ops, batch, cs, think } = locks.lock.unwrap();
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
}
