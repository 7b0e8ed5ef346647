//! Drives a [`Policy`] on scripted events in virtual time and checks every decision: the
//! test bench of every policy, and the core the simulator builds on.
//!
//! After each event and tick the harness checks that no VCPU is assigned to two pCPUs, that
//! no offline VCPU is assigned, (unless reservations are allowed) that no blocked one is, and
//! that every pCPU whose VCPU changed is among those the policy reports written.
//! Between events it integrates, per VCPU, the time it ran (assigned and runnable), was ready
//! (runnable, not assigned), co-stopped, and its longest stretch of runnable-but-not-running.

use crate::{Event, Ns, Policy, Topology, VcpuId};

/// A VCPU's state as the harness (the guest's side) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Offline,
    Runnable,
    Blocked,
}

/// Time a VCPU spent in each state, in virtual nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub run: Ns,
    pub ready: Ns,
    pub costop: Ns,
    /// Blocked on a pCPU reserved for it (gang scheduling's idle waste).
    pub reserved_idle: Ns,
    /// Longest stretch runnable without running.
    pub longest_wait: Ns,
}

pub struct Harness {
    pub policy: Box<dyn Policy>,
    pub topology: Topology,
    now: Ns,
    states: Vec<State>,
    times: Vec<Times>,
    /// Since when each VCPU has been runnable without running.
    waiting_since: Vec<Option<Ns>>,
    allow_reserved: bool,
    ticks: u64,
}

impl Harness {
    /// All VCPUs start offline at time 0.
    pub fn new(policy: Box<dyn Policy>, topology: Topology) -> Harness {
        let n = topology.nr_vcpus();
        let harness = Harness {
            policy,
            topology,
            now: 0,
            states: vec![State::Offline; n],
            times: vec![Times::default(); n],
            waiting_since: vec![None; n],
            allow_reserved: false,
            ticks: 0,
        };
        harness.check();
        harness
    }

    /// Lets the policy hold a pCPU for a blocked VCPU (gang scheduling).
    pub fn allow_reserved(mut self) -> Harness {
        self.allow_reserved = true;
        self
    }

    pub fn now(&self) -> Ns {
        self.now
    }

    pub fn state(&self, vcpu: VcpuId) -> State {
        self.states[vcpu.index()]
    }

    pub fn times(&self, vcpu: VcpuId) -> Times {
        let mut times = self.times[vcpu.index()];
        if let Some(since) = self.waiting_since[vcpu.index()] {
            times.longest_wait = times.longest_wait.max(self.now - since);
        }
        times
    }

    /// Run time of all of `vm`'s VCPUs.
    pub fn vm_run(&self, vm: usize) -> Ns {
        self.topology.vcpus_of(vm).map(|v| self.times[v.index()].run).sum()
    }

    /// Ticks delivered so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Whether `vcpu` is assigned a pCPU and runnable.
    pub fn running(&self, vcpu: VcpuId) -> bool {
        self.states[vcpu.index()] == State::Runnable && self.pcpu_of(vcpu).is_some()
    }

    /// The pCPU `vcpu` is assigned to.
    pub fn pcpu_of(&self, vcpu: VcpuId) -> Option<usize> {
        self.policy.assignment().iter().position(|&slot| slot == Some(vcpu))
    }

    /// The VCPUs running now.
    pub fn running_vcpus(&self) -> Vec<VcpuId> {
        self.policy.assignment().iter().flatten().copied().filter(|&v| self.running(v)).collect()
    }

    /// Brings every VCPU of every VM online.
    pub fn wake_all(&mut self) {
        for v in 0..self.topology.nr_vcpus() {
            self.wake(VcpuId(v as u32));
        }
    }

    /// `vcpu` comes online or leaves a block.
    pub fn wake(&mut self, vcpu: VcpuId) {
        assert_ne!(self.state(vcpu), State::Runnable, "{vcpu} woke while runnable");
        self.states[vcpu.index()] = State::Runnable;
        self.deliver(Event::Wake(vcpu));
    }

    /// The running `vcpu` blocks.
    pub fn block(&mut self, vcpu: VcpuId) {
        assert!(self.running(vcpu), "{vcpu} blocked while not running");
        self.states[vcpu.index()] = State::Blocked;
        self.deliver(Event::Block(vcpu));
    }

    /// `vcpu` goes offline (from any state but offline: its VM may have ended).
    pub fn down(&mut self, vcpu: VcpuId) {
        assert_ne!(self.state(vcpu), State::Offline, "{vcpu} went down while offline");
        self.states[vcpu.index()] = State::Offline;
        self.deliver(Event::Down(vcpu));
    }

    /// The running `vcpu` yields, to `to` if set.
    pub fn yield_to(&mut self, vcpu: VcpuId, to: Option<VcpuId>) {
        assert!(self.running(vcpu), "{vcpu} yielded while not running");
        self.deliver(Event::Yield { vcpu, to });
    }

    /// VM `vm`'s guest reports `threads` runnable threads.
    pub fn demand(&mut self, vm: usize, threads: u32) {
        self.deliver(Event::Demand { vm, threads });
    }

    /// Lets `duration` pass, delivering the ticks the policy asks for on the way.
    pub fn advance(&mut self, duration: Ns) {
        let end = self.now + duration;
        loop {
            match self.policy.next_tick() {
                Some(tick) if tick <= end => {
                    let tick = tick.max(self.now);
                    self.integrate(tick);
                    self.ticks += 1;
                    self.deliver(Event::Tick);
                    if let Some(next) = self.policy.next_tick() {
                        assert!(next > self.now, "the policy wants a tick at {next} right after one at {}", self.now);
                    }
                }
                _ => break,
            }
        }
        self.integrate(end);
    }

    fn deliver(&mut self, event: Event) {
        let before = self.policy.assignment().to_vec();
        self.policy.handle(self.now, event);
        self.check_written(&before);
        self.check();
        self.update_waiting();
    }

    /// Panics unless every pCPU whose slot changed at the last event is reported written,
    /// once.
    fn check_written(&mut self, before: &[Option<VcpuId>]) {
        let mut written = Vec::new();
        self.policy.drain_written(&mut written);
        let mut unique = written.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), written.len(), "a pCPU reported written twice: {written:?}");
        for (pcpu, (old, new)) in before.iter().zip(self.policy.assignment()).enumerate() {
            assert!(old == new || written.contains(&pcpu), "pCPU {pcpu} changed unreported at {}", self.now);
        }
    }

    /// Accrues the time from now to `until` under the current assignment.
    fn integrate(&mut self, until: Ns) {
        let dt = until - self.now;
        for v in 0..self.states.len() {
            let vcpu = VcpuId(v as u32);
            let assigned = self.pcpu_of(vcpu).is_some();
            let times = &mut self.times[v];
            match self.states[v] {
                State::Runnable if assigned => times.run += dt,
                State::Runnable if self.policy.costopped(vcpu) => times.costop += dt,
                State::Runnable => times.ready += dt,
                State::Blocked if assigned => times.reserved_idle += dt,
                State::Blocked | State::Offline => {}
            }
        }
        self.now = until;
    }

    fn update_waiting(&mut self) {
        for v in 0..self.states.len() {
            let vcpu = VcpuId(v as u32);
            let waiting = self.states[v] == State::Runnable && !self.running(vcpu);
            match (waiting, self.waiting_since[v]) {
                (true, None) => self.waiting_since[v] = Some(self.now),
                (false, Some(since)) => {
                    let times = &mut self.times[v];
                    times.longest_wait = times.longest_wait.max(self.now - since);
                    self.waiting_since[v] = None;
                }
                _ => {}
            }
        }
    }

    /// Panics if the assignment breaks a rule every policy must keep.
    fn check(&self) {
        let assignment = self.policy.assignment();
        assert_eq!(assignment.len(), self.topology.pcpus as usize, "one assignment slot per pCPU");
        for (pcpu, slot) in assignment.iter().enumerate() {
            let Some(vcpu) = *slot else { continue };
            assert!(vcpu.index() < self.states.len(), "pCPU {pcpu} runs unknown {vcpu}");
            assert_eq!(self.pcpu_of(vcpu), Some(pcpu), "{vcpu} is assigned to two pCPUs at {}", self.now);
            match self.states[vcpu.index()] {
                State::Runnable => assert!(!self.policy.costopped(vcpu), "{vcpu} runs while co-stopped"),
                State::Offline => panic!("offline {vcpu} assigned to pCPU {pcpu} at {}", self.now),
                State::Blocked => {
                    assert!(self.allow_reserved, "blocked {vcpu} assigned to pCPU {pcpu} at {}", self.now)
                }
            }
        }
    }
}

/// A small deterministic pseudo-random sequence (an LCG with Knuth's MMIX constants), for
/// scripted runs that must replay identically without a crate.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value, below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}
