//! `dynamic`: dynamic VCPU allocation, the co-design's policy.
//!
//! Each VM is granted only as many VCPUs as it can use and as its share of the pCPUs can run
//! at once; its guest takes the others offline and brings them back when the grant rises
//! (see `pv_abi::shared`). A VM whose VCPUs all fit on pCPUs of their own has nothing to
//! co-schedule: its barriers and lock holders never wait for a descheduled sibling. The VCPUs
//! online are scheduled by [`Credit`], unchanged.
//!
//! The rules:
//! - Target: the pCPUs are shared out by weight (water-filling, as [`Topology::fair_shares`]),
//!   each VM asking for at most as many pCPUs as it has runnable threads (its demand) and
//!   VCPUs; a VM that has not reported a demand yet asks for all its VCPUs, and one that has
//!   ended (all its VCPUs went down after one came up) for none. A VM's target is its share
//!   rounded down (never more VCPUs than its share can run at once), at least one, at most
//!   its VCPU count.
//! - Hysteresis: the grant rises to the target once the target has been above it for
//!   [`Params::raise_after`], and falls once it has been below it for
//!   [`Params::lower_after`]; a burst shorter than that changes nothing. Targets are checked
//!   at every event, and at the ticks the policy asks for when a change falls due.
//! - The grant starts at the target with every demand unknown, so a guest boots with the
//!   VCPUs its share can run.

use crate::credit::Credit;
use crate::{Event, Ns, Params, Policy, Topology, VcpuId, VmSpec};

/// Each VM's target VCPU count, given what each asks for: `Some(demand)`, or `None` before
/// its first report (then it asks for all its VCPUs).
pub fn targets(topology: &Topology, demands: &[Option<u32>]) -> Vec<u32> {
    let asking = topology
        .vms
        .iter()
        .zip(demands)
        .map(|(vm, demand)| VmSpec { vcpus: demand.map_or(vm.vcpus, |threads| threads.min(vm.vcpus)), ..*vm })
        .collect();
    let shares = Topology::new(topology.pcpus, asking).fair_shares();
    // A hair of slack so that shares meant to be whole (2 pCPUs / 2 VMs) round to themselves.
    shares.iter().zip(&topology.vms).map(|(share, vm)| ((share + 1e-9) as u32).clamp(1, vm.vcpus)).collect()
}

pub struct Dynamic {
    credit: Credit,
    topology: Topology,
    raise_after: Ns,
    lower_after: Ns,
    /// Per VM: its last reported demand, `Some(0)` once it ended.
    demands: Vec<Option<u32>>,
    grants: Vec<u32>,
    /// Per VM: since when its target has been on one side of its grant (true: above).
    pending: Vec<Option<(Ns, bool)>>,
    /// Per VCPU: online; per VM: whether a VCPU ever came up.
    online: Vec<bool>,
    started: Vec<bool>,
}

impl Dynamic {
    pub fn new(params: &Params, topology: &Topology) -> Dynamic {
        let vms = topology.vms.len();
        let demands = vec![None; vms];
        Dynamic {
            credit: Credit::new(params, topology),
            topology: topology.clone(),
            raise_after: params.raise_after,
            lower_after: params.lower_after,
            grants: targets(topology, &demands),
            demands,
            pending: vec![None; vms],
            online: vec![false; topology.nr_vcpus()],
            started: vec![false; vms],
        }
    }

    fn delay(&self, raise: bool) -> Ns {
        if raise { self.raise_after } else { self.lower_after }
    }

    /// Keeps the online flags, and marks a VM whose VCPUs all went down as ended.
    fn track(&mut self, event: Event) {
        match event {
            Event::Wake(vcpu) => {
                self.online[vcpu.index()] = true;
                self.started[self.topology.vm_of(vcpu)] = true;
            }
            Event::Down(vcpu) => {
                self.online[vcpu.index()] = false;
                let vm = self.topology.vm_of(vcpu);
                if !self.topology.vcpus_of(vm).any(|v| self.online[v.index()]) {
                    self.demands[vm] = Some(0);
                }
            }
            Event::Demand { vm, threads } if vm < self.demands.len() => self.demands[vm] = Some(threads),
            _ => {}
        }
    }

    /// Moves each grant to its target once the target has stayed on one side long enough.
    fn follow_targets(&mut self, now: Ns) {
        let targets = targets(&self.topology, &self.demands);
        for (vm, target) in targets.into_iter().enumerate() {
            let grant = self.grants[vm];
            if target == grant {
                self.pending[vm] = None;
                continue;
            }
            let raise = target > grant;
            let since = match self.pending[vm] {
                Some((since, side)) if side == raise => since,
                _ => now,
            };
            if now - since >= self.delay(raise) {
                self.grants[vm] = target;
                self.pending[vm] = None;
            } else {
                self.pending[vm] = Some((since, raise));
            }
        }
    }
}

impl Policy for Dynamic {
    fn handle(&mut self, now: Ns, event: Event) {
        self.track(event);
        if !matches!(event, Event::Demand { .. }) {
            self.credit.handle(now, event);
        }
        self.follow_targets(now);
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        self.credit.assignment()
    }

    fn next_tick(&self) -> Option<Ns> {
        let due = self.pending.iter().flatten().map(|&(since, raise)| since + self.delay(raise));
        self.credit.next_tick().into_iter().chain(due).min()
    }

    fn grant(&self, vm: usize) -> Option<u32> {
        self.grants.get(vm).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MS;
    use crate::harness::{Harness, Lcg, State};

    fn topology(pcpus: u32, vms: &[(u32, u32, Option<u32>)]) -> Topology {
        Topology::new(pcpus, vms.iter().map(|&(vcpus, weight, cap)| VmSpec { vcpus, weight, cap }).collect())
    }

    fn params() -> Params {
        Params { raise_after: 10 * MS, lower_after: 50 * MS, ..Params::default() }
    }

    fn harness(pcpus: u32, vms: &[(u32, u32, Option<u32>)]) -> Harness {
        let topology = topology(pcpus, vms);
        Harness::new(Box::new(Dynamic::new(&params(), &topology)), topology)
    }

    fn grants(h: &Harness) -> Vec<u32> {
        (0..h.topology.vms.len()).map(|vm| h.policy.grant(vm).expect("dynamic grants")).collect()
    }

    #[test]
    fn targets_share_the_pcpus_by_demand_weight_and_cap_rounding_down() {
        let two_by_two = topology(2, &[(2, 256, None), (2, 256, None)]);
        assert_eq!(targets(&two_by_two, &[Some(2), Some(2)]), [1, 1]);
        assert_eq!(targets(&two_by_two, &[None, None]), [1, 1]);
        // An idle VM keeps one VCPU; the busy one gets both pCPUs.
        assert_eq!(targets(&two_by_two, &[Some(0), Some(5)]), [1, 2]);
        assert_eq!(targets(&topology(4, &[(4, 1, None), (4, 3, None)]), &[Some(4), Some(4)]), [1, 3]);
        // A cap of one pCPU holds a VM to one VCPU however many pCPUs are free.
        assert_eq!(targets(&topology(4, &[(4, 256, Some(100)), (2, 256, None)]), &[Some(4), Some(2)]), [1, 2]);
        assert_eq!(targets(&topology(8, &[(4, 256, None)]), &[Some(3)]), [3]);
        // 3 VMs on 2 pCPUs: 0.67 each rounds down to nothing, and up to the floor of one.
        assert_eq!(targets(&topology(2, &[(2, 256, None); 3]), &[Some(2); 3]), [1, 1, 1]);
        // 1.5 pCPUs each: one VCPU each, never two that cannot run at once.
        assert_eq!(targets(&topology(3, &[(2, 256, None), (2, 256, None)]), &[Some(2), Some(2)]), [1, 1]);
        assert_eq!(targets(&topology(2, &[(4, 256, None), (2, 256, None)]), &[None, None]), [1, 1]);
    }

    #[test]
    fn a_guest_boots_with_the_vcpus_its_share_can_run() {
        let h = harness(2, &[(2, 256, None), (2, 256, None)]);
        assert_eq!(grants(&h), [1, 1]);
        let h = harness(2, &[(2, 256, None)]);
        assert_eq!(grants(&h), [2]);
    }

    #[test]
    fn grants_follow_sustained_changes_after_their_delay_and_ignore_bursts() {
        let mut h = harness(2, &[(2, 256, None), (2, 256, None)]);
        h.wake(VcpuId(0));
        h.wake(VcpuId(2));
        h.demand(0, 0);
        // A burst shorter than raise_after (10 ms) changes nothing...
        h.advance(5 * MS);
        h.demand(0, 2);
        assert_eq!(grants(&h), [1, 1]);
        h.advance(10 * MS);
        assert_eq!(grants(&h), [1, 1]);
        // ...a sustained one does (VM 1 going idle hands its pCPU to VM 0), exactly when due,
        // driven by the policy's own tick.
        h.demand(1, 0);
        h.advance(10 * MS - 1);
        assert_eq!(grants(&h), [1, 1]);
        h.advance(1);
        assert_eq!(grants(&h), [2, 1]);
        // A dip shorter than lower_after (50 ms) keeps the grant; a long one lowers it.
        h.demand(1, 2);
        h.advance(40 * MS);
        h.demand(1, 0);
        h.advance(40 * MS);
        assert_eq!(grants(&h), [2, 1]);
        h.demand(1, 2);
        h.advance(50 * MS);
        assert_eq!(grants(&h), [1, 1]);
    }

    #[test]
    fn an_ended_vm_hands_its_share_on() {
        let mut h = harness(2, &[(2, 256, None), (2, 256, None)]);
        h.wake_all();
        h.demand(0, 2);
        h.demand(1, 2);
        h.advance(100 * MS);
        assert_eq!(grants(&h), [1, 1]);
        h.down(VcpuId(0));
        h.down(VcpuId(1));
        h.advance(10 * MS);
        assert_eq!(grants(&h), [1, 2]);
    }

    #[test]
    fn grants_stay_within_bounds_and_credit_keeps_its_invariants_under_random_demand() {
        for (pcpus, vms) in [
            (2, &[(2, 256, None), (2, 256, None)][..]),
            (2, &[(4, 256, None), (2, 512, Some(50))]),
            (4, &[(3, 1, None), (8, 2, None), (1, 4, None)]),
        ] {
            let mut h = harness(pcpus, vms);
            let mut rng = Lcg(7);
            h.wake_all();
            for _ in 0..3000 {
                let vm = rng.below(vms.len() as u64) as usize;
                h.demand(vm, rng.below(12) as u32);
                // The guest follows: VCPUs beyond the grant down, the others up.
                for (vm, &grant) in grants(&h).iter().enumerate() {
                    for (i, vcpu) in h.topology.vcpus_of(vm).enumerate() {
                        let wanted = (i as u32) < grant;
                        match h.state(vcpu) {
                            State::Offline if wanted => h.wake(vcpu),
                            State::Runnable | State::Blocked if !wanted => h.down(vcpu),
                            _ => {}
                        }
                    }
                }
                h.advance(rng.below(30 * MS));
                for (vm, grant) in grants(&h).into_iter().enumerate() {
                    assert!((1..=vms[vm].0).contains(&grant), "vm {vm} granted {grant} of {:?}", vms[vm]);
                }
            }
        }
    }

    #[test]
    fn vms_following_their_grants_get_their_fair_shares() {
        for (pcpus, vms) in [
            (2, &[(2, 256, None), (2, 256, None)][..]),
            (2, &[(4, 256, None), (2, 256, None)]),
            (4, &[(4, 1, None), (4, 3, None)]),
        ] {
            let mut h = harness(pcpus, vms);
            for (vm, &grant) in grants(&h).iter().enumerate() {
                for vcpu in h.topology.vcpus_of(vm).take(grant as usize) {
                    h.wake(vcpu);
                }
                h.demand(vm, vms[vm].0);
            }
            let duration = 10_000 * MS;
            h.advance(duration);
            for (vm, share) in h.topology.fair_shares().into_iter().enumerate() {
                let (ran, fair) = (h.vm_run(vm) as f64, share * duration as f64);
                assert!((ran - fair).abs() < 0.03 * fair, "{vms:?}: vm {vm} ran {ran} ns, fair is {fair}");
            }
        }
    }
}
