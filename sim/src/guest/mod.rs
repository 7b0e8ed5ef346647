//! The guest model: what the unikernel does on each VCPU of one VM.
//!
//! As in `guest-kernel`, threads are cooperative: a thread leaves its VCPU only when it ends,
//! blocks (a blocking barrier after its spin, an empty or full pipeline queue), or reaches a
//! yield point (a busy loop's chunk end, a spinning barrier's relax while another thread is
//! ready). A ticket-lock waiter never leaves its VCPU: it spins, or with PV locks it looks
//! at the VCPU of the thread being served after `pv_yield_us`, yields to it if preempted,
//! and from `pv_block_us` on blocks its VCPU until the unlocker kicks it. A queued-lock
//! waiter spins, or with `pvqspin` blocks its thread after its bound (see `lock::queued`),
//! leaving the VCPU to another thread or idle. An idle VCPU polls
//! for [`IDLE_POLL_NS`] and then blocks until kicked. A server's threads wait for requests
//! from the NIC, which VCPUs poll at their scheduler passes and whose backend kicks a blocked
//! VCPU (see [`serve`]). A VCPU beyond the grant goes down at its
//! next scheduling point, handing its thread over; when the grant rises, a VCPU at a scheduling
//! point brings the next one up by vcpu_up, which brings up the next, and so on (a thread
//! that never yields holds that up on its VCPU).
//!
//! The guest owns no time and no pCPU. The engine tells it what the monitor does (a VCPU
//! woken, started, stopped, preempted; a new grant), with a [`Monitor`] view of the time and
//! of its VCPUs' states; the guest answers with what it asks of the monitor: [`Effect`]s on
//! the side (kicks, vcpu_ups, looks again at a spinning VCPU) and, when a VCPU can go no
//! further at this instant, a [`Next`] (a block, a yield, a vcpu_down, its exit, or when to
//! look at it again). The engine carries these out in the order they were sent, which keeps
//! the order of events; and the guest can be driven alone, as its tests do. VCPUs are
//! numbered from 0 within the VM.

mod barrier;
mod family;
mod fifo;
mod grant;
mod lock;
mod nic;
mod serve;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use sched::Ns;
use sched::harness::State;
use tandem_core::scenario::VmPlan;
use tandem_core::sim_config::{Costs, SimConfig};
use workloads::Record;
use workloads::record::LockStats;
use workloads::timing::{IDLE_POLL_NS, PV_CHECK_PERIOD_NS};

use crate::model::{LockOps, Model, Served, Step};
use crate::rng::Rng;
use family::Locks;
use fifo::{Fifo, Passed};
use nic::Nic;

/// The monitor as the guest sees it during one call, and where the guest's effects go.
pub struct Monitor<'a> {
    pub now: Ns,
    /// The policy's state of each of the VM's VCPUs.
    pub states: &'a [State],
    /// The random stream compute steps draw their jitter from.
    pub rng: &'a mut Rng,
    /// What the guest sends on the side, in order.
    pub effects: &'a mut Vec<Effect>,
}

/// What the guest sends the monitor on the side while a VCPU goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A kick or a vcpu_up reaches VCPU `vcpu` after `after`.
    Wake { vcpu: usize, after: Ns },
    /// VCPU `vcpu`, running, is to be looked at again after `after` (instead of when it
    /// asked before): something it spins on changed.
    Poke { vcpu: usize, after: Ns },
    /// The guest's server listens: its load may start.
    Listening,
    /// The replies to `requests` requests of connection `conn` leave the guest.
    Replied { conn: usize, requests: u64 },
}

/// Where a running VCPU stops at this instant, and what it asks of the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look at it again after this long (a computation, a spin's bound or a poll ends).
    After(Ns),
    /// It waits for what another VCPU does, which pokes it (a spin without a bound).
    Wait,
    /// Its block hypercall reaches the monitor.
    Block,
    /// Its yield hypercall reaches the monitor, directed to VCPU `to` if any.
    Yield(Option<usize>),
    /// Its vcpu_down reaches the monitor.
    Down,
    /// Its thread was the last one: the guest exits and its VCPUs go down.
    Exit,
}

/// What a VCPU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activity {
    /// Offline, or its VM has ended.
    Off,
    /// No thread: polls for one until `poll_until` (0: not polling yet), then blocks.
    Idle { poll_until: Ns },
    /// Its thread is at a step boundary.
    Run,
    /// Its thread computes for `left` more; `ops` are done at the end.
    Compute { left: Ns, ops: u64 },
    /// Its thread computes until `until`, and every `slice` (next at `yield_at`) lets a ready
    /// thread have the VCPU.
    Busy { until: Ns, yield_at: Ns, slice: Ns },
    /// Its thread waits for the lock since `since` (a queued lock's waiter: since its current
    /// spin began).
    LockWait { since: Ns },
    /// Its thread waits at the barrier for generation `generation` to pass.
    BarrierWait { generation: u64, since: Ns, next_look: Ns },
    /// In a hypercall for `left` more, then `then`.
    Exit { left: Ns, then: Then },
    /// Blocked until kicked; then `resume_to`.
    Blocked,
}

/// What a hypercall does once the monitor has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Nothing more (a kick or vcpu_up already sent).
    Return,
    /// The guest's initialisation is done: bring up the granted VCPUs, start the workload.
    Boot,
    Block,
    Yield(Option<usize>),
    Down,
}

/// The guest's state of one of its VCPUs (`guest-kernel`'s per-CPU data, and what the
/// VCPU is in the middle of).
#[derive(Clone, Copy, Debug)]
struct PerCpu {
    /// The thread it runs.
    thread: Option<usize>,
    activity: Activity,
    /// What it goes back to after a hypercall (or a block).
    resume_to: Activity,
    /// When its activity's progress was last brought up to date.
    mark: Ns,
    /// A kick arrived while it was not blocked: its next block returns at once.
    kick_pending: bool,
    /// A kick is on its way to it: wakers kick another VCPU (the kicker takes the VCPU's
    /// idle mark, one kick per block).
    kicked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ThreadState {
    Ready,
    On(usize),
    Blocked,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Thread {
    pc: u64,
    state: ThreadState,
    /// The barrier generation it waits to pass, if it waits at the barrier.
    waiting: Option<u64>,
    ops: u64,
    /// Operations the lock was last taken for.
    batch: u64,
    /// A queued lock's waiter that blocked its thread and has not spun since: it waits for
    /// a kick, and its successor sees it stopped.
    halted: bool,
    /// Its queued-lock wait has blocked (a slow path): it blocks no more.
    slow_path: bool,
    /// Time its next compute step takes on top (queue traffic between VCPUs).
    debt: Ns,
}

/// One VM's guest.
pub struct Guest {
    model: Model,
    costs: Costs,
    /// Each compute step lasts its nominal time times a factor in `1 ± jitter`.
    jitter: f64,
    locks: Locks,
    /// Whether the shared page shows preempted VCPUs: under a policy the monitor does not
    /// enforce (`host`), Linux preempts VCPU threads without the monitor knowing.
    preemption_shown: bool,
    cpus: Vec<PerCpu>,
    /// Which of its VCPUs run guest code now, bit by VCPU (a VM has at most 64).
    running: u64,
    /// Which of its VCPUs hold a pCPU that a host thread has taken meanwhile: they run no
    /// guest code, but the monitor does not know, and the shared page shows them running.
    stolen: u64,
    threads: Vec<Thread>,
    /// Ready threads, oldest first.
    pool: VecDeque<usize>,
    holder: Option<usize>,
    /// The lock's waiters, in the order they are served (a queued lock: its head first).
    lock_queue: VecDeque<usize>,
    /// `pvqspin`: the head is blocked, and the unlock kicks it (Linux's `_Q_SLOW_VAL`).
    slow: bool,
    arrived: Vec<usize>,
    generation: u64,
    opened_at: Ns,
    queues: Vec<Fifo>,
    /// A server's NIC and sockets.
    nic: Nic,
    /// VCPUs the guest keeps online.
    grant: u32,
    /// When the grant last changed, until the VCPUs have followed.
    grant_changed: Option<Ns>,
    /// How long each grant change took to be followed.
    followed: Vec<Ns>,
    /// A vcpu_up is on its way.
    growing: bool,
    ops: u64,
    done: usize,
    started: Option<Ns>,
    ended: Option<Ns>,
    stats: LockStats,
}

impl Guest {
    /// The guest of `plan` under `config`; `preemption_shown`: whether the monitor enforces
    /// the policy, and so shows preempted VCPUs in the shared page.
    pub fn new(plan: &VmPlan, config: &SimConfig, preemption_shown: bool) -> anyhow::Result<Guest> {
        let model = Model::new(plan, config.grain)?;
        let (guest_args, _) = workloads::split_guest_args(plan.args.iter().map(String::as_str));
        let guest = workloads::Params::parse(workloads::GUEST_PARAMS, guest_args)
            .map_err(|error| anyhow::anyhow!("bad guest arguments: {error}"))?;
        let locks = Locks::of(&guest)?;
        let threads = model.threads;
        let queues = model.queues.iter().map(|&capacity| Fifo::new(capacity)).collect();
        let cpu = PerCpu {
            thread: None,
            activity: Activity::Off,
            resume_to: Activity::Off,
            mark: 0,
            kick_pending: false,
            kicked: false,
        };
        Ok(Guest {
            costs: config.costs,
            jitter: config.jitter,
            locks,
            preemption_shown,
            cpus: vec![cpu; plan.vcpus as usize],
            running: 0,
            stolen: 0,
            threads: vec![
                Thread {
                    pc: 0,
                    state: ThreadState::Ready,
                    waiting: None,
                    ops: 0,
                    batch: 1,
                    halted: false,
                    slow_path: false,
                    debt: 0,
                };
                threads
            ],
            pool: (0..threads).collect(),
            holder: None,
            lock_queue: VecDeque::new(),
            slow: false,
            arrived: Vec::new(),
            generation: 0,
            opened_at: 0,
            queues,
            nic: Nic::new(threads),
            grant: plan.vcpus,
            grant_changed: None,
            followed: Vec::new(),
            growing: false,
            ops: 0,
            done: 0,
            started: None,
            ended: None,
            stats: LockStats::ZERO,
            model,
        })
    }

    pub fn end_time(&self) -> Option<Ns> {
        self.ended
    }

    /// How long the workload has run by `now` (from its start to its end, if it ended).
    pub fn workload_time(&self, now: Ns) -> Ns {
        self.started.map_or(0, |started| self.ended.unwrap_or(now) - started)
    }

    /// Booted and not ended.
    pub fn running(&self) -> bool {
        self.started.is_some() && self.ended.is_none()
    }

    /// The load on it, if it is a server.
    pub fn served(&self) -> Option<Served> {
        self.model.served
    }

    /// Runnable threads (running, spinning or ready): what the guest reports as its demand.
    pub fn demand(&self) -> u32 {
        self.threads.iter().filter(|t| matches!(t.state, ThreadState::Ready | ThreadState::On(_))).count() as u32
    }

    /// What the workload would have reported after `elapsed`.
    pub fn record(&self, plan: &VmPlan, elapsed: Ns) -> Record {
        Record {
            workload: plan.workload.clone(),
            runtime: "sim".to_owned(),
            locks: plan.locks.clone(),
            cpus: plan.vcpus,
            params: self.model.params.clone(),
            elapsed_ns: elapsed,
            ops: self.ops,
            unit: self.model.workload.unit.to_owned(),
            checksum: 0,
            per_thread: self.threads.iter().map(|t| t.ops).collect(),
            lock_stats: self.model.lock.is_some().then_some(self.stats),
            latency: None,
        }
    }

    /// The VM starts with `grant` VCPUs granted (all, if the policy grants none); VCPU 0's
    /// wake-up follows.
    pub fn boot(&mut self, grant: Option<u32>) {
        self.grant = grant.unwrap_or(self.cpus.len() as u32);
    }

    /// A kick or vcpu_up reaches VCPU `x`, in policy state `state`. Returns whether it
    /// becomes runnable (it was blocked, or it comes up).
    pub fn wake(&mut self, x: usize, state: State) -> bool {
        if self.nic.kicked == Some(x) {
            self.nic.kicked = None;
        }
        let cpu = &mut self.cpus[x];
        cpu.kicked = false;
        match state {
            State::Runnable => {
                cpu.kick_pending = true;
                false
            }
            State::Blocked => {
                cpu.activity = cpu.resume_to;
                true
            }
            State::Offline => {
                self.growing = false;
                if self.ended.is_some() || x as u32 >= self.grant {
                    return false;
                }
                let cpu = &mut self.cpus[x];
                if self.started.is_none() {
                    // VCPU 0 initialises the guest.
                    cpu.activity = Activity::Exit { left: self.costs.boot, then: Then::Boot };
                    cpu.resume_to = Activity::Idle { poll_until: 0 };
                } else {
                    cpu.activity = Activity::Idle { poll_until: 0 };
                }
                true
            }
        }
    }

    /// VCPU `x` starts running guest code (again, after a host thread had its pCPU).
    pub fn started(&mut self, x: usize, now: Ns) {
        self.running |= 1 << x;
        self.stolen &= !(1 << x);
        self.cpus[x].mark = now;
    }

    /// VCPU `x` stops running guest code.
    pub fn stopped(&mut self, x: usize, now: Ns) {
        self.sync(x, now);
        self.running &= !(1 << x);
        self.stolen &= !(1 << x);
    }

    /// VCPU `x` holds its pCPU but runs no guest code until [`Guest::started`]: a host thread
    /// has the pCPU. Its siblings do not see it preempted.
    pub fn stolen(&mut self, x: usize, now: Ns) {
        self.sync(x, now);
        self.running &= !(1 << x);
        self.stolen |= 1 << x;
    }

    fn is_running(&self, x: usize) -> bool {
        self.running & (1 << x) != 0
    }

    /// Brings the progress of `x`'s activity up to `now`.
    fn sync(&mut self, x: usize, now: Ns) {
        if !self.is_running(x) {
            return;
        }
        let cpu = &mut self.cpus[x];
        let elapsed = now - cpu.mark;
        cpu.mark = now;
        if let Activity::Compute { left, .. } | Activity::Exit { left, .. } = &mut cpu.activity {
            *left -= elapsed.min(*left);
        }
    }

    /// Running VCPU `x` carries on with its guest work as far as it can at this instant.
    /// (Each activity's handler returns where `x` stops, or `None` to go on.)
    pub fn step(&mut self, x: usize, m: &mut Monitor) -> Next {
        debug_assert!(self.is_running(x), "VCPU {x} steps without running");
        self.sync(x, m.now);
        loop {
            let next = match self.cpus[x].activity {
                Activity::Off | Activity::Blocked => Some(Next::Wait),
                Activity::Exit { left, then } => self.hypercall_step(x, left, then, m),
                Activity::Compute { left, ops } => self.compute_step(x, left, ops),
                Activity::Busy { until, yield_at, slice } => self.busy_step(x, until, yield_at, slice, m),
                Activity::LockWait { since } => self.lock_wait(x, since, m),
                Activity::BarrierWait { generation, since, next_look } => {
                    self.barrier_wait(x, generation, since, next_look, m)
                }
                Activity::Idle { poll_until } => self.idle_step(x, poll_until, m),
                Activity::Run => self.run_step(x, m),
            };
            if let Some(next) = next {
                return next;
            }
        }
    }

    /// `x` is in a hypercall for `left` more, then `then`.
    fn hypercall_step(&mut self, x: usize, left: Ns, then: Then, m: &mut Monitor) -> Option<Next> {
        if left > 0 {
            return Some(Next::After(left));
        }
        self.cpus[x].activity = self.cpus[x].resume_to;
        match then {
            Then::Return => None,
            Then::Boot => {
                self.booted(m);
                None
            }
            Then::Block if self.should_block(x) => {
                self.cpus[x].activity = Activity::Blocked;
                Some(Next::Block)
            }
            Then::Block => None,
            Then::Yield(to) => Some(Next::Yield(to)),
            Then::Down if self.surplus(x) => {
                self.cpus[x].activity = Activity::Off;
                Some(Next::Down)
            }
            Then::Down => {
                self.cpus[x].activity = Activity::Idle { poll_until: 0 };
                None
            }
        }
    }

    /// `x`'s thread computes for `left` more, then `ops` are done.
    fn compute_step(&mut self, x: usize, left: Ns, ops: u64) -> Option<Next> {
        if left > 0 {
            return Some(Next::After(left));
        }
        let t = self.cpus[x].thread.expect("a computing VCPU has a thread");
        self.ops += ops;
        self.threads[t].ops += ops;
        self.threads[t].pc += 1;
        self.cpus[x].activity = Activity::Run;
        None
    }

    /// `x`'s thread computes until `until`, and lets a ready thread have the VCPU at
    /// `yield_at` and every `slice` after.
    fn busy_step(&mut self, x: usize, until: Ns, yield_at: Ns, slice: Ns, m: &mut Monitor) -> Option<Next> {
        if m.now >= until {
            let t = self.cpus[x].thread.expect("a busy VCPU has a thread");
            self.threads[t].pc += 1;
            self.cpus[x].activity = Activity::Run;
            return None;
        }
        let mut yield_at = yield_at;
        if m.now >= yield_at {
            if self.scheduling_point(x, m) {
                return None;
            }
            yield_at = m.now + slice;
            self.cpus[x].activity = Activity::Busy { until, yield_at, slice };
        }
        let next = if self.pool.is_empty() && !self.surplus(x) { until } else { until.min(yield_at) };
        Some(Next::After(next - m.now))
    }

    /// `x` has no thread: it goes down if beyond the grant, brings up a VCPU if the grant
    /// rose, polls the NIC and takes a ready thread, or polls until `poll_until` and then
    /// blocks.
    fn idle_step(&mut self, x: usize, poll_until: Ns, m: &mut Monitor) -> Option<Next> {
        if self.surplus(x) && x > 0 {
            self.hypercall(x, Then::Down, Activity::Off);
            return None;
        }
        if self.grow_due(m) {
            self.grow(x, m);
            return None;
        }
        self.poll_nic(x, m);
        if let Some(t) = self.pick() {
            self.threads[t].state = ThreadState::On(x);
            self.cpus[x].thread = Some(t);
            self.cpus[x].activity = self.resume_thread(t, m.now);
            return None;
        }
        if poll_until == 0 {
            self.cpus[x].activity = Activity::Idle { poll_until: m.now + IDLE_POLL_NS };
            return Some(Next::After(IDLE_POLL_NS));
        }
        if m.now < poll_until {
            return Some(Next::After(poll_until - m.now));
        }
        self.hypercall(x, Then::Block, Activity::Idle { poll_until: 0 });
        None
    }

    /// The thread on `x` starts its next step.
    fn run_step(&mut self, x: usize, m: &mut Monitor) -> Option<Next> {
        let t = self.cpus[x].thread.expect("a running VCPU has a thread");
        let Thread { pc, ops: done, batch, .. } = self.threads[t];
        let step = self.model.step(t, pc, done);
        let kicked = match step {
            Step::Compute { ns, ops } => {
                let left = m.rng.vary(ns, self.jitter) + std::mem::take(&mut self.threads[t].debt);
                self.cpus[x].activity = Activity::Compute { left, ops };
                false
            }
            Step::Busy { ns, slice } => {
                self.cpus[x].activity = Activity::Busy { until: self.opened_at + ns, yield_at: m.now + slice, slice };
                false
            }
            Step::Lock => {
                self.lock(x, t, done, m.now);
                false
            }
            Step::Critical | Step::Think => {
                let LockOps { cs, think, .. } = self.model.lock.expect("a locking model");
                let (ns, ops) = if step == Step::Critical { (cs * batch, 0) } else { (think * batch, batch) };
                let left = m.rng.vary(ns, self.jitter);
                self.cpus[x].activity = Activity::Compute { left, ops };
                false
            }
            Step::Unlock => self.unlock(t, m),
            Step::Barrier { ops } => self.arrive(x, t, ops, m),
            Step::Pop(q) => self.pop(x, t, q, m),
            Step::Push(q) => self.push(x, t, q, m),
            Step::Receive => {
                self.receive(x, t, m);
                false
            }
            Step::Execute { ns, done } => {
                let requests = self.nic.taken(t);
                let left = m.rng.vary(ns * requests, self.jitter);
                self.cpus[x].activity = Activity::Compute { left, ops: if done { requests } else { 0 } };
                false
            }
            Step::Reply => {
                if self.reply(x, t, m) {
                    self.exit(m.now);
                    return Some(Next::Exit);
                }
                false
            }
            Step::Done => {
                self.done += 1;
                self.release_thread(x, ThreadState::Done, m);
                if self.done == self.threads.len() {
                    self.exit(m.now);
                    return Some(Next::Exit);
                }
                false
            }
        };
        if kicked {
            // The kick was a hypercall: this VCPU pays for it before going on.
            self.hypercall(x, Then::Return, self.cpus[x].activity);
        }
        None
    }

    /// Every thread has ended: the guest exits and its VCPUs go down.
    fn exit(&mut self, now: Ns) {
        self.ended = Some(now);
        for cpu in &mut self.cpus {
            cpu.activity = Activity::Off;
        }
    }

    /// Starts a hypercall on `x`: an exit's cost, then `then`, then back to `resume_to`.
    fn hypercall(&mut self, x: usize, then: Then, resume_to: Activity) {
        self.cpus[x].activity = Activity::Exit { left: self.costs.exit, then };
        self.cpus[x].resume_to = resume_to;
    }

    /// Whether `x`, about to block, still has nothing to do: the check a real guest makes
    /// once more before it blocks, and a kick sent meanwhile makes the block return at once.
    fn should_block(&mut self, x: usize) -> bool {
        if std::mem::take(&mut self.cpus[x].kick_pending) {
            return false;
        }
        match self.cpus[x].activity {
            Activity::LockWait { .. } => self.holder != self.cpus[x].thread,
            Activity::Idle { .. } => self.pool.is_empty() && !self.surplus(x) && self.nic.quiet(),
            _ => true,
        }
    }

    /// Has running VCPU `x` looked at again after `after`.
    fn poke(&mut self, x: usize, after: Ns, m: &mut Monitor) {
        if self.is_running(x) {
            m.effects.push(Effect::Poke { vcpu: x, after });
        }
    }

    /// Sends a kick to blocked VCPU `x`; it arrives after the kicker's exit and the kick.
    fn kick(&mut self, x: usize, m: &mut Monitor) {
        self.cpus[x].kicked = true;
        m.effects.push(Effect::Wake { vcpu: x, after: self.costs.exit + self.costs.kick });
    }

    /// Thread `t` on `x` takes a batch from queue `q`, or blocks while it is empty. Returns
    /// whether it kicked a VCPU.
    fn pop(&mut self, x: usize, t: usize, q: usize, m: &mut Monitor) -> bool {
        // Stage q pushes into queue q, stage q + 1 pops from it.
        let passed = self.queues[q].pop(t);
        self.passed(x, t, q, passed, m)
    }

    /// Thread `t` on `x` puts a batch into queue `q`, or blocks while it is full. Returns
    /// whether it kicked a VCPU.
    fn push(&mut self, x: usize, t: usize, q: usize, m: &mut Monitor) -> bool {
        let passed = self.queues[q].push(t);
        self.passed(x, t, q + 1, passed, m)
    }

    /// Thread `t` on `x` passed a batch to or from the stage `partner`, waking the thread on
    /// the queue's other side if it was blocked there; or it blocks on the queue.
    fn passed(&mut self, x: usize, t: usize, partner: usize, passed: Passed, m: &mut Monitor) -> bool {
        let Passed::Through { woken } = passed else {
            self.release_thread(x, ThreadState::Blocked, m);
            return false;
        };
        self.threads[t].pc += 1;
        if let ThreadState::On(y) = self.threads[partner].state
            && y != x
            && self.is_running(y)
        {
            self.threads[t].debt += self.model.queue_crossing;
        }
        woken.is_some_and(|w| self.ready(w, m))
    }

    /// The thread on `x` leaves it (to the pool, blocked, or ended); `x` goes idle.
    fn release_thread(&mut self, x: usize, state: ThreadState, m: &mut Monitor) {
        let t = self.cpus[x].thread.take().expect("a VCPU releasing a thread has one");
        self.cpus[x].activity = Activity::Idle { poll_until: 0 };
        if state == ThreadState::Ready {
            self.ready(t, m);
        } else {
            self.threads[t].state = state;
        }
    }

    /// At a yield point: hands the thread on `x` to the pool if another thread is ready or
    /// `x` must go down. Returns whether it did.
    fn scheduling_point(&mut self, x: usize, m: &mut Monitor) -> bool {
        if self.grow_due(m) {
            self.grow(x, m);
            return true;
        }
        if self.pool.is_empty() && !self.surplus(x) {
            return false;
        }
        self.release_thread(x, ThreadState::Ready, m);
        true
    }

    /// Thread `t` becomes ready: an idle running VCPU takes it, or a blocked one is kicked.
    /// Returns whether a kick was sent.
    fn ready(&mut self, t: usize, m: &mut Monitor) -> bool {
        self.threads[t].state = ThreadState::Ready;
        self.pool.push_back(t);
        let grant = self.grant as usize;
        let idle = |cpus: &[PerCpu], y: usize| matches!(cpus[y].activity, Activity::Idle { .. }) && y < grant;
        let vcpus = 0..self.cpus.len();
        if let Some(y) = vcpus.clone().find(|&y| self.is_running(y) && idle(&self.cpus, y)) {
            self.poke(y, 0, m);
            return false;
        }
        if vcpus.clone().any(|y| m.states[y] == State::Runnable && idle(&self.cpus, y)) {
            return false; // a runnable idle VCPU will find it when it runs
        }
        let blocked = |y: usize| {
            m.states[y] == State::Blocked
                && !self.cpus[y].kicked
                && self.cpus[y].resume_to == (Activity::Idle { poll_until: 0 })
                && y < grant
        };
        match vcpus.clone().find(|&y| blocked(y)) {
            Some(y) => {
                self.kick(y, m);
                true
            }
            None => false,
        }
    }

    /// A ready thread for an idle VCPU: one with work first, barrier waiters last.
    fn pick(&mut self) -> Option<usize> {
        let at = self.pool.iter().position(|&t| !self.at_barrier(t)).or((!self.pool.is_empty()).then_some(0))?;
        self.pool.remove(at)
    }

    /// Whether VCPU `y` is preempted, as the shared page shows it (not when a host thread
    /// has its pCPU, which the monitor does not know).
    fn preempted_now(&self, y: usize, m: &Monitor) -> bool {
        self.preemption_shown && m.states[y] == State::Runnable && !self.is_running(y) && self.stolen & (1 << y) == 0
    }

    /// VCPU `y` was just preempted: its siblings' PV waiters notice within a check period.
    pub fn preempted(&mut self, y: usize, m: &mut Monitor) {
        if self.locks.pv_yield().is_none() {
            return;
        }
        // A lock waiter still spinning before its first look looks then anyway.
        let looking = m.now + PV_CHECK_PERIOD_NS;
        let mut running = self.running & !(1 << y);
        while running != 0 {
            let z = running.trailing_zeros() as usize;
            running &= running - 1;
            let notices = match self.cpus[z].activity {
                Activity::LockWait { since } => self.notices_preemption(z, y, since, looking),
                Activity::BarrierWait { .. } => true,
                _ => false,
            };
            if notices {
                self.poke(z, PV_CHECK_PERIOD_NS, m);
            }
        }
    }
}
