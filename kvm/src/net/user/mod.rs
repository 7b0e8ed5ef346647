//! User-mode networking (QEMU's `-net user`): the monitor is the guest's gateway, 10.0.2.2,
//! with a TCP/IP stack of its own (smoltcp) whose wire is the NIC ([`wire`]). Each host
//! forward listens on a host address ([`forward`]); a host connection accepted there becomes a
//! connection of the host-side stack from the gateway to the guest's port, spliced to it
//! ([`splice`]). Nothing reaches the host's network but the forwards' own connections: the
//! guest cannot open connections out (the gateway answers its SYNs with a reset).

mod forward;
mod splice;
mod wire;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use pv_abi::net::NET_SLOTS;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tandem_core::net::{GuestInterface, HostForward, USER_GATEWAY_IP};

use self::forward::Forward;
use self::splice::{Connection, Fate};
use self::wire::{Held, Wire};
use crate::net::nic::{Nic, frame_buffer};
use crate::net::wait::WaitSet;

/// The gateway's MAC address (QEMU's).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// Bytes of each host-side socket's buffer, each way: a window of 64 KiB keeps a loopback
/// stream going, and 200 connections take 25 MiB. One byte short of 64 KiB, the largest
/// window without window scaling, whose rounding stalled streams (see the guest's socket
/// buffers, `tandem_rt::net`, and the README's Choices).
const SOCKET_BUFFER: usize = 65535;
/// Connections (open, connecting or queued) over all forwards; past it, host connections
/// wait in the listeners' backlogs. It bounds what host clients make the monitor hold.
const MAX_CONNECTIONS: usize = 1024;
/// How long the guest has to answer a SYN (smoltcp resends it meanwhile).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon to look again while the stack has frames for the guest and the guest has no
/// buffer posted: it posts buffers without telling, so the backend must look.
const WIRE_FULL_RECHECK: Duration = Duration::from_millis(1);
/// The ports the gateway connects from, in turn, so that a port comes back only after
/// 16 384 connections and never meets its previous connection in the guest's TIME-WAIT.
const EPHEMERAL_PORTS: RangeInclusive<u16> = 49152..=65535;

/// The user-mode backend.
pub struct UserNet {
    iface: Interface,
    sockets: SocketSet<'static>,
    forwards: Vec<Forward>,
    live: Vec<Live>,
    ports: Ports,
    guest_ip: Ipv4Addr,
    /// smoltcp's time is counted from here.
    epoch: Instant,
    from_guest: Box<[u8]>,
    to_guest: Box<[u8]>,
    held: Held,
}

/// A connection and its place: its socket, its forward, the port it connects from, and how
/// often the guest refused it.
struct Live {
    connection: Connection,
    socket: SocketHandle,
    forward: usize,
    port: u16,
    refusals: u32,
}

impl UserNet {
    /// Binds every forward's host address and sets up the gateway for `guest` on `nic`.
    pub fn new(forwards: &[HostForward], guest: &GuestInterface, nic: &mut Nic) -> anyhow::Result<UserNet> {
        let forwards = forwards.iter().map(Forward::bind).collect::<anyhow::Result<Vec<_>>>()?;
        let epoch = Instant::now();
        let (mut from_guest, mut to_guest, mut held) = (frame_buffer(), frame_buffer(), Held::default());
        let mut wire = Wire {
            nic,
            from_guest: &mut from_guest,
            to_guest: &mut to_guest,
            held: &mut held,
            gateway: USER_GATEWAY_IP,
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        // Initial sequence numbers and ports' order need only differ from run to run.
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        config.random_seed = clock.as_nanos() as u64 ^ u64::from(std::process::id());
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // One address on a fresh interface: it fits.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(USER_GATEWAY_IP), guest.prefix_len));
        });
        Ok(UserNet {
            iface,
            sockets: SocketSet::new(Vec::new()),
            forwards,
            live: Vec::new(),
            ports: Ports::default(),
            guest_ip: guest.ip,
            epoch,
            from_guest,
            to_guest,
            held,
        })
    }

    /// The host addresses the forwards listen on (with the port the system chose for a
    /// forward of port 0).
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.forwards.iter().filter_map(|forward| forward.local_addr().ok()).collect()
    }

    fn timestamp(&self, at: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(at.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    /// Adds the host sockets to `waits` for what they can do next; returns when the stack or
    /// a queued connection next needs a round.
    pub fn interest(&mut self, nic: &mut Nic, waits: &mut WaitSet, now: Instant) -> Option<Instant> {
        let accept = self.forwards.iter().map(Forward::connections).sum::<usize>() < MAX_CONNECTIONS;
        for forward in &mut self.forwards {
            forward.interest(waits, accept);
        }
        for live in &mut self.live {
            live.connection.interest(self.sockets.get(live.socket), waits);
        }
        let stack = self.iface.poll_at(self.timestamp(now), &self.sockets).map(|at| {
            let at = self.epoch + Duration::from_micros(at.total_micros().max(0) as u64);
            // Due now with no buffer to send into: look again soon rather than spin.
            if at <= now && nic.rx_space() == 0 { now + WIRE_FULL_RECHECK } else { at }
        });
        // Held replies wait for buffers the guest posts without telling.
        let held = (!self.held.is_empty()).then(|| now + WIRE_FULL_RECHECK);
        self.forwards.iter().filter_map(Forward::next_deadline).chain(stack).chain(held).min()
    }

    /// A round: host connections accepted and started, frames through the stack, bytes
    /// spliced as `waits` found the host sockets ready, frames out again, connections
    /// settled. Whether anything happened on the host side.
    pub fn pump(&mut self, nic: &mut Nic, waits: &WaitSet, now: Instant) -> bool {
        let mut moved = self.accept(waits, now);
        let at = self.timestamp(now);
        self.held.flush(nic);
        let mut wire = Wire {
            nic,
            from_guest: &mut self.from_guest,
            to_guest: &mut self.to_guest,
            held: &mut self.held,
            gateway: USER_GATEWAY_IP,
        };
        poll_stack(&mut self.iface, &mut self.sockets, &mut wire, at);
        for live in &mut self.live {
            moved |= live.connection.splice(self.sockets.get_mut(live.socket), waits);
        }
        poll_stack(&mut self.iface, &mut self.sockets, &mut wire, at);
        moved | self.settle(now)
    }

    /// Accepts host connections and starts those due; whether any were.
    fn accept(&mut self, waits: &WaitSet, now: Instant) -> bool {
        let mut room = MAX_CONNECTIONS.saturating_sub(self.forwards.iter().map(Forward::connections).sum());
        let mut moved = false;
        for index in 0..self.forwards.len() {
            let accepted = self.forwards[index].accept(waits, room, now);
            room -= accepted;
            moved |= accepted > 0;
            while let Some(waiting) = self.forwards[index].next_due(now) {
                self.connect(index, waiting);
                moved = true;
            }
        }
        moved
    }

    /// Opens a socket from the gateway to the guest's port for a host connection.
    fn connect(&mut self, forward: usize, waiting: forward::Waiting) {
        let Some(port) = self.ports.take() else {
            return splice::reset(&waiting.host);
        };
        let buffer = || tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]);
        let mut socket = tcp::Socket::new(buffer(), buffer());
        // Both sides of a splice forward what they get at once: the host side's own batching
        // would only add latency.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_timeout(Some(CONNECT_TIMEOUT.into()));
        let guest = (IpAddress::Ipv4(self.guest_ip), self.forwards[forward].guest_port);
        if socket.connect(self.iface.context(), guest, (IpAddress::Ipv4(USER_GATEWAY_IP), port)).is_err() {
            self.ports.give_back(port);
            return splice::reset(&waiting.host);
        }
        self.forwards[forward].connecting += 1;
        let connection = Connection::new(waiting.host);
        let socket = self.sockets.add(socket);
        self.live.push(Live { connection, socket, forward, port, refusals: waiting.refusals });
    }

    /// Settles each connection after a round: established, closed, or refused (retried or
    /// reset by its forward). Whether any changed.
    fn settle(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let mut index = 0;
        while index < self.live.len() {
            let live = &mut self.live[index];
            let was_connecting = live.connection.connecting();
            let fate = live.connection.fate(self.sockets.get_mut(live.socket));
            let forward = &mut self.forwards[live.forward];
            if fate == Fate::Open {
                if was_connecting && !live.connection.connecting() {
                    forward.connecting -= 1;
                    forward.established += 1;
                    changed = true;
                }
                index += 1;
                continue;
            }
            let live = self.live.swap_remove(index);
            self.sockets.remove(live.socket);
            self.ports.give_back(live.port);
            let forward = &mut self.forwards[live.forward];
            if was_connecting {
                forward.connecting -= 1;
            } else {
                forward.established -= 1;
            }
            if fate == Fate::Refused {
                forward.refused(live.connection.into_host(), live.refusals, now);
            }
            changed = true;
        }
        changed
    }
}

/// The stack's round on the wire: at most a ring's worth of the guest's frames in (smoltcp's
/// own `poll` takes frames for as long as they come, and a guest that kept posting would hold
/// the backend there, deaf to its stop), then what the sockets have to send.
fn poll_stack(
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
    wire: &mut Wire<'_>,
    at: smoltcp::time::Instant,
) {
    for _ in 0..NET_SLOTS {
        if iface.poll_ingress_single(at, wire, sockets) == PollIngressSingleResult::None {
            break;
        }
    }
    while iface.poll_egress(at, wire, sockets) == PollResult::SocketStateChanged {}
}

/// The gateway's ephemeral ports, handed out in turn, skipping those in use.
#[derive(Debug)]
struct Ports {
    next: u16,
    used: HashSet<u16>,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports { next: *EPHEMERAL_PORTS.start(), used: HashSet::new() }
    }
}

impl Ports {
    fn take(&mut self) -> Option<u16> {
        for _ in EPHEMERAL_PORTS {
            let port = self.next;
            self.next = if port == *EPHEMERAL_PORTS.end() { *EPHEMERAL_PORTS.start() } else { port + 1 };
            if self.used.insert(port) {
                return Some(port);
            }
        }
        None
    }

    fn give_back(&mut self, port: u16) {
        self.used.remove(&port);
    }
}
