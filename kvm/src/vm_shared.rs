//! What a VM's VCPU threads share: its memory, console, report records, trap table and
//! outcome, its VCPUs' counters, its seat at the dispatcher, which owns the VCPUs' states, and
//! its NIC's doorbell.
//! It is also what the NIC's backend thread reaches its VM through ([`VmLink`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pv_abi::hypercall::HcError;
use sched::VcpuId;
use tandem_core::guest::VmConfig;
use tandem_core::metrics::VcpuTimes;

use crate::accounting::VcpuCounters;
use crate::console::Console;
use crate::dispatch::Seat;
use crate::memory::GuestMemory;
use crate::net::{NetHandle, VmLink};
use crate::outcome::{NicFault, Outcome};
use crate::x86::Start;

/// The id of the next VM created.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The state VCPU threads share.
#[derive(Debug)]
pub(crate) struct VmShared {
    /// Which it is in the process.
    pub id: u64,
    pub name: String,
    pub memory: GuestMemory,
    pub nr_vcpus: u32,
    pub console: Console,
    pub tsc_khz: u64,
    pub seat: Seat,
    /// When it was created: its VCPUs are offline from then until they start.
    pub created: Instant,
    /// Per VCPU: its time and exits, as its thread counts them.
    pub counters: Box<[VcpuCounters]>,
    /// Wakes the NIC's backend; `None` if the VM has no NIC.
    net: Option<NetHandle>,
    reports: Mutex<Vec<String>>,
    /// The guest's IDT (base, limit) and a generation that VCPU threads compare with theirs.
    trap_table: Mutex<Option<(u64, u16)>>,
    trap_table_generation: AtomicU64,
    outcome: Mutex<Option<Outcome>>,
    finished: Condvar,
    stopping: AtomicBool,
}

impl VmShared {
    /// The shared state of a VM before any VCPU runs; `memory` holds `config.mem_mib` MiB,
    /// `net` reaches its NIC's backend if it has one.
    pub fn new(config: &VmConfig, memory: GuestMemory, tsc_khz: u64, seat: Seat, net: Option<NetHandle>) -> VmShared {
        let created = Instant::now();
        VmShared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: config.name.clone(),
            memory,
            nr_vcpus: config.vcpus,
            console: Console::new(&config.name, config.vcpus, config.echo_console),
            tsc_khz,
            seat,
            created,
            counters: (0..config.vcpus).map(|_| VcpuCounters::new(created)).collect(),
            net,
            reports: Mutex::default(),
            trap_table: Mutex::default(),
            trap_table_generation: AtomicU64::new(0),
            outcome: Mutex::default(),
            finished: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// The dispatcher's id of VCPU `vcpu`.
    pub fn vcpu(&self, vcpu: u32) -> VcpuId {
        self.seat.vcpu(vcpu)
    }

    /// Asks offline VCPU `vcpu` to start; false if it is not offline.
    pub fn start_vcpu(&self, vcpu: u32, start: Start) -> bool {
        self.seat.dispatcher.vcpu_up(self.vcpu(vcpu), start)
    }

    /// Kicks VCPU `vcpu` (see `Dispatcher::kick`).
    pub fn kick(&self, vcpu: u32) {
        self.seat.dispatcher.kick(self.vcpu(vcpu));
    }

    /// Wakes the NIC's backend (the guest's `NetNotify`); `BadState` if the VM has no NIC.
    pub fn notify_net(&self) -> Result<(), HcError> {
        self.net.as_ref().ok_or(HcError::BadState)?.notify();
        Ok(())
    }

    /// Publishes `vcpu`'s times in the shared page.
    pub fn publish_times(&self, vcpu: u32, times: &VcpuTimes) {
        let slot = &self.memory.shared_page().vcpus[vcpu as usize];
        slot.run_ns.store(times.run_ns, Ordering::Relaxed);
        slot.ready_ns.store(times.ready_ns, Ordering::Relaxed);
        slot.costop_ns.store(times.costop_ns, Ordering::Relaxed);
        slot.wait_ns.store(times.wait_ns, Ordering::Relaxed);
    }

    /// Keeps a report record, unless the VM's reports would exceed `REPORTS_TOTAL_MAX`.
    pub fn add_report(&self, record: String) -> Result<(), HcError> {
        let mut reports = self.reports.lock().expect("reports lock");
        let total: usize = reports.iter().map(String::len).sum::<usize>() + record.len();
        if total as u64 > pv_abi::hypercall::REPORTS_TOTAL_MAX {
            return Err(HcError::BadLength);
        }
        reports.push(record);
        Ok(())
    }

    /// The report records so far, in order, taken away.
    pub fn take_reports(&self) -> Vec<String> {
        std::mem::take(&mut *self.reports.lock().expect("reports lock"))
    }

    pub fn set_trap_table(&self, base: u64, limit: u16) {
        *self.trap_table.lock().expect("trap table lock") = Some((base, limit));
        self.trap_table_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The trap table and its generation.
    pub fn trap_table(&self) -> (Option<(u64, u16)>, u64) {
        let table = self.trap_table.lock().expect("trap table lock");
        (*table, self.trap_table_generation.load(Ordering::Acquire))
    }

    pub fn trap_table_generation(&self) -> u64 {
        self.trap_table_generation.load(Ordering::Acquire)
    }

    /// Records how the VM ended (the first outcome wins) and stops every VCPU.
    pub fn finish(&self, outcome: Outcome) {
        {
            let mut slot = self.outcome.lock().expect("outcome lock");
            if slot.is_some() {
                return;
            }
            *slot = Some(outcome);
        }
        self.stop();
        self.finished.notify_all();
    }

    /// Stops every VCPU: each thread leaves whatever it is doing and ends.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.seat.dispatcher.stop_vcpus((0..self.nr_vcpus).map(|vcpu| self.vcpu(vcpu)));
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The outcome, once there is one or `timeout` has passed.
    pub fn wait_outcome(&self, timeout: Duration) -> Option<Outcome> {
        let slot = self.outcome.lock().expect("outcome lock");
        let (slot, _) = self.finished.wait_timeout_while(slot, timeout, |slot| slot.is_none()).expect("outcome lock");
        slot.clone()
    }
}

impl VmLink for VmShared {
    fn kick(&self, vcpu: u32) {
        VmShared::kick(self, vcpu);
    }

    fn fault(&self, fault: NicFault) {
        self.finish(Outcome::NicFaulted(fault));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Ring;

    #[test]
    fn a_nic_fault_ends_the_vm_with_it() {
        let config = VmConfig {
            name: "t".into(),
            vcpus: 1,
            mem_mib: 4,
            cmdline: String::new(),
            timeout: Duration::from_secs(1),
            echo_console: false,
            net: None,
        };
        let memory = GuestMemory::new(4 << 20).unwrap();
        let vm = VmShared::new(&config, memory, 1_000_000, Seat::alone(1).unwrap(), None);
        let fault =
            NicFault::OutsideBuffers { ring: Ring::Rx, slot: 3, addr: 0x1000, len: 2048, area_start: 2, area_end: 4 };
        VmLink::fault(&vm, fault.clone());
        let outcome = vm.wait_outcome(Duration::ZERO).unwrap();
        assert_eq!(outcome, Outcome::NicFaulted(fault));
        assert_eq!(outcome.status(), crate::outcome::STATUS_FAULT);
        assert_eq!(
            outcome.describe("t"),
            "VM t: the guest broke the NIC's rules: the NIC's RX descriptor 3 points at 0x1000 (2048 bytes), \
             outside its buffer area 0x2..0x4"
        );
        assert!(vm.stopping());
    }
}
