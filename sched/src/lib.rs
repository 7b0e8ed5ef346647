//! VCPU scheduling policies as pure state machines.
//!
//! A [`Policy`] takes events (a VCPU woke, blocked, went offline or yielded; time passed) with
//! the time as an argument, and answers with the VCPU each pCPU should run now
//! ([`Policy::assignment`]). There are no threads, clocks or KVM in here: the real-time
//! dispatcher in `tandem-kvm` and the simulator in `tandem-sim` drive the very same code,
//! and every decision can be tested on scripted event sequences ([`harness`]).
//!
//! - [`host`]: a model of Linux's fair scheduler placing VCPU threads (plain KVM). The real
//!   dispatcher does not gate under it: Linux itself schedules the threads.
//! - [`credit`]: Xen's credit scheduler.
//! - [`strict`]: ESX 2 gang scheduling.
//! - [`relaxed`]: ESX 3/4 relaxed co-scheduling.
//! - [`dynamic`]: dynamic VCPU allocation: `credit` over the VCPUs each VM is granted.

pub mod credit;
pub mod dynamic;
pub mod harness;
pub mod host;
pub mod relaxed;
mod share;
pub mod strict;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use fixedbitset::FixedBitSet;

/// Time in nanoseconds from an arbitrary origin.
pub type Ns = u64;

/// One millisecond.
pub const MS: Ns = 1_000_000;

/// How often whoever drives a policy that grants VCPUs (the dispatcher, the simulator) hands
/// it the guests' [`Event::Demand`]: well under `dynamic`'s hysteresis (10 ms up), and rare
/// enough to cost nothing measurable (polling every millisecond cost `cpu` 2-3% against
/// `credit`).
pub const DEMAND_POLL: Ns = 5 * MS;

/// The weight at which a VM's virtual time runs at wall-clock speed (Xen's default weight).
pub const UNIT_WEIGHT: u64 = 256;

/// A VCPU, numbered across all VMs of a [`Topology`]: VM 0's VCPUs first, then VM 1's, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VcpuId(pub u32);

impl VcpuId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What a policy needs to know about a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub vcpus: u32,
    /// Relative share of the pCPUs (Xen's default is 256).
    pub weight: u32,
    /// At most this many percent of one pCPU (Xen's cap; 100 = one pCPU), if set.
    pub cap: Option<u32>,
}

/// The pCPUs and VMs a policy schedules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub pcpus: u32,
    pub vms: Vec<VmSpec>,
    /// First global VCPU id of each VM, plus the total at the end.
    first: Vec<u32>,
    /// The VM of each VCPU (asked at nearly every decision).
    owner: Vec<u32>,
}

impl Topology {
    pub fn new(pcpus: u32, vms: Vec<VmSpec>) -> Topology {
        let mut first = vec![0];
        let mut owner = Vec::new();
        for (index, vm) in vms.iter().enumerate() {
            first.push(first.last().unwrap() + vm.vcpus);
            owner.extend(std::iter::repeat_n(index as u32, vm.vcpus as usize));
        }
        Topology { pcpus, vms, first, owner }
    }

    pub fn nr_vcpus(&self) -> usize {
        *self.first.last().unwrap() as usize
    }

    /// The VM `vcpu` belongs to.
    pub fn vm_of(&self, vcpu: VcpuId) -> usize {
        self.owner[vcpu.index()] as usize
    }

    /// The global ids of `vm`'s VCPUs.
    pub fn vcpus_of(&self, vm: usize) -> impl Iterator<Item = VcpuId> + use<> {
        self.range_of(vm).map(VcpuId)
    }

    /// The global id of `vm`'s VCPU number `index`.
    pub fn vcpu(&self, vm: usize, index: u32) -> VcpuId {
        VcpuId(self.first[vm] + index)
    }

    fn range_of(&self, vm: usize) -> Range<u32> {
        self.first[vm]..self.first[vm + 1]
    }

    /// Each VM's fair share of the pCPUs (in pCPUs): proportional to weight, at most its
    /// VCPU count and its cap, the excess handed on to the others (water-filling).
    pub fn fair_shares(&self) -> Vec<f64> {
        let vms: Vec<(u32, f64)> = self
            .vms
            .iter()
            .map(|vm| {
                let width = f64::from(vm.vcpus.min(self.pcpus));
                (vm.weight, vm.cap.map_or(width, |cap| width.min(f64::from(cap) / 100.0)))
            })
            .collect();
        share::water_fill(f64::from(self.pcpus), &vms)
    }
}

/// A policy's assignment: the VCPU each pCPU should run, with what the policies ask of it
/// at nearly every decision kept at hand (each VCPU's pCPU, the idle pCPUs). It also
/// remembers which pCPUs' slots were written since [`Assignment::drain_written`] last took
/// them (each pCPU once), so that a consumer following every event need not compare the
/// whole assignment each time.
#[derive(Clone, Debug)]
pub struct Assignment {
    slots: Vec<Option<VcpuId>>,
    /// Each VCPU's pCPU, if it has one.
    pcpus: Vec<Option<usize>>,
    idle: FixedBitSet,
    written: Vec<usize>,
    marked: FixedBitSet,
}

impl Assignment {
    /// Every pCPU of `topology` idle.
    pub fn new(topology: &Topology) -> Assignment {
        let pcpus = topology.pcpus as usize;
        let mut idle = FixedBitSet::with_capacity(pcpus);
        idle.insert_range(..);
        Assignment {
            slots: vec![None; pcpus],
            pcpus: vec![None; topology.nr_vcpus()],
            idle,
            written: Vec::new(),
            marked: FixedBitSet::with_capacity(pcpus),
        }
    }

    /// Sets `pcpu`'s VCPU, which must not be on another pCPU.
    pub fn set(&mut self, pcpu: usize, vcpu: Option<VcpuId>) {
        if let Some(old) = self.slots[pcpu] {
            self.pcpus[old.index()] = None;
        }
        if let Some(new) = vcpu {
            assert!(self.pcpus[new.index()].is_none(), "{new} assigned to two pCPUs");
            self.pcpus[new.index()] = Some(pcpu);
        }
        self.slots[pcpu] = vcpu;
        self.idle.set(pcpu, vcpu.is_none());
        if !self.marked.put(pcpu) {
            self.written.push(pcpu);
        }
    }

    /// Clears `pcpu`'s slot, returning the VCPU it held.
    pub fn take(&mut self, pcpu: usize) -> Option<VcpuId> {
        let vcpu = self.slots[pcpu];
        self.set(pcpu, None);
        vcpu
    }

    /// The pCPU `vcpu` is assigned to.
    pub fn pcpu_of(&self, vcpu: VcpuId) -> Option<usize> {
        self.pcpus[vcpu.index()]
    }

    /// The lowest-numbered idle pCPU.
    pub fn first_idle(&self) -> Option<usize> {
        self.idle.minimum()
    }

    /// The idle pCPUs, lowest first.
    pub fn idle(&self) -> impl Iterator<Item = usize> + '_ {
        self.idle.ones()
    }

    /// Appends to `into` the pCPUs whose slot was written since the last call, in the order
    /// first written, and forgets them.
    pub fn drain_written(&mut self, into: &mut Vec<usize>) {
        for &pcpu in &self.written {
            self.marked.set(pcpu, false);
        }
        into.append(&mut self.written);
    }
}

impl std::ops::Deref for Assignment {
    type Target = [Option<VcpuId>];

    fn deref(&self) -> &[Option<VcpuId>] {
        &self.slots
    }
}

/// When each busy pCPU's slice ends, kept in order too, so that the earliest and the ones
/// that are over are found without a scan.
#[derive(Clone, Debug)]
pub struct SliceEnds {
    ends: Vec<Option<Ns>>,
    order: BTreeSet<(Ns, usize)>,
}

impl SliceEnds {
    /// No slice on any of `pcpus`.
    pub fn new(pcpus: usize) -> SliceEnds {
        SliceEnds { ends: vec![None; pcpus], order: BTreeSet::new() }
    }

    /// `pcpu`'s slice ends at `end` (replacing any it had).
    pub fn set(&mut self, pcpu: usize, end: Ns) {
        self.clear(pcpu);
        self.ends[pcpu] = Some(end);
        self.order.insert((end, pcpu));
    }

    /// `pcpu` has no slice any more.
    pub fn clear(&mut self, pcpu: usize) {
        if let Some(end) = self.ends[pcpu].take() {
            self.order.remove(&(end, pcpu));
        }
    }

    /// The earliest slice end.
    pub fn earliest(&self) -> Option<Ns> {
        self.order.first().map(|&(end, _)| end)
    }

    /// The pCPUs whose slice is over at `now`, lowest first.
    pub fn over(&self, now: Ns) -> Vec<usize> {
        let mut over: Vec<usize> = self.order.iter().take_while(|&&(end, _)| end <= now).map(|&(_, p)| p).collect();
        over.sort_unstable();
        over
    }
}

/// What happened to a VCPU, or that time passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The VCPU became runnable: it came online, or left a block.
    Wake(VcpuId),
    /// The VCPU blocked (idle until kicked or a deadline). It stays online.
    Block(VcpuId),
    /// The VCPU went offline (or its VM ended).
    Down(VcpuId),
    /// The running VCPU gives up its pCPU, in favour of `to` (a sibling) if set.
    Yield { vcpu: VcpuId, to: Option<VcpuId> },
    /// The time the policy asked for with [`Policy::next_tick`] has come.
    Tick,
    /// The guest of VM `vm` reports `threads` runnable threads (its demand for VCPUs).
    Demand { vm: usize, threads: u32 },
}

/// A VCPU scheduling policy. Events arrive in time order; `now` never goes backwards.
pub trait Policy: Send {
    /// Takes an event at time `now`.
    fn handle(&mut self, now: Ns, event: Event);

    /// The VCPU each pCPU should run now, indexed by pCPU. A VCPU appears at most once and is
    /// never offline; it is runnable, except that a gang scheduler may reserve a pCPU for a
    /// blocked VCPU of a running gang (it runs there as soon as it wakes).
    fn assignment(&self) -> &[Option<VcpuId>];

    /// Appends to `into` the pCPUs whose [`assignment`](Self::assignment) slot may have
    /// changed since the last call (each once; by default every pCPU), and forgets them.
    fn drain_written(&mut self, into: &mut Vec<usize>) {
        into.extend(0..self.assignment().len());
    }

    /// When the policy next wants an [`Event::Tick`], if ever.
    fn next_tick(&self) -> Option<Ns>;

    /// Whether a runnable VCPU is held back for its siblings' sake (co-stopped) rather than
    /// waiting for a pCPU.
    fn costopped(&self, _vcpu: VcpuId) -> bool {
        false
    }

    /// The VCPUs whose [`costopped`](Self::costopped) answer changed at the last event.
    fn costop_changed(&self) -> &[VcpuId] {
        &[]
    }

    /// Whether the real dispatcher enforces [`assignment`](Self::assignment); false for
    /// [`host`], whose decisions only model what Linux does.
    fn gates(&self) -> bool {
        true
    }

    /// How many VCPUs VM `vm` should keep online; `None` if the policy does not manage grants
    /// (all of the VM's VCPUs may be online).
    fn grant(&self, _vm: usize) -> Option<u32> {
        None
    }
}

/// The policies by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Host,
    Credit,
    CoschedStrict,
    CoschedRelaxed,
    Dynamic,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Host,
        PolicyKind::Credit,
        PolicyKind::CoschedStrict,
        PolicyKind::CoschedRelaxed,
        PolicyKind::Dynamic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Host => "host",
            PolicyKind::Credit => "credit",
            PolicyKind::CoschedStrict => "cosched-strict",
            PolicyKind::CoschedRelaxed => "cosched-relaxed",
            PolicyKind::Dynamic => "dynamic",
        }
    }

    /// Builds the policy for `topology`.
    pub fn build(self, params: &Params, topology: &Topology) -> Box<dyn Policy> {
        match self {
            PolicyKind::Host => Box::new(host::Host::new(params, topology)),
            PolicyKind::Credit => Box::new(credit::Credit::new(params, topology)),
            PolicyKind::CoschedStrict => Box::new(strict::Strict::new(params, topology)),
            PolicyKind::CoschedRelaxed => Box::new(relaxed::Relaxed::new(params, topology)),
            PolicyKind::Dynamic => Box::new(dynamic::Dynamic::new(params, topology)),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(name: &str) -> Result<PolicyKind, String> {
        PolicyKind::ALL.into_iter().find(|kind| kind.name() == name).ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|kind| kind.name()).collect();
            format!("unknown policy `{name}`; the policies are {}", names.join(", "))
        })
    }
}

/// Tunables. Each policy uses the ones that concern it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Time slice: how long a VCPU (credit, relaxed) or a gang (strict) runs before the next
    /// one of equal priority gets the pCPU. Xen's credit scheduler uses 30 ms.
    pub slice: Ns,
    /// Credit: how often credits are handed out and burnt credits are charged.
    pub accounting: Ns,
    /// Relaxed co-scheduling: the largest lead a VCPU may have over its slowest runnable
    /// sibling before it is co-stopped.
    pub skew: Ns,
    /// Relaxed co-scheduling: how often skew is checked.
    pub tick: Ns,
    /// Dynamic allocation: how long a VM's target must stay above its grant before the grant
    /// rises. 10 ms: the dispatcher polls demands every 5 ms, so a rise must be seen at two
    /// polls in a row at least (one snapshot of a fork-join spawn brings no VCPU up), while a
    /// VM waits for a VCPU it can use about one credit accounting period, no more.
    pub raise_after: Ns,
    /// Dynamic allocation: how long a VM's target must stay below its grant before the grant
    /// falls. 50 ms, longer than `raise_after`: a VCPU taken down and brought back costs two
    /// reconfigurations and then `raise_after` without it, so short serial phases between
    /// parallel ones keep their VCPUs; meanwhile credit still shares the pCPUs by weight.
    pub lower_after: Ns,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            slice: 30 * MS,
            accounting: 10 * MS,
            skew: 3 * MS,
            tick: MS,
            raise_after: 10 * MS,
            lower_after: 50 * MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(vcpus: u32, weight: u32, cap: Option<u32>) -> VmSpec {
        VmSpec { vcpus, weight, cap }
    }

    #[test]
    fn vcpu_ids_are_numbered_across_vms() {
        let topology = Topology::new(2, vec![vm(2, 256, None), vm(3, 256, None), vm(1, 256, None)]);
        assert_eq!(topology.nr_vcpus(), 6);
        let owners: Vec<usize> = (0..6).map(|v| topology.vm_of(VcpuId(v))).collect();
        assert_eq!(owners, [0, 0, 1, 1, 1, 2]);
        assert_eq!(topology.vcpus_of(1).collect::<Vec<_>>(), [VcpuId(2), VcpuId(3), VcpuId(4)]);
        assert_eq!(topology.vcpu(2, 0), VcpuId(5));
    }

    #[test]
    fn an_assignment_knows_pcpus_of_vcpus_idle_pcpus_and_written_ones_until_drained() {
        let topology = Topology::new(4, vec![vm(8, 256, None)]);
        let mut assignment = Assignment::new(&topology);
        assignment.set(2, Some(VcpuId(7)));
        assignment.set(0, Some(VcpuId(1)));
        assert_eq!(assignment.take(2), Some(VcpuId(7)));
        assert_eq!(assignment.take(3), None);
        assert_eq!(&*assignment, &[Some(VcpuId(1)), None, None, None]);
        assert_eq!((assignment.pcpu_of(VcpuId(1)), assignment.pcpu_of(VcpuId(7))), (Some(0), None));
        assert_eq!(assignment.idle().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(assignment.first_idle(), Some(1));
        let mut written = vec![9];
        assignment.drain_written(&mut written);
        assert_eq!(written, [9, 2, 0, 3], "appended in the order first written");
        written.clear();
        assignment.drain_written(&mut written);
        assert!(written.is_empty());
        assignment.set(2, None);
        assignment.drain_written(&mut written);
        assert_eq!(written, [2]);
    }

    #[test]
    fn slice_ends_give_the_earliest_and_the_pcpus_over_lowest_first() {
        let mut ends = SliceEnds::new(4);
        assert_eq!(ends.earliest(), None);
        ends.set(3, 10);
        ends.set(1, 10);
        ends.set(2, 30);
        ends.set(0, 50);
        ends.set(0, 5);
        assert_eq!(ends.earliest(), Some(5));
        assert_eq!(ends.over(10), [0, 1, 3]);
        ends.clear(0);
        ends.clear(0);
        assert_eq!((ends.earliest(), ends.over(9)), (Some(10), vec![]));
        assert_eq!(ends.over(30), [1, 2, 3]);
    }

    #[test]
    fn fair_shares_follow_weights_widths_and_caps() {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        let equal = Topology::new(2, vec![vm(2, 256, None), vm(2, 256, None)]);
        assert!(close(&equal.fair_shares(), &[1.0, 1.0]));
        let weighted = Topology::new(3, vec![vm(4, 100, None), vm(4, 200, None)]);
        assert!(close(&weighted.fair_shares(), &[1.0, 2.0]));
        // A 1-VCPU VM cannot use more than one pCPU: the rest goes to the other.
        let narrow = Topology::new(4, vec![vm(1, 256, None), vm(4, 256, None)]);
        assert!(close(&narrow.fair_shares(), &[1.0, 3.0]));
        // A cap of 50% leaves 1.5 pCPUs to the other VM.
        let capped = Topology::new(2, vec![vm(2, 256, Some(50)), vm(2, 256, None)]);
        assert!(close(&capped.fair_shares(), &[0.5, 1.5]));
        // Too few VCPUs overall: pCPUs stay idle.
        let idle = Topology::new(8, vec![vm(2, 256, None), vm(2, 256, None)]);
        assert!(close(&idle.fair_shares(), &[2.0, 2.0]));
    }

    #[test]
    fn policy_names_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>(), Ok(kind));
        }
        assert!("fifo".parse::<PolicyKind>().unwrap_err().contains("credit"));
    }
}
