//! Whether a module is fit to keep evaluating, judged per tenant.
//!
//! A failed call costs its event a rule-error alert and nothing more: the
//! module gets a fresh instance and goes on with the next event. Only a
//! module that fails on ordinary events is taken off, and that is judged
//! over distinct events and time, never over a run of calls: many failures
//! on one event (retries, several stages), or a burst of crafted events in
//! one batch, must not be enough. A module is quarantined for a tenant when,
//! within one window, it failed on at least `failed_events` distinct events,
//! the failures span at least `min_span_secs`, and at least `failure_ratio`
//! of its calls since the window's first failure failed. Each tenant is
//! judged on its own events, so one tenant cannot switch a module off for
//! the others.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// `[engine.quarantine]`: when a failing module is taken off for a tenant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// Distinct events (by auditID) the module must have failed on.
    pub failed_events: usize,
    /// Seconds the failures must span, from the first to the last.
    pub min_span_secs: u64,
    /// Share of the module's calls, since the window's first failure, that
    /// failed (0 to 1).
    pub failure_ratio: f64,
    /// A window that has not led to a quarantine within this many seconds is
    /// closed, and the next failure opens a new one.
    pub window_secs: u64,
    /// A quarantine is lifted after this many seconds and the module judged
    /// afresh; 0 keeps it off until a new version is loaded.
    pub retry_after_secs: u64,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            failed_events: 20,
            min_span_secs: 60,
            failure_ratio: 0.5,
            window_secs: 600,
            retry_after_secs: 900,
        }
    }
}

impl QuarantineConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.failed_events == 0 {
            return Err("engine.quarantine.failed_events must be positive".into());
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err("engine.quarantine.failure_ratio must be in (0, 1]".into());
        }
        if self.window_secs < self.min_span_secs {
            return Err(
                "engine.quarantine.window_secs must be at least engine.quarantine.min_span_secs"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a module is off for a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantine {
    pub tenant: Arc<str>,
    /// RFC 3339.
    pub since: String,
    /// Distinct events it failed on in the window (counted up to the threshold).
    pub failed_events: usize,
    pub failed_calls: u64,
    pub calls: u64,
    /// Seconds from the window's first failure to the one that tipped it.
    pub span_secs: u64,
    pub last_error: String,
    /// When it is judged afresh (RFC 3339); none: until a new version loads.
    pub retry_at: Option<String>,
    #[serde(skip)]
    lifted_at: Option<Instant>,
}

struct Window {
    opened: Instant,
    calls: u64,
    failures: u64,
    /// Hashes of the auditIDs failed on, up to the threshold: bounded memory
    /// whatever the IDs are. The hasher is keyed at random per process, so
    /// IDs cannot be crafted to collide.
    failed: HashSet<u64>,
}

#[derive(Default)]
struct TenantHealth {
    window: Option<Window>,
    quarantine: Option<Quarantine>,
}

/// The health of one loaded version of a module, per tenant. A new version
/// starts healthy.
pub struct ModuleHealth {
    policy: QuarantineConfig,
    tenants: Mutex<HashMap<Arc<str>, TenantHealth>>,
    /// Tenants quarantined now: lets the hot path skip the lock.
    quarantined: AtomicUsize,
    hasher: RandomState,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl ModuleHealth {
    pub fn new(policy: QuarantineConfig) -> Self {
        ModuleHealth {
            policy,
            tenants: Mutex::new(HashMap::new()),
            quarantined: AtomicUsize::new(0),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TenantHealth>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifts a quarantine whose time is up.
    fn expire(&self, h: &mut TenantHealth, now: Instant) {
        if h.quarantine
            .as_ref()
            .and_then(|q| q.lifted_at)
            .is_some_and(|at| now >= at)
        {
            h.quarantine = None;
            h.window = None;
            self.quarantined.fetch_sub(1, Ordering::Relaxed);
        }
        if h.window.as_ref().is_some_and(|w| {
            now.duration_since(w.opened) > Duration::from_secs(self.policy.window_secs)
        }) {
            h.window = None;
        }
    }

    /// Whether the module is off for `tenant` now. Returns the lifted
    /// quarantine, if one just ended, as the second value.
    pub fn is_quarantined(&self, tenant: &Arc<str>, now: Instant) -> (bool, Option<Quarantine>) {
        if self.quarantined.load(Ordering::Relaxed) == 0 {
            return (false, None);
        }
        let mut tenants = self.lock();
        let Some(h) = tenants.get_mut(tenant) else {
            return (false, None);
        };
        let before = h.quarantine.clone();
        self.expire(h, now);
        match (&h.quarantine, before) {
            (Some(_), _) => (true, None),
            (None, lifted) => (false, lifted),
        }
    }

    /// Successful calls for `tenant`, counted in the open window.
    pub fn record_successes(&self, tenant: &Arc<str>, calls: u64, now: Instant) {
        if calls == 0 {
            return;
        }
        let mut tenants = self.lock();
        if let Some(h) = tenants.get_mut(tenant) {
            self.expire(h, now);
            if let Some(w) = &mut h.window {
                w.calls += calls;
            }
        }
    }

    /// A failed call on the event `audit_id`. Returns the quarantine it
    /// started, if it tipped the balance.
    pub fn record_failure(
        &self,
        tenant: &Arc<str>,
        audit_id: &str,
        error: &str,
        now: Instant,
    ) -> Option<Quarantine> {
        let mut tenants = self.lock();
        let h = tenants.entry(tenant.clone()).or_default();
        self.expire(h, now);
        if h.quarantine.is_some() {
            return None;
        }
        let w = h.window.get_or_insert_with(|| Window {
            opened: now,
            calls: 0,
            failures: 0,
            failed: HashSet::new(),
        });
        w.calls += 1;
        w.failures += 1;
        if w.failed.len() < self.policy.failed_events {
            w.failed.insert(self.hasher.hash_one(audit_id));
        }
        let span = now.duration_since(w.opened);
        let tipped = w.failed.len() >= self.policy.failed_events
            && span >= Duration::from_secs(self.policy.min_span_secs)
            && w.failures as f64 >= self.policy.failure_ratio * w.calls as f64;
        if !tipped {
            return None;
        }
        let retry = (self.policy.retry_after_secs > 0)
            .then(|| Duration::from_secs(self.policy.retry_after_secs));
        let q = Quarantine {
            tenant: tenant.clone(),
            since: rfc3339(SystemTime::now()),
            failed_events: w.failed.len(),
            failed_calls: w.failures,
            calls: w.calls,
            span_secs: span.as_secs(),
            last_error: error.to_string(),
            retry_at: retry.map(|r| rfc3339(SystemTime::now() + r)),
            lifted_at: retry.map(|r| now + r),
        };
        h.window = None;
        h.quarantine = Some(q.clone());
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        Some(q)
    }

    /// The tenants the module is quarantined for now.
    pub fn quarantines(&self) -> Vec<Quarantine> {
        if self.quarantined.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut tenants = self.lock();
        let mut out: Vec<Quarantine> = tenants
            .values_mut()
            .filter_map(|h| {
                self.expire(h, now);
                h.quarantine.clone()
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> QuarantineConfig {
        QuarantineConfig {
            failed_events: 3,
            min_span_secs: 10,
            failure_ratio: 0.5,
            window_secs: 100,
            retry_after_secs: 0,
        }
    }

    #[test]
    fn many_failures_on_one_event_or_in_one_instant_do_not_quarantine() {
        let h = ModuleHealth::new(policy());
        let t: Arc<str> = "a".into();
        let now = Instant::now();
        for _ in 0..100 {
            assert!(h.record_failure(&t, "same", "trap", now).is_none());
        }
        for i in 0..100 {
            let id = format!("ev-{i}");
            assert!(h.record_failure(&t, &id, "trap", now).is_none());
        }
        assert!(!h.is_quarantined(&t, now).0);
    }

    #[test]
    fn failing_on_distinct_events_over_time_quarantines_that_tenant_only() {
        let h = ModuleHealth::new(policy());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let t0 = Instant::now();
        assert!(h.record_failure(&a, "1", "trap", t0).is_none());
        assert!(h.record_failure(&a, "2", "trap", t0).is_none());
        let q = h
            .record_failure(&a, "3", "trap", t0 + Duration::from_secs(11))
            .expect("quarantined");
        assert_eq!((q.failed_events, q.span_secs), (3, 11));
        assert!(h.is_quarantined(&a, t0 + Duration::from_secs(12)).0);
        assert!(!h.is_quarantined(&b, t0 + Duration::from_secs(12)).0);
        assert_eq!(h.quarantines().len(), 1);
    }

    #[test]
    fn a_module_that_mostly_succeeds_is_not_quarantined() {
        let h = ModuleHealth::new(policy());
        let t: Arc<str> = "a".into();
        let t0 = Instant::now();
        for i in 0..10u64 {
            let at = t0 + Duration::from_secs(i * 2);
            h.record_successes(&t, 5, at);
            assert!(h.record_failure(&t, &i.to_string(), "trap", at).is_none());
        }
        assert!(!h.is_quarantined(&t, t0 + Duration::from_secs(30)).0);
    }

    #[test]
    fn a_quarantine_is_lifted_after_its_retry_time() {
        let h = ModuleHealth::new(QuarantineConfig {
            retry_after_secs: 50,
            ..policy()
        });
        let t: Arc<str> = "a".into();
        let t0 = Instant::now();
        for (i, s) in [0u64, 5, 11].iter().enumerate() {
            h.record_failure(&t, &i.to_string(), "trap", t0 + Duration::from_secs(*s));
        }
        assert!(h.is_quarantined(&t, t0 + Duration::from_secs(20)).0);
        let (off, lifted) = h.is_quarantined(&t, t0 + Duration::from_secs(62));
        assert!(!off && lifted.is_some());
    }
}
