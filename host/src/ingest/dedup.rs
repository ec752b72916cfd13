//! Drops events already accepted: after a failed or slow answer the apiserver
//! resends the whole batch, and each event must be evaluated once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// A bounded memory of (tenant, auditID, stage): the oldest keys are
/// forgotten first. Retries arrive within seconds, so a window of the last
/// N events is enough.
pub struct Dedup {
    inner: Mutex<Remembered>,
    capacity: usize,
}

/// (tenant, auditID, stage)
type Key = (String, String, String);

#[derive(Default)]
struct Remembered {
    keys: HashSet<Key>,
    /// Oldest first. A forgotten key may linger here; evicting it later only
    /// makes a duplicate possible, never a loss.
    order: VecDeque<Key>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            inner: Mutex::new(Remembered::default()),
            capacity,
        }
    }

    /// Whether (tenant, audit_id, stage) was seen; remembers it if not.
    /// Events without an auditID cannot be told apart and always pass.
    pub fn seen(&self, tenant: &str, audit_id: &str, stage: &str) -> bool {
        if audit_id.is_empty() || self.capacity == 0 {
            return false;
        }
        let key = (tenant.to_string(), audit_id.to_string(), stage.to_string());
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.keys.contains(&key) {
            return true;
        }
        if r.order.len() >= self.capacity
            && let Some(old) = r.order.pop_front()
        {
            r.keys.remove(&old);
        }
        r.keys.insert(key.clone());
        r.order.push_back(key);
        false
    }

    /// Forgets keys, e.g. when their batch could not be queued and the
    /// apiserver will send them again.
    pub fn forget<'a>(&self, tenant: &str, keys: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (audit_id, stage) in keys {
            r.keys
                .remove(&(tenant.to_string(), audit_id.to_string(), stage.to_string()));
        }
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
}
