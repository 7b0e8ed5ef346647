//! Stopping the process's VMs from outside, as a monitor does on SIGINT or SIGTERM: every VM
//! running is asked to end (the shared page's `stop_requested`, then a kick to each VCPU),
//! and those still running a grace period later are stopped. A VM that starts after that
//! is stopped at once, so a loop of runs ends with the run it was in.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::outcome::Outcome;
use crate::running;
use crate::vm_shared::VmShared;

/// How long a guest asked to end has before it is stopped.
pub const GRACE: Duration = Duration::from_secs(1);

/// The signal that interrupted the process, 0 until one did.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Asks every running VM to end, and stops those still running after [`GRACE`]; returns
/// once they are. VMs started from now on are stopped as they start.
pub fn interrupt(signal: i32) {
    INTERRUPTED.store(signal, Ordering::Release);
    for vm in running::all() {
        ask(&vm);
    }
    std::thread::sleep(GRACE);
    for vm in running::all() {
        vm.finish(Outcome::Interrupted(signal));
    }
}

/// The signal that interrupted the process, if one did.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::Acquire)).filter(|&signal| signal != 0)
}

/// Stops `vm`, just registered as running, if the process was interrupted: a VM that starts
/// after an interruption is stopped at once.
pub(crate) fn unless_interrupted(vm: &Arc<VmShared>) {
    if let Some(signal) = interrupted() {
        vm.finish(Outcome::Interrupted(signal));
    }
}

/// Asks `vm`'s guest to end and kicks every VCPU, so that a blocked one sees it.
fn ask(vm: &VmShared) {
    vm.memory.shared_page().stop_requested.store(1, Ordering::Release);
    (0..vm.nr_vcpus).for_each(|vcpu| vm.kick(vcpu));
}
