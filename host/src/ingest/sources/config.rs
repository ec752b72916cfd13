//! The `[[sources]]` section: what each kind of source is configured with,
//! and the checks on it. Apart from the sources that run so the
//! configuration can hold it without importing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::outputs::http::parse_url;
use crate::tenants::{CLUSTER_NAME_RULE, DEFAULT_TENANT, TenantConfig, valid_cluster_name};

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
pub fn validate(
    sources: &[SourceConfig],
    tenants: &BTreeMap<String, TenantConfig>,
) -> Result<(), String> {
    let mut names = BTreeMap::new();
    let mut push = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        let at = format!("sources[{i}] ({})", s.kind());
        let tenant = s.tenant();
        if tenant != DEFAULT_TENANT && !tenants.contains_key(tenant) {
            return Err(format!("{at}: tenant `{tenant}` is not configured"));
        }
        if let Some(c) = s.cluster() {
            if !valid_cluster_name(c) {
                return Err(format!("{at}: cluster `{c}` {CLUSTER_NAME_RULE}"));
            }
            let allowed = tenants
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Name in metrics and logs. Default: `file:<path>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Tenant of the events.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Cluster of the events. Default: the tenant's.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The audit log file (`--audit-log-path`).
    pub path: PathBuf,
    /// Where to start when no position is saved: `end` (only what is
    /// written from now on) or `beginning` (the whole file).
    #[serde(default)]
    pub start_at: StartAt,
    /// Where the position is saved. Default: `sources/file-<hash of
    /// path>.json` beside the journal directory.
    #[serde(default)]
    pub position_file: Option<PathBuf>,
    /// How often the file is checked for new lines and rotation.
    #[serde(default = "default_file_poll_ms")]
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    End,
    Beginning,
}

fn default_file_poll_ms() -> u64 {
    250
}

impl FileSourceConfig {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.path.display()))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("path must not be empty".into());
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err("poll_interval_ms must be between 10 and 60000".into());
        }
        Ok(())
    }

    /// The position file: configured, or beside the journal directory.
    pub fn resolved_position_file(&self, journal_dir: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = &self.position_file {
            return Some(p.clone());
        }
        let base = match journal_dir {
            Some(j) => j.parent().map(Path::to_path_buf)?,
            None => crate::paths::xdg_dir("XDG_DATA_HOME", ".local/share")?.join("peregrine"),
        };
        let digest = hex::encode(Sha256::digest(self.path.as_os_str().as_encoded_bytes()));
        Some(
            base.join("sources")
                .join(format!("file-{}.json", &digest[..16])),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchSourceConfig {
    /// Name in metrics and logs. Default: `cloudwatch:<log group>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The EKS cluster: names the default log group and every event's
    /// cluster. Without it, `log_group` is required and events carry the
    /// tenant's cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The AWS region of the log group (`us-east-1`).
    pub region: String,
    /// Default: `/aws/eks/<cluster>/cluster`.
    #[serde(default)]
    pub log_group: Option<String>,
    #[serde(default = "default_prefix")]
    pub log_stream_prefix: String,
    /// The CloudWatch Logs URL instead of `https://logs.<region>.amazonaws.com/`
    /// (a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The STS URL for web-identity credentials instead of
    /// `https://sts.<region>.amazonaws.com/`.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Where to start when no position is saved: `end` (from now) or
    /// `beginning` (everything the log group retains).
    #[serde(default)]
    pub start_at: StartAt,
    /// Default: `sources/cloudwatch-<hash>.json` beside the journal directory.
    #[serde(default)]
    pub position_file: Option<PathBuf>,
    #[serde(default = "default_cloudwatch_poll_ms")]
    pub poll_interval_ms: u64,
    /// Events per page (`limit`, 1 to 10000). Default: the API's (10000).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Timeout of one API call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How far before the newest event taken each poll asks again, for
    /// events CloudWatch ingests late (another apiserver's stream); the ids
    /// already taken in that window are skipped.
    #[serde(default = "default_lookback_ms")]
    pub lookback_ms: u64,
}

fn default_prefix() -> String {
    "kube-apiserver-audit".to_string()
}
fn default_cloudwatch_poll_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_lookback_ms() -> u64 {
    60_000
}

impl CloudWatchSourceConfig {
    pub fn log_group(&self) -> String {
        match (&self.log_group, &self.cluster) {
            (Some(g), _) => g.clone(),
            (None, Some(c)) => format!("/aws/eks/{c}/cluster"),
            (None, None) => String::new(),
        }
    }

    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("cloudwatch:{}", self.log_group()))
    }

    pub(crate) fn url(&self) -> Result<url::Url, String> {
        let u = match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://logs.{}.amazonaws.com/", self.region),
        };
        parse_url("endpoint", &u).map_err(|e| e.to_string())
    }

    pub(crate) fn sts_url(&self) -> Result<url::Url, String> {
        let u = match &self.sts_endpoint {
            Some(e) => e.clone(),
            None => format!("https://sts.{}.amazonaws.com/", self.region),
        };
        parse_url("sts_endpoint", &u).map_err(|e| e.to_string())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err("region must be an AWS region name such as `us-east-1`".into());
        }
        let group = self.log_group();
        if group.is_empty() {
            return Err("log_group is required when cluster is not set".into());
        }
        if group.len() > 512 || self.log_stream_prefix.len() > 512 {
            return Err("log_group and log_stream_prefix are at most 512 characters".into());
        }
        if !(10..=3_600_000).contains(&self.poll_interval_ms) {
            return Err("poll_interval_ms must be between 10 and 3600000".into());
        }
        if self.page_size.is_some_and(|n| !(1..=10_000).contains(&n)) {
            return Err("page_size must be between 1 and 10000".into());
        }
        if self.lookback_ms > 3_600_000 {
            return Err("lookback_ms must be at most 3600000".into());
        }
        if !(100..=600_000).contains(&self.timeout_ms) {
            return Err("timeout_ms must be between 100 and 600000".into());
        }
        self.url()?;
        self.sts_url()?;
        Ok(())
    }
}
