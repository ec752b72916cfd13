//! The alert history API and the web UI, driven in headless Chromium.

use std::process::Command;

use peregrine::tenants::TenantConfig;
use peregrine_tests::*;

const ADMIN: &str = "admin-token-0123456789";
const TEAM: &str = "team-token-0123456789";

async fn server_with_history(admin: bool) -> (TestServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.store.enabled = true;
    config.store.path = Some(data.path().join("alerts.sqlite"));
    config.rules.rule_matching = peregrine::config::RuleMatching::First;
    if admin {
        config.auth.admin_tokens = vec![ADMIN.into()];
        config.tenants.insert(
            "team".into(),
            TenantConfig {
                tokens: vec![TEAM.into()],
                ..Default::default()
            },
        );
    }
    let srv = TestServer::start(config, rules_dir(&[example_module("falco_k8s_audit")])).await;
    for f in [
        "create_nginx_pod_privileged.json",
        "attach_pod.json",
        "create_cluster_role_wildcard_verbs.json",
    ] {
        let (status, _) = srv
            .post("/k8s-audit", std::fs::read(corpus_file(f)).unwrap())
            .await;
        assert_eq!(status, 200);
    }
    (srv, data)
}

async fn stored(srv: &TestServer, auth: Option<&str>, query: &str) -> serde_json::Value {
    let mut req = srv.client.get(srv.url(&format!("/api/v1/alerts{query}")));
    if let Some(t) = auth {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

async fn wait_stored(srv: &TestServer, auth: Option<&str>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored(srv, auth, "").await["alerts"]
        .as_array()
        .map_or(0, Vec::len)
        < n
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alerts never reached the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_history_api_filters_and_pages() {
    let (srv, _data) = server_with_history(false).await;
    wait_stored(&srv, None, 3).await;
    let all = stored(&srv, None, "").await;
    let rules: Vec<&str> = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"]["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), 3);
    assert!(rules.contains(&"Create Privileged Pod"));

    let warn = stored(&srv, None, "?min_priority=Warning").await;
    assert!(
        warn["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["alert"]["priority"] == "Warning")
    );
    assert_eq!(warn["alerts"].as_array().unwrap().len(), 2);

    let page1 = stored(&srv, None, "?limit=2").await;
    assert_eq!(page1["alerts"].as_array().unwrap().len(), 2);
    let before = page1["next_before"].as_i64().unwrap();
    let page2 = stored(&srv, None, &format!("?limit=2&before={before}")).await;
    assert_eq!(page2["alerts"].as_array().unwrap().len(), 1);

    let by_cluster = stored(&srv, None, "?cluster=default").await;
    assert_eq!(by_cluster["alerts"].as_array().unwrap().len(), 3);
    let none = stored(&srv, None, "?cluster=elsewhere").await;
    assert_eq!(none["alerts"].as_array().unwrap().len(), 0);

    let by_rule = stored(&srv, None, "?rule=Attach%2FExec%20Pod").await;
    assert_eq!(by_rule["alerts"].as_array().unwrap().len(), 1);

    let r = srv
        .client
        .get(srv.url("/api/v1/alerts?min_priority=Loud"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let summary = srv.get_json("/api/v1/alerts/summary").await;
    assert_eq!(summary["total"], 3);
    assert!(
        summary["by_priority"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "Notice" && p[1] == 1)
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_scope_what_callers_see() {
    let (srv, _data) = server_with_history(true).await;
    // The team posts one event of its own.
    let r = srv
        .client
        .post(srv.url("/k8s-audit/team"))
        .bearer_auth(TEAM)
        .header("content-type", "application/json")
        .body(std::fs::read(corpus_file("create_nginx_pod_privileged.json")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_stored(&srv, Some(ADMIN), 4).await;

    let r = srv
        .client
        .get(srv.url("/api/v1/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .client
        .get(srv.url("/api/v1/rules"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let team = stored(&srv, Some(TEAM), "?tenant=default").await;
    let alerts = team["alerts"].as_array().unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "a tenant sees only its own alerts, whatever it asks for"
    );
    assert_eq!(
        alerts[0]["alert"]["output_fields"]["peregrine.tenant"],
        "team"
    );
    srv.shutdown().await;
}

fn run_ui_check(base: &str, token: Option<&str>) {
    let script = root().join("tests/ui/check.mjs");
    assert!(
        root()
            .join("tests/ui/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/ui (`make test` does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is missing: install the Debian package `chromium` (.ci/run does) or set CHROMIUM"
    );
    let mut cmd = Command::new("node");
    cmd.arg(&script).arg(base);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().expect("node runs");
    assert!(
        out.status.success(),
        "UI check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn web_ui_shows_filters_and_explains_alerts_in_chromium() {
    let (srv, _data) = server_with_history(false).await;
    wait_stored(&srv, None, 3).await;
    let base = srv.base.clone();
    tokio::task::spawn_blocking(move || run_ui_check(&base, None))
        .await
        .unwrap();
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn web_ui_asks_for_a_token_when_the_api_is_protected() {
    let (srv, _data) = server_with_history(true).await;
    wait_stored(&srv, Some(ADMIN), 3).await;
    let base = srv.base.clone();
    tokio::task::spawn_blocking(move || run_ui_check(&base, Some(ADMIN)))
        .await
        .unwrap();
    srv.shutdown().await;
}
