//! Stopping the process's VMs from outside, as a monitor does on SIGINT or SIGTERM: every VM
//! running is asked to end (the shared page's `stop_requested`, then a kick to each VCPU),
//! and those still running a grace period later are stopped. A VM that starts after that
//! is stopped at once, so a loop of runs ends with the run it was in.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::outcome::Outcome;
use crate::vm_shared::VmShared;

/// How long a guest asked to end has before it is stopped.
pub const GRACE: Duration = Duration::from_secs(1);

/// The signal that interrupted the process, 0 until one did.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The VMs running now.
static RUNNING: Mutex<Vec<Weak<VmShared>>> = Mutex::new(Vec::new());

/// Asks every running VM to end, and stops those still running after [`GRACE`]; returns
/// once they are. VMs started from now on are stopped as they start.
pub fn interrupt(signal: i32) {
    INTERRUPTED.store(signal, Ordering::Release);
    let running: Vec<Arc<VmShared>> = lock().iter().filter_map(Weak::upgrade).collect();
    for vm in &running {
        ask(vm);
    }
    std::thread::sleep(GRACE);
    for vm in lock().iter().filter_map(Weak::upgrade) {
        vm.finish(Outcome::Interrupted(signal));
    }
}

/// The signal that interrupted the process, if one did.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::Acquire)).filter(|&signal| signal != 0)
}

/// Registers `vm` as running until [`finished`]; one started after an interruption is
/// stopped at once.
pub(crate) fn started(vm: &Arc<VmShared>) {
    lock().push(Arc::downgrade(vm));
    if let Some(signal) = interrupted() {
        vm.finish(Outcome::Interrupted(signal));
    }
}

/// `vm` has ended.
pub(crate) fn finished(vm: &Arc<VmShared>) {
    lock().retain(|entry| entry.strong_count() > 0 && !std::ptr::eq(entry.as_ptr(), Arc::as_ptr(vm)));
}

/// Asks `vm`'s guest to end and kicks every VCPU, so that a blocked one sees it.
fn ask(vm: &VmShared) {
    vm.memory.shared_page().stop_requested.store(1, Ordering::Release);
    (0..vm.nr_vcpus).for_each(|vcpu| vm.kick(vcpu));
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Weak<VmShared>>> {
    RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
