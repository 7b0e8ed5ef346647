//! What a VM's NIC did: counted while it runs by the backend thread and by the VCPUs that
//! notify it, and read as one plain [`NicStats`] at the end.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A VM's NIC over its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NicStats {
    /// Frames the guest sent (taken off the TX ring), and their bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the backend could not carry: under user-mode networking, frames for anyone but
    /// the gateway (nothing leaves the process); on a TAP device, frames it refused.
    pub tx_dropped: u64,
    /// Frames delivered to the guest (into posted RX buffers), and their bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames for the guest dropped because it had posted no RX buffer (or, from a TAP
    /// device, longer than an Ethernet frame), as a wire drops them.
    pub rx_dropped: u64,
    /// `NetNotify` calls: the guest woke the sleeping backend.
    pub notifications: u64,
    /// VCPUs the backend kicked because they waited for RX.
    pub kicks: u64,
    /// Times the backend went to sleep after an idle spell.
    pub sleeps: u64,
}

/// The counters behind [`NicStats`], shared by the backend thread and the VCPU threads.
#[derive(Debug, Default)]
pub struct NicCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    notifications: AtomicU64,
    kicks: AtomicU64,
    sleeps: AtomicU64,
}

/// Adds one; counters are only summed, never used to order anything.
fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl NicCounters {
    pub fn sent(&self, bytes: usize) {
        bump(&self.tx_packets, 1);
        bump(&self.tx_bytes, bytes as u64);
    }

    pub fn tx_dropped(&self) {
        bump(&self.tx_dropped, 1);
    }

    pub fn delivered(&self, bytes: usize) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
    }

    pub fn rx_dropped(&self) {
        bump(&self.rx_dropped, 1);
    }

    pub fn notified(&self) {
        bump(&self.notifications, 1);
    }

    pub fn kicked(&self) {
        bump(&self.kicks, 1);
    }

    pub fn slept(&self) {
        bump(&self.sleeps, 1);
    }

    /// Frames moved either way so far: what tells the backend that traffic flows.
    pub fn frames(&self) -> u64 {
        self.tx_packets.load(Ordering::Relaxed) + self.rx_packets.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> NicStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NicStats {
            tx_packets: load(&self.tx_packets),
            tx_bytes: load(&self.tx_bytes),
            tx_dropped: load(&self.tx_dropped),
            rx_packets: load(&self.rx_packets),
            rx_bytes: load(&self.rx_bytes),
            rx_dropped: load(&self.rx_dropped),
            notifications: load(&self.notifications),
            kicks: load(&self.kicks),
            sleeps: load(&self.sleeps),
        }
    }
}
