//! A discrete-event simulator of pCPUs, VMs, VCPUs and the workloads in them, driving the
//! very same `sched` policies as the real dispatcher, through the same [`Policy`] trait, in
//! virtual time.
//!
//! The engine (this module) plays the dispatcher: it delivers VCPU events and ticks to the
//! policy, and carries out its assignment with the monitor's costs ([`Costs`]): a preempted
//! VCPU runs on for the preemption latency, a VCPU given a pCPU starts after the switch time.
//! The guest side ([`guest`]) plays the unikernel: cooperative threads running [`model`]
//! programs on the VCPUs, ticket spinlocks and barriers that spin or, with PV locks, yield to
//! a preempted VCPU and block until kicked, idle VCPUs that poll and then block, demand
//! reported and the VCPU grant followed. Nothing depends on the wall clock or on hashing
//! order: the same scenario and seed give the same result, byte for byte.

mod guest;
pub mod model;
pub mod queue;
#[cfg(test)]
mod tests;

use anyhow::Context;
use sched::harness::State;
use sched::{Event, Ns, Policy, PolicyKind, VcpuId};
use tandem_core::metrics::{DispatchReport, Span, VcpuTimes};
use tandem_core::results::{References, ScenarioResult, ScenarioRun, VmRun};
use tandem_core::scenario::Scenario;
use tandem_core::sim_config::SimConfig;
use tandem_core::stats::Percentiles;
use workloads::Record;

use guest::{Activity, Guest};
use queue::EventQueue;

/// VMs start within this of each other (their threads are spawned one after another).
const START_SPREAD: Ns = 200_000;

/// What the engine schedules (indexes as u32: the event queue's entries stay small).
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// VM `vm` boots.
    Start(u32),
    /// The VCPU's activity is due (if it is still generation `epoch`).
    Vcpu { vcpu: u32, epoch: u32 },
    /// A kick or vcpu_up reaches a blocked or offline VCPU.
    Wake(u32),
    /// A pCPU's preemption takes effect.
    Preempt(u32),
    /// A pCPU's next VCPU starts.
    Switch(u32),
    /// The monitor reads the guests' demand and publishes grants.
    Poll,
}

/// Where a VCPU's time goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Run,
    Ready,
    Costop,
    Wait,
    Off,
}

/// The engine's view of a VCPU, and what its guest is doing on it.
struct Vcpu {
    vm: usize,
    index: u32,
    /// The pCPU it runs guest code on.
    pcpu: Option<usize>,
    /// Bumped whenever it stops or is re-evaluated: events of older epochs are stale.
    epoch: u32,
    /// When its activity's progress was last brought up to date.
    mark: Ns,
    category: Category,
    since: Ns,
    times: VcpuTimes,
    /// The guest thread it runs.
    thread: Option<usize>,
    activity: Activity,
    /// What it goes back to after a hypercall (or a block).
    resume_to: Activity,
    /// A kick arrived while it was not blocked: its next block returns at once.
    kick_pending: bool,
    /// A kick is on its way to it: wakers kick another VCPU (the guest's kicker takes the
    /// VCPU's idle mark, one kick per block).
    kicked: bool,
}

#[derive(Clone, Copy, Default)]
struct Pcpu {
    running: Option<usize>,
    target: Option<usize>,
    preempt_pending: bool,
    switch_pending: bool,
}

/// A simulation of one scenario.
pub struct Sim {
    now: Ns,
    end: Ns,
    config: SimConfig,
    kind: PolicyKind,
    policy: Box<dyn Policy>,
    queue: EventQueue<Ev>,
    vcpus: Vec<Vcpu>,
    /// Each VCPU's policy state, apart from the rest of `Vcpu`: every decision looks it up.
    states: Vec<State>,
    pcpus: Vec<Pcpu>,
    guests: Vec<Guest>,
    /// VMs booted or still to boot that have not ended.
    live: usize,
    /// The VCPU now in the monitor for a hypercall: its pCPU passes on without preemption.
    exited: Option<usize>,
    /// The policy's assignment when `apply` last looked at it, and where each VCPU was in it.
    applied: Vec<Option<VcpuId>>,
    applied_at: Vec<Option<usize>>,
    /// The VCPUs whose state changed since `apply` last looked.
    restated: Vec<usize>,
    /// The pCPUs `apply` has to look at (a buffer kept between events).
    dirty: Vec<usize>,
    rng: u64,
    /// The policy's next tick as asked for, and when it is delivered (late, as timers are).
    tick: Option<(Ns, Ns)>,
    /// Whether the policy has handled an event since its next tick was asked for.
    tick_stale: bool,
    policy_events: u64,
    preemptions: u64,
    handled: u64,
    reconfigurations: Vec<u64>,
    trace: Option<Vec<Span>>,
}

impl Sim {
    /// A simulation of `scenario` (already scaled) with `config`; with `trace`, who ran where
    /// when is recorded.
    pub fn new(scenario: &Scenario, config: &SimConfig, trace: bool) -> anyhow::Result<Sim> {
        let topology = scenario.topology();
        let policy = scenario.policy.build(&scenario.params, &topology);
        let mut vcpus = Vec::new();
        let mut guests = Vec::new();
        for (vm, plan) in scenario.vms.iter().enumerate() {
            let first = vcpus.len();
            for index in 0..plan.vcpus {
                vcpus.push(Vcpu {
                    vm,
                    index,
                    pcpu: None,
                    epoch: 0,
                    mark: 0,
                    category: Category::Off,
                    since: 0,
                    times: VcpuTimes::default(),
                    thread: None,
                    activity: Activity::Off,
                    resume_to: Activity::Off,
                    kick_pending: false,
                    kicked: false,
                });
            }
            let guest = Guest::new(plan, first, config.grain)
                .with_context(|| format!("{}: VM {}", scenario.path.display(), plan.name))?;
            guests.push(guest);
        }
        let end = config.duration.unwrap_or((scenario.timeout_s * 1e9) as Ns);
        let mut sim = Sim {
            now: 0,
            end,
            config: config.clone(),
            kind: scenario.policy,
            policy,
            queue: EventQueue::new(),
            states: vec![State::Offline; vcpus.len()],
            applied_at: vec![None; vcpus.len()],
            vcpus,
            pcpus: vec![Pcpu::default(); scenario.cores.len()],
            live: guests.len(),
            guests,
            exited: None,
            applied: vec![None; scenario.cores.len()],
            restated: Vec::new(),
            dirty: Vec::new(),
            rng: config.seed,
            tick: None,
            tick_stale: true,
            policy_events: 0,
            preemptions: 0,
            handled: 0,
            reconfigurations: Vec::new(),
            trace: trace.then(Vec::new),
        };
        for (vm, plan) in scenario.vms.iter().enumerate() {
            let start = (START_SPREAD as f64 * sim.random()) as Ns;
            sim.queue.push(plan.start_delay_ms * sched::MS + start, Ev::Start(vm as u32));
        }
        if sim.policy.grant(0).is_some() {
            sim.queue.push(sched::DEMAND_POLL, Ev::Poll);
        }
        Ok(sim)
    }

    /// Runs until every VM has ended or the virtual time is up.
    pub fn run(mut self, scenario: &Scenario) -> (ScenarioRun, u64) {
        loop {
            let tick = self.next_tick();
            let event = self.queue.next_time();
            let at = match (tick, event) {
                (Some(tick), Some(event)) => tick.min(event),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => break,
            };
            if self.live == 0 {
                break;
            }
            if at >= self.end {
                self.now = self.end;
                break;
            }
            self.now = at.max(self.now);
            self.handled += 1;
            if tick == Some(at) && event.is_none_or(|event| event > at) {
                self.policy_event(Event::Tick);
                self.follow_grants();
                continue;
            }
            let (_, ev) = self.queue.pop().expect("an event is due");
            match ev {
                Ev::Start(vm) => self.boot(vm as usize),
                Ev::Vcpu { vcpu, epoch } => {
                    let vcpu = vcpu as usize;
                    if self.vcpus[vcpu].epoch == epoch && self.vcpus[vcpu].pcpu.is_some() {
                        self.step(vcpu);
                    }
                }
                Ev::Wake(vcpu) => self.wake(vcpu as usize),
                Ev::Preempt(pcpu) => self.preempt(pcpu as usize),
                Ev::Switch(pcpu) => self.switch(pcpu as usize),
                Ev::Poll => {
                    for vm in 0..self.guests.len() {
                        if self.guests[vm].running() {
                            let threads = self.guests[vm].demand();
                            self.policy_event(Event::Demand { vm, threads });
                        }
                    }
                    self.follow_grants();
                    self.queue.push(self.now + sched::DEMAND_POLL, Ev::Poll);
                }
            }
        }
        self.finish(scenario)
    }

    fn schedule(&mut self, at: Ns, ev: Ev) {
        self.queue.push(at, ev);
    }

    /// Schedules VCPU `v`'s next activity event `after` from now.
    fn schedule_vcpu(&mut self, v: usize, after: Ns) {
        let epoch = self.vcpus[v].epoch;
        self.queue.push(self.now + after, Ev::Vcpu { vcpu: v as u32, epoch });
    }

    /// Uniform in `[0, 1)`, from the seed (xorshift).
    fn random(&mut self) -> f64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `ns` times a random factor within `1 ± spread`.
    fn vary(&mut self, ns: Ns, spread: f64) -> Ns {
        if spread <= 0.0 || ns == 0 {
            return ns;
        }
        (ns as f64 * (1.0 + spread * (2.0 * self.random() - 1.0))) as Ns
    }

    /// A compute step's length: `ns` within `1 ± jitter`.
    fn jitter(&mut self, ns: Ns) -> Ns {
        self.vary(ns, self.config.jitter)
    }

    /// When the policy's next tick is delivered: up to a timer's lateness after it is due
    /// (at Linux's next tick under `host`). Asked of the policy only after it changed.
    fn next_tick(&mut self) -> Option<Ns> {
        if !self.tick_stale {
            return self.tick.map(|(_, at)| at);
        }
        self.tick_stale = false;
        let Some(due) = self.policy.next_tick() else {
            self.tick = None;
            return None;
        };
        if let Some((asked, at)) = self.tick
            && asked == due
        {
            return Some(at);
        }
        let at = if self.kind == PolicyKind::Host {
            // Linux notices a slice's end at its next tick, on every CPU at once.
            let tick = self.config.costs.host_tick.max(1);
            due.max(self.now).div_ceil(tick) * tick
        } else {
            due.max(self.now) + (self.config.costs.timer as f64 * self.random()) as Ns
        };
        self.tick = Some((due, at));
        Some(at)
    }

    /// Hands `event` to the policy and carries out its new assignment.
    fn policy_event(&mut self, event: Event) {
        self.policy.handle(self.now, event);
        self.policy_events += 1;
        self.tick_stale = true;
        self.apply();
    }

    /// Starts, preempts and switches pCPUs toward the policy's assignment. A pCPU's target is
    /// the VCPU assigned to it if that VCPU is runnable, so only the pCPUs whose assignment
    /// was written or whose VCPU changed state since the last look can have a new one.
    fn apply(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.clear();
        self.policy.drain_written(&mut dirty);
        let assignment = self.policy.assignment();
        for &p in &dirty {
            let (slot, applied) = (assignment[p], &mut self.applied[p]);
            if slot != *applied {
                if let Some(old) = *applied
                    && self.applied_at[old.index()] == Some(p)
                {
                    self.applied_at[old.index()] = None;
                }
                if let Some(new) = slot {
                    self.applied_at[new.index()] = Some(p);
                }
                *applied = slot;
            }
        }
        dirty.extend(self.restated.drain(..).filter_map(|v| self.applied_at[v]));
        dirty.sort_unstable();
        dirty.dedup();
        for &p in &dirty {
            let want = self.applied[p].map(VcpuId::index).filter(|&v| self.states[v] == State::Runnable);
            if self.pcpus[p].target == want {
                continue;
            }
            self.pcpus[p].target = want;
            match self.pcpus[p].running {
                Some(old) if Some(old) != want => {
                    if !self.pcpus[p].preempt_pending {
                        self.pcpus[p].preempt_pending = true;
                        self.schedule(self.now + self.config.costs.preempt, Ev::Preempt(p as u32));
                    }
                }
                Some(_) => {}
                None => self.switch_soon(p),
            }
        }
        self.dirty = dirty;
        if !self.policy.costop_changed().is_empty() {
            let changed: Vec<usize> = self.policy.costop_changed().iter().map(|v| v.index()).collect();
            for v in changed {
                self.recategorize(v);
            }
        }
    }

    /// Starts pCPU `p`'s target: at once for a VCPU back from the monitor on its own pCPU,
    /// else after the switch time.
    fn switch_soon(&mut self, p: usize) {
        let Some(v) = self.pcpus[p].target else { return };
        if self.vcpus[v].pcpu.is_some() {
            return; // still running elsewhere: its stop calls back
        }
        if self.exited == Some(v) {
            self.start(v, p);
        } else if !self.pcpus[p].switch_pending {
            self.pcpus[p].switch_pending = true;
            self.schedule(self.now + self.config.costs.switch, Ev::Switch(p as u32));
        }
    }

    fn preempt(&mut self, p: usize) {
        self.pcpus[p].preempt_pending = false;
        if let Some(old) = self.pcpus[p].running
            && self.pcpus[p].target != Some(old)
        {
            self.preemptions += 1;
            self.stop(old);
            self.preempted(old);
        }
        if self.pcpus[p].running.is_none() {
            self.switch_soon(p);
        }
    }

    fn switch(&mut self, p: usize) {
        self.pcpus[p].switch_pending = false;
        if self.pcpus[p].running.is_none()
            && let Some(v) = self.pcpus[p].target
            && self.vcpus[v].pcpu.is_none()
            && self.states[v] == State::Runnable
        {
            self.start(v, p);
        }
    }

    /// VCPU `v` starts running guest code on pCPU `p`.
    fn start(&mut self, v: usize, p: usize) {
        self.pcpus[p].running = Some(v);
        let vcpu = &mut self.vcpus[v];
        vcpu.pcpu = Some(p);
        self.guests[vcpu.vm].running |= 1 << vcpu.index;
        vcpu.mark = self.now;
        vcpu.epoch = vcpu.epoch.wrapping_add(1);
        self.recategorize(v);
        self.step(v);
    }

    /// VCPU `v` stops running guest code.
    fn stop(&mut self, v: usize) {
        let Some(p) = self.vcpus[v].pcpu else { return };
        self.sync(v);
        self.vcpus[v].pcpu = None;
        self.vcpus[v].epoch = self.vcpus[v].epoch.wrapping_add(1);
        self.pcpus[p].running = None;
        self.guests[self.vcpus[v].vm].running &= !(1 << self.vcpus[v].index);
        if let Some(trace) = &mut self.trace {
            // Still in `Run` since it started: `since` is when it did.
            let start_ns = self.vcpus[v].since;
            trace.push(Span { vcpu: v as u32, pcpu: Some(p as u32), start_ns, end_ns: self.now });
        }
        self.recategorize(v);
        // A pCPU waiting for this VCPU to leave another one can have it now. (Its own pCPU
        // waits for the policy: a VCPU stops there to block, go down or yield.)
        if let Some(q) = self.applied_at[v]
            && q != p
            && self.pcpus[q].target == Some(v)
            && self.pcpus[q].running.is_none()
        {
            self.switch_soon(q);
        }
        if self.pcpus[p].running.is_none() && self.pcpus[p].target != Some(v) {
            self.switch_soon(p);
        }
    }

    /// Moves VCPU `v` to policy state `state`.
    fn set_state(&mut self, v: usize, state: State) {
        self.states[v] = state;
        self.restated.push(v);
        self.recategorize(v);
    }

    /// Closes the VCPU's current time category and opens the one it is in now.
    fn recategorize(&mut self, v: usize) {
        let category = match self.states[v] {
            State::Offline => Category::Off,
            State::Blocked => Category::Wait,
            State::Runnable if self.vcpus[v].pcpu.is_some() => Category::Run,
            State::Runnable if self.policy.costopped(VcpuId(v as u32)) => Category::Costop,
            State::Runnable => Category::Ready,
        };
        let vcpu = &mut self.vcpus[v];
        if category == vcpu.category {
            return;
        }
        let spent = self.now - vcpu.since;
        match vcpu.category {
            Category::Run => vcpu.times.run_ns += spent,
            Category::Ready => vcpu.times.ready_ns += spent,
            Category::Costop => vcpu.times.costop_ns += spent,
            Category::Wait => vcpu.times.wait_ns += spent,
            Category::Off => {}
        }
        vcpu.category = category;
        vcpu.since = self.now;
    }

    /// A kick or vcpu_up arrives.
    fn wake(&mut self, v: usize) {
        self.vcpus[v].kicked = false;
        if self.states[v] == State::Runnable {
            self.vcpus[v].kick_pending = true;
            return;
        }
        let coming_up = self.states[v] == State::Offline;
        if coming_up {
            self.guests[self.vcpus[v].vm].growing = false;
        }
        if !self.wants_up(v) {
            return;
        }
        let vcpu = &mut self.vcpus[v];
        vcpu.activity = if coming_up { Activity::Idle { poll_until: 0 } } else { vcpu.resume_to };
        self.set_state(v, State::Runnable);
        self.policy_event(Event::Wake(VcpuId(v as u32)));
        if coming_up {
            self.check_followed(self.vcpus[v].vm);
        }
    }

    /// Publishes changed grants to the guests.
    fn follow_grants(&mut self) {
        for vm in 0..self.guests.len() {
            if let Some(grant) = self.policy.grant(vm)
                && grant != self.guests[vm].grant
                && self.guests[vm].running()
            {
                self.set_grant(vm, grant);
            }
        }
    }

    /// What the VMs did, in the shape a real run has.
    fn finish(mut self, scenario: &Scenario) -> (ScenarioRun, u64) {
        for v in 0..self.vcpus.len() {
            if self.vcpus[v].pcpu.is_some() {
                self.stop(v);
            }
            self.states[v] = State::Offline;
            self.recategorize(v);
        }
        let topology = scenario.topology();
        let mut vms = Vec::new();
        for (vm, plan) in scenario.vms.iter().enumerate() {
            let guest = &self.guests[vm];
            let ended = guest.end_time();
            let elapsed = guest.workload_time(self.now);
            let outcome = if ended.is_some() {
                format!("{} ended", plan.name)
            } else {
                format!("{} was still running at the end of simulated time", plan.name)
            };
            vms.push(VmRun {
                outcome,
                ok: true,
                timed_out: ended.is_none(),
                elapsed_s: elapsed as f64 / 1e9,
                record: Some(guest.record(plan, elapsed)),
                vcpu_times: topology.vcpus_of(vm).map(|v| self.vcpus[v.index()].times).collect(),
            });
        }
        let mut dispatch = DispatchReport {
            events: self.policy_events,
            preemptions: self.preemptions,
            reconfiguration_ns: Percentiles::of(std::mem::take(&mut self.reconfigurations)),
            costop_ns: self.vcpus.iter().map(|v| v.times.costop_ns).collect(),
            trace: self.trace.take().unwrap_or_default(),
            ..DispatchReport::default()
        };
        dispatch.preemption_ns = Percentiles {
            count: self.preemptions as usize,
            p50: self.config.costs.preempt,
            p99: self.config.costs.preempt,
        };
        (ScenarioRun { vms, elapsed_ns: self.now, simulated: true, dispatch }, self.handled)
    }
}

/// Most virtual time a reference run is simulated.
const REFERENCE_LIMIT: Ns = 10_000_000_000;

/// Simulates (once) the reference run of every VM of `scenario` into `references`.
fn measure_references(scenario: &Scenario, references: &mut References) -> anyhow::Result<()> {
    for vm in &scenario.vms {
        references.measure(scenario, vm, |solo| {
            // A workload without end reaches its steady rate long before this.
            let mut config = scenario.sim.clone();
            let end = config.duration.unwrap_or((scenario.timeout_s * 1e9) as Ns);
            config.duration = Some(end.min(REFERENCE_LIMIT));
            let (run, _) = Sim::new(solo, &config, false)?.run(solo);
            let elapsed_s = run.elapsed_ns as f64 / 1e9;
            let rate = run.vms[0].record.as_ref().map(Record::rate).filter(|rate| *rate > 0.0);
            rate.with_context(|| {
                format!("the simulated reference run of {} did no work in {elapsed_s:.1} s", vm.workload)
            })
        })?;
    }
    Ok(())
}

/// A finished simulation: its result, and the engine's events (its unit of work).
pub struct SimOutcome {
    pub result: ScenarioResult,
    pub events: u64,
}

/// Simulates `scenario` (its `[sim]` table applied) and sets each VM's result against its
/// simulated reference, like a real run.
pub fn simulate(scenario: &Scenario, references: &mut References, trace: bool) -> anyhow::Result<SimOutcome> {
    let (run, events) = Sim::new(scenario, &scenario.sim, trace)?.run(scenario);
    measure_references(scenario, references)?;
    Ok(SimOutcome { result: ScenarioResult::of(scenario, run, Some(references)), events })
}
