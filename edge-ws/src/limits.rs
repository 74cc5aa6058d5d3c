//! What one client may hold of this edge: WebSocket connections per user and per source address
//! ([`Slots`]), and API calls a second per source address and per session ([`RateMap`]). Both
//! count in this process's memory, exactly and without I/O; they bound one edge, not the cluster
//! (`docs/operations.md`, "Per-client limits").

use crate::ratelimit::TokenBucket;
use crate::EdgeSettings;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use topics::Id;

/// Open connections (and handshakes under way) per key. A key is tracked only while it holds a
/// slot, so the map never has more entries than there are connections.
pub struct Slots<K> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            counts: Arc::default(),
        }
    }
}

/// One connection's slot; dropping it gives the slot back, however the connection ended.
#[must_use = "the slot is released when this is dropped"]
pub struct Slot<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// Take a slot for `key` unless it already holds `cap`.
    pub fn acquire(&self, key: K, cap: usize) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().expect("slots");
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Slots `key` holds.
    pub fn held(&self, key: &K) -> usize {
        self.counts
            .lock()
            .expect("slots")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys holding at least one slot.
    pub fn keys(&self) -> usize {
        self.counts.lock().expect("slots").len()
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("slots");
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A token bucket per key with bounded memory: at most `max_keys` buckets. Keys live in two
/// generations; a key used again moves to the current one, and when the current one holds half
/// of `max_keys` the previous generation is dropped. A dropped key starts again with a full
/// bucket, so eviction can only make the limit more lenient for a client that was idle while
/// more than `max_keys / 2` others called, never stricter.
pub struct RateMap {
    rate: u32,
    burst: u32,
    max_keys: usize,
    gens: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, TokenBucket>,
    previous: HashMap<String, TokenBucket>,
}

impl RateMap {
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        RateMap {
            rate,
            burst,
            max_keys: max_keys.max(2),
            gens: Mutex::default(),
        }
    }

    /// Take one token from `key`'s bucket, or say how long until it has one.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut g = self.gens.lock().expect("rate map");
        if let Some(b) = g.current.get_mut(key) {
            return b.take(now);
        }
        let bucket = g
            .previous
            .remove(key)
            .unwrap_or_else(|| TokenBucket::new(self.rate, self.burst, now));
        if g.current.len() >= self.max_keys / 2 {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.entry(key.to_string()).or_insert(bucket).take(now)
    }

    /// Buckets held (never more than `max_keys`).
    pub fn len(&self) -> usize {
        let g = self.gens.lock().expect("rate map");
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every per-client limit of one edge.
pub struct Limits {
    /// WebSocket connections per user (`max_connections_per_user`).
    pub user_conns: Slots<Id>,
    /// WebSocket connections per source address (`max_connections_per_address`).
    pub address_conns: Slots<String>,
    /// API calls per source address.
    pub api_per_address: RateMap,
    /// API calls per session (keyed by the token's hash).
    pub api_per_session: RateMap,
}

impl Limits {
    pub fn new(s: &EdgeSettings) -> Self {
        Limits {
            user_conns: Slots::default(),
            address_conns: Slots::default(),
            api_per_address: RateMap::new(
                s.api_requests_per_second_per_address,
                s.api_burst_per_address,
                s.api_rate_keys_max,
            ),
            api_per_session: RateMap::new(
                s.api_requests_per_second_per_session,
                s.api_burst_per_session,
                s.api_rate_keys_max,
            ),
        }
    }

    /// May an API call from `address` (when known) with session `token_hash` (when it has one)
    /// go on? The address is charged first, so a client inventing tokens is still bounded by its
    /// address. `Err`: how long until it may.
    pub fn api(
        &self,
        address: Option<&str>,
        token_hash: Option<&str>,
        now: Instant,
    ) -> Result<(), Duration> {
        if let Some(a) = address {
            self.api_per_address.check(a, now)?;
        }
        if let Some(t) = token_hash {
            self.api_per_session.check(t, now)?;
        }
        Ok(())
    }
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least 1, at most an hour.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let ms = wait.as_millis().min(3_600_000) as u64;
    ms.div_ceil(1000).clamp(1, 3_600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_given_back_on_drop() {
        let s: Slots<Id> = Slots::default();
        let a: Vec<_> = (0..3).map(|_| s.acquire(Id(1), 3)).collect();
        assert!(a.iter().all(Option::is_some));
        assert!(s.acquire(Id(1), 3).is_none(), "the fourth is refused");
        assert_eq!(s.held(&Id(1)), 3);
        let other = s.acquire(Id(2), 3).expect("other keys are separate");
        let mut a = a;
        a.pop();
        assert_eq!(s.held(&Id(1)), 2, "dropping a slot gives it back");
        let again = s
            .acquire(Id(1), 3)
            .expect("a freed slot can be taken again");
        assert!(s.acquire(Id(1), 3).is_none());
        drop(a);
        drop(again);
        drop(other);
        assert_eq!(s.held(&Id(1)), 0);
        assert_eq!(s.keys(), 0, "keys without slots are forgotten");
        assert!(s.acquire(Id(3), 0).is_none(), "a cap of 0 refuses all");
        assert_eq!(s.keys(), 0, "a refusal leaves no entry");
    }

    #[test]
    fn slots_are_given_back_when_a_task_holding_one_is_aborted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let s: Slots<String> = Slots::default();
        let slot = s.acquire("1.2.3.4".into(), 1).unwrap();
        rt.block_on(async {
            let t = tokio::spawn(async move {
                let _slot = slot;
                std::future::pending::<()>().await
            });
            tokio::task::yield_now().await;
            t.abort();
            assert!(t.await.unwrap_err().is_cancelled());
        });
        assert_eq!(s.held(&"1.2.3.4".to_string()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_map_limits_each_key_and_refills_over_time() {
        let now = || tokio::time::Instant::now().into_std();
        let m = RateMap::new(2, 3, 100);
        for _ in 0..3 {
            assert_eq!(m.check("a", now()), Ok(()));
        }
        let wait = m.check("a", now()).unwrap_err();
        assert!(wait > Duration::from_millis(499) && wait <= Duration::from_millis(500));
        assert_eq!(
            m.check("b", now()),
            Ok(()),
            "another key has its own bucket"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(m.check("a", now()), Ok(()), "one token after 1/rate");
        assert!(m.check("a", now()).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(
                m.check("a", now()),
                Ok(()),
                "refilled to the burst, no more"
            );
        }
        assert!(m.check("a", now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_map_memory_is_bounded_and_recent_keys_survive() {
        let now = || tokio::time::Instant::now().into_std();
        let m = RateMap::new(1, 1, 10);
        assert!(m.is_empty());
        assert_eq!(m.check("hot", now()), Ok(()));
        assert!(m.check("hot", now()).is_err());
        for i in 0..1000 {
            let _ = m.check(&format!("k{i}"), now());
            // the hot key keeps calling: it stays tracked, so it stays limited
            if i % 3 == 0 {
                assert!(m.check("hot", now()).is_err(), "hot key evicted at {i}");
            }
            assert!(m.len() <= 10, "{} buckets", m.len());
        }
        assert!(!m.is_empty());
        // A key idle while many others called is forgotten and starts full.
        assert_eq!(m.check("k0", now()), Ok(()));
        assert_eq!(RateMap::new(1, 1, 0).max_keys, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn api_calls_are_charged_to_the_address_then_the_session() {
        let now = || tokio::time::Instant::now().into_std();
        let l = Limits::new(&EdgeSettings {
            api_requests_per_second_per_address: 1,
            api_burst_per_address: 4,
            api_requests_per_second_per_session: 1,
            api_burst_per_session: 2,
            ..Default::default()
        });
        assert_eq!(l.api(Some("1.1.1.1"), Some("t1"), now()), Ok(()));
        assert_eq!(l.api(Some("1.1.1.1"), Some("t1"), now()), Ok(()));
        assert!(
            l.api(Some("1.1.1.1"), Some("t1"), now()).is_err(),
            "session"
        );
        // New tokens do not escape the address's bucket (it was charged 3 times already).
        assert_eq!(l.api(Some("1.1.1.1"), Some("t2"), now()), Ok(()));
        assert!(
            l.api(Some("1.1.1.1"), Some("t3"), now()).is_err(),
            "address"
        );
        assert_eq!(l.api(Some("2.2.2.2"), None, now()), Ok(()));
        assert_eq!(l.api(None, None, now()), Ok(()), "nothing to charge");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.api(Some("1.1.1.1"), Some("t1"), now()), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::MAX), 3_600);
    }
}
