//! The virtual wire between the host-side stack and the guest, as a smoltcp device: frames
//! the guest sent come off the NIC's TX ring, frames for the guest go into its posted RX
//! buffers.
//!
//! The stack may send on its own account only while the guest has a buffer posted (and no
//! held frame waits), so that a burst waits in its sockets rather than on the wire. A reply
//! to a frame (an ACK, a window update, a reset, an ARP answer) goes out at once, or, if no
//! buffer waits, is held until the guest posts one ([`Held`]): a dropped pure ACK is never
//! sent again, and a window update lost so leaves the guest probing a window it thinks shut,
//! with backoff from a second on. Frames the
//! guest sends to anyone but the gateway are dropped and counted: nothing leaves the process.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::net::nic::Nic;
use pv_abi::net::NET_FRAME_MAX;

/// EtherType of IPv4 and ARP, and where a frame's EtherType and IPv4 destination are.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE: std::ops::Range<usize> = 12..14;
const IPV4_DESTINATION: std::ops::Range<usize> = 30..34;

/// Replies held for want of a posted RX buffer, at most this many frames (a guest that never
/// posts one cannot make the monitor hold more; past it they are dropped and counted).
const MAX_HELD: usize = 2 * pv_abi::net::NET_SLOTS;

/// Frames for the guest that found no posted buffer, oldest first.
#[derive(Debug, Default)]
pub struct Held(VecDeque<Vec<u8>>);

impl Held {
    /// Delivers the held frames while the guest has buffers posted; whether none is left.
    pub fn flush(&mut self, nic: &mut Nic) -> bool {
        while nic.rx_space() > 0 {
            let Some(frame) = self.0.pop_front() else { break };
            nic.deliver(&frame);
        }
        self.0.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Delivers `frame` after the held ones, or holds it (in order) if no buffer is left.
    fn deliver_or_hold(&mut self, nic: &mut Nic, frame: &[u8]) {
        if self.flush(nic) && nic.rx_space() > 0 {
            nic.deliver(frame);
        } else if self.0.len() < MAX_HELD {
            self.0.push_back(frame.to_vec());
        } else {
            nic.counters().rx_dropped();
        }
    }
}

/// The wire for one round of the stack: the NIC, two frame buffers a NIC buffer long, and the
/// held replies.
pub struct Wire<'a> {
    pub nic: &'a mut Nic,
    /// The frame taken off the TX ring.
    pub from_guest: &'a mut [u8],
    /// The frame the stack writes for the guest.
    pub to_guest: &'a mut [u8],
    pub held: &'a mut Held,
    pub gateway: Ipv4Addr,
}

/// Whether a frame the guest sent is for the gateway: ARP, or IPv4 to its address.
fn for_gateway(frame: &[u8], gateway: Ipv4Addr) -> bool {
    match frame.get(ETHERTYPE) {
        Some(t) if t == ETHERTYPE_ARP => true,
        Some(t) if t == ETHERTYPE_IPV4 => frame.get(IPV4_DESTINATION) == Some(&gateway.octets()[..]),
        _ => false,
    }
}

impl Device for Wire<'_> {
    type RxToken<'b>
        = FromGuest<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = ToGuest<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(FromGuest<'_>, ToGuest<'_>)> {
        loop {
            let len = self.nic.take_tx(self.from_guest)?;
            if for_gateway(&self.from_guest[..len], self.gateway) {
                let reply = ToGuest { nic: self.nic, frame: self.to_guest, held: Some(&mut *self.held) };
                return Some((FromGuest(&self.from_guest[..len]), reply));
            }
            self.nic.counters().tx_dropped();
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<ToGuest<'_>> {
        if !self.held.is_empty() || self.nic.rx_space() == 0 {
            return None;
        }
        Some(ToGuest { nic: self.nic, frame: self.to_guest, held: None })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NET_FRAME_MAX as usize;
        caps
    }
}

/// A frame the guest sent.
pub struct FromGuest<'a>(&'a [u8]);

impl phy::RxToken for FromGuest<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// A frame for the guest, built in a buffer at least as long as the MTU the stack is told; a
/// reply (`held` set) that finds no buffer posted is held.
pub struct ToGuest<'a> {
    nic: &'a mut Nic,
    frame: &'a mut [u8],
    held: Option<&'a mut Held>,
}

impl phy::TxToken for ToGuest<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let frame = &mut self.frame[..len];
        let result = f(frame);
        match self.held {
            Some(held) => held.deliver_or_hold(self.nic, frame),
            None => _ = self.nic.deliver(frame),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_arp_and_ipv4_to_the_gateway_are_for_it() {
        let gateway = Ipv4Addr::new(10, 0, 2, 2);
        let mut frame = [0u8; 60];
        frame[ETHERTYPE].copy_from_slice(&ETHERTYPE_ARP);
        assert!(for_gateway(&frame, gateway));
        frame[ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4);
        frame[IPV4_DESTINATION].copy_from_slice(&[10, 0, 2, 2]);
        assert!(for_gateway(&frame, gateway));
        frame[IPV4_DESTINATION].copy_from_slice(&[8, 8, 8, 8]);
        assert!(!for_gateway(&frame, gateway));
        frame[ETHERTYPE].copy_from_slice(&[0x86, 0xdd]);
        assert!(!for_gateway(&frame, gateway), "IPv6");
        assert!(!for_gateway(&frame[..20], gateway), "a runt");
        assert!(!for_gateway(&frame[..10], gateway));
    }
}
