//! `type = "webhook"`: every alert as Falco's JSON in its own POST, with
//! custom headers and TLS (private CA, client certificate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::{Deliver, OutputDeliveryConfig, SendFailure};
use super::http::{self, HttpTarget, TlsConfig};
use crate::alert::Alert;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where alerts are POSTed (http or https).
    pub url: String,
    /// Headers sent with every request, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

pub(crate) fn default_timeout_ms() -> u64 {
    http::DEFAULT_TIMEOUT_MS
}

impl WebhookConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        http::parse_url("url", &self.url)?;
        http::header_map(&self.headers)?;
        Ok(())
    }

    pub fn build(&self) -> Result<WebhookOutput, BuildError> {
        Ok(WebhookOutput {
            target: HttpTarget {
                client: http::client(&self.tls, self.timeout_ms)?,
                url: http::parse_url("url", &self.url)?,
                headers: http::header_map(&self.headers)?,
            },
        })
    }
}

pub struct WebhookOutput {
    target: HttpTarget,
}

/// One POST per alert, in order; stops at the first failure so the
/// delivered prefix is acknowledged and the rest retried.
pub(crate) async fn post_each(
    target: &HttpTarget,
    alerts: &[Alert],
    body: impl Fn(&Alert) -> Vec<u8>,
) -> Result<(), SendFailure> {
    for (i, a) in alerts.iter().enumerate() {
        target
            .post_json(body(a))
            .await
            .map_err(|error| SendFailure {
                delivered: i,
                error,
            })?;
    }
    Ok(())
}

impl Deliver for WebhookOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        post_each(&self.target, alerts, |a| {
            a.to_falco_json().to_string().into_bytes()
        })
        .await
    }
}
