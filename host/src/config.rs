//! The configuration file (TOML). Every section has embedded defaults, so
//! `peregrine serve` runs without one; unknown keys are errors, so a typo is
//! reported instead of silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

// Defined with the alerts they shape; named here too, as configuration.
pub use crate::alert::{AlertFormat, RuleMatching};
use crate::engine::SandboxLimits;
pub use crate::server::config::{MAX_CONNECTIONS, ServerConfig};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeregrineConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub sandbox: SandboxConfig,
    pub rules: RulesConfig,
    /// Per-module configuration, keyed by the module's file name without
    /// `.wasm`; each table is handed to the module's `configure` as JSON.
    pub modules: BTreeMap<String, toml::Table>,
    pub output: OutputConfig,
    /// What happens to alerts no route matches.
    pub routing: crate::router::RoutingConfig,
    /// Alert routes, tried in order.
    pub routes: Vec<crate::router::RouteConfig>,
    /// Outputs by name; `type` selects the kind.
    pub outputs: BTreeMap<String, crate::outputs::OutputKindConfig>,
    /// Settings shared by every output's delivery (spool directory).
    pub delivery: crate::outputs::DeliveryConfig,
    /// Alert history for the web UI and `GET /api/v1/alerts`.
    pub store: crate::store::StoreConfig,
    pub auth: crate::tenants::AuthConfig,
    /// Tenants by id. The `default` tenant (`/k8s-audit`) always exists.
    pub tenants: BTreeMap<String, crate::tenants::TenantConfig>,
    /// Inputs besides the webhook: audit log files, push endpoints' settings.
    pub sources: Vec<crate::ingest::sources::config::SourceConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Evaluation threads; 0 means one per CPU core.
    pub workers: usize,
    /// Most events one worker evaluates with one instance of each module.
    pub batch_events: usize,
    /// Epoch ticker interval in milliseconds: deadlines hold to within one tick.
    pub epoch_tick_ms: u64,
    /// Where compiled modules are cached. Default: `$XDG_CACHE_HOME/peregrine`
    /// or `~/.cache/peregrine`.
    pub cache_dir: Option<PathBuf>,
    /// When a module that keeps failing is taken off for a tenant.
    pub quarantine: crate::health::QuarantineConfig,
    /// Keys (counters, distinct sets, first-seen markers) one state table
    /// holds, per tenant, cluster and module; the least recently touched
    /// are evicted beyond it.
    pub state_max_keys: usize,
    /// Members one distinct set holds; the oldest are evicted beyond it.
    pub state_max_members: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            batch_events: 400,
            epoch_tick_ms: 2,
            cache_dir: None,
            quarantine: Default::default(),
            state_max_keys: 100_000,
            state_max_members: 10_000,
        }
    }
}

impl EngineConfig {
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    pub fn resolved_cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("PEREGRINE_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        Some(crate::paths::xdg_dir("XDG_CACHE_HOME", ".cache")?.join("peregrine"))
    }
}

/// Sandbox limits for every module, and overrides per module.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    #[serde(flatten)]
    pub defaults: LimitsConfig,
    /// Overrides keyed by module file name without `.wasm`.
    pub modules: BTreeMap<String, LimitsOverride>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Budget of one `evaluate` call, in milliseconds.
    pub call_deadline_ms: u64,
    /// Linear memory cap of one module instance, in MiB.
    pub memory_mib: usize,
    /// Alerts one event may raise in one module.
    pub max_alerts_per_event: usize,
    /// Bytes of alert text one event may produce in one module.
    pub max_output_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = SandboxLimits::default();
        LimitsConfig {
            call_deadline_ms: d.call_deadline.as_millis() as u64,
            memory_mib: d.memory_bytes >> 20,
            max_alerts_per_event: d.max_alerts_per_event,
            max_output_bytes: d.max_output_bytes,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsOverride {
    pub call_deadline_ms: Option<u64>,
    pub memory_mib: Option<usize>,
    pub max_alerts_per_event: Option<usize>,
    pub max_output_bytes: Option<usize>,
}

impl SandboxConfig {
    pub fn limits_for(&self, module: &str) -> SandboxLimits {
        let d = &self.defaults;
        let o = self.modules.get(module).cloned().unwrap_or_default();
        SandboxLimits {
            call_deadline: Duration::from_millis(o.call_deadline_ms.unwrap_or(d.call_deadline_ms)),
            memory_bytes: o.memory_mib.unwrap_or(d.memory_mib) << 20,
            max_alerts_per_event: o.max_alerts_per_event.unwrap_or(d.max_alerts_per_event),
            max_output_bytes: o.max_output_bytes.unwrap_or(d.max_output_bytes),
        }
    }

    /// The largest memory cap any module gets: the pool is sized for it.
    pub fn max_memory_bytes(&self) -> usize {
        self.modules
            .values()
            .filter_map(|o| o.memory_mib)
            .chain([self.defaults.memory_mib])
            .max()
            .unwrap_or(self.defaults.memory_mib)
            << 20
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Directories of `.wasm` rule modules. Empty: the first default place
    /// that exists (`example-rules/build` here, next to the binary, or an
    /// installed share directory).
    pub dirs: Vec<PathBuf>,
    pub rule_matching: RuleMatching,
    /// Rule modules pulled from elsewhere (OCI registries), cached under
    /// the cache directory and loaded with the directories' modules.
    pub sources: Vec<crate::oci::config::RuleSourceConfig>,
    /// Load a `*.wasm` symlink whose target is outside its rules directory.
    /// Off: where tenants own their directories, a symlink must not read
    /// the host's files. Symlinks inside the directory (a mounted ConfigMap's
    /// `..data`) are always followed.
    pub follow_symlinks: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Format of alerts printed on stdout (the built-in `stdout` output and
    /// `peregrine replay`).
    pub format: AlertFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl PeregrineConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?
            .validated()
            .map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    pub fn validated(self) -> Result<Self, String> {
        let s = &self.server;
        if s.max_body_bytes == 0
            || s.max_event_bytes == 0
            || s.queue_events == 0
            || s.queue_bytes == 0
        {
            return Err("server.max_body_bytes, server.max_event_bytes, server.queue_events and server.queue_bytes must be positive".into());
        }
        if s.max_connections > MAX_CONNECTIONS {
            return Err(format!(
                "server.max_connections is at most {MAX_CONNECTIONS}"
            ));
        }
        if s.reserved_connections >= s.max_connections {
            return Err(
                "server.reserved_connections must be smaller than server.max_connections".into(),
            );
        }
        if [
            s.header_read_timeout_secs,
            s.body_read_timeout_secs,
            s.idle_timeout_secs,
            s.write_timeout_secs,
        ]
        .contains(&0)
        {
            return Err("server.header_read_timeout_secs, body_read_timeout_secs, idle_timeout_secs and write_timeout_secs must be positive".into());
        }
        if self.engine.batch_events == 0 {
            return Err("engine.batch_events must be positive".into());
        }
        if self.engine.state_max_keys == 0 || self.engine.state_max_members == 0 {
            return Err(
                "engine.state_max_keys and engine.state_max_members must be positive".into(),
            );
        }
        if self.engine.epoch_tick_ms == 0 || self.engine.epoch_tick_ms > 1000 {
            return Err("engine.epoch_tick_ms must be between 1 and 1000".into());
        }
        self.engine.quarantine.validate()?;
        for (name, l) in std::iter::once(("defaults", &self.sandbox.defaults.clone().into()))
            .chain(self.sandbox.modules.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if l.call_deadline_ms == Some(0) || l.memory_mib == Some(0) {
                return Err(format!(
                    "sandbox limits for {name}: call_deadline_ms and memory_mib must be positive"
                ));
            }
            if l.memory_mib.is_some_and(|m| m > 4096) {
                return Err(format!(
                    "sandbox limits for {name}: memory_mib is at most 4096"
                ));
            }
        }
        for source in &self.rules.sources {
            match source {
                crate::oci::config::RuleSourceConfig::Oci(s) => s.validate()?,
            }
        }
        crate::router::validate(&self.routing, &self.routes, &self.outputs)?;
        crate::ingest::sources::config::validate(&self.sources, &self.tenants)?;
        Ok(self)
    }

    /// The configuration of module `key` as the JSON text given to its
    /// `configure` export.
    pub fn module_config_json(&self, key: &str) -> String {
        match self.modules.get(key) {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".into()),
            None => "{}".to_string(),
        }
    }
}

impl From<LimitsConfig> for LimitsOverride {
    fn from(l: LimitsConfig) -> Self {
        LimitsOverride {
            call_deadline_ms: Some(l.call_deadline_ms),
            memory_mib: Some(l.memory_mib),
            max_alerts_per_event: Some(l.max_alerts_per_event),
            max_output_bytes: Some(l.max_output_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_embedded_defaults() {
        let c = PeregrineConfig::parse("").unwrap().validated().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8765");
        assert_eq!(c.server.max_body_bytes, 12 << 20);
        assert_eq!(c.rules.rule_matching, RuleMatching::All);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_reported_with_their_place() {
        let err = PeregrineConfig::parse("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
        let err = PeregrineConfig::parse("[server]\nmax_body_bytes = \"big\"\n").unwrap_err();
        assert!(err.contains("max_body_bytes"), "{err}");
        let err = PeregrineConfig::parse("[sandbox.modules.x]\nmemory_mib = 0\n")
            .unwrap()
            .validated()
            .unwrap_err();
        assert!(err.contains("memory_mib"), "{err}");
    }

    #[test]
    fn module_tables_become_json_and_limits_merge_over_defaults() {
        let c = PeregrineConfig::parse(
            "[modules.falco]\nactivity_rules = false\n[modules.falco.lists.allowed_k8s_users]\nappend = [\"bob\"]\n\
             [sandbox]\ncall_deadline_ms = 20\n[sandbox.modules.falco]\nmemory_mib = 64\n",
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&c.module_config_json("falco")).unwrap();
        assert_eq!(json["lists"]["allowed_k8s_users"]["append"][0], "bob");
        assert_eq!(json["activity_rules"], false);
        assert_eq!(c.module_config_json("other"), "{}");
        let l = c.sandbox.limits_for("falco");
        assert_eq!(l.call_deadline, Duration::from_millis(20));
        assert_eq!(l.memory_bytes, 64 << 20);
        assert_eq!(c.sandbox.limits_for("other").memory_bytes, 128 << 20);
    }
}
