//! Where each VCPU's time goes, in esxtop's terms: RUN (its thread on a host CPU, in the
//! guest or in the monitor), RDY (online and not blocked, but waiting for a pCPU: at the
//! dispatcher's gate or in Linux's run queue), CSTP (ready, but held back by a co-scheduler
//! for its siblings' sake), WAIT (blocked in the monitor). RUN comes from the thread's CPU
//! clock, RDY is the rest of the time it was runnable; the dispatcher tells CSTP apart.

use std::time::Instant;

use tandem_core::metrics::VcpuTimes;

/// Accumulates [`VcpuTimes`] from the VCPU thread's own phase changes.
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    pub times: VcpuTimes,
    /// Wall clock and thread CPU clock when the VCPU last became runnable.
    runnable_since: Option<(Instant, u64)>,
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

impl Accounting {
    /// The VCPU starts: it is runnable from now on.
    pub fn runnable(&mut self) {
        self.runnable_from(Instant::now());
    }

    /// The VCPU left a block at `at`, while its thread slept (it is runnable since, and its
    /// thread has used no CPU time since).
    pub fn runnable_from(&mut self, at: Instant) {
        self.runnable_since = Some((at, thread_cpu_ns()));
    }

    /// The VCPU stops being runnable (it blocks, goes offline, or the VM ends): its runnable
    /// time since [`runnable`](Self::runnable) splits into RUN and RDY.
    pub fn not_runnable(&mut self) {
        if let Some((wall, cpu)) = self.runnable_since.take() {
            let wall_ns = wall.elapsed().as_nanos() as u64;
            let run_ns = thread_cpu_ns().saturating_sub(cpu).min(wall_ns);
            self.times.run_ns += run_ns;
            self.times.ready_ns += wall_ns - run_ns;
        }
    }

    /// Adds time spent blocked, from `blocked` to `woken`.
    pub fn waited(&mut self, blocked: Instant, woken: Instant) {
        self.times.wait_ns += woken.saturating_duration_since(blocked).as_nanos() as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn busy_time_is_run_and_sleep_is_not() {
        let mut accounting = Accounting::default();
        accounting.runnable();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        accounting.not_runnable();
        let blocked = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        accounting.waited(blocked, Instant::now());
        let times = accounting.times;
        assert!(times.run_ns + times.ready_ns >= 30_000_000, "{times:?}");
        assert!(times.run_ns > 0, "{times:?}");
        assert!(times.wait_ns >= 20_000_000, "{times:?}");
        // Not runnable: nothing more accrues.
        accounting.not_runnable();
        assert_eq!(accounting.times, times);
    }
}
