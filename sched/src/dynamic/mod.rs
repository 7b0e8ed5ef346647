//! `dynamic`: dynamic VCPU allocation, the co-design's policy.
//!
//! Each VM is granted only as many VCPUs as it can use and as its share of the pCPUs can run
//! at once; its guest takes the others offline and brings them back when the grant rises
//! (see `pv_abi::shared`). A VM whose VCPUs all fit on pCPUs of their own has nothing to
//! co-schedule: its barriers and lock holders never wait for a descheduled sibling. The VCPUs
//! online are scheduled by [`Credit`], unchanged: every event but `Demand` goes to it as is.
//!
//! The rules:
//! - Target ([`targets`]): the pCPUs are shared out by weight (water-filling, as
//!   [`Topology::fair_shares`]), each VM asking for at most as many pCPUs as it has runnable
//!   threads (its demand) and VCPUs; a VM that has not reported a demand yet asks for all its
//!   VCPUs, and one that has ended (its last online VCPU went down) for none. A VM's target
//!   is its share rounded down (never more VCPUs than its share can run at once), at least
//!   one, at most its VCPU count; then the pCPUs this leaves idle go one each to the uncapped
//!   VMs with the largest fractions of a pCPU left over (largest remainder: with shares of
//!   2.67 pCPUs, rounding down alone left a quarter of the pCPUs idle in `tandem sweep`).
//! - Hysteresis: the grant moves to the target once the target has been above it for
//!   [`Params::raise_after`], or below it for [`Params::lower_after`], without a break; a
//!   burst or a dip shorter than that changes nothing. Targets change only with a demand or a
//!   VCPU going down, so they are checked then, and at the ticks the policy asks for when a
//!   change falls due (also while credit has nothing to run and asks for none).
//! - The grant starts at the target with every demand unknown, so a guest boots with the
//!   VCPUs its share can run when every VM is busy, rather than with all of them to be taken
//!   down again after `lower_after`.

#[cfg(test)]
mod tests;

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
    let asking = Topology::new(topology.pcpus, asking);
    let shares = asking.fair_shares();
    // A hair of slack so that shares meant to be whole (2 pCPUs / 2 VMs) round to themselves.
    let mut targets: Vec<u32> =
        shares.iter().zip(&topology.vms).map(|(share, vm)| ((share + 1e-9) as u32).clamp(1, vm.vcpus)).collect();
    // The pCPUs that rounding down leaves idle go one each to the uncapped VMs with the most
    // of a pCPU left over (a capped VM could not use more than its cap anyway).
    let left_over = |vm: usize| shares[vm] - f64::from(targets[vm]);
    let mut takers: Vec<usize> = (0..targets.len())
        .filter(|&vm| topology.vms[vm].cap.is_none() && targets[vm] < asking.vms[vm].vcpus && left_over(vm) > 1e-9)
        .collect();
    takers.sort_by(|&a, &b| left_over(b).total_cmp(&left_over(a)).then(a.cmp(&b)));
    let idle = topology.pcpus.saturating_sub(targets.iter().sum());
    for vm in takers.into_iter().take(idle as usize) {
        targets[vm] += 1;
    }
    targets
}

/// Credit over the VCPUs each VM is granted (see the module doc).
pub struct Dynamic {
    credit: Credit,
    topology: Topology,
    raise_after: Ns,
    lower_after: Ns,
    /// Per VM: its last reported demand, `Some(0)` once it ended.
    demands: Vec<Option<u32>>,
    /// [`targets`] of `demands`, recomputed when a demand changes.
    targets: Vec<u32>,
    grants: Vec<u32>,
    /// Per VM: since when its target has been on one side of its grant (true: above).
    pending: Vec<Option<(Ns, bool)>>,
    /// Per VCPU: whether it is online.
    online: Vec<bool>,
}

impl Dynamic {
    pub fn new(params: &Params, topology: &Topology) -> Dynamic {
        let demands = vec![None; topology.vms.len()];
        let targets = targets(topology, &demands);
        Dynamic {
            credit: Credit::new(params, topology),
            topology: topology.clone(),
            raise_after: params.raise_after,
            lower_after: params.lower_after,
            grants: targets.clone(),
            targets,
            demands,
            pending: vec![None; topology.vms.len()],
            online: vec![false; topology.nr_vcpus()],
        }
    }

    /// Records `vm`'s demand; the targets move only if it changed.
    fn set_demand(&mut self, vm: usize, demand: u32) {
        if self.demands.get(vm).is_some_and(|&known| known != Some(demand)) {
            self.demands[vm] = Some(demand);
            self.targets = targets(&self.topology, &self.demands);
        }
    }

    fn delay(&self, raise: bool) -> Ns {
        if raise { self.raise_after } else { self.lower_after }
    }

    /// Moves each grant to its target once the target has stayed on one side long enough.
    fn follow_targets(&mut self, now: Ns) {
        for (vm, &target) in self.targets.iter().enumerate() {
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
        match event {
            Event::Demand { vm, threads } => self.set_demand(vm, threads),
            Event::Wake(vcpu) => self.online[vcpu.index()] = true,
            Event::Down(vcpu) => {
                self.online[vcpu.index()] = false;
                // A VM that took all its VCPUs down has ended (a live guest keeps its grant
                // of at least one): its pCPUs go to the others.
                let vm = self.topology.vm_of(vcpu);
                if !self.topology.vcpus_of(vm).any(|v| self.online[v.index()]) {
                    self.set_demand(vm, 0);
                }
            }
            Event::Block(_) | Event::Yield { .. } | Event::Tick => {}
        }
        if !matches!(event, Event::Demand { .. }) {
            self.credit.handle(now, event);
        }
        if matches!(event, Event::Demand { .. } | Event::Down(_) | Event::Tick) {
            self.follow_targets(now);
        }
    }

    fn assignment(&self) -> &[Option<VcpuId>] {
        self.credit.assignment()
    }

    fn drain_written(&mut self, into: &mut Vec<usize>) {
        self.credit.drain_written(into);
    }

    fn next_tick(&self) -> Option<Ns> {
        let due = self.pending.iter().flatten().map(|&(since, raise)| since + self.delay(raise));
        self.credit.next_tick().into_iter().chain(due).min()
    }

    fn grant(&self, vm: usize) -> Option<u32> {
        self.grants.get(vm).copied()
    }
}
