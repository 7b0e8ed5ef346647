//! `host`: a model of Linux's fair scheduler placing VCPU threads, as under plain KVM.
//!
//! Linux knows nothing of VMs: every VCPU thread is an equal task, whatever its VM's weight,
//! and a VM's siblings are preempted independently. The real dispatcher does not enforce this
//! model (`gates` is false: Linux itself schedules the threads); the simulator runs it to
//! stand for Linux. The model: each task has a virtual runtime advanced by the time it runs;
//! a pCPU runs its task for a slice, then the task with the least virtual runtime; a waking
//! task is placed at most half a slice behind the least virtual runtime (sleeper credit) and
//! takes an idle pCPU, or preempts the running task furthest ahead if it leads it by more
//! than the wake-up granularity; a yielding task goes behind every other.

use std::collections::BTreeSet;

use crate::{Event, MS, Ns, Params, Policy, Topology, VcpuId};

/// Linux's base slice on machines with 8 or more CPUs (`sched_base_slice` scaled by CPUs).
const SLICE: Ns = 3 * MS;
/// How far a waking task must lead the running one to preempt it.
const WAKEUP_GRANULARITY: Ns = MS;

pub struct Host {
    assignment: Vec<Option<VcpuId>>,
    /// When each pCPU's task's slice ends.
    slice_end: Vec<Ns>,
    runnable: Vec<bool>,
    vruntime: Vec<Ns>,
    /// The runnable tasks without a pCPU, by (vruntime, id): a waiting task's vruntime does not
    /// move, so the order holds until it runs.
    waiting: BTreeSet<(Ns, u32)>,
    /// When each pCPU's running task was last charged.
    charged_at: Vec<Ns>,
}

impl Host {
    pub fn new(_params: &Params, topology: &Topology) -> Host {
        let pcpus = topology.pcpus as usize;
        let vcpus = topology.nr_vcpus();
        Host {
            assignment: vec![None; pcpus],
            slice_end: vec![0; pcpus],
            runnable: vec![false; vcpus],
            vruntime: vec![0; vcpus],
            waiting: BTreeSet::new(),
            charged_at: vec![0; pcpus],
        }
    }

    /// Adds the running tasks' run time since they were last charged to their vruntime.
    fn charge(&mut self, now: Ns) {
        for (pcpu, slot) in self.assignment.iter().enumerate() {
            if let Some(vcpu) = slot {
                self.vruntime[vcpu.index()] += now - self.charged_at[pcpu];
            }
            self.charged_at[pcpu] = now;
        }
    }

    fn pcpu_of(&self, vcpu: VcpuId) -> Option<usize> {
        self.assignment.iter().position(|&slot| slot == Some(vcpu))
    }

    fn key(&self, vcpu: VcpuId) -> (Ns, u32) {
        (self.vruntime[vcpu.index()], vcpu.0)
    }

    /// The waiting task with the least vruntime (ties by id).
    fn least_waiting(&self) -> Option<VcpuId> {
        self.waiting.first().map(|&(_, v)| VcpuId(v))
    }

    /// The vruntimes of the runnable tasks: the running ones and the least and most waiting.
    fn runnable_vruntimes(&self) -> impl Iterator<Item = Ns> + '_ {
        let running = self.assignment.iter().flatten().map(|v| self.vruntime[v.index()]);
        let waiting = self.waiting.first().into_iter().chain(self.waiting.last()).map(|&(vruntime, _)| vruntime);
        running.chain(waiting)
    }

    /// Puts `vcpu` on `pcpu` for a new slice; the task it replaces waits, if still runnable.
    fn put(&mut self, pcpu: usize, vcpu: Option<VcpuId>, now: Ns) {
        if let Some(old) = self.assignment[pcpu]
            && self.runnable[old.index()]
        {
            self.waiting.insert(self.key(old));
        }
        if let Some(new) = vcpu {
            self.waiting.remove(&self.key(new));
        }
        self.assignment[pcpu] = vcpu;
        self.slice_end[pcpu] = now + SLICE;
    }

    /// Gives idle pCPUs the waiting tasks with the least vruntime.
    fn fill_idle(&mut self, now: Ns) {
        for pcpu in 0..self.assignment.len() {
            if self.assignment[pcpu].is_none() {
                let next = self.least_waiting();
                self.put(pcpu, next, now);
            }
        }
    }

    fn wake(&mut self, vcpu: VcpuId, now: Ns) {
        if self.runnable[vcpu.index()] {
            return;
        }
        if let Some(min) = self.runnable_vruntimes().min() {
            let floor = min.saturating_sub(SLICE / 2);
            self.vruntime[vcpu.index()] = self.vruntime[vcpu.index()].max(floor);
        }
        self.runnable[vcpu.index()] = true;
        if let Some(pcpu) = self.assignment.iter().position(Option::is_none) {
            self.put(pcpu, Some(vcpu), now);
            return;
        }
        let furthest = (0..self.assignment.len())
            .max_by_key(|&pcpu| self.assignment[pcpu].map(|v| self.key(v)))
            .expect("at least one pCPU");
        let current = self.assignment[furthest].expect("no pCPU is idle");
        if self.vruntime[vcpu.index()] + WAKEUP_GRANULARITY < self.vruntime[current.index()] {
            self.put(furthest, Some(vcpu), now);
        } else {
            self.waiting.insert(self.key(vcpu));
        }
    }

    fn leave(&mut self, vcpu: VcpuId, now: Ns) {
        self.runnable[vcpu.index()] = false;
        match self.pcpu_of(vcpu) {
            Some(pcpu) => self.assignment[pcpu] = None,
            None => {
                self.waiting.remove(&self.key(vcpu));
            }
        }
        self.fill_idle(now);
    }

    /// Ends the slices that are over: each such pCPU runs the least-vruntime task next.
    fn rotate(&mut self, now: Ns) {
        for pcpu in 0..self.assignment.len() {
            let Some(current) = self.assignment[pcpu] else { continue };
            if self.slice_end[pcpu] > now {
                continue;
            }
            match self.least_waiting() {
                Some(next) if self.vruntime[next.index()] < self.vruntime[current.index()] => {
                    self.put(pcpu, Some(next), now)
                }
                _ => self.slice_end[pcpu] = now + SLICE,
            }
        }
    }
}

impl Policy for Host {
    fn handle(&mut self, now: Ns, event: Event) {
        self.charge(now);
        match event {
            Event::Wake(vcpu) => self.wake(vcpu, now),
            Event::Block(vcpu) | Event::Down(vcpu) => self.leave(vcpu, now),
            Event::Yield { vcpu, .. } => {
                if let Some(pcpu) = self.pcpu_of(vcpu)
                    && let Some(next) = self.least_waiting()
                {
                    let last = self.runnable_vruntimes().max().unwrap_or(0);
                    self.vruntime[vcpu.index()] = last + 1;
                    self.put(pcpu, Some(next), now);
                }
            }
            Event::Tick => self.rotate(now),
            Event::Demand { .. } => {}
        }
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }

    fn next_tick(&self) -> Option<Ns> {
        // Slices matter only while some task waits.
        if self.waiting.is_empty() {
            return None;
        }
        (0..self.assignment.len()).filter(|&pcpu| self.assignment[pcpu].is_some()).map(|p| self.slice_end[p]).min()
    }

    fn gates(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmSpec;
    use crate::harness::Harness;

    fn harness(pcpus: u32, vms: &[(u32, u32)]) -> Harness {
        let vms: Vec<VmSpec> = vms.iter().map(|&(vcpus, weight)| VmSpec { vcpus, weight, cap: None }).collect();
        let topology = Topology::new(pcpus, vms);
        Harness::new(Box::new(Host::new(&Params::default(), &topology)), topology)
    }

    #[test]
    fn every_vcpu_gets_an_equal_share_whatever_its_vm_weight() {
        // Linux sees threads, not VMs: the weight-512 VM gets no more than the other.
        let mut h = harness(2, &[(2, 256), (2, 512), (1, 256)]);
        h.wake_all();
        h.advance(10_000 * MS);
        for v in 0..5 {
            let run = h.times(VcpuId(v)).run as f64;
            let share = 2.0 / 5.0 * 10_000.0 * MS as f64;
            assert!((run - share).abs() < 0.02 * share, "v{v} ran {run} ns, fair is {share}");
            let wait = h.times(VcpuId(v)).longest_wait;
            assert!(wait <= 3 * SLICE, "v{v} waited {wait} ns");
        }
    }

    #[test]
    fn a_waking_vcpu_takes_an_idle_pcpu_or_preempts_one_far_ahead() {
        let mut h = harness(1, &[(2, 256)]);
        let (a, b) = (VcpuId(0), VcpuId(1));
        h.wake(a);
        h.advance(SLICE / 2);
        h.block(a);
        h.wake(b);
        assert!(h.running(b));
        h.advance(20 * MS);
        // a slept for 20 ms: it returns with sleeper credit and preempts b at once.
        h.wake(a);
        assert!(h.running(a));
    }

    #[test]
    fn a_yield_goes_behind_every_other_task() {
        let mut h = harness(1, &[(3, 256)]);
        h.wake_all();
        let first = h.running_vcpus()[0];
        h.yield_to(first, None);
        let second = h.running_vcpus()[0];
        assert_ne!(first, second);
        h.yield_to(second, None);
        let third = h.running_vcpus()[0];
        assert!(third != first && third != second, "{first} {second} {third}");
    }

    #[test]
    fn idle_pcpus_take_waiting_tasks_and_no_tick_is_needed_without_contention() {
        let mut h = harness(4, &[(2, 256), (1, 256)]);
        h.wake_all();
        assert_eq!(h.running_vcpus().len(), 3);
        assert_eq!(h.policy.next_tick(), None);
        h.block(VcpuId(1));
        h.down(VcpuId(2));
        assert_eq!(h.running_vcpus(), [VcpuId(0)]);
    }
}
