//! Time from the TSC, whose frequency the monitor puts in the boot info.

use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Takes the TSC frequency from the boot info.
pub(crate) fn init(tsc_khz: u64) {
    assert!(tsc_khz > 0, "the monitor gave no TSC frequency");
    TSC_KHZ.store(tsc_khz, Ordering::Relaxed);
}

/// The TSC, as the guest reads it.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is allowed at ring 3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Converts TSC ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(TSC_KHZ.load(Ordering::Relaxed))) as u64
}

/// Converts nanoseconds to TSC ticks.
pub fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(TSC_KHZ.load(Ordering::Relaxed)) / 1_000_000) as u64
}

/// The TSC value `ns` nanoseconds from now: a deadline for the block hypercall.
pub fn deadline_after_ns(ns: u64) -> u64 {
    tsc().saturating_add(ns_to_ticks(ns))
}
