//! `hypercall`: the round trip of an empty hypercall, measured from inside the guest.
//! Prints and reports the median over batches of nanoseconds per call.

use alloc::format;
use alloc::vec::Vec;

use tandem_rt::workloads::{ParamError, ParamSpec, Params};
use tandem_rt::{clock, hypercall, println};

pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("batches", "21", "batches to take the median of"),
    ParamSpec::int("calls", "200", "calls per batch"),
];

pub fn run(params: &Params) -> Result<i64, ParamError> {
    let batches = params.u64_in("batches", 1..=1_000_000, "at least one batch")?;
    let calls = params.u64_in("calls", 1..=1_000_000_000, "at least one call")?;
    let mut per_call_ns: Vec<u64> = (0..batches)
        .map(|_| {
            let start = clock::tsc();
            for _ in 0..calls {
                hypercall::nop();
            }
            clock::ticks_to_ns(clock::tsc() - start) / calls
        })
        .collect();
    per_call_ns.sort_unstable();
    let median = per_call_ns[per_call_ns.len() / 2];
    let (min, max) = (per_call_ns[0], per_call_ns[per_call_ns.len() - 1]);
    println!("nop hypercall round trip: median {median} ns (min {min}, max {max}) over {batches} batches of {calls}");
    let record = format!(
        r#"{{"workload":"hypercall","batches":{batches},"calls":{calls},"median_ns":{median},"min_ns":{min},"max_ns":{max}}}"#
    );
    hypercall::report(record.as_bytes()).expect("report refused");
    Ok(0)
}
