//! The webhook end to end: real server on an ephemeral port, the real
//! example rule modules (Rust, Python, JavaScript), real corpus events.

use peregrine::config::RuleMatching;
use peregrine_tests::*;

fn all_examples() -> Vec<std::path::PathBuf> {
    [
        "falco_k8s_audit",
        "workload_hardening",
        "privileged_impersonation",
        "secret_enumeration",
    ]
    .map(example_module)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_events_raise_falco_alerts_in_falco_shape() {
    let mut config = test_config();
    config.rules.rule_matching = RuleMatching::First;
    let srv = TestServer::start(config, rules_dir(&all_examples())).await;

    // The seed scenario: six ConfigMaps with private credentials, as JSON lines.
    let lines = std::fs::read(corpus_file("create_configmap_sensitive_values.json")).unwrap();
    let r = srv
        .client
        .post(srv.url("/k8s-audit"))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let summary: serde_json::Value = r.json().await.unwrap();
    assert_eq!(summary["accepted"], 6);

    // A v1beta1 event without apiVersion handling differences, and attach at ResponseStarted.
    for f in [
        "create_nginx_pod_privileged.json",
        "attach_pod.json",
        "create_cluster_role_wildcard_verbs.json",
    ] {
        let (status, summary) = srv
            .post("/k8s-audit", std::fs::read(corpus_file(f)).unwrap())
            .await;
        assert_eq!(status, 200, "{f}: {summary}");
        assert_eq!(summary["accepted"], 1, "{f}");
    }

    let alerts = srv.alerts.wait_for("9 alerts", |a| a.len() >= 9).await;
    let count = |rule: &str| alerts.iter().filter(|a| a.rule == rule).count();
    assert_eq!(count("Create/Modify Configmap With Private Credentials"), 6);
    assert_eq!(count("Create Privileged Pod"), 1);
    assert_eq!(count("Attach/Exec Pod"), 1);
    assert_eq!(count("ClusterRole With Wildcard Created"), 1);
    assert_eq!(alerts.len(), 9, "rule_matching first: one alert per event");

    let cm = alerts
        .iter()
        .find(|a| a.rule == "Create/Modify Configmap With Private Credentials")
        .unwrap();
    let json = cm.to_falco_json();
    assert_eq!(json["priority"], "Warning");
    assert_eq!(json["source"], "k8s_audit");
    assert_eq!(json["output_fields"]["ka.req.configmap.name"], "my-config");
    assert_eq!(json["output_fields"]["peregrine.module"], "falco_k8s_audit");
    assert_eq!(json["output_fields"]["peregrine.tenant"], "default");
    // Every alert names its rule by id, whatever its display name.
    for a in &alerts {
        assert_eq!(a.field("peregrine.rule_id"), Some(a.rule_id.as_str()));
        assert_eq!(
            a.to_falco_json()["output_fields"]["peregrine.rule_id"],
            a.rule_id
        );
    }
    assert_eq!(
        json["output_fields"]["peregrine.rule_id"],
        "create-modify-configmap-with-private-credentials"
    );
    // The alert names the ConfigMap, not the credential it holds.
    let text = json.to_string();
    assert!(
        !text.contains("MY-KEY") && !text.contains("aws_secret_access_key"),
        "{text}"
    );
    assert_eq!(
        cm.module_digest.len(),
        64,
        "alerts carry the module's sha256"
    );
    assert!(json["time"].as_str().unwrap().starts_with("20"), "{json}");
    assert!(
        json["output"].as_str().unwrap().contains(": Warning "),
        "{json}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_modules_detect_in_the_host() {
    let srv = TestServer::start(test_config(), rules_dir(&all_examples())).await;

    // Python: bob impersonates system:admin.
    let mut imp = event("imp-1", "get", "secrets", "default");
    imp["user"] = serde_json::json!({"username": "bob", "groups": ["system:authenticated"]});
    imp["impersonatedUser"] =
        serde_json::json!({"username": "system:admin", "groups": ["system:masters"]});
    let (status, _) = srv.post("/k8s-audit", imp.to_string()).await;
    assert_eq!(status, 200);

    // JavaScript: one user reads twelve distinct secrets within a minute.
    let reads: Vec<_> = (0..12)
        .map(|i| {
            let mut e = event(&format!("sec-{i}"), "get", "secrets", "prod");
            e["user"] =
                serde_json::json!({"username": "mallory", "groups": ["system:authenticated"]});
            e["objectRef"]["name"] = serde_json::json!(format!("secret-{i}"));
            e["stageTimestamp"] = serde_json::json!(format!("2026-11-27T10:00:{:02}.000000Z", i));
            e
        })
        .collect();
    let (status, summary) = srv.post("/k8s-audit", event_list(&reads)).await;
    assert_eq!(status, 200, "{summary}");

    let alerts = srv
        .alerts
        .wait_for("Python and JavaScript alerts", |a| {
            a.iter().any(|a| a.module == "privileged_impersonation")
                && a.iter().any(|a| a.module == "secret_enumeration")
        })
        .await;
    let py = alerts
        .iter()
        .find(|a| a.module == "privileged_impersonation")
        .unwrap();
    assert_eq!(py.rule, "Privileged Identity Impersonated");
    assert_eq!(py.audit_id, "imp-1");
    let js = alerts
        .iter()
        .find(|a| a.module == "secret_enumeration")
        .unwrap();
    assert_eq!(js.rule, "Secret Enumeration");
    assert!(js.tags.iter().any(|t| t == "T1552.007"), "{:?}", js.tags);
    // Every module's alerts carry their rule id, set by the host: Rust,
    // Python and JavaScript alike.
    let modules: std::collections::BTreeSet<&str> =
        alerts.iter().map(|a| a.module.as_str()).collect();
    assert!(modules.contains("falco_k8s_audit"), "{modules:?}");
    for a in &alerts {
        assert!(!a.rule_id.is_empty());
        assert_eq!(
            a.to_falco_json()["output_fields"]["peregrine.rule_id"],
            a.rule_id,
            "{}",
            a.module
        );
        assert_eq!(a.field("peregrine.rule_id"), Some(a.rule_id.as_str()));
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let mut config = test_config();
    config.server.max_body_bytes = 64 << 10;
    config.server.max_event_bytes = 4 << 10;
    let srv = TestServer::start(config, rules_dir(&[fixture_module("fixture_echo")])).await;
    let c = &srv.client;

    // Wrong content type.
    let r = c
        .post(srv.url("/k8s-audit"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("application/json"));
    let r = c
        .post(srv.url("/k8s-audit"))
        .body(event("x", "get", "pods", "a").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no content type at all");

    // Oversized body.
    let big = "x".repeat(100 << 10);
    let (status, body) = srv
        .post(
            "/k8s-audit",
            format!("{{\"kind\":\"Event\",\"pad\":\"{big}\"}}"),
        )
        .await;
    assert_eq!(status, 413);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    // Not JSON, not audit data, hostile shapes.
    for (payload, needle) in [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("\"just a string\"", "not recognized as a k8s audit event"),
        (r#"{"kind": 0}"#, "data not recognized as a k8s audit event"),
        (r#"{"kind":"Pod","apiVersion":"v1"}"#, "not recognized"),
        (&"[".repeat(10_000), "not valid JSON"),
    ] {
        let (status, body) = srv.post("/k8s-audit", payload.to_string()).await;
        assert_eq!(status, 400, "{payload:.40}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{payload:.40}: {body}"
        );
    }

    // A list with some bad items keeps the good ones.
    let mut too_big = event("big", "get", "pods", "a");
    too_big["userAgent"] = serde_json::json!("y".repeat(8 << 10));
    let mut wrong_type = event("wt", "get", "pods", "a");
    wrong_type["verb"] = serde_json::json!(42);
    let items = vec![
        event("good-1", "get", "pods", "a"),
        wrong_type,
        serde_json::json!("not an object"),
        too_big,
        serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v9"}),
        event("good-2", "list", "pods", "a"),
    ];
    let (status, summary) = srv.post("/k8s-audit", event_list(&items)).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["accepted"], 2);
    let rejected = summary["rejected"].as_array().unwrap();
    let at: Vec<_> = rejected.iter().map(|r| r["at"].as_str().unwrap()).collect();
    assert_eq!(at, ["item 1", "item 2", "item 3", "item 4"]);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("verb"),
        "{summary}"
    );
    assert!(
        rejected[2]["reason"]
            .as_str()
            .unwrap()
            .contains("per-event limit"),
        "{summary}"
    );

    // Other methods.
    let r = c.get(srv.url("/k8s-audit")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = c
        .put(srv.url("/k8s-audit"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Still serving: the good events were evaluated, and a new one is too.
    let (status, _) = srv
        .post("/k8s-audit", event("after", "get", "pods", "a").to_string())
        .await;
    assert_eq!(status, 200);
    let alerts = srv
        .alerts
        .wait_for("three echo alerts", |a| a.len() >= 3)
        .await;
    let mut ids: Vec<_> = alerts.iter().map(|a| a.audit_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["after", "good-1", "good-2"]);
    let health = srv.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_batches_are_deduplicated_by_audit_id_and_stage() {
    let srv = TestServer::start(test_config(), rules_dir(&[fixture_module("fixture_echo")])).await;
    let batch = event_list(&[
        event("d-1", "get", "pods", "a"),
        event("d-2", "get", "pods", "a"),
    ]);
    let (_, first) = srv.post("/k8s-audit", batch.clone()).await;
    assert_eq!(first["accepted"], 2);
    let (_, again) = srv.post("/k8s-audit", batch).await;
    assert_eq!(again["accepted"], 0);
    assert_eq!(again["duplicates"], 2);
    let mut other_stage = event("d-1", "get", "pods", "a");
    other_stage["stage"] = serde_json::json!("RequestReceived");
    let (_, third) = srv.post("/k8s-audit", other_stage.to_string()).await;
    assert_eq!(
        third["accepted"], 1,
        "same auditID at another stage is another event"
    );
    let alerts = srv.shutdown().await;
    assert_eq!(alerts.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_with_retry_after_and_loses_nothing_acknowledged() {
    let mut config = test_config();
    config.engine.workers = 1;
    config.server.queue_events = 15;
    config.sandbox.defaults.call_deadline_ms = 300;
    let srv = TestServer::start(
        config,
        rules_dir(&[
            fixture_module("fixture_spin_loop"),
            fixture_module("fixture_echo"),
        ]),
    )
    .await;
    // Each of these keeps the only worker busy for a deadline; then the
    // worker is held with the batch's alerts (as behind a slow output), so
    // nothing leaves the queue until the end, however slow this machine is.
    let hold = srv.alerts.hold();
    let slow: Vec<_> = (0..10)
        .map(|i| event(&format!("slow-{i}"), "get", "pods", "spin"))
        .collect();
    let (status, _) = srv.post("/k8s-audit", event_list(&slow)).await;
    assert_eq!(status, 200);
    srv.alerts.wait_held(1).await;
    assert_eq!(srv.get_json("/healthz").await["queue_events"], 0);
    let fits: Vec<_> = (0..10)
        .map(|i| event(&format!("fits-{i}"), "get", "pods", "a"))
        .collect();
    let (status, _) = srv.post("/k8s-audit", event_list(&fits)).await;
    assert_eq!(status, 200);
    let over: Vec<_> = (0..10)
        .map(|i| event(&format!("over-{i}"), "get", "pods", "a"))
        .collect();
    let r = srv
        .client
        .post(srv.url("/k8s-audit"))
        .header("content-type", "application/json")
        .body(event_list(&over))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    hold.release();
    // The apiserver sends the refused batch again once the queue has room;
    // its events were not remembered as seen, so every one is accepted.
    srv.alerts
        .wait_for("the acknowledged events", |a| {
            a.iter().filter(|a| a.audit_id.starts_with("fits-")).count() == 10
        })
        .await;
    let (status, again) = srv.post("/k8s-audit", event_list(&over)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(10), Some(0)),
        "the refused events must not be dropped as duplicates: {again}"
    );
    let alerts = srv.shutdown().await;
    let echoed: std::collections::BTreeSet<_> = alerts
        .iter()
        .filter(|a| a.rule == "Echo")
        .map(|a| a.audit_id.clone())
        .collect();
    for i in 0..10 {
        assert!(echoed.contains(&format!("slow-{i}")));
        assert!(
            echoed.contains(&format!("fits-{i}")),
            "acknowledged events are all evaluated"
        );
        assert!(
            echoed.contains(&format!("over-{i}")),
            "the re-posted batch is evaluated"
        );
    }
}

/// A few huge events fill the queue's byte bound long before its event
/// bound: the webhook answers 429 before memory runs out, and the batch it
/// refused is taken when the apiserver sends it again.
#[tokio::test(flavor = "multi_thread")]
async fn large_events_fill_the_byte_bound_and_get_429_far_from_the_event_bound() {
    let mut config = test_config();
    config.engine.workers = 1;
    config.server.queue_bytes = 1 << 20;
    let srv = TestServer::start(config, rules_dir(&[fixture_module("fixture_echo")])).await;
    let big = |id: &str| {
        let mut e = event(id, "create", "configmaps", "a");
        e["requestObject"] = serde_json::json!({
            "kind": "ConfigMap",
            "data": {"blob": "x".repeat(300 << 10)}
        });
        e
    };
    // The only worker is held with the first batch's alert (as behind a
    // slow output): what comes next stays queued.
    let hold = srv.alerts.hold();
    let (status, _) = srv
        .post(
            "/k8s-audit",
            event_list(&[event("first", "get", "pods", "a")]),
        )
        .await;
    assert_eq!(status, 200);
    srv.alerts.wait_held(1).await;
    let fits: Vec<_> = (0..3).map(|i| big(&format!("big-{i}"))).collect();
    let (status, _) = srv.post("/k8s-audit", event_list(&fits)).await;
    assert_eq!(status, 200, "900 KiB fit in a 1 MiB queue");
    let over = vec![big("big-over")];
    let r = srv
        .client
        .post(srv.url("/k8s-audit"))
        .header("content-type", "application/json")
        .body(event_list(&over))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "300 KiB more do not");
    assert!(r.headers().get("retry-after").is_some());
    let health = srv.get_json("/healthz").await;
    assert_eq!(health["queue_events"], 3);
    assert!(
        health["queue_capacity"].as_u64().unwrap() >= 100_000,
        "the event bound is far away: {health}"
    );
    let metrics = srv
        .client
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("peregrine_queue_bytes"),
        "the queued bytes are a gauge"
    );
    hold.release();
    srv.alerts
        .wait_for("the queued large events", |a| {
            a.iter().filter(|a| a.audit_id.starts_with("big-")).count() == 3
        })
        .await;
    let (status, again) = srv.post("/k8s-audit", event_list(&over)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["accepted"], 1, "{again}");
    let alerts = srv.shutdown().await;
    assert!(alerts.iter().any(|a| a.audit_id == "big-over"));
}
