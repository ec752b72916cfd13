//! `type = "cloudwatch"`: pulls an EKS cluster's audit log from CloudWatch
//! Logs (`FilterLogEvents` on `/aws/eks/<cluster>/cluster`, streams
//! `kube-apiserver-audit-*`), signed with AWS Signature Version 4.
//!
//! Each poll asks for the events from the saved position's timestamp on
//! and follows `nextToken` to the last page. Each page's events go to the
//! pipeline, and only once the journal holds them is the position saved:
//! the newest timestamp taken, with the ids of the events taken in the
//! `lookback_ms` before it. Each poll asks from that window's start and
//! skips those ids, so an event CloudWatch ingests late (each apiserver
//! writes its own stream) is still read if its timestamp is within the
//! window. A `kill -9` at any moment loses nothing; at worst a page is
//! read twice, and the dedup by `auditID` drops what it still remembers.
//!
//! The API's throttling backs the source off (doubling, to 30 s); expired
//! credentials are renewed (web identity) and the call made again; refused
//! credentials are logged by their key id and counted, and the source keeps
//! trying at the longest back-off. A log event whose message is not an
//! audit Event is counted and skipped; its siblings are kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::aws_credentials::Provider;
use super::config::{CloudWatchSourceConfig, StartAt};
use super::sigv4::{self, Credentials};
use super::{count_error, count_records, record_lag};
use crate::ingest::decode::decode_input;
use crate::ingest::envelope::shown;
use crate::ingest::submit::{Arrival, SubmitError, submit};
use crate::outputs::http::{HttpClient, TlsConfig, client};
use crate::server::state::AppState;
use crate::tenants::Tenant;

const TARGET: &str = "Logs_20140328.FilterLogEvents";
/// A page is at most 1 MB of events (the API's own limit), with JSON overhead.
const MAX_ANSWER: usize = 8 << 20;
/// Pages followed in one poll; the next poll goes on from the position.
const MAX_PAGES_PER_POLL: usize = 1000;
/// Ids remembered in the look-back window; the oldest beyond it are
/// forgotten, which only means re-reads (dropped by the deduplication).
const MAX_IDS: usize = 50_000;
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the position file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// The newest event timestamp taken, in milliseconds since the epoch.
    timestamp_ms: i64,
    /// The `eventId`s taken in the look-back window before it, with their
    /// timestamps: a poll asks again from the window's start and skips them.
    event_ids: BTreeMap<String, i64>,
}

impl Position {
    /// Moves past `taken` (timestamp, id) pairs, remembering the ids
    /// within `lookback_ms` of the newest.
    fn advance(&mut self, taken: &[(i64, String)], lookback_ms: i64) {
        for (t, id) in taken {
            self.timestamp_ms = self.timestamp_ms.max(*t);
            self.event_ids.insert(id.clone(), *t);
        }
        let oldest = self.timestamp_ms.saturating_sub(lookback_ms);
        self.event_ids.retain(|_, t| *t >= oldest);
        if self.event_ids.len() > MAX_IDS {
            let mut by_time: Vec<(i64, String)> = std::mem::take(&mut self.event_ids)
                .into_iter()
                .map(|(id, t)| (t, id))
                .collect();
            by_time.sort_unstable_by(|a, b| b.cmp(a));
            by_time.truncate(MAX_IDS);
            self.event_ids = by_time.into_iter().map(|(t, id)| (id, t)).collect();
        }
    }

    fn seen(&self, id: &str) -> bool {
        self.event_ids.contains_key(id)
    }

    /// Where the next poll starts.
    fn start(&self, lookback_ms: i64) -> i64 {
        self.timestamp_ms.saturating_sub(lookback_ms).max(0)
    }
}

/// A running CloudWatch source; [`CloudWatchSource::stop`] stops it.
pub struct CloudWatchSource {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl CloudWatchSource {
    pub fn start(config: CloudWatchSourceConfig, app: Arc<AppState>) -> anyhow::Result<Self> {
        let name = config.name();
        let journal_dir = app.journal.as_ref().map(|j| j.dir().to_path_buf());
        let key = format!(
            "{}\n{}\n{}",
            config.region,
            config.log_group(),
            config.log_stream_prefix
        );
        let position_file = match &config.position_file {
            Some(p) => p.clone(),
            None => super::default_position_file(journal_dir.as_deref(), "cloudwatch", &key)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "source {name}: no place for its position file (set position_file)"
                    )
                })?,
        };
        if let Some(dir) = position_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("source {name}: cannot create {}: {e}", dir.display())
            })?;
        }
        let tenant =
            app.tenants.get(&config.tenant).cloned().ok_or_else(|| {
                anyhow::anyhow!("source {name}: unknown tenant `{}`", config.tenant)
            })?;
        let cluster: Arc<str> = match &config.cluster {
            Some(c) => c.as_str().into(),
            None => tenant.cluster.clone(),
        };
        let url = config
            .url()
            .map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
        let sts = config
            .sts_url()
            .map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
        let credentials =
            Provider::from_env(sts).map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
        let http = client(&TlsConfig::default(), config.timeout_ms)
            .map_err(|e| anyhow::anyhow!("source {name}: {e}"))?;
        let position = super::load_position(&position_file).unwrap_or_else(|| Position {
            timestamp_ms: match config.start_at {
                StartAt::Beginning => 0,
                StartAt::End => {
                    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
                }
            },
            event_ids: BTreeMap::new(),
        });
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let mut poller = Poller {
            name,
            host: url.host_str().unwrap_or_default().to_string()
                + &url.port().map(|p| format!(":{p}")).unwrap_or_default(),
            url,
            config,
            position_file,
            position,
            app,
            tenant,
            cluster,
            http,
            credentials,
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("peregrine-cloudwatch-source".into())
            .spawn(move || poller.run())?;
        Ok(CloudWatchSource {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after the call in hand.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Poller {
    name: String,
    url: url::Url,
    host: String,
    config: CloudWatchSourceConfig,
    position_file: PathBuf,
    position: Position,
    app: Arc<AppState>,
    tenant: Arc<Tenant>,
    cluster: Arc<str>,
    http: HttpClient,
    credentials: Provider,
    stopped: crossbeam_channel::Receiver<()>,
}

/// Why a poll ended early.
#[derive(Debug)]
enum PollError {
    Shutdown,
    /// `ThrottlingException` (or HTTP 429): back off.
    Throttled,
    /// `ExpiredTokenException`: renew the credentials.
    Expired,
    /// The credentials were refused (bad key, signature, or permission).
    Refused(String),
    /// Anything else: a status, a transport error, an unreadable answer.
    Other(&'static str, String),
}

/// One page of a `FilterLogEvents` answer.
struct Page {
    events: Vec<(i64, String, String)>,
    poisoned: usize,
    next_token: Option<String>,
}

impl Poller {
    fn run(&mut self) {
        let span = tracing::info_span!("cloudwatch_source", source = %self.name);
        let _enter = span.enter();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return;
            }
        };
        tracing::info!(log_group = %self.config.log_group(), endpoint = %crate::outputs::http::redact(&self.url), "polling");
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut backoff = Duration::ZERO;
        loop {
            let wait = match rt.block_on(self.poll_once()) {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    poll
                }
                Err(PollError::Shutdown) => return,
                Err(e) => {
                    backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                    match e {
                        PollError::Throttled => {
                            count_error(&self.name, "throttled");
                            tracing::info!(
                                "throttled by CloudWatch Logs: next call in {backoff:?}"
                            );
                        }
                        PollError::Expired => {
                            count_error(&self.name, "expired_credentials");
                            self.credentials.invalidate();
                            if self.credentials.renewable() {
                                tracing::info!("the credentials expired: renewing them");
                                backoff = Duration::ZERO;
                            } else {
                                tracing::warn!("the credentials from the environment expired");
                            }
                        }
                        PollError::Refused(why) => {
                            count_error(&self.name, "bad_credentials");
                            backoff = MAX_BACKOFF;
                            tracing::error!("CloudWatch Logs refused the credentials: {why}");
                        }
                        PollError::Other(kind, why) => {
                            count_error(&self.name, kind);
                            tracing::warn!("{why}");
                        }
                        PollError::Shutdown => unreachable!("returned above"),
                    }
                    backoff.max(Duration::from_millis(1))
                }
            };
            match self.stopped.recv_timeout(wait) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// Reads every page from the position on.
    async fn poll_once(&mut self) -> Result<(), PollError> {
        let start = self.position.start(self.config.lookback_ms as i64);
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES_PER_POLL {
            let page = self.call(start, token.as_deref()).await?;
            count_records(&self.name, "rejected", page.poisoned);
            self.take(page.events)?;
            match page.next_token {
                Some(t) if !t.is_empty() && token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => return Ok(()),
            }
            if !self.stopped.is_empty() {
                return Err(PollError::Shutdown);
            }
        }
        Ok(())
    }

    /// One signed `FilterLogEvents` call.
    async fn call(&mut self, start: i64, token: Option<&str>) -> Result<Page, PollError> {
        let mut body = json!({
            "logGroupName": self.config.log_group(),
            "logStreamNamePrefix": self.config.log_stream_prefix,
            "startTime": start,
        });
        if let Some(t) = token {
            body["nextToken"] = t.into();
        }
        if let Some(n) = self.config.page_size {
            body["limit"] = n.into();
        }
        let body = body.to_string().into_bytes();
        let creds = self
            .credentials
            .get(&self.http)
            .await
            .map_err(|e| PollError::Refused(e.to_string()))?;
        let headers = signed_headers(&creds, &self.config.region, &self.host, &body);
        // A stop does not wait for a slow answer (up to `timeout_ms`).
        let stopped = async {
            while self.stopped.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let (status, answer) = tokio::select! {
            r = self.http.post(&self.url, &headers, body, MAX_ANSWER) => {
                r.map_err(|e| PollError::Other("io", e))?
            }
            () = stopped => return Err(PollError::Shutdown),
        };
        if status != 200 {
            return Err(api_error(status, &answer, &creds));
        }
        parse_page(&answer).map_err(|e| PollError::Other("invalid_answer", e))
    }

    /// Hands a page's new events to the pipeline, then saves the position.
    fn take(&mut self, events: Vec<(i64, String, String)>) -> Result<(), PollError> {
        let fresh: Vec<_> = events
            .into_iter()
            .filter(|(_, id, _)| !self.position.seen(id))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for (_, _, message) in &fresh {
            body.extend_from_slice(message.as_bytes());
            body.push(b'\n');
        }
        self.submit(&body)?;
        let taken: Vec<(i64, String)> = fresh.into_iter().map(|(t, id, _)| (t, id)).collect();
        self.position
            .advance(&taken, self.config.lookback_ms as i64);
        super::save_position(&self.position_file, &self.position)
            .map_err(|e| PollError::Other("io", format!("cannot save the position: {e}")))?;
        metrics::gauge!("peregrine_source_position_seconds", "source" => self.name.clone())
            .set(self.position.timestamp_ms as f64 / 1000.0);
        Ok(())
    }

    /// Submits the page's messages (JSON lines), waiting while the pipeline is full.
    fn submit(&self, body: &[u8]) -> Result<(), PollError> {
        let decoded = decode_input(body, self.app.server.max_event_bytes);
        for r in decoded.rejected.iter().filter(|r| r.kind != "too_large") {
            tracing::warn!(at = %r.at, "log event rejected: {}", r.reason);
        }
        crate::ingest::decode::count_rejected(&decoded.rejected, &self.tenant.id, &self.name);
        count_records(&self.name, "rejected", decoded.rejected.len());
        if decoded.events.is_empty() {
            return Ok(());
        }
        loop {
            let arrival = Arrival {
                cluster: self.cluster.clone(),
                events: decoded.events.clone(),
                body,
                json_lines: true,
            };
            match submit(&self.app, &self.tenant, arrival) {
                Ok(s) => {
                    count_records(&self.name, "accepted", s.accepted);
                    count_records(&self.name, "duplicate", s.duplicates);
                    record_lag(&self.name, &decoded.events);
                    return Ok(());
                }
                Err(SubmitError::Queue(crate::queue::QueueError::Closed)) => {
                    return Err(PollError::Shutdown);
                }
                Err(e) => {
                    count_error(&self.name, e.reason());
                    let wait = match &e {
                        SubmitError::TenantRate { retry_after, .. } => {
                            Duration::from_secs(*retry_after)
                        }
                        _ => MIN_BACKOFF,
                    };
                    match self.stopped.recv_timeout(wait) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return Err(PollError::Shutdown),
                    }
                }
            }
        }
    }
}

/// The headers of a signed `FilterLogEvents` call.
fn signed_headers(
    creds: &Credentials,
    region: &str,
    host: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let date = sigv4::amz_date(time::OffsetDateTime::now_utc());
    let mut signed: Vec<(&str, &str)> = vec![
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host),
        ("x-amz-date", &date),
        ("x-amz-target", TARGET),
    ];
    if let Some(t) = &creds.session_token {
        signed.push(("x-amz-security-token", t));
    }
    let auth = sigv4::authorization(
        creds,
        region,
        "logs",
        &date,
        &sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &signed,
            payload: body,
        },
    );
    let mut out: Vec<(&'static str, String)> = vec![
        ("content-type", "application/x-amz-json-1.1".into()),
        ("x-amz-date", date.clone()),
        ("x-amz-target", TARGET.into()),
        ("authorization", auth),
    ];
    if let Some(t) = &creds.session_token {
        out.push(("x-amz-security-token", t.clone()));
    }
    out
}

/// What an error answer means. Only the error type and the service's
/// message (shortened) are kept, and the key id, never a secret.
fn api_error(status: u16, answer: &[u8], creds: &Credentials) -> PollError {
    let v: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    let kind = v
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t))
        .unwrap_or("");
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(shown)
        .unwrap_or_default();
    match kind {
        "ThrottlingException" | "LimitExceededException" => PollError::Throttled,
        _ if status == 429 => PollError::Throttled,
        "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => PollError::Expired,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "AccessDeniedException"
        | "InvalidClientTokenId" => PollError::Refused(format!(
            "{kind} for access key id {}: {message}",
            creds.access_key_id
        )),
        _ if status == 403 => PollError::Refused(format!(
            "HTTP 403 for access key id {}: {message}",
            creds.access_key_id
        )),
        "ResourceNotFoundException" => PollError::Other(
            "not_found",
            format!("the log group is not there: {message}"),
        ),
        _ => PollError::Other(
            "http",
            format!(
                "FilterLogEvents answered HTTP {status} {}: {message}",
                shown(kind)
            ),
        ),
    }
}

/// A `FilterLogEvents` answer: its events (timestamp, id, message) and the
/// token of the next page. An event without a timestamp or a message is
/// poisoned: counted, and its siblings kept.
fn parse_page(answer: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(answer)
        .map_err(|e| format!("the FilterLogEvents answer is not JSON: {e}"))?;
    let events = match v.get("events") {
        Some(Value::Array(e)) => e.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err("the FilterLogEvents answer's events is not an array".into()),
    };
    let mut page = Page {
        events: Vec::with_capacity(events.len()),
        poisoned: 0,
        next_token: v
            .get("nextToken")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    for e in events {
        let timestamp = e.get("timestamp").and_then(Value::as_i64);
        let message = e.get("message").and_then(Value::as_str);
        let id = e.get("eventId").and_then(Value::as_str).unwrap_or_default();
        match (timestamp, message) {
            (Some(t), Some(m)) if id.len() <= 256 => {
                page.events.push((t, id.to_string(), m.to_string()))
            }
            _ => {
                page.poisoned += 1;
                tracing::warn!("a log event without a timestamp or a message: skipped");
            }
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_keeps_the_ids_of_its_look_back_window() {
        let mut p = Position::default();
        p.advance(&[(5, "a".into()), (7, "b".into()), (7, "c".into())], 0);
        assert_eq!(p.timestamp_ms, 7);
        assert!(p.seen("b") && p.seen("c") && !p.seen("a") && !p.seen("d"));
        assert_eq!(p.start(0), 7);
        p.advance(&[(6, "e".into())], 10);
        assert_eq!(p.timestamp_ms, 7);
        assert!(p.seen("e") && p.seen("b"));
        p.advance(&[(20, "f".into())], 10);
        assert!(!p.seen("e") && !p.seen("b") && p.seen("f"));
        assert_eq!(p.start(10), 10);
        assert_eq!(p.start(100), 0);
        let many: Vec<(i64, String)> = (0..MAX_IDS as i64 + 10)
            .map(|i| (100 + i, format!("m{i}")))
            .collect();
        p.advance(&many, 1 << 40);
        assert_eq!(p.event_ids.len(), MAX_IDS);
        assert!(!p.seen("m0") && p.seen(&format!("m{}", MAX_IDS + 9)));
    }

    #[test]
    fn a_poisoned_event_leaves_its_siblings() {
        let page = parse_page(
            br#"{"events":[{"timestamp":1,"eventId":"a","message":"{}"},{"eventId":"b"},7,{"timestamp":"x","message":"m"},{"timestamp":2,"eventId":"c","message":"m"}],"nextToken":"t"}"#,
        )
        .unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.poisoned, 3);
        assert_eq!(page.next_token.as_deref(), Some("t"));
        assert!(parse_page(b"not json").is_err());
        assert!(parse_page(br#"{"events":5}"#).is_err());
        assert_eq!(parse_page(b"{}").unwrap().events.len(), 0);
    }

    #[test]
    fn error_answers_are_classified_without_secrets() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "SECRETKEY".into(),
            session_token: Some("SESSIONTOKEN".into()),
        };
        let e = |status, body: &str| api_error(status, body.as_bytes(), &creds);
        assert!(matches!(
            e(
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
            ),
            PollError::Throttled
        ));
        assert!(matches!(
            e(
                400,
                r#"{"__type":"com.amazon.coral.service#ExpiredTokenException"}"#
            ),
            PollError::Expired
        ));
        match e(
            400,
            r#"{"__type":"UnrecognizedClientException","message":"bad"}"#,
        ) {
            PollError::Refused(why) => {
                assert!(why.contains("AKIDEXAMPLE"));
                assert!(!why.contains("SECRETKEY") && !why.contains("SESSIONTOKEN"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(e(500, "garbage"), PollError::Other("http", _)));
    }

    #[test]
    fn validates_its_settings() {
        let good: CloudWatchSourceConfig =
            toml::from_str("region = \"us-east-1\"\ncluster = \"prod\"").unwrap();
        assert_eq!(good.log_group(), "/aws/eks/prod/cluster");
        assert_eq!(good.name(), "cloudwatch:/aws/eks/prod/cluster");
        good.validate().unwrap();
        let bad = |extra: &str| {
            let c: CloudWatchSourceConfig =
                toml::from_str(&format!("cluster = \"prod\"\n{extra}")).unwrap();
            c.validate().unwrap_err()
        };
        assert!(bad("region = \"us-east-1/../x\"").contains("region"));
        assert!(bad("region = \"us-east-1\"\npage_size = 0").contains("page_size"));
        assert!(bad("region = \"us-east-1\"\nendpoint = \"ftp://x\"").contains("endpoint"));
        let no_group: CloudWatchSourceConfig = toml::from_str("region = \"us-east-1\"").unwrap();
        assert!(no_group.validate().unwrap_err().contains("log_group"));
    }
}
