//! `GET /metrics`: the Prometheus exposition of everything the pipeline
//! records through the `metrics` facade. `docs/operations.md` lists them.

use std::sync::OnceLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Histogram buckets of every `*_seconds` metric: from a fast rule call
/// (microseconds) to a receiver at its timeout (tens of seconds).
const SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder as the process's metrics recorder, once.
/// `None` when another recorder was installed first (then `/metrics`
/// answers 503 and says so).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("metrics are not exported on /metrics: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample (a rule call's duration and
/// its time, 24 bytes) until upkeep folds it into the buckets. A scrape runs
/// upkeep, but a server nobody scrapes would keep every sample of every
/// call, without end. A thread of its own, not a tokio task, so `replay`
/// and `bench` are covered too.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("peregrine-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "no metrics upkeep thread ({e}): histogram samples are folded only when /metrics is scraped"
        );
    }
}

/// Figures computed when `/metrics` is scraped rather than on every event;
/// each returns false once what it reads is gone.
type Collector = Box<dyn Fn() -> bool + Send + Sync>;
static COLLECTORS: std::sync::Mutex<Vec<Collector>> = std::sync::Mutex::new(Vec::new());

/// Runs `collect` before each scrape, until it returns false.
pub(crate) fn on_scrape(collect: impl Fn() -> bool + Send + Sync + 'static) {
    COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(collect));
}

fn collect() {
    COLLECTORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| c());
}

/// The `GET /metrics` handler.
pub async fn metrics_handler() -> Response {
    match HANDLE.get().and_then(Option::as_ref) {
        Some(h) => {
            collect();
            h.run_upkeep();
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                h.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the Prometheus recorder is not installed\n",
        )
            .into_response(),
    }
}

/// HELP lines. The names are the ones the stages record; docs/operations.md
/// explains each, and a test keeps the two in step.
fn describe() {
    describe_counter!(
        "peregrine_events_received_total",
        "Audit events accepted (queued) by the webhook and the push endpoints, per tenant."
    );
    describe_counter!(
        "peregrine_events_refused_total",
        "Audit events not taken because the pipeline could not take them (429, 503), per reason; the sender resends them."
    );
    describe_gauge!(
        "peregrine_connections_open",
        "Open HTTP connections, per pool (general, reserve)."
    );
    describe_counter!(
        "peregrine_connections_refused_total",
        "Connections closed at once because server.max_connections were open."
    );
    describe_counter!(
        "peregrine_connections_evicted_total",
        "Reserve connections without a request closed to make room for a new one."
    );
    describe_counter!(
        "peregrine_connections_closed_total",
        "Connections closed by a deadline, per reason (idle, header_timeout, write_timeout)."
    );
    describe_counter!(
        "peregrine_events_rejected_total",
        "Audit events refused inside an accepted request, per reason."
    );
    describe_counter!(
        "peregrine_events_deduplicated_total",
        "Audit events dropped as repeats of an (auditID, stage) already seen."
    );
    describe_gauge!(
        "peregrine_dedup_keys",
        "(tenant, auditID, stage) keys the webhook remembers to drop repeats (at most server.dedup_capacity)."
    );
    describe_gauge!(
        "peregrine_state_keys",
        "Keys held in the state of stateful rules, per module (each table at most engine.state_max_keys)."
    );
    describe_counter!(
        "peregrine_state_evictions_total",
        "State keys and distinct-set members evicted to stay within the limits, per module."
    );
    describe_counter!(
        "peregrine_events_evaluated_total",
        "Audit events evaluated by the workers."
    );
    describe_counter!(
        "peregrine_requests_rejected_total",
        "Webhook requests refused as a whole, per reason."
    );
    describe_gauge!(
        "peregrine_queue_events",
        "Audit events waiting between the webhook and the workers."
    );
    describe_gauge!(
        "peregrine_queue_bytes",
        "Bytes of audit events (decoded size) waiting between the webhook and the workers."
    );
    describe_counter!(
        "peregrine_rule_evaluations_total",
        "Events handed to a rule (after its prefilter), per module and rule."
    );
    describe_histogram!(
        "peregrine_rule_eval_seconds",
        metrics::Unit::Seconds,
        "Duration of one evaluate call of a module."
    );
    describe_counter!(
        "peregrine_alerts_total",
        "Alerts raised, per module and rule."
    );
    describe_counter!(
        "peregrine_alerts_dropped_total",
        "Alerts discarded before routing, per reason."
    );
    describe_counter!(
        "peregrine_rule_errors_total",
        "Failed module calls, per module and kind (trap, timeout, memory, ...)."
    );
    describe_counter!(
        "peregrine_module_loads_total",
        "Module loads and reloads, per result."
    );
    describe_counter!(
        "peregrine_oci_pulls_total",
        "Checks and pulls of OCI rule sources, per result (updated, unchanged, failed)."
    );
    describe_histogram!(
        "peregrine_module_load_seconds",
        metrics::Unit::Seconds,
        "Duration of loading one module."
    );
    describe_gauge!("peregrine_modules_live", "Rule modules live.");
    describe_gauge!(
        "peregrine_module_quarantined",
        "1 while a module is quarantined for a tenant, per module and tenant."
    );
    describe_counter!(
        "peregrine_module_quarantines_total",
        "Times a module was quarantined for a tenant."
    );
    describe_counter!(
        "peregrine_quarantine_skipped_events_total",
        "Events a quarantined module did not evaluate, per module."
    );
    describe_counter!(
        "peregrine_alerts_truncated_total",
        "Module calls whose alerts were cut to the sandbox's output limits, per module."
    );
    describe_counter!(
        "peregrine_alerts_routed_total",
        "Alerts matched by a route (`default` for the default outputs)."
    );
    describe_counter!(
        "peregrine_alerts_folded_total",
        "Alerts folded into a previous identical one by a route's dedup window."
    );
    describe_counter!(
        "peregrine_alerts_unrouted_total",
        "Alerts no route matched while routing.default_outputs is empty."
    );
    describe_gauge!(
        "peregrine_output_queued_alerts",
        "Alerts in an output's in-memory queue, before its store."
    );
    describe_counter!(
        "peregrine_output_waits_total",
        "Times a worker waited for room in a spooled output's queue (back-pressure)."
    );
    describe_gauge!(
        "peregrine_output_pending_alerts",
        "Alerts in an output's store (spool or memory), not yet acknowledged."
    );
    describe_gauge!(
        "peregrine_output_spool_bytes",
        metrics::Unit::Bytes,
        "Size of the alerts in an output's on-disk spool."
    );
    describe_counter!(
        "peregrine_output_spooled_total",
        "Alerts written to an output's on-disk spool."
    );
    describe_counter!(
        "peregrine_output_sent_total",
        "Alerts an output's receiver acknowledged."
    );
    describe_counter!(
        "peregrine_output_failed_total",
        "Send attempts that failed and will be retried."
    );
    describe_counter!(
        "peregrine_output_retried_total",
        "Send attempts that retried an earlier failure."
    );
    describe_counter!(
        "peregrine_output_dropped_total",
        "Alerts an output gave up on, per reason."
    );
    describe_histogram!(
        "peregrine_output_send_seconds",
        metrics::Unit::Seconds,
        "Duration of one send attempt."
    );
    describe_gauge!(
        "peregrine_output_up",
        "1 if the output's last send attempt succeeded, 0 if it failed."
    );
    describe_counter!(
        "peregrine_journal_recovered_total",
        "Events found in the ingest journal at start and evaluated then."
    );
    describe_counter!(
        "peregrine_journal_discarded_total",
        "Unreadable ingest journal entries removed at start."
    );
    describe_counter!(
        "peregrine_store_dropped_total",
        "Alerts the alert history (UI and API) could not keep, per reason."
    );
    describe_counter!(
        "peregrine_source_records_total",
        "Records a source (file, Firehose, Pub/Sub push) brought, per source and outcome."
    );
    describe_counter!(
        "peregrine_source_errors_total",
        "Failures of a source (refused requests, I/O, a full pipeline), per source and kind."
    );
    describe_gauge!(
        "peregrine_source_position_bytes",
        metrics::Unit::Bytes,
        "Offset a file source has handed over and saved, in its current file."
    );
    describe_gauge!(
        "peregrine_source_position_seconds",
        metrics::Unit::Seconds,
        "Newest event timestamp a CloudWatch source has handed over and saved (Unix seconds)."
    );
    describe_gauge!(
        "peregrine_source_lag_bytes",
        metrics::Unit::Bytes,
        "Bytes written to a file source's file and not handed over yet."
    );
    describe_gauge!(
        "peregrine_source_lag_seconds",
        metrics::Unit::Seconds,
        "Age of the newest event a source handed over, at the time it did."
    );
    describe_counter!(
        "peregrine_tls_handshake_failures_total",
        "TLS handshakes with the webhook that failed."
    );
}
