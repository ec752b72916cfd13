//! Where alerts go. One file per output kind, each a `<Kind>Config` (serde)
//! with a `build()` that makes its runtime half, a [`delivery::Deliver`].
//! Queueing, retries and the spool are the same for every kind and live in
//! [`delivery`] and [`spool`]; the HTTP kinds share [`http`]. Starting the
//! configured outputs and stopping them is `lifecycle.rs`'s.

pub mod alertmanager;
pub mod delivery;
pub mod file;
pub mod http;
mod lifecycle;
pub mod nats;
pub mod slack;
pub mod spool;
pub mod stdout;
pub mod syslog;
pub mod webhook;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::AlertFormat;
pub use delivery::DeliveryConfig;
use delivery::{OutputDeliveryConfig, OutputHandle, Settings};
pub(crate) use lifecycle::FlushLoop;
pub use lifecycle::{Outputs, OutputsError};
use spool::Store;

/// An output's configuration cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// One `[outputs.<name>]` table; `type` selects the kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OutputKindConfig {
    Stdout(stdout::StdoutConfig),
    File(file::FileConfig),
    Webhook(webhook::WebhookConfig),
    Falcosidekick(webhook::FalcosidekickConfig),
    Slack(slack::SlackConfig),
    Alertmanager(alertmanager::AlertmanagerConfig),
    Syslog(syslog::SyslogConfig),
    Nats(nats::NatsConfig),
}

impl OutputKindConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            OutputKindConfig::Stdout(_) => "stdout",
            OutputKindConfig::File(_) => "file",
            OutputKindConfig::Webhook(_) => "webhook",
            OutputKindConfig::Falcosidekick(_) => "falcosidekick",
            OutputKindConfig::Slack(_) => "slack",
            OutputKindConfig::Alertmanager(_) => "alertmanager",
            OutputKindConfig::Syslog(_) => "syslog",
            OutputKindConfig::Nats(_) => "nats",
        }
    }

    pub fn delivery(&self) -> &OutputDeliveryConfig {
        match self {
            OutputKindConfig::Stdout(c) => &c.delivery,
            OutputKindConfig::File(c) => &c.delivery,
            OutputKindConfig::Webhook(c) => &c.target.delivery,
            OutputKindConfig::Falcosidekick(c) => &c.target.delivery,
            OutputKindConfig::Slack(c) => &c.target.delivery,
            OutputKindConfig::Alertmanager(c) => &c.target.delivery,
            OutputKindConfig::Syslog(c) => &c.delivery,
            OutputKindConfig::Nats(c) => &c.delivery,
        }
    }

    /// Whether alerts wait in the on-disk spool: by default every kind but
    /// stdout, whose "receiver" is this process's own standard output.
    pub fn spooled(&self) -> bool {
        self.delivery()
            .spool
            .unwrap_or(!matches!(self, OutputKindConfig::Stdout(_)))
    }

    /// Checks what can be checked without touching files or the network.
    pub fn validate(&self) -> Result<(), String> {
        self.delivery().validate()?;
        match self {
            OutputKindConfig::Stdout(_) => Ok(()),
            OutputKindConfig::File(c) => c.validate(),
            OutputKindConfig::Webhook(c) => c.validate(),
            OutputKindConfig::Falcosidekick(c) => c.validate(),
            OutputKindConfig::Slack(c) => c.validate(),
            OutputKindConfig::Alertmanager(c) => c.validate(),
            OutputKindConfig::Syslog(c) => c.validate(),
            OutputKindConfig::Nats(c) => c.validate(),
        }
        .map_err(|e| e.0)
    }

    /// Builds the kind's sender and starts its tasks on `runtime`.
    fn start(
        &self,
        runtime: &tokio::runtime::Handle,
        settings: Settings,
        store: Store,
        stdout_format: AlertFormat,
    ) -> Result<OutputHandle, BuildError> {
        let rt = runtime;
        Ok(match self {
            OutputKindConfig::Stdout(c) => {
                OutputHandle::start(rt, settings, store, c.build(stdout_format))
            }
            OutputKindConfig::File(c) => OutputHandle::start(rt, settings, store, c.build()?),
            OutputKindConfig::Webhook(c) => OutputHandle::start(rt, settings, store, c.build()?),
            OutputKindConfig::Falcosidekick(c) => {
                OutputHandle::start(rt, settings, store, c.build()?)
            }
            OutputKindConfig::Slack(c) => OutputHandle::start(rt, settings, store, c.build()?),
            OutputKindConfig::Alertmanager(c) => {
                OutputHandle::start(rt, settings, store, c.build()?)
            }
            OutputKindConfig::Syslog(c) => OutputHandle::start(rt, settings, store, c.build()?),
            OutputKindConfig::Nats(c) => OutputHandle::start(rt, settings, store, c.build()?),
        })
    }
}

/// Output names become file names and metric labels: keep them plain.
pub fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks every `[outputs.<name>]` table without opening anything.
pub(crate) fn validate(outputs: &BTreeMap<String, OutputKindConfig>) -> Result<(), String> {
    for (name, out) in outputs {
        if !valid_output_name(name) {
            return Err(format!(
                "output name `{name}`: use 1 to 64 letters, digits, `_` or `-`"
            ));
        }
        out.validate()
            .map_err(|e| format!("output `{name}` ({}): {e}", out.kind()))?;
    }
    Ok(())
}
