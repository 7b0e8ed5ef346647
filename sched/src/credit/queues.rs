//! The run queues and the offers to stealing pCPUs (see the rules in the parent module's
//! doc): each pCPU's queue is ordered by priority, FIFO within one, except that a yielding
//! VCPU goes behind one VCPU of the next lower priority; a pCPU picks from its own queue or
//! steals the best VCPU of the others'. What each queue offers a stealing pCPU is kept up to
//! date with every change to it, so that a steal reads the queue heads instead of every queue.

use super::{Credit, Priority};
use crate::VcpuId;

impl Credit {
    /// Queues `vcpu` behind every VCPU of its priority or higher, and if it `yielded`, behind
    /// one more.
    pub(super) fn enqueue(&mut self, pcpu: usize, vcpu: VcpuId, yielded: bool) {
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

    pub(super) fn refresh_all_offers(&mut self) {
        for pcpu in 0..self.queues.len() {
            self.refresh_offer(pcpu);
        }
    }

    /// Takes the VCPU `pcpu` should run next out of its queue (see the module doc).
    pub(super) fn pick(&mut self, pcpu: usize) -> Option<VcpuId> {
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

    pub(super) fn least_loaded(&self) -> usize {
        (0..self.queues.len())
            .min_by_key(|&pcpu| self.queues[pcpu].len() + usize::from(self.assignment[pcpu].is_some()))
            .expect("at least one pCPU")
    }
}
