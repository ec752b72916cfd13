//! Drops events already accepted: after a failed or slow answer the apiserver
//! resends the whole batch, and each event must be evaluated once.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// A bounded memory of (tenant, auditID, stage): the oldest keys are
/// forgotten first. Retries arrive within seconds, so a window of the last
/// N events is enough.
///
/// Each key is kept as a 128-bit keyed hash, not as its strings: 16 bytes
/// twice (set and order) however long the tenant or auditID, so the memory
/// the window takes is fixed by its capacity (about 5 MB for the default
/// 100,000). The hash is SipHash under two random keys drawn at start, so a
/// sender cannot craft two keys that collide; by chance, two of the window's
/// keys collide with a probability under 10^-28.
pub struct Dedup {
    inner: Mutex<Remembered>,
    capacity: usize,
    hashers: [RandomState; 2],
    keys_gauge: metrics::Gauge,
}

/// The hash of (tenant, auditID, stage).
type Key = u128;

#[derive(Default)]
struct Remembered {
    keys: HashSet<Key>,
    /// Oldest first. A forgotten key may linger here (at most `capacity`
    /// of them); evicting it later only makes a duplicate possible, never a
    /// loss.
    order: VecDeque<Key>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            inner: Mutex::new(Remembered::default()),
            capacity,
            hashers: [RandomState::new(), RandomState::new()],
            keys_gauge: metrics::gauge!("peregrine_dedup_keys"),
        }
    }

    fn key(&self, tenant: &str, audit_id: &str, stage: &str) -> Key {
        // `str`'s Hash ends each string with a marker, so ("ab", "c") and
        // ("a", "bc") differ.
        let half = |s: &RandomState| s.hash_one((tenant, audit_id, stage));
        (u128::from(half(&self.hashers[0])) << 64) | u128::from(half(&self.hashers[1]))
    }

    /// Whether (tenant, audit_id, stage) was seen; remembers it if not.
    /// Events without an auditID cannot be told apart and always pass.
    pub fn seen(&self, tenant: &str, audit_id: &str, stage: &str) -> bool {
        if audit_id.is_empty() || self.capacity == 0 {
            return false;
        }
        let key = self.key(tenant, audit_id, stage);
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.keys.contains(&key) {
            return true;
        }
        // Room is counted in keys, not in entries of `order`: forgotten keys
        // that linger there must not shrink the window. `order` holds every
        // remembered key, so this ends.
        while (r.keys.len() >= self.capacity || r.order.len() >= 2 * self.capacity)
            && let Some(old) = r.order.pop_front()
        {
            r.keys.remove(&old);
        }
        r.keys.insert(key);
        r.order.push_back(key);
        self.keys_gauge.set(r.keys.len() as f64);
        false
    }

    /// Forgets keys, e.g. when their batch could not be queued and the
    /// apiserver will send them again.
    pub fn forget<'a>(&self, tenant: &str, keys: impl Iterator<Item = (&'a str, &'a str)>) {
        let keys: Vec<Key> = keys
            .map(|(audit_id, stage)| self.key(tenant, audit_id, stage))
            .collect();
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            r.keys.remove(&k);
        }
        // The keys forgotten are those of a request just seen (its batch
        // was refused with 429), so they are at the back of `order`: drop
        // them there, or every refused request would leave its keys behind.
        while r.order.back().is_some_and(|k| !r.keys.contains(k)) {
            r.order.pop_back();
        }
        self.keys_gauge.set(r.keys.len() as f64);
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_capacity_per_tenant_and_stage() {
        let d = Dedup::new(2);
        assert!(!d.seen("t", "a", "ResponseComplete"));
        assert!(d.seen("t", "a", "ResponseComplete"));
        assert!(
            !d.seen("t", "a", "RequestReceived"),
            "another stage is another event"
        );
        assert!(
            !d.seen("u", "a", "ResponseComplete"),
            "another tenant is another event"
        );
        assert!(!d.seen("t", "a", "ResponseComplete"), "evicted by capacity");
        assert!(!d.seen("t", "", "ResponseComplete"));
        assert!(!d.seen("t", "", "ResponseComplete"));
        d.forget("t", [("a", "ResponseComplete")].into_iter());
        assert!(!d.seen("t", "a", "ResponseComplete"));
    }

    #[test]
    fn holds_at_most_its_capacity_and_forgets_the_oldest_first() {
        let d = Dedup::new(1_000);
        for i in 0..10_000 {
            assert!(!d.seen("t", &format!("id-{i}"), "ResponseComplete"));
            assert!(d.len() <= 1_000);
        }
        assert_eq!(d.len(), 1_000);
        // The newest thousand are remembered, everything older is forgotten.
        assert!(d.seen("t", "id-9000", "ResponseComplete"));
        assert!(d.seen("t", "id-9999", "ResponseComplete"));
        assert!(!d.seen("t", "id-8999", "ResponseComplete"));
        assert_eq!(d.len(), 1_000, "remembering id-8999 evicted id-9000");
        assert!(!d.seen("t", "id-9000", "ResponseComplete"));
        // Requests refused with 429 and sent again do not shrink the window:
        // their forgotten keys do not linger in it.
        for round in 0..50 {
            let ids: Vec<String> = (0..100).map(|i| format!("retry-{round}-{i}")).collect();
            for id in &ids {
                assert!(!d.seen("t", id, "ResponseComplete"));
            }
            d.forget("t", ids.iter().map(|id| (id.as_str(), "ResponseComplete")));
            for id in &ids {
                assert!(!d.seen("t", id, "ResponseComplete"), "forgotten, so new");
            }
        }
        assert_eq!(d.len(), 1_000);
        assert!(d.seen("t", "retry-49-0", "ResponseComplete"));
        assert!(
            d.seen("t", "retry-40-0", "ResponseComplete"),
            "the last 1,000 kept"
        );
        assert!(!d.seen("t", "retry-39-99", "ResponseComplete"));
        // A key's parts do not run together.
        let d = Dedup::new(10);
        assert!(!d.seen("ab", "c", "s"));
        assert!(!d.seen("a", "bc", "s"));
        assert!(!d.seen("a", "b", "cs"));
    }
}
