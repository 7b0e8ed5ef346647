//! `netloop [connections=N] [parallel=P] [bytes=B]`: the network stack, its driver and the
//! scheduler's polling, tested in a VM without a NIC. The program plays the NIC's backend on
//! an area of its own ([`Loopback`]), with a second smoltcp interface, the host, on the far
//! side of the rings, run by a thread. The `echo` server runs on the guest's stack; the host
//! makes N connections to it, P at a time, each sending B bytes and a FIN, and checks that it
//! reads them back and then the end of the stream; one more connection is aborted (a reset)
//! while the server waits to read from it. Then the server's summary must count them all,
//! and the stack must hold no socket. Any failure panics.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use tandem_rt::net::{self, TcpListener};
use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{boot, clock, println, sched};

use super::echo::{self, Summary};
use super::loopback::Loopback;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0f];
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HOST_IP: [u8; 4] = [10, 0, 2, 2];
const PREFIX_LEN: u8 = 24;
const PORT: u16 = 7;
/// The host's first local port; each connection has its own.
const FIRST_HOST_PORT: u16 = 10_000;
/// Bytes the reset connection has echoed when it is aborted.
const RESET_AFTER_BYTES: usize = 1000;
/// Bytes of each of a host socket's buffers.
const HOST_BUFFER_BYTES: usize = 16 * 1024;
/// How long the host sleeps when nothing moved (it polls: this backend never sleeps).
const HOST_IDLE_NS: u64 = 20_000;
/// How long the whole exchange may take.
const TIME_LIMIT_NS: u64 = 30_000_000_000;

pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("connections", "200", "echo connections the host makes"),
    ParamSpec::int("parallel", "50", "connections open at once"),
    ParamSpec::int("bytes", "20000", "bytes each connection sends and reads back"),
];

pub fn run(params: &Params) -> Result<i64, ParamError> {
    let connections = params.u64_in("connections", 1..=50_000, "one port per connection: 1 to 50000")?;
    let parallel = params.u64_in("parallel", 1..=1_000, "between 1 and 1000")? as usize;
    let bytes = params.u64_in("bytes", 1..=1 << 30, "between 1 and 1 GiB")? as usize;
    if boot::info().net.present() {
        println!("netloop: the VM has a NIC already; run me without one");
        return Ok(tandem_rt::EXIT_USAGE);
    }
    sched::start(move || test(connections, parallel, bytes))
}

fn test(connections: u64, parallel: usize, bytes: usize) -> i64 {
    let start = clock::tsc();
    let loopback = Loopback::new();
    // SAFETY: the area is new, kept for the guest's life, and served by the host thread
    // below as `pv_abi::net` says.
    unsafe { net::attach(&loopback.info(GUEST_MAC, GUEST_IP, PREFIX_LEN, HOST_IP)) };
    let listener = TcpListener::bind(PORT).expect("the port is free");
    let host = sched::spawn(move || Host::new(loopback, connections, parallel, bytes).run());
    let summary = echo::serve(&listener, connections + 1).expect("accept fails only without a NIC");
    drop(listener);
    host.join();
    let expected = Summary {
        connections: connections + 1,
        bytes: connections * bytes as u64 + RESET_AFTER_BYTES as u64,
        resets: 1,
    };
    assert_eq!(summary, expected, "the echo server's summary");
    println!(
        "netloop: {connections} connections ({parallel} at a time, {bytes} bytes each) and a reset one echoed \
         over a loopback NIC on {} VCPUs in {} ms; no socket left",
        boot::nr_vcpus(),
        clock::ticks_to_ns(clock::tsc() - start) / 1_000_000
    );
    0
}

fn now() -> Instant {
    Instant::from_micros((clock::ticks_to_ns(clock::tsc()) / 1_000) as i64)
}

/// The byte at `offset` of connection `number`'s stream: a period (251) unlike any buffer
/// size, so that a byte out of place shows.
fn pattern(number: u64, offset: usize) -> u8 {
    ((offset as u64 + number * 37) % 251) as u8
}

/// The host: an interface on the backend's side of the loopback NIC, and its connections.
struct Host {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Loopback,
    clients: Vec<Client>,
    /// Sockets of connections that are over, removed once their last segment has left.
    closing: Vec<SocketHandle>,
    /// Connections made so far; number 0 is the one reset.
    started: u64,
    connections: u64,
    parallel: usize,
    bytes: usize,
}

/// One connection of the host.
struct Client {
    handle: SocketHandle,
    number: u64,
    sent: usize,
    received: usize,
}

impl Host {
    fn new(mut device: Loopback, connections: u64, parallel: usize, bytes: usize) -> Self {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC)));
        config.random_seed = clock::tsc().rotate_left(17);
        let mut iface = Interface::new(config, &mut device, now());
        let address = IpCidr::new(Ipv4Address::from(HOST_IP).into(), PREFIX_LEN);
        iface.update_ip_addrs(|addrs| addrs.push(address).expect("room for one address"));
        Host {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            clients: Vec::new(),
            closing: Vec::new(),
            started: 0,
            connections,
            parallel,
            bytes,
        }
    }

    /// Makes every connection and checks each, until the last is over and the guest's stack
    /// holds no socket (its server is gone).
    fn run(mut self) -> u64 {
        let deadline = clock::deadline_after_ns(TIME_LIMIT_NS);
        loop {
            let polled = self.iface.poll(now(), &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged;
            self.device.kick_waiter();
            self.remove_closed();
            self.start_clients();
            let moved = self.step_clients();
            if self.clients.is_empty() && self.started > self.connections && net::sockets() == 0 {
                return 0;
            }
            assert!(
                clock::tsc() < deadline,
                "netloop: stuck with {} of {} connections made, {} open, the guest holding {} sockets",
                self.started,
                self.connections + 1,
                self.clients.len(),
                net::sockets()
            );
            // Through the scheduler either way (a sleep of 0 when something moved): its pass
            // polls the guest's stack even when no thread is queued.
            sched::sleep(if polled || moved { 0 } else { HOST_IDLE_NS });
        }
    }

    fn start_clients(&mut self) {
        while self.clients.len() < self.parallel && self.started <= self.connections {
            let buffer = || tcp::SocketBuffer::new(vec![0; HOST_BUFFER_BYTES]);
            let mut socket = tcp::Socket::new(buffer(), buffer());
            socket.set_ack_delay(None);
            socket.set_nagle_enabled(false);
            let number = self.started;
            let remote = (IpAddress::Ipv4(Ipv4Address::from(GUEST_IP)), PORT);
            socket
                .connect(self.iface.context(), remote, FIRST_HOST_PORT + number as u16)
                .expect("a new socket connects");
            self.clients.push(Client { handle: self.sockets.add(socket), number, sent: 0, received: 0 });
            self.started += 1;
        }
    }

    /// Moves every connection on; returns whether any moved.
    /// Removes the sockets of the connections that are over, but for an aborted one whose RST
    /// has not left yet (a poll that found the guest's RX ring full keeps it for the next):
    /// removed before, the guest would never hear of the reset, and its server would wait
    /// on that connection for good.
    fn remove_closed(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&handle| {
            let socket = sockets.get::<tcp::Socket>(handle);
            let reset_pending = socket.state() == tcp::State::Closed && socket.remote_endpoint().is_some();
            if !reset_pending {
                sockets.remove(handle);
            }
            reset_pending
        });
    }

    fn step_clients(&mut self) -> bool {
        let mut moved = false;
        let mut at = 0;
        while at < self.clients.len() {
            let client = &mut self.clients[at];
            let socket = self.sockets.get_mut::<tcp::Socket>(client.handle);
            let (step_moved, over) = client.step(socket, self.bytes);
            moved |= step_moved;
            if over {
                self.closing.push(self.clients.swap_remove(at).handle);
            } else {
                at += 1;
            }
        }
        moved
    }
}

impl Client {
    /// Sends what the socket takes, reads and checks what came back, closes or aborts when
    /// it is time; returns whether anything moved and whether the connection is over.
    fn step(&mut self, socket: &mut tcp::Socket, bytes: usize) -> (bool, bool) {
        let resets = self.number == 0;
        let goal = if resets { RESET_AFTER_BYTES } else { bytes };
        let (sent, received) = (self.sent, self.received);
        if socket.can_send() && self.sent < goal {
            let (number, from) = (self.number, self.sent);
            self.sent += socket
                .send(|buf| {
                    let take = buf.len().min(goal - from);
                    buf[..take].iter_mut().enumerate().for_each(|(i, byte)| *byte = pattern(number, from + i));
                    (take, take)
                })
                .expect("a socket that can send sends");
            if self.sent == goal && !resets {
                socket.close();
            }
        }
        while socket.can_recv() {
            let (number, from) = (self.number, self.received);
            self.received += socket
                .recv(|buf| {
                    for (i, &byte) in buf.iter().enumerate() {
                        assert_eq!(
                            byte,
                            pattern(number, from + i),
                            "connection {number}: byte {} echoed wrong",
                            from + i
                        );
                    }
                    (buf.len(), buf.len())
                })
                .expect("a socket that can receive receives");
        }
        assert!(self.received <= goal, "connection {}: {} bytes echoed of {goal} sent", self.number, self.received);
        let moved = (self.sent, self.received) != (sent, received);
        if self.received < goal {
            assert!(
                socket.state() != tcp::State::Closed,
                "connection {} was reset by the guest after {} of {goal} bytes",
                self.number,
                self.received
            );
            return (moved, false);
        }
        if resets {
            socket.abort();
            return (true, true);
        }
        (moved, !socket.may_recv())
    }
}
