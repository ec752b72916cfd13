//! The OIDC token of a Pub/Sub push: a JWT Google signs with RS256 for the
//! subscription's service account, sent as `Authorization: Bearer <JWT>`.
//! Checked here: the signature against a key of the JSON Web Key Set (by
//! `kid`), the algorithm (RS256 only: a token cannot pick a weaker one),
//! `exp`/`nbf` (one minute of clock skew), `aud`, `iss`, and, when
//! configured, a verified `email`.
//!
//! The key set is fetched when first needed, again after an hour, and again
//! when a token names a key not in it (Google rotates its keys), at most
//! once every 30 seconds so forged `kid`s cannot make us hammer the URL. A
//! failed refresh keeps the keys already known.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::sources::config::PubsubPushConfig;
use crate::outputs::http::{HttpClient, TlsConfig, client, parse_url};

const REFRESH_AFTER: Duration = Duration::from_secs(3600);
const MIN_REFETCH: Duration = Duration::from_secs(30);
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a push's token was refused. The messages never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OidcError {
    #[error("missing OIDC token (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("invalid OIDC token: {0}")]
    Invalid(String),
    #[error("OIDC signing keys unavailable: {0}")]
    Keys(String),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

enum KeySource {
    Url(Box<(HttpClient, url::Url)>),
    File(PathBuf),
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

pub(crate) struct Verifier {
    validation: Validation,
    email: Option<String>,
    source: KeySource,
    cache: tokio::sync::Mutex<Cache>,
}

impl Verifier {
    pub(crate) fn new(config: &PubsubPushConfig) -> anyhow::Result<Self> {
        let audience = config
            .audience
            .clone()
            .ok_or_else(|| anyhow::anyhow!("pubsub_push: no audience"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&config.issuers);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 60;
        validation.validate_nbf = true;
        let source = match &config.jwks_file {
            Some(path) => KeySource::File(path.clone()),
            None => KeySource::Url(Box::new((
                client(&TlsConfig::default(), 10_000).map_err(|e| anyhow::anyhow!("{e}"))?,
                parse_url("jwks_url", &config.jwks_url).map_err(|e| anyhow::anyhow!("{e}"))?,
            ))),
        };
        Ok(Verifier {
            validation,
            email: config.service_account_email.clone(),
            source,
            cache: tokio::sync::Mutex::new(Cache::default()),
        })
    }

    /// Checks the `Authorization` header's token.
    pub(crate) async fn verify(&self, authorization: Option<&str>) -> Result<(), OidcError> {
        let token = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(OidcError::Missing)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| OidcError::Invalid("not a JWT".into()))?;
        if header.alg != Algorithm::RS256 {
            return Err(OidcError::Invalid(format!(
                "algorithm {:?}, not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| OidcError::Invalid("no key id (kid)".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| OidcError::Invalid(reason(&e)))?;
        if let Some(want) = &self.email {
            let claims = data.claims;
            if claims.email.as_deref() != Some(want.as_str()) {
                return Err(OidcError::Invalid(
                    "signed for another service account".into(),
                ));
            }
            if claims.email_verified != Some(true) {
                return Err(OidcError::Invalid("email is not verified".into()));
            }
        }
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, OidcError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched.is_none_or(|t| t.elapsed() > REFRESH_AFTER);
        let missing = !cache.keys.contains_key(kid);
        let may_fetch = cache.attempted.is_none_or(|t| t.elapsed() > MIN_REFETCH);
        if (stale || missing) && may_fetch {
            cache.attempted = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!("cannot refresh the OIDC signing keys: {e}");
                    if cache.keys.is_empty() {
                        return Err(OidcError::Keys(e));
                    }
                }
            }
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| OidcError::Invalid("signed with an unknown key".into()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let bytes = match &self.source {
            KeySource::File(path) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            KeySource::Url(target) => {
                let (client, url) = &**target;
                let (status, body) = client.get(url, MAX_JWKS_BYTES).await?;
                if status != 200 {
                    return Err(format!(
                        "GET {}: HTTP {status}",
                        crate::outputs::http::redact(url)
                    ));
                }
                body
            }
        };
        parse_jwks(&bytes)
    }
}

/// The RSA keys of a JSON Web Key Set, by key id.
fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), AlgorithmParameters::RSA(_)) = (&jwk.common.key_id, &jwk.algorithm) else {
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(k) => {
                keys.insert(kid.clone(), k);
            }
            Err(e) => tracing::warn!(kid = %kid, "unusable key in the key set: {e}"),
        }
    }
    if keys.is_empty() {
        return Err("the key set holds no RSA key with a key id".into());
    }
    Ok(keys)
}

/// Why decoding failed, in words that name the claim, not its value.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature".into(),
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::MissingRequiredClaim(c) => format!("no `{c}` claim"),
        K::InvalidAlgorithm => "wrong algorithm".into(),
        _ => "malformed".into(),
    }
}
