//! The backends a NIC can have, behind one face: `user` (user-mode networking, the monitor
//! as the guest's gateway) and `tap` (an existing TAP device). Each adds the host
//! descriptors it waits on to a [`WaitSet`] and moves frames and bytes when they are ready.

use std::net::SocketAddr;
use std::time::Instant;

use tandem_core::net::{NetBackend, NetConfig};

use super::nic::Nic;
use super::tap::Tap;
use super::user::UserNet;
use super::wait::WaitSet;

pub enum Backend {
    /// Boxed: the stack is large, and a TAP device small.
    User(Box<UserNet>),
    Tap(Tap),
}

impl Backend {
    /// Opens `config`'s backend for `nic`: binds the forwards' host addresses or attaches to
    /// the TAP device, so that an address in use or a missing device is an error before the
    /// VM starts.
    pub fn open(config: &NetConfig, nic: &mut Nic) -> anyhow::Result<Backend> {
        Ok(match &config.backend {
            NetBackend::User { forwards } => Backend::User(Box::new(UserNet::new(forwards, &config.guest, nic)?)),
            NetBackend::Tap { ifname } => Backend::Tap(Tap::open(ifname)?),
        })
    }

    /// The host addresses the user backend's forwards listen on.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Backend::User(user) => user.forward_addrs(),
            Backend::Tap(_) => Vec::new(),
        }
    }

    /// Adds what to wait on to `waits`; returns when the backend next needs a round anyway.
    pub fn interest(&mut self, nic: &mut Nic, waits: &mut WaitSet, now: Instant) -> Option<Instant> {
        match self {
            Backend::User(user) => user.interest(nic, waits, now),
            Backend::Tap(tap) => {
                tap.interest(waits);
                None
            }
        }
    }

    /// A round: frames and bytes moved as far as `waits` found the host side ready. Whether
    /// anything moved on the host side (frames on the rings are counted by the NIC).
    pub fn pump(&mut self, nic: &mut Nic, waits: &WaitSet, now: Instant) -> bool {
        match self {
            Backend::User(user) => user.pump(nic, waits, now),
            Backend::Tap(tap) => tap.pump(nic, waits),
        }
    }
}
