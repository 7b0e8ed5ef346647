//! What a simulation is told beyond the scenario: the `[sim]` table of a scenario file.
//!
//! ```toml
//! [sim]
//! scale = 32          # pCPUs and VMs times 32 (VM "a" becomes a.0 .. a.31)
//! duration_s = 60     # virtual seconds at most (default: the scenario's timeout_s)
//! seed = 1            # seeds the jitter of compute steps
//! costs = "measured"  # or "vmx"; then any of exit_us, kick_us, up_us, switch_us,
//!                     # preempt_us, timer_us, host_tick_us, boot_us
//! grain_us = 20       # how much work one simulated step of a fine-grained workload stands for
//! jitter = 0.02       # compute steps last up to this fraction more or less
//! ```

use sched::Ns;

const US: Ns = 1_000;

/// The time the monitor's mechanisms take, in virtual nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Costs {
    /// A hypercall: the VCPU leaves the guest, the monitor handles it, the VCPU re-enters.
    pub exit: Ns,
    /// From the end of a kick hypercall to the kicked VCPU being runnable for the policy: the
    /// monitor hands the wake to the policy within the kicker's exit.
    pub kick: Ns,
    /// From the end of a vcpu_up hypercall to the started VCPU being runnable: its parked
    /// thread wakes first.
    pub up: Ns,
    /// From a pCPU being given to a VCPU to that VCPU running guest code (a parked VCPU
    /// thread resumed).
    pub switch: Ns,
    /// From a policy's decision to the preempted VCPU leaving guest mode (signal plus
    /// immediate_exit); the VCPU runs on meanwhile.
    pub preempt: Ns,
    /// How late the dispatcher's timer may fire (timer slack plus wake-up): each policy tick
    /// comes up to this much after the time asked for.
    pub timer: Ns,
    /// Linux's scheduler tick, at which it notices a slice's end: under `host` each policy
    /// tick comes up to this much late (4 ms at CONFIG_HZ=250, this machine's).
    pub host_tick: Ns,
    /// The guest's initialisation on VCPU 0, before it brings up the other VCPUs and
    /// starts the workload.
    pub boot: Ns,
}

impl Costs {
    /// Measured on this project's test machines (KVM on PVM, x86-64, see the README):
    /// hypercall round trip 23.5 µs median; a kick decided in the kicker's exit (decision
    /// p50 6-8 µs); a parked VCPU thread woken in ~20 µs (11 µs p50 when its core is free)
    /// and resumed on its pCPU in 10-34 µs p50; preemption latency 46-55 µs p50; the guest's
    /// own part of a 6.6 ms boot about 1 ms.
    pub const MEASURED: Costs = Costs {
        exit: 24 * US,
        kick: 0,
        up: 20 * US,
        switch: 20 * US,
        preempt: 50 * US,
        timer: 60 * US,
        host_tick: 4_000 * US,
        boot: 1_000 * US,
    };

    /// VMX hardware, from published figures: a VM exit round trip of about 1-2 µs, an
    /// IPI-driven preemption of a few µs, a host thread woken in ~5 µs. Timers, the host's
    /// tick and the guest's boot are as measured here.
    pub const VMX: Costs = Costs { exit: 1_500, up: 5 * US, switch: 5 * US, preempt: 3 * US, ..Costs::MEASURED };

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Costs> {
        match name {
            "measured" => Some(Costs::MEASURED),
            "vmx" => Some(Costs::VMX),
            _ => None,
        }
    }
}

/// The `[sim]` table, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// pCPUs and VMs are multiplied by this.
    pub scale: u32,
    /// Virtual time limit; `None`: the scenario's timeout.
    pub duration: Option<Ns>,
    pub seed: u64,
    pub costs: Costs,
    /// Fine-grained work (lock operations, pipeline items, time-shared busy loops) is
    /// simulated in steps of about this much work.
    pub grain: Ns,
    /// Each compute step lasts its nominal time times a factor in `1 ± jitter`.
    pub jitter: f64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig { scale: 1, duration: None, seed: 1, costs: Costs::MEASURED, grain: 20 * US, jitter: 0.02 }
    }
}
