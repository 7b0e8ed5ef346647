//! The guest runtime's waiting bounds: read by `guest-kernel`, which waits this long, and by
//! the simulator's model of it, which must wait as long.

/// How long an idle VCPU polls for work before it blocks in the monitor: about the cost of
/// the two exits that blocking and being kicked take (the idea of Linux's haltpoll).
pub const IDLE_POLL_NS: u64 = 30_000;

/// How long a mutex or spin-then-block barrier waiter spins (yielding to its VCPU's other
/// threads) before it blocks: about one exit's cost, the price of blocking and being kicked.
pub const SPIN_BEFORE_BLOCK_NS: u64 = 20_000;

/// How often a paravirtual waiter past its first bound (`pv_yield_us`) looks, in the shared
/// page, at the VCPU it waits for.
pub const PV_CHECK_PERIOD_NS: u64 = 1_000;
