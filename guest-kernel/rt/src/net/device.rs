//! The NIC's driver: smoltcp's [`phy::Device`] over the two rings of a [`NetArea`] (the
//! contract is `pv_abi::net`).
//!
//! TX slot `i` always carries buffer `i` and RX slot `i` buffer `NET_SLOTS + i`
//! ([`buffer_offset`]), so a slot's buffer follows from its index. Every RX buffer is posted
//! at start and posted again as soon as smoltcp has consumed its frame: `rx_posted` stays
//! `NET_SLOTS` ahead of the frames taken, which is how [`Nic::rx_pending`] tells, without the
//! driver's state, whether frames wait. TX slots need no reclaiming beyond reading `tx_done`:
//! a slot below it is free again, its buffer fixed. The driver's indices are written only
//! under the stack's lock (each index has one writer); [`Nic`] is what may be used without
//! it.

use core::sync::atomic::{Ordering, fence};

use pv_abi::net::{NET_BUF_SIZE, NET_FRAME_MAX, NET_SLOTS, NetArea, buffer_offset};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::hypercall;

/// Descriptors per ring, as the `u32` the indices count in.
const SLOTS: u32 = NET_SLOTS as u32;

/// The ring slot of a free-running index.
fn slot(index: u32) -> usize {
    index as usize % NET_SLOTS
}

/// The NIC area, shared with the monitor's backend.
#[derive(Clone, Copy)]
pub(crate) struct Nic {
    area: &'static NetArea,
}

impl Nic {
    /// The NIC whose area starts at guest address `area`.
    ///
    /// # Safety
    /// `area` is page aligned and starts `pv_abi::net::NET_AREA_SIZE` bytes of guest memory
    /// that hold a [`NetArea`] and its buffers for the rest of the guest's life, driven by
    /// no other [`NetDevice`].
    pub(crate) unsafe fn new(area: u64) -> Self {
        // SAFETY: per the caller; the header is made of atomics, valid for any bytes.
        Nic { area: unsafe { &*(area as *const NetArea) } }
    }

    /// The guest address of the buffer of TX (`rx` false) or RX slot `slot`.
    fn buffer(&self, rx: bool, slot: usize) -> u64 {
        core::ptr::from_ref(self.area) as u64 + buffer_offset(rx, slot)
    }

    /// Whether the backend has filled RX buffers that the driver has not consumed yet.
    pub(crate) fn rx_pending(&self) -> bool {
        let filled = self.area.rx_filled.value.load(Ordering::Acquire);
        filled != self.area.rx_posted.value.load(Ordering::Relaxed).wrapping_sub(SLOTS)
    }

    /// Declares VCPU `vcpu` as the one the backend kicks when it fills RX buffers, and
    /// returns whether it may block: no frame arrived before the declaration was visible.
    /// The SeqCst fence between the declaration and the check pairs with the backend's
    /// between filling and taking `rx_waiting`: either it sees this VCPU, or this VCPU sees
    /// its frames.
    pub(crate) fn await_rx(&self, vcpu: u32) -> bool {
        self.declare_rx_waiter(vcpu);
        fence(Ordering::SeqCst);
        !self.rx_pending()
    }

    /// Makes VCPU `vcpu` the one the backend kicks when it fills RX buffers.
    pub(crate) fn declare_rx_waiter(&self, vcpu: u32) {
        self.area.rx_waiting.value.store(vcpu + 1, Ordering::Relaxed);
    }

    /// Withdraws VCPU `vcpu`'s declaration, if the backend has not taken it (or another VCPU
    /// replaced it) meanwhile; returns whether it did.
    pub(crate) fn stop_awaiting_rx(&self, vcpu: u32) -> bool {
        let waiting = &self.area.rx_waiting.value;
        waiting.compare_exchange(vcpu + 1, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Fills the descriptor of RX slot `slot(index)` with the slot's empty buffer (not yet
    /// posted: the caller moves `rx_posted` past it).
    fn fill_rx_desc(&self, index: u32) {
        let slot = slot(index);
        let desc = &self.area.rx[slot];
        desc.addr.store(self.buffer(true, slot), Ordering::Relaxed);
        desc.len.store(NET_BUF_SIZE, Ordering::Relaxed);
        desc.flags.store(0, Ordering::Relaxed);
    }
}

/// The driver: the NIC and the guest's side of its indices.
pub(crate) struct NetDevice {
    nic: Nic,
    /// Frames posted on the TX ring: the value of `tx_posted`, which only the driver writes.
    tx_posted: u32,
    /// RX frames consumed; `rx_posted` is `NET_SLOTS` ahead of it.
    rx_taken: u32,
    /// Whether frames were posted since the backend was last looked at.
    unnotified: bool,
}

impl NetDevice {
    /// Takes over the NIC's rings, which must be empty, and posts every RX buffer.
    pub(crate) fn new(nic: Nic) -> Self {
        let area = nic.area;
        let tx_posted = area.tx_posted.value.load(Ordering::Relaxed);
        let rx_posted = area.rx_posted.value.load(Ordering::Relaxed);
        assert!(
            tx_posted == area.tx_done.value.load(Ordering::Acquire)
                && rx_posted == area.rx_filled.value.load(Ordering::Acquire),
            "the NIC's rings are not empty at start"
        );
        for index in 0..SLOTS {
            nic.fill_rx_desc(rx_posted.wrapping_add(index));
        }
        area.rx_posted.value.store(rx_posted.wrapping_add(SLOTS), Ordering::Release);
        NetDevice { nic, tx_posted, rx_taken: rx_posted, unnotified: false }
    }

    /// Whether a TX slot is free: the backend has taken all but fewer than `NET_SLOTS` of the
    /// frames posted.
    fn tx_room(&self) -> bool {
        self.tx_posted.wrapping_sub(self.nic.area.tx_done.value.load(Ordering::Acquire)) < SLOTS
    }

    /// After a poll: if it posted frames and the backend sleeps, wakes it with one
    /// `NetNotify`. The SeqCst fence between the posts and the look at `backend_asleep`
    /// pairs with the backend's between setting it and its last look at the ring: either it
    /// sees the frames, or the driver sees it asleep. The driver takes the flag (swap to 0)
    /// so that of the VCPUs that post while the backend wakes up only one notifies.
    pub(crate) fn notify_backend(&mut self) {
        if !core::mem::take(&mut self.unnotified) {
            return;
        }
        fence(Ordering::SeqCst);
        let asleep = &self.nic.area.backend_asleep.value;
        if asleep.load(Ordering::Relaxed) == 1
            && asleep.swap(0, Ordering::Relaxed) == 1
            && let Err(error) = hypercall::net_notify()
        {
            panic!("the monitor refused to notify the NIC it gave: {error}");
        }
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    /// The next filled RX buffer, with a TX slot for a reply: while the TX ring is full, no
    /// frame is taken in (the backend drains it, and frames wait in their buffers).
    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let filled = self.nic.area.rx_filled.value.load(Ordering::Acquire);
        let ready = filled.wrapping_sub(self.rx_taken);
        assert!(ready <= SLOTS, "the NIC's backend filled {ready} RX buffers with {SLOTS} posted");
        if ready == 0 || !self.tx_room() {
            return None;
        }
        let rx = RxToken { nic: self.nic, taken: &mut self.rx_taken };
        let tx = TxToken { nic: self.nic, posted: &mut self.tx_posted, unnotified: &mut self.unnotified };
        Some((rx, tx))
    }

    /// A TX slot, or none while the ring is full (smoltcp tries again at its next poll).
    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.tx_room().then_some(TxToken {
            nic: self.nic,
            posted: &mut self.tx_posted,
            unnotified: &mut self.unnotified,
        })
    }

    /// Ethernet; smoltcp's MTU counts the Ethernet header, so it is the largest frame.
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NET_FRAME_MAX as usize;
        caps
    }
}

/// A filled RX buffer, the next one the driver takes.
pub(crate) struct RxToken<'a> {
    nic: Nic,
    taken: &'a mut u32,
}

impl phy::RxToken for RxToken<'_> {
    /// Hands the frame to `f`, then posts its buffer again.
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let index = *self.taken;
        let slot = slot(index);
        let len = self.nic.area.rx[slot].len.load(Ordering::Relaxed);
        assert!(len <= NET_BUF_SIZE, "the NIC's backend filled a {len}-byte frame into a {NET_BUF_SIZE}-byte buffer");
        // SAFETY: the buffer lies in the NIC area (see `Nic::new`); `rx_filled` (read with
        // Acquire in `receive`) has passed its slot, and the backend writes it no more until
        // it is posted again below.
        let frame = unsafe { core::slice::from_raw_parts(self.nic.buffer(true, slot) as *const u8, len as usize) };
        let result = f(frame);
        *self.taken = index.wrapping_add(1);
        // Slot `index + NET_SLOTS` is slot `index`: the buffer goes back where it was.
        self.nic.fill_rx_desc(index);
        self.nic.area.rx_posted.value.store(index.wrapping_add(1 + SLOTS), Ordering::Release);
        result
    }
}

/// A free TX slot, the next one the driver posts.
pub(crate) struct TxToken<'a> {
    nic: Nic,
    posted: &'a mut u32,
    unnotified: &'a mut bool,
}

impl phy::TxToken for TxToken<'_> {
    /// Lets `f` write a `len`-byte frame into the slot's buffer, then posts it.
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        assert!(len <= NET_FRAME_MAX as usize, "a {len}-byte frame is above the MTU");
        let index = *self.posted;
        let slot = slot(index);
        let addr = self.nic.buffer(false, slot);
        // SAFETY: the buffer lies in the NIC area (see `Nic::new`); the slot is free (checked
        // against `tx_done` when the token was made) and the backend reads its buffer only
        // after `tx_posted` passes it, below.
        let frame = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) };
        let result = f(frame);
        let desc = &self.nic.area.tx[slot];
        desc.addr.store(addr, Ordering::Relaxed);
        desc.len.store(len as u32, Ordering::Relaxed);
        desc.flags.store(0, Ordering::Relaxed);
        *self.posted = index.wrapping_add(1);
        self.nic.area.tx_posted.value.store(*self.posted, Ordering::Release);
        *self.unnotified = true;
        result
    }
}
