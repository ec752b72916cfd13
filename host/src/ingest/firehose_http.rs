//! `POST /ingest/firehose[/<tenant>]`: Amazon Data Firehose's HTTP endpoint
//! delivery (protocol 1.0), the push path of EKS audit logs (CloudWatch
//! Logs subscription filter → Firehose → here).
//!
//! Firehose sends `X-Amz-Firehose-Access-Key`, the key configured on the
//! stream, which must be one of the tenant's tokens (an open tenant takes
//! any), and a JSON body (gzip with `Content-Encoding: gzip` when the
//! stream compresses) of base64 records, each a gzip CloudWatch Logs
//! subscription payload. It takes only a 200 with `{"requestId",
//! "timestamp"}` as delivered, and retries anything else, so: 200 once the
//! events are journalled and queued; 401/404 for credentials; 400 for a
//! body that is not a Firehose request; 413 over the size limit; 429 or 503
//! while the pipeline cannot take the events. A malformed record is
//! rejected and counted, its siblings kept, and the request still
//! acknowledged (a retry would bring the same record back).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::body::read_body;
use super::envelope::Limits;
use super::envelope::firehose::{response_body, unwrap_request};
use super::push::deliver;
use super::sources::count_error;
use crate::server::state::AppState;
use crate::tenants::{AuthError, DEFAULT_TENANT};

const ACCESS_KEY: &str = "x-amz-firehose-access-key";
const REQUEST_ID: &str = "x-amz-firehose-request-id";

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

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Firehose's answer: its JSON, with the request's id, in every case.
fn answer(status: StatusCode, request_id: &str, error: Option<&str>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        response_body(request_id, now_ms(), error),
    )
        .into_response()
}

#[tracing::instrument(name = "firehose", skip_all, fields(tenant = %tenant_id, request_id, events, rejected))]
async fn ingest(app: Arc<AppState>, tenant_id: &str, headers: HeaderMap, body: Body) -> Response {
    // The header carries the id before the body is read; the body's
    // `requestId` is the one answered once it is.
    let mut request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    tracing::Span::current().record("request_id", request_id.as_str());
    let settings = app.push.firehose(tenant_id);
    let source = settings.name.clone();
    let key = headers.get(ACCESS_KEY).and_then(|v| v.to_str().ok());
    let tenant = match app.tenants.authenticate_token(tenant_id, key) {
        Ok(t) => t,
        Err(e) => {
            count_error(&source, "unauthorized");
            let (status, message) = match e {
                AuthError::UnknownTenant => (
                    StatusCode::NOT_FOUND,
                    format!("unknown tenant `{}`", super::envelope::shown(tenant_id)),
                ),
                AuthError::MissingCredentials => (
                    StatusCode::UNAUTHORIZED,
                    "missing access key (X-Amz-Firehose-Access-Key)".to_string(),
                ),
                AuthError::BadCredentials => (
                    StatusCode::UNAUTHORIZED,
                    "invalid access key (X-Amz-Firehose-Access-Key)".to_string(),
                ),
            };
            metrics::counter!("peregrine_requests_rejected_total", "reason" => "unauthorized")
                .increment(1);
            return answer(status, &request_id, Some(&message));
        }
    };
    let bytes = match read_body(&app.server, &headers, body).await {
        Ok(b) => b,
        Err(e) => {
            count_error(&source, "bad_request");
            return answer(e.status(), &request_id, Some(&e.to_string()));
        }
    };
    let job = {
        let app = app.clone();
        let tenant = tenant.clone();
        let cluster = settings.cluster.map(str::to_string);
        let source = source.clone();
        move || {
            let request = unwrap_request(&bytes, &Limits::default())?;
            let id = request.request_id.clone();
            let delivered = deliver(
                &app,
                &tenant,
                &source,
                cluster.as_deref(),
                request.unwrapping,
            );
            Ok::<_, super::envelope::firehose::RequestError>((id, delivered))
        }
    };
    let (id, delivered) = match tokio::task::spawn_blocking(job).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            count_error(&source, "bad_request");
            metrics::counter!("peregrine_requests_rejected_total", "reason" => "bad_payload")
                .increment(1);
            return answer(StatusCode::BAD_REQUEST, &request_id, Some(&e.to_string()));
        }
        Err(e) => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &request_id,
                Some(&format!("decoder failed: {e}")),
            );
        }
    };
    if !id.is_empty() {
        request_id = id;
    }
    match delivered {
        Ok(d) => {
            let span = tracing::Span::current();
            span.record("events", d.accepted);
            span.record("rejected", d.rejected.len());
            for r in &d.rejected {
                tracing::warn!(request_id = %request_id, at = %r.at, "Firehose record rejected: {}", r.reason);
            }
            answer(StatusCode::OK, &request_id, None)
        }
        Err(e) => {
            let (status, retry_after) = e.status();
            let mut r = answer(status, &request_id, Some(&e.to_string()));
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
            }
            r
        }
    }
}
