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

mod accounting;
mod queues;
#[cfg(test)]
mod tests;

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
    /// Relative share of the pCPUs, as in `VmSpec`.
    weight: u32,
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
                weight: spec.weight,
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
