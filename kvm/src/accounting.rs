//! What a VCPU's thread counts, readable by others while it runs (the live view): where the
//! VCPU's time goes, and its exits by kind.
//!
//! Time, in esxtop's terms: RUN (its thread on a host CPU, in the guest or in the monitor),
//! RDY (online and not blocked, but waiting for a pCPU: at the dispatcher's gate or in Linux's
//! run queue), WAIT (blocked in the monitor), and offline. RUN comes from the thread's CPU
//! clock, RDY is the rest of the time it was runnable; the dispatcher tells CSTP apart, within
//! RDY.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pv_abi::hypercall::Hypercall;
use tandem_core::metrics::VcpuTimes;

/// One VCPU's counters: its time (written by its thread at each change of phase) and its exits
/// (counted by its thread at each).
#[derive(Debug)]
pub(crate) struct VcpuCounters {
    time: Mutex<Accounting>,
    /// Per hypercall (`Hypercall as usize`), then one for every other exit.
    exits: [AtomicU64; EXIT_KINDS],
}

/// Every hypercall, and `other`.
const EXIT_KINDS: usize = Hypercall::ALL.len() + 1;
const OTHER: usize = Hypercall::ALL.len();

/// A VCPU's time so far, offline included, up to the instant it was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LiveTimes {
    pub run_ns: u64,
    pub ready_ns: u64,
    pub wait_ns: u64,
    pub offline_ns: u64,
}

impl VcpuCounters {
    /// A VCPU offline since `since` (its VM's start).
    pub fn new(since: Instant) -> VcpuCounters {
        VcpuCounters { time: Mutex::new(Accounting::new(since)), exits: Default::default() }
    }

    pub fn time(&self) -> std::sync::MutexGuard<'_, Accounting> {
        self.time.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an exit for `call`, or another kind of exit for `None`.
    pub fn exit(&self, call: Option<Hypercall>) {
        let kind = call.map_or(OTHER, |call| call as usize);
        // One writer: a load and a store, no locked instruction on the VCPU's path.
        self.exits[kind].store(self.exits[kind].load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Exits per hypercall (`Hypercall as usize`) and other exits.
    pub fn exits(&self) -> ([u64; Hypercall::ALL.len()], u64) {
        let calls = std::array::from_fn(|kind| self.exits[kind].load(Ordering::Relaxed));
        (calls, self.exits[OTHER].load(Ordering::Relaxed))
    }
}

/// Where the VCPU's time is going now.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Offline {
        since: Instant,
    },
    Blocked {
        since: Instant,
    },
    /// Runnable since `since`, when its thread's CPU clock read `cpu_ns`.
    Runnable {
        since: Instant,
        cpu_ns: u64,
    },
}

/// Accumulates a VCPU's time from its thread's changes of phase.
#[derive(Debug)]
pub(crate) struct Accounting {
    times: LiveTimes,
    phase: Phase,
    /// The CPU clock of the VCPU's thread, once it runs.
    clock: Option<libc::clockid_t>,
}

/// The CPU time of the thread whose clock is `clock`, in nanoseconds; `None` once the thread
/// has ended.
fn cpu_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; a bad clock id is an error, not UB.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    (rc == 0).then(|| now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// Nanoseconds from `from` to `to`, 0 if `to` is earlier.
pub(crate) fn ns(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

/// Ready time without the part the dispatcher says was co-stopped (held back for siblings),
/// and that part: `(ready, costop)`.
pub(crate) fn split_costop(ready_ns: u64, costop_ns: u64) -> (u64, u64) {
    let costop_ns = costop_ns.min(ready_ns);
    (ready_ns - costop_ns, costop_ns)
}

impl Accounting {
    fn new(since: Instant) -> Accounting {
        Accounting { times: LiveTimes::default(), phase: Phase::Offline { since }, clock: None }
    }

    /// Called by the VCPU's own thread before it first runs: its CPU clock is the one read.
    pub fn thread_started(&mut self) {
        let mut clock = 0;
        // SAFETY: `clock` is a valid place to write; the calling thread is alive.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            self.clock = Some(clock);
        }
    }

    fn cpu_now(&self) -> u64 {
        self.clock.and_then(cpu_ns).unwrap_or(0)
    }

    /// The VCPU is runnable from `at` (its start, or the end of a block while its thread
    /// slept, so that the thread has used no CPU time since); not before it stopped being
    /// runnable (a kick may have woken it before its thread said it blocked).
    pub fn runnable(&mut self, at: Instant) {
        let at = match self.phase {
            Phase::Offline { since } => {
                let at = at.max(since);
                self.times.offline_ns += ns(since, at);
                at
            }
            Phase::Blocked { since } => {
                let at = at.max(since);
                self.times.wait_ns += ns(since, at);
                at
            }
            Phase::Runnable { .. } => return,
        };
        self.phase = Phase::Runnable { since: at, cpu_ns: self.cpu_now() };
    }

    /// The VCPU stops being runnable: it blocks, or goes offline (taken down, or its VM
    /// ended). Its runnable time splits into RUN and RDY.
    pub fn not_runnable(&mut self, blocked: bool) {
        let now = Instant::now();
        self.times = self.at(now, None);
        self.phase = if blocked { Phase::Blocked { since: now } } else { Phase::Offline { since: now } };
    }

    /// The times up to `now`, the open phase included. A VCPU still blocked for its thread
    /// but `woken` already by the dispatcher is ready from then: its thread will say so once
    /// it has a pCPU, dating it back, and the times read now must not have counted that
    /// stretch as blocked.
    pub fn at(&self, now: Instant, woken: Option<Instant>) -> LiveTimes {
        let mut times = self.times;
        match self.phase {
            Phase::Offline { since } => times.offline_ns += ns(since, now),
            Phase::Blocked { since } => {
                let woken = woken.map_or(now, |woken| woken.clamp(since, now));
                times.wait_ns += ns(since, woken);
                times.ready_ns += ns(woken, now);
            }
            Phase::Runnable { since, cpu_ns } => {
                let wall_ns = ns(since, now);
                let run_ns = self.cpu_now().saturating_sub(cpu_ns).min(wall_ns);
                times.run_ns += run_ns;
                times.ready_ns += wall_ns - run_ns;
            }
        }
        times
    }

    /// RUN, RDY and WAIT up to the last change of phase, as runs report them: CSTP is the
    /// dispatcher's to tell apart.
    pub fn times(&self) -> VcpuTimes {
        VcpuTimes {
            run_ns: self.times.run_ns,
            ready_ns: self.times.ready_ns,
            costop_ns: 0,
            wait_ns: self.times.wait_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spin(duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn busy_time_is_run_sleep_is_wait_and_all_of_it_is_accounted() {
        let start = Instant::now();
        let counters = VcpuCounters::new(start);
        let mut accounting = counters.time();
        accounting.thread_started();
        std::thread::sleep(Duration::from_millis(10));
        accounting.runnable(Instant::now());
        spin(Duration::from_millis(30));
        let live = accounting.at(Instant::now(), None);
        assert!(live.run_ns > 0 && live.run_ns + live.ready_ns >= 30_000_000, "{live:?}");
        accounting.not_runnable(true);
        std::thread::sleep(Duration::from_millis(20));
        accounting.runnable(Instant::now());
        accounting.not_runnable(false);
        let times = accounting.times();
        assert!(times.run_ns + times.ready_ns >= 30_000_000, "{times:?}");
        assert!(times.wait_ns >= 20_000_000, "{times:?}");
        let end = Instant::now();
        let live = accounting.at(end, None);
        assert!(live.offline_ns >= 10_000_000, "{live:?}");
        let total = live.run_ns + live.ready_ns + live.wait_ns + live.offline_ns;
        assert_eq!(total, ns(start, end), "every nanosecond in one phase: {live:?}");
        // Offline: nothing more accrues but offline time.
        assert_eq!(accounting.times(), times);
    }

    #[test]
    fn a_vcpu_woken_while_its_thread_waits_for_a_pcpu_is_ready_from_its_wake_and_no_counter_goes_back() {
        let start = Instant::now();
        let counters = VcpuCounters::new(start);
        let mut accounting = counters.time();
        let total = |times: LiveTimes| times.run_ns + times.ready_ns + times.wait_ns + times.offline_ns;
        accounting.runnable(start);
        accounting.not_runnable(true);
        let blocked = accounting.at(Instant::now(), None);
        std::thread::sleep(Duration::from_millis(10));
        let woken = Instant::now();
        std::thread::sleep(Duration::from_millis(10));
        let read = Instant::now();
        let before = accounting.at(read, Some(woken));
        assert_eq!(before.ready_ns, blocked.ready_ns + ns(woken, read), "ready from the wake: {before:?}");
        assert_eq!(total(before), ns(start, read));
        // Its thread, on a pCPU at last, dates the wake back: nothing read before shrinks.
        accounting.runnable(woken);
        let after = accounting.at(Instant::now(), None);
        assert_eq!(after.wait_ns, before.wait_ns);
        assert!(after.run_ns + after.ready_ns >= before.run_ns + before.ready_ns, "{before:?} then {after:?}");
        // A wake dated before the block (a kick that came before its thread blocked) counts
        // from the block: no stretch is counted twice.
        accounting.not_runnable(true);
        accounting.runnable(start);
        let end = Instant::now();
        assert_eq!(total(accounting.at(end, None)), ns(start, end));
    }

    #[test]
    fn exits_are_counted_by_kind() {
        let counters = VcpuCounters::new(Instant::now());
        counters.exit(Some(Hypercall::Block));
        counters.exit(Some(Hypercall::Block));
        counters.exit(None);
        let (calls, other) = counters.exits();
        assert_eq!((calls[Hypercall::Block as usize], calls.iter().sum::<u64>(), other), (2, 2, 1));
    }
}
