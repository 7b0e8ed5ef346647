//! The NIC's rules, checked on values the monitor has already read out of guest memory: pure,
//! so that a descriptor is checked and then used as the same locals, whatever the guest
//! writes meanwhile.
//!
//! - A descriptor's buffer, `[addr, addr + len)`, lies wholly in the buffer area.
//! - A TX frame has 1 to [`NET_BUF_SIZE`] bytes: the contract's bound (a buffer), not the
//!   Ethernet one ([`NET_FRAME_MAX`]), so that no frame a guest may post by the ABI stops it;
//!   the backends carry longer frames as they can.
//! - An RX buffer holds [`NET_FRAME_MAX`] to [`NET_BUF_SIZE`] bytes: every frame fits.
//! - The guest's index runs at most [`NET_SLOTS`] ahead of the monitor's, in wrapping `u32`
//!   arithmetic (an index behind the monitor's is a huge distance ahead).
//! - `rx_waiting` is 0 or a VCPU id + 1.

use std::ops::Range;

use pv_abi::net::{NET_BUF_SIZE, NET_FRAME_MAX, NET_SLOTS};

use crate::outcome::{NicFault, Ring};

/// A descriptor as read, once, from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
}

/// Checks TX descriptor `slot`: the frame it names, in `buffers`.
pub fn tx_frame(buffers: &Range<u64>, slot: usize, desc: Desc) -> Result<Desc, NicFault> {
    if desc.len == 0 || desc.len > NET_BUF_SIZE {
        return Err(NicFault::TxLength { slot, len: desc.len, max: NET_BUF_SIZE });
    }
    inside(buffers, Ring::Tx, slot, desc)
}

/// Checks RX descriptor `slot`: the empty buffer it posts, in `buffers`.
pub fn rx_buffer(buffers: &Range<u64>, slot: usize, desc: Desc) -> Result<Desc, NicFault> {
    if !(NET_FRAME_MAX..=NET_BUF_SIZE).contains(&desc.len) {
        return Err(NicFault::RxCapacity { slot, len: desc.len, min: NET_FRAME_MAX, max: NET_BUF_SIZE });
    }
    inside(buffers, Ring::Rx, slot, desc)
}

fn inside(buffers: &Range<u64>, ring: Ring, slot: usize, desc: Desc) -> Result<Desc, NicFault> {
    let end = desc.addr.checked_add(u64::from(desc.len));
    if desc.addr < buffers.start || end.is_none_or(|end| end > buffers.end) {
        let (area_start, area_end) = (buffers.start, buffers.end);
        return Err(NicFault::OutsideBuffers { ring, slot, addr: desc.addr, len: desc.len, area_start, area_end });
    }
    Ok(desc)
}

/// How many entries the guest's index `posted` has ahead of the monitor's `done` on `ring`.
pub fn pending(ring: Ring, posted: u32, done: u32) -> Result<u32, NicFault> {
    let ahead = posted.wrapping_sub(done);
    if ahead as usize > NET_SLOTS {
        let (posted_name, done_name) = match ring {
            Ring::Tx => ("tx_posted", "tx_done"),
            Ring::Rx => ("rx_posted", "rx_filled"),
        };
        return Err(NicFault::IndexAhead {
            posted: posted_name,
            posted_value: posted,
            done: done_name,
            done_value: done,
            ahead,
            slots: NET_SLOTS,
        });
    }
    Ok(ahead)
}

/// The VCPU a taken `rx_waiting` value names, if any, in a VM of `vcpus` VCPUs.
pub fn rx_waiting(value: u32, vcpus: u32) -> Result<Option<u32>, NicFault> {
    match value {
        0 => Ok(None),
        _ if value <= vcpus => Ok(Some(value - 1)),
        _ => Err(NicFault::RxWaiting { value, vcpus }),
    }
}

/// The slot an index is at.
pub fn slot(index: u32) -> usize {
    index as usize % NET_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    const AREA: Range<u64> = 0x10_000..0x20_000;

    fn desc(addr: u64, len: u32) -> Desc {
        Desc { addr, len }
    }

    #[test]
    fn a_tx_frame_lies_in_the_buffer_area_with_1_to_a_buffer_of_bytes() {
        assert_eq!(tx_frame(&AREA, 0, desc(0x10_000, 1)), Ok(desc(0x10_000, 1)));
        assert_eq!(tx_frame(&AREA, 0, desc(0x20_000 - 2048, 2048)), Ok(desc(0x1f_800, 2048)));
        assert_eq!(tx_frame(&AREA, 3, desc(0x10_000, 0)), Err(NicFault::TxLength { slot: 3, len: 0, max: 2048 }));
        assert!(matches!(tx_frame(&AREA, 3, desc(0x10_000, 2049)), Err(NicFault::TxLength { len: 2049, .. })));
        for (addr, len) in [(0xffff, 60), (0x1ffff, 2), (0x20_000, 1), (u64::MAX - 10, 60), (0, 60)] {
            let fault = tx_frame(&AREA, 17, desc(addr, len)).unwrap_err();
            let expected = NicFault::OutsideBuffers {
                ring: Ring::Tx,
                slot: 17,
                addr,
                len,
                area_start: AREA.start,
                area_end: AREA.end,
            };
            assert_eq!(fault, expected);
        }
    }

    #[test]
    fn an_rx_buffer_holds_every_frame_and_no_more_than_a_buffer() {
        assert_eq!(rx_buffer(&AREA, 0, desc(0x10_000, NET_FRAME_MAX)), Ok(desc(0x10_000, NET_FRAME_MAX)));
        assert_eq!(rx_buffer(&AREA, 0, desc(0x10_000, NET_BUF_SIZE)), Ok(desc(0x10_000, NET_BUF_SIZE)));
        for len in [0, 60, NET_FRAME_MAX - 1, NET_BUF_SIZE + 1, u32::MAX] {
            let expected = NicFault::RxCapacity { slot: 5, len, min: NET_FRAME_MAX, max: NET_BUF_SIZE };
            assert_eq!(rx_buffer(&AREA, 5, desc(0x10_000, len)), Err(expected));
        }
        let fault = rx_buffer(&AREA, 1, desc(0x20_000 - 1000, 2048)).unwrap_err();
        assert!(matches!(fault, NicFault::OutsideBuffers { ring: Ring::Rx, slot: 1, .. }), "{fault}");
    }

    #[test]
    fn indices_may_run_a_ring_ahead_in_wrapping_arithmetic_and_no_more() {
        let slots = NET_SLOTS as u32;
        assert_eq!(pending(Ring::Tx, 0, 0), Ok(0));
        assert_eq!(pending(Ring::Tx, slots, 0), Ok(slots));
        assert_eq!(pending(Ring::Rx, 5, u32::MAX - 2), Ok(8), "across the wrap");
        assert_eq!(pending(Ring::Rx, slots - 1, u32::MAX), Ok(slots), "a full ring across the wrap");
        let ahead = pending(Ring::Tx, slots + 1, 0).unwrap_err();
        assert_eq!(ahead.to_string(), "the NIC's tx_posted is 257, 257 ahead of tx_done (0); the ring has 256 slots");
        let behind = pending(Ring::Rx, 9, 10).unwrap_err();
        assert_eq!(
            behind.to_string(),
            "the NIC's rx_posted is 9, 4294967295 ahead of rx_filled (10); the ring has 256 slots"
        );
        assert!(pending(Ring::Tx, 0, 1).is_err(), "behind the monitor's");
    }

    #[test]
    fn rx_waiting_names_a_vcpu_of_the_vm_or_none() {
        assert_eq!(rx_waiting(0, 4), Ok(None));
        assert_eq!(rx_waiting(1, 4), Ok(Some(0)));
        assert_eq!(rx_waiting(4, 4), Ok(Some(3)));
        assert_eq!(rx_waiting(5, 4), Err(NicFault::RxWaiting { value: 5, vcpus: 4 }));
        assert_eq!(
            rx_waiting(u32::MAX, 4).unwrap_err().to_string(),
            format!("the NIC's rx_waiting is {} (VCPU id + 1), but the VM has 4 VCPUs", u32::MAX)
        );
    }

    #[test]
    fn slots_wrap_with_the_index() {
        assert_eq!(slot(0), 0);
        assert_eq!(slot(NET_SLOTS as u32 + 17), 17);
        assert_eq!(slot(u32::MAX), NET_SLOTS - 1);
    }
}
