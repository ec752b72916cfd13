//! Where alerts go. One file per output kind, each a `<Kind>Config` (serde)
//! with a `build()` that makes its runtime half, a [`delivery::Deliver`].
//! Queueing, retries and the spool are the same for every kind and live in
//! [`delivery`] and [`spool`].

pub mod alertmanager;
pub mod delivery;
pub mod falcosidekick;
pub mod file;
pub mod http;
pub mod nats;
pub mod slack;
pub mod spool;
pub mod stdout;
pub mod syslog;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::AlertFormat;
use delivery::{OutputDeliveryConfig, OutputHandle, Settings};
use spool::{DiskSpool, MemoryStore, SpoolError, Store};

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
    Falcosidekick(falcosidekick::FalcosidekickConfig),
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
            OutputKindConfig::Webhook(c) => &c.delivery,
            OutputKindConfig::Falcosidekick(c) => &c.delivery,
            OutputKindConfig::Slack(c) => &c.delivery,
            OutputKindConfig::Alertmanager(c) => &c.delivery,
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

/// Delivery settings shared by every output (`[delivery]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Directory of the outputs' spools (one SQLite file per output).
    /// Default: `$PEREGRINE_SPOOL_DIR`, else `$XDG_STATE_HOME/peregrine/spool`,
    /// else `~/.local/state/peregrine/spool`.
    pub spool_dir: Option<PathBuf>,
    /// On shutdown, how long outputs keep delivering what they hold, in
    /// milliseconds. Spooled alerts left after it are delivered on the next
    /// start.
    pub shutdown_grace_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            spool_dir: None,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl DeliveryConfig {
    pub fn resolved_spool_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.spool_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("PEREGRINE_SPOOL_DIR") {
            return Some(PathBuf::from(dir));
        }
        Some(crate::paths::xdg_dir("XDG_STATE_HOME", ".local/state")?.join("peregrine/spool"))
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

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("output `{name}` ({kind}): {source}")]
    Build {
        name: String,
        kind: &'static str,
        source: BuildError,
    },
    #[error("output `{name}`: {source}")]
    Spool { name: String, source: SpoolError },
    #[error(
        "output `{name}` keeps a spool but no spool directory is known: set delivery.spool_dir (or PEREGRINE_SPOOL_DIR)"
    )]
    NoSpoolDir { name: String },
    #[error("cannot start the output runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running outputs, on a runtime of their own: delivery never competes
/// with the webhook for threads, and works the same under `serve`, tests
/// and any other caller.
pub struct Outputs {
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    handles: Vec<OutputHandle>,
    grace: Duration,
}

impl Outputs {
    /// Opens every output's store and starts its tasks.
    pub fn start(
        defs: &[(String, OutputKindConfig)],
        delivery: &DeliveryConfig,
        stdout_format: AlertFormat,
    ) -> Result<Self, OutputsError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("peregrine-output")
            .enable_all()
            .build()
            .map_err(OutputsError::Runtime)?;
        // Built before the outputs, so that on an error below its Drop
        // (which never blocks) shuts the runtime down, even when called from
        // async code.
        let mut outputs = Outputs {
            runtime: std::sync::Mutex::new(Some(runtime)),
            handles: Vec::with_capacity(defs.len()),
            grace: Duration::from_millis(delivery.shutdown_grace_ms),
        };
        let handle = outputs
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .expect("runtime just built")
            .handle()
            .clone();
        let spool_dir = delivery.resolved_spool_dir();
        for (name, def) in defs {
            let d = def.delivery();
            let store = if def.spooled() {
                let dir = spool_dir
                    .as_ref()
                    .ok_or_else(|| OutputsError::NoSpoolDir { name: name.clone() })?;
                let spool = DiskSpool::open(&dir.join(format!("{name}.sqlite")), d.spool_max_bytes)
                    .map_err(|source| OutputsError::Spool {
                        name: name.clone(),
                        source,
                    })?;
                Store::Disk(spool)
            } else {
                Store::Memory(MemoryStore::new(d.queue_alerts))
            };
            let settings = Settings {
                name: Arc::from(name.as_str()),
                kind: def.kind(),
                queue_alerts: d.queue_alerts,
                batch_max: d.batch_max,
                retry_initial: Duration::from_millis(d.retry_initial_ms),
                retry_max: Duration::from_millis(d.retry_max_ms),
            };
            let started = def
                .start(&handle, settings, store, stdout_format)
                .map_err(|source| OutputsError::Build {
                    name: name.clone(),
                    kind: def.kind(),
                    source,
                })?;
            outputs.handles.push(started);
        }
        Ok(outputs)
    }

    pub fn handles(&self) -> &[OutputHandle] {
        &self.handles
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.handles.iter().position(|h| &*h.name == name)
    }

    /// Stops taking alerts, delivers for up to the grace period, then stops.
    /// Blocks: call it from a plain thread (or `spawn_blocking`).
    pub fn shutdown(&self) {
        let Some(runtime) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let deadline = Instant::now() + self.grace;
        for h in &self.handles {
            h.begin_shutdown(deadline);
        }
        // The tasks stop by the deadline; the margin covers a store write
        // that is under way.
        let wait_until = deadline + Duration::from_secs(2);
        for h in &self.handles {
            if !h.wait(wait_until) {
                tracing::warn!(output = %h.name, "output did not stop in time");
            }
        }
        runtime.shutdown_background();
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        // Without an orderly shutdown, stop the tasks where they are: what a
        // durable spool holds is delivered on the next start.
        if let Some(rt) = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}
