//! The file descriptors a backend waits on, and `poll(2)` over them: with a zero timeout
//! while the backend busy-polls (which of its host sockets are ready, in one system call),
//! and until the next timer while it sleeps.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Readable.
pub const READ: i16 = libc::POLLIN;
/// Writable.
pub const WRITE: i16 = libc::POLLOUT;

/// A set of descriptors and what to wait for on each; after [`WaitSet::wait`], what each is
/// ready for.
#[derive(Debug, Default)]
pub struct WaitSet {
    fds: Vec<libc::pollfd>,
}

/// A descriptor's place in a [`WaitSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(usize);

impl WaitSet {
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Waits for `events` on `fd` (nothing at all if `events` is 0, but errors and hang-ups
    /// are still reported).
    pub fn add(&mut self, fd: RawFd, events: i16) -> Token {
        self.fds.push(libc::pollfd { fd, events, revents: 0 });
        Token(self.fds.len() - 1)
    }

    /// Waits until a descriptor is ready or `timeout` passes (`None`: no timeout).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Rounded up, so that a timer's deadline is not polled a little early over and over.
        let ms = timeout.map_or(-1, |timeout| timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a live, initialised array of `len` pollfd structures.
        let ready = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
            self.fds.iter_mut().for_each(|fd| fd.revents = 0);
        }
        Ok(())
    }

    /// Whether `token`'s descriptor is ready for any of `events`; an error or hang-up counts
    /// as ready for everything, so that the next read or write reports it.
    pub fn ready(&self, token: Token, events: i16) -> bool {
        let revents = self.fds[token.0].revents;
        revents & (events | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }
}
