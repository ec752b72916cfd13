//! Handing decoded events to the pipeline, for every input that is not the
//! audit webhook: the Firehose and Pub/Sub push endpoints and the file
//! source. The same steps as the webhook, in the same order: drop
//! duplicates, take the tenant's rate budget, write the journal, queue. An
//! input acknowledges (answers 200, saves its position) only once this
//! returns `Ok`, so what it acknowledged survives a crash.

use std::sync::Arc;

use axum::http::StatusCode;
use peregrine_sdk::audit::AuditEvent;

use crate::ingest::journal::JournalEntry;
use crate::queue::{Batch, QueueError};
use crate::server::state::AppState;
use crate::tenants::{CLUSTER_NAME_RULE, Tenant, valid_cluster_name};

/// The cluster a request names, checked: a valid name the tenant may use;
/// without one, the tenant's own cluster. The error is the status and
/// message to answer.
pub(crate) fn claimed_cluster(
    tenant: &Tenant,
    claimed: Option<&str>,
) -> Result<Arc<str>, (StatusCode, String)> {
    let Some(c) = claimed else {
        return Ok(tenant.cluster.clone());
    };
    if !valid_cluster_name(c) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "cluster `{}` {CLUSTER_NAME_RULE}",
                super::envelope::shown(c)
            ),
        ));
    }
    if !tenant.cluster_allowed(c) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "tenant `{}` may not post events of cluster `{c}` (see its `clusters`)",
                tenant.id
            ),
        ));
    }
    Ok(c.into())
}

/// Events of one tenant and cluster, with the bytes to journal for them.
pub(crate) struct Arrival<'a> {
    pub cluster: Arc<str>,
    pub events: Vec<AuditEvent>,
    /// What the journal keeps to decode the events again after a crash:
    /// a body holding them (it may hold others too; only the accepted ones
    /// are taken back).
    pub body: &'a [u8],
    /// Whether `body` is JSON lines rather than one JSON document.
    pub json_lines: bool,
}

/// What happened to an arrival's events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Submitted {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Why an arrival was not taken. Nothing of it is kept: the sender should
/// send it again (and the resent events are not dropped as duplicates).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("tenant `{tenant}` is over its events-per-second quota")]
    TenantRate { tenant: String, retry_after: u64 },
    #[error("cannot write the ingest journal; retry later")]
    Journal,
    #[error("{0}; retry later")]
    Queue(QueueError),
}

impl SubmitError {
    /// The reason label of `peregrine_requests_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SubmitError::TenantRate { .. } => "tenant_rate",
            SubmitError::Journal => "journal",
            SubmitError::Queue(QueueError::Full) => "queue_full",
            SubmitError::Queue(QueueError::TenantFull) => "tenant_queue_full",
            SubmitError::Queue(QueueError::Closed) => "shutting_down",
        }
    }

    /// The HTTP status for a push endpoint to answer, and a Retry-After.
    pub(crate) fn status(&self) -> (StatusCode, Option<u64>) {
        match self {
            SubmitError::TenantRate { retry_after, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after))
            }
            SubmitError::Queue(QueueError::Full | QueueError::TenantFull) => {
                (StatusCode::TOO_MANY_REQUESTS, Some(1))
            }
            SubmitError::Journal | SubmitError::Queue(QueueError::Closed) => {
                (StatusCode::SERVICE_UNAVAILABLE, None)
            }
        }
    }
}

/// Counts events not taken because the pipeline could not take them (429,
/// 503): the sender resends them, so they are not `received` (yet).
pub(crate) fn count_refused(reason: &'static str, events: usize) {
    metrics::counter!("peregrine_events_refused_total", "reason" => reason)
        .increment(events as u64);
}

/// Deduplicates, rate-limits, journals and queues one arrival. Blocking
/// (the journal writes a file): call it off the async threads.
pub(crate) fn submit(
    app: &AppState,
    tenant: &Tenant,
    arrival: Arrival<'_>,
) -> Result<Submitted, SubmitError> {
    let mut events = Vec::with_capacity(arrival.events.len());
    let mut duplicates = 0;
    for ev in arrival.events {
        if app.dedup.seen(&tenant.id, &ev.audit_id, &ev.stage) {
            duplicates += 1;
        } else {
            events.push(ev);
        }
    }
    metrics::counter!("peregrine_events_deduplicated_total").increment(duplicates as u64);
    if events.is_empty() {
        return Ok(Submitted {
            accepted: 0,
            duplicates,
        });
    }
    let keys: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.audit_id.clone(), e.stage.clone()))
        .collect();
    let forget = || {
        app.dedup.forget(
            &tenant.id,
            keys.iter().map(|(a, s)| (a.as_str(), s.as_str())),
        )
    };
    let refused = |e: SubmitError| {
        forget();
        metrics::counter!("peregrine_requests_rejected_total", "reason" => e.reason()).increment(1);
        count_refused(e.reason(), keys.len());
        e
    };
    if let Err(retry_after) = tenant.admit(events.len()) {
        return Err(refused(SubmitError::TenantRate {
            tenant: tenant.id.to_string(),
            retry_after,
        }));
    }
    let journal = match &app.journal {
        Some(journal) => match journal.append(
            &tenant.id,
            &arrival.cluster,
            arrival.body,
            arrival.json_lines,
            &keys,
        ) {
            Ok(id) => Some((journal.clone(), id)),
            Err(e) => {
                tracing::error!("cannot journal accepted events: {e}");
                return Err(refused(SubmitError::Journal));
            }
        },
        None => None,
    };
    let accepted = events.len();
    let batch = Batch {
        tenant: tenant.id.clone(),
        cluster: arrival.cluster,
        events,
        reply: None,
        journal: journal
            .as_ref()
            .map(|(j, id)| JournalEntry::new(j.clone(), *id)),
    };
    if let Err(e) = app.queue.push(batch, tenant.queue_share()) {
        if let Some((j, id)) = journal {
            j.complete(id);
        }
        return Err(refused(SubmitError::Queue(e)));
    }
    metrics::counter!("peregrine_events_received_total", "tenant" => tenant.id.to_string())
        .increment(accepted as u64);
    Ok(Submitted {
        accepted,
        duplicates,
    })
}

/// Event texts as JSON lines, for the journal: each on one line (a text
/// that spans lines is re-encoded compactly; raw objects keep their
/// content, if not their spacing).
pub(crate) fn json_lines<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        let t = t.trim();
        if t.contains('\n') {
            match serde_json::from_str::<serde_json::Value>(t) {
                Ok(v) => out.extend_from_slice(v.to_string().as_bytes()),
                Err(_) => continue,
            }
        } else {
            out.extend_from_slice(t.as_bytes());
        }
        out.push(b'\n');
    }
    out
}
