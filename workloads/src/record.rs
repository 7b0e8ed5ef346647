//! The result record a workload run produces, reported as JSON.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Counters of one lock (or of all locks of a kind, added up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStats {
    pub acquisitions: u64,
    /// Acquisitions that found the lock held.
    pub contended: u64,
    /// TSC cycles spent waiting for the lock.
    pub spin_cycles: u64,
    /// Paravirtual locks: waits that spun past the first bound and looked at the holder.
    #[serde(default)]
    pub slow_paths: u64,
    /// Paravirtual locks: yields to the preempted VCPU the waiter waits for.
    #[serde(default)]
    pub directed_yields: u64,
    /// Paravirtual locks: waits that blocked the VCPU until kicked.
    #[serde(default)]
    pub blocks: u64,
    /// Paravirtual locks: kicks sent by unlockers to blocked waiters.
    #[serde(default)]
    pub kicks: u64,
    /// Paravirtual locks: blocks that ended without the waiter's turn having come.
    #[serde(default)]
    pub spurious_wakeups: u64,
    /// Queued locks: acquisitions that took the lock while others were queued for it.
    #[serde(default)]
    pub steals: u64,
}

impl LockStats {
    /// All zero; `Default` in a `const` context.
    pub const ZERO: LockStats = LockStats {
        acquisitions: 0,
        contended: 0,
        spin_cycles: 0,
        slow_paths: 0,
        directed_yields: 0,
        blocks: 0,
        kicks: 0,
        spurious_wakeups: 0,
        steals: 0,
    };

    pub fn add(&mut self, other: LockStats) {
        self.acquisitions += other.acquisitions;
        self.contended += other.contended;
        self.spin_cycles += other.spin_cycles;
        self.slow_paths += other.slow_paths;
        self.directed_yields += other.directed_yields;
        self.blocks += other.blocks;
        self.kicks += other.kicks;
        self.spurious_wakeups += other.spurious_wakeups;
        self.steals += other.steals;
    }
}

/// Latency percentiles of a served workload's requests, as its clients saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// What one run of a workload did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub workload: String,
    /// "guest" or "native".
    pub runtime: String,
    /// Spinlock family, one of [`crate::LOCK_FAMILIES`].
    pub locks: String,
    /// CPUs (VCPUs) the runtime had.
    pub cpus: u32,
    /// Every parameter, defaults included.
    pub params: BTreeMap<String, String>,
    pub elapsed_ns: u64,
    /// Units of work done (see `unit`).
    pub ops: u64,
    /// What one op is: "tasks", "timesteps", "ops", "items".
    pub unit: String,
    /// Digest of the result; equal across runs that did the same work.
    pub checksum: u64,
    /// Ops done by each thread.
    pub per_thread: Vec<u64>,
    /// The workload's locks, added up, if it uses any.
    pub lock_stats: Option<LockStats>,
    /// A served workload: its requests' latency, as its clients saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

impl Record {
    /// Ops per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 * 1e9 / self.elapsed_ns.max(1) as f64
    }

    /// The record as one line of JSON, as the guest reports it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record is plain data and always serializes")
    }

    /// Reads a record written by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Record, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// One line for people, e.g. `cpu: 1234.5 tasks/s (400 tasks in 0.324 s, 2 threads, ...)`.
    pub fn summary(&self) -> String {
        let mut line = alloc::format!(
            "{}: {:.1} {}/s ({} {} in {:.3} s, {} threads on {} {} CPUs, checksum {:#018x})",
            self.workload,
            self.rate(),
            self.unit,
            self.ops,
            self.unit,
            self.elapsed_ns as f64 / 1e9,
            self.per_thread.len(),
            self.cpus,
            self.runtime,
            self.checksum,
        );
        if let Some(latency) = self.latency {
            line += &alloc::format!(
                "; latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
                latency.p50_ns as f64 / 1e3,
                latency.p99_ns as f64 / 1e3,
                latency.p999_ns as f64 / 1e3,
                latency.max_ns as f64 / 1e3
            );
        }
        if let Some(stats) = self.lock_stats {
            line += &alloc::format!(
                "; locks: {} acquisitions, {} contended, {} cycles waiting",
                stats.acquisitions,
                stats.contended,
                stats.spin_cycles
            );
            if crate::queued(&self.locks) {
                line += &alloc::format!(" ({} steals)", stats.steals);
            }
            if crate::paravirtual(&self.locks) {
                line += &alloc::format!(
                    " (pv: {} slow paths, {} directed yields, {} blocks, {} kicks, {} spurious wake-ups)",
                    stats.slow_paths,
                    stats.directed_yields,
                    stats.blocks,
                    stats.kicks,
                    stats.spurious_wakeups
                );
            }
        }
        line
    }
}

/// FNV-1a, for checksums that must not depend on the platform.
pub fn fnv1a(hash: u64, value: u64) -> u64 {
    fnv1a_bytes(hash, &value.to_le_bytes())
}

/// FNV-1a over bytes.
pub fn fnv1a_bytes(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
