//! The NIC end to end without KVM: a NIC area in plain guest memory, the backend thread on
//! it as a VM runs it, and the guest side of the rings driven from the test by a smoltcp
//! stack of its own (10.0.2.15, a TCP echo server on port 7), which follows the contract:
//! it posts RX buffers, posts TX and notifies a sleeping backend, and declares itself in
//! `rx_waiting` before it waits for a kick. Host clients connect to the forwards.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pv_abi::net::{NET_BUF_SIZE, NET_FRAME_MAX, NET_SLOTS, NetArea, buffer_offset};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tandem_core::net::{GuestInterface, HostForward, NetBackend, NetConfig};

use super::*;
use crate::memory::{GuestMemory, GuestRead, GuestRef};
use crate::outcome::NicFault;

const MEM: u64 = 8 << 20;
const AREA: u64 = area_addr(MEM);
const ECHO_PORT: u16 = 7;
/// A port the guest does not listen on.
const CLOSED_PORT: u16 = 9;
/// Listening sockets the guest keeps ready, as many as SYNs the backend sends at once.
const LISTEN_POOL: usize = 16;
/// Long enough for anything here; a hang fails the test instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(30);

/// The VM as the backend sees it: kicks go to the test's guest, a fault is kept.
#[derive(Default)]
struct TestVm {
    kicked: Mutex<bool>,
    kick: Condvar,
    fault: Mutex<Option<NicFault>>,
    faulted: Condvar,
}

impl VmLink for TestVm {
    fn kick(&self, vcpu: u32) {
        assert_eq!(vcpu, 0, "the test's guest waits as VCPU 0");
        *self.kicked.lock().unwrap() = true;
        self.kick.notify_all();
    }

    fn fault(&self, fault: NicFault) {
        *self.fault.lock().unwrap() = Some(fault);
        self.faulted.notify_all();
    }
}

impl TestVm {
    /// Waits for a kick until `timeout`; whether one came.
    fn wait_kick(&self, timeout: Duration) -> bool {
        let kicked = self.kicked.lock().unwrap();
        let (mut kicked, _) = self.kick.wait_timeout_while(kicked, timeout, |kicked| !*kicked).unwrap();
        std::mem::take(&mut *kicked)
    }

    fn wait_fault(&self) -> Option<NicFault> {
        let fault = self.fault.lock().unwrap();
        self.faulted.wait_timeout_while(fault, PATIENCE, |fault| fault.is_none()).unwrap().0.clone()
    }
}

/// The guest's side of the rings.
struct Rings {
    area: GuestRef<NetArea>,
    memory: GuestMemory,
    notify: NetHandle,
    /// RX frames taken so far.
    rx_taken: u32,
    /// Frames moved either way: what tells the guest it is not idle.
    frames: u64,
}

impl Rings {
    fn new(memory: &GuestMemory, notify: NetHandle) -> Rings {
        let mut rings =
            Rings { area: memory.reference(AREA).unwrap(), memory: memory.clone(), notify, rx_taken: 0, frames: 0 };
        for _ in 0..NET_SLOTS {
            rings.post_rx();
        }
        rings
    }

    fn post_rx(&mut self) {
        let index = self.area.rx_posted.value.load(Ordering::Relaxed);
        let slot = index as usize % NET_SLOTS;
        self.area.rx[slot].addr.store(AREA + buffer_offset(true, slot), Ordering::Relaxed);
        self.area.rx[slot].len.store(NET_BUF_SIZE, Ordering::Relaxed);
        self.area.rx_posted.value.store(index.wrapping_add(1), Ordering::Release);
    }

    fn rx_ready(&self) -> bool {
        self.area.rx_filled.value.load(Ordering::Acquire) != self.rx_taken
    }

    /// The next frame delivered, its buffer posted again.
    fn take_rx(&mut self) -> Option<Vec<u8>> {
        if !self.rx_ready() {
            return None;
        }
        let slot = self.rx_taken as usize % NET_SLOTS;
        let mut frame = vec![0; self.area.rx[slot].len.load(Ordering::Relaxed) as usize];
        assert!(self.memory.read(AREA + buffer_offset(true, slot), &mut frame));
        self.rx_taken = self.rx_taken.wrapping_add(1);
        self.post_rx();
        self.frames += 1;
        Some(frame)
    }

    fn tx_room(&self) -> bool {
        let posted = self.area.tx_posted.value.load(Ordering::Relaxed);
        (posted.wrapping_sub(self.area.tx_done.value.load(Ordering::Acquire)) as usize) < NET_SLOTS
    }

    /// Posts a TX descriptor (a frame already in place) and notifies a sleeping backend.
    fn post_tx(&mut self, addr: u64, len: u32) {
        let index = self.area.tx_posted.value.load(Ordering::Relaxed);
        let slot = index as usize % NET_SLOTS;
        self.area.tx[slot].addr.store(addr, Ordering::Relaxed);
        self.area.tx[slot].len.store(len, Ordering::Relaxed);
        self.area.tx_posted.value.store(index.wrapping_add(1), Ordering::Release);
        fence(Ordering::SeqCst);
        if self.area.backend_asleep.value.swap(0, Ordering::Relaxed) != 0 {
            self.notify.notify();
        }
        self.frames += 1;
    }

    fn send(&mut self, frame: &[u8]) {
        let slot = self.area.tx_posted.value.load(Ordering::Relaxed) as usize % NET_SLOTS;
        let addr = AREA + buffer_offset(false, slot);
        self.memory.write(addr, frame).unwrap();
        self.post_tx(addr, frame.len() as u32);
    }
}

impl Device for Rings {
    type RxToken<'a> = Frame;
    type TxToken<'a> = &'a mut Rings;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Frame, &mut Rings)> {
        let frame = self.take_rx()?;
        Some((Frame(frame), self))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<&mut Rings> {
        self.tx_room().then_some(self)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NET_FRAME_MAX as usize;
        caps
    }
}

struct Frame(Vec<u8>);

impl phy::RxToken for Frame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for &mut Rings {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        // A full ring drops the frame, as a real driver would have to.
        if self.tx_room() {
            self.send(&frame);
        }
        result
    }
}

/// The test's guest: a stack on the rings, serving TCP echo on port 7, on its own thread.
struct Guest {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Guest {
    fn start(memory: &GuestMemory, device: &NetDevice, vm: Arc<TestVm>) -> Guest {
        let mut rings = Rings::new(memory, device.handle());
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GuestInterface::USER.mac)));
            config.random_seed = 7;
            let epoch = Instant::now();
            let now = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
            let mut iface = Interface::new(config, &mut rings, now());
            iface.update_ip_addrs(|addrs| {
                addrs.push(IpCidr::new(IpAddress::Ipv4(GuestInterface::USER.ip), 24)).unwrap();
            });
            let mut sockets = SocketSet::new(Vec::new());
            let mut served: Vec<SocketHandle> = Vec::new();
            while !running.load(Ordering::Relaxed) {
                let frames = rings.frames;
                iface.poll(now(), &mut rings, &mut sockets);
                let echoed = serve(&mut sockets, &mut served);
                iface.poll(now(), &mut rings, &mut sockets);
                if echoed || rings.frames != frames {
                    continue;
                }
                // Idle: declare ourselves, re-check, and wait for a kick or the stack's timer.
                rings.area.rx_waiting.value.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if !rings.rx_ready() {
                    let delay = iface.poll_delay(now(), &sockets).map_or(10_000, |delay| delay.total_micros());
                    vm.wait_kick(Duration::from_micros(delay.min(10_000)));
                }
                let _ = rings.area.rx_waiting.value.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        });
        Guest { stop, thread: Some(thread) }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// One round of the echo server: keeps `LISTEN_POOL` sockets listening, echoes what each
/// connection sent (no more than it can send back), closes once the client has and all is
/// echoed, and forgets finished connections. Whether anything was echoed or changed.
fn serve(sockets: &mut SocketSet<'static>, served: &mut Vec<SocketHandle>) -> bool {
    let mut busy = false;
    served.retain(|&handle| {
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        if socket.can_recv() && socket.can_send() {
            let room = socket.send_capacity() - socket.send_queue();
            let data = socket.recv(|bytes| {
                let n = bytes.len().min(room);
                (n, bytes[..n].to_vec())
            });
            socket.send_slice(&data.unwrap()).unwrap();
            busy = true;
        }
        if !socket.may_recv() && socket.may_send() && socket.send_queue() == 0 {
            socket.close();
            busy = true;
        }
        let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
        if done {
            sockets.remove(handle);
            busy = true;
        }
        !done
    });
    let listening = served.iter().filter(|&&handle| sockets.get::<tcp::Socket>(handle).is_listening()).count();
    for _ in listening..LISTEN_POOL {
        let buffer = || tcp::SocketBuffer::new(vec![0; 64 << 10]);
        let mut socket = tcp::Socket::new(buffer(), buffer());
        socket.listen(ECHO_PORT).unwrap();
        served.push(sockets.add(socket));
        busy = true;
    }
    busy
}

/// A NIC with the user backend forwarding a free loopback port to each of `guest_ports`, in
/// a fresh guest memory.
fn user_nic(guest_ports: &[u16]) -> (GuestMemory, NetDevice) {
    let forwards = guest_ports
        .iter()
        .map(|&guest_port| HostForward { host: SocketAddrV4::new([127, 0, 0, 1].into(), 0), guest_port })
        .collect();
    let config = NetConfig::user_forwarding(forwards);
    let memory = GuestMemory::new(MEM).unwrap();
    let device = NetDevice::open(&config, &memory, 2).unwrap();
    (memory, device)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// `len` bytes that differ from any shift of themselves.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through the echo at `addr` from one thread while reading it back on this one.
fn echo(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let len = data.len();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(len);
    stream.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

#[test]
fn four_mib_echo_back_intact_through_a_forward_and_half_closes_pass_both_ways() {
    let (memory, device) = user_nic(&[ECHO_PORT]);
    let addr = device.forward_addrs()[0];
    let vm = Arc::new(TestVm::default());
    let guest = Guest::start(&memory, &device, Arc::clone(&vm));
    let backend = device.start("test", vm.clone()).unwrap();

    let data = pattern(4 << 20, 1);
    let started = Instant::now();
    let back = echo(addr, data.clone());
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
    // The client's FIN reached the guest, whose FIN after the echo ended the client's read.
    let mut stream = connect(addr);
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello");

    drop(guest);
    let stats = backend.stop();
    assert!(vm.fault.lock().unwrap().is_none());
    assert!(stats.rx_bytes > 4 << 20 && stats.tx_bytes > 4 << 20, "{stats:?}");
    assert_eq!((stats.tx_dropped, stats.rx_dropped), (0, 0), "{stats:?}");
    assert!(stats.kicks > 0 && stats.sleeps > 0 && stats.notifications > 0, "{stats:?}");
    eprintln!("4 MiB echoed in {:.2?}: {stats:?}", started.elapsed());
}

#[test]
fn a_forward_to_a_port_nobody_listens_on_resets_the_host_connection() {
    let (memory, device) = user_nic(&[CLOSED_PORT]);
    let addr = device.forward_addrs()[0];
    let vm = Arc::new(TestVm::default());
    let _guest = Guest::start(&memory, &device, Arc::clone(&vm));
    let _backend = device.start("test", vm).unwrap();
    let mut stream = connect(addr);
    let mut byte = [0];
    let error = stream.read(&mut byte).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn two_hundred_connections_at_once_all_echo() {
    let (memory, device) = user_nic(&[ECHO_PORT]);
    let addr = device.forward_addrs()[0];
    let vm = Arc::new(TestVm::default());
    let _guest = Guest::start(&memory, &device, Arc::clone(&vm));
    let backend = device.start("test", vm).unwrap();
    let clients: Vec<_> = (0..200u64)
        .map(|seed| {
            std::thread::spawn(move || {
                let data = pattern(16 << 10, seed);
                echo(addr, data.clone()) == data
            })
        })
        .collect();
    let echoed = clients.into_iter().map(JoinHandle::join).filter(|echoed| matches!(echoed, Ok(true))).count();
    assert_eq!(echoed, 200, "{:?}", backend.stats());
}

#[test]
fn a_descriptor_outside_the_buffer_area_ends_the_vm_with_a_fault_naming_it() {
    let (memory, device) = user_nic(&[]);
    let vm = Arc::new(TestVm::default());
    let mut rings = Rings::new(&memory, device.handle());
    let backend = device.start("test", vm.clone()).unwrap();
    // Let the backend fall asleep, so that the frame comes with a notification.
    std::thread::sleep(Duration::from_millis(10));
    rings.post_tx(0x20_0000, 60);
    let fault = vm.wait_fault().expect("the backend reports the fault");
    assert_eq!(
        fault.to_string(),
        format!(
            "the NIC's TX descriptor 0 points at 0x200000 (60 bytes), outside its buffer area {:#x}..{:#x}",
            AREA + pv_abi::net::NET_BUFFERS_OFFSET,
            AREA + pv_abi::net::NET_AREA_SIZE
        )
    );
    let stats = backend.stop();
    assert_eq!((stats.notifications, stats.tx_packets), (1, 0), "{stats:?}");
}

#[test]
fn a_forward_whose_host_address_is_taken_is_an_error_naming_it() {
    let (_memory, device) = user_nic(&[ECHO_PORT]);
    let taken = device.forward_addrs()[0];
    let config = NetConfig {
        backend: NetBackend::User {
            forwards: vec![HostForward { host: SocketAddrV4::new([127, 0, 0, 1].into(), taken.port()), guest_port: 7 }],
        },
        guest: GuestInterface::USER,
    };
    let error = NetDevice::open(&config, &GuestMemory::new(MEM).unwrap(), 1).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.starts_with(&format!("cannot listen on {taken} to forward it to the guest: ")), "{message}");
}
