//! Tenants: authentication, isolation of events and state, quotas, fairness.

use peregrine::config::PeregrineConfig;
use peregrine::rules::Scope;
use peregrine::tenants::TenantConfig;
use peregrine_tests::*;

const TOKEN_A: &str = "team-a-token-0123456789";
const TOKEN_B: &str = "team-b-token-0123456789";

fn tenant(token: &str) -> TenantConfig {
    TenantConfig {
        tokens: vec![token.to_string()],
        ..Default::default()
    }
}

/// A copy of the echo fixture under another name, for a tenant directory.
fn echo_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = rules_dir(&[]);
    let echo = std::fs::read(fixture_module("fixture_echo")).unwrap();
    for n in names {
        std::fs::write(dir.path().join(format!("{n}.wasm")), &echo).unwrap();
    }
    dir
}

async fn post_as(
    srv: &TestServer,
    path: &str,
    token: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut req = srv
        .client
        .post(srv.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn start(
    mut config: PeregrineConfig,
    a: tempfile::TempDir,
    b: tempfile::TempDir,
) -> TestServer {
    // The tenants the directories belong to; TestServer adds each
    // directory to its tenant's `rules_dirs`, as an operator would.
    config
        .tenants
        .entry("team-a".into())
        .or_insert_with(|| tenant(TOKEN_A));
    config
        .tenants
        .entry("team-b".into())
        .or_insert_with(|| tenant(TOKEN_B));
    TestServer::start_with(
        config,
        vec![
            (Scope::Global, rules_dir(&[fixture_module("fixture_echo")])),
            (Scope::Tenant("team-a".into()), a),
            (Scope::Tenant("team-b".into()), b),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_events_and_keep_separate_state() {
    let srv = start(test_config(), echo_dir(&["only_a"]), echo_dir(&["only_b"])).await;
    for i in 0..3 {
        let r = post_as(
            &srv,
            "/k8s-audit/team-a",
            Some(TOKEN_A),
            event(&format!("a-{i}"), "get", "pods", "x").to_string(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    for i in 0..2 {
        let r = post_as(
            &srv,
            "/k8s-audit/team-b",
            Some(TOKEN_B),
            event(&format!("b-{i}"), "get", "pods", "x").to_string(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let r = post_as(
        &srv,
        "/k8s-audit",
        None,
        event("d-0", "get", "pods", "x").to_string(),
    )
    .await;
    assert_eq!(r.status(), 200, "the default tenant is open by default");
    let alerts = srv.shutdown().await;

    for a in &alerts {
        let expected_tenant = match &a.audit_id[..1] {
            "a" => "team-a",
            "b" => "team-b",
            _ => "default",
        };
        assert_eq!(&*a.tenant, expected_tenant, "{a:?}");
        match a.module.as_str() {
            "only_a" => assert_eq!(
                &*a.tenant, "team-a",
                "team-a's module saw another tenant's event"
            ),
            "only_b" => assert_eq!(
                &*a.tenant, "team-b",
                "team-b's module saw another tenant's event"
            ),
            "fixture_echo" => {}
            m => panic!("unexpected module {m}"),
        }
    }
    let by = |m: &str| alerts.iter().filter(|a| a.module == m).count();
    assert_eq!(by("only_a"), 3);
    assert_eq!(by("only_b"), 2);
    assert_eq!(by("fixture_echo"), 6, "global modules serve every tenant");

    // The global module's state is namespaced per tenant: its counter of
    // events seen reaches 3 for team-a, 2 for team-b and 1 for default.
    let max_seen = |tenant: &str| {
        alerts
            .iter()
            .filter(|a| a.module == "fixture_echo" && &*a.tenant == tenant)
            .map(|a| a.field("seen").unwrap().parse::<u64>().unwrap())
            .max()
            .unwrap()
    };
    assert_eq!(max_seen("team-a"), 3);
    assert_eq!(max_seen("team-b"), 2);
    assert_eq!(max_seen("default"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_valid_credentials_are_refused() {
    let mut config = test_config();
    config.auth.default_tenant_open = false;
    let srv = start(config, echo_dir(&[]), echo_dir(&[])).await;
    let body = || event("x", "get", "pods", "x").to_string();
    for (path, token, status) in [
        ("/k8s-audit/team-a", None, 401),
        ("/k8s-audit/team-a", Some("team-a-token-wrong-value"), 401),
        ("/k8s-audit/team-a", Some(TOKEN_B), 401),
        ("/k8s-audit/team-b", Some(TOKEN_A), 401),
        ("/k8s-audit", None, 401),
        ("/k8s-audit/nobody", Some(TOKEN_A), 404),
        ("/k8s-audit/team-a", Some(TOKEN_A), 200),
    ] {
        let r = post_as(&srv, path, token, body()).await;
        assert_eq!(r.status().as_u16(), status, "{path} with {token:?}");
        if status == 401 {
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    let alerts = srv.shutdown().await;
    assert_eq!(
        alerts.len(),
        1,
        "only the authenticated event was evaluated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_limit_rate_and_modules() {
    let mut config = test_config();
    let mut b = tenant(TOKEN_B);
    // One event a second, and a first batch of 50: it passes on the full
    // bucket and leaves team B some 49 seconds in debt, so the second batch
    // is over the rate however slowly this machine sends it.
    b.events_per_second = Some(1);
    b.max_modules = Some(1);
    config.tenants.insert("team-b".into(), b);
    let srv = start(config, echo_dir(&[]), echo_dir(&["b_first", "b_second"])).await;

    let batch = |p: &str| {
        event_list(
            &(0..50)
                .map(|i| event(&format!("{p}-{i}"), "get", "pods", "x"))
                .collect::<Vec<_>>(),
        )
    };
    let r = post_as(&srv, "/k8s-audit/team-b", Some(TOKEN_B), batch("one")).await;
    assert_eq!(r.status(), 200);
    let r = post_as(&srv, "/k8s-audit/team-b", Some(TOKEN_B), batch("two")).await;
    assert_eq!(r.status(), 429, "over 1 event per second");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Team A is not affected by team B's quota.
    let r = post_as(&srv, "/k8s-audit/team-a", Some(TOKEN_A), batch("a")).await;
    assert_eq!(r.status(), 200);

    // Tenants have tokens, so the API wants one: team B's own sees its modules.
    let rules: serde_json::Value = srv
        .client
        .get(srv.url("/api/v1/rules"))
        .bearer_auth(TOKEN_B)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_b: Vec<_> = rules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["scope"] == "tenant:team-b")
        .cloned()
        .collect();
    assert_eq!(tenant_b.len(), 2);
    assert_eq!(tenant_b[0]["status"], "live");
    assert_eq!(tenant_b[1]["status"], "failed");
    assert!(
        tenant_b[1]["last_error"]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{}",
        tenant_b[1]
    );
    srv.shutdown().await;
}

/// The apiserver sends a batch refused with 429 again after `Retry-After`:
/// the retried events were not remembered as seen, so every one of them is
/// accepted and evaluated.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_over_the_rate_is_taken_when_sent_again() {
    let mut config = test_config();
    let mut b = tenant(TOKEN_B);
    b.events_per_second = Some(20);
    config.tenants.insert("team-b".into(), b);
    let srv = start(config, echo_dir(&[]), echo_dir(&[])).await;
    let batch = |p: &str, n: usize| {
        event_list(
            &(0..n)
                .map(|i| event(&format!("{p}-{i}"), "get", "pods", "x"))
                .collect::<Vec<_>>(),
        )
    };
    // The first batch passes on the full bucket and leaves it five seconds
    // in debt, so the second is over the rate however slowly it is sent.
    let r = post_as(
        &srv,
        "/k8s-audit/team-b",
        Some(TOKEN_B),
        batch("first", 100),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut r = post_as(
        &srv,
        "/k8s-audit/team-b",
        Some(TOKEN_B),
        batch("retried", 20),
    )
    .await;
    assert_eq!(r.status(), 429, "over 20 events per second");
    // As the apiserver does: wait as told, send the same batch again, at
    // most five tries in all.
    let mut tries = 1;
    while r.status() == 429 && tries < 5 {
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&wait), "Retry-After {wait}");
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        r = post_as(
            &srv,
            "/k8s-audit/team-b",
            Some(TOKEN_B),
            batch("retried", 20),
        )
        .await;
        tries += 1;
    }
    assert_eq!(r.status(), 200, "the retry is taken");
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["duplicates"].as_u64()),
        (Some(20), Some(0)),
        "the refused events must not be dropped as duplicates: {answer}"
    );
    let alerts = srv.shutdown().await;
    for (p, n) in [("first", 100), ("retried", 20)] {
        for i in 0..n {
            let id = format!("{p}-{i}");
            assert!(
                alerts.iter().any(|a| a.audit_id == id),
                "{id} was not evaluated"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_with_slow_rules_does_not_starve_another() {
    let mut config = test_config();
    config.engine.workers = 1;
    config.sandbox.defaults.call_deadline_ms = 100;
    let spin = rules_dir(&[fixture_module("fixture_spin_loop")]);
    let srv = start(config, spin, echo_dir(&[])).await;
    let flood = |b: usize| {
        let events: Vec<_> = (0..5)
            .map(|i| event(&format!("a-{b}-{i}"), "get", "pods", "spin"))
            .collect();
        post_as(
            &srv,
            "/k8s-audit/team-a",
            Some(TOKEN_A),
            event_list(&events),
        )
    };
    // Team A floods: five batches of events its own module spins on. The
    // only worker is held once it has evaluated the first, so the other four
    // are queued, whatever this machine's speed, when team B sends its one
    // event.
    let hold = srv.alerts.hold();
    assert_eq!(flood(0).await.status(), 200);
    srv.alerts.wait_held(1).await;
    for b in 1..5 {
        assert_eq!(flood(b).await.status(), 200);
    }
    let r = post_as(
        &srv,
        "/k8s-audit/team-b",
        Some(TOKEN_B),
        event("b-0", "get", "pods", "calm").to_string(),
    )
    .await;
    assert_eq!(r.status(), 200);
    hold.release();

    srv.alerts
        .wait_for("team B's event", |a| a.iter().any(|a| a.audit_id == "b-0"))
        .await;
    let all = srv.shutdown().await;
    let a_echo = |a: &&peregrine::alert::Alert| a.rule == "Echo" && &*a.tenant == "team-a";
    assert_eq!(
        all.iter().filter(a_echo).count(),
        25,
        "every one of team A's events evaluated"
    );
    // One worker hands over the alerts of one batch at a time, so their
    // order is the order of evaluation. Tenants are served in turn: B waited
    // for at most the batch being evaluated and the one next in A's turn,
    // not for A's whole backlog, which was still queued when B's event was
    // evaluated.
    let b_at = all.iter().position(|a| a.audit_id == "b-0").unwrap();
    let a_before = all[..b_at].iter().filter(a_echo).count();
    assert!(
        a_before <= 10,
        "team B waited behind {a_before} of team A's 25 events"
    );
}
