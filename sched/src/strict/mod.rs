//! `cosched-strict`: ESX 2 style gang scheduling.
//!
//! A VM is a gang: all its online VCPUs run at once, each on its own pCPU, or none does, so a
//! VCPU never spins on a lock held by a descheduled sibling or waits for an IPI to one. The
//! price is idle pCPUs: a blocked member of a running gang keeps its pCPU reserved (it runs
//! there the moment it wakes, but nobody else may use it meanwhile), and pCPUs too few for any
//! waiting gang stay idle.
//!
//! The rules:
//! - Share: each VM has a virtual time, the pCPU time it held (reserved pCPUs included, so
//!   width times wall time) divided by its weight. Gangs are chosen least virtual time first.
//! - Slices: the machine has one slice clock. At each slice boundary every gang is descheduled
//!   and the choice is redone from scratch: gangs in order of least virtual time, each taken if
//!   it still fits in the free pCPUs (backfill: a narrower gang may take pCPUs a wider one
//!   cannot). The gang most behind always fits the empty machine, so a wide gang waits only
//!   until it is the most behind, however many narrow gangs could fill the gaps. Gangs chosen
//!   again keep their pCPUs.
//! - Between boundaries nothing is preempted: pCPUs that free up (a gang's members all block
//!   or go offline) are backfilled the same way, and a waking VM waits for free pCPUs or the
//!   next boundary.
//! - A VM that wakes from having no runnable VCPU has its virtual time raised to at least the
//!   floor minus one slice of its own running (width pCPUs for a slice), so sleeping banks at
//!   most a slice of credit. The floor is the least virtual time of the VMs able to run
//!   (running or waiting, not only running: a waiting gang is owed as much), never moving back,
//!   so that it still means something after the machine was idle.
//! - A VCPU coming online joins its running gang on a free pCPU; if none is free the gang is
//!   descheduled (it can no longer run whole) and waits to be chosen again.
//! - Yields are ignored: the siblings already run together, and descheduling the gang for one
//!   member's yield would only idle the others.
//! - A VM with more online VCPUs than pCPUs never fits: it never runs, and never holds up the
//!   others. The scenario layer refuses such VMs; this policy does not panic on them.

#[cfg(test)]
mod tests;

use crate::{Assignment, Event, Ns, Params, Policy, Topology, UNIT_WEIGHT, VcpuId};

pub struct Strict {
    topology: Topology,
    slice: Ns,
    assignment: Assignment,
    online: Vec<bool>,
    runnable: Vec<bool>,
    /// Per VM: its online VCPUs (the gang's width) and its runnable ones.
    online_count: Vec<usize>,
    runnable_count: Vec<usize>,
    /// Per VM: pCPU time held divided by weight.
    vtime: Vec<u64>,
    /// The least virtual time of the VMs able to run, never moving back (as Linux's
    /// `min_vruntime`): the mark a waking VM catches up to.
    floor: u64,
    /// End of the current slice; `None` while no gang runs.
    slice_end: Option<Ns>,
    charged_at: Ns,
}

impl Strict {
    pub fn new(params: &Params, topology: &Topology) -> Strict {
        let vcpus = topology.nr_vcpus();
        Strict {
            topology: topology.clone(),
            slice: params.slice.max(1),
            assignment: Assignment::new(topology),
            online: vec![false; vcpus],
            runnable: vec![false; vcpus],
            online_count: vec![0; topology.vms.len()],
            runnable_count: vec![0; topology.vms.len()],
            vtime: vec![0; topology.vms.len()],
            floor: 0,
            slice_end: None,
            charged_at: 0,
        }
    }

    /// `vm`'s virtual time for holding one pCPU for `ns`.
    fn virtual_ns(&self, vm: usize, ns: Ns) -> u64 {
        ns * UNIT_WEIGHT / u64::from(self.topology.vms[vm].weight.max(1))
    }

    /// The pCPUs the gang needs: its online VCPUs.
    fn width(&self, vm: usize) -> usize {
        self.online_count[vm]
    }

    fn has_runnable(&self, vm: usize) -> bool {
        self.runnable_count[vm] > 0
    }

    fn set_online(&mut self, vcpu: VcpuId, online: bool) {
        if self.online[vcpu.index()] != online {
            self.online[vcpu.index()] = online;
            let count = &mut self.online_count[self.topology.vm_of(vcpu)];
            *count = if online { *count + 1 } else { *count - 1 };
        }
    }

    fn set_runnable(&mut self, vcpu: VcpuId, runnable: bool) {
        if self.runnable[vcpu.index()] != runnable {
            self.runnable[vcpu.index()] = runnable;
            let count = &mut self.runnable_count[self.topology.vm_of(vcpu)];
            *count = if runnable { *count + 1 } else { *count - 1 };
        }
    }

    /// Whether the gang wants to run and could, on an empty machine.
    fn eligible(&self, vm: usize) -> bool {
        self.has_runnable(vm) && self.width(vm) <= self.assignment.len()
    }

    /// How many of `vm`'s VCPUs hold pCPUs.
    fn placed(&self, vm: usize) -> usize {
        self.assignment.iter().flatten().filter(|&&v| self.topology.vm_of(v) == vm).count()
    }

    fn free_pcpus(&self) -> usize {
        self.assignment.idle().count()
    }

    /// Charges every gang for the pCPUs it held since the last charge.
    fn charge(&mut self, now: Ns) {
        let held: Vec<usize> = self.assignment.iter().flatten().map(|&v| self.topology.vm_of(v)).collect();
        for vm in held {
            self.vtime[vm] += self.virtual_ns(vm, now - self.charged_at);
        }
        self.charged_at = now;
    }

    fn raise_floor(&mut self) {
        let vms = self.topology.vms.len();
        if let Some(least) = (0..vms).filter(|&vm| self.eligible(vm)).map(|vm| self.vtime[vm]).min() {
            self.floor = self.floor.max(least);
        }
    }

    /// Limits the credit `vm` banked while it had nothing to run.
    fn catch_up(&mut self, vm: usize) {
        let lag = self.virtual_ns(vm, self.slice * self.width(vm) as u64);
        self.vtime[vm] = self.vtime[vm].max(self.floor.saturating_sub(lag));
    }

    /// Gives `vm`'s online VCPUs that have no pCPU the lowest-numbered free ones.
    fn place(&mut self, vm: usize) {
        let mut free = 0;
        for vcpu in self.topology.vcpus_of(vm) {
            if self.online[vcpu.index()] && self.assignment.pcpu_of(vcpu).is_none() {
                free += self.assignment[free..].iter().position(Option::is_none).expect("the chosen gangs fit");
                self.assignment.set(free, Some(vcpu));
            }
        }
    }

    fn deschedule(&mut self, vm: usize) {
        for pcpu in 0..self.assignment.len() {
            if self.assignment[pcpu].is_some_and(|v| self.topology.vm_of(v) == vm) {
                self.assignment.set(pcpu, None);
            }
        }
    }

    /// Restores the gang rule for running `vm` after one of its VCPUs changed state: without a
    /// runnable member it lets its pCPUs go; a member that came online takes a free pCPU, or the
    /// gang lets its pCPUs go if none is free.
    fn repair(&mut self, vm: usize) {
        let placed = self.placed(vm);
        if placed == 0 {
            return;
        }
        if self.has_runnable(vm) && self.width(vm) - placed <= self.free_pcpus() {
            self.place(vm);
        } else {
            self.deschedule(vm);
        }
    }

    /// Chooses the gangs to run: the running ones (unless `from_scratch`), then the others in
    /// order of least virtual time (ties by VM number), each if it fits in the pCPUs still free.
    fn select(&mut self, from_scratch: bool) {
        // Without free pCPUs, the running gangs stay and no other fits.
        if !from_scratch && self.free_pcpus() == 0 {
            return;
        }
        let vms = self.topology.vms.len();
        let mut dispatched = vec![false; vms];
        for vcpu in self.assignment.iter().flatten() {
            dispatched[self.topology.vm_of(*vcpu)] = true;
        }
        let mut chosen: Vec<bool> = (0..vms).map(|vm| !from_scratch && dispatched[vm]).collect();
        let mut free =
            self.assignment.len() - (0..vms).filter(|&vm| chosen[vm]).map(|vm| self.width(vm)).sum::<usize>();
        let mut candidates: Vec<usize> = (0..vms).filter(|&vm| !chosen[vm] && self.eligible(vm)).collect();
        candidates.sort_unstable_by_key(|&vm| (self.vtime[vm], vm));
        for vm in candidates {
            let width = self.width(vm);
            if width <= free {
                chosen[vm] = true;
                free -= width;
            }
        }
        // All the pCPUs of the gangs left out must be free before the new gangs are placed.
        for pcpu in 0..self.assignment.len() {
            if self.assignment[pcpu].is_some_and(|vcpu| !chosen[self.topology.vm_of(vcpu)]) {
                self.assignment.set(pcpu, None);
            }
        }
        // A gang chosen again already holds all the pCPUs it needs (see `repair`).
        for vm in (0..vms).filter(|&vm| chosen[vm] && !dispatched[vm]) {
            self.place(vm);
        }
    }
}

impl Policy for Strict {
    fn handle(&mut self, now: Ns, event: Event) {
        self.charge(now);
        self.raise_floor();
        match event {
            Event::Wake(vcpu) => {
                let vm = self.topology.vm_of(vcpu);
                let was_idle = !self.has_runnable(vm);
                self.set_online(vcpu, true);
                self.set_runnable(vcpu, true);
                if was_idle {
                    self.catch_up(vm);
                }
                self.repair(vm);
            }
            Event::Block(vcpu) => {
                self.set_runnable(vcpu, false);
                self.repair(self.topology.vm_of(vcpu));
            }
            Event::Down(vcpu) => {
                self.set_online(vcpu, false);
                self.set_runnable(vcpu, false);
                if let Some(pcpu) = self.assignment.pcpu_of(vcpu) {
                    self.assignment.set(pcpu, None);
                }
                self.repair(self.topology.vm_of(vcpu));
            }
            Event::Yield { .. } | Event::Tick | Event::Demand { .. } => {}
        }
        let boundary = self.slice_end.is_some_and(|end| end <= now);
        self.select(boundary);
        if self.free_pcpus() == self.assignment.len() {
            self.slice_end = None;
        } else if boundary || self.slice_end.is_none() {
            self.slice_end = Some(now + self.slice);
        }
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        &self.assignment
    }

    fn drain_written(&mut self, into: &mut Vec<usize>) {
        self.assignment.drain_written(into);
    }

    fn next_tick(&self) -> Option<Ns> {
        self.slice_end
    }
}
