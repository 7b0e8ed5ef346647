//! VCPU threads. Each VCPU is a host thread that owns its `VcpuFd` and moves between three
//! phases: offline (parked until a `vcpu_up` start request), running (in and out of
//! KVM_RUN, handling hypercalls) and blocked (parked until a kick or its deadline). KVM cannot
//! destroy VCPUs, so all are created at boot and `vcpu_down` only parks the thread.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use pv_abi::hypercall::{BLOCK_KICKED, BLOCK_TIMED_OUT, FaultFrame, HcError, Hypercall, NO_DEADLINE, exception_name};
use pv_abi::shared::VcpuState;
use sched::VcpuId;

use tandem_core::metrics::VcpuTimes;

use crate::accounting::Accounting;
use crate::dispatch::{Dispatcher, VmStopped};
use crate::hypercall::{self, Action};
use crate::kick::Kicker;
use crate::vm::{Outcome, VmShared, vcpu_info_addr};
use crate::x86;

const MSR_IA32_TSC: u32 = 0x10;

/// Where and how a VCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub entry: u64,
    pub stack_top: u64,
    pub arg: u64,
}

/// What one VCPU did: exits by kind, where its time went, where it was at the end.
#[derive(Debug, Clone, Default)]
pub struct VcpuStats {
    /// RUN, RDY and WAIT time.
    pub times: VcpuTimes,
    /// Hypercalls by number (`Hypercall as usize`).
    pub hypercalls: [u64; Hypercall::ALL.len()],
    /// Everything else: interruptions by kicks, unknown ports, faults.
    pub other: u64,
    /// Where the VCPU was when the VM stopped: offline, blocked, or running at an address.
    pub stopped: Stopped,
}

/// What a VCPU was doing when the VM stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stopped {
    #[default]
    Offline,
    Blocked,
    /// Running guest code at this `rip`.
    Running(u64),
    /// It ended the VM itself (exit, panic, fault).
    Ending,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Offline => write!(f, "offline"),
            Stopped::Blocked => write!(f, "blocked"),
            Stopped::Running(rip) => write!(f, "running at rip {rip:#x}"),
            Stopped::Ending => write!(f, "ending the VM"),
        }
    }
}

impl VcpuStats {
    pub fn total(&self) -> u64 {
        self.hypercalls.iter().sum::<u64>() + self.other
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Offline,
    Running,
    Blocked,
}

#[derive(Debug, Default)]
struct Control {
    phase: Phase,
    start: Option<Start>,
    /// A kick that the next block consumes.
    kick_pending: bool,
    stop: bool,
}

/// The handle other threads use to start, kick and stop a VCPU.
#[derive(Debug, Default)]
pub(crate) struct VcpuControl {
    control: Mutex<Control>,
    wake: Condvar,
    pub kicker: Arc<Kicker>,
}

impl VcpuControl {
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().expect("VCPU control lock")
    }

    /// Asks an offline VCPU to start.
    pub fn request_start(&self, start: Start) -> Result<(), HcError> {
        let mut control = self.lock();
        if control.phase != Phase::Offline || control.start.is_some() {
            return Err(HcError::BadState);
        }
        control.start = Some(start);
        self.wake.notify_all();
        Ok(())
    }

    /// Kicks the VCPU: `wake`s it if it is blocked (under this lock, which its thread holds
    /// from the block's check for a pending kick until the dispatcher knows it blocked), or
    /// makes its next block return at once. A kick to an offline VCPU is dropped: it starts
    /// afresh.
    pub fn kick(&self, wake: impl FnOnce()) {
        let mut control = self.lock();
        match control.phase {
            Phase::Offline => {}
            Phase::Blocked => wake(),
            Phase::Running => control.kick_pending = true,
        }
    }

    /// Makes the thread leave whatever it is doing and end.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
        self.kicker.kick();
    }
}

/// Starts the thread of VCPU `id`.
pub(crate) fn spawn(vm: Arc<VmShared>, id: u32, fd: VcpuFd) -> std::io::Result<JoinHandle<VcpuStats>> {
    std::thread::Builder::new().name(format!("{}-vcpu{id}", vm.name)).spawn(move || {
        let mut thread = VcpuThread {
            seat: VcpuId(vm.first_vcpu + id),
            vm,
            id,
            fd,
            counters: VcpuStats::default(),
            tsc_offset: 0,
            trap_table_generation: 0,
            ended_vm: false,
            accounting: Accounting::default(),
        };
        thread.main();
        thread.counters
    })
}

struct VcpuThread {
    vm: Arc<VmShared>,
    id: u32,
    /// This VCPU's id in the dispatcher.
    seat: VcpuId,
    fd: VcpuFd,
    counters: VcpuStats,
    /// Guest TSC minus host TSC.
    tsc_offset: i64,
    /// The trap table generation loaded into this VCPU.
    trap_table_generation: u64,
    /// Whether this VCPU's own exit, panic or fault ended the VM.
    ended_vm: bool,
    accounting: Accounting,
}

/// Why a VCPU left its run loop.
enum Leave {
    Down,
    Stop,
    /// The VM stopped while this VCPU was blocked.
    Blocked,
}

impl VcpuThread {
    fn control(&self) -> &VcpuControl {
        &self.vm.vcpus[self.id as usize]
    }

    fn main(&mut self) {
        self.vm.vcpus[self.id as usize].kicker.publish(&mut self.fd);
        self.vm.dispatcher.register_thread(self.seat);
        self.tsc_offset = self.measure_tsc_offset();
        while let Some(start) = self.wait_for_start() {
            if let Err(error) = self.load_start_state(start) {
                self.fault(format!("cannot set up the VCPU: {error}"));
                break;
            }
            self.accounting.runnable();
            let leave = match self.wait_for_pcpu(|dispatcher, vcpu| dispatcher.wake(vcpu)) {
                Ok(()) => self.run_loop(),
                Err(VmStopped) => Leave::Stop,
            };
            self.vm.dispatcher.down(self.seat);
            self.accounting.not_runnable();
            self.publish_times();
            self.counters.stopped = match leave {
                Leave::Stop if self.ended_vm => Stopped::Ending,
                Leave::Stop => self.fd.get_regs().map_or(Stopped::Ending, |regs| Stopped::Running(regs.rip)),
                Leave::Blocked => Stopped::Blocked,
                Leave::Down => Stopped::Offline,
            };
            match leave {
                Leave::Down => {
                    self.vm.publish_state(self.id, VcpuState::Offline);
                    let mut control = self.control().lock();
                    control.phase = Phase::Offline;
                    control.kick_pending = false;
                }
                Leave::Stop | Leave::Blocked => break,
            }
        }
        self.control().kicker.withdraw();
        self.counters.times = self.times();
    }

    /// RUN, RDY, CSTP and WAIT so far: co-stopped time is ready time the dispatcher knows
    /// was spent held back for siblings.
    fn times(&self) -> VcpuTimes {
        let mut times = self.accounting.times;
        times.costop_ns = self.vm.dispatcher.costop_ns(self.seat).min(times.ready_ns);
        times.ready_ns -= times.costop_ns;
        times
    }

    fn publish_times(&self) {
        self.vm.publish_times(self.id, &self.times());
    }

    /// Waits at the gate (published as preempted) until the dispatcher grants a pCPU, through
    /// `wait` (wake, yield, or giving back a revoked pCPU).
    fn wait_for_pcpu(&self, wait: impl FnOnce(&Dispatcher, VcpuId) -> Result<(), VmStopped>) -> Result<(), VmStopped> {
        self.vm.publish_state(self.id, VcpuState::Preempted);
        let granted = wait(&self.vm.dispatcher, self.seat);
        self.vm.publish_state(self.id, VcpuState::Running);
        granted
    }

    /// Parks while offline; returns the start request, or None when the VM stops.
    fn wait_for_start(&self) -> Option<Start> {
        let control = self.control();
        let mut guard = control.lock();
        loop {
            if guard.stop {
                return None;
            }
            if let Some(start) = guard.start.take() {
                guard.phase = Phase::Running;
                return Some(start);
            }
            guard = control.wake.wait(guard).expect("VCPU control lock");
        }
    }

    /// Registers per the entry convention in `pv_abi::boot`.
    fn load_start_state(&mut self, start: Start) -> Result<(), kvm_ioctls::Error> {
        let (trap_table, generation) = self.vm.trap_table();
        let mut sregs = self.fd.get_sregs()?;
        x86::setup_sregs(&mut sregs, self.id, vcpu_info_addr(self.id), trap_table);
        self.fd.set_sregs(&sregs)?;
        self.trap_table_generation = generation;
        let regs = kvm_regs {
            rip: start.entry,
            rsp: start.stack_top - 8,
            rdi: pv_abi::layout::BOOT_INFO,
            rsi: u64::from(self.id),
            rdx: start.arg,
            rflags: x86::RFLAGS,
            ..Default::default()
        };
        self.fd.set_regs(&regs)?;
        self.fd.set_fpu(&kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() })
    }

    fn measure_tsc_offset(&self) -> i64 {
        let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry { index: MSR_IA32_TSC, ..Default::default() }]) else {
            return 0;
        };
        let host = host_tsc();
        match self.fd.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice()[0].data.wrapping_sub(host) as i64,
            _ => 0,
        }
    }

    fn run_loop(&mut self) -> Leave {
        loop {
            if self.vm.stopping() {
                return Leave::Stop;
            }
            if self.vm.dispatcher.revoked(self.seat) && self.wait_for_pcpu(Dispatcher::preempted).is_err() {
                return Leave::Stop;
            }
            if self.vm.trap_table_generation() != self.trap_table_generation
                && let Err(error) = self.reload_trap_table()
            {
                self.fault(format!("cannot load the trap table: {error}"));
                return Leave::Stop;
            }
            let action = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    let call = Hypercall::from_port(port);
                    match call {
                        Some(call) => self.counters.hypercalls[call as usize] += 1,
                        None => self.counters.other += 1,
                    }
                    hypercall::handle(&self.vm, self.id, port, call, data)
                }
                Ok(VcpuExit::IoIn(_, data)) => {
                    // No device reads: an unclaimed port reads as all ones, as on hardware.
                    self.counters.other += 1;
                    data.fill(0xff);
                    Action::Continue
                }
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.fd.get_regs().map_or(0, |r| r.rip);
                    Action::Fail(format!(
                        "triple fault near rip {rip:#x} (an exception with no usable trap table or stack)"
                    ))
                }
                Ok(VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _)) => {
                    Action::Fail(format!("access to {addr:#x}, which is not guest memory"))
                }
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    Action::Fail(format!("KVM could not enter the guest (reason {reason:#x})"))
                }
                Ok(VcpuExit::InternalError) => Action::Fail("KVM internal error (emulation failure)".to_owned()),
                Ok(other) => Action::Fail(format!("unexpected exit {other:?}")),
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                    self.counters.other += 1;
                    self.fd.set_kvm_immediate_exit(0);
                    Action::Continue
                }
                Err(error) => Action::Fail(format!("KVM_RUN failed: {error}")),
            };
            match action {
                Action::Continue => {}
                Action::Block { deadline_tsc, ret_at } => match self.block(deadline_tsc) {
                    // A kick was pending: the block returns at once, on the same pCPU.
                    None => self.vm.write_ret(ret_at, BLOCK_KICKED),
                    Some(Ok(ret)) => self.vm.write_ret(ret_at, ret),
                    Some(Err(VmStopped)) => return Leave::Blocked,
                },
                Action::Yield { to } => {
                    let to = to.map(|id| VcpuId(self.vm.first_vcpu + id));
                    if self.wait_for_pcpu(|dispatcher, vcpu| dispatcher.yield_to(vcpu, to)).is_err() {
                        return Leave::Stop;
                    }
                }
                Action::Down => return Leave::Down,
                Action::Fault(frame) => {
                    let what = self.describe_fault(&frame);
                    self.fault(what);
                    return Leave::Stop;
                }
                Action::Fail(what) => {
                    self.fault(what);
                    return Leave::Stop;
                }
                Action::Stop => {
                    self.ended_vm = true;
                    return Leave::Stop;
                }
            }
        }
    }

    fn reload_trap_table(&mut self) -> Result<(), kvm_ioctls::Error> {
        let (trap_table, generation) = self.vm.trap_table();
        let mut sregs = self.fd.get_sregs()?;
        let (base, limit) = trap_table.unwrap_or((0, 0));
        sregs.idt.base = base;
        sregs.idt.limit = limit;
        self.fd.set_sregs(&sregs)?;
        self.trap_table_generation = generation;
        Ok(())
    }

    /// Blocks until kicked or the deadline passes, giving the pCPU back meanwhile, and returns
    /// the block's `ret` once the VCPU holds a pCPU again; None if a pending kick made it
    /// return at once (the VCPU then keeps its pCPU).
    fn block(&mut self, deadline_tsc: u64) -> Option<Result<i64, VmStopped>> {
        let deadline = (deadline_tsc != NO_DEADLINE).then(|| self.host_instant(deadline_tsc));
        {
            let mut guard = self.control().lock();
            if std::mem::take(&mut guard.kick_pending) {
                return None;
            }
            guard.phase = Phase::Blocked;
            self.vm.publish_state(self.id, VcpuState::Blocked);
            self.vm.dispatcher.block(self.seat);
        }
        self.accounting.not_runnable();
        let blocked = Instant::now();
        // Woken by a kick, it shows as preempted until it runs (the kicker says so); woken by
        // its deadline, as blocked.
        let woken = self.vm.dispatcher.sleep_blocked(self.seat, deadline);
        {
            let mut guard = self.control().lock();
            guard.phase = Phase::Running;
            self.vm.publish_state(self.id, VcpuState::Running);
        }
        let at = woken.map_or_else(|_| Instant::now(), |woken| woken.at);
        self.accounting.waited(blocked, at);
        self.accounting.runnable_from(at);
        self.publish_times();
        Some(woken.map(|woken| if woken.kicked { BLOCK_KICKED } else { BLOCK_TIMED_OUT }))
    }

    /// The host instant at which the guest's TSC reaches `guest_tsc`.
    fn host_instant(&self, guest_tsc: u64) -> Instant {
        let now = Instant::now();
        let guest_now = host_tsc().wrapping_add(self.tsc_offset as u64);
        let ticks = guest_tsc.saturating_sub(guest_now);
        let ns = u128::from(ticks) * 1_000_000 / u128::from(self.vm.tsc_khz.max(1));
        // Far deadlines are capped: a day is as good as never for a run with a timeout.
        now + Duration::from_nanos(ns.min(86_400 * 1_000_000_000) as u64)
    }

    fn describe_fault(&self, frame: &FaultFrame) -> String {
        let mut what = format!("{} at rip {:#x}", exception_name(frame.vector), frame.rip);
        if pv_abi::hypercall::has_error_code(frame.vector) {
            what += &format!(", error code {:#x}", frame.error_code);
        }
        if frame.vector == 14
            && let Ok(sregs) = self.fd.get_sregs()
        {
            what += &format!(", address {:#x}", sregs.cr2);
        }
        what
    }

    fn fault(&mut self, what: String) {
        self.ended_vm = true;
        self.vm.finish(Outcome::Faulted { vcpu: self.id, what });
    }
}

fn host_tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}
