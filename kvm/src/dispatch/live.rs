//! What the live view reads of a dispatcher while VMs run: its counters, and per VM its grant,
//! its guest's demand, and each VCPU's state and co-stopped time. Each read takes the
//! dispatcher's lock once, as briefly as a decision does.

use std::time::Instant;

use tandem_core::live::{DispatcherLive, VcpuState};

use super::{Dispatcher, grants};

/// A VM as its dispatcher sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct VmView {
    pub grant: Option<u32>,
    pub demand: u32,
    pub vcpus: Vec<VcpuView>,
}

/// A VCPU as its dispatcher sees it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VcpuView {
    pub state: VcpuState,
    /// Co-stopped time so far.
    pub costop_ns: u64,
    /// When a kick or its deadline woke it from a block, while its thread has no pCPU yet.
    pub woken_at: Option<Instant>,
}

impl Dispatcher {
    /// Its counters so far, its start counted from `origin`.
    pub fn live(&self, origin: Instant) -> DispatcherLive {
        let state = self.lock();
        let metrics = &state.metrics;
        DispatcherLive {
            id: self.id,
            policy: self.policy.name().to_owned(),
            pcpus: state.holders.len() as u32,
            started_ns: self.origin.saturating_duration_since(origin).as_nanos() as u64,
            decisions: metrics.decisions.count,
            decision_ns: metrics.decisions.ns,
            preemptions: metrics.preemptions(),
            preempted: metrics.preempted.count,
            preemption_ns: metrics.preempted.ns,
        }
    }

    /// Which dispatcher it is in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// VM `vm` as the dispatcher sees it now.
    pub fn vm_view(&self, vm: usize) -> VmView {
        let state = self.lock();
        let nr_vcpus = self.topology.vms[vm].vcpus as usize;
        let demand = state.pages[vm].as_ref().map_or(0, |page| grants::demand(page, nr_vcpus));
        let vcpus = self
            .topology
            .vcpus_of(vm)
            .map(|vcpu| VcpuView {
                state: state.phase(vcpu).live(state.metrics.is_costopped(vcpu)),
                costop_ns: state.metrics.costop_ns(vcpu),
                woken_at: state.vcpus[vcpu.index()].woken_at,
            })
            .collect();
        VmView { grant: state.policy.grant(vm), demand, vcpus }
    }
}
