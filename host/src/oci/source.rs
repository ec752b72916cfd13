//! `[[rules.sources]]` of type `oci`: an artifact pulled into a directory of
//! the cache, which the rule manager loads like any rules directory, and a
//! poller that follows a tag.
//!
//! A pull is written to the cache only once every byte is verified, one file
//! at a time by rename, so the manager never sees a partial module; a failed
//! pull leaves the cache, and so the live modules, as they were. The cache
//! survives restarts: a registry that is down at start does not take the
//! rules away.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{OciSourceConfig, RuleSourceConfig};
use super::{Artifact, OciError, RegistryOptions, parse_reference, pull, resolve};
use crate::config::PeregrineConfig;
use crate::rules::Scope;
use crate::rules::registry::{RuleManager, RulesDir};

/// What the cache directory holds, written after its modules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheState {
    reference: String,
    manifest_digest: String,
    modules: Vec<String>,
}

const STATE_FILE: &str = ".peregrine-oci.json";

#[derive(Default)]
struct Status {
    cached: Option<CacheState>,
    last_success: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    last_error: Option<String>,
    updates: u64,
    failures: u64,
}

/// What the rules API shows for one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub reference: String,
    pub dir: PathBuf,
    /// Manifest digest of the modules in the cache (the ones loaded).
    pub digest: Option<String>,
    pub modules: Vec<String>,
    /// Last time the registry answered and the cache was current.
    pub last_success: Option<String>,
    pub last_attempt: Option<String>,
    /// Why the last pull failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// Pulls that brought a new manifest.
    pub updates: u64,
    /// Checks or pulls that failed.
    pub failures: u64,
}

/// Whether a check found something new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Unchanged,
    Updated { digest: String },
}

/// One OCI source with its cache directory.
pub struct OciSource {
    pub config: OciSourceConfig,
    reference: Reference,
    options: RegistryOptions,
    pub dir: PathBuf,
    status: Mutex<Status>,
}

impl OciSource {
    pub fn new(config: OciSourceConfig, cache_root: &Path) -> Result<Self, OciError> {
        let reference = parse_reference(&config.reference)?;
        let dir = cache_root.join("oci").join(dir_name(&config.reference));
        std::fs::create_dir_all(&dir).map_err(|e| {
            OciError::Setup(format!(
                "cannot create the cache directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir
            .canonicalize()
            .map_err(|e| OciError::Setup(format!("cache directory {}: {e}", dir.display())))?;
        let cached = std::fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheState>(&b).ok())
            .filter(|s| s.reference == config.reference);
        Ok(OciSource {
            options: config.options(),
            config,
            reference,
            dir,
            status: Mutex::new(Status {
                cached,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rules_dir(&self) -> RulesDir {
        RulesDir {
            scope: Scope::Global,
            path: self.dir.clone(),
        }
    }

    /// Whether the cache holds a complete pull.
    pub fn has_cache(&self) -> bool {
        self.lock()
            .cached
            .as_ref()
            .is_some_and(|c| c.modules.iter().all(|m| self.dir.join(m).is_file()))
    }

    /// Checks the registry and, when the reference names a manifest other
    /// than the cached one, pulls, verifies and caches it. Failures are
    /// recorded, logged and counted; the cache is left as it was.
    #[tracing::instrument(name = "oci_pull", skip_all, fields(reference = %self.config.reference))]
    pub async fn sync(&self) -> Result<SyncOutcome, OciError> {
        let result = self.try_sync().await;
        let mut s = self.lock();
        let now = SystemTime::now();
        s.last_attempt = Some(now);
        let label = match &result {
            Ok(SyncOutcome::Unchanged) => "unchanged",
            Ok(SyncOutcome::Updated { .. }) => "updated",
            Err(_) => "failed",
        };
        metrics::counter!("peregrine_oci_pulls_total", "result" => label).increment(1);
        match &result {
            Ok(outcome) => {
                s.last_success = Some(now);
                s.last_error = None;
                if let SyncOutcome::Updated { digest } = outcome {
                    s.updates += 1;
                    tracing::info!(%digest, "pulled a new version of the rule artifact");
                }
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e.to_string());
                tracing::error!(
                    cached = ?s.cached.as_ref().map(|c| &c.manifest_digest),
                    "rule artifact pull failed, the cached version stays: {e}"
                );
            }
        }
        result
    }

    async fn try_sync(&self) -> Result<SyncOutcome, OciError> {
        let cached = self.lock().cached.clone();
        let complete = self.has_cache();
        let target = match self.reference.digest() {
            Some(pinned) => pinned.to_string(),
            None => resolve(&self.reference, &self.options).await?,
        };
        if complete && cached.as_ref().is_some_and(|c| c.manifest_digest == target) {
            return Ok(SyncOutcome::Unchanged);
        }
        // By digest, so the manifest fetched is the one resolved and its
        // bytes are checked against that digest.
        let by_digest = self.reference.clone_with_digest(target);
        let artifact = pull(&by_digest, &self.options).await?;
        let digest = artifact.manifest_digest.clone();
        let dir = self.dir.clone();
        let reference = self.config.reference.clone();
        let state = tokio::task::spawn_blocking(move || write_cache(&dir, &reference, artifact))
            .await
            .map_err(|e| OciError::Setup(format!("writing the cache failed: {e}")))??;
        self.lock().cached = Some(state);
        Ok(SyncOutcome::Updated { digest })
    }

    pub fn report(&self) -> SourceReport {
        let s = self.lock();
        SourceReport {
            kind: "oci",
            reference: self.config.reference.clone(),
            dir: self.dir.clone(),
            digest: s.cached.as_ref().map(|c| c.manifest_digest.clone()),
            modules: s
                .cached
                .as_ref()
                .map(|c| c.modules.clone())
                .unwrap_or_default(),
            last_success: s.last_success.map(rfc3339),
            last_attempt: s.last_attempt.map(rfc3339),
            last_error: s.last_error.clone(),
            updates: s.updates,
            failures: s.failures,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A directory name for a reference: readable, and unique by a hash.
fn dir_name(reference: &str) -> String {
    let readable: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let hash = hex::encode(Sha256::digest(reference.as_bytes()));
    format!("{readable}-{}", &hash[..12])
}

/// Replaces the cache's modules with the artifact's: each file written
/// aside and renamed into place, files the artifact no longer holds
/// removed, then the state file.
fn write_cache(dir: &Path, reference: &str, artifact: Artifact) -> Result<CacheState, OciError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        OciError::Setup(format!("cannot {what} {}: {e}", path.display()))
    };
    let mut names = Vec::new();
    for m in &artifact.modules {
        let dest = dir.join(&m.file_name);
        let tmp = dir.join(format!(".{}.tmp", m.file_name));
        std::fs::write(&tmp, &m.bytes).map_err(|e| io("write", &tmp, e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| io("rename into", &dest, e))?;
        names.push(m.file_name.clone());
    }
    let existing = crate::rules::discover_modules(dir).map_err(|e| io("read", dir, e))?;
    for path in existing {
        let keep = path
            .file_name()
            .is_some_and(|n| names.iter().any(|m| n == m.as_str()));
        if !keep {
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
        }
    }
    let state = CacheState {
        reference: reference.to_string(),
        manifest_digest: artifact.manifest_digest,
        modules: names,
    };
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(&state).unwrap_or_default();
    std::fs::write(&tmp, json).map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(|e| io("write", dir, e))?;
    Ok(state)
}

/// Every OCI source of a configuration.
#[derive(Default)]
pub struct Sources {
    list: Vec<Arc<OciSource>>,
}

impl Sources {
    /// Sets up the cache directory of every source (no network yet).
    pub fn from_config(config: &PeregrineConfig) -> Result<Self, OciError> {
        if config.rules.sources.is_empty() {
            return Ok(Sources::default());
        }
        let root = config.engine.resolved_cache_dir().ok_or_else(|| {
            OciError::Setup(
                "rules.sources needs a cache directory: set engine.cache_dir (or HOME or XDG_CACHE_HOME)".into(),
            )
        })?;
        let list = config
            .rules
            .sources
            .iter()
            .map(|s| match s {
                RuleSourceConfig::Oci(c) => OciSource::new(c.clone(), &root).map(Arc::new),
            })
            .collect::<Result<_, _>>()?;
        Ok(Sources { list })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<OciSource>> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn dirs(&self) -> Vec<RulesDir> {
        self.list.iter().map(|s| s.rules_dir()).collect()
    }

    /// The first pull of every source, before the modules load. A failure
    /// leaves what an earlier run cached.
    pub async fn sync_all(&self) {
        for s in &self.list {
            let _ = s.sync().await;
        }
    }

    pub fn report(&self) -> Vec<SourceReport> {
        self.list.iter().map(|s| s.report()).collect()
    }

    /// One task per source: checks a tag every `poll_interval_secs` and
    /// brings the rule manager in step after each new pull. A pinned digest
    /// is checked only until it is cached. The tasks stop when the guard is
    /// dropped.
    pub fn spawn_pollers(&self, rules: Arc<RuleManager>) -> Pollers {
        let tasks = self
            .list
            .iter()
            .map(|source| {
                let (source, rules) = (source.clone(), rules.clone());
                tokio::spawn(async move {
                    let every = Duration::from_secs(source.config.poll_interval_secs);
                    loop {
                        tokio::time::sleep(every).await;
                        if source.reference.digest().is_some() && source.has_cache() {
                            break;
                        }
                        if let Ok(SyncOutcome::Updated { .. }) = source.sync().await {
                            let (dir, rules) = (source.rules_dir(), rules.clone());
                            let _ = tokio::task::spawn_blocking(move || rules.sync_dir(&dir)).await;
                        }
                    }
                })
            })
            .collect();
        Pollers(tasks)
    }
}

/// Stops the pollers when dropped.
pub struct Pollers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Pollers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_with_defaults_and_reject_unknown_keys() {
        let c = PeregrineConfig::parse(
            "[[rules.sources]]\ntype = \"oci\"\nreference = \"127.0.0.1:5000/rules/falco:1\"\n",
        )
        .unwrap()
        .validated()
        .unwrap();
        let RuleSourceConfig::Oci(s) = &c.rules.sources[0];
        assert_eq!(s.poll_interval_secs, 300);
        assert!(!s.plain_http);
        let err = PeregrineConfig::parse(
            "[[rules.sources]]\ntype = \"oci\"\nreference = \"r/x:1\"\npoll_interval = 5\n",
        )
        .unwrap_err();
        assert!(err.contains("poll_interval"), "{err}");
        let err = PeregrineConfig::parse("[[rules.sources]]\ntype = \"git\"\nreference = \"x\"\n")
            .unwrap_err();
        assert!(err.contains("oci"), "{err}");
        let err =
            PeregrineConfig::parse("[[rules.sources]]\ntype = \"oci\"\nreference = \"falco\"\n")
                .unwrap()
                .validated()
                .unwrap_err();
        assert!(err.contains("name the registry"), "{err}");
    }

    #[test]
    fn cache_directories_are_distinct_per_reference() {
        let a = dir_name("127.0.0.1:5000/rules/falco:1");
        let b = dir_name("127.0.0.1:5000/rules/falco_1");
        assert_ne!(a, b);
        assert!(a.starts_with("127.0.0.1_5000_rules_falco_1-"), "{a}");
    }
}
