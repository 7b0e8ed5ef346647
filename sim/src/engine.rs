//! The engine: plays the dispatcher in virtual time. It delivers VCPU events and ticks to
//! the policy, and carries out its assignment with the monitor's costs ([`Costs`]): a
//! preempted VCPU runs on for the preemption latency, a VCPU given a pCPU starts after the
//! switch time. It alone owns the time, the event queue, the pCPUs, the VCPUs' states and
//! time categories, and the policy; each VM's [`Guest`] runs on the VCPUs it is given and
//! answers with what it asks of the monitor ([`Next`], [`Effect`]). For a server, it also
//! runs the monitor's load generator ([`Load`]) and the host thread that carries the traffic
//! between it and the guest's NIC ([`HostThread`]): a message reaches the host thread, which
//! carries it on a pCPU when it has one, delivering a request to the guest's NIC or a reply to
//! the client.
//!
//! The host thread is not the dispatcher's to schedule: as Linux runs the monitor's threads on
//! the cores the VCPU threads hold, it takes a pCPU for each message, one where no VCPU runs
//! if there is one, else one where a VCPU of its own VM runs (Linux wakes a thread on the
//! core of the one that woke it, and the guest's traffic wakes the host side), else any; among
//! those, the one a host thread left the longest ago, which spreads a busy host thread's time
//! over the pCPUs, as Linux shares a core between a VCPU thread and a thread that wakes often.
//! The VCPU there runs no guest code meanwhile. For the policy it still runs (the real
//! dispatcher does not see the host's threads either); its time counts as ready, as its
//! thread's CPU clock would say.
//!
//! [`Costs`]: tandem_core::sim_config::Costs

use std::ops::Range;

use anyhow::Context;
use sched::harness::State;
use sched::{Event, Ns, Policy, PolicyKind, VcpuId};
use tandem_core::metrics::{DispatchReport, Span, VcpuTimes};
use tandem_core::results::{ScenarioRun, VmRun};
use tandem_core::scenario::Scenario;
use tandem_core::sim_config::SimConfig;
use tandem_core::stats::Percentiles;
use workloads::Record;

use crate::guest::{Effect, Guest, Monitor, Next};
use crate::host::{HostThread, Message};
use crate::load::Load;
use crate::queue::EventQueue;
use crate::rng::Rng;

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
    /// VM `vm`'s load generator has something due (requests reach the host thread, or come
    /// due).
    Load(u32),
    /// Host threads with messages to carry look for pCPUs.
    HostWake,
    /// VM `vm`'s host thread has carried its message.
    HostDone(u32),
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

/// The engine's view of a VCPU.
struct Vcpu {
    vm: usize,
    /// Its number within its VM.
    index: usize,
    /// The pCPU it runs guest code on.
    pcpu: Option<usize>,
    /// Bumped whenever it stops or is re-evaluated: events of older epochs are stale.
    epoch: u32,
    category: Category,
    since: Ns,
    times: VcpuTimes,
}

/// A VM: its guest, its VCPUs among all, and if it is a server, the load on it and the host
/// thread that carries its traffic (none if that takes no host CPU).
struct Vm {
    vcpus: Range<usize>,
    guest: Guest,
    load: Option<Load>,
    host: Option<HostThread>,
}

#[derive(Clone, Copy, Default)]
struct Pcpu {
    running: Option<usize>,
    target: Option<usize>,
    preempt_pending: bool,
    switch_pending: bool,
    /// The VM whose host thread has it: its VCPU, if any, runs no guest code meanwhile.
    stolen_by: Option<usize>,
    /// When a host thread last left it.
    host_left: Ns,
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
    vms: Vec<Vm>,
    /// What a guest sent on the side during its last call (a buffer kept between calls).
    effects: Vec<Effect>,
    /// The requests a load delivers at once, as (connection, count) (likewise).
    arrivals: Vec<(usize, u64)>,
    /// VMs booted or still to boot that have not ended.
    live: usize,
    /// The VCPU now in the monitor for a hypercall: its pCPU passes on without preemption.
    exited: Option<usize>,
    /// A `HostWake` is due now.
    host_wake: bool,
    /// The policy's assignment when `apply` last looked at it, and where each VCPU was in it.
    applied: Vec<Option<VcpuId>>,
    applied_at: Vec<Option<usize>>,
    /// The VCPUs whose state changed since `apply` last looked.
    restated: Vec<usize>,
    /// The pCPUs `apply` has to look at (a buffer kept between events).
    dirty: Vec<usize>,
    rng: Rng,
    /// The policy's next tick as asked for, and when it is delivered (late, as timers are).
    tick: Option<(Ns, Ns)>,
    /// Whether the policy has handled an event since its next tick was asked for.
    tick_stale: bool,
    policy_events: u64,
    preemptions: u64,
    handled: u64,
    trace: Option<Vec<Span>>,
}

impl Sim {
    /// A simulation of `scenario` (already scaled) with `config`; with `trace`, who ran where
    /// when is recorded.
    pub fn new(scenario: &Scenario, config: &SimConfig, trace: bool) -> anyhow::Result<Sim> {
        let topology = scenario.topology();
        let policy = scenario.policy.build(&scenario.params, &topology);
        let mut vcpus = Vec::new();
        let mut vms = Vec::new();
        for (vm, plan) in scenario.vms.iter().enumerate() {
            let first = vcpus.len();
            for index in 0..plan.vcpus as usize {
                let times = VcpuTimes::default();
                vcpus.push(Vcpu { vm, index, pcpu: None, epoch: 0, category: Category::Off, since: 0, times });
            }
            let guest = Guest::new(plan, config, policy.gates())
                .with_context(|| format!("{}: VM {}", scenario.path.display(), plan.name))?;
            let load = guest.served().map(Load::new);
            let host = guest.served().filter(|s| s.request_host + s.reply_host > 0).map(HostThread::new);
            vms.push(Vm { vcpus: first..vcpus.len(), guest, load, host });
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
            live: vms.len(),
            vms,
            effects: Vec::new(),
            arrivals: Vec::new(),
            exited: None,
            host_wake: false,
            applied: vec![None; scenario.cores.len()],
            restated: Vec::new(),
            dirty: Vec::new(),
            rng: Rng::new(config.seed),
            tick: None,
            tick_stale: true,
            policy_events: 0,
            preemptions: 0,
            handled: 0,
            trace: trace.then(Vec::new),
        };
        for (vm, plan) in scenario.vms.iter().enumerate() {
            let start = (START_SPREAD as f64 * sim.rng.random()) as Ns;
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
                    for vm in 0..self.vms.len() {
                        if self.vms[vm].guest.running() {
                            let threads = self.vms[vm].guest.demand();
                            self.policy_event(Event::Demand { vm, threads });
                        }
                    }
                    self.follow_grants();
                    self.queue.push(self.now + sched::DEMAND_POLL, Ev::Poll);
                }
                Ev::Load(vm) => self.load_due(vm as usize),
                Ev::HostWake => {
                    self.host_wake = false;
                    self.place_host_threads();
                }
                Ev::HostDone(vm) => self.host_done(vm as usize),
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

    /// Calls VM `vm`'s guest with its view of the monitor, then carries out the effects it
    /// sent, in order.
    fn with_guest<R>(&mut self, vm: usize, call: impl FnOnce(&mut Guest, &mut Monitor) -> R) -> R {
        let Vm { vcpus, guest, .. } = &mut self.vms[vm];
        let first = vcpus.start;
        let states = &self.states[vcpus.clone()];
        let mut monitor = Monitor { now: self.now, states, rng: &mut self.rng, effects: &mut self.effects };
        let result = call(guest, &mut monitor);
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::Wake { vcpu, after } => self.queue.push(self.now + after, Ev::Wake((first + vcpu) as u32)),
                Effect::Poke { vcpu, after } => {
                    let v = first + vcpu;
                    let epoch = self.vcpus[v].epoch.wrapping_add(1);
                    self.vcpus[v].epoch = epoch;
                    self.queue.push(self.now + after, Ev::Vcpu { vcpu: v as u32, epoch });
                }
                Effect::Listening => {
                    let load = self.vms[vm].load.as_mut().expect("a server has a load");
                    load.start(self.now);
                    call_back(&mut self.queue, vm, load);
                }
                Effect::Replied { conn, requests } => self.hand_to_host(vm, Message::Reply { conn, requests }),
            }
        }
        self.effects = effects;
        result
    }

    /// VM `vm`'s load generator has something due: the requests that reach the host side now
    /// go to its host thread, until the guest has ended.
    fn load_due(&mut self, vm: usize) {
        let Vm { guest, load: Some(load), .. } = &mut self.vms[vm] else { return };
        if !guest.running() {
            return;
        }
        let mut arrivals = std::mem::take(&mut self.arrivals);
        load.due(self.now, &mut arrivals);
        call_back(&mut self.queue, vm, load);
        for (conn, requests) in arrivals.drain(..) {
            self.hand_to_host(vm, Message::Request { conn, requests });
        }
        self.arrivals = arrivals;
    }

    /// VM `vm`'s host thread has `message` to carry. If it is idle, it looks for a pCPU at this
    /// instant, after what the engine is doing (a guest's step may have sent the message, and
    /// the pCPU it takes may be that guest's). Without a host thread the message is carried
    /// at once.
    fn hand_to_host(&mut self, vm: usize, message: Message) {
        let Some(host) = &mut self.vms[vm].host else {
            self.carried(vm, message);
            return;
        };
        host.push(message);
        if host.wants_pcpu() && !self.host_wake {
            self.host_wake = true;
            self.queue.push(self.now, Ev::HostWake);
        }
    }

    /// VM `vm`'s host thread has carried `message`: requests reach the guest's NIC (unless it
    /// has ended), replies the client.
    fn carried(&mut self, vm: usize, message: Message) {
        match message {
            Message::Request { conn, requests } => {
                if self.vms[vm].guest.running() {
                    self.with_guest(vm, |guest, monitor| guest.deliver(conn, requests, monitor));
                }
            }
            Message::Reply { conn, requests } => {
                let load = self.vms[vm].load.as_mut().expect("a server has a load");
                load.replied(conn, requests, self.now);
                call_back(&mut self.queue, vm, load);
            }
        }
    }

    /// Idle host threads with a message to carry, in the order of their VMs, each take a pCPU
    /// no host thread has: one where no VCPU runs if there is one, else one where a VCPU of
    /// its VM runs, else any, and among those the one a host thread left the longest ago. The
    /// VCPU there runs no guest code until the message is carried. With every pCPU taken by
    /// host threads, the others wait for one to be left.
    fn place_host_threads(&mut self) {
        for vm in 0..self.vms.len() {
            if !self.vms[vm].host.as_ref().is_some_and(HostThread::wants_pcpu) {
                continue;
            }
            let free = (0..self.pcpus.len()).filter(|&p| self.pcpus[p].stolen_by.is_none());
            let other = |p: usize| self.pcpus[p].running.is_some_and(|v| self.vcpus[v].vm != vm);
            let Some(p) = free.min_by_key(|&p| (self.pcpus[p].running.is_some(), other(p), self.pcpus[p].host_left, p))
            else {
                return;
            };
            let cost = self.vms[vm].host.as_mut().expect("a host thread").start(p);
            self.pcpus[p].stolen_by = Some(vm);
            self.queue.push(self.now + cost, Ev::HostDone(vm as u32));
            if let Some(v) = self.pcpus[p].running {
                self.close_span(v, p);
                let vcpu = &mut self.vcpus[v];
                vcpu.epoch = vcpu.epoch.wrapping_add(1);
                self.vms[vcpu.vm].guest.stolen(vcpu.index, self.now);
                self.recategorize(v);
            }
        }
    }

    /// VM `vm`'s host thread has carried its message, which does what it does; the thread
    /// leaves its pCPU, whose VCPU runs guest code again, and idle host threads with messages
    /// take pCPUs.
    fn host_done(&mut self, vm: usize) {
        let (message, p) = self.vms[vm].host.as_mut().expect("a host thread").finish();
        self.carried(vm, message);
        self.pcpus[p].stolen_by = None;
        self.pcpus[p].host_left = self.now;
        if let Some(v) = self.pcpus[p].running {
            let vcpu = &self.vcpus[v];
            self.vms[vcpu.vm].guest.started(vcpu.index, self.now);
            self.recategorize(v);
            self.step(v);
        }
        self.place_host_threads();
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
            due.max(self.now) + (self.config.costs.timer as f64 * self.rng.random()) as Ns
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
            self.guest_preempted(old);
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

    /// VCPU `v` starts running guest code on pCPU `p` (once the host thread there, if any,
    /// leaves it).
    fn start(&mut self, v: usize, p: usize) {
        self.pcpus[p].running = Some(v);
        let vcpu = &mut self.vcpus[v];
        vcpu.pcpu = Some(p);
        vcpu.epoch = vcpu.epoch.wrapping_add(1);
        if self.pcpus[p].stolen_by.is_some() {
            self.vms[vcpu.vm].guest.stolen(vcpu.index, self.now);
            self.recategorize(v);
            return;
        }
        self.vms[vcpu.vm].guest.started(vcpu.index, self.now);
        self.recategorize(v);
        self.step(v);
    }

    /// VCPU `v` stops running guest code.
    fn stop(&mut self, v: usize) {
        let Some(p) = self.vcpus[v].pcpu else { return };
        let vcpu = &mut self.vcpus[v];
        self.vms[vcpu.vm].guest.stopped(vcpu.index, self.now);
        vcpu.pcpu = None;
        vcpu.epoch = vcpu.epoch.wrapping_add(1);
        self.pcpus[p].running = None;
        self.close_span(v, p);
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

    /// With a trace, records that VCPU `v` ran guest code on pCPU `p` until now, if it did:
    /// still in `Run` since it started or a host thread left its pCPU, `since` is when.
    fn close_span(&mut self, v: usize, p: usize) {
        if let Some(trace) = &mut self.trace
            && self.vcpus[v].category == Category::Run
        {
            let start_ns = self.vcpus[v].since;
            trace.push(Span { vcpu: v as u32, pcpu: Some(p as u32), start_ns, end_ns: self.now });
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
            // A VCPU whose pCPU a host thread has is ready, as its thread's CPU clock says.
            State::Runnable if self.vcpus[v].pcpu.is_some_and(|p| self.pcpus[p].stolen_by.is_none()) => Category::Run,
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

    /// VM `vm` starts: VCPU 0 comes up and initialises the guest.
    fn boot(&mut self, vm: usize) {
        self.vms[vm].guest.boot(self.policy.grant(vm));
        self.wake(self.vms[vm].vcpus.start);
    }

    /// A kick or vcpu_up arrives.
    fn wake(&mut self, v: usize) {
        let (vm, index, state) = (self.vcpus[v].vm, self.vcpus[v].index, self.states[v]);
        if !self.vms[vm].guest.wake(index, state) {
            return;
        }
        self.set_state(v, State::Runnable);
        self.policy_event(Event::Wake(VcpuId(v as u32)));
        if state == State::Offline {
            self.with_guest(vm, |guest, monitor| guest.online_changed(monitor));
        }
    }

    /// Running VCPU `v`'s guest carries on as far as it can at this instant; the engine
    /// carries out what it asks for then.
    fn step(&mut self, v: usize) {
        self.vcpus[v].epoch = self.vcpus[v].epoch.wrapping_add(1);
        let (vm, index) = (self.vcpus[v].vm, self.vcpus[v].index);
        match self.with_guest(vm, |guest, monitor| guest.step(index, monitor)) {
            Next::After(after) => self.schedule_vcpu(v, after),
            Next::Wait => {}
            Next::Block => self.block(v),
            Next::Yield(to) => self.yield_to(v, to.map(|to| self.vms[vm].vcpus.start + to)),
            Next::Down => self.down(v),
            Next::Exit => self.end_vm(vm),
        }
    }

    /// VCPU `v` was just preempted: its guest's PV waiters notice.
    fn guest_preempted(&mut self, v: usize) {
        let (vm, index) = (self.vcpus[v].vm, self.vcpus[v].index);
        self.with_guest(vm, |guest, monitor| guest.preempted(index, monitor));
    }

    /// `v`'s block hypercall reaches the monitor.
    fn block(&mut self, v: usize) {
        self.stop(v);
        self.set_state(v, State::Blocked);
        self.policy_event(Event::Block(VcpuId(v as u32)));
    }

    /// `v`'s yield hypercall reaches the monitor: the policy may give its pCPU to another.
    fn yield_to(&mut self, v: usize, to: Option<usize>) {
        let p = self.vcpus[v].pcpu.expect("a yielding VCPU runs");
        self.exited = Some(v);
        self.stop(v);
        self.policy_event(Event::Yield { vcpu: VcpuId(v as u32), to: to.map(|x| VcpuId(x as u32)) });
        if self.pcpus[p].target == Some(v) && self.pcpus[p].running.is_none() {
            self.start(v, p);
        }
        self.exited = None;
        if self.vcpus[v].pcpu.is_none() {
            self.guest_preempted(v);
        }
    }

    /// `v`'s vcpu_down reaches the monitor.
    fn down(&mut self, v: usize) {
        self.stop(v);
        self.set_state(v, State::Offline);
        self.policy_event(Event::Down(VcpuId(v as u32)));
        self.with_guest(self.vcpus[v].vm, |guest, monitor| guest.online_changed(monitor));
    }

    /// VM `vm`'s guest exited: its VCPUs go down.
    fn end_vm(&mut self, vm: usize) {
        self.live -= 1;
        for v in self.vms[vm].vcpus.clone() {
            if self.states[v] != State::Offline {
                self.stop(v);
                self.set_state(v, State::Offline);
                self.policy_event(Event::Down(VcpuId(v as u32)));
            }
        }
    }

    /// Publishes changed grants to the guests.
    fn follow_grants(&mut self) {
        for vm in 0..self.vms.len() {
            if let Some(grant) = self.policy.grant(vm)
                && grant != self.vms[vm].guest.grant()
                && self.vms[vm].guest.running()
            {
                self.with_guest(vm, |guest, monitor| guest.set_grant(grant, monitor));
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
            let guest = &self.vms[vm].guest;
            let ended = guest.end_time();
            let elapsed = guest.workload_time(self.now);
            let outcome = if ended.is_some() {
                format!("{} ended", plan.name)
            } else {
                format!("{} was still running at the end of simulated time", plan.name)
            };
            let latency = self.vms[vm].load.as_ref().and_then(Load::latency);
            vms.push(VmRun {
                outcome,
                ok: true,
                timed_out: ended.is_none(),
                elapsed_s: elapsed as f64 / 1e9,
                record: Some(Record { latency, ..guest.record(plan, elapsed) }),
                vcpu_times: topology.vcpus_of(vm).map(|v| self.vcpus[v.index()].times).collect(),
            });
        }
        let mut dispatch = DispatchReport {
            events: self.policy_events,
            preemptions: self.preemptions,
            reconfiguration_ns: Percentiles::of(self.vms.iter().flat_map(|vm| vm.guest.followed()).copied().collect()),
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

/// Has the engine call VM `vm`'s load generator when it next has something due.
fn call_back(queue: &mut EventQueue<Ev>, vm: usize, load: &mut Load) {
    if let Some(at) = load.next_call() {
        queue.push(at, Ev::Load(vm as u32));
    }
}
