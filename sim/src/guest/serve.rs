//! A server's side of the NIC, as `guest-kernel`'s network stack does it: the backend puts
//! requests in the RX ring; a VCPU polls the NIC at each scheduler pass (a thread blocks, an
//! idle VCPU looks for work) and when a thread writes, taking the ring's requests into their
//! sockets; a thread the poll wakes is queued there, kicking nobody, and idle VCPUs still
//! polling steal it. An idle VCPU's poll ends as soon as requests come; once it has blocked,
//! the backend kicks it, one VCPU at a time. While every VCPU runs a thread, requests wait
//! in the ring for the next pass.

use sched::harness::State;

use super::{Activity, Effect, Guest, Monitor, PerCpu, Then, ThreadState};

impl Guest {
    /// The NIC's backend puts `requests` requests of connection `conn` in the RX ring: a VCPU
    /// polling takes them in at once; else, if no VCPU is about to poll (idle and runnable,
    /// or on its way to block, which looks at the ring first), the backend kicks a blocked
    /// idle VCPU, unless its kick to one is still on its way. (The real backend kicks the one
    /// VCPU declared in `rx_waiting` and takes the declaration; the other blocked VCPUs
    /// declare themselves again when a timer or the stack's deadline wakes them, which is not
    /// modelled: here, once the kicked VCPU is awake, the next delivery may kick another.)
    pub fn deliver(&mut self, conn: usize, requests: u64, m: &mut Monitor) {
        self.nic.deliver(conn, requests);
        let grant = self.grant as usize;
        let vcpus = 0..self.cpus.len().min(grant);
        let idle = |cpu: &PerCpu| matches!(cpu.activity, Activity::Idle { .. });
        if let Some(y) = vcpus.clone().find(|&y| self.is_running(y) && idle(&self.cpus[y])) {
            self.poke(y, 0, m);
            return;
        }
        let about_to_poll = |y: usize| {
            let cpu = &self.cpus[y];
            let blocking = matches!(cpu.activity, Activity::Exit { then: Then::Block, .. })
                && cpu.resume_to == Activity::Idle { poll_until: 0 };
            m.states[y] == State::Runnable && (idle(cpu) || blocking)
        };
        if self.nic.kicked.is_some() || vcpus.clone().any(about_to_poll) {
            return;
        }
        let blocked_idle = |y: usize| {
            let cpu = &self.cpus[y];
            m.states[y] == State::Blocked && !cpu.kicked && cpu.resume_to == Activity::Idle { poll_until: 0 }
        };
        if let Some(y) = vcpus.into_iter().find(|&y| blocked_idle(y)) {
            self.nic.kicked = Some(y);
            self.cpus[y].kicked = true;
            m.effects.push(Effect::Wake { vcpu: y, after: self.costs.kick });
        }
    }

    /// A poll on `x`: the ring's requests go into their sockets, and the threads that waited
    /// for them are queued, kicking nobody; other idle VCPUs, still polling, steal those that
    /// `x` does not take.
    pub(super) fn poll_nic(&mut self, x: usize, m: &mut Monitor) {
        let mut woken = false;
        while let Some(t) = self.nic.take_in() {
            self.threads[t].state = ThreadState::Ready;
            self.pool.push_back(t);
            woken = true;
        }
        if !woken {
            return;
        }
        let idle = |cpu: &PerCpu| matches!(cpu.activity, Activity::Idle { .. });
        let mut spare = self.pool.len() - usize::from(idle(&self.cpus[x]));
        for y in 0..self.cpus.len().min(self.grant as usize) {
            if spare == 0 {
                return;
            }
            if y != x && self.is_running(y) && idle(&self.cpus[y]) {
                self.poke(y, 0, m);
                spare -= 1;
            }
        }
    }

    /// Thread `t` on `x` reads its connection: it takes the requests that came in, or blocks
    /// until some do.
    pub(super) fn receive(&mut self, x: usize, t: usize, m: &mut Monitor) {
        if self.nic.read(t) {
            self.threads[t].pc += 1;
        } else {
            self.release_thread(x, ThreadState::Blocked, m);
        }
    }

    /// Thread `t` on `x` writes the replies to the requests it took: they leave for the
    /// client, and the write polls the NIC. Returns whether the run's requests are all
    /// answered (a request is done and answered at the same instant), which ends the load and
    /// the server.
    pub(super) fn reply(&mut self, x: usize, t: usize, m: &mut Monitor) -> bool {
        let requests = self.nic.answer(t);
        m.effects.push(Effect::Replied { conn: t, requests });
        self.threads[t].pc += 1;
        self.poll_nic(x, m);
        self.model.served.is_some_and(|served| self.ops >= served.requests)
    }
}
