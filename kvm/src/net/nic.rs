//! A VM's NIC as its backend sees it: the rings and buffers of the NIC area in guest memory
//! (see `pv_abi::net`), with every index and descriptor checked before use.
//!
//! The guest may rewrite the area at any moment, so each index and each descriptor field is
//! read once, into locals that are checked (`check`) and then used; frames are copied with
//! the bounds-checked copies of [`GuestMemory`]. The monitor's own indices (`tx_done`,
//! `rx_filled`) live here and are only written to guest memory, never read back: a guest that
//! scribbles on them cannot move the monitor's place in a ring. The first breach of the rules
//! is kept as the NIC's fault ([`Nic::fault`]); from then on the NIC does nothing, and its
//! backend ends the VM with it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use pv_abi::layout::BOOT_STACK_SIZE;
use pv_abi::net::{NET_AREA_SIZE, NET_BUF_SIZE, NET_BUFFERS_OFFSET, NET_FRAME_MAX, NetArea, NetInfo};
use tandem_core::net::GuestInterface;

use super::check::{self, Desc};
use super::stats::NicCounters;
use crate::memory::{GuestMemory, GuestRead, GuestRef};
use crate::outcome::{NicFault, Ring};

/// Where a VM of `mem_size` bytes has its NIC area: right below VCPU 0's boot stack (the heap
/// ends below it).
pub const fn area_addr(mem_size: u64) -> u64 {
    mem_size - BOOT_STACK_SIZE - NET_AREA_SIZE
}

/// The boot info's word on a NIC at `area` with the guest's interface `guest`.
pub fn net_info(guest: &GuestInterface, area: u64) -> NetInfo {
    NetInfo {
        area,
        area_size: NET_AREA_SIZE,
        mac: guest.mac,
        prefix_len: guest.prefix_len,
        _reserved: 0,
        ip: guest.ip.octets(),
        gateway: guest.gateway.map_or([0; 4], |gateway| gateway.octets()),
    }
}

/// A VM's NIC, from the monitor's side of its rings.
#[derive(Debug)]
pub struct Nic {
    area: GuestRef<NetArea>,
    memory: GuestMemory,
    /// Guest addresses of the buffer area.
    buffers: Range<u64>,
    vcpus: u32,
    tx_done: u32,
    rx_filled: u32,
    counters: Arc<NicCounters>,
    fault: Option<NicFault>,
    /// Frames were delivered since the last look at `rx_waiting`.
    delivered: bool,
}

impl Nic {
    /// The NIC whose area is at guest address `area` of `memory`, in a VM of `vcpus` VCPUs,
    /// as the monitor laid it out before the guest runs (its own indices are taken from
    /// there, zero at boot); `None` if the area does not lie in memory, page aligned.
    pub fn new(memory: &GuestMemory, area: u64, vcpus: u32, counters: Arc<NicCounters>) -> Option<Nic> {
        if !memory.contains(area, NET_AREA_SIZE) {
            return None;
        }
        let header: GuestRef<NetArea> = memory.reference(area)?;
        let tx_done = header.tx_done.value.load(Ordering::Relaxed);
        let rx_filled = header.rx_filled.value.load(Ordering::Relaxed);
        Some(Nic {
            area: header,
            memory: memory.clone(),
            buffers: area + NET_BUFFERS_OFFSET..area + NET_AREA_SIZE,
            vcpus,
            tx_done,
            rx_filled,
            counters,
            fault: None,
            delivered: false,
        })
    }

    /// The first rule the guest broke, if any; the NIC has stopped since.
    pub fn fault(&self) -> Option<&NicFault> {
        self.fault.as_ref()
    }

    pub fn counters(&self) -> &NicCounters {
        &self.counters
    }

    /// Keeps the first fault; `None` once there is one.
    fn checked<T>(&mut self, result: Result<T, NicFault>) -> Option<T> {
        if self.fault.is_some() {
            return None;
        }
        result.map_err(|fault| self.fault = Some(fault)).ok()
    }

    /// Frames posted on the TX ring and not taken yet.
    fn tx_posted(&mut self) -> u32 {
        // Acquire: the descriptors the guest wrote before bumping its index are visible.
        let posted = self.area.tx_posted.value.load(Ordering::Acquire);
        self.checked(check::pending(Ring::Tx, posted, self.tx_done)).unwrap_or(0)
    }

    /// Empty buffers posted on the RX ring and not filled yet.
    pub fn rx_space(&mut self) -> u32 {
        let posted = self.area.rx_posted.value.load(Ordering::Acquire);
        self.checked(check::pending(Ring::Rx, posted, self.rx_filled)).unwrap_or(0)
    }

    pub fn tx_pending(&mut self) -> bool {
        self.tx_posted() > 0
    }

    /// Takes the next frame off the TX ring into `frame` (at least a buffer long) and returns
    /// its length; `None` if the ring is empty or the guest broke a rule.
    pub fn take_tx(&mut self, frame: &mut [u8]) -> Option<usize> {
        if self.tx_posted() == 0 {
            return None;
        }
        let slot = check::slot(self.tx_done);
        let posted = &self.area.tx[slot];
        let desc = Desc { addr: posted.addr.load(Ordering::Relaxed), len: posted.len.load(Ordering::Relaxed) };
        let desc = self.checked(check::tx_frame(&self.buffers, slot, desc))?;
        let frame = &mut frame[..desc.len as usize];
        // The checked descriptor lies in the buffer area, which lies in memory.
        self.memory.read(desc.addr, frame).then_some(())?;
        self.tx_done = self.tx_done.wrapping_add(1);
        // Release: the guest may reuse the buffer once it sees the index, after the copy.
        self.area.tx_done.value.store(self.tx_done, Ordering::Release);
        self.counters.sent(frame.len());
        Some(frame.len())
    }

    /// Delivers `frame` into the next posted RX buffer; false if it was dropped, for want of a
    /// posted buffer (or for being longer than an Ethernet frame), or because the guest broke
    /// a rule.
    pub fn deliver(&mut self, frame: &[u8]) -> bool {
        if frame.len() > NET_FRAME_MAX as usize || self.rx_space() == 0 {
            if self.fault.is_none() {
                self.counters.rx_dropped();
            }
            return false;
        }
        let slot = check::slot(self.rx_filled);
        let posted = &self.area.rx[slot];
        let desc = Desc { addr: posted.addr.load(Ordering::Relaxed), len: posted.len.load(Ordering::Relaxed) };
        let Some(desc) = self.checked(check::rx_buffer(&self.buffers, slot, desc)) else {
            return false;
        };
        if self.memory.write(desc.addr, frame).is_err() {
            return false;
        }
        self.area.rx[slot].len.store(frame.len() as u32, Ordering::Relaxed);
        self.rx_filled = self.rx_filled.wrapping_add(1);
        // Release: the frame and its length are visible to a guest that sees the index.
        self.area.rx_filled.value.store(self.rx_filled, Ordering::Release);
        self.counters.delivered(frame.len());
        self.delivered = true;
        true
    }

    /// After deliveries: the VCPU waiting for RX, if one declared itself, taken (to be
    /// kicked). The SeqCst fence pairs with the guest's between declaring itself and
    /// re-checking `rx_filled`: either it sees the frames or the backend sees it.
    pub fn take_rx_waiter(&mut self) -> Option<u32> {
        if !std::mem::take(&mut self.delivered) || self.fault.is_some() {
            return None;
        }
        fence(Ordering::SeqCst);
        let waiting = &self.area.rx_waiting.value;
        if waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let value = waiting.swap(0, Ordering::AcqRel);
        self.checked(check::rx_waiting(value, self.vcpus)).flatten()
    }

    /// Says the backend is going to sleep, then re-checks the TX ring: true if it may sleep,
    /// false (and awake again) if frames came meanwhile. The SeqCst fence pairs with the
    /// guest's between posting a frame and reading `backend_asleep`: either it sees the flag
    /// and notifies, or the backend sees its frame here.
    pub fn announce_sleep(&mut self) -> bool {
        self.area.backend_asleep.value.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.tx_pending() || self.fault.is_some() {
            self.woke();
            return false;
        }
        true
    }

    /// Says the backend is polling again: the guest need not notify.
    pub fn woke(&self) {
        self.area.backend_asleep.value.store(0, Ordering::Relaxed);
    }
}

/// A frame buffer as long as a NIC buffer, for [`Nic::take_tx`].
pub fn frame_buffer() -> Box<[u8]> {
    vec![0; NET_BUF_SIZE as usize].into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use pv_abi::net::{NET_SLOTS, buffer_offset};

    use super::*;

    const MEM: u64 = 8 << 20;
    const AREA: u64 = area_addr(MEM);

    /// A fresh NIC of a 2-VCPU VM and the guest's view of its area.
    fn fresh() -> (Nic, GuestMemory, GuestRef<NetArea>) {
        let memory = GuestMemory::new(MEM).unwrap();
        nic_in(memory)
    }

    fn nic_in(memory: GuestMemory) -> (Nic, GuestMemory, GuestRef<NetArea>) {
        let nic = Nic::new(&memory, AREA, 2, Arc::default()).unwrap();
        let area = memory.reference(AREA).unwrap();
        (nic, memory, area)
    }

    /// The guest posts `frame` in TX slot `slot`'s buffer and bumps `tx_posted`.
    fn post_tx(memory: &GuestMemory, area: &NetArea, frame: &[u8]) {
        let index = area.tx_posted.value.load(Ordering::Relaxed);
        let slot = check::slot(index);
        let addr = AREA + buffer_offset(false, slot);
        memory.write(addr, frame).unwrap();
        area.tx[slot].addr.store(addr, Ordering::Relaxed);
        area.tx[slot].len.store(frame.len() as u32, Ordering::Relaxed);
        area.tx_posted.value.store(index.wrapping_add(1), Ordering::Release);
    }

    fn post_rx(area: &NetArea, count: u32) {
        for _ in 0..count {
            let index = area.rx_posted.value.load(Ordering::Relaxed);
            let slot = check::slot(index);
            area.rx[slot].addr.store(AREA + buffer_offset(true, slot), Ordering::Relaxed);
            area.rx[slot].len.store(NET_BUF_SIZE, Ordering::Relaxed);
            area.rx_posted.value.store(index.wrapping_add(1), Ordering::Release);
        }
    }

    #[test]
    fn the_area_sits_below_the_boot_stack_and_must_lie_in_memory() {
        assert_eq!(AREA + NET_AREA_SIZE, MEM - BOOT_STACK_SIZE);
        assert!(AREA.is_multiple_of(4096));
        let memory = GuestMemory::new(MEM).unwrap();
        assert!(Nic::new(&memory, MEM - 4096, 1, Arc::default()).is_none());
        assert!(Nic::new(&memory, AREA + 64, 1, Arc::default()).is_none(), "misaligned");
    }

    #[test]
    fn frames_cross_both_rings_with_indices_that_wrap() {
        let memory = GuestMemory::new(MEM).unwrap();
        {
            // Start every index just below the wrap, as if 2^32 frames had gone by.
            let area: GuestRef<NetArea> = memory.reference(AREA).unwrap();
            for index in [&area.tx_posted, &area.tx_done, &area.rx_posted, &area.rx_filled] {
                index.value.store(u32::MAX - 2, Ordering::Relaxed);
            }
        }
        let (mut nic, memory, area) = nic_in(memory);
        let mut frame = frame_buffer();
        assert_eq!(nic.take_tx(&mut frame), None);
        for round in 0..6u8 {
            let sent = vec![round; 60 + usize::from(round)];
            post_tx(&memory, &area, &sent);
            assert!(nic.tx_pending());
            assert_eq!(nic.take_tx(&mut frame), Some(sent.len()));
            assert_eq!(&frame[..sent.len()], sent.as_slice());
        }
        assert_eq!(area.tx_done.value.load(Ordering::Relaxed), 3, "wrapped");

        assert!(!nic.deliver(b"no buffer yet"));
        post_rx(&area, 4);
        for round in 0..4u8 {
            assert!(nic.deliver(&[round; 100]));
            let slot = check::slot((u32::MAX - 2).wrapping_add(u32::from(round)));
            assert_eq!(area.rx[slot].len.load(Ordering::Relaxed), 100);
            let mut got = [0; 100];
            assert!(memory.read(AREA + buffer_offset(true, slot), &mut got));
            assert_eq!(got, [round; 100]);
        }
        assert!(!nic.deliver(b"ring full"));
        assert!(!nic.deliver(&vec![0; NET_FRAME_MAX as usize + 1]));
        let stats = nic.counters().snapshot();
        assert_eq!((stats.tx_packets, stats.tx_bytes), (6, 6 * 60 + 15));
        assert_eq!((stats.rx_packets, stats.rx_bytes, stats.rx_dropped), (4, 400, 3));
        assert!(nic.fault().is_none());
    }

    #[test]
    fn a_bad_descriptor_is_the_nics_fault_and_stops_it() {
        let (mut nic, memory, area) = fresh();
        post_tx(&memory, &area, b"fine");
        for _ in 0..16 {
            post_tx(&memory, &area, b"fine");
        }
        area.tx[17].addr.store(0x1000, Ordering::Relaxed);
        area.tx[17].len.store(64, Ordering::Relaxed);
        area.tx_posted.value.store(18, Ordering::Release);
        let mut frame = frame_buffer();
        for _ in 0..17 {
            assert_eq!(nic.take_tx(&mut frame), Some(4));
        }
        assert_eq!(nic.take_tx(&mut frame), None);
        let fault = nic.fault().unwrap().to_string();
        assert_eq!(
            fault,
            format!(
                "the NIC's TX descriptor 17 points at 0x1000 (64 bytes), outside its buffer area {:#x}..{:#x}",
                AREA + NET_BUFFERS_OFFSET,
                AREA + NET_AREA_SIZE
            )
        );
        // Stopped: nothing more is taken, delivered or counted.
        post_rx(&area, 1);
        assert!(!nic.deliver(b"x"));
        assert!(!nic.announce_sleep());
        assert_eq!(nic.counters().snapshot().rx_dropped, 0);
    }

    #[test]
    fn indices_and_rx_buffers_are_checked_too() {
        let (mut nic, _memory, area) = fresh();
        area.tx_posted.value.store(NET_SLOTS as u32 + 1, Ordering::Release);
        assert!(!nic.tx_pending());
        assert!(matches!(nic.fault(), Some(NicFault::IndexAhead { posted: "tx_posted", .. })));

        let (mut nic, _memory, area) = fresh();
        area.rx_posted.value.store(1, Ordering::Release);
        area.rx[0].addr.store(AREA + buffer_offset(true, 0), Ordering::Relaxed);
        area.rx[0].len.store(1000, Ordering::Relaxed);
        assert!(!nic.deliver(b"x"));
        assert!(matches!(nic.fault(), Some(NicFault::RxCapacity { slot: 0, len: 1000, .. })));

        let (mut nic, _memory, area) = fresh();
        area.rx_posted.value.store(u32::MAX, Ordering::Release);
        assert_eq!(nic.rx_space(), 0);
        assert!(matches!(nic.fault(), Some(NicFault::IndexAhead { posted: "rx_posted", ahead: u32::MAX, .. })));
    }

    #[test]
    fn a_vcpu_waiting_for_rx_is_taken_once_after_a_delivery() {
        let (mut nic, _memory, area) = fresh();
        post_rx(&area, 2);
        area.rx_waiting.value.store(2, Ordering::Relaxed);
        assert_eq!(nic.take_rx_waiter(), None, "nothing delivered yet");
        assert!(nic.deliver(b"frame"));
        assert_eq!(nic.take_rx_waiter(), Some(1));
        assert_eq!(area.rx_waiting.value.load(Ordering::Relaxed), 0);
        assert!(nic.deliver(b"frame"));
        assert_eq!(nic.take_rx_waiter(), None, "nobody waits");
        post_rx(&area, 1);
        assert!(nic.deliver(b"frame"));
        area.rx_waiting.value.store(3, Ordering::Relaxed);
        assert_eq!(nic.take_rx_waiter(), None);
        assert_eq!(nic.fault(), Some(&NicFault::RxWaiting { value: 3, vcpus: 2 }));
    }

    #[test]
    fn going_to_sleep_raises_the_flag_unless_frames_came() {
        let (mut nic, memory, area) = fresh();
        assert!(nic.announce_sleep());
        assert_eq!(area.backend_asleep.value.load(Ordering::Relaxed), 1);
        nic.woke();
        assert_eq!(area.backend_asleep.value.load(Ordering::Relaxed), 0);
        post_tx(&memory, &area, b"late");
        assert!(!nic.announce_sleep());
        assert_eq!(area.backend_asleep.value.load(Ordering::Relaxed), 0);
    }

    /// The guest rewrites a posted descriptor while the monitor takes it, between a frame in
    /// its buffer and one that spills out of the buffer area: each take either copies a frame
    /// of a checked length from the buffer area or stops with a fault, never a mix of the
    /// two descriptors' fields that was not checked.
    #[test]
    fn a_descriptor_changed_while_it_is_taken_is_used_as_it_was_checked() {
        let memory = GuestMemory::new(MEM).unwrap();
        let good = AREA + buffer_offset(false, 0);
        // The last buffer: a long frame there would spill past the area's end.
        let last = AREA + NET_AREA_SIZE - u64::from(NET_BUF_SIZE);
        memory.write(good, &[0xaa; NET_BUF_SIZE as usize]).unwrap();
        memory.write(last, &[0xbb; NET_BUF_SIZE as usize]).unwrap();
        let area: GuestRef<NetArea> = memory.reference(AREA).unwrap();
        area.tx[0].addr.store(good, Ordering::Relaxed);
        area.tx[0].len.store(60, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (area, stop) = (area.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (addr, len) in [(good, 2048), (last + 1024, 60), (good, 60), (last, 2048)] {
                        area.tx[0].addr.store(addr, Ordering::Relaxed);
                        area.tx[0].len.store(len, Ordering::Relaxed);
                    }
                }
            })
        };
        let mut frame = frame_buffer();
        let (mut taken, mut faults) = (0, 0);
        for _ in 0..20_000 {
            let (mut nic, _, _) = nic_in(memory.clone());
            area.tx_posted.value.store(1, Ordering::Release);
            match nic.take_tx(&mut frame) {
                Some(len) => {
                    assert!(len == 60 || len == 2048, "{len}");
                    assert!(frame[..len].iter().all(|&b| b == frame[0]) && [0xaa, 0xbb].contains(&frame[0]));
                    taken += 1;
                }
                None => {
                    let fault = nic.fault().expect("a posted frame is taken or faults");
                    assert!(matches!(fault, NicFault::OutsideBuffers { len: 2048, .. }), "{fault}");
                    faults += 1;
                }
            }
            area.tx_done.value.store(0, Ordering::Relaxed);
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        assert!(taken > 0, "{taken} taken, {faults} faults");
    }
}
