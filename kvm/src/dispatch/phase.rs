//! A VCPU's phase: the one state of a VCPU, which the dispatcher owns, and what the guest
//! sees of it in the shared page.

use pv_abi::shared::VcpuState;
use tandem_core::live;

use crate::x86::Start;

/// Where a VCPU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Offline,
    /// A `vcpu_up` was accepted; its thread is on its way (to the policy, still offline).
    Starting(Start),
    /// In a block, until kicked or its deadline.
    Blocked,
    /// Runnable, waiting at the gate for a pCPU.
    Waiting,
    /// Granted this pCPU; its thread is on its way through the gate.
    Granted(usize),
    /// Its thread is past the gate, in and out of KVM_RUN on this pCPU, or, without gating,
    /// wherever Linux places it.
    Running(Option<usize>),
}

impl Phase {
    /// Online as far as the policy knows.
    pub fn online(self) -> bool {
        !matches!(self, Phase::Offline | Phase::Starting(_))
    }

    /// The pCPU it holds.
    pub fn pcpu(self) -> Option<usize> {
        match self {
            Phase::Granted(pcpu) | Phase::Running(Some(pcpu)) => Some(pcpu),
            _ => None,
        }
    }

    /// The state the live view shows, `costopped` if the dispatcher holds it back for its
    /// siblings.
    pub fn live(self, costopped: bool) -> live::VcpuState {
        match self {
            Phase::Offline | Phase::Starting(_) => live::VcpuState::Off,
            Phase::Blocked => live::VcpuState::Wait,
            Phase::Waiting | Phase::Granted(_) if costopped => live::VcpuState::Cstp,
            Phase::Waiting | Phase::Granted(_) => live::VcpuState::Rdy,
            Phase::Running(_) => live::VcpuState::Run,
        }
    }

    /// The state the guest sees.
    pub fn shown(self) -> VcpuState {
        match self {
            Phase::Offline | Phase::Starting(_) => VcpuState::Offline,
            Phase::Blocked => VcpuState::Blocked,
            Phase::Waiting | Phase::Granted(_) => VcpuState::Preempted,
            Phase::Running(_) => VcpuState::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_sees_a_vcpu_preempted_from_its_wake_until_its_thread_is_past_the_gate() {
        let start = Start { entry: 0x20_0000, stack_top: 0x30_0000, arg: 0 };
        let phases = [
            (Phase::Offline, VcpuState::Offline, false),
            (Phase::Starting(start), VcpuState::Offline, false),
            (Phase::Waiting, VcpuState::Preempted, true),
            (Phase::Granted(1), VcpuState::Preempted, true),
            (Phase::Running(Some(1)), VcpuState::Running, true),
            (Phase::Running(None), VcpuState::Running, true),
            (Phase::Blocked, VcpuState::Blocked, true),
        ];
        for (phase, shown, online) in phases {
            assert_eq!((phase.shown(), phase.online()), (shown, online), "{phase:?}");
        }
        assert_eq!(Phase::Granted(1).pcpu(), Some(1));
        assert_eq!(Phase::Running(None).pcpu(), None);
    }
}
