//! The guest model alone, with the monitor played by hand: each test sets the VCPUs'
//! states and the time, calls the guest as the engine would, and checks what it asks for.

use sched::Ns;
use sched::harness::State;
use tandem_core::scenario::VmPlan;
use tandem_core::sim_config::SimConfig;
use workloads::timing::{IDLE_POLL_NS, PV_CHECK_PERIOD_NS};

use super::{Effect, Guest, Monitor, Next};
use crate::model::tests::plan;
use crate::model::{LockOps, Step};
use crate::rng::Rng;

/// A guest, its VCPUs' policy states, the time, and what the guest sent on the side.
struct Alone {
    plan: VmPlan,
    guest: Guest,
    states: Vec<State>,
    rng: Rng,
    effects: Vec<Effect>,
    now: Ns,
    exit: Ns,
}

impl Alone {
    /// `workload` with `args` on `vcpus` VCPUs, compute steps without jitter, under a
    /// policy the monitor enforces.
    fn new(vcpus: u32, workload: &str, args: &[&str]) -> Alone {
        let plan = plan(workload, vcpus, args);
        let config = SimConfig { jitter: 0.0, ..SimConfig::default() };
        Alone {
            guest: Guest::new(&plan, &config, true).unwrap(),
            plan,
            states: vec![State::Offline; vcpus as usize],
            rng: Rng::new(1),
            effects: Vec::new(),
            now: 0,
            exit: config.costs.exit,
        }
    }

    fn call<R>(&mut self, call: impl FnOnce(&mut Guest, &mut Monitor) -> R) -> R {
        let mut monitor =
            Monitor { now: self.now, states: &self.states, rng: &mut self.rng, effects: &mut self.effects };
        call(&mut self.guest, &mut monitor)
    }

    /// What the guest sent since the last look.
    fn sent(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// VCPU `x` steps `after` from now.
    fn step_after(&mut self, x: usize, after: Ns) -> Next {
        self.now += after;
        self.call(|guest, monitor| guest.step(x, monitor))
    }

    /// A kick or vcpu_up reaches VCPU `x`; if it wakes, it runs at once.
    fn wake(&mut self, x: usize) -> bool {
        let woken = self.guest.wake(x, self.states[x]);
        if woken {
            self.states[x] = State::Runnable;
            self.guest.started(x, self.now);
        }
        woken
    }

    /// The guest boots on VCPU 0 with `grant` VCPUs granted and brings them up; each takes
    /// a thread if one is ready.
    fn boot(&mut self, grant: Option<u32>) {
        self.guest.boot(grant);
        assert!(self.wake(0));
        let boot = SimConfig::default().costs.boot;
        assert_eq!(self.step_after(0, 0), Next::After(boot));
        self.step_after(0, boot);
        for effect in self.sent() {
            match effect {
                Effect::Wake { vcpu, .. } => {
                    assert!(self.wake(vcpu));
                    self.step_after(vcpu, 0);
                }
                Effect::Listening => assert!(self.guest.served().is_some()),
                _ => panic!("{effect:?} at boot"),
            }
        }
    }
}

#[test]
fn vcpu_0_boots_the_guest_and_brings_up_the_granted_vcpus_one_exit_apart() {
    let mut alone = Alone::new(4, "cpu", &["tasks=8"]);
    alone.guest.boot(Some(3));
    assert!(alone.wake(0));
    let boot = SimConfig::default().costs.boot;
    assert_eq!(alone.step_after(0, 0), Next::After(boot));
    assert!(!alone.guest.running(), "not before its initialisation is done");
    // Then VCPU 0 takes the first thread and computes its first task.
    assert_eq!(alone.step_after(0, boot), Next::After(2_500_000));
    let up = SimConfig::default().costs.up;
    let exit = alone.exit;
    assert_eq!(
        alone.sent(),
        [Effect::Wake { vcpu: 1, after: exit + up }, Effect::Wake { vcpu: 2, after: 2 * exit + up }]
    );
    assert!(alone.guest.running());
    assert_eq!(alone.guest.demand(), 4);
    // A VCPU beyond the grant does not come up.
    assert!(!alone.wake(3));
}

#[test]
fn an_idle_vcpu_polls_then_blocks_unless_kicked_meanwhile() {
    let mut alone = Alone::new(2, "cpu", &["tasks=100", "threads=1"]);
    alone.boot(None);
    assert_eq!(alone.step_after(1, 0), Next::After(IDLE_POLL_NS));
    assert_eq!(alone.step_after(1, IDLE_POLL_NS), Next::After(alone.exit), "the block hypercall");
    assert_eq!(alone.step_after(1, alone.exit), Next::Block);
    alone.guest.stopped(1, alone.now);
    alone.states[1] = State::Blocked;
    // Kicked awake, it polls again; a kick that comes while it is on its way to block makes
    // the block return at once.
    assert!(alone.wake(1));
    assert_eq!(alone.step_after(1, 0), Next::After(IDLE_POLL_NS));
    assert_eq!(alone.step_after(1, IDLE_POLL_NS), Next::After(alone.exit));
    assert!(!alone.wake(1), "a runnable VCPU stays as it is");
    assert_eq!(alone.step_after(1, alone.exit), Next::After(IDLE_POLL_NS));
}

#[test]
fn a_pv_lock_waiter_yields_to_a_preempted_holder_then_blocks() {
    let mut alone = Alone::new(2, "locks", &["ops=1000", "cs=10000", "locks=pv"]);
    alone.boot(None);
    // VCPU 0's thread holds the lock; VCPU 1's waits, spinning until its first look.
    let since = alone.now;
    assert_eq!(alone.step_after(1, 0), Next::After(10_000));
    // The holder's VCPU is preempted at the waiter's first look: the waiter notices within a
    // check period and yields to it.
    alone.now = since + 10_000;
    alone.guest.stopped(0, alone.now);
    alone.call(|guest, monitor| guest.preempted(0, monitor));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 1, after: PV_CHECK_PERIOD_NS }]);
    assert_eq!(alone.step_after(1, PV_CHECK_PERIOD_NS), Next::After(alone.exit));
    assert_eq!(alone.step_after(1, alone.exit), Next::Yield(Some(0)));
    // The holder runs again: the waiter spins until the blocking bound, then blocks.
    alone.guest.started(0, alone.now);
    let blocking = since + 200_000 - alone.now;
    assert_eq!(alone.step_after(1, 0), Next::After(blocking));
    assert_eq!(alone.step_after(1, blocking), Next::After(alone.exit));
    assert_eq!(alone.step_after(1, alone.exit), Next::Block);
    let stats = alone.guest.stats;
    assert_eq!((stats.contended, stats.directed_yields, stats.blocks), (1, 1, 1));
}

#[test]
fn a_holder_whose_pcpu_a_host_thread_has_stalls_unseen_by_pv_waiters() {
    let mut alone = Alone::new(2, "locks", &["ops=1000", "cs=10000", "locks=pv"]);
    alone.boot(None);
    let since = alone.now;
    let Next::After(critical) = alone.step_after(0, 0) else { panic!("the holder computes") };
    assert_eq!(alone.step_after(1, 0), Next::After(10_000));
    // A host thread takes the holder's pCPU: the monitor does not know, so the shared page
    // shows the holder running, and the waiter spins on to its blocking bound.
    alone.now += 4_000;
    alone.guest.stolen(0, alone.now);
    assert_eq!(alone.step_after(1, 6_000), Next::After(since + 200_000 - alone.now));
    assert_eq!(alone.sent(), []);
    // Back on its pCPU 50 µs later, the holder has the rest of its critical section to do.
    alone.now += 50_000;
    alone.guest.started(0, alone.now);
    assert_eq!(alone.step_after(0, 0), Next::After(critical - 4_000));
}

#[test]
fn the_unlock_that_serves_a_blocked_waiter_kicks_it_and_pays_an_exit() {
    let mut alone = Alone::new(2, "locks", &["ops=1000", "cs=200000", "locks=pv"]);
    alone.boot(None);
    let since = alone.now;
    assert_eq!(alone.step_after(1, 0), Next::After(10_000));
    assert_eq!(alone.step_after(1, 10_000), Next::After(190_000), "the holder runs: no yield");
    assert_eq!(alone.step_after(1, 190_000), Next::After(alone.exit));
    assert_eq!(alone.step_after(1, alone.exit), Next::Block);
    alone.guest.stopped(1, alone.now);
    alone.states[1] = State::Blocked;
    // The holder's critical section ends: it unlocks, kicking the waiter, and pays the
    // kick's exit before it thinks.
    let critical = 200_000 * 1_950 / 1000;
    assert!(alone.now < since + critical);
    let kick = SimConfig::default().costs.kick;
    assert_eq!(alone.step_after(0, since + critical - alone.now), Next::After(alone.exit));
    assert_eq!(alone.sent(), [Effect::Wake { vcpu: 1, after: alone.exit + kick }]);
    assert_eq!(alone.guest.stats.kicks, 1);
    // Woken, the waiter holds the lock.
    assert!(alone.wake(1));
    assert_eq!(alone.step_after(1, alone.exit + kick), Next::After(critical));
}

#[test]
fn a_queued_lock_freed_while_its_head_is_preempted_is_stolen_and_passes_to_a_running_head() {
    let mut alone = Alone::new(3, "locks", &["ops=1000", "locks=qspin"]);
    alone.boot(None);
    let LockOps { cs, think, batch, .. } = alone.guest.model.lock.unwrap();
    assert!(batch > 1);
    // VCPU 0's thread holds the lock for a batch; VCPU 1's heads the queue, VCPU 2's waits
    // behind it; neither has a bound.
    assert_eq!(alone.step_after(1, 0), Next::Wait);
    assert_eq!(alone.step_after(2, 0), Next::Wait);
    // The head's VCPU is preempted: the unlock leaves the lock free, and VCPU 0's thread,
    // back from thinking, takes it again (for a batch) past both waiters.
    alone.guest.stopped(1, alone.now);
    alone.call(|guest, monitor| guest.preempted(1, monitor));
    assert_eq!(alone.step_after(0, batch * cs), Next::After(batch * think));
    assert_eq!(alone.step_after(0, batch * think), Next::After(batch * cs));
    assert_eq!(alone.sent(), [], "nobody is looked at again");
    let stats = alone.guest.stats;
    assert_eq!((stats.acquisitions, stats.contended, stats.steals), (4, 2, 1));
    // The head runs again: the next unlock hands it the lock at cache speed, a batch too,
    // and the waiter behind it heads the queue.
    alone.guest.started(1, alone.now);
    assert_eq!(alone.step_after(1, 0), Next::Wait);
    assert_eq!(alone.step_after(0, batch * cs), Next::After(batch * think));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 1, after: 0 }]);
    assert_eq!(alone.step_after(1, 0), Next::After(batch * cs));
    assert_eq!(alone.step_after(2, 0), Next::Wait);
    let stats = alone.guest.stats;
    assert_eq!((stats.acquisitions, stats.steals, stats.blocks, stats.kicks), (4, 1, 0, 0));
}

#[test]
fn a_pvqspin_waiter_behind_a_preempted_head_blocks_and_is_kicked_once_it_heads_the_queue() {
    let mut alone = Alone::new(3, "locks", &["ops=1000", "cs=100000", "locks=pvqspin"]);
    alone.boot(None);
    let LockOps { cs, think, .. } = alone.guest.model.lock.unwrap();
    let start = alone.now;
    // The head spins up to pvq_head_us, the waiter behind it up to pvq_spin_us.
    assert_eq!(alone.step_after(1, 0), Next::After(50_000));
    assert_eq!(alone.step_after(2, 0), Next::After(50_000));
    // The head's VCPU is preempted: the waiter behind it notices within a check period and
    // blocks its thread; its VCPU, with no other thread, polls, then blocks.
    alone.guest.stopped(1, alone.now);
    alone.call(|guest, monitor| guest.preempted(1, monitor));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 2, after: PV_CHECK_PERIOD_NS }]);
    assert_eq!(alone.step_after(2, PV_CHECK_PERIOD_NS), Next::After(IDLE_POLL_NS));
    assert_eq!(alone.guest.demand(), 2);
    assert_eq!(alone.step_after(2, IDLE_POLL_NS), Next::After(alone.exit));
    assert_eq!(alone.step_after(2, alone.exit), Next::Block);
    alone.guest.stopped(2, alone.now);
    alone.states[2] = State::Blocked;
    // The unlock leaves the lock free and kicks nobody; the head takes it when its VCPU
    // runs, one operation, which makes the blocked waiter the head without waking it.
    assert_eq!(alone.step_after(0, start + cs - alone.now), Next::After(think));
    alone.guest.started(1, alone.now);
    assert_eq!(alone.step_after(1, 0), Next::After(cs));
    assert_eq!((alone.sent(), alone.guest.stats.kicks), (vec![], 0));
    // That holder's unlock kicks it, and pays the kick's exit.
    assert_eq!(alone.step_after(1, cs), Next::After(alone.exit));
    let kick = SimConfig::default().costs.kick;
    assert_eq!(alone.sent(), [Effect::Wake { vcpu: 2, after: alone.exit + kick }]);
    // Woken, its VCPU takes the thread, which takes the free lock.
    assert!(alone.wake(2));
    assert_eq!(alone.step_after(2, alone.exit + kick), Next::After(cs));
    let stats = alone.guest.stats;
    assert_eq!((stats.contended, stats.slow_paths, stats.blocks, stats.kicks), (2, 1, 1, 1));
    assert_eq!((stats.spurious_wakeups, stats.steals, stats.directed_yields), (0, 0, 0));
}

#[test]
fn a_blocked_pvqspin_head_is_kicked_by_the_unlock_and_may_find_the_lock_stolen() {
    let mut alone = Alone::new(2, "locks", &["ops=1000", "cs=100000", "locks=pvqspin"]);
    alone.boot(None);
    let LockOps { cs, think, .. } = alone.guest.model.lock.unwrap();
    let start = alone.now;
    // The head spins for pvq_head_us, then marks the lock slow and blocks its thread.
    assert_eq!(alone.step_after(1, 0), Next::After(50_000));
    assert_eq!(alone.step_after(1, 50_000), Next::After(IDLE_POLL_NS));
    assert_eq!(alone.step_after(1, IDLE_POLL_NS), Next::After(alone.exit));
    assert_eq!(alone.step_after(1, alone.exit), Next::Block);
    alone.guest.stopped(1, alone.now);
    alone.states[1] = State::Blocked;
    // The unlock kicks it, once, and the lock stays free meanwhile.
    assert_eq!(alone.step_after(0, start + cs - alone.now), Next::After(alone.exit));
    let kick = SimConfig::default().costs.kick;
    assert_eq!(alone.sent(), [Effect::Wake { vcpu: 1, after: alone.exit + kick }]);
    // The unlocker, back from thinking, steals the lock while the kicked VCPU, runnable,
    // waits for a pCPU.
    assert_eq!(alone.step_after(0, alone.exit), Next::After(think));
    assert_eq!(alone.step_after(0, think), Next::After(cs));
    assert!(alone.guest.wake(1, State::Blocked));
    alone.states[1] = State::Runnable;
    // The head runs: a spurious wake-up. Kicked once this wait, it spins now without a
    // bound, and the stealer's unlock, with nobody to kick, hands it the lock.
    alone.guest.started(1, alone.now);
    assert_eq!(alone.step_after(1, 0), Next::Wait);
    assert_eq!(alone.step_after(0, cs), Next::After(think));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 1, after: 0 }]);
    assert_eq!(alone.step_after(1, 0), Next::After(cs));
    let stats = alone.guest.stats;
    assert_eq!((stats.acquisitions, stats.contended, stats.steals), (3, 1, 1));
    assert_eq!((stats.slow_paths, stats.blocks, stats.kicks, stats.spurious_wakeups), (1, 1, 1, 1));
}

#[test]
fn a_lowered_grant_sends_a_surplus_vcpu_down_and_is_followed_then() {
    let mut alone = Alone::new(2, "cpu", &["tasks=100", "threads=1"]);
    alone.boot(None);
    assert_eq!(alone.step_after(1, 0), Next::After(IDLE_POLL_NS));
    alone.call(|guest, monitor| guest.set_grant(1, monitor));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 0, after: 0 }, Effect::Poke { vcpu: 1, after: 0 }]);
    assert_eq!(alone.step_after(1, 0), Next::After(alone.exit), "the vcpu_down hypercall");
    assert_eq!(alone.step_after(1, alone.exit), Next::Down);
    alone.guest.stopped(1, alone.now);
    alone.states[1] = State::Offline;
    alone.call(|guest, monitor| guest.online_changed(monitor));
    assert_eq!(alone.guest.followed(), [alone.exit]);
    assert!(!alone.wake(1), "a kick does not bring up a VCPU beyond the grant");
}

#[test]
fn the_last_thread_to_end_exits_the_guest() {
    let mut alone = Alone::new(1, "cpu", &["tasks=2"]);
    alone.boot(None);
    let started = alone.now;
    assert_eq!(alone.step_after(0, 0), Next::After(2_500_000));
    assert_eq!(alone.step_after(0, 2_500_000), Next::After(2_500_000));
    assert_eq!(alone.step_after(0, 2_500_000), Next::Exit);
    assert_eq!(alone.guest.end_time(), Some(alone.now));
    assert_eq!(alone.guest.workload_time(alone.now + 1), 5_000_000);
    let record = alone.guest.record(&alone.plan, alone.now - started);
    assert_eq!((record.ops, record.per_thread), (2, vec![2]));
}

/// A `kv` guest's round: the wake-up's cost, a request's time under the lock and outside it.
fn kv_round(alone: &Alone) -> (Ns, Ns, Ns) {
    let Step::Compute { ns: round, .. } = alone.guest.model.step(0, 1, 0) else { panic!("a round's cost") };
    let LockOps { cs, think, .. } = alone.guest.model.lock.unwrap();
    (round, cs, think)
}

#[test]
fn requests_end_an_idle_poll_and_kick_one_blocked_vcpu_at_a_time() {
    let mut alone = Alone::new(2, "kv", &["clients=2"]);
    alone.boot(None);
    let (round, cs, think) = kv_round(&alone);
    // Both threads wait for requests, both VCPUs poll: a request ends VCPU 0's poll, which
    // takes it in and runs its thread.
    alone.call(|guest, monitor| guest.deliver(0, 1, monitor));
    assert_eq!(alone.sent(), [Effect::Poke { vcpu: 0, after: 0 }]);
    assert_eq!(alone.step_after(0, 0), Next::After(round));
    // VCPU 1 polls out and blocks. Requests for the other connection: the backend kicks it,
    // once while its kick is on its way.
    assert_eq!(alone.step_after(1, IDLE_POLL_NS), Next::After(alone.exit));
    assert_eq!(alone.step_after(1, alone.exit), Next::Block);
    alone.guest.stopped(1, alone.now);
    alone.states[1] = State::Blocked;
    alone.call(|guest, monitor| guest.deliver(1, 1, monitor));
    alone.call(|guest, monitor| guest.deliver(1, 2, monitor));
    let kick = SimConfig::default().costs.kick;
    assert_eq!(alone.sent(), [Effect::Wake { vcpu: 1, after: kick }]);
    // Woken, it takes both in, and the thread serves the three requests as one batch.
    assert!(alone.wake(1));
    assert_eq!(alone.step_after(1, kick), Next::After(round));
    assert_eq!(alone.step_after(1, round), Next::After(3 * cs));
    assert_eq!(alone.step_after(1, 3 * cs), Next::After(3 * think));
    assert_eq!(alone.step_after(1, 3 * think), Next::After(IDLE_POLL_NS), "replied, it waits again");
    assert_eq!(alone.sent(), [Effect::Replied { conn: 1, requests: 3 }]);
    assert_eq!(alone.guest.ops, 3);
}

#[test]
fn requests_wait_in_the_ring_for_a_scheduler_pass_and_the_last_reply_ends_the_server() {
    let mut alone = Alone::new(1, "kv", &["clients=2", "requests=2"]);
    alone.boot(None);
    let (round, cs, think) = kv_round(&alone);
    alone.call(|guest, monitor| guest.deliver(0, 1, monitor));
    assert_eq!(alone.step_after(0, 0), Next::After(round));
    alone.sent();
    // The only VCPU runs a thread: the other connection's request waits, and nobody is told.
    alone.call(|guest, monitor| guest.deliver(1, 1, monitor));
    assert_eq!(alone.sent(), []);
    // The reply's write polls: the other thread runs once the first waits again.
    assert_eq!(alone.step_after(0, round), Next::After(cs));
    assert_eq!(alone.step_after(0, cs), Next::After(think));
    assert_eq!(alone.step_after(0, think), Next::After(round));
    assert_eq!(alone.sent(), [Effect::Replied { conn: 0, requests: 1 }]);
    // The run's last request answered, the server ends.
    assert_eq!(alone.step_after(0, round), Next::After(cs));
    assert_eq!(alone.step_after(0, cs), Next::After(think));
    assert_eq!(alone.step_after(0, think), Next::Exit);
    assert_eq!(alone.sent(), [Effect::Replied { conn: 1, requests: 1 }]);
    assert_eq!(alone.guest.end_time(), Some(alone.now));
}
