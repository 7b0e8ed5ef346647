//! Bringing VCPUs up and down. A VCPU starts with the `vcpu_up` hypercall at
//! `secondary_entry` on a stack of its own, which is allocated on its first start and reused
//! on every later one (a VCPU that went down no longer uses it).

use core::sync::atomic::{AtomicU64, Ordering};

use pv_abi::MAX_VCPUS;
use pv_abi::boot::BootInfo;
use pv_abi::hypercall::HcError;

use crate::hypercall;

/// Stack of a VCPU started with `vcpu_up`.
const STACK_SIZE: usize = 64 * 1024;

static STACK_TOPS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

fn stack_top(vcpu: u32) -> u64 {
    let slot = &STACK_TOPS[vcpu as usize];
    let top = slot.load(Ordering::Acquire);
    if top != 0 {
        return top;
    }
    let layout = core::alloc::Layout::from_size_align(STACK_SIZE, 16).expect("valid stack layout");
    // SAFETY: the layout has a non-zero size.
    let base = unsafe { alloc::alloc::alloc(layout) };
    assert!(!base.is_null(), "no memory for the stack of VCPU {vcpu}");
    let top = base as u64 + STACK_SIZE as u64;
    match slot.compare_exchange(0, top, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => top,
        Err(theirs) => {
            // Another VCPU raced us to start this one; keep its stack, free ours.
            // SAFETY: `base` came from `alloc` with this layout and is not used.
            unsafe { alloc::alloc::dealloc(base, layout) };
            theirs
        }
    }
}

/// Starts `vcpu`, which runs `work(vcpu)` and then goes offline: for programs that drive the
/// VCPUs themselves, without threads ([`crate::sched::start`] starts them as schedulers).
pub fn start(vcpu: u32, work: fn(u32)) -> Result<u64, HcError> {
    if vcpu as usize >= MAX_VCPUS {
        return Err(HcError::BadVcpu);
    }
    hypercall::vcpu_up(vcpu, secondary_entry as *const () as u64, stack_top(vcpu), work as usize as u64)
}

/// Where started VCPUs enter (see `pv_abi::boot` for the registers).
extern "C" fn secondary_entry(_boot_info: &'static BootInfo, vcpu: u32, work: u64) -> ! {
    // SAFETY: `start` passed a `fn(u32)` as the argument.
    let work: fn(u32) = unsafe { core::mem::transmute(work as usize) };
    work(vcpu);
    hypercall::vcpu_down()
}
