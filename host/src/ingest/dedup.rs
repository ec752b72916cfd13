//! Drops events already accepted: after a failed or slow answer the apiserver
//! resends the whole batch, and each event must be evaluated once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// A bounded memory of (tenant, auditID, stage): the oldest keys are
/// forgotten first. Retries arrive within seconds, so a window of the last
/// N events is enough.
pub struct Dedup {
    inner: Mutex<(HashSet<(String, String, String)>, VecDeque<(String, String, String)>)>,
    capacity: usize,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
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
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if set.contains(&key) {
            return true;
        }
        if order.len() >= self.capacity {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        set.insert(key.clone());
        order.push_back(key);
        false
    }

    /// Forgets keys, e.g. when their batch could not be queued and the
    /// apiserver will send them again.
    pub fn forget<'a>(&self, tenant: &str, keys: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, _) = &mut *guard;
        for (audit_id, stage) in keys {
            set.remove(&(tenant.to_string(), audit_id.to_string(), stage.to_string()));
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
        assert!(!d.seen("t", "a", "RequestReceived"), "another stage is another event");
        assert!(!d.seen("u", "a", "ResponseComplete"), "another tenant is another event");
        assert!(!d.seen("t", "a", "ResponseComplete"), "evicted by capacity");
        assert!(!d.seen("t", "", "ResponseComplete"));
        assert!(!d.seen("t", "", "ResponseComplete"));
        d.forget("t", [("a", "ResponseComplete")].into_iter());
        assert!(!d.seen("t", "a", "ResponseComplete"));
    }
}
