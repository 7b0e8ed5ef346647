//! The heap: talc over the range the boot info gives.

use talc::{TalcLock, source::Manual};

#[global_allocator]
static HEAP: TalcLock<spinning_top::RawSpinlock, Manual> = TalcLock::new(Manual);

/// Hands the heap range of the boot info to the allocator.
pub(crate) fn init(start: u64, end: u64) {
    let size = end.checked_sub(start).expect("heap range is inverted") as usize;
    // SAFETY: the monitor reserves [start, end) for the heap: it is mapped, unused by the
    // image and the boot stack, and handed to the allocator exactly once.
    let claimed = unsafe { HEAP.lock().claim(start as *mut u8, size) };
    assert!(claimed.is_some(), "heap of {size} bytes is too small");
}
