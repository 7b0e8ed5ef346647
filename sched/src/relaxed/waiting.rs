//! The lazy waiting heaps: the runnable VCPUs without a pCPU as min-heaps of (virtual time,
//! id), the ready ones and the co-stopped ones apart. Only running VCPUs' virtual times move,
//! so a waiting VCPU's entry keeps its place until it runs. An entry is not taken out when its
//! VCPU leaves (runs, blocks, is co-stopped or co-started): it goes stale, and is dropped when
//! it comes to the top, since a VCPU joins a heap far more often than the least entry is asked
//! for; a heap grown far beyond the VCPU count is cleared of its stale entries at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Relaxed;
use crate::VcpuId;

/// A heap holding more than `ENTRIES_PER_VCPU` entries per VCPU plus `ENTRIES_SLACK` is cleared
/// of its stale entries, so that they cannot pile up (a storm of directed yields between two
/// siblings leaves one behind at every yield).
pub(super) const ENTRIES_PER_VCPU: usize = 4;
pub(super) const ENTRIES_SLACK: usize = 64;

impl Relaxed {
    /// Runnable and without a pCPU.
    pub(super) fn waiting(&self, vcpu: VcpuId) -> bool {
        self.runnable[vcpu.index()] && self.assignment.pcpu_of(vcpu).is_none()
    }

    /// Waiting and not co-stopped.
    pub(super) fn ready(&self, vcpu: VcpuId) -> bool {
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
    pub(super) fn enqueue(&mut self, vcpu: VcpuId) {
        let costopped = self.costopped[vcpu.index()];
        let entry = Reverse((self.vtime[vcpu.index()], vcpu.0));
        self.heap(costopped).push(entry);
        // Stale entries buried under a long-waiting VCPU's are cleared out now and then.
        if self.heap(costopped).len() > ENTRIES_PER_VCPU * self.runnable.len() + ENTRIES_SLACK {
            let mut heap = std::mem::take(self.heap(costopped));
            heap.retain(|&Reverse(entry)| self.waits(entry, costopped));
            *self.heap(costopped) = heap;
        }
    }

    /// The least (virtual time, id) of the ready VCPUs or of the co-stopped waiting ones.
    pub(super) fn least(&mut self, costopped: bool) -> Option<(u64, u32)> {
        while let Some(&Reverse(entry)) = self.heap(costopped).peek() {
            if self.waits(entry, costopped) {
                return Some(entry);
            }
            self.heap(costopped).pop();
        }
        None
    }

    /// The ready VCPU of least virtual time (ties by id).
    pub(super) fn least_ready(&mut self) -> Option<VcpuId> {
        self.least(false).map(|(_, v)| VcpuId(v))
    }
}
