//! A VM: KVM VM and memory, the loaded guest, its boot structures, and one host thread per
//! VCPU. [`Vm::new`] builds it; [`Vm::run`] runs it to an [`Outcome`].

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use pv_abi::boot::{BOOT_MAGIC, BootInfo};
use pv_abi::hypercall::HcError;
use pv_abi::shared::{SharedPage, VcpuState};
use sched::{Params, PolicyKind, Topology, VcpuId, VmSpec};
use tandem_core::guest::VmConfig;
use tandem_core::host::host_cpus;
use tandem_core::metrics::VcpuTimes;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::console::Console;
use crate::dispatch::{Dispatcher, Guest};
use crate::image;
use crate::vcpu::{self, Start, VcpuControl, VcpuStats};
use crate::x86;
use pv_abi::layout;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called exit with this code.
    Exited(i64),
    /// The guest panicked.
    Panicked { vcpu: u32, message: String },
    /// A VCPU faulted, or made a hypercall the monitor could not answer.
    Faulted { vcpu: u32, what: String },
    /// The guest ran past its timeout.
    TimedOut(Duration),
}

/// Process status of a guest panic.
pub const STATUS_PANIC: u8 = 101;
/// Process status of a guest fault.
pub const STATUS_FAULT: u8 = 102;
/// Process status of a timeout (as timeout(1)).
pub const STATUS_TIMEOUT: u8 = 124;

impl Outcome {
    /// The process status `tandem run` exits with: the guest's code if it is in 0..=255
    /// (else 1), or one of the `STATUS_*` values.
    pub fn status(&self) -> u8 {
        match self {
            Outcome::Exited(code) => u8::try_from(*code).unwrap_or(1),
            Outcome::Panicked { .. } => STATUS_PANIC,
            Outcome::Faulted { .. } => STATUS_FAULT,
            Outcome::TimedOut(_) => STATUS_TIMEOUT,
        }
    }

    /// One line for the user.
    pub fn describe(&self, vm: &str) -> String {
        match self {
            Outcome::Exited(code) => format!("VM {vm} exited with code {code}"),
            Outcome::Panicked { vcpu, message } => format!("VM {vm}: guest panicked on VCPU {vcpu}: {message}"),
            Outcome::Faulted { vcpu, what } => format!("VM {vm}: VCPU {vcpu} faulted: {what}"),
            Outcome::TimedOut(after) => format!("VM {vm} timed out after {:.1} s and was stopped", after.as_secs_f64()),
        }
    }
}

/// Everything a finished run produced.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    /// Result records the guest reported, in order.
    pub reports: Vec<String>,
    /// Exits, times and final state of each VCPU.
    pub vcpus: Vec<VcpuStats>,
    /// From the start of VCPU 0 to the outcome.
    pub elapsed: Duration,
}

/// The state VCPU threads share.
#[derive(Debug)]
pub(crate) struct VmShared {
    pub name: String,
    memory: GuestMemoryMmap,
    pub mem_size: u64,
    pub nr_vcpus: u32,
    pub vcpus: Vec<VcpuControl>,
    pub console: Console,
    pub tsc_khz: u64,
    reports: Mutex<Vec<String>>,
    /// The guest's IDT (base, limit) and a generation that VCPU threads compare with theirs.
    trap_table: Mutex<Option<(u64, u16)>>,
    trap_table_generation: AtomicU64,
    outcome: Mutex<Option<Outcome>>,
    finished: Condvar,
    stopping: AtomicBool,
    pub dispatcher: Arc<Dispatcher>,
    /// The dispatcher's id of this VM's VCPU 0 (the others follow).
    pub first_vcpu: u32,
}

/// Where a VM's VCPUs are scheduled: a dispatcher, its number of the VM, and its id of the
/// VM's VCPU 0.
#[derive(Clone)]
pub struct Seat {
    pub dispatcher: Arc<Dispatcher>,
    pub vm: usize,
    pub first_vcpu: u32,
}

impl Seat {
    /// A dispatcher of its own, under which Linux schedules the VM's VCPU threads on every
    /// host CPU (the `host` policy), as for a single `tandem run`.
    pub fn alone(vcpus: u32) -> anyhow::Result<Seat> {
        let topology = Topology::new(host_cpus() as u32, vec![VmSpec { vcpus, weight: 256, cap: None }]);
        let policy = PolicyKind::Host.build(&Params::default(), &topology);
        let dispatcher = Dispatcher::start(policy, (0..host_cpus()).collect(), &topology)
            .context("cannot start the dispatcher's timer thread")?;
        Ok(Seat { dispatcher, vm: 0, first_vcpu: 0 })
    }
}

impl VmShared {
    /// The shared state of a VM before any VCPU runs; `memory` holds `config.mem_mib` MiB
    /// from guest address 0.
    pub fn new(config: &VmConfig, memory: GuestMemoryMmap, tsc_khz: u64, seat: Seat) -> VmShared {
        let vcpus: Vec<VcpuControl> = (0..config.vcpus).map(|_| VcpuControl::default()).collect();
        for (id, control) in vcpus.iter().enumerate() {
            seat.dispatcher.register(VcpuId(seat.first_vcpu + id as u32), Arc::clone(&control.kicker));
        }
        VmShared {
            name: config.name.clone(),
            mem_size: config.mem_mib << 20,
            memory,
            nr_vcpus: config.vcpus,
            vcpus,
            console: Console::new(&config.name, config.vcpus, config.echo_console),
            tsc_khz,
            reports: Mutex::default(),
            trap_table: Mutex::default(),
            trap_table_generation: AtomicU64::new(0),
            outcome: Mutex::default(),
            finished: Condvar::new(),
            stopping: AtomicBool::new(false),
            dispatcher: seat.dispatcher,
            first_vcpu: seat.first_vcpu,
        }
    }

    /// Whether `len` bytes at guest address `addr` lie wholly in guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr.checked_add(len).is_some_and(|end| end <= self.mem_size)
    }

    /// Reads a `T` at `addr`; `BadAddress` unless it lies wholly in guest memory.
    pub fn read_obj<T: FromBytes + KnownLayout + Immutable>(&self, addr: u64) -> Result<T, HcError> {
        let mut buf = vec![0; size_of::<T>()];
        if !self.contains(addr, buf.len() as u64) {
            return Err(HcError::BadAddress);
        }
        self.memory.read_slice(&mut buf, GuestAddress(addr)).map_err(|_| HcError::BadAddress)?;
        T::read_from_bytes(&buf).map_err(|_| HcError::Invalid)
    }

    /// Copies a guest buffer of at most `max` bytes.
    pub fn read_buffer(&self, addr: u64, len: u64, max: u64) -> Result<Vec<u8>, HcError> {
        if len > max {
            return Err(HcError::BadLength);
        }
        if !self.contains(addr, len) {
            return Err(HcError::BadAddress);
        }
        let mut buf = vec![0; len as usize];
        self.memory.read_slice(&mut buf, GuestAddress(addr)).map_err(|_| HcError::BadAddress)?;
        Ok(buf)
    }

    /// Writes a hypercall's `ret` at the start of its argument block.
    pub fn write_ret(&self, block: u64, ret: i64) {
        // The block's first 8 bytes were checked to be in memory before the call was decoded.
        let _ = self.memory.write_slice(&ret.to_le_bytes(), GuestAddress(block));
    }

    pub(crate) fn write_bytes(&self, addr: u64, bytes: &[u8]) -> anyhow::Result<()> {
        self.memory.write_slice(bytes, GuestAddress(addr)).with_context(|| format!("writing guest memory at {addr:#x}"))
    }

    pub fn shared_page(&self) -> &SharedPage {
        let ptr =
            self.memory.get_host_address(GuestAddress(layout::SHARED_PAGE)).expect("the shared page is in memory");
        // SAFETY: the shared page lies in guest memory, which lives as long as `self`; it is
        // page aligned and made only of atomics and plain integers, valid for any bytes.
        unsafe { &*ptr.cast::<SharedPage>() }
    }

    /// Publishes `vcpu`'s times in the shared page.
    pub fn publish_times(&self, vcpu: u32, times: &VcpuTimes) {
        let slot = &self.shared_page().vcpus[vcpu as usize];
        slot.run_ns.store(times.run_ns, Ordering::Relaxed);
        slot.ready_ns.store(times.ready_ns, Ordering::Relaxed);
        slot.costop_ns.store(times.costop_ns, Ordering::Relaxed);
        slot.wait_ns.store(times.wait_ns, Ordering::Relaxed);
    }

    /// Publishes `vcpu`'s state in the shared page.
    pub fn publish_state(&self, vcpu: u32, state: VcpuState) {
        self.shared_page().vcpus[vcpu as usize].state.store(state as u32, Ordering::Release);
    }

    /// Kicks VCPU `vcpu`: wakes it if it is blocked (it is then runnable, preempted until the
    /// dispatcher gives it a pCPU), or makes its next block return at once.
    pub fn kick(&self, vcpu: u32) {
        self.vcpus[vcpu as usize].kick(|| {
            if self.dispatcher.wake_blocked(VcpuId(self.first_vcpu + vcpu)) {
                self.publish_state(vcpu, VcpuState::Preempted);
            }
        });
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
        self.stopping.store(true, Ordering::SeqCst);
        self.finished.notify_all();
        for vcpu in &self.vcpus {
            vcpu.stop();
        }
        self.dispatcher.stop_vcpus((self.first_vcpu..self.first_vcpu + self.nr_vcpus).map(VcpuId));
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn wait_outcome(&self, timeout: Duration) -> Option<Outcome> {
        let slot = self.outcome.lock().expect("outcome lock");
        let (slot, _) = self.finished.wait_timeout_while(slot, timeout, |slot| slot.is_none()).expect("outcome lock");
        slot.clone()
    }
}

/// The guest as a policy that grants VCPUs sees it, through the shared page.
impl Guest for VmShared {
    fn demand(&self) -> u32 {
        // Guest-written words: any values, summed without overflow.
        let slots = &self.shared_page().vcpus[..self.nr_vcpus as usize];
        slots.iter().fold(0u32, |sum, slot| sum.saturating_add(slot.demand.load(Ordering::Relaxed)))
    }

    fn grant(&self, vcpus: u32) {
        let page = self.shared_page();
        page.grant_vcpus.store(vcpus, Ordering::Release);
        page.grant_seq.fetch_add(1, Ordering::AcqRel);
        // Blocked VCPUs would see it only at their next timer.
        (0..self.nr_vcpus).for_each(|id| self.kick(id));
    }
}

/// A VM ready to run.
#[derive(Debug)]
pub struct Vm {
    shared: Arc<VmShared>,
    vcpu_fds: Vec<VcpuFd>,
    entry: u64,
    timeout: Duration,
    // Kept open for the VM's lifetime.
    _vm_fd: VmFd,
}

impl Vm {
    /// Creates the KVM VM, loads `image` and writes the boot structures; its VCPUs will be
    /// scheduled by `seat`'s dispatcher.
    pub fn new(kvm: &Kvm, config: &VmConfig, image: &[u8], seat: Seat) -> anyhow::Result<Vm> {
        config.check()?;
        let mem_size = config.mem_mib << 20;

        let vm_fd = kvm.create_vm().context("KVM_CREATE_VM failed")?;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .context("cannot allocate guest memory")?;
        let host = memory.get_host_address(GuestAddress(0)).context("guest memory has no host mapping")?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is memory that `memory` owns; it stays mapped while any VCPU can
        // run, since `Vm::run` joins every VCPU thread before the memory is dropped.
        unsafe { vm_fd.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION failed")?;
        vm_fd.set_tss_address(layout::TSS_ADDR).context("KVM_SET_TSS_ADDR failed")?;

        // SAFETY: the mapping is `mem_size` bytes long, freshly allocated, and nothing else
        // (no VCPU runs yet) accesses it while this slice lives.
        let bytes = unsafe { std::slice::from_raw_parts_mut(host.cast::<MaybeUninit<u8>>(), mem_size as usize) };
        let placement = image::load(image, bytes)?;

        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID failed")?;
        let mut vcpu_fds = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = vm_fd.create_vcpu(u64::from(id)).with_context(|| format!("KVM_CREATE_VCPU {id} failed"))?;
            fd.set_cpuid2(&cpuid_for(&supported, id)).context("KVM_SET_CPUID2 failed")?;
            vcpu_fds.push(fd);
        }
        let tsc_khz = u64::from(vcpu_fds[0].get_tsc_khz().context("KVM_GET_TSC_KHZ failed")?);

        let vm_index = seat.vm;
        let shared = Arc::new(VmShared::new(config, memory, tsc_khz, seat));
        write_boot_structures(&shared, config, placement.end, tsc_khz)?;
        let guest: Weak<dyn Guest> = Arc::downgrade(&shared) as Weak<VmShared>;
        shared.dispatcher.attach(vm_index, guest);
        Ok(Vm { shared, vcpu_fds, entry: placement.entry, timeout: config.timeout, _vm_fd: vm_fd })
    }

    /// Starts VCPU 0 at the entry and runs until the guest exits, fails, or times out.
    pub fn run(self) -> anyhow::Result<RunReport> {
        let Vm { shared, vcpu_fds, entry, timeout, _vm_fd } = self;
        let started = Instant::now();
        shared.vcpus[0]
            .request_start(Start { entry, stack_top: shared.mem_size, arg: 0 })
            .expect("VCPU 0 is offline before the start");
        let mut threads = Vec::with_capacity(vcpu_fds.len());
        for (id, fd) in vcpu_fds.into_iter().enumerate() {
            match vcpu::spawn(Arc::clone(&shared), id as u32, fd) {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    // Stop the VCPUs already started before giving up.
                    shared.vcpus.iter().for_each(VcpuControl::stop);
                    threads.into_iter().for_each(|thread| _ = thread.join());
                    return Err(error).context(format!("cannot start the thread of VCPU {id}"));
                }
            }
        }
        let outcome = shared.wait_outcome(timeout).unwrap_or_else(|| {
            shared.finish(Outcome::TimedOut(timeout));
            shared.wait_outcome(Duration::ZERO).expect("finish records an outcome")
        });
        let elapsed = started.elapsed();
        let vcpus = threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
        shared.console.flush();
        let reports = std::mem::take(&mut *shared.reports.lock().expect("reports lock"));
        Ok(RunReport { outcome, reports, vcpus, elapsed })
    }
}

/// Boots `config` from `image` and runs it alone to its outcome, its VCPU threads scheduled
/// by Linux on every host CPU (the `host` policy), as `tandem run` does.
pub fn run_alone(kvm: &Kvm, config: &VmConfig, image: &[u8]) -> anyhow::Result<RunReport> {
    let seat = Seat::alone(config.vcpus)?;
    let dispatcher = Arc::clone(&seat.dispatcher);
    let report = Vm::new(kvm, config, image, seat).and_then(Vm::run);
    dispatcher.finish();
    report
}

/// The supported CPUID with this VCPU's APIC id in leaf 1.
fn cpuid_for(supported: &CpuId, id: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 {
            entry.ebx = (entry.ebx & 0x00ff_ffff) | (id << 24);
        }
    }
    cpuid
}

/// Boot info, shared page, page tables, and each VCPU's GDT and TSS.
fn write_boot_structures(vm: &VmShared, config: &VmConfig, image_end: u64, tsc_khz: u64) -> anyhow::Result<()> {
    let mut info = BootInfo::new_zeroed();
    info.magic = BOOT_MAGIC;
    info.abi_version = pv_abi::ABI_VERSION;
    info.nr_vcpus = config.vcpus;
    info.mem_size = vm.mem_size;
    info.heap_start = image_end.next_multiple_of(layout::PAGE_SIZE);
    info.heap_end = vm.mem_size - layout::BOOT_STACK_SIZE;
    info.tsc_khz = tsc_khz;
    info.shared_page = layout::SHARED_PAGE;
    info.cmdline_len = config.cmdline.len() as u32;
    info.cmdline[..config.cmdline.len()].copy_from_slice(config.cmdline.as_bytes());
    for (id, slot) in info.vcpu_info.iter_mut().enumerate() {
        slot.id = id as u32;
    }
    vm.write_bytes(layout::BOOT_INFO, info.as_bytes())?;

    let page = vm.shared_page();
    page.grant_vcpus.store(config.vcpus, Ordering::Release);

    for table in x86::page_tables(vm.mem_size) {
        vm.write_bytes(table.addr, table.entries.as_bytes())?;
    }
    for id in 0..config.vcpus {
        let area = layout::vcpu_area(id);
        vm.write_bytes(area + layout::GDT_OFFSET, x86::gdt(area + layout::TSS_OFFSET).as_bytes())?;
        vm.write_bytes(area + layout::TSS_OFFSET, &x86::tss(layout::trap_stack_top(id)))?;
    }
    Ok(())
}

/// Address of `BootInfo::vcpu_info[id]`, where GS base points.
pub(crate) fn vcpu_info_addr(id: u32) -> u64 {
    layout::BOOT_INFO
        + std::mem::offset_of!(BootInfo, vcpu_info) as u64
        + u64::from(id) * size_of::<pv_abi::boot::VcpuInfo>() as u64
}
