//! Rule modules as the pipeline sees them: loaded, configured, described by
//! their metadata, and grouped into an immutable [`RuleSet`] that workers
//! read without locks while the reloader builds the next one.

mod loader;
pub mod registry;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use peregrine_sdk::audit::AuditEvent;
use peregrine_sdk::{ModuleInfo, RuleInfo};

use crate::engine::{CompiledModule, SandboxLimits};

pub use loader::{LoadFailure, ModuleLoader, digest_of, discover_modules, module_key, read_module};
pub use state::StateStore;

/// Components larger than this are refused before compilation. Python and
/// JavaScript modules are 12-40 MB; this leaves room without letting a stray
/// file exhaust memory.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Who a module serves: every tenant, or one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Tenant(Arc<str>),
}

impl Scope {
    pub fn admits_tenant(&self, tenant: &str) -> bool {
        match self {
            Scope::Global => true,
            Scope::Tenant(t) => &**t == tenant,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Tenant(t) => write!(f, "tenant:{t}"),
        }
    }
}

/// A module that loaded, configured and described itself successfully.
pub struct LoadedModule {
    /// The file name without `.wasm`: the key of its configuration.
    pub key: String,
    pub scope: Scope,
    pub path: PathBuf,
    /// sha256 of the component file, carried by every alert it raises.
    pub digest: String,
    pub info: ModuleInfo,
    pub config_json: String,
    pub limits: SandboxLimits,
    pub compiled: Arc<CompiledModule>,
    pub loaded_at: SystemTime,
    /// `module@digest-prefix`, for logs.
    pub label: Arc<str>,
    pub stats: Arc<ModuleStats>,
    /// Per tenant: whether this version is quarantined. Not carried over to
    /// a new version.
    pub health: crate::health::ModuleHealth,
    rule_index: HashMap<String, usize>,
    needs_raw: bool,
}

impl LoadedModule {
    /// Whether any enabled rule's prefilter admits the event: the module is
    /// not called for events none of its rules could match.
    pub fn admits(&self, ev: &AuditEvent) -> bool {
        self.info.rules.iter().any(|r| rule_admits(r, ev))
    }

    /// The enabled rules whose prefilter admits the event.
    pub fn admitting_rules<'a>(
        &'a self,
        ev: &'a AuditEvent,
    ) -> impl Iterator<Item = &'a RuleInfo> + 'a {
        self.info.rules.iter().filter(move |r| rule_admits(r, ev))
    }

    pub fn needs_raw_objects(&self) -> bool {
        self.needs_raw
    }

    /// The rule with this id and its position in the module's declared order.
    pub fn rule(&self, id: &str) -> Option<(usize, &RuleInfo)> {
        let i = *self.rule_index.get(id)?;
        Some((i, &self.info.rules[i]))
    }
}

fn rule_admits(r: &RuleInfo, ev: &AuditEvent) -> bool {
    r.enabled
        && r.prefilter
            .admits(&ev.verb, ev.resource(), ev.subresource(), &ev.stage)
}

/// The modules live at one moment. Immutable: a reload builds a new one and
/// swaps it in atomically, so a batch sees exactly one version of each module.
#[derive(Default)]
pub struct RuleSet {
    pub modules: Vec<Arc<LoadedModule>>,
    /// Increases with every swap.
    pub generation: u64,
}

impl RuleSet {
    pub fn for_tenant<'a>(
        &'a self,
        tenant: &'a str,
    ) -> impl Iterator<Item = &'a Arc<LoadedModule>> + 'a {
        self.modules
            .iter()
            .filter(move |m| m.scope.admits_tenant(tenant))
    }

    /// Whether some module that serves `tenant` reads raw objects.
    pub fn tenant_needs_raw(&self, tenant: &str) -> bool {
        self.for_tenant(tenant).any(|m| m.needs_raw)
    }
}

/// Counters of one module, shown by the rules API. A reload carries them over
/// to the new version of the module.
#[derive(Default)]
pub struct ModuleStats {
    /// `evaluate` calls.
    pub evaluations: std::sync::atomic::AtomicU64,
    /// Calls that trapped, timed out, ran out of memory or returned bad output.
    pub errors: std::sync::atomic::AtomicU64,
    /// Total time spent in `evaluate`, in nanoseconds.
    pub eval_nanos: std::sync::atomic::AtomicU64,
    /// Per rule id: events its prefilter admitted, and alerts it raised.
    pub rules: std::sync::Mutex<HashMap<String, RuleCounters>>,
    /// The same counters per tenant: a tenant's view of a global module
    /// shows its own events only, not what the module saw of the others.
    pub tenants: std::sync::Mutex<HashMap<Arc<str>, TenantCounters>>,
}

impl ModuleStats {
    pub fn tenant(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, TenantCounters>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One tenant's share of a module's counters.
#[derive(Debug, Default, Clone)]
pub struct TenantCounters {
    pub evaluations: u64,
    pub errors: u64,
    pub eval_nanos: u64,
    pub rules: HashMap<String, RuleCounters>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RuleCounters {
    /// Events the rule's prefilter admitted.
    pub evaluations: u64,
    pub alerts: u64,
    /// Failed calls (trap, timeout, out of memory, bad output) for events the
    /// rule's prefilter admitted.
    pub errors: u64,
    /// The rule's share of call time: each call's time divided equally among
    /// the rules whose prefilter admitted the event.
    pub eval_nanos: u64,
}
