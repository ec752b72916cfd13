//! Assembles the stages: rule manager, queue, workers, alert sink.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::PeregrineConfig;
use crate::engine::{EngineOptions, WasmEngine};
use crate::evaluate::{AlertSink, BatchQueue, Evaluator, WorkerPool};
use crate::reload::{RuleManager, RulesDir};
use crate::rules::{ModuleLoader, Scope, StateStore};
use crate::tenants::Tenants;

/// The rules directories to load: `--rules` if given, else the config's
/// `rules.dirs`, else the first default place that exists
/// ([`crate::paths::default_rules_dir`]) unless `rules.sources` bring the
/// modules; plus the cache directory of every source, and every tenant's own
/// directories.
pub fn rules_dirs(config: &PeregrineConfig, cli_dirs: &[PathBuf]) -> anyhow::Result<Vec<RulesDir>> {
    let global: Vec<PathBuf> = if !cli_dirs.is_empty() {
        cli_dirs.to_vec()
    } else if !config.rules.dirs.is_empty() {
        config.rules.dirs.clone()
    } else if !config.rules.sources.is_empty() {
        Vec::new()
    } else {
        vec![crate::paths::default_rules_dir()?]
    };
    let mut dirs = Vec::new();
    for path in global {
        dirs.push(RulesDir {
            scope: Scope::Global,
            path: canonical_dir(&path)?,
        });
    }
    dirs.extend(crate::oci::Sources::from_config(config)?.dirs());
    for (id, tenant) in &config.tenants {
        for path in &tenant.rules_dirs {
            dirs.push(RulesDir {
                scope: Scope::Tenant(id.as_str().into()),
                path: canonical_dir(path).with_context(|| format!("tenant `{id}`"))?,
            });
        }
    }
    Ok(dirs)
}

fn canonical_dir(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let p = path
        .canonicalize()
        .with_context(|| format!("rules directory {} does not exist", path.display()))?;
    if !p.is_dir() {
        anyhow::bail!("rules directory {} is not a directory", path.display());
    }
    Ok(p)
}

/// A `[modules.<name>]` or `[sandbox.modules.<name>]` that names no module
/// in the directories is most likely a typo, and the module it meant runs
/// with its defaults: say so. A warning, not an error, since the module may
/// be installed after the start.
fn warn_unknown_module_tables(config: &PeregrineConfig, rules: &RuleManager) {
    let report = rules.report(None);
    let known = |scope: &str, key: &str| report.iter().any(|m| m.scope == scope && m.key == key);
    let any = |key: &str| report.iter().any(|m| m.key == key);
    for key in config.modules.keys() {
        if !known("global", key) {
            tracing::warn!(
                "[modules.{key}] names no module in the global rules directories (no {key}.wasm): its settings apply to nothing"
            );
        }
    }
    for key in config.sandbox.modules.keys() {
        if !any(key) {
            tracing::warn!(
                "[sandbox.modules.{key}] names no module in the rules directories (no {key}.wasm): its limits apply to nothing"
            );
        }
    }
    for (id, tenant) in &config.tenants {
        for key in tenant.modules.keys() {
            if !known(&format!("tenant:{id}"), key) {
                tracing::warn!(
                    "[tenants.{id}.modules.{key}] names no module in tenant `{id}`'s rules directories: its settings apply to nothing"
                );
            }
        }
    }
}

/// The running evaluation pipeline.
pub struct Pipeline {
    pub config: Arc<PeregrineConfig>,
    pub engine: Arc<WasmEngine>,
    pub rules: Arc<RuleManager>,
    pub queue: Arc<BatchQueue>,
    pub evaluator: Arc<Evaluator>,
    pub tenants: Arc<Tenants>,
    workers: Option<WorkerPool>,
}

impl Pipeline {
    /// Loads the modules and starts the workers. Modules that fail to load
    /// are reported and skipped; `require_all` turns that into an error.
    pub fn start(
        config: Arc<PeregrineConfig>,
        dirs: Vec<RulesDir>,
        sink: Arc<dyn AlertSink>,
        require_all: bool,
    ) -> anyhow::Result<Self> {
        let workers = config.engine.worker_count();
        let engine = WasmEngine::new(EngineOptions {
            epoch_tick: std::time::Duration::from_millis(config.engine.epoch_tick_ms),
            // Each worker holds one instance at a time; loads and reloads
            // need a few more.
            max_instances: (workers + 4) as u32,
            max_memory_bytes: config.sandbox.max_memory_bytes(),
            cache_dir: config.engine.resolved_cache_dir(),
        })?;
        let tenants = Arc::new(Tenants::from_config(&config.auth, &config.tenants)?);
        let states = Arc::new(StateStore::new(peregrine_sdk::state::StateLimits {
            max_keys: config.engine.state_max_keys,
            max_members: config.engine.state_max_members,
        }));
        {
            let states = Arc::downgrade(&states);
            crate::prometheus::on_scrape(move || states.upgrade().map(|s| s.report()).is_some());
        }
        let loader = ModuleLoader::new(engine.clone(), config.clone(), states.clone());
        let rules = RuleManager::new(loader, dirs, tenants.clone());
        let (live, failed) = rules.load_all();
        for (path, err) in &failed {
            tracing::error!(module = %path.display(), "{err}");
        }
        if require_all && !failed.is_empty() {
            let list: Vec<String> = failed
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect();
            anyhow::bail!(
                "{} module(s) failed to load:\n  {}",
                failed.len(),
                list.join("\n  ")
            );
        }
        warn_unknown_module_tables(&config, &rules);
        if live == 0 {
            tracing::warn!(
                "no rule module is live: events will be accepted but nothing evaluates them"
            );
        }
        let queue = Arc::new(BatchQueue::new(
            config.server.queue_events,
            config.server.queue_bytes,
        ));
        queue.set_workers(workers);
        let evaluator = Arc::new(Evaluator {
            engine: engine.clone(),
            rules: rules.current().clone(),
            states,
            rule_matching: config.rules.rule_matching,
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into())
                .into(),
            batch_events: config.engine.batch_events,
        });
        let pool = WorkerPool::start(workers, queue.clone(), evaluator.clone(), sink);
        Ok(Pipeline {
            config,
            engine,
            rules,
            queue,
            evaluator,
            tenants,
            workers: Some(pool),
        })
    }

    /// Stops taking batches and waits until every queued event is evaluated.
    pub fn drain(&mut self) {
        self.queue.close();
        if let Some(w) = self.workers.take() {
            w.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.drain();
    }
}
