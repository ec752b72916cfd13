//! The REST API: rule modules and their status, alert history.
//!
//! While no token at all is configured (no admin token, no tenant token) the
//! API is open (the default listen address is loopback); once any is, every
//! call needs a bearer token: an admin token sees everything, a tenant's
//! token only that tenant's alerts, modules and counters.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::error::HttpError;
use crate::server::state::AppState;
use crate::store::AlertQuery;
use crate::tenants::ApiAccess;

/// Who is calling, or the 401 to answer.
fn access(app: &AppState, headers: &HeaderMap) -> Result<ApiAccess, Box<Response>> {
    app.tenants
        .api_access(headers)
        .map_err(|e| Box::new(HttpError::unauthorized(e.to_string()).into_response()))
}

/// `GET /api/v1/rules`: every module file, its status, digest, rules and counters.
pub(crate) async fn rules(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let access = match access(&app, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let viewer = match &access {
        ApiAccess::All => None,
        ApiAccess::Tenant(t) => Some(&**t),
    };
    let modules = app.rules.report(viewer);
    axum::Json(serde_json::json!({ "modules": modules, "sources": app.sources.report() }))
        .into_response()
}

/// `GET /api/v1/alerts?tenant=&cluster=&rule=&module=&min_priority=&q=&before=&limit=`:
/// stored alerts, newest first, in Falco's JSON shape with their store id.
pub(crate) async fn alerts(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let access = match access(&app, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Ok(Query(mut query)) = query.map_err(|e| e.body_text()) else {
        return HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid query: use tenant, cluster, rule, module, min_priority (Emergency..Debug), q, before, limit",
        ).into_response();
    };
    if let ApiAccess::Tenant(t) = &access {
        query.tenant = Some(t.to_string());
    }
    let Some(store) = app.store.clone() else {
        return HttpError::new(
            StatusCode::NOT_FOUND,
            "the alert store is disabled ([store] enabled = false)",
        )
        .into_response();
    };
    match tokio::task::spawn_blocking(move || store.query(&query)).await {
        Ok(Ok(alerts)) => {
            let next_before = alerts.last().map(|a| a.id);
            axum::Json(serde_json::json!({ "alerts": alerts, "next_before": next_before }))
                .into_response()
        }
        Ok(Err(e)) => {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /api/v1/alerts/summary`: counts by priority, rule, tenant and cluster.
pub(crate) async fn summary(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let access = match access(&app, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let Some(store) = app.store.clone() else {
        return HttpError::new(
            StatusCode::NOT_FOUND,
            "the alert store is disabled ([store] enabled = false)",
        )
        .into_response();
    };
    let tenant = match access {
        ApiAccess::All => None,
        ApiAccess::Tenant(t) => Some(t.to_string()),
    };
    match tokio::task::spawn_blocking(move || store.summary(tenant.as_deref())).await {
        Ok(Ok(s)) => axum::Json(s).into_response(),
        Ok(Err(e)) => {
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /`: the web UI, one self-contained page that reads the API.
pub(crate) async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"),
        ],
        include_str!("../ui/index.html"),
    )
        .into_response()
}
