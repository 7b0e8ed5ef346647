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

use crate::{Assignment, Event, MS, Ns, Params, Policy, SliceEnds, Topology, VcpuId};

/// Linux's base slice on machines with 8 or more CPUs (`sched_base_slice` scaled by CPUs).
const SLICE: Ns = 3 * MS;
/// How far a waking task must lead the running one to preempt it.
const WAKEUP_GRANULARITY: Ns = MS;

/// Every decision takes O(log tasks): the tasks and pCPUs are kept in ordered sets, and a
/// running task's vruntime is brought up to date only when it stops (all running tasks
/// advance alike, so their order does not change while they run).
pub struct Host {
    now: Ns,
    assignment: Assignment,
    /// When each pCPU's task started running there.
    since: Vec<Ns>,
    runnable: Vec<bool>,
    /// Each task's vruntime; for a running task, as of when it started running.
    vruntime: Vec<Ns>,
    /// The runnable tasks without a pCPU, by (vruntime, id).
    waiting: BTreeSet<(Ns, u32)>,
    /// The running tasks, by (vruntime minus start time, id): by (vruntime, id) at any time.
    running: BTreeSet<(i64, u32)>,
    /// When each busy pCPU's task's slice ends.
    slices: SliceEnds,
}

impl Host {
    pub fn new(_params: &Params, topology: &Topology) -> Host {
        let pcpus = topology.pcpus as usize;
        let vcpus = topology.nr_vcpus();
        Host {
            now: 0,
            assignment: Assignment::new(topology),
            since: vec![0; pcpus],
            runnable: vec![false; vcpus],
            vruntime: vec![0; vcpus],
            waiting: BTreeSet::new(),
            running: BTreeSet::new(),
            slices: SliceEnds::new(pcpus),
        }
    }

    /// `vcpu`'s vruntime now.
    fn vruntime_now(&self, vcpu: VcpuId) -> Ns {
        let vruntime = self.vruntime[vcpu.index()];
        self.assignment.pcpu_of(vcpu).map_or(vruntime, |pcpu| vruntime + self.now - self.since[pcpu])
    }

    fn running_key(&self, vcpu: VcpuId, pcpu: usize) -> (i64, u32) {
        (self.vruntime[vcpu.index()] as i64 - self.since[pcpu] as i64, vcpu.0)
    }

    /// The running task furthest ahead (ties: the highest id).
    fn furthest_running(&self) -> Option<VcpuId> {
        self.running.last().map(|&(_, v)| VcpuId(v))
    }

    /// The waiting task with the least vruntime (ties by id).
    fn least_waiting(&self) -> Option<VcpuId> {
        self.waiting.first().map(|&(_, v)| VcpuId(v))
    }

    /// The least and the greatest vruntime of the runnable tasks.
    fn runnable_vruntimes(&self) -> impl Iterator<Item = Ns> + '_ {
        let running = self.running.first().into_iter().chain(self.running.last());
        let running = running.map(|&(_, v)| self.vruntime_now(VcpuId(v)));
        let waiting = self.waiting.first().into_iter().chain(self.waiting.last()).map(|&(vruntime, _)| vruntime);
        running.chain(waiting)
    }

    /// The task on `pcpu` stops running: its vruntime is brought up to date, and it waits if
    /// it is still runnable.
    fn take_off(&mut self, pcpu: usize) {
        let Some(vcpu) = self.assignment.take(pcpu) else { return };
        self.running.remove(&self.running_key(vcpu, pcpu));
        self.vruntime[vcpu.index()] += self.now - self.since[pcpu];
        self.slices.clear(pcpu);
        if self.runnable[vcpu.index()] {
            self.waiting.insert((self.vruntime[vcpu.index()], vcpu.0));
        }
    }

    /// Puts `vcpu` on `pcpu` for a new slice, in place of its task.
    fn put(&mut self, pcpu: usize, vcpu: VcpuId) {
        self.take_off(pcpu);
        self.waiting.remove(&(self.vruntime[vcpu.index()], vcpu.0));
        self.assignment.set(pcpu, Some(vcpu));
        self.since[pcpu] = self.now;
        self.running.insert(self.running_key(vcpu, pcpu));
        self.slices.set(pcpu, self.now + SLICE);
    }

    /// Gives idle pCPUs the waiting tasks with the least vruntime.
    fn fill_idle(&mut self) {
        while let Some(pcpu) = self.assignment.first_idle()
            && let Some(next) = self.least_waiting()
        {
            self.put(pcpu, next);
        }
    }

    fn wake(&mut self, vcpu: VcpuId) {
        if self.runnable[vcpu.index()] {
            return;
        }
        if let Some(min) = self.runnable_vruntimes().min() {
            let floor = min.saturating_sub(SLICE / 2);
            self.vruntime[vcpu.index()] = self.vruntime[vcpu.index()].max(floor);
        }
        self.runnable[vcpu.index()] = true;
        self.waiting.insert((self.vruntime[vcpu.index()], vcpu.0));
        if let Some(pcpu) = self.assignment.first_idle() {
            self.put(pcpu, vcpu);
            return;
        }
        let current = self.furthest_running().expect("no pCPU is idle");
        if self.vruntime[vcpu.index()] + WAKEUP_GRANULARITY < self.vruntime_now(current) {
            let pcpu = self.assignment.pcpu_of(current).expect("a running task");
            self.put(pcpu, vcpu);
        }
    }

    fn leave(&mut self, vcpu: VcpuId) {
        self.runnable[vcpu.index()] = false;
        match self.assignment.pcpu_of(vcpu) {
            Some(pcpu) => self.take_off(pcpu),
            None => {
                self.waiting.remove(&(self.vruntime[vcpu.index()], vcpu.0));
            }
        }
        self.fill_idle();
    }

    /// The task on `vcpu`'s pCPU goes behind every other, if another waits.
    fn yield_pcpu(&mut self, vcpu: VcpuId) {
        let (Some(pcpu), Some(next)) = (self.assignment.pcpu_of(vcpu), self.least_waiting()) else { return };
        let last = self.runnable_vruntimes().max().unwrap_or(0);
        self.take_off(pcpu);
        self.waiting.remove(&(self.vruntime[vcpu.index()], vcpu.0));
        self.vruntime[vcpu.index()] = last + 1;
        self.waiting.insert((last + 1, vcpu.0));
        self.put(pcpu, next);
    }

    /// Ends the slices that are over, pCPU by pCPU in order: each such pCPU runs the
    /// least-vruntime task next, if that one is behind its own.
    fn rotate(&mut self) {
        for pcpu in self.slices.over(self.now) {
            let current = self.assignment[pcpu].expect("a busy pCPU");
            match self.least_waiting() {
                Some(next) if self.vruntime[next.index()] < self.vruntime_now(current) => self.put(pcpu, next),
                _ => self.slices.set(pcpu, self.now + SLICE),
            }
        }
    }
}

impl Policy for Host {
    fn handle(&mut self, now: Ns, event: Event) {
        self.now = now;
        match event {
            Event::Wake(vcpu) => self.wake(vcpu),
            Event::Block(vcpu) | Event::Down(vcpu) => self.leave(vcpu),
            Event::Yield { vcpu, .. } => self.yield_pcpu(vcpu),
            Event::Tick => self.rotate(),
            Event::Demand { .. } => {}
        }
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }

    fn drain_written(&mut self, into: &mut Vec<usize>) {
        self.assignment.drain_written(into);
    }

    fn next_tick(&self) -> Option<Ns> {
        // Slices matter only while some task waits.
        if self.waiting.is_empty() {
            return None;
        }
        self.slices.earliest()
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
