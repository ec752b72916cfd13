//! The HTTP surface: the audit webhook, health, the REST API.

pub mod config;
pub(crate) mod error;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api;
use crate::ingest::webhook;
use error::HttpError;
use state::AppState;

/// All routes. Methods other than the ones listed get 405 with `Allow`.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/k8s-audit", post(webhook::ingest_default))
        .route("/k8s-audit/{tenant}", post(webhook::ingest_tenant))
        .route(
            "/k8s-audit/{tenant}/{cluster}",
            post(webhook::ingest_cluster),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::prometheus::metrics_handler))
        .route("/api/v1/rules", get(api::rules))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/alerts/summary", get(api::summary))
        .route("/", get(api::ui))
        .merge(push_routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            declared_length,
        ))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The push endpoints of the providers' logging services
/// (see [`crate::ingest::push`]).
fn push_routes() -> Router<Arc<AppState>> {
    use crate::ingest::{firehose_http, pubsub_http};
    Router::new()
        .route("/ingest/firehose", post(firehose_http::ingest_default))
        .route(
            "/ingest/firehose/{tenant}",
            post(firehose_http::ingest_tenant),
        )
        .route("/ingest/pubsub", post(pubsub_http::ingest_default))
        .route("/ingest/pubsub/{tenant}", post(pubsub_http::ingest_tenant))
}

/// What a connection taken from the reserve (`server.reserved_connections`)
/// is answered: the probes and the scrape, which must work while the server
/// is full (that is when they matter), and 503 for everything else.
pub fn reserve_app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::prometheus::metrics_handler))
        .fallback(at_connection_limit)
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn at_connection_limit() -> Response {
    metrics::counter!("peregrine_requests_rejected_total", "reason" => "connection_limit")
        .increment(1);
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is at its connection limit (server.max_connections); retry later",
    )
    .retry_after(1)
    .into_response()
}

/// 413 at once for a declared `Content-Length` over `server.max_body_bytes`,
/// before any handler reads a byte of the body: otherwise the client sends,
/// or a hostile one holds the connection for, a body that will be refused.
/// (hyper then closes an HTTP/1.1 connection whose body was left unread.)
async fn declared_length(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = app.server.max_body_bytes;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => {
            metrics::counter!("peregrine_requests_rejected_total", "reason" => "too_large")
                .increment(1);
            let mut r = HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {n} bytes is over the {limit}-byte limit"),
            )
            .into_response();
            // The unread body leaves an HTTP/1 connection unusable: say so,
            // or a client sends its next request on a connection being
            // closed. (HTTP/2 resets just the stream.)
            if request.version() < axum::http::Version::HTTP_2 {
                r.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            r
        }
        _ => next.run(request).await,
    }
}

/// Liveness and readiness in one: the answer is 200 while the process can
/// take events, also when a module is quarantined, since restarting the pod
/// (liveness) or taking it out of the Service (readiness) would not mend a
/// rule and would stop every other rule too. A quarantine turns `status` to
/// `degraded` and names the module; which tenants are affected is for the
/// rules API, behind its token, not for an unauthenticated probe.
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let rules = app.rules.current().load();
    let quarantined: Vec<serde_json::Value> = rules
        .modules
        .iter()
        .filter_map(|m| {
            let q = m.health.quarantines();
            (!q.is_empty()).then(|| {
                serde_json::json!({
                    "module": m.key,
                    "digest": m.digest,
                    "tenants": q.len(),
                    "since": q.iter().map(|q| q.since.as_str()).min(),
                })
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "status": if quarantined.is_empty() { "ok" } else { "degraded" },
        "modules_live": rules.modules.len() - quarantined.len(),
        "modules_quarantined": quarantined,
        "rule_set_generation": rules.generation,
        "queue_events": app.queue.len(),
        "queue_capacity": app.queue.capacity(),
        "uptime_seconds": app.started.elapsed().as_secs(),
    }))
    .into_response()
}

async fn not_found() -> Response {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not found: the audit webhook is POST /k8s-audit or /k8s-audit/<tenant>",
    )
    .into_response()
}
