//! The guest image check and load: any bytes as an ELF file are refused with an error, or
//! checked and loaded into 16 MiB of memory; never a panic, never a write past memory.
#![no_main]

use std::cell::RefCell;
use std::mem::MaybeUninit;

use libfuzzer_sys::fuzz_target;
use tandem_kvm::image::{check, load};

const MEMORY: usize = 16 << 20;

thread_local! {
    static GUEST: RefCell<Vec<MaybeUninit<u8>>> = RefCell::new(vec![MaybeUninit::new(0); MEMORY]);
}

fuzz_target!(|data: &[u8]| {
    if check(data).is_err() {
        return;
    }
    GUEST.with_borrow_mut(|memory| {
        let heap_end = (MEMORY - (1 << 20)) as u64;
        if let Ok(placement) = load(data, memory, heap_end) {
            assert!(placement.start <= placement.entry && placement.entry < placement.end);
            assert!(placement.end <= heap_end);
        }
    });
});
