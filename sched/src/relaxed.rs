//! Placeholder until the policy is written.
use crate::{Event, Ns, Params, Policy, Topology, VcpuId};

pub struct Relaxed {
    assignment: Vec<Option<VcpuId>>,
}

impl Relaxed {
    pub fn new(_params: &Params, topology: &Topology) -> Relaxed {
        Relaxed { assignment: vec![None; topology.pcpus as usize] }
    }
}

impl Policy for Relaxed {
    fn handle(&mut self, _now: Ns, _event: Event) {}
    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }
    fn next_tick(&self) -> Option<Ns> {
        None
    }
}
