//! An input cannot switch a module off. Crafted but valid events cost
//! themselves at most a cut alert or a rule-error alert; only a module that
//! fails on ordinary events, over distinct events and time, is quarantined,
//! for the tenant whose events it fails on, and loudly.

use std::time::{Duration, Instant};

use crate::support::*;

const ADMIN: &str = "admin-token-0123456789";

/// The corpus' privileged nginx pod, with a new auditID.
fn privileged_pod(id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(corpus_file("create_nginx_pod_privileged.json")).unwrap();
    let mut ev: serde_json::Value = serde_json::from_str(&text).unwrap();
    ev["auditID"] = id.into();
    ev
}

/// A privileged pod of 60 containers whose image names are 5 KB each (about
/// 315 KB of event): Create Privileged Pod lists every image in its output,
/// far over the 256 KiB output limit of one call.
fn crafted_pod(i: usize) -> serde_json::Value {
    let mut ev = privileged_pod(&format!("crafted-{i}"));
    let containers: Vec<serde_json::Value> = (0..60)
        .map(|j| {
            serde_json::json!({
                "name": format!("c{j}"),
                "image": format!("registry.example.com/{}-{i}-{j}:1", "a".repeat(5_000)),
                "securityContext": {"privileged": true}
            })
        })
        .collect();
    ev["requestObject"]["spec"]["containers"] = containers.clone().into();
    ev["responseObject"]["spec"]["containers"] = containers.into();
    ev
}

#[test]
fn crafted_pods_do_not_blind_the_falco_pack() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[example_module("falco_k8s_audit")]);
    let config = work.path().join("peregrine.toml");
    std::fs::write(&config, base_config(&rules, None)).unwrap();
    let srv = start(&config, &["--no-watch"]);

    // 25 crafted pods, one request each, as an attacker creating pods would.
    for i in 0..25 {
        let (code, body) = post(&srv.url("/k8s-audit"), None, &event_list(&[crafted_pod(i)]));
        assert_eq!(code, 200, "{body}");
    }
    let alerts = srv.wait_alerts("an alert for every crafted pod", |a| {
        a.iter()
            .filter(|a| a["rule"] == "Create Privileged Pod")
            .count()
            == 25
    });
    for a in alerts
        .iter()
        .filter(|a| a["rule"] == "Create Privileged Pod")
    {
        let f = &a["output_fields"];
        assert_eq!(f["peregrine.truncated"], "true", "cut and marked: {f}");
        let images = f["ka.req.pod.containers.image"].as_str().unwrap();
        assert!(
            images.contains("registry.example.com/aaaa"),
            "the cut value keeps its start"
        );
        assert!(a.to_string().len() < 300 << 10, "within the output limit");
    }
    assert!(
        !alerts.iter().any(|a| a["rule"] == "Peregrine Rule Error"),
        "output over the limit is cut, not failed"
    );

    // Detection is still on: a privileged pod created afterwards alerts.
    let (code, _) = post(
        &srv.url("/k8s-audit"),
        None,
        &privileged_pod("after-the-attack").to_string(),
    );
    assert_eq!(code, 200);
    let alerts = srv.wait_alerts("the privileged pod after the attack", |a| {
        a.iter().any(|a| {
            a["rule"] == "Create Privileged Pod"
                && a["output_fields"]["ka.auditid"] == "after-the-attack"
        })
    });
    let after = alerts
        .iter()
        .find(|a| a["output_fields"]["ka.auditid"] == "after-the-attack")
        .unwrap();
    assert!(after["output_fields"]["peregrine.truncated"].is_null());

    let (_, health) = get_json(&srv.url("/healthz"), None);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["modules_live"], 1, "{health}");
    let (_, rules) = get_json(&srv.url("/api/v1/rules"), None);
    assert_eq!(rules["modules"][0]["status"], "live", "{rules}");
    let metrics = srv.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("peregrine_alerts_truncated_total{module=\"falco_k8s_audit\"} 25")),
        "{metrics}"
    );
}

#[test]
fn a_module_failing_on_ordinary_events_is_quarantined_for_that_tenant_only() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(
        work.path(),
        &[
            fixture_module("fixture_trap"),
            fixture_module("fixture_echo"),
        ],
    );
    let token = "team-a-token-0123456789";
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "{}[engine.quarantine]\nfailed_events = 5\nmin_span_secs = 1\nfailure_ratio = 0.5\n\
             window_secs = 60\nretry_after_secs = 0\n\
             [auth]\nadmin_tokens = [\"{ADMIN}\"]\n[tenants.team-a]\ntokens = [\"{token}\"]\n",
            base_config(&rules, None)
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);

    // Many failures on the same few events, all at once, are not enough.
    let burst: Vec<_> = (0..40)
        .map(|i| event(&format!("b-{}", i % 3), "get", "pods", "trap"))
        .collect();
    let (code, _) = post(&srv.url("/k8s-audit"), None, &event_list(&burst));
    assert_eq!(code, 200);
    srv.wait_alerts("the burst evaluated", |a| {
        a.iter()
            .filter(|a| a["rule"] == "Peregrine Rule Error")
            .count()
            >= 3
    });
    let (_, health) = get_json(&srv.url("/healthz"), None);
    assert_eq!(health["status"], "ok", "{health}");

    // The module fails on every event of the default tenant, distinct
    // events spread over time: quarantined, with a Critical alert.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while !srv
        .alerts()
        .iter()
        .any(|a| a["rule"] == "Peregrine Module Quarantined")
    {
        assert!(
            Instant::now() < deadline,
            "never quarantined:\n{}",
            srv.logs()
        );
        let (code, _) = post(
            &srv.url("/k8s-audit"),
            None,
            &event(&format!("ordinary-{i}"), "get", "pods", "trap").to_string(),
        );
        assert_eq!(code, 200);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let alerts = srv.alerts();
    let q = alerts
        .iter()
        .find(|a| a["rule"] == "Peregrine Module Quarantined")
        .unwrap();
    assert_eq!(q["priority"], "Critical");
    assert_eq!(q["output_fields"]["peregrine.module"], "fixture_trap");
    assert_eq!(q["output_fields"]["peregrine.tenant"], "default");
    assert!(
        q["output"].as_str().unwrap().contains("fixture_trap"),
        "{q}"
    );
    assert!(srv.logs().contains("module quarantined for the tenant"));

    let (code, health) = get_json(&srv.url("/healthz"), None);
    assert_eq!(code, 200, "a bad rule must not fail the liveness probe");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["modules_quarantined"][0]["module"], "fixture_trap");
    assert_eq!(health["modules_live"], 1, "{health}");
    let metrics = srv.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "peregrine_module_quarantined{module=\"fixture_trap\",tenant=\"default\"} 1"),
        "{metrics}"
    );
    let (_, report) = get_json(&srv.url("/api/v1/rules"), Some(ADMIN));
    let trap = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "fixture_trap")
        .unwrap();
    assert_eq!(trap["status"], "quarantined");
    assert_eq!(trap["quarantined"][0]["tenant"], "default");
    assert_eq!(trap["quarantined"][0]["failed_events"], 5);

    // The default tenant's events no longer reach it; the echo still runs.
    let errors_before = srv
        .alerts()
        .iter()
        .filter(|a| a["rule"] == "Peregrine Rule Error")
        .count();
    post(
        &srv.url("/k8s-audit"),
        None,
        &event("after-quarantine", "get", "pods", "trap").to_string(),
    );
    srv.wait_alerts("the echo of the next event", |a| {
        a.iter()
            .any(|a| a["rule"] == "Echo" && a["output_fields"]["ka.auditid"] == "after-quarantine")
    });
    // Team A's events still get the module: its view is its own.
    let (code, _) = post(
        &srv.url("/k8s-audit/team-a"),
        Some(token),
        &event("team-a-1", "get", "pods", "trap").to_string(),
    );
    assert_eq!(code, 200);
    let alerts = srv.wait_alerts("team A's rule error", |a| {
        a.iter().any(|a| {
            a["rule"] == "Peregrine Rule Error" && a["output_fields"]["ka.auditid"] == "team-a-1"
        })
    });
    let errors_after = alerts
        .iter()
        .filter(|a| a["rule"] == "Peregrine Rule Error")
        .count();
    assert_eq!(
        errors_after,
        errors_before + 1,
        "only team A's event was evaluated"
    );
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a["rule"] == "Peregrine Module Quarantined")
            .count(),
        1
    );
}
