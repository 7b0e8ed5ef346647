//! A NIC of the program's own: an area laid out as `pv_abi::net` says, and the backend's
//! side of its rings as a smoltcp device, doing in the guest what the monitor's backend does
//! (take TX frames, fill posted RX buffers, kick the VCPU declared in `rx_waiting`), so that
//! the guest's network stack can be tested in a VM without a NIC. It never sleeps
//! (`backend_asleep` stays 0: a `NetNotify` would reach the monitor, which has no NIC), and
//! it checks the driver more strictly than the monitor: each descriptor must name its own
//! slot's buffer. The indices start near the top of `u32`, so that they wrap during a test.
//!
//! As the monitor's backend does, it takes the guest's TX frames even while no RX buffer is
//! free, holding its replies in order until the guest posts buffers: the guest takes RX
//! frames in only while it has a TX slot for a reply, so a backend that also waited for room
//! on the other ring would deadlock with it once both rings were full.

use alloc::alloc::{Layout, alloc_zeroed};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tandem_rt::hypercall;
use tandem_rt::pv_abi::net::{NET_AREA_SIZE, NET_FRAME_MAX, NET_SLOTS, NetArea, NetInfo, buffer_offset};

/// Where every index starts: a few hundred frames below the wrap.
const FIRST_INDEX: u32 = u32::MAX - 300;
/// Descriptors per ring, as the `u32` the indices count in.
const SLOTS: u32 = NET_SLOTS as u32;

/// A NIC area: its header, and the address its buffers are counted from.
#[derive(Clone, Copy)]
struct Area(&'static NetArea);

impl Area {
    fn base(self) -> u64 {
        core::ptr::from_ref(self.0) as u64
    }

    /// Whether an RX buffer is posted and not filled.
    fn rx_room(self) -> bool {
        self.0.rx_filled.value.load(Ordering::Relaxed) != self.0.rx_posted.value.load(Ordering::Acquire)
    }

    /// The guest address of the descriptor's buffer, checked to be slot `slot`'s own.
    fn checked_buffer(self, rx: bool, slot: usize, addr: u64) -> u64 {
        let own = self.base() + buffer_offset(rx, slot);
        assert_eq!(addr, own, "{} slot {slot} names a buffer that is not its own", if rx { "RX" } else { "TX" });
        addr
    }
}

/// The backend of a NIC area of its own.
pub struct Loopback {
    area: Area,
    /// Whether RX buffers were filled since the waiting VCPU was last looked for.
    filled: bool,
    /// Frames for the guest that found no RX buffer free, oldest first.
    held: VecDeque<Vec<u8>>,
}

impl Loopback {
    /// A new NIC area (leaked: the guest's stack keeps it for its life) with empty rings.
    pub fn new() -> Self {
        let layout = Layout::from_size_align(NET_AREA_SIZE as usize, 4096).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "no memory for a NIC area");
        // SAFETY: page aligned and `NET_AREA_SIZE` bytes, never freed; the header is made of
        // atomics, valid when zeroed.
        let area = unsafe { &*(base as *const NetArea) };
        for index in [&area.tx_posted, &area.tx_done, &area.rx_posted, &area.rx_filled] {
            index.value.store(FIRST_INDEX, Ordering::Relaxed);
        }
        Loopback { area: Area(area), filled: false, held: VecDeque::new() }
    }

    /// The NIC as the boot info would describe it, for `tandem_rt::net::attach`.
    pub fn info(&self, mac: [u8; 6], ip: [u8; 4], prefix_len: u8, gateway: [u8; 4]) -> NetInfo {
        NetInfo { area: self.area.base(), area_size: NET_AREA_SIZE, mac, prefix_len, _reserved: 0, ip, gateway }
    }

    /// After frames were filled in: kicks the VCPU declared waiting for them, if any. The
    /// SeqCst fence between the fills and the swap pairs with the guest's between its
    /// declaration and its last look at `rx_filled`.
    /// Moves held frames into the RX buffers the guest has posted since.
    fn deliver_held(&mut self) {
        while self.area.rx_room()
            && let Some(frame) = self.held.pop_front()
        {
            fill(self.area, &mut self.filled, frame.len(), |buffer| buffer.copy_from_slice(&frame));
        }
    }

    pub fn kick_waiter(&mut self) {
        if !core::mem::take(&mut self.filled) {
            return;
        }
        fence(Ordering::SeqCst);
        let waiting = self.area.0.rx_waiting.value.swap(0, Ordering::Relaxed);
        if waiting != 0 {
            hypercall::kick(waiting - 1).expect("the guest declared a VCPU it has");
        }
    }
}

impl phy::Device for Loopback {
    type RxToken<'a> = TakeTx;
    type TxToken<'a> = FillRx<'a>;

    /// The next frame the guest posted, with a way to reply: an RX buffer, or a place among
    /// the held frames.
    fn receive(&mut self, _: Instant) -> Option<(TakeTx, FillRx<'_>)> {
        self.deliver_held();
        let area = self.area;
        let done = area.0.tx_done.value.load(Ordering::Relaxed);
        let posted = area.0.tx_posted.value.load(Ordering::Acquire);
        assert!(posted.wrapping_sub(done) <= SLOTS, "the guest posted more TX frames than there are slots");
        if posted == done {
            return None;
        }
        Some((TakeTx { area, done }, FillRx { area, filled: &mut self.filled, held: &mut self.held }))
    }

    /// An RX buffer the guest posted, if any (and no frame is held before it).
    fn transmit(&mut self, _: Instant) -> Option<FillRx<'_>> {
        self.deliver_held();
        (self.held.is_empty() && self.area.rx_room()).then_some(FillRx {
            area: self.area,
            filled: &mut self.filled,
            held: &mut self.held,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NET_FRAME_MAX as usize;
        caps
    }
}

/// The guest's next TX frame.
pub struct TakeTx {
    area: Area,
    done: u32,
}

impl phy::RxToken for TakeTx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let slot = self.done as usize % NET_SLOTS;
        let desc = &self.area.0.tx[slot];
        let len = desc.len.load(Ordering::Relaxed);
        assert!(len <= NET_FRAME_MAX, "the guest posted a {len}-byte frame");
        let addr = self.area.checked_buffer(false, slot, desc.addr.load(Ordering::Relaxed));
        // SAFETY: the slot's own buffer in the area, posted (tx_posted, read with Acquire,
        // is past it): the guest writes it no more until tx_done passes it, below.
        let frame = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
        let result = f(frame);
        self.area.0.tx_done.value.store(self.done.wrapping_add(1), Ordering::Release);
        result
    }
}

/// A frame for the guest: into the next RX buffer it posted, or held until it posts one.
pub struct FillRx<'a> {
    area: Area,
    filled: &'a mut bool,
    held: &'a mut VecDeque<Vec<u8>>,
}

impl phy::TxToken for FillRx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.held.is_empty() && self.area.rx_room() {
            return fill(self.area, self.filled, len, f);
        }
        let mut frame = alloc::vec![0; len];
        let result = f(&mut frame);
        self.held.push_back(frame);
        result
    }
}

/// Writes a `len`-byte frame with `f` into the next RX buffer the guest posted (there is one).
fn fill<R>(area: Area, filled: &mut bool, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let rx_filled = &area.0.rx_filled.value;
    let index = rx_filled.load(Ordering::Relaxed);
    let slot = index as usize % NET_SLOTS;
    let desc = &area.0.rx[slot];
    assert!(desc.len.load(Ordering::Relaxed) >= NET_FRAME_MAX, "the guest posted a buffer too small for a frame");
    let addr = area.checked_buffer(true, slot, desc.addr.load(Ordering::Relaxed));
    // SAFETY: the slot's own buffer in the area, posted (rx_posted, read with Acquire, is
    // past it) and not filled: the guest reads it only after rx_filled passes it.
    let frame = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) };
    let result = f(frame);
    desc.len.store(len as u32, Ordering::Relaxed);
    rx_filled.store(index.wrapping_add(1), Ordering::Release);
    *filled = true;
    result
}
