//! The virtual wire between the host-side stack and the guest, as a smoltcp device: frames
//! the guest sent come off the NIC's TX ring, frames for the guest go into its posted RX
//! buffers.
//!
//! The stack may send on its own account only while the guest has a buffer posted, so that a
//! burst waits in its sockets rather than being dropped on the wire: TCP would find out only
//! at its retransmission timeout (a second, smoltcp's minimum). A reply to a frame (an ACK, a
//! reset, an ARP answer) goes out at once, and is dropped, as on a wire, if no buffer waits.
//! Frames the guest sends to anyone but the gateway are dropped and counted: nothing leaves
//! the process.

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

/// The wire for one round of the stack: the NIC and two frame buffers, a NIC buffer long.
pub struct Wire<'a> {
    pub nic: &'a mut Nic,
    /// The frame taken off the TX ring.
    pub from_guest: &'a mut [u8],
    /// The frame the stack writes for the guest.
    pub to_guest: &'a mut [u8],
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
                let reply = ToGuest { nic: self.nic, frame: self.to_guest };
                return Some((FromGuest(&self.from_guest[..len]), reply));
            }
            self.nic.counters().tx_dropped();
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<ToGuest<'_>> {
        if self.nic.rx_space() == 0 {
            return None;
        }
        Some(ToGuest { nic: self.nic, frame: self.to_guest })
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

/// A frame for the guest, built in a buffer at least as long as the MTU the stack is told.
pub struct ToGuest<'a> {
    nic: &'a mut Nic,
    frame: &'a mut [u8],
}

impl phy::TxToken for ToGuest<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let frame = &mut self.frame[..len];
        let result = f(frame);
        self.nic.deliver(frame);
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
