//! `[[sources]]`: inputs other than the audit webhook, each feeding the same
//! pipeline (tenant, cluster, dedup, journal, queue):
//! - `file`: tails a kube-apiserver `--audit-log-path` ([`file`]);
//! - `cloudwatch`: pulls an EKS cluster's audit log from CloudWatch Logs
//!   (`FilterLogEvents`, SigV4-signed) ([`cloudwatch`]);
//! - `firehose`: settings of `POST /ingest/firehose/<tenant>`, Amazon Data
//!   Firehose's HTTP endpoint delivery (EKS through CloudWatch Logs);
//! - `pubsub_push`: settings of `POST /ingest/pubsub/<tenant>`, a Pub/Sub
//!   push subscription (GKE through a log sink), with its OIDC check.
//!
//! The push endpoints work without a `[[sources]]` entry, for the tenant
//! and with its tokens; an entry names the cluster, the metrics label and,
//! for Pub/Sub, the identity the pushes must carry.

pub(crate) mod aws_credentials;
pub(crate) mod cloudwatch;
pub(crate) mod file;
pub(crate) mod sigv4;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::PeregrineConfig;
use crate::tenants::{CLUSTER_NAME_RULE, DEFAULT_TENANT, valid_cluster_name};

pub use cloudwatch::CloudWatchSourceConfig;
pub use file::{FileSourceConfig, StartAt};

/// One `[[sources]]` entry; `type` selects the kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    File(FileSourceConfig),
    #[serde(rename = "cloudwatch")]
    CloudWatch(CloudWatchSourceConfig),
    Firehose(FirehoseSourceConfig),
    PubsubPush(PubsubPushConfig),
}

/// `type = "firehose"`: the tenant's Firehose endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseSourceConfig {
    /// Name in metrics and logs. Default: `firehose/<tenant>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The tenant whose endpoint this is (`/ingest/firehose/<tenant>`);
    /// Firehose's access key must be one of its tokens.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Cluster of every event it brings. Default: the one in the log group
    /// (`/aws/eks/<cluster>/cluster`), else the tenant's.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `type = "pubsub_push"`: the tenant's Pub/Sub push endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubPushConfig {
    /// Name in metrics and logs. Default: `pubsub/<tenant>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The tenant whose endpoint this is (`/ingest/pubsub/<tenant>`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Cluster of every event it brings. Default: the LogEntry's
    /// `resource.labels.cluster_name`, else the tenant's.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The audience the push subscription's OIDC token carries. Set, every
    /// push must bear a valid token (`Authorization: Bearer <JWT>`, RS256,
    /// signed by a key of `jwks_url` or `jwks_file`). Unset, the tenant's
    /// own rule applies (open, or one of its tokens as the bearer).
    #[serde(default)]
    pub audience: Option<String>,
    /// Where the signing keys are published (a JSON Web Key Set).
    #[serde(default = "default_jwks_url")]
    pub jwks_url: String,
    /// A JSON Web Key Set file to use instead of `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted `iss` claims.
    #[serde(default = "default_issuers")]
    pub issuers: Vec<String>,
    /// The service account the subscription pushes as (the token's
    /// `email`, which must be verified). Unset: any.
    #[serde(default)]
    pub service_account_email: Option<String>,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

fn default_jwks_url() -> String {
    "https://www.googleapis.com/oauth2/v3/certs".to_string()
}

fn default_issuers() -> Vec<String> {
    vec![
        "https://accounts.google.com".to_string(),
        "accounts.google.com".to_string(),
    ]
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::File(_) => "file",
            SourceConfig::CloudWatch(_) => "cloudwatch",
            SourceConfig::Firehose(_) => "firehose",
            SourceConfig::PubsubPush(_) => "pubsub_push",
        }
    }

    pub fn tenant(&self) -> &str {
        match self {
            SourceConfig::File(c) => &c.tenant,
            SourceConfig::CloudWatch(c) => &c.tenant,
            SourceConfig::Firehose(c) => &c.tenant,
            SourceConfig::PubsubPush(c) => &c.tenant,
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        match self {
            SourceConfig::File(c) => c.cluster.as_deref(),
            SourceConfig::CloudWatch(c) => c.cluster.as_deref(),
            SourceConfig::Firehose(c) => c.cluster.as_deref(),
            SourceConfig::PubsubPush(c) => c.cluster.as_deref(),
        }
    }

    /// The name in metrics and logs.
    pub fn name(&self) -> String {
        match self {
            SourceConfig::File(c) => c.name(),
            SourceConfig::CloudWatch(c) => c.name(),
            SourceConfig::Firehose(c) => c
                .name
                .clone()
                .unwrap_or_else(|| push_name("firehose", &c.tenant)),
            SourceConfig::PubsubPush(c) => c
                .name
                .clone()
                .unwrap_or_else(|| push_name("pubsub", &c.tenant)),
        }
    }
}

/// The metrics label of a push endpoint without a `[[sources]]` entry.
pub(crate) fn push_name(kind: &str, tenant: &str) -> String {
    format!("{kind}/{tenant}")
}

/// Checks the sources against the rest of the configuration.
pub fn validate(config: &PeregrineConfig) -> Result<(), String> {
    let mut names = BTreeMap::new();
    let mut push = BTreeMap::new();
    for (i, s) in config.sources.iter().enumerate() {
        let at = format!("sources[{i}] ({})", s.kind());
        let tenant = s.tenant();
        if tenant != DEFAULT_TENANT && !config.tenants.contains_key(tenant) {
            return Err(format!("{at}: tenant `{tenant}` is not configured"));
        }
        if let Some(c) = s.cluster() {
            if !valid_cluster_name(c) {
                return Err(format!("{at}: cluster `{c}` {CLUSTER_NAME_RULE}"));
            }
            let allowed = config
                .tenants
                .get(tenant)
                .is_none_or(|t| t.clusters.is_empty() || t.clusters.iter().any(|x| x == c));
            if !allowed {
                return Err(format!(
                    "{at}: cluster `{c}` is not in tenant `{tenant}`'s clusters"
                ));
            }
        }
        let name = s.name();
        if name.is_empty() || name.len() > 128 {
            return Err(format!("{at}: name must be 1 to 128 characters"));
        }
        if let Some(j) = names.insert(name.clone(), i) {
            return Err(format!(
                "{at}: name `{name}` is also the name of sources[{j}]"
            ));
        }
        match s {
            SourceConfig::File(f) => f.validate().map_err(|e| format!("{at}: {e}"))?,
            SourceConfig::CloudWatch(c) => c.validate().map_err(|e| format!("{at}: {e}"))?,
            SourceConfig::Firehose(_) | SourceConfig::PubsubPush(_) => {
                if let Some(j) = push.insert((s.kind(), tenant.to_string()), i) {
                    return Err(format!(
                        "{at}: tenant `{tenant}` already has a {} source, sources[{j}]",
                        s.kind()
                    ));
                }
            }
        }
        if let SourceConfig::PubsubPush(p) = s {
            if p.audience.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{at}: audience must not be empty"));
            }
            if p.audience.is_some() && p.issuers.is_empty() {
                return Err(format!("{at}: issuers must not be empty"));
            }
            if p.jwks_file.is_none() {
                crate::outputs::http::parse_url("jwks_url", &p.jwks_url)
                    .map_err(|e| format!("{at}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The push endpoints' settings at run time, by tenant.
#[derive(Default)]
pub struct PushSources {
    firehose: BTreeMap<String, FirehoseSourceConfig>,
    pubsub: BTreeMap<String, (PubsubPushConfig, Option<Arc<super::oidc::Verifier>>)>,
}

/// What a push endpoint of one tenant does.
pub(crate) struct PushSettings<'a> {
    pub name: String,
    pub cluster: Option<&'a str>,
}

impl PushSources {
    pub fn from_config(config: &PeregrineConfig) -> anyhow::Result<Self> {
        let mut out = PushSources::default();
        for s in &config.sources {
            match s {
                SourceConfig::Firehose(f) => {
                    out.firehose.insert(f.tenant.clone(), f.clone());
                }
                SourceConfig::PubsubPush(p) => {
                    let verifier = match &p.audience {
                        Some(_) => Some(Arc::new(super::oidc::Verifier::new(p)?)),
                        None => None,
                    };
                    out.pubsub.insert(p.tenant.clone(), (p.clone(), verifier));
                }
                SourceConfig::File(_) | SourceConfig::CloudWatch(_) => {}
            }
        }
        Ok(out)
    }

    pub(crate) fn firehose(&self, tenant: &str) -> PushSettings<'_> {
        match self.firehose.get(tenant) {
            Some(f) => PushSettings {
                name: SourceConfig::Firehose(f.clone()).name(),
                cluster: f.cluster.as_deref(),
            },
            None => PushSettings {
                name: push_name("firehose", tenant),
                cluster: None,
            },
        }
    }

    /// The settings, and the OIDC verifier when pushes must carry a token.
    pub(crate) fn pubsub(
        &self,
        tenant: &str,
    ) -> (PushSettings<'_>, Option<Arc<super::oidc::Verifier>>) {
        match self.pubsub.get(tenant) {
            Some((p, v)) => (
                PushSettings {
                    name: SourceConfig::PubsubPush(p.clone()).name(),
                    cluster: p.cluster.as_deref(),
                },
                v.clone(),
            ),
            None => (
                PushSettings {
                    name: push_name("pubsub", tenant),
                    cluster: None,
                },
                None,
            ),
        }
    }
}

/// A running pull source (a file, CloudWatch Logs).
pub enum Running {
    File(file::FileSource),
    CloudWatch(cloudwatch::CloudWatchSource),
}

impl Running {
    /// Stops after the batch in hand; what was not saved is read again.
    pub fn stop(self) {
        match self {
            Running::File(s) => s.stop(),
            Running::CloudWatch(s) => s.stop(),
        }
    }
}

/// Starts every pull source (`file`, `cloudwatch`).
pub fn start_pulls(
    config: &PeregrineConfig,
    app: &Arc<crate::server::AppState>,
) -> anyhow::Result<Vec<Running>> {
    let mut out = Vec::new();
    for s in &config.sources {
        match s {
            SourceConfig::File(f) => out.push(Running::File(file::FileSource::start(
                f.clone(),
                app.clone(),
            )?)),
            SourceConfig::CloudWatch(c) => out.push(Running::CloudWatch(
                cloudwatch::CloudWatchSource::start(c.clone(), app.clone())?,
            )),
            SourceConfig::Firehose(_) | SourceConfig::PubsubPush(_) => {}
        }
    }
    Ok(out)
}

/// A position file's default place: `sources/<kind>-<hash of key>.json`
/// beside the journal directory (else in the data directory).
pub(crate) fn default_position_file(
    journal_dir: Option<&Path>,
    kind: &str,
    key: &str,
) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let base = match journal_dir {
        Some(j) => j.parent().map(Path::to_path_buf)?,
        None => crate::paths::xdg_dir("XDG_DATA_HOME", ".local/share")?.join("peregrine"),
    };
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    Some(
        base.join("sources")
            .join(format!("{kind}-{}.json", &digest[..16])),
    )
}

/// Per-source counters, labelled with the source's name.
pub(crate) fn count_records(source: &str, outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("peregrine_source_records_total", "source" => source.to_string(), "outcome" => outcome)
            .increment(n as u64);
    }
}

pub(crate) fn count_error(source: &str, kind: &'static str) {
    metrics::counter!("peregrine_source_errors_total", "source" => source.to_string(), "kind" => kind)
        .increment(1);
}

/// How far behind the source is: now minus the newest event's time.
pub(crate) fn record_lag(source: &str, events: &[peregrine_sdk::audit::AuditEvent]) {
    let Some(newest) = events.iter().filter_map(|e| e.time_unix_nanos()).max() else {
        return;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    metrics::gauge!("peregrine_source_lag_seconds", "source" => source.to_string())
        .set(((now - newest) as f64 / 1e9).max(0.0));
}

/// A source's saved position, or `None` when there is none yet or it cannot
/// be read (logged: the source then starts as configured).
pub(crate) fn load_position<P: serde::de::DeserializeOwned>(path: &Path) -> Option<P> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(file = %path.display(), "unreadable position file, ignored: {e}");
            None
        }
    }
}

/// Saves a source's position whole or not at all: written beside, then
/// renamed over the old one.
pub(crate) fn save_position<P: Serialize>(path: &Path, p: &P) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(p).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}
