//! `POST /ingest/firehose[/<tenant>]` as Amazon Data Firehose calls it: the
//! real binary gets requests built the way Firehose sends them (headers,
//! base64 records of gzip CloudWatch Logs subscription payloads, a gzip
//! body), with a control message, poisoned records, a duplicate delivery,
//! bad keys and a tenant over its quota, and answers what Firehose expects.

use base64::Engine as _;

use crate::support::*;

const TOKEN_A: &str = "firehose-key-team-a-0123";
const TOKEN_B: &str = "firehose-key-team-b-0123";
const TOKEN_C: &str = "firehose-key-team-c-0123";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A CloudWatch Logs subscription payload of EKS audit events, as the
/// subscription filter hands it to Firehose.
fn data_message(cluster: &str, messages: &[String]) -> String {
    let events: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::json!({
                "id": format!("3719577291088346{i:04}"),
                "timestamp": 1_796_378_400_100i64,
                "message": m,
            })
        })
        .collect();
    serde_json::json!({
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": format!("/aws/eks/{cluster}/cluster"),
        "logStream": "kube-apiserver-audit-0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "subscriptionFilters": ["peregrine-audit"],
        "logEvents": events,
    })
    .to_string()
}

fn control_message() -> String {
    serde_json::json!({
        "messageType": "CONTROL_MESSAGE",
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [{
            "id": "",
            "timestamp": 1_796_378_400_000i64,
            "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose.",
        }],
    })
    .to_string()
}

/// A delivery request body: each record's data base64 of a gzip payload.
fn request_body(request_id: &str, payloads: &[Vec<u8>]) -> String {
    let records: Vec<_> = payloads
        .iter()
        .map(|p| serde_json::json!({ "data": b64(p) }))
        .collect();
    serde_json::json!({
        "requestId": request_id,
        "timestamp": 1_796_378_401_000i64,
        "records": records,
    })
    .to_string()
}

fn firehose_post(
    url: &str,
    request_id: &str,
    key: Option<&str>,
    body: &[u8],
    gzip_body: bool,
) -> Response {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-Amz-Firehose-Protocol-Version", "1.0"),
        ("X-Amz-Firehose-Request-Id", request_id),
        (
            "X-Amz-Firehose-Source-Arn",
            "arn:aws:firehose:eu-west-1:123456789012:deliverystream/eks-audit",
        ),
        ("User-Agent", "Amazon Kinesis Data Firehose Agent/1.0"),
    ];
    if let Some(k) = key {
        headers.push(("X-Amz-Firehose-Access-Key", k));
    }
    if gzip_body {
        headers.push(("Content-Encoding", "gzip"));
        request("POST", url, &headers, Some(&gzip(body)))
    } else {
        request("POST", url, &headers, Some(body))
    }
}

fn assert_firehose_answer(a: &Response, status: u16, request_id: &str) -> serde_json::Value {
    assert_eq!(a.status, status, "{a:?}");
    assert!(
        a.headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        a.headers
    );
    let v = a.json();
    assert_eq!(v["requestId"], request_id, "{v}");
    assert!(
        v["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000),
        "{v}"
    );
    if status == 200 {
        assert!(v.get("errorMessage").is_none(), "{v}");
    } else {
        assert!(
            v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    v
}

#[test]
fn firehose_deliveries_are_acknowledged_as_firehose_expects() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[auth]\ndefault_tenant_open = false\n\n\
             [tenants.team-a]\ntokens = [\"{TOKEN_A}\"]\n\n\
             [tenants.team-b]\ntokens = [\"{TOKEN_B}\"]\n\n\
             [tenants.team-c]\ntokens = [\"{TOKEN_C}\"]\nevents_per_second = 1\n\n\
             [[sources]]\ntype = \"firehose\"\nname = \"eks-b\"\ntenant = \"team-b\"\ncluster = \"b-fixed\"\n",
            base = base_config(&rules, Some(work.path())),
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);
    let url_a = srv.url("/ingest/firehose/team-a");
    let ev = |id: &str| event(id, "get", "pods", "ns").to_string();

    // One delivery: audit events, a control message, a record whose data is
    // not base64, one that is not gzip JSON, and a log event that is not an
    // audit event beside a good one.
    let body = request_body(
        "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
        &[
            gzip(data_message("prod-eu", &[ev("f1"), ev("f2")]).as_bytes()),
            gzip(control_message().as_bytes()),
            b"\x1f\x8bnot really gzip".to_vec(),
            gzip(
                data_message(
                    "prod-eu",
                    &["{\"kind\": \"Event\", \"verb\": 7}".into(), ev("f3")],
                )
                .as_bytes(),
            ),
        ],
    );
    let mut with_bad_base64: serde_json::Value = serde_json::from_str(&body).unwrap();
    with_bad_base64["records"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"data": "%%% not base64 %%%"}));
    let body = with_bad_base64.to_string();
    let a = firehose_post(
        &url_a,
        "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
        Some(TOKEN_A),
        body.as_bytes(),
        false,
    );
    assert_firehose_answer(&a, 200, "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");
    let alerts = srv.wait_alerts("alerts of f1, f2, f3", |a| a.len() >= 3);
    for a in &alerts {
        assert_eq!(field(a, "peregrine.tenant"), "team-a");
        assert_eq!(
            field(a, "peregrine.cluster"),
            "prod-eu",
            "the log group names the cluster"
        );
    }

    // Firehose retries a request it had no answer to: the same events are
    // acknowledged again and not evaluated twice. This time the body is gzip.
    let a = firehose_post(
        &url_a,
        "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
        Some(TOKEN_A),
        body.as_bytes(),
        true,
    );
    assert_firehose_answer(&a, 200, "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");

    // Credentials: the access key is one of the tenant's tokens.
    let small = request_body(
        "req-2",
        &[gzip(data_message("prod-eu", &[ev("n1")]).as_bytes())],
    );
    let a = firehose_post(&url_a, "req-2", None, small.as_bytes(), false);
    assert_firehose_answer(&a, 401, "req-2");
    let a = firehose_post(&url_a, "req-2", Some(TOKEN_B), small.as_bytes(), false);
    let v = assert_firehose_answer(&a, 401, "req-2");
    assert!(!v.to_string().contains(TOKEN_B), "the key is never echoed");
    let a = firehose_post(
        &srv.url("/ingest/firehose"),
        "req-2",
        Some(TOKEN_A),
        small.as_bytes(),
        false,
    );
    assert_firehose_answer(&a, 401, "req-2");
    let a = firehose_post(
        &srv.url("/ingest/firehose/nobody"),
        "req-2",
        Some(TOKEN_A),
        small.as_bytes(),
        false,
    );
    assert_firehose_answer(&a, 404, "req-2");
    // Not a Firehose request at all.
    let a = firehose_post(&url_a, "req-3", Some(TOKEN_A), b"{\"records\": 5}", false);
    assert_firehose_answer(&a, 400, "req-3");

    // A source's `cluster` names the cluster whatever the log group says.
    let b = request_body(
        "req-4",
        &[gzip(data_message("prod-eu", &[ev("b1")]).as_bytes())],
    );
    let a = firehose_post(
        &srv.url("/ingest/firehose/team-b"),
        "req-4",
        Some(TOKEN_B),
        b.as_bytes(),
        false,
    );
    assert_firehose_answer(&a, 200, "req-4");

    // Over the tenant's quota: 429 with Retry-After, in Firehose's shape,
    // and Firehose's retry of it is taken once there is room.
    let burst: Vec<String> = (0..3).map(|i| ev(&format!("c{i}"))).collect();
    let c1 = request_body("req-5", &[gzip(data_message("c-one", &burst).as_bytes())]);
    let url_c = srv.url("/ingest/firehose/team-c");
    let a = firehose_post(&url_c, "req-5", Some(TOKEN_C), c1.as_bytes(), false);
    assert_firehose_answer(&a, 200, "req-5");
    let c2 = request_body(
        "req-6",
        &[gzip(data_message("c-one", &[ev("c9")]).as_bytes())],
    );
    let a = firehose_post(&url_c, "req-6", Some(TOKEN_C), c2.as_bytes(), false);
    assert_firehose_answer(&a, 429, "req-6");
    assert!(
        a.headers.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        a.headers
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    let a = firehose_post(&url_c, "req-6", Some(TOKEN_C), c2.as_bytes(), false);
    assert_firehose_answer(&a, 200, "req-6");

    let alerts = srv.wait_alerts("alerts of b1, c0-c2 and c9", |a| a.len() >= 8);
    let ids: Vec<&str> = alerts.iter().map(|a| field(a, "ka.auditid")).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["b1", "c0", "c1", "c2", "c9", "f1", "f2", "f3"],
        "each event once: no duplicates, nothing refused evaluated"
    );
    let cluster_of = |id: &str| {
        field(
            alerts
                .iter()
                .find(|a| field(a, "ka.auditid") == id)
                .unwrap(),
            "peregrine.cluster",
        )
        .to_string()
    };
    assert_eq!(cluster_of("b1"), "b-fixed");
    assert_eq!(cluster_of("c9"), "c-one");

    // Per-source metrics: every record counted, by outcome.
    let m = srv.metrics();
    let count = |source: &str, outcome: &str| {
        metric(
            &m,
            "peregrine_source_records_total",
            &[("source", source), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("firehose/team-a", "accepted"), 3.0, "{m}");
    assert_eq!(count("firehose/team-a", "duplicate"), 3.0);
    assert_eq!(
        count("firehose/team-a", "skipped"),
        2.0,
        "one control message per delivery"
    );
    assert_eq!(
        count("firehose/team-a", "rejected"),
        6.0,
        "three poisoned records per delivery"
    );
    assert_eq!(count("eks-b", "accepted"), 1.0);
    assert!(
        metric(
            &m,
            "peregrine_source_errors_total",
            &[("source", "firehose/team-a"), ("kind", "unauthorized")]
        ) == Some(2.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "peregrine_source_errors_total",
            &[("source", "firehose/team-c"), ("kind", "tenant_rate")]
        ) == Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "peregrine_source_lag_seconds",
            &[("source", "firehose/team-a")]
        )
        .is_some()
    );
    let logs = srv.logs();
    assert!(
        !logs.contains(TOKEN_A) && !logs.contains(TOKEN_B),
        "keys never reach the log"
    );
    srv.kill();
}
