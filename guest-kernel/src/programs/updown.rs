//! `updown [rounds=N]`: starts every other VCPU, lets it go down, and starts it again, N times;
//! checks that each start ran exactly once and that the shared page shows every VCPU offline
//! after it went down.

use core::sync::atomic::{AtomicU32, Ordering};

use tandem_rt::pv_abi::shared::VcpuState;
use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{boot, clock, hypercall, println, smp};

static STARTS: AtomicU32 = AtomicU32::new(0);

/// How long one round may take before the program gives up.
const ROUND_NS: u64 = 5_000_000_000;

fn count_and_leave(_vcpu: u32) {
    STARTS.fetch_add(1, Ordering::AcqRel);
    let _ = hypercall::kick(0);
}

fn state(vcpu: u32) -> Option<VcpuState> {
    VcpuState::from_u32(boot::shared_page().vcpus[vcpu as usize].state.load(Ordering::Acquire))
}

pub const PARAMS: &[ParamSpec] = &[ParamSpec::int("rounds", "100", "times every other VCPU goes down and up")];

pub fn run(params: &Params) -> Result<i64, ParamError> {
    let rounds = params.u64_in("rounds", 0..=u64::from(u32::MAX / 64), "too many rounds")? as u32;
    let others = boot::nr_vcpus() - 1;
    for round in 0..rounds {
        let deadline = clock::deadline_after_ns(ROUND_NS);
        for vcpu in 1..=others {
            // The previous start went down (its kick arrived), but its thread may not be
            // parked yet: a start now may be refused as BadState, so retry until it is.
            while smp::start(vcpu, count_and_leave).is_err() {
                if clock::tsc() > deadline {
                    println!("round {round}: VCPU {vcpu} never went offline");
                    return Ok(1);
                }
                let _ = hypercall::yield_to(Some(vcpu));
            }
        }
        let expected = (round + 1) * others;
        while STARTS.load(Ordering::Acquire) < expected {
            if !hypercall::block(deadline) && clock::tsc() >= deadline {
                println!("round {round}: {} of {expected} starts ran", STARTS.load(Ordering::Acquire));
                return Ok(1);
            }
        }
        for vcpu in 1..=others {
            while state(vcpu) != Some(VcpuState::Offline) {
                if clock::tsc() > deadline {
                    println!("round {round}: VCPU {vcpu} is {:?}, not offline", state(vcpu));
                    return Ok(1);
                }
                let _ = hypercall::yield_to(Some(vcpu));
            }
        }
    }
    let starts = STARTS.load(Ordering::Acquire);
    if starts != rounds * others {
        println!("{starts} starts ran, expected {}", rounds * others);
        return Ok(1);
    }
    println!("{rounds} rounds: {others} VCPU(s) started and stopped {starts} times in all, each start ran once");
    Ok(0)
}
