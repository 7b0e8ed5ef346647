//! The dispatcher: drives a `sched` policy in real time over the VCPUs of one or more VMs,
//! and owns each VCPU's state.
//!
//! A VCPU is offline, starting (a `vcpu_up` accepted, its thread on its way), blocked,
//! waiting at the gate for a pCPU, granted a pCPU (its thread on its way through the gate),
//! or running (on its pCPU; without gating, wherever Linux puts it). Its phase changes only
//! here, and is published here, to its VM's shared page, as the guest sees it: offline,
//! blocked, preempted (waiting or granted), running.
//!
//! Events come from the VCPU threads (start, block, yield, down, leaving a revoked pCPU),
//! from kicks, and from a timer thread (the ticks the policy asks for); after each, the
//! policy's assignment is compared with who holds each pCPU: a holder that lost its pCPU is
//! preempted (kicked out of KVM_RUN) and gives the pCPU back when it leaves KVM_RUN; a free
//! pCPU is granted to the waiting VCPU the policy assigned to it, its thread first pinned to
//! the pCPU's core (see `gate`). Under a policy that does not gate (`host`), threads are
//! only pinned to the pCPU set and Linux schedules them.
//!
//! A kick is delivered by the kicker: a blocked VCPU is woken at once, for the policy to
//! place, and its thread sleeps on until it holds a pCPU; a running VCPU keeps the kick for
//! its next block, which returns at once; a kick to an offline or starting VCPU, or to one
//! already woken from its block and not yet back on a pCPU, is dropped (one kick per block).
//!
//! `phase`: the phases and what the guest sees of each; `gate`: the gate as VCPU threads
//! pass it; `metrics`: what is measured; `grants`: demands and grants under a policy that
//! grants VCPUs (`dynamic`), which the timer thread polls and publishes; `live`: the figures
//! the live view reads while VMs run.

mod gate;
mod grants;
mod live;
mod metrics;
mod phase;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use sched::{Event, Ns, Params, Policy, PolicyKind, Topology, VcpuId, VmSpec};
use tandem_core::host::host_cpus;
use tandem_core::metrics::DispatchReport;

use crate::kick::Kicker;
use crate::memory::SharedPageRef;
use crate::x86::Start;
use gate::Gate;
use grants::VmGrant;
use metrics::Metrics;
use phase::Phase;

/// Where a VM's VCPUs are scheduled: a dispatcher, its number of the VM, and its id of the
/// VM's VCPU 0 (the others follow).
#[derive(Debug, Clone)]
pub struct Seat {
    pub dispatcher: Arc<Dispatcher>,
    pub vm: usize,
    pub first_vcpu: u32,
}

impl Seat {
    /// A dispatcher of its own, under which Linux schedules the VM's VCPU threads on every
    /// host CPU (the `host` policy), as for a single `tandem run`.
    pub fn alone(vcpus: u32) -> anyhow::Result<Seat> {
        let topology = Topology::new(host_cpus() as u32, vec![VmSpec { vcpus, weight: 256, cap: None }]);
        let dispatcher = Dispatcher::start(PolicyKind::Host, &Params::default(), (0..host_cpus()).collect(), &topology)
            .context("cannot start the dispatcher's timer thread")?;
        Ok(Seat { dispatcher, vm: 0, first_vcpu: 0 })
    }

    /// The dispatcher's id of the VM's VCPU `vcpu`.
    pub fn vcpu(&self, vcpu: u32) -> VcpuId {
        VcpuId(self.first_vcpu + vcpu)
    }
}

/// The VM ended while the VCPU waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmStopped;

/// How a blocked VCPU was woken.
#[derive(Debug, Clone, Copy)]
pub struct Woken {
    /// When: the end of its WAIT time.
    pub at: Instant,
    /// By a kick, rather than by its deadline.
    pub kicked: bool,
}

/// One VCPU, as the dispatcher keeps it.
#[derive(Debug)]
struct Vcpu {
    phase: Phase,
    /// A kick that came while it ran: its next block consumes it and returns at once.
    kick_pending: bool,
    /// When a kick or its deadline woke it from a block, until its thread is back on a pCPU.
    woken_at: Option<Instant>,
    /// The pCPU whose core its thread is pinned to.
    pinned: Option<usize>,
    /// Set when its VM ends.
    stopped: bool,
    /// Its thread's kicker, while its VM is attached.
    kicker: Option<Arc<Kicker>>,
    /// Its VM, and its id there (its slot in the shared page).
    vm: usize,
    id: usize,
}

/// What the dispatcher's lock guards: the policy, each VCPU's phase, who holds each pCPU, the
/// shared pages, the grants and the metrics.
struct DispatchState {
    policy: Box<dyn Policy>,
    vcpus: Vec<Vcpu>,
    /// The VCPU holding each pCPU (granted it or running on it).
    holders: Vec<Option<VcpuId>>,
    /// Per VM, while it is attached: its shared page, where its VCPUs' states and its grant
    /// are published.
    pages: Vec<Option<SharedPageRef>>,
    grants: Vec<VmGrant>,
    metrics: Metrics,
    stop: bool,
}

impl DispatchState {
    /// Moves `vcpu` to `phase` and publishes what the guest sees of it.
    fn set_phase(&mut self, vcpu: VcpuId, phase: Phase) {
        let entry = &mut self.vcpus[vcpu.index()];
        entry.phase = phase;
        if let Some(page) = &self.pages[entry.vm] {
            page.vcpus[entry.id].state.store(phase.shown() as u32, Ordering::Release);
        }
    }

    fn phase(&self, vcpu: VcpuId) -> Phase {
        self.vcpus[vcpu.index()].phase
    }
}

/// Drives one policy over the VCPUs of every VM in a run.
pub struct Dispatcher {
    state: Mutex<DispatchState>,
    /// Per VCPU: signalled when it is started, woken or granted a pCPU, or its VM stops.
    signals: Vec<Condvar>,
    /// Signalled when the policy's next tick may have moved earlier.
    timer: Condvar,
    gate: Gate,
    topology: Topology,
    origin: Instant,
    /// Which it is in the process, and its policy, for the live view.
    id: u64,
    policy: PolicyKind,
}

/// The id of the next dispatcher to start.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("gate", &self.gate).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher for policy `kind` (with `params`) over the host cores `cores` (one pCPU
    /// each) and the VCPUs of `topology`, with its timer thread started.
    pub fn start(
        kind: PolicyKind,
        params: &Params,
        cores: Vec<usize>,
        topology: &Topology,
    ) -> std::io::Result<Arc<Dispatcher>> {
        let policy: Box<dyn Policy> = kind.build(params, topology);
        let (nr_vcpus, nr_vms) = (topology.nr_vcpus(), topology.vms.len());
        let (origin, pcpus) = (Instant::now(), cores.len());
        let vcpus = (0..nr_vcpus)
            .map(|v| {
                let vm = topology.vm_of(VcpuId(v as u32));
                let id = v - topology.vcpu(vm, 0).index();
                let phase = Phase::Offline;
                Vcpu { phase, kick_pending: false, woken_at: None, pinned: None, stopped: false, kicker: None, vm, id }
            })
            .collect();
        let dispatcher = Arc::new(Dispatcher {
            gate: Gate::new(policy.gates(), cores, nr_vcpus),
            state: Mutex::new(DispatchState {
                policy,
                vcpus,
                holders: vec![None; pcpus],
                pages: vec![None; nr_vms],
                grants: (0..nr_vms).map(|_| VmGrant::default()).collect(),
                metrics: Metrics::new(origin, nr_vcpus),
                stop: false,
            }),
            signals: (0..nr_vcpus).map(|_| Condvar::new()).collect(),
            timer: Condvar::new(),
            topology: topology.clone(),
            origin,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            policy: kind,
        });
        let timer = Arc::clone(&dispatcher);
        let thread = std::thread::Builder::new().name("dispatch-timer".to_owned()).spawn(move || timer.run_timer())?;
        // The timer thread ends when `finish` sets `stop`; it holds its own reference.
        drop(thread);
        Ok(dispatcher)
    }

    fn lock(&self) -> MutexGuard<'_, DispatchState> {
        self.state.lock().expect("dispatcher lock")
    }

    fn now(&self) -> Ns {
        self.origin.elapsed().as_nanos() as Ns
    }

    /// Attaches VM `vm`: its shared page, where the dispatcher publishes its VCPUs' states
    /// and its grant, and its VCPU threads' kickers. Publishes its grant if the policy grants
    /// VCPUs (before the guest boots, this is the number of VCPUs it starts with).
    pub fn attach(&self, vm: usize, page: SharedPageRef, kickers: Vec<Arc<Kicker>>) {
        let mut state = self.lock();
        for (vcpu, kicker) in self.topology.vcpus_of(vm).zip(kickers) {
            state.vcpus[vcpu.index()].kicker = Some(kicker);
        }
        let grant = state.policy.grant(vm);
        if let Some(grant) = grant {
            grants::publish(&page, grant);
        }
        state.grants[vm] = VmGrant::at_boot(grant);
        state.pages[vm] = Some(page);
    }

    /// Detaches VM `vm` once its VCPU threads have ended.
    pub fn detach(&self, vm: usize) {
        let mut state = self.lock();
        state.pages[vm] = None;
        for vcpu in self.topology.vcpus_of(vm) {
            state.vcpus[vcpu.index()].kicker = None;
        }
    }

    /// Called by VCPU `vcpu`'s own thread before it first asks for a pCPU.
    pub fn register_thread(&self, vcpu: VcpuId) {
        self.gate.register_thread(vcpu);
    }

    /// Marks the VCPUs of an ending VM stopped: wakes their threads wherever they wait, and
    /// kicks those in KVM_RUN out of it.
    pub fn stop_vcpus(&self, vcpus: impl Iterator<Item = VcpuId>) {
        let mut state = self.lock();
        for vcpu in vcpus {
            let entry = &mut state.vcpus[vcpu.index()];
            entry.stopped = true;
            self.signals[vcpu.index()].notify_all();
            if let Some(kicker) = &entry.kicker {
                kicker.kick();
            }
        }
    }

    /// Whether `vcpu` must leave its pCPU: checked by its thread before each KVM_RUN.
    pub fn revoked(&self, vcpu: VcpuId) -> bool {
        self.gate.revoked(vcpu)
    }

    /// Asks offline `vcpu` to start at `start`; false if it is not offline.
    pub fn vcpu_up(&self, vcpu: VcpuId, start: Start) -> bool {
        let mut state = self.lock();
        if state.phase(vcpu) != Phase::Offline {
            return false;
        }
        state.set_phase(vcpu, Phase::Starting(start));
        self.signals[vcpu.index()].notify_all();
        true
    }

    /// Offline `vcpu`'s thread parks until the VCPU is asked to start, and returns where.
    pub fn wait_for_start(&self, vcpu: VcpuId) -> Result<Start, VmStopped> {
        let mut state = self.lock();
        loop {
            let entry = &state.vcpus[vcpu.index()];
            if entry.stopped {
                return Err(VmStopped);
            }
            if let Phase::Starting(start) = entry.phase {
                return Ok(start);
            }
            state = self.signals[vcpu.index()].wait(state).expect("dispatcher lock");
        }
    }

    /// `vcpu`'s thread is ready to run its start: the VCPU comes online, runnable. Returns
    /// once it holds a pCPU, with its thread pinned there.
    pub fn started(&self, vcpu: VcpuId) -> Result<(), VmStopped> {
        let mut state = self.lock();
        state.set_phase(vcpu, Phase::Waiting);
        self.decide(&mut state, Event::Wake(vcpu));
        self.check_reconfigured(&mut state, vcpu);
        self.acquire(state, vcpu).map(drop)
    }

    /// `vcpu` is about to block. A kick that came while it ran is consumed instead, and it
    /// keeps its pCPU: false. Otherwise it gives its pCPU back: true.
    pub fn block(&self, vcpu: VcpuId) -> bool {
        let mut state = self.lock();
        if std::mem::take(&mut state.vcpus[vcpu.index()].kick_pending) {
            return false;
        }
        self.release(&mut state, vcpu, Phase::Blocked);
        self.decide(&mut state, Event::Block(vcpu));
        true
    }

    /// Blocked `vcpu`'s thread sleeps until the VCPU is woken (by a [kick](Self::kick), or by
    /// itself at `deadline`) and holds a pCPU.
    pub fn sleep_blocked(&self, vcpu: VcpuId, deadline: Option<Instant>) -> Result<Woken, VmStopped> {
        let v = vcpu.index();
        let mut state = self.lock();
        let kicked = loop {
            if state.vcpus[v].stopped {
                return Err(VmStopped);
            }
            if state.phase(vcpu) != Phase::Blocked {
                break true;
            }
            match deadline {
                None => state = self.signals[v].wait(state).expect("dispatcher lock"),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.unblock(&mut state, vcpu);
                        break false;
                    }
                    state = self.signals[v].wait_timeout(state, deadline - now).expect("dispatcher lock").0;
                }
            }
        };
        let woken_at = self.acquire(state, vcpu)?;
        Ok(Woken { at: woken_at.unwrap_or_else(Instant::now), kicked })
    }

    /// Kicks `vcpu` (see the module's doc). Waking a blocked VCPU here, for the policy, rather
    /// than in its own thread matters: woken on the core it last ran on, where another VCPU
    /// thread now runs, its thread could wait for Linux's next tick, 4 ms (a tenth of the kicks
    /// in a 4-stage `pipeline` at 3x took over 1 ms); granted a pCPU, it is moved there first.
    pub fn kick(&self, vcpu: VcpuId) {
        let mut state = self.lock();
        self.deliver_kick(&mut state, vcpu);
    }

    fn deliver_kick(&self, state: &mut DispatchState, vcpu: VcpuId) {
        let entry = &state.vcpus[vcpu.index()];
        match entry.phase {
            Phase::Offline | Phase::Starting(_) => {}
            Phase::Blocked => self.unblock(state, vcpu),
            _ if entry.woken_at.is_some() => {}
            _ => state.vcpus[vcpu.index()].kick_pending = true,
        }
    }

    fn unblock(&self, state: &mut DispatchState, vcpu: VcpuId) {
        state.vcpus[vcpu.index()].woken_at = Some(Instant::now());
        state.set_phase(vcpu, Phase::Waiting);
        self.decide(state, Event::Wake(vcpu));
        if !self.gate.gates() {
            self.signals[vcpu.index()].notify_one();
        }
    }

    /// `vcpu` went offline or its VM ended: it gives its pCPU back for good, and a pending
    /// kick is dropped (it starts afresh).
    pub fn down(&self, vcpu: VcpuId) {
        let mut state = self.lock();
        let entry = &mut state.vcpus[vcpu.index()];
        entry.kick_pending = false;
        entry.woken_at = None;
        if entry.phase.online() {
            self.release(&mut state, vcpu, Phase::Offline);
            self.decide(&mut state, Event::Down(vcpu));
            self.check_reconfigured(&mut state, vcpu);
        } else {
            state.set_phase(vcpu, Phase::Offline);
        }
    }

    /// `vcpu` yields (to `to`, a sibling, if set); returns once it holds a pCPU again.
    pub fn yield_to(&self, vcpu: VcpuId, to: Option<VcpuId>) -> Result<(), VmStopped> {
        if !self.gate.gates() {
            std::thread::yield_now();
            return Ok(());
        }
        let mut state = self.lock();
        self.decide(&mut state, Event::Yield { vcpu, to });
        if self.gate.revoked(vcpu) { self.leave_and_wait(state, vcpu) } else { Ok(()) }
    }

    /// `vcpu` left KVM_RUN after being revoked: it gives its pCPU back and waits for one.
    pub fn preempted(&self, vcpu: VcpuId) -> Result<(), VmStopped> {
        let state = self.lock();
        self.leave_and_wait(state, vcpu)
    }

    fn leave_and_wait(&self, mut state: MutexGuard<'_, DispatchState>, vcpu: VcpuId) -> Result<(), VmStopped> {
        state.metrics.left(vcpu);
        self.release(&mut state, vcpu, Phase::Waiting);
        self.apply(&mut state);
        self.acquire(state, vcpu).map(drop)
    }

    /// Waits until `vcpu` is granted a pCPU (its thread already pinned to the pCPU's core),
    /// then passes the gate onto it. Returns when the VCPU was woken from a block, if it was.
    fn acquire(&self, mut state: MutexGuard<'_, DispatchState>, vcpu: VcpuId) -> Result<Option<Instant>, VmStopped> {
        let v = vcpu.index();
        if !self.gate.gates() {
            state.metrics.runs_ungated(vcpu);
            state.set_phase(vcpu, Phase::Running(None));
            return Ok(state.vcpus[v].woken_at.take());
        }
        let pcpu = loop {
            if state.vcpus[v].stopped {
                return Err(VmStopped);
            }
            if let Phase::Granted(pcpu) = state.phase(vcpu) {
                break pcpu;
            }
            state = self.signals[v].wait(state).expect("dispatcher lock");
        };
        state.metrics.passed_gate(vcpu);
        state.set_phase(vcpu, Phase::Running(Some(pcpu)));
        let woken_at = state.vcpus[v].woken_at.take();
        drop(state);
        self.gate.claim(pcpu, vcpu);
        Ok(woken_at)
    }

    /// Takes `vcpu` off its pCPU (if it holds one) into `phase`.
    fn release(&self, state: &mut DispatchState, vcpu: VcpuId, phase: Phase) {
        let pcpu = state.phase(vcpu).pcpu();
        if let Some(pcpu) = pcpu {
            self.gate.leave(pcpu, vcpu);
            state.holders[pcpu] = None;
        }
        state.metrics.released(vcpu, pcpu);
        state.set_phase(vcpu, phase);
    }

    /// Hands `event` to the policy and applies its decision, timing both.
    fn decide(&self, state: &mut DispatchState, event: Event) {
        let started = Instant::now();
        if self.gate.gates() {
            let now = self.now();
            state.policy.handle(now, event);
            self.apply(state);
            self.timer.notify_one();
        }
        state.metrics.decided(started);
    }

    /// Makes the holders match the policy's assignment: revokes pCPUs from VCPUs that lost
    /// them, grants free pCPUs to waiting VCPUs assigned there, and tracks co-stops.
    fn apply(&self, state: &mut DispatchState) {
        let assignment = state.policy.assignment().to_vec();
        for (pcpu, &wanted) in assignment.iter().enumerate() {
            let Some(holder) = state.holders[pcpu] else { continue };
            let keep = wanted == Some(holder);
            let was_revoked = self.gate.revoke(holder, !keep);
            if !keep && !was_revoked {
                state.metrics.revoked(holder);
                if let Some(kicker) = &state.vcpus[holder.index()].kicker {
                    kicker.kick();
                }
            } else if keep {
                state.metrics.kept(holder);
            }
        }
        for (pcpu, &wanted) in assignment.iter().enumerate() {
            let Some(vcpu) = wanted else { continue };
            if state.holders[pcpu].is_none() && state.phase(vcpu) == Phase::Waiting {
                state.holders[pcpu] = Some(vcpu);
                state.set_phase(vcpu, Phase::Granted(pcpu));
                state.metrics.granted(vcpu);
                self.pin_thread(state, vcpu, pcpu);
                self.signals[vcpu.index()].notify_one();
            }
        }
        for v in 0..state.vcpus.len() {
            let vcpu = VcpuId(v as u32);
            let costopped = state.phase(vcpu) == Phase::Waiting && state.policy.costopped(vcpu);
            state.metrics.costopped(vcpu, costopped);
        }
    }

    /// Pins `vcpu`'s thread to `pcpu`'s core before the thread hears of its grant, so that it
    /// wakes where it is to run.
    fn pin_thread(&self, state: &mut DispatchState, vcpu: VcpuId, pcpu: usize) {
        let entry = &mut state.vcpus[vcpu.index()];
        if entry.pinned != Some(pcpu) && self.gate.pin(vcpu, pcpu) {
            entry.pinned = Some(pcpu);
        }
    }

    /// Co-stopped time of `vcpu` so far, in nanoseconds.
    pub fn costop_ns(&self, vcpu: VcpuId) -> u64 {
        self.lock().metrics.costop_ns(vcpu)
    }

    /// VCPUs of `vm` online (running, waiting or blocked).
    fn online(&self, state: &DispatchState, vm: usize) -> u32 {
        self.topology.vcpus_of(vm).filter(|&v| state.phase(v).online()).count() as u32
    }

    /// After `vcpu` came online or went down: if its VM now has as many VCPUs online as its
    /// pending grant, the reconfiguration is over.
    fn check_reconfigured(&self, state: &mut DispatchState, vcpu: VcpuId) {
        let vm = self.topology.vm_of(vcpu);
        let online = self.online(state, vm);
        if let Some(took) = state.grants[vm].followed(online) {
            state.metrics.reconfigured(took);
        }
    }

    /// Delivers the ticks the policy asks for, and under a policy that grants VCPUs polls the
    /// guests' demand and publishes their grants, until `finish`.
    fn run_timer(&self) {
        let mut state = self.lock();
        let grants = self.gate.gates() && (0..self.topology.vms.len()).any(|vm| state.policy.grant(vm).is_some());
        while !state.stop {
            if grants {
                self.poll_guests(&mut state);
            }
            let poll = grants.then(|| self.now() + sched::DEMAND_POLL);
            let next = if self.gate.gates() { state.policy.next_tick().into_iter().chain(poll).min() } else { None };
            let now = self.now();
            match next {
                Some(tick) if tick <= now => self.decide(&mut state, Event::Tick),
                Some(tick) => {
                    let wait = Duration::from_nanos(tick - now);
                    state = self.timer.wait_timeout(state, wait).expect("dispatcher lock").0;
                }
                None => state = self.timer.wait(state).expect("dispatcher lock"),
            }
        }
    }

    /// Hands the attached VMs' changed demands to the policy, and publishes the grants that
    /// changed, kicking the VM's VCPUs to follow (blocked ones would see it only at their
    /// next timer).
    fn poll_guests(&self, state: &mut DispatchState) {
        let attached: Vec<usize> = (0..state.pages.len()).filter(|&vm| state.pages[vm].is_some()).collect();
        for &vm in &attached {
            let page = state.pages[vm].as_ref().expect("attached");
            let threads = grants::demand(page, self.topology.vms[vm].vcpus as usize);
            if state.grants[vm].demand_changed(threads) {
                self.decide(state, Event::Demand { vm, threads });
            }
        }
        for vm in attached {
            let Some(grant) = state.policy.grant(vm) else { continue };
            let online = self.online(state, vm);
            if state.grants[vm].changed(grant, online) {
                grants::publish(state.pages[vm].as_ref().expect("attached"), grant);
                for vcpu in self.topology.vcpus_of(vm) {
                    self.deliver_kick(state, vcpu);
                }
            }
        }
    }

    /// Stops the timer and returns what was measured. Call after every VM has ended.
    pub fn finish(&self) -> DispatchReport {
        let mut state = self.lock();
        state.stop = true;
        self.timer.notify_all();
        state.metrics.report(self.gate.violations())
    }
}

#[cfg(test)]
mod tests {
    use std::thread::JoinHandle;

    use pv_abi::shared::VcpuState;
    use sched::{Params, PolicyKind, VmSpec};

    use super::*;
    use crate::memory::GuestMemory;

    const VCPU: VcpuId = VcpuId(0);
    const START: Start = Start { entry: 0x20_0000, stack_top: 0x30_0000, arg: 0 };

    /// A dispatcher under `credit` over host core 0, for one VM of two VCPUs, attached with
    /// a shared page in `memory`.
    fn dispatcher(memory: &GuestMemory) -> Arc<Dispatcher> {
        let topology = Topology::new(1, vec![VmSpec { vcpus: 2, weight: 256, cap: None }]);
        let dispatcher = Dispatcher::start(PolicyKind::Credit, &Params::default(), vec![0], &topology).unwrap();
        dispatcher.attach(0, memory.shared_page_ref(), Vec::new());
        dispatcher
    }

    /// What the guest sees of VCPU 0.
    fn shown(memory: &GuestMemory) -> Option<VcpuState> {
        VcpuState::from_u32(memory.shared_page().vcpus[0].state.load(Ordering::Acquire))
    }

    /// VCPU 0's thread: is started, takes the pCPU, blocks until `deadline`, and returns how
    /// it was woken once the dispatcher knows it blocked.
    fn blocking_vcpu(dispatcher: &Arc<Dispatcher>, deadline: Option<Instant>) -> JoinHandle<Result<Woken, VmStopped>> {
        assert!(dispatcher.vcpu_up(VCPU, START));
        let thread = {
            let dispatcher = Arc::clone(dispatcher);
            std::thread::spawn(move || {
                dispatcher.register_thread(VCPU);
                assert_eq!(dispatcher.wait_for_start(VCPU)?, START);
                dispatcher.started(VCPU)?;
                assert!(dispatcher.block(VCPU), "no kick was pending");
                dispatcher.sleep_blocked(VCPU, deadline)
            })
        };
        while dispatcher.lock().phase(VCPU) != Phase::Blocked && !thread.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        thread
    }

    #[test]
    fn a_kick_wakes_a_blocked_vcpu_once_and_its_thread_returns_running_on_the_pcpu() {
        let memory = GuestMemory::new(4 << 20).unwrap();
        let dispatcher = dispatcher(&memory);
        let thread = blocking_vcpu(&dispatcher, None);
        assert_eq!(shown(&memory), Some(VcpuState::Blocked));
        {
            // Both before the VCPU's thread is back: the second would wake it again.
            let mut state = dispatcher.lock();
            dispatcher.deliver_kick(&mut state, VCPU);
            assert_ne!(state.phase(VCPU).shown(), VcpuState::Blocked);
            dispatcher.deliver_kick(&mut state, VCPU);
        }
        let woken = thread.join().unwrap().expect("the VM did not stop");
        assert!(woken.kicked);
        assert_eq!(dispatcher.lock().phase(VCPU), Phase::Running(Some(0)));
        assert_eq!(shown(&memory), Some(VcpuState::Running));
        assert!(dispatcher.block(VCPU), "the second kick was dropped");
        assert_eq!(dispatcher.finish().gate_violations, 0);
    }

    #[test]
    fn a_kick_to_a_running_vcpu_makes_its_next_block_return_at_once_and_one_to_an_offline_vcpu_is_dropped() {
        let memory = GuestMemory::new(4 << 20).unwrap();
        let dispatcher = dispatcher(&memory);
        dispatcher.kick(VCPU);
        assert!(dispatcher.vcpu_up(VCPU, START));
        assert!(!dispatcher.vcpu_up(VCPU, START), "a starting VCPU is not offline");
        assert_eq!(dispatcher.wait_for_start(VCPU), Ok(START));
        dispatcher.started(VCPU).unwrap();
        assert_eq!(shown(&memory), Some(VcpuState::Running));
        dispatcher.kick(VCPU);
        assert!(!dispatcher.block(VCPU), "the kick is consumed by the block");
        assert_eq!(shown(&memory), Some(VcpuState::Running), "the VCPU kept its pCPU");
        dispatcher.down(VCPU);
        assert_eq!(shown(&memory), Some(VcpuState::Offline));
    }

    #[test]
    fn a_blocked_vcpu_wakes_by_itself_at_its_deadline() {
        let memory = GuestMemory::new(4 << 20).unwrap();
        let dispatcher = dispatcher(&memory);
        let thread = blocking_vcpu(&dispatcher, Some(Instant::now() + Duration::from_millis(20)));
        let woken = thread.join().unwrap().expect("the VM did not stop");
        assert!(!woken.kicked);
        assert_eq!(dispatcher.lock().phase(VCPU), Phase::Running(Some(0)));
    }

    #[test]
    fn a_blocked_vcpu_leaves_when_its_vm_stops() {
        let memory = GuestMemory::new(4 << 20).unwrap();
        let dispatcher = dispatcher(&memory);
        let thread = blocking_vcpu(&dispatcher, None);
        dispatcher.stop_vcpus([VCPU].into_iter());
        assert_eq!(thread.join().unwrap().unwrap_err(), VmStopped);
    }

    #[test]
    fn an_offline_vcpu_leaves_when_its_vm_stops() {
        let memory = GuestMemory::new(4 << 20).unwrap();
        let dispatcher = dispatcher(&memory);
        let thread = {
            let dispatcher = Arc::clone(&dispatcher);
            std::thread::spawn(move || dispatcher.wait_for_start(VCPU))
        };
        dispatcher.stop_vcpus([VCPU].into_iter());
        assert_eq!(thread.join().unwrap(), Err(VmStopped));
    }
}
