//! The guest side of the simulation: what the unikernel does on each VCPU.
//!
//! As in `guest-kernel`, threads are cooperative: a thread leaves its VCPU only when it ends,
//! blocks (a blocking barrier after its spin, an empty or full pipeline queue), or reaches a
//! yield point (a busy loop's chunk end, a spinning barrier's relax while another thread is
//! ready). A ticket-lock waiter never leaves its VCPU: it spins, or with PV locks it looks
//! at the VCPU of the thread being served after `pv_yield_us`, yields to it if preempted,
//! and from `pv_block_us` on blocks its VCPU until the unlocker kicks it. An idle VCPU polls
//! for [`IDLE_POLL_NS`] and then blocks until kicked. A VCPU beyond the grant goes down at its
//! next scheduling point, handing its thread over; when the grant rises, a VCPU at a scheduling
//! point brings the next one up by vcpu_up, which brings up the next, and so on (a thread
//! that never yields holds that up on its VCPU).

use std::collections::VecDeque;

use sched::harness::State;
use sched::{Event, Ns, VcpuId};
use workloads::record::LockStats;
use workloads::timing::{IDLE_POLL_NS, PV_CHECK_PERIOD_NS, SPIN_BEFORE_BLOCK_NS};
use workloads::{BarrierKind, Record};

use super::Sim;
use super::model::{LockOps, Model, Step};
use tandem_core::scenario::VmPlan;

/// What a VCPU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Activity {
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
    /// Its thread waits for the ticket lock since `since`.
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
pub(super) enum Then {
    /// Nothing more (a kick or vcpu_up already sent).
    Return,
    /// The guest's initialisation is done: bring up the granted VCPUs, start the workload.
    Boot,
    Block,
    Yield(Option<usize>),
    Down,
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
    /// Time its next compute step takes on top (queue traffic between VCPUs).
    debt: Ns,
}

/// A pipeline queue, in batches.
#[derive(Clone, Debug, Default)]
struct Fifo {
    items: u64,
    capacity: u64,
    poppers: VecDeque<usize>,
    pushers: VecDeque<usize>,
}

/// One VM's guest.
pub(super) struct Guest {
    model: Model,
    /// PV locks: (yield after, block after).
    pv: Option<(Ns, Ns)>,
    first: usize,
    vcpus: u32,
    threads: Vec<Thread>,
    pool: VecDeque<usize>,
    holder: Option<usize>,
    lock_queue: VecDeque<usize>,
    arrived: Vec<usize>,
    generation: u64,
    opened_at: Ns,
    queues: Vec<Fifo>,
    /// VCPUs the guest keeps online.
    pub(super) grant: u32,
    /// Which of its VCPUs run guest code now, bit by VCPU index (a VM has at most 64).
    pub(super) running: u64,
    /// When the grant last changed, until the VCPUs have followed.
    grant_changed: Option<Ns>,
    /// A vcpu_up is on its way.
    pub(super) growing: bool,
    ops: u64,
    done: usize,
    started: Option<Ns>,
    ended: Option<Ns>,
    stats: LockStats,
}

impl Guest {
    pub(super) fn new(plan: &VmPlan, first: usize, grain: Ns) -> anyhow::Result<Guest> {
        let model = Model::new(plan, grain)?;
        let (guest_args, _) = workloads::split_guest_args(plan.args.iter().map(String::as_str));
        let guest = workloads::Params::parse(workloads::GUEST_PARAMS, guest_args)
            .map_err(|error| anyhow::anyhow!("bad guest arguments: {error}"))?;
        let pv =
            (guest.str("locks") == "pv").then(|| (guest.u64("pv_yield_us") * 1_000, guest.u64("pv_block_us") * 1_000));
        let threads = model.threads;
        let queues = model.queues.iter().map(|&capacity| Fifo { capacity, ..Fifo::default() }).collect();
        Ok(Guest {
            pv,
            first,
            vcpus: plan.vcpus,
            threads: vec![
                Thread { pc: 0, state: ThreadState::Ready, waiting: None, ops: 0, batch: 1, debt: 0 };
                threads
            ],
            pool: (0..threads).collect(),
            holder: None,
            lock_queue: VecDeque::new(),
            arrived: Vec::new(),
            generation: 0,
            opened_at: 0,
            queues,
            grant: plan.vcpus,
            running: 0,
            grant_changed: None,
            growing: false,
            ops: 0,
            done: 0,
            started: None,
            ended: None,
            stats: LockStats::ZERO,
            model,
        })
    }

    pub(super) fn end_time(&self) -> Option<Ns> {
        self.ended
    }

    /// How long the workload has run by `now` (from its start to its end, if it ended).
    pub(super) fn workload_time(&self, now: Ns) -> Ns {
        self.started.map_or(0, |started| self.ended.unwrap_or(now) - started)
    }

    /// Booted and not ended.
    pub(super) fn running(&self) -> bool {
        self.started.is_some() && self.ended.is_none()
    }

    /// Runnable threads (running, spinning or ready): what the guest reports as its demand.
    pub(super) fn demand(&self) -> u32 {
        self.threads.iter().filter(|t| matches!(t.state, ThreadState::Ready | ThreadState::On(_))).count() as u32
    }

    /// What the workload would have reported after `elapsed`.
    pub(super) fn record(&self, plan: &VmPlan, elapsed: Ns) -> Record {
        Record {
            workload: plan.workload.clone(),
            runtime: "sim".to_owned(),
            locks: plan.locks.clone(),
            cpus: plan.vcpus,
            params: self.model.params.clone(),
            elapsed_ns: elapsed,
            ops: self.ops,
            unit: self.model.unit.to_owned(),
            checksum: 0,
            per_thread: self.threads.iter().map(|t| t.ops).collect(),
            lock_stats: self.model.lock.is_some().then_some(self.stats),
        }
    }

    /// Whether thread `t` still waits at the barrier (its generation has not passed).
    fn at_barrier(&self, t: usize) -> bool {
        self.threads[t].waiting == Some(self.generation)
    }

    /// A ready thread for an idle VCPU: one with work first, barrier waiters last.
    fn pick(&mut self) -> Option<usize> {
        let at = self.pool.iter().position(|&t| !self.at_barrier(t)).or((!self.pool.is_empty()).then_some(0))?;
        self.pool.remove(at)
    }

    /// Whether a thread with work (not a barrier waiter) is ready.
    fn work_ready(&self) -> bool {
        self.pool.iter().any(|&t| !self.at_barrier(t))
    }
}

impl Sim {
    /// VM `vm` starts: VCPU 0 comes up and initialises the guest.
    pub(super) fn boot(&mut self, vm: usize) {
        let guest = &mut self.guests[vm];
        guest.grant = self.policy.grant(vm).unwrap_or(guest.vcpus);
        let first = guest.first;
        self.wake(first);
        self.vcpus[first].activity = Activity::Exit { left: self.config.costs.boot, then: Then::Boot };
        self.vcpus[first].resume_to = Activity::Idle { poll_until: 0 };
    }

    /// VM `vm`'s guest is initialised: VCPU 0 brings up the others one vcpu_up at a time,
    /// and the workload starts.
    fn booted(&mut self, vm: usize) {
        let guest = &mut self.guests[vm];
        guest.started = Some(self.now);
        guest.opened_at = self.now;
        let (first, grant) = (guest.first, guest.grant);
        for (n, v) in (first + 1..first + grant as usize).enumerate() {
            let up = (n as Ns + 1) * self.config.costs.exit + self.config.costs.up;
            self.schedule(self.now + up, super::Ev::Wake(v as u32));
        }
    }

    /// Whether a kick or vcpu_up for VCPU `v` brings it up.
    pub(super) fn wants_up(&self, v: usize) -> bool {
        let guest = &self.guests[self.vcpus[v].vm];
        match self.states[v] {
            State::Offline => guest.ended.is_none() && self.vcpus[v].index < guest.grant,
            State::Blocked => true,
            State::Runnable => false,
        }
    }

    /// Brings the progress of `v`'s activity up to now.
    pub(super) fn sync(&mut self, v: usize) {
        let vcpu = &mut self.vcpus[v];
        if vcpu.pcpu.is_none() {
            return;
        }
        let elapsed = self.now - vcpu.mark;
        vcpu.mark = self.now;
        if let Activity::Compute { left, .. } | Activity::Exit { left, .. } = &mut vcpu.activity {
            *left -= elapsed.min(*left);
        }
    }

    /// Re-evaluates running VCPU `v` after `after` (its older events go stale).
    fn poke(&mut self, v: usize, after: Ns) {
        if self.vcpus[v].pcpu.is_some() {
            self.vcpus[v].epoch = self.vcpus[v].epoch.wrapping_add(1);
            self.schedule_vcpu(v, after);
        }
    }

    /// A VCPU whose index is at or above its VM's grant.
    fn surplus(&self, v: usize) -> bool {
        self.vcpus[v].index >= self.guests[self.vcpus[v].vm].grant
    }

    /// Starts a hypercall on `v`: `cost`, then `then`, then back to `resume_to`.
    fn hypercall(&mut self, v: usize, then: Then, resume_to: Activity) {
        self.vcpus[v].activity = Activity::Exit { left: self.config.costs.exit, then };
        self.vcpus[v].resume_to = resume_to;
    }

    /// Running VCPU `v` carries on with its guest work as far as it can at this instant, and
    /// schedules the moment it next needs attention.
    pub(super) fn step(&mut self, v: usize) {
        self.vcpus[v].epoch = self.vcpus[v].epoch.wrapping_add(1);
        self.sync(v);
        let vm = self.vcpus[v].vm;
        loop {
            if self.vcpus[v].pcpu.is_none() {
                return;
            }
            match self.vcpus[v].activity {
                Activity::Off | Activity::Blocked => return,
                Activity::Exit { left, then } => {
                    if left > 0 {
                        return self.schedule_vcpu(v, left);
                    }
                    self.vcpus[v].activity = self.vcpus[v].resume_to;
                    match then {
                        Then::Return => {}
                        Then::Boot => self.booted(vm),
                        Then::Block if self.should_block(v) => return self.block(v),
                        Then::Block => {}
                        Then::Yield(to) => return self.yield_to(v, to),
                        Then::Down if self.surplus(v) => return self.down(v),
                        Then::Down => self.vcpus[v].activity = Activity::Idle { poll_until: 0 },
                    }
                }
                Activity::Compute { left, ops } => {
                    if left > 0 {
                        return self.schedule_vcpu(v, left);
                    }
                    let t = self.vcpus[v].thread.expect("a computing VCPU has a thread");
                    let guest = &mut self.guests[vm];
                    guest.ops += ops;
                    guest.threads[t].ops += ops;
                    guest.threads[t].pc += 1;
                    self.vcpus[v].activity = Activity::Run;
                }
                Activity::Busy { until, yield_at, slice } => {
                    if self.now >= until {
                        let t = self.vcpus[v].thread.expect("a busy VCPU has a thread");
                        self.guests[vm].threads[t].pc += 1;
                        self.vcpus[v].activity = Activity::Run;
                        continue;
                    }
                    if self.now >= yield_at {
                        if self.scheduling_point(v) {
                            continue;
                        }
                        self.vcpus[v].activity = Activity::Busy { until, yield_at: self.now + slice, slice };
                    }
                    let Activity::Busy { yield_at, .. } = self.vcpus[v].activity else { unreachable!() };
                    let next =
                        if self.guests[vm].pool.is_empty() && !self.surplus(v) { until } else { until.min(yield_at) };
                    return self.schedule_vcpu(v, next - self.now);
                }
                Activity::LockWait { since } => {
                    let t = self.vcpus[v].thread.expect("a lock waiter has a thread");
                    if self.guests[vm].holder == Some(t) {
                        self.guests[vm].threads[t].pc += 1;
                        self.vcpus[v].activity = Activity::Run;
                        continue;
                    }
                    let Some((yield_after, block_after)) = self.guests[vm].pv else { return };
                    if self.now < since + yield_after {
                        return self.schedule_vcpu(v, since + yield_after - self.now);
                    }
                    let owner = self.guests[vm].holder.and_then(|h| match self.guests[vm].threads[h].state {
                        ThreadState::On(x) => Some(x),
                        _ => None,
                    });
                    if self.now >= since + block_after {
                        self.guests[vm].stats.blocks += 1;
                        self.hypercall(v, Then::Block, Activity::LockWait { since });
                    } else if let Some(owner) = owner.filter(|&x| x != v && self.preempted_now(x)) {
                        self.guests[vm].stats.directed_yields += 1;
                        self.hypercall(v, Then::Yield(Some(owner)), Activity::LockWait { since });
                    } else {
                        return self.schedule_vcpu(v, since + block_after - self.now);
                    }
                }
                Activity::BarrierWait { generation, since, next_look } => {
                    let t = self.vcpus[v].thread.expect("a barrier waiter has a thread");
                    if self.guests[vm].generation != generation {
                        self.pass_barrier(vm, t);
                        self.vcpus[v].activity = Activity::Run;
                        continue;
                    }
                    // relax(): let a thread with work have this VCPU.
                    if self.guests[vm].work_ready() || self.surplus(v) {
                        self.release_thread(v, ThreadState::Ready);
                        continue;
                    }
                    let blocking = self.guests[vm].model.barrier == BarrierKind::SpinThenBlock;
                    if blocking && self.now >= since + SPIN_BEFORE_BLOCK_NS {
                        self.release_thread(v, ThreadState::Blocked);
                        continue;
                    }
                    let mut next = if blocking { since + SPIN_BEFORE_BLOCK_NS } else { Ns::MAX };
                    if let Some((yield_after, _)) = self.guests[vm].pv
                        && self.now >= next_look
                    {
                        let next_look = self.now + yield_after;
                        let resume = Activity::BarrierWait { generation, since, next_look };
                        if let Some(sibling) = self.preempted_sibling(v) {
                            self.hypercall(v, Then::Yield(Some(sibling)), resume);
                            continue;
                        }
                        self.vcpus[v].activity = resume;
                    }
                    if let Activity::BarrierWait { next_look, .. } = self.vcpus[v].activity
                        && self.guests[vm].pv.is_some()
                    {
                        next = next.min(next_look);
                    }
                    if next != Ns::MAX {
                        next = next.max(self.now);
                        return self.schedule_vcpu(v, next - self.now);
                    }
                    return;
                }
                Activity::Idle { poll_until } => {
                    if self.surplus(v) && self.vcpus[v].index > 0 {
                        self.hypercall(v, Then::Down, Activity::Off);
                        continue;
                    }
                    if self.grow_due(vm) {
                        self.grow(v);
                        continue;
                    }
                    if let Some(t) = self.guests[vm].pick() {
                        self.guests[vm].threads[t].state = ThreadState::On(v);
                        self.vcpus[v].thread = Some(t);
                        self.vcpus[v].activity = self.resume_thread(vm, t);
                        continue;
                    }
                    if poll_until == 0 {
                        self.vcpus[v].activity = Activity::Idle { poll_until: self.now + IDLE_POLL_NS };
                        return self.schedule_vcpu(v, IDLE_POLL_NS);
                    }
                    if self.now < poll_until {
                        return self.schedule_vcpu(v, poll_until - self.now);
                    }
                    self.hypercall(v, Then::Block, Activity::Idle { poll_until: 0 });
                }
                Activity::Run => {
                    if self.run_step(v) {
                        return;
                    }
                }
            }
        }
    }

    /// What a thread picked up by a VCPU goes on with.
    fn resume_thread(&mut self, vm: usize, t: usize) -> Activity {
        let thread = self.guests[vm].threads[t];
        match thread.waiting {
            Some(generation) if generation == self.guests[vm].generation => {
                Activity::BarrierWait { generation, since: self.now, next_look: self.now }
            }
            Some(_) => {
                self.pass_barrier(vm, t);
                Activity::Run
            }
            None => Activity::Run,
        }
    }

    fn pass_barrier(&mut self, vm: usize, t: usize) {
        let thread = &mut self.guests[vm].threads[t];
        thread.waiting = None;
        thread.pc += 1;
    }

    /// The thread on `v` starts its next step. Returns whether `v` is done for this instant.
    fn run_step(&mut self, v: usize) -> bool {
        let vm = self.vcpus[v].vm;
        let t = self.vcpus[v].thread.expect("a running VCPU has a thread");
        let Thread { pc, ops: done, batch, .. } = self.guests[vm].threads[t];
        let mut kicked = false;
        let step = self.guests[vm].model.step(t, pc, done);
        let guest = &mut self.guests[vm];
        match step {
            Step::Compute { ns, ops } => {
                let left = self.jitter(ns) + std::mem::take(&mut self.guests[vm].threads[t].debt);
                self.vcpus[v].activity = Activity::Compute { left, ops };
            }
            Step::Busy { ns, slice } => {
                self.vcpus[v].activity =
                    Activity::Busy { until: guest.opened_at + ns, yield_at: self.now + slice, slice };
            }
            Step::Lock => {
                let LockOps { ops, batch: most, .. } = guest.model.lock.expect("a locking model");
                guest.stats.acquisitions += 1;
                if guest.holder.is_none() {
                    guest.holder = Some(t);
                    guest.threads[t].pc += 1;
                    guest.threads[t].batch = most.min(ops - done);
                } else {
                    guest.stats.contended += 1;
                    guest.threads[t].batch = 1;
                    guest.lock_queue.push_back(t);
                    self.vcpus[v].activity = Activity::LockWait { since: self.now };
                }
            }
            Step::Critical | Step::Think => {
                let LockOps { cs, think, .. } = guest.model.lock.expect("a locking model");
                let (ns, ops) = if step == Step::Critical { (cs * batch, 0) } else { (think * batch, batch) };
                let left = self.jitter(ns);
                self.vcpus[v].activity = Activity::Compute { left, ops };
            }
            Step::Unlock => {
                guest.threads[t].pc += 1;
                guest.holder = guest.lock_queue.pop_front();
                if let Some(next) = guest.holder
                    && let ThreadState::On(x) = guest.threads[next].state
                {
                    // Handed to a running VCPU, the lock passes on at cache speed: a batch
                    // again. Handed to a preempted or blocked one, it waits for that VCPU
                    // for each operation.
                    if self.vcpus[x].pcpu.is_some() {
                        let LockOps { ops, batch: most, .. } = guest.model.lock.expect("a locking model");
                        guest.threads[next].batch = most.min(ops - guest.threads[next].ops);
                    }
                    match self.states[x] {
                        // Waiters looking at the ticket's owner see it preempted at their
                        // next check, as when a running owner is preempted.
                        State::Runnable if self.preempted_now(x) => self.preempted(x),
                        State::Runnable => self.poke(x, 0),
                        State::Blocked => {
                            self.guests[vm].stats.kicks += 1;
                            self.kick(x);
                            kicked = true;
                        }
                        State::Offline => {}
                    }
                }
            }
            Step::Barrier { ops } => {
                guest.arrived.push(t);
                if guest.arrived.len() == guest.threads.len() {
                    guest.generation += 1;
                    guest.opened_at = self.now;
                    guest.ops += ops;
                    guest.threads[t].ops += ops;
                    guest.threads[t].pc += 1;
                    for w in std::mem::take(&mut guest.arrived) {
                        if w == t {
                            continue;
                        }
                        match self.guests[vm].threads[w].state {
                            ThreadState::On(x) => self.poke(x, 0),
                            ThreadState::Blocked => kicked |= self.ready(vm, w),
                            ThreadState::Ready | ThreadState::Done => {}
                        }
                    }
                } else {
                    let generation = guest.generation;
                    guest.threads[t].waiting = Some(generation);
                    let next_look = self.now + guest.pv.map_or(0, |(yield_after, _)| yield_after);
                    self.vcpus[v].activity = Activity::BarrierWait { generation, since: self.now, next_look };
                }
            }
            Step::Pop(q) | Step::Push(q) => {
                let fifo = &mut guest.queues[q];
                let pop = matches!(step, Step::Pop(_));
                let possible = if pop { fifo.items > 0 } else { fifo.items < fifo.capacity };
                if possible {
                    let woken = if pop {
                        fifo.items -= 1;
                        fifo.pushers.pop_front()
                    } else {
                        fifo.items += 1;
                        fifo.poppers.pop_front()
                    };
                    guest.threads[t].pc += 1;
                    // Stage q pushes into queue q, stage q + 1 pops from it.
                    let partner = if pop { q } else { q + 1 };
                    if let ThreadState::On(x) = guest.threads[partner].state
                        && x != v
                        && self.vcpus[x].pcpu.is_some()
                    {
                        let guest = &mut self.guests[vm];
                        guest.threads[t].debt += guest.model.queue_crossing;
                    }
                    if let Some(w) = woken {
                        kicked |= self.ready(vm, w);
                    }
                } else {
                    if pop {
                        fifo.poppers.push_back(t)
                    } else {
                        fifo.pushers.push_back(t)
                    }
                    self.release_thread(v, ThreadState::Blocked);
                }
            }
            Step::Done => {
                guest.done += 1;
                self.release_thread(v, ThreadState::Done);
                if self.guests[vm].done == self.guests[vm].threads.len() {
                    self.end_vm(vm);
                    return true;
                }
            }
        }
        if kicked {
            // The kick was a hypercall: this VCPU pays for it before going on.
            self.hypercall(v, Then::Return, self.vcpus[v].activity);
        }
        false
    }

    /// The thread on `v` leaves it (to the pool, blocked, or ended); `v` goes idle.
    fn release_thread(&mut self, v: usize, state: ThreadState) {
        let vm = self.vcpus[v].vm;
        let t = self.vcpus[v].thread.take().expect("a VCPU releasing a thread has one");
        self.vcpus[v].activity = Activity::Idle { poll_until: 0 };
        if state == ThreadState::Ready {
            self.ready(vm, t);
        } else {
            self.guests[vm].threads[t].state = state;
        }
    }

    /// At a yield point: hands the thread on `v` to the pool if another thread is ready or
    /// `v` must go down. Returns whether it did.
    fn scheduling_point(&mut self, v: usize) -> bool {
        let vm = self.vcpus[v].vm;
        if self.grow_due(vm) {
            self.grow(v);
            return true;
        }
        if self.guests[vm].pool.is_empty() && !self.surplus(v) {
            return false;
        }
        self.release_thread(v, ThreadState::Ready);
        true
    }

    /// Whether VM `vm` has fewer VCPUs online than its grant and none on its way up.
    fn grow_due(&self, vm: usize) -> bool {
        let guest = &self.guests[vm];
        guest.grant_changed.is_some() && !guest.growing && self.online(vm) < guest.grant
    }

    /// VCPUs of VM `vm` online.
    fn online(&self, vm: usize) -> u32 {
        let guest = &self.guests[vm];
        (guest.first..guest.first + guest.vcpus as usize).filter(|&x| self.states[x] != State::Offline).count() as u32
    }

    /// `v` brings up the next VCPU of its VM (the lowest offline one): a vcpu_up hypercall.
    fn grow(&mut self, v: usize) {
        let vm = self.vcpus[v].vm;
        let next = self.guests[vm].first + self.online(vm) as usize;
        self.guests[vm].growing = true;
        self.schedule(self.now + self.config.costs.exit + self.config.costs.up, super::Ev::Wake(next as u32));
        self.hypercall(v, Then::Return, self.vcpus[v].activity);
    }

    /// Thread `t` becomes ready: an idle running VCPU takes it, or a blocked one is kicked.
    /// Returns whether a kick was sent.
    fn ready(&mut self, vm: usize, t: usize) -> bool {
        let guest = &mut self.guests[vm];
        guest.threads[t].state = ThreadState::Ready;
        guest.pool.push_back(t);
        let vcpus = guest.first..guest.first + guest.vcpus as usize;
        let grant = guest.grant;
        let idle = |s: &Sim, x: usize| matches!(s.vcpus[x].activity, Activity::Idle { .. }) && s.vcpus[x].index < grant;
        if let Some(x) = vcpus.clone().find(|&x| self.vcpus[x].pcpu.is_some() && idle(self, x)) {
            self.poke(x, 0);
            return false;
        }
        if vcpus.clone().any(|x| self.states[x] == State::Runnable && idle(self, x)) {
            return false; // a runnable idle VCPU will find it when it runs
        }
        let blocked = |s: &Sim, x: usize| {
            s.states[x] == State::Blocked
                && !s.vcpus[x].kicked
                && s.vcpus[x].resume_to == (Activity::Idle { poll_until: 0 })
                && s.vcpus[x].index < grant
        };
        match vcpus.clone().find(|&x| blocked(self, x)) {
            Some(x) => {
                self.kick(x);
                true
            }
            None => false,
        }
    }

    /// Sends a kick to blocked VCPU `x`; it arrives after the kicker's exit and the kick.
    fn kick(&mut self, x: usize) {
        self.vcpus[x].kicked = true;
        self.schedule(self.now + self.config.costs.exit + self.config.costs.kick, super::Ev::Wake(x as u32));
    }

    /// Whether VCPU `x` is preempted, as the shared page shows it: under a policy the
    /// monitor does not enforce (`host`), Linux preempts VCPU threads without the monitor
    /// knowing, and the page never says so.
    fn preempted_now(&self, x: usize) -> bool {
        self.policy.gates() && self.states[x] == State::Runnable && self.vcpus[x].pcpu.is_none()
    }

    fn preempted_sibling(&self, v: usize) -> Option<usize> {
        let guest = &self.guests[self.vcpus[v].vm];
        (guest.first..guest.first + guest.vcpus as usize).find(|&x| x != v && self.preempted_now(x))
    }

    /// VCPU `x` was just preempted: its siblings' PV waiters notice within a check period.
    pub(super) fn preempted(&mut self, x: usize) {
        let vm = self.vcpus[x].vm;
        let guest = &self.guests[vm];
        let Some((yield_after, _)) = guest.pv else { return };
        // A lock waiter still spinning before its first look looks then anyway.
        let looking = self.now + PV_CHECK_PERIOD_NS;
        let (first, mut running) = (guest.first, guest.running & !(1 << self.vcpus[x].index));
        while running != 0 {
            let y = first + running.trailing_zeros() as usize;
            running &= running - 1;
            let notices = match self.vcpus[y].activity {
                Activity::LockWait { since } => since + yield_after <= looking,
                Activity::BarrierWait { .. } => true,
                _ => false,
            };
            if notices {
                self.poke(y, PV_CHECK_PERIOD_NS);
            }
        }
    }

    /// Whether `v`, about to block, still has nothing to do: the check a real guest makes
    /// once more before it blocks, and a kick sent meanwhile makes the block return at once.
    fn should_block(&mut self, v: usize) -> bool {
        if std::mem::take(&mut self.vcpus[v].kick_pending) {
            return false;
        }
        let guest = &self.guests[self.vcpus[v].vm];
        match self.vcpus[v].activity {
            Activity::LockWait { .. } => guest.holder != self.vcpus[v].thread,
            Activity::Idle { .. } => guest.pool.is_empty() && !self.surplus(v),
            _ => true,
        }
    }

    /// `v`'s block hypercall reaches the monitor.
    fn block(&mut self, v: usize) {
        self.vcpus[v].activity = Activity::Blocked;
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
            self.preempted(v);
        }
    }

    /// `v`'s vcpu_down reaches the monitor.
    fn down(&mut self, v: usize) {
        self.vcpus[v].activity = Activity::Off;
        self.stop(v);
        self.set_state(v, State::Offline);
        self.policy_event(Event::Down(VcpuId(v as u32)));
        self.check_followed(self.vcpus[v].vm);
    }

    /// Brings VM `vm`'s VCPUs toward grant `grant`.
    pub(super) fn set_grant(&mut self, vm: usize, grant: u32) {
        let guest = &mut self.guests[vm];
        guest.grant = grant;
        guest.grant_changed = Some(self.now);
        // The monitor kicks every VCPU: each follows at its next scheduling point.
        for x in guest.first..guest.first + guest.vcpus as usize {
            match self.states[x] {
                State::Blocked => self.kick(x),
                State::Runnable => self.poke(x, 0),
                State::Offline => {}
            }
        }
        self.check_followed(vm);
    }

    /// Records the reconfiguration latency once VM `vm`'s online VCPUs match its grant.
    pub(super) fn check_followed(&mut self, vm: usize) {
        let guest = &self.guests[vm];
        let Some(since) = guest.grant_changed else { return };
        if self.online(vm) == guest.grant {
            self.reconfigurations.push(self.now - since);
            self.guests[vm].grant_changed = None;
        }
    }

    /// Every thread of VM `vm` has ended: the guest exits and its VCPUs go down.
    fn end_vm(&mut self, vm: usize) {
        self.guests[vm].ended = Some(self.now);
        self.live -= 1;
        let guest = &self.guests[vm];
        for x in guest.first..guest.first + guest.vcpus as usize {
            self.vcpus[x].activity = Activity::Off;
            if self.states[x] != State::Offline {
                self.stop(x);
                self.set_state(x, State::Offline);
                self.policy_event(Event::Down(VcpuId(x as u32)));
            }
        }
    }
}
