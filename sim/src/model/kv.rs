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

// A request costs time on the VCPUs and on the host. Measured on this machine (kv alone on 2
// VCPUs on the 2 cores, the monitor's load generator's 50 connections in a closed loop,
// pipeline 1): 50-63 k requests/s, while the VCPU threads' CPU clocks show one VCPU 50-58%
// busy and the other 16-18%, about 0.7 of a core in all, idle polls included: some 14 µs of
// VCPU time per request. The rest of the two cores goes to host threads the dispatcher does
// not schedule: the monitor's NIC backend (its user-mode TCP stack, the copies through the
// rings), the load generator, the host's loopback between them. So kv alone is not bound by
// its VCPUs but by its host side, one host thread per VM here (see `host`): REQUEST_HOST +
// REPLY_HOST of host CPU per request is 20 µs, 50 k/s, and the VCPUs keep up with time to
// spare. Beside other VMs the host thread takes its time from whatever VCPU holds a pCPU, so
// a server loses little of its rate until the cores run out: two kv VMs on the 2 cores (the
// matrix's 2x) serve together 1.15-1.3 times what one serves alone (each 1.15-1.4 of its
// ideal under host, credit and dynamic, 1.0-1.1 under co-scheduling,
// `docs/validation/kv.json`). Host-bound alone (1 / host) and core-bound together (2 / (VCPU
// + host)), two serve 2 x host / (VCPU + host) times one. Fitted to `tandem validate` of the
// kv matrix and of the kv overcommit study (`docs/validation/kv-overcommit.json`), the host
// part is about 1.4 times the VCPU's, two VMs serving 1.15 times one: BATCH_NS + a request's
// 1.6 µs = 14.6 µs against 20 µs of host time (13-14 µs and 19-20 µs fit about as well; a
// larger share of host time fits 2x under host and dynamic better and the overcommit study
// worse). At pipeline 16 a batch then takes 13 + 16 x 1.6 µs of
// VCPU time and 20 µs of host time, about 550 k requests/s on the 2 cores (`tandem bench
// kv`: 470-545 k). What is left of a request's way beyond the host thread's work is its
// threads' wake-ups, a few µs. The host's costs are those under load: at one connection the
// model's round trip (about 40 µs) is twice an echo's through the same path (17-18 µs p50,
// `tandem bench net`).

/// A round of a connection's thread beyond its requests: the read and the write through the
/// guest's network stack (smoltcp, the copies through the rings), and the thread's wake-up.
const BATCH_NS: Ns = 13_000;
/// One request's parsing, execution and reply formatting, outside its shard's lock.
const REQUEST_NS: Ns = 1_300;
/// One request's critical section under its shard's lock (a hash look-up, a short copy).
const CRITICAL_NS: Ns = 300;
/// The host thread's CPU time for a connection's requests: the load generator's write, the
/// host's loopback, the monitor's TCP stack and the copy into the NIC's ring.
const REQUEST_HOST: Ns = 10_000;
/// The host thread's CPU time for a connection's replies: the same way back.
const REPLY_HOST: Ns = 10_000;
/// From the client's sending a request to the host thread's having it, and from the host
/// thread's having carried a reply to the client's reading it: wake-ups.
const REQUEST_PATH: Ns = 2_000;
const REPLY_PATH: Ns = 2_000;

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
        request_host: REQUEST_HOST,
        reply_host: REPLY_HOST,
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
