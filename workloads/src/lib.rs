//! tandem's workloads, written once against [`Runtime`] and run both in the guest kernel and,
//! with the `std` feature, on native host threads (the bare-metal baseline).
//!
//! - `cpu`: independent single-threaded compute, one task at a time per thread, no sharing;
//! - `nbody`: barrier-synchronized timesteps of a particle simulation;
//! - `locks`: a shared table under a spinlock with tunable critical section and think time;
//! - `pipeline`: producer/consumer stages over mutex + condition variable queues.
//!
//! Each takes its parameters from `key=value` arguments ([`params`]), checks its own result,
//! and returns a [`Record`].
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod params;
pub mod record;
pub mod runtime;
pub mod sync;

pub use params::{ParamError, ParamSpec, Params};
pub use record::Record;
pub use runtime::{Barrier, BarrierKind, Condvar, Lock, Runtime};
