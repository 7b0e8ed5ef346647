//! The backend thread: one per VM with a NIC, from the start of [`crate::vm::Vm::run`] until
//! it returns.
//!
//! It polls while traffic flows: each round takes frames off the TX ring, hands them to the
//! backend, delivers the backend's frames into posted RX buffers and kicks a VCPU that waits
//! for them. After [`IDLE_SPIN`] without traffic it sleeps: it raises `backend_asleep`,
//! re-checks the TX ring (see [`Nic::announce_sleep`]) and waits in `poll(2)` on its doorbell
//! (a guest's `NetNotify`, or the monitor stopping it), its backend's host descriptors, and
//! its backend's next timer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_core::net::NetConfig;

use super::backend::Backend;
use super::doorbell::Doorbell;
use super::nic::{Nic, area_addr};
use super::stats::{NicCounters, NicStats};
use super::wait::{READ, WaitSet};
use crate::memory::{GuestMemory, GuestRead};
use crate::outcome::NicFault;

/// How long the backend keeps polling after the last traffic before it sleeps. Long enough
/// to span a guest's turnaround (a round of its stack between a request and its reply), so
/// that a request-response exchange runs without notifications or wake-ups; short against a
/// scheduler tick (1-4 ms), so that an idle VM's backend gives its host CPU back at once.
const IDLE_SPIN: Duration = Duration::from_micros(50);

/// What the backend needs of its VM.
pub trait VmLink: Send + Sync {
    /// Wakes VCPU `vcpu`, which waits for RX.
    fn kick(&self, vcpu: u32);
    /// Ends the VM: the guest broke the NIC's rules.
    fn fault(&self, fault: NicFault);
}

/// What a VCPU thread holds to wake the backend, and counts its notifications with.
#[derive(Debug, Clone)]
pub struct NetHandle {
    doorbell: Arc<Doorbell>,
    counters: Arc<NicCounters>,
}

impl NetHandle {
    /// The guest's `NetNotify`: wakes the sleeping backend.
    pub fn notify(&self) {
        self.counters.notified();
        self.doorbell.ring();
    }

    /// What the NIC has done so far.
    pub fn stats(&self) -> NicStats {
        self.counters.snapshot()
    }
}

/// A VM's NIC and its backend, opened but not running.
pub struct NetDevice {
    nic: Nic,
    backend: Backend,
    handle: NetHandle,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice").field("nic", &self.nic).field("forwards", &self.forward_addrs()).finish()
    }
}

impl NetDevice {
    /// The NIC of a VM of `vcpus` VCPUs with `memory`, at [`area_addr`], and its backend
    /// per `config`: host addresses bound, TAP device attached.
    pub fn open(config: &NetConfig, memory: &GuestMemory, vcpus: u32) -> anyhow::Result<NetDevice> {
        let counters = Arc::new(NicCounters::default());
        let area = area_addr(memory.size());
        let mut nic = Nic::new(memory, area, vcpus, Arc::clone(&counters))
            .ok_or_else(|| anyhow::anyhow!("the NIC area at {area:#x} does not fit in guest memory"))?;
        let backend = Backend::open(config, &mut nic)?;
        let doorbell = Arc::new(Doorbell::new().map_err(|error| anyhow::anyhow!("cannot create an eventfd: {error}"))?);
        Ok(NetDevice { nic, backend, handle: NetHandle { doorbell, counters } })
    }

    pub fn handle(&self) -> NetHandle {
        self.handle.clone()
    }

    /// The host addresses the forwards listen on.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.backend.forward_addrs()
    }

    /// Starts the backend thread for the VM `link` reaches, named after `vm`.
    pub fn start(self, vm: &str, link: Arc<dyn VmLink>) -> io::Result<BackendThread> {
        let NetDevice { nic, backend, handle } = self;
        let worker = Worker { nic, backend, doorbell: Arc::clone(&handle.doorbell), link };
        let thread = std::thread::Builder::new().name(format!("{vm}-net")).spawn(move || worker.run())?;
        Ok(BackendThread { thread: Some(thread), handle })
    }
}

/// The running backend thread: stopped and joined by [`BackendThread::stop`], or when
/// dropped (on every path out of a run).
#[derive(Debug)]
pub struct BackendThread {
    thread: Option<JoinHandle<()>>,
    handle: NetHandle,
}

impl BackendThread {
    /// Stops the thread, waits for it, and returns what the NIC did.
    pub fn stop(mut self) -> NicStats {
        self.join();
        self.handle.stats()
    }

    /// What the NIC has done so far.
    pub fn stats(&self) -> NicStats {
        self.handle.stats()
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.doorbell.stop();
            // The thread never panics on purpose; if it did, the run still ends.
            let _ = thread.join();
        }
    }
}

impl Drop for BackendThread {
    fn drop(&mut self) {
        self.join();
    }
}

struct Worker {
    nic: Nic,
    backend: Backend,
    doorbell: Arc<Doorbell>,
    link: Arc<dyn VmLink>,
}

impl Worker {
    fn run(mut self) {
        let mut waits = WaitSet::default();
        let mut idle_since = Instant::now();
        let mut frames = self.nic.counters().frames();
        loop {
            let now = Instant::now();
            waits.clear();
            let bell = waits.add(self.doorbell.fd(), READ);
            let next = self.backend.interest(&mut self.nic, &mut waits, now);
            let asleep = now - idle_since >= IDLE_SPIN && self.nic.announce_sleep();
            let timeout = if asleep { next.map(|at| at.saturating_duration_since(now)) } else { Some(Duration::ZERO) };
            if waits.wait(timeout).is_err() {
                // poll(2) fails only for want of kernel memory: try again shortly.
                std::thread::sleep(IDLE_SPIN);
            }
            if asleep {
                self.nic.woke();
                self.nic.counters().slept();
            }
            if waits.ready(bell, READ) {
                self.doorbell.clear();
            }
            if self.doorbell.stopping() {
                return;
            }
            let moved = self.backend.pump(&mut self.nic, &waits, Instant::now());
            if let Some(vcpu) = self.nic.take_rx_waiter() {
                self.link.kick(vcpu);
                self.nic.counters().kicked();
            }
            if let Some(fault) = self.nic.fault() {
                self.link.fault(fault.clone());
                return;
            }
            let now_frames = self.nic.counters().frames();
            if moved || now_frames != frames {
                idle_since = Instant::now();
                frames = now_frames;
            }
        }
    }
}
