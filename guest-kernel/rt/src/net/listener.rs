//! A port listened on. smoltcp has no backlog: a listening socket becomes the connection. So
//! a listener keeps a pool of sockets listening on its port, topped up by [`Listener::tend`]
//! (which the stack calls after every frame it takes in, so that connections arriving
//! together each find one), and keeps the connections not yet accepted (handshake under way
//! or done) up to its backlog. Past that, new connections find no listening socket and
//! smoltcp refuses them with a reset, until the application accepts.
//!
//! The sockets are all made here, the only place the stack makes them (it has no outgoing
//! connections): the stack's buffer size and TCP options are this module's.

use alloc::vec;
use alloc::vec::Vec;
use core::task::Waker;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Bytes of each TCP socket's receive buffer, and of its send buffer: a full window at
/// 64 KiB covers a LAN's bandwidth-delay product, and 128 KiB a connection lets 200 and more
/// fit in a guest of 128 MiB with their threads' stacks. One byte short of 64 KiB, the
/// largest window without window scaling: smoltcp scales a 64 KiB buffer's window by 2, and
/// the rounding shrinks the advertised window's right edge by a byte, after which a segment
/// the peer sent into the old window is refused, the peer's later ACKs lie past the
/// receiver's next sequence number and are refused too while its window is zero, and both
/// ends of an echo stalled for good (see the README's Choices).
const SOCKET_BUFFER_BYTES: usize = 65535;

/// A TCP socket with the stack's buffers, without delayed ACKs or Nagle's algorithm: a
/// request's reply leaves as soon as it is written, and its ACK at once.
fn new_socket() -> tcp::Socket<'static> {
    let buffer = || tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER_BYTES]);
    let mut socket = tcp::Socket::new(buffer(), buffer());
    socket.set_ack_delay(None);
    socket.set_nagle_enabled(false);
    socket
}

/// Whether a socket of the pool is past the handshake (connected, or reset since): one for
/// accept to take.
fn ready(state: tcp::State) -> bool {
    !matches!(state, tcp::State::Listen | tcp::State::SynReceived)
}

/// A port listened on, its sockets, and the threads waiting in accept.
pub(super) struct Listener {
    port: u16,
    /// Sockets kept listening.
    pool: usize,
    /// Most connections kept that are not accepted yet.
    backlog: usize,
    /// Its sockets: listening, in the handshake, or connected and not yet accepted.
    sockets: Vec<SocketHandle>,
    /// Threads waiting in accept, woken when a connection is ready.
    acceptors: Vec<Waker>,
}

impl Listener {
    /// Listens on `port` (not 0) with `pool` sockets (at least one), in `sockets`.
    pub(super) fn new(port: u16, pool: usize, backlog: usize, sockets: &mut SocketSet<'static>) -> Self {
        let mut listener = Listener { port, pool, backlog, sockets: Vec::new(), acceptors: Vec::new() };
        listener.tend(sockets);
        listener
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Tops the pool of listening sockets up (within the backlog), and wakes the acceptors if
    /// a connection is ready.
    pub(super) fn tend(&mut self, sockets: &mut SocketSet<'static>) {
        let (mut listening, mut any_ready) = (0, false);
        for &handle in &self.sockets {
            match sockets.get::<tcp::Socket>(handle).state() {
                tcp::State::Listen => listening += 1,
                state => any_ready |= ready(state),
            }
        }
        while listening < self.pool && self.sockets.len() < self.pool + self.backlog {
            let mut socket = new_socket();
            socket.listen(self.port).expect("a new socket listens on a port that is not 0");
            self.sockets.push(sockets.add(socket));
            listening += 1;
        }
        if any_ready {
            self.acceptors.drain(..).for_each(Waker::wake);
        }
    }

    /// A connection, if one is ready: its socket is the caller's from now on. Connections
    /// reset before they were accepted are removed on the way.
    pub(super) fn take(&mut self, sockets: &mut SocketSet<'static>) -> Option<SocketHandle> {
        let mut taken = None;
        self.sockets.retain(|&handle| {
            let state = sockets.get::<tcp::Socket>(handle).state();
            if taken.is_some() || !ready(state) {
                return true;
            }
            if state == tcp::State::Closed {
                sockets.remove(handle);
            } else {
                taken = Some(handle);
            }
            false
        });
        self.tend(sockets);
        taken
    }

    /// Has `waker` woken when a connection is ready.
    pub(super) fn wait(&mut self, waker: Waker) {
        self.acceptors.push(waker);
    }

    /// Its sockets, listening or not, for the stack to close.
    pub(super) fn into_sockets(self) -> Vec<SocketHandle> {
        self.sockets
    }
}
