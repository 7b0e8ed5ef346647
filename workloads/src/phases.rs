//! `phases`: a program with serial sections (Amdahl's law). Each round runs `threads` busy
//! threads for `phase_ms`, then one busy thread for `phase_ms`, so its parallelism, and with it
//! the guest's demand for VCPUs, changes at every phase: the workload behind the measurement
//! of how fast a VM follows a new VCPU grant. Its rate (rounds/s) is set by the clock, not by
//! the CPUs it gets; what it checks is the first chunk of work of every thread of every
//! parallel phase (each does at least one).

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::common::{self, THREADS};
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, Record, fnv1a};
use crate::runtime::Runtime;
use crate::{Error, WorkloadInfo};

/// `phases` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "phases",
    about: "parallel and serial phases in turn (Amdahl): changing demand for VCPUs",
    unit: "rounds",
    params: PARAMS,
    matrix_args: None,
    endless_args: &[("rounds", "10000"), ("phase_ms", "1000")],
    served: false,
};

/// The parameters of `phases`.
pub const PARAMS: &[ParamSpec] = &[
    THREADS,
    ParamSpec::int("rounds", "10", "parallel + serial phase pairs, 1-10000"),
    ParamSpec::int("phase_ms", "100", "length of each phase in ms, 1-10000"),
];

/// Busy work between two looks at the clock (and yields, so that the VCPU can follow its grant).
const CHUNK_UNITS: u64 = 1_000;

/// The seed of thread `thread`'s work in round `round`.
fn seed(round: u64, thread: usize) -> u64 {
    fnv1a(fnv1a(FNV_OFFSET, round), thread as u64)
}

/// Works in chunks, at least one, until `until_ns`; counts them in `chunks` and returns the
/// first chunk's result, which the caller checks.
fn busy<R: Runtime>(rt: &R, seed: u64, until_ns: u64, chunks: &AtomicU64) -> u64 {
    let first = common::work(seed, CHUNK_UNITS);
    let mut x = first;
    let mut done = 1;
    rt.yield_now();
    while rt.now_ns() < until_ns {
        x = common::work(x, CHUNK_UNITS);
        done += 1;
        rt.yield_now();
    }
    core::hint::black_box(x);
    chunks.fetch_add(done, Ordering::Relaxed);
    first
}

pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let threads = common::threads(rt, params)?;
    let rounds = params.u64_in("rounds", 1..=10_000, "between 1 and 10000 rounds")?;
    let phase_ns = params.u64_in("phase_ms", 1..=10_000, "between 1 and 10000 ms")? * 1_000_000;
    let chunks: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
    let serial_chunks = AtomicU64::new(0);
    let mut checksum = FNV_OFFSET;
    let start = rt.now_ns();
    for round in 0..rounds {
        let parallel_end = rt.now_ns() + phase_ns;
        let firsts = rt.parallel(threads, &|i| busy(rt, seed(round, i), parallel_end, &chunks[i]));
        for (thread, first) in firsts.into_iter().enumerate() {
            if first != common::work(seed(round, thread), CHUNK_UNITS) {
                return Err(Error::Check(format!("thread {thread} computed a wrong result in parallel phase {round}")));
            }
            checksum = fnv1a(checksum, first);
        }
        let serial_end = rt.now_ns() + phase_ns;
        rt.parallel(1, &|_| busy(rt, seed(round, threads), serial_end, &serial_chunks));
    }
    let elapsed_ns = rt.now_ns() - start;
    let per_thread = chunks.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    Ok(Record {
        elapsed_ns,
        ops: rounds,
        checksum,
        per_thread,
        ..common::record(rt, WORKLOAD.name, params, WORKLOAD.unit)
    })
}
