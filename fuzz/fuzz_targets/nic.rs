//! The NIC's descriptor and index rules: a descriptor that passes lies wholly in the buffer
//! area with a length the contract allows, and an index that passes is at most a ring ahead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_kvm::net::check::{Desc, pending, rx_buffer, tx_frame};
use tandem_kvm::outcome::Ring;

fuzz_target!(|input: (u64, u64, u64, u32, u16, u32, u32)| {
    let (start, size, addr, len, slot, posted, done) = input;
    let buffers = start..start.saturating_add(size % (1 << 24));
    let desc = Desc { addr, len };
    for checked in [tx_frame(&buffers, slot.into(), desc), rx_buffer(&buffers, slot.into(), desc)] {
        if let Ok(desc) = checked {
            assert!(desc.addr >= buffers.start && desc.addr + u64::from(desc.len) <= buffers.end);
            assert!(desc.len > 0 && desc.len <= pv_abi::net::NET_BUF_SIZE);
        }
    }
    for ring in [Ring::Tx, Ring::Rx] {
        if let Ok(ahead) = pending(ring, posted, done) {
            assert!(ahead as usize <= pv_abi::net::NET_SLOTS && posted.wrapping_sub(done) == ahead);
        }
    }
});
