//! VCPU threads. Each VCPU is a host thread that owns its `VcpuFd`: it runs the guest, hands
//! each hypercall to the decoder and the executor and writes its answer, and reports to the
//! dispatcher, which owns the VCPU's state (offline, blocked, waiting for or holding a pCPU)
//! and parks the thread while the VCPU is offline, blocked or waiting. KVM cannot destroy
//! VCPUs, so all are created at boot and `vcpu_down` only parks the thread.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry};
use kvm_ioctls::{VcpuExit, VcpuFd};
use pv_abi::hypercall::{BLOCK_KICKED, BLOCK_TIMED_OUT, Hypercall, NO_DEADLINE, encode};
use sched::VcpuId;
use tandem_core::metrics::VcpuTimes;

use crate::accounting::{VcpuCounters, split_costop};
use crate::dispatch::{Dispatcher, VmStopped};
use crate::hypercall::{Caller, Leave, decode, execute};
use crate::kick::Kicker;
use crate::outcome::{Outcome, VcpuFault};
use crate::vm_shared::VmShared;
use crate::x86::{self, Start};

const MSR_IA32_TSC: u32 = 0x10;

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

/// Starts the thread of VCPU `id`, kicked out of KVM_RUN through `kicker`.
pub(crate) fn spawn(
    vm: Arc<VmShared>,
    id: u32,
    fd: VcpuFd,
    kicker: Arc<Kicker>,
) -> std::io::Result<JoinHandle<VcpuStats>> {
    std::thread::Builder::new().name(format!("{}-vcpu{id}", vm.name)).spawn(move || {
        let mut thread = VcpuThread {
            seat: vm.vcpu(id),
            vm,
            id,
            fd,
            kicker,
            stopped: Stopped::default(),
            tsc_offset: 0,
            trap_table_generation: 0,
        };
        thread.main();
        thread.stats()
    })
}

struct VcpuThread {
    vm: Arc<VmShared>,
    id: u32,
    /// This VCPU's id in the dispatcher.
    seat: VcpuId,
    fd: VcpuFd,
    kicker: Arc<Kicker>,
    /// Where the VCPU was when it last went offline.
    stopped: Stopped,
    /// Guest TSC minus host TSC.
    tsc_offset: i64,
    /// The trap table generation loaded into this VCPU.
    trap_table_generation: u64,
}

impl VcpuThread {
    fn dispatcher(&self) -> &Dispatcher {
        &self.vm.seat.dispatcher
    }

    /// Its time and exits, as counted so far.
    fn counters(&self) -> &VcpuCounters {
        &self.vm.counters[self.id as usize]
    }

    fn main(&mut self) {
        self.kicker.publish(&mut self.fd);
        self.counters().time().thread_started();
        self.dispatcher().register_thread(self.seat);
        self.tsc_offset = self.measure_tsc_offset();
        while let Ok(start) = self.dispatcher().wait_for_start(self.seat) {
            let leave = match self.load_start_state(start) {
                Err(error) => self.fault(VcpuFault::Setup(error)),
                Ok(()) => {
                    self.counters().time().runnable(Instant::now());
                    match self.dispatcher().started(self.seat) {
                        Ok(()) => self.run_loop(),
                        Err(VmStopped) => Leave::Stopped,
                    }
                }
            };
            self.dispatcher().down(self.seat);
            self.counters().time().not_runnable(false);
            self.publish_times();
            self.stopped = match leave {
                Leave::Ended => Stopped::Ending,
                Leave::Stopped => self.fd.get_regs().map_or(Stopped::Ending, |regs| Stopped::Running(regs.rip)),
                Leave::StoppedBlocked => Stopped::Blocked,
                Leave::Down => Stopped::Offline,
            };
            if leave != Leave::Down {
                break;
            }
        }
        self.kicker.withdraw();
    }

    /// What the VCPU did, once its thread is done.
    fn stats(&self) -> VcpuStats {
        let (hypercalls, other) = self.counters().exits();
        VcpuStats { times: self.times(), hypercalls, other, stopped: self.stopped }
    }

    /// RUN, RDY, CSTP and WAIT so far: co-stopped time is ready time the dispatcher knows
    /// was spent held back for siblings.
    fn times(&self) -> VcpuTimes {
        let mut times = self.counters().time().times();
        (times.ready_ns, times.costop_ns) = split_costop(times.ready_ns, self.dispatcher().costop_ns(self.seat));
        times
    }

    fn publish_times(&self) {
        self.vm.publish_times(self.id, &self.times());
    }

    /// Registers per the entry convention in `pv_abi::boot`.
    fn load_start_state(&mut self, start: Start) -> Result<(), kvm_ioctls::Error> {
        let (trap_table, generation) = self.vm.trap_table();
        let mut sregs = self.fd.get_sregs()?;
        x86::setup_sregs(&mut sregs, self.id, x86::vcpu_info_addr(self.id), trap_table);
        self.fd.set_sregs(&sregs)?;
        self.trap_table_generation = generation;
        self.fd.set_regs(&x86::start_regs(start, self.id))?;
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
                return Leave::Stopped;
            }
            if self.dispatcher().revoked(self.seat) && self.dispatcher().preempted(self.seat).is_err() {
                return Leave::Stopped;
            }
            if self.vm.trap_table_generation() != self.trap_table_generation
                && let Err(error) = self.reload_trap_table()
            {
                return self.fault(VcpuFault::TrapTable(error));
            }
            let decoded = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    // The field, not `counters()`: `data` borrows `self.fd`.
                    self.vm.counters[self.id as usize].exit(Hypercall::from_port(port));
                    decode(&self.vm.memory, self.vm.nr_vcpus, port, data)
                }
                Ok(VcpuExit::IoIn(_, data)) => {
                    // No device reads: an unclaimed port reads as all ones, as on hardware.
                    self.vm.counters[self.id as usize].exit(None);
                    data.fill(0xff);
                    continue;
                }
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.fd.get_regs().map_or(0, |r| r.rip);
                    return self.fault(VcpuFault::TripleFault { rip });
                }
                Ok(VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _)) => {
                    return self.fault(VcpuFault::NotMemory { addr });
                }
                Ok(VcpuExit::FailEntry(reason, _)) => return self.fault(VcpuFault::EntryFailed { reason }),
                Ok(VcpuExit::InternalError) => return self.fault(VcpuFault::Internal),
                Ok(other) => {
                    let exit = format!("{other:?}");
                    return self.fault(VcpuFault::UnexpectedExit(exit));
                }
                Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                    self.counters().exit(None);
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(error) => return self.fault(VcpuFault::Run(error)),
            };
            let request = match decoded {
                Ok(request) => request,
                Err(unanswerable) => return self.fault(unanswerable.into()),
            };
            let ret = match request.call {
                Ok(call) => match execute(self, call) {
                    Ok(ret) => ret,
                    Err(leave) => return leave,
                },
                Err(error) => encode(Err(error)),
            };
            self.vm.memory.write_ret(request.block, ret);
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

    /// The host instant at which the guest's TSC reaches `guest_tsc`.
    fn host_instant(&self, guest_tsc: u64) -> Instant {
        let now = Instant::now();
        let guest_now = host_tsc().wrapping_add(self.tsc_offset as u64);
        let ticks = guest_tsc.saturating_sub(guest_now);
        let ns = u128::from(ticks) * 1_000_000 / u128::from(self.vm.tsc_khz.max(1));
        // Far deadlines are capped: a day is as good as never for a run with a timeout.
        now + Duration::from_nanos(ns.min(86_400 * 1_000_000_000) as u64)
    }

    /// Ends the VM with `fault`.
    fn fault(&self, fault: VcpuFault) -> Leave {
        self.vm.finish(Outcome::Faulted { vcpu: self.id, fault });
        Leave::Ended
    }
}

impl Caller for VcpuThread {
    fn vm(&self) -> &VmShared {
        &self.vm
    }

    fn id(&self) -> u32 {
        self.id
    }

    /// A pending kick makes the block return at once, on the same pCPU. Otherwise the VCPU
    /// is not runnable until woken: its WAIT time runs from here to the wake.
    fn block(&mut self, deadline_tsc: u64) -> Result<i64, VmStopped> {
        let deadline = (deadline_tsc != NO_DEADLINE).then(|| self.host_instant(deadline_tsc));
        if !self.dispatcher().block(self.seat) {
            return Ok(BLOCK_KICKED);
        }
        self.counters().time().not_runnable(true);
        let woken = self.dispatcher().sleep_blocked(self.seat, deadline);
        let at = woken.map_or_else(|_| Instant::now(), |woken| woken.at);
        self.counters().time().runnable(at);
        self.publish_times();
        woken.map(|woken| if woken.kicked { BLOCK_KICKED } else { BLOCK_TIMED_OUT })
    }

    fn yield_to(&mut self, to: Option<u32>) -> Result<(), VmStopped> {
        self.dispatcher().yield_to(self.seat, to.map(|id| self.vm.vcpu(id)))
    }

    fn fault_address(&self) -> Option<u64> {
        self.fd.get_sregs().ok().map(|sregs| sregs.cr2)
    }
}

fn host_tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}
