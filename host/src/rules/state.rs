use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use peregrine_sdk::state::{StateLimits, StateTable};

use super::Scope;

/// (tenant, module scope, module key)
type TableKey = (Arc<str>, Scope, String);

/// The state of stateful rules, one bounded table per (tenant, module). It
/// lives in the host, not in the instance, so it survives fresh instances
/// and reloads.
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

    /// The table for `module` (by scope and key) as seen by `tenant`.
    pub fn table(&self, tenant: &Arc<str>, scope: &Scope, module: &str) -> Arc<Mutex<StateTable>> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .entry((tenant.clone(), scope.clone(), module.to_string()))
            .or_insert_with(|| Arc::new(Mutex::new(StateTable::new(self.limits))))
            .clone()
    }
}
