//! `[[sources]] type = "cloudwatch"`: the real binary pulls from a local
//! stand-in for CloudWatch Logs that speaks `FilterLogEvents`'s wire format
//! (AWS JSON 1.1 over POST), checks every request's SigV4 signature with
//! the example key, pages its answers, throttles once, answers
//! `ExpiredTokenException` once, and serves a poisoned record and a
//! duplicate delivery. Then a `kill -9` in the middle of a stream, after
//! which every event's alert still reaches the file output.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ring::hmac;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{
    Running, base_config, event, field, fixture_module, metric, rules_dir_in, start_with_env,
};

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "eu-west-1";
const GROUP: &str = "/aws/eks/prod-eu/cluster";
const BASE_MS: i64 = 1_764_700_000_000;

/// One log event the stand-in holds.
struct LogEvent {
    timestamp: i64,
    id: String,
    message: String,
}

#[derive(Default)]
struct Stand {
    events: Vec<LogEvent>,
    page_size: usize,
    /// Answers to give before the next real one: (status, `__type`).
    faults: Vec<&'static str>,
    /// Every request: (signature valid, body).
    requests: Vec<(bool, Value)>,
    /// Keys it takes: (key id, secret, session token).
    keys: Vec<(String, String, Option<String>)>,
    /// `AssumeRoleWithWebIdentity` calls answered.
    assumed: usize,
    /// Pages from this offset on are answered only once the gate opens.
    hold_from: Option<usize>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
}

fn stand(page_size: usize, faults: Vec<&'static str>) -> Shared {
    Arc::new(Mutex::new(Stand {
        page_size,
        faults,
        keys: vec![(KEY_ID.into(), SECRET.into(), None)],
        ..Stand::default()
    }))
}

type Shared = Arc<Mutex<Stand>>;

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

/// Checks the `Authorization` header as AWS documents SigV4: the
/// canonical request from the signed headers, the scope, the derived key.
fn signature_valid(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[(String, String, Option<String>)],
) -> bool {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return false;
    };
    let part = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap_or("")
            .to_string()
    };
    let (credential, signed, signature) =
        (part("Credential"), part("SignedHeaders"), part("Signature"));
    let scope_parts: Vec<&str> = credential.split('/').collect();
    let Some((_, secret, token)) = keys
        .iter()
        .find(|(id, _, _)| scope_parts.first() == Some(&id.as_str()))
    else {
        return false;
    };
    if let Some(token) = token {
        let sent = headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok());
        if sent != Some(token.as_str()) || !signed.split(';').any(|h| h == "x-amz-security-token") {
            return false;
        }
    }
    if scope_parts.len() != 5 || scope_parts[2] != REGION || scope_parts[3] != "logs" {
        return false;
    }
    for needed in ["content-type", "host", "x-amz-date", "x-amz-target"] {
        if !signed.split(';').any(|h| h == needed) {
            return false;
        }
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !amz_date.starts_with(scope_parts[1]) {
        return false;
    }
    let mut canonical = String::from("POST\n/\n\n");
    for h in signed.split(';') {
        let v = headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
        canonical.push_str(&format!("{h}:{}\n", v.trim()));
    }
    canonical.push_str(&format!(
        "\n{signed}\n{}",
        hex::encode(Sha256::digest(body))
    ));
    let scope = scope_parts[1..].join("/");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for step in &scope_parts[1..] {
        key = hmac_sha256(&key, step);
    }
    hex::encode(hmac_sha256(&key, &to_sign)) == signature
}

async fn filter_log_events(
    State(stand): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let page_at = asked["nextToken"]
        .as_str()
        .and_then(|t| t.split_once(':'))
        .and_then(|(_, o)| o.parse::<usize>().ok())
        .unwrap_or(0);
    let gate = {
        let s = stand.lock().unwrap();
        match s.hold_from {
            Some(h) if page_at >= h => s.gate.clone(),
            _ => None,
        }
    };
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    let mut s = stand.lock().unwrap();
    let valid = signature_valid(&headers, &body, &s.keys);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.requests.push((valid, request.clone()));
    let error = |kind: &str, message: &str| {
        (
            StatusCode::BAD_REQUEST,
            json!({"__type": kind, "message": message}).to_string(),
        )
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("x-amz-target") != "Logs_20140328.FilterLogEvents"
        || header("content-type") != "application/x-amz-json-1.1"
    {
        return error("UnknownOperationException", "wrong target or content type");
    }
    if !valid {
        return error(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if !s.faults.is_empty() {
        return match s.faults.remove(0) {
            "throttle" => error("ThrottlingException", "Rate exceeded"),
            _ => error(
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ),
        };
    }
    if request["logGroupName"] != GROUP || request["logStreamNamePrefix"] != "kube-apiserver-audit"
    {
        return error(
            "ResourceNotFoundException",
            "The specified log group does not exist.",
        );
    }
    let start = request["startTime"].as_i64().unwrap_or(0);
    // The token names where the page starts, for this startTime only.
    let offset = match request["nextToken"].as_str() {
        None => 0,
        Some(t) => match t.split_once(':') {
            Some((ts, off)) if ts == start.to_string() => off.parse().unwrap_or(0),
            _ => return error("InvalidParameterException", "The nextToken is invalid."),
        },
    };
    let limit = request["limit"].as_u64().unwrap_or(10_000) as usize;
    let matching: Vec<&LogEvent> = s.events.iter().filter(|e| e.timestamp >= start).collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit.min(s.page_size))
        .map(|e| {
            json!({
                "logStreamName": "kube-apiserver-audit-0a1b2c3d",
                "timestamp": e.timestamp,
                "message": e.message,
                "ingestionTime": e.timestamp + 500,
                "eventId": e.id,
            })
        })
        .collect();
    let mut answer = json!({"events": page, "searchedLogStreams": []});
    let next = offset + page.len();
    if next < matching.len() {
        answer["nextToken"] = format!("{start}:{next}").into();
    }
    (StatusCode::OK, answer.to_string())
}

/// STS `AssumeRoleWithWebIdentity` (query protocol, JSON answer): each
/// call hands out new temporary keys.
async fn assume_role(State(stand): State<Shared>, body: Bytes) -> (StatusCode, String) {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("Action") != "AssumeRoleWithWebIdentity"
        || get("RoleArn") != ROLE_ARN
        || get("WebIdentityToken") != WEB_TOKEN
    {
        return (
            StatusCode::BAD_REQUEST,
            json!({"Error": {"Code": "InvalidIdentityToken", "Message": "no"}}).to_string(),
        );
    }
    let mut s = stand.lock().unwrap();
    s.assumed += 1;
    let n = s.assumed;
    let (id, secret, token) = (
        format!("ASIATEMP{n}"),
        format!("temp-secret-{n}"),
        format!("temp-session-token-{n}"),
    );
    s.keys
        .push((id.clone(), secret.clone(), Some(token.clone())));
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let answer = json!({"AssumeRoleWithWebIdentityResponse": {"AssumeRoleWithWebIdentityResult": {
        "Credentials": {"AccessKeyId": id, "SecretAccessKey": secret,
                        "SessionToken": token, "Expiration": expiry}}}});
    (StatusCode::OK, answer.to_string())
}

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/peregrine-audit-reader";
const WEB_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.web-identity-token.sig";

/// The stand-in on an ephemeral port, on its own runtime thread.
fn serve(stand: Shared) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/", axum::routing::post(filter_log_events))
                .route("/sts", axum::routing::post(assume_role))
                .with_state(stand);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/")
}

fn audit_line(id: &str, namespace: &str) -> String {
    let e = event(id, "get", "pods", namespace);
    e.to_string()
}

fn push_event(stand: &Shared, timestamp: i64, id: &str, message: String) {
    stand.lock().unwrap().events.push(LogEvent {
        timestamp,
        id: id.to_string(),
        message,
    });
}

fn config(work: &Path, rules: &Path, endpoint: &str, extra: &str) -> std::path::PathBuf {
    config_with(work, rules, endpoint, extra, "")
}

fn config_with(
    work: &Path,
    rules: &Path,
    endpoint: &str,
    extra: &str,
    source: &str,
) -> std::path::PathBuf {
    let path = work.join("peregrine.toml");
    std::fs::write(
        &path,
        format!(
            "{base}[tenants.ops]\ntokens = [\"ops-token-0123456789ab\"]\n\n\
             [delivery]\nspool_dir = \"{spool}\"\n\n\
             [outputs.archive]\ntype = \"file\"\npath = \"{alerts}\"\n\n\
             [[routes]]\noutputs = [\"archive\"]\n\n{extra}\n\
             [[sources]]\ntype = \"cloudwatch\"\ntenant = \"ops\"\ncluster = \"prod-eu\"\n\
             region = \"{REGION}\"\nendpoint = \"{endpoint}\"\nstart_at = \"beginning\"\n\
             poll_interval_ms = 50\npage_size = 100\n{source}",
            base = base_config(rules, Some(work)),
            alerts = work.join("alerts.jsonl").display(),
            spool = work.join("spool").display(),
        ),
    )
    .unwrap();
    path
}

const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", SECRET),
];

/// The audit ids of the echo rule's alerts in the file output.
fn echoed(work: &Path) -> Vec<String> {
    std::fs::read_to_string(work.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| field(a, "peregrine.module") == "fixture_echo")
        .map(|a| field(&a, "ka.auditid").to_string())
        .collect()
}

/// [`wait_until`], showing the server's log and the stand-in's requests
/// when it times out.
fn wait_for(srv: &Running, stand: &Shared, what: &str, pred: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pred() {
        if std::time::Instant::now() > deadline {
            let requests: Vec<String> = stand
                .lock()
                .unwrap()
                .requests
                .iter()
                .map(|(valid, r)| format!("signed right: {valid}, {r}"))
                .collect();
            panic!(
                "timed out waiting for {what}\nrequests:\n{}\nlogs:\n{}",
                requests.join("\n"),
                srv.logs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn counter(srv: &Running, name: &str, labels: &[(&str, &str)]) -> f64 {
    let m = srv.metrics();
    metric(&m, name, labels).unwrap_or(0.0)
}

#[test]
fn the_cloudwatch_source_pages_through_throttling_expiry_and_a_poisoned_record() {
    let work = tempfile::tempdir().unwrap();
    let stand = stand(4, vec!["throttle", "expired"]);
    let mut want = Vec::new();
    for i in 0..10 {
        let id = format!("cw{i:02}");
        // Two events a millisecond: the position's id set is needed.
        push_event(
            &stand,
            BASE_MS + i / 2,
            &format!("e{i}"),
            audit_line(&id, "ns"),
        );
        want.push(id);
    }
    push_event(
        &stand,
        BASE_MS + 5,
        "poison",
        "kube-apiserver: not JSON at all".into(),
    );
    // The same audit event delivered twice (another log event id).
    push_event(&stand, BASE_MS + 5, "again", audit_line("cw03", "ns"));
    let endpoint = serve(stand.clone());
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let srv = start_with_env(
        &config(work.path(), &rules, &endpoint, ""),
        &["--no-watch"],
        ENV,
    );
    let source = format!("cloudwatch:{GROUP}");
    wait_for(
        &srv,
        &stand,
        "every event's alert in the file output",
        || {
            let seen = echoed(work.path());
            want.iter().all(|id| seen.contains(id))
        },
    );
    wait_for(
        &srv,
        &stand,
        "the poisoned record and the duplicate counted",
        || {
            counter(
                &srv,
                "peregrine_source_records_total",
                &[("source", &source), ("outcome", "rejected")],
            ) >= 1.0
                && counter(
                    &srv,
                    "peregrine_source_records_total",
                    &[("source", &source), ("outcome", "duplicate")],
                ) >= 1.0
        },
    );
    let errors = |kind| {
        counter(
            &srv,
            "peregrine_source_errors_total",
            &[("source", &source), ("kind", kind)],
        )
    };
    assert_eq!(errors("throttled"), 1.0);
    assert_eq!(errors("expired_credentials"), 1.0);
    assert_eq!(errors("bad_credentials"), 0.0);
    let mut seen = echoed(work.path());
    seen.sort();
    seen.dedup();
    assert_eq!(seen, want, "every event once at least, and nothing else");
    {
        let s = stand.lock().unwrap();
        assert!(
            s.requests.iter().all(|(valid, _)| *valid),
            "every request signed right"
        );
        assert!(
            s.requests.iter().any(|(_, r)| r["nextToken"].is_string()),
            "the pages were followed"
        );
        assert!(s.requests.iter().all(|(_, r)| r["limit"] == 100));
    }
    // The position is saved once the journal holds the last page, and the
    // next polls start at its millisecond and skip what it holds.
    let position = || -> Option<Value> {
        let e = std::fs::read_dir(work.path().join("sources"))
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("cloudwatch-"))?;
        serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()
    };
    wait_for(&srv, &stand, "a poll from the saved position", || {
        position().is_some_and(|p| p["timestamp_ms"] == BASE_MS + 5)
            && stand
                .lock()
                .unwrap()
                .requests
                .iter()
                .any(|(_, r)| r["startTime"] == BASE_MS + 5 - 60_000)
    });
    // An event CloudWatch ingests late, older than the position but within
    // the look-back window, is still read.
    push_event(&stand, BASE_MS + 2, "late", audit_line("cwlate", "ns"));
    wait_for(&srv, &stand, "the late event's alert", || {
        echoed(work.path()).contains(&"cwlate".to_string())
    });
    wait_for(&srv, &stand, "the late event in the saved position", || {
        position().is_some_and(|p| p["event_ids"]["late"] == BASE_MS + 2)
    });
    let mut ids: Vec<String> = position().unwrap()["event_ids"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ids.sort();
    let mut all: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    all.extend(["again", "late", "poison"].map(String::from));
    all.sort();
    assert_eq!(ids, all, "every id of the window is remembered");
    let logs = srv.logs();
    assert!(!logs.contains(SECRET), "the secret key never reaches a log");
    drop(srv);

    // A wrong secret: refused, counted and logged by the key id alone.
    let wrong = "wrong-secret-wrong-secret-0000000000000000";
    let srv = start_with_env(
        &config(work.path(), &rules, &endpoint, ""),
        &["--no-watch"],
        &[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", wrong),
        ],
    );
    wait_for(&srv, &stand, "the refused credentials counted", || {
        counter(
            &srv,
            "peregrine_source_errors_total",
            &[("source", &source), ("kind", "bad_credentials")],
        ) >= 1.0
    });
    let logs = srv.logs();
    assert!(
        logs.contains("InvalidSignatureException") && logs.contains(KEY_ID),
        "{logs}"
    );
    assert!(!logs.contains(wrong), "the secret key never reaches a log");
}

#[test]
fn a_killed_process_loses_no_cloudwatch_event() {
    let work = tempfile::tempdir().unwrap();
    let stand = stand(100, Vec::new());
    // The first run is killed in the middle of a pagination: the sixth page
    // is held back until the gate opens.
    let (open, gate) = tokio::sync::watch::channel(false);
    {
        let mut s = stand.lock().unwrap();
        s.hold_from = Some(500);
        s.gate = Some(gate);
    }
    // As for the file source: eight events early on spin their rule, for
    // an hour in the first run (the worker is held while the source reads
    // and journals pages), to 250 ms in the second.
    let mut want = Vec::new();
    let add = |range: std::ops::Range<i64>, want: &mut Vec<String>| {
        for i in range {
            let id = format!("k{i:04}");
            let ns = if i < 400 && i % 50 == 25 {
                "spin"
            } else {
                "calm"
            };
            push_event(&stand, BASE_MS + i, &format!("e{i}"), audit_line(&id, ns));
            want.push(id);
        }
    };
    add(0..1500, &mut want);
    let endpoint = serve(stand.clone());
    let rules = rules_dir_in(
        work.path(),
        &[
            fixture_module("fixture_echo"),
            fixture_module("fixture_spin_loop"),
        ],
    );
    let with = |deadline_ms: u64| {
        config(
            work.path(),
            &rules,
            &endpoint,
            &format!(
                "[sandbox]\ncall_deadline_ms = 250\n\n\
                 [sandbox.modules.fixture_spin_loop]\ncall_deadline_ms = {deadline_ms}\n"
            ),
        )
    };
    let srv = start_with_env(&with(3_600_000), &["--no-watch"], ENV);
    let positions = work.path().join("sources");
    let saved = || -> Option<i64> {
        let e = std::fs::read_dir(&positions)
            .ok()?
            .filter_map(Result::ok)
            .next()?;
        let p: Value = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
        p["timestamp_ms"].as_i64()
    };
    wait_for(&srv, &stand, "five pages saved, the sixth held", || {
        saved() == Some(BASE_MS + 499)
    });
    srv.kill();
    assert_eq!(
        saved(),
        Some(BASE_MS + 499),
        "killed in the middle of the pages"
    );
    let before = echoed(work.path());
    assert!(
        before.len() < want.len(),
        "everything was evaluated before the kill, so the test proves nothing"
    );
    // Events logged while it was down come after the saved position.
    add(1500..1600, &mut want);
    open.send(true).unwrap();

    let srv = start_with_env(&with(250), &["--no-watch"], ENV);
    wait_for(
        &srv,
        &stand,
        "every event's alert in the file output after the restart",
        || {
            let seen = echoed(work.path());
            want.iter().all(|id| seen.contains(id))
        },
    );
    let mut seen = echoed(work.path());
    seen.sort();
    seen.dedup();
    assert_eq!(seen, want, "at least once: no event lost");
    drop(srv);
}

#[test]
fn web_identity_credentials_are_assumed_and_renewed_when_they_expire() {
    let work = tempfile::tempdir().unwrap();
    let stand = stand(100, vec!["expired"]);
    let want: Vec<String> = (0..3).map(|i| format!("wi{i}")).collect();
    for (i, id) in want.iter().enumerate() {
        push_event(
            &stand,
            BASE_MS + i as i64,
            &format!("e{i}"),
            audit_line(id, "ns"),
        );
    }
    let endpoint = serve(stand.clone());
    let token_file = work.path().join("token");
    std::fs::write(&token_file, WEB_TOKEN).unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = config_with(
        work.path(),
        &rules,
        &endpoint,
        "",
        &format!("sts_endpoint = \"{endpoint}sts\"\n"),
    );
    let srv = start_with_env(
        &config,
        &["--no-watch"],
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", ROLE_ARN),
        ],
    );
    wait_for(
        &srv,
        &stand,
        "every event's alert in the file output",
        || {
            let seen = echoed(work.path());
            want.iter().all(|id| seen.contains(id))
        },
    );
    let source = format!("cloudwatch:{GROUP}");
    assert_eq!(
        counter(
            &srv,
            "peregrine_source_errors_total",
            &[("source", &source), ("kind", "expired_credentials")]
        ),
        1.0
    );
    let s = stand.lock().unwrap();
    assert_eq!(s.assumed, 2, "assumed at start, and again after the expiry");
    assert!(
        s.requests.iter().all(|(valid, _)| *valid),
        "every request signed with the temporary keys"
    );
    let logs = srv.logs();
    for secret in ["temp-secret-", "temp-session-token-", WEB_TOKEN] {
        assert!(!logs.contains(secret), "{secret} reached the log");
    }
    drop(s);
    // SIGTERM: the source stops with the server, which exits cleanly.
    srv.stop();
}
