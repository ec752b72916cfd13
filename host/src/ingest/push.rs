//! What the push endpoints of the providers' logging services share (their
//! routes are in [`crate::server`]): each request's records are unwrapped
//! ([`super::envelope`]), grouped by cluster, and every group handed to the
//! pipeline ([`super::submit`]) before the endpoint answers 200.
//!
//! - `POST /ingest/firehose[/<tenant>]`: Amazon Data Firehose (EKS audit
//!   logs through a CloudWatch Logs subscription), [`super::firehose_http`];
//! - `POST /ingest/pubsub[/<tenant>]`: a Pub/Sub push subscription (GKE
//!   audit logs through a log sink), [`super::pubsub_http`].

use std::sync::Arc;

use super::decode::Rejection;
use super::envelope::{Unwrapped, Unwrapping};
use super::sources::{count_error, count_records, record_lag};
use super::submit::{Arrival, SubmitError, json_lines, submit};
use crate::server::state::AppState;
use crate::tenants::{Tenant, valid_cluster_name};

/// What a push brought, once handed over.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Delivered {
    pub accepted: usize,
    pub duplicates: usize,
    /// Malformed records, each with its place and reason.
    pub rejected: Vec<Rejection>,
    /// Well-formed records that hold no audit event (control messages).
    pub skipped: usize,
}

/// Hands what a push unwrapped to the pipeline: one arrival per cluster
/// (the source's `cluster`, else the envelope's, else the tenant's). Blocking.
pub(crate) fn deliver(
    app: &AppState,
    tenant: &Tenant,
    source: &str,
    source_cluster: Option<&str>,
    unwrapping: Unwrapping,
) -> Result<Delivered, SubmitError> {
    let max_event = app.server.max_event_bytes;
    let mut out = Delivered {
        rejected: unwrapping.rejected,
        skipped: unwrapping.skipped.len(),
        ..Delivered::default()
    };
    count_records(source, "skipped", out.skipped);
    // Runs of payloads naming the same cluster, in order.
    let mut groups: Vec<(Arc<str>, Vec<Unwrapped>)> = Vec::new();
    for u in unwrapping.events {
        let cluster: Arc<str> = match (source_cluster, &u.cluster) {
            (Some(c), _) => c.into(),
            (None, Some(c)) => c.as_str().into(),
            (None, None) => tenant.cluster.clone(),
        };
        if !valid_cluster_name(&cluster) || !tenant.cluster_allowed(&cluster) {
            out.rejected.push(Rejection {
                at: u.at.clone(),
                kind: "cluster",
                reason: format!(
                    "the envelope names cluster `{}`, which is not a valid name or not one of tenant `{}`'s clusters",
                    super::envelope::shown(&cluster),
                    tenant.id
                ),
            });
            continue;
        }
        match groups.last_mut() {
            Some((c, g)) if *c == cluster => g.push(u),
            _ => groups.push((cluster, vec![u])),
        }
    }
    let mut result = Ok(());
    for (cluster, payloads) in groups {
        let body = json_lines(payloads.iter().map(|u| u.json.as_str()));
        let decoded = Unwrapping {
            events: payloads,
            ..Unwrapping::default()
        }
        .decode(max_event);
        out.rejected.extend(decoded.rejected);
        if decoded.events.is_empty() {
            continue;
        }
        record_lag(source, &decoded.events);
        match submit(
            app,
            tenant,
            Arrival {
                cluster,
                events: decoded.events,
                body: &body,
                json_lines: true,
            },
        ) {
            Ok(s) => {
                out.accepted += s.accepted;
                out.duplicates += s.duplicates;
            }
            Err(e) => {
                // The rest is not taken either: the sender resends the
                // whole request, and what was taken drops as duplicates.
                result = Err(e);
                break;
            }
        }
    }
    super::decode::count_rejected(&out.rejected, &tenant.id, source);
    count_records(source, "rejected", out.rejected.len());
    count_records(source, "accepted", out.accepted);
    count_records(source, "duplicate", out.duplicates);
    if let Err(e) = result {
        count_error(source, e.reason());
        return Err(e);
    }
    Ok(out)
}
