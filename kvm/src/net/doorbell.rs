//! The backend's doorbell: an eventfd that the sleeping backend polls along with its host
//! file descriptors, rung by a guest's `NetNotify` and by the monitor to stop it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Wakes the backend thread; tells it to stop.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    stop: AtomicBool,
}

impl Doorbell {
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Doorbell { fd: unsafe { OwnedFd::from_raw_fd(fd) }, stop: AtomicBool::new(false) })
    }

    /// Wakes the backend if it sleeps, or makes its next sleep return at once.
    pub fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. It can fail only if the
        // counter would overflow, which leaves the doorbell rung anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Clears the doorbell after a wake-up.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; a nonblocking eventfd that was not
        // rung answers EAGAIN, which is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }

    /// Tells the backend to stop, and wakes it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.ring();
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
