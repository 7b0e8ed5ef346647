//! The process's running VMs, from their start to their end: where the stop on a signal and
//! the live view find them.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::vm_shared::VmShared;

static RUNNING: Mutex<Vec<Weak<VmShared>>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<Weak<VmShared>>> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `vm` runs from now until [`remove`].
pub(crate) fn add(vm: &Arc<VmShared>) {
    lock().push(Arc::downgrade(vm));
}

/// `vm` has ended.
pub(crate) fn remove(vm: &Arc<VmShared>) {
    lock().retain(|entry| entry.strong_count() > 0 && !std::ptr::eq(entry.as_ptr(), Arc::as_ptr(vm)));
}

/// The VMs running now, in the order they started.
pub(crate) fn all() -> Vec<Arc<VmShared>> {
    lock().iter().filter_map(Weak::upgrade).collect()
}
