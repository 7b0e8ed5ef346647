//! The host's side of a served VM: the threads outside the dispatcher that carry its traffic
//! (the monitor's NIC backend with its user-mode TCP stack, the load generator, and the
//! host's loopback between them), modelled as one host thread per VM that does each
//! message's work in turn. A request the client sent is work for it until its frame is in
//! the NIC's ring; a reply the guest wrote, until the client has read it. Its work takes
//! host CPU: the engine runs it on a pCPU it takes from whatever VCPU runs there, as Linux
//! runs the monitor's threads on the cores the VCPU threads hold (see `engine`).
//!
//! One thread does a VM's messages one after another, so a VM's traffic goes no faster than
//! that thread, however many pCPUs its VCPUs have: alone, a busy server is bound by its host
//! thread and leaves VCPU time idle; beside other VMs, it loses little of its rate until the
//! pCPUs' time, host thread and VCPUs together, runs out.
//!
//! Left out: the backend's polling for 50 µs after traffic before it sleeps, and the wait of a
//! host thread woken onto a core whose VCPU thread is in the guest, which on this machine may
//! last until Linux's next tick. Both take pCPU time from the VCPUs beside a server that
//! sends little at a time (the `nbody` VMs beside open-loop servers fare worse on KVM than
//! here); modelled as a host thread holding its pCPU they starve the VCPUs under it, and
//! what Linux does instead (share the core by the threads' run times) is not modelled.

use std::collections::VecDeque;

use sched::Ns;

use crate::model::Served;

/// A message the host thread carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// `requests` requests of connection `conn`, from the client to the NIC's ring.
    Request { conn: usize, requests: u64 },
    /// The replies to `requests` requests of connection `conn`, from the guest to the client.
    Reply { conn: usize, requests: u64 },
}

/// A served VM's host thread: the messages it has to carry, oldest first, and the one it is
/// carrying, on which pCPU.
pub struct HostThread {
    served: Served,
    queue: VecDeque<Message>,
    busy: Option<(Message, usize)>,
}

impl HostThread {
    pub fn new(served: Served) -> HostThread {
        HostThread { served, queue: VecDeque::new(), busy: None }
    }

    /// The host CPU time `message` takes.
    fn cost(&self, message: Message) -> Ns {
        match message {
            Message::Request { .. } => self.served.request_host,
            Message::Reply { .. } => self.served.reply_host,
        }
    }

    /// `message` comes for the thread to carry.
    pub fn push(&mut self, message: Message) {
        self.queue.push_back(message);
    }

    /// Whether it is idle with a message to carry: it wants a pCPU.
    pub fn wants_pcpu(&self) -> bool {
        self.busy.is_none() && !self.queue.is_empty()
    }

    /// It starts on its oldest message on pCPU `pcpu`; returns how long that takes.
    pub fn start(&mut self, pcpu: usize) -> Ns {
        debug_assert!(self.busy.is_none(), "the host thread carries one message at a time");
        let message = self.queue.pop_front().expect("a message to carry");
        self.busy = Some((message, pcpu));
        self.cost(message)
    }

    /// It has carried its message: returns the message and the pCPU it leaves.
    pub fn finish(&mut self) -> (Message, usize) {
        self.busy.take().expect("a message being carried")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_thread_carries_one_message_at_a_time_oldest_first() {
        let served = Served {
            requests: 10,
            clients: 2,
            pipeline: 1,
            rate: None,
            request_path: 1,
            reply_path: 2,
            request_host: 30,
            reply_host: 40,
        };
        let mut host = HostThread::new(served);
        assert!(!host.wants_pcpu());
        host.push(Message::Reply { conn: 1, requests: 1 });
        host.push(Message::Request { conn: 0, requests: 2 });
        assert!(host.wants_pcpu());
        assert_eq!(host.start(1), 40);
        assert!(!host.wants_pcpu(), "busy");
        assert_eq!(host.finish(), (Message::Reply { conn: 1, requests: 1 }, 1));
        assert!(host.wants_pcpu());
        assert_eq!(host.start(0), 30);
        assert_eq!(host.finish(), (Message::Request { conn: 0, requests: 2 }, 0));
        assert!(!host.wants_pcpu());
    }
}
