//! `kv`: a thread per connection that waits for its connection's requests, executes those
//! that came (pipelined or queued ones in one round), each under the lock of one of the
//! table's shards, writes the replies and waits again. The load is the monitor's
//! ([`Served`]).
//!
//! The shards' locks are the VM's one lock, each request's critical section under it
//! divided by `shards` (the rest of it is spent outside). With `shards` locks each held for
//! `CRITICAL_NS` per request, a request finds its shard's lock held as often as it finds the
//! one lock held for `CRITICAL_NS / shards`; a holder is preempted inside its critical
//! section `shards` times less often, but then stalls every thread that comes for the lock
//! rather than one in `shards`: the same stalls on average, fewer and longer. A lock per
//! shard would make the guest's lock a set of locks (each with its holder, queue and PV
//! state) for an effect that is rare at the default 64 shards. A round's requests take the
//! lock once for all of them: their thread executes them one after another, so a wait on one
//! holds up the rest anyway.

use sched::Ns;
use workloads::ParamError;
use workloads::kv::load::Load;

use super::{Args, LockOps, Model, Program, Served, Step};

// The costs below are fitted to `tandem bench kv` (redis-benchmark -t set,get -c 50, 3-byte
// values, against kv on 2 VCPUs on this machine's 2 cores): 50 k requests/s at -P 1, so
// about 40 µs of VCPU time per request with its wake-up, and 470-545 k/s at -P 16, about 4
// µs per request of a batch of 16. So BATCH_NS + a request's 1.6 µs is 39.6 µs (50.5 k/s),
// and (BATCH_NS + 16 x 1.6 µs) / 16 is 4.0 µs (503 k/s). The host's threads (the backend,
// redis-benchmark's) share those cores, and their time is in these figures. To recalibrate
// against `tandem scenario` runs of kv alone: a closed loop's rate at pipeline 1 sets
// BATCH_NS plus a request's time (2 VCPUs / rate), at pipeline 16 a request's time; the p50
// latency of a closed loop that the VCPUs keep up with (a few connections) sets the paths
// (round trip = REQUEST_PATH + REPLY_PATH + the round).

/// A round of a connection's thread beyond its requests: the read and the write through the
/// guest's network stack (smoltcp, the copies through the rings), and the thread's wake-up.
const BATCH_NS: Ns = 38_000;
/// One request's parsing, execution and reply formatting, outside its shard's lock.
const REQUEST_NS: Ns = 1_300;
/// One request's critical section under its shard's lock (a hash look-up, a short copy).
const CRITICAL_NS: Ns = 300;
/// From the client's sending a request to its frame in the NIC's ring: the host's loopback,
/// the monitor's TCP stack and the backend. An estimate: an echo's whole round trip at one
/// connection, the guest's part included, is 17-18 µs p50 (`tandem bench net`), and
/// redis-benchmark's clients add their own event loop.
const REQUEST_PATH: Ns = 10_000;
/// From the guest's writing a reply to the client's having it: the same way back.
const REPLY_PATH: Ns = 10_000;

/// Steps of a round: receive, the round's cost, lock, the critical sections, unlock, the
/// rest of the requests, reply.
const ROUND: u64 = 7;

#[derive(Debug)]
pub(super) struct Kv {
    requests: u64,
    /// A request's time under the one lock.
    locked: Ns,
    /// The rest of a request's time.
    unlocked: Ns,
}

pub(super) fn model(args: &Args) -> Result<Model, ParamError> {
    let load = Load::from_params(args.params)?;
    let shards = args.params.u64_in("shards", 1..=65536, "between 1 and 65536 shards")?;
    let locked = CRITICAL_NS / shards;
    let unlocked = REQUEST_NS + CRITICAL_NS - locked;
    let served = Served {
        requests: load.requests,
        clients: load.clients,
        pipeline: load.pipeline,
        rate: load.rate,
        request_path: REQUEST_PATH,
        reply_path: REPLY_PATH,
    };
    // The lock's own batches are not used: a round's `Execute` steps cover its requests.
    let lock = LockOps { ops: u64::MAX, batch: 1, cs: locked, think: unlocked };
    let kv = Kv { requests: load.requests, locked, unlocked };
    Ok(Model { lock: Some(lock), served: Some(served), ..Model::of(args, load.clients, kv) })
}

impl Program for Kv {
    fn step(&self, _thread: usize, pc: u64, _done: u64) -> Step {
        // A round takes at least one request, so a thread has at most `requests` of them (the
        // guest ends when the run's last request is answered, long before).
        if pc / ROUND >= self.requests {
            return Step::Done;
        }
        match pc % ROUND {
            0 => Step::Receive,
            1 => Step::Compute { ns: BATCH_NS, ops: 0 },
            2 => Step::Lock,
            3 => Step::Execute { ns: self.locked, done: false },
            4 => Step::Unlock,
            5 => Step::Execute { ns: self.unlocked, done: true },
            _ => Step::Reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Model;
    use super::super::tests::{model, plan, program};
    use super::*;

    #[test]
    fn kv_serves_each_connection_on_a_thread_in_rounds_under_the_sharded_lock() {
        let kv = model("kv", 2, &["requests=10", "clients=3", "pipeline=4", "shards=4"]);
        assert_eq!(kv.threads, 3);
        let served = kv.served.unwrap();
        assert_eq!((served.requests, served.clients, served.pipeline, served.rate), (10, 3, 4, None));
        let (locked, unlocked) = (CRITICAL_NS / 4, REQUEST_NS + CRITICAL_NS - CRITICAL_NS / 4);
        let round = [
            Step::Receive,
            Step::Compute { ns: BATCH_NS, ops: 0 },
            Step::Lock,
            Step::Execute { ns: locked, done: false },
            Step::Unlock,
            Step::Execute { ns: unlocked, done: true },
            Step::Reply,
        ];
        let steps = program(&kv, 1);
        assert_eq!(steps.len(), 10 * round.len() + 1);
        assert_eq!(steps[..7], round);
        assert_eq!(steps[63..70], round);
        let open = model("kv", 2, &["rate=5000"]).served.unwrap();
        assert_eq!((open.rate, open.clients, open.pipeline), (Some(5000), 50, 1));
        assert!(model("locks", 2, &[]).served.is_none());
    }

    #[test]
    fn kv_refuses_a_load_or_a_table_out_of_range() {
        for bad in ["clients=0", "pipeline=2000", "shards=0", "reads=101"] {
            let error = Model::new(&plan("kv", 2, &[bad]), 20_000).unwrap_err();
            assert!(error.to_string().starts_with("bad arguments for workload kv: "), "{bad}: {error}");
        }
    }
}
