//! `POST /ingest/pubsub[/<tenant>]`: a Pub/Sub push subscription, the push
//! path of GKE audit logs (Cloud Logging sink → topic → push here).
//!
//! Pub/Sub POSTs `{"message": {"data", "attributes", "messageId",
//! "publishTime"}, "subscription"}`, the data a LogEntry, and takes any 2xx
//! as the acknowledgement; anything else it redelivers, with backoff. So:
//! 200 once the events are journalled and queued, 429 or 503 while the
//! pipeline cannot take them. A message whose data holds no audit event is
//! rejected and counted but still acknowledged: redelivering it would not
//! make it better.
//!
//! With a `pubsub_push` source that sets `audience`, every push must carry
//! the subscription's OIDC token ([`super::oidc`]); without one, the
//! tenant's own rule holds (open, or one of its tokens as the bearer,
//! which Pub/Sub itself cannot send: closed tenants configure OIDC).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::read_body;
use super::envelope::Limits;
use super::envelope::pubsub::unwrap_push;
use super::push::deliver;
use super::sources::count_error;
use crate::server::error::HttpError;
use crate::server::state::AppState;
use crate::tenants::{AuthError, DEFAULT_TENANT};

pub(crate) async fn ingest_default(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(app, DEFAULT_TENANT, headers, body).await
}

pub(crate) async fn ingest_tenant(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest(app, &tenant, headers, body).await
}

fn unauthorized(message: String) -> Response {
    metrics::counter!("peregrine_requests_rejected_total", "reason" => "unauthorized").increment(1);
    HttpError::unauthorized(message).into_response()
}

#[tracing::instrument(name = "pubsub", skip_all, fields(tenant = %tenant_id, message_id, events, rejected))]
async fn ingest(app: Arc<AppState>, tenant_id: &str, headers: HeaderMap, body: Body) -> Response {
    let (settings, verifier) = app.push.pubsub(tenant_id);
    let source = settings.name.clone();
    let tenant = match &verifier {
        Some(v) => {
            let Some(t) = app.tenants.get(tenant_id).cloned() else {
                return HttpError::new(StatusCode::NOT_FOUND, "unknown tenant").into_response();
            };
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if let Err(e) = v.verify(authorization).await {
                count_error(&source, "unauthorized");
                tracing::warn!("Pub/Sub push refused: {e}");
                return unauthorized(e.to_string());
            }
            t
        }
        None => match app.tenants.authenticate(tenant_id, &headers) {
            Ok(t) => t,
            Err(AuthError::UnknownTenant) => {
                return HttpError::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown tenant `{}`", super::envelope::shown(tenant_id)),
                )
                .into_response();
            }
            Err(e) => {
                count_error(&source, "unauthorized");
                return unauthorized(format!(
                    "{e}; Pub/Sub pushes to a tenant with tokens need a pubsub_push source with an OIDC audience"
                ));
            }
        },
    };
    let bytes = match read_body(&app.server, &headers, body).await {
        Ok(b) => b,
        Err(e) => {
            count_error(&source, "bad_request");
            return HttpError::new(e.status(), e.to_string()).into_response();
        }
    };
    let job = {
        let app = app.clone();
        let cluster = settings.cluster.map(str::to_string);
        let source = source.clone();
        move || {
            let push = unwrap_push(&bytes, &Limits::default())?;
            let id = push.message_id.clone();
            let delivered = deliver(&app, &tenant, &source, cluster.as_deref(), push.unwrapping);
            Ok::<_, super::envelope::firehose::RequestError>((id, delivered))
        }
    };
    let (message_id, delivered) = match tokio::task::spawn_blocking(job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            count_error(&source, "bad_request");
            metrics::counter!("peregrine_requests_rejected_total", "reason" => "bad_payload")
                .increment(1);
            return HttpError::new(StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
        Err(e) => {
            return HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("decoder failed: {e}"),
            )
            .into_response();
        }
    };
    let span = tracing::Span::current();
    span.record("message_id", message_id.as_str());
    match delivered {
        Ok(d) => {
            span.record("events", d.accepted);
            span.record("rejected", d.rejected.len());
            for r in &d.rejected {
                tracing::warn!(message_id = %message_id, at = %r.at, "Pub/Sub message rejected: {}", r.reason);
            }
            let (rejected, rejected_count) = super::webhook::capped(d.rejected);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "messageId": message_id,
                    "accepted": d.accepted,
                    "duplicates": d.duplicates,
                    "rejected": rejected,
                    "rejected_count": rejected_count,
                    "skipped": d.skipped,
                })),
            )
                .into_response()
        }
        Err(e) => {
            let (status, retry_after) = e.status();
            HttpError {
                retry_after,
                ..HttpError::new(status, e.to_string())
            }
            .into_response()
        }
    }
}
