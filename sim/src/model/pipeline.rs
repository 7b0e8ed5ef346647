//! `pipeline`: stages passing batches of items through bounded queues.

use sched::Ns;
use workloads::ParamError;

use super::{Args, Model, Program, Step};

/// A pipeline queue's push or pop while the stage on its other side runs on another VCPU:
/// the queue's cache lines move between them (2 stages on 2 VCPUs pass 2.0 M items/s at 200
/// units an item, 0.5 µs a stage; on one VCPU, 0.39 µs, the work alone).
const QUEUE_SHARED: Ns = 110;

#[derive(Debug)]
pub(super) struct Pipeline {
    items: u64,
    /// Items per simulated batch.
    batch: u64,
    /// One item's work in a stage.
    stage: Ns,
    stages: usize,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let stages = args.per_vcpu("stages", 2);
    let per_item = args.work_ns("work");
    let batch = (args.grain / per_item.max(1)).max(1);
    let capacity = (args.params.u64("capacity") / batch).max(1);
    let pipeline = Pipeline { items: args.params.u64("items"), batch, stage: per_item, stages };
    Ok(Model {
        queues: vec![capacity; stages - 1],
        queue_crossing: QUEUE_SHARED * batch,
        ..Model::of(args, stages, pipeline)
    })
}

impl Program for Pipeline {
    fn step(&self, thread: usize, pc: u64, _done: u64) -> Step {
        // Stage 0 computes and pushes; the middle ones pop, compute and push; the last pops
        // and computes.
        let (items, batch) = (self.items, self.batch);
        let batches = items.div_ceil(batch);
        let last = thread + 1 == self.stages;
        let parts = if thread == 0 || last { 2 } else { 3 };
        let (index, part) = (pc / parts, pc % parts);
        if index >= batches {
            return Step::Done;
        }
        let this = batch.min(items - index * batch);
        let compute = Step::Compute { ns: this * self.stage, ops: if last { this } else { 0 } };
        match (thread, part) {
            (0, 0) => compute,
            (0, _) => Step::Push(0),
            (_, 0) => Step::Pop(thread - 1),
            (_, 1) => compute,
            _ => Step::Push(thread),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{model, ops, program};
    use super::*;

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
    fn a_queue_crossing_costs_each_item_of_its_batch() {
        let pipeline = model("pipeline", 2, &["items=1000", "work=200"]);
        let Step::Compute { ns, .. } = pipeline.step(0, 0, 0) else { panic!("stage 0 computes first") };
        let batch = ns / 390;
        assert!(batch > 1);
        assert_eq!(pipeline.queue_crossing, QUEUE_SHARED * batch);
    }
}
