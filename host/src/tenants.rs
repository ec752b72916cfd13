//! Tenants: who may post events, to which rule modules, within which quotas.
//!
//! Every tenant posts to `/k8s-audit/<tenant>` with its bearer token; the
//! plain `/k8s-audit` is the `default` tenant, open unless the configuration
//! closes it or gives it tokens. Tokens are compared as sha256 digests in
//! constant time, so neither their content nor their length leaks through
//! timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Bearer tokens accepted for this tenant.
    pub tokens: Vec<String>,
    /// Files holding one token each (a mounted Kubernetes Secret), read at start.
    pub token_files: Vec<PathBuf>,
    /// Rule directories of this tenant, evaluated on top of the global ones,
    /// for this tenant's events only.
    pub rules_dirs: Vec<PathBuf>,
    /// Events per second accepted (sustained; bursts up to one second's worth).
    pub events_per_second: Option<u32>,
    /// Modules the tenant's own directories may hold.
    pub max_modules: Option<usize>,
    /// Memory cap of each of the tenant's module instances, in MiB (a ceiling
    /// on the sandbox limit).
    pub memory_mib: Option<usize>,
    /// Share of the event queue this tenant may fill, between 0 and 1.
    pub queue_share: Option<f64>,
    /// Per-module configuration for this tenant's own modules.
    pub modules: BTreeMap<String, toml::Table>,
    /// The cluster this tenant's events come from, in `peregrine.cluster`
    /// of their alerts, when the request or source names none. Default:
    /// the tenant's id.
    pub cluster: Option<String>,
    /// Clusters this tenant may name (path segment, source, envelope).
    /// Empty: any. Routes match on the cluster, so a shared platform lists
    /// each tenant's clusters here to stop one posting as another's.
    pub clusters: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether `/k8s-audit` (the default tenant) accepts requests without a
    /// token. Giving `[tenants.default]` tokens closes it too.
    pub default_tenant_open: bool,
    /// Tokens that may read everything through the API and UI. While there
    /// are none, the API and UI are open to anyone who can reach them (the
    /// default listens on 127.0.0.1 only); once there are, a tenant's token
    /// shows that tenant's alerts and modules only.
    pub admin_tokens: Vec<String>,
    /// Files holding one admin token each.
    pub admin_token_files: Vec<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            default_tenant_open: true,
            admin_tokens: Vec::new(),
            admin_token_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown tenant")]
    UnknownTenant,
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    MissingCredentials,
    #[error("invalid bearer token")]
    BadCredentials,
}

/// A tenant at run time.
pub struct Tenant {
    pub id: Arc<str>,
    /// The cluster of events that name none.
    pub cluster: Arc<str>,
    token_digests: Vec<[u8; 32]>,
    open: bool,
    pub config: TenantConfig,
    bucket: Option<Mutex<TokenBucket>>,
}

impl std::fmt::Debug for Tenant {
    // Never print token digests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// Whether this tenant may label its events with `cluster`.
    pub fn cluster_allowed(&self, cluster: &str) -> bool {
        self.config.clusters.is_empty()
            || &*self.cluster == cluster
            || self.config.clusters.iter().any(|c| c == cluster)
    }

    /// The share of the queue (of its events and of its bytes) this tenant
    /// may fill.
    pub fn queue_share(&self) -> Option<f64> {
        self.config.queue_share
    }

    /// Takes `events` from the tenant's rate budget, or says how many
    /// seconds to wait before retrying.
    pub fn admit(&self, events: usize) -> Result<(), u64> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(events as f64, Instant::now())
    }
}

struct TokenBucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            burst: rate,
            level: rate,
            at: Instant::now(),
        }
    }

    fn take(&mut self, n: f64, now: Instant) -> Result<(), u64> {
        self.level =
            (self.level + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        // A batch larger than the burst could never pass; let it through on a
        // full bucket and go into debt instead.
        if self.level >= n || self.level >= self.burst {
            self.level -= n;
            Ok(())
        } else {
            Err(((n.min(self.burst) - self.level) / self.rate)
                .ceil()
                .max(1.0) as u64)
        }
    }
}

/// What a cluster name may be, for messages.
pub const CLUSTER_NAME_RULE: &str =
    "must be 1 to 100 letters, digits, '-', '_' or '.' (the names EKS, GKE and AKS allow)";

/// A cluster name: what EKS, GKE and AKS accept (letters, digits, `-`,
/// `_`), plus `.` for names that carry a domain. It travels in URL paths,
/// metric labels and alert fields, so nothing else is let in.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// All tenants, by id, and who may read the API.
pub struct Tenants {
    by_id: BTreeMap<String, Arc<Tenant>>,
    admin_digests: Vec<[u8; 32]>,
}

/// What a caller of the API may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAccess {
    All,
    Tenant(Arc<str>),
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `offered` is one of `digests`, checking every one in constant time.
fn matches_any(digests: &[[u8; 32]], offered: &[u8; 32]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for d in digests {
        ok |= d.ct_eq(offered);
    }
    bool::from(ok)
}

impl Tenants {
    pub fn from_config(
        auth: &AuthConfig,
        tenants: &BTreeMap<String, TenantConfig>,
    ) -> anyhow::Result<Self> {
        let mut by_id = BTreeMap::new();
        for (id, cfg) in tenants {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                anyhow::bail!("tenant id `{id}` must be letters, digits, '-' or '_'");
            }
            let mut digests: Vec<[u8; 32]> = cfg.tokens.iter().map(|t| digest(t)).collect();
            for file in &cfg.token_files {
                let token = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!(
                        "tenant `{id}`: cannot read token file {}: {e}",
                        file.display()
                    )
                })?;
                digests.push(digest(&token));
            }
            if cfg.tokens.iter().any(|t| t.trim().len() < 16) {
                anyhow::bail!("tenant `{id}`: tokens must be at least 16 characters");
            }
            if id != DEFAULT_TENANT && digests.is_empty() {
                anyhow::bail!("tenant `{id}` has no tokens: add `tokens` or `token_files`");
            }
            if cfg.queue_share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
                anyhow::bail!("tenant `{id}`: queue_share must be in (0, 1]");
            }
            let open = id == DEFAULT_TENANT && auth.default_tenant_open && digests.is_empty();
            for c in cfg.cluster.iter().chain(&cfg.clusters) {
                if !valid_cluster_name(c) {
                    anyhow::bail!("tenant `{id}`: cluster `{c}` {CLUSTER_NAME_RULE}");
                }
            }
            by_id.insert(
                id.clone(),
                Arc::new(Tenant {
                    id: id.as_str().into(),
                    cluster: cfg.cluster.as_deref().unwrap_or(id).into(),
                    token_digests: digests,
                    open,
                    bucket: cfg
                        .events_per_second
                        .map(|r| Mutex::new(TokenBucket::new(r))),
                    config: cfg.clone(),
                }),
            );
        }
        by_id.entry(DEFAULT_TENANT.to_string()).or_insert_with(|| {
            Arc::new(Tenant {
                id: DEFAULT_TENANT.into(),
                cluster: DEFAULT_TENANT.into(),
                token_digests: Vec::new(),
                open: auth.default_tenant_open,
                bucket: None,
                config: TenantConfig::default(),
            })
        });
        let mut admin_digests: Vec<[u8; 32]> =
            auth.admin_tokens.iter().map(|t| digest(t)).collect();
        if auth.admin_tokens.iter().any(|t| t.trim().len() < 16) {
            anyhow::bail!("auth.admin_tokens: tokens must be at least 16 characters");
        }
        for file in &auth.admin_token_files {
            let token = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("cannot read admin token file {}: {e}", file.display())
            })?;
            admin_digests.push(digest(&token));
        }
        // A token names one caller: shared between tenants, a request with it
        // could not say whose events it posts or whose alerts it reads.
        let mut owner: BTreeMap<[u8; 32], &str> = BTreeMap::new();
        for d in &admin_digests {
            owner.insert(*d, "the admin tokens");
        }
        for (id, t) in &by_id {
            for d in &t.token_digests {
                match owner.insert(*d, id) {
                    Some(other) if other != id.as_str() => anyhow::bail!(
                        "tenant `{id}` and {} share a token: every tenant needs tokens of its own",
                        if other == "the admin tokens" {
                            other.to_string()
                        } else {
                            format!("tenant `{other}`")
                        }
                    ),
                    _ => {}
                }
            }
        }
        Ok(Tenants {
            by_id,
            admin_digests,
        })
    }

    /// Beyond loopback, an open API shows every tenant's alerts and an open
    /// webhook takes anyone's events: allowed (a NetworkPolicy may guard the
    /// port), but never silently.
    pub(crate) fn warn_if_exposed(&self, addr: std::net::SocketAddr) {
        if addr.ip().is_loopback() {
            return;
        }
        if self.api_open() {
            tracing::warn!(
                "the API and UI on {addr} are open: anyone who can reach it reads every alert and module; \
                 set auth.admin_tokens (or give tenants tokens) to require a token"
            );
        }
        if self.default_open() {
            tracing::warn!(
                "the webhook POST /k8s-audit on {addr} takes events without a token: anyone who can reach it \
                 can post audit events; give [tenants.default] tokens or set auth.default_tenant_open = false"
            );
        }
    }

    /// Whether the API and UI answer without a token: only while no token
    /// at all is configured. Once a tenant has a token its alerts are its
    /// own, so the API is closed too, even without an admin token.
    pub fn api_open(&self) -> bool {
        self.admin_digests.is_empty() && self.by_id.values().all(|t| t.token_digests.is_empty())
    }

    /// Whether `/k8s-audit` (the default tenant) takes events without a token.
    pub fn default_open(&self) -> bool {
        self.by_id.get(DEFAULT_TENANT).is_some_and(|t| t.open)
    }

    /// Who is calling the API: everyone while it is open ([`Self::api_open`]);
    /// otherwise an admin token sees all, a tenant token its own tenant.
    pub fn api_access(&self, headers: &HeaderMap) -> Result<ApiAccess, AuthError> {
        if self.api_open() {
            return Ok(ApiAccess::All);
        }
        let offered = digest(bearer(headers).ok_or(AuthError::MissingCredentials)?);
        if matches_any(&self.admin_digests, &offered) {
            return Ok(ApiAccess::All);
        }
        self.by_id
            .values()
            .find(|t| matches_any(&t.token_digests, &offered))
            .map(|t| ApiAccess::Tenant(t.id.clone()))
            .ok_or(AuthError::BadCredentials)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_id.values()
    }

    /// Checks the request's bearer token against the tenant's.
    pub fn authenticate(&self, id: &str, headers: &HeaderMap) -> Result<Arc<Tenant>, AuthError> {
        self.authenticate_token(id, bearer(headers))
    }

    /// Checks a token offered some other way (Firehose's access key header)
    /// against the tenant's.
    pub fn authenticate_token(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> Result<Arc<Tenant>, AuthError> {
        let tenant = self.by_id.get(id).ok_or(AuthError::UnknownTenant)?;
        if tenant.open {
            return Ok(tenant.clone());
        }
        let offered = digest(token.ok_or(AuthError::MissingCredentials)?);
        // Check every token, without stopping at a match, in constant time.
        if matches_any(&tenant.token_digests, &offered) {
            Ok(tenant.clone())
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    /// Whether `id` is open: it takes requests without a token.
    pub fn is_open(&self, id: &str) -> bool {
        self.by_id.get(id).is_some_and(|t| t.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_open_and_close_tenants() {
        let mut t = BTreeMap::new();
        t.insert(
            "team-a".to_string(),
            TenantConfig {
                tokens: vec!["a-very-secret-token-1".into()],
                ..Default::default()
            },
        );
        let tenants = Tenants::from_config(&AuthConfig::default(), &t).unwrap();
        assert!(tenants.authenticate("default", &headers(None)).is_ok());
        assert_eq!(
            tenants.authenticate("team-a", &headers(None)).unwrap_err(),
            AuthError::MissingCredentials
        );
        assert_eq!(
            tenants
                .authenticate("team-a", &headers(Some("a-very-secret-token-2")))
                .unwrap_err(),
            AuthError::BadCredentials
        );
        assert!(
            tenants
                .authenticate("team-a", &headers(Some("a-very-secret-token-1")))
                .is_ok()
        );
        assert_eq!(
            tenants.authenticate("nope", &headers(None)).unwrap_err(),
            AuthError::UnknownTenant
        );

        let closed = Tenants::from_config(
            &AuthConfig {
                default_tenant_open: false,
                ..Default::default()
            },
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(closed.authenticate("default", &headers(Some("x"))).is_err());
    }

    #[test]
    fn weak_or_missing_tokens_are_refused_at_start() {
        let mut t = BTreeMap::new();
        t.insert("b".to_string(), TenantConfig::default());
        assert!(Tenants::from_config(&AuthConfig::default(), &t).is_err());
        t.insert(
            "b".to_string(),
            TenantConfig {
                tokens: vec!["short".into()],
                ..Default::default()
            },
        );
        assert!(Tenants::from_config(&AuthConfig::default(), &t).is_err());
    }

    #[test]
    fn bucket_limits_rate_and_says_when_to_retry() {
        let start = Instant::now();
        let mut b = TokenBucket::new(100);
        b.at = start;
        assert!(b.take(100.0, start).is_ok());
        assert_eq!(b.take(50.0, start), Err(1));
        assert!(
            b.take(50.0, start + std::time::Duration::from_millis(500))
                .is_ok()
        );
        // A batch bigger than the burst passes on a full bucket, then waits.
        let later = start + std::time::Duration::from_secs(10);
        assert!(b.take(400.0, later).is_ok());
        assert!(b.take(1.0, later).is_err());
    }
}
