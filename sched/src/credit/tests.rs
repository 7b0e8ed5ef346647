use super::*;
use crate::harness::Lcg;
use crate::harness::{Harness, State};
use crate::{MS, VmSpec};

const SLICE: Ns = 30 * MS;
const ACCOUNTING: Ns = 10 * MS;

fn vm(vcpus: u32, weight: u32, cap: Option<u32>) -> VmSpec {
    VmSpec { vcpus, weight, cap }
}

/// VMs of one VCPU each, of equal weight.
fn singles(count: u32) -> Vec<VmSpec> {
    (0..count).map(|_| vm(1, 256, None)).collect()
}

fn harness_with(params: Params, pcpus: u32, vms: Vec<VmSpec>) -> Harness {
    let topology = Topology::new(pcpus, vms);
    Harness::new(Box::new(Credit::new(&params, &topology)), topology)
}

fn harness(pcpus: u32, vms: Vec<VmSpec>) -> Harness {
    harness_with(Params::default(), pcpus, vms)
}

fn running_on(h: &Harness, pcpu: usize) -> Option<VcpuId> {
    h.policy.assignment()[pcpu]
}

/// Runs every VCPU of `vms` for 10 s and checks each VM got its fair share within 2%.
fn assert_fair_shares(pcpus: u32, vms: Vec<VmSpec>) {
    let mut h = harness(pcpus, vms);
    h.wake_all();
    h.advance(10_000 * MS);
    for (vm, share) in h.topology.fair_shares().into_iter().enumerate() {
        let fair = share * h.now() as f64;
        let run = h.vm_run(vm) as f64;
        assert!((run - fair).abs() <= 0.02 * fair, "VM {vm} ran {run} ns, its fair share is {fair}");
    }
}

/// Panics if a pCPU idles while a runnable VCPU waits, unless `exempt` (parked) holds for it.
fn assert_work_conserving(h: &Harness, exempt: &dyn Fn(VcpuId) -> bool) {
    if h.policy.assignment().iter().all(Option::is_some) {
        return;
    }
    for v in 0..h.topology.nr_vcpus() {
        let vcpu = VcpuId(v as u32);
        let waits = h.state(vcpu) == State::Runnable && !h.running(vcpu);
        assert!(!waits || exempt(vcpu), "{vcpu} waits while a pCPU idles at {}", h.now());
    }
}

/// Advances by `duration` one tick at a time, checking work conservation after each.
fn advance_checked(h: &mut Harness, duration: Ns, exempt: &dyn Fn(VcpuId) -> bool) {
    let end = h.now() + duration;
    while h.now() < end {
        let until = h.policy.next_tick().map_or(end, |tick| tick.clamp(h.now(), end));
        h.advance(until - h.now());
        assert_work_conserving(h, exempt);
    }
}

/// Random-ish blocks, wakes, yields and downs for `steps` steps of up to 20 ms each,
/// checking work conservation after every event and tick.
fn random_run(h: &mut Harness, seed: u64, steps: usize, exempt: &dyn Fn(VcpuId) -> bool) {
    let mut rng = Lcg(seed);
    let vcpus = h.topology.nr_vcpus() as u64;
    h.wake_all();
    for _ in 0..steps {
        let vcpu = VcpuId(rng.below(vcpus) as u32);
        match (h.state(vcpu), rng.below(8)) {
            (State::Runnable, 0) => h.down(vcpu),
            (State::Runnable, 1 | 2) if h.running(vcpu) => h.block(vcpu),
            (State::Runnable, 3) if h.running(vcpu) => h.yield_to(vcpu, None),
            (State::Runnable, _) => {}
            (State::Blocked | State::Offline, _) => h.wake(vcpu),
        }
        assert_work_conserving(h, exempt);
        advance_checked(h, rng.below(20 * MS), exempt);
    }
}

#[test]
fn equal_weights_get_equal_shares() {
    assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 256, None)]);
}

#[test]
fn double_weight_gets_double_share() {
    assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 512, None)]);
}

#[test]
fn three_vms_share_two_pcpus_by_weight() {
    assert_fair_shares(2, vec![vm(2, 256, None), vm(2, 256, None), vm(2, 512, None)]);
}

#[test]
fn shares_are_per_vm_whatever_the_vcpu_counts() {
    assert_fair_shares(2, vec![vm(4, 256, None), vm(2, 256, None)]);
}

#[test]
fn what_a_narrow_vm_cannot_use_goes_to_the_others() {
    // Weight would give the 1-VCPU VM 1.2 pCPUs: it gets 1, the others 0.5 each.
    assert_fair_shares(2, vec![vm(1, 768, None), vm(2, 256, None), vm(2, 256, None)]);
}

#[test]
fn a_capped_vm_gets_its_cap_and_no_more_on_idle_pcpus() {
    for (cap, vcpus) in [(50, 2), (150, 2), (30, 1)] {
        let mut h = harness(2, vec![vm(vcpus, 256, Some(cap))]);
        h.wake_all();
        h.advance(10_000 * MS);
        let allowed = u64::from(cap) * h.now() / 100;
        let run = h.vm_run(0);
        assert!(run <= allowed + ACCOUNTING && run + ACCOUNTING >= allowed, "cap {cap}%: ran {run} ns");
    }
}

#[test]
fn uncapped_vms_take_what_a_capped_vm_leaves() {
    let mut h = harness(2, vec![vm(2, 256, Some(50)), vm(2, 256, None)]);
    h.wake_all();
    h.advance(10_000 * MS);
    assert!(h.vm_run(0) <= h.now() / 2 + ACCOUNTING, "the capped VM ran {} ns", h.vm_run(0));
    assert_eq!(h.vm_run(0) + h.vm_run(1), 2 * h.now(), "a pCPU idled");
}

#[test]
fn a_capped_vm_is_parked_from_reaching_its_cap_to_the_next_accounting_step() {
    let mut h = harness(1, vec![vm(1, 256, Some(30))]);
    let v = VcpuId(0);
    h.wake(v);
    h.advance(3 * MS - 1);
    assert!(h.running(v));
    h.advance(1);
    assert!(!h.running(v), "30% of a 10 ms period is 3 ms");
    h.advance(ACCOUNTING - 3 * MS - 1);
    assert!(!h.running(v));
    h.advance(1);
    assert!(h.running(v));
}

#[test]
fn an_unparked_vm_preempts_over_vcpus_at_once() {
    // v0 (capped at 50%) waits for v1's first slice and earns 15 ms of credit. It runs
    // from 30 ms and is parked at 35 ms, still UNDER; v1 runs, OVER. At the accounting
    // step (40 ms) v0 takes the pCPU back at once rather than at v1's slice end.
    let mut h = harness(1, vec![vm(1, 256, Some(50)), vm(1, 256, None)]);
    let [v0, v1] = [0, 1].map(VcpuId);
    h.wake(v1);
    h.wake(v0);
    h.advance(SLICE + 5 * MS - 1);
    assert!(h.running(v0));
    h.advance(1);
    assert!(h.running(v1));
    h.advance(ACCOUNTING / 2);
    assert!(h.running(v0));
}

/// One pCPU: v1 runs 1 ms and blocks, v0 runs from then. At the accounting step (10 ms)
/// both get 5 ms of credit: v0 (ran 9 ms) is OVER, the blocked v1 (ran 1 ms) UNDER.
fn over_vcpu_running_and_under_vcpu_blocked() -> Harness {
    let mut h = harness(1, singles(2));
    h.wake(VcpuId(1));
    h.advance(MS);
    h.block(VcpuId(1));
    h.wake(VcpuId(0));
    h.advance(ACCOUNTING);
    h
}

#[test]
fn a_vcpu_waking_under_preempts_an_over_vcpu() {
    let mut h = over_vcpu_running_and_under_vcpu_blocked();
    h.wake(VcpuId(1));
    assert!(h.running(VcpuId(1)));
}

#[test]
fn a_vcpu_waking_over_waits_for_its_turn() {
    // v0 runs 5 ms and blocks, OVER (no credit handed out yet); v1 (OVER too) runs.
    let mut h = harness(1, singles(2));
    h.wake_all();
    h.advance(5 * MS);
    h.block(VcpuId(0));
    h.advance(MS);
    h.wake(VcpuId(0));
    assert!(h.running(VcpuId(1)) && !h.running(VcpuId(0)));
}

/// One pCPU, VMs of one VCPU: w runs 1 ms and `leave`s (blocks or goes down); x runs
/// from 1 ms to its slice end at 31 ms, burning credit while y and z wait and earn it: at
/// 31 ms x is OVER, y and z UNDER, y runs. w ran in the first period, so it got a quarter
/// of it: it is UNDER (1.5 ms) too. Returns at 32 ms, w away, y running.
fn under_vcpu_running_and_under_vcpu_away(leave: fn(&mut Harness, VcpuId)) -> Harness {
    let mut h = harness(1, singles(4));
    let [w, x, y, z] = [0, 1, 2, 3].map(VcpuId);
    h.wake(w);
    h.advance(MS);
    leave(&mut h, w);
    for v in [x, y, z] {
        h.wake(v);
    }
    assert!(h.running(x));
    h.advance(SLICE + MS);
    assert!(h.running(y));
    h
}

#[test]
fn a_vcpu_waking_under_from_a_block_is_boosted_past_an_under_vcpu() {
    let mut h = under_vcpu_running_and_under_vcpu_away(Harness::block);
    h.wake(VcpuId(0));
    assert!(h.running(VcpuId(0)));
}

#[test]
fn a_vcpu_coming_online_is_not_boosted() {
    let mut h = under_vcpu_running_and_under_vcpu_away(Harness::down);
    h.wake(VcpuId(0));
    assert!(h.running(VcpuId(2)) && !h.running(VcpuId(0)));
}

#[test]
fn a_boost_lasts_at_most_one_accounting_period() {
    let mut h = under_vcpu_running_and_under_vcpu_away(Harness::block);
    let w = VcpuId(0);
    h.wake(w);
    h.advance(ACCOUNTING - 1);
    assert!(h.running(w));
    h.advance(1);
    // w lost its boost (and went OVER): z, UNDER and first in line, runs.
    assert!(h.running(VcpuId(3)));
}

#[test]
fn a_yield_goes_behind_one_lower_priority_vcpu() {
    // One pCPU, four equal VCPUs woken at once: v0 runs 30 ms, then v1 30 ms. At 60 ms
    // v0 and v1 are OVER and queued in that order, v2 and v3 UNDER; v2 runs.
    let mut h = harness(1, singles(4));
    h.wake_all();
    h.advance(2 * SLICE);
    assert!(h.running(VcpuId(2)));
    // v2 yields: it goes behind v3 (its priority) and v0 (the first OVER), before v1.
    h.yield_to(VcpuId(2), Some(VcpuId(1)));
    let mut order = Vec::new();
    for _ in 0..4 {
        let vcpu = h.running_vcpus()[0];
        order.push(vcpu.0);
        h.block(vcpu);
    }
    assert_eq!(order, [3, 0, 2, 1]);
}

#[test]
fn a_yield_with_nobody_waiting_keeps_the_vcpu_running() {
    let mut h = harness(2, singles(2));
    h.wake_all();
    h.yield_to(VcpuId(1), None);
    assert!(h.running(VcpuId(1)));
}

#[test]
fn equal_vcpus_on_one_pcpu_take_turns_every_slice() {
    for params in [Params::default(), Params { slice: 20 * MS, accounting: 5 * MS, ..Params::default() }] {
        let mut h = harness_with(params, 1, singles(3));
        h.wake_all();
        let mut previous = h.running_vcpus();
        let mut changes = Vec::new();
        while h.now() < 1_000 * MS {
            h.advance(MS);
            if h.running_vcpus() != previous {
                changes.push(h.now());
                previous = h.running_vcpus();
            }
        }
        let every_slice: Vec<Ns> = (1..=1_000 * MS / params.slice).map(|n| n * params.slice).collect();
        assert_eq!(changes, every_slice);
    }
}

#[test]
fn an_idle_pcpu_takes_a_waking_vcpu_at_once() {
    let mut h = harness(2, singles(2));
    h.wake(VcpuId(0));
    h.advance(5 * MS);
    h.wake(VcpuId(1));
    assert_eq!(h.running_vcpus().len(), 2);
}

#[test]
fn a_vcpu_wakes_on_the_pcpu_it_last_ran_on() {
    let mut h = harness(2, singles(2));
    h.wake_all();
    assert_eq!(h.pcpu_of(VcpuId(1)), Some(1), "a first start goes to the least loaded pCPU");
    h.block(VcpuId(0));
    h.block(VcpuId(1));
    h.wake(VcpuId(1));
    assert_eq!(h.pcpu_of(VcpuId(1)), Some(1));
}

/// Two pCPUs: c runs 1 ms on pCPU 0 and blocks; b takes pCPU 0, a runs on pCPU 1. c wakes
/// at 2 ms, OVER like b, and waits in pCPU 0's queue.
fn vcpu_waiting_on_pcpu_0() -> Harness {
    let mut h = harness(2, singles(3));
    let [a, b, c] = [0, 1, 2].map(VcpuId);
    h.wake(c);
    h.wake(a);
    h.advance(MS);
    h.block(c);
    h.wake(b);
    h.advance(MS);
    h.wake(c);
    assert_eq!((running_on(&h, 0), running_on(&h, 1)), (Some(b), Some(a)));
    h
}

#[test]
fn an_idle_pcpu_steals_even_an_over_vcpu() {
    let mut h = vcpu_waiting_on_pcpu_0();
    h.block(VcpuId(0));
    assert_eq!(running_on(&h, 1), Some(VcpuId(2)));
}

#[test]
fn a_pcpu_left_with_over_vcpus_steals_an_under_vcpu() {
    // c earns credit while it waits: UNDER. At a's slice end (30 ms) pCPU 1 has only a,
    // OVER, to run: it takes c from pCPU 0's queue, where b still runs.
    let mut h = vcpu_waiting_on_pcpu_0();
    h.advance(SLICE - 2 * MS - 1);
    assert!(!h.running(VcpuId(2)));
    h.advance(1);
    assert_eq!((running_on(&h, 0), running_on(&h, 1)), (Some(VcpuId(1)), Some(VcpuId(2))));
}

#[test]
fn a_vcpu_going_down_leaves_its_pcpu_and_its_queue() {
    let mut h = harness(1, singles(3));
    h.wake_all();
    h.down(VcpuId(1));
    h.down(VcpuId(0));
    assert_eq!(h.running_vcpus(), [VcpuId(2)]);
    h.down(VcpuId(2));
    h.advance(SLICE);
    assert_eq!(h.running_vcpus(), []);
}

#[test]
fn no_tick_is_needed_while_nothing_is_runnable() {
    let mut h = harness(2, singles(2));
    assert_eq!(h.policy.next_tick(), None);
    h.wake(VcpuId(0));
    assert_eq!(h.policy.next_tick(), Some(ACCOUNTING));
    h.advance(MS);
    h.block(VcpuId(0));
    assert_eq!(h.policy.next_tick(), None);
    let ticks = h.ticks();
    h.advance(1_000 * MS);
    assert_eq!(h.ticks(), ticks);
}

#[test]
fn a_mostly_blocked_vcpu_cannot_hoard_credit() {
    // For 1 s v0 runs 1 ms of every 10 ms period against an always runnable v1: it earns
    // 5 ms and burns 1. Then it stays runnable: with credit bounded by a slice it leads
    // v1 by two slices of credit at most, so v1 waits about that long, not seconds.
    let mut h = harness(1, singles(2));
    let [v0, v1] = [0, 1].map(VcpuId);
    h.wake(v0);
    h.wake(v1);
    for _ in 0..100 {
        h.advance(MS);
        h.block(v0);
        h.advance(ACCOUNTING - MS);
        h.wake(v0);
        assert!(h.running(v0), "v0 wakes UNDER, boosted");
    }
    h.advance(1_000 * MS);
    assert!(h.times(v1).longest_wait <= 3 * SLICE, "v1 waited {} ns", h.times(v1).longest_wait);
}

/// The wait bound: a VCPU entitled to a quarter of a pCPU (the narrowest here) that
/// overdrew by a slice needs four slices to earn it back, then may queue behind UNDER
/// VCPUs; six slices cover that.
#[test]
fn random_runs_keep_pcpus_busy_and_starve_no_one() {
    let topologies = [
        (2, vec![vm(2, 256, None), vm(2, 256, None), vm(1, 256, None)]),
        (2, vec![vm(2, 256, None), vm(2, 512, None), vm(1, 256, None)]),
        (3, vec![vm(4, 256, None), vm(2, 256, None), vm(3, 256, None)]),
    ];
    for (seed, (pcpus, vms)) in topologies.into_iter().enumerate() {
        let mut h = harness(pcpus, vms);
        random_run(&mut h, seed as u64, 2_000, &|_| false);
        for v in 0..h.topology.nr_vcpus() {
            let wait = h.times(VcpuId(v as u32)).longest_wait;
            assert!(wait <= 6 * SLICE, "topology {seed}: v{v} waited {wait} ns");
        }
    }
}

/// Many VMs on many pCPUs, with yields: every steal reads the queue heads and, in tests,
/// checks the result against a scan of every queued VCPU (see `best_elsewhere`).
#[test]
fn stealing_from_the_queue_heads_finds_what_a_full_scan_finds() {
    let vms = (0..24).map(|n| vm(1 + n % 4, 256 * (1 + n % 3), None)).collect();
    let mut h = harness(8, vms);
    random_run(&mut h, 11, 5_000, &|_| false);
}

#[test]
fn random_runs_with_a_capped_vm_keep_its_cap_and_the_other_pcpus_busy() {
    let mut h = harness(2, vec![vm(2, 256, Some(50)), vm(2, 256, None), vm(1, 256, None)]);
    let capped = |vcpu: VcpuId| vcpu.0 < 2;
    random_run(&mut h, 7, 2_000, &capped);
    assert!(h.vm_run(0) <= h.now() / 2 + ACCOUNTING, "the capped VM ran {} ns of {}", h.vm_run(0), h.now());
}
