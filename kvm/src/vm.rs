//! A VM: KVM VM and memory, the loaded guest, its boot structures, one host thread per VCPU,
//! and its NIC's backend thread if it has a NIC. [`Vm::new`] builds it; [`Vm::run`] runs it
//! to an [`Outcome`].

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use pv_abi::boot::{BOOT_MAGIC, BootInfo};
use pv_abi::layout;
use tandem_core::guest::VmConfig;
use zerocopy::{FromZeros, IntoBytes};

use crate::dispatch::Seat;
use crate::image;
use crate::kick::Kicker;
use crate::memory::{GuestMemory, GuestRead};
use crate::net::{self, NetDevice, NicStats, VmLink};
use crate::running;
use crate::stop;
use crate::vcpu::{self, VcpuStats};
use crate::vm_shared::VmShared;
use crate::x86::{self, Start};

pub use crate::outcome::{Outcome, STATUS_FAULT, STATUS_PANIC, STATUS_TIMEOUT};

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
    /// What the NIC did, if the VM has one.
    pub net: Option<NicStats>,
}

/// A VM ready to run.
#[derive(Debug)]
pub struct Vm {
    shared: Arc<VmShared>,
    vcpu_fds: Vec<VcpuFd>,
    kickers: Vec<Arc<Kicker>>,
    entry: u64,
    timeout: Duration,
    /// The NIC and its backend, opened, to run with the VM.
    net: Option<NetDevice>,
    // Kept open for the VM's lifetime.
    _vm_fd: VmFd,
}

impl Vm {
    /// Creates the KVM VM, loads `image`, writes the boot structures and opens the NIC's
    /// backend (binding its host addresses, so that one in use is an error here); its VCPUs
    /// will be scheduled by `seat`'s dispatcher.
    pub fn new(kvm: &Kvm, config: &VmConfig, image: &[u8], seat: Seat) -> anyhow::Result<Vm> {
        config.check()?;
        let mem_size = config.mem_mib << 20;

        let vm_fd = kvm.create_vm().context("KVM_CREATE_VM failed")?;
        let memory = GuestMemory::new(mem_size).context("cannot allocate guest memory")?;
        let net = config.net.as_ref().map(|net| NetDevice::open(net, &memory, config.vcpus)).transpose()?;
        // The heap ends below the NIC area, or else below VCPU 0's boot stack.
        let heap_end = if net.is_some() { net::area_addr(mem_size) } else { mem_size - layout::BOOT_STACK_SIZE };
        let host = memory.host_base();
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is memory that `memory` maps; it stays mapped while any VCPU can
        // run, since the VM's shared state holds it until `Vm::run` has joined every VCPU
        // thread.
        unsafe { vm_fd.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION failed")?;
        vm_fd.set_tss_address(layout::TSS_ADDR).context("KVM_SET_TSS_ADDR failed")?;

        // SAFETY: the mapping is `mem_size` bytes long, freshly allocated, and nothing else
        // (no VCPU runs yet) accesses it while this slice lives.
        let bytes = unsafe { std::slice::from_raw_parts_mut(host.cast::<MaybeUninit<u8>>(), mem_size as usize) };
        let placement = image::load(image, bytes, heap_end)?;

        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID failed")?;
        let mut vcpu_fds = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = vm_fd.create_vcpu(u64::from(id)).with_context(|| format!("KVM_CREATE_VCPU {id} failed"))?;
            fd.set_cpuid2(&cpuid_for(&supported, id)).context("KVM_SET_CPUID2 failed")?;
            vcpu_fds.push(fd);
        }
        let tsc_khz = u64::from(vcpu_fds[0].get_tsc_khz().context("KVM_GET_TSC_KHZ failed")?);

        write_boot_structures(&memory, config, placement.end..heap_end, tsc_khz)?;
        let kickers: Vec<Arc<Kicker>> = (0..config.vcpus).map(|_| Arc::default()).collect();
        seat.dispatcher.attach(seat.vm, memory.shared_page_ref(), kickers.clone());
        let shared = Arc::new(VmShared::new(config, memory, tsc_khz, seat, net.as_ref().map(NetDevice::handle)));
        Ok(Vm { shared, vcpu_fds, kickers, entry: placement.entry, timeout: config.timeout, net, _vm_fd: vm_fd })
    }

    /// The host addresses the NIC's forwards listen on (none without user-mode networking).
    pub fn forward_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.net.as_ref().map(NetDevice::forward_addrs).unwrap_or_default()
    }

    /// Starts the NIC's backend and VCPU 0 at the entry and runs until the guest exits,
    /// fails, or times out; the backend is stopped before this returns, on every path.
    pub fn run(self) -> anyhow::Result<RunReport> {
        let Vm { shared, vcpu_fds, kickers, entry, timeout, net, _vm_fd } = self;
        let link: Arc<dyn VmLink> = shared.clone();
        let backend = match net.map(|device| device.start(&shared.name, link)).transpose() {
            Ok(backend) => backend,
            Err(error) => {
                shared.seat.dispatcher.detach(shared.seat.vm);
                return Err(error).context("cannot start the NIC's backend thread");
            }
        };
        let started = Instant::now();
        running::add(&shared);
        stop::unless_interrupted(&shared);
        let start = Start { entry, stack_top: shared.memory.size(), arg: 0 };
        assert!(shared.start_vcpu(0, start), "VCPU 0 is offline before the start");
        let mut threads = Vec::with_capacity(vcpu_fds.len());
        for ((id, fd), kicker) in vcpu_fds.into_iter().enumerate().zip(kickers) {
            match vcpu::spawn(Arc::clone(&shared), id as u32, fd, kicker) {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    // Stop the backend and the VCPUs already started before giving up.
                    drop(backend);
                    shared.stop();
                    running::remove(&shared);
                    threads.into_iter().for_each(|thread| _ = thread.join());
                    shared.seat.dispatcher.detach(shared.seat.vm);
                    return Err(error).context(format!("cannot start the thread of VCPU {id}"));
                }
            }
        }
        let outcome = shared.wait_outcome(timeout).unwrap_or_else(|| {
            shared.finish(Outcome::TimedOut(timeout));
            shared.wait_outcome(Duration::ZERO).expect("finish records an outcome")
        });
        let elapsed = started.elapsed();
        running::remove(&shared);
        let net = backend.map(|backend| backend.stop());
        let vcpus = threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
        shared.seat.dispatcher.detach(shared.seat.vm);
        shared.console.flush();
        Ok(RunReport { outcome, reports: shared.take_reports(), vcpus, elapsed, net })
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

/// Boot info (with the heap from the image's end to `heap.end`, and the NIC's place if
/// the VM has one), shared page, page tables, and each VCPU's GDT and TSS.
fn write_boot_structures(
    memory: &GuestMemory,
    config: &VmConfig,
    heap: Range<u64>,
    tsc_khz: u64,
) -> anyhow::Result<()> {
    let mem_size = config.mem_mib << 20;
    let mut info = BootInfo::new_zeroed();
    info.magic = BOOT_MAGIC;
    info.abi_version = pv_abi::ABI_VERSION;
    info.nr_vcpus = config.vcpus;
    info.mem_size = mem_size;
    info.heap_start = heap.start.next_multiple_of(layout::PAGE_SIZE);
    info.heap_end = heap.end;
    info.tsc_khz = tsc_khz;
    info.shared_page = layout::SHARED_PAGE;
    info.cmdline_len = config.cmdline.len() as u32;
    info.cmdline[..config.cmdline.len()].copy_from_slice(config.cmdline.as_bytes());
    for (id, slot) in info.vcpu_info.iter_mut().enumerate() {
        slot.id = id as u32;
    }
    if let Some(net) = &config.net {
        // The area itself is fresh memory: all indices and flags zero.
        info.net = net::net_info(&net.guest, net::area_addr(mem_size));
    }
    memory.write(layout::BOOT_INFO, info.as_bytes())?;

    memory.shared_page().grant_vcpus.store(config.vcpus, Ordering::Release);

    for table in x86::page_tables(mem_size) {
        memory.write(table.addr, table.entries.as_bytes())?;
    }
    for id in 0..config.vcpus {
        let area = layout::vcpu_area(id);
        memory.write(area + layout::GDT_OFFSET, x86::gdt(area + layout::TSS_OFFSET).as_bytes())?;
        memory.write(area + layout::TSS_OFFSET, &x86::tss(layout::trap_stack_top(id)))?;
    }
    Ok(())
}
