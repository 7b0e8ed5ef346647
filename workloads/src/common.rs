//! Pieces every workload uses: the thread-count parameter, static work splitting, a PRNG,
//! the unit of busy work, and the record skeleton.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use crate::params::{ParamError, ParamSpec, Params};
use crate::record::Record;
use crate::runtime::Runtime;

/// Most threads a workload runs.
const MAX_THREADS: u64 = 256;

/// The `threads` parameter of the workloads that take one.
pub(crate) const THREADS: ParamSpec = ParamSpec::int("threads", "0", "threads, 1-256 (0: one per CPU)");

/// The `threads` parameter's value: 0 means one thread per CPU.
pub(crate) fn threads<R: Runtime>(rt: &R, params: &Params) -> Result<usize, ParamError> {
    thread_count(rt, params, "threads", 1, "a thread count is 1-256 (0: one per CPU)")
}

/// The thread count in parameter `key`: `min..=256`, 0 meaning one per CPU but at least `min`;
/// `why` says so when it is out of range.
pub(crate) fn thread_count<R: Runtime>(
    rt: &R,
    params: &Params,
    key: &str,
    min: u64,
    why: &'static str,
) -> Result<usize, ParamError> {
    let value = match params.u64(key) {
        0 => (rt.cpus() as u64).max(min),
        n => n,
    };
    if (min..=MAX_THREADS).contains(&value) {
        Ok(value as usize)
    } else {
        Err(ParamError::OutOfRange { key: key.to_string(), value, why })
    }
}

/// Part `i` of `0..total` cut into `parts` contiguous ranges whose lengths differ by at most one.
pub fn share(total: usize, parts: usize, i: usize) -> Range<usize> {
    let (base, extra) = (total / parts, total % parts);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// xorshift64: a small deterministic PRNG, the same on every platform.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator whose sequence depends only on `seed` (any value, zero included).
    pub(crate) fn new(seed: u64) -> Self {
        // One splitmix64 step spreads small seeds over the state; xorshift needs it non-zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)).max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `units` steps of an integer mixing function: the unit of busy work. Each step depends on
/// the one before, so the loop can be neither vectorized nor skipped.
pub(crate) fn work(mut x: u64, units: u64) -> u64 {
    for _ in 0..units {
        x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(0x632b_e59b_d9b4_e019);
    }
    x
}

/// A record of `workload` on `rt` with `params`, counting in `unit`; the workload fills in
/// what it measured.
pub(crate) fn record<R: Runtime>(rt: &R, workload: &str, params: &Params, unit: &str) -> Record {
    Record {
        workload: workload.to_string(),
        runtime: rt.name().to_string(),
        locks: rt.lock_family().to_string(),
        cpus: rt.cpus() as u32,
        params: params.values().clone(),
        elapsed_ns: 0,
        ops: 0,
        unit: String::from(unit),
        checksum: 0,
        per_thread: Vec::new(),
        lock_stats: None,
        latency: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for (total, parts) in [(10, 3), (3, 5), (0, 2), (512, 4), (7, 1)] {
            let ranges: Vec<_> = (0..parts).map(|i| share(total, parts, i)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, total);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(ranges.iter().all(|r| r.len() == total / parts || r.len() == total / parts + 1));
        }
    }

    #[test]
    fn xorshift_is_deterministic_and_seeded() {
        let (mut a, mut b, mut c) = (XorShift::new(0), XorShift::new(0), XorShift::new(1));
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert!((0..1000).map(|_| a.next_f64()).all(|f| (0.0..1.0).contains(&f)));
    }
}
