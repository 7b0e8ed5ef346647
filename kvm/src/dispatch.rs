//! The dispatcher: drives a `sched` policy in real time over VCPU threads of one or more VMs.
//!
//! pCPUs are host cores. A VCPU thread may enter KVM_RUN only while it holds a pCPU the
//! dispatcher granted it, pinned to that core, so at most one VCPU runs per pCPU. Events come
//! from the VCPU threads themselves (wake, block, yield, down) and from a timer thread (the
//! ticks the policy asks for); after each, the policy's assignment is compared with who holds
//! each pCPU: a holder that lost its pCPU is preempted (kick: immediate_exit + signal) and
//! gives the pCPU back when it leaves KVM_RUN; a free pCPU is granted to the VCPU the policy
//! assigned to it. Under a policy that does not gate (`host`), threads are only pinned to the
//! pCPU set and Linux schedules them.
//!
//! Under a policy that grants VCPUs (`dynamic`), the timer thread also polls each VM's guest
//! for its demand every [`sched::DEMAND_POLL`], hands changes to the policy, and publishes the grants
//! the policy decides; it measures how long each VM takes to follow a new grant (published to
//! the last VCPU up or down).
//!
//! Checked and measured here: the gate (a per-pCPU occupant word each thread claims when it
//! passes the gate; a failed claim is a violation), the time each decision takes (policy plus
//! applying the assignment) and the preemption latency (decision to VCPU out of KVM_RUN).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sched::{Event, Ns, Policy, Topology, VcpuId};
use tandem_core::metrics::{DispatchReport, Span};
use tandem_core::stats::Percentiles;

use crate::kick::Kicker;

/// Samples kept per latency kind and trace spans kept per run, so that a long run cannot
/// make the monitor hold unbounded memory.
const SAMPLES_MAX: usize = 1 << 20;

const NOBODY: u32 = u32::MAX;

/// What the dispatcher sees of a VM's guest, for a policy that grants VCPUs.
pub trait Guest: Send + Sync {
    /// Runnable threads the guest reports, over all its VCPUs.
    fn demand(&self) -> u32;
    /// Publishes how many VCPUs the guest should keep online, and wakes its VCPUs to follow.
    fn grant(&self, vcpus: u32);
}

/// The VM ended while the VCPU waited for a pCPU.
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

/// Where a VCPU thread is, as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    Blocked,
    /// Runnable, waiting at the gate for a pCPU.
    Waiting,
    /// Holds this pCPU (and may be in KVM_RUN on it).
    Holding(usize),
}

struct State {
    policy: Box<dyn Policy>,
    phases: Vec<Phase>,
    /// The VCPU holding each pCPU.
    holders: Vec<Option<VcpuId>>,
    /// When each VCPU was told to leave its pCPU, while it has not yet.
    revoked_at: Vec<Option<Instant>>,
    /// When each VCPU got its pCPU (or became runnable, without gating).
    running_since: Vec<Option<Instant>>,
    /// Per VCPU: when it was granted the pCPU its thread has not yet passed the gate onto.
    granted_at: Vec<Option<Instant>>,
    /// Per VCPU: when it was woken from its block, until its thread hears of it.
    woken_at: Vec<Option<Instant>>,
    /// Per VCPU: the pCPU whose core its thread is pinned to.
    pinned: Vec<Option<usize>>,
    /// Since when each waiting VCPU has been co-stopped.
    costopped_since: Vec<Option<Instant>>,
    costop_ns: Vec<u64>,
    decision_ns: Vec<u64>,
    preemption_ns: Vec<u64>,
    resume_ns: Vec<u64>,
    preemptions: u64,
    events: u64,
    trace: Vec<Span>,
    /// Per VM: the demand last handed to the policy, and the grant last published.
    demands: Vec<Option<u32>>,
    grants: Vec<Option<u32>>,
    /// Per VM: when a grant change was published that its VCPUs have not followed yet.
    reconfiguring_since: Vec<Option<Instant>>,
    reconfiguration_ns: Vec<u64>,
    stop: bool,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("cores", &self.cores).field("gates", &self.gates).finish_non_exhaustive()
    }
}

/// Drives one policy over the VCPUs of every VM in a run.
pub struct Dispatcher {
    state: Mutex<State>,
    /// Per VCPU: signalled when it is granted a pCPU or its VM stops.
    granted: Vec<Condvar>,
    /// Signalled when the policy's next tick may have moved earlier.
    timer: Condvar,
    /// Per VCPU: set when it must leave its pCPU (read by the VCPU thread before KVM_RUN).
    revoked: Vec<AtomicBool>,
    /// Per VCPU: its thread's kicker, registered by its VM.
    kickers: Mutex<Vec<Option<Arc<Kicker>>>>,
    /// Per VCPU: its thread's id (0 until the thread registers), so that a pCPU is granted
    /// with the thread already moved to the pCPU's core.
    threads: Vec<AtomicI32>,
    /// Per VM: its guest, attached by the VM.
    guests: Mutex<Vec<Option<Weak<dyn Guest>>>>,
    topology: Topology,
    /// Per VCPU: set when its VM stops.
    stopped: Vec<AtomicBool>,
    /// Per pCPU: the VCPU that passed the gate onto it, or `NOBODY`.
    occupants: Vec<AtomicU32>,
    violations: AtomicU64,
    /// Host core of each pCPU.
    cores: Vec<usize>,
    gates: bool,
    origin: Instant,
}

impl Dispatcher {
    /// A dispatcher for `policy` over the host cores `cores` (one pCPU each) and the VCPUs of
    /// `topology`, with its timer thread started.
    pub fn start(policy: Box<dyn Policy>, cores: Vec<usize>, topology: &Topology) -> std::io::Result<Arc<Dispatcher>> {
        let gates = policy.gates();
        let (nr_vcpus, nr_vms) = (topology.nr_vcpus(), topology.vms.len());
        let dispatcher = Arc::new(Dispatcher {
            state: Mutex::new(State {
                policy,
                phases: vec![Phase::Offline; nr_vcpus],
                holders: vec![None; cores.len()],
                revoked_at: vec![None; nr_vcpus],
                running_since: vec![None; nr_vcpus],
                granted_at: vec![None; nr_vcpus],
                woken_at: vec![None; nr_vcpus],
                pinned: vec![None; nr_vcpus],
                costopped_since: vec![None; nr_vcpus],
                costop_ns: vec![0; nr_vcpus],
                decision_ns: Vec::new(),
                preemption_ns: Vec::new(),
                resume_ns: Vec::new(),
                preemptions: 0,
                events: 0,
                trace: Vec::new(),
                demands: vec![None; nr_vms],
                grants: vec![None; nr_vms],
                reconfiguring_since: vec![None; nr_vms],
                reconfiguration_ns: Vec::new(),
                stop: false,
            }),
            granted: (0..nr_vcpus).map(|_| Condvar::new()).collect(),
            timer: Condvar::new(),
            revoked: (0..nr_vcpus).map(|_| AtomicBool::new(false)).collect(),
            kickers: Mutex::new(vec![None; nr_vcpus]),
            threads: (0..nr_vcpus).map(|_| AtomicI32::new(0)).collect(),
            guests: Mutex::new(vec![None; nr_vms]),
            topology: topology.clone(),
            stopped: (0..nr_vcpus).map(|_| AtomicBool::new(false)).collect(),
            occupants: cores.iter().map(|_| AtomicU32::new(NOBODY)).collect(),
            violations: AtomicU64::new(0),
            cores,
            gates,
            origin: Instant::now(),
        });
        let timer = Arc::clone(&dispatcher);
        let thread = std::thread::Builder::new().name("dispatch-timer".to_owned()).spawn(move || timer.run_timer())?;
        // The timer thread ends when `finish` sets `stop`; it holds its own reference.
        drop(thread);
        Ok(dispatcher)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("dispatcher lock")
    }

    fn now(&self) -> Ns {
        self.origin.elapsed().as_nanos() as Ns
    }

    /// Whether the policy gates VCPU threads.
    pub fn gates(&self) -> bool {
        self.gates
    }

    /// Registers the kicker of VCPU `vcpu`'s thread, used to preempt it.
    pub fn register(&self, vcpu: VcpuId, kicker: Arc<Kicker>) {
        self.kickers.lock().expect("kickers lock")[vcpu.index()] = Some(kicker);
    }

    /// Called by VCPU `vcpu`'s own thread before it first asks for a pCPU: records its thread
    /// id, or, under a policy that does not gate, pins it to the pCPU set for Linux to place.
    pub fn register_thread(&self, vcpu: VcpuId) {
        if self.gates {
            // SAFETY: gettid has no preconditions.
            self.threads[vcpu.index()].store(unsafe { libc::gettid() }, Ordering::Release);
        } else {
            set_affinity(0, &self.cores);
        }
    }

    /// Attaches VM `vm`'s guest, and publishes its grant if the policy grants VCPUs (before
    /// the guest boots, this is the number of VCPUs it starts with).
    pub fn attach(&self, vm: usize, guest: Weak<dyn Guest>) {
        let grant = {
            let mut state = self.lock();
            let grant = state.policy.grant(vm);
            state.grants[vm] = grant;
            grant
        };
        if let (Some(grant), Some(guest)) = (grant, guest.upgrade()) {
            guest.grant(grant);
        }
        self.guests.lock().expect("guests lock")[vm] = Some(guest);
    }

    /// Marks the VCPUs of an ending VM stopped and wakes those waiting at the gate.
    pub fn stop_vcpus(&self, vcpus: impl Iterator<Item = VcpuId>) {
        let _state = self.lock();
        for vcpu in vcpus {
            self.stopped[vcpu.index()].store(true, Ordering::SeqCst);
            self.granted[vcpu.index()].notify_all();
        }
    }

    /// Whether `vcpu` must leave its pCPU: checked by its thread before each KVM_RUN.
    pub fn revoked(&self, vcpu: VcpuId) -> bool {
        self.revoked[vcpu.index()].load(Ordering::Acquire)
    }

    /// `vcpu` became runnable (it came online or left a block). Returns once it holds a pCPU,
    /// with its thread pinned there.
    pub fn wake(&self, vcpu: VcpuId) -> Result<(), VmStopped> {
        let mut state = self.lock();
        let came_online = state.phases[vcpu.index()] == Phase::Offline;
        state.phases[vcpu.index()] = Phase::Waiting;
        self.decide(&mut state, Event::Wake(vcpu));
        if came_online {
            self.check_reconfigured(&mut state, vcpu);
        }
        self.acquire(state, vcpu)
    }

    /// `vcpu` is about to block: it gives its pCPU back.
    pub fn block(&self, vcpu: VcpuId) {
        let mut state = self.lock();
        self.release(&mut state, vcpu, Phase::Blocked);
        self.decide(&mut state, Event::Block(vcpu));
    }

    /// Wakes blocked `vcpu` for whoever kicked it: the policy hears of it at once, and its
    /// thread sleeps on until it holds a pCPU, on whose core the grant puts it. (Woken on the
    /// core it last ran on, where another VCPU thread now runs, it could wait for Linux's
    /// next tick, 4 ms: a tenth of the kicks in a 4-stage `pipeline` at 3x took over 1 ms.)
    /// Returns false if `vcpu` is not blocked.
    pub fn wake_blocked(&self, vcpu: VcpuId) -> bool {
        let mut state = self.lock();
        if state.phases[vcpu.index()] != Phase::Blocked {
            return false;
        }
        self.unblock(&mut state, vcpu);
        true
    }

    fn unblock(&self, state: &mut State, vcpu: VcpuId) {
        state.woken_at[vcpu.index()] = Some(Instant::now());
        state.phases[vcpu.index()] = Phase::Waiting;
        self.decide(state, Event::Wake(vcpu));
        if !self.gates {
            self.granted[vcpu.index()].notify_one();
        }
    }

    /// Blocked `vcpu`'s thread sleeps until the VCPU is woken ([`wake_blocked`](Self::wake_blocked),
    /// or by itself at `deadline`) and holds a pCPU.
    pub fn sleep_blocked(&self, vcpu: VcpuId, deadline: Option<Instant>) -> Result<Woken, VmStopped> {
        let v = vcpu.index();
        let mut state = self.lock();
        let kicked = loop {
            if self.stopped[v].load(Ordering::SeqCst) {
                return Err(VmStopped);
            }
            if state.phases[v] != Phase::Blocked {
                break true;
            }
            match deadline {
                None => state = self.granted[v].wait(state).expect("dispatcher lock"),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.unblock(&mut state, vcpu);
                        break false;
                    }
                    state = self.granted[v].wait_timeout(state, deadline - now).expect("dispatcher lock").0;
                }
            }
        };
        let at = state.woken_at[v].take().unwrap_or_else(Instant::now);
        self.acquire(state, vcpu)?;
        Ok(Woken { at, kicked })
    }

    /// `vcpu` went offline or its VM ended: it gives its pCPU back for good.
    pub fn down(&self, vcpu: VcpuId) {
        let mut state = self.lock();
        if state.phases[vcpu.index()] != Phase::Offline {
            self.release(&mut state, vcpu, Phase::Offline);
            self.decide(&mut state, Event::Down(vcpu));
            self.check_reconfigured(&mut state, vcpu);
        }
    }

    /// VCPUs of `vm` online (running, waiting or blocked).
    fn online(&self, state: &State, vm: usize) -> u32 {
        self.topology.vcpus_of(vm).filter(|v| state.phases[v.index()] != Phase::Offline).count() as u32
    }

    /// After `vcpu` came online or went down: if its VM now has as many VCPUs online as its
    /// pending grant, the reconfiguration is over.
    fn check_reconfigured(&self, state: &mut State, vcpu: VcpuId) {
        let vm = self.topology.vm_of(vcpu);
        let Some(since) = state.reconfiguring_since[vm] else { return };
        if Some(self.online(state, vm)) == state.grants[vm] {
            state.reconfiguring_since[vm] = None;
            if state.reconfiguration_ns.len() < SAMPLES_MAX {
                state.reconfiguration_ns.push(since.elapsed().as_nanos() as u64);
            }
        }
    }

    /// `vcpu` yields (to `to`, a sibling, if set); returns once it holds a pCPU again.
    pub fn yield_to(&self, vcpu: VcpuId, to: Option<VcpuId>) -> Result<(), VmStopped> {
        if !self.gates {
            std::thread::yield_now();
            return Ok(());
        }
        let mut state = self.lock();
        self.decide(&mut state, Event::Yield { vcpu, to });
        if self.revoked(vcpu) { self.leave_and_wait(state, vcpu) } else { Ok(()) }
    }

    /// `vcpu` left KVM_RUN after being revoked: it gives its pCPU back and waits for one.
    pub fn preempted(&self, vcpu: VcpuId) -> Result<(), VmStopped> {
        let state = self.lock();
        self.leave_and_wait(state, vcpu)
    }

    fn leave_and_wait(&self, mut state: MutexGuard<'_, State>, vcpu: VcpuId) -> Result<(), VmStopped> {
        if let Some(at) = state.revoked_at[vcpu.index()].take()
            && state.preemption_ns.len() < SAMPLES_MAX
        {
            state.preemption_ns.push(at.elapsed().as_nanos() as u64);
        }
        self.release(&mut state, vcpu, Phase::Waiting);
        self.apply(&mut state);
        self.acquire(state, vcpu)
    }

    /// Waits until `vcpu` holds a pCPU (its thread already pinned to the pCPU's core), then
    /// claims it.
    fn acquire(&self, mut state: MutexGuard<'_, State>, vcpu: VcpuId) -> Result<(), VmStopped> {
        if !self.gates {
            state.running_since[vcpu.index()] = Some(Instant::now());
            return Ok(());
        }
        let pcpu = loop {
            if self.stopped[vcpu.index()].load(Ordering::SeqCst) {
                return Err(VmStopped);
            }
            if let Phase::Holding(pcpu) = state.phases[vcpu.index()] {
                if let Some(at) = state.granted_at[vcpu.index()].take()
                    && state.resume_ns.len() < SAMPLES_MAX
                {
                    state.resume_ns.push(at.elapsed().as_nanos() as u64);
                }
                break pcpu;
            }
            state = self.granted[vcpu.index()].wait(state).expect("dispatcher lock");
        };
        drop(state);
        if self.occupants[pcpu].compare_exchange(NOBODY, vcpu.0, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Takes `vcpu` off its pCPU (if it holds one) into `phase`.
    fn release(&self, state: &mut State, vcpu: VcpuId, phase: Phase) {
        if let Phase::Holding(pcpu) = state.phases[vcpu.index()] {
            let _ = self.occupants[pcpu].compare_exchange(vcpu.0, NOBODY, Ordering::SeqCst, Ordering::SeqCst);
            state.holders[pcpu] = None;
            self.revoked[vcpu.index()].store(false, Ordering::Release);
            state.revoked_at[vcpu.index()] = None;
        }
        if let Some(since) = state.running_since[vcpu.index()].take()
            && state.trace.len() < SAMPLES_MAX
        {
            let pcpu = match state.phases[vcpu.index()] {
                Phase::Holding(pcpu) => Some(pcpu as u32),
                _ => None,
            };
            let start_ns = since.duration_since(self.origin).as_nanos() as u64;
            state.trace.push(Span { vcpu: vcpu.0, pcpu, start_ns, end_ns: self.now() });
        }
        state.phases[vcpu.index()] = phase;
    }

    /// Hands `event` to the policy and applies its decision, timing both.
    fn decide(&self, state: &mut State, event: Event) {
        let started = Instant::now();
        state.events += 1;
        if self.gates {
            let now = self.now();
            state.policy.handle(now, event);
            self.apply(state);
            self.timer.notify_one();
        }
        if state.decision_ns.len() < SAMPLES_MAX {
            state.decision_ns.push(started.elapsed().as_nanos() as u64);
        }
    }

    /// Makes the holders match the policy's assignment: revokes pCPUs from VCPUs that lost
    /// them, grants free pCPUs to waiting VCPUs assigned there, and tracks co-stops.
    fn apply(&self, state: &mut State) {
        let assignment = state.policy.assignment().to_vec();
        for (pcpu, &wanted) in assignment.iter().enumerate() {
            let Some(holder) = state.holders[pcpu] else { continue };
            let keep = wanted == Some(holder);
            let was_revoked = self.revoked[holder.index()].swap(!keep, Ordering::AcqRel);
            if !keep && !was_revoked {
                state.revoked_at[holder.index()] = Some(Instant::now());
                state.preemptions += 1;
                if let Some(kicker) = &self.kickers.lock().expect("kickers lock")[holder.index()] {
                    kicker.kick();
                }
            } else if keep {
                state.revoked_at[holder.index()] = None;
            }
        }
        for (pcpu, &wanted) in assignment.iter().enumerate() {
            let Some(vcpu) = wanted else { continue };
            if state.holders[pcpu].is_none() && state.phases[vcpu.index()] == Phase::Waiting {
                state.holders[pcpu] = Some(vcpu);
                state.phases[vcpu.index()] = Phase::Holding(pcpu);
                state.running_since[vcpu.index()] = Some(Instant::now());
                state.granted_at[vcpu.index()] = Some(Instant::now());
                self.pin_thread(state, vcpu, pcpu);
                self.granted[vcpu.index()].notify_one();
            }
        }
        for v in 0..state.phases.len() {
            let vcpu = VcpuId(v as u32);
            let costopped = state.phases[v] == Phase::Waiting && state.policy.costopped(vcpu);
            match (costopped, state.costopped_since[v]) {
                (true, None) => state.costopped_since[v] = Some(Instant::now()),
                (false, Some(since)) => {
                    state.costop_ns[v] += since.elapsed().as_nanos() as u64;
                    state.costopped_since[v] = None;
                }
                _ => {}
            }
        }
    }

    /// Co-stopped time of `vcpu` so far, in nanoseconds.
    pub fn costop_ns(&self, vcpu: VcpuId) -> u64 {
        let state = self.lock();
        state.costop_ns[vcpu.index()] + state.costopped_since[vcpu.index()].map_or(0, |s| s.elapsed().as_nanos() as u64)
    }

    /// Delivers the ticks the policy asks for, and under a policy that grants VCPUs polls the
    /// guests' demand and publishes their grants, until `finish`.
    fn run_timer(&self) {
        let mut state = self.lock();
        let grants = self.gates && (0..self.topology.vms.len()).any(|vm| state.policy.grant(vm).is_some());
        while !state.stop {
            if grants {
                state = self.poll_guests(state);
            }
            let poll = grants.then(|| self.now() + sched::DEMAND_POLL);
            let next = if self.gates { state.policy.next_tick().into_iter().chain(poll).min() } else { None };
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

    /// Hands changed demands to the policy and publishes the grants that changed. The guests
    /// are read and written without the dispatcher's lock (waking a VCPU takes its own lock,
    /// which VCPU threads take before the dispatcher's).
    fn poll_guests<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        drop(state);
        let guests: Vec<(usize, Arc<dyn Guest>)> = {
            let guests = self.guests.lock().expect("guests lock");
            guests.iter().enumerate().filter_map(|(vm, guest)| Some((vm, guest.as_ref()?.upgrade()?))).collect()
        };
        let demands: Vec<(usize, u32)> = guests.iter().map(|(vm, guest)| (*vm, guest.demand())).collect();
        let mut state = self.lock();
        for (vm, threads) in demands {
            if state.demands[vm] != Some(threads) {
                state.demands[vm] = Some(threads);
                self.decide(&mut state, Event::Demand { vm, threads });
            }
        }
        let mut changed = Vec::new();
        for (vm, guest) in guests {
            let grant = state.policy.grant(vm);
            if let Some(grant) = grant.filter(|&grant| state.grants[vm] != Some(grant)) {
                state.grants[vm] = Some(grant);
                state.reconfiguring_since[vm] = (self.online(&state, vm) != grant).then(Instant::now);
                changed.push((guest, grant));
            }
        }
        if changed.is_empty() {
            return state;
        }
        drop(state);
        for (guest, grant) in changed {
            guest.grant(grant);
        }
        self.lock()
    }

    /// Stops the timer and returns what was measured. Call after every VM has ended.
    pub fn finish(&self) -> DispatchReport {
        let mut state = self.lock();
        state.stop = true;
        self.timer.notify_all();
        for v in 0..state.phases.len() {
            if let Some(since) = state.costopped_since[v].take() {
                state.costop_ns[v] += since.elapsed().as_nanos() as u64;
            }
        }
        DispatchReport {
            gate_violations: self.violations.load(Ordering::Relaxed),
            events: state.events,
            preemptions: state.preemptions,
            decision_ns: Percentiles::of(std::mem::take(&mut state.decision_ns)),
            preemption_ns: Percentiles::of(std::mem::take(&mut state.preemption_ns)),
            resume_ns: Percentiles::of(std::mem::take(&mut state.resume_ns)),
            reconfiguration_ns: Percentiles::of(std::mem::take(&mut state.reconfiguration_ns)),
            costop_ns: state.costop_ns.clone(),
            trace: std::mem::take(&mut state.trace),
        }
    }

    /// Pins `vcpu`'s thread to `pcpu`'s core before the thread hears of its grant, so that it
    /// wakes where it is to run.
    fn pin_thread(&self, state: &mut State, vcpu: VcpuId, pcpu: usize) {
        let tid = self.threads[vcpu.index()].load(Ordering::Acquire);
        if state.pinned[vcpu.index()] != Some(pcpu) && tid != 0 {
            set_affinity(tid, &[self.cores[pcpu]]);
            state.pinned[vcpu.index()] = Some(pcpu);
        }
    }
}

/// Pins thread `tid` (0: the calling thread) to `cores`. Failure (e.g. a core taken away by
/// a cgroup) only costs placement, not correctness, so it is ignored.
fn set_affinity(tid: libc::pid_t, cores: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it for core
    // numbers below CPU_SETSIZE, which the scenario checked against the host's CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use std::thread::JoinHandle;

    use sched::{Params, PolicyKind, VmSpec};

    use super::*;

    const VCPU: VcpuId = VcpuId(0);

    /// A dispatcher under `credit` over host core 0, for one VM of two VCPUs.
    fn dispatcher() -> Arc<Dispatcher> {
        let topology = Topology::new(1, vec![VmSpec { vcpus: 2, weight: 256, cap: None }]);
        Dispatcher::start(PolicyKind::Credit.build(&Params::default(), &topology), vec![0], &topology).unwrap()
    }

    /// VCPU 0's thread: comes online, takes the pCPU, blocks until `deadline`, and returns
    /// how it was woken once the dispatcher knows it blocked.
    fn blocking_vcpu(dispatcher: &Arc<Dispatcher>, deadline: Option<Instant>) -> JoinHandle<Result<Woken, VmStopped>> {
        let thread = {
            let dispatcher = Arc::clone(dispatcher);
            std::thread::spawn(move || {
                dispatcher.register_thread(VCPU);
                dispatcher.wake(VCPU)?;
                dispatcher.block(VCPU);
                dispatcher.sleep_blocked(VCPU, deadline)
            })
        };
        while dispatcher.lock().phases[0] != Phase::Blocked && !thread.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        thread
    }

    #[test]
    fn a_kick_wakes_a_blocked_vcpu_once_and_its_thread_returns_holding_the_pcpu() {
        let dispatcher = dispatcher();
        let thread = blocking_vcpu(&dispatcher, None);
        assert!(dispatcher.wake_blocked(VCPU));
        let woken = thread.join().unwrap().expect("the VM did not stop");
        assert!(woken.kicked);
        assert_eq!(dispatcher.lock().phases[0], Phase::Holding(0));
        assert!(!dispatcher.wake_blocked(VCPU), "a VCPU that is not blocked is not woken");
        assert_eq!(dispatcher.finish().gate_violations, 0);
    }

    #[test]
    fn a_blocked_vcpu_wakes_by_itself_at_its_deadline() {
        let dispatcher = dispatcher();
        let thread = blocking_vcpu(&dispatcher, Some(Instant::now() + Duration::from_millis(20)));
        let woken = thread.join().unwrap().expect("the VM did not stop");
        assert!(!woken.kicked);
        assert_eq!(dispatcher.lock().phases[0], Phase::Holding(0));
    }

    #[test]
    fn a_blocked_vcpu_leaves_when_its_vm_stops() {
        let dispatcher = dispatcher();
        let thread = blocking_vcpu(&dispatcher, None);
        dispatcher.stop_vcpus([VCPU].into_iter());
        assert_eq!(thread.join().unwrap().unwrap_err(), VmStopped);
    }
}
