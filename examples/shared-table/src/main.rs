//! A tandem guest application, the example `tandem new` starts from. Its threads update a table they share under the VM's spinlock
//! family (`locks=spin` or `locks=pv` on the command line, which tandem-rt applies), meet at
//! a barrier after each round, check the total, and report a result record that the monitor
//! reads back (`tandem run --json`, and the ratios of `tandem scenario`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::ToString;
use alloc::vec;

use tandem_rt::workloads::{Barrier, BarrierKind, Lock, ParamSpec, Params, Record, Runtime};
use tandem_rt::{Args, GuestRuntime, println};

/// The parameters it takes, `key=value` after `--` on `tandem run`'s command line.
const PARAMS: &[ParamSpec] = &[
    ParamSpec::int("threads", "0", "threads; 0: one per VCPU"),
    ParamSpec::int("rounds", "200", "rounds, each ended by a barrier"),
    ParamSpec::int("updates", "2000", "updates of the table per thread and round"),
];

/// Entries in the shared table.
const TABLE: usize = 64;

tandem_rt::entry!(main);

fn main(args: Args) -> i64 {
    let params = match args.params(PARAMS) {
        Ok(params) => params,
        Err(error) => return args.usage_error(error),
    };
    // Every VCPU runs threads from here on; the closure's value is the exit code.
    tandem_rt::sched::start(move || run(&GuestRuntime, &params))
}

fn run(rt: &GuestRuntime, params: &Params) -> i64 {
    let threads = match params.u64("threads") {
        0 => rt.cpus(),
        n => n as usize,
    };
    let (rounds, updates) = (params.u64("rounds"), params.u64("updates"));
    let table = rt.spin_lock(vec![0u64; TABLE]);
    let barrier = rt.barrier(threads, BarrierKind::SpinThenBlock);
    let started = rt.now_ns();
    let per_thread = rt.parallel(threads, &|thread| {
        for round in 0..rounds {
            for update in 0..updates {
                let slot = (thread as u64 * 31 + round * 7 + update) as usize % TABLE;
                table.lock()[slot] += 1;
            }
            barrier.wait();
        }
        rounds * updates
    });
    let elapsed_ns = rt.now_ns() - started;
    let total: u64 = table.lock().iter().sum();
    let expected = threads as u64 * rounds * updates;
    if total != expected {
        println!("{}: the table holds {total} updates, not {expected}", env!("CARGO_PKG_NAME"));
        return 1;
    }
    let record = Record {
        workload: env!("CARGO_PKG_NAME").to_string(),
        runtime: rt.name().to_string(),
        locks: rt.lock_family().to_string(),
        cpus: rt.cpus() as u32,
        params: params.values().clone(),
        elapsed_ns,
        ops: total,
        unit: "updates".to_string(),
        checksum: total,
        per_thread,
        lock_stats: Some(table.stats()),
        latency: None,
    };
    println!("{}", record.summary());
    tandem_rt::report(record.to_json().as_bytes()).expect("the monitor takes the record");
    0
}
