//! Credit accounting and caps (see the rules in the parent module's doc): the running VCPUs
//! burn credit as they run; each accounting step shares the period's pCPU time out among the
//! VMs of the active VCPUs (water-filling, `crate::share`), clamps credit to a slice either
//! way, re-sorts the queues and unparks the capped VMs; a capped VM is parked the moment its
//! VCPUs have run its cap's worth of the period.

use std::cmp::Reverse;

use super::Credit;
use crate::Ns;
use crate::share::water_fill;

impl Credit {
    /// Burns the running VCPUs' credit for the time since they were last charged.
    pub(super) fn charge(&mut self, now: Ns) {
        for pcpu in 0..self.assignment.len() {
            self.charge_pcpu(pcpu, now);
        }
        self.charged_at = now;
    }

    /// Burns `pcpu`'s running VCPU's credit for the time since it was last charged.
    pub(super) fn charge_pcpu(&mut self, pcpu: usize, now: Ns) {
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
    pub(super) fn account(&mut self, now: Ns) {
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
        let vms: Vec<(u32, Ns)> = self
            .vms
            .iter()
            .zip(active)
            .map(|(vm, &active)| {
                let width = active * self.accounting;
                (vm.weight, vm.budget.map_or(width, |budget| budget.min(width)))
            })
            .collect();
        water_fill(self.assignment.len() as u64 * self.accounting, &vms)
    }

    /// Parks the capped VMs that used their budget, taking their VCPUs off the pCPUs.
    pub(super) fn park_over_cap(&mut self, now: Ns) {
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
}
