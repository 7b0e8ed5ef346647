use super::*;
use crate::harness::Lcg;
use crate::harness::{Harness, State};
use crate::{MS, VmSpec};

const SLICE: Ns = 30 * MS;

/// A harness over `pcpus` pCPUs and VMs of (VCPUs, weight).
fn harness(pcpus: u32, vms: &[(u32, u32)]) -> Harness {
    let vms = vms.iter().map(|&(vcpus, weight)| VmSpec { vcpus, weight, cap: None }).collect();
    let topology = Topology::new(pcpus, vms);
    let params = Params { slice: SLICE, ..Params::default() };
    Harness::new(Box::new(Strict::new(&params, &topology)), topology).allow_reserved()
}

fn online(h: &Harness, vm: usize) -> Vec<VcpuId> {
    h.topology.vcpus_of(vm).filter(|&v| h.state(v) != State::Offline).collect()
}

fn free_pcpus(h: &Harness) -> usize {
    h.policy.assignment().iter().filter(|slot| slot.is_none()).count()
}

/// Panics unless every VM has all its online VCPUs on pCPUs or none, a gang on pCPUs has a
/// runnable member, no waiting gang that fits the machine fits in the idle pCPUs, and a tick
/// is pending, in the future, exactly while something runs.
fn check(h: &Harness) {
    let (pcpus, free) = (h.topology.pcpus as usize, free_pcpus(h));
    for vm in 0..h.topology.vms.len() {
        let online = online(h, vm);
        let placed = online.iter().filter(|&&v| h.pcpu_of(v).is_some()).count();
        let runnable = online.iter().any(|&v| h.state(v) == State::Runnable);
        let now = h.now();
        assert!(
            placed == 0 || placed == online.len(),
            "vm {vm} has {placed} of {} VCPUs on pCPUs at {now}",
            online.len()
        );
        if placed > 0 {
            assert!(runnable, "vm {vm} holds pCPUs with no runnable VCPU at {now}");
        } else if runnable && online.len() <= pcpus {
            assert!(online.len() > free, "vm {vm} ({} wide) waits while {free} pCPUs idle at {now}", online.len());
        }
    }
    match h.policy.next_tick() {
        Some(tick) => assert!(free < pcpus && tick > h.now(), "tick at {tick} at {} with {free} idle", h.now()),
        None => assert_eq!(free, pcpus, "something runs without a tick at {}", h.now()),
    }
}

/// Advances `duration`, stopping at every tick to check.
fn advance_checked(h: &mut Harness, duration: Ns) {
    let end = h.now() + duration;
    while h.now() < end {
        let until = h.policy.next_tick().map_or(end, |tick| tick.min(end));
        h.advance(until - h.now());
        check(h);
    }
}

#[test]
fn gangs_run_whole_or_not_at_all_under_random_blocks_wakes_and_downs() {
    // The last topology has a 3-VCPU VM on 2 pCPUs: it fits only while a VCPU is offline.
    let topologies: [(u32, &[(u32, u32)]); 3] = [
        (3, &[(2, 256), (2, 256), (1, 256)]),
        (4, &[(4, 256), (2, 512), (1, 128), (3, 256)]),
        (2, &[(2, 256), (1, 100), (3, 256)]),
    ];
    for (pcpus, vms) in topologies {
        for seed in 1..=4 {
            let mut h = harness(pcpus, vms);
            let mut rng = Lcg(seed);
            let nr_vcpus = h.topology.nr_vcpus() as u64;
            for _ in 0..3000 {
                let vcpu = VcpuId(rng.below(nr_vcpus) as u32);
                match h.state(vcpu) {
                    State::Offline | State::Blocked => h.wake(vcpu),
                    State::Runnable if h.running(vcpu) => match rng.below(10) {
                        0 => h.down(vcpu),
                        1 => h.yield_to(vcpu, None),
                        _ => h.block(vcpu),
                    },
                    State::Runnable if rng.below(4) == 0 => h.down(vcpu),
                    State::Runnable => {}
                }
                check(&h);
                advance_checked(&mut h, rng.below(2 * SLICE));
            }
            for vm in 0..vms.len() {
                assert!(h.vm_run(vm) > 0, "vm {vm} never ran in {pcpus} pCPUs {vms:?} seed {seed}");
            }
        }
    }
}

/// Each VM's run time over `duration` with every VCPU always runnable, against its fair share.
fn assert_fair(pcpus: u32, vms: &[(u32, u32)], duration: Ns) {
    let mut h = harness(pcpus, vms);
    h.wake_all();
    advance_checked(&mut h, duration);
    for (vm, share) in h.topology.fair_shares().into_iter().enumerate() {
        let (run, fair) = (h.vm_run(vm) as f64, share * duration as f64);
        assert!((run - fair).abs() < 0.02 * fair, "{pcpus} pCPUs {vms:?}: vm {vm} ran {run} ns, fair is {fair}");
    }
}

#[test]
fn gangs_of_equal_weight_split_the_pcpus_evenly() {
    assert_fair(2, &[(2, 256), (2, 256)], 10_000 * MS);
}

#[test]
fn gangs_share_the_pcpus_in_proportion_to_weight() {
    assert_fair(2, &[(2, 1), (2, 2)], 10_000 * MS);
    assert_fair(4, &[(2, 100), (2, 300)], 10_000 * MS);
}

#[test]
fn a_narrow_gang_backfills_the_pcpu_the_wide_ones_leave() {
    // Two 2-wide gangs cannot run together on 3 pCPUs: the 1-wide one takes the third
    // pCPU beside either, all the time, and each VM gets its fair pCPU.
    assert_fair(3, &[(2, 256), (2, 256), (1, 256)], 10_000 * MS);
    let mut h = harness(3, &[(2, 256), (2, 256), (1, 256)]);
    h.wake_all();
    advance_checked(&mut h, 1000 * MS);
    assert_eq!(h.times(VcpuId(4)).run, 1000 * MS);
}

#[test]
fn a_wide_gang_is_not_starved_by_a_narrow_one() {
    let mut h = harness(4, &[(4, 256), (2, 256)]);
    h.wake_all();
    advance_checked(&mut h, 10_000 * MS);
    // Equal weights hold the pCPUs equally long: the 4-wide gang runs a third of the time.
    let (wide, narrow) = (h.vm_run(0) as f64, h.vm_run(1) as f64);
    assert!((wide - narrow).abs() < 0.02 * narrow, "wide ran {wide} ns, narrow {narrow} ns");
    for v in 0..6 {
        let wait = h.times(VcpuId(v)).longest_wait;
        assert!(wait <= 2 * SLICE, "v{v} waited {wait} ns");
    }
}

#[test]
fn a_wide_gang_gets_its_turn_among_narrow_gangs_that_could_fill_the_gaps() {
    // Three 1-wide gangs could keep 3 of the 4 pCPUs busy for ever; the 4-wide one still
    // runs when it is the most behind, a fifth of the time, and all hold the pCPUs equally.
    let mut h = harness(4, &[(4, 256), (1, 256), (1, 256), (1, 256)]);
    h.wake_all();
    advance_checked(&mut h, 10_000 * MS);
    let fair = 0.8 * 10_000.0 * MS as f64;
    for vm in 0..4 {
        let run = h.vm_run(vm) as f64;
        assert!((run - fair).abs() < 0.02 * fair, "vm {vm} ran {run} ns, fair is {fair}");
    }
    let wait = h.times(VcpuId(0)).longest_wait;
    assert!(wait <= 4 * SLICE, "the wide gang waited {wait} ns");
}

#[test]
fn a_vm_wider_than_the_machine_never_runs_and_does_not_hold_up_others() {
    let mut h = harness(2, &[(3, 256), (1, 256), (1, 256)]);
    h.wake_all();
    advance_checked(&mut h, 1000 * MS);
    assert_eq!(h.vm_run(0), 0);
    assert_eq!((h.vm_run(1), h.vm_run(2)), (1000 * MS, 1000 * MS));
    // With a VCPU offline it fits, and gets its turn.
    h.down(VcpuId(2));
    advance_checked(&mut h, 1000 * MS);
    assert!(h.vm_run(0) > 0);
    assert_eq!(h.times(VcpuId(0)).run, h.times(VcpuId(1)).run);
}

#[test]
fn a_blocked_member_keeps_its_pcpu_reserved_and_idle() {
    let mut h = harness(2, &[(2, 256), (2, 256)]);
    h.wake_all();
    let (a, b) = (VcpuId(0), VcpuId(1));
    assert!(h.running(a) && h.running(b));
    let pcpu = h.pcpu_of(b);
    h.block(b);
    check(&h);
    advance_checked(&mut h, 10 * MS);
    assert_eq!(h.pcpu_of(b), pcpu, "the blocked member's pCPU is held for it");
    assert_eq!(h.times(b).reserved_idle, 10 * MS);
    assert_eq!(h.times(a).run, 10 * MS);
    // It runs there the moment it wakes.
    h.wake(b);
    assert!(h.running(b) && h.pcpu_of(b) == pcpu);
}

#[test]
fn a_gang_is_charged_for_its_reserved_pcpus() {
    // VM 0 runs one VCPU on two pCPUs: charged for both, it gets as many slices as the
    // other VM, so half its run time, and the reserved pCPU idles as long as the other runs.
    let mut h = harness(2, &[(2, 256), (2, 256)]);
    h.wake_all();
    h.block(VcpuId(1));
    advance_checked(&mut h, 10_000 * MS);
    let (a, reserved) = (h.times(VcpuId(0)).run, h.times(VcpuId(1)).reserved_idle);
    assert_eq!(a, reserved);
    let other = h.vm_run(1) as f64;
    assert!((2.0 * a as f64 - other).abs() < 0.02 * other, "vm 0 ran {a} ns, vm 1 {other} ns");
}

#[test]
fn a_gang_whose_members_all_block_frees_its_pcpus_at_once() {
    let mut h = harness(2, &[(2, 256), (2, 256)]);
    h.wake_all();
    advance_checked(&mut h, 5 * MS);
    h.block(VcpuId(0));
    assert!(!h.running(VcpuId(2)), "one member still runs: the gang keeps its pCPUs");
    h.block(VcpuId(1));
    assert!(h.running(VcpuId(2)) && h.running(VcpuId(3)));
    assert_eq!(h.pcpu_of(VcpuId(0)), None);
    assert_eq!(h.pcpu_of(VcpuId(1)), None);
}

#[test]
fn a_sleeping_vm_banks_at_most_a_slice_of_credit() {
    let mut h = harness(2, &[(2, 256), (2, 256)]);
    h.wake_all();
    h.block(VcpuId(0));
    h.block(VcpuId(1));
    advance_checked(&mut h, 10_000 * MS);
    let before = [h.vm_run(0), h.vm_run(1)];
    h.wake(VcpuId(0));
    h.wake(VcpuId(1));
    advance_checked(&mut h, 300 * MS);
    let (woken, other) = (h.vm_run(0) - before[0], h.vm_run(1) - before[1]);
    // Without the catch-up, VM 0 would run the whole 300 ms on both pCPUs.
    assert!(woken <= other + 2 * 2 * SLICE, "the woken VM ran {woken} ns, the other {other} ns");
    assert!(other >= 2 * 100 * MS, "the other VM ran {other} ns");
}

#[test]
fn a_vcpu_coming_online_joins_its_running_gang_on_a_free_pcpu() {
    let mut h = harness(3, &[(2, 256), (1, 256)]);
    h.wake(VcpuId(0));
    h.wake(VcpuId(2));
    h.wake(VcpuId(1));
    assert!(h.running(VcpuId(0)) && h.running(VcpuId(1)) && h.running(VcpuId(2)));
}

#[test]
fn a_vcpu_coming_online_without_a_free_pcpu_deschedules_its_gang_until_it_fits() {
    let mut h = harness(2, &[(2, 256), (1, 256)]);
    h.wake(VcpuId(0));
    h.wake(VcpuId(2));
    assert!(h.running(VcpuId(0)) && h.running(VcpuId(2)));
    h.wake(VcpuId(1));
    check(&h);
    assert!(h.running(VcpuId(2)));
    assert_eq!(h.pcpu_of(VcpuId(0)), None);
    advance_checked(&mut h, SLICE);
    assert!(h.running(VcpuId(0)) && h.running(VcpuId(1)));
    assert!(!h.running(VcpuId(2)));
}

#[test]
fn ticks_come_at_slice_boundaries_while_something_runs() {
    let mut h = harness(2, &[(1, 256), (1, 256), (1, 256)]);
    assert_eq!(h.policy.next_tick(), None);
    h.advance(7 * MS);
    h.wake(VcpuId(0));
    assert_eq!(h.policy.next_tick(), Some(7 * MS + SLICE));
    h.advance(3 * MS);
    // A gang joining mid-slice does not move the boundary.
    h.wake(VcpuId(1));
    assert_eq!(h.policy.next_tick(), Some(7 * MS + SLICE));
    h.wake(VcpuId(2));
    h.advance(SLICE);
    assert_eq!(h.ticks(), 1);
    assert_eq!(h.policy.next_tick(), Some(7 * MS + 2 * SLICE));
    // The VM that waited is most behind: it runs from the boundary on.
    assert!(h.running(VcpuId(2)));
    for v in 0..3 {
        if h.running(VcpuId(v)) {
            h.block(VcpuId(v));
        }
    }
    let runnable = (0..3).find(|&v| h.state(VcpuId(v)) == State::Runnable).map(VcpuId).unwrap();
    assert!(h.running(runnable));
    h.block(runnable);
    assert_eq!(h.policy.next_tick(), None);
}

#[test]
fn a_yield_leaves_the_gang_running() {
    let mut h = harness(2, &[(2, 256), (2, 256)]);
    h.wake_all();
    let before = h.policy.assignment().to_vec();
    h.advance(MS);
    h.yield_to(VcpuId(0), Some(VcpuId(1)));
    h.yield_to(VcpuId(1), None);
    assert_eq!(h.policy.assignment(), before);
}
