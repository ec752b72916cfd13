//! Hot reload: a module swaps in place, under load, without losing or
//! repeating an event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peregrine_tests::*;

async fn wait_for_digest(srv: &TestServer, key: &str, digest: &str) {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let rules = srv.get_json("/api/v1/rules").await;
        if rules["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["key"] == key && m["digest"] == digest && m["status"] == "live")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never went live with {digest}: {rules}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sha256(bytes: &[u8]) -> String {
    // The same digest the host reports, computed by the host's own library.
    peregrine::rules::digest_of(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_module_under_load_evaluates_every_event_exactly_once() {
    let echo = std::fs::read(fixture_module("fixture_echo")).unwrap();
    let dir = rules_dir(&[]);
    let path = dir.path().join("echo.wasm");
    install(&path, &echo);
    let srv = TestServer::start(test_config(), dir).await;
    let mut versions = vec![sha256(&echo)];

    // The load: batches posted one after another until the last version has
    // evaluated some of them, through every swap.
    let per_batch = 50;
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let client = srv.client.clone();
        let url = srv.url("/k8s-audit");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut batches = 0;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<_> = (0..per_batch)
                    .map(|i| event(&format!("r-{batches}-{i}"), "get", "pods", "load"))
                    .collect();
                loop {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(event_list(&events))
                        .send()
                        .await
                        .unwrap();
                    // Behave like the apiserver: retry on 429.
                    if r.status() == 429 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    assert_eq!(r.status(), 200);
                    break;
                }
                batches += 1;
                // Leaves the workers room to keep up, so the queue stays short.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            batches
        })
    };

    // Each version evaluates some of the load before the next replaces it.
    for v in 1..=4 {
        let live = versions.last().unwrap().clone();
        srv.alerts
            .wait_for(&format!("an event evaluated by version {}", v - 1), |a| {
                a.iter().any(|a| a.module_digest == live)
            })
            .await;
        assert!(!poster.is_finished(), "the load stopped early");
        let bytes = variant(&echo, &format!("v{v}"));
        versions.push(sha256(&bytes));
        install(&path, &bytes);
        wait_for_digest(&srv, "echo", versions.last().unwrap()).await;
    }
    let last = versions.last().unwrap().clone();
    srv.alerts
        .wait_for("an event evaluated by the last version", |a| {
            a.iter().any(|a| a.module_digest == last)
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    let total_batches = poster.await.unwrap();

    let (status, _) = srv
        .post(
            "/k8s-audit",
            event("after-swaps", "get", "pods", "load").to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let alerts = srv.shutdown().await;

    // Exactly once: one echo per event, none missing, none repeated.
    let mut per_event: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for a in &alerts {
        per_event
            .entry(a.audit_id.as_str())
            .or_default()
            .push(a.module_digest.as_str());
    }
    assert_eq!(per_event.len(), total_batches * per_batch + 1);
    for (id, digests) in &per_event {
        assert_eq!(
            digests.len(),
            1,
            "event {id} evaluated {} times",
            digests.len()
        );
        assert!(
            versions.iter().any(|v| v == digests[0]),
            "event {id} by an unknown version"
        );
    }
    // The swaps happened under load: every version evaluated events.
    let used: BTreeSet<&str> = per_event.values().map(|d| d[0]).collect();
    assert_eq!(used.len(), versions.len(), "versions that saw events");
    // After the last swap, the last version holds.
    assert_eq!(per_event["after-swaps"][0], last);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_update_keeps_the_previous_version_and_deleting_unloads() {
    let echo = std::fs::read(fixture_module("fixture_echo")).unwrap();
    let dir = rules_dir(&[]);
    let path = dir.path().join("echo.wasm");
    install(&path, &echo);
    let srv = TestServer::start(test_config(), dir).await;
    let good = sha256(&echo);
    wait_for_digest(&srv, "echo", &good).await;

    // Garbage replaces the module: the old version stays live, the error shows.
    install(&path, b"\0asm garbage, not a component");
    let deadline = Instant::now() + LONG_WAIT;
    let report = loop {
        let rules = srv.get_json("/api/v1/rules").await;
        let m = rules["modules"][0].clone();
        if !m["last_error"].is_null() {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report["status"], "live");
    assert_eq!(report["digest"], good.as_str());
    assert!(
        report["last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{report}"
    );
    let (status, _) = srv
        .post(
            "/k8s-audit",
            event("kept-1", "get", "pods", "a").to_string(),
        )
        .await;
    assert_eq!(status, 200);
    srv.alerts
        .wait_for("the old version's alert", |a| {
            a.iter().any(|a| a.audit_id == "kept-1")
        })
        .await;
    assert_eq!(srv.alerts.alerts()[0].module_digest, good);

    // Deleting the file unloads the module.
    std::fs::remove_file(&path).unwrap();
    let deadline = Instant::now() + LONG_WAIT;
    while srv.get_json("/healthz").await["modules_live"] != 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = srv
        .post(
            "/k8s-audit",
            event("gone-1", "get", "pods", "a").to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let alerts = srv.shutdown().await;
    assert!(alerts.iter().all(|a| a.audit_id != "gone-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_api_reports_modules_and_per_rule_counters() {
    let srv = TestServer::start(
        test_config(),
        rules_dir(&[example_module("falco_k8s_audit")]),
    )
    .await;
    let f = std::fs::read(corpus_file("create_nginx_pod_privileged.json")).unwrap();
    srv.post("/k8s-audit", f).await;
    srv.alerts.wait_for("an alert", |a| !a.is_empty()).await;
    let rules = srv.get_json("/api/v1/rules").await;
    let m = &rules["modules"][0];
    assert_eq!(m["key"], "falco_k8s_audit");
    assert_eq!(m["status"], "live");
    assert_eq!(m["name"], "falco-k8s-audit");
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);
    assert!(m["loaded_at"].as_str().is_some());
    assert!(
        m["path"]
            .as_str()
            .unwrap()
            .ends_with("falco_k8s_audit.wasm")
    );
    assert_eq!(m["evaluations"], 1);
    assert_eq!(m["errors"], 0);
    assert!(m["mean_eval_micros"].as_f64().unwrap() > 0.0);
    let rules_list = m["rules"].as_array().unwrap();
    assert_eq!(rules_list.len(), 48);
    let privileged = rules_list
        .iter()
        .find(|r| r["name"] == "Create Privileged Pod")
        .unwrap();
    assert_eq!(privileged["alerts"], 1);
    assert_eq!(privileged["evaluations"], 1);
    assert_eq!(privileged["errors"], 0);
    // Its share of the one call: the call's time over the rules admitted.
    let share = privileged["mean_eval_micros"].as_f64().unwrap();
    assert!(
        share > 0.0 && share <= m["mean_eval_micros"].as_f64().unwrap(),
        "{privileged}"
    );
    assert_eq!(privileged["priority"], "Warning");
    let off = rules_list
        .iter()
        .find(|r| r["name"] == "Full K8s Administrative Access")
        .unwrap();
    assert_eq!(off["enabled"], false);
    srv.shutdown().await;
}
