//! Skew checks (the progress and co-stop rules of the parent module's doc): a VCPU's skew is
//! its progress minus the least progress of its runnable siblings; a VCPU more than
//! `Params::skew` ahead is co-stopped (its pCPU going to its most lagging ready sibling), and
//! co-started at the first check where it no longer is. A VM is checked only when one of its
//! co-stops could have changed: when its VCPUs ran, woke or left since the last check, or when
//! its due time comes (the earliest a lead could cross the bound if nothing happens to it).

use super::Relaxed;
use crate::{Ns, VcpuId};

impl Relaxed {
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
    pub(super) fn slowest(&self, vm: usize) -> Option<Ns> {
        self.topology.vcpus_of(vm).filter(|v| self.runnable[v.index()]).map(|v| self.progress_now(v)).min()
    }

    /// `vcpu`'s progress now.
    pub(super) fn progress_now(&self, vcpu: VcpuId) -> Ns {
        self.progress[vcpu.index()] + self.assignment.pcpu_of(vcpu).map_or(0, |pcpu| self.now - self.since[pcpu])
    }

    /// The earliest time any of `vm`'s co-stops could change if nothing happens to its VCPUs
    /// meanwhile: a lead grows or shrinks at most as fast as time passes, a running VCPU's
    /// only grows and a waiting one's only shrinks (its slowest sibling can only advance), so
    /// only a running VCPU can cross the bound upward and only a co-stopped one downward.
    /// So it comes from three figures of one pass: the least progress of the runnable VCPUs
    /// (the slowest), the most of the running ones and the least of the co-stopped ones.
    pub(super) fn due(&self, vm: usize, now: Ns) -> Ns {
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
    pub(super) fn mark(&mut self, vm: usize) {
        if !self.marked[vm] {
            self.marked[vm] = true;
            self.to_check.push(vm);
        }
    }

    pub(super) fn set_costopped(&mut self, vcpu: VcpuId, costopped: bool) {
        if self.costopped[vcpu.index()] != costopped {
            self.costopped[vcpu.index()] = costopped;
            self.costop_changed.push(vcpu);
            if self.waiting(vcpu) {
                self.enqueue(vcpu);
            }
        }
    }

    /// Co-stops the VCPUs of `vms` too far ahead and co-starts those back within bounds; the
    /// pCPU of a running VCPU co-stopped passes to its most lagging ready sibling, slice and all
    /// (if it has none, the pCPU is filled as any idle one). Only VMs whose VCPUs ran, woke or
    /// left since the last check need it: nobody else's progress or runnable set has moved.
    pub(super) fn check_skew(&mut self) {
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
}
