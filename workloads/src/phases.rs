//! `phases`: a program with serial sections (Amdahl's law). Each round runs `threads` busy
//! threads for `phase_ms`, then one busy thread for `phase_ms`, so its parallelism, and with it
//! the guest's demand for VCPUs, changes at every phase: the workload behind the measurement
//! of how fast a VM follows a new VCPU grant. Its rate (rounds/s) is set by the clock, not by
//! the CPUs it gets; what it checks is that every thread of every parallel phase ran.

use alloc::format;
use alloc::vec;

use crate::Error;
use crate::common::{self, THREADS};
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, Record, fnv1a};
use crate::runtime::Runtime;

/// The parameters of `phases`.
pub const PARAMS: &[ParamSpec] = &[
    THREADS,
    ParamSpec::int("rounds", "10", "parallel + serial phase pairs, 1-10000"),
    ParamSpec::int("phase_ms", "100", "length of each phase in ms, 1-10000"),
];

/// Busy work between two looks at the clock (and yields, so that the VCPU can follow its grant).
const CHUNK_UNITS: u64 = 1_000;

/// Works in chunks until `until_ns`; returns the chunks done.
fn busy<R: Runtime>(rt: &R, until_ns: u64) -> u64 {
    let (mut x, mut chunks) = (until_ns, 0);
    while rt.now_ns() < until_ns {
        x = common::work(x, CHUNK_UNITS);
        chunks += 1;
        rt.yield_now();
    }
    core::hint::black_box(x);
    chunks
}

pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let threads = common::threads(rt, params)?;
    let rounds = params.u64_in("rounds", 1..=10_000, "between 1 and 10000 rounds")?;
    let phase_ns = params.u64_in("phase_ms", 1..=10_000, "between 1 and 10000 ms")? * 1_000_000;
    let mut per_thread = vec![0; threads];
    let start = rt.now_ns();
    for round in 0..rounds {
        let parallel_end = rt.now_ns() + phase_ns;
        let chunks = rt.parallel(threads, &|_| busy(rt, parallel_end));
        if let Some(idle) = chunks.iter().position(|&n| n == 0) {
            return Err(Error::Check(format!("thread {idle} did no work in parallel phase {round}")));
        }
        per_thread.iter_mut().zip(&chunks).for_each(|(total, n)| *total += n);
        let serial_end = rt.now_ns() + phase_ns;
        rt.parallel(1, &|_| busy(rt, serial_end));
    }
    let elapsed_ns = rt.now_ns() - start;
    let checksum = fnv1a(fnv1a(FNV_OFFSET, rounds), threads as u64);
    Ok(Record { elapsed_ns, ops: rounds, checksum, per_thread, ..common::record(rt, "phases", params, "rounds") })
}
