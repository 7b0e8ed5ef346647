//! tandem's workloads, written once against [`Runtime`] and run both in the guest kernel and,
//! with the `std` feature, on native host threads (the bare-metal baseline).
//!
//! - `cpu`: independent single-threaded compute, one task at a time per thread, no sharing;
//! - `nbody`: barrier-synchronized timesteps of a particle simulation;
//! - `locks`: a shared table under a spinlock with tunable critical section and think time;
//! - `pipeline`: producer/consumer stages over mutex + condition variable queues;
//! - `phases`: parallel and serial phases in turn, so that the demand for CPUs changes;
//! - `kv`: a Redis-protocol key-value server, driven over the VM's NIC by the stock
//!   `redis-benchmark` or the monitor's load generator (a [served](WorkloadInfo::served)
//!   workload: its protocol and table are here, its server is a guest program).
//!
//! Each takes its parameters from `key=value` arguments ([`params`]), checks its own result,
//! and returns a [`Record`].
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod common;
pub mod cpu;
pub mod kv;
pub mod locks;
#[cfg(feature = "std")]
pub mod native;
pub mod nbody;
pub mod params;
pub mod phases;
pub mod pipeline;
pub mod record;
pub mod runtime;
pub mod sync;
pub mod timing;

use alloc::string::{String, ToString};
use core::fmt;

pub use common::share;
pub use params::{ParamError, ParamSpec, Params};
pub use record::Record;
pub use runtime::{Barrier, BarrierKind, Condvar, Lock, Runtime};

/// A workload as the registry describes it: everything the monitor, the experiments and the
/// listings need to know of it. A workload is its own module, which defines its descriptor,
/// plus its line in [`WORKLOADS`] and in [`run`]; the simulator's model of it is registered
/// in the simulator.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadInfo {
    /// The name [`run`] takes.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// What one op of its result is (its [`Record::unit`]).
    pub unit: &'static str,
    /// Its `key=value` parameters.
    pub params: &'static [ParamSpec],
    /// Its arguments in the co-design matrix of `tandem compare` (about 0.2-0.3 s of work at
    /// 1x on the test machines), or `None` if it is not in the matrix.
    pub matrix_args: Option<&'static [(&'static str, &'static str)]>,
    /// Arguments that keep it busy past any simulated duration (`tandem sweep`'s).
    pub endless_args: &'static [(&'static str, &'static str)],
    /// Whether it is a server on the VM's NIC that clients drive (in a scenario, the
    /// monitor's load generator, which measures its rate), rather than work its threads run
    /// to the end on a [`Runtime`].
    pub served: bool,
}

/// Parameters every workload takes in the guest, for the guest runtime rather than the
/// workload: the spinlock family and the bounds of a paravirtual wait.
pub const GUEST_PARAMS: &[ParamSpec] = &[
    ParamSpec::choice("locks", "spin", LOCK_FAMILIES, "the spinlock family: ticket or queued, spinning or paravirtual"),
    ParamSpec::int("pv_yield_us", "10", "pv: spin this long before looking at the VCPU waited for"),
    ParamSpec::int("pv_block_us", "200", "pv: block the VCPU after waiting this long"),
    ParamSpec::int("pvq_spin_us", "50", "pvqspin: a queued waiter spins this long on its node, then blocks"),
    ParamSpec::int(
        "pvq_head_us",
        "50",
        "pvqspin: the queue's head spins this long, then marks the lock slow and blocks",
    ),
];

/// The spinlock families, as `locks=` names them: FIFO ticket locks (`spin`, and `pv`, which
/// yields to a preempted holder and blocks), and queued locks after Linux's qspinlock
/// (`qspin`, and `pvqspin` after its paravirtual slow path); see [`sync`].
pub const LOCK_FAMILIES: &[&str] = &["spin", "pv", "qspin", "pvqspin"];

/// Whether the family `locks` waits paravirtually (looks at VCPUs in the shared page, blocks
/// and kicks) rather than only spinning.
pub fn paravirtual(locks: &str) -> bool {
    matches!(locks, "pv" | "pvqspin")
}

/// Whether the family `locks` is a queued lock (a free lock may be stolen past its queue)
/// rather than a FIFO ticket lock.
pub fn queued(locks: &str) -> bool {
    matches!(locks, "qspin" | "pvqspin")
}

/// Splits `key=value` words into the guest runtime's ([`GUEST_PARAMS`]) and the workload's.
pub fn split_guest_args<'a>(
    words: impl IntoIterator<Item = &'a str>,
) -> (alloc::vec::Vec<&'a str>, alloc::vec::Vec<&'a str>) {
    words.into_iter().partition(|word| {
        GUEST_PARAMS.iter().any(|param| word.split_once('=').is_some_and(|(key, _)| key == param.name))
    })
}

/// Every workload, in the order they are listed.
pub const WORKLOADS: &[WorkloadInfo] =
    &[cpu::WORKLOAD, nbody::WORKLOAD, locks::WORKLOAD, pipeline::WORKLOAD, phases::WORKLOAD, kv::WORKLOAD];

/// The workload named `name`.
pub fn workload(name: &str) -> Option<&'static WorkloadInfo> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// Why a workload did not produce a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No workload has this name.
    UnknownWorkload(String),
    /// A bad argument.
    Param(ParamError),
    /// The workload ran but its result is wrong.
    Check(String),
    /// A served workload, which runs as a server in a VM with a NIC rather than on a runtime.
    Served(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownWorkload(name) => {
                write!(f, "unknown workload {name:?} (known: ")?;
                for (i, workload) in WORKLOADS.iter().enumerate() {
                    write!(f, "{}{}", if i == 0 { "" } else { ", " }, workload.name)?;
                }
                write!(f, ")")
            }
            Self::Param(error) => error.fmt(f),
            Self::Check(why) => write!(f, "self-check failed: {why}"),
            Self::Served(name) => write!(f, "{name} is a server: it runs in a VM with a NIC, driven by its clients"),
        }
    }
}

impl core::error::Error for Error {}

impl From<ParamError> for Error {
    fn from(error: ParamError) -> Self {
        Error::Param(error)
    }
}

/// Runs `workload` on `rt` with `key=value` arguments `args`.
pub fn run<R: Runtime>(rt: &R, workload: &str, args: &[&str]) -> Result<Record, Error> {
    let info = self::workload(workload).ok_or_else(|| Error::UnknownWorkload(workload.to_string()))?;
    let params = Params::parse(info.params, args.iter().copied())?;
    match info.name {
        "cpu" => cpu::run(rt, &params),
        "nbody" => nbody::run(rt, &params),
        "locks" => locks::run(rt, &params),
        "pipeline" => pipeline::run(rt, &params),
        "phases" => phases::run(rt, &params),
        _ if info.served => Err(Error::Served(info.name.to_string())),
        other => unreachable!("workload {other} is listed but not dispatched"),
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use alloc::{format, vec};

    use super::*;
    use crate::native::NativeRuntime;

    /// Small parameters of the workloads that take `threads` (pipeline's `stages` are tested
    /// in its module).
    const SMALL: &[(&str, &[&str])] = &[
        ("cpu", &["tasks=5"]),
        ("nbody", &["bodies=24", "steps=10"]),
        ("locks", &["ops=2000", "buckets=16", "cs=10", "think=10"]),
        ("phases", &["rounds=3", "phase_ms=2"]),
    ];

    fn run_native(workload: &str, args: &[&str]) -> Result<Record, Error> {
        run(&NativeRuntime::new(Some(2)), workload, args)
    }

    #[test]
    fn every_workload_passes_its_check_on_1_2_and_4_threads() {
        for &(workload, args) in SMALL {
            for threads in ["1", "2", "4"] {
                let threads_arg = format!("threads={threads}");
                let args: Vec<&str> = args.iter().copied().chain([threads_arg.as_str()]).collect();
                let record = run_native(workload, &args).unwrap_or_else(|e| panic!("{workload} {args:?}: {e}"));
                assert_eq!(record.workload, workload);
                assert_eq!((record.runtime.as_str(), record.locks.as_str(), record.cpus), ("native", "spin", 2));
                assert_eq!(record.per_thread.len().to_string(), threads);
                assert_eq!(record.params["threads"], threads);
                assert!(record.ops > 0 && record.elapsed_ns > 0);
            }
        }
    }

    #[test]
    fn default_thread_count_is_the_cpu_count() {
        let record = run(&NativeRuntime::new(Some(3)), "locks", &["ops=10"]).unwrap();
        assert_eq!(record.per_thread, vec![10; 3]);
        let record = run(&NativeRuntime::new(Some(1)), "pipeline", &["items=10"]).unwrap();
        assert_eq!(record.per_thread, vec![10; 2], "a pipeline has at least two stages");
    }

    #[test]
    fn errors_name_the_problem() {
        let error = run_native("gobmk", &[]).unwrap_err();
        assert_eq!(error, Error::UnknownWorkload("gobmk".into()));
        assert_eq!(format!("{error}"), "unknown workload \"gobmk\" (known: cpu, nbody, locks, pipeline, phases, kv)");
        assert_eq!(run_native("kv", &[]), Err(Error::Served("kv".into())));
        assert!(matches!(run_native("cpu", &["tasks=x"]), Err(Error::Param(ParamError::NotInteger { .. }))));
        assert!(matches!(run_native("nbody", &["barrier=maybe"]), Err(Error::Param(ParamError::NotAChoice { .. }))));
        assert!(matches!(run_native("locks", &["threads=257"]), Err(Error::Param(ParamError::OutOfRange { .. }))));
        assert!(matches!(run_native("pipeline", &["stages=1"]), Err(Error::Param(ParamError::OutOfRange { .. }))));
        assert!(matches!(run_native("pipeline", &["threads=2"]), Err(Error::Param(ParamError::Unknown { .. }))));
    }

    #[test]
    fn records_survive_json() {
        let record = run_native("cpu", &["tasks=1", "threads=1"]).unwrap();
        assert_eq!(Record::from_json(&record.to_json()).unwrap(), record);
    }
}
