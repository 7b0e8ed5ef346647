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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Lcg;
    use crate::harness::{Harness, State};
    use crate::{MS, VmSpec};

    const SLICE: Ns = 30 * MS;

    /// A harness over `pcpus` pCPUs and VMs of (VCPUs, weight).
    fn harness(pcpus: u32, vms: &[(u32, u32)]) -> Harness {
        let vms = vms.iter().map(|&(vcpus, weight)| VmSpec { vcpus, weight, cap: None }).collect();
        let topology = Topology::new(pcpus, vms);
        let params = Params { slice: SLICE, ..Params::default() };
        Harness::new(Box::new(Strict::new(&params, &topology)), topology).allow_reserved()
    }

    fn online(h: &Harness, vm: usize) -> Vec<VcpuId> {
        h.topology.vcpus_of(vm).filter(|&v| h.state(v) != State::Offline).collect()
    }

    fn free_pcpus(h: &Harness) -> usize {
        h.policy.assignment().iter().filter(|slot| slot.is_none()).count()
    }

    /// Panics unless every VM has all its online VCPUs on pCPUs or none, a gang on pCPUs has a
    /// runnable member, no waiting gang that fits the machine fits in the idle pCPUs, and a tick
    /// is pending, in the future, exactly while something runs.
    fn check(h: &Harness) {
        let (pcpus, free) = (h.topology.pcpus as usize, free_pcpus(h));
        for vm in 0..h.topology.vms.len() {
            let online = online(h, vm);
            let placed = online.iter().filter(|&&v| h.pcpu_of(v).is_some()).count();
            let runnable = online.iter().any(|&v| h.state(v) == State::Runnable);
            let now = h.now();
            assert!(
                placed == 0 || placed == online.len(),
                "vm {vm} has {placed} of {} VCPUs on pCPUs at {now}",
                online.len()
            );
            if placed > 0 {
                assert!(runnable, "vm {vm} holds pCPUs with no runnable VCPU at {now}");
            } else if runnable && online.len() <= pcpus {
                assert!(online.len() > free, "vm {vm} ({} wide) waits while {free} pCPUs idle at {now}", online.len());
            }
        }
        match h.policy.next_tick() {
            Some(tick) => assert!(free < pcpus && tick > h.now(), "tick at {tick} at {} with {free} idle", h.now()),
            None => assert_eq!(free, pcpus, "something runs without a tick at {}", h.now()),
        }
    }

    /// Advances `duration`, stopping at every tick to check.
    fn advance_checked(h: &mut Harness, duration: Ns) {
        let end = h.now() + duration;
        while h.now() < end {
            let until = h.policy.next_tick().map_or(end, |tick| tick.min(end));
            h.advance(until - h.now());
            check(h);
        }
    }

    #[test]
    fn gangs_run_whole_or_not_at_all_under_random_blocks_wakes_and_downs() {
        // The last topology has a 3-VCPU VM on 2 pCPUs: it fits only while a VCPU is offline.
        let topologies: [(u32, &[(u32, u32)]); 3] = [
            (3, &[(2, 256), (2, 256), (1, 256)]),
            (4, &[(4, 256), (2, 512), (1, 128), (3, 256)]),
            (2, &[(2, 256), (1, 100), (3, 256)]),
        ];
        for (pcpus, vms) in topologies {
            for seed in 1..=4 {
                let mut h = harness(pcpus, vms);
                let mut rng = Lcg(seed);
                let nr_vcpus = h.topology.nr_vcpus() as u64;
                for _ in 0..3000 {
                    let vcpu = VcpuId(rng.below(nr_vcpus) as u32);
                    match h.state(vcpu) {
                        State::Offline | State::Blocked => h.wake(vcpu),
                        State::Runnable if h.running(vcpu) => match rng.below(10) {
                            0 => h.down(vcpu),
                            1 => h.yield_to(vcpu, None),
                            _ => h.block(vcpu),
                        },
                        State::Runnable if rng.below(4) == 0 => h.down(vcpu),
                        State::Runnable => {}
                    }
                    check(&h);
                    advance_checked(&mut h, rng.below(2 * SLICE));
                }
                for vm in 0..vms.len() {
                    assert!(h.vm_run(vm) > 0, "vm {vm} never ran in {pcpus} pCPUs {vms:?} seed {seed}");
                }
            }
        }
    }

    /// Each VM's run time over `duration` with every VCPU always runnable, against its fair share.
    fn assert_fair(pcpus: u32, vms: &[(u32, u32)], duration: Ns) {
        let mut h = harness(pcpus, vms);
        h.wake_all();
        advance_checked(&mut h, duration);
        for (vm, share) in h.topology.fair_shares().into_iter().enumerate() {
            let (run, fair) = (h.vm_run(vm) as f64, share * duration as f64);
            assert!((run - fair).abs() < 0.02 * fair, "{pcpus} pCPUs {vms:?}: vm {vm} ran {run} ns, fair is {fair}");
        }
    }

    #[test]
    fn gangs_of_equal_weight_split_the_pcpus_evenly() {
        assert_fair(2, &[(2, 256), (2, 256)], 10_000 * MS);
    }

    #[test]
    fn gangs_share_the_pcpus_in_proportion_to_weight() {
        assert_fair(2, &[(2, 1), (2, 2)], 10_000 * MS);
        assert_fair(4, &[(2, 100), (2, 300)], 10_000 * MS);
    }

    #[test]
    fn a_narrow_gang_backfills_the_pcpu_the_wide_ones_leave() {
        // Two 2-wide gangs cannot run together on 3 pCPUs: the 1-wide one takes the third
        // pCPU beside either, all the time, and each VM gets its fair pCPU.
        assert_fair(3, &[(2, 256), (2, 256), (1, 256)], 10_000 * MS);
        let mut h = harness(3, &[(2, 256), (2, 256), (1, 256)]);
        h.wake_all();
        advance_checked(&mut h, 1000 * MS);
        assert_eq!(h.times(VcpuId(4)).run, 1000 * MS);
    }

    #[test]
    fn a_wide_gang_is_not_starved_by_a_narrow_one() {
        let mut h = harness(4, &[(4, 256), (2, 256)]);
        h.wake_all();
        advance_checked(&mut h, 10_000 * MS);
        // Equal weights hold the pCPUs equally long: the 4-wide gang runs a third of the time.
        let (wide, narrow) = (h.vm_run(0) as f64, h.vm_run(1) as f64);
        assert!((wide - narrow).abs() < 0.02 * narrow, "wide ran {wide} ns, narrow {narrow} ns");
        for v in 0..6 {
            let wait = h.times(VcpuId(v)).longest_wait;
            assert!(wait <= 2 * SLICE, "v{v} waited {wait} ns");
        }
    }

    #[test]
    fn a_wide_gang_gets_its_turn_among_narrow_gangs_that_could_fill_the_gaps() {
        // Three 1-wide gangs could keep 3 of the 4 pCPUs busy for ever; the 4-wide one still
        // runs when it is the most behind, a fifth of the time, and all hold the pCPUs equally.
        let mut h = harness(4, &[(4, 256), (1, 256), (1, 256), (1, 256)]);
        h.wake_all();
        advance_checked(&mut h, 10_000 * MS);
        let fair = 0.8 * 10_000.0 * MS as f64;
        for vm in 0..4 {
            let run = h.vm_run(vm) as f64;
            assert!((run - fair).abs() < 0.02 * fair, "vm {vm} ran {run} ns, fair is {fair}");
        }
        let wait = h.times(VcpuId(0)).longest_wait;
        assert!(wait <= 4 * SLICE, "the wide gang waited {wait} ns");
    }

    #[test]
    fn a_vm_wider_than_the_machine_never_runs_and_does_not_hold_up_others() {
        let mut h = harness(2, &[(3, 256), (1, 256), (1, 256)]);
        h.wake_all();
        advance_checked(&mut h, 1000 * MS);
        assert_eq!(h.vm_run(0), 0);
        assert_eq!((h.vm_run(1), h.vm_run(2)), (1000 * MS, 1000 * MS));
        // With a VCPU offline it fits, and gets its turn.
        h.down(VcpuId(2));
        advance_checked(&mut h, 1000 * MS);
        assert!(h.vm_run(0) > 0);
        assert_eq!(h.times(VcpuId(0)).run, h.times(VcpuId(1)).run);
    }

    #[test]
    fn a_blocked_member_keeps_its_pcpu_reserved_and_idle() {
        let mut h = harness(2, &[(2, 256), (2, 256)]);
        h.wake_all();
        let (a, b) = (VcpuId(0), VcpuId(1));
        assert!(h.running(a) && h.running(b));
        let pcpu = h.pcpu_of(b);
        h.block(b);
        check(&h);
        advance_checked(&mut h, 10 * MS);
        assert_eq!(h.pcpu_of(b), pcpu, "the blocked member's pCPU is held for it");
        assert_eq!(h.times(b).reserved_idle, 10 * MS);
        assert_eq!(h.times(a).run, 10 * MS);
        // It runs there the moment it wakes.
        h.wake(b);
        assert!(h.running(b) && h.pcpu_of(b) == pcpu);
    }

    #[test]
    fn a_gang_is_charged_for_its_reserved_pcpus() {
        // VM 0 runs one VCPU on two pCPUs: charged for both, it gets as many slices as the
        // other VM, so half its run time, and the reserved pCPU idles as long as the other runs.
        let mut h = harness(2, &[(2, 256), (2, 256)]);
        h.wake_all();
        h.block(VcpuId(1));
        advance_checked(&mut h, 10_000 * MS);
        let (a, reserved) = (h.times(VcpuId(0)).run, h.times(VcpuId(1)).reserved_idle);
        assert_eq!(a, reserved);
        let other = h.vm_run(1) as f64;
        assert!((2.0 * a as f64 - other).abs() < 0.02 * other, "vm 0 ran {a} ns, vm 1 {other} ns");
    }

    #[test]
    fn a_gang_whose_members_all_block_frees_its_pcpus_at_once() {
        let mut h = harness(2, &[(2, 256), (2, 256)]);
        h.wake_all();
        advance_checked(&mut h, 5 * MS);
        h.block(VcpuId(0));
        assert!(!h.running(VcpuId(2)), "one member still runs: the gang keeps its pCPUs");
        h.block(VcpuId(1));
        assert!(h.running(VcpuId(2)) && h.running(VcpuId(3)));
        assert_eq!(h.pcpu_of(VcpuId(0)), None);
        assert_eq!(h.pcpu_of(VcpuId(1)), None);
    }

    #[test]
    fn a_sleeping_vm_banks_at_most_a_slice_of_credit() {
        let mut h = harness(2, &[(2, 256), (2, 256)]);
        h.wake_all();
        h.block(VcpuId(0));
        h.block(VcpuId(1));
        advance_checked(&mut h, 10_000 * MS);
        let before = [h.vm_run(0), h.vm_run(1)];
        h.wake(VcpuId(0));
        h.wake(VcpuId(1));
        advance_checked(&mut h, 300 * MS);
        let (woken, other) = (h.vm_run(0) - before[0], h.vm_run(1) - before[1]);
        // Without the catch-up, VM 0 would run the whole 300 ms on both pCPUs.
        assert!(woken <= other + 2 * 2 * SLICE, "the woken VM ran {woken} ns, the other {other} ns");
        assert!(other >= 2 * 100 * MS, "the other VM ran {other} ns");
    }

    #[test]
    fn a_vcpu_coming_online_joins_its_running_gang_on_a_free_pcpu() {
        let mut h = harness(3, &[(2, 256), (1, 256)]);
        h.wake(VcpuId(0));
        h.wake(VcpuId(2));
        h.wake(VcpuId(1));
        assert!(h.running(VcpuId(0)) && h.running(VcpuId(1)) && h.running(VcpuId(2)));
    }

    #[test]
    fn a_vcpu_coming_online_without_a_free_pcpu_deschedules_its_gang_until_it_fits() {
        let mut h = harness(2, &[(2, 256), (1, 256)]);
        h.wake(VcpuId(0));
        h.wake(VcpuId(2));
        assert!(h.running(VcpuId(0)) && h.running(VcpuId(2)));
        h.wake(VcpuId(1));
        check(&h);
        assert!(h.running(VcpuId(2)));
        assert_eq!(h.pcpu_of(VcpuId(0)), None);
        advance_checked(&mut h, SLICE);
        assert!(h.running(VcpuId(0)) && h.running(VcpuId(1)));
        assert!(!h.running(VcpuId(2)));
    }

    #[test]
    fn ticks_come_at_slice_boundaries_while_something_runs() {
        let mut h = harness(2, &[(1, 256), (1, 256), (1, 256)]);
        assert_eq!(h.policy.next_tick(), None);
        h.advance(7 * MS);
        h.wake(VcpuId(0));
        assert_eq!(h.policy.next_tick(), Some(7 * MS + SLICE));
        h.advance(3 * MS);
        // A gang joining mid-slice does not move the boundary.
        h.wake(VcpuId(1));
        assert_eq!(h.policy.next_tick(), Some(7 * MS + SLICE));
        h.wake(VcpuId(2));
        h.advance(SLICE);
        assert_eq!(h.ticks(), 1);
        assert_eq!(h.policy.next_tick(), Some(7 * MS + 2 * SLICE));
        // The VM that waited is most behind: it runs from the boundary on.
        assert!(h.running(VcpuId(2)));
        for v in 0..3 {
            if h.running(VcpuId(v)) {
                h.block(VcpuId(v));
            }
        }
        let runnable = (0..3).find(|&v| h.state(VcpuId(v)) == State::Runnable).map(VcpuId).unwrap();
        assert!(h.running(runnable));
        h.block(runnable);
        assert_eq!(h.policy.next_tick(), None);
    }

    #[test]
    fn a_yield_leaves_the_gang_running() {
        let mut h = harness(2, &[(2, 256), (2, 256)]);
        h.wake_all();
        let before = h.policy.assignment().to_vec();
        h.advance(MS);
        h.yield_to(VcpuId(0), Some(VcpuId(1)));
        h.yield_to(VcpuId(1), None);
        assert_eq!(h.policy.assignment(), before);
    }
}
