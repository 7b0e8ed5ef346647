//! Blocking TCP sockets for threads: [`TcpListener`] and [`TcpStream`].
//!
//! A call that must wait blocks its thread, never its VCPU: under the stack's lock it checks
//! its condition, and if it must wait, marks the thread blocking (`sched::prepare_block`),
//! leaves a waker that wakes the thread where the stack will find it (the socket's receive or
//! send waker, or the listener's list of acceptors), releases the lock and blocks. The stack
//! wakes wakers under the same lock, so a wake cannot fall between the check and the block:
//! a thread woken while still on its way to block is requeued by the scheduler at once.

use core::fmt;
use core::net::SocketAddr;
use core::task::Waker;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use spinning_top::guard::SpinlockGuard;

use super::stack::{self, Stack};
use crate::sched;

/// Sockets a listener keeps listening by default, topped up as each gets a connection
/// (smoltcp has no backlog: a listening socket becomes the connection).
pub const DEFAULT_POOL: usize = 32;
/// Connections a listener keeps by default that the application has not accepted yet (as
/// many as arrive at once, within what fits in memory: each holds its socket's buffers).
pub const DEFAULT_BACKLOG: usize = 256;

/// Why a network call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The VM has no NIC.
    NoNic,
    /// Another listener has the port.
    AddrInUse,
    /// Port 0 cannot be listened on.
    InvalidPort,
    /// The connection was reset by the peer, or aborted when the peer went silent.
    Reset,
    /// A write after this side's [`TcpStream::shutdown`].
    Shutdown,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoNic => "the VM has no NIC",
            Self::AddrInUse => "the port is listened on already",
            Self::InvalidPort => "port 0 cannot be listened on",
            Self::Reset => "the connection was reset",
            Self::Shutdown => "the connection's sending half is shut down",
        })
    }
}

impl core::error::Error for NetError {}

/// The stack, locked, for a socket that exists: it was made on the stack, so the VM has one.
fn stack() -> SpinlockGuard<'static, Stack> {
    stack::lock().expect("a socket exists only on a VM with a NIC")
}

/// Marks the running thread blocking and returns a waker that wakes it: the first half of a
/// race-free wait, called under the stack's lock before the waker is left where the stack
/// finds it.
fn prepare_wait() -> Waker {
    let me = sched::current();
    sched::prepare_block(&me);
    Waker::from(me)
}

/// The second half of a wait: releases the stack's lock and blocks until woken.
fn wait(stack: SpinlockGuard<'static, Stack>) {
    drop(stack);
    sched::block();
}

/// A TCP port listened on, with a pool of sockets listening and a backlog of connections
/// not accepted yet (see [`DEFAULT_POOL`] and [`DEFAULT_BACKLOG`]). Dropping it stops
/// listening; connections it accepted go on.
#[derive(Debug)]
pub struct TcpListener {
    port: u16,
}

impl TcpListener {
    /// Listens on `port` with the default pool and backlog.
    pub fn bind(port: u16) -> Result<TcpListener, NetError> {
        Self::bind_with(port, DEFAULT_POOL, DEFAULT_BACKLOG)
    }

    /// Listens on `port` with `pool` sockets listening (at least one), keeping up to
    /// `backlog` connections until they are accepted; connections past that are refused
    /// with a reset.
    pub fn bind_with(port: u16, pool: usize, backlog: usize) -> Result<TcpListener, NetError> {
        if port == 0 {
            return Err(NetError::InvalidPort);
        }
        let mut stack = stack::lock().ok_or(NetError::NoNic)?;
        if !stack.listen(port, pool.max(1), backlog) {
            return Err(NetError::AddrInUse);
        }
        Ok(TcpListener { port })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for a connection and returns it. Connections reset before they were accepted
    /// are skipped.
    pub fn accept(&self) -> Result<TcpStream, NetError> {
        loop {
            let mut stack = stack();
            if let Some(handle) = stack.accept(self.port) {
                let peer = stack.tcp(handle).remote_endpoint().expect("a connected socket has a peer");
                return Ok(TcpStream { handle, peer: peer.into(), peer_closed: false, shut_down: false });
            }
            stack.wait_accept(self.port, prepare_wait());
            wait(stack);
        }
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        stack().unlisten(self.port);
    }
}

/// A TCP connection. Dropping it closes it (see [`TcpStream::close`]).
#[derive(Debug)]
pub struct TcpStream {
    /// The stack's socket, until the stream is dropped.
    handle: SocketHandle,
    peer: SocketAddr,
    /// Whether the peer's FIN was seen: the stream ends once its data is read, even after
    /// smoltcp has closed the socket and forgotten the FIN.
    peer_closed: bool,
    /// Whether [`TcpStream::shutdown`] sent the FIN.
    shut_down: bool,
}

impl TcpStream {
    /// The peer's address and port.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Notes whether the socket's state shows the peer's FIN.
    fn observe(&mut self, state: tcp::State) {
        use tcp::State::{CloseWait, Closing, LastAck, TimeWait};
        self.peer_closed |= matches!(state, CloseWait | LastAck | Closing | TimeWait);
    }

    /// Reads what has arrived into `buf`, waiting until something has; `Ok(0)` once the
    /// peer has shut its sending half down and everything before was read (or for an empty
    /// `buf`). A connection reset before its end gives [`NetError::Reset`]. (One whose FIN
    /// this stream never saw, because it shut down first and the connection went through
    /// TIME-WAIT, 10 s, before the next call, reads as reset too: smoltcp forgets how a
    /// connection ended.)
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut stack = stack();
            let socket = stack.tcp(self.handle);
            if socket.can_recv() {
                let read = socket.recv_slice(buf).expect("a socket with data to read can be read");
                // Reading opened the receive window: the next poll may have to say so.
                stack.mark_due();
                return Ok(read);
            }
            let state = socket.state();
            self.observe(state);
            if self.peer_closed {
                return Ok(0);
            }
            if state == tcp::State::Closed {
                return Err(NetError::Reset);
            }
            socket.register_recv_waker(&prepare_wait());
            wait(stack);
        }
    }

    /// Writes as much of `buf` as the send buffer takes, waiting until it takes something,
    /// and sends it at once; returns the bytes taken.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        if self.shut_down {
            return Err(NetError::Shutdown);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut stack = stack();
            let socket = stack.tcp(self.handle);
            self.observe(socket.state());
            if socket.can_send() {
                let written = socket.send_slice(buf).expect("a socket with room to send can be written");
                stack.poll();
                return Ok(written);
            }
            if !socket.may_send() {
                return Err(NetError::Reset);
            }
            socket.register_send_waker(&prepare_wait());
            wait(stack);
        }
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let written = self.write(buf)?;
            buf = &buf[written..];
        }
        Ok(())
    }

    /// Shuts the sending half down: the peer reads the end of the stream once it has read
    /// what was written. Reading goes on.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        let mut stack = stack();
        let state = stack.tcp(self.handle).state();
        self.observe(state);
        stack.close(self.handle);
        stack.poll();
    }

    /// Closes the connection: the peer reads the end of the stream after what was written,
    /// which is still sent; the stack keeps the socket until the connection is over.
    pub fn close(self) {}
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let mut stack = stack();
        stack.release(self.handle);
        stack.poll();
    }
}
