use super::*;
use crate::MS;
use crate::harness::{Harness, Lcg, State};

const RAISE: Ns = 10 * MS;
const LOWER: Ns = 50 * MS;

type Vms<'a> = &'a [(u32, u32, Option<u32>)];

fn topology(pcpus: u32, vms: Vms) -> Topology {
    Topology::new(pcpus, vms.iter().map(|&(vcpus, weight, cap)| VmSpec { vcpus, weight, cap }).collect())
}

/// The delays spelt out, so that the tests do not move with the defaults.
fn params() -> Params {
    Params { raise_after: RAISE, lower_after: LOWER, ..Params::default() }
}

fn harness(pcpus: u32, vms: Vms) -> Harness {
    let topology = topology(pcpus, vms);
    Harness::new(Box::new(Dynamic::new(&params(), &topology)), topology)
}

fn grants(h: &Harness) -> Vec<u32> {
    (0..h.topology.vms.len()).map(|vm| h.policy.grant(vm).expect("dynamic grants")).collect()
}

/// Does what the guests do: the VCPUs beyond each grant go down, the others come up.
fn follow_grants(h: &mut Harness) {
    for (vm, grant) in grants(h).into_iter().enumerate() {
        for (index, vcpu) in h.topology.vcpus_of(vm).enumerate() {
            match h.state(vcpu) {
                State::Offline if (index as u32) < grant => h.wake(vcpu),
                State::Runnable | State::Blocked if index as u32 >= grant => h.down(vcpu),
                _ => {}
            }
        }
    }
}

#[test]
fn fractional_shares_leave_no_pcpu_idle() {
    // 2.67 pCPUs each: 2 each, and the 2 pCPUs left to the first two (largest remainder,
    // ties by VM).
    assert_eq!(targets(&topology(8, &[(4, 256, None); 3]), &[Some(4); 3]), [3, 3, 2]);
    // The larger fraction first: 5.33 and 2.67 pCPUs.
    assert_eq!(targets(&topology(8, &[(8, 512, None), (8, 256, None)]), &[Some(8); 2]), [5, 3]);
    // A VM asking for no more than its rounded-down share takes nothing more.
    assert_eq!(targets(&topology(8, &[(4, 256, None); 3]), &[Some(2), Some(4), Some(4)]), [2, 3, 3]);
    // A capped VM keeps its cap's rounding; its pCPUs stay with the others.
    assert_eq!(targets(&topology(8, &[(4, 256, Some(250))]), &[None]), [2]);
}

#[test]
fn targets_share_the_pcpus_by_demand_weight_and_cap_rounding_down() {
    let two_by_two = topology(2, &[(2, 256, None), (2, 256, None)]);
    assert_eq!(targets(&two_by_two, &[Some(2), Some(2)]), [1, 1]);
    assert_eq!(targets(&two_by_two, &[None, None]), [1, 1]);
    // An idle VM keeps one VCPU; the busy one gets both pCPUs (a demand beyond the VCPU
    // count asks for them all).
    assert_eq!(targets(&two_by_two, &[Some(0), Some(5)]), [1, 2]);
    assert_eq!(targets(&two_by_two, &[None, Some(0)]), [2, 1]);
    assert_eq!(targets(&topology(4, &[(4, 1, None), (4, 3, None)]), &[Some(4), Some(4)]), [1, 3]);
    // What a VM does not ask for goes to the others by weight.
    assert_eq!(targets(&topology(4, &[(4, 1, None), (4, 3, None)]), &[Some(4), Some(1)]), [3, 1]);
    // A cap of one pCPU holds a VM to one VCPU however many pCPUs are free.
    assert_eq!(targets(&topology(4, &[(4, 256, Some(100)), (2, 256, None)]), &[Some(4), Some(2)]), [1, 2]);
    assert_eq!(targets(&topology(8, &[(4, 256, Some(250))]), &[None]), [2]);
    assert_eq!(targets(&topology(8, &[(4, 256, None)]), &[Some(3)]), [3]);
    // 3 VMs on 2 pCPUs: 0.67 each rounds down to nothing, and up to the floor of one.
    assert_eq!(targets(&topology(2, &[(2, 256, None); 3]), &[Some(2); 3]), [1, 1, 1]);
    // 1.5 pCPUs each: one VCPU each, never two that cannot run at once.
    assert_eq!(targets(&topology(3, &[(2, 256, None), (2, 256, None)]), &[Some(2), Some(2)]), [2, 1]);
    assert_eq!(targets(&topology(2, &[(4, 256, None), (2, 256, None)]), &[None, None]), [1, 1]);
}

#[test]
fn a_guest_boots_with_the_vcpus_its_share_can_run() {
    assert_eq!(grants(&harness(2, &[(2, 256, None), (2, 256, None)])), [1, 1]);
    assert_eq!(grants(&harness(2, &[(2, 256, None)])), [2]);
    assert_eq!(grants(&harness(6, &[(4, 256, None), (4, 512, None)])), [2, 4]);
    assert_eq!(harness(2, &[(2, 256, None)]).policy.next_tick(), None, "nothing pending");
}

/// Two VMs of two VCPUs on two pCPUs, VM 1 idle: VM 0's target is 2 while it is busy.
fn one_vm_idle() -> Harness {
    let mut h = harness(2, &[(2, 256, None), (2, 256, None)]);
    follow_grants(&mut h);
    h.demand(1, 0);
    h.demand(0, 1);
    h.advance(LOWER);
    assert_eq!(grants(&h), [1, 1]);
    h
}

#[test]
fn a_burst_shorter_than_raise_after_never_raises_the_grant() {
    let mut h = one_vm_idle();
    for _ in 0..20 {
        h.demand(0, 2);
        h.advance(RAISE - 1);
        assert_eq!(grants(&h), [1, 1], "at {}", h.now());
        h.demand(0, 1);
        h.advance(MS);
    }
    // The clock starts again with every burst: a long one raises RAISE after it began.
    h.demand(0, 2);
    h.advance(RAISE);
    assert_eq!(grants(&h), [2, 1]);
}

#[test]
fn a_dip_shorter_than_lower_after_never_lowers_the_grant() {
    let mut h = one_vm_idle();
    h.demand(0, 2);
    h.advance(RAISE);
    assert_eq!(grants(&h), [2, 1]);
    for threads in [1, 0, 1] {
        h.demand(0, threads);
        h.advance(LOWER - 1);
        assert_eq!(grants(&h), [2, 1], "at {}", h.now());
        h.demand(0, 2);
        h.advance(MS);
    }
    // VM 1 waking up asks for its pCPU back; a short spell changes nothing either.
    h.demand(1, 2);
    h.advance(LOWER - 1);
    h.demand(1, 0);
    h.advance(LOWER);
    assert_eq!(grants(&h), [2, 1]);
}

#[test]
fn a_sustained_change_moves_the_grant_exactly_when_due_on_a_tick_of_its_own() {
    // No VCPU is online, so credit asks for no tick: every tick is the grant's.
    let mut h = harness(2, &[(2, 256, None), (2, 256, None)]);
    h.demand(0, 2);
    h.demand(1, 0);
    assert_eq!(h.policy.next_tick(), Some(RAISE));
    h.advance(RAISE - 1);
    assert_eq!((grants(&h), h.ticks()), (vec![1, 1], 0));
    h.advance(1);
    assert_eq!((grants(&h), h.ticks()), (vec![2, 1], 1));
    assert_eq!(h.policy.next_tick(), None);
    let since = h.now();
    h.demand(1, 1);
    assert_eq!(h.policy.next_tick(), Some(since + LOWER));
    h.advance(LOWER - 1);
    assert_eq!(grants(&h), [2, 1]);
    h.advance(1);
    assert_eq!((grants(&h), h.ticks()), (vec![1, 1], 2));
}

#[test]
fn a_target_moving_further_the_same_way_keeps_its_clock() {
    let mut h = harness(4, &[(4, 256, None), (4, 256, None)]);
    h.demand(0, 4);
    h.demand(1, 2);
    assert_eq!(h.policy.next_tick(), None, "targets [2, 2] are the grants");
    h.demand(1, 1);
    h.advance(RAISE / 2);
    h.demand(1, 0);
    // VM 0's target went from 2 to 3, and at RAISE / 2 to 4: it gets 4 at RAISE.
    h.advance(RAISE / 2 - 1);
    assert_eq!(grants(&h), [2, 2]);
    h.advance(1);
    assert_eq!(grants(&h), [4, 2]);
    h.advance(LOWER - RAISE - 1);
    assert_eq!(grants(&h), [4, 2]);
    h.advance(1);
    assert_eq!(grants(&h), [4, 1]);
}

#[test]
fn a_target_crossing_its_grant_starts_the_clock_again() {
    let mut h = harness(4, &[(4, 256, None), (4, 256, None)]);
    h.demand(0, 4);
    h.demand(1, 1);
    // Targets [3, 1] against grants [2, 2]; at RAISE / 2 they turn to [1, 3].
    h.advance(RAISE / 2);
    h.demand(0, 1);
    h.demand(1, 4);
    h.advance(RAISE - 1);
    assert_eq!(grants(&h), [2, 2]);
    h.advance(1);
    assert_eq!(grants(&h), [2, 3]);
    h.advance(LOWER - RAISE - 1);
    assert_eq!(grants(&h), [2, 3]);
    h.advance(1);
    assert_eq!(grants(&h), [1, 3]);
}

#[test]
fn an_ended_vm_hands_its_share_on() {
    let mut h = harness(2, &[(2, 256, None), (2, 256, None)]);
    h.wake_all();
    h.demand(0, 2);
    h.demand(1, 2);
    h.advance(100 * MS);
    assert_eq!(grants(&h), [1, 1]);
    h.down(VcpuId(0));
    h.advance(RAISE);
    assert_eq!(grants(&h), [1, 1], "VM 0 still has a VCPU online");
    h.down(VcpuId(1));
    h.advance(RAISE);
    assert_eq!(grants(&h), [1, 2]);
}

#[test]
fn grants_stay_within_bounds_and_credit_keeps_its_invariants_under_random_demand() {
    for (seed, (pcpus, vms)) in [
        (2, &[(2, 256, None), (2, 256, None)][..]),
        (2, &[(4, 256, None), (2, 512, Some(50))]),
        (4, &[(3, 1, None), (8, 2, None), (1, 4, None)]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = harness(pcpus, vms);
        let mut rng = Lcg(seed as u64);
        let mut changes = 0;
        follow_grants(&mut h);
        for _ in 0..3_000 {
            let before = grants(&h);
            let vm = rng.below(vms.len() as u64) as usize;
            h.demand(vm, rng.below(12) as u32);
            // Online VCPUs block and wake as their threads come and go.
            let vcpu = VcpuId(rng.below(h.topology.nr_vcpus() as u64) as u32);
            match h.state(vcpu) {
                State::Runnable if h.running(vcpu) => h.block(vcpu),
                State::Blocked => h.wake(vcpu),
                _ => {}
            }
            follow_grants(&mut h);
            h.advance(rng.below(30 * MS));
            for (vm, grant) in grants(&h).into_iter().enumerate() {
                assert!((1..=vms[vm].0).contains(&grant), "vm {vm} granted {grant} of {:?}", vms[vm]);
            }
            changes += usize::from(grants(&h) != before);
        }
        assert!(changes > 100, "seed {seed}: the grants changed only {changes} times");
    }
}

#[test]
fn vms_following_their_grants_get_their_fair_shares() {
    for (pcpus, vms, demands) in [
        (2, &[(2, 256, None), (2, 256, None)][..], &[2, 2][..]),
        (2, &[(4, 256, None), (2, 256, None)], &[4, 2]),
        (4, &[(4, 1, None), (4, 3, None)], &[4, 4]),
        (2, &[(2, 256, None); 3], &[2, 2, 2]),
        (4, &[(4, 256, None), (4, 256, None)], &[4, 1]),
    ] {
        let mut h = harness(pcpus, vms);
        for (vm, &threads) in demands.iter().enumerate() {
            h.demand(vm, threads);
        }
        // The guests follow their grants every 5 ms, as the dispatcher polls them.
        let duration = 10_000 * MS;
        while h.now() < duration {
            follow_grants(&mut h);
            h.advance(5 * MS);
        }
        let asking = vms.iter().zip(demands).map(|(&(vcpus, weight, cap), &threads)| (vcpus.min(threads), weight, cap));
        let shares = topology(pcpus, &asking.collect::<Vec<_>>()).fair_shares();
        for (vm, share) in shares.into_iter().enumerate() {
            let (ran, fair) = (h.vm_run(vm) as f64, share * duration as f64);
            assert!((ran - fair).abs() < 0.03 * fair, "{vms:?} {demands:?}: vm {vm} ran {ran} ns, fair is {fair}");
        }
    }
}

#[test]
fn the_online_vcpus_are_scheduled_exactly_as_credit_alone_would() {
    // The same random wakes, blocks, yields and downs under both policies, and random
    // demands under `dynamic`, so that its grants change and its own ticks reach credit.
    let vms = [(2, 256, None), (3, 512, None), (1, 256, Some(50))];
    let topology = topology(2, &vms);
    let mut dynamic = Harness::new(Box::new(Dynamic::new(&params(), &topology)), topology.clone());
    let mut credit = Harness::new(Box::new(Credit::new(&params(), &topology)), topology.clone());
    let mut rng = Lcg(3);
    let mut grant_changes = 0;
    for _ in 0..5_000 {
        let vcpu = VcpuId(rng.below(topology.nr_vcpus() as u64) as u32);
        let before = grants(&dynamic);
        dynamic.demand(rng.below(vms.len() as u64) as usize, rng.below(6) as u32);
        let choice = rng.below(6);
        for h in [&mut dynamic, &mut credit] {
            match (h.state(vcpu), choice) {
                (State::Runnable, 0) => h.down(vcpu),
                (State::Runnable, 1 | 2) if h.running(vcpu) => h.block(vcpu),
                (State::Runnable, 3) if h.running(vcpu) => h.yield_to(vcpu, None),
                (State::Runnable, _) => {}
                (State::Blocked | State::Offline, _) => h.wake(vcpu),
            }
        }
        assert_eq!(dynamic.policy.assignment(), credit.policy.assignment(), "at {}", dynamic.now());
        let step = rng.below(20 * MS);
        dynamic.advance(step);
        credit.advance(step);
        assert_eq!(dynamic.policy.assignment(), credit.policy.assignment(), "at {}", dynamic.now());
        grant_changes += usize::from(grants(&dynamic) != before);
    }
    assert!(grant_changes > 100, "the grants changed only {grant_changes} times");
    assert!(dynamic.ticks() > credit.ticks() + 100, "ticks: {} against {}", dynamic.ticks(), credit.ticks());
    for v in 0..topology.nr_vcpus() {
        assert_eq!(dynamic.times(VcpuId(v as u32)), credit.times(VcpuId(v as u32)));
    }
}
