//! `type = "webhook"`: every alert as Falco's JSON in its own POST, with
//! custom headers and TLS (private CA, client certificate).
//!
//! `type = "falcosidekick"` is the same output without custom headers:
//! Falco's JSON to a Falcosidekick (`:2801/`), one alert per POST, exactly
//! as Falco's `http_output` sends it, so every one of Falcosidekick's
//! outputs works with Peregrine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::{Deliver, SendFailure};
use super::http::{self, HttpTarget, HttpTargetConfig};
use crate::alert::Alert;

/// `url` is where alerts are POSTed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(flatten)]
    pub target: HttpTargetConfig,
    /// Headers sent with every request, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl WebhookConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.target.parsed_url()?;
        http::header_map(&self.headers)?;
        Ok(())
    }

    pub fn build(&self) -> Result<WebhookOutput, BuildError> {
        Ok(WebhookOutput {
            target: HttpTarget {
                client: self.target.client()?,
                url: self.target.parsed_url()?,
                headers: http::header_map(&self.headers)?,
            },
        })
    }
}

/// `url` is Falcosidekick's address, e.g. `http://falcosidekick:2801/`.
/// No `headers`: Falco's `http_output` sends none.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FalcosidekickConfig {
    #[serde(flatten)]
    pub target: HttpTargetConfig,
}

impl FalcosidekickConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.target.parsed_url().map(|_| ())
    }

    pub fn build(&self) -> Result<WebhookOutput, BuildError> {
        Ok(WebhookOutput {
            target: HttpTarget {
                client: self.target.client()?,
                url: self.target.parsed_url()?,
                headers: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_keys_are_shared_and_each_kind_keeps_its_own() {
        let w: WebhookConfig = toml::from_str(
            "url = \"http://x/\"\ntimeout_ms = 500\nheaders = { Authorization = \"Bearer t\" }\n[tls]\nca_file = \"/ca.pem\"\n[delivery]\nbatch_max = 7\n",
        )
        .unwrap();
        assert_eq!(w.target.url, "http://x/");
        assert_eq!(w.target.timeout_ms, 500);
        assert_eq!(w.target.tls.ca_file, Some("/ca.pem".into()));
        assert_eq!(w.target.delivery.batch_max, 7);
        assert_eq!(w.headers.len(), 1);
        let f: FalcosidekickConfig = toml::from_str("url = \"http://x:2801/\"").unwrap();
        assert_eq!(f.target.timeout_ms, http::DEFAULT_TIMEOUT_MS);
        assert!(f.validate().is_ok());
        // Falcosidekick takes no headers; unknown keys are refused.
        let err =
            toml::from_str::<FalcosidekickConfig>("url = \"http://x/\"\nheaders = { A = \"b\" }")
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `headers`"), "{err}");
        assert!(toml::from_str::<WebhookConfig>("url = \"http://x/\"\nurll = 1").is_err());
        assert!(toml::from_str::<WebhookConfig>("timeout_ms = 1").is_err());
        let err =
            toml::from_str::<WebhookConfig>("url = \"http://x/\"\n[tls]\nca = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field `ca`"), "{err}");
    }
}
