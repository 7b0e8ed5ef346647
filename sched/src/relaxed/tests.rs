use super::waiting::{ENTRIES_PER_VCPU, ENTRIES_SLACK};
use super::*;
use crate::harness::Lcg;
use crate::harness::{Harness, State};
use crate::{MS, VmSpec};

const SLICE: Ns = 30 * MS;
const SKEW: Ns = 3 * MS;
const TICK: Ns = MS;

fn params() -> Params {
    Params { slice: SLICE, skew: SKEW, tick: TICK, ..Params::default() }
}

/// A topology of `pcpus` pCPUs and VMs of (VCPUs, weight).
fn topology(pcpus: u32, vms: &[(u32, u32)]) -> Topology {
    Topology::new(pcpus, vms.iter().map(|&(vcpus, weight)| VmSpec { vcpus, weight, cap: None }).collect())
}

fn harness(pcpus: u32, vms: &[(u32, u32)]) -> Harness {
    let topology = topology(pcpus, vms);
    Harness::new(Box::new(Relaxed::new(&params(), &topology)), topology)
}

/// A harness plus the test's own account of each VCPU's progress, kept from the definition
/// (it advances while the VCPU runs; a waking VCPU starts at the least progress of its
/// runnable siblings), to check the policy's decisions against after every event and tick.
struct Run {
    h: Harness,
    progress: Vec<Ns>,
}

impl Run {
    fn new(pcpus: u32, vms: &[(u32, u32)]) -> Run {
        let h = harness(pcpus, vms);
        let progress = vec![0; h.topology.nr_vcpus()];
        Run { h, progress }
    }

    fn runnable_siblings(&self, vcpu: VcpuId) -> impl Iterator<Item = VcpuId> + '_ {
        let vm = self.h.topology.vm_of(vcpu);
        self.h.topology.vcpus_of(vm).filter(|&v| self.h.state(v) == State::Runnable)
    }

    fn skew(&self, vcpu: VcpuId) -> Ns {
        let slowest = self.runnable_siblings(vcpu).map(|v| self.progress[v.index()]).min();
        self.progress[vcpu.index()] - slowest.expect("a runnable VCPU")
    }

    fn wake(&mut self, vcpu: VcpuId) {
        let others = self.runnable_siblings(vcpu).filter(|&v| v != vcpu);
        if let Some(slowest) = others.map(|v| self.progress[v.index()]).min() {
            self.progress[vcpu.index()] = slowest;
        }
        self.h.wake(vcpu);
        self.check(true);
    }

    fn wake_all(&mut self) {
        for v in 0..self.h.topology.nr_vcpus() {
            self.wake(VcpuId(v as u32));
        }
    }

    /// Advances `duration`, stopping at every tick to check.
    fn advance(&mut self, duration: Ns) {
        let end = self.h.now() + duration;
        while self.h.now() < end {
            let until = self.h.policy.next_tick().map_or(end, |tick| tick.min(end));
            let (running, step, ticks) = (self.h.running_vcpus(), until - self.h.now(), self.h.ticks());
            self.h.advance(step);
            for v in running {
                self.progress[v.index()] += step;
            }
            self.check(self.h.ticks() > ticks);
        }
    }

    /// Panics unless runnable siblings are within `SKEW + TICK` of each other, no ready VCPU
    /// waits beside an idle pCPU, a tick is pending within `TICK` exactly while something
    /// runs, and, if the policy just took an event or tick (`decided`), exactly the VCPUs
    /// more than `SKEW` ahead are co-stopped.
    fn check(&self, decided: bool) {
        let (h, now) = (&self.h, self.h.now());
        let idle = h.policy.assignment().iter().any(Option::is_none);
        for v in 0..h.topology.nr_vcpus() {
            let vcpu = VcpuId(v as u32);
            if h.state(vcpu) != State::Runnable {
                assert!(!h.policy.costopped(vcpu), "{vcpu} co-stopped while not runnable at {now}");
                continue;
            }
            let skew = self.skew(vcpu);
            assert!(skew <= SKEW + TICK, "{vcpu} is {skew} ns ahead of a sibling at {now}");
            if decided {
                assert_eq!(h.policy.costopped(vcpu), skew > SKEW, "{vcpu} at {now}, {skew} ns ahead");
            }
            let ready = !h.running(vcpu) && !h.policy.costopped(vcpu);
            assert!(!(ready && idle), "{vcpu} is ready beside an idle pCPU at {now}");
        }
        match h.policy.next_tick() {
            Some(tick) => assert!(tick > now && tick <= now + TICK && !h.running_vcpus().is_empty()),
            None => assert!(h.running_vcpus().is_empty(), "no tick while VCPUs run at {now}"),
        }
    }

    /// Random wakes, blocks, yields and downs, with random stretches of time between.
    fn script(&mut self, seed: u64, steps: usize) {
        let mut rng = Lcg(seed);
        let nr_vcpus = self.h.topology.nr_vcpus() as u64;
        for _ in 0..steps {
            let vcpu = VcpuId(rng.below(nr_vcpus) as u32);
            let vm = self.h.topology.vm_of(vcpu);
            match self.h.state(vcpu) {
                State::Offline | State::Blocked => self.wake(vcpu),
                State::Runnable if self.h.running(vcpu) => {
                    match rng.below(10) {
                        0 => self.h.down(vcpu),
                        1 => self.h.yield_to(vcpu, None),
                        2 => {
                            let width = self.h.topology.vms[vm].vcpus;
                            let to = self.h.topology.vcpu(vm, rng.below(u64::from(width)) as u32);
                            self.h.yield_to(vcpu, Some(to));
                        }
                        _ => self.h.block(vcpu),
                    }
                    self.check(true);
                }
                State::Runnable if rng.below(8) == 0 => {
                    self.h.down(vcpu);
                    self.check(true);
                }
                State::Runnable => {}
            }
            self.advance(rng.below(20 * MS));
        }
    }
}

#[test]
fn skew_stays_bounded_under_random_blocks_wakes_yields_and_downs() {
    let topologies: [(u32, &[(u32, u32)]); 3] =
        [(2, &[(2, 256), (2, 256)]), (2, &[(4, 256), (2, 256)]), (3, &[(3, 256), (2, 512), (1, 256)])];
    for (pcpus, vms) in topologies {
        for seed in 1..=4 {
            let mut run = Run::new(pcpus, vms);
            run.script(seed, 3000);
            for v in 0..run.h.topology.nr_vcpus() {
                let wait = run.h.times(VcpuId(v as u32)).longest_wait;
                assert!(wait <= 4 * SLICE, "v{v} waited {wait} ns in {pcpus} pCPUs {vms:?} seed {seed}");
            }
        }
    }
}

#[test]
fn skew_stays_bounded_and_nobody_starves_with_every_vcpu_always_runnable() {
    for (pcpus, vms) in [(2, &[(2, 256), (2, 256)][..]), (2, &[(4, 256), (2, 256)]), (1, &[(3, 256), (1, 256)])] {
        let mut run = Run::new(pcpus, vms);
        run.wake_all();
        run.advance(2000 * MS);
        for v in 0..run.h.topology.nr_vcpus() {
            let wait = run.h.times(VcpuId(v as u32)).longest_wait;
            assert!(wait <= 4 * SLICE, "v{v} waited {wait} ns in {pcpus} pCPUs {vms:?}");
        }
    }
}

#[test]
fn two_siblings_on_one_pcpu_alternate_within_the_skew_bound() {
    let mut run = Run::new(1, &[(2, 256)]);
    run.wake_all();
    let (a, b) = (VcpuId(0), VcpuId(1));
    let mut switches = 0;
    let mut last = run.h.running_vcpus();
    for _ in 0..1000 {
        run.advance(TICK);
        let running = run.h.running_vcpus();
        switches += usize::from(running != last);
        last = running;
    }
    // Each runs until it leads by more than the skew, checked every tick: 8 ms turns.
    assert!(switches >= 1000 / (2 * (SKEW + TICK) / MS) as usize - 1, "{switches} switches in 1 s");
    for v in [a, b] {
        let times = run.h.times(v);
        assert!(times.run.abs_diff(500 * MS) <= SKEW + TICK, "{v} ran {} ns", times.run);
        assert!(times.costop > 0, "{v} was never co-stopped");
        assert!(times.longest_wait <= 2 * (SKEW + TICK), "{v} waited {} ns", times.longest_wait);
    }
}

#[test]
fn nobody_is_costopped_while_every_vcpu_has_a_pcpu() {
    for (pcpus, vms) in [(4, &[(2, 256), (2, 256)][..]), (3, &[(3, 256)]), (5, &[(4, 256), (1, 512)])] {
        let mut run = Run::new(pcpus, vms);
        run.script(7, 2000);
        for v in 0..run.h.topology.nr_vcpus() {
            let times = run.h.times(VcpuId(v as u32));
            assert_eq!((times.costop, times.ready), (0, 0), "v{v} in {pcpus} pCPUs {vms:?}");
        }
    }
}

#[test]
fn a_vcpu_waking_from_a_long_block_is_not_costopped_and_costops_nobody() {
    let mut run = Run::new(2, &[(2, 256)]);
    run.wake_all();
    run.advance(10 * MS);
    run.h.block(VcpuId(1));
    run.advance(100 * MS);
    run.wake(VcpuId(1));
    assert!(run.h.running(VcpuId(0)) && run.h.running(VcpuId(1)));
    run.advance(100 * MS);
    for v in 0..2 {
        assert_eq!(run.h.times(VcpuId(v)).costop, 0, "v{v}");
    }
    // Nor does a lead survive a block: a VCPU that ran ahead, then slept, wakes level with
    // its slowest runnable sibling, not co-stopped.
    let mut run = Run::new(1, &[(2, 256)]);
    run.wake(VcpuId(0));
    run.advance(10 * MS);
    run.h.block(VcpuId(0));
    run.wake(VcpuId(1));
    run.advance(5 * MS);
    run.wake(VcpuId(0));
    assert!(!run.h.policy.costopped(VcpuId(0)));
    run.advance(SKEW);
    assert!(run.h.running(VcpuId(1)) && !run.h.policy.costopped(VcpuId(1)));
}

/// Each VM's run time over 10 s with every VCPU always runnable, against its fair share.
fn assert_fair(pcpus: u32, vms: &[(u32, u32)]) {
    let duration = 10_000 * MS;
    let mut run = Run::new(pcpus, vms);
    run.wake_all();
    run.advance(duration);
    for (vm, share) in run.h.topology.fair_shares().into_iter().enumerate() {
        let (ran, fair) = (run.h.vm_run(vm) as f64, share * duration as f64);
        assert!((ran - fair).abs() < 0.03 * fair, "{pcpus} pCPUs {vms:?}: vm {vm} ran {ran} ns, fair is {fair}");
    }
}

#[test]
fn vms_share_the_pcpus_by_weight() {
    assert_fair(2, &[(2, 256), (2, 256)]);
    assert_fair(2, &[(2, 1), (2, 2)]);
    assert_fair(2, &[(4, 256), (2, 256)]);
    assert_fair(2, &[(4, 100), (2, 300)]);
    assert_fair(3, &[(2, 256), (2, 256), (1, 256)]);
    // A 1-VCPU VM cannot use more than a pCPU: the wide one gets the rest.
    assert_fair(4, &[(1, 256), (4, 256)]);
}

#[test]
fn siblings_are_started_together_and_vms_take_turns() {
    for vms in [&[(2, 256), (2, 256)][..], &[(2, 256), (2, 256), (2, 256)]] {
        let mut run = Run::new(2, vms);
        run.wake_all();
        let mut turns = vec![0usize; vms.len()];
        for _ in 0..1000 {
            run.advance(TICK);
            let running = run.h.running_vcpus();
            let vm = run.h.topology.vm_of(running[0]);
            assert!(running.len() == 2 && running.iter().all(|&v| run.h.topology.vm_of(v) == vm), "{running:?}");
            turns[vm] += 1;
        }
        // Whole slices each, in turn.
        let fair = 1000 / vms.len();
        assert!(turns.iter().all(|&t| t.abs_diff(fair) <= 30), "{vms:?}: {turns:?} ms each");
    }
}

#[test]
fn a_costopped_vcpu_hands_its_pcpu_to_its_most_lagging_sibling() {
    let mut run = Run::new(1, &[(3, 256)]);
    run.wake_all();
    let [a, b, c] = [0, 1, 2].map(VcpuId);
    run.advance(SKEW + TICK);
    assert!(run.h.policy.costopped(a) && run.h.running(b));
    run.advance(SKEW + TICK);
    // a still leads c by more than the skew; b now does too.
    assert!(run.h.policy.costopped(a) && run.h.policy.costopped(b) && run.h.running(c));
    // Nobody took a fresh slice: the pCPU ends the first one at its due time.
    run.advance(SLICE - 2 * (SKEW + TICK) - TICK);
    assert_eq!(run.h.policy.next_tick(), Some(SLICE));
}

#[test]
fn the_laggard_takes_precedence_over_other_vms_for_the_pcpu_its_leader_gives_up() {
    // v1 ran 20 ms before v0 (VM 0), so it has more virtual time than v2 (VM 1): by virtual
    // time v2 would be next, but v0's co-stop gives its pCPU to v1.
    let mut run = Run::new(1, &[(2, 256), (1, 256)]);
    let [v0, v1, v2] = [0, 1, 2].map(VcpuId);
    run.wake(v1);
    run.advance(20 * MS);
    run.h.block(v1);
    run.wake(v0);
    run.wake(v2);
    run.wake(v1);
    assert!(run.h.running(v0));
    run.advance(SKEW + TICK);
    assert!(run.h.policy.costopped(v0) && run.h.running(v1), "{:?}", run.h.running_vcpus());
}

#[test]
fn skew_is_the_lead_over_the_slowest_runnable_sibling() {
    let topology = topology(1, &[(3, 256)]);
    let mut policy = Relaxed::new(&params(), &topology);
    let [a, b, c] = [0, 1, 2].map(VcpuId);
    policy.handle(0, Event::Wake(a));
    policy.handle(0, Event::Wake(b));
    policy.handle(2 * MS, Event::Tick);
    assert_eq!((policy.skew(a), policy.skew(b), policy.skew(c)), (2 * MS, 0, 0));
    // A blocked sibling does not count: b leaving makes a the slowest.
    policy.handle(2 * MS, Event::Yield { vcpu: a, to: Some(b) });
    policy.handle(3 * MS, Event::Block(b));
    assert_eq!((policy.skew(a), policy.skew(b)), (0, 0));
    // c comes online level with a.
    policy.handle(4 * MS, Event::Wake(c));
    assert_eq!((policy.skew(a), policy.skew(c)), (0, 0));
}

#[test]
fn stale_waiting_entries_stay_bounded_under_a_storm_of_directed_yields() {
    // Two siblings hand one pCPU back and forth, each yield leaving an entry behind in
    // the ready heap above the third VCPU's, which waits for the slice end.
    let topology = topology(1, &[(2, 256), (1, 256)]);
    let mut policy = Relaxed::new(&params(), &topology);
    let (x, y, z) = (VcpuId(0), VcpuId(1), VcpuId(2));
    for vcpu in [x, y, z] {
        policy.handle(0, Event::Wake(vcpu));
    }
    for step in 1..=2_000 {
        let running = policy.assignment()[0].expect("a busy pCPU");
        assert_ne!(running, z, "z ran before the slice end");
        let sibling = if running == x { y } else { x };
        policy.handle(step * 1_000, Event::Yield { vcpu: running, to: Some(sibling) });
        assert_eq!(policy.assignment()[0], Some(sibling));
        let bound = ENTRIES_PER_VCPU * 3 + ENTRIES_SLACK + 1;
        assert!(policy.ready_heap.len() <= bound, "{} entries", policy.ready_heap.len());
    }
    // z, with the least virtual time, takes the pCPU at the slice end.
    policy.handle(SLICE, Event::Tick);
    assert_eq!(policy.assignment()[0], Some(z));
}

#[test]
fn a_directed_yield_hands_the_pcpu_to_the_sibling_whatever_its_virtual_time() {
    let mut h = harness(1, &[(2, 256), (1, 256)]);
    let [v0, v1, v2] = [0, 1, 2].map(VcpuId);
    // v1 runs 10 ms first, so it has more virtual time than v2.
    h.wake(v1);
    h.advance(10 * MS);
    h.block(v1);
    h.wake(v0);
    h.wake(v2);
    h.wake(v1);
    assert!(h.running(v0));
    h.advance(MS);
    h.yield_to(v0, Some(v1));
    assert!(h.running(v1));
    // An undirected yield goes by virtual time: v2 has run least.
    h.advance(MS);
    h.yield_to(v1, None);
    assert!(h.running(v2));
    // With nobody ready, the yielding VCPU runs on.
    let mut h = harness(1, &[(1, 256)]);
    h.wake_all();
    h.yield_to(v0, None);
    assert!(h.running(v0));
}

#[test]
fn a_sleeping_vcpu_banks_at_most_a_slice_of_credit() {
    let mut h = harness(1, &[(1, 256), (1, 256)]);
    let [v0, v1] = [0, 1].map(VcpuId);
    h.wake(v0);
    h.advance(10_000 * MS);
    h.wake(v1);
    let before = (h.times(v0).run, h.times(v1).run);
    h.advance(300 * MS);
    let (stayed, woken) = (h.times(v0).run - before.0, h.times(v1).run - before.1);
    // Without the catch-up, v1 would run the whole 300 ms.
    assert!(woken <= stayed + 2 * SLICE, "the woken VCPU ran {woken} ns, the other {stayed} ns");
}

#[test]
fn ticks_come_every_tick_and_at_slice_ends_while_something_runs() {
    let mut h = harness(1, &[(1, 256), (1, 256)]);
    let [v0, v1] = [0, 1].map(VcpuId);
    assert_eq!(h.policy.next_tick(), None);
    h.advance(5 * MS);
    h.wake(v0);
    assert_eq!(h.policy.next_tick(), Some(6 * MS));
    h.advance(MS / 2);
    h.wake(v1);
    assert_eq!(h.policy.next_tick(), Some(6 * MS + MS / 2));
    h.advance(SLICE - MS / 2);
    // A check 1 ms after each event and tick, the last one at the slice end, where v1 took over.
    assert_eq!(h.ticks(), 30);
    assert!(h.running(v1));
    h.block(v1);
    h.block(v0);
    assert_eq!(h.policy.next_tick(), None);
}
