//! Forcing a VCPU thread out of KVM_RUN: set the VCPU's `immediate_exit`, then signal its
//! thread. A signal that lands in KVM_RUN makes it return EINTR; one that lands elsewhere is
//! ignored, but `immediate_exit` makes the next KVM_RUN return EINTR at once. The run loop
//! clears the flag when it sees EINTR.

use std::sync::{Mutex, Once};

use kvm_ioctls::VcpuFd;

/// A VCPU thread that can be kicked. Published by the thread itself while it owns its VCPU.
#[derive(Debug, Default)]
pub struct Kicker {
    target: Mutex<Option<Target>>,
}

#[derive(Debug)]
struct Target {
    immediate_exit: *mut u8,
    thread: libc::pthread_t,
}

// SAFETY: the pointer is only dereferenced under the mutex while the publishing thread keeps
// the VCPU (and so its kvm_run mapping) alive; it withdraws it before dropping the VCPU.
unsafe impl Send for Target {}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs the no-op handler for the kick signal, without SA_RESTART so that KVM_RUN is
/// interrupted rather than restarted.
fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well-formed;
        // the handler is async-signal-safe (it does nothing).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            let rc = libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
            assert_eq!(rc, 0, "cannot install the VCPU kick signal handler");
        }
    });
}

impl Kicker {
    /// Called by the VCPU thread before it first runs `vcpu`.
    pub fn publish(&self, vcpu: &mut VcpuFd) {
        install_handler();
        let immediate_exit = &raw mut vcpu.get_kvm_run().immediate_exit;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *self.target.lock().expect("kicker lock") = Some(Target { immediate_exit, thread });
    }

    /// Called by the VCPU thread before it drops its VCPU.
    pub fn withdraw(&self) {
        *self.target.lock().expect("kicker lock") = None;
    }

    /// Makes the VCPU leave KVM_RUN soon (at once if it is in it and on a CPU).
    pub fn kick(&self) {
        let target = self.target.lock().expect("kicker lock");
        if let Some(target) = target.as_ref() {
            // SAFETY: published by the live VCPU thread (see `Target`); a volatile byte store
            // is what KVM reads on entry.
            unsafe { target.immediate_exit.write_volatile(1) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            // SAFETY: the thread is alive: it withdraws under this lock before it ends.
            unsafe { libc::pthread_kill(target.thread, kick_signal()) };
        }
    }
}
