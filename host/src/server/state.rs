//! What the HTTP handlers and the pulling sources share: the way into the
//! queue and the rest of the process. Apart from the routes (`crate::server`)
//! so the handlers can take it without importing what serves them.

use std::sync::Arc;
use std::time::Instant;

use crate::ingest::Dedup;
use crate::queue::BatchQueue;
use crate::rules::registry::RuleManager;
use crate::server::config::ServerConfig;
use crate::tenants::Tenants;

/// What the handlers share.
pub struct AppState {
    /// The `[server]` section: body and event limits for the handlers.
    pub server: ServerConfig,
    pub tenants: Arc<Tenants>,
    pub queue: Arc<BatchQueue>,
    pub dedup: Dedup,
    pub rules: Arc<RuleManager>,
    /// OCI sources of rule modules, for the rules API.
    pub sources: Arc<crate::oci::Sources>,
    pub started: Instant,
    /// Alert history for the UI and API; `None` when disabled.
    pub store: Option<Arc<crate::store::AlertStore>>,
    /// Acknowledged events not yet evaluated; `None` when disabled.
    pub journal: Option<Arc<crate::ingest::journal::Journal>>,
    /// Settings of the push endpoints (Firehose, Pub/Sub), by tenant.
    pub push: Arc<crate::ingest::sources::PushSources>,
}
