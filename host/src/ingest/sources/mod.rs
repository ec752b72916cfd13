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
pub mod config;
pub(crate) mod file;
pub mod pull;
pub(crate) mod sigv4;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use config::push_name;

pub use config::{
    CloudWatchSourceConfig, FileSourceConfig, FirehoseSourceConfig, PubsubPushConfig, SourceConfig,
    StartAt, validate,
};
pub use pull::{Running, start_pulls};

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
    pub fn from_config(sources: &[SourceConfig]) -> anyhow::Result<Self> {
        let mut out = PushSources::default();
        for s in sources {
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
