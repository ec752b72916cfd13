//! `type = "falcosidekick"`: Falco's JSON to a Falcosidekick (`:2801/`), one
//! alert per POST, exactly as Falco's `http_output` sends it, so every one
//! of Falcosidekick's outputs works with Peregrine.

use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::{Deliver, OutputDeliveryConfig, SendFailure};
use super::http::{self, HttpTarget, TlsConfig};
use super::webhook::{default_timeout_ms, post_each};
use crate::alert::Alert;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FalcosidekickConfig {
    /// Falcosidekick's address, e.g. `http://falcosidekick:2801/`.
    pub url: String,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

impl FalcosidekickConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        http::parse_url("url", &self.url).map(|_| ())
    }

    pub fn build(&self) -> Result<FalcosidekickOutput, BuildError> {
        Ok(FalcosidekickOutput {
            target: HttpTarget {
                client: http::client(&self.tls, self.timeout_ms)?,
                url: http::parse_url("url", &self.url)?,
                headers: Default::default(),
            },
        })
    }
}

pub struct FalcosidekickOutput {
    target: HttpTarget,
}

impl Deliver for FalcosidekickOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        post_each(&self.target, alerts, |a| {
            a.to_falco_json().to_string().into_bytes()
        })
        .await
    }
}
