//! The paravirtual NIC: two rings of descriptors into a buffer area, all in guest memory,
//! with notifications only when the other side is asleep.
//!
//! The monitor places a [`NetArea`] (page aligned, [`NET_AREA_SIZE`] bytes) below VCPU 0's
//! boot stack and names it, with the guest's MAC and IPv4 configuration, in
//! [`crate::boot::BootInfo::net`]. The area is a header page or three ([`NetArea`]), then the
//! buffer area: [`NET_BUFFERS`] buffers of [`NET_BUF_SIZE`] bytes. The guest uses buffer `i`
//! for TX slot `i` and buffer `NET_SLOTS + i` for RX slot `i` ([`buffer_offset`]), but the
//! monitor checks only what it must: that a descriptor lies wholly in the buffer area.
//!
//! Ring indices are free-running `u32` counters (slot = index % [`NET_SLOTS`]); each has one
//! writer and a cache line of its own.
//!
//! **TX.** The guest writes a frame into a buffer, fills descriptor `tx[tx_posted % N]` with
//! its address and length, and bumps `tx_posted` (Release). The monitor's backend copies
//! frames out from `tx_done` to `tx_posted` and bumps `tx_done` (Release); slots below it are
//! the guest's again. A backend that has seen no traffic for a while sets `backend_asleep`,
//! re-checks the ring, and sleeps; a guest that posts frames then sees the flag (after a
//! SeqCst fence), takes it (swap to 0: of several VCPUs posting at once, one notifies) and
//! makes one [`crate::hypercall::Hypercall::NetNotify`] call.
//!
//! **RX.** The guest posts empty buffers: descriptor `rx[rx_posted % N]` with the buffer's
//! address and its capacity in `len` (at least [`NET_FRAME_MAX`]), then bumps `rx_posted`.
//! The backend writes a frame into the next posted buffer, sets the descriptor's `len` to
//! the frame's length, and bumps `rx_filled` (Release). A frame that finds no posted buffer
//! is dropped (counted), as on a real wire. A VCPU that goes idle declares itself in
//! `rx_waiting` (its id + 1), re-checks `rx_filled` after a SeqCst fence, then blocks; the
//! backend, after filling buffers and a SeqCst fence, takes `rx_waiting` (swap to 0) and
//! kicks that VCPU. A VCPU that wakes for another reason withdraws its declaration
//! (compare-exchange of its own value to 0).
//!
//! A guest that breaks these rules (an index that runs more than `N` ahead of the other
//! side's, a descriptor outside the buffer area, a length above [`NET_BUF_SIZE`] or an RX
//! capacity below [`NET_FRAME_MAX`]) is stopped by the monitor with a fault naming it.

use core::sync::atomic::{AtomicU32, AtomicU64};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Descriptors per ring; a power of two.
pub const NET_SLOTS: usize = 256;
/// Bytes of one buffer.
pub const NET_BUF_SIZE: u32 = 2048;
/// Largest frame: an Ethernet frame without its FCS, for an MTU of 1500.
pub const NET_FRAME_MAX: u32 = 1514;
/// The MTU the guest's IP layer uses.
pub const NET_MTU: u32 = 1500;
/// Buffers in the buffer area: one per TX and one per RX slot.
pub const NET_BUFFERS: usize = 2 * NET_SLOTS;
/// Offset of the buffer area in the NIC area: the header rounded up to whole pages.
pub const NET_BUFFERS_OFFSET: u64 = (core::mem::size_of::<NetArea>() as u64).next_multiple_of(4096);
/// Bytes the monitor reserves for the NIC area.
pub const NET_AREA_SIZE: u64 = NET_BUFFERS_OFFSET + NET_BUFFERS as u64 * NET_BUF_SIZE as u64;

/// Offset, in the NIC area, of the buffer the guest uses for TX (`rx` false) or RX slot
/// `slot`.
pub const fn buffer_offset(rx: bool, slot: usize) -> u64 {
    let index = if rx { NET_SLOTS + slot } else { slot };
    NET_BUFFERS_OFFSET + index as u64 * NET_BUF_SIZE as u64
}

/// One descriptor: a buffer in the buffer area. Written by the side that posts it before it
/// bumps its index, read by the other side after it has read that index (Acquire).
#[derive(Debug)]
#[repr(C)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: AtomicU64,
    /// TX: the frame's length. RX: the buffer's capacity as posted, the frame's length once
    /// filled.
    pub len: AtomicU32,
    /// Reserved, zero.
    pub flags: AtomicU32,
}

/// An index counter on a cache line of its own.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Index {
    pub value: AtomicU32,
}

/// The header of the NIC area: indices and flags, then the two descriptor rings.
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct NetArea {
    /// Guest: frames posted on the TX ring.
    pub tx_posted: Index,
    /// Monitor: frames taken off the TX ring.
    pub tx_done: Index,
    /// Guest: empty buffers posted on the RX ring.
    pub rx_posted: Index,
    /// Monitor: RX buffers filled with a frame.
    pub rx_filled: Index,
    /// Monitor: 1 while the backend sleeps (the guest must then notify), 0 while it polls.
    /// The guest that notifies clears it.
    pub backend_asleep: Index,
    /// Guest: id + 1 of a VCPU blocked waiting for RX (to be kicked), 0 for none.
    pub rx_waiting: Index,
    pub tx: [Desc; NET_SLOTS],
    pub rx: [Desc; NET_SLOTS],
}

/// Where the NIC is and how the guest's interface is configured; in the boot info.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NetInfo {
    /// Guest address of the [`NetArea`]; 0 if the VM has no NIC.
    pub area: u64,
    /// Bytes of the area: [`NET_AREA_SIZE`].
    pub area_size: u64,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The guest's IPv4 prefix length.
    pub prefix_len: u8,
    /// Reserved, zero.
    pub _reserved: u8,
    /// The guest's IPv4 address.
    pub ip: [u8; 4],
    /// The IPv4 default gateway (all zero for none).
    pub gateway: [u8; 4],
}

impl NetInfo {
    /// Whether the VM has a NIC.
    pub const fn present(&self) -> bool {
        self.area != 0
    }
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layout() {
        assert!(NET_SLOTS.is_power_of_two());
        assert_eq!(size_of::<Desc>(), 16);
        assert_eq!(size_of::<Index>(), 64);
        assert_eq!(offset_of!(NetArea, tx_posted), 0);
        assert_eq!(offset_of!(NetArea, tx_done), 64);
        assert_eq!(offset_of!(NetArea, rx_posted), 128);
        assert_eq!(offset_of!(NetArea, rx_filled), 192);
        assert_eq!(offset_of!(NetArea, backend_asleep), 256);
        assert_eq!(offset_of!(NetArea, rx_waiting), 320);
        assert_eq!(offset_of!(NetArea, tx), 384);
        assert_eq!(offset_of!(NetArea, rx), 384 + 16 * NET_SLOTS);
        assert_eq!(NET_BUFFERS_OFFSET % 4096, 0);
        assert!(NET_BUFFERS_OFFSET >= size_of::<NetArea>() as u64);
        assert_eq!(NET_AREA_SIZE % 4096, 0);
        const { assert!(NET_FRAME_MAX <= NET_BUF_SIZE && NET_MTU + 14 == NET_FRAME_MAX) };
        assert_eq!(size_of::<NetInfo>(), 32);
        assert_eq!(offset_of!(NetInfo, mac), 16);
        assert_eq!(offset_of!(NetInfo, ip), 24);
        assert_eq!(offset_of!(NetInfo, gateway), 28);
    }

    #[test]
    fn buffers_are_disjoint_and_inside_the_area() {
        assert_eq!(buffer_offset(false, 0), NET_BUFFERS_OFFSET);
        assert_eq!(buffer_offset(true, 0), buffer_offset(false, NET_SLOTS - 1) + NET_BUF_SIZE as u64);
        assert_eq!(buffer_offset(true, NET_SLOTS - 1) + NET_BUF_SIZE as u64, NET_AREA_SIZE);
    }
}
