use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use peregrine_sdk::state::{StateLimits, StateTable};

use super::Scope;

/// (tenant, cluster, module scope, module key)
type TableKey = (Arc<str>, Arc<str>, Scope, String);

/// The state of stateful rules, one bounded table per (tenant, cluster,
/// module): a count of secret reads in one cluster does not add up with
/// another's. It lives in the host, not in the instance, so it survives
/// fresh instances and reloads.
#[derive(Default)]
pub struct StateStore {
    tables: Mutex<HashMap<TableKey, Arc<Mutex<StateTable>>>>,
    limits: StateLimits,
}

impl StateStore {
    pub fn new(limits: StateLimits) -> Self {
        StateStore {
            tables: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// The table for `module` (by scope and key) as seen by `tenant` for
    /// events that name no cluster (the tenant's id stands for it).
    pub fn table(&self, tenant: &Arc<str>, scope: &Scope, module: &str) -> Arc<Mutex<StateTable>> {
        self.table_in(tenant, tenant, scope, module)
    }

    /// The table for `module` as seen by `tenant` for `cluster`'s events.
    pub fn table_in(
        &self,
        tenant: &Arc<str>,
        cluster: &Arc<str>,
        scope: &Scope,
        module: &str,
    ) -> Arc<Mutex<StateTable>> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .entry((
                tenant.clone(),
                cluster.clone(),
                scope.clone(),
                module.to_string(),
            ))
            .or_insert_with(|| Arc::new(Mutex::new(StateTable::new(self.limits))))
            .clone()
    }

    /// Keys held and evictions so far, summed per module key, for the
    /// `peregrine_state_keys` and `peregrine_state_evictions_total` metrics.
    pub fn usage(&self) -> std::collections::BTreeMap<String, (usize, u64)> {
        let tables: Vec<(String, Arc<Mutex<StateTable>>)> = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((_, _, _, module), t)| (module.clone(), t.clone()))
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for (module, t) in tables {
            let t = t.lock().unwrap_or_else(|p| p.into_inner());
            let e: &mut (usize, u64) = out.entry(module).or_default();
            e.0 += t.len();
            e.1 += t.evictions();
        }
        out
    }

    /// Publishes [`StateStore::usage`] as metrics (at each scrape).
    pub fn report(&self) {
        for (module, (keys, evictions)) in self.usage() {
            metrics::gauge!("peregrine_state_keys", "module" => module.clone()).set(keys as f64);
            metrics::counter!("peregrine_state_evictions_total", "module" => module)
                .absolute(evictions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_stays_within_the_configured_limits_and_counts_evictions() {
        let store = StateStore::new(StateLimits {
            max_keys: 50,
            max_members: 3,
        });
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for tenant in [&a, &b] {
            let t = store.table(tenant, &Scope::Global, "threats");
            let mut t = t.lock().unwrap();
            for i in 0..500i64 {
                t.first_seen(&format!("k{i}"), 3600, i * 1_000_000_000);
            }
            for i in 0..10 {
                assert!(t.distinct_add("set", &format!("m{i}"), 3600, 600_000_000_000) <= 3);
            }
        }
        let usage = store.usage();
        let (keys, evictions) = usage["threats"];
        assert!(keys <= 2 * 50, "two tables of at most 50 keys: {keys}");
        // Past the limit each table dropped 450 keys and 7 members, at least.
        assert!(evictions >= 2 * (450 + 7), "{evictions}");
    }
}
