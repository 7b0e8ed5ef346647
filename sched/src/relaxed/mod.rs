//! `cosched-relaxed`: ESX 3/4 style relaxed co-scheduling.
//!
//! VCPUs are scheduled one by one, as by a proportional-share scheduler, so no pCPU idles for
//! a gang's sake; but a VCPU may not run too far ahead of its slowest sibling, because the
//! guest expects its CPUs to advance together (a spinning VCPU waiting on a descheduled lock
//! holder or IPI target only burns time). Siblings are started together where pCPUs allow, and
//! the lead that builds anyway is measured and bounded by stopping the leaders.
//!
//! The rules:
//! - Share: each VCPU has a virtual time, its run time divided by its share of its VM's
//!   weight (the weight split evenly among the VM's VCPUs).
//! - Co-start: slices end on all pCPUs at once. At a slice end the pCPUs are dealt out afresh
//!   VM by VM: the VM whose ready VCPU (runnable, not co-stopped) has the least virtual time
//!   goes first and gets a pCPU for each of its ready VCPUs, least virtual time first; then the
//!   next VM, until the pCPUs run out (ties by id). A VCPU dealt a pCPU again keeps the one it
//!   had. Within a slice, a pCPU that frees up takes the ready VCPU with the least virtual time;
//!   a running VCPU keeps its pCPU until the slice ends, it blocks, yields or goes down, or it
//!   is co-stopped. Without the VM-by-VM deal, two VMs of two VCPUs on two pCPUs settle into
//!   one VCPU of each running at a time, and a synchronizing guest spins away half its time.
//! - A VCPU waking has its virtual time raised to at least the floor minus one slice of its own
//!   running, so sleeping banks at most a slice of credit. The floor is the least virtual time
//!   of the runnable VCPUs, never moving back (as Linux's `min_vruntime`).
//! - Progress: each VCPU has a progress clock that advances only while it runs. Its skew is
//!   its progress minus the least progress of its runnable (online, not blocked) siblings, itself
//!   included. A blocked VCPU accrues no skew, in either direction: when it wakes, its progress
//!   is set to the least progress of its runnable siblings, if it has any (else kept).
//! - Co-stop: skew is checked at every event and every `Params::tick` while anything runs. A
//!   VCPU whose skew exceeds `Params::skew` is co-stopped, and co-started at the first check
//!   where it no longer does, without hysteresis: its skew only shrinks while it is stopped,
//!   and being ready again does not preempt anyone. The skew of two runnable siblings thus
//!   stays within `Params::skew` plus what one of them runs between two checks.
//! - Co-start of the laggards: the pCPU of a VCPU being co-stopped goes straight to its most
//!   lagging ready sibling (least progress), for the rest of the slice. So the laggards take
//!   precedence over every other VM's VCPUs for the pCPUs their leaders give up, and only for
//!   those: a VM's co-stops neither take pCPU time from other VMs nor lose it to them.
//! - A yield to a ready sibling hands it the pCPU for the rest of the slice (directed yield);
//!   another yield gives the pCPU to the ready VCPU with the least virtual time, if any.

mod skew;
#[cfg(test)]
mod tests;
mod waiting;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{Assignment, Event, Ns, Params, Policy, Topology, UNIT_WEIGHT, VcpuId};

pub struct Relaxed {
    topology: Topology,
    slice: Ns,
    max_skew: Ns,
    tick: Ns,
    assignment: Assignment,
    /// When each pCPU's VCPU started running there.
    since: Vec<Ns>,
    /// When the current slice ends, on every pCPU.
    slice_end: Ns,
    runnable: Vec<bool>,
    costopped: Vec<bool>,
    /// Per VCPU: run time divided by its share of its VM's weight; for a running VCPU, as of
    /// when it started running (likewise `progress`).
    vtime: Vec<u64>,
    /// Per VM: how fast its VCPUs' virtual time runs, VCPUs x `UNIT_WEIGHT` / weight, as a
    /// reduced fraction.
    rate: Vec<(u64, u64)>,
    /// The runnable VCPUs without a pCPU by (virtual time, id), the ready ones and the
    /// co-stopped ones apart: only running VCPUs' virtual times move, so the order holds until
    /// they run. Min-heaps whose entries are left behind as stale when their VCPU leaves
    /// (runs, blocks, is co-stopped or co-started: see `waits`), dropped when they come to the
    /// top: a VCPU joins a heap far more often than its least entry is asked for.
    ready_heap: BinaryHeap<Reverse<(u64, u32)>>,
    costopped_heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// The VCPUs whose co-stop state changed at the last event.
    costop_changed: Vec<VcpuId>,
    /// Per VM: when its co-stops are checked next, at or before the earliest time one could
    /// change if nothing happens to the VM before (see `due`); and those times as a min-heap
    /// of (time, VM), where a time is only ever replaced by an earlier one, its old entry left
    /// behind as stale (it no longer matches `due`).
    due: Vec<Ns>,
    dues: BinaryHeap<Reverse<(Ns, usize)>>,
    /// The VMs whose skew is to be checked at this event, and a mark per VM of whether it is
    /// among them (buffers kept between events).
    to_check: Vec<usize>,
    marked: Vec<bool>,
    /// The VMs whose `due` is to be worked out again at the end of this event.
    to_refresh: Vec<usize>,
    /// Per VCPU: run time since it last woke, plus where it started then.
    progress: Vec<Ns>,
    /// The least virtual time of the runnable VCPUs, never moving back: the mark a waking VCPU
    /// catches up to.
    floor: u64,
    /// The time of the last event (co-stops are checked at every event).
    now: Ns,
}

impl Relaxed {
    pub fn new(params: &Params, topology: &Topology) -> Relaxed {
        let pcpus = topology.pcpus as usize;
        let vcpus = topology.nr_vcpus();
        Relaxed {
            topology: topology.clone(),
            slice: params.slice.max(1),
            max_skew: params.skew,
            tick: params.tick.max(1),
            assignment: Assignment::new(topology),
            since: vec![0; pcpus],
            slice_end: 0,
            runnable: vec![false; vcpus],
            costopped: vec![false; vcpus],
            vtime: vec![0; vcpus],
            rate: topology
                .vms
                .iter()
                .map(|vm| reduced(u64::from(vm.vcpus) * UNIT_WEIGHT, u64::from(vm.weight.max(1))))
                .collect(),
            ready_heap: BinaryHeap::new(),
            costopped_heap: BinaryHeap::new(),
            costop_changed: Vec::new(),
            due: vec![Ns::MAX; topology.vms.len()],
            dues: BinaryHeap::new(),
            to_check: Vec::new(),
            marked: vec![false; topology.vms.len()],
            to_refresh: Vec::new(),
            progress: vec![0; vcpus],
            floor: 0,
            now: 0,
        }
    }

    /// `vcpu`'s virtual time now.
    fn vtime_now(&self, vcpu: VcpuId) -> u64 {
        let ran = self.assignment.pcpu_of(vcpu).map_or(0, |pcpu| self.now - self.since[pcpu]);
        self.vtime[vcpu.index()] + self.virtual_ns(vcpu, ran)
    }

    /// `vcpu`'s virtual time for running `ns`.
    fn virtual_ns(&self, vcpu: VcpuId, ns: Ns) -> u64 {
        let (numerator, denominator) = self.rate[self.topology.vm_of(vcpu)];
        // No division at the default weight.
        if denominator == 1 { ns * numerator } else { ns * numerator / denominator }
    }

    /// The VCPU on `pcpu` stops running: its virtual time and progress are brought up to
    /// date, and it waits if it is still runnable.
    fn take_off(&mut self, pcpu: usize) {
        let Some(vcpu) = self.assignment[pcpu] else { return };
        self.vtime[vcpu.index()] = self.vtime_now(vcpu);
        self.progress[vcpu.index()] = self.progress_now(vcpu);
        self.assignment.take(pcpu);
        if self.runnable[vcpu.index()] {
            self.enqueue(vcpu);
        }
        self.to_refresh.push(self.topology.vm_of(vcpu));
    }

    /// Puts `vcpu` on `pcpu`; the VCPU it replaces waits, if still runnable.
    fn put(&mut self, pcpu: usize, vcpu: Option<VcpuId>) {
        self.take_off(pcpu);
        if let Some(new) = vcpu {
            self.assignment.set(pcpu, Some(new));
            self.since[pcpu] = self.now;
            self.to_refresh.push(self.topology.vm_of(new));
        }
    }

    /// Raises the floor to the least virtual time of the runnable VCPUs. Needed only when a
    /// VCPU wakes: between wakes that least time can only grow (virtual times grow and the
    /// runnable set only shrinks), so it is greatest just then.
    fn raise_floor(&mut self) {
        let waiting = [self.least(false), self.least(true)].into_iter().flatten().map(|(vtime, _)| vtime);
        let running = self.assignment.iter().flatten().map(|&v| self.vtime_now(v));
        if let Some(least) = running.chain(waiting).min() {
            self.floor = self.floor.max(least);
        }
    }

    fn wake(&mut self, vcpu: VcpuId) {
        if self.runnable[vcpu.index()] {
            return;
        }
        self.raise_floor();
        if let Some(slowest) = self.slowest(self.topology.vm_of(vcpu)) {
            self.progress[vcpu.index()] = slowest;
        }
        let lag = self.virtual_ns(vcpu, self.slice);
        self.vtime[vcpu.index()] = self.vtime[vcpu.index()].max(self.floor.saturating_sub(lag));
        self.runnable[vcpu.index()] = true;
        self.enqueue(vcpu);
    }

    /// `vcpu` blocked or went down.
    fn leave(&mut self, vcpu: VcpuId) {
        self.runnable[vcpu.index()] = false;
        self.set_costopped(vcpu, false);
        // Waiting, it leaves its heap as its entry goes stale.
        if let Some(pcpu) = self.assignment.pcpu_of(vcpu) {
            self.take_off(pcpu);
        }
    }

    fn yield_pcpu(&mut self, vcpu: VcpuId, to: Option<VcpuId>) {
        let Some(pcpu) = self.assignment.pcpu_of(vcpu) else { return };
        let vm = self.topology.vm_of(vcpu);
        if let Some(to) = to.filter(|&to| self.topology.vm_of(to) == vm && self.ready(to)) {
            self.put(pcpu, Some(to));
        } else if let Some(next) = self.least_ready() {
            self.put(pcpu, Some(next));
        }
    }

    /// Ends the slice if it is over, dealing the pCPUs out VM by VM (see the module docs).
    fn rotate(&mut self, now: Ns) {
        if self.slice_end > now {
            return;
        }
        self.slice_end = now + self.slice;
        let candidates = |v: &VcpuId| self.runnable[v.index()] && !self.costopped[v.index()];
        let mut vms: Vec<Vec<VcpuId>> = (0..self.topology.vms.len())
            .map(|vm| {
                let mut ready: Vec<VcpuId> = self.topology.vcpus_of(vm).filter(candidates).collect();
                ready.sort_by_key(|&v| (self.vtime_now(v), v.0));
                ready
            })
            .filter(|ready| !ready.is_empty())
            .collect();
        vms.sort_by_key(|ready| (self.vtime_now(ready[0]), ready[0].0));
        let dealt: Vec<VcpuId> = vms.into_iter().flatten().take(self.assignment.len()).collect();
        for pcpu in 0..self.assignment.len() {
            if self.assignment[pcpu].is_some_and(|v| !dealt.contains(&v)) {
                self.put(pcpu, None);
            }
        }
        let newcomers: Vec<VcpuId> = dealt.into_iter().filter(|&v| self.assignment.pcpu_of(v).is_none()).collect();
        let idle: Vec<usize> = (0..self.assignment.len()).filter(|&pcpu| self.assignment[pcpu].is_none()).collect();
        for (pcpu, vcpu) in idle.into_iter().zip(newcomers) {
            self.put(pcpu, Some(vcpu));
        }
    }

    /// Gives the idle pCPUs the ready VCPUs with the least virtual time.
    fn fill(&mut self) {
        while let Some(pcpu) = self.assignment.first_idle()
            && let Some(next) = self.least_ready()
        {
            self.put(pcpu, Some(next));
        }
    }
}

impl Policy for Relaxed {
    fn handle(&mut self, now: Ns, event: Event) {
        self.now = now;
        self.costop_changed.clear();
        // The VMs whose co-stops may have changed are checked: those whose due time has come,
        // and the event's. Checking the others could change nothing.
        while let Some(&Reverse((due, vm))) = self.dues.peek()
            && due <= now
        {
            self.dues.pop();
            // An entry a VM's earlier time has replaced is stale.
            if self.due[vm] == due {
                self.due[vm] = Ns::MAX;
                self.mark(vm);
            }
        }
        match event {
            Event::Wake(vcpu) => self.wake(vcpu),
            Event::Block(vcpu) | Event::Down(vcpu) => self.leave(vcpu),
            Event::Yield { vcpu, to } => self.yield_pcpu(vcpu, to),
            Event::Tick | Event::Demand { .. } => {}
        }
        if let Event::Wake(vcpu) | Event::Block(vcpu) | Event::Down(vcpu) = event {
            self.mark(self.topology.vm_of(vcpu));
        }
        self.check_skew();
        self.rotate(now);
        self.fill();
        let mut vms = std::mem::take(&mut self.to_refresh);
        vms.sort_unstable();
        vms.dedup();
        for &vm in &vms {
            // A check sooner than needed changes nothing: a VM already due sooner stays so.
            let due = self.due(vm, now);
            if due < self.due[vm] {
                self.due[vm] = due;
                self.dues.push(Reverse((due, vm)));
            }
        }
        self.to_refresh = vms;
        self.to_refresh.clear();
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }

    fn drain_written(&mut self, into: &mut Vec<usize>) {
        self.assignment.drain_written(into);
    }

    fn next_tick(&self) -> Option<Ns> {
        self.assignment.iter().any(Option::is_some).then(|| self.slice_end.min(self.now + self.tick))
    }

    fn costopped(&self, vcpu: VcpuId) -> bool {
        self.costopped[vcpu.index()]
    }

    fn costop_changed(&self) -> &[VcpuId] {
        &self.costop_changed
    }
}

/// `numerator / denominator` in lowest terms.
fn reduced(numerator: u64, denominator: u64) -> (u64, u64) {
    let (mut a, mut b) = (numerator, denominator);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (numerator / a, denominator / a)
}
