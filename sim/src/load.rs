//! The monitor's load generator for a served workload, as `tandem scenario` runs it:
//! `clients` connections that keep `pipeline` requests each in flight until `requests` have
//! been sent (a closed loop), or requests due evenly at `rate` per second, dealt to the
//! connections in turn and each sent when due, whatever came back (an open loop). A request
//! reaches the host side (the VM's host thread, which carries it to the guest's NIC: see
//! `host`) `request_path` after it is sent; a reply reaches its client `reply_path` after the
//! host thread has carried it from the guest, and a closed loop's client sends again at once.
//! A request's latency runs from its sending (open loop: from when it was due, so that a
//! server that falls behind is charged for the wait) to its reply's arrival. The engine calls
//! [`Load::due`] when [`Load::next_call`] asks and hands what arrives on; the replies come
//! back through [`Load::replied`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use sched::Ns;
use workloads::record::Latency;

use crate::model::Served;

/// The load generator of one served VM.
pub struct Load {
    served: Served,
    /// Requests sent so far.
    sent: u64,
    /// Each connection's requests in flight, oldest first: when each was sent (open loop: due).
    in_flight: Vec<VecDeque<Ns>>,
    /// Requests on their way to the NIC: when they arrive, their connection, how many.
    on_the_way: BinaryHeap<Reverse<(Ns, usize, u64)>>,
    /// When the server started listening, which an open loop's requests are due from.
    started: Ns,
    /// When the engine was last asked to call, if it has not called since.
    asked: Option<Ns>,
    latencies: Histogram,
}

impl Load {
    pub fn new(served: Served) -> Load {
        Load {
            served,
            sent: 0,
            in_flight: vec![VecDeque::new(); served.clients],
            on_the_way: BinaryHeap::new(),
            started: 0,
            asked: None,
            latencies: Histogram::default(),
        }
    }

    /// The server listens at `now`: a closed loop's connections each send their first
    /// requests; an open loop's first request is due now.
    pub fn start(&mut self, now: Ns) {
        self.started = now;
        if self.served.rate.is_none() {
            for conn in 0..self.served.clients {
                self.send(conn, self.served.pipeline as u64, now, now);
            }
        }
    }

    /// Connection `conn` sends up to `requests` requests at `now` (fewer once the run's are
    /// all sent), their latency counted from `since`.
    fn send(&mut self, conn: usize, requests: u64, now: Ns, since: Ns) {
        let requests = requests.min(self.served.requests - self.sent);
        if requests == 0 {
            return;
        }
        self.sent += requests;
        self.in_flight[conn].extend(std::iter::repeat_n(since, requests as usize));
        self.on_the_way.push(Reverse((now + self.served.request_path, conn, requests)));
    }

    /// When an open loop's next request is due, if any is still to be sent.
    fn next_due(&self) -> Option<Ns> {
        let rate = self.served.rate?;
        let n = self.sent;
        (n < self.served.requests).then(|| self.started + (u128::from(n) * 1_000_000_000 / u128::from(rate)) as Ns)
    }

    /// Puts the requests that reach the NIC by `now` in `arrivals`, as (connection, count),
    /// after sending an open loop's requests due by then.
    pub fn due(&mut self, now: Ns, arrivals: &mut Vec<(usize, u64)>) {
        if self.asked.is_some_and(|asked| asked <= now) {
            self.asked = None;
        }
        while let Some(due) = self.next_due().filter(|&due| due <= now) {
            let conn = (self.sent % self.served.clients as u64) as usize;
            self.send(conn, 1, due, due);
        }
        while let Some(&Reverse((at, conn, requests))) = self.on_the_way.peek()
            && at <= now
        {
            self.on_the_way.pop();
            arrivals.push((conn, requests));
        }
    }

    /// When the engine is to call [`Load::due`] next, if that is earlier than it was asked
    /// to before (so that each time is asked for once).
    pub fn next_call(&mut self) -> Option<Ns> {
        let arrival = self.on_the_way.peek().map(|Reverse((at, ..))| *at);
        let next = arrival.into_iter().chain(self.next_due()).min()?;
        if self.asked.is_some_and(|asked| asked <= next) {
            return None;
        }
        self.asked = Some(next);
        Some(next)
    }

    /// The replies to `requests` requests of connection `conn` (its oldest in flight) left the
    /// host side at `now`: the client has them after the reply path, and in a closed loop
    /// sends as many again.
    pub fn replied(&mut self, conn: usize, requests: u64, now: Ns) {
        let received = now + self.served.reply_path;
        for _ in 0..requests {
            let sent = self.in_flight[conn].pop_front().expect("a reply to a request in flight");
            self.latencies.record(received - sent);
        }
        if self.served.rate.is_none() {
            self.send(conn, requests, received, received);
        }
    }

    /// The latency percentiles of the requests answered, if any was.
    pub fn latency(&self) -> Option<Latency> {
        self.latencies.latency()
    }
}

/// Sub-buckets per power of two: latencies are kept within 1/64 of their value.
const SUB_BUCKETS: u64 = 64;

/// Latencies in buckets of 1/64 of their power of two (exact below 128 ns), and the
/// largest: a run's worth in a few kilobytes.
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: Ns,
}

impl Histogram {
    fn record(&mut self, ns: Ns) {
        let bucket = bucket(ns);
        if bucket >= self.counts.len() {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// The latency below which a fraction `q` of the requests' lie (the top of its bucket).
    fn quantile(&self, q: f64) -> Ns {
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return top(bucket).min(self.max);
            }
        }
        self.max
    }

    fn latency(&self) -> Option<Latency> {
        (self.total > 0).then(|| Latency {
            p50_ns: self.quantile(0.5),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.max,
        })
    }
}

/// The bucket of latency `ns`: the value itself below `2 * SUB_BUCKETS`, then
/// `SUB_BUCKETS` buckets per power of two.
fn bucket(ns: Ns) -> usize {
    if ns < 2 * SUB_BUCKETS {
        return ns as usize;
    }
    let shift = Ns::BITS - 1 - ns.leading_zeros() - SUB_BUCKETS.trailing_zeros();
    (shift as u64 * SUB_BUCKETS + (ns >> shift)) as usize
}

/// The largest latency in bucket `bucket`.
fn top(bucket: usize) -> Ns {
    let bucket = bucket as u64;
    if bucket < 2 * SUB_BUCKETS {
        return bucket;
    }
    let shift = bucket / SUB_BUCKETS - 1;
    ((bucket - shift * SUB_BUCKETS) << shift) + ((1 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(requests: u64, clients: usize, pipeline: usize, rate: Option<u64>) -> Served {
        Served { requests, clients, pipeline, rate, request_path: 10, reply_path: 20, request_host: 0, reply_host: 0 }
    }

    /// What arrives by `now`.
    fn due(load: &mut Load, now: Ns) -> Vec<(usize, u64)> {
        let mut arrivals = Vec::new();
        load.due(now, &mut arrivals);
        arrivals
    }

    #[test]
    fn a_closed_loop_keeps_its_requests_in_flight_until_the_run_s_are_sent() {
        let mut load = Load::new(served(10, 2, 4, None));
        load.start(100);
        assert_eq!(load.next_call(), Some(110));
        assert_eq!(load.next_call(), None, "asked once");
        assert_eq!(due(&mut load, 109), []);
        assert_eq!(due(&mut load, 110), [(0, 4), (1, 4)]);
        // Three replies of connection 0 at 200 reach the client at 220, which sends two
        // more, the run's last; a reply of connection 1 then sends nothing.
        load.replied(0, 3, 200);
        load.replied(1, 1, 250);
        assert_eq!(load.next_call(), Some(230));
        assert_eq!(due(&mut load, 300), [(0, 2)]);
        assert_eq!(load.next_call(), None, "the run's requests are all sent");
        assert_eq!((load.in_flight[0].len(), load.in_flight[1].len()), (3, 3));
        let latency = load.latency().unwrap();
        assert_eq!((latency.p50_ns, latency.max_ns), (120, 170));
    }

    #[test]
    fn an_open_loop_sends_each_request_when_due_whatever_came_back() {
        let mut load = Load::new(served(5, 2, 1, Some(1_000_000)));
        load.start(100);
        assert_eq!(load.next_call(), Some(100));
        // A request a µs from 100, to the connections in turn, each arriving 10 ns later.
        assert_eq!(due(&mut load, 2_110), [(0, 1), (1, 1), (0, 1)]);
        assert_eq!(load.next_call(), Some(3_100));
        assert_eq!(load.in_flight[0], [100, 2_100]);
        // Connection 0 has two in flight: the next due goes to connection 1 anyway.
        assert_eq!(due(&mut load, 4_110), [(1, 1), (0, 1)]);
        assert_eq!(load.next_call(), None, "the run's requests are all sent");
        // A reply sends nothing; its latency counts from when the request was due.
        load.replied(0, 1, 5_000);
        assert_eq!(load.next_call(), None);
        assert_eq!(load.latency().unwrap().max_ns, 5_020 - 100);
    }

    #[test]
    fn the_histogram_keeps_latencies_within_a_64th_and_the_largest_exactly() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.latency(), None);
        for ns in 1..=100_000 {
            histogram.record(ns);
        }
        let Latency { p50_ns, p99_ns, p999_ns, max_ns } = histogram.latency().unwrap();
        for (got, wanted) in [(p50_ns, 50_000), (p99_ns, 99_000), (p999_ns, 99_900)] {
            assert!(got >= wanted && got - wanted <= wanted / 64, "{got} for {wanted}");
        }
        assert_eq!(max_ns, 100_000);
        for ns in [0, 1, 127, 128, 129, 1000, 1 << 40, u64::MAX] {
            assert!(top(bucket(ns)) >= ns && top(bucket(ns)) - ns <= ns / 64, "{ns}");
        }
        assert_eq!(bucket(127) + 1, bucket(128));
    }
}
