//! One host forward: a listening host socket whose connections go to a guest port, and the
//! connections accepted but not yet carried to the guest.
//!
//! At most [`MAX_CONNECTING`] connections per forward wait for the guest's answer to their
//! SYN at once; the rest queue here. A guest server listens with a small pool of sockets, and
//! a burst of host connections all sent at once would find it empty and be refused. A SYN the
//! guest refuses while other connections to the port are established most likely met a full
//! pool rather than a closed port, so it is retried, up to [`MAX_RETRIES`] times with a
//! backoff that doubles from [`FIRST_BACKOFF`], before the host connection is reset; with
//! none established, the port is closed and the host connection is reset at once.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use tandem_core::net::HostForward;

use super::splice;
use crate::net::wait::{READ, Token, WaitSet};

/// Host connections the system may hold for a forward before the backend accepts them.
const LISTEN_BACKLOG: i32 = 1024;
/// SYNs per forward that may wait for the guest's answer at once.
pub const MAX_CONNECTING: usize = 16;
/// Retries of a refused SYN while other connections to the port are established.
pub const MAX_RETRIES: u32 = 6;
/// The first retry's delay; each further one waits twice as long (2 to 64 ms, 126 ms in all).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(2);

/// A host connection waiting to be carried to the guest.
#[derive(Debug)]
pub struct Waiting {
    pub host: TcpStream,
    /// SYNs the guest has refused so far.
    pub refusals: u32,
    pub not_before: Instant,
}

#[derive(Debug)]
pub struct Forward {
    listener: TcpListener,
    pub guest_port: u16,
    queue: VecDeque<Waiting>,
    /// Connections whose SYN waits for the guest's answer.
    pub connecting: usize,
    /// Connections the guest accepted, still open.
    pub established: usize,
    token: Option<Token>,
}

impl Forward {
    /// Binds the forward's host address: an error (the address in use) names it.
    pub fn bind(forward: &HostForward) -> anyhow::Result<Forward> {
        let listener = TcpListener::bind(forward.host)
            .with_context(|| format!("cannot listen on {} to forward it to the guest", forward.host))?;
        listener.set_nonblocking(true).context("cannot make a forward's listener nonblocking")?;
        // std listens with a backlog of 128: a burst of more host connections than that,
        // arriving while the backend is off its CPU, would have SYNs dropped and retried by
        // the clients a second later. Listening again raises the backlog (Linux caps it at
        // net.core.somaxconn).
        // SAFETY: listen(2) on a socket `listener` owns; no memory is passed.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } < 0 {
            return Err(io::Error::last_os_error()).context("cannot raise a forward's listen backlog");
        }
        Ok(Forward {
            listener,
            guest_port: forward.guest_port,
            queue: VecDeque::new(),
            connecting: 0,
            established: 0,
            token: None,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections of this forward: open, connecting, or queued.
    pub fn connections(&self) -> usize {
        self.queue.len() + self.connecting + self.established
    }

    /// Listens for host connections in `waits`, if `accept` (there is room for more).
    pub fn interest(&mut self, waits: &mut WaitSet, accept: bool) {
        self.token = accept.then(|| waits.add(self.listener.as_raw_fd(), READ));
    }

    /// Accepts the host connections `waits` found, up to `room`; how many.
    pub fn accept(&mut self, waits: &WaitSet, room: usize, now: Instant) -> usize {
        let Some(token) = self.token.take() else {
            return 0;
        };
        if !waits.ready(token, READ) {
            return 0;
        }
        let mut accepted = 0;
        while accepted < room {
            let Ok((host, _)) = self.listener.accept() else {
                break;
            };
            // Both are needed: a blocking socket would stall the backend, and with Nagle on
            // the host would hold back small replies the guest is waiting for.
            if host.set_nonblocking(true).is_err() || host.set_nodelay(true).is_err() {
                continue;
            }
            self.queue.push_back(Waiting { host, refusals: 0, not_before: now });
            accepted += 1;
        }
        accepted
    }

    /// The next queued connection to carry to the guest, if one is due and fewer than
    /// [`MAX_CONNECTING`] SYNs wait for an answer.
    pub fn next_due(&mut self, now: Instant) -> Option<Waiting> {
        if self.connecting >= MAX_CONNECTING {
            return None;
        }
        let at = self.queue.iter().position(|waiting| waiting.not_before <= now)?;
        self.queue.remove(at)
    }

    /// When the next queued connection is due, if any can go when it is.
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.connecting < MAX_CONNECTING).then(|| self.queue.iter().map(|waiting| waiting.not_before).min())?
    }

    /// The guest refused the SYN of `host`, refused `refusals` times before: queued to try
    /// again, or reset.
    pub fn refused(&mut self, host: TcpStream, refusals: u32, now: Instant) {
        if self.established > 0 && refusals < MAX_RETRIES {
            let not_before = now + FIRST_BACKOFF * 2u32.pow(refusals);
            self.queue.push_back(Waiting { host, refusals: refusals + 1, not_before });
        } else {
            splice::reset(&host);
        }
    }
}
