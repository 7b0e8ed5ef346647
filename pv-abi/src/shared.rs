//! The shared page: one per VM, at `BootInfo::shared_page`, read and written by both sides
//! with atomics and never through an exit. Each field has one writer, named in its doc.

use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::MAX_VCPUS;

/// What a VCPU is doing, as the monitor publishes it in [`VcpuShared::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VcpuState {
    /// Not started, or taken down with `VcpuDown`.
    Offline = 0,
    /// On a physical CPU, executing guest code (or a hypercall).
    Running = 1,
    /// Runnable but not running: waiting for a physical CPU or co-stopped. A lock holder in
    /// this state makes spinning on its lock pointless.
    Preempted = 2,
    /// Inside the `Block` hypercall, waiting for a kick or its deadline.
    Blocked = 3,
}

impl VcpuState {
    /// Decodes a published state; `None` for a value no monitor writes.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Offline),
            1 => Some(Self::Running),
            2 => Some(Self::Preempted),
            3 => Some(Self::Blocked),
            _ => None,
        }
    }
}

/// One VCPU's slot: a cache line of its own so that VCPUs do not false-share.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct VcpuShared {
    /// Monitor: a [`VcpuState`] as `u32`.
    pub state: AtomicU32,
    /// Guest: runnable + running threads on this VCPU.
    pub demand: AtomicU32,
    /// Monitor: times this VCPU was descheduled while runnable.
    pub preemptions: AtomicU32,
    /// Guest: times a lock waiter on this VCPU left its spin for a paravirtual lock's slow
    /// path (to yield or block), for the monitor's live view. Wraps.
    pub lock_slow_paths: AtomicU32,
    /// Monitor: nanoseconds spent running.
    pub run_ns: AtomicU64,
    /// Monitor: nanoseconds spent runnable but waiting for a physical CPU (steal time).
    pub ready_ns: AtomicU64,
    /// Monitor: nanoseconds spent co-stopped.
    pub costop_ns: AtomicU64,
    /// Monitor: nanoseconds spent blocked.
    pub wait_ns: AtomicU64,
    /// Reserved, zero.
    pub _reserved_tail: [u64; 2],
}

/// The shared page. Its header takes the first cache line, then one [`VcpuShared`] per VCPU.
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct SharedPage {
    /// Monitor: how many VCPUs the guest should keep online (`1..=nr_vcpus`).
    pub grant_vcpus: AtomicU32,
    /// Monitor: bumped after every change of `grant_vcpus`.
    pub grant_seq: AtomicU32,
    /// Guest: the `grant_seq` it has finished following (its VCPUs are up or down to match).
    pub grant_ack: AtomicU32,
    /// Monitor: nonzero once it asks the guest to end (its process got SIGINT or SIGTERM),
    /// after which it kicks every VCPU. A guest ends when it can (a server prints what it
    /// served); one still running a grace period later is stopped.
    pub stop_requested: AtomicU32,
    /// Reserved, zero.
    pub _reserved: [u32; 12],
    /// Per-VCPU slots, indexed by VCPU id; only the first `nr_vcpus` are used.
    pub vcpus: [VcpuShared; MAX_VCPUS],
}

/// Bytes the monitor reserves for the shared page.
pub const SHARED_PAGE_SIZE: usize = core::mem::size_of::<SharedPage>();

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layout() {
        assert_eq!(size_of::<VcpuShared>(), 64);
        assert_eq!(align_of::<VcpuShared>(), 64);
        assert_eq!(offset_of!(VcpuShared, state), 0);
        assert_eq!(offset_of!(VcpuShared, demand), 4);
        assert_eq!(offset_of!(VcpuShared, preemptions), 8);
        assert_eq!(offset_of!(VcpuShared, run_ns), 16);
        assert_eq!(offset_of!(VcpuShared, ready_ns), 24);
        assert_eq!(offset_of!(VcpuShared, costop_ns), 32);
        assert_eq!(offset_of!(VcpuShared, wait_ns), 40);
        assert_eq!(offset_of!(SharedPage, grant_vcpus), 0);
        assert_eq!(offset_of!(SharedPage, grant_seq), 4);
        assert_eq!(offset_of!(SharedPage, grant_ack), 8);
        assert_eq!(offset_of!(SharedPage, stop_requested), 12);
        assert_eq!(offset_of!(SharedPage, vcpus), 64);
        assert_eq!(SHARED_PAGE_SIZE, 2 * 4096);
        assert_eq!(SHARED_PAGE_SIZE % 4096, 0);
    }

    #[test]
    fn states_round_trip() {
        for state in [VcpuState::Offline, VcpuState::Running, VcpuState::Preempted, VcpuState::Blocked] {
            assert_eq!(VcpuState::from_u32(state as u32), Some(state));
        }
        assert_eq!(VcpuState::from_u32(4), None);
    }
}
