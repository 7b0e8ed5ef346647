//! The key-value table of `kv`: string keys and values, sharded into buckets, each under a
//! lock of the runtime's spinlock family, so that the server's threads contend as the
//! lock study's do. Expiry is lazy (an expired key is removed when it is next looked at), as
//! Redis does besides its sampling.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::record::{FNV_OFFSET, fnv1a_bytes};
use crate::runtime::Lock;

/// A value and when it expires (ms on the server's clock).
#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expires_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|at| at > now_ms)
    }
}

/// One bucket of the table.
#[derive(Debug, Default)]
pub struct Shard {
    map: BTreeMap<Vec<u8>, Entry>,
}

/// What an update does to its key.
#[derive(Debug)]
pub enum Change {
    Keep,
    Put(Entry),
    Delete,
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The table would hold more than its memory limit.
    OutOfMemory,
    /// The value would be longer than the longest allowed.
    TooLarge,
}

/// The table: shards under locks of type `L`, and what it may hold.
pub struct Store<L> {
    shards: Vec<L>,
    /// Bytes of keys and values held (approximate under concurrent writes to one key).
    used: AtomicUsize,
    max_memory: usize,
    max_value: usize,
}

impl<L: Lock<Shard>> Store<L> {
    /// A table of `shards` shards (at least one), each made by `lock` from an empty shard,
    /// holding at most `max_memory` bytes of keys and values, none longer than `max_value`.
    pub fn new(shards: usize, max_memory: usize, max_value: usize, lock: impl Fn(Shard) -> L) -> Store<L> {
        Store {
            shards: (0..shards.max(1)).map(|_| lock(Shard::default())).collect(),
            used: AtomicUsize::new(0),
            max_memory,
            max_value,
        }
    }

    /// The shards' locks, for their counters.
    pub fn shards(&self) -> &[L] {
        &self.shards
    }

    /// Looks `key` up under its shard's lock and applies what `f` makes of its live entry
    /// (`None` if absent or expired): its result, or why the change was refused (then the
    /// table is as it was).
    pub fn update<T>(
        &self,
        key: &[u8],
        now_ms: u64,
        f: impl FnOnce(Option<&Entry>) -> (Change, T),
    ) -> Result<T, StoreError> {
        let shard = &self.shards[fnv1a_bytes(FNV_OFFSET, key) as usize % self.shards.len()];
        let mut shard = shard.lock();
        let current = shard.map.get(key);
        let live = current.filter(|entry| entry.live(now_ms));
        let (change, result) = f(live);
        let old = current.map_or(0, |entry| key.len() + entry.value.len());
        match change {
            Change::Keep if live.is_some() || current.is_none() => {}
            // An expired entry goes now that it has been seen.
            Change::Keep | Change::Delete => {
                if shard.map.remove(key).is_some() {
                    self.used.fetch_sub(old, Ordering::Relaxed);
                }
            }
            Change::Put(entry) => {
                if entry.value.len() > self.max_value {
                    return Err(StoreError::TooLarge);
                }
                let new = key.len() + entry.value.len();
                if new > old && self.used.load(Ordering::Relaxed) + (new - old) > self.max_memory {
                    return Err(StoreError::OutOfMemory);
                }
                match shard.map.get_mut(key) {
                    Some(slot) => *slot = entry,
                    None => _ = shard.map.insert(key.to_vec(), entry),
                }
                self.used.fetch_add(new, Ordering::Relaxed);
                self.used.fetch_sub(old, Ordering::Relaxed);
            }
        }
        Ok(result)
    }

    /// Keys held (expired ones not yet looked at included, as Redis's DBSIZE).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().map.len()).sum()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every key.
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let freed: usize = shard.map.iter().map(|(key, entry)| key.len() + entry.value.len()).sum();
            shard.map.clear();
            self.used.fetch_sub(freed, Ordering::Relaxed);
        }
    }

    /// Bytes of keys and values held.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}
