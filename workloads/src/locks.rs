//! `locks`: lock-heavy, the role of ebizzy or dbench in paravirtual spinlock studies. Every
//! thread repeatedly takes one spinlock over a table of buckets, works a while inside,
//! updates a bucket, and works a while outside.

use alloc::format;
use alloc::vec;

use crate::common::{self, THREADS, XorShift};
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, Record, fnv1a};
use crate::runtime::{Lock, Runtime};
use crate::{Error, WorkloadInfo};

/// `locks` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "locks",
    about: "a shared table under one spinlock (ebizzy, dbench)",
    unit: "ops",
    params: PARAMS,
    matrix_args: Some(&[("ops", "300000")]),
    endless_args: &[("ops", "1000000000000")],
    served: false,
};

/// The parameters of `locks`.
pub const PARAMS: &[ParamSpec] = &[
    THREADS,
    ParamSpec::int("buckets", "1024", "buckets in the shared table, 1-2^20"),
    ParamSpec::int("ops", "1000000", "lock operations per thread"),
    ParamSpec::int("cs", "100", "work units inside the lock per operation"),
    ParamSpec::int("think", "400", "work units outside the lock per operation"),
];

/// One entry of the shared table.
#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Operations that picked this bucket.
    hits: u64,
    /// Sum of the work results of those operations: addition commutes, so it does not depend
    /// on the order in which the threads came.
    sum: u64,
}

/// Runs `ops` lock operations on each of `threads` threads; checks that the table counted
/// every one.
pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let threads = common::threads(rt, params)?;
    let buckets = params.u64_in("buckets", 1..=1 << 20, "between 1 and 2^20 buckets")? as usize;
    let (ops, cs, think) = (params.u64("ops"), params.u64("cs"), params.u64("think"));
    let table = rt.spin_lock(vec![Bucket::default(); buckets]);

    let start = rt.now_ns();
    let per_thread = rt.parallel(threads, &|t| {
        let mut rng = XorShift::new(t as u64);
        let mut x = t as u64;
        for _ in 0..ops {
            let bucket = (rng.next_u64() % buckets as u64) as usize;
            let mut table = table.lock();
            // Opaque from here, and stored in the table below: the critical section's work
            // cannot be moved out of it.
            x = common::work(core::hint::black_box(x), cs);
            let entry = &mut table[bucket];
            entry.hits += 1;
            entry.sum = entry.sum.wrapping_add(x);
            drop(table);
            x = common::work(x, think);
        }
        ops
    });
    let elapsed_ns = rt.now_ns() - start;

    let lock_stats = table.stats();
    let table = table.lock();
    let hits: u64 = table.iter().map(|b| b.hits).sum();
    let expected = threads as u64 * ops;
    if hits != expected {
        return Err(Error::Check(format!(
            "the buckets count {hits} operations, expected {threads} x {ops} = {expected}"
        )));
    }
    let checksum = table.iter().fold(FNV_OFFSET, |h, b| fnv1a(fnv1a(h, b.hits), b.sum));
    Ok(Record {
        elapsed_ns,
        ops: expected,
        checksum,
        per_thread,
        lock_stats: Some(lock_stats),
        ..common::record(rt, WORKLOAD.name, params, WORKLOAD.unit)
    })
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::native::NativeRuntime;

    #[test]
    fn every_operation_is_counted_once() {
        let rt = NativeRuntime::new(Some(2));
        let args = ["threads=3", "ops=3000", "buckets=8", "cs=5", "think=5"];
        let record = crate::run(&rt, "locks", &args).unwrap();
        assert_eq!(record.ops, 9000);
        assert_eq!(record.per_thread, [3000; 3]);
        assert_eq!(record.lock_stats.unwrap().acquisitions, 9000);
        // The table's content does not depend on how the threads interleaved.
        assert_eq!(crate::run(&rt, "locks", &args).unwrap().checksum, record.checksum);
    }
}
