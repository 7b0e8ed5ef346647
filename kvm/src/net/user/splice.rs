//! One forwarded connection: a host TCP connection spliced to a TCP socket of the host-side
//! stack, connected from the gateway to the guest's port.
//!
//! Bytes move straight between the host socket and the smoltcp socket's buffers, with
//! backpressure both ways: only as much is read from the host as the smoltcp send buffer
//! takes, and bytes the host socket would not take stay in the smoltcp receive buffer,
//! whose shrinking window holds the guest back.
//!
//! Ends, both ways:
//! - host EOF: `close()`, a FIN to the guest, once what was read is sent;
//! - guest FIN: `shutdown(Write)` on the host socket, once every byte before it is written;
//! - host error (a reset): `abort()`, a RST to the guest;
//! - guest RST: the host connection is reset too (`SO_LINGER` 0, then close);
//! - a SYN the guest refuses (RST): the connection is handed back to its forward
//!   ([`Fate::Refused`]), which retries or resets it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use smoltcp::socket::tcp::{self, RecvError, State};

use crate::net::wait::{READ, Token, WRITE, WaitSet};

/// What became of a connection after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Open,
    /// Over, both ways or by a reset: drop it and its socket.
    Closed,
    /// The guest refused the SYN: the host connection, still unanswered, goes back to its
    /// forward ([`Connection::into_host`]).
    Refused,
}

#[derive(Debug)]
pub struct Connection {
    host: TcpStream,
    /// The smoltcp socket's state after the last round.
    state: State,
    /// The host sent EOF, and the socket was closed.
    host_eof: bool,
    /// The guest's FIN was passed on to the host socket.
    guest_eof: bool,
    /// The monitor aborted the socket (a host error): it goes once its RST is out.
    aborted: bool,
    token: Option<Token>,
}

impl Connection {
    /// Splices `host` to `socket`, which is connecting to the guest.
    pub fn new(host: TcpStream) -> Connection {
        Connection { host, state: State::SynSent, host_eof: false, guest_eof: false, aborted: false, token: None }
    }

    /// Whether the guest has not answered the SYN yet.
    pub fn connecting(&self) -> bool {
        self.state == State::SynSent
    }

    /// Adds the host socket to `waits` for what the splice can do next: read while the
    /// smoltcp send buffer has room, write while its receive buffer has bytes.
    pub fn interest(&mut self, socket: &tcp::Socket, waits: &mut WaitSet) {
        let mut events = 0;
        if !self.host_eof && !self.aborted && socket.may_send() && socket.send_queue() < socket.send_capacity() {
            events |= READ;
        }
        if !self.aborted && socket.can_recv() {
            events |= WRITE;
        }
        self.token = (events != 0).then(|| waits.add(self.host.as_raw_fd(), events));
    }

    /// Moves what the host socket is ready for, as `waits` found; whether anything moved.
    pub fn splice(&mut self, socket: &mut tcp::Socket, waits: &WaitSet) -> bool {
        let Some(token) = self.token.take() else {
            return false;
        };
        let mut moved = false;
        if waits.ready(token, WRITE) && socket.can_recv() {
            match socket.recv(|bytes| match self.host.write(bytes) {
                Ok(n) => (n, Ok(n)),
                Err(error) => (0, Err(error)),
            }) {
                Ok(Ok(n)) => moved |= n > 0,
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {}
                Ok(Err(_)) | Err(_) => return self.abort(socket),
            }
        }
        if waits.ready(token, READ) && !self.host_eof && socket.may_send() {
            match socket.send(|room| match self.host.read(room) {
                Ok(0) if !room.is_empty() => (0, Ok(None)),
                Ok(n) => (n, Ok(Some(n))),
                Err(error) => (0, Err(error)),
            }) {
                Ok(Ok(Some(n))) => moved |= n > 0,
                Ok(Ok(None)) => {
                    socket.close();
                    self.host_eof = true;
                    moved = true;
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {}
                Ok(Err(_)) | Err(_) => return self.abort(socket),
            }
        }
        moved
    }

    /// A host error: the guest gets a RST.
    fn abort(&mut self, socket: &mut tcp::Socket) -> bool {
        socket.abort();
        self.aborted = true;
        true
    }

    /// What the last round of the stack made of the connection.
    pub fn fate(&mut self, socket: &mut tcp::Socket) -> Fate {
        let was = std::mem::replace(&mut self.state, socket.state());
        if was == State::SynSent && self.state != State::SynSent {
            // Established: no SYN timeout any more.
            socket.set_timeout(None);
        }
        if self.aborted {
            // Gone once its RST has left (smoltcp then forgets the remote end).
            return if socket.remote_endpoint().is_none() { Fate::Closed } else { Fate::Open };
        }
        let fin_received = matches!(socket.recv(|_| (0, ())), Err(RecvError::Finished));
        if fin_received && !self.guest_eof {
            // Every byte before the FIN is written (`Finished` comes only once the receive
            // buffer is empty): pass the FIN on.
            let _ = self.host.shutdown(Shutdown::Write);
            self.guest_eof = true;
        }
        match self.state {
            State::Closed if was == State::SynSent => Fate::Refused,
            State::Closed if !fin_received => {
                reset(&self.host);
                Fate::Closed
            }
            // Both FINs are through (the socket waits out TIME-WAIT or has closed after
            // LAST-ACK), and the host has every byte.
            State::Closed | State::TimeWait if self.guest_eof => Fate::Closed,
            _ => Fate::Open,
        }
    }

    /// The host connection, to hand back to its forward.
    pub fn into_host(self) -> TcpStream {
        self.host
    }
}

/// Resets a host connection: closing it with a zero linger time sends a RST.
pub fn reset(host: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: sets an option from a live `linger` of the size given on a socket `host` owns.
    unsafe {
        libc::setsockopt(
            host.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
