//! Grants, under a policy that grants VCPUs (`dynamic`): each VM's demand, read from its
//! shared page every `sched::DEMAND_POLL`, goes to the policy when it changes, and the grant
//! the policy decides is published in the shared page when it changes. A VM follows a grant
//! when as many of its VCPUs are online; how long that takes is measured.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pv_abi::shared::SharedPage;

/// Runnable threads the guest reports over its first `vcpus` VCPUs. Guest-written words:
/// any values, summed without overflow.
pub(crate) fn demand(page: &SharedPage, vcpus: usize) -> u32 {
    page.vcpus[..vcpus].iter().fold(0u32, |sum, slot| sum.saturating_add(slot.demand.load(Ordering::Relaxed)))
}

/// Publishes how many VCPUs the guest should keep online.
pub(crate) fn publish(page: &SharedPage, vcpus: u32) {
    page.grant_vcpus.store(vcpus, Ordering::Release);
    page.grant_seq.fetch_add(1, Ordering::AcqRel);
}

/// One VM's grant as the dispatcher tracks it.
#[derive(Debug, Default)]
pub(crate) struct VmGrant {
    /// The demand last handed to the policy.
    demand: Option<u32>,
    /// The grant last published.
    grant: Option<u32>,
    /// When a grant change was published that the VM has not followed yet.
    since: Option<Instant>,
}

impl VmGrant {
    /// The grant a VM boots with, if the policy grants VCPUs: its starting VCPU count.
    pub fn at_boot(grant: Option<u32>) -> VmGrant {
        VmGrant { grant, ..VmGrant::default() }
    }

    /// Whether `demand` differs from the one the policy last heard of; it now has.
    pub fn demand_changed(&mut self, demand: u32) -> bool {
        let changed = self.demand != Some(demand);
        self.demand = Some(demand);
        changed
    }

    /// Whether `grant` differs from the one last published; it is now published, with
    /// `online` VCPUs online, and is being followed unless that is its count.
    pub fn changed(&mut self, grant: u32, online: u32) -> bool {
        if self.grant == Some(grant) {
            return false;
        }
        self.grant = Some(grant);
        self.since = (online != grant).then(Instant::now);
        true
    }

    /// With `online` VCPUs online: if that follows the pending grant, how long it took.
    pub fn followed(&mut self, online: u32) -> Option<Duration> {
        let since = self.since?;
        (Some(online) == self.grant).then(|| {
            self.since = None;
            since.elapsed()
        })
    }
}
