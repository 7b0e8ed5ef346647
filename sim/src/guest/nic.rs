//! A served workload's NIC and sockets, counted in requests: the backend puts requests in the
//! RX ring, a poll takes them into their connections' sockets, and each connection's thread
//! reads what its socket holds, blocking while it holds nothing.

use std::collections::VecDeque;

/// One connection's socket.
#[derive(Clone, Copy, Debug, Default)]
struct Socket {
    /// Requests taken in by a poll and not read yet.
    received: u64,
    /// Requests read and not answered yet.
    taken: u64,
    /// Its thread waits until requests come in.
    reader_waits: bool,
}

/// The RX ring and the sockets; connection `c` is thread `c`'s.
#[derive(Clone, Debug, Default)]
pub(super) struct Nic {
    /// Requests in the ring that no poll has taken in yet, by connection, oldest first.
    ring: VecDeque<(usize, u64)>,
    sockets: Vec<Socket>,
    /// The blocked VCPU the backend kicked, until it wakes: the backend kicks the one VCPU
    /// declared waiting for frames (`rx_waiting`), taking the declaration.
    pub(super) kicked: Option<usize>,
}

impl Nic {
    pub(super) fn new(connections: usize) -> Nic {
        Nic { sockets: vec![Socket::default(); connections], ..Nic::default() }
    }

    /// The backend puts `requests` requests of connection `conn` in the ring.
    pub(super) fn deliver(&mut self, conn: usize, requests: u64) {
        self.ring.push_back((conn, requests));
    }

    /// Whether the ring is empty.
    pub(super) fn quiet(&self) -> bool {
        self.ring.is_empty()
    }

    /// A poll takes the ring's requests into their sockets, up to the first that ends a
    /// reader's wait: returns that reader's connection, or `None` once the ring is empty.
    pub(super) fn take_in(&mut self) -> Option<usize> {
        while let Some((conn, requests)) = self.ring.pop_front() {
            let socket = &mut self.sockets[conn];
            socket.received += requests;
            if std::mem::take(&mut socket.reader_waits) {
                return Some(conn);
            }
        }
        None
    }

    /// Connection `conn`'s thread reads all its socket holds; returns whether there was
    /// anything, and if not, the thread waits.
    pub(super) fn read(&mut self, conn: usize) -> bool {
        let socket = &mut self.sockets[conn];
        socket.taken += std::mem::take(&mut socket.received);
        socket.reader_waits = socket.taken == 0;
        !socket.reader_waits
    }

    /// Requests connection `conn`'s thread has read and not answered.
    pub(super) fn taken(&self, conn: usize) -> u64 {
        self.sockets[conn].taken
    }

    /// Connection `conn`'s thread answers the requests it read; returns how many.
    pub(super) fn answer(&mut self, conn: usize) -> u64 {
        std::mem::take(&mut self.sockets[conn].taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_waits_until_a_poll_takes_its_requests_in() {
        let mut nic = Nic::new(2);
        assert!(!nic.read(1), "nothing came");
        nic.deliver(0, 3);
        nic.deliver(1, 2);
        nic.deliver(1, 1);
        assert!(!nic.quiet());
        // Connection 0's requests go in on the way to the waiting reader of connection 1.
        assert_eq!(nic.take_in(), Some(1));
        assert_eq!(nic.take_in(), None, "its reader was woken once");
        assert!(nic.quiet());
        assert!(nic.read(1) && nic.read(0));
        assert_eq!((nic.taken(0), nic.taken(1)), (3, 3));
        assert_eq!(nic.answer(1), 3);
        assert_eq!(nic.taken(1), 0);
    }
}
