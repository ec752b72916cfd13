//! Alert routing and the HTTP and file outputs, end to end: a real server
//! on an ephemeral port with real rule modules, its alerts going through
//! the router and the delivery machinery to local receivers on real ports,
//! which check the exact payloads.

use crate::outputs_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use outputs_support::*;
use peregrine_tests::*;
use serde_json::json;

fn echo() -> Vec<std::path::PathBuf> {
    vec![fixture_module("fixture_echo")]
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn digest_of(module: &std::path::Path) -> String {
    peregrine::rules::digest_of(&std::fs::read(module).unwrap())
}

/// The Falco JSON the echo fixture's alert for `id` must arrive as.
fn echo_falco_json(id: &str, seen: u32, hostname: &str, digest: &str) -> serde_json::Value {
    json!({
        "hostname": hostname,
        "output": format!("10:00:00.100000000: Informational echo {id}"),
        "priority": "Informational",
        "rule": "Echo",
        "source": "k8s_audit",
        "tags": [],
        "time": "2026-11-27T10:00:00.100000000Z",
        "output_fields": {
            "audit_id": id,
            "has_request_object": "false",
            "ka.auditid": id,
            "peregrine.module": "fixture_echo",
            "peregrine.module_digest": digest,
            "peregrine.rule_id": "echo",
            "peregrine.tenant": "default",
            "peregrine.cluster": "default",
            "seen": seen.to_string(),
            "tenant": "default",
            "version": "",
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_falcosidekick_and_slack_receive_exact_payloads() {
    let rx = Receiver::start(always_ok()).await;
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.exact_hook]
type = "webhook"
url = "{hook}"
headers = {{ Authorization = "Bearer s3cret-token", "X-Peregrine-Test" = "exact" }}

[outputs.exact_sidekick]
type = "falcosidekick"
url = "{sidekick}"
delivery = {{ spool = false }}

[outputs.exact_slack]
type = "slack"
url = "{slack}"
username = "peregrine"

[[routes]]
outputs = ["exact_hook", "exact_sidekick", "exact_slack"]
"#,
        hook = rx.url("/hook"),
        sidekick = rx.url("/"),
        slack = rx.url("/services/T000/B000/XXXX"),
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    srv.post_ids(&["exact-1".into(), "exact-2".into()]).await;

    let host = srv.hostname();
    let digest = digest_of(&fixture_module("fixture_echo"));
    let expected = [
        echo_falco_json("exact-1", 1, &host, &digest),
        echo_falco_json("exact-2", 2, &host, &digest),
    ];

    // Webhook: one POST per alert, in order, with the configured headers.
    let hook = rx.wait_accepted("/hook", 2).await;
    assert_eq!(hook.len(), 2);
    for (r, want) in hook.iter().zip(&expected) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.json(), *want);
        assert_eq!(r.header("authorization"), Some("Bearer s3cret-token"));
        assert_eq!(r.header("x-peregrine-test"), Some("exact"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap().starts_with("peregrine/"));
    }

    // Falcosidekick: Falco's JSON on its root path, nothing else (this
    // output runs without a spool: memory only).
    let sk = rx.wait_accepted("/", 2).await;
    assert_eq!(sk.len(), 2);
    for (r, want) in sk.iter().zip(&expected) {
        assert_eq!(r.json(), *want);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("authorization"), None);
    }

    // Slack: a summary line and blocks.
    let slack = rx.wait_accepted("/services/T000/B000/XXXX", 2).await;
    assert_eq!(
        slack[0].json(),
        json!({
            "text": "[Informational] Echo: echo exact-1",
            "username": "peregrine",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": ":white_circle: Informational: Echo", "emoji": true}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "echo exact-1"}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": "*Priority*\nInformational"},
                    {"type": "mrkdwn", "text": "*Tenant*\ndefault"},
                    {"type": "mrkdwn", "text": "*Rule ID*\necho"},
                    {"type": "mrkdwn", "text": "*Module*\nfixture_echo"},
                    {"type": "mrkdwn", "text": "*audit_id*\nexact-1"},
                    {"type": "mrkdwn", "text": "*tenant*\ndefault"},
                    {"type": "mrkdwn", "text": "*seen*\n1"},
                    {"type": "mrkdwn", "text": "*has_request_object*\nfalse"},
                ]},
                {"type": "context", "elements": [
                    {"type": "mrkdwn", "text": format!("2026-11-27T10:00:00.100000000Z · audit ID exact-1 · host {host}")}
                ]},
            ]
        })
    );
    assert_eq!(
        slack[1].json()["text"],
        "[Informational] Echo: echo exact-2"
    );

    let m = srv
        .wait_metric(
            "peregrine_output_sent_total",
            &[("output", "exact_slack")],
            2.0,
        )
        .await;
    assert_eq!(
        metric(
            &m,
            "peregrine_output_sent_total",
            &[("output", "exact_hook")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "peregrine_output_spooled_total",
            &[("output", "exact_hook")]
        ),
        Some(2.0)
    );
    // The memory-only output spools nothing.
    assert_eq!(
        metric(
            &m,
            "peregrine_output_spooled_total",
            &[("output", "exact_sidekick")]
        ),
        None
    );
    srv.shutdown().await;
    // Nothing is sent twice.
    assert_eq!(rx.accepted("/hook").len(), 2);
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_match_on_priority_rules_tags_tenants_and_modules() {
    let rx = Receiver::start(always_ok()).await;
    let spool = tempfile::tempdir().unwrap();
    let token_a = "team-a-token-0123456789";
    let token_b = "team-b-token-0123456789";
    let mut toml = String::new();
    for name in ["r_severe", "r_team_a", "r_tagged", "r_echoes", "r_rest"] {
        toml.push_str(&format!(
            "[outputs.{name}]\ntype = \"webhook\"\nurl = \"{}\"\n",
            rx.url(&format!("/{name}"))
        ));
    }
    toml.push_str(&format!(
        r#"
[routing]
default_outputs = ["r_rest"]

[[routes]]
name = "severe"
min_priority = "warning"
outputs = ["r_severe"]

[[routes]]
name = "team-a-echoes"
rules = ["Ech?"]
tenants = ["*-a"]
outputs = ["r_team_a"]
final = true

[[routes]]
name = "k8s-tagged"
tags = ["k8*"]
outputs = ["r_tagged"]

[[routes]]
name = "default-echoes"
modules = ["fixture_*"]
rules = ["echo"]
tenants = ["default"]
outputs = ["r_echoes"]

# Falco stays quiet about the plain events' user.
[modules.falco_k8s_audit.lists.allowed_k8s_users]
append = ["tester"]

[tenants.team-a]
tokens = ["{token_a}"]

[tenants.team-b]
tokens = ["{token_b}"]
"#
    ));
    let srv = RoutedServer::start(
        config(&toml, spool.path()),
        &[
            fixture_module("fixture_echo"),
            example_module("falco_k8s_audit"),
        ],
    )
    .await;

    // Default tenant: a host-PID pod (Falco: Warning, tagged k8s) and a
    // plain read; each also raises an echo alert.
    let hostpid = events_of(&root().join("tests/fixtures/falco/create_pod_hostpid.json"));
    let hostpid_id = hostpid[0]["auditID"].as_str().unwrap().to_string();
    srv.post("/k8s-audit", None, &hostpid).await;
    srv.post_ids(&["route-plain".into()]).await;
    // Tenants: team-a's echo stops at its final route; team-b's matches nothing.
    srv.post(
        "/k8s-audit/team-a",
        Some(token_a),
        &[event("route-a", "get", "pods", "x")],
    )
    .await;
    srv.post(
        "/k8s-audit/team-b",
        Some(token_b),
        &[event("route-b", "get", "pods", "x")],
    )
    .await;

    let got = |path: &str, n: usize| {
        let rx = &rx;
        let path = path.to_string();
        async move {
            let mut v: Vec<(String, String, String)> = rx
                .wait_accepted(&path, n)
                .await
                .iter()
                .map(|r| {
                    let j = r.json();
                    (
                        j["rule"].as_str().unwrap().to_string(),
                        j["output_fields"]["peregrine.tenant"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        j["output_fields"]["ka.auditid"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        }
    };
    let t =
        |rule: &str, tenant: &str, id: &str| (rule.to_string(), tenant.to_string(), id.to_string());
    assert_eq!(
        got("/r_severe", 1).await,
        vec![t("Create HostPid Pod", "default", &hostpid_id)]
    );
    assert_eq!(
        got("/r_tagged", 1).await,
        vec![t("Create HostPid Pod", "default", &hostpid_id)]
    );
    assert_eq!(
        got("/r_team_a", 1).await,
        vec![t("Echo", "team-a", "route-a")]
    );
    assert_eq!(
        got("/r_echoes", 2).await,
        vec![
            t("Echo", "default", &hostpid_id),
            t("Echo", "default", "route-plain")
        ]
    );
    assert_eq!(
        got("/r_rest", 1).await,
        vec![t("Echo", "team-b", "route-b")]
    );

    let m = srv
        .wait_metric("peregrine_output_sent_total", &[("output", "r_rest")], 1.0)
        .await;
    assert_eq!(
        metric(
            &m,
            "peregrine_alerts_routed_total",
            &[("route", "team-a-echoes")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "peregrine_alerts_routed_total", &[("route", "default")]),
        Some(1.0)
    );
    srv.shutdown().await;
    // Nothing more arrived than what was routed.
    for (path, n) in [
        ("/r_severe", 1),
        ("/r_tagged", 1),
        ("/r_team_a", 1),
        ("/r_echoes", 2),
        ("/r_rest", 1),
    ] {
        assert_eq!(rx.accepted(path).len(), n, "{path}");
    }
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_alerts_within_the_window_are_folded_into_one_with_a_count() {
    let rx = Receiver::start(always_ok()).await;
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.fold_hook]
type = "webhook"
url = "{}"

[[routes]]
name = "folding"
outputs = ["fold_hook"]
dedup_window_secs = 2
dedup_key = ["tenant"]
"#,
        rx.url("/fold")
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    // Five echo alerts with the same rule and tenant: one batch, one window.
    srv.post_ids(&ids("fold", 5)).await;

    // The first goes out at once, the window's summary when it closes.
    let got = rx.wait_accepted("/fold", 2).await;
    let first = got[0].json();
    assert_eq!(first["output_fields"]["ka.auditid"], "fold-0000");
    assert!(first["output_fields"].get("peregrine.folded").is_none());
    let summary = got[1].json();
    assert_eq!(summary["output_fields"]["peregrine.folded"], "4");
    assert_eq!(summary["output_fields"]["peregrine.fold_window_secs"], "2");
    assert_eq!(
        summary["output_fields"]["ka.auditid"], "fold-0004",
        "the summary is the last folded alert"
    );
    assert!(
        summary["output"]
            .as_str()
            .unwrap()
            .ends_with("echo fold-0004 (and 4 more like it within 2s)"),
        "{summary}"
    );
    let m = srv.metrics().await;
    assert_eq!(
        metric(&m, "peregrine_alerts_folded_total", &[("route", "folding")]),
        Some(4.0)
    );

    // After the window, the same alert is news again.
    srv.post_ids(&["fold-later".into()]).await;
    let got = rx.wait_accepted("/fold", 3).await;
    assert_eq!(got[2].json()["output_fields"]["ka.auditid"], "fold-later");
    srv.shutdown().await;
    assert_eq!(rx.accepted("/fold").len(), 3);
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_outage_loses_no_alert() {
    let port = reserve_port();
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.outage_hook]
type = "webhook"
url = "http://127.0.0.1:{port}/outage"
timeout_ms = 2000
delivery = {{ retry_initial_ms = 50, retry_max_ms = 400, batch_max = 7 }}

[[routes]]
outputs = ["outage_hook"]
"#
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let all = ids("outage", 120);

    // The receiver is down: alerts keep coming, sends keep failing.
    for chunk in all[..60].chunks(10) {
        srv.post_ids(chunk).await;
    }
    srv.wait_metric(
        "peregrine_output_failed_total",
        &[("output", "outage_hook")],
        3.0,
    )
    .await;
    for chunk in all[60..90].chunks(10) {
        srv.post_ids(chunk).await;
    }

    // It comes back, but overloaded: its first answers are 503s.
    let answered = Arc::new(AtomicUsize::new(0));
    let a = answered.clone();
    let rx = Receiver::start_on(
        port,
        Arc::new(move |_, _| {
            if a.fetch_add(1, Ordering::SeqCst) < 5 {
                (503, "busy".into())
            } else {
                (200, "ok".into())
            }
        }),
    )
    .await;
    for chunk in all[90..].chunks(10) {
        srv.post_ids(chunk).await;
    }

    // Every alert arrives, each at least once.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let got: std::collections::BTreeSet<String> =
            audit_ids(&rx.accepted("/outage")).into_iter().collect();
        if all.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing after the outage: {:?}",
            all.iter()
                .filter(|id| !got.contains(*id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = srv
        .wait_metric(
            "peregrine_output_sent_total",
            &[("output", "outage_hook")],
            120.0,
        )
        .await;
    assert!(
        metric(
            &m,
            "peregrine_output_retried_total",
            &[("output", "outage_hook")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        metric(
            &m,
            "peregrine_output_dropped_total",
            &[("output", "outage_hook")]
        ),
        None
    );
    assert_eq!(
        metric(
            &m,
            "peregrine_output_pending_alerts",
            &[("output", "outage_hook")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "peregrine_output_up", &[("output", "outage_hook")]),
        Some(1.0)
    );
    // Each exactly once: no send was both acknowledged and retried. (Order
    // across requests is the engine's: workers evaluate batches in parallel.)
    assert_eq!(sorted(audit_ids(&rx.accepted("/outage"))), all);
    srv.shutdown().await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_alert_is_dropped_counted_and_its_neighbours_delivered() {
    let rx = Receiver::start(Arc::new(|r: &Received, _| {
        if r.json()["output_fields"]["ka.auditid"] == "refuse-0002" {
            (400, "invalid payload".into())
        } else {
            (200, "ok".into())
        }
    }))
    .await;
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        "[outputs.refusing]\ntype = \"webhook\"\nurl = \"{}\"\n[[routes]]\noutputs = [\"refusing\"]\n",
        rx.url("/refuse")
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let all = ids("refuse", 5);
    srv.post_ids(&all).await;
    let m = srv
        .wait_metric(
            "peregrine_output_sent_total",
            &[("output", "refusing")],
            4.0,
        )
        .await;
    assert_eq!(
        metric(
            &m,
            "peregrine_output_dropped_total",
            &[("output", "refusing"), ("reason", "rejected")]
        ),
        Some(1.0)
    );
    let delivered = audit_ids(&rx.accepted("/refuse"));
    assert_eq!(
        delivered,
        ["refuse-0000", "refuse-0001", "refuse-0003", "refuse-0004"]
    );
    srv.shutdown().await;
    rx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_drops_are_counted_never_silent() {
    let port = reserve_port();
    let spool = tempfile::tempdir().unwrap();
    // Room for about three alerts; the receiver never comes up.
    let toml = format!(
        r#"
[outputs.tiny]
type = "webhook"
url = "http://127.0.0.1:{port}/"
delivery = {{ spool_max_bytes = 2000, retry_initial_ms = 1000, retry_max_ms = 1000 }}

[[routes]]
outputs = ["tiny"]
"#
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    srv.post_ids(&ids("full", 10)).await;
    let m = srv
        .wait_metric(
            "peregrine_output_dropped_total",
            &[("output", "tiny"), ("reason", "spool_full")],
            1.0,
        )
        .await;
    let dropped = metric(
        &m,
        "peregrine_output_dropped_total",
        &[("output", "tiny"), ("reason", "spool_full")],
    )
    .unwrap();
    let spooled = metric(&m, "peregrine_output_spooled_total", &[("output", "tiny")]).unwrap();
    assert_eq!(
        dropped + spooled,
        10.0,
        "every alert is either spooled or counted as dropped"
    );
    assert_eq!(
        metric(&m, "peregrine_output_pending_alerts", &[("output", "tiny")]),
        Some(spooled)
    );
    assert!(metric(&m, "peregrine_output_spool_bytes", &[("output", "tiny")]).unwrap() <= 2000.0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_receiver_holds_up_only_its_own_output() {
    // One receiver never answers until the test lets it; the other is fine.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let stuck_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck_listener.local_addr().unwrap();
    let got: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (r, g) = (release.clone(), got.clone());
    let stuck = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (r, g) = (r.clone(), g.clone());
        async move {
            let _permit = r.acquire().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            g.lock().unwrap().push(
                v["output_fields"]["ka.auditid"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            "ok"
        }
    });
    let stuck_task = tokio::spawn(async move { axum::serve(stuck_listener, stuck).await });
    let fine = Receiver::start(always_ok()).await;

    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.stuck]
type = "webhook"
url = "http://{stuck_addr}/"
timeout_ms = 600000

[outputs.fine]
type = "webhook"
url = "{}"

[[routes]]
outputs = ["stuck", "fine"]
"#,
        fine.url("/fine")
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let all = ids("stuck", 40);
    for chunk in all.chunks(8) {
        srv.post_ids(chunk).await;
    }
    // Everything reaches the healthy output while the other hangs on its
    // first request; the hanging output's alerts wait in its spool.
    let fine_got = fine.wait_accepted("/fine", 40).await;
    assert_eq!(sorted(audit_ids(&fine_got)), all);
    let m = srv
        .wait_metric(
            "peregrine_output_spooled_total",
            &[("output", "stuck")],
            40.0,
        )
        .await;
    assert_eq!(
        metric(&m, "peregrine_output_sent_total", &[("output", "stuck")]),
        None
    );
    assert!(got.lock().unwrap().is_empty());

    // Once it answers, it gets everything too.
    release.add_permits(1000);
    srv.wait_metric("peregrine_output_sent_total", &[("output", "stuck")], 40.0)
        .await;
    assert_eq!(sorted(got.lock().unwrap().clone()), all);
    srv.shutdown().await;
    fine.stop().await;
    stuck_task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn file_output_appends_falco_json_lines() {
    let spool = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("alerts/peregrine.jsonl");
    let toml = format!(
        "[outputs.jsonl]\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 1500\nmax_files = 3\n[[routes]]\noutputs = [\"jsonl\"]\n",
        path.display()
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let all = ids("file", 6);
    srv.post_ids(&all).await;
    srv.wait_metric("peregrine_output_sent_total", &[("output", "jsonl")], 6.0)
        .await;
    let host = srv.hostname();
    srv.shutdown().await;

    // Rotated by size: the oldest lines are in the highest-numbered file.
    let mut lines = Vec::new();
    for p in [
        path.with_extension("jsonl.3"),
        path.with_extension("jsonl.2"),
        path.with_extension("jsonl.1"),
        path.clone(),
    ] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            assert!(text.len() <= 1500, "{} is over max_bytes", p.display());
            lines.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
    }
    assert!(
        path.with_extension("jsonl.1").exists(),
        "the file was rotated"
    );
    let digest = digest_of(&fixture_module("fixture_echo"));
    let want: Vec<serde_json::Value> = all
        .iter()
        .enumerate()
        .map(|(i, id)| echo_falco_json(id, i as u32 + 1, &host, &digest))
        .collect();
    // max_files = 3 keeps every line of these six.
    assert_eq!(lines, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_the_whole_pipeline() {
    let rx = Receiver::start(always_ok()).await;
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        "[outputs.metered]\ntype = \"webhook\"\nurl = \"{}\"\n[[routes]]\nname = \"metered-route\"\noutputs = [\"metered\"]\n",
        rx.url("/m")
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    srv.post_ids(&ids("metered", 3)).await;
    let m = srv
        .wait_metric("peregrine_output_sent_total", &[("output", "metered")], 3.0)
        .await;
    for name in [
        "peregrine_events_received_total",
        "peregrine_events_evaluated_total",
        "peregrine_queue_events",
        "peregrine_rule_evaluations_total",
        "peregrine_rule_eval_seconds_bucket",
        "peregrine_alerts_total",
        "peregrine_alerts_routed_total",
        "peregrine_output_queued_alerts",
        "peregrine_output_pending_alerts",
        "peregrine_output_spooled_total",
        "peregrine_output_send_seconds_bucket",
        "peregrine_output_up",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    assert!(
        m.contains("# HELP peregrine_output_sent_total "),
        "metrics carry HELP text"
    );
    assert!(
        metric(
            &m,
            "peregrine_rule_evaluations_total",
            &[("module", "fixture_echo"), ("rule", "echo")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        metric(
            &m,
            "peregrine_alerts_routed_total",
            &[("route", "metered-route")]
        ),
        Some(3.0)
    );
    srv.shutdown().await;
    rx.stop().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "peregrine test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |san: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, san);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("peregrine", ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// An HTTPS receiver that requires a client certificate signed by the CA.
async fn mtls_receiver(
    pki: &Pki,
    got: Arc<std::sync::Mutex<Vec<Received>>>,
) -> std::net::SocketAddr {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server_cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = outputs_support::router(got, always_ok());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A handshake without a valid client certificate fails here.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = pki();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca = write("ca.pem", &pki.ca);
    let cert = write("client.pem", &pki.client_cert);
    let key = write("client.key", &pki.client_key);
    let got: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
    let addr = mtls_receiver(&pki, got.clone()).await;

    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.mtls]
type = "webhook"
url = "https://{addr}/tls"
tls = {{ ca_file = "{ca}", client_cert_file = "{cert}", client_key_file = "{key}" }}

# The same receiver without a client certificate: refused at the handshake.
[outputs.no_client_cert]
type = "webhook"
url = "https://{addr}/no-cert"
tls = {{ ca_file = "{ca}" }}
delivery = {{ retry_initial_ms = 100, retry_max_ms = 200 }}

[[routes]]
outputs = ["mtls", "no_client_cert"]
"#
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    srv.post_ids(&ids("tls", 3)).await;
    let m = srv
        .wait_metric("peregrine_output_sent_total", &[("output", "mtls")], 3.0)
        .await;
    let tls_got: Vec<Received> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/tls")
        .cloned()
        .collect();
    assert_eq!(audit_ids(&tls_got), ids("tls", 3));
    srv.wait_metric(
        "peregrine_output_failed_total",
        &[("output", "no_client_cert")],
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "peregrine_output_sent_total",
            &[("output", "no_client_cert")]
        ),
        None
    );
    assert!(got.lock().unwrap().iter().all(|r| r.path != "/no-cert"));
    srv.shutdown().await;

    // A CA file that is not PEM is a start-up error that names the file.
    let toml = format!(
        "[outputs.bad_ca]\ntype = \"webhook\"\nurl = \"https://{addr}/\"\ntls = {{ ca_file = \"{}\" }}\n[[routes]]\noutputs = [\"bad_ca\"]\n",
        write("garbage.pem", "not a certificate")
    );
    let err = match tokio::task::spawn_blocking({
        let c = config(&toml, spool.path());
        move || peregrine::router::AlertRouter::start(&c).map(|_| ())
    })
    .await
    .unwrap()
    {
        Ok(()) => panic!("a garbage CA file must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("garbage.pem") && err.contains("bad_ca"),
        "{err}"
    );
}

/// A TCP server that answers every connection with `junk` and hangs up.
async fn junk_server(junk: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut buf))
                        .await;
                let _ = s.write_all(junk).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn receivers_answering_garbage_are_retried_not_trusted() {
    let http = junk_server(b"this is not HTTP at all\r\n\r\n\x00\xff").await;
    let nats = junk_server(b"INFO {not json\r\n-ERR 'bogus'\r\n").await;
    let am = junk_server(b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\ncut short").await;
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.junk_http]
type = "webhook"
url = "http://{http}/"
delivery = {{ retry_initial_ms = 50, retry_max_ms = 100 }}

[outputs.junk_nats]
type = "nats"
url = "nats://{nats}"
delivery = {{ retry_initial_ms = 50, retry_max_ms = 100 }}

[outputs.junk_am]
type = "alertmanager"
url = "http://{am}"
timeout_ms = 1000
delivery = {{ retry_initial_ms = 50, retry_max_ms = 100 }}

[[routes]]
outputs = ["junk_http", "junk_nats", "junk_am"]
"#
    );
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    srv.post_ids(&ids("junk", 2)).await;
    for output in ["junk_http", "junk_nats"] {
        let m = srv
            .wait_metric("peregrine_output_failed_total", &[("output", output)], 3.0)
            .await;
        assert_eq!(
            metric(&m, "peregrine_output_sent_total", &[("output", output)]),
            None,
            "{output}"
        );
        assert_eq!(
            metric(&m, "peregrine_output_pending_alerts", &[("output", output)]),
            Some(2.0),
            "{output}"
        );
    }
    // A 200 whose body breaks off still says yes: the receiver took the alerts.
    srv.wait_metric("peregrine_output_sent_total", &[("output", "junk_am")], 2.0)
        .await;
    // The server itself is unharmed.
    let (status, _) = {
        let r = srv
            .client
            .get(format!("{}/healthz", srv.base))
            .send()
            .await
            .unwrap();
        (r.status(), ())
    };
    assert_eq!(status, 200);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_shutdown_the_spool_keeps_what_is_undelivered_and_memory_outputs_count_it() {
    let port = reserve_port();
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[delivery]
shutdown_grace_ms = 300

[outputs.kept]
type = "webhook"
url = "http://127.0.0.1:{port}/kept"
delivery = {{ retry_initial_ms = 50, retry_max_ms = 100 }}

[outputs.volatile]
type = "webhook"
url = "http://127.0.0.1:{port}/volatile"
delivery = {{ spool = false, retry_initial_ms = 50, retry_max_ms = 100 }}

[[routes]]
outputs = ["kept", "volatile"]
"#
    );
    // First run: the receiver is down until after the shutdown.
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let all = ids("grace", 6);
    srv.post_ids(&all).await;
    srv.wait_metric(
        "peregrine_output_pending_alerts",
        &[("output", "kept")],
        6.0,
    )
    .await;
    srv.wait_metric(
        "peregrine_output_pending_alerts",
        &[("output", "volatile")],
        6.0,
    )
    .await;
    srv.shutdown().await;
    // The server is gone; the process's recorder still says what happened.
    let m = peregrine::prometheus::install().unwrap().render();
    assert_eq!(
        metric(
            &m,
            "peregrine_output_dropped_total",
            &[("output", "volatile"), ("reason", "shutdown")]
        ),
        Some(6.0),
        "the memory-only output counts what it could not deliver"
    );
    assert_eq!(
        metric(&m, "peregrine_output_dropped_total", &[("output", "kept")]),
        None
    );

    // Second run, receiver up: the spooled output delivers what it kept.
    let rx = Receiver::start_on(port, always_ok()).await;
    let srv = RoutedServer::start(config(&toml, spool.path()), &echo()).await;
    let got = rx.wait_accepted("/kept", 6).await;
    assert_eq!(sorted(audit_ids(&got)), all);
    assert!(rx.accepted("/volatile").is_empty());
    srv.shutdown().await;
    rx.stop().await;
}
