//! The `[server]` section of the configuration: where the webhook listens,
//! what it accepts, the queue and journal behind it, and its connections.
//! Apart from `crate::config` so the stages that read it (the handlers,
//! the connection layer) need not name the whole configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most `server.max_connections` may be.
pub const MAX_CONNECTIONS: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the webhook, API and UI.
    pub listen: SocketAddr,
    /// Largest request body accepted (the apiserver sends up to 400 events
    /// per batch).
    pub max_body_bytes: usize,
    /// Largest single audit event accepted; bigger ones are rejected and
    /// counted, their siblings kept.
    pub max_event_bytes: usize,
    /// Events held between the webhook and the engine; beyond this the
    /// webhook answers 429 and the apiserver retries.
    pub queue_events: usize,
    /// Bytes of events held between the webhook and the engine (their
    /// decoded size); beyond this the webhook answers 429 too, so a flood of
    /// large events cannot exhaust memory.
    pub queue_bytes: usize,
    /// Events remembered to drop duplicates by (auditID, stage), which the
    /// apiserver sends when it retries a batch.
    pub dedup_capacity: usize,
    /// Serve HTTPS instead of HTTP (and optionally require client certificates).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Keep acknowledged events on disk until they are evaluated.
    pub journal: crate::ingest::journal::JournalConfig,
    /// Most connections open at once, the reserve included; beyond it a
    /// new connection is closed at once (see `crate::connections`).
    pub max_connections: usize,
    /// Of `max_connections`, the last ones, kept for `/healthz` and
    /// `/metrics`: a connection that gets one is answered once, for those
    /// two paths only.
    pub reserved_connections: usize,
    /// How long a client may take to send a request's headers, counted from
    /// when the server waits for them (HTTP/1.1, also between requests on a
    /// kept-alive connection); and to finish the TLS handshake.
    pub header_read_timeout_secs: u64,
    /// How long a client may take to send a whole request body.
    pub body_read_timeout_secs: u64,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout_secs: u64,
    /// A connection whose writes make no progress for this long (a client
    /// that stopped reading) is closed.
    pub write_timeout_secs: u64,
}

impl ServerConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            max_body_bytes: 12 << 20,
            max_event_bytes: 3 << 20,
            queue_events: 100_000,
            queue_bytes: 256 << 20,
            dedup_capacity: 100_000,
            tls: None,
            journal: Default::default(),
            max_connections: 4096,
            reserved_connections: 32,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 60,
            idle_timeout_secs: 60,
            write_timeout_secs: 30,
        }
    }
}
