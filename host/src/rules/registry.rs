//! The rules registry: every module file of the rules directories, loaded
//! or failed, and the live [`RuleSet`] built from those that loaded.
//!
//! Changed files are compiled and probed (`configure`, `metadata`) off the
//! hot path, and only a module that passed goes live, by swapping in a new
//! immutable rule set. Workers load the rule set once per batch, so
//! in-flight batches finish on the old version and no event is evaluated
//! twice or skipped. A module that fails to load keeps its previous version
//! live; a deleted file unloads. [`crate::reload`] watches the directories
//! and calls in here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::PeregrineConfig;
use crate::rules::{
    LoadFailure, LoadedModule, ModuleLoader, ModuleStats, RuleSet, Scope, discover_modules,
};
use crate::tenants::Tenants;

/// One rules directory and whom its modules serve.
#[derive(Debug, Clone)]
pub struct RulesDir {
    pub scope: Scope,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleStatus {
    /// Evaluating events.
    Live,
    /// Never loaded successfully; not evaluating.
    Failed,
    /// Quarantined for at least one tenant (see `quarantined`): failed on
    /// too many distinct events over time; not evaluating that tenant's
    /// events until it is retried or a new version loads.
    Quarantined,
}

struct Entry {
    live: Option<Arc<LoadedModule>>,
    last_error: Option<String>,
    last_attempt: SystemTime,
    /// Digest of the file as last attempted, so an unchanged file is not reloaded.
    attempted_digest: Option<String>,
}

/// What the rules API shows for one module file.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleReport {
    pub key: String,
    pub scope: String,
    pub path: PathBuf,
    pub status: ModuleStatus,
    pub digest: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub loaded_at: Option<String>,
    pub last_error: Option<String>,
    pub last_attempt: String,
    pub evaluations: u64,
    pub errors: u64,
    pub mean_eval_micros: Option<f64>,
    /// The tenants this version is quarantined for, and why.
    pub quarantined: Vec<crate::health::Quarantine>,
    pub rules: Vec<RuleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub id: String,
    pub name: String,
    pub priority: String,
    pub enabled: bool,
    pub tags: Vec<String>,
    /// Events its prefilter admitted (the module was called for them).
    pub evaluations: u64,
    pub alerts: u64,
    /// Failed calls for events its prefilter admitted.
    pub errors: u64,
    /// Its mean share of call time per admitted event: a call evaluates all
    /// of a module's rules at once, so each call's time is shared equally
    /// among the rules its event was admitted for.
    pub mean_eval_micros: Option<f64>,
}

/// Owns the live rule set and the status of every module file.
pub struct RuleManager {
    loader: ModuleLoader,
    current: Arc<ArcSwap<RuleSet>>,
    entries: Mutex<BTreeMap<(Scope, PathBuf), Entry>>,
    dirs: Vec<RulesDir>,
    config: Arc<PeregrineConfig>,
    tenants: Arc<Tenants>,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl RuleManager {
    pub fn new(loader: ModuleLoader, dirs: Vec<RulesDir>, tenants: Arc<Tenants>) -> Arc<Self> {
        let config = loader.config().clone();
        Arc::new(RuleManager {
            loader,
            current: Arc::new(ArcSwap::from_pointee(RuleSet::default())),
            entries: Mutex::new(BTreeMap::new()),
            dirs,
            config,
            tenants,
        })
    }

    /// The live rule set, shared with the workers.
    pub fn current(&self) -> &Arc<ArcSwap<RuleSet>> {
        &self.current
    }

    pub fn dirs(&self) -> &[RulesDir] {
        &self.dirs
    }

    /// Loads every module of every directory; returns how many went live
    /// and the failures.
    pub fn load_all(&self) -> (usize, Vec<(PathBuf, String)>) {
        for dir in &self.dirs {
            self.sync_dir(dir);
        }
        let entries = self.lock();
        let live = entries.values().filter(|e| e.live.is_some()).count();
        let failed = entries
            .iter()
            .filter_map(|((_, p), e)| e.last_error.clone().map(|err| (p.clone(), err)))
            .collect();
        (live, failed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Scope, PathBuf), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings one directory in step: loads new and changed files, unloads
    /// deleted ones.
    pub fn sync_dir(&self, dir: &RulesDir) {
        let files = match discover_modules(&dir.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(dir = %dir.path.display(), "cannot read rules directory: {e}");
                return;
            }
        };
        let known: Vec<PathBuf> = self
            .lock()
            .keys()
            .filter(|(s, p)| *s == dir.scope && p.parent() == Some(dir.path.as_path()))
            .map(|(_, p)| p.clone())
            .collect();
        for gone in known.iter().filter(|p| !files.contains(p)) {
            self.unload(&dir.scope, gone);
        }
        for file in files {
            self.load_file(&dir.scope, &file);
        }
    }

    /// (Re)loads one file if its content changed since the last attempt.
    pub fn load_file(&self, scope: &Scope, path: &Path) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let bytes = match crate::rules::read_module(path, dir, self.config.rules.follow_symlinks) {
            Ok(bytes) => bytes,
            Err(LoadFailure::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.unload(scope, path);
                return;
            }
            Err(e) => {
                self.record_failure(scope, path, None, e.to_string());
                return;
            }
        };
        let digest = crate::rules::digest_of(&bytes);
        let key = (scope.clone(), path.to_path_buf());
        if self
            .lock()
            .get(&key)
            .is_some_and(|e| e.attempted_digest.as_deref() == Some(digest.as_str()))
        {
            return;
        }
        if let Err(msg) = self.check_tenant_quota(scope, path) {
            self.record_failure(scope, path, Some(digest), msg);
            return;
        }
        let module_key = crate::rules::module_key(path);
        let (config_json, mut limits) = match scope {
            Scope::Global => (
                self.config.module_config_json(&module_key),
                self.config.sandbox.limits_for(&module_key),
            ),
            Scope::Tenant(t) => {
                let tenant = self.tenants.get(t).map(|t| &t.config);
                let json = tenant
                    .and_then(|c| c.modules.get(&module_key))
                    .map(|table| serde_json::to_string(table).unwrap_or_else(|_| "{}".into()))
                    .unwrap_or_else(|| "{}".into());
                let mut limits = self.config.sandbox.limits_for(&module_key);
                if let Some(mib) = tenant.and_then(|c| c.memory_mib) {
                    limits.memory_bytes = limits.memory_bytes.min(mib << 20);
                }
                (json, limits)
            }
        };
        limits.memory_bytes = limits
            .memory_bytes
            .min(self.loader.engine().options().max_memory_bytes);
        let started = Instant::now();
        match self
            .loader
            .load(path, &bytes, scope.clone(), &config_json, limits)
        {
            Ok(mut module) => {
                let mut entries = self.lock();
                let entry = entries.entry(key).or_insert_with(|| Entry {
                    live: None,
                    last_error: None,
                    last_attempt: SystemTime::now(),
                    attempted_digest: None,
                });
                // Counters follow the module across versions; quarantine does not.
                if let Some(old) = &entry.live {
                    module.stats = carry_stats(&old.stats);
                    for q in old.health.quarantines() {
                        tracing::info!(module = %module.label, tenant = %q.tenant, "a new version lifts the quarantine");
                        metrics::gauge!("peregrine_module_quarantined", "module" => old.key.clone(), "tenant" => q.tenant.to_string())
                            .set(0.0);
                    }
                }
                entry.live = Some(Arc::new(module));
                entry.last_error = None;
                entry.last_attempt = SystemTime::now();
                entry.attempted_digest = Some(digest);
                self.publish(&entries);
                metrics::counter!("peregrine_module_loads_total", "result" => "ok").increment(1);
                metrics::histogram!("peregrine_module_load_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                let kept = self.lock().get(&key).is_some_and(|e| e.live.is_some());
                tracing::error!(
                    module = %path.display(),
                    previous_version_kept = kept,
                    "module failed to load: {e}"
                );
                self.record_failure(scope, path, Some(digest), e.to_string());
            }
        }
    }

    fn check_tenant_quota(&self, scope: &Scope, path: &Path) -> Result<(), String> {
        let Scope::Tenant(t) = scope else {
            return Ok(());
        };
        let Some(max) = self.tenants.get(t).and_then(|t| t.config.max_modules) else {
            return Ok(());
        };
        let entries = self.lock();
        let others = entries
            .iter()
            .filter(|((s, p), e)| s == scope && p != path && e.live.is_some())
            .count();
        if others >= max {
            return Err(format!(
                "tenant `{t}` already has {others} modules, its quota is {max}"
            ));
        }
        Ok(())
    }

    fn record_failure(&self, scope: &Scope, path: &Path, digest: Option<String>, error: String) {
        metrics::counter!("peregrine_module_loads_total", "result" => "failed").increment(1);
        let mut entries = self.lock();
        let entry = entries
            .entry((scope.clone(), path.to_path_buf()))
            .or_insert_with(|| Entry {
                live: None,
                last_error: None,
                last_attempt: SystemTime::now(),
                attempted_digest: None,
            });
        entry.last_error = Some(error);
        entry.last_attempt = SystemTime::now();
        entry.attempted_digest = digest;
    }

    /// Removes a module whose file is gone.
    pub fn unload(&self, scope: &Scope, path: &Path) {
        let mut entries = self.lock();
        if let Some(e) = entries.remove(&(scope.clone(), path.to_path_buf()))
            && let Some(m) = &e.live
        {
            for q in m.health.quarantines() {
                metrics::gauge!("peregrine_module_quarantined", "module" => m.key.clone(), "tenant" => q.tenant.to_string())
                    .set(0.0);
            }
            tracing::info!(module = %path.display(), "module unloaded: its file was removed");
            self.publish(&entries);
        }
    }

    /// Swaps in a rule set built from the live modules.
    fn publish(&self, entries: &BTreeMap<(Scope, PathBuf), Entry>) {
        let generation = self.current.load().generation + 1;
        let modules = entries.values().filter_map(|e| e.live.clone()).collect();
        self.current.store(Arc::new(RuleSet {
            modules,
            generation,
        }));
        metrics::gauge!("peregrine_modules_live")
            .set(entries.values().filter(|e| e.live.is_some()).count() as f64);
    }

    /// Status of every module file, for the API. With a `viewer` tenant:
    /// only the modules serving it, with its own counters and quarantine,
    /// so one tenant learns nothing of another's events.
    pub fn report(&self, viewer: Option<&str>) -> Vec<ModuleReport> {
        let entries = self.lock();
        entries
            .iter()
            .filter(|((scope, _), _)| viewer.is_none_or(|t| scope.admits_tenant(t)))
            .map(|((scope, path), e)| {
                let m = e.live.as_deref();
                let mut quarantined = m.map_or_else(Vec::new, |m| m.health.quarantines());
                if let Some(t) = viewer {
                    quarantined.retain(|q| &*q.tenant == t);
                }
                let status = match m {
                    None => ModuleStatus::Failed,
                    Some(_) if !quarantined.is_empty() => ModuleStatus::Quarantined,
                    Some(_) => ModuleStatus::Live,
                };
                let own = match (m, viewer) {
                    (Some(m), Some(t)) => m.stats.tenant().get(t).cloned().unwrap_or_default(),
                    (Some(m), None) => crate::rules::TenantCounters {
                        evaluations: m.stats.evaluations.load(Ordering::Relaxed),
                        errors: m.stats.errors.load(Ordering::Relaxed),
                        eval_nanos: m.stats.eval_nanos.load(Ordering::Relaxed),
                        rules: m
                            .stats
                            .rules
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone(),
                    },
                    (None, _) => Default::default(),
                };
                let (evaluations, errors, nanos) = (own.evaluations, own.errors, own.eval_nanos);
                let rules = m.map_or_else(Vec::new, |m| {
                    let counters = &own.rules;
                    m.info
                        .rules
                        .iter()
                        .map(|r| {
                            let c = counters.get(&r.id).copied().unwrap_or_default();
                            RuleReport {
                                id: r.id.clone(),
                                name: r.name.clone(),
                                priority: crate::alert::Priority::from(r.priority).to_string(),
                                enabled: r.enabled,
                                tags: r.tags.clone(),
                                evaluations: c.evaluations,
                                alerts: c.alerts,
                                errors: c.errors,
                                mean_eval_micros: (c.evaluations > 0)
                                    .then(|| c.eval_nanos as f64 / c.evaluations as f64 / 1_000.0),
                            }
                        })
                        .collect()
                });
                ModuleReport {
                    key: crate::rules::module_key(path),
                    scope: scope.to_string(),
                    path: path.clone(),
                    status,
                    digest: m.map(|m| m.digest.clone()),
                    name: m.map(|m| m.info.name.clone()),
                    version: m.map(|m| m.info.version.clone()),
                    loaded_at: m.map(|m| rfc3339(m.loaded_at)),
                    last_error: e.last_error.clone(),
                    last_attempt: rfc3339(e.last_attempt),
                    evaluations,
                    errors,
                    mean_eval_micros: (evaluations > 0)
                        .then(|| nanos as f64 / evaluations as f64 / 1_000.0),
                    quarantined,
                    rules,
                }
            })
            .collect()
    }
}

fn carry_stats(old: &ModuleStats) -> Arc<ModuleStats> {
    let new = ModuleStats::default();
    new.evaluations
        .store(old.evaluations.load(Ordering::Relaxed), Ordering::Relaxed);
    new.errors
        .store(old.errors.load(Ordering::Relaxed), Ordering::Relaxed);
    new.eval_nanos
        .store(old.eval_nanos.load(Ordering::Relaxed), Ordering::Relaxed);
    *new.rules.lock().unwrap_or_else(|p| p.into_inner()) =
        old.rules.lock().unwrap_or_else(|p| p.into_inner()).clone();
    *new.tenant() = old.tenant().clone();
    Arc::new(new)
}
