//! A small bounded map whose entries expire: what the hot request path keeps of records it
//! would otherwise read from the store on every request — the user of a token
//! ([`crate::http::UserAuth`]) and a vehicle of a command (`crate::commands`).
//!
//! An entry lives at most its cache's ttl from the moment it was read from the store (a hit
//! does not extend it), so a change made elsewhere — by the CLI on the same database, or by
//! another server instance on a shared PostgreSQL — shows here within the ttl. A change made
//! in this process [`clear`](TtlCache::clear)s the cache, and the generation taken before a
//! store read ([`generation`](TtlCache::generation)) keeps a read that raced with the clear
//! from being remembered.
//!
//! What it does not do: no least-recently-used order — when it is full, expired entries go
//! first, then everything (the next requests read the store again); no negative entries (a
//! miss always goes to the store, so a record created elsewhere is seen at once). Lookups take
//! one mutex, held for a hash-map operation only. A cache crate (`moka`) would bring loaders
//! and eviction policies this does not need.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A bounded map of values that expire `ttl` after they were inserted.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Entries<K, V>>,
}

#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, (V, Instant)>,
    generation: u64,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries, each kept for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<K, V> {
        TtlCache {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                generation: 0,
            }),
        }
    }

    /// How long an entry is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key` when it was inserted less than the ttl ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.map.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// The current generation: take it before reading the store, hand it to
    /// [`insert`](Self::insert) after.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Remembers `value` for `key` unless the cache was cleared since `generation` was taken
    /// (the value read may predate the change that cleared it). When full, drops the expired
    /// entries, and everything when none had expired.
    pub fn insert(&self, key: K, value: V, generation: u64) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.generation != generation {
            return;
        }
        if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            entries.map.retain(|_, (_, expires)| *expires > now);
            if entries.map.len() >= self.capacity {
                entries.map.clear();
            }
        }
        entries.map.insert(key, (value, now + self.ttl));
    }

    /// Forgets everything, and refuses inserts of values read before now.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.generation = entries.generation.wrapping_add(1);
    }

    /// Entries held (expired ones included until they are looked up or evicted).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_are_bounded() {
        let cache = TtlCache::new(Duration::from_millis(50), 3);
        let g = cache.generation();
        for k in 0..3 {
            cache.insert(k, k * 10, g);
        }
        assert_eq!(cache.get(&1), Some(10));
        // Full with live entries: the fourth clears the rest rather than growing.
        cache.insert(3, 30, g);
        assert_eq!(cache.len(), 1);
        assert_eq!((cache.get(&0), cache.get(&3)), (None, Some(30)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&3), None, "an expired entry was served");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_older_than_a_clear_is_not_remembered() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        let before = cache.generation();
        cache.insert("a", 1, before);
        cache.clear();
        assert_eq!(cache.get(&"a"), None);
        // A store read that started before the clear (say, before a revocation) finishes now.
        cache.insert("b", 2, before);
        assert_eq!(cache.get(&"b"), None);
        cache.insert("b", 2, cache.generation());
        assert_eq!(cache.get(&"b"), Some(2));
    }
}
