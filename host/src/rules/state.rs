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
}
