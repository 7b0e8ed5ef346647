//! The boot info, checked once and kept for the rest of the guest's life.

use core::sync::atomic::{AtomicPtr, Ordering};

use pv_abi::boot::{BOOT_MAGIC, BootInfo};

use crate::hypercall;

static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Checks that the monitor speaks this ABI and remembers the boot info.
pub(crate) fn init(info: &'static BootInfo, vcpu: u32) {
    if info.magic != BOOT_MAGIC || info.abi_version != pv_abi::ABI_VERSION || vcpu != 0 {
        // The console may not work with a foreign monitor; the exit code is the message.
        hypercall::exit(crate::EXIT_USAGE);
    }
    BOOT_INFO.store(core::ptr::from_ref(info).cast_mut(), Ordering::Release);
}

/// The boot info.
pub fn info() -> &'static BootInfo {
    let ptr = BOOT_INFO.load(Ordering::Acquire);
    assert!(!ptr.is_null(), "boot info used before boot::init");
    // SAFETY: set once in `init` from a `&'static BootInfo`, never changed.
    unsafe { &*ptr }
}

/// Number of VCPUs the VM has.
pub fn nr_vcpus() -> u32 {
    info().nr_vcpus
}

/// The page the monitor and the guest share.
pub fn shared_page() -> &'static pv_abi::shared::SharedPage {
    // SAFETY: the monitor reserves the page at this address for the VM's lifetime; it is
    // aligned and made of atomics and plain integers, valid for any bytes.
    unsafe { &*(info().shared_page as *const pv_abi::shared::SharedPage) }
}
