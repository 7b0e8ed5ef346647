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

    /// How far `vcpu` has run ahead of its slowest runnable sibling; 0 unless it is runnable.
    pub fn skew(&self, vcpu: VcpuId) -> Ns {
        self.lead(vcpu, self.slowest(self.topology.vm_of(vcpu)))
    }

    /// `vcpu`'s lead over `slowest`, its VM's least progress; 0 unless it is runnable.
    fn lead(&self, vcpu: VcpuId, slowest: Option<Ns>) -> Ns {
        match slowest {
            Some(slowest) if self.runnable[vcpu.index()] => self.progress_now(vcpu) - slowest,
            _ => 0,
        }
    }

    /// The least progress of `vm`'s runnable VCPUs.
    fn slowest(&self, vm: usize) -> Option<Ns> {
        self.topology.vcpus_of(vm).filter(|v| self.runnable[v.index()]).map(|v| self.progress_now(v)).min()
    }

    /// `vcpu`'s progress now.
    fn progress_now(&self, vcpu: VcpuId) -> Ns {
        self.progress[vcpu.index()] + self.assignment.pcpu_of(vcpu).map_or(0, |pcpu| self.now - self.since[pcpu])
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

    /// Runnable and without a pCPU.
    fn waiting(&self, vcpu: VcpuId) -> bool {
        self.runnable[vcpu.index()] && self.assignment.pcpu_of(vcpu).is_none()
    }

    /// Waiting and not co-stopped.
    fn ready(&self, vcpu: VcpuId) -> bool {
        self.waiting(vcpu) && !self.costopped[vcpu.index()]
    }

    /// Whether heap entry `(vtime, vcpu)` of the ready heap (`costopped` false) or the
    /// co-stopped one stands for a VCPU waiting there now.
    fn waits(&self, (vtime, vcpu): (u64, u32), costopped: bool) -> bool {
        let v = vcpu as usize;
        self.waiting(VcpuId(vcpu)) && self.costopped[v] == costopped && self.vtime[v] == vtime
    }

    fn heap(&mut self, costopped: bool) -> &mut BinaryHeap<Reverse<(u64, u32)>> {
        if costopped { &mut self.costopped_heap } else { &mut self.ready_heap }
    }

    /// Enters runnable `vcpu`, just left without a pCPU or co-stopped or co-started, in the
    /// heap of its state.
    fn enqueue(&mut self, vcpu: VcpuId) {
        let costopped = self.costopped[vcpu.index()];
        let entry = Reverse((self.vtime[vcpu.index()], vcpu.0));
        self.heap(costopped).push(entry);
        // Stale entries buried under a long-waiting VCPU's are cleared out now and then.
        if self.heap(costopped).len() > 4 * self.runnable.len() + 64 {
            let mut heap = std::mem::take(self.heap(costopped));
            heap.retain(|&Reverse(entry)| self.waits(entry, costopped));
            *self.heap(costopped) = heap;
        }
    }

    /// The least (virtual time, id) of the ready VCPUs or of the co-stopped waiting ones.
    fn least(&mut self, costopped: bool) -> Option<(u64, u32)> {
        while let Some(&Reverse(entry)) = self.heap(costopped).peek() {
            if self.waits(entry, costopped) {
                return Some(entry);
            }
            self.heap(costopped).pop();
        }
        None
    }

    /// The ready VCPU of least virtual time (ties by id).
    fn least_ready(&mut self) -> Option<VcpuId> {
        self.least(false).map(|(_, v)| VcpuId(v))
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

    /// The earliest time any of `vm`'s co-stops could change if nothing happens to its VCPUs
    /// meanwhile: a lead grows or shrinks at most as fast as time passes, a running VCPU's
    /// only grows and a waiting one's only shrinks (its slowest sibling can only advance), so
    /// only a running VCPU can cross the bound upward and only a co-stopped one downward.
    /// So it comes from three figures of one pass: the least progress of the runnable VCPUs
    /// (the slowest), the most of the running ones and the least of the co-stopped ones.
    fn due(&self, vm: usize, now: Ns) -> Ns {
        let (mut slowest, mut fastest_running, mut slowest_costopped) = (Ns::MAX, None, None);
        for v in self.topology.vcpus_of(vm).filter(|v| self.runnable[v.index()]) {
            let progress = self.progress_now(v);
            slowest = slowest.min(progress);
            if self.assignment.pcpu_of(v).is_some() {
                fastest_running = fastest_running.max(Some(progress));
            } else if self.costopped[v.index()] {
                slowest_costopped = Some(slowest_costopped.map_or(progress, |least: Ns| least.min(progress)));
            }
        }
        let rising = fastest_running.map(|most| self.max_skew.saturating_sub(most - slowest));
        let falling = slowest_costopped.map(|least| (least - slowest).saturating_sub(self.max_skew));
        rising.into_iter().chain(falling).min().map_or(Ns::MAX, |margin| now + margin)
    }

    /// Has `vm` checked at this event.
    fn mark(&mut self, vm: usize) {
        if !self.marked[vm] {
            self.marked[vm] = true;
            self.to_check.push(vm);
        }
    }

    fn set_costopped(&mut self, vcpu: VcpuId, costopped: bool) {
        if self.costopped[vcpu.index()] != costopped {
            self.costopped[vcpu.index()] = costopped;
            self.costop_changed.push(vcpu);
            if self.waiting(vcpu) {
                self.enqueue(vcpu);
            }
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

    /// Co-stops the VCPUs of `vms` too far ahead and co-starts those back within bounds; the
    /// pCPU of a running VCPU co-stopped passes to its most lagging ready sibling, slice and all
    /// (if it has none, the pCPU is filled as any idle one). Only VMs whose VCPUs ran, woke or
    /// left since the last check need it: nobody else's progress or runnable set has moved.
    fn check_skew(&mut self) {
        let vms = std::mem::take(&mut self.to_check);
        for &vm in &vms {
            self.marked[vm] = false;
            self.to_refresh.push(vm);
            let slowest = self.slowest(vm);
            for vcpu in self.topology.vcpus_of(vm) {
                self.set_costopped(vcpu, self.lead(vcpu, slowest) > self.max_skew);
            }
        }
        self.to_check = vms;
        self.to_check.clear();
        // Only a VCPU co-stopped just now can be on a pCPU.
        let changed = self.costop_changed.iter().filter(|v| self.costopped[v.index()]);
        let mut leaders: Vec<usize> = changed.filter_map(|v| self.assignment.pcpu_of(*v)).collect();
        leaders.sort_unstable();
        for pcpu in leaders {
            let leader = self.assignment[pcpu].expect("a running leader");
            let siblings = self.topology.vcpus_of(self.topology.vm_of(leader));
            let laggard = siblings.filter(|&v| self.ready(v)).min_by_key(|v| (self.progress[v.index()], v.0));
            self.put(pcpu, laggard);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Lcg;
    use crate::harness::{Harness, State};
    use crate::{MS, VmSpec};

    const SLICE: Ns = 30 * MS;
    const SKEW: Ns = 3 * MS;
    const TICK: Ns = MS;

    fn params() -> Params {
        Params { slice: SLICE, skew: SKEW, tick: TICK, ..Params::default() }
    }

    /// A topology of `pcpus` pCPUs and VMs of (VCPUs, weight).
    fn topology(pcpus: u32, vms: &[(u32, u32)]) -> Topology {
        Topology::new(pcpus, vms.iter().map(|&(vcpus, weight)| VmSpec { vcpus, weight, cap: None }).collect())
    }

    fn harness(pcpus: u32, vms: &[(u32, u32)]) -> Harness {
        let topology = topology(pcpus, vms);
        Harness::new(Box::new(Relaxed::new(&params(), &topology)), topology)
    }

    /// A harness plus the test's own account of each VCPU's progress, kept from the definition
    /// (it advances while the VCPU runs; a waking VCPU starts at the least progress of its
    /// runnable siblings), to check the policy's decisions against after every event and tick.
    struct Run {
        h: Harness,
        progress: Vec<Ns>,
    }

    impl Run {
        fn new(pcpus: u32, vms: &[(u32, u32)]) -> Run {
            let h = harness(pcpus, vms);
            let progress = vec![0; h.topology.nr_vcpus()];
            Run { h, progress }
        }

        fn runnable_siblings(&self, vcpu: VcpuId) -> impl Iterator<Item = VcpuId> + '_ {
            let vm = self.h.topology.vm_of(vcpu);
            self.h.topology.vcpus_of(vm).filter(|&v| self.h.state(v) == State::Runnable)
        }

        fn skew(&self, vcpu: VcpuId) -> Ns {
            let slowest = self.runnable_siblings(vcpu).map(|v| self.progress[v.index()]).min();
            self.progress[vcpu.index()] - slowest.expect("a runnable VCPU")
        }

        fn wake(&mut self, vcpu: VcpuId) {
            let others = self.runnable_siblings(vcpu).filter(|&v| v != vcpu);
            if let Some(slowest) = others.map(|v| self.progress[v.index()]).min() {
                self.progress[vcpu.index()] = slowest;
            }
            self.h.wake(vcpu);
            self.check(true);
        }

        fn wake_all(&mut self) {
            for v in 0..self.h.topology.nr_vcpus() {
                self.wake(VcpuId(v as u32));
            }
        }

        /// Advances `duration`, stopping at every tick to check.
        fn advance(&mut self, duration: Ns) {
            let end = self.h.now() + duration;
            while self.h.now() < end {
                let until = self.h.policy.next_tick().map_or(end, |tick| tick.min(end));
                let (running, step, ticks) = (self.h.running_vcpus(), until - self.h.now(), self.h.ticks());
                self.h.advance(step);
                for v in running {
                    self.progress[v.index()] += step;
                }
                self.check(self.h.ticks() > ticks);
            }
        }

        /// Panics unless runnable siblings are within `SKEW + TICK` of each other, no ready VCPU
        /// waits beside an idle pCPU, a tick is pending within `TICK` exactly while something
        /// runs, and, if the policy just took an event or tick (`decided`), exactly the VCPUs
        /// more than `SKEW` ahead are co-stopped.
        fn check(&self, decided: bool) {
            let (h, now) = (&self.h, self.h.now());
            let idle = h.policy.assignment().iter().any(Option::is_none);
            for v in 0..h.topology.nr_vcpus() {
                let vcpu = VcpuId(v as u32);
                if h.state(vcpu) != State::Runnable {
                    assert!(!h.policy.costopped(vcpu), "{vcpu} co-stopped while not runnable at {now}");
                    continue;
                }
                let skew = self.skew(vcpu);
                assert!(skew <= SKEW + TICK, "{vcpu} is {skew} ns ahead of a sibling at {now}");
                if decided {
                    assert_eq!(h.policy.costopped(vcpu), skew > SKEW, "{vcpu} at {now}, {skew} ns ahead");
                }
                let ready = !h.running(vcpu) && !h.policy.costopped(vcpu);
                assert!(!(ready && idle), "{vcpu} is ready beside an idle pCPU at {now}");
            }
            match h.policy.next_tick() {
                Some(tick) => assert!(tick > now && tick <= now + TICK && !h.running_vcpus().is_empty()),
                None => assert!(h.running_vcpus().is_empty(), "no tick while VCPUs run at {now}"),
            }
        }

        /// Random wakes, blocks, yields and downs, with random stretches of time between.
        fn script(&mut self, seed: u64, steps: usize) {
            let mut rng = Lcg(seed);
            let nr_vcpus = self.h.topology.nr_vcpus() as u64;
            for _ in 0..steps {
                let vcpu = VcpuId(rng.below(nr_vcpus) as u32);
                let vm = self.h.topology.vm_of(vcpu);
                match self.h.state(vcpu) {
                    State::Offline | State::Blocked => self.wake(vcpu),
                    State::Runnable if self.h.running(vcpu) => {
                        match rng.below(10) {
                            0 => self.h.down(vcpu),
                            1 => self.h.yield_to(vcpu, None),
                            2 => {
                                let width = self.h.topology.vms[vm].vcpus;
                                let to = self.h.topology.vcpu(vm, rng.below(u64::from(width)) as u32);
                                self.h.yield_to(vcpu, Some(to));
                            }
                            _ => self.h.block(vcpu),
                        }
                        self.check(true);
                    }
                    State::Runnable if rng.below(8) == 0 => {
                        self.h.down(vcpu);
                        self.check(true);
                    }
                    State::Runnable => {}
                }
                self.advance(rng.below(20 * MS));
            }
        }
    }

    #[test]
    fn skew_stays_bounded_under_random_blocks_wakes_yields_and_downs() {
        let topologies: [(u32, &[(u32, u32)]); 3] =
            [(2, &[(2, 256), (2, 256)]), (2, &[(4, 256), (2, 256)]), (3, &[(3, 256), (2, 512), (1, 256)])];
        for (pcpus, vms) in topologies {
            for seed in 1..=4 {
                let mut run = Run::new(pcpus, vms);
                run.script(seed, 3000);
                for v in 0..run.h.topology.nr_vcpus() {
                    let wait = run.h.times(VcpuId(v as u32)).longest_wait;
                    assert!(wait <= 4 * SLICE, "v{v} waited {wait} ns in {pcpus} pCPUs {vms:?} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn skew_stays_bounded_and_nobody_starves_with_every_vcpu_always_runnable() {
        for (pcpus, vms) in [(2, &[(2, 256), (2, 256)][..]), (2, &[(4, 256), (2, 256)]), (1, &[(3, 256), (1, 256)])] {
            let mut run = Run::new(pcpus, vms);
            run.wake_all();
            run.advance(2000 * MS);
            for v in 0..run.h.topology.nr_vcpus() {
                let wait = run.h.times(VcpuId(v as u32)).longest_wait;
                assert!(wait <= 4 * SLICE, "v{v} waited {wait} ns in {pcpus} pCPUs {vms:?}");
            }
        }
    }

    #[test]
    fn two_siblings_on_one_pcpu_alternate_within_the_skew_bound() {
        let mut run = Run::new(1, &[(2, 256)]);
        run.wake_all();
        let (a, b) = (VcpuId(0), VcpuId(1));
        let mut switches = 0;
        let mut last = run.h.running_vcpus();
        for _ in 0..1000 {
            run.advance(TICK);
            let running = run.h.running_vcpus();
            switches += usize::from(running != last);
            last = running;
        }
        // Each runs until it leads by more than the skew, checked every tick: 8 ms turns.
        assert!(switches >= 1000 / (2 * (SKEW + TICK) / MS) as usize - 1, "{switches} switches in 1 s");
        for v in [a, b] {
            let times = run.h.times(v);
            assert!(times.run.abs_diff(500 * MS) <= SKEW + TICK, "{v} ran {} ns", times.run);
            assert!(times.costop > 0, "{v} was never co-stopped");
            assert!(times.longest_wait <= 2 * (SKEW + TICK), "{v} waited {} ns", times.longest_wait);
        }
    }

    #[test]
    fn nobody_is_costopped_while_every_vcpu_has_a_pcpu() {
        for (pcpus, vms) in [(4, &[(2, 256), (2, 256)][..]), (3, &[(3, 256)]), (5, &[(4, 256), (1, 512)])] {
            let mut run = Run::new(pcpus, vms);
            run.script(7, 2000);
            for v in 0..run.h.topology.nr_vcpus() {
                let times = run.h.times(VcpuId(v as u32));
                assert_eq!((times.costop, times.ready), (0, 0), "v{v} in {pcpus} pCPUs {vms:?}");
            }
        }
    }

    #[test]
    fn a_vcpu_waking_from_a_long_block_is_not_costopped_and_costops_nobody() {
        let mut run = Run::new(2, &[(2, 256)]);
        run.wake_all();
        run.advance(10 * MS);
        run.h.block(VcpuId(1));
        run.advance(100 * MS);
        run.wake(VcpuId(1));
        assert!(run.h.running(VcpuId(0)) && run.h.running(VcpuId(1)));
        run.advance(100 * MS);
        for v in 0..2 {
            assert_eq!(run.h.times(VcpuId(v)).costop, 0, "v{v}");
        }
        // Nor does a lead survive a block: a VCPU that ran ahead, then slept, wakes level with
        // its slowest runnable sibling, not co-stopped.
        let mut run = Run::new(1, &[(2, 256)]);
        run.wake(VcpuId(0));
        run.advance(10 * MS);
        run.h.block(VcpuId(0));
        run.wake(VcpuId(1));
        run.advance(5 * MS);
        run.wake(VcpuId(0));
        assert!(!run.h.policy.costopped(VcpuId(0)));
        run.advance(SKEW);
        assert!(run.h.running(VcpuId(1)) && !run.h.policy.costopped(VcpuId(1)));
    }

    /// Each VM's run time over 10 s with every VCPU always runnable, against its fair share.
    fn assert_fair(pcpus: u32, vms: &[(u32, u32)]) {
        let duration = 10_000 * MS;
        let mut run = Run::new(pcpus, vms);
        run.wake_all();
        run.advance(duration);
        for (vm, share) in run.h.topology.fair_shares().into_iter().enumerate() {
            let (ran, fair) = (run.h.vm_run(vm) as f64, share * duration as f64);
            assert!((ran - fair).abs() < 0.03 * fair, "{pcpus} pCPUs {vms:?}: vm {vm} ran {ran} ns, fair is {fair}");
        }
    }

    #[test]
    fn vms_share_the_pcpus_by_weight() {
        assert_fair(2, &[(2, 256), (2, 256)]);
        assert_fair(2, &[(2, 1), (2, 2)]);
        assert_fair(2, &[(4, 256), (2, 256)]);
        assert_fair(2, &[(4, 100), (2, 300)]);
        assert_fair(3, &[(2, 256), (2, 256), (1, 256)]);
        // A 1-VCPU VM cannot use more than a pCPU: the wide one gets the rest.
        assert_fair(4, &[(1, 256), (4, 256)]);
    }

    #[test]
    fn siblings_are_started_together_and_vms_take_turns() {
        for vms in [&[(2, 256), (2, 256)][..], &[(2, 256), (2, 256), (2, 256)]] {
            let mut run = Run::new(2, vms);
            run.wake_all();
            let mut turns = vec![0usize; vms.len()];
            for _ in 0..1000 {
                run.advance(TICK);
                let running = run.h.running_vcpus();
                let vm = run.h.topology.vm_of(running[0]);
                assert!(running.len() == 2 && running.iter().all(|&v| run.h.topology.vm_of(v) == vm), "{running:?}");
                turns[vm] += 1;
            }
            // Whole slices each, in turn.
            let fair = 1000 / vms.len();
            assert!(turns.iter().all(|&t| t.abs_diff(fair) <= 30), "{vms:?}: {turns:?} ms each");
        }
    }

    #[test]
    fn a_costopped_vcpu_hands_its_pcpu_to_its_most_lagging_sibling() {
        let mut run = Run::new(1, &[(3, 256)]);
        run.wake_all();
        let [a, b, c] = [0, 1, 2].map(VcpuId);
        run.advance(SKEW + TICK);
        assert!(run.h.policy.costopped(a) && run.h.running(b));
        run.advance(SKEW + TICK);
        // a still leads c by more than the skew; b now does too.
        assert!(run.h.policy.costopped(a) && run.h.policy.costopped(b) && run.h.running(c));
        // Nobody took a fresh slice: the pCPU ends the first one at its due time.
        run.advance(SLICE - 2 * (SKEW + TICK) - TICK);
        assert_eq!(run.h.policy.next_tick(), Some(SLICE));
    }

    #[test]
    fn the_laggard_takes_precedence_over_other_vms_for_the_pcpu_its_leader_gives_up() {
        // v1 ran 20 ms before v0 (VM 0), so it has more virtual time than v2 (VM 1): by virtual
        // time v2 would be next, but v0's co-stop gives its pCPU to v1.
        let mut run = Run::new(1, &[(2, 256), (1, 256)]);
        let [v0, v1, v2] = [0, 1, 2].map(VcpuId);
        run.wake(v1);
        run.advance(20 * MS);
        run.h.block(v1);
        run.wake(v0);
        run.wake(v2);
        run.wake(v1);
        assert!(run.h.running(v0));
        run.advance(SKEW + TICK);
        assert!(run.h.policy.costopped(v0) && run.h.running(v1), "{:?}", run.h.running_vcpus());
    }

    #[test]
    fn skew_is_the_lead_over_the_slowest_runnable_sibling() {
        let topology = topology(1, &[(3, 256)]);
        let mut policy = Relaxed::new(&params(), &topology);
        let [a, b, c] = [0, 1, 2].map(VcpuId);
        policy.handle(0, Event::Wake(a));
        policy.handle(0, Event::Wake(b));
        policy.handle(2 * MS, Event::Tick);
        assert_eq!((policy.skew(a), policy.skew(b), policy.skew(c)), (2 * MS, 0, 0));
        // A blocked sibling does not count: b leaving makes a the slowest.
        policy.handle(2 * MS, Event::Yield { vcpu: a, to: Some(b) });
        policy.handle(3 * MS, Event::Block(b));
        assert_eq!((policy.skew(a), policy.skew(b)), (0, 0));
        // c comes online level with a.
        policy.handle(4 * MS, Event::Wake(c));
        assert_eq!((policy.skew(a), policy.skew(c)), (0, 0));
    }

    #[test]
    fn stale_waiting_entries_stay_bounded_under_a_storm_of_directed_yields() {
        // Two siblings hand one pCPU back and forth, each yield leaving an entry behind in
        // the ready heap above the third VCPU's, which waits for the slice end.
        let topology = topology(1, &[(2, 256), (1, 256)]);
        let mut policy = Relaxed::new(&params(), &topology);
        let (x, y, z) = (VcpuId(0), VcpuId(1), VcpuId(2));
        for vcpu in [x, y, z] {
            policy.handle(0, Event::Wake(vcpu));
        }
        for step in 1..=2_000 {
            let running = policy.assignment()[0].expect("a busy pCPU");
            assert_ne!(running, z, "z ran before the slice end");
            let sibling = if running == x { y } else { x };
            policy.handle(step * 1_000, Event::Yield { vcpu: running, to: Some(sibling) });
            assert_eq!(policy.assignment()[0], Some(sibling));
            assert!(policy.ready_heap.len() <= 4 * 3 + 64 + 1, "{} entries", policy.ready_heap.len());
        }
        // z, with the least virtual time, takes the pCPU at the slice end.
        policy.handle(SLICE, Event::Tick);
        assert_eq!(policy.assignment()[0], Some(z));
    }

    #[test]
    fn a_directed_yield_hands_the_pcpu_to_the_sibling_whatever_its_virtual_time() {
        let mut h = harness(1, &[(2, 256), (1, 256)]);
        let [v0, v1, v2] = [0, 1, 2].map(VcpuId);
        // v1 runs 10 ms first, so it has more virtual time than v2.
        h.wake(v1);
        h.advance(10 * MS);
        h.block(v1);
        h.wake(v0);
        h.wake(v2);
        h.wake(v1);
        assert!(h.running(v0));
        h.advance(MS);
        h.yield_to(v0, Some(v1));
        assert!(h.running(v1));
        // An undirected yield goes by virtual time: v2 has run least.
        h.advance(MS);
        h.yield_to(v1, None);
        assert!(h.running(v2));
        // With nobody ready, the yielding VCPU runs on.
        let mut h = harness(1, &[(1, 256)]);
        h.wake_all();
        h.yield_to(v0, None);
        assert!(h.running(v0));
    }

    #[test]
    fn a_sleeping_vcpu_banks_at_most_a_slice_of_credit() {
        let mut h = harness(1, &[(1, 256), (1, 256)]);
        let [v0, v1] = [0, 1].map(VcpuId);
        h.wake(v0);
        h.advance(10_000 * MS);
        h.wake(v1);
        let before = (h.times(v0).run, h.times(v1).run);
        h.advance(300 * MS);
        let (stayed, woken) = (h.times(v0).run - before.0, h.times(v1).run - before.1);
        // Without the catch-up, v1 would run the whole 300 ms.
        assert!(woken <= stayed + 2 * SLICE, "the woken VCPU ran {woken} ns, the other {stayed} ns");
    }

    #[test]
    fn ticks_come_every_tick_and_at_slice_ends_while_something_runs() {
        let mut h = harness(1, &[(1, 256), (1, 256)]);
        let [v0, v1] = [0, 1].map(VcpuId);
        assert_eq!(h.policy.next_tick(), None);
        h.advance(5 * MS);
        h.wake(v0);
        assert_eq!(h.policy.next_tick(), Some(6 * MS));
        h.advance(MS / 2);
        h.wake(v1);
        assert_eq!(h.policy.next_tick(), Some(6 * MS + MS / 2));
        h.advance(SLICE - MS / 2);
        // A check 1 ms after each event and tick, the last one at the slice end, where v1 took over.
        assert_eq!(h.ticks(), 30);
        assert!(h.running(v1));
        h.block(v1);
        h.block(v0);
        assert_eq!(h.policy.next_tick(), None);
    }
}
