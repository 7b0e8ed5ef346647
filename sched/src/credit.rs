//! `credit`: Xen's credit scheduler (credit1).
//!
//! Credit is pCPU time in nanoseconds. Every accounting period (`Params::accounting`) the
//! pCPUs' time of the period (`pcpus * accounting`) is handed out among the active VMs in
//! proportion to their weights, each VM's part split evenly among its active VCPUs. A VCPU is
//! active if it is runnable or ran during the period (so that a VCPU blocked at the instant
//! of the step still pays for the time it ran). A VM's part is at most what its active VCPUs
//! can use (one pCPU each) and its cap; what it cannot use goes to the others by weight
//! (water-filling). The running VCPUs burn credit at the rate they run, charged exactly
//! whenever their credit is read (they stop, may be preempted, or accounting comes; with caps
//! at every event and tick).
//!
//! Credit is clamped to plus or minus one slice: a VCPU that is active but runs little (it
//! blocks a lot) cannot hoard more than one slice at UNDER priority, and one that overdrew
//! (it ran on pCPUs nobody else wanted) does not pay for it for more than a slice. A VCPU
//! starts with no credit (OVER until its first step) and keeps its credit while offline.
//!
//! Priorities are BOOST > UNDER (credit > 0) > OVER (credit <= 0). A VCPU that leaves a block
//! while UNDER is boosted. A boosted VCPU runs for at most one accounting period (its slice is
//! cut to that) and loses the boost whenever it leaves its pCPU: slice end, block, yield,
//! preemption or its VM being parked. A capped VM whose VCPUs ran its cap's worth within an
//! accounting period is parked (never picked) until the next accounting step; the moment the
//! cap is reached is a timer of its own, so caps hold exactly. At the step its VCPUs are placed
//! as if they woke (without a boost), so an UNDER one preempts an OVER VCPU at once, as Xen's
//! unpausing does; otherwise a capped VM would wait for others' slice ends and fall short of
//! its cap.
//!
//! Each pCPU has a run queue ordered by priority, FIFO within a priority; the accounting step
//! re-sorts the queues since it changes the priorities of waiting VCPUs. A waking VCPU goes
//! to the pCPU it last ran on (if it never ran, the one with the fewest running and queued
//! VCPUs, the lowest-numbered on ties): it runs there if that pCPU is idle, else on the
//! lowest-numbered idle pCPU, else it preempts that pCPU's VCPU if its priority is higher,
//! else it waits in that pCPU's queue. A preempted VCPU goes back into its pCPU's queue. A
//! pCPU that needs a VCPU (slice end, block, offline, yield, its VCPU's VM parked) picks, in
//! order: the head of its own queue if UNDER or BOOST; the best UNDER or BOOST VCPU of the
//! other queues (scanned from the next pCPU up, wrapping, the first found winning ties); its
//! own OVER head; any VCPU waiting elsewhere; else it idles. So no pCPU idles while a VCPU of
//! an unparked VM waits. Besides its slice end, a running VCPU only gives way to a
//! higher-priority VCPU waking (or unparked) on its pCPU, or to its VM's cap; an accounting
//! step that makes it OVER lets it finish its slice, as in Xen. A yield (directed or not) puts
//! the VCPU back into its queue behind every VCPU of its priority and one of the next lower
//! priority, and its pCPU picks again.

use std::cmp::Reverse;

use crate::{Assignment, Event, Ns, Params, Policy, SliceEnds, Topology, VcpuId};

/// Lowest first, so that the derived order ranks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Priority {
    Over,
    Under,
    Boost,
}

impl Priority {
    const ALL_DESCENDING: [Priority; 3] = [Priority::Boost, Priority::Under, Priority::Over];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Offline,
    Runnable,
    Blocked,
}

struct Vcpu {
    vm: usize,
    status: Status,
    /// Nanoseconds of pCPU time it may still use at UNDER priority; negative once overdrawn.
    credit: i64,
    boosted: bool,
    /// Ran since the last accounting step.
    ran: bool,
    /// The pCPU it last ran on.
    home: Option<usize>,
}

impl Vcpu {
    fn priority(&self) -> Priority {
        if self.boosted {
            Priority::Boost
        } else if self.credit > 0 {
            Priority::Under
        } else {
            Priority::Over
        }
    }

    /// Whether it takes part in the next accounting step.
    fn active(&self) -> bool {
        self.status == Status::Runnable || self.ran
    }
}

struct Vm {
    /// At least 1, as in `Topology::fair_shares`.
    weight: u64,
    /// Run time per accounting period its cap allows, if capped.
    budget: Option<Ns>,
    /// Run time of its VCPUs since the last accounting step.
    used: Ns,
    parked: bool,
}

/// Xen's credit scheduler (see the module doc).
pub struct Credit {
    slice: Ns,
    accounting: Ns,
    /// Credit stays within plus or minus this.
    bound: i64,
    vcpus: Vec<Vcpu>,
    vms: Vec<Vm>,
    assignment: Assignment,
    /// When each busy pCPU's running VCPU's slice ends.
    slice_ends: SliceEnds,
    /// Each pCPU's waiting VCPUs, by priority, FIFO within one (a yield bends this).
    queues: Vec<Vec<VcpuId>>,
    /// Each pCPU's queue's offer to the others: the priority a pCPU stealing from it gets
    /// (see [`Credit::offer_of`]), kept up to date with every change to the queue.
    offers: Vec<Option<Priority>>,
    /// How many queues offer each priority, indexed by `Priority as usize`.
    offering: [usize; 3],
    /// When every running VCPU was last charged (with caps: the time of the last event).
    charged_at: Ns,
    /// When each pCPU's running VCPU was last charged. Without caps a running VCPU is charged
    /// only when something reads its credit: when it stops, when it may be preempted, and at
    /// accounting; charging in pieces comes to the same credit, clamp and all.
    charged_since: Vec<Ns>,
    next_accounting: Ns,
    /// Whether any VM has a cap.
    capped: bool,
}

impl Credit {
    /// Panics if the slice or the accounting period is zero (time would not move on).
    pub fn new(params: &Params, topology: &Topology) -> Credit {
        assert!(params.slice > 0 && params.accounting > 0, "credit needs a slice and an accounting period");
        let pcpus = topology.pcpus as usize;
        let vcpus = (0..topology.vms.len())
            .flat_map(|vm| topology.vcpus_of(vm).map(move |_| vm))
            .map(|vm| Vcpu { vm, status: Status::Offline, credit: 0, boosted: false, ran: false, home: None })
            .collect();
        let vms = topology
            .vms
            .iter()
            .map(|spec| Vm {
                weight: u64::from(spec.weight.max(1)),
                budget: spec.cap.map(|cap| u64::from(cap) * params.accounting / 100),
                used: 0,
                parked: false,
            })
            .collect();
        Credit {
            slice: params.slice,
            accounting: params.accounting,
            bound: i64::try_from(params.slice).unwrap_or(i64::MAX),
            vcpus,
            vms,
            assignment: Assignment::new(topology),
            slice_ends: SliceEnds::new(pcpus),
            queues: vec![Vec::new(); pcpus],
            offers: vec![None; pcpus],
            offering: [0; 3],
            charged_at: 0,
            charged_since: vec![0; pcpus],
            next_accounting: params.accounting,
            capped: topology.vms.iter().any(|vm| vm.cap.is_some()),
        }
    }

    fn vcpu(&self, vcpu: VcpuId) -> &Vcpu {
        &self.vcpus[vcpu.index()]
    }

    fn priority(&self, vcpu: VcpuId) -> Priority {
        self.vcpu(vcpu).priority()
    }

    fn pickable(&self, vcpu: VcpuId) -> bool {
        !self.vms[self.vcpu(vcpu).vm].parked
    }

    /// Burns the running VCPUs' credit for the time since they were last charged.
    fn charge(&mut self, now: Ns) {
        for pcpu in 0..self.assignment.len() {
            self.charge_pcpu(pcpu, now);
        }
        self.charged_at = now;
    }

    /// Burns `pcpu`'s running VCPU's credit for the time since it was last charged.
    fn charge_pcpu(&mut self, pcpu: usize, now: Ns) {
        let ran = now - self.charged_since[pcpu];
        self.charged_since[pcpu] = now;
        if let Some(vcpu) = self.assignment[pcpu]
            && ran > 0
        {
            let vcpu = &mut self.vcpus[vcpu.index()];
            vcpu.credit = vcpu.credit.saturating_sub_unsigned(ran).max(-self.bound);
            vcpu.ran = true;
            self.vms[vcpu.vm].used += ran;
        }
    }

    /// Hands out the period's credit, starts a new cap period and re-sorts the queues.
    fn account(&mut self, now: Ns) {
        self.charge(now);
        let mut active = vec![0u64; self.vms.len()];
        for vcpu in self.vcpus.iter().filter(|vcpu| vcpu.active()) {
            active[vcpu.vm] += 1;
        }
        let grants = self.grants(&active);
        for vcpu in &mut self.vcpus {
            if vcpu.active() {
                let grant = grants[vcpu.vm] / active[vcpu.vm];
                vcpu.credit = vcpu.credit.saturating_add_unsigned(grant).min(self.bound);
            }
            vcpu.ran = false;
        }
        let vcpus = &self.vcpus;
        for queue in &mut self.queues {
            queue.sort_by_key(|vcpu| Reverse(vcpus[vcpu.index()].priority()));
        }
        self.refresh_all_offers();
        self.next_accounting = now + self.accounting;
        for vm in &mut self.vms {
            vm.used = 0;
        }
        for vm in 0..self.vms.len() {
            if self.vms[vm].parked {
                self.unpark(vm, now);
            }
        }
    }

    /// Lets a parked VM's VCPUs run again: each is placed as if it woke (without a boost),
    /// so that it can take an idle pCPU or preempt a lower priority at once.
    fn unpark(&mut self, vm: usize, now: Ns) {
        self.vms[vm].parked = false;
        let vcpus = &self.vcpus;
        let mut waiting = Vec::new();
        for queue in &mut self.queues {
            waiting.extend(queue.extract_if(.., |vcpu| vcpus[vcpu.index()].vm == vm));
        }
        self.refresh_all_offers();
        for vcpu in waiting {
            self.place(vcpu, now);
        }
    }

    /// Each VM's credit for one period, given its number of active VCPUs: the pCPUs' time
    /// shared by weight, each VM limited to one pCPU per active VCPU and its cap, the excess
    /// shared among the others the same way.
    fn grants(&self, active: &[u64]) -> Vec<u64> {
        let limit = |vm: usize| {
            let width = active[vm] * self.accounting;
            self.vms[vm].budget.map_or(width, |budget| budget.min(width))
        };
        let mut grants = vec![0; self.vms.len()];
        let mut open: Vec<usize> = (0..self.vms.len()).filter(|&vm| active[vm] > 0).collect();
        let mut left = self.assignment.len() as u64 * self.accounting;
        while !open.is_empty() {
            let weights: u128 = open.iter().map(|&vm| u128::from(self.vms[vm].weight)).sum();
            let fair = |vm: usize| (u128::from(left) * u128::from(self.vms[vm].weight) / weights) as u64;
            let (full, rest): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&vm| fair(vm) >= limit(vm));
            if full.is_empty() {
                for &vm in &open {
                    grants[vm] = fair(vm);
                }
                break;
            }
            for vm in full {
                grants[vm] = limit(vm);
                left -= grants[vm];
            }
            open = rest;
        }
        grants
    }

    /// Parks the capped VMs that used their budget, taking their VCPUs off the pCPUs.
    fn park_over_cap(&mut self, now: Ns) {
        if !self.capped {
            return;
        }
        for vm in 0..self.vms.len() {
            let spent = self.vms[vm].budget.is_some_and(|budget| self.vms[vm].used >= budget);
            if !spent || self.vms[vm].parked {
                continue;
            }
            self.vms[vm].parked = true;
            for pcpu in 0..self.assignment.len() {
                if self.assignment[pcpu].is_some_and(|vcpu| self.vcpu(vcpu).vm == vm) {
                    self.preempt(pcpu, false, now);
                }
            }
        }
    }

    /// Requeues the VCPUs whose slice is over and picks again on their pCPUs, lowest pCPU
    /// first.
    fn end_slices(&mut self, now: Ns) {
        for pcpu in self.slice_ends.over(now) {
            self.preempt(pcpu, false, now);
            self.reschedule(pcpu, now);
        }
    }

    /// Takes `pcpu`'s VCPU off it (it loses its boost) and puts it back into `pcpu`'s queue.
    fn preempt(&mut self, pcpu: usize, yielded: bool, now: Ns) {
        self.charge_pcpu(pcpu, now);
        if let Some(vcpu) = self.vacate(pcpu) {
            self.vcpus[vcpu.index()].boosted = false;
            self.enqueue(pcpu, vcpu, yielded);
        }
    }

    /// Queues `vcpu` behind every VCPU of its priority or higher, and if it `yielded`, behind
    /// one more.
    fn enqueue(&mut self, pcpu: usize, vcpu: VcpuId, yielded: bool) {
        let priority = self.priority(vcpu);
        let queue = &self.queues[pcpu];
        let mut at = queue.iter().position(|&other| self.priority(other) < priority).unwrap_or(queue.len());
        if yielded && at < queue.len() {
            at += 1;
        }
        self.queues[pcpu].insert(at, vcpu);
        self.refresh_offer(pcpu);
    }

    /// What `pcpu`'s queue offers a pCPU stealing from it (when no VM is capped): its head's
    /// priority, or UNDER if an OVER head is followed by a yielding UNDER VCPU (a yield goes
    /// behind one lower-priority VCPU); `None` if it is empty.
    fn offer_of(&self, pcpu: usize) -> Option<Priority> {
        let entries = &self.queues[pcpu];
        let head = self.priority(*entries.first()?);
        let under_next = entries.get(1).is_some_and(|&next| self.priority(next) == Priority::Under);
        Some(if head == Priority::Over && under_next { Priority::Under } else { head })
    }

    fn refresh_offer(&mut self, pcpu: usize) {
        let offer = self.offer_of(pcpu);
        if offer != self.offers[pcpu] {
            if let Some(old) = self.offers[pcpu] {
                self.offering[old as usize] -= 1;
            }
            if let Some(new) = offer {
                self.offering[new as usize] += 1;
            }
            self.offers[pcpu] = offer;
        }
    }

    fn refresh_all_offers(&mut self) {
        for pcpu in 0..self.queues.len() {
            self.refresh_offer(pcpu);
        }
    }

    /// Runs `vcpu` on idle `pcpu`.
    fn run(&mut self, pcpu: usize, vcpu: VcpuId, now: Ns) {
        let state = &mut self.vcpus[vcpu.index()];
        state.home = Some(pcpu);
        let slice = if state.boosted { self.slice.min(self.accounting) } else { self.slice };
        self.slice_ends.set(pcpu, now + slice);
        self.assignment.set(pcpu, Some(vcpu));
        self.charged_since[pcpu] = now;
    }

    /// Takes `pcpu`'s VCPU off it.
    fn vacate(&mut self, pcpu: usize) -> Option<VcpuId> {
        self.slice_ends.clear(pcpu);
        self.assignment.take(pcpu)
    }

    /// Runs the VCPU `pcpu` picks next, if any.
    fn reschedule(&mut self, pcpu: usize, now: Ns) {
        if let Some(vcpu) = self.pick(pcpu) {
            self.run(pcpu, vcpu, now);
        }
    }

    /// Takes the VCPU `pcpu` should run next out of its queue (see the module doc).
    fn pick(&mut self, pcpu: usize) -> Option<VcpuId> {
        let own = self.queues[pcpu].iter().position(|&vcpu| self.pickable(vcpu));
        let own_over = own.is_some_and(|at| self.priority(self.queues[pcpu][at]) == Priority::Over);
        let (queue, at) = match own {
            Some(at) if !own_over => (pcpu, at),
            _ => self
                .best_elsewhere(pcpu, Priority::Under)
                .or(own.map(|at| (pcpu, at)))
                .or_else(|| self.best_elsewhere(pcpu, Priority::Over))?,
        };
        let vcpu = self.queues[queue].remove(at);
        self.refresh_offer(queue);
        Some(vcpu)
    }

    /// The queue and position of the highest-priority pickable VCPU of at least `floor` in
    /// the other pCPUs' queues, scanning from the next pCPU up; the first found wins ties.
    fn best_elsewhere(&self, pcpu: usize, floor: Priority) -> Option<(usize, usize)> {
        let found =
            if self.capped { self.best_elsewhere_scan(pcpu, floor) } else { self.best_elsewhere_heads(pcpu, floor) };
        #[cfg(test)]
        assert_eq!(found, self.best_elsewhere_scan(pcpu, floor), "the queues lost their order");
        found
    }

    /// [`Self::best_elsewhere`] by looking at every queued VCPU.
    fn best_elsewhere_scan(&self, pcpu: usize, floor: Priority) -> Option<(usize, usize)> {
        let pcpus = self.queues.len();
        let mut best: Option<(Priority, usize, usize)> = None;
        for queue in (1..pcpus).map(|offset| (pcpu + offset) % pcpus) {
            for (at, &vcpu) in self.queues[queue].iter().enumerate() {
                let priority = self.priority(vcpu);
                if self.pickable(vcpu) && priority >= floor && best.is_none_or(|(top, ..)| priority > top) {
                    best = Some((priority, queue, at));
                }
            }
        }
        best.map(|(_, queue, at)| (queue, at))
    }

    /// [`Self::best_elsewhere`] when every VCPU is pickable (no caps), from the queues' order:
    /// BOOST first, then UNDER, then OVER, except that a yielding UNDER VCPU goes right after
    /// the first OVER one, which is what [`Self::offer_of`] tells. The counts of the offers
    /// give the highest priority on offer in O(1); the scan stops at the first queue offering
    /// it (none at all, the common case at high overcommit, when every queue offers OVER and
    /// UNDER is asked for).
    fn best_elsewhere_heads(&self, pcpu: usize, floor: Priority) -> Option<(usize, usize)> {
        #[cfg(test)]
        assert!((0..self.queues.len()).all(|p| self.offers[p] == self.offer_of(p)), "an offer went stale");
        let offered_elsewhere =
            |priority: Priority| self.offering[priority as usize] - usize::from(self.offers[pcpu] == Some(priority));
        let top = Priority::ALL_DESCENDING.into_iter().find(|&p| p >= floor && offered_elsewhere(p) > 0)?;
        let pcpus = self.queues.len();
        let queue = (1..pcpus).map(|offset| (pcpu + offset) % pcpus).find(|&queue| self.offers[queue] == Some(top))?;
        let at = usize::from(self.priority(self.queues[queue][0]) != top);
        Some((queue, at))
    }

    fn least_loaded(&self) -> usize {
        (0..self.queues.len())
            .min_by_key(|&pcpu| self.queues[pcpu].len() + usize::from(self.assignment[pcpu].is_some()))
            .expect("at least one pCPU")
    }

    fn wake(&mut self, vcpu: VcpuId, now: Ns) {
        let state = &mut self.vcpus[vcpu.index()];
        if state.status == Status::Runnable {
            return;
        }
        state.boosted = state.status == Status::Blocked && state.priority() == Priority::Under;
        state.status = Status::Runnable;
        self.place(vcpu, now);
    }

    /// Runs a VCPU that became runnable, or queues it (see the module doc).
    fn place(&mut self, vcpu: VcpuId, now: Ns) {
        let home = self.vcpu(vcpu).home.unwrap_or_else(|| self.least_loaded());
        if !self.pickable(vcpu) {
            self.enqueue(home, vcpu, false);
            return;
        }
        // The VCPU running at home may be preempted: its priority must be up to date.
        self.charge_pcpu(home, now);
        let idle = Some(home).filter(|&pcpu| self.assignment[pcpu].is_none());
        if let Some(pcpu) = idle.or_else(|| self.assignment.first_idle()) {
            self.run(pcpu, vcpu, now);
        } else if self.assignment[home].is_some_and(|current| self.priority(current) < self.priority(vcpu)) {
            self.preempt(home, false, now);
            self.run(home, vcpu, now);
        } else {
            self.enqueue(home, vcpu, false);
        }
    }

    /// `vcpu` blocked or went offline: it leaves its pCPU or queue.
    fn leave(&mut self, vcpu: VcpuId, status: Status, now: Ns) {
        let state = &mut self.vcpus[vcpu.index()];
        state.status = status;
        state.boosted = false;
        if let Some(pcpu) = self.assignment.pcpu_of(vcpu) {
            self.charge_pcpu(pcpu, now);
            self.vacate(pcpu);
            self.reschedule(pcpu, now);
        } else {
            for queue in &mut self.queues {
                queue.retain(|&other| other != vcpu);
            }
            self.refresh_all_offers();
        }
    }

    fn yield_pcpu(&mut self, vcpu: VcpuId, now: Ns) {
        if let Some(pcpu) = self.assignment.pcpu_of(vcpu) {
            self.preempt(pcpu, true, now);
            self.reschedule(pcpu, now);
        }
    }

    /// Lets each idle pCPU pick, lowest first.
    fn fill_idle(&mut self, now: Ns) {
        let mut next = self.assignment.first_idle();
        while let Some(pcpu) = next {
            self.reschedule(pcpu, now);
            next = self.assignment.idle().find(|&other| other > pcpu);
        }
    }
}

impl Policy for Credit {
    fn handle(&mut self, now: Ns, event: Event) {
        if self.capped {
            self.charge(now);
        }
        // Overdue after a stretch with nothing to run (no ticks asked for): one step catches up.
        if now >= self.next_accounting {
            self.account(now);
        }
        self.park_over_cap(now);
        self.end_slices(now);
        match event {
            Event::Wake(vcpu) => self.wake(vcpu, now),
            Event::Block(vcpu) => self.leave(vcpu, Status::Blocked, now),
            Event::Down(vcpu) => self.leave(vcpu, Status::Offline, now),
            Event::Yield { vcpu, .. } => self.yield_pcpu(vcpu, now),
            Event::Tick | Event::Demand { .. } => {}
        }
        self.fill_idle(now);
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }

    fn drain_written(&mut self, into: &mut Vec<usize>) {
        self.assignment.drain_written(into);
    }

    fn next_tick(&self) -> Option<Ns> {
        let running = || self.assignment.iter().flatten();
        if self.slice_ends.earliest().is_none() && self.queues.iter().all(Vec::is_empty) {
            return None;
        }
        let capped_vms = self.vms.iter().enumerate().filter(|_| self.capped);
        let caps_reached = capped_vms.filter_map(|(vm, state)| {
            let budget = state.budget.filter(|_| !state.parked)?;
            let width = running().filter(|&&vcpu| self.vcpu(vcpu).vm == vm).count() as u64;
            (width > 0).then(|| self.charged_at + (budget - state.used).div_ceil(width))
        });
        self.slice_ends.earliest().into_iter().chain(caps_reached).chain([self.next_accounting]).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Lcg;
    use crate::harness::{Harness, State};
    use crate::{MS, VmSpec};

    const SLICE: Ns = 30 * MS;
    const ACCOUNTING: Ns = 10 * MS;

    fn vm(vcpus: u32, weight: u32, cap: Option<u32>) -> VmSpec {
        VmSpec { vcpus, weight, cap }
    }

    /// VMs of one VCPU each, of equal weight.
    fn singles(count: u32) -> Vec<VmSpec> {
        (0..count).map(|_| vm(1, 256, None)).collect()
    }

    fn harness_with(params: Params, pcpus: u32, vms: Vec<VmSpec>) -> Harness {
        let topology = Topology::new(pcpus, vms);
        Harness::new(Box::new(Credit::new(&params, &topology)), topology)
    }

    fn harness(pcpus: u32, vms: Vec<VmSpec>) -> Harness {
        harness_with(Params::default(), pcpus, vms)
    }

    fn running_on(h: &Harness, pcpu: usize) -> Option<VcpuId> {
        h.policy.assignment()[pcpu]
    }

    /// Runs every VCPU of `vms` for 10 s and checks each VM got its fair share within 2%.
    fn assert_fair_shares(pcpus: u32, vms: Vec<VmSpec>) {
        let mut h = harness(pcpus, vms);
        h.wake_all();
        h.advance(10_000 * MS);
        for (vm, share) in h.topology.fair_shares().into_iter().enumerate() {
            let fair = share * h.now() as f64;
            let run = h.vm_run(vm) as f64;
            assert!((run - fair).abs() <= 0.02 * fair, "VM {vm} ran {run} ns, its fair share is {fair}");
        }
    }

    /// Panics if a pCPU idles while a runnable VCPU waits, unless `exempt` (parked) holds for it.
    fn assert_work_conserving(h: &Harness, exempt: &dyn Fn(VcpuId) -> bool) {
        if h.policy.assignment().iter().all(Option::is_some) {
            return;
        }
        for v in 0..h.topology.nr_vcpus() {
            let vcpu = VcpuId(v as u32);
            let waits = h.state(vcpu) == State::Runnable && !h.running(vcpu);
            assert!(!waits || exempt(vcpu), "{vcpu} waits while a pCPU idles at {}", h.now());
        }
    }

    /// Advances by `duration` one tick at a time, checking work conservation after each.
    fn advance_checked(h: &mut Harness, duration: Ns, exempt: &dyn Fn(VcpuId) -> bool) {
        let end = h.now() + duration;
        while h.now() < end {
            let until = h.policy.next_tick().map_or(end, |tick| tick.clamp(h.now(), end));
            h.advance(until - h.now());
            assert_work_conserving(h, exempt);
        }
    }

    /// Random-ish blocks, wakes, yields and downs for `steps` steps of up to 20 ms each,
    /// checking work conservation after every event and tick.
    fn random_run(h: &mut Harness, seed: u64, steps: usize, exempt: &dyn Fn(VcpuId) -> bool) {
        let mut rng = Lcg(seed);
        let vcpus = h.topology.nr_vcpus() as u64;
        h.wake_all();
        for _ in 0..steps {
            let vcpu = VcpuId(rng.below(vcpus) as u32);
            match (h.state(vcpu), rng.below(8)) {
                (State::Runnable, 0) => h.down(vcpu),
                (State::Runnable, 1 | 2) if h.running(vcpu) => h.block(vcpu),
                (State::Runnable, 3) if h.running(vcpu) => h.yield_to(vcpu, None),
                (State::Runnable, _) => {}
                (State::Blocked | State::Offline, _) => h.wake(vcpu),
            }
            assert_work_conserving(h, exempt);
            advance_checked(h, rng.below(20 * MS), exempt);
        }
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 256, None)]);
    }

    #[test]
    fn double_weight_gets_double_share() {
        assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 512, None)]);
    }

    #[test]
    fn three_vms_share_two_pcpus_by_weight() {
        assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 256, None), vm(2, 512, None)]);
    }

    #[test]
    fn shares_are_per_vm_whatever_the_vcpu_counts() {
        assert_fair_shares(2, vec![vm(4, 256, None), vm(2, 256, None)]);
    }

    #[test]
    fn what_a_narrow_vm_cannot_use_goes_to_the_others() {
        // Weight would give the 1-VCPU VM 1.2 pCPUs: it gets 1, the others 0.5 each.
        assert_fair_shares(2, vec![vm(1, 768, None), vm(2, 256, None), vm(2, 256, None)]);
    }

    #[test]
    fn a_capped_vm_gets_its_cap_and_no_more_on_idle_pcpus() {
        for (cap, vcpus) in [(50, 2), (150, 2), (30, 1)] {
            let mut h = harness(2, vec![vm(vcpus, 256, Some(cap))]);
            h.wake_all();
            h.advance(10_000 * MS);
            let allowed = u64::from(cap) * h.now() / 100;
            let run = h.vm_run(0);
            assert!(run <= allowed + ACCOUNTING && run + ACCOUNTING >= allowed, "cap {cap}%: ran {run} ns");
        }
    }

    #[test]
    fn uncapped_vms_take_what_a_capped_vm_leaves() {
        let mut h = harness(2, vec![vm(2, 256, Some(50)), vm(2, 256, None)]);
        h.wake_all();
        h.advance(10_000 * MS);
        assert!(h.vm_run(0) <= h.now() / 2 + ACCOUNTING, "the capped VM ran {} ns", h.vm_run(0));
        assert_eq!(h.vm_run(0) + h.vm_run(1), 2 * h.now(), "a pCPU idled");
    }

    #[test]
    fn a_capped_vm_is_parked_from_reaching_its_cap_to_the_next_accounting_step() {
        let mut h = harness(1, vec![vm(1, 256, Some(30))]);
        let v = VcpuId(0);
        h.wake(v);
        h.advance(3 * MS - 1);
        assert!(h.running(v));
        h.advance(1);
        assert!(!h.running(v), "30% of a 10 ms period is 3 ms");
        h.advance(ACCOUNTING - 3 * MS - 1);
        assert!(!h.running(v));
        h.advance(1);
        assert!(h.running(v));
    }

    #[test]
    fn an_unparked_vm_preempts_over_vcpus_at_once() {
        // v0 (capped at 50%) waits for v1's first slice and earns 15 ms of credit. It runs
        // from 30 ms and is parked at 35 ms, still UNDER; v1 runs, OVER. At the accounting
        // step (40 ms) v0 takes the pCPU back at once rather than at v1's slice end.
        let mut h = harness(1, vec![vm(1, 256, Some(50)), vm(1, 256, None)]);
        let [v0, v1] = [0, 1].map(VcpuId);
        h.wake(v1);
        h.wake(v0);
        h.advance(SLICE + 5 * MS - 1);
        assert!(h.running(v0));
        h.advance(1);
        assert!(h.running(v1));
        h.advance(ACCOUNTING / 2);
        assert!(h.running(v0));
    }

    /// One pCPU: v1 runs 1 ms and blocks, v0 runs from then. At the accounting step (10 ms)
    /// both get 5 ms of credit: v0 (ran 9 ms) is OVER, the blocked v1 (ran 1 ms) UNDER.
    fn over_vcpu_running_and_under_vcpu_blocked() -> Harness {
        let mut h = harness(1, singles(2));
        h.wake(VcpuId(1));
        h.advance(MS);
        h.block(VcpuId(1));
        h.wake(VcpuId(0));
        h.advance(ACCOUNTING);
        h
    }

    #[test]
    fn a_vcpu_waking_under_preempts_an_over_vcpu() {
        let mut h = over_vcpu_running_and_under_vcpu_blocked();
        h.wake(VcpuId(1));
        assert!(h.running(VcpuId(1)));
    }

    #[test]
    fn a_vcpu_waking_over_waits_for_its_turn() {
        // v0 runs 5 ms and blocks, OVER (no credit handed out yet); v1 (OVER too) runs.
        let mut h = harness(1, singles(2));
        h.wake_all();
        h.advance(5 * MS);
        h.block(VcpuId(0));
        h.advance(MS);
        h.wake(VcpuId(0));
        assert!(h.running(VcpuId(1)) && !h.running(VcpuId(0)));
    }

    /// One pCPU, VMs of one VCPU: w runs 1 ms and `leave`s (blocks or goes down); x runs
    /// from 1 ms to its slice end at 31 ms, burning credit while y and z wait and earn it: at
    /// 31 ms x is OVER, y and z UNDER, y runs. w ran in the first period, so it got a quarter
    /// of it: it is UNDER (1.5 ms) too. Returns at 32 ms, w away, y running.
    fn under_vcpu_running_and_under_vcpu_away(leave: fn(&mut Harness, VcpuId)) -> Harness {
        let mut h = harness(1, singles(4));
        let [w, x, y, z] = [0, 1, 2, 3].map(VcpuId);
        h.wake(w);
        h.advance(MS);
        leave(&mut h, w);
        for v in [x, y, z] {
            h.wake(v);
        }
        assert!(h.running(x));
        h.advance(SLICE + MS);
        assert!(h.running(y));
        h
    }

    #[test]
    fn a_vcpu_waking_under_from_a_block_is_boosted_past_an_under_vcpu() {
        let mut h = under_vcpu_running_and_under_vcpu_away(Harness::block);
        h.wake(VcpuId(0));
        assert!(h.running(VcpuId(0)));
    }

    #[test]
    fn a_vcpu_coming_online_is_not_boosted() {
        let mut h = under_vcpu_running_and_under_vcpu_away(Harness::down);
        h.wake(VcpuId(0));
        assert!(h.running(VcpuId(2)) && !h.running(VcpuId(0)));
    }

    #[test]
    fn a_boost_lasts_at_most_one_accounting_period() {
        let mut h = under_vcpu_running_and_under_vcpu_away(Harness::block);
        let w = VcpuId(0);
        h.wake(w);
        h.advance(ACCOUNTING - 1);
        assert!(h.running(w));
        h.advance(1);
        // w lost its boost (and went OVER): z, UNDER and first in line, runs.
        assert!(h.running(VcpuId(3)));
    }

    #[test]
    fn a_yield_goes_behind_one_lower_priority_vcpu() {
        // One pCPU, four equal VCPUs woken at once: v0 runs 30 ms, then v1 30 ms. At 60 ms
        // v0 and v1 are OVER and queued in that order, v2 and v3 UNDER; v2 runs.
        let mut h = harness(1, singles(4));
        h.wake_all();
        h.advance(2 * SLICE);
        assert!(h.running(VcpuId(2)));
        // v2 yields: it goes behind v3 (its priority) and v0 (the first OVER), before v1.
        h.yield_to(VcpuId(2), Some(VcpuId(1)));
        let mut order = Vec::new();
        for _ in 0..4 {
            let vcpu = h.running_vcpus()[0];
            order.push(vcpu.0);
            h.block(vcpu);
        }
        assert_eq!(order, [3, 0, 2, 1]);
    }

    #[test]
    fn a_yield_with_nobody_waiting_keeps_the_vcpu_running() {
        let mut h = harness(2, singles(2));
        h.wake_all();
        h.yield_to(VcpuId(1), None);
        assert!(h.running(VcpuId(1)));
    }

    #[test]
    fn equal_vcpus_on_one_pcpu_take_turns_every_slice() {
        for params in [Params::default(), Params { slice: 20 * MS, accounting: 5 * MS, ..Params::default() }] {
            let mut h = harness_with(params, 1, singles(3));
            h.wake_all();
            let mut previous = h.running_vcpus();
            let mut changes = Vec::new();
            while h.now() < 1_000 * MS {
                h.advance(MS);
                if h.running_vcpus() != previous {
                    changes.push(h.now());
                    previous = h.running_vcpus();
                }
            }
            let every_slice: Vec<Ns> = (1..=1_000 * MS / params.slice).map(|n| n * params.slice).collect();
            assert_eq!(changes, every_slice);
        }
    }

    #[test]
    fn an_idle_pcpu_takes_a_waking_vcpu_at_once() {
        let mut h = harness(2, singles(2));
        h.wake(VcpuId(0));
        h.advance(5 * MS);
        h.wake(VcpuId(1));
        assert_eq!(h.running_vcpus().len(), 2);
    }

    #[test]
    fn a_vcpu_wakes_on_the_pcpu_it_last_ran_on() {
        let mut h = harness(2, singles(2));
        h.wake_all();
        assert_eq!(h.pcpu_of(VcpuId(1)), Some(1), "a first start goes to the least loaded pCPU");
        h.block(VcpuId(0));
        h.block(VcpuId(1));
        h.wake(VcpuId(1));
        assert_eq!(h.pcpu_of(VcpuId(1)), Some(1));
    }

    /// Two pCPUs: c runs 1 ms on pCPU 0 and blocks; b takes pCPU 0, a runs on pCPU 1. c wakes
    /// at 2 ms, OVER like b, and waits in pCPU 0's queue.
    fn vcpu_waiting_on_pcpu_0() -> Harness {
        let mut h = harness(2, singles(3));
        let [a, b, c] = [0, 1, 2].map(VcpuId);
        h.wake(c);
        h.wake(a);
        h.advance(MS);
        h.block(c);
        h.wake(b);
        h.advance(MS);
        h.wake(c);
        assert_eq!((running_on(&h, 0), running_on(&h, 1)), (Some(b), Some(a)));
        h
    }

    #[test]
    fn an_idle_pcpu_steals_even_an_over_vcpu() {
        let mut h = vcpu_waiting_on_pcpu_0();
        h.block(VcpuId(0));
        assert_eq!(running_on(&h, 1), Some(VcpuId(2)));
    }

    #[test]
    fn a_pcpu_left_with_over_vcpus_steals_an_under_vcpu() {
        // c earns credit while it waits: UNDER. At a's slice end (30 ms) pCPU 1 has only a,
        // OVER, to run: it takes c from pCPU 0's queue, where b still runs.
        let mut h = vcpu_waiting_on_pcpu_0();
        h.advance(SLICE - 2 * MS - 1);
        assert!(!h.running(VcpuId(2)));
        h.advance(1);
        assert_eq!((running_on(&h, 0), running_on(&h, 1)), (Some(VcpuId(1)), Some(VcpuId(2))));
    }

    #[test]
    fn a_vcpu_going_down_leaves_its_pcpu_and_its_queue() {
        let mut h = harness(1, singles(3));
        h.wake_all();
        h.down(VcpuId(1));
        h.down(VcpuId(0));
        assert_eq!(h.running_vcpus(), [VcpuId(2)]);
        h.down(VcpuId(2));
        h.advance(SLICE);
        assert_eq!(h.running_vcpus(), []);
    }

    #[test]
    fn no_tick_is_needed_while_nothing_is_runnable() {
        let mut h = harness(2, singles(2));
        assert_eq!(h.policy.next_tick(), None);
        h.wake(VcpuId(0));
        assert_eq!(h.policy.next_tick(), Some(ACCOUNTING));
        h.advance(MS);
        h.block(VcpuId(0));
        assert_eq!(h.policy.next_tick(), None);
        let ticks = h.ticks();
        h.advance(1_000 * MS);
        assert_eq!(h.ticks(), ticks);
    }

    #[test]
    fn a_mostly_blocked_vcpu_cannot_hoard_credit() {
        // For 1 s v0 runs 1 ms of every 10 ms period against an always runnable v1: it earns
        // 5 ms and burns 1. Then it stays runnable: with credit bounded by a slice it leads
        // v1 by two slices of credit at most, so v1 waits about that long, not seconds.
        let mut h = harness(1, singles(2));
        let [v0, v1] = [0, 1].map(VcpuId);
        h.wake(v0);
        h.wake(v1);
        for _ in 0..100 {
            h.advance(MS);
            h.block(v0);
            h.advance(ACCOUNTING - MS);
            h.wake(v0);
            assert!(h.running(v0), "v0 wakes UNDER, boosted");
        }
        h.advance(1_000 * MS);
        assert!(h.times(v1).longest_wait <= 3 * SLICE, "v1 waited {} ns", h.times(v1).longest_wait);
    }

    /// The wait bound: a VCPU entitled to a quarter of a pCPU (the narrowest here) that
    /// overdrew by a slice needs four slices to earn it back, then may queue behind UNDER
    /// VCPUs; six slices cover that.
    #[test]
    fn random_runs_keep_pcpus_busy_and_starve_no_one() {
        let topologies = [
            (2, vec![vm(2, 256, None), vm(2, 256, None), vm(1, 256, None)]),
            (2, vec![vm(2, 256, None), vm(2, 512, None), vm(1, 256, None)]),
            (3, vec![vm(4, 256, None), vm(2, 256, None), vm(3, 256, None)]),
        ];
        for (seed, (pcpus, vms)) in topologies.into_iter().enumerate() {
            let mut h = harness(pcpus, vms);
            random_run(&mut h, seed as u64, 2_000, &|_| false);
            for v in 0..h.topology.nr_vcpus() {
                let wait = h.times(VcpuId(v as u32)).longest_wait;
                assert!(wait <= 6 * SLICE, "topology {seed}: v{v} waited {wait} ns");
            }
        }
    }

    /// Many VMs on many pCPUs, with yields: every steal reads the queue heads and, in tests,
    /// checks the result against a scan of every queued VCPU (see `best_elsewhere`).
    #[test]
    fn stealing_from_the_queue_heads_finds_what_a_full_scan_finds() {
        let vms = (0..24).map(|n| vm(1 + n % 4, 256 * (1 + n % 3), None)).collect();
        let mut h = harness(8, vms);
        random_run(&mut h, 11, 5_000, &|_| false);
    }

    #[test]
    fn random_runs_with_a_capped_vm_keep_its_cap_and_the_other_pcpus_busy() {
        let mut h = harness(2, vec![vm(2, 256, Some(50)), vm(2, 256, None), vm(1, 256, None)]);
        let capped = |vcpu: VcpuId| vcpu.0 < 2;
        random_run(&mut h, 7, 2_000, &capped);
        assert!(h.vm_run(0) <= h.now() / 2 + ACCOUNTING, "the capped VM ran {} ns of {}", h.vm_run(0), h.now());
    }
}
