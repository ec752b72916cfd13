//! `POST /k8s-audit[/<tenant>]`: the kube-apiserver's audit webhook.
//!
//! The handler decodes, deduplicates and queues, then answers; evaluation
//! happens on the workers. The apiserver retries any non-2xx answer, so 429
//! is only sent when the queue is really full, and a 200 is only sent once
//! every accepted event is queued.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::decode::{PayloadError, Rejection, decode_input, decode_payload};
use super::journal::Journal;
use crate::queue::{Batch, QueueError};
use crate::server::error::HttpError;
use crate::server::state::AppState;
use crate::tenants::AuthError;
use crate::tenants::Tenant;
use peregrine_sdk::audit::AuditEvent;

/// What the webhook answers with a 200.
#[derive(Debug, Serialize)]
pub struct IngestSummary {
    pub accepted: usize,
    pub duplicates: usize,
    /// The first [`MAX_REASONS`] rejected items, with their reasons.
    pub rejected: Vec<Rejection>,
    /// How many items were rejected in all.
    pub rejected_count: usize,
}

/// Reasons listed in an answer: a request of thousands of bad items would
/// otherwise get an answer larger than itself. The count says the rest.
pub const MAX_REASONS: usize = 100;

/// The answer's `rejected` and `rejected_count`.
pub(crate) fn capped(mut rejected: Vec<Rejection>) -> (Vec<Rejection>, usize) {
    let count = rejected.len();
    rejected.truncate(MAX_REASONS);
    (rejected, count)
}

/// Counts a request refused before its events were looked at, and answers.
fn reject_request(reason: &'static str, error: HttpError) -> Response {
    metrics::counter!("peregrine_requests_rejected_total", "reason" => reason).increment(1);
    error.into_response()
}

pub(crate) async fn ingest_default(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(app, crate::tenants::DEFAULT_TENANT, None, headers, body).await
}

pub(crate) async fn ingest_tenant(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(app, &tenant, None, headers, body).await
}

/// `POST /k8s-audit/<tenant>/<cluster>`: one tenant, several clusters, each
/// apiserver naming its own. The tenant's credentials still decide.
pub(crate) async fn ingest_cluster(
    State(app): State<Arc<AppState>>,
    Path((tenant, cluster)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(app, &tenant, Some(&cluster), headers, body).await
}

#[tracing::instrument(name = "ingest", skip_all, fields(tenant = %tenant_id, cluster, events, rejected, duplicates))]
async fn ingest(
    app: Arc<AppState>,
    tenant_id: &str,
    cluster: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = match app.tenants.authenticate(tenant_id, &headers) {
        Ok(t) => t,
        Err(AuthError::UnknownTenant) => {
            return reject_request(
                "unknown_tenant",
                HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown tenant `{tenant_id}`"),
                ),
            );
        }
        Err(e @ (AuthError::MissingCredentials | AuthError::BadCredentials)) => {
            return reject_request("unauthorized", HttpError::unauthorized(e.to_string()));
        }
    };
    let cluster: Arc<str> = match crate::ingest::submit::claimed_cluster(&tenant, cluster) {
        Ok(c) => c,
        Err((status, message)) => {
            return reject_request("cluster", HttpError::new(status, message));
        }
    };
    tracing::Span::current().record("cluster", &*cluster);

    let Some(body_kind) = body_kind(&headers) else {
        return reject_request(
            "content_type",
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "content type must be application/json, or application/x-ndjson for JSON lines \
                 (with curl: -H 'Content-Type: application/json')",
            ),
        );
    };

    let body: Bytes = match super::body::read_body(&app.server, &headers, body).await {
        Ok(b) => b,
        Err(e) => return HttpError::new(e.status(), e.to_string()).into_response(),
    };

    // Decoding a 12 MiB body takes milliseconds, and the journal writes to
    // disk: both off the async threads, in one hop.
    let job = {
        let (app, tenant, cluster) = (app.clone(), tenant.clone(), cluster.clone());
        move || accept(&app, &tenant, &cluster, &body, body_kind)
    };
    let taken = match tokio::task::spawn_blocking(job).await {
        Ok(Ok(t)) => t,
        Ok(Err(refused)) => return HttpError::from(refused).into_response(),
        Err(e) => {
            return HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decoder failed: {e}"),
            )
            .into_response();
        }
    };
    match queue(&app, &tenant, cluster, taken) {
        Ok(summary) => (StatusCode::OK, axum::Json(summary)).into_response(),
        Err(refused) => HttpError::from(refused).into_response(),
    }
}

/// Why a request's events were not taken. Apart from a bad payload, the
/// apiserver should resend them, and nothing of them is kept.
#[derive(Debug)]
enum Refused {
    BadPayload(PayloadError),
    TenantRate { tenant: Arc<str>, retry_after: u64 },
    Journal,
    Queue(QueueError),
}

impl From<Refused> for HttpError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::BadPayload(e) => HttpError::new(StatusCode::BAD_REQUEST, e.to_string()),
            Refused::TenantRate {
                tenant,
                retry_after,
            } => HttpError::too_many(
                retry_after,
                format!("tenant `{tenant}` is over its events-per-second quota"),
            ),
            Refused::Journal => HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot write the ingest journal; retry later",
            ),
            Refused::Queue(QueueError::Closed) => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
            Refused::Queue(e) => HttpError::too_many(1, format!("{e}; retry later")),
        }
    }
}

/// What a request brought, once decoded, deduplicated and journalled, and
/// not yet queued.
struct Taken {
    events: Vec<AuditEvent>,
    duplicates: usize,
    rejected: Vec<Rejection>,
    undo: Undo,
}

/// What to undo for events taken but then not queued: their journal entry,
/// and their place among the events seen, so the apiserver's resend is not
/// dropped as duplicates.
struct Undo {
    /// (auditID, stage) of the events.
    keys: Vec<(String, String)>,
    journal: Option<(Arc<Journal>, u64)>,
}

impl Undo {
    fn run(self, app: &AppState, tenant: &Tenant) {
        if let Some((j, id)) = self.journal {
            j.complete(id);
        }
        app.dedup.forget(
            &tenant.id,
            self.keys.iter().map(|(a, s)| (a.as_str(), s.as_str())),
        );
    }
}

/// Decodes the body, drops duplicates, takes the tenant's rate budget and
/// writes the accepted events to the journal. Blocking (decoding, the
/// journal's file): call it off the async threads.
fn accept(
    app: &AppState,
    tenant: &Tenant,
    cluster: &str,
    body: &[u8],
    body_kind: BodyKind,
) -> Result<Taken, Refused> {
    let max_event = app.server.max_event_bytes;
    let decoded = match body_kind {
        BodyKind::Json => decode_payload(body, max_event),
        BodyKind::JsonLines => Ok(decode_input(body, max_event)),
    }
    .map_err(|e| {
        metrics::counter!("peregrine_requests_rejected_total", "reason" => "bad_payload")
            .increment(1);
        Refused::BadPayload(e)
    })?;
    super::decode::count_rejected(&decoded.rejected, &tenant.id, "webhook");

    let mut events = Vec::with_capacity(decoded.events.len());
    let mut duplicates = 0;
    for ev in decoded.events {
        if app.dedup.seen(&tenant.id, &ev.audit_id, &ev.stage) {
            duplicates += 1;
        } else {
            events.push(ev);
        }
    }
    metrics::counter!("peregrine_events_deduplicated_total").increment(duplicates as u64);
    let mut undo = Undo {
        keys: events
            .iter()
            .map(|e| (e.audit_id.clone(), e.stage.clone()))
            .collect(),
        journal: None,
    };

    if let Err(retry_after) = tenant.admit(events.len()) {
        undo.run(app, tenant);
        metrics::counter!("peregrine_requests_rejected_total", "reason" => "tenant_rate")
            .increment(1);
        super::submit::count_refused("tenant_rate", events.len());
        return Err(Refused::TenantRate {
            tenant: tenant.id.clone(),
            retry_after,
        });
    }

    // On disk before the answer: an acknowledged event survives a crash.
    // The body is stored as it came, with the keys of the events accepted
    // from it, rather than the events re-encoded.
    if let (Some(journal), false) = (&app.journal, events.is_empty()) {
        let json_lines = matches!(body_kind, BodyKind::JsonLines);
        match journal.append(&tenant.id, cluster, body, json_lines, &undo.keys) {
            Ok(id) => undo.journal = Some((journal.clone(), id)),
            Err(e) => {
                undo.run(app, tenant);
                super::submit::count_refused("journal", events.len());
                tracing::error!("cannot journal accepted events: {e}");
                return Err(Refused::Journal);
            }
        }
    }
    Ok(Taken {
        events,
        duplicates,
        rejected: decoded.rejected,
        undo,
    })
}

/// Queues what [`accept`] took; if the queue refuses, undoes the rest.
fn queue(
    app: &AppState,
    tenant: &Tenant,
    cluster: Arc<str>,
    taken: Taken,
) -> Result<IngestSummary, Refused> {
    let Taken {
        events,
        duplicates,
        rejected,
        undo,
    } = taken;
    let accepted = events.len();
    let span = tracing::Span::current();
    span.record("events", accepted);
    span.record("rejected", rejected.len());
    span.record("duplicates", duplicates);

    if accepted > 0 {
        let batch = Batch {
            tenant: tenant.id.clone(),
            cluster,
            events,
            reply: None,
            journal: undo
                .journal
                .as_ref()
                .map(|(j, id)| crate::ingest::journal::JournalEntry::new(j.clone(), *id)),
        };
        if let Err(e) = app.queue.push(batch, tenant.queue_share()) {
            // Not queued, so not acknowledged: the apiserver will resend.
            undo.run(app, tenant);
            let reason = match e {
                QueueError::Full => "queue_full",
                QueueError::TenantFull => "tenant_queue_full",
                QueueError::Closed => "shutting_down",
            };
            metrics::counter!("peregrine_requests_rejected_total", "reason" => reason).increment(1);
            super::submit::count_refused(reason, accepted);
            return Err(Refused::Queue(e));
        }
        metrics::counter!("peregrine_events_received_total", "tenant" => tenant.id.to_string())
            .increment(accepted as u64);
    }
    let (rejected, rejected_count) = capped(rejected);
    Ok(IngestSummary {
        accepted,
        duplicates,
        rejected,
        rejected_count,
    })
}

#[derive(Clone, Copy)]
pub(crate) enum BodyKind {
    /// One JSON document, as the apiserver sends.
    Json,
    /// JSON lines, as audit log files are written.
    JsonLines,
}

fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let mime = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(BodyKind::Json),
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => {
            Some(BodyKind::JsonLines)
        }
        m if m.ends_with("+json") => Some(BodyKind::Json),
        _ => None,
    }
}
