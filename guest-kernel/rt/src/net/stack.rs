//! The TCP/IP stack: one smoltcp interface over the NIC, its sockets and the listeners'
//! pools, behind one lock; and what the scheduler calls to keep it going.
//!
//! Nothing here blocks a thread (the scheduler calls in, so this module must not call the
//! scheduler): threads wait through `core::task::Waker`s, registered under the lock by the
//! socket layer, which the stack wakes under the same lock.
//!
//! **Polling.** [`poll`] is cheap when there is nothing to do: no RX frame waits and the
//! deadline smoltcp gave ([`NEXT_POLL_TSC`]) has not passed. Otherwise it takes the lock if
//! it is free (a VCPU that finds another polling leaves it to that one), takes in the frames
//! received, sends what the sockets have to send, and keeps the next deadline. Socket calls
//! that give the stack work either poll under the lock they hold (a write, so that its data
//! leaves at once) or mark the stack due for the next scheduler pass (a read, whose window
//! update can wait that long).
//!
//! **Listeners** (`super::listener`) are tended after every frame taken in, so that
//! connections arriving together each find a listening socket.
//!
//! **Closing.** A socket its owner has closed stays in the set until its connection is over,
//! and is aborted if the peer stays silent for [`ORPHAN_TIMEOUT`]; then it is removed, so
//! that the set does not grow over thousands of connections. Over means closed, or in
//! TIME-WAIT: its last ACK went out in the poll that got it there (unless the TX ring was
//! full; a peer that misses it gets a reset for its FIN again, which ends its LAST-ACK as
//! well). The FIN of a socket whose peer has closed already waits until the socket's data is
//! acknowledged (see [`Stack::close`]).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use core::task::Waker;

use pv_abi::hypercall::NO_DEADLINE;
use pv_abi::net::{NET_AREA_SIZE, NET_SLOTS, NetInfo};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};
use spinning_top::Spinlock;
use spinning_top::guard::SpinlockGuard;

use super::device::{NetDevice, Nic};
use super::listener::Listener;
use crate::clock;

/// How long the peer of a socket its owner closed may stay silent before the socket is
/// aborted: a peer that never acknowledges the FIN, or never sends its own, does not keep
/// the socket's buffers forever.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most frames taken in by one poll, so that a steady stream of frames cannot keep one VCPU
/// polling; those left make the next scheduler pass poll again.
const FRAMES_PER_POLL: usize = NET_SLOTS;

/// The NIC and the stack on it, made once at boot.
struct Net {
    nic: Nic,
    stack: Spinlock<Stack>,
}

static NET: AtomicPtr<Net> = AtomicPtr::new(core::ptr::null_mut());

/// TSC value at which smoltcp wants its next poll (timers: retransmission, TIME-WAIT), 0 for
/// at once, [`NO_DEADLINE`] for only when frames arrive. Written under the stack's lock.
static NEXT_POLL_TSC: AtomicU64 = AtomicU64::new(NO_DEADLINE);

fn net() -> Option<&'static Net> {
    let net = NET.load(Ordering::Acquire);
    // SAFETY: set once in `init` to a leaked `Net`, never changed or freed.
    unsafe { net.as_ref() }
}

/// smoltcp's clock: microseconds of the TSC.
fn now() -> Instant {
    Instant::from_micros((clock::ticks_to_ns(clock::tsc()) / 1_000) as i64)
}

/// The TSC value at which [`now`] reaches `instant`.
fn tsc_at(instant: Instant) -> u64 {
    clock::ns_to_ticks(instant.total_micros().max(0) as u64 * 1_000) + 1
}

/// Brings the stack up on the NIC `info` describes: posts the RX buffers, gives the interface
/// its MAC, address and default route.
///
/// # Safety
/// `info.area` is the NIC area of a backend that follows `pv_abi::net`: page aligned,
/// `NET_AREA_SIZE` bytes of guest memory kept for the guest's life, used by no one else in
/// the guest. Called once.
pub(crate) unsafe fn init(info: &NetInfo) {
    assert_eq!(info.area_size, NET_AREA_SIZE, "the NIC area has the wrong size");
    assert!(info.prefix_len <= 32, "the NIC's IPv4 prefix length is {}", info.prefix_len);
    let mac = EthernetAddress(info.mac);
    assert!(mac.is_unicast(), "the NIC's MAC address {mac} is not unicast");
    // SAFETY: per the caller.
    let nic = unsafe { Nic::new(info.area) };
    let mut device = NetDevice::new(nic);
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    // Initial sequence numbers and ephemeral ports differ from boot to boot.
    config.random_seed = clock::tsc();
    let mut iface = Interface::new(config, &mut device, now());
    let address = IpCidr::new(Ipv4Address::from(info.ip).into(), info.prefix_len);
    iface.update_ip_addrs(|addrs| addrs.push(address).expect("the interface has room for one address"));
    if info.gateway != [0; 4] {
        iface.routes_mut().add_default_ipv4_route(Ipv4Address::from(info.gateway)).expect("an empty route table");
    }
    let stack = Stack {
        iface,
        sockets: SocketSet::new(Vec::new()),
        device,
        listeners: Vec::new(),
        orphans: Vec::new(),
        fins_due: Vec::new(),
    };
    let net = Box::leak(Box::new(Net { nic, stack: Spinlock::new(stack) }));
    let first = NET.compare_exchange(core::ptr::null_mut(), net, Ordering::AcqRel, Ordering::Acquire).is_ok();
    assert!(first, "the NIC was attached twice");
}

/// Whether the VM has a NIC (with the stack up on it).
pub(crate) fn present() -> bool {
    net().is_some()
}

/// The stack, locked; `None` without a NIC.
pub(crate) fn lock() -> Option<SpinlockGuard<'static, Stack>> {
    net().map(|net| net.stack.lock())
}

/// Polls the stack if it has work: RX frames wait or its deadline has passed. Returns at
/// once if another VCPU is polling.
pub(crate) fn poll() {
    let Some(net) = net() else { return };
    if !net.nic.rx_pending() && clock::tsc() < NEXT_POLL_TSC.load(Ordering::Relaxed) {
        return;
    }
    if let Some(mut stack) = net.stack.try_lock() {
        stack.poll();
    }
}

/// Whether RX frames wait for the stack.
pub(crate) fn rx_pending() -> bool {
    net().is_some_and(|net| net.nic.rx_pending())
}

/// The TSC value by which the stack wants its next poll, [`NO_DEADLINE`] without a NIC.
pub(crate) fn poll_deadline() -> u64 {
    if present() { NEXT_POLL_TSC.load(Ordering::Relaxed) } else { NO_DEADLINE }
}

/// Declares VCPU `vcpu`, about to block, as the one the NIC's backend kicks when frames
/// arrive; returns whether it may block (no frame arrived meanwhile). Without a NIC it may.
pub(crate) fn await_rx(vcpu: u32) -> bool {
    net().is_none_or(|net| net.nic.await_rx(vcpu))
}

/// Withdraws [`await_rx`]'s declaration once the VCPU is awake again; returns whether it was
/// still there (the backend did not take it, no other VCPU replaced it).
pub(crate) fn stop_awaiting_rx(vcpu: u32) -> bool {
    net().is_some_and(|net| net.nic.stop_awaiting_rx(vcpu))
}

/// Declares VCPU `vcpu`, blocked, as the one the NIC's backend kicks when frames arrive, on
/// behalf of a VCPU that was declared and woke for something else.
pub(crate) fn hand_rx_wait_to(vcpu: u32) {
    if let Some(net) = net() {
        net.nic.declare_rx_waiter(vcpu);
    }
}

/// Whether sockets their owners closed still have data or a FIN to deliver (false without
/// a NIC): the VM's exit would cut them off.
pub(crate) fn draining() -> bool {
    lock().is_some_and(|stack| stack.draining())
}

/// The interface, its sockets, the device, and what the socket layer keeps in the stack.
pub(crate) struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: NetDevice,
    listeners: Vec<Listener>,
    /// Sockets their owners closed, kept until their connection is over.
    orphans: Vec<SocketHandle>,
    /// Sockets in CLOSE-WAIT whose FIN waits for their data to be acknowledged.
    fins_due: Vec<SocketHandle>,
}

impl Stack {
    /// Takes in the frames received, sends what the sockets have to send, tends the
    /// listeners and drops the sockets whose connection is over, tells the backend of the
    /// frames posted, and keeps the next deadline.
    pub(crate) fn poll(&mut self) {
        let now = now();
        self.iface.poll_maintenance(now);
        for _ in 0..FRAMES_PER_POLL {
            match self.iface.poll_ingress_single(now, &mut self.device, &mut self.sockets) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    self.listeners.iter_mut().for_each(|listener| listener.tend(&mut self.sockets));
                }
            }
        }
        self.send_fins_due();
        while self.iface.poll_egress(now, &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged {}
        self.reap_orphans();
        self.device.notify_backend();
        let next = self.iface.poll_at(now, &self.sockets).map_or(NO_DEADLINE, tsc_at);
        NEXT_POLL_TSC.store(next, Ordering::Relaxed);
    }

    /// Makes the next scheduler pass poll: a socket call left work (a window to reopen).
    pub(crate) fn mark_due(&self) {
        NEXT_POLL_TSC.store(0, Ordering::Relaxed);
    }

    /// Starts listening on `port` with `pool` sockets, keeping up to `backlog` connections
    /// until accepted; false if the port has a listener.
    pub(crate) fn listen(&mut self, port: u16, pool: usize, backlog: usize) -> bool {
        if self.listeners.iter().any(|listener| listener.port() == port) {
            return false;
        }
        self.listeners.push(Listener::new(port, pool, backlog, &mut self.sockets));
        true
    }

    /// Stops listening on `port`: its listening sockets go, its connections not yet accepted
    /// are closed.
    pub(crate) fn unlisten(&mut self, port: u16) {
        let Some(at) = self.listeners.iter().position(|listener| listener.port() == port) else { return };
        for handle in self.listeners.swap_remove(at).into_sockets() {
            if self.tcp(handle).state() == tcp::State::Listen {
                self.sockets.remove(handle);
            } else {
                self.release(handle);
            }
        }
    }

    fn listener(&mut self, port: u16) -> &mut Listener {
        self.listeners.iter_mut().find(|listener| listener.port() == port).expect("a listener's port is listened on")
    }

    /// A connection on `port`'s listener, if one is ready (see [`Listener::take`]).
    pub(crate) fn accept(&mut self, port: u16) -> Option<SocketHandle> {
        let sockets = &mut self.sockets;
        self.listeners.iter_mut().find(|listener| listener.port() == port)?.take(sockets)
    }

    /// Has `waker` woken when a connection is ready on `port`'s listener.
    pub(crate) fn wait_accept(&mut self, port: u16, waker: Waker) {
        self.listener(port).wait(waker);
    }

    /// The TCP socket `handle` names.
    pub(crate) fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(handle)
    }

    /// Shuts the socket's sending half down: its FIN follows the data written. A socket whose
    /// peer has closed already (CLOSE-WAIT) and whose data is not all acknowledged sends it
    /// only once it is: smoltcp 0.14 takes an ACK that a socket in LAST-ACK gets without new
    /// data acknowledged for a duplicate ACK of its FIN and ignores its window, so after a FIN
    /// sent early, the peer's window update after a full window would be lost and the rest of
    /// the data would wait for a zero-window probe, a second later.
    pub(crate) fn close(&mut self, handle: SocketHandle) {
        let socket = self.tcp(handle);
        if socket.state() != tcp::State::CloseWait || socket.send_queue() == 0 {
            socket.close();
        } else if !self.fins_due.contains(&handle) {
            self.fins_due.push(handle);
        }
    }

    /// Sends the FINs that [`Stack::close`] held back whose data is now acknowledged (or
    /// whose connection ended meanwhile).
    fn send_fins_due(&mut self) {
        let sockets = &mut self.sockets;
        self.fins_due.retain(|&handle| {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            let due = socket.state() != tcp::State::CloseWait || socket.send_queue() == 0;
            if due {
                socket.close();
            }
            !due
        });
    }

    /// Closes the socket for its owner (see [`Stack::close`]) and keeps it until its
    /// connection is over; the handle is the stack's from now on.
    pub(crate) fn release(&mut self, handle: SocketHandle) {
        self.close(handle);
        self.tcp(handle).set_timeout(Some(ORPHAN_TIMEOUT));
        self.orphans.push(handle);
    }

    /// Whether a socket its owner closed still has data or its FIN to deliver.
    fn draining(&self) -> bool {
        !self.fins_due.is_empty()
            || self.orphans.iter().any(|&handle| {
                let state = self.sockets.get::<tcp::Socket>(handle).state();
                !matches!(state, tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2)
            })
    }

    /// How many sockets the set holds.
    pub(crate) fn socket_count(&self) -> usize {
        self.sockets.iter().count()
    }

    /// Removes the released sockets whose connection is over.
    fn reap_orphans(&mut self) {
        let sockets = &mut self.sockets;
        self.orphans.retain(|&handle| {
            let over = matches!(sockets.get::<tcp::Socket>(handle).state(), tcp::State::Closed | tcp::State::TimeWait);
            if over {
                sockets.remove(handle);
            }
            !over
        });
    }
}
